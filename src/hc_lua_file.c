/* SPDX-License-Identifier: MIT */
/* Lua binding of hc_file.c: files at paths a user named. `core.write_file` and
 * `core.dir_writable` serve the command's -o; `core.private_mkdir`, `core.private_write` and
 * `core.private_read` the token cache (a 0700 directory, 0600 files written atomically, files
 * read only when no other user can read or own them), `core.trusted_read` the files that hold
 * credentials (key files, an executable's output_file: only when no other user could have
 * written them), which plain Lua cannot do. Failures come
 * back as nil, err (kind "io", status "write", "mkdir", "read", "absent" or "unsafe"); a path
 * that is not a non-empty string without NUL raises. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>
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

static const luaL_Reg file_functions[] = {
    {"file_stat", l_file_stat},
    {"write_file", l_file_write_file},
    {"dir_writable", l_file_dir_writable},
    {"private_mkdir", l_file_private_mkdir},
    {"private_write", l_file_private_write},
    {"private_read", l_file_private_read},
    {"trusted_read", l_file_trusted_read},
    {NULL, NULL}
};

/* Adds write_file, dir_writable, file_stat, trusted_read and the private_* functions to the
 * module table on top. */
void hc_lua_file_register(lua_State *L)
{
    luaL_setfuncs(L, file_functions, 0);
}
