/* SPDX-License-Identifier: MIT */
/* The journal's in-memory index: what a resumed migration remembers of each journaled file
 * (healthcare.dicomweb.journal), in 40 bytes per distinct path plus 4 to 8 bytes of hash
 * table, whatever the path's length. A file is known by the first 16 bytes of the SHA-256 of
 * its journal key (its absolute path), not by the path itself: two paths that collide in 128
 * bits of SHA-256 are not a risk worth the bytes. Each entry keeps the size and mtime the
 * file had, the offset of its latest journal line (the UIDs and reason are read from there
 * when asked for, never kept) and the code of its latest outcome; putting a path again
 * replaces its entry (the latest line wins). Entries are never removed. */
#ifndef HC_JINDEX_H
#define HC_JINDEX_H

#include <stddef.h>
#include <stdint.h>

#define HC_JINDEX_KEY 16
#define HC_JINDEX_CODES 256 /* outcome codes are 0..255 */

typedef struct hc_jindex_entry {
    unsigned char key[HC_JINDEX_KEY];
    int64_t size;
    int64_t mtime; /* as the caller encodes it (the Lua binding: seconds and nanoseconds) */
    uint64_t where; /* (offset of the latest line << 8) | outcome code */
} hc_jindex_entry;

typedef struct hc_jindex {
    hc_jindex_entry *entries; /* owned; [0, n) in the order first put */
    size_t n, cap;
    uint32_t *slots;          /* owned; open addressing, 0 = empty, else entry index + 1 */
    size_t nslots;            /* a power of two, at least twice n */
    size_t counts[HC_JINDEX_CODES]; /* distinct paths by latest outcome */
    void *md_ctx;             /* owned: an EVP_MD_CTX and EVP_MD reused for every hash */
    void *md;
} hc_jindex;

/* Starts an empty index. Returns 0, or -1 when memory or the digest is missing (nothing to
 * free then). */
int hc_jindex_init(hc_jindex *ix);
/* Frees everything the index owns; it is then empty and must be initialised again before use.
 * Safe to call twice. */
void hc_jindex_free(hc_jindex *ix);
/* The entry of path (n bytes), after putting: the latest size, mtime, offset and code. Returns
 * 0, or -1 when memory ran out or the index is full (2^32 - 1 paths); the index is then
 * unchanged. offset must be below 2^56. */
int hc_jindex_put(hc_jindex *ix, const char *path, size_t n, int64_t size, int64_t mtime,
                  uint64_t offset, unsigned code);
/* The entry of path, or NULL (also when hashing failed). Valid until the next put or free. */
const hc_jindex_entry *hc_jindex_get(hc_jindex *ix, const char *path, size_t n);

static inline uint64_t hc_jindex_offset(const hc_jindex_entry *e)
{
    return e->where >> 8;
}

static inline unsigned hc_jindex_code(const hc_jindex_entry *e)
{
    return (unsigned)(e->where & 0xff);
}

#endif
