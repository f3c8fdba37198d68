/* SPDX-License-Identifier: MIT */
/* One place for the differences between the Lua 5.4 API and the Lua 5.1 API that LuaJIT 2.1
 * (OpenResty's Lua) offers. Each shim tests for the feature, not for a version, so a LuaJIT
 * built with 5.2 compatibility keeps its own functions. */
#ifndef HC_COMPAT_H
#define HC_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if !defined(LUA_VERSION_NUM) || LUA_VERSION_NUM < 502
#  ifndef luaL_newlibtable
#    define luaL_newlibtable(L, l) lua_createtable(L, 0, (int)(sizeof(l) / sizeof((l)[0]) - 1))
#  endif
#  ifndef luaL_newlib
#    define luaL_newlib(L, l) (luaL_newlibtable(L, l), luaL_setfuncs(L, l, 0))
#  endif
#  ifndef lua_rawlen
#    define lua_rawlen(L, i) lua_objlen(L, i)
#  endif
#  define HC_NEED_SETFUNCS 1
#  define HC_NEED_TESTUDATA 1
#endif

#ifdef HC_NEED_SETFUNCS
/* LuaJIT 2.1 exports luaL_setfuncs; plain Lua 5.1 does not. Ours is static so the two never clash,
 * and inline so a file that calls none of these shims gets no unused-function warning. */
static inline void hc_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup, "too many upvalues");
    for (; l->name != NULL; l++) {
        int i;
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#  undef luaL_setfuncs
#  define luaL_setfuncs hc_compat_setfuncs
#endif

#ifdef HC_NEED_TESTUDATA
static inline void *hc_compat_testudata(lua_State *L, int ud, const char *tname)
{
    void *p = lua_touserdata(L, ud);
    if (p != NULL && lua_getmetatable(L, ud)) {
        luaL_getmetatable(L, tname);
        if (!lua_rawequal(L, -1, -2))
            p = NULL;
        lua_pop(L, 2);
        return p;
    }
    return NULL;
}
#  undef luaL_testudata
#  define luaL_testudata hc_compat_testudata
static inline void hc_compat_setmetatable(lua_State *L, const char *tname)
{
    luaL_getmetatable(L, tname);
    lua_setmetatable(L, -2);
}
#  undef luaL_setmetatable
#  define luaL_setmetatable hc_compat_setmetatable
#endif

#endif
