"""Postfix itself as the client (issue 14): a private Postfix relays to a
``--modern`` smtpd_compat server, and shows that it pipelined, passed its
DSN parameters, and delivered the message exactly once.

Postfix runs from the Debian package with its own configuration, queue and
log (tests/postfix_support.py); the server is ``python -m smtpd_compat
--modern`` with a recording class (tests/wire_recorder.py).
"""

import re

import pytest

from tests.cli_support import child_env, compat_command, running_server
from tests.postfix_support import PrivatePostfix
from tests.wire_recorder import recorded

pytestmark = pytest.mark.timeout(180)

MESSAGE = b"From: sender@postfix.test\nSubject: dsn\n\nrelayed by Postfix\n.dot line\n"


def modern_recorder(port):
    return compat_command("-n", "-c", "tests.wire_recorder.WireRecorder", "--modern",
                          "--hostname", "modern.test", "127.0.0.1:%d" % port)


def test_postfix_relays_with_pipelining_and_dsn_and_delivers_once(tmp_path):
    record = str(tmp_path / "record.jsonl")
    env = child_env({"SMTPD_COMPAT_RECORD": record})
    with running_server(modern_recorder, env=env, cwd=str(tmp_path)) as (server, port):
        with PrivatePostfix(relayhost="[127.0.0.1]:%d" % port, verbose=True) as postfix:
            postfix.sendmail(MESSAGE, ["one@example.test", "two@example.test"],
                             options=["-N", "success,delay,failure", "-R", "hdrs",
                                      "-V", "envid+42"])
            sent = postfix.wait_for_log(r"status=sent", count=2)
            postfix.wait_until_queue_empty()
            log = postfix.log_text()
        assert server.stop() == 0
    entries = recorded(record)
    messages = [entry["message"] for entry in entries if "message" in entry]
    reads = [entry["read"] for entry in entries if "read" in entry]

    # Delivered once: one transaction for both recipients, both logged sent.
    assert len(messages) == 1, entries
    message, = messages
    assert message["rcpttos"] == ["one@example.test", "two@example.test"]
    assert "relayed by Postfix" in message["data"] and "\n.dot line" in message["data"]
    assert all("relay=127.0.0.1[127.0.0.1]:%d" % port in line for line in sent)
    assert all("dsn=2.0.0" in line and "(250 2.0.0 OK)" in line for line in sent)

    # DSN: Postfix passed what sendmail -N/-R/-V asked for (xtext as sent;
    # rcpt_options are the last RCPT's, as smtpd hands them).
    assert "RET=HDRS" in message["mail_options"]
    assert "ENVID=envid+2B42" in message["mail_options"]
    assert "NOTIFY=SUCCESS,FAILURE,DELAY" in message["rcpt_options"]
    assert "ORCPT=rfc822;two@example.test" in message["rcpt_options"]

    # PIPELINING: Postfix saw it offered and sent MAIL, both RCPTs and DATA
    # before reading a reply; they reached the server in one read.
    assert re.search(r"< 127\.0\.0\.1\[127\.0\.0\.1\]:\d+: 250-PIPELINING", log), log
    assert "Using ESMTP PIPELINING" in log
    dialogue = re.findall(r": ([<>]) 127\.0\.0\.1\[127\.0\.0\.1\]:%d: (\S+)" % port, log)
    start = dialogue.index((">", "MAIL"))
    assert dialogue[start:start + 5] == [(">", "MAIL"), (">", "RCPT"), (">", "RCPT"),
                                         (">", "DATA"), ("<", "250")], dialogue
    group = [chunk for chunk in reads if chunk.startswith("MAIL FROM:")]
    assert len(group) == 1, reads
    assert re.fullmatch(r"MAIL FROM:<sender@postfix\.test>[^\r\n]*\r\n"
                        r"RCPT TO:<one@example\.test>[^\r\n]*\r\n"
                        r"RCPT TO:<two@example\.test>[^\r\n]*\r\n"
                        r"DATA\r\n", group[0]), group[0]
    # ENHANCEDSTATUSCODES: Postfix took the server's codes for its log.
    assert re.search(r"< 127\.0\.0\.1\[127\.0\.0\.1\]:\d+: 250 2\.1\.5 OK", log), log
