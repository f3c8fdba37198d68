/* SPDX-License-Identifier: MIT */
/* RS256 signing of JSON Web Tokens with OpenSSL 3, for Google's service account credentials:
 * loading a PEM private key (PKCS#8 "PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY"), base64url
 * without padding, and the compact serialisation header.claims.signature. Every copy of key
 * material made here is wiped before it is freed, and OpenSSL failures become one message
 * "what: reason" with the error queue cleared; no message ever holds key bytes. */
#ifndef HC_JWT_H
#define HC_JWT_H

#include <stddef.h>
#include <openssl/evp.h>

#include "hc_buf.h"

/* Size of the error buffers the functions below fill. */
#define HC_JWT_ERRLEN 256
/* RFC 7518 section 3.3: RS256 keys are at least 2048 bits. */
#define HC_JWT_MIN_BITS 2048

/* Parses the first PEM block of pem (len bytes, need not be NUL-terminated) as an unencrypted
 * RSA private key. Returns a key the caller owns (free with hc_jwt_key_free), or NULL with a
 * message in err (HC_JWT_ERRLEN bytes). */
EVP_PKEY *hc_jwt_key_load(const char *pem, size_t len, char *err);

/* Frees a key from hc_jwt_key_load (OpenSSL clears the private numbers); NULL is fine. */
void hc_jwt_key_free(EVP_PKEY *key);

/* Appends base64url(header) "." base64url(claims) "." base64url(RS256 signature) to out.
 * header and claims are JSON texts the caller built. Returns 0, or -1 with a message in err
 * (out may then hold a partial token; the caller frees it). */
int hc_jwt_sign(EVP_PKEY *key, const char *header, size_t hlen, const char *claims, size_t clen,
                hc_buf *out, char *err);

/* Appends the base64url encoding of n bytes (RFC 4648 section 5, no '=' padding) to out.
 * Returns 0, or -1 when out's cap is reached. */
int hc_jwt_base64url(const void *p, size_t n, hc_buf *out);

/* Writes the SHA-256 of n bytes as 64 lower-case hex digits and a NUL into hex[65].
 * Returns 0, or -1 with a message in err. */
int hc_jwt_sha256_hex(const void *p, size_t n, char hex[65], char *err);

#endif
