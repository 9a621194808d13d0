/* cmd_rm.c - placeholder: being written */
#include <stdio.h>

#include "cli.h"

int cmd_train_rm(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "rlhf: not implemented yet\n");
    return 1;
}

int cmd_eval_rm(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "rlhf: not implemented yet\n");
    return 1;
}

int cmd_score(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "rlhf: not implemented yet\n");
    return 1;
}

