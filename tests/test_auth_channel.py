"""AUTH on a real loopback connection: every rule of RFC 4954 as this server keeps it.

The test drives the server's loop itself (conftest's PumpedSession), sends
raw command lines and checks the reply bytes.
"""

import base64
import concurrent.futures
import hmac
import io
import logging
import re
import socket
import threading

import pytest

import smtpd_compat

try:
    from .conftest import PumpedSession, RecordingServer
except ImportError:
    from conftest import PumpedSession, RecordingServer

USERS = {"bob": "s3cr\u00e9t-pw", "ann": "other"}
PASSWORD = USERS["bob"]

PLAIN_OK = base64.b64encode(("\0bob\0" + PASSWORD).encode("utf-8"))
PLAIN_BAD = base64.b64encode(b"\0bob\0wrong-pw")
EHLO_ON = (b"250-127.0.0.1\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
           b"250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 HELP\r\n")
EHLO_OFF = b"250-127.0.0.1\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n"
OK_235 = b"235 2.7.0 Authentication successful\r\n"
BAD_535 = b"535 5.7.8 Authentication credentials invalid\r\n"


def b64(text) -> bytes:
    if isinstance(text, str):
        text = text.encode("utf-8")
    return base64.b64encode(text)


class AuthServer(RecordingServer):
    hostname = "127.0.0.1"
    auth_users = USERS
    auth_plaintext = True


class LoginRecorder(AuthServer):
    """process_message names the keywords: it always gets them."""

    def process_message(self, peer, mailfrom, rcpttos, data, mail_options=None,
                        rcpt_options=None, auth_login="unset", tls="unset"):
        self.messages.append((mailfrom, auth_login, tls))


class FutureServer(AuthServer):
    """authenticate answers later, from the test's hand."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending = []

    def authenticate(self, peer, login, password):
        future = concurrent.futures.Future()
        self.pending.append((future, login, password))
        return future


@pytest.fixture
def auth_session(make_session):
    def make(server_class=AuthServer, **attributes):
        session = make_session(server_class, attributes=attributes)
        assert session.send(b"EHLO there\r\n") == EHLO_ON if not attributes else True
        return session
    return make


# -- off: smtpd's bytes ---------------------------------------------------------

def test_off_by_default_ehlo_and_auth_are_smtpds(make_session):
    session = make_session(RecordingServer, attributes={"hostname": "127.0.0.1"})
    assert session.send(b"EHLO there\r\n") == EHLO_OFF
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == (
        b'500 Error: command "AUTH" not recognized\r\n')
    assert session.send(b"MAIL FROM:<a@b> AUTH=<>\r\n") == (
        b"555 MAIL FROM parameters not recognized or not implemented\r\n")
    assert session.send(b"HELP AUTH\r\n").startswith(b"501 Supported commands:")
    assert session.send(b"AUTH PLAIN " + b"A" * 600 + b"\r\n") == (
        b"500 Error: line too long\r\n")


def test_plaintext_auth_not_allowed_is_not_offered_and_refused(make_session):
    session = make_session(AuthServer, attributes={"auth_plaintext": False})
    assert session.send(b"EHLO there\r\n") == EHLO_OFF
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == (
        b"538 5.7.11 Encryption required for requested authentication mechanism\r\n")
    assert session.send(b"MAIL FROM:<a@b>\r\n") == b"250 OK\r\n"


def test_auth_no_connection_can_use_is_logged_once_per_server(make_session, caplog):
    session = make_session(AuthServer, attributes={"auth_plaintext": False})
    with caplog.at_level(logging.WARNING, logger="smtpd_compat"):
        assert session.send(b"EHLO there\r\n") == EHLO_OFF
        second = PumpedSession(session.server)
        try:
            assert second.send(b"EHLO again\r\n") == EHLO_OFF
        finally:
            second.close()
    said = [record.getMessage() for record in caplog.records]
    assert said == ["AuthServer checks credentials but never offers AUTH: it has no "
                    "tls_context and auth_plaintext is off"]


def test_auth_kept_for_tls_is_not_logged_as_never_offered(make_session, caplog):
    session = make_session(AuthServer, attributes={"auth_plaintext": False,
                                                   "tls_context": object()})
    with caplog.at_level(logging.WARNING, logger="smtpd_compat"):
        assert session.send(b"EHLO there\r\n").endswith(b"250-STARTTLS\r\n250 HELP\r\n")
    assert caplog.records == []


def test_over_tls_auth_is_offered_without_plaintext_permission(make_session):
    session = make_session(AuthServer, attributes={"auth_plaintext": False})
    channel = next(iter(session.server._channels))
    channel.tls_active = True  # what the TLS layer sets after the handshake
    assert session.send(b"EHLO there\r\n") == EHLO_ON
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235


# -- success --------------------------------------------------------------------

@pytest.mark.parametrize("split", [None, 1, 7], ids=["whole", "byte-by-byte", "odd"])
def test_plain_with_initial_response(auth_session, split):
    session = auth_session()
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n", split=split) == OK_235
    channel = next(iter(session.server._channels))
    assert channel.auth_login == "bob"


@pytest.mark.parametrize("split", [None, 1], ids=["whole", "byte-by-byte"])
def test_plain_after_empty_challenge(auth_session, split):
    session = auth_session()
    assert session.send(b"AUTH PLAIN\r\n", split=split) == b"334 \r\n"
    assert session.send(PLAIN_OK + b"\r\n", split=split) == OK_235


def test_login_challenges_are_username_and_password(auth_session):
    session = auth_session()
    assert session.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert session.send(b64("bob") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert session.send(b64(PASSWORD) + b"\r\n") == OK_235


def test_login_with_initial_username(auth_session):
    session = auth_session()
    assert session.send(b"AUTH LOGIN " + b64("bob") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert session.send(b64(PASSWORD) + b"\r\n") == OK_235


def _cram_answer(challenge_line: bytes, login: str, password: str) -> bytes:
    challenge = base64.b64decode(challenge_line[4:].strip())
    digest = hmac.new(password.encode("utf-8"), challenge, "md5").hexdigest()
    return b64("%s %s" % (login, digest)) + b"\r\n"


def test_cram_md5(auth_session):
    session = auth_session()
    challenge_line = session.send(b"AUTH CRAM-MD5\r\n")
    assert re.fullmatch(rb"334 [A-Za-z0-9+/=]+\r\n", challenge_line)
    assert base64.b64decode(challenge_line[4:].strip()).endswith(b"@127.0.0.1>")
    assert session.send(_cram_answer(challenge_line, "bob", PASSWORD)) == OK_235


def test_cram_md5_wrong_password_and_unknown_login(auth_session):
    session = auth_session()
    line = session.send(b"AUTH CRAM-MD5\r\n")
    assert session.send(_cram_answer(line, "bob", "wrong")) == BAD_535
    line = session.send(b"AUTH CRAM-MD5\r\n")
    assert session.send(_cram_answer(line, "nobody", "x")) == BAD_535


@pytest.mark.parametrize("line", [b"auth plain ", b"AuTh PlAiN ", b"AUTH plain "],
                         ids=["lower", "mixed", "mechanism-lower"])
def test_verb_and_mechanism_are_case_insensitive(auth_session, line):
    assert auth_session().send(line + PLAIN_OK + b"\r\n") == OK_235


def test_pipelined_dialogue_in_one_packet(auth_session):
    session = auth_session()
    replies = session.send(
        b"AUTH LOGIN\r\n" + b64("bob") + b"\r\n" + b64(PASSWORD) + b"\r\n"
        b"MAIL FROM:<a@b> AUTH=<>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\n", replies=7)
    assert replies == (b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n" + OK_235
                       + b"250 OK\r\n250 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
                       b"250 OK\r\n")


# -- refusals -------------------------------------------------------------------

def test_wrong_password_535(auth_session):
    session = auth_session()
    assert session.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n") == BAD_535
    channel = next(iter(session.server._channels))
    assert channel.auth_login is None
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235


def test_other_authorization_identity_is_refused(auth_session):
    message = b64("ann\0bob\0" + PASSWORD)
    assert auth_session().send(b"AUTH PLAIN " + message + b"\r\n") == BAD_535


def test_two_failures_then_success_goes_on(auth_session):
    session = auth_session()
    assert session.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n") == BAD_535
    assert session.send(b"AUTH LOGIN " + b64("bob") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert session.send(b64("nope") + b"\r\n") == BAD_535
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\nNOOP\r\n", replies=2) == (
        OK_235 + b"250 OK\r\n")


def test_third_failure_closes(auth_session):
    session = auth_session()
    for _ in range(2):
        assert session.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n") == BAD_535
    assert session.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\nNOOP\r\n", replies=2) == (
        BAD_535 + b"421 4.7.0 127.0.0.1 Error: too many failed authentications\r\n")
    assert session.closed_by_server()


def test_failure_limit_off(auth_session):
    session = auth_session(auth_max_failures=None)
    session.send(b"EHLO there\r\n")
    for _ in range(5):
        assert session.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n") == BAD_535


@pytest.mark.parametrize("before, expected", [
    (b"", b"503 5.5.1 Error: send EHLO first\r\n"),
    (b"HELO there\r\n", b"503 5.5.1 Error: send EHLO first\r\n"),
], ids=["no-greeting", "helo"])
def test_auth_only_after_ehlo(make_session, before, expected):
    session = make_session(AuthServer)
    if before:
        session.send(before)
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == expected


def test_not_twice(auth_session):
    session = auth_session()
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == (
        b"503 5.5.1 Error: already authenticated\r\n")
    assert session.send(b"RSET\r\nAUTH LOGIN\r\n", replies=2) == (
        b"250 OK\r\n503 5.5.1 Error: already authenticated\r\n")


def test_not_inside_a_transaction(auth_session):
    session = auth_session()
    assert session.send(b"MAIL FROM:<a@b>\r\n") == b"250 OK\r\n"
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == (
        b"503 5.5.1 Error: MAIL transaction in progress\r\n")
    assert session.send(b"RSET\r\nAUTH PLAIN " + PLAIN_OK + b"\r\n", replies=2) == (
        b"250 OK\r\n" + OK_235)


@pytest.mark.parametrize("line, expected", [
    (b"AUTH\r\n", b"501 Syntax: AUTH mechanism [initial-response]\r\n"),
    (b"AUTH DIGEST-MD5\r\n", b"504 5.5.4 Unrecognized authentication type\r\n"),
    (b"AUTH XOAUTH2 dG9rZW4=\r\n", b"504 5.5.4 Unrecognized authentication type\r\n"),
    (b"AUTH PLAIN not*base64\r\n", b"501 5.5.2 Cannot decode response\r\n"),
    (b"AUTH PLAIN " + PLAIN_OK + b" trailing\r\n", b"501 5.5.2 Cannot decode response\r\n"),
    (b"AUTH PLAIN *\r\n", b"501 5.7.0 Authentication cancelled\r\n"),
    (b"AUTH PLAIN =\r\n", b"501 5.5.2 Cannot decode response\r\n"),
    (b"AUTH PLAIN " + b64("bob\0secret") + b"\r\n", b"501 5.5.2 Cannot decode response\r\n"),
    (b"AUTH CRAM-MD5 " + b64("x") + b"\r\n",
     b"501 5.5.4 This mechanism takes no initial response\r\n"),
], ids=["no-mechanism", "unknown", "xoauth2", "bad-base64", "trailing-data", "cancel",
        "empty-plain", "one-nul", "cram-initial"])
def test_command_refusals(auth_session, line, expected):
    assert auth_session().send(line) == expected


@pytest.mark.parametrize("response, expected", [
    (b"*", b"501 5.7.0 Authentication cancelled\r\n"),
    (b"Ym9i YQ==", b"501 5.5.2 Cannot decode response\r\n"),
    (b"\xff\xfe", b"501 5.5.2 Cannot decode response\r\n"),
    (b"Ym9i\x00", b"501 5.5.2 Cannot decode response\r\n"),
], ids=["cancel", "blank", "undecodable", "nul"])
def test_continuation_refusals(auth_session, response, expected):
    session = auth_session()
    assert session.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert session.send(response + b"\r\n") == expected
    # The exchange is over: the next line is a command again.
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


def test_continuation_line_is_not_a_command(auth_session):
    session = auth_session()
    assert session.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    # "QUIT" is base64 too: it is the user name here, not the command.
    assert session.send(b"QUIT\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert not session.closed_by_server()
    assert session.send(b"RSET\r\n") == BAD_535  # and "RSET" the password


def test_mechanism_not_offered_is_unknown(make_session):
    class NoCram(AuthServer):
        auth_mechanisms = ("login", "PLAIN", "XOAUTH2", "LOGIN")
    session = make_session(NoCram)
    assert b"250-AUTH LOGIN PLAIN\r\n" in session.send(b"EHLO there\r\n")
    assert session.send(b"AUTH CRAM-MD5\r\n") == (
        b"504 5.5.4 Unrecognized authentication type\r\n")


# -- long lines (RFC 4954: 12,288 octets) ------------------------------------------

def _plain_line(head: bytes, length: int) -> bytes:
    """*head* and a PLAIN message for bob, base64, making a line of *length* octets."""
    encoded_length = length - len(head)
    assert encoded_length % 4 == 0
    raw = b"\0bob\0" + b"x" * (encoded_length // 4 * 3 - 5)
    line = head + base64.b64encode(raw)
    assert len(line) == length
    return line


def test_auth_line_of_12288_octets_is_read(auth_session):
    line = _plain_line(b"AUTH  PLAIN ", 12288)
    assert auth_session().send(line + b"\r\n") == BAD_535


def test_auth_line_over_12288_octets_is_too_long(auth_session):
    line = _plain_line(b"AUTH   PLAIN ", 12289)
    session = auth_session()
    assert session.send(line + b"\r\n") == b"500 Error: line too long\r\n"
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


def test_continuation_line_of_12288_octets(auth_session):
    session = auth_session()
    assert session.send(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert session.send(_plain_line(b"", 12288) + b"\r\n") == BAD_535
    assert session.send(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert session.send(_plain_line(b"", 12292) + b"\r\n") == (
        b"500 Error: line too long\r\n")
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


def test_other_commands_keep_their_limit(auth_session):
    session = auth_session()
    assert session.send(b"NOOP " + b"x" * 1000 + b"\r\n") == b"500 Error: line too long\r\n"


# -- the server's verdict --------------------------------------------------------

def test_authenticate_raising_is_454(make_session, caplog):
    class Broken(AuthServer):
        def authenticate(self, peer, login, password):
            raise OSError("directory down")
    session = make_session(Broken)
    session.send(b"EHLO there\r\n")
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == (
            b"454 4.7.0 Temporary authentication failure\r\n")
    assert "directory down" in caplog.text and PASSWORD not in caplog.text
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


def test_authenticate_may_answer_534(make_session):
    class NeedsCram(AuthServer):
        def authenticate(self, peer, login, password):
            return "534 5.7.9 Authentication mechanism is too weak"
    session = make_session(NeedsCram)
    session.send(b"EHLO there\r\n")
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == (
        b"534 5.7.9 Authentication mechanism is too weak\r\n")
    line = session.send(b"AUTH CRAM-MD5\r\n")
    assert session.send(_cram_answer(line, "bob", PASSWORD)) == OK_235


@pytest.mark.parametrize("answer", ["250 sure", PASSWORD, 1, "535 a\r\n250 b"],
                         ids=["2xx", "the-password", "int", "two-lines"])
def test_authenticate_bad_answer_is_454_and_not_logged(make_session, caplog, answer):
    class Odd(AuthServer):
        def authenticate(self, peer, login, password):
            return answer
    session = make_session(Odd)
    session.send(b"EHLO there\r\n")
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == (
            b"454 4.7.0 Temporary authentication failure\r\n")
    assert "authenticate() returned a" in caplog.text
    assert PASSWORD not in caplog.text


def test_auth_password_of_the_wrong_type_is_454(make_session):
    class Odd(AuthServer):
        def auth_password(self, login):
            return 12345
    session = make_session(Odd)
    session.send(b"EHLO there\r\n")
    line = session.send(b"AUTH CRAM-MD5\r\n")
    assert session.send(_cram_answer(line, "bob", "12345")) == (
        b"454 4.7.0 Temporary authentication failure\r\n")


def test_authenticate_override_alone_offers_plain_and_login(make_session):
    class Own(RecordingServer):
        auth_plaintext = True
        seen = []

        def authenticate(self, peer, login, password):
            self.seen.append((peer[0], login, password))
            return login == "me" and password == "pw"
    session = make_session(Own)
    assert b"250-AUTH PLAIN LOGIN\r\n" in session.send(b"EHLO there\r\n")
    assert session.send(b"AUTH PLAIN " + b64("\0me\0pw") + b"\r\n") == OK_235
    assert Own.seen == [("127.0.0.1", "me", "pw")]


def test_auth_password_override_offers_cram(make_session):
    class Store(RecordingServer):
        auth_plaintext = True

        def auth_password(self, login):
            return {"kim": "pw"}.get(login)

        def authenticate(self, peer, login, password):
            return self.auth_password(login) == password
    session = make_session(Store)
    assert b"250-AUTH PLAIN LOGIN CRAM-MD5\r\n" in session.send(b"EHLO there\r\n")
    line = session.send(b"AUTH CRAM-MD5\r\n")
    assert session.send(_cram_answer(line, "kim", "pw")) == OK_235


def test_future_verdict_does_not_block_other_clients(make_session):
    first = make_session(FutureServer)
    first.send(b"EHLO there\r\n")
    first.client.sendall(b"AUTH PLAIN " + PLAIN_OK + b"\r\nNOOP\r\n")
    first.pump(5)
    assert first.nothing_more() == b""
    server = first.server
    future, login, password = server.pending[0]
    assert (login, password) == ("bob", PASSWORD)
    # Another client of the same server is served meanwhile.
    second = socket.create_connection(server.socket.getsockname()[:2], timeout=5)
    second.setblocking(False)
    got = b""
    for _ in range(200):
        first.pump(1)
        try:
            got += second.recv(1024)
        except BlockingIOError:
            pass
        if got.endswith(b"\r\n"):
            break
    assert got.startswith(b"220 ")
    second.close()
    threading.Thread(target=future.set_result, args=(True,)).start()
    assert first.read(2) == OK_235 + b"250 OK\r\n"


@pytest.mark.parametrize("outcome, expected", [
    (False, BAD_535),
    (OSError("ldap down"), b"454 4.7.0 Temporary authentication failure\r\n"),
], ids=["refused", "raised"])
def test_future_refusal_and_failure(make_session, outcome, expected):
    session = make_session(FutureServer)
    session.send(b"EHLO there\r\n")
    session.client.sendall(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    session.pump(5)
    future = session.server.pending[0][0]
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
    assert session.read(1) == expected
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


def test_future_third_failure_closes(make_session):
    session = make_session(FutureServer)
    session.send(b"EHLO there\r\n")
    for attempt in range(3):
        session.client.sendall(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n")
        session.pump(5)
        session.server.pending[attempt][0].set_result(False)
        expected = 2 if attempt == 2 else 1
        reply = session.read(expected)
    assert reply == BAD_535 + b"421 4.7.0 127.0.0.1 Error: too many failed authentications\r\n"
    assert session.closed_by_server()


# -- MAIL -----------------------------------------------------------------------

def test_auth_required_530_before_mail(auth_session):
    session = auth_session(auth_required=True)
    session.send(b"EHLO there\r\n")
    assert session.send(b"MAIL FROM:<a@b>\r\n") == b"530 5.7.0 Authentication required\r\n"
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    assert session.send(b"MAIL FROM:<a@b>\r\n") == b"250 OK\r\n"


@pytest.mark.parametrize("parameter, expected", [
    (b"AUTH=<>", b"250 OK\r\n"),
    (b"auth=bob+40example.org", b"250 OK\r\n"),
    (b"AUTH=<> SIZE=10 BODY=8BITMIME", b"250 OK\r\n"),
    (b"AUTH", b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n"),
    (b"AUTH=a+zz", b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n"),
], ids=["null", "xtext", "with-others", "no-value", "bad-xtext"])
def test_mail_auth_parameter(auth_session, parameter, expected):
    assert auth_session().send(b"MAIL FROM:<a@b> " + parameter + b"\r\n") == expected


def test_mail_auth_parameter_with_long_address(auth_session):
    address = b"a" * 60 + b"@" + b"b" * 180
    line = b"MAIL FROM:<" + address + b"> AUTH=" + b"x" * 400 + b" SIZE=1"
    assert len(line) > 512 + 26
    assert auth_session().send(line + b"\r\n") == b"250 OK\r\n"


# -- who sent it ----------------------------------------------------------------

def test_process_message_gets_auth_login_and_tls(make_session):
    session = make_session(LoginRecorder)
    session.send(b"EHLO there\r\n")
    session.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n", replies=4)
    session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    session.send(b"MAIL FROM:<e@f>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n", replies=4)
    assert session.server.messages == [("a@b", None, False), ("e@f", "bob", False)]


@pytest.mark.parametrize("decode_data", [False, True], ids=["bytes", "text"])
def test_kwargs_override_sees_auth_login_only_when_logged_in(make_session, decode_data):
    session = make_session(AuthServer, decode_data=decode_data)
    session.send(b"EHLO there\r\n")
    session.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n", replies=4)
    session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    session.send(b"MAIL FROM:<e@f>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n", replies=4)
    first, second = (message[3] for message in session.server.messages)
    assert "auth_login" not in first and "tls" not in first
    assert second["auth_login"] == "bob" and "tls" not in second


def test_old_style_process_message_gets_no_new_keywords(make_session):
    class Old(AuthServer):
        def process_message(self, peer, mailfrom, rcpttos, data):
            self.messages.append(mailfrom)
    session = make_session(Old)
    session.send(b"EHLO there\r\n")
    session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert session.send(b"MAIL FROM:<e@f>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n",
                        replies=4).endswith(b"250 OK\r\n")
    assert session.server.messages == ["e@f"]


# -- secrets stay secret ----------------------------------------------------------

def test_no_secret_reaches_debugstream_or_log(make_session, monkeypatch, caplog):
    stream = io.StringIO()
    monkeypatch.setattr(smtpd_compat, "DEBUGSTREAM", stream)
    session = make_session(AuthServer)
    secrets = [PASSWORD, "wrong-pw", PLAIN_OK.decode(), PLAIN_BAD.decode(),
               b64(PASSWORD).decode(), b64("wrong-pw").decode()]
    with caplog.at_level(logging.DEBUG, logger="smtpd_compat"):
        session.send(b"EHLO there\r\n")
        session.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n")
        session.send(b"AUTH LOGIN\r\n")
        session.send(b64("bob") + b"\r\n")
        session.send(b64("wrong-pw") + b"\r\n")
        session.send(b"AUTH PLAIN\r\n")
        session.send(PLAIN_BAD + b"\r\n", replies=2)  # third failure: 535 and 421
    session = make_session(AuthServer)
    with caplog.at_level(logging.DEBUG, logger="smtpd_compat"):
        session.send(b"EHLO there\r\n")
        line = session.send(b"AUTH CRAM-MD5\r\n")
        cram = _cram_answer(line, "bob", PASSWORD)
        session.send(cram)
        session.send(b"AUTH LOGIN " + b64("bob") + b"\r\n")
        session.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n", replies=4)
    secrets.append(cram.strip().decode())
    debug_output = stream.getvalue()
    assert "AUTH PLAIN <hidden>" in debug_output and "logged in as 'bob'" in debug_output
    for secret in secrets:
        assert secret not in debug_output
        assert secret not in caplog.text


def test_cram_md5_with_a_future_password_lookup(make_session):
    class Slow(AuthServer):
        def auth_password(self, login):
            future = concurrent.futures.Future()
            threading.Timer(0.05, future.set_result, (USERS.get(login),)).start()
            return future
    session = make_session(Slow)
    session.send(b"EHLO there\r\n")
    line = session.send(b"AUTH CRAM-MD5\r\n")
    assert session.send(_cram_answer(line, "bob", PASSWORD)) == OK_235


def test_forget_starts_auth_over(auth_session):
    from smtpd_compat import _auth
    session = auth_session()
    assert session.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n") == BAD_535
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    channel = next(iter(session.server._channels))
    assert (channel.auth_login, channel._auth_failures) == ("bob", 1)
    _auth.forget(channel)
    assert (channel.auth_login, channel._auth_failures, channel._line_reader) == (
        None, 0, None)
    assert "auth_login" not in vars(channel)
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235


def test_tls_keyword_follows_the_channel(make_session):
    named = make_session(LoginRecorder)
    kwargs = make_session(AuthServer)
    for session in (named, kwargs):
        next(iter(session.server._channels)).tls_active = True  # as the TLS layer does
        session.send(b"EHLO there\r\n")
        session.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n", replies=4)
    assert named.server.messages == [("a@b", None, True)]
    assert kwargs.server.messages[0][3] == {"mail_options": [], "rcpt_options": [],
                                            "tls": True}
