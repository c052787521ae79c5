"""What ``process_message`` returned, turned into the reply the client gets.

smtpd pushed the returned value as it was.  A string without a reply code
went out as a malformed line; a string with two lines for one message
desynchronised the client (each later command read the previous one's
reply); bytes and ints raised after the message had been taken, so the
client got a 451, sent it again, and it arrived twice.  This module accepts
what can be read as a reply, makes it well-formed, and describes the rest as
a problem (the channel logs it and answers 451).  Pure: no sockets, no logs.
"""

import re
from typing import List, NamedTuple, Optional

from . import _replies
from ._parsing import escape_for_reply

# RFC 5321, section 4.2: Reply-code = %x32-35 %x30-35 %x30-39.  After the end
# of the message data only a completion (2yz) or an error (4yz, 5yz) is a
# reply: an intermediate 3yz would leave the client waiting to send more.
_CODE = "[245][0-5][0-9]"
_REPLY_CODE = re.compile(_CODE + r"\Z")


def _coded_line(classes: str) -> "re.Pattern[str]":
    """A line that starts with a code: the code, then a separator and text, or nothing."""
    return re.compile(r"([%s][0-5][0-9])(?:([ -])(.*))?\Z" % classes, re.S)


_CODED_LINE = _coded_line("245")
_ANY_CODE = re.compile(r"([1-5][0-5][0-9])(?:[ -]|\Z)")
_LINE_END = re.compile(r"\r\n|\r|\n")
_SHOWN_LENGTH = 200  # characters of a bad value quoted in the log


class Status(NamedTuple):
    """The reply to send, and what was wrong with the value (None if nothing)."""

    reply: str
    problem: Optional[str] = None


def reply_for_status(value: object, recipients: int) -> Status:
    """Turn what ``process_message`` returned into one well-formed reply.

    * A false value (None, '', b'', 0) answers ``250 OK``, as smtpd did.
    * ``str``: a reply line as smtpd took it.  Several lines (any line end)
      become one multi-line reply under the first line's code
      (``250-first`` CRLF ``250 last``); continuation lines may repeat the
      code or not.  A trailing line end is dropped, and control characters
      in the text are escaped.
    * One legacy pattern passes through as it is: for a message with *n*
      recipients (n >= 2), exactly *n* complete status lines joined by CRLF
      (``"250 ok\\r\\n550 no"``), the per-recipient replies of LMTP that
      Mailman 3's LMTP runner returns.
    * ``bytes``: ASCII text, read as a ``str``.
    * ``int``: a reply code, sent with its usual text (``250`` gives
      ``250 OK``).
    * Anything else (another type, no valid leading code, a 3yz code,
      lines that carry different codes) is a problem: the reply is the 451
      of a failed handler and *problem* says what was wrong.
    """
    if not value:
        return Status(_replies.OK)
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return problem(value, "bytes that are not ASCII")
    if isinstance(value, int) and not isinstance(value, bool):
        return _reply_for_code(value)
    if not isinstance(value, str):
        return problem(value, "a %s, not a reply" % type(value).__name__)
    return _reply_for_text(value, recipients)


def _reply_for_code(code: int) -> Status:
    if not _REPLY_CODE.match(str(code)):
        return problem(code, "not a reply code (2yz, 4yz or 5yz)")
    text = _replies.STANDARD_TEXTS.get(code) or _replies.CLASS_TEXTS[str(code)[0]]
    return Status("%d %s" % (code, text))


def reply_for_text(value: str, classes: str) -> Status:
    """One well-formed reply for the line(s) of *value*, as for ``str`` above.

    Its code must be of one of the reply *classes* (such as "245").
    """
    status = _reply_for_text(value, 0, _coded_line(classes))
    if status.problem and _ANY_CODE.match(value) and value[0] not in classes:
        return problem(value, "a reply code that does not belong here")
    return status


def _reply_for_text(value: str, recipients: int,
                    coded_line: "re.Pattern[str]" = _CODED_LINE) -> Status:
    text = value.rstrip("\r\n")
    lines = _LINE_END.split(text)
    if _is_one_status_per_recipient(text, lines, recipients):
        return Status("\r\n".join(escape_for_reply(line) for line in lines))
    first = coded_line.match(lines[0])
    if first is None:
        return problem(value, "no reply code at the start")
    code = first.group(1)
    texts = [first.group(3) or ""]
    for line in lines[1:]:
        coded = _ANY_CODE.match(line)
        if coded is None:
            texts.append(line)
        elif coded.group(1) == code:
            texts.append(line[4:])
        else:
            return problem(value, "lines with different reply codes")
    return Status(_join_reply(code, texts))


def _is_one_status_per_recipient(text: str, lines: List[str], recipients: int) -> bool:
    if recipients < 2 or len(lines) != recipients:
        return False
    if text.count("\r\n") != recipients - 1:  # joined by CRLF, and by nothing else
        return False
    for line in lines:
        match = _CODED_LINE.match(line)
        if match is None or match.group(2) == "-":
            return False
    return True


def _join_reply(code: str, texts: List[str]) -> str:
    """``code-text`` lines and a last ``code text`` line (``code`` alone if no text)."""
    lines = [code + "-" + escape_for_reply(text) for text in texts[:-1]]
    last = escape_for_reply(texts[-1])
    lines.append(code + " " + last if last else code)
    return "\r\n".join(lines)


def problem(value: object, why: str) -> Status:
    """The 451 of a failed handler, and *why* the *value* was not a reply."""
    shown = repr(value)
    if len(shown) > _SHOWN_LENGTH:
        shown = shown[:_SHOWN_LENGTH] + "..."
    return Status(_replies.HANDLER_FAILED, "%s: %s" % (shown, why))
