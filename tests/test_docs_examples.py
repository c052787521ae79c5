"""Every example of the documentation site runs, so none can go stale.

The pages under ``docs/cookbook/`` and ``docs/porting/`` (and the site's
front page and the modern ESMTP page) promise complete examples:

- each bare ```` ```python ```` block, and each ```` ```{code-block} python ````
  whose ``:caption:`` starts with "smtpd_compat", is run on its own, in a fresh
  interpreter (``python -bb``) in an empty directory, against the
  checkout's package; it must exit with status 0 within the time limit.
  A block that defines ``test_`` functions is run by pytest instead, with
  the smtpd_compat plugin's fixtures.  Code of other libraries, shown for
  comparison, is a ``code-block`` with another caption and is not run;
- each command line that runs smtpd_compat (``python -m smtpd_compat``,
  ``smtpd-compat``, ``python -m smtpd``) in a ``sh``, ``make`` or ``yaml``
  block must be one that the command line parser accepts, with a server
  class that exists when it names a built-in one, and that passes every
  check made before the port is bound (settings a class needs, AUTH that
  could be used, TLS files that load: made from the test run's certificate).
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

import pytest

from smtpd_compat import _cli
from tests import tls_support as ts

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted([DOCS / "index.md", DOCS / "modern-esmtp.md"]
               + list((DOCS / "cookbook").glob("*.md"))
               + list((DOCS / "porting").glob("*.md")))
RUN_TIMEOUT = 60  # seconds for one example

_FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                    re.M | re.S)
_COMMAND = re.compile(
    r"(?:python3?(?:\.\d+)? -m smtpd_compat|(?<!install )smtpd-compat"
    r"|python3?(?:\.\d+)? -m smtpd)"
    r"(?P<args>(?: +(?:[^\s\"'&;|\\]+|'[^'\n]*'|\"[^\"\n]*\")+)*)")
SHELL_INFOS = {"sh", "shell", "console", "bash", "make", "makefile", "yaml"}


class Block(NamedTuple):
    page: str
    line: int
    info: str
    body: str

    def __str__(self) -> str:
        return "%s:%d" % (self.page, self.line)


def blocks(pages: List[Path]) -> List[Block]:
    """The fenced code blocks of *pages*, with the line each one starts on."""
    found = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(str(page.relative_to(ROOT)), line,
                               match.group("info").strip(), match.group("body")))
    return found


def commands(body: str) -> List[List[str]]:
    """The smtpd_compat command lines in a shell-like block, as argument lists."""
    return [shlex.split(match.group("args")) for match in _COMMAND.finditer(body)]


def runnable(block: Block) -> bool:
    """A bare python block, or a python code-block captioned "smtpd_compat..."."""
    if block.info == "python":
        return True
    if block.info != "{code-block} python":
        return False
    caption = re.search(r"^:caption: *(.*)$", block.body, re.M)
    return caption is not None and caption.group(1).startswith("smtpd_compat")


def code(block: Block) -> str:
    """The block's code, without the directive's ``:option:`` lines."""
    lines = block.body.splitlines(True)
    while lines and re.match(r":[\w-]+:", lines[0]):
        lines.pop(0)
    return "".join(lines)


ALL_BLOCKS = blocks(PAGES)
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if runnable(b)]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.info.lower() in SHELL_INFOS
                and commands(b.body)]


def test_the_pages_have_examples():
    assert len(PYTHON_BLOCKS) >= 8, [str(b) for b in PYTHON_BLOCKS]
    assert len(SHELL_BLOCKS) >= 4, [str(b) for b in SHELL_BLOCKS]


def _environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("PYTEST_ADDOPTS", None)
    return env


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=str)
def test_python_example_runs(block: Block, tmp_path: Path):
    source = code(block)
    is_test = re.search(r"^def test_", source, re.M) is not None
    script = tmp_path / ("test_example.py" if is_test else "example.py")
    script.write_text(source, encoding="utf-8")
    if is_test:
        command = [sys.executable, "-bb", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "-W", "error", str(script)]
    else:
        command = [sys.executable, "-bb", str(script)]
    done = subprocess.run(command, cwd=str(tmp_path), env=_environment(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=RUN_TIMEOUT, check=False)
    output = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, "%s failed (exit %d):\n%s" % (block, done.returncode, output)


# Files that command line options read, made (with this content) in an
# empty directory before an example's command line is parsed.
READ_FILES = {"--auth-file": "user:password\n"}


def _tls_file(option: str, argv: List[str]) -> bytes:
    """A PEM file for *option*: the key, the certificate, or both in one file."""
    leaf = ts.certificate()
    if option == "--tls-key":
        return leaf.private_key_pem.bytes()
    if "--tls-key" in argv:
        return leaf.cert_chain_pems[0].bytes()
    return leaf.private_key_and_cert_chain_pem.bytes()


def _make_read_files(argv: List[str], directory: Path) -> None:
    for option, value in zip(argv, argv[1:]):
        if option in READ_FILES:
            (directory / value).write_text(READ_FILES[option], encoding="utf-8")
        elif option in ("--tls-cert", "--tls-key"):
            (directory / value).write_bytes(_tls_file(option, argv))


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=str)
def test_command_line_example_is_accepted(block: Block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in commands(block.body):
        if any(arg in ("-h", "--help", "-V", "--version") for arg in argv):
            continue
        _make_read_files(argv, tmp_path)
        try:
            options = _cli.parseargs(argv)
        except SystemExit as exit:
            pytest.fail("%s: %r is refused (exit %s)" % (block, argv, exit.code))
        if "." in options.classname:
            continue  # the reader's own class
        try:
            # Everything main() checks before it binds: a documented
            # combination of options is one that serves.
            _cli.check_required_settings(_cli.server_class(options.classname), options)
            _cli.load_tls(options)
        except SystemExit as exit:
            pytest.fail("%s: %r is refused (exit %s)" % (block, argv, exit.code))


def test_commands_are_found():
    # the extraction itself: quoted, chained and continued command lines
    body = ('command: sh -c "pip install smtpd-compat && python -m smtpd_compat -n '
            '-c DebuggingServer 0.0.0.0:1025"\n'
            "\tpython3 -m smtpd -n -c DebuggingServer localhost:1025 &\n")
    assert commands(body) == [["-n", "-c", "DebuggingServer", "0.0.0.0:1025"],
                              ["-n", "-c", "DebuggingServer", "localhost:1025"]]
