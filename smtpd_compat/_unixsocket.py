"""Listening on a UNIX socket: a server whose *localaddr* is a filesystem path.

LMTP is usually served on one (Postfix's ``lmtp:unix:/path``, Dovecot,
Cyrus).  The socket file is made when the server binds and removed when it
closes; a file left by a server that died (nobody accepts on it any more)
is replaced, while one a running server listens on is an error
(``EADDRINUSE``), as a TCP port in use is.
"""

import errno
import os
import socket as _stdlib_socket
import stat
from typing import Optional, Tuple

# Where a socket file was made: its path and (device, inode), so that a file
# someone else made there since is not removed.
Made = Tuple[str, Tuple[int, int]]


def is_path(localaddr) -> bool:
    """True if *localaddr* names a UNIX socket (a str, bytes or path object)."""
    return isinstance(localaddr, (str, bytes, os.PathLike))


def replace_stale(path: str) -> None:
    """Remove the socket file at *path* if no server listens on it any more.

    Nothing there: nothing to do.  A socket with a listener, or a file that
    is not a socket, raises OSError (the bind would fail anyway, with a
    less helpful error for the first).
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "exists and is not a socket", path)
    probe = _stdlib_socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: its server is gone
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "a server listens on it", path)


def made(path: str) -> Made:
    """Remember the socket file just bound at *path*."""
    info = os.stat(path)
    return path, (info.st_dev, info.st_ino)


def remove(socket_file: Optional[Made]) -> None:
    """Remove the socket file the server made, unless it was replaced since."""
    if socket_file is None:
        return
    path, identity = socket_file
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == identity:
            os.unlink(path)
    except OSError:
        pass  # gone already, or not ours to remove
