"""PureProxy: relay every message to an upstream SMTP server.

Unlike smtpd's, it relays in lockstep with the client (see ``_upstream``):
each of the client's MAIL, RCPT, DATA and final dot gets the upstream's own
reply to it, so a recipient the upstream refuses is refused to the client,
and a message is acknowledged only once the upstream took it.  Every
upstream step runs in a worker thread (a slow upstream never stalls other
clients) with a bounded timeout.  A subclass that overrides
``process_message`` or ``_deliver`` gets smtpd's whole-message path instead.
"""

import concurrent.futures
import contextlib
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, Optional, Sequence, Set, Tuple

from ._namespace import debug
from ._parsing import insert_peer_header, peer_host, to_crlf
from ._replies import RELAY_UNAVAILABLE
from ._server import SMTPServer
from ._upstream import UpstreamSession, upstream_reply

logger = logging.getLogger("smtpd_compat")

Refusals = Dict[str, Tuple[int, object]]

# The MAIL parameters _relay hands to _deliver, which keeps smtpd's
# three-argument signature for the sake of its overrides.
_relay_context = threading.local()


class PureProxy(SMTPServer):
    """Relay each message to the upstream server given as *remoteaddr*.

    The relay runs in lockstep: the client's MAIL opens an upstream session
    and MAIL, RCPT, DATA and the final dot are each answered with the
    upstream's reply.  A subclass that overrides ``process_message`` or
    ``_deliver`` gets smtpd's path instead: ``process_message`` relays the
    whole message through ``_deliver(mailfrom, rcpttos, data)``, in a worker
    thread, and its refused dict decides the one reply after DATA.

    ``relay_timeout`` bounds each upstream step (seconds): connecting, the
    greeting, EHLO, MAIL, RCPT, DATA.  ``relay_data_timeout`` bounds the wait
    for the upstream's reply to the final dot (RFC 5321 asks for 10 minutes:
    giving up sooner invites a duplicate).  ``relay_workers`` is the number
    of upstream steps running at once.
    """

    relay_timeout: float = 60.0
    relay_data_timeout: float = 600.0
    relay_workers: int = 4

    def __init__(self, *args, **kwargs):
        if kwargs.get("enable_SMTPUTF8"):
            raise ValueError("PureProxy does not support SMTPUTF8.")
        self._executor: Optional[ThreadPoolExecutor] = None
        # Upstream connections open now, for _abort_relays.
        self._relay_lock = threading.Lock()
        self._relay_sockets: Set[socket.socket] = set()
        self._relays_aborted = False
        # The lockstep session of each channel in a transaction.
        self._sessions: Dict[object, UpstreamSession] = {}
        super().__init__(*args, **kwargs)

    # -- lockstep relaying (the decision points of _policy) ------------------

    def _relays_in_lockstep(self) -> bool:
        """False when process_message or _deliver is overridden (smtpd's path)."""
        cls = type(self)
        return (cls.process_message is PureProxy.process_message
                and cls._deliver is PureProxy._deliver
                and "process_message" not in vars(self)
                and "_deliver" not in vars(self))

    def _policy_mail(self, channel, address, params):
        if not self._relays_in_lockstep():
            return None
        self._end_session(channel)
        session = self._sessions[channel] = UpstreamSession(self)
        return self._step(session, session.open, address, params)

    def _policy_rcpt(self, channel, address, params):
        session = self._sessions.get(channel)
        return session and self._step(session, session.rcpt, address)

    def _policy_data(self, channel):
        session = self._sessions.get(channel)
        return session and self._step(session, session.data)

    def _policy_message(self, channel, data):
        session = self._sessions.get(channel)
        if session is None:
            return None
        data = insert_peer_header(data, peer_host(channel.peer))
        if isinstance(data, str):
            data = data.encode("utf-8")
        return self._step(session, session.finish, to_crlf(data))

    def _policy_transaction_over(self, channel):
        self._end_session(channel)

    def _step(self, session: UpstreamSession, step, *args) -> concurrent.futures.Future:
        """Run a session step in a worker; the Future's result is the client's reply."""
        outcome = session.submit(step, *args)
        reply: concurrent.futures.Future = concurrent.futures.Future()

        def translate(done: concurrent.futures.Future) -> None:
            try:
                code, message = done.result()
                if not 200 <= code <= 399:
                    debug("upstream refused %s%r: %d %r" % (
                        step.__name__, args[:1], code, message))
                reply.set_result(upstream_reply((code, message), RELAY_UNAVAILABLE))
            except BaseException as e:  # the client must get a reply whatever happens
                reply.set_exception(e)

        outcome.add_done_callback(translate)
        return reply

    def _end_session(self, channel) -> None:
        session = self._sessions.pop(channel, None)
        if session is not None:
            session.close()

    def _forget_channel(self, channel) -> None:
        self._end_session(channel)
        super()._forget_channel(channel)

    # -- smtpd's whole-message path (process_message or _deliver overridden) --

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        """Add ``X-Peer:`` and relay upstream; the reply comes when it is done.

        Lockstep relaying does not come here; an override that calls it gets
        smtpd's path: the whole message relayed at once by ``_deliver``.
        """
        data = insert_peer_header(data, peer_host(peer))
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
        with relay_options(mail_options):
            refused = self._deliver(mailfrom, rcpttos, data)
        if refused:
            debug("we got some refusals:", refused)
            logger.warning("upstream refused %d of %d recipients: %r",
                           len(refused), len(set(rcpttos)), refused)
        return relay_reply(rcpttos, refused)

    def _deliver(self, mailfrom, rcpttos, data):
        """Send upstream (blocking); return the refused recipients as smtpd did.

        The result maps each refused recipient to (code, message); when the
        upstream could not be reached or refused the whole message, every
        recipient is in it (code -1 if there was no SMTP reply).  The upstream
        QUIT happens afterwards in a worker thread, without waiting for it.
        ``BODY=`` comes from the MAIL parameters ``_relay`` was given.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        session = UpstreamSession(self)
        try:
            return _whole_message(session, mailfrom, rcpttos, to_crlf(data),
                                  getattr(_relay_context, "mail_options", ()))
        finally:
            session.close()

    # -- the registry of upstream connections ----------------------------------

    def _register_relay_socket(self, sock: socket.socket) -> None:
        with self._relay_lock:
            if self._relays_aborted:
                raise OSError("relaying stopped: the server is shutting down")
            self._relay_sockets.add(sock)

    def _forget_relay_socket(self, sock: socket.socket) -> None:
        with self._relay_lock:
            self._relay_sockets.discard(sock)

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
            sockets = list(self._relay_sockets)
        for sock in sockets:
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


def relay_reply(rcpttos: Iterable[str], refused: Refusals) -> Optional[str]:
    """The reply a relaying server owes its client after a whole-message attempt.

    A reply after DATA cannot name recipients, so:

    - None (250) when the upstream took the message for every recipient, or
      for some and refused the others for good (those refusals are logged);
    - a 4xx when it refused any recipient only for now (its own 4xx, 451 for
      its 421, which only closed the upstream session, or
      ``RELAY_UNAVAILABLE`` when there was no reply): the client tries again,
      and a recipient that already got the message may get a second copy,
      but none loses it;
    - its first 5xx when it refused every recipient for good.
    """
    if not refused:
        return None
    for code, message in refused.values():
        if not 500 <= code <= 599:
            if 400 <= code <= 499:
                return upstream_reply((code, message), RELAY_UNAVAILABLE)
            return RELAY_UNAVAILABLE
    if set(refused) != set(rcpttos):
        return None
    return upstream_reply(next(iter(refused.values())), RELAY_UNAVAILABLE)


@contextlib.contextmanager
def relay_options(mail_options: Sequence[str]):
    """Make *mail_options* the MAIL parameters of ``_deliver`` calls in this thread."""
    previous = getattr(_relay_context, "mail_options", ())
    _relay_context.mail_options = mail_options
    try:
        yield
    finally:
        _relay_context.mail_options = previous


def _whole_message(session: UpstreamSession, mailfrom, rcpttos, message: bytes,
                   mail_options: Sequence[str]) -> Refusals:
    """What smtplib's ``sendmail`` does, step by step: return the refusals."""
    outcome = session.run(session.open, mailfrom, mail_options)
    if not 200 <= outcome[0] <= 299:
        return dict.fromkeys(rcpttos, outcome)
    refused = {}
    for rcpt in rcpttos:
        answer = session.run(session.rcpt, rcpt)
        if not 200 <= answer[0] <= 299:
            refused[rcpt] = answer
    if set(refused) == set(rcpttos):
        debug("got SMTPRecipientsRefused")
        return refused
    outcome = session.run(session.data)
    if outcome[0] == 354:
        outcome = session.run(session.finish, message)
        if 200 <= outcome[0] <= 299:
            return refused
    debug("got", outcome)
    return dict.fromkeys(rcpttos, outcome)
