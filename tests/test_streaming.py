"""Streaming delivery: begin_message, a MessageSink's write/end/abort, the Unstuffer.

The Unstuffer is pure and is fed whole, byte by byte and at every split;
the channel's use of it runs on loopback with real clients (smtplib and a
raw socket) against a server in a Controller thread.
"""

import concurrent.futures
import logging
import smtplib
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

try:
    from . import robust_support as rs  # tests/ is a package
except ImportError:
    import robust_support as rs  # tests/ is on sys.path (rootdir-less import)
import smtpd_compat
from smtpd_compat._parsing import unstuff
from smtpd_compat._streaming import Unstuffer
from smtpd_compat.delivery import MessageSink
from smtpd_compat.testing import Controller

WAIT = 10.0  # seconds to wait for the server thread to record an event

# -- the pure Unstuffer ----------------------------------------------------------------

CORPUS = [
    (b"", b""),
    (b".", b""),
    (b"..", b"."),
    (b"a\r\nb", b"a\nb"),
    (b".a\r\n..b\r\n.\r", b"a\n.b\n\r"),
    (b"x\r\n.", b"x\n"),
    (b"a\rb\nc", b"a\rb\nc"),          # bare CR and bare LF stay
    (b"a\n.b", b"a\n.b"),              # a dot after a bare LF is not at a line start
    (b"a\r.b", b"a\r.b"),
    (b"\r\r\n.\n", b"\r\n\n"),
    (b"a\r\n\r\n..\r\n...", b"a\n\n.\n.."),
    (b"end\r", b"end\r"),              # a CR held back to the end is given at finish
    (b"\r\n\r\n", b"\n\n"),
]
CORPUS_IDS = [repr(data) for data, _ in CORPUS]


def feed_pieces(pieces, stuffed=True):
    unstuffer = Unstuffer(stuffed)
    out = [unstuffer.feed(piece) for piece in pieces]
    out.append(unstuffer.finish())
    return b"".join(out)


@pytest.mark.parametrize("data, expected", CORPUS, ids=CORPUS_IDS)
def test_unstuffer_fed_whole(data, expected):
    assert feed_pieces([data]) == expected == unstuff(data)


@pytest.mark.parametrize("data, expected", CORPUS, ids=CORPUS_IDS)
def test_unstuffer_fed_byte_by_byte(data, expected):
    assert feed_pieces([data[i:i + 1] for i in range(len(data))]) == expected


@pytest.mark.parametrize("data, expected", CORPUS, ids=CORPUS_IDS)
def test_unstuffer_at_every_split_and_with_empty_pieces(data, expected):
    for cut in range(len(data) + 1):
        assert feed_pieces([data[:cut], b"", data[cut:]]) == expected, cut


@given(st.lists(st.sampled_from([b"\r\n", b".", b"\r", b"\n", b"a", b"\r\n.", b".."]),
                max_size=40), st.integers(min_value=1, max_value=9))
def test_unstuffer_in_pieces_is_unstuff_with_many_dots(parts, size):
    data = b"".join(parts)
    pieces = [data[start:start + size] for start in range(0, len(data), size)]
    assert feed_pieces(pieces) == unstuff(data)


def test_unstuffer_output_comes_as_early_as_it_can():
    unstuffer = Unstuffer()
    assert unstuffer.feed(b"a\r") == b"a"    # the CR may start a CRLF
    assert unstuffer.feed(b"\n") == b"\n"
    assert unstuffer.feed(b".") == b""       # a stuffed dot, dropped at once
    assert unstuffer.feed(b".x\r\n") == b".x\n"
    assert unstuffer.finish() == b""


def test_unstuffer_with_trailing_text_after_a_finished_message():
    """A second message fed to a fresh Unstuffer starts at a line start again."""
    first, second = Unstuffer(), Unstuffer()
    assert first.feed(b"a\r\n") + first.finish() == b"a\n"
    assert second.feed(b".b") + second.finish() == b"b"


@pytest.mark.parametrize("pieces", [[b".a\r\n.b"], [b".", b"a\r", b"\n", b".b"]],
                         ids=["whole", "split"])
def test_unstuffer_without_stuffing_only_converts_line_ends(pieces):
    """BDAT chunks are not dot-stuffed: every dot stays."""
    assert feed_pieces(pieces, stuffed=False) == b".a\n.b"


# -- servers that stream -----------------------------------------------------------------


class RecordingSink(MessageSink):
    """Records every call on its server's ``events`` list."""

    def __init__(self, server, envelope):
        self.server = server
        self.pieces = []
        server.events.append(("begin",) + envelope)

    def write(self, data):
        if self.server.fail_write and b"boom" in data:
            raise ValueError("write failed on purpose")
        self.pieces.append(data)
        self.server.events.append(("write", len(data)))

    def end(self):
        self.server.events.append(("end", b"".join(self.pieces)))
        return self.server.answer(self)

    def abort(self, reason):
        self.server.events.append(("abort", reason))


class StreamingServer(smtpd_compat.SMTPServer):
    fail_write = False
    refuse_begin = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events = []
        self.whole = []

    def begin_message(self, peer, mailfrom, rcpttos, **kwargs):
        if self.refuse_begin:
            raise RuntimeError("begin failed on purpose")
        if "whole@example.com" in rcpttos:
            return None
        return RecordingSink(self, (mailfrom, tuple(rcpttos), tuple(kwargs["mail_options"])))

    def answer(self, sink):
        return None

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.whole.append(data)


def wait_for(predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.01)


@pytest.fixture
def streaming():
    with Controller(StreamingServer) as controller:
        yield controller


MESSAGE = b"Subject: streamed\r\n\r\n.leading dot\r\n..two dots\r\nlast line"


def test_pieces_joined_are_what_process_message_would_get(streaming):
    with smtplib.SMTP(*streaming.address) as client:
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE,
                        mail_options=["BODY=8BITMIME"])
    events = streaming.server.events
    assert events[0][:3] == ("begin", "a@example.com", ("b@example.com",))
    assert "BODY=8BITMIME" in events[0][3]  # the MAIL parameters, upper-cased
    assert events[-1] == ("end", unstuff(MESSAGE.replace(b"\n.", b"\n..")))
    assert events[-1][1] == b"Subject: streamed\n\n.leading dot\n..two dots\nlast line"
    assert streaming.server.whole == []


def test_message_arrives_while_it_is_sent(streaming):
    """The sink sees the first part before the client sent the rest."""
    with rs.Client(streaming.port) as client:
        client.cmd("HELO x")
        client.cmd("MAIL FROM:<a@example.com>")
        client.cmd("RCPT TO:<b@example.com>")
        assert client.cmd("DATA").startswith(b"354")
        client.send(b"first part\r\n")
        wait_for(lambda: any(e[0] == "write" for e in streaming.server.events),
                 "the first write")
        assert not any(e[0] == "end" for e in streaming.server.events)
        client.send(b"second part\r\n.\r\n")
        assert client.reply() == [b"250 OK\r\n"]
    assert streaming.server.events[-1] == ("end", b"first part\nsecond part")


@pytest.mark.parametrize("answer, reply", [
    ("550 5.7.1 not wanted", b"550 5.7.1 not wanted\r\n"),
    (452, b"452 Requested action not taken: insufficient system storage\r\n"),
    ("250-first\n250 second", b"250 second\r\n"),
    (object(), b"451 Requested action aborted: local error in processing\r\n"),
], ids=["refusal", "int", "multi-line", "bad-value"])
def test_end_answer_is_the_reply(streaming, answer, reply, caplog):
    streaming.server.answer = lambda sink: answer
    with rs.Client(streaming.port) as client:
        client.cmd("HELO x")
        final, _ = client.transaction("answer")
        assert final == reply
        assert client.cmd("NOOP") == b"250 OK\r\n"


def test_end_may_answer_later_with_a_future(streaming):
    future = concurrent.futures.Future()
    streaming.server.answer = lambda sink: future
    with rs.Client(streaming.port) as client, rs.Client(streaming.port) as other:
        client.cmd("HELO x")
        client.cmd("MAIL FROM:<a@example.com>")
        client.cmd("RCPT TO:<b@example.com>")
        client.cmd("DATA")
        client.send(b"later\r\n.\r\n")
        wait_for(lambda: any(e[0] == "end" for e in streaming.server.events), "end")
        assert other.cmd("NOOP") == b"250 OK\r\n"  # the loop serves others meanwhile
        threading.Timer(0.1, future.set_result, ("250 2.0.0 queued as X",)).start()
        assert client.reply() == [b"250 2.0.0 queued as X\r\n"]


def test_end_raising_answers_451_and_the_session_goes_on(streaming, caplog):
    def fail(sink):
        raise RuntimeError("end failed on purpose")
    streaming.server.answer = fail
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"), \
            rs.Client(streaming.port) as client:
        client.cmd("HELO x")
        final, _ = client.transaction("end-raises")
        assert final.startswith(b"451 ")
        assert client.cmd("NOOP") == b"250 OK\r\n"
    assert "end failed on purpose" in caplog.text


def test_write_raising_aborts_and_answers_451_after_the_data(streaming, caplog):
    streaming.server.fail_write = True
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"), \
            rs.Client(streaming.port) as client:
        client.cmd("HELO x")
        final, _ = client.transaction("write-raises", [b"boom", b"MAIL FROM:<x@y>"])
        assert final.startswith(b"451 ")
        assert client.cmd("NOOP") == b"250 OK\r\n"
    events = streaming.server.events
    assert ("abort", "failed") in events and not any(e[0] == "end" for e in events)
    assert "write failed on purpose" in caplog.text


def test_begin_raising_answers_451_instead_of_354(streaming, caplog):
    streaming.server.refuse_begin = True
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"), \
            rs.Client(streaming.port) as client:
        client.cmd("HELO x")
        client.cmd("MAIL FROM:<a@example.com>")
        client.cmd("RCPT TO:<b@example.com>")
        assert client.cmd("DATA").startswith(b"451 ")
        assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK\r\n"


def test_begin_returning_none_sends_the_message_to_process_message(streaming):
    with smtplib.SMTP(*streaming.address) as client:
        client.sendmail("a@example.com", ["whole@example.com"], b"whole\r\n..dot")
    assert streaming.server.whole == [b"whole\n..dot"]  # as sent: smtplib stuffs it
    assert streaming.server.events == []


def test_size_limit_aborts_and_answers_552():
    with Controller(StreamingServer, data_size_limit=1000) as controller, \
            rs.Client(controller.port) as client:
        client.cmd("HELO x")
        final, _ = client.transaction("too-big", [b"x" * 100] * 20)
        assert final == b"552 Error: Too much mail data\r\n"
        assert client.cmd("NOOP") == b"250 OK\r\n"
        events = controller.server.events
        assert events[-1] == ("abort", "size")
        assert sum(e[1] for e in events if e[0] == "write") <= 1000 + 2 * 102


@pytest.mark.parametrize("ending", ["close", "reset", "quit-then-close"])
def test_client_leaving_mid_data_aborts(streaming, ending):
    client = rs.Client(streaming.port)
    client.cmd("HELO x")
    client.cmd("MAIL FROM:<a@example.com>")
    client.cmd("RCPT TO:<b@example.com>")
    client.cmd("DATA")
    client.send(b"half a message\r\n")
    if ending == "quit-then-close":
        client.send(b"QUIT\r\n")  # message text in DATA, not a command
    wait_for(lambda: any(e[0] == "write" for e in streaming.server.events), "a write")
    if ending == "reset":
        client.abort()
    else:
        client.close()
    wait_for(lambda: any(e[0] == "abort" for e in streaming.server.events), "the abort")
    assert streaming.server.events[-1] == ("abort", "closed")
    assert not any(e[0] == "end" for e in streaming.server.events)


def test_idle_timeout_mid_data_aborts():
    with Controller(StreamingServer) as controller:
        controller.server.idle_timeout = 0.5
        with rs.Client(controller.port) as client:
            client.cmd("HELO x")
            client.cmd("MAIL FROM:<a@example.com>")
            client.cmd("RCPT TO:<b@example.com>")
            client.cmd("DATA")
            client.send(b"and then nothing")
            lines = rs.replies_until_close(client)
        assert lines[-1].endswith(rs.TIMEOUT_TAIL)
        wait_for(lambda: any(e[0] == "abort" for e in controller.server.events), "abort")
        assert controller.server.events[-1] == ("abort", "timeout")


def test_shutdown_mid_data_aborts():
    controller = Controller(StreamingServer).start()
    try:
        client = rs.Client(controller.port)
        client.cmd("HELO x")
        client.cmd("MAIL FROM:<a@example.com>")
        client.cmd("RCPT TO:<b@example.com>")
        client.cmd("DATA")
        client.send(b"half\r\n")
        wait_for(lambda: any(e[0] == "write" for e in controller.server.events), "a write")
    finally:
        controller.stop()
        client.close()
    assert controller.server.events[-1] == ("abort", "closed")


def test_decode_data_servers_do_not_stream():
    with Controller(StreamingServer, decode_data=True) as controller, \
            smtplib.SMTP(*controller.address) as client:
        client.sendmail("a@example.com", ["b@example.com"], b"text")
        assert controller.server.whole == ["text"]
        assert controller.server.events == []
