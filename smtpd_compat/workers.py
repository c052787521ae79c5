"""Serve one address from several processes, or a socket that systemd passed.

``python -m smtpd_compat --workers N`` is this module's :func:`serve_workers`;
from Python::

    import sys
    import smtpd_compat
    from smtpd_compat.workers import serve_workers

    class Server(smtpd_compat.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            ...

    if __name__ == "__main__":
        sys.exit(serve_workers(lambda address: Server(address, None),
                               ("", 8025), workers=4))

A supervisor process binds the address and forks the workers; each calls
the factory and serves what it made until SIGTERM or SIGINT, with the
command line's clean shutdown (pending replies finish, every other client
gets a 421).  A worker that dies is started again, after a pause that
doubles while it keeps dying (0.1 s up to 10 s).  On Linux each worker has
its own socket bound with SO_REUSEPORT and the kernel spreads connections
over them; elsewhere the workers share one socket.

Workers share nothing: each has its own server object, so per-server state
(``max_connections``, a ``smtpd_compat.testing.Sink``'s messages) is per
worker.  Connections waiting in a worker's accept queue when it dies are
reset (unless the ``net.ipv4.tcp_migrate_req`` sysctl is on).

:func:`systemd_sockets` and :func:`adopting` serve a socket that systemd
passed (socket activation, ``LISTEN_FDS``) in one process::

    [(name, listener)] = systemd_sockets()
    with adopting(listener):
        server = Server(listener.getsockname(), None)
    smtpd_compat.loop()

and ``serve_workers(..., listener=listener)`` shares it among workers.
"""

import sys
from typing import Callable, Optional, Tuple

from ._cli import WORKER_STOP_TIMEOUT, serve
from ._server import SMTPServer, adopting
from ._workers import check_listening, listeners_for, run_workers, systemd_sockets

__all__ = ["adopting", "serve_workers", "systemd_sockets"]


def serve_workers(make_server: Callable[[Tuple[str, int]], SMTPServer],
                  address: Optional[Tuple[str, int]], workers: int,
                  listener=None, report: Optional[Callable[[str], None]] = None) -> int:
    """Serve *address* with *workers* processes until SIGTERM or SIGINT.

    ``make_server(address)`` runs in each worker and returns the server
    (an :class:`~smtpd_compat.SMTPServer`, whose ``__init__`` must run):
    it is handed the address actually served (port 0 replaced by the port
    the system chose) and serves the worker's socket instead of binding.
    *listener*, a listening socket such as one from :func:`systemd_sockets`,
    is shared by the workers instead of binding *address* (then None).

    Returns the exit status for the program: 0 after a stop signal, 1 if a
    worker failed before it served during the start.  Raises OSError when
    the address cannot be bound, ValueError for a bad count or listener.
    *report* gets one line per event (start, a worker's death, its
    restart); the default prints it to stderr.  Needs ``os.fork`` (not on
    Windows) and must be called from the main thread.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1, not %r" % (workers,))
    if listener is not None:
        check_listening(listener)
    elif address is None:
        raise ValueError("an address or a listener is needed")
    listeners = listeners_for(address or ("", 0), SMTPServer.listen_backlog, listener)
    served = listeners.address
    return run_workers(workers, listeners, lambda: make_server(served), serve,
                       report or _print_report, WORKER_STOP_TIMEOUT)


def _print_report(message: str) -> None:
    print("smtpd_compat: %s" % message, file=sys.stderr, flush=True)
