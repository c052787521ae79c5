"""The PROXY protocol parser (_haproxy): pure tests, then a real HAProxy.

Every header is fed whole, one byte at a time, split at every point, and
followed by session bytes that must come back untouched.  The rules cited
are from HAProxy's doc/proxy-protocol.txt.
"""

import ipaddress
import re
import socket
import struct
from typing import List, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpd_compat import _haproxy
from smtpd_compat._haproxy import (
    NEED_MORE,
    V2_SIGNATURE,
    Done,
    Invalid,
    Mode,
    NeedMore,
    ProxyHeader,
    ProxyHeaderParser,
    SSLInfo,
    crc32c,
    is_trusted,
    parse_header,
    parse_networks,
)
from tests import haproxy_support as hs

SESSION = b"EHLO client.example\r\n"
FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------
# Building headers


def v2(ver_cmd: int, family: int, block: bytes = b"") -> bytes:
    """A v2 header: signature, version/command, family, length, *block*."""
    return V2_SIGNATURE + bytes([ver_cmd, family]) + struct.pack("!H", len(block)) + block


def tlv(kind: int, value: bytes) -> bytes:
    """One type-length-value vector."""
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def with_crc(ver_cmd: int, family: int, block: bytes) -> bytes:
    """A v2 header whose last TLV is a correct CRC32C."""
    header = v2(ver_cmd, family, block + tlv(0x03, bytes(4)))
    return header[:-4] + struct.pack("!I", crc32c(header))


def ipv4_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    """The TCP4 address block."""
    return (socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport))


def ipv6_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    """The TCP6 address block."""
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))


FULL6 = ":".join(["ffff"] * 8)
TCP4_BLOCK = ipv4_block("192.0.2.1", "198.51.100.25", 56324, 25)
TCP4_HEADER = ProxyHeader(2, "PROXY", "TCP4", ("192.0.2.1", 56324), ("198.51.100.25", 25))
SSL_VALUE = b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client.example")

# Headers captured from HAProxy 2.6 (Debian 12) by the live tests below:
# the client was 127.0.0.2 (or ::1), the frontend 127.0.0.1 (or ::1).
CAPTURED = [
    pytest.param(
        "50524f58592054435034203132372e302e302e32203132372e302e302e312033333239332033393430"
        "310d0a",
        ProxyHeader(1, "PROXY", "TCP4", ("127.0.0.2", 33293), ("127.0.0.1", 39401)),
        id="haproxy-send-proxy"),
    pytest.param(
        "50524f58592054435036203a3a31203a3a312035343234352035373736390d0a",
        ProxyHeader(1, "PROXY", "TCP6", ("::1", 54245), ("::1", 57769)),
        id="haproxy-send-proxy-ipv6"),
    pytest.param(
        "0d0a0d0a000d0a515549540a2111000c7f0000027f000001ab63dc63",
        ProxyHeader(2, "PROXY", "TCP4", ("127.0.0.2", 43875), ("127.0.0.1", 56419)),
        id="haproxy-send-proxy-v2"),
    pytest.param(
        "0d0a0d0a000d0a515549540a21210024000000000000000000000000000000010000000000000000000000"
        "0000000001e1eb9779",
        ProxyHeader(2, "PROXY", "TCP6", ("::1", 57835), ("::1", 38777)),
        id="haproxy-send-proxy-v2-ipv6"),
    pytest.param(
        "0d0a0d0a000d0a515549540a2111002d7f0000027f00000197f7a77d0300046f0a51fd05000f3132372e"
        "302e302e323a33383930332000050000000000",
        ProxyHeader(2, "PROXY", "TCP4", ("127.0.0.2", 38903), ("127.0.0.1", 42877),
                    tlvs=((0x03, bytes.fromhex("6f0a51fd")), (0x05, b"127.0.0.2:38903"),
                          (0x20, bytes(5))),
                    ssl=SSLInfo(0, 0, ())),
        id="haproxy-v2-crc32c-unique-id-ssl"),
    pytest.param(
        "0d0a0d0a000d0a515549540a211100377f0000027f000001ae95c541030004c99f8ea902000f6d782e65"
        "78616d706c652e7465737420000f0100000000210007544c5376312e33",
        ProxyHeader(2, "PROXY", "TCP4", ("127.0.0.2", 44693), ("127.0.0.1", 50497),
                    tlvs=((0x03, bytes.fromhex("c99f8ea9")), (0x02, b"mx.example.test"),
                          (0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3"))),
                    ssl=SSLInfo(1, 0, ((0x21, b"TLSv1.3"),))),
        id="haproxy-v2-tls-frontend-authority"),
    pytest.param(
        "0d0a0d0a000d0a515549540a20000000",
        ProxyHeader(2, "LOCAL", "UNSPEC"),
        id="haproxy-v2-health-check"),
    pytest.param(
        "0d0a0d0a000d0a515549540a20000007030004a9b87e8f",
        ProxyHeader(2, "LOCAL", "UNSPEC", tlvs=((0x03, bytes.fromhex("a9b87e8f")),)),
        id="haproxy-v2-health-check-crc32c"),
    pytest.param(
        "50524f58592054435034203132372e302e302e31203132372e302e302e312034313235342034363233"
        "370d0a",
        ProxyHeader(1, "PROXY", "TCP4", ("127.0.0.1", 41254), ("127.0.0.1", 46237)),
        id="haproxy-v1-health-check"),
]

VALID = [
    # The spec's own example line.
    pytest.param(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
                 ProxyHeader(1, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
                 id="v1-tcp4-spec-example"),
    pytest.param(b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
                 ProxyHeader(1, "PROXY", "TCP4", ("255.255.255.255", 65535), ("0.0.0.0", 0)),
                 id="v1-tcp4-extremes"),
    pytest.param(("PROXY TCP6 %s %s 65535 65535\r\n" % (FULL6, FULL6)).encode(),
                 ProxyHeader(1, "PROXY", "TCP6", (FULL6, 65535), (FULL6, 65535)),
                 id="v1-tcp6-longest-104-bytes"),
    pytest.param(b"PROXY TCP6 2001:DB8::1 ::ffff:192.0.2.1 1 25\r\n",
                 ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::1", 1), ("::ffff:192.0.2.1", 25)),
                 id="v1-tcp6-upper-case-and-mapped"),
    pytest.param(b"PROXY TCP6 2001:0db8:0000:0000:0000:0000:0000:0001 ::1 1 25\r\n",
                 ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::1", 1), ("::1", 25)),
                 id="v1-tcp6-uncompressed"),
    # "For "UNKNOWN", the rest of the line before the CRLF may be omitted"
    pytest.param(b"PROXY UNKNOWN\r\n", ProxyHeader(1, "PROXY", "UNKNOWN"),
                 id="v1-unknown-short"),
    pytest.param(("PROXY UNKNOWN %s %s 65535 65535\r\n" % (FULL6, FULL6)).encode(),
                 ProxyHeader(1, "PROXY", "UNKNOWN"), id="v1-unknown-worst-case-107-bytes"),
    pytest.param(b"PROXY UNKNOWN whatever \x00\xff  goes\r\n", ProxyHeader(1, "PROXY", "UNKNOWN"),
                 id="v1-unknown-rest-ignored"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK), TCP4_HEADER, id="v2-tcp4"),
    pytest.param(v2(0x21, 0x21, ipv6_block("2001:db8::1", "::1", 1, 25)),
                 ProxyHeader(2, "PROXY", "TCP6", ("2001:db8::1", 1), ("::1", 25)), id="v2-tcp6"),
    pytest.param(v2(0x21, 0x21, ipv6_block("::ffff:192.0.2.1", "::1", 1, 25)),
                 ProxyHeader(2, "PROXY", "TCP6", ("::ffff:192.0.2.1", 1), ("::1", 25)),
                 id="v2-tcp6-mapped"),
    pytest.param(v2(0x20, 0x00), ProxyHeader(2, "LOCAL", "UNSPEC"), id="v2-local"),
    # "Receivers MUST always consider this field to skip the appropriate
    # number of bytes and must not assume zero is presented for LOCAL"
    pytest.param(v2(0x20, 0x11, TCP4_BLOCK), ProxyHeader(2, "LOCAL", "TCP4"),
                 id="v2-local-with-addresses-ignored"),
    pytest.param(v2(0x20, 0x11), ProxyHeader(2, "LOCAL", "TCP4"),
                 id="v2-local-tcp4-without-addresses"),
    pytest.param(v2(0x21, 0x00, tlv(0x01, b"smtp")),
                 ProxyHeader(2, "PROXY", "UNSPEC", tlvs=((0x01, b"smtp"),)),
                 id="v2-unspec-block-read-as-tlvs"),
    pytest.param(v2(0x21, 0x12, TCP4_BLOCK), ProxyHeader(2, "PROXY", "UDP4"), id="v2-udp4"),
    pytest.param(v2(0x21, 0x22, bytes(36)), ProxyHeader(2, "PROXY", "UDP6"), id="v2-udp6"),
    pytest.param(v2(0x21, 0x31, b"/run/a.sock".ljust(108, b"\0") * 2),
                 ProxyHeader(2, "PROXY", "UNIX_STREAM"), id="v2-unix-stream"),
    pytest.param(v2(0x21, 0x32, bytes(216)), ProxyHeader(2, "PROXY", "UNIX_DGRAM"),
                 id="v2-unix-dgram"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x04, bytes(5)) + tlv(0xE0, b"custom")
                    + tlv(0x30, b"netns") + tlv(0x04, b"")),
                 TCP4_HEADER._replace(tlvs=((0x04, bytes(5)), (0xE0, b"custom"),
                                            (0x30, b"netns"), (0x04, b""))),
                 id="v2-skipped-tlvs"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x05, b"x" * 128) + tlv(0x02, "mx.é".encode())
                    + tlv(0x01, b"smtp") + tlv(0x20, SSL_VALUE)),
                 TCP4_HEADER._replace(
                     tlvs=((0x05, b"x" * 128), (0x02, "mx.é".encode()), (0x01, b"smtp"),
                           (0x20, SSL_VALUE)),
                     ssl=SSLInfo(1, 0, ((0x21, b"TLSv1.3"), (0x22, b"client.example")))),
                 id="v2-read-tlvs"),
    pytest.param(with_crc(0x21, 0x11, TCP4_BLOCK),
                 TCP4_HEADER._replace(tlvs=((0x03, with_crc(0x21, 0x11, TCP4_BLOCK)[-4:]),)),
                 id="v2-crc32c"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x20, bytes(5))),
                 TCP4_HEADER._replace(tlvs=((0x20, bytes(5)),), ssl=SSLInfo(0, 0, ())),
                 id="v2-ssl-without-sub-tlvs"),
] + [pytest.param(bytes.fromhex(p.values[0]), p.values[1], id=p.id) for p in CAPTURED]


def feed_all(chunks: Sequence[bytes], mode: Mode = Mode.ANY) -> List[object]:
    """Feed *chunks* one after another; the answers, stopping at the first final one."""
    parser = ProxyHeaderParser(mode)
    answers = []
    for chunk in chunks:
        answers.append(parser.feed(chunk))
        if answers[-1] is not NEED_MORE:
            break
    return answers


def mode_for(data: bytes) -> Mode:
    """The single-version mode that accepts *data*."""
    return Mode.V2 if data.startswith(V2_SIGNATURE[:1]) else Mode.V1


# --------------------------------------------------------------------------
# Valid headers: whole, byte by byte, at every split, with trailing data


@pytest.mark.parametrize("data, expected", VALID)
@pytest.mark.parametrize("mode", ["any", "own"])
def test_whole(data, expected, mode):
    mode = Mode.ANY if mode == "any" else mode_for(data)
    assert parse_header(data, mode) == Done(expected, b"")


@pytest.mark.parametrize("data, expected", VALID)
def test_with_trailing_data(data, expected):
    # The session's own bytes, even ones that look like a header, stay.
    for trailing in (SESSION, data, b"\r\n", b"\x00"):
        assert parse_header(data + trailing) == Done(expected, trailing)


@pytest.mark.parametrize("data, expected", VALID)
def test_byte_by_byte(data, expected):
    answers = feed_all([data[i:i + 1] for i in range(len(data))] + [SESSION])
    assert answers == [NEED_MORE] * (len(data) - 1) + [Done(expected, b"")]


@pytest.mark.parametrize("data, expected", VALID)
def test_every_split(data, expected):
    for cut in range(len(data)):  # cut == len(data) is test_whole
        answers = feed_all([data[:cut], data[cut:] + SESSION])
        assert answers[-1] == Done(expected, SESSION), cut


@pytest.mark.parametrize("data, expected", VALID)
def test_other_version_only_is_refused(data, expected):
    other = Mode.V1 if mode_for(data) is Mode.V2 else Mode.V2
    assert isinstance(parse_header(data, other), Invalid)
    # at its first byte: the two formats differ there
    assert isinstance(parse_header(data[:1], other), Invalid)


def test_result_properties():
    done = parse_header(bytes.fromhex(CAPTURED[5].values[0]))
    assert isinstance(done, Done)
    assert done.header.authority == "mx.example.test"
    assert done.header.unique_id is None
    assert done.header.ssl.over_ssl and done.header.ssl.version == "TLSv1.3"
    assert not done.header.local
    done = parse_header(bytes.fromhex(CAPTURED[4].values[0]))
    assert done.header.unique_id == b"127.0.0.2:38903"
    assert done.header.authority is None
    assert not done.header.ssl.over_ssl and done.header.ssl.version is None
    assert done.header.ssl.common_name is None
    ssl = parse_header(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x20, SSL_VALUE))).header.ssl
    assert ssl.common_name == "client.example" and ssl.version == "TLSv1.3"
    for local in (b"PROXY UNKNOWN\r\n", v2(0x20, 0x00), v2(0x21, 0x31, bytes(216))):
        header = parse_header(local).header
        assert header.local and header.source is None and header.destination is None


def test_empty_and_partial_input_needs_more():
    for mode in Mode:
        assert ProxyHeaderParser(mode).feed(b"") is NEED_MORE
    assert parse_header(b"PROXY TCP4 1.2.3.4") is NEED_MORE
    assert parse_header(V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(11)) is NEED_MORE
    assert repr(NEED_MORE) == "NEED_MORE" and isinstance(NEED_MORE, NeedMore)


def test_mode_accepts_its_names():
    assert ProxyHeaderParser("v1").mode is Mode.V1
    assert ProxyHeaderParser("any").mode is Mode.ANY
    with pytest.raises(ValueError):
        ProxyHeaderParser("v3")


def test_feeding_after_the_end_is_a_caller_error():
    for data in (b"PROXY UNKNOWN\r\n", b"EHLO"):
        parser = ProxyHeaderParser()
        assert parser.feed(data) is not NEED_MORE
        with pytest.raises(RuntimeError):
            parser.feed(b"more")


# --------------------------------------------------------------------------
# Malformed headers

V1_GOOD = b"PROXY TCP4 192.0.2.1 198.51.100.25 56324 25"


def v1_with(old: bytes, new: bytes) -> bytes:
    """The good v1 line with *old* replaced by *new*, CRLF-terminated."""
    assert old in V1_GOOD
    return V1_GOOD.replace(old, new, 1) + b"\r\n"


def corrupt_captured(index: int, offset: int) -> bytes:
    """A captured header with one bit flipped at *offset*."""
    data = bytearray.fromhex(CAPTURED[index].values[0])
    data[offset] ^= 0x01
    return bytes(data)


MALFORMED = [
    # v1: "Any sequence which does not exactly match the protocol must be discarded"
    pytest.param(b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", id="v1-lower-case-keyword"),
    pytest.param(b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n", id="v1-two-spaces"),
    pytest.param(b"PROXY\tTCP4 1.2.3.4 1.2.3.4 1 2\r\n", id="v1-tab"),
    pytest.param(b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", id="v1-lower-case-family"),
    pytest.param(b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", id="v1-udp"),
    pytest.param(b"PROXY UNKNOWNX\r\n", id="v1-unknown-glued"),
    pytest.param(b"PROXY\r\n", id="v1-keyword-only"),
    pytest.param(b"PROXY \r\n", id="v1-no-family"),
    pytest.param(b"PROXY TCP4\r\n", id="v1-no-addresses"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", id="v1-one-port"),
    pytest.param(v1_with(b" 25", b" 25 26"), id="v1-seven-fields"),
    pytest.param(v1_with(b" 25", b" 25 "), id="v1-space-before-crlf"),
    pytest.param(V1_GOOD + b"\n", id="v1-lf-only"),
    pytest.param(V1_GOOD + b"\r\r\n", id="v1-cr-cr-lf"),
    pytest.param(V1_GOOD + b"\rX\r\n", id="v1-lone-cr"),
    pytest.param(b"PROXY UNKNOWN a\nb\r\n", id="v1-unknown-lone-lf"),
    pytest.param(V1_GOOD + b"\n\r\n", id="v1-lf-cr-lf"),
    # "Heading zeroes are not permitted in front of numbers"
    pytest.param(v1_with(b"56324", b"056324"), id="v1-port-heading-zero"),
    pytest.param(v1_with(b" 25", b" 00"), id="v1-port-00"),
    pytest.param(v1_with(b"56324", b"+5632"), id="v1-port-plus"),
    pytest.param(v1_with(b"56324", b"-1"), id="v1-port-minus"),
    pytest.param(v1_with(b"56324", b"65536"), id="v1-port-65536"),
    pytest.param(v1_with(b"56324", b"99999"), id="v1-port-99999"),
    pytest.param(v1_with(b"56324", b"123456"), id="v1-port-six-digits"),
    pytest.param(v1_with(b" 25", b" "), id="v1-port-empty"),
    pytest.param(v1_with(b"56324", "５".encode()), id="v1-port-fullwidth-digit"),
    pytest.param(v1_with(b"192.0.2.1", b"192.0.2.01"), id="v1-ipv4-heading-zero"),
    pytest.param(v1_with(b"192.0.2.1", b"010.0.2.1"), id="v1-ipv4-octal-looking"),
    pytest.param(v1_with(b"192.0.2.1", b"256.0.2.1"), id="v1-ipv4-octet-256"),
    pytest.param(v1_with(b"192.0.2.1", b"192.0.2"), id="v1-ipv4-three-octets"),
    pytest.param(v1_with(b"192.0.2.1", b"192.0.2.1.5"), id="v1-ipv4-five-octets"),
    pytest.param(v1_with(b"192.0.2.1", b"192..2.1"), id="v1-ipv4-empty-octet"),
    pytest.param(v1_with(b"192.0.2.1", b"3221225985"), id="v1-ipv4-as-integer"),
    pytest.param(v1_with(b"192.0.2.1", b"::1"), id="v1-tcp4-with-ipv6"),
    pytest.param(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", id="v1-tcp6-with-ipv4"),
    pytest.param(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", id="v1-tcp6-zone"),
    pytest.param(b"PROXY TCP6 [::1] ::1 1 2\r\n", id="v1-tcp6-brackets"),
    pytest.param(b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", id="v1-tcp6-nine-groups"),
    pytest.param(b"PROXY TCP6 1::2::3 ::1 1 2\r\n", id="v1-tcp6-two-double-colons"),
    pytest.param(b"PROXY TCP6 12345::1 ::1 1 2\r\n", id="v1-tcp6-five-digit-group"),
    pytest.param(b"PROXY TCP6 ::ffff:1.2.3.04 ::1 1 2\r\n", id="v1-tcp6-mapped-heading-zero"),
    pytest.param(b"PROXY TCP6 :: ::1 1 2 \r\n", id="v1-tcp6-trailing-space"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n", id="v1-no-crlf-in-107-bytes"),
    pytest.param(("PROXY UNKNOWN %s %s 65535 655355\r\n" % (FULL6, FULL6)).encode(),
                 id="v1-108-bytes"),
    # v2
    pytest.param(V2_SIGNATURE[:4] + b"\x01" + V2_SIGNATURE[5:] + b"\x21\x11\x00\x00",
                 id="v2-signature-nul-changed"),
    pytest.param(v2(0x11, 0x11, TCP4_BLOCK), id="v2-version-1"),
    pytest.param(v2(0x31, 0x11, TCP4_BLOCK), id="v2-version-3"),
    pytest.param(v2(0x01, 0x11, TCP4_BLOCK), id="v2-version-0"),
    # "Receivers must drop connections presenting unexpected values here."
    pytest.param(v2(0x22, 0x11, TCP4_BLOCK), id="v2-command-2"),
    pytest.param(v2(0x2F, 0x11, TCP4_BLOCK), id="v2-command-15"),
    # "other values are unspecified [...] and must be rejected as invalid"
    pytest.param(v2(0x21, 0x41, TCP4_BLOCK), id="v2-family-4"),
    pytest.param(v2(0x21, 0x13, TCP4_BLOCK), id="v2-transport-3"),
    pytest.param(v2(0x21, 0x10, TCP4_BLOCK), id="v2-inet-unspec-transport"),
    pytest.param(v2(0x20, 0xFF), id="v2-local-family-ff"),
    # length bounds: "Address length is 2*4 + 2*2 = 12 bytes" and so on
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK[:11]), id="v2-tcp4-length-11"),
    pytest.param(v2(0x21, 0x11), id="v2-tcp4-length-0"),
    pytest.param(v2(0x21, 0x21, TCP4_BLOCK), id="v2-tcp6-length-12"),
    pytest.param(v2(0x21, 0x31, bytes(215)), id="v2-unix-length-215"),
    pytest.param(v2(0x20, 0x11, TCP4_BLOCK[:5]), id="v2-local-partial-addresses"),
    # TLVs: walked by their lengths
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + b"\x04"), id="v2-tlv-type-only"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + b"\x04\x00"), id="v2-tlv-half-length"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + b"\x04\x00\x05abcd"), id="v2-tlv-past-the-end"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x04, b"") + b"\xe0\xff\xff"),
                 id="v2-tlv-length-65535"),
    pytest.param(v2(0x20, 0x00, b"\x03\x00\x04"), id="v2-local-truncated-tlv"),
    pytest.param(v2(0x21, 0x00, b"\x00"), id="v2-unspec-one-byte"),
    # "If it is not, the receiver MUST treat the TCP connection [...] as invalid."
    pytest.param(corrupt_captured(4, 16), id="v2-crc32c-address-bit-flipped"),
    pytest.param(corrupt_captured(4, 33), id="v2-crc32c-value-bit-flipped"),
    pytest.param(corrupt_captured(7, 22), id="v2-local-crc32c-bit-flipped"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x03, bytes(3))), id="v2-crc32c-3-bytes"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x03, bytes(5))), id="v2-crc32c-5-bytes"),
    pytest.param(with_crc(0x21, 0x11, TCP4_BLOCK + tlv(0x03, bytes(4))), id="v2-crc32c-twice"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x05, b"x" * 129)), id="v2-unique-id-129"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x02, b"\xff")), id="v2-authority-not-utf8"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x02, b"a") + tlv(0x02, b"b")),
                 id="v2-authority-twice"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x05, b"a") + tlv(0x05, b"a")),
                 id="v2-unique-id-twice"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x20, bytes(4))), id="v2-ssl-4-bytes"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x20, bytes(5) + b"\x21\x00\x09TLS")),
                 id="v2-ssl-sub-tlv-past-the-end"),
    pytest.param(v2(0x21, 0x11, TCP4_BLOCK + tlv(0x20, bytes(5) + b"\x21")),
                 id="v2-ssl-sub-tlv-truncated"),
    # Not a header at all
    pytest.param(b"EHLO client.example\r\n", id="smtp-ehlo"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01", id="tls-client-hello"),
    pytest.param(b"GET / HTTP/1.1\r\n", id="http"),
    pytest.param(b"\r\n\r\nQUIT\r\n", id="blank-lines"),
    pytest.param(b"\x00", id="nul"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_whole(data):
    result = parse_header(data + SESSION)
    assert isinstance(result, Invalid)
    assert result.reason and result.reason.isascii()


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_byte_by_byte(data):
    answers = feed_all([data[i:i + 1] for i in range(len(data))] + [SESSION])
    assert set(answers[:-1]) <= {NEED_MORE}
    assert isinstance(answers[-1], Invalid)


@pytest.mark.parametrize("data, mode", [
    pytest.param(b"E", Mode.ANY, id="ehlo-at-once"),
    pytest.param(b"H", Mode.V1, id="helo-in-v1"),
    pytest.param(b"\r", Mode.V1, id="v2-signature-in-v1"),
    pytest.param(b"P", Mode.V2, id="v1-in-v2"),
    pytest.param(b"PROXI", Mode.ANY, id="v1-keyword-typo"),
    pytest.param(b"PROXY TCP5", Mode.ANY, id="v1-family-typo"),
    pytest.param(b"PROXY TCP4 1.2.3.4:", Mode.ANY, id="v1-ipv4-colon"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 01", Mode.ANY, id="v1-port-heading-zero"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 65536", Mode.ANY, id="v1-port-too-big"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 ", Mode.ANY, id="v1-seventh-field"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", Mode.ANY, id="v1-lf"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r", Mode.ANY, id="v1-cr-after-five-fields"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r\r", Mode.ANY, id="v1-cr-cr"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.456", Mode.ANY, id="v1-ipv4-octet-too-big"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4.", Mode.ANY, id="v1-ipv4-fifth-octet"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.02", Mode.ANY, id="v1-ipv4-heading-zero"),
    pytest.param(b"PROXY TCP6 12345", Mode.ANY, id="v1-ipv6-five-digit-group"),
    pytest.param(b"PROXY TCP6 1:::", Mode.ANY, id="v1-ipv6-three-colons"),
    pytest.param(b"PROXY TCP6 ::g", Mode.ANY, id="v1-ipv6-not-hex"),
    pytest.param(b"PROXY TCP6 ::1  ", Mode.ANY, id="v1-empty-field"),
    pytest.param(b"PROXY UNKNOWN a\rb", Mode.ANY, id="v1-unknown-lone-cr"),
    pytest.param(b"PROXY UNKNOWN " + b"a" * 92, Mode.ANY, id="v1-106th-byte-not-cr"),
    pytest.param(b"PROXY UNKNOWN " + b"a" * 91 + b"\r.", Mode.ANY, id="v1-107th-byte-not-lf"),
    pytest.param(V2_SIGNATURE[:5] + b"\x0a", Mode.ANY, id="v2-signature-byte-6"),
    pytest.param(V2_SIGNATURE + b"\x11", Mode.ANY, id="v2-version-1"),
    pytest.param(V2_SIGNATURE + b"\x23", Mode.V2, id="v2-command-3"),
    pytest.param(V2_SIGNATURE + b"\x21\x14", Mode.ANY, id="v2-family"),
    pytest.param(V2_SIGNATURE + b"\x21\x11\x00\x0b", Mode.ANY, id="v2-length"),
])
def test_rejected_as_soon_as_possible(data, mode):
    """ "It is recommended to abort the connection as soon as possible" """
    answers = feed_all([data[i:i + 1] for i in range(len(data))], mode)
    assert answers[:-1] == [NEED_MORE] * (len(data) - 1)
    assert isinstance(answers[-1], Invalid)


# --------------------------------------------------------------------------
# Fuzzing

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4)
v6 = st.ip_addresses(v=6)
skipped_tlvs = st.lists(st.tuples(st.sampled_from([0x04, 0x30, 0xE0, 0xEF, 0xF0, 0xFF]),
                                  st.binary(max_size=40)), max_size=4)


def text6(address: ipaddress.IPv6Address) -> str:
    """What a socket reports for *address*."""
    return socket.inet_ntop(socket.AF_INET6, address.packed)


@st.composite
def valid_headers(draw):
    """(bytes, ProxyHeader) of every kind."""
    kind = draw(st.sampled_from(["v1-4", "v1-6", "v1-unknown", "v2-4", "v2-6", "v2-local"]))
    src, dst = (draw(v6), draw(v6)) if kind.endswith("6") else (draw(v4), draw(v4))
    sport, dport = draw(ports), draw(ports)
    if kind == "v1-unknown":
        junk = draw(st.binary(max_size=92).filter(lambda b: b"\r" not in b and b"\n" not in b))
        return b"PROXY UNKNOWN" + (b" " + junk if junk else b"") + b"\r\n", \
            ProxyHeader(1, "PROXY", "UNKNOWN")
    if kind.startswith("v1"):
        family = "TCP" + kind[-1]
        line = "PROXY %s %s %s %d %d\r\n" % (family, src, dst, sport, dport)
        show = text6 if kind.endswith("6") else str
        return line.encode(), ProxyHeader(1, "PROXY", family, (show(src), sport),
                                          (show(dst), dport))
    tlvs = tuple(draw(skipped_tlvs))
    tail = b"".join(tlv(kind_, value) for kind_, value in tlvs)
    if kind == "v2-local":
        return v2(0x20, 0x00, tail), ProxyHeader(2, "LOCAL", "UNSPEC", tlvs=tlvs)
    block = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    family = 0x11 if kind == "v2-4" else 0x21
    show = str if kind == "v2-4" else text6
    header = ProxyHeader(2, "PROXY", "TCP" + kind[-1], (show(src), sport), (show(dst), dport),
                         tlvs=tlvs)
    if draw(st.booleans()):
        data = with_crc(0x21, family, block + tail)
        return data, header._replace(tlvs=tlvs + ((0x03, data[-4:]),))
    return v2(0x21, family, block + tail), header


def chunked(data: bytes, cuts: Sequence[int]) -> List[bytes]:
    """*data* cut at the positions *cuts* (any order, repeats allowed)."""
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


@FUZZ
@given(valid_headers(), st.binary(max_size=64), st.lists(st.integers(0, 400), max_size=8))
def test_fuzz_valid_headers_any_split_keep_the_session(header_and_expected, trailing, cuts):
    data, expected = header_and_expected
    chunks = chunked(data + trailing, cuts)
    answers = feed_all(chunks)
    fed = b"".join(chunks[:len(answers)])
    # Done with the chunk that completes the header, and every byte of
    # that chunk past the header comes back.
    assert answers[:-1] == [NEED_MORE] * (len(answers) - 1)
    assert len(fed) - len(chunks[len(answers) - 1]) < len(data) <= len(fed)
    assert answers[-1] == Done(expected, fed[len(data):])


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8),
       st.sampled_from(list(Mode)))
def test_fuzz_arbitrary_bytes(data, cuts, mode):
    answers = feed_all(chunked(data, cuts), mode)
    for answer in answers:
        assert isinstance(answer, (NeedMore, Done, Invalid))
    last = answers[-1]
    fed = b"".join(chunked(data, cuts)[:len(answers)])
    if isinstance(last, Done):
        assert fed.endswith(last.rest)
        consumed = len(fed) - len(last.rest)
        assert parse_header(fed[:consumed], mode) == Done(last.header, b"")
    # the answer does not depend on how the bytes were split
    whole = parse_header(fed, mode)
    assert type(whole) is type(last) and (not isinstance(whole, Done) or whole == last)


@FUZZ
@given(valid_headers(), st.data())
def test_fuzz_mutated_headers(header_and_expected, data):
    raw = bytearray(header_and_expected[0])
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(raw)))
        how = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if how == "insert":
            raw[where:where] = data.draw(st.binary(min_size=1, max_size=3))
        elif where < len(raw):
            if how == "flip":
                raw[where] ^= 1 << data.draw(st.integers(0, 7))
            else:
                del raw[where]
    mutated = bytes(raw) + SESSION
    result = parse_header(mutated)
    assert isinstance(result, (NeedMore, Done, Invalid))
    if isinstance(result, Done):
        assert mutated.endswith(result.rest)
    bytewise = feed_all([mutated[i:i + 1] for i in range(len(mutated))])
    assert type(bytewise[-1]) is type(result)


# --------------------------------------------------------------------------
# CRC-32C

@pytest.mark.parametrize("data, expected", [
    # RFC 3720, B.4 (the CRC bytes there are the value least significant first)
    pytest.param(bytes(32), 0x8A9136AA, id="rfc3720-32-zeroes"),
    pytest.param(b"\xff" * 32, 0x62A8AB43, id="rfc3720-32-ones"),
    pytest.param(bytes(range(32)), 0x46DD794E, id="rfc3720-incrementing"),
    pytest.param(bytes(range(31, -1, -1)), 0x113FDB5C, id="rfc3720-decrementing"),
    pytest.param(bytes.fromhex("01c00000" + "00000000" * 3 + "14000000" + "00000400"
                               + "00000014" + "00000018" + "28000000" + "00000000"
                               + "02000000" + "00000000"),
                 0xD9963A56, id="rfc3720-iscsi-read-pdu"),
    pytest.param(b"123456789", 0xE3069283, id="check-value"),
    pytest.param(b"", 0, id="empty"),
])
def test_crc32c_vectors(data, expected):
    assert crc32c(data) == expected


@given(st.binary(max_size=100), st.binary(max_size=100))
def test_crc32c_continues(first, second):
    assert crc32c(second, crc32c(first)) == crc32c(first + second)


# --------------------------------------------------------------------------
# Trusted proxies

@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1", ["127.0.0.1/32"]),
    ("10.0.0.0/8,192.168.0.0/16", ["10.0.0.0/8", "192.168.0.0/16"]),
    (" 10.0.0.0/8 , ::1 ", ["10.0.0.0/8", "::1/128"]),
    ("2001:db8::/32", ["2001:db8::/32"]),
], ids=["one-address", "two", "blanks-and-ipv6", "ipv6-net"])
def test_parse_networks(text, expected):
    assert [str(net) for net in parse_networks(text)] == expected


@pytest.mark.parametrize("text, words", [
    ("", "empty entry"),
    ("10.0.0.0/8,", "empty entry"),
    ("10.0.0.0/8,,::1", "empty entry"),
    ("10.0.0.1/8", "'10.0.0.1/8' is not a network"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not a network"),
    ("haproxy.example", "'haproxy.example' is not a network"),
    ("10.0.0.0/8;::1", "'10.0.0.0/8;::1' is not a network"),
], ids=["empty", "trailing-comma", "double-comma", "host-bits", "prefix-33", "name",
        "semicolon"])
def test_parse_networks_refuses(text, words):
    with pytest.raises(ValueError, match="^" + re.escape(words)):
        parse_networks(text)


TRUSTED = parse_networks("127.0.0.0/8,10.1.0.0/16,2001:db8::/32")


@pytest.mark.parametrize("peer, expected", [
    ("127.0.0.1", True),
    (("10.1.2.3", 25), True),
    ("10.2.0.1", False),
    ("::ffff:127.0.0.1", True),
    (("::ffff:10.1.0.9", 25, 0, 0), True),
    ("::ffff:10.2.0.1", False),
    ("2001:db8::25", True),
    (("2001:db8::25%eth0", 25, 0, 2), True),
    ("::1", False),
    ("2001:db9::1", False),
    ("", False),
    ("/run/haproxy.sock", False),
    ((b"\0abstract",), False),
], ids=["ipv4", "tuple", "ipv4-outside", "mapped", "mapped-tuple", "mapped-outside", "ipv6",
        "ipv6-zone", "ipv6-loopback-untrusted", "ipv6-outside", "empty", "unix-path",
        "abstract-unix"])
def test_is_trusted(peer, expected):
    assert is_trusted(peer, TRUSTED) is expected


def test_is_trusted_mapped_network():
    assert is_trusted("::ffff:192.0.2.7", parse_networks("::ffff:192.0.2.0/120"))
    assert not is_trusted("192.0.2.7", ())


# --------------------------------------------------------------------------
# A real HAProxy in front of a capture socket

def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


FRONTEND = """
frontend fe
    bind {bind}:{{fe}}{tls}
    {extra}
    default_backend be

backend be
    {backend_extra}
    server s1 127.0.0.1:{{capture}} {server}
"""


def relayed_header(tmp_path, server, host="127.0.0.1", extra="", tls=False):
    """Connect a client through HAProxy; the client and what the backend received."""
    hs.haproxy_program()
    bind = "[%s]" % host if ":" in host else host
    tls_option = " ssl crt %s" % hs.tls_files(str(tmp_path)) if tls else ""
    sections = FRONTEND.format(bind=bind, tls=tls_option, extra=extra, backend_extra="",
                               server=server)
    with hs.CaptureServer() as capture, \
            hs.running_haproxy(str(tmp_path), sections, {"capture": capture.port},
                               {"fe": host}) as haproxy:
        port = haproxy.ports["fe"]
        client, _ = hs.client_socket(host)
        try:
            client.connect((host, port))
            if tls:
                client = hs.tls_client_context().wrap_socket(
                    client, server_hostname="mx.example.test")
            client.sendall(SESSION)
            received = hs.read_until(capture.accept(), SESSION)
            version = client.version() if tls else None
            return client.getsockname()[:2], (host, port), received, version
        finally:
            client.close()


@pytest.mark.parametrize("server, host", [
    ("send-proxy", "127.0.0.1"),
    ("send-proxy-v2", "127.0.0.1"),
    ("send-proxy", "::1"),
    ("send-proxy-v2", "::1"),
], ids=["v1", "v2", "v1-ipv6", "v2-ipv6"])
def test_real_haproxy(tmp_path, server, host):
    if ":" in host and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    client, frontend, received, _ = relayed_header(tmp_path, server, host)
    result = parse_header(received, Mode.V2 if server.endswith("v2") else Mode.V1)
    assert result == Done(ProxyHeader(2 if server.endswith("v2") else 1, "PROXY",
                                      "TCP6" if ":" in host else "TCP4", client, frontend),
                          SESSION)
    if ":" not in host:
        assert client[0] == "127.0.0.2"  # not HAProxy's 127.0.0.1


def test_real_haproxy_v2_options(tmp_path):
    client, frontend, received, _ = relayed_header(
        tmp_path, "send-proxy-v2 proxy-v2-options crc32c,unique-id,ssl",
        extra="unique-id-format %ci:%cp")
    result = parse_header(received)
    assert isinstance(result, Done) and result.rest == SESSION
    header = result.header
    assert (header.source, header.destination) == (client, frontend)
    assert [kind for kind, _ in header.tlvs] == [0x03, 0x05, 0x20]
    assert header.unique_id == ("%s:%d" % client).encode()
    assert header.ssl == SSLInfo(0, 0, ())
    # and the checksum is really checked
    corrupt = bytearray(received)
    corrupt[17] ^= 0x01
    assert isinstance(parse_header(bytes(corrupt)), Invalid)


def test_real_haproxy_tls_frontend(tmp_path):
    client, frontend, received, tls_version = relayed_header(
        tmp_path, "send-proxy-v2 proxy-v2-options ssl,authority,crc32c", tls=True)
    result = parse_header(received)
    assert isinstance(result, Done) and result.rest == SESSION
    header = result.header
    assert (header.source, header.destination) == (client, frontend)
    assert header.authority == "mx.example.test"
    assert header.ssl.over_ssl and header.ssl.version == tls_version


@pytest.mark.parametrize("server", [
    "send-proxy", "send-proxy-v2", "send-proxy-v2 proxy-v2-options crc32c",
], ids=["v1", "v2", "v2-crc32c"])
def test_real_haproxy_health_check(tmp_path, server):
    """Health checks with check-send-proxy and option smtpchk: LOCAL in v2."""
    hs.haproxy_program()
    sections = FRONTEND.format(bind="127.0.0.1", tls="", extra="",
                               backend_extra="option smtpchk EHLO hc.test",
                               server=server + " check check-send-proxy inter 60s")
    with hs.CaptureServer() as capture, \
            hs.running_haproxy(str(tmp_path), sections, {"capture": capture.port},
                               {"fe": "127.0.0.1"}):
        conn = capture.accept()
        if server == "send-proxy":
            received = hs.read_until(conn, b"\r\n")
        else:
            received = hs.read_exactly(conn, 16)
            received += hs.read_exactly(conn, struct.unpack("!H", received[14:])[0])
        # HAProxy waits for the greeting before its EHLO: the header came alone.
        conn.sendall(b"220 capture\r\n")
        received += hs.read_until(conn, b"\r\n")
        checker = conn.getpeername()[:2]
        backend = conn.getsockname()[:2]
    result = parse_header(received)
    assert isinstance(result, Done) and result.rest == b"EHLO hc.test\r\n"
    if server == "send-proxy":
        # v1 has no LOCAL: HAProxy names its own connection's endpoints.
        assert result.header == ProxyHeader(1, "PROXY", "TCP4", checker, backend)
    else:
        assert result.header.command == "LOCAL" and result.header.local
        assert [kind for kind, _ in result.header.tlvs] == ([0x03] if "crc" in server else [])


def test_module_is_pure():
    """No sockets opened, no logging: the module imports neither for I/O."""
    with open(_haproxy.__file__, encoding="utf-8") as f:
        source = f.read()
    assert "import logging" not in source
    assert "socket.socket(" not in source and ".recv(" not in source
