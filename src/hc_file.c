/* SPDX-License-Identifier: MIT */
/* Files at a path someone named (hc_file.h): written atomically and never through a symbolic
 * link, private directories and files for the token cache. Used by the command's -o
 * (core.write_file) and the token cache (core.private_*, hc_lua_file.c). The name of the temporary
 * file is random (OpenSSL's CSPRNG, as every other random name of the module), so another user
 * cannot guess it; O_EXCL makes it safe anyway. */
#define _GNU_SOURCE /* faccessat's AT_EACCESS, renameat2's RENAME_NOREPLACE (glibc 2.28) */
#include "hc_file.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "hc_buf.h"

/* The signals whose default action ends the process: held back while a temporary file exists. */
static void hold_signals(sigset_t *saved)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGQUIT);
    sigprocmask(SIG_BLOCK, &set, saved);
}

#if defined(__GNUC__)
#  define THREAD_LOCAL __thread
#else
#  define THREAD_LOCAL
#endif

/* Random bytes for names, taken from RAND_bytes a batch at a time: one call per name cost the
 * DRBG and its fork check (a getpid) per file, and a retrieve makes a file per instance. fresh:
 * refill first (after a clash: a forked child shares the parent's batch until then). */
static THREAD_LOCAL unsigned char name_pool[512];
static THREAD_LOCAL size_t name_pool_left;

static int name_random(unsigned char *out, size_t n, int fresh)
{
    if (fresh || name_pool_left < n) {
        if (RAND_bytes(name_pool, (int)sizeof name_pool) != 1)
            return -1;
        name_pool_left = sizeof name_pool;
    }
    memcpy(out, name_pool + (sizeof name_pool - name_pool_left), n);
    name_pool_left -= n;
    return 0;
}

int hc_file_create_temp(const char *prefix, mode_t mode, char **path)
{
    enum { RANDOM_BYTES = 8 };
    size_t plen = strlen(prefix);
    unsigned char rnd[RANDOM_BYTES];
    char *name = malloc(plen + 2 * RANDOM_BYTES + 1); /* *path, or freed here */
    int tries, fd = -1;
    *path = NULL;
    if (name == NULL) {
        errno = ENOMEM;
        return -1;
    }
    memcpy(name, prefix, plen);
    name[plen + 2 * RANDOM_BYTES] = '\0';
    /* Another file of the same name is a 2^-64 chance: a few tries cover a clash, not an attacker. */
    for (tries = 0; tries < 4 && fd < 0; tries++) {
        if (name_random(rnd, sizeof rnd, tries > 0) != 0) {
            errno = EIO;
            break;
        }
        hc_buf_hex(rnd, sizeof rnd, name + plen);
        fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0) {
        int e = errno;
        free(name);
        errno = e;
        return -1;
    }
    *path = name;
    return fd;
}

int hc_file_replace(const char *path, const void *data, size_t n, mode_t mode)
{
    const unsigned char *p = data;
    size_t plen = strlen(path);
    char *prefix, *tmp = NULL;
    sigset_t saved;
    int fd, err = 0;
    if (plen == 0)
        return ENOENT;
    prefix = malloc(plen + sizeof ".tmp-"); /* freed below */
    if (prefix == NULL)
        return ENOMEM;
    memcpy(prefix, path, plen);
    memcpy(prefix + plen, ".tmp-", sizeof ".tmp-");
    hold_signals(&saved);
    fd = hc_file_create_temp(prefix, mode, &tmp); /* tmp: freed below */
    free(prefix);
    if (fd < 0) {
        err = errno;
        goto done;
    }
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            err = w < 0 ? errno : EIO;
            break;
        }
        p += w;
        n -= (size_t)w;
    }
    /* fsync: after a crash the path holds the old file or the whole new one, never an empty one */
    if (err == 0 && fsync(fd) != 0)
        err = errno;
    if (close(fd) != 0 && err == 0)
        err = errno;
    if (err == 0 && rename(tmp, path) != 0)
        err = errno;
    if (err != 0)
        unlink(tmp);
done:
    free(tmp);
    sigprocmask(SIG_SETMASK, &saved, NULL);
    return err;
}

int hc_file_dir_writable(const char *dir)
{
    return faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) == 0 ? 0 : errno;
}

int hc_file_private_mkdir(const char *path, size_t *failed)
{
    size_t n = strlen(path), i;
    struct stat st;
    char *copy;
    *failed = n;
    if (n == 0)
        return ENOENT;
    copy = malloc(n + 1); /* freed below */
    if (copy == NULL)
        return ENOMEM;
    memcpy(copy, path, n + 1);
    for (i = 1; i <= n; i++) {
        if (copy[i] == '/' || copy[i] == '\0') {
            char saved = copy[i];
            copy[i] = '\0';
            if (mkdir(copy, 0700) != 0 && errno != EEXIST) {
                int err = errno;
                free(copy);
                *failed = i;
                return err;
            }
            copy[i] = saved;
        }
    }
    free(copy);
    if (stat(path, &st) != 0)
        return errno;
    if (!S_ISDIR(st.st_mode))
        return ENOTDIR;
    if (st.st_uid != geteuid() || (st.st_mode & 022) != 0)
        return HC_FILE_UNSAFE;
    return 0;
}

int hc_file_private_read(const char *path, char *buf, size_t cap, size_t *len)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    int err = 0;
    *len = 0;
    if (fd < 0)
        return errno;
    if (fstat(fd, &st) != 0)
        err = errno;
    else if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0)
        err = HC_FILE_UNSAFE;
    else if (st.st_size < 0 || (uint64_t)st.st_size > (uint64_t)cap)
        err = EFBIG;
    while (err == 0 && *len < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + *len, (size_t)st.st_size - *len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            err = errno;
        if (r <= 0)
            break; /* a file that shrank meanwhile: what was there */
        *len += (size_t)r;
    }
    close(fd);
    return err;
}

/* Files of root are trusted: root could change any file anyway (and nginx's master reads its keys
 * as root). */
static int trusted_owner(uid_t uid)
{
    return uid == geteuid() || uid == 0;
}

/* Whether the group of a group-writable file lets nobody but its owner write: a user private
 * group (Debian's and Ubuntu's default, with umask 002), named as its owner, the owner's primary
 * group, no other member listed. The same exception as Debian's OpenSSH for its key files. */
static int private_group(const struct stat *st)
{
    struct passwd *pw = getpwuid(st->st_uid);
    struct group *gr;
    char **m;
    if (pw == NULL || pw->pw_gid != st->st_gid)
        return 0;
    gr = getgrgid(st->st_gid);
    if (gr == NULL || strcmp(gr->gr_name, pw->pw_name) != 0)
        return 0;
    for (m = gr->gr_mem; *m != NULL; m++)
        if (strcmp(*m, pw->pw_name) != 0)
            return 0;
    return 1;
}

/* The next path of a symbolic link chain: the link at cur (size PATH_MAX) is replaced by its
 * target, a relative target taken from the link's directory. Returns 0 or an errno value. */
static int follow_link(char *cur)
{
    char target[PATH_MAX];
    ssize_t n = readlink(cur, target, sizeof target - 1);
    char *slash;
    size_t dir;
    if (n < 0)
        return errno;
    target[n] = '\0';
    if (target[0] == '/') {
        memcpy(cur, target, (size_t)n + 1);
        return 0;
    }
    slash = strrchr(cur, '/');
    dir = slash == NULL ? 0 : (size_t)(slash - cur) + 1;
    if (dir + (size_t)n + 1 > PATH_MAX)
        return ENAMETOOLONG;
    memcpy(cur + dir, target, (size_t)n + 1);
    return 0;
}

/* Whether someone other than the owner may write to what st describes: others, or a group with
 * other members (private_group). */
static int others_may_write(const struct stat *st)
{
    return (st->st_mode & 002) != 0 || ((st->st_mode & 020) != 0 && !private_group(st));
}

/* The effective user's home directory, canonical, into home (PATH_MAX bytes); "" when the
 * password database has none or it does not resolve (then the walk goes up to "/"). */
static void user_home(char *home)
{
    struct passwd pw, *found = NULL;
    char buf[4096];
    home[0] = '\0';
    if (getpwuid_r(geteuid(), &pw, buf, sizeof buf, &found) != 0 || found == NULL
        || pw.pw_dir == NULL || realpath(pw.pw_dir, home) == NULL)
        home[0] = '\0';
}

/* OpenSSH's safe_path for the directories holding entry (a path whose last component is the
 * file or a link): from the canonical directory of entry up to "/", or to home once it is
 * checked, each must be the effective user's or root's and, unless sticky, not writable by
 * others. Returns 0, HC_FILE_UNSAFE with *why and dir set (as hc_file_trusted_open), or an errno
 * value. */
static int check_dirs(const char *entry, const char *home, enum hc_file_distrust *why, char *dir,
                      size_t dir_size)
{
    char named[PATH_MAX], canon[PATH_MAX];
    const char *slash = strrchr(entry, '/');
    struct stat st;
    if (slash == NULL)
        memcpy(named, ".", 2);
    else if (slash == entry)
        memcpy(named, "/", 2);
    else {
        memcpy(named, entry, (size_t)(slash - entry)); /* entry is shorter than PATH_MAX */
        named[slash - entry] = '\0';
    }
    if (realpath(named, canon) == NULL)
        return errno;
    for (;;) {
        char *last;
        if (stat(canon, &st) != 0)
            return errno;
        if (!trusted_owner(st.st_uid) || ((st.st_mode & S_ISVTX) == 0 && others_may_write(&st))) {
            *why = trusted_owner(st.st_uid) ? HC_FILE_DIR_WRITABLE : HC_FILE_DIR_OWNER;
            if (dir_size > 0)
                snprintf(dir, dir_size, "%s", canon);
            return HC_FILE_UNSAFE;
        }
        if (strcmp(canon, "/") == 0 || (home[0] != '\0' && strcmp(canon, home) == 0))
            return 0;
        last = strrchr(canon, '/'); /* canonical: absolute, no trailing slash */
        if (last == canon)
            last[1] = '\0';
        else
            *last = '\0';
    }
}

int hc_file_trusted_open(const char *path, const char *home, int *fdp, enum hc_file_distrust *why,
                         char *dir, size_t dir_size)
{
    enum { MAX_LINKS = 40 }; /* the kernel's own limit */
    char cur[PATH_MAX], own_home[PATH_MAX];
    struct stat st;
    int hops, fd, err;
    *fdp = -1;
    if (dir_size > 0)
        dir[0] = '\0';
    if (strlen(path) >= sizeof cur)
        return ENAMETOOLONG;
    if (home == NULL) {
        user_home(own_home);
        home = own_home;
    }
    memcpy(cur, path, strlen(path) + 1);
    /* The links are walked here, not by open(): each one's owner is checked (another user's link
     * could point anywhere, and a link in a sticky directory can be swapped by its owner), and
     * the directories holding it (where others may write, they could swap the link). */
    for (hops = 0;; hops++) {
        if (lstat(cur, &st) != 0)
            return errno;
        if (!S_ISLNK(st.st_mode))
            break;
        if (!trusted_owner(st.st_uid)) {
            *why = HC_FILE_LINK_OWNER;
            return HC_FILE_UNSAFE;
        }
        if ((err = check_dirs(cur, home, why, dir, dir_size)) != 0)
            return err;
        if (hops == MAX_LINKS)
            return ELOOP;
        if ((err = follow_link(cur)) != 0)
            return err;
    }
    /* O_NOFOLLOW: a link put there since lstat is refused (ELOOP), not followed. */
    fd = open(cur, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return errno;
    if (fstat(fd, &st) != 0) {
        err = errno;
        close(fd);
        return err;
    }
    err = HC_FILE_UNSAFE;
    if (!S_ISREG(st.st_mode))
        *why = HC_FILE_NOT_REGULAR;
    else if (!trusted_owner(st.st_uid))
        *why = HC_FILE_OWNER;
    else if (others_may_write(&st))
        *why = HC_FILE_WRITABLE;
    else if ((err = check_dirs(cur, home, why, dir, dir_size)) == 0) {
        *fdp = fd;
        return 0;
    }
    close(fd);
    return err;
}

/* ---- below a directory held open ------------------------------------------------------------ */

int hc_file_open_dir_below(int dirfd, const char *rel, int create, int *fd, size_t *failed)
{
    const char *p = rel;
    int cur = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    *fd = -1;
    *failed = 0;
    if (cur < 0)
        return errno;
    while (*p != '\0') {
        char name[NAME_MAX + 1];
        size_t n = strcspn(p, "/");
        int next, err;
        if (n == 0) {
            p++;
            continue;
        }
        if (n > NAME_MAX || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) {
            close(cur);
            *failed = (size_t)(p - rel) + n;
            return n > NAME_MAX ? ENAMETOOLONG : EINVAL;
        }
        memcpy(name, p, n);
        name[n] = '\0';
        next = openat(cur, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0 && errno == ENOENT && create) {
            if (mkdirat(cur, name, 0777) != 0 && errno != EEXIST) {
                err = errno;
                close(cur);
                *failed = (size_t)(p - rel) + n;
                return err;
            }
            next = openat(cur, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        err = errno;
        close(cur);
        if (next < 0) {
            *failed = (size_t)(p - rel) + n;
            return err;
        }
        cur = next;
        p += n;
    }
    *fd = cur;
    return 0;
}

/* Names from_name (in from_dir) to_name (in to_dir) unless to_name exists: renameat2's
 * RENAME_NOREPLACE, or on a file system without it a hard link, which never replaces either.
 * Returns 0 or an errno value (EEXIST: the name is taken). */
static int rename_noreplace_at(int from_dir, const char *from_name, int to_dir, const char *to_name)
{
#ifdef RENAME_NOREPLACE
    if (renameat2(from_dir, from_name, to_dir, to_name, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return errno;
#endif
    if (linkat(from_dir, from_name, to_dir, to_name, 0) != 0)
        return errno;
    if (unlinkat(from_dir, from_name, 0) != 0) {
        int e = errno;
        (void)unlinkat(to_dir, to_name, 0);
        return e;
    }
    return 0;
}

/* Whether name (with suffix, if any) is taken in dir, as a file of any kind or as name.reason
 * (which cannot exist when longer than a name may be). */
static int name_taken(int dir, const char *name)
{
    char reason[NAME_MAX + 1];
    struct stat st;
    if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT)
        return 1;
    if ((size_t)snprintf(reason, sizeof reason, "%s.reason", name) >= sizeof reason)
        return 0;
    return fstatat(dir, reason, &st, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT;
}

int hc_file_move_new(int from_dir, const char *from_name, int to_dir, const char *name,
                     unsigned long *suffix)
{
    char try[NAME_MAX + 1];
    unsigned long n;
    for (n = 0; n < HC_FILE_MOVE_TRIES; n++) {
        int err, len;
        if (n == 0)
            len = snprintf(try, sizeof try, "%s", name);
        else
            len = snprintf(try, sizeof try, "%s.%lu", name, n);
        if (len < 0 || (size_t)len >= sizeof try)
            return ENAMETOOLONG;
        if (name_taken(to_dir, try))
            continue;
        err = rename_noreplace_at(from_dir, from_name, to_dir, try);
        if (err == EEXIST)
            continue;
        if (err == 0)
            *suffix = n;
        return err;
    }
    return EEXIST;
}
