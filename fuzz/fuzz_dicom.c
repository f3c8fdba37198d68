/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the DICOM header probe: every input is probed as an
 * in-memory file prefix. The probe must never crash, read out of bounds or
 * hang, must return OK or FORMAT (memory never gives IO), and on success
 * must hand back NUL-terminated UIDs of at most 64 characters, a SOP
 * Instance UID, and a data set offset inside the input. Seeds: small real
 * headers in fuzz/corpus/dicom/.
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *          fuzz/fuzz_dicom.c src/hc_dicom.c -lz -o /tmp/fuzz_dicom
 */
#include <stdlib.h>
#include <string.h>

#include "hc_dicom.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

/* Aborts unless uid is a NUL-terminated string of at most 64 bytes. */
static void hc_fuzz_check_uid(const char *uid)
{
    if (memchr(uid, '\0', HC_DICOM_UID_SIZE) == NULL)
        abort();
}

/* data is owned by libFuzzer; nothing is kept. */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    hc_dicom_info info;
    char err[128];
    int rc = hc_dicom_probe_mem(data, size, &info, err, sizeof err);

    if (rc != HC_DICOM_OK) {
        if (rc != HC_DICOM_ERR_FORMAT || err[0] == '\0'
            || memchr(err, '\0', sizeof err) == NULL)
            abort();
        return 0;
    }
    hc_fuzz_check_uid(info.transfer_syntax);
    hc_fuzz_check_uid(info.media_sop_class_uid);
    hc_fuzz_check_uid(info.media_sop_instance_uid);
    hc_fuzz_check_uid(info.sop_class_uid);
    hc_fuzz_check_uid(info.sop_instance_uid);
    hc_fuzz_check_uid(info.study_uid);
    hc_fuzz_check_uid(info.series_uid);
    if (info.sop_instance_uid[0] == '\0' || info.dataset_offset > size
        || info.size != size || info.bytes_read > HC_DICOM_READ_LIMIT)
        abort();
    if (!info.deflated_fallback && (info.study_uid[0] == '\0' || info.series_uid[0] == '\0'))
        abort();
    return 0;
}
