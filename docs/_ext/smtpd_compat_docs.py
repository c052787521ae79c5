"""Sphinx extension for the smtpd_compat site.

``.. smtpd-compat-usage::`` shows what ``python -m smtpd_compat --help``
prints: the directive runs that very command, so the page and ``--help``
cannot drift apart.

``.. smtpd-compat-options::`` turns the same text into one ``.. option::``
entry per option (so pages can link to ``:option:`smtpd-compat --timeout```),
and warns (an error under ``-W``) when an option that the command line
parser accepts is missing from the text.
"""

import functools
import os
import re
import subprocess
import sys
from typing import List, Tuple

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

PROGRAM = "smtpd-compat"
_SIGNATURE = re.compile(r"^ {4}(-{1,2}[A-Za-z][-A-Za-z0-9]*)( [A-Za-z0-9|,.\[\]]+)?$")


@functools.lru_cache(maxsize=1)
def usage_text() -> str:
    """What ``python -m smtpd_compat --help`` prints (on stderr, exit status 0)."""
    done = subprocess.run([sys.executable, "-m", "smtpd_compat", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError("python -m smtpd_compat --help failed (%d): %s"
                           % (done.returncode, done.stderr))
    return done.stderr.rstrip("\n")


def parse_options(text: str) -> List[Tuple[List[str], List[str]]]:
    """The usage text's options: (signatures, description lines) in order.

    An option is one or more lines indented by four spaces that start with
    a dash (``    --size limit``, ``    -s limit``), then its description,
    indented by eight.
    """
    options: List[Tuple[List[str], List[str]]] = []
    signatures: List[str] = []
    description: List[str] = []
    for line in text.splitlines():
        match = _SIGNATURE.match(line)
        if match and not description:
            signatures.append(line.strip())
            continue
        if signatures and (line.startswith(" " * 8) or (not line.strip() and description)):
            description.append(line[8:])
            continue
        if signatures:
            options.append((signatures, description))
            signatures, description = [], []
            match = _SIGNATURE.match(line)
            if match:
                signatures.append(line.strip())
    if signatures:
        options.append((signatures, description))
    return options


def accepted_options() -> List[str]:
    """Every option the command line parser takes: ``-n``, ``--nosetuid``..."""
    from smtpd_compat import _cli

    short = ["-" + letter for letter in _cli.SHORT_OPTIONS if letter != ":"]
    long = ["--" + name.rstrip("=") for name in _cli.LONG_OPTIONS]
    return short + long


def _escaped(text: str) -> str:
    """*text* as plain reStructuredText; the usage text's `quotes' become “quotes”."""
    text = re.sub(r"`([^`']*)'", "\u201c\\1\u201d", text)
    for char in "\\`*_|":
        text = text.replace(char, "\\" + char)
    return text


class UsageDirective(SphinxDirective):
    """The ``--help`` text as a literal block."""

    has_content = False

    def run(self):
        text = usage_text()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


class OptionsDirective(SphinxDirective):
    """One ``.. option::`` per option of the ``--help`` text."""

    has_content = False

    def run(self):
        options = parse_options(usage_text())
        described = {signature.split()[0] for signatures, _ in options
                     for signature in signatures}
        for option in accepted_options():
            if option not in described:
                logger.warning("the command line takes %s but its --help text does "
                               "not describe it", option, location=self.get_location())
        rst = [".. program:: " + PROGRAM, ""]
        for signatures, description in options:
            rst.append(".. option:: " + ", ".join(signatures))
            rst.append("")
            rst.extend("   " + _escaped(line) if line.strip() else "" for line in description)
            rst.append("")
        container = nodes.container()
        self.state.nested_parse(StringList(rst, source="python -m smtpd_compat --help"),
                                self.content_offset, container)
        return container.children


# Markdown files of the repository that are pages of the site: a link to
# one of them from a page (relative to where the page's file lies) becomes
# a link to the page.
SITE_PAGES = {
    "Lib-compat-notes.md": "porting/compat-notes",
    "benchmarks/README.md": "performance",
    "docs/robustness.md": "robustness",
    "docs/testing.md": "testing",
    "docs/deployment.md": "deployment",
    "docs/haproxy.md": "haproxy",
}
_MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+\.md)(#[^)\s]*)?\)")


def rewrite_repository_links(app, docname: str, source: List[str]) -> None:
    """``source-read``: point links to the repository's Markdown files at their pages."""
    srcdir = os.path.abspath(str(app.srcdir))
    repository = os.path.dirname(srcdir)
    page_dir = os.path.dirname(os.path.join(srcdir, docname))

    def replace(match):
        target = os.path.normpath(os.path.join(page_dir, match.group(1)))
        page = SITE_PAGES.get(os.path.relpath(target, repository).replace(os.sep, "/"))
        if page is None:
            return match.group(0)
        relative = os.path.relpath(os.path.join(srcdir, page), page_dir).replace(os.sep, "/")
        return "](%s.md%s)" % (relative, match.group(2) or "")

    source[0] = _MARKDOWN_LINK.sub(replace, source[0])


def setup(app):
    app.connect("source-read", rewrite_repository_links)
    app.add_directive("smtpd-compat-usage", UsageDirective)
    app.add_directive("smtpd-compat-options", OptionsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
