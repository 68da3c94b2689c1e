/*
 * data.h — training data for `cpattn train`, needing no download.
 *
 * Synthetic "copy" task (the default): each sample is S+1 tokens; the first
 * half is random (tokens 2..V-1), token 1 marks the middle, and the second
 * half repeats the first.  A target in the second half can only be
 * predicted by attending S/2 positions back — across context-parallel
 * shards — so its loss (the "long-range" loss) falls only if CP attention
 * works.  Packed copy task (--synthetic-documents): the same, as documents
 * of random lengths packed into each sample, each one a copy task ended by
 * the EOD token 0.  Text: byte-level language modelling (V = 256) on any
 * file, with the last `holdout` fraction held out for evaluation.
 * Megatron's indexed dataset (PREFIX.bin + PREFIX.idx, indexed.h): samples
 * of S+1 tokens cut from the concatenated documents of each split.
 *
 * Documents.  A source with an end-of-document token (packed, indexed)
 * gives each sample's documents the way Megatron's GPT dataset does from
 * the inputs tokens[0..S-1]: a document ends after each EOD token, so the
 * token after an EOD starts a document at position 0
 * (--reset-position-ids), and --eod-mask-loss drops the loss of every
 * position whose INPUT is an EOD (its target is the first token of the next
 * document, which nothing before it predicts).
 *
 * Samples are a pure function of (seed, split, index), so resuming from a
 * checkpoint only needs the iteration number to continue the same stream.
 */
#ifndef CPATTN_MODEL_DATA_H
#define CPATTN_MODEL_DATA_H

#include "cpattn.h"

#include <stddef.h>
#include <stdint.h>

typedef struct cpa_data cpa_data;

/* The splits: train, evaluation (Megatron's "valid") and test (only the
 * indexed dataset has one; the trainer does not use it). */
enum { CPA_DATA_TRAIN = 0, CPA_DATA_EVAL = 1, CPA_DATA_TEST = 2 };

/* The copy task over vocabulary V >= 4 for sequences of S tokens (S >= 4). */
cpa_status cpa_data_synthetic_create(int64_t S, int64_t V, uint64_t seed, cpa_data **out);

/* Byte-level text from `path` (read whole; each split must hold at least
 * S+2 bytes); holdout in (0, 0.5]: the last fraction of the file is the
 * evaluation split.  Clear errors for a missing, unreadable or too-small
 * file. */
cpa_status cpa_data_text_create(const char *path, int64_t S, double holdout, uint64_t seed,
                                cpa_data **out);

/* The packed copy task over vocabulary V >= 4 for S >= 4: documents of
 * random lengths (data.c gives the rule), each a copy task, EOD = 0. */
cpa_status cpa_data_packed_create(int64_t S, int64_t V, uint64_t seed, cpa_data **out);

/* Megatron's indexed dataset PREFIX.bin + PREFIX.idx (opened and checked by
 * cpa_indexed_open: CPA_ERR_IO / CPA_ERR_FORMAT naming the file and the
 * field).  `split` holds the train/valid/test weights of --split (any
 * scale); the documents are split by Megatron's rule
 * (cpa_data_split_bounds), and the train and valid splits must hold
 * tokens.  vocab 0: the largest token + 1; otherwise it must exceed every
 * token.  eod: the end-of-document token (-1: none). */
cpa_status cpa_data_indexed_create(const char *prefix, int64_t S, const double split[3],
                                   int64_t vocab, int64_t eod, uint64_t seed, cpa_data **out);

/* --split text: one to three comma-separated weights >= 0 (missing ones
 * are 0) with a positive sum, e.g. "949,50,1" or "969, 30, 1".  The message
 * quotes the text. */
cpa_status cpa_data_split_parse(const char *text, double weights[3]);

/* Megatron's split of n documents (blended_megatron_dataset_builder.py):
 * the weights normalised to sum 1, their running sums e0 = 0 .. e3, and
 * split k is documents [round(e_k n), round(e_{k+1} n)) with Python's
 * round (half to even).  bounds [4]: 0 = b0 <= b1 <= b2 <= b3 = n. */
void cpa_data_split_bounds(const double weights[3], int64_t n, int64_t bounds[4]);

/* 1 when `path` names an indexed dataset: PREFIX.idx or PREFIX.bin exists
 * and `path` itself is not a regular file (a text file keeps its meaning
 * unless both PREFIX.bin and PREFIX.idx exist). */
int cpa_data_is_indexed(const char *path);

/* One line about the source: its kind, size and splits (for the log). */
void cpa_data_describe(const cpa_data *data, char *buf, size_t cap);

void cpa_data_destroy(cpa_data *data);

int64_t cpa_data_vocab(const cpa_data *data);

/* tokens [S+1]: inputs are tokens[0..S-1], targets tokens[1..S].  Text
 * and indexed data read the train split for CPA_DATA_TRAIN, the test split
 * for CPA_DATA_TEST (indexed only; zeros when it is empty) and the
 * evaluation split for any other value. */
void cpa_data_sample(const cpa_data *data, int split, int64_t index, int32_t *tokens);

/* 1 if the target at position t (predicting tokens[t+1]) is long-range
 * (copy task: in the repeated half); 0 for text.  The copy task's flags
 * are the same for every sample; the packed task's are not: see
 * cpa_data_sample_long_range. */
int cpa_data_long_range(const cpa_data *data, int64_t t);

/* flags [S]: the long-range flags of sample (split, index), for every
 * source (copy task: cpa_data_long_range; packed: the targets that are
 * copies; text and indexed: none). */
void cpa_data_sample_long_range(const cpa_data *data, int split, int64_t index, uint8_t *flags);

/* The end-of-document token, or -1 for a source without documents (the copy
 * task, text). */
int64_t cpa_data_eod(const cpa_data *data);

/* The documents of a sample's inputs tokens[0..S-1] as cumulative lengths:
 * cu_seqlens [N+1] (room for S+1), 0 = c0 < c1 < ... < cN = S, a document
 * ending after each EOD token (one document without an EOD token).  Returns
 * N.  What --reset-attention-mask would hand the attention. */
int64_t cpa_data_sample_documents(const cpa_data *data, const int32_t *tokens, int64_t *cu_seqlens);

/* positions [S]: each input's position inside its document (t minus its
 * document's start), what RoPE sees under --reset-position-ids; 0..S-1
 * without an EOD token. */
void cpa_data_sample_positions(const cpa_data *data, const int32_t *tokens, int64_t *positions);

/* mask [S]: 0 where the loss is skipped under --eod-mask-loss (the input
 * tokens[t] is the EOD token, as Megatron's loss_mask), 1 elsewhere. */
void cpa_data_sample_loss_mask(const cpa_data *data, const int32_t *tokens, uint8_t *mask);

#endif
