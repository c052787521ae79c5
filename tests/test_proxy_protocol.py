"""The PROXY protocol wired into the server (issue 11): settings, header before the greeting.

Pure pieces first (settings, the mapped-address helper, the CLI options),
then a real server on loopback driven by the test, fed the header whole,
byte by byte and with the first command in the same segment.  The proof
behind a real HAProxy is in ``test_proxy_protocol_haproxy.py``.
"""

import ipaddress
import logging
import socket
import struct
import time

import pytest

import smtpd_compat
from smtpd_compat import _readers
from smtpd_compat._haproxy import V2_SIGNATURE, Mode, ProxyHeader
from smtpd_compat._loop import Poller
from smtpd_compat._parsing import unmapped_address

from .conftest import FINAL_REPLY_LINE, RecordingServer

V1_HEADER = b"PROXY TCP4 192.0.2.1 198.51.100.25 56324 25\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"


def v2_header(command: int = 0x1, family: int = 0x11, block: bytes = b"") -> bytes:
    """A v2 header: signature, version 2 and *command*, *family*, the address block."""
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


V2_HEADER = v2_header(block=socket.inet_aton("192.0.2.1") + socket.inet_aton("198.51.100.25")
                      + struct.pack("!HH", 56324, 25))
V2_LOCAL = v2_header(command=0x0, family=0x00)
TRANSACTION = (b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n"
               b"RCPT TO:<b@example.org>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")


# --------------------------------------------------------------------------
# Pure pieces

@pytest.mark.parametrize("address, expected", [
    (("::ffff:192.0.2.1", 2525, 0, 0), ("192.0.2.1", 2525)),
    (("::FFFF:127.0.0.2", 1, 0, 0), ("127.0.0.2", 1)),
    (("::1", 2525, 0, 0), ("::1", 2525, 0, 0)),
    (("2001:db8::1", 25, 0, 0), ("2001:db8::1", 25, 0, 0)),
    (("::ffff:not-an-address", 25, 0, 0), ("::ffff:not-an-address", 25, 0, 0)),
    (("192.0.2.1", 25), ("192.0.2.1", 25)),
    ("/run/smtp.sock", "/run/smtp.sock"),
    (None, None),
], ids=["mapped", "mapped-upper-case", "ipv6-loopback", "ipv6", "junk-after-prefix",
        "ipv4", "unix-path", "none"])
def test_unmapped_address(address, expected):
    assert unmapped_address(address) == expected


class Settings:
    """A server-like object with only the attributes a test gives it."""

    def __init__(self, **attributes):
        vars(self).update(attributes)


@pytest.mark.parametrize("value, expected", [
    (None, None), (False, None), ("", None), ("off", None),
    ("v1", Mode.V1), ("v2", Mode.V2), ("any", Mode.ANY), (Mode.V2, Mode.V2),
], ids=repr)
def test_proxy_mode(value, expected):
    assert _readers.proxy_mode(Settings(proxy_protocol=value)) is expected


def test_proxy_mode_is_off_without_the_attribute():
    assert _readers.proxy_mode(object()) is None


def test_proxy_mode_refuses_unknown_values():
    with pytest.raises(ValueError):
        _readers.proxy_mode(Settings(proxy_protocol="v3"))


@pytest.mark.parametrize("value, expected", [
    (None, ("127.0.0.0/8", "::1/128")),
    ("10.0.0.0/8, 2001:db8::/32", ("10.0.0.0/8", "2001:db8::/32")),
    (["192.0.2.7"], ("192.0.2.7/32",)),
    ((ipaddress.ip_network("10.1.0.0/16"),), ("10.1.0.0/16",)),
], ids=["default-loopback", "text", "list-of-text", "networks"])
def test_trusted_networks(value, expected):
    networks = _readers.trusted_networks(Settings(proxy_trusted=value))
    assert networks == tuple(ipaddress.ip_network(item) for item in expected)


def test_trusted_networks_default_without_the_attribute():
    assert _readers.trusted_networks(object()) == _readers.LOOPBACK


@pytest.mark.parametrize("argv, expected", [
    (["--proxy-protocol", "v1"], {"proxy_protocol": "v1"}),
    (["--proxy-protocol=any"], {"proxy_protocol": "any"}),
    (["--proxy-trusted", "10.0.0.0/8,::1"],
     {"proxy_trusted": (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1"))}),
    ([], {"proxy_protocol": None, "proxy_trusted": None}),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_cli_options(argv, expected):
    options = smtpd_compat.parseargs(argv)
    assert {name: getattr(options, name) for name in expected} == expected


@pytest.mark.parametrize("argv, message", [
    (["--proxy-protocol", "v3"], "Invalid --proxy-protocol: 'v3'"),
    (["--proxy-protocol", "on"], "Invalid --proxy-protocol: 'on'"),
    (["--proxy-trusted", "10.0.0.1/8"], "Invalid --proxy-trusted: '10.0.0.1/8'"),
    (["--proxy-trusted", "a,b"], "Invalid --proxy-trusted: 'a'"),
    (["--proxy-trusted", ""], "Invalid --proxy-trusted: empty entry"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_cli_bad_options_exit_1_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        smtpd_compat.parseargs(argv)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert message in err


def test_cli_sets_the_server(tmp_path):
    options = smtpd_compat.parseargs(["-n", "-c", "DebuggingServer", "--proxy-protocol",
                                      "v2", "--proxy-trusted", "10.0.0.0/8", "127.0.0.1:0"])
    from smtpd_compat._cli import make_server
    server = make_server(options)
    try:
        assert server.proxy_protocol == "v2"
        assert server.proxy_trusted == (ipaddress.ip_network("10.0.0.0/8"),)
    finally:
        server.close()


def test_usage_text_documents_the_options():
    assert "--proxy-protocol v1|v2|any" in smtpd_compat.__doc__
    assert "--proxy-trusted CIDR[,CIDR...]" in smtpd_compat.__doc__


# --------------------------------------------------------------------------
# A real server, pumped by the test

class PeerRecordingServer(RecordingServer):
    """Records the peer each message came from, too."""

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.peers = getattr(self, "peers", []) + [peer]
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


class Connection:
    """A client on a server whose loop the test drives; no greeting expected first."""

    def __init__(self, server):
        self.server = server
        self.poller = Poller(server._map)
        self.client = socket.create_connection(("127.0.0.1", server.socket.getsockname()[1]),
                                               timeout=5)
        self.client.setblocking(False)
        self.received = b""
        self.eof = False

    def pump(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            self.poller.poll(0.01)
            self._receive()

    def _receive(self) -> None:
        while not self.eof:
            try:
                chunk = self.client.recv(65536)
            except BlockingIOError:
                return
            except ConnectionResetError:
                chunk = b""
            self.received += chunk
            self.eof = not chunk

    def send(self, data: bytes, split=None) -> None:
        step = split or len(data)
        for start in range(0, len(data), step):
            self.client.sendall(data[start:start + step])
            self.pump(1)

    def until(self, condition, deadline: float = 5.0) -> None:
        give_up = time.monotonic() + deadline
        while not condition():
            assert time.monotonic() < give_up, "gave up; received %r" % self.received
            self.pump(1)

    def replies(self, count: int) -> None:
        self.until(lambda: len(FINAL_REPLY_LINE.findall(self.received)) >= count)

    def channel(self):
        (channel,) = list(self.server._channels)
        return channel

    def close(self) -> None:
        self.client.close()
        self.poller.close()
        smtpd_compat.asyncore.close_all(self.server._map)


@pytest.fixture
def connect():
    """``connect(**server_attributes)``: a PeerRecordingServer and one client."""
    connections = []

    def make(server_class=PeerRecordingServer, **attributes):
        server = server_class(("127.0.0.1", 0), None, map={})
        for name, value in attributes.items():
            setattr(server, name, value)
        connection = Connection(server)
        connections.append(connection)
        return connection

    yield make
    for connection in connections:
        connection.close()


def test_off_greets_at_once_and_adds_no_state(connect):
    connection = connect()
    connection.replies(1)
    assert connection.received.startswith(b"220 ")
    channel = connection.channel()
    assert channel.proxy_peer is None and channel.proxy_header is None
    assert not {"proxy_peer", "proxy_header", "_input_reader"} & set(vars(channel))


def test_off_takes_a_header_as_a_command(connect):
    """Off means smtpd's behaviour: the header line is an unknown command."""
    connection = connect()
    connection.replies(1)
    connection.send(V1_HEADER)
    connection.replies(2)
    assert connection.received.splitlines()[1] == b'500 Error: command "PROXY" not recognized'


@pytest.mark.parametrize("mode, header, split", [
    ("v1", V1_HEADER, None),
    ("v1", V1_HEADER, 1),
    ("v2", V2_HEADER, None),
    ("v2", V2_HEADER, 1),
    ("any", V1_HEADER, 7),
    ("any", V2_HEADER, 5),
], ids=["v1-whole", "v1-byte-by-byte", "v2-whole", "v2-byte-by-byte", "any-v1-split",
        "any-v2-split"])
def test_header_names_the_peer(connect, mode, header, split):
    connection = connect(proxy_protocol=mode)
    real_peer = connection.client.getsockname()[:2]
    connection.send(header[:-1], split)
    connection.pump(3)
    assert connection.received == b""  # no greeting before the whole header
    connection.send(header[-1:])
    connection.replies(1)
    assert connection.received.startswith(b"220 ")
    connection.send(TRANSACTION)
    connection.replies(7)
    assert connection.server.peers == [("192.0.2.1", 56324)]
    channel = connection.channel() if connection.server._channels else None
    if channel is not None:
        assert channel.proxy_peer == real_peer


def test_first_command_in_the_same_segment_is_kept(connect):
    connection = connect(proxy_protocol="v1")
    connection.send(V1_HEADER + b"EHLO client.example\r\nNOOP\r\n")
    connection.replies(3)
    lines = connection.received.splitlines()
    assert lines[0].startswith(b"220 ") and lines[-1] == b"250 OK"
    assert b"250 HELP" in connection.received


def test_proxy_header_and_peer_attributes(connect):
    connection = connect(proxy_protocol="v2")
    real_peer = connection.client.getsockname()[:2]
    connection.send(V2_HEADER)
    connection.replies(1)
    channel = connection.channel()
    assert channel.peer == ("192.0.2.1", 56324)
    assert channel.proxy_peer == real_peer
    assert channel.addr == real_peer  # accept()'s address: the proxy's
    assert channel.proxy_header == ProxyHeader(2, "PROXY", "TCP4", ("192.0.2.1", 56324),
                                               ("198.51.100.25", 25))


@pytest.mark.parametrize("mode, header", [("v2", V2_LOCAL), ("v1", V1_UNKNOWN)],
                         ids=["v2-local", "v1-unknown"])
def test_local_and_unknown_keep_the_real_endpoints(connect, mode, header):
    connection = connect(proxy_protocol=mode)
    real_peer = connection.client.getsockname()[:2]
    connection.send(header)
    connection.replies(1)
    channel = connection.channel()
    assert channel.peer == real_peer == channel.proxy_peer
    assert channel.proxy_header.local


def test_session_idle_timeout_starts_after_the_header(connect):
    connection = connect(proxy_protocol="v1", idle_timeout=0.3, proxy_header_timeout=60)
    connection.send(V1_HEADER)
    connection.replies(1)
    connection.until(lambda: connection.eof)
    assert connection.received.splitlines()[-1].startswith(b"421 ")


def refused(connection, caplog, reason: str) -> None:
    """The server closed *connection* without a byte and logged *reason*."""
    connection.until(lambda: connection.eof)
    assert connection.received == b""
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("PROXY header" in m and reason in m for m in messages), messages


@pytest.mark.parametrize("mode, data", [
    ("v1", b"PROXY TCP4 1.2.3\r\n"),
    ("v1", b"EHLO client.example\r\n"),
    ("v1", V2_HEADER),
    ("v2", V1_HEADER),
    ("any", b"GET / HTTP/1.0\r\n"),
    ("v2", V2_SIGNATURE + b"\x31\x11\x00\x00"),
], ids=["v1-truncated-address", "smtp-without-header", "v2-to-a-v1-server",
        "v1-to-a-v2-server", "http", "v2-bad-version"])
def test_malformed_header_closes_without_greeting(connect, caplog, mode, data):
    caplog.set_level(logging.WARNING, logger="smtpd_compat")
    connection = connect(proxy_protocol=mode)
    connection.send(data)
    refused(connection, caplog, "refused")


def test_missing_header_times_out_without_greeting(connect, caplog):
    caplog.set_level(logging.WARNING, logger="smtpd_compat")
    connection = connect(proxy_protocol="any", proxy_header_timeout=0.2)
    connection.send(V1_HEADER[:10])
    started = time.monotonic()
    refused(connection, caplog, "no complete header in time")
    assert time.monotonic() - started < 3


def test_untrusted_peer_is_closed_without_greeting(connect, caplog):
    caplog.set_level(logging.WARNING, logger="smtpd_compat")
    connection = connect(proxy_protocol="v1", proxy_trusted="10.0.0.0/8")
    connection.send(V1_HEADER)
    refused(connection, caplog, "not a trusted proxy")


def test_trusted_list_takes_the_peer(connect):
    connection = connect(proxy_protocol="v1", proxy_trusted=["10.0.0.0/8", "127.0.0.1"])
    connection.send(V1_HEADER)
    connection.replies(1)
    assert connection.channel().peer == ("192.0.2.1", 56324)


def test_debugging_server_x_peer_shows_the_client(connect, capsys):
    connection = connect(server_class=smtpd_compat.DebuggingServer, proxy_protocol="v1")
    connection.send(V1_HEADER + TRANSACTION)
    connection.replies(7)
    assert "b'X-Peer: 192.0.2.1'" in capsys.readouterr().out


class BareServer(PeerRecordingServer):
    """Makes its socket itself and never runs SMTPServer.__init__ (as lmtpd)."""

    def __init__(self, localaddr, remoteaddr, map=None):
        smtpd_compat.asyncore.dispatcher.__init__(self, map=map)
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.bind(localaddr)
        self.listen(5)


def test_server_without_smtpserver_init(connect):
    connection = connect(server_class=BareServer, proxy_protocol="v2")
    connection.send(V2_HEADER + TRANSACTION)
    connection.replies(7)
    assert connection.server.peers == [("192.0.2.1", 56324)]


class MappedServer(PeerRecordingServer):
    """Listens on an IPv6 socket bound to ::ffff:127.0.0.1, so IPv4 clients come mapped.

    The server's own dual-stack socket (an empty host) listens on every
    interface, which tests must not do; this one is loopback only.
    """

    def __init__(self, localaddr, remoteaddr, map=None):
        smtpd_compat.asyncore.dispatcher.__init__(self, map=map)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setblocking(False)
        self.set_socket(sock)
        self.bind(("::ffff:127.0.0.1", 0))
        self.listen(5)


def mapped_connection(connect, dual_stack: bool):
    try:
        connection = connect(server_class=MappedServer, _dual_stack=dual_stack)
    except OSError as e:
        pytest.skip("no IPv4-mapped IPv6 sockets here: %s" % e)
    connection.replies(1)
    return connection, connection.client.getsockname()[:2]


def test_own_dual_stack_socket_reports_plain_ipv4(connect):
    connection, client = mapped_connection(connect, dual_stack=True)
    channel = connection.channel()
    assert channel.peer == channel.addr == client == ("127.0.0.1", client[1])


def test_users_own_ipv6_socket_keeps_mapped_addresses(connect):
    """As smtpd did: only sockets smtpd_compat made dual-stack are unmapped."""
    connection, client = mapped_connection(connect, dual_stack=False)
    channel = connection.channel()
    assert channel.peer[:2] == ("::ffff:127.0.0.1", client[1]) and len(channel.peer) == 4
    assert channel.addr == channel.peer
