/*
 * cmd_rm.c - reward-model commands: `rlhf train-rm` (Bradley-Terry training on a pairs file,
 * InstructGPT K-wise batches or plain pairwise ones), `rlhf eval-rm` (held-out pairwise
 * accuracy, against the annotators' agreement ceiling, calibration, reward statistics) and
 * `rlhf score` (the reward of one or two completions of a prompt).
 *
 * train-rm runs the same step the learner runs for RM jobs (rm_grad + rm_update,
 * common/align/rm.h): in process, or with --learner-shards S as TRAIN jobs on a learner of S shards
 * behind a local master (see "train-rm on the learner").
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "net/client.h"
#include "base/err.h"
#include "base/fs.h"
#include "nn/gpt.h"
#include "nn/hf.h"
#include "nn/ops.h"
#include "rlhf.pb-c.h"
#include "align/rm.h"
#include "nn/tok.h"
#include "nn/train.h"

/* ---- shared ---------------------------------------------------------------------------- */

/* A number, or JSON null when it is NaN/Inf (an empty split has no accuracy). */
static json_t *num_or_null(double x) {
    return isfinite(x) ? json_real(x) : json_null();
}

/* Loads the tokenizer of `dir` and checks that its ids fit the model. */
static tok_t *load_tokenizer(const char *dir, const gpt_t *m) {
    tok_t *tok = tok_load(dir);
    if (!tok) {
        rl_fail_ctx(RL_EIO, "%s: tokenizer", dir);
        return NULL;
    }
    if (tok_vocab_size(tok) > m->cfg.vocab_size) {
        rl_fail(RL_EINVAL, "%s: the tokenizer has %d ids but the model only %d", dir,
                tok_vocab_size(tok), m->cfg.vocab_size);
        tok_destroy(&tok);
        return NULL;
    }
    if (tok_eot(tok) < 0) {
        rl_fail(RL_EINVAL, "%s: the tokenizer has no <|endoftext|> token", dir);
        tok_destroy(&tok);
        return NULL;
    }
    return tok;
}

/*
 * The annotator-agreement ceiling from a stage-1 aggregate summary: a JSON object (the whole
 * file, or the last non-blank line of a JSONL file) with the number "pairwise_agreement".
 */
static int read_ceiling(const char *path, float *out) {
    char *buf = NULL;
    size_t len = 0;
    int rc = fs_read_file(path, 64 << 20, &buf, &len);
    if (rc < 0) return rc;
    json_error_t e;
    json_t *root = json_loadb(buf, len, 0, &e);
    if (!root) { /* JSONL: the last non-blank line */
        size_t end = len;
        while (end > 0 && (buf[end - 1] == '\n' || buf[end - 1] == '\r' || buf[end - 1] == ' '))
            end--;
        size_t start = end;
        while (start > 0 && buf[start - 1] != '\n') start--;
        root = json_loadb(buf + start, end - start, 0, &e);
    }
    free(buf);
    if (!root) return rl_fail(RL_EFORMAT, "%s: not JSON: %s", path, e.text);
    json_t *v = json_object_get(root, "pairwise_agreement");
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    json_decref(root);
    if (!(x > 0 && x <= 1))
        return rl_fail(RL_EFORMAT, "%s: expected a number \"pairwise_agreement\" in (0, 1]", path);
    *out = (float)x;
    return 0;
}

/* Metrics and reward statistics over the groups with sel[g] set (all when sel is NULL). */
typedef struct {
    int prompts;
    rm_metrics_t mt;
    rm_stats_t st; /* over the distinct completions of those groups */
    /* against the gold judge: the pairs it does not score equal, and the share of them whose
     * rewards order the two sides as the judge does (equal rewards: half) */
    long gold_pairs;
    double gold_accuracy;
} rm_eval_t;

static int eval_groups(gpt_t *m, const rm_data_t *d, const unsigned char *sel, int micro, int pad,
                       int bins, rm_eval_t *ev) {
    memset(ev, 0, sizeof *ev);
    int *idx = malloc((size_t)d->n_seqs * sizeof(int)), *pos = NULL, ns = 0;
    float *r = malloc((size_t)d->n_seqs * sizeof(float));
    float *rc = malloc((size_t)d->n_pairs * sizeof(float));
    float *rr = malloc((size_t)d->n_pairs * sizeof(float));
    pos = malloc((size_t)d->n_seqs * sizeof(int));
    int ret = idx && r && rc && rr && pos ? 0 : rl_fail(RL_ENOMEM, "evaluation");
    long np = 0;
    if (ret == 0) {
        for (int g = 0; g < d->n_groups; g++) {
            if (sel && !sel[g]) continue;
            ev->prompts++;
            for (int k = 0; k < d->groups[g].n_seq; k++) {
                pos[d->groups[g].seq0 + k] = ns;
                idx[ns++] = d->groups[g].seq0 + k;
            }
        }
        ret = rm_data_rewards(m, d, idx, ns, micro, pad, r);
    }
    if (ret == 0) {
        for (int p = 0; p < d->n_pairs; p++) {
            if (sel && !sel[d->pairs[p].group]) continue;
            rc[np] = r[pos[d->pairs[p].w]];
            rr[np] = r[pos[d->pairs[p].l]];
            float gd = d->pairs[p].gold;
            if (isfinite(gd) && gd != 0.0f) {
                float dr = gd > 0 ? rc[np] - rr[np] : rr[np] - rc[np];
                ev->gold_pairs++;
                ev->gold_accuracy += dr > 0 ? 1.0 : dr == 0 ? 0.5 : 0.0;
            }
            np++;
        }
        if (ev->gold_pairs) ev->gold_accuracy /= (double)ev->gold_pairs;
        rm_metrics(rc, rr, np, bins, &ev->mt);
        rm_stats_compute(r, ns, &ev->st);
    }
    free(idx);
    free(pos);
    free(r);
    free(rc);
    free(rr);
    return ret;
}

/* The evaluation summary object. ceiling <= 0: none given. */
static json_t *eval_json(const char *split, const rm_eval_t *ev, float ceiling, int gold) {
    json_t *o = json_object();
    if (!o) return NULL;
    json_object_set_new(o, "split", json_string(split));
    json_object_set_new(o, "prompts", json_integer(ev->prompts));
    json_object_set_new(o, "pairs", json_integer(ev->mt.pairs));
    json_object_set_new(o, "accuracy", num_or_null(ev->mt.accuracy));
    json_object_set_new(o, "ceiling", ceiling > 0 ? json_real(ceiling) : json_null());
    json_object_set_new(o, "accuracy_vs_ceiling",
                        ceiling > 0 ? num_or_null(ev->mt.accuracy / ceiling) : json_null());
    json_object_set_new(o, "loss", num_or_null(ev->mt.loss));
    json_object_set_new(o, "ece", num_or_null(ev->mt.ece));
    json_object_set_new(o, "ece_bins", json_integer(ev->mt.bins));
    json_object_set_new(o, "completions", json_integer(ev->st.count));
    json_object_set_new(o, "reward_mean", num_or_null(ev->st.mean));
    json_object_set_new(o, "reward_std", num_or_null(ev->st.std));
    if (gold) {
        json_object_set_new(o, "gold_pairs", json_integer(ev->gold_pairs));
        json_object_set_new(o, "accuracy_gold",
                            ev->gold_pairs ? num_or_null(ev->gold_accuracy) : json_null());
    }
    return o;
}

/* What was read from a pairs file and how it was split. */
static json_t *data_json(const char *path, const rm_data_t *d, int held_prompts, long held_pairs) {
    return json_pack("{s:s,s:I,s:i,s:i,s:i,s:I,s:I,s:i,s:I}", "pairs_file", path, "lines",
                     (json_int_t)d->n_lines, "prompts", d->n_groups, "pairs", d->n_pairs,
                     "completions", d->n_seqs, "skipped_identical", (json_int_t)d->n_skipped,
                     "truncated", (json_int_t)d->n_truncated, "heldout_prompts", held_prompts,
                     "heldout_pairs", (json_int_t)held_pairs);
}

/* Loads a directory that must already be a reward model (it has a scalar head). */
static gpt_t *load_rm(const char *dir) {
    gpt_t *m = hf_load(dir);
    if (m && !m->cfg.scalar_head) {
        rl_fail(RL_EINVAL, "%s: not a reward model (config.json has no rlhf_scalar_head)", dir);
        gpt_destroy(&m);
    }
    return m;
}

/* ---- train-rm -------------------------------------------------------------------------- */

typedef struct {
    const char *model, *pairs, *out, *ceiling_from, *run_dir;
    int pairwise, batch, micro, steps, epochs, warmup, max_len, log_every, save_every, bins;
    int threads, shards, steps_per_job, grad_blocks; /* shards 0: in process */
    float margin, center, frac, lr, min_lr, wd, clip, ceiling;
    long seed, split_seed;
    adamw_sched_kind_t kind;
} train_args_t;

/* Stats over every completion of the file, then the save. */
static int save_model(gpt_t *m, const rm_data_t *d, const train_args_t *a, int pad,
                      rm_stats_t *st) {
    rm_eval_t all;
    int rc = eval_groups(m, d, NULL, a->micro, pad, a->bins, &all);
    if (rc < 0) return rc;
    *st = all.st;
    return rm_save(m, st, a->model, a->out);
}

/* ---- train-rm on the learner -------------------------------------------------------------- */

/*
 * With --learner-shards S the steps run as TRAIN jobs of kind RM (one per --steps-per-job
 * steps) on a learner of S gradient shards behind a local master (`rlhf up` under RUN_DIR/
 * cluster, checkpoints in RUN_DIR/learner); jobs go through the master's client API one after
 * the other. The learner draws each step's items exactly as the loop of train_run does (same
 * split, same epoch orders) and takes the same step (the same blocks combined in the same tree,
 * then rm_update), so any number of shards gives the parameters of the in-process run. A job the
 * master has recorded (its journal) is answered from its record, so running the same command again
 * after an interruption continues from the last finished job.
 */

typedef struct {
    const train_args_t *a;
    long steps, pairs;
    double step_ms; /* the learner's step time, summed */
    int print_rc;
} rm_jobs_t;

/* Prints the logged steps of a finished job and adds up its figures. */
static void rm_job_done(rm_jobs_t *c, uint64_t id, const Rlhf__TrainOutput *o) {
    long first = (long)o->step - (long)o->n_loss;
    for (size_t k = 0; k < o->n_loss; k++) {
        long s = first + (long)k;
        if (s % c->a->log_every == 0 || s == c->steps - 1)
            c->print_rc |= cli_print_json(
                json_pack("{s:I,s:f,s:f,s:f,s:I,s:f,s:i}", "step", (json_int_t)s, "loss",
                          (double)o->loss[k], "accuracy", k < o->n_accuracy ? o->accuracy[k] : 0.0,
                          "grad_norm", k < o->n_grad_norm ? o->grad_norm[k] : 0.0, "job",
                          (json_int_t)id, "pairs_per_s", o->pairs_per_s, "shards", (int)o->shards));
    }
    c->pairs += (long)o->pairs;
    c->step_ms += o->step_ms * (double)o->n_loss;
}

/* The steps on the learner; *out = the model of its last checkpoint. */
static int learner_train(const train_args_t *a, long steps, int max_len, gpt_t **out,
                         rm_jobs_t *c) {
    char rdir[PATH_MAX];
    char amodel[PATH_MAX], apairs[PATH_MAX];
    if (!realpath(a->model, amodel) || !realpath(a->pairs, apairs))
        return rl_fail(RL_EIO, "%s: %s", realpath(a->model, amodel) ? a->pairs : a->model,
                       strerror(errno));
    snprintf(rdir, sizeof rdir, "%.4000s", a->run_dir ? a->run_dir : a->out);
    if (!a->run_dir) snprintf(rdir, sizeof rdir, "%.4000s.run", a->out);
    local_session_t ss;
    int rc = local_session_open(&ss, rdir, 0, 0, a->shards, "train-rm");
    if (rc < 0) return rc;
    /* the learner gets the model and the pairs by content, from the master's host */
    char mref[PATH_MAX + 80], pref[PATH_MAX + 80], final_ref[PATH_MAX + 80] = "";
    if ((rc = local_publish(&ss, amodel, mref, sizeof mref)) == 0)
        rc = local_publish(&ss, apairs, pref, sizeof pref);
    adamw_sched_kind_t kinds[] = {ADAMW_SCHED_CONSTANT, ADAMW_SCHED_WARMUP, ADAMW_SCHED_COSINE};
    int sched = 0;
    for (int i = 0; i < 3; i++)
        if (kinds[i] == a->kind) sched = i;
    long J = a->steps_per_job;
    for (long j = 0; rc == 0 && j * J < steps; j++) {
        Rlhf__TrainSpec sp = RLHF__TRAIN_SPEC__INIT;
        sp.kind = RLHF__TRAIN_KIND__TRAIN_KIND_RM;
        sp.model_dir = mref;
        sp.pairs_file = pref;
        sp.batch_size = (uint32_t)a->batch;
        sp.seq_len = (uint32_t)max_len;
        sp.step = (uint64_t)(j * J);
        sp.n_steps = (uint32_t)(steps - j * J < J ? steps - j * J : J);
        sp.lr = a->lr;
        sp.min_lr = a->min_lr;
        sp.schedule = (Rlhf__TrainSchedule)sched;
        sp.warmup = (uint64_t)a->warmup;
        sp.total_steps = (uint64_t)steps;
        sp.weight_decay = a->wd;
        sp.clip = a->clip;
        sp.rm_pairwise = a->pairwise != 0;
        sp.rm_margin = a->margin;
        sp.rm_center = a->center;
        sp.heldout_frac = a->frac;
        sp.split_seed = (uint64_t)a->split_seed;
        sp.rm_seed = (uint64_t)a->seed;
        sp.micro = (uint32_t)a->micro;
        sp.grad_blocks = (uint32_t)a->grad_blocks;
        sp.export_model = (j + 1) * J >= steps; /* the result comes back over the wire */
        Rlhf__TrainOutput *o;
        rc = local_train_job(&ss, (uint64_t)j + 1, (uint64_t)a->seed + 1, &sp, &o);
        if (rc == 0) rm_job_done(c, (uint64_t)j + 1, o);
        if (rc == 0 && sp.export_model) snprintf(final_ref, sizeof final_ref, "%s", o->model_ref);
        if (o) rlhf__train_output__free_unpacked(o, NULL);
    }
    char path[PATH_MAX + 64];
    if (rc == 0 && !final_ref[0])
        rc = rl_fail(RL_EPROTO, "the learner exported no model after the last job");
    if (rc == 0) rc = local_fetch(&ss, final_ref, path, sizeof path);
    local_session_close(&ss);
    if (rc < 0) return rc;
    if (!(*out = load_rm(path))) return rl_fail_ctx(RL_EIO, "the learner's last checkpoint: ");
    return 0;
}

static int train_run(const train_args_t *a) {
    const char *cmd = "train-rm";
    gpt_t *m = rm_load(a->model, (uint64_t)a->seed);
    if (!m) return cli_fail(cmd, "loading model", RL_EIO);
    tok_t *tok = NULL;
    rm_data_t d = {0};
    train_t tr = {0};
    unsigned char *held = NULL;
    int *items = NULL, *perm = NULL, *batch = NULL, rc = 0, print_rc = 0, n_items = 0;
    float ceiling = a->ceiling;
    int max_len = a->max_len ? a->max_len : m->cfg.n_positions;
    if (max_len > m->cfg.n_positions) {
        rc = rl_fail(RL_EINVAL, "--max-len %d exceeds the model's n_positions %d", max_len,
                     m->cfg.n_positions);
        goto done;
    }
    if (a->ceiling_from && (rc = read_ceiling(a->ceiling_from, &ceiling)) < 0) goto done;
    if (!(tok = load_tokenizer(a->model, m))) {
        rc = RL_EIO;
        goto done;
    }
    if ((rc = rm_data_load(a->pairs, tok, max_len, &d)) < 0) goto done;
    int pad = tok_eot(tok);
    held = calloc((size_t)d.n_groups, 1);
    items = malloc((size_t)(d.n_pairs > d.n_groups ? d.n_pairs : d.n_groups) * sizeof(int));
    batch = malloc((size_t)a->batch * sizeof(int));
    if (!held || !items || !batch) {
        rc = rl_fail(RL_ENOMEM, "training state");
        goto done;
    }
    int n_held = rm_split(&d, a->frac, (uint64_t)a->split_seed, held);
    long held_pairs = 0;
    for (int p = 0; p < d.n_pairs; p++) held_pairs += held[d.pairs[p].group];
    if (a->pairwise) {
        for (int p = 0; p < d.n_pairs; p++)
            if (!held[d.pairs[p].group]) items[n_items++] = p;
    } else {
        for (int g = 0; g < d.n_groups; g++)
            if (!held[g]) items[n_items++] = g;
    }
    print_rc |= cli_print_json(data_json(a->pairs, &d, n_held, held_pairs));
    if (n_items == 0) {
        rc = rl_fail(RL_EINVAL, "%s: all %d prompts are held out (--heldout-frac %g)", a->pairs,
                     d.n_groups, (double)a->frac);
        goto done;
    }
    int bsz = a->batch < n_items ? a->batch : n_items;
    long steps = a->steps ? a->steps : ((long)a->epochs * n_items + bsz - 1) / bsz;
    adamw_sched_t sched = {a->kind, a->lr, a->min_lr, a->warmup, steps};
    if (!a->shards && (rc = train_init(&tr, m, &sched, a->wd, a->clip)) < 0) goto done;
    tr.grad_blocks = a->grad_blocks;
    perm = malloc((size_t)n_items * sizeof(int));
    if (!perm) {
        rc = rl_fail(RL_ENOMEM, "training state");
        goto done;
    }
    rm_opts_t opt = {a->pairwise ? RM_ITEMS_PAIRS : RM_ITEMS_GROUPS, a->margin, a->center, a->micro,
                     pad};
    long cursor = 0, epoch = -1, total_pairs = 0;
    double t_start = cli_now_ms(), train_ms = 0;
    rm_stats_t st = {0};
    if (a->shards) {
        rm_jobs_t c = {.a = a, .steps = steps};
        gpt_t *fm = NULL;
        rc = learner_train(a, steps, max_len, &fm, &c);
        print_rc |= c.print_rc;
        if (rc < 0) goto done;
        gpt_destroy(&m);
        m = fm;
        total_pairs = c.pairs;
        train_ms = c.step_ms;
    }
    for (long s = 0; rc == 0 && !a->shards && s < steps; s++) {
        for (int b = 0; b < bsz; b++, cursor++) { /* epochs follow each other seamlessly */
            if (cursor / n_items != epoch) {
                epoch = cursor / n_items;
                rm_epoch_order(n_items, (uint64_t)a->seed, (uint64_t)epoch, perm);
            }
            batch[b] = items[perm[cursor % n_items]];
        }
        rm_grad_stats_t gs = {0};
        rm_update_stats_t us = {0};
        double t0 = cli_now_ms();
        rc = rm_step(&tr, &d, batch, bsz, &opt, &gs, &us);
        double ms = cli_now_ms() - t0;
        if (rc < 0) break;
        train_ms += ms;
        total_pairs += gs.pairs;
        if (s % a->log_every == 0 || s == steps - 1)
            print_rc |= cli_print_json(json_pack(
                "{s:I,s:I,s:f,s:f,s:f,s:f,s:I,s:f,s:f}", "step", (json_int_t)s, "epoch",
                (json_int_t)epoch, "loss", gs.loss, "accuracy", gs.correct / (double)gs.pairs, "lr",
                (double)us.lr, "grad_norm", us.grad_norm, "pairs", (json_int_t)gs.pairs,
                "pairs_per_s", gs.pairs / (ms / 1e3), "ms", ms));
        if (a->save_every && (s + 1) % a->save_every == 0 && s + 1 < steps) {
            if ((rc = save_model(m, &d, a, pad, &st)) < 0) break;
            print_rc |= cli_print_json(
                json_pack("{s:s,s:I}", "checkpoint", a->out, "step", (json_int_t)(s + 1)));
        }
    }
    if (rc < 0) goto done;
    rm_eval_t ev;
    if ((rc = eval_groups(m, &d, held, a->micro, pad, a->bins, &ev)) < 0) goto done;
    print_rc |= cli_print_json(eval_json("heldout", &ev, ceiling, 0));
    if ((rc = save_model(m, &d, a, pad, &st)) < 0) goto done;
    print_rc |= cli_print_json(json_pack(
        "{s:s,s:I,s:I,s:f,s:f,s:f,s:f,s:I,s:i}", "saved", a->out, "steps", (json_int_t)steps,
        "train_pairs", (json_int_t)total_pairs, "seconds", (cli_now_ms() - t_start) / 1e3,
        "pairs_per_s", train_ms > 0 ? total_pairs / (train_ms / 1e3) : 0.0, "reward_mean", st.mean,
        "reward_std", st.std, "reward_count", (json_int_t)st.count, "learner_shards", a->shards));
done:
    train_free(&tr);
    rm_data_free(&d);
    tok_destroy(&tok);
    gpt_destroy(&m);
    free(held);
    free(items);
    free(perm);
    free(batch);
    return rc < 0 ? cli_fail(cmd, "training", rc) : print_rc;
}

/* --schedule constant|warmup|cosine */
static int rm_opt_schedule(void *args, const char *value) {
    adamw_sched_kind_t k;
    if (adamw_sched_parse(value, &k) < 0) return RL_EINVAL;
    if (args) ((train_args_t *)args)->kind = k;
    return 0;
}

#define TI(f, name, lo, hi, def, arg, help)                                                        \
    CLI_OPT_INT(train_args_t, f, name, lo, hi, def, arg, help)
#define TF(f, name, lo, hi, def, arg, help)                                                        \
    CLI_OPT_FLOAT(train_args_t, f, name, lo, hi, def, arg, help)
static const cli_opt_t train_rm_opt_table[] = {
    CLI_OPT_STR(train_args_t, model, "model", NULL, "DIR", "trunk to start from", CLI_OPT_REQUIRED),
    CLI_OPT_STR(train_args_t, pairs, "pairs", NULL, "FILE", "preference pairs", CLI_OPT_REQUIRED),
    CLI_OPT_STR(train_args_t, out, "out", NULL, "DIR", "the reward model (replaced as a whole)",
                CLI_OPT_REQUIRED),
    CLI_OPT_FLAG(train_args_t, pairwise, "pairwise",
                 "one batch element per pair instead (imported pairs)"),
    TF(margin, "margin", -1e6, 1e6, "0", "M",
       "subtract M * margin inside the sigmoid (margin of the line, 0 if absent)"),
    TF(center, "center", 0, 1e6, "0", "C",
       "add C * (r_chosen + r_rejected)^2 per pair (reward centering)"),
    TF(frac, "heldout-frac", 0, 1, "0.1", "F", "prompts held out for evaluation"),
    CLI_OPT_LONG(train_args_t, split_seed, "split-seed", 0, LONG_MAX, "0", "S",
                 "seed of the held-out split"),
    TI(batch, "batch", 1, 1 << 20, "8", "N", "prompts per step (pairs with --pairwise)"),
    TI(micro, "micro", 1, 1 << 20, "16", "M", "sequences per forward pass"),
    TI(steps, "steps", 1, 100000000, NULL, "N", "optimizer steps (instead of --epochs)"),
    TI(epochs, "epochs", 1, 1000000, NULL, "E",
       "passes over the pairs (1 unless --steps or --epochs is given)"),
    TF(lr, "lr", 0, 10, "0.0003", "X", "peak learning rate"),
    TF(min_lr, "min-lr", 0, 10, "3e-05", "X", "final learning rate"),
    CLI_OPT_CALL("schedule", "constant|warmup|cosine", "learning-rate schedule (default cosine)",
                 rm_opt_schedule, 0),
    TI(warmup, "warmup", 0, 100000000, "10", "N", "warmup steps"),
    TF(wd, "weight-decay", 0, 10, "0.01", "X", "AdamW weight decay"),
    TF(clip, "clip", 0, 1e9, "1", "X", "gradient-norm clip"),
    CLI_OPT_LONG(train_args_t, seed, "seed", 0, LONG_MAX, "1", "S", "run seed"),
    TI(max_len, "max-len", 2, 1000000, NULL, "N",
       "sequences longer keep their last tokens (default: the model's context)"),
    TI(log_every, "log-every", 1, 100000000, "10", "N", "log interval"),
    TI(save_every, "save-every", 0, 100000000, "0", "N", "also save every N steps (0: never)"),
    TF(ceiling, "ceiling", 1e-6, 1, NULL, "X", "the annotators' agreement, for the report"),
    CLI_OPT_STR(train_args_t, ceiling_from, "ceiling-from", NULL, "FILE",
                "the ceiling from rlhf aggregate's summary", 0),
    TI(bins, "bins", 1, 1000, "10", "N", "calibration bins"),
    TI(threads, "threads", 1, 1024, "2", "N", "threads"),
    TI(shards, "learner-shards", 1, 16, NULL, "S",
       "run the steps as TRAIN jobs on a learner of S shards (default: in-process)"),
    TI(steps_per_job, "steps-per-job", 1, 1 << 24, "20", "N", "steps per TRAIN job"),
    CLI_OPT_STR(train_args_t, run_dir, "run-dir", NULL, "DIR",
                "the learner's local cluster (default OUT.run)", 0),
    TI(grad_blocks, "grad-blocks", 1, GTREE_MAX_BLOCKS, "8", "N",
       "gradient blocks per step (capped at the items of a step; an item is never split): the "
       "fixed order the step's gradient is summed in, the same on any number of learner shards"),
};
#undef TI
#undef TF

const cli_opts_t cli_train_rm_opts = CLI_OPTS(
    "train-rm", "rlhf train-rm --model DIR --pairs FILE --out DIR [options]",
    "Trains a reward model: the GPT-2 trunk of DIR (an instruct model or any HF GPT-2\n"
    "directory; a new scalar head is added unless DIR already has one) scored at the last token\n"
    "of prompt + completion + <|endoftext|>, on FILE, JSONL lines {\"prompt_id\"?, \"prompt\",\n"
    "\"chosen\", \"rejected\", \"margin\"?}, grouped by prompt_id (else by prompt text).\n"
    "Default (InstructGPT): one batch element per prompt, each distinct completion forwarded\n"
    "once, loss = mean over the prompt's pairs of -log sigma(r_chosen - r_rejected).\n"
    "Prompts whose hash (with --split-seed) falls below F are held out (never trained on) and\n"
    "evaluated at the end. Prints one JSON object per logged step, the held-out evaluation (as\n"
    "eval-rm) and a summary; writes DIR --out with reward_stats.json: mean and std of the\n"
    "rewards of every completion of FILE, for PPO's reward normalisation.\n",
    train_rm_opt_table,
    "--learner-shards S: the steps run as TRAIN jobs (--steps-per-job N each) on a learner of S\n"
    "gradient shards behind a local master (`rlhf up` in --run-dir, default OUT.run; the\n"
    "learner's checkpoints in RUN_DIR/learner); the same command run again after an\n"
    "interruption continues from the last finished job. Whatever S, the parameters are those of\n"
    "the in-process run (each step's gradient is --grad-blocks blocks of items summed in one\n"
    "fixed tree, the shards computing parts of it); the final model is the learner's last\n"
    "checkpoint, evaluated and saved as in process. --save-every does not apply (the learner\n"
    "checkpoints every job).\n");

int cmd_train_rm(int argc, char **argv) {
    const char *cmd = "train-rm";
    train_args_t a = {.kind = ADAMW_SCHED_COSINE};
    int c = cli_opts_parse(&cli_train_rm_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    int steps_given = a.steps > 0, epochs_given = a.epochs > 0;
    if (!epochs_given) a.epochs = 1;
    if (!a.model || !a.pairs || !a.out) {
        fprintf(stderr, "rlhf %s: --model, --pairs and --out are required\n", cmd);
        return 2;
    }
    if (steps_given && epochs_given) {
        fprintf(stderr, "rlhf %s: give --steps or --epochs, not both\n", cmd);
        return 2;
    }
    if (a.ceiling > 0 && a.ceiling_from) {
        fprintf(stderr, "rlhf %s: give --ceiling or --ceiling-from, not both\n", cmd);
        return 2;
    }
    ops_set_threads(a.threads);
    return train_run(&a);
}

/* ---- eval-rm --------------------------------------------------------------------------- */

typedef struct {
    const char *dir, *pairs, *ceiling_from;
    int all, bins, micro, max_len, threads, write_stats, gold;
    float frac, ceiling;
    long split_seed;
} eval_rm_args_t;

#define EI(f, name, lo, hi, def, arg, help)                                                        \
    CLI_OPT_INT(eval_rm_args_t, f, name, lo, hi, def, arg, help)
static const cli_opt_t eval_rm_opt_table[] = {
    CLI_OPT_STR(eval_rm_args_t, dir, "rm", NULL, "DIR", "the reward model", CLI_OPT_REQUIRED),
    CLI_OPT_STR(eval_rm_args_t, pairs, "pairs", NULL, "FILE", "preference pairs (as train-rm)",
                CLI_OPT_REQUIRED),
    CLI_OPT_FLOAT(eval_rm_args_t, frac, "heldout-frac", 0, 1, "0.1", "F",
                  "the held-out share of train-rm's split"),
    CLI_OPT_LONG(eval_rm_args_t, split_seed, "split-seed", 0, LONG_MAX, "0", "S",
                 "the seed of train-rm's split"),
    CLI_OPT_FLAG(eval_rm_args_t, all, "all", "evaluate every pair, not the held-out prompts"),
    CLI_OPT_FLOAT(eval_rm_args_t, ceiling, "ceiling", 1e-6, 1, NULL, "X",
                  "the annotators' pairwise agreement"),
    CLI_OPT_STR(eval_rm_args_t, ceiling_from, "ceiling-from", NULL, "FILE",
                "the ceiling: \"pairwise_agreement\" of the JSON object in FILE (the aggregate "
                "summary)",
                0),
    EI(bins, "bins", 1, 1000, "10", "N", "calibration bins"),
    EI(micro, "micro", 1, 1 << 20, "16", "M", "sequences per forward pass"),
    EI(max_len, "max-len", 2, 1000000, NULL, "N", "sequence length (default: the context)"),
    CLI_OPT_FLAG(eval_rm_args_t, gold, "gold",
                 "also the accuracy against the embedded task's gold judge"),
    CLI_OPT_FLAG(eval_rm_args_t, write_stats, "write-stats",
                 "store the reward mean and std (and count) in DIR/reward_stats.json"),
    EI(threads, "threads", 1, 1024, "2", "N", "threads"),
};
#undef EI

const cli_opts_t cli_eval_rm_opts = CLI_OPTS(
    "eval-rm",
    "rlhf eval-rm --rm DIR --pairs FILE [--heldout-frac F] [--split-seed S] [--all]\n"
    "                    [--ceiling X | --ceiling-from FILE] [--bins N] [--micro M]\n"
    "                    [--max-len N] [--gold] [--write-stats] [--threads N]",
    "Evaluates the reward model DIR on the pairs of FILE (the format of train-rm): by default\n"
    "on the held-out prompts of the split train-rm makes with the same F and S, with --all on\n"
    "every pair. Prints one JSON object:\n"
    "  split, prompts, pairs      what was evaluated\n"
    "  accuracy                   fraction of pairs with r_chosen > r_rejected (a tie: half)\n"
    "  ceiling                    the annotators' pairwise agreement; null if none\n"
    "  accuracy_vs_ceiling        accuracy / ceiling\n"
    "  loss                       mean -log sigma(r_chosen - r_rejected)\n"
    "  ece, ece_bins              expected calibration error of sigma(r_a - r_b) as the\n"
    "                             probability that a is preferred (each pair in both orders,\n"
    "                             N equal-width bins)\n"
    "  completions, reward_mean, reward_std   over the distinct completions evaluated\n"
    "  gold_pairs, accuracy_gold  (--gold) the pairs the embedded task's gold judge scores\n"
    "                             apart, and the share the rewards order as the judge does (the\n"
    "                             proxy's quality itself, not against the annotators' labels)\n",
    eval_rm_opt_table,
    "The statistics written by --write-stats are those PPO normalises rewards with.\n");

int cmd_eval_rm(int argc, char **argv) {
    const char *cmd = "eval-rm";
    eval_rm_args_t a = {0};
    int c = cli_opts_parse(&cli_eval_rm_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    const char *dir = a.dir, *pairs = a.pairs, *ceiling_from = a.ceiling_from;
    int all = a.all, bins = a.bins, micro = a.micro, max_len = a.max_len, threads = a.threads;
    int write_stats = a.write_stats;
    float frac = a.frac, ceiling = a.ceiling;
    long split_seed = a.split_seed;
    if (!dir || !pairs) {
        fprintf(stderr, "rlhf %s: --rm and --pairs are required\n", cmd);
        return 2;
    }
    if (ceiling > 0 && ceiling_from) {
        fprintf(stderr, "rlhf %s: give --ceiling or --ceiling-from, not both\n", cmd);
        return 2;
    }
    ops_set_threads(threads);
    gpt_t *m = load_rm(dir);
    if (!m) return cli_fail(cmd, "loading model", RL_EIO);
    tok_t *tok = NULL;
    rm_data_t d = {0};
    unsigned char *held = NULL;
    int rc = 0, print_rc = 0;
    if (max_len == 0) max_len = m->cfg.n_positions;
    if (max_len > m->cfg.n_positions) {
        rc = rl_fail(RL_EINVAL, "--max-len %d exceeds the model's n_positions %d", max_len,
                     m->cfg.n_positions);
        goto done;
    }
    if (ceiling_from && (rc = read_ceiling(ceiling_from, &ceiling)) < 0) goto done;
    if (!(tok = load_tokenizer(dir, m))) {
        rc = RL_EIO;
        goto done;
    }
    if ((rc = rm_data_load(pairs, tok, max_len, &d)) < 0) goto done;
    held = calloc((size_t)d.n_groups, 1);
    if (!held) {
        rc = rl_fail(RL_ENOMEM, "evaluation");
        goto done;
    }
    rm_split(&d, frac, (uint64_t)split_seed, held);
    rm_eval_t ev;
    rc = eval_groups(m, &d, all ? NULL : held, micro, tok_eot(tok), bins, &ev);
    if (rc < 0) goto done;
    if (write_stats) {
        if (ev.st.count == 0) {
            rc = rl_fail(RL_EINVAL, "--write-stats: no completions were evaluated");
            goto done;
        }
        char path[4096];
        snprintf(path, sizeof path, "%.4000s/%s", dir, RM_STATS_FILE);
        json_t *j = json_pack("{s:f,s:f,s:I}", "mean", ev.st.mean, "std", ev.st.std, "count",
                              (json_int_t)ev.st.count);
        char *text = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
        json_decref(j);
        rc = text ? fs_write_atomic(path, text, strlen(text))
                  : rl_fail(RL_EINVAL, "reward statistics are not finite");
        free(text);
        if (rc < 0) goto done;
    }
    print_rc = cli_print_json(eval_json(all ? "all" : "heldout", &ev, ceiling, a.gold));
done:
    rm_data_free(&d);
    tok_destroy(&tok);
    gpt_destroy(&m);
    free(held);
    return rc < 0 ? cli_fail(cmd, "evaluating", rc) : print_rc;
}

/* ---- score ----------------------------------------------------------------------------- */

typedef struct {
    const char *dir, *prompt;
    const char **comps; /* argc + 1 entries */
    int nc, max_len, threads;
} score_args_t;

/* --completion C, repeatable */
static int score_opt_completion(void *args, const char *value) {
    score_args_t *a = args;
    if (a) a->comps[a->nc++] = value;
    return 0;
}

static const cli_opt_t score_opt_table[] = {
    CLI_OPT_STR(score_args_t, dir, "rm", NULL, "DIR", "the reward model", CLI_OPT_REQUIRED),
    CLI_OPT_STR(score_args_t, prompt, "prompt", NULL, "P", "the prompt", CLI_OPT_REQUIRED),
    CLI_OPT_CALL("completion", "C", "a completion (one or more)", score_opt_completion,
                 CLI_OPT_REQUIRED),
    CLI_OPT_INT(score_args_t, max_len, "max-len", 2, 1000000, NULL, "N",
                "sequence length (default: the context)"),
    CLI_OPT_INT(score_args_t, threads, "threads", 1, 1024, "2", "N", "threads"),
};

static const cli_opts_t score_opts = CLI_OPTS(
    "score",
    "rlhf score --rm DIR --prompt P --completion C [--completion C2 ...] [--max-len N]\n"
    "                  [--threads N]",
    "Prints the reward of prompt + completion + <|endoftext|> under the reward model DIR:\n"
    "{\"reward\": r} for one completion, {\"rewards\": [r1, r2, ...]} for several, and for\n"
    "exactly two also \"p_first_preferred\": sigma(r1 - r2), the probability that the first is\n"
    "preferred. When DIR has reward_stats.json, \"normalized\" gives (r - mean) / std.\n",
    score_opt_table, NULL);

int cmd_score(int argc, char **argv) {
    const char *cmd = "score";
    score_args_t a = {.comps = calloc((size_t)argc + 1, sizeof(const char *))};
    if (!a.comps) return cli_fail(cmd, "arguments", rl_fail(RL_ENOMEM, "out of memory"));
    int c = cli_opts_parse(&score_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) {
        free(a.comps);
        return c;
    }
    const char *dir = a.dir, *prompt = a.prompt, **comps = a.comps;
    int nc = a.nc, max_len = a.max_len, threads = a.threads;
    if (!dir || !prompt || nc == 0) {
        fprintf(stderr, "rlhf %s: --rm, --prompt and at least one --completion are required\n",
                cmd);
        free(comps);
        return 2;
    }
    ops_set_threads(threads);
    gpt_t *m = load_rm(dir);
    if (!m) {
        free(comps);
        return cli_fail(cmd, "loading model", RL_EIO);
    }
    int rc = 0, print_rc = 0, **ids = calloc((size_t)nc, sizeof *ids);
    int *lens = calloc((size_t)nc, sizeof(int));
    float *r = calloc((size_t)nc, sizeof(float));
    tok_t *tok = NULL;
    if (!ids || !lens || !r) {
        rc = rl_fail(RL_ENOMEM, "out of memory");
        goto done;
    }
    if (max_len == 0) max_len = m->cfg.n_positions;
    if (max_len > m->cfg.n_positions) {
        rc = rl_fail(RL_EINVAL, "--max-len %d exceeds the model's n_positions %d", max_len,
                     m->cfg.n_positions);
        goto done;
    }
    if (!(tok = load_tokenizer(dir, m))) {
        rc = RL_EIO;
        goto done;
    }
    for (int i = 0; rc == 0 && i < nc; i++)
        rc = rm_encode(tok, prompt, comps[i], max_len, &ids[i], &lens[i], NULL);
    if (rc == 0) rc = rm_rewards(m, (const int *const *)ids, lens, nc, nc, tok_eot(tok), r);
    if (rc < 0) goto done;
    rm_stats_t st;
    int have_stats = rm_stats_read(dir, &st) == 0 && st.std > 0;
    json_t *o = json_object(), *arr = json_array(), *norm = json_array();
    for (int i = 0; i < nc; i++) {
        json_array_append_new(arr, json_real(r[i]));
        json_array_append_new(norm, json_real(have_stats ? (r[i] - st.mean) / st.std : 0));
    }
    if (nc == 1) {
        json_object_set_new(o, "reward", json_real(r[0]));
        if (have_stats) json_object_set(o, "normalized", json_array_get(norm, 0));
        json_decref(arr);
    } else {
        json_object_set_new(o, "rewards", arr);
        if (have_stats) json_object_set(o, "normalized", norm);
        if (nc == 2)
            json_object_set_new(o, "p_first_preferred",
                                json_real(1.0 / (1.0 + exp(-((double)r[0] - r[1])))));
    }
    json_decref(norm);
    print_rc = cli_print_json(o);
done:
    for (int i = 0; ids && i < nc; i++) free(ids[i]);
    free(ids);
    free(lens);
    free(r);
    free(comps);
    tok_destroy(&tok);
    gpt_destroy(&m);
    return rc < 0 ? cli_fail(cmd, "scoring", rc) : print_rc;
}
