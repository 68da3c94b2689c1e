/*
 * data.h — training data for `cpattn train`, needing no download.
 *
 * Synthetic "copy" task (the default): each sample is S+1 tokens; the first
 * half is random (tokens 2..V-1), token 1 marks the middle, and the second
 * half repeats the first.  A target in the second half can only be
 * predicted by attending S/2 positions back — across context-parallel
 * shards — so its loss (the "long-range" loss) falls only if CP attention
 * works.  Text: byte-level language modelling (V = 256) on any file, with
 * the last `holdout` fraction held out for evaluation.
 *
 * Samples are a pure function of (seed, split, index), so resuming from a
 * checkpoint only needs the iteration number to continue the same stream.
 */
#ifndef CPATTN_MODEL_DATA_H
#define CPATTN_MODEL_DATA_H

#include "cpattn.h"

#include <stdint.h>

typedef struct cpa_data cpa_data;

enum { CPA_DATA_TRAIN = 0, CPA_DATA_EVAL = 1 };

/* The copy task over vocabulary V >= 4 for sequences of S tokens (S >= 4). */
cpa_status cpa_data_synthetic_create(int64_t S, int64_t V, uint64_t seed, cpa_data **out);

/* Byte-level text from `path` (read whole; each split must hold at least
 * S+2 bytes); holdout in (0, 0.5]: the last fraction of the file is the
 * evaluation split.  Clear errors for a missing, unreadable or too-small
 * file. */
cpa_status cpa_data_text_create(const char *path, int64_t S, double holdout, uint64_t seed,
                                cpa_data **out);

void cpa_data_destroy(cpa_data *data);

int64_t cpa_data_vocab(const cpa_data *data);

/* tokens [S+1]: inputs are tokens[0..S-1], targets tokens[1..S]. */
void cpa_data_sample(const cpa_data *data, int split, int64_t index, int32_t *tokens);

/* 1 if the target at position t (predicting tokens[t+1]) is long-range
 * (copy task: in the repeated half); 0 for text. */
int cpa_data_long_range(const cpa_data *data, int64_t t);

#endif
