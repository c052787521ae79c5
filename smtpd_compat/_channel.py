"""SMTPChannel: one client connection, from greeting to QUIT.

The channel enforces per-connection limits, dispatches each command line to
an ``smtp_<VERB>`` method and hands finished messages to the server's
``process_message``.  Bytes in and out (splitting, backpressure, lingering,
deadlines) live in its base class, ``_transport._Transport``; parsing in
``_parsing``, reply texts in ``_replies``, the verb table in ``_commands``.
"""

import codecs
import collections
import concurrent.futures
import errno
import functools
import logging
import socket as _stdlib_socket
import traceback
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from . import (
    _abuse,
    _auth,
    _bdat,
    _commands,
    _deadlines,
    _extensions,
    _keywords,
    _limits,
    _parsing,
    _policy,
    _readers,
    _replies,
    _status,
    _streaming,
    _tls,
)
from ._asyncore import asynchat
from ._deprecated import install_aliases
from ._loop import tracks_interest
from ._namespace import debug, debugging, public_global, socket_module
from ._transport import _Transport

logger = logging.getLogger("smtpd_compat")

DATA_SIZE_DEFAULT = 33554432  # 32 MiB, smtpd's default message size limit

_DATA_TERMINATOR = b"\r\n.\r\n"
# The end of data when the message is empty: the CRLF of the DATA command
# line itself is the first CRLF of CRLF "." CRLF (RFC 5321, section 4.1.1.4).
_EMPTY_DATA_END = b".\r\n"


@tracks_interest
@install_aliases
class SMTPChannel(_Transport):
    """An SMTP session with one client, speaking smtpd's dialect of RFC 5321.

    Subclasses add or change commands by defining ``smtp_<VERB>(self, arg)``
    methods; ``arg`` is the rest of the line, stripped, or None if the line
    had no space.
    """

    COMMAND = 0
    DATA = 1

    command_size_limit = 512
    # Class-level template, kept for introspection and for subclasses that
    # set limits per verb; each connection works on its own copy.
    command_size_limits: Dict[str, int] = collections.defaultdict(
        lambda x=command_size_limit: x
    )

    # Per-connection state whose usual value lives here, on the class: an
    # instance stores only what differs.  Python shares the key table of
    # instance dicts only up to about 30 attributes, and past that every
    # idle connection costs over a kilobyte more.  On 3.11-3.13 the limit is
    # 29, counting attributes first set later (EHLO sets one):
    # tests/test_idle_memory.py measures it.
    _emptystring: Any = b""  # smtpd's bytes-or-str helpers (decode_data=False)
    _linesep: Any = b"\r\n"
    _dotsep: Any = ord(b".")
    _newline: Any = b"\n"
    _decoder = None  # an incremental UTF-8 decoder with decode_data=True
    _undecodable = False
    _data_at_line_start = False
    # False while the message collected so far has no CRLF "." (see _find_terminator).
    _data_stuffed = True
    _failed_replies = 0  # replies sent that count as a client error (see _abuse)
    _error_count = 0  # command lines answered with an error since the last message
    _reply_recipients = 0  # recipients of the message whose reply is pending
    mail_options: List[str] = []  # replaced, never changed in place
    rcpt_options: List[str] = []
    # One rcpt_options list per accepted recipient, in rcpttos order: the
    # recipient_options keyword of a process_message that names it.  The
    # channel's own list from a transaction's first recipient to its end.
    _recipient_options: List[List[str]] = []
    data_size_limit: Optional[int] = DATA_SIZE_DEFAULT
    enable_SMTPUTF8 = False
    _decode_data = False
    # Set only when the server reads HAProxy's PROXY header (see _readers).
    proxy_peer = None  # the proxy's address: the socket's peer
    proxy_header = None  # the parsed header, a _haproxy.ProxyHeader
    # EHLO keywords a subclass adds, sent before "250 HELP" (see commands.py).
    ehlo_keywords: Tuple[str, ...] = ()
    # The message being streamed to the server's sink (see _streaming), if any.
    _data_stream: Optional[_streaming.DataStream] = None
    # True once the session speaks TLS (STARTTLS or implicit TLS; see _tls).
    tls_active = False
    # The login the client authenticated as with AUTH (see _auth); None before.
    auth_login: Optional[str] = None
    _auth_failures = 0
    # What takes the next input line instead of the command dispatcher (an
    # AUTH exchange's continuation line): called as
    # reader(channel, line, decodable, size); None: dispatch commands.
    _line_reader = None
    # The message of a transaction that BDAT chunks bring (see _bdat).
    _chunked: Optional["_bdat.ChunkedMessage"] = None
    # What the server's policy hooks keep for this connection (see
    # _policy.Session.state): made on first use.
    policy_state = None
    # Counted only when the server sets the limit (see _limits): messages
    # whose data arrived, and {verb: lines} so far.
    _messages = 0
    _command_calls: Optional[Dict[str, int]] = None
    # Extensions on whatever the server says (see _extensions; LMTP).
    forced_extensions: FrozenSet[str] = frozenset()
    # Those on for this connection (see _extensions.turned_on).
    _extensions_on: FrozenSet[str] = frozenset()
    # The verb whose reply is being sent, kept only while an extension of
    # _extensions is on (for enhanced codes and PIPELINING).
    _answered_verb: Optional[str] = None

    @property
    def max_command_size_limit(self) -> int:
        """The longest command line this connection accepts right now."""
        limits = self.command_size_limits
        if not limits:  # no verb has its own limit (always so before EHLO)
            return self.command_size_limit
        return max(limits.values())

    def __init__(self, server, conn, addr, data_size_limit=DATA_SIZE_DEFAULT,
                 map=None, enable_SMTPUTF8=False, decode_data=False):
        if enable_SMTPUTF8 and decode_data:
            raise ValueError("decode_data and enable_SMTPUTF8 cannot"
                             " be set to True at the same time")
        asynchat.async_chat.__init__(self, conn, map=map)
        self.smtp_server = server
        self.conn = conn
        self.addr = addr
        # Stored only when not the class's value: see the class comment.
        if data_size_limit != self.data_size_limit:
            self.data_size_limit = data_size_limit
        if enable_SMTPUTF8:
            self.enable_SMTPUTF8 = enable_SMTPUTF8
        if decode_data:
            self._decode_data = decode_data
            self._use_text()
        self._touch()
        self._set_rset_state()
        self.seen_greeting = ""
        self.extended_smtp = False
        self.fqdn = _server_fqdn(server)
        extensions = _extensions.turned_on(self)
        if extensions:  # stored only when any is on: see the class comment
            self._extensions_on = extensions
        try:
            self.peer = conn.getpeername()
        except OSError as err:
            # The client may already be gone before we ask who it was.
            self.close()
            if err.errno != errno.ENOTCONN:
                raise
            return
        if getattr(server, "_dual_stack", False):
            self.peer = _parsing.unmapped_address(self.peer)
        _disable_nagle(conn)
        debug("Peer:", repr(self.peer))
        if _readers.start(self):
            return  # the greeting waits for the PROXY header
        self._greet()

    def _greet(self) -> None:
        if _tls.start_implicit(self):
            return  # implicit TLS: the greeting follows the handshake
        ident = getattr(self.smtp_server, "ident", None)
        _policy.greet(self, _replies.GREETING % {
            "fqdn": self.fqdn, "version": ident or public_global("__version__")})

    def _use_text(self) -> None:
        """decode_data=True: smtpd's helpers become str, text is decoded as it comes."""
        self._emptystring = ""
        self._linesep = "\r\n"
        self._dotsep = "."
        self._newline = public_global("NEWLINE")
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    # -- state resets ------------------------------------------------------

    def _set_post_data_state(self):
        """Reset the transaction: back to command state, no sender, no recipients."""
        self.smtp_state = self.COMMAND
        self.mailfrom = None
        self.rcpttos = []
        self.require_SMTPUTF8 = False
        self.num_bytes = 0
        self._data_at_line_start = False
        if self._chunked is not None:
            del self._chunked
        if self._recipient_options:
            del self._recipient_options
        self.set_terminator(b"\r\n")
        if self._data_stream is not None:
            _streaming.abort_stream(self, _streaming.ABORT_RESET)
        _policy.transaction_over(self)

    def _set_rset_state(self):
        """Reset everything but the greeting."""
        self._set_post_data_state()
        self.received_data = ""
        self.received_lines = []

    # -- output ------------------------------------------------------------

    def push(self, msg):
        """Send one reply; ``msg`` is text without the trailing CRLF.

        Replies are ASCII unless the client asked for SMTPUTF8; characters
        that do not fit are sent as backslash escapes instead of failing.
        """
        if self._extensions_on:
            msg = _extensions.coded_reply(self, msg)
        encoding = "utf-8" if self.require_SMTPUTF8 else "ascii"
        if _abuse.counts_as_error(msg):
            self._failed_replies += 1
        self._push_bytes((msg + "\r\n").encode(encoding, "backslashreplace"))

    # -- input -------------------------------------------------------------

    def _note_input(self, data: bytes) -> None:
        # Only whole lines are activity: a complete command line (found_terminator
        # restarts the clock) or a line of message data.
        if (self.smtp_state == self.DATA
                and _deadlines.completes_data_line(self.ac_in_buffer[-1:], data)):
            self._touch()

    def _consume(self, buffer: bytes, position: int):
        if self._chunked is not None and self._chunked.reading:
            return self._chunked.consume(self, buffer, position)
        if self._data_at_line_start and self.get_terminator() == _DATA_TERMINATOR:
            head = buffer[position:position + len(_EMPTY_DATA_END)]
            if head == _EMPTY_DATA_END:
                return position + len(head), True
            if _EMPTY_DATA_END.startswith(head):
                return position, None
            self._data_at_line_start = False
        return _Transport._consume(self, buffer, position)

    def _find_terminator(self, buffer: bytes, position: int, terminator: bytes) -> int:
        if self._data_stuffed or terminator != _DATA_TERMINATOR:
            return _Transport._find_terminator(self, buffer, position, terminator)
        # The end of data and dot-stuffed lines are found in one search; a
        # CRLF "." that may be the start of the end stays in the buffer
        # (_partial_terminator_length), so it is searched again with more.
        index, self._data_stuffed = _parsing.find_data_end(buffer, position)
        return index

    def collect_incoming_data(self, data):
        """Keep *data* for the current line or message, within the limits."""
        limit = None
        if self.smtp_state == self.COMMAND:
            limit = self.max_command_size_limit
        elif self.smtp_state == self.DATA:
            limit = self.data_size_limit
        if limit and self.num_bytes > limit:
            return
        elif limit:
            self.num_bytes += len(data)
        if self._data_stream is not None and self.smtp_state == self.DATA:
            # (A BDAT message's stream stays open across its command lines.)
            self._stream_data(data, limit)
        elif not self._decode_data:
            self.received_lines.append(data)
        elif not self._undecodable:
            # Decoding incrementally keeps a UTF-8 sequence that is split
            # across two reads intact.
            try:
                self.received_lines.append(self._decoder.decode(data))
            except UnicodeDecodeError:
                self._undecodable = True

    def _stream_data(self, data, limit) -> None:
        if limit and self.num_bytes > limit:
            _streaming.abort_stream(self, _streaming.ABORT_SIZE)
        else:
            self._data_stream.write(data)

    def _take_received(self):
        """Join what was collected for this line or message and start afresh."""
        line = self._emptystring.join(self.received_lines)
        self.received_lines = []
        if self._decode_data:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                self._undecodable = True
            self._decoder.reset()
        decodable, self._undecodable = not self._undecodable, False
        return line, decodable

    def found_terminator(self):
        """A command line or a whole message has arrived: act on it."""
        if self._chunked is not None and self._chunked.reading:
            _bdat.chunk_done(self)
            return
        line, decodable = self._take_received()
        if debugging():  # repr() of a whole message is costly; skip it unless shown
            debug("Data:", repr(line if self.smtp_state != self.COMMAND else
                                 _auth.loggable(line, self._line_reader is not None)))
        self._touch()
        if self.smtp_state == self.COMMAND:
            self._run_command_line(line, decodable)
        else:
            self._finish_message(line, decodable)

    def _run_command_line(self, line, decodable: bool) -> None:
        self._counting_errors(self._dispatch_command_line, line, decodable)

    def _counting_errors(self, action, *arguments) -> None:
        """Run *action*; an error reply (4yz, 5yz) it sends counts as the client's error."""
        failed_before = self._failed_replies
        action(*arguments)
        if self._failed_replies != failed_before and not self._quitting:
            self._count_error()

    def _holds_replies(self) -> bool:
        return _extensions.offered(self, _extensions.PIPELINING)

    def _cut_input(self) -> None:
        _extensions.input_cut(self)

    def _dispatch_command_line(self, line, decodable: bool) -> None:
        size, self.num_bytes = self.num_bytes, 0
        if self._extensions_on and _extensions.refuse_bare_line_ending(self, line):
            return
        if self._line_reader is not None:
            self._line_reader(self, line, decodable, size)
            return
        if not decodable:
            self.push(_replies.UNDECODABLE_LINE)
            return
        if not line:
            self.push(_replies.BAD_SYNTAX)
            return
        if not self._decode_data:
            try:
                line = str(line, "utf-8")
            except UnicodeDecodeError:
                self.push(_replies.UNDECODABLE_LINE)
                return
        command, arg = _parsing.split_command(line)
        if self._extensions_on:
            _extensions.answering(self, command)
        if self.extended_smtp:
            self._own_command_size_limits()
            max_size = self.command_size_limits[command]
        else:
            max_size = self.command_size_limit
        if size > max_size:
            self.push(_replies.LINE_TOO_LONG)
            return
        method = getattr(self, "smtp_" + command, None)
        refusal = method and _tls.refusal_before_tls(self, command)
        if refusal:
            self.push(refusal)
            return
        if method and _limits.call_limit_reached(self, command):
            return
        if not method:
            if _abuse.is_non_smtp_command(
                    command, line, bool(self.seen_greeting),
                    getattr(self.smtp_server, "forbidden_commands", None)):
                self._end_non_smtp_session(line)
                return
            self.push(_replies.UNRECOGNIZED % {
                "command": _parsing.escape_for_reply(command)})
            return
        method(arg)
        if self._extensions_on:
            _extensions.after_reply(self)

    def _finish_message(self, data, decodable: bool) -> None:
        if self.smtp_state != self.DATA:
            self.push(_replies.INTERNAL_CONFUSION)
            self.num_bytes = 0
            return
        if self.data_size_limit and self.num_bytes > self.data_size_limit:
            self._refuse_message(_replies.TOO_MUCH_DATA)
            return
        if not decodable:
            self._refuse_message(_replies.UNDECODABLE_DATA)
            return
        if self._extensions_on and _extensions.refuse_bare_line_ending(self, data):
            self._set_post_data_state()
            return
        if self._data_stream is not None:
            self._settle_message(_streaming.end_stream(self))
        else:
            self._deliver_message(_parsing.unstuff(data, self._data_stuffed))

    def _deliver_message(self, data) -> None:
        """Hand the message *data* to the server and answer (DATA's end, BDAT LAST)."""
        self.received_data = data
        self._settle_message(self._deliver())

    def _settle_message(self, status) -> None:
        """End the transaction and answer its message with *status* (or once it is known)."""
        _limits.count_message(self)
        recipients = len(self.rcpttos)
        self._set_post_data_state()
        if isinstance(status, concurrent.futures.Future):
            self._reply_recipients = recipients
            self._await_reply(status)
        else:
            self._answer_message(status, recipients)

    def _refuse_message(self, reply: str) -> None:
        """Refuse the message at its end with *reply*; the transaction is over."""
        recipients = len(self.rcpttos)
        self._set_post_data_state()
        self._answer_message(reply, recipients)

    def _answer_message(self, status, recipients: int) -> None:
        """Push the reply to a message's end (the LMTP layer sends one per recipient)."""
        if isinstance(status, _policy.HookReply):
            _policy.send(self, status)  # check_message refused: its reply as it is
        else:
            self.push(self._reply_for_status(status, recipients))

    def _reply_for_status(self, value, recipients: int) -> str:
        """The reply for what ``process_message`` returned (see ``_status``)."""
        reply, problem = _status.reply_for_status(value, recipients)
        if problem:
            peer = getattr(self, "peer", None)
            logger.error("process_message returned %s, for %r; answered 451",
                         problem, peer)
            debug("process_message returned %s, for %r; answered 451" % (problem, peer))
        elif reply[:1] == "2" and self._error_count:
            self._error_count = 0  # Postfix forgives a client that delivered mail
        return reply

    def _deliver(self):
        args = (self.peer, self.mailfrom, self.rcpttos, self.received_data)
        process_message = self.smtp_server.process_message
        kwargs = _keywords.for_process_message(process_message, self)
        # Bound now: a deferred decision calls it after the transaction's reset.
        return _policy.check_message(self, self.received_data, functools.partial(
            process_message, *args, **kwargs))

    # -- replies that arrive later (process_message returned a Future) ------

    def _late_reply(self, future: concurrent.futures.Future, settle) -> None:
        if settle is None:
            try:
                status = future.result()
            except Exception:
                _report_failure(self, "process_message failed")
                status = _replies.HANDLER_FAILED
            self._answer_message(status, self._reply_recipients)
            return
        # A decision (see _policy): *settle* sends the reply itself and
        # returns None, or returns the reply.  Counted as its command line
        # would have been, had the reply come at once.
        failed_before = self._failed_replies
        try:
            reply = settle(future)
        except Exception:
            _report_failure(self, "policy decision failed")
            reply = _replies.HANDLER_FAILED
        if reply is not None:
            self.push(reply)
        if self._failed_replies != failed_before and not self._quitting:
            self._count_error()
        if self._extensions_on:
            _extensions.after_reply(self)

    # -- errors, timeouts, closing -------------------------------------------

    def handle_error(self):
        """Answer 451 when a command or ``process_message`` raised; else as asyncore.

        The exception still propagates out of a direct ``handle_read()`` call
        (asyncore calls this method when it catches it), the transaction is
        reset, and the session goes on with any input already received.
        """
        if not self._handler_failed:
            asynchat.async_chat.handle_error(self)
            return
        while True:
            self._handler_failed = False
            _report_failure(self, "command handler failed")
            self._set_post_data_state()
            self.push(_replies.HANDLER_FAILED)
            try:
                self._process_input()
                return
            except Exception:
                if not self._handler_failed:
                    asynchat.async_chat.handle_error(self)
                    return

    def _count_error(self) -> None:
        """One more command line answered with an error; end the session at the limit."""
        self._error_count += 1
        if _abuse.limit_reached(self._error_count,
                                getattr(self.smtp_server, "max_errors", None)):
            logger.warning("too many errors from %r; disconnected",
                           getattr(self, "peer", None))
            self.push(_replies.TOO_MANY_ERRORS % {"fqdn": self.fqdn})
            self.close_when_done()

    def _end_non_smtp_session(self, line: str) -> None:
        """Postfix's answer to an HTTP request or a header line: goodbye, now."""
        logger.warning("non-SMTP command from %r: %s", getattr(self, "peer", None),
                       _parsing.escape_for_reply(line[:100]))
        self.push(_replies.NOT_SMTP)
        self.close_when_done()

    def _time_out(self) -> None:
        self._deadline = None
        if self._data_stream is not None:
            _streaming.abort_stream(self, _streaming.ABORT_TIMEOUT)
        debug("Idle timeout:", repr(getattr(self, "peer", None)))
        self.push(_replies.IDLE_TIMEOUT % {"fqdn": self.fqdn})
        self.close_when_done()

    # -- helpers that subclasses copied from smtpd still call ----------------

    def _strip_command_keyword(self, keyword, arg):
        return _parsing.strip_keyword(keyword, arg)

    def _getaddr(self, arg):
        return _parsing.parse_address(arg)

    def _getparams(self, params):
        return _parsing.parse_parameters(params)

    def _syntax_error(self, verb: str) -> str:
        return _replies.SYNTAX_ERROR % {
            "syntax": _commands.syntax(verb, self.extended_smtp, type(self))}

    # -- SMTP and ESMTP commands -----------------------------------------

    def _own_command_size_limits(self) -> None:
        """Give this connection its own copy of the per-verb line limits.

        smtpd changed the one class-level dict, so connections changed each
        other's limits; the class dict stays as subclasses defined it.
        """
        # Not `vars(self)`: on 3.12+ it makes every instance hold a dict object.
        template = type(self).command_size_limits
        if self.command_size_limits is template:
            self.command_size_limits = collections.defaultdict(
                _constant(self.command_size_limit), template)

    def _may_greet(self, verb: str, arg) -> bool:
        """What HELO and EHLO check first; True if the greeting may be taken."""
        if not arg:
            self.push(self._syntax_error(verb))
            return False
        if self.seen_greeting:
            self.push(_replies.DUPLICATE_HELO)
            return False
        return True

    def _record_greeting(self, arg, extended: bool = False) -> None:
        self._set_rset_state()
        self.seen_greeting = arg
        if not extended:
            return
        self.extended_smtp = True
        self._own_command_size_limits()
        if self.data_size_limit:
            self.command_size_limits["MAIL"] += _commands.SIZE_MAIL_LINE_ALLOWANCE
        if self.enable_SMTPUTF8:
            self.command_size_limits["MAIL"] += _commands.SMTPUTF8_MAIL_LINE_ALLOWANCE

    def smtp_HELO(self, arg):
        if self._may_greet("HELO", arg):
            _policy.consult(self, _policy.AT_HELO, ("HELO", arg),
                            _replies.HELO_OK % {"fqdn": self.fqdn},
                            self._record_greeting, (arg,))

    def smtp_EHLO(self, arg):
        self._extended_hello("EHLO", arg)

    def _extended_hello(self, verb: str, arg) -> None:
        """EHLO, or LMTP's LHLO: the greeting, then the keywords."""
        # Checked first: a bad keyword must not leave half a reply sent.
        added_lines = _commands.ehlo_lines(self.ehlo_keywords)
        if self._may_greet(verb, arg):
            _policy.consult(self, _policy.AT_HELO, (verb, arg),
                            functools.partial(self._push_ehlo_reply, added_lines),
                            self._record_greeting, (arg, True))

    def _push_ehlo_reply(self, added_lines) -> None:
        lines = [_replies.EHLO_FIRST_LINE % {"fqdn": self.fqdn}]
        if self.data_size_limit:
            lines.append(_replies.EHLO_SIZE % {"limit": self.data_size_limit})
        if not self._decode_data:
            lines.append(_replies.EHLO_8BITMIME)
        if self.enable_SMTPUTF8:
            lines.append(_replies.EHLO_SMTPUTF8)
        if _bdat.offered(self):
            lines.append(_replies.EHLO_CHUNKING)
        if _tls.offered(self):
            lines.append(_replies.EHLO_STARTTLS)
        lines += _extensions.ehlo_lines(self) + _auth.ehlo_lines(self) + added_lines
        lines.append(_replies.EHLO_LAST_LINE)
        self._push_lines(lines, together=_tls.context_of(self.smtp_server) is not None)

    def _push_lines(self, lines, together: bool) -> None:
        """Push the lines of one reply; *together*: in one write, not one per line.

        smtpd writes each line as it is pushed, and CPython's test_smtpd
        looks at the last write, so that stays; a server with TLS (which
        smtpd never had) sends the reply in one TLS record, one system call.
        """
        held = self._holding_replies
        self._holding_replies = held or together
        try:
            for line in lines:
                self.push(line)
        finally:
            self._holding_replies = held
        if together and not held and self.producer_fifo:
            self.initiate_send()

    def smtp_NOOP(self, arg):
        if arg:
            self.push(self._syntax_error("NOOP"))
        else:
            self.push(_replies.OK)

    def smtp_QUIT(self, arg):
        self.push(_replies.BYE)
        self.close_when_done()

    def smtp_HELP(self, arg):
        if not arg:
            self.push(_replies.HELP_LIST % {"commands": _commands.help_listing(type(self))})
            return
        topic = _commands.help_topic(arg.upper(), type(self))
        if topic is None:
            self.push(_replies.HELP_UNKNOWN % {
                "commands": _commands.help_listing(type(self))})
            return
        self.push(_replies.HELP_SYNTAX % {
            "syntax": _commands.syntax(topic.verb, self.extended_smtp, type(self))})

    def smtp_VRFY(self, arg):
        if not arg:
            self.push(self._syntax_error("VRFY"))
            return
        address, params = self._getaddr(arg)
        if address:
            self.push(_replies.CANNOT_VRFY)
        elif _parsing.has_address_control(arg):
            self.push(self._syntax_error("VRFY"))
        else:
            self.push(_replies.COULD_NOT_VRFY % {"arg": _parsing.escape_for_reply(arg)})

    def _envelope_address(self, verb: str, keyword: str, arg):
        """Parse ``FROM:<address> params`` (or ``TO:...``) for MAIL or RCPT.

        Returns (address, upper-cased parameter list), or None after
        answering the verb's 501 syntax reply.
        """
        if arg is not None:
            address, params = self._getaddr(self._strip_command_keyword(keyword, arg))
            if address and (self.extended_smtp or not params):
                return address, _extensions.split_parameters(self, params)
        self.push(self._syntax_error(verb))
        return None

    def smtp_MAIL(self, arg):
        if not self.seen_greeting:
            self.push(_replies.SEND_HELO_FIRST)
            return
        refusal = _auth.mail_refusal(self)
        if refusal is not None:
            self.push(refusal)
            return
        if _limits.message_limit_reached(self):
            return
        debug("===> MAIL", arg)
        parsed = self._envelope_address("MAIL", "FROM:", arg)
        if parsed is None:
            return
        address, mail_options = parsed
        if self.mailfrom:
            self.push(_replies.NESTED_MAIL)
            return
        problem, require_smtputf8 = self._check_mail_parameters(mail_options)
        if problem:
            self.push(problem)
            return
        _policy.consult(self, _policy.MAIL, (address, mail_options), _replies.OK,
                        self._take_sender, (address, mail_options, require_smtputf8))

    def _take_sender(self, address, mail_options, require_smtputf8) -> None:
        self.mail_options = mail_options
        self.require_SMTPUTF8 = require_smtputf8
        self.mailfrom = address
        debug("sender:", self.mailfrom)

    def _check_mail_parameters(self, mail_options: List[str]):
        """Return (error reply or None, whether SMTPUTF8 was asked for)."""
        params = self._getparams(mail_options)
        if params is None:
            return self._syntax_error("MAIL"), False
        if not self._decode_data:
            body = params.pop("BODY", "7BIT")
            if body not in ("7BIT", "8BITMIME"):
                return _replies.BAD_BODY, False
        smtputf8 = False
        if self.enable_SMTPUTF8:
            smtputf8 = params.pop("SMTPUTF8", False)
            if smtputf8 is not True and smtputf8 is not False:
                return _replies.SMTPUTF8_TAKES_NO_ARGUMENTS, False
        if "AUTH" in params and _auth.offered(self.smtp_server):
            # RFC 4954, section 5; taken and not passed on: we relay no identity.
            if not _auth.is_auth_parameter(params.pop("AUTH")):
                return self._syntax_error("MAIL"), False
        size = params.pop("SIZE", None)
        if size:
            if not _parsing.is_size_value(size):
                return self._syntax_error("MAIL"), False
            if self.data_size_limit and int(size) > self.data_size_limit:
                return _replies.SIZE_EXCEEDED, False
        problem = _extensions.take_mail_parameters(self, params)
        if problem:
            return problem, False
        if params:
            return _replies.MAIL_PARAMS_UNKNOWN, False
        return None, smtputf8

    def smtp_RCPT(self, arg):
        if not self.seen_greeting:
            self.push(_replies.SEND_HELO_FIRST)
            return
        debug("===> RCPT", arg)
        if not self.mailfrom:
            self.push(_replies.NEED_MAIL)
            return
        parsed = self._envelope_address("RCPT", "TO:", arg)
        if parsed is None:
            return
        address, rcpt_options = parsed
        params = self._getparams(rcpt_options)
        if params is None:
            self.push(self._syntax_error("RCPT"))
            return
        problem = _extensions.take_rcpt_parameters(self, params)
        if problem:
            self.push(problem)
            return
        if params:
            self.push(_replies.RCPT_PARAMS_UNKNOWN)
            return
        if _abuse.limit_reached(len(self.rcpttos),
                                getattr(self.smtp_server, "max_recipients", None)):
            self.push(_replies.TOO_MANY_RECIPIENTS)
            return
        _policy.consult(self, _policy.RCPT, (address, rcpt_options), _replies.OK,
                        self._take_recipient, (address, rcpt_options))

    def _take_recipient(self, address, rcpt_options) -> None:
        self.rcpt_options = rcpt_options
        if not self.rcpttos:
            self._recipient_options = []
        self._recipient_options.append(rcpt_options)
        self.rcpttos.append(address)
        debug("recips:", self.rcpttos)

    def smtp_RSET(self, arg):
        if arg:
            self.push(self._syntax_error("RSET"))
            return
        self._set_rset_state()
        self.push(_replies.OK)

    def smtp_DATA(self, arg):
        if not self.seen_greeting:
            self.push(_replies.SEND_HELO_FIRST)
            return
        if not self.rcpttos:
            self.push(_replies.NEED_RCPT)
            return
        if arg:
            self.push(self._syntax_error("DATA"))
            return
        if self._chunked is not None:
            self.push(_replies.DATA_AFTER_BDAT)
            return
        _policy.consult(self, _policy.DATA, (), _replies.START_DATA, self._start_data)

    def _start_data(self) -> None:
        _streaming.open_stream(self)
        self.smtp_state = self.DATA
        self.set_terminator(_DATA_TERMINATOR)
        self._data_at_line_start = True
        self._data_stuffed = False

    def close(self):
        if self._data_stream is not None:
            _streaming.abort_stream(self, _streaming.ABORT_CLOSED)
        _Transport.close(self)

    def smtp_EXPN(self, arg):
        self.push(_replies.EXPN_NOT_IMPLEMENTED)

    def smtp_AUTH(self, arg):
        # Unknown to smtpd (500) unless the server checks credentials.
        _auth.command(self, arg)

    def smtp_BDAT(self, arg):
        # Unknown, as in smtpd, unless the server offers CHUNKING.
        _bdat.command(self, arg)

    def smtp_LHLO(self, arg):
        # Unknown, as in smtpd: LMTP's layer (see _lmtp) answers it.
        self.push(_replies.UNRECOGNIZED % {"command": "LHLO"})

    # -- TLS (RFC 3207): the command and the hook; the rest is in _tls ------

    def smtp_STARTTLS(self, arg):
        if _tls.context_of(self.smtp_server) is None:
            self.push(_replies.UNRECOGNIZED % {"command": "STARTTLS"})
            return
        refusal = _tls.starttls_refusal(self, arg)
        if refusal:
            self.push(refusal)
            return
        self.push(_replies.READY_FOR_TLS)
        _tls.start(self)

    def _tls_started(self) -> None:
        """STARTTLS is done: the session starts over (RFC 3207, section 4.2).

        The client must send EHLO again; what it said before TLS (the
        greeting, the per-verb line limits EHLO set) is forgotten.
        """
        self.seen_greeting = ""
        self.extended_smtp = False
        self._set_rset_state()
        _auth.forget(self)
        try:
            del self.command_size_limits  # back to the class's template
        except AttributeError:
            pass


SMTPChannel.__module__ = "smtpd_compat"


@functools.lru_cache(maxsize=64)
def _constant(value):
    """A ``default_factory`` that gives *value*: one per value, not one per connection."""
    return lambda: value


def _server_fqdn(server) -> str:
    cached = getattr(server, "_cached_fqdn", None)
    if cached is not None:
        return cached()
    return getattr(server, "hostname", None) or socket_module().getfqdn()


def _disable_nagle(conn) -> None:
    # A multi-line reply goes out as several writes; with Nagle's algorithm
    # and the client's delayed ACKs each one after the first can wait ~40 ms.
    try:
        conn.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
    except (OSError, AttributeError, TypeError):
        pass  # not TCP (a UNIX socket, a test double): nothing to tune


def _report_failure(channel: SMTPChannel, what: str) -> None:
    """Log the exception being handled to ``logging`` and DEBUGSTREAM."""
    peer = getattr(channel, "peer", None)
    logger.exception("%s for %r; answered 451", what, peer)
    debug("%s for %r; answered 451\n%s" % (what, peer, traceback.format_exc()))
