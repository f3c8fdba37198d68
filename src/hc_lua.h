/* SPDX-License-Identifier: MIT */
/* What the Lua binding files (hc_lua_*.c) of healthcare.core share: the one error builder, the
 * one argument-error helper, the one class helper and one-time library initialisation. Each
 * binding registers its functions into the module table on top of the stack.
 *
 * House rules of src/ (see also .clang-format: 4 spaces, lines of at most 100 columns):
 *  - Files: hc_<area>.c is plain C (no Lua header, testable in spec/c and fuzzable);
 *    hc_lua_<area>.c is its Lua binding; hc_core.c opens the module.
 *  - Names: what a header exports is hc_<area>_<verb>. In a .c file, static functions Lua calls
 *    (registered in a luaL_Reg) are l_<class>_<name> (l_session_wait, l_core_escape); every
 *    other static is <area>_<name> or a plain verb (sink_decide, open_temp), never hc_ (kept
 *    for exports) nor l_. Types and macros private to a file need no prefix either.
 *  - Errors: a failure of the world returns nil, err through hc_lua_fail; misuse raises through
 *    luaL_argerror / hc_lua_argerror ("bad argument #2 to 'request' (...)"). */
#ifndef HC_LUA_H
#define HC_LUA_H

#include "hc_compat.h"

#define HC_VERSION "0.1.0"
#define HC_ERROR_MT "healthcare.Error"

/* The one exported symbol; everything else is hidden (see CMakeLists.txt). */
#if defined(__GNUC__)
#  define HC_API __attribute__((visibility("default")))
#  define HC_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#  define HC_API
#  define HC_PRINTF(f, a)
#endif

/* Pushes nil and an error value { kind, message, status, retryable = false } with the shared
 * metatable (core.Error), the message formatted by vsnprintf (any length). kind is one of the
 * documented kinds ("transport", "io", "dicom", "auth", "usage"); status is a fixed short reason
 * callers branch on ("connect", "busy", "unsafe", "sink", ...). The error table is left on top
 * (callers may add fields); returns 2, for `return hc_lua_fail(...)`. */
int hc_lua_fail(lua_State *L, const char *kind, const char *status, const char *fmt, ...)
    HC_PRINTF(4, 5);

/* Raises "bad argument #arg to '<function>' (<formatted reason>)" (luaL_argerror). */
int hc_lua_argerror(lua_State *L, int arg, const char *fmt, ...) HC_PRINTF(3, 4);

/* Creates the metatable of a userdata class named name ("healthcare.Session"), as liolib's
 * createmeta and LuaSocket's auxiliar_newclass do: __index = methods, __gc = __close = close
 * (which must be safe to call twice), __tostring, __name. Leaves the stack as it was. */
void hc_lua_newclass(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction close,
                     lua_CFunction tostring);

/* curl_global_init, once per process, before the first handle. */
void hc_lua_global_init(void);

void hc_lua_http_register(lua_State *L);
void hc_lua_dicom_register(lua_State *L);
void hc_lua_jwt_register(lua_State *L);
void hc_lua_journal_register(lua_State *L);
void hc_lua_file_register(lua_State *L);
void hc_lua_os_register(lua_State *L);
void hc_lua_sigv4_register(lua_State *L);

#endif
