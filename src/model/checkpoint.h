/*
 * checkpoint.h — training checkpoints: one file DIR/checkpoint.bin in the
 * library's checkpoint container (src/core/ckpt_file.h: header, named float
 * arrays, SHA-256 checksum, written atomically — temporary file in DIR,
 * fsync, rename; a failed save leaves the previous checkpoint intact).
 * This layer says what a trainer's checkpoint holds: the iteration and the
 * RNG state in the header words, the configuration as "key=value" lines in
 * the header text, and the caller's arrays (parameters, AdamW moments).
 * Loading verifies magic, version, sizes and checksum, checks that the
 * iteration is >= 0, and compares the configuration with the running one,
 * naming the first key that differs ("saved with hidden_size=256, this run
 * has 128").
 */
#ifndef CPATTN_MODEL_CHECKPOINT_H
#define CPATTN_MODEL_CHECKPOINT_H

#include "cpattn.h"
/* cpa_ckpt_array and the text capacity; the path is relative so that the
 * trainer (tools/) needs no core include folder: that header includes only
 * cpattn.h. */
#include "../core/ckpt_file.h"

#include <stdint.h>

typedef struct cpa_ckpt_meta {
    int64_t iteration;   /* iterations completed */
    uint64_t rng_state;  /* the trainer's RNG state */
    char config[CPA_CKPT_FILE_TEXT_CAP]; /* "key=value\n" lines describing the model shape */
} cpa_ckpt_meta;

/* Create DIR if missing and write DIR/checkpoint.bin atomically. */
cpa_status cpa_ckpt_save(const char *dir, const cpa_ckpt_meta *meta, const cpa_ckpt_array *arrays,
                         int narrays);

/* Read DIR/checkpoint.bin into the arrays (whose counts must match the
 * file's).  `expected_config`: the running configuration; keys present in
 * both must agree (CPA_ERR_ARG naming the key and both values).  A bad
 * magic, version, size or checksum is CPA_ERR_FORMAT naming the file;
 * arrays are written only after the whole file checked out. */
cpa_status cpa_ckpt_load(const char *dir, const char *expected_config, cpa_ckpt_meta *meta,
                         const cpa_ckpt_array *arrays, int narrays);

/* 1 if DIR/checkpoint.bin exists. */
int cpa_ckpt_exists(const char *dir);

/* The header of DIR/checkpoint.bin (iteration, RNG state, configuration)
 * without reading or verifying the arrays: what a run about to replace it
 * reports.  CPA_ERR_IO / CPA_ERR_FORMAT as for loading. */
cpa_status cpa_ckpt_peek(const char *dir, cpa_ckpt_meta *meta);

/* Remove the temporaries crashed saves left in DIR (see cpa_temp_sweep);
 * returns how many. */
int cpa_ckpt_sweep(const char *dir);

#endif
