/*
 * worker_rmdata.c - the reward-model data of the learner's RM jobs: the pairs file, its loss
 * settings, and the items of each step (see worker_rmdata.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "nn/tok.h"
#include "worker_rmdata.h"

#define PATH_LEN 4096

void rmdata_free(rmdata_t *r) {
    rm_data_free(&r->d);
    free(r->key);
    r->key = NULL;
}

int rmdata_get(rmdata_t *r, const Rlhf__TrainSpec *sp, int vocab) {
    char key[3 * PATH_LEN];
    int is_dpo = sp->kind == RLHF__TRAIN_KIND__TRAIN_KIND_DPO;
    snprintf(key, sizeof key, "%s\n%s\n%u\n%d", sp->pairs_file, sp->model_dir, sp->seq_len, is_dpo);
    r->dpo = (dpo_config_t){(dpo_loss_t)sp->dpo_loss, sp->dpo_beta, sp->dpo_label_smoothing,
                            sp->micro > 0 ? (int)sp->micro : 8, r->pad};
    if (r->key && !strcmp(r->key, key)) return is_dpo ? dpo_config_check(&r->dpo) : 0;
    rmdata_free(r);
    tok_t *tok = tok_load(sp->model_dir);
    if (!tok) return rl_fail_ctx(RL_EINVAL, "rm: %s: tokenizer: ", sp->model_dir);
    int rc = 0;
    if (tok_vocab_size(tok) > vocab)
        rc = rl_fail(RL_EINVAL, "rm: %s: the tokenizer has %d ids, the model only %d",
                     sp->model_dir, tok_vocab_size(tok), vocab);
    else if (tok_eot(tok) < 0)
        rc = rl_fail(RL_EINVAL, "rm: %s: the tokenizer has no <|endoftext|>", sp->model_dir);
    if (rc == 0 && is_dpo) rc = rm_data_load_split(sp->pairs_file, tok, (int)sp->seq_len, &r->d);
    if (rc == 0 && !is_dpo) rc = rm_data_load(sp->pairs_file, tok, (int)sp->seq_len, &r->d);
    if (rc == 0 && is_dpo && r->d.n_ref < r->d.n_seqs)
        rc = rl_fail(RL_EINVAL,
                     "dpo: %s: %ld of %d completions have no reference logprobs "
                     "(ref_chosen_logps, ref_rejected_logps)",
                     sp->pairs_file, (long)r->d.n_seqs - r->d.n_ref, r->d.n_seqs);
    r->pad = tok_eot(tok);
    r->is_dpo = is_dpo;
    r->dpo.pad_id = r->pad;
    if (rc == 0 && is_dpo) rc = dpo_config_check(&r->dpo);
    tok_destroy(&tok);
    if (rc == 0 && !(r->key = strdup(key))) rc = rl_fail(RL_ENOMEM, "rm: out of memory");
    if (rc < 0) rmdata_free(r);
    return rc;
}

rm_opts_t rmdata_opts(const rmdata_t *r, const Rlhf__TrainSpec *sp) {
    rm_opts_t o = {sp->rm_pairwise ? RM_ITEMS_PAIRS : RM_ITEMS_GROUPS, sp->rm_margin, sp->rm_center,
                   sp->micro > 0 ? (int)sp->micro : 16, r->pad};
    return o;
}

void rmdata_job_free(rmdata_job_t *j) {
    free(j->items);
    free(j->perm);
    free(j->batch);
    free(j->spec);
    memset(j, 0, sizeof *j);
}

int rmdata_job_init(rmdata_job_t *j, rmdata_t *r, const gpt_t *m, const Rlhf__TrainSpec *sp,
                    int B) {
    int is_dpo = sp->kind == RLHF__TRAIN_KIND__TRAIN_KIND_DPO, pairwise = sp->rm_pairwise || is_dpo;
    if (!m->cfg.scalar_head && !is_dpo)
        return rl_fail(RL_EINVAL, "train: rm: the learner's model has no scalar head");
    int rc = rmdata_get(r, sp, m->cfg.vocab_size);
    if (rc < 0) return rc;
    const rm_data_t *d = &r->d;
    unsigned char *held = calloc((size_t)d->n_groups, 1);
    int cap = d->n_pairs > d->n_groups ? d->n_pairs : d->n_groups;
    j->items = malloc((size_t)cap * sizeof(int));
    j->perm = malloc((size_t)cap * sizeof(int));
    j->batch = malloc((size_t)B * sizeof(int));
    if (!held || !j->items || !j->perm || !j->batch) {
        free(held);
        return rl_fail(RL_ENOMEM, "train: rm: out of memory");
    }
    rm_split(d, sp->heldout_frac, sp->split_seed, held);
    if (pairwise) {
        for (int p = 0; p < d->n_pairs; p++)
            if (!held[d->pairs[p].group]) j->items[j->n_items++] = p;
    } else {
        for (int g = 0; g < d->n_groups; g++)
            if (!held[g]) j->items[j->n_items++] = g;
    }
    free(held);
    if (j->n_items == 0)
        return rl_fail(RL_EINVAL, "train: rm: %s: every prompt is held out", sp->pairs_file);
    j->bsz = B < j->n_items ? B : j->n_items;
    j->perm_epoch = -1;
    j->opt = rmdata_opts(r, sp);
    /* what a shard needs to compute a slice: the data, its tokenizer and the loss */
    Rlhf__TrainSpec s = RLHF__TRAIN_SPEC__INIT;
    s.kind = sp->kind;
    s.model_dir = sp->model_dir;
    s.pairs_file = sp->pairs_file;
    s.seq_len = sp->seq_len;
    s.rm_pairwise = sp->rm_pairwise;
    s.rm_margin = sp->rm_margin;
    s.rm_center = sp->rm_center;
    s.micro = sp->micro;
    s.dpo_beta = sp->dpo_beta;
    s.dpo_loss = sp->dpo_loss;
    s.dpo_label_smoothing = sp->dpo_label_smoothing;
    size_t len = rlhf__train_spec__get_packed_size(&s);
    if (!(j->spec = malloc(len ? len : 1))) return rl_fail(RL_ENOMEM, "train: rm: out of memory");
    rlhf__train_spec__pack(&s, j->spec);
    j->spec_len = len;
    return 0;
}

void rmdata_job_batch(rmdata_job_t *j, uint64_t seed, long step) {
    for (int b = 0; b < j->bsz; b++) {
        long cursor = step * j->bsz + b, epoch = cursor / j->n_items;
        if (epoch != j->perm_epoch) {
            j->perm_epoch = epoch;
            rm_epoch_order(j->n_items, seed, (uint64_t)epoch, j->perm);
        }
        j->batch[b] = j->items[j->perm[cursor % j->n_items]];
    }
}
