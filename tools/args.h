/*
 * args.h — the command-line configuration table shared by every `cpattn`
 * subcommand, plus the few small helpers the subcommands all need (timing,
 * medians, peak memory, deterministic random tensors).
 *
 * A subcommand describes its flags once, as an array of cli_option rows
 * {flag, env, type, default, help, range, where the value goes}; that one
 * table drives parsing (`--flag value` and `--flag=value`, environment
 * variables below the command line), `--help` (every flag with its default),
 * per-flag validation (strict integers, ranges, choices) and the printout of
 * the effective configuration.  Rules that tie several flags together (H % G
 * == 0, ...) stay in the subcommand, which reports them with cli_usage() so
 * that every usage error has the same one-line shape:
 *
 *     cpattn attn: --num-query-groups 3: must divide --num-attention-heads 8 (H % G == 0)
 *
 * This file is tool code: it prints to stdout/stderr and never calls exit();
 * parse results come back as return values that the subcommand turns into
 * its exit code.
 */
#ifndef CPATTN_TOOLS_ARGS_H
#define CPATTN_TOOLS_ARGS_H

#include "cpattn.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ------------------------------------------------------------------------ */
/* The config table                                                          */
/* ------------------------------------------------------------------------ */

/* How a flag's text becomes a value, and the C type the value is stored as
 * (at cli_option.offset inside the subcommand's config struct). */
typedef enum cli_type {
    CLI_INT,      /* int64_t; strict decimal, range [min, max]                  */
    CLI_FLOAT,    /* double; finite, range [fmin, fmax]                         */
    CLI_STRING,   /* const char * (points into argv, env or the table; not owned) */
    CLI_FLAG,     /* int 0/1; `--flag` alone, or --flag=true|false|1|0|on|off   */
    CLI_CHOICE,   /* int: index of the value in `choices` ("causal|general")    */
    CLI_INT_LIST  /* cli_int_list; comma-separated integers, each in [min, max] */
} cli_type;

#define CLI_LIST_MAX 16

typedef struct cli_int_list {
    int n;
    int64_t v[CLI_LIST_MAX];
} cli_int_list;

/* One row of a subcommand's table.  Unset range fields (min == max == 0,
 * fmin == fmax == 0) mean "any value of the type". */
typedef struct cli_option {
    const char *flag;    /* "--seq-length" */
    const char *env;     /* "CPATTN_SEED", or NULL: read below the command line */
    cli_type type;
    const char *def;     /* default as text; NULL: unset unless given */
    const char *help;    /* one sentence; --help appends the default */
    const char *metavar; /* "S" in "--seq-length S"; NULL: derived from the type */
    const char *choices; /* CLI_CHOICE: allowed values separated by '|' */
    int64_t min, max;    /* CLI_INT, CLI_INT_LIST: inclusive range */
    double fmin, fmax;   /* CLI_FLOAT: inclusive range */
    size_t offset;       /* offsetof(config struct, field) */
} cli_option;

/* A subcommand: its name for messages ("cpattn attn"), a synopsis line, a
 * paragraph for --help, and its table. */
typedef struct cli_spec {
    const char *command;
    const char *synopsis;    /* "[flags]" or "kernel [flags]" */
    const char *description; /* printed under the usage line; may be NULL */
    const cli_option *options;
    int count;
    const char *epilog; /* printed after the flags (notes, examples); may be NULL */
} cli_spec;

#define CLI_MAX_OPTIONS 128

/* Where each option's value came from, for cli_given() and the printout. */
typedef enum cli_source {
    CLI_SRC_UNSET = 0, /* no default and not given */
    CLI_SRC_DEFAULT,
    CLI_SRC_ENV,
    CLI_SRC_ARG,
    CLI_SRC_DERIVED /* filled in by the subcommand (see cli_mark_derived) */
} cli_source;

/* The outcome of parsing one command line. */
typedef struct cli_args {
    const cli_spec *spec;
    void *cfg; /* the subcommand's config struct the table writes into */
    cli_source source[CLI_MAX_OPTIONS];
    const char *note[CLI_MAX_OPTIONS]; /* why a derived value is what it is */
} cli_args;

typedef enum cli_result {
    CLI_OK = 0,   /* parsed and valid: run the command */
    CLI_HELP = 1, /* --help was printed: exit 0 */
    CLI_USAGE = 2 /* a usage error was printed: exit 2 */
} cli_result;

/* Fill `cfg` from the defaults, then the environment, then argv[1..argc-1]
 * (argv[0] is the subcommand name and is skipped).  Prints --help to stdout
 * or one usage-error line to stderr as the result says. */
cli_result cli_parse(cli_args *args, const cli_spec *spec, void *cfg, int argc, char **argv);

/* Print `command [synopsis]`, the description, every flag with its default,
 * and the epilog. */
void cli_print_help(const cli_spec *spec, FILE *f);

/* Print every option and its effective value, one per line, each line
 * starting with `prefix` ("# "), with where the value came from. */
void cli_print_config(const cli_args *args, FILE *f, const char *prefix);

/* Index of `flag` in the table (the flag must exist: a typo in a subcommand
 * is a bug, caught by an assert). */
int cli_index(const cli_spec *spec, const char *flag);

/* Whether the user set `flag` (command line or environment). */
int cli_given(const cli_args *args, const char *flag);

/* Record that the subcommand computed `flag`'s value itself (from other
 * flags or from input files); `note` says how ("= --num-attention-heads",
 * "from --load") and must outlive `args`. */
void cli_mark_derived(cli_args *args, const char *flag, const char *note);

/* Print "<command>: <message>" as one line on stderr and return CLI_USAGE.
 * The message should name the flag, the value and the rule. */
int cli_usage(const cli_spec *spec, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Silence (1) or restore (0) everything cli_parse() and cli_usage() print:
 * --help and usage errors.  An MPI subcommand silences every rank but 0,
 * since all ranks parse the same command line and reach the same verdict. */
void cli_set_quiet(int quiet);

/* The text of choice `index` of a CLI_CHOICE flag (for messages). */
const char *cli_choice_name(const cli_spec *spec, const char *flag, int index, char *buf,
                            size_t size);

#endif /* CPATTN_TOOLS_ARGS_H */
