/* SPDX-License-Identifier: MIT */
/* AWS Signature Version 4 (AWS4-HMAC-SHA256) with OpenSSL, for workload identity federation from
 * AWS: the `aws` credential source signs a GetCallerIdentity request, and the signed request is
 * the subject token Google's STS exchanges. Pure C over byte ranges, no Lua and no network: the
 * canonical request, the string to sign, the signing key (HMAC-SHA256 chain from "AWS4" + the
 * secret) and the Authorization value. Every copy of the secret and of the derived keys made
 * here is wiped with OPENSSL_cleanse before it is freed; no error message holds a secret.
 *
 * Canonicalisation, as botocore does it for every service but S3:
 * - path: the path as it goes on the wire; dot segments and empty segments removed, then every
 *   byte outside the unreserved set and '/' percent-encoded ("/a b" -> "/a%20b", "/%41" ->
 *   "/%2541": AWS encodes the wire path once more);
 * - query: the query as it goes on the wire (without '?'); split at '&', each part at its first
 *   '=', %XX decoded ('+' stays a '+'), re-encoded with only the unreserved set left as is, and
 *   sorted by name, then value, byte by byte;
 * - headers: names lower-cased, values with the spaces and tabs around them removed and runs of
 *   them inside turned into one space, repeated names joined with ',' in the order given; host,
 *   x-amz-date and (with a session token) x-amz-security-token are added and signed;
 * - payload: its SHA-256 in hex. */
#ifndef HC_SIGV4_H
#define HC_SIGV4_H

#include <stddef.h>

#include "hc_buf.h"

/* Size of the error buffer hc_sigv4_sign fills. */
#define HC_SIGV4_ERRLEN 256
/* Most headers a request may ask to sign (besides those added here). */
#define HC_SIGV4_MAX_HEADERS 64
/* Cap of each text built here (canonical request, string to sign, Authorization). */
#define HC_SIGV4_TEXT_CAP (64u * 1024u)

/* One header to sign; both ranges belong to the caller. */
typedef struct hc_sigv4_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} hc_sigv4_header;

/* A request to sign. Every pointer belongs to the caller and is only read during the call; the
 * strings are NUL-terminated unless a length is given. */
typedef struct hc_sigv4_request {
    const char *method; /* "GET", "POST", ... (upper case, as sent) */
    const char *host;   /* the Host header: "sts.us-east-1.amazonaws.com" (":port" if any) */
    const char *path;   /* wire form, "/" when NULL or empty */
    const char *query;  /* wire form without '?', NULL or "" for none */
    const hc_sigv4_header *headers; /* more headers to sign; none may be host, authorization,
                                     * x-amz-date or x-amz-security-token */
    size_t nheaders;
    const void *payload; /* the body (NULL with payload_len 0 for none) */
    size_t payload_len;
    const char *region;     /* "us-east-1" */
    const char *service;    /* "sts" */
    const char *amz_date;   /* "YYYYMMDDTHHMMSSZ"; NULL: now (UTC) */
    const char *access_key; /* the access key id */
    const char *secret;     /* the secret access key, secret_len bytes */
    size_t secret_len;
    const char *session_token; /* NULL or "" when the credentials have none */
} hc_sigv4_request;

/* What signing gives. The buffers are owned by the result: free it with hc_sigv4_result_free.
 * canonical_request holds the session token when there is one: it is for tests, never for a
 * log. */
typedef struct hc_sigv4_result {
    char amz_date[17];     /* the x-amz-date value signed */
    char signature[65];    /* hex HMAC-SHA256 */
    hc_buf authorization;  /* "AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/
                            * aws4_request, SignedHeaders=a;b, Signature=hex" */
    hc_buf signed_headers; /* "host;x-amz-date;..." */
    hc_buf canonical_request;
    hc_buf string_to_sign;
} hc_sigv4_result;

/* Signs req. On success returns 0 with *out filled (the caller frees it with
 * hc_sigv4_result_free). On failure returns -1 with a message in err (HC_SIGV4_ERRLEN bytes) and
 * *out empty (nothing to free, freeing is still fine). */
int hc_sigv4_sign(const hc_sigv4_request *req, hc_sigv4_result *out, char *err);

/* Frees what a result holds (wiping the canonical request first) and leaves it empty; safe on an
 * empty or already freed result. */
void hc_sigv4_result_free(hc_sigv4_result *r);

#endif
