"""The public namespace: smtpd's names, patchable globals, the user's asyncore."""

import io
import subprocess
import sys
import types

import pytest

import smtpd_compat

SMTPD_GLOBALS = {
    "DEBUGSTREAM", "Devnull", "DATA_SIZE_DEFAULT", "NEWLINE", "COMMASPACE",
    "__version__", "program", "usage", "parseargs", "Options",
}


def test_all_lists_the_classes_and_loop():
    assert sorted(smtpd_compat.__all__) == sorted([
        "SMTPChannel", "SMTPServer", "DebuggingServer", "PureProxy",
        "MailmanProxy", "loop"])


def test_public_names_are_exactly_smtpds():
    # The check CPython's test suite makes: every public name defined in the
    # module (by __module__) is in __all__ or a known global.
    defined_here = {
        name for name in dir(smtpd_compat)
        if not name.startswith("_")
        and not isinstance(getattr(smtpd_compat, name), types.ModuleType)
        and getattr(getattr(smtpd_compat, name), "__module__", None) == "smtpd_compat"}
    assert defined_here <= set(smtpd_compat.__all__) | SMTPD_GLOBALS
    assert set(smtpd_compat.__all__) <= defined_here


@pytest.mark.parametrize("name", sorted(SMTPD_GLOBALS))
def test_smtpd_globals_exist(name):
    assert hasattr(smtpd_compat, name)


def test_global_values():
    assert smtpd_compat.__version__ == "Python SMTP proxy version 0.3"
    assert smtpd_compat.DATA_SIZE_DEFAULT == 33554432
    assert smtpd_compat.NEWLINE == "\n" and smtpd_compat.COMMASPACE == ", "
    assert isinstance(smtpd_compat.DEBUGSTREAM, smtpd_compat.Devnull)


def test_python2_emptystring_is_importable():
    # secure-smtpd does `from smtpd import ..., EMPTYSTRING` (Python 2's smtpd).
    from smtpd_compat import EMPTYSTRING
    assert EMPTYSTRING == "" and type(EMPTYSTRING) is str
    assert smtpd_compat.EMPTYSTRING == ""
    # Not a visible name: CPython's test__all__ counts every public str global.
    assert "EMPTYSTRING" not in smtpd_compat.__all__
    assert "EMPTYSTRING" not in dir(smtpd_compat)
    assert not hasattr(smtpd_compat, "NO_SUCH_NAME")


def test_usage_text_keeps_smtpds_options():
    for option in ("--nosetuid", "--version", "--class", "--size", "--smtputf8",
                   "--debug", "--help", "%(program)s", "%(__version__)s"):
        assert option in smtpd_compat.__doc__


def test_debugstream_reassignment_reaches_every_class(make_session, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(smtpd_compat, "DEBUGSTREAM", stream)
    session = make_session()
    session.send(b"HELO x\r\nMAIL FROM:<a@b>\r\n", replies=2)
    output = stream.getvalue()
    assert "RecordingServer started at" in output
    assert "Incoming connection from" in output
    assert "Peer: ('127.0.0.1'" in output
    assert "===> MAIL FROM:<a@b>" in output
    assert "sender: a@b" in output


def test_version_patch_reaches_the_greeting(make_session, monkeypatch):
    monkeypatch.setattr(smtpd_compat, "__version__", "Custom banner")
    session = make_session()
    assert session.greeting.endswith(b" Custom banner\r\n")


def test_socket_patch_reaches_the_server(make_session, monkeypatch):
    fake = types.SimpleNamespace(**vars(__import__("socket")))
    fake.getfqdn = lambda name="": "patched.example"
    monkeypatch.setattr(smtpd_compat, "socket", fake)
    session = make_session()
    assert session.greeting.startswith(b"220 patched.example ")


def test_uses_the_users_asyncore():
    import asynchat
    import asyncore
    assert smtpd_compat.asyncore is asyncore
    assert smtpd_compat.asynchat is asynchat
    assert issubclass(smtpd_compat.SMTPServer, asyncore.dispatcher)
    assert issubclass(smtpd_compat.SMTPChannel, asynchat.async_chat)


@pytest.mark.parametrize("cls", ["SMTPChannel", "SMTPServer", "DebuggingServer",
                                 "PureProxy", "MailmanProxy", "loop", "Options",
                                 "usage", "parseargs", "Devnull"])
def test_public_objects_belong_to_the_public_module(cls):
    assert getattr(smtpd_compat, cls).__module__ == "smtpd_compat"


def test_import_emits_no_warning():
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import smtpd_compat"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_loop_serves_until_map_is_empty(make_session):
    session = make_session()
    session.client.sendall(b"QUIT\r\n")
    smtpd_compat.loop(timeout=0.05, map=session.server._map, count=20)
    assert session.client.recv(1024) == b"221 Bye\r\n"
    smtpd_compat.asyncore.close_all(session.server._map)
    smtpd_compat.loop(map=session.server._map)  # an empty map: returns at once
