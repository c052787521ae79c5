"""MailmanProxy: 3.10's contract, and end to end against a real GNU Mailman 3 core.

The ``mailman`` tests install Mailman 3 into a cached virtual environment of
its own and start it on free loopback ports (see tests/mailman_support.py);
list mail goes through MailmanProxy into Mailman's LMTP, out of Mailman to a
recording SMTP server, and the other recipients to a recording upstream.
Outside CI they skip when that environment cannot be built; on CI
(``CI`` set) they fail instead.
"""

import email
import email.utils
import os
import smtplib
import sys
import threading
import time
import uuid

import pytest

import smtpd_compat
from smtpd_compat._loop import Poller
from smtpd_compat._replies import MAILMAN_UNAVAILABLE
from tests.mailman_support import (
    LOOPBACK,
    MailmanCore,
    MailmanUnavailable,
    RecordingSMTPServer,
    ensure_venv,
    free_port,
    wait_until,
)


def needs_mailman(test):
    """Mark a test that runs a Mailman core (the first one may build its venv)."""
    return pytest.mark.mailman(pytest.mark.timeout(900)(test))


LIST = "dev-team@lists.example.com"     # a hyphen on purpose: 3.10 could not
MEMBER = "reader@members.example.com"
SITE_OWNER = "postmaster@site.example.com"
DEPRECATED = "MailmanProxy is deprecated and will be removed in future"


# -- fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def mailman_venv():
    try:
        return ensure_venv(log=lambda line: print(line, file=sys.stderr))
    except MailmanUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail("Mailman 3 environment could not be built: %s" % exc)
        pytest.skip("Mailman 3 environment could not be built: %s" % exc)


@pytest.fixture(scope="module")
def mailman_outbox():
    """Where Mailman delivers list mail to the members (its smtp_host)."""
    with RecordingSMTPServer() as outbox:
        yield outbox


@pytest.fixture(scope="module")
def mailman(mailman_venv, mailman_outbox):
    """A running core with the list LIST and its member MEMBER; always stopped."""
    core = MailmanCore(mailman_venv, mailman_outbox.address, site_owner=SITE_OWNER)
    core.start()     # stops what it started when it fails
    try:
        list_id = core.create_list(LIST)
        core.subscribe(list_id, MEMBER)
        core.list_id = list_id
        yield core
    finally:
        core.stop()


@pytest.fixture
def upstream():
    with RecordingSMTPServer() as server:
        yield server


class RunningProxy:
    """A MailmanProxy on 127.0.0.1:0 served by a loop thread of its own."""

    def __init__(self, upstream_address, **kwargs):
        self.map = {}
        with pytest.warns(DeprecationWarning, match=DEPRECATED):
            self.server = smtpd_compat.MailmanProxy(
                (LOOPBACK, 0), upstream_address, map=self.map, **kwargs)
        self.server.relay_timeout = 30
        self.address = self.server.socket.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="mailman-proxy",
                                        daemon=True)
        self._thread.start()

    def _serve(self):
        poller = Poller(self.map)
        try:
            while not self._stop.is_set():
                poller.poll(0.05)
        finally:
            poller.close()
            smtpd_compat.asyncore.close_all(self.map)

    def send(self, mailfrom, rcpttos, message):
        """Send through the proxy; return the refused dict or raise as smtplib does."""
        with smtplib.SMTP(*self.address, timeout=60) as client:
            return client.sendmail(mailfrom, rcpttos, message)

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture
def make_proxy():
    proxies = []

    def make(upstream_address, **kwargs):
        proxy = RunningProxy(upstream_address, **kwargs)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def proxy(make_proxy, mailman, upstream):
    """A proxy in front of the running core and the recording upstream."""
    return make_proxy(upstream.address, mailman_lmtp_host=mailman.host,
                      mailman_lmtp_port=mailman.lmtp_port)


def message(sender, to, token, body="Hello, list.\n"):
    return ("From: %s\r\nTo: %s\r\nSubject: test %s\r\nMessage-ID: <%s@members>\r\n"
            "\r\n%s\r\n%s\r\n" % (sender, to, token, token, token, body))


def new_token():
    return uuid.uuid4().hex


def carrying(token):
    """A sink predicate: some recorded message contains *token*."""
    return lambda messages: any(token.encode() in m.data for m in messages)


def with_token(messages, token):
    return [m for m in messages if token.encode() in m.data]


# -- the class itself (no Mailman needed) -------------------------------------------

def test_constructing_warns_as_310_did():
    with pytest.warns(DeprecationWarning, match=DEPRECATED) as record:
        server = smtpd_compat.MailmanProxy((LOOPBACK, 0), (LOOPBACK, 25), map={})
    server.close()
    # stacklevel 2: the warning names the caller, not smtpd_compat.
    assert record[0].filename == __file__


def test_smtputf8_is_refused():
    with pytest.warns(DeprecationWarning):
        with pytest.raises(ValueError, match="MailmanProxy does not support SMTPUTF8"):
            smtpd_compat.MailmanProxy((LOOPBACK, 0), (LOOPBACK, 25), map={},
                                      enable_SMTPUTF8=True)


def test_lmtp_address_defaults_and_overrides():
    assert smtpd_compat.MailmanProxy.mailman_lmtp_host == "127.0.0.1"
    assert smtpd_compat.MailmanProxy.mailman_lmtp_port == 8024
    assert issubclass(smtpd_compat.MailmanProxy, smtpd_compat.PureProxy)
    assert smtpd_compat.MailmanProxy.__module__ == "smtpd_compat"
    with pytest.warns(DeprecationWarning):
        server = smtpd_compat.MailmanProxy((LOOPBACK, 0), (LOOPBACK, 25), map={},
                                           mailman_lmtp_host="::1",
                                           mailman_lmtp_port=1234)
    try:
        assert (server.mailman_lmtp_host, server.mailman_lmtp_port) == ("::1", 1234)
    finally:
        server.close()


def test_unreachable_mailman_answers_4xx_and_relays_nothing(make_proxy, upstream):
    proxy = make_proxy(upstream.address, mailman_lmtp_port=free_port())
    with pytest.raises(smtplib.SMTPDataError) as caught:
        proxy.send("a@example.com", ["someone@elsewhere.example.com"],
                   message("a@example.com", "someone", new_token()))
    assert caught.value.smtp_code == 451
    assert caught.value.smtp_error.decode() == MAILMAN_UNAVAILABLE[4:]
    assert upstream.messages == []


# The reply policy, with a recording server standing in for Mailman's LMTP (it
# takes every recipient not in its rcpt_replies as a list address).

def test_mailman_answering_4xx_at_rcpt_answers_4xx_and_relays_nothing(
        make_proxy, upstream):
    with RecordingSMTPServer({"busy@lists.example.com": "451 4.3.0 busy"}) as lmtp:
        proxy = make_proxy(upstream.address, mailman_lmtp_host=lmtp.address[0],
                           mailman_lmtp_port=lmtp.address[1])
        with pytest.raises(smtplib.SMTPDataError) as caught:
            proxy.send("a@example.com", ["busy@lists.example.com"],
                       message("a@example.com", "x", new_token()))
        assert lmtp.messages == []
    assert caught.value.smtp_code == 451
    assert upstream.messages == []


def test_mailman_failing_after_the_upstream_took_its_part_answers_4xx(
        make_proxy, upstream):
    # Better a second copy upstream on the client's retry than a lost post.
    other = "other@elsewhere.example.com"
    not_a_list = {other: "550 5.1.1 not a list"}
    with RecordingSMTPServer(not_a_list, data_reply="452 4.3.1 queue full") as lmtp:
        proxy = make_proxy(upstream.address, mailman_lmtp_host=lmtp.address[0],
                           mailman_lmtp_port=lmtp.address[1])
        token = new_token()
        with pytest.raises(smtplib.SMTPDataError) as caught:
            proxy.send("a@example.com", ["list@lists.example.com", other],
                       message("a@example.com", "x", token))
    assert caught.value.smtp_code == 451
    assert caught.value.smtp_error.decode() == MAILMAN_UNAVAILABLE[4:]
    assert [m.rcpttos for m in upstream.wait_for(carrying(token))] == [[other]]


def test_mailman_refusing_every_list_recipient_answers_its_5xx(make_proxy, upstream):
    with RecordingSMTPServer(data_reply="554 5.6.0 no thanks") as lmtp:
        proxy = make_proxy(upstream.address, mailman_lmtp_host=lmtp.address[0],
                           mailman_lmtp_port=lmtp.address[1])
        with pytest.raises(smtplib.SMTPDataError) as caught:
            proxy.send("a@example.com", ["a@lists.example.com", "b@lists.example.com"],
                       message("a@example.com", "x", new_token()))
    assert (caught.value.smtp_code, caught.value.smtp_error) == (554, b"5.6.0 no thanks")
    assert upstream.messages == []


def test_upstream_deferring_one_recipient_answers_4xx_not_silent_loss(make_proxy):
    """A 452 from the upstream for one of its recipients, the other accepted:
    the whole message is refused for now (a second copy for the accepted one
    on the retry is better than none for the deferred one)."""
    deferred, other = "deferred@elsewhere.example.com", "other@elsewhere.example.com"
    not_lists = {deferred: "550 not a list", other: "550 not a list"}
    with RecordingSMTPServer(not_lists) as lmtp, \
            RecordingSMTPServer({deferred: "452 4.5.3 Too many recipients"}) as upstream:
        proxy = make_proxy(upstream.address, mailman_lmtp_host=lmtp.address[0],
                           mailman_lmtp_port=lmtp.address[1])
        with pytest.raises(smtplib.SMTPDataError) as caught:
            proxy.send("a@example.com", ["l@lists.example.com", other, deferred],
                       message("a@example.com", "x", new_token()))
        assert (caught.value.smtp_code, caught.value.smtp_error) == (
            452, b"4.5.3 Too many recipients")
        assert lmtp.messages == []


@pytest.mark.parametrize("delays, relay_timeout", [
    ({"QUIT": 8}, 30.0),   # the reply does not wait for the upstream's QUIT
    ({".": 3}, 1.0),       # the final dot gets relay_data_timeout, not relay_timeout
], ids=["slow-quit", "slow-final-dot"])
def test_upstream_part_timing(delays, relay_timeout, make_proxy):
    from tests.upstream_support import ScriptedUpstream

    other = "other@elsewhere.example.com"
    with RecordingSMTPServer({other: "550 not a list"}) as lmtp, \
            ScriptedUpstream(delays) as upstream:
        proxy = make_proxy(upstream.address, mailman_lmtp_host=lmtp.address[0],
                           mailman_lmtp_port=lmtp.address[1])
        proxy.server.relay_timeout = relay_timeout
        started = time.monotonic()
        assert proxy.send("a@example.com", [other],
                          message("a@example.com", "x", new_token())) == {}
        assert time.monotonic() - started < delays.get(".", 0) + 2
        assert sum(len(s.messages) for s in upstream.sessions) == 1


def test_headers_added_for_mailman_only(make_proxy, upstream):
    other = "other@elsewhere.example.com"
    with RecordingSMTPServer({other: "550 not a list"}) as lmtp:
        proxy = make_proxy(upstream.address, mailman_lmtp_host=lmtp.address[0],
                           mailman_lmtp_port=lmtp.address[1])
        token = new_token()
        bare = "Subject: %s\r\n\r\nno From, no Date\r\n" % token
        assert proxy.send("a@example.com", ["l@lists.example.com", other], bare) == {}
        (to_mailman,) = lmtp.wait_for(carrying(token))
    (relayed,) = upstream.wait_for(carrying(token))
    given = email.message_from_bytes(to_mailman.data)
    assert given["From"] == "a@example.com"
    assert email.utils.parsedate_to_datetime(given["Date"]) is not None
    # Upstream gets the message as the client sent it (3.10 added no X-Peer).
    assert relayed.data == b"Subject: %s\r\n\r\nno From, no Date\r\n" % token.encode()


# -- Mailman 2's API (3.10's code path) ------------------------------------------------

FAKE_MAILMAN2 = {
    "__init__.py": "",
    "Utils.py": "LISTS = {'alpha'}\n"
                "def list_exists(name):\n"
                "    return name in LISTS\n",
    "MailList.py": "class MailList:\n"
                   "    def __init__(self, name, lock=1):\n"
                   "        self.internal_name, self.lock = name, lock\n",
    "Message.py": "import email.message\n"
                  "ENQUEUED = []\n"
                  "class Message(email.message.Message):\n"
                  "    def Enqueue(self, mlist, **where):\n"
                  "        ENQUEUED.append((mlist.internal_name, where, self))\n",
}


@pytest.fixture
def fake_mailman2(tmp_path, monkeypatch):
    """A stand-in with Mailman 2's API (Mailman 2 itself runs only on Python 2)."""
    package = tmp_path / "Mailman"
    package.mkdir()
    for name, text in FAKE_MAILMAN2.items():
        (package / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [n for n in sys.modules if n == "Mailman" or n.startswith("Mailman.")]:
        del sys.modules[name]


def test_mailman2_api_keeps_310_routing(fake_mailman2, make_proxy, upstream):
    proxy = make_proxy(upstream.address, mailman_lmtp_port=free_port())
    token = new_token()
    rcpttos = ["alpha@lists.example.com", "Alpha-Join@lists.example.com",
               "alpha-admin@lists.example.com", "alpha-bounces@lists.example.com",
               "beta@lists.example.com", "a-b-c@lists.example.com",
               "other@elsewhere.example.com"]
    body = "Subject: hi %s\r\n\r\n%s\r\n" % (token, token)
    assert proxy.send("sender@example.com", rcpttos, body) == {}

    from Mailman import Message
    enqueued = [(name, where, msg) for name, where, msg in Message.ENQUEUED]
    assert [(name, where) for name, where, _ in enqueued] == [
        ("alpha", {"tolist": 1}),
        ("alpha", {"torequest": 1}),
        ("alpha", {"toadmin": 1}),
    ]
    # The message lacked From and Date: added, as 3.10 did.
    post = enqueued[0][2]
    assert post["From"] == "sender@example.com"
    assert email.utils.parsedate_to_datetime(post["Date"]) is not None
    assert post.get_payload().strip() == token
    # -join became a subscribe request; the post kept its own Subject.
    assert enqueued[1][2].get_all("Subject") == ["subscribe"]
    assert post.get_all("Subject") == ["hi " + token]

    (relayed,) = upstream.wait_for(carrying(token))
    assert relayed.rcpttos == ["alpha-bounces@lists.example.com",
                               "beta@lists.example.com", "a-b-c@lists.example.com",
                               "other@elsewhere.example.com"]


# -- a real Mailman 3 core ---------------------------------------------------------------

@needs_mailman
@pytest.mark.parametrize("decode_data", [False, True], ids=["bytes", "decode_data"])
def test_list_post_reaches_members_and_the_rest_is_relayed(
        decode_data, make_proxy, mailman, upstream, mailman_outbox):
    proxy = make_proxy(upstream.address, mailman_lmtp_host=mailman.host,
                       mailman_lmtp_port=mailman.lmtp_port, decode_data=decode_data)
    token = new_token()
    text = message(MEMBER, LIST, token, body="Grüße aus Köln\n")
    refused = proxy.send(MEMBER, [LIST, "friend@elsewhere.example.com"],
                         text.encode("utf-8"))
    assert refused == {}

    # Mailman took the post and delivered it to the list's member.
    delivered = with_token(mailman_outbox.wait_for(carrying(token), 60), token)
    assert [m.rcpttos for m in delivered] == [[MEMBER]]
    post = email.message_from_bytes(delivered[0].data)
    assert delivered[0].mailfrom == "dev-team-bounces@lists.example.com"
    assert post["List-Id"] == "<dev-team.lists.example.com>"
    assert post["Subject"] == "[Dev-team] test " + token
    assert "Grüße aus Köln".encode("utf-8") in delivered[0].data

    # The other recipient went upstream, and only it.
    (relayed,) = upstream.wait_for(carrying(token))
    assert relayed.mailfrom == MEMBER
    assert relayed.rcpttos == ["friend@elsewhere.example.com"]
    assert "Grüße aus Köln".encode("utf-8") in relayed.data


@needs_mailman
def test_non_member_post_is_held_by_mailman(proxy, mailman, upstream):
    token = new_token()
    stranger = "stranger@outside.example.com"
    assert proxy.send(stranger, [LIST], message(stranger, LIST, token)) == {}
    held = wait_until(
        lambda: [h for h in mailman.held_messages(mailman.list_id)
                 if h["subject"] == "test " + token], 60, 0.25, "the held message")
    assert held[0]["sender"] == stranger
    assert upstream.messages == []


@needs_mailman
def test_mailman_decides_which_addresses_are_lists(proxy, mailman, upstream):
    """Mailman 3's suffixes, VERP tags and letter case go to Mailman; the rest
    (including Mailman 2's -admin and a prefix of the hyphenated name) upstream."""
    token = new_token()
    queued_before = {name: mailman.queue_files(name) for name in ("command", "bounces")}
    list_addresses = ["dev-team-join@lists.example.com",
                      "DEV-Team-Request@Lists.Example.com",
                      "dev-team-unsubscribe@lists.example.com",
                      "dev-team-bounces+someone=example.net@lists.example.com"]
    other_addresses = ["dev-team-admin@lists.example.com",
                       "dev@lists.example.com",
                       "dev-team@other-host.example.com",
                       "somebody@elsewhere.example.com"]
    refused = proxy.send(MEMBER, list_addresses + other_addresses,
                         message(MEMBER, "various", token))
    assert refused == {}
    (relayed,) = upstream.wait_for(carrying(token))
    assert relayed.rcpttos == other_addresses
    # The command and bounce runners are not started: what Mailman took for
    # them waits in their queues (join, request and unsubscribe; the bounce).
    wait_until(lambda: mailman.queue_files("command") == queued_before["command"] + 3
               and mailman.queue_files("bounces") == queued_before["bounces"] + 1,
               60, 0.25, "Mailman's command and bounce queues")


@needs_mailman
def test_owner_address_reaches_mailman(proxy, mailman, upstream, mailman_outbox):
    token = new_token()
    owner = "dev-team-owner@lists.example.com"
    assert proxy.send(MEMBER, [owner], message(MEMBER, owner, token)) == {}
    # A list without owners forwards owner mail to the site owner.
    delivered = with_token(mailman_outbox.wait_for(carrying(token), 60), token)
    assert [m.rcpttos for m in delivered] == [[SITE_OWNER]]
    assert upstream.messages == []


@needs_mailman
def test_upstream_refusing_its_part_still_delivers_the_list_part(
        make_proxy, mailman, mailman_outbox):
    refused_rcpt = "nobody@elsewhere.example.com"
    with RecordingSMTPServer({refused_rcpt: "550 5.1.1 no such user"}) as upstream:
        proxy = make_proxy(upstream.address, mailman_lmtp_host=mailman.host,
                           mailman_lmtp_port=mailman.lmtp_port)
        token = new_token()
        # Partly refused after DATA: 250, as PureProxy answers (it is logged).
        assert proxy.send(MEMBER, [LIST, refused_rcpt],
                          message(MEMBER, LIST, token)) == {}
        delivered = with_token(mailman_outbox.wait_for(carrying(token), 60), token)
        assert [m.rcpttos for m in delivered] == [[MEMBER]]
        assert upstream.messages == []


@needs_mailman
def test_everything_refused_answers_5xx(make_proxy, mailman):
    refused_rcpt = "nobody@elsewhere.example.com"
    with RecordingSMTPServer({refused_rcpt: "550 5.1.1 no such user"}) as upstream:
        proxy = make_proxy(upstream.address, mailman_lmtp_host=mailman.host,
                           mailman_lmtp_port=mailman.lmtp_port)
        with pytest.raises(smtplib.SMTPDataError) as caught:
            proxy.send(MEMBER, [refused_rcpt], message(MEMBER, "x", new_token()))
    assert caught.value.smtp_code == 550
    assert caught.value.smtp_error == b"5.1.1 no such user"


@needs_mailman
def test_message_mailman_rejects_answers_its_5xx(proxy, mailman, upstream):
    # Mailman 3 refuses a message with defects (here a header line without a
    # colon) with one 501, whatever the number of recipients: one LMTP
    # transaction per list recipient keeps the replies in step.
    broken = "From: %s\r\nThis is not a header\r\nSubject: x\r\n\r\nbody\r\n" % MEMBER
    with pytest.raises(smtplib.SMTPDataError) as caught:
        proxy.send(MEMBER, [LIST, "dev-team-owner@lists.example.com"], broken)
    assert caught.value.smtp_code == 501
    assert upstream.messages == []


@needs_mailman
def test_upstream_down_answers_4xx_and_mailman_gets_nothing(
        make_proxy, mailman, mailman_outbox):
    down = make_proxy((LOOPBACK, free_port()), mailman_lmtp_host=mailman.host,
                      mailman_lmtp_port=mailman.lmtp_port)
    lost = new_token()
    with pytest.raises(smtplib.SMTPDataError) as caught:
        down.send(MEMBER, [LIST, "friend@elsewhere.example.com"],
                  message(MEMBER, LIST, lost))
    assert 400 <= caught.value.smtp_code <= 499
    # Mailman handles posts in arrival order: once a later post is out, the
    # refused one would have been too, had it reached Mailman.
    with RecordingSMTPServer() as upstream:
        working = make_proxy(upstream.address, mailman_lmtp_host=mailman.host,
                             mailman_lmtp_port=mailman.lmtp_port)
        later = new_token()
        assert working.send(MEMBER, [LIST], message(MEMBER, LIST, later)) == {}
        messages = mailman_outbox.wait_for(carrying(later), 60)
    assert with_token(messages, lost) == []


