/* SPDX-License-Identifier: MIT */
/* Files written whole at a path someone named (the command's -o, the token cache): the bytes go
 * to a new temporary file next to the path, which is then renamed over it. A reader never sees
 * half a file, a failure leaves what was at the path as it was, and nothing is ever written
 * through a symbolic link planted at the path (the link itself is replaced). */
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

/* Whether this process (its effective user) may create files in the directory dir: 0, or an
 * errno value (ENOENT, ENOTDIR, EACCES, EROFS, ...). */
int hc_file_dir_writable(const char *dir);

#endif
