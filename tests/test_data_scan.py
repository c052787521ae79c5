"""The search for DATA's end that also notes dot-stuffed lines (find_data_end).

The pure function is fed whole, byte by byte and with data after the end,
the way the transport feeds it (a possible start of the end kept for the
next read); then real sessions check that process_message gets exactly
smtpd's bytes whatever the splits.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpd_compat import _parsing
from smtpd_compat._transport import _partial_terminator_length

END = b"\r\n.\r\n"


def _scan(pieces):
    """Feed *pieces* as reads: (the message before the end, stuffed seen, the rest)."""
    buffer, collected, stuffed = b"", [], False
    for number, piece in enumerate(pieces):
        buffer += piece
        index, seen = _parsing.find_data_end(buffer)
        stuffed = stuffed or seen
        if index >= 0:
            collected.append(buffer[:index])
            rest = buffer[index + len(END):] + b"".join(pieces[number + 1:])
            return b"".join(collected), stuffed, rest
        keep = _partial_terminator_length(buffer, END)
        collected.append(buffer[:len(buffer) - keep])
        buffer = buffer[len(buffer) - keep:]
    return None, stuffed, buffer


@pytest.mark.parametrize("buffer, expected", [
    (b"", (-1, False)),
    (b"abc\r\ndef", (-1, False)),
    (b"a\r\n.\r\n", (1, False)),
    (b"a\r\n..b\r\n.\r\n", (1 + 5, True)),
    (b"a\r\n.b", (-1, True)),
    (b"a\r\n.", (-1, False)),
    (b"a\r\n.\r", (-1, False)),
    (b"a\r\n.\n", (-1, True)),
    (b"a\r\n.\rx", (-1, True)),
    (b"\r\n.x\r\n.\r\nMAIL", (4, True)),
    (b"a\n.\r\n", (-1, False)),
], ids=["empty", "no-dot", "end", "stuffed-then-end", "stuffed", "maybe-end",
        "maybe-end-cr", "dot-lf", "dot-cr-x", "trailing-command", "bare-lf-dot"])
def test_find_data_end_examples(buffer, expected):
    assert _parsing.find_data_end(buffer) == expected


def test_find_data_end_from_start():
    assert _parsing.find_data_end(b"\r\n.x\r\n.\r\n", 1) == (4, False)


BODY_PARTS = st.lists(st.sampled_from([b"\r\n", b".", b"\r", b"\n", b"a", b".."]), max_size=25)


@given(BODY_PARTS, st.integers(min_value=1, max_value=7))
def test_scan_in_pieces_matches_a_whole_search(parts, size):
    # The DATA line's CRLF comes before the body: the scan starts at a line start.
    stream = b"\r\n" + b"".join(parts) + END + b"NOOP\r\n"
    end = stream.find(END)
    expected_stuffed = b"\r\n." in stream[:end]
    for pieces in ([stream], [stream[i:i + 1] for i in range(len(stream))],
                   [stream[i:i + size] for i in range(0, len(stream), size)]):
        message, stuffed, rest = _scan(pieces)
        assert message == stream[:end]
        assert rest == stream[end + len(END):]
        # Exactly: a miss would leave dots in, a false alarm cost a pass.
        assert stuffed == expected_stuffed


@given(BODY_PARTS)
def test_unstuff_without_stuffed_lines_is_the_same(parts):
    data = b"".join(parts)
    if b"\r\n." not in data:
        assert _parsing.unstuff(data, stuffed=False) == _parsing.unstuff(data)


@pytest.fixture
def session(make_session):
    return make_session()


MESSAGES = [
    b"plain\r\nlines\r\n",
    b"..first\r\nsecond\r\n",
    b"a\r\n..b\r\nc\r\n",
    b"a\r\n.\r\r\nb\r\n",
    b"a\r\n.\nb\r\n.x\r\n",
    b"bare\nlf\rcr\r\n...\r\n",
]


@pytest.mark.parametrize("message", MESSAGES)
@pytest.mark.parametrize("split", [None, 1, 2, 3, 5])
@pytest.mark.parametrize("decode", [False, True])
def test_delivered_message_is_smtpd_s_whatever_the_reads(make_session, message, split,
                                                           decode):
    session = make_session(decode_data=decode)
    session.send(b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", replies=4)
    assert session.send(message + b".\r\nNOOP\r\n", replies=2, split=split) == (
        b"250 OK\r\n250 OK\r\n")
    lines = [line[1:] if line[:1] == b"." else line
             for line in message[:-2].split(b"\r\n")]
    expected = b"\n".join(lines)
    assert session.server.messages[0][2] == (expected.decode() if decode else expected)


# Enough dots to pass _DOTS_TRIED, where the search changes its way.
DOTTY = st.lists(st.sampled_from([b"\r\n", b".", b"\r", b"\n", b"a", b"\r\n."]), max_size=40)


@given(DOTTY, st.integers(min_value=0, max_value=12))
def test_line_dot_search_is_find(parts, start):
    buffer = b"".join(parts)
    assert _parsing.find_line_dot(buffer, start) == buffer.find(b"\r\n.", start)


def test_line_dot_search_past_the_dots_it_tries_one_by_one():
    dots = b"a." * (_parsing._DOTS_TRIED + 3)
    for buffer in (dots + b"\r\n.x", dots + b"x", b"\r\n." + dots, dots + b"\r\n"):
        assert _parsing.find_line_dot(buffer, 0) == buffer.find(b"\r\n.")


@given(st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b"a", b"\r\r\n", b"\r\n\r"]),
                max_size=30))
def test_crlf_to_lf_is_replace(parts):
    data = b"".join(parts)
    assert _parsing.crlf_to_lf(data) == data.replace(b"\r\n", b"\n")
    assert _parsing.crlf_to_lf(data.decode()) == data.decode().replace("\r\n", "\n")


@pytest.mark.parametrize("data, expected", [
    (b"a\r\nb\r\n", b"a\nb\n"),
    (b"a\rb\r\n", b"a\rb\n"),
    (b"a\r\n\r", b"a\n\r"),
    (b"\r\r\n", b"\r\n"),
    (b"a\nb", b"a\nb"),
], ids=["crlf", "bare-cr-kept", "cr-at-end-kept", "cr-before-crlf", "bare-lf-kept"])
def test_crlf_to_lf_examples(data, expected):
    assert _parsing.crlf_to_lf(data) == expected
