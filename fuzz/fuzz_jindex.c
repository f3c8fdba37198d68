/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the journal's in-memory index (src/hc_jindex.c), against a plain list of
 * what was put (found through a chained FNV-1a table of its own: the index's SHA-256 keys and
 * linear probing are what is tested, not reused). Few distinct paths and many puts, so that
 * entries are replaced, counts move between codes, and the table grows through its rehashes
 * (at 1024 entries, then every doubling). An input is a list of operations:
 *   byte 0     bits 0-1 what: 0 get, 1 put, 2 put the path and N more made from it (the path
 *              and two bytes of a counter: the table grows), 3 a put the index must refuse (a
 *              code past 255 or an offset past 2^56); bit 2: compare everything afterwards
 *   byte 1     the path's length (% 9: short paths meet again), then byte 2 the code, then
 *              for op 2 the byte that makes N (8 to 2048)
 *   then       the path's bytes
 * Checked after the operations that ask for it, and at the end: every path put gives its
 * latest size, mtime, offset and code; the counts per code and the number of entries are the
 * list's; a path never put is not found; a refused put changes nothing.
 * Seeds: fuzz/corpus/jindex/.
 * Build: see scripts/fuzz, or
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc fuzz/fuzz_jindex.c \
 *     src/hc_jindex.c -lcrypto -o /tmp/fuzz_jindex
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hc_jindex.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define HC_FUZZ_JX_BUCKETS 4096
#define HC_FUZZ_JX_MAX 20000 /* entries at most: bounds one input's time */

typedef struct hc_fuzz_jx_ent {
    char path[16];
    size_t len;
    int64_t size, mtime;
    uint64_t offset;
    unsigned code;
    int next;                 /* the next entry of its bucket, -1 for none */
} hc_fuzz_jx_ent;

typedef struct hc_fuzz_jx_ref {
    hc_fuzz_jx_ent *e;        /* owned; kept across inputs */
    size_t n, cap;
    int head[HC_FUZZ_JX_BUCKETS];
    size_t counts[HC_JINDEX_CODES];
} hc_fuzz_jx_ref;

static hc_fuzz_jx_ref hc_fuzz_jx;

static unsigned hc_fuzz_jx_bucket(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    size_t i;
    for (i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h % HC_FUZZ_JX_BUCKETS;
}

/* The list's entry of path, or NULL. */
static hc_fuzz_jx_ent *hc_fuzz_jx_find(hc_fuzz_jx_ref *r, const char *p, size_t n)
{
    int i;
    for (i = r->head[hc_fuzz_jx_bucket(p, n)]; i >= 0; i = r->e[i].next)
        if (r->e[i].len == n && memcmp(r->e[i].path, p, n) == 0)
            return &r->e[i];
    return NULL;
}

/* Puts path in both; returns 0, or -1 when the list is full (nothing put). */
static int hc_fuzz_jx_put(hc_jindex *ix, hc_fuzz_jx_ref *r, const char *p, size_t n,
                          int64_t size, int64_t mtime, uint64_t offset, unsigned code)
{
    hc_fuzz_jx_ent *e = hc_fuzz_jx_find(r, p, n);
    if (e == NULL) {
        unsigned b = hc_fuzz_jx_bucket(p, n);
        if (r->n == HC_FUZZ_JX_MAX)
            return -1;
        if (r->n == r->cap) {
            r->cap = r->cap ? 2 * r->cap : 256;
            r->e = realloc(r->e, r->cap * sizeof *r->e);
            if (r->e == NULL)
                abort();
        }
        e = &r->e[r->n];
        memcpy(e->path, p, n);
        e->len = n;
        e->next = r->head[b];
        r->head[b] = (int)r->n++;
    } else {
        r->counts[e->code]--;
    }
    e->size = size;
    e->mtime = mtime;
    e->offset = offset;
    e->code = code;
    r->counts[code]++;
    if (hc_jindex_put(ix, p, n, size, mtime, offset, code) != 0)
        abort();
    return 0;
}

/* The index holds exactly the list. */
static void hc_fuzz_jx_compare(hc_jindex *ix, const hc_fuzz_jx_ref *r)
{
    size_t i;
    if (ix->n != r->n || memcmp(ix->counts, r->counts, sizeof r->counts) != 0) {
        fprintf(stderr, "%lu entries, the list has %lu (or the counts differ)\n",
                (unsigned long)ix->n, (unsigned long)r->n);
        abort();
    }
    for (i = 0; i < r->n; i++) {
        const hc_fuzz_jx_ent *w = &r->e[i];
        const hc_jindex_entry *e = hc_jindex_get(ix, w->path, w->len);
        if (e == NULL || e->size != w->size || e->mtime != w->mtime
            || hc_jindex_offset(e) != w->offset || hc_jindex_code(e) != w->code) {
            fprintf(stderr, "entry %lu (%lu bytes) not the latest put\n", (unsigned long)i,
                    (unsigned long)w->len);
            abort();
        }
    }
}

/* A put the index refuses: a code past 255 or an offset past 2^56; nothing may change. */
static void hc_fuzz_jx_refused(hc_jindex *ix, hc_fuzz_jx_ref *r, const char *p, size_t n,
                               unsigned code)
{
    const hc_fuzz_jx_ent *w = hc_fuzz_jx_find(r, p, n);
    const hc_jindex_entry *e;
    size_t before = ix->n;
    int bad_code = code & 1;
    if (hc_jindex_put(ix, p, n, 1, 2, bad_code ? 3 : ((uint64_t)1 << 56) + code,
                      bad_code ? HC_JINDEX_CODES + code : code) != -1)
        abort();
    e = hc_jindex_get(ix, p, n);
    if (ix->n != before || (w == NULL) != (e == NULL) || (e != NULL && e->size != w->size))
        abort();
}

/* Puts path, then reps more paths made of it and two bytes of a counter, with sizes, mtimes and
 * offsets that change from put to put (at: where in the input). */
static void hc_fuzz_jx_put_many(hc_jindex *ix, hc_fuzz_jx_ref *r, char *path, size_t len,
                                unsigned reps, unsigned op, unsigned code, size_t at)
{
    unsigned k;
    for (k = 0; k <= reps; k++) {
        size_t n = len;
        if (k > 0) {
            path[n++] = (char)k;
            path[n++] = (char)(k >> 8);
        }
        if (hc_fuzz_jx_put(ix, r, path, n, (int64_t)(op * 1000003u + k), -(int64_t)k * 99991,
                           ((uint64_t)code << 48) | (uint64_t)(at * 7 + k), code) != 0)
            return;
    }
}

/* data is owned by libFuzzer; the index is made and freed here, the list's memory kept. */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    hc_fuzz_jx_ref *r = &hc_fuzz_jx;
    hc_jindex ix;
    size_t i = 0;
    r->n = 0;
    memset(r->head, 0xff, sizeof r->head);
    memset(r->counts, 0, sizeof r->counts);
    if (hc_jindex_init(&ix) != 0)
        abort();
    while (i + 3 <= size) {
        unsigned op = data[i], len = data[i + 1] % 9u, code = data[i + 2], reps = 0;
        char path[16];
        i += 3;
        if ((op & 3) == 2 && i < size)
            reps = 8 + 8u * data[i++];
        if (len > size - i)
            break;
        memcpy(path, data + i, len);
        i += len;
        if ((op & 3) == 0) {
            if ((hc_jindex_get(&ix, path, len) == NULL) != (hc_fuzz_jx_find(r, path, len) == NULL))
                abort();
        } else if ((op & 3) == 3) {
            hc_fuzz_jx_refused(&ix, r, path, len, code);
        }
        if ((op & 3) == 1 || (op & 3) == 2)
            hc_fuzz_jx_put_many(&ix, r, path, len, reps, op, code, i);
        if (op & 4)
            hc_fuzz_jx_compare(&ix, r);
    }
    hc_fuzz_jx_compare(&ix, r);
    hc_jindex_free(&ix);
    return 0;
}
