/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the on-disk sink (src/hc_sink.c), driven as the transport drives it: a
 * status and a Content-Type decide where the body goes, the body comes in seeded pieces, a
 * second answer may replace the first halfway (hc_sink_reset, as after a 1xx or a redirect),
 * parts may be handed over as they complete (hc_sink_release_parts, as retrieve does) or all
 * at the end (hc_sink_take_parts). An input is:
 *   byte 0     bit 0 a file sink (else a directory), bit 1 parts named by UID, bit 2 status 404
 *              (else 200), bits 3-4 a cap (none, on bytes, on parts, on one part's bytes),
 *              bit 5 a first answer cut halfway and reset, bit 6 the transfer fails at the end,
 *              bit 7 the caller takes the parts
 *   byte 1     bits 0-1 the piece sizes (at most 3 bytes, 300, else 70000), drawn from the whole
 *              byte as a seed; bits 2-6 the cap's value v (1 + v parts, or 1 + 4096 v bytes);
 *              bit 7 parts are released as they complete
 *   then       the Content-Type, up to a LF (empty: none)
 *   the rest   the body, its first "%FILL" standing for kilobytes of zeros or of a unit repeated
 *              (fuzz/hc_fuzz_fill.h): parts and DICOM headers past the 64 KiB the sink keeps
 *              and probes
 * Checked against hc_multipart on the whole body and hc_dicom_probe_mem on each whole part:
 *  - a directory sink's parts are the parser's, in order, with the same header blocks, sizes
 *    and contents (a body that is not multipart: one part holding it); it fails exactly when
 *    the parser does, or when a cap is passed;
 *  - a part is named by UID exactly when the probe of its whole content succeeds with a valid
 *    UID no earlier named part of the answer had: then as <dir>/<UID>.dcm, with the probe's
 *    study and series; a part whose UID an earlier one had says which (duplicate_of);
 *  - a file sink's file holds the body; a cap that stops the sink is the one set, and what a
 *    successful sink hands over is within every cap;
 *  - after a reset no file is left; once the sink is freed none is but those released or taken,
 *    and no fd is left open.
 * Files go to a directory made under $TMPDIR (or /tmp) at the first input, removed at exit.
 * Seeds: fuzz/corpus/sink/.
 * Build: see scripts/fuzz, or
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc fuzz/fuzz_sink.c src/hc_sink.c \
 *     src/hc_multipart.c src/hc_dicom.c src/hc_file.c src/hc_buf.c -lcrypto -lz -o /tmp/fuzz_sink
 */
#define _GNU_SOURCE /* mkdtemp */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hc_dicom.h"
#include "hc_fuzz_fill.h"
#include "hc_fuzz_leftovers.h"
#include "hc_multipart.h"
#include "hc_sink.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define HC_FUZZ_SINK_MAX_PARTS 512

/* The parser's reading of the whole body: header blocks and contents back to back in bytes, and
 * what the sink must make of each part (the UID it is named by, "" for none; the earlier part
 * it repeats, 0 for none). */
typedef struct hc_fuzz_sink_ref {
    char *bytes;
    size_t len;
    size_t nparts;
    size_t hstart[HC_FUZZ_SINK_MAX_PARTS], hlen[HC_FUZZ_SINK_MAX_PARTS];
    size_t cstart[HC_FUZZ_SINK_MAX_PARTS], clen[HC_FUZZ_SINK_MAX_PARTS];
    char uid[HC_FUZZ_SINK_MAX_PARTS][HC_DICOM_UID_SIZE];
    hc_dicom_info info[HC_FUZZ_SINK_MAX_PARTS];
    unsigned duplicate_of[HC_FUZZ_SINK_MAX_PARTS];
    int error;              /* hc_multipart's, or -1: more parts than kept here */
} hc_fuzz_sink_ref;

/* The input, taken apart. */
typedef struct hc_fuzz_sink_in {
    unsigned flags, seed;
    char ct[256];
    unsigned char *body;    /* owned (hc_fuzz_fill) */
    size_t len;
    int64_t max_bytes, max_parts, max_part_bytes;
    int mode;               /* where the body must go (HC_SINK_TO_*) */
} hc_fuzz_sink_in;

static char hc_fuzz_sink_dir[512];
static hc_fuzz_sink_ref hc_fuzz_sink_r; /* large: not on the stack */

static int hc_fuzz_sink_begin(void *ud, const char *h, size_t n)
{
    hc_fuzz_sink_ref *r = ud;
    if (r->nparts == HC_FUZZ_SINK_MAX_PARTS)
        return 1;
    r->hstart[r->nparts] = r->len;
    r->hlen[r->nparts] = n;
    memcpy(r->bytes + r->len, h, n);
    r->len += n;
    r->cstart[r->nparts] = r->len;
    r->clen[r->nparts] = 0;
    return 0;
}

static int hc_fuzz_sink_data(void *ud, const char *p, size_t n)
{
    hc_fuzz_sink_ref *r = ud;
    memcpy(r->bytes + r->len, p, n);
    r->len += n;
    r->clen[r->nparts] += n;
    return 0;
}

static int hc_fuzz_sink_end(void *ud)
{
    hc_fuzz_sink_ref *r = ud;
    r->nparts++;
    return 0;
}

static const hc_multipart_callbacks hc_fuzz_sink_callbacks = {
    hc_fuzz_sink_begin, hc_fuzz_sink_data, hc_fuzz_sink_end
};

/* hc_sink.c's rule for a name (names.valid_uid): 1 to 64 digits and dots, no empty component. */
static int hc_fuzz_sink_valid_uid(const char *u)
{
    size_t n = strlen(u), i;
    if (n == 0 || n > 64 || u[0] == '.' || u[n - 1] == '.' || strstr(u, "..") != NULL)
        return 0;
    for (i = 0; i < n; i++)
        if ((u[i] < '0' || u[i] > '9') && u[i] != '.')
            return 0;
    return 1;
}

/* Which parts the sink must name, and which repeat a named one. */
static void hc_fuzz_sink_names(hc_fuzz_sink_ref *r)
{
    size_t i, j;
    for (i = 0; i < r->nparts; i++) {
        hc_dicom_info *info = &r->info[i];
        const char *u;
        r->uid[i][0] = '\0';
        r->duplicate_of[i] = 0;
        if (hc_dicom_probe_mem((const unsigned char *)r->bytes + r->cstart[i], r->clen[i], info,
                               NULL, 0) != HC_DICOM_OK)
            continue;
        u = info->sop_instance_uid[0] ? info->sop_instance_uid : info->media_sop_instance_uid;
        if (!hc_fuzz_sink_valid_uid(u))
            continue;
        for (j = 0; j < i && strcmp(r->uid[j], u) != 0; j++)
            ;
        if (j < i)
            r->duplicate_of[i] = (unsigned)j + 1;
        else
            strcpy(r->uid[i], u);
    }
}

/* The reference reading of the body when the Content-Type is multipart. Returns whether it
 * could be made (a valid boundary, not too many parts for this file). */
static int hc_fuzz_sink_reference(const hc_fuzz_sink_in *in, hc_fuzz_sink_ref *r)
{
    char boundary[HC_MP_MAX_BOUNDARY + 1];
    size_t blen;
    hc_multipart m;
    free(r->bytes);
    memset(r, 0, sizeof *r);
    r->bytes = malloc(in->len + 1); /* parts never add bytes; freed at the next input */
    if (r->bytes == NULL)
        abort();
    if (hc_multipart_content_type(in->ct, strlen(in->ct), boundary, &blen) != 1
        || hc_multipart_init(&m, boundary, blen, &hc_fuzz_sink_callbacks, r) != 0)
        return 0;
    r->error = hc_multipart_feed(&m, (const char *)in->body, in->len);
    if (r->error == HC_MP_OK)
        r->error = hc_multipart_finish(&m);
    hc_multipart_free(&m);
    if (r->nparts == HC_FUZZ_SINK_MAX_PARTS)
        return 0;
    hc_fuzz_sink_names(r);
    return 1;
}

static void hc_fuzz_sink_cleanup(void)
{
    hc_fuzz_dir_entries(hc_fuzz_sink_dir, 1);
    rmdir(hc_fuzz_sink_dir);
    free(hc_fuzz_sink_r.bytes);
}

/* Whether the file at path holds exactly p[0, n). */
static int hc_fuzz_sink_holds(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), same;
    char *buf = malloc(n + 1); /* + 1: a longer file reads more than n */
    ssize_t got;
    if (buf == NULL)
        abort();
    got = fd >= 0 ? read(fd, buf, n + 1) : -1;
    if (fd >= 0)
        close(fd);
    same = got == (ssize_t)n && memcmp(buf, p, n) == 0;
    free(buf);
    return same;
}

static void hc_fuzz_sink_fail(size_t i, const char *what, const char *path)
{
    fprintf(stderr, "part %lu: %s (%s)\n", (unsigned long)i, what, path);
    abort();
}

/* Part i of a multipart answer as the sink hands it over, against the reference. */
static void hc_fuzz_sink_check_part(const hc_fuzz_sink_in *in, const hc_fuzz_sink_ref *r,
                                    size_t i, const hc_part *p)
{
    const hc_dicom_info *info = &r->info[i];
    char want[1024];
    if (p == NULL || i >= r->nparts)
        hc_fuzz_sink_fail(i, "missing, or not a part of the parser's", p ? p->path : "");
    if (p->size != (int64_t)r->clen[i]
        || !hc_fuzz_sink_holds(p->path, r->bytes + r->cstart[i], r->clen[i]))
        hc_fuzz_sink_fail(i, "size or content differs from the parser's", p->path);
    if (!(in->flags & 2) || r->uid[i][0] == '\0') {
        if (p->sop_instance_uid != NULL || p->headers_len != r->hlen[i]
            || memcmp(p->headers, r->bytes + r->hstart[i], r->hlen[i]) != 0)
            hc_fuzz_sink_fail(i, "named, or not the parser's header block", p->path);
        if (p->duplicate_of != ((in->flags & 2) ? r->duplicate_of[i] : 0))
            hc_fuzz_sink_fail(i, "duplicate_of is not the earlier named part", p->path);
        return;
    }
    snprintf(want, sizeof want, "%s/%s.dcm", hc_fuzz_sink_dir, r->uid[i]);
    if (p->sop_instance_uid == NULL || strcmp(p->sop_instance_uid, r->uid[i]) != 0
        || strcmp(p->study_uid, info->study_uid) != 0
        || strcmp(p->series_uid, info->series_uid) != 0 || strcmp(p->path, want) != 0
        || p->headers != NULL || p->duplicate_of != 0)
        hc_fuzz_sink_fail(i, "not named by the UIDs of its whole content", p->path);
}

/* Hands the complete parts over as retrieve does: each checked, its file then the caller's
 * (removed here). */
static void hc_fuzz_sink_release(hc_sink *k, const hc_fuzz_sink_in *in,
                                 const hc_fuzz_sink_ref *r)
{
    size_t n = hc_sink_nparts(k), i;
    for (i = hc_sink_released(k); i < n; i++) {
        const hc_part *p = hc_sink_part(k, i);
        if (r != NULL)
            hc_fuzz_sink_check_part(in, r, i, p);
        if (p == NULL || unlink(p->path) != 0)
            hc_fuzz_sink_fail(i, "no file to release", p ? p->path : "");
    }
    hc_sink_release_parts(k, n);
    if (hc_sink_released(k) != n || (n > 0 && hc_sink_part(k, n - 1) != NULL))
        hc_fuzz_sink_fail(n, "still held after its release", "");
}

/* One answer: decided, then body[0, stop) in seeded pieces; release: parts handed over as they
 * complete (r: checked against it). Returns 0, or -1 when the sink failed. */
static int hc_fuzz_sink_answer(hc_sink *k, const hc_fuzz_sink_in *in, size_t stop, int release,
                               const hc_fuzz_sink_ref *r)
{
    unsigned s = in->seed;
    size_t off = 0, max = (in->seed & 3) == 0 ? 3 : (in->seed & 3) == 1 ? 300 : 70000;
    if (hc_sink_decide(k, (in->flags & 4) ? 404 : 200, in->ct[0] ? in->ct : NULL) != 0)
        return -1;
    if (hc_sink_mode(k) != in->mode) {
        fprintf(stderr, "mode %d, not %d\n", hc_sink_mode(k), in->mode);
        abort();
    }
    while (off < stop && in->mode != HC_SINK_TO_MEMORY) {
        size_t n;
        s = s * 1103515245u + 12345u;
        n = 1 + (s >> 16) % max;
        if (n > stop - off)
            n = stop - off;
        if (hc_sink_write(k, (const char *)in->body + off, n) != 0)
            return -1;
        off += n;
        if (release && in->mode == HC_SINK_TO_PARTS)
            hc_fuzz_sink_release(k, in, r);
    }
    return 0;
}

/* The sink's error is one this answer can have: a cap only the one set, a multipart error only
 * when the parser has one too (or the answer was cut), never an I/O error in our directory; and
 * none at all when nothing could go wrong. */
static void hc_fuzz_sink_check_error(hc_sink *k, const hc_fuzz_sink_in *in,
                                     const hc_fuzz_sink_ref *r, int have_ref, int cut)
{
    static const char *const caps[] = { NULL, "too_large", "too_many_parts", "part_too_large" };
    const char *message, *code;
    int e = hc_sink_error(k, &message, &code);
    int cap = (int)(in->flags >> 3) & 3;
    if ((e == HC_SINKERR_CAP && (cap == 0 || strcmp(code, caps[cap]) != 0))
        || e == HC_SINKERR_IO
        || (e == HC_SINKERR_MULTIPART && in->mode != HC_SINK_TO_PARTS)
        || (e == HC_SINKERR_MULTIPART && have_ref && !cut && r->error == HC_MP_OK)
        || (e == HC_SINKERR_NONE && have_ref && !cut && r->error != HC_MP_OK)
        || (e == HC_SINKERR_NONE && have_ref && !cut && hc_sink_nparts(k) != r->nparts)
        || (e == HC_SINKERR_NONE && !cut && in->mode != HC_SINK_TO_MEMORY
            && hc_sink_bytes(k) != (int64_t)in->len)
        || (e != HC_SINKERR_NONE && cap == 0 && in->mode != HC_SINK_TO_PARTS)) {
        fprintf(stderr, "sink error %d (%s: %s), cap %d, parser %d, cut %d\n", e,
                code ? code : "-", message, cap, have_ref ? r->error : -2, cut);
        abort();
    }
}

/* What the sink made of a whole answer (ok: it ended well), against the reference. */
static void hc_fuzz_sink_check_outcome(hc_sink *k, const hc_fuzz_sink_in *in,
                                       const hc_fuzz_sink_ref *r, int have_ref, int ok,
                                       const char *target)
{
    size_t i, n = hc_sink_nparts(k);
    if (ok && in->mode != HC_SINK_TO_MEMORY
        && ((in->max_bytes > 0 && (int64_t)in->len > in->max_bytes)
               || (in->max_parts > 0 && (int64_t)n > in->max_parts)))
        hc_fuzz_sink_fail(n, "a success past a cap", "");
    if (in->mode == HC_SINK_TO_PARTS) {
        for (i = hc_sink_released(k); have_ref && i < n; i++)
            hc_fuzz_sink_check_part(in, r, i, hc_sink_part(k, i));
        for (i = hc_sink_released(k); i < n; i++)
            if (in->max_part_bytes > 0 && hc_sink_part(k, i)->size > in->max_part_bytes)
                hc_fuzz_sink_fail(i, "past max_part_bytes", hc_sink_part(k, i)->path);
    } else if (in->mode == HC_SINK_TO_PART && ok) {
        const hc_part *p = hc_sink_part(k, 0);
        char h[300];
        snprintf(h, sizeof h, "content-type: %s\r\n", in->ct);
        if (n != (in->len > 0) || (n > 0 && (p->size != (int64_t)in->len || p->sop_instance_uid
                                             || !hc_fuzz_sink_holds(p->path, in->body, in->len)
                                             || strcmp(p->headers ? p->headers : "",
                                                       in->ct[0] && !strchr(in->ct, '\r') ? h : "")
                                                    != 0)))
            hc_fuzz_sink_fail(0, "not the whole body, with its Content-Type", p ? p->path : "");
    } else if (in->mode == HC_SINK_TO_FILE && ok) {
        if (!hc_fuzz_sink_holds(target, in->body, in->len)
            || (in->max_part_bytes > 0 && (int64_t)in->len > in->max_part_bytes))
            hc_fuzz_sink_fail(0, "the file does not hold the body", target);
        unlink(target); /* the caller's now */
    }
}

/* Takes the input apart; returns 0 when it is too short to be one. */
static int hc_fuzz_sink_parse(const unsigned char *data, size_t size, hc_fuzz_sink_in *in)
{
    const unsigned char *nl;
    char boundary[HC_MP_MAX_BOUNDARY + 1];
    size_t ctlen, blen;
    unsigned v;
    if (size < 2 || (nl = memchr(data + 2, '\n', size - 2)) == NULL)
        return 0;
    ctlen = (size_t)(nl - data - 2);
    if (ctlen >= sizeof in->ct)
        return 0;
    in->flags = data[0];
    in->seed = data[1];
    memcpy(in->ct, data + 2, ctlen);
    in->ct[ctlen] = '\0';
    in->body = hc_fuzz_fill(nl + 1, size - ctlen - 3, &in->len);
    v = (in->seed >> 2) & 31;
    in->max_bytes = ((in->flags >> 3) & 3) == 1 ? 1 + (int64_t)v * 4096 : 0;
    in->max_parts = ((in->flags >> 3) & 3) == 2 ? 1 + (int64_t)v : 0;
    in->max_part_bytes = ((in->flags >> 3) & 3) == 3 ? 1 + (int64_t)v * 4096 : 0;
    /* Where hc_sink.h says the body goes. */
    if (in->flags & 4)
        in->mode = HC_SINK_TO_MEMORY;
    else if (in->flags & 1)
        in->mode = HC_SINK_TO_FILE;
    else if (in->ct[0] && hc_multipart_content_type(in->ct, strlen(in->ct), boundary, &blen) != 0)
        in->mode = HC_SINK_TO_PARTS;
    else
        in->mode = HC_SINK_TO_PART;
    return 1;
}

static void hc_fuzz_sink_init(void)
{
    const char *tmp = getenv("TMPDIR");
    if (hc_fuzz_sink_dir[0] != '\0')
        return;
    snprintf(hc_fuzz_sink_dir, sizeof hc_fuzz_sink_dir, "%s/hc-fuzz-sink-XXXXXX",
             tmp != NULL && *tmp ? tmp : "/tmp");
    if (mkdtemp(hc_fuzz_sink_dir) == NULL) {
        perror("fuzz_sink: mkdtemp");
        exit(2);
    }
    atexit(hc_fuzz_sink_cleanup);
}

/* data is owned by libFuzzer; the sink and its files end here (the reference's buffer is kept
 * for the next input). */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    hc_fuzz_sink_ref *r = &hc_fuzz_sink_r;
    hc_fuzz_sink_in in;
    hc_sink *k;
    char target[600];
    int fds, have_ref, failed, cut, left;
    if (!hc_fuzz_sink_parse(data, size, &in))
        return 0;
    hc_fuzz_sink_init();
    fds = hc_fuzz_open_fds();
    have_ref = in.mode == HC_SINK_TO_PARTS && hc_fuzz_sink_reference(&in, r);
    snprintf(target, sizeof target, "%s/out", hc_fuzz_sink_dir);
    k = hc_sink_new((in.flags & 1) ? HC_SINK_FILE : HC_SINK_DIR,
                    (in.flags & 1) ? target : hc_fuzz_sink_dir, in.max_bytes, in.max_parts,
                    in.max_part_bytes);
    if (k == NULL)
        abort();
    if (in.flags & 2)
        hc_sink_name_by_uid(k);
    if (in.flags & 32) {
        /* An answer cut halfway, then another: nothing of the first may stay. */
        hc_fuzz_sink_answer(k, &in, in.len / 2, 0, NULL);
        hc_sink_reset(k);
        if (hc_fuzz_dir_entries(hc_fuzz_sink_dir, 0) != 0 || hc_sink_nparts(k) != 0)
            hc_fuzz_sink_fail(0, "left after a reset", hc_fuzz_sink_dir);
    }
    failed = hc_fuzz_sink_answer(k, &in, in.len, (in.seed & 128) != 0, have_ref ? r : NULL);
    cut = failed || (in.flags & 64);
    if (hc_sink_end(k, !cut) != 0)
        failed = 1;
    hc_fuzz_sink_check_error(k, &in, r, have_ref, cut);
    hc_fuzz_sink_check_outcome(k, &in, r, have_ref, !failed && !cut, target);
    left = (in.flags & 128) ? (int)(hc_sink_nparts(k) - hc_sink_released(k)) : 0;
    if (in.flags & 128)
        hc_sink_take_parts(k);
    hc_sink_free(k);
    if (hc_fuzz_dir_entries(hc_fuzz_sink_dir, 0) != left)
        hc_fuzz_sink_fail((size_t)left, "files left behind besides those taken", hc_fuzz_sink_dir);
    hc_fuzz_dir_entries(hc_fuzz_sink_dir, 1);
    free(in.body);
    if (hc_fuzz_open_fds() != fds)
        hc_fuzz_sink_fail(0, "an fd left open", "");
    return 0;
}
