/* SPDX-License-Identifier: MIT */
/*
 * Tests of the DICOM header probe (src/hc_dicom.c) over byte buffers
 * crafted here: every transfer syntax, no preamble, nested undefined-length
 * sequences, UN, deflated with and without fallback, every error, a cut at
 * every offset of valid headers, the read bound, and a replay of every file
 * in the directories named on the command line (fuzz findings and seeds),
 * also through fuzz/fuzz_dicom_diff.c's checks (compiled in): for every
 * directory D/dicom named, D/dicom_diff is replayed as well, and each file of
 * both goes through both. Each buffer is probed both in memory and as a file;
 * the two must agree.
 * Prints one line per failure and "N passed, N failed"; exits 1 on failure.
 * Build: see the comment at the end of this file.
 */
#define _POSIX_C_SOURCE 200809L
#define LLVMFuzzerTestOneInput hc_test_fuzz_dicom_diff
#include "../../fuzz/fuzz_dicom_diff.c"
#undef LLVMFuzzerTestOneInput

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "hc_dicom.h"

#define SOP_CLASS "1.2.840.10008.5.1.4.1.1.7"
#define SOP_INST "1.2.826.0.1.3680043.10.1234.1.1"
#define STUDY "1.2.826.0.1.3680043.10.1234.2"
#define SERIES "1.2.826.0.1.3680043.10.1234.3"
#define TS_EXPL_LE "1.2.840.10008.1.2.1"
#define TS_IMPL_LE "1.2.840.10008.1.2"
#define TS_EXPL_BE "1.2.840.10008.1.2.2"
#define TS_DEFLATED "1.2.840.10008.1.2.1.99"
#define TS_JPEG "1.2.840.10008.1.2.4.50"
#define UNDEF 0xFFFFFFFFul

/* Counters and the scratch file live here and are passed around. */
struct tstate {
    int passed;
    int failed;
    char tmp[64];
};
#include "hc_test.h"


/* ------------------------------------------------------------- builders */

/* A growable byte buffer; the test owns p and frees it. */
typedef struct tb {
    unsigned char *p;
    size_t len, cap;
} tb;

typedef struct mode {
    int explicit_vr, big;
} mode;

static const mode EXPL_LE = { 1, 0 }, IMPL_LE = { 0, 0 }, EXPL_BE = { 1, 1 };

/* Appends n bytes, growing b->p (owned by the test). Exits on OOM. */
static void tb_put(tb *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) {
            perror("realloc");
            exit(2);
        }
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
}

/* Appends integers, tags and element headers in the byte order given. */
static void tb_u16(tb *b, unsigned v, int big)
{
    unsigned char x[2];
    x[big ? 0 : 1] = (unsigned char)(v >> 8);
    x[big ? 1 : 0] = (unsigned char)v;
    tb_put(b, x, 2);
}

static void tb_u32(tb *b, unsigned long v, int big)
{
    unsigned char x[4];
    int i;
    for (i = 0; i < 4; i++)
        x[big ? 3 - i : i] = (unsigned char)(v >> (8 * i));
    tb_put(b, x, 4);
}

static void tb_tag(tb *b, mode m, unsigned g, unsigned e)
{
    tb_u16(b, g, m.big);
    tb_u16(b, e, m.big);
}

static int vr_long(const char *vr)
{
    static const char *longs[] = { "OB", "OD", "OF", "OL", "OV", "OW", "SQ",
                                   "SV", "UC", "UN", "UR", "UT", "UV", "ZZ" };
    size_t i;
    for (i = 0; i < sizeof longs / sizeof longs[0]; i++)
        if (strcmp(vr, longs[i]) == 0)
            return 1;
    return 0;
}

static void tb_head(tb *b, mode m, unsigned g, unsigned e, const char *vr,
                    unsigned long len)
{
    tb_tag(b, m, g, e);
    if (!m.explicit_vr) {
        tb_u32(b, len, m.big);
        return;
    }
    tb_put(b, vr, 2);
    if (vr_long(vr)) {
        tb_u16(b, 0, m.big);
        tb_u32(b, len, m.big);
    } else {
        tb_u16(b, (unsigned)len, m.big);
    }
}

static void tb_elem(tb *b, mode m, unsigned g, unsigned e, const char *vr,
                    const void *v, size_t n)
{
    tb_head(b, m, g, e, vr, n);
    tb_put(b, v, n);
}

/* A text value padded to even length with pad. */
static void tb_str(tb *b, mode m, unsigned g, unsigned e, const char *vr,
                   const char *s, char pad)
{
    size_t n = strlen(s);
    tb_head(b, m, g, e, vr, n + (n & 1));
    tb_put(b, s, n);
    if (n & 1)
        tb_put(b, &pad, 1);
}

static void tb_uid(tb *b, mode m, unsigned g, unsigned e, const char *uid)
{
    tb_str(b, m, g, e, "UI", uid, '\0');
}

static void tb_delim(tb *b, mode m, unsigned e, unsigned long len)
{
    tb_tag(b, m, 0xFFFE, e);
    tb_u32(b, len, m.big);
}

#define tb_item(b, m) tb_delim(b, m, 0xE000, UNDEF)
#define tb_item_end(b, m) tb_delim(b, m, 0xE00D, 0)
#define tb_seq_end(b, m) tb_delim(b, m, 0xE0DD, 0)

static void tb_preamble(tb *b)
{
    static const unsigned char zero[128];
    tb_put(b, zero, 128);
    tb_put(b, "DICM", 4);
}

/* File Meta Information; gl_delta skews (0002,0000), -1 leaves it out. */
static void tb_meta_gl(tb *b, const char *ts, long gl_delta)
{
    tb m = { 0 };
    tb_elem(&m, EXPL_LE, 2, 1, "OB", "\0\1", 2);
    tb_uid(&m, EXPL_LE, 2, 2, SOP_CLASS);
    tb_uid(&m, EXPL_LE, 2, 3, SOP_INST);
    if (ts)
        tb_uid(&m, EXPL_LE, 2, 0x10, ts);
    tb_uid(&m, EXPL_LE, 2, 0x12, "1.2.826.0.1.3680043.10.1234");
    if (gl_delta != -1) {
        tb_head(b, EXPL_LE, 2, 0, "UL", 4);
        tb_u32(b, (unsigned long)((long)m.len + gl_delta), 0);
    }
    tb_put(b, m.p, m.len);
    free(m.p);
}

static void tb_meta(tb *b, const char *ts)
{
    tb_meta_gl(b, ts, 0);
}

enum {
    DS_SEQ = 1,       /* nested undefined-length sequences before the UIDs */
    DS_UN = 2,        /* an undefined-length UN (implicit LE inside) */
    DS_NO_SERIES = 4, /* the data set ends after Study Instance UID */
    DS_PIXELS = 8,    /* rows and pixel data after the header */
    DS_DEF_SQ = 16,   /* defined-length sequence and items */
    DS_ENCAP = 32,    /* an undefined-length OB with fragments */
    DS_NO_SOP = 64
};

/* Nested sequences at (g,e): two items, the first holding a sequence. */
static void tb_nested(tb *b, mode m, unsigned g, unsigned e)
{
    tb_head(b, m, g, e, "SQ", UNDEF);
    tb_item(b, m);
    tb_str(b, m, 8, 0x100, "SH", "en", ' ');
    tb_head(b, m, 0x40, 0xA170, "SQ", UNDEF);
    tb_item(b, m);
    tb_str(b, m, 8, 0x100, "SH", "121311", ' ');
    tb_head(b, m, 0x40, 0xA170, "SQ", UNDEF); /* empty sequence */
    tb_seq_end(b, m);
    tb_item_end(b, m);
    tb_item(b, m); /* empty item */
    tb_item_end(b, m);
    tb_seq_end(b, m);
    tb_item_end(b, m);
    tb_delim(b, m, 0xE000, 10); /* one SH of 2 bytes */
    tb_str(b, m, 8, 0x100, "SH", "fr", ' ');
    tb_seq_end(b, m);
}

/*
 * Appends a data set and returns the offset just past Series Instance UID
 * (or past Study Instance UID with DS_NO_SERIES).
 */
static size_t tb_dataset(tb *b, mode m, int flags)
{
    size_t end;

    tb_str(b, m, 8, 5, "CS", "ISO_IR 100", ' ');
    if (flags & DS_SEQ)
        tb_nested(b, m, 8, 6);
    tb_str(b, m, 8, 8, "CS", "DERIVED\\SECONDARY", ' ');
    tb_uid(b, m, 8, 0x16, SOP_CLASS);
    if (!(flags & DS_NO_SOP))
        tb_uid(b, m, 8, 0x18, SOP_INST);
    tb_str(b, m, 8, 0x60, "CS", "OT", ' ');
    if (flags & DS_SEQ) {
        tb_nested(b, m, 8, 0x1140);
        tb_str(b, m, 9, 0x10, "LO", "HEALTHCARE TEST", ' ');
        tb_nested(b, m, 9, 0x1001); /* private: in implicit VR, unknown SQ */
    }
    if (flags & DS_UN) {
        tb_head(b, m, 9, 0x1002, "UN", UNDEF);
        tb_item(b, IMPL_LE);
        tb_str(b, IMPL_LE, 8, 0x100, "SH", "x", ' ');
        tb_head(b, IMPL_LE, 8, 0x1115, "SQ", UNDEF);
        tb_item(b, IMPL_LE);
        tb_uid(b, IMPL_LE, 8, 0x1150, SOP_CLASS);
        tb_item_end(b, IMPL_LE);
        tb_seq_end(b, IMPL_LE);
        tb_item_end(b, IMPL_LE);
        tb_seq_end(b, IMPL_LE);
    }
    if (flags & DS_DEF_SQ) {
        tb it = { 0 }, sq = { 0 };
        tb_str(&it, m, 8, 0x100, "SH", "121311", ' ');
        tb_uid(&it, m, 8, 0x1150, SOP_CLASS);
        tb_delim(&sq, m, 0xE000, it.len);
        tb_put(&sq, it.p, it.len);
        tb_delim(&sq, m, 0xE000, 0);
        tb_head(b, m, 8, 0x1110, "SQ", sq.len);
        tb_put(b, sq.p, sq.len);
        free(it.p);
        free(sq.p);
    }
    if (flags & DS_ENCAP) {
        static const unsigned char frag[6] = { 1, 2, 3, 4, 5, 6 };
        tb_head(b, m, 0x11, 0x1010, "OB", UNDEF);
        tb_delim(b, m, 0xE000, 0);
        tb_delim(b, m, 0xE000, sizeof frag);
        tb_put(b, frag, sizeof frag);
        tb_seq_end(b, m);
    }
    tb_str(b, m, 0x10, 0x10, "PN", "Probe^Test", ' ');
    tb_uid(b, m, 0x20, 0xD, STUDY);
    end = b->len;
    if (!(flags & DS_NO_SERIES)) {
        tb_uid(b, m, 0x20, 0xE, SERIES);
        end = b->len;
    }
    if (flags & DS_PIXELS) {
        static const unsigned char px[4] = { 1, 2, 3, 4 };
        tb_elem(b, m, 0x28, 0x10, "US", m.big ? "\0\2" : "\2\0", 2);
        tb_elem(b, m, 0x7FE0, 0x10, "OW", px, sizeof px);
    }
    return end;
}

/* Appends data raw-deflated (what 1.2.840.10008.1.2.1.99 holds). */
static void tb_deflate(tb *b, const unsigned char *data, size_t n)
{
    z_stream z;
    unsigned char out[4096];
    int r;

    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        exit(2);
    z.next_in = (unsigned char *)data;
    z.avail_in = (uInt)n;
    do {
        z.next_out = out;
        z.avail_out = sizeof out;
        r = deflate(&z, Z_FINISH);
        tb_put(b, out, sizeof out - z.avail_out);
    } while (r == Z_OK);
    deflateEnd(&z);
    if (b->len & 1)
        tb_put(b, "", 1);
}

/* ------------------------------------------------------------- the cases */

/* A file: preamble, meta with transfer syntax ts (NULL: none), a data set in mode m. Returns the
 * header end. */
static size_t tb_file(tb *b, const char *ts, mode m, int flags)
{
    tb_preamble(b);
    tb_meta(b, ts);
    return tb_dataset(b, m, flags);
}

/* The same with a group length off by gl_delta (-1: none). */
static size_t tb_file_gl(tb *b, long gl_delta)
{
    tb_preamble(b);
    tb_meta_gl(b, TS_EXPL_LE, gl_delta);
    return tb_dataset(b, EXPL_LE, 0);
}

/* Each builder fills b and returns the header end (0 when not meaningful). */

static size_t b_expl_le(tb *b) { return tb_file(b, TS_EXPL_LE, EXPL_LE, DS_PIXELS); }
static size_t b_impl_le(tb *b) { return tb_file(b, TS_IMPL_LE, IMPL_LE, DS_PIXELS); }
static size_t b_expl_be(tb *b) { return tb_file(b, TS_EXPL_BE, EXPL_BE, DS_PIXELS); }
static size_t b_jpeg(tb *b) { return tb_file(b, TS_JPEG, EXPL_LE, DS_PIXELS); }
static size_t b_no_preamble(tb *b)
{
    tb_meta(b, TS_EXPL_LE);
    return tb_dataset(b, EXPL_LE, DS_SEQ);
}
/* Every kind of sequence before the UIDs. */
#define DS_SEQS (DS_SEQ | DS_UN | DS_DEF_SQ | DS_ENCAP)
static size_t b_seq_le(tb *b) { return tb_file(b, TS_EXPL_LE, EXPL_LE, DS_SEQS); }
static size_t b_seq_impl(tb *b) { return tb_file(b, TS_IMPL_LE, IMPL_LE, DS_SEQ | DS_DEF_SQ); }
static size_t b_seq_be(tb *b) { return tb_file(b, TS_EXPL_BE, EXPL_BE, DS_SEQS); }
static size_t b_gl_none(tb *b) { return tb_file_gl(b, -1); }
static size_t b_gl_big(tb *b) { return tb_file_gl(b, 500); }
static size_t b_gl_small(tb *b) { return tb_file_gl(b, -30); }

/* Declared explicit VR, written implicit (pydicom's test SC_rgb_jpeg.dcm). */
static size_t b_ts_lies(tb *b) { return tb_file(b, TS_JPEG, IMPL_LE, DS_SEQ); }

/* An explicit VR sequence whose item is written in implicit VR. */
static size_t b_item_implicit(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_str(b, EXPL_LE, 8, 5, "CS", "ISO_IR 100", ' ');
    tb_head(b, EXPL_LE, 8, 6, "SQ", UNDEF);
    tb_item(b, EXPL_LE);
    tb_str(b, IMPL_LE, 8, 0x100, "SH", "en", ' ');
    tb_item_end(b, EXPL_LE);
    tb_seq_end(b, EXPL_LE);
    tb_uid(b, EXPL_LE, 8, 0x16, SOP_CLASS);
    tb_uid(b, EXPL_LE, 8, 0x18, SOP_INST);
    tb_uid(b, EXPL_LE, 0x20, 0xD, STUDY);
    tb_uid(b, EXPL_LE, 0x20, 0xE, SERIES);
    return b->len;
}

static size_t b_deflated(tb *b)
{
    tb d = { 0 };
    tb_preamble(b);
    tb_meta(b, TS_DEFLATED);
    tb_dataset(&d, EXPL_LE, DS_SEQ | DS_UN | DS_PIXELS);
    tb_deflate(b, d.p, d.len);
    free(d.p);
    return 0;
}

static size_t b_deflated_garbage(tb *b)
{
    static const unsigned char junk[16] = { 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF };
    tb_preamble(b);
    tb_meta(b, TS_DEFLATED);
    tb_put(b, junk, sizeof junk);
    return 0;
}

/* More than the read limit inflated before SOP Instance UID. */
static size_t b_deflated_huge(tb *b)
{
    tb d = { 0 };
    unsigned char *zeros = calloc(1, 3u << 20);
    tb_preamble(b);
    tb_meta(b, TS_DEFLATED);
    tb_str(&d, EXPL_LE, 8, 5, "CS", "ISO_IR 100", ' ');
    tb_elem(&d, EXPL_LE, 8, 7, "OB", zeros, 3u << 20);
    tb_dataset(&d, EXPL_LE, 0);
    tb_deflate(b, d.p, d.len);
    free(d.p);
    free(zeros);
    return 0;
}

/* 10,000 items of a sequence before Study Instance UID, 128 bytes each, their values skipped:
 * the probe fetches 200 KB of headers, but a file's 4 KiB windows cover 1.28 MB (as a SEG's
 * Referenced Series Sequence). The file form counted the windows and refused it. */
static size_t b_spread_header(tb *b)
{
    static const unsigned char value[100];
    int i;
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_uid(b, EXPL_LE, 8, 0x16, SOP_CLASS);
    tb_uid(b, EXPL_LE, 8, 0x18, SOP_INST);
    tb_head(b, EXPL_LE, 8, 0x1115, "SQ", UNDEF);
    for (i = 0; i < 10000; i++) {
        tb_item(b, EXPL_LE);
        tb_elem(b, EXPL_LE, 0x11, 0x1010, "OB", value, sizeof value);
        tb_item_end(b, EXPL_LE);
    }
    tb_seq_end(b, EXPL_LE);
    tb_uid(b, EXPL_LE, 0x20, 0xD, STUDY);
    tb_uid(b, EXPL_LE, 0x20, 0xE, SERIES);
    return 0;
}

/* A 10 MB value before Study Instance UID: skipped, not read. */
static size_t b_big_skip(tb *b)
{
    size_t n = 10u << 20;
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_uid(b, EXPL_LE, 8, 0x16, SOP_CLASS);
    tb_uid(b, EXPL_LE, 8, 0x18, SOP_INST);
    tb_head(b, EXPL_LE, 0x11, 0x1010, "OB", n);
    if (b->len + n > b->cap) {
        b->p = realloc(b->p, b->len + n + 1024);
        b->cap = b->len + n + 1024;
    }
    memset(b->p + b->len, 0xAB, n);
    b->len += n;
    tb_uid(b, EXPL_LE, 0x20, 0xD, STUDY);
    tb_uid(b, EXPL_LE, 0x20, 0xE, SERIES);
    return 0;
}

/* Pixel data with a length far past the end: never looked at. */
static size_t b_stop(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_dataset(b, EXPL_LE, 0);
    tb_head(b, EXPL_LE, 0x7FE0, 0x10, "OW", 0x7FFFFFF0ul);
    tb_put(b, "garbage", 7);
    return 0;
}

static size_t b_padded_uid(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_uid(b, EXPL_LE, 8, 0x16, SOP_CLASS);
    tb_str(b, EXPL_LE, 8, 0x18, "UI", SOP_INST "  ", ' '); /* space padded */
    tb_elem(b, EXPL_LE, 0x20, 0xD, "UI", STUDY "\0\0\0", sizeof STUDY + 2);
    tb_uid(b, EXPL_LE, 0x20, 0xE, SERIES);
    return b->len;
}

#define UID64 "1.2.826.0.1.3680043.10.1234.999999999999999999999999999999999999"
#define UID65 UID64 "9"

static size_t b_uid64(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_uid(b, EXPL_LE, 8, 0x16, SOP_CLASS);
    tb_uid(b, EXPL_LE, 8, 0x18, UID64);
    tb_uid(b, EXPL_LE, 0x20, 0xD, STUDY);
    tb_uid(b, EXPL_LE, 0x20, 0xE, SERIES);
    return b->len;
}

static size_t b_uid65(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_uid(b, EXPL_LE, 8, 0x18, UID65);
    return 0;
}

static size_t b_uid_huge(tb *b)
{
    static char v[1000];
    memset(v, '1', sizeof v - 1);
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_uid(b, EXPL_LE, 0x20, 0xE, v);
    return 0;
}

static size_t b_uid_letters(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_uid(b, EXPL_LE, 8, 0x18, "1.2.3.abc");
    return 0;
}

static size_t b_uid_empty_comp(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_uid(b, EXPL_LE, 8, 0x18, "1.2..3");
    return 0;
}

static size_t b_uid_trailing_dot(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_IMPL_LE);
    tb_uid(b, IMPL_LE, 0x20, 0xD, "1.2.3.");
    return 0;
}

static size_t b_ts_invalid(tb *b) { tb_preamble(b); tb_meta(b, "1.2.840.10008.1.2.x"); return 0; }

static size_t b_odd(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_elem(b, EXPL_LE, 8, 8, "CS", "ORIGINA", 7);
    tb_uid(b, EXPL_LE, 8, 0x18, SOP_INST);
    return 0;
}

static size_t b_odd_implicit(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_IMPL_LE);
    tb_head(b, IMPL_LE, 0x10, 0x10, "PN", 0x10001ul);
    return 0;
}

static size_t b_text(tb *b)
{
    const char *s = "This is a text file, not DICOM. It is long enough to have a "
                    "128-byte preamble and a prefix, but no DICM at offset 128.\n";
    tb_put(b, s, strlen(s));
    tb_put(b, s, strlen(s));
    return 0;
}

static size_t b_empty(tb *b) { (void)b; return 0; }
static size_t b_short(tb *b) { tb_put(b, "DI", 2); return 0; }
static size_t b_bare(tb *b) { return tb_dataset(b, EXPL_LE, 0), 0; }
static size_t b_bare_be(tb *b) { return tb_dataset(b, EXPL_BE, 0), 0; }
static size_t b_dicm_no_meta(tb *b) { tb_preamble(b); tb_dataset(b, EXPL_LE, 0); return 0; }
static size_t b_dicm_only(tb *b) { tb_preamble(b); return 0; }
static size_t b_no_ts(tb *b) { tb_file(b, NULL, EXPL_LE, 0); return 0; }
static size_t b_bad_ts(tb *b) { tb_file(b, "1.2.3.4", EXPL_LE, 0); return 0; }
static size_t b_private_ts(tb *b) { tb_preamble(b); tb_meta(b, "1.2.840.113619.5.2"); return 0; }
static size_t b_no_sop(tb *b) { tb_file(b, TS_EXPL_LE, EXPL_LE, DS_NO_SOP); return 0; }
static size_t b_no_series(tb *b) { tb_file(b, TS_EXPL_LE, EXPL_LE, DS_NO_SERIES); return 0; }

static size_t b_no_study(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_uid(b, EXPL_LE, 8, 0x18, SOP_INST);
    tb_uid(b, EXPL_LE, 0x20, 0xE, SERIES);
    return 0;
}

static size_t b_deep(tb *b)
{
    int i;
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    for (i = 0; i < 40; i++) {
        tb_head(b, EXPL_LE, 8, 6, "SQ", UNDEF);
        tb_item(b, EXPL_LE);
    }
    for (i = 0; i < 40; i++) {
        tb_item_end(b, EXPL_LE);
        tb_seq_end(b, EXPL_LE);
    }
    return 0;
}

static size_t b_bad_item(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_head(b, EXPL_LE, 8, 6, "SQ", UNDEF);
    tb_str(b, EXPL_LE, 8, 0x100, "SH", "en", ' ');
    return 0;
}

static size_t b_bad_vr(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_str(b, EXPL_LE, 8, 5, "CS", "ISO_IR 100", ' ');
    tb_tag(b, EXPL_LE, 8, 8);
    tb_put(b, "c\0\2\0ab", 6);
    return 0;
}

/* An unknown but well-formed VR takes a 32-bit length (PS3.5 6.2). */
static size_t b_future_vr(tb *b)
{
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    tb_elem(b, EXPL_LE, 8, 7, "ZZ", "abcd", 4);
    tb_uid(b, EXPL_LE, 8, 0x16, SOP_CLASS);
    tb_uid(b, EXPL_LE, 8, 0x18, SOP_INST);
    tb_uid(b, EXPL_LE, 0x20, 0xD, STUDY);
    tb_uid(b, EXPL_LE, 0x20, 0xE, SERIES);
    return b->len;
}

/* Enough tiny elements to pass the read limit before any UID. */
static size_t b_limit(tb *b)
{
    long i;
    tb_preamble(b);
    tb_meta(b, TS_EXPL_LE);
    for (i = 0; i < 140000; i++)
        tb_head(b, EXPL_LE, 9, 0x1000, "LO", 0);
    tb_uid(b, EXPL_LE, 8, 0x18, SOP_INST);
    return 0;
}

typedef struct tcase {
    const char *name;
    size_t (*build)(tb *b);
    const char *err; /* expected reason, NULL for success */
    const char *ts;  /* expected transfer syntax on success */
    int preamble;
    int fallback;
    const char *sop; /* expected SOP Instance UID, NULL for SOP_INST */
} tcase;

static const tcase cases[] = {
    { "explicit LE", b_expl_le, NULL, TS_EXPL_LE, 1, 0, NULL },
    { "implicit LE", b_impl_le, NULL, TS_IMPL_LE, 1, 0, NULL },
    { "explicit BE", b_expl_be, NULL, TS_EXPL_BE, 1, 0, NULL },
    { "JPEG baseline", b_jpeg, NULL, TS_JPEG, 1, 0, NULL },
    { "deflated", b_deflated, NULL, TS_DEFLATED, 1, 0, NULL },
    { "no preamble", b_no_preamble, NULL, TS_EXPL_LE, 0, 0, NULL },
    { "sequences explicit LE", b_seq_le, NULL, TS_EXPL_LE, 1, 0, NULL },
    { "sequences implicit LE", b_seq_impl, NULL, TS_IMPL_LE, 1, 0, NULL },
    { "sequences explicit BE", b_seq_be, NULL, TS_EXPL_BE, 1, 0, NULL },
    { "no group length", b_gl_none, NULL, TS_EXPL_LE, 1, 0, NULL },
    { "group length too big", b_gl_big, NULL, TS_EXPL_LE, 1, 0, NULL },
    { "group length too small", b_gl_small, NULL, TS_EXPL_LE, 1, 0, NULL },
    { "explicit TS, implicit data set", b_ts_lies, NULL, TS_JPEG, 1, 0, NULL },
    { "implicit item in explicit SQ", b_item_implicit, NULL, TS_EXPL_LE, 1, 0, NULL },
    { "deflated garbage", b_deflated_garbage, NULL, TS_DEFLATED, 1, 1, NULL },
    { "deflated over the limit", b_deflated_huge, NULL, TS_DEFLATED, 1, 1, NULL },
    { "10 MB value skipped", b_big_skip, NULL, TS_EXPL_LE, 1, 0, NULL },
    { "1.28 MB of items, values skipped", b_spread_header, NULL, TS_EXPL_LE, 1, 0, NULL },
    { "pixel data never read", b_stop, NULL, TS_EXPL_LE, 1, 0, NULL },
    { "padded UIDs", b_padded_uid, NULL, TS_EXPL_LE, 1, 0, NULL },
    { "64-byte UID", b_uid64, NULL, TS_EXPL_LE, 1, 0, UID64 },
    { "future VR", b_future_vr, NULL, TS_EXPL_LE, 1, 0, NULL },
    { "65-byte UID", b_uid65, "UID over 64 bytes in (0008,0018)", NULL, 0, 0, NULL },
    { "999-byte UID", b_uid_huge, "UID over 64 bytes in (0020,000E)", NULL, 0, 0, NULL },
    { "UID with letters", b_uid_letters, "invalid UID in (0008,0018)", NULL, 0, 0, NULL },
    { "UID with empty component", b_uid_empty_comp,
      "invalid UID in (0008,0018)", NULL, 0, 0, NULL },
    { "UID ending in a dot", b_uid_trailing_dot, "invalid UID in (0020,000D)", NULL, 0, 0, NULL },
    { "invalid TS UID", b_ts_invalid, "invalid UID in (0002,0010)", NULL, 0, 0, NULL },
    { "odd length", b_odd, "odd length 7 at tag (0008,0008)", NULL, 0, 0, NULL },
    { "odd length implicit", b_odd_implicit,
      "odd length 65537 at tag (0010,0010)", NULL, 0, 0, NULL },
    { "text", b_text, "not a DICOM file (no DICM prefix)", NULL, 0, 0, NULL },
    { "empty", b_empty, "not a DICOM file (empty)", NULL, 0, 0, NULL },
    { "two bytes", b_short, "not a DICOM file (no DICM prefix)", NULL, 0, 0, NULL },
    { "bare data set", b_bare, "no File Meta Information", NULL, 0, 0, NULL },
    { "bare data set BE", b_bare_be, "no File Meta Information", NULL, 0, 0, NULL },
    { "DICM then data set", b_dicm_no_meta, "no File Meta Information", NULL, 0, 0, NULL },
    { "DICM then nothing", b_dicm_only, "no File Meta Information", NULL, 0, 0, NULL },
    { "no transfer syntax", b_no_ts, "missing Transfer Syntax UID (0002,0010)", NULL, 0, 0, NULL },
    { "unknown transfer syntax", b_bad_ts,
      "unsupported transfer syntax 1.2.3.4", NULL, 0, 0, NULL },
    { "private transfer syntax", b_private_ts,
      "unsupported transfer syntax 1.2.840.113619.5.2", NULL, 0, 0, NULL },
    { "no SOP Instance UID", b_no_sop, "missing SOP Instance UID", NULL, 0, 0, NULL },
    { "no Series Instance UID", b_no_series, "missing Series Instance UID", NULL, 0, 0, NULL },
    { "no Study Instance UID", b_no_study, "missing Study Instance UID", NULL, 0, 0, NULL },
    { "40 nested sequences", b_deep,
      "sequences nested deeper than 32 at offset 936", NULL, 0, 0, NULL },
    { "element where an item belongs", b_bad_item,
      "malformed sequence at offset 308", NULL, 0, 0, NULL },
    { "VR not letters", b_bad_vr, "invalid VR at tag (0008,0008)", NULL, 0, 0, NULL },
    { "read limit", b_limit, "header exceeds the read limit of 1048576 bytes", NULL, 0, 0, NULL },
};

/* ------------------------------------------------------------- probing */

static void write_file(const char *path, const unsigned char *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
}

/* Probes p[0..n) in memory and as a file; checks both agree. */
static int probe_both(tstate *t, const char *name, const unsigned char *p,
                      size_t n, hc_dicom_info *mi, char *merr, size_t errlen)
{
    hc_dicom_info fi;
    char ferr[256];
    int rm, rf;

    rm = hc_dicom_probe_mem(p, n, mi, merr, errlen);
    write_file(t->tmp, p, n);
    rf = hc_dicom_probe_file(t->tmp, &fi, ferr, sizeof ferr);
    fi.bytes_read = mi->bytes_read;
    check(t, rm == rf && (rm != 0 ? strcmp(merr, ferr) == 0
                                  : memcmp(mi, &fi, sizeof fi) == 0),
          "%s: memory and file disagree (%d '%s' / %d '%s')", name, rm,
          rm ? merr : "", rf, rf ? ferr : "");
    return rm;
}

/* Builds one case, probes it both ways and checks what it says. */
static void run_case(tstate *t, const tcase *c)
{
    tb b = { 0 };
    hc_dicom_info info;
    char err[256];
    int rc;

    c->build(&b);
    rc = probe_both(t, c->name, b.p, b.len, &info, err, sizeof err);
    if (c->err) {
        check(t, rc == HC_DICOM_ERR_FORMAT && strcmp(err, c->err) == 0,
              "%s: want error '%s', got %d '%s'", c->name, c->err, rc, rc ? err : "");
    } else if (rc != HC_DICOM_OK) {
        check(t, 0, "%s: want success, got %d '%s'", c->name, rc, err);
    } else {
        const char *sop = c->sop ? c->sop : SOP_INST;
        check(t, strcmp(info.transfer_syntax, c->ts) == 0, "%s: ts '%s'", c->name,
              info.transfer_syntax);
        check(t, strcmp(info.sop_instance_uid, sop) == 0, "%s: sop instance '%s'", c->name,
              info.sop_instance_uid);
        check(t, strcmp(info.sop_class_uid, SOP_CLASS) == 0, "%s: sop class '%s'", c->name,
              info.sop_class_uid);
        check(t, strcmp(info.media_sop_instance_uid, SOP_INST) == 0, "%s: media instance", c->name);
        check(t, strcmp(info.media_sop_class_uid, SOP_CLASS) == 0, "%s: media class", c->name);
        check(t, info.preamble == c->preamble, "%s: preamble %d", c->name, info.preamble);
        check(t, info.deflated_fallback == c->fallback, "%s: fallback %d", c->name,
              info.deflated_fallback);
        check(t, info.size == b.len, "%s: size %llu", c->name, (unsigned long long)info.size);
        if (!c->fallback) {
            check(t, strcmp(info.study_uid, STUDY) == 0, "%s: study '%s'", c->name, info.study_uid);
            check(t, strcmp(info.series_uid, SERIES) == 0, "%s: series '%s'", c->name,
                  info.series_uid);
        } else {
            check(t, info.study_uid[0] == '\0' && info.series_uid[0] == '\0',
                  "%s: fallback invents study/series", c->name);
        }
    }
    free(b.p);
}

/* The meta's end, which is where every builder's data set starts. */
static size_t meta_end(const tcase *c)
{
    tb b = { 0 };
    hc_dicom_info info;
    char err[256];

    c->build(&b);
    hc_dicom_probe_mem(b.p, b.len, &info, err, sizeof err);
    free(b.p);
    return (size_t)info.dataset_offset;
}

/* Cuts a valid file at every offset up to its header end. */
static void run_cuts(tstate *t, const tcase *c)
{
    tb b = { 0 };
    hc_dicom_info info;
    char err[256], name[128];
    size_t end = c->build(&b), cut, fails = 0, meta = meta_end(c);
    int deflated = strcmp(c->ts, TS_DEFLATED) == 0;

    if (deflated)
        end = b.len;
    for (cut = 0; cut < end; cut++) {
        int rc;
        snprintf(name, sizeof name, "%s cut at %lu", c->name, (unsigned long)cut);
        rc = probe_both(t, name, b.p, cut, &info, err, sizeof err);
        if (deflated && cut >= meta) {
            /* a cut stream is a broken one and the meta answers, unless
             * the part left holds the whole header */
            if (rc != HC_DICOM_OK || strcmp(info.sop_instance_uid, SOP_INST) != 0
                || (!info.deflated_fallback && strcmp(info.series_uid, SERIES) != 0))
                fails++;
        } else if (rc == HC_DICOM_OK || err[0] == '\0') {
            fails++;
        }
    }
    check(t, fails == 0, "%s: %lu of %lu cuts not refused", c->name,
          (unsigned long)fails, (unsigned long)end);
    if (!deflated) {
        snprintf(name, sizeof name, "%s cut at header end", c->name);
        check(t, probe_both(t, name, b.p, end, &info, err, sizeof err) == HC_DICOM_OK
                     && strcmp(info.series_uid, SERIES) == 0,
              "%s: header cut at its end %lu refused: %s", c->name, (unsigned long)end, err);
    }
    free(b.p);
}

/* What the probe fetches: headers and UIDs, never skipped values. */
static void run_bounds(tstate *t)
{
    tb b = { 0 };
    hc_dicom_info info;
    char err[256];

    b_big_skip(&b);
    check(t, hc_dicom_probe_mem(b.p, b.len, &info, err, sizeof err) == 0
                 && info.bytes_read < 512,
          "10 MB skip: memory probe fetched %llu bytes", (unsigned long long)info.bytes_read);
    write_file(t->tmp, b.p, b.len);
    check(t, hc_dicom_probe_file(t->tmp, &info, err, sizeof err) == 0
                 && info.bytes_read <= 3 * 4096,
          "10 MB skip: file probe read %llu bytes", (unsigned long long)info.bytes_read);
    free(b.p);
    check(t, hc_dicom_probe_mem(NULL, 0, &info, err, sizeof err) == HC_DICOM_ERR_FORMAT,
          "NULL buffer accepted");
    check(t,
          hc_dicom_probe_mem((const unsigned char *)"x", 1, &info, NULL, 0) == HC_DICOM_ERR_FORMAT,
          "NULL err buffer");
    check(t, hc_dicom_probe_mem((const unsigned char *)"x", 1, &info, err, 8) == HC_DICOM_ERR_FORMAT
                 && strcmp(err, "not a D") == 0,
          "short err buffer: '%s'", err);
}

/* Files that cannot be probed: the IO error channel. */
static void run_io(tstate *t)
{
    hc_dicom_info info;
    char err[256];
    int rc;

    rc = hc_dicom_probe_file("/nonexistent/x.dcm", &info, err, sizeof err);
    check(t, rc == HC_DICOM_ERR_IO
                 && strcmp(err, "cannot open /nonexistent/x.dcm: No such file or directory") == 0,
          "missing file: %d '%s'", rc, err);
    rc = hc_dicom_probe_file("/", &info, err, sizeof err);
    check(t, rc == HC_DICOM_ERR_IO && strstr(err, "Is a directory") != NULL,
          "directory: %d '%s'", rc, err);
}

/* Replays every file under dir; each must not crash and mem == file, here and as the fuzz target
 * checks it (with its "%FILL" expanded, and its prefixes). */
static void replay_dicom(tstate *t, const char *path, const unsigned char *p, size_t n)
{
    char err[256];
    hc_dicom_info info;
    probe_both(t, path, p, n, &info, err, sizeof err);
    hc_test_fuzz_dicom_diff(p, n);
    t->passed++;
}

int main(int argc, char **argv)
{
    tstate t;
    size_t i;
    int fd, a;

    memset(&t, 0, sizeof t);
    strcpy(t.tmp, "/tmp/hc_test_dicom_XXXXXX");
    fd = mkstemp(t.tmp);
    if (fd < 0) {
        perror("mkstemp");
        return 2;
    }
    close(fd);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(&t, &cases[i]);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const tcase *c = &cases[i];
        if (!c->err && !c->fallback && c->build != b_big_skip && c->build != b_stop
            && c->build != b_spread_header)
            run_cuts(&t, c);
    }
    run_bounds(&t);
    run_io(&t);
    for (a = 1; a < argc; a++) {
        char sibling[1024];
        size_t n = strlen(argv[a]);
        hc_test_replay(&t, argv[a], replay_dicom);
        if (n >= 5 && strcmp(argv[a] + n - 5, "dicom") == 0 && n + 5 < sizeof sibling) {
            snprintf(sibling, sizeof sibling, "%s_diff", argv[a]);
            hc_test_replay(&t, sibling, replay_dicom);
        }
    }
    remove(t.tmp);
    return hc_test_summary(&t);
}

/*
 * Build and run from the repository root (gcc or clang):
 *   cc -std=c99 -Wall -Wextra -Werror -g -O1 -fsanitize=address,undefined \
 *      -fno-sanitize-recover=all -Isrc spec/c/test_dicom.c src/hc_dicom.c -lz \
 *      -o /tmp/test_dicom
 *   /tmp/test_dicom spec/fixtures/fuzz/dicom fuzz/corpus/dicom
 */
