/* SPDX-License-Identifier: MIT */
/*
 * Tests of the HTTP text helpers (src/hc_url.c): percent-encoding tables,
 * the output cap, the CR/LF/NUL check, and the splitting of response header
 * blocks into fields; then a replay of the fuzz regressions and seeds through
 * the fuzz targets' own checks (fuzz/fuzz_url.c and fuzz/fuzz_headers.c are
 * compiled in). Both parsers live in hc_url.c, so for every directory D/url
 * named on the command line, D/url is replayed with the escaping target and
 * D/headers with the header target.
 * Prints one line per failure and "N passed, N failed"; exits 1 on failure.
 * Run from the repository root: test_url spec/fixtures/fuzz/url fuzz/corpus/url
 */
#define LLVMFuzzerTestOneInput hc_test_fuzz_url
#include "../../fuzz/fuzz_url.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput hc_test_fuzz_headers
#include "../../fuzz/fuzz_headers.c"
#undef LLVMFuzzerTestOneInput

#include <stdio.h>

struct tstate {
    int passed, failed;
};
#include "hc_test.h"


static void test_escape(tstate *t)
{
    static const struct { const char *s; size_t n; const char *keep, *want; } cases[] = {
        { "abcXYZ019-._~", 13, NULL, "abcXYZ019-._~" },
        { "a b", 3, NULL, "a%20b" },
        { "projects/p/locations/l", 22, "/", "projects/p/locations/l" },
        { "a/b", 3, NULL, "a%2Fb" },
        { "../%2F?#", 8, "/", "../%252F%3F%23" },
        { "\0x", 2, NULL, "%00x" },
        { "\0x", 2, "x", "%00x" },
        { "\xc3\xa9\xff", 3, NULL, "%C3%A9%FF" },
        { "a,b c", 5, ",", "a,b%20c" },
        { "\r\nHost: x", 9, NULL, "%0D%0AHost%3A%20x" },
        { "", 0, NULL, "" },
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hc_buf out;
        hc_buf_init(&out, 1024);
        check(t, hc_url_escape(cases[i].s, cases[i].n, cases[i].keep, &out) == 0
                     && out.len == strlen(cases[i].want)
                     && (out.len == 0 || memcmp(out.data, cases[i].want, out.len) == 0),
              "escape case %zu: got '%s', want '%s'", i, out.data ? out.data : "", cases[i].want);
        hc_buf_free(&out);
    }
    {
        hc_buf out;
        hc_buf_init(&out, 4);
        check(t, hc_url_escape("a b", 3, NULL, &out) == -1 && out.len <= 4,
              "cap 4 refuses 'a%%20b'");
        hc_buf_free(&out);
        hc_buf_init(&out, 5);
        check(t, hc_url_escape("a b", 3, NULL, &out) == 0 && out.len == 5, "cap 5 takes 'a%%20b'");
        hc_buf_free(&out);
    }
}

static void test_has_ctl(tstate *t)
{
    check(t, !hc_url_has_ctl("Bearer abc", 10), "plain value");
    check(t, hc_url_has_ctl("a\rb", 3), "CR");
    check(t, hc_url_has_ctl("a\nb", 3), "LF");
    check(t, hc_url_has_ctl("a\0b", 3), "NUL");
    check(t, !hc_url_has_ctl("a\tb\x7f", 4), "tab and DEL are not line breaks");
    check(t, !hc_url_has_ctl("", 0), "empty");
}

/* Checks that the block splits into exactly the fields of want ("name=value" strings, NULL
 * ended). */
static void expect_fields(tstate *t, const char *what, const char *block, const char *const *want)
{
    const char *p = block, *end = block + strlen(block);
    hc_url_field f;
    size_t i = 0;
    char got[256];
    while (hc_url_next_field(&p, end, &f)) {
        snprintf(got, sizeof got, "%.*s=%.*s", (int)f.name_len, f.name, (int)f.value_len, f.value);
        check(t, want[i] != NULL && strcmp(got, want[i]) == 0, "%s: field %zu is '%s', want '%s'",
              what, i, got, want[i] ? want[i] : "(none)");
        if (want[i] != NULL)
            i++;
    }
    check(t, want[i] == NULL && p == end, "%s: %zu fields found, ends at the end", what, i);
}

static void test_fields(tstate *t)
{
    static const char *const orthanc[] = { "Connection=keep-alive", "Keep-Alive=timeout=1",
        "Content-Type=application/dicom+json", "Content-Length=859", NULL };
    static const char *const odd[] = { "X-Empty=", "Retry-After=3", "Set-Cookie=a=1",
        "Set-Cookie=b=2", "Last=v", NULL };
    static const char *const lf[] = { "a=1", "b=2", NULL };
    static const char *const none[] = { NULL };
    static const char *const short_line[] = { "G=K:", NULL };
    expect_fields(t, "Orthanc's answer",
                  "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=1\r\n"
                  "Content-Type: application/dicom+json\r\nContent-Length: 859\r\n\r\n", orthanc);
    expect_fields(t, "odd lines",
                  "HTTP/2 200 \r\nX-Empty:\r\nRetry-After: \t 3 \t\r\nBad Name: x\r\n: nothing\r\n"
                  "  folded: line\r\nNoColon\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nLast:v",
                  odd);
    expect_fields(t, "LF-only lines", "HTTP/1.0 200 OK\na: 1\nb: 2\n\n", lf);
    expect_fields(t, "status line with a colon", "HTTP/1.1 500 Error: x\r\n", none);
    expect_fields(t, "empty block", "", none);
    /* Found by fuzzing the loop this replaced: it compared 5 bytes of a 2-byte line at the end. */
    expect_fields(t, "short last line", "G:K:", short_line);
}

/* Replays every file under dir through one(data, size). */
static void replay_url(tstate *t, const char *path, const unsigned char *p, size_t n)
{
    (void)path;
    hc_test_fuzz_url(p, n);
    t->passed++;
}

static void replay_headers(tstate *t, const char *path, const unsigned char *p, size_t n)
{
    (void)path;
    hc_test_fuzz_headers(p, n);
    t->passed++;
}

int main(int argc, char **argv)
{
    tstate t;
    int a;
    memset(&t, 0, sizeof t);
    test_escape(&t);
    test_has_ctl(&t);
    test_fields(&t);
    for (a = 1; a < argc; a++) {
        size_t n = strlen(argv[a]);
        char sibling[1024];
        hc_test_replay(&t, argv[a], replay_url);
        if (n >= 3 && strcmp(argv[a] + n - 3, "url") == 0 && n + 5 < sizeof sibling) {
            snprintf(sibling, sizeof sibling, "%.*sheaders", (int)(n - 3), argv[a]);
            hc_test_replay(&t, sibling, replay_headers);
        }
    }
    return hc_test_summary(&t);
}
