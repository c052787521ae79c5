"""``--modern`` and the one-by-one extension flags (issue 14), with real clients."""

import socket
import subprocess

import pytest

import smtpd_compat
from smtpd_compat import _cli, _extensions
from tests.cli_support import (
    END_OF_MESSAGE,
    child_env,
    compat_command,
    require_tool,
    running_server,
)

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("argv, extensions", [
    ([], ()),
    (["--modern"], ("modern",)),
    (["--pipelining"], ("pipelining",)),
    (["--enhanced-status-codes"], ("enhanced_status_codes",)),
    (["--dsn", "--strict-line-endings"], ("dsn", "strict_line_endings")),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_flags_name_server_attributes(argv, extensions):
    assert smtpd_compat.parseargs(argv).extensions == extensions


def test_every_flag_sets_a_server_attribute_that_exists():
    server_class = smtpd_compat.SMTPServer
    for flag, name in _cli.EXTENSION_FLAGS.items():
        assert getattr(server_class, name) is False, flag
        assert flag in smtpd_compat.__doc__, flag
    assert set(_extensions.MODERN) <= set(_cli.EXTENSION_FLAGS.values())


def test_modern_server_from_the_command_line(monkeypatch):
    options = smtpd_compat.parseargs(["-n", "-c", "DebuggingServer", "--modern",
                                      "127.0.0.1:0"])
    server = _cli.make_server(options)
    try:
        assert server.modern is True
        assert type(server).modern is False
    finally:
        server.close()


def modern_debugging_server(*flags):
    return lambda port: compat_command("-n", "-c", "DebuggingServer", *flags,
                                       "127.0.0.1:%d" % port)


def ehlo_reply(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        stream = client.makefile("rb")
        stream.readline()
        client.sendall(b"EHLO client.example\r\n")
        lines = []
        while not lines or lines[-1][3:4] != b" ":
            lines.append(stream.readline())
        client.sendall(b"QUIT\r\n")
        stream.readline()
    return b"".join(lines)


@pytest.mark.parametrize("flags, keywords", [
    ((), []),
    (("--modern",), [b"PIPELINING", b"ENHANCEDSTATUSCODES", b"DSN"]),
    (("--dsn",), [b"DSN"]),
], ids=["none", "modern", "dsn"])
def test_ehlo_of_a_server_started_with_flags(flags, keywords, tmp_path):
    with running_server(modern_debugging_server(*flags), cwd=str(tmp_path),
                        env=child_env()) as (server, port):
        reply = ehlo_reply(port)
        assert server.stop() == 0
    for keyword in (b"PIPELINING", b"ENHANCEDSTATUSCODES", b"DSN"):
        assert (b"250-" + keyword + b"\r\n" in reply) == (keyword in keywords)


def test_swaks_pipelines_to_a_modern_server(tmp_path):
    swaks = require_tool("swaks", "swaks")
    with running_server(modern_debugging_server("--modern"), cwd=str(tmp_path),
                        env=child_env()) as (server, port):
        result = subprocess.run(
            [swaks, "--server", "127.0.0.1", "--port", str(port), "--pipeline",
             "--from", "sender@example.com", "--to", "a@example.com,b@example.com",
             "--helo", "client.example", "--body", "pipelined"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        transcript = result.stdout.decode(errors="replace")
        assert result.returncode == 0, transcript
        out = server.wait_for_stdout(END_OF_MESSAGE)
        assert server.stop() == 0
    lines = [line.strip() for line in transcript.splitlines()]
    commands = [i for i, line in enumerate(lines) if line.startswith("->")]
    mail = next(i for i in commands if "MAIL FROM" in lines[i])
    data = next(i for i in commands if lines[i] == "-> DATA")
    # swaks sent MAIL, both RCPTs and DATA before reading a reply (RFC 2920).
    assert all(lines[i].startswith("->") for i in range(mail, data + 1)), transcript
    assert "<-  250 2.1.0 OK" in lines and lines.count("<-  250 2.1.5 OK") == 2, transcript
    assert "<-  250 2.0.0 OK" in lines, transcript
    assert b"pipelined" in out
