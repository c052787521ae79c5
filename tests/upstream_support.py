"""A scripted upstream SMTP server for the relay tests: it records and it dawdles.

Postfix's smtp-sink covers refusals; this one records every command line of
every session and whether the session ended with QUIT or a bare close, and
can wait before answering a given command (a slow final dot, a slow QUIT).
"""

import socket
import threading
import time
from typing import Dict, List, Optional


class UpstreamSession:
    """One connection to the scripted upstream, as it saw it."""

    def __init__(self) -> None:
        self.lines: List[bytes] = []     # command lines, without CRLF
        self.messages: List[bytes] = []  # message data of each final dot
        self.closed = threading.Event()  # the peer closed (or reset) it

    def verbs(self) -> List[str]:
        return [line.split(b" ", 1)[0].decode("ascii", "replace").upper()
                for line in self.lines]


class ScriptedUpstream:
    """Listens on 127.0.0.1:0 and speaks just enough SMTP; a context manager.

    *delays* maps a verb (``"QUIT"``, ``"MAIL"``, ... or ``"."`` for the
    final dot) to seconds waited before its reply.
    """

    def __init__(self, delays: Optional[Dict[str, float]] = None) -> None:
        self.delays = dict(delays or {})
        self.sessions: List[UpstreamSession] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.address = self._listener.getsockname()
        self._threads: List[threading.Thread] = []
        self._connections: List[socket.socket] = []
        self._closing = threading.Event()  # cuts a delay short
        self._spawn(self._accept_loop)

    def __enter__(self) -> "ScriptedUpstream":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        for conn in list(self._connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(10)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            session = UpstreamSession()
            self.sessions.append(session)
            self._connections.append(conn)
            self._spawn(self._serve, conn, session)

    def wait_for_sessions(self, count: int, timeout: float = 10.0) -> List[UpstreamSession]:
        deadline = time.monotonic() + timeout
        while len(self.sessions) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.sessions) >= count, self.sessions
        return self.sessions

    def _serve(self, conn: socket.socket, session: UpstreamSession) -> None:
        try:
            self._converse(conn, session)
        except OSError:
            pass
        finally:
            session.closed.set()
            conn.close()

    def _converse(self, conn: socket.socket, session: UpstreamSession) -> None:
        conn.sendall(b"220 scripted.example ESMTP\r\n")
        buffer = b""
        in_data = False
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buffer += data
            while True:
                if in_data:
                    end = buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    session.messages.append(buffer[:end + 2])
                    buffer = buffer[end + 5:]
                    in_data = False
                    self._answer(conn, ".", b"250 2.0.0 Ok: queued")
                    continue
                line, sep, rest = buffer.partition(b"\r\n")
                if not sep:
                    break
                buffer = rest
                session.lines.append(line)
                verb = line.split(b" ", 1)[0].upper().decode("ascii", "replace")
                if verb == "EHLO":
                    self._answer(conn, verb, b"250-scripted.example\r\n"
                                             b"250-SIZE 10240000\r\n250 8BITMIME")
                elif verb == "DATA":
                    in_data = True
                    self._answer(conn, verb, b"354 go ahead")
                elif verb == "QUIT":
                    self._answer(conn, verb, b"221 2.0.0 Bye")
                    return
                else:
                    self._answer(conn, verb, b"250 2.0.0 Ok")

    def _answer(self, conn: socket.socket, verb: str, reply: bytes) -> None:
        delay = self.delays.get(verb)
        if delay and self._closing.wait(delay):
            return
        conn.sendall(reply + b"\r\n")
