/* cmd_sft.c - placeholder: being written */
#include <stdio.h>

#include "cli.h"

int cmd_sft(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "rlhf: not implemented yet\n");
    return 1;
}

int cmd_task(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "rlhf: not implemented yet\n");
    return 1;
}

