/* SPDX-License-Identifier: MIT */
/* Whole files written at a path someone named, atomically and never through a symbolic link
 * (hc_file.h). Used by the command's -o (core.write_file) and the token cache
 * (core.private_write). The name of the temporary file is random (OpenSSL's CSPRNG, as every
 * other random name of the module), so another user cannot guess it; O_EXCL makes it safe
 * anyway. */
#define _DEFAULT_SOURCE /* faccessat's AT_EACCESS */
#include "hc_file.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/rand.h>

/* The signals whose default action ends the process: held back while a temporary file exists. */
static void hc_file_hold_signals(sigset_t *saved)
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
    hc_file_hold_signals(&saved);
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
