/*
 * dpo.c - direct preference optimisation: the DPO / IPO / label-smoothed DPO losses, the policy
 * log-probabilities of pair completions and the step's gradient (see dpo.h).
 */
#include "align/dpo.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "align/ppo.h"
#include "base/err.h"

int dpo_loss_parse(const char *s, dpo_loss_t *out) {
    if (s && !strcmp(s, "sigmoid")) return *out = DPO_LOSS_SIGMOID, 0;
    if (s && !strcmp(s, "ipo")) return *out = DPO_LOSS_IPO, 0;
    return rl_fail(RL_EINVAL, "DPO loss '%s': expected sigmoid or ipo", s ? s : "");
}

const char *dpo_loss_name(dpo_loss_t l) {
    return l == DPO_LOSS_IPO ? "ipo" : "sigmoid";
}

int dpo_config_check(const dpo_config_t *c) {
    if (c->loss != DPO_LOSS_SIGMOID && c->loss != DPO_LOSS_IPO)
        return rl_fail(RL_EINVAL, "DPO: unknown loss %d", (int)c->loss);
    if (!(c->beta > 0) || !isfinite(c->beta))
        return rl_fail(RL_EINVAL, "DPO: beta %g is not a finite number > 0", c->beta);
    if (!(c->label_smoothing >= 0 && c->label_smoothing < 0.5))
        return rl_fail(RL_EINVAL, "DPO: label smoothing %g is not in [0, 0.5)", c->label_smoothing);
    if (c->micro < 1) return rl_fail(RL_EINVAL, "DPO: micro %d is not >= 1", c->micro);
    return 0;
}

/* -log sigma(x), stably. */
static double dpo_nls(double x) {
    return x > 0 ? log1p(exp(-x)) : -x + log1p(exp(x));
}

/* sigma(x), stably. */
static double dpo_sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

double dpo_pair_loss(const dpo_config_t *c, double pc, double pr, double rc, double rr, double *dpc,
                     double *dpr) {
    double h = (pc - rc) - (pr - rr), loss, dh;
    if (c->loss == DPO_LOSS_IPO) {
        double e = h - 1.0 / (2.0 * c->beta);
        loss = e * e;
        dh = 2.0 * e;
    } else {
        double z = c->beta * h, eps = c->label_smoothing;
        loss = (1.0 - eps) * dpo_nls(z) + eps * dpo_nls(-z);
        dh = c->beta * (-(1.0 - eps) * dpo_sigmoid(-z) + eps * dpo_sigmoid(z));
    }
    if (dpc) *dpc = dh;
    if (dpr) *dpr = -dh;
    return loss;
}

void dpo_stats_add(dpo_stats_t *st, const double *stats) {
    st->loss += stats[DPO_STAT_LOSS];
    st->correct += stats[DPO_STAT_CORRECT];
    st->pairs += (long)stats[DPO_STAT_PAIRS];
    st->reward_chosen += stats[DPO_STAT_CHOSEN];
    st->reward_rejected += stats[DPO_STAT_REJECTED];
    st->tokens += (long)stats[DPO_STAT_TOKENS];
}

/* Micro-batch buffers. */
typedef struct {
    int *inputs;
    size_t cap;
} dpo_buf_t;

/*
 * Forwards sequences d->seqs[idx[0..B)] padded to their longest, and sums each completion's
 * float token logprobs into lp[b] (cnt[b] its tokens). The logits stay in m for a backward.
 */
static int dpo_forward(gpt_t *m, const rm_data_t *d, const int *idx, int B, int pad, dpo_buf_t *buf,
                       double *lp, int *cnt, int *Tout) {
    if (!d->split) return rl_fail(RL_EINVAL, "DPO: the pairs were not loaded for a policy loss");
    int T = 1;
    for (int b = 0; b < B; b++) {
        const rm_seq_t *s = &d->seqs[idx[b]];
        if (s->len > m->cfg.n_positions)
            return rl_fail(RL_EINVAL, "DPO: a sequence of %d tokens, the model's context is %d",
                           s->len, m->cfg.n_positions);
        if (s->n_prompt < 1 || s->n_prompt >= s->len)
            return rl_fail(RL_EINVAL, "DPO: a sequence of %d tokens with a prompt of %d", s->len,
                           s->n_prompt);
        T = s->len > T ? s->len : T;
    }
    size_t need = (size_t)B * (size_t)T;
    if (need > buf->cap) {
        int *p = realloc(buf->inputs, need * sizeof(int));
        if (!p) return rl_fail(RL_ENOMEM, "DPO: batch");
        buf->inputs = p;
        buf->cap = need;
    }
    for (int b = 0; b < B; b++) {
        const rm_seq_t *s = &d->seqs[idx[b]];
        int *row = buf->inputs + (size_t)b * T;
        memcpy(row, d->ids + s->off, (size_t)s->len * sizeof(int));
        for (int t = s->len; t < T; t++) row[t] = pad;
    }
    int rc = gpt_forward(m, buf->inputs, B, T, GPT_FWD_LOGITS);
    if (rc < 0) return rc;
    int V = m->cfg.vocab_size;
    for (int b = 0; b < B; b++) {
        const rm_seq_t *s = &d->seqs[idx[b]];
        const int *ids = d->ids + s->off;
        double sum = 0;
        for (int t = s->n_prompt; t < s->len; t++) /* token t is predicted at row t - 1 */
            sum += (double)(float)ppo_logprob(m->acts.logits + ((size_t)b * T + t - 1) * V, V,
                                              ids[t], NULL);
        if (!isfinite(sum)) return rl_fail(RL_ENONFINITE, "DPO: a completion's logprob is %g", sum);
        lp[b] = sum;
        cnt[b] = s->len - s->n_prompt;
    }
    *Tout = T;
    return 0;
}

int dpo_seq_logps(gpt_t *m, const rm_data_t *d, const int *seqs, int n, const dpo_config_t *c,
                  double *out, long *ntok) {
    int per = 2 * (c->micro > 0 ? c->micro : 1), rc = 0, T;
    int *cnt = malloc((size_t)per * sizeof(int));
    dpo_buf_t buf = {0};
    if (!cnt) return rl_fail(RL_ENOMEM, "DPO: batch");
    for (int i0 = 0; rc == 0 && i0 < n; i0 += per) {
        int B = n - i0 < per ? n - i0 : per;
        for (int i = 0; i < B; i++)
            if (seqs[i0 + i] < 0 || seqs[i0 + i] >= d->n_seqs)
                rc = rl_fail(RL_EINVAL, "DPO: sequence %d outside [0,%d)", seqs[i0 + i], d->n_seqs);
        if (rc == 0) rc = dpo_forward(m, d, seqs + i0, B, c->pad_id, &buf, out + i0, cnt, &T);
        for (int i = 0; rc == 0 && ntok && i < B; i++) *ntok += cnt[i];
    }
    free(cnt);
    free(buf.inputs);
    return rc;
}

/*
 * Pairs pairs[0..n), c->micro per pass: their losses and rewards into *st (loss times scale),
 * and scale * the gradient of their summed loss into m's arena.
 */
int dpo_grad(gpt_t *m, const rm_data_t *d, const int *pairs, int n, const dpo_config_t *c,
             float scale, dpo_stats_t *st) {
    int rc = dpo_config_check(c);
    if (rc < 0) return rc;
    int per = c->micro, V = m->cfg.vocab_size, T;
    int *idx = malloc((size_t)2 * per * sizeof(int)), *cnt = malloc((size_t)2 * per * sizeof(int));
    double *lp = malloc((size_t)2 * per * sizeof(double)),
           *g = malloc((size_t)2 * per * sizeof(double));
    dpo_buf_t buf = {0};
    unsigned char *used = NULL;
    size_t used_cap = 0;
    if (!idx || !cnt || !lp || !g) rc = rl_fail(RL_ENOMEM, "DPO: batch");
    for (int i0 = 0; rc == 0 && i0 < n; i0 += per) {
        int np = n - i0 < per ? n - i0 : per, B = 2 * np;
        for (int i = 0; rc == 0 && i < np; i++) {
            int p = pairs[i0 + i];
            if (p < 0 || p >= d->n_pairs) {
                rc = rl_fail(RL_EINVAL, "DPO: pair %d outside [0,%d)", p, d->n_pairs);
                break;
            }
            idx[2 * i] = d->pairs[p].w;
            idx[2 * i + 1] = d->pairs[p].l;
            if (isnan(d->seqs[idx[2 * i]].ref_logp) || isnan(d->seqs[idx[2 * i + 1]].ref_logp))
                rc = rl_fail(RL_EINVAL, "DPO: pair %d has no reference logprobs", p);
        }
        if (rc == 0) rc = dpo_forward(m, d, idx, B, c->pad_id, &buf, lp, cnt, &T);
        if (rc < 0) break;
        for (int i = 0; i < np; i++) {
            const rm_seq_t *sc = &d->seqs[idx[2 * i]], *sr = &d->seqs[idx[2 * i + 1]];
            double nc = c->loss == DPO_LOSS_IPO ? cnt[2 * i] : 1.0;
            double nr = c->loss == DPO_LOSS_IPO ? cnt[2 * i + 1] : 1.0;
            double pc = lp[2 * i] / nc, pr = lp[2 * i + 1] / nr;
            double rc_ = sc->ref_logp / nc, rr = sr->ref_logp / nr, dpc, dpr;
            double loss = dpo_pair_loss(c, pc, pr, rc_, rr, &dpc, &dpr);
            if (!isfinite(loss)) {
                rc = rl_fail(RL_ENONFINITE, "DPO: loss of pair %d is %g", pairs[i0 + i], loss);
                break;
            }
            g[2 * i] = (double)scale * dpc / nc;
            g[2 * i + 1] = (double)scale * dpr / nr;
            if (st) {
                double wc = c->beta * (pc - rc_), wr = c->beta * (pr - rr);
                st->loss += (double)scale * loss;
                st->correct += wc > wr ? 1.0 : wc == wr ? 0.5 : 0.0;
                st->reward_chosen += wc;
                st->reward_rejected += wr;
                st->pairs++;
                st->tokens += cnt[2 * i] + cnt[2 * i + 1];
            }
        }
        if (rc < 0) continue;
        /* dlogits: d(loss)/d(logp of the completion) on each of its rows, zero elsewhere */
        size_t N = (size_t)B * T;
        if (N > used_cap) {
            unsigned char *u = realloc(used, N);
            if (!u) {
                rc = rl_fail(RL_ENOMEM, "DPO: batch");
                break;
            }
            used = u;
            used_cap = N;
        }
        memset(used, 0, N);
        float *logits = m->acts.logits;
        for (int b = 0; b < B; b++) {
            const rm_seq_t *s = &d->seqs[idx[b]];
            const int *ids = d->ids + s->off;
            for (int t = s->n_prompt; t < s->len; t++) {
                size_t r = (size_t)b * T + t - 1;
                used[r] = 1;
                ppo_dlogits_row(logits + r * V, V, ids[t], (float)g[b], 0.0f, logits + r * V);
            }
        }
        for (size_t r = 0; r < N; r++)
            if (!used[r]) memset(logits + r * V, 0, (size_t)V * sizeof(float));
        if ((rc = gpt_dlogits_set(m)) == 0) rc = gpt_backward(m, 1, NULL);
    }
    free(idx);
    free(cnt);
    free(lp);
    free(g);
    free(used);
    free(buf.inputs);
    return rc;
}

int dpo_eval(gpt_t *m, const rm_data_t *d, const int *pairs, int n, const dpo_config_t *c,
             dpo_stats_t *st) {
    /* each distinct sequence forwarded once (pairs share completions), then the pairs */
    int rc = dpo_config_check(c), ns = 0;
    if (rc < 0) return rc;
    int *slot = malloc((size_t)(d->n_seqs ? d->n_seqs : 1) * sizeof(int));
    int *seqs = malloc((size_t)(d->n_seqs ? d->n_seqs : 1) * sizeof(int));
    double *lp = malloc((size_t)(d->n_seqs ? d->n_seqs : 1) * sizeof(double));
    if (!slot || !seqs || !lp) rc = rl_fail(RL_ENOMEM, "DPO: evaluation");
    for (int i = 0; rc == 0 && i < d->n_seqs; i++) slot[i] = -1;
    for (int i = 0; rc == 0 && i < n; i++) {
        if (pairs[i] < 0 || pairs[i] >= d->n_pairs) {
            rc = rl_fail(RL_EINVAL, "DPO: pair %d outside [0,%d)", pairs[i], d->n_pairs);
            break;
        }
        int sq[2] = {d->pairs[pairs[i]].w, d->pairs[pairs[i]].l};
        for (int k = 0; k < 2; k++) {
            if (isnan(d->seqs[sq[k]].ref_logp))
                rc = rl_fail(RL_EINVAL, "DPO: pair %d has no reference logprobs", pairs[i]);
            if (slot[sq[k]] < 0) slot[sq[k]] = ns, seqs[ns++] = sq[k];
        }
    }
    if (rc == 0) rc = dpo_seq_logps(m, d, seqs, ns, c, lp, NULL);
    for (int i = 0; rc == 0 && i < n; i++) {
        const rm_pair_t *p = &d->pairs[pairs[i]];
        const rm_seq_t *sc = &d->seqs[p->w], *sr = &d->seqs[p->l];
        int cc = sc->len - sc->n_prompt, cr = sr->len - sr->n_prompt;
        double nc = c->loss == DPO_LOSS_IPO ? cc : 1.0, nr = c->loss == DPO_LOSS_IPO ? cr : 1.0;
        double pc = lp[slot[p->w]] / nc, pr = lp[slot[p->l]] / nr;
        double rc_ = sc->ref_logp / nc, rr = sr->ref_logp / nr;
        double loss = dpo_pair_loss(c, pc, pr, rc_, rr, NULL, NULL);
        if (!isfinite(loss)) {
            rc = rl_fail(RL_ENONFINITE, "DPO: loss of pair %d is %g", pairs[i], loss);
            break;
        }
        double wc = c->beta * (pc - rc_), wr = c->beta * (pr - rr);
        st->loss += loss;
        st->correct += wc > wr ? 1.0 : wc == wr ? 0.5 : 0.0;
        st->reward_chosen += wc;
        st->reward_rejected += wr;
        st->pairs++;
        st->tokens += cc + cr;
    }
    free(slot);
    free(seqs);
    free(lp);
    return rc;
}

/* The blocks of one step, for dpo_leaf. */
typedef struct {
    gpt_t *m;
    const rm_data_t *d;
    const int *pairs; /* from the first pair of block j0 */
    int B, nb, first;
    const dpo_config_t *c;
} dpo_blocks_t;

/* gtree_leaf_fn: block j of a DPO step. */
static int dpo_leaf(void *ctx, int j, double *stats, int *empty) {
    const dpo_blocks_t *b = ctx;
    int i0, i1;
    gtree_block(b->B, b->nb, j, &i0, &i1);
    if (i1 == i0) { /* more blocks than pairs: nothing here */
        *empty = 1;
        return 0;
    }
    dpo_stats_t gs = {0};
    gpt_zero_grad(b->m);
    int rc =
        dpo_grad(b->m, b->d, b->pairs + (i0 - b->first), i1 - i0, b->c, 1.0f / (float)b->B, &gs);
    if (rc < 0) return rc;
    stats[DPO_STAT_LOSS] = gs.loss;
    stats[DPO_STAT_CORRECT] = gs.correct;
    stats[DPO_STAT_PAIRS] = (double)gs.pairs;
    stats[DPO_STAT_CHOSEN] = gs.reward_chosen;
    stats[DPO_STAT_REJECTED] = gs.reward_rejected;
    stats[DPO_STAT_TOKENS] = (double)gs.tokens;
    return 0;
}

int dpo_grad_leaves(gtree_t *g, gpt_t *m, const rm_data_t *d, const int *pairs, int B, int nb,
                    int j0, int j1, const dpo_config_t *c) {
    if (B < 1 || nb < 1) return rl_fail(RL_EINVAL, "DPO: a step needs at least one pair");
    int first, end;
    gtree_block(B, nb, j0, &first, &end);
    dpo_blocks_t b = {m, d, pairs, B, nb, first, c};
    int rc = gpt_grads_alloc(m);
    return rc < 0 ? rc : gtree_leaves(g, j0, j1, dpo_leaf, &b);
}

int dpo_step(train_t *t, const rm_data_t *d, const int *pairs, int n, const dpo_config_t *c,
             dpo_stats_t *gs, rm_update_stats_t *us) {
    if (n < 1) return rl_fail(RL_EINVAL, "DPO: a step needs at least one pair");
    gpt_t *m = t->model;
    int nb = gtree_blocks(t->grad_blocks, n), rc = gpt_grads_alloc(m), empty, lo, hi;
    double stats[GTREE_NSTAT];
    if (rc == 0) {
        gtree_reset(&t->tree, nb, m->grads_mem, m->num_params);
        rc = dpo_grad_leaves(&t->tree, m, d, pairs, n, nb, 0, nb, c);
    }
    if (rc == 0) rc = gtree_take(&t->tree, stats, &empty, &lo, &hi);
    if (rc < 0) return rc;
    if (gs) dpo_stats_add(gs, stats);
    return rm_update(t, us);
}
