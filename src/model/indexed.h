/*
 * indexed.h — Megatron-LM's indexed dataset (MMapIndexedDataset, the
 * PREFIX.bin + PREFIX.idx pair that megatron/core/datasets/indexed_dataset.py
 * reads and writes), read and written natively, and the byte-level
 * documents that `cpattn preprocess` makes from text and JSON-lines files.
 *
 * The layout, all little-endian, as Megatron writes it:
 *
 *   PREFIX.idx   9 bytes  magic "MMIDIDX\x00\x00"
 *                uint64   version, 1
 *                uint8    dtype code of the tokens in .bin: 1 uint8, 2 int8,
 *                         3 int16, 4 int32, 5 int64, 6 float64, 7 float32,
 *                         8 uint16
 *                uint64   sequence count Ns
 *                uint64   document count Nd (entries of document_indices:
 *                         the number of documents + 1)
 *                int32    sizes[Ns]             tokens per sequence
 *                int64    pointers[Ns]          byte offset of each sequence in .bin
 *                int64    document_indices[Nd]  0 = d0 <= d1 <= ... = Ns: document
 *                                               j is sequences [d_j, d_{j+1})
 *   PREFIX.bin   the tokens of every sequence, back to back, in that dtype.
 *
 * A 34-byte header, then 12·Ns + 8·Nd bytes: nothing else (a multimodal
 * index, with one mode byte per sequence after the document index, is
 * refused).  Megatron's writer always puts the sequences in order with no
 * gap (pointers[0] = 0, each pointer the previous one plus its sequence's
 * bytes, .bin exactly as long as the last sequence's end), and the reader
 * insists on it: a .bin that does not match its .idx byte for byte is the
 * classic mistake of copying one file of a pair.  Tokens must be integers
 * >= 0 that fit an int32 (float dtypes are refused).
 *
 * What it is not: a tokenizer, or Megatron's blending and shuffling of
 * several datasets (data.c cuts samples from one dataset).
 */
#ifndef CPATTN_MODEL_INDEXED_H
#define CPATTN_MODEL_INDEXED_H

#include "cpattn.h"

#include <stddef.h>
#include <stdint.h>

/* Megatron's dtype codes (megatron/core/datasets/indexed_dataset.py DType). */
enum {
    CPA_IDX_UINT8 = 1,
    CPA_IDX_INT8 = 2,
    CPA_IDX_INT16 = 3,
    CPA_IDX_INT32 = 4,
    CPA_IDX_INT64 = 5,
    CPA_IDX_FLOAT64 = 6,
    CPA_IDX_FLOAT32 = 7,
    CPA_IDX_UINT16 = 8
};

#define CPA_IDX_HEADER_BYTES 34 /* 9 magic + 8 version + 1 dtype + 8 + 8 counts */

/* The dtype's name ("uint16"), or "unknown". */
const char *cpa_indexed_dtype_name(int code);

/* ---- reading ---------------------------------------------------------------- */

typedef struct cpa_indexed cpa_indexed;

/* Open PREFIX.idx and PREFIX.bin and check all of it (see the layout above):
 * a missing or unreadable file is CPA_ERR_IO; anything malformed is
 * CPA_ERR_FORMAT with a message naming the file, the field (magic, version,
 * dtype, sequence count, document count, sizes[i], pointers[i],
 * document_indices[i], a token) and the rule.  The .bin is mapped
 * read-only (every process of a host shares the pages); the index is
 * copied into memory. */
cpa_status cpa_indexed_open(const char *prefix, cpa_indexed **out);
void cpa_indexed_close(cpa_indexed *ix);

/* 1 when PREFIX.idx or PREFIX.bin exists (so an indexed dataset is meant). */
int cpa_indexed_exists(const char *prefix);

int cpa_indexed_dtype(const cpa_indexed *ix);
int64_t cpa_indexed_num_sequences(const cpa_indexed *ix);  /* Ns */
int64_t cpa_indexed_num_documents(const cpa_indexed *ix);  /* Nd - 1 */
int64_t cpa_indexed_num_tokens(const cpa_indexed *ix);     /* sum of sizes */
int64_t cpa_indexed_max_token(const cpa_indexed *ix);      /* -1 when there are none */
/* Sequence i's length, and its first token's index in the whole token
 * array (the sequences are back to back, so that is pointers[i] / item). */
int64_t cpa_indexed_sequence_length(const cpa_indexed *ix, int64_t i);
int64_t cpa_indexed_sequence_start(const cpa_indexed *ix, int64_t i);
/* document_indices [num_documents + 1]. */
const int64_t *cpa_indexed_document_indices(const cpa_indexed *ix);
/* Tokens [first, first + n) of the whole token array (all sequences back to
 * back) into out [n]; the range must lie inside it. */
void cpa_indexed_read(const cpa_indexed *ix, int64_t first, int64_t n, int32_t *out);

/* ---- writing ---------------------------------------------------------------- */

typedef struct cpa_indexed_writer cpa_indexed_writer;

/* Start PREFIX.bin and PREFIX.idx with tokens of integer dtype `code`.
 * Nothing appears under the final names before cpa_indexed_writer_commit:
 * the data go to a temporary next to PREFIX.bin (atomic_file.h). */
cpa_status cpa_indexed_writer_create(const char *prefix, int code, cpa_indexed_writer **out);

/* Append tokens to the open document (CPA_ERR_ARG for a token the dtype
 * cannot hold); _bytes appends bytes as tokens 0..255. */
cpa_status cpa_indexed_writer_append(cpa_indexed_writer *w, const int64_t *tokens, int64_t n);
cpa_status cpa_indexed_writer_append_bytes(cpa_indexed_writer *w, const uint8_t *bytes, size_t n);

/* Close the open document as one sequence (as Megatron's preprocess_data.py
 * writes a document without --split-sentences).  An empty one is allowed. */
cpa_status cpa_indexed_writer_end_document(cpa_indexed_writer *w);

int64_t cpa_indexed_writer_documents(const cpa_indexed_writer *w);
int64_t cpa_indexed_writer_tokens(const cpa_indexed_writer *w);

/* Write the index and put both files in place: the temporaries are synced,
 * an old PREFIX.idx is removed, then PREFIX.bin and PREFIX.idx are renamed
 * over the final names, in that order.  A reader therefore sees the old
 * pair, or no PREFIX.idx, or the new pair — never a .bin with another
 * dataset's .idx.  A document still open is an error (end it first).  The
 * writer is freed either way. */
cpa_status cpa_indexed_writer_commit(cpa_indexed_writer *w);

/* Give up: remove the temporaries, free the writer (NULL is fine). */
void cpa_indexed_writer_discard(cpa_indexed_writer *w);

/* ---- documents from text and JSON lines (cpattn preprocess) ------------------ */

/* The whole file `path` as one document of byte tokens, then `eod`. */
cpa_status cpa_indexed_add_text_file(cpa_indexed_writer *w, const char *path, int64_t eod);

/* Every line of the JSON-lines file `path` that is not blank is one JSON
 * object; the string at its top-level `key`, decoded (\" \\ \/ \b \f \n \r
 * \t and \uXXXX, surrogate pairs included, to UTF-8), is one document of
 * byte tokens, then `eod`.  A line that is not an object, lacks the key, has
 * a non-string value there or an invalid escape is CPA_ERR_FORMAT naming
 * FILE:LINE.  *documents (may be NULL) gets the number added. */
cpa_status cpa_indexed_add_jsonl_file(cpa_indexed_writer *w, const char *path, const char *key,
                                      int64_t eod, int64_t *documents);

/* The JSON decoding itself: line[0..n) holds one JSON object; the string at
 * its top-level `key` (the last one if repeated, as Python's json does) is
 * decoded into out (capacity >= n suffices: decoding never grows) with its
 * length in *out_len.  CPA_ERR_FORMAT with a message naming the column for
 * malformed JSON, the key when it is missing or not a string. */
cpa_status cpa_json_string_field(const char *line, size_t n, const char *key, uint8_t *out,
                                 size_t *out_len);

#endif /* CPATTN_MODEL_INDEXED_H */
