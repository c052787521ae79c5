"""Channel behaviour beyond single replies: failures, deferred replies,
limits, timeouts and the attributes legacy subclasses rely on."""

import concurrent.futures
import logging
import socket
import threading
import time

import pytest

import smtpd_compat
from smtpd_compat import _transport
from tests.conftest import PumpedSession, RecordingServer

START = b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
HANDLER_FAILED = b"451 Requested action aborted: local error in processing\r\n"


def only_channel(session):
    (channel,) = list(session.server._channels)
    return channel


class FailingServer(RecordingServer):
    """Raises on every message whose body says so."""

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        if data.startswith(b"fail"):
            raise RuntimeError("backend down")
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


def test_process_message_exception_answers_451(make_session, caplog):
    session = make_session(FailingServer)
    session.send(START, replies=4)
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert session.send(b"fail\r\n.\r\n") == HANDLER_FAILED
    assert "backend down" in caplog.text
    channel = only_channel(session)
    assert (channel.smtp_state, channel.mailfrom, channel.rcpttos) == (
        channel.COMMAND, None, [])
    # the session goes on, and the client's retry is delivered
    session.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", replies=3)
    assert session.send(b"ok\r\n.\r\n") == b"250 OK\r\n"
    assert [m[2] for m in session.server.messages] == [b"ok"]


def test_exception_goes_to_debugstream(make_session, monkeypatch, caplog):
    import io
    stream = io.StringIO()
    monkeypatch.setattr(smtpd_compat, "DEBUGSTREAM", stream)
    session = make_session(FailingServer)
    session.send(START, replies=4)
    with caplog.at_level(logging.CRITICAL, logger="smtpd_compat"):
        session.send(b"fail\r\n.\r\n")
    assert "RuntimeError: backend down" in stream.getvalue()


def test_pipelined_input_after_failure_is_still_served(make_session, caplog):
    session = make_session(FailingServer)
    session.send(START, replies=4)
    with caplog.at_level(logging.CRITICAL, logger="smtpd_compat"):
        replies = session.send(b"fail\r\n.\r\nNOOP\r\n", replies=2)
    assert replies == HANDLER_FAILED + b"250 OK\r\n"


class BrokenCommandChannel(smtpd_compat.SMTPChannel):
    def smtp_XBOOM(self, arg):
        raise ValueError("boom")


class BrokenCommandServer(RecordingServer):
    channel_class = BrokenCommandChannel


def test_smtp_method_exception_answers_451(make_session, caplog):
    session = make_session(BrokenCommandServer)
    with caplog.at_level(logging.CRITICAL, logger="smtpd_compat"):
        assert session.send(b"XBOOM\r\nNOOP\r\n", replies=2) == HANDLER_FAILED + b"250 OK\r\n"


def test_direct_handle_read_still_raises():
    # CPython's test suite calls handle_read() itself and expects the error.
    class Server(smtpd_compat.SMTPServer):
        pass

    socket_map = {}
    server = Server(("127.0.0.1", 0), None, map=socket_map)
    client = socket.create_connection(server.socket.getsockname())
    try:
        conn, addr = server.accept()
        channel = smtpd_compat.SMTPChannel(server, conn, addr, map=socket_map)
        client.sendall(START + b"x\r\n.\r\n")
        deadline = time.monotonic() + 5
        with pytest.raises(NotImplementedError):
            while time.monotonic() < deadline:
                channel.handle_read()
    finally:
        client.close()
        smtpd_compat.asyncore.close_all(socket_map)


class DeferringServer(RecordingServer):
    """Replies later, from another thread, when the test says so."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending = []

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        future = concurrent.futures.Future()
        self.pending.append((data, future))
        return future


def test_future_reply_waits_without_blocking(make_session):
    first = make_session(DeferringServer)
    first.send(START, replies=4)
    first.client.sendall(b"one\r\n.\r\nNOOP\r\n")
    assert first.nothing_more() == b""  # no reply yet, and NOOP waits its turn
    (data, future), = first.server.pending
    assert data == b"one"
    threading.Thread(target=future.set_result, args=("250 Queued as 1",)).start()
    assert first.read(2) == b"250 Queued as 1\r\n250 OK\r\n"


def test_future_none_means_250_and_error_means_451(make_session, caplog):
    session = make_session(DeferringServer)
    session.send(START, replies=4)
    session.client.sendall(b"a\r\n.\r\n")
    session.pump()
    session.server.pending[0][1].set_result(None)
    assert session.read() == b"250 OK\r\n"
    session.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", replies=3)
    session.client.sendall(b"b\r\n.\r\n")
    session.pump()
    with caplog.at_level(logging.CRITICAL, logger="smtpd_compat"):
        session.server.pending[1][1].set_exception(OSError("upstream gone"))
        assert session.read() == HANDLER_FAILED


def test_idle_timeout_closes_with_421(make_session):
    session = make_session(attributes={"idle_timeout": 0.2})
    time.sleep(0.3)
    reply = session.read()
    assert reply.startswith(b"421 ") and b"timeout" in reply
    assert session.closed_by_server()


def test_trickling_without_line_end_times_out(make_session):
    session = make_session(attributes={"idle_timeout": 0.3})
    for _ in range(4):  # bytes keep coming, but never a whole line
        session.client.sendall(b"x")
        session.pump(1)
        time.sleep(0.05)
    reply = session.read()
    assert reply.startswith(b"421 ") and b"timeout" in reply


def test_complete_lines_keep_the_session_alive(make_session):
    session = make_session(attributes={"idle_timeout": 0.3})
    for _ in range(6):
        time.sleep(0.1)
        assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


def test_idle_timeout_zero_never_expires(make_session):
    session = make_session(attributes={"idle_timeout": 0})
    time.sleep(0.2)
    assert session.nothing_more() == b""
    assert only_channel(session)._deadline is None


def test_max_connections_answers_421(make_session):
    session = make_session(attributes={"max_connections": 1})
    extra = socket.create_connection(session.server.socket.getsockname())
    extra.settimeout(5)
    try:
        session.pump()
        reply = extra.recv(1024)
        assert reply.startswith(b"421 ") and b"too many connections" in reply
        assert extra.recv(1024) == b""
        assert session.send(b"NOOP\r\n") == b"250 OK\r\n"
    finally:
        extra.close()


def test_limits_are_per_connection(make_session):
    # fixed: smtpd shared one dict between all connections
    first = make_session()
    first.send(b"EHLO x\r\n")
    second = PumpedSession(first.server)
    try:
        second.send(b"EHLO y\r\n")
        channels = list(first.server._channels)
        assert [c.command_size_limits["MAIL"] for c in channels] == [538, 538]
        third = PumpedSession(first.server)
        third.disconnect()
        assert sorted(c.max_command_size_limit for c in channels) == [538, 538]
        assert smtpd_compat.SMTPChannel.command_size_limits == {}
    finally:
        second.disconnect()


def test_mail_line_limit_after_ehlo(session):
    session.send(b"EHLO x\r\n")
    address = b"a" * 500 + b"@b"
    assert session.send(b"MAIL FROM:<" + address + b">\r\n") == b"250 OK\r\n"
    session.send(b"RSET\r\n")
    too_long = b"MAIL FROM:<" + b"a" * 540 + b"@b>\r\n"
    assert session.send(too_long) == b"500 Error: line too long\r\n"


def test_backlogged_output_stops_reading(session):
    channel = only_channel(session)
    for _ in range(_transport.OUTPUT_BACKLOG_LIMIT + 1):
        channel.producer_fifo.append(b"250 OK\r\n")
    assert not channel.readable()
    channel.producer_fifo.clear()
    assert channel.readable()


def test_public_attributes_after_transaction(session):
    session.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", replies=3)
    channel = only_channel(session)
    assert channel.smtp_server is session.server
    assert channel.conn is channel.socket
    assert channel.addr == channel.peer
    assert channel.seen_greeting == "x"
    assert channel.extended_smtp is True
    assert channel.mailfrom == "a@b" and channel.rcpttos == ["c@d"]
    assert channel.smtp_state == channel.COMMAND
    assert channel.fqdn == socket.getfqdn()
    assert channel.data_size_limit == smtpd_compat.DATA_SIZE_DEFAULT
    session.send(b"DATA\r\nbody\r\n.\r\n", replies=2)
    assert channel.received_data == b"body"
    assert (channel.mailfrom, channel.rcpttos, channel.num_bytes) == (None, [], 0)


@pytest.mark.parametrize("old, new", sorted(
    __import__("smtpd_compat._deprecated", fromlist=["ALIASES"]).ALIASES.items()))
def test_deprecated_aliases_warn(session, old, new):
    channel = only_channel(session)
    mangled = "_SMTPChannel" + old
    with pytest.warns(DeprecationWarning, match="Access to %s attribute" % old):
        value = getattr(channel, mangled)
    assert value is getattr(channel, new)
    with pytest.warns(DeprecationWarning, match="Setting %s attribute" % old):
        setattr(channel, mangled, value)


def test_fqdn_looked_up_once_per_server(make_session, monkeypatch):
    calls = []

    def counting_getfqdn(name=""):
        calls.append(name)
        return "mx.example"

    monkeypatch.setattr(socket, "getfqdn", counting_getfqdn)
    session = make_session()
    PumpedSession(session.server).disconnect()
    assert session.greeting.startswith(b"220 mx.example ")
    assert len(calls) == 1
