"""A real HAProxy in front of two smtpd_compat servers (issue 11, the proof).

HAProxy (Debian's ``haproxy``) runs in TCP mode with SMTP health checks
(``option smtpchk`` with ``check-send-proxy``) in front of two
``python -m smtpd_compat -c DebuggingServer`` processes, one behind
``send-proxy`` (v1), one behind ``send-proxy-v2``.  Clients connect from
127.0.0.2 while HAProxy connects from 127.0.0.1, so X-Peer can only show
127.0.0.2 if the header was read.  Then one backend is killed while
clients send: no acknowledged message is lost and each lands once.
The configuration is the one ``docs/haproxy.md`` shows.
"""

import smtplib
import threading
import time
from typing import Dict, List, Set

import pytest

from tests import haproxy_support as hs
from tests.cli_support import END_OF_MESSAGE, compat_command, running_server

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
KILL_AFTER = 8  # acknowledged messages before backend b1 is killed


def backend(version: str):
    return lambda port: compat_command("-n", "-c", "DebuggingServer", "--proxy-protocol",
                                       version, "127.0.0.1:%d" % port)


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


def test_backend_killed_mid_test_loses_no_acknowledged_message(load_balanced):
    haproxy, backends = load_balanced
    sender = Sender(haproxy.ports["fe"])
    numbers = range(2 * MESSAGES_PER_CLIENT)
    threads = [threading.Thread(target=lambda part=part: [sender.send(n) for n in part])
               for part in (numbers[0::2], numbers[1::2])]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(sender.acknowledged) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.01)
        backends["b1"].kill()  # SIGKILL, by PID, while both clients send
    finally:
        for thread in threads:
            thread.join(120)
    assert not sender.failures, sender.failures
    assert sender.acknowledged == set(numbers)
    outputs: Dict[str, bytes] = {name: server.stdout for name, server in backends.items()}
    for number in numbers:
        count = sum(landed(out, number) for out in outputs.values())
        if number in sender.uncertain:
            # the reply to the final dot was lost: SMTP's at-least-once
            assert 1 <= count <= ATTEMPTS, number
        else:
            assert count == 1, (number, count)
    assert any(landed(outputs["b1"], n) for n in numbers)  # b1 served some before it died
    give_up = time.monotonic() + 10
    while "b1 is DOWN" not in haproxy.output() and time.monotonic() < give_up:
        time.sleep(0.1)
    assert "b1 is DOWN" in haproxy.output()  # the SMTP health check noticed
    assert "b2 is DOWN" not in haproxy.output()
