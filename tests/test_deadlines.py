"""The deadline rules of smtpd_compat._deadlines, without a server.

``completes_data_line`` is fed whole chunks, byte by byte and with trailing
data; ``input_waiting`` looks at a real socket pair.
"""

import socket

import pytest

from smtpd_compat import _deadlines


@pytest.mark.parametrize("deadline, now, result", [
    (None, 1e9, False),
    (10.0, 9.0, False),
    (10.0, 10.0, False),
    (10.0, 10.5, True),
], ids=["none", "before", "at", "after"])
def test_expired(deadline, now, result):
    assert _deadlines.expired(deadline, now) is result


@pytest.mark.parametrize("tail, data, result", [
    (b"", b"a line\r\n", True),
    (b"", b"\r\n", True),
    (b"x", b"half a line", False),
    (b"", b"\n", False),
    (b"", b"\n\n\n\n", False),
    (b"x", b"bare\nLF\n", False),
    (b"\r", b"\n", True),
    (b"\r", b"\nmore", True),
    (b"", b"\r", False),
    (b"\n", b"\r", False),
    (b"", b"\rx\n", False),
    (b"", b"two\r\nlines\r\nand a half", True),
], ids=["line", "empty-line", "partial", "bare-lf", "lf-trickle", "bare-lf-lines",
        "crlf-split", "crlf-split-trailing", "cr-alone", "lf-then-cr", "cr-x-lf",
        "trailing-data"])
def test_completes_data_line(tail, data, result):
    assert _deadlines.completes_data_line(tail, data) is result


def _progress_fed_in_pieces(stream, size):
    """How many pieces of *stream*, cut every *size* bytes, complete a line."""
    buffered = b""
    progress = 0
    for start in range(0, len(stream), size):
        piece = stream[start:start + size]
        progress += _deadlines.completes_data_line(buffered[-1:], piece)
        buffered += piece
    return progress


@pytest.mark.parametrize("size, pieces_with_progress", [(1, 4), (2, 4), (3, 3), (1000, 1)],
                         ids=["bytes", "pairs", "triples", "whole"])
def test_every_crlf_counts_however_the_input_is_cut(size, pieces_with_progress):
    # Pieces of two: "on" "e\r" "\nt" "wo" "\r\n" "\r\n" "th" "re" "e\r" "\n".
    stream = b"one\r\ntwo\r\n\r\nthree\r\n"
    assert _progress_fed_in_pieces(stream, size) == pieces_with_progress


def test_lf_trickle_byte_by_byte_is_no_progress():
    assert _progress_fed_in_pieces(b"\n" * 50, 1) == 0


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    left.setblocking(False)
    yield left, right
    left.close()
    right.close()


def test_input_waiting_sees_data_without_taking_it(pair):
    left, right = pair
    assert not _deadlines.input_waiting(left)
    right.sendall(b"NOOP\r\n")
    assert _deadlines.input_waiting(left)
    assert _deadlines.input_waiting(left)
    assert left.recv(100) == b"NOOP\r\n"
    assert not _deadlines.input_waiting(left)


def test_input_waiting_sees_the_end_of_input(pair):
    left, right = pair
    right.close()
    assert _deadlines.input_waiting(left)


def test_input_waiting_on_something_that_is_not_a_socket():
    assert not _deadlines.input_waiting(object())
