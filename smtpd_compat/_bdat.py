"""CHUNKING (RFC 3030): the BDAT command and the reader of its chunks.

With the server setting ``chunking`` on, EHLO offers CHUNKING and a client
may send the message as ``BDAT <n>`` chunks instead of DATA.  Each command
is followed by exactly n octets of message, taken as they are (no
dot-stuffing, no line splitting), and answered once they have all arrived;
``BDAT <n> LAST`` ends the message and is answered as the end of DATA is.

Rules kept here, from RFC 3030 and from what went wrong elsewhere:

* The octets of a refused BDAT (no MAIL or RCPT yet, a bad end marker) are
  consumed all the same and never run as commands; the refusal is sent
  once they are.  Only a BDAT whose size cannot be read is answered 501
  and the connection closed: where its chunk ends is unknown.
* ``data_size_limit`` counts across chunks; the chunk that passes it is
  answered 552 and the transaction is over.  Octets beyond the limit are
  not kept.  A refused chunk ends the transaction too: "the transaction
  should be considered failed" (RFC 3030, section 2), and the BDATs a
  client pipelined after it are refused (503) and consumed in turn.
* DATA after BDAT in one transaction is refused (503); ``BODY=BINARYMIME``
  is neither offered nor accepted (MAIL answers it as any unknown BODY).
* ``process_message`` gets what DATA would have given for the same message
  (``_parsing.message_from_chunks``): bytes, or str with decode_data.
* A server that streams (``begin_message``, see ``_streaming``) gets the
  chunks' octets as they arrive, not dot-stuffed, with the same line ends
  as ``process_message`` would; the server never holds the message.
"""

import concurrent.futures
import logging
from typing import List, Optional

from . import _abuse, _extensions, _parsing, _policy, _replies, _streaming

logger = logging.getLogger("smtpd_compat")


def offered(channel) -> bool:
    """True if the channel's server has CHUNKING on (``chunking``, or ``modern``)."""
    return _extensions.offered(channel, _extensions.CHUNKING)


class ChunkedMessage:
    """One transaction's message as BDAT chunks bring it, and the chunk being read.

    The channel holds it (as ``_chunked``) from the first BDAT of a transaction
    to the transaction's end.
    """

    __slots__ = ("remaining", "reading", "last", "refusal", "started",
                 "chunks", "size", "oversized")

    def __init__(self) -> None:
        self.remaining = 0  # octets of the current chunk still to come
        self.reading = False  # a chunk's octets are being read (or awaited)
        self.last = False  # the current chunk ends the message
        self.refusal: Optional[str] = None  # the current chunk's reply if refused
        self.started = False  # a chunk of this transaction was accepted
        self.chunks: List[bytes] = []
        self.size = 0  # octets of message so far, kept or not
        self.oversized = False

    def consume(self, channel, buffer: bytes, position: int):
        """Take the chunk's octets from *buffer* (see ``_Transport._consume``)."""
        end = min(len(buffer), position + self.remaining)
        if end > position:
            self.remaining -= end - position
            if self.refusal is None:
                self.collect(channel, buffer[position:end])
            channel._touch()  # octets of a chunk are activity, lines or not
        return end, self.remaining == 0

    def collect(self, channel, data: bytes) -> None:
        """Keep *data*, the next octets of the message, within the size limit.

        A streamed message's octets go to its sink instead of being kept.
        """
        self.size += len(data)
        limit = channel.data_size_limit
        if limit and self.size > limit:
            self.oversized = True
            self.chunks = []
            _streaming.abort_stream(channel, _streaming.ABORT_SIZE)
        elif channel._data_stream is not None:
            channel._data_stream.write(data)
        else:
            self.chunks.append(data)


def command(channel, arg: Optional[str]) -> None:
    """``BDAT <arg>``: check it, then read its chunk; the reply comes after it."""
    if not offered(channel):
        channel.push(_replies.UNRECOGNIZED % {"command": "BDAT"})
        return
    parsed = _parsing.parse_bdat(arg)
    if parsed.size is None:
        channel.push(channel._syntax_error("BDAT"))
        channel.close_when_done()
        return
    message = channel._chunked
    if message is None:
        message = channel._chunked = ChunkedMessage()
    message.remaining, message.last = parsed.size, parsed.last
    message.reading = True
    message.refusal = _refusal(channel, parsed)
    if message.refusal is None and not message.started:
        answer = _policy.ask_all(channel, _policy.AT_DATA, ())
        if isinstance(answer, concurrent.futures.Future):
            # Input waits (the channel reads no chunk) until it is decided.
            channel._await_reply(answer, lambda done: _decided(channel, message, done))
            return
        message.refusal = _refusal_in(answer)
    _open(channel, message)
    if message.remaining == 0:
        chunk_done(channel, in_command=True)


def _open(channel, message: ChunkedMessage) -> None:
    """Ask a streaming server for its sink once the first chunk is accepted.

    A ``begin_message`` that raises refuses the chunk (451) after its octets
    are consumed: they must never be read as commands.
    """
    if message.refusal is None and not message.started:
        try:
            _streaming.open_stream(channel, stuffed=False)
        except Exception:
            logger.exception("begin_message failed for %r; answered 451",
                             getattr(channel, "peer", None))
            message.refusal = _replies.HANDLER_FAILED


def _refusal(channel, parsed: _parsing.BdatArguments) -> Optional[str]:
    """The reply that refuses this BDAT before its chunk is read; None if none does."""
    if not channel.seen_greeting:
        return _replies.SEND_HELO_FIRST
    if not channel.mailfrom:
        return _replies.NEED_MAIL
    if not channel.rcpttos:
        return _replies.NEED_RCPT
    if not parsed.well_formed:
        return channel._syntax_error("BDAT")
    return None


def _refusal_in(answer: Optional[str]) -> Optional[str]:
    """A DATA decision (see ``_policy``) as a refusal; None if it accepts."""
    if answer is None or _policy.accepts(answer):
        return None
    return answer


def _decided(channel, message: ChunkedMessage, done: concurrent.futures.Future) -> None:
    """The server's deferred DATA decision for the first chunk is in."""
    try:
        message.refusal = _refusal_in(done.result())
    except Exception:
        logger.exception("policy decision failed for %r; answered 451",
                         getattr(channel, "peer", None))
        message.refusal = _replies.HANDLER_FAILED
    _open(channel, message)
    if message.remaining == 0:
        chunk_done(channel)


def chunk_done(channel, in_command: bool = False) -> None:
    """Every octet of the current chunk is in: answer it.

    *in_command*: called while the BDAT command line is being run (an empty
    chunk), whose errors the channel counts itself.
    """
    message = channel._chunked
    message.reading = False
    if message.refusal is not None:
        _refuse_chunk(channel, message, count_error=not in_command)
        return
    message.started = True
    if message.oversized:
        _end_message(channel, message, _replies.TOO_MUCH_DATA)
    elif not message.last:
        channel.push(_replies.CHUNK_RECEIVED % {"size": message.size})
    elif channel._data_stream is not None:
        channel._settle_message(_streaming.end_stream(channel))
    else:
        _deliver(channel, b"".join(message.chunks))


def _refuse_chunk(channel, message: ChunkedMessage, count_error: bool) -> None:
    reply = message.refusal
    if message.started:
        channel._set_post_data_state()  # the transaction failed with it
    else:
        del channel._chunked
    _policy.send(channel, reply)  # '' (a hook's CLOSE) closes, as a 421 does
    # Counted as its command line would have been, had the reply come at once.
    if count_error and _abuse.counts_as_error(reply) and not channel._quitting:
        channel._count_error()


def _end_message(channel, message: ChunkedMessage, reply: str) -> None:
    """Refuse the message: answered as its last chunk would be, then reset."""
    if message.last:
        channel._refuse_message(reply)
    else:
        channel._set_post_data_state()
        channel.push(reply)


def _deliver(channel, data) -> None:
    if channel._decode_data:
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            channel._refuse_message(_replies.UNDECODABLE_DATA)
            return
    channel._deliver_message(_parsing.message_from_chunks(data))
