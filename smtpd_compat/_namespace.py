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


def _debug_stream() -> Any:
    """DEBUGSTREAM as it is now, or None while it is the default Devnull."""
    module = public_module()
    stream = module.DEBUGSTREAM
    return None if isinstance(stream, module.Devnull) else stream


def debugging() -> bool:
    """False while DEBUGSTREAM is the default Devnull: debug output is dropped."""
    return _debug_stream() is not None


def debug(*args: Any) -> None:
    """``print(*args)`` to whatever ``smtpd_compat.DEBUGSTREAM`` is right now."""
    stream = _debug_stream()
    if stream is not None:
        print(*args, file=stream)


def socket_module() -> ModuleType:
    """The ``socket`` module as seen through the public namespace (patchable)."""
    return public_global("socket")
