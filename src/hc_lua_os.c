/* SPDX-License-Identifier: MIT */
/* What the command and the batch loop need from the operating system and cannot get from
 * portable Lua: a monotonic clock, a sleep, whether a descriptor is a terminal, and a flag set
 * by SIGINT or SIGTERM that a loop polls, so an upload or a retrieve stops between requests
 * (and says what it abandoned) instead of dying in the middle of one. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hc_lua.h"

/* ---- clocks and terminals ----------------------------------------------------------------- */

/* now() -> seconds on a monotonic clock (for durations, never dates) */
static int l_os_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* sleep(seconds): for back-off between retries outside an event loop */
static int l_os_sleep(lua_State *L)
{
    double secs = luaL_checknumber(L, 1);
    struct timespec ts;
    if (!(secs > 0)) /* also NaN */
        return 0;
    if (secs > 1e9) /* (time_t) of a larger double may be undefined */
        secs = 1e9;
    ts.tv_sec = (time_t)secs;
    ts.tv_nsec = (long)((secs - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    return 0;
}

/* isatty(fd) -> whether the descriptor is a terminal (progress bars only go to terminals) */
static int l_os_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* ---- interrupts --------------------------------------------------------------------------- */

/* The one piece of state outside an object: a signal handler can only tell the program
 * something through a static volatile sig_atomic_t. */
static volatile sig_atomic_t caught_signal = 0;

static void on_signal(int sig)
{
    caught_signal = sig;
}

/* trap_interrupts([on]): from now on SIGINT and SIGTERM set a flag (read by interrupted())
 * instead of ending the process. The handler is reset after one delivery (SA_RESETHAND), so a
 * second Ctrl-C ends the process at once. trap_interrupts(false) gives both signals their
 * default action back. Either way the flag is cleared. Only a program's main loop should call
 * this, never a library inside a host (nginx) that owns its signals. */
static int l_os_trap_interrupts(lua_State *L)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    if (lua_isnoneornil(L, 1) || lua_toboolean(L, 1)) {
        sa.sa_handler = on_signal;
        sa.sa_flags = SA_RESETHAND; /* no SA_RESTART: a blocking poll returns early */
    } else {
        sa.sa_handler = SIG_DFL;
    }
    caught_signal = 0;
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0)
        return luaL_error(L, "sigaction: %s", strerror(errno));
    return 0;
}

/* interrupted() -> the number of the signal caught since trap_interrupts(), or false. */
static int l_os_interrupted(lua_State *L)
{
    int sig = (int)caught_signal;
    if (sig == 0)
        lua_pushboolean(L, 0);
    else
        lua_pushinteger(L, sig);
    return 1;
}

static const luaL_Reg os_functions[] = {
    {"now", l_os_now},
    {"sleep", l_os_sleep},
    {"isatty", l_os_isatty},
    {"trap_interrupts", l_os_trap_interrupts},
    {"interrupted", l_os_interrupted},
    {NULL, NULL}
};

/* Adds now, sleep, isatty, trap_interrupts and interrupted to the module table on top. */
void hc_lua_os_register(lua_State *L)
{
    luaL_setfuncs(L, os_functions, 0);
}
