/*
 * cmd.h — the subcommands of the `cpattn` program.  Each takes the argument
 * vector after the subcommand name and returns the process exit code:
 * 0 success, 1 runtime failure, 2 bad usage.
 */
#ifndef CPATTN_TOOLS_CMD_H
#define CPATTN_TOOLS_CMD_H

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

int cmd_attn(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_algos(int argc, char **argv);
int cmd_preprocess(int argc, char **argv);
int cmd_trace_svg(int argc, char **argv); /* cmd_trace_svg.c: a trace's SVG timeline */
int cmd_plan(int argc, char **argv);
int cmd_export(int argc, char **argv); /* cmd_export.c: a checkpoint as a Hugging Face Llama folder */

/* The subcommands' flag tables (args.h), for the argument-parser fuzz
 * harness (tests/fuzz/fuzz_args.c). */
struct cli_spec;
const struct cli_spec *cmd_attn_spec(void);
const struct cli_spec *cmd_bench_spec(void);
const struct cli_spec *cmd_train_spec(void);

#endif
