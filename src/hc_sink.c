/* SPDX-License-Identifier: MIT */
/* The on-disk sink of a transfer (hc_sink.h): temporary files, multipart routing through the
 * push parser, caps, and the rename into place. */
#define _GNU_SOURCE /* renameat2's RENAME_NOREPLACE (glibc 2.28) */
#include "hc_sink.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hc_dicom.h"
#include "hc_file.h"
#include "hc_multipart.h"

#if defined(__GNUC__)
#  define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#  define PRINTF_LIKE(f, a)
#endif

/* A named part's UID, known by its key (uid_key) rather than its text. */
typedef struct uid_slot {
    uint64_t h;
    uint32_t h2;
    uint32_t index1;               /* the part's index + 1; 0: an empty slot */
} uid_slot;

struct hc_sink {
    int kind;                      /* HC_SINK_FILE or HC_SINK_DIR */
    char *path;                    /* owned: the file, or the directory */
    int mode;                      /* HC_SINK_UNDECIDED, HC_SINK_TO_* */
    int fd;                        /* the file being written, or -1 */
    char *tmp;                     /* owned: its path, NULL when none */
    char *cur_headers;             /* owned: header block of the part being written */
    size_t cur_headers_len;
    int64_t cur_size;              /* bytes in the file being written */
    int64_t bytes;                 /* body bytes of the final response received (decoded) */
    int64_t max_bytes;             /* caps on the decoded body, 0 = none: in all, */
    int64_t max_parts;             /* parts (a directory sink), */
    int64_t max_part_bytes;        /* bytes of one part or file */
    size_t headers_total;          /* bytes of the retained part header blocks */
    hc_part *parts;                /* owned: completed parts not released, in stream order */
    size_t nparts, parts_size;     /* parts completed in all; room in parts */
    size_t released;               /* parts handed over (hc_sink_release_parts): parts[0] is
                                    * the part of this index */
    int parts_taken;               /* the caller has been given the parts: they are its files */
    hc_multipart mp;
    int mp_live;                   /* mp is initialised */
    int error;                     /* HC_SINKERR_*; the first one is kept */
    const char *cap_code;          /* static: the reason of an HC_SINKERR_CAP */
    char message[512];
    char media[64];                /* "multipart/related", for messages */
    int name_by_uid;               /* hc_sink_name_by_uid */
    unsigned char *prefix;         /* owned: the current part's first bytes (PROBE_BYTES), */
    size_t prefix_len;             /* NULL when it could not be had */
    size_t probe_at;               /* prefix_len at which to probe it next while it streams */
    int probed;                    /* the part's UIDs are known (info): keep no more of it */
    int deferred;                  /* the part so far is all in prefix: its file is not made yet
                                    * (a small part is then written in one go as it ends) */
    hc_dicom_info info;
    uid_slot *uid_slots;           /* owned: the named parts by UID key, open addressing */
    size_t uid_nslots, uid_n;      /* a power of two, at least twice uid_n */
    char **shared;                 /* owned: the study and series UIDs of named parts, each */
    size_t nshared, shared_size;   /* kept once while parts in a row repeat it (they do) */
};

/* ---- errors ------------------------------------------------------------------------------- */

/* Records "what path: strerror(errno)" as an I/O error (a path past 300 bytes cut: the message
 * holds 512). Returns -1. */
static int io_error(hc_sink *k, const char *what, const char *path)
{
    int e = errno;
    if (k->error == HC_SINKERR_NONE) {
        k->error = HC_SINKERR_IO;
        snprintf(k->message, sizeof k->message, "%s %.300s: %s", what, path, strerror(e));
    }
    return -1;
}

/* Records a cap passed, with its fixed reason code. Returns -1. */
static int cap_error(hc_sink *k, const char *code, const char *fmt, ...) PRINTF_LIKE(3, 4);
static int cap_error(hc_sink *k, const char *code, const char *fmt, ...)
{
    va_list ap;
    if (k->error != HC_SINKERR_NONE)
        return -1;
    k->error = HC_SINKERR_CAP;
    k->cap_code = code;
    va_start(ap, fmt);
    vsnprintf(k->message, sizeof k->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* Records the multipart parser's error code (hc_multipart.h) in words. Returns -1. */
static int multipart_error(hc_sink *k, int code)
{
    const char *what;
    if (k->error != HC_SINKERR_NONE)
        return -1;
    switch (code) {
    case HC_MP_ERR_NO_BOUNDARY: what = "does not start with its boundary delimiter"; break;
    case HC_MP_ERR_HEADERS_TOO_LARGE: what = "has a part header block larger than 64 KiB"; break;
    case HC_MP_ERR_HEADERS_MALFORMED: what = "has a malformed part header block"; break;
    case HC_MP_ERR_DELIMITER:
        what = "has a boundary delimiter followed by something other than CRLF or \"--\"";
        break;
    case HC_MP_ERR_TRUNCATED:
        what = k->mp.in_part ? "ended inside a part" : "ended before the close delimiter";
        break;
    default: what = hc_multipart_strerror(code); break;
    }
    k->error = HC_SINKERR_MULTIPART;
    snprintf(k->message, sizeof k->message, "the %s response %s (%lu complete part%s received)",
             k->media, what, (unsigned long)k->nparts, k->nparts == 1 ? "" : "s");
    return -1;
}

/* ---- files -------------------------------------------------------------------------------- */

/* Creates a new file <prefix><random hex> (mode 0666 less the umask, unlike mkstemp's 0600: what
 * becomes an answer's file gets the mode of any new file) as the sink's current file, named by
 * hc_file_create_temp like every temporary file of the module. Returns 0 or -1. */
static int open_temp(hc_sink *k, const char *prefix)
{
    char *path;
    int fd = hc_file_create_temp(prefix, 0666, &path); /* path: becomes k->tmp */
    if (fd < 0)
        return io_error(k, "cannot create a temporary file", prefix);
    k->fd = fd;
    k->tmp = path;
    k->cur_size = 0;
    return 0;
}

/* Whether the probe of the kept prefix tells the part's UIDs as the whole part would: a success
 * within the prefix (it stops at the first tag past the Series Instance UID), but not a deflated
 * data set's fallback to the meta UIDs while more of the part may follow. Fills k->info. */
static int probe_prefix(hc_sink *k, int whole)
{
    return hc_dicom_probe_mem(k->prefix, k->prefix_len, &k->info, NULL, 0) == HC_DICOM_OK
           && (whole || !k->info.deflated_fallback);
}

/* Keeps the part's first bytes as they are written, probing them at 4, 16 and 64 KiB: once the
 * probe succeeds nothing more is kept (a header is a few KiB; the rest of a large part is not
 * copied). */
static void keep_prefix(hc_sink *k, const char *p, size_t n)
{
    size_t keep = HC_SINK_PROBE_BYTES - k->prefix_len;
    keep = n < keep ? n : keep;
    memcpy(k->prefix + k->prefix_len, p, keep);
    k->prefix_len += keep;
    if (!k->probed && k->prefix_len >= k->probe_at) {
        k->probed = probe_prefix(k, 0);
        k->probe_at *= 4;
    }
}

/* Writes n bytes to the current file. Returns 0 or -1. */
static int write_fd(hc_sink *k, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(k->fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return io_error(k, "cannot write", k->tmp);
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int open_part(hc_sink *k);

/* Makes the deferred part's file and writes what prefix holds of it. Returns 0 or -1. */
static int spill(hc_sink *k)
{
    k->deferred = 0;
    if (open_part(k) != 0)
        return -1;
    k->cur_size = (int64_t)k->prefix_len;
    return write_fd(k, (const char *)k->prefix, k->prefix_len);
}

/* Writes n bytes to the current file, within the cap on one part. Returns 0 or -1. */
static int write_all(hc_sink *k, const char *p, size_t n)
{
    if (k->max_part_bytes > 0 && (int64_t)n > k->max_part_bytes - k->cur_size) {
        if (k->mode == HC_SINK_TO_PARTS)
            return cap_error(k, "part_too_large",
                             "part %lu of the answer is larger than %lld bytes",
                             (unsigned long)k->nparts + 1, (long long)k->max_part_bytes);
        return cap_error(k, "part_too_large", "the answer is larger than %lld bytes",
                         (long long)k->max_part_bytes);
    }
    if (k->deferred) {
        if (n <= HC_SINK_PROBE_BYTES - k->prefix_len) {
            keep_prefix(k, p, n);
            k->cur_size += (int64_t)n;
            return 0;
        }
        if (spill(k) != 0)
            return -1;
    }
    if (k->prefix != NULL && !k->probed && k->mode == HC_SINK_TO_PARTS
        && k->prefix_len < HC_SINK_PROBE_BYTES)
        keep_prefix(k, p, n);
    if (write_fd(k, p, n) != 0)
        return -1;
    k->cur_size += (int64_t)n;
    return 0;
}

/* Closes the current file; keep = 0 (or a failed close) removes it. Returns 0 or -1. */
static int close_current(hc_sink *k, int keep)
{
    int rc = 0;
    k->deferred = 0;
    if (k->fd >= 0) {
        if (close(k->fd) != 0 && keep)
            rc = io_error(k, "cannot write", k->tmp);
        k->fd = -1;
    }
    if (k->tmp != NULL && (!keep || rc != 0)) {
        unlink(k->tmp);
        free(k->tmp);
        k->tmp = NULL;
    }
    if (!keep || rc != 0) {
        free(k->cur_headers);
        k->cur_headers = NULL;
    }
    return rc;
}

/* ---- parts named by their UID (hc_sink_name_by_uid) --------------------------------------- */

/* names.valid_uid's rule: 1 to 64 digits and dots, no empty component. */
static int valid_uid(const char *u)
{
    size_t i, n = strlen(u);
    if (n == 0 || n > 64 || u[0] == '.' || u[n - 1] == '.')
        return 0;
    for (i = 0; i < n; i++) {
        if (!((u[i] >= '0' && u[i] <= '9') || u[i] == '.') || (u[i] == '.' && u[i + 1] == '.'))
            return 0;
    }
    return 1;
}

/* The 96 bits a UID is known by (uid_key): FNV-1a from two offset bases, each mixed down
 * (FNV's low bits, the ones the table uses, depend on few input bits). Two UIDs of one answer
 * share them with a chance of about n^2 / 2^97: 10^-17 for a million parts. */
static uint64_t uid_hash(const char *s, uint64_t h)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ULL;
    return h ^ (h >> 29);
}

static void uid_key(const char *uid, uint64_t *h, uint32_t *h2)
{
    *h = uid_hash(uid, 1469598103934665603ULL);
    *h2 = (uint32_t)uid_hash(uid, 0x9e3779b97f4a7c15ULL);
}

/* The slot of the named part with this key, or the empty slot where it would go. */
static size_t uid_find(const uid_slot *slots, size_t nslots, uint64_t h, uint32_t h2)
{
    size_t i = (size_t)(h & (nslots - 1));
    while (slots[i].index1 != 0 && (slots[i].h != h || slots[i].h2 != h2))
        i = (i + 1) & (nslots - 1);
    return i;
}

/* Room in the UID table for one more. Returns 0 or -1 (out of memory: the table unchanged). */
static int uid_reserve(hc_sink *k)
{
    size_t i, nslots;
    uid_slot *slots;
    if (2 * (k->uid_n + 1) <= k->uid_nslots)
        return 0;
    nslots = k->uid_nslots ? 2 * k->uid_nslots : 64;
    slots = calloc(nslots, sizeof *slots); /* owned by the sink */
    if (slots == NULL)
        return -1;
    for (i = 0; i < k->uid_nslots; i++) {
        const uid_slot *s = &k->uid_slots[i];
        if (s->index1 != 0)
            slots[uid_find(slots, nslots, s->h, s->h2)] = *s;
    }
    free(k->uid_slots);
    k->uid_slots = slots;
    k->uid_nslots = nslots;
    return 0;
}

/* uid as a string the sink owns, the same pointer as the last few times it came (the parts of
 * one series share their study and series UIDs: one copy, not one per part); NULL when out of
 * memory. */
static const char *shared_uid(hc_sink *k, const char *uid)
{
    size_t i;
    char *copy;
    for (i = k->nshared; i > 0 && i + 4 > k->nshared; i--)
        if (strcmp(k->shared[i - 1], uid) == 0)
            return k->shared[i - 1];
    if (k->nshared == k->shared_size) {
        size_t want = k->shared_size ? 2 * k->shared_size : 8;
        char **grown = realloc(k->shared, want * sizeof *grown);
        if (grown == NULL)
            return NULL;
        k->shared = grown;
        k->shared_size = want;
    }
    if ((copy = strdup(uid)) == NULL) /* owned by the sink */
        return NULL;
    k->shared[k->nshared++] = copy;
    return copy;
}

/* Moves a part's file from its temporary name to `to` unless a file has that name already: the
 * file there may be a whole instance from before this transfer, and a transfer that is stopped
 * removes the files it named (hc_sink_reset). A part not named here is named by the caller once
 * the answer has ended, when replacing is what it asks for. Returns 0, or -1 (errno set). */
static int rename_new(const char *from, const char *to)
{
#ifdef RENAME_NOREPLACE
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return -1;
#endif
    /* a file system without renameat2's flag: a hard link never replaces a name either */
    if (link(from, to) != 0)
        return -1;
    if (unlink(from) != 0) {
        int e = errno;
        unlink(to);
        errno = e;
        return -1;
    }
    return 0;
}

/* Names part i (just completed, the last in parts) <dir>/<UID>.dcm when its kept prefix, or
 * else its whole file, says which instance it is (hc_sink_name_by_uid); a second copy of a UID
 * is marked (duplicate_of); any other part is left as it is. */
static void name_part(hc_sink *k, size_t i)
{
    hc_part *part = &k->parts[i - k->released];
    const hc_dicom_info *info = &k->info;
    const char *uid, *study, *series;
    char *copy, *path;
    size_t ul, slot, dl = strlen(k->path);
    uint64_t h;
    uint32_t h2;
    /* Probed while it streamed, or now on what was kept; a deflated data set cut by the prefix
     * may fall back to the meta UIDs where the whole file would not: then, and for a header
     * past the prefix, the whole file is probed, as the caller would. */
    if ((k->prefix == NULL || (!k->probed && !probe_prefix(k, part->size <= (int64_t)k->prefix_len)))
        && hc_dicom_probe_file(part->path, &k->info, NULL, 0) != HC_DICOM_OK)
        return;
    uid = info->sop_instance_uid[0] ? info->sop_instance_uid : info->media_sop_instance_uid;
    if (!valid_uid(uid) || i > 0xfffffffeu || uid_reserve(k) != 0)
        return;
    uid_key(uid, &h, &h2);
    slot = uid_find(k->uid_slots, k->uid_nslots, h, h2);
    if (k->uid_slots[slot].index1 != 0) {
        part->duplicate_of = k->uid_slots[slot].index1;
        return;
    }
    ul = strlen(uid);
    study = shared_uid(k, info->study_uid);
    series = shared_uid(k, info->series_uid);
    copy = strdup(uid);                      /* owned by the part */
    path = malloc(dl + ul + sizeof "/.dcm"); /* becomes part->path */
    if (copy != NULL && path != NULL) /* one "/" between them, as Lua's join makes it */
        snprintf(path, dl + ul + sizeof "/.dcm", "%s%s%s.dcm", k->path,
                 dl > 0 && k->path[dl - 1] == '/' ? "" : "/", uid);
    if (study == NULL || series == NULL || copy == NULL || path == NULL
        || rename_new(part->path, path) != 0) {
        free(copy);
        free(path);
        return;
    }
    free(part->path);
    part->path = path;
    free(part->headers); /* a named part is an instance: its headers are not handed on */
    part->headers = NULL;
    part->headers_len = 0;
    part->sop_instance_uid = copy;
    part->study_uid = study;
    part->series_uid = series;
    k->uid_slots[slot].h = h;
    k->uid_slots[slot].h2 = h2;
    k->uid_slots[slot].index1 = (uint32_t)(i + 1);
    k->uid_n++;
}

void hc_sink_name_by_uid(hc_sink *k)
{
    k->name_by_uid = 1;
}

/* Closes the current file and records it as a complete part. Returns 0 or -1. */
static int finish_part(hc_sink *k)
{
    hc_part *part;
    if (k->deferred && spill(k) != 0) {
        close_current(k, 0);
        return -1;
    }
    if (close_current(k, 1) != 0)
        return -1;
    if (k->nparts - k->released == k->parts_size) {
        size_t want = k->parts_size ? 2 * k->parts_size : 16;
        hc_part *grown = realloc(k->parts, want * sizeof *grown);
        if (grown == NULL) {
            errno = ENOMEM;
            io_error(k, "cannot record", k->tmp);
            close_current(k, 0);
            return -1;
        }
        k->parts = grown;
        k->parts_size = want;
    }
    part = &k->parts[k->nparts++ - k->released];
    part->path = k->tmp;
    part->headers = k->cur_headers;
    part->headers_len = k->cur_headers_len;
    part->size = k->cur_size;
    part->sop_instance_uid = NULL;
    part->study_uid = part->series_uid = NULL;
    part->duplicate_of = 0;
    k->tmp = NULL;
    k->cur_headers = NULL;
    k->cur_headers_len = 0;
    if (k->name_by_uid && k->mode == HC_SINK_TO_PARTS)
        name_part(k, k->nparts - 1);
    return 0;
}

/* Keeps a copy of the header block of the part being written. Returns 0 or -1. */
static int set_cur_headers(hc_sink *k, const char *h, size_t n)
{
    free(k->cur_headers);
    k->cur_headers = malloc(n + 1); /* owned by the sink, then by its part */
    k->cur_headers_len = 0;
    if (k->cur_headers == NULL) {
        errno = ENOMEM;
        return io_error(k, "cannot record a part of", k->path);
    }
    memcpy(k->cur_headers, h, n);
    k->cur_headers[n] = '\0';
    k->cur_headers_len = n;
    return 0;
}

/* Opens the next part's file in the directory. Returns 0 or -1. */
static int open_part(hc_sink *k)
{
    char prefix[4096];
    if ((size_t)snprintf(prefix, sizeof prefix, "%s/.hc-part-", k->path) >= sizeof prefix) {
        errno = ENAMETOOLONG;
        return io_error(k, "cannot create a file in", k->path);
    }
    return open_temp(k, prefix);
}

/* ---- the multipart parser's callbacks ----------------------------------------------------- */

static int on_part_begin(void *ud, const char *headers, size_t len)
{
    hc_sink *k = ud;
    /* Checked as a part begins, before its file exists: one part too many makes no file. */
    if (k->max_parts > 0 && (int64_t)k->nparts >= k->max_parts)
        return cap_error(k, "too_many_parts", "the answer has more than %lld parts",
                         (long long)k->max_parts);
    if (len > HC_SINK_MAX_HEADERS_TOTAL - k->headers_total)
        return cap_error(k, "too_many_parts", "the part header blocks of the answer total more "
                         "than %d MiB (after %lu parts)", HC_SINK_MAX_HEADERS_TOTAL / (1024 * 1024),
                         (unsigned long)k->nparts);
    k->headers_total += len;
    if (set_cur_headers(k, headers, len) != 0)
        return -1;
    if (k->name_by_uid && k->prefix == NULL)
        k->prefix = malloc(HC_SINK_PROBE_BYTES); /* owned by the sink; NULL: no part is named */
    k->prefix_len = 0;
    k->probe_at = 4096;
    k->probed = 0;
    k->cur_size = 0;
    /* A part named by its UID starts in memory: most instances fit in the prefix, and are then
     * written with one write as they end. */
    if (k->name_by_uid && k->prefix != NULL) {
        k->deferred = 1;
        return 0;
    }
    return open_part(k);
}

static int on_part_data(void *ud, const char *p, size_t n)
{
    return write_all(ud, p, n);
}

static int on_part_end(void *ud)
{
    return finish_part(ud);
}

static const hc_multipart_callbacks part_callbacks = { on_part_begin, on_part_data, on_part_end };

/* ---- the sink ----------------------------------------------------------------------------- */

hc_sink *hc_sink_new(int kind, const char *path, int64_t max_bytes, int64_t max_parts,
                     int64_t max_part_bytes)
{
    hc_sink *k = calloc(1, sizeof *k);
    if (k == NULL)
        return NULL;
    k->kind = kind;
    k->fd = -1;
    k->max_bytes = max_bytes;
    k->max_parts = max_parts;
    k->max_part_bytes = max_part_bytes;
    k->path = strdup(path);
    if (k->path == NULL) {
        free(k);
        return NULL;
    }
    return k;
}

/* A multipart body (Content-Type ct, hc_multipart_content_type gave r): its media type kept for
 * messages, the parser started. Returns 0 or -1. */
static int decide_multipart(hc_sink *k, const char *ct, int r, const char *boundary, size_t blen)
{
    size_t i;
    for (i = 0; ct[i] == ' ' || ct[i] == '\t'; i++)
        ;
    snprintf(k->media, sizeof k->media, "%.*s", (int)strcspn(ct + i, "; \t"), ct + i);
    for (i = 0; k->media[i]; i++)
        if (k->media[i] >= 'A' && k->media[i] <= 'Z')
            k->media[i] = (char)(k->media[i] - 'A' + 'a');
    k->mode = HC_SINK_TO_PARTS;
    if (r < 0) {
        k->error = HC_SINKERR_MULTIPART;
        snprintf(k->message, sizeof k->message,
                 "the %s response has no valid boundary parameter (Content-Type: %.200s)",
                 k->media, ct);
        return -1;
    }
    if (hc_multipart_init(&k->mp, boundary, blen, &part_callbacks, k) != 0)
        return multipart_error(k, HC_MP_ERR_NO_BOUNDARY);
    k->mp_live = 1;
    return 0;
}

int hc_sink_decide(hc_sink *k, long http_status, const char *ct)
{
    char prefix[4096];
    if (http_status < 200 || http_status > 299) {
        k->mode = HC_SINK_TO_MEMORY;
        return 0;
    }
    if (k->kind == HC_SINK_FILE) {
        k->mode = HC_SINK_TO_FILE;
        if ((size_t)snprintf(prefix, sizeof prefix, "%s.partial-", k->path) >= sizeof prefix) {
            errno = ENAMETOOLONG;
            return io_error(k, "cannot create", k->path);
        }
        return open_temp(k, prefix);
    }
    if (ct != NULL) {
        char boundary[HC_MP_MAX_BOUNDARY + 1];
        size_t blen = 0;
        int r = hc_multipart_content_type(ct, strlen(ct), boundary, &blen);
        if (r != 0)
            return decide_multipart(k, ct, r, boundary, blen);
    }
    k->mode = HC_SINK_TO_PART;
    if (ct != NULL && strpbrk(ct, "\r\n") == NULL) {
        char h[1024];
        int n = snprintf(h, sizeof h, "content-type: %.900s\r\n", ct);
        if (set_cur_headers(k, h, (size_t)n) != 0)
            return -1;
    }
    return open_part(k);
}

int hc_sink_mode(const hc_sink *k)
{
    return k->mode;
}

int hc_sink_write(hc_sink *k, const char *p, size_t n)
{
    int r;
    if (k->max_bytes > 0 && (int64_t)n > k->max_bytes - k->bytes)
        return cap_error(k, "too_large", "the answer is larger than %lld bytes",
                         (long long)k->max_bytes);
    k->bytes += (int64_t)n;
    if (k->mode != HC_SINK_TO_PARTS)
        return write_all(k, p, n);
    r = hc_multipart_feed(&k->mp, p, n);
    return r == HC_MP_OK ? 0 : multipart_error(k, r);
}

/* A successful end of a file sink: the file renamed into place. Returns 0 or -1. */
static int end_file(hc_sink *k)
{
    int rc = 0;
    if (close_current(k, 1) != 0) {
        rc = -1;
    } else if (rename(k->tmp, k->path) != 0) {
        rc = io_error(k, "cannot rename the download to", k->path);
        unlink(k->tmp);
    }
    free(k->tmp);
    k->tmp = NULL;
    return rc;
}

int hc_sink_end(hc_sink *k, int ok)
{
    int rc = 0;
    if (!ok) {
        close_current(k, 0);
        return 0;
    }
    if (k->mode == HC_SINK_TO_FILE) {
        rc = end_file(k);
    } else if (k->mode == HC_SINK_TO_PART) {
        /* An empty body (a 204, say) is no part at all. */
        if (k->bytes == 0)
            close_current(k, 0);
        else
            rc = finish_part(k);
    } else if (k->mode == HC_SINK_TO_PARTS) {
        int r = hc_multipart_finish(&k->mp);
        if (r != HC_MP_OK)
            rc = multipart_error(k, r);
    }
    close_current(k, 0);
    return rc;
}

void hc_sink_reset(hc_sink *k)
{
    size_t i;
    close_current(k, 0);
    for (i = 0; i < k->nparts - k->released; i++) {
        if (!k->parts_taken)
            unlink(k->parts[i].path);
        free(k->parts[i].path);
        free(k->parts[i].headers);
        free(k->parts[i].sop_instance_uid);
    }
    free(k->uid_slots);
    k->uid_slots = NULL;
    k->uid_nslots = k->uid_n = 0;
    for (i = 0; i < k->nshared; i++)
        free(k->shared[i]);
    free(k->shared);
    k->shared = NULL;
    k->nshared = k->shared_size = 0;
    k->prefix_len = 0;
    free(k->parts);
    k->parts = NULL;
    k->nparts = k->parts_size = k->released = 0;
    k->parts_taken = 0;
    if (k->mp_live)
        hc_multipart_free(&k->mp);
    k->mp_live = 0;
    k->mode = HC_SINK_UNDECIDED;
    k->bytes = 0;
    k->headers_total = 0;
    k->error = HC_SINKERR_NONE;
    k->cap_code = NULL;
    k->message[0] = '\0';
}

void hc_sink_free(hc_sink *k)
{
    if (k == NULL)
        return;
    hc_sink_reset(k);
    free(k->prefix);
    free(k->path);
    free(k);
}

int hc_sink_error(const hc_sink *k, const char **message, const char **code)
{
    *message = k->message;
    *code = k->cap_code;
    return k->error;
}

int64_t hc_sink_bytes(const hc_sink *k)
{
    return k->bytes;
}

const char *hc_sink_path(const hc_sink *k)
{
    return k->path;
}

size_t hc_sink_nparts(const hc_sink *k)
{
    return k->nparts;
}

const hc_part *hc_sink_part(const hc_sink *k, size_t i)
{
    return i >= k->released && i < k->nparts ? &k->parts[i - k->released] : NULL;
}

void hc_sink_release_parts(hc_sink *k, size_t upto)
{
    size_t i, n;
    if (upto > k->nparts)
        upto = k->nparts;
    if (upto <= k->released)
        return;
    n = upto - k->released;
    for (i = 0; i < n; i++) {
        free(k->parts[i].path);
        free(k->parts[i].headers);
        free(k->parts[i].sop_instance_uid);
    }
    memmove(k->parts, k->parts + n, (k->nparts - upto) * sizeof *k->parts);
    k->released = upto;
}

size_t hc_sink_released(const hc_sink *k)
{
    return k->released;
}

void hc_sink_take_parts(hc_sink *k)
{
    k->parts_taken = 1;
}
