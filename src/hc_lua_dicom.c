/* SPDX-License-Identifier: MIT */
/*
 * Lua binding of the DICOM header probe: dicom_probe(path) and
 * dicom_probe_string(bytes), registered into healthcare.core by
 * hc_lua_dicom_register. Both return a table of the UIDs and offsets, or
 * nil, reason, kind ("dicom" when the bytes are not a usable Part-10 file,
 * "io" when the file cannot be opened or read); they raise only on wrong
 * argument types. Uses only API common to Lua 5.1 (LuaJIT) and 5.4.
 */
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "hc_dicom.h"

/* Sets t[name] = uid on the table at the top, leaving it nil when "". */
static void hc_lua_dicom_setuid(lua_State *L, const char *name, const char *uid)
{
    if (uid[0] == '\0')
        return;
    lua_pushstring(L, uid);
    lua_setfield(L, -2, name);
}

/* Sets t[name] = v (an integer) on the table at the top. */
static void hc_lua_dicom_setint(lua_State *L, const char *name, uint64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, name);
}

/* Sets t[name] = v (a boolean) on the table at the top. */
static void hc_lua_dicom_setbool(lua_State *L, const char *name, int v)
{
    lua_pushboolean(L, v);
    lua_setfield(L, -2, name);
}

/*
 * Pushes the result of a probe: a new table (owned by Lua) on success,
 * else nil, reason, kind. Returns the number of values pushed.
 */
static int hc_lua_dicom_push(lua_State *L, int rc, const hc_dicom_info *info,
                             const char *err)
{
    if (rc != HC_DICOM_OK) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        lua_pushstring(L, rc == HC_DICOM_ERR_IO ? "io" : "dicom");
        return 3;
    }
    lua_createtable(L, 0, 12);
    hc_lua_dicom_setuid(L, "transfer_syntax", info->transfer_syntax);
    hc_lua_dicom_setuid(L, "sop_class_uid", info->sop_class_uid);
    hc_lua_dicom_setuid(L, "sop_instance_uid", info->sop_instance_uid);
    hc_lua_dicom_setuid(L, "study_uid", info->study_uid);
    hc_lua_dicom_setuid(L, "series_uid", info->series_uid);
    hc_lua_dicom_setuid(L, "media_sop_class_uid", info->media_sop_class_uid);
    hc_lua_dicom_setuid(L, "media_sop_instance_uid", info->media_sop_instance_uid);
    hc_lua_dicom_setbool(L, "preamble", info->preamble);
    hc_lua_dicom_setbool(L, "deflated_fallback", info->deflated_fallback);
    hc_lua_dicom_setint(L, "dataset_offset", info->dataset_offset);
    hc_lua_dicom_setint(L, "size", info->size);
    hc_lua_dicom_setint(L, "bytes_read", info->bytes_read);
    return 1;
}

/* dicom_probe(path) -> info | nil, reason, kind */
static int hc_lua_dicom_probe(lua_State *L)
{
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    hc_dicom_info info;
    char err[256];
    int rc;

    if (strlen(path) != len) {
        lua_pushnil(L);
        lua_pushstring(L, "cannot open file: path contains a NUL byte");
        lua_pushstring(L, "io");
        return 3;
    }
    rc = hc_dicom_probe_file(path, &info, err, sizeof err);
    return hc_lua_dicom_push(L, rc, &info, err);
}

/* dicom_probe_string(bytes) -> info | nil, reason, kind */
static int hc_lua_dicom_probe_string(lua_State *L)
{
    size_t len;
    const char *bytes = luaL_checklstring(L, 1, &len);
    hc_dicom_info info;
    char err[256];
    int rc;

    rc = hc_dicom_probe_mem((const unsigned char *)bytes, len, &info, err, sizeof err);
    return hc_lua_dicom_push(L, rc, &info, err);
}

/* Sets the probe functions on the table at the top of L's stack. */
void hc_lua_dicom_register(lua_State *L)
{
    lua_pushcfunction(L, hc_lua_dicom_probe);
    lua_setfield(L, -2, "dicom_probe");
    lua_pushcfunction(L, hc_lua_dicom_probe_string);
    lua_setfield(L, -2, "dicom_probe_string");
}
