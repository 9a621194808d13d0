/*
 * cli.h - shared pieces of the `rlhf` command line: the subcommand table entry, option-value
 * parsing with errors that name the option, timing and JSON output.
 */
#ifndef RLHF_CLI_H
#define RLHF_CLI_H

#include <limits.h>
#include <signal.h>
#include <stddef.h>

#include <jansson.h>

#include "align/ppo.h"
#include "cli_opts.h"
#include "net/client.h"
#include "nn/gpt.h"
#include "nn/tok.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} cli_cmd_t;

/* The exit status of a command that failed on its environment (EX_TEMPFAIL): a write refused by
 * the system (permission denied, read-only, disk full, quota): waiting or an operator may cure
 * it, so a run pauses rather than fails. */
#define CLI_EXIT_ENVIRONMENT 75

/* Prints "rlhf CMD: MESSAGE: rl_errmsg()" for a failed library call and returns its exit status:
 * CLI_EXIT_ENVIRONMENT when the failure was a write the system refused (rl_errno()), else 1. */
int cli_fail(const char *cmd, const char *what, int rc);

/* Prints `obj` as one line of JSON on stdout and releases it. Returns 0, or 1 (with a message
 * on stderr) if obj is NULL or cannot be serialised - json_pack returns NULL for NaN/Inf. */
int cli_print_json(json_t *obj);

/* Monotonic wall-clock milliseconds. */
double cli_now_ms(void);

/* qsort comparator for doubles, and the median of v[0..n) (sorts v in place). */
int cli_cmp_double(const void *a, const void *b);
double cli_median(double *v, int n);

/* Unknown option / missing argument: prints usage hint and returns 2. */
int cli_usage_error(const char *cmd);

/*
 * A prompt record's text: its "prompt" string as written, or its "messages" ([{"role",
 * "content"}, ...]) rendered through the model's chat template with the generation prompt
 * (tokenizer_config.json's chat_template; nn/tok.h tok_chat_render), as Hugging Face's
 * apply_chat_template(messages, add_generation_prompt=True) gives it. *text: malloc'ed (caller
 * frees), to be encoded with tok_text_special. Errors name `where`: neither key, a malformed
 * message, or messages for a model without a chat template.
 */
int cli_prompt_text(const tok_t *t, json_t *rec, const char *where, char **text, size_t *len);

int cmd_init_model(int argc, char **argv);
int cmd_eval_lm(int argc, char **argv);
int cmd_train_lm(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_generate(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_tokenizer_train(int argc, char **argv);
int cmd_up(int argc, char **argv);
int cmd_status(int argc, char **argv);       /* cmd_runs.c */
int cmd_status_local(int argc, char **argv); /* cmd_local.c: rlhf status --run-dir DIR */
int cmd_down(int argc, char **argv);
int cmd_keygen(int argc, char **argv);
/* The key this command's connections use (net/sec.h), set up once: a local cluster's own
 * (CLUSTER_DIR/keys/client.key; plaintext when the cluster has no keys) when cluster_dir is
 * given, else --key/$RLHF_KEY, $RLHF_KEYS/client.key, or plaintext with $RLHF_INSECURE=1.
 * Returns 0 or RL_E* (no key: the message says how to get one). cmd_keygen.c. */
int cli_security(const char *cluster_dir);
int cmd_bench_wire(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_ppo(int argc, char **argv);
int cmd_eval_policy(int argc, char **argv);
int cmd_report(int argc, char **argv);         /* cmd_report.c */
int cmd_sft(int argc, char **argv);            /* cmd_sft.c */
int cmd_task(int argc, char **argv);           /* cmd_task.c */
int cmd_gold_judge(int argc, char **argv);     /* cmd_task.c */
int cmd_generate(int argc, char **argv);       /* cmd_generate.c */
int cmd_annotate(int argc, char **argv);       /* cmd_data.c */
int cmd_annotators(int argc, char **argv);     /* cmd_annotators.c */
int cmd_annotate_close(int argc, char **argv); /* cmd_annotators.c: rlhf annotate close */
int cmd_aggregate(int argc, char **argv);      /* cmd_data.c */
int cmd_pairs(int argc, char **argv);          /* cmd_data.c */
int cmd_import_pairs(int argc, char **argv);   /* cmd_data.c */
int cmd_train_rm(int argc, char **argv);       /* cmd_rm.c */
int cmd_dpo(int argc, char **argv);            /* cmd_dpo.c */
int cmd_eval_rm(int argc, char **argv);        /* cmd_rm.c */
int cmd_score(int argc, char **argv);          /* cmd_rm.c */
int cmd_ppo_prep(int argc, char **argv);       /* cmd_ppo.c */
int cmd_runs(int argc, char **argv);           /* cmd_runs.c */
int cmd_logs(int argc, char **argv);           /* cmd_runs.c */
int cmd_cancel(int argc, char **argv);         /* cmd_runs.c */
int cmd_wait(int argc, char **argv);           /* cmd_runs.c */

/*
 * Submits the run `name` with plan_json (master/master_run.h) to the master at endpoint and,
 * unless detach, follows it: the run log copied to stderr as it grows, on a terminal one
 * progress line (stage, progress, ETA), until the run ends. Messages read "rlhf CMD: ...".
 * data_dir non-NULL (local mode: endpoint is the local cluster of data_dir): a master silent for
 * a few seconds has the cluster made sure of again (local_cluster_ensure), so that the run goes
 * on when the supervisor, and the cluster with it, died; the new master's endpoint is followed.
 * Returns the exit status: 0 succeeded (or submitted, with detach), 1 failed or cancelled or the
 * master gone for more than 60 s, 2 the master rejected the plan, 130 detached by Ctrl-C.
 */
int runs_submit(const char *cmd, const char *endpoint, const char *data_dir, const char *name,
                const char *plan_json, int detach);

/* The option tables of the commands `rlhf run` drives as stages (cli_opts.h): their parsing,
 * --help and the stages' configuration keys. */
extern const cli_opts_t cli_task_opts;            /* cmd_task.c */
extern const cli_opts_t cli_tokenizer_train_opts; /* cmd_tok.c */
extern const cli_opts_t cli_init_model_opts;      /* cmd_model.c */
extern const cli_opts_t cli_sft_opts;             /* cmd_sft.c */
extern const cli_opts_t cli_generate_opts;        /* cmd_generate.c */
extern const cli_opts_t cli_annotate_opts;        /* cmd_data.c */
extern const cli_opts_t cli_aggregate_opts;       /* cmd_data.c */
extern const cli_opts_t cli_pairs_opts;           /* cmd_data.c */
extern const cli_opts_t cli_train_rm_opts;        /* cmd_rm.c */
extern const cli_opts_t cli_dpo_opts;             /* cmd_dpo.c */
extern const cli_opts_t cli_eval_rm_opts;         /* cmd_rm.c */
extern const cli_opts_t cli_eval_policy_opts;     /* cmd_eval.c */
extern const cli_opts_t cli_report_opts;          /* cmd_report.c */
extern const cli_opts_t cli_ppo_opts;             /* cmd_ppo.c */
extern const cli_opts_t cli_run_opts;             /* cmd_run.c */

/* The PPO settings as `rlhf ppo` starts from them: ppo_config_default() with reward-model
 * scores normalised (score_norm = norm). */
void ppo_cli_config_default(ppo_config_t *pc);

/* Local-mode helpers (cmd_local.c), shared with `rlhf bench wire`. */

/* out = the path of the program `name` in the directory of the running `rlhf` binary. */
void local_bin_path(char *out, size_t n, const char *name);

/*
 * `rlhf up` in dir with rollout and reward workers and, when shards > 0, one learner of that
 * many shards keeping its checkpoints in ldir; *ep (n bytes) gets the master's endpoint. The
 * cluster runs in the background until local_cluster_down(dir). Returns 0 or RL_EIO.
 */
int local_cluster_up(const char *dir, const char *ldir, int rollout, int reward, int shards,
                     char *ep, size_t n);

/* `rlhf down` for dir; nothing running there is fine. */
void local_cluster_down(const char *dir);

/*
 * The long-lived local cluster serving data_dir (the runs' directories): when one runs (its
 * supervisor alive in DATA_DIR/.cluster and its master answering, waited for up to 15 s while it
 * restarts), *ep (n bytes) gets its master's endpoint; otherwise one is started there first (a
 * master with --data-dir DATA_DIR, 2 rollout, 1 reward, 1 learner and 1 stage worker) that
 * outlives the caller (`rlhf down --data-dir DATA_DIR` stops it). Concurrent callers, in this or
 * other processes, serialise on DATA_DIR/.cluster/lock: one cluster per data directory. Returns 0
 * or RL_EIO with the reason in rl_errmsg().
 */
int local_cluster_ensure(const char *data_dir, char *ep, size_t n);

/* local_cluster_ensure with a learner of `shards` learner shards (0: whatever the cluster has,
 * 1 when it starts one): a running cluster with another count is restarted with this one. */
int local_cluster_ensure_shards(const char *data_dir, int shards, char *ep, size_t n);

/* `rlhf cluster-ensure --data-dir DIR` (hidden): local_cluster_ensure, printing {"endpoint"}. */
int cmd_cluster_ensure(int argc, char **argv);

/*
 * A stage command's cluster. With RLHF_MASTER set in the environment (a stage run by a stage
 * worker), a client of that master in the job namespace RLHF_NS; nothing is started and the
 * signal handlers are left alone. Otherwise the driver's own cluster in RUN_DIR/cluster: started
 * (replacing one a killed driver left behind), stopped by SIGINT/SIGTERM until closed, and a
 * client connected to its master; rollout, reward and shards say what it runs (with
 * RLHF_MASTER they are the cluster's business and ignored). In both modes trainings keep their
 * checkpoints in `learner`, RUN_DIR/learner as an absolute path (local_train_job sends it as the
 * TrainSpec's ckpt_dir). local_session_close() closes the client, and stops the cluster and
 * restores the handlers when the session started them.
 */
struct blob_store;
typedef struct {
    char cluster[PATH_MAX + 16], learner[PATH_MAX + 16], endpoint[256];
    client_t *client;
    struct blob_store *cache; /* local_publish / local_fetch: opened on first use */
    char blob_ep[320];
    struct sigaction old_int, old_term;
    int handlers;
    int threads; /* TrainSpec.threads: what a lone learner of these shards had on this machine */
} local_session_t;
int local_session_open(local_session_t *s, const char *run_dir, int rollout, int reward, int shards,
                       const char *who);
void local_session_close(local_session_t *s);

/*
 * A stage command's artifacts (net/blob.h) go to the master's host and come back over the wire,
 * never through a shared disk. local_publish puts `path` (a model directory or a dataset file)
 * in the command's cache and pushes it to the master's artifact server; name gets its content
 * reference with the path for messages ("sha256:...@PATH", blob_name_parse), which specs name
 * instead of the path. local_fetch materialises a reference (a
 * training's exported model) from the artifact server into the cache; path gets its copy. The
 * cache is RLHF_CACHE_DIR (set by the stage worker) or RUN_DIR/cluster/cache; the artifact
 * server is RLHF_BLOB (set by the stage worker) or the master's Welcome. Return 0 or RL_E*.
 */
int local_publish(local_session_t *s, const char *path, char *name, size_t cap);
int local_fetch(local_session_t *s, const char *ref, char *path, size_t cap);

/* local_publish for a command without a session (`rlhf ppo-prep`, run by a stage worker): with
 * RLHF_BLOB and RLHF_CACHE_DIR set, publishes and sets name; without them, name = "" and nothing is
 * done (the master reads paths on its own disk). Returns 0 or RL_E*. */
int local_publish_env(const char *path, char *name, size_t cap);

/* Submits one TRAIN job (spec: a Rlhf__TrainSpec) to the session's learner and waits for it;
 * *out gets its decoded output (free with rlhf__train_output__free_unpacked). Returns 0, or
 * RL_EIO when the job failed or its output does not decode, or the client's RL_E*. */
struct Rlhf__TrainOutput;
int local_train_job(local_session_t *s, uint64_t id, uint64_t seed, const void *spec,
                    struct Rlhf__TrainOutput **out);

/* The learner's newest checkpoint in ldir (named by ldir/latest, ckpt-POSITION; with ppo
 * ldir/ppo-latest, ppo-ckpt-POSITION: see worker/worker_ckpt.h): path (cap bytes) gets its
 * directory, or with `model` that of its model `model` ("model" of an LM/RM learner, "policy" or
 * "value" of a PPO one), and *pos (when pos is not NULL) its position, the step or iteration it was
 * taken at. Returns 0, fs_read_all's RL_E*, or RL_EFORMAT when `latest` names no checkpoint. */
int local_learner_latest(const char *ldir, int ppo, const char *model, char *path, size_t cap,
                         long *pos);

#endif
