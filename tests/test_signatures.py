"""Every function and method of CPython 3.11's smtpd keeps its signature.

Legacy code overrides and calls smtpd's private helpers too (a subclass
overriding ``PureProxy._deliver(self, mailfrom, rcpttos, data)`` is a common
way to filter relayed mail), so they are API.  The reference is taken from an
installed CPython 3.11 when there is one (and checked against the committed
snapshot, so a stale snapshot fails), else from the snapshot.  Compared:
parameter names, kinds and defaults; annotations are not (smtpd has none).
"""

import json
import os
import subprocess

import pytest

import smtpd_compat

try:
    from . import dialogues  # tests/ is a package
    from .signatures import describe
except ImportError:
    import dialogues
    from signatures import describe

HERE = os.path.dirname(os.path.abspath(__file__))
SNAPSHOT = os.path.join(HERE, "cpython311_smtpd_signatures.json")

# Differences that are deliberate, each with its reason.  Only additions that
# every 3.11 caller and override stays compatible with belong here.
JUSTIFIED = {
    "parseargs": "argv=None added (tests and embedding pass arguments); "
                 "parseargs() reads sys.argv as before",
    "PureProxy.process_message": "**kwargs added: the channel passes mail_options/"
                                 "rcpt_options in bytes mode, where 3.11's raised "
                                 "TypeError on every message",
}


def _snapshot():
    with open(SNAPSHOT, encoding="utf-8") as f:
        return json.load(f)


def _live_reference():
    """The signatures as the installed CPython 3.11 reports them, or None."""
    exe = dialogues.find_cpython(11)
    if exe is None:
        return None
    out = subprocess.run([exe, os.path.join(HERE, "signatures.py"), "smtpd"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, timeout=120, check=True)
    return json.loads(out.stdout.decode("utf-8"))


@pytest.fixture(scope="module")
def reference():
    live = _live_reference()
    if live is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have CPython 3.11 to check the signature snapshot")
        return _snapshot()
    return live


def test_snapshot_matches_the_installed_cpython_311():
    live = _live_reference()
    if live is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have CPython 3.11 to check the signature snapshot")
        pytest.skip("no CPython 3.11 installed; the snapshot is used as it is")
    assert live == _snapshot()


def _reference_items():
    snapshot = _snapshot()
    items = [(name, None, name) for name in sorted(snapshot["functions"])]
    for cls, methods in sorted(snapshot["classes"].items()):
        items += [("%s.%s" % (cls, method), cls, method) for method in sorted(methods)]
    return items


@pytest.mark.parametrize("qualname, cls, name", _reference_items(),
                         ids=[item[0] for item in _reference_items()])
def test_signature_as_in_cpython_311(reference, qualname, cls, name):
    if cls is None:
        expected = reference["functions"][name]
        ours = getattr(smtpd_compat, name)
    else:
        expected = reference["classes"][cls][name]
        ours = getattr(getattr(smtpd_compat, cls), name)
    if qualname in JUSTIFIED:
        # Still callable the 3.11 way: the same leading parameters.
        assert describe(ours)[:len(expected)] == expected
        assert describe(ours) != expected, "no longer different: drop it from JUSTIFIED"
        return
    assert describe(ours) == expected


def test_reference_has_every_compared_name(reference):
    """Every class and function of 3.11's smtpd is compared (none forgotten)."""
    compared = {qualname for qualname, _, _ in _reference_items()}
    live = {name for name in reference["functions"]}
    for cls, methods in reference["classes"].items():
        live |= {"%s.%s" % (cls, method) for method in methods}
    assert live == compared
    assert set(JUSTIFIED) <= compared
