/* SPDX-License-Identifier: MIT */
/* AWS Signature Version 4 with OpenSSL 3 (see hc_sigv4.h for what is canonicalised and how).
 * The texts are built in capped hc_bufs; the canonical request, which holds the session token,
 * is allocated once at a size computed beforehand, so no realloc leaves a copy behind, and it is
 * wiped when freed. The signing key chain lives in fixed arrays wiped before returning. */
#define _POSIX_C_SOURCE 200809L
#include "hc_sigv4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#define ALGORITHM "AWS4-HMAC-SHA256"
#define TERMINATOR "aws4_request"

/* ---- errors and small checks --------------------------------------------------------- */

/* Writes "what: reason" from OpenSSL's error queue and empties it. Only the reason string is
 * used: an entry's data part could quote key material. */
static void ssl_error(char *err, const char *what)
{
    unsigned long e = ERR_get_error();
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    snprintf(err, HC_SIGV4_ERRLEN, "%s: %s", what, reason ? reason : "unknown OpenSSL error");
    ERR_clear_error();
}

static int fail(char *err, const char *what)
{
    snprintf(err, HC_SIGV4_ERRLEN, "%s", what);
    return -1;
}

/* RFC 9110 tchar: what a header name may hold. */
static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
        || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* RFC 3986 unreserved: the only bytes SigV4 leaves unencoded. */
static int is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'
        || c == '.' || c == '_' || c == '~';
}

/* 1 when the n bytes hold a control character other than a tab (CR, LF and NUL included):
 * what may never reach a header line or a text that is signed. */
static int has_ctl(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 1;
    }
    return 0;
}

/* 1 when s is non-empty, at most max bytes, and every byte is in the set ok() accepts. */
static int all_of(const char *s, size_t max, int (*ok)(unsigned char))
{
    size_t i;
    if (s == NULL || s[0] == '\0')
        return 0;
    for (i = 0; s[i] != '\0'; i++)
        if (i >= max || !ok((unsigned char)s[i]))
            return 0;
    return 1;
}

static int is_scope_char(unsigned char c)
{
    return is_unreserved(c);
}

/* An access key id goes into "Credential=KEY/date/...", so no '/', ',', '=' or space. */
static int is_key_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '/' && c != ',' && c != '=';
}

static int is_host_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '/' && c != '?' && c != '#' && c != '@';
}

static int is_upper_tchar(unsigned char c)
{
    return is_tchar(c) && !(c >= 'a' && c <= 'z');
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static void to_hex(const unsigned char *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

/* ---- texts --------------------------------------------------------------------------- */

static int put(hc_buf *b, const char *s, size_t n)
{
    return hc_buf_append(b, s, n);
}

static int puts0(hc_buf *b, const char *s)
{
    return hc_buf_append(b, s, strlen(s));
}

/* Appends n bytes with every byte outside the unreserved set (and '/' when keep_slash) as %XX
 * in upper-case hex. */
static int put_encoded(hc_buf *b, const char *s, size_t n, int keep_slash)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c) || (keep_slash && c == '/')) {
            if (put(b, (const char *)&c, 1) != 0)
                return -1;
        } else {
            char pct[3];
            pct[0] = '%';
            pct[1] = digits[c >> 4];
            pct[2] = digits[c & 15];
            if (put(b, pct, 3) != 0)
                return -1;
        }
    }
    return 0;
}

/* Allocates an empty buffer at n bytes at once (see the file's comment: the canonical request is
 * never moved by realloc). */
static int reserve(hc_buf *b, size_t n)
{
    b->data = malloc(n + 1);
    if (b->data == NULL)
        return -1;
    b->size = n + 1;
    b->len = 0;
    b->data[0] = '\0';
    return 0;
}

/* ---- the canonical path -------------------------------------------------------------- */

/* Appends the canonical URI of path (which starts with '/'): RFC 3986 section 5.2.4's dot
 * segments removed and empty segments dropped (botocore's remove_dot_segments), a trailing '/'
 * kept when a segment is left, each segment percent-encoded. */
static int put_path(hc_buf *b, const char *path)
{
    size_t n = path ? strlen(path) : 0, i = 0, kept = 0, *starts, *lens;
    int rc = 0;
    if (n == 0)
        return puts0(b, "/");
    /* At most n/2 + 1 segments survive; offsets of each in path. */
    starts = malloc((n / 2 + 2) * sizeof *starts);
    lens = malloc((n / 2 + 2) * sizeof *lens);
    if (starts == NULL || lens == NULL) {
        free(starts);
        free(lens);
        return -1;
    }
    while (i <= n) {
        size_t j = i;
        while (j < n && path[j] != '/')
            j++;
        if (j - i == 2 && path[i] == '.' && path[i + 1] == '.') {
            if (kept > 0)
                kept--;
        } else if (j > i && !(j - i == 1 && path[i] == '.')) {
            starts[kept] = i;
            lens[kept] = j - i;
            kept++;
        }
        i = j + 1;
    }
    rc |= puts0(b, "/");
    for (i = 0; i < kept && rc == 0; i++) {
        if (i > 0)
            rc |= puts0(b, "/");
        rc |= put_encoded(b, path + starts[i], lens[i], 0);
    }
    if (rc == 0 && kept > 0 && path[n - 1] == '/')
        rc |= puts0(b, "/");
    free(starts);
    free(lens);
    return rc ? -1 : 0;
}

/* ---- the canonical query ------------------------------------------------------------- */

/* One name=value pair of the query, both encoded. The offsets are into a scratch buffer that
 * may move while it grows; the pointers are set from them once it is complete, for sorting. */
typedef struct qpair {
    size_t key, key_len;
    size_t value, value_len;
    const char *kp, *vp;
} qpair;

/* Decodes %XX in [s, s+n) and appends the strict encoding to b. Returns 0, -1 (cap or memory)
 * or -2 (a '%' not followed by two hex digits). */
static int put_reencoded(hc_buf *b, const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            int hi, lo;
            if (n - i < 3)
                return -2;
            hi = hex_value((unsigned char)s[i + 1]);
            lo = hex_value((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0)
                return -2;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (put_encoded(b, &c, 1, 0) != 0)
            return -1;
    }
    return 0;
}

static int compare_bytes(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c != 0)
        return c;
    return alen < blen ? -1 : alen > blen;
}

static int compare_pairs(const void *x, const void *y)
{
    const qpair *a = x, *b = y;
    int c = compare_bytes(a->kp, a->key_len, b->kp, b->key_len);
    if (c != 0)
        return c;
    return compare_bytes(a->vp, a->value_len, b->vp, b->value_len);
}

/* Appends the canonical query string of the wire query q; empty parts ("a=1&&b") are skipped.
 * Returns 0, -1 or -2 as put_reencoded. */
static int put_query(hc_buf *b, const char *q)
{
    size_t n = q ? strlen(q) : 0, i = 0, count = 0, k;
    qpair *pairs;
    hc_buf scratch;
    int rc = 0;
    if (n == 0)
        return 0;
    pairs = malloc((n / 2 + 1) * sizeof *pairs);
    if (pairs == NULL)
        return -1;
    /* Each byte becomes at most 3; the cap keeps a long query from growing without bound. */
    hc_buf_init(&scratch, HC_SIGV4_TEXT_CAP);
    while (i <= n && rc == 0) {
        size_t j = i, eq;
        while (j < n && q[j] != '&')
            j++;
        if (j > i) {
            eq = i;
            while (eq < j && q[eq] != '=')
                eq++;
            pairs[count].key = scratch.len;
            rc = put_reencoded(&scratch, q + i, eq - i);
            pairs[count].key_len = scratch.len - pairs[count].key;
            pairs[count].value = scratch.len;
            if (rc == 0 && eq < j)
                rc = put_reencoded(&scratch, q + eq + 1, j - eq - 1);
            pairs[count].value_len = scratch.len - pairs[count].value;
            count++;
        }
        i = j + 1;
    }
    if (rc == 0 && count > 0) {
        /* A query of empty pairs ("=") leaves the scratch buffer unallocated. */
        const char *base = scratch.data ? scratch.data : "";
        for (k = 0; k < count; k++) {
            pairs[k].kp = base + pairs[k].key;
            pairs[k].vp = base + pairs[k].value;
        }
        qsort(pairs, count, sizeof *pairs, compare_pairs);
        for (k = 0; k < count && rc == 0; k++) {
            if (k > 0)
                rc = puts0(b, "&");
            if (rc == 0)
                rc = put(b, pairs[k].kp, pairs[k].key_len);
            if (rc == 0)
                rc = puts0(b, "=");
            if (rc == 0)
                rc = put(b, pairs[k].vp, pairs[k].value_len);
        }
    }
    hc_buf_free(&scratch);
    free(pairs);
    return rc;
}

/* ---- headers ------------------------------------------------------------------------- */

/* One header to sign: its lower-cased name is in a names buffer (offset, then a pointer once that
 * buffer is complete, as for qpair). */
typedef struct hentry {
    size_t name, name_len;
    const char *np;
    const char *value; /* the caller's bytes, trimmed when appended */
    size_t value_len;
    size_t order; /* position given: repeated names keep their order */
} hentry;

static int compare_headers(const void *x, const void *y)
{
    const hentry *a = x, *b = y;
    int c = compare_bytes(a->np, a->name_len, b->np, b->name_len);
    if (c != 0)
        return c;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* Appends value with the spaces and tabs around it removed and each run inside made one space
 * (SigV4's Trimall, as botocore's ' '.join(value.split()) does for ASCII). */
static int put_trimmed(hc_buf *b, const char *v, size_t n)
{
    size_t i = 0;
    int pending = 0, any = 0;
    for (i = 0; i < n; i++) {
        if (v[i] == ' ' || v[i] == '\t') {
            pending = any;
            continue;
        }
        if (pending && put(b, " ", 1) != 0)
            return -1;
        pending = 0;
        any = 1;
        if (put(b, v + i, 1) != 0)
            return -1;
    }
    return 0;
}

static int is_reserved_name(const char *lower, size_t n)
{
    static const char *const names[] = { "host", "authorization", "x-amz-date",
                                         "x-amz-security-token" };
    size_t i;
    for (i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && memcmp(names[i], lower, n) == 0)
            return 1;
    return 0;
}

/* Adds one header to the table: its lower-cased name to names. */
static int add_header(hentry *t, size_t *count, hc_buf *names, const char *name, size_t name_len,
                      const char *value, size_t value_len)
{
    size_t i;
    t[*count].name = names->len;
    for (i = 0; i < name_len; i++) {
        char c = name[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (put(names, &c, 1) != 0)
            return -1;
    }
    t[*count].name_len = name_len;
    t[*count].value = value;
    t[*count].value_len = value_len;
    t[*count].order = *count;
    (*count)++;
    return 0;
}

/* ---- checks of the request ----------------------------------------------------------- */

static int check_request(const hc_sigv4_request *r, char *err)
{
    size_t i;
    if (!all_of(r->method, 32, is_upper_tchar))
        return fail(err, "the method must be an upper-case HTTP token");
    if (!all_of(r->host, 270, is_host_char))
        return fail(
            err, "the host must be a host name (and port), without spaces or control characters");
    if (!all_of(r->region, 64, is_scope_char))
        return fail(err, "the region must be letters, digits, '-', '.', '_' or '~' (1 to 64)");
    if (!all_of(r->service, 64, is_scope_char))
        return fail(err, "the service must be letters, digits, '-', '.', '_' or '~' (1 to 64)");
    if (!all_of(r->access_key, 128, is_key_char))
        return fail(err,
                    "the access key id must be 1 to 128 printable characters without '/', ',', '=' "
                    "or space");
    if (r->secret == NULL || r->secret_len == 0 || r->secret_len > 1024)
        return fail(err, "the secret access key must be 1 to 1024 bytes");
    if (r->session_token != NULL
        && (strlen(r->session_token) > 16384
            || has_ctl(r->session_token, strlen(r->session_token))))
        return fail(err,
                    "the session token must be at most 16384 bytes without control characters");
    if (r->path != NULL && r->path[0] != '\0' && r->path[0] != '/')
        return fail(err, "the path must start with '/'");
    if (r->path != NULL && (strlen(r->path) > 8192 || has_ctl(r->path, strlen(r->path))))
        return fail(err, "the path must be at most 8192 bytes without control characters");
    if (r->query != NULL && (strlen(r->query) > 8192 || has_ctl(r->query, strlen(r->query))))
        return fail(err, "the query must be at most 8192 bytes without control characters");
    if (r->payload == NULL && r->payload_len != 0)
        return fail(err, "a payload length without a payload");
    if (r->amz_date != NULL) {
        const char *d = r->amz_date;
        if (strlen(d) != 16 || d[8] != 'T' || d[15] != 'Z')
            return fail(err, "the date must be YYYYMMDDTHHMMSSZ");
        for (i = 0; i < 15; i++)
            if (i != 8 && !(d[i] >= '0' && d[i] <= '9'))
                return fail(err, "the date must be YYYYMMDDTHHMMSSZ");
    }
    if (r->nheaders > HC_SIGV4_MAX_HEADERS)
        return fail(err, "too many headers to sign (at most 64)");
    if (r->nheaders > 0 && r->headers == NULL)
        return fail(err, "a header count without headers");
    for (i = 0; i < r->nheaders; i++) {
        const hc_sigv4_header *h = &r->headers[i];
        size_t k;
        char lower[32];
        if (h->name == NULL || h->name_len == 0 || h->name_len > 256)
            return fail(err, "a header name must be 1 to 256 characters");
        for (k = 0; k < h->name_len; k++)
            if (!is_tchar((unsigned char)h->name[k]))
                return fail(err, "a header name must be an HTTP token (letters, digits, '-', ...)");
        if (h->value == NULL && h->value_len != 0)
            return fail(err, "a header value length without a value");
        if (h->value_len > 16384 || (h->value != NULL && has_ctl(h->value, h->value_len)))
            return fail(err,
                        "a header value must be at most 16384 bytes without control characters");
        if (h->name_len < sizeof lower) {
            for (k = 0; k < h->name_len; k++)
                lower[k] = (char)((h->name[k] >= 'A' && h->name[k] <= 'Z') ? h->name[k] - 'A' + 'a'
                                                                           : h->name[k]);
            if (is_reserved_name(lower, h->name_len))
                return fail(err,
                            "host, authorization, x-amz-date and x-amz-security-token are "
                            "set by the signer, not given as headers");
        }
    }
    return 0;
}

/* An upper bound of the canonical request's length, so that it is allocated once. */
static size_t canonical_bound(const hc_sigv4_request *r)
{
    size_t n = 512 + strlen(r->method) + strlen(r->host) + 3 * (r->path ? strlen(r->path) : 0)
        + 3 * (r->query ? strlen(r->query) : 0) + (r->session_token ? strlen(r->session_token) : 0);
    size_t i;
    for (i = 0; i < r->nheaders; i++)
        n += 2 * r->headers[i].name_len + r->headers[i].value_len + 3;
    return n;
}

/* ---- signing ------------------------------------------------------------------------- */

static int hmac(const unsigned char *key, size_t klen, const void *data, size_t n,
                unsigned char out[32], char *err)
{
    size_t outlen = 0;
    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, klen, data, n, out, 32, &outlen) == NULL
        || outlen != 32) {
        ssl_error(err, "HMAC-SHA256 failed");
        return -1;
    }
    return 0;
}

static int sha256_hex(const void *p, size_t n, char hex[65], char *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!EVP_Digest(p, n, md, &len, EVP_sha256(), NULL) || len != 32) {
        ssl_error(err, "SHA-256 failed");
        return -1;
    }
    to_hex(md, 32, hex);
    return 0;
}

/* signature = hex(HMAC(kSigning, string_to_sign)) with kSigning the HMAC chain over the date,
 * region, service and "aws4_request" from "AWS4" + secret. */
static int compute_signature(const hc_sigv4_request *r, const char *date8, const hc_buf *to_sign,
                             char sig[65], char *err)
{
    unsigned char k1[32], k2[32];
    unsigned char *secret_key;
    size_t klen = 4 + r->secret_len;
    int rc = -1;
    secret_key = malloc(klen);
    if (secret_key == NULL)
        return fail(err, "out of memory");
    memcpy(secret_key, "AWS4", 4);
    memcpy(secret_key + 4, r->secret, r->secret_len);
    if (hmac(secret_key, klen, date8, 8, k1, err) == 0
        && hmac(k1, 32, r->region, strlen(r->region), k2, err) == 0
        && hmac(k2, 32, r->service, strlen(r->service), k1, err) == 0
        && hmac(k1, 32, TERMINATOR, strlen(TERMINATOR), k2, err) == 0
        && hmac(k2, 32, to_sign->data, to_sign->len, k1, err) == 0) {
        to_hex(k1, 32, sig);
        rc = 0;
    }
    OPENSSL_cleanse(secret_key, klen);
    free(secret_key);
    OPENSSL_cleanse(k1, sizeof k1);
    OPENSSL_cleanse(k2, sizeof k2);
    return rc;
}

static void result_init(hc_sigv4_result *out)
{
    out->amz_date[0] = '\0';
    out->signature[0] = '\0';
    hc_buf_init(&out->authorization, HC_SIGV4_TEXT_CAP);
    hc_buf_init(&out->signed_headers, HC_SIGV4_TEXT_CAP);
    hc_buf_init(&out->canonical_request, HC_SIGV4_TEXT_CAP);
    hc_buf_init(&out->string_to_sign, HC_SIGV4_TEXT_CAP);
}

void hc_sigv4_result_free(hc_sigv4_result *r)
{
    if (r->canonical_request.data != NULL)
        OPENSSL_cleanse(r->canonical_request.data, r->canonical_request.size);
    hc_buf_free(&r->canonical_request);
    hc_buf_free(&r->authorization);
    hc_buf_free(&r->signed_headers);
    hc_buf_free(&r->string_to_sign);
    r->amz_date[0] = '\0';
    r->signature[0] = '\0';
}

/* Appends the canonical headers ("name:v1,v2\n" each, sorted) to cr and the signed header list
 * to signed_list. */
static int put_headers(const hc_sigv4_request *r, const char *amz_date, hc_buf *cr,
                       hc_buf *signed_list, char *err)
{
    size_t n = r->nheaders + 3, count = 0, i;
    hentry *t = malloc(n * sizeof *t);
    hc_buf names;
    int rc = 0;
    if (t == NULL)
        return fail(err, "out of memory");
    hc_buf_init(&names, HC_SIGV4_TEXT_CAP);
    rc |= add_header(t, &count, &names, "host", 4, r->host, strlen(r->host));
    rc |= add_header(t, &count, &names, "x-amz-date", 10, amz_date, 16);
    if (r->session_token != NULL && r->session_token[0] != '\0')
        rc |= add_header(t, &count, &names, "x-amz-security-token", 20, r->session_token,
                         strlen(r->session_token));
    for (i = 0; i < r->nheaders && rc == 0; i++)
        rc |= add_header(t, &count, &names, r->headers[i].name, r->headers[i].name_len,
                         r->headers[i].value ? r->headers[i].value : "", r->headers[i].value_len);
    if (rc != 0) {
        hc_buf_free(&names);
        free(t);
        return fail(err, "the headers are too large to sign");
    }
    for (i = 0; i < count; i++)
        t[i].np = names.data + t[i].name;
    qsort(t, count, sizeof *t, compare_headers);
    for (i = 0; i < count && rc == 0; i++) {
        const char *name = t[i].np;
        int same = i > 0 && compare_bytes(name, t[i].name_len, t[i - 1].np, t[i - 1].name_len) == 0;
        if (same) {
            rc |= puts0(cr, ",");
        } else {
            if (i > 0) {
                rc |= puts0(cr, "\n");
                rc |= puts0(signed_list, ";");
            }
            rc |= put(cr, name, t[i].name_len);
            rc |= puts0(cr, ":");
            rc |= put(signed_list, name, t[i].name_len);
        }
        rc |= put_trimmed(cr, t[i].value, t[i].value_len);
    }
    rc |= puts0(cr, "\n");
    hc_buf_free(&names);
    free(t);
    return rc ? fail(err, "the headers are too large to sign") : 0;
}

/* Writes the x-amz-date to sign into amz (the one given, or now in UTC). */
static int pick_date(const hc_sigv4_request *r, char amz[17], char *err)
{
    time_t now;
    struct tm tm;
    if (r->amz_date != NULL) {
        memcpy(amz, r->amz_date, 17);
        return 0;
    }
    now = time(NULL);
    if (gmtime_r(&now, &tm) == NULL || strftime(amz, 17, "%Y%m%dT%H%M%SZ", &tm) != 16)
        return fail(err, "cannot read the clock");
    return 0;
}

/* Fills out->canonical_request and out->signed_headers: method, path, query, headers, signed
 * headers and payload hash, one per line. */
static int build_canonical(const hc_sigv4_request *r, hc_sigv4_result *out, char *err)
{
    hc_buf *cr = &out->canonical_request;
    char payload_hash[65];
    int rc = 0, q;
    if (sha256_hex(r->payload ? r->payload : "", r->payload_len, payload_hash, err) != 0)
        return -1;
    if (reserve(cr, canonical_bound(r)) != 0)
        return fail(err, "out of memory");
    rc |= puts0(cr, r->method);
    rc |= puts0(cr, "\n");
    rc |= put_path(cr, r->path);
    rc |= puts0(cr, "\n");
    if (rc == 0) {
        q = put_query(cr, r->query);
        if (q == -2)
            return fail(err, "the query has a '%' not followed by two hex digits");
        rc |= q;
        rc |= puts0(cr, "\n");
    }
    if (rc != 0)
        return fail(err, "the request is too large to sign");
    if (put_headers(r, out->amz_date, cr, &out->signed_headers, err) != 0)
        return -1;
    rc |= puts0(cr, "\n");
    rc |= put(cr, out->signed_headers.data, out->signed_headers.len);
    rc |= puts0(cr, "\n");
    rc |= put(cr, payload_hash, 64);
    return rc ? fail(err, "the request is too large to sign") : 0;
}

/* Appends "date8/region/service/aws4_request", the credential scope, to b. */
static int put_scope(hc_buf *b, const hc_sigv4_request *r, const char *date8)
{
    int rc = puts0(b, date8);
    rc |= puts0(b, "/");
    rc |= puts0(b, r->region);
    rc |= puts0(b, "/");
    rc |= puts0(b, r->service);
    rc |= puts0(b, "/" TERMINATOR);
    return rc;
}

int hc_sigv4_sign(const hc_sigv4_request *r, hc_sigv4_result *out, char *err)
{
    char date8[9], cr_hash[65];
    hc_buf *sts = &out->string_to_sign, *auth = &out->authorization;
    int rc = 0;

    result_init(out);
    ERR_clear_error();
    if (check_request(r, err) != 0 || pick_date(r, out->amz_date, err) != 0)
        return -1;
    memcpy(date8, out->amz_date, 8);
    date8[8] = '\0';
    if (build_canonical(r, out, err) != 0
        || sha256_hex(out->canonical_request.data, out->canonical_request.len, cr_hash, err) != 0) {
        hc_sigv4_result_free(out);
        return -1;
    }
    /* The string to sign: algorithm, date, scope, hash of the canonical request. */
    rc |= puts0(sts, ALGORITHM "\n");
    rc |= put(sts, out->amz_date, 16);
    rc |= puts0(sts, "\n");
    rc |= put_scope(sts, r, date8);
    rc |= puts0(sts, "\n");
    rc |= put(sts, cr_hash, 64);
    if (rc != 0 || compute_signature(r, date8, sts, out->signature, err) != 0) {
        hc_sigv4_result_free(out);
        return rc ? fail(err, "out of memory") : -1;
    }
    rc |= puts0(auth, ALGORITHM " Credential=");
    rc |= puts0(auth, r->access_key);
    rc |= puts0(auth, "/");
    rc |= put_scope(auth, r, date8);
    rc |= puts0(auth, ", SignedHeaders=");
    rc |= put(auth, out->signed_headers.data, out->signed_headers.len);
    rc |= puts0(auth, ", Signature=");
    rc |= put(auth, out->signature, 64);
    if (rc != 0) {
        hc_sigv4_result_free(out);
        return fail(err, "out of memory");
    }
    return 0;
}
