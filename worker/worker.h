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

/* How a failed job is reported (JobReject): deterministic (the job's input is at fault: running
 * it again fails the same way), environment (an operator or waiting may cure it: a directory not
 * writable, a full disk) or transient (anything else: retried). */
typedef enum {
    WORKER_VERDICT_AUTO = 0, /* derived from the error (worker_reject_classify) */
    WORKER_VERDICT_TRANSIENT,
    WORKER_VERDICT_DETERMINISTIC,
    WORKER_VERDICT_ENVIRONMENT,
} worker_verdict_t;

typedef struct {
    uint64_t job_id, seed;
    uint32_t attempt;
    atomic_int *cancel; /* set by the main thread: stop early, the result will be discarded */
    /* a handler whose failure classifies otherwise than its error code says sets *verdict
     * (worker_verdict_t; AUTO on entry) */
    int *verdict;
    /* the live weights snapshot (wsync.h) the job runs with, held for the whole job: version 0
     * means none was fetched and a handler uses its model directory's own weights */
    uint64_t weights_version;
    const void *weights;
    size_t weights_bytes;
    const char *master;    /* the endpoint of the master this worker serves */
    const char *blob_ep;   /* its artifact server (Welcome.blob_endpoint; "" before the Welcome) */
    const char *cache_dir; /* this worker's --cache-dir */
} worker_job_t;

/* The copies a job's spec was made to name (worker_localize), and the publisher's path of each:
 * an error about a copy is shown with the file the user knows. */
#define WORKER_MAX_NAMES 8
typedef struct {
    char local[WORKER_MAX_NAMES][1024], origin[WORKER_MAX_NAMES][1024];
    int n;
} worker_names_t;

/* msg (cap bytes) with every local copy's path replaced by its publisher's path. */
void worker_names_rewrite(const worker_names_t *nm, char *msg, size_t cap);

/* Where a job's artifacts come from and go (worker_fetch.c): the worker's cache (a blob store in
 * --cache-dir; NULL: references cannot be resolved), the master's artifact server, the
 * learner's --ckpt-root (NULL: checkpoints where the spec names them). */
struct blob_store;
typedef struct {
    struct blob_store *cache;
    const char *blob_ep;
    const char *ckpt_root;
    void *zctx;
    const atomic_int *cancel;
    uint64_t *fetched;     /* += the bytes fetched over the wire (may be NULL) */
    worker_names_t *names; /* gets the copies and their publisher's paths (may be NULL) */
} worker_artifacts_t;

/* A job's payload made local (worker_fetch.c): every content reference in the spec of `kind`
 * replaced by the path of its verified copy in the cache (fetched when missing), a TRAIN job's
 * ckpt_dir moved under ckpt_root. *out: the new payload (malloc'ed), or NULL when the spec is
 * unchanged (or does not decode: the handler says so). Returns 0 or RL_E* (RL_ENOTFOUND: the
 * master's host does not have it; RL_EIO / RL_EPROTO: the transfer failed). */
int worker_localize(const worker_artifacts_t *a, int kind, const uint8_t *payload, size_t len,
                    uint8_t **out, size_t *out_len);

/* After a TRAIN job whose spec asks export_model: the model of the checkpoint named in the
 * output (model/, or policy/ for PPO) pushed to the master's artifact server and its reference
 * set in the output's model_ref (*out replaced). 0 for any other job. Returns 0 or RL_E*. */
int worker_export(const worker_artifacts_t *a, int kind, const uint8_t *spec, size_t spec_len,
                  uint8_t **out, size_t *out_len);

/* Each role's state between jobs, owned by the worker's main state (worker_main.c) and passed
 * to the handlers that may touch it; nothing of a role lives in file-level globals. */
typedef struct rollout_state rollout_state_t; /* worker_generate.c: the cached model and pack */
typedef struct score_state score_state_t;     /* worker_score.c: reward and reference models */
typedef struct learner learner_t;             /* worker_learner.c: LM/RM training state */
typedef struct ppo_state ppo_state_t;         /* worker_ppo.c: policy, value, PPO state */

/* The states of one worker process: those of its role are set, the others NULL. */
typedef struct {
    rollout_state_t *rollout;
    score_state_t *score;
    learner_t *learner;
    ppo_state_t *ppo;
} worker_state_t;

/* A handler: returns 0 with *out (malloc'ed, packed output message) and *out_len, or a
 * negative RL_E* code with the detail in rl_errmsg(); RL_EINVAL-class errors are the job's
 * fault and are reported to the master as a rejection. It touches only the role states it is
 * given (see the table in worker_jobs.c). */
typedef int (*worker_handler_fn)(worker_state_t *st, const worker_job_t *job,
                                 const uint8_t *payload, size_t len, uint8_t **out,
                                 size_t *out_len);

/* The classification of a failed job (worker_reject.c): `code` the handler's return (0: handed
 * back), `root` and `sys_errno` the root cause's code and errno (rl_errcode(), rl_errno() on the
 * job's thread), `verdict` what the handler said (worker_verdict_t). Sets *deterministic for
 * errors of the job's input (RL_EFORMAT, RL_EINVAL, RL_ENOTFOUND, RL_EUNSUPPORTED, RL_ERANGE)
 * and *environment for a write refused by the system (EACCES, EPERM, EROFS, ENOSPC, EDQUOT);
 * both 0 (transient) for the rest: out of memory, I/O, lost shards, timeouts, cancellation. */
void worker_reject_classify(int code, int root, int sys_errno, int verdict, int *deterministic,
                            int *environment);

/* The handler for `kind` on `role` (Rlhf__Role, Rlhf__JobKind), or NULL. */
worker_handler_fn worker_handler(int role, int kind);

/* Job kinds `role` can run, written to kinds[] (room for 32); returns how many. */
int worker_capabilities(int role, int *kinds);

/* ---- rollout (worker_generate.c) ---- */

/* A rollout worker's state with no model loaded yet; NULL (RL_ENOMEM) on failure. */
rollout_state_t *rollout_state_new(void);

/* Frees the cached model and its pack; accepts NULL and nulls *rp. */
void rollout_state_destroy(rollout_state_t **rp);

/* GENERATE: greedy continuation of the prompt's token ids with the model in spec.model_dir
 * (loaded once into r and kept while the directory stays the same). */
int worker_generate(rollout_state_t *r, const worker_job_t *job, const uint8_t *payload, size_t len,
                    uint8_t **out, size_t *out_len);

/* ---- reward (worker_score.c) ---- */

/* A reward worker's state with no model loaded yet; NULL (RL_ENOMEM) on failure. */
score_state_t *score_state_new(void);

/* Frees the reward and reference models; accepts NULL and nulls *sp. */
void score_state_destroy(score_state_t **sp);

/* SCORE: reward-model scores and reference logprobs of <prompt, completion> items
 * (ScoreSpec -> ScoreOutput); both models are loaded once into s and kept, and so is a reward
 * program's process (align/rprog.h), whose per-item failures are in the output, not errors. */
int worker_score(score_state_t *s, const worker_job_t *job, const uint8_t *payload, size_t len,
                 uint8_t **out, size_t *out_len);

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
 * Call once, on the main thread, before any job. Returns the state, or NULL with the reason in
 * rl_errmsg(). */
learner_t *learner_new(const worker_learner_opts_t *o);

/* Closes the shard socket and frees the learner's state; accepts NULL and nulls *lp. */
void learner_destroy(learner_t **lp);

/* Runs shard o->index >= 1 until *stop is set: connects to shard 0, beats, computes the slices
 * it is sent. Returns the process exit status. */
int worker_learner_shard_main(const worker_learner_opts_t *o, volatile sig_atomic_t *stop);

/* TRAIN (shard 0): TrainSpec -> TrainOutput. Kinds LM and RM: n_steps optimizer steps from the
 * learner's state l, a checkpoint written before the result is returned; kind PPO: worker_ppo
 * on ps. */
int worker_train(learner_t *l, ppo_state_t *ps, const worker_job_t *job, const uint8_t *payload,
                 size_t len, uint8_t **out, size_t *out_len);

/* ---- PPO (worker_ppo.c) ---- */

/* The PPO learner's state: where to announce new weights (the master) and keep checkpoints
 * (run_dir); its weights server binds bind_host (NULL or "": the loopback) and is announced at
 * `advertise` (net/addr.h). A restarted learner loads its newest checkpoint here and publishes
 * its policy at once. Call on the learner's main thread before any job. NULL (RL_ENOMEM) on
 * failure. */
ppo_state_t *ppo_state_new(const char *master, const char *run_dir, const char *bind_host,
                           const char *advertise);

/* Frees the models, states and weights server, stops the announcer; accepts NULL, nulls *pp. */
void ppo_state_destroy(ppo_state_t **pp);

/* Another training takes the learner (one learner serves several trainings in turn): drops the
 * PPO state (models, optimizer, last result) and stops serving its weights (nothing is announced
 * until the next publish, from a new weights endpoint, so a fetcher never gets the old
 * training's weights under the new one's version numbers); its checkpoints are in run_dir from
 * now on, loaded by the next PPO job. Returns 0 or RL_E*. */
int ppo_state_switch(ppo_state_t *ps, const char *run_dir);

/* TRAIN of kind PPO: one iteration's update, the new weights published and announced; with
 * S > 1 learner shards (hub: shard 0's, worker_shard.h) each minibatch step's gradient is
 * computed by the shards, one node of its tree each. */
struct Rlhf__TrainSpec;
struct shard_hub;
int worker_ppo(ppo_state_t *ps, struct shard_hub *hub, const worker_job_t *job,
               const struct Rlhf__TrainSpec *sp, uint8_t **out, size_t *out_len);

/* ---- stage (worker_stage.c) ---- */

/* STAGE: one stage command of a run as a child process `rlhf ARGV...` (StageSpec ->
 * StageOutput); see the file's comment for the environment, the log and the outcomes. */
int worker_stage(const worker_job_t *job, const uint8_t *payload, size_t len, uint8_t **out,
                 size_t *out_len);

/* The error line of a command's log text: the last line starting with "rlhf ", else the last
 * non-empty one (trailing blanks removed; a "see `rlhf CMD --help`" hint skipped), into out (cap
 * bytes; "" if none). */
void worker_stage_error_line(const char *text, char *out, size_t cap);

#endif
