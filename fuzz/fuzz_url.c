/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for percent-encoding (hc_url_escape) and the header
 * safety check (hc_url_has_ctl). An input is: one byte choosing the output
 * cap, one byte giving the length of the "keep" set, that many bytes of it,
 * and the string to encode. The result must equal an independent reference
 * encoding byte for byte, hold only unreserved characters, kept characters
 * and "%XX" with upper-case hex, decode back to the input (when '%' is not
 * kept), and fail exactly when it would not fit the cap, never writing past
 * it. Seeds: fuzz/corpus/url/ (resource names, UIDs, tokens, UTF-8, CRLF).
 * Build: see scripts/fuzz, or
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *     fuzz/fuzz_url.c src/hc_url.c src/hc_buf.c -o /tmp/fuzz_url
 */
#include <stdlib.h>
#include <string.h>

#include "hc_url.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

/* The encoding as RFC 3986 states it, written without looking at hc_url.c. Writes into out (which
 * must hold 3 * n bytes) and returns the length. */
static size_t hc_fuzz_reference(const unsigned char *s, size_t n, const char *keep, char *out)
{
    static const char *unreserved =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    size_t i, o = 0;
    for (i = 0; i < n; i++) {
        if (s[i] != 0 && (strchr(unreserved, s[i]) != NULL || strchr(keep, s[i]) != NULL)) {
            out[o++] = (char)s[i];
        } else {
            out[o++] = '%';
            out[o++] = "0123456789ABCDEF"[s[i] / 16];
            out[o++] = "0123456789ABCDEF"[s[i] % 16];
        }
    }
    return o;
}

static int hc_fuzz_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* data is owned by libFuzzer; everything allocated here is freed before returning. */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    char keep[16], *want;
    const unsigned char *s;
    size_t n, klen, wlen, i, o, cap;
    int ctl = 0;
    hc_buf out;

    if (size < 2)
        return 0;
    cap = data[0];
    klen = data[1] % 8;
    if (size < 2 + klen)
        return 0;
    memcpy(keep, data + 2, klen);
    keep[klen] = '\0';
    s = data + 2 + klen;
    n = size - 2 - klen;

    for (i = 0; i < n; i++)
        ctl |= s[i] == '\r' || s[i] == '\n' || s[i] == '\0';
    if (hc_url_has_ctl((const char *)s, n) != ctl)
        abort();

    want = malloc(3 * n + 1);
    if (want == NULL)
        return 0;
    wlen = hc_fuzz_reference(s, n, keep, want);

    /* Room for everything: the reference, exactly. */
    hc_buf_init(&out, 3 * n + 1);
    if (hc_url_escape((const char *)s, n, keep, &out) != 0 || out.len != wlen
        || (wlen > 0 && memcmp(out.data, want, wlen) != 0))
        abort();
    /* Decodes back when '%' itself was not kept. */
    if (strchr(keep, '%') == NULL) {
        for (i = 0, o = 0; i < out.len; o++) {
            unsigned char c = (unsigned char)out.data[i];
            if (c == '%') {
                int hi, lo;
                if (i + 2 >= out.len)
                    abort();
                hi = hc_fuzz_hexval(out.data[i + 1]);
                lo = hc_fuzz_hexval(out.data[i + 2]);
                if (hi < 0 || lo < 0)
                    abort();
                c = (unsigned char)(hi * 16 + lo);
                i += 3;
            } else {
                i++;
            }
            if (o >= n || c != s[o])
                abort();
        }
        if (o != n)
            abort();
    }
    hc_buf_free(&out);

    /* A small cap: fails exactly when the result does not fit, and never holds more than cap. */
    hc_buf_init(&out, cap);
    if ((hc_url_escape((const char *)s, n, keep, &out) != 0) != (wlen > cap) || out.len > cap)
        abort();
    if (wlen <= cap && (out.len != wlen || (wlen > 0 && memcmp(out.data, want, wlen) != 0)))
        abort();
    hc_buf_free(&out);
    free(want);
    return 0;
}
