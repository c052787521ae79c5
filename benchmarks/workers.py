#!/usr/bin/env python3
"""100 parallel sessions: ``--workers 2`` against one process.

Starts ``python -m smtpd_compat -n -c bench_sink_compat.Sink 127.0.0.1:0``
once without and once with ``--workers N`` (2 by default), drives each with
Postfix's ``smtp-source -s 100`` (a new session per message, as run.py's
``par100``) and prints messages per second, their ratio, and the CPU time
the server processes used per message.  Nothing is pinned to a CPU: the
point is to let the workers use every core.  The two kinds alternate
within each repeat so that drift of a shared machine spreads over both.

    python3 benchmarks/workers.py                  # 5 repeats of 2000 messages
    python3 benchmarks/workers.py --quick          # 1 repeat of 500
    python3 benchmarks/workers.py --python .tox/py313/bin/python --workers 4

The smtpd_compat under test is this checkout (put first on PYTHONPATH), so
the interpreter needs only ``pyasyncore``/``pyasynchat`` on 3.12+.  See
benchmarks/README.md for the figures.
"""

import argparse
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import run  # noqa: E402  (the runner's helpers: smtp-source, /proc readers)

SESSIONS = 100
SERVING_LINE = re.compile(rb"serving \S+:(\d+) with \d+ workers")


class Server:
    """The sink CLI, one process or a supervisor with workers; always stopped."""

    def __init__(self, python, workers):
        self.argv = [python, "-m", "smtpd_compat", "-n", "-c", "bench_sink_compat.Sink"]
        if workers:
            self.argv += ["--workers", str(workers)]
        self.argv.append("%s:0" % run.HOST)
        self.errfile = tempfile.TemporaryFile()
        self.proc = None
        self.port = None
        self.pid = None

    def __enter__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, HERE]))
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.errfile,
                                     env=env, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.alive():
            self.port, _ = run.listening_port(self.pid)
            if self.port and ("--workers" not in self.argv
                              or SERVING_LINE.search(self._stderr())):
                return self
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("%s did not start: %s" % (self.argv, self.stderr_tail()))

    def alive(self):
        return self.proc.poll() is None

    def _stderr(self):
        self.errfile.seek(0)
        return self.errfile.read()

    def stderr_tail(self, n=400):
        return self._stderr().decode("utf-8", "replace")[-n:]

    def cpu_seconds(self):
        """CPU time of the server and all its workers so far."""
        return sum(run.cpu_seconds(pid) for pid in run._descendants(self.pid))

    def __exit__(self, *exc_info):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return False


class _CpuOfAll:
    """What run.smtp_source reads of a server, with CPU summed over its workers."""

    def __init__(self, server):
        self.port, self.pid, self._server = server.port, server.pid, server

    def alive(self):
        return self._server.alive()

    def stderr_tail(self, n=400):
        return self._server.stderr_tail(n)


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(ctx, python, workers, messages):
    """(messages/s, server CPU us/msg, smtp-source CPU us/msg) of one run.

    The client's CPU is that of the children reaped meanwhile: smtp-source
    (the server is reaped only after).
    """
    with Server(python, workers) as server:
        cpu_before, client_before = server.cpu_seconds(), _children_cpu()
        done, seconds, _ = run.smtp_source(ctx, _CpuOfAll(server), [
            "-s", str(SESSIONS), "-m", str(messages), "-l", "1024"], [])
        cpu = server.cpu_seconds() - cpu_before
        client = _children_cpu() - client_before
    return done / seconds, cpu / done * 1e6, client / done * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="1 repeat of 500 messages")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.messages = 1, 500
    source, _, problem = run.ensure_postfix_tools(may_install=True)
    if problem:
        sys.exit(problem)
    ctx = {"smtp_source": source, "budget": 120.0}
    rates = {0: [], args.workers: []}  # 0: one process, no --workers
    cpus = {0: [], args.workers: []}
    client_cpus = {0: [], args.workers: []}
    for repeat in range(args.repeats):
        order = [0, args.workers] if repeat % 2 == 0 else [args.workers, 0]
        for workers in order:
            rate, cpu, client = measure(ctx, args.python, workers, args.messages)
            rates[workers].append(rate)
            cpus[workers].append(cpu)
            client_cpus[workers].append(client)
            run.log("repeat %d, %s: %.0f msg/s, server %.0f us CPU/msg, smtp-source %.0f" % (
                repeat + 1, "--workers %d" % workers if workers else "one process",
                rate, cpu, client))
    one, many = statistics.median(rates[0]), statistics.median(rates[args.workers])
    version = subprocess.run([args.python, "-c", "import platform; "
                              "print(platform.python_version())"],
                             stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    print("%d parallel sessions (smtp-source -s %d -m %d -l 1024), Python %s, %d CPUs, "
          "%s, median of %d:" % (SESSIONS, SESSIONS, args.messages, version,
                                 os.cpu_count() or 0, platform.machine(), args.repeats))
    print()
    print("| server | msg/s | min-max | server CPU per msg | smtp-source CPU per msg |")
    print("|---|--:|--:|--:|--:|")
    for workers, label in ((0, "one process"), (args.workers, "--workers %d" % args.workers)):
        print("| %s | %.0f | %.0f-%.0f | %.0f us | %.0f us |" % (
            label, statistics.median(rates[workers]), min(rates[workers]),
            max(rates[workers]), statistics.median(cpus[workers]),
            statistics.median(client_cpus[workers])))
    print()
    print("--workers %d / one process: %.2fx" % (args.workers, many / one))
    return 0


if __name__ == "__main__":
    sys.exit(main())
