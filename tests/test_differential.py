"""Byte-for-byte differential test: CPython 3.11's smtpd against smtpd_compat.

Every dialogue of ``dialogues.py`` is played over a real loopback socket
against two servers started as subprocesses with the same sink class:
the reference, ``smtpd`` under CPython 3.11, and the candidate,
``smtpd_compat`` under the running interpreter. The two transcripts (the
bytes sent and the exact bytes received after each step, then everything up
to the server's close) must be identical.

Dialogues marked ``expected_difference`` hit a CPython defect that
smtpd_compat fixes on purpose; for them only smtpd_compat runs and its reply
codes are checked.

Set ``SMTPD_COMPAT_DIFF_CANDIDATE=smtpd`` to compare stdlib smtpd with itself
(a check of the harness and the corpus).
"""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

try:
    from . import dialogues  # tests/ is a package
except ImportError:
    import dialogues  # tests/ is on sys.path (pytest's rootdir-less import)

CANDIDATE = os.environ.get("SMTPD_COMPAT_DIFF_CANDIDATE", "smtpd_compat")

# Generous bound for one reply on loopback; only a hang ever waits this long.
REPLY_TIMEOUT = 10.0
START_TIMEOUT = 60.0

SINK_MODULE = "smtpd_diff_sink"
SINK = textwrap.dedent(
    '''
    """Sink SMTP server for the differential test.

    Run as a script: serve on 127.0.0.1:0 with the SMTPServer keyword
    arguments given as JSON in argv[1]. Or name ``smtpd_diff_sink.Sink`` with
    ``-c`` on the command line of ``python -m smtpd``. Either way the server
    writes its port to $SMTPD_DIFF_PORT_FILE once it listens.
    """
    import hashlib
    import importlib
    import json
    import os
    import sys
    import warnings

    with warnings.catch_warnings():
        # smtpd and asyncore warn on import on 3.6 to 3.11.
        warnings.simplefilter("ignore", DeprecationWarning)
        smtpd = importlib.import_module(os.environ["SMTPD_DIFF_MODULE"])
        import asyncore


    class Sink(smtpd.SMTPServer):
        def __init__(self, *args, **kwargs):
            smtpd.SMTPServer.__init__(self, *args, **kwargs)
            port_file = os.environ["SMTPD_DIFF_PORT_FILE"]
            with open(port_file + ".tmp", "w") as f:
                f.write(str(self.socket.getsockname()[1]))
            os.replace(port_file + ".tmp", port_file)

        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            if mailfrom.startswith("plain"):
                return None
            shown = ascii((mailfrom, rcpttos, data, sorted(kwargs.items())))
            if len(shown) > 400:
                digest = hashlib.sha256(shown.encode("ascii")).hexdigest()
                shown = "%s...%s sha256=%s" % (shown[:100], shown[-40:], digest)
            return "250 OK " + shown


    if __name__ == "__main__":
        Sink(("127.0.0.1", 0), None, **json.loads(sys.argv[1]))
        loop = getattr(smtpd, "loop", None) or asyncore.loop
        loop()
    '''
)


def _free_port():
    # Only for the command line, which needs a port number up front.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _module_path_entry(name):
    """The sys.path entry from which this process would import `name`."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        return None
    pkg_dir = os.path.dirname(spec.origin)
    return os.path.dirname(pkg_dir) if spec.submodule_search_locations else pkg_dir


class Servers:
    """Server subprocesses, started on first use, keyed by (side, config)."""

    def __init__(self, reference_python, candidate_python, workdir):
        self.pythons = {"reference": reference_python, "candidate": candidate_python}
        self.modules = {"reference": "smtpd", "candidate": CANDIDATE}
        self.workdir = workdir
        self.sink = os.path.join(workdir, SINK_MODULE + ".py")
        with open(self.sink, "w") as f:
            f.write(SINK)
        self.procs = {}
        self.ports = {}
        self.logs = {}

    def port(self, side, config):
        key = (side, config)
        if key not in self.ports:
            self.ports[key] = self._start(side, config)
        return self.ports[key]

    def log(self, side, config):
        path = self.logs.get((side, config))
        if not path or not os.path.exists(path):
            return ""
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _start(self, side, config):
        name = "%s-%s" % (side, config)
        port_file = os.path.join(self.workdir, name + ".port")
        log_path = os.path.join(self.workdir, name + ".log")
        self.logs[(side, config)] = log_path
        module = self.modules[side]
        env = dict(os.environ)
        path = [self.workdir]
        if side == "candidate" and module != "smtpd":
            entry = _module_path_entry(module)
            if entry:
                path.append(entry)
        env["PYTHONPATH"] = os.pathsep.join(path)
        env["SMTPD_DIFF_MODULE"] = module
        # asyncore reports errors with print(); get them into the log at once.
        env["PYTHONUNBUFFERED"] = "1"
        env["SMTPD_DIFF_PORT_FILE"] = port_file
        # smtpd_compat runs with bytes/str mixing and warnings as errors.
        cmd = [self.pythons[side], "-bb"]
        if module != "smtpd":
            cmd += ["-W", "error"]
        settings = dialogues.CONFIGS[config]
        if "argv" in settings:
            # Through the command line: python -m smtpd -n -c Sink ... host:port
            cmd += ["-m", module, "-n", "-c", SINK_MODULE + ".Sink"]
            cmd += settings["argv"] + ["127.0.0.1:%d" % _free_port()]
        else:
            cmd += [self.sink, json.dumps(settings)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env,
                                    cwd=self.workdir)
        self.procs[(side, config)] = proc
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(port_file):
            if proc.poll() is not None:
                raise RuntimeError("%s server exited (%s):\n%s"
                                   % (name, proc.returncode, self.log(side, config)))
            if time.monotonic() > deadline:
                raise RuntimeError("%s server did not start" % name)
            time.sleep(0.02)
        with open(port_file) as f:
            return int(f.read())

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _find_reference_python():
    exe = dialogues.find_cpython(11)
    if exe is None:
        message = "CPython 3.11 (with its stdlib smtpd) was not found"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


@pytest.fixture(scope="module")
def servers():
    reference = _find_reference_python()
    candidate = reference if CANDIDATE == "smtpd" else sys.executable
    with tempfile.TemporaryDirectory(prefix="smtpd-diff-") as workdir:
        srv = Servers(reference, candidate, workdir)
        try:
            yield srv
        finally:
            srv.stop()


# --------------------------------------------------------------------------
# The client side

_FINAL_LINE = re.compile(rb"^(?:\d{3}(?: .*)?|(?!\d{3}-).*)$", re.S)


def _end_of_replies(buf, n):
    """Return the offset just past the `n`-th complete reply in `buf`, or None."""
    pos = 0
    while n:
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            return None
        if _FINAL_LINE.match(buf[pos:nl]):
            n -= 1
        pos = nl + 2
    return pos


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
        self.buf = b""
        self.closed = False

    def _recv(self):
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
        self.buf += chunk
        return chunk

    def read_replies(self, n):
        """Return the bytes of the next `n` replies.

        Ends early with a ``<EOF>`` marker when the server closes, or with
        ``<TIMEOUT>`` when it stays silent for REPLY_TIMEOUT seconds.
        """
        while True:
            end = _end_of_replies(self.buf, n)
            if end is not None:
                # Take exactly n replies; anything after stays for later.
                out, self.buf = self.buf[:end], self.buf[end:]
                return out
            if self.closed:
                return self._drain(b"<EOF>")
            if self._recv() is None:
                return self._drain(b"<TIMEOUT>")

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            # The server has closed; what it said is read by finish().
            self.closed = True

    def finish(self):
        """Half-close and read everything up to the server's close."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        while not self.closed:
            if self._recv() is None:
                return self._drain(b"<TIMEOUT>")
        return self._drain(b"<EOF>")

    def _drain(self, marker):
        out, self.buf = self.buf + marker, b""
        return out

    def close(self):
        self.sock.close()


MARKERS = (b"<EOF>", b"<TIMEOUT>")


def play(port, dialogue):
    """Run `dialogue` against the server on `port`; return the transcript.

    The transcript alternates ("C", bytes sent) and ("S", bytes received);
    its last entry ends with ``<EOF>`` or ``<TIMEOUT>``.
    """
    transcript = []
    client = Client(port)
    try:
        transcript.append(("S", client.read_replies(1)))
        for step in dialogue.steps:
            if transcript[-1][1].endswith(MARKERS) or client.closed:
                break
            transcript.append(("C", step.send))
            client.send(step.send)
            if step.replies:
                transcript.append(("S", client.read_replies(step.replies)))
        if not transcript[-1][1].endswith(MARKERS):
            transcript.append(("S", client.finish()))
    finally:
        client.close()
    return transcript


def render(transcript):
    return ["%s: %r" % (who, data) for who, data in transcript]


def reply_codes(transcript):
    """Flatten a transcript's replies into codes, with EOF/TIMEOUT markers."""
    codes = []
    for who, data in transcript:
        if who != "S":
            continue
        marker = None
        for m in MARKERS:
            if data.endswith(m):
                data, marker = data[: -len(m)], m
        for line in data.split(b"\r\n"):
            if line and _FINAL_LINE.match(line):
                codes.append(line[:3].decode("ascii", "replace"))
        if marker is not None:
            codes.append(marker.strip(b"<>").decode())
    return codes


def _codes_match(expected, actual):
    if len(expected) != len(actual):
        return False
    return all(
        len(e) == len(a) and all(x in ("x", y) for x, y in zip(e, a))
        for e, a in zip(expected, actual)
    )


# --------------------------------------------------------------------------
# The tests


def test_corpus_covers_every_configuration():
    used = {d.config for d in dialogues.DIALOGUES}
    assert used == set(dialogues.CONFIGS)


@pytest.mark.parametrize(
    "dialogue", dialogues.DIALOGUES, ids=[d.id for d in dialogues.DIALOGUES]
)
def test_dialogue(servers, dialogue):
    if dialogue.expected_difference:
        if CANDIDATE == "smtpd":
            pytest.skip("self-check of the harness: this dialogue hits a defect")
        got, log = _play_and_log(servers, "candidate", dialogue)
        codes = reply_codes(got)
        expected = dialogue.compat_codes.split()
        assert _codes_match(expected, codes), (
            "%s\nexpected codes %s, got %s\n%s\nserver log:\n%s"
            % (dialogue.expected_difference, expected, codes,
               "\n".join(render(got)), log)
        )
        if dialogue.compat_contains is not None:
            received = b"".join(data for who, data in got if who == "S")
            assert dialogue.compat_contains in received, render(got)
        assert not _server_errors(log), log
        return
    reference, reference_log = _play_and_log(servers, "reference", dialogue)
    # A corpus entry must not rely on a reference hang or crash.
    assert not reference[-1][1].endswith(b"<TIMEOUT>"), render(reference)
    assert not _server_errors(reference_log), reference_log
    candidate, candidate_log = _play_and_log(servers, "candidate", dialogue)
    assert render(candidate) == render(reference), candidate_log
    # Same bytes on the wire, and no exception swallowed on the way.
    assert not _server_errors(candidate_log), candidate_log


def _play_and_log(servers, side, dialogue):
    """Play `dialogue` on one server; return the transcript and its new log."""
    port = servers.port(side, dialogue.config)
    before = len(servers.log(side, dialogue.config))
    transcript = play(port, dialogue)
    return transcript, servers.log(side, dialogue.config)[before:]


def _server_errors(log):
    return "Traceback" in log or "uncaptured python exception" in log
