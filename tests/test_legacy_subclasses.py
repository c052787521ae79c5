"""Servers that subclass SMTPServer without calling its ``__init__``.

lmtpd's ``LMTPServer`` (and Salmon's ``LMTPReceiver``, built on it) call
only ``asyncore.dispatcher.__init__`` and create their socket themselves;
smtpd's server kept no state that its loop needed, so that worked.  Every
attribute SMTPServer and SMTPChannel read from a server needs a default.
"""

import json
import subprocess
import sys

import pytest

import smtpd_compat
from tests.conftest import PumpedSession

SUBPROCESS_TIMEOUT = 60

# The real lmtpd package, its server on 127.0.0.1:0 under a real loop, and
# a real LMTP client.  It runs in a fresh interpreter because lmtpd does
# `from smtpd import SMTPServer`: up to 3.11 that is the standard library's
# smtpd (it comes first on sys.path), so the script puts smtpd_compat in
# sys.modules["smtpd"] before importing lmtpd, which must not leak into the
# other tests; and lmtpd serves asyncore's global socket map.
LMTPD_SCRIPT = r"""
import json, smtplib, sys, threading

import smtpd_compat
sys.modules["smtpd"] = smtpd_compat
import lmtpd
from smtpd_compat._asyncore import asyncore

assert lmtpd.SMTPServer is smtpd_compat.SMTPServer

delivered = []

class Server(lmtpd.LMTPServer):
    def process_message(self, peer, mailfrom, rcptto, data):
        delivered.append([mailfrom.decode(), rcptto.decode(), data.decode()])

server = Server(("127.0.0.1", 0))
port = server.socket.getsockname()[1]
replies = []
errors = []

def client():
    try:
        converse()
    except Exception as e:
        errors.append(repr(e))

def converse():
    lmtp = smtplib.LMTP()
    lmtp.timeout = 10  # LMTP() takes no timeout argument before 3.9
    lmtp.connect("127.0.0.1", port)
    with lmtp:
        replies.append(lmtp.ehlo("client.example")[0])  # says LHLO
        replies.append(lmtp.mail("from@example.org")[0])
        replies.append(lmtp.rcpt("one@example.org")[0])
        replies.append(lmtp.rcpt("two@example.org")[0])
        replies.append(lmtp.data(b"Subject: hi\r\n\r\nbody\r\n")[0])
        replies.append(lmtp.getreply()[0])  # LMTP: one reply per recipient

thread = threading.Thread(target=client)
thread.start()
loop = {"asyncore": asyncore.loop, "smtpd_compat": smtpd_compat.loop}[sys.argv[1]]
while thread.is_alive():
    loop(timeout=0.05, count=10)
thread.join()
asyncore.close_all()
print(json.dumps({"errors": errors, "replies": replies, "delivered": delivered}))
"""


@pytest.mark.parametrize("loop", ["asyncore", "smtpd_compat"])
def test_lmtpd_server_delivers_under_a_real_loop(loop):
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", LMTPD_SCRIPT, loop],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["errors"] == []
    assert outcome["replies"] == [250, 250, 250, 250, 250, 250]
    # lmtpd's own parsing keeps the angle brackets (it compares a byte of
    # bytes with b'<') and drops the last line break.
    body = "Subject: hi\n\nbody"
    assert outcome["delivered"] == [["<from@example.org>", "<one@example.org>", body],
                                    ["<from@example.org>", "<two@example.org>", body]]


class BareServer(smtpd_compat.SMTPServer):
    """Sets up its listening socket itself, as lmtpd does, and keeps messages."""

    def __init__(self, map):
        smtpd_compat.asyncore.dispatcher.__init__(self, map=map)
        self.messages = []
        self.create_socket()
        self.bind(("127.0.0.1", 0))
        self.listen(5)

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.messages.append((mailfrom, rcpttos, data, kwargs))


@pytest.fixture
def bare_session():
    session = PumpedSession(BareServer(map={}))
    yield session
    session.close()


def test_bare_subclass_serves_smtpds_defaults(bare_session):
    assert bare_session.greeting.startswith(b"220 ")
    ehlo = bare_session.send(b"EHLO client.example\r\n")
    assert b"250-SIZE 33554432\r\n" in ehlo and b"250-8BITMIME\r\n" in ehlo
    assert b"SMTPUTF8" not in ehlo
    replies = bare_session.send(
        b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\nRCPT TO:<b@example.org>\r\n"
        b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n", replies=5)
    assert replies.endswith(b"250 OK\r\n221 Bye\r\n")
    assert bare_session.server.messages == [
        ("a@example.org", ["b@example.org"], b"Subject: x\n\nbody",
         {"mail_options": ["BODY=8BITMIME"], "rcpt_options": []})]
    assert bare_session.closed_by_server()


def test_bare_subclass_counts_its_own_connections(bare_session):
    server = bare_session.server
    server.max_connections = 1
    second = PumpedSession(server)
    assert second.greeting.startswith(b"421 ")
    second.disconnect()
    assert len(server._channels) == 1
    assert BareServer._channels is None  # not one set shared by every server
    bare_session.send(b"QUIT\r\n")
    bare_session.client.close()
    bare_session.pump(5)
    assert len(server._channels) == 0
