"""Peak memory of a server while one big message arrives: streamed or whole.

    python3 benchmarks/bench_streaming_memory.py            # 1 GiB, each server
    python3 benchmarks/bench_streaming_memory.py --mib 256 --servers digest,maildir

Each server runs as the real CLI (``python -m smtpd_compat -n -c ...``) on a
loopback port the OS picks; the message goes over a raw socket, 1 MiB per
send; the figure is the growth of the server's peak RSS (``VmHWM`` in
/proc/PID/status) from after its first connection to after the 250.
Servers:

* ``digest``: a streaming server whose sink keeps only a SHA-256;
* ``maildir``: ``MaildirServer`` (spools to its ``tmp/``, then one file);
* ``whole``: ``process_message`` (smtpd's way: the whole message in memory).
"""

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import smtpd_compat
from smtpd_compat.delivery import MessageSink

MIB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class _Digest(MessageSink):
    def __init__(self):
        self.sha256 = hashlib.sha256()

    def write(self, data):
        self.sha256.update(data)

    def end(self):
        return "250 OK " + self.sha256.hexdigest()[:16]


class DigestServer(smtpd_compat.SMTPServer):
    """Streams every message into a SHA-256."""

    def begin_message(self, peer, mailfrom, rcpttos, **kwargs):
        return _Digest()


class WholeServer(smtpd_compat.SMTPServer):
    """smtpd's way: process_message gets the whole message."""

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return "250 OK " + hashlib.sha256(data).hexdigest()[:16]


def _peak_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise LookupError("VmHWM")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reply(sock):
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed: %r" % data)
        data += chunk
    return data


def measure(server_args, mib, workdir):
    """Peak RSS growth (KiB) and the seconds a *mib* MiB message took."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, ROOT]))
    argv = [sys.executable, "-m", "smtpd_compat", "-n", "-s", "0"] + server_args + [
        "127.0.0.1:%d" % port]
    server = subprocess.Popen(argv, env=env, cwd=workdir)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError as e:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("server did not start: %r" % argv) from e
                time.sleep(0.05)
        with sock:
            _reply(sock)
            before = _peak_rss_kib(server.pid)
            for command in (b"EHLO bench", b"MAIL FROM:<a@example.com>",
                            b"RCPT TO:<b@example.com>", b"DATA"):
                sock.sendall(command + b"\r\n")
                _reply(sock)
            block = (b"z" * 1022 + b"\r\n") * 1024
            started = time.monotonic()
            for _ in range(mib):
                sock.sendall(block)
            sock.sendall(b".\r\n")
            final = _reply(sock)
            took = time.monotonic() - started
            assert final.startswith(b"250"), final
            growth = _peak_rss_kib(server.pid) - before
            sock.sendall(b"QUIT\r\n")
            _reply(sock)
        return growth, took
    finally:
        server.terminate()
        server.wait(30)


SERVERS = {
    "digest": lambda workdir: ["-c", "bench_streaming_memory.DigestServer"],
    "maildir": lambda workdir: ["-c", "MaildirServer", "--maildir",
                                os.path.join(workdir, "Maildir")],
    "whole": lambda workdir: ["-c", "bench_streaming_memory.WholeServer"],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="message size in MiB")
    parser.add_argument("--servers", default="digest,maildir,whole")
    args = parser.parse_args(argv)
    print("| server | message | peak RSS growth | time |")
    print("|---|---|---|---|")
    for name in args.servers.split(","):
        with tempfile.TemporaryDirectory() as workdir:
            growth, took = measure(SERVERS[name](workdir), args.mib, workdir)
        print("| %s | %d MiB | %.1f MiB | %.1f s |" % (name, args.mib, growth / 1024, took))
    return 0


if __name__ == "__main__":
    sys.exit(main())
