"""The ``asyncore`` and ``asynchat`` modules that the user's own imports get.

Legacy code calls ``asyncore.loop()`` and patches ``asyncore.socket`` itself,
so smtpd_compat must share the very module objects the user imports: the
standard library's up to Python 3.11, the ``pyasyncore``/``pyasynchat``
distributions (which install the same top-level names) from 3.12 on.

Python 3.6 to 3.11 warn on import of these deprecated modules; importing
smtpd_compat must stay silent, so the warning is suppressed here only.
"""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import asynchat
    import asyncore

__all__ = ["asynchat", "asyncore"]
