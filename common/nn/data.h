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

/*
 * data_read_tokens() on len bytes already in memory, followed by a NUL at buf[len] (as
 * fs_read_all leaves them); `label` names them in errors ("LABEL:LINE: ..."), e.g. "stdin".
 */
int data_parse_tokens(const char *buf, size_t len, const char *label, int vocab, int **ids,
                      size_t *n);

#endif
