/*
 * llama.c - the Llama family's model: config, arena layout, Hugging Face names, rotary table,
 * forward and backward (see llama.h). gpt.c keeps everything the two families share (the
 * handle, arenas, LM loss, scalar head, AdamW groups) and calls in here where they differ.
 */
#include "nn/llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "base/err.h"
#include "nn/exact.h"
#include "nn/ops.h"

/* Below this many elements of work a loop runs on the calling thread (as in ops.c). */
#define LLAMA_PAR_MIN 32768

/* The sizes every function here starts from. */
typedef struct {
    size_t L, C, H, Hkv, hd, Dq, Dkv, D3, I, V;
} dims_t;

static dims_t dims_of(const gpt_config_t *c) {
    dims_t d;
    d.L = (size_t)c->n_layer, d.C = (size_t)c->n_embd, d.H = (size_t)c->n_head;
    d.Hkv = (size_t)c->n_kv_head, d.hd = (size_t)gpt_head_dim(c);
    d.Dq = d.H * d.hd, d.Dkv = d.Hkv * d.hd, d.D3 = d.Dq + 2 * d.Dkv;
    d.I = (size_t)c->n_inner, d.V = (size_t)c->vocab_size;
    return d;
}

int llama__config_check(const gpt_config_t *c) {
    if (c->arch < GPT_ARCH_LLAMA || c->arch > GPT_ARCH_QWEN3)
        return rl_fail(RL_EINVAL, "model config: unknown architecture %d", c->arch);
    if (c->n_layer < 1 || c->n_head < 1 || c->n_embd < 1 || c->vocab_size < 1 ||
        c->n_positions < 1 || c->n_kv_head < 1 || c->n_inner < 1 || c->head_dim < 0)
        return rl_fail(RL_EINVAL,
                       "model config: sizes must be positive (num_hidden_layers=%d "
                       "num_attention_heads=%d hidden_size=%d vocab_size=%d "
                       "max_position_embeddings=%d num_key_value_heads=%d intermediate_size=%d "
                       "head_dim=%d)",
                       c->n_layer, c->n_head, c->n_embd, c->vocab_size, c->n_positions,
                       c->n_kv_head, c->n_inner, c->head_dim);
    if (c->n_head % c->n_kv_head != 0)
        return rl_fail(RL_EINVAL,
                       "model config: num_attention_heads=%d is not a multiple of "
                       "num_key_value_heads=%d",
                       c->n_head, c->n_kv_head);
    if (!c->head_dim && c->n_embd % c->n_head != 0)
        return rl_fail(RL_EINVAL,
                       "model config: hidden_size=%d is not divisible by num_attention_heads=%d "
                       "(and no head_dim is given)",
                       c->n_embd, c->n_head);
    int hd = gpt_head_dim(c);
    if (hd % 2 != 0)
        return rl_fail(RL_EINVAL, "model config: head_dim=%d must be even (rotary pairs)", hd);
    if (!(c->layer_norm_epsilon > 0.0f) || !isfinite(c->layer_norm_epsilon))
        return rl_fail(RL_EINVAL, "model config: rms_norm_eps must be positive");
    if (!(c->rope_theta > 0.0f) || !isfinite(c->rope_theta))
        return rl_fail(RL_EINVAL, "model config: rope_theta must be positive");
    if (c->rope_llama3 && (!(c->rope_factor >= 1.0f) || !isfinite(c->rope_factor) ||
                           !(c->rope_low_freq_factor > 0.0f) ||
                           !(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
                           !isfinite(c->rope_high_freq_factor) || c->rope_original_max_pos < 1))
        return rl_fail(RL_EINVAL,
                       "model config: rope_scaling (llama3) needs factor >= 1, 0 < "
                       "low_freq_factor < high_freq_factor and original_max_position_embeddings "
                       ">= 1");
    if ((unsigned)c->tie_word_embeddings > 1 || (unsigned)c->attn_bias > 1 ||
        (unsigned)c->qk_norm > 1 || (unsigned)c->rope_llama3 > 1 || (unsigned)c->scalar_head > 1)
        return rl_fail(RL_EINVAL, "model config: a flag is neither 0 nor 1");
    /* kernels index rows and per-layer offsets with int: keep every product far from overflow */
    double C = c->n_embd, D3 = (double)(c->n_head + 2.0 * c->n_kv_head) * hd;
    if (c->n_embd > (1 << 20) || c->n_layer > (1 << 16) || hd > (1 << 16) || D3 > (1 << 22) ||
        c->n_inner > (1 << 24))
        return rl_fail(RL_EINVAL, "model config: hidden_size, layers, heads or intermediate_size "
                                  "too large");
    if ((double)c->vocab_size * C > 2e9 || D3 * C > 2e9 || 2.0 * c->n_inner * C > 2e9 ||
        (double)c->n_positions * hd > 2e9)
        return rl_fail(RL_EINVAL, "model config: a weight matrix or the rotary table is too large");
    double params = c->n_layer * (D3 * C + (double)c->n_head * hd * C + 3.0 * c->n_inner * C) +
                    (2.0 - c->tie_word_embeddings) * c->vocab_size * C;
    if (params > 1e12)
        return rl_fail(RL_EINVAL, "model config: %.3g parameters is beyond any machine", params);
    return 0;
}

void llama__param_sizes(const gpt_config_t *c, size_t *s) {
    dims_t d = dims_of(c);
    memset(s, 0, GPT_NKINDS * sizeof *s);
    s[GPT_WTE] = d.V * d.C;
    s[GPT_LN1W] = d.L * d.C;
    s[GPT_QKVW] = d.L * d.D3 * d.C;
    s[GPT_QKVB] = c->attn_bias ? d.L * d.D3 : 0;
    s[GPT_ATTPROJW] = d.L * d.C * d.Dq;
    s[GPT_LN2W] = d.L * d.C;
    s[GPT_FCW] = d.L * 2 * d.I * d.C;
    s[GPT_FCPROJW] = d.L * d.C * d.I;
    s[GPT_LNFW] = d.C;
    s[GPT_HEADW] = c->scalar_head ? d.C : 0;
    s[GPT_HEADB] = c->scalar_head ? 1 : 0;
    s[GPT_QNORMW] = c->qk_norm ? d.L * d.hd : 0;
    s[GPT_KNORMW] = c->qk_norm ? d.L * d.hd : 0;
    s[GPT_LMHEADW] = c->tie_word_embeddings ? 0 : d.V * d.C;
}

static void add(gpt_t *m, int ndim, size_t r, size_t c, size_t offset, const char *fmt, int l) {
    gpt_tensor_t *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, fmt, l);
    t->ndim = ndim;
    t->shape[0] = (int)r;
    t->shape[1] = ndim == 2 ? (int)c : 0;
    t->size = r * (ndim == 2 ? c : 1);
    t->offset = offset;
    t->decay = ndim == 2;
}

int llama__tensor_table(gpt_t *m, const size_t *ko) {
    const gpt_config_t *cfg = &m->cfg;
    dims_t d = dims_of(cfg);
    m->tensors = calloc(d.L * 14 + 6, sizeof *m->tensors);
    if (!m->tensors) return rl_fail(RL_ENOMEM, "model: tensor table");
    add(m, 2, d.V, d.C, ko[GPT_WTE], "model.embed_tokens.weight", 0);
    for (int l = 0; l < cfg->n_layer; l++) {
        size_t L = (size_t)l, w = ko[GPT_QKVW] + L * d.D3 * d.C, b = ko[GPT_QKVB] + L * d.D3;
        add(m, 1, d.C, 0, ko[GPT_LN1W] + L * d.C, "model.layers.%d.input_layernorm.weight", l);
        add(m, 2, d.Dq, d.C, w, "model.layers.%d.self_attn.q_proj.weight", l);
        if (cfg->attn_bias) add(m, 1, d.Dq, 0, b, "model.layers.%d.self_attn.q_proj.bias", l);
        add(m, 2, d.Dkv, d.C, w + d.Dq * d.C, "model.layers.%d.self_attn.k_proj.weight", l);
        if (cfg->attn_bias)
            add(m, 1, d.Dkv, 0, b + d.Dq, "model.layers.%d.self_attn.k_proj.bias", l);
        add(m, 2, d.Dkv, d.C, w + (d.Dq + d.Dkv) * d.C, "model.layers.%d.self_attn.v_proj.weight",
            l);
        if (cfg->attn_bias)
            add(m, 1, d.Dkv, 0, b + d.Dq + d.Dkv, "model.layers.%d.self_attn.v_proj.bias", l);
        if (cfg->qk_norm) {
            add(m, 1, d.hd, 0, ko[GPT_QNORMW] + L * d.hd, "model.layers.%d.self_attn.q_norm.weight",
                l);
            add(m, 1, d.hd, 0, ko[GPT_KNORMW] + L * d.hd, "model.layers.%d.self_attn.k_norm.weight",
                l);
        }
        add(m, 2, d.C, d.Dq, ko[GPT_ATTPROJW] + L * d.C * d.Dq,
            "model.layers.%d.self_attn.o_proj.weight", l);
        add(m, 1, d.C, 0, ko[GPT_LN2W] + L * d.C, "model.layers.%d.post_attention_layernorm.weight",
            l);
        size_t fc = ko[GPT_FCW] + L * 2 * d.I * d.C;
        add(m, 2, d.I, d.C, fc, "model.layers.%d.mlp.gate_proj.weight", l);
        add(m, 2, d.I, d.C, fc + d.I * d.C, "model.layers.%d.mlp.up_proj.weight", l);
        add(m, 2, d.C, d.I, ko[GPT_FCPROJW] + L * d.C * d.I, "model.layers.%d.mlp.down_proj.weight",
            l);
    }
    add(m, 1, d.C, 0, ko[GPT_LNFW], "model.norm.weight", 0);
    if (!cfg->tie_word_embeddings) add(m, 2, d.V, d.C, ko[GPT_LMHEADW], "lm_head.weight", 0);
    if (cfg->scalar_head) {
        add(m, 2, 1, d.C, ko[GPT_HEADW], "score.weight", 0);
        add(m, 1, 1, 0, ko[GPT_HEADB], "score.bias", 0);
    }
    return 0;
}

int llama__rope_init(gpt_t *m) {
    const gpt_config_t *c = &m->cfg;
    size_t half = (size_t)gpt_head_dim(c) / 2, P = (size_t)c->n_positions;
    double *inv = malloc(half * sizeof *inv);
    m->rope_cos = malloc(P * half * sizeof(float));
    m->rope_sin = malloc(P * half * sizeof(float));
    if (!inv || !m->rope_cos || !m->rope_sin) {
        free(inv);
        return rl_fail(RL_ENOMEM, "model: rotary table (%zu positions)", P);
    }
    for (size_t i = 0; i < half; i++) {
        double f = 1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)(2 * half));
        if (c->rope_llama3) { /* Hugging Face's _compute_llama3_parameters */
            double old = c->rope_original_max_pos, lo = c->rope_low_freq_factor,
                   hi = c->rope_high_freq_factor, factor = c->rope_factor;
            double wavelen = 2 * M_PI / f;
            if (wavelen > old / lo) {
                f /= factor;
            } else if (!(wavelen < old / hi)) {
                double smooth = (old / wavelen - lo) / (hi - lo);
                f = (1 - smooth) * f / factor + smooth * f;
            }
        }
        inv[i] = f;
    }
#pragma omp parallel for schedule(static) if (P * half >= LLAMA_PAR_MIN)
    for (size_t p = 0; p < P; p++)
        for (size_t i = 0; i < half; i++) {
            double a = (double)p * inv[i];
            m->rope_cos[p * half + i] = (float)cos(a);
            m->rope_sin[p * half + i] = (float)sin(a);
        }
    free(inv);
    return 0;
}

double llama__acts_floats(const gpt_config_t *c, size_t B, size_t T, gpt_acts_t *a, float *mem) {
    dims_t d = dims_of(c);
    double L = (double)d.L, C = (double)d.C, N = (double)B * T, H = (double)d.H;
    double D3 = (double)d.D3, Dq = (double)d.Dq, I = (double)d.I,
           W = (double)(d.Dq > d.C ? d.Dq : d.C);
    double TT = (double)T * T;
    struct {
        float **p;
        double n;
    } f[] = {
        {&a->encoded, N * C},
        {&a->ln1, L * N * C},
        {&a->ln1_rstd, L * N},
        {&a->qkv, L * N * D3},
        {&a->qkr, L * N * D3},
        {&a->qk_rstd, c->qk_norm ? L * N * (H + (double)d.Hkv) : 0},
        {&a->atty, L * N * Dq},
        {&a->att, L * B * H * TT},
        {&a->attproj, L * N * C},
        {&a->residual2, L * N * C},
        {&a->ln2, L * N * C},
        {&a->ln2_rstd, L * N},
        {&a->fch, L * N * 2 * I},
        {&a->fch_gelu, L * N * I},
        {&a->fcproj, L * N * C},
        {&a->residual3, L * N * C},
        {&a->lnf, N * C},
        {&a->lnf_rstd, N},
        {&a->logits, N * (double)d.V},
        {&a->losses, N},
        {&a->dres, N * C},
        {&a->dbuf, N * W},
        {&a->dbuf2, N * W},
        {&a->dqkv, N * D3},
        {&a->dqkr, N * D3},
        {&a->datt, B * H * TT},
        {&a->dfch_gelu, N * I},
        {&a->dfch, N * 2 * I},
    };
    double total = 0;
    if (mem) memset(a, 0, sizeof *a);
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (mem) *f[i].p = mem + (size_t)total;
        total += f[i].n;
    }
    return total;
}

/* ---- rotary positions and the q/k norms ------------------------------------------------- */

typedef struct {
    int H, Hkv, hd, qk_norm;
    const float *qw, *kw; /* the layer's q_norm, k_norm weights */
    float eps;
    const float *cos, *sin;
} qk_args_t;

static qk_args_t qk_args(const gpt_t *m, const gpt_params_t *p, int l) {
    const gpt_config_t *c = &m->cfg;
    int hd = gpt_head_dim(c);
    qk_args_t q = {c->n_head, c->n_kv_head,          hd,          c->qk_norm, NULL,
                   NULL,      c->layer_norm_epsilon, m->rope_cos, m->rope_sin};
    if (c->qk_norm) q.qw = p->qnormw + (size_t)l * hd, q.kw = p->knormw + (size_t)l * hd;
    return q;
}

static inline void qk_rope_body(const qk_args_t *q, float *out, float *rstd, const float *qkv,
                                const int *pos, int T, int lo, int hi) {
    int hd = q->hd, half = hd / 2, nh = q->H + q->Hkv, D3 = (q->H + 2 * q->Hkv) * hd;
    for (int r = lo; r < hi; r++) {
        int p = pos ? pos[r] : r % T;
        const float *cs = q->cos + (size_t)p * half, *sn = q->sin + (size_t)p * half;
        const float *x = qkv + (size_t)r * D3;
        float *o = out + (size_t)r * D3;
        for (int j = 0; j < nh; j++) {
            const float *xh = x + (size_t)j * hd;
            float *oh = o + (size_t)j * hd;
            if (q->qk_norm) {
                const float *w = j < q->H ? q->qw : q->kw;
                float s = 1.0f / sqrtf(ex_sumsq_dev(xh, 0.0f, hd) / hd + q->eps);
                for (int i = 0; i < hd; i++) oh[i] = xh[i] * s * w[i];
                rstd[(size_t)r * nh + j] = s;
            } else {
                memcpy(oh, xh, (size_t)hd * sizeof(float));
            }
            for (int i = 0; i < half; i++) {
                float a = oh[i], b = oh[i + half];
                oh[i] = a * cs[i] - b * sn[i];
                oh[i + half] = b * cs[i] + a * sn[i];
            }
        }
        memcpy(o + (size_t)nh * hd, x + (size_t)nh * hd, (size_t)q->Hkv * hd * sizeof(float));
    }
}
EX_VARIANTS(qk_rope_rows,
            (const qk_args_t *q, float *out, float *rstd, const float *qkv, const int *pos, int T,
             int lo, int hi),
            qk_rope_body, (q, out, rstd, qkv, pos, T, lo, hi))

void llama__qk_rope(const gpt_t *m, int l, float *out, float *rstd, const float *qkv, int R,
                    const int *pos, int T) {
    qk_args_t q = qk_args(m, &m->params, l);
    int D3 = (q.H + 2 * q.Hkv) * q.hd;
    int nt = (long)R * D3 >= LLAMA_PAR_MIN ? ops_get_threads() : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int t = 0; t < nt; t++)
        qk_rope_rows(&q, out, rstd, qkv, pos, T, (int)((long)R * t / nt),
                     (int)((long)R * (t + 1) / nt));
}

/* dqkv(N,D3) += backward of llama__qk_rope from dqkr(N,D3), which is overwritten (it ends up
 * holding the gradient before RoPE); the q/k norm weights' gradients go to gq, gk. */
static void qk_rope_backward(const gpt_t *m, int l, float *dqkv, float *gq, float *gk, float *dqkr,
                             const float *qkv, const float *rstd, int N, int T) {
    qk_args_t q = qk_args(m, &m->params, l);
    int hd = q.hd, half = hd / 2, nh = q.H + q.Hkv, D3 = (q.H + 2 * q.Hkv) * hd;
#pragma omp parallel if ((long)N * D3 >= LLAMA_PAR_MIN)
    {
#pragma omp for schedule(static)
        for (int r = 0; r < N; r++) {
            int p = r % T;
            const float *cs = q.cos + (size_t)p * half, *sn = q.sin + (size_t)p * half;
            float *g = dqkr + (size_t)r * D3, *dx = dqkv + (size_t)r * D3;
            const float *x = qkv + (size_t)r * D3;
            for (int j = 0; j < nh; j++) {
                float *gh = g + (size_t)j * hd, *dh = dx + (size_t)j * hd;
                for (int i = 0; i < half; i++) { /* the rotation's transpose */
                    float a = gh[i], b = gh[i + half];
                    gh[i] = a * cs[i] + b * sn[i];
                    gh[i + half] = b * cs[i] - a * sn[i];
                }
                if (!q.qk_norm) {
                    for (int i = 0; i < hd; i++) dh[i] += gh[i];
                    continue;
                }
                const float *w = j < q.H ? q.qw : q.kw, *xh = x + (size_t)j * hd;
                float s = rstd[(size_t)r * nh + j], mean = 0.0f;
                for (int i = 0; i < hd; i++) mean += w[i] * gh[i] * (xh[i] * s);
                mean /= hd;
                for (int i = 0; i < hd; i++) dh[i] += (w[i] * gh[i] - xh[i] * s * mean) * s;
            }
            for (int i = nh * hd; i < D3; i++) dx[i] += g[i];
        }
        if (q.qk_norm) { /* weights: a column range per thread, rows and heads in order */
            int nt = omp_get_num_threads(), id = omp_get_thread_num();
            int c0 = (int)((long)hd * id / nt), c1 = (int)((long)hd * (id + 1) / nt);
            for (int r = 0; r < N; r++)
                for (int j = 0; j < nh; j++) {
                    const float *gh = dqkr + (size_t)r * D3 + (size_t)j * hd;
                    const float *xh = qkv + (size_t)r * D3 + (size_t)j * hd;
                    float s = rstd[(size_t)r * nh + j], *gw = j < q.H ? gq : gk;
                    for (int i = c0; i < c1; i++) gw[i] += xh[i] * s * gh[i];
                }
        }
    }
}

/* ---- forward and backward --------------------------------------------------------------- */

void llama__forward(gpt_t *m, int want_logits) {
    const gpt_config_t *cfg = &m->cfg;
    dims_t d = dims_of(cfg);
    int B = m->B, T = m->T, C = (int)d.C, I = (int)d.I, D3 = (int)d.D3, Dq = (int)d.Dq;
    int H = (int)d.H, Hkv = (int)d.Hkv, hd = (int)d.hd, V = (int)d.V;
    size_t N = (size_t)B * T;
    const gpt_params_t *p = &m->params;
    gpt_acts_t *a = &m->acts;
    float eps = cfg->layer_norm_epsilon;
    for (size_t n = 0; n < N; n++)
        memcpy(a->encoded + n * C, p->wte + (size_t)m->inputs[n] * C, (size_t)C * sizeof(float));
    const float *residual = a->encoded;
    for (size_t l = 0; l < d.L; l++) {
        float *ln1 = a->ln1 + l * N * C, *qkv = a->qkv + l * N * D3, *qkr = a->qkr + l * N * D3;
        float *atty = a->atty + l * N * Dq, *att = a->att + l * B * d.H * T * T;
        float *attproj = a->attproj + l * N * C, *res2 = a->residual2 + l * N * C;
        float *ln2 = a->ln2 + l * N * C, *fch = a->fch + l * N * 2 * I;
        float *fchg = a->fch_gelu + l * N * I, *fcproj = a->fcproj + l * N * C;
        float *res3 = a->residual3 + l * N * C;
        float *qk_rstd = cfg->qk_norm ? a->qk_rstd + l * N * (d.H + d.Hkv) : NULL;
        ops_rmsnorm_forward(ln1, a->ln1_rstd + l * N, residual, p->ln1w + l * C, (int)N, C, eps);
        ops_linear_forward(qkv, ln1, p->qkvw + l * d.D3 * d.C,
                           cfg->attn_bias ? p->qkvb + l * d.D3 : NULL, (int)N, C, D3);
        llama__qk_rope(m, (int)l, qkr, qk_rstd, qkv, (int)N, NULL, T);
        ops_gqa_attention_forward(atty, att, qkr, B, T, H, Hkv, hd);
        ops_linear_forward(attproj, atty, p->attprojw + l * d.C * d.Dq, NULL, (int)N, Dq, C);
        ops_residual_forward(res2, residual, attproj, N * C);
        ops_rmsnorm_forward(ln2, a->ln2_rstd + l * N, res2, p->ln2w + l * C, (int)N, C, eps);
        ops_linear_forward(fch, ln2, p->fcw + l * 2 * d.I * d.C, NULL, (int)N, C, 2 * I);
        ops_swiglu_forward(fchg, fch, (int)N, I);
        ops_linear_forward(fcproj, fchg, p->fcprojw + l * d.C * d.I, NULL, (int)N, I, C);
        ops_residual_forward(res3, res2, fcproj, N * C);
        residual = res3;
    }
    ops_rmsnorm_forward(a->lnf, a->lnf_rstd, residual, p->lnfw, (int)N, C, eps);
    if (want_logits)
        ops_lmhead_forward(a->logits, a->lnf, cfg->tie_word_embeddings ? p->wte : p->lmheadw,
                           (int)N, C, V);
}

void llama__backward(gpt_t *m) {
    const gpt_config_t *cfg = &m->cfg;
    dims_t d = dims_of(cfg);
    int B = m->B, T = m->T, C = (int)d.C, I = (int)d.I, D3 = (int)d.D3, Dq = (int)d.Dq;
    int H = (int)d.H, Hkv = (int)d.Hkv, hd = (int)d.hd;
    size_t N = (size_t)B * T;
    const gpt_params_t *p = &m->params;
    gpt_params_t *g = &m->grads;
    gpt_acts_t *a = &m->acts;

    memset(a->dres, 0, N * C * sizeof(float));
    const float *last = a->residual3 + (d.L - 1) * N * C;
    ops_rmsnorm_backward(a->dres, g->lnfw, a->dbuf, last, p->lnfw, a->lnf_rstd, (int)N, C);
    for (size_t l = d.L; l-- > 0;) {
        const float *residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * N * C;
        float *ln1 = a->ln1 + l * N * C, *qkv = a->qkv + l * N * D3, *qkr = a->qkr + l * N * D3;
        float *atty = a->atty + l * N * Dq, *att = a->att + l * B * d.H * T * T;
        float *res2 = a->residual2 + l * N * C, *ln2 = a->ln2 + l * N * C;
        float *fch = a->fch + l * N * 2 * I, *fchg = a->fch_gelu + l * N * I;
        float *qk_rstd = cfg->qk_norm ? a->qk_rstd + l * N * (d.H + d.Hkv) : NULL;
        /* residual3 = residual2 + down_proj(...): dres flows to both unchanged */
        memset(a->dfch_gelu, 0, N * I * sizeof(float));
        ops_linear_backward(a->dfch_gelu, g->fcprojw + l * d.C * d.I, NULL, a->dres, fchg,
                            p->fcprojw + l * d.C * d.I, (int)N, I, C);
        memset(a->dfch, 0, N * 2 * I * sizeof(float));
        ops_swiglu_backward(a->dfch, fch, a->dfch_gelu, (int)N, I);
        memset(a->dbuf, 0, N * C * sizeof(float));
        ops_linear_backward(a->dbuf, g->fcw + l * 2 * d.I * d.C, NULL, a->dfch, ln2,
                            p->fcw + l * 2 * d.I * d.C, (int)N, C, 2 * I);
        ops_rmsnorm_backward(a->dres, g->ln2w + l * C, a->dbuf, res2, p->ln2w + l * C,
                             a->ln2_rstd + l * N, (int)N, C);
        /* residual2 = residual + o_proj(attention) */
        memset(a->dbuf, 0, N * Dq * sizeof(float));
        ops_linear_backward(a->dbuf, g->attprojw + l * d.C * d.Dq, NULL, a->dres, atty,
                            p->attprojw + l * d.C * d.Dq, (int)N, Dq, C);
        memset(a->dqkr, 0, N * D3 * sizeof(float));
        ops_gqa_attention_backward(a->dqkr, a->datt, a->dbuf, qkr, att, B, T, H, Hkv, hd);
        memset(a->dqkv, 0, N * D3 * sizeof(float));
        qk_rope_backward(m, (int)l, a->dqkv, cfg->qk_norm ? g->qnormw + l * d.hd : NULL,
                         cfg->qk_norm ? g->knormw + l * d.hd : NULL, a->dqkr, qkv, qk_rstd, (int)N,
                         T);
        memset(a->dbuf2, 0, N * C * sizeof(float));
        ops_linear_backward(a->dbuf2, g->qkvw + l * d.D3 * d.C,
                            cfg->attn_bias ? g->qkvb + l * d.D3 : NULL, a->dqkv, ln1,
                            p->qkvw + l * d.D3 * d.C, (int)N, C, D3);
        ops_rmsnorm_backward(a->dres, g->ln1w + l * C, a->dbuf2, residual, p->ln1w + l * C,
                             a->ln1_rstd + l * N, (int)N, C);
    }
    /* the embedding: a scatter-add into shared rows, serial */
    for (size_t n = 0; n < N; n++) {
        float *dw = g->wte + (size_t)m->inputs[n] * C;
        const float *dr = a->dres + n * C;
        for (int c = 0; c < C; c++) dw[c] += dr[c];
    }
}

double llama__train_flops(const gpt_config_t *c, int B, int T) {
    dims_t d = dims_of(c);
    double N = (double)B * T;
    double per_layer = 2.0 * N * (double)d.C * ((double)d.D3 + (double)d.Dq + 3.0 * (double)d.I) +
                       4.0 * B * (double)T * T * (double)d.Dq; /* q@k^T and att@v, all heads */
    double fwd = (double)d.L * per_layer + 2.0 * N * (double)d.C * (double)d.V; /* + LM head */
    return 3.0 * fwd;
}
