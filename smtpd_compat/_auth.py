"""AUTH (RFC 4954): how a client logs in, and how its password is checked.

Off unless the server can check credentials: it has ``auth_users`` (login
to clear password) or overrides ``authenticate``.  Then EHLO offers
``AUTH PLAIN LOGIN`` (and ``CRAM-MD5`` when the server can look up clear
passwords: ``auth_users`` or an overridden ``auth_password``), over TLS
only unless ``auth_plaintext`` is set, as Postfix's ``smtpd_tls_auth_only``.

The first half of this module is pure: the three mechanisms (RFC 4616
PLAIN, LOGIN, RFC 2195 CRAM-MD5) as generators that yield challenges and
are sent the client's decoded responses, and the strict base64 decoding of
those responses.  The second half runs an exchange on a channel: the
``AUTH`` command, the continuation lines (the channel hands the next input
line to :class:`_ContinuationReader` instead of its command dispatcher),
and the server's verdict, which may come later through a Future.

Secrets never reach a log: the channel shows AUTH lines and continuation
lines to DEBUGSTREAM through :func:`loggable`, and nothing here logs more
than the login.
"""

import base64
import binascii
import concurrent.futures
import hmac
import logging
import re
import secrets
import time
from typing import Any, Dict, Generator, Iterable, List, NamedTuple, Optional, Union

from . import _replies, _tls
from ._namespace import debug

logger = logging.getLogger("smtpd_compat")

# RFC 4954, section 4: "the AUTH command ... 12288 octets", for the command
# line and for every response line of the exchange.
AUTH_LINE_LIMIT = 12288

# RFC 4954, section 5: the AUTH parameter may add 500 octets to a MAIL line.
MAIL_LINE_ALLOWANCE = 500

PLAIN = "PLAIN"
LOGIN = "LOGIN"
CRAM_MD5 = "CRAM-MD5"
MECHANISMS = (PLAIN, LOGIN, CRAM_MD5)

# LOGIN's challenges: clients (Go's net/smtp, curl) match these words.
LOGIN_USERNAME = b"Username:"
LOGIN_PASSWORD = b"Password:"

_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{32}")


class Malformed(ValueError):
    """A response that is not base64, or whose content the mechanism cannot read."""


class Cancelled(Exception):
    """The client answered a challenge with ``*`` (RFC 4954: reply 501)."""


class Credentials(NamedTuple):
    """A login and password from PLAIN or LOGIN; *authzid* from PLAIN only."""

    login: str
    password: str
    authzid: str = ""


class CramResponse(NamedTuple):
    """CRAM-MD5's answer: the login and the hex HMAC-MD5 of *challenge*."""

    login: str
    challenge: bytes
    digest: str


Outcome = Union[Credentials, CramResponse]
Mechanism = Generator[bytes, bytes, Outcome]

# -- pure: decoding and the mechanisms ----------------------------------------


def decode_response(text: str, initial: bool = False) -> bytes:
    """Decode one response line of an exchange (or the AUTH command's initial response).

    ``*`` raises :class:`Cancelled`; text that is not canonical base64
    (blanks, missing padding, other characters) raises :class:`Malformed`.
    An empty line is an empty response; as an initial response, where an
    empty argument cannot be written, ``=`` stands for it (RFC 4954).
    """
    if text == "*":
        raise Cancelled()
    if initial and text == "=":
        return b""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise Malformed("not base64") from None
    if _BASE64.fullmatch(data) is None:
        raise Malformed("not base64")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:  # not reached for text the pattern took; kept as a guard
        raise Malformed("not base64") from None


def encode_challenge(challenge: bytes) -> str:
    """The text after ``334 `` for *challenge*."""
    return base64.b64encode(challenge).decode("ascii")


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("not UTF-8") from None


def parse_plain(message: bytes) -> Credentials:
    """RFC 4616: ``[authzid] NUL authcid NUL passwd``, each UTF-8, the login not empty."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise Malformed("not authzid NUL authcid NUL passwd")
    authzid, login, password = (_text(part) for part in parts)
    return Credentials(login, password, authzid)


def plain(initial: Optional[bytes]) -> Mechanism:
    """PLAIN: the whole message at once, in the AUTH line or after an empty challenge."""
    message = initial if initial is not None else (yield b"")
    return parse_plain(message)


def login(initial: Optional[bytes]) -> Mechanism:
    """LOGIN: ``Username:`` (unless the AUTH line gave it), then ``Password:``."""
    user = initial if initial is not None else (yield LOGIN_USERNAME)
    password = yield LOGIN_PASSWORD
    if not user:
        raise Malformed("empty login")
    return Credentials(_text(user), _text(password))


def cram_md5(challenge: bytes) -> Mechanism:
    """CRAM-MD5 (RFC 2195): the client answers *challenge* with ``login SP hex-digest``."""
    response = _text((yield challenge))
    user, space, digest = response.rpartition(" ")
    if not space or not user or _HEX_DIGEST.fullmatch(digest) is None:
        raise Malformed("not login SP digest")
    return CramResponse(user, challenge, digest.lower())


def cram_md5_digest(password: str, challenge: bytes) -> str:
    """The hex HMAC-MD5 of *challenge* keyed with *password*, as the client computes it."""
    return hmac.new(password.encode("utf-8"), challenge, "md5").hexdigest()


def cram_md5_matches(password: Optional[str], response: CramResponse) -> bool:
    """True if *response* proves knowledge of *password* (None: no such login)."""
    if password is None:
        return False
    expected = cram_md5_digest(password, response.challenge)
    return hmac.compare_digest(expected, response.digest)


def new_challenge(hostname: str) -> bytes:
    """A CRAM-MD5 challenge, unique per exchange: ``<random.time@hostname>``."""
    return ("<%d.%d@%s>" % (secrets.randbits(64), int(time.time()), hostname)).encode(
        "ascii", "replace")


def accepts_initial_response(mechanism: str) -> bool:
    """CRAM-MD5 starts with the server's challenge; the others take the client's data."""
    return mechanism != CRAM_MD5


class Exchange:
    """One mechanism's run, driven line by line; no sockets.

    :meth:`begin` and :meth:`feed` return either a challenge (``str``, the
    base64 text after ``334 ``) or, once the mechanism has what it needs, a
    :class:`Credentials` or :class:`CramResponse`.  They raise
    :class:`Cancelled` and :class:`Malformed`.
    """

    __slots__ = ("_mechanism", "_initial", "_challenge", "_steps")

    def __init__(self, mechanism: str, initial: Optional[str] = None,
                 challenge: bytes = b"") -> None:
        if mechanism not in MECHANISMS:
            raise ValueError("no such mechanism: %r" % (mechanism,))
        self._mechanism = mechanism
        self._initial = initial
        self._challenge = challenge
        self._steps: Optional[Mechanism] = None

    def begin(self) -> Union[str, Outcome]:
        """The first challenge, or the outcome when the initial response was all.

        Raises :class:`Malformed` also for an initial response to CRAM-MD5,
        which starts with the server's challenge.
        """
        initial = self._initial
        data = None if initial is None else decode_response(initial, initial=True)
        if self._mechanism == PLAIN:
            self._steps = plain(data)
        elif self._mechanism == LOGIN:
            self._steps = login(data)
        elif data is None:
            self._steps = cram_md5(self._challenge)
        else:
            raise Malformed("CRAM-MD5 takes no initial response")
        return self._step(None)

    def feed(self, line: str) -> Union[str, Outcome]:
        """The client's response *line* (base64 or ``*``): the next challenge or the outcome."""
        return self._step(decode_response(line))

    def _step(self, response: Optional[bytes]) -> Union[str, Outcome]:
        if self._steps is None:
            raise RuntimeError("feed() before begin()")
        try:
            challenge = self._steps.send(response)  # type: ignore[arg-type]
        except StopIteration as done:
            outcome: Outcome = done.value
            return outcome
        return encode_challenge(challenge)


def loggable(line: Any, continuation: bool) -> Any:
    """*line* as DEBUGSTREAM may show it: no initial response, no continuation line.

    Other lines come back unchanged; bytes stay bytes, text stays text.
    """
    text = line if isinstance(line, str) else bytes(line).decode("latin-1")
    if continuation:
        text = _HIDDEN
    else:
        match = _AUTH_WITH_RESPONSE.match(text)
        if match is None:
            return line
        text = match.group(1) + _HIDDEN
    return text if isinstance(line, str) else text.encode("latin-1")


_HIDDEN = "<hidden>"
_AUTH_WITH_RESPONSE = re.compile(r"(AUTH[ \t]+[^ \t]+[ \t]+)(?=[^ \t])", re.IGNORECASE)


def is_auth_parameter(value: Any) -> bool:
    """RFC 4954, section 5: ``AUTH=<>`` or ``AUTH=xtext`` (RFC 3461) on MAIL FROM."""
    if value is True or not value:
        return False
    return value == "<>" or _XTEXT.fullmatch(value) is not None


_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")


def parse_auth_file(lines: Iterable[str]) -> Dict[str, str]:
    """Read ``login:password`` lines (``--auth-file``) into a dict.

    The password is everything after the first colon, as written; blank
    lines and lines whose first non-blank character is ``#`` are skipped.
    Raises ValueError naming the line (never its password) for a line
    without a colon, an empty login or password, a login given twice, or
    a file with no login at all.
    """
    users: Dict[str, str] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, colon, password = line.partition(":")
        if not colon or not user or not password:
            raise ValueError("line %d: expected login:password" % number)
        if user in users:
            raise ValueError("line %d: login %r given twice" % (number, user))
        users[user] = password
    if not users:
        raise ValueError("no login:password line")
    return users


# -- the server's side: what is offered ---------------------------------------


_DEFAULT_METHODS: Dict[str, Any] = {}  # SMTPServer's own authenticate, auth_password


def _overridden(cls: type, name: str) -> bool:
    method = getattr(cls, name, None)
    if method is None:
        return False
    default = _DEFAULT_METHODS.get(name)
    if default is None:
        # Imported here: _server imports the channel, which imports this module.
        from ._server import SMTPServer
        default = _DEFAULT_METHODS[name] = getattr(SMTPServer, name)
    return method is not default


def offered(server) -> bool:
    """True if *server* checks credentials: it has ``auth_users`` or its own ``authenticate``."""
    return checks_credentials(type(server), getattr(server, "auth_users", None))


def checks_credentials(cls: type, auth_users: Optional[Dict[str, str]]) -> bool:
    """True if a server of class *cls* with *auth_users* checks credentials."""
    return auth_users is not None or _overridden(cls, "authenticate")


def mechanisms(server) -> List[str]:
    """The mechanisms *server* offers, in its ``auth_mechanisms`` order.

    CRAM-MD5 needs the clear password: ``auth_users`` or an overridden
    ``auth_password``.
    """
    can_look_up = (getattr(server, "auth_users", None) is not None
                   or _overridden(type(server), "auth_password"))
    names: List[str] = []
    for name in getattr(server, "auth_mechanisms", MECHANISMS):
        name = name.upper()
        if (name in MECHANISMS and name not in names
                and (name != CRAM_MD5 or can_look_up)):
            names.append(name)
    return names


def allowed_here(channel) -> bool:
    """AUTH may run on this connection: over TLS, or where plaintext AUTH is allowed."""
    return bool(channel.tls_active) or bool(
        getattr(channel.smtp_server, "auth_plaintext", False))


def ehlo_lines(channel) -> List[str]:
    """The EHLO line for AUTH (none when off or when plaintext AUTH is not allowed).

    Also lets the AUTH line be as long as RFC 4954 allows, when AUTH is on.
    """
    server = channel.smtp_server
    if not offered(server):
        return []
    limits = channel.command_size_limits
    limits["AUTH"] = AUTH_LINE_LIMIT
    limits["MAIL"] += MAIL_LINE_ALLOWANCE
    names = mechanisms(server)
    if not names:
        return []
    if not allowed_here(channel):
        _warn_if_never_offered(server)
        return []
    return [_replies.EHLO_AUTH % {"mechanisms": " ".join(names)}]


def _warn_if_never_offered(server) -> None:
    """Say once per server that its AUTH is on but no connection can ever use it.

    The command line refuses this combination; a server built in Python
    would otherwise just never offer AUTH, which is hard to tell from a bug.
    """
    if (_tls.context_of(server) is not None
            or getattr(server, "_auth_never_offered_said", False)):
        return
    server._auth_never_offered_said = True
    logger.warning("%s checks credentials but never offers AUTH: it has no "
                   "tls_context and auth_plaintext is off", type(server).__name__)


def forget(channel) -> None:
    """Start the channel's AUTH state over: no login, no failures, no exchange.

    For a session that starts again (RFC 3207, section 4.2: after STARTTLS
    the server "MUST discard any knowledge obtained from the client").
    Removes only what the channel holds itself: the class keeps the defaults.
    """
    for name in ("auth_login", "_auth_failures", "_line_reader"):
        channel.__dict__.pop(name, None)


def mail_refusal(channel) -> Optional[str]:
    """530 for MAIL when the server has ``auth_required`` and the client has not logged in."""
    if getattr(channel.smtp_server, "auth_required", False) and channel.auth_login is None:
        return _replies.AUTH_REQUIRED
    return None


# -- the server's side: the exchange on a channel -----------------------------


def command(channel, arg: Optional[str]) -> None:
    """``AUTH mechanism [initial-response]`` (the channel's ``smtp_AUTH``)."""
    server = channel.smtp_server
    if not offered(server):
        channel.push(_replies.UNRECOGNIZED % {"command": "AUTH"})  # smtpd's bytes
        return
    refusal = _state_refusal(channel)
    if refusal is None and not arg:
        refusal = channel._syntax_error("AUTH")
    if refusal is not None:
        channel.push(refusal)
        return
    name, _, initial_text = arg.partition(" ")
    name = name.upper()
    initial = initial_text or None
    if name not in mechanisms(server):
        channel.push(_replies.AUTH_UNKNOWN_MECHANISM)
        return
    if not allowed_here(channel):
        channel.push(_replies.AUTH_ENCRYPTION_REQUIRED)
        return
    if initial is not None and not accepts_initial_response(name):
        channel.push(_replies.AUTH_NO_INITIAL_RESPONSE)
        return
    challenge = new_challenge(channel.fqdn) if name == CRAM_MD5 else b""
    exchange = Exchange(name, initial, challenge)
    _advance(channel, exchange, exchange.begin)


def _state_refusal(channel) -> Optional[str]:
    if not channel.extended_smtp:
        return _replies.AUTH_EHLO_FIRST
    if channel.auth_login is not None:
        return _replies.AUTH_TWICE
    if channel.mailfrom:
        return _replies.AUTH_IN_TRANSACTION
    return None


class _ContinuationReader:
    """Takes the client's next line for the exchange (the channel's ``_line_reader``)."""

    __slots__ = ("_exchange",)

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def __call__(self, channel, line: Any, decodable: bool, size: int) -> None:
        channel._line_reader = None
        if size > AUTH_LINE_LIMIT:
            channel.push(_replies.LINE_TOO_LONG)
            return
        if not decodable or isinstance(line, bytes) and not line.isascii():
            channel.push(_replies.AUTH_UNDECODABLE)
            return
        text = line if isinstance(line, str) else line.decode("ascii")
        _advance(channel, self._exchange, lambda: self._exchange.feed(text))


def _advance(channel, exchange: Exchange, step) -> None:
    """Run one *step* of *exchange*: send a challenge or an error, or check the outcome."""
    try:
        outcome = step()
    except Cancelled:
        channel.push(_replies.AUTH_CANCELLED)
        return
    except Malformed:
        channel.push(_replies.AUTH_UNDECODABLE)
        return
    if isinstance(outcome, str):
        channel._line_reader = _ContinuationReader(exchange)
        channel.push(_replies.AUTH_CHALLENGE % {"challenge": outcome})
        return
    _check(channel, outcome)


# A verdict that is neither yes nor no: the backend failed (reply 454).
_TEMPORARY = object()


def _check(channel, outcome: Outcome) -> None:
    """Ask the server about *outcome*; answer now, or once its Future is done."""
    if isinstance(outcome, Credentials) and outcome.authzid not in ("", outcome.login):
        # Acting for another identity (RFC 4616 authzid) is not supported.
        _conclude(channel, outcome.login, False)
        return
    try:
        answer = _ask_server(channel, outcome)
        if isinstance(answer, concurrent.futures.Future):
            channel._await_reply(answer, lambda done: _settle(channel, outcome, done))
            return
        verdict = _verdict(outcome, answer)
    except Exception:
        _report(channel, outcome.login, "authentication check failed")
        verdict = _TEMPORARY
    _conclude(channel, outcome.login, verdict)


def _ask_server(channel, outcome: Outcome) -> Any:
    server = channel.smtp_server
    if isinstance(outcome, CramResponse):
        return server.auth_password(outcome.login)
    return server.authenticate(channel.peer, outcome.login, outcome.password)


def _verdict(outcome: Outcome, answer: Any) -> Any:
    """What the server's *answer* means: CRAM-MD5 gets a password to compare with."""
    if isinstance(outcome, CramResponse):
        return cram_md5_matches(answer, outcome)
    return answer


def _settle(channel, outcome: Outcome, done: concurrent.futures.Future) -> None:
    """The server's Future is done: answer (called on the loop's thread)."""
    try:
        verdict = _verdict(outcome, done.result())
    except Exception:
        _report(channel, outcome.login, "authentication check failed")
        verdict = _TEMPORARY
    channel._counting_errors(_conclude, channel, outcome.login, verdict)


def _conclude(channel, user: str, verdict: Any) -> None:
    """Answer the exchange: 235 and remember *user*, a refusal, or 454."""
    if verdict is True or _is_success(verdict):
        channel.auth_login = user
        debug("AUTH: logged in as", repr(user))
        channel.push(_replies.AUTH_OK if verdict is True else verdict)
        return
    if verdict is _TEMPORARY:
        channel.push(_replies.AUTH_TEMPORARY_FAILURE)
        return
    reply = _replies.AUTH_INVALID
    if verdict not in (False, None):
        if not _is_refusal(verdict):
            # Its type only: a mistaken override might return the password.
            logger.error("authenticate() returned a %s that is neither a bool nor a"
                         " 4yz/5yz reply, for %r; answered 454",
                         type(verdict).__name__, user)
            channel.push(_replies.AUTH_TEMPORARY_FAILURE)
            return
        reply = verdict
    debug("AUTH: refused for", repr(user))
    channel.push(reply)
    if reply[:1] == "5":
        _count_failure(channel)


def _is_refusal(reply: Any) -> bool:
    """A one-line 4yz or 5yz reply that ``authenticate`` may give instead of False."""
    return _is_one_line_reply(reply) and reply[:1] in ("4", "5")


def _is_success(reply: Any) -> bool:
    """A one-line 235 reply that ``authenticate`` may give instead of True (its text)."""
    return _is_one_line_reply(reply) and reply[:3] == "235"


def _is_one_line_reply(reply: Any) -> bool:
    return (isinstance(reply, str) and reply[:3].isdigit() and reply[3:4] in (" ", "")
            and "\r" not in reply and "\n" not in reply)


def _count_failure(channel) -> None:
    """One more refused login; at ``auth_max_failures`` the session ends with 421."""
    channel._auth_failures += 1
    limit = getattr(channel.smtp_server, "auth_max_failures", None)
    if limit and channel._auth_failures >= limit:
        logger.warning("%d failed logins from %r; disconnected", channel._auth_failures,
                       getattr(channel, "peer", None))
        channel.push(_replies.AUTH_TOO_MANY_FAILURES % {"fqdn": channel.fqdn})
        channel.close_when_done()


def _report(channel, user: str, what: str) -> None:
    # The exception's traceback, not the password: nothing here holds it.
    peer = getattr(channel, "peer", None)
    logger.exception("%s for login %r from %r; answered 454", what, user, peer)
    debug("%s for login %r from %r; answered 454" % (what, user, peer))
