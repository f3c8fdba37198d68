/* SPDX-License-Identifier: MIT */
/* Lua binding of hc_file.c: files at paths a user named. `core.write_file` and
 * `core.dir_writable` serve the command's -o; `core.private_mkdir`, `core.private_write` and
 * `core.private_read` the token cache (a 0700 directory, 0600 files written atomically, files
 * read only when no other user can read or own them), `core.trusted_read` the files that hold
 * credentials (key files, an executable's output_file: only when no other user could have
 * written them), which plain Lua cannot do. Failures come
 * back as nil, err (kind "io", status "write", "mkdir", "read", "absent" or "unsafe"); a path
 * that is not a non-empty string without NUL raises. `core.dir_open` holds a folder open for
 * `healthcare watch`: its spool locked for the watcher's life, and files moved, files and folders removed
 * and reason files made relative to folders held open, never through a symbolic link swapped
 * into a path meanwhile. */
#define _DEFAULT_SOURCE /* flock(2), which follows the open file, not the process as fcntl does */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "hc_file.h"
#include "hc_lua.h"

/* The token cache holds a few hundred bytes per entry. */
#define PRIVATE_FILE_CAP (64 * 1024)

/* Argument arg as a path: a non-empty string without NUL; raises otherwise. */
static const char *check_path(lua_State *L, int arg)
{
    size_t n;
    const char *path = luaL_checklstring(L, arg, &n);
    if (n == 0 || memchr(path, '\0', n) != NULL)
        luaL_argerror(L, arg, "must be a non-empty path without NUL");
    return path;
}

/* Pushes nil and an io error "what path: strerror(err)" with status; returns 2. */
static int file_fail(lua_State *L, const char *status, const char *what, const char *path, int err)
{
    return hc_lua_fail(L, "io", status, "%s %s: %s", what, path, strerror(err));
}

/* write_file(path, data) -> true | nil, err (status "write"): data becomes the file at path
 * atomically, through a temporary file next to it (hc_file_replace, mode 0666 less the umask,
 * like any new file); a symbolic link at path is replaced, never followed. */
static int l_file_write_file(lua_State *L)
{
    size_t n;
    const char *path = check_path(L, 1);
    const char *data = luaL_checklstring(L, 2, &n);
    int err = hc_file_replace(path, data, n, 0666);
    if (err != 0)
        return file_fail(L, "write", "cannot write", path, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* dir_writable(dir) -> true | nil, err (status "write"): whether files can be created in dir,
 * checked before a call whose answer goes there. */
static int l_file_dir_writable(lua_State *L)
{
    const char *dir = check_path(L, 1);
    int err = hc_file_dir_writable(dir);
    if (err != 0)
        return file_fail(L, "write", "cannot create files in", dir, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* private_mkdir(path) -> true | nil, err: creates path and its missing parents with mode 0700,
 * and refuses (status "unsafe") a final directory that another user owns or others may write
 * to; any other failure has status "mkdir". */
static int l_file_private_mkdir(lua_State *L)
{
    const char *path = check_path(L, 1);
    size_t failed;
    int err = hc_file_private_mkdir(path, &failed);
    if (err == HC_FILE_UNSAFE)
        return hc_lua_fail(L, "io", "unsafe", "refusing the directory (another user owns it or "
                           "may write to it) %s: %s", path, strerror(EPERM));
    if (err != 0 && failed < strlen(path))
        return hc_lua_fail(L, "io", "mkdir", "cannot create the directory %.*s: %s", (int)failed,
                           path, strerror(err));
    if (err != 0)
        return file_fail(L, "mkdir", "cannot use the directory", path, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* private_write(path, data) -> true | nil, err (status "write"): writes a mode 0600 file next
 * to path, then renames it over path (hc_file_replace), so readers never see half a file and
 * the mode never widens. */
static int l_file_private_write(lua_State *L)
{
    size_t n;
    const char *path = check_path(L, 1);
    const char *data = luaL_checklstring(L, 2, &n);
    int err = hc_file_replace(path, data, n, 0600);
    if (err != 0)
        return file_fail(L, "write", "cannot write", path, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* private_read(path) -> data | nil, err: status "absent" when there is no file, "unsafe" when
 * another user owns it or others may read it (then it is not read), "read" otherwise. */
static int l_file_private_read(lua_State *L)
{
    const char *path = check_path(L, 1);
    char *buf = lua_newuserdata(L, PRIVATE_FILE_CAP); /* owned by Lua */
    size_t len;
    int err = hc_file_private_read(path, buf, PRIVATE_FILE_CAP, &len);
    if (err == HC_FILE_UNSAFE)
        return file_fail(L, "unsafe", "refusing to read (not a private file of this user)", path,
                         EPERM);
    if (err == EFBIG)
        return file_fail(L, "read", "refusing to read", path, err);
    if (err != 0)
        return file_fail(L, err == ENOENT ? "absent" : "read", "cannot read", path, err);
    lua_pushlstring(L, buf, len);
    return 1;
}

/* What hc_file_trusted_open found wrong, as the end of "refusing to read PATH: ..."; for a
 * directory, with the directory (dir) named. Pushed on the Lua stack. */
static void push_distrust(lua_State *L, enum hc_file_distrust why, const char *dir)
{
    switch (why) {
    case HC_FILE_LINK_OWNER:
        lua_pushstring(L, "it is reached through a symbolic link that another user owns");
        return;
    case HC_FILE_OWNER:
        lua_pushstring(L, "another user owns it");
        return;
    case HC_FILE_WRITABLE:
        lua_pushstring(L, "group or others may write to it");
        return;
    case HC_FILE_NOT_REGULAR:
        lua_pushstring(L, "it is not a regular file");
        return;
    case HC_FILE_DIR_OWNER:
        lua_pushfstring(L, "another user owns the directory '%s' on its way, and could replace it", dir);
        return;
    case HC_FILE_DIR_WRITABLE:
        lua_pushfstring(L, "group or others may write to the directory '%s' on its way (not "
                        "sticky), and could replace it", dir);
        return;
    }
    lua_pushstring(L, "it cannot be trusted");
}

/* trusted_read(path, cap) -> data | nil, err: the whole file at path, when it may be trusted with
 * credentials (hc_file_trusted_open: this user's or root's, written by no one else, every link on
 * the way this user's or root's, and so every directory holding them, up to the user's home
 * directory) and holds at most cap bytes. err.status: "absent" (no file), "unsafe" (err.reason
 * says why, without the path; err.directory names a directory at fault), "large" (more than cap
 * bytes), "read". */
static int l_file_trusted_read(lua_State *L)
{
    const char *path = check_path(L, 1);
    lua_Integer cap = luaL_checkinteger(L, 2);
    enum hc_file_distrust why = HC_FILE_NOT_REGULAR;
    luaL_Buffer b;
    char chunk[8192], dir[PATH_MAX];
    size_t total = 0;
    int fd, err;
    luaL_argcheck(L, cap >= 0, 2, "must be >= 0");
    err = hc_file_trusted_open(path, NULL, &fd, &why, dir, sizeof dir);
    if (err == HC_FILE_UNSAFE) {
        push_distrust(L, why, dir);
        hc_lua_fail(L, "io", "unsafe", "refusing to read %s: %s", path, lua_tostring(L, -1));
        lua_pushvalue(L, -3);
        lua_setfield(L, -2, "reason");
        if (why == HC_FILE_DIR_OWNER || why == HC_FILE_DIR_WRITABLE) {
            lua_pushstring(L, dir);
            lua_setfield(L, -2, "directory");
        }
        return 2;
    }
    if (err != 0)
        return file_fail(L, err == ENOENT ? "absent" : "read", "cannot read", path, err);
    luaL_buffinit(L, &b);
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            err = r < 0 ? errno : 0;
            break;
        }
        total += (size_t)r;
        if (total > (size_t)cap) {
            err = EFBIG;
            break;
        }
        luaL_addlstring(&b, chunk, (size_t)r);
    }
    close(fd);
    if (err == EFBIG)
        return hc_lua_fail(L, "io", "large", "refusing to read %s: larger than %lld bytes", path,
                           (long long)cap);
    if (err != 0)
        return file_fail(L, "read", "cannot read", path, err);
    luaL_pushresult(&b);
    return 1;
}

/* The name lfs.attributes gives a file's type. */
static const char *mode_name(mode_t m)
{
    if (S_ISREG(m))
        return "file";
    if (S_ISDIR(m))
        return "directory";
    if (S_ISLNK(m))
        return "link";
    if (S_ISSOCK(m))
        return "socket";
    if (S_ISFIFO(m))
        return "named pipe";
    if (S_ISCHR(m))
        return "char device";
    if (S_ISBLK(m))
        return "block device";
    return "other";
}

/* file_stat(path, follow) -> { mode, size, modification, mtime_nsec, change, dev, ino } | nil, err
 * (status "read"): lfs.attributes' fields of what path names (lfs.symlinkattributes' when follow is
 * false) and the nanoseconds of the mtime, which lfs does not give, from one stat: the journal tells
 * apart two versions of a file written in the same second by them, and a walk of a million files
 * stats each once. */
static int l_file_stat(lua_State *L)
{
    const char *path = check_path(L, 1);
    int follow = lua_isnoneornil(L, 2) || lua_toboolean(L, 2);
    struct stat st;
    if ((follow ? stat(path, &st) : lstat(path, &st)) != 0)
        return file_fail(L, "read", "cannot stat", path, errno);
    lua_createtable(L, 0, 7);
    lua_pushstring(L, mode_name(st.st_mode));
    lua_setfield(L, -2, "mode");
    lua_pushinteger(L, (lua_Integer)st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushinteger(L, (lua_Integer)st.st_mtim.tv_sec);
    lua_setfield(L, -2, "modification");
    lua_pushinteger(L, (lua_Integer)st.st_mtim.tv_nsec);
    lua_setfield(L, -2, "mtime_nsec");
    lua_pushinteger(L, (lua_Integer)st.st_ctim.tv_sec);
    lua_setfield(L, -2, "change");
    lua_pushinteger(L, (lua_Integer)st.st_dev);
    lua_setfield(L, -2, "dev");
    lua_pushinteger(L, (lua_Integer)st.st_ino);
    lua_setfield(L, -2, "ino");
    return 1;
}

/* ---- folders held open -------------------------------------------------------------------- */

#define DIR_MT "healthcare.Dir"

typedef struct dir_handle {
    int fd;       /* -1 when closed */
    char path[1]; /* as opened, for messages (allocated longer) */
} dir_handle;

static dir_handle *dir_check(lua_State *L, int arg)
{
    dir_handle *h = (dir_handle *)luaL_checkudata(L, arg, DIR_MT);
    if (h->fd < 0)
        luaL_error(L, "attempt to use a closed folder handle");
    return h;
}

/* Argument arg as a path below a folder: a string without NUL (may be empty). */
static const char *check_rel(lua_State *L, int arg)
{
    size_t n;
    const char *rel = luaL_checklstring(L, arg, &n);
    if (memchr(rel, '\0', n) != NULL)
        luaL_argerror(L, arg, "must be a path without NUL");
    return rel;
}

/* A failure to walk rel below h: a symbolic link (or not a folder) on the way is status "link",
 * "<folder>/<the prefix that failed> is not a folder: not followed"; others status `status`. */
static int walk_fail(lua_State *L, const dir_handle *h, const char *rel, size_t failed, int err,
                     const char *status)
{
    if (err == ELOOP || err == ENOTDIR)
        return hc_lua_fail(L, "io", "link", "%s/%.*s is not a folder: not followed", h->path,
                           (int)failed, rel);
    return hc_lua_fail(L, "io", status, "cannot open %s/%.*s: %s", h->path, (int)failed, rel,
                       strerror(err));
}

/* Opens the folder of rel (argument arg: all but its last name) below h: 0 with *fd, or pushes
 * the failure (nil, err) and returns 2 with *fd -1. *name is set to rel's last name. */
static int open_parent(lua_State *L, const dir_handle *h, int arg, int create, int *fd,
                       const char **name, const char *status)
{
    const char *rel = check_rel(L, arg);
    const char *slash = strrchr(rel, '/');
    size_t failed = 0, n = slash ? (size_t)(slash - rel) : 0;
    int err;
    *fd = -1;
    *name = slash ? slash + 1 : rel;
    if (**name == '\0') {
        hc_lua_argerror(L, arg, "must end with a name");
        return 2; /* (not reached: raises) */
    }
    lua_pushlstring(L, rel, n); /* the folder part, NUL-terminated */
    err = hc_file_open_dir_below(h->fd, lua_tostring(L, -1), create, fd, &failed);
    lua_pop(L, 1);
    if (err != 0 || *fd < 0) {
        walk_fail(L, h, rel, failed, err != 0 ? err : EBADF, status);
        return 2;
    }
    return 0;
}

/* dir_open(path[, follow]) -> a folder handle, or nil, err (status "read"; "link" when follow
 * is false and path is a symbolic link). path itself is followed unless follow is false: the
 * caller named it. */
static int l_file_dir_open(lua_State *L)
{
    size_t n;
    const char *path = check_path(L, 1);
    int follow = lua_isnoneornil(L, 2) || lua_toboolean(L, 2);
    dir_handle *h;
    n = strlen(path);
    h = (dir_handle *)lua_newuserdata(L, sizeof *h + n);
    h->fd = -1;
    memcpy(h->path, path, n + 1);
    luaL_getmetatable(L, DIR_MT);
    lua_setmetatable(L, -2);
    h->fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
    if (h->fd < 0 && !follow && (errno == ELOOP || errno == ENOTDIR))
        return hc_lua_fail(L, "io", "link", "%s is not a folder: not followed", path);
    if (h->fd < 0)
        return file_fail(L, "read", "cannot open folder", path, errno);
    return 1;
}

/* h:lock() -> true, or nil, err (status "busy": another open file holds it, in this process or
 * another; "lock": the file system has no such locks, e.g. NFS for a folder). An flock on the
 * folder itself, held until h is closed: no lock file another user could make or link first. */
static int l_dir_lock(lua_State *L)
{
    dir_handle *h = dir_check(L, 1);
    if (flock(h->fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            return hc_lua_fail(L, "io", "busy", "%s is locked by another process", h->path);
        return file_fail(L, "lock", "cannot lock", h->path, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* h:stat() -> { dev, ino } of the folder held (wherever it was moved since). */
static int l_dir_stat(lua_State *L)
{
    dir_handle *h = dir_check(L, 1);
    struct stat st;
    if (fstat(h->fd, &st) != 0)
        return file_fail(L, "read", "cannot stat", h->path, errno);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)st.st_dev);
    lua_setfield(L, -2, "dev");
    lua_pushinteger(L, (lua_Integer)st.st_ino);
    lua_setfield(L, -2, "ino");
    return 1;
}

/* h:move(rel, to, to_rel) -> the path below `to` it now has (to_rel, or to_rel.1, .2, ... when
 * the name or its .reason is taken), or nil, err (status "link": a symbolic link or non-folder on
 * either way, not followed; "move" otherwise). The file rel below h goes into the folder of to_rel
 * below the handle to (its missing folders made), never replacing a file, and each folder on
 * both ways is opened without following links: a link swapped in at any moment cannot send it
 * elsewhere. */
static int l_dir_move(lua_State *L)
{
    dir_handle *h = dir_check(L, 1);
    const char *rel = check_rel(L, 2);
    dir_handle *to = dir_check(L, 3);
    const char *to_rel = check_rel(L, 4);
    const char *name, *to_name;
    int from_fd, to_fd, err;
    unsigned long suffix = 0;
    if (open_parent(L, h, 2, 0, &from_fd, &name, "move") != 0)
        return 2;
    if (open_parent(L, to, 4, 1, &to_fd, &to_name, "move") != 0) {
        close(from_fd);
        return 2;
    }
    err = hc_file_move_new(from_fd, name, to_fd, to_name, &suffix);
    close(from_fd);
    close(to_fd);
    if (err != 0)
        return hc_lua_fail(L, "io", err == ELOOP ? "link" : "move", "cannot move %s/%s: %s",
                           h->path, rel, strerror(err));
    if (suffix == 0)
        lua_pushstring(L, to_rel);
    else
        lua_pushfstring(L, "%s.%d", to_rel, (int)suffix);
    return 1;
}

/* h:remove(rel[, folder]) -> true, or nil, err (status "remove": gone, a folder not empty, ...;
 * "link"): removes the file rel below h, or with folder the empty folder rel; neither it nor a
 * folder on the way is a link followed (a link at rel itself is not a folder: ENOTDIR). */
static int l_dir_remove(lua_State *L)
{
    dir_handle *h = dir_check(L, 1);
    const char *rel = check_rel(L, 2);
    int folder = lua_toboolean(L, 3);
    const char *name;
    int fd, err = 0;
    if (open_parent(L, h, 2, 0, &fd, &name, "remove") != 0)
        return 2;
    if (unlinkat(fd, name, folder ? AT_REMOVEDIR : 0) != 0)
        err = errno;
    close(fd);
    if (err != 0)
        return hc_lua_fail(L, "io", "remove", "cannot remove %s/%s: %s", h->path, rel,
                           strerror(err));
    lua_pushboolean(L, 1);
    return 1;
}

/* h:create(rel, data) -> true, or nil, err (status "write"; "link"): a new file rel below h
 * (O_EXCL: never one there already, nor through a link), mode 0666 less the umask, holding data. */
static int l_dir_create(lua_State *L)
{
    dir_handle *h = dir_check(L, 1);
    const char *rel = check_rel(L, 2);
    size_t n, off = 0;
    const char *data = luaL_checklstring(L, 3, &n);
    const char *name;
    int dfd, fd, err = 0;
    if (open_parent(L, h, 2, 0, &dfd, &name, "write") != 0)
        return 2;
    fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0666);
    if (fd < 0)
        err = errno;
    close(dfd);
    while (fd >= 0 && err == 0 && off < n) {
        ssize_t w = write(fd, data + off, n - off);
        if (w < 0 && errno != EINTR)
            err = errno;
        else if (w == 0)
            err = EIO;
        else if (w > 0)
            off += (size_t)w;
    }
    if (fd >= 0 && close(fd) != 0 && err == 0)
        err = errno;
    if (err != 0)
        return hc_lua_fail(L, "io", "write", "cannot write %s/%s: %s", h->path, rel, strerror(err));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_dir_close(lua_State *L)
{
    dir_handle *h = (dir_handle *)luaL_checkudata(L, 1, DIR_MT);
    if (h->fd >= 0) {
        close(h->fd); /* releases the lock */
        h->fd = -1;
    }
    return 0;
}

static int l_dir_tostring(lua_State *L)
{
    dir_handle *h = (dir_handle *)luaL_checkudata(L, 1, DIR_MT);
    lua_pushfstring(L, "healthcare.Dir %s%s", h->path, h->fd < 0 ? " (closed)" : "");
    return 1;
}

static const luaL_Reg dir_methods[] = {
    {"lock", l_dir_lock},
    {"stat", l_dir_stat},
    {"move", l_dir_move},
    {"remove", l_dir_remove},
    {"create", l_dir_create},
    {"close", l_dir_close},
    {NULL, NULL}
};

static const luaL_Reg file_functions[] = {
    {"dir_open", l_file_dir_open},
    {"file_stat", l_file_stat},
    {"write_file", l_file_write_file},
    {"dir_writable", l_file_dir_writable},
    {"private_mkdir", l_file_private_mkdir},
    {"private_write", l_file_private_write},
    {"private_read", l_file_private_read},
    {"trusted_read", l_file_trusted_read},
    {NULL, NULL}
};

/* Adds write_file, dir_writable, file_stat, trusted_read, dir_open and the private_* functions
 * to the module table on top. */
void hc_lua_file_register(lua_State *L)
{
    hc_lua_newclass(L, DIR_MT, dir_methods, l_dir_close, l_dir_tostring);
    luaL_setfuncs(L, file_functions, 0);
}
