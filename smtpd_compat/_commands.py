"""The command table: each verb smtpd knows, its syntax text and its HELP entry.

HELP, the 501 syntax replies of every command and the MAIL/RCPT parameter
suffix are all built from this one table, so they cannot drift apart.  A
channel class adds its own verbs to it with :func:`declare_syntax` (public
as the decorator ``smtpd_compat.commands.syntax``): its table is smtpd's,
then its own.
"""

from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple


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
    # Answered only when the server checks credentials (see _auth), so HELP,
    # whose text smtpd's clients see, does not list it.
    Command("AUTH", "AUTH mechanism [initial-response]", in_help=False),
    # Known only when their extension is on (see _bdat, _lmtp): never in HELP.
    Command("BDAT", "BDAT chunk-size [LAST]", in_help=False),
    Command("LHLO", "LHLO hostname", in_help=False),
    # Not smtpd's: answered 500 as unknown unless the server has a TLS context.
    Command("STARTTLS", None, in_help=False),
)

COMMANDS_BY_VERB = {command.verb: command for command in COMMANDS}


# Where declare_syntax() leaves its text on the method.
_SYNTAX_ATTRIBUTE = "__smtp_syntax__"
_METHOD_PREFIX = "smtp_"


def declare_syntax(method: Any, text: str) -> Any:
    """Give the ``smtp_<VERB>`` *method* its syntax *text*; return the method.

    The one-line text is what ``HELP VERB`` and the verb's 501 reply show.
    """
    setattr(method, _SYNTAX_ATTRIBUTE, checked_syntax_text(text))
    return method


def checked_syntax_text(text: Any) -> str:
    """Return *text* if it can be a syntax text; raise ValueError if not."""
    # One printable line: a line break in it would end the reply early.
    if not isinstance(text, str) or not text.strip() or not text.isprintable():
        raise ValueError("syntax text must be one printable line, not %r" % (text,))
    return text


def commands_of(channel_class: Optional[type] = None) -> Tuple[Command, ...]:
    """The command table of *channel_class*: smtpd's, then the verbs it adds.

    Added verbs come in the order their classes define them, base classes
    first.  Without a class (or with nothing decorated) it is smtpd's table.
    """
    declared = _declared_syntax(channel_class) if channel_class is not None else {}
    if not declared:
        return COMMANDS
    table = [_replaced(command, declared.pop(command.verb, None)) for command in COMMANDS]
    table.extend(Command(verb, text) for verb, text in declared.items())
    return tuple(table)


def _replaced(command: Command, text: Optional[str]) -> Command:
    if text is None:
        return command
    return Command(command.verb, text)


def _declared_syntax(channel_class: type) -> Dict[str, str]:
    """Verb to syntax text, for each ``smtp_*`` method the class resolves to a decorated one."""
    names: Dict[str, None] = {}  # an ordered set
    for klass in reversed(channel_class.__mro__):
        for name in vars(klass):
            if name.startswith(_METHOD_PREFIX):
                names[name] = None
    declared = {}
    for name in names:
        verb = name[len(_METHOD_PREFIX):]
        text = getattr(getattr(channel_class, name, None), _SYNTAX_ATTRIBUTE, None)
        # Command lines are upper-cased before dispatch: smtp_ping is never called.
        if isinstance(text, str) and verb == verb.upper():
            declared[verb] = text
    return declared


def _find(verb: str, channel_class: Optional[type]) -> Optional[Command]:
    if channel_class is None:
        return COMMANDS_BY_VERB.get(verb)
    for command in commands_of(channel_class):
        if command.verb == verb:
            return command
    return None


def syntax(verb: str, extended_smtp: bool = False,
           channel_class: Optional[type] = None) -> str:
    """The syntax text of *verb*, with the parameter suffix after EHLO."""
    command = _find(verb, channel_class)
    if command is None:
        raise KeyError(verb)
    if command.takes_parameters and extended_smtp:
        return command.syntax + PARAMETER_SUFFIX
    return command.syntax


def help_listing(channel_class: Optional[type] = None) -> str:
    """The verbs a bare HELP lists, space separated."""
    return " ".join(command.verb for command in commands_of(channel_class)
                    if command.in_help)


def help_topic(verb: str, channel_class: Optional[type] = None) -> Optional[Command]:
    """The command that ``HELP <verb>`` describes, or None if HELP knows no such verb."""
    command = _find(verb, channel_class)
    if command is None or not command.in_help:
        return None
    return command


def ehlo_lines(keywords: Iterable[str]) -> List[str]:
    """The ``250-KEYWORD`` lines for extra EHLO *keywords* (before ``250 HELP``).

    A keyword is an ESMTP keyword with optional parameters (RFC 5321,
    section 4.1.1.1: ``ehlo-keyword *( SP ehlo-param )``).
    """
    if isinstance(keywords, str):
        raise ValueError("ehlo_keywords must be a sequence of keywords, not a string")
    lines = []
    for keyword in keywords:
        if not _is_ehlo_line(keyword):
            raise ValueError("not an EHLO keyword: %r" % (keyword,))
        lines.append("250-" + keyword)
    return lines


def _is_ehlo_line(text: Any) -> bool:
    if not isinstance(text, str) or not text.isascii():
        return False
    keyword, _, params = text.partition(" ")
    return (keyword[:1].isalnum()
            and all(c.isalnum() or c == "-" for c in keyword)
            and all(" " <= c <= "~" for c in params))
