"""Postfix itself as the client: it relays over TLS and logs in with SASL.

A private Postfix (tests/postfix_support.py) relays to ``python -m
smtpd_compat -c DebuggingServer`` with ``--auth-file`` and
``--require-auth`` and without ``--auth-plaintext``: over STARTTLS
(``smtp_tls_security_level = encrypt``, server ``--require-starttls``) and
over implicit TLS (``smtp_tls_wrappermode``, server ``--smtps``), with each
SASL mechanism the server offers (Postfix's client uses Cyrus SASL), and
once with a wrong password, which Postfix reports and defers.
"""

import pytest

from tests import tls_support as ts
from tests.cli_support import END_OF_MESSAGE, child_env, compat_command, running_server
from tests.postfix_support import PrivatePostfix

pytestmark = pytest.mark.timeout(180)

LOGIN = "relay"
PASSWORD = "relay-s3cret"
# Postfix's TLS client needs its session cache and entropy manager.
TLSMGR = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr"
MESSAGE = b"From: sender@postfix.test\nSubject: %s\n\nrelayed by Postfix with a login\n"


def _server_command(mode, directory):
    users = directory / "users"
    users.write_text("%s:%s\n" % (LOGIN, PASSWORD), encoding="utf-8")
    cert, key = ts.write_server_files(directory)
    tls = ["--smtps"] if mode == "smtps" else ["--require-starttls"]
    return lambda port: compat_command(
        "-n", "-d", "-c", "DebuggingServer", "--tls-cert", cert, "--tls-key", key, *tls,
        "--auth-file", str(users), "--require-auth", "--hostname", "mx.test",
        "127.0.0.1:%d" % port)


def _postfix(mode, mechanism, port, password):
    relayhost = "[127.0.0.1]:%d" % port
    settings = {
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_wrappermode": "yes" if mode == "smtps" else "no",
        "smtp_tls_loglevel": "1",
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": "inline:{ %s=%s:%s }" % (relayhost, LOGIN, password),
        "smtp_sasl_mechanism_filter": mechanism,
        # PLAIN and LOGIN are fine over TLS (the default refuses plaintext mechanisms).
        "smtp_sasl_tls_security_options": "noanonymous",
    }
    return PrivatePostfix(relayhost=relayhost, settings=settings, services=[TLSMGR])


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
@pytest.mark.parametrize("mechanism", ["plain", "login", "cram-md5"])
def test_postfix_logs_in_over_tls_and_relays(tmp_path, mode, mechanism):
    subject = ("%s %s" % (mode, mechanism)).encode()
    with running_server(_server_command(mode, tmp_path), cwd=str(tmp_path),
                        env=child_env()) as (server, port):
        with _postfix(mode, mechanism, port, PASSWORD) as postfix:
            postfix.sendmail(MESSAGE % subject, ["one@example.test"])
            sent = postfix.wait_for_log(r"status=sent")
            log = postfix.log_text()
        out = server.wait_for_stdout(END_OF_MESSAGE)
        assert server.stop() == 0
    assert "TLS connection established to 127.0.0.1" in log, log
    assert "relay=127.0.0.1[127.0.0.1]:%d" % port in sent[0]
    block = out[out.rindex(b"MESSAGE FOLLOWS"):]
    assert block.startswith(b"MESSAGE FOLLOWS ----------\nauth login: relay\n")
    assert b"Subject: " + subject in block
    assert b"AUTH " + mechanism.upper().encode() in server.stderr
    assert PASSWORD.encode() not in server.stderr + server.stdout


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_postfix_with_a_wrong_password_is_refused_and_defers(tmp_path, mode):
    with running_server(_server_command(mode, tmp_path), cwd=str(tmp_path),
                        env=child_env()) as (server, port):
        with _postfix(mode, "plain", port, "wrong-pw") as postfix:
            postfix.sendmail(MESSAGE % b"wrong", ["one@example.test"])
            deferred = postfix.wait_for_log(r"status=deferred")
        assert server.stop() == 0
    assert "535 5.7.8 Authentication credentials invalid" in deferred[0], deferred
    assert b"MESSAGE FOLLOWS" not in server.stdout
