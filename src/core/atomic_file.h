/*
 * atomic_file.h — file helpers shared by cpattn's own sources (npy.c,
 * checkpoint.c, data.c), never installed.
 *
 * What it is: the POSIX file handling those writers and readers had each
 * written for themselves — thread-safe errno text, reads and writes that
 * retry EINTR and short transfers, opening a file for reading with the
 * standard messages, and replacing a file atomically.  For the last, a
 * caller creates an exclusive temporary next to the final path with
 * cpa_temp_create ("<dir>/.<base>.tmp.<pid>.<n>": <n> counts temporaries in
 * this process, so neither a concurrent saver nor a stale temporary left by
 * a crashed process that had the same pid can collide), writes it, and then
 * either calls cpa_temp_commit (fsync, close, rename over the final path,
 * best-effort fsync of the folder) or cpa_temp_discard.  Readers of the
 * final path see the old file or the new one, never a mix; on any failure
 * the temporary is removed and an existing file is left as it was.
 *
 * What it is not: a locking scheme (two savers to one path both succeed and
 * the last rename wins) or a general I/O layer.  Every function that returns
 * a cpa_status records its message with cpa_error, naming the file and the
 * errno text; none allocates, so the allocation-failure hook of the tests
 * counts only the callers' buffers.
 */
#ifndef CPATTN_ATOMIC_FILE_H
#define CPATTN_ATOMIC_FILE_H

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

/* The text of errno value `err` in `buf` (strerror is not thread-safe; this
 * uses the XSI strerror_r).  Returns `buf`. */
const char *cpa_errno_text(int err, char *buf, size_t cap);

/* cpa_malloc records a message without the file; re-record it naming
 * `path`.  Returns CPA_ERR_NOMEM. */
cpa_status cpa_nomem_for(const char *path);

/* Read up to `len` bytes; returns how many were read (fewer only at end of
 * file) or -1 with errno set. */
int64_t cpa_read_full(int fd, void *buf, size_t len);

/* Write all `len` bytes; false with errno set on failure. */
bool cpa_write_full(int fd, const void *buf, size_t len);

/* Open the regular file `path` read-only and fstat it into *sb; on success
 * *fd_out is open (blocking) and the caller closes it.  Anything else — a
 * folder, a FIFO, a device — is CPA_ERR_IO naming what it is, and never
 * blocks: the open itself is non-blocking. */
cpa_status cpa_open_read(const char *path, int *fd_out, struct stat *sb);

/* Create "<dir>/.<base>.tmp.<pid>.<n>" exclusively in the folder of
 * `final_path` (mode 0666: the umask decides); fills `tmp` (capacity
 * `cap`).  Returns the fd or -1 with errno set (ENAMETOOLONG if `tmp` is
 * too small). */
int cpa_temp_create(const char *final_path, char *tmp, size_t cap);

/* Record "FINAL: cannot VERB WHAT TMP: <errno text>" and return
 * CPA_ERR_IO; `what` names the temporary, e.g. "temporary file". */
cpa_status cpa_temp_error(const char *final_path, const char *verb, const char *what,
                          const char *tmp, int err);

/* The temporary `tmp` (open as `fd`) is fully written: fsync and close it,
 * rename it over `final_path` and fsync the folder (best effort: a save that
 * is already visible is not undone).  On failure the temporary is removed
 * and CPA_ERR_IO is returned with a message from cpa_temp_error.  `fd` is
 * closed either way. */
cpa_status cpa_temp_commit(int fd, const char *tmp, const char *final_path, const char *what);

/* Give up on a temporary: close `fd` and remove `tmp`. */
void cpa_temp_discard(int fd, const char *tmp);

/* Remove the temporaries of `final_path` that crashed saves left behind:
 * files ".<base>.tmp.<pid>.<n>" in its folder whose process no longer
 * exists (or is this one, which calls this only with none open).  Returns
 * how many were removed; errors are ignored (a leftover is only wasted
 * space).  Called after every successful save and at a trainer's start. */
int cpa_temp_sweep(const char *final_path);

#endif /* CPATTN_ATOMIC_FILE_H */
