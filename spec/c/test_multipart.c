/* SPDX-License-Identifier: MIT */
/*
 * Tests of the multipart response parser (src/hc_multipart.c): bodies with
 * their exact parts and errors, each fed whole, split in two at every offset,
 * in three pieces at every pair of offsets (short bodies) and one byte at a
 * time; delimiter look-alikes inside content, CRLF edge cases, empty parts,
 * padding, preamble and epilogue, missing close delimiter, garbage, the
 * preamble and header block caps, a consumer that stops the parser, the
 * header walk, the Content-Type reader; then a replay of the fuzz
 * regressions and seeds through the fuzz target's own checks
 * (fuzz/fuzz_multipart.c is compiled in).
 * Prints one line per failure and "N passed, N failed"; exits 1 on failure.
 * Run from the repository root:
 *   test_multipart spec/fixtures/fuzz/multipart fuzz/corpus/multipart
 */
#define LLVMFuzzerTestOneInput hc_test_fuzz_multipart
#include "../../fuzz/fuzz_multipart.c"
#undef LLVMFuzzerTestOneInput


struct tstate {
    int passed, failed;
};
#include "hc_test.h"


#define B "hc-b"
#define D "\r\n--" B
#define CT "Content-Type: application/dicom\r\n"

/* A body and what it must parse into: parts as "headers|content" (headers lower-cased). */
typedef struct mp_case {
    const char *name;
    const char *body;
    size_t len;                 /* 0: strlen(body) */
    int error;
    const char *parts[4];       /* NULL-ended */
} mp_case;

static const mp_case cases[] = {
    { "two parts",
      "--" B "\r\n" CT "\r\nabc" D "\r\n" CT "X-Y: z\r\n\r\nde" D "--\r\n",
      0,
      HC_MP_OK,
      { "content-type: application/dicom\r\n|abc",
        "content-type: application/dicom\r\nx-y: z\r\n|de", NULL } },
    { "empty parts and no headers",
      "--" B "\r\n\r\n" D "\r\n\r\n" D "\r\nA: 1\r\n\r\n" D "--",
      0,
      HC_MP_OK,
      { "|", "|", "a: 1\r\n|", NULL } },
    { "zero parts", "--" B "--\r\n", 0, HC_MP_OK, { NULL } },
    { "look-alikes in content",
      "--" B "\r\n\r\n\r\n--hc-\r\n--hc-x\n--" B "\r\r\n--hc\r\n-\r\n--\r" D "\r\n\r\n--" B "x" D
      "--",
      0,
      HC_MP_OK,
      { "|\r\n--hc-\r\n--hc-x\n--" B "\r\r\n--hc\r\n-\r\n--\r", "|--" B "x", NULL } },
    { "content ends in CR, CRLF, CRLFCR",
      "--" B "\r\n\r\na\r" D "\r\n\r\nb\r\n" D "\r\n\r\nc\r\n\r" D "--",
      0,
      HC_MP_OK,
      { "|a\r", "|b\r\n", "|c\r\n\r", NULL } },
    { "content is a lone CRLF", "--" B "\r\n\r\n\r\n" D "--", 0, HC_MP_OK, { "|\r\n", NULL } },
    { "delimiter right after the header block",
      "--" B "\r\nA: b\r\n\r\n--" B "--",
      0,
      HC_MP_ERR_TRUNCATED,
      { NULL } },
    { "padding after delimiters",
      "--" B " \t\r\n\r\nx" D "\t\r\n\r\ny" D "-- \r\n",
      0,
      HC_MP_OK,
      { "|x", "|y", NULL } },
    { "preamble and epilogue",
      "junk --" B "\r\n--hc-\r\n" D "\r\n\r\nq" D "--\r\nepilogue" D "\r\n\r\nx",
      0,
      HC_MP_OK,
      { "|q", NULL } },
    { "preamble ending in CR", "junk\r" D "\r\n\r\nq" D "--", 0, HC_MP_OK, { "|q", NULL } },
    { "values trimmed, names lower-cased",
      "--" B "\r\nContent-LOCATION:\t /a b \t\r\nX:\r\n\r\n" D "--",
      0,
      HC_MP_OK,
      { "content-location:\t /a b \t\r\nx:\r\n|", NULL } },
    { "no close delimiter",
      "--" B "\r\n\r\nabc" D "\r\n\r\nde",
      0,
      HC_MP_ERR_TRUNCATED,
      { "|abc", NULL } },
    { "ends right after a delimiter", "--" B "\r\n\r\nabc" D, 0, HC_MP_ERR_TRUNCATED, { NULL } },
    { "ends after one dash", "--" B "\r\n\r\nabc" D "-", 0, HC_MP_ERR_TRUNCATED, { NULL } },
    { "ends inside padding", "--" B "\r\n\r\nabc" D "  \r", 0, HC_MP_ERR_TRUNCATED, { NULL } },
    { "ends inside headers", "--" B "\r\nA: b\r\n", 0, HC_MP_ERR_TRUNCATED, { NULL } },
    { "ends inside a partial delimiter",
      "--" B "\r\n\r\nabc\r\n--hc",
      0,
      HC_MP_ERR_TRUNCATED,
      { NULL } },
    { "empty body", "", 0, HC_MP_ERR_NO_BOUNDARY, { NULL } },
    { "garbage", "<html>not multipart</html>\r\n", 0, HC_MP_ERR_NO_BOUNDARY, { NULL } },
    { "another boundary", "--other\r\n\r\nx\r\n--other--", 0, HC_MP_ERR_NO_BOUNDARY, { NULL } },
    { "boundary without CRLF before it",
      "x--" B "\r\n\r\nq--" B "--",
      0,
      HC_MP_ERR_NO_BOUNDARY,
      { NULL } },
    { "bare LF after the delimiter", "--" B "\n\nx" D "--", 0, HC_MP_ERR_DELIMITER, { NULL } },
    { "CR without LF after the delimiter",
      "--" B "\r\r\n\r\nx" D "--",
      0,
      HC_MP_ERR_DELIMITER,
      { NULL } },
    { "delimiter followed by a letter",
      "--" B "\r\n\r\nx" D "x\r\n\r\n" D "--",
      0,
      HC_MP_ERR_DELIMITER,
      { NULL } },
    { "padding then --", "--" B "\r\n\r\nx" D " --", 0, HC_MP_ERR_DELIMITER, { NULL } },
    { "one dash then a letter", "--" B "\r\n\r\nx" D "-x", 0, HC_MP_ERR_DELIMITER, { NULL } },
    { "header without a colon",
      "--" B "\r\nno colon\r\n\r\nx" D "--",
      0,
      HC_MP_ERR_HEADERS_MALFORMED,
      { NULL } },
    { "header with an empty name",
      "--" B "\r\n: v\r\n\r\nx" D "--",
      0,
      HC_MP_ERR_HEADERS_MALFORMED,
      { NULL } },
    { "header name with a space",
      "--" B "\r\nA b: v\r\n\r\nx" D "--",
      0,
      HC_MP_ERR_HEADERS_MALFORMED,
      { NULL } },
    { "folded header line",
      "--" B "\r\nA: b\r\n c\r\n\r\nx" D "--",
      0,
      HC_MP_ERR_HEADERS_MALFORMED,
      { NULL } },
    { "bare LF in a header block",
      "--" B "\r\nA: b\nC: d\r\n\r\nx" D "--",
      0,
      HC_MP_ERR_HEADERS_MALFORMED,
      { NULL } },
    { "bad second part keeps the first",
      "--" B "\r\n\r\nok" D "\r\nbad\r\n\r\nx" D "--",
      0,
      HC_MP_ERR_HEADERS_MALFORMED,
      { "|ok", NULL } },
    { "NUL bytes in content",
      "--" B "\r\n\r\n\0\0\r\0" D "--",
      10 + 4 + 8 + 2,
      HC_MP_OK,
      { NULL } /* checked by length below */ },
};

/* Feeds body in the pieces cut at offsets a <= b (a == b == n: whole). */
static void parse_split(const char *body, size_t n, size_t a, size_t b, hc_fuzz_mp_result *r)
{
    hc_multipart m;
    int rc = HC_MP_OK;
    hc_fuzz_mp_result_init(r, n);
    if (hc_multipart_init(&m, B, strlen(B), &hc_fuzz_mp_callbacks, r) != 0)
        abort();
    rc = hc_multipart_feed(&m, body, a);
    if (rc == HC_MP_OK)
        rc = hc_multipart_feed(&m, body + a, b - a);
    if (rc == HC_MP_OK)
        rc = hc_multipart_feed(&m, body + b, n - b);
    r->error = hc_multipart_finish(&m);
    hc_multipart_free(&m);
}

/* Checks r against the case's expectations; returns 1 when it matches. */
static int matches(const mp_case *c, const hc_fuzz_mp_result *r)
{
    size_t i, want = 0;
    if (r->error != c->error)
        return 0;
    if (strcmp(c->name, "NUL bytes in content") == 0)
        return r->nparts == 1 && r->hlen[0] == 0 && r->clen[0] == 4
               && memcmp(r->bytes + r->cstart[0], "\0\0\r\0", 4) == 0;
    while (c->parts[want] != NULL)
        want++;
    if (r->nparts != want)
        return 0;
    for (i = 0; i < want; i++) {
        const char *bar = strchr(c->parts[i], '|');
        size_t hl = (size_t)(bar - c->parts[i]), cl = strlen(bar + 1);
        if (r->hlen[i] != hl || memcmp(r->bytes + r->hstart[i], c->parts[i], hl) != 0
            || r->clen[i] != cl || memcmp(r->bytes + r->cstart[i], bar + 1, cl) != 0)
            return 0;
    }
    return 1;
}

static void test_cases(tstate *t)
{
    size_t k;
    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const mp_case *c = &cases[k];
        size_t n = c->len ? c->len : strlen(c->body), a, b;
        hc_fuzz_mp_result r, ref;
        int bad = 0;
        parse_split(c->body, n, n, n, &r);
        check(t, matches(c, &r), "%s: whole body: error %d (%s), %zu parts", c->name, r.error,
              hc_multipart_strerror(r.error), r.nparts);
        free(r.bytes);
        /* The reference reading of the fuzz target agrees. */
        hc_fuzz_mp_result_init(&ref, n);
        ref.error = hc_fuzz_mp_reference(B, strlen(B), c->body, n, &ref);
        check(t, matches(c, &ref), "%s: the fuzz target's reference disagrees (error %d)", c->name,
              ref.error);
        free(ref.bytes);
        for (a = 0; a <= n && !bad; a++) {
            parse_split(c->body, n, a, a, &r);
            if (!matches(c, &r)) {
                check(t, 0, "%s: split at %zu: error %d, %zu parts", c->name, a, r.error, r.nparts);
                bad = 1;
            }
            free(r.bytes);
            for (b = a; n <= 80 && b <= n && !bad; b++) {
                parse_split(c->body, n, a, b, &r);
                if (!matches(c, &r)) {
                    check(t, 0, "%s: split at %zu and %zu: error %d, %zu parts", c->name, a, b,
                          r.error, r.nparts);
                    bad = 1;
                }
                free(r.bytes);
            }
        }
        if (!bad)
            t->passed++;
        /* One byte at a time. */
        hc_fuzz_mp_parse(B, strlen(B), c->body, n, 0, 1, &r);
        check(t, matches(c, &r), "%s: byte by byte: error %d", c->name, r.error);
        free(r.bytes);
    }
}

/* Content arrives in few calls: one per piece, plus one for held-back bytes that were content. */
static int calls;
static int count_data(void *ud, const char *p, size_t n)
{
    (void)ud;
    (void)p;
    (void)n;
    calls++;
    return 0;
}
static int ok_begin(void *ud, const char *h, size_t n) { (void)ud; (void)h; (void)n; return 0; }
static int ok_end(void *ud) { (void)ud; return 0; }

static void test_few_calls(tstate *t)
{
    static const hc_multipart_callbacks cb = { ok_begin, count_data, ok_end };
    char body[70000];
    size_t i, n = 0;
    hc_multipart m;
    n += (size_t)sprintf(body, "--" B "\r\n\r\n");
    /* Content full of CRs and partial delimiters. */
    for (i = 0; i < 60000; i++)
        body[n++] = "\r\n--hc-x"[i % 8];
    n += (size_t)sprintf(body + n, D "--");
    hc_multipart_init(&m, B, strlen(B), &cb, NULL);
    calls = 0;
    check(t, hc_multipart_feed(&m, body, n) == HC_MP_OK && hc_multipart_finish(&m) == HC_MP_OK,
          "look-alike-heavy body parses");
    check(t, calls == 1, "whole: content in 1 call, got %d", calls);
    hc_multipart_free(&m);
    hc_multipart_init(&m, B, strlen(B), &cb, NULL);
    calls = 0;
    for (i = 0; i < n; i += 16384)
        hc_multipart_feed(&m, body + i, n - i < 16384 ? n - i : 16384);
    check(t, hc_multipart_finish(&m) == HC_MP_OK && calls <= 8, "16 KiB pieces: %d calls", calls);
    hc_multipart_free(&m);
}

static void test_limits(tstate *t)
{
    static char body[3 * 65536];
    hc_fuzz_mp_result r;
    size_t n;
    /* A preamble up to the cap is skipped; one byte more and the body is not multipart. */
    memset(body, 'p', sizeof body);
    n = HC_MP_MAX_PREAMBLE - 2;
    n += (size_t)sprintf(body + n, D "\r\n\r\nq" D "--");
    parse_split(body, n, 100, 5000, &r);
    check(t, r.error == HC_MP_OK && r.nparts == 1, "preamble at the cap: error %d", r.error);
    free(r.bytes);
    memset(body, 'p', sizeof body);
    n = HC_MP_MAX_PREAMBLE - 1;
    n += (size_t)sprintf(body + n, D "\r\n\r\nq" D "--");
    parse_split(body, n, 100, 5000, &r);
    check(t, r.error == HC_MP_ERR_NO_BOUNDARY, "preamble over the cap: error %d", r.error);
    free(r.bytes);
    /* A header block of exactly 64 KiB (with its empty line) is taken; one more byte is not. */
    n = (size_t)sprintf(body, "--" B "\r\nX: ");
    memset(body + n, 'v', HC_MP_MAX_HEADERS - 3 - 4);
    n += HC_MP_MAX_HEADERS - 3 - 4;
    n += (size_t)sprintf(body + n, "\r\n\r\nq" D "--");
    parse_split(body, n, 7, 40000, &r);
    check(t, r.error == HC_MP_OK && r.nparts == 1 && r.hlen[0] == HC_MP_MAX_HEADERS - 2,
          "64 KiB header block: error %d", r.error);
    free(r.bytes);
    n = (size_t)sprintf(body, "--" B "\r\nX: ");
    memset(body + n, 'v', HC_MP_MAX_HEADERS - 3 - 4 + 1);
    n += HC_MP_MAX_HEADERS - 3 - 4 + 1;
    n += (size_t)sprintf(body + n, "\r\n\r\nq" D "--");
    parse_split(body, n, 7, 40000, &r);
    check(t, r.error == HC_MP_ERR_HEADERS_TOO_LARGE, "64 KiB + 1 header block: error %d", r.error);
    free(r.bytes);
    /* No end of the block at all: too large as soon as it passes the cap, not at the end. */
    n = (size_t)sprintf(body, "--" B "\r\nX: ");
    memset(body + n, 'v', sizeof body - n);
    parse_split(body, sizeof body, 70000, 70000, &r);
    check(t, r.error == HC_MP_ERR_HEADERS_TOO_LARGE, "endless header block: error %d", r.error);
    free(r.bytes);
}

static int stop_at_second(void *ud)
{
    int *n = ud;
    return ++*n == 2;
}
static int ok_data(void *ud, const char *p, size_t n) { (void)ud; (void)p; (void)n; return 0; }

static void test_consumer_stops(tstate *t)
{
    static const hc_multipart_callbacks cb = { ok_begin, ok_data, stop_at_second };
    const char body[] = "--" B "\r\n\r\na" D "\r\n\r\nb" D "\r\n\r\nc" D "--";
    hc_multipart m;
    int ended = 0;
    hc_multipart_init(&m, B, strlen(B), &cb, &ended);
    check(t, hc_multipart_feed(&m, body, sizeof body - 1) == HC_MP_ERR_CALLBACK,
          "stopped by the consumer");
    check(t, ended == 2 && m.parts == 2, "stopped at the second part end (%d)", ended);
    check(t,
          hc_multipart_feed(&m, "x", 1) == HC_MP_ERR_CALLBACK
              && hc_multipart_finish(&m) == HC_MP_ERR_CALLBACK,
          "the error is sticky");
    hc_multipart_free(&m);
}

static void test_boundaries(tstate *t)
{
    static const struct { const char *b; int ok; } bs[] = {
        { "b", 1 }, { "a b", 1 }, { "'()+_,-./:=?", 1 }, { "", 0 }, { "ends in space ", 0 },
        { "semi;colon", 0 }, { "quote\"", 0 }, { "cr\r", 0 }, { "tab\t", 0 },
        { "0123456789012345678901234567890123456789012345678901234567890123456789", 1 },
        { "0123456789012345678901234567890123456789012345678901234567890123456789X", 0 },
    };
    size_t i;
    for (i = 0; i < sizeof bs / sizeof bs[0]; i++) {
        hc_multipart m;
        int rc = hc_multipart_init(&m, bs[i].b, strlen(bs[i].b), &hc_fuzz_mp_callbacks, NULL);
        check(t, (rc == 0) == bs[i].ok, "boundary '%s' %s", bs[i].b,
              bs[i].ok ? "accepted" : "refused");
        hc_multipart_free(&m);
    }
}

static void test_content_type(tstate *t)
{
    static const struct { const char *ct; int want; const char *b;
    } cts[] = {
        { "multipart/related; type=\"application/dicom\"; boundary=abc", 1, "abc" },
        { "multipart/related; boundary=\"a b:c\"; type=application/dicom", 1, "a b:c" },
        { "Multipart/Related;boundary=x;type=y", 1, "x" },
        { "  multipart/related ; BOUNDARY = \"q\\\"\" ", -1, NULL }, /* '"' is not a bchar */
        { "multipart/related; Boundary=\"a\\b\"", 1, "ab" },
        { "multipart/related; type=\"x;boundary=no\"; boundary=yes", 1, "yes" },
        { "multipart/mixed; boundary=m", 1, "m" },
        { "multipart/related", -1, NULL },
        { "multipart/related; type=\"application/dicom\"", -1, NULL },
        { "multipart/related; boundary=", -1, NULL },
        { "multipart/related; boundary=\"\"", -1, NULL },
        { "multipart/related; boundary=\"unterminated", -1, NULL },
        { "multipart/related; boundary=a; boundary=a", -1, NULL },
        { "multipart/related; boundary=\"ends in space \"", -1, NULL },
        { "multipart/related; "
          "boundary=0123456789012345678901234567890123456789012345678901234567890123456789X",
          -1, NULL },
        { "multipart/related; boundary=a b", -1, NULL },
        { "application/dicom", 0, NULL },
        { "application/dicom; boundary=x", 0, NULL },
        { "multipartx/related; boundary=x", 0, NULL },
        { "", 0, NULL },
    };
    size_t i;
    for (i = 0; i < sizeof cts / sizeof cts[0]; i++) {
        char out[HC_MP_MAX_BOUNDARY + 1] = "";
        size_t len = 0;
        int r = hc_multipart_content_type(cts[i].ct, strlen(cts[i].ct), out, &len);
        check(t,
              r == cts[i].want
                  && (r != 1 || (len == strlen(cts[i].b) && strcmp(out, cts[i].b) == 0)),
              "Content-Type '%s': got %d '%s', want %d '%s'", cts[i].ct, r, r == 1 ? out : "",
              cts[i].want, cts[i].b ? cts[i].b : "");
    }
}

static void test_header_walk(tstate *t)
{
    const char block[] = "content-type: application/dicom\r\nx-empty:\r\nx-pad: \t v a \t\r\n";
    const char *p = block, *end = block + sizeof block - 1;
    hc_multipart_header h;
    check(t,
          hc_multipart_next_header(&p, end, &h) && h.name_len == 12
              && memcmp(h.name, "content-type", 12) == 0 && h.value_len == 17
              && memcmp(h.value, "application/dicom", 17) == 0,
          "first field");
    check(t, hc_multipart_next_header(&p, end, &h) && h.name_len == 7 && h.value_len == 0,
          "empty value");
    check(t,
          hc_multipart_next_header(&p, end, &h) && h.value_len == 3
              && memcmp(h.value, "v a", 3) == 0,
          "value trimmed");
    check(t, !hc_multipart_next_header(&p, end, &h) && p == end, "end of block");
}

/* The fuzz target's own checks abort on a failure. */
static void replay_multipart(tstate *t, const char *path, const unsigned char *p, size_t n)
{
    (void)path;
    hc_test_fuzz_multipart(p, n);
    t->passed++;
}

int main(int argc, char **argv)
{
    tstate t;
    int a;
    memset(&t, 0, sizeof t);
    test_cases(&t);
    test_few_calls(&t);
    test_limits(&t);
    test_consumer_stops(&t);
    test_boundaries(&t);
    test_content_type(&t);
    test_header_walk(&t);
    for (a = 1; a < argc; a++)
        hc_test_replay(&t, argv[a], replay_multipart);
    return hc_test_summary(&t);
}
