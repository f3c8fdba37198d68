/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the splitting of a response's header block into
 * fields (hc_url_next_field, which transfer:result() uses for every answer
 * a server sends). Every input is a header block as libcurl hands it over.
 * The fields found must be exactly those of an independent line-by-line
 * reference (same names and values, in order), point inside the input, have
 * a token as name and a value without LF or surrounding blanks, and the
 * walk must end at the end of the input. Seeds: fuzz/corpus/headers/
 * (Orthanc's, nginx's and the emulator's answers, folded and odd lines).
 * Build: see scripts/fuzz, or
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *     fuzz/fuzz_headers.c src/hc_url.c src/hc_buf.c -o /tmp/fuzz_headers
 */
#include <stdlib.h>
#include <string.h>

#include "hc_url.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static const char hc_fuzz_tchars[] =
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* The reference: the field of the line [line, stop) as RFC 9110 section 5 reads it, or 0. */
static int hc_fuzz_line_field(const char *line, const char *stop, hc_url_field *f)
{
    const char *colon = memchr(line, ':', (size_t)(stop - line)), *c;
    if (colon == NULL || colon == line)
        return 0;
    for (c = line; c < colon; c++)
        if (*c == '\0' || strchr(hc_fuzz_tchars, *c) == NULL)
            return 0;
    f->name = line;
    f->name_len = (size_t)(colon - line);
    for (c = colon + 1; c < stop && (*c == ' ' || *c == '\t'); c++)
        ;
    while (stop > c && (stop[-1] == ' ' || stop[-1] == '\t'))
        stop--;
    f->value = c;
    f->value_len = (size_t)(stop - c);
    return 1;
}

/* data is owned by libFuzzer; nothing is allocated. */
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    const char *begin = (const char *)data, *end = begin + size, *p = begin, *line = begin;
    const char *last = begin;
    hc_url_field got = { NULL, 0, NULL, 0 }, want = { NULL, 0, NULL, 0 };

    if (size == 0)
        return 0;
    for (;;) {
        /* The next field of the reference. */
        int have = 0;
        while (!have && line < end) {
            const char *eol = memchr(line, '\n', (size_t)(end - line));
            const char *stop = eol != NULL ? eol : end;
            while (stop > line && stop[-1] == '\r')
                stop--;
            have = hc_fuzz_line_field(line, stop, &want);
            line = eol != NULL ? eol + 1 : end;
        }
        if (!hc_url_next_field(&p, end, &got)) {
            if (have || p != end)
                abort();
            return 0;
        }
        if (!have || got.name != want.name || got.name_len != want.name_len
            || got.value != want.value || got.value_len != want.value_len)
            abort();
        /* In order, inside the input, and the walk moves past the field. */
        if (got.name < last || got.value + got.value_len > end || p <= got.name || p > end)
            abort();
        if (memchr(got.value, '\n', got.value_len) != NULL
            || memchr(got.name, ':', got.name_len) != NULL)
            abort();
        if (got.value_len > 0 && (got.value[0] == ' ' || got.value[0] == '\t'
                                  || got.value[got.value_len - 1] == ' '
                                  || got.value[got.value_len - 1] == '\t'))
            abort();
        last = p;
    }
}
