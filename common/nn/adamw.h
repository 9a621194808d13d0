/*
 * adamw.h - the AdamW optimizer, global gradient-norm clipping and learning-rate schedules.
 *
 * The optimizer works on one flat parameter arena and its gradient arena of the same length.
 * Its two moment buffers are one contiguous arena of 2*n floats (m, then v), so a checkpoint or
 * a weight snapshot of the optimizer state is one buffer. Weight decay is decoupled (AdamW) and
 * applied only to the ranges the caller marks (the model marks its 2-D weight matrices).
 */
#ifndef RLHF_ADAMW_H
#define RLHF_ADAMW_H

#include <stddef.h>

/* A range of the parameter arena and whether weight decay applies to it. */
typedef struct {
    size_t offset, len;
    int decay;
} adamw_group_t;

typedef struct {
    float beta1, beta2, eps, weight_decay;
    size_t n;       /* number of parameters */
    float *moments; /* the arena: 2*n floats */
    float *m, *v;   /* first and second moments, both inside `moments` */
    long t;         /* steps taken so far (bias correction uses t after increment) */
} adamw_t;

/* Allocates zeroed moments for n parameters. Returns 0 or RL_ENOMEM / RL_EINVAL. */
int adamw_init(adamw_t *o, size_t n, float beta1, float beta2, float eps, float weight_decay);

/* Frees the moments; safe on a zeroed struct. */
void adamw_free(adamw_t *o);

/*
 * One bias-corrected AdamW step with learning rate `lr` over `params` (n) using `grads` (n):
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  mh = m/(1-b1^t);  vh = v/(1-b2^t)
 *   p -= lr * (mh / (sqrt(vh) + eps) + wd * p)     (wd only inside groups with decay set)
 * The groups must cover [0, n) exactly, in order. Runs on the OpenMP team. Returns 0, or
 * RL_ENONFINITE (parameters untouched) if any gradient is NaN/Inf, or RL_EINVAL for bad groups.
 */
int adamw_step(adamw_t *o, float *params, const float *grads, const adamw_group_t *groups,
               int n_groups, float lr);

/*
 * adamw_step() with every gradient multiplied by `grad_scale` on the fly (g = grads[i] *
 * grad_scale, bit-identical to scaling the gradient first): global-norm clipping fused into the
 * update, which saves a read and a write of the whole gradient arena. grads is not modified.
 * RL_EINVAL if grad_scale is not finite.
 */
int adamw_step_scaled(adamw_t *o, float *params, const float *grads, const adamw_group_t *groups,
                      int n_groups, float lr, float grad_scale);

/*
 * The global L2 norm of g[0..n), accumulated in double. Returns it, or NaN/Inf if any element
 * is non-finite.
 */
double adamw_grad_norm(const float *g, size_t n);

/*
 * Clips the global norm of g to max_norm (no-op if max_norm <= 0 or the norm is below it) and
 * stores the pre-clip norm in *norm_out (may be NULL). Returns 0, or RL_ENONFINITE if the
 * gradient holds a NaN or Inf (g untouched).
 */
int adamw_clip(float *g, size_t n, float max_norm, double *norm_out);

/*
 * The clipping of adamw_clip() without touching g: the norm goes to *norm_out (may be NULL) and
 * the factor to apply, min(1, max_norm / norm) (1 when max_norm <= 0), to *scale_out, ready for
 * adamw_step_scaled(). Returns 0 or RL_ENONFINITE.
 */
int adamw_clip_scale(const float *g, size_t n, float max_norm, double *norm_out, float *scale_out);

typedef enum {
    ADAMW_SCHED_CONSTANT, /* lr everywhere */
    ADAMW_SCHED_WARMUP,   /* linear from lr/warmup to lr over `warmup` steps, then constant */
    ADAMW_SCHED_COSINE,   /* linear warmup, then cosine from lr down to min_lr at `total` */
} adamw_sched_kind_t;

typedef struct {
    adamw_sched_kind_t kind;
    float lr, min_lr;
    long warmup, total;
} adamw_sched_t;

/* The learning rate at step `step` (0-based). Steps past `total` stay at min_lr (cosine). */
float adamw_sched_lr(const adamw_sched_t *s, long step);

/* "constant" | "warmup" | "cosine" -> kind. Returns 0 or RL_EINVAL naming the bad value. */
int adamw_sched_parse(const char *name, adamw_sched_kind_t *kind);

#endif
