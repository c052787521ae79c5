"""Resource limits: idle timeouts, backpressure, bounded buffers, descriptors, soak.

Servers run as the real CLI (``python -m smtpd_compat``) in a subprocess, so
their memory can be read from /proc/PID/status and their descriptor limit
set with RLIMIT_NOFILE.  Memory bounds are generous (tens of MiB) next to what
an unbounded server would use for the same input (GiBs).
"""

import hashlib
import os
import resource
import select
import smtplib
import socket
import threading
import time

import pytest

try:
    from . import robust_support as rs  # tests/ is a package
except ImportError:
    import robust_support as rs  # tests/ is on sys.path (rootdir-less import)
import smtpd_compat
from smtpd_compat.testing import Controller

pytestmark = pytest.mark.timeout(300)

MIB = 1024 * 1024
# How much a server's peak RSS may grow while a test pushes 1 GiB at it.
MEMORY_BOUND_KIB = 48 * 1024


# -- idle timeout ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_timeout_server(tmp_path_factory):
    with rs.CliServer(tmp_path_factory.mktemp("timeout"), "--timeout", "1") as server:
        yield server
        server.assert_healthy()
    assert server.returncode == 0


def test_silent_client_is_cut_off(quick_timeout_server):
    with rs.Client(quick_timeout_server.port) as client:
        lines = rs.replies_until_close(client)
    assert len(lines) == 2 and lines[1].startswith(b"421 ")
    assert lines[1].endswith(rs.TIMEOUT_TAIL)


@pytest.mark.parametrize("prefix", [b"", b"EHLO x\r\nMAIL FROM:<a@example.com>\r\n"
                                    b"RCPT TO:<b@example.com>\r\nDATA\r\nSubject: slow\r\n"],
                         ids=["command", "data"])
def test_slowloris_client_is_cut_off(quick_timeout_server, prefix):
    """One byte every 0.2 s, never a line end: the timeout still fires."""
    with rs.Client(quick_timeout_server.port) as client:
        client.send(prefix)
        trickled = 0
        client.sock.settimeout(0.2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                client.send(b"x")
                trickled += 1
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                if client.line().startswith(b"421 "):
                    break
            except socket.timeout:
                continue
        lines = rs.replies_until_close(client)
    assert lines[-1].startswith(b"421 ") and lines[-1].endswith(rs.TIMEOUT_TAIL)
    assert trickled >= 2  # it kept sending, but never a whole line
    assert not [e for e in quick_timeout_server.entries() if e["id"] is None]
    rs.figure("slowloris bytes trickled before the cut-off (%s)" % (
        "DATA" if prefix else "command"), trickled)


def test_active_client_is_not_cut_off(quick_timeout_server):
    """A complete line restarts the clock."""
    with rs.Client(quick_timeout_server.port) as client:
        for _ in range(8):
            time.sleep(0.25)
            assert client.cmd("NOOP") == b"250 OK\r\n"
        lines = rs.replies_until_close(client)
    assert lines[-1].startswith(b"421 ")


def test_timeout_zero_waits_forever(tmp_path):
    with rs.CliServer(tmp_path, "--timeout", "0") as server:
        with rs.Client(server.port) as client:
            time.sleep(2.5)
            assert client.cmd("NOOP") == b"250 OK\r\n"
        server.assert_healthy()
        assert server.stop() == 0


def test_idle_timeout_attribute_in_a_threaded_server():
    class Sink(smtpd_compat.SMTPServer):
        idle_timeout = 0.5

        def process_message(self, *args, **kwargs):
            return None

    with Controller(Sink) as srv:
        with rs.Client(srv.port) as quick, rs.Client(srv.port) as slow:
            assert quick.cmd("HELO q") == b"250 " + quick.greeting[0].split()[1] + b"\r\n"
            lines = rs.replies_until_close(slow)
            assert lines[-1].startswith(b"421 ")
        srv.server.idle_timeout = 0  # per instance: new connections wait forever
        with rs.Client(srv.port) as patient:
            time.sleep(1.2)
            assert patient.cmd("NOOP") == b"250 OK\r\n"


# -- memory ----------------------------------------------------------------------


@pytest.fixture
def memory_server(tmp_path):
    with rs.CliServer(tmp_path, "-s", str(MIB)) as server:
        rs.normal_transaction(server.port, "warm-up")
        yield server
        rs.normal_transaction(server.port, "still-works")
        server.assert_healthy()
        assert server.stop() == 0


def stream(client, total, chunk):
    for _ in range(total // len(chunk)):
        client.send(chunk)


@pytest.mark.slow
def test_1gib_without_line_end_stays_bounded(memory_server):
    before = memory_server.peak_rss_kib()
    with rs.Client(memory_server.port) as client:
        assert client.cmd("EHLO x").startswith(b"250 ")
        stream(client, 1024 * MIB, b"A" * MIB)
        assert client.cmd(b"") == b"500 Error: line too long\r\n"
        assert client.cmd("NOOP") == b"250 OK\r\n"
        final, _ = client.transaction("after-long-line")
        assert final == b"250 OK\r\n"
    growth = memory_server.peak_rss_kib() - before
    rs.figure("peak RSS growth while 1 GiB arrived without a line end (KiB)", growth)
    assert growth < MEMORY_BOUND_KIB


@pytest.mark.slow
def test_1gib_of_data_over_the_limit_stays_bounded(memory_server):
    before = memory_server.peak_rss_kib()
    with rs.Client(memory_server.port) as client:
        assert client.cmd("EHLO x").startswith(b"250 ")
        assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK\r\n"
        assert client.cmd("RCPT TO:<b@example.com>") == b"250 OK\r\n"
        assert client.cmd("DATA").startswith(b"354")
        stream(client, 1024 * MIB, (b"x" * 1022 + b"\r\n") * 1024)
        client.send(b".\r\n")
        assert client.reply() == [b"552 Error: Too much mail data\r\n"]
        assert client.cmd("NOOP") == b"250 OK\r\n"
    growth = memory_server.peak_rss_kib() - before
    rs.figure("peak RSS growth while 1 GiB of DATA over a 1 MiB limit arrived (KiB)", growth)
    assert growth < MEMORY_BOUND_KIB
    assert [e["id"] for e in memory_server.entries()] == ["warm-up"]


@pytest.mark.slow
def test_1gib_streamed_message_stays_bounded(tmp_path):
    """A streaming server never holds the message: 1 GiB passes in flat memory."""
    block = (b"y" * 1022 + b"\r\n") * 1024  # 1 MiB on the wire
    with rs.CliServer(tmp_path, "-s", "0", server_class="robust_support.StreamingSinkServer",
                      env={"ROBUST_NO_MARKERS": "1"}) as server:
        before = server.peak_rss_kib()
        with rs.Client(server.port) as client:
            assert client.cmd("EHLO x").startswith(b"250 ")
            assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK\r\n"
            assert client.cmd("RCPT TO:<b@example.com>") == b"250 OK\r\n"
            assert client.cmd("DATA").startswith(b"354")
            stream(client, 1024 * MIB, block)
            client.send(b".\r\n")
            assert client.reply() == [b"250 OK\r\n"]
        growth = server.peak_rss_kib() - before
        [entry] = server.entries()
        server.assert_healthy()
        assert server.stop() == 0
    rs.figure("peak RSS growth while a 1 GiB message was streamed (KiB)", growth)
    assert growth < MEMORY_BOUND_KIB
    # What process_message would get: LF line ends, and the last line's end
    # belongs to the final dot.
    unstuffed = block.replace(b"\r\n", b"\n")
    expected = hashlib.sha256()
    for _ in range(1023):
        expected.update(unstuffed)
    expected.update(unstuffed[:-1])
    assert entry["event"] == "streamed"
    assert entry["size"] == 1024 * len(unstuffed) - 1
    assert entry["sha256"] == expected.hexdigest()


@pytest.mark.slow
def test_streamed_message_cut_off_is_aborted(tmp_path):
    with rs.CliServer(tmp_path, server_class="robust_support.StreamingSinkServer") as server:
        with rs.Client(server.port) as client:
            assert client.cmd("EHLO x").startswith(b"250 ")
            client.cmd("MAIL FROM:<a@example.com>")
            client.cmd("RCPT TO:<b@example.com>")
            assert client.cmd("DATA").startswith(b"354")
            client.send(b"x" * (4 * MIB))
            client.abort()
        deadline = time.monotonic() + 30
        while server.journal_length() < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        [entry] = server.entries()
        server.assert_healthy()
    assert entry["event"] == "aborted" and entry["reason"] == "closed"


HELP_REPLY = b"250 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY\r\n"


def test_pipelined_commands_never_read_stay_bounded(memory_server):
    """Send HELP after HELP and read nothing: the server must stop reading."""
    before = memory_server.peak_rss_kib()
    cap = 64 * MIB  # an unbounded server would take it all (and ~760 MiB of replies)
    blob = b"HELP\r\n" * 10000
    sent = 0
    with rs.Client(memory_server.port, buffer_size=16384) as client:
        client.sock.setblocking(False)
        stalled_since = time.monotonic()
        while sent < cap and time.monotonic() - stalled_since < 2.0:
            try:
                sent += client.sock.send(blob[sent % len(blob):])
                stalled_since = time.monotonic()
            except BlockingIOError:
                select.select([], [client.sock], [], 0.1)
            if memory_server.rss_kib() - before > MEMORY_BOUND_KIB:
                break  # it keeps queueing replies: fail now, not after 64 MiB
        growth = memory_server.peak_rss_kib() - before
        assert memory_server.alive()
        # Now read: every whole command was answered, in order.
        client.sock.setblocking(True)
        client.sock.settimeout(30)
        commands = sent // 6
        expected = len(HELP_REPLY) * commands
        received = 0
        while received < expected:
            chunk = client.sock.recv(min(MIB, expected - received))
            assert chunk, "server closed after %d of %d bytes" % (received, expected)
            # Every byte continues the repeated reply.
            offset = received % len(HELP_REPLY)
            pattern = HELP_REPLY * (len(chunk) // len(HELP_REPLY) + 2)
            assert chunk == pattern[offset:offset + len(chunk)]
            received += len(chunk)
        if sent % 6:
            client.send(b"HELP\r\n"[sent % 6:])  # finish the command cut in two
            assert client.reply() == [HELP_REPLY]
        assert client.cmd("NOOP") == b"250 OK\r\n"
    rs.figure("pipelined HELP commands the client got in before the server stopped reading",
              commands)
    rs.figure("peak RSS growth with replies nobody read (KiB)", growth)
    assert sent < cap
    assert growth < MEMORY_BOUND_KIB


# -- descriptors and connection limits --------------------------------------------


def greeted(sockets, timeout):
    """The sockets among *sockets* that receive a 220 greeting within *timeout*."""
    done = {}
    pending = {s.fileno(): s for s in sockets}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        readable, _, _ = select.select(list(pending.values()), [], [],
                                       max(0.0, deadline - time.monotonic()))
        for s in readable:
            data = s.recv(4096)
            assert data.startswith(b"220 "), data
            done[s.fileno()] = pending.pop(s.fileno())
    return list(done.values())


def test_emfile_on_accept_keeps_listening(tmp_path):
    nofile = 32
    with rs.CliServer(tmp_path, nofile=nofile) as server:
        rs.normal_transaction(server.port, "before")
        in_use = len(os.listdir("/proc/%d/fd" % server.pid))
        free = nofile - in_use
        sockets = [socket.create_connection((rs.HOST, server.port), timeout=10)
                   for _ in range(free + 8)]
        try:
            served = greeted(sockets, 3.0)
            waiting = [s for s in sockets if s not in served]
            # The server ran out of descriptors: some clients wait in the backlog.
            assert len(waiting) >= 4, (len(served), free)
            assert server.alive()
            # Free descriptors: the waiting clients are served, the listener lives.
            for s in served:
                s.sendall(b"QUIT\r\n")
                s.recv(4096)
                s.close()
            late = greeted(waiting, 20.0)
            assert len(late) == len(waiting)
        finally:
            for s in sockets:
                s.close()
        rs.normal_transaction(server.port, "after")
        server.assert_healthy()
        assert server.stop() == 0
    assert "accept() failed, retrying shortly: [Errno 24]" in server.stderr()
    rs.figure("EMFILE test: clients waiting while the server had no descriptors", len(waiting))


def test_max_connections_answers_421(tmp_path):
    with rs.CliServer(tmp_path, "--max-connections", "3") as server:
        clients = [rs.Client(server.port) for _ in range(3)]
        try:
            with rs.Client(server.port, read_greeting=False) as refused:
                lines = rs.replies_until_close(refused)
            assert len(lines) == 1 and lines[0].startswith(b"421 ")
            assert b"too many connections" in lines[0]
            for client in clients:
                assert client.cmd("NOOP") == b"250 OK\r\n"
            assert clients[0].cmd("QUIT") == b"221 Bye\r\n"
            assert clients[0].at_eof()
            clients[0].close()
            # A place is free again once the server has seen that close.
            for _ in range(100):
                clients[0] = rs.Client(server.port, read_greeting=False)
                if clients[0].line().startswith(b"220 "):
                    break
                clients[0].close()
                time.sleep(0.05)
            assert clients[0].cmd("NOOP") == b"250 OK\r\n"
        finally:
            for client in clients:
                client.close()
        server.assert_healthy()
        assert server.stop() == 0


CONCURRENT_SESSIONS = 1500


@pytest.mark.slow
def test_more_than_1024_concurrent_sessions(tmp_path):
    previous = rs.raise_nofile_limit(CONCURRENT_SESSIONS + 500)
    if rs.nofile_limit() < CONCURRENT_SESSIONS + 100:
        pytest.skip("RLIMIT_NOFILE hard limit too low for %d sessions" % CONCURRENT_SESSIONS)
    clients = []
    try:
        with rs.CliServer(tmp_path, nofile=CONCURRENT_SESSIONS + 500) as server:
            try:
                for n in range(CONCURRENT_SESSIONS):
                    client = rs.Client(server.port, timeout=30)
                    clients.append(client)
                    assert client.greeting[0].startswith(b"220 ")
                    assert client.cmd("HELO c%d" % n).startswith(b"250 ")
                held = len(clients)
                highest_fd = max(int(fd) for fd in os.listdir("/proc/%d/fd" % server.pid))
                # All of them still there: every session answers, some send mail.
                for n, client in enumerate(clients):
                    if n % 100 == 0:
                        final, _ = client.transaction("concurrent-%d" % n)
                        assert final == b"250 OK\r\n"
                    else:
                        assert client.cmd("NOOP") == b"250 OK\r\n"
                rss = server.rss_kib()
                for client in clients:
                    assert client.cmd("QUIT") == b"221 Bye\r\n"
            finally:
                for client in clients:
                    client.close()
            server.assert_healthy()
            assert server.stop() == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, previous)
    assert highest_fd > 1024  # beyond what select() can watch
    assert len(server.entries()) == CONCURRENT_SESSIONS // 100
    rs.figure("concurrent sessions held", held)
    rs.figure("highest server descriptor number", highest_fd)
    rs.figure("server RSS with all sessions open (KiB)", rss)


# -- soak ---------------------------------------------------------------------------

SOAK_SESSIONS = 5
SOAK_MESSAGES_PER_SESSION = 10000


@pytest.mark.slow
def test_soak_rss_stays_flat(tmp_path):
    with rs.CliServer(tmp_path, "-s", str(MIB)) as server:
        done = [0] * SOAK_SESSIONS
        errors = []

        def sender(n):
            try:
                with smtplib.SMTP(rs.HOST, server.port, timeout=30) as smtp:
                    for i in range(SOAK_MESSAGES_PER_SESSION):
                        lines = rs.message_lines("soak%d-%d" % (n, i), [b"soak body line"] * 20)
                        smtp.sendmail("a@example.com", ["b@example.com", "c@example.com"],
                                      b"\r\n".join(lines))
                        done[n] += 1
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(SOAK_SESSIONS)]
        for thread in threads:
            thread.start()
        total = SOAK_SESSIONS * SOAK_MESSAGES_PER_SESSION
        samples = []
        while any(thread.is_alive() for thread in threads):
            samples.append((sum(done), server.rss_kib()))
            time.sleep(0.5)
        for thread in threads:
            thread.join()
        assert not errors, errors
        samples.append((sum(done), server.rss_kib()))
        server.assert_healthy()
        assert server.stop() == 0
    ids = [e["id"] for e in server.entries()]
    assert len(ids) == len(set(ids)) == total
    warm = [rss for count, rss in samples if count >= total // 10]
    growth = max(warm) - warm[0]
    rs.figure("soak messages delivered (lost: 0)", len(ids))
    rs.figure("soak RSS after warm-up / at the end (KiB)", "%d / %d" % (warm[0], warm[-1]))
    assert growth < 8 * 1024, samples
