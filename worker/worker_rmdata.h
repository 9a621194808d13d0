/*
 * worker_rmdata.h - the reward-model side of the learner's TRAIN jobs of kind RM: the pairs
 * file (loaded and tokenised once per process, kept while jobs name the same file), its loss
 * settings, and the training split's items drawn step by step in the epoch orders of
 * `rlhf train-rm`. The gradient itself is rm_grad_leaves (common/align/rm.h), block by block.
 *
 * Every shard loads the same file with the same tokenizer and max_len, so a global item index
 * means the same thing in each (rm_data_load is deterministic): shard 0 draws a step's items
 * (rmdata_job_batch) and sends each shard the indices of its node's blocks.
 */
#ifndef RLHF_WORKER_RMDATA_H
#define RLHF_WORKER_RMDATA_H

#include "align/dpo.h"
#include "align/rm.h"
#include "nn/gpt.h"
#include "rlhf.pb-c.h"

/* The pairs file of RM jobs, as loaded. Zero it before the first rmdata_get. */
typedef struct {
    char *key; /* pairs file, tokenizer directory and max_len it was loaded with */
    rm_data_t d;
    int pad;          /* the tokenizer's end-of-text id: micro-batch padding */
    int is_dpo;       /* a DPO spec: loaded by rm_data_load_split, trained with dpo */
    dpo_config_t dpo; /* its loss settings */
} rmdata_t;

/* Frees the data; safe on a zeroed struct, and again. */
void rmdata_free(rmdata_t *r);

/* Makes r hold the data of an RM or DPO spec (DPO: every sequence must have its reference
 * logprob, and the spec's loss settings go to r->dpo) (pairs_file, tokenizer of model_dir, seq_len)
 * for a model of `vocab` ids: nothing to do when it already does. Returns 0 or RL_E* (bad file: its
 * line). */
int rmdata_get(rmdata_t *r, const Rlhf__TrainSpec *sp, int vocab);

/* The loss settings of an RM spec, padding with r's end-of-text id. */
rm_opts_t rmdata_opts(const rmdata_t *r, const Rlhf__TrainSpec *sp);

/* The RM side of one job on shard 0: the training split's items, the epoch order they are drawn
 * in, and the settings the other shards need (a packed TrainSpec, sent as a frame "rm"). */
typedef struct {
    rm_opts_t opt;
    uint8_t *spec; /* the packed TrainSpec */
    size_t spec_len;
    int *items, n_items, bsz; /* the training items; items per step (B, at most n_items) */
    int *perm;
    long perm_epoch;
    int *batch; /* the items of the current step */
} rmdata_job_t;

/* Loads the data into r, splits it (rm_split: the held-out prompts are never trained on) and
 * packs the settings the shards need, for steps of B items on model m. Returns 0 or RL_E*;
 * free j with rmdata_job_free either way. */
int rmdata_job_init(rmdata_job_t *j, rmdata_t *r, const gpt_t *m, const Rlhf__TrainSpec *sp, int B);

/* j->batch = the items of global step `step`: the seamless sequence of epoch orders, as
 * `rlhf train-rm` draws them. */
void rmdata_job_batch(rmdata_job_t *j, uint64_t seed, long step);

/* Frees j's buffers and zeroes it; safe on a zeroed struct. */
void rmdata_job_free(rmdata_job_t *j);

#endif
