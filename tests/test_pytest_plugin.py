"""The pytest plugin, used by a separate test session as a user's project would use it."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import smtpd_compat

pytest_plugins = ["pytester"]

ROOT = Path(smtpd_compat.__file__).resolve().parent.parent
PLUGIN = "smtpd_compat.pytest_plugin"


def plugin_is_installed():
    """True when the pytest11 entry point is registered (smtpd-compat is installed)."""
    try:
        from importlib.metadata import entry_points
    except ImportError:  # Python 3.7 has no importlib.metadata; we need 3.8+
        return False
    found = entry_points()
    group = (found.select(group="pytest11") if hasattr(found, "select")
             else found.get("pytest11", []))
    return any(ep.value == PLUGIN for ep in group)


def run(pytester, monkeypatch, *args):
    """Run pytest in a subprocess in the pytester directory, warnings as errors."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    options = ["-W", "error", "-p", "no:cacheprovider"]
    if not plugin_is_installed():
        options += ["-p", PLUGIN]  # what the entry point does once installed
    return pytester.runpytest_subprocess(*options, *args, timeout=300)


USER_TESTS = '''
    import smtplib
    import threading

    import pytest
    from smtpd_compat import DebuggingServer


    def send(server, recipients, text):
        with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
            return client.sendmail("app@example.org", recipients, text)


    def test_message_is_recorded(smtpd_server, smtpd_messages):
        send(smtpd_server, ["user@example.org"], "Subject: welcome\\r\\n\\r\\nhi")
        [message] = smtpd_messages
        assert message.rcpttos == ["user@example.org"]
        assert message.email["Subject"] == "welcome"


    def test_address(smtpd_server):
        host, port = smtpd_server.address
        assert host == "127.0.0.1" and port > 0
        assert (smtpd_server.hostname, smtpd_server.port) == (host, port)


    def test_each_test_has_its_own_server(smtpd_server, smtpd_messages):
        assert smtpd_messages == []
        send(smtpd_server, ["other@example.org"], "second test")
        assert [m.data for m in smtpd_messages] == [b"second test"]


    def test_refused_recipient(smtpd_server):
        smtpd_server.refuse_recipient("gone@example.org", "550 5.1.1 Gone")
        refused = send(smtpd_server, ["gone@example.org", "here@example.org"], "x")
        assert refused == {"gone@example.org": (550, b"5.1.1 Gone")}
        assert smtpd_server.messages[0].rcpttos == ["here@example.org"]


    def test_refused_data(smtpd_server):
        smtpd_server.refuse_data("452 4.3.1 Out of storage")
        with pytest.raises(smtplib.SMTPDataError):
            send(smtpd_server, ["user@example.org"], "x")


    def test_wait_for_background_mail(smtpd_server):
        thread = threading.Thread(target=send, args=(smtpd_server, ["bg@example.org"], "bg"))
        thread.start()
        try:
            assert smtpd_server.wait_for_message(timeout=10).data == b"bg"
        finally:
            thread.join(10)


    def test_controller_factory(smtpd_controller, capsys):
        first = smtpd_controller()
        debugging = smtpd_controller(DebuggingServer)
        assert first.port != debugging.port
        send(debugging, ["user@example.org"], "printed body")
        assert "printed body" in capsys.readouterr().out
'''


def test_fixtures_in_a_user_project(pytester, monkeypatch):
    pytester.makepyfile(test_user=textwrap.dedent(USER_TESTS))
    result = run(pytester, monkeypatch, "-v")
    result.assert_outcomes(passed=7)


def test_fixtures_under_xdist(pytester, monkeypatch):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_user=textwrap.dedent(USER_TESTS))
    result = run(pytester, monkeypatch, "-p", "xdist", "-n", "2")
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(["*2 workers*"])


def test_servers_are_stopped_after_each_test(pytester, monkeypatch):
    pytester.makepyfile(test_order=textwrap.dedent('''
        import socket

        import pytest

        ports = []


        def test_first(smtpd_server, smtpd_controller):
            ports.append(smtpd_server.port)
            ports.append(smtpd_controller().port)


        @pytest.mark.parametrize("index", [0, 1])
        def test_then_nothing_listens_there(index):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", ports[index]), timeout=5).close()
    '''))
    result = run(pytester, monkeypatch, "-p", "no:randomly")
    result.assert_outcomes(passed=3)


def test_loading_the_plugin_is_silent_and_lazy():
    # Every pytest session of a project with smtpd_compat installed loads the
    # plugin: it must not warn, and it leaves the testing module unloaded
    # until a test asks for one of its fixtures.
    code = ("import sys, smtpd_compat.pytest_plugin; "
            "assert 'smtpd_compat.testing' not in sys.modules")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_marker_asks_for_tls(pytester, monkeypatch):
    pytester.makepyfile(test_tls_user=textwrap.dedent('''
        import smtplib

        import pytest


        @pytest.mark.smtpd_server(tls=True)
        def test_starttls(smtpd_server, smtpd_messages):
            context = smtpd_server.controller.client_context()
            with smtplib.SMTP(smtpd_server.hostname, smtpd_server.port, timeout=10) as client:
                client.starttls(context=context)
                client.sendmail("a@example.org", ["b@example.org"], "over TLS")
            assert smtpd_messages[0].tls is True


        @pytest.mark.smtpd_server(smtps=True)
        def test_implicit_tls(smtpd_server, smtpd_messages):
            context = smtpd_server.controller.client_context()
            with smtplib.SMTP_SSL("localhost", smtpd_server.port, context=context,
                                  timeout=10) as client:
                client.sendmail("a@example.org", ["b@example.org"], "over TLS")
            assert smtpd_messages[0].tls is True


        def test_plaintext_by_default(smtpd_server, smtpd_messages):
            with smtplib.SMTP(smtpd_server.hostname, smtpd_server.port, timeout=10) as client:
                client.ehlo()
                assert not client.has_extn("starttls")
                client.sendmail("a@example.org", ["b@example.org"], "plain")
            assert smtpd_messages[0].tls is False
    '''))
    result = run(pytester, monkeypatch, "-v")
    result.assert_outcomes(passed=3)
