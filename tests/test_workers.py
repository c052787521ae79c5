"""Workers (``--workers N``, ``smtpd_compat.workers``) and systemd socket activation.

The pure parts (the LISTEN_* variables, the restart back-off, the words for
an exit status) are tested in-process; the rest runs the real CLI as
subprocesses on loopback, with smtplib and raw sockets as clients.  Which
worker took a message is learnt from a server class that writes its pid next
to each message's subject: the greeting and replies stay the default bytes.
"""

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import smtpd_compat
from smtpd_compat import _workers
from smtpd_compat._loop import Poller
from smtpd_compat.workers import adopting, serve_workers, systemd_sockets
from tests.cli_support import (
    STOP_TIMEOUT,
    ServerProcess,
    accepts,
    child_env,
    compat_command,
    free_port,
    kill_workers,
    listening_inodes,
    process_gone,
    read_reply,
    require_tool,
    running_workers,
)

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need os.fork"),
]

SHUTTING_DOWN = re.compile(rb"421 \S+ Service shutting down, closing connection\r\n")

RECORDER = textwrap.dedent("""\
    import os

    import smtpd_compat


    class Recorder(smtpd_compat.SMTPServer):
        \"\"\"Appends "PID SUBJECT" for every message to $RECORD_FILE.\"\"\"

        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            subject = data.split(b"Subject: ", 1)[1].split(b"\\n", 1)[0].decode()
            if subject.startswith("crash"):
                os.kill(os.getpid(), 9)
            with open(os.environ["RECORD_FILE"], "a") as record:
                record.write("%d %s\\n" % (os.getpid(), subject))


    class SlowFuture(smtpd_compat.SMTPServer):
        \"\"\"Stores each message from an executor thread, 8 s later.\"\"\"

        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            import concurrent.futures
            import time

            def store():
                time.sleep(8)
                with open(os.environ["RECORD_FILE"], "a") as record:
                    record.write("%d stored-late\\n" % os.getpid())

            executor = concurrent.futures.ThreadPoolExecutor(1)
            future = executor.submit(store)
            executor.shutdown(wait=False)
            return future


    class NeedsAnArgument(smtpd_compat.SMTPServer):
        def __init__(self, localaddr, remoteaddr, *args, **kwargs):
            raise ValueError("this class cannot start")
    """)


@pytest.fixture
def recorder(tmp_path):
    """(env, record path): a child environment where ``-c recorder.Recorder`` works."""
    (tmp_path / "recorder.py").write_text(RECORDER)
    record = tmp_path / "record.txt"
    record.write_text("")
    env = child_env({"RECORD_FILE": str(record)}, pythonpath=[str(tmp_path)])
    return env, record


def recorded(record):
    """{subject: [pids that stored it]} from the record file."""
    found = {}
    for line in record.read_text().splitlines():
        pid, subject = line.split(" ", 1)
        found.setdefault(subject, []).append(int(pid))
    return found


def send(port, subject, timeout=30):
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
        client.sendmail("a@example.com", ["b@example.com"],
                        "Subject: %s\r\n\r\nbody of %s\r\n" % (subject, subject))


def send_many(port, subjects, parallel=8):
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda subject: send(port, subject), subjects))


def workers_command(count, *options, address="127.0.0.1:0"):
    return compat_command("-n", "-c", "recorder.Recorder", "--workers", str(count),
                          *options, address)


# --------------------------------------------------------------------------
# Pure parts


@pytest.mark.parametrize("environ, expected", [
    ({}, []),
    ({"LISTEN_FDS": "1"}, []),
    ({"LISTEN_PID": "99", "LISTEN_FDS": "1"}, []),
    ({"LISTEN_PID": "42"}, []),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, [(3, "unknown")]),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "smtp:submission"},
     [(3, "smtp"), (4, "submission")]),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "1", "LISTEN_FDNAMES": ""}, [(3, "")]),
], ids=["nothing", "no-pid", "other-pid", "no-count", "one", "named", "empty-name"])
def test_parse_listen_fds(environ, expected):
    assert _workers.parse_listen_fds(environ, 42) == expected


@pytest.mark.parametrize("environ, message", [
    ({"LISTEN_PID": "x42", "LISTEN_FDS": "1"}, "LISTEN_PID='x42'"),
    ({"LISTEN_PID": " 42", "LISTEN_FDS": "1"}, "LISTEN_PID=' 42'"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "0"}, "LISTEN_FDS='0'"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, "LISTEN_FDS='-1'"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "1_0"}, "LISTEN_FDS='1_0'"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "\u0662"}, "LISTEN_FDS="),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "smtp"},
     "names 1 descriptors, LISTEN_FDS=2"),
], ids=["pid-letters", "pid-space", "zero", "negative", "underscore", "arabic-digit",
        "names-count"])
def test_parse_listen_fds_rejects_what_systemd_rejects(environ, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _workers.parse_listen_fds(environ, 42)


def test_systemd_sockets_unsets_the_variables_even_when_not_ours():
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "HOME": "/"}
    assert systemd_sockets(environ) == []
    assert environ == {"HOME": "/"}
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert systemd_sockets(environ, unset_environment=False) == []
    assert environ == {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "zero"}
    with pytest.raises(ValueError):
        systemd_sockets(environ)
    assert environ == {}


def test_check_listening():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="Accept=no"):
            _workers.check_listening(listener)
        listener.listen(1)
        _workers.check_listening(listener)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagrams:
        with pytest.raises(ValueError, match="not a TCP socket"):
            _workers.check_listening(datagrams)
    if hasattr(socket, "AF_UNIX"):
        left, right = socket.socketpair(socket.AF_UNIX)
        with left, right, pytest.raises(ValueError, match="not a TCP socket"):
            _workers.check_listening(left)


@pytest.mark.parametrize("status, words", [
    (0, "exited with status 0"),
    (3 << 8, "exited with status 3"),
    (signal.SIGKILL, "was killed by signal 9"),
])
def test_describe_status(status, words):
    assert _workers.describe_status(status) == words


@pytest.mark.parametrize("address, text", [
    (("127.0.0.1", 25), "127.0.0.1:25"), (("::1", 25), "[::1]:25"), (("", 8025), ":8025"),
])
def test_endpoint_text(address, text):
    assert _workers.endpoint_text(address) == text


def test_restart_back_off_doubles_while_a_worker_keeps_dying(monkeypatch):
    reports = []
    supervisor = _workers.Supervisor(1, None, None, None, reports.append, 1.0)
    worker = supervisor._workers[0]
    now = [1000.0]
    monkeypatch.setattr(_workers.time, "monotonic", lambda: now[0])
    delays = []
    for lived in [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 20.0, 0.5]:
        worker.started = now[0]
        now[0] += lived
        supervisor._schedule_restart(worker, "worker 1 died")
        delays.append(worker.delay)
        assert worker.restart_at == now[0] + worker.delay
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 0.1, 0.2]
    assert reports[0] == "worker 1 died; restarting it in 0.1 s"


# --------------------------------------------------------------------------
# The adoption seam, in-process


def test_a_server_adopts_a_listening_socket_and_binds_nothing():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    port = listener.getsockname()[1]
    unused = free_port()
    socket_map = {}
    with adopting(listener):
        server = smtpd_compat.DebuggingServer(("127.0.0.1", unused), None, map=socket_map)
        second = smtpd_compat.DebuggingServer(("127.0.0.1", 0), None, map=socket_map)
    try:
        assert server.socket is listener and server.accepting
        assert server.addr == ("127.0.0.1", port)
        assert server._localaddr == ("127.0.0.1", unused)
        assert second.socket is not listener  # only the first one adopts
        assert not accepts("127.0.0.1", unused)
        poller = Poller(socket_map)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            deadline = time.monotonic() + 10
            greeting = b""
            client.setblocking(False)
            while not greeting.endswith(b"\r\n") and time.monotonic() < deadline:
                poller.poll(0.05)
                try:
                    greeting += client.recv(100)
                except BlockingIOError:
                    pass
        poller.close()
        assert greeting.startswith(b"220 ") and greeting.endswith(b"\r\n")
    finally:
        smtpd_compat.asyncore.close_all(socket_map)
    with adopting(None):
        plain = smtpd_compat.DebuggingServer(("127.0.0.1", 0), None, map={})
    plain.close()


def test_only_an_adopted_socket_of_our_own_unmaps_ipv4_peers():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    try:
        # A socket from systemd: its peers are reported as the kernel gives them.
        inherited = _workers.listeners_for(("", 0), 5, listener)
        assert not inherited.dual_stack
        for dual_stack in (False, True):
            with adopting(listener, dual_stack):
                server = smtpd_compat.DebuggingServer(("", 0), None, map={})
            assert server._dual_stack is dual_stack
            server.del_channel()
    finally:
        listener.close()


def test_is_dual_stack_only_for_the_empty_host_on_ipv6():
    for host, family, expected in (("", socket.AF_INET6, True), ("", socket.AF_INET, False),
                                   ("::", socket.AF_INET6, False)):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            assert _workers.is_dual_stack(host, sock) is expected


# --------------------------------------------------------------------------
# Options


def test_workers_option():
    assert smtpd_compat.parseargs([]).workers is None
    assert smtpd_compat.parseargs(["--workers", "3"]).workers == 3
    assert smtpd_compat.parseargs(["--workers=1"]).workers == 1


@pytest.mark.parametrize("value", ["0", "-2", "two", ""])
def test_bad_worker_count(value, capsys):
    with pytest.raises(SystemExit) as exited:
        smtpd_compat.parseargs(["--workers", value])
    assert exited.value.code == 1
    assert capsys.readouterr().err == "Invalid worker count: %s\n" % value


def test_usage_mentions_workers():
    assert "--workers count" in smtpd_compat.__doc__
    assert "LISTEN_FDS" in smtpd_compat.__doc__


# --------------------------------------------------------------------------
# --workers N, for real


def test_two_workers_share_the_sessions(recorder, tmp_path):
    env, record = recorder
    with running_workers(workers_command(2), env=env, cwd=str(tmp_path)) as workers:
        assert len(workers.pids) == 2
        assert all(pid != workers.server.pid for pid in workers.pids)
        subjects = ["m%d" % number for number in range(40)]
        send_many(workers.port, subjects)
        status = workers.server.stop(signal.SIGTERM)
    assert status == 0
    stored = recorded(record)
    assert sorted(stored) == sorted(subjects)
    assert all(len(pids) == 1 for pids in stored.values())
    # The kernel spread the 40 connections over both workers.
    assert {pid for pids in stored.values() for pid in pids} == set(workers.pids)
    assert b"SO_REUSEPORT" in workers.server.stderr or sys.platform != "linux"
    assert len(workers.server.stderr.splitlines()) == 1, workers.server.stderr
    assert all(process_gone(pid) for pid in workers.pids)


def test_a_killed_worker_is_restarted_and_service_continues(recorder, tmp_path):
    env, record = recorder
    with running_workers(workers_command(2), env=env, cwd=str(tmp_path)) as workers:
        send_many(workers.port, ["before%d" % number for number in range(10)])
        os.kill(workers.pids[0], signal.SIGKILL)
        workers.server.wait_for_stderr(b"is serving again")
        [replacement] = workers.restarted()
        assert replacement not in workers.pids
        send_many(workers.port, ["after%d" % number for number in range(30)])
        assert workers.server.stop(signal.SIGTERM) == 0
    stored = recorded(record)
    assert len(stored) == 40
    after = {pid for subject, pids in stored.items() if subject.startswith("after")
             for pid in pids}
    assert after == {replacement, workers.pids[1]}
    assert re.search(rb"worker 1 \(pid %d\) was killed by signal 9; restarting it in 0.1 s"
                     % workers.pids[0], workers.server.stderr)
    assert process_gone(replacement)


def test_a_crash_loop_backs_off(recorder, tmp_path):
    env, record = recorder
    with running_workers(workers_command(1), env=env, cwd=str(tmp_path)) as workers:
        for attempt in range(3):
            with pytest.raises(OSError):  # smtplib's disconnect, or a reset
                send(workers.port, "crash%d" % attempt)
            deadline = time.monotonic() + 30
            while len(workers.restarted()) < attempt + 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        send(workers.port, "survivor")
        assert workers.server.stop(signal.SIGTERM) == 0
    delays = re.findall(rb"restarting it in ([\d.]+) s", workers.server.stderr)
    assert delays == [b"0.1", b"0.2", b"0.4"]
    assert list(recorded(record)) == ["survivor"]


def test_sigterm_keeps_every_acknowledged_message(recorder, tmp_path):
    """Senders in full flow and a client mid-DATA when the supervisor gets SIGTERM."""
    env, record = recorder
    acknowledged, refused = [], []
    lock = threading.Lock()
    stop_sending = threading.Event()

    def sender(number):
        for message in range(1000):
            if stop_sending.is_set():
                return
            subject = "s%d-%d" % (number, message)
            try:
                send(workers.port, subject, timeout=60)
            except (smtplib.SMTPException, OSError) as error:
                with lock:
                    refused.append((subject, error))
                return
            with lock:
                acknowledged.append(subject)

    with running_workers(workers_command(2), env=env, cwd=str(tmp_path)) as workers:
        with socket.create_connection(("127.0.0.1", workers.port), timeout=60) as halfway:
            assert read_reply(halfway).startswith(b"220 ")
            for command, reply in [(b"HELO me", b"250"), (b"MAIL FROM:<a@example.com>",
                                                          b"250"),
                                   (b"RCPT TO:<b@example.com>", b"250"), (b"DATA", b"354")]:
                halfway.sendall(command + b"\r\n")
                assert read_reply(halfway).startswith(reply)
            halfway.sendall(b"Subject: halfway\r\n\r\nthe first half")
            threads = [threading.Thread(target=sender, args=(number,)) for number in range(6)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while len(acknowledged) < 30 and time.monotonic() < deadline:
                time.sleep(0.01)
            status = workers.server.stop(signal.SIGTERM)
            stop_sending.set()
            for thread in threads:
                thread.join(60)
            assert SHUTTING_DOWN.fullmatch(read_reply(halfway))
            assert halfway.recv(100) == b""
    assert status == 0
    assert len(acknowledged) >= 30
    stored = recorded(record)
    missing = [subject for subject in acknowledged if subject not in stored]
    assert missing == []
    assert "halfway" not in stored
    assert all(len(pids) == 1 for pids in stored.values())
    for subject, error in refused:
        # Mid-session: a 421; between sessions: the port is closed.
        code = getattr(error, "smtp_code", None)
        assert code in (421, None), (subject, error)
    assert b"Traceback" not in workers.server.stderr


def test_a_worker_waits_for_its_threads_as_a_process_exit_does(recorder, tmp_path):
    """A Future still running after the shutdown's grace finishes before the worker exits.

    It takes 8 s: longer than the 5 s for pending replies plus the 2 s for
    the goodbyes, after which the worker's loop is over.
    """
    env, record = recorder
    argv = compat_command("-n", "-c", "recorder.SlowFuture", "--workers", "1", "127.0.0.1:0")
    with running_workers(argv, env=env, cwd=str(tmp_path)) as workers:
        with socket.create_connection(("127.0.0.1", workers.port), timeout=60) as client:
            assert read_reply(client).startswith(b"220 ")
            client.sendall(b"HELO me\r\nMAIL FROM:<a@example.com>\r\n"
                           b"RCPT TO:<b@example.com>\r\nDATA\r\n")
            replies = b""
            while replies.count(b"\r\n") < 4:
                replies += client.recv(1000)
            assert replies.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            client.sendall(b"Subject: slow\r\n\r\nx\r\n.\r\n")
            time.sleep(0.5)  # the Future is running
            status = workers.server.stop(signal.SIGTERM)
            # Not acknowledged within the 5 s grace: the client may send it again.
            assert SHUTTING_DOWN.fullmatch(read_reply(client))
    assert status == 0
    assert recorded(record) == {"stored-late": workers.pids}


def test_sigint_stops_the_workers_too(recorder, tmp_path):
    env, _ = recorder
    with running_workers(workers_command(2), env=env, cwd=str(tmp_path)) as workers:
        with socket.create_connection(("127.0.0.1", workers.port), timeout=30) as idle:
            assert read_reply(idle).startswith(b"220 ")
            status = workers.server.stop(signal.SIGINT)
            assert SHUTTING_DOWN.fullmatch(read_reply(idle))
    assert status == 0
    assert all(process_gone(pid) for pid in workers.pids)
    assert not accepts("127.0.0.1", workers.port)


def test_workers_stop_when_the_supervisor_is_killed(recorder, tmp_path):
    env, _ = recorder
    with running_workers(workers_command(2), env=env, cwd=str(tmp_path)) as workers:
        workers.server.proc.kill()
        deadline = time.monotonic() + STOP_TIMEOUT
        while (not all(process_gone(pid) for pid in workers.pids)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert all(process_gone(pid) for pid in workers.pids)


def _one_line_error(result):
    assert result.returncode == 1, result
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in lines[0]
    return lines[0]


def run_cli(argv, env, cwd):
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, cwd=cwd, timeout=60)


def test_port_in_use(recorder, tmp_path):
    env, _ = recorder
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(workers_command(2, address="127.0.0.1:%d" % port), env,
                         str(tmp_path))
    line = _one_line_error(result)
    assert "cannot listen on 127.0.0.1:%d: address already in use" % port in line


def test_port_taken_by_another_supervisor(recorder, tmp_path):
    """SO_REUSEPORT would let a second copy share the port silently."""
    env, _ = recorder
    with running_workers(workers_command(1), env=env, cwd=str(tmp_path)) as workers:
        result = run_cli(workers_command(1, address="127.0.0.1:%d" % workers.port),
                         env, str(tmp_path))
        assert "address already in use" in _one_line_error(result)
        assert workers.server.stop() == 0


@pytest.mark.parametrize("options, fragment", [
    (["-c", "NoSuchServer"], "Bad class name: NoSuchServer"),
    (["-c", "recorder.NeedsAnArgument"], "cannot start recorder.NeedsAnArgument: "
                                         "this class cannot start"),
    (["-u", "-c", "PureProxy"], "PureProxy does not support SMTPUTF8"),
], ids=["no-class", "init-fails", "pureproxy-smtputf8"])
def test_workers_that_cannot_start(options, fragment, recorder, tmp_path):
    env, _ = recorder
    argv = compat_command("-n", "--workers", "2", *options, "127.0.0.1:0")
    result = run_cli(argv, env, str(tmp_path))
    assert fragment in _one_line_error(result)


# --------------------------------------------------------------------------
# Socket activation: the listening socket as systemd passes it


# Moves the socket to descriptor 3 and sets LISTEN_PID to its own pid, then
# execs the server: what systemd does between fork and exec.
ACTIVATE = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
            "os.environ['LISTEN_PID'] = str(os.getpid()); "
            "os.execv(sys.argv[2], sys.argv[2:])")


class Activation:
    """A command run with *listener* passed as systemd passes it.

    Use as a context manager around starting the process: the test's copy
    of the socket is closed afterwards, so the server holds the only one.
    """

    def __init__(self, listener, argv, env, names="smtp"):
        self.listener = listener
        self.fd = os.dup(listener.fileno())  # a number other than 3, for the move
        self.argv = [sys.executable, "-c", ACTIVATE, str(self.fd), *argv]
        self.env = dict(env, LISTEN_FDS="1", LISTEN_FDNAMES=names)
        self.pass_fds = (self.fd,)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        os.close(self.fd)
        self.listener.close()


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


def _inode(sock):
    return os.fstat(sock.fileno()).st_ino


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_socket_activation(listener, recorder, tmp_path):
    env, record = recorder
    port, unused, inode = listener.getsockname()[1], free_port(), _inode(listener)
    argv = compat_command("-n", "-c", "recorder.Recorder", "127.0.0.1:%d" % unused)
    with Activation(listener, argv, env) as activation:
        server = ServerProcess(activation.argv, env=activation.env, cwd=str(tmp_path),
                               pass_fds=activation.pass_fds)
    try:
        send(port, "activated")
        assert listening_inodes(server.pid) == [inode]
        assert not accepts("127.0.0.1", unused)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            assert read_reply(idle).startswith(b"220 ")
            status = server.stop(signal.SIGTERM)
            assert SHUTTING_DOWN.fullmatch(read_reply(idle))
    finally:
        server.kill()
    assert status == 0
    assert server.stderr == b""
    assert list(recorded(record)) == ["activated"]
    assert not accepts("127.0.0.1", port)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_socket_activation_with_workers(listener, recorder, tmp_path):
    env, record = recorder
    port, unused, inode = listener.getsockname()[1], free_port(), _inode(listener)
    argv = workers_command(2, address="127.0.0.1:%d" % unused)
    with Activation(listener, argv, env) as activation:
        context = running_workers(activation.argv, env=activation.env, cwd=str(tmp_path),
                                  pass_fds=activation.pass_fds)
        workers = context.__enter__()
    try:
        assert workers.port == port
        assert b"(one shared socket)" in workers.server.stderr
        subjects = ["w%d" % number for number in range(40)]
        send_many(port, subjects)
        for pid in [workers.server.pid] + workers.pids:
            assert listening_inodes(pid) == [inode]
        assert not accepts("127.0.0.1", unused)
        assert workers.server.stop(signal.SIGTERM) == 0
    finally:
        context.__exit__(None, None, None)
    stored = recorded(record)
    assert sorted(stored) == sorted(subjects)
    assert {pid for pids in stored.values() for pid in pids} <= set(workers.pids)
    assert all(process_gone(pid) for pid in workers.pids)
    assert not accepts("127.0.0.1", port)


def test_socket_activation_needs_a_listening_socket(recorder, tmp_path):
    env, _ = recorder
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))  # not listening, as with Accept=yes
    argv = compat_command("-n", "-c", "DebuggingServer", "127.0.0.1:0")
    with Activation(bound, argv, env) as activation:
        result = subprocess.run(activation.argv, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=activation.env, cwd=str(tmp_path), timeout=60,
                                pass_fds=activation.pass_fds)
    line = _one_line_error(result)
    assert "socket activation: descriptor 3 (smtp) is not a listening socket" in line


@pytest.mark.parametrize("options", [[], ["--workers", "2"]], ids=["one-process", "workers"])
def test_systemds_own_socket_activate(options, recorder, tmp_path):
    """systemd-socket-activate(1) binds, and execs the server at the first connection."""
    tool = require_tool("systemd-socket-activate", "systemd")
    env, record = recorder
    port, unused = free_port(), free_port()
    argv = [tool, "-l", "127.0.0.1:%d" % port, "--fdname=smtp",
            "-E", "PYTHONPATH=" + env["PYTHONPATH"], "-E", "RECORD_FILE=%s" % record,
            *compat_command("-n", "-c", "recorder.Recorder", *options,
                            "127.0.0.1:%d" % unused)]
    server = ServerProcess(argv, env=env, cwd=str(tmp_path))
    try:
        server.wait_for_stderr(b"Listening on 127.0.0.1:%d" % port)
        send(port, "first")  # the server starts for this connection
        send(port, "second")
        assert not accepts("127.0.0.1", unused)
        if options:  # worker 1 may serve both while worker 2 still starts
            server.wait_for_stderr(b"with 2 workers")
        assert server.stop(signal.SIGTERM) == 0
    finally:
        kill_workers(server)
    assert sorted(recorded(record)) == ["first", "second"]
    if options:
        assert b"with 2 workers" in server.stderr and b"(one shared socket)" in server.stderr


def test_two_sockets_from_systemd_are_refused(recorder, tmp_path):
    tool = require_tool("systemd-socket-activate", "systemd")
    env, _ = recorder
    first, second = free_port(), free_port()
    argv = [tool, "-l", "127.0.0.1:%d" % first, "-l", "127.0.0.1:%d" % second,
            "--fdname=smtp:submission", "-E", "PYTHONPATH=" + env["PYTHONPATH"],
            *compat_command("-n", "-c", "DebuggingServer", "127.0.0.1:0")]
    server = ServerProcess(argv, env=env, cwd=str(tmp_path))
    try:
        server.wait_for_stderr(b"Listening on 127.0.0.1:%d" % second)
        with socket.create_connection(("127.0.0.1", first), timeout=30) as client:
            try:  # the server exits without a greeting
                assert client.recv(100) == b""
            except ConnectionResetError:
                pass
        status = server.wait(60)
    finally:
        server.kill()
    assert status == 1
    assert server.stderr.splitlines()[-1] == (
        b"smtpd_compat: error: socket activation: systemd passed 2 sockets "
        b"(smtp, submission); one is served")


def test_listen_pid_of_another_process_is_ignored(recorder, tmp_path):
    env, record = recorder
    port = free_port()
    env = dict(env, LISTEN_PID="1", LISTEN_FDS="1")
    server = ServerProcess(compat_command("-n", "-c", "recorder.Recorder",
                                          "127.0.0.1:%d" % port), env=env, cwd=str(tmp_path))
    try:
        deadline = time.monotonic() + 60
        while not accepts("127.0.0.1", port) and time.monotonic() < deadline:
            assert server.running, server.stderr
            time.sleep(0.05)
        send(port, "bound")
        assert server.stop() == 0
    finally:
        server.kill()
    assert list(recorded(record)) == ["bound"]


# --------------------------------------------------------------------------
# The Python API


API_SCRIPT = textwrap.dedent("""\
    import sys

    from recorder import Recorder
    from smtpd_compat import _workers
    from smtpd_compat.workers import serve_workers

    if __name__ == "__main__":
        if sys.argv[1:] == ["shared"]:  # as on BSD and macOS
            _workers.kernel_balances_reuse_port = lambda: False
        sys.exit(serve_workers(lambda address: Recorder(address, None),
                               ("127.0.0.1", 0), workers=2))
    """)


@pytest.mark.parametrize("mode, words", [
    ("reuseport", b"(SO_REUSEPORT)"), ("shared", b"(one shared socket)"),
])
def test_serve_workers_api(mode, words, recorder, tmp_path):
    if mode == "reuseport" and not _workers.kernel_balances_reuse_port():
        pytest.skip("SO_REUSEPORT does not balance here")
    env, record = recorder
    (tmp_path / "serve.py").write_text(API_SCRIPT)
    argv = [sys.executable, "-W", "error", str(tmp_path / "serve.py"), mode]
    with running_workers(argv, env=env, cwd=str(tmp_path)) as workers:
        assert workers.server.stderr.startswith(b"smtpd_compat: serving 127.0.0.1:")
        assert words in workers.server.stderr
        send_many(workers.port, ["api%d" % number for number in range(40)])
        os.kill(workers.pids[0], signal.SIGKILL)
        workers.server.wait_for_stderr(b"is serving again")
        send_many(workers.port, ["again%d" % number for number in range(10)])
        assert workers.server.stop(signal.SIGTERM) == 0
    stored = recorded(record)
    assert len(stored) == 50
    assert all(len(pids) == 1 for pids in stored.values())
    if mode == "reuseport":
        # A shared socket goes to whichever worker accepts first: no spread promised.
        assert {pid for subject, pids in stored.items() if subject.startswith("api")
                for pid in pids} == set(workers.pids)
    assert not accepts("127.0.0.1", workers.port)


def test_serve_workers_checks_its_arguments():
    with pytest.raises(ValueError, match="at least 1"):
        serve_workers(lambda address: None, ("127.0.0.1", 0), workers=0)
    with pytest.raises(ValueError, match="an address or a listener"):
        serve_workers(lambda address: None, None, workers=1)
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="Accept=no"):
            serve_workers(lambda address: None, None, workers=1, listener=bound)
