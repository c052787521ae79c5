"""Pure functions for the SMTP wire format: no sockets, no module globals.

The channel calls these and alone decides which reply a failure gets, so the
reply policy lives in one place and every rule here is unit-tested directly.
"""

import ipaddress
import re
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import AnyStr, Dict, List, NamedTuple, Optional, Tuple, Union

CRLF = b"\r\n"
_LINE_END = re.compile(rb"\r\n|\r|\n")

# What the email header parser raises on malformed addresses, in place of
# returning an empty result (CPython bpo-27931, bpo-32178 and relatives),
# while parsing or when the result's addr_spec is read: IndexError for
# '<"' everywhere, AttributeError for '< b\xe9@[' on 3.8.
_ADDRESS_PARSER_ERRORS = (HeaderParseError, AttributeError, IndexError, ValueError)

# ``<local@domain>`` where both halves are RFC 5322 dot-atoms of ASCII atext:
# the shape nearly every client sends.  The email parser's answer for it is
# the text between the brackets (and the rest without its leading blanks), so
# it is taken without running the parser,
# which costs more than the rest of a MAIL or RCPT command together.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = _ATEXT + r"(?:\." + _ATEXT + r")*"
_PLAIN_ANGLE_ADDRESS = re.compile("<(" + _DOT_ATOM + "@" + _DOT_ATOM + ")>")

# RFC 5321, section 4.1.2: no production of the address grammar (Dot-string,
# qtextSMTP, quoted-pairSMTP, Domain, address literals) admits a control
# character, not even a tab.
_ADDRESS_CONTROL = re.compile("[\x00-\x1f\x7f]")

# RFC 5321, section 4.2: "textstring = 1*(%d09 / %d32-126)"; reply text is
# printable ASCII and tab.  Non-ASCII is escaped where the reply is encoded.
_REPLY_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_NAMED_ESCAPES = {"\r": "\\r", "\n": "\\n"}


def split_command(line: str) -> Tuple[str, Optional[str]]:
    """Split a command line into its verb and its argument.

    The verb is upper-cased and the argument stripped, as smtpd does; a line
    without a space has the argument None.  Only ASCII verbs are upper-cased:
    Unicode case mapping would turn ``QUıT`` (dotless i) into ``QUIT``, so a
    non-ASCII verb is returned as it came and matches no command.
    """
    verb, space, arg = line.partition(" ")
    if verb.isascii():
        verb = verb.upper()
    if not space:
        return verb, None
    return verb, arg.strip()


def strip_keyword(keyword: str, arg: str) -> str:
    """Remove a leading ``FROM:``/``TO:`` (any case) and the blanks after it.

    Returns '' when *arg* does not start with *keyword*.
    """
    if arg[: len(keyword)].upper() == keyword:
        return arg[len(keyword):].strip()
    return ""


def parse_address(arg: str) -> Tuple[str, str]:
    """Parse the address at the start of *arg*; return (addr-spec, rest).

    Accepts what smtpd accepts (with or without angle brackets, comments and
    source routes dropped, ``<>`` kept as '<>').  Returns ('', '') for an
    empty or malformed address, including the inputs that make the email
    parser raise and addresses holding a control character (a bare CR or
    LF, a NUL, an ESC...), which no address may contain and which could
    otherwise be injected into logs, mailboxes or an upstream SMTP command.
    """
    if not arg:
        return "", ""
    plain = _PLAIN_ANGLE_ADDRESS.match(arg)
    if plain:
        rest = arg[plain.end():]
        if rest[:1] in (" ", "\t"):
            rest = rest.lstrip()  # the parser drops folding white space after ">"
        if not rest.startswith("("):  # a comment there is the parser's to drop
            return plain.group(1), rest
    return _parse_address_with_email_parser(arg)


def _parse_address_with_email_parser(arg: str) -> Tuple[str, str]:
    try:
        if arg.lstrip().startswith("<"):
            address, rest = get_angle_addr(arg)
        else:
            address, rest = get_addr_spec(arg)
        if not address:
            return "", rest
        addr_spec = address.addr_spec
    except _ADDRESS_PARSER_ERRORS:
        return "", ""
    if has_address_control(addr_spec):
        return "", ""
    return addr_spec, rest


def has_address_control(text: str) -> bool:
    """True if *text* holds a character that no RFC 5321 address may contain.

    Those are the C0 controls (tab included) and DEL.
    """
    return _ADDRESS_CONTROL.search(text) is not None


def parse_parameters(params: List[str]) -> Optional[Dict[str, Union[str, bool]]]:
    """Turn ``['SIZE=20', 'SMTPUTF8']`` into ``{'SIZE': '20', 'SMTPUTF8': True}``.

    Returns None unless every parameter looks like RFC 1869's
    ``esmtp-keyword ["=" esmtp-value]`` (alphanumeric keyword, non-empty value).
    """
    result: Dict[str, Union[str, bool]] = {}
    for param in params:
        keyword, equals, value = param.partition("=")
        if not keyword.isalnum() or (equals and not value):
            return None
        result[keyword] = value if equals else True
    return result


def is_size_value(value: Union[str, bool]) -> bool:
    """True if a SIZE parameter value is a plain ASCII decimal number.

    ``str.isdigit`` alone accepts '²' (which ``int`` rejects) and Arabic-Indic
    digits; a bare ``SIZE`` (value True) is no number either.
    """
    return isinstance(value, str) and value.isascii() and value.isdigit()


def unstuff(data: AnyStr, stuffed: bool = True) -> AnyStr:
    """Undo RFC 5321 §4.5.2 dot-stuffing and turn CRLF line ends into LF.

    *data* is the message as received, without the final CRLF "." CRLF.
    Each CRLF-delimited line that starts with "." loses that first dot; bare
    CR and bare LF are kept as they are.  Same result as smtpd's line loop,
    without a Python-level loop per line.  ``stuffed=False`` says *data* has
    no CRLF "." (see ``find_data_end``): that pass over it is skipped.
    """
    if isinstance(data, str):
        crlf, dot = "\r\n", "."
    else:
        crlf, dot = b"\r\n", b"."
    if data.startswith(dot):
        data = data[1:]
    if stuffed:
        data = data.replace(crlf + dot, crlf)
    return crlf_to_lf(data)


# A CR that does not start a CRLF: where it is absent, deleting every CR is
# the same as turning every CRLF into LF.
_LONE_CR = re.compile(rb"\r(?!\n)")


def crlf_to_lf(data: AnyStr) -> AnyStr:
    """*data* with every CRLF turned into LF; bare CR and bare LF stay.

    For bytes without a bare CR (nearly every message) the CRs are deleted,
    after a search for a bare CR.  Deleting one byte value finds each with
    memchr and copies the runs between: with the search, a quarter of what
    replacing the two-byte CRLF costs at 998-octet lines, a third at 76
    (and about the same at 10).
    """
    if isinstance(data, str):
        return data.replace("\r\n", "\n")
    if _LONE_CR.search(data) is None:
        return data.replace(b"\r", b"")
    return data.replace(CRLF, b"\n")


_DATA_END = b"\r\n.\r\n"
_LINE_DOT = b"\r\n."


def find_data_end(buffer: bytes, start: int = 0) -> Tuple[int, bool]:
    """Find CRLF "." CRLF, the end of DATA, in *buffer* from *start*.

    Returns (its index or -1, stuffed): *stuffed* is True when a line that
    starts with "." (CRLF "." not followed by CRLF: a dot-stuffed line) comes
    before it, or before the end of *buffer* when it is not there.  The same
    search finds both, so a message without such lines needs no pass of its
    own to undo dot-stuffing.  CRLF "." or CRLF "." CR at the very end of
    *buffer* is neither yet: it may become the end of data when more comes
    (the caller keeps those bytes and searches them again).
    """
    index = find_line_dot(buffer, start)
    if index < 0:
        return -1, False
    after = buffer[index + 3:index + 5]
    if after == CRLF:
        return index, False
    if len(after) < 2 and CRLF.startswith(after):
        return -1, False
    # No CRLF "." CRLF starts inside this CRLF "." or before it.
    return buffer.find(_DATA_END, index + 3), True


# Dots find_line_dot looks at one by one before it searches for CRLF "."
# instead: text with many dots costs at most these few steps more.
_DOTS_TRIED = 4


def find_line_dot(buffer: bytes, start: int) -> int:
    """``buffer.find(b"\\r\\n.", start)``, quicker where dots are rare.

    A one-byte search runs at memchr's speed, about ten times that of a
    three-byte one, and message bulk (base64 attachments, long text lines)
    has few dots or none: each dot found is checked for the CRLF before it.
    """
    dot = buffer.find(b".", start + 2)
    for _ in range(_DOTS_TRIED):
        if dot < 0:
            return -1
        if buffer[dot - 2:dot] == CRLF:
            return dot - 2
        dot = buffer.find(b".", dot + 1)
    return -1 if dot < 0 else buffer.find(_LINE_DOT, dot - 2)


# RFC 3030: "chunk-size ::= 1*DIGIT".  2**64 has 20 digits: a longer count
# is no chunk any peer sends, and int() of a long digit string is slow
# (refused past 4300 digits from 3.11 on).
_MAX_CHUNK_SIZE_DIGITS = 20


class BdatArguments(NamedTuple):
    """A BDAT command's argument, read by :func:`parse_bdat`.

    *size* is the chunk's octet count, or None when none could be read (the
    chunk that follows cannot be skipped then).  *last* is true for the
    ``LAST`` end marker; *well_formed* is false for anything that is not
    exactly ``chunk-size [SP "LAST"]``.
    """

    size: Optional[int]
    last: bool
    well_formed: bool


def parse_bdat(arg: Optional[str]) -> BdatArguments:
    """Read ``chunk-size [SP end-marker]`` (RFC 3030, section 2), the BDAT argument.

    The size is ASCII digits only (no sign, no underscore, no other
    script's digits, at most 20 of them); ``LAST`` is matched in any case.
    A readable size with a bad rest (``10 LAST x``, ``10 FIRST``) still
    gives the size, so that the chunk's octets can be consumed unread.
    """
    words = [word for word in (arg or "").split(" ") if word]
    if not words or not _is_chunk_size(words[0]):
        return BdatArguments(None, False, False)
    size = int(words[0])
    if len(words) == 1:
        return BdatArguments(size, False, True)
    if len(words) == 2 and words[1].upper() == "LAST":
        return BdatArguments(size, True, True)
    return BdatArguments(size, False, False)


def _is_chunk_size(word: str) -> bool:
    return (word.isascii() and word.isdigit()
            and len(word) <= _MAX_CHUNK_SIZE_DIGITS)


def message_from_chunks(data: AnyStr) -> AnyStr:
    """What ``process_message`` gets for *data*, the BDAT chunks joined.

    The same as DATA would have given for the message: the last line's
    CRLF dropped (DATA's ends in the CRLF "." CRLF) and every CRLF turned
    into LF; bare CR and bare LF stay, and nothing is unstuffed (BDAT
    carries the octets as they are).
    """
    if data.endswith("\r\n" if isinstance(data, str) else CRLF):
        data = data[:-2]
    return crlf_to_lf(data)


def peer_host(peer) -> str:
    """The host X-Peer names for *peer*, a socket address as ``getpeername()`` gives it.

    ``peer[0]`` of an IP address tuple; a UNIX socket's client (a path,
    usually '' as clients do not bind one) is on this machine: 'localhost'.
    """
    if isinstance(peer, tuple) and peer:
        return peer[0]
    return "localhost"


def insert_peer_header(data: AnyStr, peer_host: str) -> AnyStr:
    """Insert ``X-Peer: <peer_host>`` where PureProxy has always put it.

    *data* uses LF line ends (as ``process_message`` receives it).  The header
    goes before the first empty line, or after the last line when there is
    none, exactly like smtpd's PureProxy.
    """
    header = "X-Peer: %s" % peer_host
    if isinstance(data, str):
        lines = data.split("\n")
        new_line, empty = header, ""
        newline = "\n"
    else:
        lines = data.split(b"\n")
        new_line, empty = header.encode("utf-8"), b""
        newline = b"\n"
    position = lines.index(empty) if empty in lines else len(lines)
    lines.insert(position, new_line)
    return newline.join(lines)


def escape_for_reply(text: str) -> str:
    """Make client-supplied text safe to echo inside a one-line reply.

    A bare CR or LF inside an echoed command would split the reply in two and
    desynchronise the client; they are shown as ``\\r`` and ``\\n`` instead.
    Every other control character but tab (the rest of C0, and DEL) is shown
    as a backslash escape too (``\\x00``, ``\\x1b``, ``\\x7f``), the way
    non-ASCII text is escaped when the reply is encoded.
    """
    if _REPLY_CONTROL.search(text) is None:
        return text
    return _REPLY_CONTROL.sub(_escape_control, text)


def _escape_control(match) -> str:
    character = match.group()
    return _NAMED_ESCAPES.get(character) or "\\x%02x" % ord(character)


# RFC 3461, section 4: "xtext = *( xchar / hexchar )", xchar any ASCII
# from "!" to "~" but "+" and "=", hexchar "+" and two upper-case hex digits.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*\Z")
_XTEXT_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
# RFC 3461, section 4.1: NOTIFY=NEVER, or a list of SUCCESS, FAILURE, DELAY.
DSN_NOTIFY_EVENTS = ("SUCCESS", "FAILURE", "DELAY")
# RFC 3461, section 4.2: ORCPT's addr-type is an RFC 822 atom ("rfc822").
_ATOM = re.compile(_ATEXT + r"\Z")


def is_xtext(value: Union[str, bool], max_length: Optional[int] = None) -> bool:
    """True if a parameter value is non-empty RFC 3461 xtext (of at most *max_length*)."""
    return (isinstance(value, str) and bool(value) and value.isascii()
            and (max_length is None or len(value) <= max_length)
            and _XTEXT.match(value) is not None)


def decode_xtext(value: str) -> str:
    """Decode RFC 3461 xtext: ``"a+2Bb"`` is ``"a+b"``; the input must be xtext."""
    return _XTEXT_HEXCHAR.sub(lambda match: chr(int(match.group(1), 16)), value)


def is_dsn_ret(value: Union[str, bool]) -> bool:
    """True for MAIL's ``RET=FULL`` or ``RET=HDRS`` (RFC 3461, section 4.3)."""
    return value in ("FULL", "HDRS")


def parse_dsn_notify(value: Union[str, bool]) -> Optional[Tuple[str, ...]]:
    """RCPT's NOTIFY value (upper-cased) as a tuple of events; None if malformed.

    ``NEVER`` alone, or one or more of SUCCESS, FAILURE and DELAY, comma
    separated, none twice (RFC 3461, section 4.1).
    """
    if not isinstance(value, str):
        return None
    if value == "NEVER":
        return ("NEVER",)
    events = tuple(value.split(","))
    if len(set(events)) != len(events) or not all(e in DSN_NOTIFY_EVENTS for e in events):
        return None
    return events


def parse_dsn_orcpt(value: Union[str, bool],
                    max_length: Optional[int] = None) -> Optional[Tuple[str, str]]:
    """RCPT's ORCPT value as (addr-type, decoded address); None if malformed.

    ``rfc822;user+2Bx@example.com`` is ``("rfc822", "user+x@example.com")``
    (RFC 3461, section 4.2: ``addr-type ";" xtext``).
    """
    if not isinstance(value, str) or (max_length is not None and len(value) > max_length):
        return None
    addr_type, semicolon, address = value.partition(";")
    if not semicolon or not _ATOM.match(addr_type) or not is_xtext(address):
        return None
    return addr_type, decode_xtext(address)


def has_bare_line_ending(data: AnyStr) -> bool:
    """True if *data* holds a CR not followed by LF or an LF not after a CR.

    Those are the line endings an SMTP peer may read differently (SMTP
    smuggling): RFC 5321, section 2.3.8, allows only CRLF.
    """
    if isinstance(data, str):
        cr, lf, crlf = "\r", "\n", "\r\n"
    else:
        cr, lf, crlf = b"\r", b"\n", b"\r\n"
    pairs = data.count(crlf)
    return data.count(cr) != pairs or data.count(lf) != pairs


def to_crlf(data: bytes) -> bytes:
    """Turn every CR, LF and CRLF line end into CRLF, as SMTP sends lines."""
    return _LINE_END.sub(b"\r\n", data)


def parse_host_port(spec: str) -> Tuple[str, int]:
    """Parse ``host:port`` or ``[ipv6-literal]:port`` into (host, port).

    The host may be empty (all interfaces).  Raises ValueError with a short
    reason for anything else.
    """
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError("expected [address]:port")
        port_text = rest[1:]
    else:
        host, colon, port_text = spec.partition(":")
        if not colon:
            raise ValueError("expected host:port")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError("port is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError("port is out of range 0-65535")
    return host, port


def unmapped_address(address):
    """An IPv4-mapped IPv6 socket address as plain IPv4 ``(host, port)``; others unchanged.

    A dual-stack listener reports an IPv4 client as
    ``('::ffff:192.0.2.1', port, flowinfo, scope_id)``; this gives
    ``('192.0.2.1', port)``.  Anything else (IPv4 and IPv6 addresses, AF_UNIX
    paths, None) comes back as it was.
    """
    if not isinstance(address, tuple) or len(address) != 4:
        return address
    host = address[0]
    if not isinstance(host, str) or not host[:7].lower() == "::ffff:":
        return address
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return address
    if mapped is None:
        return address
    return (str(mapped), address[1])
