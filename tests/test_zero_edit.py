"""Zero-edit porting: ``import smtpd`` and ``python -m smtpd`` with smtpd_compat installed.

On Python 3.12+ they must give smtpd_compat; on 3.8 to 3.11 the standard
library's own smtpd must still be the one in use, wherever our top-level
``smtpd.py`` sits on ``sys.path``.  Every check runs a fresh interpreter
(``sys.executable``) so that the real import system decides.
"""

import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

import smtpd_compat

# The directory holding both the smtpd_compat package and the top-level
# smtpd.py: site-packages when installed, the checkout when run from source.
ROOT = Path(smtpd_compat.__file__).resolve().parent.parent
NEW_PYTHON = sys.version_info >= (3, 12)
needs_312 = pytest.mark.skipif(not NEW_PYTHON, reason="the standard library has smtpd")
needs_311 = pytest.mark.skipif(NEW_PYTHON, reason="the standard library has no smtpd")
STARTUP_DEADLINE = 20.0  # seconds for a subprocess server to accept connections
SUBPROCESS_TIMEOUT = 60


def environment(*path):
    """os.environ with PYTHONPATH set to exactly *path* (nothing if empty)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONWARNINGS", None)
    env["PYTHONUNBUFFERED"] = "1"
    if path:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
    return env


def python(code, *, cwd, env, warnings="error"):
    """Run ``python -W <warnings> -c <code>``; return stdout, failing on a non-zero exit."""
    result = subprocess.run([sys.executable, "-W", warnings, "-c", textwrap.dedent(code)],
                            cwd=str(cwd), env=env, capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_and_send(args, *, cwd, env, sender="old@example.org",
                   recipients=("new@example.org",), text="Subject: ported\r\n\r\nno edits\r\n"):
    """Start ``python <args> 127.0.0.1:PORT``, send it one message, stop it with SIGINT.

    Returns (stdout, stderr, exit status).  A port taken between choosing
    and binding it is retried with another.
    """
    for _attempt in range(3):
        port = free_port()
        process = subprocess.Popen([sys.executable, *args, "127.0.0.1:%d" % port],
                                   cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            client = connect_when_ready(process, port)
            if client is None:
                out, err = process.communicate(timeout=SUBPROCESS_TIMEOUT)
                if "in use" in err:
                    continue
                pytest.fail("the server exited early (%s): %s%s"
                            % (process.returncode, out, err))
            with client:
                client.sendmail(sender, list(recipients), text)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=SUBPROCESS_TIMEOUT)
            return out, err, process.returncode
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    pytest.fail("no free port found in three tries")


def connect_when_ready(process, port):
    deadline = time.monotonic() + STARTUP_DEADLINE
    while process.poll() is None:
        try:
            return smtplib.SMTP("127.0.0.1", port, timeout=10)
        except (ConnectionRefusedError, smtplib.SMTPServerDisconnected):
            assert time.monotonic() < deadline, "the server never accepted a connection"
            time.sleep(0.05)
    return None


LEGACY_DEPENDENCY = '''
    """A module written for Python 3.11's smtpd, never touched since."""
    import smtpd
    import sys

    IS_SMTPD_COMPAT = smtpd is sys.modules.get("smtpd_compat")

    class Recorder(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            print("RECORDED", mailfrom, rcpttos, data, IS_SMTPD_COMPAT, flush=True)
'''

LEGACY_PROGRAM = '''
    import asyncore
    import smtpd
    import smtplib
    import threading

    class Server(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            print("GOT", mailfrom, rcpttos, data)
            self.close()  # the client's QUIT then empties the map: loop() returns

    server = Server(("127.0.0.1", 0), None)
    port = server.socket.getsockname()[1]

    def send():
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.org", ["b@example.org"], "hello")

    sender = threading.Thread(target=send)
    sender.start()
    asyncore.loop(timeout=0.1)
    sender.join()
    print("DONE", smtpd.__name__)
'''


def _version_tuple(text):
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def test_smtpd_py_sits_beside_the_package():
    assert (ROOT / "smtpd.py").is_file()


def test_the_installed_distribution_declares_smtpd_and_the_plugin():
    metadata = pytest.importorskip("importlib.metadata")
    try:
        distribution = metadata.distribution("smtpd-compat")
    except metadata.PackageNotFoundError:
        pytest.skip("smtpd-compat is not installed (run from the source tree)")
    plugins = [ep for ep in distribution.entry_points if ep.group == "pytest11"]
    assert [(ep.name, ep.value) for ep in plugins] == [
        ("smtpd_compat", "smtpd_compat.pytest_plugin")]
    files = [str(f) for f in distribution.files or []]
    editable = any("__editable__" in f or f.endswith(".pth") for f in files)
    assert editable or "smtpd.py" in files


def test_the_wheel_ships_the_smtpd_module_and_the_pytest_plugin(tmp_path):
    if not (ROOT / "setup.cfg").is_file():
        pytest.skip("smtpd_compat is installed, not run from its source tree")
    setuptools = pytest.importorskip("setuptools", reason="building needs setuptools")
    if _version_tuple(setuptools.__version__) < (70, 1):
        pytest.importorskip("wheel", reason="setuptools before 70.1 builds wheels with it")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "smtpd.py", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(str(ROOT / name), str(source / name))
    shutil.copytree(str(ROOT / "smtpd_compat"), str(source / "smtpd_compat"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(str(wheel)) as archive:
        names = archive.namelist()
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points_text = archive.read(entry_points).decode()
    assert "smtpd.py" in names
    assert "smtpd_compat/testing.py" in names
    assert "smtpd_compat/pytest_plugin.py" in names
    assert "[pytest11]" in entry_points_text
    assert "smtpd_compat = smtpd_compat.pytest_plugin" in entry_points_text


@needs_312
@pytest.mark.parametrize("order", ["smtpd, smtpd_compat", "smtpd_compat, smtpd"])
def test_import_smtpd_gives_smtpd_compat(tmp_path, order):
    out = python('''
        import io
        import sys
        import %s
        assert smtpd is smtpd_compat, smtpd
        assert sys.modules["smtpd"] is smtpd_compat
        smtpd.DEBUGSTREAM = io.StringIO()
        assert smtpd_compat.DEBUGSTREAM is smtpd.DEBUGSTREAM
        smtpd_compat.DEBUGSTREAM = sys.stderr
        assert smtpd.DEBUGSTREAM is sys.stderr
        from smtpd import SMTPServer, DebuggingServer, SMTPChannel
        assert SMTPServer is smtpd_compat.SMTPServer
        print(smtpd.__version__)
    ''' % order, cwd=tmp_path, env=environment(ROOT))
    assert out == "Python SMTP proxy version 0.3\n"


@needs_312
def test_python_m_smtpd_runs_a_debugging_server(tmp_path):
    out, err, status = serve_and_send(["-W", "error", "-m", "smtpd", "-n", "-c",
                                       "DebuggingServer"], cwd=tmp_path, env=environment(ROOT))
    assert status == 0, err
    assert "---------- MESSAGE FOLLOWS ----------" in out
    assert "Subject: ported" in out
    assert "no edits" in out


@needs_312
def test_python_m_smtpd_runs_a_class_from_an_unported_dependency(tmp_path):
    (tmp_path / "legacy_dependency.py").write_text(textwrap.dedent(LEGACY_DEPENDENCY))
    out, err, status = serve_and_send(
        ["-W", "error", "-m", "smtpd", "-n", "-c", "legacy_dependency.Recorder"],
        cwd=tmp_path, env=environment(ROOT, tmp_path))
    assert status == 0, err
    assert out.startswith("RECORDED old@example.org ['new@example.org'] b'Subject: ported")
    assert out.rstrip().endswith("True")  # the dependency's smtpd is smtpd_compat


def test_an_unported_program_runs_unchanged(tmp_path):
    # The classic pattern: import smtpd and asyncore, subclass, asyncore.loop().
    warnings = "error" if NEW_PYTHON else "ignore::DeprecationWarning"
    out = python(LEGACY_PROGRAM, cwd=tmp_path, env=environment(ROOT), warnings=warnings)
    assert out.splitlines() == [
        "GOT a@example.org ['b@example.org'] b'hello'",
        "DONE %s" % ("smtpd_compat" if NEW_PYTHON else "smtpd"),
    ]


WHICH_SMTPD = '''
    import json
    import os
    import sys
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        %s
        import smtpd
    print(json.dumps({
        "file": smtpd.__file__,
        "stdlib": os.path.join(os.path.dirname(os.__file__), "smtpd.py"),
        "smtpd_compat_loaded": "smtpd_compat" in sys.modules,
        "warnings": sorted("%%s: %%s" %% (w.category.__name__, w.message) for w in caught),
    }))
'''


def which_smtpd(tmp_path, placement):
    """Import smtpd in a fresh interpreter with our smtpd.py placed as *placement* says."""
    if placement == "not on the path":
        env, setup = environment(), ""
    elif placement == "after the standard library":  # where site-packages sits
        env, setup = environment(), "import site; site.addsitedir(%r)" % str(ROOT)
    else:  # "before the standard library": PYTHONPATH, or a checkout as cwd
        env, setup = environment(ROOT), ""
    return json.loads(python(WHICH_SMTPD % setup, cwd=tmp_path, env=env, warnings="default"))


@needs_311
@pytest.mark.parametrize("placement", ["after the standard library",
                                       "before the standard library"])
def test_the_standard_library_smtpd_wins_up_to_311(tmp_path, placement):
    baseline = which_smtpd(tmp_path, "not on the path")
    found = which_smtpd(tmp_path, placement)
    assert os.path.samefile(found["file"], found["stdlib"])
    assert not found["smtpd_compat_loaded"]
    # Only the standard library's own warnings, exactly as without smtpd_compat.
    assert found["warnings"] == baseline["warnings"]
    assert all(w.startswith("DeprecationWarning: ") for w in found["warnings"])


@needs_311
def test_python_m_smtpd_runs_the_standard_library_up_to_311(tmp_path):
    # Our smtpd.py first on the path: it must hand over to the stdlib's script.
    check = '''
        import runpy
        import sys
        sys.argv = ["smtpd", "--version"]
        try:
            runpy.run_module("smtpd", run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        print("smtpd_compat loaded:", "smtpd_compat" in sys.modules)
    '''
    out = python(check, cwd=tmp_path, env=environment(ROOT), warnings="ignore")
    assert out.splitlines() == ["Python SMTP proxy version 0.3", "smtpd_compat loaded: False"]
    out, err, status = serve_and_send(["-W", "ignore", "-m", "smtpd", "-n", "-c",
                                       "DebuggingServer"], cwd=tmp_path, env=environment(ROOT))
    assert status == 0, err
    assert "---------- MESSAGE FOLLOWS ----------" in out
    assert "no edits" in out
