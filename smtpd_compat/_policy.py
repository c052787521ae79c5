"""Decision points of a session, and how their answers become replies.

At each stage (the new connection, HELO/EHLO, MAIL, RCPT, DATA and the end
of the data), once the channel's own checks passed, it asks its server for a
decision, through ``consult`` (or ``greet`` and ``check_message``): the one
place the hooks are called from.  Two kinds of hook answer, in this order:

* the public hook (``check_connection`` ... ``check_message`` on
  ``SMTPServer``, documented there), called with a :class:`Session`; its
  answer is validated, and a failure or a bad value is a logged 451;
* the private hook (``_policy_mail`` ... ``_policy_message``), called with
  the channel: PureProxy answers with the upstream's reply to relay in
  lockstep.  It is asked only when the public hook did not refuse, so a
  local refusal never reaches the upstream; its answer, if not None, is the
  reply (the upstream has the last word), else the public hook's.

``SMTPServer`` answers None to all of them (and its public hooks are not even
called), so the channel's default reply and state change follow, byte for
byte as before.  An answer is None (the default reply), a reply, or a
``concurrent.futures.Future`` whose result is one of those (the channel reads
no further command until it is done, other clients are served meanwhile).
A reply that accepts (2xx; 3xx for DATA) makes the channel record the step
(the sender, the recipient, the switch to message data); any other reply
refuses and leaves the transaction as it was.  A 421 closes the connection
after it is sent, as RFC 5321 (section 3.8) has it.
"""

import concurrent.futures
import functools
import logging
import types
from typing import Any, Callable, List, NamedTuple, Optional, Tuple, Union

from . import _replies, _status
from ._namespace import debug
from ._wakeup import waker_for

logger = logging.getLogger("smtpd_compat")

# Private server hooks, called as hook(channel, *arguments).
MAIL = "_policy_mail"          # (address, upper-cased MAIL parameters)
RCPT = "_policy_rcpt"          # (address, upper-cased RCPT parameters)
DATA = "_policy_data"          # ()
MESSAGE = "_policy_message"    # (data): None lets process_message answer
# Told, not asked: the transaction is over (delivered, reset, abandoned).
TRANSACTION_OVER = "_policy_transaction_over"

Answer = Union[None, str, concurrent.futures.Future]



class _Close:
    """The type of :data:`CLOSE`."""

    def __repr__(self) -> str:
        return "smtpd_compat.policy.CLOSE"


# What a public hook may return to close the connection without a reply.
CLOSE = _Close()


class Stage(NamedTuple):
    """One decision point: its public hook, its private hook, the codes that accept."""

    hook: str
    private: Optional[str]
    accepting: str  # the reply classes that say yes


AT_CONNECTION = Stage("check_connection", None, "2")
AT_HELO = Stage("check_helo", None, "2")
AT_MAIL = Stage("check_mail", MAIL, "2")
AT_RCPT = Stage("check_rcpt", RCPT, "2")
AT_DATA = Stage("check_data", DATA, "3")
AT_MESSAGE = Stage("check_message", MESSAGE, "2")
# The stage of each private hook: consult() takes either.
_STAGE_OF = {stage.private: stage for stage in (AT_MAIL, AT_RCPT, AT_DATA, AT_MESSAGE)}


class Session:
    """What a policy hook knows about the connection it decides for.

    A view of the channel, made for each call (it holds nothing but the
    channel): every attribute reads the connection as it is now.
    """

    __slots__ = ("channel",)

    def __init__(self, channel) -> None:
        #: The :class:`~smtpd_compat.SMTPChannel` itself.
        self.channel = channel

    @property
    def peer(self):
        """The client's address, ``(host, port)``; with ``proxy_protocol``, the
        client the PROXY header names."""
        return getattr(self.channel, "peer", None)

    @property
    def helo_name(self) -> Optional[str]:
        """The name the client gave in HELO or EHLO; None before that."""
        return self.channel.seen_greeting or None

    @property
    def esmtp(self) -> bool:
        """True once the client greeted with EHLO."""
        return bool(self.channel.extended_smtp)

    @property
    def mailfrom(self) -> Optional[str]:
        """The sender of the transaction so far; None before MAIL."""
        return self.channel.mailfrom

    @property
    def mail_options(self) -> List[str]:
        """The sender's upper-cased MAIL parameters (a copy)."""
        return list(self.channel.mail_options)

    @property
    def rcpttos(self) -> List[str]:
        """The recipients accepted so far (a copy)."""
        return list(self.channel.rcpttos)

    @property
    def tls(self) -> bool:
        """True once the connection is encrypted (STARTTLS or implicit TLS)."""
        return bool(getattr(self.channel, "tls_active", False))

    @property
    def auth_login(self) -> Optional[str]:
        """The login the client authenticated as (AUTH); None if it did not."""
        return getattr(self.channel, "auth_login", None)

    @property
    def state(self):
        """A namespace that lives as long as the connection, for the hooks to keep
        what they learn between steps and transactions.

        Made on first use: nothing is stored for connections that never touch
        it.  It is the channel's :attr:`~smtpd_compat.SMTPChannel.policy_state`.
        """
        state = self.channel.policy_state
        if state is None:
            state = self.channel.policy_state = types.SimpleNamespace()
        return state

    def __repr__(self) -> str:
        return "<Session peer=%r helo_name=%r mailfrom=%r rcpttos=%r>" % (
            self.peer, self.helo_name, self.mailfrom, self.rcpttos)


def default_hook(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an ``SMTPServer`` hook as the default: the channel skips calling it."""
    method._smtpd_compat_default_hook = True  # type: ignore[attr-defined]
    return method


# -- the private hooks -------------------------------------------------------

def ask(channel, hook: Optional[str], *arguments) -> Answer:
    """The server's answer at private *hook*; None when the server has no such hook."""
    method = None if hook is None else own_hook(getattr(channel, "smtp_server", None), hook)
    return None if method is None else method(channel, *arguments)


def transaction_over(channel) -> None:
    """Tell the server the channel's transaction ended (see TRANSACTION_OVER)."""
    ask(channel, TRANSACTION_OVER)


# -- the public hooks ----------------------------------------------------------

def public_hook(channel, stage: Stage) -> Optional[Callable[..., Any]]:
    """The server's own public hook for *stage*; None when it has only the default."""
    return own_hook(getattr(channel, "smtp_server", None), stage.hook)


def own_hook(server, name: str) -> Optional[Callable[..., Any]]:
    """*server*'s method *name*; None if it has none, or only the marked default."""
    # Looked up on the class first: no bound method is made for the usual
    # default, which every command of every session would otherwise pay for.
    function = getattr(type(server), name, None)
    if (getattr(function, "_smtpd_compat_default_hook", False)
            and name not in getattr(server, "__dict__", ())):
        return None
    method = getattr(server, name, None)
    if method is None or getattr(method, "_smtpd_compat_default_hook", False):
        return None
    return method


def _nobody_asked(channel, stage: Stage) -> bool:
    """True if the server has neither a public nor a private hook at *stage*."""
    server = getattr(channel, "smtp_server", None)
    return own_hook(server, stage.hook) is None and (
        stage.private is None or own_hook(server, stage.private) is None)


def ask_public(channel, stage: Stage, arguments: tuple) -> Answer:
    """The public hook's answer, validated: None, a reply ('' to close), or a Future of one."""
    method = public_hook(channel, stage)
    if method is None:
        return None
    try:
        answer = method(Session(channel), *arguments)
    except Exception:
        return _failed(channel, stage)
    if isinstance(answer, concurrent.futures.Future):
        return _then(channel, answer, lambda done: _settled(channel, stage, done))
    return validated(channel, stage, answer)


def _settled(channel, stage: Stage, done: concurrent.futures.Future) -> Optional[str]:
    try:
        answer = done.result()
    except Exception:
        return _failed(channel, stage)
    return validated(channel, stage, answer)


def _failed(channel, stage: Stage) -> str:
    """Log the exception being handled in a hook; its reply is the 451."""
    peer = getattr(channel, "peer", None)
    logger.exception("policy hook %s failed for %r; answered 451", stage.hook, peer)
    debug("policy hook %s failed for %r; answered 451" % (stage.hook, peer))
    return _replies.HANDLER_FAILED


def validated(channel, stage: Stage, answer: object) -> Optional[str]:
    """A hook's answer as a well-formed reply, None, or '' (close).

    A bad answer is logged, and its reply is the 451 of a failed handler.
    """
    reply, problem = reply_for_answer(answer, stage.accepting)
    if problem:
        peer = getattr(channel, "peer", None)
        logger.error("policy hook %s returned %s, for %r; answered 451",
                     stage.hook, problem, peer)
        debug("policy hook %s returned %s, for %r; answered 451" % (stage.hook, problem, peer))
    return reply


def reply_for_answer(answer: object, accepting: str) -> Tuple[Optional[str], Optional[str]]:
    """Turn a public hook's answer into (reply, problem); pure.

    None stays None (the default reply); :data:`CLOSE` becomes ''.  A
    string is one reply line, or several joined by line ends; a list or
    tuple of strings holds the lines of a multi-line reply.  Continuation
    lines repeat the first line's code or carry none (``["553 Bad helo",
    "Evil IP"]`` is ``553-Bad helo`` CRLF ``553 Evil IP``).  The code must
    be one that accepts at this stage (*accepting*: "2", or "3" for DATA)
    or refuses (4yz, 5yz).  Anything else is a problem, with the 451 of a
    failed handler as its reply.
    """
    if answer is None:
        return None, None
    if answer is CLOSE:
        return "", None
    if isinstance(answer, (list, tuple)) and answer and all(
            isinstance(line, str) for line in answer):
        text = "\r\n".join(answer)
    elif isinstance(answer, str):
        text = answer
    else:
        return _status.problem(answer, "not a reply (a str, or a list of str lines)")
    return _status.reply_for_text(text, classes=accepting + "45")


# -- asking both, and replying -------------------------------------------------

def consult(channel, stage: Union[Stage, str], arguments: tuple, default,
            accept: Callable[..., None], accept_arguments: tuple = ()) -> None:
    """Ask the hooks at *stage*, then reply; on a yes, ``accept(*accept_arguments)`` first.

    *stage* is a Stage, or the name of its private hook (``MAIL``...).
    *default* is the reply for None: a reply line, or a function that sends
    the default reply itself (EHLO's several lines).  A Future is handed to
    the channel's late-reply machinery, which applies its result on the
    loop thread once it is done (an exception: 451).
    """
    if isinstance(stage, str):
        stage = _STAGE_OF[stage]
    if _nobody_asked(channel, stage):  # the usual case, kept short
        accept(*accept_arguments)
        respond(channel, default)
        return
    answer = ask_all(channel, stage, arguments)
    if isinstance(answer, concurrent.futures.Future):
        channel._await_reply(answer, lambda done: respond(channel, decide(
            done.result(), default, accept, accept_arguments)))
    else:
        respond(channel, decide(answer, default, accept, accept_arguments))


def ask_all(channel, stage: Union[Stage, str], arguments: tuple) -> Answer:
    """The hooks' answer at *stage*: the public hook's, then the private one's.

    None, a reply ('' to close), or a Future of one; for a reader that
    decides a step outside ``consult`` (BDAT's first chunk is DATA's step).
    """
    if isinstance(stage, str):
        stage = _STAGE_OF[stage]
    answer = ask_public(channel, stage, arguments)
    if isinstance(answer, concurrent.futures.Future):
        return _then(channel, answer, lambda done: _ask_private(
            channel, stage, arguments, done.result()))
    return _ask_private(channel, stage, arguments, answer)


def _ask_private(channel, stage: Stage, arguments: tuple, public: Optional[str]) -> Answer:
    """The private hook's answer after the public one said *public*."""
    if public is not None and not accepts(public, stage.accepting):
        return public
    return or_default(ask(channel, stage.private, *arguments), public)


def decide(answer: Optional[str], default, accept: Callable[..., None],
           accept_arguments: tuple = ()):
    """Apply one answer: call *accept* if it says yes; return the reply (*default* for None)."""
    if answer is None or accepts(answer):
        accept(*accept_arguments)
    return default if answer is None else answer


def respond(channel, reply) -> None:
    """Send *reply*, or call it when it is a function that sends the reply itself."""
    if callable(reply):
        reply()
    else:
        send(channel, reply)


def send(channel, reply: str) -> None:
    """Push *reply*; '' closes without a word, and a 421 closes after it."""
    if reply:
        channel.push(reply)
    if not reply or reply.startswith("421"):
        channel.close_when_done()


def accepts(reply: str, accepting: str = "23") -> bool:
    """True for a reply line of a class in *accepting* (by default 2xx or 3xx)."""
    return bool(reply) and reply[0] in accepting and reply[1:3].isdigit()


def or_default(answer: Answer, fallback: Optional[str]) -> Answer:
    """*answer*, or *fallback* where it (or the Future's result) is None."""
    if fallback is None or answer is None:
        return answer if answer is not None else fallback
    if isinstance(answer, concurrent.futures.Future):
        chained: concurrent.futures.Future = concurrent.futures.Future()

        def copy(done: concurrent.futures.Future) -> None:
            try:
                result = done.result()
            except BaseException as error:  # passed on: the channel answers 451
                chained.set_exception(error)
            else:
                chained.set_result(fallback if result is None else result)

        answer.add_done_callback(copy)
        return chained
    return answer


def _then(channel, future: concurrent.futures.Future,
          continuation: Callable[[concurrent.futures.Future], Answer]) -> concurrent.futures.Future:
    """A Future of ``continuation(future)``, run on the loop thread once *future* is done.

    The continuation may itself answer with a Future: its result is passed
    on.  It is not run when the client has left meanwhile (nothing more is
    asked or delivered for a client that got no reply).
    """
    result: concurrent.futures.Future = concurrent.futures.Future()
    waker = waker_for(channel._map)

    def run(done: concurrent.futures.Future) -> None:
        if not channel.connected:
            result.set_result(None)
            return
        try:
            answer = continuation(done)
        except BaseException as error:  # passed on: the channel answers 451
            result.set_exception(error)
            return
        if isinstance(answer, concurrent.futures.Future):
            answer.add_done_callback(functools.partial(_copy_outcome, result))
        else:
            result.set_result(answer)

    future.add_done_callback(lambda done: waker.call_soon(functools.partial(run, done)))
    return result


def _copy_outcome(target: concurrent.futures.Future, done: concurrent.futures.Future) -> None:
    error = done.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(done.result())


# -- the stages that are not a command's -----------------------------------------

def greet(channel, greeting: str) -> None:
    """Ask ``check_connection``; send *greeting*, or the refusal and close."""
    if public_hook(channel, AT_CONNECTION) is None:
        channel.push(greeting)
        return
    answer = ask_public(channel, AT_CONNECTION, ())
    if isinstance(answer, concurrent.futures.Future):
        channel._await_reply(answer, lambda done: _greet_with(channel, done.result(), greeting))
    else:
        _greet_with(channel, answer, greeting)


def _greet_with(channel, answer: Optional[str], greeting: str) -> None:
    if answer is None:
        channel.push(greeting)
    elif accepts(answer, AT_CONNECTION.accepting):
        send(channel, answer)
    else:  # refused before the session began: the reply, if any, then goodbye
        if answer:
            channel.push(answer)
        channel.close_when_done()


class HookReply(str):
    """A public hook's refusal of a message: sent with :func:`send`, not read as a status."""

    __slots__ = ()


def check_message(channel, data, deliver: Callable[[], Any]) -> Any:
    """The status for a finished message: the hooks' refusal, or what *deliver* returns.

    ``check_message`` decides first; then the private hook; then, if both
    let it through, ``deliver()`` (``process_message``).  An acceptance
    with text of its own stands where the later step answers None.
    """
    public = ask_public(channel, AT_MESSAGE, (data,))
    if isinstance(public, concurrent.futures.Future):
        return _then(channel, public, lambda done: _after_message_check(
            channel, data, deliver, done.result()))
    return _after_message_check(channel, data, deliver, public)


def _after_message_check(channel, data, deliver: Callable[[], Any],
                         public: Optional[str]) -> Any:
    if public is not None and not accepts(public, AT_MESSAGE.accepting):
        return HookReply(public)
    answer = ask(channel, MESSAGE, data)
    if answer is None:
        answer = deliver()
    return or_default(answer, public)
