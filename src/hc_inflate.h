/* SPDX-License-Identifier: MIT */
/* A bounded decoder for HTTP content codings (gzip, deflate): compressed bytes go in as they
 * arrive, decoded bytes come out in chunks of at most HC_INFLATE_CHUNK to a callback, and the
 * decoder stops as soon as the output outgrows max_ratio times the input (past a floor), so a
 * small "compression bomb" is cut after a few MiB whatever caps the caller counts downstream.
 * libcurl's own decoding is not used: it decodes a whole network read before anyone counts. */
#ifndef HC_INFLATE_H
#define HC_INFLATE_H

#include <stddef.h>
#include <stdint.h>

#define HC_INFLATE_CHUNK (64 * 1024)
/* Output up to this many bytes is never judged by the ratio: the first blocks of a stream (its
 * headers, a repetitive opening) may decode to much more than their size. */
#define HC_INFLATE_RATIO_FLOOR (4 * 1024 * 1024)

enum {
    HC_INFLATE_OK = 0,
    HC_INFLATE_ERR_DATA,       /* not a valid gzip or zlib stream (or data after its end) */
    HC_INFLATE_ERR_RATIO,      /* decoded more than max_ratio times the input */
    HC_INFLATE_ERR_TRUNCATED,  /* hc_inflate_finish before the end of the stream */
    HC_INFLATE_ERR_MEMORY,
    HC_INFLATE_ERR_CALLBACK    /* the callback returned non-zero */
};

/* Called with each decoded chunk; returns 0 to go on, non-zero to stop. */
typedef int (*hc_inflate_out)(void *ud, const char *p, size_t n);

typedef struct hc_inflate {
    void *z;                   /* owned: the zlib stream; NULL once freed */
    unsigned char *out;        /* owned: HC_INFLATE_CHUNK bytes */
    double max_ratio;          /* 0: no ratio check */
    int64_t in, decoded;       /* bytes fed and bytes decoded so far */
    int ended;                 /* the last stream fed reached its end */
} hc_inflate;

/* Starts a decoder for gzip or zlib-wrapped deflate (detected from the first bytes). Returns
 * HC_INFLATE_OK or HC_INFLATE_ERR_MEMORY; either way hc_inflate_free releases it. */
int hc_inflate_init(hc_inflate *d, double max_ratio);
/* Decodes n bytes, handing the output to out(ud, ...). Concatenated gzip members are decoded one
 * after the other. Returns HC_INFLATE_OK or an HC_INFLATE_ERR_*. */
int hc_inflate_feed(hc_inflate *d, const char *p, size_t n, hc_inflate_out out, void *ud);
/* The input is over: HC_INFLATE_OK when it ended a stream (or was empty), else _ERR_TRUNCATED. */
int hc_inflate_finish(const hc_inflate *d);
void hc_inflate_free(hc_inflate *d);
/* A short English reason for an HC_INFLATE_ERR_* code. */
const char *hc_inflate_strerror(int code);

#endif
