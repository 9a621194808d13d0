/*
 * master_run.h - (prefix mrun_) the runs a master owns: each a pipeline of stages, run as jobs,
 * with the PPO loop (GENERATE -> SCORE -> UPDATE -> publish) as a state machine on the
 * master's loop. Model math never runs here: every stage's work is a job for a worker.
 *
 * A run is submitted as a PLAN (JSON, compiled by `rlhf run` from its YAML config; cmd_run.c):
 *   {"name": "demo", "seed": 1, "cwd": "/abs", "config": "deploy/demo.yaml",
 *    "config_json": {...the resolved configuration...}, "only": "STAGE" (optional),
 *    "stages": [{"name": "task", "summary": "...", "weight": 1,
 *                "argv": ["task", "--out", "{run}/task", ...], "stdout_to": "{run}/x.json"}, ...]}
 * and lives in DATA_DIR/NAME (the run directory, `{run}` in argv): config.json, run.log (what
 * `rlhf logs` shows), logs/STAGE.log (each stage command's output), stages/STAGE.json (a stage
 * finished: skipped when the run is submitted again), and each stage's outputs.
 *
 * Stages. One at a time, in order. A stage is a STAGE job ("@NAME", id = stage index + 1) that
 * a stage worker runs as `rlhf ARGV...` in the plan's cwd, with its own jobs (sft's TRAIN jobs,
 * generate's GENERATE jobs) submitted to this master under the namespace "NAME/STAGE". A
 * PPO-kind stage (argv[0] "ppo": the ppo stage, grpo) is different: a STAGE job runs `rlhf
 * ppo-prep` (models checked, prompts tokenised: OUT/ppo_plan.json and OUT/ppo_prompts.jsonl),
 * then the master runs the iterations itself, as jobs with the ids, seeds and specs `rlhf ppo`
 * always used, and at the end copies the learner's last policy to OUT/policy. A run may hold
 * several, each with its own loop: its jobs in "@NAME/ppo" for the plan's first PPO-kind stage
 * (as runs with one always had them) and "@NAME/STAGE" for the others, its own committed
 * iterations and journal records (JournalIteration.stage).
 *
 * Iterations. Iteration i: an ATTACH job when the learner may not hold this training at i (a
 * PPO TRAIN job without rollouts: the learner loads the training's newest checkpoint, publishes
 * its weights and says which iteration it is at; behind i - it restarted from an older
 * checkpoint - the iterations after that one are undone and run again, identically); GENERATE
 * jobs with policy version i on rollout workers; SCORE jobs on reward workers; one TRAIN job on
 * the learner, which publishes version i + 1. The iteration commits in the journal with its
 * metrics line, and its jobs are forgotten. OUT/metrics.jsonl is rewritten from the committed
 * lines, so it never holds a line twice or a line of an undone iteration.
 *
 * Failures. A job rejected as deterministic (its input is bad) fails the run at once with the
 * worker's reason; the run's status, `rlhf run` and `rlhf wait` show it. Submitting the run
 * again (after the input is fixed) runs the failed jobs again: a recorded failure never poisons
 * the rerun. A transient rejection is retried with a growing pause and never fails the run; an
 * environment error (a directory not writable) pauses the run with the reason until the job, or
 * the master's own write, succeeds.
 *
 * One run is active at a time (the learner holds one training at a time); others wait queued,
 * in submission order.
 */
#ifndef RLHF_MASTER_RUN_H
#define RLHF_MASTER_RUN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "master.h"

/* Submits (or resubmits) a run. A known name continues that run; a failed or cancelled one is
 * queued again and its failed jobs run again. Returns the run's index, or -1 with why. */
int mrun_submit(master_t *m, const char *name, const char *plan_json, char *why, size_t n);

/* The run named name, or -1. */
int mrun_find(const master_t *m, const char *name);

/* Cancels a run that has not finished. Returns 0, or -1 with why. */
int mrun_cancel(master_t *m, int r, char *why, size_t n);

/* The state run r ended in ("succeeded", "failed", "cancelled"), or NULL while it has not. */
const char *mrun_ended(const master_t *m, int r);

/* The status object of run r (rlhf status --json), or {"runs": [...]} with r < 0. */
json_t *mrun_status(master_t *m, int r);

/* The committed PPO iterations' metrics lines of run r (what OUT/metrics.jsonl holds), parsed:
 * a new JSON array, for the dashboard's curves. Those of its running PPO-kind stage, else of the
 * one that ran last (or of the plan's first). */
json_t *mrun_metrics(master_t *m, int r);

/* Up to max bytes of run r's log from offset off: *buf (malloc'ed), *len, *next = off + len.
 * Returns 0 or RL_E*. */
int mrun_log_read(master_t *m, int r, uint64_t off, size_t max, uint8_t **buf, size_t *len,
                  uint64_t *next);

/* A job of run jb->run ended: done (ok, its output in the journal), or rejected by its worker
 * with reason and class (deterministic: bad input; environment: waiting may cure it). The
 * caller has updated the scheduler already. */
void mrun_job_end(master_t *m, sched_job_t *jb, int ok, const char *reason, int deterministic,
                  int environment);

/* A learner (re)registered: the active PPO loop asks it where it stands before going on. */
void mrun_learner_hello(master_t *m);

/* Advances every run as far as it can go now. */
void mrun_tick(master_t *m);

/* A journal record of a run (JournalRun, JournalRunState, JournalIteration) replayed at start.
 * Returns 0 or RL_E*. */
struct Rlhf__JournalRecord;
int mrun_replay(master_t *m, const struct Rlhf__JournalRecord *rec);

/* After replay: re-reads what the active runs need (PPO plans), rewrites metrics files. */
void mrun_resume(master_t *m);

/* Writes the runs' live state into a snapshot (journal_compact's writer). Returns 0 or RL_E*. */
int mrun_snapshot(master_t *m, journal_t *j);

/* Frees the runs. */
void mrun_free(master_t *m);

#endif
