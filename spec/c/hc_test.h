/* SPDX-License-Identifier: MIT */
/*
 * The harness the C tests share: counted checks, the replay of every file of a directory (fuzz
 * regressions and seeds) and the summary line "N passed, N failed" that ctest and CI count.
 * A test defines `struct tstate` with `int passed, failed;` (and whatever scratch state it
 * needs) before including this header.
 */
#ifndef HC_TEST_H
#define HC_TEST_H

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct tstate tstate;

/* Counts one assertion; prints the message when it fails. */
static void check(tstate *t, int ok, const char *fmt, ...)
{
    va_list ap;
    if (ok) {
        t->passed++;
        return;
    }
    t->failed++;
    printf("FAIL ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

typedef void (*hc_test_replay_fn)(tstate *t, const char *path, const unsigned char *data,
                                  size_t len);

/* Calls one() with every file of dir (dot files skipped). The data is an exact-size heap copy,
 * so reading one byte too far is caught by ASan. The path is printed first: a failed check
 * may abort inside a fuzz target, and the log must say which input did it. */
static void hc_test_replay(tstate *t, const char *dir, hc_test_replay_fn one)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    if (d == NULL) {
        printf("note: no replay directory %s\n", dir);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        char path[1536];
        unsigned char *buf;
        long len;
        FILE *f;
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        f = fopen(path, "rb");
        if (f == NULL)
            continue;
        fseek(f, 0, SEEK_END);
        len = ftell(f);
        rewind(f);
        buf = malloc(len > 0 ? (size_t)len : 1);
        if (buf == NULL || len < 0 || fread(buf, 1, (size_t)len, f) != (size_t)len) {
            check(t, 0, "cannot read %s", path);
        } else {
            printf("replay %s\n", path);
            fflush(stdout);
            one(t, path, buf, (size_t)len);
        }
        free(buf);
        fclose(f);
        n++;
    }
    closedir(d);
    printf("note: replayed %d files from %s\n", n, dir);
}

/* Prints the summary line; returns the exit code. */
static int hc_test_summary(const tstate *t)
{
    printf("%d passed, %d failed\n", t->passed, t->failed);
    return t->failed ? 1 : 0;
}

#endif
