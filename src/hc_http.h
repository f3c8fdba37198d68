/* SPDX-License-Identifier: MIT */
/* The transport: a session is one libcurl multi handle (its connection pool, HTTP/2 multiplexing
 * and event loop); a transfer is one request on it. Synchronous calls are a transfer run alone on
 * the session, so one client reuses its connections whether it sends one request or many. Both
 * are opaque: their owner (the Lua binding, hc_lua_http.c) reads them through the functions
 * below. No Lua here: a transfer carries an owner pointer its owner sets and reads back. */
#ifndef HC_HTTP_H
#define HC_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "hc_body.h"
#include "hc_buf.h"
#include "hc_sink.h"

typedef struct hc_session hc_session;
typedef struct hc_transfer hc_transfer;

typedef struct hc_transfer_opts {
    const char *method;            /* "GET", "POST", ... */
    const char *url;
    long timeout_ms;               /* whole request; 0 = none */
    long idle_timeout_ms;          /* cut when under min_speed bytes/s this long; 0 = none */
    long min_speed;                /* bytes per second, averaged over idle_timeout_ms; >= 1 */
    long connect_timeout_ms;
    size_t max_response_bytes;     /* a body held in memory, counted decoded */
    /* 0: "Accept-Encoding: identity" is sent and an encoded answer is refused. 1: gzip and
     * deflate are asked for and decoded here, the caps counting decoded bytes, and decoding
     * stops past max_compression_ratio decoded bytes per received byte (0: no ratio check). */
    int compressed;
    double max_compression_ratio;
    const char *user_agent;
    const char *ca_file;           /* NULL = system store */
    const char *proxy;             /* NULL = libcurl's environment variables; "" = none */
    const char *no_proxy;          /* NULL = $no_proxy / $NO_PROXY */
    int insecure;                  /* turns TLS verification off */
    int http2;
    int verbose;
    /* 0, or HC_SINK_FILE / HC_SINK_DIR: a 2xx body goes to sink_path (hc_sink.h). */
    int sink_kind;
    const char *sink_path;         /* copied */
    /* Caps of a sink, counted on decoded bytes, 0 = none: the body in all, the parts of a
     * directory sink, the bytes of one part (or of the file). Passing one stops the transfer. */
    int64_t sink_max_bytes, sink_max_parts, sink_max_part_bytes;
    int sink_name_by_uid;          /* a directory sink names parts by UID (hc_sink_name_by_uid) */
} hc_transfer_opts;

/* Why a transfer failed, from hc_transfer_failure. */
typedef struct hc_failure {
    const char *kind;              /* "transport", or "io" for the request body or the sink */
    const char *status;            /* a fixed short reason (hc_transfer_failure lists them) */
    char message[1024];
} hc_failure;

/* ---- sessions ----------------------------------------------------------------------------- */

/* Returns a new session owned by the caller (free with hc_session_free), or NULL. */
hc_session *hc_session_new(void);
/* Stops every running transfer (their result becomes "abandoned") and frees the session.
 * Transfers stay owned by their owners. */
void hc_session_free(hc_session *s);
/* Starts t on s. Returns 0, or -1 with the reason in hc_transfer_errmsg(t). */
int hc_session_start(hc_session *s, hc_transfer *t);
/* Runs the event loop until a transfer finishes or timeout_ms passes (0: only what is ready).
 * Finished transfers move to the session's done list. Returns how many finished, or -1. */
int hc_session_poll(hc_session *s, long timeout_ms);
/* Takes the oldest finished transfer off the session (it is no longer attached), or NULL. */
hc_transfer *hc_session_next_done(hc_session *s);
/* Removes t from the session (running or done) without waiting; a running one is abandoned. */
void hc_session_remove(hc_session *s, hc_transfer *t);
/* Any transfer still attached to s (running or done), or NULL: for tearing a session down. */
hc_transfer *hc_session_first(hc_session *s);
/* Number of transfers attached to s: started and not yet taken off or removed. */
int hc_session_pending(const hc_session *s);

/* ---- transfers ---------------------------------------------------------------------------- */

/* Returns a new transfer for a request (owned by the caller: hc_transfer_free), not started;
 * headers are copied, body is adopted (freed with the transfer, or here on failure). On failure
 * returns NULL with the reason in err (errlen bytes). */
hc_transfer *hc_transfer_new(const hc_transfer_opts *o, const char *const *headers,
                             size_t nheaders, hc_body *body, char *err, size_t errlen);
/* Stops t when it runs (removing it from its session) and frees it with what it holds. Files
 * of its sink not handed to the caller (parts before hc_sink_take_parts) are removed. */
void hc_transfer_free(hc_transfer *t);

/* The owner's handle on t (the Lua binding's userdata), NULL until set. */
void hc_transfer_set_owner(hc_transfer *t, void *owner);
void *hc_transfer_owner(const hc_transfer *t);
/* Whether t has finished (successfully or not). */
int hc_transfer_done(const hc_transfer *t);
/* Why hc_session_start refused t. */
const char *hc_transfer_errmsg(const hc_transfer *t);
/* Bytes sent, the request body's length, bytes received (on the wire) so far. */
void hc_transfer_progress(hc_transfer *t, int64_t *sent, int64_t *to_send, int64_t *received);

/* Once done: 0 when t succeeded; else 1 with why in *f. Reasons (f->status): libcurl's
 * ("resolve", "connect", "timeout", "send", "recv", "empty_reply", "partial", "http2", "tls",
 * "tls_verify", "tls_ca_file", "url", "other"; "recv" also for an answer whose status line is
 * no HTTP one, whether libcurl or the transport refused it, or a header block libcurl cannot
 * read), "abandoned" (removed before it ended), the caps ("too_large", "too_many_parts", "part_too_large" of the sink,
 * "response_too_large" of max_response_bytes, "too_slow": min_speed over idle_timeout),
 * "encoding" (a content coding not asked for, unknown or broken), "compression_ratio", "multipart" (a malformed multipart
 * answer), and kind "io": "body" (the request body could not be read), "sink" (its files). A
 * message of a failure while parts were being written ends with how many were complete. */
int hc_transfer_failure(hc_transfer *t, hc_failure *f);
/* The final response: HTTP status (0 when none came), version ("1.0", "1.1", "2", "3"), header
 * lines and the body held in memory (not what went to a sink). Owned by t. */
long hc_transfer_http_status(hc_transfer *t);
const char *hc_transfer_http_version(hc_transfer *t);
const hc_buf *hc_transfer_headers(const hc_transfer *t);
const hc_buf *hc_transfer_body(const hc_transfer *t);
/* The transfer's sink (owned by t), NULL when none was asked for. */
hc_sink *hc_transfer_sink(hc_transfer *t);

#endif
