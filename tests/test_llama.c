/*
 * test_llama.c - the Llama family (Llama, Qwen2, Qwen3) behind the gpt_t handle: every stage of
 * the fp32 forward against an independent double-precision reference written from the Hugging
 * Face tensor names (RMSNorm, rotary positions in the rotate_half convention with Llama 3's
 * scaling, grouped-query causal attention, SwiGLU, the LM head), within each stage's derived
 * rounding bound; the gradients of the masked LM loss and the scalar head against central
 * differences of the reference in double; bits identical on 1 and 2 threads; initialisation.
 * Models: grouped-query with an untied head and Llama 3 rope scaling; Qwen2's q/k/v biases with
 * tied embeddings; Qwen3's q/k norms with a head_dim that is not hidden/heads.
 */
#include "base/rng.h"
#include "nn/adamw.h"
#include "nn/gpt.h"
#include "nn/ops.h"
#include "test.h"

/* grouped-query (2 query heads per key/value head), untied, Llama 3 rope scaling, scalar head */
static const gpt_config_t cfg_llama = {.n_layer = 2,
                                       .n_head = 4,
                                       .n_embd = 16,
                                       .vocab_size = 11,
                                       .n_positions = 16,
                                       .layer_norm_epsilon = 1e-5f,
                                       .scalar_head = 1,
                                       .arch = GPT_ARCH_LLAMA,
                                       .n_kv_head = 2,
                                       .n_inner = 24,
                                       .rope_theta = 500000.0f,
                                       .rope_llama3 = 1,
                                       .rope_factor = 8.0f,
                                       .rope_low_freq_factor = 1.0f,
                                       .rope_high_freq_factor = 4.0f,
                                       .rope_original_max_pos = 8,
                                       .bos_token_id = -1,
                                       .eos_token_id = -1};

/* q/k/v biases, tied embeddings, one key/value head for both query heads */
static const gpt_config_t cfg_qwen2 = {.n_layer = 2,
                                       .n_head = 2,
                                       .n_embd = 8,
                                       .vocab_size = 11,
                                       .n_positions = 16,
                                       .layer_norm_epsilon = 1e-6f,
                                       .scalar_head = 1,
                                       .arch = GPT_ARCH_QWEN2,
                                       .n_kv_head = 1,
                                       .n_inner = 12,
                                       .tie_word_embeddings = 1,
                                       .attn_bias = 1,
                                       .rope_theta = 10000.0f,
                                       .bos_token_id = -1,
                                       .eos_token_id = -1};

/* q/k norms; 4 heads of head_dim 6 on a hidden width of 8 */
static const gpt_config_t cfg_qwen3 = {.n_layer = 2,
                                       .n_head = 4,
                                       .n_embd = 8,
                                       .vocab_size = 11,
                                       .n_positions = 16,
                                       .layer_norm_epsilon = 1e-6f,
                                       .scalar_head = 1,
                                       .arch = GPT_ARCH_QWEN3,
                                       .n_kv_head = 2,
                                       .head_dim = 6,
                                       .n_inner = 12,
                                       .qk_norm = 1,
                                       .rope_theta = 1000000.0f,
                                       .bos_token_id = -1,
                                       .eos_token_id = -1};

/* A model whose weights are large enough (std ~0.3) that every path carries real gradient;
 * norm weights around 1. */
static gpt_t *make_model(const gpt_config_t *cfg, uint64_t seed) {
    gpt_t *m = gpt_new(cfg);
    if (!m) {
        fprintf(stderr, "gpt_new: %s\n", rl_errmsg());
        abort();
    }
    gpt_init_weights(m, seed);
    for (size_t i = 0; i < m->num_params; i++)
        m->params_mem[i] += 0.3f * rng_normal(seed + 1, 99, i);
    return m;
}

/* fp32 gamma_k plus the reference's own double rounding of the same sum. */
static double gam(int k) {
    return test_gamma(k) + test_gamma64(k);
}

/* ---- the reference, in double, on a double copy of the parameters ---------------------- */

typedef struct {
    const gpt_t *m;  /* for its config and tensor table */
    const double *P; /* the parameters in double, at the tensors' offsets */
    int C, H, Hkv, hd, Dq, D3, I, V;
} ref_t;

static ref_t ref_of(const gpt_t *m, const double *P) {
    const gpt_config_t *c = &m->cfg;
    ref_t r = {m, P, c->n_embd,  c->n_head,    c->n_kv_head, gpt_head_dim(c),
               0, 0, c->n_inner, c->vocab_size};
    r.Dq = r.H * r.hd, r.D3 = (r.H + 2 * r.Hkv) * r.hd;
    return r;
}

/* The tensor named by fmt (with a %d for the layer), or NULL when the model has none. */
static const double *W(const ref_t *r, const char *fmt, int l) {
    char name[96];
    snprintf(name, sizeof name, fmt, l);
    const gpt_tensor_t *t = gpt_tensor_find(r->m, name);
    return t ? r->P + t->offset : NULL;
}

/* RMSNorm of T rows of C: out = x / sqrt(mean(x^2) + eps) * w. The fp32 kernel's sum of C
 * squares carries gamma_C relative error, the division by C, + eps, sqrtf and 1/ one rounding
 * each (the square root halves its input's), and x * s * w two more: gamma_{C+6} relative. */
static void ref_rms(double *out, double *bound, const double *x, const double *w, int T, int C,
                    float eps) {
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += x[t * C + c] * x[t * C + c];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) {
            out[t * C + c] = x[t * C + c] * r * w[c];
            if (bound) bound[t * C + c] = gam(C + 6) * fabs(out[t * C + c]);
        }
    }
}

/* out(T,O) = in(T,I) @ w(O,I)^T + b: I products onto the bias, I+1 roundings. */
static void ref_linear(double *out, double *bound, const double *in, const double *w,
                       const double *b, int T, int I, int O) {
    for (int t = 0; t < T; t++)
        for (int o = 0; o < O; o++) {
            double s = b ? b[o] : 0, mag = fabs(s);
            for (int i = 0; i < I; i++) {
                s += in[t * I + i] * w[(size_t)o * I + i];
                mag += fabs(in[t * I + i] * w[(size_t)o * I + i]);
            }
            out[t * O + o] = s;
            if (bound) bound[t * O + o] = gam(I + 1) * mag;
        }
}

/* The rotary frequency of pair i, written from the formulas of Hugging Face's RoPE init
 * (default and llama3): base^(-2i/d), then Llama 3's three bands by wavelength. */
static double ref_inv_freq(const gpt_config_t *c, int i, int hd) {
    double f = exp(-log((double)c->rope_theta) * (2.0 * i) / hd);
    if (!c->rope_llama3) return f;
    double wavelen = 2 * M_PI / f, old = c->rope_original_max_pos;
    double low_wl = old / c->rope_low_freq_factor, high_wl = old / c->rope_high_freq_factor;
    if (wavelen < high_wl) return f;
    if (wavelen > low_wl) return f / c->rope_factor;
    double smooth = (old / wavelen - c->rope_low_freq_factor) /
                    (c->rope_high_freq_factor - c->rope_low_freq_factor);
    return (1 - smooth) * f / c->rope_factor + smooth * f;
}

/*
 * Attention's input from qkv (T, D3) of layer l: each q and k head through its RMSNorm (Qwen3)
 * and the rotation y = x * cos + rotate_half(x) * sin at its position; v as is. Bound: the norm's
 * (ref_rms) carried through the rotation, the fp32 table's cos and sin each rounded once from
 * an angle whose double evaluation differs from this one by a few ulp of pos * inv_freq (1e-12
 * covers that at these positions), and x*c - y*s: three roundings.
 */
static void ref_qk_rope(double *out, double *bound, const ref_t *r, int l, const double *qkv,
                        int T) {
    const gpt_config_t *c = &r->m->cfg;
    int hd = r->hd, half = hd / 2, nh = r->H + r->Hkv;
    const double *qw = W(r, "model.layers.%d.self_attn.q_norm.weight", l);
    const double *kw = W(r, "model.layers.%d.self_attn.k_norm.weight", l);
    double n[64], nb[64];
    for (int t = 0; t < T; t++) {
        for (int j = 0; j < nh; j++) {
            const double *x = qkv + (size_t)t * r->D3 + j * hd;
            double *o = out + (size_t)t * r->D3 + j * hd, *ob = bound + (size_t)t * r->D3 + j * hd;
            if (c->qk_norm) {
                ref_rms(n, nb, x, j < r->H ? qw : kw, 1, hd, c->layer_norm_epsilon);
            } else {
                for (int i = 0; i < hd; i++) n[i] = x[i], nb[i] = 0;
            }
            for (int i = 0; i < half; i++) {
                double a = ref_inv_freq(c, i, hd) * t, cs = cos(a), sn = sin(a);
                double ec = TEST_U32 * fabs(cs) + 1e-12, es = TEST_U32 * fabs(sn) + 1e-12;
                o[i] = n[i] * cs - n[i + half] * sn;
                o[i + half] = n[i + half] * cs + n[i] * sn;
                double m1 = (fabs(n[i]) + nb[i]) * (fabs(cs) + ec) +
                            (fabs(n[i + half]) + nb[i + half]) * (fabs(sn) + es);
                double m2 = (fabs(n[i + half]) + nb[i + half]) * (fabs(cs) + ec) +
                            (fabs(n[i]) + nb[i]) * (fabs(sn) + es);
                ob[i] = nb[i] * fabs(cs) + nb[i + half] * fabs(sn) + fabs(n[i]) * ec +
                        fabs(n[i + half]) * es + gam(3) * m1;
                ob[i + half] = nb[i + half] * fabs(cs) + nb[i] * fabs(sn) + fabs(n[i + half]) * ec +
                               fabs(n[i]) * es + gam(3) * m2;
            }
        }
        for (int i = nh * hd; i < r->D3; i++)
            out[(size_t)t * r->D3 + i] = qkv[(size_t)t * r->D3 + i];
        for (int i = nh * hd; i < r->D3; i++) bound[(size_t)t * r->D3 + i] = 0;
    }
}

/*
 * Causal grouped-query attention of one sequence's q | k | v (T, D3): probabilities p/pb
 * (H,T,T), output y/yb (T, Dq). Query head h reads key/value head h / (H / Hkv). The bound is
 * test_gpt's: a score is hd products and the scale (2 more roundings for the fp32 scale), log p
 * moves by the scores' errors and the softmax's own roundings, and y = p @ v by gamma_T of its
 * terms plus sum_u |p_fp32 - p| |v| (att32: the kernel's probabilities; NULL: no bounds).
 */
static void ref_attention(double *p, double *pb, double *y, double *yb, const ref_t *r,
                          const double *qkr, const float *att32, int T) {
    int hd = r->hd, D3 = r->D3, Dq = r->Dq, grp = r->H / r->Hkv;
    double scale = 1.0 / sqrt((double)hd), sc[64], e[64];
    for (int h = 0; h < r->H; h++)
        for (int t = 0; t < T; t++) {
            int kvh = h / grp;
            double mx = -INFINITY, lo = INFINITY, E = 0, sum = 0;
            for (int u = 0; u <= t; u++) {
                double s = 0, mag = 0;
                for (int i = 0; i < hd; i++) {
                    double q = qkr[t * D3 + h * hd + i], k = qkr[u * D3 + Dq + kvh * hd + i];
                    s += q * k, mag += fabs(q * k);
                }
                sc[u] = s * scale, e[u] = gam(hd + 3) * mag * scale;
                mx = fmax(mx, sc[u]), lo = fmin(lo, sc[u]), E = fmax(E, e[u]);
            }
            double X = mx - lo + 2 * E;
            for (int u = 0; u <= t; u++) sum += exp(sc[u] - mx);
            size_t row = ((size_t)h * T + t) * T;
            for (int u = 0; u < T; u++) {
                double pu = u <= t ? exp(sc[u] - mx) / sum : 0;
                double eta = e[u] + E + 2 * TEST_U32 * X + 2 * test_logerr(TEST_EXPF_REL) +
                             test_logerr(test_gamma(t)) + 2 * test_logerr(TEST_U32) +
                             test_gamma64(T + 4);
                p[row + u] = pu;
                if (pb) pb[row + u] = u <= t ? pu * expm1(eta) : 0;
            }
            for (int i = 0; i < hd; i++) {
                double yy = 0, mag = 0, prop = 0;
                for (int u = 0; u <= t; u++) {
                    double v = qkr[u * D3 + Dq + r->Hkv * hd + kvh * hd + i];
                    yy += p[row + u] * v;
                    if (att32) {
                        mag += fabs(att32[row + u] * v);
                        prop += fabs(att32[row + u] - p[row + u]) * fabs(v);
                    }
                }
                y[t * Dq + h * hd + i] = yy;
                if (yb) yb[t * Dq + h * hd + i] = gam(T) * mag + prop + test_gamma64(T) * prop;
            }
        }
}

/* silu(gate) * up for in (T, 2I) = gate | up. fp32: expf(-g) (TEST_EXPF_REL), 1 + e, 1 / that,
 * g * s and * up: four roundings, each moving the result relatively by at most its own. */
static void ref_swiglu(double *out, double *bound, const double *in, int T, int I) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < I; i++) {
            double g = in[t * 2 * I + i], u = in[t * 2 * I + I + i];
            double o = g / (1 + exp(-g)) * u;
            out[t * I + i] = o;
            if (bound)
                bound[t * I + i] = fabs(o) * expm1(test_logerr(TEST_EXPF_REL) +
                                                   4 * test_logerr(TEST_U32) + test_gamma64(8));
        }
}

/* The whole forward of one sequence (T tokens) in double: final norm output lnf (T,C) and
 * logits (T,V). */
static void ref_forward(const ref_t *r, const int *tok, int T, double *lnf, double *logits) {
    const gpt_config_t *c = &r->m->cfg;
    int C = r->C, I = r->I;
    size_t big = (size_t)T * (r->D3 > 2 * I ? r->D3 : 2 * I) + (size_t)T * r->H * T;
    double *x = malloc(T * C * 8), *h = malloc(T * C * 8), *qkv = malloc(big * 8);
    double *qkr = malloc(big * 8), *bnd = malloc(big * 8), *p = malloc(big * 8);
    double *y = malloc(big * 8), *o = malloc(T * C * 8);
    const double *emb = W(r, "model.embed_tokens.weight", 0);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < C; i++) x[t * C + i] = emb[(size_t)tok[t] * C + i];
    for (int l = 0; l < c->n_layer; l++) {
        ref_rms(h, NULL, x, W(r, "model.layers.%d.input_layernorm.weight", l), T, C,
                c->layer_norm_epsilon);
        /* q, k, v separately, as HF's three Linear layers */
        const char *proj[3] = {"q", "k", "v"};
        int width[3] = {r->Dq, r->Hkv * r->hd, r->Hkv * r->hd}, at = 0;
        for (int k = 0; k < 3; k++) {
            char wn[96], bn[96];
            snprintf(wn, sizeof wn, "model.layers.%%d.self_attn.%s_proj.weight", proj[k]);
            snprintf(bn, sizeof bn, "model.layers.%%d.self_attn.%s_proj.bias", proj[k]);
            ref_linear(y, NULL, h, W(r, wn, l), W(r, bn, l), T, C, width[k]);
            for (int t = 0; t < T; t++)
                memcpy(qkv + (size_t)t * r->D3 + at, y + (size_t)t * width[k], width[k] * 8);
            at += width[k];
        }
        ref_qk_rope(qkr, bnd, r, l, qkv, T);
        ref_attention(p, NULL, y, NULL, r, qkr, NULL, T);
        ref_linear(o, NULL, y, W(r, "model.layers.%d.self_attn.o_proj.weight", l), NULL, T, r->Dq,
                   C);
        for (int i = 0; i < T * C; i++) x[i] += o[i];
        ref_rms(h, NULL, x, W(r, "model.layers.%d.post_attention_layernorm.weight", l), T, C,
                c->layer_norm_epsilon);
        double *gu = qkv; /* (T, 2I): gate | up */
        ref_linear(y, NULL, h, W(r, "model.layers.%d.mlp.gate_proj.weight", l), NULL, T, C, I);
        ref_linear(p, NULL, h, W(r, "model.layers.%d.mlp.up_proj.weight", l), NULL, T, C, I);
        for (int t = 0; t < T; t++) {
            memcpy(gu + (size_t)t * 2 * I, y + (size_t)t * I, I * 8);
            memcpy(gu + (size_t)t * 2 * I + I, p + (size_t)t * I, I * 8);
        }
        ref_swiglu(y, NULL, gu, T, I);
        ref_linear(o, NULL, y, W(r, "model.layers.%d.mlp.down_proj.weight", l), NULL, T, I, C);
        for (int i = 0; i < T * C; i++) x[i] += o[i];
    }
    ref_rms(lnf, NULL, x, W(r, "model.norm.weight", 0), T, C, c->layer_norm_epsilon);
    const double *head = c->tie_word_embeddings ? emb : W(r, "lm_head.weight", 0);
    ref_linear(logits, NULL, lnf, head, NULL, T, C, r->V);
    free(x), free(h), free(qkv), free(qkr), free(bnd), free(p), free(y), free(o);
}

/* ---- stage by stage against the fp32 model's saved activations -------------------------- */

static void to_double(double *d, const float *f, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = f[i];
}

/* got (n) against ref within bound, the first failures printed with layer and index. */
static void check_stage(const char *what, int layer, const float *got, const double *ref,
                        const double *bound, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs(got[i] - ref[i]) <= bound[i]) && bad++ < 5)
            TEST__FAIL("layer %d %s[%zu]: fp32 %.9g vs reference %.9g (diff %.3g > bound %.3g)",
                       layer, what, i, got[i], ref[i], fabs(got[i] - ref[i]), bound[i]);
}

static double *params_double(const gpt_t *m) {
    double *P = malloc(m->num_params * sizeof *P);
    to_double(P, m->params_mem, m->num_params);
    return P;
}

/* Every stage of sequence b of the model's last forward (with logits), each from the fp32
 * model's own input to it. A stage that reads a wrong tensor, position, head or sequence is off
 * by O(1). */
static void check_forward_stages(const gpt_t *m, int b) {
    double *P = params_double(m);
    ref_t r = ref_of(m, P);
    const gpt_config_t *c = &m->cfg;
    const gpt_acts_t *a = &m->acts;
    int T = m->T, C = r.C, I = r.I, V = r.V, D3 = r.D3, Dq = r.Dq, H = r.H;
    size_t N = (size_t)m->B * T, bt = (size_t)b * T;
    size_t big = (size_t)T * (D3 + 2 * I + V + C + Dq) + (size_t)H * T * T;
    double *in = malloc(big * 8), *ref = malloc(big * 8), *bnd = malloc(big * 8);
    double *pr = malloc(big * 8), *pb = malloc(big * 8);
    float eps = c->layer_norm_epsilon;
    const double *emb = W(&r, "model.embed_tokens.weight", 0);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < C; i++)
            ref[t * C + i] = emb[(size_t)m->inputs[bt + t] * C + i], bnd[t * C + i] = 0;
    check_stage("embed", -1, a->encoded + bt * C, ref, bnd, (size_t)T * C);
    const float *res = a->encoded + bt * C;
#define ACT(f, width) (a->f + (size_t)l * N * (width) + bt * (width))
    for (int l = 0; l < c->n_layer; l++) {
        to_double(in, res, (size_t)T * C);
        ref_rms(ref, bnd, in, W(&r, "model.layers.%d.input_layernorm.weight", l), T, C, eps);
        check_stage("input_layernorm", l, ACT(ln1, C), ref, bnd, (size_t)T * C);
        /* q | k | v: the three HF projections side by side */
        to_double(in, ACT(ln1, C), (size_t)T * C);
        const char *proj[3] = {"q", "k", "v"};
        int width[3] = {Dq, r.Hkv * r.hd, r.Hkv * r.hd}, at = 0;
        for (int k = 0; k < 3; k++) {
            char wn[96], bn[96];
            snprintf(wn, sizeof wn, "model.layers.%%d.self_attn.%s_proj.weight", proj[k]);
            snprintf(bn, sizeof bn, "model.layers.%%d.self_attn.%s_proj.bias", proj[k]);
            CHECK_EQ(W(&r, bn, l) != NULL, c->attn_bias);
            ref_linear(pr, pb, in, W(&r, wn, l), W(&r, bn, l), T, C, width[k]);
            for (int t = 0; t < T; t++) {
                memcpy(ref + (size_t)t * D3 + at, pr + (size_t)t * width[k], width[k] * 8);
                memcpy(bnd + (size_t)t * D3 + at, pb + (size_t)t * width[k], width[k] * 8);
            }
            at += width[k];
        }
        check_stage("q|k|v_proj", l, ACT(qkv, D3), ref, bnd, (size_t)T * D3);
        to_double(in, ACT(qkv, D3), (size_t)T * D3);
        ref_qk_rope(ref, bnd, &r, l, in, T);
        check_stage("rope(q|k)|v", l, ACT(qkr, D3), ref, bnd, (size_t)T * D3);
        to_double(in, ACT(qkr, D3), (size_t)T * D3);
        const float *att = a->att + ((size_t)l * m->B + b) * H * T * T;
        ref_attention(pr, pb, ref, bnd, &r, in, att, T);
        check_stage("att", l, att, pr, pb, (size_t)H * T * T);
        check_stage("attention", l, ACT(atty, Dq), ref, bnd, (size_t)T * Dq);
        to_double(in, ACT(atty, Dq), (size_t)T * Dq);
        ref_linear(ref, bnd, in, W(&r, "model.layers.%d.self_attn.o_proj.weight", l), NULL, T, Dq,
                   C);
        check_stage("o_proj", l, ACT(attproj, C), ref, bnd, (size_t)T * C);
        for (size_t i = 0; i < (size_t)T * C; i++) {
            ref[i] = (double)res[i] + ACT(attproj, C)[i];
            bnd[i] = gam(1) * fabs(ref[i]);
        }
        check_stage("residual", l, ACT(residual2, C), ref, bnd, (size_t)T * C);
        to_double(in, ACT(residual2, C), (size_t)T * C);
        ref_rms(ref, bnd, in, W(&r, "model.layers.%d.post_attention_layernorm.weight", l), T, C,
                eps);
        check_stage("post_attention_layernorm", l, ACT(ln2, C), ref, bnd, (size_t)T * C);
        to_double(in, ACT(ln2, C), (size_t)T * C);
        ref_linear(pr, pb, in, W(&r, "model.layers.%d.mlp.gate_proj.weight", l), NULL, T, C, I);
        for (int t = 0; t < T; t++) {
            memcpy(ref + (size_t)t * 2 * I, pr + (size_t)t * I, I * 8);
            memcpy(bnd + (size_t)t * 2 * I, pb + (size_t)t * I, I * 8);
        }
        ref_linear(pr, pb, in, W(&r, "model.layers.%d.mlp.up_proj.weight", l), NULL, T, C, I);
        for (int t = 0; t < T; t++) {
            memcpy(ref + (size_t)t * 2 * I + I, pr + (size_t)t * I, I * 8);
            memcpy(bnd + (size_t)t * 2 * I + I, pb + (size_t)t * I, I * 8);
        }
        check_stage("gate|up_proj", l, ACT(fch, 2 * I), ref, bnd, (size_t)T * 2 * I);
        to_double(in, ACT(fch, 2 * I), (size_t)T * 2 * I);
        ref_swiglu(ref, bnd, in, T, I);
        check_stage("silu(gate)*up", l, ACT(fch_gelu, I), ref, bnd, (size_t)T * I);
        to_double(in, ACT(fch_gelu, I), (size_t)T * I);
        ref_linear(ref, bnd, in, W(&r, "model.layers.%d.mlp.down_proj.weight", l), NULL, T, I, C);
        check_stage("down_proj", l, ACT(fcproj, C), ref, bnd, (size_t)T * C);
        for (size_t i = 0; i < (size_t)T * C; i++) {
            ref[i] = (double)ACT(residual2, C)[i] + ACT(fcproj, C)[i];
            bnd[i] = gam(1) * fabs(ref[i]);
        }
        check_stage("residual", l, ACT(residual3, C), ref, bnd, (size_t)T * C);
        res = ACT(residual3, C);
    }
#undef ACT
    to_double(in, res, (size_t)T * C);
    ref_rms(ref, bnd, in, W(&r, "model.norm.weight", 0), T, C, eps);
    check_stage("norm", -1, a->lnf + bt * C, ref, bnd, (size_t)T * C);
    to_double(in, a->lnf + bt * C, (size_t)T * C);
    const double *head = c->tie_word_embeddings ? emb : W(&r, "lm_head.weight", 0);
    CHECK_EQ(W(&r, "lm_head.weight", 0) == NULL, c->tie_word_embeddings);
    ref_linear(ref, bnd, in, head, NULL, T, C, V);
    check_stage("logits", -1, a->logits + bt * V, ref, bnd, (size_t)T * V);
    free(in), free(ref), free(bnd), free(pr), free(pb), free(P);
}

enum { B = 2, T = 6 };
static const int inputs[B * T] = {1, 7, 3, 3, 10, 0, 0, 2, 9, 4, 6, 5};
static const int targets[B * T] = {7, 3, 3, 10, 0, 5, 2, 9, 4, 6, 5, -1};
static const float mask[B * T] = {0, 1, 1, 1, 1, 1, 1, 0.5f, 1, 2, 1, 1};
static const int head_idx[3] = {5, 9, 5}; /* position 5 scored twice */
static const float head_r[3] = {0.7f, -1.3f, 0.4f};

static const gpt_config_t *const all_cfgs[] = {&cfg_llama, &cfg_qwen2, &cfg_qwen3};

/* Every stage for each sequence of a batch and for a sequence alone. */
static void test_forward_matches_reference(void) {
    for (int k = 0; k < 3; k++) {
        gpt_t *m = make_model(all_cfgs[k], 5 + k);
        CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
        for (int b = 0; b < B; b++) check_forward_stages(m, b);
        CHECK_OK(gpt_forward(m, inputs + T, 1, T, GPT_FWD_LOGITS));
        check_forward_stages(m, 0);
        gpt_destroy(&m);
    }
}

/* The objective in double: masked mean cross-entropy and/or r . head values, through the whole
 * reference forward on parameters P. */
static double ref_objective(const gpt_t *m, const double *P, int use_lm, int use_head) {
    ref_t r = ref_of(m, P);
    int V = r.V, C = r.C;
    double *lnf = malloc((size_t)B * T * C * 8), *logits = malloc((size_t)B * T * V * 8);
    for (int b = 0; b < B; b++)
        ref_forward(&r, inputs + b * T, T, lnf + (size_t)b * T * C, logits + (size_t)b * T * V);
    double s = 0;
    if (use_lm) {
        double num = 0, den = 0;
        for (int i = 0; i < B * T; i++) {
            if (targets[i] < 0 || mask[i] == 0) continue;
            const double *x = logits + (size_t)i * V;
            double mx = -INFINITY, z = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, x[v]);
            for (int v = 0; v < V; v++) z += exp(x[v] - mx);
            num += mask[i] * (log(z) + mx - x[targets[i]]), den += mask[i];
        }
        s += num / den;
    }
    if (use_head) {
        const double *w = W(&r, "score.weight", 0), *bias = W(&r, "score.bias", 0);
        for (int i = 0; i < 3; i++) {
            double v = bias[0];
            for (int c = 0; c < C; c++) v += lnf[(size_t)head_idx[i] * C + c] * w[c];
            s += head_r[i] * v;
        }
    }
    free(lnf), free(logits);
    return s;
}

/*
 * gpt_backward's gradient of every parameter against central differences of the double
 * reference: with h = 1e-4 the truncation h^2/6 f''' is below 2e-9 |f'''| and the reference's
 * rounding (1e-15 relative) adds 1e-11, so num is the true derivative to ~1e-8 for O(1) f'''.
 * The fp32 gradient differs from it by the rounding of the fp32 forward and backward: every
 * stage is within ~1e-6 relative of what it combines (the stage checks above bound the
 * forward's), on O(1) values through ~30 stages, so 1e-4 absolute plus 1e-3 relative is ~100
 * times that, while a wrong or missing gradient term is off by O(|f'|).
 */
static void grad_check(const gpt_config_t *cfg, uint64_t seed, int use_lm, int use_head) {
    gpt_t *m = make_model(cfg, seed);
    float loss, v[3];
    CHECK_OK(gpt_forward(m, inputs, B, T, use_lm ? GPT_FWD_LOGITS : 0));
    if (use_lm) CHECK_OK(gpt_lm_loss(m, targets, mask, &loss, 1));
    if (use_head) CHECK_OK(gpt_head_forward(m, head_idx, 3, v));
    CHECK_OK(gpt_grads_alloc(m));
    gpt_zero_grad(m);
    CHECK_OK(gpt_backward(m, use_lm, use_head ? head_r : NULL));
    double *P = params_double(m);
    /* the fp32 objective against the whole double reference (not stage by stage): the stages'
     * bounds are ~1e-6 relative on O(1) values and do not compose into an element-wise bound
     * (test_gen says why); 1e-4 is the gradient check's allowance below, and a reference that
     * computed another network would be off by O(1) */
    double f0 = ref_objective(m, P, use_lm, use_head), f32 = 0;
    if (use_lm) f32 += loss;
    if (use_head)
        for (int i = 0; i < 3; i++) f32 += (double)head_r[i] * v[i];
    CHECK_NEAR(f32, f0, 1e-4 * (1 + fabs(f0)));
    const double h = 1e-4;
    int bad = 0;
    size_t checked = 0;
    double max_g = 0;
    for (int ti = 0; ti < m->n_tensors && bad < 10; ti++) {
        const gpt_tensor_t *t = &m->tensors[ti];
        for (size_t j = 0; j < t->size && bad < 10; j++) {
            double *p = P + t->offset + j, keep = *p;
            *p = keep + h;
            double fp = ref_objective(m, P, use_lm, use_head);
            *p = keep - h;
            double fm = ref_objective(m, P, use_lm, use_head);
            *p = keep;
            double num = (fp - fm) / (2 * h), ana = m->grads_mem[t->offset + j];
            max_g = fmax(max_g, fabs(num));
            checked++;
            if (!(fabs(num - ana) <= 1e-4 + 1e-3 * fabs(num))) {
                TEST__FAIL("%s: %s[%zu]: analytic %.8g vs numeric %.8g",
                           cfg == &cfg_llama   ? "llama"
                           : cfg == &cfg_qwen2 ? "qwen2"
                                               : "qwen3",
                           t->name, j, ana, num);
                bad++;
            }
        }
    }
    CHECK_EQ(checked, (long long)m->num_params);
    CHECK(max_g > 0.05); /* the check exercised real gradients, not zeros */
    free(P);
    gpt_destroy(&m);
}

static void test_grad_lm_loss(void) {
    for (int k = 0; k < 3; k++) grad_check(all_cfgs[k], 11 + k, 1, 0);
}

static void test_grad_head(void) {
    for (int k = 0; k < 3; k++) grad_check(all_cfgs[k], 21 + k, 0, 1);
}

static void test_grad_both(void) {
    grad_check(&cfg_qwen3, 31, 1, 1);
}

/* One pass (forward, loss, head, backward) of a model large enough that every kernel takes its
 * threaded path; logits, loss, values and gradients copied out. */
static void threaded_pass(gpt_t *m, const int *in, const int *tg, int Bn, int Tn, float *out,
                          float *g) {
    float loss, v[2];
    int idx[2] = {5, Bn * Tn - 1};
    const float dv[2] = {1.0f, -0.5f};
    size_t NV = (size_t)Bn * Tn * m->cfg.vocab_size;
    CHECK_OK(gpt_forward(m, in, Bn, Tn, GPT_FWD_LOGITS));
    memcpy(out, m->acts.logits, NV * sizeof(float));
    CHECK_OK(gpt_lm_loss(m, tg, NULL, &loss, 1));
    CHECK_OK(gpt_head_forward(m, idx, 2, v));
    CHECK_OK(gpt_grads_alloc(m));
    gpt_zero_grad(m);
    CHECK_OK(gpt_backward(m, 1, dv));
    out[NV] = loss, out[NV + 1] = v[0], out[NV + 2] = v[1];
    memcpy(g, m->grads_mem, m->num_params * sizeof(float));
}

/* The exact kernels promise the same bits on any thread count: 1 and 2 threads give the same
 * logits, loss, head values and gradients, with every flag of the family on. */
static void test_threads_same_bits(void) {
    gpt_config_t c = cfg_qwen3;
    c.n_layer = 1, c.n_embd = 128, c.n_head = 4, c.n_kv_head = 2, c.head_dim = 48;
    c.n_inner = 160, c.vocab_size = 64, c.n_positions = 128, c.attn_bias = 1;
    gpt_t *m = make_model(&c, 3);
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] *= 0.2f;
    enum { TB = 2, TT = 128 };
    int *in = malloc(TB * TT * sizeof(int)), *tg = malloc(TB * TT * sizeof(int));
    for (int i = 0; i < TB * TT; i++) in[i] = (i * 13) % 64, tg[i] = (i * 13 + 13) % 64;
    size_t no = (size_t)TB * TT * c.vocab_size + 3;
    float *o[2], *g[2];
    int keep = ops_get_threads();
    CHECK_OK(ops_set_gemm("exact")); /* the promise is the exact products' (not OpenBLAS's) */
    for (int r = 0; r < 2; r++) {
        o[r] = malloc(no * sizeof(float)), g[r] = malloc(m->num_params * sizeof(float));
        ops_set_threads(r + 1);
        threaded_pass(m, in, tg, TB, TT, o[r], g[r]);
    }
    ops_set_threads(keep);
    CHECK_EQ(memcmp(o[0], o[1], no * sizeof(float)), 0);
    CHECK_EQ(memcmp(g[0], g[1], m->num_params * sizeof(float)), 0);
    /* and a sequence alone gives the bits it has in the batch */
    CHECK_OK(gpt_forward(m, in + TT, 1, TT, GPT_FWD_LOGITS));
    CHECK_EQ(memcmp(m->acts.logits, o[0] + (size_t)TT * c.vocab_size,
                    (size_t)TT * c.vocab_size * sizeof(float)),
             0);
    ops_set_gemm(NULL);
    for (int r = 0; r < 2; r++) free(o[r]), free(g[r]);
    free(in), free(tg);
    gpt_destroy(&m);
}

static void test_tensor_table_and_init(void) {
    for (int k = 0; k < 3; k++) {
        const gpt_config_t *c = all_cfgs[k];
        gpt_t *m = gpt_new(c);
        int L = c->n_layer, per = 9 + 3 * c->attn_bias + 2 * c->qk_norm;
        CHECK_EQ(m->n_tensors, 2 + L * per + !c->tie_word_embeddings + 2);
        size_t total = 0;
        for (int i = 0; i < m->n_tensors; i++) {
            total += m->tensors[i].size;
            CHECK_EQ(m->tensors[i].decay, m->tensors[i].ndim == 2);
        }
        CHECK_EQ(total, m->num_params); /* the HF view covers the arena exactly once */
        int hd = gpt_head_dim(c);
        const gpt_tensor_t *q = gpt_tensor_find(m, "model.layers.1.self_attn.q_proj.weight");
        const gpt_tensor_t *kk = gpt_tensor_find(m, "model.layers.1.self_attn.k_proj.weight");
        const gpt_tensor_t *o = gpt_tensor_find(m, "model.layers.0.self_attn.o_proj.weight");
        CHECK(q && q->shape[0] == c->n_head * hd && q->shape[1] == c->n_embd);
        CHECK(kk && kk->shape[0] == c->n_kv_head * hd && kk->offset == q->offset + q->size);
        CHECK(o && o->shape[0] == c->n_embd && o->shape[1] == c->n_head * hd);
        gpt_init_weights(m, 7);
        for (int i = 0; i < m->n_tensors; i++) {
            const gpt_tensor_t *t = &m->tensors[i];
            const float *p = m->params_mem + t->offset;
            if (t->ndim == 1)
                for (size_t j = 0; j < t->size; j++)
                    if (p[j] != (strstr(t->name, "norm") ? 1.0f : 0.0f))
                        TEST__FAIL("%s[%zu] = %g after init", t->name, j, p[j]);
        }
        /* with a scalar head, the same arena with the head's tensors after it */
        gpt_config_t nh = *c;
        nh.scalar_head = 0;
        gpt_t *plain = gpt_new(&nh);
        for (int i = 0; i < plain->n_tensors; i++) {
            const gpt_tensor_t *t = gpt_tensor_find(m, plain->tensors[i].name);
            CHECK(t && t->offset == plain->tensors[i].offset && t->size == plain->tensors[i].size);
        }
        CHECK(gpt_tensor_find(m, "score.weight")->offset >= plain->num_params);
        gpt_destroy(&plain);
        adamw_group_t g[GPT_NKINDS];
        int n = gpt_adamw_groups(m, g);
        size_t covered = 0;
        for (int i = 0; i < n; i++) {
            CHECK_EQ(g[i].offset, covered);
            covered += g[i].len;
        }
        CHECK_EQ(covered, m->num_params);
        for (int ti = 0; ti < m->n_tensors; ti++)
            for (int i = 0; i < n; i++)
                if (m->tensors[ti].offset >= g[i].offset &&
                    m->tensors[ti].offset < g[i].offset + g[i].len &&
                    g[i].decay != m->tensors[ti].decay)
                    TEST__FAIL("%s in a group with the wrong decay", m->tensors[ti].name);
        gpt_destroy(&m);
    }
    /* every weight matrix N(0, 0.02): statistical, on a larger model */
    gpt_config_t big = cfg_llama;
    big.n_embd = 64, big.vocab_size = 500;
    gpt_t *mb = gpt_new(&big);
    gpt_init_weights(mb, 1);
    const gpt_tensor_t *d = gpt_tensor_find(mb, "model.layers.1.mlp.down_proj.weight");
    const gpt_tensor_t *e = gpt_tensor_find(mb, "model.embed_tokens.weight");
    for (int k = 0; k < 2; k++) {
        const gpt_tensor_t *t = k ? d : e;
        double s2 = 0;
        for (size_t i = 0; i < t->size; i++)
            s2 += (double)mb->params_mem[t->offset + i] * mb->params_mem[t->offset + i];
        /* the sample std of n >= 1536 normal draws has relative sd 1/sqrt(2n) <= 1.8%; 10% is
         * more than five of those */
        CHECK_NEAR(sqrt(s2 / t->size), 0.02, 0.002);
    }
    gpt_destroy(&mb);
}

static void test_bad_configs(void) {
    gpt_config_t c = cfg_llama;
    c.n_kv_head = 3;
    CHECK(gpt_new(&c) == NULL);
    CHECK(strstr(rl_errmsg(), "num_key_value_heads") != NULL);
    c = cfg_qwen3;
    c.head_dim = 5;
    CHECK(gpt_new(&c) == NULL);
    CHECK(strstr(rl_errmsg(), "even") != NULL);
    c = cfg_llama;
    c.n_inner = 0;
    CHECK(gpt_new(&c) == NULL);
    c = cfg_llama;
    c.rope_low_freq_factor = 5.0f; /* above high_freq_factor */
    CHECK(gpt_new(&c) == NULL);
    CHECK(strstr(rl_errmsg(), "rope_scaling") != NULL);
    c = cfg_llama;
    c.arch = 9;
    CHECK(gpt_new(&c) == NULL);
    /* a too-long sequence and a bad token id are refused as for GPT-2 */
    gpt_t *m = make_model(&cfg_qwen2, 1);
    int *longer = calloc(17, sizeof(int)), bad[2] = {3, 11};
    CHECK_ERR(gpt_forward(m, longer, 1, 17, 0), RL_EINVAL);
    CHECK_ERR(gpt_forward(m, bad, 1, 2, 0), RL_EINVAL);
    free(longer);
    gpt_destroy(&m);
}

/* The matrix-product count: 6 * (weight-matrix parameters) * tokens plus attention's two
 * products per head, forward and backward, at SmolLM2-135M's widths. */
static void test_flops(void) {
    /* SmolLM2-135M's widths; 2 of its 30 layers and a smaller vocabulary, to keep it small */
    gpt_config_t c = {.n_layer = 2,
                      .n_head = 9,
                      .n_embd = 576,
                      .vocab_size = 4096,
                      .n_positions = 8192,
                      .layer_norm_epsilon = 1e-5f,
                      .arch = GPT_ARCH_LLAMA,
                      .n_kv_head = 3,
                      .n_inner = 1536,
                      .tie_word_embeddings = 1,
                      .rope_theta = 100000.0f};
    gpt_t *m = gpt_new(&c);
    CHECK(m != NULL);
    if (!m) return;
    int Bn = 4, Tn = 256;
    /* the weights a token's products touch: every matrix but the embedding, plus the tied head */
    double matrices = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].ndim == 2) matrices += (double)m->tensors[i].size;
    double want = 6.0 * matrices * Bn * Tn /* (embedding table = LM head, counted once) */
                  + 3.0 * 4.0 * c.n_layer * Bn * (double)Tn * Tn * c.n_head * (c.n_embd / c.n_head);
    CHECK_NEAR(gpt_train_flops(&c, Bn, Tn), want, 1e-9 * want);
    gpt_destroy(&m);
}

int main(void) {
    ops_set_threads(2);
    RUN(test_forward_matches_reference);
    RUN(test_grad_lm_loss);
    RUN(test_grad_head);
    RUN(test_grad_both);
    RUN(test_threads_same_bits);
    RUN(test_tensor_table_and_init);
    RUN(test_bad_configs);
    RUN(test_flops);
    return TEST_REPORT();
}
