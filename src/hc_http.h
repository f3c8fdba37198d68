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
#include "hc_inflate.h"
#include "hc_multipart.h"

typedef struct hc_session hc_session;
typedef struct hc_transfer hc_transfer;

enum { HC_T_NEW, HC_T_RUNNING, HC_T_DONE };

/* Where a 2xx response body goes (see hc_transfer_opts.sink_*). */
enum { HC_SINK_NONE, HC_SINK_FILE, HC_SINK_DIR };
/* What was decided at the final response's first body byte (or its end, when it had none). */
enum { HC_MODE_UNDECIDED, HC_MODE_MEMORY, HC_MODE_FILE, HC_MODE_MULTIPART, HC_MODE_SINGLE };
/* Why a sink stopped a transfer. */
enum { HC_SINKERR_NONE, HC_SINKERR_IO, HC_SINKERR_MULTIPART };
/* Retained part header blocks of one answer, in all: each is at most 64 KiB (hc_multipart.h), and
 * a server must not make many of them cost gigabytes. */
#define HC_MAX_PART_HEADERS_TOTAL (32 * 1024 * 1024)

/* A part written to disk by a directory sink. */
typedef struct hc_part {
    char *path;                    /* owned */
    char *headers;                 /* owned: the part's checked header block (hc_multipart.h) */
    size_t headers_len;
    int64_t size;
} hc_part;

typedef struct hc_sink {
    int kind;                      /* HC_SINK_* */
    char *path;                    /* owned: the file, or the directory */
    int mode;                      /* HC_MODE_* */
    int fd;                        /* the file being written, or -1 */
    char *tmp;                     /* owned: its path, NULL when none */
    char *cur_headers;             /* owned: header block of the part being written */
    size_t cur_headers_len;
    int64_t cur_size;              /* bytes in the file being written */
    int64_t bytes;                 /* body bytes of the final response received (decoded) */
    int64_t max_bytes;             /* caps on the decoded body, 0 = none: in all, */
    int64_t max_parts;             /* parts (a directory sink), */
    int64_t max_part_bytes;        /* bytes of one part or file */
    size_t headers_total;          /* bytes of the retained part header blocks */
    hc_part *parts;                /* owned: completed parts, in stream order */
    size_t nparts, parts_size;
    int parts_taken;               /* the caller has been given the parts: they are its files */
    hc_multipart mp;
    int mp_live;                   /* mp is initialised */
    int error;                     /* HC_SINKERR_* */
    char message[512];
    char media[64];                /* "multipart/related", for messages */
} hc_sink;

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
    /* Why the transport itself stopped the answer (a cap, an unasked or broken content coding):
     * a fixed short reason callers branch on ("too_large", "encoding", ...), NULL when none. */
    const char *stop_code;
    char stop_message[512];
    /* Content coding of the final response: what it said, whether it may be decoded, the
     * decoder once its body started. */
    char content_encoding[64];
    int compressed;                /* asked for gzip/deflate (Accept-Encoding), so they are decoded */
    double max_compression_ratio;
    int body_started;
    int inflating;
    hc_inflate inflater;           /* owned while inflating */
    long timeout_ms, min_speed, idle_timeout_ms;  /* copies, for messages */
    CURLcode result;
    hc_sink sink;
    hc_session *session;           /* not owned; set while running */
    hc_transfer *next;             /* links in the session's running or done list */
    int ref;                       /* owner's handle (the Lua registry ref) while running */
};

typedef struct hc_transfer_opts {
    const char *method;            /* "GET", "POST", ... */
    const char *url;
    long timeout_ms;               /* whole request; 0 = none */
    long idle_timeout_ms;          /* abort when fewer than min_speed bytes/s move this long; 0 = none */
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
    int insecure;                  /* turns TLS verification off */
    int http2;
    int verbose;
    /* HC_SINK_FILE: a 2xx body goes to sink_path (through a temporary file beside it, renamed
     * when the transfer succeeds). HC_SINK_DIR: a 2xx body goes to files in the directory
     * sink_path, one per multipart part (or one for a body that is not multipart). */
    int sink_kind;
    const char *sink_path;         /* copied */
    /* Caps of a sink, counted on decoded bytes, 0 = none: the body in all, the parts of a
     * directory sink, the bytes of one part (or of the file). Passing one stops the transfer. */
    int64_t sink_max_bytes, sink_max_parts, sink_max_part_bytes;
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
/* Releases what the transfer holds (stopping it when it runs). Temporary files of its sink
 * that were not handed to the caller (parts before hc_transfer_take_parts) are removed. */
void hc_transfer_cleanup(hc_transfer *t);

/* The caller now owns the files of t->sink.parts: cleanup leaves them. */
void hc_transfer_take_parts(hc_transfer *t);

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
