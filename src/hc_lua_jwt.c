/* SPDX-License-Identifier: MIT */
/* Lua binding of the signing core, for healthcare.auth.credentials: `core.private_key(pem)` parses
 * a PEM RSA key once into a "healthcare.PrivateKey" (the PEM text is not kept), `key:sign(header,
 * claims)` and `core.jwt_sign(header, claims, key_or_pem)` return a compact RS256 JWT,
 * `core.base64url(s)` and `core.sha256_hex(s)` encode and hash. A bad key or a failed signature
 * comes back as `nil, err` (kind "auth", status "key" or "sign"); wrong argument types raise.
 * The token cache's files are hc_lua_file.c's. */
#include "hc_jwt.h"
#include "hc_lua.h"

#define PRIVATE_KEY_MT "healthcare.PrivateKey"
#define JWT_CAP (64u * 1024u)

typedef struct lkey {
    EVP_PKEY *key;      /* owned; NULL once closed */
} lkey;

/* ---- keys and signing ---------------------------------------------------------------- */

/* Pushes a new PrivateKey for the PEM string at idx, or nil and an error table (kind "auth"). */
static int key_push(lua_State *L, int idx)
{
    size_t n;
    const char *pem = luaL_checklstring(L, idx, &n);
    char err[HC_JWT_ERRLEN];
    lkey *k = lua_newuserdata(L, sizeof *k);
    k->key = NULL;
    luaL_setmetatable(L, PRIVATE_KEY_MT);
    k->key = hc_jwt_key_load(pem, n, err);
    if (k->key == NULL)
        return hc_lua_fail(L, "auth", "key", "%s", err);
    return 1;
}

/* private_key(pem) -> PrivateKey | nil, err */
static int l_jwt_private_key(lua_State *L)
{
    return key_push(L, 1);
}

static lkey *key_check(lua_State *L, int idx)
{
    lkey *k = luaL_checkudata(L, idx, PRIVATE_KEY_MT);
    if (k->key == NULL)
        luaL_error(L, "attempt to use a closed private key");
    return k;
}

/* Pushes the JWT signed by key over the header and claims at hidx and cidx, or nil, err. */
static int jwt_push(lua_State *L, EVP_PKEY *key, int hidx, int cidx)
{
    size_t hlen, clen;
    const char *header = luaL_checklstring(L, hidx, &hlen);
    const char *claims = luaL_checklstring(L, cidx, &clen);
    char err[HC_JWT_ERRLEN];
    hc_buf out;
    hc_buf_init(&out, JWT_CAP);
    if (hc_jwt_sign(key, header, hlen, claims, clen, &out, err) != 0) {
        hc_buf_free(&out);
        return hc_lua_fail(L, "auth", "sign", "%s", err);
    }
    lua_pushlstring(L, out.data, out.len);
    hc_buf_free(&out);
    return 1;
}

/* key:sign(header_json, claims_json) -> jwt | nil, err */
static int l_key_sign(lua_State *L)
{
    lkey *k = key_check(L, 1);
    return jwt_push(L, k->key, 2, 3);
}

static int l_key_close(lua_State *L)
{
    lkey *k = luaL_checkudata(L, 1, PRIVATE_KEY_MT);
    hc_jwt_key_free(k->key);
    k->key = NULL;
    return 0;
}

static int l_key_tostring(lua_State *L)
{
    lkey *k = luaL_checkudata(L, 1, PRIVATE_KEY_MT);
    if (k->key == NULL)
        lua_pushliteral(L, "healthcare.PrivateKey (closed)");
    else
        lua_pushfstring(L, "healthcare.PrivateKey (RSA, %d bits)", EVP_PKEY_get_bits(k->key));
    return 1;
}

/* jwt_sign(header_json, claims_json, key) -> jwt | nil, err; key is a PrivateKey or PEM text */
static int l_jwt_sign(lua_State *L)
{
    lkey *k;
    if (lua_type(L, 3) == LUA_TSTRING) {
        if (key_push(L, 3) != 1)
            return 2;
        k = lua_touserdata(L, -1);
        {
            int n = jwt_push(L, k->key, 1, 2);
            /* A key parsed for one signature is freed now, not at some later collection. */
            hc_jwt_key_free(k->key);
            k->key = NULL;
            return n;
        }
    }
    k = key_check(L, 3);
    return jwt_push(L, k->key, 1, 2);
}

/* base64url(s) -> s encoded per RFC 4648 section 5, without padding */
static int l_jwt_base64url(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    hc_buf out;
    hc_buf_init(&out, n / 3 * 4 + 4);
    if (hc_jwt_base64url(s, n, &out) != 0) {
        hc_buf_free(&out);
        return luaL_error(L, "out of memory");
    }
    lua_pushlstring(L, out.data ? out.data : "", out.len);
    hc_buf_free(&out);
    return 1;
}

/* sha256_hex(s) -> 64 hex digits */
static int l_jwt_sha256_hex(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[65], err[HC_JWT_ERRLEN];
    if (hc_jwt_sha256_hex(s, n, hex, err) != 0)
        return luaL_error(L, "%s", err);
    lua_pushlstring(L, hex, 64);
    return 1;
}

/* ---- registration -------------------------------------------------------------------- */

static const luaL_Reg key_methods[] = {
    {"sign", l_key_sign},
    {"close", l_key_close},
    {NULL, NULL}
};

static const luaL_Reg jwt_functions[] = {
    {"private_key", l_jwt_private_key},
    {"jwt_sign", l_jwt_sign},
    {"base64url", l_jwt_base64url},
    {"sha256_hex", l_jwt_sha256_hex},
    {NULL, NULL}
};

void hc_lua_jwt_register(lua_State *L)
{
    hc_lua_newclass(L, PRIVATE_KEY_MT, key_methods, l_key_close, l_key_tostring);
    luaL_setfuncs(L, jwt_functions, 0);
}
