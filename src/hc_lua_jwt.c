/* SPDX-License-Identifier: MIT */
/* Lua binding of the signing core, for healthcare.auth.credentials: `core.private_key(pem)` parses a
 * PEM RSA key once into a "healthcare.PrivateKey" (the PEM text is not kept), `key:sign(header,
 * claims)` and `core.jwt_sign(header, claims, key_or_pem)` return a compact RS256 JWT,
 * `core.base64url(s)` and `core.sha256_hex(s)` encode and hash. It also holds the three file
 * operations of the token cache (a 0700 directory, 0600 files written atomically, files read
 * only when no other user can read or own them), which plain Lua cannot do. Bad keys and file
 * failures come back as `nil, err`; wrong argument types raise. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "hc_compat.h"
#include "hc_file.h"
#include "hc_jwt.h"
#include "hc_lua.h"

#define PRIVATE_KEY_MT "healthcare.PrivateKey"
#define JWT_CAP (64u * 1024u)
#define PRIVATE_FILE_CAP (64 * 1024)

typedef struct lkey {
    EVP_PKEY *key;      /* owned; NULL once closed */
} lkey;

/* ---- keys and signing ---------------------------------------------------------------- */

/* Pushes a new PrivateKey for the PEM string at idx, or nil and an error table (kind "auth"). */
static int push_key(lua_State *L, int idx)
{
    size_t n;
    const char *pem = luaL_checklstring(L, idx, &n);
    char err[HC_JWT_ERRLEN];
    lkey *k = lua_newuserdata(L, sizeof *k);
    k->key = NULL;
    luaL_setmetatable(L, PRIVATE_KEY_MT);
    k->key = hc_jwt_key_load(pem, n, err);
    if (k->key == NULL) {
        lua_pushnil(L);
        hc_lua_push_error(L, "auth", err, "key");
        return 2;
    }
    return 1;
}

/* private_key(pem) -> PrivateKey | nil, err */
static int core_private_key(lua_State *L)
{
    return push_key(L, 1);
}

static lkey *check_key(lua_State *L, int idx)
{
    lkey *k = luaL_checkudata(L, idx, PRIVATE_KEY_MT);
    if (k->key == NULL)
        luaL_error(L, "attempt to use a closed private key");
    return k;
}

/* Pushes the JWT signed by key over the header and claims at hidx and cidx, or nil, err. */
static int push_jwt(lua_State *L, EVP_PKEY *key, int hidx, int cidx)
{
    size_t hlen, clen;
    const char *header = luaL_checklstring(L, hidx, &hlen);
    const char *claims = luaL_checklstring(L, cidx, &clen);
    char err[HC_JWT_ERRLEN];
    hc_buf out;
    hc_buf_init(&out, JWT_CAP);
    if (hc_jwt_sign(key, header, hlen, claims, clen, &out, err) != 0) {
        hc_buf_free(&out);
        lua_pushnil(L);
        hc_lua_push_error(L, "auth", err, "sign");
        return 2;
    }
    lua_pushlstring(L, out.data, out.len);
    hc_buf_free(&out);
    return 1;
}

/* key:sign(header_json, claims_json) -> jwt | nil, err */
static int key_sign(lua_State *L)
{
    lkey *k = check_key(L, 1);
    return push_jwt(L, k->key, 2, 3);
}

/* key:bits() -> size of the RSA modulus */
static int key_bits(lua_State *L)
{
    lkey *k = check_key(L, 1);
    lua_pushinteger(L, EVP_PKEY_get_bits(k->key));
    return 1;
}

static int key_close(lua_State *L)
{
    lkey *k = luaL_checkudata(L, 1, PRIVATE_KEY_MT);
    hc_jwt_key_free(k->key);
    k->key = NULL;
    return 0;
}

static int key_tostring(lua_State *L)
{
    lkey *k = luaL_checkudata(L, 1, PRIVATE_KEY_MT);
    if (k->key == NULL)
        lua_pushliteral(L, "healthcare.PrivateKey (closed)");
    else
        lua_pushfstring(L, "healthcare.PrivateKey (RSA, %d bits)", EVP_PKEY_get_bits(k->key));
    return 1;
}

/* jwt_sign(header_json, claims_json, key) -> jwt | nil, err; key is a PrivateKey or PEM text */
static int core_jwt_sign(lua_State *L)
{
    lkey *k;
    if (lua_type(L, 3) == LUA_TSTRING) {
        if (push_key(L, 3) != 1)
            return 2;
        k = lua_touserdata(L, -1);
        {
            int n = push_jwt(L, k->key, 1, 2);
            /* A key parsed for one signature is freed now, not at some later collection. */
            hc_jwt_key_free(k->key);
            k->key = NULL;
            return n;
        }
    }
    k = check_key(L, 3);
    return push_jwt(L, k->key, 1, 2);
}

/* base64url(s) -> s encoded per RFC 4648 section 5, without padding */
static int core_base64url(lua_State *L)
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
static int core_sha256_hex(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[65], err[HC_JWT_ERRLEN];
    if (hc_jwt_sha256_hex(s, n, hex, err) != 0)
        return luaL_error(L, "%s", err);
    lua_pushlstring(L, hex, 64);
    return 1;
}

/* ---- private files (the token cache) ------------------------------------------------- */

static int push_io_error(lua_State *L, const char *what, const char *path, int errnum, const char *code)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s %s: %s", what, path, strerror(errnum));
    hc_lua_push_error(L, "io", lua_tostring(L, -1), code);
    lua_remove(L, -2);
    return 2;
}

/* private_mkdir(path) -> true | nil, err: creates path and its missing parents with mode 0700,
 * and refuses a final directory that another user owns or others may write to. */
static int core_private_mkdir(lua_State *L)
{
    size_t n, i;
    const char *path = luaL_checklstring(L, 1, &n);
    char *copy;
    struct stat st;
    if (n == 0 || memchr(path, '\0', n) != NULL)
        return luaL_argerror(L, 1, "must be a non-empty path without NUL");
    copy = lua_newuserdata(L, n + 1);
    memcpy(copy, path, n + 1);
    for (i = 1; i <= n; i++) {
        if (copy[i] == '/' || copy[i] == '\0') {
            char saved = copy[i];
            copy[i] = '\0';
            if (mkdir(copy, 0700) != 0 && errno != EEXIST)
                return push_io_error(L, "cannot create the directory", copy, errno, "mkdir");
            copy[i] = saved;
        }
    }
    if (stat(path, &st) != 0)
        return push_io_error(L, "cannot use the directory", path, errno, "mkdir");
    if (!S_ISDIR(st.st_mode))
        return push_io_error(L, "cannot use the directory", path, ENOTDIR, "mkdir");
    if (st.st_uid != geteuid() || (st.st_mode & 022) != 0)
        return push_io_error(L, "refusing the directory (another user owns it or may write to it)",
                             path, EPERM, "unsafe");
    lua_pushboolean(L, 1);
    return 1;
}

/* private_write(path, data) -> true | nil, err: writes a mode 0600 file next to path, then
 * renames it over path (hc_file_replace), so readers never see half a file and the mode never
 * widens. */
static int core_private_write(lua_State *L)
{
    size_t plen, n;
    const char *path = luaL_checklstring(L, 1, &plen);
    const char *data = luaL_checklstring(L, 2, &n);
    int err;
    if (memchr(path, '\0', plen) != NULL)
        return luaL_argerror(L, 1, "path contains NUL");
    err = hc_file_replace(path, data, n, 0600);
    if (err != 0)
        return push_io_error(L, "cannot write", path, err, "write");
    lua_pushboolean(L, 1);
    return 1;
}

/* private_read(path) -> data | nil, err: err.code is "absent" when there is no file, "unsafe"
 * when another user owns it or others may read it (then it is not read). */
static int core_private_read(lua_State *L)
{
    size_t plen, off = 0;
    const char *path = luaL_checklstring(L, 1, &plen);
    struct stat st;
    char *buf;
    int fd;
    if (memchr(path, '\0', plen) != NULL)
        return luaL_argerror(L, 1, "path contains NUL");
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return push_io_error(L, "cannot read", path, errno, errno == ENOENT ? "absent" : "read");
    if (fstat(fd, &st) != 0) {
        int saved = errno;
        close(fd);
        return push_io_error(L, "cannot read", path, saved, "read");
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
        close(fd);
        return push_io_error(L, "refusing to read (not a private file of this user)", path, EPERM, "unsafe");
    }
    if (st.st_size > PRIVATE_FILE_CAP) {
        close(fd);
        return push_io_error(L, "refusing to read", path, EFBIG, "read");
    }
    buf = lua_newuserdata(L, (size_t)st.st_size + 1);
    while (off < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + off, (size_t)st.st_size - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        off += (size_t)r;
    }
    close(fd);
    lua_pushlstring(L, buf, off);
    return 1;
}

/* ---- registration -------------------------------------------------------------------- */

static const luaL_Reg key_methods[] = {
    {"sign", key_sign},
    {"bits", key_bits},
    {"close", key_close},
    {NULL, NULL}
};

static const luaL_Reg jwt_functions[] = {
    {"private_key", core_private_key},
    {"jwt_sign", core_jwt_sign},
    {"base64url", core_base64url},
    {"sha256_hex", core_sha256_hex},
    {"private_mkdir", core_private_mkdir},
    {"private_write", core_private_write},
    {"private_read", core_private_read},
    {NULL, NULL}
};

void hc_lua_jwt_register(lua_State *L)
{
    luaL_newmetatable(L, PRIVATE_KEY_MT);
    lua_newtable(L);
    luaL_setfuncs(L, key_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, key_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, key_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, key_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, PRIVATE_KEY_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    luaL_setfuncs(L, jwt_functions, 0);
}
