/*
 * train.c - the language-model training step (see train.h).
 */
#include "train.h"

#include <math.h>
#include <string.h>
#include <time.h>

#include "err.h"

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
