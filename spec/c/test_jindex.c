/* SPDX-License-Identifier: MIT */
/*
 * Tests of the journal's in-memory index (src/hc_jindex.c): put and get, the latest put of a
 * path winning (and the counts by outcome following it), paths that differ only in one byte,
 * hold NULs or are empty, growth through many rehashes with every entry still found, the
 * limits of offset and code, and free twice. Under ASan (scripts/test-sanitize) a read past an
 * entry or a leak fails the run. Then a replay of the fuzz regressions and seeds, each file both
 * a path and a program for fuzz/fuzz_jindex.c's checks (compiled in).
 * Prints one line per failure and "N passed, N failed"; exits 1 on failure.
 * Run from the repository root: test_jindex spec/fixtures/fuzz/jindex fuzz/corpus/jindex
 */
#define LLVMFuzzerTestOneInput hc_test_fuzz_jindex
#include "../../fuzz/fuzz_jindex.c"
#undef LLVMFuzzerTestOneInput

#include <stdio.h>
#include <string.h>

#include "hc_jindex.h"

struct tstate {
    int passed, failed;
};
#include "hc_test.h"

static void test_put_get(tstate *t)
{
    hc_jindex ix;
    const hc_jindex_entry *e;
    check(t, hc_jindex_init(&ix) == 0, "init");
    check(t, hc_jindex_get(&ix, "/a", 2) == NULL, "an empty index finds nothing");
    check(t, hc_jindex_put(&ix, "/a", 2, 10, 100, 0, 1) == 0, "put /a");
    check(t, hc_jindex_put(&ix, "/b", 2, 20, 200, 77, 2) == 0, "put /b");
    e = hc_jindex_get(&ix, "/a", 2);
    check(t, e != NULL && e->size == 10 && e->mtime == 100 && hc_jindex_offset(e) == 0
                 && hc_jindex_code(e) == 1, "get /a");
    e = hc_jindex_get(&ix, "/b", 2);
    check(t, e != NULL && e->size == 20 && e->mtime == 200 && hc_jindex_offset(e) == 77
                 && hc_jindex_code(e) == 2, "get /b");
    check(t, hc_jindex_get(&ix, "/c", 2) == NULL, "/c is not there");
    check(t, hc_jindex_get(&ix, "/a", 1) == NULL, "a prefix of a path is another path");
    check(t, ix.n == 2 && ix.counts[1] == 1 && ix.counts[2] == 1, "counts 1 and 1");
    /* The latest put wins, and moves the path from one count to the other. */
    check(t, hc_jindex_put(&ix, "/a", 2, 11, 101, 500, 2) == 0, "put /a again");
    e = hc_jindex_get(&ix, "/a", 2);
    check(t, e != NULL && e->size == 11 && e->mtime == 101 && hc_jindex_offset(e) == 500
                 && hc_jindex_code(e) == 2, "the latest put of /a wins");
    check(t, ix.n == 2 && ix.counts[1] == 0 && ix.counts[2] == 2, "counts follow the latest");
    /* Bytes, not C strings: a NUL inside and the empty path are paths like any other. */
    check(t, hc_jindex_put(&ix, "/x\0y", 4, 1, 1, 1, 1) == 0, "put a path holding a NUL");
    check(t, hc_jindex_get(&ix, "/x", 2) == NULL, "the part before the NUL is another path");
    check(t, hc_jindex_get(&ix, "/x\0y", 4) != NULL, "the whole path is found");
    check(t, hc_jindex_put(&ix, "", 0, 5, 5, 5, 3) == 0 && hc_jindex_get(&ix, "", 0) != NULL,
          "the empty path");
    /* Limits: the offset has 56 bits, the code 8; a refused put changes nothing. */
    check(t, hc_jindex_put(&ix, "/big", 4, 1, 1, ((uint64_t)1 << 56) - 1, 255) == 0,
          "the largest offset and code");
    e = hc_jindex_get(&ix, "/big", 4);
    check(t, e != NULL && hc_jindex_offset(e) == ((uint64_t)1 << 56) - 1 && hc_jindex_code(e) == 255,
          "offset and code kept whole");
    check(t, hc_jindex_put(&ix, "/c", 2, 1, 1, (uint64_t)1 << 56, 1) == -1, "offset 2^56 refused");
    check(t, hc_jindex_put(&ix, "/c", 2, 1, 1, 0, 256) == -1, "code 256 refused");
    check(t, hc_jindex_get(&ix, "/c", 2) == NULL && ix.n == 5, "a refused put adds nothing");
    check(t, hc_jindex_put(&ix, "/neg", 4, -1, -2, 0, 0) == 0, "negative size and mtime");
    e = hc_jindex_get(&ix, "/neg", 4);
    check(t, e != NULL && e->size == -1 && e->mtime == -2, "negative values kept");
    hc_jindex_free(&ix);
    hc_jindex_free(&ix);
    check(t, ix.n == 0 && ix.entries == NULL && hc_jindex_get(&ix, "/a", 2) == NULL,
          "freed twice, empty");
}

/* 300,000 paths (many rehashes and reallocations), each put twice with other values: all found
 * with their latest values, the table never more than half full. */
static void test_many(tstate *t)
{
    hc_jindex ix;
    char p[64];
    int i, bad = 0, n = 300000;
    check(t, hc_jindex_init(&ix) == 0, "init");
    for (i = 0; i < n; i++) {
        int len = snprintf(p, sizeof p, "/archive/%d/im%07d.dcm", i % 97, i);
        if (hc_jindex_put(&ix, p, (size_t)len, i, 1, (uint64_t)i * 100, 1) != 0)
            bad++;
    }
    for (i = 0; i < n; i += 2) {
        int len = snprintf(p, sizeof p, "/archive/%d/im%07d.dcm", i % 97, i);
        if (hc_jindex_put(&ix, p, (size_t)len, i + 1, 2, (uint64_t)i * 100 + 1, 2) != 0)
            bad++;
    }
    check(t, bad == 0, "%d puts failed", bad);
    check(t, ix.n == (size_t)n && 2 * ix.n <= ix.nslots, "n %zu, slots %zu", ix.n, ix.nslots);
    check(t, ix.counts[1] == (size_t)n / 2 && ix.counts[2] == (size_t)n / 2, "counts %zu %zu",
          ix.counts[1], ix.counts[2]);
    for (i = 0; i < n; i++) {
        int len = snprintf(p, sizeof p, "/archive/%d/im%07d.dcm", i % 97, i);
        const hc_jindex_entry *e = hc_jindex_get(&ix, p, (size_t)len);
        int twice = i % 2 == 0;
        if (e == NULL || e->size != i + twice || e->mtime != 1 + twice
            || hc_jindex_offset(e) != (uint64_t)i * 100 + (uint64_t)twice
            || hc_jindex_code(e) != (unsigned)(1 + twice))
            bad++;
    }
    check(t, bad == 0, "%d of %d paths not found with their latest values", bad, n);
    for (i = n; i < n + 1000; i++) {
        int len = snprintf(p, sizeof p, "/archive/%d/im%07d.dcm", i % 97, i);
        if (hc_jindex_get(&ix, p, (size_t)len) != NULL)
            bad++;
    }
    check(t, bad == 0, "%d paths never put were found", bad);
    hc_jindex_free(&ix);
}

/* Any bytes are a path: a replayed file (the directories ctest names, if they exist) put, then
 * found, and its first half not; and a program of puts and gets for the fuzz target. */
static void replay_path(tstate *t, const char *path, const unsigned char *data, size_t len)
{
    hc_jindex ix;
    const hc_jindex_entry *e;
    check(t, hc_jindex_init(&ix) == 0, "init");
    check(t, hc_jindex_put(&ix, (const char *)data, len, (int64_t)len, 7, 3, 1) == 0, "put %s", path);
    e = hc_jindex_get(&ix, (const char *)data, len);
    check(t, e != NULL && e->size == (int64_t)len, "get %s", path);
    check(t, len == 0 || hc_jindex_get(&ix, (const char *)data, len / 2) == NULL, "half of %s", path);
    hc_jindex_free(&ix);
    hc_test_fuzz_jindex(data, len);
}

int main(int argc, char **argv)
{
    tstate t;
    int a;
    memset(&t, 0, sizeof t);
    test_put_get(&t);
    test_many(&t);
    for (a = 1; a < argc; a++)
        hc_test_replay(&t, argv[a], replay_path);
    return hc_test_summary(&t);
}
