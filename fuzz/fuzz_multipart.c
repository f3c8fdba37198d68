/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the multipart response parser (src/hc_multipart.c),
 * which the transport runs on every multipart/related body it streams to
 * disk. An input is:
 *   byte 0     what to run: bit 7 set -> the Content-Type reader on the input
 *              after byte 1; else the body parser, and the low bits choose
 *              the boundary: 0-3 one of four fixed ones, else the next
 *              (byte 0 % 72) bytes of the input, used as they are
 *   byte 1     seed of the piece sizes (1 byte up to 256 bytes, or larger)
 *   the rest   the body
 * The body is parsed three times, whole, one byte at a time and in seeded
 * pieces; each run must give exactly the parts (header block, content) and
 * the error of an independent reading of RFC 2046 done on the whole buffer
 * at once (hc_fuzz_mp_reference below). Each header block must walk into
 * lower-case token names and trimmed values. A boundary the parser refuses
 * must be one RFC 2046 refuses. The Content-Type reader must return a valid
 * boundary that reads back the same once quoted. Seeds: fuzz/corpus/multipart/.
 * Build: see scripts/fuzz, or
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *     fuzz/fuzz_multipart.c src/hc_multipart.c src/hc_buf.c -o /tmp/fuzz_multipart
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hc_multipart.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

/* What a parse produced: the parts' header blocks and contents, back to back in one buffer. */
#define HC_FUZZ_MAX_PARTS 4096
typedef struct hc_fuzz_mp_result {
    char *bytes;            /* owned; room for the whole input (parts never add bytes) */
    size_t len, cap;
    size_t nparts;
    size_t hstart[HC_FUZZ_MAX_PARTS], hlen[HC_FUZZ_MAX_PARTS];
    size_t cstart[HC_FUZZ_MAX_PARTS], clen[HC_FUZZ_MAX_PARTS];
    int open;               /* a part has begun and not ended */
    int error;
} hc_fuzz_mp_result;

static const char hc_fuzz_mp_tchars[] =
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz";
static const char hc_fuzz_mp_bchars[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=? ";

static void hc_fuzz_mp_add(hc_fuzz_mp_result *r, const char *p, size_t n)
{
    if (n > r->cap - r->len)
        abort(); /* more bytes out than came in */
    memcpy(r->bytes + r->len, p, n);
    r->len += n;
}

static int hc_fuzz_mp_begin(void *ud, const char *h, size_t n)
{
    hc_fuzz_mp_result *r = ud;
    const char *p = h, *end = h + n;
    hc_multipart_header f;
    size_t i;
    if (r->open || r->nparts >= HC_FUZZ_MAX_PARTS)
        abort();
    /* The walk: lower-case token names, values without CR, LF or surrounding blanks. */
    while (hc_multipart_next_header(&p, end, &f)) {
        if (f.name_len == 0 || f.name < h || f.value + f.value_len > end)
            abort();
        for (i = 0; i < f.name_len; i++)
            if (f.name[i] == '\0' || strchr(hc_fuzz_mp_tchars, f.name[i]) == NULL)
                abort();
        if (memchr(f.value, '\r', f.value_len) || memchr(f.value, '\n', f.value_len))
            abort();
        if (f.value_len > 0
            && (f.value[0] == ' ' || f.value[0] == '\t' || f.value[f.value_len - 1] == ' '
                || f.value[f.value_len - 1] == '\t'))
            abort();
    }
    if (p != end)
        abort();
    r->hstart[r->nparts] = r->len;
    r->hlen[r->nparts] = n;
    hc_fuzz_mp_add(r, h, n);
    r->cstart[r->nparts] = r->len;
    r->clen[r->nparts] = 0;
    r->open = 1;
    return 0;
}

static int hc_fuzz_mp_data(void *ud, const char *p, size_t n)
{
    hc_fuzz_mp_result *r = ud;
    if (!r->open || n == 0)
        abort();
    hc_fuzz_mp_add(r, p, n);
    r->clen[r->nparts] += n;
    return 0;
}

static int hc_fuzz_mp_end(void *ud)
{
    hc_fuzz_mp_result *r = ud;
    if (!r->open)
        abort();
    r->open = 0;
    r->nparts++;
    return 0;
}

static const hc_multipart_callbacks hc_fuzz_mp_callbacks = {
    hc_fuzz_mp_begin, hc_fuzz_mp_data, hc_fuzz_mp_end
};

static int hc_fuzz_mp_valid_boundary(const char *b, size_t n)
{
    size_t i;
    if (n < 1 || n > 70 || b[n - 1] == ' ')
        return 0;
    for (i = 0; i < n; i++)
        if (b[i] == '\0' || strchr(hc_fuzz_mp_bchars, b[i]) == NULL)
            return 0;
    return 1;
}

/* First occurrence of needle in hay[from, n), or (size_t)-1. */
static size_t hc_fuzz_mp_find(const char *hay, size_t n, size_t from, const char *needle, size_t nl)
{
    size_t i;
    for (i = from; i + nl <= n; i++)
        if (memcmp(hay + i, needle, nl) == 0)
            return i;
    return (size_t)-1;
}

/* RFC 2046's header block rules as the parser applies them: CRLF-terminated lines of
 * token ":" anything-but-CR-LF. Lower-cases the names into out. Returns 0 or -1. */
static int hc_fuzz_mp_check_block(const char *b, size_t n, char *out)
{
    size_t i = 0;
    memcpy(out, b, n);
    while (i < n) {
        size_t j = i, colon = (size_t)-1;
        while (j < n && b[j] != '\r' && b[j] != '\n') {
            if (colon == (size_t)-1 && b[j] == ':')
                colon = j;
            j++;
        }
        if (j + 1 >= n || b[j] != '\r' || b[j + 1] != '\n' || colon == (size_t)-1 || colon == i)
            return -1;
        for (; i < colon; i++) {
            char c = b[i];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            if (c == '\0' || strchr(hc_fuzz_mp_tchars, c) == NULL)
                return -1;
            out[i] = c;
        }
        i = j + 2;
    }
    return 0;
}

/* The whole body read at once, straight from RFC 2046 section 5.1.1 (with this parser's limits:
 * the preamble and header block caps). Fills r like a parse would; returns the error. */
static int hc_fuzz_mp_reference(const char *bd, size_t blen, const char *body, size_t n,
                                hc_fuzz_mp_result *r)
{
    char delim[80];
    size_t dl = 4 + blen, pos, hs;
    memcpy(delim, "\r\n--", 4);
    memcpy(delim + 4, bd, blen);
    /* The first delimiter: at the very start without its CRLF, or after a preamble. */
    if (n >= dl - 2 && memcmp(body, delim + 2, dl - 2) == 0) {
        pos = dl - 2;
    } else {
        size_t at = hc_fuzz_mp_find(body, n, 0, delim, dl);
        /* The parser counts the CRLF it pretended to have read before the body as preamble. */
        if (at == (size_t)-1 || at + 2 > HC_MP_MAX_PREAMBLE)
            return HC_MP_ERR_NO_BOUNDARY;
        pos = at + dl;
    }
    for (;;) {
        size_t he, ce;
        /* After a delimiter: "--" ends the body; padding then CRLF starts a part. */
        if (pos < n && body[pos] == '-') {
            if (pos + 1 >= n)
                goto truncated;
            if (body[pos + 1] != '-')
                return HC_MP_ERR_DELIMITER;
            if (r->open) {
                r->open = 0;
                r->nparts++;
            }
            return HC_MP_OK;
        }
        while (pos < n && (body[pos] == ' ' || body[pos] == '\t'))
            pos++;
        if (pos >= n)
            goto truncated;
        if (body[pos] != '\r')
            return HC_MP_ERR_DELIMITER;
        if (pos + 1 >= n)
            goto truncated;
        if (body[pos + 1] != '\n')
            return HC_MP_ERR_DELIMITER;
        if (r->open) {
            r->open = 0;
            r->nparts++;
        }
        hs = pos + 2;
        /* The header block ends at the first empty line; the delimiter line's CRLF counts. */
        he = hc_fuzz_mp_find(body, n, hs - 2, "\r\n\r\n", 4);
        if (he == (size_t)-1)
            return n - hs > HC_MP_MAX_HEADERS ? HC_MP_ERR_HEADERS_TOO_LARGE : HC_MP_ERR_TRUNCATED;
        if (he + 4 - hs > HC_MP_MAX_HEADERS)
            return HC_MP_ERR_HEADERS_TOO_LARGE;
        if (r->nparts >= HC_FUZZ_MAX_PARTS)
            abort();
        r->hstart[r->nparts] = r->len;
        r->hlen[r->nparts] = he + 2 - hs;
        if (hc_fuzz_mp_check_block(body + hs, he + 2 - hs, r->bytes + r->len) != 0)
            return HC_MP_ERR_HEADERS_MALFORMED;
        r->len += he + 2 - hs;
        r->open = 1;
        /* The content runs to the next delimiter. */
        ce = hc_fuzz_mp_find(body, n, he + 4, delim, dl);
        r->cstart[r->nparts] = r->len;
        r->clen[r->nparts] = (ce == (size_t)-1 ? n : ce) - (he + 4);
        hc_fuzz_mp_add(r, body + he + 4, r->clen[r->nparts]);
        if (ce == (size_t)-1)
            return HC_MP_ERR_TRUNCATED;
        pos = ce + dl;
    }
truncated:
    return HC_MP_ERR_TRUNCATED;
}

static void hc_fuzz_mp_result_init(hc_fuzz_mp_result *r, size_t n)
{
    r->bytes = malloc(n + 1);
    if (r->bytes == NULL)
        abort();
    r->len = 0;
    r->cap = n;
    r->nparts = 0;
    r->open = 0;
    r->error = 0;
}

/* Parses body in pieces: step 0 whole, else sizes drawn from seed (step 1: single bytes). */
static void hc_fuzz_mp_parse(const char *bd, size_t blen, const char *body, size_t n,
                             unsigned seed, int step, hc_fuzz_mp_result *r)
{
    hc_multipart m;
    size_t i = 0;
    int rc = HC_MP_OK;
    hc_fuzz_mp_result_init(r, n);
    if (hc_multipart_init(&m, bd, blen, &hc_fuzz_mp_callbacks, r) != 0)
        abort();
    while (i < n && rc == HC_MP_OK) {
        size_t k = n - i;
        if (step == 1) {
            k = 1;
        } else if (step > 1) {
            seed = seed * 1103515245u + 12345u;
            k = 1 + (seed >> 16) % (size_t)step;
            if (k > n - i)
                k = n - i;
        }
        rc = hc_multipart_feed(&m, body + i, k);
        i += k;
    }
    /* Feeding after an error changes nothing. */
    if (rc != HC_MP_OK && hc_multipart_feed(&m, "\r\n--", 4) != rc)
        abort();
    r->error = hc_multipart_finish(&m);
    if (rc != HC_MP_OK && r->error != rc)
        abort();
    if (hc_multipart_finish(&m) != r->error)
        abort();
    hc_multipart_free(&m);
}

/* Aborts unless a and b hold the same parts and error (complete parts only, and the content of
 * a part still open when the error came as far as both got). */
static void hc_fuzz_mp_same(const hc_fuzz_mp_result *a, const hc_fuzz_mp_result *b)
{
    size_t i;
    if (a->error != b->error || a->nparts != b->nparts)
        abort();
    for (i = 0; i < a->nparts; i++) {
        if (a->hlen[i] != b->hlen[i] || a->clen[i] != b->clen[i])
            abort();
        if (memcmp(a->bytes + a->hstart[i], b->bytes + b->hstart[i], a->hlen[i]) != 0
            || memcmp(a->bytes + a->cstart[i], b->bytes + b->cstart[i], a->clen[i]) != 0)
            abort();
    }
}

static void hc_fuzz_mp_body(const char *bd, size_t blen, const char *body, size_t n, unsigned seed)
{
    hc_fuzz_mp_result ref, got;
    int steps[4], s;
    steps[0] = 0;
    steps[1] = 1;
    steps[2] = 2 + (int)(seed % 255);
    steps[3] = 4096;
    hc_fuzz_mp_result_init(&ref, n);
    ref.error = hc_fuzz_mp_reference(bd, blen, body, n, &ref);
    for (s = 0; s < 4; s++) {
        hc_fuzz_mp_parse(bd, blen, body, n, seed, steps[s], &got);
        hc_fuzz_mp_same(&ref, &got);
        free(got.bytes);
    }
    free(ref.bytes);
}

static void hc_fuzz_mp_content_type(const char *ct, size_t n)
{
    char out[HC_MP_MAX_BOUNDARY + 1], again[HC_MP_MAX_BOUNDARY + 1], quoted[200];
    size_t len = 0, len2 = 0, q = 0, i;
    int r = hc_multipart_content_type(ct, n, out, &len);
    if (r != 1)
        return;
    if (!hc_fuzz_mp_valid_boundary(out, len) || out[len] != '\0')
        abort();
    /* Quoted again, it reads back the same. */
    q = (size_t)snprintf(quoted, sizeof quoted, "Multipart/Related; type=\"a\\\"b\"; boundary=\"");
    for (i = 0; i < len; i++)
        quoted[q++] = out[i];
    quoted[q++] = '"';
    if (hc_multipart_content_type(quoted, q, again, &len2) != 1 || len2 != len
        || memcmp(again, out, len) != 0)
        abort();
}

/* data is owned by libFuzzer; everything allocated here is freed before returning. */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static const char *const fixed[] = { "b", "hc-raw-boundary-42", "a b",
        "0123456789012345678901234567890123456789012345678901234567890123456789" };
    const char *bd;
    size_t blen, skip = 2;
    unsigned seed;
    hc_multipart probe;
    if (size < 2)
        return 0;
    if (data[0] & 0x80) {
        hc_fuzz_mp_content_type((const char *)data + 2, size - 2);
        return 0;
    }
    seed = data[1];
    if (data[0] % 72 < 4) {
        bd = fixed[data[0] % 72];
        blen = strlen(bd);
    } else {
        blen = data[0] % 72;
        if (size < 2 + blen)
            return 0;
        bd = (const char *)data + 2;
        skip += blen;
    }
    if (hc_multipart_init(&probe, bd, blen, &hc_fuzz_mp_callbacks, NULL) != 0) {
        if (hc_fuzz_mp_valid_boundary(bd, blen))
            abort();
        hc_multipart_free(&probe);
        return 0;
    }
    hc_multipart_free(&probe);
    if (!hc_fuzz_mp_valid_boundary(bd, blen))
        abort();
    hc_fuzz_mp_body(bd, blen, (const char *)data + skip, size - skip, seed);
    return 0;
}
