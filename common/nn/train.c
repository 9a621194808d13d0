/*
 * train.c - the language-model training step (see train.h).
 */
#include "nn/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/err.h"
#include "nn/ops.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int train_init(train_t *t, gpt_t *model, const adamw_sched_t *sched, float weight_decay,
               float clip) {
    memset(t, 0, sizeof *t);
    t->model = model;
    t->sched = *sched;
    t->clip = clip;
    int rc = gpt_grads_alloc(model);
    if (rc < 0) return rc;
    rc = adamw_init(&t->opt, model->num_params, 0.9f, 0.95f, 1e-8f, weight_decay);
    if (rc < 0) return rc;
    t->n_groups = gpt_adamw_groups(model, t->groups);
    return 0;
}

void train_free(train_t *t) {
    adamw_free(&t->opt);
    gtree_free(&t->tree);
}

int train_lm_weight(const int *targets, const float *mask, size_t n, double *w) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (mask && (mask[i] < 0.0f || !isfinite(mask[i])))
            return rl_fail(RL_EINVAL, "loss: mask[%zu] = %g is not a non-negative weight", i,
                           (double)mask[i]);
        if (targets[i] >= 0) s += mask ? mask[i] : 1.0f;
    }
    *w = s;
    return 0;
}

/* gtree_leaf_fn: block j of an LM step. */
static int lm_leaf(void *ctx, int j, double *stats, int *empty) {
    train_lm_blocks_t *b = ctx;
    gpt_t *m = b->model;
    int r0, r1, V = m->cfg.vocab_size;
    gtree_block(b->B, b->nb, j, &r0, &r1);
    size_t off = (size_t)(r0 - b->row0) * (size_t)b->T, n = (size_t)(r1 - r0) * (size_t)b->T;
    const int *tg = b->tg + off;
    const float *mask = b->mask ? b->mask + off : NULL;
    for (size_t i = 0; i < n; i++)
        if (tg[i] >= V)
            return rl_fail(RL_EINVAL, "loss: target id %d at position %zu outside [0,%d)", tg[i],
                           (size_t)r0 * (size_t)b->T + i, V);
    double w = 0;
    int rc = train_lm_weight(tg, mask, n, &w);
    if (rc < 0) return rc;
    if (w == 0.0) { /* nothing to score in this block */
        *empty = 1;
        return 0;
    }
    double t0 = now_ms();
    gpt_zero_grad(m);
    if ((rc = gpt_forward(m, b->in + off, r1 - r0, b->T, GPT_FWD_LOGITS)) < 0) return rc;
    double sum =
        ops_crossentropy_sum(m->acts.logits, m->acts.losses, tg, mask, (int)n, V, 1, b->norm);
    if (!isfinite(sum)) return rl_fail(RL_ENONFINITE, "loss is %g", sum / b->norm);
    if ((rc = gpt_dlogits_set(m)) < 0) return rc;
    double t1 = now_ms();
    if ((rc = gpt_backward(m, 1, NULL)) < 0) return rc;
    b->ms_fwd += t1 - t0;
    b->ms_bwd += now_ms() - t1;
    stats[0] = sum;
    stats[1] = w;
    return 0;
}

int train_lm_leaves(gtree_t *g, train_lm_blocks_t *b, int j0, int j1) {
    if (!(b->norm > 0))
        return rl_fail(RL_EINVAL, "loss: no position has a target and a non-zero mask");
    return gtree_leaves(g, j0, j1, lm_leaf, b);
}

int train_lm_step(train_t *t, const int *inputs, const int *targets, const float *mask, int B,
                  int T, train_stats_t *st) {
    gpt_t *m = t->model;
    train_stats_t s = {0};
    int nb = gtree_blocks(t->grad_blocks, B), empty, lo, hi;
    train_lm_blocks_t b = {m, inputs, targets, mask, B, T, nb, 0, 0, 0, 0};
    double stat[GTREE_NSTAT];
    int rc = train_lm_weight(targets, mask, (size_t)B * (size_t)T, &b.norm);
    if (rc == 0) rc = gpt_grads_alloc(m);
    if (rc == 0) {
        gtree_reset(&t->tree, nb, m->grads_mem, m->num_params);
        rc = train_lm_leaves(&t->tree, &b, 0, nb);
    }
    if (rc == 0) rc = gtree_take(&t->tree, stat, &empty, &lo, &hi);
    if (rc < 0) return rl_fail_ctx(rc, "step %ld: forward/backward", t->step);
    s.loss = (float)(stat[0] / b.norm);
    double t2 = now_ms();
    float scale;
    rc = adamw_clip_scale(m->grads_mem, m->num_params, t->clip, &s.grad_norm, &scale);
    if (rc < 0) return rl_fail_ctx(rc, "step %ld: gradient", t->step);
    s.lr = adamw_sched_lr(&t->sched, t->step);
    /* clipping is applied inside the fused update: the gradient arena stays as computed */
    rc = adamw_step_scaled(&t->opt, m->params_mem, m->grads_mem, t->groups, t->n_groups, s.lr,
                           scale);
    if (rc < 0) return rl_fail_ctx(rc, "step %ld: optimizer", t->step);
    double t3 = now_ms();
    t->step++;
    s.ms_forward = b.ms_fwd;
    s.ms_backward = b.ms_bwd;
    s.ms_optimizer = t3 - t2;
    if (st) *st = s;
    return 0;
}

/* Sum of per-position losses of `nw` windows of `w` tokens each, laid out back to back. */
static int eval_windows(gpt_t *m, const int *tok, int nw, int w, int *targets, double *sum) {
    for (int b = 0; b < nw; b++)
        for (int t = 0; t < w; t++) targets[b * w + t] = t + 1 < w ? tok[b * w + t + 1] : -1;
    int rc = gpt_forward(m, tok, nw, w, GPT_FWD_LOGITS);
    if (rc == 0) rc = gpt_lm_loss(m, targets, NULL, NULL, 0);
    if (rc < 0) return rc;
    for (int i = 0; i < nw * w; i++) *sum += m->acts.losses[i];
    return 0;
}

int train_eval_lm(gpt_t *m, const int *ids, size_t n, int T, int B, double *sum, size_t *count) {
    if (T < 2 || T > m->cfg.n_positions || B < 1)
        return rl_fail(RL_EINVAL, "eval: windows of %d tokens (need 2..%d), batch %d", T,
                       m->cfg.n_positions, B);
    int *targets = malloc((size_t)B * T * sizeof(int));
    if (!targets) return rl_fail(RL_ENOMEM, "eval: targets");
    size_t full = n / (size_t)T, done = 0;
    int rc = 0;
    while (rc == 0 && done < full) {
        int nw = full - done < (size_t)B ? (int)(full - done) : B;
        rc = eval_windows(m, ids + done * T, nw, T, targets, sum);
        done += (size_t)nw;
        *count += (size_t)nw * (size_t)(T - 1);
    }
    int rest = (int)(n - full * (size_t)T);
    if (rc == 0 && rest >= 2) {
        rc = eval_windows(m, ids + full * (size_t)T, 1, rest, targets, sum);
        *count += (size_t)(rest - 1);
    }
    free(targets);
    return rc;
}
