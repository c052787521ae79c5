"""A server class for ``-c tests.wire_recorder.WireRecorder`` in CLI tests.

It records, as JSON lines in the file named by ``$SMTPD_COMPAT_RECORD``,
every chunk of input its channels read (``{"read": ...}``: a chunk holding
several commands shows that the client pipelined them) and every message
with its envelope and parameters (``{"message": ...}``).
"""

import json
import os
import threading

import smtpd_compat

_lock = threading.Lock()


def _record(entry) -> None:
    with _lock, open(os.environ["SMTPD_COMPAT_RECORD"], "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def recorded(path):
    """The entries recorded in *path*, oldest first."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []


class WireChannel(smtpd_compat.SMTPChannel):
    """Records each chunk read from the client."""

    def recv(self, buffer_size):
        data = super().recv(buffer_size)
        if data:
            _record({"read": data.decode("latin-1")})
        return data


class WireRecorder(smtpd_compat.SMTPServer):
    """Accepts every message and records it with its parameters."""

    channel_class = WireChannel

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        _record({"message": {"mailfrom": mailfrom, "rcpttos": list(rcpttos),
                             "data": data.decode("utf-8", "replace"),
                             "mail_options": kwargs.get("mail_options"),
                             "rcpt_options": kwargs.get("rcpt_options")}})
