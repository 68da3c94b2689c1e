/*
 * ckpt_file.h — the checkpoint container of cpattn's own sources, never
 * installed: one file of named float32 arrays behind a small header, with a
 * trailing checksum, written atomically and read back in two bounded passes.
 *
 * What it is: the file format (see ckpt_file.c for the byte layout: magic
 * "CPATTNCK", format version 2 — 1 still read —, two 64-bit header words, a
 * text of at most CPA_CKPT_FILE_TEXT_CAP - 1 bytes, the arrays, SHA-256 or
 * for version 1 FNV-1a over everything before it), atomic replacement of
 * the file (atomic_file.h: temporary, fsync, rename), and the checks of a
 * file that is read: its structure against its size, the checksum, and the
 * arrays' names and counts against the ones a caller expects.
 *
 * What it is not: a model's checkpoint.  The container gives the header
 * words and the text no meaning and knows no array names; the trainer's
 * checkpoints (src/model/checkpoint.c) keep the iteration in word[0], the
 * RNG state in word[1] and the model configuration in the text, choose the
 * file name and folder, and check what those values mean.
 *
 * Every fallible call records one message with cpa_error naming the file;
 * callers only propagate.  Reading never writes the caller's arrays before
 * the whole file has checked out.
 *
 * This header needs only cpattn.h, so that a model header can expose
 * cpa_ckpt_array without exposing the library's internals.
 */
#ifndef CPATTN_CORE_CKPT_FILE_H
#define CPATTN_CORE_CKPT_FILE_H

#include "cpattn.h"

#include <stdint.h>

/* Bytes of the header text, its NUL included. */
#define CPA_CKPT_FILE_TEXT_CAP 4096
/* Array names are short labels ("params", "adam_m"); longer ones are
 * refused when writing, and a longer length field in a file means damage. */
#define CPA_CKPT_FILE_MAX_NAME 1024

/* One named array, for writing (data is read) or reading (data is written;
 * the count must match the file's). */
typedef struct cpa_ckpt_array {
    const char *name; /* 1 to CPA_CKPT_FILE_MAX_NAME characters: "params", "adam_m", ... */
    float *data;      /* [count] */
    int64_t count;
} cpa_ckpt_array;

/* The header's caller-defined fields (after the magic and the version). */
typedef struct cpa_ckpt_file_header {
    uint64_t word[2];                  /* two words the caller defines */
    char text[CPA_CKPT_FILE_TEXT_CAP]; /* NUL-terminated; no NUL inside */
} cpa_ckpt_file_header;

/* CPA_ERR_ARG unless `arrays` is a valid list of `narrays` arrays: each
 * with a name of 1 to CPA_CKPT_FILE_MAX_NAME characters, a count >= 0 (and,
 * when `for_write`, a byte size that fits int64) and data unless the count
 * is 0.  `who` starts the message ("cpa_ckpt_save"). */
cpa_status cpa_ckpt_file_check_arrays(const char *who, const cpa_ckpt_array *arrays, int narrays,
                                      int for_write);

/* Write `path` atomically: the header, the arrays in order and the SHA-256
 * (format version 2).  The folder must exist.  Nothing is created when the
 * write buffer cannot be allocated; on any later failure the temporary is
 * removed and an existing `path` is left as it was.  After a successful
 * write the temporaries of crashed writes to `path` are removed
 * (cpa_temp_sweep). */
cpa_status cpa_ckpt_file_write(const char *path, const cpa_ckpt_file_header *header,
                               const cpa_ckpt_array *arrays, int narrays);

/* A file open for reading, with its bounded read buffer. */
typedef struct cpa_ckpt_reader cpa_ckpt_reader;

/* Open the regular file `path` (cpa_open_read: CPA_ERR_IO naming a missing
 * file, a folder, a FIFO) and allocate the reader; `path` must stay valid
 * until cpa_ckpt_reader_close.  Nothing is allocated if the open fails. */
cpa_status cpa_ckpt_reader_open(const char *path, cpa_ckpt_reader **out);

/* Close the file and free the reader (NULL is accepted). */
void cpa_ckpt_reader_close(cpa_ckpt_reader *reader);

/* Read only the header: magic, version, the words and the text, each
 * length checked against the file size (CPA_ERR_FORMAT naming the file and
 * the problem).  The arrays and the checksum are not read.  Call once, on a
 * freshly opened reader. */
cpa_status cpa_ckpt_reader_read_header(cpa_ckpt_reader *reader);

/* Pass 1 over the whole file, on a freshly opened reader: the header, the
 * structure of every array against the file size, and the checksum
 * (CPA_ERR_FORMAT naming the file).  The first difference between the
 * file's arrays and `expected` is recorded for cpa_ckpt_reader_match, not
 * returned: a damaged file is a different problem from a wrong one, and
 * the caller may have a better message to give first (a configuration key
 * that differs).  `expected` must stay valid until the reader is closed. */
cpa_status cpa_ckpt_reader_scan(cpa_ckpt_reader *reader, const cpa_ckpt_array *expected,
                                int nexpected);

/* The header read by cpa_ckpt_reader_read_header or _scan (only valid after
 * one of them succeeded). */
const cpa_ckpt_file_header *cpa_ckpt_reader_header(const cpa_ckpt_reader *reader);

/* After a successful scan: CPA_OK if the file's arrays are, in order, the
 * names and counts of `expected`, else CPA_ERR_ARG naming the first
 * difference (a name, a count, or the number of arrays with both lists). */
cpa_status cpa_ckpt_reader_match(const cpa_ckpt_reader *reader);

/* Pass 2, after a successful scan and match: copy the file's array data
 * into the `expected` arrays.  If the file was changed in place between
 * the passes the arrays may be partly written and an error is returned. */
cpa_status cpa_ckpt_reader_copy(cpa_ckpt_reader *reader);

#endif /* CPATTN_CORE_CKPT_FILE_H */
