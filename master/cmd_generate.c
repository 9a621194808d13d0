/* cmd_generate.c - placeholder: being written */
#include <stdio.h>

#include "cli.h"

int cmd_generate(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "rlhf: not implemented yet\n");
    return 1;
}

