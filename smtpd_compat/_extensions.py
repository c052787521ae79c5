"""Which ESMTP extensions beyond smtpd's a server offers, and what they change.

Each extension is a server setting, off by default (and then not a byte of
the dialogue changes); a class attribute of ``SMTPServer`` that a subclass
or an instance may set:

* ``pipelining`` (RFC 2920): ``250-PIPELINING``; the replies to a group of
  pipelined commands leave in one write; input already buffered behind a
  refused DATA is never run as commands (``554 5.5.0 Error: SMTP protocol
  synchronization``, and the session ends).
* ``enhanced_status_codes`` (RFC 2034, 3463): ``250-ENHANCEDSTATUSCODES``;
  every 2xx, 4xx and 5xx reply but the greeting and the answer to
  HELO/EHLO carries its code (the table is ``_reply_codes``).
* ``dsn`` (RFC 3461): ``250-DSN``; MAIL takes ``RET`` and ``ENVID``, RCPT
  takes ``NOTIFY`` and ``ORCPT``, checked and handed to ``process_message``
  in ``mail_options``/``rcpt_options``.
* ``strict_line_endings``: a bare LF or a lone CR in a command line or in
  message data is refused and the session ends (Postfix's
  ``smtpd_forbid_bare_newline``).
* ``modern``: every extension named in :data:`MODERN`.

Besides, ``accepted_mail_parameters`` and ``accepted_rcpt_parameters`` list
MAIL and RCPT parameters the server takes without acting on them (handed to
``process_message`` as given, instead of a 555).

A channel class may force extensions on whatever its server says
(``SMTPChannel.forced_extensions``: LMTP needs PIPELINING and
ENHANCEDSTATUSCODES).
"""

from typing import Dict, FrozenSet, List, Optional, Tuple

from . import _parsing, _replies
from ._reply_codes import with_enhanced_code

PIPELINING = "pipelining"
ENHANCED_STATUS_CODES = "enhanced_status_codes"
DSN = "dsn"
STRICT_LINE_ENDINGS = "strict_line_endings"
CHUNKING = "chunking"  # BDAT (RFC 3030): its reader and EHLO line are _bdat's

# What ``modern`` turns on: a list, so that extensions built elsewhere
# join it with ``MODERN.append(name)``.
MODERN: List[str] = [PIPELINING, ENHANCED_STATUS_CODES, DSN, STRICT_LINE_ENDINGS, CHUNKING]

# The EHLO keyword each extension adds, in the order EHLO lists them.
EHLO_KEYWORDS: Dict[str, str] = {
    PIPELINING: "PIPELINING",
    ENHANCED_STATUS_CODES: "ENHANCEDSTATUSCODES",
    DSN: "DSN",
}

# The answers to these verbs are exempt from enhanced codes (RFC 2034,
# section 3: "except the initial greeting and any response to HELO or EHLO").
HELLO_VERBS = frozenset(("HELO", "EHLO", "LHLO"))

# RFC 3461, section 4.4: ENVID is at most 100 characters (as sent, in xtext).
ENVID_MAX_LENGTH = 100
# RFC 3461, section 4.2: ORCPT at most 500 characters.
ORCPT_MAX_LENGTH = 500

# DSN parameters whose values keep their case (xtext carries an address or
# an identifier); every other parameter is upper-cased, as smtpd did.
_CASE_KEPT = ("ENVID", "ORCPT")


def turned_on(channel) -> FrozenSet[str]:
    """The extensions on for *channel*, read once, when it connects.

    On when the channel's class forces it, the server's attribute of that
    name is true, or the server is ``modern`` (every name in MODERN).  Read
    once per connection rather than at every command and reply: they are
    asked about several times per line, and a server's settings are made
    before clients connect.
    """
    server = channel.smtp_server
    modern = getattr(server, "modern", False)
    return frozenset(channel.forced_extensions).union(
        name for name in MODERN if modern or getattr(server, name, False))


def offered(channel, name: str) -> bool:
    """True if extension *name* is on for *channel* (see :func:`turned_on`)."""
    return name in channel._extensions_on


def any_offered(channel) -> bool:
    """True if any extension of this module is on (the channel then tracks verbs)."""
    return bool(channel._extensions_on)


def ehlo_lines(channel) -> List[str]:
    """The ``250-KEYWORD`` lines of the extensions on for *channel*."""
    return ["250-" + keyword for name, keyword in EHLO_KEYWORDS.items()
            if offered(channel, name)]


# -- MAIL and RCPT parameters --------------------------------------------------


def split_parameters(channel, params: str) -> List[str]:
    """The parameter list of a MAIL or RCPT line, as the channel keeps it.

    Upper-cased as smtpd did, except the values of ENVID and ORCPT (with DSN
    on: their xtext is case-sensitive) and of the parameters the server
    accepts without acting on them, which are handed on as they came.
    """
    kept = _case_kept(channel)
    if not kept:
        return params.upper().split()
    result = []
    for param in params.split():
        keyword, equals, value = param.partition("=")
        keyword = keyword.upper()
        if keyword not in kept:
            value = value.upper()
        result.append(keyword + equals + value)
    return result


def _case_kept(channel) -> Tuple[str, ...]:
    server = channel.smtp_server
    kept = _CASE_KEPT if offered(channel, DSN) else ()
    for name in ("accepted_mail_parameters", "accepted_rcpt_parameters"):
        accepted = getattr(server, name, None)
        if accepted:
            kept += tuple(keyword.upper() for keyword in accepted)
    return kept


def take_mail_parameters(channel, params: Dict[str, object]) -> Optional[str]:
    """Remove the MAIL parameters the extensions accept from *params*.

    Returns the reply for a malformed one, or None.  What is left in
    *params* afterwards is unknown (the channel answers 555).
    """
    if offered(channel, DSN):
        ret = params.pop("RET", None)
        if ret is not None and not _parsing.is_dsn_ret(ret):
            return _replies.BAD_DSN_PARAMETER % {"keyword": "RET"}
        envid = params.pop("ENVID", None)
        if envid is not None and not _parsing.is_xtext(envid, ENVID_MAX_LENGTH):
            return _replies.BAD_DSN_PARAMETER % {"keyword": "ENVID"}
    _drop_accepted(params, getattr(channel.smtp_server, "accepted_mail_parameters", ()))
    return None


def take_rcpt_parameters(channel, params: Dict[str, object]) -> Optional[str]:
    """Remove the RCPT parameters the extensions accept; see take_mail_parameters."""
    if offered(channel, DSN):
        notify = params.pop("NOTIFY", None)
        if notify is not None and _parsing.parse_dsn_notify(notify) is None:
            return _replies.BAD_DSN_PARAMETER % {"keyword": "NOTIFY"}
        orcpt = params.pop("ORCPT", None)
        if orcpt is not None and _parsing.parse_dsn_orcpt(orcpt, ORCPT_MAX_LENGTH) is None:
            return _replies.BAD_DSN_PARAMETER % {"keyword": "ORCPT"}
    _drop_accepted(params, getattr(channel.smtp_server, "accepted_rcpt_parameters", ()))
    return None


def _drop_accepted(params: Dict[str, object], accepted) -> None:
    for keyword in accepted or ():
        params.pop(keyword.upper(), None)


# -- line endings ------------------------------------------------------------------


def refuse_bare_line_ending(channel, text) -> bool:
    """With strict line endings, answer a bare LF or lone CR in *text* and end the session.

    Returns True if it did (the caller then does nothing more).
    """
    # The switch first: counting line ends costs three passes over a message.
    if not offered(channel, STRICT_LINE_ENDINGS) or not _parsing.has_bare_line_ending(text):
        return False
    channel.push(_replies.BARE_LINE_ENDING % {"fqdn": channel.fqdn})
    channel.close_when_done()
    return True


# -- the verb being answered, for PIPELINING and enhanced codes ------------------


def answering(channel, verb: str) -> None:
    """*channel* runs *verb* now; remembered only when an extension is on."""
    if channel._answered_verb is not None or any_offered(channel):
        channel._answered_verb = verb


def after_reply(channel) -> None:
    """A command's reply went out: after a refused DATA, cut off buffered input.

    RFC 2920, section 3.1: DATA ends a command group; input behind it can
    only be message text that a client sent without waiting for the 354,
    and after a refusal it would run as commands.
    """
    if (channel._answered_verb == "DATA" and channel.smtp_state != channel.DATA
            and channel._pending_reply is None and offered(channel, PIPELINING)):
        channel._cut_pending = True


def input_cut(channel) -> None:
    """Input followed a refused DATA in the same group: say so and hang up."""
    channel.push(_replies.PIPELINING_SYNCHRONIZATION)
    channel.close_when_done()


def coded_reply(channel, reply: str) -> str:
    """*reply* with its enhanced status code, when that extension is on."""
    if not offered(channel, ENHANCED_STATUS_CODES):
        return reply
    verb = channel._answered_verb
    if verb is None and reply[:4] == "220 ":
        return reply  # the greeting
    if verb in HELLO_VERBS and reply[:1] == "2":
        return reply
    return with_enhanced_code(reply, verb)
