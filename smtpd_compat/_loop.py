"""A poll/epoll event loop for asyncore socket maps.

``asyncore.loop()`` uses ``select()`` unless told otherwise, and ``select()``
cannot watch a descriptor numbered 1024 or above: the 1,021st client kills
the process.  This loop keeps one epoll (or poll) registration per socket
and only changes it when a dispatcher's interest changes.
"""

import select
from typing import Dict, Optional

from ._asyncore import asyncore

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT


class Poller:
    """Waits for events on the dispatchers of one socket map."""

    def __init__(self, map: Optional[dict] = None) -> None:
        self.map = asyncore.socket_map if map is None else map
        if hasattr(select, "epoll"):
            self._pollster = select.epoll()
            self._timeout_scale = 1  # epoll takes seconds
        else:
            self._pollster = select.poll()
            self._timeout_scale = 1000  # poll takes milliseconds
        self._registered: Dict[int, tuple] = {}  # fd -> (dispatcher, mask)

    def poll(self, timeout: float) -> None:
        """Wait up to *timeout* seconds once and dispatch what happened."""
        self._update_registrations()
        if not self._registered:
            return
        try:
            events = self._pollster.poll(timeout * self._timeout_scale)
        except InterruptedError:
            return
        for fd, flags in events:
            dispatcher = self.map.get(fd)
            if dispatcher is not None:
                asyncore.readwrite(dispatcher, flags)

    def close(self) -> None:
        """Release the poller's own descriptor."""
        close = getattr(self._pollster, "close", None)
        if close is not None:
            close()

    def _update_registrations(self) -> None:
        for fd in [fd for fd, (dispatcher, _) in self._registered.items()
                   if self.map.get(fd) is not dispatcher]:
            self._unregister(fd)
        for fd, dispatcher in list(self.map.items()):
            mask = 0
            if dispatcher.readable():
                mask |= _READ
            if dispatcher.writable() and not dispatcher.accepting:
                mask |= _WRITE
            self._set_mask(fd, dispatcher, mask)

    def _set_mask(self, fd: int, dispatcher, mask: int) -> None:
        current = self._registered.get(fd)
        if current is not None and current[1] == mask:
            return
        if not mask:
            if current is not None:
                self._unregister(fd)
            return
        try:
            if current is None:
                self._pollster.register(fd, mask)
            else:
                self._pollster.modify(fd, mask)
        except FileExistsError:
            self._pollster.modify(fd, mask)
        except OSError:
            return  # closed meanwhile; forgotten on the next pass
        self._registered[fd] = (dispatcher, mask)

    def _unregister(self, fd: int) -> None:
        del self._registered[fd]
        try:
            self._pollster.unregister(fd)
        except (OSError, KeyError, ValueError):
            pass  # the descriptor is closed already: nothing left to remove


def loop(timeout: float = 30.0, map: Optional[dict] = None,
         count: Optional[int] = None) -> None:
    """Serve a socket map like ``asyncore.loop()``, with epoll or poll.

    Same arguments as ``asyncore.loop`` but ``use_poll`` (always on): runs
    until the map is empty, or *count* passes if given.  Unlike ``select()``
    it serves any number of connections the process may open.
    """
    poller = Poller(map)
    try:
        while poller.map and (count is None or count > 0):
            poller.poll(timeout)
            if count is not None:
                count -= 1
    finally:
        poller.close()


loop.__module__ = "smtpd_compat"
