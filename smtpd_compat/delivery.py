"""Streaming delivery, and ready-made servers that deliver into a Maildir or a command.

A server receives each message piece by piece, as it arrives, when it
defines ``begin_message``; the object that returns (a :class:`MessageSink`)
gets ``write(data)`` for each piece, then ``end()`` (its return value is
the reply, as ``process_message``'s) or ``abort(reason)``.  The server
never holds the whole message::

    import hashlib
    import smtpd_compat
    from smtpd_compat.delivery import MessageSink

    class Digest(MessageSink):
        def __init__(self):
            self.sha256 = hashlib.sha256()

        def write(self, data):
            self.sha256.update(data)

        def end(self):
            return "250 OK " + self.sha256.hexdigest()[:16]

    class DigestServer(smtpd_compat.SMTPServer):
        def begin_message(self, peer, mailfrom, rcpttos, **kwargs):
            return Digest()

``begin_message(peer, mailfrom, rcpttos, **kwargs)`` is called when the
client's DATA is accepted, before the 354, with the keyword arguments
``process_message`` would get (``mail_options``, ``rcpt_options``, and
``auth_login``, ``tls`` and ``recipient_options`` by the same rules); returning
None sends this message to ``process_message`` as usual, and an exception
answers 451 instead of the 354.  Servers that do not define it work
exactly as smtpd's.  Streaming needs bytes mode (``decode_data=False``);
the decision hook for the whole message is not called for a streamed one
(there is no whole message to show it).

:class:`MaildirServer` and :class:`PipeServer` are usable from the command
line like ``DebuggingServer``::

    python -m smtpd_compat -n -c MaildirServer --maildir ~/Maildir 127.0.0.1:8025
    python -m smtpd_compat -n -c PipeServer --pipe 'procmail -d {recipient}' 127.0.0.1:8025

The names live in this submodule rather than in ``smtpd_compat`` itself,
whose public names stay exactly smtpd's.
"""

from ._delivery import EX_TEMPFAIL, MaildirServer, PipeServer
from ._streaming import (
    ABORT_CLOSED,
    ABORT_FAILED,
    ABORT_RESET,
    ABORT_SIZE,
    ABORT_TIMEOUT,
    MessageSink,
)

__all__ = ["MessageSink", "MaildirServer", "PipeServer", "EX_TEMPFAIL", "ABORT_RESET",
           "ABORT_SIZE", "ABORT_CLOSED", "ABORT_TIMEOUT", "ABORT_FAILED"]
