/*
 * worker_learner.c - the learner role: the TRAIN job handler (kinds LM and RM; PPO goes to
 * worker_ppo.c) and its step loop, with the gradient computed on S shards. The shard protocol is
 * worker_shard.c, the reward-model data worker_rmdata.c.
 *
 *   rlhf-worker --role learner --master EP --run-dir DIR [--shard 0/S --shard-endpoint EP]
 *   rlhf-worker --role learner --shard k/S --shard-endpoint EP            (k = 1 .. S-1)
 *
 * Shard 0 is the learner proper: the only learner that registers with the master, the owner of
 * the parameters, the AdamW moments and the step count, and of the checkpoints in its run
 * directory. Shards 1..S-1 hold a copy of the parameters and nothing else; they connect to a
 * ROUTER that shard 0 binds on --shard-endpoint (its bound address is written to
 * RUN_DIR/learner.json) and beat every heartbeat interval. The master never sees them.
 *
 * One optimizer step (train step `k` of job `j`; each try at it is a new round id). Its reduction
 * is fixed by the step and the job's grad_blocks setting, never by S (common/nn/gtree.h): the B
 * rows are cut into nb = min(grad_blocks, B) blocks, block j = rows [B*j/nb, B*(j+1)/nb); each
 * block's gradient is computed alone, from a zeroed arena, with its loss divided by the whole
 * step's scored tokens (RM: items); the blocks are combined by one canonical tree T(nb) (T(n) =
 * T(h) over the first h blocks + T(n-h) over the rest, h the largest power of two below n), which
 * is cut top-down into S nodes (the node with the most blocks split first, ties to the left):
 *   1. shard 0 waits until every shard is present (heard within the liveness window);
 *   2. it sends each shard k the rows of the k-th node (ShardStep: the node's blocks, the step's
 *      row count and scored tokens, the tokens, and the parameter arena when the shard does not
 *      hold the parameters the step is taken at);
 *   3. every shard, shard 0 included, computes its node's value - its blocks one by one, combined
 *      as the tree does (at most ceil(log2 blocks) + 1 arenas) - and shards 1..S-1 return it,
 *      one gradient each, with the node's figures (summed losses, scored tokens, RM pairs and
 *      pairs ordered correctly) combined the same way (ShardGrad);
 *   4. shard 0 combines its own node with the others in the tree (whoever answered first), clips,
 *      steps AdamW and sends the new parameters to every shard (ShardUpdate; acknowledged with
 *      their checksum after the job's last step).
 * So a step's parameters, loss, RM accuracy, clipping and AdamW are the same bits for any S, and
 * S = 1 is the in-process `rlhf sft` / `train-rm` / `train-lm` (train_lm_step and rm_step reduce
 * the same blocks in the same tree). With more shards than blocks the last shards idle (logged
 * once per job): raise grad_blocks to use them - that changes the result, S never does.
 * Nothing is applied before every gradient of the round is in. A shard that dies or stays silent
 * past the liveness window mid-round (or comes back as a new process) abandons the round: its
 * partial sums are dropped, shard 0 waits up to --shard-wait-ms for the shard to be back and
 * re-runs the step under a new round id (a late gradient of the old round is dropped). If the
 * shard does not come back, the job fails: shard 0 drops its unsaved progress (it reloads the
 * last checkpoint) and the master re-dispatches the job, which then starts from that state.
 *
 * Kinds. LM: B windows of T+1 tokens per step, drawn from a token file, one inline batch used
 * every step, or one masked batch per step (step_inputs/step_targets, target -1 untrained: what
 * `rlhf sft --learner-shards` sends); a block is rows of the batch (train_lm_leaves). RM: the
 * reward model on a pairs file (common/align/rm.h): every shard loads the same file with the same
 * tokenizer (deterministic, so a global item index means the same thing everywhere), shard 0 draws
 * the step's items from the training split's epoch orders (rm_split, rm_epoch_order: those of
 * `rlhf train-rm`) and sends each shard its node's items as its "inputs" rows (T = 1) with a frame
 * "rm" (the job's RM settings, a packed TrainSpec); a block is items (rm_grad_leaves: rm_grad with
 * scale 1/(items in the step), micro-batches inside the block, an item never split). Clipping and
 * AdamW are those of LM (= rm_update). Without a checkpoint an RM learner starts from
 * rm_load(model_dir): a new scalar head if it has none.
 *
 * Jobs are idempotent at step granularity: a job starting at global step k runs only if the
 * learner is at step k; a job the learner has already applied (it is at k + n_steps and the
 * job id is that of its last job) returns the recorded result without running anything. After
 * each job shard 0 writes a checkpoint RUN_DIR/ckpt-STEP/ (worker_ckpt.h: the model in model/,
 * in the Hugging Face layout, and state.bin with the job, the AdamW state and the job's result)
 * and points RUN_DIR/latest at it; a restarted learner resumes from the newest checkpoint that
 * verifies. Per-step figures go to RUN_DIR/metrics.jsonl.
 *
 * State: everything a job may touch is the learner_t it is given (owned by the worker's main
 * state): the hub to the other shards, the RM data and the training state.
 * Threads: shard 0's ROUTER is created by the main thread before any job and then used only by
 * the job thread (one job at a time, started and joined by the main thread). A shard k > 0 has
 * a main thread (socket, beats) and a compute thread per node.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "nn/ops.h"
#include "base/fs.h"
#include "base/rng.h"
#include "nn/adamw.h"
#include "nn/data.h"
#include "nn/gpt.h"
#include "nn/hf.h"
#include "nn/train.h"
#include "align/rm.h"
#include "worker.h"
#include "worker_ckpt.h"
#include "worker_rmdata.h"
#include "worker_shard.h"

/* Rounds tried for one step before the job fails (each lost shard or stale copy costs one). */
#define MAX_ROUNDS 8
#define PATH_LEN   4096

/* Shard 0's state: the hub to the other shards, the RM data, and the training state that jobs
 * advance and checkpoints keep. */
struct learner {
    int index, n_shards;
    char base_dir[PATH_LEN]; /* --run-dir: the checkpoints of jobs that name no ckpt_dir */
    char run_dir[PATH_LEN];  /* the checkpoints of the training it holds (or last held) */
    int held_kind;           /* that training's TrainKind; 0: none yet (a fresh learner) */
    char who[96];            /* for the log */
    shard_hub_t hub;
    rmdata_t rmd;
    /* training state */
    int loaded;
    gpt_t *model;
    train_t tr;        /* tr.step is the learner's global step count */
    long ckpt_step;    /* step of the checkpoint it was loaded from or last saved; -1: none */
    uint64_t last_job; /* job of the checkpoint */
    uint8_t *result;   /* that job's packed TrainOutput */
    size_t result_len;
    uint32_t crc;                     /* of the parameters */
    char src_dir[CKPT_PATH_LEN + 32]; /* where the model came from (its tokenizer files) */
    char ckpt_dir[CKPT_PATH_LEN];     /* the checkpoint it was loaded from */
};

#define llog(l, ...) shard_log((l)->who, __VA_ARGS__)

static void state_drop(learner_t *l) {
    train_free(&l->tr);
    memset(&l->tr, 0, sizeof l->tr);
    gpt_destroy(&l->model);
    free(l->result);
    l->result = NULL;
    l->result_len = 0;
    l->loaded = 0;
    l->hub.pf_valid = 0;
}

/* ---- checkpoints (worker_ckpt.h: the layout, the format, atomic writes, the fallback) ----- */

/*
 * The LM/RM learner's payload (host byte order; the step is the checkpoint's position):
 *   u64 job_id | i64 adam_t | u64 n_params | u32 result_len | result (the job's packed
 *   TrainOutput) | AdamW moments (2 n_params f32)
 */
static const char *const ckpt_models[] = {"model"};

static int ckpt_write(learner_t *l) {
    ckpt_buf_t b = {0};
    uint64_t job = l->last_job, n = l->model->num_params;
    int64_t t = l->tr.opt.t;
    uint32_t rlen = (uint32_t)l->result_len;
    ckpt_put(&b, &job, 8);
    ckpt_put(&b, &t, 8);
    ckpt_put(&b, &n, 8);
    ckpt_put(&b, &rlen, 4);
    ckpt_put(&b, l->result, l->result_len);
    ckpt_put(&b, l->tr.opt.moments, 2 * n * sizeof(float));
    ckpt_model_t m = {ckpt_models[0], l->model, l->src_dir};
    char dir[CKPT_PATH_LEN];
    int rc = b.oom ? rl_fail(RL_ENOMEM, "checkpoint: out of memory")
                   : ckpt_save(l->run_dir, CKPT_KIND_TRAIN, (uint64_t)l->tr.step, &m, 1, b.p, b.n,
                               l->who, dir);
    free(b.p);
    if (rc < 0) return rc;
    l->ckpt_step = l->tr.step;
    /* the tokenizer's home from now on: the directory it came from may be pruned */
    snprintf(l->src_dir, sizeof l->src_dir, "%s/%s", dir, ckpt_models[0]);
    return 0;
}

/* ckpt_accept_fn: the checkpoint's model and payload become the learner's state. */
static int ckpt_take(void *ctx, ckpt_t *c) {
    learner_t *l = ctx;
    gpt_t *m = c->models[0];
    uint64_t job = 0, n = 0;
    int64_t t = 0;
    uint32_t rlen = 0;
    ckpt_reader_t *r = &c->payload;
    ckpt_get(r, &job, 8);
    ckpt_get(r, &t, 8);
    ckpt_get(r, &n, 8);
    ckpt_get(r, &rlen, 4);
    size_t mom = 2 * m->num_params * sizeof(float);
    if (r->bad || n != m->num_params || (size_t)(r->end - r->p) != (size_t)rlen + mom)
        return rl_fail(RL_EFORMAT, "%s: sized for %" PRIu64 " parameters, the model has %zu",
                       c->dir, n, m->num_params);
    adamw_sched_t sched = {ADAMW_SCHED_CONSTANT, 1e-3f, 0, 0, 0}; /* each job sets its own */
    int rc = train_init(&l->tr, m, &sched, 0, 0);
    if (rc == 0 && rlen && !(l->result = malloc(rlen))) rc = rl_fail(RL_ENOMEM, "out of memory");
    if (rc < 0) {
        train_free(&l->tr);
        memset(&l->tr, 0, sizeof l->tr);
        return rc;
    }
    l->result_len = rlen;
    ckpt_get(r, l->result, rlen);
    ckpt_get(r, l->tr.opt.moments, mom);
    l->tr.opt.t = (long)t;
    l->tr.step = (long)c->pos;
    l->last_job = job;
    l->ckpt_step = (long)c->pos;
    l->crc = shard_params_crc(m);
    l->model = m;
    c->models[0] = NULL;
    snprintf(l->src_dir, sizeof l->src_dir, "%s/%s", c->dir, ckpt_models[0]);
    snprintf(l->ckpt_dir, sizeof l->ckpt_dir, "%s", c->dir);
    return 0;
}

/* The learner's state: the newest checkpoint of the run, or else the model in `model_dir` at
 * step 0 (rm: as a reward model, rm_load: a new scalar head from head_seed when it has none). */
static int state_ensure(learner_t *l, const char *model_dir, int rm, uint64_t head_seed) {
    if (l->loaded) return 0;
    int rc = ckpt_load_latest(l->run_dir, CKPT_KIND_TRAIN, ckpt_models, 1, ckpt_take, l, l->who);
    if (rc < 0) return rc;
    if (rc == 1) {
        llog(l, "resumed from checkpoint %s at step %ld", l->ckpt_dir, l->tr.step);
    } else {
        if (!model_dir || !model_dir[0])
            return rl_fail(RL_EINVAL, "train: no checkpoint in %s and no model_dir", l->run_dir);
        gpt_t *m = rm ? rm_load(model_dir, head_seed) : hf_load(model_dir);
        if (!m) return rl_fail_ctx(RL_EINVAL, "train");
        adamw_sched_t sched = {ADAMW_SCHED_CONSTANT, 1e-3f, 0, 0, 0};
        if ((rc = train_init(&l->tr, m, &sched, 0, 0)) < 0) {
            train_free(&l->tr);
            gpt_destroy(&m);
            return rc;
        }
        l->model = m;
        l->last_job = 0;
        l->ckpt_step = -1;
        l->crc = shard_params_crc(m);
        snprintf(l->src_dir, sizeof l->src_dir, "%s", model_dir);
        llog(l, "starting from %s (no checkpoint in %s)", model_dir, l->run_dir);
    }
    l->loaded = 1;
    l->hub.pf_valid = 0;
    return 0;
}

/* ---- shard 0: one optimizer step ------------------------------------------------------------ */

typedef struct {
    float loss, lr;
    double grad_norm, ms;
    double ms_slice;  /* shard 0's own node (last round) */
    double ms_wait;   /* then waiting for the other shards' gradients */
    double ms_update; /* sum, clip, AdamW, checksum and sending the new parameters */
    int reruns, in_sync;
    double correct; /* RM: pairs ordered correctly, and pairs, over every node */
    long pairs;
    double chosen, rejected; /* DPO: summed implicit rewards */
} step_out_t;

/* One optimizer step at l->tr.step on the batch in/tg (B rows of T; an RM step's items travel as
 * the rows, T = 1, with rm set): the step's gradient tree (gtree.h, grad_blocks blocks) cut into
 * one node per shard, each shard's node computed there, the nodes combined in the tree on shard
 * 0, clipped, AdamW; `last` (the job's last step) asks the shards to acknowledge the new
 * parameters. Returns 0 or RL_E* (the step is then not applied). */
static int step_run(learner_t *l, const worker_job_t *job, const Rlhf__TrainSpec *sp, const int *in,
                    const int *tg, int B, int T, int last, const rmdata_job_t *rm,
                    const shard_frames_t *rm_frame, step_out_t *so) {
    shard_hub_t *h = &l->hub;
    gpt_t *m = l->model;
    gtree_t *g = &l->tr.tree;
    int S = l->n_shards, rc;
    uint64_t step = (uint64_t)l->tr.step;
    double t0 = wire_now_ms();
    /* the reduction: fixed by the step and the setting, never by S (more shards than blocks:
     * the last ones idle) */
    int nb = gtree_blocks((int)sp->grad_blocks, B), lo[WORKER_LEARNER_MAX_SHARDS],
        hi[WORKER_LEARNER_MAX_SHARDS];
    int k = gtree_cut(nb, S, lo, hi), empty, a, b;
    double norm = B, stat[GTREE_NSTAT];
    if (!rm && (rc = train_lm_weight(tg, NULL, (size_t)B * (size_t)T, &norm)) < 0) return rc;
    if (norm == 0) return rl_fail(RL_EINVAL, "train: step %" PRIu64 ": no target to score", step);
    if ((rc = gpt_grads_alloc(m)) < 0) return rc;
    if (k < S && step == sp->step)
        llog(l, "job %" PRIu64 ": %d blocks per step for %d shards: shards %d..%d idle",
             job->job_id, nb, S, k, S - 1);
    shard_node_t nd[WORKER_LEARNER_MAX_SHARDS];
    for (int i = 0; i < S; i++)
        nd[i] = (shard_node_t){nb, i < k ? lo[i] : 0, i < k ? hi[i] : 0, B, norm};
    memset(so, 0, sizeof *so);
    for (int tries = 1;; tries++) {
        if (tries > MAX_ROUNDS)
            return rl_fail(RL_EIO, "train: step %" PRIu64 ": %d rounds failed", step, MAX_ROUNDS);
        shard_hub_round_clear(h);
        if (S > 1 && (rc = shard_hub_wait(h, job)) < 0) return rc;
        h->round++;
        for (int i = 1; i < S; i++) {
            rc = shard_hub_send_step(h, i, m, l->crc, job->job_id, step, in, tg, T, &nd[i],
                                     sp->delay_ms, rm_frame);
            if (rc < 0) return rc;
        }
        /* our own node while theirs compute */
        double ts = wire_now_ms();
        gtree_reset(g, nb, m->grads_mem, m->num_params);
        rc = shard_node_leaves(g, m, &nd[0], in, tg, T, rm ? &l->rmd : NULL, rm ? &rm->opt : NULL);
        if (rc < 0) return rl_fail_ctx(rc, "train: step %" PRIu64, step);
        so->ms_slice = wire_now_ms() - ts;
        ts = wire_now_ms();
        int broken = 0;
        if ((rc = shard_hub_gather(h, job, step, &broken)) < 0) return rc;
        so->ms_wait = wire_now_ms() - ts;
        if (!broken) break;
        /* nothing of this round has been applied: drop its partial sums and run it again */
        so->reruns++;
        llog(l,
             "step %" PRIu64 " round %" PRIu64 " abandoned (a shard was lost or lacked the "
             "parameters): re-running",
             step, h->round);
    }
    /* the other nodes, combined with ours in the tree */
    double tu = wire_now_ms();
    if ((rc = shard_hub_combine(h, g, k, lo, hi)) < 0 ||
        (rc = gtree_take(g, stat, &empty, &a, &b)) < 0)
        return rl_fail_ctx(rc, "train: step %" PRIu64, step);
    if (rm && l->rmd.is_dpo) {
        so->loss = (float)stat[DPO_STAT_LOSS];
        so->correct = stat[DPO_STAT_CORRECT];
        so->pairs = (long)stat[DPO_STAT_PAIRS];
        so->chosen = stat[DPO_STAT_CHOSEN];
        so->rejected = stat[DPO_STAT_REJECTED];
    } else if (rm) {
        so->loss = (float)stat[RM_STAT_LOSS];
        so->correct = stat[RM_STAT_CORRECT];
        so->pairs = (long)stat[RM_STAT_PAIRS];
    } else {
        so->loss = (float)(stat[0] / norm);
    }
    /* the update of train_lm_step: clip (fused into the update), learning rate, AdamW */
    float cs;
    rc = adamw_clip_scale(m->grads_mem, m->num_params, l->tr.clip, &so->grad_norm, &cs);
    if (rc < 0) return rl_fail_ctx(rc, "train: step %" PRIu64 ": gradient", step);
    so->lr = adamw_sched_lr(&l->tr.sched, l->tr.step);
    rc = adamw_step_scaled(&l->tr.opt, m->params_mem, m->grads_mem, l->tr.groups, l->tr.n_groups,
                           so->lr, cs);
    if (rc < 0) return rl_fail_ctx(rc, "train: step %" PRIu64 ": optimizer", step);
    l->tr.step++;
    if (S > 1) /* alone, the checksum is needed only at the end of the job */
        l->crc = shard_hub_params_changed(h, m);
    so->in_sync = S > 1 ? shard_hub_send_update(h, m, l->crc, job->job_id, step, last) : 1;
    so->ms_update = wire_now_ms() - tu;
    so->ms = wire_now_ms() - t0;
    return 0;
}

/* ---- shard 0: the TRAIN job ----------------------------------------------------------------- */

/* B windows of T+1 tokens of ids[0..n) for global step `step`: the draw of `rlhf train-lm`. */
static void batch_from_tokens(const int *ids, size_t n, uint64_t seed, uint64_t step, int B, int T,
                              int *in, int *tg) {
    size_t span = n - (size_t)T; /* window starts in [0, span) */
    for (int b = 0; b < B; b++) {
        size_t start = (size_t)(rng_uniform(seed, step, (uint64_t)b) * span);
        if (start >= span) start = span - 1;
        memcpy(in + (size_t)b * T, ids + start, (size_t)T * sizeof(int));
        memcpy(tg + (size_t)b * T, ids + start + 1, (size_t)T * sizeof(int));
    }
}

static void metrics_append(const learner_t *l, uint64_t job_id, uint64_t first,
                           const step_out_t *so, int n) {
    char path[PATH_LEN + 20];
    snprintf(path, sizeof path, "%s/metrics.jsonl", l->run_dir);
    FILE *f = fopen(path, "a");
    if (!f) return;
    for (int k = 0; k < n; k++) {
        char rm[192] = ""; /* RM and DPO steps: their pairs and accuracy (DPO: rewards) */
        if (so[k].pairs)
            snprintf(rm, sizeof rm, ",\"pairs\":%ld,\"accuracy\":%.9g", so[k].pairs,
                     so[k].correct / (double)so[k].pairs);
        if (so[k].pairs && (so[k].chosen != 0 || so[k].rejected != 0))
            snprintf(rm + strlen(rm), sizeof rm - strlen(rm),
                     ",\"rewards_chosen\":%.9g,\"rewards_rejected\":%.9g",
                     so[k].chosen / (double)so[k].pairs, so[k].rejected / (double)so[k].pairs);
        fprintf(f,
                "{\"job_id\":%" PRIu64 ",\"step\":%" PRIu64 ",\"loss\":%.9g,\"grad_norm\":%.9g,"
                "\"lr\":%.9g,\"ms\":%.3f,\"ms_slice\":%.3f,\"ms_wait\":%.3f,\"ms_update\":%.3f,"
                "\"shards\":%d,\"rounds_rerun\":%d%s}\n",
                job_id, first + (uint64_t)k, (double)so[k].loss, so[k].grad_norm, (double)so[k].lr,
                so[k].ms, so[k].ms_slice, so[k].ms_wait, so[k].ms_update, l->n_shards, so[k].reruns,
                rm);
    }
    fclose(f);
}

static int output_copy(const uint8_t *src, size_t len, int replayed, uint8_t **out,
                       size_t *out_len) {
    Rlhf__TrainOutput *o = rlhf__train_output__unpack(NULL, len, src);
    if (!o) return rl_fail(RL_EFORMAT, "train: the recorded result does not decode");
    o->replayed = replayed != 0;
    *out_len = rlhf__train_output__get_packed_size(o);
    *out = malloc(*out_len ? *out_len : 1);
    if (*out) rlhf__train_output__pack(o, *out);
    rlhf__train_output__free_unpacked(o, NULL);
    return *out ? 0 : rl_fail(RL_ENOMEM, "out of memory");
}

/* TRAIN of kind LM (token windows, one inline batch, or one masked batch per step), RM or DPO
 * (pairs: the RM path with DPO's loss). */
static int train_run(learner_t *l, const worker_job_t *job, const Rlhf__TrainSpec *sp,
                     uint8_t **out, size_t *out_len) {
    int B = (int)sp->batch_size, T = (int)sp->seq_len, n = (int)sp->n_steps, rc;
    int is_dpo = sp->kind == RLHF__TRAIN_KIND__TRAIN_KIND_DPO;
    int is_rm = sp->kind == RLHF__TRAIN_KIND__TRAIN_KIND_RM || is_dpo;
    int per_step = !is_rm && sp->n_step_seq > 0; /* one masked batch per step (SFT) */
    if (B < 1 || B > 1 << 20 || T < 1 || n < 1 || sp->n_steps > 1u << 24)
        return rl_fail(RL_EINVAL, "train: batch_size %u, seq_len %u, n_steps %u", sp->batch_size,
                       sp->seq_len, sp->n_steps);
    if (is_rm && !sp->pairs_file[0]) return rl_fail(RL_EINVAL, "train: rm: no pairs_file");
    if (per_step) {
        size_t need = 0;
        for (size_t k = 0; k < sp->n_step_seq; k++) {
            if (sp->step_seq[k] < 1 || (int)sp->step_seq[k] > T)
                return rl_fail(RL_EINVAL, "train: step_seq[%zu] = %u is not in [1, seq_len %d]", k,
                               sp->step_seq[k], T);
            need += (size_t)B * sp->step_seq[k];
        }
        if (sp->n_step_seq != (size_t)n || sp->n_step_inputs != need || sp->n_step_targets != need)
            return rl_fail(RL_EINVAL,
                           "train: %zu step batches of %zu/%zu ids for %d steps of %d rows "
                           "(%zu ids)",
                           sp->n_step_seq, sp->n_step_inputs, sp->n_step_targets, n, B, need);
    } else if (!is_rm && !sp->tokens_file[0] && sp->n_batch != (size_t)B * (size_t)(T + 1)) {
        return rl_fail(RL_EINVAL,
                       "train: no tokens_file, and the inline batch has %zu ids, not "
                       "%d rows of %d",
                       sp->n_batch, B, T + 1);
    }
    if ((rc = state_ensure(l, sp->model_dir, is_rm && !is_dpo, sp->rm_seed)) < 0) return rc;
    gpt_t *m = l->model;
    if (T > m->cfg.n_positions)
        return rl_fail(RL_EINVAL, "train: seq_len %d exceeds the model's n_positions %d", T,
                       m->cfg.n_positions);
    uint64_t at = (uint64_t)l->tr.step;
    if (at == sp->step + sp->n_steps && l->last_job == job->job_id && l->result &&
        l->ckpt_step == l->tr.step) {
        llog(l,
             "job %" PRIu64 " (steps %" PRIu64 "..%" PRIu64 ") already applied: its recorded "
             "result",
             job->job_id, sp->step, at - 1);
        return output_copy(l->result, l->result_len, 1, out, out_len);
    }
    /* behind the job (an earlier job of the training not applied yet, or lost with a crash):
     * another attempt, once the job before it ran, succeeds - transient; ahead of it without
     * its recorded result: the job cannot be applied again - its spec is the problem */
    if (at < sp->step && job->verdict) *job->verdict = WORKER_VERDICT_TRANSIENT;
    if (at != sp->step)
        return rl_fail(RL_ERANGE,
                       "train: the learner is at step %" PRIu64 ", job %" PRIu64
                       " starts at step %" PRIu64,
                       at, job->job_id, sp->step);
    adamw_sched_kind_t kinds[] = {ADAMW_SCHED_CONSTANT, ADAMW_SCHED_WARMUP, ADAMW_SCHED_COSINE};
    if ((unsigned)sp->schedule > 2) return rl_fail(RL_EINVAL, "train: schedule %d", sp->schedule);
    rmdata_job_t rj = {0};
    shard_frames_t *rmf = is_rm ? malloc(sizeof *rmf) : NULL;
    if (is_rm && !rmf) return rl_fail(RL_ENOMEM, "train: out of memory");
    if (rmf) rmf->n = 0;
    if (is_rm && ((rc = rmdata_job_init(&rj, &l->rmd, l->model, sp, B)) < 0 ||
                  (rc = shard_frames_add(rmf, "rm", RLHF__DTYPE__DTYPE_UNSPECIFIED, rj.spec,
                                         rj.spec_len, (int64_t)rj.spec_len, -1)) < 0)) {
        free(rmf);
        rmdata_job_free(&rj);
        return rc;
    }
    l->tr.sched = (adamw_sched_t){kinds[sp->schedule], sp->lr, sp->min_lr, (long)sp->warmup,
                                  (long)sp->total_steps};
    l->tr.clip = sp->clip;
    l->tr.opt.weight_decay = sp->weight_decay;
    int *ids = NULL, *in = NULL, *tg = NULL;
    size_t n_ids = 0, off = 0;
    step_out_t *so = calloc((size_t)n, sizeof *so);
    float *losses = malloc((size_t)n * sizeof *losses);
    double *norms = malloc((size_t)n * sizeof *norms), *accs = malloc((size_t)n * sizeof *accs);
    double *rch = calloc((size_t)n, sizeof *rch), *rrj = calloc((size_t)n, sizeof *rrj);
    in = malloc((size_t)B * T * sizeof *in);
    tg = malloc((size_t)B * T * sizeof *tg);
    rc = so && losses && norms && accs && rch && rrj && in && tg
             ? 0
             : rl_fail(RL_ENOMEM, "train: out of memory");
    if (rc == 0 && !is_rm && !per_step && sp->tokens_file[0]) {
        rc = data_read_tokens(sp->tokens_file, m->cfg.vocab_size, &ids, &n_ids);
        if (rc == 0 && n_ids < (size_t)T + 1)
            rc = rl_fail(RL_EINVAL, "train: %s: %zu tokens, need at least %d", sp->tokens_file,
                         n_ids, T + 1);
    } else if (rc == 0 && !is_rm && !per_step) {
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                in[b * T + t] = sp->batch[(size_t)b * (T + 1) + t];
                tg[b * T + t] = sp->batch[(size_t)b * (T + 1) + t + 1];
            }
    }
    double ms = 0;
    long pairs = 0;
    int reruns = 0, in_sync = 1;
    for (int k = 0; rc == 0 && k < n; k++) {
        if (atomic_load(job->cancel)) {
            rc = rl_fail(RL_EIO, "train: cancelled");
            break;
        }
        const int *sin = in, *stg = tg;
        int sB = B, sT = T;
        if (ids) batch_from_tokens(ids, n_ids, job->seed, (uint64_t)l->tr.step, B, T, in, tg);
        if (per_step) {
            sT = (int)sp->step_seq[k];
            sin = sp->step_inputs + off;
            stg = sp->step_targets + off;
            off += (size_t)B * (size_t)sT;
        }
        if (is_rm) {
            rmdata_job_batch(&rj, sp->rm_seed, l->tr.step);
            sin = stg = rj.batch;
            sB = rj.bsz;
            sT = 1;
        }
        rc = step_run(l, job, sp, sin, stg, sB, sT, k == n - 1, is_rm ? &rj : NULL, rmf, &so[k]);
        if (rc < 0) break;
        losses[k] = so[k].loss;
        norms[k] = so[k].grad_norm;
        accs[k] = so[k].pairs ? so[k].correct / (double)so[k].pairs : 0;
        rch[k] = so[k].pairs ? so[k].chosen / (double)so[k].pairs : 0;
        rrj[k] = so[k].pairs ? so[k].rejected / (double)so[k].pairs : 0;
        ms += so[k].ms;
        pairs += so[k].pairs;
        reruns += so[k].reruns;
        in_sync = so[k].in_sync;
        llog(l, "job %" PRIu64 " step %ld: loss %.5f |g| %.4f lr %.3g, %.1f ms, %d shard(s)%s",
             job->job_id, l->tr.step - 1, (double)so[k].loss, so[k].grad_norm, (double)so[k].lr,
             so[k].ms, l->n_shards, so[k].reruns ? " (re-run)" : "");
    }
    if (rc == 0) {
        char ck[CKPT_PATH_LEN];
        if (l->n_shards == 1) l->crc = shard_params_crc(m);
        ckpt_path(ck, l->run_dir, CKPT_KIND_TRAIN, (uint64_t)l->tr.step);
        Rlhf__TrainOutput o = RLHF__TRAIN_OUTPUT__INIT;
        o.step = (uint64_t)l->tr.step;
        o.loss = losses;
        o.n_loss = (size_t)n;
        o.grad_norm = norms;
        o.n_grad_norm = (size_t)n;
        o.params_crc32c = l->crc;
        o.shards = (uint32_t)l->n_shards;
        o.shards_in_sync = (uint32_t)in_sync;
        o.checkpoint = ck;
        o.step_ms = ms / n;
        o.rounds_rerun = (uint32_t)reruns;
        if (is_rm) {
            o.accuracy = accs;
            o.n_accuracy = (size_t)n;
            o.pairs = (uint64_t)pairs;
            o.pairs_per_s = ms > 0 ? pairs / (ms / 1e3) : 0;
        }
        if (is_dpo) {
            o.reward_chosen = rch;
            o.n_reward_chosen = (size_t)n;
            o.reward_rejected = rrj;
            o.n_reward_rejected = (size_t)n;
        }
        free(l->result);
        l->result_len = rlhf__train_output__get_packed_size(&o);
        l->result = malloc(l->result_len ? l->result_len : 1);
        if (!l->result) rc = rl_fail(RL_ENOMEM, "out of memory");
        if (rc == 0) {
            rlhf__train_output__pack(&o, l->result);
            l->last_job = job->job_id;
            rc = ckpt_write(l);
        }
        if (rc == 0) rc = output_copy(l->result, l->result_len, 0, out, out_len);
        if (rc == 0) {
            metrics_append(l, job->job_id, sp->step, so, n);
            llog(l,
                 "job %" PRIu64 " done: step %ld, params %08x, %d/%d shards in sync, %.2f ms/step,"
                 " checkpoint %s",
                 job->job_id, l->tr.step, l->crc, in_sync, l->n_shards, ms / n, ck);
        }
    }
    if (rc < 0 && l->loaded && l->tr.step != l->ckpt_step) {
        /* steps of a job that did not finish are not kept: its retry starts from the state it
         * started from, the last checkpoint */
        llog(l, "job %" PRIu64 " failed at step %ld: back to the last checkpoint", job->job_id,
             l->tr.step);
        state_drop(l);
    }
    rmdata_job_free(&rj);
    free(rmf);
    free(ids);
    free(in);
    free(tg);
    free(so);
    free(losses);
    free(norms);
    free(accs);
    free(rch);
    free(rrj);
    return rc;
}

/* Makes the learner hold the training of sp: (checkpoint directory, kind). A job of another
 * training makes it drop everything it holds (the LM/RM state, the PPO state and its published
 * weights) and stand where a learner freshly started with --run-dir=ckpt_dir would: its state is
 * then loaded from that directory's newest checkpoint (or the job's initial model) by the job.
 * A fresh learner adopts the first job's kind in --run-dir without dropping anything (what it
 * loaded at start is that directory's). Returns 0 or RL_E* (the directory cannot be created). */
static int training_switch(learner_t *l, ppo_state_t *ps, const Rlhf__TrainSpec *sp) {
    const char *dir = sp->ckpt_dir && sp->ckpt_dir[0] ? sp->ckpt_dir : l->base_dir;
    int kind = (int)sp->kind, same_dir = !strcmp(dir, l->run_dir);
    if (!dir[0]) return rl_fail(RL_EINVAL, "train: no ckpt_dir and this learner has no --run-dir");
    if (same_dir && (l->held_kind == kind || l->held_kind == 0)) {
        l->held_kind = kind;
        return 0;
    }
    if (strlen(dir) >= sizeof l->run_dir - 64)
        return rl_fail(RL_EINVAL, "train: ckpt_dir '%.200s...' is too long", dir);
    int rc = fs_mkdir_p(dir);
    if (rc < 0) return rl_fail_ctx(rc, "train: ckpt_dir");
    llog(l, "training %s (kind %d) replaces %s (kind %d): state dropped", dir, kind,
         l->run_dir[0] ? l->run_dir : "none", l->held_kind);
    state_drop(l);
    l->ckpt_step = -1;
    l->last_job = 0;
    l->src_dir[0] = l->ckpt_dir[0] = 0;
    if ((rc = ppo_state_switch(ps, dir)) < 0) return rc;
    snprintf(l->run_dir, sizeof l->run_dir, "%s", dir);
    l->held_kind = kind;
    return 0;
}

int worker_train(learner_t *l, ppo_state_t *ps, const worker_job_t *job, const uint8_t *payload,
                 size_t len, uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (l->index != 0) return rl_fail(RL_EINVAL, "train: only shard 0 takes TRAIN jobs");
    Rlhf__TrainSpec *sp = rlhf__train_spec__unpack(NULL, len, payload);
    if (!sp) return rl_fail(RL_EFORMAT, "train: malformed TrainSpec");
    int rc = training_switch(l, ps, sp);
    if (rc < 0) {
        rlhf__train_spec__free_unpacked(sp, NULL);
        return rc;
    }
    switch (sp->kind) {
    case RLHF__TRAIN_KIND__TRAIN_KIND_LM:
    case RLHF__TRAIN_KIND__TRAIN_KIND_RM:
    case RLHF__TRAIN_KIND__TRAIN_KIND_DPO:
        rc = train_run(l, job, sp, out, out_len);
        break;
    case RLHF__TRAIN_KIND__TRAIN_KIND_PPO:
        rc = worker_ppo(ps, &l->hub, job, sp, out, out_len);
        break;
    default:
        rc = rl_fail(RL_EUNSUPPORTED, "train: kind %d is not supported by this learner", sp->kind);
        break;
    }
    rlhf__train_spec__free_unpacked(sp, NULL);
    return rc;
}

learner_t *learner_new(const worker_learner_opts_t *o) {
    learner_t *l = calloc(1, sizeof *l);
    if (!l) {
        rl_fail(RL_ENOMEM, "learner: out of memory");
        return NULL;
    }
    l->index = o->index;
    l->n_shards = o->n_shards > 0 ? o->n_shards : 1;
    l->ckpt_step = -1;
    snprintf(l->base_dir, sizeof l->base_dir, "%s", o->run_dir ? o->run_dir : "");
    snprintf(l->run_dir, sizeof l->run_dir, "%s", l->base_dir);
    snprintf(l->who, sizeof l->who, "worker %.60s", o->id ? o->id : "learner");
    int rc = l->run_dir[0] ? fs_mkdir_p(l->run_dir) : 0;
    if (rc == 0) rc = shard_hub_open(&l->hub, o, l->run_dir, l->who);
    if (rc < 0) learner_destroy(&l);
    return l;
}

void learner_destroy(learner_t **lp) {
    learner_t *l = lp ? *lp : NULL;
    if (!l) return;
    shard_hub_close(&l->hub);
    state_drop(l);
    rmdata_free(&l->rmd);
    free(l);
    *lp = NULL;
}
