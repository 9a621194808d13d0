/*
 * test_gpt.c - the whole model: every stage of the forward against an independent
 * double-precision reference written from the Hugging Face tensor names (within each stage's
 * derived rounding bound), finite-difference gradients of every parameter (LM loss with a mask,
 * scalar head, both at once), thread-count invariance, AdamW on the model, NaN/Inf detection.
 */
#include <omp.h>

#include "base/rng.h"
#include "nn/adamw.h"
#include "nn/gpt.h"
#include "nn/ops.h"
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

/*
 * The reference: each stage of GPT-2's forward written out in double from the Hugging Face
 * tensors, applied to the fp32 model's own input to that stage (its saved activation). Both
 * sides then start from the same numbers, so they differ only by that stage's fp32 roundings,
 * which are bounded element by element (test.h; the attention bound is test_ops's, one side
 * exact). A stage that reads a wrong tensor, a wrong position or another sequence's rows is off
 * by O(1). Stages checked this way compose: the whole forward is the chain of them.
 */
/* fp32 gamma_k plus the reference's own double rounding of the same sum. */
static double gam(int k) {
    return test_gamma(k) + test_gamma64(k);
}

/* ref/bound (T,C) for LayerNorm of rows x (T,C). The fp32 kernel's mean of C values is off by
 * dm <= gamma_C mean|x|; its variance about that mean is (v + dm^2)(1 + gamma_{C+3}) (a
 * subtraction squared, a product, C-1 additions, the division); + eps, sqrtf and 1/ make rstd
 * relatively off by es; then (x - m) * s * w + b takes four roundings. */
static void ref_layernorm(double *ref, double *bound, const float *x, const float *w,
                          const float *b, int T, int C, float eps) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * C;
        double mean = 0, var = 0, mabs = 0;
        for (int c = 0; c < C; c++) mean += xr[c], mabs += fabs(xr[c]);
        mean /= C, mabs /= C;
        for (int c = 0; c < C; c++) var += (xr[c] - mean) * (xr[c] - mean);
        var /= C;
        double r = 1.0 / sqrt(var + eps), dm = gam(C) * mabs;
        double rho = (dm * dm / (var + eps) + gam(C + 3)) * (1 + TEST_U32) + TEST_U32;
        double es = (1 + TEST_U32) / (sqrt(1 - rho) * (1 - TEST_U32)) - 1;
        for (int c = 0; c < C; c++) {
            double o = (xr[c] - mean) * r * w[c] + b[c];
            double e =
                fabs(w[c]) * r *
                (fabs(xr[c] - mean) * ((1 + es) * (1 + gam(3)) - 1) + dm * (1 + es) * (1 + gam(3)));
            ref[t * C + c] = o;
            bound[t * C + c] = e + gam(1) * (fabs(o) + e);
        }
    }
}

/* ref/bound (T,O) for in(T,I) @ w(I,O) + b: I products onto the bias, I+1 roundings. */
static void ref_linear(double *ref, double *bound, const float *in, const float *w, const float *b,
                       int T, int I, int O) {
    for (int t = 0; t < T; t++)
        for (int o = 0; o < O; o++) {
            double s = b[o], mag = fabs(b[o]);
            for (int i = 0; i < I; i++) {
                s += (double)in[t * I + i] * w[i * O + o];
                mag += fabs((double)in[t * I + i] * w[i * O + o]);
            }
            ref[t * O + o] = s;
            bound[t * O + o] = gam(I + 1) * mag;
        }
}

/* Causal attention of one sequence's qkv (T,3C): probabilities aref/abound (H,T,T) and output
 * yref/ybound (T,C). A score is hs products and the scale (2 more roundings for the fp32 scale):
 * off by e_u; log p by e_u + max_v e_v plus the softmax's own roundings (see test_ops); and
 * y = p @ v by gamma_T of its terms plus sum_u |p_fp32 - p| |v|, p_fp32 the kernel's att. */
static void ref_attention(double *aref, double *abound, double *yref, double *ybound,
                          const float *qkv, const float *att, int T, int C, int H) {
    int hs = C / H, C3 = 3 * C;
    double scale = 1.0 / sqrt((double)hs), sc[64], e[64];
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T; t++) {
            double mx = -INFINITY, lo = INFINITY, E = 0, sum = 0;
            for (int u = 0; u <= t; u++) {
                double s = 0, mag = 0;
                for (int i = 0; i < hs; i++) {
                    double q = qkv[t * C3 + h * hs + i], k = qkv[u * C3 + C + h * hs + i];
                    s += q * k, mag += fabs(q * k);
                }
                sc[u] = s * scale, e[u] = gam(hs + 3) * mag * scale;
                mx = fmax(mx, sc[u]), lo = fmin(lo, sc[u]), E = fmax(E, e[u]);
            }
            double X = mx - lo + 2 * E;
            for (int u = 0; u <= t; u++) sum += exp(sc[u] - mx);
            size_t row = ((size_t)h * T + t) * T;
            for (int u = 0; u < T; u++) {
                double p = u <= t ? exp(sc[u] - mx) / sum : 0;
                double eta = e[u] + E + 2 * TEST_U32 * X + 2 * test_logerr(TEST_EXPF_REL) +
                             test_logerr(test_gamma(t)) + 2 * test_logerr(TEST_U32) +
                             test_gamma64(T + 4);
                aref[row + u] = p;
                abound[row + u] = u <= t ? p * expm1(eta) : 0;
            }
            for (int i = 0; i < hs; i++) {
                double y = 0, mag = 0, prop = 0;
                for (int u = 0; u <= t; u++) {
                    double v = qkv[u * C3 + 2 * C + h * hs + i];
                    y += aref[row + u] * v;
                    mag += fabs(att[row + u] * v);
                    prop += fabs(att[row + u] - aref[row + u]) * fabs(v);
                }
                yref[t * C + h * hs + i] = y;
                ybound[t * C + h * hs + i] = gam(T) * mag + prop + test_gamma64(T) * prop;
            }
        }
}

/* gelu_new(x) in double, and the bound on the fp32 kernel's x * sigmoid(2u): u = k (x +
 * 0.044715 x^3) carries 7 roundings (5 operations, 2 constants), so 2u is off by dz = 2|u|
 * gamma_7, which moves log sigmoid by at most (1 - sigmoid) dz e^dz; expf, 1 + e, the division
 * and the product x * s add theirs. */
static double ref_gelu(float x, double *bound) {
    double u = sqrt(2 / M_PI) * (x + 0.044715 * x * x * x);
    double g = 0.5 * x * (1 + tanh(u)), sig = 1 / (1 + exp(-2 * u)), dz = 2 * fabs(u) * gam(7);
    double eta = (1 - sig) * dz * exp(dz) + test_logerr(TEST_EXPF_REL) + 3 * test_logerr(TEST_U32) +
                 test_gamma64(8);
    *bound = fabs(g) * expm1(eta);
    return g;
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

/* Every stage of sequence b of the model's last forward (with logits) against the reference. */
static void check_forward_stages(const gpt_t *m, int b) {
    int C = m->cfg.n_embd, V = m->cfg.vocab_size, H = m->cfg.n_head, T = m->T;
    size_t N = (size_t)m->B * T, bt = (size_t)b * T, big = (size_t)T * (4 * C > V ? 4 * C : V);
    float eps = m->cfg.layer_norm_epsilon;
    const gpt_acts_t *a = &m->acts;
    double *ref = malloc(big * 8), *bnd = malloc(big * 8);
    double *aref = malloc((size_t)H * T * T * 8), *abnd = malloc((size_t)H * T * T * 8);
    const float *wte = T_(m, "wte.weight"), *wpe = T_(m, "wpe.weight");
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) {
            ref[t * C + c] = (double)wte[m->inputs[bt + t] * C + c] + wpe[t * C + c];
            bnd[t * C + c] = gam(1) * fabs(ref[t * C + c]);
        }
    check_stage("encoded", -1, a->encoded + bt * C, ref, bnd, (size_t)T * C);
    const float *res = a->encoded + bt * C;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        char n1[64], n2[64];
#define W(suffix)     (snprintf(n1, sizeof n1, "h.%d.%s", l, suffix), T_(m, n1))
#define W2(suffix)    (snprintf(n2, sizeof n2, "h.%d.%s", l, suffix), T_(m, n2))
#define ACT(f, width) (a->f + (size_t)l * N * (width) + bt * (width))
        ref_layernorm(ref, bnd, res, W("ln_1.weight"), W2("ln_1.bias"), T, C, eps);
        check_stage("ln_1", l, ACT(ln1, C), ref, bnd, (size_t)T * C);
        ref_linear(ref, bnd, ACT(ln1, C), W("attn.c_attn.weight"), W2("attn.c_attn.bias"), T, C,
                   3 * C);
        check_stage("c_attn", l, ACT(qkv, 3 * C), ref, bnd, (size_t)T * 3 * C);
        const float *att = a->att + ((size_t)l * m->B + b) * H * T * T;
        ref_attention(aref, abnd, ref, bnd, ACT(qkv, 3 * C), att, T, C, H);
        check_stage("att", l, att, aref, abnd, (size_t)H * T * T);
        check_stage("attn", l, ACT(atty, C), ref, bnd, (size_t)T * C);
        ref_linear(ref, bnd, ACT(atty, C), W("attn.c_proj.weight"), W2("attn.c_proj.bias"), T, C,
                   C);
        check_stage("attn.c_proj", l, ACT(attproj, C), ref, bnd, (size_t)T * C);
        for (size_t i = 0; i < (size_t)T * C; i++) {
            ref[i] = (double)res[i] + ACT(attproj, C)[i];
            bnd[i] = gam(1) * fabs(ref[i]);
        }
        check_stage("residual2", l, ACT(residual2, C), ref, bnd, (size_t)T * C);
        ref_layernorm(ref, bnd, ACT(residual2, C), W("ln_2.weight"), W2("ln_2.bias"), T, C, eps);
        check_stage("ln_2", l, ACT(ln2, C), ref, bnd, (size_t)T * C);
        ref_linear(ref, bnd, ACT(ln2, C), W("mlp.c_fc.weight"), W2("mlp.c_fc.bias"), T, C, 4 * C);
        check_stage("mlp.c_fc", l, ACT(fch, 4 * C), ref, bnd, (size_t)T * 4 * C);
        for (size_t i = 0; i < (size_t)T * 4 * C; i++)
            ref[i] = ref_gelu(ACT(fch, 4 * C)[i], &bnd[i]);
        check_stage("gelu", l, ACT(fch_gelu, 4 * C), ref, bnd, (size_t)T * 4 * C);
        ref_linear(ref, bnd, ACT(fch_gelu, 4 * C), W("mlp.c_proj.weight"), W2("mlp.c_proj.bias"), T,
                   4 * C, C);
        check_stage("mlp.c_proj", l, ACT(fcproj, C), ref, bnd, (size_t)T * C);
        for (size_t i = 0; i < (size_t)T * C; i++) {
            ref[i] = (double)ACT(residual2, C)[i] + ACT(fcproj, C)[i];
            bnd[i] = gam(1) * fabs(ref[i]);
        }
        check_stage("residual3", l, ACT(residual3, C), ref, bnd, (size_t)T * C);
        res = ACT(residual3, C);
#undef ACT
#undef W
#undef W2
    }
    ref_layernorm(ref, bnd, res, T_(m, "ln_f.weight"), T_(m, "ln_f.bias"), T, C, eps);
    check_stage("ln_f", -1, a->lnf + bt * C, ref, bnd, (size_t)T * C);
    /* the tied head: C products, no bias */
    const float *lnf = a->lnf + bt * C;
    for (int t = 0; t < T; t++)
        for (int v = 0; v < V; v++) {
            double s = 0, mag = 0;
            for (int c = 0; c < C; c++) {
                s += (double)lnf[t * C + c] * wte[v * C + c];
                mag += fabs((double)lnf[t * C + c] * wte[v * C + c]);
            }
            ref[t * V + v] = s;
            bnd[t * V + v] = gam(C) * mag;
        }
    check_stage("logits", -1, a->logits + bt * V, ref, bnd, (size_t)T * V);
    free(ref), free(bnd), free(aref), free(abnd);
}

enum { B = 2, T = 5 };
static const int inputs[B * T] = {1, 7, 3, 3, 10, 0, 2, 9, 4, 6};
static const int targets[B * T] = {7, 3, 3, 10, 5, 2, 9, 4, 6, -1};
static const float mask[B * T] = {0, 1, 1, 1, 1, 1, 0.5f, 1, 2, 1};
static const int head_idx[4] = {4, 8, 2, 4}; /* position 4 scored twice */
static const float head_r[4] = {0.7f, -1.3f, 0.4f, 0.25f};

/* Every stage of the fp32 forward against the double reference, for each sequence of a batch
 * and for a sequence alone: a stage reading another sequence's rows would fail the check. */
static void test_forward_matches_reference(void) {
    gpt_t *m = tiny_model(5);
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    for (int b = 0; b < B; b++) check_forward_stages(m, b);
    CHECK_OK(gpt_forward(m, inputs + T, 1, T, GPT_FWD_LOGITS));
    check_forward_stages(m, 0);
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

/*
 * Central differences over every parameter of the tiny model against gpt_backward. With step h,
 * num = f' + h^2/6 f'''(xi) + (e+ - e-) / 2h, e+- the rounding errors of the two objectives.
 * Each stage of the forward is within ~1e-6 of exact (the bounds of check_forward_stages), and
 * the loss is a float mean of O(1) losses, so |e| <= ~2e-6 and the rounding term is at most
 * 2e-4 for h = 1e-2. The truncation term, 1.7e-5 |f'''|, is within the remaining 3e-4 up to
 * |f'''| = 18 and within 1e-2 |num| up to |f'''| = 600 |f'|: the tolerance assumes no third
 * derivative larger than that (weights of std ~0.3 on O(1) activations). A wrong or missing
 * gradient term is off by O(|f'|).
 */
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
    double dw0 = 0, db = 0, dw0_mag = 0, db_mag = 0;
    for (int i = 0; i < n; i++) {
        /* a value is C products onto the bias in fp32: C+1 roundings */
        double s = b[0], mag = fabs(b[0]);
        for (int c = 0; c < C; c++) {
            s += (double)m->acts.lnf[idx[i] * C + c] * w[c];
            mag += fabs((double)m->acts.lnf[idx[i] * C + c] * w[c]);
        }
        CHECK_NEAR(v[i], s, (test_gamma(C + 1) + test_gamma64(C + 1)) * mag);
        dw0 += (double)dv[i] * m->acts.lnf[idx[i] * C + 0];
        dw0_mag += fabs((double)dv[i] * m->acts.lnf[idx[i] * C + 0]);
        db += dv[i], db_mag += fabs(dv[i]);
    }
    CHECK_OK(gpt_grads_alloc(m));
    gpt_zero_grad(m);
    CHECK_OK(gpt_backward(m, 0, dv));
    /* n products (terms) summed in 3 chunks of at most B*T, each chunk's sum accumulated onto
     * the gradient: a term passes at most n + 3 roundings */
    CHECK_NEAR(m->grads_mem[gpt_tensor_find(m, "score.weight")->offset], dw0,
               (test_gamma(n + 3) + test_gamma64(n)) * dw0_mag);
    CHECK_NEAR(m->grads_mem[gpt_tensor_find(m, "score.bias")->offset], db,
               (test_gamma(n + 3) + test_gamma64(n)) * db_mag);
    gpt_destroy(&m);
}

enum { TH_B = 2, TH_T = 128, TH_N = TH_B * TH_T };

/* One forward, LM loss, head and backward of the threaded-size model: the objective, and the
 * gradient arena copied into g. */
static double threaded_pass(gpt_t *m, const int *in, const int *tg, const int *idx, const float *dv,
                            float *g) {
    float loss, v[2];
    CHECK_OK(gpt_forward(m, in, TH_B, TH_T, GPT_FWD_LOGITS));
    CHECK_OK(gpt_lm_loss(m, tg, NULL, &loss, 1));
    CHECK_OK(gpt_head_forward(m, idx, 2, v));
    CHECK_OK(gpt_grads_alloc(m));
    gpt_zero_grad(m);
    CHECK_OK(gpt_backward(m, 1, dv));
    memcpy(g, m->grads_mem, m->num_params * sizeof(float));
    return (double)loss + dv[0] * v[0] + dv[1] * v[1];
}

/*
 * threaded_pass with `threads` threads in our OpenMP kernels and OpenBLAS on one. OpenBLAS's
 * OpenMP build takes its thread count from omp_get_max_threads() at every call, so the two
 * cannot be set apart from outside; but it runs single-threaded when called inside an active
 * parallel region (what ops.c's attention relies on). So the pass runs inside one, on one thread,
 * with nested regions enabled and the team size for our kernels set there.
 */
static double pass_blas_one_thread(gpt_t *m, int threads, const int *in, const int *tg,
                                   const int *idx, const float *dv, float *g) {
    double obj = NAN;
    int levels = omp_get_max_active_levels(), dynamic = omp_get_dynamic();
    omp_set_max_active_levels(2);
    omp_set_dynamic(0); /* teams of exactly the size asked for */
#pragma omp parallel num_threads(2)
#pragma omp single
    {
        CHECK(omp_in_parallel()); /* else OpenBLAS would thread */
        omp_set_num_threads(threads);
        int team = 0;
#pragma omp parallel
        {
#pragma omp single
            team = omp_get_num_threads();
        }
        CHECK_EQ(team, threads); /* our kernels' regions get this team */
        obj = threaded_pass(m, in, tg, idx, dv, g);
    }
    omp_set_max_active_levels(levels);
    omp_set_dynamic(dynamic);
    return obj;
}

/*
 * A model big enough that every kernel takes its threaded path (B*T*C = 32768). Our OpenMP
 * kernels promise bit-identical results for any thread count (reductions split by column, fixed
 * order), so with OpenBLAS held at one thread, 1 and 2 threads give the same gradient bits and
 * the same loss. OpenBLAS's own thread dependence is not something the whole network can bound
 * element by element; test_ops checks every BLAS product, 1 thread against 2, against its error
 * bound. Finite differences confirm a sample of the gradients.
 */
static void test_threaded_sizes(void) {
    gpt_config_t c = {.n_layer = 1,
                      .n_head = 4,
                      .n_embd = 128,
                      .vocab_size = 64,
                      .n_positions = 128,
                      .layer_norm_epsilon = 1e-5f,
                      .scalar_head = 1};
    gpt_t *m = gpt_new(&c);
    gpt_init_weights(m, 3);
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] += 0.05f * rng_normal(4, 1, i);
    int *in = malloc(TH_N * sizeof(int)), *tg = malloc(TH_N * sizeof(int)), idx[2] = {5, 200};
    for (int i = 0; i < TH_N; i++) in[i] = (i * 13) % 64, tg[i] = (i * 13 + 13) % 64;
    float dv[2] = {1.0f, -0.5f}, *g[2];
    double l[2];
    for (int r = 0; r < 2; r++) {
        g[r] = malloc(m->num_params * sizeof(float));
        l[r] = pass_blas_one_thread(m, r + 1, in, tg, idx, dv, g[r]);
    }
    CHECK(l[0] == l[1]);
    CHECK_EQ(memcmp(g[0], g[1], m->num_params * sizeof(float)), 0);
    /* the same model the way training runs it, OpenBLAS threaded too: the gradients that the
     * finite differences below check */
    ops_set_threads(2);
    threaded_pass(m, in, tg, idx, dv, g[1]);
    /* finite differences on the parameters whose gradients come from threaded reductions: as in
     * grad_check, but the objective averages 256 positions, whose rounding errors average too
     * (|e| <= ~1e-6, a rounding term <= 1e-4 with h = 1e-2), hence 2e-4 */
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
                gpt_forward(m, in, TH_B, TH_T, GPT_FWD_LOGITS);
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
    /* the loss is the same weighted mean taken in double and rounded once to fp32 */
    CHECK_NEAR(loss, s / w, (TEST_U32 + test_gamma64(2 * B * T)) * fabs(s / w));
    /* a fresh GPT-2 init predicts nearly uniformly: loss close to ln V */
    gpt_init_weights(m, 3);
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    CHECK_OK(gpt_lm_loss(m, targets, NULL, &loss, 1));
    /* not a rounding bound: logits of std ~0.06 (wte std 0.02, unit LayerNorm output, C = 8)
     * give an expected loss of ln V + var/2 ~ ln V + 2e-3; 0.05 is far from that and from the
     * loss of a model that predicts anything (ln V = 2.4) */
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
    /* zero moments: p - (0 + lr*wd * p) in fp32; lr*wd carries the roundings of 0.01f, 0.1f,
     * their product and the product with p (gamma_4 relative), the subtraction one more */
    double want = before[w->offset] * (1 - 0.01 * 0.1);
    CHECK_NEAR(m->params_mem[w->offset], want,
               test_gamma(4) * 0.01 * 0.1 * fabs(before[w->offset]) + test_gamma(1) * fabs(want));
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
    float *dl = malloc((size_t)N * V * sizeof(float));
    memcpy(dl, m->acts.logits, (size_t)N * V * sizeof(float));
    CHECK_OK(gpt_grads_alloc(m));
    gpt_zero_grad(m);
    CHECK_OK(gpt_backward(m, 1, NULL));
    float *g1 = malloc(m->num_params * sizeof(float));
    memcpy(g1, m->grads_mem, m->num_params * sizeof(float));
    /* The same dlogits written by hand: (softmax - onehot) / count in double, rounded once. The
     * built-in's p_v = expf(x_v - max) * (float)(1/sum) * (float)(1/count), rounded: each expf
     * and its argument (u |x - max| <= u X) move p_v and the sum, so log p_v by at most
     * 2 (u X + expf's error), and four roundings follow; the target's -1/count adds two. */
    CHECK_OK(gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS));
    int count = 0;
    for (int i = 0; i < N; i++) count += targets[i] >= 0;
    float *hand = malloc((size_t)N * V * sizeof(float));
    double *bound = malloc((size_t)N * V * sizeof(double));
    for (int i = 0; i < N; i++) {
        const float *x = m->acts.logits + (size_t)i * V;
        double mx = -1e30, lo = 1e30, sum = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, x[v]), lo = fmin(lo, x[v]);
        for (int v = 0; v < V; v++) sum += exp(x[v] - mx);
        double eta = 2 * (TEST_U32 * (mx - lo) + test_logerr(TEST_EXPF_REL)) +
                     test_logerr(test_gamma(4)) + test_gamma64(V + 2);
        for (int v = 0; v < V; v++) {
            size_t k = (size_t)i * V + v;
            double p = exp(x[v] - mx) / sum, hot = v == targets[i];
            double want = (p - hot) / count, e1 = p / count * expm1(eta);
            hand[k] = targets[i] < 0 ? 0.0f : (float)want;
            bound[k] = targets[i] < 0
                           ? 0
                           : e1 +
                                 hot * (TEST_U32 / count +
                                        TEST_U32 * (fabs(want) + e1 + TEST_U32 / count)) +
                                 TEST_U32 * fabs(want) + test_gamma64(V + 3) * (p + hot) / count;
        }
    }
    CHECK_WITHIN(hand, dl, bound, (size_t)N * V);
    /* a caller's dlogits go through gpt_dlogits_set: the built-in's own, written back, give its
     * gradient bit for bit (the same numbers through the same kernels) */
    memcpy(m->acts.logits, dl, (size_t)N * V * sizeof(float));
    CHECK_OK(gpt_dlogits_set(m));
    CHECK_ERR(gpt_dlogits_set(m), RL_EINVAL); /* already a gradient */
    gpt_zero_grad(m);
    CHECK_OK(gpt_backward(m, 1, NULL));
    CHECK_EQ(memcmp(g1, m->grads_mem, m->num_params * sizeof(float)), 0);
    free(dl), free(hand), free(bound);
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
    gpt_config_t c = {.n_layer = 4,
                      .n_head = 1,
                      .n_embd = 1 << 30,
                      .vocab_size = 1,
                      .n_positions = 1,
                      .layer_norm_epsilon = 1e-5f,
                      .scalar_head = 0};
    CHECK(gpt_new(&c) == NULL);
    CHECK(strstr(rl_errmsg(), "too large") != NULL);
    c = (gpt_config_t){.n_layer = 1000,
                       .n_head = 1,
                       .n_embd = 65536,
                       .vocab_size = 16,
                       .n_positions = 8,
                       .layer_norm_epsilon = 1e-5f,
                       .scalar_head = 0};
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
    /* statistical: the sample std of n = 32000 normal draws has relative sd 1/sqrt(2n) = 0.4%;
     * 0.001 is 5%, twelve of those */
    CHECK_NEAR(sqrt(s2 / wte->size), 0.02, 0.001);
    gpt_destroy(&mb);
    gpt_destroy(&m);
    gpt_destroy(&m2);
}

static void test_flops(void) {
    gpt_config_t c = {.n_layer = 12,
                      .n_head = 12,
                      .n_embd = 768,
                      .vocab_size = 50257,
                      .n_positions = 1024,
                      .layer_norm_epsilon = 1e-5f,
                      .scalar_head = 0};
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
