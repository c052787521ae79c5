"""pytest fixtures for tests that send mail: a running SMTP sink, no configuration.

Registered through the ``pytest11`` entry point, so installing smtpd_compat
is enough (``-p no:smtpd_compat`` turns it off).  Every server listens on
an OS-chosen loopback port, so tests run in parallel (pytest-xdist) without
clashing, and every server is stopped when its test ends.

Fixtures:

``smtpd_server``
    A running :class:`smtpd_compat.testing.Sink`: ``smtpd_server.hostname``,
    ``.port`` and ``.address`` say where to send, ``.messages`` lists what
    arrived, ``.wait_for_message()``, ``.refuse_recipient()`` and
    ``.refuse_data()`` as documented there.  The marker
    ``@pytest.mark.smtpd_server(**kwargs)`` passes its keywords to the
    :class:`~smtpd_compat.testing.Controller`: ``tls=True`` (STARTTLS) or
    ``smtps=True`` (implicit TLS); ``smtpd_server.controller.client_context()``
    then trusts the server's throw-away certificate.
``smtpd_messages``
    ``smtpd_server.messages``: the live list of received messages.
``smtpd_controller``
    A function that starts a :class:`smtpd_compat.testing.Controller` with
    the arguments it is given (``smtpd_controller(DebuggingServer)``) and
    returns it; each one is stopped after the test.

``smtpd_server`` takes the keyword arguments of ``Controller`` from the
test's ``smtpd_server`` mark, e.g.
``@pytest.mark.smtpd_server(auth={"user": "password"})`` for a sink that
offers AUTH, or from indirect parametrization
(``@pytest.mark.parametrize("smtpd_server", [{...}], indirect=True)``).
"""

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List

import pytest

if TYPE_CHECKING:  # imported lazily: loading the plugin must stay cheap and silent
    from smtpd_compat.testing import Controller, Message, Sink


@pytest.fixture
def smtpd_controller() -> "Iterator[Callable[..., Controller]]":
    """Start ``Controller(*args, **kwargs)``; every one started is stopped after the test."""
    from smtpd_compat.testing import Controller

    with ExitStack() as started:

        def start(*args: Any, **kwargs: Any) -> Controller:
            return started.enter_context(Controller(*args, **kwargs))

        yield start


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "smtpd_server(**kwargs): Controller arguments for the smtpd_server "
        "fixture, e.g. tls=True or smtps=True")


@pytest.fixture
def smtpd_server(request: Any, smtpd_controller: "Callable[..., Controller]") -> "Sink":
    """A running :class:`smtpd_compat.testing.Sink` on 127.0.0.1 and a free port.

    Started with the keyword arguments of the test's ``smtpd_server`` mark
    and of an indirect parameter (a dict), if any.
    """
    kwargs: Dict[str, Any] = {}
    mark = request.node.get_closest_marker("smtpd_server")
    if mark is not None:
        kwargs.update(mark.kwargs)
    kwargs.update(getattr(request, "param", None) or {})
    server: Sink = smtpd_controller(**kwargs).server
    return server


@pytest.fixture
def smtpd_messages(smtpd_server: "Sink") -> "List[Message]":
    """The messages ``smtpd_server`` received so far (a live list)."""
    return smtpd_server.messages
