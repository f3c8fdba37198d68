/* SPDX-License-Identifier: MIT */
/* healthcare.core: the C half of the module. It gathers the areas (transport, DICOM probe,
 * signing, files, journal, signals) into one table, and holds what their bindings share: the
 * error builder and metatable, the class helper, and small string functions (percent-encoding,
 * random hex, the shard hash). Policy lives in lua/healthcare/. */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "hc_buf.h"
#include "hc_lua.h"
#include "hc_url.h"

HC_API int luaopen_healthcare_core(lua_State *L);

/* ---- shared by the bindings ------------------------------------------------------------ */

static int l_error_tostring(lua_State *L)
{
    lua_getfield(L, 1, "message");
    if (!lua_isstring(L, -1)) {
        lua_pop(L, 1);
        lua_pushliteral(L, "unknown error");
    }
    return 1;
}

/* Pushes the string fmt/ap formats, of any length. */
static void push_vformat(lua_State *L, const char *fmt, va_list ap)
{
    char small[512];
    va_list again;
    int n;
    va_copy(again, ap);
    n = vsnprintf(small, sizeof small, fmt, ap);
    if (n < 0) {
        lua_pushliteral(L, "unknown error");
    } else if ((size_t)n < sizeof small) {
        lua_pushlstring(L, small, (size_t)n);
    } else {
        /* A userdata, so a memory error raised by lua_pushlstring cannot leak it. */
        char *big = lua_newuserdata(L, (size_t)n + 1);
        vsnprintf(big, (size_t)n + 1, fmt, again);
        lua_pushlstring(L, big, (size_t)n);
        lua_remove(L, -2);
    }
    va_end(again);
}

int hc_lua_fail(lua_State *L, const char *kind, const char *status, const char *fmt, ...)
{
    va_list ap;
    lua_pushnil(L);
    lua_createtable(L, 0, 4);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    va_start(ap, fmt);
    push_vformat(L, fmt, ap);
    va_end(ap);
    lua_setfield(L, -2, "message");
    lua_pushstring(L, status);
    lua_setfield(L, -2, "status");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "retryable");
    luaL_setmetatable(L, HC_ERROR_MT);
    return 2;
}

int hc_lua_argerror(lua_State *L, int arg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    push_vformat(L, fmt, ap);
    va_end(ap);
    return luaL_argerror(L, arg, lua_tostring(L, -1));
}

void hc_lua_newclass(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction close,
                     lua_CFunction tostring)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
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

/* ---- strings ------------------------------------------------------------------------------ */

/* escape(s [, keep]) -> s percent-encoded, leaving unreserved characters and those in keep */
static int l_core_escape(lua_State *L)
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
static int l_core_has_ctl(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_pushboolean(L, hc_url_has_ctl(s, n));
    return 1;
}

/* random_hex(nbytes) -> 2*nbytes hex digits from OpenSSL's CSPRNG (boundaries, nonces) */
static int l_core_random_hex(lua_State *L)
{
    unsigned char raw[64];
    char hex[128];
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n > 0 && n <= 64, 1, "must be 1 to 64");
    if (RAND_bytes(raw, (int)n) != 1)
        return luaL_error(L, "OpenSSL RAND_bytes failed");
    hc_buf_hex(raw, (size_t)n, hex);
    lua_pushlstring(L, hex, (size_t)(2 * n));
    return 1;
}

/* hash32(s) -> an integer in [0, 2^32): FNV-1a 64 of the bytes of s, xor-folded to 32 bits
 * (the folding FNV's authors recommend for shorter hashes; the low bits of plain FNV-1a follow
 * the low bits of the input too closely for `hash % n`). healthcare.dicomweb.shard splits work
 * over machines with it (Lua 5.1 and LuaJIT have no bit operators). Part of the shard
 * contract: never change it. */
static int l_core_hash32(lua_State *L)
{
    size_t n, i;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    uint64_t h = 14695981039346656037ULL;
    for (i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    lua_pushinteger(L, (lua_Integer)((uint32_t)(h >> 32) ^ (uint32_t)h));
    return 1;
}

static const luaL_Reg core_functions[] = {
    {"escape", l_core_escape},
    {"has_ctl", l_core_has_ctl},
    {"random_hex", l_core_random_hex},
    {"hash32", l_core_hash32},
    {NULL, NULL}
};

HC_API int luaopen_healthcare_core(lua_State *L)
{
    curl_version_info_data *cv;
    hc_lua_global_init();
    luaL_newlib(L, core_functions);

    luaL_newmetatable(L, HC_ERROR_MT);
    lua_pushcfunction(L, l_error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, HC_ERROR_MT);
    lua_setfield(L, -2, "__name");
    lua_setfield(L, -2, "Error");

    lua_pushliteral(L, HC_VERSION);
    lua_setfield(L, -2, "_VERSION");
    cv = curl_version_info(CURLVERSION_NOW);
    lua_pushfstring(L, "libcurl/%s", cv->version);
    lua_setfield(L, -2, "curl_version");
    lua_pushboolean(L, (cv->features & CURL_VERSION_HTTP2) != 0);
    lua_setfield(L, -2, "http2");
    /* What `healthcare --version` names: libcurl's TLS library, the libcrypto this module signs
     * and draws random bytes with, and the Lua headers it was built against. */
    lua_pushstring(L, cv->ssl_version ? cv->ssl_version : "none");
    lua_setfield(L, -2, "curl_ssl_version");
    lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION));
    lua_setfield(L, -2, "openssl_version");
    lua_pushliteral(L, LUA_RELEASE);
    lua_setfield(L, -2, "lua_release");

    hc_lua_http_register(L);
    hc_lua_dicom_register(L);
    hc_lua_jwt_register(L);
    hc_lua_journal_register(L);
    hc_lua_file_register(L);
    hc_lua_os_register(L);
    hc_lua_sigv4_register(L);
    return 1;
}
