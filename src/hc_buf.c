/* SPDX-License-Identifier: MIT */
/* Capped byte buffers (see hc_buf.h). */
#include "hc_buf.h"

#include <stdlib.h>
#include <string.h>

void hc_buf_init(hc_buf *b, size_t cap)
{
    b->data = NULL;
    b->len = 0;
    b->size = 0;
    b->cap = cap;
}

int hc_buf_append(hc_buf *b, const void *p, size_t n)
{
    if (n > b->cap - b->len)
        return -1;
    if (b->len + n + 1 > b->size) {
        size_t want = b->size ? b->size : 256;
        char *grown;
        while (want < b->len + n + 1)
            want *= 2;
        if (want > b->cap + 1)
            want = b->cap + 1;
        grown = realloc(b->data, want);
        if (grown == NULL)
            return -1;
        b->data = grown;
        b->size = want;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

void hc_buf_free(hc_buf *b)
{
    free(b->data);
    hc_buf_init(b, b->cap);
}

void hc_buf_hex(const void *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *b = p;
    size_t i;
    for (i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
}
