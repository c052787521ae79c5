"""The command line: ``python -m smtpd_compat`` and the ``smtpd-compat`` script.

parseargs is tested in-process; everything else runs the server as a
subprocess on a free loopback port and talks to it with smtplib, raw
sockets and real clients (swaks, curl, msmtp), relaying to Postfix's
smtp-sink where an upstream is needed.
"""

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import smtpd_compat
from smtpd_compat import _cli
from tests.cli_support import (
    END_OF_MESSAGE,
    ServerProcess,
    SmtpSink,
    StalledUpstream,
    child_env,
    compat_command,
    cpython311,
    read_reply,
    require_tool,
    running_server,
    start_server,
    with_default_sigint,
)

pytestmark = pytest.mark.timeout(300)

USAGE_LINE = re.compile(r"^Usage: (.*) \[options\] \[localhost:localport "
                        r"\[remotehost:remoteport\]\]$", re.M)


def run(argv, **kwargs):
    kwargs.setdefault("env", child_env())
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60, **kwargs)


def debugging_server(*options, host="127.0.0.1"):
    """The command for a CLI DebuggingServer on *host*, as a function of the port."""
    literal = "[%s]" % host if ":" in host else host
    return lambda port: compat_command("-n", "-c", "DebuggingServer", *options,
                                       "%s:%d" % (literal, port))


# --------------------------------------------------------------------------
# parseargs, in-process


@pytest.fixture
def restore_debugstream(monkeypatch):
    monkeypatch.setattr(smtpd_compat, "DEBUGSTREAM", smtpd_compat.DEBUGSTREAM)


def test_defaults_are_smtpds():
    options = smtpd_compat.parseargs([])
    assert isinstance(options, smtpd_compat.Options)
    assert (options.localhost, options.localport) == ("localhost", 8025)
    assert (options.remotehost, options.remoteport) == ("localhost", 25)
    assert options.setuid is True
    assert options.classname == "PureProxy"
    assert options.size_limit is None
    assert options.enable_SMTPUTF8 is False


@pytest.mark.parametrize("argv, size_limit, max_recipients", [
    ([], 33554432, 1000),
    (["-s", "0"], 0, 1000),
    (["--size", "1000", "--max-recipients", "5"], 1000, 5),
    (["--max-recipients", "0"], 33554432, 0),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_server_limits(argv, size_limit, max_recipients):
    # smtpd's usage text promises 33554432 without -s; smtpd itself passed None.
    options = smtpd_compat.parseargs(argv + ["-c", "DebuggingServer", "127.0.0.1:0"])
    server = _cli.make_server(options)
    try:
        assert server.data_size_limit == size_limit
        assert server.max_recipients == max_recipients
    finally:
        server.close()


def test_usage_lists_the_new_options():
    assert "--max-recipients count" in smtpd_compat.__doc__
    assert "--size 0 takes messages of any size" in smtpd_compat.__doc__


def test_parseargs_reads_sys_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["smtpd", "-n", "127.0.0.2:2525"])
    options = smtpd_compat.parseargs()
    assert options.setuid is False
    assert (options.localhost, options.localport) == ("127.0.0.2", 2525)


@pytest.mark.parametrize("argv, expected", [
    (["-n"], {"setuid": False}),
    (["--nosetuid"], {"setuid": False}),
    (["-c", "DebuggingServer"], {"classname": "DebuggingServer"}),
    (["--class", "pkg.mod.Server"], {"classname": "pkg.mod.Server"}),
    (["--class=DebuggingServer"], {"classname": "DebuggingServer"}),
    (["-s", "1024"], {"size_limit": 1024}),
    (["--size", "0"], {"size_limit": 0}),
    (["-u"], {"enable_SMTPUTF8": True}),
    (["--max-recipients", "50"], {"max_recipients": 50}),
    (["--max-recipients=0"], {"max_recipients": 0}),
    (["--smtputf8"], {"enable_SMTPUTF8": True}),
    (["127.0.0.1:2525"], {"localhost": "127.0.0.1", "localport": 2525,
                          "remotehost": "localhost", "remoteport": 25}),
    ([":2525", "mail.example:587"], {"localhost": "", "localport": 2525,
                                     "remotehost": "mail.example", "remoteport": 587}),
    (["[::1]:2525", "[2001:db8::1]:25"], {"localhost": "::1", "localport": 2525,
                                          "remotehost": "2001:db8::1", "remoteport": 25}),
    (["-nuc", "DebuggingServer", "h:1"], {"setuid": False, "enable_SMTPUTF8": True,
                                          "classname": "DebuggingServer"}),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_options(argv, expected):
    options = smtpd_compat.parseargs(argv)
    assert {name: getattr(options, name) for name in expected} == expected


@pytest.mark.parametrize("flag", ["-d", "--debug"])
def test_debug_sends_debugstream_to_stderr(flag, restore_debugstream):
    smtpd_compat.parseargs([flag])
    assert smtpd_compat.DEBUGSTREAM is sys.stderr


@pytest.mark.parametrize("argv, message", [
    (["-x"], "option -x not recognized"),
    (["--bogus"], "option --bogus not recognized"),
    (["-c"], "option -c requires argument"),
    (["-s", "big"], "Invalid size: big"),
    (["--max-recipients", "many"], "Invalid recipient limit: many"),
    (["--max-recipients", "-1"], "Invalid recipient limit: -1"),
    (["a:1", "b:2", "c:3"], "Invalid arguments: a:1, b:2, c:3"),
    (["localhost"], "Bad local spec: localhost"),
    (["localhost:port"], "Bad local spec: localhost:port"),
    (["localhost:65536"], "Bad local spec: localhost:65536"),
    (["localhost:1", "remote"], "Bad remote spec: remote"),
    (["localhost:1", "remote:x"], "Bad remote spec: remote:x"),
    (["[::1:25"], "Bad local spec: [::1:25"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_bad_arguments_exit_1_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        smtpd_compat.parseargs(argv)
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert message in err


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_exits_0(flag, capsys):
    with pytest.raises(SystemExit) as exited:
        smtpd_compat.parseargs([flag])
    assert exited.value.code == 0
    assert "Usage:" in capsys.readouterr().err


# --------------------------------------------------------------------------
# --help and --version against CPython 3.11's smtpd


def _usage_text(stderr: bytes) -> str:
    """The usage text, without CPython's DeprecationWarning lines before it."""
    text = stderr.decode()
    start = text.index("An RFC 5321 smtp proxy")
    return text[start:]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_smtpds_plus_a_block(flag, tmp_path):
    reference = run([cpython311(), "-m", "smtpd", flag], env=child_env(package=False),
                    cwd=str(tmp_path))
    ours = run(compat_command(flag), cwd=str(tmp_path))
    assert (ours.returncode, reference.returncode) == (0, 0)
    assert ours.stdout == reference.stdout == b""
    expected, got = _usage_text(reference.stderr), _usage_text(ours.stderr)
    # The program name differs (CPython shows the path of smtpd.py).
    assert USAGE_LINE.search(got).group(1) == "python -m smtpd_compat"
    expected = USAGE_LINE.sub("Usage: PROGRAM [options]", expected)
    got = USAGE_LINE.sub("Usage: PROGRAM [options]", got)
    added = got[len(expected.rstrip("\n")):]
    assert got.startswith(expected.rstrip("\n"))
    assert added.startswith("\n\nsmtpd_compat also takes:\n")
    assert "--timeout seconds" in added and "--max-connections count" in added


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_is_smtpds(flag, tmp_path):
    reference = run([cpython311(), "-m", "smtpd", flag], env=child_env(package=False),
                    cwd=str(tmp_path))
    ours = run(compat_command(flag), cwd=str(tmp_path))
    assert ours.returncode == reference.returncode == 0
    assert ours.stdout == reference.stdout == b"Python SMTP proxy version 0.3\n"
    assert ours.stderr == b""


# --------------------------------------------------------------------------
# Errors: one line on stderr, status 1, never a traceback


def _assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, result.stderr.decode()
    assert "Traceback" not in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("argv, fragments", [
    (["127.0.0.1:notaport"], ["Bad local spec: 127.0.0.1:notaport"]),
    (["127.0.0.1:70000"], ["Bad local spec", "out of range"]),
    (["127.0.0.1:0", "127.0.0.1"], ["Bad remote spec: 127.0.0.1"]),
    (["-c", "NoSuchServer", "127.0.0.1:0"], ["Bad class name: NoSuchServer"]),
    (["-c", "no_such_package_xyz.Server", "127.0.0.1:0"],
     ["Bad class name: no_such_package_xyz.Server", "No module named"]),
    (["-c", "os.path", "127.0.0.1:0"], ["Bad class name: os.path"]),
    (["-c", "os.sep", "127.0.0.1:0"], ["Bad class name: os.sep"]),
    (["-c", "smtpd_compat.SMTPChannel", "127.0.0.1:0"],
     ["Bad class name: smtpd_compat.SMTPChannel"]),
    (["-c", "Options", "127.0.0.1:0"], ["Bad class name: Options"]),
    (["-c", ".Relative", "127.0.0.1:0"], ["Bad class name: '.Relative'"]),
    (["-c", "..", "127.0.0.1:0"], ["Bad class name: '..'"]),
    (["-c", "", "127.0.0.1:0"], ["Bad class name: ''"]),
    (["-c", "a..b", "127.0.0.1:0"], ["Bad class name: 'a..b'"]),
    (["-u", "127.0.0.1:0"], ["PureProxy does not support SMTPUTF8"]),
    (["-x"], ["option -x not recognized"]),
    (["-s", "lots", "127.0.0.1:0"], ["Invalid size: lots"]),
    (["--timeout", "soon", "127.0.0.1:0"], ["Invalid timeout: soon"]),
    (["--max-connections", "-5", "127.0.0.1:0"], ["Invalid connection limit"]),
    (["a:1", "b:2", "c:3"], ["Invalid arguments"]),
], ids=lambda value: " ".join(value) if isinstance(value, list) and value and
    value[0][:1] in "-0123456789abc" else None)
def test_errors_are_one_line(argv, fragments, tmp_path):
    _assert_one_line_error(run(compat_command("-n", *argv), cwd=str(tmp_path)), *fragments)


def test_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run(compat_command("-n", "-c", "DebuggingServer", "127.0.0.1:%d" % port),
                     cwd=str(tmp_path))
    _assert_one_line_error(result, "cannot listen on 127.0.0.1:%d" % port,
                           "address already in use")


def _privileged_port_command():
    """How to run the CLI so that binding a port below 1024 is not allowed."""
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as setting:
        first_unprivileged = int(setting.read())
    if first_unprivileged <= 1:
        pytest.skip("every port is unprivileged on this system")
    if os.geteuid() != 0:
        return [], first_unprivileged - 1
    # As root: drop the one capability that allows binding such ports.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing")
    return ([setpriv, "--inh-caps=-net_bind_service",
             "--bounding-set=-net_bind_service"], first_unprivileged - 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sysctl")
def test_privileged_port(tmp_path):
    prefix, port = _privileged_port_command()
    server = ServerProcess(prefix + compat_command(
        "-n", "-c", "DebuggingServer", "127.0.0.1:%d" % port), env=child_env(),
        cwd=str(tmp_path))
    try:
        status = server.wait(60)
    finally:
        server.kill()
    result = subprocess.CompletedProcess(server.argv, status, server.stdout, server.stderr)
    _assert_one_line_error(result, "cannot listen on 127.0.0.1:%d" % port,
                           "permission denied")


# --------------------------------------------------------------------------
# Serving


def test_user_class_by_dotted_path(tmp_path):
    package = tmp_path / "mypkg"
    (package / "servers").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "servers" / "__init__.py").write_text(textwrap.dedent("""\
        import smtpd_compat


        class MyServer(smtpd_compat.SMTPServer):
            def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
                print("MyServer got", mailfrom, rcpttos, repr(data),
                      kwargs, self._remoteaddr, self.data_size_limit, flush=True)
                return "250 Stored by MyServer"
        """))
    env = child_env(pythonpath=[str(tmp_path)])
    command = lambda port: compat_command(  # noqa: E731
        "-n", "-c", "mypkg.servers.MyServer", "-s", "4096",
        "127.0.0.1:%d" % port, "upstream.invalid:2525")
    with running_server(command, env=env, cwd=str(tmp_path)) as (server, port):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("me")
            assert client.has_extn("size") and client.esmtp_features["size"] == "4096"
            client.mail("a@example.com", ["BODY=8BITMIME"])
            client.rcpt("b@example.com")
            assert client.data(b"Subject: mine\r\n\r\nbody") == (
                250, b"Stored by MyServer")
        out = server.wait_for_stdout(b"\n")
        assert server.stop() == 0
    assert out == (b"MyServer got a@example.com ['b@example.com'] "
                   b"b'Subject: mine\\n\\nbody' {'mail_options': ['BODY=8BITMIME'], "
                   b"'rcpt_options': []} ('upstream.invalid', 2525) 4096\n")


def test_default_class_is_pureproxy_to_the_remote_address(tmp_path):
    with SmtpSink() as sink:
        command = lambda port: compat_command(  # noqa: E731
            "-n", "127.0.0.1:%d" % port, "127.0.0.1:%d" % sink.port)
        with running_server(command, cwd=str(tmp_path)) as (server, port):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail("a@example.com", ["b@example.com", "c@example.com"],
                                b"Subject: relayed\r\n\r\nvia the CLI\r\n")
            assert server.stop() == 0
        [message] = sink.wait_for_messages(1)
    assert message.mail_args == "<a@example.com>"
    assert message.rcpt_args == ["<b@example.com>", "<c@example.com>"]
    assert message.data == b"Subject: relayed\nX-Peer: 127.0.0.1\n\nvia the CLI\n"


def _uid_of(pid):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError("no Uid line")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0
                    or not os.path.exists("/proc/self/status"),
                    reason="needs root (and /proc) to drop privileges")
def test_without_n_root_becomes_nobody_and_still_relays(tmp_path):
    """smtpd's default: bind, then setuid nobody, then serve (and import nothing new)."""
    import pwd
    nobody = pwd.getpwnam("nobody").pw_uid
    with SmtpSink() as sink:
        command = lambda port: compat_command(  # noqa: E731
            "127.0.0.1:%d" % port, "127.0.0.1:%d" % sink.port)
        with running_server(command, cwd="/", env=child_env()) as (server, port):
            assert _uid_of(server.pid) == nobody
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail("a@example.com", ["b@example.com"],
                                b"Subject: as nobody\r\n\r\nx")
            [message] = sink.wait_for_messages(1)
            assert server.stop() == 0
    assert b"Subject: as nobody\n" in message.data
    assert server.stderr == b""


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can setuid")
def test_without_n_as_a_user_asks_for_n(tmp_path):
    result = run(compat_command("-c", "DebuggingServer", "127.0.0.1:0"), cwd=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == b'Cannot setuid "nobody"; try running with -n option.\n'


def _shutdown_dialogue(signum, tmp_path, wrap=lambda argv: argv):
    """Serve one message, hold a second client open, stop with *signum*."""
    command = debugging_server()
    with running_server(lambda port: wrap(command(port)), cwd=str(tmp_path),
                        env=child_env()) as (server, port):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: before\r\n\r\nx")
        server.wait_for_stdout(END_OF_MESSAGE)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            assert read_reply(idle).startswith(b"220 ")
            idle.sendall(b"EHLO me\r\n")
            assert read_reply(idle).startswith(b"250-")
            status = server.stop(signum)
            goodbye = read_reply(idle)
            assert idle.recv(100) == b""
    return status, server, goodbye


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_stops_cleanly(signum, tmp_path):
    status, server, goodbye = _shutdown_dialogue(signum, tmp_path, with_default_sigint)
    assert status == 0
    assert re.fullmatch(rb"421 \S+ Service shutting down, closing connection\r\n", goodbye)
    assert server.stderr == b""
    assert server.stdout.count(END_OF_MESSAGE) == 1


def test_signal_in_the_middle_of_a_message(tmp_path):
    """Half a message when the server stops: 421, and nothing is printed."""
    with running_server(debugging_server(), cwd=str(tmp_path), env=child_env()) as (
            server, port):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            assert read_reply(client).startswith(b"220 ")
            for command, reply in [(b"EHLO me", b"250"), (b"MAIL FROM:<a@example.com>",
                                                          b"250"),
                                   (b"RCPT TO:<b@example.com>", b"250"), (b"DATA", b"354")]:
                client.sendall(command + b"\r\n")
                assert read_reply(client).startswith(reply)
            # The signal may well come before the server has read this: the
            # unread input must not turn the close into a reset that
            # destroys the 421.
            client.sendall(b"Subject: half\r\n\r\nthe first half")
            status = server.stop(signal.SIGTERM)
            assert re.fullmatch(rb"421 \S+ Service shutting down, closing connection\r\n",
                                read_reply(client))
            assert client.recv(100) == b""
    assert status == 0
    assert END_OF_MESSAGE not in server.stdout and b"half" not in server.stdout


def test_ignored_sigint_stays_ignored(tmp_path):
    """Started with SIGINT ignored (a background job of a script), like smtpd."""
    code = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "os.execv(sys.argv[1], sys.argv[1:])")
    command = debugging_server()
    with running_server(lambda port: [sys.executable, "-c", code, *command(port)],
                        cwd=str(tmp_path), env=child_env()) as (server, port):
        server.proc.send_signal(signal.SIGINT)
        # Still serving: a whole session after the signal.
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: after\r\n\r\nx")
        server.wait_for_stdout(END_OF_MESSAGE)
        assert server.running
        assert server.stop(signal.SIGTERM) == 0
    assert server.stderr == b""


def test_shutdown_with_a_relay_in_flight(tmp_path):
    """SIGTERM while the upstream never answers: the client gets a 4xx, the server exits."""
    with StalledUpstream() as upstream:
        command = lambda port: compat_command(  # noqa: E731
            "-n", "127.0.0.1:%d" % port, "%s:%d" % upstream.address)
        with running_server(command, cwd=str(tmp_path)) as (server, port):
            outcome = {}

            def send():
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                        client.sendmail("a@example.com", ["b@example.com"],
                                        b"Subject: stuck\r\n\r\nx")
                    outcome["result"] = "accepted"
                except smtplib.SMTPException as error:
                    outcome["result"] = error

            sender = threading.Thread(target=send)
            sender.start()
            assert upstream.connected.wait(30)
            status = server.stop(signal.SIGTERM)
            sender.join(60)
    assert status == 0
    error = outcome["result"]
    # PureProxy relays in lockstep: the silent upstream holds the client's MAIL.
    assert isinstance(error, smtplib.SMTPSenderRefused), error
    assert 400 <= error.smtp_code < 500
    assert b"Traceback" not in server.stderr


def test_more_than_1024_connections_at_once(tmp_path):
    """The CLI serves on poll/epoll: select() would fail past descriptor 1023."""
    resource = pytest.importorskip("resource")
    wanted = 1100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * wanted + 200
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip("the descriptor limit (%d) is too low" % hard)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    clients = []
    try:
        with running_server(debugging_server(), cwd=str(tmp_path),
                            env=child_env()) as (server, port):
            for _ in range(wanted):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=60))
            for client in clients:
                assert read_reply(client).startswith(b"220 ")
            for client in clients:
                client.sendall(b"NOOP\r\n")
            for client in clients:
                assert read_reply(client) == b"250 OK\r\n"
            assert server.running
            assert server.stop() == 0
        assert b"Traceback" not in server.stderr
    finally:
        for client in clients:
            client.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _greeting_when_served(port, deadline=20.0):
    """Connect until the greeting is a 220 (an earlier client may still be
    closing); return the connected socket."""
    give_up = time.monotonic() + deadline
    while True:
        client = socket.create_connection(("127.0.0.1", port), timeout=30)
        if read_reply(client).startswith(b"220 "):
            return client
        client.close()
        assert time.monotonic() < give_up, "never got a 220 greeting"
        time.sleep(0.05)


def test_max_connections_option(tmp_path):
    with running_server(debugging_server("--max-connections", "1"), cwd=str(tmp_path),
                        env=child_env()) as (server, port):
        first = _greeting_when_served(port)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as second:
            assert re.fullmatch(rb"421 \S+ Error: too many connections, try again later"
                                rb"\r\n", read_reply(second))
            assert second.recv(100) == b""
        first.sendall(b"QUIT\r\n")
        assert read_reply(first) == b"221 Bye\r\n"
        first.close()
        _greeting_when_served(port).close()
        assert server.stop() == 0


def test_timeout_option(tmp_path):
    with running_server(debugging_server("--timeout", "0.5"), cwd=str(tmp_path),
                        env=child_env()) as (server, port):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            assert read_reply(idle).startswith(b"220 ")
            assert re.fullmatch(rb"421 \S+ Error: timeout exceeded, closing connection\r\n",
                                read_reply(idle))
            assert idle.recv(100) == b""
        assert server.stop() == 0


def _ipv6_loopback_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="::1 is not available")
def test_ipv6_literal(tmp_path):
    with running_server(debugging_server(host="::1"), host="::1", cwd=str(tmp_path),
                        env=child_env()) as (server, port):
        with smtplib.SMTP("::1", port, timeout=30) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: six\r\n\r\nx")
        out = server.wait_for_stdout(END_OF_MESSAGE)
        assert server.stop() == 0
    assert b"b'X-Peer: ::1'\n" in out


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="::1 is not available")
def test_ipv6_pureproxy_both_ways(tmp_path):
    """Listening on [::1], relaying to 127.0.0.1; and listening on 127.0.0.1,
    relaying to an upstream given as [::1]."""
    with SmtpSink() as sink, running_server(debugging_server(host="::1"), host="::1",
                                            cwd=str(tmp_path), env=child_env()) as (
            debugging, debugging_port):
        proxy_to_sink = lambda port: compat_command(  # noqa: E731
            "-n", "[::1]:%d" % port, "127.0.0.1:%d" % sink.port)
        proxy_to_six = lambda port: compat_command(  # noqa: E731
            "-n", "127.0.0.1:%d" % port, "[::1]:%d" % debugging_port)
        with running_server(proxy_to_sink, host="::1", cwd=str(tmp_path)) as (
                proxy, port):
            with smtplib.SMTP("::1", port, timeout=30) as client:
                client.sendmail("a@example.com", ["b@example.com"], b"Subject: v6\r\n\r\nx")
            [message] = sink.wait_for_messages(1)
            assert proxy.stop() == 0
        with running_server(proxy_to_six, cwd=str(tmp_path)) as (proxy, port):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail("a@example.com", ["b@example.com"], b"Subject: v4\r\n\r\nx")
            out = debugging.wait_for_stdout(END_OF_MESSAGE)
            assert proxy.stop() == 0
        assert debugging.stop() == 0
    assert message.data == b"Subject: v6\nX-Peer: ::1\n\nx\n"
    # The proxy's X-Peer (its client) and then the DebuggingServer's (the proxy).
    assert (b"b'Subject: v4'\nb'X-Peer: 127.0.0.1'\nb'X-Peer: ::1'\nb''\nb'x'\n"
            in out)


# --------------------------------------------------------------------------
# The installed console script


def _installed_script():
    bindir = os.path.dirname(sys.executable)
    script = os.path.join(bindir, "smtpd-compat")
    if not os.path.exists(script):
        pytest.skip("the smtpd-compat script is not installed next to %s "
                    "(pip install the package)" % sys.executable)
    return script


def test_console_script(tmp_path):
    script = _installed_script()
    version = run([script, "--version"], cwd=str(tmp_path))
    assert version.stdout == b"Python SMTP proxy version 0.3\n"
    usage = run([script, "--help"], cwd=str(tmp_path))
    assert USAGE_LINE.search(usage.stderr.decode()).group(1).endswith("smtpd-compat")
    _assert_one_line_error(run([script, "-n", "-c", "Nope", "127.0.0.1:0"],
                               cwd=str(tmp_path)), "smtpd-compat: error: Bad class name")
    command = lambda port: [script, "-n", "-c", "DebuggingServer",  # noqa: E731
                            "127.0.0.1:%d" % port]
    with running_server(command, cwd=str(tmp_path), env=child_env()) as (server, port):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: script\r\n\r\nx")
        out = server.wait_for_stdout(END_OF_MESSAGE)
        assert server.stop() == 0
    assert b"b'Subject: script'\n" in out


@pytest.mark.slow
def test_console_script_in_a_fresh_venv(tmp_path):
    """pip install the package (not editable) into a new venv and run its script."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(os.path.dirname(os.path.dirname(__file__)), name),
                    str(source))
    shutil.copytree(os.path.dirname(smtpd_compat.__file__), str(source / "smtpd_compat"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300,
                   stdin=subprocess.DEVNULL)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    installed = subprocess.run(
        [str(bindir / "python"), "-m", "pip", "install", "-q", str(source)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=600)
    if installed.returncode != 0:
        pytest.skip("pip install failed (no package index?): %s"
                    % installed.stdout.decode()[-500:])
    script = str(bindir / "smtpd-compat")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    command = lambda port: [script, "-n", "-c", "DebuggingServer",  # noqa: E731
                            "127.0.0.1:%d" % port]
    with running_server(command, cwd=str(tmp_path), env=env) as (server, port):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: venv\r\n\r\nx")
        out = server.wait_for_stdout(END_OF_MESSAGE)
        assert server.stop() == 0
    assert b"b'Subject: venv'\n" in out
    located = subprocess.run([str(bindir / "python"), "-c",
                              "import smtpd_compat; print(smtpd_compat.__file__)"],
                             stdout=subprocess.PIPE, env=env, cwd=str(tmp_path),
                             timeout=60, check=True)
    assert located.stdout.decode().startswith(str(venv))


# --------------------------------------------------------------------------
# Real clients: swaks, curl, msmtp


MESSAGE_FILE = (b"From: sender@example.com\r\nTo: rcpt@example.com\r\n"
                b"Subject: %s test\r\n\r\nHello from %s.\r\n.dot line\r\n")


def _client_command(client, port, tmp_path):
    """The command that makes *client* send MESSAGE_FILE to 127.0.0.1:*port*."""
    message = tmp_path / ("%s.eml" % client)
    message.write_bytes(MESSAGE_FILE % (client.encode(), client.encode()))
    if client == "swaks":
        return [require_tool("swaks", "swaks"), "--server", "127.0.0.1", "--port",
                str(port), "--from", "sender@example.com", "--to", "rcpt@example.com",
                "--helo", "client.example", "--data", "@%s" % message], None
    if client == "curl":
        return [require_tool("curl", "curl"), "--silent", "--show-error",
                "smtp://127.0.0.1:%d/client.example" % port,
                "--mail-from", "sender@example.com", "--mail-rcpt", "rcpt@example.com",
                "--upload-file", str(message)], None
    if client == "msmtp":
        return [require_tool("msmtp", "msmtp"), "--file=/dev/null",
                "--host=127.0.0.1", "--port=%d" % port, "--auth=off", "--tls=off",
                "--domain=client.example", "--from=sender@example.com",
                "rcpt@example.com"], message.read_bytes()
    raise AssertionError(client)


def _send_with(client, port, tmp_path):
    argv, stdin = _client_command(client, port, tmp_path)
    result = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=120,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout.decode(errors="replace")


CLIENTS = ["swaks", "curl", "msmtp"]


@pytest.mark.parametrize("client", CLIENTS)
def test_real_client_to_debugging_server(client, tmp_path):
    with running_server(debugging_server(), cwd=str(tmp_path),
                        env=child_env()) as (server, port):
        _send_with(client, port, tmp_path)
        out = server.wait_for_stdout(END_OF_MESSAGE)
        assert server.stop() == 0
    # DebuggingServer prints each line of a bytes message as its repr.
    _assert_client_message(out.decode().splitlines(), client,
                           lambda line: repr(line.encode()))


def _assert_client_message(lines, client, render):
    """The message _send_with sent, as *lines* rendered by *render*."""
    assert render("Subject: %s test" % client) in lines
    assert render("Hello from %s." % client) in lines
    assert render(".dot line") in lines
    # X-Peer comes right before the line that ends the headers.
    peer = lines.index(render("X-Peer: 127.0.0.1"))
    assert lines[peer + 1] == render("")
    assert lines.index(render("Subject: %s test" % client)) < peer


@pytest.mark.parametrize("client", CLIENTS)
def test_real_client_through_pureproxy_to_smtp_sink(client, tmp_path):
    with SmtpSink() as sink:
        command = lambda port: compat_command(  # noqa: E731
            "-n", "-c", "PureProxy", "127.0.0.1:%d" % port, "127.0.0.1:%d" % sink.port)
        with running_server(command, cwd=str(tmp_path)) as (server, port):
            _send_with(client, port, tmp_path)
            [message] = sink.wait_for_messages(1)
            assert server.stop() == 0
    assert message.mail_args.startswith("<sender@example.com>")
    assert message.rcpt_args == ["<rcpt@example.com>"]
    _assert_client_message(message.data.decode().split("\n"), client, str)
    assert b"Traceback" not in server.stderr


def test_start_server_retries_when_the_port_was_taken(tmp_path):
    """The helper itself: a server that loses the race for its port is started again."""
    calls = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)

        def command(port):
            calls.append(port)
            use = taken.getsockname()[1] if len(calls) == 1 else port
            return compat_command("-n", "-c", "DebuggingServer", "127.0.0.1:%d" % use)

        server, port = start_server(command, cwd=str(tmp_path), env=child_env())
    try:
        assert len(calls) == 2 and port == calls[1]
        assert server.running
    finally:
        assert server.stop() == 0
