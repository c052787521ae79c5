"""LMTP with real clients: Postfix's lmtp delivery agent and ``smtp-source -L``.

Postfix delivers to an smtpd_compat LMTP server (on a UNIX socket and on
TCP) that refuses one of three recipients.  Postfix's log must then show
each accepted recipient delivered once and the refused one bounced (5xx)
or deferred (4xx) as the reply said; the server must have been handed the
message once, and a deferred recipient alone on the retry.
"""

import os
import re
import subprocess
import tempfile
import threading

import pytest

import smtpd_compat
from smtpd_compat._loop import Poller
from tests.cli_support import require_tool
from tests.postfix_support import private_postfix

RECIPIENTS = ["one@example.com", "refused@example.com", "three@example.com"]
SUBJECT = "lmtp proof"
MESSAGE = ("From: sender@postfix.test\r\nSubject: %s\r\n\r\n"
           "first line\r\n.a line that starts with a dot\r\nlast line\r\n" % SUBJECT).encode()
SMTP_SOURCE_TIMEOUT = 120


class RefusingLMTPServer(smtpd_compat.SMTPServer):
    """LMTP; refuses refused@example.com with ``refusal`` until ``refusals`` run out."""

    lmtp = True
    refusal = "550 5.1.1 <refused@example.com>: no such user"
    refusals = 1000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []
        self.lock = threading.Lock()

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        with self.lock:
            self.messages.append((list(rcpttos), data))
        replies = []
        for recipient in rcpttos:
            if recipient == "refused@example.com" and self.refusals > 0:
                self.refusals -= 1
                replies.append(self.refusal)
            else:
                replies.append("250 2.0.0 <%s> delivered" % recipient)
        return replies

    def proof_messages(self):
        with self.lock:
            return [m for m in self.messages if SUBJECT.encode() in m[1]]


class ServedInThread:
    """Serve *server*'s socket map in a thread until the block ends."""

    def __init__(self, server):
        self.server = server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        poller = Poller(self.server._map)
        try:
            while not self._stop.is_set():
                poller.poll(0.05)
        finally:
            poller.close()

    def __enter__(self):
        self._thread.start()
        return self.server

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(10)
        smtpd_compat.asyncore.close_all(self.server._map)


@pytest.fixture
def socket_directory():
    # Postfix's lmtp client runs as the postfix user: it must reach the socket.
    directory = tempfile.mkdtemp(prefix="smtpd-lmtp-")
    os.chmod(directory, 0o755)
    yield directory
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def _lmtp_server(where, socket_directory, **attributes):
    if where == "unix":
        path = os.path.join(socket_directory, "lmtp.sock")
        server = RefusingLMTPServer(path, None, map={})
        os.chmod(path, 0o666)
        transport = "lmtp:unix:" + path
    else:
        server = RefusingLMTPServer(("127.0.0.1", 0), None, map={})
        transport = "lmtp:inet:127.0.0.1:%d" % server.socket.getsockname()[1]
    for name, value in attributes.items():
        setattr(server, name, value)
    return server, transport


def _recipient_lines(postfix, recipient, status, count=1):
    return postfix.wait_for_log(r"to=<%s>.*status=%s" % (re.escape(recipient), status),
                                count)


@pytest.mark.parametrize("where", ["unix", "inet"])
def test_postfix_bounces_the_refused_recipient_and_delivers_the_others_once(
        where, socket_directory):
    server, transport = _lmtp_server(where, socket_directory)
    with ServedInThread(server), private_postfix(
            settings={"default_transport": transport}) as postfix:
        postfix.sendmail(MESSAGE, RECIPIENTS)
        sent = [_recipient_lines(postfix, r, "sent")[0]
                for r in ("one@example.com", "three@example.com")]
        bounced = _recipient_lines(postfix, "refused@example.com", "bounced")
        postfix.wait_until_queue_empty()
        log = postfix.log_text()
    assert all("delivered" in line for line in sent), sent
    assert "5.1.1" in bounced[0] and "no such user" in bounced[0]
    # Once each: no line says an accepted recipient went again or was deferred.
    for recipient in ("one@example.com", "three@example.com"):
        assert len(re.findall(r"to=<%s>.*status=" % re.escape(recipient), log)) == 1, log
    assert "may be sent more than once" not in log
    proof = server.proof_messages()
    # The message once, and Postfix's bounce of the refused recipient to
    # the sender (it quotes the message, hence the subject).
    assert [rcpttos for rcpttos, _ in proof] == [RECIPIENTS, ["sender@postfix.test"]]
    assert b"\n.a line that starts with a dot\n" in proof[0][1]
    assert b"<refused@example.com>: no such user" in proof[1][1]


@pytest.mark.parametrize("where", ["unix", "inet"])
def test_postfix_retries_only_the_deferred_recipient(where, socket_directory):
    server, transport = _lmtp_server(
        where, socket_directory,
        refusal="452 4.2.2 <refused@example.com>: mailbox full, try later", refusals=1)
    with ServedInThread(server), private_postfix(
            settings={"default_transport": transport}) as postfix:
        postfix.sendmail(MESSAGE, RECIPIENTS)
        deferred = _recipient_lines(postfix, "refused@example.com", "deferred")
        _recipient_lines(postfix, "refused@example.com", "sent")
        postfix.wait_until_queue_empty()
        log = postfix.log_text()
    assert "4.2.2" in deferred[0] and "mailbox full" in deferred[0]
    for recipient in ("one@example.com", "three@example.com"):
        assert len(re.findall(r"to=<%s>.*status=" % re.escape(recipient), log)) == 1, log
    # The first attempt had all three; the retry only the deferred one.
    assert [rcpttos for rcpttos, _ in server.proof_messages()] == [
        RECIPIENTS, ["refused@example.com"]]


@pytest.mark.parametrize("recipients", [1, 3])
def test_smtp_source_lmtp_load(recipients):
    smtp_source = require_tool("smtp-source", "postfix")
    server = RefusingLMTPServer(("127.0.0.1", 0), None, map={})
    port = server.socket.getsockname()[1]
    messages, sessions = 200, 4
    with ServedInThread(server):
        # smtp-source reads one reply per recipient after each message:
        # one missing and it waits until the timeout kills it.
        result = subprocess.run(
            [smtp_source, "-L", "-s", str(sessions), "-m", str(messages),
             "-r", str(recipients), "-l", "2000", "-f", "sender@example.com",
             "-t", "rcpt@example.com", "127.0.0.1:%d" % port],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=SMTP_SOURCE_TIMEOUT)
    assert result.returncode == 0, result.stdout
    assert len(server.messages) == messages
    assert all(len(rcpttos) == recipients for rcpttos, _ in server.messages)


def test_smtp_source_lmtp_over_a_unix_socket(socket_directory):
    smtp_source = require_tool("smtp-source", "postfix")
    path = os.path.join(socket_directory, "lmtp.sock")
    server = RefusingLMTPServer(path, None, map={})
    with ServedInThread(server):
        result = subprocess.run(
            [smtp_source, "-L", "-s", "2", "-m", "50", "-r", "2",
             "-f", "sender@example.com", "-t", "rcpt@example.com", "unix:" + path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=SMTP_SOURCE_TIMEOUT)
    assert result.returncode == 0, result.stdout
    assert len(server.messages) == 50
    assert not os.path.exists(path)
