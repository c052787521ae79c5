"""AUTH in the testing helpers: Controller(auth=...), Sink's auth_login, the pytest fixture."""

import smtplib
import textwrap

import pytest

from smtpd_compat.testing import Controller, Message

try:
    from .test_pytest_plugin import run
except ImportError:
    from test_pytest_plugin import run

pytest_plugins = ["pytester"]

USERS = {"user": "password"}


def _send(controller, login=None, password=None):
    with smtplib.SMTP(controller.hostname, controller.port, timeout=10) as client:
        if login is not None:
            client.login(login, password)
        client.sendmail("app@example.org", ["to@example.org"], "Subject: s\r\n\r\nbody")


def test_controller_auth_offers_and_sink_records_the_login():
    with Controller(auth=USERS) as smtp:
        _send(smtp, "user", "password")
        _send(smtp)
        first, second = smtp.server.messages
    assert first.auth_login == "user"
    assert second.auth_login is None


def test_controller_auth_refuses_a_wrong_password():
    with Controller(auth=USERS) as smtp:
        client = smtplib.SMTP(smtp.hostname, smtp.port, timeout=10)
        try:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("user", "wrong")
            # login() tried CRAM-MD5, PLAIN and LOGIN: the third failure ends
            # the session (auth_max_failures), so QUIT is answered 421.
            assert client.docmd("QUIT")[0] == 421
        finally:
            client.close()
        assert smtp.server.messages == []


def test_controller_auth_failure_limit_can_be_lifted():
    with Controller(auth=USERS) as smtp:
        smtp.server.auth_max_failures = None
        with smtplib.SMTP(smtp.hostname, smtp.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("user", "wrong")
            client.login("user", "password")


def test_controller_auth_required():
    with Controller(auth=USERS, auth_required=True) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            _send(smtp)
        assert refused.value.smtp_code == 530
        _send(smtp, "user", "password")
        assert [m.auth_login for m in smtp.server.messages] == ["user"]


def test_controller_auth_without_plaintext_is_not_offered_without_tls():
    with Controller(auth=USERS, auth_plaintext=False) as smtp:
        with smtplib.SMTP(smtp.hostname, smtp.port, timeout=10) as client:
            client.ehlo()
            assert not client.has_extn("auth")
            assert client.docmd("AUTH", "PLAIN AHVzZXIAcGFzc3dvcmQ=")[0] == 538


def test_controller_without_auth_offers_none():
    with Controller() as smtp:
        with smtplib.SMTP(smtp.hostname, smtp.port, timeout=10) as client:
            client.ehlo()
            assert not client.has_extn("auth")
        assert smtp.server.auth_users is None


def test_message_auth_login_defaults_to_none():
    message = Message(peer=("127.0.0.1", 1), mailfrom="a", rcpttos=[], data=b"",
                      mail_options=[], rcpt_options=[], helo="h", reply="250 OK")
    assert message.auth_login is None


USER_TESTS = '''
    import smtplib

    import pytest


    def send(server, login=None):
        with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
            if login:
                client.login(login, "password")
            client.sendmail("app@example.org", ["to@example.org"], "x")


    @pytest.mark.smtpd_server(auth={"user": "password"}, auth_required=True)
    def test_mark(smtpd_server, smtpd_messages):
        with pytest.raises(smtplib.SMTPSenderRefused):
            send(smtpd_server)
        send(smtpd_server, "user")
        assert [m.auth_login for m in smtpd_messages] == ["user"]


    @pytest.mark.parametrize("smtpd_server", [{"auth": {"user": "password"}}], indirect=True)
    def test_indirect(smtpd_server, smtpd_messages):
        send(smtpd_server, "user")
        assert smtpd_messages[0].auth_login == "user"


    def test_plain_fixture_has_no_auth(smtpd_server):
        with smtplib.SMTP(smtpd_server.hostname, smtpd_server.port, timeout=10) as client:
            client.ehlo()
            assert not client.has_extn("auth")
'''


def test_pytest_fixture_asks_for_auth(pytester, monkeypatch):
    pytester.makepyfile(test_user=textwrap.dedent(USER_TESTS))
    result = run(pytester, monkeypatch, "--strict-markers", "-q")
    result.assert_outcomes(passed=3)
