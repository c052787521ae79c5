"""Helpers for the tests that run servers as subprocesses and talk to them.

Used by test_cli.py, test_debugging_server.py, test_proxy.py and
test_workers.py:

* `ServerProcess` / `running_server`: a server started as a subprocess on a
  free loopback port (picked by binding to port 0, retried when another
  process grabbed it first), its stdout and stderr collected by threads so a
  test can wait for output while the server still runs; always stopped.
* `compat_command`, `cpython311`: how to run ``python -m smtpd_compat`` and
  CPython 3.11's own ``python3.11 -m smtpd``.
* `require_tool`: a Debian tool (swaks, curl, msmtp, smtp-sink), installed
  with apt-get when it is missing and we may (root, apt-get present).
* `SmtpSink`: Postfix's ``smtp-sink`` as a real upstream, with its dump
  files parsed into `SinkMessage` records.
* `StalledUpstream`: accepts TCP connections and never says a word.
* `running_workers`: ``--workers N`` on port 0; the port and the workers'
  pids are read from the supervisor's "serving" line on stderr, and every
  worker it reported is gone when the block ends.
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence

import pytest

import smtpd_compat

# The directory holding the smtpd_compat package the tests import: children
# get it first on PYTHONPATH so they run the very code under test.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(smtpd_compat.__file__)))

START_TIMEOUT = 60.0  # seconds for a server to accept its first connection (CI may be loaded)
STOP_TIMEOUT = 20.0  # seconds for a server to exit after a signal
OUTPUT_TIMEOUT = 20.0  # seconds to wait for expected output

END_OF_MESSAGE = b"------------ END MESSAGE ------------"


# --------------------------------------------------------------------------
# Environments and commands


def child_env(extra: Optional[Dict[str, str]] = None,
              pythonpath: Sequence[str] = (), package: bool = True) -> Dict[str, str]:
    """The environment for a child Python: *pythonpath*, then our package.

    PYTHONUNBUFFERED is removed, so that a test reading a child's stdout
    through a pipe sees only what the child flushed itself.  With
    ``package=False`` (for CPython's own smtpd) the directory holding
    smtpd_compat is not added.
    """
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    env.pop("PYTHONWARNINGS", None)
    paths = list(pythonpath) + ([PACKAGE_PARENT] if package else [])
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def compat_command(*args: str) -> List[str]:
    """``python -m smtpd_compat ARGS`` with this interpreter, warnings as errors."""
    return [sys.executable, "-W", "error", "-m", "smtpd_compat", *args]


def with_default_sigint(argv: Sequence[str]) -> List[str]:
    """Run *argv* with SIGINT at its default disposition.

    A shell that starts a background job without job control makes the job
    ignore SIGINT, and the ignored disposition is inherited across exec, so
    a test run started that way would pass it on to our servers.  This
    wrapper puts SIGINT back to SIG_DFL and then execs the real command.
    """
    code = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", code, *argv]


_cpython311: Optional[str] = None


def cpython311() -> str:
    """Path of a CPython 3.11 whose stdlib still has ``smtpd``; else skip."""
    global _cpython311
    if _cpython311 is None:
        _cpython311 = _find_cpython311() or ""
    if not _cpython311:
        pytest.skip("CPython 3.11 (the reference smtpd) is not available")
    return _cpython311


def _find_cpython311() -> Optional[str]:
    candidates = []
    if sys.version_info[:2] == (3, 11) and sys.implementation.name == "cpython":
        candidates.append(sys.executable)
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            root = subprocess.run([pyenv, "root"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                  timeout=30, check=True).stdout.decode().strip()
        except (OSError, subprocess.SubprocessError):
            root = ""
        versions = os.path.join(root, "versions") if root else ""
        if versions and os.path.isdir(versions):
            for name in sorted(os.listdir(versions), reverse=True):
                if name.startswith("3.11."):
                    candidates.append(os.path.join(versions, name, "bin", "python3.11"))
    found = shutil.which("python3.11")
    if found:
        candidates.append(found)
    for candidate in candidates:
        try:
            subprocess.run([candidate, "-W", "ignore", "-c", "import smtpd"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60, check=True)
        except (OSError, subprocess.SubprocessError):
            continue
        return candidate
    return None


# --------------------------------------------------------------------------
# Ports


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on *host* a moment ago (bound to 0, then closed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def accepts(host: str, port: int) -> bool:
    """True if a TCP connection to (host, port) succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def read_reply(sock: socket.socket) -> bytes:
    """Read one complete (possibly multi-line) SMTP reply from a blocking socket."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and any(re.match(rb"\d{3} ", line) for line in lines[:-1]):
            return data


# --------------------------------------------------------------------------
# Subprocesses


class _Collector:
    """Reads one pipe to its end in a thread, keeping everything it read."""

    def __init__(self, pipe) -> None:
        self.data = b""
        self._pipe = pipe
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                chunk = self._pipe.read1(65536)
                if not chunk:
                    break
                with self._changed:
                    self.data += chunk
                    self._changed.notify_all()
        finally:
            self._pipe.close()
            with self._changed:
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[bytes], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: predicate(self.data) or not self._thread.is_alive(), timeout) \
                and predicate(self.data)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ServerProcess:
    """A subprocess whose stdout and stderr are collected while it runs."""

    def __init__(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None,
                 cwd: Optional[str] = None, pass_fds: Sequence[int] = ()) -> None:
        self.argv = list(argv)
        # A server that hangs can be made to show where (see dump_stacks).
        env = dict(os.environ if env is None else env, PYTHONFAULTHANDLER="1")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, cwd=cwd, pass_fds=pass_fds)
        self._stdout = _Collector(self.proc.stdout)
        self._stderr = _Collector(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> bytes:
        return self._stdout.data

    @property
    def stderr(self) -> bytes:
        return self._stderr.data

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for_stdout(self, text: bytes, count: int = 1,
                        timeout: float = OUTPUT_TIMEOUT) -> bytes:
        """Wait until *text* occurs *count* times in stdout; return all of stdout."""
        if not self._stdout.wait_for(lambda data: data.count(text) >= count, timeout):
            raise AssertionError("%r did not appear %d time(s) on stdout of %s\n"
                                 "stdout: %r\nstderr: %r" % (
                                     text, count, self.argv, self.stdout, self.stderr))
        return self.stdout

    def wait_for_stderr(self, text: bytes, timeout: float = OUTPUT_TIMEOUT) -> bytes:
        if not self._stderr.wait_for(lambda data: text in data, timeout):
            raise AssertionError("%r did not appear on stderr of %s\nstderr: %r" % (
                text, self.argv, self.stderr))
        return self.stderr

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit and its output to be read; return its status."""
        status = self.proc.wait(timeout)
        self._stdout.join(timeout)
        self._stderr.join(timeout)
        return status

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send *signum* (if still running) and wait for the exit status.

        If the process does not exit in time it is killed and AssertionError
        raised: a server that ignores its stop signal is a failure.
        """
        if self.running:
            self.proc.send_signal(signum)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("%s did not exit within %s s of signal %d" % (
                self.argv, timeout, signum)) from None

    def dump_stacks(self) -> None:
        """Make a hung Python server print its threads' stacks on stderr and die."""
        if self.running:
            self.proc.send_signal(signal.SIGABRT)
        try:
            self.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        if self.running:
            self.proc.kill()
        try:
            self.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass


def start_server(command: Callable[[int], Sequence[str]], host: str = "127.0.0.1",
                 env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                 attempts: int = 5):
    """Start ``command(port)`` on a free port; return (process, port) once it accepts.

    The port is found by binding to port 0 and closing; if another process
    takes it before the server binds, the server fails with "address already
    in use" and we try again with a new port.
    """
    last_error = b""
    for _ in range(attempts):
        port = free_port(host)
        server = ServerProcess(command(port), env=env, cwd=cwd)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and server.running:
            if accepts(host, port):
                return server, port
            time.sleep(0.05)
        if server.running:
            server.dump_stacks()
            server.kill()
            raise AssertionError("%s did not accept connections within %s s; stderr: %r"
                                 % (server.argv, START_TIMEOUT, server.stderr))
        server.wait()
        last_error = server.stderr
        if b"in use" not in last_error.lower():
            break
    raise AssertionError("could not start %s: %r" % (command(0), last_error))


@contextlib.contextmanager
def running_server(command: Callable[[int], Sequence[str]], host: str = "127.0.0.1",
                   env: Optional[Dict[str, str]] = None,
                   cwd: Optional[str] = None) -> Iterator:
    """Context manager around `start_server`: the server is killed if still running."""
    server, port = start_server(command, host=host, env=env, cwd=cwd)
    try:
        yield server, port
    finally:
        if server.running:
            server.kill()


# --------------------------------------------------------------------------
# Debian tools


_apt_updated = False


def require_tool(name: str, package: str) -> str:
    """Path of the program *name*; install Debian's *package* if it is missing.

    Installs with apt-get when running as root on a system that has it (as
    on CI); skips the test otherwise or when the installation fails, except
    on CI, where every program the tests use must be there (it fails then).
    """
    found = _which(name)
    if found:
        return found
    apt_get = shutil.which("apt-get")
    if not apt_get or not hasattr(os, "geteuid") or os.geteuid() != 0:
        skip_unless_ci("%s is not installed (Debian package %s; needs root to install)"
                       % (name, package))
    lock_path = os.path.join(tempfile.gettempdir(), "smtpd_compat-tests-apt.lock")
    with open(lock_path, "w") as lock:
        import fcntl
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = _which(name)
            if not found:
                _apt_install(apt_get, package)
                found = _which(name)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not found:
        skip_unless_ci("could not install %s (Debian package %s)" % (name, package))
    return found


def skip_unless_ci(reason: str) -> None:
    """Skip the test for *reason*; on CI (``CI`` set) fail it: CI must run everything."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail("CI must run this test, but " + reason)
    pytest.skip(reason)


def _which(name: str) -> Optional[str]:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)


def _apt_install(apt_get: str, package: str) -> None:
    global _apt_updated
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE,
             "stderr": subprocess.STDOUT, "env": env, "timeout": 900}
    try:
        if package == "postfix" and shutil.which("debconf-set-selections"):
            subprocess.run(["debconf-set-selections"], input=(
                b"postfix postfix/main_mailer_type select No configuration\n"
                b"postfix postfix/mailname string localhost\n"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                timeout=60)
        if not _apt_updated:
            subprocess.run([apt_get, "update"], **quiet)
            _apt_updated = True
        subprocess.run([apt_get, "install", "-y", "--no-install-recommends", package],
                       **quiet)
    except (OSError, subprocess.SubprocessError):
        pass


# --------------------------------------------------------------------------
# Postfix's smtp-sink as an upstream


class SinkMessage(NamedTuple):
    """One mail transaction as smtp-sink dumped it."""

    helo: str
    mail_args: str  # the MAIL FROM arguments, e.g. '<a@example.com> BODY=8BITMIME'
    rcpt_args: List[str]  # one entry per accepted RCPT TO, e.g. '<b@example.com>'
    data: bytes  # the message as received, dot-stuffing undone, LF line ends


class SmtpSink:
    """``smtp-sink`` on a free loopback port, dumping each transaction to a file.

    *options* are extra smtp-sink options, e.g. ``["-f", "RCPT"]`` to refuse
    every recipient with a 5xx.  Use as a context manager.
    """

    def __init__(self, options: Sequence[str] = ()) -> None:
        self.binary = require_tool("smtp-sink", "postfix")
        self.options = list(options)
        self.server: Optional[ServerProcess] = None
        self.port = 0
        self.host = "127.0.0.1"
        self._dump_dir = ""

    def __enter__(self) -> "SmtpSink":
        # smtp-sink writes its dumps after dropping root privileges (-u), so
        # the directory must be writable by that user: not under pytest's
        # private tmp_path.
        self._dump_dir = tempfile.mkdtemp(prefix="smtpd_compat-sink-")
        os.chmod(self._dump_dir, 0o1777)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []

        def command(port: int) -> List[str]:
            return [self.binary, *user, "-d", os.path.join(self._dump_dir, "%H%M%S."),
                    *self.options, "%s:%d" % (self.host, port), "64"]

        try:
            self.server, self.port = start_server(command, host=self.host)
        except BaseException:
            shutil.rmtree(self._dump_dir, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self.server is not None:
                self.server.stop()  # smtp-sink exits on SIGTERM with status 143
        finally:
            shutil.rmtree(self._dump_dir, ignore_errors=True)

    @property
    def address(self):
        return (self.host, self.port)

    def messages(self) -> List[SinkMessage]:
        """Every complete transaction dumped so far, oldest first.

        smtp-sink opens a dump when a transaction starts and removes it when
        the transaction is abandoned; a dump still without its message is
        left out.
        """
        found = []
        for name in os.listdir(self._dump_dir):
            path = os.path.join(self._dump_dir, name)
            try:
                with open(path, "rb") as dump:
                    found.append((os.fstat(dump.fileno()).st_mtime_ns, name, dump.read()))
            except FileNotFoundError:  # removed meanwhile
                continue
        parsed = [_parse_dump(content) for _, _, content in sorted(found)]
        return [message for message in parsed if message is not None]

    def wait_for_messages(self, count: int,
                          timeout: float = OUTPUT_TIMEOUT) -> List[SinkMessage]:
        """Wait until *count* complete transactions were dumped; return them."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.messages()
            if len(messages) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(messages) >= count, "smtp-sink got %d message(s), expected %d" % (
            len(messages), count)
        return messages


def _parse_dump(content: bytes) -> Optional[SinkMessage]:
    """Parse one smtp-sink ``-d`` dump (format in smtp-sink(1), DUMP FILE FORMAT).

    Returns None for a dump that does not hold a whole message (yet).
    """
    lines = content.split(b"\n")
    fields: Dict[str, List[str]] = {}
    index = 0
    while index < len(lines) and lines[index].startswith(b"X-"):
        name, _, value = lines[index].decode("utf-8", "replace").partition(": ")
        fields.setdefault(name, []).append(value)
        index += 1
    if index >= len(lines) or not lines[index].startswith(b"Received: "):
        return None
    index += 1
    while index < len(lines) and lines[index][:1] in (b"\t", b" "):
        index += 1
    body = b"\n".join(lines[index:])
    # The dump ends with one empty line after the message's own last line.
    if not body.endswith(b"\n\n"):
        return None
    return SinkMessage(helo=fields.get("X-Helo-Args", [""])[0],
                       mail_args=fields.get("X-Mail-Args", [""])[0],
                       rcpt_args=fields.get("X-Rcpt-Args", []),
                       data=body[:-1])


# --------------------------------------------------------------------------
# An upstream that accepts connections and never answers


class StalledUpstream:
    """Listens on 127.0.0.1, accepts connections and never sends a byte.

    ``connected`` is set when the first connection arrives and
    ``peer_closed`` when the client on that connection gives up (EOF or a
    reset): the moment a relay to this upstream is over.
    """

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.address = self._listener.getsockname()
        self.connected = threading.Event()
        self.peer_closed = threading.Event()
        self.connections: List[socket.socket] = []
        self._closing = False
        self._threads: List[threading.Thread] = []
        self._spawn(self._accept_loop)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            first = not self.connected.is_set()
            self.connected.set()
            if first:
                self._spawn(self._watch, conn)

    def _watch(self, conn: socket.socket) -> None:
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        if not self._closing:
            self.peer_closed.set()

    def close(self) -> None:
        self._closing = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> "StalledUpstream":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# --------------------------------------------------------------------------
# --workers: a supervisor that reports its port and its workers


# "smtpd_compat: serving 127.0.0.1:4242 with 2 workers, pids 11 12 (SO_REUSEPORT)"
SERVING_LINE = re.compile(rb"serving (\S+):(\d+) with (\d+) workers, pids ([\d ]+) \(")
# "smtpd_compat: worker 1 (pid 13) is serving again"
RESTARTED_LINE = re.compile(rb"worker (\d+) \(pid (\d+)\) is serving again")


class Workers(NamedTuple):
    """A running ``--workers`` supervisor, its port and its first workers' pids."""

    server: "ServerProcess"
    port: int
    pids: List[int]

    def restarted(self) -> List[int]:
        """The pids of the workers started again since, in order."""
        return [int(match.group(2)) for match in RESTARTED_LINE.finditer(self.server.stderr)]


def start_workers(argv: Sequence[str], env: Optional[Dict[str, str]] = None,
                  cwd: Optional[str] = None, pass_fds: Sequence[int] = (),
                  timeout: float = START_TIMEOUT) -> Workers:
    """Start *argv* (a ``--workers`` command on port 0) and wait for its serving line."""
    server = ServerProcess(argv, env=env, cwd=cwd, pass_fds=pass_fds)
    if not server._stderr.wait_for(lambda data: SERVING_LINE.search(data) is not None,
                                   timeout):
        status = server.proc.poll()
        if server.running:
            server.dump_stacks()
        kill_workers(server)
        raise AssertionError("%s did not report serving (status %s); stderr: %r"
                             % (argv, status, server.stderr))
    match = SERVING_LINE.search(server.stderr)
    return Workers(server, int(match.group(2)), [int(pid) for pid in match.group(4).split()])


@contextlib.contextmanager
def running_workers(argv: Sequence[str], env: Optional[Dict[str, str]] = None,
                    cwd: Optional[str] = None,
                    pass_fds: Sequence[int] = ()) -> Iterator[Workers]:
    """Context manager around `start_workers`: afterwards no process of it is left."""
    workers = start_workers(argv, env=env, cwd=cwd, pass_fds=pass_fds)
    try:
        yield workers
    finally:
        kill_workers(workers.server)


def kill_workers(server: "ServerProcess") -> None:
    """Kill the supervisor if still running, then any worker it reported."""
    server.kill()
    pids = [int(pid) for match in SERVING_LINE.finditer(server.stderr)
            for pid in match.group(4).split()]
    pids += [int(match.group(2)) for match in RESTARTED_LINE.finditer(server.stderr)]
    for pid in pids:
        if not process_gone(pid) and _is_python(pid):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT
    while not all(process_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    """True if *pid* has exited (a zombie nobody reaped counts as exited)."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def _is_python(pid: int) -> bool:
    """The pid still runs a Python (not an unrelated process that reused it)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            return b"python" in cmdline.read()
    except OSError:
        return True


def listening_inodes(pid: int) -> List[int]:
    """Inodes of the listening TCP sockets process *pid* holds (Linux /proc)."""
    held = set()
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(int(target[8:-1]))
    listening = set()
    for table in ("/proc/%d/net/tcp" % pid, "/proc/%d/net/tcp6" % pid):
        try:
            with open(table) as entries:
                next(entries)
                for line in entries:
                    fields = line.split()
                    if fields[3] == "0A":  # TCP_LISTEN
                        listening.add(int(fields[9]))
        except FileNotFoundError:
            continue
    return sorted(held & listening)
