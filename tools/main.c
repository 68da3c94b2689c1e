/*
 * main.c — entry point of the `cpattn` program: picks the subcommand and
 * hands it the rest of the command line.  Each subcommand lives in its own
 * cmd_*.c file and is a thin layer over the library's public API.
 */
#include "cmd.h"
#include "util.h"

#include "cpattn.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} subcommands[] = {
    {"attn", cmd_attn, "attention forward/backward, single-process or context-parallel under "
                       "mpiexec, --check against the reference"},
    {"train", cmd_train, "Megatron-style GPT pretraining with context parallelism (under mpiexec)"},
    {"bench", cmd_bench, "benchmarks (`cpattn bench kernel`: kernel GFLOP/s vs same-run sgemm)"},
    {"preprocess", cmd_preprocess, "write Megatron's indexed dataset (PREFIX.bin/.idx) from text or "
                                   "JSON-lines files, byte-level tokens"},
    {"plan", cmd_plan, "choose the context-parallel configuration from measurements on this "
                       "job's ranks (under mpiexec)"},
    {"algos", cmd_algos, "the context-parallel algorithms; with --context-parallel-size P, every valid configuration "
                         "with its memory and communication volume"},
    {"export", cmd_export, "write a `train` checkpoint as a Hugging Face Llama model "
                           "(model.safetensors + config.json)"},
    {"trace-svg", cmd_trace_svg, "draw a --trace JSON file as an SVG timeline (one lane per rank "
                                 "and track; docs/trace.md)"},
};

static void usage(FILE *f)
{
    fprintf(f, "cpattn %s — context-parallel attention\n\nusage: cpattn <subcommand> [flags]\n\n",
            CPA_VERSION_STRING);
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; ++i)
        fprintf(f, "  %-10s %s\n", subcommands[i].name, subcommands[i].help);
    fprintf(f, "\n`cpattn <subcommand> --help` lists its flags and defaults.\n");
}

int main(int argc, char **argv)
{
    /* Before anything loads work into OpenBLAS or MPI: may restart once. */
    tool_blas_setup(argc, argv);
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("cpattn %s\n", CPA_VERSION_STRING);
        return EXIT_OK;
    }
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; ++i)
        if (!strcmp(argv[1], subcommands[i].name))
            return subcommands[i].run(argc - 1, argv + 1);
    /* The choices come from the table, so a new subcommand is named too. */
    fprintf(stderr, "cpattn: unknown subcommand '%s' (expected one of:", argv[1]);
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; ++i)
        fprintf(stderr, "%s %s", i ? "," : "", subcommands[i].name);
    fprintf(stderr, "; see cpattn --help)\n");
    return EXIT_USAGE;
}
