"""Ready-made delivery servers, built on streaming delivery (see ``_streaming``).

:class:`MaildirServer` and :class:`PipeServer` spool each message to an
unnamed temporary file as it arrives and deliver it from there in a worker
thread, so a slow disk or a slow command never stalls other clients, and
the client's 250 comes only once the message is delivered.
"""

import concurrent.futures
import logging
import mailbox
import os
import shlex
import signal
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from . import _replies
from ._namespace import debug
from ._proxy import relay_reply
from ._server import SMTPServer
from ._streaming import MessageSink

logger = logging.getLogger("smtpd_compat")

# -- spooling servers ------------------------------------------------------------


class Envelope(NamedTuple):
    """Who a spooled message is from and for, and where it came from."""

    peer: object
    mailfrom: str
    rcpttos: List[str]
    mail_options: List[str]
    rcpt_options: List[str]


class SpoolSink(MessageSink):
    """Spool the message to an unnamed temporary file; deliver it at the end.

    The file disappears when it is closed, so an aborted message (or a
    crashed process) leaves nothing behind.
    """

    def __init__(self, server: "SpoolingServer", envelope: Envelope,
                 spool_dir: Optional[str] = None) -> None:
        self._server = server
        self.envelope = envelope
        self.spool = tempfile.TemporaryFile(dir=spool_dir)
        self._written = False

    def write(self, data: bytes) -> None:
        self.spool.write(data)
        self._written = self._written or bool(data)

    def end(self):
        if self._written:
            # The CRLF that ended the last line belonged to the final dot's
            # line: a file (and a command's input) ends with its line end.
            self.spool.write(b"\n")
        try:
            return self._server._submit(self._deliver)
        except BaseException:  # no worker will close it
            self.spool.close()
            raise

    def _deliver(self):
        try:
            self.spool.flush()
            self.spool.seek(0)
            return self._server.deliver(self.spool, self.envelope)
        finally:
            self.spool.close()

    def abort(self, reason: str) -> None:
        self.spool.close()


class SpoolingServer(SMTPServer):
    """A streaming server that spools each message and delivers it in a worker.

    Subclasses define :meth:`deliver`; ``delivery_workers`` deliveries run at
    once (more wait their turn, their clients waiting for the reply).  Needs
    bytes mode: ``decode_data=True`` raises ValueError.
    """

    delivery_workers: int = 4
    _executor: Optional[ThreadPoolExecutor] = None

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("decode_data") or (len(args) > 5 and args[5]):
            raise ValueError("%s needs decode_data=False" % type(self).__name__)
        super().__init__(*args, **kwargs)

    def begin_message(self, peer, mailfrom, rcpttos, **kwargs):
        """A :class:`SpoolSink` for the message (see ``MessageSink``)."""
        envelope = Envelope(peer, mailfrom, list(rcpttos),
                            list(kwargs.get("mail_options") or ()),
                            list(kwargs.get("rcpt_options") or ()))
        sink = SpoolSink(self, envelope, self._spool_dir())
        sink.spool.write(self.message_prefix(envelope))
        return sink

    def _spool_dir(self) -> Optional[str]:
        return None

    def message_prefix(self, envelope: Envelope) -> bytes:
        """Bytes put before the message (header lines ending in LF); none here."""
        return b""

    def deliver(self, message, envelope: Envelope):
        """Deliver the spooled *message* (a binary file at its start); in a worker.

        Returns the reply as ``process_message`` would (None for 250).
        """
        raise NotImplementedError

    def _submit(self, function, *args) -> concurrent.futures.Future:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.delivery_workers,
                thread_name_prefix="smtpd_compat-delivery")
        return self._executor.submit(function, *args)

    def close(self):
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        super().close()


def trace_headers(envelope: Envelope) -> bytes:
    """``Return-Path``, one ``Delivered-To`` per recipient and ``X-Peer``, LF-ended.

    The null sender gives ``Return-Path: <>``.
    """
    sender = "" if envelope.mailfrom == "<>" else envelope.mailfrom
    lines = ["Return-Path: <%s>" % sender]
    lines.extend("Delivered-To: %s" % rcpt for rcpt in envelope.rcpttos)
    peer = envelope.peer
    lines.append("X-Peer: %s" % (peer[0] if isinstance(peer, tuple) else peer))
    return ("\n".join(lines) + "\n").encode("utf-8")


_NAME_CLASH_ATTEMPTS = 3


class MaildirServer(SpoolingServer):
    """Deliver every message into one Maildir, one file per message.

    The directory is ``maildir`` (a constructor keyword, or the attribute;
    ``--maildir`` on the command line), created with its ``tmp``, ``new``
    and ``cur`` subdirectories if it does not exist.  Each accepted message
    is added with ``mailbox.Maildir.add``, which writes it into ``tmp/``
    and moves it into ``new/`` when it is complete: a reader never sees half
    a message.  It starts with ``Return-Path: <sender>``, one
    ``Delivered-To: <recipient>`` line per recipient and ``X-Peer: <client
    address>``, then the message as the client sent it (LF line ends).

    The client's 250 comes once the file is in ``new/``; a failure to write
    answers 451 and leaves nothing in ``new/``.
    """

    maildir: Optional[str] = None
    required_settings = ("maildir",)

    def __init__(self, *args, maildir: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if maildir is not None:
            self.maildir = maildir
        self._mailboxes: Dict[str, mailbox.Maildir] = {}

    def _mailbox(self) -> mailbox.Maildir:
        if not self.maildir:
            raise ValueError("MaildirServer has no maildir to deliver into")
        path = os.fspath(self.maildir)
        box = self._mailboxes.get(path)
        if box is None:
            box = self._mailboxes[path] = mailbox.Maildir(path, factory=None, create=True)
        return box

    def _spool_dir(self) -> Optional[str]:
        # Spooled where the message will go: no second file system fills up.
        return os.path.join(self._mailbox()._path, "tmp")

    def message_prefix(self, envelope: Envelope) -> bytes:
        return trace_headers(envelope)

    def deliver(self, message, envelope: Envelope):
        box = self._mailbox()
        for attempt in range(_NAME_CLASH_ATTEMPTS):
            try:
                key = box.add(message)
                break
            except mailbox.ExternalClashError:
                # Two workers picked the same unique name (mailbox counts
                # its names without a lock); the file was not created.
                if attempt == _NAME_CLASH_ATTEMPTS - 1:
                    raise
        debug("Delivered into %s as %s" % (self.maildir, key))
        return None


MaildirServer.__module__ = "smtpd_compat.delivery"


# -- pipe delivery -----------------------------------------------------------------

EX_TEMPFAIL = 75  # sysexits.h: "temporary failure, try again later"
PIPE_TIMEOUT_DEFAULT = 600.0  # seconds; RFC 5321 gives the final reply 10 minutes
_STDERR_KEPT = 4096  # bytes of a command's stderr read for the log


class PipeCommand(NamedTuple):
    """A delivery command, split into its words (or one shell line)."""

    words: Tuple[str, ...]
    shell: bool = False

    @property
    def per_recipient(self) -> bool:
        """True when the command names ``{recipient}``: run once per recipient."""
        return any("{recipient}" in word for word in self.words)

    def argv(self, sender: str, recipient: Optional[str]) -> List[str]:
        """The program and its arguments with ``{sender}``/``{recipient}`` filled in.

        Without a shell each placeholder becomes exactly one argument's text,
        whatever it holds; with one, the values are shell-quoted.
        """
        values = {"{sender}": sender, "{recipient}": recipient or ""}
        if self.shell:
            values = {key: shlex.quote(value) for key, value in values.items()}
        words = [_fill(word, values) for word in self.words]
        if self.shell:
            return ["/bin/sh", "-c", words[0]]
        return words


def _fill(word: str, values: Dict[str, str]) -> str:
    for placeholder, value in values.items():
        word = word.replace(placeholder, value)
    return word


def parse_pipe_command(text: str, shell: bool = False) -> PipeCommand:
    """Split *text* as a shell would (``shlex``), without running a shell.

    With *shell* the line is kept whole for ``/bin/sh -c``.  Raises
    ValueError for an empty command or unbalanced quotes.
    """
    words = (text.strip(),) if shell else tuple(shlex.split(text))
    if not words or not words[0]:
        raise ValueError("empty delivery command")
    return PipeCommand(words, shell)


class Outcome(NamedTuple):
    """How one run of the delivery command ended."""

    returncode: Optional[int]  # None: timed out (and killed)
    stderr_line: str = ""


def reply_for_outcome(outcome: Outcome) -> Tuple[int, str]:
    """(code, text) for a command's end: 0 is 250, EX_TEMPFAIL, a timeout or a
    signal 4xx, anything else 5xx (as Postfix's pipe(8) and smtpproc)."""
    status = outcome.returncode
    if status == 0:
        return 250, "OK"
    if status is None:
        return 451, _replies.PIPE_TIMED_OUT
    if status == EX_TEMPFAIL:
        return 451, _replies.PIPE_TEMPFAIL
    if status < 0:
        return 451, _replies.PIPE_KILLED % {"signal": -status}
    return 554, _replies.PIPE_FAILED % {"status": status}


class PipeServer(SpoolingServer):
    """Deliver every message by piping it into a command, like Postfix's pipe(8).

    ``pipe_command`` (a constructor keyword or attribute; ``--pipe`` on the
    command line) is split into words with ``shlex`` and run without a
    shell, unless ``pipe_shell`` is true.  ``{sender}`` and ``{recipient}``
    in it are replaced by the envelope's addresses; a command that names
    ``{recipient}`` runs once per recipient, any other once per message.
    The message (as ``process_message`` gets it, LF line ends) is its
    standard input; its environment adds ``SENDER``, ``RECIPIENT`` (this
    run's recipient; all of them, space-separated, for a run per message)
    and ``CLIENT_ADDRESS``.

    The exit status decides the reply: 0 is 250; 75 (EX_TEMPFAIL), a
    signal, or no exit within ``pipe_timeout`` seconds (the command is then
    killed) a 451; anything else 554, with the first line of the command's
    standard error in the log.  With several recipients any temporary
    failure answers 4xx (the client sends again; a recipient whose command
    succeeded may get a second copy, none loses it), and 5xx only when
    every run failed for good.  ``delivery_workers`` commands run at once.

    A subclass can put lines in front of the message by overriding
    ``message_prefix(envelope)``, which returns bytes (header lines ending
    in LF); *envelope* has ``peer``, ``mailfrom``, ``rcpttos``,
    ``mail_options`` and ``rcpt_options``.
    """

    pipe_command = None  # text, or a PipeCommand
    pipe_shell = False
    pipe_timeout: Optional[float] = PIPE_TIMEOUT_DEFAULT
    required_settings = ("pipe_command",)

    def __init__(self, *args, pipe_command=None, pipe_timeout=None, pipe_shell=None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name, value in (("pipe_command", pipe_command), ("pipe_timeout", pipe_timeout),
                            ("pipe_shell", pipe_shell)):
            if value is not None:
                setattr(self, name, value)
        if self.pipe_command is not None:
            self._command()  # a bad command fails here, not at the first message
        self._running_lock = threading.Lock()
        self._running: Set[subprocess.Popen] = set()
        self._stopped = False

    def _command(self) -> PipeCommand:
        command = self.pipe_command
        if isinstance(command, PipeCommand):
            return command
        if not command:
            raise ValueError("PipeServer has no pipe_command to deliver with")
        return parse_pipe_command(command, self.pipe_shell)

    def deliver(self, message, envelope: Envelope):
        command = self._command()
        runs = envelope.rcpttos if command.per_recipient else [None]
        refused: Dict[str, Tuple[int, str]] = {}
        for recipient in runs:
            outcome = self._run(command, message, envelope, recipient)
            code, text = reply_for_outcome(outcome)
            if code != 250:
                self._log_refusal(command, recipient, outcome, code)
                for rcpt in [recipient] if recipient is not None else envelope.rcpttos:
                    refused[rcpt] = (code, text)
        return relay_reply(envelope.rcpttos, refused)

    def _log_refusal(self, command: PipeCommand, recipient, outcome: Outcome,
                     code: int) -> None:
        status = "timed out" if outcome.returncode is None else \
            "exit status %s" % outcome.returncode
        logger.warning("delivery command %r for %s: %s (answered %d): %s",
                       command.words[0], recipient or "the message", status, code,
                       outcome.stderr_line)
        debug("delivery command failed:", status, outcome.stderr_line)

    def _run(self, command: PipeCommand, message, envelope: Envelope,
             recipient: Optional[str]) -> Outcome:
        message.seek(0)
        sender = "" if envelope.mailfrom == "<>" else envelope.mailfrom
        env = dict(os.environ)
        env.update(SENDER=sender,
                   RECIPIENT=recipient if recipient is not None
                   else " ".join(envelope.rcpttos),
                   CLIENT_ADDRESS=str(envelope.peer[0] if isinstance(envelope.peer, tuple)
                                      else envelope.peer))
        with tempfile.TemporaryFile() as errors:
            process = self._start(command.argv(sender, recipient), message, errors, env)
            if process is None:
                return Outcome(EX_TEMPFAIL, "the server is shutting down")
            try:
                returncode = self._wait(process)
            finally:
                with self._running_lock:
                    self._running.discard(process)
            errors.seek(0)
            first_line = errors.read(_STDERR_KEPT).split(b"\n", 1)[0]
        return Outcome(returncode, first_line.decode("utf-8", "replace").strip())

    def _start(self, argv: Sequence[str], message, errors, env) -> Optional[subprocess.Popen]:
        with self._running_lock:
            if self._stopped:
                return None
            try:
                process = subprocess.Popen(
                    argv, stdin=message, stdout=subprocess.DEVNULL, stderr=errors,
                    env=env, close_fds=True, start_new_session=True)
            except OSError as e:
                raise OSError("cannot run %r: %s" % (argv[0], e)) from e
            self._running.add(process)
        return process

    def _wait(self, process: subprocess.Popen) -> Optional[int]:
        try:
            return process.wait(self.pipe_timeout or None)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.wait()
            return None

    def _abort_relays(self) -> None:
        """Kill the commands still running (at shutdown); later runs do not start.

        Their clients, if still connected, get a 4xx and keep the message.
        """
        with self._running_lock:
            self._stopped = True
            running = list(self._running)
        for process in running:
            _kill_group(process)


PipeServer.__module__ = "smtpd_compat.delivery"


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the command and whatever it started (it leads its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
