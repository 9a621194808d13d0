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
 * log(sum_i exp(x_i)) of a row, computed around its maximum in double; if H is not NULL, also
 * the entropy H = lse - sum_i p_i x_i (terms with p_i = 0 contribute nothing, so -inf entries
 * are masked tokens). A NaN anywhere makes both NaN.
 */
static double row_lse(const float *x, int V, double *H) {
    double mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (x[i] > mx || isnan(x[i])) mx = x[i];
    double s = 0, acc = 0;
    for (int i = 0; i < V; i++) {
        double d = (double)x[i] - mx, e = exp(d);
        s += e;
        if (e > 0 || isnan(e)) acc += e * d;
    }
    double ls = log(s);
    if (H) *H = ls - acc / s;
    return mx + ls;
}

double ppo_logprob(const float *logits, int V, int tok, double *entropy) {
    return (double)logits[tok] - row_lse(logits, V, entropy);
}

void ppo_dlogits_row(const float *logits, int V, int tok, float dlogp, float dent, float *out) {
    double H, lse = row_lse(logits, V, &H);
    for (int j = 0; j < V; j++) {
        double lp = (double)logits[j] - lse, p = exp(lp);
        double g = -(double)dlogp * p;
        if (p > 0 || isnan(p)) g -= (double)dent * p * (lp + H);
        if (j == tok) g += dlogp;
        out[j] = (float)g; /* element j is read before it is written: in place is fine */
    }
}

double ppo_kl_k1(double logp, double logp_ref) {
    return logp - logp_ref;
}

double ppo_kl_k3(double logp, double logp_ref) {
    double d = logp_ref - logp; /* log r */
    return expm1(d) - d;
}

double ppo_rewards(const float *logp, const float *logp_ref, int n, float score, float beta,
                   float *rewards) {
    double kl = 0;
    for (int t = 0; t < n; t++) {
        double k = ppo_kl_k1(logp[t], logp_ref[t]);
        kl += k;
        rewards[t] = (float)(-(double)beta * k);
    }
    if (n > 0) rewards[n - 1] = (float)((double)rewards[n - 1] + score);
    return kl;
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

void ppo_config_default(ppo_config_t *c) {
    memset(c, 0, sizeof *c);
    c->gamma = 1.0f;
    c->lambda = 0.95f;
    c->clip_eps = 0.2f;
    c->value_clip = 0.2f;
    c->kl_coef = 0.03f;
    c->kl_adaptive = 0;
    c->kl_target = 6.0f;
    c->kl_horizon = 10000.0f;
    c->epochs = 4;
    c->minibatch = 8;
    c->microbatch = 0;
    c->lr_policy = 1e-5f;
    c->lr_value = 1e-5f;
    c->weight_decay = 0.0f;
    c->max_grad_norm = 1.0f;
    c->ent_coef = 0.0f;
    c->score_norm = PPO_SCORE_RAW;
    c->score_clip = 0.0f;
    c->whiten = 1;
    c->whiten_keep_mean = 0;
    c->recompute_logprobs = 0;
    c->vocab_limit = 0;
    c->forward_batch = 0;
    c->seed = 0;
}

int ppo_config_check(const ppo_config_t *c) {
#define PPO__REQ(cond, field)                                                                      \
    if (!(cond)) return rl_fail(RL_EINVAL, "ppo config: bad %s", field)
    PPO__REQ(c->gamma >= 0 && c->gamma <= 1, "gamma (need 0..1)");
    PPO__REQ(c->lambda >= 0 && c->lambda <= 1, "lambda (need 0..1)");
    PPO__REQ(c->clip_eps > 0 && c->clip_eps < 1, "clip_eps (need 0 < eps < 1)");
    PPO__REQ(isfinite(c->value_clip), "value_clip");
    PPO__REQ(c->kl_coef >= 0 && isfinite(c->kl_coef), "kl_coef (need >= 0)");
    PPO__REQ(c->kl_adaptive == 0 || c->kl_adaptive == 1, "kl_adaptive (need 0 or 1)");
    PPO__REQ(!c->kl_adaptive || (c->kl_target > 0 && isfinite(c->kl_target)),
             "kl_target (need > 0)");
    PPO__REQ(!c->kl_adaptive || (c->kl_horizon > 0 && isfinite(c->kl_horizon)),
             "kl_horizon (need > 0)");
    PPO__REQ(c->epochs >= 1, "epochs (need >= 1)");
    PPO__REQ(c->minibatch >= 1, "minibatch (need >= 1)");
    PPO__REQ(c->microbatch >= 0, "microbatch (need >= 0)");
    PPO__REQ(c->forward_batch >= 0, "forward_batch (need >= 0)");
    PPO__REQ(c->lr_policy >= 0 && isfinite(c->lr_policy), "lr_policy (need >= 0)");
    PPO__REQ(c->lr_value >= 0 && isfinite(c->lr_value), "lr_value (need >= 0)");
    PPO__REQ(c->weight_decay >= 0 && isfinite(c->weight_decay), "weight_decay (need >= 0)");
    PPO__REQ(isfinite(c->max_grad_norm), "max_grad_norm");
    PPO__REQ(isfinite(c->ent_coef), "ent_coef");
    PPO__REQ(c->score_norm >= PPO_SCORE_RAW && c->score_norm <= PPO_SCORE_NORM,
             "score_norm (need raw, scale or norm)");
    PPO__REQ(isfinite(c->score_clip), "score_clip");
    PPO__REQ(c->vocab_limit >= 0, "vocab_limit (need >= 0)");
#undef PPO__REQ
    return 0;
}

int ppo_learner_init(ppo_learner_t *l, gpt_t *policy, gpt_t *value, const ppo_config_t *cfg) {
    memset(l, 0, sizeof *l);
    int rc = ppo_config_check(cfg);
    if (rc < 0) return rc;
    if (!policy || !value) return rl_fail(RL_EINVAL, "ppo: missing policy or value model");
    if (!value->cfg.scalar_head) return rl_fail(RL_EINVAL, "ppo: the value model has no head");
    if (value->cfg.vocab_size != policy->cfg.vocab_size)
        return rl_fail(RL_EINVAL, "ppo: vocabularies differ (policy %d, value %d)",
                       policy->cfg.vocab_size, value->cfg.vocab_size);
    if (cfg->vocab_limit > policy->cfg.vocab_size)
        return rl_fail(RL_EINVAL, "ppo: vocab_limit %d above the vocabulary (%d)", cfg->vocab_limit,
                       policy->cfg.vocab_size);
    l->cfg = *cfg;
    l->policy = policy;
    l->value = value;
    if ((rc = gpt_grads_alloc(policy)) < 0 || (rc = gpt_grads_alloc(value)) < 0) goto fail;
    rc = adamw_init(&l->opt_policy, policy->num_params, 0.9f, 0.95f, 1e-8f, cfg->weight_decay);
    if (rc < 0) goto fail;
    rc = adamw_init(&l->opt_value, value->num_params, 0.9f, 0.95f, 1e-8f, cfg->weight_decay);
    if (rc < 0) goto fail;
    l->n_groups_policy = gpt_adamw_groups(policy, l->groups_policy);
    l->n_groups_value = gpt_adamw_groups(value, l->groups_value);
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
static void read_logprobs(const gpt_t *m, const int *pos, const int *tok, int nk, int Vl, float *lp,
                          double *ent) {
    int V = m->cfg.vocab_size;
#pragma omp parallel for schedule(static) if ((long)nk * Vl >= PPO_PAR_MIN)
    for (int k = 0; k < nk; k++) {
        double h;
        lp[k] =
            (float)ppo_logprob(m->acts.logits + (size_t)pos[k] * V, Vl, tok[k], ent ? &h : NULL);
        if (ent) ent[k] = h;
    }
}

static int seq_pass(gpt_t *m, const ppo_seq_t *seqs, int n, int batch, int vocab_limit, int logits,
                    float *out) {
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
            read_logprobs(m, b.pos, b.tok, nk, Vl, out + off, NULL);
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
    if (vocab_limit > m->cfg.vocab_size)
        return rl_fail(RL_EINVAL, "ppo: vocab_limit %d above the vocabulary (%d)", vocab_limit,
                       m->cfg.vocab_size);
    return seq_pass(m, seqs, n, batch, vocab_limit, 1, out);
}

int ppo_seq_values(gpt_t *m, const ppo_seq_t *seqs, int n, int batch, float *out) {
    if (!m->cfg.scalar_head) return rl_fail(RL_EINVAL, "ppo: values need a scalar head");
    return seq_pass(m, seqs, n, batch, 0, 0, out);
}

/* ---- the update ------------------------------------------------------------------------ */

/* Per-token arrays of the rollout batch (flat, sequence after sequence) and step scratch. */
typedef struct {
    const ppo_seq_t *seqs;
    size_t *off;                             /* (n+1) offset of each sequence's first token */
    float *lp_old, *v_old, *adv, *ret, *rew; /* (ntok) */
    /* gathered for one minibatch: (ntok) each */
    float *g_lp_old, *g_adv, *g_v_old, *g_ret, *lp, *ent, *dlp, *dent, *v, *dv;
    pass_buf_t pb;
} upd_t;

static void upd_free(upd_t *u) {
    free(u->off), free(u->lp_old), free(u->v_old), free(u->adv), free(u->ret), free(u->rew);
    free(u->g_lp_old), free(u->g_adv), free(u->g_v_old), free(u->g_ret), free(u->lp);
    free(u->ent), free(u->dlp), free(u->dent), free(u->v), free(u->dv);
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
        k += len;
    }
}

typedef struct {
    double pg_loss, clipfrac, approx_kl, entropy, v_loss, v_clipfrac, gn_policy, gn_value;
} mb_stats_t;

/* One policy step on the minibatch seqs[idx[0..cnt)]; its tokens start at g_* + 0. */
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

static int policy_step(ppo_learner_t *l, upd_t *u, const int *idx, int cnt, double denom,
                       mb_stats_t *ms) {
    gpt_t *m = l->policy;
    const ppo_config_t *c = &l->cfg;
    int V = m->cfg.vocab_size, Vl = c->vocab_limit > 0 ? c->vocab_limit : V;
    int micro = c->microbatch > 0 ? c->microbatch : cnt, rc = 0;
    size_t k0 = 0;
    gpt_zero_grad(m);
    for (int j0 = 0; j0 < cnt; j0 += micro) {
        int jc = cnt - j0 < micro ? cnt - j0 : micro, nk;
        int T = pack(u->seqs, idx + j0, jc, u->pb.inputs, u->pb.pos, u->pb.tok, &nk);
        if ((rc = gpt_forward(m, u->pb.inputs, jc, T, GPT_FWD_LOGITS)) < 0) return rc;
        float *lp = u->lp + k0, *dlp = u->dlp + k0, *dent = u->dent + k0, *ent = u->ent + k0;
        read_logprobs(m, u->pb.pos, u->pb.tok, nk, Vl, lp, u->pb.ent);
        for (int k = 0; k < nk; k++) ent[k] = (float)u->pb.ent[k];
        ppo_pg_stats_t ps = {0};
        rc = ppo_policy_loss(lp, u->g_lp_old + k0, u->g_adv + k0, NULL, (size_t)nk, c->clip_eps,
                             denom, dlp, &ps);
        if (rc < 0) return rc;
        double me = ppo_entropy_bonus(ent, NULL, (size_t)nk, c->ent_coef, denom, dent);
        if (!isfinite(me)) return rl_fail(RL_ENONFINITE, "policy: entropy %g", me);
        ms->pg_loss += ps.loss;
        ms->clipfrac += ps.clipfrac;
        ms->approx_kl += ps.approx_kl;
        ms->entropy += me;
        /* dlogits: zero on every row, then the action rows (disjoint) in parallel */
        float *logits = m->acts.logits;
        int N = jc * T;
        unsigned char *used = calloc((size_t)N, 1);
        if (!used) return rl_fail(RL_ENOMEM, "policy: rows");
        for (int k = 0; k < nk; k++) used[u->pb.pos[k]] = 1;
        for (int r = 0; r < N; r++)
            if (!used[r]) memset(logits + (size_t)r * V, 0, (size_t)V * sizeof(float));
        free(used);
#pragma omp parallel for schedule(static) if ((long)nk * Vl >= PPO_PAR_MIN)
        for (int k = 0; k < nk; k++) {
            float *row = logits + (size_t)u->pb.pos[k] * V;
            ppo_dlogits_row(row, Vl, u->pb.tok[k], dlp[k], dent[k], row);
            for (int j = Vl; j < V; j++) row[j] = 0;
        }
        if ((rc = gpt_dlogits_set(m)) < 0 || (rc = gpt_backward(m, 1, NULL)) < 0) return rc;
        k0 += (size_t)nk;
    }
    return clip_and_step(m, &l->opt_policy, l->groups_policy, l->n_groups_policy, c->lr_policy,
                         c->max_grad_norm, "policy gradient", &ms->gn_policy);
}

static int value_step(ppo_learner_t *l, upd_t *u, const int *idx, int cnt, double denom,
                      mb_stats_t *ms) {
    gpt_t *m = l->value;
    const ppo_config_t *c = &l->cfg;
    int micro = c->microbatch > 0 ? c->microbatch : cnt, rc = 0;
    size_t k0 = 0;
    gpt_zero_grad(m);
    for (int j0 = 0; j0 < cnt; j0 += micro) {
        int jc = cnt - j0 < micro ? cnt - j0 : micro, nk;
        int T = pack(u->seqs, idx + j0, jc, u->pb.inputs, u->pb.pos, u->pb.tok, &nk);
        if ((rc = gpt_forward(m, u->pb.inputs, jc, T, 0)) < 0) return rc;
        float *v = u->v + k0, *dv = u->dv + k0;
        if ((rc = gpt_head_forward(m, u->pb.pos, nk, v)) < 0) return rc;
        double loss = 0, cf = 0;
        rc = ppo_value_loss(v, u->g_v_old + k0, u->g_ret + k0, NULL, (size_t)nk, c->value_clip,
                            denom, dv, &loss, &cf);
        if (rc < 0) return rc;
        ms->v_loss += loss;
        ms->v_clipfrac += cf;
        if ((rc = gpt_backward(m, 0, dv)) < 0) return rc;
        k0 += (size_t)nk;
    }
    return clip_and_step(m, &l->opt_value, l->groups_value, l->n_groups_value, c->lr_value,
                         c->max_grad_norm, "value gradient", &ms->gn_value);
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

int ppo_update(ppo_learner_t *l, const ppo_seq_t *seqs, int n, ppo_stats_t *st) {
    const ppo_config_t *c = &l->cfg;
    int rc = seqs_check(seqs, n, l->policy, c->vocab_limit);
    if (rc < 0) return rc;
    if (seqs_check(seqs, n, l->value, 0) < 0) return rl_fail_ctx(RL_EINVAL, "value model");
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
    float **bufs[] = {&u.lp_old,   &u.v_old, &u.adv,     &u.ret,   &u.rew,
                      &u.g_lp_old, &u.g_adv, &u.g_v_old, &u.g_ret, &u.lp,
                      &u.ent,      &u.dlp,   &u.dent,    &u.v,     &u.dv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (!(*bufs[i] = malloc(fb))) {
            rc = rl_fail(RL_ENOMEM, "ppo: %zu token buffers", ntok);
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
        rc = ppo_seq_logprobs(l->policy, seqs, n, fwd, c->vocab_limit, u.lp_old);
        if (rc < 0) goto done;
    } else {
        for (int i = 0; i < n; i++)
            memcpy(u.lp_old + u.off[i], seqs[i].logprobs,
                   (size_t)seqs[i].completion_len * sizeof(float));
    }
    if ((rc = check_finite(u.lp_old, ntok, "old logprob")) < 0) goto done;
    for (int i = 0; i < n; i++)
        if ((rc = check_finite(seqs[i].ref_logprobs, (size_t)seqs[i].completion_len,
                               "reference logprob")) < 0)
            goto done;
    if ((rc = ppo_seq_values(l->value, seqs, n, fwd, u.v_old)) < 0) goto done;

    /* scores, rewards, advantages */
    ppo_moments_t mom = l->score_stats;
    for (int i = 0; i < n; i++) ppo_moments_push(&mom, seqs[i].score);
    s.beta = l->kl.beta;
    double k1 = 0, k3 = 0;
    for (int i = 0; i < n; i++) {
        const ppo_seq_t *q = &seqs[i];
        size_t o = u.off[i];
        float sc = ppo_score_transform(q->score, &mom, c->score_norm, c->score_clip);
        k1 += ppo_rewards(u.lp_old + o, q->ref_logprobs, q->completion_len, sc, l->kl.beta,
                          u.rew + o);
        double tot = 0;
        for (int t = 0; t < q->completion_len; t++) {
            k3 += ppo_kl_k3(u.lp_old[o + t], q->ref_logprobs[t]);
            tot += u.rew[o + t];
        }
        seq_tmp[i] = tot;
        seq_tmp2[i] = q->score;
        ppo_gae(u.rew + o, u.v_old + o, q->completion_len, c->gamma, c->lambda, u.adv + o,
                u.ret + o);
    }
    if ((rc = check_finite(u.rew, ntok, "reward")) < 0) goto done;
    if ((rc = check_finite(u.adv, ntok, "advantage")) < 0) goto done;
    s.kl_k1 = k1 / n;
    s.kl_k3 = k3 / n;
    mean_std(seq_tmp, (size_t)n, &s.reward_mean, &s.reward_std);
    mean_std(seq_tmp2, (size_t)n, &s.score_mean, &s.score_std);
    s.explained_var = ppo_explained_variance(u.v_old, u.ret, NULL, ntok);
    {
        double sum = 0, ss = 0;
        for (size_t k = 0; k < ntok; k++) sum += u.adv[k];
        s.adv_mean = sum / (double)ntok;
        for (size_t k = 0; k < ntok; k++) ss += (u.adv[k] - s.adv_mean) * (u.adv[k] - s.adv_mean);
        s.adv_std = sqrt(ss / (double)ntok);
    }
    if (c->whiten && (rc = ppo_whiten(u.adv, NULL, ntok, c->whiten_keep_mean)) < 0) goto done;

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
            for (int b = 0; b < cnt; b++) denom += seqs[idx[i0 + b]].completion_len;
            if ((rc = policy_step(l, &u, idx + i0, cnt, denom, &ms)) < 0) {
                rl_fail_ctx(rc, "ppo iteration %ld epoch %d: policy step", l->iteration, e);
                goto done;
            }
            if ((rc = value_step(l, &u, idx + i0, cnt, denom, &ms)) < 0) {
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
    s.value_loss = ms.v_loss / ns;
    s.value_clipfrac = ms.v_clipfrac / ns;
    s.grad_norm_policy = ms.gn_policy / ns;
    s.grad_norm_value = ms.gn_value / ns;
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

/* ---- configuration as JSON / text ------------------------------------------------------- */

typedef enum { PF_FLOAT, PF_INT, PF_BOOL, PF_U64, PF_NORM } pf_kind_t;
typedef struct {
    const char *name;
    pf_kind_t kind;
    size_t off;
} pf_t;
#define PF(n, k)                                                                                   \
    { #n, k, offsetof(ppo_config_t, n) }
static const pf_t ppo_fields[] = {
    PF(gamma, PF_FLOAT),      PF(lambda, PF_FLOAT),          PF(clip_eps, PF_FLOAT),
    PF(value_clip, PF_FLOAT), PF(kl_coef, PF_FLOAT),         PF(kl_adaptive, PF_BOOL),
    PF(kl_target, PF_FLOAT),  PF(kl_horizon, PF_FLOAT),      PF(epochs, PF_INT),
    PF(minibatch, PF_INT),    PF(microbatch, PF_INT),        PF(lr_policy, PF_FLOAT),
    PF(lr_value, PF_FLOAT),   PF(weight_decay, PF_FLOAT),    PF(max_grad_norm, PF_FLOAT),
    PF(ent_coef, PF_FLOAT),   PF(score_norm, PF_NORM),       PF(score_clip, PF_FLOAT),
    PF(whiten, PF_BOOL),      PF(whiten_keep_mean, PF_BOOL), PF(recompute_logprobs, PF_BOOL),
    PF(vocab_limit, PF_INT),  PF(forward_batch, PF_INT),     PF(seed, PF_U64),
};
#define N_PPO_FIELDS (int)(sizeof ppo_fields / sizeof ppo_fields[0])
static const char *const norm_names[] = {"raw", "scale", "norm"};

json_t *ppo_config_to_json(const ppo_config_t *c) {
    json_t *o = json_object();
    for (int i = 0; o && i < N_PPO_FIELDS; i++) {
        const char *p = (const char *)c + ppo_fields[i].off;
        json_t *v = NULL;
        switch (ppo_fields[i].kind) {
        case PF_FLOAT:
            v = json_real(*(const float *)p);
            break;
        case PF_INT:
            v = json_integer(*(const int *)p);
            break;
        case PF_BOOL:
            v = json_boolean(*(const int *)p);
            break;
        case PF_U64:
            v = json_integer((json_int_t) * (const uint64_t *)p);
            break;
        case PF_NORM: {
            int k = *(const int *)p;
            v = json_string(k >= 0 && k < 3 ? norm_names[k] : "?");
            break;
        }
        }
        json_object_set_new(o, ppo_fields[i].name, v);
    }
    return o;
}

static const pf_t *pf_find(const char *name) {
    for (int i = 0; i < N_PPO_FIELDS; i++)
        if (!strcmp(ppo_fields[i].name, name)) return &ppo_fields[i];
    return NULL;
}

static int pf_set_json(ppo_config_t *c, const pf_t *f, json_t *v, const char *where) {
    char *p = (char *)c + f->off;
    switch (f->kind) {
    case PF_FLOAT:
        if (!json_is_number(v)) break;
        *(float *)p = (float)json_number_value(v);
        return 0;
    case PF_INT:
        if (!json_is_integer(v) || json_integer_value(v) < INT_MIN ||
            json_integer_value(v) > INT_MAX)
            break;
        *(int *)p = (int)json_integer_value(v);
        return 0;
    case PF_BOOL:
        if (!json_is_boolean(v)) break;
        *(int *)p = json_is_true(v);
        return 0;
    case PF_U64:
        if (!json_is_integer(v) || json_integer_value(v) < 0) break;
        *(uint64_t *)p = (uint64_t)json_integer_value(v);
        return 0;
    case PF_NORM:
        for (int k = 0; json_is_string(v) && k < 3; k++)
            if (!strcmp(json_string_value(v), norm_names[k])) {
                *(int *)p = k;
                return 0;
            }
        break;
    }
    return rl_fail(RL_EINVAL, "%s%s: a value of the wrong type%s", where, f->name,
                   f->kind == PF_NORM ? " (raw, scale or norm)" : "");
}

int ppo_config_from_json(ppo_config_t *c, json_t *obj, const char *where) {
    const char *key;
    json_t *v;
    if (!json_is_object(obj)) return rl_fail(RL_EINVAL, "%sa JSON object is expected", where);
    json_object_foreach(obj, key, v) {
        const pf_t *f = pf_find(key);
        if (!f) return rl_fail(RL_EINVAL, "%sunknown PPO setting '%s'", where, key);
        int rc = pf_set_json(c, f, v, where);
        if (rc < 0) return rc;
    }
    int rc = ppo_config_check(c);
    return rc < 0 ? rl_fail_ctx(rc, "%s", where) : 0;
}

int ppo_config_set(ppo_config_t *c, const char *name, const char *value, const char *where) {
    const pf_t *f = pf_find(name);
    if (!f) return rl_fail(RL_EINVAL, "%s: unknown PPO setting '%s'", where, name);
    json_t *v = NULL;
    char *end;
    errno = 0;
    switch (f->kind) {
    case PF_FLOAT: {
        double d = strtod(value, &end);
        if (end != value && !*end && !errno) v = json_real(d);
        break;
    }
    case PF_INT:
    case PF_U64: {
        long long x = strtoll(value, &end, 10);
        if (end != value && !*end && !errno) v = json_integer(x);
        break;
    }
    case PF_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1")) v = json_true();
        if (!strcmp(value, "false") || !strcmp(value, "0")) v = json_false();
        break;
    case PF_NORM:
        v = json_string(value);
        break;
    }
    char w[512];
    snprintf(w, sizeof w, "%s: ", where);
    int rc = v ? pf_set_json(c, f, v, w)
               : rl_fail(RL_EINVAL, "%s: %s: '%s' is not a valid value", where, name, value);
    json_decref(v);
    return rc;
}
