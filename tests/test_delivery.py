"""MaildirServer and PipeServer: real files read back with mailbox.Maildir, real commands.

Servers run in a Controller thread (or as the real CLI); clients are
smtplib and a raw socket; the commands are real programs (sh, sleep, and
Debian's procmail with a private rc file).
"""

import concurrent.futures
import logging
import mailbox
import os
import smtplib
import socket
import textwrap
import time

import pytest

try:
    from . import cli_support
    from . import robust_support as rs
except ImportError:
    import cli_support
    import robust_support as rs
import smtpd_compat
from smtpd_compat import _cli
from smtpd_compat._delivery import (
    Envelope,
    Outcome,
    parse_pipe_command,
    reply_for_outcome,
    trace_headers,
)
from smtpd_compat.delivery import MaildirServer, PipeServer
from smtpd_compat.testing import Controller

MESSAGE = b"Subject: hello\r\nFrom: a@example.com\r\n\r\nfirst line\r\n.dotted\r\nlast\r\n"


def read_maildir(path):
    """The messages in *path*'s new/ as bytes, sorted, read with mailbox.Maildir."""
    box = mailbox.Maildir(str(path), factory=None, create=False)
    return sorted(box.get_bytes(key) for key in box.keys())


def leftovers(path):
    """Files anywhere under the Maildir's tmp/."""
    return os.listdir(os.path.join(str(path), "tmp"))


# -- pure parts ----------------------------------------------------------------------


def test_trace_headers():
    envelope = Envelope(("192.0.2.1", 1234), "a@example.com", ["b@x", "c@y"], [], [])
    assert trace_headers(envelope) == (
        b"Return-Path: <a@example.com>\nDelivered-To: b@x\nDelivered-To: c@y\n"
        b"X-Peer: 192.0.2.1\n")
    null = envelope._replace(mailfrom="<>", rcpttos=["b@x"])
    assert trace_headers(null).startswith(b"Return-Path: <>\n")


@pytest.mark.parametrize("text, words, per_recipient", [
    ("procmail -d {recipient}", ("procmail", "-d", "{recipient}"), True),
    ("deliver --from={sender}", ("deliver", "--from={sender}"), False),
    ("sh -c 'cat > \"$RECIPIENT\"'", ("sh", "-c", 'cat > "$RECIPIENT"'), False),
], ids=["recipient", "sender", "quoted"])
def test_parse_pipe_command(text, words, per_recipient):
    command = parse_pipe_command(text)
    assert command.words == words
    assert command.per_recipient is per_recipient


def test_placeholders_fill_one_argument_each_without_a_shell():
    command = parse_pipe_command("deliver {recipient} --from={sender}")
    assert command.argv("a b@x", "c;rm -rf /@y") == [
        "deliver", "c;rm -rf /@y", "--from=a b@x"]


def test_placeholders_are_quoted_for_a_shell():
    command = parse_pipe_command("deliver {recipient} >> log", shell=True)
    assert command.argv("a@x", "c;touch x@y") == [
        "/bin/sh", "-c", "deliver 'c;touch x@y' >> log"]


@pytest.mark.parametrize("text", ["", "   ", "a 'b"], ids=["empty", "blank", "unbalanced"])
def test_bad_pipe_commands(text):
    with pytest.raises(ValueError):
        parse_pipe_command(text)


@pytest.mark.parametrize("outcome, code", [
    (Outcome(0), 250), (Outcome(75), 451), (Outcome(None), 451), (Outcome(-9), 451),
    (Outcome(1), 554), (Outcome(67), 554),
], ids=["ok", "tempfail", "timeout", "signal", "failure", "nouser"])
def test_reply_for_outcome(outcome, code):
    assert reply_for_outcome(outcome)[0] == code


# -- MaildirServer -------------------------------------------------------------------


def test_maildir_delivery_read_back(tmp_path):
    maildir = tmp_path / "Maildir"
    with Controller(MaildirServer, maildir=str(maildir)) as controller, \
            smtplib.SMTP(*controller.address) as client:
        client.sendmail("a@example.com", ["b@example.com", "c@example.com"], MESSAGE)
        client.sendmail("<>", ["b@example.com"], b"Subject: bounce\r\n\r\nbody")
    messages = read_maildir(maildir)
    assert messages == sorted([
        b"Return-Path: <a@example.com>\nDelivered-To: b@example.com\n"
        b"Delivered-To: c@example.com\nX-Peer: 127.0.0.1\nSubject: hello\n"
        b"From: a@example.com\n\nfirst line\n.dotted\nlast\n",
        b"Return-Path: <>\nDelivered-To: b@example.com\nX-Peer: 127.0.0.1\n"
        b"Subject: bounce\n\nbody\n",
    ])
    assert leftovers(maildir) == []
    parsed = mailbox.Maildir(str(maildir)).values()
    assert sorted(m["Subject"] for m in parsed) == ["bounce", "hello"]


def test_maildir_aborted_message_leaves_nothing(tmp_path):
    maildir = tmp_path / "Maildir"
    with Controller(MaildirServer, maildir=str(maildir)) as controller:
        with rs.Client(controller.port) as client:
            client.cmd("HELO x")
            client.cmd("MAIL FROM:<a@example.com>")
            client.cmd("RCPT TO:<b@example.com>")
            client.cmd("DATA")
            client.send(b"Subject: half\r\n\r\n" + b"x" * 100000)
        with rs.Client(controller.port) as client:  # served after the abort
            client.cmd("HELO x")
            assert client.cmd("NOOP") == b"250 OK\r\n"
    assert read_maildir(maildir) == []
    assert leftovers(maildir) == []


def test_maildir_failure_answers_451_and_delivers_nothing(tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"), \
            Controller(MaildirServer, maildir=str(blocker / "Maildir")) as controller, \
            rs.Client(controller.port) as client:
        client.cmd("HELO x")
        client.cmd("MAIL FROM:<a@example.com>")
        client.cmd("RCPT TO:<b@example.com>")
        assert client.cmd("DATA").startswith(b"451 ")  # no spool: refused before 354
        assert client.cmd("NOOP") == b"250 OK\r\n"


def test_maildir_server_refuses_decode_data(tmp_path):
    with pytest.raises(ValueError):
        MaildirServer(("127.0.0.1", 0), None, decode_data=True, maildir=str(tmp_path))


def test_maildir_from_the_command_line(tmp_path):
    maildir = tmp_path / "cli-maildir"

    def command(port):
        return cli_support.compat_command(
            "-n", "-c", "MaildirServer", "--maildir", str(maildir), "127.0.0.1:%d" % port)

    with cli_support.running_server(command) as (server, port):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        assert server.stop() == 0
    [message] = read_maildir(maildir)
    assert message.startswith(b"Return-Path: <a@example.com>\nDelivered-To: b@example.com\n")
    assert message.endswith(b"\n\nfirst line\n.dotted\nlast\n")


@pytest.mark.parametrize("args, error", [
    (["-c", "MaildirServer"], b"MaildirServer needs --maildir"),
    (["-c", "PipeServer"], b"PipeServer needs --pipe"),
    (["-c", "PipeServer", "--pipe", "a 'b"], b"Invalid --pipe: No closing quotation"),
    (["-c", "PipeServer", "--pipe", "cat", "--pipe-timeout", "x"], b"Invalid pipe timeout"),
    (["--workers", "2", "-c", "MaildirServer"], b"MaildirServer needs --maildir"),
], ids=["no-maildir", "no-pipe", "bad-pipe", "bad-timeout", "workers-no-maildir"])
def test_command_line_errors(args, error):
    import subprocess
    result = subprocess.run(cli_support.compat_command("-n", *args, "127.0.0.1:0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                            env=cli_support.child_env())
    assert result.returncode == 1
    assert error in result.stderr


@pytest.mark.parametrize("name", ["MaildirServer", "PipeServer"])
def test_class_names_resolve_like_debugging_server(name):
    import smtpd_compat.delivery
    assert _cli.server_class(name) is getattr(smtpd_compat.delivery, name)
    assert _cli.server_class("DebuggingServer").__module__ == "smtpd_compat"


def test_command_line_settings_reach_the_server():
    options = _cli.parseargs(["-c", "PipeServer", "--pipe", "cat {recipient}",
                              "--pipe-timeout", "2.5", "127.0.0.1:0"])
    server = _cli.make_server(options)
    try:
        assert server.pipe_command == "cat {recipient}"
        assert server.pipe_timeout == 2.5
    finally:
        server.close()


# -- PipeServer -------------------------------------------------------------------------


def pipe_server(command, **kwargs):
    return Controller(PipeServer, pipe_command=command, **kwargs)


def send(controller, recipients=("b@example.com",), message=MESSAGE,
         sender="a@example.com"):
    """Send one message; return the reply after the data, (code, text)."""
    with smtplib.SMTP(*controller.address) as client:
        client.ehlo("x")
        client.mail(sender)
        for rcpt in recipients:
            client.rcpt(rcpt)
        return client.data(message)


def test_pipe_per_recipient_with_arguments_and_environment(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = ('cat > "%s/$RECIPIENT"; printf "%%s|%%s|%%s|%%s" "$1" "$SENDER" '
              '"$CLIENT_ADDRESS" "$2" > "%s/$RECIPIENT.args"') % (out, out)
    command = "sh -c '%s' sh {recipient} {sender}" % script
    with pipe_server(command) as controller:
        assert send(controller, ["b@example.com", "c@example.com"]) == (250, b"OK")
    for rcpt in ("b@example.com", "c@example.com"):
        assert (out / rcpt).read_bytes() == (
            b"Subject: hello\nFrom: a@example.com\n\nfirst line\n.dotted\nlast\n")
        arguments = (out / (rcpt + ".args")).read_text()
        assert arguments == "%s|a@example.com|127.0.0.1|a@example.com" % rcpt


def test_pipe_once_per_message_without_recipient_placeholder(tmp_path):
    log = tmp_path / "runs"
    command = "sh -c 'cat > /dev/null; echo \"$RECIPIENT\" >> %s'" % log
    with pipe_server(command) as controller:
        assert send(controller, ["b@example.com", "c@example.com"])[0] == 250
    assert log.read_text() == "b@example.com c@example.com\n"


def test_pipe_arguments_never_reach_a_shell(tmp_path):
    marker = tmp_path / "pwned"
    with pipe_server("true {recipient}") as controller:
        rcpt = '"x;touch %s"@example.com' % marker
        assert send(controller, [rcpt])[0] == 250
    assert not marker.exists()


@pytest.mark.parametrize("script, code, logged", [
    ("exit 75", 451, "exit status 75"),
    ("echo no such user >&2; echo more >&2; exit 67", 554, "no such user"),
    ("kill -9 $$", 451, "exit status -9"),
], ids=["tempfail", "failure", "killed"])
def test_pipe_exit_status_is_the_reply(script, code, logged, caplog):
    with caplog.at_level(logging.WARNING, logger="smtpd_compat"), \
            pipe_server("sh -c 'cat >/dev/null; %s'" % script) as controller:
        assert send(controller)[0] == code
    assert logged in caplog.text
    assert "more" not in caplog.text  # only the first line of stderr


def test_pipe_hung_command_is_killed_and_answered_451_without_blocking_others(caplog):
    with caplog.at_level(logging.WARNING, logger="smtpd_compat"), \
            pipe_server("sleep 60", pipe_timeout=1.0) as controller:
        with rs.Client(controller.port) as client, rs.Client(controller.port) as other:
            client.cmd("HELO x")
            client.cmd("MAIL FROM:<a@example.com>")
            client.cmd("RCPT TO:<b@example.com>")
            client.cmd("DATA")
            started = time.monotonic()
            client.send(b"hang\r\n.\r\n")
            assert other.cmd("HELO y").startswith(b"250 ")  # the loop is free
            assert other.cmd("NOOP") == b"250 OK\r\n"
            final = client.reply()[-1]
            assert final.startswith(b"451 4.3.0 Delivery command timed out")
            assert time.monotonic() - started < 30
    assert "timed out" in caplog.text


def test_pipe_mixed_results_answer_4xx_when_any_recipient_failed_temporarily(tmp_path):
    command = "sh -c 'cat >/dev/null; case $0 in b@*) exit 0;; *) exit 75;; esac' {recipient}"
    with pipe_server(command) as controller:
        assert send(controller, ["b@example.com", "c@example.com"])[0] == 451


def test_pipe_all_permanent_failures_answer_5xx():
    with pipe_server("sh -c 'cat >/dev/null; exit 1' {recipient}") as controller:
        assert send(controller, ["b@example.com", "c@example.com"])[0] == 554


def test_pipe_shutdown_kills_running_commands():
    controller = pipe_server("sleep 60").start()
    try:
        client = rs.Client(controller.port)
        client.cmd("HELO x")
        client.cmd("MAIL FROM:<a@example.com>")
        client.cmd("RCPT TO:<b@example.com>")
        client.cmd("DATA")
        client.send(b"x\r\n.\r\n")
        deadline = time.monotonic() + 10
        while not controller.server._running:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        [process] = list(controller.server._running)
        controller.server._abort_relays()
        assert process.wait(10) == -9
        assert client.reply()[-1].startswith(b"451 ")  # not acknowledged
        client.close()
    finally:
        controller.stop()


# -- procmail --------------------------------------------------------------------------


def procmail_rc(tmp_path):
    """An rc file delivering into tmp_path/Maildir, and 75 for 'X-Fail: yes'."""
    maildir = tmp_path / "Maildir"
    mailbox.Maildir(str(maildir), create=True)
    rc = tmp_path / "procmailrc"
    rc.write_text(textwrap.dedent("""\
        MAILDIR=%s/
        LOGFILE=%s
        :0
        * ^X-Fail: yes
        { EXITCODE=75
          :0
          /dev/null
        }
        :0
        ./
        """ % (maildir, tmp_path / "procmail.log")))
    return maildir, rc


def test_real_procmail_delivers_into_a_maildir(tmp_path):
    procmail = cli_support.require_tool("procmail", "procmail")
    maildir, rc = procmail_rc(tmp_path)
    command = "%s -m %s" % (procmail, rc)
    with pipe_server(command) as controller:
        assert send(controller)[0] == 250
        code, _ = send(controller, message=b"Subject: no\r\nX-Fail: yes\r\n\r\nbody\r\n")
        assert code == 451
    [message] = read_maildir(maildir)
    assert message == b"Subject: hello\nFrom: a@example.com\n\nfirst line\n.dotted\nlast\n"


class SmtpprocChannel(smtpd_compat.SMTPChannel):
    """smtpproc's QUIT reply: no policy hook asks about QUIT, so the channel does."""

    def smtp_QUIT(self, arg):
        self.push("221 Server closing transmission channel")
        self.close_when_done()


class SmtpprocProcmail(PipeServer):
    """smtpproc's README example on smtpd_compat: its replies, procmail, X-Envelope-To.

    The texts are smtpproc's (``smtpproc.py``'s OKAY and START_MAIL, its
    ``smtp_hello``; ``SubprocessDeliveryHandler.add_recipient`` and
    ``deliver``), given by the public policy hooks, and its QUIT reply by
    the channel, as smtpd subclasses have always changed a command.
    """

    channel_class = SmtpprocChannel
    hostname = "mx.example.org"
    ident = "ESMTP Service Ready"
    delivered = 0
    delivery_workers = 1  # the count above is kept by one thread

    def check_helo(self, session, command, name):
        lines = ["250 %s welcomes %s" % (self.hostname, name)]
        if command == "EHLO":
            lines += ["8BITMIME", "SIZE %d" % self.data_size_limit]
        return lines

    def check_mail(self, session, address, params):
        return "250 Requested action completed"

    def check_rcpt(self, session, address, params):
        return "250 Accepted recipient <%s>" % address

    def check_data(self, session):
        return "354 Start mail input; end with <CRLF>.<CRLF>"

    def message_prefix(self, envelope):
        if len(envelope.rcpttos) == 1:
            return ("X-Envelope-To: %s\n" % envelope.rcpttos[0]).encode("utf-8")
        return ("X-Recipients: %s\n" % ", ".join(envelope.rcpttos)).encode("utf-8")

    def deliver(self, message, envelope):
        reply = super().deliver(message, envelope)
        if reply is not None:
            return reply
        self.delivered += 1
        return "250 Message delivered. ID: %d.%d_%d.%s" % (
            time.time(), os.getpid(), self.delivered, socket.gethostname())


def test_smtpproc_procmail_example_same_replies_on_the_wire(tmp_path):
    procmail = cli_support.require_tool("procmail", "procmail")
    maildir, rc = procmail_rc(tmp_path)
    with Controller(SmtpprocProcmail, pipe_command="%s -m %s" % (procmail, rc)) as controller, \
            rs.Client(controller.port) as client:
        client.cmd("EHLO client.example")
        client.cmd("MAIL FROM:<a@example.com>")
        client.cmd("RCPT TO:<b@example.com>")
        client.cmd("DATA")
        client.send(b"Subject: via procmail\r\n\r\nbody\r\n.\r\n")
        delivered = client.reply()
        client.cmd("QUIT")
    assert delivered[0].startswith(b"250 Message delivered. ID: ")
    assert client.lines == [
        b"220 mx.example.org ESMTP Service Ready\r\n",
        b"250-mx.example.org welcomes client.example\r\n",
        b"250-8BITMIME\r\n",
        b"250 SIZE 33554432\r\n",
        b"250 Requested action completed\r\n",
        b"250 Accepted recipient <b@example.com>\r\n",
        b"354 Start mail input; end with <CRLF>.<CRLF>\r\n",
        delivered[0],
        b"221 Server closing transmission channel\r\n",
    ]
    [message] = read_maildir(maildir)
    assert message == b"X-Envelope-To: b@example.com\nSubject: via procmail\n\nbody\n"


def test_pipe_from_the_command_line_with_procmail(tmp_path):
    procmail = cli_support.require_tool("procmail", "procmail")
    maildir, rc = procmail_rc(tmp_path)

    def command(port):
        return cli_support.compat_command(
            "-n", "-c", "PipeServer", "--pipe", "%s -m %s" % (procmail, rc),
            "--pipe-timeout", "30", "127.0.0.1:%d" % port)

    with cli_support.running_server(command) as (server, port):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        assert server.stop() == 0
    assert len(read_maildir(maildir)) == 1



def test_pipe_command_that_cannot_start_answers_451(tmp_path, caplog):
    missing = str(tmp_path / "no-such-program")
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"), \
            pipe_server(missing + " {recipient}") as controller:
        assert send(controller)[0] == 451
    assert "no-such-program" in caplog.text


def test_maildir_parallel_deliveries_each_get_a_file(tmp_path):
    maildir = tmp_path / "Maildir"
    with Controller(MaildirServer, maildir=str(maildir)) as controller:
        def deliver(n):
            with smtplib.SMTP(*controller.address) as client:
                client.sendmail("a@example.com", ["b@example.com"],
                                b"Subject: %d\r\n\r\nbody\r\n" % n)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(deliver, range(40)))
    subjects = sorted(int(m["Subject"]) for m in mailbox.Maildir(str(maildir)).values())
    assert subjects == list(range(40))
    assert leftovers(maildir) == []
