"""Which keyword arguments a ``process_message`` override is passed.

smtpd passed ``mail_options`` and ``rcpt_options`` only without
*decode_data*, and overrides written for Python before 3.6 take neither.
smtpd_compat adds facts of its own (``auth_login``, ``tls``,
``recipient_options``) without changing what an override written for smtpd
receives: each keyword goes only to a method whose signature can take it.
"""

import functools
import inspect
from typing import Any, Dict, Optional, Tuple


def for_process_message(method, channel) -> Dict[str, Any]:
    """The keyword arguments *method* (a ``process_message``) gets for *channel*'s message."""
    kwargs: Dict[str, Any] = {}
    if not channel._decode_data:
        kwargs = {"mail_options": channel.mail_options,
                  "rcpt_options": channel.rcpt_options}
    kwargs = _accepted_keywords(method, kwargs)
    kwargs.update(_session_keywords(method, channel))
    kwargs.update(_named_keywords(method, channel))
    return kwargs


@functools.lru_cache(maxsize=256)
def _keywords_of(function) -> Tuple[Optional[frozenset], bool]:
    """(Names a function takes as keywords by name, whether it takes ``**kwargs``).

    The names are None if the signature cannot be read (it takes anything).
    """
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None, True
    named = frozenset(p.name for p in parameters
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return named, any(p.kind is p.VAR_KEYWORD for p in parameters)


def _signature_keywords(method) -> Tuple[Optional[frozenset], bool]:
    function = getattr(method, "__func__", method)
    try:
        return _keywords_of(function)
    except TypeError:  # unhashable callable
        return None, True


def _keyword_names(method) -> Optional[frozenset]:
    """Names *method* takes as keywords; None if it takes any."""
    named, takes_any = _signature_keywords(method)
    return None if takes_any else named


def _accepted_keywords(method, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Drop the keywords that a pre-3.6 ``process_message`` cannot take."""
    if not kwargs:
        return kwargs
    accepted = _keyword_names(method)
    if accepted is None:
        return kwargs
    return {name: value for name, value in kwargs.items() if name in accepted}


def _session_keywords(method, channel) -> Dict[str, Any]:
    """``auth_login`` and ``tls`` for a ``process_message`` that takes them.

    An override that names them always gets them; one with ``**kwargs``
    only when they say something (a login, TLS), so that what it receives
    stays smtpd's when neither feature is used.
    """
    values = {"auth_login": channel.auth_login, "tls": bool(channel.tls_active)}
    accepted = _keyword_names(method)
    if accepted is None:
        return {name: value for name, value in values.items() if value}
    return {name: value for name, value in values.items() if name in accepted}


def _named_keywords(method, channel) -> Dict[str, Any]:
    """``recipient_options`` for a ``process_message`` that names it, and only then.

    Not even ``**kwargs`` gets it: what such an override receives stays smtpd's.
    """
    named, _ = _signature_keywords(method)
    if not named or "recipient_options" not in named:
        return {}
    return {"recipient_options": [list(options) for options in channel._recipient_options]}
