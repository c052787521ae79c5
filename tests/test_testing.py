"""smtpd_compat.testing used from the outside, as a user's test suite would.

Every server here runs on 127.0.0.1 (or ::1) and an OS-chosen port, is sent
real SMTP by smtplib, swaks or curl, and is stopped by the test that started it.
"""

import shutil
import smtplib
import socket
import subprocess
import threading
from email.message import EmailMessage

import pytest

from smtpd_compat import DebuggingServer, PureProxy, SMTPServer, _asyncore
from smtpd_compat.testing import Controller, Message, Sink

CLIENT_TIMEOUT = 10  # seconds; a client never waits forever on a broken server


def send(controller_or_sink, sender, recipients, text, **kwargs):
    with smtplib.SMTP(*controller_or_sink.address, timeout=CLIENT_TIMEOUT) as client:
        return client.sendmail(sender, recipients, text, **kwargs)


def test_two_lines_give_a_recording_server():
    with Controller() as smtp, smtplib.SMTP(smtp.hostname, smtp.port) as client:
        client.sendmail("alice@example.org", ["bob@example.org"], "Subject: hi\r\n\r\nHello Bob")
    [message] = smtp.server.messages
    assert message.mailfrom == "alice@example.org"
    assert message.rcpttos == ["bob@example.org"]
    assert message.email["Subject"] == "hi"
    assert message.email.get_content() == "Hello Bob"


def test_record_holds_envelope_options_greeting_and_peer():
    with Controller() as smtp, smtplib.SMTP(*smtp.address, timeout=CLIENT_TIMEOUT) as client:
        client.ehlo("client.example.org")
        refused = client.sendmail(
            "alice@example.org", ["bob@example.org", "carol@example.org"],
            b"Subject: dots\r\n\r\n.leading dot\r\nlast line\r\n",
            mail_options=["BODY=8BITMIME"])
        peer = client.sock.getsockname()
    assert refused == {}
    [message] = smtp.server.messages
    assert isinstance(message, Message)
    assert message.peer == peer
    assert message.helo == "client.example.org"
    assert "BODY=8BITMIME" in message.mail_options
    assert message.rcpt_options == [[], []]
    assert message.data == b"Subject: dots\n\n.leading dot\nlast line"
    assert message.reply == "250 OK" and message.accepted


def test_email_view_decodes_a_mime_message():
    mime = EmailMessage()
    mime["From"] = "alice@example.org"
    mime["To"] = "bob@example.org"
    mime["Subject"] = "Grüße"
    mime.set_content("Schöne Grüße\n")
    mime.add_attachment(b"\x00\x01binary", maintype="application",
                        subtype="octet-stream", filename="blob.bin")
    with Controller() as smtp, smtplib.SMTP(*smtp.address, timeout=CLIENT_TIMEOUT) as client:
        client.send_message(mime)
    parsed = smtp.server.messages[0].email
    assert parsed["Subject"] == "Grüße"
    assert parsed.get_body(("plain",)).get_content() == "Schöne Grüße\n"
    [attachment] = parsed.iter_attachments()
    assert attachment.get_filename() == "blob.bin"
    assert attachment.get_content() == b"\x00\x01binary"


def test_start_and_stop_without_with():
    controller = Controller()
    assert not controller.running
    assert controller.start() is controller
    try:
        assert controller.running
        assert controller.hostname == "127.0.0.1"
        assert controller.port != 0
        assert controller.address == controller.server.address
        send(controller, "a@example.org", ["b@example.org"], "x")
    finally:
        controller.stop()
    assert not controller.running
    assert len(controller.server.messages) == 1
    controller.stop()  # stopping twice is harmless


def test_a_stopped_controller_starts_again_with_a_new_server():
    controller = Controller()
    with controller:
        first = controller.server
        send(controller, "a@example.org", ["b@example.org"], "one")
    with controller:
        assert controller.server is not first
        send(controller, "a@example.org", ["b@example.org"], "two")
    assert [m.data for m in first.messages] == [b"one"]
    assert [m.data for m in controller.server.messages] == [b"two"]


def test_starting_twice_is_an_error():
    with Controller() as smtp:
        with pytest.raises(RuntimeError, match="running already"):
            smtp.start()


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with Controller(hostname="::1") as smtp:
        assert smtp.hostname == "::1"
        send(smtp, "a@example.org", ["b@example.org"], "over IPv6")
    assert smtp.server.messages[0].peer[0] == "::1"


def test_address_in_use_is_raised_in_the_caller():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        controller = Controller(port=taken.getsockname()[1])
        with pytest.raises(OSError):
            controller.start()
    assert not controller.running


def test_bad_server_arguments_are_raised_in_the_caller():
    controller = Controller(no_such_argument=True)
    with pytest.raises(TypeError):
        controller.start()
    assert not controller.running


def test_the_global_asyncore_map_is_left_alone():
    global_map = _asyncore.asyncore.socket_map
    before = dict(global_map)
    with Controller() as smtp:
        send(smtp, "a@example.org", ["b@example.org"], "x")
        assert global_map == before


def test_stop_closes_the_listener_and_every_client_connection():
    controller = Controller().start()
    try:
        client = socket.create_connection(controller.address, timeout=CLIENT_TIMEOUT)
        with client:
            assert client.recv(1024).startswith(b"220 ")
            client.sendall(b"HELO example.org\r\n")
            assert client.recv(1024).startswith(b"250 ")
            listener = controller.server.socket
            controller.stop()
            assert client.recv(1024) == b""  # end of file: the server side is closed
        assert listener.fileno() == -1
    finally:
        controller.stop()


def test_a_server_stuck_in_a_handler_is_closed_after_the_stop_timeout():
    entered, release = threading.Event(), threading.Event()

    class Stuck(SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            entered.set()
            release.wait(CLIENT_TIMEOUT)

    controller = Controller(Stuck).start()
    server_thread_name = "smtpd_compat.testing.Controller-%d" % controller.port
    errors = []

    def client():
        try:
            send(controller, "a@example.org", ["b@example.org"], "x")
        except (smtplib.SMTPException, OSError) as error:
            errors.append(error)

    sender = threading.Thread(target=client)
    sender.start()
    try:
        assert entered.wait(CLIENT_TIMEOUT)
        with pytest.raises(TimeoutError):
            controller.stop(timeout=0.2)
        assert controller.server.socket.fileno() == -1
        assert not controller.running
    finally:
        release.set()
        sender.join(CLIENT_TIMEOUT)
        for thread in threading.enumerate():
            if thread.name == server_thread_name:
                thread.join(CLIENT_TIMEOUT)
    assert len(errors) == 1  # the client saw its connection closed


def test_an_error_escaping_the_loop_is_raised_by_stop():
    broken, raised = threading.Event(), threading.Event()

    class Broken(Sink):
        def readable(self):
            if broken.is_set():
                raised.set()
                raise RuntimeError("broken on purpose")
            return Sink.readable(self)

    controller = Controller(Broken).start()
    broken.set()
    assert raised.wait(CLIENT_TIMEOUT)
    with pytest.raises(RuntimeError, match="broken on purpose"):
        controller.stop()
    assert controller.server.socket.fileno() == -1


def test_debugging_server_prints_what_it_receives(capsys):
    with Controller(DebuggingServer) as smtp:
        send(smtp, "a@example.org", ["b@example.org"], "Subject: printed\r\n\r\nbody text\r\n")
    out = capsys.readouterr().out
    assert "MESSAGE FOLLOWS" in out
    assert "body text" in out


def test_pure_proxy_relays_to_a_sink():
    with Controller() as upstream, \
            Controller(PureProxy, remoteaddr=upstream.address) as proxy:
        refused = send(proxy, "a@example.org", ["b@example.org"],
                       "Subject: relayed\r\n\r\nvia proxy")
    [message] = upstream.server.messages
    assert refused == {}
    assert (message.mailfrom, message.rcpttos) == ("a@example.org", ["b@example.org"])
    assert message.email["Subject"] == "relayed"
    assert message.email.get_content().rstrip("\n") == "via proxy"


def test_a_legacy_subclass_without_map_runs_on_the_private_map():
    received = []

    class Legacy(SMTPServer):
        def __init__(self, localaddr, remoteaddr):
            SMTPServer.__init__(self, localaddr, remoteaddr)

        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            received.append(data)

    global_map = _asyncore.asyncore.socket_map
    before = dict(global_map)
    with Controller(Legacy) as smtp:
        assert global_map == before
        send(smtp, "a@example.org", ["b@example.org"], "legacy")
        assert global_map == before
    assert received == [b"legacy"]


def test_server_keyword_arguments_reach_the_server():
    with Controller(data_size_limit=100) as smtp:
        assert smtp.server.data_size_limit == 100
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            send(smtp, "a@example.org", ["b@example.org"], "x" * 1000)
    assert refused.value.smtp_code == 552
    assert smtp.server.messages == []


def test_decode_data_records_text():
    with Controller(decode_data=True) as smtp:
        send(smtp, "a@example.org", ["b@example.org"], "Subject: text\r\n\r\nplain\r\n")
    [message] = smtp.server.messages
    assert message.data == "Subject: text\n\nplain"
    assert message.email["Subject"] == "text"


def test_wait_for_message_returns_each_message_once_in_order():
    with Controller() as smtp:
        sender = threading.Thread(target=lambda: [
            send(smtp, "a@example.org", ["b@example.org"], text)
            for text in ("first", "second")])
        sender.start()
        try:
            assert smtp.server.wait_for_message(CLIENT_TIMEOUT).data == b"first"
            assert smtp.server.wait_for_message(CLIENT_TIMEOUT).data == b"second"
        finally:
            sender.join(CLIENT_TIMEOUT)
        with pytest.raises(TimeoutError, match="2 received"):
            smtp.server.wait_for_message(timeout=0.1)


def test_refused_recipient():
    with Controller() as smtp:
        smtp.server.refuse_recipient("nobody@example.org", "550 5.1.1 No such user here")
        refused = send(smtp, "a@example.org", ["bob@example.org", "NoBody@example.org"], "x")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as all_refused:
            send(smtp, "a@example.org", ["nobody@example.org"], "x")
    assert refused == {"NoBody@example.org": (550, b"5.1.1 No such user here")}
    assert all_refused.value.recipients == {
        "nobody@example.org": (550, b"5.1.1 No such user here")}
    [message] = smtp.server.messages
    assert message.rcpttos == ["bob@example.org"]


def test_refusal_for_a_number_of_times_then_accepted():
    with Controller() as smtp:
        smtp.server.refuse_recipient("busy@example.org", "450 4.2.1 Try later", times=1)
        first = send(smtp, "a@example.org", ["busy@example.org", "b@example.org"], "1")
        second = send(smtp, "a@example.org", ["busy@example.org"], "2")
    assert first == {"busy@example.org": (450, b"4.2.1 Try later")}
    assert second == {}
    assert [m.rcpttos for m in smtp.server.messages] == [
        ["b@example.org"], ["busy@example.org"]]


def test_rcpt_options_belong_to_their_recipient_even_after_a_refusal():
    with Controller() as smtp, smtplib.SMTP(*smtp.address, timeout=CLIENT_TIMEOUT) as client:
        smtp.server.refuse_recipient("refused@example.org")
        client.ehlo()
        client.mail("a@example.org")
        # smtpd accepts no RCPT parameters at all: each is answered 555.
        assert client.rcpt("b@example.org", ["NOTIFY=NEVER"])[0] == 555
        assert client.rcpt("b@example.org")[0] == 250
        assert client.rcpt("refused@example.org")[0] == 550
        assert client.rcpt("c@example.org")[0] == 250
        assert client.data(b"x")[0] == 250
    [message] = smtp.server.messages
    assert message.rcpttos == ["b@example.org", "c@example.org"]
    assert message.rcpt_options == [[], []]


def test_refused_at_end_of_data_is_recorded_with_its_reply():
    with Controller() as smtp:
        smtp.server.refuse_data("451 4.3.0 Try again later", times=1)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(smtp, "a@example.org", ["b@example.org"], "first try")
        send(smtp, "a@example.org", ["b@example.org"], "second try")
    assert refused.value.smtp_code == 451
    first, second = smtp.server.messages
    assert (first.data, first.reply, first.accepted) == (
        b"first try", "451 4.3.0 Try again later", False)
    assert (second.data, second.reply, second.accepted) == (b"second try", "250 OK", True)


def test_reset_forgets_messages_and_refusals():
    with Controller() as smtp:
        smtp.server.refuse_data("554 no")
        smtp.server.refuse_recipient("x@example.org")
        with pytest.raises(smtplib.SMTPDataError):
            send(smtp, "a@example.org", ["b@example.org"], "x")
        smtp.server.reset()
        assert smtp.server.messages == []
        send(smtp, "a@example.org", ["x@example.org"], "y")
        assert smtp.server.wait_for_message(CLIENT_TIMEOUT).data == b"y"


@pytest.mark.parametrize("reply", ["55 short", "650 too big", "250 two\r\nlines", "550-more", 550],
                         ids=["short-code", "bad-code", "two-lines", "continuation", "int"])
def test_bad_replies_are_refused(reply):
    sink = Sink(("127.0.0.1", 0), None, map={})
    try:
        with pytest.raises(ValueError):
            sink.refuse_recipient("a@example.org", reply)
        with pytest.raises(ValueError):
            sink.refuse_data(reply)
    finally:
        sink.close()


@pytest.mark.parametrize("times", [0, -1, 1.5])
def test_bad_times_are_refused(times):
    sink = Sink(("127.0.0.1", 0), None, map={})
    try:
        with pytest.raises(ValueError):
            sink.refuse_data("554 no", times=times)
    finally:
        sink.close()


def test_concurrent_clients_are_all_recorded():
    clients, per_client = 4, 5
    with Controller() as smtp:
        failures = []

        def client(n):
            try:
                with smtplib.SMTP(*smtp.address, timeout=CLIENT_TIMEOUT) as c:
                    for i in range(per_client):
                        c.sendmail("a@example.org", ["b@example.org"], "%d-%d" % (n, i))
            except Exception as error:  # reported below, in the test's thread
                failures.append(error)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT * 2)
    assert failures == []
    assert sorted(m.data for m in smtp.server.messages) == sorted(
        b"%d-%d" % (n, i) for n in range(clients) for i in range(per_client))


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_delivers_to_the_sink():
    with Controller() as smtp:
        result = subprocess.run(
            ["swaks", "--server", smtp.hostname, "--port", str(smtp.port),
             "--from", "swaks@example.org", "--to", "bob@example.org,carol@example.org",
             "--header", "Subject: from swaks", "--body", "sent by swaks",
             "--helo", "swaks.example.org"],
            capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        message = smtp.server.wait_for_message(CLIENT_TIMEOUT)
    assert message.mailfrom == "swaks@example.org"
    assert message.rcpttos == ["bob@example.org", "carol@example.org"]
    assert message.helo == "swaks.example.org"
    assert message.email["Subject"] == "from swaks"
    assert "sent by swaks" in message.email.get_content()


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_sees_a_refused_recipient():
    with Controller() as smtp:
        smtp.server.refuse_recipient("gone@example.org", "550 5.1.1 Gone away")
        result = subprocess.run(
            ["swaks", "--server", smtp.hostname, "--port", str(smtp.port),
             "--from", "swaks@example.org", "--to", "gone@example.org"],
            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "550 5.1.1 Gone away" in result.stdout
    assert smtp.server.messages == []


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_delivers_to_the_sink(tmp_path):
    mail = tmp_path / "mail.txt"
    mail.write_bytes(b"Subject: from curl\r\nFrom: curl@example.org\r\n\r\nsent by curl\r\n")
    with Controller() as smtp:
        result = subprocess.run(
            ["curl", "--silent", "--show-error", "--max-time", "30",
             "smtp://%s:%d/curl.example.org" % smtp.address,
             "--mail-from", "curl@example.org", "--mail-rcpt", "bob@example.org",
             "--upload-file", str(mail)],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        message = smtp.server.wait_for_message(CLIENT_TIMEOUT)
    assert (message.mailfrom, message.rcpttos) == ("curl@example.org", ["bob@example.org"])
    assert message.helo == "curl.example.org"
    assert message.email["Subject"] == "from curl"
    # The CRLF before the final "." ends the DATA command, not the message.
    assert message.email.get_content() == "sent by curl"
