/* SPDX-License-Identifier: MIT */
/*
 * Tests of the on-disk sink (src/hc_sink.c) without a transfer, in a fresh directory under
 * $TMPDIR (or /tmp): a file sink renames its file into place only on success; a directory sink
 * writes one file per multipart part (fed a byte at a time) or one for a single body, hands them
 * over with their header blocks, and removes what it was not asked to keep; each cap stops it
 * with its reason and no file past the cap; malformed multipart bodies and unwritable
 * directories are errors with a message; with hc_sink_name_by_uid, a DICOM part is renamed
 * <UID>.dcm as it ends (replacing a symbolic link at that name, never writing through it) and
 * the parts it cannot vouch for (not DICOM, a second copy, UIDs past the kept prefix, an
 * invalid UID) are left as they were. Then a replay of the fuzz regressions and seeds through the
 * fuzz target's own checks (fuzz/fuzz_sink.c is compiled in). Prints one line per failure and
 * "N passed, N failed". Run from the repository root: test_sink spec/fixtures/fuzz/sink
 * fuzz/corpus/sink
 */
#define _GNU_SOURCE /* as fuzz/fuzz_sink.c has it */
#define LLVMFuzzerTestOneInput hc_test_fuzz_sink
#include "../../fuzz/fuzz_sink.c"
#undef LLVMFuzzerTestOneInput

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hc_dicom.h"
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

/* ---- parts named by their UID (hc_sink_name_by_uid) ------------------------------------ */

/* A Part-10 file, explicit VR little endian, in buf (at most size bytes): preamble, "DICM", the
 * Transfer Syntax, then SOP Class, an OB element of pad bytes (0: none), SOP Instance, Study
 * and Series UIDs. Returns its length. */
static size_t dicom_file(unsigned char *buf, size_t size, const char *sop, size_t pad)
{
    static const char *const uids[][2] = { { "\x08\x00\x16\x00", "1.2.840.10008.5.1.4.1.1.7" },
                                           { NULL, NULL },
                                           { "\x08\x00\x18\x00", NULL },
                                           { "\x20\x00\x0d\x00", "1.2.3.4" },
                                           { "\x20\x00\x0e\x00", "1.2.3.4.5" } };
    size_t n = 0, i;
    memset(buf, 0, 128);
    memcpy(buf + 128, "DICM", 4);
    n = 132;
    for (i = 0; i < 6; i++) {
        const char *tag = i == 0 ? "\x02\x00\x10\x00" : uids[i - 1][0];
        const char *v = i == 0 ? "1.2.840.10008.1.2.1" : i == 3 ? sop : uids[i - 1][1];
        size_t len;
        if (i == 2) { /* the OB element: tag, "OB", 2 reserved bytes, a 32-bit length */
            if (pad == 0)
                continue;
            memcpy(buf + n, "\x08\x00\x20\x00OB\0\0", 8);
            buf[n + 8] = (unsigned char)(pad & 0xff);
            buf[n + 9] = (unsigned char)((pad >> 8) & 0xff);
            buf[n + 10] = (unsigned char)((pad >> 16) & 0xff);
            buf[n + 11] = 0;
            memset(buf + n + 12, 0x55, pad);
            n += 12 + pad;
            continue;
        }
        len = strlen(v) + (strlen(v) & 1);
        if (n + 8 + len > size)
            return 0;
        memcpy(buf + n, tag, 4);
        memcpy(buf + n + 4, "UI", 2);
        buf[n + 6] = (unsigned char)len;
        buf[n + 7] = 0;
        memset(buf + n + 8, 0, len);
        memcpy(buf + n + 8, v, strlen(v));
        n += 8 + len;
    }
    return n;
}

/* Appends a part holding data[0, n) to the body b (at *len). */
static void add_part(char *b, size_t *len, const void *data, size_t n)
{
    static const char head[] = "--b0\r\nContent-Type: application/dicom\r\n\r\n";
    memcpy(b + *len, head, sizeof head - 1);
    *len += sizeof head - 1;
    memcpy(b + *len, data, n);
    *len += n;
    memcpy(b + *len, "\r\n", 2);
    *len += 2;
}

static void test_name_by_uid(tstate *t)
{
    static unsigned char file[100 * 1024];
    static char body[600 * 1024];
    char dir[600], path[800], outside[800], buf[64];
    size_t len = 0, n, i;
    const hc_part *p;
    struct stat st;
    hc_sink *k;
    FILE *f;
    fresh_dir(t, "named", dir, sizeof dir);
    /* 1: named; 2: not DICOM; 3: a second copy of 1; 4: its UIDs past the 64 KiB kept;
     * 5: an invalid UID; 6: named through the symbolic link planted at its name */
    n = dicom_file(file, sizeof file, "1.2.3.4.5.1", 0);
    add_part(body, &len, file, n);
    add_part(body, &len, "not DICOM", 9);
    add_part(body, &len, file, n);
    n = dicom_file(file, sizeof file, "1.2.3.4.5.4", 70000);
    {
        hc_dicom_info info;
        check(t, hc_dicom_probe_mem(file, n, &info, NULL, 0) == HC_DICOM_OK
                     && strcmp(info.sop_instance_uid, "1.2.3.4.5.4") == 0,
              "part 4 is a valid file whose UIDs lie past the first 64 KiB");
    }
    add_part(body, &len, file, n);
    n = dicom_file(file, sizeof file, "1.2..3", 0);
    add_part(body, &len, file, n);
    n = dicom_file(file, sizeof file, "1.2.3.4.5.6", 0);
    add_part(body, &len, file, n);
    memcpy(body + len, "--b0--\r\n", 8);
    len += 8;
    snprintf(outside, sizeof outside, "%s/outside", t->dir);
    f = fopen(outside, "wb");
    if (f != NULL) {
        fputs("keep me", f);
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/1.2.3.4.5.6.dcm", dir);
    check(t, symlink(outside, path) == 0, "symlink planted");

    k = hc_sink_new(HC_SINK_DIR, dir, 0, 0, 0);
    hc_sink_name_by_uid(k);
    check(t, hc_sink_decide(k, 200, MULTIPART) == 0, "decided");
    for (i = 0; i < len; i += 1000) /* in pieces that cut parts and delimiters anywhere */
        hc_sink_write(k, body + i, len - i < 1000 ? len - i : 1000);
    check(t, hc_sink_end(k, 1) == 0 && hc_sink_nparts(k) == 6, "six parts");
    p = hc_sink_part(k, 0);
    snprintf(path, sizeof path, "%s/1.2.3.4.5.1.dcm", dir);
    check(t, p != NULL && p->sop_instance_uid != NULL && strcmp(p->path, path) == 0
                 && strcmp(p->sop_instance_uid, "1.2.3.4.5.1") == 0
                 && strcmp(p->study_uid, "1.2.3.4") == 0 && strcmp(p->series_uid, "1.2.3.4.5") == 0,
          "part 1 named %s with its UIDs", p != NULL ? p->path : "(none)");
    check(t, p != NULL && p->headers == NULL, "and no headers kept");
    check(t, stat(path, &st) == 0 && st.st_size == p->size, "its file is whole under its name");
    for (i = 1; i <= 4; i += 3) {
        p = hc_sink_part(k, i);
        check(t, p != NULL && p->sop_instance_uid == NULL && strstr(p->path, "/.hc-part-") != NULL
                     && p->duplicate_of == 0,
              "part %zu left to the caller: %s", i + 1, p != NULL ? p->path : "(none)");
    }
    p = hc_sink_part(k, 2);
    check(t, p != NULL && p->sop_instance_uid == NULL && strstr(p->path, "/.hc-part-") != NULL
                 && p->duplicate_of == 1,
          "part 3, a second copy of part 1's UID, left to the caller as one: %u",
          p != NULL ? p->duplicate_of : 0);
    p = hc_sink_part(k, 3);
    snprintf(path, sizeof path, "%s/1.2.3.4.5.4.dcm", dir);
    check(t, p != NULL && p->sop_instance_uid != NULL && strcmp(p->path, path) == 0,
          "part 4, its UIDs past the prefix, named from its whole file: %s", p != NULL ? p->path : "(none)");
    check(t, stat(path, &st) == 0 && st.st_size == p->size, "its file is whole under its name");
    /* A name something holds already (here a link; else a file from before this transfer) is
     * not taken: a stopped transfer removes the files it named, and would take that one along.
     * The caller names such a part once the answer has ended. */
    p = hc_sink_part(k, 5);
    snprintf(path, sizeof path, "%s/1.2.3.4.5.6.dcm", dir);
    check(t, p != NULL && p->sop_instance_uid == NULL && strstr(p->path, "/.hc-part-") != NULL,
          "part 6, whose name a link holds, left to the caller: %s", p != NULL ? p->path : "(none)");
    check(t, lstat(path, &st) == 0 && S_ISLNK(st.st_mode), "the link left as it was");
    check(t, strcmp(content(outside, buf, sizeof buf), "keep me") == 0, "nothing written through it");
    check(t, entries(dir) == 7, "six files and the link: %d", entries(dir));
    hc_sink_free(k);
    check(t, entries(dir) == 1 && lstat(path, &st) == 0 && S_ISLNK(st.st_mode),
          "parts not taken are removed with the sink, named or not; what was there stays");

    /* a directory given with a trailing "/": one "/" before the name */
    len = 0;
    n = dicom_file(file, sizeof file, "1.2.3.4.5.7", 0);
    add_part(body, &len, file, n);
    memcpy(body + len, "--b0--\r\n", 8);
    len += 8;
    snprintf(path, sizeof path, "%s/", dir);
    k = hc_sink_new(HC_SINK_DIR, path, 0, 0, 0);
    hc_sink_name_by_uid(k);
    hc_sink_decide(k, 200, MULTIPART);
    hc_sink_write(k, body, len);
    check(t, hc_sink_end(k, 1) == 0 && hc_sink_nparts(k) == 1, "one part");
    p = hc_sink_part(k, 0);
    snprintf(path, sizeof path, "%s/1.2.3.4.5.7.dcm", dir);
    check(t, p != NULL && strcmp(p->path, path) == 0, "named %s", p != NULL ? p->path : "(none)");
    hc_sink_free(k);
}

/* A named part no larger than HC_SINK_PROBE_BYTES is held in memory and makes its file only as
 * it ends (one write); a larger one makes it once it outgrows them; one cut off while in memory
 * leaves no file at all. */
static void test_deferred(tstate *t)
{
    static unsigned char file[200 * 1024], back[200 * 1024];
    static char body[400 * 1024];
    char dir[600], path[800];
    size_t len = 0, n_small, n_big, i, cut;
    const hc_part *p;
    struct stat st;
    hc_sink *k;
    FILE *f;
    fresh_dir(t, "deferred", dir, sizeof dir);
    n_small = dicom_file(file, sizeof file, "1.2.3.4.5.21", 3000);
    add_part(body, &len, file, n_small);
    k = hc_sink_new(HC_SINK_DIR, dir, 0, 0, 0);
    hc_sink_name_by_uid(k);
    hc_sink_decide(k, 200, MULTIPART);
    for (i = 0; i + 500 < len; i += 500)
        hc_sink_write(k, body + i, 500);
    check(t, entries(dir) == 0, "a small part in flight has no file yet: %d", entries(dir));
    hc_sink_write(k, body + i, len - i);
    hc_sink_write(k, "--b0--\r\n", 8);
    check(t, hc_sink_end(k, 1) == 0 && hc_sink_nparts(k) == 1, "one part");
    snprintf(path, sizeof path, "%s/1.2.3.4.5.21.dcm", dir);
    p = hc_sink_part(k, 0);
    check(t, p != NULL && strcmp(p->path, path) == 0 && p->size == (int64_t)n_small, "named whole");
    check(t, stat(path, &st) == 0 && st.st_size == (off_t)n_small && entries(dir) == 1, "its file alone");
    hc_sink_free(k);

    /* a part past the 64 KiB: its file appears once it outgrows them, whole in the end */
    len = 0;
    n_big = dicom_file(file, sizeof file, "1.2.3.4.5.22", 0);
    /* then Pixel Data, 150,000 bytes: the UIDs in the first bytes, the part past 64 KiB */
    memcpy(file + n_big, "\xe0\x7f\x10\x00OB\0\0\xf0\x49\x02\x00", 12);
    for (i = 0; i < 150000; i++)
        file[n_big + 12 + i] = (unsigned char)(i * 7);
    n_big += 12 + 150000;
    add_part(body, &len, file, n_big);
    memcpy(body + len, "--b0--\r\n", 8);
    len += 8;
    k = hc_sink_new(HC_SINK_DIR, dir, 0, 0, 0);
    hc_sink_name_by_uid(k);
    hc_sink_decide(k, 200, MULTIPART);
    hc_sink_write(k, body, 60000);
    check(t, entries(dir) == 0, "under 64 KiB: no file yet");
    hc_sink_write(k, body + 60000, 40000);
    check(t, entries(dir) == 1, "past 64 KiB: its temporary file");
    hc_sink_write(k, body + 100000, len - 100000);
    check(t, hc_sink_end(k, 1) == 0 && hc_sink_nparts(k) == 1, "one big part");
    snprintf(path, sizeof path, "%s/1.2.3.4.5.22.dcm", dir);
    f = fopen(path, "rb");
    check(t, f != NULL && fread(back, 1, sizeof back, f) == n_big && memcmp(back, file, n_big) == 0,
          "the big part's file holds its bytes");
    if (f != NULL)
        fclose(f);
    hc_sink_free(k);
    check(t, entries(dir) == 0, "removed with the sink");

    /* cut off while in memory, and a part over the cap on one part: no file either way */
    for (cut = 0; cut < 2; cut++) {
        len = 0;
        add_part(body, &len, file, n_small);
        k = hc_sink_new(HC_SINK_DIR, dir, 0, 0, cut ? 1000 : 0);
        hc_sink_name_by_uid(k);
        hc_sink_decide(k, 200, MULTIPART);
        hc_sink_write(k, body, cut ? len : 2000);
        check(t, hc_sink_end(k, 1) != 0, "%s: an error", cut ? "over the cap" : "cut off");
        check(t, hc_sink_nparts(k) == 0 && entries(dir) == 0, "%s: no part, no file (%d)",
              cut ? "over the cap" : "cut off", entries(dir));
        hc_sink_free(k);
    }
}

/* Parts handed over (hc_sink_release_parts) are the caller's: their records gone, their files
 * kept when the answer then fails, their UIDs still known as taken. */
static void test_release(tstate *t)
{
    static unsigned char file[8 * 1024];
    static char body[64 * 1024];
    char dir[600], path[800];
    size_t len = 0, n, cut;
    const hc_part *p;
    hc_sink *k;
    fresh_dir(t, "released", dir, sizeof dir);
    n = dicom_file(file, sizeof file, "1.2.3.4.5.31", 0);
    add_part(body, &len, file, n);
    n = dicom_file(file, sizeof file, "1.2.3.4.5.32", 0);
    add_part(body, &len, file, n);
    k = hc_sink_new(HC_SINK_DIR, dir, 0, 3, 0);
    hc_sink_name_by_uid(k);
    hc_sink_decide(k, 200, MULTIPART);
    hc_sink_write(k, body, len);
    hc_sink_write(k, "--b0\r\n", 6); /* the delimiter that ends the second part */
    check(t, hc_sink_nparts(k) == 2, "two parts: %zu", hc_sink_nparts(k));
    hc_sink_release_parts(k, 1);
    check(t, hc_sink_released(k) == 1 && hc_sink_part(k, 0) == NULL && hc_sink_part(k, 1) != NULL,
          "the first released, the second still listed");
    hc_sink_release_parts(k, 5); /* past the end: all there are */
    check(t, hc_sink_released(k) == 2 && hc_sink_part(k, 1) == NULL && hc_sink_nparts(k) == 2,
          "both released, still counted");
    /* a second copy of the first (released) part, then a third UID: one part past max_parts */
    len = 0;
    n = dicom_file(file, sizeof file, "1.2.3.4.5.31", 0);
    memcpy(body, "Content-Type: application/dicom\r\n\r\n", 35);
    len = 35;
    memcpy(body + len, file, n);
    len += n;
    memcpy(body + len, "\r\n--b0\r\n", 8);
    len += 8;
    hc_sink_write(k, body, len);
    p = hc_sink_part(k, 2);
    check(t, hc_sink_nparts(k) == 3 && p != NULL && p->sop_instance_uid == NULL && p->duplicate_of == 1,
          "a released part's UID is still known: part 3 a second copy of part %u",
          p != NULL ? p->duplicate_of : 0);
    cut = (size_t)hc_sink_write(k, "Content-Type: application/dicom\r\n\r\nDICM", 39);
    check(t, cut != 0 && hc_sink_end(k, 0) == 0, "past max_parts: the answer fails");
    hc_sink_free(k);
    snprintf(path, sizeof path, "%s/1.2.3.4.5.31.dcm", dir);
    check(t, access(path, F_OK) == 0, "the released parts' files are kept: %s", path);
    snprintf(path, sizeof path, "%s/1.2.3.4.5.32.dcm", dir);
    check(t, access(path, F_OK) == 0 && entries(dir) == 2, "and only they: %d files", entries(dir));
}

/* The fuzz target's own checks abort on a failure. */
static void replay_sink(tstate *t, const char *path, const unsigned char *p, size_t n)
{
    (void)path;
    hc_test_fuzz_sink(p, n);
    t->passed++;
}

int main(int argc, char **argv)
{
    tstate t;
    const char *base = getenv("TMPDIR");
    int a;
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
    test_name_by_uid(&t);
    test_release(&t);
    test_deferred(&t);
    for (a = 1; a < argc; a++)
        hc_test_replay(&t, argv[a], replay_sink);
    {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", t.dir);
        if (system(cmd) != 0)
            printf("note: could not remove %s\n", t.dir);
    }
    return hc_test_summary(&t);
}
