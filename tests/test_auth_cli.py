"""AUTH from the command line (--auth-file, --require-auth, --auth-plaintext) and real clients.

The real clients (swaks, curl, msmtp, smtplib) log in to ``python -m
smtpd_compat -c DebuggingServer`` over plain TCP on loopback, allowed by
--auth-plaintext (TLS is tested on its own branch), with PLAIN, LOGIN and
CRAM-MD5, and each once with a refused password.
"""

import base64
import smtplib
import socket
import subprocess

import pytest

import smtpd_compat
from smtpd_compat import _auth, _cli
from tests.cli_support import (
    END_OF_MESSAGE,
    child_env,
    compat_command,
    require_tool,
    running_server,
)

LOGIN = "bob"
PASSWORD = "s3cr:et pw"  # a colon and a blank: everything after the first colon
AUTH_FILE = "# test logins\n\n  # indented comment\n%s:%s\nann:other\n" % (LOGIN, PASSWORD)


@pytest.fixture
def auth_file(tmp_path):
    path = tmp_path / "users"
    path.write_text(AUTH_FILE, encoding="utf-8")
    return str(path)


# -- parseargs, in-process -----------------------------------------------------

def test_options_off_by_default():
    options = _cli.parseargs([])
    assert (options.auth_users, options.auth_required, options.auth_plaintext) == (
        None, None, None)


def test_options_set_the_server(auth_file):
    options = _cli.parseargs(["-n", "-c", "DebuggingServer", "--auth-file", auth_file,
                              "--require-auth", "--auth-plaintext", "127.0.0.1:0"])
    assert options.auth_users == {LOGIN: PASSWORD, "ann": "other"}
    server = _cli.make_server(options)
    try:
        assert server.auth_users == {LOGIN: PASSWORD, "ann": "other"}
        assert server.auth_required is True and server.auth_plaintext is True
    finally:
        server.close()


def test_without_options_the_server_keeps_its_class_settings():
    options = _cli.parseargs(["-n", "-c", "DebuggingServer", "127.0.0.1:0"])
    server = _cli.make_server(options)
    try:
        assert server.auth_users is None
        assert "auth_required" not in vars(server) and "auth_plaintext" not in vars(server)
    finally:
        server.close()


@pytest.mark.parametrize("content, error", [
    ("bob\n", "line 1: expected login:password"),
    ("# only a comment\n\n", "no login:password line"),
    (":pw\n", "line 1: expected login:password"),
    ("ok:1\nbob:\n", "line 2: expected login:password"),
    ("bob:1\nbob:2\n", "line 2: login 'bob' given twice"),
], ids=["no-colon", "empty", "no-login", "no-password", "twice"])
def test_parse_auth_file_errors(content, error):
    with pytest.raises(ValueError) as raised:
        _auth.parse_auth_file(content.splitlines(True))
    assert str(raised.value) == error


def test_parse_auth_file_keeps_passwords_as_written():
    users = _auth.parse_auth_file(["a:b:c\r\n", " x : y \n", "#c:d\n"])
    assert users == {"a": "b:c", " x ": " y "}


def _run(*args, timeout=60):
    return subprocess.run(compat_command(*args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          timeout=timeout, env=child_env())


@pytest.mark.parametrize("content", ["bob\n", "bob:secret-pw\nbob:secret-pw2\n", ""],
                         ids=["bad-line", "twice", "empty"])
def test_bad_auth_file_is_one_line_and_exit_1_before_binding(tmp_path, content):
    path = tmp_path / "users"
    path.write_text(content, encoding="utf-8")
    # The port is taken: the error must be the file's, found before binding.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = _run("-n", "--auth-file", str(path),
                      "127.0.0.1:%d" % taken.getsockname()[1])
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "--auth-file %s: " % path in lines[0]
    assert "secret" not in lines[0]


@pytest.mark.parametrize("args, message", [
    (["--auth-file", "{users}"],
     "--auth-file needs --tls-cert (AUTH is offered only over TLS) or --auth-plaintext"),
    (["--auth-file", "{users}", "--require-auth"],
     "--auth-file needs --tls-cert (AUTH is offered only over TLS) or --auth-plaintext"),
    (["--require-auth"], "--require-auth needs --auth-file"),
    (["--require-auth", "--auth-plaintext"], "--require-auth needs --auth-file"),
], ids=["auth-file-alone", "required-without-tls", "required-alone",
        "required-plaintext-alone"])
def test_auth_nobody_could_use_is_refused_before_binding(auth_file, args, message):
    # Without TLS or --auth-plaintext no client is ever offered AUTH; with
    # --require-auth and no logins, none could ever send mail.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = _run("-n", "-c", "DebuggingServer",
                      *[a.format(users=auth_file) for a in args],
                      "127.0.0.1:%d" % taken.getsockname()[1])
    assert result.returncode == 1
    assert result.stderr.decode() == "smtpd_compat: error: %s\n" % message


class _OwnLoginsAndTLS(smtpd_compat.DebuggingServer):
    tls_context = object()  # never used: the class is only checked

    def authenticate(self, peer, login, password):
        return False


@pytest.mark.parametrize("args", [["--require-auth"], ["--auth-file", "{users}"]],
                         ids=["require-auth", "auth-file"])
def test_a_class_with_its_own_logins_and_tls_needs_no_more_options(auth_file, args):
    options = _cli.parseargs(["-n", *[a.format(users=auth_file) for a in args]])
    _cli.check_required_settings(_OwnLoginsAndTLS, options)  # no SystemExit
    with pytest.raises(SystemExit):
        _cli.check_required_settings(smtpd_compat.DebuggingServer, options)


def test_missing_auth_file(tmp_path):
    result = _run("-n", "--auth-file", str(tmp_path / "absent"), "127.0.0.1:0")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        "smtpd_compat: error: --auth-file %s: No such file or directory\n"
        % (tmp_path / "absent"))


def test_help_describes_the_options():
    result = _run("--help")
    for option in ("--auth-file file", "--require-auth", "--auth-plaintext"):
        assert option.encode() in result.stderr


# -- real clients ---------------------------------------------------------------

MESSAGE = (b"From: sender@example.com\r\nTo: rcpt@example.com\r\n"
           b"Subject: %s\r\n\r\nHello.\r\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One DebuggingServer with --auth-file, --require-auth and --auth-plaintext.

    With -d, so that DEBUGSTREAM (stderr) shows every session: no password
    and no base64 of one may be in it.
    """
    directory = tmp_path_factory.mktemp("auth")
    path = directory / "users"
    path.write_text(AUTH_FILE, encoding="utf-8")
    command = lambda port: compat_command(  # noqa: E731
        "-n", "-d", "-c", "DebuggingServer", "--auth-file", str(path), "--require-auth",
        "--auth-plaintext", "--hostname", "mx.test", "127.0.0.1:%d" % port)
    with running_server(command, cwd=str(directory), env=child_env()) as (process, port):
        yield process, port
        assert process.stop() == 0
    assert_no_secret_shown(process)


def assert_no_secret_shown(process):
    """No password, nor its base64 (alone or in PLAIN's form), in *process*'s output.

    Also checks that DEBUGSTREAM showed the sessions (``-d``).
    """
    assert b"AUTH PLAIN <hidden>" in process.stderr
    for secret in (PASSWORD, "wrong-pw"):
        encoded = base64.b64encode(("\0%s\0%s" % (LOGIN, secret)).encode())
        for shown in (secret.encode(), encoded, base64.b64encode(secret.encode())):
            assert shown not in process.stdout and shown not in process.stderr


def client_command(client, mechanism, port, password, subject, tmp_path,
                   tls=None, ca_file=None):
    """argv and stdin that make *client* log in and send a message with *subject*.

    *tls* is None (plain TCP), ``"starttls"`` or ``"smtps"`` (implicit TLS);
    with TLS the client verifies the server's certificate against *ca_file*.
    """
    message = tmp_path / "message.eml"
    message.write_bytes(MESSAGE % subject.encode())
    if client == "swaks":
        tls_args = [] if tls is None else [
            "--tls-on-connect" if tls == "smtps" else "--tls", "--tls-verify",
            "--tls-ca-path", ca_file]
        return [require_tool("swaks", "swaks"), "--server", "127.0.0.1", "--port",
                str(port), *tls_args, "--from", "sender@example.com", "--to",
                "rcpt@example.com", "--helo", "client.example", "--auth", mechanism,
                "--auth-user", LOGIN, "--auth-password", password,
                "--data", "@%s" % message], None
    if client == "curl":
        scheme = "smtps" if tls == "smtps" else "smtp"
        tls_args = [] if tls is None else ["--ssl-reqd", "--cacert", ca_file]
        return [require_tool("curl", "curl"), "--silent", "--show-error",
                "%s://127.0.0.1:%d/client.example" % (scheme, port), *tls_args,
                "--mail-from", "sender@example.com", "--mail-rcpt", "rcpt@example.com",
                "--user", "%s:%s" % (LOGIN, password),
                "--login-options", "AUTH=" + mechanism,
                "--upload-file", str(message)], None
    if client == "msmtp":
        secret = tmp_path / "password"
        secret.write_text(password, encoding="utf-8")
        tls_args = ["--tls=off"] if tls is None else [
            "--tls=on", "--tls-starttls=%s" % ("off" if tls == "smtps" else "on"),
            "--tls-trust-file=%s" % ca_file]
        return [require_tool("msmtp", "msmtp"), "--file=/dev/null",
                "--host=127.0.0.1", "--port=%d" % port, *tls_args,
                "--auth=%s" % mechanism.lower(), "--user=%s" % LOGIN,
                "--passwordeval=cat %s" % secret,
                "--domain=client.example", "--from=sender@example.com",
                "rcpt@example.com"], message.read_bytes()
    raise AssertionError(client)


CASES = [(client, mechanism) for client in ("swaks", "curl", "msmtp")
         for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5")]


@pytest.mark.parametrize("client, mechanism", CASES, ids=["-".join(c) for c in CASES])
@pytest.mark.parametrize("accepted", [True, False], ids=["right", "wrong"])
def test_real_client_logs_in(server, client, mechanism, accepted, tmp_path):
    process, port = server
    password = PASSWORD if accepted else "wrong-pw"
    subject = "%s %s %s" % (client, mechanism, "right" if accepted else "wrong")
    argv, stdin = client_command(client, mechanism, port, password, subject, tmp_path)
    run_client(process, argv, stdin, subject, accepted, tmp_path)


def run_client(process, argv, stdin, subject, accepted, tmp_path):
    """Run a client; *accepted*: DebuggingServer printed its message with the login.

    Refused: the client failed and the message never reached the server's output.
    """
    result = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=120, cwd=str(tmp_path))
    output = result.stdout.decode(errors="replace")
    if accepted:
        assert result.returncode == 0, output
        out = process.wait_for_stdout(repr(("Subject: " + subject).encode()).encode())
        block = out[out.rindex(b"MESSAGE FOLLOWS", 0, out.index(subject.encode())):]
        assert block.startswith(b"MESSAGE FOLLOWS ----------\nauth login: bob\n")
        assert END_OF_MESSAGE in block
    else:
        assert result.returncode != 0, output
        assert subject.encode() not in process.stdout
    return output


@pytest.mark.parametrize("mechanism", ["CRAM-MD5", "PLAIN", "LOGIN"])
def test_smtplib_login(server, mechanism):
    process, port = server
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.has_extn("auth")
        client.user, client.password = LOGIN, PASSWORD
        method = getattr(client, "auth_" + mechanism.lower().replace("-", "_"))
        code, text = client.auth(mechanism, method)
        assert (code, text) == (235, b"2.7.0 Authentication successful")
        subject = "smtplib " + mechanism
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE % subject.encode())
    process.wait_for_stdout(subject.encode())


def test_smtplib_login_refused_and_required(server):
    process, port = server
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        client.ehlo("client.example")
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("a@example.com", ["b@example.com"], b"x")
        assert refused.value.smtp_code == 530
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login(LOGIN, "wrong-pw")
        assert failed.value.smtp_code == 535
        # login() tried each of the three offered mechanisms: three failures.
        assert client.docmd("NOOP") == (
            421, b"4.7.0 mx.test Error: too many failed authentications")
    finally:
        client.close()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login(LOGIN, PASSWORD)
        assert client.sendmail("a@example.com", ["b@example.com"],
                               MESSAGE % b"smtplib login") == {}
