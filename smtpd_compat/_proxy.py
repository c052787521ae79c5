"""PureProxy: relay every message to an upstream SMTP server.

Unlike smtpd's, delivery runs in a worker thread (a slow upstream never
stalls other clients) with a bounded timeout, and the client's reply says
what the upstream said: 250 only once the upstream accepted the message.
"""

import concurrent.futures
import logging
import smtplib
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Set, Tuple

from ._namespace import debug
from ._parsing import insert_peer_header, to_crlf
from ._replies import RELAY_UNAVAILABLE
from ._server import SMTPServer

logger = logging.getLogger("smtpd_compat")

Refusals = Dict[str, Tuple[int, object]]

# 421 closes the connection it is sent on; the upstream's 421 closed the
# upstream session, not the client's, so the client hears 451 instead.
_CLOSING = 421


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
        self._executor: Optional[ThreadPoolExecutor] = None
        # Upstream connections of the relays running now, for _abort_relays.
        self._relay_lock = threading.Lock()
        self._relay_clients: Set[smtplib.SMTP] = set()
        self._relays_aborted = False
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
            # Imported at the top, not on first use: the CLI drops root
            # privileges before the first message, and the interpreter's
            # files may not be readable by 'nobody'.
            self._executor = ThreadPoolExecutor(
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
        with self._relay_lock:
            if self._relays_aborted:
                raise OSError("relaying stopped: the server is shutting down")
            self._relay_clients.add(client)
        try:
            code, message = client.connect(host, port)
            if self._relays_aborted:  # while connecting, with no socket to cut yet
                raise OSError("relaying stopped: the server is shutting down")
            if code != 220:
                # RFC 5321, section 3.1: a 554 (or 4xx) greeting means no
                # service here; the session must not go on.
                raise smtplib.SMTPConnectError(code, message)
            client.ehlo_or_helo_if_needed()
            if not client.has_extn("8bitmime"):
                mail_options = [o for o in mail_options if not o.startswith("BODY=")]
            return client.sendmail(mailfrom, rcpttos, to_crlf(data), list(mail_options))
        finally:
            with self._relay_lock:
                self._relay_clients.discard(client)
            _quit_quietly(client)

    def _abort_relays(self) -> None:
        """Cut the upstream connections of the relays still running.

        They fail at once (their clients, if still connected, get a 4xx and
        keep the message), and relays that start later fail before they
        connect.  A process that is shutting down calls this once it stops
        waiting for relays: the worker threads are joined at exit, and a
        relay stuck on a silent upstream would hold the exit for up to
        ``relay_timeout`` per socket operation.  Safe from any thread.
        """
        with self._relay_lock:
            self._relays_aborted = True
            clients = list(self._relay_clients)
        for client in clients:
            sock = client.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

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
    all refusals were permanent, else a 4xx so that the client tries again
    (451 for the upstream's 421, which only closed the upstream session).
    """
    recipients = set(rcpttos)
    if not refused or set(refused) != recipients:
        return None
    outcomes: List[Tuple[int, str]] = [
        (code, _reply_text(message)) for code, message in refused.values()]
    for code, text in outcomes:
        if not 500 <= code <= 599:
            if 400 <= code <= 499:
                return "%d %s" % (451 if code == _CLOSING else code, text)
            return RELAY_UNAVAILABLE
    code, text = outcomes[0]
    return "%d %s" % (code, text)


def _reply_text(message: object) -> str:
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message).split()) or "Error"
