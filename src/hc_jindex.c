/* SPDX-License-Identifier: MIT */
/* The journal's in-memory index (hc_jindex.h). Entries are a dense array grown by doubling
 * (pages not yet written are not resident, so the unused half costs address space, not
 * memory); the hash table holds 32-bit entry numbers with linear probing at most half full,
 * rebuilt from the entries when it grows, so it never holds an old and a new table of entries
 * at once. */
#include "hc_jindex.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#define FIRST_ENTRIES 1024
#define FIRST_SLOTS 2048
#define MAX_ENTRIES 0xfffffffeu /* slot values are entry index + 1 in 32 bits */

int hc_jindex_init(hc_jindex *ix)
{
    memset(ix, 0, sizeof *ix);
    ix->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    ix->md_ctx = EVP_MD_CTX_new();
    if (ix->md == NULL || ix->md_ctx == NULL) {
        hc_jindex_free(ix);
        return -1;
    }
    return 0;
}

void hc_jindex_free(hc_jindex *ix)
{
    free(ix->entries);
    free(ix->slots);
    EVP_MD_CTX_free((EVP_MD_CTX *)ix->md_ctx);
    EVP_MD_free((EVP_MD *)ix->md);
    memset(ix, 0, sizeof *ix);
}

/* key = the first 16 bytes of SHA-256(path). Returns 0 or -1. */
static int jindex_hash(hc_jindex *ix, const char *path, size_t n, unsigned char *key)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_MD_CTX *ctx = (EVP_MD_CTX *)ix->md_ctx;
    if (ctx == NULL || !EVP_DigestInit_ex(ctx, (const EVP_MD *)ix->md, NULL)
        || !EVP_DigestUpdate(ctx, path, n) || !EVP_DigestFinal_ex(ctx, md, &len)
        || len < HC_JINDEX_KEY)
        return -1;
    memcpy(key, md, HC_JINDEX_KEY);
    return 0;
}

/* Where a key's probe sequence starts: its first 8 bytes (SHA-256 output is uniform). */
static size_t jindex_home(const unsigned char *key, size_t nslots)
{
    uint64_t h;
    memcpy(&h, key, sizeof h);
    return (size_t)(h & (uint64_t)(nslots - 1));
}

/* The slot holding key, or the empty slot where it would go. */
static size_t jindex_find(const hc_jindex *ix, const unsigned char *key)
{
    size_t i = jindex_home(key, ix->nslots);
    for (;;) {
        uint32_t s = ix->slots[i];
        if (s == 0 || memcmp(ix->entries[s - 1].key, key, HC_JINDEX_KEY) == 0)
            return i;
        i = (i + 1) & (ix->nslots - 1);
    }
}

/* Makes the table nslots big and re-enters every entry. Returns 0 or -1 (table unchanged). */
static int jindex_rehash(hc_jindex *ix, size_t nslots)
{
    uint32_t *slots = calloc(nslots, sizeof *slots);
    size_t i;
    if (slots == NULL)
        return -1;
    free(ix->slots);
    ix->slots = slots;
    ix->nslots = nslots;
    for (i = 0; i < ix->n; i++)
        ix->slots[jindex_find(ix, ix->entries[i].key)] = (uint32_t)(i + 1);
    return 0;
}

/* Room for one more entry, in the array and within the table's load. Returns 0 or -1. */
static int jindex_reserve(hc_jindex *ix)
{
    if (ix->n >= MAX_ENTRIES)
        return -1;
    if (ix->n == ix->cap) {
        size_t cap = ix->cap ? 2 * ix->cap : FIRST_ENTRIES;
        hc_jindex_entry *grown;
        if (cap > MAX_ENTRIES)
            cap = MAX_ENTRIES;
        grown = realloc(ix->entries, cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        ix->entries = grown;
        ix->cap = cap;
    }
    if (2 * (ix->n + 1) > ix->nslots)
        return jindex_rehash(ix, ix->nslots ? 2 * ix->nslots : FIRST_SLOTS);
    return 0;
}

int hc_jindex_put(hc_jindex *ix, const char *path, size_t n, int64_t size, int64_t mtime,
                  uint64_t offset, unsigned code)
{
    unsigned char key[HC_JINDEX_KEY];
    hc_jindex_entry *e;
    size_t slot;
    if (code >= HC_JINDEX_CODES || offset >= ((uint64_t)1 << 56)
        || jindex_hash(ix, path, n, key) != 0)
        return -1;
    if (ix->nslots > 0 && ix->slots[slot = jindex_find(ix, key)] != 0) {
        e = &ix->entries[ix->slots[slot] - 1];
        ix->counts[hc_jindex_code(e)]--;
    } else {
        if (jindex_reserve(ix) != 0)
            return -1;
        slot = jindex_find(ix, key);
        e = &ix->entries[ix->n];
        ix->slots[slot] = (uint32_t)(++ix->n);
        memcpy(e->key, key, HC_JINDEX_KEY);
    }
    e->size = size;
    e->mtime = mtime;
    e->where = (offset << 8) | code;
    ix->counts[code]++;
    return 0;
}

const hc_jindex_entry *hc_jindex_get(hc_jindex *ix, const char *path, size_t n)
{
    unsigned char key[HC_JINDEX_KEY];
    uint32_t s;
    if (ix->nslots == 0 || jindex_hash(ix, path, n, key) != 0)
        return NULL;
    s = ix->slots[jindex_find(ix, key)];
    return s == 0 ? NULL : &ix->entries[s - 1];
}
