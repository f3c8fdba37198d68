/* SPDX-License-Identifier: MIT */
/* Segment-list request bodies (see hc_body.h). Files are opened one at a time, at the moment
 * their first byte is needed, and checked against the size they had when the body was built
 * both when opened and when their last byte has been read: a file that changes between probe
 * and send fails the request instead of producing a body that lies about its length. When the
 * caller gave the file's identity (device, inode, mtime), a file replaced by another of the same
 * size, or rewritten in place, fails the same way instead of being sent under the UIDs that were
 * read from the file that was checked. */
#define _FILE_OFFSET_BITS 64
#define _POSIX_C_SOURCE 200809L
#include "hc_body.h"
#include "hc_multipart.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { HC_SEG_MEM, HC_SEG_FILE };

typedef struct hc_segment {
    int kind;
    char *bytes;      /* owned: the data (MEM) or the path (FILE) */
    int64_t length;   /* bytes this segment contributes */
    hc_file_identity id; /* FILE: what the file must still be when sent (id.have 0: nothing) */
} hc_segment;

struct hc_body {
    hc_segment *segs; /* owned array */
    size_t nsegs, cap;
    int64_t total;
    /* read position */
    size_t cur;       /* segment index */
    int64_t off;      /* offset inside segment cur */
    int64_t pos;      /* offset from the start */
    int fd;           /* open file of segment cur, or -1 */
    char err[512];
};

/* ---- building ------------------------------------------------------------------------ */

hc_body *hc_body_new(void)
{
    hc_body *b = calloc(1, sizeof *b);
    if (b != NULL)
        b->fd = -1;
    return b;
}

void hc_body_free(hc_body *b)
{
    size_t i;
    if (b == NULL)
        return;
    if (b->fd >= 0)
        close(b->fd);
    for (i = 0; i < b->nsegs; i++)
        free(b->segs[i].bytes);
    free(b->segs);
    free(b);
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int seterr(hc_body *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, sizeof b->err, fmt, ap);
    va_end(ap);
    return -1;
}

static int push(hc_body *b, int kind, char *bytes, int64_t length)
{
    if (length < 0 || length > INT64_MAX - b->total) {
        free(bytes);
        return seterr(b, "request body too large");
    }
    if (b->nsegs == b->cap) {
        size_t ncap = b->cap ? b->cap * 2 : 8;
        hc_segment *n = realloc(b->segs, ncap * sizeof *n);
        if (n == NULL) {
            free(bytes);
            return seterr(b, "out of memory");
        }
        b->segs = n;
        b->cap = ncap;
    }
    b->segs[b->nsegs].kind = kind;
    b->segs[b->nsegs].bytes = bytes;
    b->segs[b->nsegs].length = length;
    memset(&b->segs[b->nsegs].id, 0, sizeof b->segs[b->nsegs].id);
    b->nsegs++;
    b->total += length;
    return 0;
}

int hc_body_add_mem(hc_body *b, const void *p, size_t n)
{
    char *copy;
    if (n == 0)
        return 0;
    copy = malloc(n);
    if (copy == NULL)
        return seterr(b, "out of memory");
    memcpy(copy, p, n);
    return push(b, HC_SEG_MEM, copy, (int64_t)n);
}

int hc_body_add_file(hc_body *b, const char *path, int64_t size)
{
    return hc_body_add_file_checked(b, path, size, NULL);
}

int hc_body_add_file_checked(hc_body *b, const char *path, int64_t size, const hc_file_identity *id)
{
    char *copy;
    if (size < 0) {
        struct stat st;
        if (stat(path, &st) != 0)
            return seterr(b, "cannot open %s: %s", path, strerror(errno));
        if (!S_ISREG(st.st_mode))
            return seterr(b, "not a regular file: %s", path);
        size = (int64_t)st.st_size;
    }
    copy = strdup(path);
    if (copy == NULL)
        return seterr(b, "out of memory");
    if (push(b, HC_SEG_FILE, copy, size) != 0)
        return -1;
    if (id != NULL)
        b->segs[b->nsegs - 1].id = *id;
    return 0;
}

int hc_body_check_boundary(hc_body *b, const char *boundary)
{
    switch (hc_multipart_check_boundary(boundary, strlen(boundary))) {
    case HC_MP_BOUNDARY_OK: return 0;
    case HC_MP_BOUNDARY_LENGTH:
        return seterr(b, "invalid multipart boundary (1 to 70 characters, not ending in a space)");
    default: return seterr(b, "invalid character in multipart boundary");
    }
}

/* A part's header block must be "Name: value" lines, each ended by CRLF, and nothing else: a
 * blank line or a bare CR or LF would end the headers early and turn the rest into content. */
static int check_part_headers(hc_body *b, const char *h)
{
    while (*h != '\0') {
        const char *eol = strstr(h, "\r\n"), *c;
        if (eol == NULL)
            return seterr(b, "invalid part headers: each line must end with CRLF");
        for (c = h; c < eol && *c != ':'; c++)
            if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 127)
                return seterr(b, "invalid part headers: a line needs a header name and a colon");
        if (c == h || c == eol)
            return seterr(b, "invalid part headers: a line needs a header name and a colon");
        for (; c < eol; c++)
            if (*c == '\r' || *c == '\n')
                return seterr(b, "invalid part headers: CR or LF inside a line");
        h = eol + 2;
    }
    return 0;
}

int hc_body_begin_part(hc_body *b, const char *boundary, const char *headers)
{
    /* The delimiter is CRLF "--" boundary; the CRLF of the first one is optional and left out so
     * the body starts with "--". */
    size_t bl = strlen(boundary), hl = strlen(headers), n = 0;
    char *s;
    if (hc_body_check_boundary(b, boundary) != 0 || check_part_headers(b, headers) != 0)
        return -1;
    s = malloc(bl + hl + 8);
    if (s == NULL)
        return seterr(b, "out of memory");
    if (b->total > 0) {
        memcpy(s, "\r\n", 2);
        n = 2;
    }
    memcpy(s + n, "--", 2);
    memcpy(s + n + 2, boundary, bl);
    memcpy(s + n + 2 + bl, "\r\n", 2);
    memcpy(s + n + 4 + bl, headers, hl);
    memcpy(s + n + 4 + bl + hl, "\r\n", 2);
    return push(b, HC_SEG_MEM, s, (int64_t)(n + bl + hl + 6));
}

int hc_body_finish_multipart(hc_body *b, const char *boundary)
{
    size_t bl = strlen(boundary);
    char *s;
    if (hc_body_check_boundary(b, boundary) != 0)
        return -1;
    s = malloc(bl + 8);
    if (s == NULL)
        return seterr(b, "out of memory");
    memcpy(s, "\r\n--", 4);
    memcpy(s + 4, boundary, bl);
    memcpy(s + 4 + bl, "--\r\n", 4);
    return push(b, HC_SEG_MEM, s, (int64_t)(bl + 8));
}

/* ---- reading ------------------------------------------------------------------------- */

int64_t hc_body_length(const hc_body *b) { return b->total; }
const char *hc_body_error(const hc_body *b) { return b->err; }
int64_t hc_body_position(const hc_body *b) { return b->pos; }

static void close_current(hc_body *b)
{
    if (b->fd >= 0) {
        close(b->fd);
        b->fd = -1;
    }
}

/* Seconds since the epoch as UTC ISO 8601 into out (at least 48 bytes), with nsec as a fraction
 * of the second when nsec >= 0, or the bare number when it is out of gmtime's range. */
static const char *utc(char *out, size_t n, int64_t t, long nsec)
{
    time_t tt = (time_t)t;
    struct tm tm;
    char frac[24] = "";
    if (nsec >= 0)
        snprintf(frac, sizeof frac, ".%09ld", nsec);
    if ((int64_t)tt != t || gmtime_r(&tt, &tm) == NULL
        || strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        snprintf(out, n, "%lld%s", (long long)t, frac);
    else
        snprintf(out + strlen(out), n - strlen(out), "%sZ", frac);
    return out;
}

/* Whether st's mtime differs from what the segment expects (to the nanosecond when it has them);
 * if so, sets the error ("after it was checked" or "while it was being sent", per when). The
 * nanoseconds are named only when the whole seconds are the same. */
static int mtime_differs(hc_body *b, const hc_segment *s, const struct stat *st, const char *when)
{
    char was[48], now[48];
    int64_t sec = (int64_t)st->st_mtim.tv_sec;
    long nsec = (long)st->st_mtim.tv_nsec;
    int same_sec = sec == s->id.mtime;
    if (!(s->id.have & HC_FILE_MTIME)
        || (same_sec && (!(s->id.have & HC_FILE_MTIME_NSEC) || nsec == s->id.mtime_nsec)))
        return 0;
    seterr(b, "file modified %s: %s (mtime %s, now %s)", when, s->bytes,
           utc(was, sizeof was, s->id.mtime, same_sec ? s->id.mtime_nsec : -1),
           utc(now, sizeof now, sec, same_sec ? nsec : -1));
    return 1;
}

/* Whether the file open as st is another file than the one checked (device or inode number
 * differs: something was renamed over the path) or was modified since; if so, sets the error. */
static int identity_differs(hc_body *b, const hc_segment *s, const struct stat *st)
{
    uint64_t dev = (uint64_t)st->st_dev, ino = (uint64_t)st->st_ino;
    int dev_differs = (s->id.have & HC_FILE_DEV) && dev != s->id.dev;
    if (dev_differs || ((s->id.have & HC_FILE_INO) && ino != s->id.ino)) {
        if (dev_differs && (s->id.have & HC_FILE_INO))
            seterr(b,
                   "file replaced after it was checked: %s (device %llu inode %llu, now device "
                   "%llu inode %llu)",
                   s->bytes, (unsigned long long)s->id.dev, (unsigned long long)s->id.ino,
                   (unsigned long long)dev, (unsigned long long)ino);
        else if (dev_differs)
            seterr(b, "file replaced after it was checked: %s (device %llu, now %llu)", s->bytes,
                   (unsigned long long)s->id.dev, (unsigned long long)dev);
        else
            seterr(b, "file replaced after it was checked: %s (inode %llu, now %llu)", s->bytes,
                   (unsigned long long)s->id.ino, (unsigned long long)ino);
        return 1;
    }
    return mtime_differs(b, s, st, "after it was checked");
}

static int open_current(hc_body *b)
{
    hc_segment *s = &b->segs[b->cur];
    struct stat st;
    /* O_NONBLOCK: a path swapped for a FIFO since it was checked must not block the open; it
     * changes nothing for the reads of a regular file. */
    b->fd = open(s->bytes, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (b->fd < 0) {
        return seterr(b, "cannot open %s: %s", s->bytes, strerror(errno));
    }
    if (fstat(b->fd, &st) != 0) {
        seterr(b, "cannot stat %s: %s", s->bytes, strerror(errno));
        close_current(b);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close_current(b);
        return seterr(b, "not a regular file any more: %s", s->bytes);
    }
    if ((int64_t)st.st_size != s->length) {
        close_current(b);
        return seterr(b, "file changed size after it was checked: %s (was %lld bytes, now %lld)",
                      s->bytes, (long long)s->length, (long long)st.st_size);
    }
    /* Checked at every open, so a rewind (libcurl seeks back to send a body again) or a new
     * body for a retry checks again. */
    if (identity_differs(b, s, &st)) {
        close_current(b);
        return -1;
    }
#ifdef POSIX_FADV_SEQUENTIAL
    (void)posix_fadvise(b->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    if (b->off > 0 && lseek(b->fd, (off_t)b->off, SEEK_SET) < 0) {
        snprintf(b->err, sizeof b->err, "cannot seek in %s: %s", s->bytes, strerror(errno));
        close_current(b);
        return -1;
    }
    return 0;
}

long hc_body_read(hc_body *b, char *buf, size_t n)
{
    size_t done = 0;
    while (done < n && b->cur < b->nsegs) {
        hc_segment *s = &b->segs[b->cur];
        int64_t left = s->length - b->off;
        size_t want = n - done;
        if ((int64_t)want > left)
            want = (size_t)left;
        if (want > 0 && s->kind == HC_SEG_MEM) {
            memcpy(buf + done, s->bytes + b->off, want);
        } else if (want > 0) {
            ssize_t got;
            if (b->fd < 0 && open_current(b) != 0)
                return -1;
            do
                got = read(b->fd, buf + done, want);
            while (got < 0 && errno == EINTR);
            if (got < 0) {
                snprintf(b->err, sizeof b->err, "cannot read %s: %s", s->bytes, strerror(errno));
                return -1;
            }
            if (got == 0)
                return seterr(b, "file shrank while it was being sent: %s (%lld of %lld bytes)",
                              s->bytes, (long long)b->off, (long long)s->length);
            want = (size_t)got;
        }
        done += want;
        b->off += (int64_t)want;
        b->pos += (int64_t)want;
        if (b->off == s->length) {
            if (s->kind == HC_SEG_FILE && b->fd >= 0) {
                struct stat st;
                if (fstat(b->fd, &st) != 0) {
                    seterr(b, "cannot stat %s: %s", s->bytes, strerror(errno));
                    close_current(b);
                    return -1;
                }
                if ((int64_t)st.st_size != s->length) {
                    close_current(b);
                    return seterr(
                        b, "file changed size while it was being sent: %s (%lld bytes, now %lld)",
                        s->bytes, (long long)s->length, (long long)st.st_size);
                }
                /* Rewritten in place while it was read (same inode, same size). */
                if (mtime_differs(b, s, &st, "while it was being sent")) {
                    close_current(b);
                    return -1;
                }
            }
            close_current(b);
            b->cur++;
            b->off = 0;
        }
    }
    return (long)done;
}

int hc_body_seek(hc_body *b, int64_t offset)
{
    size_t i = 0;
    int64_t at = offset;
    if (offset < 0 || offset > b->total)
        return seterr(b, "seek outside the body");
    close_current(b);
    while (i < b->nsegs && at >= b->segs[i].length) {
        at -= b->segs[i].length;
        i++;
    }
    b->cur = i;
    b->off = at;
    b->pos = offset;
    b->err[0] = '\0';
    return 0;
}
