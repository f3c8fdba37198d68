/* SPDX-License-Identifier: MIT */
/*
 * DICOM Part-10 header probe (see hc_dicom.h for the contract). The parser
 * reads from a "source": a memory buffer, a file seen through a 4 KiB
 * buffer, or a raw-deflate stream inflated from one of those. Reading a
 * source fetches bytes and counts them against HC_DICOM_READ_LIMIT;
 * skipping a memory or file source only moves an offset, so values that
 * are not needed are never read. Parsing stops at the first top-level tag
 * past (0020,000E), which keeps Pixel Data unread. Undefined-length
 * sequences and items are walked (recursively, depth-capped); defined-length
 * ones are skipped whole. Where files in the wild disagree with their
 * transfer syntax we do what pydicom does (detect implicit/explicit VR from
 * the first element), so both read the same UIDs.
 */
#include "hc_dicom.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#define HC_DICOM_BUF 4096
#define HC_DICOM_MAX_DEPTH 32
#define HC_DICOM_UNDEFINED 0xFFFFFFFFu
#define HC_DICOM_UID_RAW_MAX 128 /* longest raw UID value we fetch */

#define TAG_ITEM 0xFFFEE000u
#define TAG_ITEM_END 0xFFFEE00Du
#define TAG_SEQ_END 0xFFFEE0DDu
#define TAG_META_LENGTH 0x00020000u
#define TAG_MEDIA_CLASS 0x00020002u
#define TAG_MEDIA_INSTANCE 0x00020003u
#define TAG_TSYNTAX 0x00020010u
#define TAG_SOP_CLASS 0x00080016u
#define TAG_SOP_INSTANCE 0x00080018u
#define TAG_STUDY 0x0020000Du
#define TAG_SERIES 0x0020000Eu

enum { SRC_MEM, SRC_FILE, SRC_INFLATE };

/* How a read detects a data set that disagrees with its transfer syntax. */
enum { DETECT_NONE, DETECT_TO_IMPLICIT, DETECT_BOTH };

typedef struct hc_dicom_run {
    char *err;
    size_t errlen;
    int failed;       /* HC_DICOM_ERR_* of the first failure, 0 if none */
    int dflt_broken;  /* the deflate stream (not its content) failed */
} hc_dicom_run;

typedef struct hc_dicom_src {
    int kind;
    hc_dicom_run *run;
    uint64_t pos;     /* offset of the next byte of this stream */
    uint64_t size;    /* length of the stream (SRC_MEM, SRC_FILE) */
    uint64_t fetched; /* bytes counted against HC_DICOM_READ_LIMIT */
    uint64_t filled;  /* SRC_FILE: bytes read from the file (its bytes_read) */
    const unsigned char *mem;
    FILE *fp;
    unsigned char *buf; /* SRC_FILE: window [buf_off, buf_off + buf_len) */
    size_t buf_len;
    uint64_t buf_off;
    struct hc_dicom_src *parent; /* SRC_INFLATE: compressed bytes */
    z_stream *z;
    unsigned char *in;
    unsigned char *scratch;
    int z_end;
} hc_dicom_src;

typedef struct hc_dicom_ctx {
    int explicit_vr;
    int big;
} hc_dicom_ctx;

typedef struct hc_dicom_elem {
    uint32_t tag;
    uint32_t len;
    unsigned char vr[2];
    uint64_t off;
} hc_dicom_elem;

/* ------------------------------------------------------------------ errors */

/* Records the first failure in run->err (owned by the caller). Returns -1. */
static int dicom_fail(hc_dicom_run *run, int kind, const char *fmt, ...)
{
    va_list ap;

    if (run->failed)
        return -1;
    run->failed = kind;
    if (run->errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(run->err, run->errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Returns -1 after recording "truncated at offset N". */
static int dicom_truncated(hc_dicom_run *run, uint64_t off)
{
    return dicom_fail(run, HC_DICOM_ERR_FORMAT, "truncated at offset %llu",
                      (unsigned long long)off);
}

/* Returns -1 after recording that the read limit was reached. */
static int dicom_over_limit(hc_dicom_run *run)
{
    return dicom_fail(run, HC_DICOM_ERR_FORMAT,
                      "header exceeds the read limit of %lu bytes",
                         (unsigned long)HC_DICOM_READ_LIMIT);
}

/* ----------------------------------------------------------------- sources */

static int dicom_src_read(hc_dicom_src *s, unsigned char *dst, size_t n);

/* A memory source: the next bytes of the buffer. */
static int dicom_mem_read(hc_dicom_src *s, unsigned char *dst, size_t n)
{
    uint64_t avail = s->size - s->pos;
    size_t k = avail < n ? (size_t)avail : n;

    if (k == 0)
        return 0;
    if (s->fetched + k > HC_DICOM_READ_LIMIT)
        return dicom_over_limit(s->run);
    memcpy(dst, s->mem + s->pos, k);
    s->pos += k;
    s->fetched += k;
    return (int)k;
}

/*
 * Refills a file source's window with the bytes at s->pos. Returns the
 * count (0 at the end of the file, or when it shrank under us), or -1.
 */
static int dicom_file_fill(hc_dicom_src *s)
{
    uint64_t want = s->size - s->pos;
    size_t got;

    if (want > HC_DICOM_BUF)
        want = HC_DICOM_BUF;
    if (s->pos > (uint64_t)LONG_MAX || fseek(s->fp, (long)s->pos, SEEK_SET) != 0)
        return dicom_fail(s->run, HC_DICOM_ERR_IO, "cannot seek to offset %llu",
                          (unsigned long long)s->pos);
    got = fread(s->buf, 1, (size_t)want, s->fp);
    if (got < want && ferror(s->fp))
        return dicom_fail(s->run, HC_DICOM_ERR_IO, "read error: %s", strerror(errno));
    s->filled += got;
    s->buf_off = s->pos;
    s->buf_len = got;
    return (int)got;
}

/* A file source: from its window, refilled as needed. The bytes handed out count against the
 * read limit, as a memory source's do (counting the window's fills instead refused a header of
 * many small elements spread over more than 1 MiB, which the memory form reads): each fill serves
 * a counted read, so the disk reads stay bounded too. */
static int dicom_file_read(hc_dicom_src *s, unsigned char *dst, size_t n)
{
    size_t done = 0;

    while (done < n) {
        if (s->pos >= s->buf_off && s->pos < s->buf_off + s->buf_len) {
            size_t at = (size_t)(s->pos - s->buf_off);
            size_t k = s->buf_len - at;
            if (k > n - done)
                k = n - done;
            if (s->fetched + k > HC_DICOM_READ_LIMIT)
                return dicom_over_limit(s->run);
            memcpy(dst + done, s->buf + at, k);
            done += k;
            s->pos += k;
            s->fetched += k;
            continue;
        }
        if (s->pos >= s->size)
            break;
        {
            int got = dicom_file_fill(s);
            if (got < 0)
                return -1;
            if (got == 0)
                break; /* the file shrank under us */
        }
    }
    return (int)done;
}

/* An inflate source: inflates its parent's bytes into dst. */
static int dicom_inflate_read(hc_dicom_src *s, unsigned char *dst, size_t n)
{
    size_t done;

    s->z->next_out = dst;
    s->z->avail_out = (uInt)n;
    while (s->z->avail_out > 0 && !s->z_end) {
        int r;
        if (s->z->avail_in == 0) {
            int got = dicom_src_read(s->parent, s->in, HC_DICOM_BUF);
            if (got < 0) {
                s->run->dflt_broken = s->run->failed != HC_DICOM_ERR_IO;
                return -1;
            }
            if (got == 0) {
                s->run->dflt_broken = 1;
                return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                                  "deflated data set ends early");
            }
            s->z->next_in = s->in;
            s->z->avail_in = (uInt)got;
        }
        r = inflate(s->z, Z_NO_FLUSH);
        if (r == Z_STREAM_END) {
            s->z_end = 1;
        } else if (r != Z_OK) {
            s->run->dflt_broken = 1;
            return dicom_fail(s->run, HC_DICOM_ERR_FORMAT, "cannot inflate data set: %s",
                              s->z->msg ? s->z->msg : "zlib error");
        }
    }
    done = n - s->z->avail_out;
    s->pos += done;
    s->fetched += done;
    if (s->fetched > HC_DICOM_READ_LIMIT) {
        s->run->dflt_broken = 1;
        return dicom_over_limit(s->run);
    }
    return (int)done;
}

/*
 * Reads up to n (<= HC_DICOM_BUF) bytes into dst. Returns the count, short
 * only at the end of the stream, or -1 after recording an error.
 */
static int dicom_src_read(hc_dicom_src *s, unsigned char *dst, size_t n)
{
    if (s->kind == SRC_MEM)
        return dicom_mem_read(s, dst, n);
    if (s->kind == SRC_FILE)
        return dicom_file_read(s, dst, n);
    return dicom_inflate_read(s, dst, n);
}

/*
 * Moves n bytes forward without reading them (inflating them, for a
 * deflated stream). Returns 0, 1 when the stream ends first, -1 on error.
 */
static int dicom_src_skip(hc_dicom_src *s, uint64_t n)
{
    if (s->kind != SRC_INFLATE) {
        if (n > s->size - s->pos)
            return 1;
        s->pos += n;
        return 0;
    }
    while (n > 0) {
        size_t k = n > HC_DICOM_BUF ? HC_DICOM_BUF : (size_t)n;
        int got = dicom_src_read(s, s->scratch, k);
        if (got < 0)
            return -1;
        if ((size_t)got < k)
            return 1;
        n -= k;
    }
    return 0;
}

/* Reads exactly n bytes or records "truncated at offset off". Returns 0/-1. */
static int dicom_src_need(hc_dicom_src *s, unsigned char *dst, size_t n,
                          uint64_t off)
{
    int got = dicom_src_read(s, dst, n);
    if (got < 0)
        return -1;
    if ((size_t)got < n)
        return dicom_truncated(s->run, off);
    return 0;
}

/* ---------------------------------------------------------------- elements */

/* Integers of the stream's byte order; p holds 2 or 4 readable bytes. */
static uint16_t dicom_u16(const unsigned char *p, int big)
{
    return big ? (uint16_t)(p[0] << 8 | p[1]) : (uint16_t)(p[1] << 8 | p[0]);
}

static uint32_t dicom_u32(const unsigned char *p, int big)
{
    if (big)
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16
               | (uint32_t)p[2] << 8 | p[3];
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8
           | p[0];
}

/* The test pydicom uses to tell a VR from the first bytes of a length. */
static int dicom_is_vr(const unsigned char *p)
{
    return p[0] >= 'A' && p[0] <= 'Z' && p[1] >= 'A' && p[1] <= 'Z';
}

/*
 * VRs whose length is 32 bits after two reserved bytes. PS3.5 6.2 says any
 * VR defined in the future will take this form too, so unknown VRs do.
 */
static int dicom_vr_short(const unsigned char *vr)
{
    static const char shorts[] = "AEASATCSDADSDTFLFDISLOLTPNSHSLSSSTTMUIULUS";
    size_t i;
    for (i = 0; i + 1 < sizeof shorts; i += 2)
        if (vr[0] == (unsigned char)shorts[i] && vr[1] == (unsigned char)shorts[i + 1])
            return 1;
    return 0;
}

/*
 * Reads a tag into e. Returns 0, 1 at a clean end of stream (no byte
 * left), or -1 on error.
 */
static int dicom_read_tag(hc_dicom_src *s, const hc_dicom_ctx *c,
                          hc_dicom_elem *e)
{
    unsigned char b[4] = { 0 };
    int got;

    e->off = s->pos;
    got = dicom_src_read(s, b, 4);
    if (got < 0)
        return -1;
    if (got == 0)
        return 1;
    if (got < 4)
        return dicom_truncated(s->run, e->off);
    e->tag = (uint32_t)dicom_u16(b, c->big) << 16 | dicom_u16(b + 2, c->big);
    return 0;
}

/*
 * Reads the VR (if any) and length of the element whose tag is in e.
 * With detect, the element may switch c between explicit and implicit VR.
 * Returns 0 or -1.
 */
static int dicom_read_len(hc_dicom_src *s, hc_dicom_ctx *c,
                          hc_dicom_elem *e, int detect)
{
    unsigned char b[4] = { 0 };

    if (dicom_src_need(s, b, 4, e->off) != 0)
        return -1;
    e->vr[0] = e->vr[1] = 0;
    if (e->tag >> 16 == 0xFFFE) {
        /* item and delimiters carry no VR in any transfer syntax */
        e->len = dicom_u32(b, c->big);
    } else {
        if (!c->explicit_vr && detect == DETECT_BOTH && dicom_is_vr(b))
            c->explicit_vr = 1;
        if (c->explicit_vr && !dicom_is_vr(b)) {
            if (detect == DETECT_NONE)
                return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                                  "invalid VR at tag (%04X,%04X)",
                                     (unsigned)(e->tag >> 16),
                                     (unsigned)(e->tag & 0xFFFF));
            c->explicit_vr = 0;
        }
        if (!c->explicit_vr) {
            e->len = dicom_u32(b, c->big);
        } else {
            e->vr[0] = b[0];
            e->vr[1] = b[1];
            if (dicom_vr_short(e->vr)) {
                e->len = dicom_u16(b + 2, c->big);
            } else {
                if (dicom_src_need(s, b, 4, e->off) != 0)
                    return -1;
                e->len = dicom_u32(b, c->big);
            }
        }
    }
    if (e->len != HC_DICOM_UNDEFINED && (e->len & 1))
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                          "odd length %lu at tag (%04X,%04X)",
                             (unsigned long)e->len, (unsigned)(e->tag >> 16),
                             (unsigned)(e->tag & 0xFFFF));
    return 0;
}

/* Forward: sequences nest. */
static int dicom_walk_items(hc_dicom_src *s, hc_dicom_ctx c,
                            uint64_t seq_off, int depth);

/*
 * Skips the value of e: a seek for a defined length, a walk over items for
 * an undefined one. Returns 0 or -1.
 */
static int dicom_skip_value(hc_dicom_src *s, const hc_dicom_ctx *c,
                            const hc_dicom_elem *e, int depth)
{
    int r;

    if (e->len == HC_DICOM_UNDEFINED) {
        hc_dicom_ctx inner = *c;
        /* PS3.5 6.2.2: an undefined-length UN holds implicit VR LE */
        if (c->explicit_vr && e->vr[0] == 'U' && e->vr[1] == 'N') {
            inner.explicit_vr = 0;
            inner.big = 0;
        }
        return dicom_walk_items(s, inner, e->off, depth + 1);
    }
    r = dicom_src_skip(s, e->len);
    if (r == 1)
        return dicom_truncated(s->run, e->off);
    return r;
}

/*
 * Walks the elements of an undefined-length item up to its delimiter.
 * Like pydicom, an item of an explicit VR data set may be implicit VR.
 */
static int dicom_walk_item(hc_dicom_src *s, hc_dicom_ctx c, int depth)
{
    hc_dicom_elem e = { 0, 0, { 0, 0 }, 0 };
    int first = 1;

    for (;;) {
        int r = dicom_read_tag(s, &c, &e);
        if (r != 0)
            return r < 0 ? -1 : dicom_truncated(s->run, e.off);
        if (dicom_read_len(s, &c, &e, first ? DETECT_TO_IMPLICIT : DETECT_NONE) != 0)
            return -1;
        first = 0;
        if (e.tag == TAG_ITEM_END)
            return 0;
        if (e.tag == TAG_SEQ_END || e.tag == TAG_ITEM)
            return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                              "malformed sequence at offset %llu",
                                 (unsigned long long)e.off);
        if (dicom_skip_value(s, &c, &e, depth) != 0)
            return -1;
    }
}

/*
 * Walks the items of an undefined-length value up to its delimiter; depth
 * counts the sequences this one is nested in.
 */
static int dicom_walk_items(hc_dicom_src *s, hc_dicom_ctx c,
                            uint64_t seq_off, int depth)
{
    hc_dicom_elem e = { 0, 0, { 0, 0 }, 0 };

    if (depth > HC_DICOM_MAX_DEPTH)
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                          "sequences nested deeper than %d at offset %llu",
                             HC_DICOM_MAX_DEPTH, (unsigned long long)seq_off);
    for (;;) {
        int r = dicom_read_tag(s, &c, &e);
        if (r != 0)
            return r < 0 ? -1 : dicom_truncated(s->run, e.off);
        if (dicom_read_len(s, &c, &e, DETECT_NONE) != 0)
            return -1;
        if (e.tag == TAG_SEQ_END)
            return 0;
        if (e.tag != TAG_ITEM)
            return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                              "malformed sequence at offset %llu",
                                 (unsigned long long)e.off);
        if (e.len == HC_DICOM_UNDEFINED)
            r = dicom_walk_item(s, c, depth);
        else
            r = dicom_skip_value(s, &c, &e, depth);
        if (r != 0)
            return -1;
    }
}

/* ---------------------------------------------------------------------- UIDs */

/*
 * Reads the UID value of e into dst (HC_DICOM_UID_SIZE bytes, owned by the
 * caller), stripping trailing space/NUL padding; "" when empty.
 * Returns 0 or -1 when the value is not a UID.
 */
static int dicom_read_uid(hc_dicom_src *s, const hc_dicom_elem *e, char *dst)
{
    unsigned char raw[HC_DICOM_UID_RAW_MAX];
    size_t n = e->len, i;
    unsigned g = (unsigned)(e->tag >> 16), el = (unsigned)(e->tag & 0xFFFF);

    if (n > HC_DICOM_UID_RAW_MAX)
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                          "UID over 64 bytes in (%04X,%04X)", g, el);
    if (dicom_src_need(s, raw, n, e->off) != 0)
        return -1;
    while (n > 0 && (raw[n - 1] == ' ' || raw[n - 1] == '\0'))
        n--;
    if (n > HC_DICOM_UID_SIZE - 1)
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                          "UID over 64 bytes in (%04X,%04X)", g, el);
    /* digits and dots, no empty component; leading zeros are tolerated */
    for (i = 0; i < n; i++) {
        int dot = raw[i] == '.';
        if (!dot && (raw[i] < '0' || raw[i] > '9'))
            break;
        if (dot && (i == 0 || i == n - 1 || raw[i - 1] == '.'))
            break;
    }
    if (i < n)
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                          "invalid UID in (%04X,%04X)", g, el);
    memcpy(dst, raw, n);
    dst[n] = '\0';
    return 0;
}

/* The info field a top-level tag's UID goes to, or NULL. */
static char *dicom_uid_slot(hc_dicom_info *info, uint32_t tag)
{
    switch (tag) {
    case TAG_MEDIA_CLASS: return info->media_sop_class_uid;
    case TAG_MEDIA_INSTANCE: return info->media_sop_instance_uid;
    case TAG_TSYNTAX: return info->transfer_syntax;
    case TAG_SOP_CLASS: return info->sop_class_uid;
    case TAG_SOP_INSTANCE: return info->sop_instance_uid;
    case TAG_STUDY: return info->study_uid;
    case TAG_SERIES: return info->series_uid;
    default: return NULL;
    }
}

/* ------------------------------------------------------------------ groups */

/*
 * Reads the File Meta Information from the current offset: every element
 * of group 0002, explicit VR LE (implicit tolerated, as pydicom does).
 * The walk, not (0002,0000), decides where the meta ends: writers that add
 * an element after computing the group length exist, and pydicom and dcmtk
 * both walk too. The group length serves to catch a file that ends inside
 * its meta at an element boundary, which the walk alone takes for a short
 * meta. Leaves s at the first byte after the meta.
 */
static int dicom_read_meta(hc_dicom_src *s, hc_dicom_info *info)
{
    hc_dicom_ctx c = { 1, 0 };
    hc_dicom_elem e = { 0, 0, { 0, 0 }, 0 };
    uint64_t gl_end = 0; /* where (0002,0000) says the meta ends, 0 if absent */
    int first = 1;

    for (;;) {
        unsigned char b[4] = { 0 };
        char *slot;
        int r;

        /* fewer than 4 bytes cannot be a meta element */
        e.off = s->pos;
        r = dicom_src_read(s, b, 4);
        if (r < 0)
            return -1;
        if (r == 4)
            e.tag = (uint32_t)dicom_u16(b, 0) << 16 | dicom_u16(b + 2, 0);
        if (r < 4 || e.tag >> 16 != 0x0002) {
            if (first)
                return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                                  "no File Meta Information");
            if (r < 4 && e.off < gl_end)
                return dicom_truncated(s->run, e.off);
            s->pos = e.off; /* a memory or file source: rewinding is free */
            return 0;
        }
        if (dicom_read_len(s, &c, &e, first ? DETECT_TO_IMPLICIT : DETECT_NONE) != 0)
            return -1;
        first = 0;
        slot = dicom_uid_slot(info, e.tag);
        if (e.tag == TAG_META_LENGTH && e.len == 4) {
            if (dicom_src_need(s, b, 4, e.off) != 0)
                return -1;
            gl_end = s->pos + dicom_u32(b, 0);
            r = 0;
        } else if (slot && e.len != HC_DICOM_UNDEFINED) {
            r = dicom_read_uid(s, &e, slot);
        } else {
            r = dicom_skip_value(s, &c, &e, 0);
        }
        if (r != 0)
            return -1;
    }
}

/*
 * Reads the data set from the current offset up to (0020,000E) or the
 * first tag past it. Returns 0 or -1.
 */
static int dicom_read_dataset(hc_dicom_src *s, hc_dicom_ctx c,
                              hc_dicom_info *info)
{
    hc_dicom_elem e = { 0, 0, { 0, 0 }, 0 };
    int first = 1;

    for (;;) {
        char *slot;
        int r = dicom_read_tag(s, &c, &e);
        if (r < 0)
            return -1;
        if (r == 1 || e.tag > TAG_SERIES)
            return 0;
        if (dicom_read_len(s, &c, &e, first ? DETECT_BOTH : DETECT_NONE) != 0)
            return -1;
        first = 0;
        slot = e.tag >> 16 == 0x0002 ? NULL : dicom_uid_slot(info, e.tag);
        if (slot && e.len != HC_DICOM_UNDEFINED)
            r = dicom_read_uid(s, &e, slot);
        else
            r = dicom_skip_value(s, &c, &e, 0);
        if (r != 0)
            return -1;
        if (e.tag == TAG_SERIES)
            return 0;
    }
}

/* ---------------------------------------------------------- transfer syntax */

enum { TS_EXPLICIT_LE, TS_IMPLICIT_LE, TS_EXPLICIT_BE, TS_DEFLATED, TS_UNKNOWN };

/* Which of the four encodings a transfer syntax UID names. */
static int dicom_ts_kind(const char *ts)
{
    static const char dicom_ts[] = "1.2.840.10008.1.2.";

    if (strcmp(ts, "1.2.840.10008.1.2") == 0
        || strcmp(ts, "1.2.840.10008.1.20") == 0) /* retired Papyrus 3 */
        return TS_IMPLICIT_LE;
    if (strcmp(ts, "1.2.840.10008.1.2.2") == 0)
        return TS_EXPLICIT_BE;
    if (strcmp(ts, "1.2.840.10008.1.2.1.99") == 0
        || strcmp(ts, "1.2.840.10008.1.2.4.95") == 0) /* JPIP Referenced Deflate */
        return TS_DEFLATED;
    /* explicit LE and every encapsulated (compressed) syntax */
    if (strncmp(ts, dicom_ts, sizeof dicom_ts - 1) == 0)
        return TS_EXPLICIT_LE;
    return TS_UNKNOWN;
}

/* ------------------------------------------------------------------- probe */

/*
 * Reads a deflated data set from base's current offset. On a broken
 * stream (not a broken data set inside a good stream) the SOP UIDs fall
 * back to the meta's and info->deflated_fallback is set.
 */
static int dicom_read_deflated(hc_dicom_src *base, hc_dicom_info *info)
{
    hc_dicom_run *run = base->run;
    hc_dicom_ctx c = { 1, 0 };
    hc_dicom_src s;
    z_stream z;
    unsigned char in[HC_DICOM_BUF], scratch[HC_DICOM_BUF];
    int r;

    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -15) != Z_OK)
        return dicom_fail(run, HC_DICOM_ERR_IO, "cannot start zlib");
    memset(&s, 0, sizeof s);
    s.kind = SRC_INFLATE;
    s.run = run;
    s.parent = base;
    s.z = &z;
    s.in = in;
    s.scratch = scratch;
    r = dicom_read_dataset(&s, c, info);
    inflateEnd(&z);
    if (r == 0 || !run->dflt_broken || info->media_sop_instance_uid[0] == '\0')
        return r;
    if (info->sop_class_uid[0] == '\0')
        memcpy(info->sop_class_uid, info->media_sop_class_uid, HC_DICOM_UID_SIZE);
    if (info->sop_instance_uid[0] == '\0')
        memcpy(info->sop_instance_uid, info->media_sop_instance_uid, HC_DICOM_UID_SIZE);
    info->deflated_fallback = 1;
    run->failed = 0;
    return 0;
}

/* Does the whole probe over a memory or file source positioned at 0. */
static int dicom_probe_src(hc_dicom_src *s, hc_dicom_info *info)
{
    static const hc_dicom_ctx ctx[] = { { 1, 0 }, { 0, 0 }, { 1, 1 } };
    unsigned char b[132] = { 0 };
    int got, kind, r;

    got = dicom_src_read(s, b, sizeof b);
    if (got < 0)
        return -1;
    if (got == 132 && memcmp(b + 128, "DICM", 4) == 0) {
        info->preamble = 1;
    } else if (got >= 8 && b[0] == 0x02 && b[1] == 0x00 && dicom_is_vr(b + 4)) {
        s->pos = 0; /* meta without preamble, explicit VR LE */
    } else if (got == 0) {
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT, "not a DICOM file (empty)");
    } else if (got >= 4 && ((b[0] == 0x08 && b[1] == 0x00) || (b[0] == 0x00 && b[1] == 0x08))) {
        /* a bare data set (group 0008, either byte order) */
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT, "no File Meta Information");
    } else {
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                          "not a DICOM file (no DICM prefix)");
    }
    if (dicom_read_meta(s, info) != 0)
        return -1;
    info->dataset_offset = s->pos;
    if (info->transfer_syntax[0] == '\0')
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                          "missing Transfer Syntax UID (0002,0010)");
    kind = dicom_ts_kind(info->transfer_syntax);
    if (kind == TS_UNKNOWN)
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT,
                          "unsupported transfer syntax %s", info->transfer_syntax);
    if (kind == TS_DEFLATED)
        r = dicom_read_deflated(s, info);
    else
        r = dicom_read_dataset(s, ctx[kind], info);
    if (r != 0)
        return -1;
    if (info->sop_instance_uid[0] == '\0')
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT, "missing SOP Instance UID");
    /*
     * Every composite instance has both (type 1), DICOMweb servers refuse
     * one without, and a data set cut at an element boundary before them
     * is only caught here. A deflated fallback has not read them.
     */
    if (info->deflated_fallback)
        return 0;
    if (info->study_uid[0] == '\0')
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT, "missing Study Instance UID");
    if (info->series_uid[0] == '\0')
        return dicom_fail(s->run, HC_DICOM_ERR_FORMAT, "missing Series Instance UID");
    return 0;
}

/* Common tail: fills the byte count and the error string. */
static int dicom_finish(hc_dicom_run *run, hc_dicom_src *s,
                        hc_dicom_info *out, int r)
{
    out->bytes_read = s->kind == SRC_FILE ? s->filled : s->fetched;
    if (r == 0) {
        if (run->errlen > 0)
            run->err[0] = '\0';
        return HC_DICOM_OK;
    }
    return run->failed ? run->failed : HC_DICOM_ERR_FORMAT;
}

/* See hc_dicom.h: out and err are the caller's, nothing is kept. */
int hc_dicom_probe_mem(const unsigned char *buf, size_t len, hc_dicom_info *out,
                       char *err, size_t errlen)
{
    hc_dicom_run run;
    hc_dicom_src s;

    memset(out, 0, sizeof *out);
    memset(&run, 0, sizeof run);
    run.err = err;
    run.errlen = err ? errlen : 0;
    memset(&s, 0, sizeof s);
    s.kind = SRC_MEM;
    s.run = &run;
    s.mem = buf;
    s.size = buf ? len : 0;
    out->size = s.size;
    return dicom_finish(&run, &s, out, dicom_probe_src(&s, out));
}

/* See hc_dicom.h: the FILE is opened and closed here. */
int hc_dicom_probe_file(const char *path, hc_dicom_info *out, char *err,
                        size_t errlen)
{
    hc_dicom_run run;
    hc_dicom_src s;
    unsigned char buf[HC_DICOM_BUF];
    long end;
    int r;

    memset(out, 0, sizeof *out);
    memset(&run, 0, sizeof run);
    run.err = err;
    run.errlen = err ? errlen : 0;
    memset(&s, 0, sizeof s);
    s.kind = SRC_FILE;
    s.run = &run;
    s.buf = buf;
    s.fp = fopen(path, "rb");
    if (s.fp == NULL) {
        dicom_fail(&run, HC_DICOM_ERR_IO, "cannot open %s: %s", path,
                   strerror(errno));
        return HC_DICOM_ERR_IO;
    }
    /* our buffer is the only one: stdio's would double every read */
    setvbuf(s.fp, NULL, _IONBF, 0);
    /* read before sizing: a directory opens, but only a read says EISDIR */
    s.buf_len = fread(buf, 1, sizeof buf, s.fp);
    s.filled = s.buf_len;
    if (ferror(s.fp)) {
        r = dicom_fail(&run, HC_DICOM_ERR_IO, "cannot read %s: %s", path,
                       strerror(errno));
    } else if (fseek(s.fp, 0, SEEK_END) != 0 || (end = ftell(s.fp)) < 0) {
        r = dicom_fail(&run, HC_DICOM_ERR_IO, "cannot get the size of %s: %s",
                       path, strerror(errno));
    } else {
        s.size = (uint64_t)end;
        if (s.buf_len > s.size) /* it shrank between the read and the seek */
            s.buf_len = (size_t)s.size;
        out->size = s.size;
        r = dicom_probe_src(&s, out);
    }
    fclose(s.fp);
    return dicom_finish(&run, &s, out, r);
}
