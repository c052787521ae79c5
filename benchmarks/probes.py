"""Raw-socket SMTP clients used by the benchmark runner.

Two probes that smtp-source cannot do:

* ``latency()``: fresh connection after fresh connection, the time from
  ``connect()`` to the complete 220 greeting and the round trip of one EHLO.
* ``IdleSwarm``: opens many connections that read the greeting (and, if
  asked, send EHLO and read its reply) and then say nothing, to weigh a
  server's memory per idle session and to find how many idle sessions it can
  hold at once.

Standard library only, so it runs on whatever Python runs the runner.
"""

import errno
import selectors
import socket
import statistics
import struct
import time

CRLF = b"\r\n"


class ProbeError(Exception):
    """The server did something that ends the measurement."""


def _read_reply(sock, buf, deadline):
    """Read one complete (possibly multi-line) SMTP reply.

    Returns ``(code, rest_of_buffer)``.  A reply ends with a line whose fourth
    character is a space ("250 ok"), or a bare three-digit line.
    """
    while True:
        while CRLF in buf:
            line, buf = buf.split(CRLF, 1)
            if len(line) < 4 or line[3:4] == b" ":
                return line[:3], buf
            # "250-..." continues the reply
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProbeError("reply timeout")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            raise ProbeError("reply timeout") from None
        if not data:
            raise ProbeError("connection closed before a complete reply")
        buf += data


def _complete_reply_code(buf):
    """The code of the first reply in *buf* once all its lines are in, else None."""
    for line in buf.split(CRLF)[:-1]:
        if line[3:4] != b"-":
            return line[:3]
    return None


def latency(host, port, samples, timeout=5.0, helo="bench.example"):
    """Median greeting time and EHLO round trip over ``samples`` sessions.

    Every session is a new TCP connection: connect, read 220, send EHLO, read
    the whole 250 reply, send QUIT, read 221, close.  Returns a dict with the
    medians in milliseconds and the raw lists.
    """
    greet, ehlo = [], []
    ehlo_cmd = b"EHLO " + helo.encode("ascii") + CRLF
    for _ in range(samples):
        t0 = time.perf_counter()
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + timeout
            code, buf = _read_reply(sock, b"", deadline)
            t1 = time.perf_counter()
            if code != b"220":
                raise ProbeError("greeting was %r" % code)
            t2 = time.perf_counter()
            sock.sendall(ehlo_cmd)
            code, buf = _read_reply(sock, buf, deadline)
            t3 = time.perf_counter()
            if code != b"250":
                raise ProbeError("EHLO answered %r" % code)
            sock.sendall(b"QUIT" + CRLF)
            try:
                _read_reply(sock, buf, deadline)
            except ProbeError:
                pass  # a server may close right after 221; not measured
        finally:
            sock.close()
        greet.append((t1 - t0) * 1000.0)
        ehlo.append((t3 - t2) * 1000.0)
    return {
        "greet_ms": statistics.median(greet),
        "ehlo_ms": statistics.median(ehlo),
        "greet_samples": greet,
        "ehlo_samples": ehlo,
    }


def _abort(sock):
    """Close with RST, so thousands of closes leave no TIME_WAIT behind."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class IdleSwarm:
    """Many concurrent connections that read the greeting and stay silent.

    Connections are opened through a sliding window: at most ``window``
    connections are waiting for their greeting at any moment, so a server
    with a short listen backlog is measured on what it holds, not on SYN
    retransmission delays.  Any greeted connection that the server closes or
    speaks on counts as dropped and ends the ramp.

    With ``ehlo`` (a client name), each connection sends ``EHLO name`` after
    the greeting and counts as greeted once the whole 250 reply is in: a
    session that has said EHLO and gone quiet, as real clients leave them.
    """

    def __init__(self, host, port, window=8, greet_timeout=10.0, ehlo=None):
        self.host, self.port = host, port
        self.window = window
        self.greet_timeout = greet_timeout
        self.ehlo_cmd = None if ehlo is None else b"EHLO " + ehlo.encode("ascii") + CRLF
        self.sel = selectors.DefaultSelector()
        self.pending = {}  # sock -> [started, buffer, reply awaited]
        self.greeted = set()
        self.peak = 0
        self.marks = []  # monotonic time when each 1000th session was greeted
        self.dropped = 0
        self.refused = 0

    def _open_one(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((self.host, self.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise ProbeError("connect: %s" % errno.errorcode.get(err, err))
        self.sel.register(sock, selectors.EVENT_READ)
        self.pending[sock] = [time.monotonic(), b"", b"220"]

    def _forget(self, sock):
        self.sel.unregister(sock)
        self.pending.pop(sock, None)
        self.greeted.discard(sock)
        _abort(sock)

    def _pump(self, timeout):
        """Handle readiness events; returns a failure text or None."""
        failure = None
        for key, _ in self.sel.select(timeout):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                data, why = b"", "%s" % (errno.errorcode.get(exc.errno, exc),)
            else:
                why = "closed"
            if sock in self.greeted:
                # An idle session is never spoken to: this is a close or a
                # timeout notice, either way the session is lost.
                self.dropped += 1
                self._forget(sock)
                failure = failure or "a greeted session was %s by the server" % (
                    "closed" if not data else "answered (%r)" % data[:40]
                )
                continue
            state = self.pending[sock]
            if not data:
                self.refused += 1
                self._forget(sock)
                failure = failure or "connection %s before greeting" % why
                continue
            state[1] += data
            code = _complete_reply_code(state[1])
            if code is None:
                continue
            if code != state[2]:
                self.refused += 1
                text = state[1].split(CRLF, 1)[0][:60]
                self._forget(sock)
                failure = failure or "refused with %r" % text
            elif code == b"220" and self.ehlo_cmd is not None:
                state[1], state[2] = b"", b"250"
                sock.send(self.ehlo_cmd)  # a few bytes into an empty send buffer
            else:
                del self.pending[sock]
                self.greeted.add(sock)
        now = time.monotonic()
        late = [s for s, st in self.pending.items() if now - st[0] > self.greet_timeout]
        if late:
            failure = failure or "%d greeting(s) later than %gs" % (
                len(late),
                self.greet_timeout,
            )
        self.peak = max(self.peak, len(self.greeted))
        while len(self.marks) < self.peak // 1000:
            self.marks.append(now)
        return failure

    def ramp(self, target, deadline, alive=lambda: True):
        """Open sessions until ``target`` are greeted, or something fails.

        Returns ``(held, reason)``: ``held`` is the number of greeted sessions
        still open when the ramp stopped, ``reason`` why it stopped.
        """
        reason = "reached %d" % target
        while len(self.greeted) < target:
            if time.monotonic() > deadline:
                reason = "time limit"
                break
            room = min(self.window, target - len(self.greeted)) - len(self.pending)
            try:
                for _ in range(max(room, 0)):
                    self._open_one()
            except ProbeError as exc:
                reason = str(exc)
                break
            except OSError as exc:  # EMFILE and friends: a client-side limit
                reason = "client: %s" % exc
                break
            failure = self._pump(0.5)
            if failure:
                reason = failure
                break
            if not alive():
                reason = "server exited"
                break
        return len(self.greeted), reason

    def settle(self, seconds):
        """Watch the held sessions for a while; returns a failure or None."""
        end = time.monotonic() + seconds
        failure = None
        while time.monotonic() < end:
            failure = self._pump(min(0.2, max(end - time.monotonic(), 0))) or failure
        return failure

    def close(self):
        for sock in list(self.pending) + list(self.greeted):
            self._forget(sock)
        self.sel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
