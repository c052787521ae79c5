"""AUTH and TLS together, on real TLS connections: the rules that join them.

AUTH is offered and taken only over TLS (unless ``auth_plaintext``), as
Postfix's ``smtpd_tls_auth_only``: before STARTTLS it is not advertised and
is refused 538; implicit TLS counts as TLS from the first EHLO (the hole of
aiosmtpd#281); STARTTLS starts the session over, a login included (RFC
3207, section 4.2); ``require_starttls`` and ``auth_required`` together
answer each its own 530.  The test pumps the server's loop
(``tls_support.TLSSession``); replies are checked byte for byte.
"""

import base64
import concurrent.futures
import hmac
import io
import smtplib
import textwrap
import threading

import pytest

import smtpd_compat
from smtpd_compat.testing import Controller
from tests import tls_support as ts
from tests.conftest import RecordingServer, sessions_made_by
from tests.test_pytest_plugin import run
from tests.test_tls import threaded_server  # noqa: F401 (a fixture)

pytest_plugins = ["pytester"]

USERS = {"bob": "s3cret-pw"}
PLAIN_OK = base64.b64encode(b"\0bob\0s3cret-pw")
PLAIN_BAD = base64.b64encode(b"\0bob\0wrong-pw")

EHLO_BEFORE_TLS = (b"250-127.0.0.1\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
                   b"250-STARTTLS\r\n250 HELP\r\n")
EHLO_OVER_TLS = (b"250-127.0.0.1\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
                 b"250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 HELP\r\n")
EHLO_BEFORE_TLS_PLAINTEXT_AUTH = (
    b"250-127.0.0.1\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 HELP\r\n")
OK_235 = b"235 2.7.0 Authentication successful\r\n"
BAD_535 = b"535 5.7.8 Authentication credentials invalid\r\n"
NEEDS_TLS_538 = b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
MUST_STARTTLS_530 = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
AUTH_REQUIRED_530 = b"530 5.7.0 Authentication required\r\n"
MESSAGE = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"


class AuthTLSServer(RecordingServer):
    hostname = "127.0.0.1"
    auth_users = USERS


@pytest.fixture
def make_auth_tls_session():
    """Factory: ``make_auth_tls_session(implicit=False, server_class=..., **attributes)``."""
    def build(implicit=False, server_class=None, **attributes):
        return ts.start_tls_session(server_class or AuthTLSServer, implicit, **attributes)

    yield from sessions_made_by(build)


def _deliver(session) -> bytes:
    session.send(MESSAGE, 3)
    return session.send(b"body\r\n.\r\n")


# -- STARTTLS: AUTH only once TLS is on --------------------------------------------

@pytest.mark.parametrize("line", [b"AUTH PLAIN " + PLAIN_OK, b"AUTH LOGIN", b"AUTH CRAM-MD5",
                                  b"auth plain"])
def test_before_starttls_auth_is_not_offered_and_is_refused_538(make_auth_tls_session, line):
    session = make_auth_tls_session()
    assert session.send(b"EHLO c\r\n") == EHLO_BEFORE_TLS
    assert session.send(line + b"\r\n") == NEEDS_TLS_538
    assert session.server_channel().auth_login is None


def test_after_starttls_auth_is_offered_and_taken(make_auth_tls_session):
    session = make_auth_tls_session()
    session.send(b"EHLO c\r\n")
    session.starttls()
    assert session.send(b"EHLO c\r\n") == EHLO_OVER_TLS
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    assert _deliver(session) == b"250 OK\r\n"
    kwargs = session.server.messages[0][3]
    assert (kwargs["auth_login"], kwargs["tls"]) == ("bob", True)


def test_after_starttls_login_and_cram_md5(make_auth_tls_session):
    session = make_auth_tls_session()
    session.send(b"EHLO c\r\n")
    session.starttls()
    session.send(b"EHLO c\r\n")
    assert session.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert session.send(base64.b64encode(b"bob") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert session.send(base64.b64encode(b"wrong-pw") + b"\r\n") == BAD_535
    challenge = base64.b64decode(session.send(b"AUTH CRAM-MD5\r\n")[4:])
    digest = hmac.new(b"s3cret-pw", challenge, "md5").hexdigest()
    assert session.send(base64.b64encode(b"bob " + digest.encode()) + b"\r\n") == OK_235


def test_auth_pipelined_behind_starttls_is_discarded(make_auth_tls_session, monkeypatch):
    # CVE-2011-0411 with a login: the plaintext AUTH must not run over TLS,
    # and its password is not shown either.
    shown = io.StringIO()
    monkeypatch.setattr(smtpd_compat, "DEBUGSTREAM", shown)
    session = make_auth_tls_session()
    session.send(b"EHLO c\r\n")
    assert (session.send(b"STARTTLS\r\nAUTH PLAIN " + PLAIN_OK + b"\r\n")
            == ts.STARTTLS_READY)
    session.handshake()
    assert session.nothing_more() == b""
    assert session.server_channel().auth_login is None
    session.send(b"EHLO c\r\n")
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    assert "TLS established" in shown.getvalue()
    assert "AUTH PLAIN <hidden>" in shown.getvalue()
    assert PLAIN_OK.decode() not in shown.getvalue()


# -- implicit TLS counts as TLS (aiosmtpd#281) ------------------------------------

def test_implicit_tls_offers_auth_at_the_first_ehlo(make_auth_tls_session):
    session = make_auth_tls_session(implicit=True)
    assert session.send(b"EHLO c\r\n") == EHLO_OVER_TLS
    assert session.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n") == BAD_535
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    assert session.send(b"STARTTLS\r\n") == b"503 5.5.1 Error: TLS already active\r\n"
    assert _deliver(session) == b"250 OK\r\n"
    kwargs = session.server.messages[0][3]
    assert (kwargs["auth_login"], kwargs["tls"]) == ("bob", True)


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "smtps"])
def test_a_long_auth_line_over_tls_in_many_records(make_auth_tls_session, implicit):
    # RFC 4954's 12,288 octets, sent over TLS in pieces (one TLS record each).
    password = "p" * 9000
    line = b"AUTH PLAIN " + base64.b64encode(b"\0bob\0" + password.encode())
    assert 12000 < len(line) <= 12288
    session = make_auth_tls_session(implicit=implicit, auth_users={"bob": password})
    if not implicit:
        session.send(b"EHLO c\r\n")
        session.starttls()
    session.send(b"EHLO c\r\n")
    assert session.send(line + b"\r\n", split=997) == OK_235
    assert _deliver(session) == b"250 OK\r\n"


def test_implicit_tls_with_both_requirements_needs_only_auth(make_auth_tls_session):
    session = make_auth_tls_session(implicit=True, require_starttls=True,
                                    auth_required=True)
    session.send(b"EHLO c\r\n")
    assert session.send(b"MAIL FROM:<a@b>\r\n") == AUTH_REQUIRED_530
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    assert _deliver(session) == b"250 OK\r\n"


# -- STARTTLS starts the session over: a login from before is forgotten -----------

def test_a_plaintext_login_is_forgotten_after_starttls(make_auth_tls_session):
    session = make_auth_tls_session(auth_plaintext=True, auth_required=True)
    assert session.send(b"EHLO c\r\n") == EHLO_BEFORE_TLS_PLAINTEXT_AUTH
    assert session.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n") == BAD_535
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    session.starttls()
    channel = session.server_channel()
    assert (channel.auth_login, channel._auth_failures) == (None, 0)
    assert session.send(b"EHLO c\r\n") == EHLO_OVER_TLS
    assert session.send(b"MAIL FROM:<a@b>\r\n") == AUTH_REQUIRED_530
    # Not "already authenticated": the new session logs in again.
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    assert _deliver(session) == b"250 OK\r\n"


def test_failures_before_starttls_do_not_count_after(make_auth_tls_session):
    session = make_auth_tls_session(auth_plaintext=True)
    session.send(b"EHLO c\r\n")
    for _ in range(2):
        assert session.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n") == BAD_535
    session.starttls()
    session.send(b"EHLO c\r\n")
    for _ in range(2):
        assert session.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n") == BAD_535
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235


class PolicyServer(AuthTLSServer):
    """check_mail records what the Session view says about TLS and the login."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def check_mail(self, session, address, params):
        self.seen.append((session.tls, session.auth_login))


def test_policy_hooks_see_tls_and_the_login_start_over(make_auth_tls_session):
    session = make_auth_tls_session(server_class=PolicyServer, auth_plaintext=True)
    session.send(b"EHLO c\r\n")
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    session.send(b"MAIL FROM:<a@b>\r\nRSET\r\n", 2)
    session.starttls()
    session.send(b"EHLO c\r\n")
    session.send(b"MAIL FROM:<a@b>\r\nRSET\r\n", 2)
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    session.send(b"MAIL FROM:<a@b>\r\n")
    assert session.server.seen == [(False, "bob"), (True, None), (True, "bob")]


# -- require_starttls and auth_required together ------------------------------------

def test_require_starttls_then_require_auth(make_auth_tls_session):
    session = make_auth_tls_session(require_starttls=True, auth_required=True)
    assert session.send(b"EHLO c\r\n") == EHLO_BEFORE_TLS
    assert session.send(b"MAIL FROM:<a@b>\r\n") == MUST_STARTTLS_530
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == MUST_STARTTLS_530
    session.starttls()
    assert session.send(b"EHLO c\r\n") == EHLO_OVER_TLS
    assert session.send(b"MAIL FROM:<a@b>\r\n") == AUTH_REQUIRED_530
    assert session.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n") == OK_235
    assert _deliver(session) == b"250 OK\r\n"
    assert session.server.messages[0][3]["auth_login"] == "bob"


# -- under real loops: a slow login check over TLS blocks no one ----------------------

def _tls_client(port, implicit):
    if implicit:
        return smtplib.SMTP_SSL("localhost", port, context=ts.client_context(), timeout=20)
    client = smtplib.SMTP("localhost", port, timeout=20)
    client.starttls(context=ts.client_context())
    return client


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "smtps"])
def test_a_slow_login_check_over_tls_blocks_no_one(threaded_server, implicit):  # noqa: F811
    checking, release = threading.Event(), threading.Event()
    executor = concurrent.futures.ThreadPoolExecutor(1)

    def check(login, password):
        checking.set()
        release.wait(10)
        return (login, password) == ("bob", "s3cret-pw")

    server = threaded_server(
        smtps=implicit, auth_users=USERS, auth_mechanisms=("PLAIN",),
        authenticate=lambda peer, login, password: executor.submit(check, login, password))
    port = server.socket.getsockname()[1]
    outcome = []

    def slow():
        with _tls_client(port, implicit) as client:
            client.login("bob", "s3cret-pw")
            outcome.append(client.sendmail("a@b", ["c@d"], b"Subject: slow\r\n\r\nx"))

    waiting = threading.Thread(target=slow)
    waiting.start()
    try:
        assert checking.wait(10)
        with _tls_client(port, implicit) as other:
            assert other.ehlo()[0] == 250 and other.noop()[0] == 250
            assert outcome == []  # the first login is still being checked
    finally:
        release.set()
        waiting.join(20)
        executor.shutdown()
    assert outcome == [{}]
    [(_, _, _, kwargs)] = server.messages
    assert (kwargs["auth_login"], kwargs["tls"]) == ("bob", True)


# -- the testing helpers: Controller and the pytest marker ----------------------------

def test_controller_tls_and_auth_records_login_and_tls():
    with Controller(tls=True, auth=USERS, auth_required=True) as smtp:
        with smtplib.SMTP(smtp.hostname, smtp.port, timeout=10) as client:
            client.ehlo()
            assert not client.has_extn("auth")
            assert client.docmd("AUTH", "PLAIN " + PLAIN_OK.decode())[0] == 538
            client.starttls(context=smtp.client_context())
            client.login("bob", "s3cret-pw")
            client.sendmail("a@example.org", ["b@example.org"], "Subject: s\r\n\r\nx")
    [message] = smtp.server.messages
    assert (message.auth_login, message.tls) == ("bob", True)


def test_controller_smtps_and_auth_records_login_and_tls():
    with Controller(smtps=True, auth=USERS) as smtp:
        with smtplib.SMTP_SSL(smtp.hostname, smtp.port, timeout=10,
                              context=smtp.client_context()) as client:
            client.login("bob", "s3cret-pw")
            client.sendmail("a@example.org", ["b@example.org"], "Subject: s\r\n\r\nx")
        with smtplib.SMTP_SSL(smtp.hostname, smtp.port, timeout=10,
                              context=smtp.client_context()) as client:
            client.sendmail("a@example.org", ["b@example.org"], "Subject: s\r\n\r\ny")
    first, second = smtp.server.messages
    assert (first.auth_login, first.tls) == ("bob", True)
    assert (second.auth_login, second.tls) == (None, True)


@pytest.mark.parametrize("options, before_tls", [
    ({"tls": True}, False),
    ({"tls": True, "auth_plaintext": True}, True),
    ({}, True),
    ({"auth_plaintext": False}, False),
], ids=["tls", "tls-plaintext-asked", "no-tls", "no-tls-no-plaintext"])
def test_controller_with_tls_takes_passwords_only_over_tls(options, before_tls):
    # A test server with TLS must catch a client that sends its password
    # before STARTTLS; without TLS, AUTH works over plain TCP unless refused.
    with Controller(auth=USERS, **options) as smtp:
        assert smtp.server.auth_plaintext is before_tls
        with smtplib.SMTP(smtp.hostname, smtp.port, timeout=10) as client:
            client.ehlo()
            assert client.has_extn("auth") is before_tls
            code = client.docmd("AUTH", "PLAIN " + PLAIN_OK.decode())[0]
            assert code == (235 if before_tls else 538)


USER_TESTS = '''
    import smtplib

    import pytest


    @pytest.mark.smtpd_server(tls=True, auth={"bob": "pw"}, auth_required=True)
    def test_submission_587(smtpd_server, smtpd_messages):
        context = smtpd_server.controller.client_context()
        with smtplib.SMTP(smtpd_server.hostname, smtpd_server.port, timeout=10) as client:
            client.ehlo()
            assert not client.has_extn("auth")
            client.starttls(context=context)
            client.ehlo()
            assert client.has_extn("auth")
            with pytest.raises(smtplib.SMTPSenderRefused):
                client.sendmail("a@example.org", ["b@example.org"], "x")
            client.login("bob", "pw")
            client.sendmail("a@example.org", ["b@example.org"], "x")
        assert [(m.auth_login, m.tls) for m in smtpd_messages] == [("bob", True)]


    @pytest.mark.smtpd_server(smtps=True, auth={"bob": "pw"})
    def test_submissions_465(smtpd_server, smtpd_messages):
        context = smtpd_server.controller.client_context()
        with smtplib.SMTP_SSL("localhost", smtpd_server.port, context=context,
                              timeout=10) as client:
            client.login("bob", "pw")
            client.sendmail("a@example.org", ["b@example.org"], "x")
        assert [(m.auth_login, m.tls) for m in smtpd_messages] == [("bob", True)]
'''


def test_the_pytest_marker_asks_for_tls_and_auth(pytester, monkeypatch):
    pytester.makepyfile(test_user=textwrap.dedent(USER_TESTS))
    result = run(pytester, monkeypatch, "--strict-markers", "-q")
    result.assert_outcomes(passed=2)
