"""ESMTP extensions beyond smtpd's (issue 14): PIPELINING, ENHANCEDSTATUSCODES,
DSN, strict line endings, ``modern``, the MAIL/RCPT parameter accept-list.

Each is off by default (the golden transcripts and CPython's test_smtpd
prove the bytes are smtpd's then); these dialogues run each one on, over a
real loopback socket pumped by the test.
"""

import concurrent.futures

import pytest

import smtpd_compat
from smtpd_compat import _extensions
from tests.conftest import RecordingServer

EXTENSION_LINES = {
    "pipelining": b"250-PIPELINING\r\n",
    "enhanced_status_codes": b"250-ENHANCEDSTATUSCODES\r\n",
    "dsn": b"250-DSN\r\n",
}


def ehlo(session) -> bytes:
    return session.send(b"EHLO client.example\r\n")


def test_everything_is_off_by_default(session):
    reply = ehlo(session)
    assert reply == (b"250-localhost\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
                     b"250 HELP\r\n").replace(b"localhost", session.server._cached_fqdn().encode())


@pytest.mark.parametrize("name", sorted(EXTENSION_LINES))
def test_each_extension_advertises_only_its_own_keyword(make_session, name):
    session = make_session(attributes={name: True})
    reply = ehlo(session)
    for other, line in EXTENSION_LINES.items():
        assert (line in reply) == (other == name), (other, reply)


def test_modern_turns_on_every_extension_and_reads_the_modern_list(make_session, monkeypatch):
    session = make_session(attributes={"modern": True})
    reply = ehlo(session)
    assert all(line in reply for line in EXTENSION_LINES.values())
    assert reply.endswith(b"250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 HELP\r\n")
    monkeypatch.setattr(_extensions, "MODERN", ["dsn"])
    later = make_session(attributes={"modern": True})  # read when a client connects
    ehlo(later)
    channel = next(iter(later.server._channels))
    assert _extensions.offered(channel, "dsn")
    assert not _extensions.offered(channel, "pipelining")


class ForcingChannel(smtpd_compat.SMTPChannel):
    forced_extensions = frozenset({"pipelining", "enhanced_status_codes"})


class ForcingServer(RecordingServer):
    channel_class = ForcingChannel


def test_a_channel_class_can_force_extensions_on(make_session):
    session = make_session(ForcingServer)
    reply = ehlo(session)
    assert b"250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 HELP" in reply
    assert b"250-DSN" not in reply
    assert session.send(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"


# -- ENHANCEDSTATUSCODES --------------------------------------------------------


@pytest.fixture
def coded(make_session):
    session = make_session(attributes={"enhanced_status_codes": True})
    assert ehlo(session).startswith(b"250-")
    return session


def test_greeting_and_ehlo_lines_carry_no_code(coded):
    assert coded.greeting.startswith(b"220 ")
    assert b" 2.0.0" not in coded.greeting
    assert coded.send(b"EHLO again\r\n") == b"503 5.5.1 Duplicate HELO/EHLO\r\n"


def test_helo_reply_carries_no_code_but_its_errors_do(make_session):
    session = make_session(attributes={"enhanced_status_codes": True})
    assert session.send(b"HELO\r\n") == b"501 5.5.4 Syntax: HELO hostname\r\n"
    reply = session.send(b"HELO client.example\r\n")
    assert reply.startswith(b"250 ") and b"2.0.0" not in reply


def test_transaction_replies_carry_rfc_3463_codes(coded):
    assert coded.send(b"MAIL FROM:<a@example.com>\r\n") == b"250 2.1.0 OK\r\n"
    assert coded.send(b"RCPT TO:<b@example.com>\r\n") == b"250 2.1.5 OK\r\n"
    assert coded.send(b"DATA\r\n") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    assert coded.send(b"hello\r\n.\r\n") == b"250 2.0.0 OK\r\n"
    assert coded.send(b"RSET\r\n") == b"250 2.0.0 OK\r\n"
    assert coded.send(b"DATA\r\n") == b"503 5.5.1 Error: need RCPT command\r\n"
    assert coded.send(b"MAIL FROM:<a@example.com> SIZE=99999999999\r\n") == (
        b"552 5.3.4 Error: message size exceeds fixed maximum message size\r\n")
    assert coded.send(b"BOGUS\r\n") == b'500 5.5.2 Error: command "BOGUS" not recognized\r\n'
    assert coded.send(b"QUIT\r\n") == b"221 2.0.0 Bye\r\n"


@pytest.mark.parametrize("answer, sent", [
    ("550 5.7.1 Refused by policy", b"550 5.7.1 Refused by policy\r\n"),
    ("550 No such user", b"550 5.0.0 No such user\r\n"),
    ("451", b"451 4.0.0\r\n"),
    (None, b"250 2.0.0 OK\r\n"),
], ids=["has-code", "no-code", "code-only", "none"])
def test_process_message_replies_keep_their_code_or_get_the_generic_one(coded, answer, sent):
    coded.server.reply = answer
    coded.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n", 3)
    assert coded.send(b"x\r\n.\r\n") == sent


# -- PIPELINING -------------------------------------------------------------------


class CountingChannel(smtpd_compat.SMTPChannel):
    sends = 0

    def send(self, data):
        type(self).sends += 1
        return super().send(data)


class CountingServer(RecordingServer):
    channel_class = CountingChannel


GROUP = (b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
         b"RCPT TO:<c@example.com>\r\nDATA\r\n")


@pytest.mark.parametrize("pipelining, writes", [(True, 1), (False, 4)],
                         ids=["pipelining", "off"])
def test_replies_to_a_pipelined_group_leave_in_one_write(make_session, monkeypatch,
                                                         pipelining, writes):
    monkeypatch.setattr(CountingChannel, "sends", 0)
    session = make_session(CountingServer, attributes={"pipelining": pipelining})
    ehlo(session)
    monkeypatch.setattr(CountingChannel, "sends", 0)
    assert session.send(GROUP, 4) == (b"250 OK\r\n250 OK\r\n250 OK\r\n"
                                      b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert CountingChannel.sends == writes


@pytest.mark.parametrize("split", [None, 1, 7], ids=["whole", "bytewise", "7"])
def test_pipelined_transactions_deliver_in_order(make_session, split):
    session = make_session(attributes={"pipelining": True})
    ehlo(session)
    both = (GROUP + b"one\r\n.\r\n" + GROUP.replace(b"a@", b"z@") + b"two\r\n.\r\nQUIT\r\n")
    session.send(both, 11, split=split)
    assert [(m[0], m[2]) for m in session.server.messages] == [
        ("a@example.com", b"one"), ("z@example.com", b"two")]


SMUGGLED = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\n"


def test_input_behind_a_refused_data_is_never_run(make_session):
    session = make_session(attributes={"pipelining": True})
    ehlo(session)
    reply = session.send(b"MAIL FROM:<a@example.com>\r\nDATA\r\n" + SMUGGLED, 3)
    assert reply == (b"250 OK\r\n503 Error: need RCPT command\r\n"
                     b"554 5.5.0 Error: SMTP protocol synchronization\r\n")
    assert session.closed_by_server()
    assert session.server.messages == []


def test_without_pipelining_smtpd_runs_that_input_as_it_always_did(session):
    ehlo(session)
    reply = session.send(b"MAIL FROM:<a@example.com>\r\nDATA\r\nNOOP\r\n", 3)
    assert reply == b"250 OK\r\n503 Error: need RCPT command\r\n250 OK\r\n"


def test_a_refused_data_with_nothing_behind_it_ends_nothing(make_session):
    session = make_session(attributes={"pipelining": True})
    ehlo(session)
    assert session.send(b"MAIL FROM:<a@example.com>\r\nDATA\r\n", 2).endswith(
        b"503 Error: need RCPT command\r\n")
    assert session.send(b"RCPT TO:<b@example.com>\r\n") == b"250 OK\r\n"


# -- DSN and the parameter accept-list -----------------------------------------------


@pytest.fixture
def dsn(make_session):
    session = make_session(attributes={"dsn": True})
    ehlo(session)
    return session


def test_dsn_parameters_reach_process_message_as_sent(dsn):
    dsn.send(b"MAIL FROM:<a@example.com> RET=HDRS ENVID=Q+2BId.42\r\n"
             b"RCPT TO:<b@example.com> notify=success,failure ORCPT=rfc822;B+2Bx@Example.com\r\n"
             b"DATA\r\n", 3)
    dsn.send(b"x\r\n.\r\n")
    (_, _, _, options), = dsn.server.messages
    assert options == {"mail_options": ["RET=HDRS", "ENVID=Q+2BId.42"],
                       "rcpt_options": ["NOTIFY=SUCCESS,FAILURE",
                                        "ORCPT=rfc822;B+2Bx@Example.com"]}


@pytest.mark.parametrize("line, reply", [
    (b"MAIL FROM:<a@example.com> RET=ALL", b"501 Error: bad RET parameter syntax"),
    (b"MAIL FROM:<a@example.com> ENVID=a+2b", b"501 Error: bad ENVID parameter syntax"),
    (b"MAIL FROM:<a@example.com> ENVID=" + b"x" * 101, b"501 Error: bad ENVID parameter syntax"),
], ids=["ret", "envid-hex", "envid-long"])
def test_malformed_mail_dsn_parameters_get_501(dsn, line, reply):
    assert dsn.send(line + b"\r\n") == reply + b"\r\n"


@pytest.mark.parametrize("param", [b"NOTIFY=NEVER,SUCCESS", b"NOTIFY=SOMETIMES",
                                   b"ORCPT=rfc822", b"ORCPT=;a@b", b"ORCPT=rfc822;a=b"],
                         ids=["never-and", "unknown", "no-semicolon", "no-type", "equals"])
def test_malformed_rcpt_dsn_parameters_get_501(dsn, param):
    dsn.send(b"MAIL FROM:<a@example.com>\r\n")
    keyword = param.split(b"=")[0]
    assert dsn.send(b"RCPT TO:<b@example.com> " + param + b"\r\n") == (
        b"501 Error: bad " + keyword + b" parameter syntax\r\n")


def test_without_dsn_its_parameters_are_unknown_as_in_smtpd(session):
    ehlo(session)
    assert session.send(b"MAIL FROM:<a@example.com> RET=HDRS\r\n") == (
        b"555 MAIL FROM parameters not recognized or not implemented\r\n")


def test_accepted_parameters_pass_through_with_their_case(make_session):
    session = make_session(attributes={"accepted_mail_parameters": ("auth", "MT-PRIORITY"),
                                       "accepted_rcpt_parameters": ("XRCPTFORWARD",)})
    ehlo(session)
    assert session.send(b"MAIL FROM:<a@example.com> AUTH=<Me@Example.com>\r\n") == b"250 OK\r\n"
    assert session.send(b"RCPT TO:<b@example.com> XRCPTFORWARD=AbC\r\n") == b"250 OK\r\n"
    assert session.send(b"RCPT TO:<c@example.com> NOTIFY=NEVER\r\n") == (
        b"555 RCPT TO parameters not recognized or not implemented\r\n")
    session.send(b"DATA\r\n")
    session.send(b"x\r\n.\r\n")
    (_, _, _, options), = session.server.messages
    assert options == {"mail_options": ["AUTH=<Me@Example.com>"],
                       "rcpt_options": ["XRCPTFORWARD=AbC"]}


# -- strict line endings ------------------------------------------------------------

BARE = b"550 %s Error: bare <CR> or <LF> received\r\n"


@pytest.fixture
def strict(make_session):
    session = make_session(attributes={"strict_line_endings": True})
    ehlo(session)
    return session


@pytest.mark.parametrize("line", [b"NOOP\nQUIT\r\n", b"NOOP\rQUIT\r\n",
                                  b"MAIL FROM:<a@example.com>\n\r\n"],
                         ids=["lf", "cr", "lf-before-crlf"])
def test_strict_refuses_a_bare_line_ending_in_a_command(strict, line):
    fqdn = strict.server._cached_fqdn().encode()
    assert strict.send(line) == BARE % fqdn
    assert strict.closed_by_server()


@pytest.mark.parametrize("body", [b"a\n.\nMAIL FROM:<x@y>", b"a\r.\r\nb", b"a\n.\r\nb", b"a\rb"],
                         ids=["lf-dot-lf", "cr-dot-crlf", "lf-dot-crlf", "cr"])
def test_strict_refuses_a_message_with_a_bare_line_ending(strict, body):
    strict.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n", 3)
    fqdn = strict.server._cached_fqdn().encode()
    assert strict.send(body + b"\r\n.\r\n") == BARE % fqdn
    assert strict.closed_by_server()
    assert strict.server.messages == []


def test_without_strict_bare_line_endings_are_taken_as_in_smtpd(session):
    ehlo(session)
    session.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n", 3)
    assert session.send(b"a\nb\rc\r\n.\r\n") == b"250 OK\r\n"
    assert session.server.messages[0][2] == b"a\nb\rc"


class LateRefusalServer(RecordingServer):
    """Refuses DATA through the policy hook with a reply that comes later."""

    def _policy_data(self, channel):
        answer = concurrent.futures.Future()
        answer.set_result("554 Error: no thanks")
        return answer


def test_input_behind_a_data_refused_later_is_never_run(make_session):
    session = make_session(LateRefusalServer, attributes={"modern": True})
    ehlo(session)
    reply = session.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                         + SMUGGLED, 4)
    assert reply == (b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n554 5.0.0 Error: no thanks\r\n"
                     b"554 5.5.0 Error: SMTP protocol synchronization\r\n")
    assert session.closed_by_server()


def test_a_data_refused_later_with_nothing_behind_it_ends_nothing(make_session):
    session = make_session(LateRefusalServer, attributes={"pipelining": True})
    ehlo(session)
    session.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n", 3)
    assert session.send(b"RSET\r\n") == b"250 OK\r\n"
