/*
 * master_dump.h - (prefix master_dump_) reading a master's journal without a master: its
 * finished jobs as JSON lines (`rlhf-master --dump-results RUN_DIR`).
 */
#ifndef RLHF_MASTER_DUMP_H
#define RLHF_MASTER_DUMP_H

#include <stdio.h>

/* Writes one JSON line per job end recorded in RUN_DIR/journal (its snapshot, then its
 * segments) to out, in journal order: a job recorded twice shows twice. Only reads: safe while
 * a master runs there. Returns 0 or RL_E*. */
int master_dump_results(const char *run_dir, FILE *out);

#endif
