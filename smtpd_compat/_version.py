"""The distribution's version; ``smtpd_compat.__version__`` stays smtpd's banner."""

VERSION = "0.1.0.dev0"
