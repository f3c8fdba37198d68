/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for request bodies (src/hc_body.c): multipart framing and
 * streaming reads. An input is a small program. Its first part builds a body
 * from memory segments, file segments (memfds, named by their
 * /proc/self/fd path, given their true size, a wrong one or none, and for
 * some the identity the store checks them against: hc_body_add_file_checked
 * with any of device, inode, mtime and its nanoseconds, true or one of them
 * wrong), part delimiters with fuzzed header blocks and a fuzzed boundary,
 * and the close delimiter; a reference copy of the body is built beside it,
 * byte by byte, from RFC 2046 as read here, with its own boundary and header
 * checks. Its second part reads the body with fuzzed chunk sizes, seeks
 * anywhere (also outside), and changes files' sizes between reads (each
 * change gives the file a new mtime, set here: the clock's own may not have
 * moved). Every read must return exactly the reference's bytes, fail only
 * when it touches a file that no longer matches (its size, or the identity it
 * was checked with), and fail whenever it reaches the end of such a file;
 * refused framing must leave the body as it was. Seeds: fuzz/corpus/body/.
 * Build: see scripts/fuzz, or
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *     fuzz/fuzz_body.c src/hc_body.c src/hc_buf.c -o /tmp/fuzz_body
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hc_body.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define MAX_FILES 6
#define MAX_SEGS 64
#define MAX_READ 9000

/* The input, consumed from the front; reads past its end give zeros. */
typedef struct hc_fuzz_in {
    const unsigned char *p;
    size_t n;
} hc_fuzz_in;

typedef struct hc_fuzz_seg {
    int64_t start, length;
    int file;                 /* index into files, or -1 for memory; -2: a missing file */
} hc_fuzz_seg;

typedef struct hc_fuzz_file {
    int fd;
    int64_t recorded;         /* the size the body was told */
    int64_t size;             /* its size now */
    int64_t intact;           /* bytes from the start never changed since it was written */
    hc_file_identity id;      /* what the body was told it must still be (have 0: nothing) */
    uint64_t dev, ino;        /* what it is */
    unsigned version;         /* its mtime: HC_FUZZ_MTIME + version s, version ns */
} hc_fuzz_file;

#define HC_FUZZ_MTIME 1700000000

/* Everything one input builds; freed by hc_fuzz_done. */
typedef struct hc_fuzz {
    unsigned char *ref;       /* owned: the body as it must read */
    int64_t len, cap;
    hc_fuzz_seg segs[MAX_SEGS];
    int nsegs;
    hc_fuzz_file files[MAX_FILES];
    int nfiles;
} hc_fuzz;

static unsigned hc_fuzz_u8(hc_fuzz_in *in)
{
    unsigned v = 0;
    if (in->n > 0) {
        v = in->p[0];
        in->p++;
        in->n--;
    }
    return v;
}

static unsigned hc_fuzz_u16(hc_fuzz_in *in)
{
    unsigned hi = hc_fuzz_u8(in);
    return hi << 8 | hc_fuzz_u8(in);
}

/* Appends n bytes to the reference (grown as needed; exits when memory runs out). */
static void hc_fuzz_ref(hc_fuzz *z, const void *p, size_t n)
{
    if (z->len + (int64_t)n > z->cap) {
        int64_t cap = z->cap ? z->cap : 256;
        while (cap < z->len + (int64_t)n)
            cap *= 2;
        z->ref = realloc(z->ref, (size_t)cap);
        if (z->ref == NULL)
            abort();
        z->cap = cap;
    }
    if (n > 0)
        memcpy(z->ref + z->len, p, n);
    z->len += (int64_t)n;
}

static void hc_fuzz_seg_add(hc_fuzz *z, int64_t start, int64_t length, int file)
{
    if (z->nsegs < MAX_SEGS) {
        z->segs[z->nsegs].start = start;
        z->segs[z->nsegs].length = length;
        z->segs[z->nsegs].file = file;
        z->nsegs++;
    }
}

/* RFC 2046 section 5.1.1: 1 to 70 bchars, the last not a space. */
static int hc_fuzz_boundary_ok(const char *s)
{
    static const char bchars[] = "0123456789abcdefghijklmnopqrstuvwxyz"
                                 "ABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ";
    size_t n = strlen(s), i;
    if (n < 1 || n > 70 || s[n - 1] == ' ')
        return 0;
    for (i = 0; i < n; i++)
        if (strchr(bchars, s[i]) == NULL)
            return 0;
    return 1;
}

/* Lines "name:value" CRLF, name of visible ASCII: a state machine, unlike hc_body.c's scan. */
static int hc_fuzz_headers_ok(const char *h)
{
    enum { START, NAME, VALUE, CR } st = START;
    for (; *h != '\0'; h++) {
        unsigned char c = (unsigned char)*h;
        switch (st) {
        case START:
        case NAME:
            if (c == ':' && st == NAME)
                st = VALUE;
            else if (c > ' ' && c < 127 && c != ':')
                st = NAME;
            else
                return 0;
            break;
        case VALUE:
            if (c == '\r')
                st = CR;
            else if (c == '\n')
                return 0;
            break;
        case CR:
            if (c != '\n')
                return 0;
            st = START;
            break;
        }
    }
    return st == START;
}

/* Sets f's mtime to its version's: a deterministic change, where the clock's coarse ticks may
 * leave a modified file with the mtime it had. */
static void hc_fuzz_file_touch(hc_fuzz_file *f)
{
    struct timespec ts[2];
    ts[0].tv_sec = 0;
    ts[0].tv_nsec = UTIME_OMIT;
    ts[1].tv_sec = HC_FUZZ_MTIME + (time_t)f->version;
    ts[1].tv_nsec = (long)f->version;
    if (futimens(f->fd, ts) != 0)
        abort();
}

/* Whether f no longer matches the identity the body was told (hc_body.c's rules: the mtime's
 * nanoseconds count only with its seconds). */
static int hc_fuzz_file_replaced(const hc_fuzz_file *f)
{
    const hc_file_identity *id = &f->id;
    if (((id->have & HC_FILE_DEV) && id->dev != f->dev)
        || ((id->have & HC_FILE_INO) && id->ino != f->ino))
        return 1;
    if (!(id->have & HC_FILE_MTIME))
        return 0;
    return id->mtime != HC_FUZZ_MTIME + (int64_t)f->version
           || ((id->have & HC_FILE_MTIME_NSEC) && id->mtime_nsec != (long)f->version);
}

/* A file of n bytes (a pattern picked by seed) as a memfd; returns its index or -1. */
static int hc_fuzz_file_new(hc_fuzz *z, int64_t n, unsigned seed)
{
    hc_fuzz_file *f;
    unsigned char chunk[512];
    int64_t done = 0;
    int fd, i;
    if (z->nfiles == MAX_FILES)
        return -1;
    fd = memfd_create("hc-fuzz-body", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    for (i = 0; i < (int)sizeof chunk; i++)
        chunk[i] = (unsigned char)(seed + (unsigned)i * (seed | 1u));
    while (done < n) {
        size_t k = n - done > (int64_t)sizeof chunk ? sizeof chunk : (size_t)(n - done);
        if (write(fd, chunk, k) != (ssize_t)k) {
            close(fd);
            return -1;
        }
        done += (int64_t)k;
    }
    f = &z->files[z->nfiles];
    memset(f, 0, sizeof *f);
    f->fd = fd;
    f->size = f->intact = f->recorded = n;
    {
        struct stat st;
        if (fstat(fd, &st) != 0)
            abort();
        f->dev = (uint64_t)st.st_dev;
        f->ino = (uint64_t)st.st_ino;
    }
    hc_fuzz_file_touch(f);
    return z->nfiles++;
}

static void hc_fuzz_file_bytes(hc_fuzz *z, int k, int64_t n)
{
    unsigned char buf[512];
    int64_t off = 0;
    while (off < n) {
        size_t want = n - off > (int64_t)sizeof buf ? sizeof buf : (size_t)(n - off);
        if (pread(z->files[k].fd, buf, want, (off_t)off) != (ssize_t)want)
            abort();
        hc_fuzz_ref(z, buf, want);
        off += (int64_t)want;
    }
}

static void hc_fuzz_done(hc_fuzz *z)
{
    int i;
    for (i = 0; i < z->nfiles; i++)
        close(z->files[i].fd);
    free(z->ref);
}

/* Whether reading [from, to) may fail (it touches a file whose size is not the recorded one, that
 * no longer has the identity it was checked with, or a missing file), and whether it must (it
 * reaches the end of such a file, or opens it: any but the segment open_seg, whose file the body
 * opened before it changed). */
static void hc_fuzz_risk(const hc_fuzz *z, int64_t from, int64_t to, int open_seg, int *may,
                         int *must)
{
    int i;
    *may = *must = 0;
    for (i = 0; i < z->nsegs && from < to; i++) {
        const hc_fuzz_seg *s = &z->segs[i];
        int bad;
        if (s->file == -1 || s->length == 0 || s->start >= to || s->start + s->length <= from)
            continue;
        bad = s->file == -2 || z->files[s->file].size != s->length
              || hc_fuzz_file_replaced(&z->files[s->file]);
        if (!bad)
            continue;
        *may = 1;
        if (s->start + s->length <= to || i != open_seg)
            *must = 1;
    }
}

/* The segment whose file the body holds open once it has read up to pos (it stops inside it),
 * or -1. */
static int hc_fuzz_open_seg(const hc_fuzz *z, int64_t pos)
{
    int i;
    for (i = 0; i < z->nsegs; i++) {
        const hc_fuzz_seg *s = &z->segs[i];
        if (s->file >= 0 && pos > s->start && pos < s->start + s->length)
            return i;
    }
    return -1;
}

/* Whether the reference byte at off may differ from the file (it lies past a change). */
static int hc_fuzz_unknown(const hc_fuzz *z, int64_t off)
{
    int i;
    for (i = 0; i < z->nsegs; i++) {
        const hc_fuzz_seg *s = &z->segs[i];
        if (s->file >= 0 && off >= s->start && off < s->start + s->length)
            return off - s->start >= z->files[s->file].intact;
    }
    return 0;
}

/* Adds n (from the input) bytes held in memory. */
static void hc_fuzz_op_mem(hc_fuzz *z, hc_body *b, hc_fuzz_in *in)
{
    unsigned char bytes[256];
    unsigned n = hc_fuzz_u8(in), i;
    for (i = 0; i < n; i++)
        bytes[i] = (unsigned char)hc_fuzz_u8(in);
    if (hc_body_add_mem(b, bytes, n) != 0)
        abort();
    hc_fuzz_seg_add(z, z->len, n, -1);
    hc_fuzz_ref(z, bytes, n);
}

/* The identity a checked file is added with (how: bits 3-6 the fields given, bit 7 one of them
 * wrong, the next input byte saying which). */
static void hc_fuzz_identity(hc_fuzz_file *f, unsigned how, hc_fuzz_in *in)
{
    hc_file_identity *id = &f->id;
    id->have = (how >> 3) & 15;
    id->dev = f->dev;
    id->ino = f->ino;
    id->mtime = HC_FUZZ_MTIME + (int64_t)f->version;
    id->mtime_nsec = (long)f->version;
    if (how & 128) {
        switch (hc_fuzz_u8(in) % 4) {
        case 0: id->dev++; break;
        case 1: id->ino++; break;
        case 2: id->mtime++; break;
        default: id->mtime_nsec++; break;
        }
    }
}

/* Adds a new file, given its size, no size, or a wrong one (how: bits 0-1), and with bit 2 the
 * identity the body checks it against (hc_fuzz_identity). */
static void hc_fuzz_op_file(hc_fuzz *z, hc_body *b, hc_fuzz_in *in)
{
    char path[64];
    int64_t n = hc_fuzz_u16(in) % 5000, given;
    unsigned how = hc_fuzz_u8(in);
    int k = hc_fuzz_file_new(z, n, hc_fuzz_u8(in));
    if (k < 0)
        return;
    snprintf(path, sizeof path, "/proc/self/fd/%d", z->files[k].fd);
    given = (how & 3) == 0 ? -1 : (how & 3) == 1 ? n + 1 + hc_fuzz_u8(in) % 8 :
            (how & 3) == 2 && n > 0 ? n - 1 - (int64_t)(hc_fuzz_u8(in) % (unsigned)n) : n;
    if (how & 4)
        hc_fuzz_identity(&z->files[k], how, in);
    if (hc_body_add_file_checked(b, path, given, (how & 4) ? &z->files[k].id : NULL) != 0)
        abort();
    z->files[k].recorded = given < 0 ? n : given;
    hc_fuzz_seg_add(z, z->len, z->files[k].recorded, k);
    /* The reference holds what the file has, as far as the recorded size reaches. */
    hc_fuzz_file_bytes(z, k, z->files[k].recorded < n ? z->files[k].recorded : n);
    if (z->files[k].recorded > n) {
        static const unsigned char zero[16];
        int64_t pad = z->files[k].recorded - n;
        while (pad > 0) {
            hc_fuzz_ref(z, zero, pad > 16 ? 16 : (size_t)pad);
            pad -= 16;
        }
    }
}

/* Begins a part with canned headers, or headers from the input (any bytes). */
static void hc_fuzz_op_part(hc_fuzz *z, hc_body *b, hc_fuzz_in *in, const char *boundary,
                            int canned_headers)
{
    static const char *canned[] = {
        "Content-Type: application/dicom\r\n",
        "",
        "Content-Type: application/dicom+json\r\nX-A: b\r\n",
        "Content-Type: x\r\n\r\n",
        "A: b\n",
        "Content-Type: a\rb\r\n",
    };
    char headers[80];
    int64_t before = hc_body_length(b);
    const char *h;
    int ok, rc;
    if (canned_headers) {
        h = canned[hc_fuzz_u8(in) % (sizeof canned / sizeof canned[0])];
    } else {
        unsigned n = hc_fuzz_u8(in) % (sizeof headers - 1), i;
        for (i = 0; i < n; i++)
            headers[i] = (char)hc_fuzz_u8(in);
        headers[n] = '\0';
        h = headers;
    }
    ok = hc_fuzz_boundary_ok(boundary) && hc_fuzz_headers_ok(h);
    rc = hc_body_begin_part(b, boundary, h);
    if ((rc == 0) != ok
        || (rc != 0 && (hc_body_error(b)[0] == '\0' || hc_body_length(b) != before)))
        abort();
    if (ok) {
        hc_fuzz_seg_add(z, z->len, hc_body_length(b) - before, -1);
        if (z->len > 0)
            hc_fuzz_ref(z, "\r\n", 2);
        hc_fuzz_ref(z, "--", 2);
        hc_fuzz_ref(z, boundary, strlen(boundary));
        hc_fuzz_ref(z, "\r\n", 2);
        hc_fuzz_ref(z, h, strlen(h));
        hc_fuzz_ref(z, "\r\n", 2);
    }
}

/* Adds the close delimiter. */
static void hc_fuzz_op_close(hc_fuzz *z, hc_body *b, const char *boundary)
{
    int64_t before = hc_body_length(b);
    int ok = hc_fuzz_boundary_ok(boundary);
    int rc = hc_body_finish_multipart(b, boundary);
    if ((rc == 0) != ok || (rc != 0 && hc_body_length(b) != before))
        abort();
    if (ok) {
        hc_fuzz_seg_add(z, z->len, hc_body_length(b) - before, -1);
        hc_fuzz_ref(z, "\r\n--", 4);
        hc_fuzz_ref(z, boundary, strlen(boundary));
        hc_fuzz_ref(z, "--\r\n", 4);
    }
}

/* A file that is not there: refused at once without a size, at read time with one. */
static void hc_fuzz_op_missing(hc_fuzz *z, hc_body *b, hc_fuzz_in *in)
{
    int64_t given = hc_fuzz_u8(in) % 4 == 0 ? -1 : (int64_t)hc_fuzz_u8(in);
    int rc = hc_body_add_file(b, "/nonexistent/hc-fuzz-body", given);
    if ((rc != 0) != (given < 0))
        abort();
    if (rc == 0) {
        static const unsigned char zero[256];
        hc_fuzz_seg_add(z, z->len, given, -2);
        hc_fuzz_ref(z, zero, (size_t)given);
    }
}

static void hc_fuzz_build(hc_fuzz *z, hc_body *b, hc_fuzz_in *in, const char *boundary)
{
    unsigned nops = hc_fuzz_u8(in) % 24, op;
    for (op = 0; op < nops; op++) {
        unsigned kind = hc_fuzz_u8(in) % 6;
        if (kind == 0)
            hc_fuzz_op_mem(z, b, in);
        else if (kind == 1)
            hc_fuzz_op_file(z, b, in);
        else if (kind == 2 || kind == 3)
            hc_fuzz_op_part(z, b, in, boundary, kind == 2);
        else if (kind == 4)
            hc_fuzz_op_close(z, b, boundary);
        else
            hc_fuzz_op_missing(z, b, in);
        if (hc_body_length(b) != z->len)
            abort();
    }
}

static void hc_fuzz_read(hc_fuzz *z, hc_body *b, hc_fuzz_in *in)
{
    static unsigned char buf[MAX_READ];
    int64_t pos = 0;
    int broken = 0, open_seg = -1, op;
    for (op = 0; op < 64 && in->n > 0; op++) {
        unsigned kind = hc_fuzz_u8(in) % 5;
        if (kind <= 1) {
            size_t n = (size_t)(kind == 0 ? hc_fuzz_u8(in) : hc_fuzz_u16(in) % MAX_READ);
            int64_t want = z->len - pos < (int64_t)n ? z->len - pos : (int64_t)n;
            int may, must;
            long r;
            hc_fuzz_risk(z, pos, pos + want, open_seg, &may, &must);
            r = hc_body_read(b, (char *)buf, n);
            if (broken) {
                if (r < -1 || r > (long)n)
                    abort();
                continue;
            }
            if (r < 0) {
                if (!may || hc_body_error(b)[0] == '\0')
                    abort();
                broken = 1;
                continue;
            }
            if (must || r != want)
                abort();
            for (int64_t i = 0; i < want; i++)
                if (buf[i] != z->ref[pos + i] && !hc_fuzz_unknown(z, pos + i))
                    abort();
            if (want > 0)
                open_seg = hc_fuzz_open_seg(z, pos + want);
            pos += want;
            if (hc_body_position(b) != pos)
                abort();
        } else if (kind == 2) {
            int64_t off = (int64_t)(hc_fuzz_u16(in) % (unsigned)(z->len + 3)) - 1;
            int rc = hc_body_seek(b, off);
            if ((rc == 0) != (off >= 0 && off <= z->len))
                abort();
            if (rc == 0) {
                pos = off;
                broken = 0;
                open_seg = -1;
            }
        } else if (kind == 3 && z->nfiles > 0) {
            hc_fuzz_file *f = &z->files[hc_fuzz_u8(in) % (unsigned)z->nfiles];
            int64_t size = f->size + (int64_t)(hc_fuzz_u8(in) % 16) - 8;
            if (size < 0)
                size = 0;
            if (ftruncate(f->fd, (off_t)size) != 0)
                abort();
            f->version++;
            hc_fuzz_file_touch(f);
            f->size = size;
            if (size < f->intact)
                f->intact = size;
        }
    }
}

/* data is owned by libFuzzer; everything made here is released before returning. */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    hc_fuzz_in in = { data, size };
    hc_fuzz z;
    hc_body *b;
    char boundary[80];
    unsigned n, i;

    if (size == 0)
        return 0;
    memset(&z, 0, sizeof z);
    memset(boundary, 0, sizeof boundary);
    n = hc_fuzz_u8(&in) % 76;
    for (i = 0; i < n; i++) {
        unsigned c = hc_fuzz_u8(&in);
        /* Mostly valid characters, so framing gets built; sometimes anything. */
        boundary[i] = c & 0x80 ? "abcXYZ019'()+_,-./:=? "[c % 22] : (char)c;
    }
    boundary[n] = '\0';
    b = hc_body_new();
    if (b == NULL)
        return 0;
    if ((hc_body_check_boundary(b, boundary) == 0) != hc_fuzz_boundary_ok(boundary))
        abort();
    hc_fuzz_build(&z, b, &in, boundary);
    hc_fuzz_read(&z, b, &in);

    /* Whatever happened, a body whose files all still match reads whole from the start. */
    for (i = 0; i < (unsigned)z.nfiles; i++)
        if (z.files[i].size != z.files[i].recorded || z.files[i].intact != z.files[i].size
            || hc_fuzz_file_replaced(&z.files[i]))
            break;
    if (i == (unsigned)z.nfiles) {
        int64_t pos = 0, j;
        int missing = 0;
        for (j = 0; j < z.nsegs; j++)
            missing |= z.segs[j].file == -2 && z.segs[j].length > 0;
        if (hc_body_seek(b, 0) != 0)
            abort();
        while (!missing) {
            static unsigned char buf[4096];
            long r = hc_body_read(b, (char *)buf, 1 + (size_t)(data[0] % sizeof buf));
            if (r < 0 || pos + r > z.len || (r > 0 && memcmp(buf, z.ref + pos, (size_t)r) != 0))
                abort();
            if (r == 0)
                break;
            pos += r;
        }
        if (!missing && pos != z.len)
            abort();
    }
    hc_body_free(b);
    hc_fuzz_done(&z);
    return 0;
}
