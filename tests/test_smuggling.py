"""SMTP smuggling through PureProxy: the next hop never sees an end of data
that the proxy did not see (issue 14; the class of Postfix's
smtpd_forbid_bare_newline and aiosmtpd's GHSA-pr2m-px7j-xg65).

A client sends a message whose text holds a lenient end of data (``\\n.\\n``,
``\\r.\\r\\n``, ``\\n.\\r\\n``) followed by a second, smuggled transaction.
smtpd_compat ends data only at CRLF "." CRLF, so all of it is one message;
the relay must send it on so that no next hop, however lenient about line
endings, can end the data early and run the smuggled commands.  This holds
whatever the strict_line_endings setting: every line end goes upstream as
CRLF and the dot-only line is dot-stuffed.

The next hops: Postfix's smtp-sink (a real server) and a scripted upstream
that records the raw bytes.
"""

import socket

import pytest

from smtpd_compat import PureProxy
from smtpd_compat._parsing import has_bare_line_ending
from smtpd_compat.testing import Controller
from tests.cli_support import SmtpSink
from tests.upstream_support import ScriptedUpstream

pytestmark = pytest.mark.timeout(120)

SMUGGLED = (b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\n"
            b"DATA\r\nFrom: ceo@example.com\r\n\r\nsmuggled\r\n")
ENDINGS = {"lf-dot-lf": b"\n.\n", "cr-dot-crlf": b"\r.\r\n", "lf-dot-crlf": b"\n.\r\n",
           "crlf-dot-lf": b"\r\n.\n", "cr-dot-cr": b"\r.\r"}


class WholeMessageProxy(PureProxy):
    """A subclass that overrides process_message: smtpd's whole-message path."""

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


def smuggle(proxy, ending: bytes) -> bytes:
    """Send one message with *ending* and a smuggled transaction in it; return replies."""
    body = b"Subject: hello\r\n\r\nfirst" + ending + SMUGGLED
    with socket.create_connection((proxy.hostname, proxy.port), timeout=30) as client:
        stream = client.makefile("rb")
        stream.readline()
        client.sendall(b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n"
                       b"RCPT TO:<b@example.com>\r\nDATA\r\n")
        replies = [_reply(stream) for _ in range(4)]
        client.sendall(body + b"\r\n.\r\nQUIT\r\n")
        replies += [_reply(stream), _reply(stream)]
    return b"".join(replies)


def _reply(stream) -> bytes:
    reply = b""
    while True:
        line = stream.readline()
        assert line, "connection closed; got %r" % reply
        reply += line
        if line[3:4] == b" ":
            return reply


@pytest.mark.parametrize("server_class", [PureProxy, WholeMessageProxy],
                         ids=["lockstep", "whole-message"])
@pytest.mark.parametrize("ending", sorted(ENDINGS), ids=sorted(ENDINGS))
def test_no_lenient_end_of_data_reaches_smtp_sink(ending, server_class):
    with SmtpSink() as sink, Controller(server_class, remoteaddr=sink.address) as proxy:
        replies = smuggle(proxy, ENDINGS[ending])
        assert replies.endswith(b"221 Bye\r\n")
        assert b"\r\n250 " in replies
        messages = sink.messages()
    assert len(messages) == 1, messages
    assert messages[0].rcpt_args == ["<b@example.com>"]
    assert b"smuggled" in messages[0].data


@pytest.mark.parametrize("server_class", [PureProxy, WholeMessageProxy],
                         ids=["lockstep", "whole-message"])
@pytest.mark.parametrize("ending", sorted(ENDINGS), ids=sorted(ENDINGS))
def test_relayed_bytes_hold_only_crlf_and_a_stuffed_dot(ending, server_class):
    with ScriptedUpstream() as upstream, \
            Controller(server_class, remoteaddr=upstream.address) as proxy:
        smuggle(proxy, ENDINGS[ending])
        session, = upstream.wait_for_sessions(1)
        assert session.closed.wait(10)
    data, = session.messages
    assert not has_bare_line_ending(data)
    assert b"\r\n.\r\n" not in data
    if ending != "crlf-dot-lf":  # there the dot is the client's stuffing, removed
        assert b"\r\n..\r\n" in data  # the would-be end of data, dot-stuffed
    assert session.verbs().count("MAIL") == 1
    assert b"MAIL FROM:<evil@example.com>\r\n" in data
