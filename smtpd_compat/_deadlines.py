"""When a connection's clocks run out, and what counts as the client's activity.

The channel keeps three deadlines: the idle deadline (``idle_timeout`` after
the last activity), the linger deadline (``LINGER_TIMEOUT`` after its last
reply went out) and the closing deadline (``CLOSING_TIMEOUT`` after it began
to close).  The rules are pure functions here; ``input_waiting`` alone looks
at a socket, without reading from it.
"""

import socket
from typing import Optional

# Seconds a closing channel (after QUIT, the idle timeout's 421 or shutdown)
# may take to send its last replies and linger, whatever the client does.
# A client that reads nothing must not keep its descriptor and its place
# among max_connections: after this the socket is closed, replies or not.
# Long enough for a client that reads to get a backlog of replies (at most
# 256) and for the linger after them.
CLOSING_TIMEOUT = 10.0

# Bytes a channel reads while process_message's reply is pending, without
# running them: enough to notice that the client left (the end of input
# comes after whatever it pipelined), bounded so that a client cannot make
# the server buffer without limit while it waits.
PENDING_INPUT_LIMIT = 65536

_CRLF = b"\r\n"
_PEEK_FLAGS = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)


def expired(deadline: Optional[float], now: float) -> bool:
    """True if *deadline* (a ``time.monotonic()`` value, or None for none) is past."""
    return deadline is not None and now > deadline


def completes_data_line(tail: bytes, data: bytes) -> bool:
    """True if *data*, received in DATA state, ends a line of the message.

    *tail* is the input buffered before it (only its last byte matters: a
    CR there and a LF starting *data* make a CRLF split across two reads).
    A message line ends with CRLF; a bare LF is message content, so a
    client trickling LFs makes no progress through DATA.
    """
    return _CRLF in data or (tail.endswith(b"\r") and data.startswith(b"\n"))


def input_waiting(sock) -> bool:
    """True if *sock* has something to read now: data, its end, or an error.

    Looks without taking (``MSG_PEEK``, non-blocking).  A deadline judged
    after the loop was busy elsewhere must first let the channel read what
    its client sent meanwhile; reading the end or the error makes the
    channel close as it always does.
    """
    try:
        sock.recv(1, _PEEK_FLAGS)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # a reset: handle_read will see it and close
    except (AttributeError, TypeError, ValueError):
        # Not a plain socket: a test double, or TLS (ssl refuses recv flags).
        return False
    return True
