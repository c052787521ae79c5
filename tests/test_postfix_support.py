"""The private Postfix of tests/postfix_support.py: it relays, logs privately, stops."""

import os

from tests.cli_support import SmtpSink
from tests.postfix_support import PrivatePostfix


def test_private_postfix_relays_to_its_relayhost_and_leaves_nothing_running():
    with SmtpSink() as sink:
        postfix = PrivatePostfix(relayhost="[127.0.0.1]:%d" % sink.port)
        with postfix:
            root = postfix.root
            postfix.sendmail(b"Subject: harness\n\nhello\n", ["someone@example.test"])
            postfix.wait_for_log(r"to=<someone@example\.test>.*status=sent")
            postfix.wait_until_queue_empty()
            pid = postfix.master_pid()
            assert pid is not None
            assert "configuration %s" % postfix.config_directory in postfix.log_text()
        assert len(sink.messages()) == 1
        assert b"hello" in sink.messages()[0].data
    assert not os.path.exists(root)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError("Postfix's master still runs after stop")
