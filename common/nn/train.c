/*
 * train.c - the language-model training step (see train.h).
 */
#include "nn/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/err.h"

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
}

int train_lm_step(train_t *t, const int *inputs, const int *targets, const float *mask, int B,
                  int T, train_stats_t *st) {
    gpt_t *m = t->model;
    train_stats_t s = {0};
    double t0 = now_ms();
    int rc = gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS);
    if (rc == 0) rc = gpt_lm_loss(m, targets, mask, &s.loss, 1);
    if (rc < 0) return rl_fail_ctx(rc, "step %ld: forward", t->step);
    double t1 = now_ms();
    gpt_zero_grad(m);
    rc = gpt_backward(m, 1, NULL);
    if (rc < 0) return rl_fail_ctx(rc, "step %ld: backward", t->step);
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
    s.ms_forward = t1 - t0;
    s.ms_backward = t2 - t1;
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
