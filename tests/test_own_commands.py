"""Commands of your own that HELP and EHLO know, and the greeting's host name and ident.

The command table is tested as pure functions; the wiring with exact reply
bytes on a pumped loopback session; the peers' documented examples with
smtplib against a running server.
"""

import smtplib
import socket

import pytest

import smtpd_compat
from smtpd_compat import _cli, _commands
from smtpd_compat.commands import syntax
from smtpd_compat.testing import Controller, Sink
from tests.conftest import PumpedSession, RecordingServer

SMTPD_VERBS = "EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"


class PingChannel(smtpd_compat.SMTPChannel):
    ehlo_keywords = ("XPING", "X-ECHO 5 lines")

    @syntax("PING [message]")
    def smtp_PING(self, arg):
        if arg and not arg.isalnum():
            self.push(self._syntax_error("PING"))
            return
        self.push("250 " + (arg or "Pong"))

    @syntax("ECHO text")
    def smtp_ECHO(self, arg):
        self.push("250 " + (arg or ""))


class PingServer(RecordingServer):
    channel_class = PingChannel


# --------------------------------------------------------------------------
# The table, without sockets


def test_the_base_channel_has_smtpds_table():
    assert _commands.commands_of(smtpd_compat.SMTPChannel) is _commands.COMMANDS
    assert _commands.help_listing(smtpd_compat.SMTPChannel) == SMTPD_VERBS


def test_added_verbs_follow_smtpds_in_definition_order():
    assert _commands.help_listing(PingChannel) == SMTPD_VERBS + " PING ECHO"
    assert _commands.help_topic("PING", PingChannel).syntax == "PING [message]"
    assert _commands.syntax("ECHO", True, PingChannel) == "ECHO text"
    # Nothing leaks into smtpd's own table.
    assert _commands.help_topic("PING") is None


def test_a_subclass_keeps_the_verbs_and_adds_its_own():
    class More(PingChannel):
        @syntax("ZAP")
        def smtp_ZAP(self, arg):
            pass

    assert _commands.help_listing(More) == SMTPD_VERBS + " PING ECHO ZAP"


def test_an_undecorated_override_leaves_help():
    class Quiet(PingChannel):
        def smtp_PING(self, arg):
            pass

    assert _commands.help_listing(Quiet) == SMTPD_VERBS + " ECHO"
    assert _commands.help_topic("PING", Quiet) is None


def test_a_decorated_override_of_smtpds_verb_replaces_its_text_in_place():
    class Vrfy(smtpd_compat.SMTPChannel):
        @syntax("VRFY <address> (postmaster only)")
        def smtp_VRFY(self, arg):
            pass

    assert _commands.help_listing(Vrfy) == SMTPD_VERBS
    assert _commands.syntax("VRFY", True, Vrfy) == "VRFY <address> (postmaster only)"
    assert _commands.syntax("MAIL", True, Vrfy).endswith("[SP <mail-parameters>]")


def test_a_lower_case_method_is_never_dispatched_so_not_listed():
    class Lower(smtpd_compat.SMTPChannel):
        @syntax("ping")
        def smtp_ping(self, arg):
            pass

    assert _commands.help_listing(Lower) == SMTPD_VERBS


@pytest.mark.parametrize("text", ["", "   ", "PING\r\n250 fake", "PING\n", "A\x00B", None, 5],
                         ids=repr)
def test_bad_syntax_text_fails_at_decoration(text):
    with pytest.raises(ValueError):
        syntax(text)


@pytest.mark.parametrize("keywords, lines", [
    ((), []),
    (["XPING"], ["250-XPING"]),
    (("X-ECHO 5 lines", "AUTH PLAIN LOGIN"), ["250-X-ECHO 5 lines", "250-AUTH PLAIN LOGIN"]),
], ids=repr)
def test_ehlo_lines(keywords, lines):
    assert _commands.ehlo_lines(keywords) == lines


@pytest.mark.parametrize("keywords", [
    "XPING", ["X PING\r\n250 fake"], ["-X"], [""], ["XPÏNG"], [b"XPING"], ["X_PING"],
], ids=repr)
def test_bad_ehlo_keywords(keywords):
    with pytest.raises(ValueError):
        _commands.ehlo_lines(keywords)


# --------------------------------------------------------------------------
# On the wire, exact bytes


@pytest.fixture
def ping_session(make_session):
    return make_session(PingServer)


@pytest.mark.parametrize("split", [None, 1, 3], ids=["whole", "bytewise", "by3"])
@pytest.mark.parametrize("line, reply", [
    (b"HELP", b"250 Supported commands: " + SMTPD_VERBS.encode() + b" PING ECHO"),
    (b"HELP PING", b"250 Syntax: PING [message]"),
    (b"help ping", b"250 Syntax: PING [message]"),
    (b"HELP FOO", b"501 Supported commands: " + SMTPD_VERBS.encode() + b" PING ECHO"),
    (b"HELP MAIL", b"250 Syntax: MAIL FROM: <address>"),
    (b"PING", b"250 Pong"),
    (b"PING hello", b"250 hello"),
    (b"PING a+b", b"501 Syntax: PING [message]"),
])
def test_help_and_syntax_replies(ping_session, line, reply, split):
    assert ping_session.send(line + b"\r\n", split=split) == reply + b"\r\n"


@pytest.mark.parametrize("split", [None, 1], ids=["whole", "bytewise"])
def test_ehlo_keywords_come_before_250_help(ping_session, split):
    fqdn = ping_session.server._cached_fqdn().encode()
    assert ping_session.send(b"EHLO client\r\n", split=split) == (
        b"250-" + fqdn + b"\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
        b"250-XPING\r\n250-X-ECHO 5 lines\r\n250 HELP\r\n")
    # The parameter suffix stays smtpd's after EHLO; added verbs have none.
    assert ping_session.send(b"HELP RCPT\r\n") == (
        b"250 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n")
    assert ping_session.send(b"HELP ECHO\r\n") == b"250 Syntax: ECHO text\r\n"


def test_nothing_added_leaves_smtpds_bytes(session):
    fqdn = session.server._cached_fqdn().encode()
    assert session.send(b"HELP\r\n") == b"250 Supported commands: " + SMTPD_VERBS.encode() + b"\r\n"
    assert session.send(b"EHLO client\r\n") == (
        b"250-" + fqdn + b"\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n")


def test_a_bad_ehlo_keyword_is_a_451_and_the_session_goes_on(make_session):
    class Broken(smtpd_compat.SMTPChannel):
        ehlo_keywords = ("BAD\r\nKEYWORD",)

    class Server(RecordingServer):
        channel_class = Broken

    session = make_session(Server)
    assert session.send(b"EHLO client\r\n") == (
        b"451 Requested action aborted: local error in processing\r\n")
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


# --------------------------------------------------------------------------
# The greeting's host name and ident


def test_default_greeting_is_smtpds(session):
    expected = "220 %s %s\r\n" % (socket.getfqdn(), smtpd_compat.__version__)
    assert session.greeting == expected.encode()


def test_hostname_and_ident(make_session):
    session = make_session(attributes={"hostname": "mx.example.org",
                                       "ident": "ESMTP ready"})
    assert session.greeting == b"220 mx.example.org ESMTP ready\r\n"
    assert session.send(b"HELO client\r\n") == b"250 mx.example.org\r\n"
    assert session.send(b"RSET\r\n") == b"250 OK\r\n"


def test_hostname_alone_keeps_smtpds_banner(make_session):
    session = make_session(attributes={"hostname": "mx.example.org"})
    assert session.greeting == ("220 mx.example.org %s\r\n"
                                % smtpd_compat.__version__).encode()
    assert session.send(b"EHLO client\r\n", replies=1).startswith(
        b"250-mx.example.org\r\n")


def test_ident_alone_keeps_the_fqdn_as_patched(make_session, monkeypatch):
    class FakeSocket:
        @staticmethod
        def getfqdn():
            return "patched.example"

        def __getattr__(self, name):
            return getattr(socket, name)

    monkeypatch.setattr(smtpd_compat, "socket", FakeSocket())
    session = make_session(attributes={"ident": "Mail service"})
    assert session.greeting == b"220 patched.example Mail service\r\n"


def test_hostname_names_the_server_in_the_421s(make_session):
    session = make_session(attributes={"hostname": "mx.example.org", "max_connections": 1})
    extra = socket.create_connection(session.server.socket.getsockname())
    extra.settimeout(5)
    try:
        session.pump()
        assert extra.recv(1024) == (
            b"421 mx.example.org Error: too many connections, try again later\r\n")
    finally:
        extra.close()


class BareServer(smtpd_compat.SMTPServer):
    """Calls only asyncore.dispatcher.__init__, as lmtpd's LMTPServer does."""

    hostname = "lmtp.example.org"
    ident = "LMTP"

    def __init__(self, localaddr, remoteaddr, map=None):
        smtpd_compat.asyncore.dispatcher.__init__(self, map=map)
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.bind(localaddr)
        self.listen(5)

    def process_message(self, *args, **kwargs):
        return None


def test_a_server_that_skips_smtpservers_init():
    server = BareServer(("127.0.0.1", 0), None, map={})
    session = PumpedSession(server)
    try:
        assert session.greeting == b"220 lmtp.example.org LMTP\r\n"
        assert session.send(b"HELO x\r\n") == b"250 lmtp.example.org\r\n"
    finally:
        session.close()


# --------------------------------------------------------------------------
# Through smtplib


def test_aiosmtpds_ping_example():
    # aiosmtpd's documentation ("Subclassing", docs/smtp.rst), on smtpd_compat:
    #   @syntax('PING [ignored]')
    #   async def smtp_PING(self, arg):
    #       await self.push('259 Pong')
    class MyChannel(smtpd_compat.SMTPChannel):
        @syntax("PING [ignored]")
        def smtp_PING(self, arg):
            self.push("259 Pong")

    class MyServer(Sink):
        channel_class = MyChannel

    with Controller(MyServer) as controller:
        with smtplib.SMTP(controller.hostname, controller.port, timeout=10) as client:
            assert client.docmd("PING") == (259, b"Pong")
            assert client.help("PING") == b"Syntax: PING [ignored]"
            listing = client.help().decode("utf-8")
    # aiosmtpd answers "Supported commands: DATA EHLO HELO HELP MAIL NOOP
    # PING QUIT RCPT RSET VRFY": the same verbs but HELP, which smtpd never
    # listed, in smtpd's order rather than sorted.
    aiosmtpds = "DATA EHLO HELO HELP MAIL NOOP PING QUIT RCPT RSET VRFY".split()
    prefix, verbs = listing.split(": ")
    assert prefix == "Supported commands"
    assert sorted(verbs.split()) == [v for v in aiosmtpds if v != "HELP"]
    assert verbs == SMTPD_VERBS + " PING"


def test_smtplib_sees_the_keywords_and_the_greeting():
    class Server(Sink):
        channel_class = PingChannel
        hostname = "mx.example.org"
        ident = "ESMTP smtpd_compat"

    with Controller(Server) as controller:
        client = smtplib.SMTP(timeout=10)
        try:
            assert client.connect(controller.hostname, controller.port) == (
                220, b"mx.example.org ESMTP smtpd_compat")
            code, text = client.ehlo("client.example")
            assert code == 250 and text.split(b"\n")[0] == b"mx.example.org"
            assert client.has_extn("xping") and client.has_extn("x-echo")
            assert client.esmtp_features["x-echo"] == "5 lines"
            assert client.docmd("PING", "a+b") == (501, b"Syntax: PING [message]")
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: hi\r\n\r\nbody\r\n")
        finally:
            client.quit()
        assert controller.server.messages[0].rcpttos == ["b@example.org"]


# --------------------------------------------------------------------------
# The command line


def test_hostname_option():
    options = smtpd_compat.parseargs(["--hostname", "mx.example.org", "-c", "DebuggingServer",
                                      "127.0.0.1:0"])
    assert options.hostname == "mx.example.org"
    server = _cli.make_server(options)
    try:
        assert server.hostname == "mx.example.org"
        assert server._cached_fqdn() == "mx.example.org"
    finally:
        server.close()


def test_without_the_option_the_class_decides():
    options = smtpd_compat.parseargs(["-c", "DebuggingServer", "127.0.0.1:0"])
    assert options.hostname is None
    server = _cli.make_server(options)
    try:
        assert server.hostname is None
    finally:
        server.close()


@pytest.mark.parametrize("value", ["", "mx example", "mx\r\nexample", "mx.exämple"], ids=repr)
def test_bad_hostname_option(value, capsys):
    with pytest.raises(SystemExit) as exited:
        smtpd_compat.parseargs(["--hostname", value])
    assert exited.value.code == 1
    assert "Invalid --hostname" in capsys.readouterr().err


def test_usage_lists_hostname():
    assert "--hostname name" in smtpd_compat.__doc__
