/*
 * atomic_file.c — file helpers shared by npy.c, checkpoint.c and data.c:
 * errno text, full reads and writes, opening for reading, and atomic
 * replacement through an exclusive temporary.  See atomic_file.h.
 */
#include "atomic_file.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* Linux transfers less than 2 GiB per read or write call. */
#define IO_MAX_CALL ((size_t)1 << 30)
/* Room for the folder of a final path; a longer one is not fsync'd. */
#define FOLDER_CAP 4352

/* No _GNU_SOURCE here, so this is the XSI strerror_r returning int. */
const char *cpa_errno_text(int err, char *buf, size_t cap)
{
    if (strerror_r(err, buf, cap) != 0)
        snprintf(buf, cap, "error %d", err);
    return buf;
}

cpa_status cpa_nomem_for(const char *path)
{
    char why[512];
    snprintf(why, sizeof why, "%s", cpa_last_error()); /* cpa_error reuses that buffer */
    return cpa_error(CPA_ERR_NOMEM, "%s: %s", path, why);
}

int64_t cpa_read_full(int fd, void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        size_t want = len - done < IO_MAX_CALL ? len - done : IO_MAX_CALL;
        ssize_t n = read(fd, (char *)buf + done, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (int64_t)done;
}

bool cpa_write_full(int fd, const void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        size_t want = len - done < IO_MAX_CALL ? len - done : IO_MAX_CALL;
        ssize_t n = write(fd, (const char *)buf + done, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return false;
        done += (size_t)n;
    }
    return true;
}

/* What kind of file `mode` is, for messages. */
static const char *file_kind(mode_t mode)
{
    if (S_ISDIR(mode))
        return "a folder";
    if (S_ISFIFO(mode))
        return "a FIFO (named pipe)";
    if (S_ISCHR(mode) || S_ISBLK(mode))
        return "a device";
    if (S_ISSOCK(mode))
        return "a socket";
    return "not a regular file";
}

cpa_status cpa_open_read(const char *path, int *fd_out, struct stat *sb)
{
    char why[128];
    /* O_NONBLOCK: opening a FIFO for reading would otherwise block until a
     * writer appears (forever, for a forgotten `mkfifo`).  The type is
     * checked on the open descriptor, then blocking reads are restored. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return cpa_error(CPA_ERR_IO, "%s: cannot open for reading: %s", path,
                         cpa_errno_text(errno, why, sizeof why));
    cpa_status st = CPA_OK;
    int flags;
    if (fstat(fd, sb) != 0)
        st = cpa_error(CPA_ERR_IO, "%s: cannot stat: %s", path,
                       cpa_errno_text(errno, why, sizeof why));
    else if (!S_ISREG(sb->st_mode))
        st = cpa_error(CPA_ERR_IO, "%s: not a regular file (it is %s); cpattn reads regular "
                       "files only", path, file_kind(sb->st_mode));
    else if ((flags = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
        st = cpa_error(CPA_ERR_IO, "%s: cannot set blocking reads: %s", path,
                       cpa_errno_text(errno, why, sizeof why));
    if (st != CPA_OK) {
        close(fd);
        return st;
    }
    *fd_out = fd;
    return CPA_OK;
}

int cpa_temp_create(const char *final_path, char *tmp, size_t cap)
{
    static atomic_uint counter;
    const char *slash = strrchr(final_path, '/');
    int dir_len = slash ? (int)(slash - final_path + 1) : 0; /* with the '/' */
    const char *base = final_path + dir_len;
    for (int attempt = 0; attempt < 100; ++attempt) {
        unsigned n = atomic_fetch_add(&counter, 1u);
        int len = snprintf(tmp, cap, "%.*s.%s.tmp.%ld.%u", dir_len, final_path, base,
                           (long)getpid(), n);
        if (len < 0 || (size_t)len >= cap) {
            errno = ENAMETOOLONG;
            return -1;
        }
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    return -1; /* errno is EEXIST */
}

cpa_status cpa_temp_error(const char *final_path, const char *verb, const char *what,
                          const char *tmp, int err)
{
    char why[128];
    return cpa_error(CPA_ERR_IO, "%s: cannot %s %s %s: %s", final_path, verb, what, tmp,
                     cpa_errno_text(err, why, sizeof why));
}

/* Best effort: make the rename durable by syncing the folder of
 * `final_path`.  A failure does not undo a save that is already visible, so
 * it is not reported. */
static void sync_folder(const char *final_path)
{
    char dir[FOLDER_CAP];
    const char *slash = strrchr(final_path, '/');
    size_t len = slash ? (size_t)(slash - final_path) : 0;
    if (slash && len == 0)
        len = 1; /* "/name": the root */
    if (len >= sizeof dir)
        return;
    if (slash) {
        memcpy(dir, final_path, len);
        dir[len] = '\0';
    } else {
        snprintf(dir, sizeof dir, ".");
    }
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    (void)fsync(fd);
    close(fd);
}

cpa_status cpa_temp_commit(int fd, const char *tmp, const char *final_path, const char *what)
{
    char why[128];
    cpa_status st = CPA_OK;
    /* ENOSPC and friends may only show at fsync or close. */
    if (fsync(fd) != 0)
        st = cpa_temp_error(final_path, "sync", what, tmp, errno);
    if (close(fd) != 0 && st == CPA_OK)
        st = cpa_temp_error(final_path, "close", what, tmp, errno);
    /* rename() replaces `final_path` atomically: readers see old or new. */
    if (st == CPA_OK && rename(tmp, final_path) != 0)
        st = cpa_error(CPA_ERR_IO, "%s: cannot rename %s %s into place: %s", final_path, what,
                       tmp, cpa_errno_text(errno, why, sizeof why));
    if (st != CPA_OK) {
        unlink(tmp);
        return st;
    }
    sync_folder(final_path);
    return CPA_OK;
}

void cpa_temp_discard(int fd, const char *tmp)
{
    close(fd);
    unlink(tmp);
}

int cpa_temp_sweep(const char *final_path)
{
    char dir[FOLDER_CAP], prefix[FOLDER_CAP], path[FOLDER_CAP + 256];
    const char *slash = strrchr(final_path, '/');
    size_t dlen = slash ? (size_t)(slash - final_path) : 0;
    if (dlen >= sizeof dir)
        return 0;
    if (slash && dlen == 0)
        snprintf(dir, sizeof dir, "/");
    else if (slash)
        snprintf(dir, sizeof dir, "%.*s", (int)dlen, final_path);
    else
        snprintf(dir, sizeof dir, ".");
    const char *base = slash ? slash + 1 : final_path;
    if (snprintf(prefix, sizeof prefix, ".%s.tmp.", base) >= (int)sizeof prefix)
        return 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    const size_t plen = strlen(prefix);
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix, plen) != 0)
            continue;
        /* ".<base>.tmp.<pid>.<n>": a temporary of a process that is gone
         * (or of this one, which has none open when it sweeps). */
        char *end;
        long pid = strtol(e->d_name + plen, &end, 10);
        if (end == e->d_name + plen || *end != '.' || pid <= 0)
            continue;
        if (pid != (long)getpid() && !(kill((pid_t)pid, 0) != 0 && errno == ESRCH))
            continue; /* alive: a concurrent save of another process */
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            continue;
        if (unlink(path) == 0)
            ++removed;
    }
    closedir(d);
    return removed;
}
