"""AUTH over TLS, end to end: real clients against ``python -m smtpd_compat``.

Two DebuggingServers, each with ``-d`` (DEBUGSTREAM on stderr shows every
session), ``--auth-file`` and ``--require-auth`` and WITHOUT
``--auth-plaintext``, so AUTH is allowed only over TLS:

* ``starttls``: ``--tls-cert``/``--tls-key --require-starttls`` (a submission
  server on port 587);
* ``smtps``: ``--tls-cert``/``--tls-key --smtps`` (port 465, implicit TLS).

swaks, curl, msmtp, ``openssl s_client`` and smtplib log in to each with
PLAIN and LOGIN (and CRAM-MD5 where the client has it), once with the right
password (the message reaches DebuggingServer's output with ``auth login:
bob``) and once with a wrong one (refused, nothing delivered).  Every client
verifies the certificate against the test run's certificate authority.
Neither server ever shows a password or its base64.
"""

import base64
import smtplib
import subprocess

import pytest

from tests import tls_support as ts
from tests.cli_support import child_env, compat_command, require_tool, running_server
from tests.test_auth_cli import (
    AUTH_FILE,
    LOGIN,
    MESSAGE,
    PASSWORD,
    assert_no_secret_shown,
    client_command,
    run_client,
)

MODES = ["starttls", "smtps"]
WRONG = "wrong-pw"


@pytest.fixture(scope="module", params=MODES)
def server(request, tmp_path_factory):
    """(mode, process, port, CA file) of a DebuggingServer requiring AUTH over TLS."""
    mode = request.param
    directory = tmp_path_factory.mktemp("auth-" + mode)
    users = directory / "users"
    users.write_text(AUTH_FILE, encoding="utf-8")
    cert, key = ts.write_server_files(directory)
    ca_file = ts.write_ca_file(directory)
    tls = ["--smtps"] if mode == "smtps" else ["--require-starttls"]
    command = lambda port: compat_command(  # noqa: E731
        "-n", "-d", "-c", "DebuggingServer", "--tls-cert", cert, "--tls-key", key,
        *tls, "--auth-file", str(users), "--require-auth", "--hostname", "mx.test",
        "127.0.0.1:%d" % port)
    with running_server(command, cwd=str(directory), env=child_env()) as (process, port):
        yield mode, process, port, ca_file
        assert process.stop() == 0
    assert_no_secret_shown(process)
    assert b"TLS established:" in process.stderr
    assert b"Traceback" not in process.stderr


CASES = [(client, mechanism) for client in ("swaks", "curl", "msmtp")
         for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5")]


@pytest.mark.parametrize("client, mechanism", CASES, ids=["-".join(c) for c in CASES])
@pytest.mark.parametrize("accepted", [True, False], ids=["right", "wrong"])
def test_real_client_logs_in_over_tls(server, client, mechanism, accepted, tmp_path):
    mode, process, port, ca_file = server
    password = PASSWORD if accepted else WRONG
    subject = "%s %s %s %s" % (client, mode, mechanism, "right" if accepted else "wrong")
    argv, stdin = client_command(client, mechanism, port, password, subject, tmp_path,
                                 tls=mode, ca_file=ca_file)
    run_client(process, argv, stdin, subject, accepted, tmp_path)


def _openssl_script(mechanism, password, subject):
    """What ``openssl s_client`` sends once TLS is up: EHLO, AUTH, a message."""
    if mechanism == "PLAIN":
        auth = b"AUTH PLAIN " + base64.b64encode(
            ("\0%s\0%s" % (LOGIN, password)).encode()) + b"\n"
    else:
        auth = (b"AUTH LOGIN\n" + base64.b64encode(LOGIN.encode()) + b"\n"
                + base64.b64encode(password.encode()) + b"\n")
    body = (MESSAGE % subject.encode()).replace(b"\r\n", b"\n")
    return (b"EHLO client.example\n" + auth +
            b"MAIL FROM:<sender@example.com>\nRCPT TO:<rcpt@example.com>\nDATA\n"
            + body + b".\nQUIT\n")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("accepted", [True, False], ids=["right", "wrong"])
def test_openssl_s_client_logs_in_by_hand(server, mechanism, accepted, tmp_path):
    mode, process, port, ca_file = server
    password = PASSWORD if accepted else WRONG
    subject = "openssl %s %s %s" % (mode, mechanism, "right" if accepted else "wrong")
    starttls = [] if mode == "smtps" else ["-starttls", "smtp"]
    argv = [require_tool("openssl", "openssl"), "s_client", *starttls, "-connect",
            "127.0.0.1:%d" % port, "-CAfile", ca_file, "-verify_return_error",
            "-verify_ip", "127.0.0.1", "-quiet", "-crlf"]
    result = subprocess.run(argv, input=_openssl_script(mechanism, password, subject),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=60, cwd=str(tmp_path))
    output = result.stdout.decode(errors="replace")
    assert "250-AUTH PLAIN LOGIN CRAM-MD5" in output, output
    assert "221 Bye" in output, output
    if accepted:
        assert "235 2.7.0 Authentication successful" in output, output
        out = process.wait_for_stdout(repr(("Subject: " + subject).encode()).encode())
        block = out[out.rindex(b"MESSAGE FOLLOWS", 0, out.index(subject.encode())):]
        assert block.startswith(b"MESSAGE FOLLOWS ----------\nauth login: bob\n")
    else:
        assert "535 5.7.8 Authentication credentials invalid" in output, output
        assert "530 5.7.0 Authentication required" in output, output
        assert subject.encode() not in process.stdout


def _smtplib_client(mode, port):
    context = ts.client_context()
    if mode == "smtps":
        return smtplib.SMTP_SSL("localhost", port, context=context, timeout=30)
    client = smtplib.SMTP("localhost", port, timeout=30)
    client.ehlo("client.example")
    assert not client.has_extn("auth")  # not before TLS
    client.starttls(context=context)
    return client


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_smtplib_logs_in_over_tls(server, mechanism):
    mode, process, port, _ = server
    with _smtplib_client(mode, port) as client:
        client.ehlo("client.example")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN", "CRAM-MD5"]
        client.user, client.password = LOGIN, PASSWORD
        method = getattr(client, "auth_" + mechanism.lower().replace("-", "_"))
        assert client.auth(mechanism, method) == (235, b"2.7.0 Authentication successful")
        subject = "smtplib %s %s" % (mode, mechanism)
        assert client.sendmail("a@example.com", ["b@example.com"],
                               MESSAGE % subject.encode()) == {}
    out = process.wait_for_stdout(repr(("Subject: " + subject).encode()).encode())
    block = out[out.rindex(b"MESSAGE FOLLOWS", 0, out.index(subject.encode())):]
    assert block.startswith(b"MESSAGE FOLLOWS ----------\nauth login: bob\n")


def test_smtplib_login_over_tls_refused(server):
    mode, process, port, _ = server
    client = _smtplib_client(mode, port)
    try:
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login(LOGIN, WRONG)
        assert failed.value.smtp_code == 535
        # login() tried each of the three offered mechanisms: three failures.
        assert client.docmd("NOOP") == (
            421, b"4.7.0 mx.test Error: too many failed authentications")
    finally:
        client.close()
    with _smtplib_client(mode, port) as client:
        client.login(LOGIN, PASSWORD)
        subject = "smtplib %s login()" % mode
        assert client.sendmail("a@example.com", ["b@example.com"],
                               MESSAGE % subject.encode()) == {}
    process.wait_for_stdout(subject.encode())


def test_swaks_pipelines_over_starttls_with_modern_extensions(tmp_path):
    # --modern (PIPELINING, ENHANCEDSTATUSCODES...) with TLS and AUTH: the
    # 334 challenges keep no enhanced code, the pipelined group after AUTH runs.
    users = tmp_path / "users"
    users.write_text(AUTH_FILE, encoding="utf-8")
    cert, key = ts.write_server_files(tmp_path)
    ca_file = ts.write_ca_file(tmp_path)
    command = lambda port: compat_command(  # noqa: E731
        "-n", "-d", "-c", "DebuggingServer", "--modern", "--tls-cert", cert,
        "--tls-key", key, "--require-starttls", "--auth-file", str(users),
        "--require-auth", "127.0.0.1:%d" % port)
    with running_server(command, cwd=str(tmp_path), env=child_env()) as (process, port):
        for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
            subject = "swaks modern %s" % mechanism
            argv, stdin = client_command("swaks", mechanism, port, PASSWORD, subject,
                                         tmp_path, tls="starttls", ca_file=ca_file)
            output = run_client(process, argv + ["--pipeline"], stdin, subject, True,
                                tmp_path)
            assert "250 2.1.0 OK" in output and "PIPELINING" in output, output
            if mechanism == "LOGIN":
                assert "334 VXNlcm5hbWU6" in output, output
        argv, stdin = client_command("swaks", "LOGIN", port, WRONG, "wrong", tmp_path,
                                     tls="starttls", ca_file=ca_file)
        run_client(process, argv + ["--pipeline"], stdin, "wrong", False, tmp_path)
        assert process.stop() == 0
    assert_no_secret_shown(process)
