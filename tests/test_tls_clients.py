"""Real clients over STARTTLS and implicit TLS against ``python -m smtpd_compat``.

swaks, curl, msmtp, ``openssl s_client`` and smtplib each send one message
to a DebuggingServer started with ``--tls-cert``/``--tls-key``: over
STARTTLS with ``--require-starttls`` (a client that stayed in plaintext
would get 530s), and over implicit TLS with ``--smtps``.  Every client
verifies the certificate against the test run's certificate authority.
The command line's refusals of bad TLS options are here too.
"""

import smtplib
import socket
import subprocess

import pytest

from tests import tls_support as ts
from tests.cli_support import (
    END_OF_MESSAGE,
    child_env,
    compat_command,
    require_tool,
    running_server,
)

MESSAGE = b"Subject: %s over %s\r\n\r\nSent by %s over %s.\r\n"


def _server_command(mode, cert, key):
    tls = ["--tls-cert", cert, "--tls-key", key]
    tls += ["--smtps"] if mode == "smtps" else ["--require-starttls"]
    return lambda port: compat_command("-n", "-c", "DebuggingServer", *tls,
                                       "127.0.0.1:%d" % port)


def _client_command(client, mode, port, ca_file, message_file):
    """argv and stdin that make *client* send *message_file* over TLS (*mode*)."""
    implicit = mode == "smtps"
    if client == "swaks":
        return [require_tool("swaks", "swaks"), "--server", "127.0.0.1", "--port",
                str(port), "--tls-on-connect" if implicit else "--tls", "--tls-verify",
                "--tls-ca-path", ca_file, "--from", "a@example.com", "--to",
                "b@example.com", "--data", "@%s" % message_file], None
    if client == "curl":
        scheme = "smtps" if implicit else "smtp"
        return [require_tool("curl", "curl"), "--silent", "--show-error",
                "%s://127.0.0.1:%d/client.example" % (scheme, port), "--cacert", ca_file,
                "--ssl-reqd", "--mail-from", "a@example.com", "--mail-rcpt",
                "b@example.com", "--upload-file", message_file], None
    if client == "msmtp":
        with open(message_file, "rb") as f:
            stdin = f.read()
        return [require_tool("msmtp", "msmtp"), "--file=/dev/null", "--host=127.0.0.1",
                "--port=%d" % port, "--auth=off", "--tls=on",
                "--tls-starttls=%s" % ("off" if implicit else "on"),
                "--tls-trust-file=%s" % ca_file, "--from=a@example.com",
                "b@example.com"], stdin
    if client == "openssl":
        with open(message_file, "rb") as f:
            body = f.read().replace(b"\r\n", b"\n")
        starttls = [] if implicit else ["-starttls", "smtp"]
        script = (b"EHLO client.example\nMAIL FROM:<a@example.com>\n"
                  b"RCPT TO:<b@example.com>\nDATA\n" + body + b".\nQUIT\n")
        return [require_tool("openssl", "openssl"), "s_client", *starttls, "-connect",
                "127.0.0.1:%d" % port, "-CAfile", ca_file, "-verify_return_error",
                "-verify_ip", "127.0.0.1", "-quiet", "-crlf"], script
    raise AssertionError(client)


def _send_with_smtplib(mode, port, message):
    context = ts.client_context()
    if mode == "smtps":
        client = smtplib.SMTP_SSL("localhost", port, context=context, timeout=30)
    else:
        client = smtplib.SMTP("localhost", port, timeout=30)
        client.starttls(context=context)
    with client:
        client.sendmail("a@example.com", ["b@example.com"], message)


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
@pytest.mark.parametrize("client", ["swaks", "curl", "msmtp", "openssl", "smtplib"])
def test_real_client_over_tls(client, mode, tmp_path):
    cert, key = ts.write_server_files(tmp_path)
    ca_file = ts.write_ca_file(tmp_path)
    message = MESSAGE % (client.encode(), mode.encode(), client.encode(), mode.encode())
    message_file = tmp_path / "message.eml"
    message_file.write_bytes(message)
    with running_server(_server_command(mode, cert, key), cwd=str(tmp_path),
                        env=child_env()) as (server, port):
        if client == "smtplib":
            _send_with_smtplib(mode, port, message)
        else:
            argv, stdin = _client_command(client, mode, port, ca_file, str(message_file))
            result = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, timeout=60,
                                    cwd=str(tmp_path))
            output = result.stdout.decode(errors="replace")
            assert result.returncode == 0, output
            if client == "openssl":
                assert "354 End data" in output and "221 Bye" in output, output
        out = server.wait_for_stdout(END_OF_MESSAGE)
        assert server.stop() == 0
    expected = "Sent by %s over %s." % (client, mode)
    assert repr(expected.encode()) in out.decode()
    assert b"Traceback" not in server.stderr


def test_a_plaintext_client_gets_530_with_require_starttls(tmp_path):
    cert, key = ts.write_server_files(tmp_path)
    with running_server(_server_command("starttls", cert, key), cwd=str(tmp_path),
                        env=child_env()) as (server, port):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            assert client.mail("a@example.com") == (
                530, b"5.7.0 Must issue a STARTTLS command first")
        assert server.stop() == 0


# -- the command line refuses bad TLS options before it binds ----------------------

def _bad_files(tmp_path):
    cert, key = ts.write_server_files(tmp_path)
    other = tmp_path / "other-key.pem"
    ts.ca().issue_cert("other.example").private_key_pem.write_to_path(str(other))
    unreadable = tmp_path / "missing.pem"
    return {"cert": cert, "key": key, "other": str(other), "missing": str(unreadable),
            "ca": ts.write_ca_file(tmp_path)}


@pytest.mark.parametrize("args, message", [
    (["--smtps"], "--smtps needs --tls-cert"),
    (["--require-starttls"], "--require-starttls needs --tls-cert"),
    (["--tls-key", "{key}"], "--tls-key needs --tls-cert"),
    (["--tls-cert", "{missing}", "--tls-key", "{key}"],
     "cannot read --tls-cert {missing}: No such file or directory"),
    (["--tls-cert", "{cert}", "--tls-key", "{missing}"],
     "cannot read --tls-key {missing}: No such file or directory"),
    (["--tls-cert", "{cert}", "--tls-key", "{other}"],
     "the key in {other} does not match the certificate in {cert}"),
    (["--tls-cert", "{cert}"],
     "cannot load the certificate {cert} and key {cert}: no PEM certificate with an "
     "unencrypted private key found"),
    (["--tls-cert", "{ca}", "--tls-key", "{key}"],
     "the key in {key} does not match the certificate in {ca}"),
], ids=["smtps-alone", "require-alone", "key-alone", "missing-cert", "missing-key",
        "key-mismatch", "no-key", "ca-as-cert"])
def test_bad_tls_options_are_one_line_and_exit_1_before_binding(tmp_path, args, message):
    files = _bad_files(tmp_path)
    with socket.socket() as taken:
        # The port is taken: had the server tried to bind first, it would
        # say "address already in use".
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        argv = compat_command("-n", *[a.format(**files) for a in args],
                              "127.0.0.1:%d" % taken.getsockname()[1])
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=child_env(), timeout=60)
    assert result.returncode == 1
    assert result.stderr.decode() == "smtpd_compat: error: %s\n" % message.format(**files)


# -- implicit TLS behind a real HAProxy (send-proxy) -----------------------------------

SMTPS_BEHIND_HAPROXY = """
frontend smtps
    bind 127.0.0.1:{fe}
    default_backend mx

backend mx
    server s1 127.0.0.1:{be} {send_proxy}
"""


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_implicit_tls_behind_haproxy_keeps_the_client_address(tmp_path, send_proxy):
    from smtpd_compat.testing import Controller
    from tests import haproxy_support as hs

    with Controller(smtps=True) as smtp:
        smtp.server.proxy_protocol = "any"
        sections = SMTPS_BEHIND_HAPROXY.replace("{send_proxy}", send_proxy)
        with hs.running_haproxy(str(tmp_path), sections, {"be": smtp.port},
                                {"fe": "127.0.0.1"}) as haproxy:
            client_ports = []
            for number in range(3):
                with smtplib.SMTP_SSL("localhost", haproxy.ports["fe"], timeout=30,
                                      context=smtp.client_context()) as client:
                    client_ports.append(client.sock.getsockname()[1])
                    client.sendmail("a@example.com", ["b@example.com"], "message %d" % number)
    assert [m.peer for m in smtp.server.messages] == [("127.0.0.1", p) for p in client_ports]
    assert all(m.tls for m in smtp.server.messages)
