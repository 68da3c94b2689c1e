/*
 * cmd_preprocess.c — `cpattn preprocess`: write Megatron's indexed dataset
 * (PREFIX.bin + PREFIX.idx, src/model/indexed.h) from text or JSON-lines
 * files, with byte-level tokens, so that `cpattn train --data-path PREFIX`
 * (or Megatron itself) can read it.
 *
 * Tokens: each byte is a token 0..255, and an end-of-document token 256 is
 * appended to every document (Megatron's --append-eod), so the vocabulary
 * is 257 ids and the dtype uint16 (what Megatron picks below 65500 ids).
 * A document is one whole text file, or one line of a JSON-lines file: the
 * string at --json-keys, its JSON escapes decoded (to UTF-8 for \uXXXX).
 * Every document is one sequence (Megatron's preprocess_data.py without
 * --split-sentences).  The files are written to temporaries and renamed
 * into place only when everything was read (indexed.h says in which order).
 *
 * This file is the flags and the messages; the format, the JSON decoding
 * and the atomic writes are library code (src/model/indexed.c).  A single
 * process: no MPI.
 */
#include "args.h"
#include "cmd.h"

#include "indexed.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREPROCESS_EOD 256
#define MAX_INPUTS 4096

typedef struct preprocess_cfg {
    const char *input, *output_prefix, *json_key;
    int format;
} preprocess_cfg;

enum { FORMAT_AUTO = 0, FORMAT_TEXT = 1, FORMAT_JSONL = 2 };

#define AT(f) offsetof(preprocess_cfg, f)
static const cli_option preprocess_options[] = {
    {.flag = "--input", .type = CLI_STRING, .metavar = "FILE",
     .help = "An input file; repeat the flag, or give a comma-separated list, for several "
             "(their documents are written in the order given).", .offset = AT(input)},
    {.flag = "--output-prefix", .type = CLI_STRING, .metavar = "PREFIX",
     .help = "Write PREFIX.bin and PREFIX.idx (replaced atomically if they exist).",
     .offset = AT(output_prefix)},
    {.flag = "--json-keys", .type = CLI_STRING, .def = "text", .metavar = "KEY",
     .help = "The key of each JSON line whose string is the document (one key).",
     .offset = AT(json_key)},
    {.flag = "--input-format", .type = CLI_CHOICE, .def = "auto", .choices = "auto|text|jsonl",
     .help = "text: each file is one document; jsonl: each line is a JSON object holding one; "
             "auto: jsonl for names ending in .jsonl or .json, text otherwise.",
     .offset = AT(format)},
};

static const cli_spec preprocess_spec = {
    .command = "cpattn preprocess",
    .synopsis = "--input FILE [--input FILE ...] --output-prefix PREFIX [flags]",
    .description = "Write Megatron's indexed dataset (PREFIX.bin + PREFIX.idx) from text or "
                   "JSON-lines files: byte-level tokens 0..255 and an end-of-document token 256 "
                   "after each document (vocabulary 257, dtype uint16), for `cpattn train "
                   "--data-path PREFIX` or Megatron-LM.",
    .options = preprocess_options,
    .count = (int)(sizeof preprocess_options / sizeof preprocess_options[0]),
    .epilog = "Examples:\n"
              "  cpattn preprocess --input corpus.jsonl --json-keys text --output-prefix "
              "data/corpus\n"
              "  cpattn preprocess --input a.txt --input b.txt --output-prefix data/books\n"
              "  mpiexec -n 2 cpattn train --data-path data/corpus --split 949,50,1 "
              "--context-parallel-size 2 --reset-position-ids --eod-mask-loss\n",
};

static int fail(int rc, const char *what)
{
    fprintf(stderr, "cpattn preprocess: %s\n", what);
    return rc;
}

static int ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && strcmp(s + n - m, tail) == 0;
}

/* Every value of --input on the command line (the parser keeps only the
 * last), split at commas, into list; the count, or -1 after a message.
 * The command line was already validated: every argument is "--flag=value",
 * "--help", or a flag followed by its value. */
static int collect_inputs(int argc, char **argv, char *storage, size_t cap, const char **list)
{
    int n = 0;
    size_t used = 0;
    for (int k = 1; k < argc; ++k) {
        const char *arg = argv[k], *value = NULL;
        if (!strncmp(arg, "--input=", 8))
            value = arg + 8;
        else if (!strcmp(arg, "--input") && k + 1 < argc)
            value = argv[++k];
        else if (!strchr(arg, '=') && k + 1 < argc)
            ++k; /* another flag's value */
        if (!value)
            continue;
        size_t len = strlen(value);
        if (used + len + 1 > cap)
            return cli_usage(&preprocess_spec, "--input: the file names are too long together"),
                   -1;
        char *copy = storage + used;
        memcpy(copy, value, len + 1);
        used += len + 1;
        for (char *tok = copy;;) {
            char *comma = strchr(tok, ',');
            if (comma)
                *comma = '\0';
            if (*tok == '\0')
                return cli_usage(&preprocess_spec, "--input '%s': an empty file name", value), -1;
            if (n == MAX_INPUTS)
                return cli_usage(&preprocess_spec, "--input: more than %d files", MAX_INPUTS), -1;
            list[n++] = tok;
            if (!comma)
                break;
            tok = comma + 1;
        }
    }
    return n;
}

int cmd_preprocess(int argc, char **argv)
{
    preprocess_cfg c;
    memset(&c, 0, sizeof c);
    cli_args args;
    cli_result pr = cli_parse(&args, &preprocess_spec, &c, argc, argv);
    if (pr == CLI_HELP)
        return EXIT_OK;
    if (pr == CLI_USAGE)
        return EXIT_USAGE;
    static char storage[1 << 16];
    static const char *inputs[MAX_INPUTS];
    int n_inputs = collect_inputs(argc, argv, storage, sizeof storage, inputs);
    if (n_inputs < 0)
        return EXIT_USAGE;
    if (n_inputs == 0)
        return cli_usage(&preprocess_spec, "--input: give at least one input file");
    if (!c.output_prefix || !*c.output_prefix)
        return cli_usage(&preprocess_spec, "--output-prefix: give the prefix of the output files "
                         "(PREFIX.bin and PREFIX.idx)");
    if (!*c.json_key || strchr(c.json_key, ',') || strlen(c.json_key) > 255)
        return cli_usage(&preprocess_spec, "--json-keys '%s': give one key (at most 255 bytes); "
                         "Megatron's several keys make several datasets, run once per key",
                         c.json_key);

    cpa_indexed_writer *w = NULL;
    cpa_status st = cpa_indexed_writer_create(c.output_prefix, CPA_IDX_UINT16, &w);
    char msg[1200];
    if (st != CPA_OK) {
        snprintf(msg, sizeof msg, "--output-prefix %s: %s", c.output_prefix, cpa_last_error());
        return fail(EXIT_USAGE, msg);
    }
    int64_t jsonl_files = 0;
    for (int i = 0; i < n_inputs && st == CPA_OK; ++i) {
        const int jsonl = c.format == FORMAT_JSONL ||
                          (c.format == FORMAT_AUTO &&
                           (ends_with(inputs[i], ".jsonl") || ends_with(inputs[i], ".json")));
        if (jsonl) {
            st = cpa_indexed_add_jsonl_file(w, inputs[i], c.json_key, PREPROCESS_EOD, NULL);
            ++jsonl_files;
        } else {
            st = cpa_indexed_add_text_file(w, inputs[i], PREPROCESS_EOD);
        }
    }
    if (st != CPA_OK) {
        cpa_indexed_writer_discard(w);
        snprintf(msg, sizeof msg, "%s; nothing was written", cpa_last_error());
        return fail(st == CPA_ERR_IO || st == CPA_ERR_NOMEM ? EXIT_RUNTIME : EXIT_USAGE, msg);
    }
    const int64_t docs = cpa_indexed_writer_documents(w), tokens = cpa_indexed_writer_tokens(w);
    st = cpa_indexed_writer_commit(w);
    if (st != CPA_OK)
        return fail(EXIT_RUNTIME, cpa_last_error());
    printf("wrote %s.bin and %s.idx: %lld documents, %lld tokens (uint16: bytes 0..255, EOD %d; "
           "vocabulary %d) from %d file(s), %lld of them JSON lines (key \"%s\")\n",
           c.output_prefix, c.output_prefix, (long long)docs, (long long)tokens, PREPROCESS_EOD,
           PREPROCESS_EOD + 1, n_inputs, (long long)jsonl_files, c.json_key);
    return EXIT_OK;
}
