"""A real HAProxy in front of two smtpd_compat servers (issue 11, the proof).

HAProxy (Debian's ``haproxy``) runs in TCP mode with SMTP health checks
(``option smtpchk`` with ``check-send-proxy``) in front of two
``python -m smtpd_compat -c DebuggingServer`` processes, one behind
``send-proxy`` (v1), one behind ``send-proxy-v2``.  Clients connect from
127.0.0.2 while HAProxy connects from 127.0.0.1, so X-Peer can only show
127.0.0.2 if the header was read.  Then one backend is killed while
clients send: no acknowledged message is lost and each lands once.
The configuration is the one ``docs/haproxy.md`` shows.  The same again in
front of one server with ``--workers 2``, where one worker is killed.
"""

import os
import signal
import smtplib
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Sequence, Set

import pytest

from tests import haproxy_support as hs
from tests.cli_support import (
    END_OF_MESSAGE,
    compat_command,
    process_gone,
    running_server,
    running_workers,
)

HAPROXY_CONFIG = """
frontend smtp
    bind 127.0.0.1:{fe}
    default_backend mx

backend mx
    balance roundrobin
    option smtpchk EHLO haproxy.test
    retries 3
    option redispatch
    server b1 127.0.0.1:{b1} send-proxy check check-send-proxy inter 200ms fall 1 rise 2
    server b2 127.0.0.1:{b2} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2
"""

CHECKS_SETTLE = 1.5  # seconds: several health checks of each backend
ATTEMPTS = 40  # per message; a client retries after a 4xx or a lost connection
RETRY_PAUSE = 0.1
MESSAGES_PER_CLIENT = 15
KILL_AFTER = 8  # acknowledged messages before backend b1 (or a worker) is killed
KILL_WAIT = 10.0  # seconds to wait for the worker to be serving a connection


# One server with two worker processes behind send-proxy-v2: the kernel
# spreads HAProxy's connections over the workers (SO_REUSEPORT).
WORKERS_CONFIG = """
frontend smtp
    bind 127.0.0.1:{fe}
    default_backend mx

backend mx
    option smtpchk EHLO haproxy.test
    retries 3
    option redispatch
    server w 127.0.0.1:{w} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2
"""


def backend(version: str, *options: str) -> Callable[[int], List[str]]:
    return lambda port: compat_command("-n", "-c", "DebuggingServer", "--proxy-protocol",
                                       version, *options, "127.0.0.1:%d" % port)


@pytest.fixture
def load_balanced(tmp_path):
    """(haproxy, {"b1": server, "b2": server}) all running; all stopped by PID."""
    hs.haproxy_program()
    with running_server(backend("v1")) as (b1, b1_port), \
            running_server(backend("v2")) as (b2, b2_port), \
            hs.running_haproxy(str(tmp_path), HAPROXY_CONFIG, {"b1": b1_port, "b2": b2_port},
                               {"fe": "127.0.0.1"}) as haproxy:
        time.sleep(CHECKS_SETTLE)
        yield haproxy, {"b1": b1, "b2": b2}


def message(number: int) -> bytes:
    return ("Subject: msg-%04d\r\n\r\nbody %d\r\n" % (number, number)).encode()


def landed(stdout: bytes, number: int) -> int:
    """How many times message *number* was printed by a DebuggingServer."""
    return stdout.count(b"Subject: msg-%04d'" % number)


class Sender:
    """Sends messages through HAProxy from 127.0.0.2, retrying until each is acknowledged."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acknowledged: Set[int] = set()
        self.uncertain: Set[int] = set()  # the connection broke after the final dot
        self.failures: List[str] = []
        self.lock = threading.Lock()

    def send(self, number: int) -> None:
        for _attempt in range(ATTEMPTS):
            if self._try(number):
                with self.lock:
                    self.acknowledged.add(number)
                return
            time.sleep(RETRY_PAUSE)
        self.failures.append("message %d never acknowledged" % number)

    def _try(self, number: int) -> bool:
        client = smtplib.SMTP(timeout=hs.IO_TIMEOUT, source_address=("127.0.0.2", 0))
        try:
            client.connect("127.0.0.1", self.port)
            client.ehlo("client.test")
            client.mail("a@example.org")
            client.rcpt("b@example.org")
            try:
                client.data(message(number))
            except (smtplib.SMTPServerDisconnected, OSError):
                with self.lock:
                    self.uncertain.add(number)
                raise
            return True
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError) as e:
            if isinstance(e, smtplib.SMTPResponseException) and e.smtp_code >= 500:
                self.failures.append("message %d: %r" % (number, e))
            return False
        finally:
            try:
                client.quit()
            except (smtplib.SMTPServerDisconnected, OSError):
                client.close()


def test_peer_and_x_peer_show_the_client_not_haproxy(load_balanced):
    haproxy, backends = load_balanced
    sender = Sender(haproxy.ports["fe"])
    for number in range(4):
        sender.send(number)
    assert sender.acknowledged == {0, 1, 2, 3}, sender.failures
    for name, server in backends.items():  # round robin: two each
        out = server.wait_for_stdout(END_OF_MESSAGE, count=2)
        assert out.count(b"b'X-Peer: 127.0.0.2'") == 2, (name, out)
        assert b"X-Peer: 127.0.0.1" not in out
        # the health checks' headers (v1 PROXY, v2 LOCAL) were all taken
        assert b"refused" not in server.stderr, server.stderr
    assert "is DOWN" not in haproxy.output()


def send_and_kill(sender: Sender, numbers: Sequence[int], kill: Callable[[], None]) -> None:
    """Send *numbers* from two client threads; ``kill()`` once KILL_AFTER are acknowledged."""
    threads = [threading.Thread(target=lambda part=part: [sender.send(n) for n in part])
               for part in (numbers[0::2], numbers[1::2])]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(sender.acknowledged) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.01)
        kill()  # while both clients send
    finally:
        for thread in threads:
            thread.join(120)


def assert_each_acknowledged_landed_once(sender: Sender, numbers: Sequence[int],
                                         outputs: Iterable[bytes]) -> None:
    """Every message was acknowledged, and printed once (see Sender.uncertain)."""
    assert not sender.failures, sender.failures
    assert sender.acknowledged == set(numbers)
    outputs = list(outputs)
    for number in numbers:
        count = sum(landed(out, number) for out in outputs)
        if number in sender.uncertain:
            # the reply to the final dot was lost: SMTP's at-least-once
            assert 1 <= count <= ATTEMPTS, number
        else:
            assert count == 1, (number, count)


def test_backend_killed_mid_test_loses_no_acknowledged_message(load_balanced):
    haproxy, backends = load_balanced
    sender = Sender(haproxy.ports["fe"])
    numbers = range(2 * MESSAGES_PER_CLIENT)
    send_and_kill(sender, numbers, backends["b1"].kill)  # SIGKILL, by PID
    outputs: Dict[str, bytes] = {name: server.stdout for name, server in backends.items()}
    assert_each_acknowledged_landed_once(sender, numbers, outputs.values())
    assert any(landed(outputs["b1"], n) for n in numbers)  # b1 served some before it died
    give_up = time.monotonic() + 10
    while "b1 is DOWN" not in haproxy.output() and time.monotonic() < give_up:
        time.sleep(0.1)
    assert "b1 is DOWN" in haproxy.output()  # the SMTP health check noticed
    assert "b2 is DOWN" not in haproxy.output()


def socket_count(pid: int) -> int:
    """How many sockets process *pid* holds (Linux /proc)."""
    count = 0
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            count += os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith("socket:")
        except OSError:  # closed meanwhile
            pass
    return count


def idle_socket_count(pid: int) -> int:
    """The sockets *pid* holds between connections: the fewest over a few samples."""
    samples = []
    for _sample in range(20):
        samples.append(socket_count(pid))
        time.sleep(0.01)
    return min(samples)


def kill_mid_session(pid: int, idle_sockets: int, sender: Sender) -> None:
    """SIGKILL *pid*, if possible while it serves a connection (holds more than idle)."""
    deadline = time.monotonic() + KILL_WAIT
    while socket_count(pid) <= idle_sockets and time.monotonic() < deadline:
        if len(sender.acknowledged) >= 2 * MESSAGES_PER_CLIENT - 2:
            break  # the clients are nearly done: kill now or never mid-test
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)


def test_worker_killed_behind_haproxy_loses_no_acknowledged_message(tmp_path):
    hs.haproxy_program()
    with running_workers(backend("v2", "--workers", "2")(0)) as workers, \
            hs.running_haproxy(str(tmp_path), WORKERS_CONFIG, {"w": workers.port},
                               {"fe": "127.0.0.1"}) as haproxy:
        time.sleep(CHECKS_SETTLE)
        victim = workers.pids[0]
        idle_sockets = idle_socket_count(victim)
        sender = Sender(haproxy.ports["fe"])
        numbers = range(2 * MESSAGES_PER_CLIENT)
        acknowledged_before_kill: List[int] = []

        def kill() -> None:
            kill_mid_session(victim, idle_sockets, sender)
            acknowledged_before_kill.append(len(sender.acknowledged))

        send_and_kill(sender, numbers, kill)
        assert acknowledged_before_kill[0] < len(numbers)  # killed while they sent
        out = workers.server.stdout
        assert_each_acknowledged_landed_once(sender, numbers, [out])
        # every message shows the client, none HAProxy (health checks send v2 LOCAL)
        assert out.count(b"b'X-Peer: 127.0.0.2'") == out.count(END_OF_MESSAGE) >= len(numbers)
        assert b"X-Peer: 127.0.0.1" not in out
        assert b"refused" not in workers.server.stderr, workers.server.stderr
        # the supervisor noticed and started a new worker, which serves
        workers.server.wait_for_stderr(b"is serving again")
        assert b"(pid %d) was killed by signal %d" % (victim, signal.SIGKILL) \
            in workers.server.stderr
        assert process_gone(victim)
        [replacement] = workers.restarted()
        assert replacement not in workers.pids and not process_gone(replacement)


def test_the_documented_configuration_is_the_one_tested():
    """docs/haproxy.md shows the configuration these tests run (its ports filled in)."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "haproxy.md").read_text()
    section = page.split("## The HAProxy configuration the tests use", 1)[1]
    documented = section.split("```\n", 2)[1]
    tested = (hs._DEFAULTS + HAPROXY_CONFIG).format(fe=25, b1=2525, b2=2526)
    assert documented.split() == tested.split()
