"""The epoll/poll loop: which dispatchers it asks readable()/writable(), and when.

Real socket pairs and real loopback sessions; the sweep interval is made
long so that only the loop's tracking, not the periodic sweep, can make a
test pass.
"""

import concurrent.futures
import socket
import time

import pytest

from smtpd_compat import _loop
from smtpd_compat._asyncore import asyncore
from tests.conftest import RecordingServer


@pytest.fixture
def no_sweep(monkeypatch):
    """After the first pass, only tracking decides whom the loop asks."""
    monkeypatch.setattr(_loop, "SWEEP_INTERVAL", 3600.0)


@pytest.fixture
def socket_map():
    socket_map = {}
    peers = []
    yield socket_map, peers
    asyncore.close_all(socket_map)
    for peer in peers:
        peer.close()


@pytest.fixture
def poller(socket_map):
    """A poller over the test's socket map, closed after the test."""
    poller = _loop.Poller(socket_map[0])
    yield poller
    poller.close()


def _paired(the_map, peers, dispatcher_class):
    """A dispatcher on one end of a socket pair; returns (dispatcher, other end)."""
    mine, theirs = socket.socketpair()
    peers.append(theirs)
    return dispatcher_class(mine, map=the_map), theirs


@_loop.tracks_interest
class CountingDispatcher(asyncore.dispatcher):
    """Tracked: counts the loop's questions and the reads it is given."""

    def __init__(self, sock, map):
        super().__init__(sock, map=map)
        self.asked = 0
        self.reads = 0

    def readable(self):
        self.asked += 1
        return True

    def writable(self):
        return False

    def handle_read(self):
        self.reads += 1
        self.recv(4096)


@_loop.tracks_interest
class Deaf(asyncore.dispatcher):
    """Tracked, and wants neither to read nor to write."""

    def readable(self):
        return False

    def writable(self):
        return False


class SenderOnDemand(asyncore.dispatcher):
    """Untracked (overrides writable()): wants to write once ``outgoing`` is set."""

    outgoing = b""

    def writable(self):
        return bool(self.outgoing)

    def handle_write(self):
        sent = self.send(self.outgoing)
        self.outgoing = self.outgoing[sent:]

    def handle_read(self):
        self.recv(4096)


def _poll(poller, passes=3):
    for _ in range(passes):
        poller.poll(0.01)


def test_idle_tracked_dispatchers_are_not_asked_again(socket_map, poller, no_sweep):
    the_map, peers = socket_map
    dispatchers = [_paired(the_map, peers, CountingDispatcher) for _ in range(50)]
    _poll(poller, 1)
    assert all(d.asked == 1 for d, _ in dispatchers)
    _poll(poller, 5)
    assert all(d.asked == 1 for d, _ in dispatchers)

    busy, peer = dispatchers[7]
    peer.send(b"wake up")
    _poll(poller, 2)
    assert busy.reads == 1
    assert busy.asked > 1
    assert [d.asked for d, _ in dispatchers if d is not busy] == [1] * 49


def test_the_sweep_asks_every_dispatcher(socket_map, poller, monkeypatch):
    monkeypatch.setattr(_loop, "SWEEP_INTERVAL", 0.05)
    the_map, peers = socket_map
    dispatcher, _ = _paired(the_map, peers, CountingDispatcher)
    _poll(poller, 1)
    time.sleep(0.06)
    _poll(poller, 1)
    assert dispatcher.asked == 2


def test_with_nothing_to_watch_a_pass_waits_its_timeout(socket_map, poller, no_sweep):
    the_map, peers = socket_map
    _paired(the_map, peers, Deaf)
    _poll(poller, 1)
    started = time.monotonic()
    poller.poll(0.2)
    assert time.monotonic() - started >= 0.15  # slept; did not return at once


def test_untracked_dispatchers_are_asked_on_every_pass(socket_map, poller, no_sweep):
    the_map, peers = socket_map
    sender, peer = _paired(the_map, peers, SenderOnDemand)
    _poll(poller)
    sender.outgoing = b"hello"  # no event, no notification: only asking finds it
    _poll(poller)
    peer.settimeout(5)
    assert peer.recv(100) == b"hello"


def test_interest_changed_gets_a_tracked_dispatcher_asked(socket_map, poller, no_sweep):
    the_map, peers = socket_map
    dispatcher, _ = _paired(the_map, peers, CountingDispatcher)
    _poll(poller)
    _loop.interest_changed(dispatcher)
    _poll(poller, 1)
    assert dispatcher.asked == 2


class LaterServer(RecordingServer):
    """Answers each message when the test completes ``self.future``."""

    def process_message(self, *args, **kwargs):
        super().process_message(*args, **kwargs)
        self.future = concurrent.futures.Future()
        return self.future


def test_a_late_reply_makes_the_channel_read_again(make_session, no_sweep):
    # While the reply is pending the channel runs nothing; the reply comes
    # through another dispatcher (the waker), and the channel must then be
    # asked again, or the next command would never be read.
    session = make_session(LaterServer)
    session.send(b"HELO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                 b"DATA\r\n", replies=4)
    session.client.sendall(b"Subject: later\r\n\r\nbody\r\n.\r\n")
    assert session.nothing_more() == b""
    session.server.future.set_result(None)
    assert session.read(1) == b"250 OK\r\n"
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


def test_a_reused_descriptor_gets_the_new_dispatchers_events(socket_map, poller, no_sweep):
    the_map, peers = socket_map
    old, _ = _paired(the_map, peers, CountingDispatcher)
    fd = old._fileno
    _poll(poller)
    old.close()
    new, peer = _paired(the_map, peers, CountingDispatcher)
    assert new._fileno == fd  # the lowest free descriptor: the one just closed
    peer.send(b"for the new one")
    _poll(poller)
    assert (old.reads, new.reads) == (0, 1)


def test_a_dispatcher_taken_out_of_the_map_gets_no_more_events(socket_map, poller, no_sweep):
    the_map, peers = socket_map
    dispatcher, peer = _paired(the_map, peers, CountingDispatcher)
    _poll(poller)
    dispatcher.del_channel()  # its socket stays open, with input waiting
    peers.append(dispatcher.socket)  # closed with the peers, as it left the map
    peer.send(b"nobody listens")
    _poll(poller)
    assert dispatcher.reads == 0
    assert poller._registered == {}


def test_idle_timeout_fires_without_any_event(make_session):
    session = make_session(attributes={"idle_timeout": 0.2})
    reply = "421 %s Error: timeout exceeded, closing connection\r\n" % session.server._cached_fqdn()
    assert session.read(1, deadline=5) == reply.encode()
