#!/usr/bin/env python3
"""100 parallel sessions: ``--workers 2`` against one process.

Starts ``python -m smtpd_compat -n -c bench_sink_compat.Sink 127.0.0.1:0``
once without and once with ``--workers N`` (2 by default), drives each with
Postfix's ``smtp-source -s 100`` (a new session per message, as run.py's
``par100``) and prints messages per second, their ratio, and the CPU time
the server processes and smtp-source used per message.  A third kind runs N
separate one-process servers at once, each driven by its own smtp-source
with 1/N of the sessions and messages: the best split of the work this
machine allows, and so the ceiling for ``--workers`` while the client runs
on the same cores.  Nothing is pinned to a CPU: the point is to let the
workers use every core.  The kinds alternate within each repeat so that
drift of a shared machine spreads over all.

    python3 benchmarks/workers.py                  # 5 repeats of 2000 messages
    python3 benchmarks/workers.py --quick          # 1 repeat of 5000
    python3 benchmarks/workers.py --python .tox/py313/bin/python --workers 4
    python3 benchmarks/workers.py --memory         # RSS per idle session instead

With ``--memory`` it opens 600 idle sessions (greeted, then silent) against
each kind instead and prints the resident memory they add per session,
summed over the serving processes: the kernel spreads the sessions over the
workers, so a worker's cost per connection is the same figure.

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

import probes  # noqa: E402  (IdleSwarm: sessions that say nothing)
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

    def serving_pids(self):
        """The processes that hold sessions: the workers, or the one process."""
        children = run._descendants(self.pid)[1:]
        return children or [self.pid]

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


def measure_independent(ctx, python, count, messages):
    """The same for *count* separate one-process servers, each with its own client.

    Each smtp-source runs SESSIONS / count sessions and messages / count
    messages, at the same time: what this machine can do with the work split
    in the best way, the ceiling for --workers on it.
    """
    import contextlib
    import threading

    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(Server(python, 0)) for _ in range(count)]
        results = [None] * count
        cpu_before, client_before = [s.cpu_seconds() for s in servers], _children_cpu()

        def drive(index):
            results[index] = run.smtp_source(ctx, _CpuOfAll(servers[index]), [
                "-s", str(SESSIONS // count), "-m", str(messages // count), "-l", "1024"], [])

        threads = [threading.Thread(target=drive, args=(index,)) for index in range(count)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        cpu = sum(s.cpu_seconds() - before for s, before in zip(servers, cpu_before))
        client = _children_cpu() - client_before
    done = sum(result[0] for result in results)
    return done / seconds, cpu / done * 1e6, client / done * 1e6


IDLE_SESSIONS = 600


def measure_idle_memory(python, workers, sessions=IDLE_SESSIONS):
    """KiB of resident memory each idle session adds, summed over the serving processes."""
    with Server(python, workers) as server:
        probes.latency(run.HOST, server.port, 20)  # warm every worker up a little
        time.sleep(0.3)
        pids = server.serving_pids()
        before = sum(run.rss_kib(pid) for pid in pids)
        with probes.IdleSwarm(run.HOST, server.port) as swarm:
            held, reason = swarm.ramp(sessions, time.monotonic() + 60, server.alive)
            if held < sessions or swarm.settle(0.5):
                raise RuntimeError("held %d of %d idle sessions: %s" % (held, sessions, reason))
            after = sum(run.rss_kib(pid) for pid in pids)
    return (after - before) / sessions, len(pids)


def main_memory(args):
    kinds = [("one process", 0), ("--workers %d" % args.workers, args.workers)]
    per_session = {kind: [] for kind, _ in kinds}
    for repeat in range(args.repeats):
        for kind, workers in (kinds if repeat % 2 == 0 else kinds[::-1]):
            kib, processes = measure_idle_memory(args.python, workers)
            per_session[kind].append(kib)
            run.log("repeat %d, %s: %.2f KiB per idle session over %d process(es)"
                    % (repeat + 1, kind, kib, processes))
    print("%d idle sessions, median of %d:" % (IDLE_SESSIONS, args.repeats))
    print()
    print("| server | KiB per idle session | min-max |")
    print("|---|--:|--:|")
    for kind, _ in kinds:
        values = per_session[kind]
        print("| %s | %.2f | %.2f-%.2f |" % (kind, statistics.median(values),
                                            min(values), max(values)))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="1 repeat of 5000 messages")
    parser.add_argument("--memory", action="store_true",
                        help="measure RSS per idle session instead of the message rate")
    args = parser.parse_args(argv)
    if args.memory:
        return main_memory(args)
    if args.quick:
        args.repeats, args.messages = 1, 5000
    source, _, problem = run.ensure_postfix_tools(may_install=True)
    if problem:
        sys.exit(problem)
    ctx = {"smtp_source": source, "budget": 120.0}
    kinds = ["one process", "--workers %d" % args.workers,
             "%d separate processes, a client each" % args.workers]
    rates = {kind: [] for kind in kinds}
    cpus = {kind: [] for kind in kinds}
    client_cpus = {kind: [] for kind in kinds}
    for repeat in range(args.repeats):
        order = kinds if repeat % 2 == 0 else kinds[::-1]
        for kind in order:
            if kind == kinds[2]:
                rate, cpu, client = measure_independent(ctx, args.python, args.workers,
                                                        args.messages)
            else:
                workers = args.workers if kind == kinds[1] else 0
                rate, cpu, client = measure(ctx, args.python, workers, args.messages)
            rates[kind].append(rate)
            cpus[kind].append(cpu)
            client_cpus[kind].append(client)
            run.log("repeat %d, %s: %.0f msg/s, server %.0f us CPU/msg, smtp-source %.0f"
                    % (repeat + 1, kind, rate, cpu, client))
    one, many, ceiling = (statistics.median(rates[kind]) for kind in kinds)
    version = subprocess.run([args.python, "-c", "import platform; "
                              "print(platform.python_version())"],
                             stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    print("%d parallel sessions (smtp-source -s %d -m %d -l 1024), Python %s, %d CPUs, "
          "%s, median of %d:" % (SESSIONS, SESSIONS, args.messages, version,
                                 os.cpu_count() or 0, platform.machine(), args.repeats))
    print()
    print("| server | msg/s | min-max | server CPU per msg | smtp-source CPU per msg |")
    print("|---|--:|--:|--:|--:|")
    for kind in kinds:
        print("| %s | %.0f | %.0f-%.0f | %.0f us | %.0f us |" % (
            kind, statistics.median(rates[kind]), min(rates[kind]), max(rates[kind]),
            statistics.median(cpus[kind]), statistics.median(client_cpus[kind])))
    print()
    print("--workers %d / one process: %.2fx (the machine's ceiling with this client: "
          "%.2fx; --workers reached %.0f%% of it)" % (
              args.workers, many / one, ceiling / one, 100.0 * many / ceiling))
    return 0


if __name__ == "__main__":
    sys.exit(main())
