/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the two forms of the DICOM header probe (src/hc_dicom.c), which must
 * agree: the file form (the store's pre-flight of every instance it sends) reads through a
 * 4 KiB window and seeks over values; the memory form (the sink's naming of each part it
 * receives) reads a buffer. When they disagree, `healthcare store` refuses an instance that
 * `healthcare retrieve` names, or the other way round (it happened: the file form counted its
 * window fills against the read limit). An input is a file's bytes, its first "%FILL" standing
 * for kilobytes of zeros or of a unit repeated (fuzz/hc_fuzz_fill.h: long values, headers past
 * 64 KiB, headers of thousands of elements up to the 1 MiB read limit and past it).
 * Checked:
 *  - the file (a memfd, by its /proc/self/fd path) and the buffer give the same code and
 *    reason, and on success the same UIDs, flags, size and data set offset (hc_dicom.h:
 *    "same results, bytes_read aside");
 *  - a prefix as the sink probes it while a part streams (4, 16 and 64 KiB) or cut anywhere
 *    else, when it succeeds without the deflated fallback (which the sink never takes from a
 *    prefix), gives the UIDs of the whole: the sink names a part by what its prefix says.
 * Seeds: fuzz/corpus/dicom_diff/ (long values, headers past 4/16/64 KiB, a deflated data set
 * longer than the prefix) and fuzz/corpus/dicom/ (scripts/fuzz copies both).
 * Build: see scripts/fuzz, or
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *     fuzz/fuzz_dicom_diff.c src/hc_dicom.c -lz -o /tmp/fuzz_dicom_diff
 */
#define _GNU_SOURCE /* memfd_create */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "hc_dicom.h"
#include "hc_fuzz_fill.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

/* Aborts with both sides shown unless a and b agree; all: every field, else the three UIDs the
 * sink names a part by. */
static void hc_fuzz_dd_same(const char *what, const hc_dicom_info *a, const hc_dicom_info *b,
                            int all)
{
#define HC_FUZZ_DD_FIELD(x)                                                                  \
    if (strcmp(a->x, b->x) != 0) {                                                         \
        fprintf(stderr, "%s: %s differs: '%s' vs '%s'\n", what, #x, a->x, b->x);           \
        abort();                                                                             \
    }
    HC_FUZZ_DD_FIELD(sop_instance_uid)
    HC_FUZZ_DD_FIELD(study_uid)
    HC_FUZZ_DD_FIELD(series_uid)
    if (!all)
        return;
    HC_FUZZ_DD_FIELD(transfer_syntax)
    HC_FUZZ_DD_FIELD(media_sop_class_uid)
    HC_FUZZ_DD_FIELD(media_sop_instance_uid)
    HC_FUZZ_DD_FIELD(sop_class_uid)
#undef HC_FUZZ_DD_FIELD
    if (a->preamble != b->preamble || a->deflated_fallback != b->deflated_fallback
        || a->size != b->size || a->dataset_offset != b->dataset_offset) {
        fprintf(stderr, "%s: preamble %d/%d, fallback %d/%d, size %llu/%llu, offset %llu/%llu\n",
                what, a->preamble, b->preamble, a->deflated_fallback, b->deflated_fallback,
                (unsigned long long)a->size, (unsigned long long)b->size,
                (unsigned long long)a->dataset_offset, (unsigned long long)b->dataset_offset);
        abort();
    }
}

/* The memory form on the whole and the file form on fd's copy of it agree. Returns the code. */
static int hc_fuzz_dd_whole(int fd, const unsigned char *p, size_t n, hc_dicom_info *whole,
                            char *err, size_t errlen)
{
    char path[64], ferr[128];
    hc_dicom_info f;
    int rm, rf;
    if (ftruncate(fd, 0) != 0 || pwrite(fd, p, n, 0) != (ssize_t)n)
        abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    rm = hc_dicom_probe_mem(p, n, whole, err, errlen);
    rf = hc_dicom_probe_file(path, &f, ferr, sizeof ferr);
    if (rm != rf || (rm != HC_DICOM_OK && strcmp(err, ferr) != 0)) {
        fprintf(stderr, "memory %d '%s', file %d '%s'\n", rm, rm ? err : "", rf,
                rf ? ferr : "");
        abort();
    }
    if (rm == HC_DICOM_OK)
        hc_fuzz_dd_same("memory/file", whole, &f, 1);
    return rm;
}

/* data is owned by libFuzzer; the memfd is the only thing kept (one per process). */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static int fd = -1;
    hc_dicom_info whole, prefix;
    char err[128];
    size_t n, i;
    unsigned char *p;
    int rc;
    if (fd < 0 && (fd = memfd_create("hc-fuzz-dicom", MFD_CLOEXEC)) < 0)
        abort();
    p = hc_fuzz_fill(data, size, &n);
    rc = hc_fuzz_dd_whole(fd, p, n, &whole, err, sizeof err);
    {
        const size_t cuts[] = { 4096, 16384, 65536, n / 3, n / 2, n > 0 ? n - 1 : 0 };
        for (i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
            if (cuts[i] >= n || hc_dicom_probe_mem(p, cuts[i], &prefix, NULL, 0) != HC_DICOM_OK
                || prefix.deflated_fallback)
                continue;
            if (rc != HC_DICOM_OK) {
                fprintf(stderr, "the first %lu bytes probe (%s), the whole does not: %s\n",
                        (unsigned long)cuts[i], prefix.sop_instance_uid, err);
                abort();
            }
            hc_fuzz_dd_same("prefix/whole", &prefix, &whole, 0);
        }
    }
    free(p);
    return 0;
}
