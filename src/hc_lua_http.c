/* SPDX-License-Identifier: MIT */
/* Lua binding of the transport: `core.session(opts)` returns a "healthcare.Session" (one libcurl
 * multi handle and its connection pool); `session:start(req)` a "healthcare.Transfer";
 * `session:wait(seconds)` runs the loop and returns finished transfers; `session:request(req)`
 * is the one-shot form. Failures of the network come back as `nil, err`; wrong arguments raise. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>
#include <errno.h>
#include <sys/stat.h>

#include "hc_compat.h"
#include "hc_http.h"
#include "hc_lua.h"
#include "hc_url.h"

#define SESSION_MT "healthcare.Session"
#define TRANSFER_MT "healthcare.Transfer"
#define DEFAULT_MAX_RESPONSE (64u * 1024u * 1024u)
/* A transfer that moves fewer bytes per second than this for its idle_timeout is cut. */
#define DEFAULT_MIN_SPEED 1024L
/* Decoded bytes per received byte past which a compressed answer is cut (hc_inflate.h). DICOM
 * JSON from Orthanc compresses about 40:1 (a study of 200 instances: 425 KB into 9 KB); deflate
 * cannot pass about 1032:1, where a "bomb" sits. */
#define DEFAULT_MAX_COMPRESSION_RATIO 250.0

typedef struct lsession {
    hc_session *s;                 /* owned; NULL once closed */
    hc_transfer_opts defaults;     /* strings below are owned copies */
    char *user_agent, *ca_file;
} lsession;

typedef struct ltransfer {
    hc_transfer t;
    int live;                      /* t holds resources */
    hc_body *building;             /* owned while the body is being built, then adopted by t */
    char *url, *method;            /* owned copies kept for error messages */
    char *sink_path;               /* owned copy of sink.file or sink.dir */
} ltransfer;

/* ---- options ------------------------------------------------------------------------- */

static long opt_ms(lua_State *L, int idx, const char *name, long dflt)
{
    long v = dflt;
    lua_getfield(L, idx, name);
    if (!lua_isnil(L, -1)) {
        double secs;
        if (!lua_isnumber(L, -1))
            luaL_error(L, "option '%s' must be a number of seconds", name);
        secs = lua_tonumber(L, -1);
        /* Also refuses NaN and values a long of milliseconds cannot hold (converting those is
         * undefined behaviour). */
        if (!(secs >= 0 && secs <= 1e9))
            luaL_error(L, "option '%s' must be 0 to 1e9 seconds", name);
        v = (long)(secs * 1000.0 + 0.5);
    }
    lua_pop(L, 1);
    return v;
}

/* A byte count at idx: a whole number from 0 to 2^53 (what a double holds exactly), so the
 * conversion is defined; anything else raises, naming the field. */
static int64_t opt_size(lua_State *L, int idx, const char *name)
{
    lua_Number v = luaL_checknumber(L, idx);
    if (!(v >= 0 && v <= 9007199254740992.0) || v != (lua_Number)(int64_t)v)
        luaL_error(L, "'%s' must be a whole number of bytes from 0 to 2^53", name);
    return (int64_t)v;
}

/* A whole number of bytes (or parts) in field name of the table at idx, or dflt when absent. */
static int64_t opt_count(lua_State *L, int idx, const char *name, int64_t dflt)
{
    int64_t v = dflt;
    lua_getfield(L, idx, name);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "option '%s' must be a number", name);
        v = opt_size(L, -1, name);
    }
    lua_pop(L, 1);
    return v;
}

/* A ratio >= 1 (or 0: none) in field name of the table at idx, or dflt when absent. */
static double opt_ratio(lua_State *L, int idx, const char *name, double dflt)
{
    double v = dflt;
    lua_getfield(L, idx, name);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "option '%s' must be a number", name);
        v = lua_tonumber(L, -1);
        if (!(v == 0 || (v >= 1 && v <= 1e9)))
            luaL_error(L, "option '%s' must be 0 (no limit) or from 1 to 1e9", name);
    }
    lua_pop(L, 1);
    return v;
}

static int opt_bool(lua_State *L, int idx, const char *name, int dflt)
{
    int v = dflt;
    lua_getfield(L, idx, name);
    /* Strict, so that insecure = "no" cannot turn TLS verification off. */
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        luaL_error(L, "option '%s' must be a boolean", name);
    if (!lua_isnil(L, -1))
        v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static char *opt_strdup(lua_State *L, int idx, const char *name)
{
    char *v = NULL;
    lua_getfield(L, idx, name);
    if (!lua_isnil(L, -1)) {
        size_t n;
        const char *s;
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "option '%s' must be a string", name);
        s = lua_tolstring(L, -1, &n);
        if (hc_url_has_ctl(s, n))
            luaL_error(L, "option '%s' contains CR, LF or NUL", name);
        v = strdup(s);
    }
    lua_pop(L, 1);
    return v;
}

/* ---- sessions ------------------------------------------------------------------------ */

static lsession *check_session(lua_State *L, int idx)
{
    lsession *ls = luaL_checkudata(L, idx, SESSION_MT);
    if (ls->s == NULL)
        luaL_error(L, "attempt to use a closed session");
    return ls;
}

static int session_new(lua_State *L)
{
    lsession *ls;
    if (!lua_isnoneornil(L, 1))
        luaL_checktype(L, 1, LUA_TTABLE);
    else {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    ls = lua_newuserdata(L, sizeof *ls);
    memset(ls, 0, sizeof *ls);
    luaL_setmetatable(L, SESSION_MT);
    hc_lua_global_init();
    ls->user_agent = opt_strdup(L, 1, "user_agent");
    ls->ca_file = opt_strdup(L, 1, "ca_file");
    ls->defaults.user_agent = ls->user_agent;
    ls->defaults.ca_file = ls->ca_file;
    ls->defaults.insecure = opt_bool(L, 1, "insecure", 0);
    ls->defaults.http2 = opt_bool(L, 1, "http2", 1);
    ls->defaults.verbose = opt_bool(L, 1, "verbose", 0);
    ls->defaults.connect_timeout_ms = opt_ms(L, 1, "connect_timeout", 30000);
    ls->defaults.timeout_ms = opt_ms(L, 1, "timeout", 0);
    ls->defaults.idle_timeout_ms = opt_ms(L, 1, "idle_timeout", 0);
    ls->defaults.min_speed = (long)opt_count(L, 1, "min_speed", DEFAULT_MIN_SPEED);
    ls->defaults.compressed = opt_bool(L, 1, "compressed", 0);
    ls->defaults.max_compression_ratio = opt_ratio(L, 1, "max_compression_ratio", DEFAULT_MAX_COMPRESSION_RATIO);
    ls->defaults.max_response_bytes = DEFAULT_MAX_RESPONSE;
    ls->s = hc_session_new();
    if (ls->s == NULL)
        return luaL_error(L, "cannot create a libcurl multi handle");
    return 1;
}

static void session_release(lua_State *L, lsession *ls)
{
    if (ls->s != NULL) {
        hc_session *s = ls->s;
        hc_transfer *t;
        ls->s = NULL;
        /* Running transfers end as "abandoned"; dropping their refs lets them be collected. */
        while ((t = hc_session_first(s)) != NULL) {
            int ref = t->ref;
            hc_session_remove(s, t);
            t->ref = LUA_NOREF;
            luaL_unref(L, LUA_REGISTRYINDEX, ref);
        }
        hc_session_free(s);
    }
    free(ls->user_agent);
    free(ls->ca_file);
    ls->user_agent = ls->ca_file = NULL;
}

static int session_close(lua_State *L)
{
    lsession *ls = luaL_checkudata(L, 1, SESSION_MT);
    session_release(L, ls);
    return 0;
}

/* ---- building a transfer from a request table ------------------------------------------ */

/* Adds a body described by the value at idx: a string, or a list of segments
 * { data = string } / { file = path, size = n }, or { multipart = { boundary = b, parts = {
 * { headers = "Content-Type: ...\r\n", file = path, size = n } | { headers = ..., data = s } } } }.
 * A file segment may also carry dev, ino and mtime (whole numbers, as lfs.attributes gives them):
 * the file must still be that one, unmodified, when it is sent (hc_body_add_file_checked).
 * Returns the new body (owned by the caller) or NULL with a message pushed. */
static int add_segment(lua_State *L, hc_body *b, int idx)
{
    static const char *const id_fields[] = { "dev", "ino", "mtime" };
    static const unsigned id_bits[] = { HC_FILE_DEV, HC_FILE_INO, HC_FILE_MTIME };
    hc_file_identity id;
    int rc, k;
    lua_getfield(L, idx, "data");
    if (!lua_isnil(L, -1)) {
        size_t n;
        const char *p = luaL_checklstring(L, -1, &n);
        rc = hc_body_add_mem(b, p, n);
        lua_pop(L, 1);
        return rc;
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "file");
    if (lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "body part needs 'data' or 'file'");
    memset(&id, 0, sizeof id);
    for (k = 0; k < 3; k++) {
        int64_t v = 0;
        int have = 1;
        lua_getfield(L, idx, id_fields[k]);
        if (lua_isnil(L, -1)) {
            have = 0;
        } else if (lua_type(L, -1) != LUA_TNUMBER) {
            return luaL_error(L, "'%s' must be a whole number", id_fields[k]);
#if LUA_VERSION_NUM >= 503
        } else if (lua_isinteger(L, -1)) {
            v = (int64_t)lua_tointeger(L, -1);
#endif
        } else {
            lua_Number x = lua_tonumber(L, -1);
            if (x >= -9007199254740992.0 && x <= 9007199254740992.0) {
                if (x != (lua_Number)(int64_t)x)
                    return luaL_error(L, "'%s' must be a whole number", id_fields[k]);
                v = (int64_t)x;
            } else if (x != x || x - x != 0) {
                return luaL_error(L, "'%s' must be a whole number", id_fields[k]);
            } else {
                /* Beyond 2^53 a double (LuaJIT) may hold a rounded device or inode number:
                 * it cannot be compared exactly, so it is not compared. */
                have = 0;
            }
        }
        lua_pop(L, 1);
        if (!have)
            continue;
        id.have |= id_bits[k];
        if (k == 0)
            id.dev = (uint64_t)v;
        else if (k == 1)
            id.ino = (uint64_t)v;
        else
            id.mtime = v;
    }
    lua_getfield(L, idx, "size");
    rc = hc_body_add_file_checked(b, lua_tostring(L, -2),
                                  lua_isnil(L, -1) ? -1 : opt_size(L, -1, "size"), &id);
    lua_pop(L, 2);
    return rc;
}

static hc_body *build_body(lua_State *L, ltransfer *lt, int idx, const char **err, const char **kind)
{
    hc_body *b = lt->building = hc_body_new();
    int rc = 0;
    size_t i, n;
    *err = NULL;
    *kind = "io";
    if (b == NULL) {
        *err = "out of memory";
        return NULL;
    }
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *p = lua_tolstring(L, idx, &n);
        rc = hc_body_add_mem(b, p, n);
    } else if (lua_type(L, idx) == LUA_TTABLE) {
        lua_getfield(L, idx, "multipart");
        if (lua_istable(L, -1)) {
            int mp = lua_gettop(L);
            const char *boundary;
            lua_getfield(L, mp, "boundary");
            boundary = luaL_checkstring(L, -1);
            lua_getfield(L, mp, "parts");
            luaL_checktype(L, -1, LUA_TTABLE);
            n = lua_rawlen(L, -1);
            for (i = 1; rc == 0 && i <= n; i++) {
                lua_rawgeti(L, -1, (int)i);
                luaL_checktype(L, -1, LUA_TTABLE);
                lua_getfield(L, -1, "headers");
                {
                    size_t hl = 0;
                    const char *h = lua_isnil(L, -1) ? "" : lua_tolstring(L, -1, &hl);
                    if (h == NULL || memchr(h, '\0', hl) != NULL)
                        luaL_error(L, "part headers must be a string without NUL");
                    rc = hc_body_begin_part(b, boundary, h);
                    if (rc != 0)
                        *kind = "usage"; /* a bad boundary or header block, not the disk */
                }
                lua_pop(L, 1);
                if (rc == 0)
                    rc = add_segment(L, b, lua_gettop(L));
                lua_pop(L, 1);
            }
            if (rc == 0 && (rc = hc_body_finish_multipart(b, boundary)) != 0)
                *kind = "usage";
            lua_settop(L, mp);
        } else {
            n = lua_rawlen(L, idx);
            for (i = 1; rc == 0 && i <= n; i++) {
                lua_rawgeti(L, idx, (int)i);
                luaL_checktype(L, -1, LUA_TTABLE);
                rc = add_segment(L, b, lua_gettop(L));
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    } else {
        luaL_error(L, "body must be a string or a table");
        return NULL;
    }
    if (rc != 0) {
        lua_pushstring(L, hc_body_error(b));
        *err = lua_tostring(L, -1);
        hc_body_free(b);
        lt->building = NULL;
        return NULL;
    }
    return b;
}

/* Reads the request's sink = { file = path } | { dir = path } into o (the path owned by lt), with
 * its caps max_bytes, max_parts, max_part_bytes (whole numbers, absent or 0: none).
 * Raises for a malformed option; returns 0, or -1 with nil and an error table pushed when the
 * directory does not exist. */
static int read_sink(lua_State *L, ltransfer *lt, int idx, hc_transfer_opts *o)
{
    static const char *const keys[] = { "file", "dir" };
    static const int kinds[] = { HC_SINK_FILE, HC_SINK_DIR };
    int i, sink;
    lua_getfield(L, idx, "sink");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_istable(L, -1))
        return luaL_error(L, "option 'sink' must be a table { file = path } or { dir = path }");
    sink = lua_gettop(L);
    for (i = 0; i < 2; i++) {
        size_t n;
        const char *p;
        lua_getfield(L, sink, keys[i]);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            continue;
        }
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "sink.%s must be a string", keys[i]);
        p = lua_tolstring(L, -1, &n);
        if (n == 0 || memchr(p, '\0', n) != NULL)
            return luaL_error(L, "sink.%s must be a non-empty path without NUL", keys[i]);
        if (lt->sink_path != NULL)
            return luaL_error(L, "sink takes 'file' or 'dir', not both");
        lt->sink_path = strdup(p);
        if (lt->sink_path == NULL)
            return luaL_error(L, "out of memory");
        o->sink_kind = kinds[i];
        lua_pop(L, 1);
    }
    if (lt->sink_path == NULL)
        return luaL_error(L, "option 'sink' must be a table { file = path } or { dir = path }");
    o->sink_max_bytes = opt_count(L, sink, "max_bytes", 0);
    o->sink_max_parts = opt_count(L, sink, "max_parts", 0);
    o->sink_max_part_bytes = opt_count(L, sink, "max_part_bytes", 0);
    lua_pop(L, 1);
    o->sink_path = lt->sink_path;
    if (o->sink_kind == HC_SINK_DIR) {
        struct stat st;
        int e = stat(lt->sink_path, &st) != 0 ? errno : !S_ISDIR(st.st_mode) ? ENOTDIR : 0;
        if (e != 0) {
            lua_pushnil(L);
            lua_pushfstring(L, "sink dir %s: %s", lt->sink_path, strerror(e));
            hc_lua_push_error(L, "io", lua_tostring(L, -1), "sink");
            lua_remove(L, -2);
            return -1;
        }
    }
    return 0;
}

/* Pushes a new Transfer for the request table at idx, or nil and an error table. */
static int transfer_new(lua_State *L, lsession *ls, int idx)
{
    hc_transfer_opts o = ls->defaults;
    const char **headers = NULL;
    size_t nheaders = 0;
    hc_body *body = NULL;
    ltransfer *lt;
    const char *berr = NULL, *bkind = NULL;

    luaL_checktype(L, idx, LUA_TTABLE);
    lt = lua_newuserdata(L, sizeof *lt);
    memset(lt, 0, sizeof *lt);
    luaL_setmetatable(L, TRANSFER_MT);
    lt->url = opt_strdup(L, idx, "url");
    lt->method = opt_strdup(L, idx, "method");
    if (lt->url == NULL)
        return luaL_error(L, "request needs a 'url'");
    if (lt->method == NULL)
        lt->method = strdup("GET");
    o.url = lt->url;
    o.method = lt->method;
    o.timeout_ms = opt_ms(L, idx, "timeout", o.timeout_ms);
    o.idle_timeout_ms = opt_ms(L, idx, "idle_timeout", o.idle_timeout_ms);
    o.connect_timeout_ms = opt_ms(L, idx, "connect_timeout", o.connect_timeout_ms);
    o.min_speed = (long)opt_count(L, idx, "min_speed", o.min_speed);
    o.compressed = opt_bool(L, idx, "compressed", o.compressed);
    o.max_compression_ratio = opt_ratio(L, idx, "max_compression_ratio", o.max_compression_ratio);
    lua_getfield(L, idx, "max_response_bytes");
    if (!lua_isnil(L, -1))
        o.max_response_bytes = (size_t)opt_size(L, -1, "max_response_bytes");
    lua_pop(L, 1);
    if (read_sink(L, lt, idx, &o) != 0)
        return 2;

    /* Headers: a list of "Name: value" lines. The strings stay on the Lua stack (anchored in
     * the request table) until hc_transfer_init has copied them. */
    lua_getfield(L, idx, "headers");
    if (!lua_isnil(L, -1)) {
        size_t i, n;
        luaL_checktype(L, -1, LUA_TTABLE);
        n = lua_rawlen(L, -1);
        /* A userdata, so a raised error cannot leak it. */
        headers = lua_newuserdata(L, (n + 1) * sizeof *headers);
        lua_insert(L, -2);
        for (i = 1; i <= n; i++) {
            size_t len;
            const char *h;
            lua_rawgeti(L, -1, (int)i);
            h = lua_tolstring(L, -1, &len);
            if (h == NULL || hc_url_has_ctl(h, len) || strchr(h, ':') == NULL)
                return luaL_error(L, "header %d must be a \"Name: value\" string without CR, LF or NUL",
                                  (int)i);
            headers[nheaders++] = h;
            lua_pop(L, 1);
        }
    }
    lua_getfield(L, idx, "body");
    if (!lua_isnil(L, -1)) {
        body = build_body(L, lt, lua_gettop(L), &berr, &bkind);
        if (body == NULL) {
            lua_pushnil(L);
            hc_lua_push_error(L, bkind, berr, "body");
            return 2;
        }
    }
    lua_pop(L, 1);
    lt->building = NULL; /* adopted by the transfer, even when init fails */
    if (hc_transfer_init(&lt->t, &o, headers, nheaders, body) != 0) {
        lt->live = 1;
        lua_pushnil(L);
        hc_lua_push_error(L, "transport", lt->t.errbuf, NULL);
        return 2;
    }
    lua_settop(L, lua_gettop(L) - (headers ? 2 : 1)); /* headers table (+ array) */
    lt->live = 1;
    return 1;
}

static ltransfer *check_transfer(lua_State *L, int idx)
{
    ltransfer *lt = luaL_checkudata(L, idx, TRANSFER_MT);
    if (!lt->live)
        luaL_error(L, "attempt to use a closed transfer");
    return lt;
}

/* session:start(req) -> transfer | nil, err */
static int session_start(lua_State *L)
{
    lsession *ls = check_session(L, 1);
    ltransfer *lt;
    int nret = transfer_new(L, ls, 2);
    if (nret != 1)
        return nret;
    lt = lua_touserdata(L, -1);
    if (hc_session_start(ls->s, &lt->t) != 0) {
        lua_pushnil(L);
        hc_lua_push_error(L, "transport", lt->t.errbuf, NULL);
        return 2;
    }
    lua_pushvalue(L, -1);
    lt->t.ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

/* Pushes the transfers on the done list as a Lua list, dropping their refs. */
static void push_done(lua_State *L, hc_session *s)
{
    hc_transfer *t = hc_session_take_done(s);
    int i = 0;
    lua_newtable(L);
    while (t != NULL) {
        hc_transfer *next = t->next;
        t->next = NULL;
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
        lua_rawseti(L, -2, ++i);
        luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
        t->ref = LUA_NOREF;
        t = next;
    }
}

/* session:wait([seconds]) -> list of finished transfers (possibly empty) */
static int session_wait(lua_State *L)
{
    lsession *ls = check_session(L, 1);
    double secs = luaL_optnumber(L, 2, 0);
    luaL_argcheck(L, secs >= 0 && secs <= 1e9, 2, "must be 0 to 1e9 seconds");
    if (hc_session_poll(ls->s, (long)(secs * 1000.0)) < 0)
        return luaL_error(L, "libcurl multi loop failed");
    push_done(L, ls->s);
    return 1;
}

/* session:pending() -> number of transfers started and not yet returned by wait */
static int session_pending(lua_State *L)
{
    lsession *ls = check_session(L, 1);
    lua_pushinteger(L, hc_session_pending(ls->s));
    return 1;
}

/* ---- results ------------------------------------------------------------------------- */

static const char *curl_code_name(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_RESOLVE_HOST: return "resolve";
    case CURLE_COULDNT_RESOLVE_PROXY: return "resolve";
    case CURLE_COULDNT_CONNECT: return "connect";
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_SEND_ERROR: return "send";
    case CURLE_RECV_ERROR: return "recv";
    case CURLE_GOT_NOTHING: return "empty_reply";
    case CURLE_PARTIAL_FILE: return "partial";
    case CURLE_HTTP2: case CURLE_HTTP2_STREAM: return "http2";
    case CURLE_SSL_CONNECT_ERROR: return "tls";
    case CURLE_PEER_FAILED_VERIFICATION: return "tls_verify";
    case CURLE_SSL_CACERT_BADFILE: return "tls_ca_file";
    case CURLE_READ_ERROR: case CURLE_ABORTED_BY_CALLBACK: return "body";
    case CURLE_WRITE_ERROR: return "response_too_large";
    case CURLE_URL_MALFORMAT: case CURLE_UNSUPPORTED_PROTOCOL: return "url";
    default: return "other";
    }
}

/* Parses the final response's header block into t[name:lower()] = value (repeats joined with
 * ", "); the splitting is hc_url_next_field's, fuzzed on its own (fuzz/fuzz_headers.c). */
static void push_headers(lua_State *L, const hc_buf *hb)
{
    const char *p = hb->data, *end = hb->data != NULL ? hb->data + hb->len : NULL;
    hc_url_field f;
    lua_newtable(L);
    while (p != NULL && hc_url_next_field(&p, end, &f)) {
        luaL_Buffer name;
        size_t i;
        luaL_buffinit(L, &name);
        for (i = 0; i < f.name_len; i++)
            luaL_addchar(&name, (char)tolower((unsigned char)f.name[i]));
        luaL_pushresult(&name);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, f.value, f.value_len);
        } else {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, f.value, f.value_len);
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
}

/* Pushes the sink's completed parts { { path, size, headers = { name = value } } ... }; from now
 * on their files are the caller's. */
static void push_parts(lua_State *L, hc_transfer *t)
{
    const hc_sink *k = &t->sink;
    size_t i;
    lua_createtable(L, (int)k->nparts, 0);
    for (i = 0; i < k->nparts; i++) {
        const hc_part *part = &k->parts[i];
        const char *p = part->headers, *end = p != NULL ? p + part->headers_len : NULL;
        hc_multipart_header h;
        lua_createtable(L, 0, 3);
        lua_pushstring(L, part->path);
        lua_setfield(L, -2, "path");
        lua_pushinteger(L, (lua_Integer)part->size);
        lua_setfield(L, -2, "size");
        lua_newtable(L);
        while (p != NULL && hc_multipart_next_header(&p, end, &h)) {
            lua_pushlstring(L, h.name, h.name_len);
            lua_pushvalue(L, -1);
            lua_rawget(L, -3);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                lua_pushlstring(L, h.value, h.value_len);
            } else {
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, h.value, h.value_len);
                lua_concat(L, 3);
            }
            lua_rawset(L, -3);
        }
        lua_setfield(L, -2, "headers");
        lua_rawseti(L, -2, (int)i + 1);
    }
    hc_transfer_take_parts(t);
}

/* transfer:result() -> { status, headers, body [, file, bytes | parts, bytes] } | nil, err.
 * err.code says why: libcurl's reason (curl_code_name), or the transport's own: "too_large",
 * "too_many_parts", "part_too_large" (a sink's caps), "response_too_large" (max_response_bytes),
 * "encoding" (a content coding not asked for, unknown or broken), "compression_ratio",
 * "too_slow" (min_speed over idle_timeout), "timeout", "multipart", "sink", "body". */
static int transfer_result(lua_State *L)
{
    ltransfer *lt = check_transfer(L, 1);
    hc_transfer *t = &lt->t;
    long status = 0;
    if (t->state != HC_T_DONE)
        return luaL_error(L, "transfer has not finished");
    if (t->result != CURLE_OK) {
        const char *code = curl_code_name(t->result);
        const char *why = t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->result);
        const char *kind = "transport";
        char note[80] = "", buf[256];
        int noted = 0;  /* the message already says what arrived, or need not */
        if (t->body_error[0]) {
            why = t->body_error;
            code = "body";
            kind = "io";
            noted = 1;
        } else if (t->sink.error == HC_SINKERR_IO) {
            why = t->sink.message;
            code = "sink";
            kind = "io";
            noted = 1;
        } else if (t->stop_code != NULL) {
            why = t->stop_message;
            code = t->stop_code;
        } else if (t->sink.error == HC_SINKERR_MULTIPART) {
            why = t->sink.message;
            code = "multipart";
            noted = 1;
        } else if (t->response_too_large) {
            snprintf(buf, sizeof buf, "the answer is larger than max_response_bytes (%lu bytes)",
                     (unsigned long)t->response.cap);
            why = buf;
            code = "response_too_large";
            noted = 1;
        } else if (t->result == CURLE_OPERATION_TIMEDOUT && strncmp(why, "Operation too slow", 18) == 0) {
            /* libcurl's low-speed check (CURLOPT_LOW_SPEED_LIMIT/TIME), not the deadline. */
            snprintf(buf, sizeof buf, "fewer than %ld bytes per second moved for %ld s (min_speed, "
                     "idle_timeout)", t->min_speed, (t->idle_timeout_ms + 999) / 1000);
            why = buf;
            code = "too_slow";
        } else if (t->result == CURLE_OPERATION_TIMEDOUT && t->timeout_ms > 0
                   && strncmp(why, "Operation timed out", 19) == 0) {
            /* The whole request's deadline (CURLOPT_TIMEOUT), not a connect or resolve timeout. */
            snprintf(buf, sizeof buf, "Operation timed out: not done within the timeout of %.3g s",
                     (double)t->timeout_ms / 1000.0);
            why = buf;
        }
        if (!noted && t->sink.mode == HC_MODE_MULTIPART) {
            snprintf(note, sizeof note, " (%lu complete part%s received)",
                     (unsigned long)t->sink.nparts, t->sink.nparts == 1 ? "" : "s");
        }
        lua_pushnil(L);
        lua_pushfstring(L, "%s %s: %s%s", lt->method, lt->url, why, note);
        hc_lua_push_error(L, kind, lua_tostring(L, -1), code);
        lua_remove(L, -2);
        if (t->sink.kind == HC_SINK_DIR) {
            push_parts(L, t);
            lua_setfield(L, -2, "parts");
        }
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status > 0) {
            lua_pushinteger(L, status);
            lua_setfield(L, -2, "http_status");
        }
        return 2;
    }
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    push_headers(L, &t->response_headers);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, t->response.data ? t->response.data : "", t->response.len);
    lua_setfield(L, -2, "body");
    if (t->sink.mode == HC_MODE_FILE) {
        lua_pushstring(L, t->sink.path);
        lua_setfield(L, -2, "file");
    } else if (t->sink.mode == HC_MODE_MULTIPART || t->sink.mode == HC_MODE_SINGLE) {
        push_parts(L, t);
        lua_setfield(L, -2, "parts");
    }
    if (t->sink.mode != HC_MODE_MEMORY && t->sink.mode != HC_MODE_UNDECIDED) {
        lua_pushinteger(L, (lua_Integer)t->sink.bytes);
        lua_setfield(L, -2, "bytes");
    }
    {
        long version = 0;
        curl_easy_getinfo(t->easy, CURLINFO_HTTP_VERSION, &version);
        lua_pushstring(L, version == CURL_HTTP_VERSION_2_0 ? "2" :
                          version == CURL_HTTP_VERSION_3 ? "3" :
                          version == CURL_HTTP_VERSION_1_0 ? "1.0" : "1.1");
        lua_setfield(L, -2, "http_version");
    }
    return 1;
}

/* transfer:progress() -> bytes sent, body length, bytes received */
static int transfer_progress(lua_State *L)
{
    ltransfer *lt = check_transfer(L, 1);
    curl_off_t up = 0, down = 0;
    curl_easy_getinfo(lt->t.easy, CURLINFO_SIZE_UPLOAD_T, &up);
    curl_easy_getinfo(lt->t.easy, CURLINFO_SIZE_DOWNLOAD_T, &down);
    lua_pushnumber(L, (lua_Number)up);
    lua_pushnumber(L, lt->t.body ? (lua_Number)hc_body_length(lt->t.body) : 0);
    lua_pushnumber(L, (lua_Number)down);
    return 3;
}

/* transfer:done() -> boolean */
static int transfer_done(lua_State *L)
{
    ltransfer *lt = check_transfer(L, 1);
    lua_pushboolean(L, lt->t.state == HC_T_DONE);
    return 1;
}

static int transfer_close(lua_State *L)
{
    ltransfer *lt = luaL_checkudata(L, 1, TRANSFER_MT);
    if (lt->live) {
        lt->live = 0;
        if (lt->t.session != NULL && lt->t.ref != LUA_NOREF && lt->t.ref != -2) {
            int ref = lt->t.ref;
            lt->t.ref = LUA_NOREF;
            luaL_unref(L, LUA_REGISTRYINDEX, ref);
        }
        hc_transfer_cleanup(&lt->t);
    }
    hc_body_free(lt->building);
    lt->building = NULL;
    free(lt->url);
    free(lt->method);
    free(lt->sink_path);
    lt->url = lt->method = lt->sink_path = NULL;
    return 0;
}

/* session:request(req) -> response | nil, err: start, then run the loop until this one ends.
 * req.on_progress(received, sent, to_send), when given, is called about five times a second
 * between turns of the loop (never from inside libcurl); returning false stops the transfer,
 * which then ends as kind "transport", code "aborted", its temporary files removed. */
static int session_request(lua_State *L)
{
    lsession *ls = check_session(L, 1);
    ltransfer *lt;
    int tidx, cbidx = 0;
    int nret;
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "on_progress");
    if (lua_isfunction(L, -1))
        cbidx = lua_gettop(L);
    else if (!lua_isnil(L, -1))
        return luaL_error(L, "bad request field 'on_progress' (function expected, got %s)", luaL_typename(L, -1));
    else
        lua_pop(L, 1);
    nret = transfer_new(L, ls, 2);
    if (nret != 1)
        return nret;
    tidx = lua_gettop(L);
    lt = lua_touserdata(L, tidx);
    if (hc_session_start(ls->s, &lt->t) != 0) {
        lua_pushnil(L);
        hc_lua_push_error(L, "transport", lt->t.errbuf, NULL);
        return 2;
    }
    lt->t.ref = LUA_NOREF;  /* anchored on this stack frame instead of the registry */
    while (lt->t.state != HC_T_DONE) {
        curl_off_t up = 0, down = 0;
        if (hc_session_poll(ls->s, cbidx ? 200 : 1000) < 0)
            return luaL_error(L, "libcurl multi loop failed");
        if (!cbidx || lt->t.state == HC_T_DONE)
            continue;
        curl_easy_getinfo(lt->t.easy, CURLINFO_SIZE_UPLOAD_T, &up);
        curl_easy_getinfo(lt->t.easy, CURLINFO_SIZE_DOWNLOAD_T, &down);
        lua_pushvalue(L, cbidx);
        lua_pushnumber(L, (lua_Number)down);
        lua_pushnumber(L, (lua_Number)up);
        lua_pushnumber(L, lt->t.body ? (lua_Number)hc_body_length(lt->t.body) : 0);
        /* A Lua error raised here leaves the transfer to __gc, which detaches it and removes
         * its temporary files. */
        lua_call(L, 3, 1);
        if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
            lua_settop(L, tidx);
            lua_pushcfunction(L, transfer_close);
            lua_pushvalue(L, tidx);
            lua_call(L, 1, 0);
            lua_pushnil(L);
            hc_lua_push_error(L, "transport", "the transfer was stopped by its progress function", "aborted");
            return 2;
        }
        lua_pop(L, 1);
    }
    hc_session_remove(ls->s, &lt->t);
    lua_settop(L, tidx);
    lua_pushcfunction(L, transfer_result);
    lua_pushvalue(L, tidx);
    lua_call(L, 1, 2);
    /* The transfer's handle and buffers are released now rather than at collection. */
    lua_pushcfunction(L, transfer_close);
    lua_pushvalue(L, tidx);
    lua_call(L, 1, 0);
    return 2;
}

static int session_gc(lua_State *L)
{
    return session_close(L);
}

static int session_tostring(lua_State *L)
{
    lsession *ls = luaL_checkudata(L, 1, SESSION_MT);
    lua_pushfstring(L, "healthcare.Session (%s)", ls->s ? "open" : "closed");
    return 1;
}

static int transfer_tostring(lua_State *L)
{
    ltransfer *lt = luaL_checkudata(L, 1, TRANSFER_MT);
    lua_pushfstring(L, "healthcare.Transfer (%s)",
                    !lt->live ? "closed" : lt->t.state == HC_T_DONE ? "done" : "running");
    return 1;
}

static const luaL_Reg session_methods[] = {
    {"start", session_start},
    {"wait", session_wait},
    {"request", session_request},
    {"pending", session_pending},
    {"close", session_close},
    {NULL, NULL}
};

static const luaL_Reg transfer_methods[] = {
    {"result", transfer_result},
    {"progress", transfer_progress},
    {"done", transfer_done},
    {"close", transfer_close},
    {NULL, NULL}
};

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                      lua_CFunction gc, lua_CFunction tostr)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, tostr);
    lua_setfield(L, -2, "__tostring");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}

void hc_lua_http_register(lua_State *L)
{
    new_class(L, SESSION_MT, session_methods, session_gc, session_tostring);
    new_class(L, TRANSFER_MT, transfer_methods, transfer_close, transfer_tostring);
    lua_pushcfunction(L, session_new);
    lua_setfield(L, -2, "session");
}
