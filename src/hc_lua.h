/* SPDX-License-Identifier: MIT */
/* What the Lua binding files of healthcare.core share: error tables and one-time library
 * initialisation. Each area registers its functions into the module table on top of the stack. */
#ifndef HC_LUA_H
#define HC_LUA_H

#include <lua.h>

#define HC_VERSION "0.1.0"
#define HC_ERROR_MT "healthcare.Error"

/* The one exported symbol; everything else is hidden (see CMakeLists.txt). */
#if defined(__GNUC__)
#  define HC_API __attribute__((visibility("default")))
#else
#  define HC_API
#endif

/* Pushes an error table { kind, message, code } with the shared metatable (tostring gives the
 * message). code may be NULL. */
void hc_lua_push_error(lua_State *L, const char *kind, const char *message, const char *code);
/* curl_global_init, once per process, before the first handle. */
void hc_lua_global_init(void);

void hc_lua_http_register(lua_State *L);
void hc_lua_dicom_register(lua_State *L);
void hc_lua_jwt_register(lua_State *L);
void hc_lua_journal_register(lua_State *L);
void hc_lua_sigv4_register(lua_State *L);

#endif
