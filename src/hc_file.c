/* SPDX-License-Identifier: MIT */
/* Files at a path someone named (hc_file.h): written atomically and never through a symbolic
 * link, private directories and files for the token cache. Used by the command's -o
 * (core.write_file) and the token cache (core.private_*, hc_lua_file.c). The name of the temporary
 * file is random (OpenSSL's CSPRNG, as every other random name of the module), so another user
 * cannot guess it; O_EXCL makes it safe anyway. */
#define _DEFAULT_SOURCE /* faccessat's AT_EACCESS */
#include "hc_file.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

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

int hc_file_replace(const char *path, const void *data, size_t n, mode_t mode)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *p = data;
    unsigned char rnd[8];
    size_t plen = strlen(path), i;
    char *tmp;
    sigset_t saved;
    int fd, err = 0;
    if (plen == 0)
        return ENOENT;
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return EIO;
    tmp = malloc(plen + sizeof ".tmp-" - 1 + 2 * sizeof rnd + 1); /* freed below */
    if (tmp == NULL)
        return ENOMEM;
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp-", 5);
    for (i = 0; i < sizeof rnd; i++) {
        tmp[plen + 5 + 2 * i] = digits[rnd[i] >> 4];
        tmp[plen + 5 + 2 * i + 1] = digits[rnd[i] & 15];
    }
    tmp[plen + 5 + 2 * sizeof rnd] = '\0';
    hold_signals(&saved);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
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
