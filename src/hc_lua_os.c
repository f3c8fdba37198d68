/* SPDX-License-Identifier: MIT */
/* What the command and the batch loop need from the operating system and cannot get from
 * portable Lua: a monotonic clock, a sleep, whether a descriptor is a terminal, a flag set
 * by SIGINT or SIGTERM that a loop polls, so an upload or a retrieve stops between requests
 * (and says what it abandoned) instead of dying in the middle of one, and the inotify events
 * `healthcare watch` takes spool files on (Debian's lua-inotify is built for Lua 5.1-5.3 only). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
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

/* The one piece of state outside an object: a signal handler can only tell the program
 * something through a static volatile sig_atomic_t. */
static volatile sig_atomic_t caught_signal = 0;

/* sleep(seconds): for back-off between retries outside an event loop. A signal trapped by
 * trap_interrupts ends it early: a program told to stop should not first wait out a back-off. */
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
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && caught_signal == 0)
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

/* ---- inotify ------------------------------------------------------------------------------ */

#define INOTIFY_MT "healthcare.Inotify"

/* What a spool watcher needs to hear of: a file closed after writing or renamed in (its writer
 * is done), a folder made or renamed in (to watch it too), and the watched folder going away. */
#define WATCH_MASK                                                                                 \
    (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

typedef struct inotify_handle {
    int fd; /* -1 when closed */
} inotify_handle;

/* inotify() -> a watch handle (non-blocking, close-on-exec), or nil, err (kind "io", status
 * "inotify": e.g. the per-user instance limit). */
static int l_os_inotify(lua_State *L)
{
    inotify_handle *h = (inotify_handle *)lua_newuserdata(L, sizeof *h);
    h->fd = -1;
    luaL_getmetatable(L, INOTIFY_MT);
    lua_setmetatable(L, -2);
    h->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (h->fd < 0)
        return hc_lua_fail(L, "io", "inotify", "inotify: %s", strerror(errno));
    return 1;
}

static inotify_handle *inotify_check(lua_State *L)
{
    inotify_handle *h = (inotify_handle *)luaL_checkudata(L, 1, INOTIFY_MT);
    if (h->fd < 0)
        luaL_error(L, "attempt to use a closed inotify handle");
    return h;
}

/* h:add(dir) -> a watch number, or nil, err (kind "io", status "inotify": not a folder, gone,
 * or the per-user watch limit, fs.inotify.max_user_watches). */
static int l_inotify_add(lua_State *L)
{
    inotify_handle *h = inotify_check(L);
    const char *dir = luaL_checkstring(L, 2);
    int wd = inotify_add_watch(h->fd, dir, WATCH_MASK);
    if (wd < 0)
        return hc_lua_fail(L, "io", "inotify", "cannot watch '%s': %s", dir, strerror(errno));
    lua_pushinteger(L, wd);
    return 1;
}

/* h:remove(wd): stops watching (a folder already gone is no error). */
static int l_inotify_remove(lua_State *L)
{
    inotify_handle *h = inotify_check(L);
    (void)inotify_rm_watch(h->fd, (int)luaL_checkinteger(L, 2));
    return 0;
}

/* Pushes one event as { wd, name, closed, moved_in, created, dir, gone, overflow }. */
static void push_event(lua_State *L, const struct inotify_event *ev)
{
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, ev->wd);
    lua_setfield(L, -2, "wd");
    if (ev->len > 0) {
        lua_pushstring(L, ev->name); /* NUL-padded by the kernel */
        lua_setfield(L, -2, "name");
    }
    lua_pushboolean(L, (ev->mask & IN_CLOSE_WRITE) != 0);
    lua_setfield(L, -2, "closed");
    lua_pushboolean(L, (ev->mask & IN_MOVED_TO) != 0);
    lua_setfield(L, -2, "moved_in");
    lua_pushboolean(L, (ev->mask & IN_CREATE) != 0);
    lua_setfield(L, -2, "created");
    lua_pushboolean(L, (ev->mask & IN_ISDIR) != 0);
    lua_setfield(L, -2, "dir");
    lua_pushboolean(L, (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) != 0);
    lua_setfield(L, -2, "gone");
    lua_pushboolean(L, (ev->mask & IN_Q_OVERFLOW) != 0);
    lua_setfield(L, -2, "overflow");
}

/* h:read(timeout) -> a list of events (empty when none came within timeout seconds, or when a
 * signal ended the wait), or nil, err. overflow = true: the kernel dropped events (rescan). */
static int l_inotify_read(lua_State *L)
{
    inotify_handle *h = inotify_check(L);
    double secs = luaL_optnumber(L, 2, 0);
    struct pollfd pfd;
    char buf[16 * (sizeof(struct inotify_event) + NAME_MAX + 1)]
        __attribute__((aligned(__alignof__(struct inotify_event))));
    int ms = secs > 0 ? (secs > 86400 ? 86400000 : (int)(secs * 1000)) : 0;
    lua_Integer n = 0;
    pfd.fd = h->fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    lua_newtable(L);
    if (poll(&pfd, 1, ms) <= 0)
        return 1; /* nothing, or EINTR: the caller checks interrupted() */
    for (;;) {
        ssize_t got = read(h->fd, buf, sizeof buf);
        char *p;
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (got <= 0)
            return hc_lua_fail(L, "io", "inotify", "inotify read: %s",
                               got < 0 ? strerror(errno) : "end of file");
        for (p = buf; p < buf + got;) {
            const struct inotify_event *ev = (const struct inotify_event *)(void *)p;
            push_event(L, ev);
            lua_rawseti(L, -2, (int)++n);
            p += sizeof(struct inotify_event) + ev->len;
        }
    }
    return 1;
}

static int l_inotify_close(lua_State *L)
{
    inotify_handle *h = (inotify_handle *)luaL_checkudata(L, 1, INOTIFY_MT);
    if (h->fd >= 0) {
        close(h->fd);
        h->fd = -1;
    }
    return 0;
}

static int l_inotify_tostring(lua_State *L)
{
    inotify_handle *h = (inotify_handle *)luaL_checkudata(L, 1, INOTIFY_MT);
    lua_pushstring(L, h->fd < 0 ? "healthcare.Inotify (closed)" : "healthcare.Inotify");
    return 1;
}

static const luaL_Reg inotify_methods[] = {
    {"add", l_inotify_add},
    {"remove", l_inotify_remove},
    {"read", l_inotify_read},
    {"close", l_inotify_close},
    {NULL, NULL}
};

static const luaL_Reg os_functions[] = {
    {"now", l_os_now},
    {"sleep", l_os_sleep},
    {"isatty", l_os_isatty},
    {"trap_interrupts", l_os_trap_interrupts},
    {"interrupted", l_os_interrupted},
    {"inotify", l_os_inotify},
    {NULL, NULL}
};

/* Adds now, sleep, isatty, trap_interrupts, interrupted and inotify to the module table on top. */
void hc_lua_os_register(lua_State *L)
{
    hc_lua_newclass(L, INOTIFY_MT, inotify_methods, l_inotify_close, l_inotify_tostring);
    luaL_setfuncs(L, os_functions, 0);
}
