/* SPDX-License-Identifier: MIT */
/* Request bodies as a list of segments, each either bytes held in memory or a range of a file
 * on disk, read in order by the transport. A multipart/related body is such a list: small framing
 * segments in memory around file segments, so a body of any size is sent in constant memory, its
 * length known before the first byte goes out, and it can be rewound and sent again. */
#ifndef HC_BODY_H
#define HC_BODY_H

#include <stddef.h>
#include <stdint.h>

typedef struct hc_body hc_body;

/* Returns a new empty body owned by the caller (free with hc_body_free), or NULL. */
hc_body *hc_body_new(void);
void hc_body_free(hc_body *b);

/* Appends a copy of n bytes. Returns 0, or -1 with hc_body_error set. */
int hc_body_add_mem(hc_body *b, const void *p, size_t n);
/* Appends the file at path, which must be size bytes long when it is sent (size < 0: its size
 * now). The path is copied; the file is opened only while it is being read. Returns 0, or -1
 * with hc_body_error set (e.g. the file cannot be stat'ed). */
int hc_body_add_file(hc_body *b, const char *path, int64_t size);

/* What a file must still be when it is sent, besides its size: the device and inode numbers and
 * the modification time that stat(2) gave when it was checked, in whole seconds and, with
 * HC_FILE_MTIME_NSEC as well as HC_FILE_MTIME, to the nanosecond (a file rewritten within the
 * second it was checked keeps its whole seconds). Only the fields whose bit is in `have` are
 * compared, so that a file renamed over the checked one, or rewritten in place with the same
 * size, fails the read instead of being sent in its place. */
enum { HC_FILE_DEV = 1, HC_FILE_INO = 2, HC_FILE_MTIME = 4, HC_FILE_MTIME_NSEC = 8 };
typedef struct hc_file_identity {
    unsigned have;   /* HC_FILE_* bits */
    uint64_t dev, ino;
    int64_t mtime;   /* seconds since the epoch */
    long mtime_nsec; /* the mtime's nanoseconds, 0 to 999999999 (HC_FILE_MTIME_NSEC) */
} hc_file_identity;
/* hc_body_add_file, and the file must still be id (NULL: not checked) when it is opened to be
 * sent, and still have id's mtime when its last byte has been read. */
int hc_body_add_file_checked(hc_body *b, const char *path, int64_t size,
                             const hc_file_identity *id);

/* Multipart/related framing (RFC 2046/2387, PS3.18 8.6.1.2). A boundary is 1-70 characters of
 * the RFC's bchars, not ending in a space. Returns 0 or -1 with hc_body_error set. */
int hc_body_check_boundary(hc_body *b, const char *boundary);
/* Appends the delimiter and headers of the next part; its content is appended after by the caller.
 * headers is a block of CRLF-terminated header lines (may be empty). */
int hc_body_begin_part(hc_body *b, const char *boundary, const char *headers);
/* Appends the close delimiter "--boundary--". */
int hc_body_finish_multipart(hc_body *b, const char *boundary);

/* Total length in bytes of the body as it will be sent. */
int64_t hc_body_length(const hc_body *b);
/* Copies up to n bytes at the current position. Returns the count (0 at the end), or -1 with
 * hc_body_error set: a file that vanished, changed size, was replaced or modified (see
 * hc_body_add_file_checked) or failed to read. */
long hc_body_read(hc_body *b, char *buf, size_t n);
/* Moves the read position to offset from the start. Returns 0 or -1. */
int hc_body_seek(hc_body *b, int64_t offset);
/* The last error's message, owned by b; "" when none. */
const char *hc_body_error(const hc_body *b);
/* Bytes handed out by hc_body_read since the last seek to 0. */
int64_t hc_body_position(const hc_body *b);

#endif
