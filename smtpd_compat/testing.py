r"""SMTP servers for tests: a background :class:`Controller` and a recording :class:`Sink`.

Two lines give a test a real SMTP server on an OS-chosen loopback port::

    with Controller() as smtp, smtplib.SMTP(smtp.hostname, smtp.port) as client:
        client.sendmail("app@example.org", ["user@example.org"], "Subject: hi\r\n\r\nHello")

and ``smtp.server.messages`` then holds what arrived.  The controller runs
any :class:`smtpd_compat.SMTPServer` subclass in a thread of its own, on a
socket map of its own, so it never touches the process-wide
``asyncore.socket_map`` that the code under test may be serving.

``Controller(tls=True)`` offers STARTTLS and ``Controller(smtps=True)``
speaks TLS from the first byte, both with a throw-away certificate for
``localhost`` and the listening address, made at start-up by a throw-away
certificate authority (``trustme``, in the ``test`` extra)::

    with Controller(tls=True) as smtp, smtplib.SMTP(smtp.hostname, smtp.port) as client:
        client.starttls(context=smtp.client_context())

The pytest plugin (``smtpd_compat.pytest_plugin``) wraps all of this in the
``smtpd_server`` fixture.
"""

import email
import email.message
import email.policy
import functools
import inspect
import os
import re
import ssl
import tempfile
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from smtpd_compat import SMTPChannel, SMTPServer
from smtpd_compat._loop import Poller

__all__ = ["Controller", "Message", "Sink"]

# How often the server thread looks at its stop flag: the bound on how long
# stop() takes when the server is not stuck inside a handler.
_POLL_INTERVAL = 0.05

_REPLY = re.compile(r"[2-5][0-9][0-9](?: [^\r\n]*)?")


@dataclass(frozen=True)
class Message:
    """One message as a :class:`Sink` received it.

    Attributes:
        peer: the client's socket address, ``(host, port)`` for IPv4.
        mailfrom: the envelope sender from MAIL FROM (``'<>'`` for the null
            sender), as the server parsed it.
        rcpttos: the envelope recipients the server accepted, in order.
        data: the message content with dot-stuffing undone and line ends
            turned into LF: bytes, or str for a server made with
            ``decode_data=True``.
        mail_options: the upper-cased ESMTP parameters of MAIL FROM,
            e.g. ``['BODY=8BITMIME', 'SIZE=1024']``.
        rcpt_options: the upper-cased ESMTP parameters of each accepted RCPT
            TO, ``rcpt_options[i]`` being those of ``rcpttos[i]``.
        helo: the name the client gave in HELO or EHLO.
        reply: the reply the server gave at the end of DATA, ``'250 OK'``
            unless the sink was told to refuse (see :meth:`Sink.refuse_data`).
        auth_login: the login the client authenticated as with AUTH, or
            None (see ``Controller(auth=...)``).
        tls: True if the message came over TLS (STARTTLS or implicit TLS).
    """

    peer: Any
    mailfrom: str
    rcpttos: List[str]
    data: Union[bytes, str]
    mail_options: List[str]
    rcpt_options: List[List[str]]
    helo: str
    reply: str
    auth_login: Optional[str] = None
    tls: bool = False

    # The list attributes make a hash meaningless: records compare by value only.
    __hash__ = None  # type: ignore[assignment]

    @property
    def accepted(self) -> bool:
        """True when the server acknowledged the message with a 2xx reply."""
        return self.reply.startswith("2")

    @functools.cached_property
    def email(self) -> email.message.EmailMessage:
        """:attr:`data` parsed with ``email.policy.default`` (parsed once, then cached)."""
        if isinstance(self.data, str):
            parsed = email.message_from_string(self.data, policy=email.policy.default)
        else:
            parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


class _Refusals:
    """Replies a sink gives instead of accepting: per recipient, and at DATA.

    Each refusal is a reply and how many more times to give it (None:
    always).  The test thread sets them while the server thread uses them,
    hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: Dict[Tuple[str, str], Tuple[str, Optional[int]]] = {}

    def set(self, where: str, key: str, reply: str, times: Optional[int]) -> None:
        with self._lock:
            self._entries[where, key.casefold()] = (reply, times)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def use(self, where: str, key: str = "") -> Optional[str]:
        """The reply to give now for *key* at *where*, counting one use."""
        with self._lock:
            entry = self._entries.get((where, key.casefold()))
            if entry is None:
                return None
            reply, times = entry
            if times is not None and times <= 1:
                del self._entries[where, key.casefold()]
            elif times is not None:
                self._entries[where, key.casefold()] = (reply, times - 1)
            return reply


def _checked_reply(reply: str) -> str:
    if not isinstance(reply, str) or not _REPLY.fullmatch(reply):
        raise ValueError("a reply is one line: a code 200-599, then a space and "
                         "text, e.g. '550 5.1.1 No such user'; got %r" % (reply,))
    return reply


def _checked_times(times: Optional[int]) -> Optional[int]:
    if times is not None and (not isinstance(times, int) or times < 1):
        raise ValueError("times must be a positive int or None, got %r" % (times,))
    return times


class _SinkChannel(SMTPChannel):
    """A channel that lets its :class:`Sink` refuse recipients and remembers
    the greeting for the record."""

    def __init__(self, server: "Sink", conn: Any, addr: Any, *args: Any,
                 **kwargs: Any) -> None:
        # Set before the base class runs: it may push the greeting (and so
        # call our push) or close the connection right away.
        self._held_replies: Optional[List[str]] = None
        SMTPChannel.__init__(self, server, conn, addr, *args, **kwargs)
        peer = getattr(self, "peer", None)
        if peer is not None and self.connected:
            server._sessions[peer] = self

    def push(self, msg: str) -> None:  # type: ignore[override]  # smtpd's takes str
        if self._held_replies is not None:
            self._held_replies.append(msg)
        else:
            SMTPChannel.push(self, msg)

    def smtp_RCPT(self, arg: Optional[str]) -> None:
        # Let the base class judge the command (state, syntax, parameters);
        # hold back its reply, and if it accepted a recipient that the sink
        # was told to refuse, take the recipient back and answer the refusal.
        before = len(self.rcpttos)
        previous_options = getattr(self, "rcpt_options", [])
        self._held_replies = []
        try:
            SMTPChannel.smtp_RCPT(self, arg)
        finally:
            held, self._held_replies = self._held_replies, None
        if len(self.rcpttos) > before:
            refusal = self.smtp_server._refusals.use("RCPT", self.rcpttos[-1])
            if refusal is not None:
                self.rcpttos.pop()
                self._recipient_options.pop()
                self.rcpt_options = previous_options
                held = [refusal]
        for reply in held:
            SMTPChannel.push(self, reply)

    def close(self) -> None:
        # Also called by the base __init__ when the client is gone already.
        sessions = getattr(getattr(self, "smtp_server", None), "_sessions", {})
        peer = getattr(self, "peer", None)
        if sessions.get(peer) is self:
            del sessions[peer]
        SMTPChannel.close(self)


class Sink(SMTPServer):
    """An SMTP server that accepts every message and records it as a :class:`Message`.

    Made like any :class:`smtpd_compat.SMTPServer` (``remoteaddr`` is unused
    and may be None); usually run by a :class:`Controller`.  The test thread
    may read and configure it while the server thread serves:

    * :attr:`messages` lists every message received so far (a message is
      recorded before its client gets the reply to DATA, so once
      ``smtplib.SMTP.sendmail`` returns, the message is there);
    * :meth:`wait_for_message` waits for mail sent in the background;
    * :meth:`refuse_recipient` and :meth:`refuse_data` make it answer
      refusals, to test how the code under test copes with them.
    """

    channel_class = _SinkChannel

    #: The :class:`Controller` running this sink, if any (for its TLS
    #: certificate authority: ``smtpd_server.controller.client_context()``).
    controller: "Optional[Controller]" = None

    def __init__(self, localaddr: Tuple[str, int], remoteaddr: Any = None,
                 *args: Any, **kwargs: Any) -> None:
        self.messages: List[Message] = []
        self._received = threading.Condition()
        self._next_to_wait_for = 0
        self._refusals = _Refusals()
        self._sessions: Dict[Any, _SinkChannel] = {}
        SMTPServer.__init__(self, localaddr, remoteaddr, *args, **kwargs)
        listener: Any = self.socket
        self._address: Tuple[str, int] = listener.getsockname()[:2]

    @property
    def address(self) -> Tuple[str, int]:
        """``(hostname, port)`` the server listens on, with the port the OS chose."""
        return self._address

    @property
    def hostname(self) -> str:
        """The numeric host address the server listens on, e.g. ``'127.0.0.1'``."""
        return self._address[0]

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self._address[1]

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str],
                        data: Union[bytes, str],
                        recipient_options: Optional[List[List[str]]] = None,
                        **kwargs: Any) -> Optional[str]:
        """Record the message, and answer a refusal if one was set with :meth:`refuse_data`."""
        channel = self._sessions.get(peer)
        # (None: called by hand, not by a channel.)
        rcpt_options = list(recipient_options or ([] for _ in rcpttos))
        helo = channel.seen_greeting if channel is not None else ""
        tls = bool(kwargs.get("tls", False))
        refusal = self._refusals.use("DATA")
        message = Message(
            peer=peer, mailfrom=mailfrom, rcpttos=list(rcpttos), data=data,
            mail_options=list(kwargs.get("mail_options", [])),
            rcpt_options=rcpt_options, helo=helo,
            reply=refusal if refusal is not None else "250 OK",
            auth_login=kwargs.get("auth_login"), tls=tls)
        with self._received:
            self.messages.append(message)
            self._received.notify_all()
        return refusal

    def wait_for_message(self, timeout: float = 5.0) -> Message:
        """Return the next message this method has not returned yet.

        Waits up to *timeout* seconds for it to arrive and raises
        :class:`TimeoutError` if it does not.  The first call returns the
        first message received (even if it arrived before the call).
        """
        with self._received:
            if not self._received.wait_for(
                    lambda: len(self.messages) > self._next_to_wait_for, timeout):
                raise TimeoutError("no message arrived within %s seconds (%d received "
                                   "in all)" % (timeout, len(self.messages)))
            message = self.messages[self._next_to_wait_for]
            self._next_to_wait_for += 1
            return message

    def refuse_recipient(self, address: str, reply: str = "550 5.1.1 No such user",
                         times: Optional[int] = None) -> None:
        """Answer *reply* to ``RCPT TO:<address>`` instead of accepting it.

        *address* is compared case-insensitively with the address in the
        command (without angle brackets).  The refusal holds for *times*
        RCPT commands (None: until :meth:`reset`).  A refused recipient is not
        in the message's ``rcpttos``.
        """
        self._refusals.set("RCPT", address, _checked_reply(reply), _checked_times(times))

    def refuse_data(self, reply: str = "554 5.6.0 Message refused",
                    times: Optional[int] = None) -> None:
        """Answer *reply* at the end of DATA instead of ``250 OK``.

        The message is still recorded, with :attr:`Message.reply` set to
        *reply*.  Holds for *times* messages (None: until :meth:`reset`), so
        ``refuse_data('451 4.3.0 Try again later', times=1)`` tests a retry.
        """
        self._refusals.set("DATA", "", _checked_reply(reply), _checked_times(times))

    def reset(self) -> None:
        """Forget the messages received and every refusal set."""
        with self._received:
            del self.messages[:]
            self._next_to_wait_for = 0
        self._refusals.clear()


def _accepts_map(factory: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "map" or p.kind is p.VAR_KEYWORD for p in parameters)


class Controller:
    """Run an SMTP server in a background thread, on its own socket map.

    ``Controller()`` runs a :class:`Sink`; ``Controller(DebuggingServer)`` or
    any other ``SMTPServer`` subclass (or a callable with its signature)
    works the same way.  The server is made in :meth:`start`, in the calling
    thread, as ``server_class((hostname, port), remoteaddr, map=<private map>,
    **server_kwargs)``, so a bad argument or an address in use raises there.
    Classes whose ``__init__`` takes no ``map`` are made on asyncore's global
    map and moved to the private one at once.

    ``auth={"login": "password"}`` turns AUTH on (PLAIN, LOGIN, CRAM-MD5)
    with those logins; ``auth_required=True`` refuses MAIL until the client
    has logged in.  AUTH is allowed without TLS (``auth_plaintext``) unless
    the controller has TLS (``tls=True``): a test server with TLS takes
    passwords only over TLS, as a real submission server does, so a client
    that sends one before STARTTLS fails the test.  ``auth_plaintext=True``
    or ``False`` decides it either way.

    Use it as a context manager or with :meth:`start` and :meth:`stop`.
    While running, :attr:`hostname` and :attr:`port` say where it listens
    (port 0, the default, lets the OS choose a free one) and :attr:`server`
    is the server object.  :meth:`stop` closes every socket of the map: the
    listener and all client connections.  A controller can be started again
    after it was stopped; it then makes a new server.

    ``tls=True`` gives the server a TLS context (it offers STARTTLS);
    ``smtps=True`` makes it speak TLS from the first byte (implicit TLS).
    The certificate is made at :meth:`start` by a throw-away certificate
    authority, :attr:`tls_ca` (a ``trustme.CA``); :meth:`client_context`
    trusts it, and :attr:`ca_file` is its certificate as a PEM file for
    other clients (``curl --cacert``, ``swaks --tls-ca-path``).
    """

    def __init__(self, server_class: Optional[Callable[..., Any]] = None,
                 hostname: str = "127.0.0.1", port: int = 0, *,
                 remoteaddr: Any = None, ready_timeout: float = 5.0,
                 stop_timeout: float = 5.0, auth: Optional[Mapping[str, str]] = None,
                 auth_required: bool = False, auth_plaintext: Optional[bool] = None,
                 tls: bool = False, smtps: bool = False,
                 **server_kwargs: Any) -> None:
        self.server_class: Callable[..., Any] = server_class or Sink
        self.hostname: str = hostname
        self.port: int = port
        self.remoteaddr = remoteaddr
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.server_kwargs = server_kwargs
        self.auth = None if auth is None else dict(auth)
        self.auth_required = auth_required
        self.auth_plaintext = auth_plaintext
        self.tls = tls
        self.smtps = smtps
        #: The throw-away certificate authority (a ``trustme.CA``) once a
        #: TLS controller started; None without TLS.
        self.tls_ca: Any = None
        #: A PEM file holding :attr:`tls_ca`'s certificate while running.
        self.ca_file: Optional[str] = None
        #: The running server (kept after :meth:`stop` so a test can read it).
        self.server: Any = None
        self._requested = (hostname, port)
        self._map: Dict[int, Any] = {}
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    @property
    def address(self) -> Tuple[str, int]:
        """``(hostname, port)``: where the server listens once started."""
        return (self.hostname, self.port)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._thread is not None

    def __repr__(self) -> str:
        name = getattr(self.server_class, "__name__", repr(self.server_class))
        state = "running on %s:%s" % self.address if self.running else "stopped"
        return "<%s %s %s>" % (type(self).__name__, name, state)

    def __enter__(self) -> "Controller":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self) -> "Controller":
        """Make the server and serve it in a new thread; return once it accepts.

        Raises what making the server raised (``OSError`` for an address in
        use, ``TypeError`` for bad arguments), and ``RuntimeError`` if the
        controller is running already.
        """
        if self._thread is not None:
            raise RuntimeError("%r is running already" % self)
        self._map = {}
        self._stopping.clear()
        self._ready.clear()
        self._error = None
        self.server = self._make_server()
        try:
            self._configure_auth()
            self.hostname, self.port = self.server.socket.getsockname()[:2]
            if isinstance(self.server, Sink):
                self.server.controller = self
            if self.tls or self.smtps:
                self._switch_on_tls()
            self._thread = threading.Thread(
                target=self._run, name="smtpd_compat.testing.Controller-%d" % self.port,
                daemon=True)
            self._thread.start()
            if not self._ready.wait(self.ready_timeout):
                raise RuntimeError("the server thread did not start within %s seconds"
                                   % self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _configure_auth(self) -> None:
        # Only what was asked for: a server class's own settings stay otherwise.
        if self.auth is not None:
            self.server.auth_users = dict(self.auth)
            plaintext = self.auth_plaintext
            if plaintext is None:
                plaintext = not (self.tls or self.smtps)
            self.server.auth_plaintext = plaintext
        if self.auth_required:
            self.server.auth_required = True

    def _make_server(self) -> Any:
        factory = self.server_class
        if _accepts_map(factory):
            return factory(self._requested, self.remoteaddr, map=self._map,
                           **self.server_kwargs)
        from smtpd_compat import _asyncore
        server = factory(self._requested, self.remoteaddr, **self.server_kwargs)
        # Made on the global map: move it (and anything it opened) to ours.
        global_map = _asyncore.asyncore.socket_map
        for fd, dispatcher in list(global_map.items()):
            if dispatcher is server or getattr(dispatcher, "smtp_server", None) is server:
                del global_map[fd]
                dispatcher._map = self._map
                self._map[fd] = dispatcher
        return server

    def _switch_on_tls(self) -> None:
        """Make a certificate for this server and give the server a context for it."""
        try:
            with warnings.catch_warnings():
                # cryptography (under trustme) warns on import on Python 3.8;
                # a test run with warnings as errors must not fail for it.
                warnings.simplefilter("ignore")
                import trustme
        except ImportError:
            raise RuntimeError("Controller(tls=True) needs the trustme package "
                               "(pip install smtpd-compat[test])") from None
        if self.tls_ca is None:
            self.tls_ca = trustme.CA()
        names = ["localhost", self.hostname]
        certificate = self.tls_ca.issue_cert(*dict.fromkeys(names))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        self.server.tls_context = context
        self.server.smtps = self.smtps
        descriptor, self.ca_file = tempfile.mkstemp(prefix="smtpd-compat-ca-", suffix=".pem")
        with os.fdopen(descriptor, "wb") as ca_file:
            ca_file.write(self.tls_ca.cert_pem.bytes())

    def client_context(self) -> ssl.SSLContext:
        """A client ``SSLContext`` that trusts this controller's certificate authority.

        Verifies the certificate and the host name (``localhost`` or the
        listening address) as any careful client would.  Raises
        RuntimeError when the controller has no TLS.
        """
        if self.tls_ca is None:
            raise RuntimeError("%r has no TLS (use Controller(tls=True))" % self)
        context = ssl.create_default_context()
        self.tls_ca.configure_trust(context)
        return context

    def _run(self) -> None:
        poller = Poller(self._map)
        try:
            self._ready.set()
            while not self._stopping.is_set():
                if self._map:
                    poller.poll(_POLL_INTERVAL)
                else:  # everything closed itself: nothing to serve, wait for stop
                    self._stopping.wait(_POLL_INTERVAL)
        except BaseException as error:  # reported by stop(), in the test's thread
            self._error = error
        finally:
            self._close_all()
            poller.close()

    def _close_all(self) -> None:
        for dispatcher in list(self._map.values()):
            try:
                dispatcher.close()
            except OSError:
                pass
        self._map.clear()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop serving and close every socket; wait up to *timeout* seconds.

        *timeout* defaults to :attr:`stop_timeout`.  Does nothing if the
        controller is not running.  Raises :class:`TimeoutError` when the
        server thread is stuck (in a handler that does not return) and then
        closes the sockets from the calling thread; re-raises an exception
        that escaped the server's loop.
        """
        if self.ca_file is not None:
            os.unlink(self.ca_file)
            self.ca_file = None
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        thread.join(self.stop_timeout if timeout is None else timeout)
        self._thread = None
        if thread.is_alive():
            self._close_all()
            raise TimeoutError("the server thread did not stop within %s seconds"
                               % (self.stop_timeout if timeout is None else timeout))
        error, self._error = self._error, None
        if error is not None:
            raise error

