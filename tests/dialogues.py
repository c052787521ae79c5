"""Raw SMTP dialogues for the differential test, and how to find CPython 3.11.

Each `Dialogue` is a list of `Step`s: the exact bytes a client sends in one
``sendall`` and how many complete replies it then waits for. The harness in
``test_differential.py`` plays every dialogue against CPython 3.11's stdlib
``smtpd`` and against ``smtpd_compat`` and compares the reply bytes exactly.

A dialogue that hits a CPython defect which smtpd_compat deliberately fixes
(see the project's defect list) carries ``expected_difference`` (the reason)
and ``compat_codes``: the reply codes smtpd_compat must give, flattened over
the whole dialogue (greeting first, ``EOF`` when the server closed). For those
only smtpd_compat is run.

Server configurations (keyword arguments of ``SMTPServer``) are in `CONFIGS`.
The sink server answers ``250 OK`` for a sender whose address starts with
``plain``, and otherwise ``250 OK <ascii() of what process_message got>`` so
that the message data, envelope and options are compared too.
"""

import os
import shutil
import subprocess
import sys
from typing import NamedTuple, Optional, Tuple

# --------------------------------------------------------------------------
# Finding a CPython that still ships smtpd (3.11, else 3.10)


def pyenv_root():
    """Return pyenv's root directory, or None when pyenv is not around."""
    exe = shutil.which("pyenv")
    if exe:
        try:
            out = subprocess.run(
                [exe, "root"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                timeout=30,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = b""
        root = out.decode().strip()
        if root and os.path.isdir(root):
            return root
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    return root if os.path.isdir(root) else None


def find_cpython(minor):
    """Return the path of a ``python3.<minor>`` interpreter, or None.

    The running interpreter wins when it is that version; then
    ``python3.<minor>`` on PATH; then the newest pyenv version of it.
    """
    if sys.version_info[:2] == (3, minor) and sys.implementation.name == "cpython":
        return sys.executable
    name = "python3.%d" % minor
    exe = shutil.which(name)
    if exe and _runs(exe):
        return exe
    root = pyenv_root()
    if root:
        versions = os.path.join(root, "versions")
        candidates = []
        for entry in os.listdir(versions) if os.path.isdir(versions) else ():
            parts = entry.split(".")
            is_minor = len(parts) == 3 and parts[:2] == ["3", str(minor)]
            if is_minor and parts[2].isdigit():
                candidates.append((int(parts[2]), entry))
        for _, entry in sorted(candidates, reverse=True):
            exe = os.path.join(versions, entry, "bin", name)
            if os.path.exists(exe) and _runs(exe):
                return exe
    return None


def _runs(exe):
    # A pyenv shim exists even when its version is not selected; it then fails.
    try:
        return (
            subprocess.run(
                [exe, "-c", "pass"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                timeout=60,
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


# --------------------------------------------------------------------------
# The corpus

CONFIGS = {
    # The SMTPServer defaults: data_size_limit=33554432, decode_data=False.
    "default": {},
    "decode": {"decode_data": True},
    # What `python -m smtpd -u` turns on.
    "utf8": {"enable_SMTPUTF8": True},
    "small": {"data_size_limit": 100},
    # What `python -m smtpd` passes without -s: no SIZE advertised.
    "nolimit": {"data_size_limit": None},
    # Started through the command line, `python -m smtpd -n -c Sink ...`,
    # with these options.  `-s 0`: no size limit, what smtpd's CLI did
    # without -s (smtpd_compat applies the documented 33554432 instead).
    "cli": {"argv": ["-s", "0"]},
    "cli-default": {"argv": []},
    "cli-u": {"argv": ["-u", "-s", "0"]},
    "cli-s": {"argv": ["-s", "1000"]},
    "cli-us": {"argv": ["--smtputf8", "--size", "2000"]},
}


class Step(NamedTuple):
    send: bytes
    replies: int = 1


class Dialogue(NamedTuple):
    id: str
    steps: Tuple[Step, ...]
    config: str = "default"
    expected_difference: Optional[str] = None
    compat_codes: Optional[str] = None
    compat_contains: Optional[bytes] = None


def _step(item):
    if isinstance(item, Step):
        return item
    if isinstance(item, str):
        return Step(item.encode("utf-8") + b"\r\n")
    if isinstance(item, bytes):
        return Step(item + b"\r\n")
    raise TypeError(item)


def message(*lines, replies=1):
    """The DATA payload: lines joined by CRLF, then CRLF . CRLF."""
    body = b"".join(
        (ln.encode("utf-8") if isinstance(ln, str) else ln) + b"\r\n" for ln in lines
    )
    return Step(body + b".\r\n", replies)


def raw(data, replies=1):
    return Step(data, replies)


DIALOGUES = []


def dialogue(
    id,
    *steps,
    config="default",
    expected_difference=None,
    compat=None,
    compat_contains=None,
):
    assert config in CONFIGS, config
    assert (expected_difference is None) == (compat is None), id
    full_id = id if config == "default" else "%s-%s" % (config, id)
    assert all(d.id != full_id for d in DIALOGUES), full_id
    DIALOGUES.append(
        Dialogue(
            full_id,
            tuple(_step(s) for s in steps),
            config,
            expected_difference,
            compat,
            compat_contains,
        )
    )


FROM = "MAIL FROM:<sender@example.com>"
PLAIN = "MAIL FROM:<plain@example.com>"
TO = "RCPT TO:<rcpt@example.org>"
HELO = "HELO client.example"
EHLO = "EHLO client.example"


def long_mail(total, domain="example.com"):
    """A valid MAIL command line of exactly `total` octets (CRLF excluded)."""
    head, tail = "MAIL FROM:<", "@" + domain + ">"
    return head + "a" * (total - len(head) - len(tail)) + tail


def long_line(verb, total):
    line = verb + " " + "x" * (total - len(verb) - 1)
    assert len(line) == total
    return line


# -- greeting, HELO, EHLO, NOOP, QUIT, RSET ---------------------------------

dialogue("quit", "QUIT")
dialogue("quit-with-arg", "QUIT now please")
dialogue("quit-lowercase", "quit")
dialogue("helo", HELO, "QUIT")
dialogue("helo-no-arg", "HELO", "HELO ", "QUIT")
dialogue("helo-lowercase-mixed", "hElO client.example", "QUIT")
dialogue("helo-extra-spaces", "HELO    client.example   ", "MAIL FROM:<a@b>")
dialogue("helo-duplicate", HELO, "HELO other.example", "EHLO other.example")
dialogue("ehlo", EHLO, "QUIT")
dialogue("ehlo-no-arg", "EHLO", "QUIT")
dialogue("ehlo-duplicate", EHLO, "EHLO other.example", "HELO other.example")
dialogue("ehlo-after-transaction", EHLO, PLAIN, TO, "EHLO again.example", TO)
dialogue("noop", "NOOP", HELO, "NOOP", "noop", "NOOP ", "QUIT")
dialogue("noop-with-arg", "NOOP x", "NOOP  x  ", "QUIT")
dialogue("rset", "RSET", HELO, "RSET", "RSET ", "QUIT")
dialogue("rset-with-arg", HELO, "RSET x", "QUIT")
dialogue("rset-clears-transaction", HELO, FROM, TO, "RSET", TO, "DATA", FROM, "QUIT")
dialogue("rset-keeps-greeting", EHLO, "RSET", FROM, "EHLO again.example")
for _cfg in ("decode", "utf8", "small", "nolimit"):
    dialogue("ehlo", EHLO, "HELP MAIL", "HELP RCPT", "QUIT", config=_cfg)

# -- HELP --------------------------------------------------------------------

_HELP_ARGS = ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY"]
dialogue("help", "HELP", "HELP   ", "help")
dialogue("help-each-before-greeting", *["HELP " + a for a in _HELP_ARGS])
dialogue("help-each-after-helo", HELO, *["HELP " + a for a in _HELP_ARGS])
dialogue("help-each-after-ehlo", EHLO, *["HELP " + a for a in _HELP_ARGS])
dialogue("help-lowercase-args", EHLO, "help mail", "Help Rcpt", "HELP vrfy")
dialogue(
    "help-unknown-args",
    "HELP EXPN",
    "HELP HELP",
    "HELP FOO",
    "HELP MAIL FROM",
    "HELP  MAIL",
    "HELP *",
)

# -- VRFY, EXPN --------------------------------------------------------------

dialogue(
    "vrfy",
    "VRFY <user@example.com>",
    "VRFY user@example.com",
    "VRFY user",
    "VRFY <>",
    "VRFY",
    'VRFY ""',
    "VRFY <user@example.com> trailing",
    HELO,
    "vrfy postmaster",
)
dialogue("expn", "EXPN", "EXPN list@example.com", HELO, "expn staff", "QUIT")

# -- unknown verbs, empty and odd lines ---------------------------------------

dialogue(
    "unknown-verbs",
    "FOO",
    "foo bar baz",
    "XYZZY",
    "TURN",
    "ETRN example.com",
    "STARTTLS",
    "AUTH PLAIN AGFiYwBkZWY=",
    "BDAT 10 LAST",
    "SEND FROM:<a@b>",
    "MAILFROM:<a@b>",
    "QUIT",
)
dialogue("unknown-verbs-after-ehlo", EHLO, "STARTTLS", "AUTH LOGIN", "NOOP")
dialogue("empty-line", "", HELO, "", "NOOP")
dialogue("whitespace-lines", " ", "   ", " HELO x", "NOOP")
dialogue("tab-separator", "HELO\tclient.example", "NOOP\t", "QUIT")

# -- over-long command lines ----------------------------------------------------

dialogue(
    "line-length-helo",
    long_line("HELO", 512),
    "RSET",
    long_line("HELO", 513),
    long_line("NOOP", 513),
    long_line("FOOBAR", 513),
    "NOOP",
)
dialogue(
    "line-length-mail-after-helo",
    HELO,
    long_mail(512),
    "RSET",
    long_mail(513),
    "NOOP",
)
dialogue(
    "line-length-mail-after-ehlo",
    EHLO,
    long_mail(538),
    "RSET",
    long_mail(539),
    long_line("RCPT", 513),
    long_line("NOOP", 513),
    "QUIT",
)
dialogue("line-length-huge", long_line("NOOP", 5000), "NOOP", "QUIT")
dialogue(
    "line-length-huge-after-ehlo", EHLO, long_line("MAIL", 70000), "NOOP", "QUIT"
)
dialogue(
    "line-length-mail",
    EHLO,
    long_mail(548),
    "RSET",
    long_mail(549),
    "NOOP",
    config="utf8",
)
dialogue("line-length-mail", EHLO, long_mail(512), "RSET", long_mail(513),
         config="nolimit")
dialogue("line-length-mail", EHLO, long_mail(538), "RSET", long_mail(539),
         config="decode")

# -- MAIL ---------------------------------------------------------------------

dialogue("mail-before-helo", FROM, "MAIL", "QUIT")
dialogue(
    "mail-syntax-after-helo",
    HELO,
    "MAIL",
    "MAIL ",
    "MAIL FROM:",
    "MAIL TO:<a@example.com>",
    "MAIL FROM",
    'MAIL FROM:""',
    "MAIL <a@example.com>",
    "QUIT",
)
dialogue(
    "mail-syntax-after-ehlo",
    EHLO,
    "MAIL",
    "MAIL FROM:",
    "MAIL TO:<a@example.com>",
    'MAIL FROM:""',
    "QUIT",
)
dialogue("mail-forms-1", HELO, "MAIL FROM:<a@example.com>", "RSET",
         "MAIL FROM: <a@example.com>", "RSET", "MAIL from:<a@example.com>",
         "RSET", "mail From:a@example.com", "RSET", "MAIL FROM:<>")
dialogue("mail-forms-2", HELO, "MAIL FROM:<a@example.com", "RSET",
         "MAIL FROM:<@relay.example:a@example.com>", "RSET",
         "MAIL FROM:<a(comment)@example.com>", "RSET",
         "MAIL FROM:<a b@example.com>", "RSET",
         'MAIL FROM:<"a b"@example.com>', "RSET",
         "MAIL FROM:<a@[127.0.0.1]>", "RSET", "MAIL FROM:user")
dialogue("mail-params-without-ehlo", HELO, FROM + " SIZE=10", FROM + " BODY=7BIT",
         "MAIL FROM:x <a@b>", FROM)
dialogue("mail-nested", HELO, FROM, FROM, "MAIL FROM:<other@example.com>", "MAIL")
dialogue("mail-nested-ehlo", EHLO, FROM, FROM + " SIZE=10", FROM + " XFOO",
         FROM + " =x")
dialogue(
    "mail-size",
    EHLO,
    FROM + " SIZE=10",
    "RSET",
    FROM + " SIZE=0",
    "RSET",
    FROM + " SIZE=33554432",
    "RSET",
    FROM + " SIZE=33554433",
    FROM + " SIZE=99999999999999999999",
    FROM + " SIZE=abc",
    FROM + " SIZE=-1",
    FROM + " SIZE=1.5",
    FROM + " SIZE=",
    FROM + " size=12",
)
dialogue("mail-size", EHLO, FROM + " SIZE=100", "RSET", FROM + " SIZE=101",
         FROM + " SIZE=x", config="small")
dialogue("mail-size", EHLO, FROM + " SIZE=99999999999999999999", "RSET",
         FROM + " SIZE=x", FROM + " SIZE=", config="nolimit")
dialogue("mail-size", EHLO, FROM + " SIZE=33554433", FROM + " SIZE=33554432",
         config="decode")
dialogue(
    "mail-body",
    EHLO,
    FROM + " BODY=7BIT",
    "RSET",
    FROM + " BODY=8BITMIME",
    "RSET",
    FROM + " body=8bitmime",
    "RSET",
    FROM + " BODY=BINARYMIME",
    FROM + " BODY",
    FROM + " BODY=",
    FROM + " BODY=7BIT BODY=8BITMIME",
)
dialogue("mail-body", EHLO, FROM + " BODY=8BITMIME", FROM + " BODY=7BIT",
         FROM + " BODY=BAD", config="decode")
dialogue(
    "mail-smtputf8-not-enabled",
    EHLO,
    FROM + " SMTPUTF8",
    FROM + " SMTPUTF8=yes",
    FROM + " BODY=8BITMIME SMTPUTF8",
)
dialogue(
    "mail-smtputf8",
    EHLO,
    FROM + " SMTPUTF8",
    "RSET",
    FROM + " SMTPUTF8=yes",
    FROM + " smtputf8 BODY=8BITMIME SIZE=20",
    "RSET",
    "MAIL FROM:<jörg@exämple.com> SMTPUTF8",
    "RCPT TO:<ßtraße@exämple.com>",
    "VRFY \"\"",
    "QUIT",
    config="utf8",
)
dialogue("mail-smtputf8", HELO, FROM + " SMTPUTF8", config="nolimit")
dialogue("mail-smtputf8", EHLO, FROM + " SMTPUTF8", config="decode")
dialogue(
    "mail-unknown-params",
    EHLO,
    FROM + " XFOO=bar",
    FROM + " XFOO",
    FROM + " RET=HDRS ENVID=abc",
    FROM + " A-B=1",
    FROM + " =x",
    FROM + " X==y",
    FROM + " SIZE=10 XFOO",
    "MAIL FROM:x <a@b>",
    FROM + " AUTH=<>",
)
dialogue(
    "mail-params-combined",
    EHLO,
    FROM + " SIZE=10 BODY=8BITMIME",
    "RSET",
    FROM + "   size=10   body=7bit  ",
)
dialogue("mail-non-ascii-address-accepted", EHLO,
         "MAIL FROM:<jörg@example.com>", "RCPT TO:<zoë@example.com>", "QUIT")

# -- RCPT ---------------------------------------------------------------------

dialogue("rcpt-before-helo", TO, "QUIT")
dialogue("rcpt-before-mail", HELO, TO, "RCPT", "QUIT")
dialogue(
    "rcpt-syntax",
    HELO,
    FROM,
    "RCPT",
    "RCPT ",
    "RCPT TO:",
    "RCPT FROM:<a@example.com>",
    'RCPT TO:""',
    "RCPT TO:<a@example.com> NOTIFY=NEVER",
    "QUIT",
)
dialogue("rcpt-syntax-after-ehlo", EHLO, FROM, "RCPT", "RCPT TO:", "QUIT")
dialogue(
    "rcpt-forms",
    HELO,
    FROM,
    "RCPT TO:<a@example.com>",
    "RCPT TO: <b@example.com>",
    "rcpt to:c@example.com",
    "RCPT TO:d",
    "RCPT TO:<>",
    "RCPT TO:<@relay.example:e@example.com>",
    "RCPT TO:<a@example.com>",
    "DATA",
    message("Subject: forms", "", "body"),
)
dialogue(
    "rcpt-params",
    EHLO,
    FROM,
    TO + " NOTIFY=NEVER",
    TO + " ORCPT=rfc822;a@b",
    TO + " =x",
    TO + " SIZE=10",
    TO + " BODY=7BIT",
    TO,
    "QUIT",
)

# -- DATA ---------------------------------------------------------------------

dialogue("data-before-helo", "DATA", "QUIT")
dialogue("data-before-mail", HELO, "DATA", "QUIT")
dialogue("data-before-rcpt", HELO, FROM, "DATA", "QUIT")
dialogue("data-with-arg", HELO, FROM, TO, "DATA now", "DATA x", "DATA",
         message("x"))
dialogue(
    "data-plain",
    HELO,
    PLAIN,
    TO,
    "DATA",
    message("Subject: hi", "", "Hello."),
    "QUIT",
)
dialogue(
    "data-envelope-reported",
    EHLO,
    FROM + " BODY=8BITMIME SIZE=100",
    TO,
    "RCPT TO:<second@example.org>",
    "DATA",
    message("Subject: hi", "", "Hello."),
    "QUIT",
)
dialogue(
    "data-two-messages",
    EHLO,
    FROM,
    TO,
    "DATA",
    message("one"),
    "RCPT TO:<x@example.org>",
    "MAIL FROM:<second@example.com>",
    "RCPT TO:<x@example.org>",
    "DATA",
    message("two"),
)
dialogue(
    "data-dot-stuffing",
    HELO,
    FROM,
    TO,
    "DATA",
    message("..leading dot", "...", "..", "a.b", " .x", ".x", "end."),
)
dialogue("data-dot-stuffing-first-line", HELO, FROM, TO, "DATA", message(".."))
dialogue(
    "data-bare-lf-and-cr",
    HELO,
    FROM,
    TO,
    "DATA",
    raw(b"a\nb\rc\r\n\r\n..x\n.\nstill data\r.\rmore\r\n.\r\n"),
)
dialogue("data-empty-smtplib-style", HELO, FROM, TO, "DATA", raw(b"\r\n.\r\n"),
         "QUIT")
dialogue("data-blank-lines", HELO, FROM, TO, "DATA", message("", "", ""))
dialogue("data-no-header-separator", HELO, FROM, TO, "DATA",
         message("just a body line"))
dialogue("data-eight-bit", HELO, FROM, TO, "DATA",
         message(b"Subject: \xff\xfe", b"", b"caf\xc3\xa9 \x80"))
dialogue("data-utf8", HELO, FROM, TO, "DATA",
         message("Subject: café", "", "Grüße"), config="decode")
dialogue("data-decoded", HELO, FROM, TO, "DATA",
         message("Subject: x", "", "..dot", "body"), config="decode")
dialogue("data-long-line", HELO, PLAIN, TO, "DATA", message("x" * 5000))
dialogue("data-looks-like-commands", HELO, FROM, TO, "DATA",
         message("QUIT", "RSET", "MAIL FROM:<evil@example.com>"), "NOOP")
dialogue("data-eof-inside", HELO, FROM, TO, "DATA", raw(b"unfinished\r\n", 0))
dialogue(
    "data-size-limit-exact",
    EHLO,
    FROM,
    TO,
    "DATA",
    message("x" * 100),
    FROM,
    TO,
    "DATA",
    message("x" * 48, "y" * 50),
    config="small",
)
dialogue("data-size-limit-exceeded", EHLO, FROM, TO, "DATA", message("x" * 101),
         config="small")
dialogue("data-size-limit-exceeded-big", EHLO, FROM + " SIZE=50", TO, "DATA",
         message(*["line %03d" % i for i in range(200)]), config="small")
dialogue("data-no-limit", EHLO, PLAIN, TO, "DATA", message("x" * 1000),
         config="nolimit")

# -- pipelining ---------------------------------------------------------------

dialogue(
    "pipelined-transaction",
    EHLO,
    raw(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n"
        b"RCPT TO:<c@example.org>\r\nDATA\r\n", 4),
    raw(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n", 2),
)
dialogue(
    "pipelined-errors",
    raw(b"NOOP\r\nFOO\r\nMAIL FROM:<a@b>\r\nHELO x\r\nRCPT TO:<c@d>\r\n"
        b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA x\r\nDATA\r\n", 9),
    message("ok"),
)
dialogue(
    "pipelined-command-and-data-split",
    HELO,
    FROM,
    TO,
    raw(b"DATA\r\nSubject: s\r\n\r\nbo", 1),
    raw(b"dy\r\n.", 0),
    raw(b"\r\nNOOP\r\n", 2),
)
dialogue("pipelined-quit-then-more", HELO, raw(b"QUIT\r\nNOOP\r\n", 1))

# -- input split across segments ------------------------------------------------


def _bytes_of(text):
    return [raw(bytes([b]), 0) for b in text]


dialogue(
    "split-byte-by-byte",
    *_bytes_of(b"HELO client.example\r"),
    raw(b"\n"),
    *_bytes_of(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r"),
    raw(b"\n", 3),
    *_bytes_of(b"Subject: x\r\n\r\n..dot\r\n\r\n."),
    raw(b"\r\n"),
    "QUIT",
)
dialogue(
    "split-long-line",
    raw(b"HELO " + b"a" * 300, 0),
    raw(b"b" * 300, 0),
    raw(b"\r\n"),
    raw(b"NOOP " + b"x" * 400, 0),
    raw(b"\r\n"),
    "NOOP",
)
dialogue(
    "split-size-limit",
    EHLO, FROM, TO, "DATA",
    raw(b"x" * 60, 0), raw(b"y" * 40, 0), raw(b"\r\n.\r\n"),
    FROM, TO, "DATA",
    raw(b"x" * 60, 0), raw(b"y" * 41, 0), raw(b"\r\n.\r\n"),
    config="small",
)
dialogue(
    "data-large",
    EHLO, FROM, TO, "DATA",
    message(*[("." if i % 7 == 0 else "") + "line %06d " % i + "z" * 60
              for i in range(5000)]),
    "QUIT",
)
dialogue(
    "data-large",
    EHLO, FROM, TO, "DATA",
    message(*["ligne %06d é" % i for i in range(5000)]),
    config="decode",
)

# -- more greeting, parameter and encoding cases --------------------------------

dialogue("ehlo-retry-after-501", "EHLO", EHLO, FROM + " SIZE=10")
dialogue("helo-then-ehlo-keeps-helo-mode", HELO, EHLO, FROM + " SIZE=10", FROM)
dialogue("helo-non-ascii-arg", "HELO jörg.example", "EHLO zoë.example", "QUIT")
dialogue("vrfy-non-ascii", "VRFY <jörg@example.com>", "QUIT")
dialogue(
    "non-ascii-verb-with-smtputf8",
    EHLO, FROM + " SMTPUTF8", "ÜBER alles", 'VRFY ""', "HELP ÄRGER", TO, "DATA",
    message("Subject: grüße", "", b"\xff"),
    config="utf8",
)
dialogue("help", EHLO, "HELP", "HELP MAIL", "HELP BDAT", config="utf8")
dialogue("mail-body-7bit-refused", EHLO, FROM + " BODY=7BIT", FROM,
         config="decode")

# -- servers started through the command line ----------------------------------

for _cfg in ("cli", "cli-u", "cli-s", "cli-us"):
    dialogue("ehlo", EHLO, "HELP MAIL", long_mail(548), "RSET", long_mail(549),
             config=_cfg)
    dialogue(
        "transaction",
        EHLO,
        FROM + " SIZE=150 BODY=8BITMIME",
        "RSET",
        FROM + " SMTPUTF8",
        "RSET",
        "MAIL FROM:<jörg@example.com> SIZE=1000",
        TO,
        "DATA",
        message("Subject: t", "", "..body"),
        PLAIN,
        TO,
        "DATA",
        # 552 with a size limit; the dialogue ends there (CPython would
        # swallow any further command as message data).
        message("x" * 2500),
        config=_cfg,
    )

# -- CPython defects smtpd_compat fixes (only smtpd_compat is run) -------------

_FIX = "CPython defect fixed by smtpd_compat: "
dialogue(
    "fix-552-leaves-data-state",
    EHLO, FROM, TO, "DATA", message("x" * 101), FROM, "QUIT",
    config="small",
    expected_difference=_FIX + "after 552 CPython stays in DATA state and "
    "swallows the following commands as message data (item 1)",
    compat="220 250 250 250 354 552 250 221 EOF",
)
dialogue(
    "fix-empty-data",
    HELO, FROM, TO, "DATA", raw(b".\r\n"), "QUIT",
    expected_difference=_FIX + "a bare '.' right after 354 never ends the "
    "message in CPython (item 2)",
    compat="220 250 250 250 354 250 221 EOF",
)
dialogue(
    "fix-commands-after-quit",
    HELO,
    raw(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nQUIT\r\n"
        b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n", 3),
    expected_difference=_FIX + "CPython still runs commands pipelined after "
    "QUIT; the replies match, only the (unseen) delivery differs (item 3)",
    compat="220 250 250 250 221 EOF",
)
dialogue(
    "fix-non-utf8-command",
    HELO, raw(b"MAIL FROM:<caf\xe9@example.com>\r\n"), "NOOP",
    expected_difference=_FIX + "a non-UTF-8 command line drops the "
    "connection in CPython (item 8)",
    compat="220 250 500 250 EOF",
)
dialogue(
    "fix-non-ascii-echo",
    "ÉHLO x", "NOOP",
    expected_difference=_FIX + "echoing non-ASCII text in a reply without "
    "SMTPUTF8 drops the connection in CPython (item 9)",
    compat="220 500 250 EOF",
)
dialogue(
    "fix-non-ascii-echo-after-rset",
    EHLO, FROM + " SMTPUTF8", "ÜBER", "RSET", "ÜBER", "NOOP",
    config="utf8",
    expected_difference=_FIX + "after RSET the reply is ASCII-only again and "
    "the echo drops the connection in CPython (item 9)",
    compat="220 250 250 500 250 500 250 EOF",
)
dialogue(
    "fix-address-parser-indexerror",
    HELO, "MAIL FROM:<", "NOOP",
    expected_difference=_FIX + "the email address parser raises IndexError "
    "and CPython drops the connection (item 10)",
    compat="220 250 501 250 EOF",
)
dialogue(
    "fix-address-parser-headerparseerror",
    HELO, FROM, "RCPT TO:<a@@b>", "VRFY ;", "NOOP",
    expected_difference=_FIX + "the email address parser raises "
    "HeaderParseError and CPython drops the connection (item 10)",
    compat="220 250 250 501 502 250 EOF",
)
dialogue(
    "fix-size-superscript-digit",
    EHLO, FROM + " SIZE=²", "NOOP",
    expected_difference=_FIX + "str.isdigit() accepts '²' and int() then "
    "raises, dropping the connection (item 11)",
    compat="220 250 501 250 EOF",
)
dialogue(
    "fix-size-arabic-indic-digits",
    EHLO, FROM + " SIZE=١٠", "NOOP",
    expected_difference=_FIX + "CPython accepts non-ASCII digits as a SIZE "
    "value (item 11)",
    compat="220 250 501 250 EOF",
)
dialogue(
    "fix-size-without-value",
    EHLO, FROM + " SIZE", "NOOP",
    expected_difference=_FIX + "a bare SIZE keyword makes CPython call "
    "True.isdigit() (AttributeError) and drop the connection",
    compat="220 250 501 250 EOF",
)
dialogue(
    "fix-decode-data-non-utf8-body",
    HELO, FROM, TO, "DATA", message(b"caf\xe9"), "NOOP",
    config="decode",
    expected_difference=_FIX + "with decode_data=True a non-UTF-8 body drops "
    "the connection in CPython (item 13)",
    compat="220 250 250 250 354 5xx 250 EOF",
)
dialogue(
    "fix-unicode-verb-folding",
    "QUıT", "NOOP",
    expected_difference=_FIX + "'QUıT'.upper() == 'QUIT', so CPython runs "
    "a non-ASCII verb (item 14)",
    compat="220 500 250 EOF",
)
dialogue(
    "fix-rejected-rcpt-options-leak",
    EHLO, FROM, TO, TO + " NOTIFY=NEVER", "DATA", message("x"),
    expected_difference=_FIX + "a RCPT refused with 555 still overwrites "
    "rcpt_options, which reach process_message (item 6); the codes match, "
    "the sink's echo of rcpt_options differs",
    compat="220 250 250 250 555 354 250 EOF",
    compat_contains=b"('rcpt_options', [])])\r\n",
)
dialogue(
    "fix-bare-cr-in-address",
    HELO, raw(b"MAIL FROM:<a\r@example.com>\r\n"), "NOOP",
    expected_difference=_FIX + "CPython accepts a bare CR inside an address "
    "(item 15)",
    compat="220 250 501 250 EOF",
)
dialogue(
    "fix-bare-lf-echoed-in-reply",
    raw(b"NOOP\nNOOP\r\n"), "QUIT",
    expected_difference=_FIX + "CPython echoes a bare LF of an unknown verb "
    "raw into its 500 reply; smtpd_compat shows it as \\n",
    compat="220 500 221 EOF",
    compat_contains=b'500 Error: command "NOOP\\nNOOP" not recognized\r\n',
)
dialogue(
    "fix-bare-cr-echoed-in-reply",
    raw(b"NO\rOP\r\n"), "QUIT",
    expected_difference=_FIX + "CPython echoes a bare CR raw into its 500 "
    "reply; smtpd_compat shows it as \\r",
    compat="220 500 221 EOF",
    compat_contains=b'500 Error: command "NO\\rOP" not recognized\r\n',
)
dialogue(
    "fix-empty-data-pipelined",
    HELO, FROM, TO, raw(b"DATA\r\n.\r\n", 2), "QUIT",
    expected_difference=_FIX + "DATA and the bare '.' in one segment: the "
    "message never ends in CPython (item 2)",
    compat="220 250 250 250 354 250 221 EOF",
)
dialogue(
    "fix-control-characters-echoed-in-reply",
    raw(b"NOOP\x00\r\n"), raw(b"\x00\r\n"), raw(b"\x1b[2J\x7f\r\n"), "QUIT",
    expected_difference=_FIX + "CPython echoes NUL, ESC and DEL raw into its "
    "500 reply; RFC 5321 reply text is printable ASCII and tab (issue 10, item 12)",
    compat="220 500 500 500 221 EOF",
    compat_contains=b'500 Error: command "NOOP\\x00" not recognized\r\n'
    b'500 Error: command "\\x00" not recognized\r\n'
    b'500 Error: command "\\x1b[2J\\x7f" not recognized\r\n',
)
dialogue(
    "fix-control-character-in-address",
    HELO, raw(b"MAIL FROM:<ceo\x00@victim.example>\r\n"), FROM,
    raw(b"RCPT TO:<a\x1b@example.org>\r\n"), raw(b"VRFY <a\x00b>\r\n"), "QUIT",
    expected_difference=_FIX + "CPython accepts a NUL or ESC inside an address "
    "and relays it (issue 10, item 13)",
    compat="220 250 501 250 501 501 221 EOF",
)
dialogue(
    "fix-http-request",
    raw(b"POST / HTTP/1.1\r\nHost: mail.example\r\n\r\nHELO x\r\n"),
    expected_difference="smtpd_compat ends a session that starts with an HTTP "
    "request, as Postfix does (issue 10, item 14)",
    compat="220 221 EOF",
)
dialogue(
    "fix-default-size-limit",
    EHLO, FROM + " SIZE=1000000000000000", FROM + " SIZE=33554432", "QUIT",
    config="cli-default",
    expected_difference="without -s, smtpd's CLI took messages of any size "
    "although its usage text says -s defaults to 33554432 (issue 10, item 11)",
    compat="220 250 552 250 221 EOF",
    compat_contains=b"250-SIZE 33554432\r\n",
)
