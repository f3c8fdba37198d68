/* SPDX-License-Identifier: MIT */
/* A push parser for multipart response bodies (RFC 2046 section 5.1, RFC 2387): the transport
 * feeds it the body in whatever pieces the network delivers, down to single bytes, and it calls
 * back with each part's header block and then its content, as it arrives. It holds only the
 * delimiter it is matching (at most 74 bytes, never copied) and the header block of the current
 * part (at most HC_MP_MAX_HEADERS bytes), so a body of any size is parsed in constant memory.
 * Pure C, no I/O: the transport decides where the content goes. */
#ifndef HC_MULTIPART_H
#define HC_MULTIPART_H

#include <stddef.h>
#include <stdint.h>

#include "hc_buf.h"

#define HC_MP_MAX_BOUNDARY 70
#define HC_MP_MAX_HEADERS (64 * 1024)
/* Bytes of preamble skipped before the first delimiter before the body is declared not to be
 * multipart at all (a wrong boundary would otherwise be searched for to the end of the body). */
#define HC_MP_MAX_PREAMBLE (64 * 1024)

enum {
    HC_MP_OK = 0,
    HC_MP_ERR_NO_BOUNDARY,     /* the body does not start with the boundary delimiter */
    HC_MP_ERR_HEADERS_TOO_LARGE,
    HC_MP_ERR_HEADERS_MALFORMED,
    /* a delimiter followed by something other than padding, CRLF or "--" */
    HC_MP_ERR_DELIMITER,
    HC_MP_ERR_TRUNCATED,       /* the body ended before the close delimiter */
    HC_MP_ERR_CALLBACK         /* a callback returned non-zero */
};

/* Each callback returns 0 to go on, non-zero to stop the parser (HC_MP_ERR_CALLBACK). */
typedef struct hc_multipart_callbacks {
    /* A part starts. headers/len: its header block, checked (one "name: value" line per field,
     * each ending in CRLF; names are tokens, already lower-cased; no folded lines), possibly
     * empty; walk it with hc_multipart_next_header. Valid until the callback returns. */
    int (*part_begin)(void *ud, const char *headers, size_t len);
    /* The next bytes of the current part's content (never 0 bytes). */
    int (*part_data)(void *ud, const char *p, size_t n);
    /* The current part is complete: its closing delimiter has been read. */
    int (*part_end)(void *ud);
} hc_multipart_callbacks;

typedef struct hc_multipart {
    const hc_multipart_callbacks *cb;  /* not owned */
    void *ud;
    char delim[4 + HC_MP_MAX_BOUNDARY + 1];  /* "\r\n--" boundary */
    size_t delim_len;
    size_t matched;       /* bytes of delim matched and not yet passed on as content */
    int state;
    int error;            /* HC_MP_OK or the first error, which is sticky */
    int in_part;          /* between part_begin and part_end */
    int header_match;     /* progress through "\r\n\r\n" at the end of a header block */
    uint64_t preamble;    /* preamble bytes skipped so far */
    uint64_t parts;       /* parts completed */
    hc_buf headers;       /* the current part's header block */
} hc_multipart;

/* Starts a parser for boundary (len bytes, 1..70 of RFC 2046's bchars, not ending in a space).
 * Allocates nothing until headers arrive. Returns 0, or -1 for an invalid boundary. */
int hc_multipart_init(hc_multipart *m, const char *boundary, size_t len,
                      const hc_multipart_callbacks *cb, void *ud);
/* Parses the next n bytes of the body. Returns HC_MP_OK or the (sticky) error. */
int hc_multipart_feed(hc_multipart *m, const char *p, size_t n);
/* The body has ended: HC_MP_OK when the close delimiter was read, else the error
 * (HC_MP_ERR_NO_BOUNDARY when not even the first delimiter came, HC_MP_ERR_TRUNCATED). */
int hc_multipart_finish(hc_multipart *m);
/* Frees the header buffer; m may be initialised again. */
void hc_multipart_free(hc_multipart *m);
/* A sentence for an error code (static). */
const char *hc_multipart_strerror(int code);

/* One header field of a checked block. */
typedef struct hc_multipart_header {
    const char *name, *value;
    size_t name_len, value_len;   /* value without surrounding blanks */
} hc_multipart_header;

/* Walks a header block given to part_begin: fills h with the field at *p and advances *p past
 * its line. Returns 1, or 0 at the end. */
int hc_multipart_next_header(const char **p, const char *end, hc_multipart_header *h);

/* Reads a Content-Type value (n bytes). Returns 1 when its media type is multipart/<any> and it
 * has a valid boundary parameter (quoted or not), copied NUL-terminated into out (at least
 * HC_MP_MAX_BOUNDARY + 1 bytes) with its length in *len; -1 when it is multipart but the boundary
 * is missing, duplicated or invalid; 0 when it is not multipart. */
int hc_multipart_content_type(const char *ct, size_t n, char *out, size_t *len);

#endif
