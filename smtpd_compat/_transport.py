"""Bytes in and out of one client socket, below the SMTP dialect.

``_Transport`` is the base of ``SMTPChannel``: it splits buffered input at
the terminator, pauses reading while a reply is pending or too many replies
wait to be sent, batches queued replies into few ``send()`` calls, lingers
after the last reply so a reset cannot destroy it, and keeps the idle
deadline.  With TLS (see ``_tls``) the same socket is wrapped in place and
its bytes go through the TLS layer.  What the bytes mean (commands, DATA, the replies' text) is the
channel's business: it supplies ``found_terminator``, ``_time_out``,
``_late_reply`` and ``_note_input``.
"""

import concurrent.futures
import functools
import socket as _stdlib_socket
import time
from typing import Any, Callable, Optional

from . import _deadlines, _tls
from ._asyncore import asynchat
from ._loop import interest_changed
from ._namespace import debug
from ._wakeup import waker_for

# Reading stops while more replies than this wait to be sent (a client that
# pipelines commands and never reads cannot make the server queue replies
# without bound).
OUTPUT_BACKLOG_LIMIT = 256

# Seconds a closing channel waits for the client to close its side (see
# _start_lingering) before it closes the socket anyway.
LINGER_TIMEOUT = 2.0


class _Transport(asynchat.async_chat):
    """Input splitting, backpressure, lingering and deadlines for one connection.

    Per-connection state has its usual value here, on the class (see
    ``SMTPChannel``'s note on instance dict sizes).
    """

    _quitting = False
    _input_ended = False  # the client closed its side
    _linger_deadline: Optional[float] = None
    _closing_deadline: Optional[float] = None  # see _deadlines.CLOSING_TIMEOUT
    _handler_failed = False
    _pending_reply: Optional[concurrent.futures.Future] = None
    _deadline: Optional[float] = None
    # What reads input before the session starts (see _readers); None: the
    # session's own splitting, from the first byte.
    _input_reader: Optional[Callable[[Any, bytes], None]] = None
    # The TLS layer (see _tls): None while the connection is plaintext.
    _tls_layer: Optional[_tls.TLSLayer] = None
    # Set by the dialect when input already buffered must not run (see
    # _cut_input); checked before each further line.
    _cut_pending = False
    # True while buffered input is run with replies held back, so that the
    # replies to a pipelined group leave together (see _holds_replies).
    _holding_replies = False

    # -- output ------------------------------------------------------------

    def _push_bytes(self, data: bytes) -> None:
        """Queue *data*; also from outside this channel's own events."""
        if self._holding_replies:
            self.producer_fifo.append(data)  # sent when the input is run
        else:
            asynchat.async_chat.push(self, data)
        interest_changed(self)

    def close_when_done(self):
        """Close once every queued reply is sent; read and run nothing more."""
        self._quitting = True
        if self._closing_deadline is None:
            self._closing_deadline = time.monotonic() + _deadlines.CLOSING_TIMEOUT
        self.ac_in_buffer = b""
        asynchat.async_chat.close_when_done(self)
        interest_changed(self)

    def handle_close(self):
        if (self._quitting and self._linger_deadline is None and self.connected
                and not self.producer_fifo):
            self._start_lingering()
        else:
            self.close()

    def _start_lingering(self) -> None:
        """Every reply is sent: half-close, then drop input until the client closes.

        Closing a socket that still has unread input (a client that sent more
        after QUIT) makes the kernel send a reset, and a reset can destroy
        replies the client has not read yet: the 221, or the 250 of a message
        it pipelined before QUIT, which it would then send again.
        """
        self._linger_deadline = time.monotonic() + LINGER_TIMEOUT
        # SSLSocket.shutdown() drops TLS without a word: say goodbye first.
        _tls.send_close_notify(self)
        try:
            self.socket.shutdown(_stdlib_socket.SHUT_WR)
        except (OSError, AttributeError):  # gone already, or not a real socket
            self.close()
            return
        if self._input_ended:
            self.close()

    def _output_backlogged(self) -> bool:
        return len(self.producer_fifo) > OUTPUT_BACKLOG_LIMIT

    def initiate_send(self):
        """Send queued replies, several per ``send()`` when they are waiting.

        asynchat sends one queued item per call, so replies that piled up
        while the client was not reading would drain one per write event.
        """
        fifo = self.producer_fifo
        if len(fifo) > 1 and type(fifo[0]) is bytes and type(fifo[1]) is bytes:
            batch = [fifo.popleft()]
            size = len(batch[0])
            while fifo and type(fifo[0]) is bytes and size < self.ac_out_buffer_size:
                size += len(fifo[0])
                batch.append(fifo.popleft())
            fifo.appendleft(b"".join(batch))
        asynchat.async_chat.initiate_send(self)
        tls = self._tls_layer
        if tls is not None and tls.phase is _tls.Phase.SWITCHING and not self.producer_fifo:
            _tls.wrap(self)  # the 220 to STARTTLS is sent: the ClientHello comes next

    def writable(self):
        tls = self._tls_layer
        if tls is not None and tls.handshaking:
            return tls.want_write
        return asynchat.async_chat.writable(self)

    def handle_write(self):
        if self._tls_layer is not None and self._tls_layer.handshaking:
            _tls.step(self)
            return
        asynchat.async_chat.handle_write(self)
        if self.ac_in_buffer and not self._output_backlogged():
            self._process_input()

    # -- input -------------------------------------------------------------

    def readable(self):
        if self._tls_layer is not None and not self._tls_layer.established:
            return _tls.readable(self)
        if self._quitting:
            now = time.monotonic()
            if (_deadlines.expired(self._linger_deadline, now)
                    or _deadlines.expired(self._closing_deadline, now)):
                self.close()
                return False
            return not self._input_ended  # read, to drop it (see _start_lingering)
        if self._pending_reply is not None:
            # Read on without running anything, to notice a client that
            # leaves before its reply is ready (handle_close then closes).
            return len(self.ac_in_buffer) < _deadlines.PENDING_INPUT_LIMIT
        backlogged = self._output_backlogged()
        # Input that arrived while the loop was busy elsewhere is read
        # before the idle deadline is judged.
        if self._idle_expired() and (
                backlogged or not _deadlines.input_waiting(self.socket)):
            if self._input_reader is not None:
                self._input_reader.timed_out(self)
            else:
                self._time_out()
            return False
        return not backlogged

    def handle_read(self):
        if self._tls_layer is not None and not self._tls_layer.established:
            if self._tls_layer.handshaking:
                _tls.step(self)
            return
        if self._quitting:
            self._discard_input()
            return
        size = self.ac_in_buffer_size
        read_limit = getattr(self._input_reader, "read_limit", None)
        if read_limit is not None:
            size = read_limit(self.socket, size)
        try:
            data = self.recv(size)
        except BlockingIOError:
            return
        except OSError:
            self.handle_error()
            return
        if not data or self._quitting:
            return
        if self._input_reader is not None:
            self._input_reader(self, data)
            return
        self._note_input(data)
        self.ac_in_buffer += data
        self._process_input()

    def recv(self, buffer_size):
        if self._tls_layer is None:
            return asynchat.async_chat.recv(self, buffer_size)
        return _tls.recv(self, buffer_size)

    def send(self, data):
        if self._tls_layer is None:
            return asynchat.async_chat.send(self, data)
        return _tls.send(self, asynchat.async_chat.send, data)

    def _note_input(self, data: bytes) -> None:
        """*data* was just received, before it joins ``ac_in_buffer``."""

    def _discard_input(self) -> None:
        try:
            # Not self.recv(): at the end of input it would close the channel
            # before the queued replies are sent.
            data = self.socket.recv(self.ac_in_buffer_size)
        except _tls.WOULD_BLOCK:
            return
        except OSError:
            data = b""
        if not data:
            self._input_ended = True
            if self._linger_deadline is not None:
                self.close()

    def _input_cut(self) -> bool:
        """True when buffered input is to be dropped, not run.

        After QUIT; and after STARTTLS until TLS is on, as what the client
        sent after it in plaintext must never run over TLS (CVE-2011-0411).
        """
        return self._quitting or (self._tls_layer is not None and not self._tls_layer.established)

    def _input_paused(self) -> bool:
        return (self._input_cut() or self._pending_reply is not None
                or self._output_backlogged())

    def _process_input(self):
        """Split buffered input at the terminator, as asynchat does.

        Stops while a reply is pending, the output is backlogged or the
        client has quit; the rest stays in ``ac_in_buffer`` for later.
        Exceptions from ``found_terminator`` propagate (asyncore then calls
        ``handle_error``); the input after the failed line is kept.
        """
        buffer = self.ac_in_buffer
        position = 0
        holding = self._holds_replies()
        if holding:
            self._holding_replies = True
        try:
            while position < len(buffer) and not self._input_paused():
                if self._cut_pending:
                    self._cut_pending = False
                    self._cut_input()
                    break
                position, complete = self._consume(buffer, position)
                if complete is None:
                    break
                if complete:
                    self._terminate()
        finally:
            self.ac_in_buffer = b"" if self._input_cut() else buffer[position:]
            if self._cut_pending and not self.ac_in_buffer:
                self._cut_pending = False  # nothing followed: later input is new
            if holding:
                self._holding_replies = False
                if self.producer_fifo:
                    self.initiate_send()

    def _holds_replies(self) -> bool:
        """True to send the replies to all buffered input in one go (PIPELINING)."""
        return False

    def _cut_input(self) -> None:
        """Input followed a line after which none may come (see ``_cut_pending``)."""
        self.close_when_done()

    def _consume(self, buffer: bytes, position: int):
        """Collect input from *position* up to the next terminator.

        Returns (new position, complete): complete is True when a terminator
        was reached, False when all input was collected, None when the end of
        the buffer may be the start of a terminator and more input is needed.
        """
        terminator = self.get_terminator()
        if not terminator:
            self.collect_incoming_data(buffer[position:])
            return len(buffer), False
        if isinstance(terminator, int):
            chunk = buffer[position:position + terminator]
            self.collect_incoming_data(chunk)
            self.terminator = terminator - len(chunk)
            return position + len(chunk), not self.terminator
        index = self._find_terminator(buffer, position, terminator)
        if index >= 0:
            if index > position:
                self.collect_incoming_data(buffer[position:index])
            return index + len(terminator), True
        end = len(buffer) - _partial_terminator_length(buffer, terminator)
        if end > position:
            self.collect_incoming_data(buffer[position:end])
        return end, None

    def _find_terminator(self, buffer: bytes, position: int, terminator: bytes) -> int:
        """Where *terminator* starts in *buffer* from *position*, or -1."""
        return buffer.find(terminator, position)

    def _terminate(self) -> None:
        self._handler_failed = False
        try:
            self.found_terminator()
        except Exception:
            self._handler_failed = True
            raise
        finally:
            # The wait for the next command starts after this one is
            # answered: a slow handler does not eat its own client's time.
            self._touch()

    # -- replies that arrive later -------------------------------------------

    def _await_reply(self, future: concurrent.futures.Future, settle=None) -> None:
        """Reply once *future* is done: its result, or ``settle(future)`` if given."""
        self._pending_reply = future
        waker = waker_for(self._map)
        future.add_done_callback(
            lambda done: waker.call_soon(
                functools.partial(self._send_late_reply, done, settle)))

    def _send_late_reply(self, future: concurrent.futures.Future, settle=None) -> None:
        self._pending_reply = None
        self._touch()
        if not self.connected:
            return
        self._late_reply(future, settle)
        try:
            self._process_input()
        except Exception:
            self.handle_error()

    def _late_reply(self, future: concurrent.futures.Future, settle) -> None:
        """Push the reply for *future*, now done (see ``_await_reply``)."""
        raise NotImplementedError

    # -- deadlines and closing -----------------------------------------------

    def _touch(self) -> None:
        idle_timeout = getattr(self.smtp_server, "idle_timeout", None)
        if idle_timeout:
            self._deadline = time.monotonic() + idle_timeout

    def _idle_expired(self) -> bool:
        return (self._deadline is not None and not self._quitting
                and self._pending_reply is None
                and time.monotonic() > self._deadline)

    def _time_out(self) -> None:
        """The client was idle too long: end the session."""
        self._deadline = None
        self.close_when_done()

    def close(self):
        forget = getattr(self.smtp_server, "_forget_channel", None)
        if forget is not None:
            forget(self)
        if self._pending_reply is not None:
            # Left to finish: cancelling could strand whoever completes it
            # (set_result() on a cancelled Future raises).  Its reply is dropped.
            self._pending_reply = None
            debug("Client gone before its reply:", repr(getattr(self, "peer", None)))
        _tls.send_close_notify(self)
        asynchat.async_chat.close(self)


def _partial_terminator_length(buffer: bytes, terminator: bytes) -> int:
    """How many bytes at the end of *buffer* could start *terminator*."""
    for length in range(min(len(terminator) - 1, len(buffer)), 0, -1):
        if buffer.endswith(terminator[:length]):
            return length
    return 0
