/*
 * STARTTLS load client for bench_tls.py (issue 15): every message on a new
 * TCP connection with a full TLS handshake, SESSIONS connections at a time.
 *
 *     smtp_tls_load HOST PORT CAFILE MESSAGES SESSIONS
 *
 * Each session sends, in lockstep (it waits for every reply, and reads every
 * line of a multi-line one), the dialogue of bench_tls.py's Python client:
 *
 *     220 <- connect; EHLO -> 250; STARTTLS -> 220; handshake (the server's
 *     certificate verified against CAFILE, name "localhost", sent as SNI);
 *     EHLO -> 250; MAIL FROM -> 250; RCPT TO -> 250; DATA -> 354; 1 KiB
 *     body and "." -> 250; QUIT -> 221; our close_notify, then the server's
 *     close_notify (or the end of the connection) awaited; close.
 *
 * One thread runs every session on non-blocking sockets and one epoll set,
 * as Python's asyncio client does.  On loopback the server's send() pays for
 * waking a client that sleeps: a thread per session with blocking sockets,
 * tried first, slept at every reply and cost smtpd_compat about 170 us of
 * CPU per message, this loop about 70 us (see benchmarks/README.md).  No
 * session is ever resumed: the client keeps no session cache and asks for no
 * tickets.  Any unexpected reply or error ends the program with status 1 and
 * a line on stderr.  On success it prints one line: messages, seconds, msg/s.
 *
 * Build: cc -O2 -o smtp_tls_load smtp_tls_load.c -lssl -lcrypto
 * (OpenSSL 3 headers: Debian's libssl-dev).
 */

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define LINE_MAX_OCTETS 4096
#define STALL_SECONDS 60

enum action { SEND_AND_EXPECT, HANDSHAKE, END_TLS, DONE };

/* One step of the dialogue: what to do, what to send, which reply to expect. */
struct step {
    enum action action;
    const char *text; /* NULL: the message body */
    const char *code;
};

static const struct step dialogue[] = {
    {SEND_AND_EXPECT, "", "220"},
    {SEND_AND_EXPECT, "EHLO bench.example\r\n", "250"},
    {SEND_AND_EXPECT, "STARTTLS\r\n", "220"},
    {HANDSHAKE, "", ""},
    {SEND_AND_EXPECT, "EHLO bench.example\r\n", "250"},
    {SEND_AND_EXPECT, "MAIL FROM:<a@example.org>\r\n", "250"},
    {SEND_AND_EXPECT, "RCPT TO:<b@example.org>\r\n", "250"},
    {SEND_AND_EXPECT, "DATA\r\n", "354"},
    {SEND_AND_EXPECT, NULL, "250"},
    {SEND_AND_EXPECT, "QUIT\r\n", "221"},
    {END_TLS, "", ""},
    {DONE, "", ""},
};

/* One connection: where it is in the dialogue, and its unsent and unread bytes. */
struct connection {
    int fd;
    SSL *tls;
    const struct step *step;
    const char *out;
    size_t out_length;
    int sent_close_notify;
    char buffer[LINE_MAX_OCTETS];
    size_t start, end;
};

enum progress { BLOCKED, FINISHED };

static const char *host, *port;
static struct addrinfo *address;
static SSL_CTX *context;
static int poller;
static long unstarted, unfinished;

/* bench_tls.py's SMALL_BODY (a subject and 13 lines of 78 "x") and the final dot. */
static char body[2048];
static size_t body_length;

static void die(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fputs("smtp_tls_load: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    ERR_print_errors_fp(stderr);
    exit(1);
}

/*
 * Sockets are watched for input only: the writes are small and go at once.
 * Should one have to wait, the socket is watched for output too from then on.
 */
static void watch_output(struct connection *c)
{
    struct epoll_event event = {EPOLLIN | EPOLLOUT | EPOLLET, {.ptr = c}};
    if (epoll_ctl(poller, EPOLL_CTL_MOD, c->fd, &event) < 0)
        die("epoll_ctl: %s", strerror(errno));
}

/* After a TLS call failed: 1 if it only has to wait for the socket, else the end. */
static int tls_would_block(struct connection *c, int result, const char *what)
{
    int error = SSL_get_error(c->tls, result);
    if (error == SSL_ERROR_WANT_WRITE)
        watch_output(c);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE)
        return 1;
    if (error == SSL_ERROR_ZERO_RETURN)
        die("%s: the server ended TLS", what);
    die("%s failed (SSL error %d, %s)", what, error,
        error == SSL_ERROR_SYSCALL ? strerror(errno) : "see below");
    return 0;
}

/* Sends what is left of c->out; 0 when it has to wait for the socket. */
static int send_pending(struct connection *c)
{
    while (c->out_length > 0) {
        size_t sent;
        if (c->tls) {
            int result = SSL_write_ex(c->tls, c->out, c->out_length, &sent);
            if (!result && tls_would_block(c, result, "TLS write"))
                return 0;
        } else {
            ssize_t result = send(c->fd, c->out, c->out_length, MSG_NOSIGNAL);
            if (result < 0 && errno == EAGAIN) {
                watch_output(c);
                return 0;
            }
            if (result < 0)
                die("send: %s", strerror(errno));
            sent = (size_t)result;
        }
        c->out += sent;
        c->out_length -= sent;
    }
    return 1;
}

/* Reads more input into c->buffer; 0 when it has to wait for the socket. */
static int receive(struct connection *c)
{
    size_t got;
    if (c->start > 0) {
        memmove(c->buffer, c->buffer + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
    }
    if (c->end == sizeof c->buffer)
        die("reply line longer than %d octets", LINE_MAX_OCTETS);
    if (c->tls) {
        int result = SSL_read_ex(c->tls, c->buffer + c->end, sizeof c->buffer - c->end, &got);
        if (!result && tls_would_block(c, result, "TLS read"))
            return 0;
    } else {
        ssize_t result = recv(c->fd, c->buffer + c->end, sizeof c->buffer - c->end, 0);
        if (result < 0 && errno == EAGAIN)
            return 0;
        if (result < 0)
            die("recv: %s", strerror(errno));
        if (result == 0)
            die("connection closed by the server");
        got = (size_t)result;
    }
    c->end += got;
    return 1;
}

/* What a step sends, for error messages. */
static const char *what(const struct step *step)
{
    if (step->text == NULL)
        return "the message";
    return *step->text ? step->text : "connect";
}

/* Takes one whole reply off the buffer and checks its code; 0 if not all here yet. */
static int take_reply(struct connection *c)
{
    const char *code = c->step->code;
    size_t at = c->start;
    for (;;) {
        char *line = c->buffer + at;
        char *newline = memchr(line, '\n', c->end - at);
        size_t length;
        if (newline == NULL)
            return 0;
        length = (size_t)(newline - line) + 1;
        if (length < 4 || memcmp(line, code, 3) != 0)
            die("after %.*s expected %s, got \"%.*s\"", (int)strcspn(what(c->step), "\r"),
                what(c->step), code, (int)(length > 200 ? 200 : length), line);
        at += length;
        if (line[3] != '-') {
            c->start = at;
            return 1;
        }
    }
}

static void begin_step(struct connection *c)
{
    c->out = c->step->text ? c->step->text : body;
    c->out_length = c->step->text ? strlen(c->step->text) : body_length;
}

static int start_tls(struct connection *c)
{
    int result;
    if (c->tls == NULL) {
        if (c->start != c->end)
            die("data after STARTTLS's 220, before the handshake");
        c->tls = SSL_new(context);
        if (c->tls == NULL || !SSL_set1_host(c->tls, "localhost") ||
            !SSL_set_tlsext_host_name(c->tls, "localhost") || !SSL_set_fd(c->tls, c->fd))
            die("TLS setup failed");
    }
    result = SSL_connect(c->tls);
    if (result == 1)
        return 1;
    if (SSL_get_verify_result(c->tls) != X509_V_OK)
        die("certificate not accepted: %s",
            X509_verify_cert_error_string(SSL_get_verify_result(c->tls)));
    tls_would_block(c, result, "TLS handshake");
    return 0;
}

/* Our close_notify, then the server's (or its end of the connection). */
static int end_tls(struct connection *c)
{
    char scratch[256];
    size_t got;
    int result;
    if (!c->sent_close_notify) {
        result = SSL_shutdown(c->tls);
        if (result < 0) {
            int error = SSL_get_error(c->tls, result);
            if (error == SSL_ERROR_WANT_WRITE || error == SSL_ERROR_WANT_READ)
                return !tls_would_block(c, result, "TLS shutdown");
            ERR_clear_error(); /* the server is gone already: as good as its close_notify */
            return 1;
        }
        c->sent_close_notify = 1;
        if (result == 1)
            return 1;
    }
    for (;;) {
        result = SSL_read_ex(c->tls, scratch, sizeof scratch, &got);
        if (!result) {
            int error = SSL_get_error(c->tls, result);
            if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE)
                return !tls_would_block(c, result, "TLS read");
            ERR_clear_error(); /* close_notify, or the connection's end: both mean done */
            return 1;
        }
        /* nothing is expected after 221: whatever comes is dropped */
    }
}

/* Runs the dialogue as far as the socket lets it. */
static enum progress advance(struct connection *c)
{
    for (;;) {
        switch (c->step->action) {
        case SEND_AND_EXPECT:
            if (!send_pending(c))
                return BLOCKED;
            while (!take_reply(c))
                if (!receive(c))
                    return BLOCKED;
            break;
        case HANDSHAKE:
            if (!start_tls(c))
                return BLOCKED;
            break;
        case END_TLS:
            if (!end_tls(c))
                return BLOCKED;
            break;
        case DONE:
            return FINISHED;
        }
        c->step++;
        begin_step(c);
    }
}

static void open_connection(struct connection *c)
{
    static const int one = 1;
    memset(c, 0, offsetof(struct connection, buffer));
    c->start = c->end = 0;
    c->step = dialogue;
    begin_step(c);
    c->fd = socket(address->ai_family, address->ai_socktype | SOCK_NONBLOCK,
                   address->ai_protocol);
    if (c->fd < 0)
        die("socket: %s", strerror(errno));
    /* As asyncio's transports: each reply and command leaves at once. */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, address->ai_addr, address->ai_addrlen) < 0 && errno != EINPROGRESS)
        die("connect to %s:%s: %s", host, port, strerror(errno));
    {
        /* A failed connect shows as EPOLLERR, reported whatever is watched. */
        struct epoll_event event = {EPOLLIN | EPOLLET, {.ptr = c}};
        if (epoll_ctl(poller, EPOLL_CTL_ADD, c->fd, &event) < 0)
            die("epoll_ctl: %s", strerror(errno));
    }
    unstarted--;
}

static void close_connection(struct connection *c)
{
    SSL_free(c->tls);
    c->tls = NULL;
    close(c->fd); /* also leaves the epoll set */
    unfinished--;
}

/* An event on a socket (a failed connect shows as recv's error). */
static void handle(struct connection *c)
{
    if (advance(c) == FINISHED) {
        close_connection(c);
        if (unstarted > 0)
            open_connection(c);
    }
}

static void run(long sessions)
{
    struct connection *connections = calloc((size_t)sessions, sizeof *connections);
    struct epoll_event *events = calloc((size_t)sessions, sizeof *events);
    long i;
    if (connections == NULL || events == NULL)
        die("out of memory");
    poller = epoll_create1(0);
    if (poller < 0)
        die("epoll_create1: %s", strerror(errno));
    for (i = 0; i < sessions && unstarted > 0; i++)
        open_connection(&connections[i]);
    while (unfinished > 0) {
        int ready = epoll_wait(poller, events, (int)sessions, STALL_SECONDS * 1000);
        if (ready < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        if (ready == 0)
            die("no progress for %d s (%ld messages not finished)", STALL_SECONDS, unfinished);
        for (i = 0; i < ready; i++)
            handle(events[i].data.ptr);
    }
    close(poller);
    free(events);
    free(connections);
}

static void make_body(void)
{
    size_t i;
    body_length = (size_t)sprintf(body, "Subject: bench\r\n\r\n");
    for (i = 0; i < 13; i++) {
        memset(body + body_length, 'x', 78);
        memcpy(body + body_length + 78, "\r\n", 2);
        body_length += 80;
    }
    memcpy(body + body_length, ".\r\n", 3);
    body_length += 3;
}

static void make_context(const char *cafile)
{
    context = SSL_CTX_new(TLS_client_method());
    if (context == NULL)
        die("SSL_CTX_new failed");
    if (SSL_CTX_load_verify_locations(context, cafile, NULL) != 1)
        die("cannot load CA file %s", cafile);
    SSL_CTX_set_verify(context, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION);
    SSL_CTX_set_session_cache_mode(context, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(context, SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION);
    /* Whole reads, not a header and then a body per record: as asyncio's MemoryBIO. */
    SSL_CTX_set_read_ahead(context, 1);
}

static long positive(const char *text, const char *what)
{
    char *end;
    long value = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || value <= 0)
        die("%s must be a positive integer, not \"%s\"", what, text);
    return value;
}

int main(int argc, char **argv)
{
    struct addrinfo hints;
    struct timespec started, ended;
    long messages, sessions;
    double seconds;
    int error;

    if (argc != 6) {
        fprintf(stderr, "usage: %s HOST PORT CAFILE MESSAGES SESSIONS\n", argv[0]);
        return 2;
    }
    host = argv[1];
    port = argv[2];
    messages = positive(argv[4], "MESSAGES");
    sessions = positive(argv[5], "SESSIONS");
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    error = getaddrinfo(host, port, &hints, &address);
    if (error != 0)
        die("%s:%s: %s", host, port, gai_strerror(error));
    signal(SIGPIPE, SIG_IGN); /* a server gone shows as a write error, not our end */
    make_body();
    make_context(argv[3]);
    unstarted = unfinished = messages;
    clock_gettime(CLOCK_MONOTONIC, &started);
    run(sessions);
    clock_gettime(CLOCK_MONOTONIC, &ended);
    seconds = (double)(ended.tv_sec - started.tv_sec) +
              (double)(ended.tv_nsec - started.tv_nsec) / 1e9;
    printf("%ld messages in %.3f s: %.1f msg/s\n", messages, seconds, messages / seconds);
    SSL_CTX_free(context);
    freeaddrinfo(address);
    return 0;
}
