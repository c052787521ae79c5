"""PureProxy against real upstreams: Postfix's smtp-sink and smtpd_compat itself.

The proxy runs in-process in a `smtpd_compat.testing.Controller` thread;
clients are smtplib.  The rule under test: a client gets 250 only when the
upstream took the message, a 4xx when the upstream was down, stalled or
answered 4xx, the upstream's 5xx when it refused every recipient, and the
proxy never stalls its other clients while a relay is slow.
"""

import io
import logging
import smtplib
import threading

import pytest

import smtpd_compat
from smtpd_compat import PureProxy
from smtpd_compat._proxy import RELAY_UNAVAILABLE
from smtpd_compat.testing import Controller, Sink
from tests.cli_support import SmtpSink, StalledUpstream, free_port

pytestmark = pytest.mark.timeout(120)

MESSAGE = (b"From: sender@example.com\r\nTo: a@example.com\r\nSubject: relay\r\n"
           b"\r\nFirst line.\r\n.leading dot\r\n..two dots\r\n\r\nLast line.\r\n")
RELAYED = (b"From: sender@example.com\nTo: a@example.com\nSubject: relay\n"
           b"X-Peer: 127.0.0.1\n"
           b"\nFirst line.\n.leading dot\n..two dots\n\nLast line.\n")


class QuickProxy(PureProxy):
    """A PureProxy that gives up on a silent upstream after a second."""

    relay_timeout = 1.0


@pytest.fixture
def debugstream(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(smtpd_compat, "DEBUGSTREAM", stream)
    return stream


def proxy_to(upstream_address, server_class=PureProxy, **kwargs):
    return Controller(server_class, remoteaddr=tuple(upstream_address), **kwargs)


def send(proxy, data=MESSAGE, sender="sender@example.com",
         recipients=("a@example.com",), options=()):
    with smtplib.SMTP(proxy.hostname, proxy.port, timeout=60) as client:
        refused = client.sendmail(sender, list(recipients), data,
                                  mail_options=list(options))
    assert refused == {}


def refused_reply(proxy, **kwargs):
    """Send a message that must be refused; return (code, text) of the DATA reply."""
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(proxy, **kwargs)
    return refused.value.smtp_code, refused.value.smtp_error


# --------------------------------------------------------------------------
# Relaying to smtp-sink


@pytest.mark.parametrize("decode_data", [False, True], ids=["bytes", "decode_data"])
def test_relays_to_smtp_sink(decode_data):
    with SmtpSink() as sink, proxy_to(sink.address, decode_data=decode_data) as proxy:
        send(proxy, recipients=["a@example.com", "b@example.com"])
        [message] = sink.wait_for_messages(1)
    assert message.mail_args == "<sender@example.com>"
    assert message.rcpt_args == ["<a@example.com>", "<b@example.com>"]
    assert message.data == RELAYED


def test_decode_data_relays_non_ascii_text_as_utf8():
    data = "Subject: caf\u00e9\r\n\r\nna\u00efve \u2603\r\n".encode("utf-8")
    with SmtpSink() as sink, proxy_to(sink.address, decode_data=True) as proxy:
        send(proxy, data=data)
        [message] = sink.wait_for_messages(1)
    assert message.data == "Subject: caf\u00e9\nX-Peer: 127.0.0.1\n\nna\u00efve \u2603\n" \
        .encode("utf-8")


EIGHT_BIT = b"Subject: 8bit\r\n\r\n\xff\xfe\x80 raw bytes, caf\xc3\xa9\r\n"


def test_body_8bitmime_goes_upstream_when_offered():
    with SmtpSink() as sink, proxy_to(sink.address) as proxy:
        send(proxy, data=EIGHT_BIT, options=["BODY=8BITMIME"])
        [message] = sink.wait_for_messages(1)
    assert message.mail_args == "<sender@example.com> BODY=8BITMIME"
    assert message.data == b"Subject: 8bit\nX-Peer: 127.0.0.1\n\n\xff\xfe\x80 raw bytes, " \
                           b"caf\xc3\xa9\n"


def test_body_8bitmime_is_dropped_when_upstream_lacks_it():
    with SmtpSink(["-8"]) as sink, proxy_to(sink.address) as proxy:
        send(proxy, data=EIGHT_BIT, options=["BODY=8BITMIME"])
        [message] = sink.wait_for_messages(1)
    assert message.mail_args == "<sender@example.com>"
    assert b"\xff\xfe\x80 raw bytes" in message.data


def test_null_sender_and_no_header_separator():
    with SmtpSink() as sink, proxy_to(sink.address) as proxy:
        send(proxy, data=b"no headers\r\nat all", sender="<>")
        [message] = sink.wait_for_messages(1)
    assert message.mail_args == "<>"
    # Like smtpd: with no empty line, X-Peer goes after the last line.
    assert message.data == b"no headers\nat all\nX-Peer: 127.0.0.1\n"


def test_several_messages_on_one_connection():
    with SmtpSink() as sink, proxy_to(sink.address) as proxy:
        with smtplib.SMTP(proxy.hostname, proxy.port, timeout=60) as client:
            for number in range(3):
                client.sendmail("s@example.com", ["r%d@example.com" % number],
                                b"Subject: %d\r\n\r\nbody" % number)
        messages = sink.wait_for_messages(3)
    assert sorted(m.rcpt_args[0] for m in messages) == [
        "<r0@example.com>", "<r1@example.com>", "<r2@example.com>"]


@pytest.mark.parametrize("sink_options, code_class", [
    (["-f", "RCPT"], 5),
    (["-r", "RCPT"], 4),
    (["-f", "MAIL"], 5),
    (["-r", "MAIL"], 4),
    (["-f", "DATA"], 5),
    (["-f", "."], 5),
    (["-r", "."], 4),
    (["-f", "CONNECT"], 5),
    (["-r", "CONNECT"], 4),
    (["-Q", "MAIL"], 4),
    (["-Q", "."], 4),
    (["-q", "RCPT"], 4),
    (["-q", "."], 4),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_smtp_sink_refusals_reach_the_client(sink_options, code_class):
    """smtp-sink -f: 5xx, -r: 4xx, -Q: 421 and hang up, -q: hang up silently."""
    with SmtpSink(sink_options) as sink, proxy_to(sink.address) as proxy:
        code, text = refused_reply(proxy)
        if "." not in sink_options:  # smtp-sink dumps the data before judging it
            assert sink.messages() == []
    assert code // 100 == code_class, (code, text)
    if "-f" in sink_options or "-r" in sink_options:
        # The upstream's own reply, e.g. "500 5.3.0 Error: command failed".
        assert text.endswith(b"Error: command failed")


def test_upstream_down():
    with proxy_to(("127.0.0.1", free_port())) as proxy:
        code, text = refused_reply(proxy)
    assert "%d %s" % (code, text.decode()) == RELAY_UNAVAILABLE


# --------------------------------------------------------------------------
# smtpd_compat itself as the upstream


@pytest.fixture
def upstream():
    with Controller(Sink) as controller:
        yield controller.server


def test_relays_to_a_recording_upstream(upstream):
    with proxy_to(upstream.address) as proxy:
        send(proxy, data=EIGHT_BIT, recipients=["a@example.com", "b@example.com"],
             options=["BODY=8BITMIME"])
    message = upstream.wait_for_message()
    assert message.mailfrom == "sender@example.com"
    assert message.rcpttos == ["a@example.com", "b@example.com"]
    # The final CRLF belongs to the end-of-data marker, as in smtpd.
    assert message.data == b"Subject: 8bit\nX-Peer: 127.0.0.1\n\n\xff\xfe\x80 raw bytes, " \
                           b"caf\xc3\xa9"
    assert "BODY=8BITMIME" in message.mail_options
    assert message.accepted


@pytest.mark.parametrize("refusal", ["550 5.1.1 No such user", "451 4.2.0 Mailbox busy"],
                         ids=["550", "451"])
def test_some_recipients_refused(refusal, upstream, debugstream, caplog):
    """The client gets 250; the refusal is printed to DEBUGSTREAM and logged."""
    upstream.refuse_recipient("gone@example.com", refusal)
    with caplog.at_level(logging.WARNING, logger="smtpd_compat"):
        with proxy_to(upstream.address) as proxy:
            send(proxy, recipients=["a@example.com", "gone@example.com"])
    message = upstream.wait_for_message()
    assert message.rcpttos == ["a@example.com"]
    code, text = refusal.split(" ", 1)
    expected = repr({"gone@example.com": (int(code), text.encode())})
    assert "we got some refusals: %s\n" % expected in debugstream.getvalue()
    [record] = [r for r in caplog.records if r.name == "smtpd_compat"]
    assert record.levelno == logging.WARNING
    assert "gone@example.com" in record.getMessage()


@pytest.mark.parametrize("refusals, expected", [
    (["550 5.1.1 No such user", "553 5.1.3 Bad address"], "550 5.1.1 No such user"),
    (["550 5.1.1 No such user", "451 4.2.0 Mailbox busy"], "451 4.2.0 Mailbox busy"),
    (["452 4.5.3 Too many", "451 4.2.0 Mailbox busy"], "452 4.5.3 Too many"),
], ids=["all-permanent", "one-temporary", "all-temporary"])
def test_every_recipient_refused(refusals, expected, upstream, debugstream):
    recipients = ["a@example.com", "b@example.com"]
    for recipient, refusal in zip(recipients, refusals):
        upstream.refuse_recipient(recipient, refusal)
    with proxy_to(upstream.address) as proxy:
        code, text = refused_reply(proxy, recipients=recipients)
    assert "%d %s" % (code, text.decode()) == expected
    assert upstream.messages == []
    assert "we got some refusals:" in debugstream.getvalue()


@pytest.mark.parametrize("refusal", ["554 5.6.0 Message refused", "451 4.3.0 Try later"],
                         ids=["554", "451"])
def test_refused_at_end_of_data(refusal, upstream):
    upstream.refuse_data(refusal)
    with proxy_to(upstream.address) as proxy:
        code, text = refused_reply(proxy)
    assert "%d %s" % (code, text.decode()) == refusal


def test_upstream_in_the_same_loop():
    """smtpd relayed on the loop thread and deadlocked here; the worker thread does not."""
    socket_map = {}
    sink = Sink(("127.0.0.1", 0), None, map=socket_map)
    proxy = PureProxy(("127.0.0.1", 0), sink.address, map=socket_map)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            smtpd_compat.loop(timeout=0.05, map=socket_map, count=1)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with smtplib.SMTP(*proxy.socket.getsockname(), timeout=60) as client:
            client.sendmail("s@example.com", ["r@example.com"], b"Subject: loop\r\n\r\nx")
        assert sink.wait_for_message().rcpttos == ["r@example.com"]
    finally:
        stop.set()
        thread.join(30)
        for dispatcher in list(socket_map.values()):
            dispatcher.close()


# --------------------------------------------------------------------------
# A stalled upstream


def test_stalled_upstream_times_out_with_4xx_and_never_stalls_other_clients():
    events = []
    lock = threading.Lock()

    def record(event):
        with lock:
            events.append(event)

    with StalledUpstream() as stalled, proxy_to(stalled.address, QuickProxy) as proxy:
        outcome = {}

        def stuck_client():
            try:
                send(proxy)
            except smtplib.SMTPDataError as error:
                outcome["error"] = error
            record("stuck client replied")

        thread = threading.Thread(target=stuck_client)
        thread.start()
        assert stalled.connected.wait(30)
        # The relay is under way and the upstream silent: another client is
        # served from greeting to QUIT meanwhile.
        with smtplib.SMTP(proxy.hostname, proxy.port, timeout=60) as other:
            assert other.ehlo("other.example")[0] == 250
            assert other.noop()[0] == 250
            assert other.mail("s@example.com")[0] == 250
            assert other.rcpt("r@example.com")[0] == 250
            assert other.rset()[0] == 250
        record("other client done, relay %s" % (
            "finished" if stalled.peer_closed.is_set() else "still stalled"))
        thread.join(60)
        assert stalled.peer_closed.wait(30)
    assert events == ["other client done, relay still stalled", "stuck client replied"]
    error = outcome["error"]
    assert "%d %s" % (error.smtp_code, error.smtp_error.decode()) == RELAY_UNAVAILABLE
