/* SPDX-License-Identifier: MIT */
/* The transport: a session is one libcurl multi handle (its connection pool, HTTP/2 multiplexing
 * and event loop); a transfer is one request on it. Synchronous calls are a transfer run alone on
 * the session, so one client reuses its connections whether it sends one request or many. */
#ifndef HC_HTTP_H
#define HC_HTTP_H

#include <curl/curl.h>
#include <stdint.h>

#include "hc_body.h"
#include "hc_buf.h"

typedef struct hc_session hc_session;
typedef struct hc_transfer hc_transfer;

enum { HC_T_NEW, HC_T_RUNNING, HC_T_DONE };

struct hc_transfer {
    CURL *easy;                    /* owned */
    struct curl_slist *headers;    /* owned */
    hc_body *body;                 /* owned, NULL for no body */
    hc_buf response;               /* body of the final response */
    hc_buf response_headers;       /* header lines of the final response */
    char errbuf[CURL_ERROR_SIZE];
    char body_error[512];          /* why the request body could not be read */
    int state;
    int response_too_large;
    CURLcode result;
    hc_session *session;           /* not owned; set while running */
    hc_transfer *next;             /* links in the session's running or done list */
    int ref;                       /* owner's handle (the Lua registry ref) while running */
};

typedef struct hc_transfer_opts {
    const char *method;            /* "GET", "POST", ... */
    const char *url;
    long timeout_ms;               /* whole request; 0 = none */
    long idle_timeout_ms;          /* abort when no byte moves for this long; 0 = none */
    long connect_timeout_ms;
    size_t max_response_bytes;
    const char *user_agent;
    const char *ca_file;           /* NULL = system store */
    int insecure;                  /* turns TLS verification off */
    int http2;
    int verbose;
} hc_transfer_opts;

/* Returns a new session owned by the caller (free with hc_session_free), or NULL. */
hc_session *hc_session_new(void);
/* Stops every running transfer (their result becomes "aborted") and frees the session. Transfers
 * stay owned by their owners. */
void hc_session_free(hc_session *s);

/* Initialises t (which the caller owns) for a request; headers are copied; body is adopted
 * (freed with the transfer, even on failure). Returns 0 or -1 with a message in t->errbuf. */
int hc_transfer_init(hc_transfer *t, const hc_transfer_opts *o, const char *const *headers,
                     size_t nheaders, hc_body *body);
/* Releases what the transfer holds; it must not be running. */
void hc_transfer_cleanup(hc_transfer *t);

/* Starts t on s. Returns 0 or -1. */
int hc_session_start(hc_session *s, hc_transfer *t);
/* Runs the event loop until a transfer finishes or timeout_ms passes (0: only what is ready).
 * Finished transfers move to the session's done list. Returns how many finished, or -1. */
int hc_session_poll(hc_session *s, long timeout_ms);
/* Takes the done list (linked through next, in finishing order), leaving it empty. */
hc_transfer *hc_session_take_done(hc_session *s);
/* Removes t from the session (running or done) without waiting. */
void hc_session_remove(hc_session *s, hc_transfer *t);
/* Any transfer still attached to s (running or done), or NULL: for tearing a session down. */
hc_transfer *hc_session_first(hc_session *s);
/* Number of transfers started and not yet taken from the done list. */
int hc_session_pending(const hc_session *s);

#endif
