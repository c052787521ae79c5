"""PureProxy in lockstep: the upstream session's life, its timeouts, and the
subclasses that keep smtpd's whole-message path (issue 10, items 1, 16-18).

Upstreams are Postfix's smtp-sink (``-W`` makes it wait before a reply) and
the scripted upstream of tests/upstream_support.py, which records every
command line of every session and how the session ended.
"""

import smtplib
import socket
import threading
import time

import pytest

import smtpd_compat
from smtpd_compat import PureProxy
from smtpd_compat._policy import accepts, decide
from smtpd_compat._proxy import RELAY_UNAVAILABLE
from smtpd_compat._upstream import upstream_mail_options, wire_message
from smtpd_compat.testing import Controller
from tests.cli_support import SmtpSink, StalledUpstream
from tests.upstream_support import ScriptedUpstream

pytestmark = pytest.mark.timeout(120)

MESSAGE = b"Subject: lockstep\r\n\r\nbody\r\n.dot\r\n"


def proxy_to(upstream_address, server_class=PureProxy, **attributes):
    controller = Controller(server_class, remoteaddr=tuple(upstream_address))
    controller.start()
    for name, value in attributes.items():
        setattr(controller.server, name, value)
    return controller


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.02)


def no_relay_connections(proxy):
    wait_until(lambda: not proxy.server._relay_sockets, what="upstream connections to end")


def client_for(proxy):
    client = smtplib.SMTP(proxy.hostname, proxy.port, timeout=60)
    client.ehlo()
    return client


def begin(client, recipients=("a@example.com",)):
    assert client.mail("sender@example.com")[0] == 250
    for recipient in recipients:
        assert client.rcpt(recipient)[0] == 250


def timed_message(client, message=MESSAGE):
    """Send DATA and the message; return ((code, text), seconds for the final reply)."""
    assert client.docmd("DATA")[0] == 354
    started = time.monotonic()
    client.send(wire_message(message))
    reply = client.getreply()
    return reply, time.monotonic() - started


# -- item 17: the client does not wait for the upstream's QUIT ----------------------

def test_reply_comes_before_a_slow_upstream_quit_scripted():
    with ScriptedUpstream({"QUIT": 8}) as upstream:
        proxy = proxy_to(upstream.address)
        try:
            with client_for(proxy) as client:
                begin(client)
                (code, _), seconds = timed_message(client)
                assert code == 250
                assert seconds < 2, seconds
            [session] = upstream.wait_for_sessions(1)
            # The QUIT went out after the reply, and is still being answered.
            wait_until(lambda: "QUIT" in session.verbs(), what="the upstream QUIT")
            assert len(session.messages) == 1
        finally:
            proxy.stop()


def test_reply_comes_before_a_slow_upstream_quit_smtp_sink():
    with SmtpSink(["-W", "QUIT:8"]) as sink:
        proxy = proxy_to(sink.address)
        try:
            with client_for(proxy) as client:
                begin(client)
                (code, _), seconds = timed_message(client)
            assert code == 250
            assert seconds < 2, seconds
            assert len(sink.wait_for_messages(1)) == 1
        finally:
            proxy.stop()


# -- item 18: the final dot gets the long timeout ---------------------------------------

@pytest.mark.parametrize("upstream_kind", ["smtp-sink", "scripted"])
def test_slow_final_reply_is_one_delivery_and_250(upstream_kind):
    """The upstream answers the dot after 3 s; relay_timeout is 1 s."""
    if upstream_kind == "smtp-sink":
        upstream = SmtpSink(["-W", ".:3"])
        upstream.__enter__()
    else:
        upstream = ScriptedUpstream({".": 3})
    try:
        proxy = proxy_to(upstream.address, relay_timeout=1.0)
        try:
            with client_for(proxy) as client:
                begin(client)
                (code, _), seconds = timed_message(client)
            assert code == 250
            assert seconds >= 2.5
        finally:
            proxy.stop()
        time.sleep(0.5)
        if upstream_kind == "smtp-sink":
            assert len(upstream.messages()) == 1
        else:
            assert sum(len(s.messages) for s in upstream.sessions) == 1
    finally:
        upstream.__exit__(None, None, None)


def test_relay_data_timeout_bounds_the_final_reply():
    with ScriptedUpstream({".": 3}) as upstream:
        proxy = proxy_to(upstream.address, relay_data_timeout=1.0)
        try:
            with client_for(proxy) as client:
                begin(client)
                (code, text), seconds = timed_message(client)
                assert "%d %s" % (code, text.decode()) == RELAY_UNAVAILABLE
                assert seconds < 2.5
            [session] = upstream.sessions
            # Given up in the middle of the data: closed, never QUIT.
            assert session.closed.wait(10)
            assert "QUIT" not in session.verbs()
            no_relay_connections(proxy)
        finally:
            proxy.stop()


def test_timeout_defaults():
    assert PureProxy.relay_timeout == 60.0
    assert PureProxy.relay_data_timeout == 600.0


# -- the upstream session ends with the client's transaction --------------------------

@pytest.fixture
def scripted():
    with ScriptedUpstream() as upstream:
        yield upstream


@pytest.fixture
def proxy(scripted):
    controller = proxy_to(scripted.address)
    yield controller
    controller.stop()


def test_client_rset_quits_the_upstream_session(scripted, proxy):
    with client_for(proxy) as client:
        begin(client)
        assert client.rset()[0] == 250
        [session] = scripted.wait_for_sessions(1)
        assert session.closed.wait(10)
        assert session.verbs() == ["EHLO", "MAIL", "RCPT", "QUIT"]
        # A new transaction opens a new session.
        begin(client, ["b@example.com"])
        reply, _ = timed_message(client)
        assert reply[0] == 250
    second = scripted.wait_for_sessions(2)[1]
    assert second.closed.wait(10)
    assert second.verbs() == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    no_relay_connections(proxy)


def test_each_message_gets_its_own_upstream_session(scripted, proxy):
    with client_for(proxy) as client:
        for number in range(3):
            client.sendmail("s@example.com", ["r%d@example.com" % number], MESSAGE)
    sessions = scripted.wait_for_sessions(3)
    for session in sessions:
        assert session.closed.wait(10)
        assert session.verbs()[-1] == "QUIT"
        assert len(session.messages) == 1
    no_relay_connections(proxy)


def test_client_quit_mid_transaction_quits_upstream(scripted, proxy):
    with client_for(proxy) as client:
        begin(client)
    [session] = scripted.wait_for_sessions(1)
    assert session.closed.wait(10)
    assert session.verbs() == ["EHLO", "MAIL", "RCPT", "QUIT"]
    assert session.messages == []
    no_relay_connections(proxy)


def raw_transaction(proxy, after_rcpt=b""):
    conn = socket.create_connection((proxy.hostname, proxy.port), timeout=30)
    reader = conn.makefile("rb")
    assert reader.readline().startswith(b"220")
    conn.sendall(b"HELO me\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n"
                 + after_rcpt)
    return conn, reader


def hang_up(conn, reader):
    reader.close()  # the socket's descriptor stays open while its file is
    conn.close()


def test_client_disconnect_mid_transaction_quits_upstream(scripted, proxy):
    conn, reader = raw_transaction(proxy)
    for _ in range(3):
        assert reader.readline().startswith(b"250")
    hang_up(conn, reader)
    [session] = scripted.wait_for_sessions(1)
    assert session.closed.wait(10)
    assert session.verbs()[-1] == "QUIT"
    no_relay_connections(proxy)


def test_client_disconnect_mid_data_drops_the_upstream_message(scripted, proxy):
    conn, reader = raw_transaction(proxy, b"DATA\r\nSubject: half\r\n\r\nhalf a mess")
    for expected in (b"250", b"250", b"250", b"354"):
        assert reader.readline().startswith(expected)
    hang_up(conn, reader)
    [session] = scripted.wait_for_sessions(1)
    assert session.closed.wait(10)
    # A QUIT now would be message text: the connection is closed instead.
    assert session.verbs() == ["EHLO", "MAIL", "RCPT", "DATA"]
    assert session.messages == []
    no_relay_connections(proxy)


def test_idle_timeout_mid_transaction_ends_the_upstream_session(scripted):
    proxy = proxy_to(scripted.address, idle_timeout=0.5)
    try:
        conn, reader = raw_transaction(proxy)
        for _ in range(3):
            assert reader.readline().startswith(b"250")
        assert reader.readline().startswith(b"421")
        hang_up(conn, reader)
        [session] = scripted.wait_for_sessions(1)
        assert session.closed.wait(10)
        assert session.verbs()[-1] == "QUIT"
        no_relay_connections(proxy)
    finally:
        proxy.stop()


def test_server_stop_mid_transaction_ends_the_upstream_session(scripted):
    proxy = proxy_to(scripted.address)
    conn, reader = raw_transaction(proxy)
    try:
        for _ in range(3):
            assert reader.readline().startswith(b"250")
    finally:
        proxy.stop()
        hang_up(conn, reader)
    [session] = scripted.wait_for_sessions(1)
    assert session.closed.wait(10)


def test_abort_relays_cuts_a_step_stuck_on_a_silent_upstream():
    with StalledUpstream() as stalled:
        proxy = proxy_to(stalled.address)
        try:
            with client_for(proxy) as client:
                replies = []
                thread = threading.Thread(
                    target=lambda: replies.append(client.mail("s@example.com")))
                thread.start()
                assert stalled.connected.wait(30)
                proxy.server._abort_relays()
                thread.join(10)
                assert not thread.is_alive()
                code, text = replies[0]
                assert "%d %s" % (code, text.decode()) == RELAY_UNAVAILABLE
            assert stalled.peer_closed.wait(10)
            no_relay_connections(proxy)
        finally:
            proxy.stop()


def test_pipelined_commands_are_answered_in_order():
    """The channel reads no command while a step's reply is pending."""
    with Controller() as upstream_controller:
        upstream = upstream_controller.server
        upstream.refuse_recipient("gone@example.com", "550 5.1.1 No such user")
        proxy = proxy_to(upstream.address)
        try:
            conn = socket.create_connection((proxy.hostname, proxy.port), timeout=30)
            reader = conn.makefile("rb")
            reader.readline()
            conn.sendall(b"EHLO me\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n"
                         b"RCPT TO:<gone@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                         b"DATA\r\nSubject: p\r\n\r\npipelined\r\n.\r\nQUIT\r\n")
            replies = reader.read().split(b"\r\n")
            hang_up(conn, reader)
            replies = [line for line in replies if line and not line.startswith(b"250-")]
            assert replies == [b"250 HELP", b"250 OK", b"250 OK",
                               b"550 5.1.1 No such user", b"250 OK",
                               b"354 End data with <CR><LF>.<CR><LF>", b"250 OK",
                               b"221 Bye"]
            message = upstream.wait_for_message()
            assert message.rcpttos == ["a@example.com", "b@example.com"]
        finally:
            proxy.stop()


# -- item 1: subclasses in 3.11's style keep the whole-message path ---------------------

class Recording:
    """Mix-in: what the overridden methods were called with, and in which thread."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []


class DeliverOverride(Recording, PureProxy):
    def _deliver(self, mailfrom, rcpttos, data):
        self.calls.append((threading.current_thread().name, mailfrom, list(rcpttos), data))
        return PureProxy._deliver(self, mailfrom, rcpttos, data)


class RefusingDeliver(Recording, PureProxy):
    def _deliver(self, mailfrom, rcpttos, data):
        self.calls.append((mailfrom, list(rcpttos)))
        return {rcpt: (550, b"5.7.1 Filtered") for rcpt in rcpttos}


class PartlyRefusingDeliver(Recording, PureProxy):
    def _deliver(self, mailfrom, rcpttos, data):
        return {rcpttos[0]: (452, b"4.5.3 Later")}


class ProcessMessageOverride(Recording, PureProxy):
    def process_message(self, peer, mailfrom, rcpttos, data):
        self.calls.append(mailfrom)
        return PureProxy.process_message(self, peer, mailfrom, rcpttos, data)


class SynchronousOverride(Recording, PureProxy):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        refused = self._deliver(mailfrom, rcpttos, data)
        self.calls.append(refused)


def test_deliver_override_is_called_the_311_way_in_a_worker():
    with SmtpSink(["-f", "RCPT"]) as sink:
        proxy = proxy_to(sink.address, server_class=DeliverOverride)
        try:
            with client_for(proxy) as client:
                # Whole-message path: RCPT is not passed on at once.
                begin(client)
                (code, text), _ = timed_message(client)
        finally:
            proxy.stop()
    # Every recipient refused upstream: the override's refusals are honoured.
    assert (code, text) == (500, b"5.3.0 Error: command failed")
    [(thread, mailfrom, rcpttos, data)] = proxy.server.calls
    assert thread.startswith("smtpd_compat-relay")
    assert (mailfrom, rcpttos) == ("sender@example.com", ["a@example.com"])
    # As smtpd gave it: LF line ends, the last CRLF belongs to the final dot.
    assert data == b"Subject: lockstep\nX-Peer: 127.0.0.1\n\nbody\n.dot"


def test_deliver_override_relays_with_body_8bitmime():
    with SmtpSink() as sink:
        proxy = proxy_to(sink.address, server_class=DeliverOverride)
        try:
            with client_for(proxy) as client:
                client.sendmail("s@example.com", ["r@example.com"], b"Subject: x\r\n\r\n\xff\r\n",
                                mail_options=["BODY=8BITMIME"])
            [message] = sink.wait_for_messages(1)
        finally:
            proxy.stop()
    assert message.mail_args == "<s@example.com> BODY=8BITMIME"


@pytest.mark.parametrize("server_class, expected", [
    (RefusingDeliver, (550, b"5.7.1 Filtered")),
    (PartlyRefusingDeliver, (452, b"4.5.3 Later")),
], ids=["all-refused", "one-deferred"])
def test_deliver_override_refusals_are_honoured(server_class, expected, scripted):
    proxy = proxy_to(scripted.address, server_class=server_class)
    try:
        with client_for(proxy) as client:
            begin(client, ["a@example.com", "b@example.com"])
            reply, _ = timed_message(client)
    finally:
        proxy.stop()
    assert reply == expected
    assert scripted.sessions == []


@pytest.mark.parametrize("server_class, peer_header", [
    (ProcessMessageOverride, b"X-Peer: 127.0.0.1\r\n"),
    (SynchronousOverride, b""),  # PureProxy.process_message adds it, not _deliver
])
def test_process_message_overrides_relay_the_whole_message(
        server_class, peer_header, scripted):
    proxy = proxy_to(scripted.address, server_class=server_class)
    try:
        with client_for(proxy) as client:
            begin(client)
            # Not in lockstep: the upstream has heard nothing yet.
            assert scripted.sessions == []
            reply, _ = timed_message(client)
        assert reply[0] == 250
        [session] = scripted.wait_for_sessions(1)
        assert session.closed.wait(10)
    finally:
        proxy.stop()
    assert session.verbs() == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert session.messages == [b"Subject: lockstep\r\n" + peer_header +
                                b"\r\nbody\r\n..dot\r\n"]
    assert len(proxy.server.calls) == 1


def test_lockstep_is_off_for_an_instance_level_override(scripted):
    proxy = proxy_to(scripted.address)
    try:
        delivered = []
        proxy.server.process_message = lambda *args, **kwargs: delivered.append(args)
        with client_for(proxy) as client:
            client.sendmail("s@example.com", ["r@example.com"], MESSAGE)
    finally:
        proxy.stop()
    assert len(delivered) == 1
    assert scripted.sessions == []


# -- pure parts ----------------------------------------------------------------------------

@pytest.mark.parametrize("message, wire", [
    (b"", b"\r\n.\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b"a", b"a\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"x\r\n.y\r\n..z", b"x\r\n..y\r\n...z\r\n.\r\n"),
], ids=["empty", "line", "no-final-crlf", "lone-dot", "dots"])
def test_wire_message(message, wire):
    assert wire_message(message) == wire


@pytest.mark.parametrize("reply, expected", [
    ("250 OK", True), ("354 go", True), ("251 forwarded", True),
    ("450 later", False), ("550 no", False), ("2", False), ("", False), ("2xx", False),
])
def test_policy_accepts(reply, expected):
    assert accepts(reply) is expected


def test_policy_decide_applies_the_default_and_accepts_once():
    taken = []
    assert decide(None, "250 OK", lambda: taken.append(1)) == "250 OK"
    assert decide("550 no", "250 OK", lambda: taken.append(2)) == "550 no"
    assert decide("250 2.1.0 fine", "250 OK", lambda: taken.append(3)) == "250 2.1.0 fine"
    assert taken == [1, 3]


def test_default_server_hooks_answer_none():
    server = smtpd_compat.SMTPServer(("127.0.0.1", 0), None, map={})
    try:
        assert server._policy_mail(None, "a@x", []) is None
        assert server._policy_rcpt(None, "a@x", []) is None
        assert server._policy_data(None) is None
        assert server._policy_message(None, b"") is None
        assert server._policy_transaction_over(None) is None
    finally:
        server.close()


# -- MAIL parameters that go upstream ------------------------------------------------

@pytest.mark.parametrize("options, offered, relayed", [
    ([], {"8bitmime", "size"}, []),
    (["BODY=8BITMIME", "SIZE=1234"], {"8bitmime", "size"}, ["BODY=8BITMIME", "SIZE=1234"]),
    (["SIZE=1234", "BODY=7BIT"], {"8bitmime", "size"}, ["SIZE=1234", "BODY=7BIT"]),
    (["BODY=8BITMIME", "SIZE=1234"], {"size"}, ["SIZE=1234"]),
    (["BODY=8BITMIME", "SIZE=1234"], {"8bitmime"}, ["BODY=8BITMIME"]),
    (["BODY=8BITMIME", "SIZE=1234"], set(), []),
    (["SMTPUTF8", "SIZE=1"], {"smtputf8", "size"}, ["SIZE=1"]),
], ids=["none", "both", "client-order", "no-8bitmime", "no-size", "nothing-offered",
        "others-stay"])
def test_upstream_mail_options(options, offered, relayed):
    assert upstream_mail_options(options, offered.__contains__) == relayed


def test_size_goes_upstream_when_offered(scripted, proxy):
    """The client's SIZE reaches an upstream that offers SIZE: it can refuse at MAIL."""
    with client_for(proxy) as client:
        client.sendmail("s@example.com", ["r@example.com"], MESSAGE)
    wait_until(lambda: scripted.sessions and scripted.sessions[0].messages, what="a message")
    session = scripted.sessions[0]
    mail = session.lines[session.verbs().index("MAIL")]
    keyword, rest = mail.split(b" ", 1)[1].split(b":", 1)  # smtplib's case varies
    assert (keyword.upper(), rest) == (b"FROM", b"<s@example.com> SIZE=%d" % len(MESSAGE))
