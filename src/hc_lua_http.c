/* SPDX-License-Identifier: MIT */
/* Lua binding of the transport: `core.session(opts)` returns a "healthcare.Session" (one libcurl
 * multi handle and its connection pool); `session:start(req)` a "healthcare.Transfer";
 * `session:wait(seconds)` runs the loop and returns finished transfers; `session:request(req)`
 * is the one-shot form. Failures of the network come back as `nil, err` (hc_lua_fail); wrong
 * arguments raise ("bad argument #1 to 'request' (...)"). The transport itself is hc_http.c,
 * read here only through its functions; the Lua registry refs that keep started transfers alive
 * live here, in ltransfer. */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hc_http.h"
#include "hc_lua.h"
#include "hc_multipart.h"
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
    char *user_agent, *ca_file, *proxy, *no_proxy;
} lsession;

typedef struct ltransfer {
    hc_transfer *t;                /* owned; NULL once closed */
    /* The registry ref that keeps this userdata alive while it runs on a session after
     * session:start, so session:wait can return it; LUA_NOREF otherwise (session:request
     * anchors its transfer on its own stack frame). */
    int ref;
    int sink_kind;                 /* the sink asked for (0, HC_SINK_FILE, HC_SINK_DIR) */
    hc_body *building;             /* owned while the body is being built, then adopted by t */
    char *url, *method;            /* owned copies kept for error messages */
    char *sink_path;               /* owned copy of sink.file or sink.dir */
    /* session:request's on_parts: the registry ref of the list of parts handed out while the
     * transfer runs (LUA_NOREF before the first), and how many it holds; the result's parts
     * are that list, completed. */
    int parts_ref;
    size_t parts_pushed;
    /* req.take_parts: each call of on_parts gets a list of the new parts only, and they are the
     * caller's from then on (hc_sink_release_parts); the result lists the others. */
    int take_parts;
} ltransfer;

/* ---- options: fields of the table at tbl, argument arg of the function (for messages) ------- */

static long opt_ms(lua_State *L, int arg, int tbl, const char *name, long dflt)
{
    long v = dflt;
    lua_getfield(L, tbl, name);
    if (!lua_isnil(L, -1)) {
        double secs;
        if (lua_type(L, -1) != LUA_TNUMBER)
            hc_lua_argerror(L, arg, "option '%s' must be a number of seconds", name);
        secs = lua_tonumber(L, -1);
        /* Also refuses NaN and values a long of milliseconds cannot hold (converting those is
         * undefined behaviour). */
        if (!(secs >= 0 && secs <= 1e9))
            hc_lua_argerror(L, arg, "option '%s' must be 0 to 1e9 seconds", name);
        v = (long)(secs * 1000.0 + 0.5);
    }
    lua_pop(L, 1);
    return v;
}

/* A byte count at stack index idx: a whole number from 0 to 2^53 (what a double holds exactly),
 * so the conversion is defined; anything else raises, naming the field. */
static int64_t opt_size(lua_State *L, int arg, int idx, const char *name)
{
    lua_Number v = lua_tonumber(L, idx);
    if (lua_type(L, idx) != LUA_TNUMBER || !(v >= 0 && v <= 9007199254740992.0)
        || v != (lua_Number)(int64_t)v)
        hc_lua_argerror(L, arg, "'%s' must be a whole number of bytes from 0 to 2^53", name);
    return (int64_t)v;
}

/* A whole number of bytes (or parts) in field name of the table at tbl, or dflt when absent. */
static int64_t opt_count(lua_State *L, int arg, int tbl, const char *name, int64_t dflt)
{
    int64_t v = dflt;
    lua_getfield(L, tbl, name);
    if (!lua_isnil(L, -1))
        v = opt_size(L, arg, -1, name);
    lua_pop(L, 1);
    return v;
}

/* A ratio >= 1 (or 0: none) in field name of the table at tbl, or dflt when absent. */
static double opt_ratio(lua_State *L, int arg, int tbl, const char *name, double dflt)
{
    double v = dflt;
    lua_getfield(L, tbl, name);
    if (!lua_isnil(L, -1)) {
        v = lua_tonumber(L, -1);
        if (lua_type(L, -1) != LUA_TNUMBER || !(v == 0 || (v >= 1 && v <= 1e9)))
            hc_lua_argerror(L, arg, "option '%s' must be 0 (no limit) or from 1 to 1e9", name);
    }
    lua_pop(L, 1);
    return v;
}

static int opt_bool(lua_State *L, int arg, int tbl, const char *name, int dflt)
{
    int v = dflt;
    lua_getfield(L, tbl, name);
    /* Strict, so that insecure = "no" cannot turn TLS verification off. */
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        hc_lua_argerror(L, arg, "option '%s' must be a boolean", name);
    if (!lua_isnil(L, -1))
        v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* A copy (owned by the caller) of the string option name, NULL when absent. */
static char *opt_strdup(lua_State *L, int arg, int tbl, const char *name)
{
    char *v = NULL;
    lua_getfield(L, tbl, name);
    if (!lua_isnil(L, -1)) {
        size_t n;
        const char *s;
        if (lua_type(L, -1) != LUA_TSTRING)
            hc_lua_argerror(L, arg, "option '%s' must be a string", name);
        s = lua_tolstring(L, -1, &n);
        if (hc_url_has_ctl(s, n))
            hc_lua_argerror(L, arg, "option '%s' contains CR, LF or NUL", name);
        v = strdup(s);
        if (v == NULL)
            luaL_error(L, "out of memory");
    }
    lua_pop(L, 1);
    return v;
}

/* ---- sessions ----------------------------------------------------------------------------- */

static lsession *session_check(lua_State *L, int idx)
{
    lsession *ls = luaL_checkudata(L, idx, SESSION_MT);
    if (ls->s == NULL)
        luaL_error(L, "attempt to use a closed session");
    return ls;
}

/* session([opts]) -> Session */
static int l_session_new(lua_State *L)
{
    lsession *ls;
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    ls = lua_newuserdata(L, sizeof *ls);
    memset(ls, 0, sizeof *ls);
    luaL_setmetatable(L, SESSION_MT);
    hc_lua_global_init();
    ls->user_agent = opt_strdup(L, 1, 1, "user_agent");
    ls->ca_file = opt_strdup(L, 1, 1, "ca_file");
    ls->defaults.user_agent = ls->user_agent;
    ls->defaults.ca_file = ls->ca_file;
    ls->proxy = opt_strdup(L, 1, 1, "proxy");
    ls->no_proxy = opt_strdup(L, 1, 1, "no_proxy");
    ls->defaults.proxy = ls->proxy;
    ls->defaults.no_proxy = ls->no_proxy;
    ls->defaults.insecure = opt_bool(L, 1, 1, "insecure", 0);
    ls->defaults.http2 = opt_bool(L, 1, 1, "http2", 1);
    ls->defaults.verbose = opt_bool(L, 1, 1, "verbose", 0);
    ls->defaults.connect_timeout_ms = opt_ms(L, 1, 1, "connect_timeout", 30000);
    ls->defaults.timeout_ms = opt_ms(L, 1, 1, "timeout", 0);
    ls->defaults.idle_timeout_ms = opt_ms(L, 1, 1, "idle_timeout", 0);
    ls->defaults.min_speed = (long)opt_count(L, 1, 1, "min_speed", DEFAULT_MIN_SPEED);
    ls->defaults.compressed = opt_bool(L, 1, 1, "compressed", 0);
    ls->defaults.max_compression_ratio = opt_ratio(L, 1, 1, "max_compression_ratio",
                                                   DEFAULT_MAX_COMPRESSION_RATIO);
    ls->defaults.max_response_bytes = DEFAULT_MAX_RESPONSE;
    ls->s = hc_session_new();
    if (ls->s == NULL)
        return luaL_error(L, "cannot create a libcurl multi handle");
    return 1;
}

/* Drops lt's registry ref, if it has one: the userdata may then be collected. */
static void transfer_unref(lua_State *L, ltransfer *lt)
{
    int ref = lt->ref;
    lt->ref = LUA_NOREF;
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

/* session:close(): running transfers end as "abandoned". Safe twice. */
static int l_session_close(lua_State *L)
{
    lsession *ls = luaL_checkudata(L, 1, SESSION_MT);
    if (ls->s != NULL) {
        hc_session *s = ls->s;
        hc_transfer *t;
        ls->s = NULL;
        while ((t = hc_session_first(s)) != NULL) {
            hc_session_remove(s, t);
            transfer_unref(L, hc_transfer_owner(t));
        }
        hc_session_free(s);
    }
    free(ls->user_agent);
    free(ls->ca_file);
    free(ls->proxy);
    free(ls->no_proxy);
    ls->user_agent = ls->ca_file = ls->proxy = ls->no_proxy = NULL;
    return 0;
}

/* "healthcare.Session (open, 2 transfers)": the transfers started and not yet returned by
 * wait, closed or abandoned. */
static int l_session_tostring(lua_State *L)
{
    lsession *ls = luaL_checkudata(L, 1, SESSION_MT);
    if (ls->s == NULL)
        lua_pushliteral(L, "healthcare.Session (closed)");
    else
        lua_pushfstring(L, "healthcare.Session (open, %d transfer%s)", hc_session_pending(ls->s),
                        hc_session_pending(ls->s) == 1 ? "" : "s");
    return 1;
}

/* ---- building a request body from its description ----------------------------------------- */

/* The mtime's nanoseconds of a file segment (the table at idx): mtime_nsec, a whole number from 0
 * to 999999999 as core.file_stat gives it, into id; absent, only whole seconds are compared. */
static void read_mtime_nsec(lua_State *L, int arg, int idx, hc_file_identity *id)
{
    lua_Number x;
    lua_getfield(L, idx, "mtime_nsec");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    x = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER || !(x >= 0 && x <= 999999999) || x != (lua_Number)(long)x)
        hc_lua_argerror(L, arg, "'mtime_nsec' must be a whole number from 0 to 999999999");
    lua_pop(L, 1);
    id->mtime_nsec = (long)x;
    id->have |= HC_FILE_MTIME_NSEC;
}

/* A file segment's identity: the whole numbers dev, ino and mtime of the table at idx, as
 * lfs.attributes gives them, and mtime_nsec (read_mtime_nsec); each absent one is not checked. */
static void read_identity(lua_State *L, int arg, int idx, hc_file_identity *id)
{
    static const char *const fields[] = { "dev", "ino", "mtime" };
    static const unsigned bits[] = { HC_FILE_DEV, HC_FILE_INO, HC_FILE_MTIME };
    int k;
    memset(id, 0, sizeof *id);
    for (k = 0; k < 3; k++) {
        int64_t v;
        lua_Number x;
        int exact;
        lua_getfield(L, idx, fields[k]);
        x = lua_tonumber(L, -1);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            continue;
        }
        exact = x >= -9007199254740992.0 && x <= 9007199254740992.0;
        if (lua_type(L, -1) != LUA_TNUMBER || x != x || x - x != 0
            || (exact && x != (lua_Number)(int64_t)x))
            hc_lua_argerror(L, arg, "'%s' must be a whole number", fields[k]);
        v = (int64_t)(exact ? x : 0);
#if LUA_VERSION_NUM >= 503
        if (lua_isinteger(L, -1)) {
            v = (int64_t)lua_tointeger(L, -1);
            exact = 1;
        }
#endif
        lua_pop(L, 1);
        /* Beyond 2^53 a double (LuaJIT) may hold a rounded device or inode number: it cannot
         * be compared exactly, so it is not compared. */
        if (!exact)
            continue;
        id->have |= bits[k];
        if (k == 0)
            id->dev = (uint64_t)v;
        else if (k == 1)
            id->ino = (uint64_t)v;
        else
            id->mtime = v;
    }
    read_mtime_nsec(L, arg, idx, id);
}

/* Appends the segment described by the table at idx: { data = string } or { file = path,
 * size = n [, dev, ino, mtime, mtime_nsec] } (the file must still be that one, unmodified, when
 * it is sent: hc_body_add_file_checked). Returns 0, or -1 with hc_body_error set. */
static int add_segment(lua_State *L, int arg, hc_body *b, int idx)
{
    hc_file_identity id;
    int64_t size = -1;
    int rc;
    lua_getfield(L, idx, "data");
    if (!lua_isnil(L, -1)) {
        size_t n;
        const char *p;
        if (lua_type(L, -1) != LUA_TSTRING)
            hc_lua_argerror(L, arg, "a body segment's 'data' must be a string");
        p = lua_tolstring(L, -1, &n);
        rc = hc_body_add_mem(b, p, n);
        lua_pop(L, 1);
        return rc;
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "file");
    if (lua_type(L, -1) != LUA_TSTRING)
        hc_lua_argerror(L, arg, "a body segment needs 'data' or 'file'");
    read_identity(L, arg, idx, &id);
    lua_getfield(L, idx, "size");
    if (!lua_isnil(L, -1))
        size = opt_size(L, arg, -1, "size");
    rc = hc_body_add_file_checked(b, lua_tostring(L, -2), size, &id);
    lua_pop(L, 2);
    return rc;
}

/* Appends each segment of the list at idx. Returns 0, or -1 with hc_body_error set. */
static int add_segments(lua_State *L, int arg, hc_body *b, int idx)
{
    size_t i, n = lua_rawlen(L, idx);
    int rc = 0;
    for (i = 1; rc == 0 && i <= n; i++) {
        lua_rawgeti(L, idx, (int)i);
        if (!lua_istable(L, -1))
            hc_lua_argerror(L, arg, "body segment %d must be a table", (int)i);
        rc = add_segment(L, arg, b, lua_gettop(L));
        lua_pop(L, 1);
    }
    return rc;
}

/* Appends the multipart body { boundary = b, parts = { { headers = "...\r\n", file = path,
 * size = n } | { headers = ..., data = s }, ... } } at mp. Returns 0, or -1 with hc_body_error
 * set and *kind "usage" when the boundary or a header block is what is wrong. */
static int add_multipart(lua_State *L, int arg, hc_body *b, int mp, const char **kind)
{
    const char *boundary;
    size_t i, n;
    int rc = 0, top = lua_gettop(L);
    lua_getfield(L, mp, "boundary");
    lua_getfield(L, mp, "parts");
    if (lua_type(L, -2) != LUA_TSTRING || !lua_istable(L, -1))
        hc_lua_argerror(L, arg, "a multipart body needs a 'boundary' string and a 'parts' table");
    boundary = lua_tostring(L, -2);
    n = lua_rawlen(L, -1);
    for (i = 1; rc == 0 && i <= n; i++) {
        size_t hl = 0;
        const char *h = "";
        lua_rawgeti(L, -1, (int)i);
        if (!lua_istable(L, -1))
            hc_lua_argerror(L, arg, "body part %d must be a table", (int)i);
        lua_getfield(L, -1, "headers");
        if (lua_type(L, -1) == LUA_TSTRING)
            h = lua_tolstring(L, -1, &hl);
        if ((!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING) || memchr(h, '\0', hl) != NULL)
            hc_lua_argerror(L, arg, "part headers must be a string without NUL");
        rc = hc_body_begin_part(b, boundary, h);
        if (rc != 0)
            *kind = "usage"; /* a bad boundary or header block, not the disk */
        lua_pop(L, 1);
        if (rc == 0)
            rc = add_segment(L, arg, b, lua_gettop(L));
        lua_pop(L, 1);
    }
    if (rc == 0 && (rc = hc_body_finish_multipart(b, boundary)) != 0)
        *kind = "usage";
    lua_settop(L, top);
    return rc;
}

/* Builds lt->building from the body described at idx: a string, a list of segments, or
 * { multipart = ... }. Returns 0, or nil and an error (status "body") pushed and 2 when a file
 * cannot be used or the framing is invalid; misuse raises. */
static int build_body(lua_State *L, int arg, ltransfer *lt, int idx)
{
    const char *kind = "io";
    int rc;
    if (lua_type(L, idx) != LUA_TSTRING && !lua_istable(L, idx))
        hc_lua_argerror(L, arg, "option 'body' must be a string or a table");
    lt->building = hc_body_new();
    if (lt->building == NULL)
        return luaL_error(L, "out of memory");
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n;
        const char *p = lua_tolstring(L, idx, &n);
        rc = hc_body_add_mem(lt->building, p, n);
    } else {
        lua_getfield(L, idx, "multipart");
        if (lua_istable(L, -1))
            rc = add_multipart(L, arg, lt->building, lua_gettop(L), &kind);
        else
            rc = add_segments(L, arg, lt->building, idx);
        lua_pop(L, 1);
    }
    if (rc == 0)
        return 0;
    hc_lua_fail(L, kind, "body", "%s", hc_body_error(lt->building));
    hc_body_free(lt->building);
    lt->building = NULL;
    return 2;
}

/* ---- building a transfer from a request table --------------------------------------------- */

/* Reads the request's sink = { file = path } | { dir = path } into o (the path owned by lt),
 * with its caps max_bytes, max_parts, max_part_bytes (whole numbers, absent or 0: none) and
 * name_by_uid (a directory sink names DICOM parts <dir>/<SOP Instance UID>.dcm as they end).
 * Raises for a malformed option; returns 0, or 2 with nil and an error (kind "io", status
 * "sink") pushed when the directory is not there. */
static int read_sink(lua_State *L, int arg, ltransfer *lt, hc_transfer_opts *o)
{
    static const char *const keys[] = { "file", "dir" };
    static const int kinds[] = { HC_SINK_FILE, HC_SINK_DIR };
    struct stat st;
    int i, sink, err;
    lua_getfield(L, arg, "sink");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    sink = lua_gettop(L);
    for (i = 0; i < 2 && lua_istable(L, sink); i++) {
        size_t n = 0;
        const char *p;
        lua_getfield(L, sink, keys[i]);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            continue;
        }
        p = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
        if (p == NULL || n == 0 || memchr(p, '\0', n) != NULL)
            return hc_lua_argerror(L, arg, "sink.%s must be a non-empty path without NUL",
                                   keys[i]);
        if (lt->sink_path != NULL)
            return hc_lua_argerror(L, arg, "sink takes 'file' or 'dir', not both");
        if ((lt->sink_path = strdup(p)) == NULL)
            return luaL_error(L, "out of memory");
        lt->sink_kind = o->sink_kind = kinds[i];
        lua_pop(L, 1);
    }
    if (lt->sink_path == NULL)
        return hc_lua_argerror(L, arg, "option 'sink' must be a table { file = path } or "
                               "{ dir = path }");
    o->sink_max_bytes = opt_count(L, arg, sink, "max_bytes", 0);
    o->sink_max_parts = opt_count(L, arg, sink, "max_parts", 0);
    o->sink_max_part_bytes = opt_count(L, arg, sink, "max_part_bytes", 0);
    lua_getfield(L, sink, "name_by_uid");
    o->sink_name_by_uid = lua_toboolean(L, -1);
    lua_pop(L, 2);
    o->sink_path = lt->sink_path;
    if (o->sink_kind != HC_SINK_DIR)
        return 0;
    err = stat(lt->sink_path, &st) != 0 ? errno : !S_ISDIR(st.st_mode) ? ENOTDIR : 0;
    if (err != 0)
        return hc_lua_fail(L, "io", "sink", "sink dir %s: %s", lt->sink_path, strerror(err));
    return 0;
}

/* The request's options over the session's defaults, into o. Raises for a malformed one. */
static void read_options(lua_State *L, int arg, ltransfer *lt, hc_transfer_opts *o)
{
    lt->url = opt_strdup(L, arg, arg, "url");
    lt->method = opt_strdup(L, arg, arg, "method");
    if (lt->url == NULL)
        hc_lua_argerror(L, arg, "the request needs a 'url'");
    if (lt->method == NULL && (lt->method = strdup("GET")) == NULL)
        luaL_error(L, "out of memory");
    o->url = lt->url;
    o->method = lt->method;
    o->timeout_ms = opt_ms(L, arg, arg, "timeout", o->timeout_ms);
    o->idle_timeout_ms = opt_ms(L, arg, arg, "idle_timeout", o->idle_timeout_ms);
    o->connect_timeout_ms = opt_ms(L, arg, arg, "connect_timeout", o->connect_timeout_ms);
    o->min_speed = (long)opt_count(L, arg, arg, "min_speed", o->min_speed);
    o->compressed = opt_bool(L, arg, arg, "compressed", o->compressed);
    o->max_compression_ratio = opt_ratio(L, arg, arg, "max_compression_ratio",
                                         o->max_compression_ratio);
    lua_getfield(L, arg, "max_response_bytes");
    if (!lua_isnil(L, -1))
        o->max_response_bytes = (size_t)opt_size(L, arg, -1, "max_response_bytes");
    lua_pop(L, 1);
    /* The proxy the caller decided on for this URL ("" none): libcurl then applies no rules of
     * its own (no NO_PROXY matching of its own, which may differ from the caller's and send a
     * credential through a proxy the caller checked was not in the way). The string stays in
     * the request table, on the stack until the transfer is made; libcurl copies it. */
    lua_getfield(L, arg, "proxy");
    if (!lua_isnil(L, -1)) {
        size_t n;
        const char *p = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
        if (p == NULL || memchr(p, '\0', n) != NULL)
            hc_lua_argerror(L, arg, "option 'proxy' must be a string without NUL");
        o->proxy = p;
        o->no_proxy = "";
    }
    lua_pop(L, 1);
}

/* Pushes the request's header lines ("Name: value") as a userdata array of n + 1 pointers into
 * strings anchored in the request table, which stays on the stack until hc_transfer_new has
 * copied them; NULL and nothing pushed when there are none. */
static const char **read_headers(lua_State *L, int arg, size_t *n)
{
    const char **headers;
    size_t i;
    *n = 0;
    lua_getfield(L, arg, "headers");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (!lua_istable(L, -1))
        hc_lua_argerror(L, arg, "option 'headers' must be a list of strings");
    /* A userdata, so a raised error cannot leak it. */
    headers = lua_newuserdata(L, (lua_rawlen(L, -1) + 1) * sizeof *headers);
    lua_insert(L, -2);
    for (i = 1; i <= lua_rawlen(L, -1); i++) {
        size_t len;
        const char *h;
        lua_rawgeti(L, -1, (int)i);
        h = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (h == NULL || hc_url_has_ctl(h, len) || strchr(h, ':') == NULL)
            hc_lua_argerror(L, arg, "header %d must be a \"Name: value\" string without CR, LF "
                            "or NUL", (int)i);
        headers[(*n)++] = h;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return headers;
}

/* Pushes a new Transfer (not started) for the request table at argument arg, or nil and an
 * error; returns 1 or 2. */
static int transfer_new(lua_State *L, lsession *ls, int arg)
{
    hc_transfer_opts o = ls->defaults;
    const char **headers;
    size_t nheaders;
    ltransfer *lt;
    int top;
    char err[256];
    luaL_checktype(L, arg, LUA_TTABLE);
    lt = lua_newuserdata(L, sizeof *lt);
    memset(lt, 0, sizeof *lt);
    lt->ref = LUA_NOREF;
    lt->parts_ref = LUA_NOREF;
    luaL_setmetatable(L, TRANSFER_MT);
    top = lua_gettop(L);
    read_options(L, arg, lt, &o);
    if (read_sink(L, arg, lt, &o) != 0)
        return 2;
    headers = read_headers(L, arg, &nheaders);
    lua_getfield(L, arg, "body");
    if (!lua_isnil(L, -1) && build_body(L, arg, lt, lua_gettop(L)) != 0)
        return 2;
    /* The body is adopted by the transfer, even when hc_transfer_new fails. */
    lt->t = hc_transfer_new(&o, headers, nheaders, lt->building, err, sizeof err);
    lt->building = NULL;
    if (lt->t == NULL)
        return hc_lua_fail(L, "transport", "start", "%s", err);
    hc_transfer_set_owner(lt->t, lt);
    lua_settop(L, top);
    return 1;
}

static ltransfer *transfer_check(lua_State *L, int idx)
{
    ltransfer *lt = luaL_checkudata(L, idx, TRANSFER_MT);
    if (lt->t == NULL)
        luaL_error(L, "attempt to use a closed transfer");
    return lt;
}

/* Frees what lt holds: the transfer (stopped and removed from its session when it runs, its
 * unclaimed files removed) and the copies. Safe twice. */
static void transfer_release(lua_State *L, ltransfer *lt)
{
    if (lt->ref != LUA_NOREF)
        transfer_unref(L, lt);
    if (lt->parts_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, lt->parts_ref);
        lt->parts_ref = LUA_NOREF;
    }
    hc_transfer_free(lt->t);
    lt->t = NULL;
    hc_body_free(lt->building);
    lt->building = NULL;
    free(lt->url);
    free(lt->method);
    free(lt->sink_path);
    lt->url = lt->method = lt->sink_path = NULL;
}

/* transfer:close(): stops it if it runs. Safe twice. */
static int l_transfer_close(lua_State *L)
{
    transfer_release(L, luaL_checkudata(L, 1, TRANSFER_MT));
    return 0;
}

static int l_transfer_result(lua_State *L);
static void add_parts(lua_State *L, hc_sink *sink, int list, size_t from, size_t base);

/* Pushes a new list of the sink's parts from index `from` on, the first at 1 (take_parts). */
static void push_new_parts(lua_State *L, hc_sink *sink, size_t from)
{
    size_t n = hc_sink_nparts(sink);
    lua_createtable(L, n > from ? (int)(n - from) : 0, 0);
    add_parts(L, sink, lua_gettop(L), from, from);
}

/* ---- running transfers -------------------------------------------------------------------- */

/* session:start(req) -> transfer | nil, err */
static int l_session_start(lua_State *L)
{
    lsession *ls = session_check(L, 1);
    ltransfer *lt;
    int nret = transfer_new(L, ls, 2);
    if (nret != 1)
        return nret;
    lt = lua_touserdata(L, -1);
    if (hc_session_start(ls->s, lt->t) != 0)
        return hc_lua_fail(L, "transport", "start", "%s", hc_transfer_errmsg(lt->t));
    lua_pushvalue(L, -1);
    lt->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

/* Pushes the finished transfers of s as a list, oldest first, dropping their refs. A transfer
 * with no ref (session:request's own) is taken off the session but not listed: the list never
 * has a hole. */
static void session_push_done(lua_State *L, hc_session *s)
{
    hc_transfer *t;
    int i = 0;
    lua_newtable(L);
    while ((t = hc_session_next_done(s)) != NULL) {
        ltransfer *lt = hc_transfer_owner(t);
        if (lt->ref == LUA_NOREF)
            continue;
        lua_rawgeti(L, LUA_REGISTRYINDEX, lt->ref);
        lua_rawseti(L, -2, ++i);
        transfer_unref(L, lt);
    }
}

/* session:wait([seconds]) -> list of finished transfers (possibly empty) */
static int l_session_wait(lua_State *L)
{
    lsession *ls = session_check(L, 1);
    double secs = luaL_optnumber(L, 2, 0);
    luaL_argcheck(L, secs >= 0 && secs <= 1e9, 2, "must be 0 to 1e9 seconds");
    if (hc_session_poll(ls->s, (long)(secs * 1000.0)) < 0)
        return luaL_error(L, "libcurl multi loop failed");
    session_push_done(L, ls->s);
    return 1;
}

/* Calls on_progress (at cb) with received, sent, to_send, under lua_pcall: no Lua error may
 * leave the transfer running. Returns LUA_OK with its result on top, or the error code with the
 * error value on top. */
static int call_progress(lua_State *L, int cb, ltransfer *lt)
{
    int64_t sent, to_send, received;
    hc_transfer_progress(lt->t, &sent, &to_send, &received);
    lua_pushvalue(L, cb);
    lua_pushnumber(L, (lua_Number)received);
    lua_pushnumber(L, (lua_Number)sent);
    lua_pushnumber(L, (lua_Number)to_send);
    return lua_pcall(L, 3, 1, 0);
}

/* Calls on_parts (at cb) with the list of the sink's parts so far and the index of the first
 * new one, when parts were completed since the last call; the list is kept (lt->parts_ref) and
 * becomes the result's. With take_parts the list holds the new parts only (the first is 1),
 * and they are handed over before the call. Returns LUA_OK or lua_pcall's error code with the
 * error on top. */
static int call_parts(lua_State *L, int cb, ltransfer *lt)
{
    hc_sink *sink = hc_transfer_sink(lt->t);
    size_t n = sink != NULL ? hc_sink_nparts(sink) : 0;
    if (n <= lt->parts_pushed)
        return LUA_OK;
    lua_pushvalue(L, cb);
    if (lt->take_parts) {
        push_new_parts(L, sink, lt->parts_pushed);
        hc_sink_release_parts(sink, n);
        lua_pushinteger(L, 1);
    } else {
        if (lt->parts_ref == LUA_NOREF) {
            lua_createtable(L, (int)n, 0);
            lt->parts_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        }
        lua_rawgeti(L, LUA_REGISTRYINDEX, lt->parts_ref);
        add_parts(L, sink, lua_gettop(L), lt->parts_pushed, 0);
        lua_pushinteger(L, (lua_Integer)lt->parts_pushed + 1);
    }
    lt->parts_pushed = n;
    return lua_pcall(L, 2, 0, 0);
}

/* session:request(req) -> response | nil, err: start, then run the loop until this one ends.
 * req.on_progress(received, sent, to_send), when given, is called about five times a second
 * (ten with on_parts) between turns of the loop (never from inside libcurl); returning false
 * stops the transfer, which then ends as kind "transport", status "aborted", its temporary files
 * removed. An error it raises stops and closes the transfer the same way, then goes on up to the
 * caller. req.on_parts(parts, first), for a directory sink, is called between the same turns
 * when parts were completed since the last call: parts is the list of them so far (the table
 * the result's or the error's parts will be, completed), first the index of the first new one;
 * they stay the transfer's (removed if it is stopped) until it returns. With req.take_parts,
 * parts holds the new ones only (first is 1), they are the caller's as they are given (kept
 * when the transfer is stopped later), and the result's or the error's parts are the ones not
 * given; the transfer then keeps no memory for a part given. An error on_parts raises stops
 * the transfer as on_progress's does. */
static int l_session_request(lua_State *L)
{
    lsession *ls = session_check(L, 1);
    ltransfer *lt;
    int tidx, cb = 0, pcb = 0, take;
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "on_progress");
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
        return hc_lua_argerror(L, 2, "option 'on_progress' must be a function, got %s",
                               luaL_typename(L, -1));
    cb = lua_isnil(L, -1) ? 0 : lua_gettop(L);
    lua_getfield(L, 2, "on_parts");
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
        return hc_lua_argerror(L, 2, "option 'on_parts' must be a function, got %s",
                               luaL_typename(L, -1));
    pcb = lua_isnil(L, -1) ? 0 : lua_gettop(L);
    lua_getfield(L, 2, "take_parts");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        return hc_lua_argerror(L, 2, "option 'take_parts' must be a boolean, got %s",
                               luaL_typename(L, -1));
    take = lua_toboolean(L, -1);
    if (take && !pcb)
        return hc_lua_argerror(L, 2, "option 'take_parts' needs on_parts");
    if (transfer_new(L, ls, 2) != 1)
        return 2;
    tidx = lua_gettop(L);
    lt = lua_touserdata(L, tidx); /* anchored on this stack frame, not in the registry */
    lt->take_parts = take;
    if (hc_session_start(ls->s, lt->t) != 0)
        return hc_lua_fail(L, "transport", "start", "%s", hc_transfer_errmsg(lt->t));
    while (!hc_transfer_done(lt->t)) {
        /* With on_parts, turns are shorter: the parts of the last turn are the caller's work
         * left once the answer has ended. */
        if (hc_session_poll(ls->s, pcb ? 100 : cb ? 200 : 1000) < 0) {
            transfer_release(L, lt);
            return luaL_error(L, "libcurl multi loop failed");
        }
        if (hc_transfer_done(lt->t))
            continue;
        if (pcb && call_parts(L, pcb, lt) != LUA_OK) {
            transfer_release(L, lt); /* detached, its files removed */
            return lua_error(L);
        }
        if (!cb || ls->s == NULL || hc_transfer_done(lt->t))
            continue;
        /* on_progress may close the session: its transfers, this one too, are then abandoned
         * (done), and the loop ends. */
        if (call_progress(L, cb, lt) != 0) {
            transfer_release(L, lt); /* detached, its files removed */
            return lua_error(L);
        }
        if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
            transfer_release(L, lt);
            return hc_lua_fail(L, "transport", "aborted",
                               "the transfer was stopped by its progress function");
        }
        lua_pop(L, 1);
    }
    if (ls->s != NULL) /* else on_progress closed the session: the transfer was abandoned */
        hc_session_remove(ls->s, lt->t);
    lua_settop(L, tidx);
    lua_pushcfunction(L, l_transfer_result);
    lua_pushvalue(L, tidx);
    lua_call(L, 1, 2);
    /* The transfer's handle and buffers are released now rather than at collection. */
    transfer_release(L, lt);
    return 2;
}

/* ---- results ------------------------------------------------------------------------------ */

/* Pushes a header block as a table name -> value (repeats joined with ", "); next walks it. */
static void push_fields(lua_State *L, const char *p, const char *end, int lower,
                        int (*next)(const char **, const char *, hc_multipart_header *))
{
    hc_multipart_header h;
    lua_newtable(L);
    while (p != NULL && next(&p, end, &h)) {
        luaL_Buffer name;
        size_t i;
        luaL_buffinit(L, &name);
        for (i = 0; i < h.name_len; i++)
            luaL_addchar(&name, lower ? (char)tolower((unsigned char)h.name[i]) : h.name[i]);
        luaL_pushresult(&name);
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
}

/* hc_url_next_field in the shape of hc_multipart_next_header, for push_fields. */
static int next_response_field(const char **p, const char *end, hc_multipart_header *h)
{
    hc_url_field f;
    if (!hc_url_next_field(p, end, &f))
        return 0;
    h->name = f.name;
    h->name_len = f.name_len;
    h->value = f.value;
    h->value_len = f.value_len;
    return 1;
}

/* Pushes the final response's header block as t[name:lower()] = value; the splitting is
 * hc_url_next_field's, fuzzed on its own (fuzz/fuzz_headers.c). */
static void push_headers(lua_State *L, const hc_buf *hb)
{
    push_fields(L, hb->data, hb->data != NULL ? hb->data + hb->len : NULL, 1,
                next_response_field);
}

/* Sets t[name] = s unless s is NULL or "". */
static void set_nonempty(lua_State *L, const char *name, const char *s)
{
    if (s != NULL && s[0] != '\0') {
        lua_pushstring(L, s);
        lua_setfield(L, -2, name);
    }
}

/* Sets list[i - base + 1] for the sink's completed parts i = from, from + 1, ... as { path,
 * size, headers = { name = value } [, duplicate_of] } or { path, size, named = true,
 * sop_instance_uid, study_uid, series_uid } (named: the sink named it by its UID,
 * hc_sink_name_by_uid; duplicate_of: the index of the part that had its UID). */
static void add_parts(lua_State *L, hc_sink *sink, int list, size_t from, size_t base)
{
    size_t i, n = hc_sink_nparts(sink);
    const char *study = NULL, *series = NULL; /* the last ones pushed, kept at slot, slot + 1 */
    int slot;
    lua_pushnil(L);
    lua_pushnil(L);
    slot = lua_gettop(L) - 1;
    for (i = from; i < n; i++) {
        const hc_part *part = hc_sink_part(sink, i);
        lua_createtable(L, 0, 3);
        if (part->sop_instance_uid != NULL) {
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, "named");
            set_nonempty(L, "sop_instance_uid", part->sop_instance_uid);
            /* the sink shares one pointer between parts in a row: so do their Lua strings */
            if (part->study_uid != study) {
                study = part->study_uid;
                lua_pushstring(L, study);
                lua_replace(L, slot);
            }
            if (part->series_uid != series) {
                series = part->series_uid;
                lua_pushstring(L, series);
                lua_replace(L, slot + 1);
            }
            if (study != NULL && study[0] != '\0') {
                lua_pushvalue(L, slot);
                lua_setfield(L, -2, "study_uid");
            }
            if (series != NULL && series[0] != '\0') {
                lua_pushvalue(L, slot + 1);
                lua_setfield(L, -2, "series_uid");
            }
        }
        lua_pushstring(L, part->path);
        lua_setfield(L, -2, "path");
        lua_pushinteger(L, (lua_Integer)part->size);
        lua_setfield(L, -2, "size");
        /* A named part is a checked instance: its headers would only cost a table each. */
        if (part->sop_instance_uid == NULL) {
            push_fields(L, part->headers, part->headers ? part->headers + part->headers_len : NULL,
                        0, hc_multipart_next_header);
            lua_setfield(L, -2, "headers");
            if (part->duplicate_of != 0) {
                lua_pushinteger(L, (lua_Integer)part->duplicate_of);
                lua_setfield(L, -2, "duplicate_of");
            }
        }
        lua_rawseti(L, list, (int)(i - base + 1));
    }
    lua_pop(L, 2);
}

/* Pushes the list of the sink's completed parts (add_parts); from now on their files are the
 * caller's. */
static void push_parts(lua_State *L, hc_sink *sink)
{
    lua_createtable(L, (int)hc_sink_nparts(sink), 0);
    add_parts(L, sink, lua_gettop(L), 0, 0);
    hc_sink_take_parts(sink);
}

/* push_parts for a transfer: the list on_parts saw, completed, when it saw one. */
static void push_transfer_parts(lua_State *L, ltransfer *lt)
{
    hc_sink *sink = hc_transfer_sink(lt->t);
    if (lt->take_parts) {
        push_new_parts(L, sink, lt->parts_pushed);
        hc_sink_take_parts(sink);
        lt->parts_pushed = 0;
        return;
    }
    if (lt->parts_ref == LUA_NOREF) {
        push_parts(L, sink);
        return;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, lt->parts_ref);
    add_parts(L, sink, lua_gettop(L), lt->parts_pushed, 0);
    hc_sink_take_parts(sink);
    luaL_unref(L, LUA_REGISTRYINDEX, lt->parts_ref);
    lt->parts_ref = LUA_NOREF;
    lt->parts_pushed = 0;
}

/* nil, err for a failed transfer: err.status says why (hc_transfer_failure lists the reasons),
 * err.parts the complete parts of a directory sink (now the caller's files), err.http_status
 * the status of the answer, when one came. */
static int push_failure(lua_State *L, ltransfer *lt, const hc_failure *f)
{
    long status = hc_transfer_http_status(lt->t);
    hc_lua_fail(L, f->kind, f->status, "%s %s: %s", lt->method, lt->url, f->message);
    if (lt->sink_kind == HC_SINK_DIR) {
        push_transfer_parts(L, lt);
        lua_setfield(L, -2, "parts");
    }
    if (status > 0) {
        lua_pushinteger(L, status);
        lua_setfield(L, -2, "http_status");
    }
    return 2;
}

/* transfer:result() -> { status, headers, body, http_version [, file, bytes | parts, bytes] }
 * | nil, err (push_failure) */
static int l_transfer_result(lua_State *L)
{
    ltransfer *lt = transfer_check(L, 1);
    hc_failure f;
    hc_sink *sink = hc_transfer_sink(lt->t);
    int mode = sink != NULL ? hc_sink_mode(sink) : HC_SINK_TO_MEMORY;
    const hc_buf *body = hc_transfer_body(lt->t);
    if (!hc_transfer_done(lt->t))
        return luaL_error(L, "transfer has not finished");
    if (hc_transfer_failure(lt->t, &f))
        return push_failure(L, lt, &f);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, hc_transfer_http_status(lt->t));
    lua_setfield(L, -2, "status");
    push_headers(L, hc_transfer_headers(lt->t));
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, body->data ? body->data : "", body->len);
    lua_setfield(L, -2, "body");
    if (mode == HC_SINK_TO_FILE) {
        lua_pushstring(L, hc_sink_path(sink));
        lua_setfield(L, -2, "file");
    } else if (mode == HC_SINK_TO_PARTS || mode == HC_SINK_TO_PART) {
        push_transfer_parts(L, lt);
        lua_setfield(L, -2, "parts");
    }
    if (mode == HC_SINK_TO_PARTS || mode == HC_SINK_TO_PART) {
        /* with take_parts, parts lists only those on_parts was not given */
        lua_pushinteger(L, (lua_Integer)hc_sink_nparts(sink));
        lua_setfield(L, -2, "part_count");
    }
    if (mode != HC_SINK_TO_MEMORY && mode != HC_SINK_UNDECIDED) {
        lua_pushinteger(L, (lua_Integer)hc_sink_bytes(sink));
        lua_setfield(L, -2, "bytes");
    }
    lua_pushstring(L, hc_transfer_http_version(lt->t));
    lua_setfield(L, -2, "http_version");
    return 1;
}

/* transfer:progress() -> bytes sent, body length, bytes received */
static int l_transfer_progress(lua_State *L)
{
    ltransfer *lt = transfer_check(L, 1);
    int64_t sent, to_send, received;
    hc_transfer_progress(lt->t, &sent, &to_send, &received);
    lua_pushnumber(L, (lua_Number)sent);
    lua_pushnumber(L, (lua_Number)to_send);
    lua_pushnumber(L, (lua_Number)received);
    return 3;
}

static int l_transfer_tostring(lua_State *L)
{
    ltransfer *lt = luaL_checkudata(L, 1, TRANSFER_MT);
    lua_pushfstring(L, "healthcare.Transfer (%s)",
                    lt->t == NULL ? "closed" : hc_transfer_done(lt->t) ? "done" : "running");
    return 1;
}

/* ---- bodies and sinks for another transport ------------------------------------------------ */
/* healthcare.ngx.transport speaks HTTP over nginx's cosockets, not libcurl; it sends the same
 * bodies and writes answers through the same sinks, so files are checked, framed, parsed, capped
 * and removed the same way:
 *   core.body_reader(body) -> reader: reader:length(), reader:read(n) -> bytes ("" at the end)
 *     | nil, err; reader:close(). body as a request's (a string, segments, { multipart = ... }).
 *   core.sink({ file = path } | { dir = path } [, caps]) -> sink: sink:decide(status,
 *     content_type), sink:mode(), sink:write(bytes), sink:finish(ok) -> { file | parts, bytes }
 *     | nil, err; sink:close() removes what was not handed over. */
#define BODY_READER_MT "healthcare.BodyReader"
#define SINK_MT "healthcare.Sink"
#define BODY_READ_MAX (1024 * 1024)

/* The reader is an ltransfer holding only `building`: build_body fills it, its __gc frees it. */
static ltransfer *body_reader_check(lua_State *L)
{
    ltransfer *lt = luaL_checkudata(L, 1, BODY_READER_MT);
    if (lt->building == NULL)
        luaL_error(L, "attempt to use a closed body reader");
    return lt;
}

static int l_body_reader_new(lua_State *L)
{
    ltransfer *lt;
    luaL_checkany(L, 1);
    lt = lua_newuserdata(L, sizeof *lt);
    memset(lt, 0, sizeof *lt);
    lt->ref = LUA_NOREF;
    lt->parts_ref = LUA_NOREF;
    luaL_setmetatable(L, BODY_READER_MT);
    if (build_body(L, 1, lt, 1) != 0)
        return 2;
    lua_pushvalue(L, -1);
    return 1;
}

static int l_body_reader_length(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)hc_body_length(body_reader_check(L)->building));
    return 1;
}

static int l_body_reader_read(lua_State *L)
{
    ltransfer *lt = body_reader_check(L);
    lua_Integer want = luaL_checkinteger(L, 2);
    size_t n = want < 1 ? 1 : want > BODY_READ_MAX ? BODY_READ_MAX : (size_t)want;
    char *buf = malloc(n);
    long got;
    if (buf == NULL)
        return luaL_error(L, "out of memory");
    got = hc_body_read(lt->building, buf, n);
    if (got < 0) {
        free(buf);
        return hc_lua_fail(L, "io", "body", "%s", hc_body_error(lt->building));
    }
    lua_pushlstring(L, buf, (size_t)got);
    free(buf);
    return 1;
}

static int l_body_reader_close(lua_State *L)
{
    ltransfer *lt = luaL_checkudata(L, 1, BODY_READER_MT);
    hc_body_free(lt->building);
    lt->building = NULL;
    return 0;
}

static int l_body_reader_tostring(lua_State *L)
{
    ltransfer *lt = luaL_checkudata(L, 1, BODY_READER_MT);
    lua_pushfstring(L, "healthcare.BodyReader (%s)", lt->building == NULL ? "closed" : "open");
    return 1;
}

typedef struct lsink {
    hc_sink *k;                    /* owned; NULL once closed */
    int kind;                      /* HC_SINK_FILE or HC_SINK_DIR */
} lsink;

static lsink *sink_check(lua_State *L)
{
    lsink *ls = luaL_checkudata(L, 1, SINK_MT);
    if (ls->k == NULL)
        luaL_error(L, "attempt to use a closed sink");
    return ls;
}

static int l_sink_new(lua_State *L)
{
    static const char *const keys[] = { "file", "dir" };
    static const int kinds[] = { HC_SINK_FILE, HC_SINK_DIR };
    const char *path = NULL;
    int i, kind = 0;
    lsink *ls;
    luaL_checktype(L, 1, LUA_TTABLE);
    for (i = 0; i < 2; i++) {
        lua_getfield(L, 1, keys[i]);
        if (!lua_isnil(L, -1)) {
            size_t len;
            const char *p = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (p == NULL || len == 0 || strlen(p) != len)
                return hc_lua_argerror(L, 1, "sink.%s must be a non-empty path without NUL", keys[i]);
            if (path != NULL)
                return hc_lua_argerror(L, 1, "sink takes 'file' or 'dir', not both");
            path = p; /* anchored in the table */
            kind = kinds[i];
        }
        lua_pop(L, 1);
    }
    if (path == NULL)
        return hc_lua_argerror(L, 1, "a sink needs { file = path } or { dir = path }");
    ls = lua_newuserdata(L, sizeof *ls);
    ls->k = NULL;
    ls->kind = kind;
    luaL_setmetatable(L, SINK_MT);
    ls->k = hc_sink_new(kind, path, opt_count(L, 1, 1, "max_bytes", 0),
                        opt_count(L, 1, 1, "max_parts", 0), opt_count(L, 1, 1, "max_part_bytes", 0));
    if (ls->k == NULL)
        return luaL_error(L, "out of memory");
    return 1;
}

/* nil, err for the sink's error (as a transfer's: io/sink, the cap's code, multipart), with the
 * complete parts of a directory sink in err.parts (the caller's files from now on). */
static int sink_fail(lua_State *L, lsink *ls)
{
    const char *message = "", *code = NULL;
    int e = hc_sink_error(ls->k, &message, &code);
    if (e == HC_SINKERR_IO)
        hc_lua_fail(L, "io", "sink", "%s", message);
    else if (e == HC_SINKERR_CAP)
        hc_lua_fail(L, "transport", code != NULL ? code : "too_large", "%s", message);
    else
        hc_lua_fail(L, "transport", "multipart", "%s", message[0] ? message : "the sink failed");
    if (ls->kind == HC_SINK_DIR) {
        push_parts(L, ls->k);
        lua_setfield(L, -2, "parts");
    }
    return 2;
}

static int l_sink_decide(lua_State *L)
{
    lsink *ls = sink_check(L);
    long status = (long)luaL_checkinteger(L, 2);
    const char *ct = luaL_optstring(L, 3, NULL);
    if (hc_sink_decide(ls->k, status, ct) != 0)
        return sink_fail(L, ls);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_sink_mode(lua_State *L)
{
    static const char *const names[] = { "undecided", "memory", "file", "parts", "part" };
    int m = hc_sink_mode(sink_check(L)->k);
    lua_pushstring(L, m >= 0 && m <= HC_SINK_TO_PART ? names[m] : "undecided");
    return 1;
}

static int l_sink_write(lua_State *L)
{
    lsink *ls = sink_check(L);
    size_t n;
    const char *p = luaL_checklstring(L, 2, &n);
    if (hc_sink_write(ls->k, p, n) != 0)
        return sink_fail(L, ls);
    lua_pushboolean(L, 1);
    return 1;
}

/* sink:finish(ok) -> { file = path | parts = {...}, bytes = n } | nil, err */
static int l_sink_finish(lua_State *L)
{
    lsink *ls = sink_check(L);
    int ok = lua_toboolean(L, 2);
    int mode;
    if (hc_sink_end(ls->k, ok) != 0)
        return sink_fail(L, ls);
    mode = hc_sink_mode(ls->k);
    lua_createtable(L, 0, 2);
    if (mode == HC_SINK_TO_FILE) {
        lua_pushstring(L, hc_sink_path(ls->k));
        lua_setfield(L, -2, "file");
    } else if (mode == HC_SINK_TO_PARTS || mode == HC_SINK_TO_PART) {
        push_parts(L, ls->k);
        lua_setfield(L, -2, "parts");
    }
    lua_pushnumber(L, (lua_Number)hc_sink_bytes(ls->k));
    lua_setfield(L, -2, "bytes");
    return 1;
}

static int l_sink_close(lua_State *L)
{
    lsink *ls = luaL_checkudata(L, 1, SINK_MT);
    hc_sink_free(ls->k);
    ls->k = NULL;
    return 0;
}

static int l_sink_tostring(lua_State *L)
{
    lsink *ls = luaL_checkudata(L, 1, SINK_MT);
    lua_pushfstring(L, "healthcare.Sink (%s)", ls->k == NULL ? "closed" : "open");
    return 1;
}

static const luaL_Reg body_reader_methods[] = {
    {"length", l_body_reader_length},
    {"read", l_body_reader_read},
    {"close", l_body_reader_close},
    {NULL, NULL}
};

static const luaL_Reg sink_methods[] = {
    {"decide", l_sink_decide},
    {"mode", l_sink_mode},
    {"write", l_sink_write},
    {"finish", l_sink_finish},
    {"close", l_sink_close},
    {NULL, NULL}
};

/* ---- registration ------------------------------------------------------------------------- */

static const luaL_Reg session_methods[] = {
    {"start", l_session_start},
    {"wait", l_session_wait},
    {"request", l_session_request},
    {"close", l_session_close},
    {NULL, NULL}
};

static const luaL_Reg transfer_methods[] = {
    {"result", l_transfer_result},
    {"progress", l_transfer_progress},
    {"close", l_transfer_close},
    {NULL, NULL}
};

/* Adds session to the module table on top. */
void hc_lua_http_register(lua_State *L)
{
    hc_lua_newclass(L, SESSION_MT, session_methods, l_session_close, l_session_tostring);
    hc_lua_newclass(L, TRANSFER_MT, transfer_methods, l_transfer_close, l_transfer_tostring);
    lua_pushcfunction(L, l_session_new);
    lua_setfield(L, -2, "session");
    hc_lua_newclass(L, BODY_READER_MT, body_reader_methods, l_body_reader_close,
                    l_body_reader_tostring);
    hc_lua_newclass(L, SINK_MT, sink_methods, l_sink_close, l_sink_tostring);
    lua_pushcfunction(L, l_body_reader_new);
    lua_setfield(L, -2, "body_reader");
    lua_pushcfunction(L, l_sink_new);
    lua_setfield(L, -2, "sink");
}
