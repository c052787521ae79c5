"""Exact reply bytes for every command and error path, over real loopback sockets.

Each dialogue is fed whole, one byte at a time, and split at odd places:
the replies must not depend on how TCP cut the input.
"""

import socket

import pytest

import smtpd_compat

FQDN = socket.getfqdn().encode()
EHLO_BYTES = (b"250-" + FQDN + b"\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
              b"250 HELP\r\n")
SUPPORTED = b"EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"
PARAMS = b" [SP <mail-parameters>]"
MAIL_SYNTAX = b"501 Syntax: MAIL FROM: <address>\r\n"
MAIL_SYNTAX_ESMTP = b"501 Syntax: MAIL FROM: <address>" + PARAMS + b"\r\n"
RCPT_SYNTAX = b"501 Syntax: RCPT TO: <address>\r\n"

# (id, server kwargs, [(client bytes, exact reply bytes)])
DIALOGUES = [
    ("helo", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n")]),
    ("helo-no-arg", {}, [(b"HELO\r\n", b"501 Syntax: HELO hostname\r\n")]),
    ("helo-twice", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                        (b"HELO x\r\n", b"503 Duplicate HELO/EHLO\r\n")]),
    ("ehlo", {}, [(b"EHLO x\r\n", EHLO_BYTES)]),
    ("ehlo-decode-data", {"decode_data": True},
     [(b"EHLO x\r\n", b"250-" + FQDN + b"\r\n250-SIZE 33554432\r\n250 HELP\r\n")]),
    ("ehlo-smtputf8", {"enable_SMTPUTF8": True},
     [(b"EHLO x\r\n", b"250-" + FQDN + b"\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
                      b"250-SMTPUTF8\r\n250 HELP\r\n")]),
    ("ehlo-no-size", {"data_size_limit": None},
     [(b"EHLO x\r\n", b"250-" + FQDN + b"\r\n250-8BITMIME\r\n250 HELP\r\n")]),
    ("ehlo-no-arg", {}, [(b"EHLO\r\n", b"501 Syntax: EHLO hostname\r\n")]),
    ("ehlo-after-helo", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                             (b"EHLO x\r\n", b"503 Duplicate HELO/EHLO\r\n")]),
    ("noop", {}, [(b"NOOP\r\n", b"250 OK\r\n")]),
    ("noop-arg", {}, [(b"NOOP x\r\n", b"501 Syntax: NOOP\r\n")]),
    ("rset", {}, [(b"RSET\r\n", b"250 OK\r\n")]),
    ("rset-arg", {}, [(b"RSET x\r\n", b"501 Syntax: RSET\r\n")]),
    ("empty-line", {}, [(b"\r\n", b"500 Error: bad syntax\r\n")]),
    ("unknown", {}, [(b"FOO bar\r\n", b'500 Error: command "FOO" not recognized\r\n')]),
    ("lowercase-verb", {}, [(b"noop\r\n", b"250 OK\r\n")]),
    ("too-long", {}, [(b"NOOP " + b"x" * 600 + b"\r\n", b"500 Error: line too long\r\n")]),
    ("help", {}, [(b"HELP\r\n", b"250 Supported commands: " + SUPPORTED + b"\r\n")]),
    ("help-unknown", {}, [(b"HELP FOO\r\n", b"501 Supported commands: " + SUPPORTED + b"\r\n")]),
    ("help-expn", {}, [(b"HELP EXPN\r\n", b"501 Supported commands: " + SUPPORTED + b"\r\n")]),
    ("help-mail", {}, [(b"HELP mail\r\n", b"250 Syntax: MAIL FROM: <address>\r\n")]),
    ("help-mail-esmtp", {}, [(b"EHLO x\r\n", EHLO_BYTES),
                             (b"HELP MAIL\r\n",
                              b"250 Syntax: MAIL FROM: <address>" + PARAMS + b"\r\n")]),
    ("help-rcpt", {}, [(b"HELP RCPT\r\n", b"250 Syntax: RCPT TO: <address>\r\n")]),
    ("help-others", {}, [
        (b"HELP EHLO\r\n", b"250 Syntax: EHLO hostname\r\n"),
        (b"HELP HELO\r\n", b"250 Syntax: HELO hostname\r\n"),
        (b"HELP DATA\r\n", b"250 Syntax: DATA\r\n"),
        (b"HELP RSET\r\n", b"250 Syntax: RSET\r\n"),
        (b"HELP NOOP\r\n", b"250 Syntax: NOOP\r\n"),
        (b"HELP QUIT\r\n", b"250 Syntax: QUIT\r\n"),
        (b"HELP VRFY\r\n", b"250 Syntax: VRFY <address>\r\n")]),
    ("vrfy", {}, [(b"VRFY <a@b>\r\n",
                   b"252 Cannot VRFY user, but will accept message and attempt delivery\r\n")]),
    ("vrfy-bad", {}, [(b"VRFY <\r\n", b"502 Could not VRFY <\r\n")]),
    ("vrfy-no-arg", {}, [(b"VRFY\r\n", b"501 Syntax: VRFY <address>\r\n")]),
    ("expn", {}, [(b"EXPN list\r\n", b"502 EXPN not implemented\r\n")]),
    ("mail-before-helo", {}, [(b"MAIL FROM:<a@b>\r\n", b"503 Error: send HELO first\r\n")]),
    ("rcpt-before-helo", {}, [(b"RCPT TO:<a@b>\r\n", b"503 Error: send HELO first\r\n")]),
    ("data-before-helo", {}, [(b"DATA\r\n", b"503 Error: send HELO first\r\n")]),
    ("mail-no-arg", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                         (b"MAIL\r\n", MAIL_SYNTAX)]),
    ("mail-no-from", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                          (b"MAIL <a@b>\r\n", MAIL_SYNTAX)]),
    ("mail-params-without-ehlo", {}, [
        (b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
        (b"MAIL FROM:<a@b> SIZE=1\r\n", MAIL_SYNTAX)]),
    ("mail-nested", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                         (b"MAIL FROM:<a@b>\r\n", b"250 OK\r\n"),
                         (b"MAIL FROM:<a@b>\r\n", b"503 Error: nested MAIL command\r\n")]),
    ("mail-null-sender", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                              (b"MAIL FROM:<>\r\n", b"250 OK\r\n")]),
    ("mail-esmtp-params", {}, [
        (b"EHLO x\r\n", EHLO_BYTES),
        (b"MAIL FROM:<a@b> SIZE=100 BODY=8BITMIME\r\n", b"250 OK\r\n")]),
    ("mail-size-too-big", {}, [
        (b"EHLO x\r\n", EHLO_BYTES),
        (b"MAIL FROM:<a@b> SIZE=33554433\r\n",
         b"552 Error: message size exceeds fixed maximum message size\r\n")]),
    ("mail-size-not-digits", {}, [
        (b"EHLO x\r\n", EHLO_BYTES),
        (b"MAIL FROM:<a@b> SIZE=1a\r\n", MAIL_SYNTAX_ESMTP)]),
    ("mail-bare-size", {}, [
        (b"EHLO x\r\n", EHLO_BYTES),
        (b"MAIL FROM:<a@b> SIZE\r\n", MAIL_SYNTAX_ESMTP)]),
    ("mail-superscript-size", {}, [
        (b"EHLO x\r\n", EHLO_BYTES),
        ("MAIL FROM:<a@b> SIZE=²\r\n".encode(),
         MAIL_SYNTAX_ESMTP)]),
    ("mail-bad-body", {}, [
        (b"EHLO x\r\n", EHLO_BYTES),
        (b"MAIL FROM:<a@b> BODY=9BIT\r\n",
         b"501 Error: BODY can only be one of 7BIT, 8BITMIME\r\n")]),
    ("mail-body-decode-data", {"decode_data": True}, [
        (b"EHLO x\r\n", b"250-" + FQDN + b"\r\n250-SIZE 33554432\r\n250 HELP\r\n"),
        (b"MAIL FROM:<a@b> BODY=8BITMIME\r\n",
         b"555 MAIL FROM parameters not recognized or not implemented\r\n")]),
    ("mail-smtputf8-not-enabled", {}, [
        (b"EHLO x\r\n", EHLO_BYTES),
        (b"MAIL FROM:<a@b> SMTPUTF8\r\n",
         b"555 MAIL FROM parameters not recognized or not implemented\r\n")]),
    ("mail-smtputf8-with-value", {"enable_SMTPUTF8": True}, [
        (b"EHLO x\r\n", b"250-" + FQDN + b"\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
                        b"250-SMTPUTF8\r\n250 HELP\r\n"),
        (b"MAIL FROM:<a@b> SMTPUTF8=yes\r\n", b"501 Error: SMTPUTF8 takes no arguments\r\n")]),
    ("mail-unknown-param", {}, [
        (b"EHLO x\r\n", EHLO_BYTES),
        (b"MAIL FROM:<a@b> FOO=BAR\r\n",
         b"555 MAIL FROM parameters not recognized or not implemented\r\n")]),
    ("mail-malformed-param", {}, [
        (b"EHLO x\r\n", EHLO_BYTES),
        (b"MAIL FROM:<a@b> SIZE=\r\n", MAIL_SYNTAX_ESMTP)]),
    ("rcpt-before-mail", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                              (b"RCPT TO:<a@b>\r\n", b"503 Error: need MAIL command\r\n")]),
    ("rcpt-no-arg", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                         (b"MAIL FROM:<a@b>\r\n", b"250 OK\r\n"),
                         (b"RCPT\r\n", RCPT_SYNTAX),
                         (b"RCPT <a@b>\r\n", RCPT_SYNTAX)]),
    ("rcpt-params", {}, [
        (b"EHLO x\r\n", EHLO_BYTES),
        (b"MAIL FROM:<a@b>\r\n", b"250 OK\r\n"),
        (b"RCPT TO:<c@d> NOTIFY=NEVER\r\n",
         b"555 RCPT TO parameters not recognized or not implemented\r\n"),
        (b"RCPT TO:<c@d> X=\r\n", b"501 Syntax: RCPT TO: <address>" + PARAMS + b"\r\n"),
        (b"RCPT TO:<c@d>\r\n", b"250 OK\r\n")]),
    ("data-before-rcpt", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                              (b"MAIL FROM:<a@b>\r\n", b"250 OK\r\n"),
                              (b"DATA\r\n", b"503 Error: need RCPT command\r\n")]),
    ("data-arg", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                      (b"MAIL FROM:<a@b>\r\n", b"250 OK\r\n"),
                      (b"RCPT TO:<c@d>\r\n", b"250 OK\r\n"),
                      (b"DATA x\r\n", b"501 Syntax: DATA\r\n")]),
    ("transaction", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                         (b"MAIL FROM:<a@b>\r\n", b"250 OK\r\n"),
                         (b"RCPT TO:<c@d>\r\n", b"250 OK\r\n"),
                         (b"DATA\r\n", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
                         (b"Subject: x\r\n\r\n..dot\r\n.\r\n", b"250 OK\r\n"),
                         (b"QUIT\r\n", b"221 Bye\r\n")]),
    ("too-much-data", {"data_size_limit": 10}, [
        (b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
        (b"MAIL FROM:<a@b>\r\n", b"250 OK\r\n"),
        (b"RCPT TO:<c@d>\r\n", b"250 OK\r\n"),
        (b"DATA\r\n", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
        (b"x" * 50 + b"\r\n.\r\n", b"552 Error: Too much mail data\r\n"),
        # fixed: smtpd stayed in DATA state and swallowed these
        (b"MAIL FROM:<c@d>\r\n", b"250 OK\r\n"),
        (b"RSET\r\n", b"250 OK\r\n")]),
    # fixed: smtpd dropped the connection on each of these
    ("non-utf8-line", {}, [(b"NOOP \xff\r\n", b"500 Error: command line is not valid UTF-8\r\n"),
                           (b"NOOP\r\n", b"250 OK\r\n")]),
    ("non-ascii-echo", {}, [("ÉHLO x\r\n".encode(),
                             b'500 Error: command "\\xc9HLO" not recognized\r\n'),
                            (b"NOOP\r\n", b"250 OK\r\n")]),
    ("vrfy-non-ascii-echo", {}, [("VRFY <é@@b>\r\n".encode(),
                                  b"502 Could not VRFY <\\xe9@@b>\r\n")]),
    ("dotless-i-quit", {}, [("QUıT\r\n".encode(),
                             b'500 Error: command "QU\\u0131T" not recognized\r\n'),
                            (b"NOOP\r\n", b"250 OK\r\n")]),
    ("bare-lf-echo", {}, [(b"FOO\nBAR\r\n", b'500 Error: command "FOO\\nBAR" not recognized\r\n')]),
    ("angle-angle-address", {}, [(b"HELO x\r\n", b"250 " + FQDN + b"\r\n"),
                                 (b"MAIL FROM:<<a@b>>\r\n", MAIL_SYNTAX),
                                 (b"MAIL FROM:<\r\n", MAIL_SYNTAX),
                                 (b"MAIL FROM:@\r\n", MAIL_SYNTAX),
                                 (b"MAIL FROM:x@y@z\r\n", MAIL_SYNTAX),
                                 (b"MAIL FROM:<a@b>\r\n", b"250 OK\r\n"),
                                 (b"RCPT TO:<a@@b>\r\n", RCPT_SYNTAX),
                                 (b"RCPT TO:<a\r@b>\r\n", RCPT_SYNTAX)]),
]

SPLITS = {"whole": None, "bytewise": 1, "odd": 7}


def _replies_in(expected: bytes) -> int:
    return sum(1 for line in expected.split(b"\r\n") if line[3:4] == b" ")


@pytest.mark.parametrize("split", list(SPLITS.values()), ids=list(SPLITS))
@pytest.mark.parametrize("name, server_kwargs, steps", DIALOGUES,
                         ids=[d[0] for d in DIALOGUES])
def test_dialogue(make_session, name, server_kwargs, steps, split):
    session = make_session(**server_kwargs)
    assert session.greeting == (b"220 " + FQDN + b" Python SMTP proxy version 0.3\r\n")
    for sent, expected in steps:
        assert session.send(sent, _replies_in(expected), split=split) == expected
    assert session.nothing_more() == b""


def test_pipelined_transaction_in_one_segment(session):
    script = (b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\n"
              b"DATA\r\nline 1\r\n.line 2\r\n.\r\nNOOP\r\n")
    replies = session.send(script, replies=7)
    assert replies == (EHLO_BYTES + b"250 OK\r\n250 OK\r\n250 OK\r\n"
                       b"354 End data with <CR><LF>.<CR><LF>\r\n250 OK\r\n250 OK\r\n")
    assert session.server.messages == [
        ("a@b", ["c@d", "e@f"], b"line 1\nline 2",
         {"mail_options": [], "rcpt_options": []})]


def _start_data(session):
    session.send(b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", replies=4)


def test_empty_message_ends_at_once(session):
    # fixed: smtpd waited forever for a second CRLF before the dot
    _start_data(session)
    assert session.send(b".\r\n") == b"250 OK\r\n"
    assert session.server.messages[0][2] == b""


def test_empty_message_in_same_segment_as_data(session):
    session.send(b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", replies=3)
    assert session.send(b"DATA\r\n.\r\nNOOP\r\n", replies=3) == (
        b"354 End data with <CR><LF>.<CR><LF>\r\n250 OK\r\n250 OK\r\n")
    assert session.server.messages[0][2] == b""


def test_empty_body_as_smtplib_sends_it(session):
    _start_data(session)
    assert session.send(b"\r\n.\r\n") == b"250 OK\r\n"
    assert session.server.messages[0][2] == b""


def test_first_line_dot_stuffed(session):
    _start_data(session)
    assert session.send(b"..x\r\n.\r\n", split=1) == b"250 OK\r\n"
    assert session.server.messages[0][2] == b".x"


def test_nothing_after_quit_runs(session):
    # fixed: smtpd kept executing pipelined commands after QUIT
    script = (b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nQUIT\r\n"
              b"DATA\r\nsmuggled\r\n.\r\n")
    replies = session.send(script, replies=4)
    assert replies.endswith(b"221 Bye\r\n")
    assert session.closed_by_server()
    assert session.server.messages == []


def test_reply_from_process_message(make_session):
    session = make_session(attributes={"reply": "550 No thanks"})
    _start_data(session)
    assert session.send(b"hi\r\n.\r\n") == b"550 No thanks\r\n"


def test_decode_data_gives_str(make_session):
    session = make_session(decode_data=True)
    _start_data(session)
    assert session.send("caf\u00e9\r\n.\r\n".encode()) == b"250 OK\r\n"
    assert session.server.messages == [("a@b", ["c@d"], "caf\u00e9", {})]


def test_utf8_split_across_segments_with_decode_data(make_session):
    # fixed: smtpd decoded each TCP segment alone and dropped the connection
    session = make_session(decode_data=True)
    _start_data(session)
    session.client.sendall(b"Subject: caf\xc3")
    session.pump()
    assert session.send(b"\xa9\r\n.\r\n") == b"250 OK\r\n"
    assert session.server.messages[0][2] == "Subject: caf\u00e9"


def test_non_utf8_data_with_decode_data(make_session):
    session = make_session(decode_data=True)
    _start_data(session)
    assert session.send(b"caf\xe9\r\n.\r\n") == (
        b"554 Error: message data is not valid UTF-8\r\n")
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"
    assert session.server.messages == []


def test_eight_bit_data_kept_as_bytes(session):
    _start_data(session)
    assert session.send(b"\xff\xfe\r\n.\r\n") == b"250 OK\r\n"
    assert session.server.messages[0][2] == b"\xff\xfe"


def test_options_reach_process_message(session):
    session.send(b"EHLO x\r\n", replies=1)
    session.send(b"MAIL FROM:<a@b> body=8bitmime size=10\r\nRCPT TO:<c@d>\r\nDATA\r\n",
                 replies=3)
    session.send(b"x\r\n.\r\n")
    assert session.server.messages[0][3] == {
        "mail_options": ["BODY=8BITMIME", "SIZE=10"], "rcpt_options": []}


def test_rejected_rcpt_options_do_not_leak(session):
    # fixed: smtpd stored the options of a RCPT it then refused
    session.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", replies=3)
    assert session.send(b"RCPT TO:<e@f> FOO=1\r\n").startswith(b"555")
    session.send(b"DATA\r\nx\r\n.\r\n", replies=2)
    assert session.server.messages[0][3]["rcpt_options"] == []


def test_rejected_mail_keeps_earlier_state(make_session):
    session = make_session(enable_SMTPUTF8=True)
    session.send(b"EHLO x\r\n", replies=1)
    assert session.send(b"MAIL FROM:<a@b> SMTPUTF8 FOO=1\r\n").startswith(b"555")
    channel = next(iter(session.server._channels))
    assert channel.require_SMTPUTF8 is False
    assert channel.mail_options == []


def test_smtputf8_replies_in_utf8(make_session):
    session = make_session(enable_SMTPUTF8=True)
    session.send(b"EHLO x\r\n", replies=1)
    assert session.send("MAIL FROM:<é@b> SMTPUTF8\r\n".encode()) == b"250 OK\r\n"
    assert session.send("VRFY <é@@b>\r\n".encode()) == "502 Could not VRFY <é@@b>\r\n".encode()


class LegacyServer(smtpd_compat.SMTPServer):
    """process_message written before Python 3.6: no keyword arguments."""

    def process_message(self, peer, mailfrom, rcpttos, data):
        self.received = (mailfrom, rcpttos, data)


def test_legacy_process_message_signature(make_session):
    # fixed: smtpd 3.6+ raised TypeError (unexpected 'mail_options')
    session = make_session(LegacyServer)
    _start_data(session)
    assert session.send(b"hi\r\n.\r\n") == b"250 OK\r\n"
    assert session.server.received == ("a@b", ["c@d"], b"hi")


class OnlyMailOptionsServer(smtpd_compat.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, mail_options=None):
        self.received = mail_options


def test_process_message_with_some_keywords(make_session):
    session = make_session(OnlyMailOptionsServer)
    session.send(b"EHLO x\r\nMAIL FROM:<a@b> BODY=7BIT\r\nRCPT TO:<c@d>\r\nDATA\r\n", replies=4)
    assert session.send(b"hi\r\n.\r\n") == b"250 OK\r\n"
    assert session.server.received == ["BODY=7BIT"]
