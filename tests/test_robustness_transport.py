"""Transport deadlines and descriptors (issue 10, items 5 to 9).

* What counts as activity: a bare-LF trickle does not keep a session alive.
* A closing connection is closed in bounded time, even if its client never
  reads (its place among ``max_connections`` is freed).
* A client that leaves while its reply is pending is noticed at once.
* A loop stalled by a slow handler does not time out clients whose input
  was waiting.
* Under the user's own ``asyncore.loop()`` (select), a connection whose
  descriptor select() cannot watch gets a 421 instead of killing the loop.

Real servers on 127.0.0.1, port 0; raw-socket clients.  Servers run as the
CLI in a subprocess, in ``smtpd_compat.testing.Controller`` (the package's
own loop), under a plain ``asyncore.loop()`` in a thread, or pumped by the
test itself.
"""

import concurrent.futures
import contextlib
import logging
import os
import resource
import select
import socket
import threading
import time

import pytest

try:
    from . import robust_support as rs  # tests/ is a package
except ImportError:
    import robust_support as rs  # tests/ is on sys.path (rootdir-less import)
import smtpd_compat
from smtpd_compat import _deadlines
from smtpd_compat._asyncore import asyncore
from smtpd_compat.testing import Controller

try:
    from .conftest import RecordingServer
    from .test_loop import LaterServer  # process_message returns a hand-made Future
except ImportError:
    from conftest import RecordingServer
    from test_loop import LaterServer

pytestmark = pytest.mark.timeout(120)


# -- item 5: only whole lines are activity --------------------------------------------


@pytest.fixture(scope="module")
def one_second_server(tmp_path_factory):
    with rs.CliServer(tmp_path_factory.mktemp("trickle"), "--timeout", "1") as server:
        yield server
        server.assert_healthy()
    assert server.returncode == 0


def trickle_until_421(client, piece, interval, give_up):
    """Send *piece* every *interval* s; seconds until a 421 arrived, None if none did."""
    client.sock.settimeout(interval)
    start = time.monotonic()
    while time.monotonic() - start < give_up:
        try:
            client.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            if client.line().startswith(b"421 "):
                return time.monotonic() - start
        except socket.timeout:
            continue
        except (rs.ServerClosed, ConnectionResetError):
            break
    return None


DATA_PREFIX = (b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
               b"DATA\r\nSubject: trickle\r\n")


@pytest.mark.parametrize("prefix", [b"", b"EHLO x\r\n", DATA_PREFIX],
                         ids=["before-greeting", "command", "data"])
def test_bare_lf_trickle_is_cut_off(one_second_server, prefix):
    """A LF every 0.4 s is no whole line: the 1 s idle timeout still fires."""
    with rs.Client(one_second_server.port) as client:
        client.send(prefix)
        replies = prefix.count(b"\r\n") - (1 if prefix == DATA_PREFIX else 0)
        for _ in range(replies):
            client.reply()
        after = trickle_until_421(client, b"\n", 0.4, give_up=8.0)
        assert after is not None, client.lines
        assert client.lines[-1].endswith(rs.TIMEOUT_TAIL)
        assert after < 4.0
        rs.replies_until_close(client, timeout=10.0)
    assert not [e for e in one_second_server.entries() if e["event"] == "accepted"
                and e["id"] == "trickle"]
    rs.figure("seconds until a bare-LF trickle got its 421 (timeout 1 s, %s)"
              % ("DATA" if prefix == DATA_PREFIX else "command"), round(after, 2))


def test_message_lines_keep_a_slow_data_transfer_alive(one_second_server):
    """One CRLF line of message every 0.4 s for 2.4 s: progress, no timeout."""
    with rs.Client(one_second_server.port) as client:
        assert client.cmd("EHLO x").startswith(b"250 ")
        assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK\r\n"
        assert client.cmd("RCPT TO:<b@example.com>") == b"250 OK\r\n"
        assert client.cmd("DATA").startswith(b"354 ")
        lines = rs.message_lines("slow-data", [b"body line %d" % n for n in range(6)])
        wire = rs.wire_data(lines).split(b"\r\n")
        for line in wire[:-2]:
            client.send(line + b"\r\n")
            time.sleep(0.4)
        client.send(b".\r\n")
        assert client.reply() == [b"250 OK\r\n"]
        assert client.cmd("QUIT") == b"221 Bye\r\n"
    assert [e["id"] for e in one_second_server.entries()].count("slow-data") == 1


# -- item 6: a closing connection has a hard deadline ---------------------------------


class NoReaderServer(smtpd_compat.SMTPServer):
    idle_timeout = 0.5
    max_connections = 1

    def process_message(self, *args, **kwargs):
        return None


def test_a_client_that_never_reads_is_closed_and_its_place_freed(monkeypatch):
    monkeypatch.setattr(_deadlines, "CLOSING_TIMEOUT", 1.5)
    with Controller(NoReaderServer) as srv:
        hog = rs.Client(srv.port, buffer_size=16384)
        hog.sock.setblocking(False)
        blob = b"HELP\r\n" * 10000
        started = time.monotonic()
        freed_after = None
        sent = 0
        try:
            while time.monotonic() - started < 20:
                # The hog keeps writing and never reads a byte.
                try:
                    sent += hog.sock.send(blob)
                except BlockingIOError:
                    select.select([], [hog.sock], [], 0.05)
                except (ConnectionResetError, BrokenPipeError):
                    pass
                with rs.Client(srv.port, read_greeting=False) as newcomer:
                    first = newcomer.line()
                    if first.startswith(b"220 "):
                        freed_after = time.monotonic() - started
                        assert newcomer.cmd("NOOP") == b"250 OK\r\n"
                        break
                    assert b"too many connections" in first, first
                time.sleep(0.2)
        finally:
            hog.close()
    assert freed_after is not None, "the place was never freed (%d bytes sent)" % sent
    # idle timeout (0.5 s) + closing deadline (1.5 s), plus the loop's sweeps
    # and the newcomers' pace; without the deadline it is never freed
    assert freed_after < 8.0
    rs.figure("seconds until a never-reading client's place was freed (0.5 s idle +"
              " 1.5 s closing deadline)", round(freed_after, 2))


@pytest.mark.slow
def test_the_default_closing_deadline_in_the_cli(tmp_path):
    """The CLI with its default CLOSING_TIMEOUT: a client that never reads is gone in time."""
    with rs.CliServer(tmp_path, "--timeout", "1", "--max-connections", "1") as server:
        hog = rs.Client(server.port, buffer_size=16384)
        hog.sock.setblocking(False)
        started = time.monotonic()
        try:
            freed_after = None
            while freed_after is None and time.monotonic() - started < 40:
                try:
                    hog.sock.send(b"HELP\r\n" * 10000)
                except BlockingIOError:
                    select.select([], [hog.sock], [], 0.05)
                except (ConnectionResetError, BrokenPipeError):
                    pass
                with rs.Client(server.port, read_greeting=False) as newcomer:
                    if newcomer.line().startswith(b"220 "):
                        freed_after = time.monotonic() - started
                time.sleep(0.5)
        finally:
            hog.close()
        server.assert_healthy()
        assert server.stop() == 0
    assert freed_after is not None
    assert 1 + _deadlines.CLOSING_TIMEOUT - 1 < freed_after < 1 + _deadlines.CLOSING_TIMEOUT + 12
    rs.figure("seconds until a never-reading client's place was freed by the CLI"
              " (1 s idle timeout, default closing deadline)", round(freed_after, 1))


def test_a_quitting_client_that_reads_gets_everything_before_the_closing_deadline(
        monkeypatch, make_session):
    monkeypatch.setattr(_deadlines, "CLOSING_TIMEOUT", 0.5)
    session = make_session()
    assert session.send(b"HELP\r\n" * 300 + b"QUIT\r\n", replies=301).endswith(b"221 Bye\r\n")
    assert session.closed_by_server()


# -- item 7: a client that leaves while its reply is pending -------------------------


class ExecutorServer(RecordingServer):
    """process_message returns a Future of a one-worker executor."""

    max_connections = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.release = threading.Event()
        self.ran = []
        self.futures = []

    def _job(self):
        self.ran.append(time.monotonic())
        assert self.release.wait(10)
        return "250 delivered late"

    def process_message(self, *args, **kwargs):
        super().process_message(*args, **kwargs)
        future = self.executor.submit(self._job)
        self.futures.append(future)
        return future

    def close(self):
        self.release.set()
        self.executor.shutdown(wait=True)
        super().close()


MESSAGE = (b"HELO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
BODY = b"Subject: pending\r\n\r\nbody\r\n.\r\n"


def channels_of(session):
    return [d for d in session.server._map.values()
            if isinstance(d, smtpd_compat.SMTPChannel)]


def a_new_client_is_served(session):
    newcomer = socket.create_connection(session.server.socket.getsockname()[:2], timeout=5)
    newcomer.setblocking(False)
    try:
        received = b""
        give_up = time.monotonic() + 5
        while b"\r\n" not in received and time.monotonic() < give_up:
            session.pump(1)
            try:
                received += newcomer.recv(4096)
            except BlockingIOError:
                pass
        return received.startswith(b"220 ")
    finally:
        newcomer.close()


@pytest.mark.parametrize("how", ["close", "reset", "pipelined-then-close"])
def test_leaving_while_the_reply_runs_frees_the_place(make_session, caplog, how):
    session = make_session(ExecutorServer)
    server = session.server
    session.send(MESSAGE, replies=4)
    session.client.sendall(BODY + (b"NOOP\r\n" * 50 if how.startswith("pipelined") else b""))
    give_up = time.monotonic() + 5
    while not server.ran and time.monotonic() < give_up:
        session.pump(1)
    assert server.ran, "process_message's job never started"
    if how == "reset":
        session.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                  b"\x01\x00\x00\x00\x00\x00\x00\x00")
    session.client.close()
    session.pump(5)
    assert channels_of(session) == []
    assert len(server._channels) == 0
    assert a_new_client_is_served(session)
    with caplog.at_level(logging.DEBUG, logger="smtpd_compat"):
        server.release.set()
        assert server.futures[0].result(5) == "250 delivered late"
        session.pump(5)  # the late reply finds nobody to answer
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_leaving_before_the_reply_started_leaves_the_job_to_run(make_session, caplog):
    session = make_session(ExecutorServer)
    server = session.server
    blocker = server.executor.submit(server.release.wait, 10)  # the only worker is busy
    session.send(MESSAGE, replies=4)
    session.client.sendall(BODY)
    give_up = time.monotonic() + 5
    while not server.futures and time.monotonic() < give_up:
        session.pump(1)
    session.client.close()
    session.pump(5)
    assert channels_of(session) == []
    assert a_new_client_is_served(session)
    # Not cancelled: whoever completes a Future must not find it cancelled under it.
    assert not server.futures[0].cancelled() and server.ran == []
    with caplog.at_level(logging.DEBUG, logger="smtpd_compat"):
        server.release.set()
        assert blocker.result(5) is True
        assert server.futures[0].result(5) == "250 delivered late"
        session.pump(5)
    assert len(server.ran) == len(server.messages) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_hand_made_future_completed_after_the_client_left(make_session, caplog):
    session = make_session(LaterServer, attributes={"max_connections": 1})
    session.send(MESSAGE, replies=4)
    session.client.sendall(BODY)
    session.pump(3)
    session.client.close()
    session.pump(5)
    assert channels_of(session) == []
    assert a_new_client_is_served(session)
    with caplog.at_level(logging.DEBUG, logger="smtpd_compat"):
        session.server.future.set_exception(RuntimeError("nobody hears this"))
        session.pump(5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_input_pipelined_while_the_reply_runs_is_kept_for_later(make_session):
    session = make_session(ExecutorServer)
    session.send(MESSAGE, replies=4)
    session.client.sendall(BODY + b"NOOP\r\nRSET\r\n")
    session.pump(5)
    assert session.nothing_more() == b""  # read, but not run before the reply
    session.server.release.set()
    assert session.read(3) == b"250 delivered late\r\n250 OK\r\n250 OK\r\n"


# -- item 8: a stalled loop does not time out clients whose input waits ----------------


class SlowHandlerServer(smtpd_compat.SMTPServer):
    idle_timeout = 1.0

    def process_message(self, *args, **kwargs):
        time.sleep(2.5)  # synchronous: the whole loop stalls


class SelectLoop:
    """A server served by the user's own ``asyncore.loop(use_poll=False)`` in a thread."""

    def __init__(self, server_class, **kwargs):
        self.map = {}
        self.server = server_class((rs.HOST, 0), None, map=self.map, **kwargs)
        self.port = self.server.socket.getsockname()[1]
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            while not self._stop.is_set() and self.map:
                asyncore.loop(timeout=0.05, map=self.map, use_poll=False, count=1)
        except BaseException as error:  # reported by the test
            self.errors.append(error)

    def alive(self):
        return self._thread.is_alive()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        asyncore.close_all(self.map)


def served(runner, server_class, **kwargs):
    if runner == "smtpd_compat.loop":
        return Controller(server_class, **kwargs)
    return SelectLoop(server_class, **kwargs)


RUNNERS = ["smtpd_compat.loop", "asyncore.loop"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_command_sent_during_a_stall_is_answered_not_timed_out(runner):
    with served(runner, SlowHandlerServer) as srv:
        with rs.Client(srv.port) as slow, rs.Client(srv.port) as waiting, \
                rs.Client(srv.port) as silent:
            assert slow.cmd("EHLO slow").startswith(b"250 ")
            assert slow.cmd("MAIL FROM:<a@example.com>") == b"250 OK\r\n"
            assert slow.cmd("RCPT TO:<b@example.com>") == b"250 OK\r\n"
            assert slow.cmd("DATA").startswith(b"354 ")
            # Its clock starts now: 1 s, much less than the stall.
            assert waiting.cmd("EHLO waiting").startswith(b"250 ")
            slow.send(b"Subject: stall\r\n\r\nbody\r\n.\r\n")
            time.sleep(0.3)
            # The loop is inside process_message for 2.5 s; this waits in the socket.
            assert waiting.cmd("NOOP") == b"250 OK\r\n"
            assert slow.reply() == [b"250 OK\r\n"]
            # The slow handler did not eat its own client's time either.
            assert slow.cmd("NOOP") == b"250 OK\r\n"
            assert waiting.cmd("NOOP") == b"250 OK\r\n"
            # A client that really said nothing still times out.
            assert rs.replies_until_close(silent, timeout=10.0)[-1].endswith(rs.TIMEOUT_TAIL)
        if runner == "asyncore.loop":
            assert srv.alive() and srv.errors == []


# -- item 9: descriptors select() cannot watch ----------------------------------------


class PlainServer(smtpd_compat.SMTPServer):
    def process_message(self, *args, **kwargs):
        return None


@contextlib.contextmanager
def descriptors_up_to_the_select_limit():
    """Occupy every descriptor below 1030, so new sockets land above select()'s limit.

    Yields the list of occupied descriptors (lowest first); the test may
    close some of the low ones to make room below the limit again.
    """
    previous = rs.raise_nofile_limit(4096)
    if rs.nofile_limit() < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, previous)
        pytest.skip("RLIMIT_NOFILE hard limit too low to pass descriptor 1024")
    filler = os.open(os.devnull, os.O_RDONLY)
    held = [filler]
    try:
        while held[-1] < 1030:
            held.append(os.dup(filler))
        yield held
    finally:
        for fd in held:
            try:
                os.close(fd)
            except OSError:
                pass  # closed by the test already
        resource.setrlimit(resource.RLIMIT_NOFILE, previous)


def free_low_descriptors(held, count):
    """Close the *count* lowest occupied descriptors (new sockets take them)."""
    for fd in sorted(held)[:count]:
        os.close(fd)
        held.remove(fd)


@pytest.mark.parametrize("runner", RUNNERS)
def test_descriptors_beyond_select(runner, caplog):
    # The listener (and the controller's poller) open before the descriptors fill up.
    with served(runner, PlainServer) as srv:
        with rs.Client(srv.port) as early:
            assert early.cmd("HELO early").startswith(b"250 ")
        with descriptors_up_to_the_select_limit() as held:
            high = rs.Client(srv.port, read_greeting=False)
            with high:
                assert high.sock.fileno() >= 1024
                first = high.line()
                if runner == "asyncore.loop":
                    assert first.startswith(b"421 ") and b"too many connections" in first
                    assert high.at_eof()
                else:
                    assert first.startswith(b"220 ")
                    assert high.cmd("NOOP") == b"250 OK\r\n"
                    assert high.cmd("QUIT") == b"221 Bye\r\n"
            free_low_descriptors(held, 4)
            with rs.Client(srv.port) as low:
                assert low.sock.fileno() < 1024
                assert low.cmd("HELO low").startswith(b"250 ")
                assert low.cmd("QUIT") == b"221 Bye\r\n"
        if runner == "asyncore.loop":
            assert srv.alive() and srv.errors == []
    if runner == "asyncore.loop":
        assert "beyond what select() can watch" in caplog.text
