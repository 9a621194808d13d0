/*
 * ppo.h - the learner-side math of PPO for RLHF (Ziegler et al. 2019, InstructGPT).
 *
 * Two layers. The pure functions below are the pieces of the algorithm, each on plain arrays so
 * that a test can check it against numbers worked out by hand: log-probabilities and entropy of
 * a logits row, the KL estimators, per-token rewards, GAE, whitening, the clipped policy and
 * value losses with their gradients, the gradient of a per-token loss with respect to a logits
 * row, the KL-coefficient controllers, explained variance and running moments, and the
 * critic-free advantages (GRPO, RLOO, REINFORCE++ returns). On top of them, ppo_update() runs
 * one PPO iteration on a rollout batch with a policy model, a separate value model (a GPT with a
 * scalar head; none for a critic-free adv_estimator) and an AdamW state for each
 * (ppo_learner_t). Every logprob is taken under logits / cfg.temperature, the distribution the
 * rollouts were sampled from.
 *
 * Positions. A sequence is a prompt p[0..P) followed by a completion c[0..n). Action t is the
 * choice of c[t]; its state is everything before it, so both the log-probability of c[t] (the
 * LM logits) and the value of the state (the scalar head) are read at position P - 1 + t of the
 * model input p[0..P) c[0..n-1) - the position of the last token seen before the action. The
 * last completion token is never an input. The episode ends after c[n-1]: V(terminal) = 0.
 *
 * Use (one iteration):
 *   ppo_learner_t l;  ppo_config_t cfg;  ppo_config_default(&cfg);  ... edit cfg ...
 *   ppo_learner_init(&l, policy, value, &cfg);
 *   for each rollout batch:  fill ppo_seq_t seqs[n] (tokens, old and reference logprobs, scores);
 *                            ppo_update(&l, seqs, n, &stats);
 *   ppo_learner_free(&l);
 * The learner's persistent state is the two models, the two AdamW states, kl.beta, score_stats
 * and iteration: a checkpoint that restores all of them resumes bit-identically.
 */
#ifndef RLHF_PPO_H
#define RLHF_PPO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "nn/adamw.h"
#include "nn/gpt.h"
#include "nn/gtree.h"

/* ---- per-token pieces ------------------------------------------------------------------ */

/*
 * log softmax(logits)[tok] over logits[0..V), computed stably in double (max subtracted). If
 * entropy is not NULL it receives H = -sum_i p_i log p_i. tok must lie in [0, V). Entries of
 * -inf (masked tokens) are allowed and contribute nothing; NaN logits give a NaN result.
 */
double ppo_logprob(const float *logits, int V, int tok, double *entropy);

/* ppo_logprob() of the distribution softmax(logits / temperature) (temperature > 0), the one
 * rollouts sampled from; entropy likewise. At temperature 1 it is ppo_logprob() bit for bit. */
double ppo_logprob_temp(const float *logits, int V, int tok, float temperature, double *entropy);

/*
 * Gradient of a per-token loss with respect to one logits row: given dlogp = dloss/dlogp(tok)
 * and dent = dloss/dH (H the row's entropy), writes
 *   out[j] = dlogp * (1[j == tok] - p_j) - dent * p_j * (log p_j + H)
 * for j in [0, V). out may be the logits row itself (the update is in place). tok in [0, V).
 */
void ppo_dlogits_row(const float *logits, int V, int tok, float dlogp, float dent, float *out);

/* ppo_dlogits_row() through logits / temperature: p and H those of softmax(logits / T), every
 * entry divided by T. At temperature 1 it is ppo_dlogits_row() bit for bit. */
void ppo_dlogits_row_temp(const float *logits, int V, int tok, float temperature, float dlogp,
                          float dent, float *out);

/* KL estimator k1 = logp - logp_ref (unbiased for KL(policy || ref), may be negative). */
double ppo_kl_k1(double logp, double logp_ref);

/* KL estimator k3 = (r - 1) - log r with r = exp(logp_ref - logp): unbiased and >= 0. */
double ppo_kl_k3(double logp, double logp_ref);

/* KL estimator k2 = (logp - logp_ref)^2 / 2: biased, >= 0, low variance (Schulman 2020). */
double ppo_kl_k2(double logp, double logp_ref);

/* Which of Schulman's approximations of KL(policy || ref) ("Approximating KL Divergence",
 * 2020) a KL penalty uses, per token. */
typedef enum {
    PPO_KL_K1 = 0, /* logp - logp_ref */
    PPO_KL_K2,     /* (logp - logp_ref)^2 / 2 */
    PPO_KL_K3,     /* exp(logp_ref - logp) - (logp_ref - logp) - 1, as GRPO's loss */
} ppo_kl_est_t;

/* The estimate `est` of one token, and its derivative with respect to logp: k1 1, k2
 * logp - logp_ref, k3 1 - exp(logp_ref - logp). */
double ppo_kl(ppo_kl_est_t est, double logp, double logp_ref);
double ppo_kl_dlogp(ppo_kl_est_t est, double logp, double logp_ref);

/*
 * Per-token rewards of one completion of n >= 1 tokens: rewards[t] = -beta * (logp[t] -
 * logp_ref[t]) (the k1 estimate), plus `score` (already normalised / clipped, see
 * ppo_score_transform()) on the last token. Returns the summed k1 over the completion.
 */
double ppo_rewards(const float *logp, const float *logp_ref, int n, float score, float beta,
                   float *rewards);

/* ppo_rewards() with the penalty's estimator chosen: rewards[t] = -beta * ppo_kl(est, ...), the
 * score on the last token. Returns the summed k1 (whatever est). With PPO_KL_K1 it is
 * ppo_rewards() bit for bit. */
double ppo_rewards_est(const float *logp, const float *logp_ref, int n, float score, float beta,
                       ppo_kl_est_t est, float *rewards);

/* The discounted return of every token of one completion: ret[t] = sum_{s >= t} gamma^(s-t)
 * rewards[s] (REINFORCE, no critic). Accumulated backwards in double. */
void ppo_returns(const float *rewards, int n, float gamma, float *ret);

/*
 * Critic-free advantages of n sequences from their total rewards R[0..n) (score plus the KL
 * penalty when it is in the reward). group[i] names sequence i's prompt: a group is a run of
 * consecutive equal ids (the K samples of one prompt, as the rollouts come), of at least 2.
 *   GRPO (Shao et al. 2024): adv[i] = (R[i] - mean_g) / (std_g + eps), std_g with Bessel's
 *     correction (torch.std, as TRL's GRPOTrainer and OpenRLHF's group_norm);
 *   RLOO (Ahmadian et al. 2024): adv[i] = R[i] - (sum_g - R[i]) / (K_g - 1), the mean of the
 *     other samples of the prompt.
 * Sums are in double, in index order. Returns 0 or RL_EINVAL naming a group of one.
 */
int ppo_adv_grpo(const double *R, const int *group, int n, double eps, double *adv);
int ppo_adv_rloo(const double *R, const int *group, int n, double *adv);

/* The KL penalty in the loss over n tokens: sum_t mask_t beta ppo_kl(est, logp_t, ref_t) /
 * denom (denom <= 0: sum(mask)); dlogp (may be NULL) gets beta mask_t dk/dlogp / denom ADDED.
 * Returns the mean estimate sum mask k / denom (the loss is beta times it), NaN when the
 * denominator is 0. */
double ppo_kl_loss(const float *logp, const float *logp_ref, const float *mask, size_t n,
                   ppo_kl_est_t est, float beta, double denom, float *dlogp);

/*
 * Generalised advantage estimation over one completion of n tokens: values[t] is V(s_t) (the
 * state before action t), V(s_n) = 0. delta_t = r_t + gamma V_{t+1} - V_t,
 * adv_t = delta_t + gamma lambda adv_{t+1}, ret_t = adv_t + V_t (the value target).
 */
void ppo_gae(const float *rewards, const float *values, int n, float gamma, float lambda,
             float *adv, float *ret);

/*
 * Whitens x[0..n) in place over the elements with mask != 0 (mask NULL: all):
 * x = (x - mean) / sqrt(var + 1e-8) with the population variance (Ziegler et al.); with
 * keep_mean the mean is added back. Elements with mask == 0 are set to 0. Returns 0 or
 * RL_EINVAL if no element is selected, RL_ENONFINITE if a selected element is NaN/Inf.
 */
int ppo_whiten(float *x, const float *mask, size_t n, int keep_mean);

/* Figures of a clipped policy loss over a set of tokens. */
typedef struct {
    double loss;      /* mean of max(-A r, -A clip(r, 1-eps, 1+eps)) */
    double clipfrac;  /* fraction of tokens where the clipped term is the larger one */
    double approx_kl; /* mean of (r - 1) - log r: KL(old || new) estimate */
} ppo_pg_stats_t;

/*
 * The clipped surrogate loss over n tokens with ratio r = exp(logp - logp_old), advantages adv
 * and mask (NULL: all ones): loss = sum_t mask_t max(-A_t r_t, -A_t clip(r_t, 1-eps, 1+eps)) /
 * denom, where denom <= 0 means sum(mask) - pass the total of a whole minibatch when it is
 * split into micro-batches or shards. dlogp (may be NULL) receives dloss/dlogp_t: -A_t r_t
 * mask_t / denom where the unclipped term is the larger (or equal) one, else 0. The stats are
 * normalised by the same denominator. Returns 0, RL_EINVAL (denominator 0), RL_ENONFINITE.
 */
int ppo_policy_loss(const float *logp, const float *logp_old, const float *adv, const float *mask,
                    size_t n, float eps, double denom, float *dlogp, ppo_pg_stats_t *st);

/*
 * The clipped value loss over n tokens: v_clip = v_old + clamp(v - v_old, -clip, clip) (no
 * clipping when clip <= 0), loss = sum_t mask_t 0.5 max((v - R)^2, (v_clip - R)^2) / denom
 * (denom <= 0: sum(mask)). dv (may be NULL) receives dloss/dv_t: (v - R) mask_t / denom where
 * the unclipped term is the larger (or equal) one, else 0. *clipfrac (may be NULL): fraction
 * where the clipped term is larger. Returns 0, RL_EINVAL (denominator 0) or RL_ENONFINITE.
 */
int ppo_value_loss(const float *v, const float *v_old, const float *ret, const float *mask,
                   size_t n, float clip, double denom, float *dv, double *loss, double *clipfrac);

/*
 * The entropy bonus -coef * sum_t mask_t H_t / denom (denom <= 0: sum(mask)). dent (may be
 * NULL) receives dloss/dH_t = -coef mask_t / denom. Returns the mean entropy sum mask H / denom
 * (the bonus is -coef times it), or NaN when the denominator is 0.
 */
double ppo_entropy_bonus(const float *ent, const float *mask, size_t n, float coef, double denom,
                         float *dent);

/*
 * 1 - Var[target - pred] / Var[target] over the masked elements (population variances); 1 is a
 * perfect predictor, 0 no better than the mean, negative worse. NaN if Var[target] is 0 or
 * nothing is selected.
 */
double ppo_explained_variance(const float *pred, const float *target, const float *mask, size_t n);

/* ---- KL coefficient ---------------------------------------------------------------------- */

typedef struct {
    float beta;    /* current KL coefficient */
    int adaptive;  /* 0: fixed beta; 1: Ziegler et al.'s proportional controller */
    float target;  /* target KL (nats per sequence, k1 summed over the completion) */
    float horizon; /* in sequences: how fast beta moves towards the target */
} ppo_klctl_t;

/*
 * After an update that saw `kl` (mean per-sequence KL) over n_steps sequences: a fixed
 * controller keeps beta; the adaptive one does err = clamp(kl / target - 1, -0.2, 0.2),
 * beta *= 1 + err * n_steps / horizon.
 */
void ppo_klctl_update(ppo_klctl_t *c, double kl, long n_steps);

/* ---- running moments of the reward-model score ------------------------------------------- */

/* Welford's running count, mean and sum of squared deviations; mergeable (Chan et al.). A
 * zeroed struct is empty. */
typedef struct {
    double n, mean, m2;
} ppo_moments_t;

void ppo_moments_push(ppo_moments_t *s, double x);
/* a += b: the moments of the union of both samples. */
void ppo_moments_merge(ppo_moments_t *a, const ppo_moments_t *b);
/* The sample standard deviation sqrt(m2 / (n - 1)); 0 when n < 2. */
double ppo_moments_std(const ppo_moments_t *s);

typedef enum {
    PPO_SCORE_RAW = 0, /* the reward-model score as is */
    PPO_SCORE_SCALE,   /* score / std */
    PPO_SCORE_NORM,    /* (score - mean) / std */
} ppo_score_norm_t;

/*
 * The score that enters the rewards: normalised with the running moments s per `mode` (std
 * taken as std + 1e-8, or 1 while s holds fewer than 2 scores), then clipped to [-clip, clip]
 * when clip > 0.
 */
float ppo_score_transform(float score, const ppo_moments_t *s, ppo_score_norm_t mode, float clip);

/* ---- the update ------------------------------------------------------------------------ */

/* How advantages are estimated (adv_estimator). */
typedef enum {
    PPO_ADV_GAE = 0,      /* GAE with the value model (Schulman et al. 2016; InstructGPT) */
    PPO_ADV_GRPO,         /* group-normalised sequence reward (Shao et al. 2024), no critic */
    PPO_ADV_RLOO,         /* leave-one-out baseline (Ahmadian et al. 2024), no critic */
    PPO_ADV_REINFORCE_PP, /* REINFORCE++ (Hu 2025): returns normalised over the batch, no critic */
} ppo_adv_estimator_t;

/* Where the KL penalty goes (kl_in). */
typedef enum {
    PPO_KL_IN_REWARD = 0, /* -beta k(old, ref) per token in the rewards (Ziegler et al.) */
    PPO_KL_IN_LOSS,       /* + beta k(new, ref) per token in the loss, differentiated (GRPO) */
} ppo_kl_in_t;

/* How the per-token losses of a minibatch are averaged (loss_agg). */
typedef enum {
    PPO_AGG_TOKEN = 0, /* over all its completion tokens: long completions weigh more */
    PPO_AGG_SEQUENCE,  /* over each sequence's tokens, then over its sequences (GRPO paper) */
} ppo_loss_agg_t;

/* Which policy version generates an iteration's rollouts (overlap). off: iteration i's rollouts
 * come from version i (the policy after i updates), so generation waits for update i - 1.
 * one_step_off: from version max(i - 1, 0), one update stale, so that iteration i + 1's rollouts
 * are generated and scored while update i runs; the old logprobs stay those of the version that
 * sampled them (the behaviour policy), which the ratio, its clipping and the KL penalty use. */
typedef enum {
    PPO_OVERLAP_OFF = 0,
    PPO_OVERLAP_ONE_STEP_OFF,
} ppo_overlap_t;

/* The policy version that generates the rollouts of iteration i under overlap mode `overlap`. */
long ppo_rollout_version(int overlap, long i);

/* Whether an estimator learns without a value model. */
int ppo_adv_critic_free(int adv_estimator);

/* The PPO settings; their defaults, ranges and meaning are in ppo_settings (below). */
typedef struct {
    float gamma;            /* discount */
    float lambda;           /* GAE lambda */
    float clip_eps;         /* policy ratio clip range [1-eps, 1+eps] */
    float value_clip;       /* value clip around the old values, +-value_clip, in reward units
                               (suits scores of unit scale: see score_norm); <= 0 off */
    float kl_coef;          /* initial KL coefficient beta */
    int kl_adaptive;        /* 0: beta fixed; 1: adaptive controller (ppo_klctl_update) */
    float kl_target;        /* adaptive: target KL per sequence in nats */
    float kl_horizon;       /* adaptive: horizon in sequences */
    int epochs;             /* passes over each rollout batch */
    int minibatch;          /* sequences per optimiser step (an epoch's last minibatch takes
                               the rest); losses are means over its completion tokens */
    int microbatch;         /* sequences per forward/backward inside a minibatch, gradients summed;
                               0 = the whole minibatch */
    float lr_policy;        /* AdamW learning rate of the policy */
    float lr_value;         /* AdamW learning rate of the value model */
    float weight_decay;     /* AdamW decoupled weight decay (both models, 2-D weights only) */
    float max_grad_norm;    /* global gradient-norm clip, per model; <= 0 off */
    float ent_coef;         /* entropy bonus coefficient (loss -= ent_coef * mean entropy) */
    int score_norm;         /* ppo_score_norm_t applied to reward-model scores */
    float score_clip;       /* clip the (normalised) score to +-score_clip; <= 0 off */
    int whiten;             /* whiten advantages over the rollout batch */
    int whiten_keep_mean;   /* whitening keeps the advantages' mean (only scales) */
    int recompute_logprobs; /* recompute the old logprobs with the policy before the update
                               instead of taking the rollout's */
    int vocab_limit;        /* > 0: distributions over token ids below it only (a tokenizer smaller
                               than the model's padded vocabulary, as in generation) */
    int forward_batch;      /* sequences per forward pass of the rollout-side passes (old values,
                               recomputed logprobs); 0 = minibatch */
    uint64_t seed;          /* key of the minibatch shuffle (Fisher-Yates, draw i of epoch e of
                               n rollouts: rng(seed, stream = iteration, counter = e * n + i)) */
    int adv_estimator;      /* ppo_adv_estimator_t */
    int kl_in;              /* ppo_kl_in_t */
    int kl_estimator;       /* ppo_kl_est_t of the penalty (reward or loss) */
    int loss_agg;           /* ppo_loss_agg_t */
    float missing_eos_penalty; /* subtracted from the score (after score_norm and score_clip) of
                                  a truncated completion */
    float temperature;         /* the rollouts' sampling temperature (> 0): every logprob is taken
                                  under logits / temperature */
    int overlap;               /* ppo_overlap_t: the version that generates iteration i */
    int grad_blocks;           /* blocks a minibatch step's gradient is computed in and summed
                                  over by the fixed tree of nn/gtree.h (capped at the minibatch's
                                  rows; 0 and 1: one block, the whole minibatch) */
} ppo_config_t;

/*
 * The PPO settings, each described once: name (the field's), type, range, default and meaning,
 * and where it lives in ppo_config_t. The one table drives the defaults, the range checks, the
 * JSON the driver sends the learner (config_json) and its decoding, `rlhf ppo --set NAME=VALUE`
 * and `--config`, and the `ppo.*` keys of `rlhf run` with their help.
 */
typedef enum {
    PPO_SETTING_FLOAT, /* float, finite, in [lo, hi] */
    PPO_SETTING_INT,   /* int in [lo, hi] */
    PPO_SETTING_BOOL,  /* int 0/1; JSON true/false */
    PPO_SETTING_U64,   /* uint64_t */
    PPO_SETTING_ENUM,  /* int, an index into names; JSON and text: the name */
} ppo_setting_type_t;

typedef struct {
    const char *name; /* the ppo_config_t field, the --set NAME, the JSON member */
    ppo_setting_type_t type;
    double lo, hi;   /* numeric range (+-INFINITY: open); ppo_config_check adds the few checks
                        a range cannot say (clip_eps > 0, the adaptive controller's figures) */
    const char *def; /* the default as text */
    const char *help;
    size_t off; /* offsetof(ppo_config_t, name) */
    int driver; /* 1: the driver sets it (vocab_limit from the tokenizer, seed from its own
                   seed, temperature from --temperature): not one of `rlhf run`'s ppo.* keys */
    const char *const *names; /* PPO_SETTING_ENUM: the names of 0..hi, NULL-terminated */
} ppo_setting_t;

extern const ppo_setting_t ppo_settings[];
extern const int ppo_n_settings;

/* The setting called name, or NULL. */
const ppo_setting_t *ppo_setting_find(const char *name);

/* The names of an enum setting joined with '|' ("raw|scale|norm") into out. */
void ppo_setting_choices(const ppo_setting_t *s, char *out, size_t n);

/* The value of setting s in c as text ("0.03", "true", "norm") into out. */
void ppo_setting_format(const ppo_setting_t *s, const ppo_config_t *c, char *out, size_t n);

/* Fills c with the defaults of the table. */
void ppo_config_default(ppo_config_t *c);

/* Checks every setting against its range (finite values, gamma and lambda in [0,1], epochs and
 * minibatch >= 1, learning rates >= 0, a known score_norm ...) and clip_eps > 0, and the
 * adaptive controller's target and horizon > 0 when it is on. Returns 0 or RL_EINVAL naming the
 * field: "ppo config: bad gamma (need 0..1)". */
int ppo_config_check(const ppo_config_t *c);

/* The configuration as a JSON object with one member per setting, in table order (score_norm
 * as "raw" | "scale" | "norm"); new reference. */
json_t *ppo_config_to_json(const ppo_config_t *c);

/* Sets the settings named in obj (others keep their value) and checks the result. An unknown
 * name or a value of the wrong type is RL_EINVAL naming it, prefixed by `where`. */
int ppo_config_from_json(ppo_config_t *c, json_t *obj, const char *where);

/* Sets one setting from its text value ("kl_coef", "0.05"), as a config file or --set gives it,
 * checking its type and range (c NULL: only checks). Returns 0 or RL_EINVAL:
 * "WHERE: NAME: 'VALUE' is not a number in [0, inf]", "WHERE: unknown PPO setting 'NAME'"
 * (where NULL or "": no "WHERE: "). */
int ppo_config_set(ppo_config_t *c, const char *name, const char *value, const char *where);

/* One rollout: borrowed arrays. */
typedef struct {
    const int *prompt; /* prompt_len >= 1 token ids */
    int prompt_len;
    const int *completion; /* completion_len >= 1 token ids */
    int completion_len;
    const float *logprobs;     /* (completion_len) old policy logprobs of the completion tokens
                                  under the model distribution (gen's logprobs_model); may be
                                  NULL with recompute_logprobs */
    const float *ref_logprobs; /* (completion_len) reference-model logprobs */
    float score;               /* reward-model score of <prompt, completion> */
    int group;     /* the prompt it answers: the K samples of a prompt are consecutive and share
                      it (GRPO, RLOO) */
    int truncated; /* cut at the length limit, no end-of-text: missing_eos_penalty applies */
} ppo_seq_t;

/*
 * One minibatch step's rows, everything a gradient of them needs: n rollouts in minibatch order
 * (prompt and completion read) and their per-token quantities, computed once over the whole
 * rollout batch (old logprobs, advantages after whitening, old values, value targets, reference
 * logprobs, loss_agg weights), laid out sequence after sequence; the loss denominator of the
 * minibatch (its tokens, or its sequences with loss_agg sequence) and the KL coefficient.
 */
typedef struct {
    const ppo_seq_t *seqs;
    int n;
    const float *lp_old, *adv, *v_old, *ret, *ref, *w; /* (sum of completion_len) each */
    double denom;
    float beta;
} ppo_rows_t;

/* The figures carried with a minibatch gradient (GTREE_NSTAT doubles, summed in the tree like
 * the gradient). Policy: */
#define PPO_STAT_PG_LOSS   0 /* clipped surrogate */
#define PPO_STAT_CLIPFRAC  1
#define PPO_STAT_APPROX_KL 2
#define PPO_STAT_ENTROPY   3
/* Value model: */
#define PPO_STAT_V_LOSS     0
#define PPO_STAT_V_CLIPFRAC 1

/*
 * Computes blocks [j0, j1) of the minibatch r (r->n rows in nb blocks, gtree_block) into g
 * (gtree_leaves; g reset by the caller over nb blocks on m's gradient arena): the gradient of
 * the policy's loss (value = 0: clipped surrogate, entropy bonus, KL loss with kl_in = loss) or
 * of the value model's clipped value loss (value = 1), each block from a zeroed arena (the
 * microbatch setting splits a block's rows), with its figures [PPO_STAT_*]. A block's value
 * depends on its rows alone, so any cut of the tree combined in it gives the same bits: the
 * learner's shards each compute one node. Returns 0 or RL_E* (the model's, RL_ENONFINITE).
 */
int ppo_grad_leaves(gtree_t *g, gpt_t *m, int value, const ppo_config_t *c, const ppo_rows_t *r,
                    int nb, int j0, int j1);

/*
 * Where a minibatch step's gradient is computed: leaves m's gradient of the rows r (value: the
 * value model's) in m's gradient arena and its figures in stats (GTREE_NSTAT, zeroed by the
 * caller), exactly as one process reducing gtree_blocks(c->grad_blocks, r->n) blocks with
 * ppo_grad_leaves would. NULL (ppo_learner_t.grad_fn): in this process. Returns 0 or RL_E*.
 */
typedef int (*ppo_grad_fn)(void *ctx, gpt_t *m, int value, const ppo_config_t *c,
                           const ppo_rows_t *r, double *stats);

/* The learner: borrowed models, owned optimiser states, persistent PPO state. */
typedef struct {
    ppo_config_t cfg;
    gpt_t *policy; /* LM head used; borrowed */
    gpt_t *value;  /* cfg.scalar_head = 1; borrowed; NULL with a critic-free estimator */
    adamw_t opt_policy, opt_value;
    adamw_group_t groups_policy[GPT_NKINDS], groups_value[GPT_NKINDS];
    int n_groups_policy, n_groups_value;
    ppo_klctl_t kl;            /* beta for the next batch's rewards */
    ppo_moments_t score_stats; /* running moments of the raw scores seen so far */
    long iteration;            /* successful ppo_update() calls; keys the minibatch shuffle */
    ppo_grad_fn grad_fn;       /* NULL: minibatch gradients in this process (ppo_grad_fn) */
    void *grad_ctx;
    gtree_t tree[2]; /* the in-process reductions: the policy's, the value model's (each keeps
                        arenas of its model's size) */
} ppo_learner_t;

/*
 * Prepares a learner on `policy` and `value` (borrowed, must outlive l; same vocabulary and
 * context; the value model has a scalar head): gradients and AdamW moments (beta1 0.9, beta2
 * 0.95, eps 1e-8, as the SFT step) allocated, kl from the config. Returns 0, RL_EINVAL (bad
 * config or models) or RL_ENOMEM; on failure nothing is left allocated.
 */
int ppo_learner_init(ppo_learner_t *l, gpt_t *policy, gpt_t *value, const ppo_config_t *cfg);
/* With a critic-free cfg.adv_estimator, value may be NULL and is ignored (neither used nor
 * trained; l->value is NULL and opt_value empty). */

/* Frees the optimiser states; safe on a zeroed struct. Does not free the models. */
void ppo_learner_free(ppo_learner_t *l);

/* Figures of one ppo_update(). Loss-side figures are means over the optimiser steps. */
typedef struct {
    double policy_loss;    /* clipped surrogate loss (entropy bonus, KL loss not included) */
    double value_loss;     /* clipped value loss; NaN without a critic (so are value_clipfrac,
                              explained_var, grad_norm_value) */
    double entropy;        /* mean per-token entropy of the policy during the update */
    double clipfrac;       /* policy ratio clip fraction */
    double value_clipfrac; /* value clip fraction */
    double approx_kl;      /* mean (r - 1) - log r between the rollout policy and the policy
                              each step starts from */
    double kl_k1, kl_k3;   /* policy vs reference at rollout, per sequence (summed over tokens),
                              mean over sequences; kl_k1 drives the adaptive controller */
    double explained_var;  /* of the old values as predictors of the returns */
    double reward_mean, reward_std; /* per-sequence total reward (score term + KL penalty) */
    double score_mean, score_std;   /* raw reward-model scores of the batch */
    double adv_mean, adv_std;       /* advantages before whitening */
    double beta;                    /* KL coefficient used for this batch */
    double grad_norm_policy, grad_norm_value; /* mean pre-clip global norms */
    long n_seqs, n_tokens, n_steps;           /* sequences, completion tokens, optimiser steps */
} ppo_stats_t;

/*
 * Log-probabilities of every completion token of seqs[0..n) under model m (LM head), with
 * `batch` sequences per forward pass (<= 0: all at once) and distributions over ids below
 * vocab_limit (<= 0: the whole vocabulary). out holds sum(completion_len) floats, sequence after
 * sequence. For the reference logprobs (reward worker) and for recomputing old logprobs. Returns 0
 * or RL_E*.
 */
int ppo_seq_logprobs(gpt_t *m, const ppo_seq_t *seqs, int n, int batch, int vocab_limit,
                     float *out);

/* ppo_seq_logprobs() under logits / temperature (temperature > 0; 1: the same bits). */
int ppo_seq_logprobs_temp(gpt_t *m, const ppo_seq_t *seqs, int n, int batch, int vocab_limit,
                          float temperature, float *out);

/* The value V(s_t) of every action state of seqs[0..n) under value model m (scalar head),
 * laid out as ppo_seq_logprobs(). Returns 0 or RL_E*. */
int ppo_seq_values(gpt_t *m, const ppo_seq_t *seqs, int n, int batch, float *out);

/*
 * One PPO iteration on n rollouts: old values (and old logprobs with recompute_logprobs),
 * score normalisation (the running moments are updated with this batch's raw scores first;
 * missing_eos_penalty is then subtracted from a truncated rollout's normalised, clipped score),
 * per-token
 * rewards with the current beta (the KL term only with kl_in = reward), advantages by
 * adv_estimator (GAE and optional whitening; GRPO or RLOO per prompt group, the sequence's
 * advantage on each of its tokens; REINFORCE++ returns whitened over the batch), then
 * cfg.epochs passes of shuffled minibatches, each one clipped-surrogate AdamW step of the policy
 * (plus the KL loss with kl_in = loss; token or sequence averaging by loss_agg) and, with GAE,
 * one clipped-value-loss step of the value model, each with its own gradient clipping and
 * learning rate. Every logprob is read under logits / temperature. Afterwards the
 * KL controller is updated with the batch's mean k1 KL and `iteration` advances. `st` may be
 * NULL. Returns 0 or RL_EINVAL (bad rollout: ids out of range, too long for the context,
 * missing logprobs), RL_ENONFINITE (NaN/Inf in a logprob, score, loss or gradient), RL_ENOMEM.
 * On failure the steps already taken stay applied, and kl, score_stats and iteration are
 * unchanged: restore the checkpoint to retry.
 */
int ppo_update(ppo_learner_t *l, const ppo_seq_t *seqs, int n, ppo_stats_t *st);

#endif
