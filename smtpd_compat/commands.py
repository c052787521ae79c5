"""Commands of your own that ``HELP`` and ``EHLO`` know about.

smtpd's extension contract stays as it was: a channel method named
``smtp_<VERB>`` handles ``VERB``.  Decorate it with :func:`syntax` and
``HELP`` lists the verb (after smtpd's own, whose order does not change),
``HELP VERB`` answers ``250 Syntax: <text>``, and the method can answer a
malformed line with ``self.push(self._syntax_error("VERB"))``, which is
``501 Syntax: <text>``.  EHLO keywords of your own go in the channel's
``ehlo_keywords`` attribute::

    import smtpd_compat
    from smtpd_compat.commands import syntax

    class PingChannel(smtpd_compat.SMTPChannel):
        ehlo_keywords = ("XPING",)

        @syntax("PING [message]")
        def smtp_PING(self, arg):
            self.push("250 " + (arg or "Pong"))

The names live in this submodule rather than in ``smtpd_compat`` itself,
whose public names stay exactly smtpd's.
"""

from typing import Any, Callable

from . import _commands

__all__ = ["syntax"]


def syntax(text: str) -> Callable[[Any], Any]:
    """Decorate an ``smtp_<VERB>`` channel method with its syntax *text*.

    *text* is one printable line, the verb first by convention
    (``"PING [message]"``); anything else raises ValueError at once.  The
    verb is listed by ``HELP`` as long as the method the channel class
    resolves ``smtp_<VERB>`` to is decorated: an undecorated override takes
    it out again (as in aiosmtpd).  Decorating an override of one of
    smtpd's own verbs replaces smtpd's syntax text for it.
    """
    text = _commands.checked_syntax_text(text)  # fail here, not at the first HELP
    return lambda method: _commands.declare_syntax(method, text)
