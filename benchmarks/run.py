#!/usr/bin/env python3
"""Benchmark smtpd_compat against CPython's smtpd, aiosmtpd and Postfix smtp-sink.

Every server runs as its own process on 127.0.0.1 with an OS-chosen port and
is driven by Postfix's ``smtp-source`` and by the raw-socket probes in
``probes.py``.  The runner prints one markdown table: the median over the
repeated runs, the min-max range, and the ratio against CPython 3.11's
stdlib smtpd of the same kind (sink or DebuggingServer) measured in the same
run.  Results go to ``benchmarks/results/`` as JSON and markdown.

    python3 benchmarks/run.py                 # everything, 5 repeats (~40 minutes)
    python3 benchmarks/run.py --quick         # a few minutes, smaller counts
    python3 benchmarks/run.py --servers 'compat-*,stdlib-*' --workloads seq,latency
    python3 benchmarks/run.py --list

See benchmarks/README.md for what each workload means.
"""

import argparse
import contextlib
import datetime
import fnmatch
import glob
import hashlib
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import probes  # noqa: E402

HOST = "127.0.0.1"
HELO_NAME = "bench.example"
MiB = 1024 * 1024
NOFILE_WANTED = 65536

# ---------------------------------------------------------------------------
# workloads and metrics

# The server's own CPU time per unit of work is kept beside each smtp-source
# metric under "<metric>:cpu": on a shared, noisy machine it is steadier than
# wall-clock throughput, and it is what a server costs its host.
CPU = ":cpu"
CPU_UNITS = {"seq": "us/msg", "par20": "us/msg", "par100": "us/msg", "big": "ms/MB"}

# metric id -> (label, unit, higher_is_better)
METRICS = {
    "seq": ("1 session x N small msgs", "msg/s", True),
    "par20": ("20 parallel sessions", "msg/s", True),
    "par100": ("100 parallel sessions", "msg/s", True),
    "big": ("10 MiB messages", "MB/s", True),
    "greet": ("connect to 220 greeting", "ms", False),
    "ehlo": ("EHLO round trip", "ms", False),
    "memory": ("RSS per idle connection", "KiB", False),
    "memory_ehlo": ("RSS per idle connection after EHLO", "KiB", False),
    "busy_greet": ("connect to 220 greeting, idle sessions open", "ms", False),
    "maxconn": ("concurrent idle sessions held", "sessions", True),
}
# workload id -> metrics it produces
WORKLOADS = {
    "seq": ["seq"],
    "par20": ["par20"],
    "par100": ["par100"],
    "big": ["big"],
    "latency": ["greet", "ehlo"],
    "memory": ["memory", "busy_greet"],
    "memory_ehlo": ["memory_ehlo"],
    "maxconn": ["maxconn"],
}
SMTP_SOURCE_WORKLOADS = {"seq", "par20", "par100", "big"}

FULL = dict(
    repeats=5,
    maxconn_repeats=1,
    seq_msgs=2000,
    par_msgs=2000,
    small_len=1024,
    big_msgs=5,
    big_len=10 * MiB,
    latency_samples=200,
    memory_conns=1000,
    busy_samples=50,
    maxconn_target=12000,
)
QUICK = dict(
    FULL,
    repeats=1,
    seq_msgs=300,
    par_msgs=300,
    big_msgs=2,
    latency_samples=40,
    memory_conns=300,
    busy_samples=20,
    maxconn_target=1500,
)


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# tools and interpreters


def run(cmd, timeout, **kw):
    """subprocess.run with a timeout, captured text output, never raising."""
    try:
        return subprocess.run(
            cmd, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            universal_newlines=True, **kw
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, -1, stdout=str(exc))


def find_postfix_tool(name):
    return shutil.which(name) or next(
        (p for p in ("/usr/sbin/" + name, "/usr/bin/" + name) if os.access(p, os.X_OK)),
        None,
    )


def ensure_postfix_tools(may_install):
    """Paths of smtp-source and smtp-sink, installing Debian's postfix if needed."""
    src, sink = find_postfix_tool("smtp-source"), find_postfix_tool("smtp-sink")
    if src and sink:
        return src, sink, None
    if not may_install:
        return src, sink, "smtp-source/smtp-sink not found and --no-install given"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return src, sink, "smtp-source/smtp-sink not found (needs root and apt-get to install)"
    log("installing Debian package postfix for smtp-source/smtp-sink")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["debconf-set-selections"], 60,
        input="postfix postfix/main_mailer_type select No configuration\n", env=env)
    res = run(["apt-get", "update"], 600, env=env)
    if res.returncode == 0:
        res = run(["apt-get", "install", "-y", "--no-install-recommends", "postfix"], 600, env=env)
    src, sink = find_postfix_tool("smtp-source"), find_postfix_tool("smtp-sink")
    if src and sink:
        return src, sink, None
    return src, sink, "apt-get install postfix failed: %s" % res.stdout[-300:]


def _version_key(name):
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.]", name))


def find_python(version, override=None):
    """An interpreter for 'X.Y': --python override, pyenv, PYENV_VERSION, PATH."""
    if override:
        return override
    roots = []
    try:
        out = subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True,
                             timeout=30).stdout.strip()
        if out:
            roots.append(out)
    except (OSError, subprocess.TimeoutExpired):
        pass
    if os.environ.get("PYENV_ROOT"):
        roots.append(os.environ["PYENV_ROOT"])
    for root in roots:
        cands = [d for d in glob.glob(os.path.join(root, "versions", version + ".*"))
                 if re.fullmatch(re.escape(version) + r"\.\d+", os.path.basename(d))]
        for d in sorted(cands, key=lambda d: _version_key(os.path.basename(d)), reverse=True):
            exe = os.path.join(d, "bin", "python" + version)
            if os.access(exe, os.X_OK):
                return exe
    # PYENV_VERSION puts pythonX.Y shims on PATH; plain PATH lookup covers it.
    return shutil.which("python" + version)


def package_fingerprint():
    """Hash of the sources that a pip install of the repo would take."""
    h = hashlib.sha256()
    files = sorted(glob.glob(os.path.join(REPO, "smtpd_compat", "**", "*.py"), recursive=True))
    files += [os.path.join(REPO, f) for f in ("setup.cfg", "pyproject.toml", "setup.py")]
    for f in files:
        if os.path.exists(f):
            h.update(os.path.relpath(f, REPO).encode())
            with open(f, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def ensure_venv(name, python, requirements, stamp, may_install, venv_root):
    """A venv under benchmarks/.venvs with ``requirements`` installed.

    Reinstalls when ``stamp`` (a fingerprint of what should be in it) changes.
    Returns (python_path, error_or_None).
    """
    path = os.path.join(venv_root, name)
    py = os.path.join(path, "bin", "python")
    stamp_file = os.path.join(path, ".bench-stamp")
    current = None
    if os.path.exists(stamp_file):
        with open(stamp_file) as fh:
            current = fh.read()
    if os.access(py, os.X_OK) and current == stamp:
        return py, None
    if not may_install:
        if os.access(py, os.X_OK):
            return py, None  # stale but usable; the user asked for no installs
        return None, "venv %s missing and --no-install given" % name
    if not os.access(py, os.X_OK):
        log("creating venv %s (%s)" % (name, python))
        res = run([python, "-m", "venv", path], 300)
        if res.returncode != 0:
            return None, "venv creation failed: %s" % res.stdout[-300:]
    log("installing into %s: %s" % (name, " ".join(requirements)))
    res = run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q",
               "--force-reinstall"] + requirements, 900)
    if res.returncode != 0:
        return None, "pip install failed: %s" % res.stdout[-500:]
    with open(stamp_file, "w") as fh:
        fh.write(stamp)
    return py, None


# ---------------------------------------------------------------------------
# servers


class ServerSpec:
    def __init__(self, sid, kind, family, pyver, describe):
        self.id = sid
        self.kind = kind  # "sink" or "debug": what it does with a message
        self.family = family  # compat, stdlib, aiosmtpd, smtp-sink
        self.pyver = pyver
        self.describe = describe
        self.argv = None
        self.env = {}
        self.error = "not prepared"
        self.version = None

    @property
    def baseline(self):
        return "stdlib-3.11-" + self.kind


def all_servers():
    specs = []
    for ver in ("3.11", "3.13"):
        specs.append(ServerSpec("compat-%s-sink" % ver, "sink", "compat", ver,
                                "smtpd_compat, SMTPServer subclass that drops messages"))
        specs.append(ServerSpec("compat-%s-debug" % ver, "debug", "compat", ver,
                                "smtpd_compat DebuggingServer, stdout to /dev/null"))
    specs.append(ServerSpec("stdlib-3.11-sink", "sink", "stdlib", "3.11",
                            "CPython 3.11 smtpd, SMTPServer subclass that drops messages"))
    specs.append(ServerSpec("stdlib-3.11-debug", "debug", "stdlib", "3.11",
                            "CPython 3.11 smtpd DebuggingServer, stdout to /dev/null"))
    for ver in ("3.11", "3.13"):
        specs.append(ServerSpec("aiosmtpd-%s-sink" % ver, "sink", "aiosmtpd", ver,
                                "aiosmtpd, handlers.Sink"))
        specs.append(ServerSpec("aiosmtpd-%s-debug" % ver, "debug", "aiosmtpd", ver,
                                "aiosmtpd, handlers.Debugging, stdout to /dev/null"))
    specs.append(ServerSpec("smtp-sink", "sink", "smtp-sink", None,
                            "Postfix smtp-sink (C, one process, epoll)"))
    return specs


def prepare(spec, ctx):
    """Fill in spec.argv/env or spec.error."""
    listen = "%s:0" % HOST
    pypath = {"PYTHONPATH": HERE}
    if spec.family == "smtp-sink":
        if not ctx["smtp_sink"]:
            spec.error = ctx["postfix_error"]
            return
        # -m: smtp-sink's own cap on simultaneous sessions (default 256).
        # -u: required when run as root; it drops to that user after bind().
        argv = [ctx["smtp_sink"], "-m", "20000", "-t", "300"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        spec.argv = argv + [listen, "100"]
        spec.version = ctx.get("postfix_version")
        spec.error = None
        return
    python = ctx["pythons"].get(spec.pyver)
    if not python:
        spec.error = "no Python %s found (pyenv root, PYENV_VERSION, PATH)" % spec.pyver
        return
    if spec.family == "stdlib":
        spec.argv = [python, "-m", "smtpd", "-n", "-c",
                     "bench_sink_stdlib.Sink" if spec.kind == "sink" else "DebuggingServer",
                     listen]
        spec.env = pypath
        spec.version = "Python %s" % ctx["python_versions"].get(spec.pyver, spec.pyver)
        check = run([python, "-W", "ignore", "-c", "import smtpd"], 60)
        spec.error = None if check.returncode == 0 else "no smtpd module in %s" % python
        return
    venv = ctx["venvs"].get((spec.family, spec.pyver))
    if venv is None:
        spec.error = "venv not built"
        return
    vpy, err = venv
    if err:
        spec.error = err
        return
    if spec.family == "compat":
        spec.argv = [vpy, "-m", "smtpd_compat", "-n", "-c",
                     "bench_sink_compat.Sink" if spec.kind == "sink" else "DebuggingServer",
                     listen]
        spec.env = pypath
        probe = "import smtpd_compat, bench_sink_compat; print(smtpd_compat.__file__)"
    else:
        handler = "aiosmtpd.handlers.Sink" if spec.kind == "sink" else "aiosmtpd.handlers.Debugging"
        spec.argv = [vpy, "-m", "aiosmtpd", "-n", "-l", listen, "-c", handler]
        probe = "import aiosmtpd; print(aiosmtpd.__version__)"
    check = run([vpy, "-c", probe], 60, env=dict(os.environ, **spec.env))
    if check.returncode != 0:
        spec.error = "import failed: %s" % check.stdout.strip().splitlines()[-1:]
        return
    spec.error = None
    if spec.family == "aiosmtpd":
        spec.version = "aiosmtpd %s on Python %s" % (
            check.stdout.strip(), ctx["python_versions"].get(spec.pyver))
    else:
        spec.version = "smtpd_compat %s on Python %s" % (
            ctx.get("compat_version", "?"), ctx["python_versions"].get(spec.pyver))


def _socket_inodes(pid):
    inodes = set()
    for fd in glob.glob("/proc/%d/fd/*" % pid):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for f in glob.glob("/proc/%d/task/*/children" % p):
            try:
                with open(f) as fh:
                    todo.extend(int(c) for c in fh.read().split())
            except OSError:
                pass
    return out


def listening_port(pid):
    """(port, owner_pid) of a TCP socket in LISTEN state held by pid or a child."""
    for p in _descendants(pid):
        inodes = _socket_inodes(p)
        if not inodes:
            continue
        for table in ("/proc/%d/net/tcp" % p, "/proc/%d/net/tcp6" % p):
            try:
                with open(table) as fh:
                    next(fh)
                    for line in fh:
                        f = line.split()
                        if f[3] == "0A" and f[9] in inodes:
                            return int(f[1].rsplit(":", 1)[1], 16), p
            except OSError:
                continue
    return None, None


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for %d" % pid)


def cpu_seconds(pid):
    """CPU time all threads of a process have used so far (nanosecond clock).

    /proc/PID/task/TID/schedstat counts on-CPU time in nanoseconds, finer than
    the 10 ms ticks of /proc/PID/stat; threads that ended are not counted,
    which does not matter for these single-threaded servers.
    """
    total = 0
    for f in glob.glob("/proc/%d/task/*/schedstat" % pid):
        try:
            with open(f) as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


class ServerProcess:
    """One server process, started with a raised fd limit, always stopped."""

    def __init__(self, spec, ctx):
        self.spec, self.ctx = spec, ctx
        self.proc = None
        self.port = self.pid = None
        self.errfile = tempfile.TemporaryFile()

    def _preexec(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(NOFILE_WANTED, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
        cpus = self.ctx.get("server_cpus")
        if cpus:
            os.sched_setaffinity(0, cpus)

    def __enter__(self):
        env = dict(os.environ, **self.spec.env)
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        argv = self.ctx.get("wrap", {}).get(self.spec.id, []) + self.spec.argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.errfile, env=env, preexec_fn=self._preexec,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._raise("exited with %s before listening" % self.proc.returncode)
            self.port, self.pid = listening_port(self.proc.pid)
            if self.port:
                return self
            time.sleep(0.05)
        self._raise("not listening after 30 s")

    def alive(self):
        return self.proc.poll() is None

    def stderr_tail(self, n=400):
        self.errfile.seek(0)
        return self.errfile.read().decode("utf-8", "replace")[-n:]

    def _raise(self, why):
        self.__exit__()
        raise RuntimeError("%s: %s: %s" % (self.spec.id, why, self.stderr_tail()))

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            # SIGINT first: the asyncore CLIs catch KeyboardInterrupt and
            # exit cleanly, which lets a wrapping profiler write its output.
            for sig, wait in ((signal.SIGINT, 5), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        return False


# ---------------------------------------------------------------------------
# measurements: each returns {metric: value} and may add notes


class Failed(Exception):
    pass


def smtp_source(ctx, srv, args, notes):
    """Run smtp-source; returns (messages completed, seconds, server CPU seconds).

    ``-c`` makes smtp-source print a running count of completed DATA
    transactions, so a slow server is measured over the time budget instead
    of holding the whole suite up: at the budget the client is stopped and
    the rate is what completed so far.
    """
    cmd = [ctx["smtp_source"], "-c", "-M", HELO_NAME] + args + ["%s:%d" % (HOST, srv.port)]
    budget = ctx["budget"]
    err = tempfile.TemporaryFile()
    cpu0 = cpu_seconds(srv.pid)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    done, tail, stopped = 0, b"", False
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        while True:
            elapsed = time.perf_counter() - t0
            if elapsed > budget:
                stopped = True
                break
            ready, _, _ = select.select([proc.stdout], [], [], min(0.2, budget - elapsed))
            if ready:
                chunk = proc.stdout.read() or b""
                if not chunk and proc.poll() is not None:
                    break
                tail = (tail + chunk)[-64:]
                counts = re.findall(rb"(\d+)\r", tail)
                if counts:
                    done = int(counts[-1])
            elif proc.poll() is not None:
                chunk = proc.stdout.read() or b""
                tail = (tail + chunk)[-64:]
                counts = re.findall(rb"(\d+)\r", tail)
                done = int(counts[-1]) if counts else done
                break
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(srv.pid) - cpu0 if srv.alive() else None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()
    err.seek(0)
    errors = err.read().decode("utf-8", "replace").strip()
    if not srv.alive():
        raise Failed("server exited: %s" % srv.stderr_tail())
    if stopped:
        if not done:
            raise Failed("no message completed within the %gs budget" % budget)
        notes.append("stopped at the %gs budget after %d messages" % (budget, done))
        return done, elapsed, cpu
    if proc.returncode != 0 or errors:
        raise Failed("smtp-source rc=%s: %s" % (proc.returncode, errors[-300:]))
    return done, elapsed, cpu


def w_seq(ctx, srv, p, notes):
    n, t, cpu = smtp_source(ctx, srv, ["-s", "1", "-d", "-m", str(p["seq_msgs"]),
                                       "-l", str(p["small_len"])], notes)
    return {"seq": n / t, "seq" + CPU: cpu / n * 1e6}


def _par(ctx, srv, p, sessions, notes):
    n, t, cpu = smtp_source(ctx, srv, ["-s", str(sessions), "-m", str(p["par_msgs"]),
                                       "-l", str(p["small_len"])], notes)
    name = "par%d" % sessions
    return {name: n / t, name + CPU: cpu / n * 1e6}


def w_par20(ctx, srv, p, notes):
    return _par(ctx, srv, p, 20, notes)


def w_par100(ctx, srv, p, notes):
    return _par(ctx, srv, p, 100, notes)


def w_big(ctx, srv, p, notes):
    size = p["big_len"]
    n, t, cpu = smtp_source(ctx, srv, ["-s", "1", "-d", "-m", str(p["big_msgs"]),
                                       "-l", str(size)], notes)
    return {"big": n * size / t / 1e6, "big" + CPU: cpu * 1e3 / (n * size / 1e6)}


def w_latency(ctx, srv, p, notes):
    try:
        r = probes.latency(HOST, srv.port, p["latency_samples"])
    except (probes.ProbeError, OSError) as exc:
        raise Failed("latency probe: %s" % exc) from None
    return {"greet": r["greet_ms"], "ehlo": r["ehlo_ms"]}


@contextlib.contextmanager
def _idle_sessions(ctx, srv, p, ehlo=None):
    """Open ``memory_conns`` idle sessions; the RSS per session (KiB) while they are open."""
    target = p["memory_conns"]
    # Warm up: one full session, so lazily imported code is already counted.
    try:
        probes.latency(HOST, srv.port, 3)
    except (probes.ProbeError, OSError) as exc:
        raise Failed("warm-up: %s" % exc) from None
    time.sleep(0.3)
    before = rss_kib(srv.pid)
    with probes.IdleSwarm(HOST, srv.port, ehlo=ehlo) as swarm:
        held, reason = swarm.ramp(target, time.monotonic() + ctx["timeout"], srv.alive)
        if held < target:
            raise Failed("held %d of %d: %s" % (held, target, reason))
        failure = swarm.settle(0.5)
        if failure:
            raise Failed(failure)
        yield (rss_kib(srv.pid) - before) / target


def w_memory(ctx, srv, p, notes):
    with _idle_sessions(ctx, srv, p) as per_session:
        # A new client's wait while the server holds all those sessions: an
        # event loop that visits every connection per pass slows down here.
        try:
            busy = probes.latency(HOST, srv.port, p["busy_samples"])
        except (probes.ProbeError, OSError) as exc:
            raise Failed("latency with %d idle sessions: %s" % (
                p["memory_conns"], exc)) from None
    return {"memory": per_session, "busy_greet": busy["greet_ms"]}


def w_memory_ehlo(ctx, srv, p, notes):
    # Sessions that said EHLO and went quiet: what per-session state the
    # greeting adds (ESMTP limits, attributes set at EHLO) shows here.
    with _idle_sessions(ctx, srv, p, ehlo=HELO_NAME) as per_session:
        return {"memory_ehlo": per_session}


def w_maxconn(ctx, srv, p, notes):
    target = p["maxconn_target"]
    with probes.IdleSwarm(HOST, srv.port) as swarm:
        t0 = time.monotonic()
        held, reason = swarm.ramp(target, t0 + ctx["maxconn_time"], srv.alive)
        if held >= target:
            failure = swarm.settle(2.0)
            if failure:
                reason = failure
        held = len(swarm.greeted)
        peak = swarm.peak
        took = time.monotonic() - t0
        marks = swarm.marks
    if not srv.alive():
        reason = "%s; server exited: %s" % (reason, srv.stderr_tail(160).strip().splitlines()[-1:])
    pace = ""
    if len(marks) >= 2:
        # How the accept rate holds up as sessions pile up.
        pace = "; first 1000 in %.1f s, last 1000 in %.1f s" % (
            marks[0] - t0, marks[-1] - marks[-2])
    notes.append("peak %d, held %d, stopped: %s (%.0f s%s)" % (
        peak, held, reason, took, pace))
    # The peak is the result: how many idle sessions were open and greeted at
    # once before the first refusal, drop, crash or the target.
    return {"maxconn": peak}


RUNNERS = {
    "seq": w_seq,
    "par20": w_par20,
    "par100": w_par100,
    "big": w_big,
    "latency": w_latency,
    "memory": w_memory,
    "memory_ehlo": w_memory_ehlo,
    "maxconn": w_maxconn,
}


# ---------------------------------------------------------------------------
# reporting


def fmt(value, unit):
    if value is None:
        return "-"
    if unit == "sessions":
        return "%d" % value
    if value >= 100:
        return "%.0f" % value
    if value >= 10:
        return "%.1f" % value
    return "%.2f" % value


def _stats(vals):
    if not vals:
        return {}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def _ratio(vals, base):
    if vals and base and statistics.median(base):
        return statistics.median(vals) / statistics.median(base)
    return None


def summarize(results, specs):
    """Rows: one per (metric, server) with median, min, max and ratios."""
    rows = []
    for metric, (label, unit, higher) in METRICS.items():
        per = results.get(metric, {})
        for spec in specs:
            r = per.get(spec.id)
            if not r:
                continue
            base = per.get(spec.baseline, {})
            row = {"metric": metric, "label": label, "unit": unit,
                   "higher_is_better": higher, "server": spec.id,
                   "n": len(r["samples"]), "errors": r["errors"], "notes": r["notes"],
                   "ratio": _ratio(r["samples"], base.get("samples"))}
            row.update(_stats(r["samples"]))
            if r.get("cpu"):
                row["cpu"] = _stats(r["cpu"])
                row["cpu"]["unit"] = CPU_UNITS[metric]
                row["cpu"]["ratio"] = _ratio(r["cpu"], base.get("cpu"))
            rows.append(row)
    return rows


def _fmt_ratio(ratio):
    if ratio is None:
        return "-"
    return ("%.2fx" if ratio >= 0.095 else "%.3fx") % ratio


def _merge_notes(notes):
    """One line per kind of note: numbers that differ between runs become ranges."""
    groups = {}
    for note in notes:
        parts = re.split(r"(\d+(?:\.\d+)?)", note)
        groups.setdefault(tuple(parts[0::2]), []).append(parts[1::2])
    merged = []
    for texts, numbers in groups.items():
        out = []
        for i, text in enumerate(texts):
            out.append(text)
            if i < len(texts) - 1:
                vals = [n[i] for n in numbers]
                lo, hi = min(vals, key=float), max(vals, key=float)
                out.append(lo if lo == hi else "%s-%s" % (lo, hi))
        line = "".join(out)
        merged.append(line + (" (%d runs)" % len(numbers) if len(numbers) > 1 else ""))
    return merged


def markdown(rows, meta):
    out = ["| workload | server | median | min-max | n | vs stdlib 3.11 "
           "| server CPU | CPU vs stdlib 3.11 |",
           "|---|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        arrow = "higher is better" if r["higher_is_better"] else "lower is better"
        wl = "%s, %s (%s)" % (r["label"], r["unit"], arrow)
        if "median" in r:
            med = fmt(r["median"], r["unit"])
            rng = "%s-%s" % (fmt(r["min"], r["unit"]), fmt(r["max"], r["unit"]))
            if r["errors"]:
                med += " (%d failed)" % len(r["errors"])
        else:
            med, rng = "failed", "-"
        cpu, cpu_ratio = "-", "-"
        if r.get("cpu"):
            cpu = "%s %s" % (fmt(r["cpu"]["median"], ""), r["cpu"]["unit"])
            cpu_ratio = _fmt_ratio(r["cpu"]["ratio"])
        out.append("| %s | %s | %s | %s | %d | %s | %s | %s |" % (
            wl, r["server"], med, rng, r["n"], _fmt_ratio(r["ratio"]), cpu, cpu_ratio))
    notes = []
    for r in rows:
        for e in r["errors"][:2]:
            notes.append("- %s / %s: failed: %s" % (r["metric"], r["server"], e))
        for n in _merge_notes(r["notes"]):
            notes.append("- %s / %s: %s" % (r["metric"], r["server"], n))
    text = "\n".join(out)
    if notes:
        text += "\n\nNotes:\n\n" + "\n".join(notes)
    return text


def render(meta, rows):
    """The whole markdown report: machine, servers, table, notes."""
    header = "Benchmark %s, %s; %s CPUs (kernel %s), pinning: %s; %s." % (
        meta["date"], meta["cpu"], meta["cpus"], meta["kernel"], meta["pinning"],
        meta["workload_details"])
    servers = "\n".join("- `%s`: %s (%s)" % (sid, s["describe"], s["version"] or s["error"])
                        for sid, s in meta["servers"].items())
    return "%s\n\nServers:\n\n%s\n\n%s\n" % (header, servers, markdown(rows, meta))


def report_from(path):
    """Print (again) the markdown report of a saved JSON result."""
    with open(path) as fh:
        doc = json.load(fh)
    print(render(doc["meta"], doc["summary"]))
    return 0


def describe_params(p):
    return (
        "seq: smtp-source -s 1 -d -m {seq_msgs} -l {small_len} (one session); "
        "parN: smtp-source -s N -m {par_msgs} -l {small_len} (a new session per message); "
        "big: smtp-source -s 1 -d -m {big_msgs} -l {big_len}; "
        "latency: {latency_samples} fresh sessions; memory: {memory_conns} idle sessions; "
        "maxconn: ramp to {maxconn_target} idle sessions"
    ).format(**p)


# ---------------------------------------------------------------------------
# main


def pick(names, patterns, what):
    if not patterns:
        return list(names)
    chosen = []
    for pat in patterns.split(","):
        pat = pat.strip()
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise SystemExit("no %s matches %r; known: %s" % (what, pat, ", ".join(names)))
        chosen += [h for h in hits if h not in chosen]
    return [n for n in names if n in chosen]


def raise_own_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(NOFILE_WANTED, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", help="comma-separated ids or glob patterns (default: all)")
    ap.add_argument("--workloads", help="comma-separated: " + ",".join(WORKLOADS))
    ap.add_argument("--repeats", type=int, help="runs per server and workload")
    ap.add_argument("--maxconn-repeats", type=int, help="runs of maxconn (default 1)")
    ap.add_argument("--quick", action="store_true", help="1 repeat and small counts")
    ap.add_argument("--messages", type=int, help="messages for seq/par20/par100")
    ap.add_argument("--max-conns", type=int, help="maxconn ramp target (default 12000)")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds one smtp-source run may take; a slower server is "
                         "measured on what it completed by then")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="limit for each probe (latency, memory), seconds")
    ap.add_argument("--maxconn-time", type=float, default=480.0,
                    help="limit for one maxconn ramp, seconds")
    ap.add_argument("--python", action="append", default=[], metavar="X.Y=PATH",
                    help="use this interpreter for Python X.Y")
    ap.add_argument("--no-install", action="store_true",
                    help="never run apt-get or pip; skip what is missing")
    ap.add_argument("--pin", choices=("same", "split", "none"), default="same",
                    help="CPU placement: 'same' puts server and clients on one CPU "
                         "(default: steadiest on small VMs), 'split' gives the server "
                         "its own CPU, 'none' leaves it to the scheduler")
    ap.add_argument("--profile", metavar="SERVER",
                    help="run SERVER under py-spy (installed into its venv) and "
                         "write a flame graph per workload to the results dir")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="results directory")
    ap.add_argument("--list", action="store_true", help="list servers and workloads")
    ap.add_argument("--report", metavar="JSON",
                    help="only print the markdown report of a saved result")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        return report_from(args.report)
    specs_all = all_servers()
    if args.list:
        for s in specs_all:
            print("%-20s %s" % (s.id, s.describe))
        print()
        for w, ms in WORKLOADS.items():
            print("%-10s %s" % (w, "; ".join("%s (%s)" % METRICS[m][:2] for m in ms)))
        return 0

    params = dict(QUICK if args.quick else FULL)
    if args.repeats:
        params["repeats"] = args.repeats
    if args.maxconn_repeats:
        params["maxconn_repeats"] = args.maxconn_repeats
    if args.messages:
        params["seq_msgs"] = params["par_msgs"] = args.messages
    if args.max_conns:
        params["maxconn_target"] = args.max_conns

    wanted_ids = pick([s.id for s in specs_all], args.servers, "server")
    workloads = pick(list(WORKLOADS), args.workloads, "workload")
    # Ratios need the stdlib baselines: measure them even if not asked for.
    base_ids = {s.baseline for s in specs_all if s.id in wanted_ids}
    specs = [s for s in specs_all if s.id in wanted_ids or s.id in base_ids]

    nofile = raise_own_nofile()
    ctx = {"timeout": args.timeout, "maxconn_time": args.maxconn_time,
           "budget": args.budget}
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin == "same" or (args.pin == "split" and len(cpus) < 2):
        # Round trips between two processes on one CPU are a context switch;
        # across CPUs they are a cross-CPU wake-up, which on a VM is slow and
        # erratic.  The servers are single-threaded, so one CPU is all they use.
        ctx["server_cpus"] = {cpus[-1]}
        os.sched_setaffinity(0, {cpus[-1]})
        ctx["pinning"] = "server and clients on CPU %d" % cpus[-1]
    elif args.pin == "split":
        ctx["server_cpus"] = {cpus[0]}
        os.sched_setaffinity(0, set(cpus[1:]))  # runner, probes and smtp-source
        ctx["pinning"] = "server on CPU %d, clients on CPU %s" % (
            cpus[0], ",".join(map(str, cpus[1:])))
    else:
        ctx["pinning"] = "none"

    # tools
    need_postfix = any(w in SMTP_SOURCE_WORKLOADS for w in workloads) or any(
        s.family == "smtp-sink" for s in specs)
    src = sink = None
    postfix_error = "not needed"
    if need_postfix:
        src, sink, postfix_error = ensure_postfix_tools(not args.no_install)
        if postfix_error:
            log("SKIPPING smtp-source workloads / smtp-sink: %s" % postfix_error)
    ctx.update(smtp_source=src, smtp_sink=sink, postfix_error=postfix_error)
    if sink:
        res = run(["dpkg-query", "-W", "-f", "${Version}", "postfix"], 30)
        ctx["postfix_version"] = "Postfix %s" % (res.stdout.strip() if res.returncode == 0 else "?")

    overrides = dict(o.split("=", 1) for o in args.python)
    ctx["pythons"], ctx["python_versions"] = {}, {}
    for ver in sorted({s.pyver for s in specs if s.pyver}):
        exe = find_python(ver, overrides.get(ver))
        if exe:
            res = run([exe, "-c", "import platform; print(platform.python_version())"], 60)
            if res.returncode == 0:
                ctx["pythons"][ver] = exe
                ctx["python_versions"][ver] = res.stdout.strip()

    venv_root = os.path.join(HERE, ".venvs")
    os.makedirs(venv_root, exist_ok=True)
    ctx["venvs"] = {}
    fp = package_fingerprint()
    for fam, ver in sorted({(s.family, s.pyver) for s in specs
                            if s.family in ("compat", "aiosmtpd")}):
        py = ctx["pythons"].get(ver)
        if not py:
            ctx["venvs"][(fam, ver)] = (None, "no Python %s found" % ver)
            continue
        prof = ["py-spy"] if args.profile and fnmatch.fnmatchcase(
            args.profile, "%s-%s-*" % (fam, ver)) else []
        if fam == "compat":
            reqs, stamp = [REPO] + prof, "repo " + fp + " ".join(prof)
        else:
            reqs, stamp = ["aiosmtpd"] + prof, "aiosmtpd " + " ".join(prof)
        ctx["venvs"][(fam, ver)] = ensure_venv("%s-%s" % (fam, ver), py, reqs, stamp,
                                                not args.no_install, venv_root)
    try:
        ctx["compat_version"] = subprocess.run(
            ["git", "-C", REPO, "describe", "--always", "--dirty"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, universal_newlines=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        ctx["compat_version"] = "?"

    for s in specs:
        prepare(s, ctx)
        if s.error:
            log("server %s unavailable: %s" % (s.id, s.error))
    if args.profile:
        spec = next((s for s in specs if s.id == args.profile), None)
        venv = ctx["venvs"].get((spec.family, spec.pyver)) if spec else None
        if not venv or not venv[0]:
            raise SystemExit("--profile needs a compat-* or aiosmtpd-* server id")
        pyspy = os.path.join(os.path.dirname(venv[0]), "py-spy")
        ctx["profile_cmd"] = (spec.id, pyspy)
    live = [s for s in specs if not s.error]

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    meta = {
        "date": stamp,
        "params": params,
        "workload_details": describe_params(params),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "pinning": ctx["pinning"],
        "kernel": platform.release(),
        "nofile": list(nofile),
        "runner_python": platform.python_version(),
        "servers": {s.id: {"describe": s.describe, "kind": s.kind, "version": s.version,
                           "baseline": s.baseline, "error": s.error} for s in specs},
        "postfix": postfix_error if postfix_error not in (None, "not needed") else ctx.get(
            "postfix_version"),
    }
    results = {m: {} for m in METRICS}
    for s in live:
        for w in workloads:
            for m in WORKLOADS[w]:
                results[m][s.id] = {"samples": [], "cpu": [], "errors": [], "notes": []}

    def save():
        rows = summarize(results, specs)
        doc = {"meta": meta, "results": results, "summary": rows}
        for name in (stamp, "latest"):
            with open(os.path.join(args.out, name + ".json"), "w") as fh:
                json.dump(doc, fh, indent=1)
        return rows

    t_start = time.monotonic()
    for w in workloads:
        if w in SMTP_SOURCE_WORKLOADS and not ctx["smtp_source"]:
            log("skip %s: %s" % (w, postfix_error))
            continue
        reps = params["maxconn_repeats"] if w == "maxconn" else params["repeats"]
        # Repeats outermost and servers inside, so slow drift of the machine
        # spreads over all servers instead of biasing one.
        for rep in range(reps):
            for s in live:
                measure(ctx, s, w, rep, reps, params, results, args)
                save()
    rows = save()
    text = render(meta, rows)
    for name in (stamp, "latest"):
        with open(os.path.join(args.out, name + ".md"), "w") as fh:
            fh.write(text)
    print(text)
    log("done in %.0f s; results in %s/%s.{json,md}" % (
        time.monotonic() - t_start, os.path.relpath(args.out), stamp))
    return 0


def measure(ctx, spec, w, rep, reps, params, results, args):
    notes = []
    wrap = {}
    prof = ctx.get("profile_cmd")
    if prof and prof[0] == spec.id and rep == 0:
        out = os.path.join(args.out, "profile-%s-%s.txt" % (spec.id, w))
        wrap[spec.id] = [prof[1], "record", "--format", "raw", "-o", out, "-r", "250", "--"]
        notes.append("profiled with py-spy: %s" % os.path.basename(out))
    ctx["wrap"] = wrap
    t0 = time.monotonic()
    try:
        with ServerProcess(spec, ctx) as srv:
            values = RUNNERS[w](ctx, srv, params, notes)
        for m, v in values.items():
            if m.endswith(CPU):
                results[m[:-len(CPU)]][spec.id]["cpu"].append(v)
            else:
                results[m][spec.id]["samples"].append(v)
        shown = ", ".join(
            "%s=%s %s" % (m, fmt(v, ""), CPU_UNITS[m[:-len(CPU)]]) if m.endswith(CPU)
            else "%s=%s %s" % (m, fmt(v, METRICS[m][1]), METRICS[m][1])
            for m, v in values.items())
        log("%-8s %d/%d %-18s %s (%.1f s)" % (w, rep + 1, reps, spec.id, shown,
                                             time.monotonic() - t0))
    except (Failed, RuntimeError, OSError) as exc:
        for m in WORKLOADS[w]:
            results[m][spec.id]["errors"].append(str(exc)[:500])
        log("%-8s %d/%d %-18s FAILED: %s" % (w, rep + 1, reps, spec.id, str(exc)[:300]))
    for m in WORKLOADS[w]:
        results[m][spec.id]["notes"].extend(notes)
    if wrap:
        summarize_profile(out)


def summarize_profile(path, top=25):
    """Self and inclusive sample shares per function from py-spy's raw output."""
    if not os.path.exists(path):
        log("no profile written to %s" % path)
        return
    own, incl, total = {}, {}, 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            if frames:
                own[frames[-1]] = own.get(frames[-1], 0) + n
            for f in set(frames):
                incl[f] = incl.get(f, 0) + n
    lines = ["%d samples from %s" % (total, os.path.basename(path)), "", "self%  function"]
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append("%5.1f  %s" % (100.0 * n / total, f))
    lines += ["", "incl%  function"]
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        lines.append("%5.1f  %s" % (100.0 * n / total, f))
    with open(path[:-4] + ".top.txt", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    log("profile summary: %s" % (path[:-4] + ".top.txt"))


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
