/* SPDX-License-Identifier: MIT */
/* Files at a path someone named (the command's -o, the token cache). Written whole: the bytes go
 * to a new temporary file next to the path, which is then renamed over it. A reader never sees
 * half a file, a failure leaves what was at the path as it was, and nothing is ever written
 * through a symbolic link planted at the path (the link itself is replaced). Private files (the
 * token cache) live in a directory only this user may write, and are read only when only this
 * user could have written or read them. Plain C: no Lua (hc_lua_file.c is the binding). */
#ifndef HC_FILE_H
#define HC_FILE_H

#include <stddef.h>
#include <sys/types.h>

/* Writes n bytes of data to "<path>.tmp-<16 hex digits>" (created with O_EXCL and O_NOFOLLOW,
 * mode `mode` less the umask), fsyncs it and renames it over path. SIGINT, SIGTERM, SIGHUP and
 * SIGQUIT are held back meanwhile (delivered when this returns), so an interrupt cannot leave
 * the temporary file behind. Returns 0, or an errno value with the temporary file removed and
 * path untouched. data is only read; nothing is allocated that outlives the call. */
int hc_file_replace(const char *path, const void *data, size_t n, mode_t mode);

/* Creates a new file "<prefix><16 hex digits>", the digits random (OpenSSL's generator, so another
 * user cannot guess the name; O_EXCL makes it safe anyway), opened for writing with O_EXCL,
 * O_NOFOLLOW and O_CLOEXEC, mode `mode` less the umask: the one way the module names a temporary
 * file (hc_file_replace, a transfer's sink). Returns the descriptor and sets *path to the name
 * (malloc'd: the caller's to free); or -1 with errno set and *path NULL. prefix is only read. */
int hc_file_create_temp(const char *prefix, mode_t mode, char **path);

/* Whether this process (its effective user) may create files in the directory dir: 0, or an
 * errno value (ENOENT, ENOTDIR, EACCES, EROFS, ...). */
int hc_file_dir_writable(const char *dir);

/* What the private-file functions return when the file or directory is there but cannot be
 * trusted (another user owns it, or others may write to it or read it): not an errno value. */
#define HC_FILE_UNSAFE (-1)

/* Creates the directory path and its missing parents with mode 0700 (less the umask), then
 * checks path: a directory owned by the effective user that neither group nor others may write.
 * Returns 0, HC_FILE_UNSAFE, or an errno value; *failed is then the length of the prefix of path
 * that failed (a parent that could not be made, or path itself). path is only read. */
int hc_file_private_mkdir(const char *path, size_t *failed);

/* Reads the file at path whole into buf (cap bytes, owned by the caller), *len its size; the
 * file is opened once (O_NOFOLLOW: never through a symbolic link) and read only when it is a
 * regular file of the effective user that group and others can neither read nor write.
 * Returns 0, HC_FILE_UNSAFE, EFBIG (larger than cap), or an errno value (ENOENT: no file). */
int hc_file_private_read(const char *path, char *buf, size_t cap, size_t *len);

/* Why a file that hc_file_trusted_open refuses (HC_FILE_UNSAFE) cannot be trusted. */
enum hc_file_distrust {
    HC_FILE_LINK_OWNER = 1, /* a symbolic link on the way is another user's */
    HC_FILE_OWNER,          /* the file is another user's */
    HC_FILE_WRITABLE,       /* others, or a group with other members, may write to it */
    HC_FILE_NOT_REGULAR,    /* a directory, FIFO, device, ... */
    HC_FILE_DIR_OWNER,      /* a directory holding it or a link on the way is another user's */
    HC_FILE_DIR_WRITABLE    /* ... or others may write to it, and it is not sticky */
};

/* Opens for reading a file that holds credentials (a key file, an executable's output_file), as
 * trusted as the user who named it: a regular file of the effective user or of root that neither
 * others nor a group with members other than its owner may write (a user private group may), and
 * when path is a symbolic link (or a chain of them: users keep keys behind links) every link is
 * the effective user's or root's. The directories that hold the file and each link, walked up
 * from their canonical path as OpenSSH's safe_path does, must be the effective user's or root's
 * and, unless sticky (as /tmp, where others cannot rename or remove what is not theirs), not
 * writable by others (the same group rule): a directory others may write to lets them swap the
 * file between runs. The walk stops after checking `home` (canonical; NULL: the effective user's
 * home directory from the password database, as ssh) or at "/". The final file is opened with
 * O_NOFOLLOW and checked on its descriptor. Returns 0 with *fd open (the caller's to close);
 * HC_FILE_UNSAFE with *why set, and for HC_FILE_DIR_* the canonical directory in dir (dir_size
 * bytes, NUL-terminated, cut if longer); or an errno value (ENOENT: no file). path is only read. */
int hc_file_trusted_open(const char *path, const char *home, int *fd, enum hc_file_distrust *why,
                         char *dir, size_t dir_size);

/* Opens the directory rel below the directory dirfd (a path of names split by "/", "" for dirfd
 * itself; "." and ".." refused with EINVAL), each component with O_NOFOLLOW and O_DIRECTORY: a
 * symbolic link on the way is never followed (ELOOP or ENOTDIR), whatever is swapped in while
 * this walks. With create, a missing component is made (mode 0777 less the umask). Returns 0 with
 * *fd open (the caller's to close), or an errno value with *failed the length of the prefix of
 * rel that failed. rel is only read. */
int hc_file_open_dir_below(int dirfd, const char *rel, int create, int *fd, size_t *failed);

/* How many names hc_file_move_new tries (name, name.1, ...) before giving up with EEXIST. */
#define HC_FILE_MOVE_TRIES 100000UL

/* Moves from_name (a name in the directory from_dir) into the directory to_dir as name, or
 * name.1, name.2, ... the first such that neither it nor it + ".reason" exists there, never
 * replacing a file (renameat2 RENAME_NOREPLACE, else link and unlink). Both sides are named
 * relative to directories held open, so no symbolic link swapped into a path can redirect it.
 * Returns 0 with *suffix the number added (0: none), or an errno value. */
int hc_file_move_new(int from_dir, const char *from_name, int to_dir, const char *name,
                     unsigned long *suffix);

#endif
