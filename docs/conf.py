"""Sphinx configuration of the smtpd_compat documentation site.

Built by ``tox -e docs`` with warnings as errors and nitpicky references.
Nothing is fetched at build time: no intersphinx inventories, no remote
images; the benchmark figures are committed files under ``_static/``.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

from smtpd_compat._version import VERSION  # noqa: E402  (the installed package)

project = "smtpd_compat"
author = "the smtpd_compat authors"
copyright = "the smtpd_compat authors; PSF-2.0"
release = VERSION
version = VERSION

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the "Attributes:" sections of the docstrings
    "myst_parser",
    "smtpd_compat_docs",  # docs/_ext: the command line page and link fixes
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = []

# -- references ------------------------------------------------------------

# Every reference must resolve; only names of other projects, which would
# need an intersphinx inventory fetched at build time, are let through.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(asyncore|asynchat|socket|ssl|smtplib|email|concurrent|threading"
               r"|typing|collections|io|pytest|_pytest)(\..*)?"),
    (r"py:class", r"(bytes|str|int|float|bool|list|dict|tuple|type|object"
                  r"|Any|Optional|Union|List|Dict|Tuple|Callable|Collection"
                  r"|Iterator|TimeoutError|OSError|NoReturn|None)"),
    (r"py:exc", r"(TimeoutError|OSError|TypeError|RuntimeError|ValueError"
                r"|NotImplementedError|DeprecationWarning)"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
add_module_names = False

# -- Markdown (MyST) ---------------------------------------------------------

myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

# -- HTML ----------------------------------------------------------------------

html_theme = "furo"
html_title = "smtpd_compat"
html_static_path = ["_static"]
html_css_files = ["site.css"]
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": True,
}

napoleon_google_docstring = True
napoleon_numpy_docstring = False
