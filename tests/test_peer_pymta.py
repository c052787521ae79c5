"""pymta's documented policy examples, rewritten on smtpd_compat (issue 13, "Proof").

pymta's documentation (DefaultMTAPolicy) shows ``accept_helo`` answering in
three ways (``False``; ``(False, (553, 'Bad helo string'))``; the same with
two lines of text) and lists one ``accept_*`` method per step:
``accept_new_connection``, ``accept_helo``, ``accept_ehlo``,
``accept_from``, ``accept_rcpt_to``, ``accept_data`` and
``accept_msgdata``.  Each becomes a hook of an ``SMTPServer`` subclass
here, and the client sees the replies pymta sends for them, byte for byte.
pymta's default refusals, from its SMTPSession: "554 SMTP service not
available" for a refused connection (then it closes), "550 relay not
permitted" for a recipient, "550 Message content is not acceptable" for a
message, and "550 Administrative Prohibition" for every other step.

``accept_auth_plain`` (may this client try AUTH PLAIN at all?) and the
authenticator's ``authenticate(username, password, peer)`` (are the
credentials right?) become one ``SMTPServer.authenticate``; pymta's
replies, from its SMTPSession: "235 Authentication successful", "535 Bad
username or password", and "550 Administrative Prohibition" when the
policy said no.
"""

import base64

import pytest

from tests.conftest import RecordingServer
from tests.test_policy_hooks import Connecting

pytestmark = pytest.mark.timeout(60)

MESSAGE = b"Subject: pymta\r\n\r\nbody\r\n.\r\n"


# -- DefaultMTAPolicy.accept_helo, the three answers of the documentation ---------

class HeloFalse(RecordingServer):
    """``return False``: pymta's default error message for the command."""

    def check_helo(self, session, command, name):
        if command == "HELO":
            return "550 Administrative Prohibition"


class HeloBadString(RecordingServer):
    """``return (False, (553, 'Bad helo string'))``."""

    def check_helo(self, session, command, name):
        if command == "HELO":
            return "553 Bad helo string"


class HeloEvilIp(RecordingServer):
    """``return (False, (553, ('Bad helo string', 'Evil IP')))``: a multi-line reply."""

    def check_helo(self, session, command, name):
        if command == "HELO":
            return ["553 Bad helo string", "553 Evil IP"]


@pytest.mark.parametrize("server_class, reply", [
    (HeloFalse, b"550 Administrative Prohibition\r\n"),
    (HeloBadString, b"553 Bad helo string\r\n"),
    (HeloEvilIp, b"553-Bad helo string\r\n553 Evil IP\r\n"),
], ids=["False", "553", "553-multi-line"])
def test_accept_helo_examples(make_session, server_class, reply):
    session = make_session(server_class)
    assert session.send(b"HELO client.example\r\n") == reply
    # "the command is rejected": no greeting was taken.
    assert session.send(b"MAIL FROM:<a@example.com>\r\n") == b"503 Error: send HELO first\r\n"


# -- one accept_* method per step, each answering False ---------------------------

class RefuseConnection(RecordingServer):
    """accept_new_connection(peer) -> False: pymta replies 554 and closes."""

    def check_connection(self, session):
        return "554 SMTP service not available"


class RefuseEhlo(RecordingServer):
    """accept_ehlo(ehlo_string, message) -> False."""

    def check_helo(self, session, command, name):
        if command == "EHLO":
            return "550 Administrative Prohibition"


class RefuseFrom(RecordingServer):
    """accept_from(sender, message) -> False."""

    def check_mail(self, session, address, params):
        return "550 Administrative Prohibition"


class RefuseSomeRecipients(RecordingServer):
    """accept_rcpt_to(new_recipient, message): called for every recipient."""

    def check_rcpt(self, session, address, params):
        session.state.asked = getattr(session.state, "asked", []) + [address]
        if not address.endswith("@example.org"):
            return "550 relay not permitted"


class RefuseData(RecordingServer):
    """accept_data(message) -> False."""

    def check_data(self, session):
        return "550 Administrative Prohibition"


class RefuseMessage(RecordingServer):
    """accept_msgdata(msg_data, message) -> False: the last check before delivery."""

    def check_message(self, session, data):
        if b"viagra" in data.lower():
            return "550 Message content is not acceptable"


def test_accept_new_connection_false():
    client = Connecting(RefuseConnection(("127.0.0.1", 0), None, map={}))
    try:
        assert client.received() == b"554 SMTP service not available\r\n"
        assert client.closed()
    finally:
        client.close()


def test_accept_ehlo_false(make_session):
    session = make_session(RefuseEhlo)
    assert session.send(b"EHLO client.example\r\n") == b"550 Administrative Prohibition\r\n"
    assert session.send(b"HELO client.example\r\n").startswith(b"250 ")


def test_accept_from_false(make_session):
    session = make_session(RefuseFrom)
    session.send(b"EHLO client.example\r\n")
    assert session.send(b"MAIL FROM:<a@example.com>\r\n") == (
        b"550 Administrative Prohibition\r\n")
    assert session.send(b"RCPT TO:<b@example.org>\r\n") == b"503 Error: need MAIL command\r\n"


def test_accept_rcpt_to_is_asked_for_every_recipient(make_session):
    session = make_session(RefuseSomeRecipients)
    session.send(b"EHLO client.example\r\n")
    session.send(b"MAIL FROM:<a@example.com>\r\n")
    assert session.send(b"RCPT TO:<b@example.org>\r\n") == b"250 OK\r\n"
    assert session.send(b"RCPT TO:<c@elsewhere.example>\r\n") == b"550 relay not permitted\r\n"
    assert session.send(b"RCPT TO:<d@example.org>\r\n") == b"250 OK\r\n"
    session.send(b"DATA\r\n")
    assert session.send(MESSAGE) == b"250 OK\r\n"
    assert session.server.messages[0][1] == ["b@example.org", "d@example.org"]
    channel = next(iter(session.server._channels))
    assert channel.policy_state.asked == ["b@example.org", "c@elsewhere.example",
                                          "d@example.org"]


def test_accept_data_false(make_session):
    session = make_session(RefuseData)
    session.send(b"EHLO client.example\r\n")
    session.send(b"MAIL FROM:<a@example.com>\r\n")
    session.send(b"RCPT TO:<b@example.org>\r\n")
    assert session.send(b"DATA\r\n") == b"550 Administrative Prohibition\r\n"
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


@pytest.mark.parametrize("body, reply, delivered", [
    (b"Buy viagra now", b"550 Message content is not acceptable\r\n", 0),
    (b"Hello", b"250 OK\r\n", 1),
], ids=["refused", "accepted"])
def test_accept_msgdata(make_session, body, reply, delivered):
    session = make_session(RefuseMessage)
    session.send(b"EHLO client.example\r\n")
    session.send(b"MAIL FROM:<a@example.com>\r\n")
    session.send(b"RCPT TO:<b@example.org>\r\n")
    session.send(b"DATA\r\n")
    assert session.send(b"Subject: x\r\n\r\n" + body + b"\r\n.\r\n") == reply
    assert len(session.server.messages) == delivered
    # The session goes on, ready for the next message.
    assert session.send(b"MAIL FROM:<a@example.com>\r\n") == b"250 OK\r\n"


# -- accept_auth_plain and the authenticator --------------------------------------

class PlainAuth(RecordingServer):
    """pymta's policy ``accept_auth_plain`` plus an IAuthenticator, in one method.

    pymta offers only PLAIN; ``auth_plaintext`` lets it be offered without
    TLS, as pymta does, for this loopback test.
    """

    auth_mechanisms = ("PLAIN",)
    auth_plaintext = True
    users = {"alice": "wonderland"}

    def authenticate(self, peer, login, password):
        if login == "root":  # accept_auth_plain(username, password, message) -> False
            return "550 Administrative Prohibition"
        if self.users.get(login) != password:  # authenticator.authenticate() -> False
            return "535 Bad username or password"
        return "235 Authentication successful"


def plain(login, password):
    return base64.b64encode(b"\0%s\0%s" % (login, password))


def test_accept_auth_plain_and_the_authenticator(make_session):
    session = make_session(PlainAuth)
    assert b"250-AUTH PLAIN\r\n" in session.send(b"EHLO client.example\r\n")
    assert session.send(b"AUTH PLAIN " + plain(b"root", b"x") + b"\r\n") == (
        b"550 Administrative Prohibition\r\n")
    assert session.send(b"AUTH PLAIN " + plain(b"alice", b"wrong") + b"\r\n") == (
        b"535 Bad username or password\r\n")
    assert session.send(b"AUTH PLAIN " + plain(b"alice", b"wonderland") + b"\r\n") == (
        b"235 Authentication successful\r\n")
    session.send(b"MAIL FROM:<a@example.com>\r\n")
    session.send(b"RCPT TO:<b@example.org>\r\n")
    session.send(b"DATA\r\n")
    assert session.send(MESSAGE) == b"250 OK\r\n"
    channel = next(iter(session.server._channels))
    assert channel.auth_login == "alice"
