"""Exim as a real BDAT client: its smtp transport sends CHUNKING where offered.

A private Exim (tests/exim_support.py) delivers messages to an smtpd_compat
server with ``chunking`` on; they must arrive through BDAT (not DATA), byte
for byte as submitted, and through DATA when CHUNKING is off.
"""

import random

import pytest

import smtpd_compat
from smtpd_compat.testing import Controller
from tests.exim_support import PrivateExim

HEADERS = (b"From: sender@example.com\nTo: rcpt@example.com\n"
           b"Message-Id: <bdat-%d@example.com>\nDate: Tue, 1 Dec 2026 10:00:00 +0000\n"
           b"Subject: bdat\n\n")


class VerbCountingChannel(smtpd_compat.SMTPChannel):
    """Counts the BDAT and DATA commands it is given."""

    def smtp_BDAT(self, arg):
        self.smtp_server.verbs.append("BDAT " + (arg or ""))
        super().smtp_BDAT(arg)

    def smtp_DATA(self, arg):
        self.smtp_server.verbs.append("DATA")
        super().smtp_DATA(arg)


class RecordingServer(smtpd_compat.SMTPServer):
    channel_class = VerbCountingChannel

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.verbs = []
        self.messages = []

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.messages.append((mailfrom, rcpttos, data))


def _body(kind: str) -> bytes:
    if kind == "dots":
        return (b".\n..\n.leading dot\n...three\nend .\n\n trailing spaces   \n"
                b"caf\xc3\xa9 8-bit\n\t tab\n.\n")
    rng = random.Random(1)
    lines = []
    size = 0
    while size < 3 * 1024 * 1024:
        line = bytes(rng.choice(b"abc .xyz") for _ in range(rng.randrange(0, 200)))
        lines.append(line)
        size += len(line) + 1
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("kind", ["dots", "3mib"])
def test_exim_delivers_through_bdat_byte_exact(kind):
    message = HEADERS % 1 + _body(kind)
    with Controller(RecordingServer) as controller:
        controller.server.chunking = True
        with PrivateExim(controller.port) as exim:
            exim.send(message, ["rcpt@example.com"])
            log = exim.log()
        server = controller.server
        assert server.verbs and all(verb.startswith("BDAT ") for verb in server.verbs)
        assert server.verbs[-1].upper().endswith(" LAST")
        assert server.messages == [
            ("sender@example.com", ["rcpt@example.com"], message[:-1])]
    # Exim's delivery line flags CHUNKING with "K".
    assert " K C=\"250 OK\"" in log, log


def test_exim_uses_data_when_chunking_is_off():
    message = HEADERS % 2 + _body("dots")
    with Controller(RecordingServer) as controller:
        with PrivateExim(controller.port) as exim:
            exim.send(message, ["rcpt@example.com"])
        assert controller.server.verbs == ["DATA"]
        assert controller.server.messages[0][2] == message[:-1]
