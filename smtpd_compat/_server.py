"""SMTPServer, the listening socket that makes a channel per client, and DebuggingServer."""

import contextlib
import errno
import hmac
import logging
import os
import sys
import threading
import time
import weakref
from typing import Collection, Mapping, Optional, Tuple

from . import _lmtp, _replies, _unixsocket
from ._abuse import FORBIDDEN_COMMANDS
from ._asyncore import asyncore
from ._channel import DATA_SIZE_DEFAULT, SMTPChannel
from ._limits import CallLimit
from ._loop import SELECT_FD_LIMIT, tracks_interest, watched_by_poller
from ._namespace import debug, socket_module
from ._parsing import peer_host, unmapped_address
from ._policy import default_hook
from ._readers import PROXY_HEADER_TIMEOUT
from ._tls import HANDSHAKE_TIMEOUT

logger = logging.getLogger("smtpd_compat")

# accept() errors that say "not now" rather than "this listener is broken":
# out of descriptors or memory, or a firewall refusing this one connection.
_TRANSIENT_ACCEPT_ERRORS = frozenset(
    getattr(errno, name) for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "EPERM")
    if hasattr(errno, name))
_ACCEPT_PAUSE = 0.1  # seconds to stop accepting after a transient failure

# The listening socket the next SMTPServer made in this thread takes instead
# of binding one (see adopting()); per thread, as servers are made in threads.
_adoption = threading.local()


@contextlib.contextmanager
def adopting(listener, dual_stack=False):
    """Make the next :class:`~smtpd_compat.SMTPServer` created in this thread serve *listener*.

    *listener* is a socket that already listens (handed over by systemd, or
    shared by worker processes); the server neither binds nor listens, and
    its *localaddr* argument is only remembered.  The first server created
    in the block takes the socket, later ones bind as usual.  ``None``
    changes nothing, so callers need no second code path.  A true
    *dual_stack* says smtpd_compat made *listener* for an empty host, as
    the server would have: its IPv4 peers are then reported unmapped.
    """
    previous = getattr(_adoption, "listener", None)
    _adoption.listener = (listener, dual_stack) if listener is not None else None
    try:
        yield listener
    finally:
        _adoption.listener = previous


def _take_adopted_listener():
    """The ``(listener, dual_stack)`` pair to adopt, or None; taken only once."""
    adoption = getattr(_adoption, "listener", None)
    _adoption.listener = None
    return adoption


@tracks_interest
class SMTPServer(asyncore.dispatcher):
    """Listen on *localaddr* and serve each client with a ``channel_class``.

    Subclass it and override ``process_message``.  Besides smtpd's own
    arguments, a few class attributes (also settable per instance before the
    loop runs) tune it: ``idle_timeout``, ``max_connections``, ``listen_backlog``,
    ``max_recipients``, ``max_errors``, ``max_messages``,
    ``command_call_limit``, ``forbidden_commands``, the greeting's
    ``hostname`` and ``ident``, ``chunking`` (BDAT), ``lmtp``, and for a
    server behind HAProxy ``proxy_protocol``, ``proxy_header_timeout`` and
    ``proxy_trusted``.

    AUTH (RFC 4954) is off unless the server checks credentials: set
    ``auth_users`` or override :meth:`authenticate` (and :meth:`auth_password`
    for CRAM-MD5); ``auth_required``, ``auth_plaintext``, ``auth_mechanisms``
    and ``auth_max_failures`` tune it.
    ``proxy_trusted``; for TLS ``tls_context``, ``require_starttls``,
    ``smtps`` and ``tls_handshake_timeout``.
    """

    channel_class = SMTPChannel
    # Seconds a client may stay silent (or send no complete line) before it
    # gets a 421 and is disconnected; 0 or None waits forever as smtpd did.
    # RFC 5321, section 4.5.3.2.7: "An SMTP server SHOULD have a timeout of
    # at least 5 minutes while it is awaiting the next command".
    idle_timeout: Optional[float] = 300
    # Clients served at once; the next ones get a 421.  None: no cap.
    max_connections: Optional[int] = None
    # smtpd listened with a backlog of 5, which drops bursts of connections.
    listen_backlog = 1024
    # Recipients per message; the next RCPT gets "452 4.5.3 Too many
    # recipients".  RFC 5321, section 4.5.3.1.8: at least 100 must be taken;
    # Postfix's smtpd_recipient_limit is 1000.  None: no limit, as smtpd.
    max_recipients: Optional[int] = 1000
    # Command lines answered with an error (4yz or 5yz) before the session
    # ends with a 421, as Postfix's smtpd_hard_error_limit; a delivered
    # message forgives them.  None: no limit, as smtpd.
    max_errors: Optional[int] = 20
    # Messages one connection may send (data received, whatever the reply);
    # the next MAIL gets "421 4.7.0 <host> Error: too many messages in one
    # connection" and the session ends, as Exim's
    # smtp_accept_max_per_connection.  None: no limit, as smtpd.
    max_messages: Optional[int] = None
    # How often one connection may send a command, as aiosmtpd's
    # command_call_limit: a number for every verb, or a dict
    # {"VERB": n, "*": n for the rest}.  One line more gets "421 4.7.0 VERB
    # sent too many times" and the session ends.  None: no limit, as smtpd.
    command_call_limit: CallLimit = None
    # Unrecognized verbs that show an HTTP client: the session ends at once
    # with Postfix's 221, as does a header line ("Host: ...") before
    # HELO/EHLO.  Empty or None: answered 500 like any unknown verb, as smtpd.
    forbidden_commands: Optional[Collection[str]] = FORBIDDEN_COMMANDS
    # HAProxy's PROXY protocol header in front of every connection (see
    # _readers): None (off, as smtpd), "v1", "v2" or "any"; the seconds a
    # proxy has to send it; the networks allowed to send it (CIDR text or
    # networks; None: loopback only).
    proxy_protocol: Optional[str] = None
    proxy_header_timeout: Optional[float] = PROXY_HEADER_TIMEOUT
    proxy_trusted = None
    # The greeting's two parts, "220 <hostname> <ident>": None gives smtpd's
    # socket.getfqdn() and __version__.  The host name also names the server
    # in the HELO/EHLO replies and the 421s.
    hostname: Optional[str] = None
    ident: Optional[str] = None
    # AUTH (RFC 4954, see _auth), off by default.  Logins and their clear
    # passwords, checked by the default authenticate() and auth_password();
    # None: AUTH is offered only if authenticate() is overridden.
    auth_users: Optional[Mapping[str, str]] = None
    # MAIL needs a successful AUTH first ("530 5.7.0 Authentication required").
    auth_required = False
    # AUTH without TLS (offered in EHLO and accepted); otherwise 538, as
    # Postfix's smtpd_tls_auth_only.  For loopback test servers.
    auth_plaintext = False
    # The mechanisms offered, in this order (CRAM-MD5 only where clear
    # passwords can be looked up).
    auth_mechanisms: Tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5")
    # Refused logins before "421" and disconnection; None or 0: no limit.
    auth_max_failures: Optional[int] = 3
    # CHUNKING (RFC 3030): EHLO offers it and BDAT is taken (see _bdat).
    # Off, as smtpd: BDAT is an unknown command.
    chunking = False
    # LMTP (RFC 2033) instead of SMTP: LHLO, one reply per recipient (see
    # _lmtp).  *localaddr* may then also be a UNIX socket's path.
    lmtp = False
    # TLS (see _tls): an ssl.SSLContext for the server side offers STARTTLS
    # (RFC 3207); None is plaintext only, as smtpd.  require_starttls answers
    # "530 5.7.0 Must issue a STARTTLS command first" to every command but
    # EHLO, NOOP, QUIT, HELP and STARTTLS until TLS is on.  smtps: implicit
    # TLS (RFC 8314), the greeting after the handshake.  Seconds a client has
    # to complete the handshake (None or 0: idle_timeout's).
    tls_context = None
    require_starttls = False
    smtps = False
    tls_handshake_timeout: Optional[float] = HANDSHAKE_TIMEOUT
    # ESMTP extensions beyond smtpd's, each off by default (see _extensions):
    # True offers it; ``modern`` offers all of them.
    pipelining = False
    enhanced_status_codes = False
    dsn = False
    strict_line_endings = False
    modern = False
    # MAIL and RCPT parameters taken without acting on them (keywords, e.g.
    # ("AUTH", "MT-PRIORITY")): handed to process_message instead of a 555.
    accepted_mail_parameters: Collection[str] = ()
    accepted_rcpt_parameters: Collection[str] = ()

    # What __init__ sets, defaulted here too: subclasses that call only
    # asyncore.dispatcher.__init__ (lmtpd's LMTPServer, and so Salmon's
    # LMTPReceiver) must still be served.  The channel set is made on first
    # use: a mutable class attribute would be shared by every server.
    _localaddr = None
    _remoteaddr = None
    data_size_limit = DATA_SIZE_DEFAULT
    enable_SMTPUTF8 = False
    _decode_data = False
    _channels: "Optional[weakref.WeakSet[SMTPChannel]]" = None
    _fqdn: Optional[Tuple[object, str]] = None
    _accept_paused_until = 0.0
    _select_limit_logged = False
    _dual_stack = False  # the listener is our own IPv6 socket that takes IPv4 too
    _socket_file: Optional[_unixsocket.Made] = None  # a UNIX socket's, removed at close

    def __init__(self, localaddr, remoteaddr,
                 data_size_limit=DATA_SIZE_DEFAULT, map=None,
                 enable_SMTPUTF8=False, decode_data=False):
        self._localaddr = localaddr
        self._remoteaddr = remoteaddr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        if enable_SMTPUTF8 and decode_data:
            raise ValueError("decode_data and enable_SMTPUTF8 cannot"
                             " be set to True at the same time")
        self._channels = weakref.WeakSet()
        asyncore.dispatcher.__init__(self, map=map)
        try:
            adoption = _take_adopted_listener()
            if adoption is not None:
                self._adopt(*adoption)
            else:
                bind_address = self._create_listening_socket(localaddr)
                # Let a restarted server bind while old connections linger.
                self.set_reuse_addr()
                self.bind(bind_address)
                if _unixsocket.is_path(localaddr):
                    self._socket_file = _unixsocket.made(bind_address)
                self.listen(self.listen_backlog)
        except BaseException:
            self.close()
            raise
        else:
            debug("%s started at %s\n\tLocal addr: %s\n\tRemote addr:%s" % (
                self.__class__.__name__, time.ctime(time.time()),
                localaddr, remoteaddr))

    def _create_listening_socket(self, localaddr):
        """Create the socket for *localaddr*; return the address to bind it to.

        A path (str, bytes or path object) is a UNIX socket's, made there
        (see ``_unixsocket``).  An empty host means every interface, as for
        other servers: one IPv6 socket on ``::`` that takes IPv4 too where
        the system has IPv6 (smtpd failed with "Name or service not
        known"), else IPv4's ``0.0.0.0``.
        """
        socket = socket_module()
        if _unixsocket.is_path(localaddr):
            path = os.fspath(localaddr)
            _unixsocket.replace_stale(path)
            self.create_socket(socket.AF_UNIX, socket.SOCK_STREAM)
            return path
        host, port = localaddr[0], localaddr[1]
        if host == "":
            sock = _dual_stack_socket(socket)
            if sock is not None:
                self.set_socket(sock)
                self._dual_stack = True
                return ("::", port)
            self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
            return ("0.0.0.0", port)
        gai_results = socket.getaddrinfo(*localaddr, type=socket.SOCK_STREAM)
        self.create_socket(gai_results[0][0], gai_results[0][1])
        return localaddr

    def _adopt(self, listener, dual_stack: bool = False) -> None:
        """Serve *listener*, a socket that listens already (see :func:`adopting`)."""
        listener.setblocking(False)
        self.set_socket(listener)
        self.accepting = True
        self.addr = listener.getsockname()
        # Not guessed from the socket: one systemd passed keeps mapped peers.
        self._dual_stack = dual_stack

    def _cached_fqdn(self) -> str:
        """:attr:`hostname` if set, else ``socket.getfqdn()``, looked up once per server.

        Asked again if ``smtpd_compat.socket`` (or its ``getfqdn``) is replaced.
        """
        if self.hostname:
            return self.hostname
        getfqdn = socket_module().getfqdn
        if self._fqdn is None or self._fqdn[0] is not getfqdn:
            self._fqdn = (getfqdn, getfqdn())
        return self._fqdn[1]

    # -- accepting -----------------------------------------------------------

    def readable(self):
        return time.monotonic() >= self._accept_paused_until

    def handle_accept(self):
        try:
            pair = self.accept()
        except OSError as err:
            if err.errno not in _TRANSIENT_ACCEPT_ERRORS:
                raise
            self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE
            logger.warning("accept() failed, retrying shortly: %s", err)
            debug("accept() failed, retrying shortly:", err)
            return
        if pair is not None:
            self.handle_accepted(*pair)

    def handle_accepted(self, conn, addr):
        if self._dual_stack:
            addr = unmapped_address(addr)
        debug("Incoming connection from %s" % repr(addr))
        if self._at_connection_limit() or not self._can_watch(conn):
            self._refuse(conn, _replies.TOO_MANY_CONNECTIONS)
            return
        channel = _lmtp.channel_class_for(self)(self,
                                     conn,
                                     addr,
                                     self.data_size_limit,
                                     self._map,
                                     self.enable_SMTPUTF8,
                                     self._decode_data)
        if self._channels is None:
            self._channels = weakref.WeakSet()
        self._channels.add(channel)

    def _at_connection_limit(self) -> bool:
        return (self.max_connections is not None
                and len(self._channels or ()) >= self.max_connections)

    def _can_watch(self, conn) -> bool:
        """False if select() would have to watch *conn* and cannot.

        A descriptor at or above FD_SETSIZE makes select() raise ValueError,
        which ends ``asyncore.loop()`` and the program with it.
        ``smtpd_compat.loop()`` (epoll/poll) watches any descriptor.
        """
        try:
            fd = conn.fileno()
        except (AttributeError, OSError):
            return True
        if fd < SELECT_FD_LIMIT or watched_by_poller(self._map):
            return True
        debug("Descriptor %d is beyond select(); connection refused" % fd)
        if not self._select_limit_logged:
            self._select_limit_logged = True
            logger.warning(
                "connection refused: descriptor %d is beyond what select() can watch;"
                " serve with smtpd_compat.loop() to accept more connections", fd)
        return False

    def _forget_channel(self, channel) -> None:
        if self._channels is not None:
            self._channels.discard(channel)

    def _refuse(self, conn, reply: str) -> None:
        """Tell a client we cannot serve it now, without making a channel."""
        try:
            conn.setblocking(False)
            conn.send((reply % {"fqdn": self._cached_fqdn()} + "\r\n").encode("ascii"))
        except OSError:
            pass
        conn.close()

    def close(self):
        """Stop listening; a UNIX socket's file is removed."""
        asyncore.dispatcher.close(self)
        socket_file, self._socket_file = self._socket_file, None
        _unixsocket.remove(socket_file)

    def handle_error(self):
        """Log the error and keep listening: a listener never closes itself."""
        logger.exception("error in %r; still listening", self)
        debug("error in %r; still listening:" % self, sys.exc_info()[1])

    # -- the API for doing something useful with the message ---------------

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        """Handle one received message; override this in a subclass.

        *peer* is the client's socket address, (host, port) for IPv4; with
        ``proxy_protocol`` on, the client the PROXY header names.
        *mailfrom* is the envelope sender as the client gave it in MAIL
        (the null sender is the string '<>'), *rcpttos* the list of envelope
        recipients from the accepted RCPT commands.

        *data* is the message: headers and body, with dot-stuffing undone
        (RFC 5321, section 4.5.2) and each CRLF turned into LF.  It is bytes,
        or str when the server was made with ``decode_data=True``.

        Keyword arguments come only in bytes mode (``decode_data=False``):
        ``mail_options`` and ``rcpt_options``, the upper-cased ESMTP
        parameters of MAIL and of the last RCPT, such as
        ``['BODY=8BITMIME', 'SMTPUTF8']``.  A message that came over TLS
        (see ``tls_context``) also gets ``tls=True``, in either mode.  An
        override without ``**kwargs`` or those parameter names is called
        without them.

        ``recipient_options`` comes only to an override that names it (not
        to ``**kwargs`` alone, so that such an override sees smtpd's
        keywords): one list of upper-cased RCPT parameters per recipient,
        in *rcpttos* order, ``recipient_options[i]`` being those of
        ``rcpttos[i]`` (DSN's ``NOTIFY`` and ``ORCPT`` per recipient).

        Two more keywords say who sent the message, in either mode:
        ``auth_login``, the login of a successful AUTH (None without), and
        ``tls``, True when the session was encrypted.  An override that
        names them always gets them; one with ``**kwargs`` only when they
        are set (a login, TLS), so that it sees smtpd's keywords otherwise.

        Return None to answer "250 OK", or a whole reply line such as
        ``'550 No such user'`` to answer that instead.  An exception answers
        "451" and the client may try again later.  Returning a
        ``concurrent.futures.Future`` defers the reply until it is done,
        without blocking other clients; its result is read the same way.
        If the client leaves first, the Future still runs to its end and
        its result is dropped.
        """
        raise NotImplementedError

    # -- AUTH (see _auth): who may send ----------------------------------------

    def authenticate(self, peer, login, password):
        """Decide whether *login* with *password* may log in; override this.

        Called for AUTH PLAIN and LOGIN with the client's *peer* address
        and the decoded login and password (str).  Return True to accept
        ("235 2.7.0 Authentication successful"), False to refuse ("535 5.7.8
        Authentication credentials invalid"), or a reply line of your own:
        a refusal such as ``'534 5.7.9 Authentication mechanism is too
        weak'``, or a ``235`` line that accepts with its text (pymta's
        ``'235 Authentication successful'``).  An exception answers "454
        4.7.0 Temporary authentication failure".  Returning a
        ``concurrent.futures.Future`` defers the answer until it is done,
        without blocking other clients; its result is read the same way.
        The default checks :attr:`auth_users`.  Overriding this method (or
        setting ``auth_users``) turns AUTH on.
        """
        users = self.auth_users
        expected = None if users is None else users.get(login)
        if expected is None:
            return False
        return hmac.compare_digest(expected.encode("utf-8"), password.encode("utf-8"))

    def auth_password(self, login):
        """The clear password of *login*, or None if there is no such login.

        CRAM-MD5 (RFC 2195) is offered only when this can answer: the
        default looks in :attr:`auth_users`; override it to read another
        store.  It may also return a ``concurrent.futures.Future``.
        """
        users = self.auth_users
        return None if users is None else users.get(login)

    # -- policy hooks: decide at every step (see _policy) ---------------------
    #
    # Defaults, marked so that the channel does not even call them: a
    # subclass that overrides none is served byte for byte as before.

    @default_hook
    def check_connection(self, session):
        """Decide whether to serve a new client, before the greeting.

        Called once per connection with a :class:`smtpd_compat.policy.Session`
        (``session.peer`` is who connected).  Return None to send the usual
        greeting; a 2xx reply (``"220 mx.example.org ESMTP"``) is sent as the
        greeting instead; a 4xx or 5xx reply (``"554 5.7.1 Go away"``) is
        sent and the connection closed; :data:`smtpd_compat.policy.CLOSE`
        closes it without a word.  Every hook may also return a list of
        lines (a multi-line reply) or a ``concurrent.futures.Future`` of any
        of these, for an answer that takes time (a DNS lookup, a database)
        while other clients are served.  A hook that raises, or returns
        something that is not a reply, gets a logged ``451`` (here, before
        the greeting: the 451 is sent and the connection closed).
        """
        return None

    @default_hook
    def check_helo(self, session, command, name):
        """Decide on HELO or EHLO (*command*, upper case) with the client's *name*.

        Called after smtpd's own checks passed.  None gives smtpd's reply
        (for EHLO, the list of extensions); a 2xx reply is sent instead of it
        and the greeting is taken all the same; a 4xx or 5xx reply refuses it
        (the client may try again).  A 421 reply closes the connection after
        it is sent, here as at every step.
        """
        return None

    @default_hook
    def check_mail(self, session, address, params):
        """Decide on MAIL FROM: *address* (``'<>'`` for the null sender) and *params*.

        *params* are the upper-cased ESMTP parameters (``['SIZE=1000',
        'BODY=8BITMIME']``), already checked by smtpd's rules.  None gives
        ``250 OK``; any 2xx reply accepts the sender with that text; a 4xx
        or 5xx reply refuses it and no transaction starts.
        """
        return None

    @default_hook
    def check_rcpt(self, session, address, params):
        """Decide on one RCPT TO: *address* and its upper-cased *params*.

        Called for every recipient, after the ``max_recipients`` check;
        ``session.rcpttos`` holds the ones accepted so far.  None gives
        ``250 OK``; a 2xx reply accepts with that text; a 4xx or 5xx reply
        refuses, and the recipient is not added to ``rcpttos``.
        """
        return None

    @default_hook
    def check_data(self, session):
        """Decide whether the client may send the message (DATA), before the 354.

        None gives ``354 End data with <CR><LF>.<CR><LF>``; a 3xx reply
        lets the message come with that text; a 4xx or 5xx reply refuses,
        and the transaction stays as it was (the client may RSET).
        """
        return None

    @default_hook
    def check_message(self, session, data):
        """The last word on a received message, before ``process_message``.

        *data* is what ``process_message`` would get.  None lets
        ``process_message`` decide; a 4xx or 5xx reply refuses the message
        and ``process_message`` is not called; a 2xx reply accepts it and
        is the reply where ``process_message`` returns None.  (On
        PureProxy, a Future here makes the message go through smtpd's
        whole-message relay rather than the lockstep session.)
        """
        return None

    # -- decision points of a transaction (see _policy): the defaults ---------

    @default_hook
    def _policy_mail(self, channel, address, params):
        return None

    @default_hook
    def _policy_rcpt(self, channel, address, params):
        return None

    @default_hook
    def _policy_data(self, channel):
        return None

    @default_hook
    def _policy_message(self, channel, data):
        return None

    @default_hook
    def _policy_transaction_over(self, channel):
        return None


SMTPServer.__module__ = "smtpd_compat"


def _dual_stack_socket(socket):
    """A non-blocking IPv6 TCP socket that takes IPv4 too; None if the system cannot."""
    if not getattr(socket, "has_ipv6", False):
        return None
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:  # IPv6 compiled in but not in this kernel
        return None
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    except (OSError, AttributeError):  # a system without dual-stack sockets
        sock.close()
        return None
    sock.setblocking(False)
    return sock


class DebuggingServer(SMTPServer):
    """Print every message to standard output instead of delivering it."""

    def _print_message_content(self, peer, data):
        out = []
        in_headers = True
        binary = not isinstance(data, str)
        for line in data.splitlines():
            if in_headers and not line:
                peer_header = "X-Peer: " + peer_host(peer)
                if binary:
                    peer_header = repr(peer_header.encode("utf-8"))
                out.append(peer_header)
                in_headers = False
            out.append(repr(line) if binary else line)
        if out:
            sys.stdout.write("\n".join(out) + "\n")

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        print("---------- MESSAGE FOLLOWS ----------")
        if kwargs:
            if kwargs.get("auth_login"):
                print("auth login: %s" % kwargs["auth_login"])
            if kwargs.get("mail_options"):
                print("mail options: %s" % kwargs["mail_options"])
            if kwargs.get("rcpt_options"):
                print("rcpt options: %s\n" % kwargs["rcpt_options"])
        self._print_message_content(peer, data)
        print("------------ END MESSAGE ------------")
        sys.stdout.flush()


DebuggingServer.__module__ = "smtpd_compat"
