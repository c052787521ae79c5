"""The one door to smtpd's patchable module globals.

Code (and CPython's own test suite) sets ``smtpd.DEBUGSTREAM``, replaces
``smtpd.socket`` with a mock, or changes ``smtpd.__version__``.  Those
assignments land on the public module object, so every private module reads
them from there at call time instead of binding them at import.
"""

import sys
from types import ModuleType
from typing import Any

PUBLIC_MODULE_NAME = "smtpd_compat"


def public_module() -> ModuleType:
    """Return the public ``smtpd_compat`` module object (also ``smtpd`` when shimmed)."""
    return sys.modules[PUBLIC_MODULE_NAME]


def public_global(name: str) -> Any:
    """Return the current value of a public module global such as ``DEBUGSTREAM``."""
    return getattr(public_module(), name)


def debugging() -> bool:
    """False while DEBUGSTREAM is the default Devnull: debug output is dropped."""
    return not isinstance(public_global("DEBUGSTREAM"), public_global("Devnull"))


def debug(*args: Any) -> None:
    """``print(*args)`` to whatever ``smtpd_compat.DEBUGSTREAM`` is right now."""
    if debugging():
        print(*args, file=public_global("DEBUGSTREAM"))


def socket_module() -> ModuleType:
    """The ``socket`` module as seen through the public namespace (patchable)."""
    return public_global("socket")
