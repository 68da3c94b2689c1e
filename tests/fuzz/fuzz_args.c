/*
 * fuzz_args.c — libFuzzer harness for the command-line parser
 * (tools/args.c) driven by the real flag tables of `cpattn attn`, `train`
 * and `bench kernel`.
 *
 * Input: byte 0 picks the table; the rest, split at NUL bytes, is the
 * argument vector.  An argument that starts with byte 0x01 is not passed
 * on: its next byte picks a row of the table that reads an environment
 * variable and the remainder becomes that variable's value, so values from
 * the environment and their interplay with flags are fuzzed too (only the
 * table's own variables are ever set, and they are cleared after each run).
 * Properties: the parser returns one of its three results, never reads or
 * writes outside the config it was given (ASan: the config buffer is sized
 * to the table's largest offset), and on success the configuration
 * printout runs over every value.
 * Seeds: tests/fuzz/corpus/args; dictionary: tests/fuzz/args.dict
 * (the tables' flags, printed by `CPATTN_FUZZ_PRINT_DICT=1 fuzz_args`).
 */
#include "args.h"
#include "cmd.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ARGS 64

static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (getenv("CPATTN_FUZZ_PRINT_DICT")) { /* every table's flags: args.dict */
        const cli_spec *(*all[3])(void) = {cmd_attn_spec, cmd_train_spec, cmd_bench_spec};
        for (int t = 0; t < 3; ++t) {
            const cli_spec *sp = all[t]();
            for (int k = 0; k < sp->count; ++k)
                printf("\"%s\"\n", sp->options[k].flag);
        }
        exit(0);
    }
    devnull = fopen("/dev/null", "w");
    cli_set_quiet(1);
    return 0;
}

static size_t bytes_needed(const cli_spec *sp)
{
    size_t end = 0;
    for (int k = 0; k < sp->count; ++k) {
        size_t e = sp->options[k].offset + sizeof(cli_int_list);
        if (e > end)
            end = e;
    }
    return end;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const cli_spec *(*tables[3])(void) = {cmd_attn_spec, cmd_train_spec, cmd_bench_spec};
    const cli_spec *sp = tables[data[0] % 3]();

    /* NUL-separated arguments, each a copy that owns its terminator. */
    char *text = malloc(size);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    argv[argc++] = (char *)"fuzz";
    const char *set_env[MAX_ARGS];
    int nenv = 0;
    for (char *p = text; p < text + size && argc < MAX_ARGS;) {
        size_t len = strlen(p);
        if (p[0] == '\x01' && len >= 2 && nenv < MAX_ARGS) {
            const cli_option *o = &sp->options[(unsigned char)p[1] % sp->count];
            if (o->env) {
                setenv(o->env, p + 2, 1);
                set_env[nenv++] = o->env;
            }
        } else {
            argv[argc++] = p;
        }
        p += len + 1;
    }
    argv[argc] = NULL;

    const size_t need = bytes_needed(sp);
    void *cfg = malloc(need);
    memset(cfg, 0xa5, need);
    cli_args args;
    cli_result r = cli_parse(&args, sp, cfg, argc, argv);
    if (r != CLI_OK && r != CLI_HELP && r != CLI_USAGE)
        abort();
    if (r == CLI_OK)
        cli_print_config(&args, devnull, "# ");
    for (int i = 0; i < nenv; ++i)
        unsetenv(set_env[i]);
    free(cfg);
    free(text);
    return 0;
}
