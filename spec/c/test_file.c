/* SPDX-License-Identifier: MIT */
/*
 * Tests of the whole-file writer (src/hc_file.c) in a fresh directory under $TMPDIR (or /tmp):
 * a new file gets the bytes and the mode asked for less the umask; an existing file is replaced;
 * a symbolic link at the path is replaced by the file, its target left as it was; a failure (a
 * directory at the path, a missing directory) returns the errno value, keeps what was at the
 * path and leaves no temporary file; dir_writable tells a writable directory from others; the
 * token cache's private directory is made with its parents and refused when others may write to
 * it, a private file is read only when it is this user's and nobody else may read it; a file
 * holding credentials is opened only when no other user could have written it or its links, nor
 * the directories holding them (sticky ones aside) up to the home directory.
 * Prints one line per failure and "N passed, N failed"; exits 1 on failure.
 */
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hc_file.h"

struct tstate {
    int passed, failed;
    char dir[512];
};
#include "hc_test.h"

static void path_in(const tstate *t, char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", t->dir, name);
}

/* The whole content of path (at most size - 1 bytes, NUL-terminated), or "" when unreadable. */
static const char *content(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "rb");
    size_t n = 0;
    buf[0] = '\0';
    if (f != NULL) {
        n = fread(buf, 1, size - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
    return buf;
}

/* Number of entries of the test directory (without . and ..). */
static int entries(const tstate *t)
{
    DIR *d = opendir(t->dir);
    struct dirent *de;
    int n = 0;
    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static void write_plain(const char *path, const char *s)
{
    FILE *f = fopen(path, "wb");
    if (f != NULL) {
        fputs(s, f);
        fclose(f);
    }
}

static void test_replace(tstate *t)
{
    char a[600], target[600], link[600], buf[64];
    struct stat st;
    mode_t old = umask(022);
    path_in(t, a, sizeof a, "a");
    check(t, hc_file_replace(a, "one", 3, 0666) == 0, "new file written");
    check(t, strcmp(content(a, buf, sizeof buf), "one") == 0, "new file holds 'one', got '%s'",
          buf);
    check(t, stat(a, &st) == 0 && (st.st_mode & 07777) == 0644, "mode 0666 less umask 022 is 0644");
    check(t, hc_file_replace(a, "two\0bytes", 9, 0600) == 0 && stat(a, &st) == 0 && st.st_size == 9
                 && (st.st_mode & 07777) == 0600, "existing file replaced, binary-safe, mode 0600");
    check(t, entries(t) == 1, "no temporary file left after writes (%d entries)", entries(t));

    path_in(t, target, sizeof target, "target");
    path_in(t, link, sizeof link, "link");
    write_plain(target, "precious");
    check(t, symlink(target, link) == 0, "symlink made");
    check(t, hc_file_replace(link, "answer", 6, 0666) == 0, "write at a symbolic link");
    check(t, lstat(link, &st) == 0 && S_ISREG(st.st_mode), "the link is now a regular file");
    check(t, strcmp(content(link, buf, sizeof buf), "answer") == 0, "it holds the answer");
    check(t, strcmp(content(target, buf, sizeof buf), "precious") == 0,
          "the target is untouched: '%s'", buf);
    umask(old);
}

static void test_failures(tstate *t)
{
    char sub[600], missing[700];
    int before;
    path_in(t, sub, sizeof sub, "sub");
    check(t, mkdir(sub, 0755) == 0, "mkdir sub");
    before = entries(t);
    check(t, hc_file_replace(sub, "x", 1, 0666) == EISDIR, "a directory at the path: EISDIR");
    check(t, entries(t) == before, "no temporary file left after EISDIR");
    snprintf(missing, sizeof missing, "%s/none/f", t->dir);
    check(t, hc_file_replace(missing, "x", 1, 0666) == ENOENT, "a missing directory: ENOENT");
    check(t, hc_file_replace("", "x", 1, 0666) == ENOENT, "an empty path: ENOENT");
    check(t, hc_file_dir_writable(t->dir) == 0, "the test directory is writable");
    snprintf(missing, sizeof missing, "%s/none", t->dir);
    check(t, hc_file_dir_writable(missing) == ENOENT, "a missing directory is not");
}

static void test_private(tstate *t)
{
    char dir[600], file[700], below[800], buf[16];
    size_t failed, len;
    snprintf(dir, sizeof dir, "%s/cache/a/b", t->dir);
    check(t, hc_file_private_mkdir(dir, &failed) == 0, "private directory and parents made");
    check(t, hc_file_private_mkdir(dir, &failed) == 0, "and taken again");
    check(t, chmod(dir, 0777) == 0 && hc_file_private_mkdir(dir, &failed) == HC_FILE_UNSAFE,
          "refused once others may write to it");
    chmod(dir, 0700);
    snprintf(file, sizeof file, "%s/token", dir);
    check(t, hc_file_private_read(file, buf, sizeof buf, &len) == ENOENT, "absent: ENOENT");
    check(t, hc_file_replace(file, "secret", 6, 0600) == 0, "private file written");
    check(t, hc_file_private_read(file, buf, sizeof buf, &len) == 0 && len == 6
                 && memcmp(buf, "secret", 6) == 0, "and read back");
    check(t, hc_file_private_read(file, buf, 4, &len) == EFBIG, "larger than the buffer: EFBIG");
    check(t, chmod(file, 0644) == 0 && hc_file_private_read(file, buf, sizeof buf, &len)
                 == HC_FILE_UNSAFE, "refused once others may read it");
    snprintf(below, sizeof below, "%s/sub", file);
    check(t, hc_file_private_mkdir(below, &failed) == ENOTDIR && failed == strlen(below),
          "a file on the way: ENOTDIR (at %lu of %lu)", (unsigned long)failed,
          (unsigned long)strlen(below));
}

/* hc_file_trusted_open: the user's own file, through the user's own links (absolute, relative,
 * chained); refused when others may write to it, when it is not a regular file, and (run as root,
 * where another owner can be set) when another user owns it or a link on the way. */
static void test_trusted(tstate *t)
{
    char file[700], link1[700], link2[700], loop[700], sub[700], where[PATH_MAX];
    enum hc_file_distrust why = 0;
    int fd = -1, err;
    path_in(t, file, sizeof file, "key.json");
    path_in(t, link1, sizeof link1, "key-link1");
    path_in(t, link2, sizeof link2, "key-link2");
    path_in(t, loop, sizeof loop, "loop");
    path_in(t, sub, sizeof sub, "subdir");
    check(t, hc_file_trusted_open(file, NULL, &fd, &why, where, sizeof where) == ENOENT && fd == -1, "absent: ENOENT");
    write_plain(file, "{}");
    check(t, chmod(file, 0600) == 0 && hc_file_trusted_open(file, NULL, &fd, &why, where, sizeof where) == 0 && fd >= 0,
          "the user's own file opens");
    if (fd >= 0)
        close(fd);
    check(t, symlink(file, link1) == 0 && symlink("key-link1", link2) == 0, "links made");
    fd = -1;
    check(t, hc_file_trusted_open(link2, NULL, &fd, &why, where, sizeof where) == 0 && fd >= 0,
          "through the user's own links, relative then absolute");
    if (fd >= 0)
        close(fd);
    err = chmod(file, 0602) == 0 ? hc_file_trusted_open(link2, NULL, &fd, &why, where, sizeof where) : -2;
    check(t, err == HC_FILE_UNSAFE && why == HC_FILE_WRITABLE, "others may write: refused (%d)", err);
    chmod(file, 0600);
    check(t, mkdir(sub, 0700) == 0 && hc_file_trusted_open(sub, NULL, &fd, &why, where, sizeof where) == HC_FILE_UNSAFE
                 && why == HC_FILE_NOT_REGULAR, "a directory: refused");
    check(t, symlink("loop", loop) == 0 && hc_file_trusted_open(loop, NULL, &fd, &why, where, sizeof where) == ELOOP,
          "a link to itself: ELOOP");
    if (geteuid() != 0)
        return;
    check(t, lchown(link1, 65534, (gid_t)-1) == 0 && hc_file_trusted_open(link2, NULL, &fd, &why, where, sizeof where)
                 == HC_FILE_UNSAFE && why == HC_FILE_LINK_OWNER, "another user's link on the way: refused");
    check(t, chown(file, 65534, (gid_t)-1) == 0 && hc_file_trusted_open(file, NULL, &fd, &why, where, sizeof where)
                 == HC_FILE_UNSAFE && why == HC_FILE_OWNER, "another user's file: refused");
}

/* A key at dir/name (mode 0600, holding "{}"); its path goes to out. */
static void key_in(const char *dir, const char *name, char *out, size_t size)
{
    snprintf(out, size, "%s/%s", dir, name);
    write_plain(out, "{}");
    chmod(out, 0600);
}

/* hc_file_trusted_open(path, home): 0 (the descriptor closed), or what it returned, with *why and
 * the directory named in where. */
static int trusted(const char *path, const char *home, enum hc_file_distrust *why, char *where,
                   size_t size)
{
    int fd = -1;
    int err = hc_file_trusted_open(path, home, &fd, why, where, size);
    if (fd >= 0)
        close(fd);
    return err;
}

/* The directories on the way, as OpenSSH's safe_path: one that others may write to (or, as root,
 * another user owns) and that is not sticky refuses the file, its link or a file below it, and
 * is named (canonical); a sticky one does not; the walk stops after the home directory given. */
static void test_trusted_dirs(tstate *t)
{
    char open_dir[600], outer[600], inner[700], safe[600], loose[600], key[800], link[800];
    char canon[PATH_MAX], where[PATH_MAX], cwd[PATH_MAX];
    enum hc_file_distrust why = 0;
    int err;
    path_in(t, open_dir, sizeof open_dir, "open");
    check(t, mkdir(open_dir, 0700) == 0 && chmod(open_dir, 0777) == 0, "mkdir open (0777)");
    key_in(open_dir, "key.json", key, sizeof key);
    err = trusted(key, NULL, &why, where, sizeof where);
    check(t, err == HC_FILE_UNSAFE && why == HC_FILE_DIR_WRITABLE,
          "in a directory others may write: refused (%d)", err);
    check(t, realpath(open_dir, canon) != NULL && strcmp(where, canon) == 0, "naming it: '%s'", where);
    check(t, getcwd(cwd, sizeof cwd) != NULL && chdir(open_dir) == 0, "chdir open");
    err = trusted("key.json", NULL, &why, where, sizeof where);
    check(t, err == HC_FILE_UNSAFE && why == HC_FILE_DIR_WRITABLE && strcmp(where, canon) == 0,
          "a relative path: the working directory checked (%d, '%s')", err, where);
    check(t, chdir(cwd) == 0, "chdir back");
    check(t, chmod(open_dir, 01777) == 0 && trusted(key, NULL, &why, where, sizeof where) == 0,
          "sticky (as /tmp): taken");
    check(t, chmod(open_dir, 0770) == 0, "chmod 0770");
    err = trusted(key, NULL, &why, where, sizeof where);
    check(t, err == 0, "group-writable, the group the user's private one: taken (%d)", err);

    path_in(t, outer, sizeof outer, "outer");
    snprintf(inner, sizeof inner, "%s/inner", outer);
    check(t, mkdir(outer, 0700) == 0 && chmod(outer, 0777) == 0 && mkdir(inner, 0700) == 0,
          "mkdir outer (0777)/inner (0700)");
    key_in(inner, "key.json", key, sizeof key);
    err = trusted(key, NULL, &why, where, sizeof where);
    check(t, err == HC_FILE_UNSAFE && why == HC_FILE_DIR_WRITABLE && realpath(outer, canon) != NULL
                 && strcmp(where, canon) == 0,
          "a writable directory higher up: refused, named (%d, '%s')", err, where);
    check(t, realpath(inner, canon) != NULL && trusted(key, canon, &why, where, sizeof where) == 0,
          "the walk stops after the home directory: what is above it is not looked at");
    check(t, realpath(outer, canon) != NULL
                 && trusted(key, canon, &why, where, sizeof where) == HC_FILE_UNSAFE
                 && why == HC_FILE_DIR_WRITABLE, "but the home directory itself is checked");

    path_in(t, safe, sizeof safe, "safe");
    path_in(t, loose, sizeof loose, "loose");
    check(t, mkdir(safe, 0700) == 0 && mkdir(loose, 0700) == 0 && chmod(loose, 0777) == 0,
          "mkdir safe (0700), loose (0777)");
    key_in(safe, "key.json", key, sizeof key);
    snprintf(link, sizeof link, "%s/link.json", loose);
    check(t, symlink(key, link) == 0, "link in loose to safe/key.json");
    err = trusted(link, NULL, &why, where, sizeof where);
    check(t, err == HC_FILE_UNSAFE && why == HC_FILE_DIR_WRITABLE && realpath(loose, canon) != NULL
                 && strcmp(where, canon) == 0,
          "the user's link in a directory others may write: refused (%d, '%s')", err, where);
    check(t, trusted(key, NULL, &why, where, sizeof where) == 0, "the file itself: taken");
    if (geteuid() != 0)
        return;
    check(t, chmod(open_dir, 0770) == 0 && chown(open_dir, (uid_t)-1, 65534) == 0,
          "open: 0770, group 65534");
    key_in(open_dir, "key.json", key, sizeof key);
    err = trusted(key, NULL, &why, where, sizeof where);
    check(t, err == HC_FILE_UNSAFE && why == HC_FILE_DIR_WRITABLE,
          "group-writable, another group: refused (%d)", err);
    check(t, chmod(open_dir, 0755) == 0 && chown(open_dir, 65534, (gid_t)-1) == 0,
          "open: 0755, owner 65534");
    err = trusted(key, NULL, &why, where, sizeof where);
    check(t, err == HC_FILE_UNSAFE && why == HC_FILE_DIR_OWNER && realpath(open_dir, canon) != NULL
                 && strcmp(where, canon) == 0, "another user's directory: refused, named (%d)", err);
    check(t, chmod(open_dir, 01777) == 0
                 && trusted(key, NULL, &why, where, sizeof where) == HC_FILE_UNSAFE
                 && why == HC_FILE_DIR_OWNER,
          "sticky, but another user's (who may remove anything in it): refused");
}

/* hc_file_create_temp: <prefix><16 hex digits>, new each time, the mode asked for less the umask;
 * a prefix in a missing directory fails with its errno and no name. */
static void test_create_temp(tstate *t)
{
    char prefix[600], *a = NULL, *b = NULL;
    struct stat st;
    size_t plen, i;
    int fa, fb, hex = 1;
    mode_t old = umask(022);
    path_in(t, prefix, sizeof prefix, "answer.tmp-");
    plen = strlen(prefix);
    fa = hc_file_create_temp(prefix, 0666, &a);
    fb = hc_file_create_temp(prefix, 0600, &b);
    check(t, fa >= 0 && fb >= 0 && a != NULL && b != NULL, "two temporary files created");
    if (a != NULL && b != NULL) {
        check(t, strlen(a) == plen + 16 && strncmp(a, prefix, plen) == 0, "named <prefix><16>: %s", a);
        for (i = plen; a[i] != '\0'; i++)
            hex = hex && strchr("0123456789abcdef", a[i]) != NULL;
        check(t, hex, "the suffix is lower-case hex: %s", a);
        check(t, strcmp(a, b) != 0, "each name is new");
        check(t, stat(a, &st) == 0 && (st.st_mode & 0777) == 0644, "mode 0666 less the umask 022");
        check(t, stat(b, &st) == 0 && (st.st_mode & 0777) == 0600, "mode 0600 as asked");
        check(t, write(fa, "x", 1) == 1, "opened for writing");
        unlink(a);
        unlink(b);
    }
    if (fa >= 0)
        close(fa);
    if (fb >= 0)
        close(fb);
    free(a);
    free(b);
    a = (char *)"untouched";
    path_in(t, prefix, sizeof prefix, "missing/answer.tmp-");
    errno = 0;
    check(t, hc_file_create_temp(prefix, 0666, &a) == -1 && errno == ENOENT && a == NULL,
          "a missing directory: -1, ENOENT, no name");
    umask(old);
}

int main(void)
{
    tstate t;
    const char *base = getenv("TMPDIR");
    (void)hc_test_replay; /* the shared harness's replay: no fuzz inputs for this area */
    memset(&t, 0, sizeof t);
    snprintf(t.dir, sizeof t.dir, "%s/hc-test-file-XXXXXX", base != NULL && *base ? base : "/tmp");
    if (mkdtemp(t.dir) == NULL) {
        printf("cannot make a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    test_replace(&t);
    test_failures(&t);
    test_private(&t);
    test_trusted(&t);
    test_trusted_dirs(&t);
    test_create_temp(&t);
    {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", t.dir);
        if (system(cmd) != 0)
            printf("note: could not remove %s\n", t.dir);
    }
    return hc_test_summary(&t);
}
