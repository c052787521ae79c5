"""The command line: ``python -m smtpd_compat`` and the ``smtpd-compat`` script.

Takes smtpd's options and positional addresses, with the same defaults.
Errors are one line on stderr and exit status 1; SIGINT and SIGTERM stop
the server cleanly with status 0.
"""

import errno
import getopt
import importlib
import os
import signal
import sys
import time
from typing import List, NoReturn, Optional, Tuple

from . import _replies, _tls, _workers
from ._asyncore import asynchat, asyncore
from ._auth import checks_credentials, parse_auth_file
from ._channel import DATA_SIZE_DEFAULT, SMTPChannel
from ._delivery import parse_pipe_command
from ._haproxy import parse_networks
from ._loop import Poller
from ._namespace import public_module
from ._parsing import parse_host_port
from ._server import SMTPServer, adopting
from ._wakeup import waker_for

SHORT_OPTIONS = "nVhc:s:du"
LONG_OPTIONS = ["class=", "nosetuid", "version", "help", "size=", "debug",
                "smtputf8", "timeout=", "max-connections=", "max-recipients=",
                "proxy-protocol=", "proxy-trusted=", "workers=", "hostname=",
                "maildir=", "pipe=", "pipe-timeout=",
                "auth-file=", "require-auth", "auth-plaintext",
                "lmtp",
                "tls-cert=", "tls-key=", "smtps", "require-starttls",
                "max-messages=", "command-call-limit=", "max-errors="]
# Flags that switch an ESMTP extension on (see _extensions): option -> the
# server attribute it sets to True.  --modern turns on all of
# _extensions.MODERN.  Other extensions join with one entry each.
EXTENSION_FLAGS = {
    "--modern": "modern",
    "--pipelining": "pipelining",
    "--enhanced-status-codes": "enhanced_status_codes",
    "--dsn": "dsn",
    "--strict-line-endings": "strict_line_endings",
    "--chunking": "chunking",
}
# Options whose value is a number: option -> (Options attribute, type, what
# the error line calls it).  Negative numbers are refused.
NUMBER_OPTIONS = {
    "-s": ("size_limit", int, "size"),
    "--size": ("size_limit", int, "size"),
    "--timeout": ("idle_timeout", float, "timeout"),
    "--max-connections": ("max_connections", int, "connection limit"),
    "--max-recipients": ("max_recipients", int, "recipient limit"),
    "--pipe-timeout": ("pipe_timeout", float, "pipe timeout"),
    "--max-messages": ("max_messages", int, "message limit"),
    "--command-call-limit": ("command_call_limit", int, "command call limit"),
    "--max-errors": ("max_errors", int, "error limit"),
}
# Flags that set a server setting to True: option -> Options attribute.
SETTING_FLAGS = {
    "--require-auth": "auth_required",
    "--auth-plaintext": "auth_plaintext",
    "--lmtp": "lmtp",
    "--smtps": "smtps",
    "--require-starttls": "require_starttls",
}
PROXY_PROTOCOL_VERSIONS = ("v1", "v2", "any")
# Options that, when given, replace the server's setting of the same name
# (None: the server class's own default).
SERVER_SETTINGS = ("idle_timeout", "max_connections", "max_recipients",
                   "proxy_protocol", "proxy_trusted", "hostname",
                   "maildir", "pipe_command", "pipe_timeout",
                   "auth_users", "auth_required", "auth_plaintext",
                   "lmtp",
                   "tls_context", "smtps", "require_starttls",
                   "max_messages", "command_call_limit", "max_errors")
# The option of a setting whose name is not the option's.
SETTING_OPTIONS = {"pipe_command": "--pipe"}
# Where -c looks for a class named without a module, after smtpd's own names.
BUILT_IN_CLASS_MODULES = ("smtpd_compat.delivery",)
SHUTDOWN_GRACE = 5.0  # seconds to finish pending replies
GOODBYE_GRACE = 2.0  # seconds to send the 421s and let the clients hang up
# Seconds a worker gets to shut down as above before the supervisor kills it.
WORKER_STOP_TIMEOUT = SHUTDOWN_GRACE + GOODBYE_GRACE + 10.0


class Options:
    """What the command line asked for; smtpd's defaults as class attributes."""

    setuid = True
    classname = "PureProxy"
    # None (no -s) serves DATA_SIZE_DEFAULT, as smtpd's usage text says; the
    # attribute stays None as in smtpd, see size_limit_of().  0: no limit.
    size_limit = None
    enable_SMTPUTF8 = False
    idle_timeout = None  # None: the server class's own default
    max_connections = None
    max_recipients = None  # None: the server class's own default; 0: no limit
    proxy_protocol = None  # None: the server class's own setting (off)
    proxy_trusted = None  # None: the server class's own setting (loopback)
    workers = None  # None: serve in this process; N: a supervisor and N workers
    hostname = None  # None: the server class's own (socket.getfqdn())
    maildir = None  # MaildirServer's directory
    pipe_command = None  # PipeServer's command
    pipe_timeout = None  # None: PipeServer's own default
    auth_users = None  # --auth-file: {login: password}; None: the class's own (off)
    auth_required = None  # --require-auth: True; None: the class's own (False)
    auth_plaintext = None  # --auth-plaintext: True; None: the class's own (False)
    lmtp = None  # True: speak LMTP; None: the class's own (SMTP)
    localpath = None  # an absolute path given as localspec: a UNIX socket
    tls_cert = None  # PEM files: --tls-cert, --tls-key
    tls_key = None
    tls_context = None  # made from them by parseargs; None: the class's own
    smtps = None  # None: the server class's own setting (off)
    require_starttls = None
    # Limits of one connection; None: the server class's own; 0: no limit.
    max_messages = None
    command_call_limit = None
    max_errors = None
    # The extensions asked for: attribute names from EXTENSION_FLAGS.
    extensions: Tuple[str, ...] = ()


def usage(code, msg=""):
    """Print the usage text (and *msg*) to stderr and exit with *code*."""
    module = public_module()
    names = dict(vars(module))
    if _run_as_module(str(names.get("program", ""))):
        # sys.argv[0] was '-m' while the package was imported.
        names["program"] = "python -m smtpd_compat"
    print(module.__doc__ % names, file=sys.stderr)
    if msg:
        print(msg, file=sys.stderr)
    sys.exit(code)


def fail(message: str) -> NoReturn:
    """Exit with status 1 after one line on stderr."""
    print("%s: error: %s" % (_program_name(), message), file=sys.stderr)
    sys.exit(1)


def _program_name() -> str:
    program = str(public_module().program)
    if _run_as_module(program):
        return "smtpd_compat"
    return os.path.basename(program)


def _run_as_module(program: str) -> bool:
    return program in ("-m", "-c", "") or program.endswith("__main__.py")


def parseargs(argv: Optional[List[str]] = None) -> Options:
    """Parse *argv* (default ``sys.argv[1:]``) into an :class:`Options`.

    Exits on ``--help``, ``--version`` and on errors, as smtpd's did.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        opts, args = getopt.getopt(args, SHORT_OPTIONS, LONG_OPTIONS + [
            flag[2:] for flag in EXTENSION_FLAGS])
    except getopt.error as e:
        fail("%s (try --help)" % e)
    options = Options()
    for opt, arg in opts:
        _apply_option(options, opt, arg)
    if len(args) > 2:
        fail("Invalid arguments: %s" % public_module().COMMASPACE.join(args))
    localspec = args[0] if args else "localhost:8025"
    remotespec = args[1] if len(args) > 1 else "localhost:25"
    if localspec.startswith("/"):
        options.localpath = localspec
        localspec = "localhost:8025"  # what host and port say when a path is given
    options.localhost, options.localport = _endpoint("local", localspec)
    options.remotehost, options.remoteport = _endpoint("remote", remotespec)
    _check_tls(options)
    return options


def _check_tls(options: Options) -> None:
    """The TLS options that make no sense without a certificate: fail with one line."""
    if options.tls_cert is None:
        for flag, given in (("--tls-key", options.tls_key), ("--smtps", options.smtps),
                            ("--require-starttls", options.require_starttls)):
            if given:
                fail("%s needs --tls-cert" % flag)


def load_tls(options: Options) -> None:
    """Load ``--tls-cert``/``--tls-key`` into ``options.tls_context``; fail with one line.

    Called before anything binds, so a bad file costs no port.
    """
    if options.tls_cert is None:
        return
    try:
        options.tls_context = _tls.server_context(options.tls_cert, options.tls_key)
    except ValueError as e:
        fail(str(e))


def _apply_option(options: Options, opt: str, arg: str) -> None:
    if opt in ("-h", "--help"):
        usage(0)
    elif opt in ("-V", "--version"):
        print(public_module().__version__)
        sys.exit(0)
    elif opt in ("-n", "--nosetuid"):
        options.setuid = False
    elif opt in ("-c", "--class"):
        options.classname = arg
    elif opt in ("-d", "--debug"):
        public_module().DEBUGSTREAM = sys.stderr
    elif opt in ("-u", "--smtputf8"):
        options.enable_SMTPUTF8 = True
    elif opt == "--proxy-protocol":
        if arg not in PROXY_PROTOCOL_VERSIONS:
            fail("Invalid --proxy-protocol: %r (use v1, v2 or any)" % arg)
        options.proxy_protocol = arg
    elif opt == "--proxy-trusted":
        try:
            options.proxy_trusted = parse_networks(arg)
        except ValueError as e:
            fail("Invalid --proxy-trusted: %s" % e)
    elif opt == "--hostname":
        if not _is_host_name(arg):
            fail("Invalid --hostname: %r (one word of printable ASCII)" % arg)
        options.hostname = arg
    elif opt == "--maildir":
        options.maildir = arg
    elif opt == "--pipe":
        try:
            parse_pipe_command(arg)
        except ValueError as e:
            fail("Invalid --pipe: %s" % e)
        options.pipe_command = arg
    elif opt == "--auth-file":
        options.auth_users = _auth_users(arg)
    elif opt in ("--tls-cert", "--tls-key"):
        setattr(options, opt[2:].replace("-", "_"), arg)
    elif opt in NUMBER_OPTIONS:
        name, kind, what = NUMBER_OPTIONS[opt]
        setattr(options, name, _number(arg, kind, "Invalid %s: %s" % (what, arg)))
    elif opt in SETTING_FLAGS:
        setattr(options, SETTING_FLAGS[opt], True)
    elif opt in EXTENSION_FLAGS:
        options.extensions += (EXTENSION_FLAGS[opt],)
    elif opt == "--workers":
        options.workers = _number(arg, int, "Invalid worker count: " + arg, minimum=1)


def _auth_users(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return parse_auth_file(f)
    except (OSError, UnicodeDecodeError) as e:
        fail("--auth-file %s: %s" % (path, getattr(e, "strerror", None) or e))
    except ValueError as e:
        fail("--auth-file %s: %s" % (path, e))


def _is_host_name(text: str) -> bool:
    # It goes into replies as is: a space or line break would garble them.
    return bool(text) and all("!" <= c <= "~" for c in text)


def _number(text: str, kind, error: str, minimum=0):
    try:
        value = kind(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        print(error, file=sys.stderr)
        sys.exit(1)
    return value


def _endpoint(which: str, spec: str):
    try:
        return parse_host_port(spec)
    except ValueError as e:
        fail("Bad %s spec: %s (%s)" % (which, spec, e))


def server_class(name: str) -> type:
    """Find the class ``-c`` names: a built-in name or ``package.module.Class``."""
    if not all(part.isidentifier() for part in name.split(".")):
        fail("Bad class name: %r is not a dotted name" % name)
    module_name, dot, class_name = name.rpartition(".")
    try:
        module = importlib.import_module(module_name) if dot else _built_in_module(name)
        found = getattr(module, class_name)
    except (ImportError, AttributeError) as e:
        fail("Bad class name: %s (%s)" % (name, e))
    if not isinstance(found, type):
        fail("Bad class name: %s is not a class" % name)
    # The CLI serves the server's socket map, so it must be a dispatcher
    # (an SMTPServer); anything else would only fail later with a traceback.
    if (not issubclass(found, asyncore.dispatcher)
            or issubclass(found, asynchat.async_chat)):
        fail("Bad class name: %s is not an SMTP server class" % name)
    return found


def _built_in_module(name: str):
    """The module holding the built-in class *name*: smtpd's own first."""
    if not hasattr(public_module(), name):
        for module_name in BUILT_IN_CLASS_MODULES:
            module = importlib.import_module(module_name)
            if name in getattr(module, "__all__", ()):
                return module
    return public_module()


def check_required_settings(cls: type, options: Options) -> None:
    """Exit with one line if *cls* needs a setting (``required_settings``) not given.

    Also if the AUTH options describe a server no client could log in to.
    """
    for name in getattr(cls, "required_settings", ()):
        if getattr(options, name, None) is None:
            option = SETTING_OPTIONS.get(name) or "--" + name.replace("_", "-")
            fail("%s needs %s" % (cls.__name__, option))
    _check_auth(cls, options)


def _check_auth(cls: type, options: Options) -> None:
    """AUTH nobody could use: logins never offered, or required and none to check."""
    tls = options.tls_cert is not None or getattr(cls, "tls_context", None) is not None
    plaintext = (getattr(cls, "auth_plaintext", False) if options.auth_plaintext is None
                 else options.auth_plaintext)
    if options.auth_users is not None and not (tls or plaintext):
        fail("--auth-file needs --tls-cert (AUTH is offered only over TLS)"
             " or --auth-plaintext")
    users = getattr(cls, "auth_users", None) if options.auth_users is None else options.auth_users
    if options.auth_required and not checks_credentials(cls, users):
        fail("--require-auth needs --auth-file")


def size_limit_of(options: Options) -> int:
    """The message size limit the server gets: ``-s``, else smtpd's documented default.

    smtpd's usage text says ``-s`` "Defaults to 33554432 bytes", but smtpd
    passed None without it and took messages of any size.  ``-s 0`` still
    means no limit (and no SIZE advertised), as it did in smtpd.
    """
    if options.size_limit is None:
        return DATA_SIZE_DEFAULT
    return options.size_limit


def make_server(options: Options):
    """Create the server the options describe; exit with one line on failure."""
    cls = server_class(options.classname)
    check_required_settings(cls, options)
    local = options.localpath or (options.localhost, options.localport)
    try:
        server = cls(local, (options.remotehost, options.remoteport),
                     size_limit_of(options), enable_SMTPUTF8=options.enable_SMTPUTF8)
    except OSError as e:
        _cannot_listen(local, e)
    except (ValueError, TypeError) as e:
        fail("cannot start %s: %s" % (options.classname, e))
    for name in SERVER_SETTINGS:
        value = getattr(options, name)
        if value is not None:
            setattr(server, name, value)
    for name in options.extensions:
        setattr(server, name, True)
    return server


def _cannot_listen(local, error: OSError) -> NoReturn:
    where = local if isinstance(local, str) else "%s:%s" % local
    if isinstance(error, PermissionError) and not isinstance(local, str):
        fail("cannot listen on %s: permission denied (ports below 1024 "
             "need root)" % where)
    fail("cannot listen on %s: %s" % (where, _describe(error)))


def _describe(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return "address already in use"
    return error.strerror or str(error)


def become_nobody() -> None:
    """Drop root privileges to user ``nobody``, as smtpd did without ``-n``."""
    try:
        import pwd
    except ImportError:
        print('Cannot import module "pwd"; try running with -n option.', file=sys.stderr)
        sys.exit(1)
    nobody = pwd.getpwnam("nobody")[2]
    try:
        os.setuid(nobody)
    except PermissionError:
        print('Cannot setuid "nobody"; try running with -n option.', file=sys.stderr)
        sys.exit(1)


def serve(server) -> None:
    """Run the server's socket map until SIGINT or SIGTERM, then shut down."""
    socket_map = server._map
    stop_requested: List[int] = []
    waker = waker_for(socket_map)

    def request_stop(signum, frame):
        stop_requested.append(signum)
        waker.call_soon(lambda: None)

    # A signal ignored when we started stays ignored, as Python itself does
    # for SIGINT: a shell without job control starts background jobs that
    # way, so that a Ctrl-C meant for the script does not stop them.
    previous = {signum: signal.signal(signum, request_stop)
                for signum in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(signum) != signal.SIG_IGN}
    poller = Poller(socket_map)
    try:
        while not stop_requested and socket_map:
            poller.poll(1.0)
        shut_down(server, poller)
    finally:
        poller.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def shut_down(server, poller: Poller) -> None:
    """Stop listening, let pending replies go out, say 421 to every client.

    A message that was not yet handed to ``process_message`` is never
    acknowledged: its client gets the 421 and will send it again.
    """
    server.close()
    channels = [d for d in list(poller.map.values()) if isinstance(d, SMTPChannel)]
    deadline = time.monotonic() + SHUTDOWN_GRACE
    while (any(c._pending_reply is not None for c in channels)
           and time.monotonic() < deadline):
        poller.poll(0.1)
    for channel in channels:
        if channel.connected and not channel._quitting:
            channel.push(_replies.SHUTTING_DOWN % {"fqdn": channel.fqdn})
            # Lingers after the 421 (see SMTPChannel.handle_close), so that
            # a client caught mid-message reads the reply, not a reset.
            channel.close_when_done()
    deadline = time.monotonic() + GOODBYE_GRACE
    while any(c.connected for c in channels) and time.monotonic() < deadline:
        poller.poll(0.1)
    for dispatcher in list(poller.map.values()):
        dispatcher.close()
    # Relays still running (PureProxy) would hold the exit while their
    # worker threads wait on the upstream: cut them off.
    abort_relays = getattr(server, "_abort_relays", None)
    if abort_relays is not None:
        abort_relays()


def _line_buffered(stream) -> None:
    """Make -d output appear line by line in a pipe (``2>&1 | tee``).

    Python 3.8 buffers a non-interactive stderr in blocks; 3.9 and later
    buffer it by line already.
    """
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(line_buffering=True)
        except (ValueError, OSError):
            pass


def _say(message: str) -> None:
    """One line for the operator on stderr, after the program's name."""
    print("%s: %s" % (_program_name(), message), file=sys.stderr, flush=True)


def inherited_listener(options: Options):
    """The listening socket systemd passed (socket activation), or None.

    The options' local address becomes the socket's, which the server is
    given in place of the command line's.
    """
    try:
        passed = _workers.systemd_sockets()
    except (ValueError, OSError) as e:
        fail("socket activation: %s" % e)
    if not passed:
        return None
    name, listener = passed[0]
    problem = None
    if len(passed) > 1:
        problem = "systemd passed %d sockets (%s); one is served" % (
            len(passed), ", ".join(name for name, _ in passed))
    else:
        try:
            _workers.check_listening(listener)
        except ValueError as e:
            problem = "descriptor %d (%s) is %s" % (listener.fileno(), name, e)
    if problem is not None:
        for _, sock in passed:
            sock.close()
        fail("socket activation: " + problem)
    options.localhost, options.localport = listener.getsockname()[:2]
    return listener


def serve_with_workers(options: Options, inherited=None) -> int:
    """``--workers N``: a supervisor and N processes serving one address."""
    if not hasattr(os, "fork"):
        fail("--workers needs os.fork(), which this platform does not have")
    if options.localpath:
        fail("--workers needs host:port, not a UNIX socket's path")
    cls = server_class(options.classname)
    check_required_settings(cls, options)  # once, not in every worker
    local = (options.localhost, options.localport)
    backlog = getattr(cls, "listen_backlog", SMTPServer.listen_backlog)
    try:
        listeners = _workers.listeners_for(local, backlog, inherited)
    except OSError as e:
        _cannot_listen(local, e)
    options.localhost, options.localport = listeners.address

    def make_worker_server():
        server = make_server(options)
        if options.setuid:
            become_nobody()
        return server

    return _workers.run_workers(options.workers, listeners, make_worker_server, serve,
                                _say, WORKER_STOP_TIMEOUT)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the server the command line describes; return the exit status."""
    options = parseargs(argv)
    load_tls(options)
    if public_module().DEBUGSTREAM is sys.stderr:
        _line_buffered(sys.stderr)
    inherited = inherited_listener(options)
    if options.workers is not None:
        return serve_with_workers(options, inherited)
    with adopting(inherited):
        server = make_server(options)
    if options.setuid:
        become_nobody()
    serve(server)
    return 0


for _public in (Options, usage, parseargs):
    _public.__module__ = "smtpd_compat"
