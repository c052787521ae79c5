"""Decision points of a transaction, and how their answers become replies.

At MAIL, RCPT, DATA and the end of the data, once the channel's own checks
passed, it asks its server for a decision through a private hook (the names
below).  ``SMTPServer`` answers None to all of them, so the channel's default
reply and state change follow, byte for byte as before.  PureProxy answers
with the upstream's reply to relay in lockstep.

An answer is None (the default reply), a reply line, or a
``concurrent.futures.Future`` whose result is one of those (the channel reads
no further command until it is done, other clients are served meanwhile).  A
2xx or 3xx reply accepts: the channel then records the step (the sender, the
recipient, the switch to message data); any other reply refuses and leaves
the transaction as it was.
"""

import concurrent.futures
from typing import Callable, Optional, Union

# Server hooks, called as hook(channel, *arguments).
MAIL = "_policy_mail"          # (address, upper-cased MAIL parameters)
RCPT = "_policy_rcpt"          # (address, upper-cased RCPT parameters)
DATA = "_policy_data"          # ()
MESSAGE = "_policy_message"    # (data): None lets process_message answer
# Told, not asked: the transaction is over (delivered, reset, abandoned).
TRANSACTION_OVER = "_policy_transaction_over"

Answer = Union[None, str, concurrent.futures.Future]


def ask(channel, hook: str, *arguments) -> Answer:
    """The server's answer at *hook*; None when the server has no such hook."""
    method = getattr(getattr(channel, "smtp_server", None), hook, None)
    return None if method is None else method(channel, *arguments)


def consult(channel, hook: str, arguments: tuple, default: str,
            accept: Callable[..., None], accept_arguments: tuple = ()) -> None:
    """Ask at *hook*, then reply: *default* for None; on a yes, ``accept(*accept_arguments)``.

    A Future is handed to the channel's late-reply machinery, which applies
    its result on the loop thread once it is done (an exception: 451).
    """
    answer = ask(channel, hook, *arguments)
    if answer is None:  # the usual case, kept short: every MAIL and RCPT comes here
        accept(*accept_arguments)
        channel.push(default)
    elif isinstance(answer, concurrent.futures.Future):
        channel._await_reply(answer, lambda done: decide(
            done.result(), default, accept, accept_arguments))
    else:
        channel.push(decide(answer, default, accept, accept_arguments))


def decide(answer: Optional[str], default: str, accept: Callable[..., None],
           accept_arguments: tuple = ()) -> str:
    """Apply one answer: call *accept* if it says yes; return the reply to send."""
    reply = default if answer is None else answer
    if accepts(reply):
        accept(*accept_arguments)
    return reply


def accepts(reply: str) -> bool:
    """True for a 2xx or 3xx reply line."""
    return reply[:1] in ("2", "3") and reply[1:3].isdigit()


def transaction_over(channel) -> None:
    """Tell the server the channel's transaction ended (see TRANSACTION_OVER)."""
    ask(channel, TRANSACTION_OVER)
