"""Clients that are not speaking SMTP, and clients that keep getting it wrong.

Postfix's answers, as pure functions the channel calls:

* A command line that is an HTTP request (``POST / HTTP/1.1``, a browser
  made to post an SMTP dialogue at the port) or, before HELO/EHLO, a header
  line (``Host: ...``) is a "non-SMTP command": the session ends at once
  (Postfix's ``smtpd_forbidden_commands`` and its header test).
* Every command line answered with an error counts; after ``max_errors``
  of them the session ends with a 421 (Postfix's ``smtpd_hard_error_limit``).
"""

import re
from typing import Collection, Optional

from . import _replies

# Postfix forbids CONNECT, GET and POST; HEAD and PUT start requests as well.
FORBIDDEN_COMMANDS = ("CONNECT", "GET", "POST", "HEAD", "PUT")

# An RFC 5322 field name (printable ASCII but ":") ending the first word:
# "Host: mail.example" or "User-Agent:".  A colon inside the word, as in
# "MAILFROM:<a@b>", is a mistyped command, not a header.
_HEADER_LINE = re.compile(r"[!-9;-~]+:(?:[ \t]|\Z)")


def is_header_line(line: str) -> bool:
    """True if *line* starts like a header: a field name, a colon, then a blank or nothing."""
    return _HEADER_LINE.match(line) is not None


def is_non_smtp_command(verb: str, line: str, greeted: bool,
                        forbidden: Optional[Collection[str]]) -> bool:
    """True if an unrecognized command line shows a client that is not an SMTP client.

    *verb* is the upper-cased first word of *line*; *greeted* says whether
    HELO or EHLO was accepted.  A false *forbidden* turns the check off.
    """
    if not forbidden:
        return False
    return verb in forbidden or (not greeted and is_header_line(line))


def counts_as_error(reply: str) -> bool:
    """True if sending *reply* to a command counts as one of the client's errors.

    Every 4yz and 5yz reply does, as in Postfix, except the 452 of the
    recipient limit: RFC 5321 (section 4.5.3.1.10) has clients send the
    refused recipients again in a later transaction, so it is no mistake.
    """
    return reply[:1] in ("4", "5") and reply != _replies.TOO_MANY_RECIPIENTS


def limit_reached(count: int, limit: Optional[int]) -> bool:
    """True if *count* has reached *limit*; a limit of None or 0 is no limit."""
    return bool(limit) and count >= limit
