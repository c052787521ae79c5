"""The command table: every verb the channel implements, and HELP built from it."""

import pytest

import smtpd_compat
from smtpd_compat import _commands

IMPLEMENTED = sorted(name[len("smtp_"):] for name in dir(smtpd_compat.SMTPChannel)
                     if name.startswith("smtp_"))


def test_table_covers_exactly_the_implemented_verbs():
    assert IMPLEMENTED == sorted(command.verb for command in _commands.COMMANDS)


@pytest.mark.parametrize("verb", [c.verb for c in _commands.COMMANDS if c.in_help])
def test_every_helped_verb_has_syntax(verb):
    assert _commands.syntax(verb).startswith(verb)
    assert _commands.help_topic(verb).verb == verb


def test_help_listing_is_smtpds():
    assert _commands.help_listing() == "EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"


@pytest.mark.parametrize("verb, extended, expected", [
    ("MAIL", False, "MAIL FROM: <address>"),
    ("MAIL", True, "MAIL FROM: <address> [SP <mail-parameters>]"),
    ("RCPT", True, "RCPT TO: <address> [SP <mail-parameters>]"),
    ("HELO", True, "HELO hostname"),
])
def test_parameter_suffix_only_for_mail_and_rcpt_after_ehlo(verb, extended, expected):
    assert _commands.syntax(verb, extended) == expected


@pytest.mark.parametrize("verb", ["EXPN", "FOO", "mail"])
def test_help_knows_no_other_topic(verb):
    assert _commands.help_topic(verb) is None


def test_mail_line_allowances_match_rfcs():
    # RFC 1870 section 3 (SIZE) and RFC 6531 section 3.4 (SMTPUTF8)
    assert _commands.SIZE_MAIL_LINE_ALLOWANCE == 26
    assert _commands.SMTPUTF8_MAIL_LINE_ALLOWANCE == 10
