"""The command table: each verb smtpd knows, its syntax text and its HELP entry.

HELP, the 501 syntax replies of every command and the MAIL/RCPT parameter
suffix are all built from this one table, so they cannot drift apart.
"""

from typing import NamedTuple, Optional


class Command(NamedTuple):
    """One SMTP verb as smtpd documents it."""

    verb: str
    syntax: Optional[str]  # text after "Syntax: "; None if the verb has none
    takes_parameters: bool = False  # RFC 1869 parameters after the address
    in_help: bool = True  # listed by a bare HELP and answered by HELP <verb>


# RFC 1869 parameters are advertised in the syntax text after EHLO only.
PARAMETER_SUFFIX = " [SP <mail-parameters>]"

# Extra octets RFC 1870 (SIZE) and RFC 6531 (SMTPUTF8) allow on a MAIL line.
SIZE_MAIL_LINE_ALLOWANCE = 26
SMTPUTF8_MAIL_LINE_ALLOWANCE = 10

# In the order a bare HELP lists them.
COMMANDS = (
    Command("EHLO", "EHLO hostname"),
    Command("HELO", "HELO hostname"),
    Command("MAIL", "MAIL FROM: <address>", takes_parameters=True),
    Command("RCPT", "RCPT TO: <address>", takes_parameters=True),
    Command("DATA", "DATA"),
    Command("RSET", "RSET"),
    Command("NOOP", "NOOP"),
    Command("QUIT", "QUIT"),
    Command("VRFY", "VRFY <address>"),
    Command("HELP", None, in_help=False),
    Command("EXPN", None, in_help=False),
)

COMMANDS_BY_VERB = {command.verb: command for command in COMMANDS}


def syntax(verb: str, extended_smtp: bool = False) -> str:
    """The syntax text of *verb*, with the parameter suffix after EHLO."""
    command = COMMANDS_BY_VERB[verb]
    if command.takes_parameters and extended_smtp:
        return command.syntax + PARAMETER_SUFFIX
    return command.syntax


def help_listing() -> str:
    """The verbs a bare HELP lists, space separated."""
    return " ".join(command.verb for command in COMMANDS if command.in_help)


def help_topic(verb: str) -> Optional[Command]:
    """The command that ``HELP <verb>`` describes, or None if HELP knows no such verb."""
    command = COMMANDS_BY_VERB.get(verb)
    if command is None or not command.in_help:
        return None
    return command
