/*
 * jsonl.h - JSON Lines files: every stage input and output of the pipeline (prompts,
 * completions, annotations, pairs, metrics) is one JSON object per line.
 *
 * Reading parses with jansson and reports a malformed line as "PATH:LINE: ..." (RL_EFORMAT);
 * blank lines are skipped. Writing goes through fs_atomic_*, so an output file is either absent
 * or complete - a crash never leaves a torn file that a restarted stage would take as done.
 */
#ifndef RLHF_JSONL_H
#define RLHF_JSONL_H

#include <stddef.h>

#include <jansson.h>

#include "base/fs.h"

/* Called for each object of a file; `where` is "PATH:LINE" for error messages. Return 0 to go
 * on, a negative RL_E* code (recorded with rl_fail, naming `where`) to stop. `obj` is borrowed. */
typedef int (*jsonl_fn)(void *ctx, json_t *obj, const char *where);

/* Reads `path` line by line: each non-blank line must be a JSON object. Returns the number of
 * objects read, or the first negative code (a parse error is RL_EFORMAT "PATH:LINE: ..."). */
long jsonl_read(const char *path, jsonl_fn fn, void *ctx);

/* Same on len bytes in memory (NUL at buf[len]); `label` stands in for the path in errors. */
long jsonl_parse(const char *buf, size_t len, const char *label, jsonl_fn fn, void *ctx);

/* An atomic JSONL output: open, append objects, commit (or abort). */
typedef struct {
    fs_atomic_t f;
    long n; /* objects written */
} jsonl_writer_t;

int jsonl_open(jsonl_writer_t *w, const char *path);
/* Appends `obj` as one compact line and releases it (also on failure). */
int jsonl_write(jsonl_writer_t *w, json_t *obj);
int jsonl_commit(jsonl_writer_t *w);
void jsonl_abort(jsonl_writer_t *w);

/* Field helpers for readers: each fails with RL_EFORMAT "WHERE: KEY: ..." when the field is
 * missing or of the wrong type. Returned strings are borrowed from `obj`. */
int jsonl_get_str(json_t *obj, const char *key, const char *where, const char **out);
int jsonl_get_int(json_t *obj, const char *key, const char *where, long long lo, long long hi,
                  long long *out);
int jsonl_get_num(json_t *obj, const char *key, const char *where, double *out);

#endif
