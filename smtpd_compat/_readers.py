"""What reads a connection's input before the SMTP session: the PROXY header.

With the server setting ``proxy_protocol`` on, a load balancer such as
HAProxy (``send-proxy``/``send-proxy-v2``) puts a PROXY protocol header in
front of each relayed connection, naming the real client.  The channel
then reads that header first (``_haproxy`` parses it) and greets only
after it:

* a valid header: the client it names becomes ``channel.peer`` (so
  ``process_message`` and X-Peer see the client, not the proxy); the
  proxy's own address stays in ``channel.proxy_peer`` and the parsed header
  in ``channel.proxy_header``.  A v2 LOCAL header (HAProxy's health checks)
  or a v1 UNKNOWN line keeps the real endpoints.  Bytes after the header
  are the client's first SMTP input and are kept.
* a malformed header, none within ``proxy_header_timeout`` seconds, or a
  connection from a peer outside ``proxy_trusted``: logged, and the
  connection is closed without a greeting.

"The receiver MUST NOT start processing the connection before it receives
a complete and valid PROXY protocol header" (HAProxy's proxy-protocol.txt).
"""

import functools
import ipaddress
import logging
import socket
import time
from typing import Optional, Tuple

from ._haproxy import (
    NEED_MORE,
    Done,
    Invalid,
    Mode,
    Network,
    ProxyHeaderParser,
    header_length,
    is_trusted,
    parse_networks,
)
from ._namespace import debug

logger = logging.getLogger("smtpd_compat")

# Seconds a proxy has to send the header once it connected.
PROXY_HEADER_TIMEOUT = 5.0

# Whom a server trusts to send the header when ``proxy_trusted`` is None: a
# proxy on the same machine.  A header from anyone else could claim any
# client address, so wider trust is the operator's explicit choice.
LOOPBACK = parse_networks("127.0.0.0/8,::1")

_OFF = (None, False, "", "off")


def proxy_mode(server) -> Optional[Mode]:
    """The header versions *server* expects (``proxy_protocol``); None when off.

    Raises ValueError for a value that is neither off nor v1, v2 or any.
    """
    value = getattr(server, "proxy_protocol", None)
    if value in _OFF:
        return None
    return Mode(value)


def trusted_networks(server) -> Tuple[Network, ...]:
    """The networks *server* takes a header from (``proxy_trusted``).

    ``proxy_trusted`` is ``CIDR[,CIDR...]`` text or a sequence of networks
    (or their text); None means loopback only.
    """
    value = getattr(server, "proxy_trusted", None)
    if value is None:
        return LOOPBACK
    if not isinstance(value, (str, tuple)):
        value = tuple(value)
    return _networks(value)


@functools.lru_cache(maxsize=32)
def _networks(value) -> Tuple[Network, ...]:
    if isinstance(value, str):
        return parse_networks(value)
    return tuple(ipaddress.ip_network(item) for item in value)


class ProxyHeaderReader:
    """The channel's input reader until the PROXY header is complete.

    Holds only the parser, not the channel: the channel holds it (as
    ``_input_reader``) and hands itself in with every call.
    """

    __slots__ = ("_parser",)

    def __init__(self, mode: Mode) -> None:
        self._parser = ProxyHeaderParser(mode)

    def __call__(self, channel, data: bytes) -> None:
        """*data* arrived on *channel*: parse on, and act once the header is decided."""
        result = self._parser.feed(data)
        if result is NEED_MORE:
            return
        channel._input_reader = None
        if isinstance(result, Invalid):
            _refuse(channel, result.reason)
        elif isinstance(result, Done):
            _accept(channel, result)

    def timed_out(self, channel) -> None:
        """No complete header came in time."""
        channel._input_reader = None
        _refuse(channel, "no complete header in time")


class ExactProxyHeaderReader(ProxyHeaderReader):
    """A header reader that reads nothing past the header (implicit TLS).

    Under ``smtps`` the bytes after the header are the client's TLS
    handshake, which TLS must read from the socket itself: a proxy that
    writes both at once must not have the handshake taken by this reader.
    """

    __slots__ = ("_seen",)

    def __init__(self, mode: Mode) -> None:
        super().__init__(mode)
        self._seen = b""

    def read_limit(self, sock, size: int) -> int:
        """How much of the input to read now: at most the rest of the header."""
        try:
            peeked = sock.recv(size, socket.MSG_PEEK)
        except (OSError, AttributeError, TypeError, ValueError):
            return size  # the read itself reports the problem
        length = header_length(self._seen + peeked)
        if length is None:
            return size  # all of it is the header (or not a header at all)
        return max(1, length - len(self._seen))

    def __call__(self, channel, data: bytes) -> None:
        self._seen += data
        ProxyHeaderReader.__call__(self, channel, data)


def start(channel) -> bool:
    """Read a PROXY header first if the channel's server expects one.

    Returns False when ``proxy_protocol`` is off (greet now, as smtpd);
    True when the greeting waits for the header, or the peer was refused.
    """
    server = channel.smtp_server
    mode = proxy_mode(server)
    if mode is None:
        return False
    channel.proxy_peer = channel.peer
    if not is_trusted(channel.peer, trusted_networks(server)):
        _refuse(channel, "not a trusted proxy (see proxy_trusted)")
        return True
    exact = getattr(server, "smtps", False)
    channel._input_reader = (ExactProxyHeaderReader if exact else ProxyHeaderReader)(mode)
    timeout = getattr(server, "proxy_header_timeout", PROXY_HEADER_TIMEOUT)
    channel._deadline = time.monotonic() + timeout if timeout else None
    return True


def _accept(channel, done: Done) -> None:
    header = done.header
    channel.proxy_header = header
    if not header.local:
        channel.peer = header.source
    debug("PROXY header: client", repr(channel.peer), "via", repr(channel.proxy_peer))
    channel._deadline = None  # the header's; the session's own starts now
    channel._touch()
    channel._greet()
    if done.rest:
        channel.ac_in_buffer += done.rest
        channel._process_input()


def _refuse(channel, reason: str) -> None:
    logger.warning("PROXY header from %r refused: %s; closed without a greeting",
                   channel.proxy_peer, reason)
    debug("PROXY header refused:", repr(channel.proxy_peer), reason)
    channel.close()
