/* SPDX-License-Identifier: MIT */
/* Bounded gzip/deflate decoding of HTTP answers (see hc_inflate.h). */
#include "hc_inflate.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

int hc_inflate_init(hc_inflate *d, double max_ratio)
{
    z_stream *z;
    memset(d, 0, sizeof *d);
    d->max_ratio = max_ratio;
    d->out = malloc(HC_INFLATE_CHUNK);
    z = calloc(1, sizeof *z);
    if (d->out == NULL || z == NULL) {
        free(z);
        return HC_INFLATE_ERR_MEMORY;
    }
    /* 15 + 32: a 32 KiB window, gzip or zlib header detected from the first bytes. */
    if (inflateInit2(z, 15 + 32) != Z_OK) {
        free(z);
        return HC_INFLATE_ERR_MEMORY;
    }
    d->z = z;
    return HC_INFLATE_OK;
}

static int over_ratio(const hc_inflate *d)
{
    return d->max_ratio > 0 && d->decoded > HC_INFLATE_RATIO_FLOOR
           && (double)d->decoded > d->max_ratio * (double)d->in;
}

/* One piece of input of at most UINT_MAX bytes (zlib's avail_in is an unsigned int). */
static int feed_piece(hc_inflate *d, const char *p, unsigned n, hc_inflate_out out, void *ud)
{
    z_stream *z = d->z;
    z->next_in = (Bytef *)(uintptr_t)p;  /* zlib does not write through next_in */
    z->avail_in = n;
    for (;;) {
        unsigned before = z->avail_in;
        size_t got;
        int r;
        if (d->ended) {
            if (z->avail_in == 0)
                return HC_INFLATE_OK;
            /* Another gzip member follows the one that ended. */
            if (inflateReset(z) != Z_OK)
                return HC_INFLATE_ERR_DATA;
            d->ended = 0;
        }
        z->next_out = d->out;
        z->avail_out = HC_INFLATE_CHUNK;
        r = inflate(z, Z_NO_FLUSH);
        got = HC_INFLATE_CHUNK - z->avail_out;
        d->in += before - z->avail_in;
        d->decoded += (int64_t)got;
        if (r == Z_MEM_ERROR)
            return HC_INFLATE_ERR_MEMORY;
        if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR)
            return HC_INFLATE_ERR_DATA;
        /* Judged before the chunk is handed on, so a bomb's output stops here. */
        if (over_ratio(d))
            return HC_INFLATE_ERR_RATIO;
        if (got > 0 && out(ud, (const char *)d->out, got) != 0)
            return HC_INFLATE_ERR_CALLBACK;
        if (r == Z_STREAM_END) {
            d->ended = 1;
            continue;
        }
        /* A full output buffer may leave more output pending even with no input left. */
        if (z->avail_out != 0 && z->avail_in == 0)
            return HC_INFLATE_OK;
        if (got == 0 && before == z->avail_in)
            return HC_INFLATE_OK;  /* Z_BUF_ERROR: nothing more can be done with this input */
    }
}

int hc_inflate_feed(hc_inflate *d, const char *p, size_t n, hc_inflate_out out, void *ud)
{
    if (d->z == NULL)
        return HC_INFLATE_ERR_MEMORY;
    while (n > 0) {
        unsigned piece = n > UINT_MAX ? UINT_MAX : (unsigned)n;
        int r = feed_piece(d, p, piece, out, ud);
        if (r != HC_INFLATE_OK)
            return r;
        p += piece;
        n -= piece;
    }
    return HC_INFLATE_OK;
}

int hc_inflate_finish(const hc_inflate *d)
{
    return d->ended || d->in == 0 ? HC_INFLATE_OK : HC_INFLATE_ERR_TRUNCATED;
}

void hc_inflate_free(hc_inflate *d)
{
    if (d->z != NULL) {
        inflateEnd(d->z);
        free(d->z);
        d->z = NULL;
    }
    free(d->out);
    d->out = NULL;
}

const char *hc_inflate_strerror(int code)
{
    switch (code) {
    case HC_INFLATE_OK: return "no error";
    case HC_INFLATE_ERR_DATA: return "is not a valid compressed stream";
    case HC_INFLATE_ERR_RATIO: return "decodes to too many bytes for its size";
    case HC_INFLATE_ERR_TRUNCATED: return "ended inside its compressed stream";
    case HC_INFLATE_ERR_MEMORY: return "cannot be decoded: out of memory";
    default: return "was stopped while being decoded";
    }
}
