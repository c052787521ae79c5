"""recipient_options: each accepted recipient's RCPT parameters (DSN NOTIFY/ORCPT).

smtpd's ``rcpt_options`` holds the last RCPT's parameters only; a
``process_message`` that names ``recipient_options`` gets one list per
accepted recipient, in ``rcpttos`` order.  Raw-socket dialogues on loopback
against a server whose loop the test drives.
"""

import smtplib

from smtpd_compat import SMTPServer
from smtpd_compat.testing import Controller, Sink
from tests.conftest import RecordingServer


class PerRecipient(RecordingServer):
    """Names the keyword: gets it."""

    dsn = True

    def process_message(self, peer, mailfrom, rcpttos, data, recipient_options=None,
                        **kwargs):
        self.messages.append((list(rcpttos), recipient_options, kwargs))


class Refusing(PerRecipient):
    def check_rcpt(self, session, address, params):
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"


DSN_TRANSACTION = (
    b"EHLO client.example\r\nMAIL FROM:<a@example.com> RET=HDRS\r\n"
    b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com\r\n"
    b"RCPT TO:<nobody@example.com> NOTIFY=NEVER\r\n"
    b"RCPT TO:<c@example.com>\r\n"
    b"RCPT TO:<d@example.com> NOTIFY=NEVER\r\n"
    b"DATA\r\n")


def test_each_recipient_has_its_own_dsn_options(make_session):
    session = make_session(Refusing)
    replies = session.send(DSN_TRANSACTION, 7)
    assert b"550 5.1.1 No such user\r\n" in replies
    session.send(b"x\r\n.\r\n")
    [(rcpttos, recipient_options, kwargs)] = session.server.messages
    assert rcpttos == ["b@example.com", "c@example.com", "d@example.com"]
    assert recipient_options == [
        ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@example.com"], [], ["NOTIFY=NEVER"]]
    # smtpd's own keyword is as it was: the last accepted RCPT's parameters.
    assert kwargs == {"mail_options": ["RET=HDRS"], "rcpt_options": ["NOTIFY=NEVER"]}


def test_reset_with_the_transaction(make_session):
    session = make_session(PerRecipient)
    session.send(b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n"
                 b"RCPT TO:<b@example.com> NOTIFY=NEVER\r\nRSET\r\n"
                 b"MAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\n"
                 b"DATA\r\n", 7)
    session.send(b"one\r\n.\r\n")
    session.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<d@example.com> NOTIFY=DELAY\r\n"
                 b"DATA\r\n", 3)
    session.send(b"two\r\n.\r\n")
    assert [(m[0], m[1]) for m in session.server.messages] == [
        (["c@example.com"], [[]]), (["d@example.com"], [["NOTIFY=DELAY"]])]
    channel = next(iter(session.server._channels))
    assert "_recipient_options" not in vars(channel)  # back to the class default


def test_an_override_with_only_kwargs_does_not_get_it(make_session):
    session = make_session(RecordingServer, {"dsn": True})
    session.send(DSN_TRANSACTION.replace(b"NOTIFY=NEVER\r\n", b"\r\n"), 7)
    session.send(b"x\r\n.\r\n")
    [(_, _, _, kwargs)] = session.server.messages
    assert sorted(kwargs) == ["mail_options", "rcpt_options"]


class Positional(SMTPServer):
    """An override that names it and nothing else (no **kwargs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def process_message(self, peer, mailfrom, rcpttos, data, recipient_options):
        self.seen.append(recipient_options)


def test_an_override_without_kwargs_that_names_it(make_session):
    session = make_session(Positional, {"dsn": True})
    session.send(b"EHLO x\r\nMAIL FROM:<a@example.com>\r\n"
                 b"RCPT TO:<b@example.com> NOTIFY=FAILURE\r\nDATA\r\n", 4)
    session.send(b"x\r\n.\r\n")
    assert session.server.seen == [[["NOTIFY=FAILURE"]]]


class DsnSink(Sink):
    dsn = True


def test_the_testing_sink_records_options_per_recipient():
    with Controller(DsnSink) as smtp:
        smtp.server.refuse_recipient("nobody@example.com")
        with smtplib.SMTP(smtp.hostname, smtp.port) as client:
            client.ehlo("client.example")
            client.mail("a@example.com")
            client.rcpt("b@example.com", ["NOTIFY=SUCCESS"])
            client.rcpt("nobody@example.com", ["NOTIFY=NEVER"])
            client.rcpt("c@example.com", ["NOTIFY=DELAY", "ORCPT=rfc822;c@example.com"])
            client.data(b"x")
        message = smtp.server.wait_for_message()
    assert message.rcpttos == ["b@example.com", "c@example.com"]
    assert message.rcpt_options == [["NOTIFY=SUCCESS"],
                                    ["NOTIFY=DELAY", "ORCPT=rfc822;c@example.com"]]


class StreamsPerRecipient(Refusing):
    """A begin_message that names recipient_options (and one that takes nothing more)."""

    def begin_message(self, peer, mailfrom, rcpttos, recipient_options=None, tls=None,
                      mail_options=None, rcpt_options=None):
        self.messages.append((list(rcpttos), recipient_options, tls,
                              (mail_options, rcpt_options)))


class StreamsWithoutKeywords(RecordingServer):
    dsn = True

    def begin_message(self, peer, mailfrom, rcpttos):
        self.messages.append(list(rcpttos))


def test_begin_message_gets_what_process_message_would(make_session):
    session = make_session(StreamsPerRecipient)
    session.send(DSN_TRANSACTION, 7)
    [(rcpttos, recipient_options, tls, kwargs)] = session.server.messages
    assert rcpttos == ["b@example.com", "c@example.com", "d@example.com"]
    assert recipient_options == [
        ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@example.com"], [], ["NOTIFY=NEVER"]]
    assert tls is False  # named (and no **kwargs): always given
    assert kwargs == (["RET=HDRS"], ["NOTIFY=NEVER"])


def test_begin_message_without_keywords_is_passed_none(make_session):
    session = make_session(StreamsWithoutKeywords)
    replies = session.send(DSN_TRANSACTION, 7)
    assert replies.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert session.server.messages == [["b@example.com", "nobody@example.com",
                                        "c@example.com", "d@example.com"]]
