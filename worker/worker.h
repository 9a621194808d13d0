/*
 * worker.h - rlhf-worker's job handlers. One table per role (worker_jobs.c) maps a job kind to
 * a handler; the handler runs on the worker's job thread, turns the kind-specific payload (a
 * packed spec message) into a packed output message, and polls `cancel` so that a SIGTERM can
 * hand the job back quickly. Handlers are pure functions of (payload, seed, weights): the same
 * job gives the same output on any worker, on any attempt.
 */
#ifndef RLHF_WORKER_H
#define RLHF_WORKER_H

#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t job_id, seed;
    uint32_t attempt;
    atomic_int *cancel; /* set by the main thread: stop early, the result will be discarded */
    /* the live weights snapshot (wsync.h) the job runs with, held for the whole job: version 0
     * means none was fetched and a handler uses its model directory's own weights */
    uint64_t weights_version;
    const void *weights;
    size_t weights_bytes;
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

/* SCORE: reward-model scores and reference logprobs of <prompt, completion> items
 * (ScoreSpec -> ScoreOutput); both models are loaded once and kept. */
int worker_score(const worker_job_t *job, const uint8_t *payload, size_t len, uint8_t **out,
                 size_t *out_len);

/* Frees the reward and reference models. */
void worker_score_cleanup(void);

/* ---- learner (worker_learner.c): TRAIN jobs on S gradient shards, see the file's comment ---- */

#define WORKER_LEARNER_MAX_SHARDS 64

typedef struct {
    int index, n_shards;  /* --shard I/S: 0/1 when not sharded */
    const char *endpoint; /* --shard-endpoint: shard 0 binds it, shards 1..S-1 connect to it */
    const char *run_dir;  /* --run-dir: shard 0's checkpoints, metrics.jsonl, learner.json */
    const char *id;       /* the worker's name, for the log */
    int hb_ms, liveness;  /* shard beats; a shard silent for hb_ms * liveness is lost */
    int wait_ms;          /* --shard-wait-ms: how long shard 0 waits for a lost shard */
    int threads;          /* compute threads of a shard's slice */
    int chunk_kib;        /* --shard-chunk-kib: arenas travel in frames of this size (16384) */
} worker_learner_opts_t;

/* Shard 0 (or an unsharded learner): remembers the options, creates the run directory and, with
 * S > 1, binds the shard socket and writes RUN_DIR/learner.json {"endpoint", "shards", "pid"}.
 * Call once, on the main thread, before any job. Returns 0 or RL_E*. */
int worker_learner_start(const worker_learner_opts_t *o);

/* PPO updates (worker_ppo.c): where to announce new weights and keep checkpoints. Call once on
 * the learner's main thread before any job. */
void worker_ppo_setup(const char *master, const char *run_dir);

/* TRAIN of kind PPO: one iteration's update, the new weights published and announced. */
struct Rlhf__TrainSpec;
int worker_ppo(const worker_job_t *job, const struct Rlhf__TrainSpec *sp, uint8_t **out,
               size_t *out_len);

/* Frees the PPO learner's models, states and weights server. */
void worker_ppo_cleanup(void);

/* Closes the shard socket and frees the learner's state; safe if never started. */
void worker_learner_stop(void);

/* Runs shard o->index >= 1 until *stop is set: connects to shard 0, beats, computes the slices
 * it is sent. Returns the process exit status. */
int worker_learner_shard_main(const worker_learner_opts_t *o, volatile sig_atomic_t *stop);

/* TRAIN (shard 0): TrainSpec -> TrainOutput, n_steps optimizer steps from the learner's state;
 * a checkpoint is written before the result is returned. */
int worker_train(const worker_job_t *job, const uint8_t *payload, size_t len, uint8_t **out,
                 size_t *out_len);

#endif
