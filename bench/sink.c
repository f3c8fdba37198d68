/* SPDX-License-Identifier: MIT */
/* bench/sink: the discard server the benchmarks send to. It speaks just enough HTTP/1.1 for real
 * STOW-RS clients (keep-alive, Content-Length or chunked bodies, "Expect: 100-continue"), reads
 * every body byte before it answers, splits multipart/related bodies into parts, probes the
 * start of each part with the project's own DICOM probe (src/hc_dicom.c, compiled in) and
 * answers a DICOM JSON Store response listing each part's SOP Instance UID, so clients that
 * check the answer accept it. It keeps nothing but counters: GET /stats returns them as JSON and
 * they are printed on stderr when the sink gets SIGINT or SIGTERM. One thread per connection;
 * it binds 127.0.0.1 only; the URL it listens on is the first line of stdout.
 *
 *   cc -O2 -std=c99 -pthread -Isrc bench/sink.c src/hc_dicom.c -lz -o sink
 *   sink [--port N]          (N = 0, the default, takes a free port)
 */
#define _GNU_SOURCE /* memmem */
#include "hc_dicom.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define SINK_BUF (1024 * 1024)      /* per connection: raw input, and decoded chunked input */
#define SINK_HEADER_MAX (64 * 1024) /* request line and headers */
#define SINK_PART_HEADER_MAX (16 * 1024)
#define SINK_PROBE (64 * 1024)      /* bytes of each part kept for the DICOM probe */

/* ---- counters ------------------------------------------------------------------------ */

typedef struct hc_sink_stats {
    uint64_t connections, requests, posts, errors;
    uint64_t wire_bytes;   /* everything read from sockets */
    uint64_t body_bytes;   /* request bodies after de-chunking (multipart framing included) */
    uint64_t parts, part_bytes, unidentified, unterminated;
} hc_sink_stats;

typedef struct hc_sink {
    int lfd;
    int port;
    pthread_mutex_t mu;
    hc_sink_stats st; /* under mu */
} hc_sink;

/* Adds d to the shared counters. */
static void hc_sink_stats_add(hc_sink *s, const hc_sink_stats *d)
{
    pthread_mutex_lock(&s->mu);
    s->st.connections += d->connections;
    s->st.requests += d->requests;
    s->st.posts += d->posts;
    s->st.errors += d->errors;
    s->st.wire_bytes += d->wire_bytes;
    s->st.body_bytes += d->body_bytes;
    s->st.parts += d->parts;
    s->st.part_bytes += d->part_bytes;
    s->st.unidentified += d->unidentified;
    s->st.unterminated += d->unterminated;
    pthread_mutex_unlock(&s->mu);
}

/* Writes the counters as one JSON object into out (caller's buffer); returns its length. */
static int hc_sink_stats_json(hc_sink *s, char *out, size_t n)
{
    hc_sink_stats t;
    pthread_mutex_lock(&s->mu);
    t = s->st;
    pthread_mutex_unlock(&s->mu);
    return snprintf(out, n,
                    "{\"connections\":%llu,\"requests\":%llu,\"posts\":%llu,\"errors\":%llu,"
                    "\"wire_bytes\":%llu,\"body_bytes\":%llu,\"parts\":%llu,\"part_bytes\":%llu,"
                    "\"unidentified\":%llu,\"unterminated\":%llu}",
                    (unsigned long long)t.connections, (unsigned long long)t.requests,
                    (unsigned long long)t.posts, (unsigned long long)t.errors,
                    (unsigned long long)t.wire_bytes, (unsigned long long)t.body_bytes,
                    (unsigned long long)t.parts, (unsigned long long)t.part_bytes,
                    (unsigned long long)t.unidentified, (unsigned long long)t.unterminated);
}

/* ---- growable text buffer ------------------------------------------------------------- */

typedef struct hc_sink_text {
    char *p; /* owned */
    size_t n, cap;
} hc_sink_text;

/* Appends printf-style text; returns -1 when out of memory. The buffer owns its bytes. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int hc_sink_text_add(hc_sink_text *t, const char *fmt, ...)
{
    va_list ap;
    int k;
    for (;;) {
        size_t room = t->cap - t->n;
        va_start(ap, fmt);
        k = vsnprintf(t->p ? t->p + t->n : NULL, t->p ? room : 0, fmt, ap);
        va_end(ap);
        if (k < 0)
            return -1;
        if (t->p != NULL && (size_t)k < room) {
            t->n += (size_t)k;
            return 0;
        }
        {
            size_t ncap = t->cap ? t->cap * 2 : 4096;
            char *np;
            while (ncap - t->n <= (size_t)k)
                ncap *= 2;
            np = realloc(t->p, ncap);
            if (np == NULL)
                return -1;
            t->p = np;
            t->cap = ncap;
        }
    }
}

/* ---- one connection ------------------------------------------------------------------ */

enum { MP_SINGLE, MP_START, MP_PREAMBLE, MP_AFTER, MP_HEADERS, MP_BODY, MP_EPILOGUE };
enum { CH_SIZE, CH_DATA, CH_DATA_END, CH_TRAILER, CH_DONE };

typedef struct hc_sink_conn {
    hc_sink *sink;
    int fd;
    char *raw;             /* owned, SINK_BUF: bytes read, [pos, len) not yet used */
    size_t pos, len;
    char *dec;             /* owned, SINK_BUF: de-chunked body bytes, [0, dlen) not yet parsed */
    size_t dlen;
    unsigned char *probe;  /* owned, SINK_PROBE: start of the current part */
    size_t probe_len;
    /* multipart parser */
    int mp;
    char delim[80];        /* CRLF "--" boundary */
    size_t delim_len;
    int in_part, bad;
    /* answer of the current request */
    hc_sink_text items;    /* ReferencedSOPSequence items */
    char study[HC_DICOM_UID_SIZE];
    hc_sink_stats st;      /* flushed into the sink after each request */
} hc_sink_conn;

/* A part's body starts: what is kept for the probe starts over. */
static void hc_sink_part_begin(hc_sink_conn *c)
{
    c->in_part = 1;
    c->probe_len = 0;
    c->st.parts++;
}

/* Counts n body bytes of the current part and keeps the first SINK_PROBE of them (copied; the
 * caller keeps p). */
static void hc_sink_part_data(hc_sink_conn *c, const char *p, size_t n)
{
    c->st.part_bytes += n;
    if (c->probe_len < SINK_PROBE) {
        size_t k = SINK_PROBE - c->probe_len;
        if (k > n)
            k = n;
        memcpy(c->probe + c->probe_len, p, k);
        c->probe_len += k;
    }
}

/* Probes what was kept of the part and adds its ReferencedSOPSequence item. */
static void hc_sink_part_end(hc_sink_conn *c)
{
    hc_dicom_info info;
    char err[160];
    const char *cls;
    if (!c->in_part)
        return;
    c->in_part = 0;
    if (hc_dicom_probe_mem(c->probe, c->probe_len, &info, err, sizeof err) != HC_DICOM_OK) {
        c->st.unidentified++;
        return;
    }
    cls = info.sop_class_uid[0] ? info.sop_class_uid : info.media_sop_class_uid;
    if (c->study[0] == '\0')
        memcpy(c->study, info.study_uid, sizeof c->study);
    /* UIDs passed the probe's check (digits and dots): nothing to escape. */
    if (hc_sink_text_add(&c->items,
                         "%s{\"00081150\":{\"vr\":\"UI\",\"Value\":[\"%s\"]},"
                         "\"00081155\":{\"vr\":\"UI\",\"Value\":[\"%s\"]},"
                         "\"00081190\":{\"vr\":\"UR\",\"Value\":[\"http://127.0.0.1:%d/studies/%s/"
                         "series/%s/instances/%s\"]}}",
                         c->items.n ? "," : "", cls, info.sop_instance_uid, c->sink->port,
                         info.study_uid, info.series_uid, info.sop_instance_uid) != 0)
        c->bad = 1;
}

/* Feeds body bytes d[0..n) to the part parser; returns how many it used. Unused bytes (at most a
 * delimiter's length, or an incomplete part header) must be offered again with more after them.
 * eof says no more bytes follow: everything is used. */
static size_t hc_sink_mp_feed(hc_sink_conn *c, const char *d, size_t n, int eof)
{
    size_t used = 0;
    while (used < n && !c->bad) {
        const char *p = d + used, *hit;
        size_t m = n - used, k;
        switch (c->mp) {
        case MP_SINGLE:
            hc_sink_part_data(c, p, m);
            used = n;
            break;
        case MP_START: /* the first delimiter may lack its CRLF */
            if (m < c->delim_len - 2 && !eof)
                return used;
            if (m >= c->delim_len - 2 && memcmp(p, c->delim + 2, c->delim_len - 2) == 0) {
                used += c->delim_len - 2;
                c->mp = MP_AFTER;
            } else {
                c->mp = MP_PREAMBLE;
            }
            break;
        case MP_PREAMBLE:
        case MP_BODY:
            hit = memmem(p, m, c->delim, c->delim_len);
            if (hit != NULL) {
                k = (size_t)(hit - p);
                if (c->mp == MP_BODY) {
                    hc_sink_part_data(c, p, k);
                    hc_sink_part_end(c);
                }
                used += k + c->delim_len;
                c->mp = MP_AFTER;
                break;
            }
            k = eof ? m : (m >= c->delim_len ? m - (c->delim_len - 1) : 0);
            if (c->mp == MP_BODY)
                hc_sink_part_data(c, p, k);
            used += k;
            if (!eof)
                return used;
            break;
        case MP_AFTER: /* "--" closes; else optional white space and CRLF */
            if (m < 2 && !eof)
                return used;
            if (m >= 2 && p[0] == '-' && p[1] == '-') {
                used += 2;
                c->mp = MP_EPILOGUE;
                break;
            }
            hit = memmem(p, m < 256 ? m : 256, "\r\n", 2);
            if (hit == NULL) {
                if (m < 256 && !eof)
                    return used;
                c->bad = 1;
                break;
            }
            used += (size_t)(hit - p) + 2;
            c->mp = MP_HEADERS;
            break;
        case MP_HEADERS:
            if (m < 2 && !eof)
                return used;
            if (m >= 2 && p[0] == '\r' && p[1] == '\n') {
                used += 2;
            } else {
                hit = memmem(p, m, "\r\n\r\n", 4);
                if (hit == NULL) {
                    if (m < SINK_PART_HEADER_MAX && !eof)
                        return used;
                    c->bad = 1;
                    break;
                }
                used += (size_t)(hit - p) + 4;
            }
            hc_sink_part_begin(c);
            c->mp = MP_BODY;
            break;
        default: /* MP_EPILOGUE */
            used = n;
            break;
        }
    }
    return c->bad ? n : used;
}

/* Reads more bytes into raw after [pos, len) (moved to the front first). Returns the count, 0
 * when the peer closed, -1 on error or when raw is full. */
static long hc_sink_fill(hc_sink_conn *c)
{
    ssize_t got;
    if (c->pos > 0) {
        memmove(c->raw, c->raw + c->pos, c->len - c->pos);
        c->len -= c->pos;
        c->pos = 0;
    }
    if (c->len == SINK_BUF)
        return -1;
    do
        got = recv(c->fd, c->raw + c->len, SINK_BUF - c->len, 0);
    while (got < 0 && errno == EINTR);
    if (got > 0) {
        c->len += (size_t)got;
        c->st.wire_bytes += (uint64_t)got;
    }
    return (long)got;
}

/* Reads a Content-Length body through the part parser. Returns 0, or -1 if the peer went away. */
static int hc_sink_body_length(hc_sink_conn *c, uint64_t left)
{
    while (left > 0) {
        size_t avail = c->len - c->pos, k;
        int eof = avail >= left;
        if (avail > left)
            avail = (size_t)left;
        k = hc_sink_mp_feed(c, c->raw + c->pos, avail, eof);
        c->pos += k;
        left -= k;
        c->st.body_bytes += k;
        if (left > 0 && hc_sink_fill(c) <= 0)
            return -1;
    }
    return 0;
}

/* Reads a chunked body: raw bytes are de-chunked into dec, which the part parser reads.
 * Returns 0, or -1 if the peer went away or the chunk framing is broken. */
static int hc_sink_body_chunked(hc_sink_conn *c)
{
    int st = CH_SIZE;
    uint64_t chunk = 0;
    for (;;) {
        int moved = 0;
        size_t k;
        /* de-chunk what raw holds */
        while (c->pos < c->len && st != CH_DONE) {
            char *p = c->raw + c->pos, *eol;
            size_t m = c->len - c->pos;
            if (st == CH_DATA) {
                size_t room = SINK_BUF - c->dlen, take = m;
                if ((uint64_t)take > chunk)
                    take = (size_t)chunk;
                if (take > room)
                    take = room;
                if (take == 0)
                    break;
                memcpy(c->dec + c->dlen, p, take);
                c->dlen += take;
                c->pos += take;
                chunk -= take;
                moved = 1;
                if (chunk == 0)
                    st = CH_DATA_END;
                continue;
            }
            eol = memmem(p, m, "\r\n", 2);
            if (eol == NULL) {
                if (m > 4096)
                    return -1;
                break;
            }
            c->pos += (size_t)(eol - p) + 2;
            moved = 1;
            if (st == CH_SIZE) {
                char *end;
                unsigned long long v;
                errno = 0;
                v = strtoull(p, &end, 16);
                if (end == p || errno != 0)
                    return -1;
                chunk = v;
                st = v == 0 ? CH_TRAILER : CH_DATA;
            } else if (st == CH_DATA_END) {
                if (eol != p)
                    return -1;
                st = CH_SIZE;
            } else if (eol == p) { /* CH_TRAILER: an empty line ends the body */
                st = CH_DONE;
            }
        }
        k = hc_sink_mp_feed(c, c->dec, c->dlen, st == CH_DONE);
        if (k > 0) {
            memmove(c->dec, c->dec + k, c->dlen - k);
            c->dlen -= k;
            c->st.body_bytes += k;
            moved = 1;
        }
        if (st == CH_DONE && c->dlen == 0)
            return 0;
        if (!moved && hc_sink_fill(c) <= 0)
            return -1;
    }
}

/* Sends all of p[0..n); returns 0 or -1. */
static int hc_sink_send(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Sends a whole response (the caller owns body); returns 0 or -1. */
static int hc_sink_answer(hc_sink_conn *c, int status, const char *ctype, const char *body,
                          size_t blen, int close_after)
{
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n", status,
                      status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request", ctype,
                      blen, close_after ? "Connection: close\r\n" : "");
    if (hc_sink_send(c->fd, head, (size_t)hl) != 0)
        return -1;
    return hc_sink_send(c->fd, body, blen);
}

/* Value of header `name` (lower case, with the colon) in the header block, trimmed, copied into
 * out (caller's buffer); returns 1 if present. */
static int hc_sink_header(const char *hdrs, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *line = hdrs;
    while (line != NULL && *line != '\0') {
        const char *eol = strstr(line, "\r\n");
        if (eol == NULL)
            eol = line + strlen(line);
        if ((size_t)(eol - line) >= nl && strncasecmp(line, name, nl) == 0) {
            const char *v = line + nl;
            size_t len;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            len = (size_t)(eol - v);
            while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
                len--;
            if (len >= n)
                len = n - 1;
            memcpy(out, v, len);
            out[len] = '\0';
            return 1;
        }
        line = *eol ? eol + 2 : NULL;
    }
    return 0;
}

/* Sets the multipart delimiter from a Content-Type value; returns 0 if it names a boundary. */
static int hc_sink_boundary(hc_sink_conn *c, const char *ctype)
{
    const char *b = strcasestr(ctype, "boundary=");
    size_t n = 0;
    if (strncasecmp(ctype, "multipart/", 10) != 0 || b == NULL)
        return -1;
    b += 9;
    if (*b == '"') {
        const char *q = strchr(++b, '"');
        n = q ? (size_t)(q - b) : 0;
    } else {
        while (b[n] && b[n] != ';' && b[n] != ' ' && b[n] != '\t')
            n++;
    }
    /* RFC 2046 allows 70 characters; Orthanc's own STOW client sends 73. */
    if (n == 0 || n > sizeof c->delim - 4)
        return -1;
    memcpy(c->delim, "\r\n--", 4);
    memcpy(c->delim + 4, b, n);
    c->delim_len = n + 4;
    return 0;
}

/* Serves one request from the connection. Returns 1 to keep the connection, 0 to close it. */
static int hc_sink_request(hc_sink_conn *c)
{
    char *hdr_end, method[16], target[256], version[16];
    char v[512], *hdrs;
    size_t hlen;
    int keep, chunked = 0, rc;
    uint64_t length = 0;

    while ((hdr_end = memmem(c->raw + c->pos, c->len - c->pos, "\r\n\r\n", 4)) == NULL) {
        if (c->len - c->pos > SINK_HEADER_MAX || hc_sink_fill(c) <= 0)
            return 0;
    }
    hdrs = c->raw + c->pos;
    hlen = (size_t)(hdr_end - hdrs) + 4;
    hdr_end[2] = '\0'; /* headers now end with the last line's CRLF */
    if (sscanf(hdrs, "%15s %255s %15s", method, target, version) != 3) {
        c->st.errors++;
        hc_sink_answer(c, 400, "text/plain", "bad request line\n", 17, 1);
        return 0;
    }
    hdrs = strstr(hdrs, "\r\n") + 2;
    c->st.requests++;
    keep = strcmp(version, "HTTP/1.1") == 0;
    if (hc_sink_header(hdrs, "connection:", v, sizeof v))
        keep = strcasecmp(v, "close") == 0 ? 0 : strcasecmp(v, "keep-alive") == 0 ? 1 : keep;
    if (hc_sink_header(hdrs, "transfer-encoding:", v, sizeof v) && strcasestr(v, "chunked"))
        chunked = 1;
    else if (hc_sink_header(hdrs, "content-length:", v, sizeof v))
        length = strtoull(v, NULL, 10);
    c->items.n = 0;
    c->study[0] = '\0';
    c->in_part = 0;
    c->bad = 0;
    c->mp = MP_SINGLE;
    if (hc_sink_header(hdrs, "content-type:", v, sizeof v) && hc_sink_boundary(c, v) == 0)
        c->mp = MP_START;
    if (hc_sink_header(hdrs, "expect:", v, sizeof v) && strcasecmp(v, "100-continue") == 0 &&
        hc_sink_send(c->fd, "HTTP/1.1 100 Continue\r\n\r\n", 25) != 0)
        return 0;
    c->pos += hlen;

    if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
        int single = c->mp == MP_SINGLE;
        c->st.posts++;
        if (single && (chunked || length > 0))
            hc_sink_part_begin(c);
        rc = chunked ? hc_sink_body_chunked(c) : hc_sink_body_length(c, length);
        if (rc != 0) {
            c->st.errors++;
            return 0;
        }
        if (c->in_part && !single)
            c->st.unterminated++;
        hc_sink_part_end(c);
        if (c->bad) {
            c->st.errors++;
            hc_sink_answer(c, 400, "text/plain", "bad multipart body\n", 19, 1);
            return 0;
        }
        {
            hc_sink_text out = { NULL, 0, 0 };
            static const char answer[] = "{\"00081190\":{\"vr\":\"UR\",\"Value\":"
                "[\"http://127.0.0.1:%d/studies/%s\"]},"
                "\"00081199\":{\"vr\":\"SQ\",\"Value\":[%.*s]}}";
            if (hc_sink_text_add(&out, answer, c->sink->port, c->study, (int)c->items.n,
                                 c->items.p ? c->items.p : "") != 0) {
                free(out.p);
                return 0;
            }
            rc = hc_sink_answer(c, 200, "application/dicom+json", out.p, out.n, !keep);
            free(out.p);
        }
    } else if (strcmp(method, "GET") == 0 && strcmp(target, "/stats") == 0) {
        char js[1024];
        int n;
        hc_sink_stats_add(c->sink, &c->st); /* this request's bytes count too */
        memset(&c->st, 0, sizeof c->st);
        n = hc_sink_stats_json(c->sink, js, sizeof js);
        rc = hc_sink_answer(c, 200, "application/json", js, (size_t)n, !keep);
    } else {
        c->mp = MP_EPILOGUE; /* a body nobody wants is still read, to stay in step */
        rc = chunked ? hc_sink_body_chunked(c) : hc_sink_body_length(c, length);
        if (rc == 0)
            rc = hc_sink_answer(c, 404, "text/plain", "not found\n", 10, !keep);
    }
    hc_sink_stats_add(c->sink, &c->st);
    memset(&c->st, 0, sizeof c->st);
    return rc == 0 && keep;
}

/* Thread body: serves one connection until it closes; frees the connection it was given. */
static void *hc_sink_serve(void *arg)
{
    hc_sink_conn *c = arg;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->st.connections = 1;
    while (hc_sink_request(c)) {
        if (c->pos == c->len) {
            c->pos = c->len = 0;
            if (hc_sink_fill(c) <= 0)
                break;
        }
    }
    hc_sink_stats_add(c->sink, &c->st);
    close(c->fd);
    free(c->raw);
    free(c->dec);
    free(c->probe);
    free(c->items.p);
    free(c);
    return NULL;
}

/* ---- main ---------------------------------------------------------------------------- */

/* Thread body: waits for SIGINT/SIGTERM, prints the counters on stderr and ends the process. */
static void *hc_sink_signals(void *arg)
{
    hc_sink *s = arg;
    sigset_t set;
    int sig;
    char js[1024];
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigwait(&set, &sig);
    hc_sink_stats_json(s, js, sizeof js);
    fprintf(stderr, "%s\n", js);
    fflush(stderr);
    _exit(0);
    return NULL;
}

int main(int argc, char **argv)
{
    hc_sink sink;
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    sigset_t set;
    pthread_t th;
    pthread_attr_t detached;
    int one = 1, i, port = 0;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: sink [--port N]\n");
            return 2;
        }
    }
    memset(&sink, 0, sizeof sink);
    pthread_mutex_init(&sink.mu, NULL);
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* every thread inherits it; one sigwaits */
    signal(SIGPIPE, SIG_IGN);

    sink.lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (sink.lfd < 0) {
        perror("sink: socket");
        return 1;
    }
    setsockopt(sink.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (bind(sink.lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(sink.lfd, 128) != 0 ||
        getsockname(sink.lfd, (struct sockaddr *)&a, &alen) != 0) {
        perror("sink: bind");
        return 1;
    }
    sink.port = ntohs(a.sin_port);
    if (pthread_create(&th, NULL, hc_sink_signals, &sink) != 0)
        return 1;
    printf("http://127.0.0.1:%d\n", sink.port);
    fflush(stdout);

    pthread_attr_init(&detached);
    pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
    for (;;) {
        hc_sink_conn *c;
        int fd = accept(sink.lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
                continue;
            perror("sink: accept");
            return 1;
        }
        c = calloc(1, sizeof *c);
        if (c != NULL) {
            c->raw = malloc(SINK_BUF);
            c->dec = malloc(SINK_BUF);
            c->probe = malloc(SINK_PROBE);
        }
        if (c == NULL || c->raw == NULL || c->dec == NULL || c->probe == NULL) {
            if (c != NULL) {
                free(c->raw);
                free(c->dec);
                free(c->probe);
                free(c);
            }
            close(fd);
            continue;
        }
        c->sink = &sink;
        c->fd = fd;
        if (pthread_create(&th, &detached, hc_sink_serve, c) != 0) {
            close(fd);
            free(c->raw);
            free(c->dec);
            free(c->probe);
            free(c);
        }
    }
}
