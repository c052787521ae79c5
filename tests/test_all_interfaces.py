"""An empty host listens on every interface, IPv6 and IPv4 (issue 10, item 3).

Tests bind only loopback addresses; a server on all interfaces would be
reachable from the network.  So these tests run the server inside a private
network namespace that they create (``unshare --net``, which needs root):
it holds nothing but its own loopback interface, and every port is free
there, so the command line test can use the very ``:8025`` users type.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.cli_support import skip_unless_ci

SUBPROCESS_TIMEOUT = 60
SYSTEM_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _cannot_make_a_private_network():
    """Why a network namespace cannot be made here, or None if it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create a network namespace (unshare --net)"
    for program, package in (("unshare", "util-linux"), ("ip", "iproute2")):
        if shutil.which(program, path=SYSTEM_PATH) is None:
            return "%s not found (Debian package %s)" % (program, package)
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True,
                           timeout=SUBPROCESS_TIMEOUT, env=_environment())
    if probe.returncode != 0:
        return "unshare --net failed: %s" % probe.stderr.strip()
    return None


def _environment():
    env = dict(os.environ, PATH=SYSTEM_PATH, PYTHONUNBUFFERED="1")
    env.pop("PYTHONWARNINGS", None)
    return env


@pytest.fixture(scope="module")
def in_private_network():
    """Run ``python -c script args`` alone in a new network namespace; return its JSON."""
    reason = _cannot_make_a_private_network()
    if reason is not None:
        skip_unless_ci(reason)

    def run(script, *args):
        command = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
                   sys.executable, "-W", "error", "-c", textwrap.dedent(script), *args]
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=SUBPROCESS_TIMEOUT, env=_environment())
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    return run


# Sends one message through each of 127.0.0.1 and ::1 with smtplib; prints
# what every client got, what the server received, and its socket.
SERVER_SCRIPT = """
import json, smtplib, socket, sys, threading, types

import smtpd_compat

if sys.argv[1] == "without IPv6":
    fake = types.SimpleNamespace(**vars(socket))
    fake.has_ipv6 = False
    smtpd_compat.socket = fake

delivered = []
peers = []

class Server(smtpd_compat.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        delivered.append(rcpttos[0])
        peers.append([peer[0], len(peer)])

server = Server(("", 0), None, map={})
sock = server.socket
port = sock.getsockname()[1]
outcome = {"family": sock.family.name, "delivered": delivered, "clients": {},
           "peers": peers}
if sock.family == socket.AF_INET6:
    outcome["v6only"] = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)

def clients():
    for host, name in (("127.0.0.1", "ipv4"), ("::1", "ipv6")):
        try:
            with smtplib.SMTP(host, port, timeout=10) as client:
                client.sendmail("a@example.org", [name + "@example.org"], b"x")
            outcome["clients"][host] = "sent"
        except OSError as e:
            outcome["clients"][host] = type(e).__name__

thread = threading.Thread(target=clients)
thread.start()
while thread.is_alive():
    smtpd_compat.loop(timeout=0.05, map=server._map, count=10)
thread.join()
smtpd_compat.asyncore.close_all(server._map)
print(json.dumps(outcome))
"""


def test_empty_host_listens_on_ipv6_and_ipv4(in_private_network):
    outcome = in_private_network(SERVER_SCRIPT, "with IPv6")
    assert outcome["family"] == "AF_INET6" and outcome["v6only"] == 0
    assert outcome["clients"] == {"127.0.0.1": "sent", "::1": "sent"}
    assert outcome["delivered"] == ["ipv4@example.org", "ipv6@example.org"]
    # IPv4 clients as plain IPv4, not ::ffff:127.0.0.1 (issue 11)
    assert outcome["peers"] == [["127.0.0.1", 2], ["::1", 4]]


def test_empty_host_without_ipv6_listens_on_ipv4(in_private_network):
    outcome = in_private_network(SERVER_SCRIPT, "without IPv6")
    assert outcome["family"] == "AF_INET"
    assert outcome["clients"] == {"127.0.0.1": "sent", "::1": "ConnectionRefusedError"}
    assert outcome["delivered"] == ["ipv4@example.org"]


# `python -m smtpd_compat -n -c DebuggingServer [OPTIONS] :8025` as a user
# types it, one message through each of 127.0.0.1 and ::1, then SIGINT.
COMMAND_LINE_SCRIPT = """
import json, signal, smtplib, subprocess, sys, time

server = subprocess.Popen(
    [sys.executable, "-m", "smtpd_compat", "-n", "-c", "DebuggingServer", *sys.argv[1:],
     ":8025"],
    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
clients = {}
try:
    deadline = time.monotonic() + 20
    for host in ("127.0.0.1", "::1"):
        while True:
            try:
                with smtplib.SMTP(host, 8025, timeout=10) as client:
                    client.sendmail("a@example.org", ["b@example.org"],
                                    "Subject: via %s\\r\\n\\r\\nbody\\r\\n" % host)
                clients[host] = "sent"
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline or server.poll() is not None:
                    clients[host] = "refused"
                    break
                time.sleep(0.05)
finally:
    server.send_signal(signal.SIGINT)
    out, err = server.communicate(timeout=20)
print(json.dumps({"clients": clients, "stdout": out, "stderr": err,
                  "status": server.returncode}))
"""


# With --workers the listening socket is made by the supervisor and adopted
# by each worker: its IPv4 peers must be unmapped all the same (issue 11).
@pytest.mark.parametrize("options", [[], ["--workers", "2"]], ids=["one process", "workers"])
def test_command_line_empty_host_listens_on_every_interface(in_private_network, options):
    outcome = in_private_network(COMMAND_LINE_SCRIPT, *options)
    assert outcome["clients"] == {"127.0.0.1": "sent", "::1": "sent"}, outcome["stderr"]
    assert outcome["status"] == 0, outcome["stderr"]
    assert "Subject: via 127.0.0.1" in outcome["stdout"]
    assert "Subject: via ::1" in outcome["stdout"]
    assert "X-Peer: 127.0.0.1'" in outcome["stdout"]
    assert "X-Peer: ::1'" in outcome["stdout"]
    assert "::ffff:" not in outcome["stdout"]
