"""Property-based protocol fuzzing of a live server (the real CLI in a subprocess).

Hypothesis throws three kinds of input at ``python -m smtpd_compat``: command
sequences built from a grammar of valid, hostile and mutated SMTP commands
(with DATA blocks), valid sessions with random byte mutations, and raw random
bytes.  Every input is cut into TCP writes at random points.  After each
exchange the test checks that:

* every reply line is a well-formed SMTP reply (``^[2-5]dd[ -]...CRLF``),
  multi-line replies keep one code, and the session either answers a final
  marker command or was closed right after ``221 Bye`` (or the 221 of a
  non-SMTP command, or the 421 of too many errors);
* the server still accepts a new connection and a normal transaction on it
  is delivered intact;
* the server process is alive and has written no traceback.

Three servers are fuzzed: bytes mode (the default), SMTPUTF8 and decode_data.
"""

import itertools
import re
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from . import robust_support as rs  # tests/ is a package
except ImportError:
    import robust_support as rs  # tests/ is on sys.path (rootdir-less import)

pytestmark = pytest.mark.timeout(600)

EXAMPLES = 300  # per strategy and server: ~2,700 sessions in all
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])
SIZE_LIMIT = 4096

SERVERS = {
    "bytes": ([], {}),
    "smtputf8": (["-u"], {}),
    "decode_data": ([], {"ROBUST_DECODE_DATA": "1"}),
}

# What the sink answers to a delivered message: no other reply looks like it.
DELIVERED = b"250 Delivered\r\n"

TOTALS = {"sessions": 0, "bytes": 0, "writes": 0, "messages_checked": 0, "fuzz_messages": 0}
_marker_numbers = itertools.count()
QUIT_LINE = re.compile(rb"(?i)(?:^|\n)quit(?:[ \r\n]|$)")
# The replies after which the server closes a session on its own: QUIT's,
# Postfix's answer to an HTTP request or header line, and the error limit's.
SESSION_END = re.compile(rb"221 Bye\r\n|221 2\.7\.0 Error: I can break rules, too\. Goodbye\.\r\n"
                         rb"|421 4\.7\.0 \S+ Error: too many errors\r\n")


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(request, tmp_path_factory):
    args, env = SERVERS[request.param]
    env = dict(env, ROBUST_NO_MARKERS="1", ROBUST_REPLY=DELIVERED.decode().strip())
    workdir = tmp_path_factory.mktemp("fuzz-" + request.param)
    with rs.CliServer(workdir, "-s", str(SIZE_LIMIT), *args, env=env) as srv:
        yield srv
        srv.assert_healthy()
        assert srv.stop() == 0, srv.stderr()
    assert "Traceback" not in srv.stderr(), srv.stderr()


@pytest.fixture(scope="module", autouse=True)
def print_totals():
    yield
    rs.figure("fuzz sessions (random inputs tried)", TOTALS["sessions"])
    rs.figure("fuzz bytes sent", TOTALS["bytes"])
    rs.figure("fuzz TCP writes", TOTALS["writes"])
    rs.figure("fuzz follow-up transactions verified", TOTALS["messages_checked"])
    rs.figure("fuzz messages delivered, each acknowledged once", TOTALS["fuzz_messages"])


# -- the grammar ----------------------------------------------------------------

VERBS = ["HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY",
         "EXPN", "HELP"]
# Look-alikes: non-ASCII verbs that Unicode case mapping would turn into real ones.
LOOKALIKE_VERBS = ["QU\u0131T", "\u0131elo", "R\u017fET", "\u017fIZE", "\u00c9HLO",
                   "NOOP\u00a0", "da\u0131a", "\uff2e\uff2f\uff2f\uff30"]

ADDRESSES = ["<a@example.com>", "<>", "a@example.com", "<<a@b>>", "<", ">", "<a@@b>",
             "@", "x@y@z", "<@>", "(", "< >", "<a@b.>", "<@r1,@r2:a@b>", "<a(x)@b>",
             '<"a b"@c>', "<caf\u00e9@example.com>", "<a\r@b>", "<a\n@b>",
             "<" + "x" * 600 + "@b>", "<a@" + "b" * 300 + ">"]
PARAMS = ["", " SIZE=10", " SIZE=999999999", " SIZE", " SIZE=", " SIZE=\u00b2",
          " SIZE=\u0661\u0660", " BODY=8BITMIME", " BODY=7BIT", " BODY=BINARY", " SMTPUTF8",
          " SMTPUTF8=yes", " FOO=bar", " =x", " SIZE=1 SIZE=2", " NOTIFY=NEVER"]
KEYWORDS = ["FROM:", "TO:", "from:", "To:", "FROM: ", "FROM:\t", "", "TO:FROM:"]

text_arg = st.text(max_size=40)
address_arg = st.builds(lambda k, a, p: k + a + p, st.sampled_from(KEYWORDS),
                        st.sampled_from(ADDRESSES) | text_arg, st.sampled_from(PARAMS))
verb = (st.sampled_from(VERBS) | st.sampled_from(VERBS).map(str.lower)
        | st.sampled_from(LOOKALIKE_VERBS) | st.text(min_size=1, max_size=8))
argument = st.none() | address_arg | text_arg | st.sampled_from(["x" * 700, " ", "\t"])
line_end = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"", b"\r\r\n", b"\n\r"])


@st.composite
def command_line(draw):
    v, arg, end = draw(verb), draw(argument), draw(line_end)
    text = v if arg is None else v + " " + arg
    encoded = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()) and draw(st.booleans()):
        # Latin-1 instead of UTF-8: undecodable as soon as it is not ASCII.
        encoded = text.encode("latin-1", "replace")
    return encoded + end


data_line = (st.binary(max_size=60) | st.sampled_from(
    [b".", b"..", b".x", b"Subject: caf\xc3\xa9", b"\xff\xfe", b"\xc3", b"x" * 1200]))


@st.composite
def data_block(draw):
    """DATA, some lines, usually the end-of-data line."""
    lines = draw(st.lists(data_line, max_size=6))
    body = b"".join(line + draw(line_end) for line in lines)
    end = draw(st.sampled_from([b".\r\n", b".\r\n", b"\r\n.\r\n", b"", b".\n"]))
    return b"DATA\r\n" + body + end


@st.composite
def transaction(draw):
    """A whole valid transaction, so deliveries happen in all kinds of places."""
    recipients = draw(st.integers(1, 3))
    lines = draw(st.lists(data_line.filter(lambda line: b"\n" not in line), max_size=4))
    return (b"MAIL FROM:<f@example.com>\r\n" + b"RCPT TO:<r@example.com>\r\n" * recipients
            + b"DATA\r\n" + rs.wire_data(lines))


raw_chunk = st.binary(min_size=1, max_size=200)
whole_commands = st.sampled_from([b"QUIT\r\n", b"RSET\r\n", b"EHLO e\r\n", b"HELO h\r\n",
                                  b"NOOP\r\n", b"DATA\r\n", b".\r\n"])
session_parts = st.lists(command_line() | data_block() | raw_chunk | transaction()
                         | whole_commands, max_size=14)

VALID_SESSION = (b"EHLO fuzz.example\r\nMAIL FROM:<a@example.com> SIZE=20\r\n"
                 b"RCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"
                 b"Subject: t\r\n\r\nbody\r\n..stuffed\r\n.\r\nVRFY <x@y>\r\nHELP MAIL\r\n"
                 b"NOOP\r\nRSET\r\nHELO again\r\nMAIL FROM:<>\r\nRCPT TO:<z@z>\r\n"
                 b"DATA\r\n.\r\n")


@st.composite
def mutated_session(draw):
    """The valid session above with random byte insertions, deletions and flips."""
    data = bytearray(VALID_SESSION)
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        if operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del data[position:position + draw(st.integers(1, 20))]
        elif operation == "replace" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif operation == "duplicate":
            data[position:position] = data[position:position + draw(st.integers(1, 40))]
    return bytes(data)


# -- the checks ---------------------------------------------------------------------


def split_at(payload, points):
    cuts = sorted(set(p for p in points if 0 < p < len(payload)))
    return [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]


def exchange(server, chunks, pauses):
    """Send *chunks* on a new connection, then a marker; return the reply lines."""
    marker = b"XSYNC%d" % next(_marker_numbers)
    tail = b"\r\n.\r\n" + marker + b"\r\n"
    closed = False
    with rs.Client(server.port, timeout=15) as client:
        try:
            for chunk, pause in zip(chunks, pauses):
                client.send(chunk)
                if pause:
                    # Give the server time to read this piece on its own.
                    time.sleep(0.001)
            client.send(tail)
        except (BrokenPipeError, ConnectionResetError):
            closed = True  # the input held a QUIT: the server may be gone already
        TOTALS["writes"] += len(chunks) + 1
        TOTALS["bytes"] += sum(map(len, chunks)) + len(tail)
        try:
            while marker not in client.line():
                pass
        except rs.ServerClosed as e:
            assert not e.partial, e
            closed = True
        except ConnectionResetError:
            # After QUIT the server closes with our later input unread, so the
            # kernel may send a reset, and a reset can destroy the 221 reply
            # that was already on its way: only then is a missing 221 fine.
            assert (QUIT_LINE.search(b"".join(chunks))
                    or any(SESSION_END.fullmatch(line) for line in client.lines)), client.lines
            return client.lines
        if closed:
            # Only QUIT, a non-SMTP command or too many errors end a session
            # here; the close must follow the reply that says so.
            assert client.lines and SESSION_END.fullmatch(client.lines[-1]), client.lines
    return client.lines


def check_replies(lines):
    rs.check_reply_lines(lines)
    code = None
    for line in lines:
        # A multi-line reply keeps one code on every line (RFC 5321, 4.2.1).
        if code is not None:
            assert line[:3] == code, lines
        code = line[:3] if line[3:4] == b"-" else None
    assert code is None, "reply ends in a continuation line: %r" % lines


def check_server(server):
    """New connections work, a normal message arrives intact, no crash."""
    TOTALS["sessions"] += 1
    ident = "check-%d" % TOTALS["sessions"]
    data = rs.normal_transaction(server.port, ident)
    last = server.entries()[-1]
    assert last["id"] == ident and last["sha256"] == rs.sha256(data), last
    TOTALS["messages_checked"] += 1
    server.assert_healthy()


def run(server, payload, points, pauses):
    chunks = split_at(payload, points)
    before = server.journal_length()
    lines = exchange(server, chunks, pauses + [False] * len(chunks))
    check_replies(lines)
    check_server(server)  # also waits until the server is done with that input
    delivered = server.journal_length() - before - 1
    # Every message handed to process_message was acknowledged, and only those
    # (nothing delivered after QUIT or after a 552, nothing acknowledged twice).
    assert delivered == lines.count(DELIVERED), lines
    TOTALS["fuzz_messages"] += delivered


split_points = st.lists(st.integers(min_value=0, max_value=4000), max_size=10)
pause_flags = st.lists(st.booleans(), max_size=10)


@FUZZ_SETTINGS
@given(parts=session_parts, points=split_points, pauses=pause_flags)
def test_grammar_sessions(server, parts, points, pauses):
    payload = b"".join(parts)
    run(server, payload, [p % (len(payload) + 1) for p in points], pauses)


@FUZZ_SETTINGS
@given(payload=mutated_session(), points=split_points, pauses=pause_flags)
def test_mutated_sessions(server, payload, points, pauses):
    run(server, payload, [p % (len(payload) + 1) for p in points], pauses)


@FUZZ_SETTINGS
@given(payload=st.binary(max_size=3000), points=split_points, pauses=pause_flags)
def test_raw_bytes(server, payload, points, pauses):
    run(server, payload, [p % (len(payload) + 1) for p in points], pauses)


def test_byte_by_byte_session(server):
    """The valid session, one byte per TCP write, gets the same replies as whole."""
    whole = exchange(server, [VALID_SESSION], [False])
    bytewise = exchange(server, [bytes([b]) for b in VALID_SESSION], [False] * len(VALID_SESSION))
    strip = [line for line in whole if b"XSYNC" not in line]
    assert strip == [line for line in bytewise if b"XSYNC" not in line]
    check_replies(whole)
    assert sum(line.startswith(b"250 OK") for line in whole) >= 6, whole
    assert whole.count(DELIVERED) == 2, whole
    check_server(server)


def test_server_accepts_after_abrupt_disconnects(server):
    """Clients that reset the connection mid-command or mid-DATA harm nothing."""
    for cut in (b"EHL", b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhalf a mes"):
        client = rs.Client(server.port)
        client.send(cut)
        client.abort()
    sock = socket.create_connection((rs.HOST, server.port))
    sock.close()  # connect and leave at once, before the greeting
    check_server(server)
