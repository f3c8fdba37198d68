/* SPDX-License-Identifier: MIT */
/* The text of HTTP requests and answers that the core builds or reads: percent-encoding for URL
 * paths and query strings (RFC 3986), the check that keeps CR/LF out of header lines, and the
 * splitting of a response's header block into fields. Pure functions over byte ranges, so they
 * can be tested and fuzzed without a network. */
#ifndef HC_URL_H
#define HC_URL_H

#include <stddef.h>
#include "hc_buf.h"

/* Appends s (n bytes, binary-safe) to out with every byte outside the unreserved set
 * (ALPHA DIGIT - . _ ~) and outside keep encoded as %XX. Returns 0 or -1 (out's cap). */
int hc_url_escape(const char *s, size_t n, const char *keep, hc_buf *out);

/* Returns 1 when the n bytes contain CR, LF or NUL, which may never reach a header line. */
int hc_url_has_ctl(const char *s, size_t n);

/* One field of a response header block; both point into the block, which the caller owns. */
typedef struct hc_url_field {
    const char *name;    /* an RFC 9110 token: never empty, no ':', no space */
    size_t name_len;
    const char *value;   /* without the spaces and tabs around it; no LF */
    size_t value_len;
} hc_url_field;

/* Finds the next "Name: value" line of the header block [*p, end) and moves *p past it. Lines
 * end at LF (a CR before it is dropped). Status lines ("HTTP/1.1 200 OK"), folded continuation
 * lines, blank lines and lines whose name is not a token are skipped. Returns 1 with f set, or 0
 * when no field is left (*p is then end). */
int hc_url_next_field(const char **p, const char *end, hc_url_field *f);

#endif
