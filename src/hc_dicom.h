/* SPDX-License-Identifier: MIT */
/*
 * DICOM Part-10 header probe. Before a file is sent to a DICOMweb server we
 * want its identity (SOP Instance, Study and Series UIDs, transfer syntax)
 * without loading it: this probe reads the preamble, the File Meta
 * Information and the start of the data set in whatever transfer syntax the
 * meta names (implicit/explicit VR, little/big endian, deflated), skips every
 * value it does not need with seeks, stops at the first tag past Series
 * Instance UID (so never reaches Pixel Data) and never fetches more than
 * HC_DICOM_READ_LIMIT bytes. Results live in a fixed-size struct: nothing to
 * free. No global state; safe to call from many threads.
 */
#ifndef HC_DICOM_H
#define HC_DICOM_H

#include <stddef.h>
#include <stdint.h>

/* A UID is at most 64 characters (PS3.5 9.1); one more for the NUL. */
#define HC_DICOM_UID_SIZE 65

/*
 * Upper bound on the bytes one probe fetches from its input (element
 * headers and UID values; the file form counts its whole 4 KiB buffer
 * fills), and separately on the bytes inflated from a deflated data set.
 * Skipped values are not fetched, except in a deflated data set where
 * skipping means inflating. Real headers up to Series Instance UID are a
 * few KiB; one that needs more is refused ("header exceeds the read limit
 * of 1048576 bytes") or, deflated, falls back to the meta UIDs.
 */
#define HC_DICOM_READ_LIMIT (1024UL * 1024UL)

/*
 * Reasons given with HC_DICOM_ERR_FORMAT (N decimal, tags as (GGGG,EEEE)):
 *   not a DICOM file (empty) | not a DICOM file (no DICM prefix)
 *   no File Meta Information | truncated at offset N
 *   odd length N at tag (GGGG,EEEE) | invalid VR at tag (GGGG,EEEE)
 *   invalid UID in (GGGG,EEEE) | UID over 64 bytes in (GGGG,EEEE)
 *   missing Transfer Syntax UID (0002,0010) | unsupported transfer syntax UID
 *   missing SOP Instance UID | missing Study Instance UID
 *   missing Series Instance UID | malformed sequence at offset N
 *   sequences nested deeper than 32 at offset N
 *   header exceeds the read limit of 1048576 bytes
 *   cannot inflate data set: ZLIB-MESSAGE | deflated data set ends early
 * Offsets inside a deflated data set count inflated bytes. With
 * HC_DICOM_ERR_IO: cannot open PATH: ..., cannot read PATH: ..., and the
 * like. UIDs may have leading zeros in a component (tolerated).
 */

/* Return codes of the probe functions. */
#define HC_DICOM_OK 0
#define HC_DICOM_ERR_FORMAT 1 /* not DICOM, truncated, invalid, unsupported */
#define HC_DICOM_ERR_IO 2     /* cannot open or read the file */

typedef struct hc_dicom_info {
    /* NUL-terminated, trailing space/NUL padding stripped; "" when absent. */
    char transfer_syntax[HC_DICOM_UID_SIZE];        /* (0002,0010) */
    char media_sop_class_uid[HC_DICOM_UID_SIZE];    /* (0002,0002) */
    char media_sop_instance_uid[HC_DICOM_UID_SIZE]; /* (0002,0003) */
    char sop_class_uid[HC_DICOM_UID_SIZE];          /* (0008,0016) */
    /* On success these three are never "", except study and series after
     * a deflated fallback. */
    char sop_instance_uid[HC_DICOM_UID_SIZE];       /* (0008,0018) */
    char study_uid[HC_DICOM_UID_SIZE];              /* (0020,000D) */
    char series_uid[HC_DICOM_UID_SIZE];             /* (0020,000E) */
    int preamble;          /* 1: 128-byte preamble + "DICM"; 0: meta at offset 0 */
    int deflated_fallback; /* 1: deflated data set unreadable, SOP UIDs from meta */
    uint64_t size;           /* file size, or buffer length for the _mem form */
    uint64_t dataset_offset; /* first byte after the File Meta Information */
    uint64_t bytes_read;     /* bytes fetched (memory; see READ_LIMIT) or read from the file */
} hc_dicom_info;

/*
 * Probes the Part-10 file held in buf[0..len) (the whole file or a prefix;
 * a prefix that ends before Series Instance UID reads as truncated).
 * Fills *out and returns HC_DICOM_OK, or returns HC_DICOM_ERR_FORMAT with a
 * short NUL-terminated reason in err (truncated to errlen; err may be NULL
 * when errlen is 0). The caller owns buf, out and err; nothing is retained.
 */
int hc_dicom_probe_mem(const unsigned char *buf, size_t len, hc_dicom_info *out,
                       char *err, size_t errlen);

/*
 * Probes the file at path, reading it through a 4 KiB buffer and seeking
 * over values. Same results as hc_dicom_probe_mem on the file's bytes
 * (bytes_read aside), plus HC_DICOM_ERR_IO when the file cannot be opened
 * or read. Blocks on file I/O. The caller owns path, out and err; the file
 * is closed before returning.
 */
int hc_dicom_probe_file(const char *path, hc_dicom_info *out, char *err,
                        size_t errlen);

#endif
