/* SPDX-License-Identifier: MIT */
/* libcurl transport (see hc_http.h). No callback here calls into Lua: bodies are read from
 * hc_body segment lists, responses land in capped buffers, and the Lua layer drives the loop
 * between calls, so a Lua error can never unwind through libcurl. */
#define _POSIX_C_SOURCE 200809L
#include "hc_http.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

struct hc_session {
    CURLM *multi;            /* owned */
    hc_transfer *running;    /* list through next */
    hc_transfer *done;       /* list through next, oldest first */
    int pending;
};

/* ---- callbacks ----------------------------------------------------------------------- */

static size_t on_read(char *buf, size_t size, size_t nitems, void *ud)
{
    hc_transfer *t = ud;
    long n = hc_body_read(t->body, buf, size * nitems);
    if (n < 0) {
        snprintf(t->body_error, sizeof t->body_error, "%s", hc_body_error(t->body));
        return CURL_READFUNC_ABORT;
    }
    return (size_t)n;
}

static int on_seek(void *ud, curl_off_t offset, int origin)
{
    hc_transfer *t = ud;
    if (origin != SEEK_SET || hc_body_seek(t->body, (int64_t)offset) != 0)
        return CURL_SEEKFUNC_CANTSEEK;
    return CURL_SEEKFUNC_OK;
}


/* ---- the sink: 2xx bodies to files ----------------------------------------------------- */

static int sink_io_error(hc_transfer *t, const char *what, const char *path)
{
    int e = errno;
    if (t->sink.error == HC_SINKERR_NONE) {
        t->sink.error = HC_SINKERR_IO;
        snprintf(t->sink.message, sizeof t->sink.message, "%s %s: %s", what, path, strerror(e));
    }
    return -1;
}

/* The transport stops the answer for a reason of its own (a cap passed, a content coding it
 * will not decode): code is a fixed reason string; the first reason given is kept. Returns -1. */
static int stop(hc_transfer *t, const char *code, const char *fmt, ...)
{
    va_list ap;
    if (t->stop_code != NULL || t->sink.error != HC_SINKERR_NONE)
        return -1;
    t->stop_code = code;
    va_start(ap, fmt);
    vsnprintf(t->stop_message, sizeof t->stop_message, fmt, ap);
    va_end(ap);
    return -1;
}

/* "(2 complete parts received)" */
static const char *parts_note(const hc_sink *k, char *buf, size_t size)
{
    snprintf(buf, size, "(%lu complete part%s received)", (unsigned long)k->nparts,
             k->nparts == 1 ? "" : "s");
    return buf;
}

static int sink_multipart_error(hc_transfer *t, int code)
{
    hc_sink *k = &t->sink;
    char note[64];
    const char *what;
    if (k->error != HC_SINKERR_NONE || t->stop_code != NULL)
        return -1;
    switch (code) {
    case HC_MP_ERR_NO_BOUNDARY: what = "does not start with its boundary delimiter"; break;
    case HC_MP_ERR_HEADERS_TOO_LARGE: what = "has a part header block larger than 64 KiB"; break;
    case HC_MP_ERR_HEADERS_MALFORMED: what = "has a malformed part header block"; break;
    case HC_MP_ERR_DELIMITER: what = "has a boundary delimiter followed by something other than CRLF or \"--\""; break;
    case HC_MP_ERR_TRUNCATED:
        what = k->mp.in_part ? "ended inside a part" : "ended before the close delimiter";
        break;
    default: what = hc_multipart_strerror(code); break;
    }
    k->error = HC_SINKERR_MULTIPART;
    snprintf(k->message, sizeof k->message, "the %s response %s %s", k->media, what,
             parts_note(k, note, sizeof note));
    return -1;
}

/* Creates a new file <prefix>XXXXXX (mode 0666 less the umask, unlike mkstemp's 0600) as the
 * sink's current file. Returns 0 or -1. */
static int open_temp(hc_transfer *t, const char *prefix)
{
    static const char chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    size_t n = strlen(prefix);
    char *path = malloc(n + 7);
    struct timespec ts;
    uint64_t x;
    int tries;
    if (path == NULL) {
        errno = ENOMEM;
        return sink_io_error(t, "cannot create", prefix);
    }
    memcpy(path, prefix, n);
    clock_gettime(CLOCK_REALTIME, &ts);
    x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 40)
        ^ (uint64_t)(uintptr_t)t;
    for (tries = 0; tries < 100; tries++) {
        int i, fd;
        uint64_t z;
        /* splitmix64: O_EXCL makes the names safe, this only makes clashes rare. */
        x += 0x9E3779B97F4A7C15ull;
        z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        for (i = 0; i < 6; i++, z /= 62)
            path[n + (size_t)i] = chars[z % 62];
        path[n + 6] = '\0';
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0) {
            t->sink.fd = fd;
            t->sink.tmp = path;
            t->sink.cur_size = 0;
            return 0;
        }
        if (errno != EEXIST)
            break;
    }
    memcpy(path + n, "XXXXXX", 7);
    sink_io_error(t, "cannot create", path);
    free(path);
    return -1;
}

static int write_all(hc_transfer *t, const char *p, size_t n)
{
    hc_sink *k = &t->sink;
    if (k->max_part_bytes > 0 && (int64_t)n > k->max_part_bytes - k->cur_size) {
        if (k->mode == HC_MODE_MULTIPART)
            return stop(t, "part_too_large", "part %lu of the answer is larger than %lld bytes",
                        (unsigned long)k->nparts + 1, (long long)k->max_part_bytes);
        return stop(t, "part_too_large", "the answer is larger than %lld bytes",
                    (long long)k->max_part_bytes);
    }
    while (n > 0) {
        ssize_t w = write(t->sink.fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return sink_io_error(t, "cannot write", t->sink.tmp);
        }
        p += w;
        n -= (size_t)w;
        t->sink.cur_size += w;
    }
    return 0;
}

/* Closes the current file; keep = 0 (or a failed close) removes it. Returns 0 or -1. */
static int close_current(hc_transfer *t, int keep)
{
    hc_sink *k = &t->sink;
    int rc = 0;
    if (k->fd >= 0) {
        if (close(k->fd) != 0 && keep)
            rc = sink_io_error(t, "cannot write", k->tmp);
        k->fd = -1;
    }
    if (k->tmp != NULL && (!keep || rc != 0)) {
        unlink(k->tmp);
        free(k->tmp);
        k->tmp = NULL;
    }
    if (!keep || rc != 0) {
        free(k->cur_headers);
        k->cur_headers = NULL;
    }
    return rc;
}

/* Closes the current file and records it as a complete part. Returns 0 or -1. */
static int finish_part(hc_transfer *t)
{
    hc_sink *k = &t->sink;
    if (close_current(t, 1) != 0)
        return -1;
    if (k->nparts == k->parts_size) {
        size_t want = k->parts_size ? 2 * k->parts_size : 16;
        hc_part *grown = realloc(k->parts, want * sizeof *grown);
        if (grown == NULL) {
            errno = ENOMEM;
            sink_io_error(t, "cannot record", k->tmp);
            close_current(t, 0);
            return -1;
        }
        k->parts = grown;
        k->parts_size = want;
    }
    k->parts[k->nparts].path = k->tmp;
    k->parts[k->nparts].headers = k->cur_headers;
    k->parts[k->nparts].headers_len = k->cur_headers_len;
    k->parts[k->nparts].size = k->cur_size;
    k->nparts++;
    k->tmp = NULL;
    k->cur_headers = NULL;
    k->cur_headers_len = 0;
    return 0;
}

static int set_cur_headers(hc_transfer *t, const char *h, size_t n)
{
    hc_sink *k = &t->sink;
    free(k->cur_headers);
    k->cur_headers = malloc(n + 1);
    k->cur_headers_len = 0;
    if (k->cur_headers == NULL) {
        errno = ENOMEM;
        return sink_io_error(t, "cannot record a part of", k->path);
    }
    memcpy(k->cur_headers, h, n);
    k->cur_headers[n] = '\0';
    k->cur_headers_len = n;
    return 0;
}

static int part_prefix_open(hc_transfer *t)
{
    hc_sink *k = &t->sink;
    char prefix[4096];
    if ((size_t)snprintf(prefix, sizeof prefix, "%s/.hc-part-", k->path) >= sizeof prefix) {
        errno = ENAMETOOLONG;
        return sink_io_error(t, "cannot create a file in", k->path);
    }
    return open_temp(t, prefix);
}

static int on_part_begin(void *ud, const char *headers, size_t len)
{
    hc_transfer *t = ud;
    hc_sink *k = &t->sink;
    /* Checked as a part begins, before its file exists: one part too many makes no file. */
    if (k->max_parts > 0 && (int64_t)k->nparts >= k->max_parts)
        return stop(t, "too_many_parts", "the answer has more than %lld parts", (long long)k->max_parts);
    if (len > HC_MAX_PART_HEADERS_TOTAL - k->headers_total)
        return stop(t, "too_many_parts", "the part header blocks of the answer total more than %d MiB "
                    "(after %lu parts)", HC_MAX_PART_HEADERS_TOTAL / (1024 * 1024), (unsigned long)k->nparts);
    k->headers_total += len;
    if (set_cur_headers(t, headers, len) != 0)
        return -1;
    return part_prefix_open(t);
}

static int on_part_data(void *ud, const char *p, size_t n)
{
    return write_all(ud, p, n);
}

static int on_part_end(void *ud)
{
    return finish_part(ud);
}

static const hc_multipart_callbacks part_callbacks = { on_part_begin, on_part_data, on_part_end };

/* At the final response's first body byte (or its end): memory, or which files. Returns 0 or -1
 * (the sink's error set). */
static int sink_decide(hc_transfer *t)
{
    hc_sink *k = &t->sink;
    long status = 0;
    char *ct = NULL;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    if (k->kind == HC_SINK_NONE || status < 200 || status > 299) {
        k->mode = HC_MODE_MEMORY;
        return 0;
    }
    if (k->kind == HC_SINK_FILE) {
        char prefix[4096];
        k->mode = HC_MODE_FILE;
        if ((size_t)snprintf(prefix, sizeof prefix, "%s.partial-", k->path) >= sizeof prefix) {
            errno = ENAMETOOLONG;
            return sink_io_error(t, "cannot create", k->path);
        }
        return open_temp(t, prefix);
    }
    curl_easy_getinfo(t->easy, CURLINFO_CONTENT_TYPE, &ct);
    if (ct != NULL) {
        char boundary[HC_MP_MAX_BOUNDARY + 1];
        size_t blen = 0, i;
        int r = hc_multipart_content_type(ct, strlen(ct), boundary, &blen);
        if (r != 0) {
            /* The media type, for messages: "multipart/related" */
            for (i = 0; ct[i] == ' ' || ct[i] == '\t'; i++)
                ;
            snprintf(k->media, sizeof k->media, "%.*s", (int)strcspn(ct + i, "; \t"), ct + i);
            for (i = 0; k->media[i]; i++)
                if (k->media[i] >= 'A' && k->media[i] <= 'Z')
                    k->media[i] = (char)(k->media[i] - 'A' + 'a');
            k->mode = HC_MODE_MULTIPART;
            if (r < 0) {
                k->error = HC_SINKERR_MULTIPART;
                snprintf(k->message, sizeof k->message,
                         "the %s response has no valid boundary parameter (Content-Type: %.200s)",
                         k->media, ct);
                return -1;
            }
            if (hc_multipart_init(&k->mp, boundary, blen, &part_callbacks, t) != 0)
                return sink_multipart_error(t, HC_MP_ERR_NO_BOUNDARY);
            k->mp_live = 1;
            return 0;
        }
    }
    k->mode = HC_MODE_SINGLE;
    if (ct != NULL) {
        char h[1024];
        int n = snprintf(h, sizeof h, "content-type: %.900s\r\n", ct);
        if (strpbrk(ct, "\r\n") == NULL && set_cur_headers(t, h, (size_t)n) != 0)
            return -1;
    }
    return part_prefix_open(t);
}

/* Removes every file of the sink not handed to the caller and forgets the response. */
static void sink_discard(hc_transfer *t)
{
    hc_sink *k = &t->sink;
    size_t i;
    close_current(t, 0);
    for (i = 0; i < k->nparts; i++) {
        if (!k->parts_taken)
            unlink(k->parts[i].path);
        free(k->parts[i].path);
        free(k->parts[i].headers);
    }
    free(k->parts);
    k->parts = NULL;
    k->nparts = k->parts_size = 0;
    k->parts_taken = 0;
    if (k->mp_live)
        hc_multipart_free(&k->mp);
    k->mp_live = 0;
    k->mode = HC_MODE_UNDECIDED;
    k->bytes = 0;
    k->headers_total = 0;
    k->error = HC_SINKERR_NONE;
    k->message[0] = '\0';
}

/* Forgets the body decoding state of a response (a new one starts, or the transfer ends). */
static void coding_reset(hc_transfer *t)
{
    if (t->inflating)
        hc_inflate_free(&t->inflater);
    t->inflating = 0;
    t->body_started = 0;
    t->content_encoding[0] = '\0';
}

/* The transfer ended (ok: libcurl says it succeeded): completes or abandons the files. Returns
 * 0, or -1 when the sink turned a success into a failure. */
static int sink_end(hc_transfer *t, int ok)
{
    hc_sink *k = &t->sink;
    int rc = 0;
    if (ok && t->inflating && hc_inflate_finish(&t->inflater) != HC_INFLATE_OK) {
        stop(t, "encoding", "the %s-encoded answer %s", t->content_encoding,
             hc_inflate_strerror(HC_INFLATE_ERR_TRUNCATED));
        ok = 0;
        rc = -1;
    }
    if (t->inflating) {
        hc_inflate_free(&t->inflater);
        t->inflating = 0;
    }
    if (!ok || k->kind == HC_SINK_NONE) {
        close_current(t, 0);
        return rc;
    }
    if (k->mode == HC_MODE_UNDECIDED && sink_decide(t) != 0)
        rc = -1;
    else if (k->mode == HC_MODE_FILE) {
        if (close_current(t, 1) != 0)
            rc = -1;
        else if (rename(k->tmp, k->path) != 0) {
            rc = sink_io_error(t, "cannot rename the download to", k->path);
            unlink(k->tmp);
        }
        free(k->tmp);
        k->tmp = NULL;
    } else if (k->mode == HC_MODE_SINGLE) {
        /* An empty body (a 204, say) is no part at all. */
        if (k->bytes == 0)
            close_current(t, 0);
        else
            rc = finish_part(t);
    } else if (k->mode == HC_MODE_MULTIPART) {
        int r = hc_multipart_finish(&k->mp);
        if (r != HC_MP_OK)
            rc = sink_multipart_error(t, r);
    }
    close_current(t, 0);
    return rc;
}

/* Decoded body bytes of the final response, to memory or to the sink's files, within the caps.
 * Returns 0, or -1 with the reason set. */
static int deliver(hc_transfer *t, const char *p, size_t n)
{
    hc_sink *k = &t->sink;
    int r;
    if (k->mode != HC_MODE_MEMORY && k->max_bytes > 0 && (int64_t)n > k->max_bytes - k->bytes)
        return stop(t, "too_large", "the answer is larger than %lld bytes", (long long)k->max_bytes);
    switch (k->mode) {
    case HC_MODE_FILE:
    case HC_MODE_SINGLE:
        k->bytes += (int64_t)n;
        return write_all(t, p, n);
    case HC_MODE_MULTIPART:
        k->bytes += (int64_t)n;
        r = hc_multipart_feed(&k->mp, p, n);
        if (r != HC_MP_OK)
            return sink_multipart_error(t, r);
        return 0;
    default:
        if (hc_buf_append(&t->response, p, n) != 0) {
            t->response_too_large = 1;
            return -1;
        }
        return 0;
    }
}

static int deliver_decoded(void *ud, const char *p, size_t n)
{
    return deliver(ud, p, n);
}

/* At the final response's first body byte: how it is coded, and where it goes. A content coding
 * is decoded only when it was asked for, and only gzip or deflate, applied once: anything else
 * would reach a file or a JSON parser as something it is not. Returns 0 or -1. */
static int start_body(hc_transfer *t)
{
    const char *ce = t->content_encoding;
    t->body_started = 1;
    if (ce[0] != '\0' && strcasecmp(ce, "identity") != 0) {
        int r;
        if (!t->compressed)
            return stop(t, "encoding", "the answer is %.60s-encoded (Content-Encoding) although "
                        "identity was asked for (Accept-Encoding: identity)", ce);
        if (strcasecmp(ce, "gzip") != 0 && strcasecmp(ce, "x-gzip") != 0 && strcasecmp(ce, "deflate") != 0)
            return stop(t, "encoding", "the answer has Content-Encoding '%.60s'; only gzip or deflate, "
                        "applied once, is decoded", ce);
        r = hc_inflate_init(&t->inflater, t->max_compression_ratio);
        t->inflating = 1;
        if (r != HC_INFLATE_OK)
            return stop(t, "encoding", "the %s-encoded answer %s", ce, hc_inflate_strerror(r));
    }
    if (t->sink.mode == HC_MODE_UNDECIDED && sink_decide(t) != 0)
        return -1;
    return 0;
}

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud)
{
    hc_transfer *t = ud;
    size_t n = size * nmemb;
    int r;
    if (!t->body_started && start_body(t) != 0)
        return 0;
    if (!t->inflating)
        return deliver(t, p, n) == 0 ? n : 0;
    r = hc_inflate_feed(&t->inflater, p, n, deliver_decoded, t);
    if (r == HC_INFLATE_OK)
        return n;
    if (r == HC_INFLATE_ERR_RATIO)
        stop(t, "compression_ratio", "the %s-encoded answer decodes to more than %g bytes per byte "
             "received (%lld bytes from %lld): a compression bomb?", t->content_encoding,
             t->max_compression_ratio, (long long)t->inflater.decoded, (long long)t->inflater.in);
    else if (r != HC_INFLATE_ERR_CALLBACK)
        stop(t, "encoding", "the %s-encoded answer %s", t->content_encoding, hc_inflate_strerror(r));
    return 0;
}

/* Keeps the Content-Encoding of the response being received (repeated fields joined with
 * ", ", as HTTP reads them), trimmed. */
static void note_content_encoding(hc_transfer *t, const char *p, size_t n)
{
    static const char name[] = "content-encoding:";
    size_t len = strlen(t->content_encoding), i = sizeof name - 1;
    if (n < i || strncasecmp(p, name, i) != 0)
        return;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    while (n > i && isspace((unsigned char)p[n - 1]))
        n--;
    if (n == i)
        return;
    /* Too long to be one coding: kept cut, and refused as unknown. */
    snprintf(t->content_encoding + len, sizeof t->content_encoding - len, "%s%.*s",
             len > 0 ? ", " : "", (int)(n - i), p + i);
    /* It may reach a message, and a terminal: no control or non-ASCII byte from the server. */
    for (; t->content_encoding[len] != '\0'; len++)
        if (t->content_encoding[len] < 0x20 || t->content_encoding[len] > 0x7e)
            t->content_encoding[len] = '?';
}

/* A Transfer-Encoding other than chunked (gzip, deflate, ...): libcurl would decode it whatever
 * was asked, before on_write counts a byte, so it is refused. Returns 0, or -1 with the reason. */
static int check_transfer_encoding(hc_transfer *t, const char *p, size_t n)
{
    static const char name[] = "transfer-encoding:";
    size_t i = sizeof name - 1;
    if (n < i || strncasecmp(p, name, i) != 0)
        return 0;
    while (i < n) {
        size_t start, end;
        while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == ','))
            i++;
        start = i;
        while (i < n && p[i] != ',' && p[i] != '\r' && p[i] != '\n')
            i++;
        end = i;
        while (end > start && (p[end - 1] == ' ' || p[end - 1] == '\t'))
            end--;
        if (end > start && !(end - start == 7 && strncasecmp(p + start, "chunked", 7) == 0)) {
            char shown[64];
            size_t k, len = end - start < sizeof shown - 1 ? end - start : sizeof shown - 1;
            for (k = 0; k < len; k++)
                shown[k] = p[start + k] >= 0x20 && p[start + k] <= 0x7e ? p[start + k] : '?';
            shown[len] = '\0';
            return stop(t, "encoding", "the answer has Transfer-Encoding '%s'; only chunked is accepted", shown);
        }
        if (i < n && (p[i] == '\r' || p[i] == '\n'))
            break;
    }
    return 0;
}

static size_t on_header(char *p, size_t size, size_t nitems, void *ud)
{
    hc_transfer *t = ud;
    size_t n = size * nitems;
    /* A new status line starts a new response (after 100 Continue, a redirect or auth):
     * only the final one is kept. */
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        hc_buf_free(&t->response_headers);
        hc_buf_free(&t->response);
        sink_discard(t);
        coding_reset(t);
    }
    note_content_encoding(t, p, n);
    if (check_transfer_encoding(t, p, n) != 0)
        return 0;
    if (hc_buf_append(&t->response_headers, p, n) != 0) {
        t->response_too_large = 1;
        return 0;
    }
    return n;
}

/* ---- transfers ----------------------------------------------------------------------- */

static int fail(hc_transfer *t, const char *msg)
{
    snprintf(t->errbuf, sizeof t->errbuf, "%s", msg);
    return -1;
}

int hc_transfer_init(hc_transfer *t, const hc_transfer_opts *o, const char *const *headers,
                     size_t nheaders, hc_body *body)
{
    CURL *e;
    size_t i;
    int has_expect = 0, has_accept_encoding = 0;

    memset(t, 0, sizeof *t);
    t->ref = -2;
    t->body = body;
    t->sink.fd = -1;
    t->sink.max_bytes = o->sink_max_bytes;
    t->sink.max_parts = o->sink_max_parts;
    t->sink.max_part_bytes = o->sink_max_part_bytes;
    t->compressed = o->compressed;
    t->max_compression_ratio = o->max_compression_ratio;
    t->timeout_ms = o->timeout_ms;
    t->idle_timeout_ms = o->idle_timeout_ms;
    t->min_speed = o->min_speed > 0 ? o->min_speed : 1;
    if (o->sink_kind != HC_SINK_NONE) {
        t->sink.kind = o->sink_kind;
        t->sink.path = strdup(o->sink_path);
        if (t->sink.path == NULL)
            return fail(t, "out of memory");
    }
    hc_buf_init(&t->response, o->max_response_bytes);
    hc_buf_init(&t->response_headers, 256 * 1024);
    t->easy = e = curl_easy_init();
    if (e == NULL)
        return fail(t, "cannot create a libcurl handle");

    for (i = 0; i < nheaders; i++) {
        struct curl_slist *n;
        if (strncasecmp(headers[i], "expect:", 7) == 0)
            has_expect = 1;
        if (strncasecmp(headers[i], "accept-encoding:", 16) == 0)
            has_accept_encoding = 1;
        n = curl_slist_append(t->headers, headers[i]);
        if (n == NULL)
            return fail(t, "out of memory");
        t->headers = n;
    }
    /* Orthanc and other servers never answer "Expect: 100-continue", and libcurl then waits a
     * second before each body over 1 MiB. */
    if (body != NULL && !has_expect) {
        struct curl_slist *n = curl_slist_append(t->headers, "Expect:");
        if (n == NULL)
            return fail(t, "out of memory");
        t->headers = n;
    }
    /* Said either way: with no Accept-Encoding a server may pick any coding (RFC 9110 12.5.3). */
    if (!has_accept_encoding) {
        struct curl_slist *n = curl_slist_append(t->headers, o->compressed ? "Accept-Encoding: gzip, deflate"
                                                                          : "Accept-Encoding: identity");
        if (n == NULL)
            return fail(t, "out of memory");
        t->headers = n;
    }

    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_URL, o->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    /* Content codings are decoded in on_write (hc_inflate.h), where the caps count the decoded
     * bytes as they come; libcurl would decode a whole network read first. */
    curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L);
    if (o->user_agent)
        curl_easy_setopt(e, CURLOPT_USERAGENT, o->user_agent);
    if (o->timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms);
    if (o->connect_timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    if (o->idle_timeout_ms > 0) {
        long secs = (o->idle_timeout_ms + 999) / 1000;
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, t->min_speed);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, secs);
    }
    if (o->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
    if (o->insecure) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                     o->http2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    if (o->verbose)
        curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
    /* Fewer, larger writes to disk. */
    if (o->sink_kind != HC_SINK_NONE)
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 256L * 1024L);

    if (body != NULL) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(e, CURLOPT_READDATA, t);
        curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
        curl_easy_setopt(e, CURLOPT_SEEKDATA, t);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)hc_body_length(body));
        /* Larger reads from disk and larger writes to the socket: fewer syscalls per GB. */
        curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 512L * 1024L);
        if (strcmp(o->method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method);
    } else if (strcmp(o->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(o->method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method);
        if (strcmp(o->method, "POST") == 0 || strcmp(o->method, "PUT") == 0) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
        }
    }
    t->state = HC_T_NEW;
    return 0;
}

void hc_transfer_cleanup(hc_transfer *t)
{
    if (t->session != NULL)
        hc_session_remove(t->session, t);
    if (t->easy != NULL)
        curl_easy_cleanup(t->easy);
    t->easy = NULL;
    curl_slist_free_all(t->headers);
    t->headers = NULL;
    hc_body_free(t->body);
    t->body = NULL;
    hc_buf_free(&t->response);
    hc_buf_free(&t->response_headers);
    sink_discard(t);
    coding_reset(t);
    free(t->sink.path);
    t->sink.path = NULL;
}

void hc_transfer_take_parts(hc_transfer *t)
{
    t->sink.parts_taken = 1;
}

/* ---- sessions ------------------------------------------------------------------------ */

hc_session *hc_session_new(void)
{
    hc_session *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->multi = curl_multi_init();
    if (s->multi == NULL) {
        free(s);
        return NULL;
    }
    curl_multi_setopt(s->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    return s;
}

static void unlink_from(hc_transfer **list, hc_transfer *t)
{
    for (; *list != NULL; list = &(*list)->next)
        if (*list == t) {
            *list = t->next;
            t->next = NULL;
            return;
        }
}

void hc_session_remove(hc_session *s, hc_transfer *t)
{
    if (t->session != s)
        return;
    if (t->state == HC_T_RUNNING) {
        curl_multi_remove_handle(s->multi, t->easy);
        unlink_from(&s->running, t);
        t->result = CURLE_ABORTED_BY_CALLBACK;
        snprintf(t->errbuf, sizeof t->errbuf, "request abandoned");
        sink_end(t, 0);
        t->state = HC_T_DONE;
    } else {
        unlink_from(&s->done, t);
    }
    t->session = NULL;
    s->pending--;
}

void hc_session_free(hc_session *s)
{
    if (s == NULL)
        return;
    while (s->running != NULL)
        hc_session_remove(s, s->running);
    while (s->done != NULL)
        hc_session_remove(s, s->done);
    curl_multi_cleanup(s->multi);
    free(s);
}

int hc_session_start(hc_session *s, hc_transfer *t)
{
    if (t->state != HC_T_NEW || t->easy == NULL)
        return fail(t, "transfer already started");
    if (t->body != NULL && hc_body_seek(t->body, 0) != 0)
        return fail(t, hc_body_error(t->body));
    if (curl_multi_add_handle(s->multi, t->easy) != CURLM_OK)
        return fail(t, "cannot start the transfer");
    t->state = HC_T_RUNNING;
    t->session = s;
    t->next = s->running;
    s->running = t;
    s->pending++;
    return 0;
}

static int collect(hc_session *s)
{
    CURLMsg *m;
    int left, n = 0;
    while ((m = curl_multi_info_read(s->multi, &left)) != NULL) {
        hc_transfer *t = NULL, **tail;
        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        t->result = m->data.result;
        curl_multi_remove_handle(s->multi, t->easy);
        if (sink_end(t, t->result == CURLE_OK) != 0)
            t->result = CURLE_WRITE_ERROR;
        unlink_from(&s->running, t);
        t->state = HC_T_DONE;
        for (tail = &s->done; *tail != NULL; tail = &(*tail)->next)
            ;
        *tail = t;
        n++;
    }
    return n;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int hc_session_poll(hc_session *s, long timeout_ms)
{
    long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int running = 0, n;
    for (;;) {
        long left;
        if (curl_multi_perform(s->multi, &running) != CURLM_OK)
            return -1;
        n = collect(s);
        left = deadline - now_ms();
        if (n > 0 || running == 0 || left <= 0)
            return n;
        if (curl_multi_poll(s->multi, NULL, 0, left > 1000 ? 1000 : (int)left, NULL) != CURLM_OK)
            return -1;
    }
}

hc_transfer *hc_session_take_done(hc_session *s)
{
    hc_transfer *list = s->done, *t;
    s->done = NULL;
    for (t = list; t != NULL; t = t->next) {
        t->session = NULL;
        s->pending--;
    }
    return list;
}

int hc_session_pending(const hc_session *s) { return s->pending; }

hc_transfer *hc_session_first(hc_session *s)
{
    return s->running != NULL ? s->running : s->done;
}
