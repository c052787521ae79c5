"""A do-nothing SMTP server on CPython's own ``smtpd`` (3.11 and older).

Started by the benchmark runner as ``python3.11 -m smtpd -n -c
bench_sink_stdlib.Sink HOST:PORT`` with this directory on ``PYTHONPATH``.
"""

import warnings

with warnings.catch_warnings():
    # smtpd announces its removal on import; the benchmark knows.
    warnings.simplefilter("ignore", DeprecationWarning)
    import smtpd


class Sink(smtpd.SMTPServer):
    """Accepts every message and throws it away."""

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return None
