/* SPDX-License-Identifier: MIT */
/* Percent-encoding for URL paths and query strings (RFC 3986). */
#ifndef HC_URL_H
#define HC_URL_H

#include <stddef.h>
#include "hc_buf.h"

/* Appends s (n bytes, binary-safe) to out with every byte outside the unreserved set
 * (ALPHA DIGIT - . _ ~) and outside keep encoded as %XX. Returns 0 or -1 (out's cap). */
int hc_url_escape(const char *s, size_t n, const char *keep, hc_buf *out);

/* Returns 1 when the n bytes contain CR, LF or NUL, which may never reach a header line. */
int hc_url_has_ctl(const char *s, size_t n);

#endif
