/* SPDX-License-Identifier: MIT */
/*
 * Tests of request bodies (src/hc_body.c): the exact bytes of multipart
 * framing, boundary and part-header validation with their messages, files
 * that vanish, grow or shrink between building and reading (each with its
 * message), files replaced by another of the same size or modified in place
 * when their identity (device, inode, mtime) was given, seeks, the length limit, and a replay of
 * every file in the directories named on the command line (fuzz regressions and seeds) through the
 * fuzz target's own checks (fuzz/fuzz_body.c is compiled in). Prints one line per failure and "N
 * passed, N failed"; exits 1 on failure. Run from the repository root: test_body
 * spec/fixtures/fuzz/body fuzz/corpus/body
 */
#define LLVMFuzzerTestOneInput hc_test_fuzz_body
#include "../../fuzz/fuzz_body.c"
#undef LLVMFuzzerTestOneInput

#include <fcntl.h>
#include <sys/stat.h>

/* Counters, passed around. */
struct tstate {
    int passed, failed;
    char dir[64];   /* scratch directory */
};
#include "hc_test.h"

/* hc_body's two messages for a boundary it refuses. */
#define BAD_LENGTH "invalid multipart boundary (1 to 70 characters, not ending in a space)"
#define BAD_CHARACTER "invalid character in multipart boundary"

/* Writes n bytes to dir/name; returns the path in a static buffer (valid until the next call). */
static const char *put_file(tstate *t, const char *name, const char *data, size_t n)
{
    static char path[128];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", t->dir, name);
    f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
    return path;
}

/* Reads the whole body from the current position in chunks of k into out (cap bytes); returns the
 * count, or -1 when a read failed. */
static long read_all(hc_body *b, char *out, size_t cap, size_t k)
{
    long total = 0, r;
    while ((size_t)total < cap
           && (r = hc_body_read(b, out + total, k < cap - (size_t)total ? k : cap - (size_t)total))
               > 0)
        total += r;
    return r < 0 ? -1 : total;
}

static void test_framing(tstate *t)
{
    static const char want[] =
        "--b1\r\nContent-Type: application/dicom\r\n\r\nDATA"
        "\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nFILE-BYTES"
        "\r\n--b1\r\n\r\n"
        "\r\n--b1--\r\n";
    const char *h = "Content-Type: application/dicom\r\n";
    char got[256];
    size_t k;
    hc_body *b = hc_body_new();
    const char *path = put_file(t, "part", "FILE-BYTES", 10);
    check(t, hc_body_begin_part(b, "b1", h) == 0 && hc_body_add_mem(b, "DATA", 4) == 0
                 && hc_body_begin_part(b, "b1", h) == 0 && hc_body_add_file(b, path, -1) == 0
                 && hc_body_begin_part(b, "b1", "") == 0 && hc_body_finish_multipart(b, "b1") == 0,
          "framing builds: %s", hc_body_error(b));
    check(t, hc_body_length(b) == (int64_t)sizeof want - 1, "framing length %lld",
          (long long)hc_body_length(b));
    /* Every chunk size gives the same bytes, and a rewind gives them again. */
    for (k = 1; k <= sizeof want; k += 7) {
        long n;
        hc_body_seek(b, 0);
        n = read_all(b, got, sizeof got, k);
        check(t, n == (long)sizeof want - 1 && memcmp(got, want, sizeof want - 1) == 0,
              "framing bytes with chunks of %zu: %ld", k, n);
    }
    /* A seek into the file segment reads from there. */
    check(t, hc_body_seek(b, strstr(want, "BYTES") - want) == 0 && hc_body_read(b, got, 5) == 5
                 && memcmp(got, "BYTES", 5) == 0,
          "seek into a file segment: '%.5s'", got);
    check(t, hc_body_seek(b, -1) == -1 && strcmp(hc_body_error(b), "seek outside the body") == 0,
          "seek before the start: %s", hc_body_error(b));
    check(t, hc_body_seek(b, hc_body_length(b) + 1) == -1, "seek past the end");
    check(t, hc_body_seek(b, hc_body_length(b)) == 0 && hc_body_read(b, got, 10) == 0,
          "read at the end");
    hc_body_free(b);
}

static void test_boundaries(tstate *t)
{
    static const struct { const char *b; int ok;
    } cases[] = {
        { "a", 1 },
        { " a", 1 },
        { "healthcare-0123456789abcdef", 1 },
        { "0123456789'()+_,-./:=? ABCXYZabcxyz", 1 },
        { "1234567890123456789012345678901234567890123456789012345678901234567890", 1 },
        { "", 0 },
        { "a ", 0 },
        { "a\"b", 0 },
        { "a\r\nb", 0 },
        { "a;b", 0 },
        { "a\tb", 0 },
        { "\xc3\xa9", 0 },
        { "12345678901234567890123456789012345678901234567890123456789012345678901", 0 },
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hc_body *b = hc_body_new();
        int rc = hc_body_begin_part(b, cases[i].b, "");
        const char *e = hc_body_error(b);
        check(t,
              (rc == 0) == cases[i].ok
                  && (rc == 0 ? hc_body_length(b) > 0 : hc_body_length(b) == 0),
              "boundary '%s': rc %d", cases[i].b, rc);
        if (!cases[i].ok)
            check(t, strcmp(e, BAD_LENGTH) == 0 || strcmp(e, BAD_CHARACTER) == 0,
                  "boundary '%s' message: %s", cases[i].b, e);
        check(t, (hc_body_finish_multipart(b, cases[i].b) == 0) == cases[i].ok,
              "close delimiter '%s'", cases[i].b);
        hc_body_free(b);
    }
}

static void test_part_headers(tstate *t)
{
    static const struct { const char *h, *err;
    } cases[] = {
        { "", NULL },
        { "Content-Type: application/dicom\r\n", NULL },
        { "A: b\r\nContent-Location: x:y\r\n", NULL },
        { "A:\r\n", NULL },
        { "A: b", "invalid part headers: each line must end with CRLF" },
        { "A: b\r\n\r\nforged content",
          "invalid part headers: a line needs a header name and a colon" },
        { "\r\n", "invalid part headers: a line needs a header name and a colon" },
        { ": b\r\n", "invalid part headers: a line needs a header name and a colon" },
        { "A b: c\r\n", "invalid part headers: a line needs a header name and a colon" },
        { "A\r\n", "invalid part headers: a line needs a header name and a colon" },
        { "A: b\nC: d\r\n", "invalid part headers: CR or LF inside a line" },
        { "A: b\rc\r\n", "invalid part headers: CR or LF inside a line" },
        { "\xc3\xa9: b\r\n", "invalid part headers: a line needs a header name and a colon" },
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hc_body *b = hc_body_new();
        int rc = hc_body_begin_part(b, "bnd", cases[i].h);
        if (cases[i].err == NULL)
            check(t, rc == 0, "headers '%s' refused: %s", cases[i].h, hc_body_error(b));
        else
            check(t,
                  rc == -1 && strcmp(hc_body_error(b), cases[i].err) == 0 && hc_body_length(b) == 0,
                  "headers '%s': %d '%s'", cases[i].h, rc, hc_body_error(b));
        hc_body_free(b);
    }
}

static void test_files(tstate *t)
{
    char got[64], want[128];
    const char *path;
    hc_body *b;
    FILE *f;

    /* Vanished between building and reading. */
    path = put_file(t, "gone", "0123456789", 10);
    b = hc_body_new();
    check(t, hc_body_add_file(b, path, -1) == 0 && hc_body_length(b) == 10, "stat size");
    remove(path);
    snprintf(want, sizeof want, "cannot open %s: No such file or directory", path);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "vanished file: %s", hc_body_error(b));
    hc_body_free(b);

    /* Changed size before its first byte was read. */
    path = put_file(t, "short", "01234", 5);
    b = hc_body_new();
    hc_body_add_mem(b, "head", 4);
    hc_body_add_file(b, path, 10);
    snprintf(want, sizeof want, "file changed size after it was checked: %s (was 10 bytes, now 5)",
             path);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "shorter at open: %s", hc_body_error(b));
    hc_body_free(b);

    /* Grew while it was being read: caught at its last byte. */
    path = put_file(t, "grows", "0123456789", 10);
    b = hc_body_new();
    hc_body_add_file(b, path, -1);
    check(t, hc_body_read(b, got, 4) == 4, "first bytes of a growing file");
    f = fopen(path, "ab");
    fputs("more", f);
    fclose(f);
    snprintf(want, sizeof want, "file changed size while it was being sent: %s (10 bytes, now 14)",
             path);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "grown file: %s", hc_body_error(b));
    /* A rewind reads it again and fails again, at open this time. */
    snprintf(want, sizeof want, "file changed size after it was checked: %s (was 10 bytes, now 14)",
             path);
    check(t, hc_body_seek(b, 0) == 0 && hc_body_error(b)[0] == '\0' && hc_body_read(b, got, 1) == -1
                 && strcmp(hc_body_error(b), want) == 0,
          "grown file after a rewind: %s", hc_body_error(b));
    hc_body_free(b);

    /* Shrank while it was open. */
    path = put_file(t, "shrinks", "0123456789", 10);
    b = hc_body_new();
    hc_body_add_file(b, path, -1);
    check(t, hc_body_read(b, got, 4) == 4, "first bytes of a shrinking file");
    if (truncate(path, 6) != 0)
        perror("truncate");
    snprintf(want, sizeof want, "file shrank while it was being sent: %s (6 of 10 bytes)", path);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "shrunk file: %s", hc_body_error(b));
    hc_body_free(b);

    /* Not a regular file, and no such file, when the size is asked for at build time. */
    b = hc_body_new();
    snprintf(want, sizeof want, "not a regular file: %s", t->dir);
    check(t, hc_body_add_file(b, t->dir, -1) == -1 && strcmp(hc_body_error(b), want) == 0,
          "directory: %s", hc_body_error(b));
    check(t, hc_body_add_file(b, "/nonexistent/x.dcm", -1) == -1
                 && strcmp(hc_body_error(b),
                           "cannot open /nonexistent/x.dcm: No such file or directory") == 0,
          "missing: %s", hc_body_error(b));
    check(t, hc_body_length(b) == 0, "refused files add nothing");

    /* The total length has a ceiling instead of an overflow. */
    check(t,
          hc_body_add_file(b, "/nonexistent/big", INT64_MAX) == 0
              && hc_body_add_file(b, "/nonexistent/one", 1) == -1
              && strcmp(hc_body_error(b), "request body too large") == 0
              && hc_body_length(b) == INT64_MAX,
          "length overflow: %s", hc_body_error(b));
    check(t, hc_body_add_mem(b, "x", 1) == -1, "memory past the ceiling");
    hc_body_free(b);
}

/* Sets path's mtime to t seconds and nsec nanoseconds. */
static void set_mtime_ns(const char *path, time_t t, long nsec)
{
    struct timespec ts[2];
    ts[0].tv_sec = ts[1].tv_sec = t;
    ts[0].tv_nsec = ts[1].tv_nsec = nsec;
    if (utimensat(AT_FDCWD, path, ts, 0) != 0)
        perror(path);
}

/* Sets path's mtime to t seconds. */
static void set_mtime(const char *path, time_t t)
{
    set_mtime_ns(path, t, 0);
}

/* The identity stat gives path now. */
static hc_file_identity identity_of(const char *path)
{
    struct stat st;
    hc_file_identity id;
    memset(&id, 0, sizeof id);
    if (stat(path, &st) != 0) {
        perror(path);
        exit(2);
    }
    id.have = HC_FILE_DEV | HC_FILE_INO | HC_FILE_MTIME;
    id.dev = (uint64_t)st.st_dev;
    id.ino = (uint64_t)st.st_ino;
    id.mtime = (int64_t)st.st_mtime;
    return id;
}

static void test_identity_unchanged(tstate *t)
{
    char got[64], path[128];
    hc_file_identity id;
    hc_body *b;
    long n;

    /* The same file, unchanged: read, and read again after a rewind. */
    snprintf(path, sizeof path, "%s", put_file(t, "same", "0123456789", 10));
    id = identity_of(path);
    b = hc_body_new();
    check(t, hc_body_add_mem(b, "head", 4) == 0 && hc_body_add_file_checked(b, path, 10, &id) == 0
                 && hc_body_length(b) == 14, "identity builds: %s", hc_body_error(b));
    n = read_all(b, got, sizeof got, 3);
    check(t, n == 14 && memcmp(got, "head0123456789", 14) == 0, "unchanged file reads: %ld %s", n,
          hc_body_error(b));
    check(t,
          hc_body_seek(b, 6) == 0 && read_all(b, got, sizeof got, 64) == 8
              && memcmp(got, "23456789", 8) == 0,
          "unchanged file reads after a seek back: %s", hc_body_error(b));
    hc_body_free(b);
}

static void test_identity_replaced(tstate *t)
{
    char got[64], want[320], path[128], other[128];
    hc_file_identity id, now;
    hc_body *b;

    /* Another file of the same size renamed over it after it was checked (an anonymizer's
     * output): caught when it is opened, also after a rewind once it had been read whole. */
    snprintf(path, sizeof path, "%s", put_file(t, "renamed", "0123456789", 10));
    id = identity_of(path);
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    check(t, read_all(b, got, sizeof got, 64) == 10, "renamed-over file read before: %s",
          hc_body_error(b));
    snprintf(other, sizeof other, "%s", put_file(t, "renamed.new", "ABCDEFGHIJ", 10));
    if (rename(other, path) != 0)
        perror(other);
    now = identity_of(path);
    check(t, now.ino != id.ino, "a new file has a new inode number");
    snprintf(want, sizeof want, "file replaced after it was checked: %s (inode %llu, now %llu)",
             path, (unsigned long long)id.ino, (unsigned long long)now.ino);
    check(t,
          hc_body_seek(b, 0) == 0 && hc_body_read(b, got, sizeof got) == -1
              && strcmp(hc_body_error(b), want) == 0,
          "renamed over, after a rewind: %s", hc_body_error(b));
    hc_body_free(b);
    /* The same with a body built anew (a retry), and the device number named when it differs. */
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "renamed over, new body: %s", hc_body_error(b));
    hc_body_free(b);
    id = now;
    id.dev++;
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    snprintf(want, sizeof want,
             "file replaced after it was checked: %s (device %llu inode %llu, now device %llu "
             "inode %llu)",
             path, (unsigned long long)id.dev, (unsigned long long)id.ino,
             (unsigned long long)now.dev, (unsigned long long)now.ino);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "other device: %s", hc_body_error(b));
    hc_body_free(b);
    /* Without an identity (hc_body_add_file) the replaced file is read as before. */
    b = hc_body_new();
    hc_body_add_file(b, path, 10);
    check(t, read_all(b, got, sizeof got, 64) == 10 && memcmp(got, "ABCDEFGHIJ", 10) == 0,
          "no identity, not checked: %s", hc_body_error(b));
    hc_body_free(b);
}

static void test_identity_rewritten(tstate *t)
{
    char got[64], want[320], path[128];
    hc_file_identity id;
    hc_body *b;

    /* Rewritten in place with the same size: the inode is the same, the mtime is not. */
    snprintf(path, sizeof path, "%s", put_file(t, "rewritten", "0123456789", 10));
    set_mtime(path, 1000000000);
    id = identity_of(path);
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    put_file(t, "rewritten", "ABCDEFGHIJ", 10);
    set_mtime(path, 1700000000);
    snprintf(want, sizeof want,
             "file modified after it was checked: %s (mtime 2001-09-09T01:46:40Z, now "
             "2023-11-14T22:13:20Z)",
             path);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "rewritten in place: %s", hc_body_error(b));
    hc_body_free(b);
    /* Only the fields asked for are compared. */
    id.have = HC_FILE_DEV | HC_FILE_INO;
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    check(t, read_all(b, got, sizeof got, 64) == 10, "mtime not asked for: %s", hc_body_error(b));
    hc_body_free(b);
}

static void test_identity_same_second(tstate *t)
{
    char got[64], want[320], path[128];
    struct stat st;
    hc_file_identity id;
    hc_body *b;

    /* Rewritten in place with the same size within the second it was checked: the whole seconds
     * are the same, the nanoseconds are not. */
    snprintf(path, sizeof path, "%s", put_file(t, "same-second", "0123456789", 10));
    set_mtime_ns(path, 1000000000, 100);
    id = identity_of(path);
    if (stat(path, &st) != 0 || st.st_mtim.tv_nsec != 100) {
        check(t, 0, "the file system keeps no nanoseconds of an mtime: not tested");
        return;
    }
    id.have |= HC_FILE_MTIME_NSEC;
    id.mtime_nsec = 100;
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    put_file(t, "same-second", "ABCDEFGHIJ", 10);
    set_mtime_ns(path, 1000000000, 200);
    snprintf(want, sizeof want,
             "file modified after it was checked: %s (mtime 2001-09-09T01:46:40.000000100Z, now "
             "2001-09-09T01:46:40.000000200Z)",
             path);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "rewritten within the second: %s", hc_body_error(b));
    hc_body_free(b);

    /* Modified within the same second while it was being read: caught at its last byte. */
    id.mtime_nsec = 200;
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    check(t, hc_body_read(b, got, 4) == 4, "first bytes of a file modified within the second");
    set_mtime_ns(path, 1000000000, 999999999);
    snprintf(want, sizeof want,
             "file modified while it was being sent: %s (mtime 2001-09-09T01:46:40.000000200Z, now "
             "2001-09-09T01:46:40.999999999Z)",
             path);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "modified within the second while read: %s", hc_body_error(b));
    hc_body_free(b);

    /* Unchanged to the nanosecond: read whole. */
    id.mtime_nsec = 999999999;
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    check(t, read_all(b, got, sizeof got, 3) == 10 && memcmp(got, "ABCDEFGHIJ", 10) == 0,
          "same nanoseconds: %s", hc_body_error(b));
    hc_body_free(b);

    /* A caller that gives whole seconds only (HC_FILE_MTIME alone, mtime_nsec left 0) compares
     * them alone, as before. */
    id.have &= ~(unsigned)HC_FILE_MTIME_NSEC;
    id.mtime_nsec = 0;
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    check(t, read_all(b, got, sizeof got, 64) == 10, "whole seconds only: %s", hc_body_error(b));
    hc_body_free(b);
    /* Another second is named without nanoseconds even when they are given. */
    id.have |= HC_FILE_MTIME_NSEC;
    id.mtime = 1000000001;
    id.mtime_nsec = 5;
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    snprintf(want, sizeof want,
             "file modified after it was checked: %s (mtime 2001-09-09T01:46:41Z, now "
             "2001-09-09T01:46:40Z)",
             path);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "another second: %s", hc_body_error(b));
    hc_body_free(b);
}

static void test_identity_modified(tstate *t)
{
    char got[64], want[320], path[128], other[128];
    hc_file_identity id;
    hc_body *b;

    /* Modified in place while it was being read: caught at its last byte, then at open after a
     * rewind. */
    snprintf(path, sizeof path, "%s", put_file(t, "modified", "0123456789", 10));
    set_mtime(path, 1000000000);
    id = identity_of(path);
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    check(t, hc_body_read(b, got, 4) == 4, "first bytes of a file modified while read");
    set_mtime(path, 1700000000);
    snprintf(want, sizeof want,
             "file modified while it was being sent: %s (mtime 2001-09-09T01:46:40Z, now "
             "2023-11-14T22:13:20Z)",
             path);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "modified while read: %s", hc_body_error(b));
    snprintf(want, sizeof want,
             "file modified after it was checked: %s (mtime 2001-09-09T01:46:40Z, now "
             "2023-11-14T22:13:20Z)",
             path);
    check(t,
          hc_body_seek(b, 0) == 0 && hc_body_read(b, got, sizeof got) == -1
              && strcmp(hc_body_error(b), want) == 0,
          "modified, after a rewind: %s", hc_body_error(b));
    hc_body_free(b);

    /* A size change is still named as such when the identity differs too. */
    snprintf(path, sizeof path, "%s", put_file(t, "regrown", "0123456789", 10));
    id = identity_of(path);
    b = hc_body_new();
    hc_body_add_file_checked(b, path, 10, &id);
    snprintf(other, sizeof other, "%s", put_file(t, "regrown.new", "0123456789AB", 12));
    if (rename(other, path) != 0)
        perror(other);
    snprintf(want, sizeof want, "file changed size after it was checked: %s (was 10 bytes, now 12)",
             path);
    check(t, hc_body_read(b, got, sizeof got) == -1 && strcmp(hc_body_error(b), want) == 0,
          "size named first: %s", hc_body_error(b));
    hc_body_free(b);
}

static void test_identity(tstate *t)
{
    test_identity_unchanged(t);
    test_identity_replaced(t);
    test_identity_rewritten(t);
    test_identity_same_second(t);
    test_identity_modified(t);
}

/* Replays every file under dir through the fuzz target. */
static void replay_body(tstate *t, const char *path, const unsigned char *p, size_t n)
{
    (void)path;
    hc_test_fuzz_body(p, n);
    t->passed++;
}

int main(int argc, char **argv)
{
    tstate t;
    int a;
    memset(&t, 0, sizeof t);
    strcpy(t.dir, "/tmp/hc_test_body_XXXXXX");
    if (mkdtemp(t.dir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    test_framing(&t);
    test_boundaries(&t);
    test_part_headers(&t);
    test_files(&t);
    test_identity(&t);
    for (a = 1; a < argc; a++)
        hc_test_replay(&t, argv[a], replay_body);
    {
        static const char *made[] = { "part", "gone",    "short",     "grows",    "shrinks",
                                      "same", "renamed", "rewritten", "modified", "regrown" };
        char path[128];
        size_t i;
        for (i = 0; i < sizeof made / sizeof made[0]; i++) {
            snprintf(path, sizeof path, "%s/%s", t.dir, made[i]);
            remove(path);
        }
        if (rmdir(t.dir) != 0)
            printf("note: could not remove %s\n", t.dir);
    }
    return hc_test_summary(&t);
}
