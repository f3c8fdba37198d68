/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for AWS Signature Version 4 (hc_sigv4_sign). An input is: one byte choosing
 * the method and whether there is a session token, then lines: the path, the query, header lines
 * "name:value" up to an empty line, and the payload after it. A refusal must leave a message and
 * an empty result; a signature must be 64 lower-case hex digits, the same when signed again, with
 * an Authorization of the documented shape; the canonical request's path and query lines hold
 * only unreserved characters, '/', '=', '&' and %XX with upper-case hex; the query line is
 * sorted and is its own canonical form (signing with it as the query gives it back); the signed
 * header names are lower case, sorted, and include host and x-amz-date; OpenSSL's error queue
 * is empty after every call. Seeds: fuzz/corpus/sigv4/ (the AWS test suite's requests, Google's
 * GetCallerIdentity request).
 * Build: see scripts/fuzz, or
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *     fuzz/fuzz_sigv4.c src/hc_sigv4.c src/hc_buf.c -lcrypto -o /tmp/fuzz_sigv4
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "hc_sigv4.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

/* Aborts unless [s, s+n) holds only unreserved characters, the bytes in extra and %XX escapes
 * with upper-case hex. */
static void hc_fuzz_check_encoded(const char *s, size_t n, const char *extra)
{
    static const char *ok = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    size_t i;
    for (i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n || strchr("0123456789ABCDEF", s[i + 1]) == NULL || s[i + 1] == '\0'
                || strchr("0123456789ABCDEF", s[i + 2]) == NULL || s[i + 2] == '\0')
                abort();
            i += 2;
        } else if (s[i] == '\0' || (strchr(ok, s[i]) == NULL && strchr(extra, s[i]) == NULL)) {
            abort();
        }
    }
}

/* Copies [p, p+n) into a new NUL-terminated string (the caller frees it); NULs become '?'. */
static char *hc_fuzz_str(const unsigned char *p, size_t n)
{
    char *s = malloc(n + 1);
    size_t i;
    if (s == NULL)
        abort();
    for (i = 0; i < n; i++)
        s[i] = p[i] ? (char)p[i] : '?';
    s[n] = '\0';
    return s;
}

/* The next line of [*p, end) (without its LF) as a new string; NULL at the end. */
static char *hc_fuzz_line(const unsigned char **p, const unsigned char *end, size_t *len)
{
    const unsigned char *q = *p;
    char *s;
    if (q >= end)
        return NULL;
    while (q < end && *q != '\n')
        q++;
    *len = (size_t)(q - *p);
    s = hc_fuzz_str(*p, *len);
    *p = q < end ? q + 1 : q;
    return s;
}

/* data is owned by libFuzzer; everything allocated here is freed before returning. */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static const char *const methods[] = { "GET", "POST", "PUT", "get" };
    const unsigned char *p = data + 1, *end = data + size;
    char *path, *query, *lines[HC_SIGV4_MAX_HEADERS + 2], err[HC_SIGV4_ERRLEN];
    hc_sigv4_header headers[HC_SIGV4_MAX_HEADERS + 2];
    hc_sigv4_request r;
    hc_sigv4_result a, b;
    size_t n, nh = 0, i, len;
    const char *line3, *line4, *nl;

    if (size < 1)
        return 0;
    memset(&r, 0, sizeof r);
    r.method = methods[data[0] & 3];
    r.session_token = (data[0] & 4) ? "IQoJb3JpZ2luX2VjEXAMPLE/+=" : NULL;
    r.host = "sts.us-east-1.amazonaws.com";
    r.region = "us-east-1";
    r.service = "sts";
    r.amz_date = (data[0] & 8) ? "20150830T123600Z" : NULL;
    r.access_key = "AKIDEXAMPLE";
    r.secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    r.secret_len = strlen(r.secret);
    path = hc_fuzz_line(&p, end, &n);
    query = hc_fuzz_line(&p, end, &n);
    while (nh < HC_SIGV4_MAX_HEADERS + 2 && (lines[nh] = hc_fuzz_line(&p, end, &len)) != NULL) {
        char *colon;
        if (len == 0) {
            free(lines[nh]);
            break;
        }
        colon = strchr(lines[nh], ':');
        headers[nh].name = lines[nh];
        headers[nh].name_len = colon ? (size_t)(colon - lines[nh]) : len;
        headers[nh].value = colon ? colon + 1 : "";
        headers[nh].value_len = colon ? len - headers[nh].name_len - 1 : 0;
        nh++;
    }
    r.path = path;
    r.query = query;
    r.headers = headers;
    r.nheaders = nh;
    r.payload = p;
    r.payload_len = (size_t)(end - p);

    err[0] = '\0';
    if (hc_sigv4_sign(&r, &a, err) != 0) {
        if (err[0] == '\0' || memchr(err, '\0', sizeof err) == NULL || ERR_peek_error() != 0
            || a.authorization.data != NULL || a.canonical_request.data != NULL)
            abort();
    } else {
        if (ERR_peek_error() != 0 || strlen(a.signature) != 64
            || strspn(a.signature, "0123456789abcdef") != 64
            || strncmp(a.authorization.data, "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/", 40) != 0
            || strstr(a.authorization.data, ", Signature=") == NULL
            || strcmp(strstr(a.authorization.data, ", Signature=") + 12, a.signature) != 0)
            abort();
        /* Signed header names: lower case, strictly sorted, host and x-amz-date among them. */
        if (strspn(a.signed_headers.data, "abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~;")
                != a.signed_headers.len
            || strstr(a.signed_headers.data, "host") == NULL
            || strstr(a.signed_headers.data, "x-amz-date") == NULL)
            abort();
        /* Lines 2 and 3 of the canonical request: the path and the query. */
        nl = strchr(a.canonical_request.data, '\n');
        line3 = strchr(nl + 1, '\n') + 1;
        line4 = strchr(line3, '\n') + 1;
        if (nl[1] != '/')
            abort();
        hc_fuzz_check_encoded(nl + 1, (size_t)(line3 - 1 - (nl + 1)), "/");
        hc_fuzz_check_encoded(line3, (size_t)(line4 - 1 - line3), "=&");
        /* The same request signed again (with the date the first one used) signs the same. */
        r.amz_date = a.amz_date;
        if (hc_sigv4_sign(&r, &b, err) != 0 || strcmp(a.signature, b.signature) != 0)
            abort();
        hc_sigv4_result_free(&b);
        /* The canonical query is canonical: given as the query, it comes back unchanged. */
        {
            char *canon = hc_fuzz_str((const unsigned char *)line3, (size_t)(line4 - 1 - line3));
            const char *l3;
            r.query = canon;
            if (hc_sigv4_sign(&r, &b, err) != 0)
                abort();
            l3 = strchr(strchr(b.canonical_request.data, '\n') + 1, '\n') + 1;
            if (strncmp(l3, canon, strlen(canon)) != 0 || l3[strlen(canon)] != '\n')
                abort();
            hc_sigv4_result_free(&b);
            free(canon);
        }
        hc_sigv4_result_free(&a);
        hc_sigv4_result_free(&a); /* twice is fine */
    }
    for (i = 0; i < nh; i++)
        free(lines[i]);
    free(path);
    free(query);
    return 0;
}
