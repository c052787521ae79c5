"""Every reply the server sends, as text without the CRLF.

The strings are protocol facts: the ones CPython 3.11's smtpd sends are kept
byte for byte.  Replies that smtpd_compat adds (its fixes) are marked.
Templates use ``%`` formatting with the names given beside them.
"""

# Connection
GREETING = "220 %(fqdn)s %(version)s"
BYE = "221 Bye"

# Generic
OK = "250 OK"
BAD_SYNTAX = "500 Error: bad syntax"
LINE_TOO_LONG = "500 Error: line too long"
UNRECOGNIZED = '500 Error: command "%(command)s" not recognized'
INTERNAL_CONFUSION = "451 Internal confusion"

# HELO / EHLO
HELO_OK = "250 %(fqdn)s"
DUPLICATE_HELO = "503 Duplicate HELO/EHLO"
EHLO_FIRST_LINE = "250-%(fqdn)s"
EHLO_SIZE = "250-SIZE %(limit)s"
EHLO_8BITMIME = "250-8BITMIME"
EHLO_SMTPUTF8 = "250-SMTPUTF8"
EHLO_LAST_LINE = "250 HELP"

# Syntax replies: "501 Syntax: <syntax>" or "250 Syntax: <syntax>" for HELP
SYNTAX_ERROR = "501 Syntax: %(syntax)s"
HELP_SYNTAX = "250 Syntax: %(syntax)s"
HELP_LIST = "250 Supported commands: %(commands)s"
HELP_UNKNOWN = "501 Supported commands: %(commands)s"

# Transaction
SEND_HELO_FIRST = "503 Error: send HELO first"
NESTED_MAIL = "503 Error: nested MAIL command"
NEED_MAIL = "503 Error: need MAIL command"
NEED_RCPT = "503 Error: need RCPT command"
BAD_BODY = "501 Error: BODY can only be one of 7BIT, 8BITMIME"
SMTPUTF8_TAKES_NO_ARGUMENTS = "501 Error: SMTPUTF8 takes no arguments"
SIZE_EXCEEDED = "552 Error: message size exceeds fixed maximum message size"
MAIL_PARAMS_UNKNOWN = "555 MAIL FROM parameters not recognized or not implemented"
RCPT_PARAMS_UNKNOWN = "555 RCPT TO parameters not recognized or not implemented"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
TOO_MUCH_DATA = "552 Error: Too much mail data"

# VRFY / EXPN
CANNOT_VRFY = "252 Cannot VRFY user, but will accept message and attempt delivery"
COULD_NOT_VRFY = "502 Could not VRFY %(arg)s"
EXPN_NOT_IMPLEMENTED = "502 EXPN not implemented"

# Added by smtpd_compat (see Lib-compat-notes.md)
UNDECODABLE_LINE = "500 Error: command line is not valid UTF-8"
UNDECODABLE_DATA = "554 Error: message data is not valid UTF-8"
HANDLER_FAILED = "451 Requested action aborted: local error in processing"
IDLE_TIMEOUT = "421 %(fqdn)s Error: timeout exceeded, closing connection"
TOO_MANY_CONNECTIONS = "421 %(fqdn)s Error: too many connections, try again later"
SHUTTING_DOWN = "421 %(fqdn)s Service shutting down, closing connection"
RELAY_UNAVAILABLE = "451 Error: upstream server unavailable, try again later"
MAILMAN_UNAVAILABLE = "451 Error: Mailman unavailable, try again later"
# Limits and non-SMTP clients, in Postfix's words (see Lib-compat-notes.md)
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_ERRORS = "421 4.7.0 %(fqdn)s Error: too many errors"
NOT_SMTP = "221 2.7.0 Error: I can break rules, too. Goodbye."
# CHUNKING (RFC 3030) and LMTP (RFC 2033), off unless asked for
EHLO_CHUNKING = "250-CHUNKING"
CHUNK_RECEIVED = "250 OK: %(size)d octets received"
DATA_AFTER_BDAT = "503 Error: DATA after BDAT in the same transaction"

# TLS (issue 15; see _tls and Lib-compat-notes.md): Postfix's wording
EHLO_STARTTLS = "250-STARTTLS"
READY_FOR_TLS = "220 2.0.0 Ready to start TLS"
MUST_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first"
TLS_ALREADY_ACTIVE = "503 5.5.1 Error: TLS already active"
STARTTLS_SYNTAX = "501 5.5.4 Syntax: STARTTLS"
STARTTLS_IN_TRANSACTION = "503 5.5.1 Error: MAIL transaction in progress"
# Limits of one connection (see SMTPServer.max_messages, command_call_limit)
TOO_MANY_MESSAGES = "421 4.7.0 %(fqdn)s Error: too many messages in one connection"
TOO_MANY_CALLS = "421 4.7.0 %(command)s sent too many times"
# ESMTP extensions (see _extensions; each only when its extension is on)
BAD_DSN_PARAMETER = "501 Error: bad %(keyword)s parameter syntax"
BARE_LINE_ENDING = "550 %(fqdn)s Error: bare <CR> or <LF> received"
PIPELINING_SYNCHRONIZATION = "554 5.5.0 Error: SMTP protocol synchronization"

# The usual text of a reply code that process_message returned as an int
# (RFC 5321, section 4.2.2); a code not listed gets its class's text below.
STANDARD_TEXTS = {
    250: "OK",
    251: "User not local; will forward",
    252: "Cannot VRFY user, but will accept message and attempt delivery",
    421: "Service not available, closing transmission channel",
    450: "Requested mail action not taken: mailbox unavailable",
    451: "Requested action aborted: local error in processing",
    452: "Requested action not taken: insufficient system storage",
    550: "Requested action not taken: mailbox unavailable",
    551: "User not local",
    552: "Requested mail action aborted: exceeded storage allocation",
    553: "Requested action not taken: mailbox name not allowed",
    554: "Transaction failed",
}
CLASS_TEXTS = {
    "2": "OK",
    "3": "Intermediate reply",
    "4": "Temporary failure",
    "5": "Permanent failure",
}

# Texts of PipeServer's replies after DATA (see _delivery.reply_for_outcome);
# the code comes from the command's exit status.
PIPE_TEMPFAIL = "4.3.0 Delivery command failed temporarily, try again later"
PIPE_TIMED_OUT = "4.3.0 Delivery command timed out, try again later"
PIPE_KILLED = "4.3.0 Delivery command killed by signal %(signal)d, try again later"
PIPE_FAILED = "5.3.0 Delivery command failed with exit status %(status)d"
# AUTH (RFC 4954), added by smtpd_compat when the server checks credentials
# (see _auth and Lib-compat-notes.md)
EHLO_AUTH = "250-AUTH %(mechanisms)s"
AUTH_CHALLENGE = "334 %(challenge)s"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_TEMPORARY_FAILURE = "454 4.7.0 Temporary authentication failure"
AUTH_TOO_WEAK = "534 5.7.9 Authentication mechanism is too weak"
AUTH_ENCRYPTION_REQUIRED = (
    "538 5.7.11 Encryption required for requested authentication mechanism")
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_UNKNOWN_MECHANISM = "504 5.5.4 Unrecognized authentication type"
AUTH_NO_INITIAL_RESPONSE = "501 5.5.4 This mechanism takes no initial response"
AUTH_CANCELLED = "501 5.7.0 Authentication cancelled"
AUTH_UNDECODABLE = "501 5.5.2 Cannot decode response"
AUTH_EHLO_FIRST = "503 5.5.1 Error: send EHLO first"
AUTH_TWICE = "503 5.5.1 Error: already authenticated"
AUTH_IN_TRANSACTION = "503 5.5.1 Error: MAIL transaction in progress"
AUTH_TOO_MANY_FAILURES = "421 4.7.0 %(fqdn)s Error: too many failed authentications"
