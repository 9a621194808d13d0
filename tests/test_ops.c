/*
 * test_ops.c - layer kernels: each BLAS-backed kernel against its plain-loop twin, and every
 * layer's backward against central finite differences of its forward.
 *
 * Finite differences: for a layer y = f(x) and a fixed random R, the scalar s = sum(y * R) has
 * ds/dx = backward(dout = R). Perturbing one float by +-eps and differencing s (accumulated in
 * double) gives the reference. With eps = 1e-2 on O(1) inputs, float rounding of s contributes
 * ~1e-5 and the truncation error is O(eps^2), so 2e-3 absolute + 1e-2 relative is a tight bound
 * that a wrong index or a missing term exceeds by orders of magnitude.
 */
#include "nn/ops.h"
#include "base/rng.h"
#include "test.h"

static float *rnd(size_t n, uint64_t stream, float scale) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = scale * rng_normal(123, stream, i);
    return p;
}

static float *zeros(size_t n) {
    return calloc(n, sizeof(float));
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as "infinitely wrong" */
    }
    return m;
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* A layer under test: recompute its output from the current inputs into `out`. */
typedef void (*fwd_fn)(void *ctx, float *out);

/* Checks analytic gradient `grad` (n) of s = sum(out*R) w.r.t. `x` by central differences. */
static void fd_check(const char *what, fwd_fn f, void *ctx, float *x, const float *grad, size_t n,
                     float *out, const float *R, size_t nout) {
    const float eps = 1e-2f;
    int bad = 0;
    for (size_t i = 0; i < n && bad < 5; i++) {
        float keep = x[i];
        x[i] = keep + eps;
        f(ctx, out);
        double sp = dot(out, R, nout);
        x[i] = keep - eps;
        f(ctx, out);
        double sm = dot(out, R, nout);
        x[i] = keep;
        double num = (sp - sm) / (2.0 * eps);
        if (!(fabs(num - grad[i]) <= 2e-3 + 1e-2 * fabs(num))) {
            TEST__FAIL("%s: d/dx[%zu]: analytic %.6g vs numeric %.6g", what, i, grad[i], num);
            bad++;
        }
    }
}

/* ---- matmul ---------------------------------------------------------------------------- */

typedef struct {
    float *inp, *w, *b;
    int N, IC, OC;
} mm_ctx;

static void mm_fwd(void *c, float *out) {
    mm_ctx *m = c;
    ops_matmul_forward(out, m->inp, m->w, m->b, m->N, m->IC, m->OC);
}

static void test_matmul_vs_ref(void) {
    int N = 7, IC = 13, OC = 11;
    float *inp = rnd(N * IC, 1, 1), *w = rnd(IC * OC, 2, 1), *b = rnd(OC, 3, 1);
    float *o1 = zeros(N * OC), *o2 = zeros(N * OC), *dout = rnd(N * OC, 4, 1);
    ops_matmul_forward(o1, inp, w, b, N, IC, OC);
    ops_matmul_forward_ref(o2, inp, w, b, N, IC, OC);
    CHECK_NEAR(max_abs_diff(o1, o2, N * OC), 0, 1e-5);
    ops_matmul_forward(o1, inp, w, NULL, N, IC, OC);
    ops_matmul_forward_ref(o2, inp, w, NULL, N, IC, OC);
    CHECK_NEAR(max_abs_diff(o1, o2, N * OC), 0, 1e-5);
    /* one row takes the matrix-vector path */
    ops_matmul_forward(o1, inp, w, b, 1, IC, OC);
    ops_matmul_forward_ref(o2, inp, w, b, 1, IC, OC);
    CHECK_NEAR(max_abs_diff(o1, o2, OC), 0, 1e-5);
    /* backward accumulates: start both from the same non-zero values */
    float *di1 = rnd(N * IC, 5, 1), *di2 = rnd(N * IC, 5, 1);
    float *dw1 = rnd(IC * OC, 6, 1), *dw2 = rnd(IC * OC, 6, 1);
    float *db1 = rnd(OC, 7, 1), *db2 = rnd(OC, 7, 1);
    ops_matmul_backward(di1, dw1, db1, dout, inp, w, N, IC, OC);
    ops_matmul_backward_ref(di2, dw2, db2, dout, inp, w, N, IC, OC);
    CHECK_NEAR(max_abs_diff(di1, di2, N * IC), 0, 1e-5);
    CHECK_NEAR(max_abs_diff(dw1, dw2, IC * OC), 0, 1e-5);
    CHECK_NEAR(max_abs_diff(db1, db2, OC), 0, 1e-5);
    /* NULL dinp and dbias are skipped */
    ops_matmul_backward(NULL, dw1, NULL, dout, inp, w, N, IC, OC);
    ops_matmul_backward_ref(NULL, dw2, NULL, dout, inp, w, N, IC, OC);
    CHECK_NEAR(max_abs_diff(dw1, dw2, IC * OC), 0, 1e-5);
    free(inp), free(w), free(b), free(o1), free(o2), free(dout);
    free(di1), free(di2), free(dw1), free(dw2), free(db1), free(db2);
}

static void test_matmul_grad(void) {
    mm_ctx c = {rnd(5 * 6, 1, 1), rnd(6 * 4, 2, 1), rnd(4, 3, 1), 5, 6, 4};
    float *out = zeros(5 * 4), *R = rnd(5 * 4, 9, 1);
    float *di = zeros(5 * 6), *dw = zeros(6 * 4), *db = zeros(4);
    ops_matmul_backward(di, dw, db, R, c.inp, c.w, 5, 6, 4);
    fd_check("matmul inp", mm_fwd, &c, c.inp, di, 30, out, R, 20);
    fd_check("matmul w", mm_fwd, &c, c.w, dw, 24, out, R, 20);
    fd_check("matmul b", mm_fwd, &c, c.b, db, 4, out, R, 20);
    free(c.inp), free(c.w), free(c.b), free(out), free(R), free(di), free(dw), free(db);
}

/* ---- tied LM head ------------------------------------------------------------------------ */

typedef struct {
    float *inp, *wte;
    int N, C, V;
} lm_ctx;

static void lm_fwd(void *c, float *out) {
    lm_ctx *m = c;
    ops_lmhead_forward(out, m->inp, m->wte, m->N, m->C, m->V);
}

static void test_lmhead(void) {
    int N = 6, C = 9, V = 17;
    lm_ctx c = {rnd(N * C, 1, 1), rnd(V * C, 2, 1), N, C, V};
    float *o1 = zeros(N * V), *o2 = zeros(N * V), *R = rnd(N * V, 3, 1);
    ops_lmhead_forward(o1, c.inp, c.wte, N, C, V);
    ops_lmhead_forward_ref(o2, c.inp, c.wte, N, C, V);
    CHECK_NEAR(max_abs_diff(o1, o2, N * V), 0, 1e-5);
    ops_lmhead_forward(o1, c.inp, c.wte, 1, C, V); /* one row: matrix-vector */
    ops_lmhead_forward_ref(o2, c.inp, c.wte, 1, C, V);
    CHECK_NEAR(max_abs_diff(o1, o2, V), 0, 1e-5);
    float *di1 = rnd(N * C, 4, 1), *di2 = rnd(N * C, 4, 1);
    float *dw1 = rnd(V * C, 5, 1), *dw2 = rnd(V * C, 5, 1);
    ops_lmhead_backward(di1, dw1, R, c.inp, c.wte, N, C, V);
    ops_lmhead_backward_ref(di2, dw2, R, c.inp, c.wte, N, C, V);
    CHECK_NEAR(max_abs_diff(di1, di2, N * C), 0, 1e-5);
    CHECK_NEAR(max_abs_diff(dw1, dw2, V * C), 0, 1e-5);
    float *di = zeros(N * C), *dw = zeros(V * C);
    ops_lmhead_backward(di, dw, R, c.inp, c.wte, N, C, V);
    fd_check("lmhead inp", lm_fwd, &c, c.inp, di, N * C, o1, R, N * V);
    fd_check("lmhead wte", lm_fwd, &c, c.wte, dw, V * C, o1, R, N * V);
    free(c.inp), free(c.wte), free(o1), free(o2), free(R);
    free(di1), free(di2), free(dw1), free(dw2), free(di), free(dw);
}

/* ---- attention --------------------------------------------------------------------------- */

typedef struct {
    float *qkv, *att;
    int B, T, C, H;
} at_ctx;

static void at_fwd(void *c, float *out) {
    at_ctx *a = c;
    ops_attention_forward(out, a->att, a->qkv, a->B, a->T, a->C, a->H);
}

static void test_attention(void) {
    int B = 2, T = 5, C = 12, H = 3;
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, na = (size_t)B * H * T * T;
    at_ctx c = {rnd(nq, 1, 1), zeros(na), B, T, C, H};
    float *o1 = zeros(no), *o2 = zeros(no), *a2 = zeros(na), *R = rnd(no, 2, 1);
    ops_attention_forward(o1, c.att, c.qkv, B, T, C, H);
    ops_attention_forward_ref(o2, a2, c.qkv, B, T, C, H);
    CHECK_NEAR(max_abs_diff(o1, o2, no), 0, 1e-5);
    CHECK_NEAR(max_abs_diff(c.att, a2, na), 0, 1e-6);
    /* causality: row t of every head sums to 1 over u <= t and is 0 above */
    for (int bht = 0; bht < B * H * T; bht++) {
        int t = bht % T;
        double s = 0;
        for (int u = 0; u < T; u++) {
            if (u > t) CHECK_EQ(c.att[(size_t)bht * T + u] == 0.0f, 1);
            s += c.att[(size_t)bht * T + u];
        }
        CHECK_NEAR(s, 1.0, 1e-5);
    }
    float *dq1 = rnd(nq, 3, 1), *dq2 = rnd(nq, 3, 1), *da1 = zeros(na), *da2 = zeros(na);
    ops_attention_backward(dq1, da1, R, c.qkv, c.att, B, T, C, H);
    ops_attention_backward_ref(dq2, da2, R, c.qkv, c.att, B, T, C, H);
    CHECK_NEAR(max_abs_diff(dq1, dq2, nq), 0, 1e-5);
    float *dq = zeros(nq);
    ops_attention_backward(dq, da1, R, c.qkv, c.att, B, T, C, H);
    fd_check("attention qkv", at_fwd, &c, c.qkv, dq, nq, o1, R, no);
    /* a later position never influences an earlier output */
    ops_attention_forward(o1, c.att, c.qkv, B, T, C, H);
    c.qkv[(size_t)(T - 1) * 3 * C + 2 * C] += 5.0f; /* v of the last position, batch 0 */
    ops_attention_forward(o2, c.att, c.qkv, B, T, C, H);
    CHECK_NEAR(max_abs_diff(o1, o2, (size_t)(T - 1) * C), 0, 0);
    free(c.qkv), free(c.att), free(o1), free(o2), free(a2), free(R);
    free(dq1), free(dq2), free(da1), free(da2), free(dq);
}

/* ---- LayerNorm ------------------------------------------------------------------------- */

typedef struct {
    float *inp, *w, *b, *mean, *rstd;
    int N, C;
} ln_ctx;

static void ln_fwd(void *c, float *out) {
    ln_ctx *l = c;
    ops_layernorm_forward(out, l->mean, l->rstd, l->inp, l->w, l->b, l->N, l->C, 1e-5f);
}

static void test_layernorm(void) {
    int N = 4, C = 10;
    ln_ctx c = {rnd(N * C, 1, 2), rnd(C, 2, 1), rnd(C, 3, 1), zeros(N), zeros(N), N, C};
    float *out = zeros(N * C), *R = rnd(N * C, 4, 1);
    ln_fwd(&c, out);
    /* with w = 1, b = 0 each row has mean 0 and variance ~1 */
    float *one = malloc(C * sizeof(float)), *zero = zeros(C);
    for (int i = 0; i < C; i++) one[i] = 1.0f;
    float *norm = zeros(N * C);
    ops_layernorm_forward(norm, c.mean, c.rstd, c.inp, one, zero, N, C, 1e-5f);
    for (int n = 0; n < N; n++) {
        double s = 0, s2 = 0;
        for (int i = 0; i < C; i++) s += norm[n * C + i], s2 += norm[n * C + i] * norm[n * C + i];
        CHECK_NEAR(s / C, 0.0, 1e-5);
        CHECK_NEAR(s2 / C, 1.0, 1e-3);
    }
    float *di = zeros(N * C), *dw = zeros(C), *db = zeros(C);
    ln_fwd(&c, out);
    ops_layernorm_backward(di, dw, db, R, c.inp, c.w, c.mean, c.rstd, N, C);
    fd_check("layernorm inp", ln_fwd, &c, c.inp, di, N * C, out, R, N * C);
    fd_check("layernorm w", ln_fwd, &c, c.w, dw, C, out, R, N * C);
    fd_check("layernorm b", ln_fwd, &c, c.b, db, C, out, R, N * C);
    free(c.inp), free(c.w), free(c.b), free(c.mean), free(c.rstd), free(out), free(R);
    free(one), free(zero), free(norm), free(di), free(dw), free(db);
}

/* ---- GELU, residual, encoder ------------------------------------------------------------ */

typedef struct {
    float *inp;
    size_t n;
} ge_ctx;

static void ge_fwd(void *c, float *out) {
    ge_ctx *g = c;
    ops_gelu_forward(out, g->inp, g->n);
}

static void test_gelu(void) {
    size_t n = 64;
    ge_ctx c = {rnd(n, 1, 2), n};
    float *out = zeros(n), *R = rnd(n, 2, 1), *di = zeros(n);
    ge_fwd(&c, out);
    for (size_t i = 0; i < n; i++) {
        double x = c.inp[i];
        double ref = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
        CHECK_NEAR(out[i], ref, 1e-6);
    }
    ops_gelu_backward(di, c.inp, R, n);
    fd_check("gelu", ge_fwd, &c, c.inp, di, n, out, R, n);
    free(c.inp), free(out), free(R), free(di);
}

static void test_residual_encoder(void) {
    float a[3] = {1, 2, 3}, b[3] = {10, 20, 30}, o[3];
    ops_residual_forward(o, a, b, 3);
    CHECK_EQ(o[0] == 11 && o[1] == 22 && o[2] == 33, 1);
    int B = 2, T = 3, C = 4, V = 5, inp[6] = {1, 4, 1, 0, 2, 1};
    float *wte = rnd(V * C, 1, 1), *wpe = rnd(T * C, 2, 1), *out = zeros(B * T * C);
    ops_encoder_forward(out, inp, wte, wpe, B, T, C);
    for (int bt = 0; bt < B * T; bt++)
        for (int c = 0; c < C; c++)
            CHECK_NEAR(out[bt * C + c], wte[inp[bt] * C + c] + wpe[(bt % T) * C + c], 0);
    float *dout = rnd(B * T * C, 3, 1), *dwte = zeros(V * C), *dwpe = zeros(T * C);
    ops_encoder_backward(dwte, dwpe, dout, inp, B, T, C);
    /* token 1 appears three times: its gradient row is the sum of those three rows */
    for (int c = 0; c < C; c++) {
        CHECK_NEAR(dwte[1 * C + c], dout[0 * C + c] + dout[2 * C + c] + dout[5 * C + c], 1e-6);
        CHECK_NEAR(dwte[3 * C + c], 0, 0);
        CHECK_NEAR(dwpe[0 * C + c], dout[0 * C + c] + dout[3 * C + c], 1e-6);
    }
    free(wte), free(wpe), free(out), free(dout), free(dwte), free(dwpe);
}

/* ---- cross-entropy -------------------------------------------------------------------- */

static void test_crossentropy(void) {
    int N = 4, V = 7, targets[4] = {3, -1, 0, 6};
    float w[4] = {1.0f, 1.0f, 0.5f, 2.0f};
    float *logits = rnd(N * V, 1, 2), *copy = malloc(N * V * sizeof(float)), losses[4];
    memcpy(copy, logits, N * V * sizeof(float));
    double mean = ops_crossentropy(logits, losses, targets, w, N, V, 0);
    double ref = 0, wsum = 0;
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) continue;
        double mx = -1e30, s = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, copy[n * V + v]);
        for (int v = 0; v < V; v++) s += exp(copy[n * V + v] - mx);
        double l = log(s) + mx - copy[n * V + targets[n]];
        CHECK_NEAR(losses[n], l, 1e-5);
        ref += w[n] * l, wsum += w[n];
    }
    CHECK_NEAR(losses[1], 0, 0);
    CHECK_NEAR(mean, ref / wsum, 1e-6);
    /* gradient: central differences of the weighted mean */
    ops_crossentropy(logits, losses, targets, w, N, V, 1);
    for (int i = 0; i < N * V; i++) {
        float keep = copy[i], *tmp = malloc(N * V * sizeof(float));
        copy[i] = keep + 1e-2f;
        memcpy(tmp, copy, N * V * sizeof(float));
        double lp = ops_crossentropy(tmp, losses, targets, w, N, V, 0);
        copy[i] = keep - 1e-2f;
        memcpy(tmp, copy, N * V * sizeof(float));
        double lm = ops_crossentropy(tmp, losses, targets, w, N, V, 0);
        copy[i] = keep;
        free(tmp);
        CHECK_NEAR(logits[i], (lp - lm) / 2e-2, 2e-4);
    }
    /* all positions ignored: NaN, not a silent 0 */
    int none[4] = {-1, -1, -1, -1};
    CHECK(isnan(ops_crossentropy(copy, losses, none, NULL, N, V, 0)));
    free(logits), free(copy);
}

/* Sizes above the parallel threshold: the threaded paths agree with the plain loops and give
 * bit-identical results for 1 and 2 threads (reductions are split by column, never by row). */
static void test_threads_do_not_change_results(void) {
    /* N*C = 32768 and N*OC = 65536: every kernel here takes its threaded path with 2 threads */
    int B = 2, T = 64, C = 256, H = 4, N = B * T, V = 1000, OC = 512;
    size_t nq = (size_t)N * 3 * C, na = (size_t)B * H * T * T;
    float *qkv = rnd(nq, 1, 1), *dout = rnd((size_t)N * C, 2, 1), *lnw = rnd(C, 3, 1);
    float *lnb = rnd(C, 4, 1), *logits = rnd((size_t)N * V, 5, 1);
    int *tg = malloc(N * sizeof(int));
    for (int i = 0; i < N; i++) tg[i] = (i * 37) % V;
    float *o[2], *att[2], *dq[2], *ln[2], *mean[2], *rstd[2], *dln[2], *dw[2], *db[2], *lg[2];
    float *ge[2], *mo[2], *mdi[2], *mdw[2], *mdb[2], losses[128];
    float *mw = rnd((size_t)C * OC, 6, 0.1f), *mb = rnd(OC, 7, 1),
          *mdout = rnd((size_t)N * OC, 8, 1);
    double ce[2];
    for (int r = 0; r < 2; r++) {
        ops_set_threads(r + 1);
        o[r] = zeros((size_t)N * C), att[r] = zeros(na), dq[r] = zeros(nq);
        ln[r] = zeros((size_t)N * C), mean[r] = zeros(N), rstd[r] = zeros(N);
        dln[r] = zeros((size_t)N * C), dw[r] = zeros(C), db[r] = zeros(C);
        ge[r] = zeros((size_t)N * C);
        mo[r] = zeros((size_t)N * OC), mdi[r] = zeros((size_t)N * C);
        mdw[r] = zeros((size_t)C * OC), mdb[r] = zeros(OC);
        lg[r] = malloc((size_t)N * V * sizeof(float));
        memcpy(lg[r], logits, (size_t)N * V * sizeof(float));
        float *datt = zeros(na);
        ops_attention_forward(o[r], att[r], qkv, B, T, C, H);
        ops_attention_backward(dq[r], datt, dout, qkv, att[r], B, T, C, H);
        ops_layernorm_forward(ln[r], mean[r], rstd[r], o[r], lnw, lnb, N, C, 1e-5f);
        ops_layernorm_backward(dln[r], dw[r], db[r], dout, o[r], lnw, mean[r], rstd[r], N, C);
        ops_gelu_forward(ge[r], ln[r], (size_t)N * C);
        ce[r] = ops_crossentropy(lg[r], losses, tg, NULL, N, V, 1);
        ops_matmul_forward(mo[r], ln[r], mw, mb, N, C, OC);
        ops_matmul_backward(mdi[r], mdw[r], mdb[r], mdout, ln[r], mw, N, C, OC);
        free(datt);
    }
    CHECK_EQ(ops_get_threads(), 2);
    CHECK_EQ(memcmp(o[0], o[1], (size_t)N * C * sizeof(float)), 0);
    CHECK_EQ(memcmp(dq[0], dq[1], nq * sizeof(float)), 0);
    CHECK_EQ(memcmp(ln[0], ln[1], (size_t)N * C * sizeof(float)), 0);
    CHECK_EQ(memcmp(dln[0], dln[1], (size_t)N * C * sizeof(float)), 0);
    CHECK_EQ(memcmp(dw[0], dw[1], C * sizeof(float)), 0);
    CHECK_EQ(memcmp(db[0], db[1], C * sizeof(float)), 0);
    CHECK_EQ(memcmp(ge[0], ge[1], (size_t)N * C * sizeof(float)), 0);
    CHECK_EQ(memcmp(lg[0], lg[1], (size_t)N * V * sizeof(float)), 0);
    CHECK_EQ(ce[0] == ce[1], 1);
    CHECK_NEAR(max_abs_diff(mo[0], mo[1], (size_t)N * OC), 0, 1e-5);
    CHECK_NEAR(max_abs_diff(mdi[0], mdi[1], (size_t)N * C), 0, 1e-5);
    CHECK_NEAR(max_abs_diff(mdw[0], mdw[1], (size_t)C * OC), 0, 1e-5);
    CHECK_EQ(memcmp(mdb[0], mdb[1], OC * sizeof(float)), 0);
    /* the threaded reductions agree with the plain loops: LayerNorm and bias gradients */
    float *rdi = zeros((size_t)N * C), *rdw = zeros((size_t)C * OC), *rdb = zeros(OC);
    ops_matmul_backward_ref(rdi, rdw, rdb, mdout, ln[1], mw, N, C, OC);
    CHECK_NEAR(max_abs_diff(mdb[1], rdb, OC), 0, 1e-4);
    CHECK_NEAR(max_abs_diff(mdw[1], rdw, (size_t)C * OC), 0, 1e-4);
    float *ldw = zeros(C), *ldb = zeros(C);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            float norm = (o[1][n * C + c] - mean[1][n]) * rstd[1][n];
            ldb[c] += dout[n * C + c];
            ldw[c] += norm * dout[n * C + c];
        }
    CHECK_NEAR(max_abs_diff(dw[1], ldw, C), 0, 1e-4);
    CHECK_NEAR(max_abs_diff(db[1], ldb, C), 0, 1e-4);
    free(rdi), free(rdw), free(rdb), free(ldw), free(ldb);
    /* and the threaded attention agrees with its plain twin at this size */
    float *oref = zeros((size_t)N * C), *aref = zeros(na), *dqref = zeros(nq), *daref = zeros(na);
    ops_attention_forward_ref(oref, aref, qkv, B, T, C, H);
    ops_attention_backward_ref(dqref, daref, dout, qkv, aref, B, T, C, H);
    CHECK_NEAR(max_abs_diff(o[1], oref, (size_t)N * C), 0, 1e-5);
    CHECK_NEAR(max_abs_diff(dq[1], dqref, nq), 0, 1e-4);
    for (int r = 0; r < 2; r++) {
        free(o[r]), free(att[r]), free(dq[r]), free(ln[r]), free(mean[r]), free(rstd[r]);
        free(dln[r]), free(dw[r]), free(db[r]), free(ge[r]), free(lg[r]);
        free(mo[r]), free(mdi[r]), free(mdw[r]), free(mdb[r]);
    }
    free(qkv), free(dout), free(lnw), free(lnb), free(logits), free(tg);
    free(mw), free(mb), free(mdout);
    free(oref), free(aref), free(dqref), free(daref);
}

int main(void) {
    ops_set_threads(2);
    RUN(test_matmul_vs_ref);
    RUN(test_matmul_grad);
    RUN(test_lmhead);
    RUN(test_attention);
    RUN(test_layernorm);
    RUN(test_gelu);
    RUN(test_residual_encoder);
    RUN(test_crossentropy);
    RUN(test_threads_do_not_change_results);
    return TEST_REPORT();
}
