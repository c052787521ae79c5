"""Pure parsers for DSN parameters (RFC 3461) and bare line endings."""

import pytest

from smtpd_compat import _parsing

XTEXT = [
    ("abc", True), ("a+2Bb", True), ("+3D", True), ("!~", True),
    ("", False), ("a+2b", False), ("a+2", False), ("a=b", False), ("a b", False),
    ("a+b", False), ("\u00e9", False), ("a\tb", False),
]


@pytest.mark.parametrize("text, valid", XTEXT, ids=[repr(t) for t, _ in XTEXT])
def test_xtext_syntax(text, valid):
    assert _parsing.is_xtext(text) is valid


def test_xtext_length_limit_and_non_string():
    assert _parsing.is_xtext("x" * 100, 100)
    assert not _parsing.is_xtext("x" * 101, 100)
    assert not _parsing.is_xtext(True)


@pytest.mark.parametrize("text, decoded", [
    ("abc", "abc"), ("a+2Bb", "a+b"), ("+3D+2B", "=+"), ("x+20y", "x y"),
])
def test_xtext_decoding(text, decoded):
    assert _parsing.decode_xtext(text) == decoded


@pytest.mark.parametrize("value, valid", [("FULL", True), ("HDRS", True), ("full", False),
                                          ("NONE", False), (True, False)])
def test_ret(value, valid):
    assert _parsing.is_dsn_ret(value) is valid


@pytest.mark.parametrize("value, events", [
    ("NEVER", ("NEVER",)),
    ("SUCCESS", ("SUCCESS",)),
    ("SUCCESS,FAILURE,DELAY", ("SUCCESS", "FAILURE", "DELAY")),
    ("DELAY,SUCCESS", ("DELAY", "SUCCESS")),
    ("NEVER,SUCCESS", None), ("SUCCESS,SUCCESS", None), ("SUCCESS,", None),
    ("", None), ("SOMETIMES", None), (True, None),
])
def test_notify(value, events):
    assert _parsing.parse_dsn_notify(value) == events


@pytest.mark.parametrize("value, parsed", [
    ("rfc822;a@example.com", ("rfc822", "a@example.com")),
    ("rfc822;a+2Bb@example.com", ("rfc822", "a+b@example.com")),
    ("utf-8;x+40y", ("utf-8", "x@y")),
    ("rfc822", None), (";a@b", None), ("rfc 822;a@b", None), ("rfc822;", None),
    ("rfc822;a+2b", None), (True, None),
])
def test_orcpt(value, parsed):
    assert _parsing.parse_dsn_orcpt(value) == parsed


def test_orcpt_length_limit():
    assert _parsing.parse_dsn_orcpt("rfc822;" + "x" * 493, 500) is not None
    assert _parsing.parse_dsn_orcpt("rfc822;" + "x" * 494, 500) is None


BARE = [
    (b"", False), (b"a\r\nb\r\n", False), (b"a\nb", True), (b"a\rb", True),
    (b"a\r\r\n", True), (b"a\n\r", True), (b"\r", True), (b"\n", True), (b"\r\n", False),
    (b"x\n.\nMAIL", True), (b"x\r.\r\n", True), (b"x\n.\r\n", True),
]


@pytest.mark.parametrize("data, bare", BARE, ids=[repr(d) for d, _ in BARE])
def test_bare_line_endings_in_bytes_and_text(data, bare):
    assert _parsing.has_bare_line_ending(data) is bare
    assert _parsing.has_bare_line_ending(data.decode()) is bare


def test_to_crlf_leaves_no_bare_line_ending_and_no_new_end_of_data():
    for data, _ in BARE:
        normalised = _parsing.to_crlf(data)
        assert not _parsing.has_bare_line_ending(normalised)
