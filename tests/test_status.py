"""Unit tests of _status.reply_for_status: what process_message returns, as a reply."""

import pytest

from smtpd_compat import _status

FAILED = "451 Requested action aborted: local error in processing"


@pytest.mark.parametrize("value, recipients, expected", [
    # smtpd's own contract: None (or any false value) is 250 OK, a line is sent as it is
    (None, 1, "250 OK"),
    ("", 1, "250 OK"),
    (b"", 1, "250 OK"),
    (0, 1, "250 OK"),
    ("250 Okish", 1, "250 Okish"),
    ("550 No such user", 1, "550 No such user"),
    ("250", 1, "250"),
    ("451 Requested action aborted: local error in processing", 3, FAILED),
    # bytes and ints
    (b"250 queued as 12", 1, "250 queued as 12"),
    (250, 1, "250 OK"),
    (550, 1, "550 Requested action not taken: mailbox unavailable"),
    (452, 2, "452 Requested action not taken: insufficient system storage"),
    (259, 1, "259 OK"),
    (459, 1, "459 Temporary failure"),
    (559, 1, "559 Permanent failure"),
    # several lines become one well-formed multi-line reply
    ("250 OK\r\n250 more", 1, "250-OK\r\n250 more"),
    ("250-first\r\n250 last", 1, "250-first\r\n250 last"),
    ("250 first\nsecond\rthird", 1, "250-first\r\n250-second\r\n250 third"),
    ("250-only", 1, "250 only"),
    ("250 OK\r\n", 1, "250 OK"),
    ("250 OK\n\n", 1, "250 OK"),
    ("250 a\r\n\r\n250 b", 1, "250-a\r\n250-\r\n250 b"),
    ("250 a\r\n250", 1, "250-a\r\n250"),
    ("250 a\r\n2500 items", 1, "250-a\r\n250 2500 items"),
    ("250 a\r\n250 b", 3, "250-a\r\n250 b"),  # two lines for three recipients
    # control characters in the text are escaped (item 12 of issue 10)
    ("250 ok\x00\x1b", 1, "250 ok\\x00\\x1b"),
    ("550 tab\tkept", 1, "550 tab\tkept"),
    # Mailman 3's LMTP runner: one complete status line per recipient, joined by CRLF
    ("250 Ok\r\n250 Ok", 2, "250 Ok\r\n250 Ok"),
    ("250 Ok\r\n550 No such list\r\n451 Later", 3,
     "250 Ok\r\n550 No such list\r\n451 Later"),
    ("250 Ok\r\n550 No such list\r\n", 2, "250 Ok\r\n550 No such list"),
], ids=repr)
def test_replies(value, recipients, expected):
    assert _status.reply_for_status(value, recipients) == (expected, None)


@pytest.mark.parametrize("value, recipients, why", [
    ("OK", 1, "no reply code"),
    ("Delivered to 3 recipients", 3, "no reply code"),
    ("25 OK", 1, "no reply code"),
    ("2500 OK", 1, "no reply code"),
    ("250OK", 1, "no reply code"),
    (" 250 OK", 1, "no reply code"),
    ("354 go on", 1, "no reply code"),
    ("650 OK", 1, "no reply code"),
    ("260 OK", 1, "no reply code"),
    ("250 Ok\r\n550 No such list", 1, "different reply codes"),
    ("250 Ok\n550 No such list", 2, "different reply codes"),
    (b"250 caf\xc3\xa9", 1, "not ASCII"),
    (354, 1, "not a reply code"),
    (99, 1, "not a reply code"),
    (-250, 1, "not a reply code"),
    (2500, 1, "not a reply code"),
    (True, 1, "a bool"),
    (2.5e2, 1, "a float"),
    (["250 OK"], 1, "a list"),
    ({"code": 250}, 1, "a dict"),
], ids=repr)
def test_problems_answer_451_and_name_the_value(value, recipients, why):
    reply, problem = _status.reply_for_status(value, recipients)
    assert reply == FAILED
    assert why in problem
    assert problem.startswith(repr(value)[:20])


def test_a_huge_bad_value_is_shortened_in_the_problem():
    reply, problem = _status.reply_for_status("x" * 100000, 1)
    assert reply == FAILED
    assert len(problem) < 300


@pytest.mark.parametrize("value", [
    "250 OK", "250-a\r\n250 b", "250 a\r\n250 b", "550 x\r\n250 y\r\n451 z", 250, b"451 later",
    "250 a\nb\rc", "250-only",
], ids=repr)
@pytest.mark.parametrize("recipients", [1, 2, 3])
def test_every_reply_is_well_formed(value, recipients):
    reply, problem = _status.reply_for_status(value, recipients)
    lines = reply.split("\r\n")
    for line in lines:
        assert line[:3].isdigit() and line[3:4] in ("", " ", "-")
        assert all(" " <= c <= "~" or c == "\t" for c in line)
    if len(lines) != recipients or recipients == 1:
        # one reply: every line but the last continues it, all under one code
        assert all(line[3:4] == "-" for line in lines[:-1])
        assert lines[-1][3:4] in ("", " ")
        assert len({line[:3] for line in lines}) == 1
