"""A real HAProxy in front of a loopback capture socket, for the PROXY protocol tests.

* `haproxy_program`: Debian's ``haproxy`` (installed when missing and
  possible); a missing one skips the test, but fails it on CI.
* `HAProxy`: ``haproxy -db`` with a generated ``mode tcp`` configuration
  on free loopback ports, always stopped by its PID.
* `CaptureServer`: the backend HAProxy connects to; it records the raw
  bytes (PROXY header first) without interpreting them.
* `tls_files`: a throwaway self-signed certificate for a TLS frontend.
"""

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from tests.cli_support import accepts, free_port, require_tool

START_TIMEOUT = 30.0
BIND_ATTEMPTS = 3
IO_TIMEOUT = 15.0

# A frontend that HAProxy closes at once: connecting to it proves HAProxy
# is listening without sending anything to a backend.
_PROBE = """
frontend probe
    bind 127.0.0.1:{probe}
    tcp-request connection reject
"""

_DEFAULTS = """
global
    maxconn 64

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""


def haproxy_program() -> str:
    """The path of ``haproxy``; skip without it, except on CI where it must be there."""
    return require_tool("haproxy", "haproxy")


class HAProxy:
    """``haproxy -db -f <generated cfg>``, started and stopped by the test.

    *sections* is the configuration after the global and default sections;
    its ``{name}`` fields are filled from *ports*, and from *free* (name ->
    host) with ports found free on that host, found again if another process
    takes one before HAProxy binds it.  The ports used are in ``ports``.
    """

    def __init__(self, workdir: str, sections: str, ports: Dict[str, int],
                 free: Dict[str, str]) -> None:
        self.sections = sections
        self.fixed = dict(ports)
        self.free = dict(free, probe="127.0.0.1")
        self.ports: Dict[str, int] = {}
        self.config = os.path.join(workdir, "haproxy.cfg")
        self.log = os.path.join(workdir, "haproxy.log")
        self.process: Optional["subprocess.Popen[bytes]"] = None

    def start(self) -> None:
        """Start HAProxy and wait until it listens."""
        for _attempt in range(BIND_ATTEMPTS):
            if self._start_once():
                return
        pytest.fail("haproxy found no free port:\n%s" % self.output())

    def _start_once(self) -> bool:
        """One try on new free ports; False if one was taken meanwhile."""
        self.ports = dict(self.fixed)
        self.ports.update((name, free_port(host)) for name, host in self.free.items())
        with open(self.config, "w") as f:
            f.write(_DEFAULTS + _PROBE.format(**self.ports) + self.sections.format(**self.ports))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [haproxy_program(), "-db", "-f", self.config],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts("127.0.0.1", self.ports["probe"]):
            if self.process.poll() is not None and "cannot bind" in self.output():
                return False
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("haproxy did not start:\n%s" % self.output())
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        """Stop HAProxy by its PID and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def output(self) -> str:
        """What HAProxy printed (its warnings and alerts)."""
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")


@contextlib.contextmanager
def running_haproxy(workdir: str, sections: str, ports: Dict[str, int],
                    free: Dict[str, str]) -> Iterator[HAProxy]:
    """A started `HAProxy` (see there for the arguments), stopped when the block ends."""
    haproxy = HAProxy(workdir, sections, ports, free)
    try:
        haproxy.start()
        yield haproxy
    finally:
        haproxy.stop()


class CaptureServer:
    """A listening socket on 127.0.0.1 that records what each connection sends."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.settimeout(IO_TIMEOUT)
        self.listener.bind((host, 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.connections: List[socket.socket] = []

    def accept(self) -> socket.socket:
        """The next connection (HAProxy's), with a timeout on every read."""
        conn, _ = self.listener.accept()
        conn.settimeout(IO_TIMEOUT)
        self.connections.append(conn)
        return conn

    def close(self) -> None:
        """Close the listener and every accepted connection."""
        for conn in self.connections:
            conn.close()
        self.listener.close()

    def __enter__(self) -> "CaptureServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_until(conn: socket.socket, ending: bytes) -> bytes:
    """Bytes from *conn* up to and including the first *ending*; fail on EOF."""
    data = b""
    while ending not in data:
        chunk = conn.recv(4096)
        if not chunk:
            pytest.fail("connection closed after %r" % data)
        data += chunk
    return data


def read_exactly(conn: socket.socket, count: int) -> bytes:
    """Exactly *count* bytes from *conn*; fail on EOF."""
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            pytest.fail("connection closed after %r" % data)
        data += chunk
    return data


def client_socket(host: str = "127.0.0.1") -> Tuple[socket.socket, str]:
    """A TCP socket bound to a loopback source other than HAProxy's own, if possible.

    Returns the socket and the source host: 127.0.0.2 (Linux routes all
    of 127/8 to the loopback) so that the header's source cannot be
    confused with HAProxy's address, else *host* itself.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(IO_TIMEOUT)
    if family == socket.AF_INET:
        try:
            sock.bind(("127.0.0.2", 0))
            return sock, "127.0.0.2"
        except OSError:
            pass
    sock.bind((host, 0))
    return sock, host


def tls_files(workdir: str) -> str:
    """A PEM file holding a new self-signed certificate and its key (``openssl req``)."""
    key = os.path.join(workdir, "key.pem")
    cert = os.path.join(workdir, "cert.pem")
    subprocess.run(
        [require_tool("openssl", "openssl"), "req", "-x509", "-newkey", "rsa:2048",
         "-nodes", "-days", "1", "-subj", "/CN=haproxy.test", "-keyout", key, "-out", cert],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=60, check=True)
    bundle = os.path.join(workdir, "bundle.pem")
    with open(bundle, "wb") as out:
        for path in (cert, key):
            with open(path, "rb") as f:
                out.write(f.read())
    return bundle


def tls_client_context() -> ssl.SSLContext:
    """A client context that accepts the throwaway certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
