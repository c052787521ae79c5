"""LMTP (RFC 2033): LHLO, and one reply per recipient at the end of a message.

With the server setting ``lmtp`` on, each client is served by the server's
own ``channel_class`` with :class:`LMTPLayer` mixed in over it (see
:func:`channel_class_for`), so LMTP works with every server and channel
class and the channel itself knows nothing of it:

* LHLO replaces HELO and EHLO (both answered 500 as unknown commands) and
  offers PIPELINING and ENHANCEDSTATUSCODES, which RFC 2033 requires.
* After the message (DATA's end, or the last BDAT chunk) the client gets
  one reply per accepted recipient, in the order of the RCPT commands.
  ``process_message`` may return a list (or tuple) with one value per
  recipient, each read as a single reply is (None is 250 OK); a single
  value applies to every recipient, so existing servers work unchanged;
  so does a string of one complete status line per recipient joined by
  CRLF (Mailman 3's LMTP runner returns that).  A list of the wrong length
  is logged and padded with 451 (or cut): a reply missing leaves the client
  waiting, and Postfix then delivers the message again.
* Refusals at the end of the message (too much data, undecodable data, a
  failed or raising ``process_message``, a Future that failed) are sent
  once per recipient too.
"""

import functools
import logging
from typing import List

from . import _replies
from ._channel import _report_failure
from ._namespace import debug

logger = logging.getLogger("smtpd_compat")

def channel_class_for(server) -> type:
    """The channel class that serves *server*'s clients: LMTP's layer over its own."""
    channel_class = server.channel_class
    if not getattr(server, "lmtp", False) or issubclass(channel_class, LMTPLayer):
        return channel_class
    return _layered(channel_class)


@functools.lru_cache(maxsize=None)
def _layered(channel_class: type) -> type:
    return type("LMTP" + channel_class.__name__, (LMTPLayer, channel_class),
                {"__module__": channel_class.__module__,
                 "__doc__": "%s speaking LMTP (RFC 2033)." % channel_class.__name__})


class LMTPLayer:
    """What LMTP changes in a channel; mixed in before the channel class."""

    # RFC 2033, section 5: an LMTP server offers both, whatever the server
    # says (read by ``_extensions.offered``).
    forced_extensions = frozenset(("pipelining", "enhanced_status_codes"))

    def smtp_LHLO(self, arg):
        self._extended_hello("LHLO", arg)

    def smtp_HELO(self, arg):
        self.push(_replies.UNRECOGNIZED % {"command": "HELO"})

    def smtp_EHLO(self, arg):
        self.push(_replies.UNRECOGNIZED % {"command": "EHLO"})

    def _deliver(self):
        try:
            return super()._deliver()
        except Exception:
            # One 451 per recipient below, not the channel's single one.
            _report_failure(self, "process_message failed")
            return _replies.HANDLER_FAILED

    def _answer_message(self, status, recipients: int) -> None:
        for reply in self._replies_per_recipient(status, recipients):
            self.push(reply)

    def _replies_per_recipient(self, status, recipients: int) -> List[str]:
        if isinstance(status, (list, tuple)):
            if len(status) != recipients:
                self._wrong_count(status, recipients)
                status = (list(status) + [_replies.HANDLER_FAILED] * recipients)[:recipients]
            return [self._reply_for_status(value, 1) for value in status]
        reply = self._reply_for_status(status, recipients)
        lines = reply.split("\r\n")
        if recipients > 1 and len(lines) == recipients and all(
                line[3:4] != "-" for line in lines):
            return lines  # one status line per recipient (see _status)
        return [reply] * recipients

    def _wrong_count(self, status, recipients: int) -> None:
        peer = getattr(self, "peer", None)
        message = ("process_message returned %d replies for %d recipients, for %r;"
                   " padded with 451 or cut" % (len(status), recipients, peer))
        logger.error(message)
        debug(message)
