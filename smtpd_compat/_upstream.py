"""One SMTP transaction with an upstream server, driven a step at a time.

PureProxy relays in lockstep with its client, as Postfix's before-queue
content filter proxy (``smtpd_proxy_filter``) does: the client's MAIL opens
the upstream session, each RCPT and DATA is passed on, and every reply the
client gets is the upstream's.  Each step blocks on the network, so it runs
in one of the proxy's worker threads; the channel reads no further command
while a step's reply is pending, which keeps the steps of one session in
order.  Ending a session (QUIT, or a plain close in the middle of DATA,
where a QUIT would be taken for message text) never makes anyone wait: it is
one more task for a worker, started once the step under way is over.
"""

import concurrent.futures
import logging
import re
import smtplib
import threading
from typing import Callable, List, Optional, Sequence, Tuple

from ._namespace import debug

logger = logging.getLogger("smtpd_compat")

# (code, message) as smtplib reports a reply; code -1 when there was no
# reply at all (unreachable, timed out, connection lost).
Outcome = Tuple[int, object]

# 421 closes the connection it is sent on; the upstream's 421 closed the
# upstream session, not the client's, so the client hears 451 instead.
_CLOSING = 421

_LINE_START_DOT = re.compile(rb"(?m)^\.")


# MAIL parameters passed upstream, each with the EHLO keyword that must be
# offered for it: BODY (RFC 6152) and SIZE (RFC 1870, so that an upstream
# with a smaller limit refuses at MAIL, before the data is sent).
_RELAYED_PARAMETERS = (("BODY=", "8bitmime"), ("SIZE=", "size"))


def upstream_mail_options(mail_options: Sequence[str],
                          offers: Callable[[str], bool]) -> List[str]:
    """The client's MAIL parameters that go upstream, in the client's order.

    *mail_options* are the client's upper-cased parameters; *offers* tells
    whether the upstream's EHLO offered a keyword (``smtplib.SMTP.has_extn``).
    Other parameters (SMTPUTF8: PureProxy refuses it) stay here.
    """
    relayed = []
    for option in mail_options:
        for prefix, keyword in _RELAYED_PARAMETERS:
            if option.startswith(prefix) and offers(keyword):
                relayed.append(option)
    return relayed


class UpstreamSession:
    """The upstream half of one relayed transaction.

    *relay* is the PureProxy it belongs to: it gives the address
    (``_remoteaddr``), the timeouts (``relay_timeout``,
    ``relay_data_timeout``), the worker threads (``_submit``) and the
    registry of upstream sockets that shutdown cuts
    (``_register_relay_socket``/``_forget_relay_socket``).

    The step methods (``open``, ``rcpt``, ``data``, ``finish``) block and
    return the upstream's (code, message); run them through :meth:`run`
    (in the calling thread) or :meth:`submit` (in a worker), never directly.
    """

    def __init__(self, relay) -> None:
        self._relay = relay
        self._client: Optional[_RelayClient] = None
        self._lock = threading.Lock()
        self._busy = False       # a step is queued or running
        self._ending = False     # the owner is done with the session
        self._over = False       # the upstream transaction is over or broken
        self._end_started = False
        self._in_data = False    # the upstream got DATA, not yet the final dot

    # -- running steps -----------------------------------------------------

    def submit(self, step: Callable[..., Outcome], *args) -> concurrent.futures.Future:
        """Run a step in a worker thread; the Future's result is its outcome."""
        self._begin()
        try:
            return self._relay._submit(self._guarded, step, args)
        except BaseException:
            self._settle()
            raise

    def run(self, step: Callable[..., Outcome], *args) -> Outcome:
        """Run a step in this thread and return its outcome."""
        self._begin()
        return self._guarded(step, args)

    def _begin(self) -> None:
        with self._lock:
            self._busy = True

    def _guarded(self, step, args) -> Outcome:
        try:
            if self._over:
                return -1, "the upstream session is over"
            try:
                return step(*args)
            except Exception as e:
                # OSError and SMTPException are the expected ones; anything
                # else (smtplib reading a socket cut under it raises
                # ValueError) still ends the session with an answer.
                self._over = True
                debug("upstream failed:", e.__class__, e)
                logger.warning("upstream %s:%s failed: %s", *self._relay._remoteaddr[:2],
                               str(e) or e.__class__.__name__,
                               exc_info=not isinstance(e, (OSError, smtplib.SMTPException)))
                return (getattr(e, "smtp_code", -1),
                        getattr(e, "smtp_error", str(e) or e.__class__.__name__))
        finally:
            self._settle()

    def _settle(self) -> None:
        with self._lock:
            self._busy = False
            end = self._ending or self._over
        if end:
            self._start_end()

    # -- the steps ---------------------------------------------------------

    def open(self, mailfrom: str, mail_options: Sequence[str]) -> Outcome:
        """Connect, greet (EHLO, else HELO) and send MAIL.

        Of *mail_options* only ``BODY=`` and ``SIZE=`` are passed on, each
        to an upstream that offers its extension (see
        :func:`upstream_mail_options`).  Anything but a 2xx ends the session.
        """
        relay = self._relay
        client = self._client = _RelayClient(relay)
        host, port = relay._remoteaddr[:2]
        code, message = client.connect(host, port)
        if code != 220:
            # RFC 5321, section 3.1: a 554 (or 4xx) greeting means no
            # service here; the session must not go on.
            self._over = True
            return code, message
        client.ehlo_or_helo_if_needed()
        options = upstream_mail_options(mail_options, client.has_extn)
        code, message = client.mail(mailfrom, options)
        if not 200 <= code <= 299:
            self._over = True
        return code, message

    def rcpt(self, recipient: str) -> Outcome:
        """Send one RCPT."""
        return self._client.rcpt(recipient)

    def data(self) -> Outcome:
        """Send DATA; 354 means the upstream now waits for the message."""
        code, message = self._client.docmd("DATA")
        if code == 354:
            self._in_data = True
        return code, message

    def finish(self, message: bytes) -> Outcome:
        """Send the message and the final dot; return the upstream's verdict.

        The wait for that reply is bounded by ``relay_data_timeout``, not
        ``relay_timeout``: RFC 5321, section 4.5.3.2.6 gives the receiver 10
        minutes there, because a sender that gives up early and sends again
        may deliver twice.
        """
        client = self._client
        self._over = True  # one transaction per session
        client.sock.settimeout(self._relay.relay_data_timeout)
        client.send(wire_message(message))
        code, reply = client.getreply()
        self._in_data = False
        client.sock.settimeout(self._relay.relay_timeout)
        return code, reply

    # -- ending ------------------------------------------------------------

    def close(self) -> None:
        """End the session once the step under way (if any) is over.

        Returns at once, from any thread; the QUIT runs in a worker.
        """
        with self._lock:
            self._ending = True
            busy = self._busy
        if not busy:
            self._start_end()

    def _start_end(self) -> None:
        with self._lock:
            if self._end_started:
                return
            self._end_started = True
        if self._client is None:
            return
        try:
            self._relay._submit(self._end)
        except RuntimeError:  # the workers are shut down: close without QUIT
            self._end(polite=False)

    def _end(self, polite: bool = True) -> None:
        client = self._client
        try:
            # In the middle of DATA a QUIT would be message text: closing
            # the connection is what makes the upstream drop the message.
            if polite and not self._in_data and client.sock is not None:
                client.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            client.close()
            if client.registered is not None:
                self._relay._forget_relay_socket(client.registered)


class _RelayClient(smtplib.SMTP):
    """smtplib's client, with its socket in the relay's registry from birth.

    Registered as soon as it is connected, before the greeting is read, so
    that ``_abort_relays`` can cut a session stuck on a silent upstream's
    greeting; refused outright once relaying stopped.
    """

    def __init__(self, relay) -> None:
        super().__init__(timeout=relay.relay_timeout)
        self._relay = relay
        self.registered = None

    def _get_socket(self, host, port, timeout):
        sock = super()._get_socket(host, port, timeout)
        try:
            self._relay._register_relay_socket(sock)
        except BaseException:
            sock.close()
            raise
        self.registered = sock
        return sock


def wire_message(message: bytes) -> bytes:
    """*message* (CRLF line ends) dot-stuffed and ended with CRLF "." CRLF.

    RFC 5321, section 4.5.2: a line that starts with a period gets one more.
    A message that does not end with CRLF gets one, so that the final dot
    stands on a line of its own.
    """
    stuffed = _LINE_START_DOT.sub(b"..", message)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def upstream_reply(outcome: Outcome, unavailable: str) -> str:
    """The client's reply for an upstream step's (code, message).

    The upstream's own code and text, except: no reply at all becomes
    *unavailable*, and 421 becomes 451 (see ``_CLOSING``).
    """
    code, message = outcome
    if not 200 <= code <= 599:
        return unavailable
    return "%d %s" % (451 if code == _CLOSING else code, reply_text(message))


def reply_text(message: object) -> str:
    """An upstream reply's text on one line (smtplib joins lines with LF)."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message).split()) or "Error"
