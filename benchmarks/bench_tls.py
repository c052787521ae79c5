#!/usr/bin/env python3
"""TLS throughput: smtpd_compat against aiosmtpd 1.4.6, same certificate, same run (issue 15).

Three figures, each the median of interleaved repeats (every server sees
the same machine load):

* ``starttls-par20``: messages per second with 20 sessions in parallel, a
  new connection and a new TLS session (a full handshake, no resumption)
  for every message: connect, EHLO, STARTTLS, handshake, EHLO, MAIL, RCPT,
  DATA (1 KiB), QUIT.  Also the server's CPU time per message.
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
self-signed EC P-256 certificate made with ``openssl`` at start.  The client
is this process: asyncio streams for the parallel sessions, a blocking TLS
socket for the bulk transfer.  Every server is stopped by its PID.

    python3 benchmarks/bench_tls.py [--messages 600] [--big 5] [--repeats 3] [--line-length 76]
"""

import argparse
import asyncio
import multiprocessing
import os
import resource
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


class Server:
    """One server process on a free port, stopped by its PID."""

    def __init__(self, name: str, argv_for_port) -> None:
        self.name = name
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=HERE)
        self.process = subprocess.Popen(argv_for_port(self.port), env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
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


def starttls_rate(server: Server, cafile: str, messages: int, sessions: int, clients: int):
    """(messages per second, server and client CPU microseconds per message).

    The sessions are spread over *clients* processes, so that the client's
    own handshakes are not all that limits the rate.  Client and server
    share the machine's cores: the client's CPU per message says how much
    of the rate is the client's.
    """
    cpu = server.cpu_seconds()
    client_cpu = _children_cpu()
    started = time.monotonic()
    processes = [multiprocessing.Process(
        target=_client_process,
        args=(server.port, cafile, messages // clients, sessions // clients))
        for _ in range(clients)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            sys.exit("a client process failed")
    messages = messages // clients * clients
    elapsed = time.monotonic() - started
    client_cpu = _children_cpu() - client_cpu
    return (messages / elapsed, (server.cpu_seconds() - cpu) / messages * 1e6,
            client_cpu / messages * 1e6)


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
        started, cpu = time.monotonic(), server.cpu_seconds()
        client_cpu = time.thread_time()
        for _ in range(count):
            sock.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
            for code in (b"250", b"250", b"354"):
                _read_reply(stream, code)
            sock.sendall(body)
            _read_reply(stream, b"250")
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
                        help="client processes for the STARTTLS sessions")
    args = parser.parse_args()
    compat_python, aiosmtpd_python = venv_pythons()
    with tempfile.TemporaryDirectory() as workdir:
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
                server = Server(name, argv)
                try:
                    rate, cpu, client_cpu = starttls_rate(
                        server, cert, args.messages, args.sessions, args.clients)
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
    print("\nmedians of %d interleaved runs; %d messages per STARTTLS run (%d client "
          "processes), %d x 10 MiB per bulk run, lines of %d octets"
          % (args.repeats, args.messages, args.clients, args.big, args.line_length))
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
