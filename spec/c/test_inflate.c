/* SPDX-License-Identifier: MIT */
/*
 * Tests of the bounded content decoder (src/hc_inflate.c): gzip and zlib streams fed whole and
 * one byte at a time come out byte-exact; concatenated gzip members are all decoded; corrupt,
 * trailing and truncated input is an error; a compression bomb (64 MiB of zeros in about 64 KB)
 * is stopped by the ratio soon after the floor, with the output handed on never past it; with
 * no ratio it decodes whole; a consumer can stop the decoder. Then the files of the directories
 * given (the fuzz target's regressions and seeds) go through fuzz/fuzz_inflate.c's own checks
 * (compiled in).
 * Prints one line per failure and "N passed, N failed"; exits 1 on failure.
 * Run from the repository root:
 *   test_inflate spec/fixtures/fuzz/inflate fuzz/corpus/inflate
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "hc_inflate.h"

#define LLVMFuzzerTestOneInput hc_test_fuzz_inflate
#include "../../fuzz/fuzz_inflate.c"
#undef LLVMFuzzerTestOneInput

struct tstate {
    int passed, failed;
};
#include "hc_test.h"

/* What the decoder handed on: kept up to cap bytes, counted whole. */
typedef struct sink {
    unsigned char *data;
    size_t len, cap;
    int64_t total;
    int64_t stop_after;  /* > 0: ask the decoder to stop once this many bytes came */
} sink;

static int collect(void *ud, const char *p, size_t n)
{
    sink *s = ud;
    size_t keep = n;
    if (keep > s->cap - s->len)
        keep = s->cap - s->len;
    if (keep > 0)
        memcpy(s->data + s->len, p, keep);
    s->len += keep;
    s->total += (int64_t)n;
    return s->stop_after > 0 && s->total >= s->stop_after;
}

/* data compressed with windowBits wbits (31: gzip, 15: zlib); *out_len set; caller frees. */
static unsigned char *compress_with(const unsigned char *data, size_t n, int wbits, size_t *out_len)
{
    z_stream z;
    size_t cap = compressBound((uLong)n) + 64;
    unsigned char *out = malloc(cap);
    memset(&z, 0, sizeof z);
    deflateInit2(&z, 9, Z_DEFLATED, wbits, 9, Z_DEFAULT_STRATEGY);
    z.next_in = (Bytef *)(uintptr_t)data;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    deflate(&z, Z_FINISH);
    *out_len = cap - z.avail_out;
    deflateEnd(&z);
    return out;
}

static unsigned char *sample(size_t n)
{
    unsigned char *p = malloc(n);
    size_t i;
    for (i = 0; i < n; i++)
        p[i] = (unsigned char)((i * 7 + i / 300) % 251);  /* compressible, not trivially */
    return p;
}

/* Feeds in whole (step 0) or step bytes at a time; returns the last code, output in s. */
static int run(const unsigned char *in, size_t n, size_t step, double ratio, sink *s, int *finish)
{
    hc_inflate d;
    size_t at = 0;
    int r = hc_inflate_init(&d, ratio);
    while (r == HC_INFLATE_OK && at < n) {
        size_t k = step == 0 || step > n - at ? n - at : step;
        r = hc_inflate_feed(&d, (const char *)in + at, k, collect, s);
        at += k;
    }
    *finish = hc_inflate_finish(&d);
    hc_inflate_free(&d);
    return r;
}

static void test_roundtrip(tstate *t)
{
    static const int wbits[] = { 31, 15 };
    static const size_t steps[] = { 0, 1, 7, 65536 };
    size_t n = 300000, clen, i, k;
    unsigned char *data = sample(n);
    for (i = 0; i < 2; i++) {
        unsigned char *c = compress_with(data, n, wbits[i], &clen);
        for (k = 0; k < 4; k++) {
            sink s = { malloc(n + 1), 0, n + 1, 0, 0 };
            int fin, r = run(c, clen, steps[k], 250, &s, &fin);
            check(t, r == HC_INFLATE_OK, "wbits %d step %zu: code %d", wbits[i], steps[k], r);
            check(t, fin == HC_INFLATE_OK, "wbits %d step %zu: finish %d", wbits[i], steps[k], fin);
            check(t, s.len == n && memcmp(s.data, data, n) == 0,
                  "wbits %d step %zu: output differs (%zu bytes)", wbits[i], steps[k], s.len);
            free(s.data);
        }
        free(c);
    }
    free(data);
}

static void test_members_and_errors(tstate *t)
{
    size_t n = 5000, l1, l2, i;
    unsigned char *data = sample(n);
    unsigned char *c1 = compress_with(data, n, 31, &l1);
    unsigned char *c2 = compress_with(data, 100, 31, &l2);
    unsigned char *both = malloc(l1 + l2 + 8);
    sink s = { malloc(2 * n), 0, 2 * n, 0, 0 };
    int fin, r;

    memcpy(both, c1, l1);
    memcpy(both + l1, c2, l2);
    r = run(both, l1 + l2, 3, 250, &s, &fin);
    check(t, r == HC_INFLATE_OK && fin == HC_INFLATE_OK, "two members: code %d finish %d", r, fin);
    check(t, s.len == n + 100 && memcmp(s.data, data, n) == 0 && memcmp(s.data + n, data, 100) == 0,
          "two members: output differs (%zu bytes)", s.len);

    /* trailing bytes that are not another member */
    memcpy(both + l1, "garbage!", 8);
    s.len = 0;
    r = run(both, l1 + 8, 0, 250, &s, &fin);
    check(t, r == HC_INFLATE_ERR_DATA, "trailing garbage: code %d", r);

    /* truncated: every proper prefix ends without error but does not finish */
    for (i = 1; i < l1; i += 97) {
        s.len = 0;
        r = run(c1, i, 0, 250, &s, &fin);
        check(t, r == HC_INFLATE_OK && fin == HC_INFLATE_ERR_TRUNCATED,
              "prefix %zu: code %d finish %d", i, r, fin);
    }

    /* not compressed at all */
    s.len = 0;
    r = run((const unsigned char *)"{\"a\": 1}", 8, 0, 250, &s, &fin);
    check(t, r == HC_INFLATE_ERR_DATA, "plain JSON: code %d", r);

    /* a corrupt byte in the middle */
    memcpy(both, c1, l1);
    both[l1 / 2] ^= 0x55;
    s.len = 0;
    r = run(both, l1, 0, 250, &s, &fin);
    check(t, r == HC_INFLATE_ERR_DATA || fin != HC_INFLATE_OK, "corrupt: code %d finish %d", r,
          fin);

    /* nothing fed: finished */
    s.len = 0;
    r = run(c1, 0, 0, 250, &s, &fin);
    check(t, r == HC_INFLATE_OK && fin == HC_INFLATE_OK && s.len == 0, "empty: code %d finish %d",
          r, fin);

    check(t, strcmp(hc_inflate_strerror(HC_INFLATE_ERR_RATIO),
                    "decodes to too many bytes for its size") == 0, "strerror");
    free(s.data);
    free(both);
    free(c1);
    free(c2);
    free(data);
}

static void test_bomb(tstate *t)
{
    size_t n = 64u * 1024u * 1024u, clen;
    unsigned char *zeros = calloc(1, n);
    unsigned char *c = compress_with(zeros, n, 31, &clen);
    sink s = { NULL, 0, 0, 0, 0 };
    int fin, r;
    free(zeros);
    check(t, clen < n / 500, "the bomb compresses to %zu bytes", clen);

    r = run(c, clen, 4096, 250, &s, &fin);
    check(t, r == HC_INFLATE_ERR_RATIO, "bomb: code %d", r);
    /* stopped a few chunks past the floor, and never handed on past the point it was judged */
    check(t,
          s.total >= HC_INFLATE_RATIO_FLOOR - HC_INFLATE_CHUNK
              && s.total < 2 * HC_INFLATE_RATIO_FLOOR,
          "bomb: %lld bytes handed on", (long long)s.total);

    s.total = 0;
    r = run(c, clen, 0, 0, &s, &fin);
    check(t, r == HC_INFLATE_OK && fin == HC_INFLATE_OK && s.total == (int64_t)n,
          "no ratio: code %d finish %d, %lld bytes", r, fin, (long long)s.total);

    s.total = 0;
    s.stop_after = 100000;
    r = run(c, clen, 0, 0, &s, &fin);
    check(t, r == HC_INFLATE_ERR_CALLBACK && s.total < 100000 + HC_INFLATE_CHUNK,
          "consumer stop: code %d after %lld bytes", r, (long long)s.total);
    free(c);
}

static void replay_inflate(tstate *t, const char *path, const unsigned char *data, size_t len)
{
    (void)path;
    hc_test_fuzz_inflate(data, len); /* aborts on a failed check */
    t->passed++;
}

int main(int argc, char **argv)
{
    tstate t = { 0, 0 };
    int a;
    test_roundtrip(&t);
    test_members_and_errors(&t);
    test_bomb(&t);
    for (a = 1; a < argc; a++)
        hc_test_replay(&t, argv[a], replay_inflate);
    return hc_test_summary(&t);
}
