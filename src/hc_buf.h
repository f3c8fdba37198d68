/* SPDX-License-Identifier: MIT */
/* A growable, binary-safe byte buffer with a hard cap, in the manner of curl's dynbuf: every
 * buffer the core fills from the network has a ceiling, so a hostile or broken server can make a
 * call fail but cannot make the process grow without bound. */
#ifndef HC_BUF_H
#define HC_BUF_H

#include <stddef.h>

typedef struct hc_buf {
    char *data;     /* owned; NUL-terminated for convenience, but may hold NULs */
    size_t len;
    size_t size;    /* allocated bytes */
    size_t cap;     /* most bytes it may ever hold */
} hc_buf;

/* Starts an empty buffer that will refuse to grow past cap bytes. Allocates nothing. */
void hc_buf_init(hc_buf *b, size_t cap);
/* Appends n bytes; returns 0, or -1 when the cap would be exceeded or memory ran out (the
 * buffer is then unchanged). */
int hc_buf_append(hc_buf *b, const void *p, size_t n);
/* Frees the storage and leaves an empty buffer with the same cap. */
void hc_buf_free(hc_buf *b);

/* Writes the n bytes at p as 2n lower-case hex digits to out (2n bytes, no NUL added): the one
 * hex encoder of the module (random names, digests). */
void hc_buf_hex(const void *p, size_t n, char *out);

#endif
