"""Several processes serving one address, and listening sockets from systemd.

A supervisor owns the listening side and forks the workers.  Each worker
builds its server around a socket it is handed (``_server.adopting``) and
then runs exactly what a single process runs: the CLI's loop and its clean
shutdown.  The supervisor restarts a worker that dies, with a back-off so
that a crash loop does not spin, and on SIGTERM or SIGINT it stops them all.

Where the kernel balances connections over sockets bound with SO_REUSEPORT
(Linux), every worker gets a listening socket of its own.  The supervisor
keeps one more socket bound to the port but not listening (it gets no
connections): the port, also one the OS picked for port 0, stays taken
while workers come and go.  Elsewhere (the BSDs and macOS take the option
but send every connection to one socket), and for a socket that systemd
passed, the workers share one listening socket.

Nothing here knows about command line options: the caller hands in a
function that makes the server and one that serves it.
"""

import os
import re
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Callable, Dict, List, Mapping, MutableMapping, Optional, Tuple

from ._asyncore import asyncore
from ._loop import tracks_interest
from ._server import _dual_stack_socket, adopting

# sd_listen_fds(3): the first descriptor systemd passes, and its variables.
SD_LISTEN_FDS_START = 3
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

RESTART_DELAY = 0.1  # seconds before a dead worker is started again
RESTART_DELAY_MAX = 10.0  # the longest wait of a worker that keeps dying
STABLE_AFTER = 10.0  # a worker that lived this long starts its back-off afresh

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# No SIGCHLD (nor fork) on Windows, where --workers is refused.
_HANDLED_SIGNALS = _STOP_SIGNALS + tuple(
    getattr(signal, name) for name in ("SIGCHLD",) if hasattr(signal, name))

Report = Callable[[str], None]


# --------------------------------------------------------------------------
# systemd socket activation


def parse_listen_fds(environ: Mapping[str, str], pid: int) -> List[Tuple[int, str]]:
    """The descriptors systemd passed to process *pid*, with their names.

    Reads ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` as
    sd_listen_fds(3) does: nothing (an empty list) unless ``LISTEN_PID`` is
    *pid*, which keeps a child from taking its parent's descriptors; the
    descriptors are numbered from 3; without ``LISTEN_FDNAMES`` each is
    named "unknown".  Raises ValueError for values systemd rejects too.
    """
    listen_pid = environ.get("LISTEN_PID")
    if listen_pid is None:
        return []
    if not _is_decimal(listen_pid):
        raise ValueError("LISTEN_PID=%r is not a process id" % listen_pid)
    if int(listen_pid) != pid:
        return []
    count_text = environ.get("LISTEN_FDS")
    if count_text is None:
        return []
    if not _is_decimal(count_text) or int(count_text) < 1:
        raise ValueError("LISTEN_FDS=%r is not a positive number" % count_text)
    count = int(count_text)
    names_text = environ.get("LISTEN_FDNAMES")
    names = ["unknown"] * count if names_text is None else names_text.split(":")
    if len(names) != count:
        raise ValueError("LISTEN_FDNAMES=%r names %d descriptors, LISTEN_FDS=%d"
                         % (names_text, len(names), count))
    return [(SD_LISTEN_FDS_START + index, name) for index, name in enumerate(names)]


def _is_decimal(text: str) -> bool:
    return re.fullmatch(r"[0-9]{1,18}", text) is not None


def systemd_sockets(environ: Optional[MutableMapping[str, str]] = None,
                    unset_environment: bool = True) -> List[Tuple[str, socket.socket]]:
    """The sockets systemd passed to this process, as ``(name, socket)`` pairs.

    Empty when the process was not started by socket activation.  The
    variables are removed from *environ* (default ``os.environ``) unless
    *unset_environment* is false, as sd_listen_fds(3) does, so that
    programs started later do not take them for theirs.  The descriptors
    are made close-on-exec.  Raises ValueError for malformed variables and
    OSError for a descriptor that is not a socket.
    """
    env = os.environ if environ is None else environ
    try:
        passed = parse_listen_fds(env, os.getpid())
    finally:
        if unset_environment:
            for name in _LISTEN_VARIABLES:
                env.pop(name, None)
    sockets = []
    for fd, name in passed:
        os.set_inheritable(fd, False)
        sockets.append((name, socket.socket(fileno=fd)))
    return sockets


def check_listening(sock: socket.socket) -> None:
    """Raise ValueError unless *sock* is a listening TCP socket (IPv4 or IPv6)."""
    if (sock.family not in (socket.AF_INET, socket.AF_INET6)
            or sock.type != socket.SOCK_STREAM):
        raise ValueError("not a TCP socket (the .socket unit needs ListenStream=)")
    accepting = getattr(socket, "SO_ACCEPTCONN", None)
    if accepting is not None and not sock.getsockopt(socket.SOL_SOCKET, accepting):
        raise ValueError("not a listening socket (the .socket unit needs Accept=no)")


# --------------------------------------------------------------------------
# Listening sockets for the workers


def kernel_balances_reuse_port() -> bool:
    """True where SO_REUSEPORT spreads connections over the sockets (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def open_listener(address: Tuple[str, int], backlog: int, reuse_port: bool = False,
                  listen: bool = True) -> socket.socket:
    """A socket bound to *address* as SMTPServer binds one, listening unless told not to.

    An empty host means every interface (IPv6 and IPv4 where the system can,
    see :func:`is_dual_stack`).
    """
    host, port = address[0], address[1]
    bind_to: Tuple = (host, port)
    if host == "":
        sock = _dual_stack_socket(socket)
        bind_to = ("::", port)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            bind_to = ("0.0.0.0", port)
    else:
        family, kind = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][:2]
        sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(bind_to)
        if listen:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def is_dual_stack(host: str, sock: socket.socket) -> bool:
    """True if :func:`open_listener` made *sock* for *host* with ``_dual_stack_socket``.

    For an empty host it makes an IPv6 socket only that way (else IPv4).
    """
    return host == "" and sock.family == socket.AF_INET6


class Listeners:
    """Where each worker's listening socket comes from.

    *held* is the socket the supervisor keeps: the one all workers share, or
    (with *shared* false) the bound, not listening socket that keeps the
    port while each worker gets its own SO_REUSEPORT socket.  *dual_stack*:
    the sockets are smtpd_compat's own for an empty host (see ``adopting``).
    """

    def __init__(self, held: socket.socket, shared: bool, backlog: int, host: str,
                 dual_stack: bool = False) -> None:
        self._held = held
        self.shared = shared
        self._backlog = backlog
        self.address = (host, held.getsockname()[1])
        self.dual_stack = dual_stack

    def for_worker(self) -> socket.socket:
        """The listening socket for a worker about to start."""
        if self.shared:
            return self._held
        return open_listener(self.address, self._backlog, reuse_port=True)

    def release(self, sock: socket.socket) -> None:
        """Close the supervisor's copy of a worker's own socket."""
        if sock is not self._held:
            sock.close()

    def close(self) -> None:
        self._held.close()


def listeners_for(address: Tuple[str, int], backlog: int,
                  inherited: Optional[socket.socket] = None) -> Listeners:
    """The listening plan for workers serving *address*; raises OSError if it is taken.

    *inherited* (a socket from systemd) is shared by the workers as it is,
    and its IPv4 peers stay IPv4-mapped if it is a dual-stack one.
    """
    if inherited is not None:
        return Listeners(inherited, True, backlog, inherited.getsockname()[0])
    if not kernel_balances_reuse_port():
        shared = open_listener(address, backlog)
        return Listeners(shared, True, backlog, address[0], is_dual_stack(address[0], shared))
    # Sockets with SO_REUSEPORT share a port with each other, so a second
    # copy of this server would share it silently: first make sure that
    # nothing listens there (and learn the port the OS picks for port 0).
    probe = open_listener(address, backlog, listen=False)
    port = probe.getsockname()[1]
    probe.close()
    reservation = open_listener((address[0], port), backlog, reuse_port=True, listen=False)
    return Listeners(reservation, False, backlog, address[0],
                     is_dual_stack(address[0], reservation))


def endpoint_text(address: Tuple[str, int]) -> str:
    """``host:port`` as the command line takes it (``[::1]:25``, ``:25``)."""
    host, port = address[0], address[1]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


# --------------------------------------------------------------------------
# Inside a worker


@tracks_interest
class _Lifeline(asyncore.file_dispatcher):
    """The read end of a pipe that only the supervisor holds open for writing.

    End of file means the supervisor is gone (killed with SIGKILL, say): the
    worker then stops as on SIGTERM, instead of serving on as an orphan.
    """

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        self.recv(64)  # calls handle_close at end of file

    def handle_close(self) -> None:
        self.close()
        os.kill(os.getpid(), signal.SIGTERM)


def _run_worker(listener: socket.socket, dual_stack: bool, ready_fd: int, lifeline_fd: int,
                make_server: Callable[[], object], serve: Callable[[object], None]) -> None:
    with adopting(listener, dual_stack):
        server = make_server()
    if getattr(server, "socket", None) is not listener:
        raise RuntimeError("%s did not take the listening socket it was handed (its "
                           "__init__ must call SMTPServer.__init__)" % type(server).__name__)
    _Lifeline(lifeline_fd, map=server._map)  # type: ignore[attr-defined]
    os.close(lifeline_fd)  # file_dispatcher keeps a duplicate
    os.write(ready_fd, b"!")
    os.close(ready_fd)
    serve(server)


def _exit_code(exit: SystemExit) -> int:
    """The status ``sys.exit(code)`` would give the process."""
    if exit.code is None:
        return 0
    if isinstance(exit.code, int):
        return exit.code
    print(exit.code, file=sys.stderr)
    return 1


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _finish_threads() -> None:
    """Wait for the worker's threads as an exiting interpreter would.

    A forked worker must leave with ``os._exit`` (returning would run the
    supervisor's code in it), which skips the wait for non-daemon threads
    and executors that a single process's exit does: a ``process_message``
    still running in an executor after the shutdown's grace would be cut off
    mid-delivery.  ``threading._shutdown`` is that wait (CPython 3.8-3.13);
    on 3.8 the executors' own wait is an atexit hook, called here alone
    (the other atexit hooks belong to the supervisor).
    """
    waits = [getattr(threading, "_shutdown", None)]
    if sys.version_info < (3, 9):
        executors = sys.modules.get("concurrent.futures.thread")
        waits.append(getattr(executors, "_python_exit", None))
    for wait in waits:
        if wait is None:
            continue
        try:
            wait()
        except Exception:
            traceback.print_exc()


def describe_status(status: int) -> str:
    """What a ``waitpid()`` status says, in words."""
    if os.WIFSIGNALED(status):
        return "was killed by signal %d" % os.WTERMSIG(status)
    return "exited with status %d" % os.WEXITSTATUS(status)


# --------------------------------------------------------------------------
# The supervisor


class _Worker:
    """One worker's place: the process in it now and its restart back-off."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.pid = 0  # 0: no process
        self.ready_fd = -1  # the pipe the process says "serving" on
        self.ready = False
        self.started = 0.0
        self.delay = 0.0  # the wait before the last restart
        self.restart_at: Optional[float] = None


class Supervisor:
    """Runs *count* workers on *listeners* until SIGTERM or SIGINT.

    Each worker calls ``make_server()`` with its listening socket adopted,
    then ``serve(server)``, which must return after a clean shutdown on
    SIGTERM.  *report* gets one line per event worth telling an operator.
    """

    def __init__(self, count: int, listeners: Listeners, make_server: Callable[[], object],
                 serve: Callable[[object], None], report: Report,
                 stop_timeout: float) -> None:
        self._workers = [_Worker(number) for number in range(1, count + 1)]
        self._listeners = listeners
        self._make_server = make_server
        self._serve = serve
        self._report = report
        self._stop_timeout = stop_timeout
        self._starting = True
        self._stopping = False
        self._dispositions: Dict[int, object] = {}
        self._wake_fds = (-1, -1)
        self._lifeline_fds = (-1, -1)

    def run(self) -> int:
        """Start the workers one by one, then keep them running; the exit status.

        1 if a worker dies before it serves during the start, else 0.
        """
        self._wake_fds = os.pipe()
        self._lifeline_fds = os.pipe()
        for fd in self._wake_fds:
            os.set_blocking(fd, False)
        previous_wakeup = self._install_signal_handlers()
        try:
            if not self._start_all():
                return 1
            if not self._stopping:
                pids = " ".join(str(worker.pid) for worker in self._workers)
                self._report("serving %s with %d workers, pids %s (%s)" % (
                    endpoint_text(self._listeners.address), len(self._workers), pids,
                    "one shared socket" if self._listeners.shared else "SO_REUSEPORT"))
                self._keep_running()
            return 0
        finally:
            self._stop_all()
            signal.set_wakeup_fd(previous_wakeup)
            for signum, disposition in self._dispositions.items():
                signal.signal(signum, disposition)  # type: ignore[arg-type]
            for fd in self._wake_fds + self._lifeline_fds:
                os.close(fd)

    # -- signals -------------------------------------------------------------

    def _install_signal_handlers(self) -> int:
        for signum in _HANDLED_SIGNALS:
            disposition = signal.getsignal(signum)
            self._dispositions[signum] = (signal.SIG_DFL if disposition is None
                                          else disposition)
        # A stop signal ignored when we started stays ignored (see _cli.serve).
        for signum in _STOP_SIGNALS:
            if self._dispositions[signum] != signal.SIG_IGN:
                signal.signal(signum, self._request_stop)
        # The handler does nothing: the wake-up descriptor ends the wait.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        return signal.set_wakeup_fd(self._wake_fds[1])

    def _request_stop(self, signum, frame) -> None:
        self._stopping = True

    # -- starting and restarting ---------------------------------------------

    def _start_all(self) -> bool:
        """Start the workers one after the other; False if one failed to start.

        One at a time, so that a server that cannot start says why once.
        """
        for worker in self._workers:
            try:
                self._spawn(worker)
            except OSError as error:  # out of descriptors or processes
                self._report("worker %d could not be started: %s" % (worker.number, error))
                return False
            while worker.pid and not worker.ready and not self._stopping:
                self._wait(1.0)
            if self._stopping:
                return True
            if not worker.ready:
                return False
        self._starting = False
        return True

    def _keep_running(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for worker in self._workers:
                if worker.restart_at is not None and worker.restart_at <= now:
                    self._restart(worker)
            due = [worker.restart_at for worker in self._workers
                   if worker.restart_at is not None]
            self._wait(min([1.0] + [max(0.0, at - now) for at in due]))

    def _restart(self, worker: _Worker) -> None:
        worker.restart_at = None
        try:
            self._spawn(worker)
        except OSError as error:  # out of descriptors, processes or memory
            self._schedule_restart(worker, "could not be started (%s)" % error)

    def _spawn(self, worker: _Worker) -> None:
        listener = self._listeners.for_worker()
        try:
            ready_read, ready_write = os.pipe()
        except OSError:
            self._listeners.release(listener)
            raise
        _flush_standard_streams()  # or the worker writes our buffer out again
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                os.close(ready_read)
                self._become_worker(listener, ready_write, blocked)
        except OSError:
            os.close(ready_read)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.close(ready_write)
            self._listeners.release(listener)
        worker.pid, worker.ready_fd, worker.ready = pid, ready_read, False
        worker.started = time.monotonic()

    def _become_worker(self, listener: socket.socket, ready_fd: int, mask) -> None:
        """Run in the forked child: serve, then exit without returning."""
        status = 1
        try:
            # Back to what the process had before the supervisor, while the
            # signals are still blocked: a stop signal sent meanwhile then
            # gets the worker's own handling, not the supervisor's.
            signal.set_wakeup_fd(-1)
            for signum, disposition in self._dispositions.items():
                signal.signal(signum, disposition)  # type: ignore[arg-type]
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._close_supervisor_descriptors(listener)
            _run_worker(listener, self._listeners.dual_stack, ready_fd, self._lifeline_fds[0],
                        self._make_server, self._serve)
            status = 0
        except SystemExit as exit:
            status = _exit_code(exit)
        except BaseException:
            traceback.print_exc()
        finally:
            _finish_threads()
            _flush_standard_streams()
            os._exit(status)

    def _close_supervisor_descriptors(self, listener: socket.socket) -> None:
        for fd in self._wake_fds + (self._lifeline_fds[1],):
            os.close(fd)
        for other in self._workers:
            if other.ready_fd >= 0:
                os.close(other.ready_fd)
        if not self._listeners.shared:
            self._listeners.close()

    # -- waiting and reaping -------------------------------------------------

    def _wait(self, timeout: float) -> None:
        """Wait for a signal or a worker's word, then handle whatever happened."""
        watched = [self._wake_fds[0]] + [worker.ready_fd for worker in self._workers
                                         if worker.ready_fd >= 0]
        readable, _, _ = select.select(watched, [], [], timeout)
        if self._wake_fds[0] in readable:
            try:
                while os.read(self._wake_fds[0], 512):
                    pass
            except BlockingIOError:
                pass
        for worker in self._workers:
            if worker.ready_fd >= 0 and worker.ready_fd in readable:
                self._read_ready(worker)
        self._reap()

    def _read_ready(self, worker: _Worker) -> None:
        said = os.read(worker.ready_fd, 1)
        os.close(worker.ready_fd)
        worker.ready_fd = -1
        if said:
            worker.ready = True
            if not self._starting and not self._stopping:
                self._report("worker %d (pid %d) is serving again" % (
                    worker.number, worker.pid))

    def _reap(self) -> None:
        for worker in self._workers:
            if not worker.pid:
                continue
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else
                pid, status = worker.pid, 0
            if pid:
                self._exited(worker, status)

    def _exited(self, worker: _Worker, status: int) -> None:
        pid, was_ready = worker.pid, worker.ready
        worker.pid, worker.ready = 0, False
        if worker.ready_fd >= 0:
            os.close(worker.ready_fd)
            worker.ready_fd = -1
        if self._stopping:
            return
        what = "worker %d (pid %d) %s" % (worker.number, pid, describe_status(status))
        if self._starting and not was_ready:
            # A worker that exits on its own has said why; a signal has not.
            if os.WIFSIGNALED(status):
                self._report(what + " before it was serving")
            return
        self._schedule_restart(worker, what)

    def _schedule_restart(self, worker: _Worker, what: str) -> None:
        if worker.delay and time.monotonic() - worker.started < STABLE_AFTER:
            worker.delay = min(worker.delay * 2, RESTART_DELAY_MAX)
        else:
            worker.delay = RESTART_DELAY
        worker.restart_at = time.monotonic() + worker.delay
        self._report("%s; restarting it in %.1f s" % (what, worker.delay))

    # -- stopping ------------------------------------------------------------

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for their clean shutdown, SIGKILL the late."""
        self._stopping = True
        self._listeners.close()
        for worker in self._live():
            _signal(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout
        while self._live() and time.monotonic() < deadline:
            self._wait(min(0.5, max(0.0, deadline - time.monotonic())))
        for worker in self._live():
            self._report("worker %d (pid %d) did not stop within %.0f s; killing it" % (
                worker.number, worker.pid, self._stop_timeout))
            _signal(worker.pid, signal.SIGKILL)
            os.waitpid(worker.pid, 0)
            worker.pid = 0

    def _live(self) -> List[_Worker]:
        return [worker for worker in self._workers if worker.pid]


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def run_workers(count: int, listeners: Listeners, make_server: Callable[[], object],
                serve: Callable[[object], None], report: Report,
                stop_timeout: float) -> int:
    """Serve with *count* worker processes until SIGTERM or SIGINT; the exit status.

    See :class:`Supervisor`.  Needs ``os.fork`` (not on Windows).
    """
    return Supervisor(count, listeners, make_server, serve, report, stop_timeout).run()
