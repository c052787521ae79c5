"""MailmanProxy: hand mailing-list mail to GNU Mailman, relay the rest upstream.

CPython 3.10 deprecated the class and 3.11 removed it.  Its code drove
Mailman 2's Python API, which went away with Python 2, so this version speaks
to Mailman 3 the way an MTA does: over LMTP (RFC 2033).  Where a ``Mailman``
package with Mailman 2's API can still be imported, 3.10's path through that
API is kept.
"""

import copy
import email
import email.utils
import logging
import re
import smtplib
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ._namespace import debug
from ._parsing import to_crlf
from ._proxy import PureProxy, Refusals, relay_options, relay_reply
from ._replies import MAILMAN_UNAVAILABLE

logger = logging.getLogger("smtpd_compat")


# Mailman 2 address forms that 3.10 handed to Mailman: ``list`` and
# ``list-<command>``.
_MAILMAN2_COMMANDS = ("", "admin", "owner", "request", "join", "leave")

_HEADER_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


class MailmanProxy(PureProxy):
    """Deliver mailing-list mail to Mailman, relay everything else upstream.

    Deprecated, as in CPython 3.10 (constructing one warns), and it refuses
    ``enable_SMTPUTF8``.

    **Mailman 3** (the usual case) runs an LMTP server, by default on
    127.0.0.1:8024 (``[mta] lmtp_host``/``lmtp_port`` in ``mailman.cfg``).  Set
    ``mailman_lmtp_host`` and ``mailman_lmtp_port`` as class attributes, on an
    instance, or as constructor keywords.  ``relay_timeout`` bounds every
    socket operation towards Mailman as it does towards the upstream.

    Which recipients belong to Mailman is decided by Mailman itself: each one
    is offered in an LMTP ``RCPT``; the addresses it accepts are its lists
    (``list``, ``list-bounces``, ``-confirm``, ``-join``, ``-leave``,
    ``-owner``, ``-request``, ``-subscribe``, ``-unsubscribe``, with VERP
    ``+`` tags, in any letter case, in the list's domain or an alias domain),
    and the ones it answers 5xx are relayed upstream.  This is robust where
    3.10's name check was not: list names may contain hyphens, lists live in
    domains, and the set of suffixes is Mailman's to change.  Mailman 2's
    ``list-admin`` is no Mailman 3 address, so it is relayed.  The price is
    that Mailman must be reachable to sort any message: while it is not,
    clients get a 4xx and try again later.

    Delivery, in a worker thread: the upstream part first (unchanged, as
    3.10 sent it, without ``X-Peer``), then one LMTP transaction per list
    recipient, with ``From:`` and ``Date:`` added when the message lacks
    them (as 3.10 did).  The reply:

    - 250 when everything was accepted.  When part was refused for good and
      the rest accepted, 250 as well (a reply after DATA cannot name
      recipients); the refusals are logged, as PureProxy does.
    - 4xx when Mailman is unreachable or answers 4xx, or when the upstream
      is unreachable or refuses any of its recipients temporarily.  Mailman
      got nothing then; the upstream may have taken the message for some
      recipients, and a retry may bring them a second copy, never none.
    - 5xx (the first refusal's) when every recipient was refused for good.

    Unlike PureProxy, MailmanProxy does not relay in lockstep: the client's
    recipients are sorted and delivered once the whole message is in, so
    its RCPTs get 250 and the rules above decide the one reply after DATA.
    The upstream part follows PureProxy's other rules: the final dot waits
    up to ``relay_data_timeout``, and nobody waits for a QUIT (upstream or
    Mailman's).

    **Mailman 2**: when ``from Mailman import Utils, MailList, Message``
    works and ``Utils.list_exists`` exists, 3.10's logic applies: the
    recipients ``list`` and ``list-{admin,owner,request,join,leave}`` of an
    existing list are enqueued through that API (``-join``/``-leave`` as
    ``subscribe``/``unsubscribe`` requests), the others relayed.
    """

    mailman_lmtp_host: str = "127.0.0.1"
    mailman_lmtp_port: int = 8024

    def __init__(self, *args, mailman_lmtp_host: Optional[str] = None,
                 mailman_lmtp_port: Optional[int] = None, **kwargs):
        warnings.warn("MailmanProxy is deprecated and will be removed "
                      "in future", DeprecationWarning, 2)
        if kwargs.get("enable_SMTPUTF8"):
            raise ValueError("MailmanProxy does not support SMTPUTF8.")
        if mailman_lmtp_host is not None:
            self.mailman_lmtp_host = mailman_lmtp_host
        if mailman_lmtp_port is not None:
            self.mailman_lmtp_port = mailman_lmtp_port
        super().__init__(*args, **kwargs)

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        """Sort the recipients and deliver; the reply comes when it is done."""
        options = [option for option in kwargs.get("mail_options") or ()
                   if option.startswith("BODY=")]
        legacy = _mailman2_api()
        if legacy is not None:
            return self._submit(self._deliver_mailman2, legacy, mailfrom,
                                list(rcpttos), data, options)
        return self._submit(self._deliver_mailman3, mailfrom, list(rcpttos),
                            data, options)

    # -- Mailman 3, over LMTP -----------------------------------------------

    def _deliver_mailman3(self, mailfrom, rcpttos, data, mail_options) -> Optional[str]:
        """Sort, relay, deliver (blocking); return the client's reply."""
        sorted_or_reply = self._sort_recipients(mailfrom, rcpttos, mail_options)
        if isinstance(sorted_or_reply, str):
            return sorted_or_reply
        lists, others = sorted_or_reply
        refused = self._relay_others(mailfrom, others, data, mail_options)
        if isinstance(refused, str):
            return refused
        if lists:
            message = data.encode("utf-8") if isinstance(data, str) else data
            message = _with_from_and_date(to_crlf(message), mailfrom)
            outcome = self._lmtp_deliver(mailfrom, lists, message, mail_options)
            temporary = {rcpt: reply for rcpt, reply in outcome.items()
                         if not 500 <= reply[0] <= 599}
            if temporary:
                debug("Mailman did not take it for now:", temporary)
                logger.warning("Mailman did not take the message for %r",
                               temporary)
                return MAILMAN_UNAVAILABLE
            refused.update(outcome)
        if refused:
            logger.warning("refused %d of %d recipients: %r", len(refused),
                           len(set(rcpttos)), refused)
        return relay_reply(rcpttos, refused)

    def _lmtp_client(self) -> smtplib.LMTP:
        """A connected LMTP client that has said LHLO (raises on failure)."""
        client = smtplib.LMTP()
        # LMTP() takes no timeout before Python 3.9; connect() reads this.
        client.timeout = self.relay_timeout
        try:
            client.connect(self.mailman_lmtp_host, self.mailman_lmtp_port)
            code, text = client.ehlo()
            if code != 250:
                raise smtplib.SMTPHeloError(code, text)
        except BaseException:
            client.close()
            raise
        return client

    def _quit_later(self, client: smtplib.LMTP) -> None:
        """QUIT in a worker thread: nobody waits for Mailman's goodbye."""
        try:
            self._submit(_quit_quietly, client)
        except RuntimeError:  # workers shut down: the server is closing
            client.close()

    def _mail_options(self, client: smtplib.LMTP, options: Sequence[str]) -> List[str]:
        if client.has_extn("8bitmime"):
            return list(options)
        return [option for option in options if not option.startswith("BODY=")]

    def _sort_recipients(self, mailfrom, rcpttos, mail_options
                         ) -> Union[str, Tuple[List[str], List[str]]]:
        """Ask Mailman which recipients are its own: (lists, others) or a reply."""
        try:
            client = self._lmtp_client()
        except (OSError, smtplib.SMTPException) as e:
            debug("cannot reach Mailman:", e)
            logger.warning("cannot reach Mailman's LMTP at %s:%s: %s",
                           self.mailman_lmtp_host, self.mailman_lmtp_port, e)
            return MAILMAN_UNAVAILABLE
        lists: List[str] = []
        others: List[str] = []
        try:
            code, text = client.mail(mailfrom, self._mail_options(client, mail_options))
            if code != 250:
                debug("Mailman refused the sender:", code, text)
                if 500 <= code <= 599:
                    return "%d %s" % (code, _text(text))
                return MAILMAN_UNAVAILABLE
            for rcpt in rcpttos:
                code, text = client.rcpt(rcpt)
                if 200 <= code <= 299:
                    lists.append(rcpt)
                elif 500 <= code <= 599:
                    others.append(rcpt)
                else:
                    debug("Mailman could not tell about", rcpt, code, text)
                    return MAILMAN_UNAVAILABLE
        except (OSError, smtplib.SMTPException) as e:
            debug("Mailman's LMTP failed:", e)
            logger.warning("Mailman's LMTP failed while sorting recipients: %s", e)
            return MAILMAN_UNAVAILABLE
        finally:
            self._quit_later(client)
        return lists, others

    def _relay_others(self, mailfrom, others, data, mail_options
                      ) -> Union[str, Refusals]:
        """Relay the non-list recipients: their refusals, or a reply to stop with."""
        debug("forwarding recips:", " ".join(others))
        if not others:
            return {}
        with relay_options(mail_options):
            refused = self._deliver(mailfrom, others, data)
        if refused:
            debug("we got refusals:", refused)
        reply = relay_reply(others, refused)
        if reply is not None and not reply.startswith("5"):
            # Unreachable, or some recipients refused for now: Mailman has
            # nothing yet, so the whole message is tried again (an upstream
            # recipient that took it may get a second copy, none loses it).
            return reply
        return refused

    def _lmtp_deliver(self, mailfrom, lists, message: bytes, mail_options
                      ) -> Dict[str, Tuple[int, object]]:
        """Give the message to Mailman; return the recipients it did not take.

        One transaction per recipient, so that each gets exactly one reply
        after DATA (RFC 2033 owes one per recipient, but Mailman 3 answers
        a defective message with a single line whatever their number).
        """
        failed: Dict[str, Tuple[int, object]] = {}
        try:
            client = self._lmtp_client()
        except (OSError, smtplib.SMTPException) as e:
            debug("cannot reach Mailman:", e)
            return {rcpt: (-1, str(e) or e.__class__.__name__) for rcpt in lists}
        try:
            for index, rcpt in enumerate(lists):
                debug("sending message to", rcpt)
                try:
                    reply = self._lmtp_transaction(client, mailfrom, rcpt, message,
                                                   mail_options)
                except (OSError, smtplib.SMTPException) as e:
                    for lost in lists[index:]:
                        failed[lost] = (-1, str(e) or e.__class__.__name__)
                    break
                if reply is not None:
                    failed[rcpt] = reply
        finally:
            self._quit_later(client)
        return failed

    def _lmtp_transaction(self, client, mailfrom, rcpt, message, mail_options
                          ) -> Optional[Tuple[int, object]]:
        """MAIL, RCPT, DATA for one recipient: None, or the refusal."""
        code, text = client.mail(mailfrom, self._mail_options(client, mail_options))
        if code == 250:
            code, text = client.rcpt(rcpt)
            if 200 <= code <= 299:
                # The final dot gets the long timeout, as upstream (see PureProxy).
                client.sock.settimeout(self.relay_data_timeout)
                try:
                    code, text = client.data(message)
                except smtplib.SMTPDataError as e:   # DATA itself refused
                    code, text = e.smtp_code, e.smtp_error
                else:
                    return None if 200 <= code <= 299 else (code, text)
                finally:
                    if client.sock is not None:
                        client.sock.settimeout(self.relay_timeout)
        client.rset()
        return code, text

    # -- Mailman 2, through its Python API (3.10's logic) ------------------------

    def _deliver_mailman2(self, api, mailfrom, rcpttos, data, mail_options
                          ) -> Optional[str]:
        utils, maillist, message_module = api
        listnames = []
        for rcpt in rcpttos:
            local = rcpt.lower().split("@")[0]
            parts = local.split("-")
            if len(parts) > 2:
                continue
            listname = parts[0]
            command = parts[1] if len(parts) == 2 else ""
            if not utils.list_exists(listname) or command not in _MAILMAN2_COMMANDS:
                continue
            listnames.append((rcpt, listname, command))
        taken = {rcpt for rcpt, _, _ in listnames}
        others = [rcpt for rcpt in rcpttos if rcpt not in taken]
        refused = self._relay_others(mailfrom, others, data, mail_options)
        if isinstance(refused, str):
            return refused
        if listnames:
            # 3.10 called Message.Message(file), which Mailman 2.1's class
            # (it takes no argument) cannot do; parse with the email package.
            if isinstance(data, str):
                msg = email.message_from_string(data, message_module.Message)
            else:
                msg = email.message_from_bytes(data, message_module.Message)
            # Mailman needs these; MTAs add them when the message lacks them.
            if not msg.get("from"):
                msg["From"] = mailfrom
            if not msg.get("date"):
                msg["Date"] = email.utils.formatdate(localtime=True)
            mlists = {}
            for rcpt, listname, command in listnames:
                debug("sending message to", rcpt)
                mlist = mlists.get(listname)
                if mlist is None:
                    mlist = mlists[listname] = maillist.MailList(listname, lock=0)
                _enqueue_mailman2(msg, mlist, command)
        if refused:
            logger.warning("upstream refused %d of %d recipients: %r",
                           len(refused), len(set(rcpttos)), refused)
        return relay_reply(rcpttos, refused)


MailmanProxy.__module__ = "smtpd_compat"


def _mailman2_api():
    """(Utils, MailList, Message) of an importable Mailman 2, else None."""
    try:
        from Mailman import MailList, Message, Utils
    except (ImportError, SyntaxError):
        # Absent, or Mailman 2's Python 2 source on this Python 3 path.
        return None
    if not hasattr(Utils, "list_exists"):
        return None
    return Utils, MailList, Message


def _enqueue_mailman2(msg, mlist, command: str) -> None:
    if command == "":
        msg.Enqueue(mlist, tolist=1)
    elif command == "admin":
        msg.Enqueue(mlist, toadmin=1)
    elif command == "owner":
        msg.Enqueue(mlist, toowner=1)
    elif command == "request":
        msg.Enqueue(mlist, torequest=1)
    else:
        # join/leave become subscribe/unsubscribe requests.  3.10 appended a
        # Subject to the shared message, so later recipients saw it too;
        # only this recipient's copy gets it here.
        request = copy.deepcopy(msg)
        del request["Subject"]
        request["Subject"] = "subscribe" if command == "join" else "unsubscribe"
        request.Enqueue(mlist, torequest=1)


def _quit_quietly(client: smtplib.SMTP) -> None:
    """End an upstream session whose outcome is already known."""
    try:
        if client.sock is not None:
            client.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        client.close()


def _with_from_and_date(message: bytes, mailfrom: str) -> bytes:
    """*message* (CRLF line ends) with ``From:``/``Date:`` added if missing."""
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[:end + 2]
    names = set()
    for line in head.split(b"\r\n"):
        match = _HEADER_NAME.match(line)
        if match:
            names.add(match.group(1).lower())
    added = b""
    if b"from" not in names and mailfrom and mailfrom != "<>":
        added += b"From: " + mailfrom.encode("utf-8") + b"\r\n"
    if b"date" not in names:
        added += b"Date: " + email.utils.formatdate(localtime=True).encode() + b"\r\n"
    return added + message


def _text(message: object) -> str:
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message).split()) or "Error"
