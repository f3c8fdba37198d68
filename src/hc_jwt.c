/* SPDX-License-Identifier: MIT */
/* RS256 JSON Web Tokens with OpenSSL 3 (see hc_jwt.h). The PEM block is decoded here rather than
 * by PEM_read_bio_PrivateKey so that we can say exactly what is wrong with a key file (not PEM,
 * a certificate, encrypted, not RSA, too short) and so that the one decoded copy of the key we
 * hold is in OpenSSL's secure heap and cleared when freed. */
#include "hc_jwt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

/* ---- errors -------------------------------------------------------------------------- */

/* Writes "what: reason" from OpenSSL's error queue and empties it. The queue lists the root
 * cause first, but the key decoders add "unsupported" and ASN.1 "nested asn1 error" entries
 * around it, which say nothing to a user; those are skipped when something better is there.
 * Only the reason string is used: an entry's "data" part may quote input, and the input here
 * is a private key. */
static void ssl_error(char *err, const char *what)
{
    unsigned long e, first = 0, best = 0;
    const char *reason = NULL;
    while ((e = ERR_get_error()) != 0) {
        if (first == 0)
            first = e;
        if (best == 0 && ERR_GET_LIB(e) != ERR_LIB_OSSL_DECODER &&
            ERR_GET_REASON(e) != ERR_R_NESTED_ASN1_ERROR)
            best = e;
    }
    if (best == 0)
        best = first;
    if (best != 0)
        reason = ERR_reason_error_string(best);
    snprintf(err, HC_JWT_ERRLEN, "%s: %s", what, reason ? reason : "unknown OpenSSL error");
    ERR_clear_error();
}

static void plain_error(char *err, const char *what)
{
    ERR_clear_error();
    snprintf(err, HC_JWT_ERRLEN, "%s", what);
}

/* ---- keys ---------------------------------------------------------------------------- */

/* A PEM label is a header line we echo in an error; keep it short and printable. */
static void label_error(char *err, const char *name)
{
    char shown[41];
    size_t i;
    for (i = 0; name[i] != '\0' && i < sizeof shown - 1; i++)
        shown[i] = (name[i] >= 0x20 && name[i] < 0x7f) ? name[i] : '?';
    shown[i] = '\0';
    ERR_clear_error();
    snprintf(err, HC_JWT_ERRLEN,
             "the PEM block is '%s', not a private key "
             "(expected '-----BEGIN PRIVATE KEY-----' or '-----BEGIN RSA PRIVATE KEY-----')",
             shown);
}

/* Whether the private key's components agree (n = p*q, d and e inverse, CRT values), the check
 * OpenSSL calls pairwise; cheap next to a signature. */
static int key_is_consistent(EVP_PKEY *key)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    int ok = ctx != NULL && EVP_PKEY_pairwise_check(ctx) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

EVP_PKEY *hc_jwt_key_load(const char *pem, size_t len, char *err)
{
    BIO *bio;
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL;
    long dlen = 0;
    const unsigned char *p;
    EVP_PKEY *key = NULL;
    int bits;

    ERR_clear_error();
    if (len == 0 || len > 64 * 1024) {
        plain_error(
            err, len == 0 ? "the private key is empty" : "the private key is larger than 64 KiB");
        return NULL;
    }
    bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL) {
        ssl_error(err, "cannot read the private key");
        return NULL;
    }
    /* PEM_FLAG_SECURE: the decoded bytes (and OpenSSL's working copies) live in the secure
     * heap, which is cleared on free. */
    if (!PEM_read_bio_ex(bio, &name, &header, &data, &dlen,
                         PEM_FLAG_SECURE | PEM_FLAG_EAY_COMPATIBLE)) {
        unsigned long e = ERR_peek_error();
        BIO_free(bio);
        if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)
            plain_error(err,
                        "no PEM private key found (expected a '-----BEGIN PRIVATE KEY-----' block "
                        "with real line breaks)");
        else
            ssl_error(err, "the private key is not valid PEM");
        return NULL;
    }
    BIO_free(bio);

    if (strcmp(name, "ENCRYPTED PRIVATE KEY") == 0
        || (header != NULL && strstr(header, "ENCRYPTED") != NULL)) {
        plain_error(err, "the private key is encrypted; use the unencrypted key Google issues "
                    "(or decrypt it with 'openssl pkey')");
    } else if (strcmp(name, "PRIVATE KEY") != 0 && strcmp(name, "RSA PRIVATE KEY") != 0) {
        if (strcmp(name, "EC PRIVATE KEY") == 0)
            plain_error(err, "the private key is not an RSA key; RS256 needs RSA");
        else
            label_error(err, name);
    } else {
        p = data;
        /* Handles PKCS#8 PrivateKeyInfo and the PKCS#1 RSAPrivateKey structure alike. */
        key = d2i_AutoPrivateKey_ex(NULL, &p, dlen, NULL, NULL);
        if (key == NULL)
            ssl_error(err, "the PEM block does not hold a valid private key");
        else if (!EVP_PKEY_is_a(key, "RSA")) {
            plain_error(err, "the private key is not an RSA key; RS256 needs RSA");
            EVP_PKEY_free(key);
            key = NULL;
        } else if ((bits = EVP_PKEY_get_bits(key)) < HC_JWT_MIN_BITS) {
            ERR_clear_error();
            snprintf(err, HC_JWT_ERRLEN, "the RSA key has %d bits; RS256 needs at least %d", bits,
                     HC_JWT_MIN_BITS);
            EVP_PKEY_free(key);
            key = NULL;
        } else if (!key_is_consistent(key)) {
            /* A damaged key can parse and still not sign ("no inverse"): say so at load. */
            ssl_error(err, "the private key is damaged (its parts do not belong together)");
            EVP_PKEY_free(key);
            key = NULL;
        }
    }
    OPENSSL_secure_clear_free(data, (size_t)dlen);
    OPENSSL_secure_free(name);
    OPENSSL_secure_free(header);
    return key;
}

void hc_jwt_key_free(EVP_PKEY *key)
{
    EVP_PKEY_free(key);
}

/* ---- encoding ------------------------------------------------------------------------ */

int hc_jwt_base64url(const void *p, size_t n, hc_buf *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *s = p;
    char q[4];
    size_t i;
    for (i = 0; i + 3 <= n; i += 3) {
        unsigned long v = ((unsigned long)s[i] << 16) | ((unsigned long)s[i + 1] << 8) | s[i + 2];
        q[0] = abc[(v >> 18) & 63];
        q[1] = abc[(v >> 12) & 63];
        q[2] = abc[(v >> 6) & 63];
        q[3] = abc[v & 63];
        if (hc_buf_append(out, q, 4) != 0)
            return -1;
    }
    if (n - i == 1) {
        q[0] = abc[s[i] >> 2];
        q[1] = abc[(s[i] & 3) << 4];
        return hc_buf_append(out, q, 2);
    }
    if (n - i == 2) {
        q[0] = abc[s[i] >> 2];
        q[1] = abc[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
        q[2] = abc[(s[i + 1] & 15) << 2];
        return hc_buf_append(out, q, 3);
    }
    return 0;
}

int hc_jwt_sha256_hex(const void *p, size_t n, char hex[65], char *err)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0, i;
    ERR_clear_error();
    if (!EVP_Digest(p, n, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32) {
        ssl_error(err, "SHA-256 failed");
        return -1;
    }
    for (i = 0; i < mdlen; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = '\0';
    return 0;
}

/* ---- signing ------------------------------------------------------------------------- */

int hc_jwt_sign(EVP_PKEY *key, const char *header, size_t hlen, const char *claims, size_t clen,
                hc_buf *out, char *err)
{
    size_t start = out->len, siglen = 0;
    const unsigned char *signed_part;
    unsigned char *sig = NULL;
    EVP_MD_CTX *ctx = NULL;
    int rc = -1;

    ERR_clear_error();
    if (hc_jwt_base64url(header, hlen, out) != 0 || hc_buf_append(out, ".", 1) != 0 ||
        hc_jwt_base64url(claims, clen, out) != 0) {
        plain_error(err, "cannot sign the JWT: it is too large");
        return -1;
    }
    /* header.claims, as appended to out (which does not move until the signature goes on). */
    signed_part = (const unsigned char *)out->data + start;
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestSignInit_ex(ctx, NULL, "SHA256", NULL, NULL, key, NULL) != 1
        || EVP_DigestSign(ctx, NULL, &siglen, signed_part, out->len - start) != 1) {
        ssl_error(err, "cannot sign the JWT");
        goto done;
    }
    sig = malloc(siglen);
    if (sig == NULL) {
        plain_error(err, "cannot sign the JWT: out of memory");
        goto done;
    }
    if (EVP_DigestSign(ctx, sig, &siglen, signed_part, out->len - start) != 1) {
        ssl_error(err, "cannot sign the JWT");
        goto done;
    }
    if (hc_buf_append(out, ".", 1) != 0 || hc_jwt_base64url(sig, siglen, out) != 0) {
        plain_error(err, "cannot sign the JWT: it is too large");
        goto done;
    }
    rc = 0;
done:
    free(sig);
    EVP_MD_CTX_free(ctx);
    return rc;
}
