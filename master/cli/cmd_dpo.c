/*
 * cmd_dpo.c - `rlhf dpo`: direct preference optimisation of a policy on stage-1 pairs against a
 * frozen reference (common/align/dpo.h), in phases:
 *   1. load: the policy, its tokenizer, the pairs (rm_data_load_split), the held-out split;
 *   2. reference: the reference model's summed completion logprobs, computed once - SCORE jobs
 *      on reward workers (the reference logprobs PPO uses), or in process without a learner -
 *      unless the file already carries them; written beside the output as OUT.run/pairs_ref.jsonl
 *      (the input lines with TRL's "ref_chosen_logps" / "ref_rejected_logps");
 *   3. train: TRAIN jobs of kind DPO on the learner's shards (bit-identical for any shard
 *      count), or the same steps in process;
 *   4. evaluate and save: loss, reward accuracy, rewards and margins on the held-out and the
 *      training pairs; the policy as an HF directory with its tokenizer.
 */
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "align/dpo.h"
#include "align/rm.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/jsonl.h"
#include "cli.h"
#include "net/client.h"
#include "nn/adamw.h"
#include "nn/gpt.h"
#include "nn/hf.h"
#include "nn/ops.h"
#include "nn/tok.h"
#include "nn/train.h"
#include "rlhf.pb-c.h"

typedef struct {
    const char *policy, *ref, *pairs, *out, *run_dir, *loss_name;
    int batch, micro, steps, epochs, warmup, max_len, log_every, threads, shards, steps_per_job;
    int grad_blocks, score_batch, in_process;
    float beta, smoothing, frac, lr, min_lr, wd, clip;
    long seed, split_seed;
    adamw_sched_kind_t kind;
} dpo_args_t;

/* The figures of a DPO run, in its output directory (read by `rlhf report`). */
#define DPO_STATS_FILE "dpo_stats.json"

/* SCORE jobs and TRAIN jobs share the session's id space: TRAIN ids start here */
#define DPO_TRAIN_ID0 (1ULL << 32)

/* ---- phase 2: the reference logprobs -------------------------------------------------------- */

typedef struct {
    rm_data_t *d;
    int per_job; /* sequences per SCORE job */
} ref_ctx_t;

/* client_wait's callback: job i + 1 holds sequences [i * per_job, ...): their sums. */
static int ref_done(void *vctx, const client_result_t *r) {
    ref_ctx_t *c = vctx;
    if (r->status != CLIENT_DONE)
        return rl_fail(RL_EIO, "reference job %" PRIu64 " failed: %s", r->id,
                       r->reason && r->reason[0] ? r->reason : "(see the cluster's logs)");
    Rlhf__ScoreOutput *o = rlhf__score_output__unpack(NULL, r->output_len, r->output);
    if (!o) return rl_fail(RL_EPROTO, "reference job %" PRIu64 ": not a ScoreOutput", r->id);
    int s0 = (int)(r->id - 1) * c->per_job,
        n = c->d->n_seqs - s0 < c->per_job ? c->d->n_seqs - s0 : c->per_job;
    int rc = o->n_ref_logprobs == (size_t)n
                 ? 0
                 : rl_fail(RL_EPROTO, "reference job %" PRIu64 ": %zu results for %d sequences",
                           r->id, o->n_ref_logprobs, n);
    for (int i = 0; rc == 0 && i < n; i++) {
        rm_seq_t *s = &c->d->seqs[s0 + i];
        const Rlhf__TokenLogprobs *t = o->ref_logprobs[i];
        if (t->n_logprobs != (size_t)(s->len - s->n_prompt)) {
            rc = rl_fail(RL_EPROTO, "reference job %" PRIu64 ": %zu logprobs for %d tokens", r->id,
                         t->n_logprobs, s->len - s->n_prompt);
            break;
        }
        double sum = 0; /* in token order, as dpo_seq_logps sums the policy's */
        for (size_t k = 0; k < t->n_logprobs; k++) sum += (double)t->logprobs[k];
        if (!isfinite(sum)) rc = rl_fail(RL_ENONFINITE, "reference logprob %g", sum);
        s->ref_logp = sum;
    }
    rlhf__score_output__free_unpacked(o, NULL);
    return rc;
}

/* The SCORE job of sequences [s0, s0 + n) (id = job index + 1). */
static int ref_job(const rm_data_t *d, const char *ref, int s0, int n, uint64_t id, uint64_t seed,
                   client_job_t *job) {
    Rlhf__ScoreSpec sp = RLHF__SCORE_SPEC__INIT;
    Rlhf__ScoreItem *items = calloc((size_t)n, sizeof *items);
    Rlhf__ScoreItem **pi = calloc((size_t)n, sizeof *pi);
    size_t total = 0, at = 0;
    for (int i = 0; i < n; i++) total += (size_t)d->seqs[s0 + i].len;
    int32_t *ids = malloc((total ? total : 1) * sizeof *ids); /* the job's sequences */
    if (!items || !pi || !ids) {
        free(items), free(pi), free(ids);
        return rl_fail(RL_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        const rm_seq_t *s = &d->seqs[s0 + i];
        int32_t *q = ids + at;
        for (int k = 0; k < s->len; k++) q[k] = d->ids[s->off + (size_t)k];
        at += (size_t)s->len;
        rlhf__score_item__init(&items[i]);
        items[i].prompt = q;
        items[i].n_prompt = (size_t)s->n_prompt;
        items[i].completion = q + s->n_prompt;
        items[i].n_completion = (size_t)(s->len - s->n_prompt);
        pi[i] = &items[i];
    }
    sp.ref_dir = (char *)ref;
    sp.items = pi;
    sp.n_items = (size_t)n;
    sp.eot = -1;
    sp.temperature = 1.0f;
    size_t len = rlhf__score_spec__get_packed_size(&sp);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf) rlhf__score_spec__pack(&sp, buf);
    free(items), free(pi), free(ids);
    if (!buf) return rl_fail(RL_ENOMEM, "out of memory");
    *job = (client_job_t){.id = id,
                          .kind = RLHF__JOB_KIND__JOB_KIND_SCORE,
                          .seed = seed,
                          .role = RLHF__ROLE__ROLE_REWARD,
                          .payload = buf,
                          .payload_len = len};
    return 0;
}

/* Every sequence's reference logprob through SCORE jobs on the session's reward workers. */
static int ref_by_jobs(local_session_t *ss, rm_data_t *d, const char *ref, int per_job,
                       uint64_t seed) {
    int nj = (d->n_seqs + per_job - 1) / per_job, rc = 0;
    client_job_t *jobs = calloc((size_t)nj, sizeof *jobs);
    uint64_t *ids = calloc((size_t)nj, sizeof *ids);
    if (!jobs || !ids) rc = rl_fail(RL_ENOMEM, "out of memory");
    for (int j = 0; rc == 0 && j < nj; j++) {
        int s0 = j * per_job, n = d->n_seqs - s0 < per_job ? d->n_seqs - s0 : per_job;
        ids[j] = (uint64_t)j + 1;
        rc = ref_job(d, ref, s0, n, ids[j], seed, &jobs[j]);
    }
    if (rc == 0) rc = client_submit(ss->client, jobs, nj);
    ref_ctx_t c = {d, per_job};
    if (rc == 0) rc = client_wait(ss->client, ids, nj, -1, ref_done, &c);
    for (int j = 0; jobs && j < nj; j++) free((void *)jobs[j].payload);
    free(jobs);
    free(ids);
    return rc;
}

/* Every sequence's reference logprob in this process. */
static int ref_in_process(const char *dir, rm_data_t *d, const dpo_config_t *c) {
    gpt_t *m = hf_load(dir);
    if (!m) return rl_fail_ctx(RL_EIO, "the reference model: ");
    int *seqs = malloc((size_t)d->n_seqs * sizeof(int));
    double *lp = malloc((size_t)d->n_seqs * sizeof(double));
    int rc = seqs && lp ? 0 : rl_fail(RL_ENOMEM, "out of memory");
    for (int i = 0; rc == 0 && i < d->n_seqs; i++) seqs[i] = i;
    if (rc == 0) rc = dpo_seq_logps(m, d, seqs, d->n_seqs, c, lp, NULL);
    for (int i = 0; rc == 0 && i < d->n_seqs; i++) d->seqs[i].ref_logp = lp[i];
    free(seqs);
    free(lp);
    gpt_destroy(&m);
    return rc;
}

/* The pairs file again, each line with its pair's reference logprobs, written atomically. */
typedef struct {
    const rm_data_t *d;
    double *rc, *rr; /* by the line's index among the pairs (NaN: a skipped pair) */
    long k;
    fs_atomic_t w;
    int rc_io;
} ref_write_t;

static int ref_write_line(void *vctx, json_t *obj, const char *where) {
    ref_write_t *x = vctx;
    (void)where;
    long k = x->k++;
    if (!isnan(x->rc[k])) {
        json_object_set_new(obj, "ref_chosen_logps", json_real(x->rc[k]));
        json_object_set_new(obj, "ref_rejected_logps", json_real(x->rr[k]));
    }
    char *line = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    if (!line) return rl_fail(RL_ENOMEM, "out of memory");
    int rc = fs_atomic_write(&x->w, line, strlen(line));
    if (rc == 0) rc = fs_atomic_write(&x->w, "\n", 1);
    free(line);
    return rc;
}

static int ref_write(const char *in, const rm_data_t *d, const char *out) {
    ref_write_t x = {d, NULL, NULL, 0, {0}, 0};
    long n = d->n_lines;
    x.rc = malloc((size_t)(n ? n : 1) * sizeof(double));
    x.rr = malloc((size_t)(n ? n : 1) * sizeof(double));
    int rc = x.rc && x.rr ? 0 : rl_fail(RL_ENOMEM, "out of memory");
    for (long k = 0; rc == 0 && k < n; k++) x.rc[k] = x.rr[k] = NAN;
    for (int p = 0; rc == 0 && p < d->n_pairs; p++) {
        x.rc[d->pairs[p].src] = d->seqs[d->pairs[p].w].ref_logp;
        x.rr[d->pairs[p].src] = d->seqs[d->pairs[p].l].ref_logp;
    }
    if (rc == 0) rc = fs_atomic_open(&x.w, out);
    if (rc == 0) {
        long got = jsonl_read(in, ref_write_line, &x);
        rc = got < 0 ? (int)got : fs_atomic_commit(&x.w);
        if (rc < 0) fs_atomic_abort(&x.w);
    }
    free(x.rc);
    free(x.rr);
    return rc;
}

/* ---- phase 3: training ---------------------------------------------------------------------- */

static void log_step(const dpo_args_t *a, long s, long steps, double loss, double acc, double ch,
                     double rj, double gn, int *print_rc) {
    if (s % a->log_every == 0 || s == steps - 1)
        *print_rc |= cli_print_json(json_pack("{s:I,s:f,s:f,s:f,s:f,s:f,s:f}", "step",
                                              (json_int_t)s, "loss", loss, "rewards/accuracies",
                                              acc, "rewards/chosen", ch, "rewards/rejected", rj,
                                              "rewards/margins", ch - rj, "grad_norm", gn));
}

/* The steps as TRAIN jobs of kind DPO on the session's learner; *out = its last checkpoint's
 * model. The pairs file the learner reads is `pref` (with the reference logprobs). */
static int train_learner(local_session_t *ss, const dpo_args_t *a, const char *pairs_ref,
                         long steps, int max_len, gpt_t **out, int *print_rc) {
    char amodel[PATH_MAX], apairs[PATH_MAX];
    if (!realpath(a->policy, amodel) || !realpath(pairs_ref, apairs))
        return rl_fail(RL_EIO, "%s: cannot resolve", a->policy);
    char mref[PATH_MAX + 80], pref[PATH_MAX + 80], final_ref[PATH_MAX + 80] = "";
    int rc = local_publish(ss, amodel, mref, sizeof mref);
    if (rc == 0) rc = local_publish(ss, apairs, pref, sizeof pref);
    adamw_sched_kind_t kinds[] = {ADAMW_SCHED_CONSTANT, ADAMW_SCHED_WARMUP, ADAMW_SCHED_COSINE};
    int sched = 0;
    for (int i = 0; i < 3; i++)
        if (kinds[i] == a->kind) sched = i;
    dpo_loss_t lt = DPO_LOSS_SIGMOID;
    dpo_loss_parse(a->loss_name, &lt);
    long J = a->steps_per_job;
    for (long j = 0; rc == 0 && j * J < steps; j++) {
        Rlhf__TrainSpec sp = RLHF__TRAIN_SPEC__INIT;
        sp.kind = RLHF__TRAIN_KIND__TRAIN_KIND_DPO;
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
        sp.rm_pairwise = 1;
        sp.heldout_frac = a->frac;
        sp.split_seed = (uint64_t)a->split_seed;
        sp.rm_seed = (uint64_t)a->seed;
        sp.micro = (uint32_t)a->micro;
        sp.grad_blocks = (uint32_t)a->grad_blocks;
        sp.dpo_beta = a->beta;
        sp.dpo_loss = (uint32_t)lt;
        sp.dpo_label_smoothing = a->smoothing;
        sp.export_model = (j + 1) * J >= steps;
        Rlhf__TrainOutput *o = NULL;
        rc = local_train_job(ss, DPO_TRAIN_ID0 + (uint64_t)j, (uint64_t)a->seed + 1, &sp, &o);
        for (size_t k = 0; rc == 0 && k < o->n_loss; k++) {
            long s = (long)o->step - (long)o->n_loss + (long)k;
            log_step(a, s, steps, o->loss[k], k < o->n_accuracy ? o->accuracy[k] : 0,
                     k < o->n_reward_chosen ? o->reward_chosen[k] : 0,
                     k < o->n_reward_rejected ? o->reward_rejected[k] : 0,
                     k < o->n_grad_norm ? o->grad_norm[k] : 0, print_rc);
        }
        if (rc == 0 && sp.export_model) snprintf(final_ref, sizeof final_ref, "%s", o->model_ref);
        if (o) rlhf__train_output__free_unpacked(o, NULL);
    }
    char path[PATH_MAX + 64];
    if (rc == 0 && !final_ref[0])
        rc = rl_fail(RL_EPROTO, "the learner exported no model after the last job");
    if (rc == 0) rc = local_fetch(ss, final_ref, path, sizeof path);
    if (rc < 0) return rc;
    if (!(*out = hf_load(path))) return rl_fail_ctx(RL_EIO, "the learner's last checkpoint: ");
    return 0;
}

/* The same steps in process (the items drawn as the learner draws them). */
static int train_here(gpt_t *m, const dpo_args_t *a, const rm_data_t *d, const int *items,
                      int n_items, long steps, const dpo_config_t *c, int *print_rc) {
    train_t tr = {0};
    adamw_sched_t sched = {a->kind, a->lr, a->min_lr, a->warmup, steps};
    int bsz = a->batch < n_items ? a->batch : n_items, rc;
    int *perm = malloc((size_t)n_items * sizeof(int)), *batch = malloc((size_t)bsz * sizeof(int));
    if (!perm || !batch)
        rc = rl_fail(RL_ENOMEM, "out of memory");
    else
        rc = train_init(&tr, m, &sched, a->wd, a->clip);
    tr.grad_blocks = a->grad_blocks;
    long epoch = -1;
    for (long s = 0; rc == 0 && s < steps; s++) {
        for (int b = 0; b < bsz; b++) {
            long cursor = s * bsz + b;
            if (cursor / n_items != epoch) {
                epoch = cursor / n_items;
                rm_epoch_order(n_items, (uint64_t)a->seed, (uint64_t)epoch, perm);
            }
            batch[b] = items[perm[cursor % n_items]];
        }
        dpo_stats_t gs = {0};
        rm_update_stats_t us = {0};
        if ((rc = dpo_step(&tr, d, batch, bsz, c, &gs, &us)) < 0) break;
        log_step(a, s, steps, gs.loss, gs.correct / gs.pairs, gs.reward_chosen / gs.pairs,
                 gs.reward_rejected / gs.pairs, us.grad_norm, print_rc);
    }
    train_free(&tr);
    free(perm);
    free(batch);
    return rc;
}

/* ---- phase 4: evaluation -------------------------------------------------------------------- */

static json_t *eval_json(gpt_t *m, const rm_data_t *d, const unsigned char *held, int want_held,
                         const dpo_config_t *c, int *rc) {
    int *p = malloc((size_t)d->n_pairs * sizeof(int)), n = 0;
    if (!p) {
        *rc = rl_fail(RL_ENOMEM, "out of memory");
        return NULL;
    }
    for (int i = 0; i < d->n_pairs; i++)
        if (!!held[d->pairs[i].group] == want_held) p[n++] = i;
    dpo_stats_t st = {0};
    *rc = n ? dpo_eval(m, d, p, n, c, &st) : 0;
    free(p);
    if (*rc < 0) return NULL;
    double k = n ? n : NAN;
    return json_pack("{s:s,s:i,s:f,s:f,s:f,s:f,s:f}", "split", want_held ? "heldout" : "train",
                     "pairs", n, "loss", st.loss / k, "rewards/accuracies", st.correct / k,
                     "rewards/chosen", st.reward_chosen / k, "rewards/rejected",
                     st.reward_rejected / k, "rewards/margins",
                     (st.reward_chosen - st.reward_rejected) / k);
}

/* ---- the command ---------------------------------------------------------------------------- */

static int dpo_run(const dpo_args_t *a) {
    const char *cmd = "dpo";
    dpo_config_t c = {DPO_LOSS_SIGMOID, a->beta, a->smoothing, a->micro, 0};
    int rc = dpo_loss_parse(a->loss_name, &c.loss), print_rc = 0, n_items = 0;
    gpt_t *m = rc == 0 ? hf_load(a->policy) : NULL;
    tok_t *tok = NULL;
    rm_data_t d = {0};
    unsigned char *held = NULL;
    int *items = NULL;
    local_session_t ss;
    int have_ss = 0;
    double t0 = cli_now_ms(), ms_ref = 0, ms_train = 0, ms_load = 0, ms_eval = 0;
    char rdir[PATH_MAX], pref_path[PATH_MAX + 32];
    if (rc == 0 && !m) rc = rl_fail_ctx(RL_EIO, "the policy: ");
    if (rc < 0) goto done;
    int max_len = a->max_len ? a->max_len : m->cfg.n_positions;
    if (max_len > m->cfg.n_positions) {
        rc = rl_fail(RL_EINVAL, "--max-len %d exceeds the model's n_positions %d", max_len,
                     m->cfg.n_positions);
        goto done;
    }
    if (!(tok = tok_load(a->policy))) {
        rc = rl_fail_ctx(RL_EIO, "%s: tokenizer: ", a->policy);
        goto done;
    }
    c.pad_id = tok_eot(tok);
    if ((rc = dpo_config_check(&c)) < 0) goto done;
    /* phase 1: the pairs and the split */
    if ((rc = rm_data_load_split(a->pairs, tok, max_len, &d)) < 0) goto done;
    held = calloc((size_t)d.n_groups, 1);
    items = malloc((size_t)d.n_pairs * sizeof(int));
    if (!held || !items) {
        rc = rl_fail(RL_ENOMEM, "out of memory");
        goto done;
    }
    ms_load = cli_now_ms() - t0;
    int n_held = rm_split(&d, a->frac, (uint64_t)a->split_seed, held);
    for (int p = 0; p < d.n_pairs; p++)
        if (!held[d.pairs[p].group]) items[n_items++] = p;
    if (n_items == 0) {
        rc = rl_fail(RL_EINVAL, "%s: all %d prompts are held out (--heldout-frac %g)", a->pairs,
                     d.n_groups, (double)a->frac);
        goto done;
    }
    int bsz = a->batch < n_items ? a->batch : n_items;
    long steps = a->steps ? a->steps : ((long)a->epochs * n_items + bsz - 1) / bsz;
    print_rc |= cli_print_json(json_pack(
        "{s:s,s:i,s:i,s:i,s:i,s:I,s:I,s:s,s:f,s:f}", "pairs_file", a->pairs, "pairs", d.n_pairs,
        "prompts", d.n_groups, "heldout_prompts", n_held, "train_pairs", n_items, "truncated",
        (json_int_t)d.n_truncated, "steps", (json_int_t)steps, "loss", dpo_loss_name(c.loss),
        "beta", (double)a->beta, "label_smoothing", (double)a->smoothing));
    snprintf(rdir, sizeof rdir, "%.4000s", a->run_dir ? a->run_dir : a->out);
    if (!a->run_dir) snprintf(rdir, sizeof rdir, "%.4000s.run", a->out);
    if ((rc = fs_mkdir_p(rdir)) < 0) goto done;
    /* phase 2: the reference logprobs */
    double t = cli_now_ms();
    const char *how = "the pairs file";
    if (d.n_ref < d.n_seqs && a->in_process) {
        how = "in process";
        rc = ref_in_process(a->ref ? a->ref : a->policy, &d, &c);
    }
    if (rc == 0 && !a->in_process &&
        (rc = local_session_open(&ss, rdir, 0, 1, a->shards, "dpo")) == 0)
        have_ss = 1;
    if (rc == 0 && d.n_ref < d.n_seqs && !a->in_process) {
        char aref[PATH_MAX], refname[PATH_MAX + 80];
        how = "reward workers";
        if (!realpath(a->ref ? a->ref : a->policy, aref))
            rc = rl_fail(RL_EIO, "%s: cannot resolve", a->ref ? a->ref : a->policy);
        if (rc == 0) rc = local_publish(&ss, aref, refname, sizeof refname);
        if (rc == 0) rc = ref_by_jobs(&ss, &d, refname, a->score_batch, (uint64_t)a->seed);
    }
    if (rc < 0) goto done;
    ms_ref = cli_now_ms() - t;
    snprintf(pref_path, sizeof pref_path, "%s/pairs_ref.jsonl", rdir);
    if ((rc = ref_write(a->pairs, &d, pref_path)) < 0) goto done;
    print_rc |= cli_print_json(json_pack("{s:s,s:s,s:i,s:f}", "reference", pref_path, "by", how,
                                         "sequences", d.n_seqs, "seconds", ms_ref / 1e3));
    /* phase 3: the steps */
    t = cli_now_ms();
    if (a->in_process) {
        rc = train_here(m, a, &d, items, n_items, steps, &c, &print_rc);
    } else {
        gpt_t *fm = NULL;
        rc = train_learner(&ss, a, pref_path, steps, max_len, &fm, &print_rc);
        if (rc == 0) gpt_destroy(&m), m = fm;
    }
    if (rc < 0) goto done;
    ms_train = cli_now_ms() - t;
    /* phase 4: evaluation and the policy */
    t = cli_now_ms();
    json_t *eh = eval_json(m, &d, held, 1, &c, &rc);
    if (rc < 0) goto done;
    json_t *et = eval_json(m, &d, held, 0, &c, &rc);
    if (rc < 0) {
        json_decref(eh);
        goto done;
    }
    ms_eval = cli_now_ms() - t;
    print_rc |= cli_print_json(json_incref(eh));
    print_rc |= cli_print_json(json_incref(et));
    if ((rc = hf_save(m, a->out)) == 0) rc = hf_copy_tokenizer(a->policy, a->out);
    /* the figures beside the model, for the report */
    json_t *sum = json_pack("{s:s,s:f,s:f,s:I,s:i,s:i,s:f,s:f,s:f,s:f,s:i,s:s,s:o,s:o}", "loss",
                            dpo_loss_name(c.loss), "beta", (double)a->beta, "label_smoothing",
                            (double)a->smoothing, "steps", (json_int_t)steps, "batch", bsz, "pairs",
                            d.n_pairs, "lr", (double)a->lr, "seconds", (cli_now_ms() - t0) / 1e3,
                            "seconds_reference", ms_ref / 1e3, "seconds_train", ms_train / 1e3,
                            "learner_shards", a->in_process ? 0 : a->shards, "reference_by", how,
                            "heldout", eh, "train", et);
    char *text = sum ? json_dumps(sum, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
    char spath[PATH_MAX + 32];
    snprintf(spath, sizeof spath, "%.4000s/" DPO_STATS_FILE, a->out);
    if (rc == 0) rc = text ? fs_write_atomic(spath, text, strlen(text)) : RL_ENOMEM;
    free(text);
    json_decref(sum);
    if (rc < 0) goto done;
    print_rc |= cli_print_json(
        json_pack("{s:s,s:I,s:f,s:f,s:f,s:f,s:f,s:i}", "saved", a->out, "steps", (json_int_t)steps,
                  "seconds", (cli_now_ms() - t0) / 1e3, "seconds_load", ms_load / 1e3,
                  "seconds_reference", ms_ref / 1e3, "seconds_train", ms_train / 1e3,
                  "seconds_eval", ms_eval / 1e3, "learner_shards", a->in_process ? 0 : a->shards));
done:
    if (have_ss) local_session_close(&ss);
    rm_data_free(&d);
    tok_destroy(&tok);
    gpt_destroy(&m);
    free(held);
    free(items);
    return rc < 0 ? cli_fail(cmd, "training", rc) : print_rc;
}

/* --schedule constant|warmup|cosine */
static int dpo_opt_schedule(void *args, const char *value) {
    adamw_sched_kind_t k;
    if (adamw_sched_parse(value, &k) < 0) return RL_EINVAL;
    if (args) ((dpo_args_t *)args)->kind = k;
    return 0;
}

#define DI(f, name, lo, hi, def, arg, help) CLI_OPT_INT(dpo_args_t, f, name, lo, hi, def, arg, help)
#define DF(f, name, lo, hi, def, arg, help)                                                        \
    CLI_OPT_FLOAT(dpo_args_t, f, name, lo, hi, def, arg, help)
static const cli_opt_t dpo_opt_table[] = {
    CLI_OPT_STR(dpo_args_t, policy, "policy", NULL, "DIR", "the policy to start from (SFT model)",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(dpo_args_t, ref, "ref", NULL, "DIR", "the frozen reference (default: --policy)", 0),
    CLI_OPT_STR(dpo_args_t, pairs, "pairs", NULL, "FILE", "preference pairs (as train-rm)",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(dpo_args_t, out, "out", NULL, "DIR", "the trained policy", CLI_OPT_REQUIRED),
    CLI_OPT_STR(dpo_args_t, loss_name, "loss", "sigmoid", "sigmoid|ipo",
                "DPO's -log sigma(beta h), or IPO's (h - 1/(2 beta))^2 on per-token means", 0),
    DF(beta, "beta", 1e-6, 1e6, "0.1", "B", "the KL strength beta"),
    DF(smoothing, "label-smoothing", 0, 0.499, "0", "E",
       "conservative DPO: the probability that a label is flipped (sigmoid loss)"),
    DF(frac, "heldout-frac", 0, 1, "0.1", "F", "prompts held out for evaluation"),
    CLI_OPT_LONG(dpo_args_t, split_seed, "split-seed", 0, LONG_MAX, "0", "S",
                 "seed of the held-out split"),
    DI(batch, "batch", 1, 1 << 20, "16", "N", "pairs per step"),
    DI(micro, "micro", 1, 1 << 20, "8", "M", "pairs per forward pass"),
    DI(steps, "steps", 1, 100000000, NULL, "N", "optimizer steps (instead of --epochs)"),
    DI(epochs, "epochs", 1, 1000000, NULL, "E",
       "passes over the pairs (1 unless --steps or --epochs is given)"),
    DF(lr, "lr", 0, 10, "5e-05", "X", "peak learning rate"),
    DF(min_lr, "min-lr", 0, 10, "5e-06", "X", "final learning rate"),
    CLI_OPT_CALL("schedule", "constant|warmup|cosine", "learning-rate schedule (default cosine)",
                 dpo_opt_schedule, 0),
    DI(warmup, "warmup", 0, 100000000, "10", "N", "warmup steps"),
    DF(wd, "weight-decay", 0, 10, "0", "X", "AdamW weight decay"),
    DF(clip, "clip", 0, 1e9, "1", "X", "gradient-norm clip"),
    CLI_OPT_LONG(dpo_args_t, seed, "seed", 0, LONG_MAX, "1", "S", "run seed (epoch orders)"),
    DI(max_len, "max-len", 2, 1000000, NULL, "N",
       "longer sequences lose prompt tokens from the left (default: the model's context)"),
    DI(log_every, "log-every", 1, 100000000, "10", "N", "log interval"),
    DI(threads, "threads", 1, 1024, "2", "N", "threads (in process)"),
    DI(shards, "learner-shards", 1, 16, "1", "S", "gradient shards of the learner"),
    CLI_OPT_FLAG(dpo_args_t, in_process, "in-process",
                 "no cluster: the reference logprobs and the steps in this process"),
    DI(steps_per_job, "steps-per-job", 1, 1 << 24, "20", "N", "steps per TRAIN job"),
    DI(score_batch, "score-batch", 1, 1 << 20, "64", "N", "sequences per reference SCORE job"),
    CLI_OPT_STR(dpo_args_t, run_dir, "run-dir", NULL, "DIR",
                "the local cluster and pairs_ref.jsonl (default OUT.run)", 0),
    DI(grad_blocks, "grad-blocks", 1, GTREE_MAX_BLOCKS, "8", "N",
       "gradient blocks per step (capped at its pairs): the fixed order the step's gradient is "
       "summed in, the same on any number of learner shards"),
};
#undef DI
#undef DF

const cli_opts_t cli_dpo_opts = CLI_OPTS(
    "dpo", "rlhf dpo --policy DIR --pairs FILE --out DIR [options]",
    "Direct preference optimisation (Rafailov et al. 2023) of the policy DIR on FILE, JSONL\n"
    "lines {\"prompt_id\"?, \"prompt\", \"chosen\", \"rejected\"} (rlhf pairs), against the "
    "frozen\n"
    "reference --ref. Per pair, h = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r)), the\n"
    "logprobs summed over the completion's tokens (+ <|endoftext|>) given the prompt; loss\n"
    "sigmoid: -(1-E) log sigma(beta h) - E log sigma(-beta h) (E = --label-smoothing: cDPO),\n"
    "ipo: (h - 1/(2 beta))^2 with per-token mean logprobs (Azar et al. 2023). The reference\n"
    "logprobs are computed once, as SCORE jobs on reward workers (unless FILE carries TRL's\n"
    "ref_chosen_logps / ref_rejected_logps), and kept in RUN_DIR/pairs_ref.jsonl; the steps\n"
    "run as TRAIN jobs on a learner of --learner-shards S shards behind a local master (or the\n"
    "run's master under `rlhf run`), the same bits for any S. Prints the steps (loss,\n"
    "rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins as TRL), the\n"
    "held-out and training figures, and a summary.\n",
    dpo_opt_table,
    "Prompts whose hash (with --split-seed) falls below F are held out as train-rm holds them\n"
    "out. --in-process runs everything in this process (the same steps, no cluster).\n");

int cmd_dpo(int argc, char **argv) {
    dpo_args_t a = {.kind = ADAMW_SCHED_COSINE};
    int c = cli_opts_parse(&cli_dpo_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    if (a.steps > 0 && a.epochs > 0) {
        fprintf(stderr, "rlhf dpo: give --steps or --epochs, not both\n");
        return 2;
    }
    if (!a.epochs) a.epochs = 1;
    dpo_loss_t l;
    if (dpo_loss_parse(a.loss_name, &l) < 0) {
        fprintf(stderr, "rlhf dpo: --loss: %s\n", rl_errmsg());
        return 2;
    }
    ops_set_threads(a.threads);
    return dpo_run(&a);
}
