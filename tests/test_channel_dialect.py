"""Issue 10, items 10 to 15, on the wire: a real server on loopback, raw client bytes.

The recipient limit, control characters in replies and addresses, HTTP
clients and the error limit, and what ``process_message`` may return.
"""

import concurrent.futures
import logging
import shutil
import smtplib
import subprocess
import threading

import pytest

import smtpd_compat
from tests.conftest import FINAL_REPLY_LINE, RecordingServer

GREET = b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n"
HANDLER_FAILED = b"451 Requested action aborted: local error in processing\r\n"
NOT_SMTP = b"221 2.7.0 Error: I can break rules, too. Goodbye.\r\n"
TOO_MANY_RECIPIENTS = b"452 4.5.3 Too many recipients\r\n"
SPLITS = pytest.mark.parametrize("split", [None, 1, 7], ids=["whole", "bytewise", "by-7"])


def rcpts(count, first=0):
    return b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(first, first + count))


def finals(replies: bytes) -> int:
    """How many replies *replies* holds (multi-line ones count once)."""
    return len(FINAL_REPLY_LINE.findall(replies))


def ehlo_lines(session, data=GREET):
    """Send the EHLO and MAIL of *data*; return the server's replies."""
    return session.send(data, replies=2)


# -- item 10: recipients per message -------------------------------------------


def test_defaults():
    assert smtpd_compat.SMTPServer.max_recipients == 1000
    assert smtpd_compat.SMTPServer.max_errors == 20
    assert set(smtpd_compat.SMTPServer.forbidden_commands) == {
        "CONNECT", "GET", "POST", "HEAD", "PUT"}


@SPLITS
def test_recipient_past_the_limit_gets_452(make_session, split):
    session = make_session(attributes={"max_recipients": 3})
    ehlo_lines(session)
    replies = session.send(rcpts(5) + b"DATA\r\nbody\r\n.\r\n", replies=7, split=split)
    assert replies == (b"250 OK\r\n" * 3 + TOO_MANY_RECIPIENTS * 2
                       + b"354 End data with <CR><LF>.<CR><LF>\r\n250 OK\r\n")
    (mailfrom, rcpttos, data, _), = session.server.messages
    assert rcpttos == ["r0@example.org", "r1@example.org", "r2@example.org"]
    # a new transaction starts from zero
    replies = session.send(b"MAIL FROM:<a@b>\r\n" + rcpts(4), replies=5)
    assert replies == b"250 OK\r\n" * 4 + TOO_MANY_RECIPIENTS


def test_default_limit_is_1000_and_452s_are_not_errors(session):
    ehlo_lines(session)
    replies = session.send(rcpts(1030), replies=1030)
    assert replies == b"250 OK\r\n" * 1000 + TOO_MANY_RECIPIENTS * 30
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"  # 30 refusals, still served


@pytest.mark.parametrize("limit", [None, 0], ids=["None", "0"])
def test_no_recipient_limit(make_session, limit):
    session = make_session(attributes={"max_recipients": limit})
    ehlo_lines(session)
    assert session.send(rcpts(1200), replies=1200) == b"250 OK\r\n" * 1200


def test_bad_rcpt_is_answered_before_the_limit(make_session):
    session = make_session(attributes={"max_recipients": 1})
    ehlo_lines(session)
    replies = session.send(rcpts(1) + b"RCPT TO:<\r\nRCPT TO:<b@c> FOO=1\r\n", replies=3)
    assert replies == (b"250 OK\r\n501 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n"
                       b"555 RCPT TO parameters not recognized or not implemented\r\n")


# -- item 12: control characters echoed in replies -----------------------------


@SPLITS
def test_control_characters_are_escaped_in_500(session, split):
    replies = session.send(b"NOOP\x00\r\n\x1b[2J\x7f\r\nA\tB\x01\r\n", replies=3, split=split)
    assert replies == (b'500 Error: command "NOOP\\x00" not recognized\r\n'
                       b'500 Error: command "\\x1b[2J\\x7f" not recognized\r\n'
                       b'500 Error: command "A\tB\\x01" not recognized\r\n')


def test_non_ascii_and_controls_are_escaped_alike(session):
    replies = session.send("ÜB\x00R\r\n".encode("utf-8"))
    assert replies == b'500 Error: command "\\xdcB\\x00R" not recognized\r\n'


def test_every_reply_byte_is_reply_text(session):
    sent = bytes(range(1, 128)).replace(b"\r", b"").replace(b"\n", b"")
    replies = session.send(sent + b"\r\nVRFY " + sent + b"\r\n", replies=2)
    for line in replies.split(b"\r\n")[:-1]:
        assert all(b == 9 or 32 <= b <= 126 for b in line), line


# -- item 13: control characters in addresses ------------------------------------


@SPLITS
def test_address_with_control_characters_is_refused(session, split):
    syntax_mail = b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n"
    syntax_rcpt = b"501 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n"
    replies = session.send(
        b"EHLO x\r\nMAIL FROM:<ceo\x00@victim.example>\r\nMAIL FROM:ceo\x1b@victim.example\r\n"
        b"MAIL FROM:<a@b>\r\nRCPT TO:<x\x7f@y>\r\nRCPT TO:<\"x\x00\"@y>\r\n"
        b"VRFY <a\x00b@c>\r\nVRFY user\x1b\r\nVRFY <a@b>\r\n", replies=9, split=split)
    lines = replies.split(b"\r\n")
    assert lines[-9:] == [
        syntax_mail.rstrip(), syntax_mail.rstrip(), b"250 OK",
        syntax_rcpt.rstrip(), syntax_rcpt.rstrip(),
        b"501 Syntax: VRFY <address>", b"501 Syntax: VRFY <address>",
        b"252 Cannot VRFY user, but will accept message and attempt delivery", b""]
    channel, = session.server._channels
    assert channel.mailfrom == "a@b" and channel.rcpttos == []


# -- item 14: HTTP clients and the error limit -----------------------------------


HTTP_POST = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1:25\r\nContent-Type: text/plain\r\n\r\n"
             b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nspam\r\n.\r\nQUIT\r\n")


@SPLITS
def test_http_post_ends_the_session_and_delivers_nothing(session, split, caplog):
    with caplog.at_level(logging.WARNING, logger="smtpd_compat"):
        assert session.send(HTTP_POST, split=split) == NOT_SMTP
        assert session.closed_by_server()
    assert session.server.messages == []
    assert "non-SMTP command from ('127.0.0.1'" in caplog.text
    assert "POST / HTTP/1.1" in caplog.text


@pytest.mark.parametrize("line", [
    b"GET / HTTP/1.1", b"get /favicon.ico HTTP/1.0", b"CONNECT mail.example:25 HTTP/1.1",
    b"HEAD / HTTP/1.1", b"PUT /x HTTP/1.1", b"Host: mail.example", b"User-Agent: curl/8.5",
], ids=lambda line: line.decode())
def test_http_lines_end_the_session_before_the_greeting(session, line, caplog):
    with caplog.at_level(logging.CRITICAL, logger="smtpd_compat"):
        assert session.send(line + b"\r\nNOOP\r\n") == NOT_SMTP
        assert session.nothing_more() == b""
        assert session.closed_by_server()


def test_a_header_line_after_helo_is_only_unrecognized(session):
    replies = session.send(b"HELO x\r\nSubject: hello\r\nNOOP\r\n", replies=3)
    assert replies == (b"250 " + session.server._cached_fqdn().encode() + b"\r\n"
                       b'500 Error: command "SUBJECT:" not recognized\r\n250 OK\r\n')


def test_http_request_after_helo_still_ends_the_session(session, caplog):
    session.send(b"HELO x\r\n")
    with caplog.at_level(logging.CRITICAL, logger="smtpd_compat"):
        assert session.send(b"GET / HTTP/1.1\r\n") == NOT_SMTP
    assert session.closed_by_server()


@pytest.mark.parametrize("forbidden", [None, ()], ids=["None", "empty"])
def test_forbidden_commands_off_is_smtpds_behaviour(make_session, forbidden):
    session = make_session(attributes={"forbidden_commands": forbidden})
    replies = session.send(b"POST / HTTP/1.1\r\nHost: x\r\nNOOP\r\n", replies=3)
    assert replies == (b'500 Error: command "POST" not recognized\r\n'
                       b'500 Error: command "HOST:" not recognized\r\n250 OK\r\n')


class HttpAwareChannel(smtpd_compat.SMTPChannel):
    def smtp_GET(self, arg):
        self.push("250 GET is mine")


def test_a_subclass_command_is_never_forbidden(make_session):
    server_class = type("HttpAwareServer", (RecordingServer,), {"channel_class": HttpAwareChannel})
    session = make_session(server_class)
    assert session.send(b"GET /\r\nNOOP\r\n", replies=2) == b"250 GET is mine\r\n250 OK\r\n"


def too_many_errors(session):
    return ("421 4.7.0 %s Error: too many errors\r\n" % session.server._cached_fqdn()).encode()


@SPLITS
def test_twenty_errors_end_the_session_with_421(session, split, caplog):
    bad = [b"FOO\r\n", b"\r\n", b"MAIL FROM:<a@b>\r\n", b"NOOP x\r\n", b"RCPT TO:<c@d>\r\n"] * 4
    with caplog.at_level(logging.WARNING, logger="smtpd_compat"):
        replies = session.send(b"".join(bad) + b"NOOP\r\n", replies=21, split=split)
    lines = replies.split(b"\r\n")
    assert len(lines) == 22 and all(line[:1] == b"5" for line in lines[:20])
    assert replies.endswith(b"\r\n" + too_many_errors(session))
    assert session.nothing_more() == b""  # the NOOP after the 20th error is not run
    assert session.closed_by_server()
    assert "too many errors from ('127.0.0.1'" in caplog.text


def test_good_commands_between_errors_do_not_reset_the_count(make_session, caplog):
    session = make_session(attributes={"max_errors": 3})
    with caplog.at_level(logging.CRITICAL, logger="smtpd_compat"):
        replies = session.send(b"FOO\r\nNOOP\r\nFOO\r\nHELP\r\nFOO\r\n", replies=6)
    assert replies.endswith(too_many_errors(session))


def test_a_delivered_message_forgives_errors(make_session):
    session = make_session(attributes={"max_errors": 3})
    session.send(b"FOO\r\nBAR\r\nHELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
                 b"DATA\r\nhi\r\n.\r\n", replies=7)
    replies = session.send(b"FOO\r\nBAR\r\nNOOP\r\n", replies=3)
    assert replies.endswith(b"250 OK\r\n")


def test_a_refused_message_does_not_forgive_errors(make_session, caplog):
    session = make_session(attributes={"max_errors": 3})
    session.server.reply = "550 no"
    replies = session.send(b"FOO\r\nBAR\r\nHELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
                           b"DATA\r\nhi\r\n.\r\n", replies=7)
    assert replies.endswith(b"550 no\r\n")
    with caplog.at_level(logging.CRITICAL, logger="smtpd_compat"):
        assert session.send(b"FOO\r\n", replies=2).endswith(too_many_errors(session))


@pytest.mark.parametrize("limit", [None, 0], ids=["None", "0"])
def test_no_error_limit_is_smtpds_behaviour(make_session, limit):
    session = make_session(attributes={"max_errors": limit})
    replies = session.send(b"FOO\r\n" * 50 + b"NOOP\r\n", replies=51)
    assert replies.endswith(b'not recognized\r\n250 OK\r\n')


class BrokenServer(RecordingServer):
    def process_message(self, *args, **kwargs):
        raise RuntimeError("backend down")


def test_handler_failures_are_not_client_errors(make_session, caplog):
    session = make_session(BrokenServer, attributes={"max_errors": 2})
    session.send(b"HELO x\r\n")
    with caplog.at_level(logging.CRITICAL, logger="smtpd_compat"):
        for _ in range(3):
            replies = session.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n",
                                   replies=4)
            assert replies.endswith(HANDLER_FAILED)
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


class LegacyServer:
    """A server object that has none of smtpd_compat's settings (not an SMTPServer)."""

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return None


def test_a_server_without_the_settings_gets_smtpds_behaviour(session):
    channel, = session.server._channels
    channel.smtp_server = LegacyServer()
    replies = session.send(b"POST / HTTP/1.1\r\n" + b"FOO\r\n" * 25
                           + b"HELO x\r\nMAIL FROM:<a@b>\r\n" + rcpts(1001), replies=1028)
    assert replies.startswith(b'500 Error: command "POST" not recognized\r\n')
    assert replies.endswith(b"250 OK\r\n" * 1002)
    assert len(channel.rcpttos) == 1001


# -- item 15: what process_message returns --------------------------------------


@pytest.mark.parametrize("reply, rcpt_count, expected", [
    (None, 1, b"250 OK\r\n"),
    ("250 Okish", 1, b"250 Okish\r\n"),
    (b"250 queued", 1, b"250 queued\r\n"),
    (250, 1, b"250 OK\r\n"),
    (554, 1, b"554 Transaction failed\r\n"),
    ("250 OK\r\n250 more", 1, b"250-OK\r\n250 more\r\n"),
    ("250 first\nsecond\n", 1, b"250-first\r\n250 second\r\n"),
    ("250 Ok\r\n550 No such list", 2, b"250 Ok\r\n550 No such list\r\n"),
    ("250 ok\x1b", 1, b"250 ok\\x1b\r\n"),
], ids=repr)
def test_process_message_replies(make_session, reply, rcpt_count, expected):
    session = make_session()
    session.server.reply = reply
    ehlo_lines(session)
    session.send(rcpts(rcpt_count) + b"DATA\r\n", replies=rcpt_count + 1)
    replies = session.send(b"x\r\n.\r\nNOOP\r\n", replies=finals(expected) + 1)
    assert replies == expected + b"250 OK\r\n"  # and the client is still in step


@pytest.mark.parametrize("reply, named", [
    ("Delivered", "'Delivered'"),
    ("250 OK\r\n550 bad", "'250 OK\\r\\n550 bad'"),
    (["250 OK"], "['250 OK']"),
    (b"250 caf\xc3\xa9", "b'250 caf\\xc3\\xa9'"),
    (2500, "2500"),
], ids=repr)
def test_bad_process_message_replies_answer_451_and_are_logged(make_session, reply, named,
                                                                 caplog):
    session = make_session()
    session.server.reply = reply
    ehlo_lines(session)
    session.send(rcpts(1) + b"DATA\r\n", replies=2)
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert session.send(b"x\r\n.\r\nNOOP\r\n", replies=2) == HANDLER_FAILED + b"250 OK\r\n"
    assert "process_message returned " + named in caplog.text


class DeferringServer(RecordingServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending = []

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        future = concurrent.futures.Future()
        self.pending.append(future)
        return future


@pytest.mark.parametrize("result, rcpt_count, expected", [
    (b"250 later", 1, b"250 later\r\n"),
    (550, 1, b"550 Requested action not taken: mailbox unavailable\r\n"),
    ("250 a\r\n250 b", 1, b"250-a\r\n250 b\r\n"),
    ("250 a\r\n451 b\r\n250 c", 3, b"250 a\r\n451 b\r\n250 c\r\n"),
    ("no code", 1, HANDLER_FAILED),
], ids=repr)
def test_future_results_are_checked_the_same_way(make_session, result, rcpt_count, expected,
                                                 caplog):
    session = make_session(DeferringServer)
    ehlo_lines(session)
    session.send(rcpts(rcpt_count) + b"DATA\r\n", replies=rcpt_count + 1)
    session.client.sendall(b"x\r\n.\r\nNOOP\r\n")
    session.pump()
    future, = session.server.pending
    with caplog.at_level(logging.CRITICAL, logger="smtpd_compat"):
        threading.Thread(target=future.set_result, args=(result,)).start()
        replies = session.read(finals(expected) + 1)
    assert replies == expected + b"250 OK\r\n"


# -- real clients ----------------------------------------------------------------


def test_smtplib_sees_the_recipients_past_the_limit_refused():
    from smtpd_compat.testing import Controller

    recipients = ["r%d@example.org" % i for i in range(5)]
    with Controller() as controller:
        controller.server.max_recipients = 3
        with smtplib.SMTP(*controller.address, timeout=10) as client:
            refused = client.sendmail("a@example.com", recipients, b"Subject: x\r\n\r\nhi\r\n")
        message, = controller.server.messages
    assert refused == {address: (452, b"4.5.3 Too many recipients")
                       for address in recipients[3:]}
    assert message.rcpttos == recipients[:3]


def test_curl_posting_an_smtp_dialogue_delivers_nothing():
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    from smtpd_compat.testing import Controller

    body = (b"HELO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
            b"Subject: from a browser\r\n\r\nspam\r\n.\r\nQUIT\r\n")
    with Controller() as controller:
        done = subprocess.run(
            [curl, "--http0.9", "-sS", "--max-time", "20", "--data-binary", "@-",
             "http://%s:%d/" % controller.address],
            input=body, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        messages = controller.server.messages
    assert done.stdout.startswith(b"220 ")
    assert done.stdout.endswith(NOT_SMTP)
    assert messages == []
