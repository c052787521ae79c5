"""The limits of one connection as plain settings (issue 13, "Policy hooks").

``max_messages`` and ``command_call_limit`` are new here; ``max_recipients``
and ``max_errors`` (tests/test_abuse.py) complete the set.  Each is off by
default where smtpd had no limit, and answers with a reply before it
closes.  Sessions run over a real loopback socket pumped by the test.
"""

import logging

import pytest

import smtpd_compat
from smtpd_compat import _cli, _limits
from tests.conftest import RecordingServer

pytestmark = pytest.mark.timeout(60)

MESSAGE = b"Subject: x\r\n\r\nbody\r\n.\r\n"


def send_message(session):
    assert session.send(b"MAIL FROM:<s@example.com>\r\n") == b"250 OK\r\n"
    assert session.send(b"RCPT TO:<r@example.com>\r\n") == b"250 OK\r\n"
    session.send(b"DATA\r\n")
    return session.send(MESSAGE)


def test_max_messages_ends_the_connection_at_the_next_mail(make_session, caplog):
    session = make_session(attributes={"max_messages": 2})
    session.send(b"EHLO client.example\r\n")
    assert send_message(session) == b"250 OK\r\n"
    assert send_message(session) == b"250 OK\r\n"
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"
    with caplog.at_level(logging.WARNING, logger="smtpd_compat"):
        reply = session.send(b"MAIL FROM:<s@example.com>\r\n")
    fqdn = next(iter(session.server._channels)).fqdn.encode()
    assert reply == b"421 4.7.0 " + fqdn + b" Error: too many messages in one connection\r\n"
    assert session.closed_by_server()
    assert len(session.server.messages) == 2
    assert any("too many messages" in record.getMessage() for record in caplog.records)


def test_max_messages_counts_refused_messages_too(make_session):
    session = make_session(attributes={"max_messages": 1, "reply": "554 no"})
    session.send(b"HELO client.example\r\n")
    assert send_message(session) == b"554 no\r\n"
    assert session.send(b"MAIL FROM:<s@example.com>\r\n").startswith(b"421 4.7.0 ")


@pytest.mark.parametrize("limit", [None, 0])
def test_no_message_limit_by_default(make_session, limit):
    assert RecordingServer.max_messages is None
    session = make_session(attributes={"max_messages": limit})
    session.send(b"HELO client.example\r\n")
    for _ in range(5):
        assert send_message(session) == b"250 OK\r\n"
    assert "_messages" not in vars(next(iter(session.server._channels)))


def test_command_call_limit_per_verb(make_session):
    session = make_session(attributes={"command_call_limit": 3})
    session.send(b"HELO client.example\r\n")
    for _ in range(3):
        assert session.send(b"NOOP\r\n") == b"250 OK\r\n"
    assert session.send(b"RSET\r\n") == b"250 OK\r\n"  # counted per verb
    assert session.send(b"NOOP\r\n") == b"421 4.7.0 NOOP sent too many times\r\n"
    assert session.closed_by_server()


def test_command_call_limit_mapping_with_default(make_session):
    session = make_session(attributes={"command_call_limit": {"NOOP": 1, "*": 2}})
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"
    assert session.send(b"VRFY a@example.com\r\n").startswith(b"252 ")
    assert session.send(b"vrfy a@example.com\r\n").startswith(b"252 ")
    assert session.send(b"VRFY a@example.com\r\n") == b"421 4.7.0 VRFY sent too many times\r\n"


def test_command_call_limit_ignores_unknown_verbs(make_session):
    session = make_session(attributes={"command_call_limit": 1, "max_errors": None})
    for _ in range(3):
        assert session.send(b"XYZZY\r\n").startswith(b"500 ")
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


def test_command_call_limit_off_by_default(make_session):
    assert smtpd_compat.SMTPServer.command_call_limit is None
    session = make_session()
    for _ in range(30):
        assert session.send(b"NOOP\r\n") == b"250 OK\r\n"
    assert "_command_calls" not in vars(next(iter(session.server._channels)))


@pytest.mark.parametrize("setting, verb, limit", [
    (None, "NOOP", None), (0, "NOOP", None), (5, "NOOP", 5),
    ({"NOOP": 2}, "NOOP", 2), ({"NOOP": 2}, "RSET", None),
    ({"NOOP": 2, "*": 7}, "RSET", 7), ({"*": 7}, "NOOP", 7), ({}, "NOOP", None),
])
def test_call_limit(setting, verb, limit):
    assert _limits.call_limit(setting, verb) == limit


@pytest.mark.parametrize("argv, expected", [
    (["--max-messages", "10"], {"max_messages": 10}),
    (["--command-call-limit=50"], {"command_call_limit": 50}),
    (["--max-errors", "0"], {"max_errors": 0}),
    ([], {"max_messages": None, "command_call_limit": None, "max_errors": None}),
])
def test_cli_options(argv, expected):
    options = smtpd_compat.parseargs(argv)
    assert {name: getattr(options, name) for name in expected} == expected


@pytest.mark.parametrize("argv, message", [
    (["--max-messages", "x"], "Invalid message limit: x"),
    (["--command-call-limit", "-2"], "Invalid command call limit: -2"),
    (["--max-errors", "many"], "Invalid error limit: many"),
])
def test_cli_rejects_bad_limits(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        smtpd_compat.parseargs(argv)
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip().endswith(message)


def test_help_names_the_limits():
    for option in ("--max-messages count", "--command-call-limit count",
                   "--max-errors count", "--max-recipients count"):
        assert option in smtpd_compat.__doc__


def test_cli_limits_reach_the_server():
    options = smtpd_compat.parseargs(["--max-messages", "3", "--command-call-limit", "9",
                                      "--max-errors", "4", "-c", "DebuggingServer",
                                      "127.0.0.1:0"])
    server = _cli.make_server(options)
    try:
        assert (server.max_messages, server.command_call_limit, server.max_errors) == (3, 9, 4)
    finally:
        server.close()
