"""A private Exim, run by one test as a real BDAT (CHUNKING) client.

Postfix's smtp client never sends BDAT; Exim's smtp transport uses CHUNKING
wherever it is offered.  Debian's ``exim4-daemon-light`` conflicts with
Postfix (both are the system's MTA), so it is not installed:
``scripts/fetch-exim`` unpacks the package into a private directory
(``$SMTPD_COMPAT_EXIM_DIR``, else ``.tox/exim``) and `PrivateExim` runs it
from there:

* ``exim -C CONFIG -odi``: one message from standard input, delivered in
  the foreground through an smtp transport to a loopback port; its own
  spool directory and log under a temporary directory; no daemon, no
  queue runner, nothing left behind.
* Debian built the binary for the user ``Debian-exim``, which need not
  exist here.  Rather than add a user to the system, Exim runs in a
  private mount namespace (``unshare --mount``, so root is needed) where
  copies of /etc/passwd and /etc/group that have the user (as nobody's
  ids) are mounted over the real ones; nothing outside sees them.
"""

import os
import shutil
import subprocess
import tempfile
from typing import List, Optional, Sequence

from tests.cli_support import PACKAGE_PARENT, require_tool, skip_unless_ci

FETCH_SCRIPT = os.path.join(PACKAGE_PARENT, "scripts", "fetch-exim")
EXIM_USER = "Debian-exim"
NOBODY = 65534
DELIVERY_TIMEOUT = 60.0

CONFIGURATION = """\
exim_path = {exim}
keep_environment =
spool_directory = {spool}
log_file_path = {spool}/%slog
primary_hostname = exim.test
never_users =
# No Received: header, so the message arrives byte for byte as submitted.
received_header_text =

begin routers

to_server:
  driver = manualroute
  route_list = * 127.0.0.1
  transport = to_server
  self = send

begin transports

to_server:
  driver = smtp
  port = {port}
  allow_localhost
  hosts_try_chunking = *
  hosts_avoid_tls = *
"""

_exim: Optional[str] = None


def exim_binary() -> str:
    """The unpacked exim binary (unpacked now if need be); skip if impossible."""
    global _exim
    if _exim is None:
        result = subprocess.run([FETCH_SCRIPT], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                timeout=600)
        if result.returncode != 0:
            skip_unless_ci("scripts/fetch-exim failed: %s" % result.stderr.decode(
                "utf-8", "replace").strip())
        _exim = result.stdout.decode().strip().splitlines()[-1]
    return _exim


class PrivateExim:
    """Exim with its own configuration and spool, delivering to 127.0.0.1:*port*."""

    def __init__(self, port: int) -> None:
        if os.geteuid() != 0:
            skip_unless_ci("a private Exim needs root (a private mount namespace)")
        self.unshare = require_tool("unshare", "util-linux")
        self.exim = exim_binary()
        self.port = port
        self.root = ""

    @property
    def spool(self) -> str:
        return os.path.join(self.root, "spool")

    def __enter__(self) -> "PrivateExim":
        self.root = tempfile.mkdtemp(prefix="smtpd-compat-exim-")
        os.chmod(self.root, 0o755)
        os.mkdir(self.spool, 0o750)
        os.chown(self.spool, NOBODY, NOBODY)  # Exim writes there as its user
        with open(os.path.join(self.root, "exim.conf"), "w") as config:
            config.write(CONFIGURATION.format(exim=self.exim, spool=self.spool,
                                              port=self.port))
        self._write_user_database("passwd", "/etc/passwd",
                                  "%s:x:%d:%d::/nonexistent:/usr/sbin/nologin\n")
        self._write_user_database("group", "/etc/group", "%s:x:%d:\n")
        return self

    def _write_user_database(self, name: str, real: str, line: str) -> None:
        with open(real) as f:
            content = f.read()
        if not content.endswith("\n"):
            content += "\n"
        if not any(entry.startswith(EXIM_USER + ":") for entry in content.splitlines()):
            content += line % ((EXIM_USER, NOBODY, NOBODY) if name == "passwd"
                               else (EXIM_USER, NOBODY))
        with open(os.path.join(self.root, name), "w") as f:
            f.write(content)

    def __exit__(self, *exc_info) -> None:
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = ""

    def command(self, *args: str) -> List[str]:
        """``exim -C CONFIG ARGS`` in a namespace that knows Exim's user."""
        mounts = ('mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group'
                  ' && shift 2 && exec "$@"')
        return [self.unshare, "--mount", "--propagation", "private", "--",
                "sh", "-c", mounts, "sh",
                os.path.join(self.root, "passwd"), os.path.join(self.root, "group"),
                self.exim, "-C", os.path.join(self.root, "exim.conf"), *args]

    def send(self, message: bytes, recipients: Sequence[str],
             sender: str = "sender@example.com") -> None:
        """Submit *message* (LF line ends) and deliver it now (``-odi``)."""
        result = subprocess.run(
            self.command("-odi", "-oi", "-f", sender, "--", *recipients),
            input=message, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=DELIVERY_TIMEOUT)
        assert result.returncode == 0, (result.stdout, self.log())

    def log(self) -> str:
        """Exim's main log so far."""
        try:
            with open(os.path.join(self.spool, "mainlog"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""
