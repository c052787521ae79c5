"""A real GNU Mailman 3 core and a recording SMTP sink, for the MailmanProxy tests.

Recipe (what these helpers do, step by step):

1. Mailman 3 and its dependencies must not touch the interpreter that runs the
   tests (any of 3.8 to 3.13), so it lives in a virtual environment of its own,
   built with the first Python 3.12 or 3.11 found (pyenv's versions folder first,
   then PATH; ``SMTPD_COMPAT_MAILMAN_PYTHON`` names an interpreter explicitly).
   Python 3.13 does not do: mailman 3.3.10 requires ``nntplib`` there, which
   PyPI does not have.  The environment holds exactly the pins of
   ``scripts/mailman-requirements.txt``: an unpinned install of ``mailman``
   3.3.10 pulls SQLAlchemy 2.1, with which every paginated REST collection
   answers 500.  Building it takes about 90 s with an empty pip cache and
   35 s with a warm one (two cores).
2. The environment is cached in ``.venv-mailman/venv`` at the repository root
   (git ignores ``.venv*/``; ``SMTPD_COMPAT_MAILMAN_VENV`` moves it).  A stamp file
   written last records the interpreter version and the pins; a missing or
   different stamp means a rebuild from scratch.  A lock file serialises
   concurrent builders.  ``scripts/mailman-venv`` builds it ahead of a test run.
3. A core runs from a temporary folder: ``mailman.cfg`` selects the ``local``
   layout with ``var_dir`` inside that folder, LMTP and REST on free loopback
   ports, outgoing SMTP to a :class:`RecordingSMTPServer`, the null MTA (no
   Postfix maps), gunicorn without its control socket, and only the runners
   a posting needs (lmtp, in, pipeline, out, rest).
   ``mailman --run-as-root -C mailman.cfg start`` (the flag only when running
   as root) daemonises a master in a new session; readiness is a REST answer
   plus an LMTP greeting, 10 to 20 s after the start.
4. ``mailman -C mailman.cfg stop`` ends it; whatever is still alive afterwards (the
   master's process group, or any process whose command line names this
   core's configuration file) is killed by pid.  Stopping takes about 5 s.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "scripts" / "mailman-requirements.txt"
PYTHON_CANDIDATES = ("3.12", "3.11")
REST_USER = "restadmin"
REST_PASSWORD = "restpass"
LOOPBACK = "127.0.0.1"

# Mailman's own processes must not inherit the test run's Python settings
# (a PYTHONWARNINGS=error would kill them on their dependencies' warnings).
_SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONWARNINGS", "PYTHONSTARTUP",
                 "PYTHONSAFEPATH", "PYTHONDEVMODE", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")


class MailmanUnavailable(Exception):
    """The Mailman core could not be installed or started."""


# -- the virtual environment ---------------------------------------------------------

def venv_root():
    """The folder that holds the cached environment and its lock."""
    configured = os.environ.get("SMTPD_COMPAT_MAILMAN_VENV")
    if configured:
        return Path(configured)
    return REPO_ROOT / ".venv-mailman"


def _interpreter_version(path):
    try:
        out = subprocess.run(
            [str(path), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=60, env=_child_env(),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _pyenv_root():
    root = os.environ.get("PYENV_ROOT")
    if root:
        return Path(root)
    exe = shutil.which("pyenv")
    if exe:
        try:
            out = subprocess.run([exe, "root"], capture_output=True, text=True,
                                 timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    return None


def _version_key(name):
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


def find_python():
    """Return (path, "X.Y") of an interpreter that can run Mailman 3, or raise."""
    explicit = os.environ.get("SMTPD_COMPAT_MAILMAN_PYTHON")
    if explicit:
        version = _interpreter_version(explicit)
        if version is None:
            raise MailmanUnavailable(
                "SMTPD_COMPAT_MAILMAN_PYTHON=%s does not run" % explicit)
        return explicit, version
    root = _pyenv_root()
    for wanted in PYTHON_CANDIDATES:
        candidates = []
        if root is not None and (root / "versions").is_dir():
            names = [p.name for p in (root / "versions").iterdir()
                     if re.fullmatch(re.escape(wanted) + r"\.\d+", p.name)]
            for name in sorted(names, key=_version_key, reverse=True):
                candidates.append(root / "versions" / name / "bin" / ("python" + wanted))
        on_path = shutil.which("python" + wanted)
        if on_path:
            candidates.append(Path(on_path))
        for candidate in candidates:
            if _interpreter_version(candidate) == wanted:
                return str(candidate), wanted
    raise MailmanUnavailable(
        "no Python %s found (pyenv or PATH) to install Mailman 3 with"
        % " or ".join(PYTHON_CANDIDATES))


def _stamp_text(version):
    pins = REQUIREMENTS.read_bytes()
    return "python %s\nrequirements %s\n" % (version, hashlib.sha256(pins).hexdigest())


def _child_env(home=None):
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    if home is not None:
        env["HOME"] = str(home)
    return env


def ensure_venv(log=None):
    """Build (once) and return the path of the environment that runs Mailman 3.

    Raises MailmanUnavailable with the reason when it cannot be built.  ``log``
    is an optional callable that receives progress lines.
    """
    root = venv_root()
    venv = root / "venv"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = venv / ".smtpd-compat-stamp"
        if stamp.is_file() and (venv / "bin" / "mailman").is_file():
            python = venv / "bin" / "python"
            version = _interpreter_version(python)
            if version and stamp.read_text() == _stamp_text(version):
                return venv
        python, version = find_python()
        if log:
            log("building the Mailman 3 environment with Python %s (%s)"
                % (version, python))
        if venv.exists():
            shutil.rmtree(venv)
        started = time.monotonic()
        steps = [
            [python, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install",
             "--disable-pip-version-check", "--no-input", "--quiet",
             "-r", str(REQUIREMENTS)],
        ]
        for step in steps:
            try:
                out = subprocess.run(step, capture_output=True, text=True,
                                     timeout=1200, env=_child_env(),
                                     stdin=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError) as exc:
                raise MailmanUnavailable("%s failed: %s" % (step[:3], exc)) from exc
            if out.returncode != 0:
                raise MailmanUnavailable(
                    "%s failed (exit %d):\n%s" % (" ".join(step[:4]), out.returncode,
                                                  (out.stdout + out.stderr)[-3000:]))
        if not (venv / "bin" / "mailman").is_file():
            raise MailmanUnavailable("pip installed no 'mailman' command")
        stamp.write_text(_stamp_text(version))
        if log:
            log("built the Mailman 3 environment in %.0f s"
                % (time.monotonic() - started))
        return venv


# -- loopback helpers ---------------------------------------------------------------

def free_port():
    """A loopback TCP port that was free a moment ago (Mailman needs numbers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout, interval=0.1, what="condition"):
    """Poll ``predicate`` until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %s s waiting for %s" % (timeout, what))
        time.sleep(interval)


# -- a recording SMTP server --------------------------------------------------------

class Envelope:
    """One message as a RecordingSMTPServer received it."""

    def __init__(self, mailfrom, rcpttos, data, mail_options):
        self.mailfrom = mailfrom
        self.rcpttos = rcpttos
        self.data = data            # bytes, CRLF line ends, dot-unstuffed
        self.mail_options = mail_options

    def __repr__(self):
        return "Envelope(%r, %r, %d bytes)" % (self.mailfrom, self.rcpttos,
                                               len(self.data))


def _address(arg, prefix):
    """'FROM:<a@b> SIZE=1' -> ('a@b', ['SIZE=1']) or None when malformed."""
    if not arg[:len(prefix)].upper() == prefix:
        return None
    rest = arg[len(prefix):].strip()
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            return None
        return rest[1:end], rest[end + 1:].split()
    parts = rest.split()
    return (parts[0] if parts else ""), parts[1:]


class _SinkHandler(socketserver.StreamRequestHandler):
    timeout = 60

    def reply(self, line):
        self.wfile.write(line.encode("ascii") + b"\r\n")
        self.wfile.flush()

    def handle(self):
        server = self.server.owner
        self.reply("220 %s recording sink ready" % LOOPBACK)
        mailfrom, rcpttos, options = None, [], []
        while True:
            try:
                line = self.rfile.readline(8192)
            except OSError:
                return
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "LHLO"):
                self.reply("250-%s" % LOOPBACK)
                self.reply("250-8BITMIME")
                self.reply("250-SMTPUTF8")
                self.reply("250 SIZE 33554432")
            elif verb == "HELO":
                self.reply("250 %s" % LOOPBACK)
            elif verb == "MAIL":
                parsed = _address(arg, "FROM:")
                if parsed is None:
                    self.reply("501 Syntax: MAIL FROM:<address>")
                    continue
                mailfrom, options = parsed
                rcpttos = []
                self.reply("250 OK")
            elif verb == "RCPT":
                parsed = _address(arg, "TO:")
                if mailfrom is None:
                    self.reply("503 Error: need MAIL command")
                elif parsed is None:
                    self.reply("501 Syntax: RCPT TO:<address>")
                else:
                    answer = server.rcpt_replies.get(parsed[0].lower())
                    if answer is None:
                        rcpttos.append(parsed[0])
                        self.reply("250 OK")
                    else:
                        self.reply(answer)
            elif verb == "DATA":
                if not rcpttos:
                    self.reply("503 Error: need RCPT command")
                    continue
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                chunks = []
                while True:
                    chunk = self.rfile.readline(1 << 20)
                    if not chunk:
                        return
                    if chunk == b".\r\n":
                        break
                    if chunk.startswith(b"."):
                        chunk = chunk[1:]
                    chunks.append(chunk)
                if server.data_reply is None:
                    server.record(Envelope(mailfrom, rcpttos, b"".join(chunks),
                                           options))
                    self.reply("250 OK: recorded")
                else:
                    self.reply(server.data_reply)
                mailfrom, rcpttos, options = None, [], []
            elif verb == "RSET":
                mailfrom, rcpttos, options = None, [], []
                self.reply("250 OK")
            elif verb == "NOOP":
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 Bye")
                return
            else:
                self.reply("502 Error: command not implemented")


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class RecordingSMTPServer:
    """A small SMTP server on 127.0.0.1:0 that records every message it accepts.

    ``rcpt_replies`` maps a lower-case address to the reply line RCPT gets for it
    (e.g. ``"550 5.1.1 no such user"``); every other recipient is accepted.
    ``data_reply``, when given, answers every DATA instead of recording it.
    It answers LHLO too, so it can stand in for an LMTP server as long as each
    transaction has one recipient.  It does not share code with the package
    under test on purpose.
    """

    def __init__(self, rcpt_replies=None, data_reply=None):
        self.rcpt_replies = {k.lower(): v for k, v in (rcpt_replies or {}).items()}
        self.data_reply = data_reply
        self.messages = []
        self._cond = threading.Condition()
        self._server = _ThreadingServer((LOOPBACK, 0), _SinkHandler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="recording-smtp", daemon=True)

    @property
    def address(self):
        return self._server.server_address[:2]

    def record(self, envelope):
        with self._cond:
            self.messages.append(envelope)
            self._cond.notify_all()

    def wait_for(self, predicate, timeout=30):
        """Wait until ``predicate(messages)`` is true; return the messages."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(list(self.messages)),
                                       timeout):
                raise TimeoutError("sink got %r, not what was awaited" % self.messages)
            return list(self.messages)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# -- the Mailman core ------------------------------------------------------------------

_CONFIG = """\
# Written by the smtpd_compat test suite; everything lives below this folder.
[mailman]
site_owner: {site_owner}
layout: local

[paths.local]
var_dir: {var_dir}

[mta]
incoming: mailman.mta.null.NullMTA
lmtp_host: {host}
lmtp_port: {lmtp_port}
smtp_host: {smtp_host}
smtp_port: {smtp_port}

[webservice]
hostname: {host}
port: {rest_port}
admin_user: {rest_user}
admin_pass: {rest_password}
workers: 1
configuration: {gunicorn_cfg}

[runner.in]
sleep_time: 0.1s
[runner.pipeline]
sleep_time: 0.1s
[runner.out]
sleep_time: 0.1s
"""

# Gunicorn (the REST server) 25.1+ opens a control socket in ~/.gunicorn, outside
# the core's folder and shared by every core: off.  The other two values are
# Mailman's own defaults.
_GUNICORN_CONFIG = """\
[gunicorn]
graceful_timeout = 30
timeout = 360
control_socket_disable = true
"""

# Runners a posting does not need; starting fewer processes halves the start time
# on two cores.
_IDLE_RUNNERS = ("archive", "bounces", "command", "digest", "nntp", "retry",
                 "task", "virgin")


class MailmanCore:
    """One Mailman 3 core on loopback ports of its own, in a temporary folder."""

    def __init__(self, venv, smtp_address, site_owner="owner@example.com"):
        self.venv = Path(venv)
        self.smtp_address = smtp_address
        self.site_owner = site_owner
        self.host = LOOPBACK
        self.lmtp_port = None
        self.rest_port = None
        self.workdir = None
        self.config = None
        self._master_pid = None

    # running ------------------------------------------------------------------
    def _command(self, *args, timeout=120):
        cmd = [str(self.venv / "bin" / "mailman")]
        if os.geteuid() == 0:
            cmd.append("--run-as-root")
        cmd += ["-C", str(self.config)] + list(args)
        # Output goes to a file, not a pipe: the master that ``start`` leaves
        # behind inherits these descriptors, and a pipe would never see EOF.
        output = self.workdir / ("mailman-%s.out" % args[0])
        with open(output, "w+") as sink:
            done = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                  timeout=timeout, cwd=str(self.workdir),
                                  env=_child_env(self.workdir),
                                  stdin=subprocess.DEVNULL)
            sink.seek(0)
            return done.returncode, sink.read()

    def start(self, timeout=180):
        self.workdir = Path(tempfile.mkdtemp(prefix="smtpd-compat-mailman-"))
        self.lmtp_port = free_port()
        self.rest_port = free_port()
        while self.rest_port == self.lmtp_port:
            self.rest_port = free_port()
        text = _CONFIG.format(
            site_owner=self.site_owner, var_dir=self.workdir / "var", host=self.host,
            lmtp_port=self.lmtp_port, smtp_host=self.smtp_address[0],
            smtp_port=self.smtp_address[1], rest_port=self.rest_port,
            rest_user=REST_USER, rest_password=REST_PASSWORD,
            gunicorn_cfg=self.workdir / "gunicorn.cfg")
        (self.workdir / "gunicorn.cfg").write_text(_GUNICORN_CONFIG)
        text += "".join("[runner.%s]\nstart: no\n" % name for name in _IDLE_RUNNERS)
        self.config = self.workdir / "mailman.cfg"
        self.config.write_text(text)
        try:
            code, output = self._command("start")
            if code != 0:
                raise MailmanUnavailable("mailman start failed (exit %d):\n%s"
                                         % (code, output))
            self._master_pid = wait_until(self._read_master_pid, 60, 0.1,
                                          "Mailman's master.pid")
            wait_until(self._ready, timeout, 0.25, "Mailman's REST and LMTP ports")
        except BaseException as exc:
            logs = self.log_tail()
            self.stop()
            if isinstance(exc, (TimeoutError, subprocess.TimeoutExpired)):
                raise MailmanUnavailable("%s\n%s" % (exc, logs)) from exc
            raise
        return self

    def _read_master_pid(self):
        try:
            return int((self.workdir / "var" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _ready(self):
        if self._master_pid and not _alive(self._master_pid):
            raise MailmanUnavailable("Mailman's master exited:\n" + self.log_tail())
        try:
            self.rest("GET", "system/versions")
            with socket.create_connection((self.host, self.lmtp_port), 5) as lmtp:
                greeting = lmtp.makefile("rb").readline()
        except (OSError, urllib.error.URLError):
            return False
        return greeting.startswith(b"220")

    def stop(self):
        """Stop the core and kill anything of it that is left; never raises."""
        if self.config is None:
            return
        if self.config.exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._command("stop", timeout=60)
        pid = self._master_pid or self._read_master_pid()
        if pid:
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not _alive(pid), 30, 0.1, "the master to exit")
            # The master is a session leader (``mailman start`` calls setsid), so
            # its runners share its process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for leftover in _pids_naming(str(self.config)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(leftover, signal.SIGKILL)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.config = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, chars=4000):
        logs = []
        log_dir = self.workdir / "var" / "logs" if self.workdir else None
        if log_dir and log_dir.is_dir():
            for path in sorted(log_dir.iterdir()):
                with contextlib.suppress(OSError):
                    logs.append("== %s ==\n%s" % (path.name,
                                                   path.read_text()[-chars:]))
        return "\n".join(logs)

    # REST ---------------------------------------------------------------------
    def rest(self, method, path, fields=None):
        """Call Mailman's REST API; return the decoded JSON answer (or None)."""
        url = "http://%s:%d/3.1/%s" % (self.host, self.rest_port, path)
        body = None
        if fields is not None:
            body = urllib.parse.urlencode(fields).encode("ascii")
        request = urllib.request.Request(url, data=body, method=method)
        token = b64encode(("%s:%s" % (REST_USER, REST_PASSWORD)).encode()).decode()
        request.add_header("Authorization", "Basic " + token)
        # Loopback only: never let an environment proxy setting route this.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def create_list(self, fqdn_listname):
        """Create the list (and its domain); return its list_id."""
        domain = fqdn_listname.partition("@")[2]
        try:
            self.rest("POST", "domains", {"mail_host": domain})
        except urllib.error.HTTPError as exc:
            if exc.code != 400:          # 400: the domain exists already
                raise
        self.rest("POST", "lists", {"fqdn_listname": fqdn_listname})
        return self.rest("GET", "lists/" + fqdn_listname)["list_id"]

    def subscribe(self, list_id, email):
        self.rest("POST", "members", {
            "list_id": list_id, "subscriber": email, "pre_verified": "true",
            "pre_confirmed": "true", "pre_approved": "true",
            "send_welcome_message": "false"})

    def queue_files(self, queue):
        """How many messages wait in one of Mailman's queues (e.g. "command")."""
        path = self.workdir / "var" / "queue" / queue
        if not path.is_dir():
            return 0
        return sum(1 for entry in path.iterdir() if entry.suffix == ".pck")

    def held_messages(self, list_id):
        return self.rest("GET", "lists/%s/held" % list_id).get("entries", [])


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        with open("/proc/%d/stat" % pid) as stat:
            if stat.read().rpartition(")")[2].split()[0] == "Z":
                return False
    return True


def _pids_naming(text):
    """Pids of live processes whose command line contains ``text`` (Linux only)."""
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ESRCH, errno.EACCES):
                raise
            continue
        if text.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def main(argv=None):
    """``scripts/mailman-venv``: build the cached environment, print its path."""
    def log(line):
        print(line, file=sys.stderr, flush=True)
    try:
        venv = ensure_venv(log=log)
    except MailmanUnavailable as exc:
        print("mailman-venv: %s" % exc, file=sys.stderr)
        return 1
    print(venv)
    return 0
