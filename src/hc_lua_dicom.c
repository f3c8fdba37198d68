/* SPDX-License-Identifier: MIT */
/* Lua binding of the DICOM header probe (hc_dicom.h): `core.dicom_probe(path)` returns a table of
 * the UIDs and offsets, or nil, err: kind "dicom", status "format" when the bytes are not a
 * usable Part-10 file (the message is one of hc_dicom.h's reasons), kind "io", status "read"
 * when the file cannot be opened or read. A path that is not a string, or holds a NUL byte,
 * raises. The in-memory probe (hc_dicom_probe_mem) is C's alone: the fuzzer and spec/c test it
 * against the file form. */
#include <string.h>

#include "hc_dicom.h"
#include "hc_lua.h"

/* t[name] = uid on the table on top; absent when "" */
static void set_uid(lua_State *L, const char *name, const char *uid)
{
    if (uid[0] == '\0')
        return;
    lua_pushstring(L, uid);
    lua_setfield(L, -2, name);
}

static void set_int(lua_State *L, const char *name, uint64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, name);
}

static void set_bool(lua_State *L, const char *name, int v)
{
    lua_pushboolean(L, v);
    lua_setfield(L, -2, name);
}

/* Pushes the table of a successful probe (owned by Lua). */
static void push_info(lua_State *L, const hc_dicom_info *info)
{
    lua_createtable(L, 0, 12);
    set_uid(L, "transfer_syntax", info->transfer_syntax);
    set_uid(L, "sop_class_uid", info->sop_class_uid);
    set_uid(L, "sop_instance_uid", info->sop_instance_uid);
    set_uid(L, "study_uid", info->study_uid);
    set_uid(L, "series_uid", info->series_uid);
    set_uid(L, "media_sop_class_uid", info->media_sop_class_uid);
    set_uid(L, "media_sop_instance_uid", info->media_sop_instance_uid);
    set_bool(L, "preamble", info->preamble);
    set_bool(L, "deflated_fallback", info->deflated_fallback);
    set_int(L, "dataset_offset", info->dataset_offset);
    set_int(L, "size", info->size);
    set_int(L, "bytes_read", info->bytes_read);
}

/* dicom_probe(path) -> info | nil, err */
static int l_dicom_probe(lua_State *L)
{
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    hc_dicom_info info;
    char err[256];
    int rc;
    if (memchr(path, '\0', len) != NULL)
        return luaL_argerror(L, 1, "path contains a NUL byte");
    rc = hc_dicom_probe_file(path, &info, err, sizeof err);
    if (rc == HC_DICOM_ERR_IO)
        return hc_lua_fail(L, "io", "read", "%s", err);
    if (rc != HC_DICOM_OK)
        return hc_lua_fail(L, "dicom", "format", "%s", err);
    push_info(L, &info);
    return 1;
}

/* Adds dicom_probe to the module table on top. */
void hc_lua_dicom_register(lua_State *L)
{
    lua_pushcfunction(L, l_dicom_probe);
    lua_setfield(L, -2, "dicom_probe");
}
