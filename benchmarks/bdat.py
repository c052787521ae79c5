"""BDAT (CHUNKING) against DATA: throughput for 10 MiB messages, one session.

    python3 benchmarks/bdat.py [--python PATH] [--messages 5] [--repeats 5]
                               [--size 10485760] [--chunk 0]

Starts ``python -m smtpd_compat -n --chunking -c bench_sink_compat.Sink``
(this repository first on ``PYTHONPATH``) on a free loopback port, and in one
session per run sends the same messages once through DATA (dot-stuffed, as
a client must) and once through BDAT (``--chunk 0``: each message as one
``BDAT n LAST``, as Exim sends a body; ``--chunk N``: chunks of N octets).
The message is text: 78-octet lines, one line in 50 starting with a dot.
Runs alternate DATA and BDAT so that both see the same machine load.
Prints the median MB/s (10^6 octets of message per second of wall time)
and the server's CPU time per MB (from /proc/PID/stat), and their ratios.
Standard library only.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(HERE)
CRLF = b"\r\n"


def message(size: int) -> bytes:
    """About *size* octets of text with CRLF line ends; some lines start with a dot."""
    lines = []
    total = 0
    number = 0
    while total < size:
        prefix = b"." if number % 50 == 0 else b""
        line = prefix + (b"line %08d " % number) + b"x" * 62
        line = line[:76]
        lines.append(line)
        total += len(line) + 2
        number += 1
    return CRLF.join(lines) + CRLF


def dot_stuffed(data: bytes) -> bytes:
    stuffed = data.replace(CRLF + b".", CRLF + b"..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def read_reply(sock, buffer=b""):
    """Read one complete reply; return (code, rest of the buffer)."""
    while True:
        while CRLF in buffer:
            line, buffer = buffer.split(CRLF, 1)
            if line[3:4] != b"-":
                return line[:3], buffer
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("connection closed")
        buffer += data


def expect(sock, code: bytes, buffer=b""):
    got, buffer = read_reply(sock, buffer)
    if got != code:
        raise RuntimeError("expected %r, got %r" % (code, got))
    return buffer


def session(port: int, data: bytes, messages: int, mode: str, chunk: int) -> float:
    """Send *messages* copies of *data* in one session; return the seconds it took."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = expect(sock, b"220")
    sock.sendall(b"EHLO bench.example\r\n")
    buffer = expect(sock, b"250", buffer)
    stuffed = dot_stuffed(data) + b".\r\n" if mode == "DATA" else None
    started = time.perf_counter()
    for _ in range(messages):
        sock.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        buffer = expect(sock, b"250", buffer)
        buffer = expect(sock, b"250", buffer)
        if mode == "DATA":
            sock.sendall(b"DATA\r\n")
            buffer = expect(sock, b"354", buffer)
            sock.sendall(stuffed)
            buffer = expect(sock, b"250", buffer)
        else:
            size = chunk or len(data)
            pieces = [data[i:i + size] for i in range(0, len(data), size)]
            for index, piece in enumerate(pieces):
                last = b" LAST" if index == len(pieces) - 1 else b""
                sock.sendall(b"BDAT %d%s\r\n" % (len(piece), last) + piece)
            for _ in pieces:  # replies read at the end: the client pipelines
                buffer = expect(sock, b"250", buffer)
    elapsed = time.perf_counter() - started
    sock.sendall(b"QUIT\r\n")
    expect(sock, b"221", buffer)
    sock.close()
    return elapsed


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(python: str):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPOSITORY, HERE]))
    server = subprocess.Popen(
        [python, "-m", "smtpd_compat", "-n", "--chunking", "-s", "0",
         "-c", "bench_sink_compat.Sink", "127.0.0.1:%d" % port],
        env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("the server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--chunk", type=int, default=0)
    args = parser.parse_args()
    data = message(args.size)
    megabytes = len(data) * args.messages / 1e6
    server, port = start_server(args.python)
    rates = {"DATA": [], "BDAT": []}
    cpu = {"DATA": [], "BDAT": []}
    try:
        session(port, data, 1, "DATA", args.chunk)  # warm-up
        for _ in range(args.repeats):
            for mode in ("DATA", "BDAT"):
                before = cpu_seconds(server.pid)
                elapsed = session(port, data, args.messages, mode, args.chunk)
                cpu[mode].append((cpu_seconds(server.pid) - before) * 1000 / megabytes)
                rates[mode].append(megabytes / elapsed)
    finally:
        server.terminate()
        server.wait(30)
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"],
                             stdout=subprocess.PIPE).stdout.decode().strip()
    chunking = "one BDAT LAST per message" if not args.chunk else "%d-octet chunks" % args.chunk
    print("Python %s, %d x %d-octet messages per run, %d runs, %s" % (
        version, args.messages, len(data), args.repeats, chunking))
    print("| | DATA | BDAT | BDAT/DATA |")
    print("|---|---|---|---|")
    data_rate, bdat_rate = statistics.median(rates["DATA"]), statistics.median(rates["BDAT"])
    data_cpu, bdat_cpu = statistics.median(cpu["DATA"]), statistics.median(cpu["BDAT"])
    print("| MB/s (median, min-max) | %.0f (%.0f-%.0f) | %.0f (%.0f-%.0f) | %.2fx |" % (
        data_rate, min(rates["DATA"]), max(rates["DATA"]),
        bdat_rate, min(rates["BDAT"]), max(rates["BDAT"]), bdat_rate / data_rate))
    print("| server CPU ms/MB (median) | %.2f | %.2f | %.2fx less |" % (
        data_cpu, bdat_cpu, data_cpu / bdat_cpu if bdat_cpu else float("inf")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
