/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the bounded content-coding decoder (src/hc_inflate.c), the first code
 * to see a hostile server's gzip or deflate answer. An input is a header of four bytes and a
 * payload. In raw mode the payload itself is decoded (any bytes: no crash, no leak, counters
 * and chunks within their bounds). In round-trip mode the payload is plain text, repeated up to
 * 6 MiB (a compression bomb in small), compressed here with zlib as gzip, as zlib-wrapped
 * deflate or as several gzip members, then optionally cut short or with one byte changed, and
 * fed to the decoder in fuzzed piece sizes: the output must be the text exactly when nothing was
 * changed, a prefix of it whenever the decoder says the stream ended well, and under a ratio
 * limit no chunk may be handed on once the output is past the floor and the ratio.
 * Build: see scripts/fuzz, or
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *     fuzz/fuzz_inflate.c src/hc_inflate.c -lz -o /tmp/fuzz_inflate
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "hc_inflate.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define MAX_PLAIN (6 * 1024 * 1024) /* past HC_INFLATE_RATIO_FLOOR: a bomb the ratio stops */
#define RATIO 8.0

#define FZ_CHECK(c)                                                                        \
    do {                                                                                \
        if (!(c)) {                                                                     \
            fprintf(stderr, "fuzz_inflate: check failed at line %d: %s\n", __LINE__, #c); \
            abort();                                                                    \
        }                                                                               \
    } while (0)

/* What the decoder handed on, compared as it comes with what it must be (when known). */
typedef struct fz_sink {
    const hc_inflate *d;
    const unsigned char *want; /* NULL in raw mode */
    size_t want_len;
    size_t got;                /* bytes handed on so far */
    int prefix_ok;             /* every byte so far matched want */
    int stop_after;            /* > 0: the callback refuses its n-th call */
    int calls;
} fz_sink;

static int fz_out(void *ud, const char *p, size_t n)
{
    fz_sink *s = ud;
    FZ_CHECK(n > 0 && n <= HC_INFLATE_CHUNK);
    /* The ratio is judged before a chunk is handed on. */
    if (s->d->max_ratio > 0)
        FZ_CHECK(s->d->decoded <= HC_INFLATE_RATIO_FLOOR
              || (double)s->d->decoded <= s->d->max_ratio * (double)s->d->in);
    if (s->want != NULL && s->prefix_ok
        && (s->got + n > s->want_len || memcmp(s->want + s->got, p, n) != 0))
        s->prefix_ok = 0;
    s->got += n;
    FZ_CHECK((int64_t)s->got <= s->d->decoded);
    s->calls++;
    return s->stop_after > 0 && s->calls >= s->stop_after;
}

/* Compresses plain (n bytes) into a new buffer: wrap 0 gzip, 1 zlib; level from the input. */
static unsigned char *fz_compress(const unsigned char *plain, size_t n, int wrap, int level,
                                   size_t *out_len)
{
    z_stream z;
    size_t cap;
    unsigned char *out;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, level, Z_DEFLATED, wrap == 0 ? 15 + 16 : 15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return NULL;
    cap = deflateBound(&z, (uLong)n) + 64;
    out = malloc(cap);
    if (out == NULL) {
        deflateEnd(&z);
        return NULL;
    }
    z.next_in = (Bytef *)(uintptr_t)plain;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) {
        deflateEnd(&z);
        free(out);
        return NULL;
    }
    *out_len = cap - z.avail_out;
    deflateEnd(&z);
    return out;
}

/* Decodes in (n bytes) in pieces whose sizes come from seed; returns the decoder's verdict
 * (feed's error, else finish's). */
static int fz_decode(const unsigned char *in, size_t n, unsigned seed, double ratio, fz_sink *s)
{
    hc_inflate d;
    int rc = hc_inflate_init(&d, ratio);
    size_t at = 0;
    s->d = &d;
    while (rc == HC_INFLATE_OK && at < n) {
        size_t piece;
        seed = seed * 1103515245u + 12345u;
        piece = 1 + (seed >> 16) % (seed & 1 ? 4096 : 64);
        if (piece > n - at)
            piece = n - at;
        rc = hc_inflate_feed(&d, (const char *)in + at, piece, fz_out, s);
        at += piece;
    }
    if (rc == HC_INFLATE_OK)
        rc = hc_inflate_finish(&d);
    FZ_CHECK(d.in <= (int64_t)n);
    if (rc == HC_INFLATE_ERR_RATIO)
        FZ_CHECK(d.decoded > HC_INFLATE_RATIO_FLOOR && (double)d.decoded > ratio * (double)d.in);
    FZ_CHECK(hc_inflate_strerror(rc) != NULL);
    hc_inflate_free(&d);
    hc_inflate_free(&d); /* twice: safe */
    return rc;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    unsigned mode, seed, reps, members, i;
    size_t text_len, plain_len, comp_len = 0;
    unsigned char *plain, *comp = NULL;
    const unsigned char *text;
    int cut, flipped, rc;
    double ratio;
    fz_sink s;
    if (size < 4)
        return 0;
    mode = data[0];
    seed = (unsigned)data[1] | (unsigned)data[2] << 8;
    ratio = mode & 0x08 ? RATIO : 0;
    memset(&s, 0, sizeof s);
    s.stop_after = (mode & 0x70) == 0x70 ? 1 + data[3] % 8 : 0;
    text = data + 4;
    text_len = size - 4;
    if (!(mode & 1)) { /* raw: the payload is the coded answer */
        s.want = NULL;
        fz_decode(text, text_len, seed, ratio, &s);
        return 0;
    }

    /* Round trip: the text repeated (a bomb when it is short and repeated much), compressed. */
    reps = 1;
    if (text_len > 0 && (mode & 0x80)) /* data[3] / 255 of the way to MAX_PLAIN */
        reps = 1 + (unsigned)(MAX_PLAIN / text_len * data[3] / 255);
    if (text_len > 0 && (size_t)reps * text_len > MAX_PLAIN)
        reps = (unsigned)(MAX_PLAIN / text_len);
    plain_len = (size_t)reps * text_len;
    plain = malloc(plain_len + 1);
    if (plain == NULL)
        return 0;
    for (i = 0; i < reps; i++)
        memcpy(plain + (size_t)i * text_len, text, text_len);
    members = (mode >> 1) & 3; /* 0, 1: one gzip member; 2: zlib; 3: three gzip members */
    if (members == 2) {
        comp = fz_compress(plain, plain_len, 1, 1 + data[3] % 9, &comp_len);
    } else {
        size_t cuts[4] = { 0, plain_len, plain_len, plain_len };
        unsigned k, nm = members == 3 ? 3 : 1;
        if (nm == 3) {
            cuts[1] = plain_len / 3;
            cuts[2] = 2 * (plain_len / 3);
        }
        for (k = 0; k < nm; k++) {
            size_t part_len = 0;
            unsigned char *part = fz_compress(plain + cuts[k], cuts[k + 1] - cuts[k], 0,
                                               1 + (data[3] + k) % 9, &part_len);
            unsigned char *grown = part ? realloc(comp, comp_len + part_len) : NULL;
            if (grown == NULL) {
                free(part);
                free(comp);
                free(plain);
                return 0;
            }
            comp = grown;
            memcpy(comp + comp_len, part, part_len);
            comp_len += part_len;
            free(part);
        }
    }
    if (comp == NULL) {
        free(plain);
        return 0;
    }
    /* Optionally cut short (mode 0x40) or one byte changed (0x20), where the seed says. */
    cut = (mode & 0x60) == 0x40 && comp_len > 0;
    flipped = (mode & 0x60) == 0x20 && comp_len > 0;
    if (cut)
        comp_len = seed % comp_len;
    else if (flipped)
        comp[seed % comp_len] ^= (unsigned char)(1 + data[3] % 255);
    s.want = plain;
    s.want_len = plain_len;
    s.prefix_ok = 1;
    rc = fz_decode(comp, comp_len, seed, ratio, &s);
    /* Untouched bytes (a stream cut short included) fz_decode to the start of the text, whatever
     * the verdict; a changed byte may fz_decode to anything before a check catches it. */
    if (!flipped)
        FZ_CHECK(s.prefix_ok);
    if (s.stop_after > 0) {
        FZ_CHECK(rc != HC_INFLATE_OK || s.calls < s.stop_after);
        FZ_CHECK(rc != HC_INFLATE_ERR_CALLBACK || s.calls == s.stop_after);
    } else if (!cut && !flipped) {
        /* Whole and untouched: the text exactly, unless the ratio stopped it. */
        FZ_CHECK(rc == HC_INFLATE_OK || (ratio > 0 && rc == HC_INFLATE_ERR_RATIO));
        if (rc == HC_INFLATE_OK)
            FZ_CHECK(s.got == plain_len);
    }
    free(comp);
    free(plain);
    return 0;
}
