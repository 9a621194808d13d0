/*
 * test_gpt.c - the whole model: forward against an independent double-precision reference
 * written from the Hugging Face tensor names, finite-difference gradients of every parameter
 * (LM loss with a mask, scalar head, both at once), AdamW on the model, NaN/Inf detection.
 */
#include "nn/adamw.h"
#include "nn/gpt.h"
#include "nn/ops.h"
#include "base/rng.h"
#include "test.h"

static const gpt_config_t tiny = {.n_layer = 2,
                                  .n_head = 2,
                                  .n_embd = 8,
                                  .vocab_size = 11,
                                  .n_positions = 8,
                                  .layer_norm_epsilon = 1e-5f,
                                  .scalar_head = 1};

/* A model whose weights are large enough (std ~0.3) that every path carries real gradient. */
static gpt_t *tiny_model(uint64_t seed) {
    gpt_t *m = gpt_new(&tiny);
    if (!m) return NULL;
    gpt_init_weights(m, seed);
    for (size_t i = 0; i < m->num_params; i++)
        m->params_mem[i] += 0.3f * rng_normal(seed + 1, 99, i);
    return m;
}

static const float *T_(const gpt_t *m, const char *name) {
    const gpt_tensor_t *t = gpt_tensor_find(m, name);
    if (!t) {
        fprintf(stderr, "no tensor %s\n", name);
        abort();
    }
    return m->params_mem + t->offset;
}

static void ref_layernorm(double *out, const double *x, const float *w, const float *b, int C) {
    double mean = 0, var = 0;
    for (int c = 0; c < C; c++) mean += x[c];
    mean /= C;
    for (int c = 0; c < C; c++) var += (x[c] - mean) * (x[c] - mean);
    var /= C;
    for (int c = 0; c < C; c++) out[c] = (x[c] - mean) / sqrt(var + 1e-5) * w[c] + b[c];
}

/* out(T,O) = in(T,I) @ w(I,O) + b */
static void ref_linear(double *out, const double *in, const float *w, const float *b, int T, int I,
                       int O) {
    for (int t = 0; t < T; t++)
        for (int o = 0; o < O; o++) {
            double s = b[o];
            for (int i = 0; i < I; i++) s += in[t * I + i] * w[i * O + o];
            out[t * O + o] = s;
        }
}

/* Plain GPT-2 forward of one sequence, in double: logits (T,V) and final hidden state (T,C). */
static void ref_forward(const gpt_t *m, const int *tok, int T, double *logits, double *hid) {
    int C = m->cfg.n_embd, V = m->cfg.vocab_size, H = m->cfg.n_head, hs = C / H;
    double *x = calloc(T * C, 8), *h = calloc(T * C, 8), *qkv = calloc(T * 3 * C, 8);
    double *y = calloc(T * C, 8), *f = calloc(T * 4 * C, 8), *p = calloc(T * 4 * C, 8);
    const float *wte = T_(m, "wte.weight"), *wpe = T_(m, "wpe.weight");
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) x[t * C + c] = wte[tok[t] * C + c] + wpe[t * C + c];
    for (int l = 0; l < m->cfg.n_layer; l++) {
        char n1[64], n2[64];
#define W(suffix)  (snprintf(n1, sizeof n1, "h.%d.%s", l, suffix), T_(m, n1))
#define W2(suffix) (snprintf(n2, sizeof n2, "h.%d.%s", l, suffix), T_(m, n2))
        for (int t = 0; t < T; t++)
            ref_layernorm(h + t * C, x + t * C, W("ln_1.weight"), W2("ln_1.bias"), C);
        ref_linear(qkv, h, W("attn.c_attn.weight"), W2("attn.c_attn.bias"), T, C, 3 * C);
        for (int hd = 0; hd < H; hd++)
            for (int t = 0; t < T; t++) {
                double sc[64], mx = -1e300, sum = 0;
                for (int u = 0; u <= t; u++) {
                    double s = 0;
                    for (int i = 0; i < hs; i++)
                        s += qkv[t * 3 * C + hd * hs + i] * qkv[u * 3 * C + C + hd * hs + i];
                    sc[u] = s / sqrt((double)hs);
                    mx = fmax(mx, sc[u]);
                }
                for (int u = 0; u <= t; u++) sum += (sc[u] = exp(sc[u] - mx));
                for (int i = 0; i < hs; i++) {
                    double s = 0;
                    for (int u = 0; u <= t; u++)
                        s += sc[u] / sum * qkv[u * 3 * C + 2 * C + hd * hs + i];
                    y[t * C + hd * hs + i] = s;
                }
            }
        ref_linear(h, y, W("attn.c_proj.weight"), W2("attn.c_proj.bias"), T, C, C);
        for (int i = 0; i < T * C; i++) x[i] += h[i];
        for (int t = 0; t < T; t++)
            ref_layernorm(h + t * C, x + t * C, W("ln_2.weight"), W2("ln_2.bias"), C);
        ref_linear(f, h, W("mlp.c_fc.weight"), W2("mlp.c_fc.bias"), T, C, 4 * C);
        for (int i = 0; i < T * 4 * C; i++)
            f[i] = 0.5 * f[i] * (1 + tanh(sqrt(2 / M_PI) * (f[i] + 0.044715 * pow(f[i], 3))));
        ref_linear(h, f, W("mlp.c_proj.weight"), W2("mlp.c_proj.bias"), T, 4 * C, C);
        for (int i = 0; i < T * C; i++) x[i] += h[i];
#undef W
#undef W2
    }
    for (int t = 0; t < T; t++)
        ref_layernorm(hid + t * C, x + t * C, T_(m, "ln_f.weight"), T_(m, "ln_f.bias"), C);
    for (int t = 0; t < T; t++)
        for (int v = 0; v < V; v++) {
            double s = 0;
            for (int c = 0; c < C; c++) s += hid[t * C + c] * wte[v * C + c];
            logits[t * V + v] = s;
        }
    free(x), free(h), free(qkv), free(y), free(f), free(p);
}

enum { B = 2, T = 5 };
static const int inputs[B * T] = {1, 7, 3, 3, 10, 0, 2, 9, 4, 6};
static const int targets[B * T] = {7, 3, 3, 10, 5, 2, 9, 4, 6, -1};
static const float mask[B * T] = {0, 1, 1, 1, 1, 1, 0.5f, 1, 2, 1};
static const int head_idx[4] = {4, 8, 2, 4}; /* position 4 scored twice */
static const float head_r[4] = {0.7f, -1.3f, 0.4f, 0.25f};

static void test_forward_matches_reference(void) {
    gpt_t *m = tiny_model(5);
    int C = tiny.n_embd, V = tiny.vocab_size;
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    double *logits = calloc(T * V, 8), *hid = calloc(T * C, 8);
    double worst = 0;
    for (int b = 0; b < B; b++) {
        ref_forward(m, inputs + b * T, T, logits, hid);
        for (int i = 0; i < T * V; i++)
            worst = fmax(worst, fabs(logits[i] - m->acts.logits[b * T * V + i]));
        for (int i = 0; i < T * C; i++)
            worst = fmax(worst, fabs(hid[i] - m->acts.lnf[b * T * C + i]));
    }
    CHECK_NEAR(worst, 0, 1e-4);
    /* the same sequence alone (B=1) gives the same logits: batch rows do not interact */
    float *row1 = malloc(T * V * sizeof(float));
    memcpy(row1, m->acts.logits + T * V, T * V * sizeof(float));
    CHECK_OK(gpt_forward(m, inputs + T, 1, T, GPT_FWD_LOGITS));
    double d = 0;
    for (int i = 0; i < T * V; i++) d = fmax(d, fabs(row1[i] - m->acts.logits[i]));
    CHECK_NEAR(d, 0, 1e-5);
    free(logits), free(hid), free(row1);
    gpt_destroy(&m);
    CHECK(m == NULL);
}

/* The scalar the gradient checks differentiate: masked LM loss and/or r . head values. */
static double objective(gpt_t *m, int use_lm, int use_head) {
    double s = 0;
    gpt_forward(m, inputs, B, T, use_lm ? GPT_FWD_LOGITS : 0);
    if (use_lm) {
        float loss;
        gpt_lm_loss(m, targets, mask, &loss, 0);
        s += loss;
    }
    if (use_head) {
        float v[4];
        gpt_head_forward(m, head_idx, 4, v);
        for (int i = 0; i < 4; i++) s += (double)head_r[i] * v[i];
    }
    return s;
}

/* Central differences over every parameter of the tiny model against gpt_backward. */
static void grad_check(int use_lm, int use_head) {
    gpt_t *m = tiny_model(11);
    CHECK_OK(gpt_forward(m, inputs, B, T, use_lm ? GPT_FWD_LOGITS : 0));
    float loss, v[4];
    if (use_lm) CHECK_OK(gpt_lm_loss(m, targets, mask, &loss, 1));
    if (use_head) CHECK_OK(gpt_head_forward(m, head_idx, 4, v));
    CHECK_OK(gpt_grads_alloc(m));
    gpt_zero_grad(m);
    CHECK_OK(gpt_backward(m, use_lm, use_head ? head_r : NULL));
    const float eps = 1e-2f;
    int bad = 0, checked = 0;
    double max_g = 0;
    for (int ti = 0; ti < m->n_tensors && bad < 10; ti++) {
        const gpt_tensor_t *t = &m->tensors[ti];
        for (size_t j = 0; j < t->size && bad < 10; j++) {
            float *p = m->params_mem + t->offset + j, keep = *p;
            *p = keep + eps;
            double lp = objective(m, use_lm, use_head);
            *p = keep - eps;
            double lm = objective(m, use_lm, use_head);
            *p = keep;
            double num = (lp - lm) / (2 * eps), ana = m->grads_mem[t->offset + j];
            max_g = fmax(max_g, fabs(num));
            checked++;
            if (!(fabs(num - ana) <= 5e-4 + 1e-2 * fabs(num))) {
                TEST__FAIL("%s[%zu]: analytic %.6g vs numeric %.6g", t->name, j, ana, num);
                bad++;
            }
        }
    }
    CHECK_EQ(checked, (long long)m->num_params);
    CHECK(max_g > 0.05); /* the check exercised real gradients, not zeros */
    gpt_destroy(&m);
}

static void test_grad_lm_loss(void) {
    grad_check(1, 0);
}
static void test_grad_scalar_head(void) {
    grad_check(0, 1);
}
static void test_grad_both(void) {
    grad_check(1, 1);
}

/* More scored positions than B*T (processed in chunks), with repeats: values are the plain dot
 * products, and the head's gradients are the plain sums over every scored position. */
static void test_head_many_positions(void) {
    gpt_t *m = tiny_model(21);
    int C = tiny.n_embd, n = 25, idx[25];
    float v[25], dv[25];
    for (int i = 0; i < n; i++) idx[i] = (i * 7) % (B * T), dv[i] = 0.1f * (i % 5) - 0.2f;
    CHECK_OK(gpt_forward(m, inputs, B, T, 0));
    CHECK_OK(gpt_head_forward(m, idx, n, v));
    const float *w = T_(m, "score.weight"), *b = T_(m, "score.bias");
    double dw0 = 0, db = 0;
    for (int i = 0; i < n; i++) {
        double s = b[0];
        for (int c = 0; c < C; c++) s += (double)m->acts.lnf[idx[i] * C + c] * w[c];
        CHECK_NEAR(v[i], s, 1e-5);
        dw0 += (double)dv[i] * m->acts.lnf[idx[i] * C + 0];
        db += dv[i];
    }
    CHECK_OK(gpt_grads_alloc(m));
    gpt_zero_grad(m);
    CHECK_OK(gpt_backward(m, 0, dv));
    CHECK_NEAR(m->grads_mem[gpt_tensor_find(m, "score.weight")->offset], dw0, 1e-5);
    CHECK_NEAR(m->grads_mem[gpt_tensor_find(m, "score.bias")->offset], db, 1e-5);
    gpt_destroy(&m);
}

/* A model big enough that every kernel takes its threaded path (B*T*C = 32768): gradients
 * with 2 threads equal those with 1, and finite differences confirm a sample of them. */
static void test_threaded_sizes(void) {
    gpt_config_t c = {1, 4, 128, 64, 128, 1e-5f, 1};
    enum { Bb = 2, Tt = 128, Nn = Bb * Tt };
    gpt_t *m = gpt_new(&c);
    gpt_init_weights(m, 3);
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] += 0.05f * rng_normal(4, 1, i);
    int *in = malloc(Nn * sizeof(int)), *tg = malloc(Nn * sizeof(int)), idx[2] = {5, 200};
    for (int i = 0; i < Nn; i++) in[i] = (i * 13) % 64, tg[i] = (i * 13 + 13) % 64;
    float dv[2] = {1.0f, -0.5f}, *g[2];
    double l[2];
    for (int r = 0; r < 2; r++) {
        ops_set_threads(r + 1);
        float loss, v[2];
        CHECK_OK(gpt_forward(m, in, Bb, Tt, GPT_FWD_LOGITS));
        CHECK_OK(gpt_lm_loss(m, tg, NULL, &loss, 1));
        CHECK_OK(gpt_head_forward(m, idx, 2, v));
        CHECK_OK(gpt_grads_alloc(m));
        gpt_zero_grad(m);
        CHECK_OK(gpt_backward(m, 1, dv));
        l[r] = loss + dv[0] * v[0] + dv[1] * v[1];
        g[r] = malloc(m->num_params * sizeof(float));
        memcpy(g[r], m->grads_mem, m->num_params * sizeof(float));
    }
    CHECK_NEAR(l[0], l[1], 1e-6);
    double worst = 0;
    for (size_t i = 0; i < m->num_params; i++) worst = fmax(worst, fabs(g[0][i] - g[1][i]));
    CHECK_NEAR(worst, 0, 1e-6);
    /* finite differences on the parameters whose gradients come from threaded reductions */
    static const char *names[] = {"ln_f.weight",         "ln_f.bias",
                                  "h.0.ln_1.weight",     "h.0.ln_2.bias",
                                  "h.0.mlp.c_proj.bias", "h.0.attn.c_attn.bias",
                                  "h.0.mlp.c_fc.weight", "score.weight"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const gpt_tensor_t *t = gpt_tensor_find(m, names[k]);
        for (size_t j = 0; j < t->size; j += t->size / 3) {
            float *p = m->params_mem + t->offset + j, keep = *p;
            double f[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                float loss, v[2];
                *p = keep + (sgn ? -1e-2f : 1e-2f);
                gpt_forward(m, in, Bb, Tt, GPT_FWD_LOGITS);
                gpt_lm_loss(m, tg, NULL, &loss, 0);
                gpt_head_forward(m, idx, 2, v);
                f[sgn] = loss + dv[0] * v[0] + dv[1] * v[1];
            }
            *p = keep;
            double num = (f[0] - f[1]) / 2e-2, ana = g[1][t->offset + j];
            if (!(fabs(num - ana) <= 2e-4 + 1e-2 * fabs(num)))
                TEST__FAIL("%s[%zu]: analytic %.6g vs numeric %.6g", t->name, j, ana, num);
        }
    }
    free(g[0]), free(g[1]), free(in), free(tg);
    gpt_destroy(&m);
}

static void test_loss_mask(void) {
    gpt_t *m = tiny_model(3);
    float loss;
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    CHECK_OK(gpt_lm_loss(m, targets, mask, &loss, 0));
    double s = 0, w = 0;
    for (int i = 0; i < B * T; i++) {
        if (targets[i] < 0 || mask[i] == 0) {
            CHECK_NEAR(m->acts.losses[i], 0, 0);
            continue;
        }
        s += mask[i] * m->acts.losses[i], w += mask[i];
    }
    CHECK_NEAR(loss, s / w, 1e-6);
    /* a fresh GPT-2 init predicts nearly uniformly: loss close to ln V */
    gpt_init_weights(m, 3);
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    CHECK_OK(gpt_lm_loss(m, targets, NULL, &loss, 1));
    CHECK_NEAR(loss, log(tiny.vocab_size), 0.05);
    /* masked-out positions give exactly zero logit gradient */
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    CHECK_OK(gpt_lm_loss(m, targets, mask, &loss, 1));
    for (int v = 0; v < tiny.vocab_size; v++) CHECK_NEAR(m->acts.logits[v], 0, 0);
    /* everything masked is an error, not a 0 loss */
    float zero_mask[B * T] = {0};
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    CHECK_ERR(gpt_lm_loss(m, targets, zero_mask, &loss, 0), RL_EINVAL);
    gpt_destroy(&m);
}

static double lm_loss(gpt_t *m) {
    float loss = NAN;
    gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS);
    gpt_lm_loss(m, targets, NULL, &loss, 0);
    return loss;
}

static void test_adamw_lowers_loss(void) {
    gpt_t *m = gpt_new(&tiny);
    gpt_init_weights(m, 1);
    adamw_t opt;
    CHECK_OK(adamw_init(&opt, m->num_params, 0.9f, 0.95f, 1e-8f, 0.1f));
    adamw_group_t groups[GPT_NKINDS];
    int ng = gpt_adamw_groups(m, groups);
    double first = lm_loss(m), prev = first;
    int decreased = 0;
    for (int step = 0; step < 20; step++) {
        float loss;
        CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
        CHECK_OK(gpt_lm_loss(m, targets, NULL, &loss, 1));
        gpt_zero_grad(m);
        CHECK_OK(gpt_backward(m, 1, NULL));
        CHECK_OK(adamw_clip(m->grads_mem, m->num_params, 1.0f, NULL));
        CHECK_OK(adamw_step(&opt, m->params_mem, m->grads_mem, groups, ng, 1e-2f));
        double now = lm_loss(m);
        decreased += now < prev;
        prev = now;
    }
    CHECK(prev < 0.5 * first); /* a fixed batch of 9 targets is memorised quickly */
    CHECK(decreased >= 15);
    adamw_free(&opt);
    gpt_destroy(&m);
}

static void test_decay_groups(void) {
    gpt_t *m = gpt_new(&tiny);
    adamw_group_t g[GPT_NKINDS];
    int n = gpt_adamw_groups(m, g);
    size_t covered = 0;
    for (int i = 0; i < n; i++) {
        CHECK_EQ(g[i].offset, covered);
        covered += g[i].len;
    }
    CHECK_EQ(covered, m->num_params);
    /* every tensor's decay flag agrees with the group that holds it: 2-D only */
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const gpt_tensor_t *t = &m->tensors[ti];
        CHECK_EQ(t->decay, t->ndim == 2);
        for (int i = 0; i < n; i++)
            if (t->offset >= g[i].offset && t->offset < g[i].offset + g[i].len)
                if (g[i].decay != t->decay)
                    TEST__FAIL("%s in a group with the wrong decay", t->name);
    }
    /* with zero gradients, one AdamW step shrinks weights and leaves biases and LN alone */
    gpt_init_weights(m, 2);
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] += 0.5f;
    float *before = malloc(m->num_params * sizeof(float));
    memcpy(before, m->params_mem, m->num_params * sizeof(float));
    gpt_grads_alloc(m);
    adamw_t opt;
    adamw_init(&opt, m->num_params, 0.9f, 0.999f, 1e-8f, 0.1f);
    CHECK_OK(adamw_step(&opt, m->params_mem, m->grads_mem, g, n, 0.01f));
    const gpt_tensor_t *bias = gpt_tensor_find(m, "h.1.attn.c_attn.bias");
    const gpt_tensor_t *lnw = gpt_tensor_find(m, "transformer.ln_f.weight");
    const gpt_tensor_t *w = gpt_tensor_find(m, "h.0.mlp.c_fc.weight");
    CHECK(bias && lnw && w);
    CHECK_NEAR(m->params_mem[bias->offset], before[bias->offset], 0);
    CHECK_NEAR(m->params_mem[lnw->offset], before[lnw->offset], 0);
    CHECK_NEAR(m->params_mem[w->offset], before[w->offset] * (1 - 0.01 * 0.1), 1e-7);
    free(before);
    adamw_free(&opt);
    gpt_destroy(&m);
}

static void test_nonfinite_detected(void) {
    gpt_t *m = tiny_model(4);
    float loss;
    const gpt_tensor_t *t = gpt_tensor_find(m, "h.0.mlp.c_fc.weight");
    m->params_mem[t->offset + 3] = NAN;
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    CHECK_ERR(gpt_lm_loss(m, targets, NULL, &loss, 1), RL_ENONFINITE);
    CHECK(strstr(rl_errmsg(), "nan") != NULL);
    float v[3];
    CHECK_OK(gpt_forward(m, inputs, B, T, 0));
    CHECK_ERR(gpt_head_forward(m, head_idx, 3, v), RL_ENONFINITE);
    /* an Inf in the gradient is caught before it reaches the parameters */
    m->params_mem[t->offset + 3] = 0.0f;
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    CHECK_OK(gpt_lm_loss(m, targets, NULL, &loss, 1));
    CHECK_OK(gpt_backward(m, 1, NULL));
    m->grads_mem[17] = INFINITY;
    CHECK_ERR(adamw_clip(m->grads_mem, m->num_params, 1.0f, NULL), RL_ENONFINITE);
    gpt_destroy(&m);
}

static void test_bad_inputs(void) {
    gpt_t *m = tiny_model(4);
    int bad[2] = {3, 11};
    CHECK_ERR(gpt_forward(m, bad, 1, 2, 0), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "11") != NULL);
    int *longer = calloc(9, sizeof(int));
    CHECK_ERR(gpt_forward(m, longer, 1, 9, 0), RL_EINVAL);
    free(longer);
    float loss;
    CHECK_OK(gpt_forward(m, inputs, B, T, 0));
    CHECK_ERR(gpt_lm_loss(m, targets, NULL, &loss, 0), RL_EINVAL); /* no logits computed */
    CHECK_ERR(gpt_backward(m, 0, NULL), RL_EINVAL);
    int out_of_range[1] = {10};
    float v;
    CHECK_ERR(gpt_head_forward(m, out_of_range, 1, &v), RL_EINVAL);
    gpt_config_t c = tiny;
    c.n_embd = 9;
    CHECK(gpt_new(&c) == NULL);
    CHECK(strstr(rl_errmsg(), "divisible") != NULL);
    c = tiny;
    c.scalar_head = 0;
    gpt_t *nohead = gpt_new(&c);
    CHECK(nohead && gpt_tensor_find(nohead, "score.weight") == NULL);
    CHECK_OK(gpt_forward(nohead, inputs, B, T, 0));
    CHECK_ERR(gpt_head_forward(nohead, head_idx, 1, &v), RL_EINVAL);
    gpt_destroy(&nohead);
    gpt_destroy(&m);
}

/* Raw logits are never taken for a gradient; a caller's own dlogits go through
 * gpt_dlogits_set and give the same gradients as the built-in loss. */
static void test_dlogits_protocol(void) {
    gpt_t *m = tiny_model(8);
    int N = B * T, V = tiny.vocab_size;
    float loss;
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    CHECK_OK(gpt_lm_loss(m, targets, NULL, &loss, 0));
    CHECK_ERR(gpt_backward(m, 1, NULL), RL_EINVAL);
    /* built-in loss gradient */
    CHECK_OK(gpt_lm_loss(m, targets, NULL, &loss, 1));
    CHECK_OK(gpt_grads_alloc(m));
    gpt_zero_grad(m);
    CHECK_OK(gpt_backward(m, 1, NULL));
    float *g1 = malloc(m->num_params * sizeof(float));
    memcpy(g1, m->grads_mem, m->num_params * sizeof(float));
    /* the same gradient written by hand: (softmax - onehot) / count */
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    int count = 0;
    for (int i = 0; i < N; i++) count += targets[i] >= 0;
    for (int i = 0; i < N; i++) {
        float *x = m->acts.logits + (size_t)i * V;
        double mx = -1e30, sum = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, x[v]);
        for (int v = 0; v < V; v++) sum += exp(x[v] - mx);
        for (int v = 0; v < V; v++) {
            double p = exp(x[v] - mx) / sum;
            x[v] = targets[i] < 0 ? 0.0f : (float)((p - (v == targets[i])) / count);
        }
    }
    CHECK_OK(gpt_dlogits_set(m));
    CHECK_ERR(gpt_dlogits_set(m), RL_EINVAL); /* already a gradient */
    gpt_zero_grad(m);
    CHECK_OK(gpt_backward(m, 1, NULL));
    double worst = 0;
    for (size_t i = 0; i < m->num_params; i++) worst = fmax(worst, fabs(g1[i] - m->grads_mem[i]));
    CHECK_NEAR(worst, 0, 1e-6);
    /* a failed forward leaves nothing behind to compute a loss or gradient from */
    int bad[2] = {1, 99};
    CHECK_ERR(gpt_forward(m, bad, 1, 2, GPT_FWD_LOGITS), RL_EINVAL);
    CHECK_ERR(gpt_lm_loss(m, targets, NULL, &loss, 1), RL_EINVAL);
    CHECK_ERR(gpt_backward(m, 0, head_r), RL_EINVAL);
    float v;
    CHECK_ERR(gpt_head_forward(m, head_idx, 1, &v), RL_EINVAL);
    free(g1);
    gpt_destroy(&m);
}

static void test_config_limits(void) {
    gpt_config_t c = {4, 1, 1 << 30, 1, 1, 1e-5f, 0};
    CHECK(gpt_new(&c) == NULL);
    CHECK(strstr(rl_errmsg(), "too large") != NULL);
    c = (gpt_config_t){1000, 1, 65536, 16, 8, 1e-5f, 0};
    CHECK(gpt_new(&c) == NULL); /* 5e13 parameters */
    CHECK(strstr(rl_errmsg(), "parameters") != NULL);
    gpt_t *m = gpt_new(&tiny);
    int *in = calloc(8, sizeof(int));
    CHECK_ERR(gpt_forward(m, in, 1 << 28, 8, 0), RL_EINVAL); /* B*T beyond int indexing */
    free(in);
    gpt_destroy(&m);
}

static void test_tensor_table_and_init(void) {
    gpt_t *m = gpt_new(&tiny), *m2 = gpt_new(&tiny);
    CHECK_EQ(m->n_tensors, 2 + 12 * tiny.n_layer + 2 + 2);
    size_t total = 0;
    for (int i = 0; i < m->n_tensors; i++) total += m->tensors[i].size;
    CHECK_EQ(total, m->num_params); /* the HF view covers the arena exactly once */
    const gpt_tensor_t *qkv = gpt_tensor_find(m, "h.1.attn.c_attn.weight");
    CHECK(qkv && qkv->shape[0] == 8 && qkv->shape[1] == 24);
    CHECK(gpt_tensor_find(m, "h.2.ln_1.weight") == NULL);
    gpt_init_weights(m, 7);
    gpt_init_weights(m2, 7);
    CHECK_EQ(memcmp(m->params_mem, m2->params_mem, m->num_params * sizeof(float)), 0);
    gpt_init_weights(m2, 8);
    CHECK(memcmp(m->params_mem, m2->params_mem, m->num_params * sizeof(float)) != 0);
    const float *lnw = T_(m, "h.0.ln_2.weight"), *b = T_(m, "h.0.mlp.c_fc.bias");
    CHECK_EQ(lnw[0] == 1.0f && b[0] == 0.0f, 1);
    gpt_config_t big = tiny;
    big.n_embd = 64, big.vocab_size = 500;
    gpt_t *mb = gpt_new(&big);
    gpt_init_weights(mb, 1);
    const gpt_tensor_t *wte = gpt_tensor_find(mb, "wte.weight");
    double s2 = 0;
    for (size_t i = 0; i < wte->size; i++) s2 += (double)mb->params_mem[i] * mb->params_mem[i];
    CHECK_NEAR(sqrt(s2 / wte->size), 0.02, 0.001);
    gpt_destroy(&mb);
    gpt_destroy(&m);
    gpt_destroy(&m2);
}

static void test_flops(void) {
    gpt_config_t c = {12, 12, 768, 50257, 1024, 1e-5f, 0};
    double f = gpt_train_flops(&c, 4, 64);
    /* ~6 * params * tokens for GPT-2 small (124M params, 256 tokens), within a few percent */
    CHECK(f > 0.95 * 6 * 124e6 * 256 && f < 1.05 * 6 * 124e6 * 256);
}

int main(void) {
    ops_set_threads(2);
    RUN(test_forward_matches_reference);
    RUN(test_grad_lm_loss);
    RUN(test_grad_scalar_head);
    RUN(test_grad_both);
    RUN(test_head_many_positions);
    RUN(test_threaded_sizes);
    RUN(test_loss_mask);
    RUN(test_adamw_lowers_loss);
    RUN(test_decay_groups);
    RUN(test_nonfinite_detected);
    RUN(test_bad_inputs);
    RUN(test_dlogits_protocol);
    RUN(test_config_limits);
    RUN(test_tensor_table_and_init);
    RUN(test_flops);
    return TEST_REPORT();
}
