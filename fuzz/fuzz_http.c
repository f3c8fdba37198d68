/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for a whole transfer (src/hc_http.c over libcurl, with hc_inflate, hc_sink,
 * hc_multipart and hc_dicom behind it) against any answer a server can send: status lines,
 * 1xx answers before the final one, header blocks, chunked framing and trailers,
 * Content-Encoding and Transfer-Encoding, multipart bodies to a directory. The answer is served
 * from a thread of this process on 127.0.0.1 (an ephemeral port; loopback is all a CI network
 * namespace has), after the request has been read. An input is:
 *   byte 0     bits 0-1 where the body goes (memory, a file, a directory, a directory naming
 *              parts by UID), bit 2 gzip/deflate asked for, bit 3 HEAD, bit 4 max_response_bytes
 *              100 (else 1 MiB), bit 5 a compression ratio of 10, bit 6 caps on the sink,
 *              bit 7 a POST with a body
 *   the rest   the answer, byte for byte; the server then closes its side
 * Checked: no crash, leak or hang; a failure has a kind, a reason and a NUL-terminated message;
 * a success keeps the final answer's header block alone: it starts with a status line of HTTP's
 * grammar whose code libcurl read and ends at its first empty line (no trailer, no earlier
 * answer), and a sink's parts are files that exist; once the transfer is freed no file is left
 * in the directory but a file sink's file after a 2xx success, and no fd is left open.
 * Seeds: fuzz/corpus/http/.
 * Build: see scripts/fuzz, or
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc fuzz/fuzz_http.c src/hc_http.c \
 *     src/hc_body.c src/hc_sink.c src/hc_inflate.c src/hc_multipart.c src/hc_dicom.c \
 *     src/hc_file.c src/hc_buf.c -lcurl -lz -lcrypto -pthread -o /tmp/fuzz_http
 */
#define _GNU_SOURCE /* accept4, mkdtemp */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>

#include "hc_fuzz_leftovers.h"
#include "hc_http.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define HC_FUZZ_HTTP_WAIT_MS 5000
#define HC_FUZZ_HTTP_POST "hello"

/* What a process keeps across inputs: the listening socket and the sinks' directory, both
 * removed at exit (hc_fuzz_http_cleanup). */
static int hc_fuzz_http_listen_fd = -1;
static char hc_fuzz_http_url[64];
static char hc_fuzz_http_dir[512];

/* One answer to serve: the server thread's input and the connection it accepted. */
typedef struct hc_fuzz_http_srv {
    const unsigned char *answer;
    size_t len;
    size_t body_len;          /* bytes of request body to read after its header block */
    int fd;                   /* the accepted connection; closed once the transfer is over */
} hc_fuzz_http_srv;

static void hc_fuzz_http_cleanup(void)
{
    if (hc_fuzz_http_listen_fd >= 0)
        close(hc_fuzz_http_listen_fd);
    if (hc_fuzz_http_dir[0] != '\0') {
        hc_fuzz_dir_entries(hc_fuzz_http_dir, 1);
        rmdir(hc_fuzz_http_dir);
    }
    curl_global_cleanup();
}

/* Whether a connection to the listening socket at a goes through: in a network namespace whose
 * lo is down, binding works, connecting fails, and every input would wait for its connection. */
static int hc_fuzz_http_loopback_works(const struct sockaddr_in *a)
{
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), s = -1, ok;
    ok = c >= 0 && connect(c, (const struct sockaddr *)a, sizeof *a) == 0
         && (s = accept4(hc_fuzz_http_listen_fd, NULL, NULL, SOCK_CLOEXEC)) >= 0;
    if (c >= 0)
        close(c);
    if (s >= 0)
        close(s);
    return ok;
}

/* The listening socket, the directory and libcurl, once per process; without a loopback
 * interface the run stops here, saying so (a crash on the first input would blame the input). */
static void hc_fuzz_http_init(void)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    const char *tmp = getenv("TMPDIR");
    if (hc_fuzz_http_listen_fd >= 0)
        return;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        abort();
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    hc_fuzz_http_listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (hc_fuzz_http_listen_fd < 0
        || bind(hc_fuzz_http_listen_fd, (struct sockaddr *)&a, sizeof a) != 0
        || listen(hc_fuzz_http_listen_fd, 4) != 0
        || getsockname(hc_fuzz_http_listen_fd, (struct sockaddr *)&a, &alen) != 0
        || !hc_fuzz_http_loopback_works(&a)) {
        perror("fuzz_http: no connection to 127.0.0.1 (is lo up in this network namespace?)");
        exit(2);
    }
    snprintf(hc_fuzz_http_url, sizeof hc_fuzz_http_url, "http://127.0.0.1:%d/fuzz",
             ntohs(a.sin_port));
    snprintf(hc_fuzz_http_dir, sizeof hc_fuzz_http_dir, "%s/hc-fuzz-http-XXXXXX",
             tmp != NULL && *tmp ? tmp : "/tmp");
    if (mkdtemp(hc_fuzz_http_dir) == NULL) {
        perror("fuzz_http: mkdtemp");
        exit(2);
    }
    atexit(hc_fuzz_http_cleanup);
}

/* libFuzzer calls this before the first input: a missing loopback stops the run before any. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    hc_fuzz_http_init();
    return 0;
}

/* Whether fd is readable within the wait. */
static int hc_fuzz_http_ready(int fd)
{
    struct pollfd p;
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    return poll(&p, 1, HC_FUZZ_HTTP_WAIT_MS) > 0;
}

/* Reads the request (its header block, then body_len bytes), as a server would before it
 * answers: an answer sent early would race the request's own bytes. */
static void hc_fuzz_http_read_request(int fd, size_t body_len)
{
    char buf[8192];
    size_t have = 0;
    const char *end;
    for (;;) {
        ssize_t r;
        buf[have] = '\0';
        end = strstr(buf, "\r\n\r\n");
        if (end != NULL && have >= (size_t)(end + 4 - buf) + body_len)
            return;
        if (have == sizeof buf - 1 || !hc_fuzz_http_ready(fd))
            return;
        r = recv(fd, buf + have, sizeof buf - 1 - have, 0);
        if (r <= 0)
            return;
        have += (size_t)r;
    }
}

static void *hc_fuzz_http_serve(void *ud)
{
    hc_fuzz_http_srv *v = ud;
    size_t off = 0;
    if (!hc_fuzz_http_ready(hc_fuzz_http_listen_fd))
        return NULL;
    v->fd = accept4(hc_fuzz_http_listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (v->fd < 0)
        return NULL;
    hc_fuzz_http_read_request(v->fd, v->body_len);
    while (off < v->len) {
        ssize_t w = send(v->fd, v->answer + off, v->len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    shutdown(v->fd, SHUT_WR);
    return NULL;
}

/* The request that flags (byte 0) describe; target: room for a file sink's path. */
static void hc_fuzz_http_opts(unsigned flags, hc_transfer_opts *o, char *target, size_t tlen)
{
    memset(o, 0, sizeof *o);
    o->method = (flags & 8) ? "HEAD" : (flags & 128) ? "POST" : "GET";
    o->url = hc_fuzz_http_url;
    o->timeout_ms = HC_FUZZ_HTTP_WAIT_MS;
    o->max_response_bytes = (flags & 16) ? 100 : 1 << 20;
    o->compressed = (flags & 4) != 0;
    o->max_compression_ratio = (flags & 32) ? 10 : 0;
    o->proxy = ""; /* never the environment's */
    snprintf(target, tlen, "%s/out", hc_fuzz_http_dir);
    if ((flags & 3) == 1) {
        o->sink_kind = HC_SINK_FILE;
        o->sink_path = target;
    } else if ((flags & 3) != 0) {
        o->sink_kind = HC_SINK_DIR;
        o->sink_path = hc_fuzz_http_dir;
        o->sink_name_by_uid = (flags & 3) == 3;
    }
    if (flags & 64) {
        o->sink_max_bytes = 5000;
        o->sink_max_parts = 3;
        o->sink_max_part_bytes = 2000;
    }
}

/* The code of the status line at the start of h, as RFC 9112 writes one (or libcurl one of HTTP/2,
 * "HTTP/2 200 "): HTTP/ DIGIT [ "." DIGIT ] SP 3DIGIT, then SP, CR or LF; -1 for any other start
 * (libcurl took many such a line for "HTTP/1.0 200"). */
static long hc_fuzz_http_status_line(const hc_buf *h)
{
    const char *p = h->data;
    size_t i = 6;
    if (h->len < 11 || memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9')
        return -1;
    if (p[6] == '.' && p[7] >= '0' && p[7] <= '9')
        i = 8;
    if (h->len < i + 5 || p[i] != ' ' || (p[i + 4] != ' ' && p[i + 4] != '\r' && p[i + 4] != '\n'))
        return -1;
    if (p[i + 1] < '0' || p[i + 1] > '9' || p[i + 2] < '0' || p[i + 2] > '9' || p[i + 3] < '0'
        || p[i + 3] > '9')
        return -1;
    return (p[i + 1] - '0') * 100 + (p[i + 2] - '0') * 10 + (p[i + 3] - '0');
}

/* Where the first empty line (CRLF or a bare LF, as libcurl takes them) of h ends; 0: none. */
static size_t hc_fuzz_http_block_end(const hc_buf *h)
{
    size_t i;
    for (i = 0; i + 1 < h->len; i++) {
        if (h->data[i] != '\n')
            continue;
        if (h->data[i + 1] == '\n')
            return i + 2;
        if (h->data[i + 1] == '\r' && i + 2 < h->len && h->data[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* A success: the final answer's header block alone, and the sink's parts on disk. */
static void hc_fuzz_http_check_ok(hc_transfer *t)
{
    const hc_buf *h = hc_transfer_headers(t);
    hc_sink *k = hc_transfer_sink(t);
    size_t i;
    long code = hc_fuzz_http_status_line(h);
    if (code < 0 || code != hc_transfer_http_status(t) || hc_fuzz_http_block_end(h) != h->len) {
        fprintf(stderr, "status %ld; not an HTTP status line and the final answer's header block "
                "alone: %.*s\n",
                hc_transfer_http_status(t), (int)h->len, h->data != NULL ? h->data : "");
        abort();
    }
    for (i = 0; k != NULL && i < hc_sink_nparts(k); i++)
        if (access(hc_sink_part(k, i)->path, F_OK) != 0) {
            fprintf(stderr, "part %lu has no file %s\n", (unsigned long)i,
                    hc_sink_part(k, i)->path);
            abort();
        }
}

/* data is owned by libFuzzer; the transfer, its files and the connection end here. */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    hc_fuzz_http_srv srv;
    hc_transfer_opts o;
    hc_session *s;
    hc_transfer *t;
    hc_failure f;
    hc_body *body = NULL;
    pthread_t server;
    char err[256], target[600];
    unsigned flags;
    int fds, failed, kept;
    if (size < 1)
        return 0;
    hc_fuzz_http_init();
    flags = data[0];
    fds = hc_fuzz_open_fds();
    hc_fuzz_http_opts(flags, &o, target, sizeof target);
    if (flags & 128) {
        body = hc_body_new(); /* adopted by the transfer */
        if (body == NULL
            || hc_body_add_mem(body, HC_FUZZ_HTTP_POST, strlen(HC_FUZZ_HTTP_POST)) != 0)
            abort();
    }
    srv.answer = data + 1;
    srv.len = size - 1;
    srv.body_len = body != NULL ? strlen(HC_FUZZ_HTTP_POST) : 0;
    srv.fd = -1;
    if (pthread_create(&server, NULL, hc_fuzz_http_serve, &srv) != 0)
        abort();
    t = hc_transfer_new(&o, NULL, 0, body, err, sizeof err);
    s = hc_session_new();
    if (t == NULL || s == NULL || hc_session_start(s, t) != 0)
        abort();
    while (!hc_transfer_done(t))
        if (hc_session_poll(s, 1000) < 0)
            abort();
    if (hc_session_next_done(s) != t)
        abort();
    failed = hc_transfer_failure(t, &f);
    if (failed && (f.kind == NULL || f.status == NULL
                   || memchr(f.message, '\0', sizeof f.message) == NULL))
        abort();
    if (!failed)
        hc_fuzz_http_check_ok(t);
    kept = !failed && (flags & 3) == 1 && hc_sink_mode(hc_transfer_sink(t)) == HC_SINK_TO_FILE;
    hc_transfer_free(t);
    hc_session_free(s);
    pthread_join(server, NULL);
    if (srv.fd >= 0)
        close(srv.fd);
    if (kept && access(target, F_OK) != 0) {
        fprintf(stderr, "the file sink's %s is missing\n", target);
        abort();
    }
    if (hc_fuzz_dir_entries(hc_fuzz_http_dir, 0) != kept) {
        fprintf(stderr, "%d files left in %s\n", hc_fuzz_dir_entries(hc_fuzz_http_dir, 1) - kept,
                hc_fuzz_http_dir);
        abort();
    }
    hc_fuzz_dir_entries(hc_fuzz_http_dir, 1);
    if (hc_fuzz_open_fds() != fds) {
        fprintf(stderr, "fds: %d before, %d after\n", fds, hc_fuzz_open_fds());
        abort();
    }
    return 0;
}
