"""A do-nothing SMTP server on smtpd_compat.

Started by the benchmark runner as ``python -m smtpd_compat -n -c
bench_sink_compat.Sink HOST:PORT`` with this directory on ``PYTHONPATH``.
"""

import smtpd_compat


class Sink(smtpd_compat.SMTPServer):
    """Accepts every message and throws it away."""

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return None
