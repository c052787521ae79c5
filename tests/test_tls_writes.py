"""How many writes a multi-line reply takes: one per line as smtpd, one with TLS.

Over TLS every write is a TLS record and a system call, so a server with a
TLS context sends EHLO's reply in one write; without TLS the writes stay
smtpd's own (CPython's test_smtpd looks at the last one).
"""

import pytest

import smtpd_compat
from tests import tls_support as ts
from tests.conftest import RecordingServer


class CountingChannel(smtpd_compat.SMTPChannel):
    """Records what each ``send()`` was given (the real socket still sends it)."""

    def send(self, data):
        type(self).writes.append(bytes(data))
        return smtpd_compat.SMTPChannel.send(self, data)


@pytest.fixture
def writes():
    CountingChannel.writes = []
    yield CountingChannel.writes
    del CountingChannel.writes


class CountingServer(RecordingServer):
    channel_class = CountingChannel


def _session(make_session_class, **attributes):
    server = CountingServer(("127.0.0.1", 0), None, map={})
    for name, value in attributes.items():
        setattr(server, name, value)
    return make_session_class(server)


@pytest.fixture
def sessions():
    made = []

    def make(**attributes):
        session = _session(ts.TLSSession, **attributes)
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


def test_without_tls_each_ehlo_line_is_its_own_write(sessions, writes):
    session = sessions()
    del writes[:]
    reply = session.send(b"EHLO client.example\r\n")
    assert len(reply.splitlines()) == len(writes) > 1
    assert writes[-1] == b"250 HELP\r\n"


def test_with_tls_the_ehlo_reply_is_one_write_before_and_after_starttls(sessions, writes):
    session = sessions(**ts.tls_attributes())
    del writes[:]
    reply = session.send(b"EHLO client.example\r\n")
    assert b"250-STARTTLS\r\n" in reply
    assert writes == [reply]
    session.starttls()
    del writes[:]
    reply = session.send(b"EHLO client.example\r\n")
    assert reply.endswith(b"250 HELP\r\n") and b"STARTTLS" not in reply
    assert writes == [reply]
    assert session.send(b"NOOP\r\n") == b"250 OK\r\n"
