"""Messages per second on ONE session: pipelined with --modern, or in lockstep.

Three servers, each a fresh process on 127.0.0.1 with an OS-chosen port:

* ``stdlib``: CPython 3.11's ``python -m smtpd`` (bench_sink_stdlib.Sink);
* ``compat``: ``python -m smtpd_compat`` (bench_sink_compat.Sink), defaults;
* ``compat --modern``: the same with ``--modern`` (PIPELINING offered).

The client is a raw socket in this process.  In lockstep (smtplib's way, and
the only way without PIPELINING) it waits for each reply: MAIL, RCPT, DATA,
message, four round trips per message.  Pipelined (RFC 2920) it sends
``MAIL RCPT DATA`` in one write and reads three replies, then the message
and its final dot together with the next message's ``MAIL RCPT DATA``
("the actual transfer of message content is explicitly allowed to be the
first command in a group"): two round trips per message.

    python3 benchmarks/pipelining.py [--messages N] [--repeats R] [--pin same|none]
        [--python-compat PATH] [--python-stdlib PATH]

``--pin same`` (the default) runs the servers and this client on one CPU,
as ``run.py`` does: across two CPUs of a small VM every round trip is a
cross-CPU wake-up, and the lockstep figures swing several-fold.

Prints a markdown table: the median rate over the repeats, its min-max, and
the ratio against CPython's smtpd in lockstep.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BODY = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n" + b"x" * 200 + b"\r\n"
ENVELOPE = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(argv, env, cpus=None):
    port = free_port()
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    process = subprocess.Popen(argv + ["127.0.0.1:%d" % port], env=env, preexec_fn=preexec,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode()) from None
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("server did not start: %r" % argv)


def stop(process):
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Replies:
    """Reads final reply lines from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def read(self, count):
        lines = []
        while len(lines) < count:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                self.buffer += chunk
                continue
            line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            if line[3:4] != b"-":
                lines.append(line)
        return lines


def expect(lines, codes):
    got = [line[:3] for line in lines]
    if got != codes:
        raise RuntimeError("expected %r, got %r" % (codes, lines))


def session(port, messages, pipelined):
    """Send *messages* on one session; return messages per second."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        replies = Replies(sock)
        replies.read(1)
        sock.sendall(b"EHLO bench.example\r\n")
        replies.read(1)
        started = time.perf_counter()
        if pipelined:
            sock.sendall(ENVELOPE)
            expect(replies.read(3), [b"250", b"250", b"354"])
            for index in range(messages):
                last = index == messages - 1
                sock.sendall(BODY + b".\r\n" + (b"QUIT\r\n" if last else ENVELOPE))
                expect(replies.read(2 if last else 4),
                       [b"250", b"221"] if last else [b"250", b"250", b"250", b"354"])
        else:
            for _ in range(messages):
                for line, code in ((b"MAIL FROM:<a@example.com>\r\n", b"250"),
                                   (b"RCPT TO:<b@example.com>\r\n", b"250"),
                                   (b"DATA\r\n", b"354"),
                                   (BODY + b".\r\n", b"250")):
                    sock.sendall(line)
                    expect(replies.read(1), [code])
            sock.sendall(b"QUIT\r\n")
            expect(replies.read(1), [b"221"])
        elapsed = time.perf_counter() - started
    return messages / elapsed


def find_python(version, override):
    if override:
        return override
    found = shutil.which("python" + version)
    if found:
        return found
    pyenv = os.path.expanduser("~/.pyenv/versions")
    for name in sorted(os.listdir(pyenv)) if os.path.isdir(pyenv) else ():
        if name.startswith(version + "."):
            return os.path.join(pyenv, name, "bin", "python" + version)
    raise SystemExit("no Python %s found; pass --python-%s" % (
        version, "stdlib" if version == "3.11" else "compat"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--python-compat", default=sys.executable)
    parser.add_argument("--python-stdlib", default=None)
    parser.add_argument("--pin", choices=("same", "none"), default="same")
    args = parser.parse_args()
    cpus = None
    if args.pin == "same" and hasattr(os, "sched_setaffinity"):
        cpus = {max(os.sched_getaffinity(0))}
        os.sched_setaffinity(0, cpus)
    stdlib = find_python("3.11", args.python_stdlib)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, ROOT]))
    cases = [
        ("stdlib smtpd (3.11), lockstep", [stdlib, "-m", "smtpd", "-n", "-c",
                                           "bench_sink_stdlib.Sink"], False),
        ("smtpd_compat, lockstep", [args.python_compat, "-m", "smtpd_compat", "-n", "-c",
                                    "bench_sink_compat.Sink"], False),
        ("smtpd_compat --modern, lockstep", [args.python_compat, "-m", "smtpd_compat", "-n",
                                             "-c", "bench_sink_compat.Sink", "--modern"],
         False),
        ("smtpd_compat --modern, pipelined", [args.python_compat, "-m", "smtpd_compat", "-n",
                                              "-c", "bench_sink_compat.Sink", "--modern"],
         True),
    ]
    results = {}
    for repeat in range(args.repeats):
        for name, argv, pipelined in cases:
            process, port = start(argv, env, cpus)
            try:
                rate = session(port, args.messages, pipelined)
            finally:
                stop(process)
            results.setdefault(name, []).append(rate)
            print("repeat %d: %-34s %8.0f msg/s" % (repeat + 1, name, rate),
                  file=sys.stderr, flush=True)
    baseline = statistics.median(results[cases[0][0]])
    print("| %d messages, one session, %d repeats, pin %s | msg/s (median) | min-max "
          "| vs stdlib |" % (args.messages, args.repeats, args.pin))
    print("|---|---:|---:|---:|")
    for name, _, _ in cases:
        rates = results[name]
        median = statistics.median(rates)
        print("| %s | %.0f | %.0f-%.0f | %.2fx |" % (
            name, median, min(rates), max(rates), median / baseline))


if __name__ == "__main__":
    main()
