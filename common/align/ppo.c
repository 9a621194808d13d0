/*
 * ppo.c - PPO for RLHF: the per-token math and the learner's update (see ppo.h).
 *
 * Sums that feed a figure or a normaliser are accumulated in double and in a fixed order, so a
 * result does not depend on the thread count. Only the per-row work (a log-softmax over the
 * vocabulary, a logits-gradient row) runs on the OpenMP team, each row written by one thread.
 */
#include "align/ppo.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/rng.h"

/* Below this many logits per pass the row loops stay serial: waking the team costs more. */
#define PPO_PAR_MIN 32768

/* ---- per-token pieces ------------------------------------------------------------------ */

/*
 * log(sum_i exp(x_i / T)) of a row, computed around its maximum in double; if H is not NULL,
 * also the entropy H = lse - sum_i p_i x_i / T (terms with p_i = 0 contribute nothing, so -inf
 * entries are masked tokens). A NaN anywhere makes both NaN. Returns the lse as mx / T + ls with
 * *ls_out = log(sum exp((x_i - mx) / T)), so that at T = 1 every operation is the same as
 * without a temperature (x / 1 is x).
 */
static double row_lse(const float *x, int V, double T, double *H) {
    double mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (x[i] > mx || isnan(x[i])) mx = x[i];
    double s = 0, acc = 0;
    for (int i = 0; i < V; i++) {
        double d = ((double)x[i] - mx) / T, e = exp(d);
        s += e;
        if (e > 0 || isnan(e)) acc += e * d;
    }
    double ls = log(s);
    if (H) *H = ls - acc / s;
    return mx / T + ls;
}

double ppo_logprob(const float *logits, int V, int tok, double *entropy) {
    return ppo_logprob_temp(logits, V, tok, 1.0f, entropy);
}

double ppo_logprob_temp(const float *logits, int V, int tok, float temperature, double *entropy) {
    double T = temperature;
    return (double)logits[tok] / T - row_lse(logits, V, T, entropy);
}

void ppo_dlogits_row(const float *logits, int V, int tok, float dlogp, float dent, float *out) {
    ppo_dlogits_row_temp(logits, V, tok, 1.0f, dlogp, dent, out);
}

void ppo_dlogits_row_temp(const float *logits, int V, int tok, float temperature, float dlogp,
                          float dent, float *out) {
    double T = temperature, H, lse = row_lse(logits, V, T, &H);
    for (int j = 0; j < V; j++) {
        double lp = (double)logits[j] / T - lse, p = exp(lp);
        double g = -(double)dlogp * p;
        if (p > 0 || isnan(p)) g -= (double)dent * p * (lp + H);
        if (j == tok) g += dlogp;
        out[j] = (float)(g / T); /* element j is read before it is written: in place is fine */
    }
}

double ppo_kl_k1(double logp, double logp_ref) {
    return logp - logp_ref;
}

double ppo_kl_k3(double logp, double logp_ref) {
    double d = logp_ref - logp; /* log r */
    return expm1(d) - d;
}

double ppo_kl_k2(double logp, double logp_ref) {
    double d = logp - logp_ref;
    return 0.5 * d * d;
}

double ppo_kl(ppo_kl_est_t est, double logp, double logp_ref) {
    return est == PPO_KL_K2   ? ppo_kl_k2(logp, logp_ref)
           : est == PPO_KL_K3 ? ppo_kl_k3(logp, logp_ref)
                              : ppo_kl_k1(logp, logp_ref);
}

double ppo_kl_dlogp(ppo_kl_est_t est, double logp, double logp_ref) {
    return est == PPO_KL_K2   ? logp - logp_ref
           : est == PPO_KL_K3 ? -expm1(logp_ref - logp) /* 1 - r, accurate near r = 1 */
                              : 1.0;
}

double ppo_rewards(const float *logp, const float *logp_ref, int n, float score, float beta,
                   float *rewards) {
    return ppo_rewards_est(logp, logp_ref, n, score, beta, PPO_KL_K1, rewards);
}

double ppo_rewards_est(const float *logp, const float *logp_ref, int n, float score, float beta,
                       ppo_kl_est_t est, float *rewards) {
    double kl = 0;
    for (int t = 0; t < n; t++) {
        double k = ppo_kl_k1(logp[t], logp_ref[t]);
        kl += k;
        if (est != PPO_KL_K1) k = ppo_kl(est, logp[t], logp_ref[t]);
        rewards[t] = (float)(-(double)beta * k);
    }
    if (n > 0) rewards[n - 1] = (float)((double)rewards[n - 1] + score);
    return kl;
}

void ppo_returns(const float *rewards, int n, float gamma, float *ret) {
    double g = 0;
    for (int t = n - 1; t >= 0; t--) {
        g = (double)rewards[t] + (double)gamma * g;
        ret[t] = (float)g;
    }
}

/* The end (exclusive) of the group that starts at i: a run of equal ids. */
static int group_end(const int *group, int n, int i) {
    int j = i + 1;
    while (j < n && group[j] == group[i]) j++;
    return j;
}

int ppo_adv_grpo(const double *R, const int *group, int n, double eps, double *adv) {
    for (int i = 0; i < n;) {
        int j = group_end(group, n, i), k = j - i;
        if (k < 2)
            return rl_fail(RL_EINVAL, "grpo: prompt group %d has one sample (need --samples >= 2)",
                           group[i]);
        double sum = 0, ss = 0;
        for (int q = i; q < j; q++) sum += R[q];
        double mean = sum / k;
        for (int q = i; q < j; q++) ss += (R[q] - mean) * (R[q] - mean);
        double sd = sqrt(ss / (k - 1)); /* Bessel: torch.std, as TRL and OpenRLHF */
        for (int q = i; q < j; q++) adv[q] = (R[q] - mean) / (sd + eps);
        i = j;
    }
    return 0;
}

int ppo_adv_rloo(const double *R, const int *group, int n, double *adv) {
    for (int i = 0; i < n;) {
        int j = group_end(group, n, i), k = j - i;
        if (k < 2)
            return rl_fail(RL_EINVAL, "rloo: prompt group %d has one sample (need --samples >= 2)",
                           group[i]);
        double sum = 0;
        for (int q = i; q < j; q++) sum += R[q];
        for (int q = i; q < j; q++) adv[q] = R[q] - (sum - R[q]) / (k - 1);
        i = j;
    }
    return 0;
}

void ppo_gae(const float *rewards, const float *values, int n, float gamma, float lambda,
             float *adv, float *ret) {
    double next_v = 0, next_a = 0;
    for (int t = n - 1; t >= 0; t--) {
        double delta = (double)rewards[t] + (double)gamma * next_v - values[t];
        double a = delta + (double)gamma * lambda * next_a;
        adv[t] = (float)a;
        ret[t] = (float)(a + values[t]);
        next_v = values[t];
        next_a = a;
    }
}

int ppo_whiten(float *x, const float *mask, size_t n, int keep_mean) {
    double cnt = 0, sum = 0;
    for (size_t i = 0; i < n; i++)
        if (!mask || mask[i] != 0) {
            if (!isfinite(x[i]))
                return rl_fail(RL_ENONFINITE, "whiten: element %zu is %g", i, x[i]);
            cnt += 1;
            sum += x[i];
        }
    if (cnt == 0) return rl_fail(RL_EINVAL, "whiten: no element selected");
    double mean = sum / cnt, ss = 0;
    for (size_t i = 0; i < n; i++)
        if (!mask || mask[i] != 0) ss += ((double)x[i] - mean) * ((double)x[i] - mean);
    double rstd = 1.0 / sqrt(ss / cnt + 1e-8);
    for (size_t i = 0; i < n; i++) {
        if (mask && mask[i] == 0) {
            x[i] = 0;
            continue;
        }
        double w = ((double)x[i] - mean) * rstd;
        x[i] = (float)(keep_mean ? w + mean : w);
    }
    return 0;
}

/* sum(mask) when denom <= 0 */
static double resolve_denom(const float *mask, size_t n, double denom) {
    if (denom > 0) return denom;
    if (!mask) return (double)n;
    double s = 0;
    for (size_t i = 0; i < n; i++) s += mask[i];
    return s;
}

int ppo_policy_loss(const float *logp, const float *logp_old, const float *adv, const float *mask,
                    size_t n, float eps, double denom, float *dlogp, ppo_pg_stats_t *st) {
    double D = resolve_denom(mask, n, denom);
    if (!(D > 0)) return rl_fail(RL_EINVAL, "policy loss: no token to average over");
    double loss = 0, clipped = 0, akl = 0;
    for (size_t i = 0; i < n; i++) {
        double w = mask ? mask[i] : 1.0;
        if (w == 0) {
            if (dlogp) dlogp[i] = 0;
            continue;
        }
        double lr = (double)logp[i] - logp_old[i], r = exp(lr), A = adv[i];
        double rc = fmin(fmax(r, 1.0 - eps), 1.0 + eps);
        double l1 = -A * r, l2 = -A * rc;
        int clip = l2 > l1;
        loss += w * (clip ? l2 : l1);
        clipped += w * clip;
        akl += w * (expm1(lr) - lr); /* (r - 1) - log r, accurate near r = 1 */
        if (dlogp) dlogp[i] = clip ? 0.0f : (float)(-A * r * w / D);
    }
    if (!isfinite(loss) || !isfinite(akl))
        return rl_fail(RL_ENONFINITE, "policy loss: %g (approx kl %g)", loss, akl);
    if (st) {
        st->loss = loss / D;
        st->clipfrac = clipped / D;
        st->approx_kl = akl / D;
    }
    return 0;
}

int ppo_value_loss(const float *v, const float *v_old, const float *ret, const float *mask,
                   size_t n, float clip, double denom, float *dv, double *loss_out,
                   double *clipfrac) {
    double D = resolve_denom(mask, n, denom);
    if (!(D > 0)) return rl_fail(RL_EINVAL, "value loss: no token to average over");
    double loss = 0, clipped = 0;
    for (size_t i = 0; i < n; i++) {
        double w = mask ? mask[i] : 1.0;
        if (w == 0) {
            if (dv) dv[i] = 0;
            continue;
        }
        double x = v[i], R = ret[i], l1 = (x - R) * (x - R), l2 = l1;
        if (clip > 0) {
            double xc = (double)v_old[i] + fmin(fmax(x - v_old[i], -(double)clip), (double)clip);
            l2 = (xc - R) * (xc - R);
        }
        /* the clipped term can only be the larger one where v was clipped: its gradient is 0 */
        int c = l2 > l1;
        loss += w * 0.5 * (c ? l2 : l1);
        clipped += w * c;
        if (dv) dv[i] = c ? 0.0f : (float)((x - R) * w / D);
    }
    if (!isfinite(loss)) return rl_fail(RL_ENONFINITE, "value loss: %g", loss);
    if (loss_out) *loss_out = loss / D;
    if (clipfrac) *clipfrac = clipped / D;
    return 0;
}

double ppo_entropy_bonus(const float *ent, const float *mask, size_t n, float coef, double denom,
                         float *dent) {
    double D = resolve_denom(mask, n, denom);
    if (!(D > 0)) return NAN;
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double w = mask ? mask[i] : 1.0;
        if (w != 0) s += w * ent[i];
        if (dent) dent[i] = (float)(-(double)coef * w / D);
    }
    return s / D;
}

double ppo_kl_loss(const float *logp, const float *logp_ref, const float *mask, size_t n,
                   ppo_kl_est_t est, float beta, double denom, float *dlogp) {
    double D = resolve_denom(mask, n, denom);
    if (!(D > 0)) return NAN;
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double w = mask ? mask[i] : 1.0;
        if (w == 0) continue;
        s += w * ppo_kl(est, logp[i], logp_ref[i]);
        if (dlogp)
            dlogp[i] = (float)((double)dlogp[i] +
                               (double)beta * w * ppo_kl_dlogp(est, logp[i], logp_ref[i]) / D);
    }
    return s / D;
}

double ppo_explained_variance(const float *pred, const float *target, const float *mask, size_t n) {
    double cnt = 0, sy = 0, sd = 0;
    for (size_t i = 0; i < n; i++)
        if (!mask || mask[i] != 0) {
            cnt += 1;
            sy += target[i];
            sd += (double)target[i] - pred[i];
        }
    if (cnt == 0) return NAN;
    double my = sy / cnt, md = sd / cnt, vy = 0, vd = 0;
    for (size_t i = 0; i < n; i++)
        if (!mask || mask[i] != 0) {
            double y = (double)target[i] - my, d = (double)target[i] - pred[i] - md;
            vy += y * y;
            vd += d * d;
        }
    if (vy == 0) return NAN;
    return 1.0 - vd / vy;
}

/* ---- KL coefficient, running moments, scores --------------------------------------------- */

void ppo_klctl_update(ppo_klctl_t *c, double kl, long n_steps) {
    if (!c->adaptive) return;
    double err = fmin(fmax(kl / c->target - 1.0, -0.2), 0.2);
    c->beta = (float)((double)c->beta * (1.0 + err * (double)n_steps / c->horizon));
}

void ppo_moments_push(ppo_moments_t *s, double x) {
    s->n += 1;
    double d = x - s->mean;
    s->mean += d / s->n;
    s->m2 += d * (x - s->mean);
}

void ppo_moments_merge(ppo_moments_t *a, const ppo_moments_t *b) {
    double n = a->n + b->n;
    if (b->n == 0) return;
    if (a->n == 0) {
        *a = *b;
        return;
    }
    double d = b->mean - a->mean;
    a->mean += d * b->n / n;
    a->m2 += b->m2 + d * d * a->n * b->n / n;
    a->n = n;
}

double ppo_moments_std(const ppo_moments_t *s) {
    return s->n < 2 ? 0.0 : sqrt(s->m2 / (s->n - 1));
}

float ppo_score_transform(float score, const ppo_moments_t *s, ppo_score_norm_t mode, float clip) {
    double x = score, sd = s->n < 2 ? 1.0 : ppo_moments_std(s) + 1e-8;
    if (mode == PPO_SCORE_SCALE) x /= sd;
    if (mode == PPO_SCORE_NORM) x = (x - s->mean) / sd;
    if (clip > 0) x = fmin(fmax(x, -(double)clip), (double)clip);
    return (float)x;
}

/* ---- configuration and learner ----------------------------------------------------------- */

int ppo_learner_init(ppo_learner_t *l, gpt_t *policy, gpt_t *value, const ppo_config_t *cfg) {
    memset(l, 0, sizeof *l);
    int rc = ppo_config_check(cfg);
    if (rc < 0) return rc;
    if (ppo_adv_critic_free(cfg->adv_estimator)) value = NULL; /* no critic: not trained */
    if (!policy || (!value && !ppo_adv_critic_free(cfg->adv_estimator)))
        return rl_fail(RL_EINVAL, "ppo: missing policy or value model");
    if (value && !value->cfg.scalar_head)
        return rl_fail(RL_EINVAL, "ppo: the value model has no head");
    if (value && value->cfg.vocab_size != policy->cfg.vocab_size)
        return rl_fail(RL_EINVAL, "ppo: vocabularies differ (policy %d, value %d)",
                       policy->cfg.vocab_size, value->cfg.vocab_size);
    if (cfg->vocab_limit > policy->cfg.vocab_size)
        return rl_fail(RL_EINVAL, "ppo: vocab_limit %d above the vocabulary (%d)", cfg->vocab_limit,
                       policy->cfg.vocab_size);
    l->cfg = *cfg;
    l->policy = policy;
    l->value = value;
    if ((rc = gpt_grads_alloc(policy)) < 0 || (value && (rc = gpt_grads_alloc(value)) < 0))
        goto fail;
    rc = adamw_init(&l->opt_policy, policy->num_params, 0.9f, 0.95f, 1e-8f, cfg->weight_decay);
    if (rc < 0) goto fail;
    if (value) {
        rc = adamw_init(&l->opt_value, value->num_params, 0.9f, 0.95f, 1e-8f, cfg->weight_decay);
        if (rc < 0) goto fail;
        l->n_groups_value = gpt_adamw_groups(value, l->groups_value);
    }
    l->n_groups_policy = gpt_adamw_groups(policy, l->groups_policy);
    l->kl.beta = cfg->kl_coef;
    l->kl.adaptive = cfg->kl_adaptive;
    l->kl.target = cfg->kl_target;
    l->kl.horizon = cfg->kl_horizon;
    return 0;
fail:
    ppo_learner_free(l);
    return rc;
}

void ppo_learner_free(ppo_learner_t *l) {
    adamw_free(&l->opt_policy);
    adamw_free(&l->opt_value);
    gtree_free(&l->tree[0]);
    gtree_free(&l->tree[1]);
}

/* ---- passes over rollouts ---------------------------------------------------------------- */

/* Model input length of a rollout: the prompt and every completion token but the last. */
static int seq_len(const ppo_seq_t *s) {
    return s->prompt_len + s->completion_len - 1;
}

static int seqs_check(const ppo_seq_t *seqs, int n, const gpt_t *m, int vocab_limit) {
    if (n < 1 || !seqs) return rl_fail(RL_EINVAL, "ppo: no rollouts");
    int V = vocab_limit > 0 ? vocab_limit : m->cfg.vocab_size;
    for (int i = 0; i < n; i++) {
        const ppo_seq_t *s = &seqs[i];
        if (s->prompt_len < 1 || s->completion_len < 1 || !s->prompt || !s->completion)
            return rl_fail(RL_EINVAL, "ppo: rollout %d: prompt of %d and completion of %d tokens",
                           i, s->prompt_len, s->completion_len);
        if ((long)s->prompt_len + s->completion_len - 1 > m->cfg.n_positions)
            return rl_fail(RL_EINVAL,
                           "ppo: rollout %d: %d prompt + %d completion tokens need %d positions, "
                           "the model has %d",
                           i, s->prompt_len, s->completion_len,
                           s->prompt_len + s->completion_len - 1, m->cfg.n_positions);
        for (int t = 0; t < s->completion_len; t++)
            if (s->completion[t] < 0 || s->completion[t] >= V)
                return rl_fail(RL_EINVAL,
                               "ppo: rollout %d: completion token %d is %d, not in [0,%d)", i, t,
                               s->completion[t], V);
    }
    return 0;
}

/*
 * Packs rollouts seqs[idx[0..cnt)] right-padded (with id 0) into inputs (cnt, T) and lists
 * the action positions, sequence after sequence: pos[k] = b*T + P-1+t, tok[k] = c[t]. Returns
 * T; *nk gets the number of actions.
 */
static int pack(const ppo_seq_t *seqs, const int *idx, int cnt, int *inputs, int *pos, int *tok,
                int *nk) {
    int T = 1, k = 0;
    for (int b = 0; b < cnt; b++) {
        int L = seq_len(&seqs[idx[b]]);
        if (L > T) T = L;
    }
    for (int b = 0; b < cnt; b++) {
        const ppo_seq_t *s = &seqs[idx[b]];
        int *row = inputs + (size_t)b * T, P = s->prompt_len, L = seq_len(s);
        memcpy(row, s->prompt, (size_t)P * sizeof(int));
        memcpy(row + P, s->completion, (size_t)(L - P) * sizeof(int));
        for (int j = L; j < T; j++) row[j] = 0;
        for (int t = 0; t < s->completion_len; t++, k++) {
            pos[k] = b * T + P - 1 + t;
            tok[k] = s->completion[t];
        }
    }
    *nk = k;
    return T;
}

/* Scratch for packed passes over up to `cap` sequences. */
typedef struct {
    int *inputs, *pos, *tok, *idx;
    double *ent; /* per action */
} pass_buf_t;

static void pass_buf_free(pass_buf_t *b) {
    free(b->inputs), free(b->pos), free(b->tok), free(b->idx), free(b->ent);
    memset(b, 0, sizeof *b);
}

static int pass_buf_init(pass_buf_t *b, const ppo_seq_t *seqs, int n, int cap, int n_positions) {
    memset(b, 0, sizeof *b);
    size_t ntok = 0;
    for (int i = 0; i < n; i++) ntok += (size_t)seqs[i].completion_len;
    b->inputs = malloc((size_t)cap * n_positions * sizeof(int));
    b->pos = malloc(ntok * sizeof(int));
    b->tok = malloc(ntok * sizeof(int));
    b->idx = malloc((size_t)n * sizeof(int));
    b->ent = malloc(ntok * sizeof(double));
    if (!b->inputs || !b->pos || !b->tok || !b->idx || !b->ent) {
        pass_buf_free(b);
        return rl_fail(RL_ENOMEM, "ppo: pass buffers");
    }
    return 0;
}

/* logprobs (and entropies if ent) of the nk actions of the last forward */
static void read_logprobs(const gpt_t *m, const int *pos, const int *tok, int nk, int Vl, float T,
                          float *lp, double *ent) {
    int V = m->cfg.vocab_size;
#pragma omp parallel for schedule(static) if ((long)nk * Vl >= PPO_PAR_MIN)
    for (int k = 0; k < nk; k++) {
        double h;
        lp[k] = (float)ppo_logprob_temp(m->acts.logits + (size_t)pos[k] * V, Vl, tok[k], T,
                                        ent ? &h : NULL);
        if (ent) ent[k] = h;
    }
}

static int seq_pass(gpt_t *m, const ppo_seq_t *seqs, int n, int batch, int vocab_limit, int logits,
                    float temp, float *out) {
    int rc = seqs_check(seqs, n, m, vocab_limit);
    if (rc < 0) return rc;
    if (batch < 1) batch = n;
    int Vl = vocab_limit > 0 ? vocab_limit : m->cfg.vocab_size;
    pass_buf_t b;
    if ((rc = pass_buf_init(&b, seqs, n, batch < n ? batch : n, m->cfg.n_positions)) < 0) return rc;
    for (int i = 0; i < n; i++) b.idx[i] = i;
    size_t off = 0;
    for (int i0 = 0; i0 < n && rc == 0; i0 += batch) {
        int cnt = n - i0 < batch ? n - i0 : batch, nk;
        int T = pack(seqs, b.idx + i0, cnt, b.inputs, b.pos, b.tok, &nk);
        rc = gpt_forward(m, b.inputs, cnt, T, logits ? GPT_FWD_LOGITS : 0);
        if (rc < 0) break;
        if (logits) {
            read_logprobs(m, b.pos, b.tok, nk, Vl, temp, out + off, NULL);
            for (int k = 0; k < nk; k++)
                if (!isfinite(out[off + k])) {
                    rc = rl_fail(RL_ENONFINITE, "ppo: logprob of rollout token %zu is %g", off + k,
                                 out[off + k]);
                    break;
                }
        } else {
            rc = gpt_head_forward(m, b.pos, nk, out + off);
        }
        off += (size_t)nk;
    }
    pass_buf_free(&b);
    return rc;
}

int ppo_seq_logprobs(gpt_t *m, const ppo_seq_t *seqs, int n, int batch, int vocab_limit,
                     float *out) {
    return ppo_seq_logprobs_temp(m, seqs, n, batch, vocab_limit, 1.0f, out);
}

int ppo_seq_logprobs_temp(gpt_t *m, const ppo_seq_t *seqs, int n, int batch, int vocab_limit,
                          float temperature, float *out) {
    if (vocab_limit > m->cfg.vocab_size)
        return rl_fail(RL_EINVAL, "ppo: vocab_limit %d above the vocabulary (%d)", vocab_limit,
                       m->cfg.vocab_size);
    if (!(temperature > 0) || !isfinite(temperature))
        return rl_fail(RL_EINVAL, "ppo: temperature %g (logprobs need one > 0)", temperature);
    return seq_pass(m, seqs, n, batch, vocab_limit, 1, temperature, out);
}

int ppo_seq_values(gpt_t *m, const ppo_seq_t *seqs, int n, int batch, float *out) {
    if (!m->cfg.scalar_head) return rl_fail(RL_EINVAL, "ppo: values need a scalar head");
    return seq_pass(m, seqs, n, batch, 0, 0, 1.0f, out);
}

/* ---- the update ------------------------------------------------------------------------ */

/* Per-token arrays of the rollout batch (flat, sequence after sequence) and step scratch. */
typedef struct {
    const ppo_seq_t *seqs;
    size_t *off;                             /* (n+1) offset of each sequence's first token */
    float *lp_old, *v_old, *adv, *ret, *rew; /* (ntok) */
    float *ref, *w; /* (ntok) reference logprobs; per-token weights (1 / length: loss_agg
                       sequence; unused with token) */
    /* gathered for one minibatch: (ntok) each */
    float *g_lp_old, *g_adv, *g_v_old, *g_ret, *g_ref, *g_w;
    ppo_seq_t *g_seqs; /* (n) the minibatch's rollouts, in its order */
    pass_buf_t pb;
} upd_t;

static void upd_free(upd_t *u) {
    free(u->off), free(u->lp_old), free(u->v_old), free(u->adv), free(u->ret), free(u->rew);
    free(u->g_lp_old), free(u->g_adv), free(u->g_v_old), free(u->g_ret);
    free(u->ref), free(u->w), free(u->g_ref), free(u->g_w), free(u->g_seqs);
    pass_buf_free(&u->pb);
}

/* Gathers the per-token arrays of seqs[idx[0..cnt)] into the g_* buffers (order of pack()). */
static void gather(upd_t *u, const int *idx, int cnt) {
    size_t k = 0;
    for (int b = 0; b < cnt; b++) {
        size_t o = u->off[idx[b]], len = u->off[idx[b] + 1] - o;
        memcpy(u->g_lp_old + k, u->lp_old + o, len * sizeof(float));
        memcpy(u->g_adv + k, u->adv + o, len * sizeof(float));
        memcpy(u->g_v_old + k, u->v_old + o, len * sizeof(float));
        memcpy(u->g_ret + k, u->ret + o, len * sizeof(float));
        memcpy(u->g_ref + k, u->ref + o, len * sizeof(float));
        memcpy(u->g_w + k, u->w + o, len * sizeof(float));
        u->g_seqs[b] = u->seqs[idx[b]];
        k += len;
    }
}

typedef struct {
    double pg_loss, clipfrac, approx_kl, entropy, v_loss, v_clipfrac, gn_policy, gn_value;
} mb_stats_t;

/* Clips m's gradient to max_norm (its norm is added to *gn) and takes one AdamW step. */
static int clip_and_step(gpt_t *m, adamw_t *opt, const adamw_group_t *groups, int n_groups,
                         float lr, float max_norm, const char *what, double *gn) {
    double norm;
    float scale;
    int rc = adamw_clip_scale(m->grads_mem, m->num_params, max_norm, &norm, &scale);
    if (rc < 0) return rl_fail_ctx(rc, "%s", what);
    *gn += norm;
    return adamw_step_scaled(opt, m->params_mem, m->grads_mem, groups, n_groups, lr, scale);
}

/* The leaves of one ppo_grad_leaves call: the rows, their token offsets, scratch. */
typedef struct {
    gpt_t *m;
    int value, nb;
    const ppo_config_t *c;
    const ppo_rows_t *r;
    size_t *off; /* (n+1) each row's first token */
    int *idx;    /* (n) 0..n-1 */
    pass_buf_t pb;
    float *lp, *ent, *dlp, *dent, *v, *dv; /* (tokens) */
} leaves_t;

/* The per-token weights of rows' losses from token k0: NULL with loss_agg token (every token
 * weighs 1 / denom), 1 / length with sequence. */
static const float *agg_mask(const leaves_t *x, size_t k0) {
    return x->c->loss_agg == PPO_AGG_SEQUENCE ? x->r->w + k0 : NULL;
}

/* The policy's gradient of rows [r0, r1) (microbatches of them) added to m's arena. */
static int policy_rows(leaves_t *x, int r0, int r1, double *stats) {
    gpt_t *m = x->m;
    const ppo_config_t *c = x->c;
    const ppo_rows_t *r = x->r;
    int V = m->cfg.vocab_size, Vl = c->vocab_limit > 0 ? c->vocab_limit : V;
    int cnt = r1 - r0, micro = c->microbatch > 0 ? c->microbatch : cnt, rc = 0;
    size_t k0 = x->off[r0];
    for (int j0 = 0; j0 < cnt; j0 += micro) {
        int jc = cnt - j0 < micro ? cnt - j0 : micro, nk;
        int T = pack(r->seqs, x->idx + r0 + j0, jc, x->pb.inputs, x->pb.pos, x->pb.tok, &nk);
        if ((rc = gpt_forward(m, x->pb.inputs, jc, T, GPT_FWD_LOGITS)) < 0) return rc;
        float *lp = x->lp + k0, *dlp = x->dlp + k0, *dent = x->dent + k0, *ent = x->ent + k0;
        read_logprobs(m, x->pb.pos, x->pb.tok, nk, Vl, c->temperature, lp, x->pb.ent);
        for (int k = 0; k < nk; k++) ent[k] = (float)x->pb.ent[k];
        ppo_pg_stats_t ps = {0};
        const float *mask = agg_mask(x, k0);
        rc = ppo_policy_loss(lp, r->lp_old + k0, r->adv + k0, mask, (size_t)nk, c->clip_eps,
                             r->denom, dlp, &ps);
        if (rc < 0) return rc;
        double me = ppo_entropy_bonus(ent, mask, (size_t)nk, c->ent_coef, r->denom, dent);
        if (!isfinite(me)) return rl_fail(RL_ENONFINITE, "policy: entropy %g", me);
        if (c->kl_in == PPO_KL_IN_LOSS) {
            double kl = ppo_kl_loss(lp, r->ref + k0, mask, (size_t)nk, c->kl_estimator, r->beta,
                                    r->denom, dlp);
            if (!isfinite(kl)) return rl_fail(RL_ENONFINITE, "policy: KL loss %g", kl);
        }
        stats[PPO_STAT_PG_LOSS] += ps.loss;
        stats[PPO_STAT_CLIPFRAC] += ps.clipfrac;
        stats[PPO_STAT_APPROX_KL] += ps.approx_kl;
        stats[PPO_STAT_ENTROPY] += me;
        /* dlogits: zero on every row, then the action rows (disjoint) in parallel */
        float *logits = m->acts.logits;
        int N = jc * T;
        unsigned char *used = calloc((size_t)N, 1);
        if (!used) return rl_fail(RL_ENOMEM, "policy: rows");
        for (int k = 0; k < nk; k++) used[x->pb.pos[k]] = 1;
        for (int q = 0; q < N; q++)
            if (!used[q]) memset(logits + (size_t)q * V, 0, (size_t)V * sizeof(float));
        free(used);
#pragma omp parallel for schedule(static) if ((long)nk * Vl >= PPO_PAR_MIN)
        for (int k = 0; k < nk; k++) {
            float *row = logits + (size_t)x->pb.pos[k] * V;
            ppo_dlogits_row_temp(row, Vl, x->pb.tok[k], c->temperature, dlp[k], dent[k], row);
            for (int j = Vl; j < V; j++) row[j] = 0;
        }
        if ((rc = gpt_dlogits_set(m)) < 0 || (rc = gpt_backward(m, 1, NULL)) < 0) return rc;
        k0 += (size_t)nk;
    }
    return 0;
}

/* The value model's gradient of rows [r0, r1) (microbatches of them) added to m's arena. */
static int value_rows(leaves_t *x, int r0, int r1, double *stats) {
    gpt_t *m = x->m;
    const ppo_config_t *c = x->c;
    const ppo_rows_t *r = x->r;
    int cnt = r1 - r0, micro = c->microbatch > 0 ? c->microbatch : cnt, rc = 0;
    size_t k0 = x->off[r0];
    for (int j0 = 0; j0 < cnt; j0 += micro) {
        int jc = cnt - j0 < micro ? cnt - j0 : micro, nk;
        int T = pack(r->seqs, x->idx + r0 + j0, jc, x->pb.inputs, x->pb.pos, x->pb.tok, &nk);
        if ((rc = gpt_forward(m, x->pb.inputs, jc, T, 0)) < 0) return rc;
        float *v = x->v + k0, *dv = x->dv + k0;
        if ((rc = gpt_head_forward(m, x->pb.pos, nk, v)) < 0) return rc;
        double loss = 0, cf = 0;
        rc = ppo_value_loss(v, r->v_old + k0, r->ret + k0, agg_mask(x, k0), (size_t)nk,
                            c->value_clip, r->denom, dv, &loss, &cf);
        if (rc < 0) return rc;
        stats[PPO_STAT_V_LOSS] += loss;
        stats[PPO_STAT_V_CLIPFRAC] += cf;
        if ((rc = gpt_backward(m, 0, dv)) < 0) return rc;
        k0 += (size_t)nk;
    }
    return 0;
}

/* gtree_leaf_fn: block j from a zeroed arena. */
static int ppo_leaf(void *ctx, int j, double *stats, int *empty) {
    leaves_t *x = ctx;
    int r0, r1;
    gtree_block(x->r->n, x->nb, j, &r0, &r1);
    *empty = 0; /* every rollout has a completion token */
    gpt_zero_grad(x->m);
    return x->value ? value_rows(x, r0, r1, stats) : policy_rows(x, r0, r1, stats);
}

int ppo_grad_leaves(gtree_t *g, gpt_t *m, int value, const ppo_config_t *c, const ppo_rows_t *r,
                    int nb, int j0, int j1) {
    if (r->n < 1 || nb < 1 || nb > r->n || j0 < 0 || j1 > nb || j0 > j1)
        return rl_fail(RL_EINVAL, "ppo: blocks %d..%d of %d over %d rows", j0, j1, nb, r->n);
    if (j0 == j1) return 0;
    leaves_t x = {m, value, nb, c, r, NULL, NULL, {0}, NULL, NULL, NULL, NULL, NULL, NULL};
    int rc = seqs_check(r->seqs, r->n, m, value ? 0 : c->vocab_limit);
    if (rc < 0) return rc;
    if ((rc = gpt_grads_alloc(m)) < 0) return rc;
    x.off = malloc((size_t)(r->n + 1) * sizeof(size_t));
    x.idx = malloc((size_t)r->n * sizeof(int));
    if (!x.off || !x.idx) {
        rc = rl_fail(RL_ENOMEM, "ppo: row buffers");
        goto done;
    }
    x.off[0] = 0;
    for (int i = 0; i < r->n; i++) {
        x.off[i + 1] = x.off[i] + (size_t)r->seqs[i].completion_len;
        x.idx[i] = i;
    }
    size_t fb = x.off[r->n] * sizeof(float);
    float **bufs[] = {&x.lp, &x.ent, &x.dlp, &x.dent, &x.v, &x.dv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (!(*bufs[i] = malloc(fb))) {
            rc = rl_fail(RL_ENOMEM, "ppo: token buffers");
            goto done;
        }
    int cap = c->microbatch > 0 && c->microbatch < r->n ? c->microbatch : r->n;
    if ((rc = pass_buf_init(&x.pb, r->seqs, r->n, cap, m->cfg.n_positions)) < 0) goto done;
    rc = gtree_leaves(g, j0, j1, ppo_leaf, &x);
done:
    pass_buf_free(&x.pb);
    free(x.off), free(x.idx), free(x.lp), free(x.ent), free(x.dlp), free(x.dent), free(x.v);
    free(x.dv);
    return rc;
}

/* The minibatch's gradient in this process: every block, reduced in the tree. */
static int grad_local(ppo_learner_t *l, gpt_t *m, int value, const ppo_rows_t *r, double *stats) {
    int nb = gtree_blocks(l->cfg.grad_blocks > 0 ? l->cfg.grad_blocks : 1, r->n), empty, a, b;
    gtree_t *g = &l->tree[value != 0];
    gtree_reset(g, nb, m->grads_mem, m->num_params);
    int rc = ppo_grad_leaves(g, m, value, &l->cfg, r, nb, 0, nb);
    return rc < 0 ? rc : gtree_take(g, stats, &empty, &a, &b);
}

/* One step of the policy (value = 0) or the value model on the minibatch seqs[idx[0..cnt)],
 * gathered (gather) into the g_* arrays: its gradient (here, or where grad_fn computes it),
 * clipped, AdamW. */
static int model_step(ppo_learner_t *l, upd_t *u, int value, int cnt, double denom,
                      mb_stats_t *ms) {
    gpt_t *m = value ? l->value : l->policy;
    const ppo_config_t *c = &l->cfg;
    ppo_rows_t r = {u->g_seqs, cnt,      u->g_lp_old, u->g_adv, u->g_v_old,
                    u->g_ret,  u->g_ref, u->g_w,      denom,    l->kl.beta};
    double st[GTREE_NSTAT] = {0};
    int rc =
        l->grad_fn ? l->grad_fn(l->grad_ctx, m, value, c, &r, st) : grad_local(l, m, value, &r, st);
    if (rc < 0) return rc;
    if (value) {
        ms->v_loss += st[PPO_STAT_V_LOSS];
        ms->v_clipfrac += st[PPO_STAT_V_CLIPFRAC];
        return clip_and_step(m, &l->opt_value, l->groups_value, l->n_groups_value, c->lr_value,
                             c->max_grad_norm, "value gradient", &ms->gn_value);
    }
    ms->pg_loss += st[PPO_STAT_PG_LOSS];
    ms->clipfrac += st[PPO_STAT_CLIPFRAC];
    ms->approx_kl += st[PPO_STAT_APPROX_KL];
    ms->entropy += st[PPO_STAT_ENTROPY];
    return clip_and_step(m, &l->opt_policy, l->groups_policy, l->n_groups_policy, c->lr_policy,
                         c->max_grad_norm, "policy gradient", &ms->gn_policy);
}

/* mean and population std of x[0..n) */
static void mean_std(const double *x, size_t n, double *mean, double *sd) {
    double s = 0, ss = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    double m = n ? s / (double)n : 0;
    for (size_t i = 0; i < n; i++) ss += (x[i] - m) * (x[i] - m);
    *mean = m;
    *sd = n ? sqrt(ss / (double)n) : 0;
}

static int check_finite(const float *x, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return rl_fail(RL_ENONFINITE, "ppo: %s %zu is %g", what, i, x[i]);
    return 0;
}

/* GRPO's epsilon in (R - mean) / (std + eps): TRL's GRPOTrainer's 1e-4. */
#define PPO_GRPO_EPS 1e-4

long ppo_rollout_version(int overlap, long i) {
    return overlap == PPO_OVERLAP_ONE_STEP_OFF ? (i > 0 ? i - 1 : 0) : i;
}

int ppo_adv_critic_free(int adv_estimator) {
    return adv_estimator != PPO_ADV_GAE;
}

/* The advantages (u->adv; with GAE also the value targets u->ret) of the batch from the
 * per-token rewards u->rew, R[i] the total reward of rollout i. */
static int advantages(const ppo_learner_t *l, upd_t *u, int n, const double *R) {
    const ppo_config_t *c = &l->cfg;
    const ppo_seq_t *seqs = u->seqs;
    size_t ntok = u->off[n];
    if (c->adv_estimator == PPO_ADV_GAE) {
        for (int i = 0; i < n; i++) {
            size_t o = u->off[i];
            ppo_gae(u->rew + o, u->v_old + o, seqs[i].completion_len, c->gamma, c->lambda,
                    u->adv + o, u->ret + o);
        }
        return 0;
    }
    if (c->adv_estimator == PPO_ADV_REINFORCE_PP) {
        for (int i = 0; i < n; i++) {
            size_t o = u->off[i];
            ppo_returns(u->rew + o, seqs[i].completion_len, c->gamma, u->adv + o);
        }
        memcpy(u->ret, u->adv, ntok * sizeof(float));
        return 0;
    }
    int *group = malloc((size_t)n * sizeof(int));
    double *A = malloc((size_t)n * sizeof(double));
    int rc = group && A ? 0 : rl_fail(RL_ENOMEM, "ppo: group buffers");
    for (int i = 0; rc == 0 && i < n; i++) group[i] = seqs[i].group;
    if (rc == 0)
        rc = c->adv_estimator == PPO_ADV_GRPO ? ppo_adv_grpo(R, group, n, PPO_GRPO_EPS, A)
                                              : ppo_adv_rloo(R, group, n, A);
    for (int i = 0; rc == 0 && i < n; i++)
        for (size_t k = u->off[i]; k < u->off[i + 1]; k++) u->adv[k] = u->ret[k] = (float)A[i];
    free(group);
    free(A);
    return rc;
}

int ppo_update(ppo_learner_t *l, const ppo_seq_t *seqs, int n, ppo_stats_t *st) {
    const ppo_config_t *c = &l->cfg;
    int critic = !ppo_adv_critic_free(c->adv_estimator);
    int rc = seqs_check(seqs, n, l->policy, c->vocab_limit);
    if (rc < 0) return rc;
    if (critic && !l->value) return rl_fail(RL_EINVAL, "ppo: gae needs a value model");
    if (critic && seqs_check(seqs, n, l->value, 0) < 0)
        return rl_fail_ctx(RL_EINVAL, "value model");
    for (int i = 0; i < n; i++) {
        if (!seqs[i].ref_logprobs || (!seqs[i].logprobs && !c->recompute_logprobs))
            return rl_fail(RL_EINVAL, "ppo: rollout %d: missing %s logprobs", i,
                           seqs[i].ref_logprobs ? "old" : "reference");
        if (!isfinite(seqs[i].score))
            return rl_fail(RL_ENONFINITE, "ppo: rollout %d: score %g", i, seqs[i].score);
    }
    ppo_stats_t s = {0};
    upd_t u = {0};
    double *seq_tmp = NULL, *seq_tmp2 = NULL;
    u.seqs = seqs;
    u.off = malloc((size_t)(n + 1) * sizeof(size_t));
    if (!u.off) return rl_fail(RL_ENOMEM, "ppo: offsets");
    u.off[0] = 0;
    for (int i = 0; i < n; i++) u.off[i + 1] = u.off[i] + (size_t)seqs[i].completion_len;
    size_t ntok = u.off[n], fb = ntok * sizeof(float);
    int mb = c->minibatch < n ? c->minibatch : n;
    int fwd = c->forward_batch > 0 ? c->forward_batch : mb;
    float **bufs[] = {&u.lp_old,  &u.v_old, &u.adv, &u.ret, &u.rew,   &u.g_lp_old, &u.g_adv,
                      &u.g_v_old, &u.g_ret, &u.ref, &u.w,   &u.g_ref, &u.g_w};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (!(*bufs[i] = malloc(fb))) {
            rc = rl_fail(RL_ENOMEM, "ppo: %zu token buffers", ntok);
            goto done;
        }
    if (!(u.g_seqs = malloc((size_t)n * sizeof *u.g_seqs))) {
        rc = rl_fail(RL_ENOMEM, "ppo: %d rollouts", n);
        goto done;
    }
    seq_tmp = malloc((size_t)n * sizeof(double));
    seq_tmp2 = malloc((size_t)n * sizeof(double));
    if (!seq_tmp || !seq_tmp2) {
        rc = rl_fail(RL_ENOMEM, "ppo: sequence buffers");
        goto done;
    }
    if ((rc = pass_buf_init(&u.pb, seqs, n, mb, l->policy->cfg.n_positions)) < 0) goto done;

    /* old logprobs and values */
    if (c->recompute_logprobs) {
        rc = ppo_seq_logprobs_temp(l->policy, seqs, n, fwd, c->vocab_limit, c->temperature,
                                   u.lp_old);
        if (rc < 0) goto done;
    } else {
        for (int i = 0; i < n; i++)
            memcpy(u.lp_old + u.off[i], seqs[i].logprobs,
                   (size_t)seqs[i].completion_len * sizeof(float));
    }
    if ((rc = check_finite(u.lp_old, ntok, "old logprob")) < 0) goto done;
    for (int i = 0; i < n; i++) {
        if ((rc = check_finite(seqs[i].ref_logprobs, (size_t)seqs[i].completion_len,
                               "reference logprob")) < 0)
            goto done;
        memcpy(u.ref + u.off[i], seqs[i].ref_logprobs,
               (size_t)seqs[i].completion_len * sizeof(float));
        for (size_t k = u.off[i]; k < u.off[i + 1]; k++)
            u.w[k] = (float)(1.0 / seqs[i].completion_len);
    }
    if (critic) {
        if ((rc = ppo_seq_values(l->value, seqs, n, fwd, u.v_old)) < 0) goto done;
    } else {
        memset(u.v_old, 0, fb);
    }

    /* scores, rewards, advantages */
    ppo_moments_t mom = l->score_stats;
    for (int i = 0; i < n; i++) ppo_moments_push(&mom, seqs[i].score);
    s.beta = l->kl.beta;
    /* the KL penalty in the rewards, or (kl_in = loss) none there: the score alone (k1 times 0,
     * finite where k3 of a far-off token might not be) */
    int in_reward = c->kl_in == PPO_KL_IN_REWARD;
    float beta_r = in_reward ? l->kl.beta : 0.0f;
    ppo_kl_est_t est_r = in_reward ? (ppo_kl_est_t)c->kl_estimator : PPO_KL_K1;
    double k1 = 0, k3 = 0;
    for (int i = 0; i < n; i++) {
        const ppo_seq_t *q = &seqs[i];
        size_t o = u.off[i];
        float sc = ppo_score_transform(q->score, &mom, c->score_norm, c->score_clip);
        /* TRL's missing_eos_penalty, on the score as it enters the rewards: before the
         * normalisation it would be divided by the running std, which the batch's raw scores
         * alone may make tiny (all equal) */
        if (q->truncated && c->missing_eos_penalty != 0)
            sc = (float)((double)sc - c->missing_eos_penalty);
        k1 += ppo_rewards_est(u.lp_old + o, q->ref_logprobs, q->completion_len, sc, beta_r, est_r,
                              u.rew + o);
        double tot = 0;
        for (int t = 0; t < q->completion_len; t++) {
            k3 += ppo_kl_k3(u.lp_old[o + t], q->ref_logprobs[t]);
            tot += u.rew[o + t];
        }
        seq_tmp[i] = tot;
        seq_tmp2[i] = q->score;
    }
    if ((rc = advantages(l, &u, n, seq_tmp)) < 0) goto done;
    if ((rc = check_finite(u.rew, ntok, "reward")) < 0) goto done;
    if ((rc = check_finite(u.adv, ntok, "advantage")) < 0) goto done;
    s.kl_k1 = k1 / n;
    s.kl_k3 = k3 / n;
    mean_std(seq_tmp, (size_t)n, &s.reward_mean, &s.reward_std);
    mean_std(seq_tmp2, (size_t)n, &s.score_mean, &s.score_std);
    s.explained_var = critic ? ppo_explained_variance(u.v_old, u.ret, NULL, ntok) : NAN;
    {
        double sum = 0, ss = 0;
        for (size_t k = 0; k < ntok; k++) sum += u.adv[k];
        s.adv_mean = sum / (double)ntok;
        for (size_t k = 0; k < ntok; k++) ss += (u.adv[k] - s.adv_mean) * (u.adv[k] - s.adv_mean);
        s.adv_std = sqrt(ss / (double)ntok);
    }
    /* GAE: whitening as set; REINFORCE++: always, over the whole batch (its baseline); GRPO and
     * RLOO: their advantages are already centred per prompt */
    int whiten =
        c->adv_estimator == PPO_ADV_GAE ? c->whiten : c->adv_estimator == PPO_ADV_REINFORCE_PP;
    int keep = c->adv_estimator == PPO_ADV_GAE && c->whiten_keep_mean;
    if (whiten && (rc = ppo_whiten(u.adv, NULL, ntok, keep)) < 0) goto done;

    /* epochs x shuffled minibatches */
    mb_stats_t ms = {0};
    int *idx = u.pb.idx;
    for (int i = 0; i < n; i++) idx[i] = i;
    for (int e = 0; e < c->epochs; e++) {
        for (int i = n - 1; i > 0; i--) { /* Fisher-Yates from the counter-based generator */
            double r = rng_uniform53(c->seed, (uint64_t)l->iteration,
                                     (uint64_t)e * (uint64_t)n + (uint64_t)i);
            int j = (int)(r * (i + 1));
            if (j > i) j = i;
            int tmp = idx[i];
            idx[i] = idx[j];
            idx[j] = tmp;
        }
        for (int i0 = 0; i0 < n; i0 += mb) {
            int cnt = n - i0 < mb ? n - i0 : mb;
            gather(&u, idx + i0, cnt);
            double denom = 0;
            if (c->loss_agg == PPO_AGG_SEQUENCE)
                denom = cnt;
            else
                for (int b = 0; b < cnt; b++) denom += seqs[idx[i0 + b]].completion_len;
            if ((rc = model_step(l, &u, 0, cnt, denom, &ms)) < 0) {
                rl_fail_ctx(rc, "ppo iteration %ld epoch %d: policy step", l->iteration, e);
                goto done;
            }
            if (critic && (rc = model_step(l, &u, 1, cnt, denom, &ms)) < 0) {
                rl_fail_ctx(rc, "ppo iteration %ld epoch %d: value step", l->iteration, e);
                goto done;
            }
            s.n_steps++;
        }
    }
    double ns = (double)s.n_steps;
    s.policy_loss = ms.pg_loss / ns;
    s.clipfrac = ms.clipfrac / ns;
    s.approx_kl = ms.approx_kl / ns;
    s.entropy = ms.entropy / ns;
    s.value_loss = critic ? ms.v_loss / ns : NAN;
    s.value_clipfrac = critic ? ms.v_clipfrac / ns : NAN;
    s.grad_norm_policy = ms.gn_policy / ns;
    s.grad_norm_value = critic ? ms.gn_value / ns : NAN;
    s.n_seqs = n;
    s.n_tokens = (long)ntok;

    /* commit the persistent state */
    l->score_stats = mom;
    ppo_klctl_update(&l->kl, s.kl_k1, n);
    l->iteration++;
    if (st) *st = s;
done:
    free(seq_tmp);
    free(seq_tmp2);
    upd_free(&u);
    return rc;
}

/* ---- the settings table: defaults, checks, JSON and text ---------------------------------- */

static const char *const norm_names[] = {"raw", "scale", "norm", NULL};
static const char *const adv_names[] = {"gae", "grpo", "rloo", "reinforce_pp", NULL};
static const char *const kl_in_names[] = {"reward", "loss", NULL};
static const char *const kl_est_names[] = {"k1", "k2", "k3", NULL};
static const char *const agg_names[] = {"token", "sequence", NULL};
static const char *const overlap_names[] = {"off", "one_step_off", NULL};

#define PS(n, t, lo, hi, def, help)                                                                \
    { #n, PPO_SETTING_##t, lo, hi, def, help, offsetof(ppo_config_t, n), 0, NULL }
/* an enum setting: names, NULL-terminated, of the values 0..count-1 */
#define PE(n, names, count, def, help)                                                             \
    { #n, PPO_SETTING_ENUM, 0, (count)-1, def, help, offsetof(ppo_config_t, n), 0, names }
const ppo_setting_t ppo_settings[] = {
    PS(gamma, FLOAT, 0, 1, "1", "discount"),
    PS(lambda, FLOAT, 0, 1, "0.95", "GAE lambda"),
    PS(clip_eps, FLOAT, 0, 1, "0.2", "policy ratio clip range [1-eps, 1+eps] (> 0)"),
    PS(value_clip, FLOAT, -INFINITY, INFINITY, "0.2",
       "value clip around the old values, in reward units (<= 0: off)"),
    PS(kl_coef, FLOAT, 0, INFINITY, "0.03", "KL penalty coefficient beta (initial, if adaptive)"),
    PS(kl_adaptive, BOOL, 0, 1, "false", "adaptive KL controller (Ziegler et al.)"),
    PS(kl_target, FLOAT, -INFINITY, INFINITY, "6", "adaptive: target KL per sequence (> 0)"),
    PS(kl_horizon, FLOAT, -INFINITY, INFINITY, "10000", "adaptive: horizon in sequences (> 0)"),
    PS(epochs, INT, 1, INT_MAX, "4", "passes over each rollout batch"),
    PS(minibatch, INT, 1, INT_MAX, "8", "sequences per optimizer step"),
    PS(microbatch, INT, 0, INT_MAX, "0",
       "sequences per forward/backward inside a minibatch (0: the whole minibatch)"),
    PS(lr_policy, FLOAT, 0, INFINITY, "1e-05", "policy learning rate"),
    PS(lr_value, FLOAT, 0, INFINITY, "1e-05", "value learning rate"),
    PS(weight_decay, FLOAT, 0, INFINITY, "0", "AdamW weight decay (2-D weights)"),
    PS(max_grad_norm, FLOAT, -INFINITY, INFINITY, "1", "gradient clipping, per model (<= 0: off)"),
    PS(ent_coef, FLOAT, -INFINITY, INFINITY, "0", "entropy bonus"),
    PE(score_norm, norm_names, 3, "raw",
       "raw, scale or norm: the reward-model score's normalisation"),
    PS(score_clip, FLOAT, -INFINITY, INFINITY, "0", "clip of the normalised score (<= 0: off)"),
    PS(whiten, BOOL, 0, 1, "true", "whiten advantages over the rollout batch"),
    PS(whiten_keep_mean, BOOL, 0, 1, "false", "whitening keeps the advantages' mean"),
    PS(recompute_logprobs, BOOL, 0, 1, "false",
       "recompute the old logprobs with the policy before the update"),
    {"vocab_limit", PPO_SETTING_INT, 0, INT_MAX, "0",
     "distributions over ids below it only (0: all)", offsetof(ppo_config_t, vocab_limit), 1, NULL},
    PS(forward_batch, INT, 0, INT_MAX, "0", "sequences per rollout-side forward (0: minibatch)"),
    {"seed", PPO_SETTING_U64, 0, 0, "0", "key of the minibatch shuffle",
     offsetof(ppo_config_t, seed), 1, NULL},
    PE(adv_estimator, adv_names, 4, "gae",
       "gae (value model), grpo, rloo or reinforce_pp (no value model): the advantages"),
    PE(kl_in, kl_in_names, 2, "reward", "reward or loss: where the KL penalty goes"),
    PE(kl_estimator, kl_est_names, 3, "k1", "k1, k2 or k3: the KL penalty's per-token estimate"),
    PE(loss_agg, agg_names, 2, "token",
       "token or sequence: losses averaged over a minibatch's tokens, or per sequence first"),
    PS(missing_eos_penalty, FLOAT, 0, INFINITY, "0",
       "subtracted from the (normalised) score of a completion cut without end-of-text (0: off)"),
    {"temperature", PPO_SETTING_FLOAT, 0, 100, "1",
     "the rollouts' sampling temperature, set from --temperature: logprobs under logits / T",
     offsetof(ppo_config_t, temperature), 1, NULL},
    PE(overlap, overlap_names, 2, "off",
       "off or one_step_off: iteration i+1's rollouts are generated with the weights of "
       "iteration i while the learner runs update i (one update stale; README \"Overlap\")"),
    PS(grad_blocks, INT, 0, GTREE_MAX_BLOCKS, "1",
       "blocks a minibatch step's gradient is summed over in a fixed tree (capped at its "
       "rollouts): learner shards share the blocks, the same bits on any number of them"),
};
#undef PS
#undef PE
const int ppo_n_settings = (int)(sizeof ppo_settings / sizeof ppo_settings[0]);

/* the number of names of an enum setting */
static int enum_count(const ppo_setting_t *s) {
    int k = 0;
    while (s->names[k]) k++;
    return k;
}

void ppo_setting_choices(const ppo_setting_t *s, char *out, size_t n) {
    size_t len = 0;
    if (n) out[0] = 0;
    for (int k = 0; s->type == PPO_SETTING_ENUM && s->names[k] && len < n; k++)
        len += (size_t)snprintf(out + len, n - len, "%s%s", k ? "|" : "", s->names[k]);
}

const ppo_setting_t *ppo_setting_find(const char *name) {
    for (int i = 0; i < ppo_n_settings; i++)
        if (!strcmp(ppo_settings[i].name, name)) return &ppo_settings[i];
    return NULL;
}

void ppo_setting_format(const ppo_setting_t *s, const ppo_config_t *c, char *out, size_t n) {
    const char *p = (const char *)c + s->off;
    switch (s->type) {
    case PPO_SETTING_FLOAT:
        snprintf(out, n, "%g", *(const float *)p);
        break;
    case PPO_SETTING_INT:
        snprintf(out, n, "%d", *(const int *)p);
        break;
    case PPO_SETTING_BOOL:
        snprintf(out, n, "%s", *(const int *)p ? "true" : "false");
        break;
    case PPO_SETTING_U64:
        snprintf(out, n, "%llu", (unsigned long long)*(const uint64_t *)p);
        break;
    case PPO_SETTING_ENUM: {
        int k = *(const int *)p;
        snprintf(out, n, "%s", k >= 0 && k < enum_count(s) ? s->names[k] : "?");
        break;
    }
    }
}

/* Parses text into setting s of c (c NULL: only checks). Returns 0 or RL_EINVAL saying why,
 * without naming the setting. */
static int ps_parse(const ppo_setting_t *s, const char *value, ppo_config_t *c) {
    char *p = c ? (char *)c + s->off : NULL, *end;
    errno = 0;
    switch (s->type) {
    case PPO_SETTING_FLOAT: {
        double d = strtod(value, &end);
        if (end == value || *end || errno || !isfinite(d) || d < s->lo || d > s->hi)
            return rl_fail(RL_EINVAL, "'%s' is not a number in [%g, %g]", value, s->lo, s->hi);
        if (p) *(float *)p = (float)d;
        return 0;
    }
    case PPO_SETTING_INT: {
        long long x = strtoll(value, &end, 10);
        if (end == value || *end || errno || (double)x < s->lo || (double)x > s->hi)
            return rl_fail(RL_EINVAL, "'%s' is not an integer in [%.0f, %.0f]", value, s->lo,
                           s->hi);
        if (p) *(int *)p = (int)x;
        return 0;
    }
    case PPO_SETTING_U64: {
        unsigned long long x = strtoull(value, &end, 10);
        if (end == value || *end || errno || value[0] == '-' || x > INT64_MAX)
            return rl_fail(RL_EINVAL, "'%s' is not an unsigned integer", value);
        if (p) *(uint64_t *)p = x;
        return 0;
    }
    case PPO_SETTING_BOOL: {
        int v = -1;
        if (!strcmp(value, "true") || !strcmp(value, "1")) v = 1;
        if (!strcmp(value, "false") || !strcmp(value, "0")) v = 0;
        if (v < 0) return rl_fail(RL_EINVAL, "'%s' is not true or false", value);
        if (p) *(int *)p = v;
        return 0;
    }
    case PPO_SETTING_ENUM: {
        for (int k = 0; s->names[k]; k++)
            if (!strcmp(value, s->names[k])) {
                if (p) *(int *)p = k;
                return 0;
            }
        char ch[128];
        ppo_setting_choices(s, ch, sizeof ch);
        return rl_fail(RL_EINVAL, "'%s' is not one of %s", value, ch);
    }
    }
    return rl_fail(RL_EINVAL, "bad setting type");
}

void ppo_config_default(ppo_config_t *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < ppo_n_settings; i++) {
        int rc = ps_parse(&ppo_settings[i], ppo_settings[i].def, c);
        (void)rc; /* a default that does not parse is a bug (test_ppo checks them) */
    }
}

int ppo_config_check(const ppo_config_t *c) {
    for (int i = 0; i < ppo_n_settings; i++) {
        const ppo_setting_t *s = &ppo_settings[i];
        const char *p = (const char *)c + s->off;
        double v = s->type == PPO_SETTING_FLOAT ? *(const float *)p
                   : s->type == PPO_SETTING_U64 ? 0
                                                : *(const int *)p;
        if (!isfinite(v) || v < s->lo || v > s->hi) {
            char lo[32], hi[32];
            snprintf(lo, sizeof lo, "%g", s->lo);
            snprintf(hi, sizeof hi, "%g", s->hi);
            if (s->type == PPO_SETTING_ENUM) {
                char ch[128];
                ppo_setting_choices(s, ch, sizeof ch);
                return rl_fail(RL_EINVAL, "ppo config: bad %s (need %s)", s->name, ch);
            }
            if (isinf(s->lo) && isinf(s->hi))
                return rl_fail(RL_EINVAL, "ppo config: bad %s (need a finite value)", s->name);
            if (isinf(s->hi) || s->hi >= INT_MAX)
                return rl_fail(RL_EINVAL, "ppo config: bad %s (need >= %s)", s->name, lo);
            return rl_fail(RL_EINVAL, "ppo config: bad %s (need %s..%s)", s->name, lo, hi);
        }
    }
    if (!(c->clip_eps > 0 && c->clip_eps < 1))
        return rl_fail(RL_EINVAL, "ppo config: bad clip_eps (need 0 < eps < 1)");
    if (c->kl_adaptive && !(c->kl_target > 0))
        return rl_fail(RL_EINVAL, "ppo config: bad kl_target (need > 0)");
    if (c->kl_adaptive && !(c->kl_horizon > 0))
        return rl_fail(RL_EINVAL, "ppo config: bad kl_horizon (need > 0)");
    if (c->overlap != PPO_OVERLAP_OFF && c->recompute_logprobs)
        return rl_fail(RL_EINVAL,
                       "ppo config: overlap=one_step_off cannot be combined with "
                       "recompute_logprobs: the old logprobs must be those of the (one update "
                       "older) policy that sampled the rollouts, not the learner's current one");
    if (!(c->temperature > 0))
        return rl_fail(RL_EINVAL, "ppo config: bad temperature (need > 0: logprobs are taken "
                                  "under logits / T, and greedy rollouts have none)");
    return 0;
}

json_t *ppo_config_to_json(const ppo_config_t *c) {
    json_t *o = json_object();
    for (int i = 0; o && i < ppo_n_settings; i++) {
        const ppo_setting_t *s = &ppo_settings[i];
        const char *p = (const char *)c + s->off;
        json_t *v = NULL;
        switch (s->type) {
        case PPO_SETTING_FLOAT:
            v = json_real(*(const float *)p);
            break;
        case PPO_SETTING_INT:
            v = json_integer(*(const int *)p);
            break;
        case PPO_SETTING_BOOL:
            v = json_boolean(*(const int *)p);
            break;
        case PPO_SETTING_U64:
            v = json_integer((json_int_t) * (const uint64_t *)p);
            break;
        case PPO_SETTING_ENUM: {
            int k = *(const int *)p;
            v = json_string(k >= 0 && k < enum_count(s) ? s->names[k] : "?");
            break;
        }
        }
        json_object_set_new(o, s->name, v);
    }
    return o;
}

/* Sets setting s of c from a JSON value of its type (ranges: ppo_config_check). */
static int ps_set_json(ppo_config_t *c, const ppo_setting_t *s, json_t *v, const char *where) {
    char *p = (char *)c + s->off;
    switch (s->type) {
    case PPO_SETTING_FLOAT:
        if (!json_is_number(v)) break;
        *(float *)p = (float)json_number_value(v);
        return 0;
    case PPO_SETTING_INT:
        if (!json_is_integer(v) || json_integer_value(v) < INT_MIN ||
            json_integer_value(v) > INT_MAX)
            break;
        *(int *)p = (int)json_integer_value(v);
        return 0;
    case PPO_SETTING_BOOL:
        if (!json_is_boolean(v)) break;
        *(int *)p = json_is_true(v);
        return 0;
    case PPO_SETTING_U64:
        if (!json_is_integer(v) || json_integer_value(v) < 0) break;
        *(uint64_t *)p = (uint64_t)json_integer_value(v);
        return 0;
    case PPO_SETTING_ENUM:
        if (json_is_string(v) && ps_parse(s, json_string_value(v), c) == 0) return 0;
        break;
    }
    char ch[128] = "";
    if (s->type == PPO_SETTING_ENUM) ppo_setting_choices(s, ch, sizeof ch);
    return rl_fail(RL_EINVAL, "%s%s: a value of the wrong type%s%s%s", where, s->name,
                   ch[0] ? " (" : "", ch, ch[0] ? ")" : "");
}

int ppo_config_from_json(ppo_config_t *c, json_t *obj, const char *where) {
    const char *key;
    json_t *v;
    if (!json_is_object(obj)) return rl_fail(RL_EINVAL, "%sa JSON object is expected", where);
    json_object_foreach(obj, key, v) {
        const ppo_setting_t *s = ppo_setting_find(key);
        if (!s) return rl_fail(RL_EINVAL, "%sunknown PPO setting '%s'", where, key);
        int rc = ps_set_json(c, s, v, where);
        if (rc < 0) return rc;
    }
    int rc = ppo_config_check(c);
    return rc < 0 ? rl_fail_ctx(rc, "%s", where) : 0;
}

int ppo_config_set(ppo_config_t *c, const char *name, const char *value, const char *where) {
    const ppo_setting_t *s = ppo_setting_find(name);
    const char *sep = where && *where ? ": " : "";
    if (!where) where = "";
    if (!s) return rl_fail(RL_EINVAL, "%s%sunknown PPO setting '%s'", where, sep, name);
    int rc = ps_parse(s, value, c);
    return rc < 0 ? rl_fail_ctx(rc, "%s%s%s", where, sep, name) : 0;
}
