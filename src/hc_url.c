/* SPDX-License-Identifier: MIT */
/* Percent-encoding and header text (see hc_url.h). */
#include "hc_url.h"

#include <string.h>

static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

int hc_url_escape(const char *s, size_t n, const char *keep, hc_buf *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c) || (c != 0 && keep != NULL && strchr(keep, c) != NULL)) {
            if (hc_buf_append(out, &s[i], 1) != 0)
                return -1;
        } else {
            char e[3];
            e[0] = '%';
            e[1] = hex[c >> 4];
            e[2] = hex[c & 15];
            if (hc_buf_append(out, e, 3) != 0)
                return -1;
        }
    }
    return 0;
}

int hc_url_has_ctl(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 1;
    return 0;
}

/* RFC 9110 tchar: what a field name is made of. */
static int tchar(unsigned char c)
{
    return unreserved(c) || (c != 0 && strchr("!#$%&'*+^`|", c) != NULL);
}

int hc_url_next_field(const char **p, const char *end, hc_url_field *f)
{
    while (*p < end) {
        const char *line = *p, *eol = memchr(line, '\n', (size_t)(end - line));
        const char *stop = eol != NULL ? eol : end, *v = line;
        *p = eol != NULL ? eol + 1 : end;
        while (stop > line && stop[-1] == '\r')
            stop--;
        /* A status line has '/' and spaces before any colon, so it is no token either. */
        while (v < stop && tchar((unsigned char)*v))
            v++;
        if (v == line || v == stop || *v != ':')
            continue;
        f->name = line;
        f->name_len = (size_t)(v - line);
        v++;
        while (v < stop && (*v == ' ' || *v == '\t'))
            v++;
        while (stop > v && (stop[-1] == ' ' || stop[-1] == '\t'))
            stop--;
        f->value = v;
        f->value_len = (size_t)(stop - v);
        return 1;
    }
    return 0;
}
