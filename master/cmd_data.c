/* cmd_data.c - placeholder: being written */
#include <stdio.h>

#include "cli.h"

int cmd_annotate(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "rlhf: not implemented yet\n");
    return 1;
}

int cmd_aggregate(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "rlhf: not implemented yet\n");
    return 1;
}

int cmd_pairs(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "rlhf: not implemented yet\n");
    return 1;
}

int cmd_import_pairs(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "rlhf: not implemented yet\n");
    return 1;
}

