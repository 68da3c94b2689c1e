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

#endif
