"""MailmanProxy: hand mailing-list mail to Mailman, relay the rest (placeholder).

The full Mailman 3 (LMTP) implementation replaces this module; until then it
keeps CPython 3.10's contract of refusing SMTPUTF8 and warning on use.
"""

import warnings

from ._proxy import PureProxy


class MailmanProxy(PureProxy):
    """Deliver list mail to Mailman and relay everything else like PureProxy."""

    def __init__(self, *args, **kwargs):
        warnings.warn("MailmanProxy is deprecated and will be removed "
                      "in future", DeprecationWarning, 2)
        if kwargs.get("enable_SMTPUTF8"):
            raise ValueError("MailmanProxy does not support SMTPUTF8.")
        super(PureProxy, self).__init__(*args, **kwargs)
        self._executor = None


MailmanProxy.__module__ = "smtpd_compat"
