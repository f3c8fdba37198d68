/* SPDX-License-Identifier: MIT */
/*
 * What a target that writes files checks after each input: the files left in its directory and
 * the file descriptors the process holds. Header-only and static, as hc_fuzz_fill.h.
 */
#ifndef HC_FUZZ_LEFTOVERS_H
#define HC_FUZZ_LEFTOVERS_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Entries of dir (without . and ..); rm: removes them too. */
static int hc_fuzz_dir_entries(const char *dir, int rm)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1024];
    int n = 0;
    if (d == NULL)
        abort();
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        n++;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (rm)
            unlink(path);
    }
    closedir(d);
    return n;
}

/* Entries of /proc/self/fd: the open descriptors, plus the one reading it and . and .. */
static int hc_fuzz_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (d == NULL)
        abort();
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

#endif
