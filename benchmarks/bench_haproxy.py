#!/usr/bin/env python3
"""Messages per second through HAProxy (PROXY protocol v1) against direct (issue 11).

Starts, on 127.0.0.1 with free ports, a do-nothing smtpd_compat sink
(``bench_sink_compat.Sink``) taken directly, and a second one with
``--proxy-protocol v1`` behind Debian's HAProxy in TCP mode with
``send-proxy``; drives each with Postfix's ``smtp-source`` (20 parallel
sessions, one message each) and prints the median rate of each and their
ratio (goal: at least 0.8).  Every process is stopped by its PID.

    python3 benchmarks/bench_haproxy.py [--messages 2000] [--repeats 3]
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HOST = "127.0.0.1"
START_TIMEOUT = 30.0

HAPROXY_CONFIG = """
global
    maxconn 1024

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend smtp
    bind {host}:{frontend}
    default_backend mx

backend mx
    server b1 {host}:{backend} send-proxy
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit("a server exited at start: %r" % process.args)
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit("nothing listens on port %d" % port)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


def start_sink(port: int, *options: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, REPO]))
    process = subprocess.Popen(
        [sys.executable, "-m", "smtpd_compat", "-n", "-c", "bench_sink_compat.Sink",
         *options, "%s:%d" % (HOST, port)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, process)
    return process


def rate(smtp_source: str, port: int, messages: int, sessions: int) -> float:
    """Messages per second that smtp-source delivered to *port*."""
    started = time.monotonic()
    subprocess.run([smtp_source, "-s", str(sessions), "-m", str(messages), "-f",
                    "a@example.org", "-t", "b@example.org", "%s:%d" % (HOST, port)],
                   check=True, stdin=subprocess.DEVNULL, timeout=600)
    return messages / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    smtp_source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    processes = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            direct_port, backend_port, frontend_port = free_port(), free_port(), free_port()
            processes.append(start_sink(direct_port))
            processes.append(start_sink(backend_port, "--proxy-protocol", "v1"))
            config = os.path.join(workdir, "haproxy.cfg")
            with open(config, "w") as f:
                f.write(HAPROXY_CONFIG.format(host=HOST, frontend=frontend_port,
                                              backend=backend_port))
            processes.append(subprocess.Popen([haproxy, "-db", "-f", config],
                                              stdin=subprocess.DEVNULL))
            wait_listening(frontend_port, processes[-1])
            direct, proxied = [], []
            for _ in range(args.repeats):  # interleaved: both see the same machine load
                direct.append(rate(smtp_source, direct_port, args.messages, args.sessions))
                proxied.append(rate(smtp_source, frontend_port, args.messages, args.sessions))
        finally:
            for process in reversed(processes):
                stop(process)
    d, p = statistics.median(direct), statistics.median(proxied)
    print("| path | msg/s (median of %d) | range |" % args.repeats)
    print("|---|---|---|")
    print("| direct | %.0f | %.0f-%.0f |" % (d, min(direct), max(direct)))
    print("| through HAProxy (send-proxy, v1) | %.0f | %.0f-%.0f |"
          % (p, min(proxied), max(proxied)))
    print("\nratio through HAProxy / direct: %.2f (goal >= 0.8)" % (p / d))


if __name__ == "__main__":
    main()
