"""CPython's own test_smtpd.py, run against smtpd_compat.

The file is not copied into the repository: at test time it is taken from an
installed CPython 3.11 (else 3.10), the one import line is rewritten to
``import smtpd_compat as smtpd``, and the result runs under the current
interpreter with unittest in a subprocess.
"""

import os
import re
import subprocess
import sys

import pytest

try:
    from . import dialogues  # tests/ is a package
except ImportError:
    import dialogues  # tests/ is on sys.path (pytest's rootdir-less import)

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 10),
    reason="CPython's test_smtpd needs the test.support helpers of 3.10+",
)

# The line that imports smtpd, per CPython version of test_smtpd.py.
IMPORT_LINES = {
    11: "smtpd = warnings_helper.import_deprecated('smtpd')",
    10: "    import smtpd",
}
MODULE = "cpython_test_smtpd"


def _own_test_smtpd():
    """The running interpreter's test/test_smtpd.py, if it has one."""
    import sysconfig

    path = os.path.join(sysconfig.get_paths()["stdlib"], "test", "test_smtpd.py")
    return path if os.path.isfile(path) else None


def _test_smtpd_of(exe):
    out = subprocess.run(
        [exe, "-c", "import os, test; "
         "print(os.path.join(os.path.dirname(test.__file__), 'test_smtpd.py'))"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        timeout=60,
    )
    path = out.stdout.decode().strip()
    return path if out.returncode == 0 and os.path.isfile(path) else None


def find_test_smtpd():
    """Return (minor version, path of test_smtpd.py) or None."""
    if sys.version_info[:2] in ((3, 11), (3, 10)):
        path = _own_test_smtpd()
        if path:
            return sys.version_info[1], path
    # 3.11's file needs 3.11's test.support, so 3.10 runs only its own.
    for minor in (10,) if sys.version_info[:2] == (3, 10) else (11, 10):
        exe = dialogues.find_cpython(minor)
        path = exe and _test_smtpd_of(exe)
        if path:
            return minor, path
    return None


@pytest.fixture(scope="module")
def cpython_test_file(tmp_path_factory):
    found = find_test_smtpd()
    if found is None:
        message = "no CPython 3.11 or 3.10 with test/test_smtpd.py was found"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    minor, path = found
    with open(path, encoding="utf-8") as f:
        text = f.read()
    old = IMPORT_LINES[minor]
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == old]
    assert len(hits) == 1, "expected exactly one %r line in %s" % (old, path)
    indent = old[: len(old) - len(old.lstrip())]
    lines[hits[0]] = indent + "import smtpd_compat as smtpd\n"
    workdir = tmp_path_factory.mktemp("cpython-test-smtpd")
    (workdir / (MODULE + ".py")).write_text("".join(lines), encoding="utf-8")
    return workdir


def _smtpd_compat_path_entry():
    import importlib.util

    spec = importlib.util.find_spec("smtpd_compat")
    assert spec is not None and spec.origin, "smtpd_compat is not importable"
    where = os.path.dirname(spec.origin)
    return os.path.dirname(where) if spec.submodule_search_locations else where


def test_cpython_test_smtpd_passes(cpython_test_file):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(cpython_test_file), _smtpd_compat_path_entry()]
    )
    proc = subprocess.run(
        [sys.executable, "-bb", "-W", "error", "-m", "unittest", "-v", MODULE],
        cwd=str(cpython_test_file),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=600,
    )
    output = proc.stdout.decode("utf-8", "replace")
    ran = re.search(r"^Ran (\d+) tests? in ", output, re.M)
    problems = [
        line
        for line in output.splitlines()
        if line.endswith((" ... FAIL", " ... ERROR"))
        or line.startswith(("FAIL:", "ERROR:"))
    ]
    summary = "\n".join(problems) or output[-3000:]
    assert proc.returncode == 0, summary + "\n\n" + output[-6000:]
    assert ran is not None, output[-3000:]
    assert int(ran.group(1)) > 50, output[-3000:]
    assert re.search(r"^OK\b", output, re.M), output[-3000:]
    assert not problems, summary
