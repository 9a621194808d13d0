/*
 * rm.h - the reward model: a GPT-2 trunk with a scalar head, read at the last token of
 * prompt + completion + <|endoftext|>, trained on preference pairs with the Bradley-Terry loss.
 *
 * Data. A pairs file (JSONL, one {"prompt_id"?, "prompt", "chosen", "rejected", "margin"?} per
 * line) is loaded into an rm_data_t: pairs are grouped by prompt (by prompt_id when the line has
 * one, else by the prompt text), and the distinct completions of a group become its sequences,
 * each tokenised once. A pair refers to two sequences of its group.
 *
 * Loss. One training item is either a group (InstructGPT: every completion of the prompt is
 * forwarded once and the item's loss is the mean over the group's pairs) or, in pairwise mode,
 * a single pair (its two completions forwarded on their own). Per pair (w preferred to l):
 *     -log sigma(r_w - r_l - margin_coef * margin) + center_coef * (r_w + r_l)^2
 * and a step's loss is the mean of its items' losses.
 *
 * A step's gradient is the canonical reduction of nn/gtree.h: its items are cut into blocks
 * (both sequences of a pair, every completion of a group, always in one block), each block's
 * gradient is computed on its own with the loss divided by the step's item count, and the blocks
 * are combined by the fixed tree. A sharded learner computes the blocks of one node of the tree
 * per shard and combines the nodes in the same tree, which gives the same bits:
 *     gtree_reset(&g, nb, m->grads_mem, m->num_params);
 *     rm_grad_leaves(&g, m, d, items + first item of j0, B, nb, j0, j1, &opt); // a node's blocks
 *     ...gtree_push the other shards' nodes, gtree_take...
 *     rm_update(&train, &us);                                                  // clip + AdamW
 * rm_step() does all of it in one process.
 */
#ifndef RLHF_RM_H
#define RLHF_RM_H

#include <stddef.h>
#include <stdint.h>

#include "nn/gpt.h"
#include "nn/gtree.h"
#include "nn/tok.h"
#include "nn/train.h"

/* A tokenised sequence: ids[off .. off+len) of rm_data_t.ids. */
typedef struct {
    size_t off;
    int len;
    /* rm_data_load_split: the ids before the completion (>= 1); 0 in other loads */
    int n_prompt;
    /* rm_data_load_split: the reference model's log-probability of the completion (the sum of
     * its tokens' logprobs, each rounded to float), from the line's "ref_chosen_logps" /
     * "ref_rejected_logps"; NaN when the line has none */
    double ref_logp;
} rm_seq_t;

/* A preference: sequence w preferred to sequence l (global sequence indices, same group). */
typedef struct {
    int w, l;
    float margin; /* the "margin" field of the line, 0 when absent */
    int group;
    /* the gold judge's score of w minus l's (task_gold_text: meaningful for the embedded task's
     * prompts only); NaN for pairs added without their texts (rm_data_add) */
    float gold;
    long src; /* its line among the file's pairs (the rm_data_add call, from 0) */
} rm_pair_t;

/* The pairs of one prompt: sequences [seq0, seq0 + n_seq), pairs [pair0, pair0 + n_pair). */
typedef struct {
    char *key; /* the prompt_id, or the prompt text when the lines carry no prompt_id */
    int seq0, n_seq, pair0, n_pair;
} rm_group_t;

typedef struct {
    int *ids; /* every sequence's tokens, back to back */
    size_t n_ids, cap_ids;
    rm_seq_t *seqs;
    int n_seqs, cap_seqs;
    rm_pair_t *pairs;
    int n_pairs, cap_pairs;
    rm_group_t *groups;
    int n_groups, cap_groups;
    long n_lines;     /* pairs read (lines, or rm_data_add calls) */
    long n_skipped;   /* pairs whose two sequences were identical: no preference to learn */
    long n_truncated; /* sequences longer than max_len, cut from the left */
    int split;        /* loaded by rm_data_load_split: n_prompt and ref_logp are set */
    long n_ref;       /* rm_data_load_split: sequences with a reference logprob */
    void *build;      /* construction state until rm_data_finish() */
} rm_data_t;

/* Frees everything; safe on a zeroed struct. */
void rm_data_free(rm_data_t *d);

/*
 * Adds one pair to the group named `key` (created on first use): chosen (nc ids) preferred to
 * rejected (nr ids). Identical sequences within a group are stored once. A pair whose two
 * sequences are identical is counted in n_skipped and not stored. Sequences are stored as given
 * (no truncation). Call rm_data_finish() after the last add. Returns 0, RL_EINVAL (empty
 * sequence) or RL_ENOMEM.
 */
int rm_data_add(rm_data_t *d, const char *key, const int *chosen, int nc, const int *rejected,
                int nr, float margin);

/* Lays the groups out contiguously (seqs and pairs of a group adjacent, groups in order of
 * first appearance) and drops the construction state. Returns 0 or RL_ENOMEM. */
int rm_data_finish(rm_data_t *d);

/*
 * The token ids of prompt + completion + <|endoftext|>: the concatenated text is encoded as one
 * string (special-token text is ordinary text) and the end-of-text id appended; a sequence
 * longer than max_len keeps its last max_len ids (the end, where the reward is read).
 * *ids is malloc'ed (caller frees), *n its length, *truncated 1 if cut (may be NULL).
 * Returns 0, RL_EINVAL (the tokenizer has no <|endoftext|>) or RL_E* from the tokenizer.
 */
int rm_encode(tok_t *tok, const char *prompt, const char *completion, int max_len, int **ids,
              int *n, int *truncated);

/*
 * rm_encode() for ids already tokenised (a prompt and a generated completion): prompt +
 * completion with the end-of-text id eot appended unless the completion already ends with it
 * (eot < 0: nothing appended), a sequence longer than max_len keeping its last max_len ids.
 * *ids is malloc'ed (caller frees), *n its length. Returns 0, RL_EINVAL or RL_ENOMEM.
 */
int rm_join(const int *prompt, int n_prompt, const int *completion, int n_completion, int eot,
            int max_len, int **ids, int *n);

/*
 * Reads a pairs file into *d (zeroed by the call): every non-blank line an object with string
 * fields "prompt", "chosen", "rejected", an optional "prompt_id" (string or integer) and an
 * optional numeric "margin". Sequences are encoded with rm_encode(tok, ..., max_len). A
 * malformed line is RL_EFORMAT "PATH:LINE: ..."; so is a prompt_id seen before with a different
 * prompt. An empty file (no pairs left) is RL_EFORMAT too. On failure *d is freed.
 */
int rm_data_load(const char *path, tok_t *tok, int max_len, rm_data_t *d);

/*
 * The ids of prompt + completion + <|endoftext|> for a policy loss (DPO): prompt and completion
 * are encoded on their own (so the completion's tokens are known) and joined. A sequence longer
 * than max_len first loses prompt tokens from the left (one is always kept), then completion
 * tokens from the right. *ids malloc'ed, *n its length, *n_prompt the ids before the
 * completion, *truncated 1 if cut (may be NULL). Returns 0, RL_EINVAL (no <|endoftext|>,
 * max_len < 2, an empty prompt) or RL_E* from the tokenizer.
 */
int rm_encode_split(tok_t *tok, const char *prompt, const char *completion, int max_len, int **ids,
                    int *n, int *n_prompt, int *truncated);

/*
 * rm_data_load() for a policy loss (DPO): sequences by rm_encode_split (n_prompt set), and the
 * optional per-line numbers "ref_chosen_logps" and "ref_rejected_logps" (TRL's column names:
 * the reference model's summed completion logprobs; both or neither) into ref_logp. Two lines
 * that give one sequence different reference logprobs are an error naming the second line.
 */
int rm_data_load_split(const char *path, tok_t *tok, int max_len, rm_data_t *d);

/*
 * The held-out split, by prompt: a group is held out when a uniform draw keyed by a hash of
 * its key and `seed` falls below `frac` - deterministic, independent of file order, and never
 * splitting a prompt's pairs. held[g] receives 1 for held-out groups. Returns how many.
 */
int rm_split(const rm_data_t *d, double frac, uint64_t seed, unsigned char *held);

/* Training items of a loss: groups (InstructGPT K-wise) or single pairs. */
typedef enum { RM_ITEMS_GROUPS, RM_ITEMS_PAIRS } rm_items_t;

typedef struct {
    rm_items_t items;
    float margin_coef; /* multiplies each pair's margin inside the sigmoid; 0 = no margin */
    float center_coef; /* reward-centering weight on (r_w + r_l)^2; 0 = off */
    int micro;         /* sequences per forward pass (an item is never split); >= 1 */
    int pad_id;        /* token id used to pad sequences to the micro-batch length */
} rm_opts_t;

/* What rm_grad measured: loss is scale * sum of item losses; pairs counted, pairs the model
 * orders correctly (a tie counts half), sequences forwarded. Added to, not reset. */
typedef struct {
    double loss;
    double correct;
    long pairs, seqs, tokens;
} rm_grad_stats_t;

/*
 * Forward + backward of items[0..n) (group indices or pair indices, as opt->items says):
 * accumulates scale * d(sum of item losses)/d(params) into m->grads_mem (allocated if needed,
 * NOT zeroed - the caller zeroes once per step), and adds to *st (may be NULL). With scale =
 * 1/(items in the whole step), slices of a step summed give the gradient of the step's mean
 * loss. Returns 0 or RL_E* (RL_ENONFINITE for a NaN/Inf reward or loss).
 */
int rm_grad(gpt_t *m, const rm_data_t *d, const int *items, int n, const rm_opts_t *opt,
            float scale, rm_grad_stats_t *st);

/* The scalars a block's value carries (gtree: [RM_STAT_*]), combined in the tree. */
enum { RM_STAT_LOSS, RM_STAT_CORRECT, RM_STAT_PAIRS, RM_STAT_SEQS, RM_STAT_TOKENS };

/*
 * Blocks [j0, j1) of a step of B items in nb blocks (gtree_block; items points at the first item
 * of block j0), each computed from a zeroed gradient arena by rm_grad with scale 1/B and pushed
 * into g (gtree_leaves; g reset by the caller on m's gradient arena). Each block's scalars are
 * its rm_grad_stats_t as [RM_STAT_*]. Returns 0 or RL_E* (rm_grad's).
 */
int rm_grad_leaves(gtree_t *g, gpt_t *m, const rm_data_t *d, const int *items, int B, int nb,
                   int j0, int j1, const rm_opts_t *opt);

/* Adds the scalars of a reduction ([RM_STAT_*]) to *st. */
void rm_grad_stats_add(rm_grad_stats_t *st, const double *stats);

/* The optimiser half of a step. */
typedef struct {
    float lr;
    double grad_norm; /* before clipping */
} rm_update_stats_t;

/*
 * Global-norm clipping (t->clip) and one AdamW step with the schedule's learning rate, from the
 * gradient in t->model->grads_mem; t->step is incremented. On RL_ENONFINITE nothing is applied.
 */
int rm_update(train_t *t, rm_update_stats_t *st);

/* One whole step in one process: the gradient of the mean loss of items[0..n) in
 * gtree_blocks(t->grad_blocks, n) blocks (rm_grad_leaves over every block, then gtree_take), then
 * rm_update. The figures are added to *gs (may be NULL). */
int rm_step(train_t *t, const rm_data_t *d, const int *items, int n, const rm_opts_t *opt,
            rm_grad_stats_t *gs, rm_update_stats_t *us);

/* The order of epoch `epoch` over n items: a permutation from a counter-based draw keyed by
 * (seed, epoch), the same in every process. */
void rm_epoch_order(int n, uint64_t seed, uint64_t epoch, int *perm);

/*
 * Rewards of n sequences (seqs[i] points at lens[i] ids), forward only, `micro` sequences per
 * forward pass padded with pad_id: out[i] = the head at the sequence's last token. Returns 0 or
 * RL_E* (RL_EINVAL: no scalar head, a sequence longer than n_positions or empty).
 */
int rm_rewards(gpt_t *m, const int *const *seqs, const int *lens, int n, int micro, int pad_id,
               float *out);

/* rm_rewards() on sequences of a data set: out[i] = reward of d->seqs[idx[i]]. */
int rm_data_rewards(gpt_t *m, const rm_data_t *d, const int *idx, int n, int micro, int pad_id,
                    float *out);

/* Pairwise metrics of n pairs from the rewards of their preferred and other completions. */
typedef struct {
    long pairs;
    double accuracy; /* fraction with r_chosen > r_rejected; a tie counts half */
    double loss;     /* mean -log sigma(r_chosen - r_rejected) */
    /* Expected calibration error of p = sigma(r_chosen - r_rejected) as the probability that
     * the first of two completions is preferred: each pair is counted in both orders, (p, 1)
     * and (1 - p, 0), binned by predicted probability into `bins` equal-width bins; ECE =
     * sum over bins of (count / total) * |mean prediction - fraction preferred|. */
    double ece;
    int bins;
} rm_metrics_t;

/* Fills *out from rc[i], rr[i]; bins >= 1. n = 0 gives zero counts and NaN figures. */
void rm_metrics(const float *rc, const float *rr, long n, int bins, rm_metrics_t *out);

/* Reward normalisation statistics, saved with the model for PPO: r' = (r - mean) / std. */
typedef struct {
    double mean, std; /* std is the population standard deviation */
    long count;       /* rewards they were computed on */
} rm_stats_t;

/* Mean and population standard deviation of r[0..n) (in double). n = 0 gives NaN. */
void rm_stats_compute(const float *r, long n, rm_stats_t *out);

/* The file in a reward-model directory that holds the statistics:
 * {"mean": M, "std": S, "count": N}. */
#define RM_STATS_FILE "reward_stats.json"

/* Reads DIR/reward_stats.json. Returns 0, RL_ENOTFOUND (no file) or RL_EFORMAT naming it. */
int rm_stats_read(const char *dir, rm_stats_t *out);

/*
 * Saves a reward model to directory `out` as one unit: the HF files (config.json with the
 * "rlhf_scalar_head" entry, model.safetensors), the tokenizer of `tokdir` (if it has one, see
 * hf_copy_tokenizer; may be NULL) and reward_stats.json (if stats is not NULL) are written to a
 * sibling staging directory which then replaces `out` by rename, so `out` is either the old
 * directory or the complete new one. Returns 0 or RL_E*.
 */
int rm_save(const gpt_t *m, const rm_stats_t *stats, const char *tokdir, const char *out);

/*
 * Loads an HF GPT-2 directory as a reward model: a model that already has a scalar head is
 * returned as saved; one without gets a new head (weight N(0, 0.02) drawn from `seed`, bias 0)
 * on the loaded trunk. Returns the model (gpt_destroy) or NULL with the detail in rl_errmsg().
 */
gpt_t *rm_load(const char *dir, uint64_t seed);

#endif
