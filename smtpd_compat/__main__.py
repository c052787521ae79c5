"""``python -m smtpd_compat``: run an SMTP server as ``python -m smtpd`` did."""

import sys

from smtpd_compat._cli import main

if __name__ == "__main__":
    sys.exit(main())
