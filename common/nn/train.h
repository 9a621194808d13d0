/*
 * train.h - one optimisation step of a language model: forward, masked cross-entropy,
 * backward, NaN/Inf check, global-norm clipping, AdamW. Shared by `rlhf train-lm`, `rlhf sft`,
 * the benchmark and the learner's LM jobs, so that what is benchmarked is what trains.
 *
 * A step's gradient is the canonical reduction of gtree.h: the B rows are cut into blocks, each
 * block's gradient is computed on its own with the loss divided by the whole step's scored weight,
 * and the blocks are combined by the fixed tree. train_lm_step does all of it in one process; a
 * sharded learner computes the blocks of a node of the tree per shard (train_lm_leaves) and
 * combines the nodes in the same tree, which gives the same bits.
 */
#ifndef RLHF_TRAIN_H
#define RLHF_TRAIN_H

#include <stddef.h>

#include "nn/adamw.h"
#include "nn/gpt.h"
#include "nn/gtree.h"

typedef struct {
    gpt_t *model;
    adamw_t opt;
    adamw_group_t groups[GPT_NKINDS];
    int n_groups;
    adamw_sched_t sched;
    float clip;      /* max global gradient norm; <= 0 disables clipping */
    long step;       /* steps applied so far */
    int grad_blocks; /* blocks per step (gtree_blocks); 0: GTREE_BLOCKS_DEFAULT */
    gtree_t tree;    /* the reduction's arenas */
} train_t;

/* Per-step figures. Times are wall-clock milliseconds. */
typedef struct {
    float loss, lr;
    double grad_norm;
    double ms_forward, ms_backward, ms_optimizer;
} train_stats_t;

/*
 * Prepares training of `model` (borrowed, must outlive t): gradients and AdamW moments
 * allocated, decay groups from the model, grad_blocks 0 (the default). Returns 0 or RL_ENOMEM.
 */
int train_init(train_t *t, gpt_t *model, const adamw_sched_t *sched, float weight_decay,
               float clip);

/* Frees the optimizer state and the reduction's arenas; safe on a zeroed struct. Does not free
 * the model. */
void train_free(train_t *t);

/*
 * One step on inputs/targets (B,T) with an optional loss mask (B,T): the mean masked loss over
 * the positions with a target >= 0, its gradient in gtree_blocks(t->grad_blocks, B) blocks
 * combined by the canonical tree, clipping and AdamW. On RL_ENONFINITE (loss or gradient NaN/Inf)
 * nothing is applied: parameters, moments and t->step are unchanged. ms_forward and ms_backward
 * are summed over the blocks. Returns 0 or a negative RL_E* code.
 */
int train_lm_step(train_t *t, const int *inputs, const int *targets, const float *mask, int B,
                  int T, train_stats_t *st);

/*
 * The scored weight of n positions: the sum, in order and in double, of mask[i] (1 without a mask)
 * over the positions with targets[i] >= 0 - the normaliser of a step's mean loss. Returns 0 and
 * *w, or RL_EINVAL naming a mask entry that is negative or not finite.
 */
int train_lm_weight(const int *targets, const float *mask, size_t n, double *w);

/* The blocks of one LM step, for train_lm_leaves: the step has B rows of T in nb blocks
 * (gtree_block); in/tg/mask hold rows [row0, ...) of it (a shard holds only its node's rows). */
typedef struct {
    gpt_t *model;
    const int *in, *tg; /* (rows, T) from row row0 of the step */
    const float *mask;  /* (rows, T) or NULL */
    int B, T, nb, row0;
    double norm;   /* the whole step's scored weight (train_lm_weight), > 0 */
    double ms_fwd; /* forward time, summed over the blocks computed (out) */
    double ms_bwd; /* backward time (out) */
} train_lm_blocks_t;

/*
 * Computes blocks [j0, j1) of the step and pushes them into g (gtree_leaves; g reset by the
 * caller on the model's gradient arena): each from a zeroed arena, the gradient of
 * (sum over the block's positions of weight x loss) / norm; a block with no scored position is
 * empty. Scalars: [0] the block's sum of weight x loss (the step's mean loss is the root's [0] /
 * norm), [1] its scored weight. Returns 0, RL_EINVAL (a target outside the vocabulary, a bad
 * mask), RL_ENONFINITE (a loss is NaN/Inf) or RL_E* from the model.
 */
int train_lm_leaves(gtree_t *g, train_lm_blocks_t *b, int j0, int j1);

/*
 * Next-token cross-entropy of the model over ids[0..n), cut into consecutive windows of at
 * most T tokens (T >= 2, T <= n_positions); every position whose next token lies in the same
 * window is scored. Full windows run B at a time, a shorter last window alone. Adds the summed
 * loss (nats) to *sum and the number of scored positions to *count. Returns 0 or RL_E*
 * (RL_ENONFINITE if a loss is NaN/Inf).
 */
int train_eval_lm(gpt_t *m, const int *ids, size_t n, int T, int B, double *sum, size_t *count);

#endif
