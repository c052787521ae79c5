"""A private Postfix, started and stopped by one test.

`PrivatePostfix` runs the real Postfix of the Debian package with its own
``config_directory``, ``queue_directory`` and ``data_directory`` in a fresh
temporary directory, so it touches nothing of a system Postfix (there need
not be one) and leaves nothing behind:

* ``inet_interfaces = loopback-only`` and, by default, no listener at all;
  ``smtpd_port=True`` adds an smtpd on a free loopback port for SMTP
  injection (``postfix.smtpd_address``).
* nothing is delivered on this machine or outside it: ``mydestination`` is
  empty, local delivery is refused, mail goes to ``relayhost`` (a test's
  server, ``[127.0.0.1]:PORT``) or to what ``transport_maps`` says.
* its log goes to a private file (``maillog_file`` through ``postlogd``):
  `log_text`, `wait_for_log`.
* retries come fast (one second), so a deferred message is tried again
  within a test.

Use it as a context manager: ``postfix -c DIR start`` on entry, and on exit
always ``postfix -c DIR stop`` (then ``abort`` and SIGKILL of the master if
it hangs) and removal of the directory.

Why not pytest's ``tmp_path``: Postfix's daemons run as ``mail_owner``
(``postfix``), and pytest's temporary tree is mode 0700 for root when the
tests run as root; the private directory is made with mode 0755 instead.
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, Iterator, List, Optional, Sequence

from tests.cli_support import require_tool, skip_unless_ci

START_TIMEOUT = 60.0  # seconds for "postfix start" and the master's first daemons
STOP_TIMEOUT = 30.0  # seconds for the master to exit after "postfix stop"
DELIVERY_TIMEOUT = 60.0  # seconds for a message to leave the queue
DAEMON_DIRECTORY = "/usr/lib/postfix/sbin"

# The services a relaying and LMTP-delivering Postfix needs; no chroot (the
# private directories are not set up as chroot jails), no smtpd listener
# unless asked for.
MASTER_CF = """\
pickup    unix  n       -       n       1       1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivatePostfix:
    """One private Postfix instance; see the module docstring.

    *settings* are extra ``main.cf`` lines (name to value), applied after
    the defaults here, so a test can override any of them; *services* are
    extra ``master.cf`` lines.
    """

    def __init__(self, relayhost: Optional[str] = None,
                 settings: Optional[Dict[str, str]] = None,
                 services: Sequence[str] = (), smtpd_port: bool = False,
                 verbose: bool = False) -> None:
        require_tool("postfix", package="postfix")
        if os.geteuid() != 0:
            skip_unless_ci("a private Postfix needs root (its daemons run as mail_owner)")
        self.relayhost = relayhost
        self.settings = dict(settings or {})
        self.services = list(services)
        self.smtpd_address = ("127.0.0.1", free_port()) if smtpd_port else None
        self.verbose = verbose
        self.root = ""
        self.started = False

    # -- directories and configuration ---------------------------------------

    @property
    def config_directory(self) -> str:
        return os.path.join(self.root, "etc")

    @property
    def queue_directory(self) -> str:
        return os.path.join(self.root, "spool")

    @property
    def log_file(self) -> str:
        return os.path.join(self.root, "log", "maillog")

    def main_cf(self) -> Dict[str, str]:
        """The ``main.cf`` settings this instance runs with."""
        settings = {
            "compatibility_level": "3.6",
            "config_directory": self.config_directory,
            "queue_directory": self.queue_directory,
            "data_directory": os.path.join(self.root, "data"),
            "meta_directory": "/etc/postfix",
            "daemon_directory": DAEMON_DIRECTORY,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.test",
            "mydomain": "test",
            "myorigin": "postfix.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "relayhost": self.relayhost or "",
            "local_transport": "error:5.1.1 no local delivery in tests",
            "alias_maps": "",
            "alias_database": "",
            "smtp_dns_support_level": "disabled",
            "disable_dns_lookups": "yes",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "notify_classes": "",
            "biff": "no",
            "maillog_file": self.log_file,
            "maillog_file_prefixes": os.path.dirname(self.log_file),
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "delay_warning_time": "0",
            "smtp_connect_timeout": "5s",
            "smtp_helo_timeout": "10s",
            "smtp_data_done_timeout": "30s",
            "lmtp_connect_timeout": "5s",
            "import_environment": "MAIL_CONFIG MAIL_DEBUG TZ LANG=C",
        }
        if self.verbose:
            settings["debug_peer_list"] = "127.0.0.1"
        settings.update(self.settings)
        return settings

    def master_cf(self) -> str:
        """The ``master.cf`` this instance runs with."""
        lines = [MASTER_CF.rstrip("\n")]
        if self.smtpd_address is not None:
            lines.append("%s:%d inet n - n - - smtpd" % self.smtpd_address)
        lines.extend(self.services)
        return "\n".join(lines) + "\n"

    def _write_configuration(self) -> None:
        self.root = tempfile.mkdtemp(prefix="smtpd-compat-postfix-")
        os.chmod(self.root, 0o755)
        for name in ("etc", "spool", "data", "log"):
            os.mkdir(os.path.join(self.root, name), 0o755)
        shutil.chown(os.path.join(self.root, "data"), "postfix", "postfix")
        with open(os.path.join(self.config_directory, "main.cf"), "w") as main:
            for name, value in self.main_cf().items():
                main.write("%s = %s\n" % (name, value))
        with open(os.path.join(self.config_directory, "master.cf"), "w") as master:
            master.write(self.master_cf())

    # -- commands --------------------------------------------------------------

    def env(self) -> Dict[str, str]:
        """Environment for Postfix's commands: this instance's configuration."""
        env = dict(os.environ)
        env["MAIL_CONFIG"] = self.config_directory
        return env

    def command(self, *argv: str, check: bool = True,
                input: Optional[bytes] = None,
                timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
        """Run a Postfix command against this instance; output captured."""
        result = subprocess.run(list(argv), env=self.env(), input=input,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError("%s failed (%d): %s%s" % (
                " ".join(argv), result.returncode,
                result.stdout.decode("utf-8", "replace"),
                result.stderr.decode("utf-8", "replace")))
        return result

    def postfix(self, action: str, check: bool = True) -> subprocess.CompletedProcess:
        """``postfix -c DIR <action>``."""
        return self.command("postfix", "-c", self.config_directory, action, check=check)

    def postconf(self, *names: str) -> str:
        """``postconf -c DIR -h NAME...``: effective values, one a line."""
        return self.command("postconf", "-c", self.config_directory, "-h",
                            *names).stdout.decode()

    def sendmail(self, message: bytes, recipients: Sequence[str],
                 sender: str = "sender@postfix.test",
                 options: Sequence[str] = ()) -> None:
        """Inject *message* with Postfix's ``sendmail`` (``-N``, ``-R``, ``-V`` in *options*)."""
        self.command("sendmail", "-C", self.config_directory, "-i", "-f", sender,
                     *options, "--", *recipients, input=message)

    def start(self) -> None:
        """Write the configuration and run ``postfix start``; wait until it is up."""
        self._write_configuration()
        self.postfix("check")
        self.postfix("start")
        self.started = True
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(os.path.join(self.queue_directory, "public", "pickup")):
            if time.monotonic() > deadline:
                raise RuntimeError("Postfix did not start:\n" + self.log_text())
            time.sleep(0.1)
        if self.smtpd_address is not None:
            self._wait_for_smtpd(deadline)

    def _wait_for_smtpd(self, deadline: float) -> None:
        while True:
            try:
                socket.create_connection(self.smtpd_address, timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Postfix's smtpd does not listen:\n"
                                       + self.log_text()) from None
                time.sleep(0.1)

    def master_pid(self) -> Optional[int]:
        """The master's pid from its pid file, or None when it is not running."""
        try:
            with open(os.path.join(self.queue_directory, "pid", "master.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def stop(self) -> None:
        """``postfix stop``; ``abort`` and SIGKILL if the master does not exit."""
        if not self.started:
            return
        self.started = False
        pid = self.master_pid()
        self.postfix("stop", check=False)
        if pid is None or _wait_gone(pid, STOP_TIMEOUT):
            return
        self.postfix("abort", check=False)
        if not _wait_gone(pid, STOP_TIMEOUT / 2):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, STOP_TIMEOUT / 2)

    def close(self) -> None:
        """Stop Postfix and remove its directory."""
        try:
            self.stop()
        finally:
            if self.root:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = ""

    def __enter__(self) -> "PrivatePostfix":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- what happened -----------------------------------------------------------

    def log_text(self) -> str:
        """The private log so far ('' before the first line)."""
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, count: int = 1,
                     timeout: float = DELIVERY_TIMEOUT) -> List[str]:
        """Wait until *count* log lines match the regular expression *pattern*."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log_text().splitlines() if regex.search(line)]
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError("%d log line(s) matching %r expected, %d seen:\n%s"
                                     % (count, pattern, len(lines), self.log_text()))
            time.sleep(0.1)

    def queue_ids(self) -> List[str]:
        """Ids of the messages still queued (``postqueue -j``)."""
        output = self.command("postqueue", "-c", self.config_directory, "-j").stdout
        return [found.decode() for found in
                re.findall(rb'"queue_id": *"([0-9A-Za-z]+)"', output)]

    def wait_until_queue_empty(self, timeout: float = DELIVERY_TIMEOUT) -> None:
        """Wait until no message is left in any queue."""
        deadline = time.monotonic() + timeout
        while self.queue_ids():
            if time.monotonic() > deadline:
                raise AssertionError("messages still queued:\n" + self.log_text())
            time.sleep(0.2)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def private_postfix(**kwargs) -> Iterator[PrivatePostfix]:
    """``with private_postfix(relayhost=...) as postfix:``; see `PrivatePostfix`."""
    with PrivatePostfix(**kwargs) as postfix:
        yield postfix
