"""TLS for the tests: a throw-away certificate authority and TLS clients.

* ``server_context()`` / ``client_context()``: contexts for a certificate
  that ``ca()`` (one ``trustme.CA`` per test run) issued for ``localhost``
  and 127.0.0.1; the client verifies it as a careful client would.
* ``TLSSession``: a ``PumpedSession`` (the test drives the server's loop)
  that can switch to TLS; the client's TLS runs non-blocking and pumps the
  server while it waits, so every step is deterministic.
"""

import functools
import socket
import ssl
import time
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # cryptography's warning about Python 3.8
    import trustme

import smtpd_compat
from smtpd_compat._loop import Poller
from tests.conftest import PumpedSession

STARTTLS_READY = b"220 2.0.0 Ready to start TLS\r\n"


@functools.lru_cache(maxsize=None)
def ca() -> trustme.CA:
    """The certificate authority of this test run."""
    return trustme.CA()


@functools.lru_cache(maxsize=None)
def certificate() -> trustme.LeafCert:
    """The server's certificate (and key) of this test run, for localhost and 127.0.0.1."""
    return ca().issue_cert("localhost", "127.0.0.1")


def server_context() -> ssl.SSLContext:
    """A server context with a certificate for localhost and 127.0.0.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate().configure_cert(context)
    return context


def client_context() -> ssl.SSLContext:
    """A client context that trusts ``ca()`` and checks the host name."""
    context = ssl.create_default_context()
    ca().configure_trust(context)
    return context


def write_ca_file(directory) -> str:
    """``ca()``'s certificate as a PEM file in *directory*; returns its path."""
    path = str(directory / "ca.pem")
    ca().cert_pem.write_to_path(path)
    return path


def tls_attributes(**more):
    """Server attributes that switch STARTTLS on (plus *more*)."""
    return dict({"tls_context": server_context()}, **more)


def start_tls_session(server_class, implicit=False, **attributes) -> "TLSSession":
    """A TLSSession with a new *server_class* server, its TLS settings and *attributes* set."""
    server = server_class(("127.0.0.1", 0), None, map={})
    for name, value in tls_attributes(smtps=implicit, **attributes).items():
        setattr(server, name, value)
    return TLSSession(server, implicit=implicit)


class TLSSession(PumpedSession):
    """A pumped session whose client can switch to TLS (``handshake``)."""

    def __init__(self, server, implicit: bool = False, greeting: bool = True):
        self.implicit = implicit
        if greeting:
            super().__init__(server)
            return
        # Connected, and nothing read: the test looks at what comes first.
        self.server = server
        self.poller = Poller(server._map)
        self.client = socket.create_connection(server.socket.getsockname()[:2], timeout=5)
        self.client.setblocking(False)

    def server_channel(self):
        """The server's channel for this client; None once it closed."""
        channels = [d for d in self.server._map.values()
                    if isinstance(d, smtpd_compat.SMTPChannel)]
        assert len(channels) <= 1
        return channels[0] if channels else None

    def read(self, replies: int = 1, deadline: float = 5.0) -> bytes:
        if self.implicit and not isinstance(self.client, ssl.SSLSocket):
            self.handshake()
        return super().read(replies, deadline)

    def handshake(self, deadline: float = 5.0) -> None:
        """Wrap the client socket and shake hands, pumping the server meanwhile."""
        self.client = client_context().wrap_socket(
            self.client, server_hostname="localhost", do_handshake_on_connect=False,
            suppress_ragged_eofs=False)
        give_up = time.monotonic() + deadline
        while True:
            try:
                self.client.do_handshake()
                break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                assert time.monotonic() < give_up, "handshake did not finish"
                self.pump(1)
        # TLS 1.3: the client is done before the server has read its Finished.
        self.pump(3)

    def starttls(self) -> None:
        """STARTTLS, its 220, then the handshake."""
        assert self.send(b"STARTTLS\r\n") == STARTTLS_READY
        self.handshake()

    def _recv_available(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.client.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def write_server_files(directory):
    """The server's certificate and key as PEM files in *directory*: (cert, key)."""
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    certificate().cert_chain_pems[0].write_to_path(cert)
    certificate().private_key_pem.write_to_path(key)
    return cert, key
