/* SPDX-License-Identifier: MIT */
/* The on-disk sink of a transfer: where a 2xx response body goes when the caller asked for
 * files instead of memory. A file sink writes the body to "<path>.partial-XXXXXX" and renames
 * it to path once the transfer succeeded. A directory sink writes one ".hc-part-XXXXXX" file in
 * the directory per part of a multipart body (hc_multipart.h), or one for a body that is not
 * multipart, and hands the complete ones to the caller as a list. Caps on decoded bytes, parts
 * and part sizes stop it at once; whatever it made and did not hand over is removed.
 * Plain C, no libcurl, no Lua: the transport (hc_http.c) feeds it the decoded body. */
#ifndef HC_SINK_H
#define HC_SINK_H

#include <stddef.h>
#include <stdint.h>

typedef struct hc_sink hc_sink;

/* What was asked for. */
enum { HC_SINK_FILE = 1, HC_SINK_DIR };
/* What the sink decided at the final response's first body byte (or its end, when it had
 * none): a response that is not 2xx is left to memory (the caller keeps it). */
enum { HC_SINK_UNDECIDED, HC_SINK_TO_MEMORY, HC_SINK_TO_FILE, HC_SINK_TO_PARTS, HC_SINK_TO_PART };
/* Why the sink stopped. */
enum { HC_SINKERR_NONE, HC_SINKERR_IO, HC_SINKERR_MULTIPART, HC_SINKERR_CAP };
/* Retained part header blocks of one answer, in all: each is at most 64 KiB (hc_multipart.h), and
 * a server must not make many of them cost gigabytes. */
#define HC_SINK_MAX_HEADERS_TOTAL (32 * 1024 * 1024)

/* A complete part written by a directory sink (or the one file of a body that was not
 * multipart). */
typedef struct hc_part {
    char *path;                    /* owned by the sink, the file too until hc_sink_take_parts */
    char *headers;                 /* owned: the part's checked header block (hc_multipart.h) */
    size_t headers_len;
    int64_t size;
    /* Named by its UID (hc_sink_name_by_uid): path is <dir>/<sop_instance_uid>.dcm (owned);
     * NULL when the part was not named: its file is still the temporary one. A named part has
     * no headers (NULL) any more: it is an instance, whatever they said. The study and
     * series UIDs ("" when the probe found none) are the sink's, one pointer shared by the parts
     * in a row that have the same. */
    char *sop_instance_uid;
    const char *study_uid;
    const char *series_uid;
    /* Not named because an earlier part of this answer (1 + its index) had its SOP Instance UID;
     * 0 otherwise. */
    uint32_t duplicate_of;
} hc_part;

/* Returns a new sink (owned by the caller: hc_sink_free) of kind HC_SINK_FILE or HC_SINK_DIR for
 * path (copied), with caps on the decoded body in all, on the parts of a directory sink and on
 * the bytes of one part or of the file (0: none); NULL when out of memory. Creates no file. */
hc_sink *hc_sink_new(int kind, const char *path, int64_t max_bytes, int64_t max_parts,
                     int64_t max_part_bytes);
/* A directory sink that names each part of a multipart answer by its SOP Instance UID as the
 * part ends, while the answer streams: the part's first bytes (up to HC_SINK_PROBE_BYTES) are
 * kept in memory and probed there (hc_dicom_probe_mem); a part no larger than that makes its
 * temporary file only as it ends, with one write, a larger one when it outgrows the prefix (a
 * part cut off by an error has made no file then). When the probe succeeds
 * within them, the UID (the data set's, else the File Meta's) is a valid UID (digits and dots,
 * 1 to 64 characters, no empty component) and no earlier part of this answer had it, the
 * part's temporary file is renamed to <dir>/<UID>.dcm (replacing a file of that name, never
 * writing through a link: rename replaces the entry itself). A part the prefix does not tell
 * (a deflated data set, a header past the prefix) is probed whole from its file as it ends.
 * Any other part keeps its temporary file for the caller to judge (not DICOM, no valid UID, a
 * second copy: duplicate_of, a rename refused). The UIDs seen are kept as 96-bit hashes (16
 * bytes a slot), not as strings, so that the parts handed over (hc_sink_release_parts) cost
 * nothing more. Saves the caller a reopen, a read and a rename per instance. */
#define HC_SINK_PROBE_BYTES (64 * 1024)
void hc_sink_name_by_uid(hc_sink *k);

/* Removes every file not handed to the caller and frees the sink; NULL is ignored. */
void hc_sink_free(hc_sink *k);

/* The final response's body starts (or ended empty): its HTTP status and Content-Type (NULL when
 * none) decide the mode. Returns 0, or -1 with the sink's error set. */
int hc_sink_decide(hc_sink *k, long http_status, const char *content_type);
/* The mode decided (HC_SINK_*), HC_SINK_UNDECIDED before. */
int hc_sink_mode(const hc_sink *k);
/* The next n decoded bytes of a body whose mode is a file or parts. Returns 0, or -1 with the
 * sink's error set (a cap passed, a write failed, a malformed multipart body). */
int hc_sink_write(hc_sink *k, const char *p, size_t n);
/* The transfer ended; ok when it succeeded. Completes the file (renamed into place) or the parts,
 * or removes what is not complete. Returns 0, or -1 when the sink turned a success into a
 * failure (its error set). */
int hc_sink_end(hc_sink *k, int ok);
/* A new response starts (after 100 Continue, a redirect, auth): forgets the last one, its files
 * removed, the error cleared. */
void hc_sink_reset(hc_sink *k);

/* HC_SINKERR_*; the message and, for HC_SINKERR_CAP, the fixed reason ("too_large",
 * "too_many_parts", "part_too_large") through *code. */
int hc_sink_error(const hc_sink *k, const char **message, const char **code);
/* Body bytes received (decoded), whatever the mode. */
int64_t hc_sink_bytes(const hc_sink *k);
/* The file or the directory asked for. */
const char *hc_sink_path(const hc_sink *k);
/* Complete parts, in stream order; hc_sink_part(k, i) for hc_sink_released(k) <= i <
 * hc_sink_nparts(k) (NULL for the others). */
size_t hc_sink_nparts(const hc_sink *k);
const hc_part *hc_sink_part(const hc_sink *k, size_t i);
/* Hands the parts before index `upto` over to the caller as they are: their files are the
 * caller's (nothing removes them, even when the transfer fails later) and their records are
 * freed, so that an answer of a million parts keeps no memory for the parts already handed
 * out. Their count still counts (hc_sink_nparts, max_parts). */
void hc_sink_release_parts(hc_sink *k, size_t upto);
/* The parts released so far: the index of the first part hc_sink_part still has. */
size_t hc_sink_released(const hc_sink *k);
/* The caller now owns the files of the parts (not their hc_part records): nothing removes them. */
void hc_sink_take_parts(hc_sink *k);

#endif
