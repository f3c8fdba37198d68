/* SPDX-License-Identifier: MIT */
/* libcurl transport (see hc_http.h). No callback here calls into Lua: bodies are read from
 * hc_body segment lists, responses land in capped buffers, and the Lua layer drives the loop
 * between calls, so a Lua error can never unwind through libcurl. */
#define _POSIX_C_SOURCE 200809L
#include "hc_http.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

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

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud)
{
    hc_transfer *t = ud;
    size_t n = size * nmemb;
    if (hc_buf_append(&t->response, p, n) != 0) {
        t->response_too_large = 1;
        return 0;
    }
    return n;
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
    }
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
    int has_expect = 0;

    memset(t, 0, sizeof *t);
    t->ref = -2;
    t->body = body;
    hc_buf_init(&t->response, o->max_response_bytes);
    hc_buf_init(&t->response_headers, 256 * 1024);
    t->easy = e = curl_easy_init();
    if (e == NULL)
        return fail(t, "cannot create a libcurl handle");

    for (i = 0; i < nheaders; i++) {
        struct curl_slist *n;
        if (strncasecmp(headers[i], "expect:", 7) == 0)
            has_expect = 1;
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
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    if (o->user_agent)
        curl_easy_setopt(e, CURLOPT_USERAGENT, o->user_agent);
    if (o->timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms);
    if (o->connect_timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    if (o->idle_timeout_ms > 0) {
        long secs = (o->idle_timeout_ms + 999) / 1000;
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
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
