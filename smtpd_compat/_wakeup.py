"""Run callbacks on an asyncore loop from other threads.

A worker thread (PureProxy's upstream delivery, or any ``process_message``
that returns a Future) must hand its result back to the thread that runs the
socket map.  A waker is a dispatcher on one end of a socket pair that lives in
that map: other threads queue a callback and write one byte, the loop wakes
up and runs the callbacks in its own thread.
"""

import collections
import socket
from typing import Callable, Dict

from ._asyncore import asyncore
from ._loop import tracks_interest

_wakers: Dict[int, "Waker"] = {}


@tracks_interest
class Waker(asyncore.dispatcher):
    """A dispatcher whose only job is to run queued callbacks in the loop thread."""

    def __init__(self, map: dict) -> None:
        self._callbacks: "collections.deque[Callable[[], None]]" = collections.deque()
        receiver, self._sender = socket.socketpair()
        self._sender.setblocking(False)
        asyncore.dispatcher.__init__(self, receiver, map=map)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Queue *callback* to run in the loop thread; safe from any thread."""
        self._callbacks.append(callback)
        try:
            self._sender.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the buffer is full of wake-ups already
        except OSError:
            pass  # closed: the loop is gone, nobody will run it

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        try:
            self.recv(4096)
        except BlockingIOError:
            pass
        while self._callbacks:
            self._callbacks.popleft()()

    def handle_close(self) -> None:
        self.close()

    def close(self) -> None:
        if _wakers.get(id(self._map)) is self:
            del _wakers[id(self._map)]
        asyncore.dispatcher.close(self)
        self._sender.close()


def waker_for(map: dict) -> Waker:
    """The waker living in socket map *map*, created on first use.

    Called from the loop thread only, like everything that touches a map.
    """
    waker = _wakers.get(id(map))
    if waker is None or waker._map is not map or waker._fileno not in map:
        waker = _wakers[id(map)] = Waker(map)
    return waker
