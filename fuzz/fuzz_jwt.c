/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the PEM private key loader and base64url: every input
 * is loaded as a key file's "private_key" text. The loader must never crash,
 * read out of bounds or leak; a refusal must leave a NUL-terminated message
 * and an empty OpenSSL error queue; an accepted key must be RSA of at least
 * 2048 bits and sign. base64url of the input must have the length RFC 4648
 * gives and only URL-safe characters. Seeds: keys made with `openssl genpkey`
 * and `openssl genrsa -traditional` in a scratch corpus directory (keys are
 * never committed).
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *          fuzz/fuzz_jwt.c src/hc_jwt.c src/hc_buf.c -lcrypto -o /tmp/fuzz_jwt
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "hc_jwt.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define B64URL "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

/* Aborts unless b holds the base64url form of n bytes. */
static void hc_fuzz_check_b64(const hc_buf *b, size_t n)
{
    size_t i, want = n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
    if (b->len != want)
        abort();
    for (i = 0; i < b->len; i++)
        if (strchr(B64URL, b->data[i]) == NULL)
            abort();
}

/* data is owned by libFuzzer; nothing is kept. */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    char err[HC_JWT_ERRLEN];
    EVP_PKEY *key;
    hc_buf b;

    hc_buf_init(&b, 4 * size + 8);
    if (hc_jwt_base64url(data, size, &b) != 0)
        abort();
    hc_fuzz_check_b64(&b, size);
    hc_buf_free(&b);

    err[0] = '\0';
    key = hc_jwt_key_load((const char *)data, size, err);
    if (key == NULL) {
        if (err[0] == '\0' || memchr(err, '\0', sizeof err) == NULL || ERR_peek_error() != 0)
            abort();
        return 0;
    }
    if (!EVP_PKEY_is_a(key, "RSA") || EVP_PKEY_get_bits(key) < HC_JWT_MIN_BITS)
        abort();
    hc_buf_init(&b, 64 * 1024);
    if (hc_jwt_sign(key, "{}", 2, "{}", 2, &b, err) != 0 || ERR_peek_error() != 0)
        abort();
    hc_buf_free(&b);
    hc_jwt_key_free(key);
    return 0;
}
