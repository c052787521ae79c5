"""PureProxy: relay every message to an upstream SMTP server.

Unlike smtpd's, delivery runs in a worker thread (a slow upstream never
stalls other clients) with a bounded timeout, and the client's reply says
what the upstream said: 250 only once the upstream accepted the message.
"""

import concurrent.futures
import logging
import smtplib
from typing import Dict, Iterable, List, Optional, Tuple

from ._namespace import debug
from ._parsing import insert_peer_header, to_crlf
from ._server import SMTPServer

logger = logging.getLogger("smtpd_compat")

Refusals = Dict[str, Tuple[int, object]]

RELAY_UNAVAILABLE = "451 Error: upstream server unavailable, try again later"


class PureProxy(SMTPServer):
    """Relay each message to the upstream server given as *remoteaddr*.

    ``relay_timeout`` bounds every upstream socket operation (seconds) and
    ``relay_workers`` the number of deliveries running at once.
    """

    relay_timeout: float = 60.0
    relay_workers: int = 4

    def __init__(self, *args, **kwargs):
        if kwargs.get("enable_SMTPUTF8"):
            raise ValueError("PureProxy does not support SMTPUTF8.")
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        super().__init__(*args, **kwargs)

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        """Add ``X-Peer:`` and relay upstream; the reply comes when it is done."""
        data = insert_peer_header(data, peer[0])
        options = [option for option in kwargs.get("mail_options") or ()
                   if option.startswith("BODY=")]
        return self._submit(self._relay, mailfrom, list(rcpttos), data, options)

    def _submit(self, function, *args) -> concurrent.futures.Future:
        """Run ``function(*args)`` in a worker thread; return its Future."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.relay_workers,
                thread_name_prefix="smtpd_compat-relay")
        return self._executor.submit(function, *args)

    def _relay(self, mailfrom, rcpttos, data, mail_options=()) -> Optional[str]:
        """Deliver upstream (blocking); return the client's reply, None for 250."""
        refused = self._deliver(mailfrom, rcpttos, data, mail_options)
        if refused:
            debug("we got some refusals:", refused)
            logger.warning("upstream refused %d of %d recipients: %r",
                           len(refused), len(set(rcpttos)), refused)
        return relay_reply(rcpttos, refused)

    def _deliver(self, mailfrom, rcpttos, data, mail_options=()) -> Refusals:
        """Send upstream; return the refused recipients as smtpd did.

        The result maps each refused recipient to (code, message); when the
        upstream could not be reached or refused the whole message, every
        recipient is in it (code -1 if there was no SMTP reply).
        """
        try:
            return self._sendmail(mailfrom, rcpttos, data, mail_options)
        except smtplib.SMTPRecipientsRefused as e:
            debug("got SMTPRecipientsRefused")
            return dict(e.recipients)
        except (OSError, smtplib.SMTPException) as e:
            debug("got", e.__class__)
            code = getattr(e, "smtp_code", -1)
            message = getattr(e, "smtp_error", str(e) or e.__class__.__name__)
            return {recipient: (code, message) for recipient in rcpttos}

    def _sendmail(self, mailfrom, rcpttos, data, mail_options) -> Refusals:
        if isinstance(data, str):
            data = data.encode("utf-8")
        host, port = self._remoteaddr
        client = smtplib.SMTP(timeout=self.relay_timeout)
        try:
            client.connect(host, port)
            client.ehlo_or_helo_if_needed()
            if not client.has_extn("8bitmime"):
                mail_options = [o for o in mail_options if not o.startswith("BODY=")]
            return client.sendmail(mailfrom, rcpttos, to_crlf(data), list(mail_options))
        finally:
            _quit_quietly(client)

    def close(self):
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        super().close()


PureProxy.__module__ = "smtpd_compat"


def _quit_quietly(client: smtplib.SMTP) -> None:
    """End an upstream session whose outcome is already known."""
    try:
        if client.sock is not None:
            client.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        client.close()


def relay_reply(rcpttos: Iterable[str], refused: Refusals) -> Optional[str]:
    """The reply a relaying server owes its client after an upstream attempt.

    None (250) when the upstream took the message for at least one
    recipient: refusals after DATA cannot be reported per recipient, so they
    are logged.  When every recipient was refused: the upstream's own 5xx if
    all refusals were permanent, else a 4xx so that the client tries again.
    """
    recipients = set(rcpttos)
    if not refused or set(refused) != recipients:
        return None
    outcomes: List[Tuple[int, str]] = [
        (code, _reply_text(message)) for code, message in refused.values()]
    for code, text in outcomes:
        if not 500 <= code <= 599:
            if 400 <= code <= 499:
                return "%d %s" % (code, text)
            return RELAY_UNAVAILABLE
    code, text = outcomes[0]
    return "%d %s" % (code, text)


def _reply_text(message: object) -> str:
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message).split()) or "Error"
