"""Which reply gets which enhanced status code (RFC 2034, RFC 3463).

With ENHANCEDSTATUSCODES on, every 2xx, 4xx and 5xx reply carries a code
after its reply code: ``250 2.1.0 OK``.  The codes follow RFC 3463 and,
where it leaves a choice, what Postfix answers for the same situation.
Replies that already carry a code (``535 5.7.8`` from AUTH, a reply that
``process_message`` or a hook returned with one) are left as they are; a
reply this table does not know gets its class's generic code (X.0.0).

``with_enhanced_code`` is pure: the channel decides whether the extension
is on and which verb is being answered (the greeting and the answers to
HELO/EHLO carry no code: see ``_extensions.coded_reply``).
"""

import functools
import re
from typing import Dict, List, Optional, Pattern, Tuple

from . import _replies

# RFC 3463, section 2: class "." subject "." detail, 1 to 3 digits each.
_HAS_CODE = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")

# Generic codes by reply class (RFC 3463: X.0.0, "other undefined status").
CLASS_CODES = {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}

# "250 OK" is the answer to several verbs; RFC 3463 gives MAIL and RCPT
# codes of their own (X.1.0 "other address status" for the originator,
# X.1.5 "destination address valid").
OK_BY_VERB = {"MAIL": "2.1.0", "RCPT": "2.1.5"}

# The catalogue's replies (templates included) and their codes.
TABLE: Tuple[Tuple[str, str], ...] = (
    (_replies.BYE, "2.0.0"),
    (_replies.OK, "2.0.0"),
    (_replies.BAD_SYNTAX, "5.5.2"),
    (_replies.LINE_TOO_LONG, "5.5.2"),
    (_replies.UNRECOGNIZED, "5.5.2"),
    (_replies.INTERNAL_CONFUSION, "4.3.0"),
    (_replies.DUPLICATE_HELO, "5.5.1"),
    (_replies.SYNTAX_ERROR, "5.5.4"),
    (_replies.HELP_SYNTAX, "2.0.0"),
    (_replies.HELP_LIST, "2.0.0"),
    (_replies.HELP_UNKNOWN, "5.5.4"),
    (_replies.SEND_HELO_FIRST, "5.5.1"),
    (_replies.NESTED_MAIL, "5.5.1"),
    (_replies.NEED_MAIL, "5.5.1"),
    (_replies.NEED_RCPT, "5.5.1"),
    (_replies.BAD_BODY, "5.5.4"),
    (_replies.SMTPUTF8_TAKES_NO_ARGUMENTS, "5.5.4"),
    (_replies.SIZE_EXCEEDED, "5.3.4"),
    (_replies.MAIL_PARAMS_UNKNOWN, "5.5.4"),
    (_replies.RCPT_PARAMS_UNKNOWN, "5.5.4"),
    (_replies.TOO_MUCH_DATA, "5.3.4"),
    (_replies.CANNOT_VRFY, "2.0.0"),
    (_replies.COULD_NOT_VRFY, "5.1.3"),
    (_replies.EXPN_NOT_IMPLEMENTED, "5.5.1"),
    (_replies.UNDECODABLE_LINE, "5.5.2"),
    (_replies.UNDECODABLE_DATA, "5.6.0"),
    (_replies.HANDLER_FAILED, "4.3.0"),
    (_replies.IDLE_TIMEOUT, "4.4.2"),
    (_replies.TOO_MANY_CONNECTIONS, "4.7.0"),
    (_replies.SHUTTING_DOWN, "4.3.2"),
    (_replies.RELAY_UNAVAILABLE, "4.4.1"),
    (_replies.MAILMAN_UNAVAILABLE, "4.3.0"),
    (_replies.BAD_DSN_PARAMETER, "5.5.4"),
    (_replies.BARE_LINE_ENDING, "5.5.2"),
    (_replies.CHUNK_RECEIVED, "2.0.0"),
    (_replies.DATA_AFTER_BDAT, "5.5.1"),
)


def _pattern(template: str) -> Pattern[str]:
    """A regular expression matching every reply made from *template*."""
    parts = re.split(r"%\(\w+\)[sd]", template)
    return re.compile(".*".join(re.escape(part) for part in parts) + r"\Z", re.DOTALL)


def _compile(table) -> Tuple[Dict[str, str], Dict[str, List[Tuple[Pattern[str], str]]]]:
    exact: Dict[str, str] = {}
    templates: Dict[str, List[Tuple[Pattern[str], str]]] = {}
    for reply, code in table:
        if reply[:3] and reply[0] != code[0]:
            raise ValueError("%r cannot have %s" % (reply, code))
        if "%(" in reply:
            templates.setdefault(reply[:3], []).append((_pattern(reply), code))
        else:
            exact[reply] = code
    return exact, templates


_EXACT, _TEMPLATES = _compile(TABLE)


def has_enhanced_code(reply: str) -> bool:
    """True if the reply line already carries an enhanced status code."""
    return _HAS_CODE.match(reply) is not None


def enhanced_code(reply: str, verb: Optional[str] = None) -> Optional[str]:
    """The code one reply line gets when it is the answer to *verb*; None for none.

    None for 1xx and 3xx replies (RFC 2034 codes only 2xx, 4xx and 5xx),
    lines that are not replies, and lines that already carry a code.
    """
    reply_class = reply[:1]
    if (reply_class not in CLASS_CODES or not reply[:3].isdigit()
            or reply[3:4] not in (" ", "-", "") or has_enhanced_code(reply)):
        return None
    if reply == _replies.OK:
        return OK_BY_VERB.get(verb or "", "2.0.0")
    code = _EXACT.get(reply)
    if code is not None:
        return code
    for pattern, code in _TEMPLATES.get(reply[:3], ()):
        if pattern.match(reply):
            return code
    return CLASS_CODES[reply_class]


@functools.lru_cache(maxsize=512)
def with_enhanced_code(reply: str, verb: Optional[str] = None) -> str:
    """*reply* (one or more CRLF-separated lines) with each line's code inserted.

    ``"250 OK"`` after MAIL becomes ``"250 2.1.0 OK"``; a reply line of a
    code alone (``"250"``) becomes ``"250 2.0.0"``.  Cached: a server sends
    the same few replies over and over.
    """
    if "\r\n" in reply:
        return "\r\n".join(with_enhanced_code(line, verb) for line in reply.split("\r\n"))
    code = enhanced_code(reply, verb)
    if code is None:
        return reply
    text = reply[4:]
    return "%s%s%s%s" % (reply[:3], reply[3:4] or " ", code, " " + text if text else "")
