"""Unit tests of the pure wire-format functions: no sockets."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpd_compat import _parsing


@pytest.mark.parametrize("line, expected", [
    ("HELO example", ("HELO", "example")),
    ("helo   example  ", ("HELO", "example")),
    ("QUIT", ("QUIT", None)),
    ("NOOP ", ("NOOP", "")),
    ("MAIL FROM:<a@b> SIZE=1", ("MAIL", "FROM:<a@b> SIZE=1")),
    # RFC 5321 verbs are ASCII; Unicode case mapping must not make them up.
    ("QUıT", ("QUıT", None)),
    ("ſend x", ("ſend", "x")),
    ("", ("", None)),
], ids=["helo", "lowercase-and-blanks", "no-arg", "empty-arg", "mail",
        "dotless-i", "long-s", "empty"])
def test_split_command(line, expected):
    assert _parsing.split_command(line) == expected


@pytest.mark.parametrize("keyword, arg, expected", [
    ("FROM:", "FROM:<a@b>", "<a@b>"),
    ("FROM:", "from:   <a@b>", "<a@b>"),
    ("TO:", "FROM:<a@b>", ""),
    ("TO:", "TO", ""),
])
def test_strip_keyword(keyword, arg, expected):
    assert _parsing.strip_keyword(keyword, arg) == expected


@pytest.mark.parametrize("arg, expected", [
    ("<a@example.com>", ("a@example.com", "")),
    ("<a@example.com> SIZE=20", ("a@example.com", "SIZE=20")),
    ("a@example.com", ("a@example.com", "")),
    ("eggs@example", ("eggs@example", "")),
    ("<>", ("<>", "")),
    ("<a@b", ("a@b", "")),
    ("a", ("a", "")),
    ("<@r1,@r2:a@b>", ("a@b", "")),
    ("<a(comment)@b>", ("a@b", "")),
    ("", ("", "")),
    # The email parser raises on these; smtpd dropped the connection.
    ("<", ("", "")),
    ("< >", ("", "")),
    ("<a@b.>", ("", "")),
    ("<a@@b>", ("", "")),
    ("<a@b@c>", ("", "")),
    ("<@>", ("", "")),
    ("@", ("", "")),
    ("(", ("", "")),
    ("<<a@b>>", ("", "")),
    ("x@y@z", ("", "")),
    # The parser returns these, then raises when their addr_spec is read.
    ('<"', ("", "")),
    ('< \t"', ("", "")),
    ("< b\xe9@[", ("", "")),  # AttributeError on 3.8
    ("< ?=@[>", ("", "")),
    # A bare CR or LF would be injected into logs or an upstream command.
    ("<a\r@b>", ("", "")),
    ("<a\n@b>", ("", "")),
    # RFC 5321's address grammar has no control characters at all.
    ("<ceo\x00@victim.example>", ("", "")),
    ("<ceo@victim.example\x00>", ("", "")),
    ("ceo\x00@victim.example", ("", "")),
    ("<a\x1b[31m@b>", ("", "")),
    ("<a\x7f@b>", ("", "")),
    ('<"a\tb"@c>', ("", "")),
    ('<"a\x00b"@c>', ("", "")),
    ("<@r\x01:a@b>", ("a@b", "")),  # the source route is dropped, as smtpd did
    ("<a@b> X=\x00", ("a@b", "X=\x00")),  # parameters are checked on their own
], ids=lambda value: repr(value))
def test_parse_address(arg, expected):
    assert _parsing.parse_address(arg) == expected


_ADDRESS_PIECES = st.sampled_from([
    "a", "Z9", "b.c", ".", "..", "@", "<", ">", " ", "\t", "(x)", '"q"', "[1.2.3.4]",
    "!#$%&'*+/=?^_`{|}~-", "é", ",", ":", ";", "\\", "SIZE=1", "\r\n", "\x1c", "\u3000",
    "\x00", "\x1b", "\x7f", "\x01",
])


@given(st.lists(_ADDRESS_PIECES, max_size=12).map("".join))
def test_parse_address_matches_the_email_parser(arg):
    # The fast path for <local@domain> must answer exactly what the email
    # parser answers, for the inputs it takes and the near misses it leaves.
    assert _parsing.parse_address(arg) == _parsing._parse_address_with_email_parser(arg)


@given(st.from_regex(r"<[a-z.!#'+=`{}~-]{1,8}@[a-z0-9.-]{1,8}>[ \t\r\na-zA-Z=0-9>()]{0,6}",
                     fullmatch=True))
def test_plain_angle_addresses_match_the_email_parser(arg):
    assert _parsing.parse_address(arg) == _parsing._parse_address_with_email_parser(arg)


@pytest.mark.parametrize("params, expected", [
    ([], {}),
    (["SIZE=20", "SMTPUTF8"], {"SIZE": "20", "SMTPUTF8": True}),
    (["BODY=8BITMIME"], {"BODY": "8BITMIME"}),
    (["SIZE="], None),
    (["=20"], None),
    (["SI-ZE=20"], None),
], ids=["none", "size-and-flag", "body", "empty-value", "no-keyword", "bad-keyword"])
def test_parse_parameters(params, expected):
    assert _parsing.parse_parameters(params) == expected


@pytest.mark.parametrize("value, expected", [
    ("0", True), ("12345", True), ("", False), (True, False),
    ("²", False), ("١٠", False), ("1a", False), ("-1", False),
], ids=["zero", "digits", "empty", "bare-SIZE", "superscript", "arabic-indic",
        "letters", "negative"])
def test_is_size_value(value, expected):
    assert _parsing.is_size_value(value) is expected


def _unstuff_by_lines(data, crlf, dot, newline):
    """smtpd's own per-line algorithm, the reference for unstuff()."""
    lines = []
    for text in data.split(crlf):
        lines.append(text[1:] if text[:1] == dot else text)
    return newline.join(lines)


@pytest.mark.parametrize("data, expected", [
    (b"", b""),
    (b"a\r\nb", b"a\nb"),
    (b"..a\r\n.b\r\n..", b".a\nb\n."),
    (b"a\nb\rc\r\n\r\n..x", b"a\nb\rc\n\n.x"),
    (b"\r\n.\r\n.", b"\n\n"),
    (b"a\r\r\n.\nb", b"a\r\n\nb"),
], ids=["empty", "crlf", "dots", "bare-cr-lf-kept", "lone-dots", "cr-before-crlf"])
def test_unstuff_examples(data, expected):
    assert _parsing.unstuff(data) == expected
    assert _parsing.unstuff(data.decode()) == expected.decode()


@given(st.lists(st.sampled_from([b"\r\n", b".", b"\r", b"\n", b"a", b".."]), max_size=30))
def test_unstuff_matches_smtpd_line_loop(parts):
    data = b"".join(parts)
    assert _parsing.unstuff(data) == _unstuff_by_lines(data, b"\r\n", b".", b"\n")
    text = data.decode()
    assert _parsing.unstuff(text) == _unstuff_by_lines(text, "\r\n", ".", "\n")


@pytest.mark.parametrize("data, expected", [
    ("From: a\n\nbody", "From: a\nX-Peer: 1.2.3.4\n\nbody"),
    ("no blank line", "no blank line\nX-Peer: 1.2.3.4"),
    ("", "X-Peer: 1.2.3.4\n"),
    (b"From: a\n\nb\xff", b"From: a\nX-Peer: 1.2.3.4\n\nb\xff"),
], ids=["headers", "no-separator", "empty", "bytes"])
def test_insert_peer_header(data, expected):
    assert _parsing.insert_peer_header(data, "1.2.3.4") == expected


@pytest.mark.parametrize("text, expected", [
    ("plain", "plain"),
    ("a\r\nb", "a\\r\\nb"),
    ("a\nb", "a\\nb"),
    ("NOOP\x00", "NOOP\\x00"),
    ("\x1b[2J", "\\x1b[2J"),
    ("a\x7fb", "a\\x7fb"),
    ("\x01\x08\x0b\x0c\x1f", "\\x01\\x08\\x0b\\x0c\\x1f"),
    ("tab\tkept", "tab\tkept"),
    ("é\x80", "é\x80"),  # non-ASCII is escaped when the reply is encoded
], ids=repr)
def test_escape_for_reply(text, expected):
    assert _parsing.escape_for_reply(text) == expected


@given(st.text(alphabet=st.characters(max_codepoint=0x7f)))
def test_escaped_echo_is_reply_text(text):
    # RFC 5321: textstring = 1*(%d09 / %d32-126)
    assert all(c == "\t" or " " <= c <= "~" for c in _parsing.escape_for_reply(text))


@pytest.mark.parametrize("text, expected", [
    ("a@b", False), ("", False), ("é@ü", False), ("a\x00", True), ("\t", True),
    ("\x7f", True), ("\x1f", True), ("\x80", False),
], ids=repr)
def test_has_address_control(text, expected):
    assert _parsing.has_address_control(text) is expected


@pytest.mark.parametrize("data, expected", [
    (b"a\nb", b"a\r\nb"),
    (b"a\rb\r\nc", b"a\r\nb\r\nc"),
    (b"a\r\n", b"a\r\n"),
])
def test_to_crlf(data, expected):
    assert _parsing.to_crlf(data) == expected


@pytest.mark.parametrize("spec, expected", [
    ("localhost:8025", ("localhost", 8025)),
    (":25", ("", 25)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("[::1]:8025", ("::1", 8025)),
    ("[fe80::1%eth0]:25", ("fe80::1%eth0", 25)),
])
def test_parse_host_port(spec, expected):
    assert _parsing.parse_host_port(spec) == expected


@pytest.mark.parametrize("spec, reason", [
    ("localhost", "expected host:port"),
    ("localhost:x", "port is not a number"),
    ("localhost:70000", "out of range"),
    ("localhost:-1", "out of range"),
    ("[::1]8025", "expected [address]:port"),
    ("[::1", "expected [address]:port"),
])
def test_parse_host_port_errors(spec, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        _parsing.parse_host_port(spec)
