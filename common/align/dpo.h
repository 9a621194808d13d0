/*
 * dpo.h - direct preference optimisation: the policy trained on preference pairs against a
 * frozen reference model, with no reward model and no sampling.
 *
 * Losses (h = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r)), c chosen, r rejected, the
 * log-probabilities those of the completion tokens given the prompt):
 *   sigmoid  -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)   DPO (Rafailov et al. 2023,
 *            arXiv:2305.18290); eps > 0 is the label-smoothed, conservative DPO (Mitchell 2023)
 *   ipo      (h - 1 / (2 beta))^2, with every log-probability the mean over the completion's
 *            tokens instead of the sum, as TRL does (Azar et al. 2023, arXiv:2310.12036)
 * The implicit rewards are beta (log pi - log ref) of each completion (TRL's rewards/chosen,
 * rewards/rejected; their difference is the margin, its sign the reward accuracy).
 *
 * Data: a pairs file loaded by rm_data_load_split (nn/../align/rm.h): each sequence is prompt +
 * completion + <|endoftext|> with the prompt's length known, and the reference model's summed
 * completion logprob (ref_logp) given by the file's "ref_chosen_logps" / "ref_rejected_logps".
 * Every token logprob is rounded to float before it is summed in double, in token order - the
 * sum a reward worker's reference logprobs (ppo_seq_logprobs, floats) give - so a policy equal
 * to the reference has h = 0 exactly.
 *
 * A step's gradient is the canonical reduction of nn/gtree.h, as the reward model's: the step's
 * pairs (items) are cut into blocks, each block's gradient computed alone with the loss divided
 * by the step's pair count, the blocks combined by the fixed tree. A sharded learner computes the
 * blocks of one node per shard, which gives the bits of one process for any shard count:
 *     dpo_grad_leaves(&g, m, d, pairs + first pair of j0, B, nb, j0, j1, &cfg);
 *     ...gtree_push the other shards' nodes, gtree_take...; rm_update(&train, &us);
 * dpo_step() does all of it in one process.
 */
#ifndef RLHF_DPO_H
#define RLHF_DPO_H

#include "align/rm.h"
#include "nn/gpt.h"
#include "nn/gtree.h"
#include "nn/train.h"

typedef enum { DPO_LOSS_SIGMOID = 0, DPO_LOSS_IPO = 1 } dpo_loss_t;

typedef struct {
    dpo_loss_t loss;
    double beta;            /* > 0 */
    double label_smoothing; /* sigmoid only: eps in [0, 0.5) */
    int micro;              /* pairs per forward pass (>= 1) */
    int pad_id;             /* token id padding sequences to the micro-batch length */
} dpo_config_t;

/* "sigmoid" / "ipo" into *out. Returns 0 or RL_EINVAL. */
int dpo_loss_parse(const char *s, dpo_loss_t *out);

/* "sigmoid" or "ipo". */
const char *dpo_loss_name(dpo_loss_t l);

/* Checks a config (beta > 0 and finite, label smoothing in [0, 0.5), micro >= 1). Returns 0 or
 * RL_EINVAL naming the setting. */
int dpo_config_check(const dpo_config_t *c);

/*
 * The loss of one pair from the policy's (pc, pr) and the reference's (rc, rr) log-probabilities
 * of the chosen and rejected completions (for ipo: the per-token means), and its derivatives
 * with respect to pc and pr into *dpc, *dpr (may be NULL). Computed stably in double.
 */
double dpo_pair_loss(const dpo_config_t *c, double pc, double pr, double rc, double rr, double *dpc,
                     double *dpr);

/* Figures of the pairs a gradient or an evaluation saw; added to, not reset. loss is scale *
 * the sum of pair losses (dpo_grad) or the sum (dpo_eval); rewards are beta (log pi - log ref). */
typedef struct {
    double loss;
    double correct; /* pairs whose chosen reward is above the rejected one (a tie counts half) */
    double reward_chosen, reward_rejected; /* summed */
    long pairs, tokens;
} dpo_stats_t;

/* The scalars a block's value carries (gtree, GTREE_NSTAT >= 6). */
enum {
    DPO_STAT_LOSS,
    DPO_STAT_CORRECT,
    DPO_STAT_PAIRS,
    DPO_STAT_CHOSEN,
    DPO_STAT_REJECTED,
    DPO_STAT_TOKENS
};

/* Adds the scalars of a reduction ([DPO_STAT_*]) to *st. */
void dpo_stats_add(dpo_stats_t *st, const double *stats);

/*
 * The policy log-probability of the completion of each of d->seqs[seqs[i]], i < n (the float
 * token logprobs summed in double; not averaged), into out[i]; ntok (may be NULL) gets the
 * completion tokens added. Forward only, c->micro pairs' worth (2 * micro sequences) per pass.
 * Returns 0 or RL_E* (RL_EINVAL: data not loaded by rm_data_load_split, a sequence too long).
 */
int dpo_seq_logps(gpt_t *m, const rm_data_t *d, const int *seqs, int n, const dpo_config_t *c,
                  double *out, long *ntok);

/*
 * Forward + backward of pairs[0..n) (indices into d->pairs): accumulates scale * d(sum of pair
 * losses)/d(params) into m->grads_mem (allocated if needed, NOT zeroed) and adds to *st (may be
 * NULL). Every pair needs its reference logprobs. Returns 0 or RL_E* (RL_EINVAL: no reference
 * logprob, RL_ENONFINITE: a NaN/Inf logprob or loss).
 */
int dpo_grad(gpt_t *m, const rm_data_t *d, const int *pairs, int n, const dpo_config_t *c,
             float scale, dpo_stats_t *st);

/*
 * Blocks [j0, j1) of a step of B pairs in nb blocks (gtree_block; pairs points at the first
 * pair of block j0), each computed from a zeroed gradient arena by dpo_grad with scale 1/B and
 * pushed into g (reset by the caller on m's gradient arena), its scalars [DPO_STAT_*].
 */
int dpo_grad_leaves(gtree_t *g, gpt_t *m, const rm_data_t *d, const int *pairs, int B, int nb,
                    int j0, int j1, const dpo_config_t *c);

/* One whole step in one process: the gradient of the mean loss of pairs[0..n) in
 * gtree_blocks(t->grad_blocks, n) blocks, then rm_update (clipping, AdamW). The figures are
 * added to *gs (may be NULL). */
int dpo_step(train_t *t, const rm_data_t *d, const int *pairs, int n, const dpo_config_t *c,
             dpo_stats_t *gs, rm_update_stats_t *us);

/* Loss, rewards and accuracy of pairs[0..n) under m, forward only (stats summed, not scaled):
 * each distinct sequence of the pairs forwarded once (dpo_seq_logps). */
int dpo_eval(gpt_t *m, const rm_data_t *d, const int *pairs, int n, const dpo_config_t *c,
             dpo_stats_t *st);

#endif
