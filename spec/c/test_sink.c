/* SPDX-License-Identifier: MIT */
/*
 * Tests of the on-disk sink (src/hc_sink.c) without a transfer, in a fresh directory under
 * $TMPDIR (or /tmp): a file sink renames its file into place only on success; a directory sink
 * writes one file per multipart part (fed a byte at a time) or one for a single body, hands them
 * over with their header blocks, and removes what it was not asked to keep; each cap stops it
 * with its reason and no file past the cap; malformed multipart bodies and unwritable
 * directories are errors with a message. Prints one line per failure and "N passed, N failed".
 */
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hc_sink.h"

struct tstate {
    int passed, failed;
    char dir[512];
};
#include "hc_test.h"

#define MULTIPART "multipart/related; type=\"application/dicom\"; boundary=b0"
#define BODY2 "--b0\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n" \
              "--b0\r\nContent-Type: application/dicom\r\nX-N: 2\r\n\r\nsecond part\r\n--b0--\r\n"

/* Number of entries of dir (without . and ..), -1 when it cannot be read. */
static int entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* A new empty directory t->dir/name, its path in out. */
static void fresh_dir(tstate *t, const char *name, char *out, size_t size)
{
    snprintf(out, size, "%s/%s", t->dir, name);
    check(t, mkdir(out, 0700) == 0, "mkdir %s", out);
}

/* The whole content of path (NUL-terminated, at most size - 1 bytes), "" when unreadable. */
static const char *content(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "rb");
    size_t n = 0;
    if (f != NULL) {
        n = fread(buf, 1, size - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
    return buf;
}

/* Feeds s a byte at a time; returns the first non-zero result. */
static int feed_bytes(hc_sink *k, const char *s)
{
    for (; *s != '\0'; s++)
        if (hc_sink_write(k, s, 1) != 0)
            return -1;
    return 0;
}

/* The sink's error and, for a cap, its reason. */
static int error_of(const hc_sink *k, const char **message, const char **code)
{
    return hc_sink_error(k, message, code);
}

static void test_file_sink(tstate *t)
{
    char dir[600], path[700], buf[64];
    hc_sink *k;
    fresh_dir(t, "file", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/answer", dir);
    k = hc_sink_new(HC_SINK_FILE, path, 0, 0, 0);
    check(t, hc_sink_decide(k, 200, "application/json") == 0 && hc_sink_mode(k) == HC_SINK_TO_FILE,
          "a 2xx body goes to the file");
    check(t, hc_sink_write(k, "hel", 3) == 0 && hc_sink_write(k, "lo", 2) == 0, "written");
    check(t, access(path, F_OK) != 0 && entries(dir) == 1, "only the partial file until the end");
    check(t, hc_sink_end(k, 1) == 0, "ended");
    check(t, strcmp(content(path, buf, sizeof buf), "hello") == 0 && entries(dir) == 1,
          "renamed into place: '%s'", buf);
    check(t, hc_sink_bytes(k) == 5, "5 bytes counted");
    hc_sink_free(k);
    check(t, access(path, F_OK) == 0, "the file stays after free");

    k = hc_sink_new(HC_SINK_FILE, path, 0, 0, 0);
    hc_sink_decide(k, 200, NULL);
    hc_sink_write(k, "new", 3);
    check(t, hc_sink_end(k, 0) == 0, "a failed transfer ends the sink");
    check(t, strcmp(content(path, buf, sizeof buf), "hello") == 0 && entries(dir) == 1,
          "the old file is untouched and the partial one gone");
    hc_sink_free(k);

    k = hc_sink_new(HC_SINK_FILE, path, 0, 0, 0);
    check(t,
          hc_sink_decide(k, 404, "application/json") == 0 && hc_sink_mode(k) == HC_SINK_TO_MEMORY,
          "a 404 body is left to memory");
    check(t, hc_sink_end(k, 1) == 0 && entries(dir) == 1, "and makes no file");
    hc_sink_free(k);
}

static void test_multipart(tstate *t)
{
    char dir[600], buf[64];
    const hc_part *p;
    hc_sink *k;
    fresh_dir(t, "parts", dir, sizeof dir);
    k = hc_sink_new(HC_SINK_DIR, dir, 0, 0, 0);
    check(t, hc_sink_decide(k, 200, MULTIPART) == 0 && hc_sink_mode(k) == HC_SINK_TO_PARTS,
          "a multipart body goes to parts");
    check(t, feed_bytes(k, BODY2) == 0 && hc_sink_end(k, 1) == 0, "fed a byte at a time");
    check(t, hc_sink_nparts(k) == 2 && entries(dir) == 2, "two parts, two files");
    p = hc_sink_part(k, 1);
    check(t,
          p != NULL && p->size == 11
              && strcmp(content(p->path, buf, sizeof buf), "second part") == 0,
          "part 2 holds its content: '%s'", buf);
    check(t, p != NULL && strstr(p->headers, "x-n: 2\r\n") != NULL, "with its header block");
    check(t, hc_sink_part(k, 2) == NULL, "no part 3");
    hc_sink_free(k);
    check(t, entries(dir) == 0, "parts not taken are removed with the sink");

    k = hc_sink_new(HC_SINK_DIR, dir, 0, 0, 0);
    hc_sink_decide(k, 200, MULTIPART);
    hc_sink_write(k, BODY2, strlen(BODY2));
    hc_sink_end(k, 1);
    hc_sink_take_parts(k);
    hc_sink_free(k);
    check(t, entries(dir) == 2, "taken parts are the caller's files");

    fresh_dir(t, "single", dir, sizeof dir);
    k = hc_sink_new(HC_SINK_DIR, dir, 0, 0, 0);
    check(t, hc_sink_decide(k, 200, "application/dicom") == 0 && hc_sink_mode(k) == HC_SINK_TO_PART,
          "a single body goes to one part");
    hc_sink_write(k, "DICM", 4);
    check(t, hc_sink_end(k, 1) == 0 && hc_sink_nparts(k) == 1, "one part");
    p = hc_sink_part(k, 0);
    check(t, p != NULL && strcmp(p->headers, "content-type: application/dicom\r\n") == 0,
          "its header block is the Content-Type");
    hc_sink_reset(k);
    check(t, entries(dir) == 0 && hc_sink_mode(k) == HC_SINK_UNDECIDED, "reset forgets it");
    check(t, hc_sink_decide(k, 204, NULL) == 0 && hc_sink_end(k, 1) == 0, "a 204");
    check(t, hc_sink_decide(k, 200, NULL) == 0 && hc_sink_end(k, 1) == 0 && hc_sink_nparts(k) == 0
              && entries(dir) == 0, "an empty 200 body is no part");
    hc_sink_free(k);
}

/* One cap: a sink over dir fed body (multipart when ct says so) stops with code, keeping
 * `complete` parts and no other file. */
static void cap_case(tstate *t, const char *dir, int64_t bytes, int64_t parts, int64_t part_bytes,
                     const char *ct, const char *code, size_t complete)
{
    const char *message, *got = NULL;
    hc_sink *k = hc_sink_new(HC_SINK_DIR, dir, bytes, parts, part_bytes);
    hc_sink_decide(k, 200, ct);
    check(t, feed_bytes(k, BODY2) != 0, "%s: stopped", code);
    check(t, error_of(k, &message, &got) == HC_SINKERR_CAP && got != NULL && strcmp(got, code) == 0,
          "%s: the reason is %s (%s)", code, got ? got : "none", message);
    hc_sink_end(k, 0);
    check(t, hc_sink_nparts(k) == complete && entries(dir) == (int)complete,
          "%s: %lu complete parts, %d files", code, (unsigned long)hc_sink_nparts(k), entries(dir));
    hc_sink_free(k);
}

static void test_caps(tstate *t)
{
    char dir[600];
    fresh_dir(t, "caps", dir, sizeof dir);
    cap_case(t, dir, 40, 0, 0, MULTIPART, "too_large", 0);
    cap_case(t, dir, 0, 1, 0, MULTIPART, "too_many_parts", 1);
    cap_case(t, dir, 0, 0, 6, MULTIPART, "part_too_large", 1);
    cap_case(t, dir, 0, 0, 6, "application/dicom", "part_too_large", 0);
}

static void test_errors(tstate *t)
{
    char dir[600], missing[700];
    const char *message, *code;
    hc_sink *k;
    fresh_dir(t, "errors", dir, sizeof dir);
    k = hc_sink_new(HC_SINK_DIR, dir, 0, 0, 0);
    check(t, hc_sink_decide(k, 200, "multipart/related; type=application/dicom") != 0
              && error_of(k, &message, &code) == HC_SINKERR_MULTIPART
              && strstr(message, "no valid boundary parameter") != NULL,
          "a multipart type without a boundary: %s", message);
    hc_sink_reset(k);
    hc_sink_decide(k, 200, "multipart/related; boundary=other");
    check(t, hc_sink_write(k, BODY2, strlen(BODY2)) != 0 || hc_sink_end(k, 1) != 0,
          "another boundary fails");
    check(t,
          error_of(k, &message, &code) == HC_SINKERR_MULTIPART
              && strstr(message, "does not start with its boundary delimiter") != NULL,
          "%s", message);
    hc_sink_reset(k);
    hc_sink_decide(k, 200, MULTIPART);
    hc_sink_write(k, BODY2, 100);
    check(t, hc_sink_end(k, 1) != 0 && error_of(k, &message, &code) == HC_SINKERR_MULTIPART
              && strstr(message, "ended inside a part (1 complete part received)") != NULL,
          "a body cut in part 2: %s", message);
    hc_sink_free(k);
    check(t, entries(dir) == 0, "no file left");

    snprintf(missing, sizeof missing, "%s/none", dir);
    k = hc_sink_new(HC_SINK_DIR, missing, 0, 0, 0);
    check(t, hc_sink_decide(k, 200, "application/dicom") != 0
              && error_of(k, &message, &code) == HC_SINKERR_IO
              && strstr(message, "No such file or directory") != NULL,
          "a directory that is not there: %s", message);
    hc_sink_free(k);
}

int main(void)
{
    tstate t;
    const char *base = getenv("TMPDIR");
    (void)hc_test_replay; /* the shared harness's replay: no fuzz inputs for this area */
    memset(&t, 0, sizeof t);
    snprintf(t.dir, sizeof t.dir, "%s/hc-test-sink-XXXXXX", base != NULL && *base ? base : "/tmp");
    if (mkdtemp(t.dir) == NULL) {
        printf("cannot make a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    test_file_sink(&t);
    test_multipart(&t);
    test_caps(&t);
    test_errors(&t);
    {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", t.dir);
        if (system(cmd) != 0)
            printf("note: could not remove %s\n", t.dir);
    }
    return hc_test_summary(&t);
}
