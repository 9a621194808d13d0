/*
 * test_ops.c - layer kernels: each BLAS-backed kernel against its plain-loop twin, and every
 * layer's backward against central finite differences of its forward.
 *
 * Kernel against twin: the two compute the same sums in different orders (OpenBLAS's order
 * depends on its micro-kernel and thread count), so each element is checked against a bound
 * derived for that element from its own terms (test.h: gamma_k times the sum of absolute terms;
 * gemm_bound and the attention bounds below), never against one fixed tolerance. Where ops.c
 * promises bits (our OpenMP kernels whatever the thread count; a column sum taken in the same
 * order as its twin) the check is memcmp.
 *
 * Finite differences: for a layer y = f(x) and a fixed random R, the scalar s = sum(y * R) has
 * ds/dx = backward(dout = R). Perturbing one float by +-h and differencing s (accumulated in
 * double) gives num = s'(x) + h^2/6 s'''(xi) + (e+ - e-) / 2h, e+- being the rounding errors of
 * the two forward passes. With h = 1e-2 the truncation term is 1.7e-5 |s'''|: 0 for matmul and
 * the LM head (linear in each input), and inside the 1e-2 |num| part of the tolerance while
 * |s'''| <= 600 |s'| (true of LayerNorm, GELU and softmax on O(1) inputs, whose derivatives are
 * O(1)). The rounding term: each output has error <= gamma_K times its sum of absolute terms
 * (K <= 17, sums O(5)), ~1e-6, so s has |e| ~ 1e-6 * sum|R_j| ~ 1e-5 and |e+ - e-| / 2h ~ 1e-3:
 * the 2e-3 absolute part. A wrong index or a missing term is off by O(|s'|), 100 times more.
 */
#include "nn/exact.h"
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

/*
 * The bound on two evaluations of C = c0 + A @ B: f times each element's sum of absolute terms,
 * |c0(m,n)| + sum_k |A(m,k)| |B(k,n)|, in double. Strides let one helper read transposes:
 * A(m,k) = a[m*ars + k*acs], B(k,n) = b[k*brs + n*bcs], c0(m,n) = c0[m*crs + n] (crs 0 repeats a
 * bias row; c0 NULL for none). Returns a malloc'ed (M,N) array.
 */
static double *gemm_bound(int M, int N, int K, const float *a, size_t ars, size_t acs,
                          const float *b, size_t brs, size_t bcs, const float *c0, size_t crs,
                          double f) {
    double *bound = malloc((size_t)M * N * sizeof(double));
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = c0 ? fabs(c0[m * crs + n]) : 0.0;
            for (int k = 0; k < K; k++)
                s += fabs(a[m * ars + k * acs]) * fabs(b[k * brs + n * bcs]);
            bound[(size_t)m * N + n] = f * s;
        }
    return bound;
}

static float *copy(const float *p, size_t n) {
    float *q = malloc(n * sizeof(float));
    memcpy(q, p, n * sizeof(float));
    return q;
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

/* ops_matmul_forward: sgemm (or sgemv) adds IC products to the bias in fp32, IC+1 roundings per
 * element; the twin sums in double and rounds once. Backward: both accumulate OC (dinp) or N
 * (dw) products into the starting value in fp32, in different orders. dbias: the kernel and the
 * twin add the rows of each column in the same order (n = 0..N-1), so the bits agree. */
static void test_matmul_vs_ref(void) {
    int N = 7, IC = 13, OC = 11;
    float *inp = rnd(N * IC, 1, 1), *w = rnd(IC * OC, 2, 1), *b = rnd(OC, 3, 1);
    float *o1 = zeros(N * OC), *o2 = zeros(N * OC), *dout = rnd(N * OC, 4, 1);
    double *bnd = gemm_bound(N, OC, IC, inp, IC, 1, w, OC, 1, b, 0,
                             test_gamma(IC + 1) + test_gamma_ref(IC + 1));
    ops_matmul_forward(o1, inp, w, b, N, IC, OC);
    ops_matmul_forward_ref(o2, inp, w, b, N, IC, OC);
    CHECK_WITHIN(o1, o2, bnd, N * OC);
    /* one row takes the matrix-vector path: the same bound, row 0 */
    ops_matmul_forward(o1, inp, w, b, 1, IC, OC);
    ops_matmul_forward_ref(o2, inp, w, b, 1, IC, OC);
    CHECK_WITHIN(o1, o2, bnd, OC);
    free(bnd);
    bnd = gemm_bound(N, OC, IC, inp, IC, 1, w, OC, 1, NULL, 0, test_gamma(IC) + test_gamma_ref(IC));
    ops_matmul_forward(o1, inp, w, NULL, N, IC, OC);
    ops_matmul_forward_ref(o2, inp, w, NULL, N, IC, OC);
    CHECK_WITHIN(o1, o2, bnd, N * OC);
    free(bnd);
    /* backward accumulates: start both from the same non-zero values */
    float *di1 = rnd(N * IC, 5, 1), *di2 = rnd(N * IC, 5, 1);
    float *dw1 = rnd(IC * OC, 6, 1), *dw2 = rnd(IC * OC, 6, 1);
    float *db1 = rnd(OC, 7, 1), *db2 = rnd(OC, 7, 1);
    /* dinp(N,IC) = dinp0 + dout(N,OC) @ w^T; dw(IC,OC) = dw0 + inp^T @ dout(N,OC) */
    double *bdi = gemm_bound(N, IC, OC, dout, OC, 1, w, 1, OC, di1, IC, 2 * test_gamma(OC + 1));
    double *bdw = gemm_bound(IC, OC, N, inp, 1, IC, dout, OC, 1, dw1, OC, 2 * test_gamma(N + 1));
    ops_matmul_backward(di1, dw1, db1, dout, inp, w, N, IC, OC);
    ops_matmul_backward_ref(di2, dw2, db2, dout, inp, w, N, IC, OC);
    CHECK_WITHIN(di1, di2, bdi, N * IC);
    CHECK_WITHIN(dw1, dw2, bdw, IC * OC);
    CHECK_EQ(memcmp(db1, db2, OC * sizeof(float)), 0);
    free(bdw);
    /* NULL dinp and dbias are skipped; dw accumulates again, both from the kernel's dw */
    float *dwr = copy(dw1, IC * OC);
    bdw = gemm_bound(IC, OC, N, inp, 1, IC, dout, OC, 1, dwr, OC, 2 * test_gamma(N + 1));
    ops_matmul_backward(NULL, dw1, NULL, dout, inp, w, N, IC, OC);
    ops_matmul_backward_ref(NULL, dwr, NULL, dout, inp, w, N, IC, OC);
    CHECK_WITHIN(dw1, dwr, bdw, IC * OC);
    free(inp), free(w), free(b), free(o1), free(o2), free(dout), free(dwr);
    free(di1), free(di2), free(dw1), free(dw2), free(db1), free(db2), free(bdi), free(bdw);
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

/* Forward: C products in fp32 (sgemm or sgemv) against the twin's double sum rounded once.
 * Backward: V (dinp) or N (dwte) products accumulated in fp32 on both sides. */
static void test_lmhead(void) {
    int N = 6, C = 9, V = 17;
    lm_ctx c = {rnd(N * C, 1, 1), rnd(V * C, 2, 1), N, C, V};
    float *o1 = zeros(N * V), *o2 = zeros(N * V), *R = rnd(N * V, 3, 1);
    /* logits(N,V) = inp(N,C) @ wte(V,C)^T */
    double *bnd =
        gemm_bound(N, V, C, c.inp, C, 1, c.wte, 1, C, NULL, 0, test_gamma(C) + test_gamma_ref(C));
    ops_lmhead_forward(o1, c.inp, c.wte, N, C, V);
    ops_lmhead_forward_ref(o2, c.inp, c.wte, N, C, V);
    CHECK_WITHIN(o1, o2, bnd, N * V);
    ops_lmhead_forward(o1, c.inp, c.wte, 1, C, V); /* one row: matrix-vector */
    ops_lmhead_forward_ref(o2, c.inp, c.wte, 1, C, V);
    CHECK_WITHIN(o1, o2, bnd, V);
    free(bnd);
    float *di1 = rnd(N * C, 4, 1), *di2 = rnd(N * C, 4, 1);
    float *dw1 = rnd(V * C, 5, 1), *dw2 = rnd(V * C, 5, 1);
    /* dinp(N,C) = dinp0 + R(N,V) @ wte(V,C); dwte(V,C) = dwte0 + R^T @ inp(N,C) */
    double *bdi = gemm_bound(N, C, V, R, V, 1, c.wte, C, 1, di1, C, 2 * test_gamma(V + 1));
    double *bdw = gemm_bound(V, C, N, R, 1, V, c.inp, C, 1, dw1, C, 2 * test_gamma(N + 1));
    ops_lmhead_backward(di1, dw1, R, c.inp, c.wte, N, C, V);
    ops_lmhead_backward_ref(di2, dw2, R, c.inp, c.wte, N, C, V);
    CHECK_WITHIN(di1, di2, bdi, N * C);
    CHECK_WITHIN(dw1, dw2, bdw, V * C);
    free(bdi), free(bdw);
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

/*
 * Bounds for the attention kernels. Per (b, h) with hs = C/H, q_t, k_u, v_u the rows of qkv,
 * scale = 1/sqrt(hs) (the same float on both sides) and "exact" meaning real arithmetic on the
 * same float inputs.
 *
 * Forward, each side: the score s_tu = scale q_t.k_u is hs products summed and scaled, within
 * e_tu = gamma_{hs+1} scale sum_i |q_ti k_ui| of exact. Softmax of scores each off by <= e_u is
 * off by <= e_u + max_v e_v in log p_u (log-sum-exp is 1-Lipschitz). Its own roundings add, in
 * log p_u: x = s - max rounded (u |x| <= u X, X the row's range of scores), expf (test.h) on p_u
 * and on the row sum, the row sum itself (t additions: gamma_t) and the division (two roundings:
 * 1/sum then a product). So |log p1 - log p2| <= eta, twice one side's sum, and
 * |p1 - p2| <= min(p1, p2) expm1(eta); above the diagonal both are exactly 0. Outputs o = p @ v:
 * T products on each side plus the measured difference of the probabilities each used:
 * |o1 - o2| <= gamma_T sum_u (|p1_tu| + |p2_tu|) |v_u| + sum_u |p1_tu - p2_tu| |v_u|.
 */
/* batt(B,H,T,T) and bout(B,T,C): bounds on two forwards of qkv that gave att1 and att2. */
static void attention_fwd_bound(double *batt, double *bout, const float *qkv, const float *att1,
                                const float *att2, int B, int T, int C, int H) {
    int hs = C / H, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    double *sc = malloc((size_t)T * sizeof(double)), *e = malloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const float *q = qkv + ((size_t)b * T + t) * C3 + h * hs;
                double E = 0, lo = INFINITY, hi = -INFINITY;
                for (int u = 0; u <= t; u++) {
                    const float *k = qkv + ((size_t)b * T + u) * C3 + C + h * hs;
                    double dot = 0, mag = 0;
                    for (int i = 0; i < hs; i++)
                        dot += (double)q[i] * k[i], mag += fabs(q[i] * (double)k[i]);
                    sc[u] = scale * dot;
                    e[u] = test_gamma(hs + 1) * scale * mag;
                    E = fmax(E, e[u]), lo = fmin(lo, sc[u]), hi = fmax(hi, sc[u]);
                }
                double X = hi - lo + 2 * E;
                size_t row = (((size_t)b * H + h) * T + t) * T;
                for (int u = 0; u < T; u++) {
                    if (u > t) {
                        batt[row + u] = 0;
                        continue;
                    }
                    double side = e[u] + E + 2 * TEST_U32 * X + 2 * test_logerr(TEST_EXPF_REL) +
                                  test_logerr(test_gamma(t)) + 2 * test_logerr(TEST_U32);
                    double p = fmin(att1[row + u], att2[row + u]);
                    batt[row + u] = p * expm1(2 * side);
                }
                for (int i = 0; i < hs; i++) {
                    double mag = 0, prop = 0;
                    for (int u = 0; u <= t; u++) {
                        double v = fabs(qkv[((size_t)b * T + u) * C3 + 2 * C + h * hs + i]);
                        mag += (fabs(att1[row + u]) + fabs(att2[row + u])) * v;
                        prop += fabs((double)att1[row + u] - att2[row + u]) * v;
                    }
                    bout[((size_t)b * T + t) * C + h * hs + i] = test_gamma(T) * mag + prop;
                }
            }
    free(sc), free(e);
}

/*
 * Backward, both sides from the same dout, qkv, att (p) and starting dqkv0; per (b, h):
 *   da_tu = d_t.v_u          hs products:   |err| <= gamma_hs DV_tu,  DV_tu = sum_i |d_ti v_ui|
 *   dot_t = sum_u p_tu da_tu t+1 products of the computed da: |err| <= edot_t =
 *                            (gamma_{t+1} (1 + gamma_hs) + gamma_hs) DOT_t, DOT_t = sum_u p DV
 *   ds_tu = p (da - dot) scale, three roundings: |err| <= eds_tu = p scale (gamma_hs DV + edot
 *                            + gamma_3 ((1 + gamma_hs) DV + DOT + edot)), |ds| <= DS_tu =
 *                            p scale (DV + DOT) + eds
 *   dq_t += sum_u ds_tu k_u, dk_u += sum_t ds_tu q_t, dv_u += sum_t p_tu d_t: T products each
 *                            accumulated in fp32, T+1 roundings on each side.
 * So |dq1 - dq2| <= 2 gamma_{T+1} (|dq0| + sum_u DS |k|) + 2 sum_u eds |k|, the same for dk with
 * q, and |dv1 - dv2| <= 2 gamma_{T+1} (|dv0| + sum_t p |d|). bdqkv is (B,T,3C).
 */
static void attention_bwd_bound(double *bdqkv, const float *dqkv0, const float *dout,
                                const float *qkv, const float *att, int B, int T, int C, int H) {
    int hs = C / H, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    double ghs = test_gamma(hs), gT = test_gamma(T + 1), g3 = test_gamma(3);
    size_t tt = (size_t)T * T;
    double *DS = malloc(tt * sizeof(double)), *eds = malloc(tt * sizeof(double));
    double *DV = malloc(tt * sizeof(double));
    for (size_t i = 0; i < (size_t)B * T * C3; i++) bdqkv[i] = fabs(dqkv0[i]) * 2 * gT;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *p = att + ((size_t)b * H + h) * tt;
#define Q(t, i)         qkv[((size_t)b * T + (t)) * C3 + h * hs + (i)]
#define K(t, i)         qkv[((size_t)b * T + (t)) * C3 + C + h * hs + (i)]
#define VV(t, i)        qkv[((size_t)b * T + (t)) * C3 + 2 * C + h * hs + (i)]
#define D(t, i)         dout[((size_t)b * T + (t)) * C + h * hs + (i)]
#define BND(t, part, i) bdqkv[((size_t)b * T + (t)) * C3 + (part)*C + h * hs + (i)]
            for (int t = 0; t < T; t++) {
                double DOT = 0;
                for (int u = 0; u <= t; u++) {
                    double dv = 0;
                    for (int i = 0; i < hs; i++) dv += fabs((double)D(t, i) * VV(u, i));
                    DV[t * T + u] = dv;
                    DOT += fabs(p[t * T + u]) * dv;
                }
                double edot = (test_gamma(t + 1) * (1 + ghs) + ghs) * DOT;
                for (int u = 0; u < T; u++) {
                    double a = u <= t ? fabs(p[t * T + u]) * scale : 0,
                           dv = u <= t ? DV[t * T + u] : 0;
                    eds[t * T + u] = a * (ghs * dv + edot + g3 * ((1 + ghs) * dv + DOT + edot));
                    DS[t * T + u] = a * (dv + DOT) + eds[t * T + u];
                }
            }
            for (int t = 0; t < T; t++)
                for (int i = 0; i < hs; i++) {
                    double dq = 0, dk = 0, dv = 0;
                    for (int u = 0; u < T; u++) {
                        dq += 2 * gT * DS[t * T + u] * fabs(K(u, i)) +
                              2 * eds[t * T + u] * fabs(K(u, i));
                        /* t plays u here: the key and value at position t collect over queries u */
                        dk += 2 * gT * DS[u * T + t] * fabs(Q(u, i)) +
                              2 * eds[u * T + t] * fabs(Q(u, i));
                        dv += 2 * gT * fabs(p[u * T + t]) * fabs(D(u, i));
                    }
                    BND(t, 0, i) += dq;
                    BND(t, 1, i) += dk;
                    BND(t, 2, i) += dv;
                }
#undef Q
#undef K
#undef VV
#undef D
#undef BND
        }
    free(DS), free(eds), free(DV);
}

static void test_attention(void) {
    int B = 2, T = 5, C = 12, H = 3;
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, na = (size_t)B * H * T * T;
    at_ctx c = {rnd(nq, 1, 1), zeros(na), B, T, C, H};
    float *o1 = zeros(no), *o2 = zeros(no), *a2 = zeros(na), *R = rnd(no, 2, 1);
    double *batt = malloc(na * sizeof(double)), *bo = malloc(no * sizeof(double));
    double *bdq = malloc(nq * sizeof(double));
    ops_attention_forward(o1, c.att, c.qkv, B, T, C, H);
    ops_attention_forward_ref(o2, a2, c.qkv, B, T, C, H);
    attention_fwd_bound(batt, bo, c.qkv, c.att, a2, B, T, C, H);
    CHECK_WITHIN(c.att, a2, batt, na);
    CHECK_WITHIN(o1, o2, bo, no);
    /* causality: row t of every head sums to 1 over u <= t and is 0 above. The computed p_u are
     * e_u / S times two roundings, S the fp32 sum of the e_u (t additions), so their sum is
     * within (1 + u)^2 / (1 - gamma_t) - 1 of 1 (plus the double sum's own t * 2^-53). */
    for (int bht = 0; bht < B * H * T; bht++) {
        int t = bht % T;
        double s = 0;
        for (int u = 0; u < T; u++) {
            if (u > t) CHECK_EQ(c.att[(size_t)bht * T + u] == 0.0f, 1);
            s += c.att[(size_t)bht * T + u];
        }
        CHECK_NEAR(s, 1.0,
                   (1 + TEST_U32) * (1 + TEST_U32) / (1 - test_gamma(t)) - 1 + test_gamma64(T));
    }
    float *dq1 = rnd(nq, 3, 1), *dq2 = rnd(nq, 3, 1), *da1 = zeros(na), *da2 = zeros(na);
    attention_bwd_bound(bdq, dq1, R, c.qkv, c.att, B, T, C, H);
    ops_attention_backward(dq1, da1, R, c.qkv, c.att, B, T, C, H);
    ops_attention_backward_ref(dq2, da2, R, c.qkv, c.att, B, T, C, H);
    CHECK_WITHIN(dq1, dq2, bdq, nq);
    free(batt), free(bo), free(bdq);
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
    /* With w = 1, b = 0 each row has mean 0 and variance v/(v + eps), up to rounding. The
     * kernel returns its mean m and rstd s; each output is (x - m) s with two roundings. So
     * sum/C = s (mu - m) + s mean((x - m) theta_2) exactly, mu the row's true mean. Its variance
     * about m, V = mean((x - m)^2), is computed as V (1 + theta_{C+3}) (a subtraction squared, a
     * product, C-1 additions, the division); + eps, sqrtf and 1/ put s within es of exact; and
     * sum(out^2)/C = s^2 V (1 + theta_2)^2: an interval [lo, hi] around 1. */
    float *one = malloc(C * sizeof(float)), *zero = zeros(C);
    for (int i = 0; i < C; i++) one[i] = 1.0f;
    float *norm = zeros(N * C);
    ops_layernorm_forward(norm, c.mean, c.rstd, c.inp, one, zero, N, C, 1e-5f);
    double g2 = test_gamma(2), gv = test_gamma(C + 3), u = TEST_U32;
    double es = (1 + u) / ((1 - u) * sqrt(1 - u)) - 1;
    for (int n = 0; n < N; n++) {
        const float *x = c.inp + n * C;
        double s = 0, s2 = 0, mu = 0, dev = 0, V = 0, m = c.mean[n], r = c.rstd[n];
        for (int i = 0; i < C; i++) s += norm[n * C + i], s2 += norm[n * C + i] * norm[n * C + i];
        for (int i = 0; i < C; i++) mu += x[i], dev += fabs(x[i] - m), V += (x[i] - m) * (x[i] - m);
        mu /= C, dev /= C, V /= C;
        CHECK_NEAR(s / C, 0.0, r * (fabs(mu - m) + g2 * dev) + test_gamma64(2 * C) * (1 + fabs(s)));
        double eps = 1e-5f;
        double lo = V * (1 - es) * (1 - es) / (V * (1 + gv) + eps) * (1 - g2) * (1 - g2);
        double hi = V * (1 + es) * (1 + es) / (V * (1 - gv) + eps) * (1 + g2) * (1 + g2);
        CHECK_NEAR(s2 / C, (lo + hi) / 2, (hi - lo) / 2 + test_gamma64(2 * C) * hi);
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
    /* The kernel's x * sigmoid(2u) against gelu_new in double: u = k (x + 0.044715 x^3) carries
     * 7 roundings (5 operations, 2 constants), so 2u is off by dz = 2|u| gamma_7, which moves
     * log sigmoid by at most (1 - sigmoid) dz e^dz; expf, 1 + e, the division and x * s add
     * theirs: |out - ref| <= |ref| expm1(eta). */
    for (size_t i = 0; i < n; i++) {
        double x = c.inp[i], u = sqrt(2 / M_PI) * (x + 0.044715 * x * x * x);
        double ref = 0.5 * x * (1 + tanh(u)), sig = 1 / (1 + exp(-2 * u));
        double dz = 2 * fabs(u) * test_gamma(7);
        double eta = (1 - sig) * dz * exp(dz) + test_logerr(TEST_EXPF_REL) +
                     3 * test_logerr(TEST_U32) + test_gamma64(8);
        CHECK_NEAR(out[i], ref, fabs(ref) * expm1(eta));
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
    /* token 1 appears three times: its gradient row is the sum of those three rows, added in
     * position order onto 0 - the same fp32 additions as written here, so the same bits */
    for (int c = 0; c < C; c++) {
        CHECK(dwte[1 * C + c] == dout[0 * C + c] + dout[2 * C + c] + dout[5 * C + c]);
        CHECK(dwte[3 * C + c] == 0.0f);
        CHECK(dwpe[0 * C + c] == dout[0 * C + c] + dout[3 * C + c]);
    }
    free(wte), free(wpe), free(out), free(dout), free(dwte), free(dwpe);
}

/* ---- cross-entropy -------------------------------------------------------------------- */

/* Row n's loss in double from the same float logits, ref_n = -log softmax(x)[t], and the bound
 * on the kernel's fp32 loss: test_logsoftmax's (the kernel sums expf in double, takes the log and
 * adds max - x_t in double) and one rounding to float. Returns the bound on the weighted mean,
 * whose double sum of w_n losses_n adds gamma64. */
static double ce_bound(const float *logits, const int *targets, const float *w, int N, int V,
                       double *ref, double *bound) {
    double wsum = 0, wb = 0, wl = 0;
    for (int n = 0; n < N; n++) {
        ref[n] = bound[n] = 0;
        if (targets[n] < 0) continue;
        double pre;
        ref[n] = -test_logsoftmax(logits + (size_t)n * V, V, targets[n], &pre);
        bound[n] = pre + test_gamma(1) * (fabs(ref[n]) + pre);
        wsum += w[n], wb += w[n] * bound[n], wl += w[n] * fabs(ref[n]);
    }
    return wb / wsum + test_gamma64(2 * N + 2) * wl / wsum;
}

static void test_crossentropy(void) {
    int N = 4, V = 7, targets[4] = {3, -1, 0, 6};
    float w[4] = {1.0f, 1.0f, 0.5f, 2.0f};
    float *logits = rnd(N * V, 1, 2), *copy = malloc(N * V * sizeof(float)), losses[4];
    double ref[4], bound[4];
    memcpy(copy, logits, N * V * sizeof(float));
    double mean = ops_crossentropy(logits, losses, targets, w, N, V, 0);
    double mean_bound = ce_bound(copy, targets, w, N, V, ref, bound), wref = 0, wsum = 0;
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) continue;
        CHECK_NEAR(losses[n], ref[n], bound[n]);
        wref += w[n] * ref[n], wsum += w[n];
    }
    CHECK_NEAR(losses[1], 0, 0);
    CHECK_NEAR(mean, wref / wsum, mean_bound);
    /*
     * Gradient: central differences of the weighted mean, num = (f(x + h1) - f(x - h2)) /
     * (h1 + h2) with h1, h2 the steps the floats actually took (1e-2 give or take a rounding).
     * It is f' + (h1 - h2)/2 f'' + h^2/6 f''' + (e+ - e-)/(h1 + h2): only row n moves, where f''
     * and f''' are w_n/wsum times p(1-p) <= 1/4 and p(1-p)(1-2p) <= 1/(6 sqrt 3), and e+- are
     * within ce_bound. The analytic gradient is fp32: (w_n/wsum) p expm1(eta) with eta as in
     * ce_bound's doubled (p and its row sum) plus 5 roundings, and 2 more at the target.
     */
    ops_crossentropy(logits, losses, targets, w, N, V, 1);
    float *tmp = malloc(N * V * sizeof(float));
    for (int i = 0; i < N * V; i++) {
        int n = i / V;
        float keep = copy[i], xp = keep + 1e-2f, xm = keep - 1e-2f;
        double h1 = (double)xp - keep, h2 = (double)keep - xm;
        copy[i] = xp;
        memcpy(tmp, copy, N * V * sizeof(float));
        double bp = ce_bound(tmp, targets, w, N, V, ref, bound);
        double lp = ops_crossentropy(tmp, losses, targets, w, N, V, 0);
        copy[i] = xm;
        memcpy(tmp, copy, N * V * sizeof(float));
        double bm = ce_bound(tmp, targets, w, N, V, ref, bound);
        double lm = ops_crossentropy(tmp, losses, targets, w, N, V, 0);
        copy[i] = keep;
        double wn = targets[n] < 0 ? 0 : w[n] / wsum, mx = -INFINITY, lo = INFINITY, S = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, copy[n * V + v]), lo = fmin(lo, copy[n * V + v]);
        for (int v = 0; v < V; v++) S += exp(copy[n * V + v] - mx);
        double p = exp(keep - mx) / S, hmax = fmax(h1, h2);
        double eta = 2 * (TEST_U32 * (mx - lo) + test_logerr(TEST_EXPF_REL)) +
                     test_logerr(test_gamma(5)) + test_gamma64(V + 2);
        double grad_err = wn * p * expm1(eta);
        if (i % V == targets[n]) grad_err += test_gamma(2) * wn + TEST_U32 * fabs(logits[i]);
        double tol = (bp + bm) / (h1 + h2) + fabs(h1 - h2) / 2 * wn / 4 +
                     hmax * hmax / 6 * wn / (6 * sqrt(3.0)) + grad_err;
        CHECK_NEAR(logits[i], (lp - lm) / (h1 + h2), tol);
    }
    free(tmp);
    /* all positions ignored: NaN, not a silent 0 */
    int none[4] = {-1, -1, -1, -1};
    CHECK(isnan(ops_crossentropy(copy, losses, none, NULL, N, V, 0)));
    free(logits), free(copy);
}

/* Sizes above the parallel threshold: the threaded paths agree with the plain loops and give
 * bit-identical results for 1 and 2 threads (reductions are split by column, never by row). */
/* ex_expf against exp in double: within its 2-ulp contract (relative 2 * 2^-23) wherever the
 * result is normal, within one subnormal step below, and IEEE special values. A sample of every
 * 97th float bit pattern of the range: about 20 million values. */
static void test_ex_expf(void) {
    double worst = 0;
    long n = 0;
    for (uint32_t b = 0; b < 0xFFFFFF00u; b += 97) {
        float x;
        memcpy(&x, &b, sizeof x);
        if (!(x > -104.0f && x < 88.72f)) continue;
        double e = exp((double)x), g = ex_expf(x);
        double err = fabs(g - e);
        if (e >= 0x1p-126) {
            err /= e;
            worst = err > worst ? err : worst;
            if (err > 2 * 0x1p-23) TEST__FAIL("ex_expf(%a) = %a, exp = %a", x, g, e);
        } else if (err > 0x1p-149) {
            TEST__FAIL("ex_expf(%a) = %a (subnormal), exp = %a", x, g, e);
        }
        n++;
    }
    fprintf(stderr, "     ex_expf: %ld values, worst %.2f ulp\n", n, worst / 0x1p-23);
    CHECK(n > 10000000);
    CHECK(ex_expf(0.0f) == 1.0f && ex_expf(-0.0f) == 1.0f);
    CHECK(ex_expf(-INFINITY) == 0.0f && ex_expf(-150.0f) == 0.0f);
    CHECK(isinf(ex_expf(INFINITY)) && isinf(ex_expf(88.73f)) && isinf(ex_expf(1e30f)));
    CHECK(isnan(ex_expf(NAN)));
}

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
    /* The matrix products are OpenBLAS's, whose summation order depends on its thread count:
     * both runs are fp32 sums of C (forward, onto the bias), OC (dinp) or N (dw) products. */
    double *bmo = gemm_bound(N, OC, C, ln[1], C, 1, mw, OC, 1, mb, 0, 2 * test_gamma(C + 1));
    double *bmdi = gemm_bound(N, C, OC, mdout, OC, 1, mw, 1, OC, NULL, 0, 2 * test_gamma(OC + 1));
    double *bmdw = gemm_bound(C, OC, N, ln[1], 1, C, mdout, OC, 1, NULL, 0, 2 * test_gamma(N + 1));
    CHECK_WITHIN(mo[0], mo[1], bmo, (size_t)N * OC);
    CHECK_WITHIN(mdi[0], mdi[1], bmdi, (size_t)N * C);
    CHECK_WITHIN(mdw[0], mdw[1], bmdw, (size_t)C * OC);
    CHECK_EQ(memcmp(mdb[0], mdb[1], OC * sizeof(float)), 0);
    /* the threaded reductions agree with the plain loops: the bias gradient takes each column's
     * rows in the twin's order (bits); dw is OpenBLAS's, the bound above */
    float *rdi = zeros((size_t)N * C), *rdw = zeros((size_t)C * OC), *rdb = zeros(OC);
    ops_matmul_backward_ref(rdi, rdw, rdb, mdout, ln[1], mw, N, C, OC);
    CHECK_EQ(memcmp(mdb[1], rdb, OC * sizeof(float)), 0);
    CHECK_WITHIN(mdw[1], rdw, bmdw, (size_t)C * OC);
    /* LayerNorm's parameter gradients against a plain loop: N terms per column, summed in fp32
     * on both sides (the same order, but nothing here pins the compiler's contraction of
     * norm * dout + acc), so within 2 gamma_N of the sum of |terms|, norm as both compute it */
    float *ldw = zeros(C), *ldb = zeros(C);
    double *bldw = calloc(C, sizeof(double)), *bldb = calloc(C, sizeof(double));
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            float norm = (o[1][n * C + c] - mean[1][n]) * rstd[1][n];
            ldb[c] += dout[n * C + c];
            ldw[c] += norm * dout[n * C + c];
            bldb[c] += 2 * test_gamma(N) * fabs(dout[n * C + c]);
            bldw[c] += 2 * test_gamma(N) * fabs(norm * (double)dout[n * C + c]);
        }
    CHECK_WITHIN(dw[1], ldw, bldw, C);
    CHECK_WITHIN(db[1], ldb, bldb, C);
    free(rdi), free(rdw), free(rdb), free(ldw), free(ldb), free(bldw), free(bldb);
    free(bmo), free(bmdi), free(bmdw);
    /* and the threaded attention agrees with its plain twin at this size; the backward twin
     * reads the probabilities the kernel saved, so both differentiate the same forward */
    float *oref = zeros((size_t)N * C), *aref = zeros(na), *dqref = zeros(nq), *daref = zeros(na);
    float *dq0 = zeros(nq);
    double *batt = malloc(na * sizeof(double)), *bo = malloc((size_t)N * C * sizeof(double));
    double *bdq = malloc(nq * sizeof(double));
    ops_attention_forward_ref(oref, aref, qkv, B, T, C, H);
    ops_attention_backward_ref(dqref, daref, dout, qkv, att[1], B, T, C, H);
    attention_fwd_bound(batt, bo, qkv, att[1], aref, B, T, C, H);
    attention_bwd_bound(bdq, dq0, dout, qkv, att[1], B, T, C, H);
    CHECK_WITHIN(att[1], aref, batt, na);
    CHECK_WITHIN(o[1], oref, bo, (size_t)N * C);
    CHECK_WITHIN(dq[1], dqref, bdq, nq);
    free(dq0), free(batt), free(bo), free(bdq);
    for (int r = 0; r < 2; r++) {
        free(o[r]), free(att[r]), free(dq[r]), free(ln[r]), free(mean[r]), free(rstd[r]);
        free(dln[r]), free(dw[r]), free(db[r]), free(ge[r]), free(lg[r]);
        free(mo[r]), free(mdi[r]), free(mdw[r]), free(mdb[r]);
    }
    free(qkv), free(dout), free(lnw), free(lnb), free(logits), free(tg);
    free(mw), free(mb), free(mdout);
    free(oref), free(aref), free(dqref), free(daref);
}

/* ---- the Llama family's kernels ------------------------------------------------------------ */

/* w (R, C) transposed into (C, R). */
static float *transposed(const float *w, int R, int C) {
    float *t = malloc((size_t)R * C * sizeof(float));
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) t[(size_t)c * R + r] = w[(size_t)r * C + c];
    return t;
}

/* The [out, in] linear layer is the [in, out] one on the transposed weight: with the exact
 * products both are one fused chain per output in k order, so the same bits, forward and
 * backward (dinp, dbias, and dw transposed). */
static void test_linear_is_matmul_transposed(void) {
    if (strcmp(ops_gemm(), "exact") != 0) return; /* a promise of the exact products */
    int N = 7, IC = 19, OC = 13;
    float *inp = rnd(N * IC, 1, 1), *w = rnd(OC * IC, 2, 1), *b = rnd(OC, 3, 1);
    float *wt = transposed(w, OC, IC), *o1 = zeros(N * OC), *o2 = zeros(N * OC);
    ops_linear_forward(o1, inp, w, b, N, IC, OC);
    ops_matmul_forward(o2, inp, wt, b, N, IC, OC);
    CHECK_EQ(memcmp(o1, o2, sizeof(float) * N * OC), 0);
    ops_linear_forward(o1, inp, w, NULL, N, IC, OC);
    ops_matmul_forward(o2, inp, wt, NULL, N, IC, OC);
    CHECK_EQ(memcmp(o1, o2, sizeof(float) * N * OC), 0);
    float *R = rnd(N * OC, 4, 1), *di1 = rnd(N * IC, 5, 1), *di2 = rnd(N * IC, 5, 1);
    float *dw1 = rnd(OC * IC, 6, 1), *dw2 = transposed(dw1, OC, IC), *db1 = rnd(OC, 7, 1);
    float *db2 = malloc(sizeof(float) * OC);
    memcpy(db2, db1, sizeof(float) * OC);
    ops_linear_backward(di1, dw1, db1, R, inp, w, N, IC, OC);
    ops_matmul_backward(di2, dw2, db2, R, inp, wt, N, IC, OC);
    float *dw2t = transposed(dw2, IC, OC);
    CHECK_EQ(memcmp(di1, di2, sizeof(float) * N * IC), 0);
    CHECK_EQ(memcmp(dw1, dw2t, sizeof(float) * OC * IC), 0);
    CHECK_EQ(memcmp(db1, db2, sizeof(float) * OC), 0);
    free(inp), free(w), free(b), free(wt), free(o1), free(o2), free(R), free(di1), free(di2);
    free(dw1), free(dw2), free(dw2t), free(db1), free(db2);
}

/*
 * Grouped-query attention against GPT-2's multi-head kernel on the same heads: with one
 * query head per key/value head (and the same layout) it is that kernel, bit for bit; with
 * groups of G it is that kernel on q | k | v with each shared key/value head repeated G times,
 * and the shared heads' gradients are the repeats' gradients summed in head order.
 */
static void test_gqa_attention(void) {
    if (strcmp(ops_gemm(), "exact") != 0) return;
    int B = 2, T = 9, H = 4, hd = 6;
    for (int Hkv = H; Hkv >= 1; Hkv /= 2) {
        int G = H / Hkv, Dq = H * hd, D3 = (H + 2 * Hkv) * hd, C = Dq, C3 = 3 * C;
        float *qkv = rnd(B * T * D3, 10 + Hkv, 1), *full = zeros(B * T * C3);
        for (int bt = 0; bt < B * T; bt++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < hd; i++) {
                    const float *r = qkv + (size_t)bt * D3;
                    float *f = full + (size_t)bt * C3;
                    f[h * hd + i] = r[h * hd + i];
                    f[C + h * hd + i] = r[Dq + (h / G) * hd + i];
                    f[2 * C + h * hd + i] = r[Dq + Hkv * hd + (h / G) * hd + i];
                }
        float *o1 = zeros(B * T * Dq), *o2 = zeros(B * T * C), *a1 = zeros(B * H * T * T);
        float *a2 = zeros(B * H * T * T), *s1 = zeros(B * H * T * T), *s2 = zeros(B * H * T * T);
        ops_gqa_attention_forward(o1, a1, qkv, B, T, H, Hkv, hd);
        ops_attention_forward(o2, a2, full, B, T, C, H);
        CHECK_EQ(memcmp(o1, o2, sizeof(float) * B * T * C), 0);
        CHECK_EQ(memcmp(a1, a2, sizeof(float) * B * H * T * T), 0);
        float *R = rnd(B * T * C, 20, 1), *d1 = zeros(B * T * D3), *d2 = zeros(B * T * C3);
        ops_gqa_attention_backward(d1, s1, R, qkv, a1, B, T, H, Hkv, hd);
        ops_attention_backward(d2, s2, R, full, a2, B, T, C, H);
        /* fold the repeats back: q as is, k and v summed over each group in head order */
        float *fold = zeros(B * T * D3);
        for (int bt = 0; bt < B * T; bt++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < hd; i++) {
                    float *r = fold + (size_t)bt * D3;
                    const float *f = d2 + (size_t)bt * C3;
                    r[h * hd + i] = f[h * hd + i];
                    r[Dq + (h / G) * hd + i] += f[C + h * hd + i];
                    r[Dq + Hkv * hd + (h / G) * hd + i] += f[2 * C + h * hd + i];
                }
        if (memcmp(d1, fold, sizeof(float) * B * T * D3) != 0)
            TEST__FAIL("Hkv=%d: gradients differ from the repeated heads' summed", Hkv);
        free(qkv), free(full), free(o1), free(o2), free(a1), free(a2), free(s1), free(s2);
        free(R), free(d1), free(d2), free(fold);
    }
}

typedef struct {
    float *inp, *w, *rstd;
    int N, C;
} rms_ctx;

static void rms_fwd(void *c, float *out) {
    rms_ctx *r = c;
    ops_rmsnorm_forward(out, r->rstd, r->inp, r->w, r->N, r->C, 1e-5f);
}

typedef struct {
    float *inp;
    int N, F;
} sw_ctx;

static void sw_fwd(void *c, float *out) {
    sw_ctx *s = c;
    ops_swiglu_forward(out, s->inp, s->N, s->F);
}

/* RMSNorm and SwiGLU: each against its formula in double within its rounding bound (the
 * model's test derives the same bounds), and their backward against finite differences. */
static void test_rmsnorm_swiglu(void) {
    int N = 5, C = 12, F = 7;
    rms_ctx r = {rnd(N * C, 30, 2), rnd(C, 31, 1), zeros(N), N, C};
    float *out = zeros(N * C), *R = rnd(N * C, 32, 1);
    rms_fwd(&r, out);
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)r.inp[n * C + c] * r.inp[n * C + c];
        double s = 1 / sqrt(ss / C + 1e-5f);
        CHECK_NEAR(r.rstd[n], s, (test_gamma(C + 4) + test_gamma64(C + 4)) * s);
        for (int c = 0; c < C; c++) {
            double want = r.inp[n * C + c] * s * r.w[c];
            CHECK_NEAR(out[n * C + c], want,
                       (test_gamma(C + 6) + test_gamma64(C + 6)) * fabs(want));
        }
    }
    float *di = zeros(N * C), *dw = zeros(C);
    ops_rmsnorm_backward(di, dw, R, r.inp, r.w, r.rstd, N, C);
    fd_check("rmsnorm inp", rms_fwd, &r, r.inp, di, N * C, out, R, N * C);
    fd_check("rmsnorm w", rms_fwd, &r, r.w, dw, C, out, R, N * C);
    sw_ctx s = {rnd(N * 2 * F, 33, 2), N, F};
    float *so = zeros(N * F), *SR = rnd(N * F, 34, 1), *sd = zeros(N * 2 * F);
    sw_fwd(&s, so);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < F; i++) {
            double g = s.inp[n * 2 * F + i], u = s.inp[n * 2 * F + F + i];
            double want = g / (1 + exp(-g)) * u;
            double eta = test_logerr(TEST_EXPF_REL) + 4 * test_logerr(TEST_U32) + test_gamma64(8);
            CHECK_NEAR(so[n * F + i], want, fabs(want) * expm1(eta));
        }
    ops_swiglu_backward(sd, s.inp, SR, N, F);
    fd_check("swiglu", sw_fwd, &s, s.inp, sd, N * 2 * F, so, SR, N * F);
    free(r.inp), free(r.w), free(r.rstd), free(out), free(R), free(di), free(dw);
    free(s.inp), free(so), free(SR), free(sd);
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
    RUN(test_ex_expf);
    RUN(test_threads_do_not_change_results);
    RUN(test_linear_is_matmul_transposed);
    RUN(test_gqa_attention);
    RUN(test_rmsnorm_swiglu);
    return TEST_REPORT();
}
