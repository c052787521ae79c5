"""BDAT chunks into streaming delivery: MaildirServer, PipeServer, a sink, LMTP.

The pure part (the Unstuffer without dot-stuffing gives what
``message_from_chunks`` gives, at every split) is fed whole and in pieces;
the servers run in a Controller thread and get raw-socket BDAT dialogues
split at many positions.
"""

import logging
import mailbox
import os
import time

import pytest

try:
    from . import robust_support as rs  # tests/ is a package
except ImportError:
    import robust_support as rs  # tests/ is on sys.path (rootdir-less import)
import smtpd_compat
from smtpd_compat._parsing import message_from_chunks
from smtpd_compat._streaming import Unstuffer
from smtpd_compat.delivery import MaildirServer, MessageSink, PipeServer
from smtpd_compat.testing import Controller

# -- the pure part: chunks streamed give what process_message would get ----------------

CHUNK_CORPUS = [
    b"", b"\r\n", b"a", b"a\r\n", b"a\r\nb", b"a\r\nb\r\n", b".a\r\n..b\r\n.\r\n",
    b"a\r", b"a\rb\nc\r\n", b"\r\n\r\n", b"x\r\n\r", b"a\n", b"\r\r\n\n\r\n",
]


def stream_pieces(pieces):
    unstuffer = Unstuffer(stuffed=False)
    out = [unstuffer.feed(piece) for piece in pieces]
    out.append(unstuffer.finish())
    return b"".join(out)


@pytest.mark.parametrize("data", CHUNK_CORPUS, ids=[repr(d) for d in CHUNK_CORPUS])
def test_unstuffed_stream_is_message_from_chunks_at_every_split(data):
    expected = message_from_chunks(data)
    assert stream_pieces([data]) == expected
    assert stream_pieces([data[i:i + 1] for i in range(len(data))]) == expected
    for cut in range(len(data) + 1):
        for second in range(cut, len(data) + 1):
            pieces = [data[:cut], b"", data[cut:second], data[second:]]
            assert stream_pieces(pieces) == expected, (cut, second)


def test_a_final_crlf_is_held_back_until_text_follows_it():
    unstuffer = Unstuffer(stuffed=False)
    assert unstuffer.feed(b"a\r\n") == b"a"
    assert unstuffer.feed(b"b\r\n") == b"\nb"
    assert unstuffer.finish() == b""


# -- servers -----------------------------------------------------------------------------


class ChunkingMaildir(MaildirServer):
    chunking = True


class ChunkingPipe(PipeServer):
    chunking = True


ENVELOPE = (b"EHLO client\r\nMAIL FROM:<a@example.com>\r\n"
            b"RCPT TO:<b@example.com>\r\n")
ENVELOPE_REPLIES = 3
# A CRLF split across the chunks, a dot at a line start (not stuffed in BDAT).
CHUNKS = (b"Subject: chunks\r\n\r\n.a\r", b"\nlast\r\n")
TRANSACTION = ENVELOPE + b"".join(
    b"BDAT %d%s\r\n%s" % (len(chunk), last, chunk)
    for chunk, last in zip(CHUNKS, (b"", b" LAST")))
DELIVERED = b"Subject: chunks\n\n.a\nlast\n"
FINAL_REPLIES = b"250 OK: %d octets received\r\n250 OK\r\n" % len(CHUNKS[0])
# Split positions: every byte of the chunks' part, some in the commands.
SPLITS = list(range(len(ENVELOPE) - 3, len(TRANSACTION), 3)) + [len(ENVELOPE) + 10]


def run_split(port, position):
    """Send TRANSACTION in two writes cut at *position*; the two BDAT replies."""
    with rs.Client(port) as client:
        client.send(TRANSACTION[:position])
        time.sleep(0.01)  # the server most likely reads the first part alone
        client.send(TRANSACTION[position:])
        replies = [client.reply() for _ in range(ENVELOPE_REPLIES + 2)]
        client.cmd("QUIT")
    return b"".join(b"".join(reply) for reply in replies[-2:])


def read_maildir(path):
    box = mailbox.Maildir(str(path), factory=None, create=False)
    return sorted(box.get_bytes(key) for key in box.keys())


def test_maildir_server_takes_bdat_split_anywhere(tmp_path):
    maildir = tmp_path / "Maildir"
    with Controller(ChunkingMaildir, maildir=str(maildir)) as controller:
        for position in SPLITS:
            assert run_split(controller.port, position) == FINAL_REPLIES, position
    headers = (b"Return-Path: <a@example.com>\nDelivered-To: b@example.com\n"
               b"X-Peer: 127.0.0.1\n")
    assert read_maildir(maildir) == [headers + DELIVERED] * len(SPLITS)
    assert os.listdir(str(maildir / "tmp")) == []


def test_pipe_server_takes_bdat_split_anywhere(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    command = "sh -c 'cat > \"%s/$$\"'" % out
    with Controller(ChunkingPipe, pipe_command=command) as controller:
        for position in SPLITS:
            assert run_split(controller.port, position) == FINAL_REPLIES, position
    delivered = [path.read_bytes() for path in out.iterdir()]
    assert delivered == [DELIVERED] * len(SPLITS)


def test_rset_mid_bdat_leaves_nothing_in_the_maildir(tmp_path):
    maildir = tmp_path / "Maildir"
    with Controller(ChunkingMaildir, maildir=str(maildir)) as controller, \
            rs.Client(controller.port) as client:
        client.cmd("EHLO client")
        client.cmd("MAIL FROM:<a@example.com>")
        client.cmd("RCPT TO:<b@example.com>")
        assert client.cmd("BDAT 6\r\nhalf") == (
            b"250 OK: 6 octets received\r\n")
        assert client.cmd("RSET") == b"250 OK\r\n"
        assert client.cmd("NOOP") == b"250 OK\r\n"
    assert read_maildir(maildir) == []
    assert os.listdir(str(maildir / "tmp")) == []


def test_a_client_leaving_mid_chunk_leaves_nothing(tmp_path):
    maildir = tmp_path / "Maildir"
    with Controller(ChunkingMaildir, maildir=str(maildir)) as controller:
        with rs.Client(controller.port) as client:
            client.send(ENVELOPE + b"BDAT 100000 LAST\r\n" + b"x" * 5000)
            for _ in range(3):
                client.reply()
        with rs.Client(controller.port) as client:  # served after the abort
            assert client.cmd("NOOP") == b"250 OK\r\n"
    assert read_maildir(maildir) == []
    assert os.listdir(str(maildir / "tmp")) == []


# -- a user's sink: abort reasons, the size limit, a failing begin, LMTP -----------------


class Sink(MessageSink):
    def __init__(self, server):
        self.server = server
        self.pieces = []

    def write(self, data):
        self.pieces.append(data)

    def end(self):
        self.server.events.append(("end", b"".join(self.pieces)))
        return self.server.answer

    def abort(self, reason):
        self.server.events.append(("abort", reason))


class StreamingServer(smtpd_compat.SMTPServer):
    chunking = True
    answer = None
    fail_begin = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events = []

    def begin_message(self, peer, mailfrom, rcpttos, **kwargs):
        if self.fail_begin:
            raise RuntimeError("begin failed on purpose")
        self.events.append(("begin", mailfrom, tuple(rcpttos)))
        return Sink(self)

    def process_message(self, *args, **kwargs):
        raise AssertionError("a streaming server's process_message is not called")


@pytest.fixture
def streaming():
    with Controller(StreamingServer) as controller:
        yield controller


def envelope(client, verb="EHLO"):
    client.cmd(verb + " client")
    client.cmd("MAIL FROM:<a@example.com>")
    client.cmd("RCPT TO:<b@example.com>")


def test_a_sink_gets_the_chunks_and_answers_the_last(streaming):
    streaming.server.answer = "250 kept it"
    with rs.Client(streaming.port) as client:
        envelope(client)
        client.send(b"BDAT 3\r\n.a\rBDAT 0\r\n")
        assert client.reply() == [b"250 OK: 3 octets received\r\n"]
        assert client.reply() == [b"250 OK: 3 octets received\r\n"]
        assert client.cmd("BDAT 4 LAST\r\n\nb") == b"250 kept it\r\n"
    assert streaming.server.events == [
        ("begin", "a@example.com", ("b@example.com",)), ("end", b".a\nb")]


def test_the_size_limit_aborts_the_sink(streaming):
    streaming.server.data_size_limit = 5
    with rs.Client(streaming.port) as client:
        envelope(client)
        client.send(b"BDAT 4\r\nabcd")
        assert client.reply() == [b"250 OK: 4 octets received\r\n"]
        client.send(b"BDAT 4 LAST\r\nefgh")
        assert client.reply()[0].startswith(b"552 ")
        assert client.cmd("NOOP") == b"250 OK\r\n"
    assert streaming.server.events[1:] == [("abort", "size")]


def test_rset_aborts_the_sink(streaming):
    with rs.Client(streaming.port) as client:
        envelope(client)
        client.send(b"BDAT 2\r\nab")
        assert client.reply() == [b"250 OK: 2 octets received\r\n"]
        assert client.cmd("RSET") == b"250 OK\r\n"
    assert streaming.server.events[1:] == [("abort", "reset")]


def test_a_failing_begin_refuses_the_chunk_and_reads_it_all(streaming, caplog):
    streaming.server.fail_begin = True
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"), \
            rs.Client(streaming.port) as client:
        envelope(client)
        client.send(b"BDAT 6 LAST\r\nQUIT\r\n")
        assert client.reply()[0].startswith(b"451 ")
        assert client.cmd("NOOP") == b"250 OK\r\n"  # the chunk's QUIT never ran
        assert client.cmd("RSET") == b"250 OK\r\n"
    assert "begin_message failed" in caplog.text


class LmtpStreamingServer(StreamingServer):
    lmtp = True
    answer = ["250 2.0.0 first", "452 4.2.2 second is full"]


def test_lmtp_streams_data_and_bdat_with_one_reply_per_recipient():
    with Controller(LmtpStreamingServer) as controller, \
            rs.Client(controller.port) as client:
        client.cmd("LHLO client")
        client.cmd("MAIL FROM:<a@example.com>")
        client.cmd("RCPT TO:<b@example.com>")
        client.cmd("RCPT TO:<c@example.com>")
        client.send(b"BDAT 7 LAST\r\nhello\r\n")
        assert client.reply() == [b"250 2.0.0 first\r\n"]
        assert client.reply() == [b"452 4.2.2 second is full\r\n"]
        client.cmd("MAIL FROM:<a@example.com>")
        client.cmd("RCPT TO:<b@example.com>")
        client.cmd("RCPT TO:<c@example.com>")
        assert client.cmd("DATA").startswith(b"354 ")
        client.send(b"..dot\r\n.\r\n")
        assert client.reply() == [b"250 2.0.0 first\r\n"]
        assert client.reply() == [b"452 4.2.2 second is full\r\n"]
    ends = [event for event in controller.server.events if event[0] == "end"]
    assert ends == [("end", b"hello"), ("end", b".dot")]
