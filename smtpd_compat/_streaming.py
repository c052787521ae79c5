"""Streaming delivery: the message handed to a sink piece by piece as it arrives.

A server opts in by defining ``begin_message``: once the client's DATA is
accepted, the channel calls it with the envelope, and the object it
returns (a :class:`MessageSink`) receives the message as it arrives,
dot-unstuffed (:class:`Unstuffer`), instead of the whole message in
``process_message``.  The server never holds the message: memory stays
flat whatever its size.

The channel's seam is one attribute, ``_data_stream`` (None unless a
message is being streamed), and the three functions :func:`open_stream`,
:func:`end_stream` and :func:`abort_stream`.  A reader of BDAT chunks can
use them as they are, with ``stuffed=False``: BDAT data is not dot-stuffed.
"""

import logging
import traceback

from . import _replies
from ._keywords import for_process_message
from ._namespace import debug
from ._parsing import crlf_to_lf, find_line_dot

logger = logging.getLogger("smtpd_compat")

# Why a streamed message was abandoned (the argument of MessageSink.abort).
ABORT_RESET = "reset"        # the transaction was reset (RSET, a new HELO/EHLO)
ABORT_SIZE = "size"          # the message grew past data_size_limit
ABORT_CLOSED = "closed"      # the connection closed (the client left, QUIT, shutdown)
ABORT_TIMEOUT = "timeout"    # the client was idle too long
ABORT_FAILED = "failed"      # the sink's own write raised

_CR, _LF, _CRLF, _DOT = b"\r", b"\n", b"\r\n", b"."


class Unstuffer:
    """Undo dot-stuffing and turn CRLF into LF, for a message that comes in pieces.

    Feeding the pieces of a message to :meth:`feed` and then calling
    :meth:`finish` gives, joined, exactly what ``_parsing.unstuff`` gives
    for the whole message, wherever the pieces are split: a CR at the end
    of a piece is held back until the next byte tells whether it ends a
    line, and a line start is remembered across the border.  With
    ``stuffed=False`` (BDAT) the pieces joined give what
    ``_parsing.message_from_chunks`` gives: the line ends are converted,
    nothing is unstuffed, and the CRLF that ends the message is dropped (an
    LF made of a CRLF is held back until more text follows it).
    """

    __slots__ = ("_stuffed", "_line_start", "_held_cr", "_held_lf")

    def __init__(self, stuffed: bool = True) -> None:
        self._stuffed = stuffed
        self._line_start = True  # the message starts at the start of a line
        self._held_cr = False
        self._held_lf = False  # (unstuffed only) a CRLF that may end the message

    def feed(self, piece: bytes) -> bytes:
        """The unstuffed text of *piece*, as far as it can be told yet."""
        text = _CR + piece if self._held_cr else piece
        self._held_cr = text.endswith(_CR)
        if self._held_cr:
            text = text[:-1]
        if not text:
            return b""  # nothing, or a CR held back: the next text starts with it
        if self._stuffed and self._line_start and text.startswith(_DOT):
            text = text[1:]
        self._line_start = text.endswith(_CRLF)
        if self._stuffed:
            if find_line_dot(text, 0) >= 0:  # (a memchr search where dots are rare)
                text = text.replace(_CRLF + _DOT, _CRLF)
            return crlf_to_lf(text)
        text = crlf_to_lf(text)
        if self._held_lf:
            text = _LF + text
        self._held_lf = self._line_start
        return text[:-1] if self._line_start else text

    def finish(self) -> bytes:
        """What is still held back at the end of the message (a lone CR, or nothing).

        A held-back CRLF (``stuffed=False``) is dropped if it ends the message.
        """
        held_cr, held_lf = self._held_cr, self._held_lf
        self._held_cr = self._held_lf = False
        if not held_cr:
            return b""
        return _LF + _CR if held_lf else _CR


class MessageSink:
    """What ``begin_message`` returns: the receiver of one streamed message.

    Subclassing it is optional; any object with these three methods will
    do.  Each method is called on the server's event loop thread: a method
    that blocks stalls every client, so slow work belongs in a thread (the
    ready-made servers spool to a file and deliver in a worker).

    Exactly one of :meth:`end` and :meth:`abort` is called, once.
    """

    def write(self, data: bytes) -> None:
        """Take the next piece of the message.

        *data* is dot-unstuffed with LF line ends: all pieces joined are the
        *data* ``process_message`` would have been given.  A piece may be
        empty and may end in the middle of a line.  If this raises, the
        sink is aborted (reason ``"failed"``), the rest of the message is
        read and dropped, and the client gets a 451 after it.
        """

    def end(self):
        """The message is complete: deliver it and return the reply.

        The value is read as ``process_message``'s: None for "250 OK", a
        reply line or lines, an int code, or a ``concurrent.futures.Future``
        of one of those for a decision that takes time (the client waits,
        other clients are served).  An exception answers 451.
        """
        return None

    def abort(self, reason: str) -> None:
        """The message will not be completed: drop what was written.

        *reason* is ``"reset"``, ``"size"`` (past ``data_size_limit``; the
        client gets a 552 after its data), ``"closed"`` (the client left or
        the server shut down), ``"timeout"`` or ``"failed"`` (:meth:`write`
        raised).  Nothing of an aborted message may be delivered.
        """


MessageSink.__module__ = "smtpd_compat.delivery"


class DataStream:
    """One message streamed from a channel into a sink."""

    __slots__ = ("sink", "_unstuffer", "_failed")

    def __init__(self, sink, stuffed: bool = True) -> None:
        self.sink = sink
        self._unstuffer = Unstuffer(stuffed)
        self._failed = False

    def write(self, piece: bytes) -> None:
        """Unstuff *piece* and hand it to the sink; a failing sink is aborted once."""
        if self._failed:
            return
        data = self._unstuffer.feed(piece)
        if data:
            self._hand(data)

    def _hand(self, data: bytes) -> None:
        try:
            self.sink.write(data)
        except Exception:
            self._failed = True
            _log_failure("the streaming sink's write failed")
            self._abort(ABORT_FAILED)

    def end(self):
        """Finish the message; return the sink's answer (451 if it failed)."""
        rest = self._unstuffer.finish()
        if rest and not self._failed:
            self._hand(rest)
        if self._failed:
            return _replies.HANDLER_FAILED
        return self.sink.end()

    def abort(self, reason: str) -> None:
        """Tell the sink the message is abandoned (not again after a failed write)."""
        if not self._failed:
            self._abort(reason)

    def _abort(self, reason: str) -> None:
        try:
            self.sink.abort(reason)
        except Exception:
            _log_failure("the streaming sink's abort failed")


# -- the channel's seam --------------------------------------------------------


def open_stream(channel, stuffed: bool = True) -> None:
    """Start streaming the channel's message if its server wants it streamed.

    Called when the message data is about to begin: asks the server's
    ``begin_message`` (if it has one) for a sink, passing the keyword
    arguments ``process_message`` would get; None from it means this
    message goes to ``process_message`` as usual.  Text mode
    (``decode_data=True``) never streams.
    """
    begin = getattr(channel.smtp_server, "begin_message", None)
    if begin is None or channel._decode_data:
        return
    sink = begin(channel.peer, channel.mailfrom, list(channel.rcpttos),
                 **for_process_message(begin, channel))
    if sink is not None:
        channel._data_stream = DataStream(sink, stuffed)


def end_stream(channel):
    """The streamed message is complete: the sink's answer (see MessageSink.end)."""
    stream, channel._data_stream = channel._data_stream, None
    return stream.end()


def abort_stream(channel, reason: str) -> None:
    """Abandon the channel's streamed message, if one is under way."""
    stream, channel._data_stream = channel._data_stream, None
    if stream is not None:
        debug("Streamed message aborted (%s):" % reason, repr(getattr(channel, "peer", None)))
        stream.abort(reason)


def _log_failure(what: str) -> None:
    logger.exception("%s", what)
    debug("%s\n%s" % (what, traceback.format_exc()))
