/* SPDX-License-Identifier: MIT */
/* Multipart push parser (see hc_multipart.h). The delimiter "\r\n--boundary" starts with the only
 * CR it contains (bchars have none), so a failed partial match never hides the start of another
 * one except at the failing byte itself: no backtracking table, and the bytes held back at a
 * piece's edge are always a prefix of the delimiter, which the parser already has. */
#define _GNU_SOURCE /* memmem, memrchr */
#include "hc_multipart.h"

#include <string.h>

enum {
    ST_PREAMBLE,    /* before the first delimiter */
    ST_AFTER_DELIM, /* a delimiter was matched: padding, CRLF or "--" follows */
    ST_PADDING,     /* transport padding (spaces, tabs) after a delimiter */
    ST_DELIM_LF,    /* the CR ending a delimiter line was read */
    ST_CLOSE_DASH,  /* the first '-' of "--" after a delimiter was read */
    ST_HEADERS,     /* a part's header block */
    ST_DATA,        /* a part's content */
    ST_EPILOGUE     /* after the close delimiter: ignored */
};

static const char BCHARS[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=? ";
static const char TCHARS[] =
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

int hc_multipart_check_boundary(const char *b, size_t n)
{
    size_t i;
    if (n < 1 || n > HC_MP_MAX_BOUNDARY || b[n - 1] == ' ')
        return HC_MP_BOUNDARY_LENGTH;
    for (i = 0; i < n; i++)
        if (b[i] == '\0' || strchr(BCHARS, b[i]) == NULL)
            return HC_MP_BOUNDARY_CHARACTER;
    return HC_MP_BOUNDARY_OK;
}

static int valid_boundary(const char *b, size_t n)
{
    return hc_multipart_check_boundary(b, n) == HC_MP_BOUNDARY_OK;
}

int hc_multipart_init(hc_multipart *m, const char *boundary, size_t len,
                      const hc_multipart_callbacks *cb, void *ud)
{
    memset(m, 0, sizeof *m);
    hc_buf_init(&m->headers, HC_MP_MAX_HEADERS);
    if (!valid_boundary(boundary, len)) {
        m->error = HC_MP_ERR_NO_BOUNDARY;
        return -1;
    }
    m->cb = cb;
    m->ud = ud;
    memcpy(m->delim, "\r\n--", 4);
    memcpy(m->delim + 4, boundary, len);
    m->delim_len = 4 + len;
    m->delim[m->delim_len] = '\0';
    m->state = ST_PREAMBLE;
    /* The first delimiter may open the body, with no CRLF before it: start as if one was read. */
    m->matched = 2;
    return 0;
}

void hc_multipart_free(hc_multipart *m)
{
    hc_buf_free(&m->headers);
}

const char *hc_multipart_strerror(int code)
{
    switch (code) {
    case HC_MP_OK: return "no error";
    case HC_MP_ERR_NO_BOUNDARY: return "the body does not start with the boundary delimiter";
    case HC_MP_ERR_HEADERS_TOO_LARGE: return "a part's header block is larger than 64 KiB";
    case HC_MP_ERR_HEADERS_MALFORMED: return "a part's header block is malformed";
    case HC_MP_ERR_DELIMITER:
        return "a boundary delimiter is followed by something other than CRLF or \"--\"";
    case HC_MP_ERR_TRUNCATED: return "the body ended before the close delimiter";
    case HC_MP_ERR_CALLBACK: return "stopped by the consumer";
    default: return "unknown error";
    }
}

static int set_error(hc_multipart *m, int code)
{
    if (m->error == HC_MP_OK)
        m->error = code;
    return m->error;
}

/* Content bytes: passed on inside a part, skipped (and counted) in the preamble. */
static int content(hc_multipart *m, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    if (m->state == ST_PREAMBLE) {
        m->preamble += n;
        if (m->preamble > HC_MP_MAX_PREAMBLE)
            return set_error(m, HC_MP_ERR_NO_BOUNDARY);
        return 0;
    }
    if (m->cb->part_data(m->ud, p, n) != 0)
        return set_error(m, HC_MP_ERR_CALLBACK);
    return 0;
}

/* Looks for the delimiter in p[*i, n), passing on what precedes it as content in as few calls
 * as possible (one span of the piece, plus the held-back bytes of a match that failed). */
static int scan(hc_multipart *m, const char *p, size_t n, size_t *i)
{
    size_t pos = *i, start = pos, mstart = pos;
    int carried = m->matched > 0;   /* the held-back bytes came with an earlier piece */
    while (pos < n) {
        if (m->matched == 0) {
            /* The whole delimiter in the rest of the piece: memmem skips through content (a
             * memchr for each CR stopped every 256 bytes of pixel data on average). */
            const char *hit = memmem(p + pos, n - pos, m->delim, m->delim_len), *cr;
            size_t from;
            if (hit != NULL) {
                mstart = (size_t)(hit - p);
                *i = mstart + m->delim_len;
                if (content(m, p + start, mstart - start) != 0) /* not carried: matched was 0 */
                    return m->error;
                m->state = ST_AFTER_DELIM;
                return 0;
            }
            /* None: a delimiter can only begin in the last delim_len - 1 bytes, at the last CR
             * there (its first byte is its only CR); that start is held back. */
            from = n - pos > m->delim_len - 1 ? n - (m->delim_len - 1) : pos;
            cr = memrchr(p + from, '\r', n - from);
            if (cr != NULL && memcmp(cr, m->delim, (size_t)(p + n - cr)) == 0) {
                mstart = (size_t)(cr - p);
                m->matched = n - mstart;
            }
            break;
        }
        if (p[pos] == m->delim[m->matched]) {
            pos++;
            if (++m->matched == m->delim_len) {
                m->matched = 0;
                *i = pos;
                if (!carried && content(m, p + start, mstart - start) != 0)
                    return m->error;
                m->state = ST_AFTER_DELIM;
                return 0;
            }
            continue;
        }
        /* Not a delimiter after all: what was held back is content. */
        if (carried) {
            if (content(m, m->delim, m->matched) != 0)
                return m->error;
            carried = 0;
            start = pos;
        }
        m->matched = 0;
    }
    *i = n;
    if (m->matched == 0)
        return content(m, p + start, n - start);
    /* A delimiter may continue in the next piece: hold back its start. */
    return carried ? 0 : content(m, p + start, mstart - start);
}

/* Checks a complete header block (every line CRLF-terminated, the empty line removed) and
 * lower-cases its field names in place. Returns 0 or -1. */
static int check_headers(char *b, size_t n)
{
    char *p = b, *end = b + n;
    while (p < end) {
        char *eol = memchr(p, '\r', (size_t)(end - p)), *c;
        if (eol == NULL || eol + 1 >= end || eol[1] != '\n'
            || memchr(p, '\n', (size_t)(eol - p)) != NULL)
            return -1;
        for (c = p; c < eol && *c != ':'; c++) {
            if (*c == '\0' || strchr(TCHARS, *c) == NULL)
                return -1;
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c - 'A' + 'a');
        }
        if (c == p || c == eol)
            return -1;
        p = eol + 2;
    }
    return 0;
}

static int headers(hc_multipart *m, const char *p, size_t n, size_t *i)
{
    static const char end_of_block[] = "\r\n\r\n";
    size_t pos = *i, start = pos;
    while (pos < n && m->header_match < 4) {
        char c = p[pos++];
        if (c == end_of_block[m->header_match])
            m->header_match++;
        else
            m->header_match = c == '\r' ? 1 : 0;
    }
    *i = pos;
    if (pos - start > HC_MP_MAX_HEADERS - m->headers.len)
        return set_error(m, HC_MP_ERR_HEADERS_TOO_LARGE);
    if (hc_buf_append(&m->headers, p + start, pos - start) != 0)
        return set_error(m, HC_MP_ERR_HEADERS_TOO_LARGE);
    if (m->header_match < 4)
        return 0;
    /* Complete: drop the empty line that ended it. */
    m->headers.len -= 2;
    if (check_headers(m->headers.data, m->headers.len) != 0)
        return set_error(m, HC_MP_ERR_HEADERS_MALFORMED);
    if (m->cb->part_begin(m->ud, m->headers.data, m->headers.len) != 0)
        return set_error(m, HC_MP_ERR_CALLBACK);
    m->headers.len = 0;
    m->in_part = 1;
    m->matched = 0;
    m->state = ST_DATA;
    return 0;
}

/* The delimiter line is complete: the part before it (if any) is too. */
static int delimiter_done(hc_multipart *m, int close)
{
    if (m->in_part) {
        m->in_part = 0;
        m->parts++;
        if (m->cb->part_end(m->ud) != 0)
            return set_error(m, HC_MP_ERR_CALLBACK);
    }
    if (close) {
        m->state = ST_EPILOGUE;
    } else {
        m->state = ST_HEADERS;
        m->header_match = 2; /* an empty block is a lone CRLF */
        m->headers.len = 0;
    }
    return 0;
}

int hc_multipart_feed(hc_multipart *m, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && m->error == HC_MP_OK) {
        char c;
        switch (m->state) {
        case ST_PREAMBLE:
        case ST_DATA:
            scan(m, p, n, &i);
            continue;
        case ST_HEADERS:
            headers(m, p, n, &i);
            continue;
        case ST_EPILOGUE:
            return HC_MP_OK;
        default:
            break;
        }
        c = p[i++];
        switch (m->state) {
        case ST_AFTER_DELIM:
        case ST_PADDING:
            if (c == ' ' || c == '\t')
                m->state = ST_PADDING;
            else if (c == '\r')
                m->state = ST_DELIM_LF;
            else if (c == '-' && m->state == ST_AFTER_DELIM)
                m->state = ST_CLOSE_DASH;
            else
                set_error(m, HC_MP_ERR_DELIMITER);
            break;
        case ST_DELIM_LF:
            if (c == '\n')
                delimiter_done(m, 0);
            else
                set_error(m, HC_MP_ERR_DELIMITER);
            break;
        case ST_CLOSE_DASH:
            if (c == '-')
                delimiter_done(m, 1);
            else
                set_error(m, HC_MP_ERR_DELIMITER);
            break;
        }
    }
    return m->error;
}

int hc_multipart_finish(hc_multipart *m)
{
    if (m->error != HC_MP_OK)
        return m->error;
    if (m->state == ST_EPILOGUE)
        return HC_MP_OK;
    return set_error(m, m->state == ST_PREAMBLE ? HC_MP_ERR_NO_BOUNDARY : HC_MP_ERR_TRUNCATED);
}

int hc_multipart_next_header(const char **p, const char *end, hc_multipart_header *h)
{
    const char *line = *p, *eol, *colon, *v;
    if (line >= end)
        return 0;
    eol = memchr(line, '\r', (size_t)(end - line));
    if (eol == NULL)
        eol = end;
    colon = memchr(line, ':', (size_t)(eol - line));
    if (colon == NULL)
        colon = eol;
    h->name = line;
    h->name_len = (size_t)(colon - line);
    v = colon < eol ? colon + 1 : eol;
    while (v < eol && (*v == ' ' || *v == '\t'))
        v++;
    h->value = v;
    while (eol > v && (eol[-1] == ' ' || eol[-1] == '\t'))
        eol--;
    h->value_len = (size_t)(eol - v);
    eol = memchr(line, '\n', (size_t)(end - line));
    *p = eol != NULL ? eol + 1 : end;
    return 1;
}

/* ---- Content-Type ---------------------------------------------------------------------- */

static int is_space(char c) { return c == ' ' || c == '\t'; }

static int lower_eq(const char *a, size_t n, const char *lit)
{
    size_t i;
    if (strlen(lit) != n)
        return 0;
    for (i = 0; i < n; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lit[i])
            return 0;
    }
    return 1;
}

int hc_multipart_content_type(const char *ct, size_t n, char *out, size_t *len)
{
    const char *p = ct, *end = ct + n, *slash, *semi;
    int found = 0;
    while (p < end && is_space(*p))
        p++;
    slash = memchr(p, '/', (size_t)(end - p));
    if (slash == NULL || !lower_eq(p, (size_t)(slash - p), "multipart"))
        return 0;
    semi = memchr(slash, ';', (size_t)(end - slash));
    p = semi != NULL ? semi : end;
    /* Parameters: ; name=token | ; name="quoted\"string" */
    while (p < end) {
        const char *name, *eq;
        size_t o = 0;
        int bad = 0;
        if (*p != ';')
            return -1; /* garbage after a parameter */
        p++;
        while (p < end && is_space(*p))
            p++;
        name = p;
        while (p < end && *p != '=' && *p != ';' && !is_space(*p))
            p++;
        eq = p;
        while (p < end && is_space(*p))
            p++;
        if (p >= end || *p != '=') {
            /* A parameter without a value: skip it. */
            while (p < end && *p != ';')
                p++;
            continue;
        }
        p++;
        while (p < end && is_space(*p))
            p++;
        if (lower_eq(name, (size_t)(eq - name), "boundary")) {
            if (found)
                return -1;
            found = 1;
        }
        if (p < end && *p == '"') {
            for (p++; p < end && *p != '"'; p++) {
                if (*p == '\\' && p + 1 < end)
                    p++;
                if (found == 1) {
                    if (o >= HC_MP_MAX_BOUNDARY)
                        bad = 1;
                    else
                        out[o++] = *p;
                }
            }
            if (p >= end)
                return -1; /* unterminated quoted string */
            p++;
        } else {
            for (; p < end && *p != ';' && !is_space(*p); p++)
                if (found == 1) {
                    if (o >= HC_MP_MAX_BOUNDARY)
                        bad = 1;
                    else
                        out[o++] = *p;
                }
        }
        if (found == 1) {
            if (bad || !valid_boundary(out, o))
                return -1;
            out[o] = '\0';
            *len = o;
            found = 2;
        }
        while (p < end && is_space(*p))
            p++;
    }
    return found ? 1 : -1;
}
