/*
 * train.h - one optimisation step of a language model: forward, masked cross-entropy,
 * backward, NaN/Inf check, global-norm clipping, AdamW. Shared by `rlhf train-lm`, the
 * benchmark and (later) the learner's SFT jobs, so that what is benchmarked is what trains.
 */
#ifndef RLHF_TRAIN_H
#define RLHF_TRAIN_H

#include "nn/adamw.h"
#include "nn/gpt.h"

typedef struct {
    gpt_t *model;
    adamw_t opt;
    adamw_group_t groups[GPT_NKINDS];
    int n_groups;
    adamw_sched_t sched;
    float clip; /* max global gradient norm; <= 0 disables clipping */
    long step;  /* steps applied so far */
} train_t;

/* Per-step figures. Times are wall-clock milliseconds. */
typedef struct {
    float loss, lr;
    double grad_norm;
    double ms_forward, ms_backward, ms_optimizer;
} train_stats_t;

/*
 * Prepares training of `model` (borrowed, must outlive t): gradients and AdamW moments
 * allocated, decay groups from the model. Returns 0 or RL_ENOMEM.
 */
int train_init(train_t *t, gpt_t *model, const adamw_sched_t *sched, float weight_decay,
               float clip);

/* Frees the optimizer state; safe on a zeroed struct. Does not free the model. */
void train_free(train_t *t);

/*
 * One step on inputs/targets (B,T) with an optional loss mask (B,T). On RL_ENONFINITE (loss or
 * gradient NaN/Inf) nothing is applied: parameters, moments and t->step are unchanged.
 * Returns 0 or a negative RL_E* code.
 */
int train_lm_step(train_t *t, const int *inputs, const int *targets, const float *mask, int B,
                  int T, train_stats_t *st);

/*
 * Next-token cross-entropy of the model over ids[0..n), cut into consecutive windows of at
 * most T tokens (T >= 2, T <= n_positions); every position whose next token lies in the same
 * window is scored. Full windows run B at a time, a shorter last window alone. Adds the summed
 * loss (nats) to *sum and the number of scored positions to *count. Returns 0 or RL_E*
 * (RL_ENONFINITE if a loss is NaN/Inf).
 */
int train_eval_lm(gpt_t *m, const int *ids, size_t n, int T, int B, double *sum, size_t *count);

#endif
