/* SPDX-License-Identifier: MIT */
/* The journal's file, `core.appender(path)`: what a long migration needs from the operating
 * system and cannot get from portable Lua. An append-only file whose lines are on disk (fsync)
 * before a request counts as done, locked so that two processes never write one journal, and
 * refused when someone else could have written it. healthcare.dicomweb.journal keeps the
 * format. Failures come back as nil, err (kind "io"; status "busy", "unsafe", "open", "lock",
 * "read", "write" or "truncate"). Registered into healthcare.core by hc_lua_journal_register. */
#define _DEFAULT_SOURCE /* flock(2), which follows the open file, not the process as fcntl does */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hc_jindex.h"
#include "hc_lua.h"

#define APPENDER_MT "healthcare.Appender"
#define INDEX_MT "healthcare.JournalIndex"

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

/* Pushes nil and an io error "what 'path': strerror(err)" with status; returns 2. */
static int appender_fail(lua_State *L, const char *status, const char *what, const char *path,
                         int err)
{
    return hc_lua_fail(L, "io", status, "%s '%s': %s", what, path, strerror(err));
}

/* ---- the appender -------------------------------------------------------------------- */

/* Makes a new file's directory entry durable too: fsync of the file alone does not. Returns 0
 * or an errno value. */
static int sync_parent(const char *path)
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

/* Pushes nil and an io error "refusing journal 'path': why" with status "unsafe"; returns 2. */
static int appender_refuse(lua_State *L, const char *path, const char *why)
{
    return hc_lua_fail(L, "io", "unsafe", "refusing journal '%s': %s", path, why);
}

/* What a file that is not a regular file is, for messages. */
static const char *file_type(mode_t mode)
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
static int distrust(const struct stat *st, char *why, size_t n)
{
    if (!S_ISREG(st->st_mode))
        snprintf(why, n, "it is %s, not a regular file", file_type(st->st_mode));
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
 * name patients), takes an exclusive lock that is never waited for (status "busy" when another
 * process holds it), and makes a newly created file's directory entry durable.
 * A journal that could hold lines written by someone else is refused before anything is read,
 * written or locked (kind "io", status "unsafe"): a symbolic link (O_NOFOLLOW: never the file
 * at its other end), anything but a regular file (a FIFO or device is not even opened), a file
 * owned by another user than the effective one, or one the group or others may write. The
 * checks are made on the open descriptor, which is the one read (read(), read_line()) and written:
 * nothing opens the path a second time. The directory is not checked: a file that passes was
 * written by this user alone, wherever it is (README, "Migrating an archive"). */
static int l_appender_open(lua_State *L)
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
    luaL_getmetatable(L, APPENDER_MT);
    lua_setmetatable(L, -2);
    /* O_EXCL does not follow a symbolic link either: one at path (dangling or not) is EEXIST. */
    fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0 && errno == EEXIST) {
        created = 0;
        /* Refused by name first, so a FIFO or a device is never opened (opening some has effects);
         * a directory is left to open() (EISDIR). The checks on the descriptor below decide. */
        if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
            snprintf(why, sizeof why, "it is %s, not a regular file%s", file_type(st.st_mode),
                     S_ISLNK(st.st_mode) ? " (name the file itself, if it is yours)" : "");
            return appender_refuse(L, path, why);
        }
        /* O_NONBLOCK: a FIFO swapped in since lstat must not block us (it is refused below). */
        fd = open(path, O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0 && errno == ELOOP)
            return appender_refuse(L, path, "it is a symbolic link, not a regular file");
    }
    if (fd < 0)
        return appender_fail(L, "open", "cannot open journal", path, errno);
    if (fstat(fd, &st) != 0) {
        err = errno;
        close(fd);
        return appender_fail(L, "open", "cannot use journal", path, err);
    }
    if (distrust(&st, why, sizeof why)) {
        close(fd);
        return appender_refuse(L, path, why);
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        err = errno;
        close(fd);
        if (err == EWOULDBLOCK)
            return hc_lua_fail(L, "io", "busy", "journal '%s' is in use by another process", path);
        return appender_fail(L, "lock", "cannot lock journal", path, err);
    }
    if (created && (err = sync_parent(path)) != 0) {
        close(fd);
        return appender_fail(L, "open", "cannot sync the directory of journal", path, err);
    }
    a->fd = fd;
    return 1;
}

/* Checks argument 1 is an open appender; raises otherwise (a programming mistake). */
static hc_appender *appender_check(lua_State *L)
{
    hc_appender *a = (hc_appender *)luaL_checkudata(L, 1, APPENDER_MT);
    if (a->fd < 0)
        luaL_error(L, "attempt to use a closed journal");
    return a;
}

/* a:append(s) -> true, or nil, err. s is written whole and fsynced before this returns; when
 * that fails the file is cut back to its previous length so no half line stays behind. */
static int l_appender_append(lua_State *L)
{
    hc_appender *a = appender_check(L);
    size_t n, off = 0;
    const char *s = luaL_checklstring(L, 2, &n);
    struct stat st;
    int err;
    if (fstat(a->fd, &st) != 0)
        return appender_fail(L, "write", "cannot write journal", a->path, errno);
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
    return appender_fail(L, "write", "cannot write journal", a->path, err);
}

/* Most bytes read() returns, and the longest line read_line() returns: a journal line is under
 * 1 KiB, or a few KiB with a server's long reason; 64 MiB is no line this program wrote. */
#define MAX_READ (1024 * 1024)
#define MAX_LINE (64 * 1024 * 1024)

/* a:read(offset, n) -> up to n (at most 1 MiB) bytes of the journal from offset ("" at its
 * end), or nil, err. Reads through the descriptor the checks of appender() were made on (pread:
 * the append position does not move). */
static int l_appender_read(lua_State *L)
{
    hc_appender *a = appender_check(L);
    lua_Integer off = luaL_checkinteger(L, 2);
    lua_Integer want = luaL_checkinteger(L, 3);
    size_t got = 0;
    char *buf;
    luaL_argcheck(L, off >= 0, 2, "must not be negative");
    luaL_argcheck(L, want >= 0 && want <= MAX_READ, 3, "must be 0 to 1 MiB");
    buf = (char *)lua_newuserdata(L, want > 0 ? (size_t)want : 1); /* owned by Lua */
    while (got < (size_t)want) {
        ssize_t r = pread(a->fd, buf + got, (size_t)want - got, (off_t)off + (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return appender_fail(L, "read", "cannot read journal", a->path, errno);
        if (r == 0)
            break;
        got += (size_t)r;
    }
    lua_pushlstring(L, buf, got);
    return 1;
}

/* a:read_line() -> the next whole line of the journal (with its "\n") and its offset in the
 * file, from the start of the file on; at the end: false, the offset where the last whole line ends, and the number of
 * bytes after it (a torn line); or nil, err. Reads through the checked descriptor, in 64 KiB
 * or larger pieces into a buffer the appender owns, so loading a journal allocates only its
 * lines (as io.lines would). */
static int l_appender_read_line(lua_State *L)
{
    hc_appender *a = appender_check(L);
    for (;;) {
        char *nl = a->rpos < a->rlen ? memchr(a->rbuf + a->rpos, '\n', a->rlen - a->rpos) : NULL;
        ssize_t r;
        if (nl != NULL) {
            size_t n = (size_t)(nl - (a->rbuf + a->rpos)) + 1;
            lua_pushlstring(L, a->rbuf + a->rpos, n);
            lua_pushinteger(L, (lua_Integer)(a->roff - (off_t)(a->rlen - a->rpos)));
            a->rpos += n;
            return 2;
        }
        if (a->rpos > 0) { /* keep the line begun at the front */
            memmove(a->rbuf, a->rbuf + a->rpos, a->rlen - a->rpos);
            a->rlen -= a->rpos;
            a->rpos = 0;
        }
        if (a->rlen == a->rcap) {
            size_t want = a->rcap ? 2 * a->rcap : 64 * 1024;
            char *grown;
            if (a->rcap >= MAX_LINE)
                return appender_fail(L, "read", "cannot read journal (a line longer than 64 MiB)",
                                     a->path, EFBIG);
            grown = realloc(a->rbuf, want);
            if (grown == NULL)
                return appender_fail(L, "read", "cannot read journal", a->path, ENOMEM);
            a->rbuf = grown;
            a->rcap = want;
        }
        r = pread(a->fd, a->rbuf + a->rlen, a->rcap - a->rlen, a->roff);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return appender_fail(L, "read", "cannot read journal", a->path, errno);
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
static int l_appender_truncate(lua_State *L)
{
    hc_appender *a = appender_check(L);
    lua_Integer len = luaL_checkinteger(L, 2);
    luaL_argcheck(L, len >= 0, 2, "must not be negative");
    if (ftruncate(a->fd, (off_t)len) != 0 || fsync(a->fd) != 0)
        return appender_fail(L, "truncate", "cannot truncate journal", a->path, errno);
    lua_pushboolean(L, 1);
    return 1;
}

/* a:close() -> true; releases the lock. Safe to call twice. */
static int l_appender_close(lua_State *L)
{
    hc_appender *a = (hc_appender *)luaL_checkudata(L, 1, APPENDER_MT);
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

static int l_appender_tostring(lua_State *L)
{
    hc_appender *a = (hc_appender *)luaL_checkudata(L, 1, APPENDER_MT);
    lua_pushstring(L, a->fd < 0 ? "healthcare.Appender (closed)" : "healthcare.Appender");
    return 1;
}

/* ---- the index ------------------------------------------------------------------------ */

/* core.journal_index() -> an empty index (hc_jindex.h) owned by Lua (freed by close() or the
 * collector): what the journal keeps of each earlier file in memory, a fixed 40 bytes and a
 * hash slot per distinct path. Raises when memory is missing (as a Lua allocation would). */
static int l_index_new(lua_State *L)
{
    hc_jindex *ix = (hc_jindex *)lua_newuserdata(L, sizeof *ix);
    memset(ix, 0, sizeof *ix);
    luaL_getmetatable(L, INDEX_MT);
    lua_setmetatable(L, -2);
    if (hc_jindex_init(ix) != 0)
        return luaL_error(L, "not enough memory for the journal's index");
    return 1;
}

static hc_jindex *index_check(lua_State *L)
{
    hc_jindex *ix = (hc_jindex *)luaL_checkudata(L, 1, INDEX_MT);
    if (ix->md_ctx == NULL)
        luaL_error(L, "attempt to use a closed journal index");
    return ix;
}

/* The mtime of an entry holds its seconds and nanoseconds in one int64, so that an entry stays
 * 40 bytes: seconds * 2^30 + nanoseconds, or + STAMP_NO_NSEC when the line gave none (older
 * lines: matched by whole seconds). Seconds outside +-2^33 (before 1697, after 2242) are kept as
 * STAMP_NONE, which gives back no mtime, so that no file matches it (it is sent again). */
#define STAMP_NSEC_BITS 30
#define STAMP_NO_NSEC ((1 << STAMP_NSEC_BITS) - 1)
#define STAMP_SECONDS ((int64_t)1 << 33)
#define STAMP_NONE INT64_MIN

static int64_t stamp_of(lua_Integer sec, lua_Integer nsec)
{
    if (sec <= -STAMP_SECONDS || sec >= STAMP_SECONDS)
        return STAMP_NONE;
    return (int64_t)sec * ((int64_t)1 << STAMP_NSEC_BITS) + (int64_t)nsec;
}

/* ix:put(key, size, mtime, offset, code[, nsec]) -> true: key's entry is now these (the latest
 * line wins). size and mtime (seconds) are integers, offset the line's (0 to 2^56), code 0 to
 * 255, nsec the mtime's nanoseconds (0 to 999999999) when known. Raises when memory is
 * missing. */
static int l_index_put(lua_State *L)
{
    hc_jindex *ix = index_check(L);
    size_t n;
    const char *key = luaL_checklstring(L, 2, &n);
    lua_Integer size = luaL_checkinteger(L, 3);
    lua_Integer mtime = luaL_checkinteger(L, 4);
    lua_Integer offset = luaL_checkinteger(L, 5);
    lua_Integer code = luaL_checkinteger(L, 6);
    lua_Integer nsec = luaL_optinteger(L, 7, STAMP_NO_NSEC);
    luaL_argcheck(L, offset >= 0 && (uint64_t)offset < ((uint64_t)1 << 56), 5, "out of range");
    luaL_argcheck(L, code >= 0 && code < HC_JINDEX_CODES, 6, "must be 0 to 255");
    luaL_argcheck(L, lua_isnoneornil(L, 7) || (nsec >= 0 && nsec <= 999999999), 7,
                  "must be 0 to 999999999");
    if (hc_jindex_put(ix, key, n, (int64_t)size, stamp_of(mtime, nsec), (uint64_t)offset,
                      (unsigned)code) != 0)
        return luaL_error(L, "not enough memory for the journal's index (%d paths)", (int)ix->n);
    lua_pushboolean(L, 1);
    return 1;
}

/* ix:get(key) -> code, size, mtime (seconds), offset of key's latest line, and the mtime's
 * nanoseconds when that line gave them; or nil. */
static int l_index_get(lua_State *L)
{
    hc_jindex *ix = index_check(L);
    size_t n;
    const char *key = luaL_checklstring(L, 2, &n);
    const hc_jindex_entry *e = hc_jindex_get(ix, key, n);
    if (e == NULL) {
        lua_pushnil(L);
        return 1;
    }
    int64_t nsec = e->mtime & STAMP_NO_NSEC;
    lua_pushinteger(L, (lua_Integer)hc_jindex_code(e));
    lua_pushinteger(L, (lua_Integer)e->size);
    if (e->mtime == STAMP_NONE)
        lua_pushnil(L);
    else /* an arithmetic shift: floor division, as the stamp was made by multiplying */
        lua_pushinteger(L, (lua_Integer)((e->mtime - nsec) / ((int64_t)1 << STAMP_NSEC_BITS)));
    lua_pushinteger(L, (lua_Integer)hc_jindex_offset(e));
    if (e->mtime == STAMP_NONE || nsec == STAMP_NO_NSEC)
        return 4;
    lua_pushinteger(L, (lua_Integer)nsec);
    return 5;
}

/* ix:counts() -> { [code] = number of distinct paths whose latest outcome has it }. */
static int l_index_counts(lua_State *L)
{
    hc_jindex *ix = index_check(L);
    int code;
    lua_newtable(L);
    for (code = 0; code < HC_JINDEX_CODES; code++) {
        if (ix->counts[code] > 0) {
            lua_pushinteger(L, (lua_Integer)ix->counts[code]);
            lua_rawseti(L, -2, code);
        }
    }
    return 1;
}

/* ix:close() -> true; frees the entries. Safe to call twice. */
static int l_index_close(lua_State *L)
{
    hc_jindex *ix = (hc_jindex *)luaL_checkudata(L, 1, INDEX_MT);
    hc_jindex_free(ix);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_index_tostring(lua_State *L)
{
    hc_jindex *ix = (hc_jindex *)luaL_checkudata(L, 1, INDEX_MT);
    if (ix->md_ctx == NULL)
        lua_pushstring(L, "healthcare.JournalIndex (closed)");
    else
        lua_pushfstring(L, "healthcare.JournalIndex (%d paths)", (int)ix->n);
    return 1;
}

/* ---- registration -------------------------------------------------------------------- */

static const luaL_Reg appender_methods[] = {
    {"append", l_appender_append},
    {"read", l_appender_read},
    {"read_line", l_appender_read_line},
    {"truncate", l_appender_truncate},
    {"close", l_appender_close},
    {NULL, NULL}
};

static const luaL_Reg index_methods[] = {
    {"put", l_index_put},
    {"get", l_index_get},
    {"counts", l_index_counts},
    {"close", l_index_close},
    {NULL, NULL}
};

static const luaL_Reg journal_functions[] = {
    {"appender", l_appender_open},
    {"journal_index", l_index_new},
    {NULL, NULL}
};

/* Adds appender to the module table on top. */
void hc_lua_journal_register(lua_State *L)
{
    hc_lua_newclass(L, APPENDER_MT, appender_methods, l_appender_close, l_appender_tostring);
    hc_lua_newclass(L, INDEX_MT, index_methods, l_index_close, l_index_tostring);
    luaL_setfuncs(L, journal_functions, 0);
}
