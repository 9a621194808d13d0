/*
 * worker.h - rlhf-worker's job handlers. One table per role (worker_jobs.c) maps a job kind to
 * a handler; the handler runs on the worker's job thread, turns the kind-specific payload (a
 * packed spec message) into a packed output message, and polls `cancel` so that a SIGTERM can
 * hand the job back quickly. Handlers are pure functions of (payload, seed, weights): the same
 * job gives the same output on any worker, on any attempt.
 */
#ifndef RLHF_WORKER_H
#define RLHF_WORKER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t job_id, seed;
    uint32_t attempt;
    atomic_int *cancel; /* set by the main thread: stop early, the result will be discarded */
} worker_job_t;

/* A handler: returns 0 with *out (malloc'ed, packed output message) and *out_len, or a
 * negative RL_E* code with the detail in rl_errmsg(); RL_EINVAL-class errors are the job's
 * fault and are reported to the master as a rejection. */
typedef int (*worker_handler_fn)(const worker_job_t *job, const uint8_t *payload, size_t len,
                                 uint8_t **out, size_t *out_len);

/* The handler for `kind` on `role` (Rlhf__Role, Rlhf__JobKind), or NULL. */
worker_handler_fn worker_handler(int role, int kind);

/* Job kinds `role` can run, written to kinds[] (room for 32); returns how many. */
int worker_capabilities(int role, int *kinds);

/* GENERATE: greedy continuation of the prompt's token ids with the model in spec.model_dir
 * (loaded once and kept while the directory stays the same). */
int worker_generate(const worker_job_t *job, const uint8_t *payload, size_t len, uint8_t **out,
                    size_t *out_len);

/* Frees the cached model. */
void worker_generate_cleanup(void);

#endif
