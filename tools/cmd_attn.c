#include "cmd.h"
int cmd_attn(int argc, char **argv) { (void)argc; (void)argv; return EXIT_RUNTIME; }
