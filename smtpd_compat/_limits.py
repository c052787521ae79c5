"""Limits of one connection that end it with a 421: messages, and calls of a command.

``SMTPServer.max_messages`` (as Exim's ``smtp_accept_max_per_connection``)
and ``SMTPServer.command_call_limit`` (as aiosmtpd's).  Both are off by
default; a connection counts only while its server sets the limit, and keeps
the counts on the channel (class defaults there: nothing is stored for a
connection that never counts).  The other limits (``max_recipients``,
``max_errors``) are judged by ``_abuse``.
"""

import logging
from typing import Mapping, Optional, Union

from . import _abuse, _replies

logger = logging.getLogger("smtpd_compat")

CallLimit = Union[None, int, Mapping[str, int]]


def call_limit(setting: CallLimit, verb: str) -> Optional[int]:
    """How often one connection may send *verb*, by ``command_call_limit``; pure.

    As aiosmtpd's: a number is every verb's limit; a mapping gives a verb
    (upper case) its own, and the ``"*"`` entry the rest (no entry: no
    limit).  None or 0: no limit.
    """
    if not setting:
        return None
    if isinstance(setting, int):
        return setting
    return setting.get(verb, setting.get("*"))


def call_limit_reached(channel, verb: str) -> bool:
    """Count one *verb* line; past the limit, answer 421 and close (True)."""
    limit = call_limit(getattr(channel.smtp_server, "command_call_limit", None), verb)
    if not limit:
        return False
    if channel._command_calls is None:
        channel._command_calls = {}
    calls = channel._command_calls[verb] = channel._command_calls.get(verb, 0) + 1
    if calls <= limit:
        return False
    _close(channel, _replies.TOO_MANY_CALLS % {"command": verb}, verb + " lines")
    return True


def count_message(channel) -> None:
    """One more message's data arrived on *channel* (counted if limited)."""
    if getattr(channel.smtp_server, "max_messages", None):
        channel._messages += 1


def message_limit_reached(channel) -> bool:
    """At ``max_messages`` messages, answer the next MAIL with 421 and close (True)."""
    if not _abuse.limit_reached(channel._messages,
                                getattr(channel.smtp_server, "max_messages", None)):
        return False
    _close(channel, _replies.TOO_MANY_MESSAGES % {"fqdn": channel.fqdn}, "messages")
    return True


def _close(channel, reply: str, what: str) -> None:
    logger.warning("too many %s from %r; disconnected", what, getattr(channel, "peer", None))
    channel.push(reply)
    channel.close_when_done()
