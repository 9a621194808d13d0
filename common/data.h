/*
 * data.h - token-id files: whitespace-separated non-negative integers, any number per line.
 */
#ifndef RLHF_DATA_H
#define RLHF_DATA_H

#include <stddef.h>

/*
 * Reads every token id of `path` into a malloc'ed array (*ids, caller frees) of *n entries.
 * Ids must be integers in [0, vocab) (vocab <= 0: no upper bound). A bad entry is RL_EFORMAT
 * with a detail "PATH:LINE: ..." quoting it. An empty file gives *n = 0 and success.
 */
int data_read_tokens(const char *path, int vocab, int **ids, size_t *n);

#endif
