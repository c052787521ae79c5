"""Protocol-state fixes, bad input, handler errors, crashing clients, SIGTERM.

Dialogues run against a server in a thread of the test process (so the
arguments ``process_message`` received and the log records can be checked
directly); the fault and shutdown tests run the real CLI in a subprocess with
the journaling sink of robust_support.
"""

import collections
import concurrent.futures
import io
import logging
import random
import signal
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

HANDLER_FAILED = b"451 Requested action aborted: local error in processing\r\n"


class RecordingChannel(rs.SinkChannel):
    """Remembers the size of every read, to show where TCP segments ended."""

    def recv(self, buffer_size):
        data = super().recv(buffer_size)
        self.smtp_server.reads.append(data)
        return data


class RecordingServer(smtpd_compat.SMTPServer):
    """Keeps every process_message call; can be told to fail."""

    channel_class = RecordingChannel

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []
        self.reads = []
        self.fail_with = None  # an exception to raise, or a Future to return

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.calls.append((mailfrom, list(rcpttos), data, kwargs))
        if isinstance(self.fail_with, BaseException):
            raise self.fail_with
        if isinstance(self.fail_with, concurrent.futures.Future):
            return self.fail_with
        return None


@pytest.fixture
def make_server():
    servers = []

    def make(**kwargs):
        server = Controller(RecordingServer, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def srv(make_server):
    return make_server(data_size_limit=1000)


def session(server, greet=b"EHLO robust.example"):
    client = rs.Client(server.port)
    if greet:
        assert client.cmd(greet).startswith(b"250 "), client.lines
    return client


def settle(server):
    """Wait until the server has acted on all input it read so far.

    Its loop is one thread: once a new connection got an answer, the input
    that came before (even from a client that saw its connection close) is done.
    """
    with rs.Client(server.port) as client:
        assert client.cmd("NOOP") == b"250 OK\r\n"


def replies_until_close(client):
    """Every reply line until the server closes the connection."""
    try:
        while True:
            client.line()
    except rs.ServerClosed as e:
        assert not e.partial, e
    return client.lines


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# -- protocol state -------------------------------------------------------------


def test_command_state_after_too_much_data(srv):
    with session(srv) as client:
        assert client.cmd("MAIL FROM:<a@example.com>").startswith(b"250")
        assert client.cmd("RCPT TO:<b@example.com>").startswith(b"250")
        assert client.cmd("DATA").startswith(b"354")
        client.send(b"x" * 900 + b"\r\n" + b"y" * 900 + b"\r\n.\r\n")
        assert client.reply() == [b"552 Error: Too much mail data\r\n"]
        # Back in command state with a clean transaction: these are commands,
        # not message data for the earlier recipients.
        assert client.cmd("RCPT TO:<c@example.com>") == b"503 Error: need MAIL command\r\n"
        assert client.cmd("NOOP") == b"250 OK\r\n"
        client.send(b"\r\n.\r\n")
        assert client.reply() == [b"500 Error: bad syntax\r\n"]
        assert client.reply() == [b'500 Error: command "." not recognized\r\n']
        final, lines = client.transaction("after-552")
        assert final == b"250 OK\r\n"
        assert client.cmd("QUIT") == b"221 Bye\r\n"
    assert [call[2] for call in srv.server.calls] == [rs.delivered_data(lines)]


def test_command_state_after_too_much_data_pipelined(srv):
    with session(srv) as client:
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                    + b"z" * 1500 + b"\r\n.\r\nMAIL FROM:<c@example.com>\r\nRSET\r\nQUIT\r\n"
                    + b"\r\n.\r\n")
        lines = replies_until_close(client)
    settle(srv)
    assert lines[5:] == [b"250 OK\r\n", b"250 OK\r\n",
                         b"354 End data with <CR><LF>.<CR><LF>\r\n",
                         b"552 Error: Too much mail data\r\n",
                         b"250 OK\r\n", b"250 OK\r\n", b"221 Bye\r\n"]
    assert srv.server.calls == []


def test_nothing_after_quit_is_run_or_delivered(srv):
    with session(srv, greet=None) as client:
        client.send(b"HELO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                    b"QUIT\r\nDATA\r\nSubject: smuggled\r\n\r\nbody\r\n.\r\nNOOP\r\n")
        lines = replies_until_close(client)
    settle(srv)
    fqdn = lines[0].split()[1]
    assert lines[1:] == [b"250 " + fqdn + b"\r\n",
                         b"250 OK\r\n", b"250 OK\r\n", b"221 Bye\r\n"]
    assert srv.server.calls == []


def test_message_before_quit_is_delivered_once(srv):
    with session(srv) as client:
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                    b"Subject: ok\r\n\r\nbody\r\n.\r\nQUIT\r\nNOOP\r\n")
        lines = replies_until_close(client)
    settle(srv)
    assert lines[-3:] == [b"354 End data with <CR><LF>.<CR><LF>\r\n", b"250 OK\r\n",
                          b"221 Bye\r\n"]
    assert [call[2] for call in srv.server.calls] == [b"Subject: ok\n\nbody"]


def test_replies_survive_input_sent_after_quit(tmp_path):
    """A client that sends more after QUIT still reads every reply before it.

    Closing a socket with unread input makes the kernel answer with a reset,
    and a reset destroys what the client had not read yet: the 250 of the
    message it pipelined before QUIT (so it would send it again) and the 221.
    """
    delivered = 0
    with rs.CliServer(tmp_path) as server:
        for n in range(200):
            with rs.Client(server.port) as client:
                client.send(b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                            b"DATA\r\n" + rs.wire_data(rs.message_lines("q%d" % n))
                            + b"QUIT\r\n")
                try:
                    client.send(b"NOOP\r\n" * 50)  # too late: the server quits
                except (BrokenPipeError, ConnectionResetError):
                    pass
                lines = replies_until_close(client)
            assert lines[-2:] == [b"250 OK\r\n", b"221 Bye\r\n"], (n, lines)
            delivered += 1
        server.assert_healthy()
    assert [e["id"] for e in server.entries()] == ["q%d" % n for n in range(200)]


@pytest.mark.parametrize("decode_data", [False, True], ids=["bytes", "decode_data"])
@pytest.mark.parametrize("pieces", [
    [b"DATA\r\n.\r\nNOOP\r\n"],
    [b"DATA\r\n", b".\r\n", b"NOOP\r\n"],
    [b"DATA\r\n", b".", b"\r", b"\n", b"NOOP\r\n"],
], ids=["one-segment", "lines", "bytes"])
def test_data_then_dot_is_an_empty_message(make_server, decode_data, pieces):
    server = make_server(decode_data=decode_data)
    with session(server) as client:
        assert client.cmd("MAIL FROM:<a@example.com>").startswith(b"250")
        assert client.cmd("RCPT TO:<b@example.com>").startswith(b"250")
        for piece in pieces:
            client.send(piece)
            time.sleep(0.02)
        assert client.reply() == [b"354 End data with <CR><LF>.<CR><LF>\r\n"]
        assert client.reply() == [b"250 OK\r\n"]
        assert client.reply() == [b"250 OK\r\n"]  # the NOOP: command state again
    assert [call[2] for call in server.server.calls] == ["" if decode_data else b""]


def mail_line(length):
    """A valid MAIL command line of exactly *length* octets (without CRLF)."""
    head, tail = "MAIL FROM:<", "@example.com>"
    return head + "a" * (length - len(head) - len(tail)) + tail


def test_line_limits_are_per_connection(srv):
    template = dict(smtpd_compat.SMTPChannel.command_size_limits)
    # SIZE is advertised: after EHLO a MAIL line may have 512 + 26 octets.
    a = rs.Client(srv.port)
    b = rs.Client(srv.port)
    helo_only = rs.Client(srv.port)
    try:
        assert a.cmd("EHLO a").startswith(b"250 ")
        assert b.cmd("EHLO b").startswith(b"250 ")
        assert helo_only.cmd("HELO h").startswith(b"250 ")
        # Two EHLOs did not add their allowances up (a shared limit would be 564).
        assert a.cmd(mail_line(550)) == b"500 Error: line too long\r\n"
        assert a.cmd(mail_line(538)) == b"250 OK\r\n"
        with rs.Client(srv.port) as c:  # a new connection resets nobody's limit
            assert c.cmd("NOOP") == b"250 OK\r\n"
            assert b.cmd(mail_line(530)) == b"250 OK\r\n"
            assert c.cmd(mail_line(530)) == b"500 Error: line too long\r\n"
        assert helo_only.cmd(mail_line(513)) == b"500 Error: line too long\r\n"
        assert helo_only.cmd(mail_line(512)) == b"250 OK\r\n"
        assert a.cmd("RSET") == b"250 OK\r\n"
        assert a.cmd(mail_line(538)) == b"250 OK\r\n"
    finally:
        for client in (a, b, helo_only):
            client.close()
    assert dict(smtpd_compat.SMTPChannel.command_size_limits) == template


def test_rejected_parameters_do_not_reach_process_message(srv):
    with session(srv) as client:
        assert client.cmd("MAIL FROM:<a@example.com> BODY=BOGUS").startswith(b"501")
        assert client.cmd("MAIL FROM:<a@example.com> SIZE=99999").startswith(b"552")
        assert client.cmd("MAIL FROM:<a@example.com> XFOO=1").startswith(b"555")
        assert client.cmd("MAIL FROM:<a@example.com> BODY=8BITMIME") == b"250 OK\r\n"
        assert client.cmd("RCPT TO:<b@example.com>") == b"250 OK\r\n"
        assert client.cmd("RCPT TO:<c@example.com> NOTIFY=NEVER").startswith(b"555")
        assert client.cmd("RCPT TO:<d@example.com> =x").startswith(b"501")
        assert client.cmd("DATA").startswith(b"354")
        client.send(rs.wire_data([b"Subject: p"]))
        assert client.reply() == [b"250 OK\r\n"]
    [(mailfrom, rcpttos, _, kwargs)] = srv.server.calls
    assert rcpttos == ["b@example.com"]
    assert kwargs == {"mail_options": ["BODY=8BITMIME"], "rcpt_options": []}


# -- bad bytes ----------------------------------------------------------------------

BAD_LINES = [
    # (id, needs MAIL first, line, expected reply line or code prefix)
    ("latin1-address", False, b"MAIL FROM:<caf\xe9@example.com>",
     b"500 Error: command line is not valid UTF-8\r\n"),
    ("invalid-utf8", False, b"\xff\xfe\xfd", b"500 Error: command line is not valid UTF-8\r\n"),
    ("truncated-utf8", False, b"NOOP \xe2\x98", b"500 Error: command line is not valid UTF-8\r\n"),
    ("non-ascii-verb", False, "\u00c9HLO x".encode(),
     b'500 Error: command "\\xc9HLO" not recognized\r\n'),
    ("vrfy-non-ascii-junk", False, "VRFY <\u00fc@@\u2603>".encode(),
     b"502 Could not VRFY <\\xfc@@\\u2603>\r\n"),
    ("vrfy-non-ascii-address", False, "VRFY caf\u00e9@\u00fc".encode(), b"252 "),
    ("mail-double-angle", False, b"MAIL FROM:<<a@b>>", b"501 "),
    ("mail-open-angle", False, b"MAIL FROM:<", b"501 "),
    ("mail-at", False, b"MAIL FROM:@", b"501 "),
    ("mail-two-ats", False, b"MAIL FROM:x@y@z", b"501 "),
    ("mail-empty-angle-space", False, b"MAIL FROM:< >", b"501 "),
    ("mail-bare-size", False, b"MAIL FROM:<a@b> SIZE", b"501 "),
    ("mail-superscript-size", False, "MAIL FROM:<a@b> SIZE=\u00b2".encode(), b"501 "),
    ("mail-arabic-size", False, "MAIL FROM:<a@b> SIZE=\u0661\u0660".encode(), b"501 "),
    ("rcpt-double-at", True, b"RCPT TO:<a@@b>", b"501 "),
    ("rcpt-at", True, b"RCPT TO:@", b"501 "),
    ("rcpt-two-ats", True, b"RCPT TO:<x@y@z>", b"501 "),
    ("rcpt-bare-cr", True, b"RCPT TO:<a\r@b>", b"501 "),
    ("dotless-i-quit", False, "QU\u0131T".encode(),
     b'500 Error: command "QU\\u0131T" not recognized\r\n'),
    ("long-s-rset", False, "R\u017fET".encode(), b"500 "),
    ("nul-bytes", False, b"\x00\x00NOOP", b"500 "),
]


@pytest.mark.parametrize("decode_data", [False, True], ids=["bytes", "decode_data"])
@pytest.mark.parametrize("needs_mail,line,expected", [case[1:] for case in BAD_LINES],
                         ids=[case[0] for case in BAD_LINES])
def test_bad_line_gets_a_reply_and_the_session_goes_on(make_server, caplog, decode_data,
                                                        needs_mail, line, expected):
    server = make_server(data_size_limit=1000, decode_data=decode_data)
    with session(server) as client:
        if needs_mail:
            assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK\r\n"
        reply = client.cmd(line)
        assert reply.startswith(expected)
        reply.decode("ascii")  # no raw non-ASCII echoed without SMTPUTF8
        rs.check_reply_lines(client.lines)
        assert client.cmd("NOOP") == b"250 OK\r\n"
        assert client.cmd("RSET") == b"250 OK\r\n"
        final, lines = client.transaction("after-bad-line")
        assert final == b"250 OK\r\n"
        assert client.cmd("QUIT") == b"221 Bye\r\n"
    assert len(server.server.calls) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_bad_lines_in_one_segment(srv):
    """All the bad lines pipelined at once: one reply each, in order."""
    srv.server.max_errors = None  # more bad lines than the default error limit
    with session(srv) as client:
        client.send(b"MAIL FROM:<a@example.com>\r\n"
                    + b"".join(case[2] + b"\r\n" for case in BAD_LINES if case[1])
                    + b"RSET\r\n"
                    + b"".join(case[2] + b"\r\n" for case in BAD_LINES if not case[1])
                    + b"NOOP\r\n")
        assert client.reply() == [b"250 OK\r\n"]
        expected = ([case[3] for case in BAD_LINES if case[1]] + [b"250 OK\r\n"]
                    + [case[3] for case in BAD_LINES if not case[1]])
        for prefix in expected:
            reply = client.reply()
            assert len(reply) == 1 and reply[0].startswith(prefix), (prefix, reply)
        assert client.reply() == [b"250 OK\r\n"]


def test_bad_lines_in_one_segment_end_at_the_error_limit(srv):
    """With the default error limit the 20th bad line is followed by a 421."""
    # every line answered 5yz; RCPT without MAIL gets 503, an error too
    bad = [case[2] for case in BAD_LINES if case[3][:1] == b"5"]
    assert len(bad) >= 20
    with session(srv) as client:
        client.send(b"".join(line + b"\r\n" for line in bad) + b"NOOP\r\n")
        for line in bad[:20]:
            assert client.reply()[0][:1] == b"5", line
        reply = client.reply()
        assert reply[0].startswith(b"421 4.7.0 ") and reply[0].endswith(
            b" Error: too many errors\r\n")
        with pytest.raises(rs.ServerClosed):  # and the NOOP never ran
            client.reply()


@pytest.mark.parametrize("mode", ["bytes", "decode_data", "smtputf8"])
def test_utf8_character_split_across_segments(make_server, mode):
    server = make_server(decode_data=mode == "decode_data",
                         enable_SMTPUTF8=mode == "smtputf8")
    with session(server) as client:
        assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK\r\n"
        assert client.cmd("RCPT TO:<b@example.com>") == b"250 OK\r\n"
        assert client.cmd("DATA").startswith(b"354")
        server.server.reads.clear()
        first, second = b"Subject: caf\xc3", b"\xa9\r\n\r\n\xe2\x82"
        client.send(first)
        wait_for(lambda: server.server.reads)  # the server read the first half alone
        client.send(second)
        wait_for(lambda: len(server.server.reads) >= 2)
        client.send(b"\xac\r\n.\r\n")
        reply = client.reply()
        # VRFY with a split character in the command line, too.
        client.send("VRFY caf".encode() + b"\xc3")
        time.sleep(0.05)
        client.send(b"\xa9@example.com\r\n")
        vrfy = client.reply()
    assert server.server.reads[0] == first
    assert reply == [b"250 OK\r\n"]
    assert vrfy[0].startswith(b"252 ")
    expected = b"Subject: caf\xc3\xa9\n\n\xe2\x82\xac"
    [(_, _, data, _)] = server.server.calls
    assert data == (expected.decode("utf-8") if mode == "decode_data" else expected)


def test_undecodable_data_in_decode_data_mode(make_server):
    server = make_server(decode_data=True)
    with session(server) as client:
        assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK\r\n"
        assert client.cmd("RCPT TO:<b@example.com>") == b"250 OK\r\n"
        assert client.cmd("DATA").startswith(b"354")
        client.send(b"Subject: \xff\xfe\r\n.\r\n")
        assert client.reply() == [b"554 Error: message data is not valid UTF-8\r\n"]
        assert client.cmd("RCPT TO:<b@example.com>") == b"503 Error: need MAIL command\r\n"
        final, _ = client.transaction("after-554")
        assert final == b"250 OK\r\n"
    assert len(server.server.calls) == 1


# -- handler errors ------------------------------------------------------------------


@pytest.fixture
def debugstream(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(smtpd_compat, "DEBUGSTREAM", stream)
    return stream


def failure_records(caplog):
    return [r for r in caplog.records
            if r.name == "smtpd_compat" and r.levelno >= logging.ERROR]


@pytest.mark.parametrize("how", ["raise", "failed-future"])
def test_process_message_error_answers_451(srv, caplog, debugstream, how):
    if how == "raise":
        srv.server.fail_with = RuntimeError("backend down")
    else:
        future = concurrent.futures.Future()
        future.set_exception(RuntimeError("backend down"))
        srv.server.fail_with = future
    with session(srv) as client:
        final, _ = client.transaction("fails")
        assert final == HANDLER_FAILED
        # The transaction is gone: no sender, no recipients, command state.
        assert client.cmd("RCPT TO:<b@example.com>") == b"503 Error: need MAIL command\r\n"
        assert client.cmd("DATA") == b"503 Error: need RCPT command\r\n"
        srv.server.fail_with = None
        final, _ = client.transaction("works")
        assert final == b"250 OK\r\n"
        assert client.cmd("QUIT") == b"221 Bye\r\n"
    assert len(srv.server.calls) == 2
    [record] = failure_records(caplog)
    assert record.exc_info and "backend down" in str(record.exc_info[1])
    assert "Traceback" in debugstream.getvalue()
    assert "RuntimeError: backend down" in debugstream.getvalue()


def test_smtp_method_error_answers_451(srv, caplog, debugstream):
    with session(srv) as client:
        assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK\r\n"
        assert client.cmd("RCPT TO:<b@example.com>") == b"250 OK\r\n"
        assert client.cmd("XBOOM") == HANDLER_FAILED
        assert client.cmd("DATA") == b"503 Error: need RCPT command\r\n"
        # Several failures pipelined in one segment, and the input after them.
        client.send(b"XBOOM\r\nXBOOM now\r\nNOOP\r\n")
        assert [client.reply() for _ in range(3)] == [
            [HANDLER_FAILED], [HANDLER_FAILED], [b"250 OK\r\n"]]
        final, _ = client.transaction("after-xboom")
        assert final == b"250 OK\r\n"
    assert len(failure_records(caplog)) == 3
    assert debugstream.getvalue().count("InjectedFault: smtp_XBOOM raised on purpose") == 3
    assert len(srv.server.calls) == 1


# -- many clients, crashes and failures at random -----------------------------------

FAULT_THREADS = 10
FAULT_MESSAGES_PER_THREAD = 300
FAULT_FAIL_RATE = 0.15
FAULT_KILL_RATE = 0.12


class FaultClient:
    """Sends its numbered messages; dies mid-DATA or mid-command at random."""

    def __init__(self, port, number, seed):
        self.port = port
        self.number = number
        self.random = random.Random(seed)
        self.acked = []  # ids that got 250
        self.expected = {}  # id -> sha256 of the data process_message must get
        self.failed_replies = 0  # 451s seen
        self.killed = 0
        self.client = None

    def connect(self):
        self.client = rs.Client(self.port)
        assert self.client.cmd("EHLO fault%d" % self.number).startswith(b"250 ")

    def kill(self):
        self.client.abort()
        self.client = None
        self.killed += 1

    def body(self):
        lines = []
        for _ in range(self.random.randrange(0, 30)):
            kind = self.random.random()
            if kind < 0.15:
                lines.append(b"." * self.random.randrange(1, 3) + b"dot line")
            elif kind < 0.25:
                lines.append(bytes(self.random.randrange(128, 256) for _ in range(20)))
            else:
                words = b"line %d " % self.random.randrange(10**6)
                lines.append(words * self.random.randrange(1, 20))
        return lines

    def run(self):
        for n in range(FAULT_MESSAGES_PER_THREAD):
            ident = "t%d-m%d" % (self.number, n)
            lines = rs.message_lines(ident, self.body())
            self.expected[ident] = rs.sha256(rs.delivered_data(lines))
            for _attempt in range(10):
                if self.attempt(ident, lines):
                    break
        if self.client is not None:
            assert self.client.cmd("QUIT") == b"221 Bye\r\n"
            self.client.close()

    def attempt(self, ident, lines):
        """One try at sending a message; True once it is acknowledged."""
        if self.client is None:
            self.connect()
        client = self.client
        wire = rs.wire_data(lines)
        roll = self.random.random()
        if roll < FAULT_KILL_RATE / 4:
            client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@exa")  # dies mid-command
            self.kill()
            return False
        head = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
        if roll < FAULT_KILL_RATE:
            # Dies mid-DATA: everything but the final "." line, cut somewhere.
            client.send(head + wire[:self.random.randrange(0, len(wire) - 2)])
            self.kill()
            return False
        if self.random.random() < 0.5:
            client.send(head + wire)  # pipelined in one write
        else:
            client.send(head)
            cuts = sorted(self.random.sample(range(1, len(wire)), 3))
            for start, end in zip([0] + cuts, cuts + [len(wire)]):
                client.send(wire[start:end])  # several writes, cut anywhere
        replies = [client.reply()[-1] for _ in range(4)]
        assert replies[:3] == [b"250 OK\r\n", b"250 OK\r\n",
                               b"354 End data with <CR><LF>.<CR><LF>\r\n"], replies
        if replies[3] == b"250 OK\r\n":
            self.acked.append(ident)
            return True
        assert replies[3] == HANDLER_FAILED, replies
        self.failed_replies += 1
        return False


def test_no_message_lost_or_duplicated_under_faults(tmp_path):
    env = {"ROBUST_FAIL_RATE": str(FAULT_FAIL_RATE), "ROBUST_SEED": "4"}
    with rs.CliServer(tmp_path, "-s", "100000", env=env) as server:
        clients = [FaultClient(server.port, n, seed=n) for n in range(FAULT_THREADS)]
        with concurrent.futures.ThreadPoolExecutor(FAULT_THREADS) as pool:
            for future in [pool.submit(c.run) for c in clients]:
                future.result()
        with session(server) as client:  # still serving (failures are random here too)
            for _ in range(50):
                final, _ = client.transaction("final-check")
                if final == b"250 OK\r\n":
                    break
            assert final == b"250 OK\r\n"
        assert server.alive()
        assert server.stop() == 0
    all_entries = server.entries()
    entries = [e for e in all_entries if e["id"] != "final-check"]
    accepted = collections.Counter(e["id"] for e in entries if e["event"] == "accepted")
    raised = [e for e in entries if e["event"] == "raised"]
    acked = [ident for c in clients for ident in c.acked]
    expected = {k: v for c in clients for k, v in c.expected.items()}
    assert len(acked) == len(set(acked))
    # Every acknowledged message was handed over exactly once, and nothing else was.
    assert set(accepted) == set(acked)
    assert [k for k, count in accepted.items() if count != 1] == []
    for e in entries:
        if e["event"] == "accepted":
            assert e["sha256"] == expected[e["id"]], e["id"]
    # Every injected failure reached its client as a 451.
    assert len(raised) == sum(c.failed_replies for c in clients) > 0
    killed = sum(c.killed for c in clients)
    assert killed > 0
    # Only the process_message failures wrote tracebacks.
    assert server.stderr().count("Traceback") == sum(e["event"] == "raised" for e in all_entries)
    total = FAULT_THREADS * FAULT_MESSAGES_PER_THREAD
    lost = total - len(acked)
    rs.figure("fault test: clients", FAULT_THREADS)
    rs.figure("fault test: messages acknowledged", len(acked))
    rs.figure("fault test: messages given up after 10 tries", lost)
    rs.figure("fault test: clients killed mid-command or mid-DATA", killed)
    rs.figure("fault test: process_message failures injected", len(raised))
    rs.figure("fault test: acknowledged messages lost or duplicated", 0)


# -- SIGTERM -------------------------------------------------------------------------


def test_sigterm_never_acknowledges_an_undelivered_message(tmp_path):
    with rs.CliServer(tmp_path, "-s", "100000") as server:
        idle = rs.Client(server.port)
        assert idle.cmd("EHLO idle").startswith(b"250 ")
        mid_data = []
        for n in range(5):
            client = rs.Client(server.port)
            assert client.cmd("EHLO middata").startswith(b"250 ")
            assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK\r\n"
            assert client.cmd("RCPT TO:<b@example.com>") == b"250 OK\r\n"
            assert client.cmd("DATA").startswith(b"354")
            client.send(rs.wire_data(rs.message_lines("middata-%d" % n, [b"x" * 100]))[:-3])
            mid_data.append(client)
        mid_line = rs.Client(server.port)
        mid_line.send(b"EHLO half-a-li")
        # A message whose reply is pending (process_message returned a Future).
        deferred = rs.Client(server.port)
        assert deferred.cmd("EHLO deferred").startswith(b"250 ")
        deferred.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                      + rs.wire_data(rs.message_lines(
                          "deferred", extra_headers=[rs.DEFER_HEADER + b"1.0"])))
        assert [deferred.reply()[-1] for _ in range(3)][-1].startswith(b"354")
        wait_for(lambda: server.entries())  # handed to process_message, reply pending
        clients = [("idle", idle), ("mid_line", mid_line), ("deferred", deferred)] + [
            ("mid_data%d" % n, c) for n, c in enumerate(mid_data)]
        seen = {name: len(client.lines) for name, client in clients}
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        results = {}
        for name, client in clients:
            results[name] = replies_until_close(client)[seen[name]:]
            client.close()
    shutdown = b"421 localhost Service shutting down, closing connection\r\n"
    fqdn = idle.greeting[0].split()[1]
    shutdown = shutdown.replace(b"localhost", fqdn)
    # The message handed over gets its 250 before the goodbye; nobody else gets a 250.
    assert results.pop("deferred") == [b"250 OK\r\n", shutdown]
    assert results.pop("mid_line")[-1:] == [shutdown]
    for name, lines in results.items():
        assert lines == [shutdown], (name, lines)
    assert [e["id"] for e in server.entries()] == ["deferred"]
    assert "Traceback" not in server.stderr()


def sigterm_load_client(port, number, acked, sent):
    """Send messages until the server goes away; remember what got 250."""
    client = rs.Client(port)
    try:
        client.cmd("EHLO load%d" % number)
        n = 0
        while True:
            ident = "load%d-%d" % (number, n)
            n += 1
            client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
            data = rs.wire_data(rs.message_lines(ident, [b"y" * 200] * 5))
            client.send(data[:len(data) // 2])
            sent.append(ident)
            client.send(data[len(data) // 2:])
            replies = [client.reply()[-1] for _ in range(4)]
            for reply in replies[:3]:
                assert reply in (b"250 OK\r\n", b"354 End data with <CR><LF>.<CR><LF>\r\n")
            if replies[3] == b"250 OK\r\n":
                acked.append(ident)
            else:
                assert b"421" in replies[3], replies
                return
    except (rs.ServerClosed, ConnectionError):
        return
    finally:
        client.close()


def test_sigterm_under_load_acknowledges_exactly_what_was_delivered(tmp_path):
    with rs.CliServer(tmp_path, "-s", "100000") as server:
        acked, sent = [], []
        threads = [threading.Thread(target=sigterm_load_client,
                                    args=(server.port, n, acked, sent))
                   for n in range(6)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(acked) >= 300)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
    delivered = [e["id"] for e in server.entries()]
    assert len(delivered) == len(set(delivered))
    assert set(delivered) == set(acked)
    assert "Traceback" not in server.stderr()
    rs.figure("SIGTERM under load: messages acknowledged before shutdown", len(acked))
    rs.figure("SIGTERM under load: messages in flight, not acknowledged, not delivered",
              len(set(sent) - set(acked)))
