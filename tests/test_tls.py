"""STARTTLS (RFC 3207) and implicit TLS (RFC 8314): raw sockets, exact replies.

The server's loop is pumped by the test (see ``tls_support.TLSSession``), so
the order of events on the wire is the test's choice: the injection test
splits its bytes at every position.
"""

import logging
import os
import socket
import ssl
import struct
import threading
import time

import pytest

import smtpd_compat
from smtpd_compat import _tls
from smtpd_compat._loop import Poller
from tests import tls_support as ts
from tests.conftest import RecordingServer, sessions_made_by

EHLO_WITH_STARTTLS = (b"250-127.0.0.1\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
                      b"250-STARTTLS\r\n250 HELP\r\n")
EHLO_WITHOUT_STARTTLS = (b"250-127.0.0.1\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
                         b"250 HELP\r\n")
MUST_STARTTLS = b"530 5.7.0 Must issue a STARTTLS command first\r\n"


class TLSRecordingServer(RecordingServer):
    hostname = "127.0.0.1"


@pytest.fixture
def make_tls_session():
    """Factory: ``make_tls_session(implicit=False, server_class=..., **attributes)``."""
    def build(implicit=False, server_class=TLSRecordingServer, **attributes):
        return ts.start_tls_session(server_class, implicit, **attributes)

    yield from sessions_made_by(build)


@pytest.fixture
def tls_session(make_tls_session):
    return make_tls_session()


# -- off: nothing changes ------------------------------------------------------

def test_without_a_context_starttls_is_unknown_and_not_offered(make_session):
    session = make_session(attributes={"hostname": "127.0.0.1"})
    assert session.send(b"EHLO c\r\n") == EHLO_WITHOUT_STARTTLS
    assert session.send(b"STARTTLS\r\n") == b'500 Error: command "STARTTLS" not recognized\r\n'


def test_without_a_context_require_starttls_changes_nothing(make_session):
    session = make_session(attributes={"require_starttls": True})
    assert session.send(b"HELO c\r\nMAIL FROM:<a@b>\r\n", 2).endswith(b"250 OK\r\n")


def test_process_message_gets_no_tls_keyword_without_tls(make_session):
    session = make_session()
    session.send(b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 4)
    session.send(b"hi\r\n.\r\n")
    assert "tls" not in session.server.messages[0][3]


# -- STARTTLS --------------------------------------------------------------------

def test_ehlo_offers_starttls_and_the_session_starts_over(tls_session):
    assert tls_session.send(b"EHLO c\r\n") == EHLO_WITH_STARTTLS
    tls_session.starttls()
    # RFC 3207, 4.2: the client must forget what it knew, and so the server.
    assert tls_session.send(b"MAIL FROM:<a@b>\r\n") == b"503 Error: send HELO first\r\n"
    assert tls_session.send(b"EHLO c\r\n") == EHLO_WITHOUT_STARTTLS
    assert tls_session.send(b"STARTTLS\r\n") == b"503 5.5.1 Error: TLS already active\r\n"
    tls_session.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 3)
    assert tls_session.send(b"over TLS\r\n.\r\n") == b"250 OK\r\n"
    mailfrom, rcpttos, data, kwargs = tls_session.server.messages[0]
    assert (mailfrom, data, kwargs["tls"]) == ("a@b", b"over TLS", True)
    assert tls_session.server_channel().tls_active is True


def test_starttls_with_an_argument_is_501(tls_session):
    tls_session.send(b"EHLO c\r\n")
    assert tls_session.send(b"STARTTLS now\r\n") == b"501 5.5.4 Syntax: STARTTLS\r\n"


def test_starttls_inside_a_transaction_is_503(tls_session):
    tls_session.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\n", 2)
    assert (tls_session.send(b"STARTTLS\r\n")
            == b"503 5.5.1 Error: MAIL transaction in progress\r\n")


def test_starttls_forgets_the_transaction_state_and_helo(tls_session):
    tls_session.send(b"HELO c\r\n")
    tls_session.starttls()
    channel = tls_session.server_channel()
    assert (channel.seen_greeting, channel.extended_smtp, channel.mailfrom) == ("", False, None)
    assert tls_session.send(b"HELO again\r\n") == b"250 127.0.0.1\r\n"


class HeloCounting(TLSRecordingServer):
    def check_helo(self, session, command, name):
        session.state.helos = getattr(session.state, "helos", []) + [(name, session.tls)]


def test_policy_state_lives_on_across_starttls_and_helo_is_asked_again(make_tls_session):
    session = make_tls_session(server_class=HeloCounting)
    session.send(b"EHLO before\r\n")
    session.starttls()
    session.send(b"EHLO after\r\n")
    state = session.server_channel().policy_state
    assert state.helos == [("before", False), ("after", True)]


def test_replies_pipelined_before_starttls_go_out_before_the_220(tls_session):
    assert (tls_session.send(b"EHLO c\r\nNOOP\r\nSTARTTLS\r\n", 3)
            == EHLO_WITH_STARTTLS + b"250 OK\r\n" + ts.STARTTLS_READY)
    tls_session.handshake()
    assert tls_session.send(b"NOOP\r\n") == b"250 OK\r\n"


INJECTION = b"STARTTLS\r\nHELP\r\nEHLO evil\r\n"


@pytest.mark.parametrize("split", range(1, len(INJECTION)))
def test_plaintext_pipelined_after_starttls_never_runs(make_tls_session, split):
    """CVE-2011-0411: what follows STARTTLS in plaintext is dropped, wherever it is cut."""
    session = make_tls_session()
    session.client.sendall(INJECTION[:split])
    session.pump(2)
    session.client.sendall(INJECTION[split:])
    if split >= len(b"STARTTLS\r\n"):
        # The injection came after the 220 was sent: the server takes it for
        # the ClientHello, and the handshake fails; it never runs.
        try:
            assert session.read(1) == ts.STARTTLS_READY
            session.handshake()
        except (ssl.SSLError, OSError):
            pass  # the failed handshake (or the reset it makes) reached us
        else:
            pytest.fail("a handshake over injected plaintext succeeded")
        assert session.server_channel() is None
        return
    # One read held STARTTLS and the injection: the injection was cut.
    assert session.read(1) == ts.STARTTLS_READY
    session.handshake()
    # Over TLS, the first reply is the one to our own command: no 250 for
    # the injected HELP, no 503 for a second EHLO.
    assert session.send(b"EHLO c\r\n") == EHLO_WITHOUT_STARTTLS
    assert session.nothing_more() == b""


def test_injection_in_the_same_segment_is_dropped(tls_session):
    tls_session.client.sendall(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\n")
    assert tls_session.read(2).endswith(ts.STARTTLS_READY)
    tls_session.handshake()
    assert tls_session.send(b"EHLO c\r\nRCPT TO:<a@b>\r\n", 2).endswith(
        b"503 Error: need MAIL command\r\n")


# -- require_starttls ------------------------------------------------------------

@pytest.mark.parametrize("line", [b"MAIL FROM:<a@b>", b"RCPT TO:<a@b>", b"DATA", b"RSET",
                                  b"VRFY a", b"HELO c", b"EXPN a"])
def test_require_starttls_refuses_commands_before_tls(make_tls_session, line):
    session = make_tls_session(require_starttls=True)
    session.send(b"EHLO c\r\n")
    assert session.send(line + b"\r\n") == MUST_STARTTLS


def test_require_starttls_allows_the_rfc_3207_commands(make_tls_session):
    session = make_tls_session(require_starttls=True)
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"
    assert session.send(b"HELP\r\n").startswith(b"250 Supported commands")
    assert session.send(b"EHLO c\r\n") == EHLO_WITH_STARTTLS
    assert session.send(b"XYZZY\r\n").startswith(b"500 Error: command")
    session.starttls()
    assert session.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\n", 2).endswith(b"250 OK\r\n")
    assert session.send(b"QUIT\r\n") == b"221 Bye\r\n"


# -- implicit TLS ------------------------------------------------------------------

def test_implicit_tls_greets_after_the_handshake(make_tls_session):
    session = make_tls_session(implicit=True)
    assert session.greeting.startswith(b"220 127.0.0.1 ")
    assert isinstance(session.client, ssl.SSLSocket)
    assert session.send(b"EHLO c\r\n") == EHLO_WITHOUT_STARTTLS
    assert session.send(b"STARTTLS\r\n") == b"503 5.5.1 Error: TLS already active\r\n"
    session.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 3)
    assert session.send(b"x\r\n.\r\n") == b"250 OK\r\n"
    assert session.server.messages[0][3]["tls"] is True


def test_implicit_tls_counts_as_tls_for_require_starttls(make_tls_session):
    session = make_tls_session(implicit=True, require_starttls=True)
    assert session.send(b"HELO c\r\nMAIL FROM:<a@b>\r\n", 2).endswith(b"250 OK\r\n")


def _server(server_class=None, **attributes):
    server = (server_class or TLSRecordingServer)(("127.0.0.1", 0), None, map={})
    for name, value in attributes.items():
        setattr(server, name, value)
    return server


def test_implicit_tls_sends_nothing_before_the_handshake():
    session = ts.TLSSession(_server(**ts.tls_attributes(smtps=True)), greeting=False)
    try:
        assert session.nothing_more(5) == b""
        assert session.server_channel() is not None
    finally:
        session.close()


def test_smtps_without_a_context_closes_and_logs(caplog):
    with caplog.at_level(logging.ERROR, "smtpd_compat"):
        session = ts.TLSSession(_server(smtps=True), greeting=False)
        try:
            assert session.closed_by_server()
        finally:
            session.close()
    assert "tls_context is None" in caplog.text


# -- handshakes that go wrong cost only their own connection -------------------------

def _raw_session(make_tls_session, **attributes):
    session = make_tls_session(**attributes)
    session.send(b"STARTTLS\r\n")
    return session


def test_a_garbage_handshake_closes_only_that_connection(make_tls_session, caplog):
    session = _raw_session(make_tls_session)
    with caplog.at_level(logging.WARNING, "smtpd_compat"):
        session.client.sendall(b"GET / HTTP/1.0\r\n\r\n" * 20)
        assert session.closed_by_server()
    assert "TLS handshake failed" in caplog.text
    other = ts.TLSSession(session.server)
    other.starttls()
    assert other.send(b"NOOP\r\n") == b"250 OK\r\n"
    other.disconnect()


def test_a_client_that_leaves_mid_handshake_costs_only_its_connection(make_tls_session):
    session = _raw_session(make_tls_session)
    session.client.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # half a hello
    session.pump(2)
    session.client.close()
    session.pump(3)
    assert session.server_channel() is None
    other = ts.TLSSession(session.server)
    other.starttls()
    assert other.send(b"NOOP\r\n") == b"250 OK\r\n"
    other.disconnect()


@pytest.mark.parametrize("timeouts", [{"tls_handshake_timeout": 0.2},
                                      {"tls_handshake_timeout": None, "idle_timeout": 0.2}],
                         ids=["handshake-timeout", "idle-timeout"])
def test_a_stalled_handshake_times_out(make_tls_session, caplog, timeouts):
    session = _raw_session(make_tls_session, **timeouts)
    with caplog.at_level(logging.WARNING, "smtpd_compat"):
        time.sleep(0.3)
        session.pump(2)
        # The poller asks dispatchers about their deadlines on its sweeps.
        deadline = time.monotonic() + 2
        while session.server_channel() is not None and time.monotonic() < deadline:
            session.pump(1)
    assert session.server_channel() is None
    assert "TLS handshake timed out" in caplog.text


def test_a_context_that_cannot_wrap_answers_220_then_closes(make_tls_session, caplog):
    """A context made for clients cannot serve: logged, the session closed."""
    session = make_tls_session(tls_context=ssl.create_default_context())
    with caplog.at_level(logging.WARNING, "smtpd_compat"):
        session.send(b"STARTTLS\r\n")
        with pytest.raises((ssl.SSLError, OSError)):
            session.handshake()
    assert "TLS" in caplog.text


# -- the transport: pending bytes, large replies, close_notify -------------------------

class TinyReadsChannel(smtpd_compat.SMTPChannel):
    ac_in_buffer_size = 64  # far below a TLS record: what TLS holds must not be stranded


class TinyReadsServer(TLSRecordingServer):
    channel_class = TinyReadsChannel


def test_bytes_tls_holds_are_not_stranded(make_tls_session):
    session = make_tls_session(server_class=TinyReadsServer)
    session.starttls()
    # One TLS record holds all of it; each read takes 64 bytes.
    session.client.sendall(b"NOOP\r\n" * 300 + b"QUIT\r\n")
    assert session.read(301).count(b"250 OK\r\n") == 300


class BigReplyChannel(smtpd_compat.SMTPChannel):
    def smtp_XBIG(self, arg):
        for number in range(4000):
            self.push("250-%04d %s" % (number, "x" * 1000))
        self.push("250 end")


class BigReplyServer(TLSRecordingServer):
    channel_class = BigReplyChannel


def test_a_4_mb_reply_over_tls(make_tls_session):
    session = make_tls_session(server_class=BigReplyServer)
    session.starttls()
    session.client.sendall(b"XBIG\r\n")
    reply = session.read(1, deadline=20)
    assert reply.count(b"\r\n") == 4001 and reply.endswith(b"250 end\r\n")


def test_quit_over_tls_sends_close_notify(tls_session):
    tls_session.starttls()
    assert tls_session.send(b"QUIT\r\n") == b"221 Bye\r\n"
    deadline = time.monotonic() + 5
    while True:
        tls_session.pump(1)
        try:
            # suppress_ragged_eofs=False: an end without close_notify raises.
            assert tls_session.client.recv(100) == b""
            break
        except ssl.SSLWantReadError:
            assert time.monotonic() < deadline


def _client_leaves(session, how) -> None:
    raw = session.client
    if how == "close_notify":
        try:
            raw.unwrap()  # sends the client's close_notify; the TCP connection stays
        except ssl.SSLWantReadError:
            pass  # (and would wait for the server's)
        return
    if how == "reset":
        # An RST, not a FIN: the server's read fails with ECONNRESET.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # "reset", or "no close_notify": a FIN without TLS's goodbye


@pytest.mark.parametrize("how", ["close_notify", "no close_notify", "reset"])
def test_a_client_that_leaves_mid_message_closes_only_its_channel(tls_session, how, caplog,
                                                                  capsys):
    tls_session.starttls()
    tls_session.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 4)
    tls_session.client.sendall(b"half a message\r\n")
    tls_session.pump(3)
    channel = tls_session.server_channel()
    with caplog.at_level(logging.DEBUG, "smtpd_compat"):
        _client_leaves(tls_session, how)
        deadline = time.monotonic() + 5
        while tls_session.server_channel() is not None:
            assert time.monotonic() < deadline, "the channel stayed open"
            tls_session.pump(1)
    assert not channel.connected and tls_session.server.messages == []
    # Not an error: asyncore's handle_error would print "uncaptured python exception".
    assert "uncaptured" not in capsys.readouterr().out
    assert "Traceback" not in caplog.text


def test_interleaved_tls_channels_keep_their_own_bytes(make_tls_session):
    # One receive buffer serves every channel of a thread: each read must
    # leave with its own copy before the next channel reads.
    sessions = [make_tls_session() for _ in range(3)]
    for session in sessions:
        session.starttls()
        session.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 4)
    bodies = [bytes([ord("a") + number]) * 998 + b"\r\n" for number in range(3)]
    for _ in range(40):
        for session, body in zip(sessions, bodies):
            session.client.sendall(body * 20)
            session.pump(1)
    for session in sessions:
        assert session.send(b".\r\n") == b"250 OK\r\n"
    for session, body in zip(sessions, bodies):
        data = session.server.messages[0][2]
        assert data == (body * 800).replace(b"\r\n", b"\n")[:-1]


# -- under real loops, with smtplib ----------------------------------------------------

def _serve(server, which, stop):
    """Serve *server* with *which* loop until *stop* is set, a pass at a time.

    The test closes the server only after this thread ended: closing sockets
    under a loop that is in select() makes it fail with EBADF.
    """
    if which == "asyncore.loop":
        while not stop.is_set() and server._map:
            smtpd_compat.asyncore.loop(timeout=0.05, map=server._map, count=1)
        return
    poller = Poller(server._map)
    try:
        while not stop.is_set() and poller.map:
            poller.poll(0.05)
    finally:
        poller.close()


@pytest.fixture(params=["smtpd_compat.loop", "asyncore.loop"])
def threaded_server(request):
    servers = []

    def start(**attributes):
        server = TLSRecordingServer(("127.0.0.1", 0), None, map={})
        for name, value in ts.tls_attributes(**attributes).items():
            setattr(server, name, value)
        stop = threading.Event()
        thread = threading.Thread(target=_serve, args=(server, request.param, stop),
                                  daemon=True)
        thread.start()
        servers.append((server, thread, stop))
        return server

    yield start
    for server, thread, stop in servers:
        stop.set()
        thread.join(5)
        assert not thread.is_alive()
        smtpd_compat.asyncore.close_all(server._map)


TEN_MIB = b"Subject: big\r\n\r\n" + (b"0123456789abcdef" * 63 + b"0123456789abcd\r\n") * 10240


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "smtps"])
def test_smtplib_sends_10_mib_over_tls(threaded_server, implicit):
    import smtplib

    server = threaded_server(smtps=implicit)
    port = server.socket.getsockname()[1]
    if implicit:
        client = smtplib.SMTP_SSL("localhost", port, context=ts.client_context(), timeout=30)
    else:
        client = smtplib.SMTP("localhost", port, timeout=30)
        client.starttls(context=ts.client_context())
    with client:
        client.sendmail("a@b", ["c@d"], TEN_MIB)
        assert isinstance(client.sock, ssl.SSLSocket)
    mailfrom, rcpttos, data, kwargs = server.messages[0]
    assert data == TEN_MIB.replace(b"\r\n", b"\n")[:-1]  # the last CRLF ends DATA
    assert kwargs["tls"] is True


def test_many_parallel_starttls_sessions(threaded_server):
    import smtplib

    server = threaded_server()
    port = server.socket.getsockname()[1]
    failures = []

    def one(number):
        try:
            with smtplib.SMTP("localhost", port, timeout=20) as client:
                client.starttls(context=ts.client_context())
                client.sendmail("a@b", ["c@d"], b"Subject: %d\r\n\r\nx" % number)
        except Exception as error:  # collected, reported below
            failures.append(error)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert len(server.messages) == 30


def _greeted_tls_client(port, context, session=None):
    client = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                 server_hostname="localhost", session=session)
    assert client.recv(100).startswith(b"220 ")
    return client


def test_the_command_line_context_issues_a_ticket_that_resumes(threaded_server, tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    ts.certificate().cert_chain_pems[0].write_to_path(cert)
    ts.certificate().private_key_pem.write_to_path(key)
    context = _tls.server_context(cert, key)
    assert context.num_tickets == 1  # as Postfix issues; OpenSSL's default is 2
    server = threaded_server(smtps=True, tls_context=context)
    port = server.socket.getsockname()[1]
    client_context = ts.client_context()
    with _greeted_tls_client(port, client_context) as first:
        assert not first.session_reused
        session = first.session
    assert session.has_ticket
    with _greeted_tls_client(port, client_context, session) as second:
        assert second.session_reused


# -- pure parts ---------------------------------------------------------------------

V1_HEADER = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 465\r\n"
V2_HEADER = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x07\x7f\x00\x00\x01"
             b"\x15\xb3\x01\xd1")
CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


@pytest.mark.parametrize("header", [V1_HEADER, V2_HEADER], ids=["v1", "v2"])
def test_header_length_is_known_exactly_when_the_bytes_tell(header):
    from smtpd_compat._haproxy import header_length

    # Whole, with trailing TLS bytes, and at every prefix.
    assert header_length(header) == len(header)
    assert header_length(header + CLIENT_HELLO_START) == len(header)
    known_from = len(header) if header is V1_HEADER else 16
    for end in range(len(header)):
        expected = len(header) if end >= known_from else None
        assert header_length(header[:end]) == expected, end


@pytest.mark.parametrize("data", [b"", CLIENT_HELLO_START, b"PROXY " + b"x" * 200,
                                  b"EHLO x\r\n"], ids=["empty", "tls", "v1-too-long", "smtp"])
def test_header_length_of_no_header_is_none(data):
    from smtpd_compat._haproxy import header_length

    assert header_length(data) is None


def test_allowed_before_tls_is_rfc_3207s_list_and_help():
    assert _tls.ALLOWED_BEFORE_TLS == {"EHLO", "NOOP", "QUIT", "HELP", "STARTTLS"}


# -- the testing helpers ------------------------------------------------------------

def test_controller_with_tls_offers_starttls_with_a_verifiable_certificate():
    import smtplib

    from smtpd_compat.testing import Controller

    with Controller(tls=True) as smtp:
        with smtplib.SMTP(smtp.hostname, smtp.port, timeout=10) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            # The certificate names the listening address as well as localhost.
            client.starttls(context=smtp.client_context())
            client.sendmail("a@b", ["c@d"], b"hello")
        with open(smtp.ca_file, "rb") as ca_file:
            assert ca_file.read() == smtp.tls_ca.cert_pem.bytes()
        ca_path = smtp.ca_file
    assert smtp.server.messages[0].tls is True
    assert smtp.ca_file is None and not os.path.exists(ca_path)


def test_controller_with_smtps_and_an_untrusting_client():
    import smtplib

    from smtpd_compat.testing import Controller

    with Controller(smtps=True) as smtp:
        with smtplib.SMTP_SSL("localhost", smtp.port, context=smtp.client_context(),
                              timeout=10) as client:
            client.sendmail("a@b", ["c@d"], b"hello")
        with pytest.raises(ssl.SSLCertVerificationError):
            smtplib.SMTP_SSL("localhost", smtp.port, context=ssl.create_default_context(),
                             timeout=10)
    assert [m.tls for m in smtp.server.messages] == [True]


def test_controller_without_tls_has_no_client_context():
    from smtpd_compat.testing import Controller

    with Controller() as smtp:
        assert smtp.server.tls_context is None and smtp.ca_file is None
        with pytest.raises(RuntimeError):
            smtp.client_context()


# -- a PROXY protocol peer survives STARTTLS (issue 11's leftover) --------------------

class PeerRecordingServer(TLSRecordingServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.peers = getattr(self, "peers", []) + [peer]
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x07\x7f\x00\x00\x01\x15\xb3\x00\x19",
], ids=["v1", "v2"])
def test_the_proxy_header_peer_survives_starttls(header):
    server = _server(PeerRecordingServer, **ts.tls_attributes(proxy_protocol="any"))
    session = ts.TLSSession(server, greeting=False)
    try:
        session.client.sendall(header)
        assert session.read(1).startswith(b"220 ")
        proxy_peer = session.server_channel().proxy_peer
        session.starttls()
        channel = session.server_channel()
        assert channel.tls_active
        assert channel.peer == ("192.0.2.7", 5555)
        assert channel.proxy_peer == proxy_peer and proxy_peer[0] == "127.0.0.1"
        session.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 4)
        assert session.send(b"x\r\n.\r\n") == b"250 OK\r\n"
        assert server.peers == [("192.0.2.7", 5555)]
    finally:
        session.close()


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 465\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x07\x7f\x00\x00\x01\x15\xb3\x01\xd1",
], ids=["v1", "v2"])
def test_implicit_tls_behind_a_proxy_that_sends_the_header_with_the_client_hello(header):
    """HAProxy may write the header and the client's first TLS bytes at once."""
    server = _server(PeerRecordingServer, **ts.tls_attributes(proxy_protocol="any",
                                                                smtps=True))
    session = ts.TLSSession(server, greeting=False)
    try:
        session.client.sendall(header)  # not pumped: one read gets it with the hello
        session.handshake()
        assert session.read(1).startswith(b"220 ")
        assert session.server_channel().peer == ("192.0.2.7", 5555)
        session.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 4)
        assert session.send(b"x\r\n.\r\n") == b"250 OK\r\n"
        assert server.peers == [("192.0.2.7", 5555)]
    finally:
        session.close()
