"""Unit tests of _abuse: non-SMTP clients and the error count, without sockets."""

import pytest

from smtpd_compat import _abuse, _replies

FORBIDDEN = _abuse.FORBIDDEN_COMMANDS


@pytest.mark.parametrize("line, expected", [
    ("Host: mail.example", True),
    ("User-Agent: Mozilla/5.0", True),
    ("Content-Length:", True),
    ("X-Thing:\tvalue", True),
    ("Subject: hello", True),
    # mistyped or unknown SMTP, not headers
    ("MAILFROM:<a@b>", False),
    ("MAIL FROM: <a@b>", False),
    ("RCPT TO:<a@b>", False),
    ("Host :x", False),  # RFC 822's obsolete blank before the colon: not taken
    (":x", False),
    ("", False),
    ("NOOP", False),
    ("Hö: x", False),
    ("\x00: x", False),
], ids=repr)
def test_is_header_line(line, expected):
    assert _abuse.is_header_line(line) is expected


@pytest.mark.parametrize("verb, line, greeted, expected", [
    ("POST", "POST / HTTP/1.1", False, True),
    ("GET", "get / HTTP/1.0", True, True),
    ("CONNECT", "CONNECT mail.example:25 HTTP/1.1", False, True),
    ("HEAD", "HEAD /", True, True),
    ("PUT", "PUT /x HTTP/1.1", False, True),
    ("HOST:", "Host: mail.example", False, True),
    ("HOST:", "Host: mail.example", True, False),  # after HELO: only the verbs
    ("USER-AGENT:", "User-Agent: curl/8", False, True),
    ("OPTIONS", "OPTIONS * HTTP/1.1", False, False),
    ("FOO", "FOO bar", False, False),
    ("MAILFROM:<A@B>", "MAILFROM:<a@b>", False, False),
], ids=repr)
def test_is_non_smtp_command(verb, line, greeted, expected):
    assert _abuse.is_non_smtp_command(verb, line, greeted, FORBIDDEN) is expected


@pytest.mark.parametrize("forbidden", [None, (), frozenset()], ids=repr)
def test_no_forbidden_commands_turns_the_check_off(forbidden):
    assert not _abuse.is_non_smtp_command("POST", "POST / HTTP/1.1", False, forbidden)
    assert not _abuse.is_non_smtp_command("HOST:", "Host: x", False, forbidden)


def test_own_forbidden_commands():
    assert _abuse.is_non_smtp_command("XHTTP", "XHTTP", True, {"XHTTP"})
    assert not _abuse.is_non_smtp_command("POST", "POST /", True, {"XHTTP"})


@pytest.mark.parametrize("reply, expected", [
    ("250 OK", False),
    ("221 Bye", False),
    ("354 End data with <CR><LF>.<CR><LF>", False),
    ('500 Error: command "X" not recognized', True),
    ("501 Syntax: NOOP", True),
    ("503 Error: need MAIL command", True),
    ("451 Internal confusion", True),
    ("552 Error: Too much mail data", True),
    (_replies.TOO_MANY_RECIPIENTS, False),
    ("452 Requested action not taken: insufficient system storage", True),
    ("", False),
], ids=repr)
def test_counts_as_error(reply, expected):
    assert _abuse.counts_as_error(reply) is expected


@pytest.mark.parametrize("count, limit, expected", [
    (0, 20, False), (19, 20, False), (20, 20, True), (21, 20, True),
    (10**6, None, False), (10**6, 0, False), (1, 1, True),
], ids=repr)
def test_limit_reached(count, limit, expected):
    assert _abuse.limit_reached(count, limit) is expected
