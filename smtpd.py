"""``smtpd`` for code that still imports it: installed by smtpd_compat.

Python 3.12 removed the standard library's ``smtpd``.  There, importing
this module makes ``sys.modules['smtpd']`` the ``smtpd_compat`` module
itself, so ``import smtpd`` gives ``smtpd_compat`` (one module object: a
global set through either name, such as ``DEBUGSTREAM``, is set for both)
and ``python -m smtpd ...`` runs smtpd_compat's command line.

Up to Python 3.11 the standard library's own ``smtpd`` stays the one in
use: its directory comes before site-packages on ``sys.path``, so this file
is not even found.  Should this file be found first all the same (its
directory on ``PYTHONPATH``, or a source checkout as the current
directory), it loads and runs the standard library's module in its place.
"""

import sys

if sys.version_info >= (3, 12):
    import smtpd_compat

    if __name__ == "__main__":
        from smtpd_compat import _cli

        # As with the old module run as a script, its names are globals of
        # __main__; and a module named by -c that imports smtpd gets the
        # same module object as everyone else.
        globals().update((name, getattr(smtpd_compat, name))
                         for name in smtpd_compat.__all__)
        sys.modules.setdefault("smtpd", smtpd_compat)
        sys.exit(_cli.main())
    sys.modules[__name__] = smtpd_compat
else:
    import importlib.machinery
    import importlib.util
    import os

    _spec = importlib.machinery.PathFinder.find_spec(
        "smtpd", [os.path.dirname(os.__file__)])
    if _spec is None or _spec.loader is None:
        raise ImportError("the standard library's smtpd module was not found",
                          name="smtpd")
    if __name__ == "__main__":
        import runpy

        runpy.run_path(_spec.origin, run_name="__main__")
    else:
        _stdlib_smtpd = importlib.util.module_from_spec(_spec)
        sys.modules[__name__] = _stdlib_smtpd
        _spec.loader.exec_module(_stdlib_smtpd)
