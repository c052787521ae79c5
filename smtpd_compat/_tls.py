"""How TLS is switched on: STARTTLS (RFC 3207) and implicit TLS (RFC 8314).

A server with a ``tls_context`` (an ``ssl.SSLContext``) offers STARTTLS in
EHLO; with ``smtps`` on it speaks TLS from the first byte and greets only
after the handshake.  Either way the channel's own non-blocking socket is
wrapped in place (``wrap_socket(..., do_handshake_on_connect=False)``): the
file descriptor stays the same, so the socket map and whatever loop serves it
(``smtpd_compat.loop()`` or the user's ``asyncore.loop()``) need not know.

A connection goes through three phases, kept in a :class:`TLSLayer` on the
channel (``channel._tls_layer``; None for plaintext):

``SWITCHING``
    STARTTLS was answered 220.  Input after the STARTTLS line is thrown away
    (it is plaintext the client pipelined: CVE-2011-0411), nothing more is
    read, and the socket is wrapped once every queued reply is sent, so the
    next bytes read are the ClientHello.
``HANDSHAKING``
    ``do_handshake()`` runs from the channel's read and write events only,
    until it stops asking for more; a handshake that fails, or does not end
    within the server's ``tls_handshake_timeout``, is logged and costs only
    its own connection.
``ESTABLISHED``
    The channel reads and writes through TLS: want-read/want-write mean "not
    now", the end of the TLS stream is the end of input, bytes decrypted but
    not yet taken (``pending()``) are taken in the same read, and closing
    sends a close_notify.

After STARTTLS the session starts over (the channel's ``_tls_started``):
the client must EHLO again, STARTTLS is no longer offered, and a second
STARTTLS gets 503.
"""

import enum
import errno
import logging
import socket
import threading
import time
from typing import Optional

from . import _replies
from ._loop import interest_changed
from ._namespace import debug

try:
    import ssl
except ImportError:  # a Python built without OpenSSL: TLS cannot be switched on
    ssl = None  # type: ignore[assignment]

logger = logging.getLogger("smtpd_compat")

# Seconds a client has to complete the handshake once TLS starts.
HANDSHAKE_TIMEOUT = 30.0

# Commands a server with ``require_starttls`` takes before TLS (RFC 3207,
# section 4: "the server SHOULD return the reply code 530 ... to every
# command other than NOOP, EHLO, STARTTLS, or QUIT"; HELP harms no one).
ALLOWED_BEFORE_TLS = frozenset(("EHLO", "NOOP", "QUIT", "HELP", "STARTTLS"))

if ssl is not None:
    # recv()/send() errors that mean "not now".
    WOULD_BLOCK = (BlockingIOError, InterruptedError,
                   ssl.SSLWantReadError, ssl.SSLWantWriteError)
    # ... and those that mean the client ended the TLS stream.
    _END_OF_STREAM = (ssl.SSLZeroReturnError, ssl.SSLEOFError)
else:
    WOULD_BLOCK = (BlockingIOError, InterruptedError)
    _END_OF_STREAM = ()


class Phase(enum.Enum):
    """Where a connection is on its way to TLS."""

    SWITCHING = "switching"  # STARTTLS answered; wrap once the 220 is sent
    HANDSHAKING = "handshaking"  # wrapped; do_handshake() until it is done
    ESTABLISHED = "established"  # every byte goes through TLS


class TLSLayer:
    """The TLS state of one channel (``channel._tls_layer``)."""

    __slots__ = ("phase", "implicit", "deadline", "want_write", "goodbye_said")

    def __init__(self, implicit: bool) -> None:
        self.phase = Phase.SWITCHING
        self.implicit = implicit
        self.deadline: Optional[float] = None
        self.want_write = False
        self.goodbye_said = False  # close_notify sent

    @property
    def established(self) -> bool:
        """True once reads and writes go through TLS."""
        return self.phase is Phase.ESTABLISHED

    @property
    def handshaking(self) -> bool:
        """True while ``do_handshake()`` has more to do."""
        return self.phase is Phase.HANDSHAKING


# -- what the server's settings ask for ----------------------------------------

def context_of(server) -> "Optional[ssl.SSLContext]":
    """The server's ``tls_context``, or None when TLS is off."""
    return getattr(server, "tls_context", None)


def offered(channel) -> bool:
    """True if EHLO offers STARTTLS: a context is set and TLS is not on yet."""
    return context_of(channel.smtp_server) is not None and channel._tls_layer is None


def refusal_before_tls(channel, verb: str) -> Optional[str]:
    """The 530 for *verb* while the server requires STARTTLS first, else None."""
    if (channel._tls_layer is None and verb not in ALLOWED_BEFORE_TLS
            and getattr(channel.smtp_server, "require_starttls", False)
            and context_of(channel.smtp_server) is not None):
        return _replies.MUST_STARTTLS
    return None


def starttls_refusal(channel, arg) -> Optional[str]:
    """The reply refusing STARTTLS *arg* now, or None to go ahead (RFC 3207)."""
    if channel._tls_layer is not None:
        return _replies.TLS_ALREADY_ACTIVE
    if arg:
        return _replies.STARTTLS_SYNTAX
    if channel.mailfrom:
        return _replies.STARTTLS_IN_TRANSACTION
    return None


def server_context(certfile: str, keyfile: Optional[str] = None) -> "ssl.SSLContext":
    """A server context for the PEM *certfile* (and *keyfile*, if the key is apart).

    Raises ValueError with one line saying what is wrong: a file that
    cannot be read, no certificate in it, a key that does not match (or is
    encrypted: no passphrase is asked for).
    """
    if ssl is None:
        raise ValueError("TLS needs Python's ssl module, which this Python lacks")
    for flag, path in (("--tls-cert", certfile), ("--tls-key", keyfile)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise ValueError("cannot read %s %s: %s" % (
                flag, path, error.strerror or error)) from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if context.protocol is not ssl.PROTOCOL_TLS_SERVER:
        # Before Python 3.10 that context serves either side, and a
        # ticket count can only be set on a server-side one.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except ssl.SSLError as error:
        raise ValueError(_load_problem(certfile, keyfile, error)) from None
    # One TLS 1.3 session ticket per handshake, as Postfix's server issues
    # (OpenSSL's default is two): an SMTP client resumes one session at a
    # time, and each ticket adds about 8% to the handshake's CPU.
    context.num_tickets = 1
    return context


def _no_passphrase() -> bytes:
    # Without this, OpenSSL would ask for a passphrase on the terminal.
    raise ValueError("encrypted private keys are not supported")


def _load_problem(certfile: str, keyfile: Optional[str], error: "ssl.SSLError") -> str:
    reason = getattr(error, "reason", None) or str(error)
    key = keyfile or certfile
    if reason == "KEY_VALUES_MISMATCH":
        return "the key in %s does not match the certificate in %s" % (key, certfile)
    if "PEM" in str(error):
        reason = "no PEM certificate with an unencrypted private key found"
    return "cannot load the certificate %s and key %s: %s" % (certfile, key, reason)


# -- switching on ----------------------------------------------------------------

def start(channel) -> None:
    """STARTTLS was answered 220: cut the input, wrap once the 220 is sent."""
    channel._tls_layer = TLSLayer(implicit=False)
    interest_changed(channel)
    if not channel.producer_fifo:
        wrap(channel)


def start_implicit(channel) -> bool:
    """Implicit TLS: shake hands before the greeting.

    Returns False when the server does not use implicit TLS (greet now).
    """
    server = channel.smtp_server
    if not getattr(server, "smtps", False) or channel._tls_layer is not None:
        return False
    if context_of(server) is None:
        logger.error("smtps is on but tls_context is None: connection from %r closed",
                     getattr(channel, "peer", None))
        channel.close()
        return True
    channel._tls_layer = TLSLayer(implicit=True)
    wrap(channel)
    return True


def wrap(channel) -> None:
    """Wrap the channel's socket in place; the handshake follows on its events."""
    layer = channel._tls_layer
    try:
        sock = context_of(channel.smtp_server).wrap_socket(
            channel.socket, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError, AttributeError) as error:
        _failed(channel, "could not start TLS", error)
        return
    channel.socket = sock
    channel.conn = sock
    layer.phase = Phase.HANDSHAKING
    server = channel.smtp_server
    timeout = (getattr(server, "tls_handshake_timeout", HANDSHAKE_TIMEOUT)
               or getattr(server, "idle_timeout", None))
    layer.deadline = time.monotonic() + timeout if timeout else None
    interest_changed(channel)


def step(channel) -> None:
    """Take the handshake one step further (from a read or write event)."""
    layer = channel._tls_layer
    try:
        channel.socket.do_handshake()
    except ssl.SSLWantReadError:
        layer.want_write = False
        return
    except ssl.SSLWantWriteError:
        layer.want_write = True
        return
    except (OSError, ValueError) as error:
        _failed(channel, "TLS handshake failed", error)
        return
    layer.phase = Phase.ESTABLISHED
    layer.deadline = None
    layer.want_write = False
    channel.tls_active = True
    debug("TLS established:", repr(getattr(channel, "peer", None)),
          channel.socket.version(), channel.socket.cipher()[0])
    channel._touch()
    if layer.implicit:
        channel._greet()
    else:
        channel._tls_started()
    interest_changed(channel)
    if channel.connected and channel.socket.pending():
        channel.handle_read()  # decrypted with the handshake: no event will say so


def readable(channel) -> bool:
    """``readable()`` while TLS is not established yet; closes on the deadline."""
    layer = channel._tls_layer
    if layer.phase is Phase.SWITCHING:
        return False  # the next bytes are the ClientHello: read them through TLS
    if layer.deadline is not None and time.monotonic() > layer.deadline:
        _failed(channel, "TLS handshake timed out", None)
        return False
    return not layer.want_write


def _failed(channel, what: str, error) -> None:
    if channel._tls_layer is not None:
        channel._tls_layer.want_write = False  # closed: nothing to wait for
    peer = getattr(channel, "peer", None)
    reason = "" if error is None else ": %s" % (error,)
    logger.warning("%s with %r%s; connection closed", what, peer, reason)
    debug("%s with %r%s" % (what, peer, reason))
    channel.close()


# -- reading and writing through TLS --------------------------------------------

def recv(channel, size: int) -> bytes:
    """Read up to *size* bytes through TLS, and everything TLS holds decrypted.

    As asyncore's ``recv``: the end of the stream, or a connection the
    client broke, is b'' after ``handle_close``.  Raises BlockingIOError
    when TLS has nothing yet; returns b'' after closing the channel on a TLS
    error.
    """
    sock = channel.socket
    view = _receive_buffer(size)
    try:
        got = sock.recv_into(view, size)
    except WOULD_BLOCK:
        raise BlockingIOError() from None
    except _END_OF_STREAM:
        got = 0
    except ssl.SSLError as error:
        _failed(channel, "TLS error", error)
        return b""
    except OSError as error:
        if error.errno not in _DISCONNECTED:
            raise
        got = 0
    if not got:
        channel.handle_close()
        return b""
    got = _read_on(sock, view, got, size)
    if got >= BULK_READ:
        _acknowledge_now(sock)
    return bytes(view[:got])


# What asyncore's recv takes for a client that is gone.
_DISCONNECTED = frozenset((errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN,
                           errno.ECONNABORTED, errno.EPIPE, errno.EBADF))

# The most plaintext one TLS record holds (RFC 8446, 5.1; RFC 5246, 6.2.1),
# and so the most TLS can hold decrypted after a read (``pending()``).
RECORD_SIZE = 16384

# A TLS read returns at most one record, so a read event takes several.
# They go into one buffer per thread, reused, and leave it in one copy:
# 10% less CPU per MB than a bytes object per record joined once (A/B,
# 10 MiB messages).  Per thread, not per channel, as idle connections
# would each hold one.
_buffers = threading.local()


def _receive_buffer(size: int) -> memoryview:
    """This thread's receive buffer, room for *size* bytes and one record more."""
    view = getattr(_buffers, "view", None)
    if view is None or len(view) < size + RECORD_SIZE:
        view = _buffers.view = memoryview(bytearray(size + RECORD_SIZE))
    return view


def _read_on(sock, view: memoryview, got: int, size: int) -> int:
    """Fill *view* after its first *got* bytes without waiting; returns how many it holds.

    Up to *size* bytes in all, then what TLS holds decrypted: bytes TLS
    decrypted but nobody took are invisible to select/epoll (cpython#65629),
    and left behind the session would stall.  The end of the stream, or an
    error, is left for the next read event to see.
    """
    try:
        while got < size:
            more = sock.recv_into(view[got:], size - got)
            if not more:
                break
            got += more
        pending = sock.pending()
        if pending:
            got += sock.recv_into(view[got:], pending)
    except (OSError, ValueError):
        pass
    return got


# A TLS client sends a record (16 KiB) per write, less than a loopback
# segment can hold; with Nagle's algorithm on (smtplib's sockets, and most
# clients') each such write waits for the ACK of the one before, and Linux
# may delay that ACK by 40 ms.  After a read this large, more is likely on
# its way: the ACK goes out at once (measured: 10 MiB messages from a
# Nagle client stalled 40 ms one time in three without it).
BULK_READ = RECORD_SIZE
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _acknowledge_now(sock) -> None:
    if _QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass  # not TCP (a UNIX socket), or gone: nothing to acknowledge


def send(channel, base_send, data: bytes) -> int:
    """Send through TLS; "not now" is 0 bytes sent, a TLS error closes."""
    try:
        return base_send(channel, data)
    except WOULD_BLOCK:
        return 0
    except ssl.SSLError as error:
        _failed(channel, "TLS error", error)
        return 0


def send_close_notify(channel) -> None:
    """Tell the client TLS ends (close_notify), once, without waiting for its answer."""
    layer = channel._tls_layer
    if layer is None or not layer.established or layer.goodbye_said:
        return
    layer.goodbye_said = True
    try:
        channel.socket.unwrap()
    except (OSError, ValueError, AttributeError):
        pass  # ours is sent (or the client is gone); its answer is not awaited
