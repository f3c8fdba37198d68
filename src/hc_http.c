/* SPDX-License-Identifier: MIT */
/* libcurl transport (see hc_http.h). No callback here calls into Lua: bodies are read from
 * hc_body segment lists, responses land in capped buffers or the sink's files (hc_sink.c), and
 * the Lua layer drives the loop between calls, so a Lua error can never unwind through libcurl.
 * Content codings are decoded here (hc_inflate.h), where the caps count decoded bytes. */
#define _POSIX_C_SOURCE 200809L
#include "hc_http.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "hc_inflate.h"

#if defined(__GNUC__)
#  define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#  define PRINTF_LIKE(f, a)
#endif

enum { T_NEW, T_RUNNING, T_DONE };

struct hc_session {
    CURLM *multi;                  /* owned */
    hc_transfer *running;          /* list through next */
    hc_transfer *done;             /* list through next, oldest first */
    int pending;
};

struct hc_transfer {
    CURL *easy;                    /* owned */
    struct curl_slist *headers;    /* owned */
    hc_body *body;                 /* owned, NULL for no body */
    hc_buf response;               /* body of the final response, when it is held in memory */
    hc_buf response_headers;       /* header lines of the final response */
    char errbuf[CURL_ERROR_SIZE];
    char body_error[512];          /* why the request body could not be read */
    int state;                     /* T_* */
    int response_too_large;
    int headers_too_large;         /* the header lines (or the trailer) passed their cap */
    int abandoned;                 /* removed from its session before it ended */
    /* Why the transport itself stopped the answer (a content coding it will not decode): a
     * fixed short reason ("encoding", "compression_ratio"), NULL when none. */
    const char *stop_code;
    char stop_message[512];
    /* Content coding of the final response: what it said, whether it may be decoded, the
     * decoder once its body started. */
    char content_encoding[64];
    int compressed;                /* gzip/deflate asked for (Accept-Encoding): decoded */
    double max_compression_ratio;
    int body_started;
    int final_block;               /* the header block being read is a final (not 1xx) answer's */
    int headers_done;              /* the final answer's header block ended: what follows is trailer */
    size_t trailer_bytes;          /* of the chunked answer's trailer, received after its body */
    int inflating;
    hc_inflate inflater;           /* owned while inflating */
    long timeout_ms, min_speed, idle_timeout_ms;  /* copies, for messages */
    CURLcode result;
    hc_sink *sink;                 /* owned, NULL when the body always goes to memory */
    void *owner;                   /* not owned: the owner's handle (hc_transfer_set_owner) */
    hc_session *session;           /* not owned; set while attached */
    hc_transfer *next;             /* links in the session's running or done list */
};

/* ---- callbacks: the request body ---------------------------------------------------------- */

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

/* ---- callbacks: the answer ---------------------------------------------------------------- */

/* Whether the sink (if any) has stopped the answer. */
static int sink_failed(const hc_transfer *t)
{
    const char *message, *code;
    return t->sink != NULL && hc_sink_error(t->sink, &message, &code) != HC_SINKERR_NONE;
}

/* The transport stops the answer for a reason of its own (a content coding it will not decode):
 * code is a fixed reason string; the first reason given (here or the sink's) is kept.
 * Returns -1. */
static int stop(hc_transfer *t, const char *code, const char *fmt, ...) PRINTF_LIKE(3, 4);
static int stop(hc_transfer *t, const char *code, const char *fmt, ...)
{
    va_list ap;
    if (t->stop_code != NULL || sink_failed(t))
        return -1;
    t->stop_code = code;
    va_start(ap, fmt);
    vsnprintf(t->stop_message, sizeof t->stop_message, fmt, ap);
    va_end(ap);
    return -1;
}

/* Forgets the body decoding state of a response (a new one starts, or the transfer ends). */
static void coding_reset(hc_transfer *t)
{
    if (t->inflating)
        hc_inflate_free(&t->inflater);
    t->inflating = 0;
    t->body_started = 0;
    t->final_block = 0;
    t->headers_done = 0;
    t->trailer_bytes = 0;
    t->content_encoding[0] = '\0';
}

/* The sink decides where the final response's body goes. Returns 0 or -1. */
static int sink_decide(hc_transfer *t)
{
    long status = 0;
    char *ct = NULL;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(t->easy, CURLINFO_CONTENT_TYPE, &ct);
    return hc_sink_decide(t->sink, status, ct);
}

/* The transfer ended (ok: libcurl says it succeeded): the decoder checks the coding ended, the
 * sink completes or abandons its files. Returns 0, or -1 when a success became a failure. */
static int transfer_end(hc_transfer *t, int ok)
{
    int rc = 0;
    /* libcurl takes a connection closed inside the final answer's header block for the end of
     * an answer without a body: a download cut there was an empty file, and a success. */
    if (ok && !t->headers_done) {
        stop(t, "partial", "the connection closed before the answer's header block ended");
        ok = 0;
        rc = -1;
    }
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
    if (t->sink == NULL)
        return rc;
    if (ok && hc_sink_mode(t->sink) == HC_SINK_UNDECIDED && sink_decide(t) != 0) {
        hc_sink_end(t->sink, 0);
        return -1;
    }
    return hc_sink_end(t->sink, ok) != 0 ? -1 : rc;
}

/* Decoded body bytes of the final response, to memory or to the sink's files, within the caps.
 * Returns 0, or -1 with the reason set. */
static int deliver(hc_transfer *t, const char *p, size_t n)
{
    if (t->sink != NULL && hc_sink_mode(t->sink) != HC_SINK_TO_MEMORY)
        return hc_sink_write(t->sink, p, n);
    if (hc_buf_append(&t->response, p, n) != 0) {
        t->response_too_large = 1;
        return -1;
    }
    return 0;
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
        if (strcasecmp(ce, "gzip") != 0 && strcasecmp(ce, "x-gzip") != 0
            && strcasecmp(ce, "deflate") != 0)
            return stop(t, "encoding", "the answer has Content-Encoding '%.60s'; only gzip or "
                        "deflate, applied once, is decoded", ce);
        r = hc_inflate_init(&t->inflater, t->max_compression_ratio);
        t->inflating = 1;
        if (r != HC_INFLATE_OK)
            return stop(t, "encoding", "the %s-encoded answer %s", ce, hc_inflate_strerror(r));
    }
    if (t->sink != NULL && hc_sink_mode(t->sink) == HC_SINK_UNDECIDED)
        return sink_decide(t);
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
        stop(t, "compression_ratio", "the %s-encoded answer decodes to more than %g bytes per "
             "byte received (%lld bytes from %lld): a compression bomb?", t->content_encoding,
             t->max_compression_ratio, (long long)t->inflater.decoded, (long long)t->inflater.in);
    else if (r != HC_INFLATE_ERR_CALLBACK)
        stop(t, "encoding", "the %s-encoded answer %s", t->content_encoding,
             hc_inflate_strerror(r));
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

/* At most out_size - 1 bytes of p[0..n) into out, each byte that is no printable ASCII as '?' (the
 * text is a server's and may reach a terminal), "..." at the end when it was cut. */
static void printable_cut(char *out, size_t out_size, const char *p, size_t n)
{
    size_t k, room = out_size - 1;
    if (n > room && room > 3)
        room -= 3;
    for (k = 0; k < n && k < room; k++)
        out[k] = p[k] >= 0x20 && p[k] <= 0x7e ? p[k] : '?';
    if (k < n && k + 3 < out_size) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
}

/* Whether p[0..n) starts with a status line as RFC 9112 writes it, or as libcurl hands over one
 * of HTTP/2 or 3 ("HTTP/2 200 "): HTTP/ DIGIT [ "." DIGIT ] SP 3DIGIT, then SP, CR or LF, the code
 * from 100 to 599 (RFC 9110 15: others are invalid; a 999 is no answer to act on). libcurl
 * takes a line it cannot read that starts with "HTTP/" for "HTTP/1.0 200": garbage a success. */
static int is_status_line(const char *p, size_t n)
{
    size_t i = 5;
    if (n <= i || memcmp(p, "HTTP/", i) != 0 || !isdigit((unsigned char)p[i]))
        return 0;
    i++;
    if (i + 1 < n && p[i] == '.' && isdigit((unsigned char)p[i + 1]))
        i += 2;
    if (i + 5 > n || p[i] != ' ' || p[i + 1] < '1' || p[i + 1] > '5'
        || !isdigit((unsigned char)p[i + 2]) || !isdigit((unsigned char)p[i + 3]))
        return 0;
    i += 4;
    return p[i] == ' ' || p[i] == '\r' || p[i] == '\n';
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
            printable_cut(shown, sizeof shown, p + start, end - start);
            return stop(t, "encoding", "the answer has Transfer-Encoding '%s'; only chunked is "
                        "accepted", shown);
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
    /* After the final answer's header block, libcurl hands over the trailer of a chunked answer
     * (also when no body byte came): none of it is a header of the answer, nor a new response (a
     * trailer line "HTTP/1.1 200 OK" reset the sink, removing the instances it had named), so it
     * is only counted against the headers' cap. */
    if (t->body_started || t->headers_done) {
        t->trailer_bytes += n;
        if (t->trailer_bytes > t->response_headers.cap) {
            t->headers_too_large = 1;
            return 0;
        }
        return n;
    }
    /* A new status line starts a new response (after 100 Continue, a redirect or auth):
     * only the final one is kept. */
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        if (!is_status_line(p, n)) {
            char shown[84];
            size_t len = n;
            while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == '\n'))
                len--;
            printable_cut(shown, sizeof shown, p, len);
            stop(t, "recv", "not an HTTP answer: its status line is '%s'", shown);
            return 0;
        }
        hc_buf_free(&t->response_headers);
        hc_buf_free(&t->response);
        if (t->sink != NULL)
            hc_sink_reset(t->sink);
        coding_reset(t);
        {
            const char *sp = memchr(p, ' ', n);
            t->final_block = sp == NULL || (size_t)(sp - p) + 1 >= n || sp[1] != '1';
        }
    } else if ((n == 2 && p[0] == '\r' && p[1] == '\n') || (n == 1 && p[0] == '\n')) {
        t->headers_done = t->final_block;
    }
    note_content_encoding(t, p, n);
    if (check_transfer_encoding(t, p, n) != 0)
        return 0;
    if (hc_buf_append(&t->response_headers, p, n) != 0) {
        t->headers_too_large = 1;
        return 0;
    }
    return n;
}

/* ---- transfers: making one ---------------------------------------------------------------- */

/* Appends a header line to t's list. Returns 0 or -1. */
static int add_header(hc_transfer *t, const char *line)
{
    struct curl_slist *n = curl_slist_append(t->headers, line);
    if (n == NULL)
        return -1;
    t->headers = n;
    return 0;
}

/* The caller's header lines, then "Expect:" (Orthanc and other servers never answer "Expect:
 * 100-continue", and libcurl then waits a second before each body over 1 MiB) and an
 * Accept-Encoding (said either way: with none a server may pick any coding, RFC 9110 12.5.3),
 * unless the caller gave them. Returns 0 or -1. */
static int add_headers(hc_transfer *t, const char *const *headers, size_t nheaders, int has_body)
{
    size_t i;
    int has_expect = 0, has_accept_encoding = 0;
    for (i = 0; i < nheaders; i++) {
        if (strncasecmp(headers[i], "expect:", 7) == 0)
            has_expect = 1;
        if (strncasecmp(headers[i], "accept-encoding:", 16) == 0)
            has_accept_encoding = 1;
        if (add_header(t, headers[i]) != 0)
            return -1;
    }
    if (has_body && !has_expect && add_header(t, "Expect:") != 0)
        return -1;
    if (!has_accept_encoding
        && add_header(t, t->compressed ? "Accept-Encoding: gzip, deflate"
                                       : "Accept-Encoding: identity") != 0)
        return -1;
    return 0;
}

/* What every request sets on its handle: callbacks, URL, limits, TLS, HTTP version. */
static void set_options(hc_transfer *t, const hc_transfer_opts *o)
{
    CURL *e = t->easy;
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
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, t->min_speed);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (o->idle_timeout_ms + 999) / 1000);
    }
    if (o->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
    /* Set, they replace the environment's proxy variables, as `curl --proxy` does. */
    if (o->proxy)
        curl_easy_setopt(e, CURLOPT_PROXY, o->proxy);
    if (o->no_proxy)
        curl_easy_setopt(e, CURLOPT_NOPROXY, o->no_proxy);
    /* A proxy's answer to CONNECT is no header block of ours: once a final answer's block ends,
     * on_header takes what follows for the trailer. */
    curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    if (o->insecure) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                     o->http2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
    /* Waiting for a connection being made, to multiplex on it, pays only where HTTP/2 can be had
     * (over TLS): over plain http each request would wait for the one before it to connect, and
     * against a server that closes every connection they would go one at a time. */
    if (o->http2 && strncasecmp(o->url, "https://", 8) == 0)
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    if (o->verbose)
        curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
    /* Fewer, larger writes to disk. */
    if (t->sink != NULL)
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 256L * 1024L);
}

/* The method, and the body read from t->body (with its length known before it is sent). */
static void set_method(hc_transfer *t, const char *method)
{
    CURL *e = t->easy;
    if (t->body != NULL) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(e, CURLOPT_READDATA, t);
        curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
        curl_easy_setopt(e, CURLOPT_SEEKDATA, t);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)hc_body_length(t->body));
        /* Larger reads from disk and larger writes to the socket: fewer syscalls per GB. */
        curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 512L * 1024L);
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
        }
    }
}

hc_transfer *hc_transfer_new(const hc_transfer_opts *o, const char *const *headers,
                             size_t nheaders, hc_body *body, char *err, size_t errlen)
{
    hc_transfer *t = calloc(1, sizeof *t); /* the caller's, through hc_transfer_free */
    if (t == NULL) {
        hc_body_free(body);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->body = body;
    t->compressed = o->compressed;
    t->max_compression_ratio = o->max_compression_ratio;
    t->timeout_ms = o->timeout_ms;
    t->idle_timeout_ms = o->idle_timeout_ms;
    t->min_speed = o->min_speed > 0 ? o->min_speed : 1;
    hc_buf_init(&t->response, o->max_response_bytes);
    hc_buf_init(&t->response_headers, 256 * 1024);
    if (o->sink_kind != 0) {
        t->sink = hc_sink_new(o->sink_kind, o->sink_path, o->sink_max_bytes, o->sink_max_parts,
                              o->sink_max_part_bytes);
        if (t->sink == NULL) {
            snprintf(err, errlen, "out of memory");
            hc_transfer_free(t);
            return NULL;
        }
        if (o->sink_name_by_uid)
            hc_sink_name_by_uid(t->sink);
    }
    t->easy = curl_easy_init();
    if (t->easy == NULL || add_headers(t, headers, nheaders, body != NULL) != 0) {
        snprintf(err, errlen, t->easy == NULL ? "cannot create a libcurl handle" : "out of memory");
        hc_transfer_free(t);
        return NULL;
    }
    set_options(t, o);
    set_method(t, o->method);
    t->state = T_NEW;
    return t;
}

void hc_transfer_free(hc_transfer *t)
{
    if (t == NULL)
        return;
    if (t->session != NULL)
        hc_session_remove(t->session, t);
    if (t->easy != NULL)
        curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->headers);
    hc_body_free(t->body);
    hc_buf_free(&t->response);
    hc_buf_free(&t->response_headers);
    coding_reset(t);
    hc_sink_free(t->sink);
    free(t);
}

/* ---- transfers: reading one --------------------------------------------------------------- */

void hc_transfer_set_owner(hc_transfer *t, void *owner) { t->owner = owner; }
void *hc_transfer_owner(const hc_transfer *t) { return t->owner; }
int hc_transfer_done(const hc_transfer *t) { return t->state == T_DONE; }
const char *hc_transfer_errmsg(const hc_transfer *t) { return t->errbuf; }
const hc_buf *hc_transfer_headers(const hc_transfer *t) { return &t->response_headers; }
const hc_buf *hc_transfer_body(const hc_transfer *t) { return &t->response; }
hc_sink *hc_transfer_sink(hc_transfer *t) { return t->sink; }

void hc_transfer_progress(hc_transfer *t, int64_t *sent, int64_t *to_send, int64_t *received)
{
    curl_off_t up = 0, down = 0;
    curl_easy_getinfo(t->easy, CURLINFO_SIZE_UPLOAD_T, &up);
    curl_easy_getinfo(t->easy, CURLINFO_SIZE_DOWNLOAD_T, &down);
    *sent = (int64_t)up;
    *received = (int64_t)down;
    *to_send = t->body != NULL ? hc_body_length(t->body) : 0;
}

long hc_transfer_http_status(hc_transfer *t)
{
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    return status;
}

const char *hc_transfer_http_version(hc_transfer *t)
{
    long version = 0;
    curl_easy_getinfo(t->easy, CURLINFO_HTTP_VERSION, &version);
    return version == CURL_HTTP_VERSION_2_0 ? "2" :
           version == CURL_HTTP_VERSION_3 ? "3" :
           version == CURL_HTTP_VERSION_1_0 ? "1.0" : "1.1";
}

/* libcurl's result as a fixed short reason. */
static const char *curl_reason(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_RESOLVE_HOST: return "resolve";
    case CURLE_COULDNT_RESOLVE_PROXY: return "resolve";
    case CURLE_COULDNT_CONNECT: return "connect";
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_SEND_ERROR: return "send";
    case CURLE_RECV_ERROR: case CURLE_WEIRD_SERVER_REPLY: return "recv";
    case CURLE_GOT_NOTHING: return "empty_reply";
    case CURLE_PARTIAL_FILE: return "partial";
    case CURLE_HTTP2: case CURLE_HTTP2_STREAM: return "http2";
    case CURLE_SSL_CONNECT_ERROR: return "tls";
    case CURLE_PEER_FAILED_VERIFICATION: return "tls_verify";
    case CURLE_SSL_CACERT_BADFILE: return "tls_ca_file";
    case CURLE_READ_ERROR: case CURLE_ABORTED_BY_CALLBACK: return "body";
    case CURLE_WRITE_ERROR: return "response_too_large";
    case CURLE_URL_MALFORMAT: case CURLE_UNSUPPORTED_PROTOCOL: return "url";
    default: return "other";
    }
}

/* Whether t's request went out (libcurl refuses a URL's scheme before it sends anything). */
static int request_sent(hc_transfer *t)
{
    long size = 0;
    curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &size);
    return size > 0;
}

/* libcurl's own reason, made precise for its two kinds of timeout and for an answer that is no
 * HTTP. */
static void curl_failure(hc_transfer *t, hc_failure *f)
{
    const char *why = t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->result);
    f->status = curl_reason(t->result);
    if (t->result == CURLE_OPERATION_TIMEDOUT && strncmp(why, "Operation too slow", 18) == 0) {
        /* libcurl's low-speed check (CURLOPT_LOW_SPEED_LIMIT/TIME), not the deadline. */
        f->status = "too_slow";
        snprintf(f->message, sizeof f->message, "fewer than %ld bytes per second moved for %ld s "
                 "(min_speed, idle_timeout)", t->min_speed, (t->idle_timeout_ms + 999) / 1000);
    } else if (t->result == CURLE_OPERATION_TIMEDOUT && t->timeout_ms > 0
               && strncmp(why, "Operation timed out", 19) == 0) {
        /* The whole request's deadline (CURLOPT_TIMEOUT), not a connect or resolve timeout. */
        snprintf(f->message, sizeof f->message, "Operation timed out: not done within the timeout "
                 "of %.3g s", (double)t->timeout_ms / 1000.0);
    } else if ((t->result == CURLE_UNSUPPORTED_PROTOCOL && request_sent(t))
               || t->result == CURLE_WEIRD_SERVER_REPLY) {
        /* A status line libcurl refuses itself ("HTTP/1.1 abc", no "HTTP/" at all): the
         * server's answer is at fault, not the URL; or a header block it cannot read ("Header
         * without colon"). */
        f->status = "recv";
        snprintf(f->message, sizeof f->message, "not an HTTP answer (%s)", why);
    } else {
        long connect_code = 0;
        curl_easy_getinfo(t->easy, CURLINFO_HTTP_CONNECTCODE, &connect_code);
        if (connect_code >= 300) /* a proxy that answered CONNECT with a refusal */
            f->status = "proxy";
        snprintf(f->message, sizeof f->message, "%s", why);
    }
}

/* Why t failed, in this order: its request body, the sink's files, the transport's or the
 * sink's own stop, a malformed multipart answer, the memory cap, then libcurl. Returns whether
 * the message already says what arrived (or need not). */
static int find_failure(hc_transfer *t, hc_failure *f)
{
    const char *sink_message = "", *cap_code = NULL;
    int sink_error = t->sink != NULL ? hc_sink_error(t->sink, &sink_message, &cap_code)
                                     : HC_SINKERR_NONE;
    f->kind = "transport";
    if (t->body_error[0] || sink_error == HC_SINKERR_IO) {
        f->kind = "io";
        f->status = t->body_error[0] ? "body" : "sink";
        snprintf(f->message, sizeof f->message, "%s",
                 t->body_error[0] ? t->body_error : sink_message);
        return 1;
    }
    if (t->stop_code != NULL || sink_error == HC_SINKERR_CAP) {
        f->status = t->stop_code != NULL ? t->stop_code : cap_code;
        snprintf(f->message, sizeof f->message, "%s",
                 t->stop_code ? t->stop_message : sink_message);
        return 0;
    }
    if (sink_error == HC_SINKERR_MULTIPART) {
        f->status = "multipart";
        snprintf(f->message, sizeof f->message, "%s", sink_message);
        return 1;
    }
    if (t->headers_too_large) {
        f->status = "response_too_large";
        snprintf(f->message, sizeof f->message, "the answer's header (or trailer) lines are larger "
                 "than %lu bytes", (unsigned long)t->response_headers.cap);
        return 1;
    }
    if (t->response_too_large) {
        f->status = "response_too_large";
        snprintf(f->message, sizeof f->message, "the answer is larger than max_response_bytes "
                 "(%lu bytes)", (unsigned long)t->response.cap);
        return 1;
    }
    if (t->abandoned) {
        f->status = "abandoned";
        snprintf(f->message, sizeof f->message, "request abandoned");
        return 0;
    }
    curl_failure(t, f);
    return 0;
}

int hc_transfer_failure(hc_transfer *t, hc_failure *f)
{
    size_t n;
    if (t->state != T_DONE || t->result == CURLE_OK)
        return 0;
    if (!find_failure(t, f) && t->sink != NULL && hc_sink_mode(t->sink) == HC_SINK_TO_PARTS) {
        size_t parts = hc_sink_nparts(t->sink);
        n = strlen(f->message);
        snprintf(f->message + n, sizeof f->message - n, " (%lu complete part%s received)",
                 (unsigned long)parts, parts == 1 ? "" : "s");
    }
    return 1;
}

/* ---- sessions ----------------------------------------------------------------------------- */

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
    if (t->state == T_RUNNING) {
        curl_multi_remove_handle(s->multi, t->easy);
        unlink_from(&s->running, t);
        t->result = CURLE_ABORTED_BY_CALLBACK;
        t->abandoned = 1;
        transfer_end(t, 0);
        t->state = T_DONE;
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
    if (t->state != T_NEW) {
        snprintf(t->errbuf, sizeof t->errbuf, "transfer already started");
        return -1;
    }
    if (t->body != NULL && hc_body_seek(t->body, 0) != 0) {
        snprintf(t->errbuf, sizeof t->errbuf, "%s", hc_body_error(t->body));
        return -1;
    }
    if (curl_multi_add_handle(s->multi, t->easy) != CURLM_OK) {
        snprintf(t->errbuf, sizeof t->errbuf, "cannot start the transfer");
        return -1;
    }
    t->state = T_RUNNING;
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
        if (transfer_end(t, t->result == CURLE_OK) != 0)
            t->result = CURLE_WRITE_ERROR;
        unlink_from(&s->running, t);
        t->state = T_DONE;
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

hc_transfer *hc_session_next_done(hc_session *s)
{
    hc_transfer *t = s->done;
    if (t == NULL)
        return NULL;
    s->done = t->next;
    t->next = NULL;
    t->session = NULL;
    s->pending--;
    return t;
}

int hc_session_pending(const hc_session *s) { return s->pending; }

hc_transfer *hc_session_first(hc_session *s)
{
    return s->running != NULL ? s->running : s->done;
}
