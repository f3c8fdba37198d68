/* SPDX-License-Identifier: MIT */
/* healthcare.core: the C half of the module. It gathers the areas (transport, DICOM probe,
 * signing) into one table, and holds what they share: the error metatable, percent-encoding,
 * random bytes and the library versions for the User-Agent. Policy lives in lua/healthcare/. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/rand.h>

#include "hc_buf.h"
#include "hc_compat.h"
#include "hc_file.h"
#include "hc_lua.h"
#include "hc_url.h"

HC_API int luaopen_healthcare_core(lua_State *L);

/* ---- shared -------------------------------------------------------------------------- */

static int error_tostring(lua_State *L)
{
    lua_getfield(L, 1, "message");
    if (!lua_isstring(L, -1)) {
        lua_pop(L, 1);
        lua_pushliteral(L, "unknown error");
    }
    return 1;
}

void hc_lua_push_error(lua_State *L, const char *kind, const char *message, const char *code)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, message ? message : "unknown error");
    lua_setfield(L, -2, "message");
    if (code != NULL) {
        lua_pushstring(L, code);
        lua_setfield(L, -2, "code");
    }
    luaL_setmetatable(L, HC_ERROR_MT);
}

void hc_lua_global_init(void)
{
    /* curl_global_init is thread-unsafe only before first use; a process loads us once. */
    static int done = 0;
    if (!done) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        done = 1;
    }
}

/* ---- small helpers ------------------------------------------------------------------- */

/* escape(s [, keep]) -> s percent-encoded, leaving unreserved characters and those in keep */
static int core_escape(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *keep = luaL_optstring(L, 2, NULL);
    hc_buf out;
    hc_buf_init(&out, n * 3 + 1);
    if (hc_url_escape(s, n, keep, &out) != 0) {
        hc_buf_free(&out);
        return luaL_error(L, "out of memory");
    }
    lua_pushlstring(L, out.data ? out.data : "", out.len);
    hc_buf_free(&out);
    return 1;
}

/* has_ctl(s) -> true when s holds CR, LF or NUL (never allowed in a header value) */
static int core_has_ctl(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_pushboolean(L, hc_url_has_ctl(s, n));
    return 1;
}

/* random_hex(nbytes) -> 2*nbytes hex digits from OpenSSL's CSPRNG (boundaries, nonces) */
static int core_random_hex(lua_State *L)
{
    unsigned char raw[64];
    char hex[129];
    static const char digits[] = "0123456789abcdef";
    lua_Integer n = luaL_checkinteger(L, 1);
    int i;
    luaL_argcheck(L, n > 0 && n <= 64, 1, "must be 1 to 64");
    if (RAND_bytes(raw, (int)n) != 1)
        return luaL_error(L, "OpenSSL RAND_bytes failed");
    for (i = 0; i < n; i++) {
        hex[2 * i] = digits[raw[i] >> 4];
        hex[2 * i + 1] = digits[raw[i] & 15];
    }
    lua_pushlstring(L, hex, (size_t)(2 * n));
    return 1;
}

/* now() -> seconds on a monotonic clock (for durations, never dates) */
static int core_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* sleep(seconds): for back-off between retries outside an event loop */
static int core_sleep(lua_State *L)
{
    double secs = luaL_checknumber(L, 1);
    struct timespec ts;
    if (!(secs > 0)) /* also NaN */
        return 0;
    if (secs > 1e9)  /* (time_t) of a larger double may be undefined */
        secs = 1e9;
    ts.tv_sec = (time_t)secs;
    ts.tv_nsec = (long)((secs - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    return 0;
}

/* isatty(fd) -> whether the descriptor is a terminal (progress bars only go to terminals) */
static int core_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* ---- files at paths a user named ----------------------------------------------------- */

/* Pushes nil and an io error "what path: strerror(err)" with code; returns 2. */
static int core_file_error(lua_State *L, const char *what, const char *path, int err, const char *code)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s %s: %s", what, path, strerror(err));
    hc_lua_push_error(L, "io", lua_tostring(L, -1), code);
    lua_remove(L, -2);
    return 2;
}

/* write_file(path, data) -> true | nil, err (kind "io", code "write"): data becomes the file at
 * path atomically, through a temporary file next to it (hc_file_replace, mode 0666 less the
 * umask, like any new file); a symbolic link at path is replaced, never followed. */
static int core_write_file(lua_State *L)
{
    size_t plen, n;
    const char *path = luaL_checklstring(L, 1, &plen);
    const char *data = luaL_checklstring(L, 2, &n);
    int err;
    if (plen == 0 || memchr(path, '\0', plen) != NULL)
        return luaL_argerror(L, 1, "must be a non-empty path without NUL");
    err = hc_file_replace(path, data, n, 0666);
    if (err != 0)
        return core_file_error(L, "cannot write", path, err, "write");
    lua_pushboolean(L, 1);
    return 1;
}

/* dir_writable(dir) -> true | nil, err (kind "io", code "write"): whether files can be created
 * in dir, checked before a call whose answer goes there. */
static int core_dir_writable(lua_State *L)
{
    size_t n;
    const char *dir = luaL_checklstring(L, 1, &n);
    int err;
    if (n == 0 || memchr(dir, '\0', n) != NULL)
        return luaL_argerror(L, 1, "must be a non-empty path without NUL");
    err = hc_file_dir_writable(dir);
    if (err != 0)
        return core_file_error(L, "cannot create files in", dir, err, "write");
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg core_functions[] = {
    {"write_file", core_write_file},
    {"dir_writable", core_dir_writable},
    {"isatty", core_isatty},
    {"now", core_now},
    {"sleep", core_sleep},
    {"escape", core_escape},
    {"has_ctl", core_has_ctl},
    {"random_hex", core_random_hex},
    {NULL, NULL}
};

HC_API int luaopen_healthcare_core(lua_State *L)
{
    curl_version_info_data *cv;
    hc_lua_global_init();
    luaL_newlib(L, core_functions);

    luaL_newmetatable(L, HC_ERROR_MT);
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_setfield(L, -2, "Error");

    lua_pushliteral(L, HC_VERSION);
    lua_setfield(L, -2, "_VERSION");
    cv = curl_version_info(CURLVERSION_NOW);
    lua_pushfstring(L, "libcurl/%s", cv->version);
    lua_setfield(L, -2, "curl_version");
    lua_pushboolean(L, (cv->features & CURL_VERSION_HTTP2) != 0);
    lua_setfield(L, -2, "http2");

    hc_lua_http_register(L);
    hc_lua_journal_register(L);
    hc_lua_sigv4_register(L);
#ifdef HC_WITH_DICOM
    hc_lua_dicom_register(L);
#endif
#ifdef HC_WITH_JWT
    hc_lua_jwt_register(L);
#endif
    return 1;
}
