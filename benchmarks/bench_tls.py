#!/usr/bin/env python3
"""TLS throughput: smtpd_compat against aiosmtpd 1.4.6, same certificate, same run (issue 15).

Three figures, each the median of interleaved repeats (every server sees
the same machine load):

* ``starttls-par20``: messages per second with 20 sessions in parallel, a
  new connection and a new TLS session (a full handshake, no resumption)
  for every message: connect, EHLO, STARTTLS, handshake, EHLO, MAIL, RCPT,
  DATA (1 KiB), QUIT.  Also the server's and the client's CPU time per
  message.
* ``tls-big``: MB/s of 10 MiB messages sent one after the other over one
  STARTTLS session, lines of ``--line-length`` octets (998, RFC 5321's
  longest, by default; 76 is how base64 attachments come), with the
  server's CPU time per MB and the client's (a ready-made message sent with
  ``sendall``, so the client is not what limits the rate).
* ``plain-big``: the same without TLS, for smtpd_compat alone (the goal is
  TLS bulk at least 0.7 times our plaintext).

Servers, each started by its own command line as a user would (sinks that
keep nothing): ``python -m smtpd_compat -n -c bench_sink_compat.Sink
--tls-cert C --tls-key K`` and ``python -m aiosmtpd -n -c
aiosmtpd.handlers.Sink --tlscert C --tlskey K``, both on Python 3.13 in the
venvs ``run.py`` makes (``benchmarks/.venvs/compat-3.13`` and
``aiosmtpd146-3.13``, created on first use).  The certificate is one
self-signed EC P-256 certificate made with ``openssl`` at start.

The STARTTLS client is ``smtp_tls_load.c`` (``--client c``, the default),
compiled at start into a temporary directory, which needs a C compiler
(``cc``) and OpenSSL 3's headers (Debian: ``libssl-dev``): one epoll loop
over non-blocking sockets, lockstep on each session, the server's
certificate verified, no session cache and no tickets asked for.  Without
them the run says so and uses ``--client python``: asyncio streams in
``--clients`` processes, the same dialogue, which spend more CPU per message
than either server (about 1.1 ms) and so bound the rate.  The bulk client is this process, a
blocking TLS socket.

``--pin split`` (the default with two CPUs or more) runs each server on the
first CPU and the clients (this process, the client processes) on the
others, so that the rate is the server's and not the share of the cores it
gets; ``--pin none`` leaves the placement to the kernel.  Every server is
stopped by its PID.

    python3 benchmarks/bench_tls.py [--messages 600] [--big 5] [--repeats 3]
        [--line-length 76] [--client c|python] [--pin split|none]
"""

import argparse
import asyncio
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (the venvs and interpreters of the main benchmark)

HOST = "127.0.0.1"
LOAD_CLIENT = os.path.join(HERE, "smtp_tls_load.c")
MiB = 1024 * 1024
START_TIMEOUT = 30.0
AIOSMTPD = "aiosmtpd==1.4.6"
SMALL_BODY = b"Subject: bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 13


def big_body(line_length: int) -> bytes:
    """A 10 MiB message of lines of *line_length* octets (998: RFC 5321's longest)."""
    line = b"y" * line_length + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (10 * MiB // len(line))


def make_certificate(directory: str):
    """A self-signed EC certificate for localhost and 127.0.0.1: (cert, key)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def venv_pythons():
    python = run.find_python("3.13")
    if python is None:
        sys.exit("no Python 3.13 found")
    root = os.path.join(HERE, ".venvs")
    os.makedirs(root, exist_ok=True)
    compat, error = run.ensure_venv("compat-3.13", python, [run.REPO],
                                    "repo " + run.package_fingerprint(), True, root)
    if error:
        sys.exit(error)
    aiosmtpd, error = run.ensure_venv("aiosmtpd146-3.13", python, [AIOSMTPD], AIOSMTPD,
                                      True, root)
    if error:
        sys.exit(error)
    return compat, aiosmtpd


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def compile_load_client(directory: str):
    """(path of the compiled smtp_tls_load, None) or (None, why it could not be built)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc) found"
    binary = os.path.join(directory, "smtp_tls_load")
    built = subprocess.run([compiler, "-O2", "-o", binary, LOAD_CLIENT, "-lssl", "-lcrypto"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if built.returncode != 0:
        return None, ("cannot compile smtp_tls_load.c (needs OpenSSL 3 headers, Debian: "
                      "libssl-dev):\n" + built.stdout.decode(errors="replace")[-1000:])
    return binary, None


def pinned_to(cpus):
    """A preexec_fn that runs the child on *cpus* (all of its threads), or None."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


class Server:
    """One server process on a free port (on *cpus* if given), stopped by its PID."""

    def __init__(self, name: str, argv_for_port, cpus=None) -> None:
        self.name = name
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=HERE)
        self.process = subprocess.Popen(argv_for_port(self.port), env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL,
                                        preexec_fn=pinned_to(cpus))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                sys.exit("%s exited at start: %r" % (name, self.process.args))
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    sys.exit("%s does not listen" % name)
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        return run.cpu_seconds(self.process.pid)  # nanosecond clock, all threads

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(15)


# -- the client ---------------------------------------------------------------------

async def _reply(reader, code: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line.startswith(code):
            raise RuntimeError("expected %r, got %r" % (code, line))
        if line[3:4] != b"-":
            return


async def _command(reader, writer, line: bytes, code: bytes) -> None:
    writer.write(line)
    await _reply(reader, code)


async def _one_message(port: int, context: ssl.SSLContext) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        await _reply(reader, b"220")
        await _command(reader, writer, b"EHLO bench.example\r\n", b"250")
        await _command(reader, writer, b"STARTTLS\r\n", b"220")
        await writer.start_tls(context, server_hostname="localhost")
        await _command(reader, writer, b"EHLO bench.example\r\n", b"250")
        await _command(reader, writer, b"MAIL FROM:<a@example.org>\r\n", b"250")
        await _command(reader, writer, b"RCPT TO:<b@example.org>\r\n", b"250")
        await _command(reader, writer, b"DATA\r\n", b"354")
        await _command(reader, writer, SMALL_BODY + b".\r\n", b"250")
        await _command(reader, writer, b"QUIT\r\n", b"221")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


async def _parallel(port: int, context: ssl.SSLContext, messages: int, sessions: int) -> None:
    remaining = [messages]

    async def worker():
        while remaining[0] > 0:
            remaining[0] -= 1
            await _one_message(port, context)

    await asyncio.gather(*(worker() for _ in range(sessions)))


def _client_process(port: int, cafile: str, messages: int, sessions: int) -> None:
    context = ssl.create_default_context(cafile=cafile)
    asyncio.run(_parallel(port, context, messages, sessions))


def starttls_rate(server: Server, cafile: str, messages: int, sessions: int, clients: int,
                  load_client=None):
    """(messages per second, server and client CPU microseconds per message).

    The client is the compiled *load_client* if given (one process, one
    epoll loop for every session), else Python's asyncio in *clients* processes that
    share the sessions.  The client's CPU per message says whether it is
    what limits the rate.
    """
    cpu = server.cpu_seconds()
    client_cpu = _children_cpu()
    started = time.monotonic()
    if load_client is not None:
        _run_load_client(load_client, server.port, cafile, messages, sessions)
    else:
        messages = _run_python_clients(server.port, cafile, messages, sessions, clients)
    elapsed = time.monotonic() - started
    client_cpu = _children_cpu() - client_cpu
    return (messages / elapsed, (server.cpu_seconds() - cpu) / messages * 1e6,
            client_cpu / messages * 1e6)


def _run_load_client(binary: str, port: int, cafile: str, messages: int, sessions: int) -> None:
    done = subprocess.run([binary, HOST, str(port), cafile, str(messages), str(sessions)],
                          stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit("the load client failed (status %d)" % done.returncode)


def _run_python_clients(port: int, cafile: str, messages: int, sessions: int,
                        clients: int) -> int:
    """Runs the asyncio clients; returns how many messages they sent."""
    processes = [multiprocessing.Process(
        target=_client_process,
        args=(port, cafile, messages // clients, sessions // clients))
        for _ in range(clients)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            sys.exit("a client process failed")
    return messages // clients * clients


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the client processes, once joined
    return usage.ru_utime + usage.ru_stime


def _read_reply(stream, code: bytes) -> None:
    while True:
        line = stream.readline()
        if not line.startswith(code):
            raise RuntimeError("expected %r, got %r" % (code, line))
        if line[3:4] != b"-":
            return


def _send_message(sock, stream, body: bytes) -> None:
    sock.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    for code in (b"250", b"250", b"354"):
        _read_reply(stream, code)
    sock.sendall(body)
    _read_reply(stream, b"250")


def bulk_rate(server: Server, context, count: int, tls: bool, body: bytes):
    """(MB/s, server CPU ms per MB, client CPU ms per MB): *count* messages of *body*.

    The client is this process's own thread, a blocking socket sending the
    ready-made message with ``sendall``: its CPU time per MB shows that it
    is not what limits the rate.
    """
    sock = socket.create_connection((HOST, server.port), timeout=120)
    stream = sock.makefile("rb")
    try:
        _read_reply(stream, b"220")
        sock.sendall(b"EHLO bench.example\r\n")
        _read_reply(stream, b"250")
        if tls:
            sock.sendall(b"STARTTLS\r\n")
            _read_reply(stream, b"220")
            stream.close()
            sock = context.wrap_socket(sock, server_hostname="localhost")
            stream = sock.makefile("rb")
            sock.sendall(b"EHLO bench.example\r\n")
            _read_reply(stream, b"250")
        # One message before the clocks start, so that every figure is a
        # server's steady state: the first big message of a process pays for
        # fresh memory (page faults, 0.3-0.5 ms/MB), and the plaintext run
        # would otherwise always be the one that comes second.
        _send_message(sock, stream, body)
        started, cpu = time.monotonic(), server.cpu_seconds()
        client_cpu = time.thread_time()
        for _ in range(count):
            _send_message(sock, stream, body)
        elapsed, cpu = time.monotonic() - started, server.cpu_seconds() - cpu
        client_cpu = time.thread_time() - client_cpu
        sock.sendall(b"QUIT\r\n")
        _read_reply(stream, b"221")
    finally:
        stream.close()
        sock.close()
    megabytes = count * len(body) / MiB
    return megabytes / elapsed, cpu / megabytes * 1e3, client_cpu / megabytes * 1e3


# -- the run ------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--big", type=int, default=5, help="10 MiB messages per bulk run")
    parser.add_argument("--line-length", type=int, default=998,
                        help="octets per line of the 10 MiB messages (76: base64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2,
                        help="client processes for the STARTTLS sessions (--client python)")
    parser.add_argument("--client", choices=("c", "python"),
                        help="STARTTLS client: the compiled smtp_tls_load.c (default when it "
                        "builds) or Python's asyncio")
    cpus = sorted(os.sched_getaffinity(0))
    parser.add_argument("--pin", choices=("split", "none"),
                        default="split" if len(cpus) >= 2 else "none",
                        help="split: servers on the first CPU, clients on the others "
                        "(default with 2 CPUs or more)")
    args = parser.parse_args()
    if args.pin == "split" and len(cpus) < 2:
        parser.error("--pin split needs two CPUs")
    compat_python, aiosmtpd_python = venv_pythons()
    server_cpus = None
    if args.pin == "split":
        server_cpus = {cpus[0]}
        os.sched_setaffinity(0, set(cpus[1:]))  # this process: the clients and the bulk client
    args.pinning = ("servers on CPU %d, clients on CPU %s" % (
        cpus[0], ",".join(map(str, cpus[1:]))) if server_cpus else "not pinned")
    with tempfile.TemporaryDirectory() as workdir:
        load_client = None
        if args.client != "python":
            load_client, why = compile_load_client(workdir)
            if load_client is None:
                if args.client == "c":
                    sys.exit(why)
                print("%s; the STARTTLS client is Python's (--client python)" % why,
                      file=sys.stderr)
        args.client = "c" if load_client else "python"
        cert, key = make_certificate(workdir)
        context = ssl.create_default_context(cafile=cert)
        servers = {
            "smtpd_compat": lambda port: [
                compat_python, "-m", "smtpd_compat", "-n", "-c", "bench_sink_compat.Sink",
                "--tls-cert", cert, "--tls-key", key, "%s:%d" % (HOST, port)],
            "aiosmtpd 1.4.6": lambda port: [
                aiosmtpd_python, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink",
                "-l", "%s:%d" % (HOST, port), "--tlscert", cert, "--tlskey", key],
        }
        body = big_body(args.line_length) + b".\r\n"
        results = {name: {"rate": [], "cpu": [], "rate_client_cpu": [], "big": [],
                          "big_cpu": [], "client_cpu": []}
                   for name in servers}
        plain, plain_cpu = [], []
        for _ in range(args.repeats):
            for name, argv in servers.items():
                server = Server(name, argv, server_cpus)
                try:
                    rate, cpu, client_cpu = starttls_rate(
                        server, cert, args.messages, args.sessions, args.clients, load_client)
                    results[name]["rate"].append(rate)
                    results[name]["cpu"].append(cpu)
                    results[name]["rate_client_cpu"].append(client_cpu)
                    big, big_cpu, client_cpu = bulk_rate(server, context, args.big, True,
                                                         body)
                    results[name]["big"].append(big)
                    results[name]["big_cpu"].append(big_cpu)
                    results[name]["client_cpu"].append(client_cpu)
                    if name == "smtpd_compat":
                        big, big_cpu, _ = bulk_rate(server, context, args.big, False, body)
                        plain.append(big)
                        plain_cpu.append(big_cpu)
                finally:
                    server.stop()
    report(results, plain, plain_cpu, args)


def report(results, plain, plain_cpu, args) -> None:
    def cell(values, digits=0):
        return "%.*f (%.*f-%.*f)" % (digits, statistics.median(values), digits, min(values),
                                     digits, max(values))

    print("| server | STARTTLS msg/s, %d sessions, new TLS session per message "
          "| server CPU us/msg | client CPU us/msg | 10 MiB over STARTTLS, MB/s "
          "| server CPU ms/MB | client CPU ms/MB |" % args.sessions)
    print("|---|---|---|---|---|---|---|")
    for name, figures in results.items():
        print("| %s | %s | %s | %s | %s | %s | %s |" % (
            name, cell(figures["rate"]), cell(figures["cpu"]), cell(figures["rate_client_cpu"]),
            cell(figures["big"], 1), cell(figures["big_cpu"], 2),
            cell(figures["client_cpu"], 2)))
    print("| smtpd_compat, plaintext | | | | %s | %s | |" % (cell(plain, 1),
                                                         cell(plain_cpu, 2)))
    ours, theirs = results["smtpd_compat"], results["aiosmtpd 1.4.6"]
    median = statistics.median
    clients = ("C client smtp_tls_load" if args.client == "c"
               else "%d Python client processes" % args.clients)
    print("\nmedians of %d interleaved runs; %d messages per STARTTLS run (%s), %d x 10 MiB "
          "per bulk run, lines of %d octets; %s"
          % (args.repeats, args.messages, clients, args.big, args.line_length, args.pinning))
    print("STARTTLS msg/s, smtpd_compat / aiosmtpd: %.2f (goal >= 1.5)"
          % (median(ours["rate"]) / median(theirs["rate"])))
    print("server CPU per message, aiosmtpd / smtpd_compat: %.2f"
          % (median(theirs["cpu"]) / median(ours["cpu"])))
    print("10 MiB over TLS, smtpd_compat / aiosmtpd: %.2f (goal >= 1.5)"
          % (median(ours["big"]) / median(theirs["big"])))
    print("server CPU per MB over TLS, aiosmtpd / smtpd_compat: %.2f"
          % (median(theirs["big_cpu"]) / median(ours["big_cpu"])))
    print("smtpd_compat 10 MiB over TLS / plaintext: %.2f (goal >= 0.7)"
          % (median(ours["big"]) / median(plain)))


if __name__ == "__main__":
    main()
