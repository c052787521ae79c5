"""PureProxy's reply policy after an upstream attempt (a pure function)."""

import pytest

from smtpd_compat._proxy import relay_reply
from smtpd_compat._replies import RELAY_UNAVAILABLE

RCPTS = ["a@x", "b@x"]


@pytest.mark.parametrize("refused, expected", [
    ({}, None),
    ({"a@x": (550, b"No such user")}, None),
    ({"a@x": (550, b"No such user"), "b@x": (553, b"Bad")}, "550 No such user"),
    ({"a@x": (550, b"No"), "b@x": (451, b"Try later")}, "451 Try later"),
    ({"a@x": (-1, "Connection refused"), "b@x": (-1, "Connection refused")},
     RELAY_UNAVAILABLE),
    ({"a@x": (421, b"Service\nnot available"), "b@x": (421, b"x")},
     "451 Service not available"),
    ({"a@x": (554, b""), "b@x": (554, b"")}, "554 Error"),
    # A temporary refusal of some: retried (maybe a second copy), never lost.
    ({"a@x": (452, b"4.5.3 Too many recipients")}, "452 4.5.3 Too many recipients"),
    ({"a@x": (421, b"closing")}, "451 closing"),
    ({"a@x": (-1, "timed out")}, RELAY_UNAVAILABLE),
], ids=["accepted", "partly-refused", "all-permanent", "one-temporary",
        "unreachable", "multi-line-text", "empty-text", "partly-deferred",
        "partly-421", "partly-no-reply"])
def test_relay_reply(refused, expected):
    assert relay_reply(RCPTS, refused) == expected


def test_duplicate_recipients_count_once():
    assert relay_reply(["a@x", "a@x"], {"a@x": (550, b"No")}) == "550 No"
