/*
 * test_files.h — the scratch-folder helpers shared by the unit tests that
 * touch the file system (test_npy.c, test_checkpoint.c, test_data.c).
 *
 * A test makes one mkdtemp folder under /tmp with tmp_dir_create() at the
 * start of main(), names files in it with path_of(), writes and reads them
 * whole with write_bytes() and read_bytes(), counts the temporaries an
 * atomic save might leave behind with count_temps(), and removes the whole
 * folder with remove_tree(tmp_dir) at the end.  The functions are static
 * inline so that a test which uses only some of them compiles without
 * unused-function warnings; tmp_dir is per test program.
 */
#ifndef CPATTN_TEST_FILES_H
#define CPATTN_TEST_FILES_H

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The test's scratch folder, set by tmp_dir_create(). */
static char tmp_dir[64];

/* mkdtemp "/tmp/<prefix>_XXXXXX" into tmp_dir; false (after perror) if that
 * fails. */
static inline bool tmp_dir_create(const char *prefix)
{
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/%s_XXXXXX", prefix);
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return false;
    }
    return true;
}

/* A path inside the test folder. */
static inline const char *path_of(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmp_dir, name);
    return buf;
}

static inline bool write_bytes(const char *path, const void *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return false;
    bool ok = fwrite(bytes, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* The whole file in a malloc'd buffer (NULL if unreadable). */
static inline unsigned char *read_bytes(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(len > 0 ? (size_t)len : 1);
    *n = fread(buf, 1, (size_t)len, f);
    fclose(f);
    return buf;
}

/* Entries of `dir` whose name marks a save's temporary. */
static inline int count_temps(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    for (struct dirent *e; (e = readdir(d));)
        n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

/* Remove `dir` and everything below it (read-only folders included). */
static inline void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[512];
        if (snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= (int)sizeof p)
            continue; /* no test makes such a long name */
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) {
            chmod(p, 0700);
            remove_tree(p);
        } else {
            unlink(p);
        }
    }
    closedir(d);
    rmdir(dir);
}

#endif /* CPATTN_TEST_FILES_H */
