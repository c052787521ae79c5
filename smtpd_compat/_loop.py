"""A poll/epoll event loop for asyncore socket maps.

``asyncore.loop()`` uses ``select()`` unless told otherwise, and ``select()``
cannot watch a descriptor numbered 1024 or above: the 1,021st client kills
the process.  This loop keeps one epoll (or poll) registration per socket
and only changes it when a dispatcher's interest changes.

asyncore asks every dispatcher ``readable()`` and ``writable()`` before each
wait, which makes every event cost a visit to every connection.  This loop
asks again only the dispatchers whose answer may have changed: those that
just handled an event, new ones, those that said so through
``interest_changed()``, and those whose class's answers it does not know
(any class overriding ``readable``/``writable`` that did not declare itself
with ``tracks_interest``).  A sweep over all of them every
``SWEEP_INTERVAL`` seconds catches answers that change with time, such as
idle timeouts.
"""

import select
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from ._asyncore import asyncore

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT

# Seconds between passes that ask every dispatcher, tracked or not.
SWEEP_INTERVAL = 0.25

# (readable, writable) function pairs whose answers change only while their
# dispatcher handles an event, or when it calls interest_changed().
_TRACKED_PAIRS: Set[Tuple[Callable, Callable]] = {
    (asyncore.dispatcher.readable, asyncore.dispatcher.writable),  # constant
}
_pollers: Dict[int, List["Poller"]] = {}  # id(socket map) -> its pollers

# select() cannot watch a descriptor numbered FD_SETSIZE or above (1024 on
# Linux, macOS and the BSDs); Python does not export the constant.
SELECT_FD_LIMIT = 1024


def tracks_interest(cls):
    """Class decorator: *cls* reports changes of its readable()/writable().

    Its answers change only while it handles one of its own events, with
    time (caught by the periodic sweep), or when it calls
    ``interest_changed(self)``.  Subclasses that override either method are
    asked on every pass again.
    """
    _TRACKED_PAIRS.add((cls.readable, cls.writable))
    return cls


def interest_changed(dispatcher) -> None:
    """Have the pollers of *dispatcher*'s map ask it readable()/writable() again."""
    for poller in _pollers.get(id(dispatcher._map), ()):
        poller._stale.add(dispatcher._fileno)


def watched_by_poller(map: dict) -> bool:
    """True while a ``Poller`` (``loop()``) serves socket map *map*.

    Otherwise the map is served by something else, usually
    ``asyncore.loop()`` and so ``select()``.
    """
    return bool(_pollers.get(id(map)))


def _is_tracked(dispatcher) -> bool:
    cls = type(dispatcher)
    return (cls.readable, cls.writable) in _TRACKED_PAIRS


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
        self._registered: Dict[int, int] = {}  # fd -> event mask
        self._known: Dict[int, object] = {}  # the map as of the last pass
        self._untracked: Set[int] = set()  # fds asked on every pass
        self._stale: Set[int] = set()  # fds to ask on the next pass
        self._next_sweep = 0.0
        _pollers.setdefault(id(self.map), []).append(self)

    def poll(self, timeout: float) -> None:
        """Wait up to *timeout* seconds once and dispatch what happened."""
        self._update_registrations()
        if not self._registered:
            # Nothing to wait for until the sweep asks again; sleep as
            # asyncore.poll() does rather than spin.
            time.sleep(max(0.0, min(timeout, self._next_sweep - time.monotonic())))
            return
        try:
            events = self._pollster.poll(timeout * self._timeout_scale)
        except InterruptedError:
            return
        for fd, flags in events:
            dispatcher = self.map.get(fd)
            if dispatcher is not None:
                self._stale.add(fd)
                asyncore.readwrite(dispatcher, flags)

    def close(self) -> None:
        """Release the poller's own descriptor."""
        pollers = _pollers.get(id(self.map), [])
        if self in pollers:
            pollers.remove(self)
            if not pollers:
                del _pollers[id(self.map)]
        close = getattr(self._pollster, "close", None)
        if close is not None:
            close()

    def _update_registrations(self) -> None:
        self._follow_map()
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            to_ask = list(self.map)
        else:
            to_ask = self._stale | self._untracked
        self._stale = set()
        for fd in to_ask:
            dispatcher = self.map.get(fd)
            if dispatcher is not None:
                self._set_mask(fd, _interest(dispatcher))

    def _follow_map(self) -> None:
        """Forget dispatchers that left the map; mark new ones to be asked."""
        if self.map == self._known:  # compared in C: cheap when nothing changed
            return
        for fd, dispatcher in self._known.items():
            if self.map.get(fd) is not dispatcher:
                self._untracked.discard(fd)
                if fd in self._registered:
                    self._unregister(fd)
        for fd, dispatcher in self.map.items():
            if self._known.get(fd) is not dispatcher:
                self._stale.add(fd)
                if not _is_tracked(dispatcher):
                    self._untracked.add(fd)
        self._known = dict(self.map)

    def _set_mask(self, fd: int, mask: int) -> None:
        # A dispatcher that replaced another on this fd finds no entry here:
        # _follow_map dropped the old one's.
        current = self._registered.get(fd)
        if current == mask:
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
        except FileNotFoundError:  # the old socket on this fd closed; a new one took it
            self._pollster.register(fd, mask)
        except OSError:
            return  # closed meanwhile; forgotten on the next pass
        self._registered[fd] = mask

    def _unregister(self, fd: int) -> None:
        del self._registered[fd]
        try:
            self._pollster.unregister(fd)
        except (OSError, KeyError, ValueError):
            pass  # the descriptor is closed already: nothing left to remove


def _interest(dispatcher) -> int:
    mask = 0
    if dispatcher.readable():
        mask |= _READ
    if dispatcher.writable() and not dispatcher.accepting:
        mask |= _WRITE
    return mask


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
