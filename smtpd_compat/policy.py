"""Deciding at every step of an SMTP session: the names the policy hooks use.

Override any of ``SMTPServer.check_connection``, ``check_helo``,
``check_mail``, ``check_rcpt``, ``check_data`` and ``check_message`` in a
subclass; each is called with a :class:`Session` and answers None (the
usual reply), a reply (``"550 5.7.1 Not here"``, or a list of lines for a
multi-line reply), :data:`CLOSE`, or a ``concurrent.futures.Future`` of one
of those::

    import smtpd_compat

    class Picky(smtpd_compat.SMTPServer):
        def check_rcpt(self, session, address, params):
            if not address.endswith("@example.org"):
                return "550 5.7.1 Relaying denied"

        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            pass

The names live in this submodule rather than in ``smtpd_compat`` itself,
whose public names stay exactly smtpd's.
"""

from ._policy import CLOSE, Session

__all__ = ["CLOSE", "Session"]

Session.__module__ = __name__
