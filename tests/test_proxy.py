"""PureProxy against real upstreams: Postfix's smtp-sink and smtpd_compat itself.

The proxy runs in-process in a `smtpd_compat.testing.Controller` thread;
clients are smtplib.  The rule under test: PureProxy relays in lockstep, so
each of the client's MAIL, RCPT, DATA and final dot gets the upstream's own
reply to it (4xx when the upstream was down or stalled, 451 for its 421),
and the proxy never stalls its other clients while a relay is slow.  Lockstep
details, subclasses that keep smtpd's whole-message path and the upstream
session's end are in test_proxy_lockstep.py.
"""

import io
import smtplib
import threading

import pytest

import smtpd_compat
from smtpd_compat import PureProxy
from smtpd_compat._parsing import to_crlf
from smtpd_compat._proxy import RELAY_UNAVAILABLE
from smtpd_compat._upstream import wire_message
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


def steps(proxy, data=MESSAGE, sender="sender@example.com",
          recipients=("a@example.com",), options=()):
    """One transaction command by command: [(step, code, text)].

    Stops after a refused MAIL, after the RCPTs when none was accepted, and
    after a refused DATA; the steps are "MAIL", "RCPT", "DATA" and ".".
    """
    replies = []
    with smtplib.SMTP(proxy.hostname, proxy.port, timeout=60) as client:
        client.ehlo()
        code, text = client.mail(sender, list(options))
        replies.append(("MAIL", code, text))
        if code != 250:
            return replies
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            replies.append(("RCPT", code, text))
        if all(code != 250 for step, code, _ in replies if step == "RCPT"):
            return replies
        code, text = client.docmd("DATA")
        replies.append(("DATA", code, text))
        if code != 354:
            return replies
        client.send(wire_message(to_crlf(data)))
        code, text = client.getreply()
        replies.append((".", code, text))
    return replies


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


@pytest.mark.parametrize("sink_options, refused_at, code_class", [
    (["-f", "RCPT"], "RCPT", 5),
    (["-r", "RCPT"], "RCPT", 4),
    (["-f", "MAIL"], "MAIL", 5),
    (["-r", "MAIL"], "MAIL", 4),
    (["-f", "DATA"], "DATA", 5),
    (["-r", "DATA"], "DATA", 4),
    (["-f", "."], ".", 5),
    (["-r", "."], ".", 4),
    (["-f", "CONNECT"], "MAIL", 5),
    (["-r", "CONNECT"], "MAIL", 4),
    (["-Q", "MAIL"], "MAIL", 4),
    (["-Q", "RCPT"], "RCPT", 4),
    (["-Q", "."], ".", 4),
    (["-q", "RCPT"], "RCPT", 4),
    (["-q", "."], ".", 4),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_smtp_sink_refusals_reach_the_client_at_the_same_step(
        sink_options, refused_at, code_class):
    """smtp-sink -f: 5xx, -r: 4xx, -Q: 421 and hang up, -q: hang up silently."""
    with SmtpSink(sink_options) as sink, proxy_to(sink.address) as proxy:
        replies = steps(proxy)
        if "." not in sink_options:  # smtp-sink dumps the data before judging it
            assert sink.messages() == []
    *accepted, (step, code, text) = replies
    assert all(c in (250, 354) for _, c, _ in accepted), replies
    assert (step, code // 100) == (refused_at, code_class), replies
    if "-f" in sink_options or "-r" in sink_options:
        # The upstream's own reply, e.g. "500 5.3.0 Error: command failed".
        assert text.endswith(b"Error: command failed")
    if "-Q" in sink_options:
        # Only the upstream session closed: the client hears 451, not 421.
        assert code == 451


def test_upstream_refusing_with_its_own_text():
    """smtp-sink -B/-b: the client gets the upstream's reply text verbatim."""
    with SmtpSink(["-f", "RCPT", "-B", "550 5.1.1 No such user here"]) as sink, \
            proxy_to(sink.address) as proxy:
        replies = steps(proxy, recipients=["gone@example.com"])
        assert sink.messages() == []
    assert replies[-1] == ("RCPT", 550, b"5.1.1 No such user here")


def test_452_too_many_recipients_reaches_the_client_as_452():
    """A deferral at RCPT is the client's to retry, never a silent loss."""
    with SmtpSink(["-r", "RCPT", "-b", "452 4.5.3 Too many recipients"]) as sink, \
            proxy_to(sink.address) as proxy:
        with smtplib.SMTP(proxy.hostname, proxy.port, timeout=60) as client:
            client.ehlo()
            assert client.mail("sender@example.com")[0] == 250
            assert client.rcpt("a@example.com") == (452, b"4.5.3 Too many recipients")
            # No recipient accepted: nothing to send.
            assert client.docmd("DATA")[0] == 503
        assert sink.messages() == []


def test_upstream_down_answers_4xx_at_mail():
    with proxy_to(("127.0.0.1", free_port())) as proxy:
        with smtplib.SMTP(proxy.hostname, proxy.port, timeout=60) as client:
            client.ehlo()
            code, text = client.mail("sender@example.com")
            assert "%d %s" % (code, text.decode()) == RELAY_UNAVAILABLE
            # The transaction never started: RCPT needs a MAIL first.
            assert client.rcpt("a@example.com")[0] == 503


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


@pytest.mark.parametrize("refusal", ["550 5.1.1 No such user", "451 4.2.0 Mailbox busy",
                                     "452 4.5.3 Too many recipients"],
                         ids=["550", "451", "452"])
def test_refused_recipient_gets_the_upstreams_reply_and_is_not_relayed(
        refusal, upstream, debugstream):
    upstream.refuse_recipient("gone@example.com", refusal)
    with proxy_to(upstream.address) as proxy:
        replies = steps(proxy, recipients=["a@example.com", "gone@example.com"])
    code, text = refusal.split(" ", 1)
    assert replies == [("MAIL", 250, b"OK"), ("RCPT", 250, b"OK"),
                       ("RCPT", int(code), text.encode()),
                       ("DATA", 354, b"End data with <CR><LF>.<CR><LF>"), (".", 250, b"OK")]
    message = upstream.wait_for_message()
    assert message.rcpttos == ["a@example.com"]
    assert "gone@example.com" in debugstream.getvalue()


def test_every_recipient_refused(upstream):
    refusals = {"a@example.com": "550 5.1.1 No such user",
                "b@example.com": "452 4.5.3 Too many"}
    for recipient, refusal in refusals.items():
        upstream.refuse_recipient(recipient, refusal)
    with proxy_to(upstream.address) as proxy:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(proxy, recipients=list(refusals))
    assert refused.value.recipients == {
        "a@example.com": (550, b"5.1.1 No such user"),
        "b@example.com": (452, b"4.5.3 Too many")}
    assert upstream.messages == []


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
            except smtplib.SMTPSenderRefused as error:
                outcome["error"] = error
            record("stuck client replied")

        thread = threading.Thread(target=stuck_client)
        thread.start()
        assert stalled.connected.wait(30)
        # The relay is under way and the upstream silent: another client is
        # served from greeting to QUIT meanwhile (its own MAIL would go to
        # the same silent upstream).
        with smtplib.SMTP(proxy.hostname, proxy.port, timeout=60) as other:
            assert other.ehlo("other.example")[0] == 250
            assert other.noop()[0] == 250
            assert other.verify("r@example.com")[0] == 252
            assert other.rset()[0] == 250
        record("other client done, relay %s" % (
            "finished" if stalled.peer_closed.is_set() else "still stalled"))
        thread.join(60)
        assert stalled.peer_closed.wait(30)
    assert events == ["other client done, relay still stalled", "stuck client replied"]
    error = outcome["error"]
    assert "%d %s" % (error.smtp_code, error.smtp_error.decode()) == RELAY_UNAVAILABLE
