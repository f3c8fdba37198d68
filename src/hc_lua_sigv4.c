/* SPDX-License-Identifier: MIT */
/* Lua binding of AWS Signature Version 4 (hc_sigv4.c), for the `aws` credential source of
 * external_account credentials: `core.sigv4_sign(t)` signs one request and returns the headers
 * to add to it. Wrong types, a missing field and an unknown one raise; a request the signer
 * refuses (a control character in a header value, a bad '%' escape in the query, ...) comes back
 * as nil and an error (kind "auth", status "sigv4"). The secret is read in place from the Lua
 * string; the signer's copies of it are wiped (see hc_sigv4.h). */
#include <stdio.h>
#include <string.h>

#include "hc_lua.h"
#include "hc_sigv4.h"

/* The fields of t, written once: checked by name, and listed when one is unknown. */
static const char *const FIELDS[] = {
    "method", "host",    "path", "query",         "headers",           "payload",
    "region", "service", "date", "access_key_id", "secret_access_key", "session_token",
    NULL
};
#define VALID_FIELDS                                                                               \
  "method, host, path, query, headers, payload, region, service, date, "                           \
  "access_key_id, secret_access_key, session_token"

/* t[name] as a string (its bytes stay owned by t), NULL when absent and optional; raises when
 * it is another type or absent and required. A text field (len NULL) holding a NUL byte, which
 * would cut it short without a word, sets *nul to its name. */
static const char *field(lua_State *L, const char *name, int required, size_t *len,
                         const char **nul)
{
    const char *s;
    size_t n;
    lua_getfield(L, 1, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (required)
            hc_lua_argerror(L, 1, "field '%s' is required", name);
        if (len)
            *len = 0;
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        hc_lua_argerror(L, 1, "field '%s' must be a string, not %s", name, luaL_typename(L, -1));
    s = lua_tolstring(L, -1, &n);
    lua_pop(L, 1); /* t still holds the string: the pointer stays valid during the call */
    if (len)
        *len = n;
    else if (strlen(s) != n && *nul == NULL)
        *nul = name;
    return s;
}

/* Raises when t has a key that is not one of FIELDS. */
static void check_fields(lua_State *L)
{
    lua_pushnil(L);
    while (lua_next(L, 1) != 0) {
        int known = 0, i;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (i = 0; FIELDS[i] != NULL && !known; i++)
                known = strcmp(lua_tostring(L, -2), FIELDS[i]) == 0;
        if (!known && lua_type(L, -2) == LUA_TSTRING)
            hc_lua_argerror(L, 1, "unknown field '%s' (valid: " VALID_FIELDS ")",
                            lua_tostring(L, -2));
        if (!known)
            hc_lua_argerror(L, 1, "unknown %s key (valid: " VALID_FIELDS ")", luaL_typename(L, -2));
        lua_pop(L, 1);
    }
}

static char lower(char c)
{
    return (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
}

/* Reads t.headers (a table of name = value strings) into h; returns how many. Raises on a
 * non-string name or value, more than HC_SIGV4_MAX_HEADERS, or one name twice in different
 * cases. The pointers stay owned by the headers table. */
static size_t read_headers(lua_State *L, hc_sigv4_header *h)
{
    size_t n = 0, i, k;
    lua_getfield(L, 1, "headers");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_istable(L, -1))
        hc_lua_argerror(L, 1, "field 'headers' must be a table, not %s", luaL_typename(L, -1));
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            hc_lua_argerror(L, 1, "field 'headers' must map header names to string values");
        if (n == HC_SIGV4_MAX_HEADERS)
            hc_lua_argerror(L, 1, "field 'headers' has more than %d headers", HC_SIGV4_MAX_HEADERS);
        h[n].name = lua_tolstring(L, -2, &h[n].name_len);
        h[n].value = lua_tolstring(L, -1, &h[n].value_len);
        for (i = 0; i < n; i++) {
            int same = h[i].name_len == h[n].name_len;
            for (k = 0; same && k < h[n].name_len; k++)
                same = lower(h[i].name[k]) == lower(h[n].name[k]);
            if (same)
                hc_lua_argerror(L, 1,
                                "field 'headers' names '%s' twice (header names are "
                                "case-insensitive)",
                                h[n].name);
        }
        n++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1); /* the headers table stays referenced by t */
    return n;
}

/* sigv4_sign{ method, host, path = "/", query = "", headers = {name = value}, payload = "",
 *   region, service, date = "YYYYMMDDTHHMMSSZ" (default now), access_key_id,
 *   secret_access_key, session_token }
 * -> { Authorization = "AWS4-HMAC-SHA256 ...", ["x-amz-date"] = date,
 *      ["x-amz-security-token"] = session_token (when one was given) } | nil, err */
static int l_core_sigv4_sign(lua_State *L)
{
    hc_sigv4_header headers[HC_SIGV4_MAX_HEADERS];
    hc_sigv4_request r;
    hc_sigv4_result out;
    char err[HC_SIGV4_ERRLEN];
    const char *nul = NULL;

    luaL_checktype(L, 1, LUA_TTABLE);
    check_fields(L);
    memset(&r, 0, sizeof r);
    r.method = field(L, "method", 1, NULL, &nul);
    r.host = field(L, "host", 1, NULL, &nul);
    r.path = field(L, "path", 0, NULL, &nul);
    r.query = field(L, "query", 0, NULL, &nul);
    r.payload = field(L, "payload", 0, &r.payload_len, &nul);
    r.region = field(L, "region", 1, NULL, &nul);
    r.service = field(L, "service", 1, NULL, &nul);
    r.amz_date = field(L, "date", 0, NULL, &nul);
    r.access_key = field(L, "access_key_id", 1, NULL, &nul);
    r.secret = field(L, "secret_access_key", 1, &r.secret_len, &nul);
    r.session_token = field(L, "session_token", 0, NULL, &nul);
    r.nheaders = read_headers(L, headers);
    r.headers = headers;

    if (nul != NULL)
        snprintf(err, sizeof err, "the %s holds a NUL byte", nul);
    if (nul != NULL || hc_sigv4_sign(&r, &out, err) != 0)
        return hc_lua_fail(L, "auth", "sigv4", "cannot sign the AWS request: %s", err);
    lua_createtable(L, 0, 3);
    lua_pushlstring(L, out.authorization.data, out.authorization.len);
    lua_setfield(L, -2, "Authorization");
    lua_pushstring(L, out.amz_date);
    lua_setfield(L, -2, "x-amz-date");
    if (r.session_token != NULL && r.session_token[0] != '\0') {
        lua_pushstring(L, r.session_token);
        lua_setfield(L, -2, "x-amz-security-token");
    }
    hc_sigv4_result_free(&out);
    return 1;
}

/* Sets sigv4_sign on the module table at the top of L's stack. */
void hc_lua_sigv4_register(lua_State *L)
{
    lua_pushcfunction(L, l_core_sigv4_sign);
    lua_setfield(L, -2, "sigv4_sign");
}
