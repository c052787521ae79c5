#! /usr/bin/env python3
"""An RFC 5321 smtp proxy with optional RFC 1870 and RFC 6531 extensions.

Usage: %(program)s [options] [localhost:localport [remotehost:remoteport]]

Options:

    --nosetuid
    -n
        This program generally tries to setuid `nobody', unless this flag is
        set.  The setuid call will fail if this program is not run as root (in
        which case, use this flag).

    --version
    -V
        Print the version number and exit.

    --class classname
    -c classname
        Use `classname' as the concrete SMTP proxy class.  Uses `PureProxy' by
        default.

    --size limit
    -s limit
        Restrict the total size of the incoming message to "limit" number of
        bytes via the RFC 1870 SIZE extension.  Defaults to 33554432 bytes.

    --smtputf8
    -u
        Enable the SMTPUTF8 extension and behave as an RFC 6531 smtp proxy.

    --debug
    -d
        Turn on debugging prints.

    --help
    -h
        Print this message and exit.

Version: %(__version__)s

If localhost is not given then `localhost' is used, and if localport is not
given then 8025 is used.  If remotehost is not given then `localhost' is used,
and if remoteport is not given, then 25 is used.

smtpd_compat also takes:

    --timeout seconds
        Disconnect a client that sends no complete line for this long
        (default 300; 0 waits forever).

    --max-connections count
        Serve at most this many clients at once; later ones get a 421.

    --max-recipients count
        Accept at most this many recipients per message; later ones get
        a 452 (default 1000; 0 for no limit).

    --proxy-protocol v1|v2|any
        Expect HAProxy's PROXY protocol header (send-proxy, send-proxy-v2)
        before each session; the client it names becomes the peer.
        Connections without a valid header are closed unanswered.

    --proxy-trusted CIDR[,CIDR...]
        Take the PROXY header only from these networks (default: loopback
        only, 127.0.0.0/8 and ::1).

    --workers count
        Serve from this many processes, restarted if they die; SIGTERM
        or SIGINT stops them all.  Workers share nothing: limits such as
        --max-connections count per worker.

    --hostname name
        Give this host name in the greeting, the HELO/EHLO replies and
        the 421s instead of the machine's fully qualified domain name.

    --maildir directory
        With -c MaildirServer: deliver each message as one file into this
        Maildir (created if missing), after Return-Path, Delivered-To and
        X-Peer header lines.

    --pipe command
        With -c PipeServer: pipe each message into this command, split
        into words like a shell would but run without one.  {sender} and
        {recipient} in it are replaced by the envelope's addresses; it runs
        once per recipient when it names {recipient}, else once per message.
        Exit status 0 answers 250, 75 (EX_TEMPFAIL) 451, anything else 554.

    --pipe-timeout seconds
        Kill a --pipe command that has not exited after this many seconds
        and answer 451 (default 600).

    --auth-file file
        Offer AUTH (PLAIN, LOGIN, CRAM-MD5) and accept the logins in this
        file: one login:password per line (the password is everything
        after the first colon); blank lines and lines starting with #
        are ignored.  AUTH is offered only over TLS, so this needs
        --tls-cert, or --auth-plaintext.

    --require-auth
        Refuse MAIL (530) until the client has authenticated.  Needs
        --auth-file (or a -c class that checks logins itself).

    --auth-plaintext
        Allow AUTH on a connection without TLS (for a test server on
        loopback; passwords then cross the network readable).

    --chunking
        Offer CHUNKING (RFC 3030): clients may send messages in BDAT
        chunks instead of DATA.

    --lmtp
        Speak LMTP (RFC 2033) instead of SMTP: LHLO, and one reply per
        recipient after each message.  localhost:localport may then be
        an absolute path, a UNIX socket made there (and removed on exit).

    --tls-cert file
        Offer STARTTLS (RFC 3207) with this PEM certificate (chain); the
        file may hold the private key too.

    --tls-key file
        The PEM private key of --tls-cert, if not in that file.

    --smtps
        Implicit TLS (RFC 8314, usually port 465): TLS from the first
        byte, the greeting after the handshake.  Needs --tls-cert.

    --require-starttls
        Answer 530 to every command but EHLO, NOOP, QUIT, HELP and
        STARTTLS until the client has switched to TLS.  Needs --tls-cert.

    --max-messages count
        Accept at most this many messages per connection; the next MAIL
        gets a 421 and the connection ends (default: no limit).

    --command-call-limit count
        Let one connection send each command at most this many times; one
        more gets a 421 and the connection ends (default: no limit).

    --max-errors count
        End a connection with a 421 after this many commands answered
        with an error (default 20; 0 for no limit).

    --modern
        Offer every ESMTP extension below, and --chunking (off by
        default, as in smtpd).

    --pipelining
        Offer PIPELINING (RFC 2920): replies to a group of commands go out
        together; input sent behind a refused DATA ends the session.

    --enhanced-status-codes
        Offer ENHANCEDSTATUSCODES (RFC 2034): replies carry codes such as
        "250 2.1.0 OK".

    --dsn
        Offer DSN (RFC 3461): MAIL takes RET and ENVID, RCPT takes NOTIFY
        and ORCPT, and they are handed to process_message.

    --strict-line-endings
        Refuse a bare LF or CR in a command or a message (Postfix's
        smtpd_forbid_bare_newline) and end the session.

    Without --size, messages are limited to 33554432 bytes as said above;
    --size 0 takes messages of any size.

    An IPv6 address is written in brackets: [::1]:8025.  An empty host
    (:8025) means all interfaces, IPv6 and IPv4.

    Started by systemd socket activation (LISTEN_FDS), the server serves
    the socket it was passed and binds nothing.
"""

# smtpd_compat is CPython's smtpd module (3.11, plus 3.10's MailmanProxy)
# for every Python from 3.8 on.  This module is its public namespace: the
# names, module globals and docstring (the usage text) of smtpd.  The code
# lives in the private modules; they read the patchable globals below
# (DEBUGSTREAM, socket, __version__, NEWLINE, program) from here at call time.

import collections  # part of smtpd's namespace
import errno
import getopt
import os
import socket  # tests replace smtpd.socket with a mock
import sys
import time
from warnings import warn

from ._asyncore import asynchat, asyncore

program = sys.argv[0]
__version__ = "Python SMTP proxy version 0.3"


class Devnull:
    """A stream that discards what is written: the default DEBUGSTREAM."""

    def write(self, msg):
        pass

    def flush(self):
        pass


DEBUGSTREAM = Devnull()
NEWLINE = "\n"
COMMASPACE = ", "

from ._channel import DATA_SIZE_DEFAULT, SMTPChannel
from ._cli import Options, parseargs, usage
from ._loop import loop
from ._mailman import MailmanProxy
from ._proxy import PureProxy
from ._server import DebuggingServer, SMTPServer

__all__ = [
    "SMTPChannel", "SMTPServer", "DebuggingServer", "PureProxy", "MailmanProxy",
    "loop",
]


def __getattr__(name):
    """``EMPTYSTRING``, Python 2's smtpd global, for code that still imports it.

    secure-smtpd does.  It is served here rather than defined so that the
    module's visible names stay smtpd 3.11's (CPython's ``test__all__``).
    """
    if name == "EMPTYSTRING":
        return ""
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
