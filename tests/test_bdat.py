"""CHUNKING / BDAT (RFC 3030): the pure argument parser and raw-socket dialogues."""

import concurrent.futures
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

import smtpd_compat
from smtpd_compat import _parsing
from tests.conftest import FutureServer, RecordingServer

BDAT = _parsing.BdatArguments


# -- the argument parser (pure) ---------------------------------------------


@pytest.mark.parametrize("arg, expected", [
    ("10", BDAT(10, False, True)),
    ("0", BDAT(0, False, True)),
    ("10 LAST", BDAT(10, True, True)),
    ("10 last", BDAT(10, True, True)),
    ("10 LaSt", BDAT(10, True, True)),
    ("0 LAST", BDAT(0, True, True)),
    ("007", BDAT(7, False, True)),
    ("10  LAST", BDAT(10, True, True)),
    ("99999999999999999999", BDAT(99999999999999999999, False, True)),
    # A size, but a bad rest: the chunk can still be skipped.
    ("10 LAST x", BDAT(10, False, False)),
    ("10 FIRST", BDAT(10, False, False)),
    ("10 LASTX", BDAT(10, False, False)),
    ("10\tLAST", BDAT(None, False, False)),
    # No size that can be read: where the chunk ends is unknown.
    (None, BDAT(None, False, False)),
    ("", BDAT(None, False, False)),
    ("LAST", BDAT(None, False, False)),
    ("-1", BDAT(None, False, False)),
    ("+1", BDAT(None, False, False)),
    ("1_000", BDAT(None, False, False)),
    ("0x10", BDAT(None, False, False)),
    ("1e3", BDAT(None, False, False)),
    ("10abc LAST", BDAT(None, False, False)),
    ("\u0661\u0662", BDAT(None, False, False)),  # Arabic-Indic digits
    ("\u00b2", BDAT(None, False, False)),  # superscript two
    ("123456789012345678901", BDAT(None, False, False)),  # 21 digits
    ("9" * 5000, BDAT(None, False, False)),
], ids=["size", "zero", "last", "last-lower", "last-mixed", "zero-last", "leading-zeros",
        "two-spaces", "twenty-digits", "trailing-word", "other-marker", "lastx", "tab",
        "none", "empty", "marker-only", "negative", "plus", "underscore", "hex",
        "exponent", "letters", "arabic-digits", "superscript", "21-digits",
        "5000-digits"])
def test_parse_bdat(arg, expected):
    assert _parsing.parse_bdat(arg) == expected


@given(st.integers(min_value=0, max_value=10 ** 20 - 1), st.booleans())
def test_parse_bdat_reads_what_a_client_writes(size, last):
    arg = "%d LAST" % size if last else "%d" % size
    assert _parsing.parse_bdat(arg) == BDAT(size, last, True)


def _dot_stuffed(message: bytes) -> bytes:
    """What DATA carries for *message* (before the final "." line), as a client sends it."""
    lines = message.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line
                           for line in lines)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed


@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\xe9"]),
                max_size=30).map(b"".join))
def test_chunks_give_what_data_gives(message):
    # DATA's received text is the stuffed message without the CRLF "." CRLF.
    received_by_data = _dot_stuffed(message)[:-2]
    assert _parsing.message_from_chunks(message) == _parsing.unstuff(received_by_data)


@pytest.mark.parametrize("data, expected", [
    (b"a\r\nb\r\n", b"a\nb"),
    (b"a\r\nb", b"a\nb"),
    (b".a\r\n..b\r\n", b".a\n..b"),
    (b"a\rb\nc\r\n\r\n", b"a\rb\nc\n"),
    (b"", b""),
    ("\u00e9\r\n", "\u00e9"),
], ids=["crlf-end", "no-end", "dots-kept", "bare-cr-lf", "empty", "text"])
def test_message_from_chunks(data, expected):
    assert _parsing.message_from_chunks(data) == expected


# -- dialogues on a real socket ---------------------------------------------


class RefusingDataServer(RecordingServer):
    """Refuses every message at DATA (and so at the first BDAT)."""

    def _policy_data(self, channel):
        return "554 No messages today"


ENVELOPE = b"EHLO client\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
ENVELOPE_REPLIES = 3

TRANSACTION = (ENVELOPE + b"BDAT 9\r\nline.\r\n.\r"
               b"BDAT 3 LAST\r\n\nx\n")
TRANSACTION_REPLIES = ENVELOPE_REPLIES + 2
TRANSACTION_MESSAGE = b"line.\n.\nx\n"  # the CRLF split across two chunks is one


@pytest.fixture
def chunking_session(make_session):
    def make(server_class=RecordingServer, attributes=None, **kwargs):
        return make_session(server_class, dict({"chunking": True}, **(attributes or {})),
                            **kwargs)
    return make


def _tail(replies: bytes, count: int) -> bytes:
    return b"".join(replies.splitlines(keepends=True)[-count:])


def test_ehlo_offers_chunking_only_when_on(make_session, chunking_session):
    assert b"CHUNKING" not in make_session().send(b"EHLO x\r\n")
    replies = chunking_session().send(b"EHLO x\r\n")
    assert b"250-CHUNKING\r\n" in replies
    assert b"BINARYMIME" not in replies


def test_bdat_is_unknown_when_off(make_session):
    session = make_session()
    replies = session.send(ENVELOPE + b"BDAT 4 LAST\r\n", ENVELOPE_REPLIES + 1)
    assert _tail(replies, 1) == b'500 Error: command "BDAT" not recognized\r\n'


def test_a_message_in_chunks_arrives_as_data_would_give_it(chunking_session):
    session = chunking_session()
    replies = session.send(TRANSACTION, TRANSACTION_REPLIES)
    assert _tail(replies, 2) == b"250 OK: 9 octets received\r\n250 OK\r\n"
    assert session.server.messages == [
        ("a@example.com", ["b@example.com"], TRANSACTION_MESSAGE,
         {"mail_options": [], "rcpt_options": []})]


@pytest.mark.parametrize("position", range(1, len(TRANSACTION)))
def test_a_transaction_split_at_every_byte(chunking_session, position):
    session = chunking_session()
    session.client.sendall(TRANSACTION[:position])
    session.pump()
    session.client.sendall(TRANSACTION[position:])
    replies = session.read(TRANSACTION_REPLIES)
    assert _tail(replies, 2) == b"250 OK: 9 octets received\r\n250 OK\r\n"
    assert [m[2] for m in session.server.messages] == [TRANSACTION_MESSAGE]


def test_a_transaction_byte_by_byte(chunking_session):
    session = chunking_session()
    replies = session.send(TRANSACTION, TRANSACTION_REPLIES, split=1)
    assert _tail(replies, 2) == b"250 OK: 9 octets received\r\n250 OK\r\n"
    assert [m[2] for m in session.server.messages] == [TRANSACTION_MESSAGE]


def test_an_empty_last_chunk_ends_the_message(chunking_session):
    session = chunking_session()
    replies = session.send(ENVELOPE + b"BDAT 3\r\nab\nBDAT 0 LAST\r\n", ENVELOPE_REPLIES + 2)
    assert _tail(replies, 2) == b"250 OK: 3 octets received\r\n250 OK\r\n"
    assert [m[2] for m in session.server.messages] == [b"ab\n"]


COMMANDS_AS_PAYLOAD = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\n"


@pytest.mark.parametrize("before, refusal", [
    (b"EHLO client\r\n", b"503 Error: need MAIL command\r\n"),
    (b"EHLO client\r\nMAIL FROM:<a@example.com>\r\n", b"503 Error: need RCPT command\r\n"),
    (b"", b"503 Error: send HELO first\r\n"),
], ids=["no-mail", "no-rcpt", "no-helo"])
def test_a_refused_bdat_consumes_a_payload_that_looks_like_commands(
        chunking_session, before, refusal):
    session = chunking_session()
    before_replies = session.send(before, before.count(b"\r\n")) if before else b""
    assert b"503" not in before_replies
    bdat = b"BDAT %d LAST\r\n" % len(COMMANDS_AS_PAYLOAD) + COMMANDS_AS_PAYLOAD
    replies = session.send(bdat + b"NOOP\r\n", 2)
    assert replies == refusal + b"250 OK\r\n"
    assert session.server.messages == []
    channel = next(iter(session.server._channels))
    assert channel.mailfrom in (None, "a@example.com")
    assert channel.rcpttos == []


def test_a_bad_end_marker_is_refused_and_its_chunk_consumed(chunking_session):
    session = chunking_session()
    replies = session.send(ENVELOPE + b"BDAT 6 FIRST\r\nRSET\r\nNOOP\r\n",
                           ENVELOPE_REPLIES + 2)
    assert _tail(replies, 2) == b"501 Syntax: BDAT chunk-size [LAST]\r\n250 OK\r\n"


def test_an_unreadable_size_is_refused_and_the_connection_closed(chunking_session):
    session = chunking_session()
    replies = session.send(ENVELOPE + b"BDAT -5\r\nNOOP\r\n", ENVELOPE_REPLIES + 1)
    assert _tail(replies, 1) == b"501 Syntax: BDAT chunk-size [LAST]\r\n"
    assert session.closed_by_server()


def test_the_size_limit_counts_across_chunks(chunking_session):
    session = chunking_session(data_size_limit=10)
    replies = session.send(
        ENVELOPE + b"BDAT 6\r\n123456BDAT 6\r\n789012BDAT 2 LAST\r\nabNOOP\r\n",
        ENVELOPE_REPLIES + 4)
    assert _tail(replies, 4) == (b"250 OK: 6 octets received\r\n"
                                 b"552 Error: Too much mail data\r\n"
                                 b"503 Error: need MAIL command\r\n"
                                 b"250 OK\r\n")
    assert session.server.messages == []


def test_a_last_chunk_past_the_limit_is_refused(chunking_session):
    session = chunking_session(data_size_limit=4)
    replies = session.send(ENVELOPE + b"BDAT 5 LAST\r\n12345", ENVELOPE_REPLIES + 1)
    assert _tail(replies, 1) == b"552 Error: Too much mail data\r\n"
    assert session.server.messages == []


def test_data_after_bdat_is_refused(chunking_session):
    session = chunking_session()
    replies = session.send(ENVELOPE + b"BDAT 2\r\nabDATA\r\nBDAT 2 LAST\r\ncd",
                           ENVELOPE_REPLIES + 3)
    assert _tail(replies, 3) == (b"250 OK: 2 octets received\r\n"
                                 b"503 Error: DATA after BDAT in the same transaction\r\n"
                                 b"250 OK\r\n")
    assert [m[2] for m in session.server.messages] == [b"abcd"]


def test_rset_forgets_the_chunks(chunking_session):
    session = chunking_session()
    replies = session.send(ENVELOPE + b"BDAT 2\r\nabRSET\r\n"
                           b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                           b"DATA\r\n", ENVELOPE_REPLIES + 5)
    assert _tail(replies, 1).startswith(b"354 ")
    session.send(b"cd\r\n.\r\n")
    assert [m[2] for m in session.server.messages] == [b"cd"]


def test_binarymime_is_refused(chunking_session):
    session = chunking_session()
    replies = session.send(b"EHLO x\r\nMAIL FROM:<a@example.com> BODY=BINARYMIME\r\n", 2)
    assert _tail(replies, 1) == b"501 Error: BODY can only be one of 7BIT, 8BITMIME\r\n"


def test_decode_data_gets_text(chunking_session):
    session = chunking_session(decode_data=True)
    session.send(ENVELOPE + b"BDAT 9 LAST\r\n\xc3\xa9t\xc3\xa9\r\n\r\n", ENVELOPE_REPLIES + 1)
    assert [m[2] for m in session.server.messages] == ["\u00e9t\u00e9\n"]


def test_decode_data_refuses_what_is_not_utf8(chunking_session):
    session = chunking_session(decode_data=True)
    replies = session.send(ENVELOPE + b"BDAT 3\r\n\xc3\xa9\xc3BDAT 2 LAST\r\n\xa9\xff",
                           ENVELOPE_REPLIES + 2)
    assert _tail(replies, 1) == b"554 Error: message data is not valid UTF-8\r\n"
    assert session.server.messages == []


def test_a_split_utf8_sequence_across_chunks_is_text(chunking_session):
    session = chunking_session(decode_data=True)
    session.send(ENVELOPE + b"BDAT 1\r\n\xc3BDAT 1 LAST\r\n\xa9", ENVELOPE_REPLIES + 2)
    assert [m[2] for m in session.server.messages] == ["\u00e9"]


def test_a_future_answers_the_last_chunk(chunking_session):
    session = chunking_session(FutureServer)
    session.send(ENVELOPE + b"BDAT 2 LAST\r\nabNOOP\r\n", ENVELOPE_REPLIES)
    assert session.nothing_more() == b""
    session.server.futures[0].set_result("250 Queued")
    assert session.read(2) == b"250 Queued\r\n250 OK\r\n"


def test_a_data_decision_refuses_the_first_chunk(chunking_session):
    session = chunking_session(RefusingDataServer)
    replies = session.send(ENVELOPE + b"BDAT 6 LAST\r\nNOOP\r\nNOOP\r\n", ENVELOPE_REPLIES + 2)
    assert _tail(replies, 2) == b"554 No messages today\r\n250 OK\r\n"
    assert session.server.messages == []


def test_many_chunks_make_one_big_message(chunking_session):
    session = chunking_session()
    body = bytes(range(256)) * 4096  # 1 MiB, every octet value
    chunks = [body[i:i + 65000] for i in range(0, len(body), 65000)]
    wire = b"".join(b"BDAT %d\r\n" % len(c) + c for c in chunks) + b"BDAT 0 LAST\r\n"
    session.send(ENVELOPE, ENVELOPE_REPLIES)
    replies = session.send(wire, len(chunks) + 1, split=65536)
    assert _tail(replies, 1) == b"250 OK\r\n"
    assert [m[2] for m in session.server.messages] == [
        _parsing.message_from_chunks(body)]


# -- PureProxy relays a message that came in chunks (a deferred DATA decision) --


def test_pure_proxy_relays_chunks_in_lockstep():
    from smtpd_compat.testing import Controller
    from tests.cli_support import SmtpSink, read_reply

    with SmtpSink() as sink:
        with Controller(smtpd_compat.PureProxy, remoteaddr=sink.address) as proxy:
            proxy.server.chunking = True
            client = socket.create_connection(proxy.address, timeout=30)
            try:
                assert read_reply(client).startswith(b"220 ")
                client.sendall(b"EHLO client\r\n")
                assert b"250-CHUNKING" in read_reply(client)
                client.sendall(b"MAIL FROM:<a@example.com>\r\n")
                assert read_reply(client).startswith(b"250")
                client.sendall(b"RCPT TO:<b@example.com>\r\n")
                assert read_reply(client).startswith(b"250")
                # The upstream's DATA is decided while the chunk waits unread.
                client.sendall(b"BDAT 14\r\nSubject: x\r\n\r\n")
                assert read_reply(client) == b"250 OK: 14 octets received\r\n"
                client.sendall(b"BDAT 12 LAST\r\n.dot\r\nbody\r\n")
                assert read_reply(client).startswith(b"250")
            finally:
                client.close()
        messages = sink.wait_for_messages(1)
    assert messages[0].data.replace(b"\r\n", b"\n").endswith(b"\n.dot\nbody\n")
    assert b"Subject: x" in messages[0].data


def test_a_modern_server_offers_chunking(make_session):
    # ``modern`` (the ESMTP extensions' switch, CLI --modern) includes CHUNKING.
    assert b"250-CHUNKING\r\n" in make_session(attributes={"modern": True}).send(
        b"EHLO x\r\n")


class RaisingServer(RecordingServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        raise RuntimeError("disk full")


def test_a_raising_process_message_answers_451_and_the_session_goes_on(chunking_session):
    session = chunking_session(RaisingServer)
    replies = session.send(ENVELOPE + b"BDAT 2 LAST\r\nabNOOP\r\n", ENVELOPE_REPLIES + 2)
    assert _tail(replies, 2) == (
        b"451 Requested action aborted: local error in processing\r\n250 OK\r\n")
    channel = next(iter(session.server._channels))
    assert channel.mailfrom is None and channel._chunked is None


@pytest.mark.parametrize("size", [0, 4])
def test_refused_bdats_count_once_each_towards_max_errors(chunking_session, size):
    session = chunking_session(attributes={"max_errors": 3})
    bdat = b"BDAT %d\r\n" % size + b"x" * size
    replies = session.send(b"EHLO x\r\n" + bdat * 3, 5)
    assert _tail(replies, 4) == (b"503 Error: need MAIL command\r\n" * 3
                                 + b"421 4.7.0 localhost Error: too many errors\r\n")


class DeferredFailingDataServer(RecordingServer):
    """Its DATA decision is a Future that fails."""

    def _policy_data(self, channel):
        future = concurrent.futures.Future()
        future.set_exception(RuntimeError("policy backend down"))
        return future


def test_a_failed_deferred_data_decision_refuses_the_chunk(chunking_session, caplog):
    session = chunking_session(DeferredFailingDataServer)
    replies = session.send(ENVELOPE + b"BDAT 6\r\nNOOP\r\nNOOP\r\n", ENVELOPE_REPLIES + 2)
    assert _tail(replies, 2) == (
        b"451 Requested action aborted: local error in processing\r\n250 OK\r\n")
    assert "policy backend down" in caplog.text
    assert session.server.messages == []
