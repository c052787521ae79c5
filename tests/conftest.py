"""Shared fixtures: a real server on 127.0.0.1:0 with its own socket map.

Channel tests need no threads and no mock sockets: the test holds a real
client socket and pumps the server's private map itself, so every exchange
is deterministic.
"""

import concurrent.futures
import re
import socket
import time

import hypothesis
import pytest

import smtpd_compat
from smtpd_compat._loop import Poller

# Property tests check what a function answers, not how fast: on a loaded
# machine hypothesis's default 200 ms deadline per example fails them at random.
hypothesis.settings.register_profile("smtpd_compat", deadline=None)
hypothesis.settings.load_profile("smtpd_compat")

FINAL_REPLY_LINE = re.compile(rb"^\d{3} .*\r\n", re.M)


class RecordingServer(smtpd_compat.SMTPServer):
    """Keeps every message; answers ``reply`` (None means 250 OK)."""

    reply = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.messages.append((mailfrom, list(rcpttos), data, kwargs))
        return self.reply


class FutureServer(RecordingServer):
    """Answers every message through a Future the test completes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.futures = []

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        RecordingServer.process_message(self, peer, mailfrom, rcpttos, data, **kwargs)
        future = concurrent.futures.Future()
        self.futures.append(future)
        return future


class PumpedSession:
    """One client connected to a server whose loop the test drives."""

    def __init__(self, server):
        self.server = server
        self.poller = Poller(server._map)
        self.client = socket.create_connection(server.socket.getsockname()[:2], timeout=5)
        self.client.setblocking(False)
        self.greeting = self.read(1)

    def pump(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            self.poller.poll(0.01)

    def read(self, replies: int = 1, deadline: float = 5.0) -> bytes:
        """Pump until *replies* final reply lines (``NNN text``) have arrived."""
        received = b""
        give_up = time.monotonic() + deadline
        while len(FINAL_REPLY_LINE.findall(received)) < replies:
            assert time.monotonic() < give_up, "no reply; got %r" % received
            self.pump(1)
            received += self._recv_available()
        return received

    def _recv_available(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.client.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def send(self, data: bytes, replies: int = 1, split=None) -> bytes:
        """Send *data* (in pieces of *split* bytes, pumping between) and read replies."""
        if split:
            for start in range(0, len(data), split):
                self.client.sendall(data[start:start + split])
                self.pump(1)
        else:
            self.client.sendall(data)
        return self.read(replies)

    def nothing_more(self, rounds: int = 3) -> bytes:
        """Whatever arrives when the server is pumped a little longer (b'' if nothing)."""
        self.pump(rounds)
        return self._recv_available()

    def closed_by_server(self) -> bool:
        self.pump(5)
        try:
            return self.client.recv(1) == b""
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True

    def disconnect(self) -> None:
        """Close this client only (the server keeps running)."""
        self.client.close()
        self.poller.close()

    def close(self) -> None:
        """Close this client and every socket of the server's map."""
        self.disconnect()
        smtpd_compat.asyncore.close_all(self.server._map)


def sessions_made_by(build):
    """For a factory fixture: yields a function that calls *build* and keeps the
    session it returns; closes them all when the test is over."""
    sessions = []

    def make(*args, **kwargs):
        session = build(*args, **kwargs)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def make_session():
    """Factory: ``make_session(server_class=RecordingServer, **server_kwargs)``."""
    def build(server_class=RecordingServer, attributes=None, **kwargs):
        server = server_class(("127.0.0.1", 0), None, map={}, **kwargs)
        for name, value in (attributes or {}).items():
            setattr(server, name, value)
        return PumpedSession(server)

    yield from sessions_made_by(build)


@pytest.fixture
def session(make_session):
    """A session with a default RecordingServer (bytes mode, 32 MiB limit)."""
    return make_session()
