"""Shared helpers for the robustness tests (test_robustness_*.py).

* ``SinkServer``: an ``smtpd_compat.SMTPServer`` that keeps nothing in memory
  and appends one JSON line per ``process_message`` call to a journal file,
  so a test can tell exactly which messages were handed over.  It is meant to
  run in the real CLI (``python -m smtpd_compat -c robust_support.SinkServer``)
  and is configured through ``ROBUST_*`` environment variables.
* ``CliServer``: that CLI in a subprocess on an OS-chosen loopback port,
  always stopped (SIGTERM, then SIGKILL) when the ``with`` block ends.
* Servers in a thread of the test process (for tests that look at
  ``process_message`` arguments or at logging directly) run in
  ``smtpd_compat.testing.Controller``.
* ``Client``: a raw-socket SMTP client that sees every reply byte.
* ``rss_kib`` / ``peak_rss_kib``: memory of a process from /proc.
"""

import concurrent.futures
import contextlib
import hashlib
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import smtpd_compat

HOST = "127.0.0.1"
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(smtpd_compat.__file__)))

# One reply line as RFC 5321 section 4.2 defines it: three digits, then a
# space (last line) or a hyphen (more lines follow), text, CRLF.
REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]*\r\n\Z")

# Header the tests put into each message so the journal can name it.
ID_HEADER = b"X-Robust-Id: "
# Headers that make the sink misbehave on purpose.
RAISE_HEADER = b"X-Robust-Raise: yes"
DEFER_HEADER = b"X-Robust-Defer: "


# How the idle timeout's 421 ends (the host name comes before it).
TIMEOUT_TAIL = b"Error: timeout exceeded, closing connection\r\n"


def figure(name, value):
    """Print a figure a robustness test establishes (shown with ``pytest -s``/-rA)."""
    print("ROBUSTNESS FIGURE %s: %s" % (name, value))


# -- the sink ----------------------------------------------------------------


class InjectedFault(Exception):
    """What the sink raises when told to fail; the server must answer 451."""


class SinkChannel(smtpd_compat.SMTPChannel):
    """A channel with one extra command whose handler always raises."""

    def smtp_XBOOM(self, arg):
        raise InjectedFault("smtp_XBOOM raised on purpose")


class SinkServer(smtpd_compat.SMTPServer):
    """Journal every message; optionally fail or answer late.

    Environment (all optional):
    ``ROBUST_JOURNAL``    file to append JSON lines to (one per call)
    ``ROBUST_PORT_FILE``  file to write the listening port into once bound
    ``ROBUST_FAIL_RATE``  probability (0..1) that process_message raises
    ``ROBUST_SEED``       seed for those random failures
    ``ROBUST_DECODE_DATA``  "1" to run with decode_data=True
    ``ROBUST_NO_MARKERS`` "1" to ignore the X-Robust-Raise/Defer headers
    ``ROBUST_REPLY``      the reply to a delivered message instead of "250 OK"

    A message holding ``X-Robust-Raise: yes`` makes process_message raise; one
    holding ``X-Robust-Defer: <seconds>`` gets its reply from a Future that a
    timer completes that much later (the journal entry is written when the
    call is made, the reply is still 250).
    """

    channel_class = SinkChannel

    def __init__(self, localaddr, remoteaddr, data_size_limit=smtpd_compat.DATA_SIZE_DEFAULT,
                 map=None, enable_SMTPUTF8=False, decode_data=False):
        env = os.environ
        decode_data = decode_data or env.get("ROBUST_DECODE_DATA") == "1"
        super().__init__(localaddr, remoteaddr, data_size_limit, map=map,
                         enable_SMTPUTF8=enable_SMTPUTF8, decode_data=decode_data)
        self._fail_rate = float(env.get("ROBUST_FAIL_RATE", "0"))
        self._random = random.Random(env.get("ROBUST_SEED", "0"))
        self._markers = env.get("ROBUST_NO_MARKERS") != "1"
        self._reply = env.get("ROBUST_REPLY")
        journal = env.get("ROBUST_JOURNAL")
        self._journal = open(journal, "a", encoding="utf-8") if journal else None
        port_file = env.get("ROBUST_PORT_FILE")
        if port_file:
            temporary = port_file + ".tmp"
            with open(temporary, "w") as f:
                f.write(str(self.socket.getsockname()[1]))
            os.replace(temporary, port_file)

    def _record(self, event, mailfrom, rcpttos, data, kwargs):
        if self._journal is None:
            return
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        entry = {
            "event": event,
            "id": message_id(raw),
            "mailfrom": mailfrom,
            "rcpttos": list(rcpttos),
            "mail_options": kwargs.get("mail_options"),
            "rcpt_options": kwargs.get("rcpt_options"),
            "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
        self._journal.write(json.dumps(entry) + "\n")
        self._journal.flush()

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        if (self._markers and RAISE_HEADER in raw) or (
                self._fail_rate and self._random.random() < self._fail_rate):
            self._record("raised", mailfrom, rcpttos, data, kwargs)
            raise InjectedFault("process_message raised on purpose")
        self._record("accepted", mailfrom, rcpttos, data, kwargs)
        if self._markers and DEFER_HEADER in raw:
            delay = float(raw.split(DEFER_HEADER, 1)[1].split(b"\n", 1)[0])
            future = concurrent.futures.Future()
            timer = threading.Timer(delay, future.set_result, (None,))
            timer.daemon = True
            timer.start()
            return future
        return self._reply

    def close(self):
        super().close()
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def message_id(raw):
    """The X-Robust-Id of a message (bytes), or None."""
    start = raw.find(ID_HEADER)
    if start < 0:
        return None
    start += len(ID_HEADER)
    end = raw.find(b"\n", start)
    return raw[start:end if end >= 0 else None].decode("ascii", "replace").strip()


def read_journal(path):
    """The journal's entries, oldest first ([] if nothing was written)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- messages on the wire ------------------------------------------------------


def message_lines(ident, body_lines=(), extra_headers=()):
    """The lines (bytes, no line ends) of a test message with an id header."""
    lines = [b"From: robust@example.com", b"To: sink@example.com",
             ID_HEADER + ident.encode("ascii")]
    lines.extend(extra_headers)
    lines.append(b"")
    lines.extend(body_lines)
    return lines


def wire_data(lines):
    """DATA payload for *lines*: dot-stuffed, CRLF, ended by CRLF "." CRLF."""
    out = []
    for line in lines:
        out.append((b"." + line if line.startswith(b".") else line) + b"\r\n")
    out.append(b".\r\n")
    return b"".join(out)


def delivered_data(lines):
    """What process_message receives for *lines*: LF joined, no final LF."""
    return b"\n".join(lines)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# -- a raw client ---------------------------------------------------------------


class ServerClosed(Exception):
    """The server closed the connection before a whole reply arrived.

    ``partial`` holds the bytes of an unfinished line (b'' if none).  The
    message is text, so that formatting it never calls str() on bytes (an
    error under ``python -bb``, which would hide the real failure).
    """

    def __init__(self, partial):
        super().__init__("server closed the connection; unfinished line: %r" % (partial,))
        self.partial = partial


class Client:
    """A blocking SMTP client on a raw socket, for exact bytes both ways."""

    def __init__(self, port, timeout=10.0, host=HOST, read_greeting=True, buffer_size=None):
        if buffer_size is None:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        else:
            # Small kernel buffers (set before connecting, so the window
            # stays small): a client that stops reading stalls sooner.
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect((host, port))
            except BaseException:
                self.sock.close()
                raise
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.lines = []  # every reply line received, with its CRLF
        self.greeting = self.reply() if read_greeting else None

    def close(self):
        self.sock.close()

    def abort(self):
        """Close with a TCP reset, like a client that crashed."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def line(self):
        """One reply line with its CRLF; raises ServerClosed on EOF."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ServerClosed(self._buffer)
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        line += b"\n"
        self.lines.append(line)
        return line

    def reply(self):
        """One whole (possibly multi-line) reply as a list of lines."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return lines

    def code(self):
        """The code of the next whole reply, as an int."""
        return int(self.reply()[-1][:3])

    def cmd(self, line):
        """Send one command line (CRLF added); return its reply's last line (bytes)."""
        self.send((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\r\n")
        return self.reply()[-1]

    def at_eof(self, timeout=10.0):
        """True if the server closes the connection (after any pending lines)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self._buffer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True

    def transaction(self, ident, body_lines=(), extra_headers=(), sender="a@example.com",
                    recipient="b@example.com"):
        """MAIL, RCPT, DATA of one message; return (final reply line, its lines)."""
        lines = message_lines(ident, body_lines, extra_headers)
        assert self.cmd("MAIL FROM:<%s>" % sender).startswith(b"250"), self.lines
        assert self.cmd("RCPT TO:<%s>" % recipient).startswith(b"250"), self.lines
        assert self.cmd("DATA").startswith(b"354"), self.lines
        self.send(wire_data(lines))
        return self.reply()[-1], lines


def replies_until_close(client, timeout=15.0):
    """Every reply line the server still sends *client* before it closes."""
    client.sock.settimeout(timeout)
    try:
        while True:
            client.line()
    except ServerClosed as e:
        assert not e.partial, e
    except ConnectionResetError:
        pass
    return client.lines


def check_reply_lines(lines):
    """Assert every line is a well-formed SMTP reply line."""
    for line in lines:
        assert REPLY_LINE.match(line), "malformed reply line %r" % (line,)


def normal_transaction(port, ident):
    """On a fresh connection: EHLO, one message, QUIT; return the message's data."""
    with Client(port) as client:
        assert client.greeting[-1].startswith(b"220 "), client.greeting
        assert client.cmd("EHLO robust.example").startswith(b"250 "), client.lines
        final, lines = client.transaction(ident, [b"a normal message", b".dot line"])
        assert final.startswith(b"250 "), client.lines
        assert client.cmd("QUIT") == b"221 Bye\r\n"
        check_reply_lines(client.lines)
    return delivered_data(lines)


# -- servers ------------------------------------------------------------------


def raise_nofile_limit(wanted):
    """Raise this process's RLIMIT_NOFILE soft limit to *wanted* (capped by the hard one).

    Returns the previous (soft, hard) pair so the caller can restore it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, hard


def nofile_limit():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class CliServer:
    """``python -m smtpd_compat -n -c robust_support.SinkServer ... 127.0.0.1:0``.

    Use as a context manager: the server is stopped (SIGTERM, then SIGKILL)
    when the block ends.  ``stop()`` returns the exit status.
    """

    def __init__(self, workdir, *cli_args, env=None, nofile=None, server_class=None):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.journal = os.path.join(self.workdir, "journal.jsonl")
        self.port_file = os.path.join(self.workdir, "port")
        self.stdout_path = os.path.join(self.workdir, "stdout.txt")
        self.stderr_path = os.path.join(self.workdir, "stderr.txt")
        for path in (self.port_file, self.journal):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        self.args = [sys.executable, "-bb", "-W", "error", "-m", "smtpd_compat", "-n",
                     "-c", server_class or "robust_support.SinkServer",
                     *cli_args, HOST + ":0"]
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [TESTS_DIR, PACKAGE_PARENT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.env.update({"ROBUST_JOURNAL": self.journal, "ROBUST_PORT_FILE": self.port_file,
                         "PYTHONUNBUFFERED": "1"})
        self.env.update(env or {})
        self.nofile = nofile
        self.proc = None
        self.port = None
        self.returncode = None

    def _limit_files(self):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, hard))

    def start(self, timeout=20.0):
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.args, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err,
                preexec_fn=self._limit_files if self.nofile else None)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start: %s" % self.stderr())
            time.sleep(0.02)
        with open(self.port_file) as f:
            self.port = int(f.read())
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=30.0):
        """SIGTERM and wait; SIGKILL if it does not exit.  Returns the exit status."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def entries(self):
        return read_journal(self.journal)

    def journal_length(self):
        """How many process_message calls the journal holds."""
        if not os.path.exists(self.journal):
            return 0
        with open(self.journal, "rb") as f:
            return f.read().count(b"\n")

    def stdout(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def assert_healthy(self):
        """The process runs and has reported no error.

        Handler failures are logged with a traceback on stderr; asyncore's own
        handle_error (a channel closed on an unexpected exception) prints
        "uncaptured python exception" on stdout.
        """
        assert self.alive(), "server died: %s" % self.stderr()
        assert "Traceback" not in self.stderr(), self.stderr()
        assert "uncaptured python exception" not in self.stdout(), self.stdout()

    def rss_kib(self):
        return rss_kib(self.pid)

    def peak_rss_kib(self):
        return peak_rss_kib(self.pid)


def _proc_status(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def rss_kib(pid):
    """Resident set size of process *pid* now, in KiB."""
    return _proc_status(pid, "VmRSS")


def peak_rss_kib(pid):
    """Highest resident set size process *pid* has had, in KiB."""
    return _proc_status(pid, "VmHWM")




class _DigestSink:
    """A streamed message's sink: only its size and SHA-256 are kept."""

    def __init__(self, server, mailfrom, rcpttos):
        self._server = server
        self._envelope = (mailfrom, rcpttos)
        self._sha256 = hashlib.sha256()
        self._size = 0

    def write(self, data):
        self._sha256.update(data)
        self._size += len(data)

    def _entry(self, event, **extra):
        entry = {"event": event, "mailfrom": self._envelope[0],
                 "rcpttos": self._envelope[1], "size": self._size,
                 "sha256": self._sha256.hexdigest()}
        entry.update(extra)
        self._server._write_entry(entry)

    def end(self):
        self._entry("streamed")

    def abort(self, reason):
        self._entry("aborted", reason=reason)


class StreamingSinkServer(SinkServer):
    """A SinkServer that takes every message streamed (``begin_message``).

    Journals one entry per message: ``streamed`` (with the size and SHA-256
    of the unstuffed data) or ``aborted`` (with the reason).
    """

    def begin_message(self, peer, mailfrom, rcpttos, **kwargs):
        return _DigestSink(self, mailfrom, list(rcpttos))

    def _write_entry(self, entry):
        if self._journal is not None:
            self._journal.write(json.dumps(entry) + "\n")
            self._journal.flush()
