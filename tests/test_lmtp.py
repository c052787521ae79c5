"""LMTP (RFC 2033): LHLO, one reply per recipient, UNIX sockets; raw sockets and smtplib.LMTP."""

import logging
import os
import re
import smtplib
import socket
import tempfile

import pytest

import smtpd_compat
from smtpd_compat import _lmtp
from smtpd_compat._loop import Poller
from tests.cli_support import ServerProcess, child_env, compat_command
from tests.conftest import FutureServer, RecordingServer

ENVELOPE = (b"LHLO client\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<one@example.com>\r\n"
            b"RCPT TO:<two@example.com>\r\nRCPT TO:<three@example.com>\r\n")
ENVELOPE_REPLIES = 5
MESSAGE = b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"
FAILED = b"451 Requested action aborted: local error in processing\r\n"


class RaisingServer(RecordingServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        raise RuntimeError("the mailbox is on fire")


ENHANCED_CODE = re.compile(rb"^(\d{3}[ -])[245]\.\d{1,3}\.\d{1,3} ", re.MULTILINE)


def uncoded(replies: bytes) -> bytes:
    """*replies* without their enhanced status codes."""
    return ENHANCED_CODE.sub(rb"\1", replies)


class PlainCodes:
    """A session whose replies are read without their enhanced status codes.

    LMTP always offers ENHANCEDSTATUSCODES (RFC 2033, section 5), so every
    reply carries one; most tests here are about how many replies come and
    which, and read them plain.  test_every_reply_carries_its_enhanced_code
    reads them as sent.
    """

    def __init__(self, session):
        self._session = session

    def __getattr__(self, name):
        return getattr(self._session, name)

    def send(self, *args, **kwargs):
        return uncoded(self._session.send(*args, **kwargs))

    def read(self, *args, **kwargs):
        return uncoded(self._session.read(*args, **kwargs))


@pytest.fixture
def lmtp_session(make_session):
    def make(server_class=RecordingServer, reply=None, attributes=None, coded=False,
             **kwargs):
        attributes = dict({"lmtp": True, "reply": reply}, **(attributes or {}))
        session = make_session(server_class, attributes, **kwargs)
        return session if coded else PlainCodes(session)
    return make


def _after_envelope(replies: bytes) -> bytes:
    """The replies after LHLO's, the envelope's and DATA's 354."""
    lines = replies.splitlines(keepends=True)
    lhlo_end = next(i for i, line in enumerate(lines) if line.startswith(b"250 "))
    rest = lines[lhlo_end + ENVELOPE_REPLIES:]
    if rest and rest[0].startswith(b"354 "):
        rest = rest[1:]
    return b"".join(rest)


def _deliver(session, data=MESSAGE, replies=3) -> bytes:
    started = 1 if data.startswith(b"DATA") else 0  # the 354
    return _after_envelope(session.send(ENVELOPE + data, ENVELOPE_REPLIES + started + replies))


def test_every_reply_carries_its_enhanced_code(lmtp_session):
    session = lmtp_session(reply=["250 a", None, "550 5.1.1 no such user"], coded=True)
    replies = session.send(ENVELOPE + MESSAGE, ENVELOPE_REPLIES + 1 + 3)
    lines = replies.split(b"\r\n")
    hello_end = next(i for i, line in enumerate(lines) if line.startswith(b"250 "))
    assert lines[hello_end + 1:-1] == [
        b"250 2.1.0 OK", b"250 2.1.5 OK", b"250 2.1.5 OK", b"250 2.1.5 OK",
        b"354 End data with <CR><LF>.<CR><LF>",
        b"250 2.0.0 a", b"250 2.0.0 OK", b"550 5.1.1 no such user"]


def test_lhlo_offers_pipelining_and_enhanced_status_codes(lmtp_session):
    replies = lmtp_session().send(b"LHLO client\r\n")
    assert replies.startswith(b"250-localhost\r\n")
    assert b"\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n" in replies
    assert replies.count(b"PIPELINING") == replies.count(b"ENHANCEDSTATUSCODES") == 1
    assert replies.endswith(b"250 HELP\r\n")


@pytest.mark.parametrize("verb", [b"HELO", b"EHLO"])
def test_helo_and_ehlo_are_unknown_in_lmtp(lmtp_session, verb):
    session = lmtp_session()
    replies = session.send(verb + b" client\r\nMAIL FROM:<a@example.com>\r\n", 2)
    assert replies == (b'500 Error: command "%s" not recognized\r\n' % verb
                       + b"503 Error: send HELO first\r\n")


def test_lhlo_is_unknown_in_smtp(make_session):
    replies = make_session().send(b"LHLO client\r\n")
    assert replies == b'500 Error: command "LHLO" not recognized\r\n'


@pytest.mark.parametrize("reply, expected", [
    (None, b"250 OK\r\n" * 3),
    ("250 Delivered", b"250 Delivered\r\n" * 3),
    ("452 Mailbox full", b"452 Mailbox full\r\n" * 3),
    (["250 a", None, "550 5.1.1 no such user"],
     b"250 a\r\n250 OK\r\n550 no such user\r\n"),  # read plain (see PlainCodes)
    (("250 a", 451, b"250 c"),
     b"250 a\r\n451 Requested action aborted: local error in processing\r\n250 c\r\n"),
    # Mailman 3's LMTP runner: one status line per recipient, joined.
    ("250 a\r\n550 b\r\n250 c", b"250 a\r\n550 b\r\n250 c\r\n"),
    ("250-first\r\n250 second", b"250-first\r\n250 second\r\n" * 3),
], ids=["none", "one-string", "one-refusal", "list", "tuple-of-types", "joined", "multiline"])
def test_one_reply_per_recipient(lmtp_session, reply, expected):
    session = lmtp_session(reply=reply)
    assert _deliver(session) == expected
    assert [m[1] for m in session.server.messages] == [
        ["one@example.com", "two@example.com", "three@example.com"]]


@pytest.mark.parametrize("reply, expected", [
    (["250 a"], b"250 a\r\n" + FAILED * 2),
    ([], FAILED * 3),
    (["250 a", "250 b", "250 c", "250 d"], b"250 a\r\n250 b\r\n250 c\r\n"),
], ids=["short", "empty", "long"])
def test_a_list_of_the_wrong_length_is_padded_or_cut_and_logged(
        lmtp_session, caplog, reply, expected):
    session = lmtp_session(reply=reply)
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert _deliver(session) == expected
    assert "replies for 3 recipients" in caplog.text
    assert session.nothing_more() == b""


def test_a_refused_recipient_gets_no_reply_at_the_end(lmtp_session):
    session = lmtp_session(reply=["250 a", "250 b"], attributes={"max_recipients": 2})
    replies = session.send(ENVELOPE + MESSAGE, ENVELOPE_REPLIES + 3)
    assert b"452 Too many recipients\r\n" in replies  # 4.5.3: read plain
    assert _after_envelope(replies) == b"250 a\r\n250 b\r\n"


def test_too_much_data_once_per_recipient(lmtp_session):
    session = lmtp_session(data_size_limit=5)
    assert _deliver(session) == b"552 Error: Too much mail data\r\n" * 3
    assert session.server.messages == []


def test_undecodable_data_once_per_recipient(lmtp_session):
    session = lmtp_session(decode_data=True)
    replies = _deliver(session, b"DATA\r\n\xff\r\n.\r\n")
    assert replies == b"554 Error: message data is not valid UTF-8\r\n" * 3


def test_a_raising_process_message_once_per_recipient(lmtp_session, caplog):
    session = lmtp_session(RaisingServer)
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert _deliver(session) == FAILED * 3
    assert "the mailbox is on fire" in caplog.text
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


def test_a_future_answers_with_a_list(lmtp_session):
    session = lmtp_session(FutureServer)
    session.send(ENVELOPE + MESSAGE, ENVELOPE_REPLIES + 1)
    assert session.nothing_more() == b""
    session.server.futures[0].set_result(["250 a", "550 b", None])
    assert session.read(3) == b"250 a\r\n550 b\r\n250 OK\r\n"


def test_a_failed_future_once_per_recipient(lmtp_session, caplog):
    session = lmtp_session(FutureServer)
    session.send(ENVELOPE + MESSAGE, ENVELOPE_REPLIES + 1)
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        session.server.futures[0].set_exception(RuntimeError("no"))
        assert session.read(3) == FAILED * 3


def test_the_last_bdat_chunk_once_per_recipient(lmtp_session):
    session = lmtp_session(reply=["250 a", "550 b", "250 c"], attributes={"chunking": True})
    replies = _deliver(session, b"BDAT 4\r\nab\r\nBDAT 0 LAST\r\n", replies=4)
    assert replies == b"250 OK: 4 octets received\r\n250 a\r\n550 b\r\n250 c\r\n"
    assert [m[2] for m in session.server.messages] == [b"ab"]


def test_a_bdat_chunk_past_the_limit_once_or_per_recipient(lmtp_session):
    session = lmtp_session(data_size_limit=3, attributes={"chunking": True})
    replies = _deliver(session, b"BDAT 4\r\nabcd", replies=1)
    assert replies == b"552 Error: Too much mail data\r\n"
    session = lmtp_session(data_size_limit=3, attributes={"chunking": True})
    replies = _deliver(session, b"BDAT 4 LAST\r\nabcd", replies=3)
    assert replies == b"552 Error: Too much mail data\r\n" * 3


class OwnChannel(smtpd_compat.SMTPChannel):
    def smtp_XPING(self, arg):
        self.push("250 pong")


class OwnChannelServer(RecordingServer):
    channel_class = OwnChannel


def test_the_layer_goes_over_the_server_s_own_channel_class(lmtp_session):
    session = lmtp_session(OwnChannelServer)
    assert session.send(b"XPING\r\n") == b"250 pong\r\n"
    channel = next(iter(session.server._channels))
    assert isinstance(channel, OwnChannel) and isinstance(channel, _lmtp.LMTPLayer)
    assert _lmtp.channel_class_for(session.server) is type(channel)
    assert _deliver(session, replies=3) == b"250 OK\r\n" * 3


def test_debugging_server_speaks_lmtp(lmtp_session, capsys):
    session = lmtp_session(smtpd_compat.DebuggingServer)
    assert _deliver(session) == b"250 OK\r\n" * 3
    assert "Subject: hi" in capsys.readouterr().out


# -- UNIX sockets -------------------------------------------------------------


@pytest.fixture
def socket_path():
    # Not tmp_path: AF_UNIX paths are limited to about 100 bytes.
    directory = tempfile.mkdtemp(prefix="smtpd-lmtp-")
    yield os.path.join(directory, "lmtp.sock")
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def _pump_until(server, condition, rounds=500):
    poller = Poller(server._map)
    try:
        for _ in range(rounds):
            if condition():
                return
            poller.poll(0.01)
    finally:
        poller.close()
    raise AssertionError("condition not reached")


def test_a_server_on_a_unix_socket(socket_path):
    server = RecordingServer(socket_path, None, map={})
    server.lmtp = True
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(socket_path)
        client.setblocking(False)
        client.sendall(ENVELOPE + MESSAGE + b"QUIT\r\n")
        received = []
        _pump_until(server, lambda: received.append(_recv(client)) or
                    b"221 2.0.0 Bye" in b"".join(received))
        assert uncoded(b"".join(received)).endswith(b"250 OK\r\n" * 3 + b"221 Bye\r\n")
        assert server.messages[0][2] == b"Subject: hi\n\nbody"
        client.close()
    finally:
        server.close()
        smtpd_compat.asyncore.close_all(server._map)
    assert not os.path.exists(socket_path)


def _recv(client) -> bytes:
    try:
        return client.recv(65536)
    except BlockingIOError:
        return b""


def test_a_stale_socket_file_is_replaced(socket_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(socket_path)
    stale.close()  # the file stays, nobody listens
    server = RecordingServer(socket_path, None, map={})
    try:
        assert server.socket.getsockname() == socket_path
    finally:
        server.close()
    assert not os.path.exists(socket_path)


def test_a_socket_in_use_is_not_taken(socket_path):
    first = RecordingServer(socket_path, None, map={})
    try:
        with pytest.raises(OSError) as raised:
            RecordingServer(socket_path, None, map={})
        assert "listens" in str(raised.value)
        assert os.path.exists(socket_path)
    finally:
        first.close()


def test_a_file_that_is_no_socket_is_kept(socket_path):
    with open(socket_path, "w") as f:
        f.write("mine")
    with pytest.raises(OSError):
        RecordingServer(socket_path, None, map={})
    with open(socket_path) as f:
        assert f.read() == "mine"


def test_a_replaced_socket_file_is_not_removed(socket_path):
    server = RecordingServer(socket_path, None, map={})
    os.unlink(socket_path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(socket_path)
    try:
        server.close()
        assert os.path.exists(socket_path)
    finally:
        other.close()


def test_the_cli_serves_lmtp_on_a_unix_socket(socket_path):
    server = ServerProcess(compat_command("-n", "--lmtp", "-c", "DebuggingServer",
                                          socket_path), env=child_env())
    try:
        _wait_for(lambda: os.path.exists(socket_path) or not server.running)
        lmtp = smtplib.LMTP(socket_path)  # no timeout argument before 3.9
        lmtp.sock.settimeout(10)
        try:
            assert lmtp.ehlo()[0] == 250  # smtplib.LMTP sends LHLO
            assert b"PIPELINING" in lmtp.ehlo_resp
            assert lmtp.sendmail("a@example.com", ["b@example.com"],
                                 b"Subject: cli\r\n\r\nbody\r\n") == {}
        finally:
            lmtp.quit()
        server.wait_for_stdout(b"Subject: cli")
        assert server.stop() == 0
    finally:
        server.kill()
    assert not os.path.exists(socket_path)


def _wait_for(condition, timeout=30.0):
    import time
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_parseargs_takes_lmtp_chunking_and_a_path():
    from smtpd_compat import _cli
    options = _cli.parseargs(["--lmtp", "--chunking", "/run/x/lmtp.sock"])
    assert (options.lmtp, options.extensions, options.localpath) == (
        True, ("chunking",), "/run/x/lmtp.sock")
    plain = _cli.parseargs(["localhost:2525"])
    assert (plain.lmtp, plain.extensions, plain.localpath) == (None, (), None)


def test_make_server_on_a_path_sets_lmtp_and_chunking(socket_path):
    from smtpd_compat import _cli
    options = _cli.parseargs(["-c", "DebuggingServer", "--lmtp", "--chunking", socket_path])
    server = _cli.make_server(options)
    try:
        assert server.lmtp is True and server.chunking is True
        assert server.socket.getsockname() == socket_path
    finally:
        server.close()  # on asyncore's global map, alone
    assert not os.path.exists(socket_path)


def test_workers_need_host_and_port(capsys):
    from smtpd_compat import _cli
    with pytest.raises(SystemExit) as exited:
        _cli.main(["-n", "--workers", "2", "/tmp/no-such-dir/lmtp.sock"])
    assert exited.value.code == 1
    assert "--workers needs host:port" in capsys.readouterr().err
