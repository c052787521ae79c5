"""The public policy hooks of SMTPServer (issue 13, "Policy hooks"), on the wire.

Every hook (check_connection, check_helo for HELO and EHLO, check_mail,
check_rcpt, check_data, check_message) is driven through a real loopback
socket whose server loop the test pumps (tests/conftest.py), so each reply
is compared byte for byte: a refusal, a multi-line reply, a Future's
answer, a bad return value and an exception (a logged 451, and the session
goes on).  The pure validation of an answer is tested without sockets.
"""

import concurrent.futures
import logging
import smtplib
import socket
import threading
import time

import pytest

import smtpd_compat
from smtpd_compat import _policy
from smtpd_compat._loop import Poller
from smtpd_compat.policy import CLOSE, Session
from smtpd_compat.testing import Controller
from tests.conftest import FINAL_REPLY_LINE, RecordingServer
from tests.upstream_support import ScriptedUpstream

pytestmark = pytest.mark.timeout(60)

FAILED = b"451 Requested action aborted: local error in processing\r\n"
MESSAGE_DATA = b"Subject: x\r\n\r\nbody\r\n.\r\n"


class Hooked(RecordingServer):
    """A server whose hooks answer from ``answers``: {stage: answer or function}.

    A function is called with the hook's arguments (the session first);
    ``seen`` records (stage, arguments) of every call.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answers = {}
        self.seen = []

    def _answer(self, stage, session, *arguments):
        self.seen.append((stage, arguments))
        answer = self.answers.get(stage)
        return answer(session, *arguments) if callable(answer) else answer

    def check_connection(self, session):
        return self._answer("connection", session)

    def check_helo(self, session, command, name):
        return self._answer("helo", session, command, name)

    def check_mail(self, session, address, params):
        return self._answer("mail", session, address, params)

    def check_rcpt(self, session, address, params):
        return self._answer("rcpt", session, address, params)

    def check_data(self, session):
        return self._answer("data", session)

    def check_message(self, session, data):
        return self._answer("message", session, data)


@pytest.fixture
def hooked(make_session):
    """Factory: a pumped session on a Hooked server with these answers."""
    def make(**answers):
        return make_session(Hooked, attributes={"answers": answers})
    return make


# What leads up to each stage, and the command line the stage decides on.
BEFORE = {
    "helo": [],
    "ehlo": [],
    "mail": [b"EHLO client.example\r\n"],
    "rcpt": [b"EHLO client.example\r\n", b"MAIL FROM:<s@example.com>\r\n"],
    "data": [b"EHLO client.example\r\n", b"MAIL FROM:<s@example.com>\r\n",
             b"RCPT TO:<r@example.com>\r\n"],
    "message": [b"EHLO client.example\r\n", b"MAIL FROM:<s@example.com>\r\n",
                b"RCPT TO:<r@example.com>\r\n", b"DATA\r\n"],
}
COMMAND = {
    "helo": b"HELO client.example\r\n",
    "ehlo": b"EHLO client.example\r\n",
    "mail": b"MAIL FROM:<s@example.com>\r\n",
    "rcpt": b"RCPT TO:<r@example.com>\r\n",
    "data": b"DATA\r\n",
    "message": MESSAGE_DATA,
}
# The hook that decides at each stage (HELO and EHLO share one).
HOOK = {"helo": "helo", "ehlo": "helo", "mail": "mail", "rcpt": "rcpt",
        "data": "data", "message": "message"}
# After a refusal, a command whose reply shows that nothing was recorded.
AFTERWARDS = {
    "helo": (b"MAIL FROM:<s@example.com>\r\n", b"503 Error: send HELO first\r\n"),
    "ehlo": (b"MAIL FROM:<s@example.com>\r\n", b"503 Error: send HELO first\r\n"),
    "mail": (b"RCPT TO:<r@example.com>\r\n", b"503 Error: need MAIL command\r\n"),
    "rcpt": (b"DATA\r\n", b"503 Error: need RCPT command\r\n"),
    "data": (b"NOOP\r\n", b"250 OK\r\n"),
    "message": (b"RCPT TO:<r@example.com>\r\n", b"503 Error: need MAIL command\r\n"),
}
# The reply when the hook answers None.
DEFAULT = {
    "mail": b"250 OK\r\n",
    "rcpt": b"250 OK\r\n",
    "data": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    "message": b"250 OK\r\n",
}
STAGES = sorted(BEFORE)


def reach(session, stage):
    for line in BEFORE[stage]:
        session.send(line)


def answer_at(session, stage, answer):
    session.server.answers[HOOK[stage]] = answer
    reach(session, stage)
    return session.send(COMMAND[stage])


# -- each hook: refusal, multi-line, Future, bad value, exception -----------------

@pytest.mark.parametrize("stage", STAGES)
def test_refusal_is_sent_and_nothing_is_recorded(hooked, stage):
    session = hooked()
    assert answer_at(session, stage, "550 5.7.1 Refused here") == b"550 5.7.1 Refused here\r\n"
    command, expected = AFTERWARDS[stage]
    assert session.send(command) == expected
    assert session.server.messages == []
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


@pytest.mark.parametrize("stage", STAGES)
def test_multi_line_refusal(hooked, stage):
    session = hooked()
    reply = answer_at(session, stage, ["553 Bad helo string", "553 Evil IP"])
    assert reply == b"553-Bad helo string\r\n553 Evil IP\r\n"
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


@pytest.mark.parametrize("stage", STAGES)
def test_future_answer_holds_the_reply_until_done(hooked, stage):
    session = hooked()
    future = concurrent.futures.Future()
    session.server.answers[HOOK[stage]] = future
    reach(session, stage)
    session.client.sendall(COMMAND[stage] + b"NOOP\r\n")
    assert session.nothing_more(10) == b""  # pending: no reply, NOOP not read yet
    future.set_result(["450 4.7.1 Try again", "later"])
    assert session.read(2) == b"450-4.7.1 Try again\r\n450 later\r\n250 OK\r\n"


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("bad", [
    42, b"550 no", "hello", "", [], ["550 a", "451 b"], ["550 a", 7], "199 what",
], ids=["int", "bytes", "no-code", "empty", "empty-list", "mixed-codes", "not-str", "1yz"])
def test_bad_value_is_a_logged_451(hooked, stage, bad, caplog):
    session = hooked()
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert answer_at(session, stage, bad) == FAILED
    assert any("policy hook check_%s returned" % HOOK[stage] in record.getMessage()
               for record in caplog.records)
    command, expected = AFTERWARDS[stage]
    assert session.send(command) == expected


@pytest.mark.parametrize("stage", STAGES)
def test_bad_value_from_a_future_is_a_logged_451(hooked, stage, caplog):
    session = hooked()
    future = concurrent.futures.Future()
    future.set_result(3.5)
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert answer_at(session, stage, future) == FAILED
    assert any("returned" in record.getMessage() for record in caplog.records)


def raise_error(session, *arguments):
    raise RuntimeError("database down")


@pytest.mark.parametrize("stage", STAGES)
def test_exception_is_a_logged_451_and_the_session_goes_on(hooked, stage, caplog):
    session = hooked()
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert answer_at(session, stage, raise_error) == FAILED
    assert any("policy hook check_%s failed" % HOOK[stage] in record.getMessage()
               and record.exc_info for record in caplog.records)
    command, expected = AFTERWARDS[stage]
    assert session.send(command) == expected
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


@pytest.mark.parametrize("stage", STAGES)
def test_failed_future_is_a_logged_451(hooked, stage, caplog):
    session = hooked()
    future = concurrent.futures.Future()
    future.set_exception(OSError("DNS timeout"))
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert answer_at(session, stage, future) == FAILED
    assert any("failed" in record.getMessage() for record in caplog.records)
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"


@pytest.mark.parametrize("stage", sorted(DEFAULT))
def test_none_gives_the_default_reply(hooked, stage):
    session = hooked()
    assert answer_at(session, stage, None) == DEFAULT[stage]


@pytest.mark.parametrize("stage", STAGES)
def test_421_closes_the_connection(hooked, stage):
    session = hooked()
    assert answer_at(session, stage, "421 4.3.2 Going down") == b"421 4.3.2 Going down\r\n"
    assert session.closed_by_server()


@pytest.mark.parametrize("stage", STAGES)
def test_close_ends_the_session_without_a_reply(hooked, stage):
    session = hooked()
    session.server.answers[HOOK[stage]] = CLOSE
    reach(session, stage)
    session.client.sendall(COMMAND[stage])
    assert session.nothing_more(10) == b""
    assert session.closed_by_server()


def test_other_clients_are_served_while_a_hook_decides():
    class Slow(RecordingServer):
        def check_mail(self, session, address, params):
            if address.startswith("slow"):
                future = concurrent.futures.Future()
                threading.Timer(2.0, future.set_result, ("250 2.1.0 Finally",)).start()
                return future
            return None

    outcome = []
    with Controller(Slow) as controller:
        with smtplib.SMTP(controller.hostname, controller.port, timeout=30) as slow:
            slow.ehlo()
            thread = threading.Thread(target=lambda: outcome.append(slow.mail("slow@x.example")))
            thread.start()
            with smtplib.SMTP(controller.hostname, controller.port, timeout=30) as other:
                other.ehlo()
                assert other.mail("quick@x.example") == (250, b"OK")
                assert not outcome  # still waiting for its decision
            thread.join(10)
    assert outcome == [(250, b"2.1.0 Finally")]


# -- acceptance with text of its own ------------------------------------------------

def test_helo_acceptance_replaces_the_reply_and_takes_the_greeting(hooked):
    session = hooked(helo="250 mx.example.org greets client.example")
    assert session.send(b"HELO client.example\r\n") == (
        b"250 mx.example.org greets client.example\r\n")
    assert session.send(b"MAIL FROM:<s@example.com>\r\n") == b"250 OK\r\n"


def test_ehlo_acceptance_with_own_lines_still_enables_esmtp(hooked):
    session = hooked(helo=["250 mx.example.org", "SIZE 1000", "HELP"])
    assert session.send(b"EHLO client.example\r\n") == (
        b"250-mx.example.org\r\n250-SIZE 1000\r\n250 HELP\r\n")
    # ESMTP parameters are taken, as after any EHLO.
    assert session.send(b"MAIL FROM:<s@example.com> SIZE=100\r\n") == b"250 OK\r\n"


def test_ehlo_refusal_leaves_helo_possible(hooked):
    session = hooked(helo=lambda s, command, name: "550 No EHLO" if command == "EHLO" else None)
    assert session.send(b"EHLO client.example\r\n") == b"550 No EHLO\r\n"
    assert session.send(b"HELO client.example\r\n").startswith(b"250 ")
    assert [seen for seen in session.server.seen if seen[0] == "helo"] == [
        ("helo", ("EHLO", "client.example")), ("helo", ("HELO", "client.example"))]


def test_rcpt_acceptance_with_own_text_adds_the_recipient(hooked):
    session = hooked(rcpt=lambda s, address, params: (
        "250 2.1.5 Fine" if address.startswith("yes") else "550 5.1.1 No such user"))
    reach(session, "rcpt")
    assert session.send(b"RCPT TO:<yes@example.com>\r\n") == b"250 2.1.5 Fine\r\n"
    assert session.send(b"RCPT TO:<no@example.com>\r\n") == b"550 5.1.1 No such user\r\n"
    session.send(b"DATA\r\n")
    assert session.send(MESSAGE_DATA) == b"250 OK\r\n"
    assert session.server.messages[0][1] == ["yes@example.com"]


def test_data_acceptance_must_be_3yz(hooked, caplog):
    session = hooked(data="354 Go ahead, make my day")
    reach(session, "data")
    assert session.send(b"DATA\r\n") == b"354 Go ahead, make my day\r\n"
    assert session.send(MESSAGE_DATA) == b"250 OK\r\n"


def test_message_acceptance_text_stands_where_process_message_says_none(hooked):
    session = hooked(message="250 2.0.0 Queued as 1234")
    reach(session, "message")
    assert session.send(MESSAGE_DATA) == b"250 2.0.0 Queued as 1234\r\n"
    assert len(session.server.messages) == 1
    session.server.reply = "250 2.0.0 process_message has the last word"
    reach(session, "message")
    assert session.send(MESSAGE_DATA) == b"250 2.0.0 process_message has the last word\r\n"


def test_message_hook_sees_the_data_and_a_future_delays_delivery(hooked):
    future = concurrent.futures.Future()
    session = hooked(message=future)
    reach(session, "message")
    session.client.sendall(MESSAGE_DATA)
    assert session.nothing_more(10) == b""
    assert session.server.messages == []  # process_message waits for the decision
    future.set_result(None)
    assert session.read() == b"250 OK\r\n"
    assert session.server.messages[0][2] == b"Subject: x\n\nbody"
    assert session.server.seen[-1] == ("message", (b"Subject: x\n\nbody",))


def test_message_refused_by_a_future_is_never_delivered(hooked):
    future = concurrent.futures.Future()
    session = hooked(message=future)
    reach(session, "message")
    session.client.sendall(MESSAGE_DATA)
    session.nothing_more(5)
    future.set_result("554 5.7.1 Spam")
    assert session.read() == b"554 5.7.1 Spam\r\n"
    assert session.server.messages == []


def test_message_decision_for_a_client_that_left_delivers_nothing(hooked):
    future = concurrent.futures.Future()
    session = hooked(message=future)
    reach(session, "message")
    session.client.sendall(MESSAGE_DATA)
    session.nothing_more(5)
    session.client.close()
    session.pump(10)
    future.set_result(None)
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        session.pump(1)
    assert session.server.messages == []


# -- the session view --------------------------------------------------------------

def snapshot(session):
    return {"peer": session.peer, "helo_name": session.helo_name, "esmtp": session.esmtp,
            "mailfrom": session.mailfrom, "mail_options": session.mail_options,
            "rcpttos": session.rcpttos, "tls": session.tls, "auth_login": session.auth_login}


def test_session_shows_the_connection_so_far(hooked):
    views = {}

    def keep(stage):
        def record(session, *arguments):
            views[stage] = snapshot(session)
        return record

    session = hooked(**{stage: keep(stage) for stage in
                        ("connection", "helo", "mail", "rcpt", "data", "message")})
    peer = session.client.getsockname()
    session.send(b"EHLO client.example\r\n")
    session.send(b"MAIL FROM:<s@example.com> BODY=8BITMIME\r\n")
    session.send(b"RCPT TO:<a@example.com>\r\n")
    session.send(b"RCPT TO:<b@example.com>\r\n")
    session.send(b"DATA\r\n")
    session.send(MESSAGE_DATA)
    base = {"peer": peer, "tls": False, "auth_login": None}
    assert views["connection"] == dict(base, helo_name=None, esmtp=False, mailfrom=None,
                                       mail_options=[], rcpttos=[])
    assert views["helo"] == views["connection"]  # asked before the greeting is taken
    assert views["mail"] == dict(base, helo_name="client.example", esmtp=True,
                                 mailfrom=None, mail_options=[], rcpttos=[])
    assert views["rcpt"] == dict(views["mail"], mailfrom="s@example.com",
                                 mail_options=["BODY=8BITMIME"], rcpttos=["a@example.com"])
    assert views["data"]["rcpttos"] == ["a@example.com", "b@example.com"]
    assert views["message"] == views["data"]


def test_session_reads_tls_and_auth_facts_from_the_channel(hooked):
    logins = []
    session = hooked(mail=lambda s, address, params: logins.append((s.tls, s.auth_login)))
    session.send(b"EHLO client.example\r\n")
    channel = next(iter(session.server._channels))
    channel.tls_active = True  # what the tls and auth branches set
    channel.auth_login = "alice"
    session.send(b"MAIL FROM:<s@example.com>\r\n")
    assert logins == [(True, "alice")]


def test_session_rcpttos_is_a_copy(hooked):
    session = hooked(rcpt=lambda s, address, params: s.rcpttos.append("evil@example.com"))
    reach(session, "data")
    session.send(b"DATA\r\n")
    session.send(MESSAGE_DATA)
    assert session.server.messages[0][1] == ["r@example.com"]


def test_state_lives_as_long_as_the_connection(hooked):
    def count(session, address, params):
        session.state.recipients = getattr(session.state, "recipients", 0) + 1
        if session.state.recipients > 2:
            return "452 4.5.3 Three is a crowd on this connection"

    session = hooked(rcpt=count)
    reach(session, "rcpt")
    assert session.send(b"RCPT TO:<a@example.com>\r\n") == b"250 OK\r\n"
    assert session.send(b"RSET\r\n") == b"250 OK\r\n"  # a new transaction, same state
    session.send(b"MAIL FROM:<s@example.com>\r\n")
    assert session.send(b"RCPT TO:<b@example.com>\r\n") == b"250 OK\r\n"
    assert session.send(b"RCPT TO:<c@example.com>\r\n") == (
        b"452 4.5.3 Three is a crowd on this connection\r\n")


def test_state_is_separate_per_connection_and_not_made_when_unused(make_session):
    first = make_session(Hooked)
    first.server.answers["mail"] = lambda s, a, p: setattr(s.state, "seen", a)
    first.send(b"EHLO client.example\r\n")
    first.send(b"MAIL FROM:<s@example.com>\r\n")
    channel = next(iter(first.server._channels))
    assert channel.policy_state.seen == "s@example.com"
    other = make_session()
    other.send(b"EHLO client.example\r\n")
    other.send(b"MAIL FROM:<s@example.com>\r\n")
    plain = next(iter(other.server._channels))
    assert "policy_state" not in vars(plain)


def test_session_repr_names_the_peer(hooked):
    reprs = []
    session = hooked(mail=lambda s, a, p: reprs.append(repr(s)))
    reach(session, "rcpt")
    assert reprs and "client.example" in reprs[0] and "peer=" in reprs[0]


# -- the new connection ------------------------------------------------------------

class Connecting:
    """A client of *server* whose greeting may not come (the test pumps the loop)."""

    def __init__(self, server):
        self.server = server
        self.poller = Poller(self.server._map)
        self.client = socket.create_connection(self.server.socket.getsockname()[:2], timeout=5)
        self.client.setblocking(False)

    def received(self, rounds=10) -> bytes:
        data = b""
        for _ in range(rounds):
            self.poller.poll(0.01)
            try:
                data += self.client.recv(65536)
            except BlockingIOError:
                pass
        return data

    def closed(self) -> bool:
        for _ in range(20):
            self.poller.poll(0.01)
            try:
                if self.client.recv(1) == b"":
                    return True
            except BlockingIOError:
                continue
            except ConnectionResetError:
                return True
        return False

    def close(self):
        self.client.close()
        self.poller.close()
        smtpd_compat.asyncore.close_all(self.server._map)


@pytest.fixture
def connecting():
    made = []

    def make(answer):
        server = Hooked(("127.0.0.1", 0), None, map={})
        server.answers["connection"] = answer
        made.append(Connecting(server))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_connection_refused_with_a_reply(connecting):
    client = connecting("554 5.7.1 SMTP service not available")
    assert client.received() == b"554 5.7.1 SMTP service not available\r\n"
    assert client.closed()


def test_connection_closed_without_a_word(connecting):
    client = connecting(CLOSE)
    assert client.received() == b""
    assert client.closed()


def test_connection_greeted_with_own_text(connecting):
    client = connecting(["220-mx.example.org ESMTP", "220 No UCE"])
    assert client.received() == b"220-mx.example.org ESMTP\r\n220 No UCE\r\n"
    client.client.sendall(b"NOOP\r\n")
    assert client.received() == b"250 OK\r\n"


def test_connection_decided_by_a_future(connecting):
    future = concurrent.futures.Future()
    client = connecting(future)
    client.client.sendall(b"NOOP\r\n")
    assert client.received() == b""  # no greeting yet, and NOOP waits
    future.set_result(None)
    received = client.received(20)
    assert FINAL_REPLY_LINE.findall(received)[0].startswith(b"220 ")
    assert received.endswith(b"\r\n250 OK\r\n")


def test_connection_refused_by_a_future(connecting):
    future = concurrent.futures.Future()
    client = connecting(future)
    assert client.received() == b""
    future.set_result("421 4.3.2 Try later")
    assert client.received() == b"421 4.3.2 Try later\r\n"
    assert client.closed()


@pytest.mark.parametrize("answer", [raise_error, "hello", 7], ids=["raises", "bad", "int"])
def test_connection_hook_failure_is_a_451_and_goodbye(connecting, answer, caplog):
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        client = connecting(answer)
        assert client.received() == FAILED
    assert client.closed()
    assert any("check_connection" in record.getMessage() for record in caplog.records)


# -- defaults: the hooks of SMTPServer are not even called ---------------------------

@pytest.mark.parametrize("hook", ["check_connection", "check_helo", "check_mail",
                                  "check_rcpt", "check_data", "check_message"])
def test_default_hooks_answer_none_and_are_skipped(hook):
    method = getattr(smtpd_compat.SMTPServer, hook)
    assert method.__doc__
    assert method._smtpd_compat_default_hook is True
    arguments = {"check_connection": 0, "check_helo": 2, "check_mail": 2,
                 "check_rcpt": 2, "check_data": 0, "check_message": 1}[hook]
    assert method(None, None, *[None] * arguments) is None


def test_an_override_that_calls_the_default_is_called(hooked):
    class Counting(RecordingServer):
        calls = 0

        def check_rcpt(self, session, address, params):
            type(self).calls += 1
            return super().check_rcpt(session, address, params)

    with Controller(Counting) as controller:
        with smtplib.SMTP(controller.hostname, controller.port, timeout=30) as client:
            client.ehlo()
            client.mail("s@example.com")
            assert client.rcpt("r@example.com") == (250, b"OK")
    assert Counting.calls == 1


# -- with PureProxy: the local decision first, then the upstream ----------------------

class LocalPolicyProxy(smtpd_compat.PureProxy):
    deferred = False

    def check_rcpt(self, session, address, params):
        answer = None
        if address.startswith("local-no"):
            answer = "550 5.7.1 Refused locally"
        elif address.startswith("local-yes"):
            answer = "250 2.1.5 Accepted locally"
        if self.deferred:
            future = concurrent.futures.Future()
            threading.Timer(0.1, future.set_result, (answer,)).start()
            return future
        return answer


@pytest.mark.parametrize("deferred", [False, True], ids=["now", "future"])
def test_public_hooks_decide_before_pureproxy_asks_the_upstream(deferred):
    class Proxy(LocalPolicyProxy):
        pass

    Proxy.deferred = deferred
    with ScriptedUpstream() as upstream:
        with Controller(Proxy, remoteaddr=tuple(upstream.address)) as proxy:
            with smtplib.SMTP(proxy.hostname, proxy.port, timeout=30) as client:
                client.ehlo()
                assert client.mail("s@example.com")[0] == 250
                assert client.rcpt("local-no@example.com") == (550, b"5.7.1 Refused locally")
                assert client.rcpt("ok@example.com")[0] == 250
                # Accepted locally, and by the upstream: the upstream's reply wins.
                code, text = client.rcpt("local-yes@example.com")
                assert code == 250 and text != b"2.1.5 Accepted locally"
                assert client.data(b"Subject: x\r\n\r\nbody")[0] == 250
            sessions = upstream.wait_for_sessions(1)
    rcpts = [line.upper() for line in sessions[0].lines if line.upper().startswith(b"RCPT")]
    assert rcpts == [b"RCPT TO:<OK@EXAMPLE.COM>", b"RCPT TO:<LOCAL-YES@EXAMPLE.COM>"]


# -- the pure part: what an answer may be --------------------------------------------

@pytest.mark.parametrize("answer, accepting, reply", [
    (None, "2", None),
    (CLOSE, "2", ""),
    ("250 OK", "2", "250 OK"),
    ("550 5.1.1 No", "2", "550 5.1.1 No"),
    ("354 go", "3", "354 go"),
    ("553 Bad helo string\r\n553 Evil IP", "2", "553-Bad helo string\r\n553 Evil IP"),
    ("553-Bad helo string\n553 Evil IP\n", "2", "553-Bad helo string\r\n553 Evil IP"),
    (["553 Bad helo string", "Evil IP"], "2", "553-Bad helo string\r\n553 Evil IP"),
    (("553-Bad", "553-helo", "553 string"), "2", "553-Bad\r\n553-helo\r\n553 string"),
    (["550"], "2", "550"),
    ("550 bell\x07here", "2", "550 bell\\x07here"),
], ids=["none", "close", "ok", "refusal", "354", "crlf-lines", "lf-lines", "list",
        "tuple-dashes", "code-only", "control-char"])
def test_reply_for_answer(answer, accepting, reply):
    assert _policy.reply_for_answer(answer, accepting) == (reply, None)


@pytest.mark.parametrize("answer, accepting, why", [
    ("354 go", "2", "does not belong"),
    ("250 OK", "3", "does not belong"),
    ("150 hm", "2", "does not belong"),
    ("OK", "2", "no reply code"),
    ("", "2", "no reply code"),
    (["550 a", "450 b"], "2", "different reply codes"),
    ([], "2", "not a reply"),
    (["550 a", None], "2", "not a reply"),
    (b"550 no", "2", "not a reply"),
    (550, "2", "not a reply"),
    (True, "2", "not a reply"),
    (concurrent.futures.Future(), "2", "not a reply"),
], ids=["354-at-mail", "250-at-data", "1yz", "no-code", "empty", "mixed", "empty-list",
        "none-line", "bytes", "int", "bool", "future-of-future"])
def test_reply_for_answer_problems(answer, accepting, why):
    reply, problem = _policy.reply_for_answer(answer, accepting)
    assert reply == FAILED.decode().rstrip("\r\n")
    assert why in problem


@pytest.mark.parametrize("reply, accepting, expected", [
    ("250 OK", "2", True), ("354 go", "3", True), ("354 go", "2", False),
    ("550 no", "2", False), ("", "2", False), ("2", "2", False), ("2xx", "2", False),
])
def test_accepts_at_a_stage(reply, accepting, expected):
    assert _policy.accepts(reply, accepting) is expected


def test_or_default_fills_in_only_none():
    assert _policy.or_default(None, "250 mine") == "250 mine"
    assert _policy.or_default("550 theirs", "250 mine") == "550 theirs"
    assert _policy.or_default(None, None) is None
    future = concurrent.futures.Future()
    chained = _policy.or_default(future, "250 mine")
    future.set_result(None)
    assert chained.result(0) == "250 mine"
    failing = concurrent.futures.Future()
    chained = _policy.or_default(failing, "250 mine")
    failing.set_exception(OSError("gone"))
    with pytest.raises(OSError):
        chained.result(0)


def test_session_is_public_in_the_policy_module_only():
    assert Session.__module__ == "smtpd_compat.policy"
    assert not hasattr(smtpd_compat, "Session")
    assert repr(CLOSE) == "smtpd_compat.policy.CLOSE"
