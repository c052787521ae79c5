"""The enhanced status code table (RFC 2034, 3463): pure, no sockets."""

import re

import pytest

from smtpd_compat import _replies
from smtpd_compat._reply_codes import TABLE, enhanced_code, has_enhanced_code, with_enhanced_code

# Replies that never get a code: the greeting, the HELO/EHLO lines, the 3xx
# of DATA and AUTH; and the texts of PipeServer's replies, which carry their
# code already and get their reply code from the command's exit status.
UNCODED = {"GREETING", "HELO_OK", "EHLO_FIRST_LINE", "EHLO_SIZE", "EHLO_8BITMIME",
           "EHLO_SMTPUTF8", "EHLO_LAST_LINE", "START_DATA", "EHLO_AUTH", "EHLO_CHUNKING",
           "EHLO_STARTTLS", "AUTH_CHALLENGE", "PIPE_FAILED", "PIPE_KILLED", "PIPE_TEMPFAIL",
           "PIPE_TIMED_OUT"}


def catalogue():
    return {name: value for name, value in vars(_replies).items()
            if name.isupper() and isinstance(value, str)}


@pytest.mark.parametrize("name", sorted(set(catalogue()) - UNCODED))
def test_every_reply_of_the_catalogue_has_a_code(name):
    reply = catalogue()[name]
    assert has_enhanced_code(reply) or reply in dict(TABLE), name


def test_table_codes_match_their_reply_class():
    for reply, code in TABLE:
        assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", code)
        assert reply[0] == code[0], reply


@pytest.mark.parametrize("reply, verb, coded", [
    ("250 OK", "MAIL", "250 2.1.0 OK"),
    ("250 OK", "RCPT", "250 2.1.5 OK"),
    ("250 OK", "DATA", "250 2.0.0 OK"),
    ("250 OK", None, "250 2.0.0 OK"),
    ("221 Bye", "QUIT", "221 2.0.0 Bye"),
    ('500 Error: command "X" not recognized', "X", '500 5.5.2 Error: command "X" not recognized'),
    ("501 Syntax: MAIL FROM: <address>", "MAIL", "501 5.5.4 Syntax: MAIL FROM: <address>"),
    ("421 host Error: timeout exceeded, closing connection", None,
     "421 4.4.2 host Error: timeout exceeded, closing connection"),
    ("535 5.7.8 Authentication credentials invalid", "AUTH",
     "535 5.7.8 Authentication credentials invalid"),
    ("452 4.5.3 Too many recipients", "RCPT", "452 4.5.3 Too many recipients"),
    ("550 No such user", "DATA", "550 5.0.0 No such user"),
    ("451", "DATA", "451 4.0.0"),
    ("354 go ahead", "DATA", "354 go ahead"),
    ("334 VXNlcm5hbWU6", "AUTH", "334 VXNlcm5hbWU6"),
    ("250-first\r\n250 last", "DATA", "250-2.0.0 first\r\n250 2.0.0 last"),
    ("hello", None, "hello"),
    ("2500 x", None, "2500 x"),
], ids=lambda value: repr(value)[:30])
def test_with_enhanced_code(reply, verb, coded):
    assert with_enhanced_code(reply, verb) == coded


def test_a_code_is_never_doubled():
    for reply, _ in TABLE:
        once = with_enhanced_code(reply % _Anything(), "MAIL")
        assert with_enhanced_code(once, "MAIL") == once
        assert enhanced_code(once) is None


class _Anything(dict):
    def __missing__(self, key):
        return 7  # fits both %(name)s and %(name)d
