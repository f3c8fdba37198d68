/* SPDX-License-Identifier: MIT */
/*
 * Replays the fuzz regressions and seeds of the transport (src/hc_http.c over libcurl, with the
 * body, inflate, sink, multipart and DICOM code behind it) through the fuzz target's own checks
 * (fuzz/fuzz_http.c is compiled in): each file is a flags byte and the raw answer a thread of
 * this process serves on 127.0.0.1, and each transfer must end as the target says (a failure
 * with a reason, or the final answer's header block alone; no file or fd left behind). What a
 * transfer does against real servers is specified by the Lua specs (spec 85 for hostile ones).
 * Prints "N passed, N failed"; a failed check aborts with its reason after the input's name.
 * Run from the repository root: test_http spec/fixtures/fuzz/http fuzz/corpus/http
 */
#define LLVMFuzzerTestOneInput hc_test_fuzz_http
#include "../../fuzz/fuzz_http.c"
#undef LLVMFuzzerTestOneInput

struct tstate {
    int passed, failed;
};
#include "hc_test.h"

/* The fuzz target's own checks abort on a failure. */
static void replay_http(tstate *t, const char *path, const unsigned char *p, size_t n)
{
    (void)path;
    hc_test_fuzz_http(p, n);
    t->passed++;
}

int main(int argc, char **argv)
{
    tstate t;
    int a;
    memset(&t, 0, sizeof t);
    for (a = 1; a < argc; a++)
        hc_test_replay(&t, argv[a], replay_http);
    return hc_test_summary(&t);
}
