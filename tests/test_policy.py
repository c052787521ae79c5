"""The channel's private decision points (smtpd_compat._policy), end to end.

A server answers at MAIL, RCPT, DATA and the end of the data with None (the
default reply), a reply line, or a Future of either; these tests drive that
seam through a real socket with smtplib.  PureProxy is its first user
(test_proxy_lockstep.py); issue 13 builds public hooks on it.
"""

import concurrent.futures
import logging
import smtplib
import threading

import pytest

from smtpd_compat.testing import Controller, Sink

pytestmark = pytest.mark.timeout(60)


def later(value, delay=0.2):
    """A Future that a thread resolves after *delay*: a result, or an exception."""
    future = concurrent.futures.Future()

    def resolve():
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)

    threading.Timer(delay, resolve).start()
    return future


class Deciding(Sink):
    """A Sink whose decisions come from the ``answers`` dict: {(step, key): answer}."""

    answers = {}

    def _policy_mail(self, channel, address, params):
        return self.answers.get(("MAIL", address))

    def _policy_rcpt(self, channel, address, params):
        return self.answers.get(("RCPT", address))

    def _policy_data(self, channel):
        return self.answers.get(("DATA", None))

    def _policy_message(self, channel, data):
        return self.answers.get((".", None))


@pytest.fixture
def deciding():
    with Controller(Deciding) as controller:
        controller.server.answers = {}
        yield controller


def client_for(controller):
    client = smtplib.SMTP(controller.hostname, controller.port, timeout=30)
    client.ehlo()
    return client


@pytest.mark.parametrize("wrap", [lambda reply: reply, later], ids=["now", "future"])
def test_refusal_at_rcpt_leaves_the_recipient_out(deciding, wrap):
    deciding.server.answers[("RCPT", "no@example.com")] = wrap("550 5.1.1 Not here")
    with client_for(deciding) as client:
        assert client.mail("s@example.com")[0] == 250
        assert client.rcpt("no@example.com") == (550, b"5.1.1 Not here")
        assert client.rcpt("yes@example.com") == (250, b"OK")
        client.data(b"Subject: x\r\n\r\nbody")
    assert deciding.server.wait_for_message().rcpttos == ["yes@example.com"]


@pytest.mark.parametrize("wrap", [lambda reply: reply, later], ids=["now", "future"])
def test_acceptance_with_own_text_records_the_sender(deciding, wrap):
    deciding.server.answers[("MAIL", "s@example.com")] = wrap("250 2.1.0 Sender fine")
    with client_for(deciding) as client:
        assert client.mail("s@example.com") == (250, b"2.1.0 Sender fine")
        # The sender was recorded: a second MAIL is nested.
        assert client.mail("s@example.com")[0] == 503


def test_refused_mail_starts_no_transaction(deciding):
    deciding.server.answers[("MAIL", "s@example.com")] = later("451 4.3.0 Later")
    with client_for(deciding) as client:
        assert client.mail("s@example.com") == (451, b"4.3.0 Later")
        assert client.rcpt("r@example.com")[0] == 503


def test_refused_data_stays_in_command_state(deciding):
    deciding.server.answers[("DATA", None)] = later("554 5.7.1 No data for you")
    with client_for(deciding) as client:
        client.mail("s@example.com")
        client.rcpt("r@example.com")
        assert client.docmd("DATA") == (554, b"5.7.1 No data for you")
        assert client.noop() == (250, b"OK")


def test_message_answer_replaces_process_message(deciding):
    deciding.server.answers[(".", None)] = later("250 2.0.0 Queued elsewhere")
    with client_for(deciding) as client:
        client.mail("s@example.com")
        client.rcpt("r@example.com")
        assert client.data(b"Subject: x\r\n\r\nbody") == (250, b"2.0.0 Queued elsewhere")
    assert deciding.server.messages == []


def test_failed_decision_answers_451_and_is_logged(deciding, caplog):
    deciding.server.answers[("RCPT", "r@example.com")] = later(RuntimeError("boom"))
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        with client_for(deciding) as client:
            client.mail("s@example.com")
            code, _ = client.rcpt("r@example.com")
            assert code == 451
            # The recipient was not taken.
            assert client.docmd("DATA")[0] == 503
    assert any("policy decision failed" in r.getMessage() for r in caplog.records)


def test_other_clients_are_served_while_a_decision_is_pending(deciding):
    deciding.server.answers[("MAIL", "slow@example.com")] = later("250 OK", delay=2)
    outcome = []
    with client_for(deciding) as slow:
        thread = threading.Thread(target=lambda: outcome.append(slow.mail("slow@example.com")))
        thread.start()
        with client_for(deciding) as other:
            assert other.noop()[0] == 250
            assert not outcome  # still pending
        thread.join(10)
    assert outcome == [(250, b"OK")]
