"""DebuggingServer's output, compared byte for byte with CPython 3.11's.

Both servers run as subprocesses (``python3.11 -m smtpd -n -c
DebuggingServer`` and ``python -m smtpd_compat -n -c DebuggingServer``),
get the same messages from smtplib, and their stdout must be identical.
CPython runs unbuffered (``-u``) so that it too can be stopped by a signal
without losing output; smtpd_compat runs as it would for a user, and must
flush each message itself.
"""

import signal
import smtplib
import subprocess
import textwrap
import time

import pytest

from tests.cli_support import (
    END_OF_MESSAGE,
    STOP_TIMEOUT,
    accepts,
    child_env,
    compat_command,
    cpython311,
    free_port,
    require_tool,
    running_server,
)

pytestmark = pytest.mark.timeout(180)

SENDER = "sender@example.com"
RECIPIENTS = ["rcpt@example.com"]

# (description, message bytes as given to smtplib.sendmail, MAIL options);
# a fourth item, if present, is the envelope (sender, recipients).
COMMON_MESSAGES = [
    ("headers and body",
     b"From: sender@example.com\r\nTo: rcpt@example.com\r\nSubject: hello\r\n"
     b"\r\nFirst line of the body.\r\nSecond line.\r\n", []),
    ("no header separator",
     b"Just a line of text\r\nand another, but no empty line at all", []),
    ("empty header block",
     b"\r\nThe message starts with an empty line.\r\n", []),
    ("blank lines and trailing spaces",
     b"Subject: blanks\r\n\r\n\r\n   \r\nafter blank lines   \r\n\r\n\r\n", []),
    ("dots",
     b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n...three\r\nmid.dle\r\n.", []),
    ("bare CR and LF",
     b"Subject: bare\r\n\r\none\ntwo\rthree\r\n", []),
    ("headers only",
     b"Subject: only a header\r\nX-Other: value", []),
    ("tab and quotes",
     b"Subject: 'quoted' \"double\"\r\n\r\n\ttab\\backslash\r\n", []),
]

BYTES_MESSAGES = COMMON_MESSAGES + [
    ("8-bit body with BODY=8BITMIME",
     b"Subject: caf\xc3\xa9\r\n\r\n\xff\xfe\x80 raw bytes\r\nna\xc3\xafve\r\n",
     ["BODY=8BITMIME"]),
    ("BODY=7BIT", b"Subject: seven\r\n\r\nplain\r\n", ["BODY=7BIT"]),
]

SMTPUTF8_MESSAGES = BYTES_MESSAGES + [
    ("SMTPUTF8 and BODY=8BITMIME",
     "Subject: \u00fcml\u00e4ut\r\nFrom: j\u00f6rg@example.com\r\n\r\n"
     "gr\u00fc\u00dfe \u2603\r\n".encode("utf-8"),
     ["SMTPUTF8", "BODY=8BITMIME"],
     ("j\u00f6rg@example.com", ["\u00fc@example.com", "rcpt@example.com"])),
    ("SMTPUTF8 alone", b"Subject: only smtputf8\r\n\r\nbody\r\n", ["SMTPUTF8"]),
]

# decode_data=True: the server offers no 8BITMIME, the data is UTF-8 text
# (str.splitlines also splits at form feed, U+2028 and friends).
DECODED_MESSAGES = COMMON_MESSAGES + [
    ("UTF-8 text",
     "Subject: caf\u00e9\r\n\r\nna\u00efve \u2603 text\r\n".encode("utf-8"), []),
    ("unicode line breaks",
     "Subject: breaks\r\n\r\nform\x0cfeed\x1cfs\u2028ls\u2029ps\x85nel\r\n"
     .encode("utf-8"), []),
]

SERVERS_MODULE = textwrap.dedent("""\
    import {module} as smtpd


    class DecodingDebuggingServer(smtpd.DebuggingServer):
        def __init__(self, *args, **kwargs):
            kwargs["decode_data"] = True
            super().__init__(*args, **kwargs)
    """)


@pytest.fixture
def server_modules(tmp_path):
    """A directory with ``refservers`` (on smtpd) and ``compatservers`` (on smtpd_compat)."""
    (tmp_path / "refservers.py").write_text(SERVERS_MODULE.format(module="smtpd"))
    (tmp_path / "compatservers.py").write_text(
        SERVERS_MODULE.format(module="smtpd_compat"))
    return str(tmp_path)


def _send(port, messages):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for _, data, options, *envelope in messages:
            sender, recipients = envelope[0] if envelope else (SENDER, RECIPIENTS)
            refused = client.sendmail(sender, recipients, data, mail_options=options)
            assert refused == {}
        client.quit()


def _run(argv_for_port, messages, path, package=True):
    """Start a server, send *messages*, wait for their output, stop it; return stdout."""
    env = child_env({"PYTHONIOENCODING": "utf-8"}, pythonpath=[path], package=package)
    with running_server(argv_for_port, env=env, cwd=path) as (server, port):
        _send(port, messages)
        output = server.wait_for_stdout(END_OF_MESSAGE, count=len(messages))
        server.stop()
    return output


MODES = {
    # mode: (smtpd options, messages)
    # -s 0: no size limit, what smtpd's CLI did without -s (smtpd_compat's
    # CLI applies the documented 33554432 then; see test_output_shapes).
    "bytes": (["-s", "0", "-c", "DebuggingServer"], BYTES_MESSAGES),
    "smtputf8": (["-s", "0", "-u", "-c", "DebuggingServer"], SMTPUTF8_MESSAGES),
    # With a size limit the server offers SIZE, so smtplib adds SIZE=<n>.
    "size": (["-s", "100000", "-c", "DebuggingServer"], BYTES_MESSAGES),
    "decode_data": (["-c", "{module}.DecodingDebuggingServer"], DECODED_MESSAGES),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_output_is_cpythons(mode, server_modules):
    options, messages = MODES[mode]
    python311 = cpython311()

    def reference(port):
        return [python311, "-u", "-m", "smtpd", "-n",
                *[o.format(module="refservers") for o in options], "127.0.0.1:%d" % port]

    def compat(port):
        return compat_command("-n", *[o.format(module="compatservers") for o in options],
                              "127.0.0.1:%d" % port)

    expected = _run(reference, messages, server_modules, package=False)
    got = _run(compat, messages, server_modules)
    assert got.count(b"---------- MESSAGE FOLLOWS ----------\n") == len(messages)
    assert got.splitlines() == expected.splitlines()
    assert got == expected


def test_output_shapes(server_modules):
    """What the comparison pins, spelled out for one message in each mode."""
    message = [("m", b"Subject: hi\r\n\r\nbody\r\n", ["BODY=8BITMIME"])]
    out = _run(lambda port: compat_command("-n", "-c", "DebuggingServer",
                                           "127.0.0.1:%d" % port),
               message, server_modules)
    # Without -s the server offers SIZE 33554432, so smtplib sends SIZE=<n>.
    assert out == (b"---------- MESSAGE FOLLOWS ----------\n"
                   b"mail options: ['SIZE=21', 'BODY=8BITMIME']\n"
                   b"b'Subject: hi'\n"
                   b"b'X-Peer: 127.0.0.1'\n"
                   b"b''\n"
                   b"b'body'\n"
                   b"------------ END MESSAGE ------------\n")
    message = [("m", b"Subject: hi\r\n\r\nbody\r\n", [])]
    out = _run(lambda port: compat_command(
        "-n", "-c", "compatservers.DecodingDebuggingServer", "127.0.0.1:%d" % port),
        message, server_modules)
    assert out == (b"---------- MESSAGE FOLLOWS ----------\n"
                   b"Subject: hi\n"
                   b"X-Peer: 127.0.0.1\n"
                   b"\n"
                   b"body\n"
                   b"------------ END MESSAGE ------------\n")


def test_each_message_is_on_the_pipe_while_the_server_runs(tmp_path):
    """Output is flushed per message: a reader of the pipe sees it at once."""
    command = lambda port: compat_command("-n", "-c", "DebuggingServer",  # noqa: E731
                                          "127.0.0.1:%d" % port)
    with running_server(command, env=child_env(), cwd=str(tmp_path)) as (server, port):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(SENDER, RECIPIENTS, b"Subject: first\r\n\r\none\r\n")
            first = server.wait_for_stdout(END_OF_MESSAGE)
            assert b"b'Subject: first'\n" in first
            assert server.running
            client.sendmail(SENDER, RECIPIENTS, b"Subject: second\r\n\r\ntwo\r\n")
            second = server.wait_for_stdout(END_OF_MESSAGE, count=2)
            assert b"b'Subject: second'\n" in second
            assert server.running
            # The client is still connected: the output did not wait for QUIT.
            assert client.noop()[0] == 250
        assert server.stop() == 0
    assert server.stdout.count(END_OF_MESSAGE) == 2


def test_debug_flag_prints_the_session_to_stderr(tmp_path):
    command = lambda port: compat_command("-n", "-d", "-c", "DebuggingServer",  # noqa: E731
                                          "127.0.0.1:%d" % port)
    with running_server(command, env=child_env(), cwd=str(tmp_path)) as (server, port):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(SENDER, RECIPIENTS, b"Subject: debug\r\n\r\nbody\r\n")
        server.wait_for_stdout(END_OF_MESSAGE)
        server.wait_for_stderr(b"recips: ['rcpt@example.com']")
        assert server.stop() == 0
    assert b"DebuggingServer started at" in server.stderr
    assert b"Peer: ('127.0.0.1', " in server.stderr
    assert b"sender: sender@example.com" in server.stderr
    assert b"Traceback" not in server.stderr


def test_piped_through_tee(tmp_path):
    """``python -m smtpd_compat ... | tee log``: each message is in the log at once."""
    tee = require_tool("tee", "coreutils")
    log = tmp_path / "log"
    port = free_port()
    server = subprocess.Popen(compat_command("-n", "-c", "DebuggingServer",
                                            "127.0.0.1:%d" % port),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=child_env(), cwd=str(tmp_path))
    try:
        copier = subprocess.Popen([tee, str(log)], stdin=server.stdout,
                                  stdout=subprocess.DEVNULL)
        server.stdout.close()
        try:
            deadline = time.monotonic() + 20
            while not accepts("127.0.0.1", port):
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail(SENDER, RECIPIENTS, b"Subject: teed\r\n\r\nbody\r\n")
                while END_OF_MESSAGE not in log.read_bytes():
                    assert time.monotonic() < deadline, log.read_bytes()
                    time.sleep(0.05)
                assert server.poll() is None
            server.send_signal(signal.SIGTERM)
            assert server.wait(STOP_TIMEOUT) == 0
            assert copier.wait(STOP_TIMEOUT) == 0
        finally:
            if copier.poll() is None:
                copier.kill()
                copier.wait()
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    assert b"b'Subject: teed'\n" in log.read_bytes()
