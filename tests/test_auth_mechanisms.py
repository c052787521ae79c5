"""AUTH mechanisms without sockets: PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195).

Each response is fed whole and, where a mechanism reads several lines, one
line at a time; trailing data after a valid response must not be taken.
"""

import base64
import hmac

import pytest

from smtpd_compat import _auth
from smtpd_compat._auth import (
    Cancelled,
    CramResponse,
    Credentials,
    Exchange,
    Malformed,
    decode_response,
    loggable,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- base64 responses -----------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("", b""),
    ("YQ==", b"a"),
    ("YWI=", b"ab"),
    ("YWJj", b"abc"),
    (b64(b"\0bob\0secret"), b"\0bob\0secret"),
    (b64(b"x" * 9000), b"x" * 9000),
], ids=["empty", "pad2", "pad1", "nopad", "plain", "long"])
def test_decode_response_takes_canonical_base64(text, expected):
    assert decode_response(text) == expected


@pytest.mark.parametrize("text", [
    "YQ", "YQ=", "YQ===", "Y Q==", " YQ==", "YQ== ", "YQ==YQ==", "YQ==\t",
    "Y@Q=", "=", "==", "ÿQ==", "YQ==\r", "*x", "**",
], ids=["nopad", "short-pad", "long-pad", "inner-blank", "leading-blank",
        "trailing-blank", "trailing-data", "trailing-tab", "bad-char", "lone-equals",
        "equals2", "non-ascii", "trailing-cr", "star-x", "star-star"])
def test_decode_response_refuses_anything_else(text):
    with pytest.raises(Malformed):
        decode_response(text)


def test_star_cancels():
    with pytest.raises(Cancelled):
        decode_response("*")
    with pytest.raises(Cancelled):
        decode_response("*", initial=True)


def test_equals_is_the_empty_initial_response_only():
    assert decode_response("=", initial=True) == b""
    with pytest.raises(Malformed):
        decode_response("=")


# -- PLAIN ----------------------------------------------------------------------

@pytest.mark.parametrize("message, expected", [
    (b"\0bob\0secret", Credentials("bob", "secret", "")),
    (b"bob\0bob\0secret", Credentials("bob", "secret", "bob")),
    (b"admin\0bob\0s", Credentials("bob", "s", "admin")),
    (b"\0bob\0", Credentials("bob", "", "")),
    ("\0j\u00f6rg\0p\u00e4ss".encode("utf-8"), Credentials("j\u00f6rg", "p\u00e4ss", "")),
    (b"\0bob\0pass word:with colon", Credentials("bob", "pass word:with colon", "")),
], ids=["no-authzid", "same-authzid", "other-authzid", "empty-password", "utf8",
        "blank-in-password"])
def test_parse_plain(message, expected):
    assert _auth.parse_plain(message) == expected


@pytest.mark.parametrize("message", [
    b"", b"bob", b"\0bob", b"\0\0secret", b"\0bob\0secret\0", b"\0bob\0secret\0trailing",
    b"\0b\xffob\0secret", b"\0bob\0s\xe9cret",
], ids=["empty", "no-nul", "one-nul", "empty-login", "trailing-nul", "trailing-data",
        "bad-utf8-login", "bad-utf8-password"])
def test_parse_plain_refuses(message):
    with pytest.raises(Malformed):
        _auth.parse_plain(message)


def test_plain_with_initial_response_is_done_at_once():
    exchange = Exchange("PLAIN", b64(b"\0bob\0secret"))
    assert exchange.begin() == Credentials("bob", "secret")


def test_plain_without_initial_response_asks_with_an_empty_challenge():
    exchange = Exchange("PLAIN")
    assert exchange.begin() == ""
    assert exchange.feed(b64(b"\0bob\0secret")) == Credentials("bob", "secret")


def test_plain_empty_initial_response_is_refused():
    with pytest.raises(Malformed):
        Exchange("PLAIN", "=").begin()


# -- LOGIN ----------------------------------------------------------------------

def test_login_asks_username_then_password_in_those_words():
    exchange = Exchange("LOGIN")
    assert exchange.begin() == "VXNlcm5hbWU6"  # base64 of "Username:"
    assert exchange.feed(b64(b"bob")) == "UGFzc3dvcmQ6"  # "Password:"
    assert exchange.feed(b64(b"secret")) == Credentials("bob", "secret")


def test_login_initial_response_is_the_username():
    exchange = Exchange("LOGIN", b64(b"bob"))
    assert exchange.begin() == "UGFzc3dvcmQ6"
    assert exchange.feed(b64(b"secret")) == Credentials("bob", "secret")


@pytest.mark.parametrize("user, password", [
    (b"", b"secret"), (b"b\xffob", b"secret"), (b"bob", b"\xff"),
], ids=["empty-user", "bad-utf8-user", "bad-utf8-password"])
def test_login_refuses(user, password):
    exchange = Exchange("LOGIN")
    exchange.begin()
    exchange.feed(b64(user))
    with pytest.raises(Malformed):
        exchange.feed(b64(password))


def test_login_cancel_at_each_step():
    exchange = Exchange("LOGIN")
    exchange.begin()
    with pytest.raises(Cancelled):
        exchange.feed("*")
    exchange = Exchange("LOGIN")
    exchange.begin()
    exchange.feed(b64(b"bob"))
    with pytest.raises(Cancelled):
        exchange.feed("*")


def test_feed_before_begin_is_a_programming_error():
    with pytest.raises(RuntimeError):
        Exchange("LOGIN").feed("")


def test_unknown_mechanism_is_a_programming_error():
    with pytest.raises(ValueError):
        Exchange("DIGEST-MD5")


# -- CRAM-MD5 -------------------------------------------------------------------

# RFC 2195's own example.
RFC_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
RFC_RESPONSE = "tim b913a602c7eda7a495b4e6e7334d3890"


def test_cram_md5_digest_is_rfc_2195s_example():
    assert _auth.cram_md5_digest("tanstaaftanstaaf", RFC_CHALLENGE) == RFC_RESPONSE.split()[1]


def test_cram_md5_exchange():
    exchange = Exchange("CRAM-MD5", None, RFC_CHALLENGE)
    challenge = exchange.begin()
    assert base64.b64decode(challenge) == RFC_CHALLENGE
    outcome = exchange.feed(b64(RFC_RESPONSE.encode()))
    assert outcome == CramResponse("tim", RFC_CHALLENGE, RFC_RESPONSE.split()[1])
    assert _auth.cram_md5_matches("tanstaaftanstaaf", outcome)
    assert not _auth.cram_md5_matches("tanstaaf", outcome)
    assert not _auth.cram_md5_matches(None, outcome)


def test_cram_md5_digest_in_upper_case_is_taken():
    exchange = Exchange("CRAM-MD5", None, RFC_CHALLENGE)
    exchange.begin()
    outcome = exchange.feed(b64(RFC_RESPONSE.upper().replace("TIM", "tim").encode()))
    assert _auth.cram_md5_matches("tanstaaftanstaaf", outcome)


def test_cram_md5_login_with_blank():
    digest = _auth.cram_md5_digest("pw", b"<c>")
    exchange = Exchange("CRAM-MD5", None, b"<c>")
    exchange.begin()
    assert exchange.feed(b64(b"jane doe " + digest.encode())).login == "jane doe"


@pytest.mark.parametrize("response", [
    b"tim", b"tim ", b" b913a602c7eda7a495b4e6e7334d3890",
    b"tim b913a602c7eda7a495b4e6e7334d389", b"tim b913a602c7eda7a495b4e6e7334d38900",
    b"tim b913a602c7eda7a495b4e6e7334d3890 ", b"tim b913a602c7eda7a495b4e6e7334d389g",
    b"t\xffm b913a602c7eda7a495b4e6e7334d3890",
], ids=["no-digest", "empty-digest", "no-login", "short", "long", "trailing-blank",
        "not-hex", "bad-utf8"])
def test_cram_md5_refuses(response):
    exchange = Exchange("CRAM-MD5", None, RFC_CHALLENGE)
    exchange.begin()
    with pytest.raises(Malformed):
        exchange.feed(b64(response))


def test_cram_md5_takes_no_initial_response():
    assert not _auth.accepts_initial_response("CRAM-MD5")
    assert _auth.accepts_initial_response("PLAIN")
    with pytest.raises(Malformed):
        Exchange("CRAM-MD5", b64(b"x"), RFC_CHALLENGE).begin()


def test_challenges_differ_and_name_the_host():
    first, second = _auth.new_challenge("mx.example"), _auth.new_challenge("mx.example")
    assert first != second
    assert first.startswith(b"<") and first.endswith(b"@mx.example>")


def test_digest_matches_hmac_md5():
    assert _auth.cram_md5_digest("p\u00e4ss", b"<x>") == hmac.new(
        "p\u00e4ss".encode(), b"<x>", "md5").hexdigest()


# -- what DEBUGSTREAM may show ------------------------------------------------------

@pytest.mark.parametrize("line, continuation, expected", [
    (b"AUTH PLAIN AGJvYgBzZWNyZXQ=", False, b"AUTH PLAIN <hidden>"),
    ("auth login Ym9i", False, "auth login <hidden>"),
    ("AUTH  PLAIN   AGJvYgBzZWNyZXQ=", False, "AUTH  PLAIN   <hidden>"),
    (b"AUTH PLAIN", False, b"AUTH PLAIN"),
    (b"AUTH PLAIN ", False, b"AUTH PLAIN "),
    (b"AUTH CRAM-MD5", False, b"AUTH CRAM-MD5"),
    (b"MAIL FROM:<a@b> AUTH=<>", False, b"MAIL FROM:<a@b> AUTH=<>"),
    (b"EHLO AUTH PLAIN x", False, b"EHLO AUTH PLAIN x"),
    (b"c2VjcmV0", True, b"<hidden>"),
    ("c2VjcmV0", True, "<hidden>"),
    (b"\xff\xfe", False, b"\xff\xfe"),
    (b"AUTH PLAIN \xffsecret", False, b"AUTH PLAIN <hidden>"),
], ids=["plain-bytes", "login-text", "blanks", "no-response", "trailing-blank",
        "cram", "mail", "other-verb", "continuation-bytes", "continuation-text",
        "undecodable", "undecodable-secret"])
def test_loggable_hides_responses(line, continuation, expected):
    assert loggable(line, continuation) == expected


# -- the MAIL FROM AUTH= parameter ------------------------------------------------

@pytest.mark.parametrize("value, ok", [
    ("<>", True), ("BOB@EXAMPLE.ORG", True), ("E+3DMC2@EXAMPLE.ORG", True),
    (True, False), ("", False), ("A+3", False), ("A+ZZ", False), ("A=B", False),
    ("A B", False), ("<BOB>", True),
], ids=["null", "addr", "xtext-hex", "no-value", "empty", "short-hex", "bad-hex",
        "equals", "blank", "angle-is-xtext"])
def test_auth_parameter(value, ok):
    assert _auth.is_auth_parameter(value) is ok
