/* SPDX-License-Identifier: MIT */
/* What a long migration needs from the operating system and cannot get from portable Lua:
 * an append-only file whose lines are on disk (fsync) before a request counts as done, locked
 * so that two processes never write one journal, and refused when someone else could have
 * written it (healthcare.dicomweb.journal keeps the format); a
 * stable 32-bit hash of a path for splitting work over machines (healthcare.dicomweb.shard; Lua 5.1 and
 * LuaJIT have no bit operators); and a flag set by SIGINT or SIGTERM that the batch loop polls
 * so an upload stops between requests instead of dying in the middle of one. Registered into
 * healthcare.core by hc_lua_journal_register. Uses only API common to Lua 5.1 and 5.4. */
#define _DEFAULT_SOURCE /* flock(2), which follows the open file, not the process as fcntl does */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>

#include "hc_lua.h"

#define HC_APPENDER_MT "healthcare.Appender"

typedef struct hc_appender {
    int fd;       /* -1 when closed */
    char *rbuf;   /* read_line's buffer: owned, NULL until the first read_line, freed by close */
    size_t rcap;  /* its size */
    size_t rpos;  /* rbuf[rpos, rlen): read from the file, not yet returned */
    size_t rlen;
    off_t roff;   /* the file offset of rbuf[rlen], where the next read starts */
    char path[];  /* for messages */
} hc_appender;

/* ---- errors -------------------------------------------------------------------------- */

/* Pushes nil and an io error "what 'path': strerror(err)" with code (may be NULL); returns 2. */
static int hc_journal_fail(lua_State *L, const char *what, const char *path, int err,
                           const char *code)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s '%s': %s", what, path, strerror(err));
    lua_pushnil(L);
    hc_lua_push_error(L, "io", msg, code);
    return 2;
}

/* ---- the appender -------------------------------------------------------------------- */

/* Makes a new file's directory entry durable too: fsync of the file alone does not. Returns 0
 * or an errno value. */
static int hc_journal_sync_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir;
    int fd, err = 0;
    if (slash == NULL) {
        dir = strdup(".");
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        dir = malloc(n + 1);
        if (dir != NULL) {
            memcpy(dir, path, n);
            dir[n] = '\0';
        }
    }
    if (dir == NULL)
        return ENOMEM;
    fd = open(dir, O_RDONLY | O_CLOEXEC);
    free(dir);
    if (fd < 0)
        return errno;
    /* Some file systems cannot sync a directory; the file's own fsync still holds. */
    if (fsync(fd) != 0 && errno != EINVAL)
        err = errno;
    close(fd);
    return err;
}

/* Pushes nil and an io error "refusing journal 'path': why" with code "unsafe"; returns 2. */
static int hc_journal_refuse(lua_State *L, const char *path, const char *why)
{
    char msg[768];
    snprintf(msg, sizeof msg, "refusing journal '%s': %s", path, why);
    lua_pushnil(L);
    hc_lua_push_error(L, "io", msg, "unsafe");
    return 2;
}

/* What a file that is not a regular file is, for messages. */
static const char *hc_journal_file_type(mode_t mode)
{
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISBLK(mode))
        return "a block device";
    if (S_ISSOCK(mode))
        return "a socket";
    if (S_ISLNK(mode))
        return "a symbolic link";
    return "not a regular file";
}

/* Why the open file st must not be trusted as a journal, in why (size n), or 0 when it may. Its
 * lines decide which files a run skips without reading them, so only this user may have
 * written them: a regular file, owned by the effective user, that neither group nor others
 * may write. */
static int hc_journal_distrust(const struct stat *st, char *why, size_t n)
{
    if (!S_ISREG(st->st_mode))
        snprintf(why, n, "it is %s, not a regular file", hc_journal_file_type(st->st_mode));
    else if (st->st_uid != geteuid())
        snprintf(why, n, "it belongs to another user (uid %lu; this process runs as uid %lu)",
                 (unsigned long)st->st_uid, (unsigned long)geteuid());
    else if ((st->st_mode & (S_IWGRP | S_IWOTH)) != 0)
        snprintf(why, n, "the group or others may write to it (mode %04lo); only its owner may",
                 (unsigned long)(st->st_mode & 07777));
    else
        return 0;
    return 1;
}

/* appender(path) -> a userdata owned by Lua (closed by close() or the collector), or nil, err.
 * Opens path for reading and appending (created with mode 0600: a journal names files that may
 * name patients), takes an exclusive lock that is never waited for (code "busy" when another
 * process holds it), and makes a newly created file's directory entry durable.
 * A journal that could hold lines written by someone else is refused before anything is read,
 * written or locked (kind "io", code "unsafe"): a symbolic link (O_NOFOLLOW: never the file
 * at its other end), anything but a regular file (a FIFO or device is not even opened), a file
 * owned by another user than the effective one, or one the group or others may write. The
 * checks are made on the open descriptor, which is the one read (read(), read_line()) and written: nothing
 * opens the path a second time. The directory is not checked: a file that passes was written
 * by this user alone, wherever it is (README, "Migrating an archive"). */
static int hc_journal_open(lua_State *L)
{
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    hc_appender *a = (hc_appender *)lua_newuserdata(L, sizeof *a + len + 1);
    struct stat st;
    char why[256];
    int fd, created = 1, err;
    a->fd = -1;
    a->rbuf = NULL;
    a->rcap = a->rpos = a->rlen = 0;
    a->roff = 0;
    memcpy(a->path, path, len + 1);
    luaL_getmetatable(L, HC_APPENDER_MT);
    lua_setmetatable(L, -2);
    /* O_EXCL does not follow a symbolic link either: one at path (dangling or not) is EEXIST. */
    fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0 && errno == EEXIST) {
        created = 0;
        /* Refused by name first, so a FIFO or a device is never opened (opening some has effects);
         * a directory is left to open() (EISDIR). The checks on the descriptor below decide. */
        if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
            snprintf(why, sizeof why, "it is %s, not a regular file%s", hc_journal_file_type(st.st_mode),
                     S_ISLNK(st.st_mode) ? " (name the file itself, if it is yours)" : "");
            return hc_journal_refuse(L, path, why);
        }
        /* O_NONBLOCK: a FIFO swapped in since lstat must not block us (it is refused below). */
        fd = open(path, O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0 && errno == ELOOP)
            return hc_journal_refuse(L, path, "it is a symbolic link, not a regular file");
    }
    if (fd < 0)
        return hc_journal_fail(L, "cannot open journal", path, errno, NULL);
    if (fstat(fd, &st) != 0) {
        err = errno;
        close(fd);
        return hc_journal_fail(L, "cannot use journal", path, err, NULL);
    }
    if (hc_journal_distrust(&st, why, sizeof why)) {
        close(fd);
        return hc_journal_refuse(L, path, why);
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        err = errno;
        close(fd);
        if (err == EWOULDBLOCK) {
            char msg[512];
            snprintf(msg, sizeof msg, "journal '%s' is in use by another process", path);
            lua_pushnil(L);
            hc_lua_push_error(L, "io", msg, "busy");
            return 2;
        }
        return hc_journal_fail(L, "cannot lock journal", path, err, NULL);
    }
    if (created && (err = hc_journal_sync_parent(path)) != 0) {
        close(fd);
        return hc_journal_fail(L, "cannot sync the directory of journal", path, err, NULL);
    }
    a->fd = fd;
    return 1;
}

/* Checks argument 1 is an open appender; raises otherwise (a programming mistake). */
static hc_appender *hc_journal_check(lua_State *L)
{
    hc_appender *a = (hc_appender *)luaL_checkudata(L, 1, HC_APPENDER_MT);
    if (a->fd < 0)
        luaL_error(L, "attempt to use a closed journal");
    return a;
}

/* a:append(s) -> true, or nil, err. s is written whole and fsynced before this returns; when
 * that fails the file is cut back to its previous length so no half line stays behind. */
static int hc_journal_append(lua_State *L)
{
    hc_appender *a = hc_journal_check(L);
    size_t n, off = 0;
    const char *s = luaL_checklstring(L, 2, &n);
    struct stat st;
    int err;
    if (fstat(a->fd, &st) != 0)
        return hc_journal_fail(L, "cannot write journal", a->path, errno, NULL);
    while (off < n) {
        ssize_t w = write(a->fd, s + off, n - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            goto fail;
        }
        off += (size_t)w;
    }
    if (fsync(a->fd) != 0)
        goto fail;
    lua_pushboolean(L, 1);
    return 1;
fail:
    err = errno;
    if (ftruncate(a->fd, st.st_size) != 0) {
        /* Nothing more to do: the next open cuts the torn tail off. */
    }
    return hc_journal_fail(L, "cannot write journal", a->path, err, NULL);
}

/* Most bytes read() returns, and the longest line read_line() returns: a journal line is under
 * 1 KiB, or a few KiB with a server's long reason; 64 MiB is no line this program wrote. */
#define HC_JOURNAL_MAX_READ (1024 * 1024)
#define HC_JOURNAL_MAX_LINE (64 * 1024 * 1024)

/* a:read(offset, n) -> up to n (at most 1 MiB) bytes of the journal from offset ("" at its
 * end), or nil, err. Reads through the descriptor the checks of appender() were made on (pread:
 * the append position does not move). */
static int hc_journal_read(lua_State *L)
{
    hc_appender *a = hc_journal_check(L);
    lua_Integer off = luaL_checkinteger(L, 2);
    lua_Integer want = luaL_checkinteger(L, 3);
    size_t got = 0;
    char *buf;
    luaL_argcheck(L, off >= 0, 2, "must not be negative");
    luaL_argcheck(L, want >= 0 && want <= HC_JOURNAL_MAX_READ, 3, "must be 0 to 1 MiB");
    buf = (char *)lua_newuserdata(L, want > 0 ? (size_t)want : 1); /* owned by Lua */
    while (got < (size_t)want) {
        ssize_t r = pread(a->fd, buf + got, (size_t)want - got, (off_t)off + (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return hc_journal_fail(L, "cannot read journal", a->path, errno, NULL);
        if (r == 0)
            break;
        got += (size_t)r;
    }
    lua_pushlstring(L, buf, got);
    return 1;
}

/* a:read_line() -> the next whole line of the journal (with its "\n"), from the start of the
 * file on; at the end: false, the offset where the last whole line ends, and the number of
 * bytes after it (a torn line); or nil, err. Reads through the checked descriptor, in 64 KiB
 * or larger pieces into a buffer the appender owns, so loading a journal allocates only its
 * lines (as io.lines would). */
static int hc_journal_read_line(lua_State *L)
{
    hc_appender *a = hc_journal_check(L);
    for (;;) {
        char *nl = a->rpos < a->rlen ? memchr(a->rbuf + a->rpos, '\n', a->rlen - a->rpos) : NULL;
        ssize_t r;
        if (nl != NULL) {
            size_t n = (size_t)(nl - (a->rbuf + a->rpos)) + 1;
            lua_pushlstring(L, a->rbuf + a->rpos, n);
            a->rpos += n;
            return 1;
        }
        if (a->rpos > 0) { /* keep the line begun at the front */
            memmove(a->rbuf, a->rbuf + a->rpos, a->rlen - a->rpos);
            a->rlen -= a->rpos;
            a->rpos = 0;
        }
        if (a->rlen == a->rcap) {
            size_t want = a->rcap ? 2 * a->rcap : 64 * 1024;
            char *grown;
            if (a->rcap >= HC_JOURNAL_MAX_LINE)
                return hc_journal_fail(L, "cannot read journal (a line longer than 64 MiB)", a->path,
                                       EFBIG, NULL);
            grown = realloc(a->rbuf, want);
            if (grown == NULL)
                return hc_journal_fail(L, "cannot read journal", a->path, ENOMEM, NULL);
            a->rbuf = grown;
            a->rcap = want;
        }
        r = pread(a->fd, a->rbuf + a->rlen, a->rcap - a->rlen, a->roff);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return hc_journal_fail(L, "cannot read journal", a->path, errno, NULL);
        if (r == 0) {
            lua_pushboolean(L, 0);
            lua_pushinteger(L, (lua_Integer)(a->roff - (off_t)a->rlen));
            lua_pushinteger(L, (lua_Integer)a->rlen);
            return 3;
        }
        a->rlen += (size_t)r;
        a->roff += r;
    }
}

/* a:truncate(len) -> true, or nil, err: cuts a torn last line off before appending. */
static int hc_journal_truncate(lua_State *L)
{
    hc_appender *a = hc_journal_check(L);
    lua_Integer len = luaL_checkinteger(L, 2);
    luaL_argcheck(L, len >= 0, 2, "must not be negative");
    if (ftruncate(a->fd, (off_t)len) != 0 || fsync(a->fd) != 0)
        return hc_journal_fail(L, "cannot truncate journal", a->path, errno, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

/* a:close() -> true; releases the lock. Safe to call twice. */
static int hc_journal_close(lua_State *L)
{
    hc_appender *a = (hc_appender *)luaL_checkudata(L, 1, HC_APPENDER_MT);
    if (a->fd >= 0) {
        close(a->fd);
        a->fd = -1;
    }
    free(a->rbuf);
    a->rbuf = NULL;
    a->rcap = a->rpos = a->rlen = 0;
    lua_pushboolean(L, 1);
    return 1;
}

static int hc_journal_tostring(lua_State *L)
{
    hc_appender *a = (hc_appender *)luaL_checkudata(L, 1, HC_APPENDER_MT);
    lua_pushstring(L, a->fd < 0 ? "healthcare.Appender (closed)" : "healthcare.Appender");
    return 1;
}

/* ---- hashing ------------------------------------------------------------------------- */

/* hash32(s) -> an integer in [0, 2^32): FNV-1a 64 of the bytes of s, xor-folded to 32 bits
 * (the folding FNV's authors recommend for shorter hashes; the low bits of plain FNV-1a follow
 * the low bits of the input too closely for `hash % n`). Part of the shard contract: never
 * change it. */
static int hc_journal_hash32(lua_State *L)
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

/* ---- interrupts ---------------------------------------------------------------------- */

/* The one piece of state outside an object: a signal handler can only tell the program
 * something through a static volatile sig_atomic_t. */
static volatile sig_atomic_t hc_journal_signal = 0;

static void hc_journal_on_signal(int sig)
{
    hc_journal_signal = sig;
}

/* trap_interrupts([on]): from now on SIGINT and SIGTERM set a flag (read by interrupted())
 * instead of ending the process. The handler is reset after one delivery (SA_RESETHAND), so a
 * second Ctrl-C ends the process at once. trap_interrupts(false) gives both signals their
 * default action back. Either way the flag is cleared. Only a program's main loop should call
 * this, never a library inside a host (nginx) that owns its signals. */
static int hc_journal_trap(lua_State *L)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    if (lua_isnoneornil(L, 1) || lua_toboolean(L, 1)) {
        sa.sa_handler = hc_journal_on_signal;
        sa.sa_flags = SA_RESETHAND; /* no SA_RESTART: a blocking poll returns early */
    } else {
        sa.sa_handler = SIG_DFL;
    }
    hc_journal_signal = 0;
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0)
        return luaL_error(L, "sigaction: %s", strerror(errno));
    return 0;
}

/* interrupted() -> the number of the signal caught since trap_interrupts(), or false. */
static int hc_journal_interrupted(lua_State *L)
{
    int sig = (int)hc_journal_signal;
    if (sig == 0)
        lua_pushboolean(L, 0);
    else
        lua_pushinteger(L, sig);
    return 1;
}

/* ---- registration -------------------------------------------------------------------- */

static const luaL_Reg hc_journal_methods[] = {
    {"append", hc_journal_append},
    {"read", hc_journal_read},
    {"read_line", hc_journal_read_line},
    {"truncate", hc_journal_truncate},
    {"close", hc_journal_close},
    {NULL, NULL}
};

static const luaL_Reg hc_journal_functions[] = {
    {"appender", hc_journal_open},
    {"hash32", hc_journal_hash32},
    {"trap_interrupts", hc_journal_trap},
    {"interrupted", hc_journal_interrupted},
    {NULL, NULL}
};

/* Sets the functions of l into the table on top (luaL_setfuncs is not in Lua 5.1; this file
 * keeps off hc_compat.h, whose unused static shims break -Werror under LuaJIT). */
static void hc_journal_setfuncs(lua_State *L, const luaL_Reg *l)
{
    for (; l->name != NULL; l++) {
        lua_pushcfunction(L, l->func);
        lua_setfield(L, -2, l->name);
    }
}

/* Adds appender, hash32, trap_interrupts and interrupted to the module table on top. */
void hc_lua_journal_register(lua_State *L)
{
    luaL_newmetatable(L, HC_APPENDER_MT);
    lua_createtable(L, 0, 5);
    hc_journal_setfuncs(L, hc_journal_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, hc_journal_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, hc_journal_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, hc_journal_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    hc_journal_setfuncs(L, hc_journal_functions);
}
