"""HAProxy's PROXY protocol, versions 1 and 2: a pure, incremental header parser.

Not to be confused with PureProxy (``_proxy.py``, an SMTP relay): this is the
header a TCP load balancer (HAProxy's ``send-proxy``/``send-proxy-v2``, AWS
NLB, stunnel...) puts in front of a relayed connection to tell the server who
the real client is.  The rules quoted below are from HAProxy's
``doc/proxy-protocol.txt``.

Feed the first bytes of a connection to a :class:`ProxyHeaderParser`, in any
split.  Each call answers :data:`NEED_MORE`, :class:`Done` (the header and the
bytes after it, which are the start of the SMTP session and come back
untouched) or :class:`Invalid` (with a reason for the log).  Nothing here
touches a socket, logs or reads a global; the channel decides what to do.

Also here: CRC-32C (the v2 checksum) and the trusted-proxy address check.
"""

import enum
import ipaddress
import re
import socket
import struct
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

Address = Tuple[str, int]
"""A socket-style ``(host, port)``; IPv6 hosts are text without brackets."""

TLV = Tuple[int, bytes]
"""A v2 type-length-value vector as ``(type, value)``."""

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# Registered v2 TLV types (section 2.2).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_TYPE_NETNS = 0x30

# The PP2_CLIENT_SSL bit of the SSL TLV's <client> field.
PP2_CLIENT_SSL = 0x01

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16

# "an opaque byte sequence of up to 128 bytes" (section 2.2.5)
_UNIQUE_ID_MAX = 128
_COMMANDS = {0x0: "LOCAL", 0x1: "PROXY"}

# "In practice, the following protocol bytes are expected": the family byte
# -> (its name, its address block length, the socket family whose
# addresses the server uses, or None when the real endpoints stay).  Only
# TCP is SMTP's transport: the others "fall back to the UNSPEC mode".
_V2_FAMILIES = {
    0x00: ("UNSPEC", 0, None),
    0x11: ("TCP4", 12, socket.AF_INET),
    0x12: ("UDP4", 12, None),
    0x21: ("TCP6", 36, socket.AF_INET6),
    0x22: ("UDP6", 36, None),
    0x31: ("UNIX_STREAM", 216, None),
    0x32: ("UNIX_DGRAM", 216, None),
}

# TLVs whose value this module reads: a second copy would leave two
# answers to one question, and a proxy never sends one.
_SINGLE_TLVS = (PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C,
                PP2_TYPE_UNIQUE_ID, PP2_TYPE_SSL)

# "exactly 4 integers in the range [0..255] inclusive written in decimal
# representation separated by exactly one dot [...] Heading zeroes are not
# permitted in front of numbers in order to avoid any possible confusion
# with octal numbers."
_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_OCTET_RE = re.compile(_OCTET)
_V1_IPV4 = re.compile(_OCTET + rb"(?:\." + _OCTET + rb"){3}")
# "the TCP source port represented as a decimal integer in the range
# [0..65535] inclusive.  Heading zeroes are not permitted"
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_PORT_PREFIX = re.compile(rb"(?:0|[1-9][0-9]{0,4})?")
# v1 TCP6 addresses are hexadecimal groups and colons; the dots are those
# of an IPv4-mapped tail (inet_ntop writes ::ffff:192.0.2.1, and so does
# HAProxy).  No zone index: '%' is not in the set.
_V1_IPV6_CHARS = re.compile(rb"[0-9A-Fa-f:.]*")
# More than four hexadecimal digits in a group, or a colon too many.
_V1_IPV6_TOO_LONG = re.compile(rb"[0-9A-Fa-f]{5}|:::")
_V1_IPV6_MAX = len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")
_V1_FAMILIES = (b"TCP4", b"TCP6", b"UNKNOWN")


class Mode(enum.Enum):
    """Which header versions a listener accepts."""

    V1 = "v1"
    """Only the text header (``PROXY TCP4 ...\\r\\n``)."""
    V2 = "v2"
    """Only the binary header (the 12-byte signature first)."""
    ANY = "any"
    """Either, told apart by the first byte."""


class SSLInfo(NamedTuple):
    """The v2 SSL TLV (type 0x20): how the client reached the proxy."""

    client: int
    """Bit field: 0x01 over SSL/TLS, 0x02 a certificate on this connection, 0x04 in the session."""
    verify: int
    """Zero if the client presented a certificate and it was verified."""
    tlvs: Tuple[TLV, ...]
    """The sub-TLVs: 0x21 version, 0x22 certificate CN, 0x23 cipher, ..."""

    @property
    def over_ssl(self) -> bool:
        """True if the client connected to the proxy over SSL/TLS."""
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def version(self) -> Optional[str]:
        """The TLS version the proxy negotiated (``TLSv1.3``), if sent."""
        value = find_tlv(self.tlvs, PP2_SUBTYPE_SSL_VERSION)
        return None if value is None else value.decode("ascii", "replace")

    @property
    def common_name(self) -> Optional[str]:
        """The CN of the client certificate's subject, if sent (UTF-8)."""
        value = find_tlv(self.tlvs, PP2_SUBTYPE_SSL_CN)
        return None if value is None else value.decode("utf-8", "replace")


class ProxyHeader(NamedTuple):
    """A parsed, valid PROXY protocol header."""

    version: int
    """1 (text) or 2 (binary)."""
    command: str
    """``"PROXY"`` (relayed for a client) or ``"LOCAL"`` (v2: the proxy's own connection)."""
    family: str
    """v1: TCP4, TCP6, UNKNOWN; v2: TCP4, TCP6, UDP4, UDP6, UNIX_STREAM, UNIX_DGRAM, UNSPEC."""
    source: Optional[Address] = None
    """The client's ``(host, port)``; None when the real endpoints stay."""
    destination: Optional[Address] = None
    """The address the client connected to; None when the real endpoints stay."""
    tlvs: Tuple[TLV, ...] = ()
    """Every v2 TLV in order, the ones this module reads and the ones it skips."""
    ssl: Optional[SSLInfo] = None
    """The SSL TLV, if the proxy sent one."""

    @property
    def local(self) -> bool:
        """True if the connection's real endpoints are to be kept.

        So it is for a v2 LOCAL header (a health check), a v1 UNKNOWN line,
        and a v2 family other than TCP over IPv4 or IPv6.
        """
        return self.source is None

    @property
    def authority(self) -> Optional[str]:
        """The AUTHORITY TLV (0x02): the host name the client asked for (TLS SNI)."""
        value = find_tlv(self.tlvs, PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8")

    @property
    def unique_id(self) -> Optional[bytes]:
        """The UNIQUE_ID TLV (0x05): the proxy's opaque identifier of the connection."""
        return find_tlv(self.tlvs, PP2_TYPE_UNIQUE_ID)


class NeedMore:
    """The bytes so far are a valid beginning of a header: feed more."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = NeedMore()
"""The one :class:`NeedMore` instance."""


class Done(NamedTuple):
    """A complete, valid header and the bytes that followed it."""

    header: ProxyHeader
    rest: bytes
    """The start of the session proper, exactly as received."""


class Invalid(NamedTuple):
    """Not a valid header: the connection is to be closed."""

    reason: str
    """What was wrong, in fixed words (no peer bytes), for the log."""


Result = Union[NeedMore, Done, Invalid]


class _Malformed(Exception):
    """Raised inside the parser; its message becomes :class:`Invalid`'s reason."""


def find_tlv(tlvs: Sequence[TLV], kind: int) -> Optional[bytes]:
    """The value of the first TLV of type *kind* in *tlvs*, or None."""
    for tlv_type, value in tlvs:
        if tlv_type == kind:
            return value
    return None


class ProxyHeaderParser:
    """Incremental parser of the PROXY header at the start of one connection.

    "The receiver MUST NOT start processing the connection before it
    receives a complete and valid PROXY protocol header."  Call
    :meth:`feed` with each chunk received until the answer is not
    :data:`NEED_MORE`; the parser never holds back bytes past the header.
    """

    def __init__(self, mode: Union[Mode, str] = Mode.ANY) -> None:
        self.mode = Mode(mode)
        self._buffer = bytearray()
        self._finished = False

    def feed(self, data: bytes) -> Result:
        """Add *data*; answer NEED_MORE, Done or Invalid.

        A Done or Invalid answer is final: feeding again is a caller's error
        and raises RuntimeError (later bytes belong to the session).
        """
        if self._finished:
            raise RuntimeError("the PROXY header was already parsed")
        self._buffer += data
        try:
            result = self._examine(bytes(self._buffer))
        except _Malformed as error:
            result = Invalid(str(error))
        if result is not NEED_MORE:
            self._finished = True
            self._buffer = bytearray()
        return result

    def _examine(self, data: bytes) -> Result:
        version = _detect(data, self.mode)
        if version == 1:
            return _parse_v1(data)
        if version == 2:
            return _parse_v2(data)
        return NEED_MORE


def header_length(data: bytes) -> Optional[int]:
    """The length of the header that *data* starts with, once its first bytes tell.

    None while they do not tell yet (or *data* is no header: the parser says
    why).  A v2 header is its 16 bytes and the length they give; a v1 line
    ends at its CRLF.  Lets a reader take the header and not one byte more
    (the bytes after it may be a TLS handshake that TLS itself must read).
    """
    if data.startswith(V2_SIGNATURE) and len(data) >= 16:
        return 16 + int.from_bytes(data[14:16], "big")
    if data.startswith(b"PROXY"):
        end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end >= 0:
            return end + 2
    return None


def parse_header(data: bytes, mode: Union[Mode, str] = Mode.ANY) -> Result:
    """Parse a header from *data* received at once (see :class:`ProxyHeaderParser`)."""
    return ProxyHeaderParser(mode).feed(data)


def _starts_like(data: bytes, prefix: bytes) -> bool:
    """True if *data* and *prefix* agree on their common length."""
    common = min(len(data), len(prefix))
    return data[:common] == prefix[:common]


_MODE_WORDS = {Mode.V1: "v1", Mode.V2: "v2", Mode.ANY: "v1 or v2"}


def _detect(data: bytes, mode: Mode) -> Optional[int]:
    """The header version *data* starts, or None while it could still be either.

    "if the incoming byte count is 16 or above and the 13 first bytes match
    the protocol signature block followed by the protocol version 2 [...]
    otherwise, if [...] the 5 first characters match the US-ASCII
    representation of "PROXY" then the protocol must be parsed as version 1
    [...] otherwise the protocol is not covered by this specification and
    the connection must be dropped."  The two differ from the first byte, so
    an SMTP client's ``EHLO`` is refused on its ``E``.
    """
    v1 = mode is not Mode.V2 and _starts_like(data, V1_PREFIX)
    v2 = mode is not Mode.V1 and _starts_like(data, V2_SIGNATURE)
    if v1 and v2:
        return None
    if v1:
        return 1
    if v2:
        return 2
    raise _Malformed("not a PROXY protocol %s header" % _MODE_WORDS[mode])


# --- version 1 ------------------------------------------------------------


def _parse_v1(data: bytes) -> Result:
    """Parse the text header: ``PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n``.

    "If the CRLF sequence is not found in the first 107 characters, the
    receiver should declare the line invalid."  Every field is checked as
    soon as it is complete, and the one being received as soon as it cannot
    become valid: "It is recommended to abort the connection as soon as
    possible so that the sender gets a chance to notice the anomaly".
    """
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end >= 0:
        line, complete = data[:end], True
    elif data.endswith(b"\r"):
        # Only the LF can follow: the line is complete as it stands.
        line, complete = data[:-1], True
    else:
        line, complete = data, False
    # "The receiver must not tolerate a single CR or LF character to end
    # the line when a complete CRLF sequence is expected."
    if b"\r" in line or b"\n" in line:
        raise _Malformed("v1: a lone CR or LF in the line")
    fields = line.split(b" ")
    _v1_check_fields(fields, complete)
    # The CRLF must end by byte 107, so its CR comes by byte 106.
    if end < 0:
        if data[V1_MAX_LENGTH - 2:V1_MAX_LENGTH - 1] not in (b"", b"\r"):
            raise _Malformed("v1: no CRLF within the first 107 bytes")
        return NEED_MORE
    return Done(_v1_header(fields), data[end + 2:])


def _v1_check_fields(fields: List[bytes], complete: bool) -> None:
    """Check each field of the line; the last one as a prefix if *complete* is false.

    "Any sequence which does not exactly match the protocol must be
    discarded and cause the receiver to abort the connection."
    """
    last = len(fields) - 1
    family = fields[1] if len(fields) > 1 else b""
    for index, field in enumerate(fields):
        if index == 2 and family == b"UNKNOWN":
            # "For "UNKNOWN", the rest of the line before the CRLF may be
            # omitted by the sender, and the receiver must ignore anything
            # presented before the CRLF is found."
            return
        if index > 5:
            raise _Malformed("v1: more than six fields")
        _V1_FIELD_CHECKS[index](field, complete or index < last, family)
    if complete and family != b"UNKNOWN" and len(fields) != 6:
        raise _Malformed("v1: the line lacks addresses or ports")


def _v1_keyword_checked(field: bytes, whole: bool, family: bytes) -> None:
    """The first field, ``PROXY`` and its space, was checked by _detect()."""


def _v1_check_family(field: bytes, whole: bool, family: bytes) -> None:
    """"only "TCP4" [...] and "TCP6" [...] are allowed", or "UNKNOWN"."""
    if whole:
        good = field in _V1_FAMILIES
    else:
        good = any(name.startswith(field) for name in _V1_FAMILIES)
    if not good:
        raise _Malformed("v1: the protocol is not TCP4, TCP6 or UNKNOWN")


def _v1_check_address(field: bytes, whole: bool, family: bytes) -> None:
    """"The advertised protocol family dictates what format to use"."""
    if whole:
        _v1_host(field, family)
        return
    if family == b"TCP4":
        # Every prefix of a valid octet is a valid octet.
        octets = field.split(b".")
        good = len(octets) <= 4 and all(_OCTET_RE.fullmatch(octet) for octet in octets[:-1])
        good = good and (not octets[-1] or _OCTET_RE.fullmatch(octets[-1]) is not None)
    else:
        good = (_V1_IPV6_CHARS.fullmatch(field) is not None and len(field) <= _V1_IPV6_MAX
                and _V1_IPV6_TOO_LONG.search(field) is None)
    if not good:
        raise _Malformed("v1: an address is not a %s address" % family.decode("ascii"))


def _v1_check_port(field: bytes, whole: bool, family: bytes) -> None:
    """A decimal port 0 to 65535 without heading zeroes (nor sign, nor blank)."""
    pattern = _V1_PORT if whole else _V1_PORT_PREFIX
    if not pattern.fullmatch(field) or (field and int(field) > 65535):
        raise _Malformed("v1: a port is not a decimal 0-65535 without heading zeroes")


_V1_FIELD_CHECKS = (_v1_keyword_checked, _v1_check_family, _v1_check_address,
                    _v1_check_address, _v1_check_port, _v1_check_port)


def _v1_host(field: bytes, family: bytes) -> str:
    """The socket-style text of a v1 address of *family*, or _Malformed."""
    bad = _Malformed("v1: an address is not a %s address" % family.decode("ascii"))
    if family == b"TCP4":
        if not _V1_IPV4.fullmatch(field):
            raise bad
        return field.decode("ascii")
    if not _V1_IPV6_CHARS.fullmatch(field):
        raise bad
    # The dotted tail is held to the IPv4 rule too: some Pythons'
    # ipaddress accept heading zeroes there.
    if b"." in field and not _V1_IPV4.fullmatch(field.rpartition(b":")[2]):
        raise bad
    try:
        packed = ipaddress.IPv6Address(field.decode("ascii")).packed
    except ValueError:
        raise bad from None
    return socket.inet_ntop(socket.AF_INET6, packed)


def _v1_header(fields: List[bytes]) -> ProxyHeader:
    """The header of a complete, checked v1 line split into *fields*."""
    family = fields[1]
    if family == b"UNKNOWN":
        return ProxyHeader(1, "PROXY", "UNKNOWN")
    return ProxyHeader(
        1, "PROXY", family.decode("ascii"),
        source=(_v1_host(fields[2], family), int(fields[4])),
        destination=(_v1_host(fields[3], family), int(fields[5])),
    )


# --- version 2 ------------------------------------------------------------


def _parse_v2(data: bytes) -> Result:
    """Parse the binary header: signature, version/command, family, length, block.

    "the length of the protocol header in bytes is always exactly 16 + this
    value"; the fixed part is checked byte by byte as it arrives, the
    address block and TLVs once all of it is there ("The receiver must not
    start to parse an address before the whole address block is received").
    """
    _v2_check_fixed(data)
    if len(data) < V2_FIXED_LENGTH:
        return NEED_MORE
    (length,) = struct.unpack_from("!H", data, 14)
    _v2_check_length(data[12], data[13], length)
    total = V2_FIXED_LENGTH + length
    if len(data) < total:
        return NEED_MORE
    return Done(_v2_header(data[:total]), data[total:])


def _v2_check_fixed(data: bytes) -> None:
    """Check the version/command and family bytes as soon as they are in *data*."""
    if len(data) > 12:
        version, command = data[12] >> 4, data[12] & 0x0F
        # "it must always be sent as \x2 and the receiver must only accept
        # this value."
        if version != 2:
            raise _Malformed("v2: the version is not 2")
        # "other values are unassigned and must not be emitted by senders.
        # Receivers must drop connections presenting unexpected values here."
        if command not in _COMMANDS:
            raise _Malformed("v2: the command is neither LOCAL nor PROXY")
    # "other values are unspecified and must not be emitted in version 2 of
    # this protocol and must be rejected as invalid by receivers."
    if len(data) > 13 and data[13] not in _V2_FAMILIES:
        raise _Malformed("v2: unknown address family or transport protocol")


def _v2_check_length(ver_cmd: int, family: int, length: int) -> None:
    """The block must hold the family's addresses.

    A LOCAL header may have none: "When a sender presents a LOCAL
    connection, it should not present any address so it sets this field to
    zero."  Otherwise the family fixes the block's start: "Address length
    is 2*4 + 2*2 = 12 bytes" (IPv4), 36 (IPv6), 216 (UNIX).
    """
    local_without_addresses = ver_cmd & 0x0F == 0x0 and length == 0
    if length < _V2_FAMILIES[family][1] and not local_without_addresses:
        raise _Malformed("v2: the length is shorter than the addresses")


def _v2_header(header: bytes) -> ProxyHeader:
    """The header of a complete v2 *header* whose fixed part was checked."""
    command = _COMMANDS[header[12] & 0x0F]
    name, size, socket_family = _V2_FAMILIES[header[13]]
    block = header[V2_FIXED_LENGTH:]
    if not block:
        return ProxyHeader(2, command, name)
    tlvs = _v2_tlvs(header, V2_FIXED_LENGTH + size)
    ssl_value = find_tlv(tlvs, PP2_TYPE_SSL)
    ssl = None if ssl_value is None else _ssl_info(ssl_value)
    if command == "LOCAL" or socket_family is None:
        # LOCAL: "the receiver [...] must use the real connection endpoints
        # and discard the protocol block including the family which is
        # ignored."  Other families: "The receiver should ignore address
        # information."
        return ProxyHeader(2, command, name, tlvs=tlvs, ssl=ssl)
    half = (size - 4) // 2
    ports = struct.unpack_from("!HH", block, 2 * half)
    return ProxyHeader(
        2, command, name,
        source=(socket.inet_ntop(socket_family, block[:half]), ports[0]),
        destination=(socket.inet_ntop(socket_family, block[half:2 * half]), ports[1]),
        tlvs=tlvs, ssl=ssl,
    )


def _walk_tlvs(data: bytes, start: int, what: str) -> List[Tuple[int, int, int]]:
    """``(type, value start, value end)`` of each TLV in ``data[start:]``.

    "The first byte is the Type of the vector.  The second two bytes
    represent the length in bytes of the value (not included the Type and
    Length bytes), and following the length field is the number of bytes
    specified by the length."  A vector running past the end is malformed.
    """
    found = []
    offset = start
    while offset < len(data):
        if len(data) - offset < 3:
            raise _Malformed("v2: a truncated %s" % what)
        (length,) = struct.unpack_from("!H", data, offset + 1)
        end = offset + 3 + length
        if end > len(data):
            raise _Malformed("v2: a %s runs past the end of the header" % what)
        found.append((data[offset], offset + 3, end))
        offset = end
    return found


def _v2_tlvs(header: bytes, start: int) -> Tuple[TLV, ...]:
    """The TLVs after the addresses, checked (the CRC32C among them)."""
    spans = _walk_tlvs(header, start, "TLV")
    tlvs = tuple((kind, header[begin:end]) for kind, begin, end in spans)
    kinds = [kind for kind, _ in tlvs]
    for kind in _SINGLE_TLVS:
        if kinds.count(kind) > 1:
            raise _Malformed("v2: TLV 0x%02x appears twice" % kind)
    for kind, begin, end in spans:
        _V2_TLV_CHECKS.get(kind, _no_check)(header, begin, end)
    return tlvs


def _no_check(header: bytes, begin: int, end: int) -> None:
    """TLVs this module does not read: "A receiver may choose to skip over and ignore" them."""


def _check_crc32c(header: bytes, begin: int, end: int) -> None:
    """"replace the 32 bits of the checksum field in the received PROXY header
    with all '0's and calculate a CRC32c checksum value of the whole PROXY
    header. [...] If it is not [the same], the receiver MUST treat the TCP
    connection providing the header as invalid."
    """
    if end - begin != 4:
        raise _Malformed("v2: the CRC32C TLV is not 4 bytes long")
    zeroed = header[:begin] + bytes(4) + header[end:]
    if crc32c(zeroed) != int.from_bytes(header[begin:end], "big"):
        raise _Malformed("v2: the CRC32C checksum does not match")


def _check_authority(header: bytes, begin: int, end: int) -> None:
    """"Contains the host name value passed by the client, as an UTF8-encoded string"."""
    try:
        header[begin:end].decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("v2: the AUTHORITY TLV is not UTF-8") from None


def _check_unique_id(header: bytes, begin: int, end: int) -> None:
    """"an opaque byte sequence of up to 128 bytes"."""
    if end - begin > _UNIQUE_ID_MAX:
        raise _Malformed("v2: the UNIQUE_ID TLV is longer than 128 bytes")


def _check_ssl(header: bytes, begin: int, end: int) -> None:
    """The SSL TLV: one byte <client>, four bytes <verify>, then sub-TLVs."""
    _ssl_info(header[begin:end])


_V2_TLV_CHECKS = {
    PP2_TYPE_AUTHORITY: _check_authority,
    PP2_TYPE_CRC32C: _check_crc32c,
    PP2_TYPE_UNIQUE_ID: _check_unique_id,
    PP2_TYPE_SSL: _check_ssl,
}


def _ssl_info(value: bytes) -> SSLInfo:
    """Decode the SSL TLV's *value* (``struct pp2_tlv_ssl``, packed)."""
    if len(value) < 5:
        raise _Malformed("v2: the SSL TLV is shorter than 5 bytes")
    (verify,) = struct.unpack_from("!I", value, 1)
    spans = _walk_tlvs(value, 5, "SSL sub-TLV")
    subs = tuple((kind, value[begin:end]) for kind, begin, end in spans)
    return SSLInfo(value[0], verify, subs)


# --- CRC-32C ----------------------------------------------------------------

# The Castagnoli polynomial 0x1EDC6F41, bit-reversed: CRC-32C processes the
# least significant bit of each byte first (RFC 3720, section 12.1).
_CASTAGNOLI_REVERSED = 0x82F63B78


def _crc32c_table() -> Tuple[int, ...]:
    """The CRC of each byte value, for the byte-at-a-time loop."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CASTAGNOLI_REVERSED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of *data*, continuing from *crc* (the CRC of what came before).

    Register preset to all ones and the result complemented, as RFC 3720
    (B.4) and RFC 4960 (appendix B) specify; ``crc32c(b"123456789")`` is
    0xE3069283.
    """
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- trusted proxies --------------------------------------------------------


def parse_networks(text: str) -> Tuple[Network, ...]:
    """Parse ``CIDR[,CIDR...]`` (``10.0.0.0/8,::1``); raise ValueError saying what is wrong.

    A bare address is a network of one.  Host bits set after the prefix
    (``10.0.0.1/8``) are refused rather than silently widened.
    """
    networks = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError("empty entry in the network list %r" % text)
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as error:
            raise ValueError("%r is not a network (CIDR such as 10.0.0.0/8 or "
                             "2001:db8::/32): %s" % (item, error)) from None
    return tuple(networks)


def is_trusted(peer: Union[str, Tuple[Any, ...]], networks: Sequence[Network]) -> bool:
    """True if *peer* (a host or a getpeername() tuple) is in one of *networks*.

    An IPv4-mapped IPv6 peer (``::ffff:127.0.0.1``, what a dual-stack
    listener reports for an IPv4 client) counts as its IPv4 address.  A
    peer that is no IP address (an AF_UNIX path) is not trusted.
    """
    host = peer if isinstance(peer, str) else peer[0]
    if not isinstance(host, str):
        return False
    try:
        # A zone index (fe80::1%eth0) names the link, not the host.
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    candidates = [address]
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        candidates.append(mapped)
    return any(candidate in network
               for candidate in candidates for network in networks)
