/*
 * test_adamw.c - unit tests for the AdamW optimizer, gradient clipping and lr schedules.
 *
 * The optimizer is compared with a plain double-precision reference written here, following the
 * update rule in adamw.h literally (bias-corrected moments divided out per element).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "nn/adamw.h"
#include "test.h"

/* A small deterministic generator (xorshift64*) so runs are reproducible. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float frand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545f4914f6cdd1dull;
    return (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void fill(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * frand();
}

/*
 * The reference: double-precision state and the update rule of adamw.h, term by term, and for
 * each element bounds em, ev, ep on how far the fp32 optimizer's m, v and p are from it. The
 * fp32 step computes, with float constants (beta and 1 - beta exact; lr/bc1, 1/sqrt(bc2) and
 * lr*wd rounded once):
 *   m = b1 m + (1-b1) g             two products and a sum: gamma_2, plus b1 times m's bound
 *   v = b2 v + (1-b2) (g g)         gamma_3, plus b2 times v's bound
 *   D = sqrtf(v) * ibc2 + eps       |sqrt(v') - sqrt(v)| <= min(sqrt(dv), dv / sqrt(v)), then
 *                                   sqrtf, ibc2 and the product (gamma_3), the sum (one more)
 *   Q = (step * m) / D              N/D' - N/D <= (dN + |Q| dD) / (D - dD), one more rounding
 *   p = p - (Q + wd * p)            lr*wd and its product (gamma_2), the two sums one each.
 * The reference's own double roundings add a few 2^-53 relative.
 */
typedef struct {
    double b1, b2, eps, wd;
    double *m, *v, *p, *em, *ev, *ep;
    long t;
} ref_t;

static void ref_init(ref_t *r, size_t n, const float *p, double b1, double b2, double eps,
                     double wd) {
    r->b1 = b1;
    r->b2 = b2;
    r->eps = eps;
    r->wd = wd;
    r->m = calloc(n, sizeof *r->m);
    r->v = calloc(n, sizeof *r->v);
    r->p = malloc(n * sizeof *r->p);
    r->em = calloc(n, sizeof *r->em);
    r->ev = calloc(n, sizeof *r->ev);
    r->ep = calloc(n, sizeof *r->ep);
    for (size_t i = 0; i < n; i++) r->p[i] = p[i];
    r->t = 0;
}

static void ref_free(ref_t *r) {
    free(r->m), free(r->v), free(r->p);
    free(r->em), free(r->ev), free(r->ep);
}

static void ref_step(ref_t *r, const float *g, const adamw_group_t *groups, int n_groups,
                     double lr) {
    r->t++;
    const double bc1 = 1 - pow(r->b1, (double)r->t), bc2 = 1 - pow(r->b2, (double)r->t);
    const double step = lr / bc1, ibc2 = 1 / sqrt(bc2), u = test_gamma(1);
    const double g2 = test_gamma(2), g3 = test_gamma(3), g64 = test_gamma64(16);
    for (int k = 0; k < n_groups; k++) {
        for (size_t i = groups[k].offset; i < groups[k].offset + groups[k].len; i++) {
            double m0 = r->m[i], v0 = r->v[i], p0 = r->p[i], em0 = r->em[i], ev0 = r->ev[i];
            double ep0 = r->ep[i];
            r->m[i] = r->b1 * m0 + (1 - r->b1) * g[i];
            r->v[i] = r->b2 * v0 + (1 - r->b2) * (double)g[i] * g[i];
            double mh = r->m[i] / bc1;
            double vh = r->v[i] / bc2;
            double wd = groups[k].decay ? r->wd : 0.0;
            double upd = lr * (mh / (sqrt(vh) + r->eps) + wd * p0);
            r->p[i] = p0 - upd;
            /* the bounds, in the order of the fp32 step */
            double m = r->m[i], v = r->v[i], em, ev;
            r->em[i] = em =
                r->b1 * em0 + g2 * (r->b1 * (fabs(m0) + em0) + (1 - r->b1) * fabs(g[i]));
            r->ev[i] = ev = r->b2 * ev0 + g3 * (r->b2 * (v0 + ev0) + (1 - r->b2) * g[i] * g[i]);
            double sq = sqrt(v), esq = sqrt(ev);
            if (sq > 0 && ev / sq < esq) esq = ev / sq;
            double D = sq * ibc2 + r->eps, A = ibc2 * (esq + g3 * (sq + esq)), eD = A + u * (D + A);
            double N = step * m, eN = step * (em + g2 * (fabs(m) + em)), Q = N / D;
            double eq = (eN + fabs(Q) * eD) / (D - eD), eQ = eq + u * (fabs(Q) + eq);
            double W = lr * wd * p0, eW = lr * wd * (ep0 + g2 * (fabs(p0) + ep0));
            double eU = eQ + eW + u * (fabs(Q + W) + eQ + eW);
            r->ep[i] = ep0 + eU + u * (fabs(r->p[i]) + ep0 + eU) + g64 * (fabs(p0) + fabs(upd));
        }
    }
}

/* Three groups: decay, no decay, decay. */
static void groups3(adamw_group_t g[3], size_t n) {
    g[0] = (adamw_group_t){0, n / 3, 1};
    g[1] = (adamw_group_t){n / 3, n / 3, 0};
    g[2] = (adamw_group_t){2 * (n / 3), n - 2 * (n / 3), 1};
}

static void test_init_free(void) {
    adamw_t o;
    CHECK_OK(adamw_init(&o, 10, 0.9f, 0.999f, 1e-8f, 0.1f));
    CHECK_EQ(o.n, 10);
    CHECK(o.m == o.moments && o.v == o.moments + 10);
    CHECK_EQ(o.t, 0);
    int zero = 1;
    for (int i = 0; i < 20; i++) zero &= o.moments[i] == 0.0f;
    CHECK(zero);
    adamw_free(&o);
    CHECK(o.moments == NULL && o.n == 0);
    adamw_free(&o); /* twice, and on a zeroed struct */

    CHECK_ERR(adamw_init(&o, 0, 0.9f, 0.999f, 1e-8f, 0.0f), RL_EINVAL);
    CHECK_ERR(adamw_init(&o, 10, 1.0f, 0.999f, 1e-8f, 0.0f), RL_EINVAL);
    CHECK_ERR(adamw_init(&o, 10, 0.9f, NAN, 1e-8f, 0.0f), RL_EINVAL);
    CHECK_ERR(adamw_init(&o, 10, 0.9f, 0.999f, 0.0f, 0.0f), RL_EINVAL);
    CHECK_ERR(adamw_init(&o, 10, 0.9f, 0.999f, 1e-8f, -1.0f), RL_EINVAL);
    CHECK(o.moments == NULL);
    CHECK(strlen(rl_errmsg()) > 0);
}

static void test_first_step_is_lr_sign(void) {
    enum { N = 1000 };
    float p[N], g[N], p0[N];
    fill(p, N, 1.0f);
    memcpy(p0, p, sizeof p);
    for (int i = 0; i < N; i++) { /* |g| in [0.01, 1], well above eps */
        float a = 0.01f + 0.99f * fabsf(frand());
        g[i] = (i % 2) ? a : -a;
    }
    adamw_t o;
    CHECK_OK(adamw_init(&o, N, 0.9f, 0.999f, 1e-8f, 0.1f));
    adamw_group_t grp = {0, N, 0};
    const float lr = 1e-3f;
    CHECK_OK(adamw_step(&o, p, g, &grp, 1, lr));
    CHECK_EQ(o.t, 1);
    /* mh = g and vh = g^2 after bias correction, so each param moves by lr * g / (|g| + eps):
     * -lr sign(g) within lr eps / (|g| + eps), plus the fp32 step's rounding (ref_step) */
    ref_t r;
    ref_init(&r, N, p0, 0.9f, 0.999f, 1e-8f, 0.1f);
    ref_step(&r, g, &grp, 1, lr);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        double want = -(double)lr * (g[i] > 0 ? 1.0 : -1.0);
        double d = fabs(((double)p[i] - p0[i]) - want);
        double tol = lr * 1e-8f / (fabs(g[i]) + 1e-8f) + r.ep[i] + test_gamma64(4) * lr;
        if (!(d <= tol) && bad++ < 5)
            TEST__FAIL("param %d moved by %.9g, not %.9g (diff %.3g > %.3g)", i,
                       (double)p[i] - p0[i], want, d, tol);
    }
    ref_free(&r);
    adamw_free(&o);
}

static void test_matches_reference(void) {
    enum { N = 3001, STEPS = 20 };
    float *p = malloc(N * sizeof *p), *g = malloc(N * sizeof *g);
    fill(p, N, 1.0f);
    adamw_group_t groups[3];
    groups3(groups, N);
    adamw_t o;
    CHECK_OK(adamw_init(&o, N, 0.9f, 0.95f, 1e-8f, 0.1f));
    ref_t r;
    ref_init(&r, N, p, 0.9f, 0.95f, 1e-8f, 0.1f);

    const float lr = 1e-2f;
    for (int s = 0; s < STEPS; s++) {
        fill(g, N, s == 0 ? 1.0f : 0.1f * (float)(s % 4 + 1));
        CHECK_OK(adamw_step(&o, p, g, groups, 3, lr));
        ref_step(&r, g, groups, 3, lr);
        CHECK_WITHIN64(p, r.p, r.ep, N);
        CHECK_WITHIN64(o.m, r.m, r.em, N);
        CHECK_WITHIN64(o.v, r.v, r.ev, N);
    }
    CHECK_EQ(o.t, STEPS);

    ref_free(&r);
    adamw_free(&o);
    free(p);
    free(g);
}

/* Big enough that the steps and passes run on the OpenMP team. */
static void test_matches_reference_large(void) {
    const size_t n = 300007;
    float *p = malloc(n * sizeof *p), *g = malloc(n * sizeof *g);
    fill(p, n, 0.5f);
    adamw_group_t groups[3];
    groups3(groups, n);
    adamw_t o;
    CHECK_OK(adamw_init(&o, n, 0.9f, 0.999f, 1e-8f, 0.01f));
    ref_t r;
    ref_init(&r, n, p, 0.9f, 0.999f, 1e-8f, 0.01f);
    for (int s = 0; s < 3; s++) {
        fill(g, n, 1e-3f);
        CHECK_OK(adamw_step(&o, p, g, groups, 3, 3e-4f));
        ref_step(&r, g, groups, 3, 3e-4f);
    }
    CHECK_WITHIN64(p, r.p, r.ep, n);
    CHECK_WITHIN64(o.m, r.m, r.em, n);
    CHECK_WITHIN64(o.v, r.v, r.ev, n);
    ref_free(&r);
    adamw_free(&o);
    free(p);
    free(g);
}

static void test_weight_decay_groups(void) {
    enum { N = 8 };
    float p[N] = {1.0f, -2.0f, 0.5f, 3.0f, 1.0f, -2.0f, 0.5f, 3.0f};
    float g[N] = {0};
    float p0[N];
    memcpy(p0, p, sizeof p);
    adamw_group_t groups[2] = {{0, 4, 1}, {4, 4, 0}};
    adamw_t o;
    const float lr = 0.1f, wd = 0.5f;
    CHECK_OK(adamw_init(&o, N, 0.9f, 0.999f, 1e-8f, wd));
    CHECK_OK(adamw_step(&o, p, g, groups, 2, lr));
    /* Decay group, zero gradient: p shrinks by lr*wd*p, computed as p - (0 + fl(lr*wd) * p):
     * relative to p (1 - a), a = lr*wd, each step is off by r = a gamma_2 / (1 - a) and one
     * rounding of the difference. */
    double a = (double)lr * wd, r = a * test_gamma(2) / (1 - a);
    r = (1 + r) * (1 + TEST_U32) - 1;
    for (int i = 0; i < 4; i++)
        CHECK_NEAR(p[i], (double)p0[i] * (1.0 - a), r * fabs(p0[i] * (1.0 - a)));
    for (int i = 4; i < N; i++) CHECK(p[i] == p0[i]); /* no-decay group: bit-identical */
    /* Decay keeps compounding step after step. */
    CHECK_OK(adamw_step(&o, p, g, groups, 2, lr));
    double want = 3.0 * pow(1.0 - a, 2);
    CHECK_NEAR(p[3], want, ((1 + r) * (1 + r) - 1) * want);
    CHECK(p[7] == 3.0f);
    adamw_free(&o);
}

static void check_nonfinite_untouched(size_t n, size_t bad_at, float bad) {
    float *p = malloc(n * sizeof *p), *g = malloc(n * sizeof *g);
    fill(p, n, 1.0f);
    adamw_group_t groups[3];
    groups3(groups, n);
    adamw_t o;
    CHECK_OK(adamw_init(&o, n, 0.9f, 0.999f, 1e-8f, 0.1f));
    fill(g, n, 1.0f);
    CHECK_OK(adamw_step(&o, p, g, groups, 3, 1e-3f)); /* non-zero moments to compare */

    float *p_before = malloc(n * sizeof *p), *mom_before = malloc(2 * n * sizeof *p);
    memcpy(p_before, p, n * sizeof *p);
    memcpy(mom_before, o.moments, 2 * n * sizeof *p);
    fill(g, n, 1.0f);
    g[bad_at] = bad;
    rl_err_clear();
    CHECK_ERR(adamw_step(&o, p, g, groups, 3, 1e-3f), RL_ENONFINITE);
    CHECK(strlen(rl_errmsg()) > 0);
    CHECK(memcmp(p, p_before, n * sizeof *p) == 0);
    CHECK(memcmp(o.moments, mom_before, 2 * n * sizeof *p) == 0);
    CHECK_EQ(o.t, 1);
    /* And the optimizer carries on once the gradient is clean. */
    g[bad_at] = 0.5f;
    CHECK_OK(adamw_step(&o, p, g, groups, 3, 1e-3f));
    CHECK_EQ(o.t, 2);

    free(p_before);
    free(mom_before);
    adamw_free(&o);
    free(p);
    free(g);
}

static void test_nonfinite_grad(void) {
    check_nonfinite_untouched(100, 37, NAN);
    check_nonfinite_untouched(100, 0, INFINITY);
    check_nonfinite_untouched(100, 99, -INFINITY);
    check_nonfinite_untouched(200003, 200002, NAN); /* last element, parallel pass */
    check_nonfinite_untouched(200003, 123456, -INFINITY);
}

static void test_grad_norm(void) {
    const size_t sizes[] = {0, 1, 7, 255, 256, 257, 1000, 100003};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        float *g = malloc((n ? n : 1) * sizeof *g);
        fill(g, n, 2.0f);
        double want = 0;
        for (size_t i = 0; i < n; i++) want += (double)g[i] * g[i];
        want = sqrt(want);
        /* both sums of n exact double squares; the square root halves the relative error */
        CHECK_NEAR(adamw_grad_norm(g, n), want, (test_gamma64(n) + 2 * TEST_U64) * want);
        free(g);
    }
    /* Accumulated in double: float squares would overflow here. */
    float big[4] = {1e30f, -1e30f, 1e30f, 1e30f};
    CHECK_NEAR(adamw_grad_norm(big, 4) / 2e30, 1.0, TEST_U32 + test_gamma64(8)); /* 1e30f */
    float nan_g[5] = {1, 2, NAN, 3, 4};
    CHECK(isnan(adamw_grad_norm(nan_g, 5)));
    float inf_g[5] = {1, 2, 3, -INFINITY, 4};
    CHECK(!isfinite(adamw_grad_norm(inf_g, 5)));
}

static void test_clip(void) {
    enum { N = 100003 };
    float *g = malloc(N * sizeof *g), *g0 = malloc(N * sizeof *g);
    fill(g, N, 1.0f);
    memcpy(g0, g, N * sizeof *g);
    double norm0 = adamw_grad_norm(g, N), norm = -1;

    /* Above max_norm: scaled to max_norm, direction kept, pre-clip norm reported. */
    CHECK_OK(adamw_clip(g, N, 1.0f, &norm));
    CHECK(norm == norm0);
    /* g *= (float)(1 / norm): the scale and each product rounded once */
    CHECK_NEAR(adamw_grad_norm(g, N), 1.0, test_gamma(2) + test_gamma64(N + 2));
    CHECK_NEAR(g[12345] / g0[12345], 1.0 / norm0, (test_gamma(2) + test_gamma64(2)) / norm0);

    /* Below max_norm, or max_norm <= 0: untouched. */
    memcpy(g, g0, N * sizeof *g);
    CHECK_OK(adamw_clip(g, N, (float)(norm0 * 2), &norm));
    CHECK(norm == norm0);
    CHECK(memcmp(g, g0, N * sizeof *g) == 0);
    CHECK_OK(adamw_clip(g, N, 0.0f, NULL));
    CHECK(memcmp(g, g0, N * sizeof *g) == 0);
    CHECK_OK(adamw_clip(g, N, -1.0f, NULL));
    CHECK(memcmp(g, g0, N * sizeof *g) == 0);

    /* Non-finite: an error naming the norm, g untouched. */
    g[777] = NAN;
    memcpy(g0, g, N * sizeof *g);
    rl_err_clear();
    CHECK_ERR(adamw_clip(g, N, 1.0f, &norm), RL_ENONFINITE);
    CHECK(isnan(norm));
    CHECK(strstr(rl_errmsg(), "nan") != NULL);
    CHECK(memcmp(g, g0, N * sizeof *g) == 0);
    g[777] = INFINITY;
    CHECK_ERR(adamw_clip(g, N, 1.0f, NULL), RL_ENONFINITE);
    CHECK(g[777] == INFINITY && g[0] == g0[0]);

    free(g);
    free(g0);
}

/* Clipping fused into the update equals clipping the gradient first, bit for bit. */
static void test_scaled_step_equals_clip_then_step(void) {
    enum { N = 70001 };
    float *p1 = malloc(N * sizeof(float)), *p2 = malloc(N * sizeof(float));
    float *g = malloc(N * sizeof(float)), *g0 = malloc(N * sizeof(float));
    fill(p1, N, 1.0f);
    memcpy(p2, p1, N * sizeof(float));
    adamw_group_t groups[3];
    groups3(groups, N);
    adamw_t a, b;
    CHECK_OK(adamw_init(&a, N, 0.9f, 0.95f, 1e-8f, 0.1f));
    CHECK_OK(adamw_init(&b, N, 0.9f, 0.95f, 1e-8f, 0.1f));
    for (int step = 0; step < 3; step++) {
        fill(g, N, 2.0f);
        memcpy(g0, g, N * sizeof(float));
        double norm_a, norm_b;
        float scale;
        CHECK_OK(adamw_clip_scale(g, N, 1.0f, &norm_a, &scale));
        CHECK(memcmp(g, g0, N * sizeof(float)) == 0); /* the gradient is left as it was */
        CHECK_NEAR(scale, 1.0 / norm_a, test_gamma(1) / norm_a); /* (float)(1.0 / norm) */
        CHECK_OK(adamw_step_scaled(&a, p1, g, groups, 3, 1e-3f, scale));
        CHECK_OK(adamw_clip(g0, N, 1.0f, &norm_b));
        CHECK_OK(adamw_step(&b, p2, g0, groups, 3, 1e-3f));
        CHECK(norm_a == norm_b);
    }
    CHECK(memcmp(p1, p2, N * sizeof(float)) == 0);
    CHECK(memcmp(a.moments, b.moments, 2 * (size_t)N * sizeof(float)) == 0);
    float scale = 0;
    CHECK_OK(adamw_clip_scale(g, N, 0.0f, NULL, &scale)); /* clipping off */
    CHECK(scale == 1.0f);
    CHECK_ERR(adamw_step_scaled(&a, p1, g, groups, 3, 1e-3f, NAN), RL_EINVAL);
    adamw_free(&a);
    adamw_free(&b);
    free(p1), free(p2), free(g), free(g0);
}

static void test_sched_constant_warmup(void) {
    adamw_sched_t s = {ADAMW_SCHED_CONSTANT, 1e-3f, 1e-5f, 10, 100};
    CHECK(adamw_sched_lr(&s, 0) == 1e-3f);
    CHECK(adamw_sched_lr(&s, 5) == 1e-3f);
    CHECK(adamw_sched_lr(&s, 1000) == 1e-3f);

    /* float(double(1e-3f) * factor): the literal and the cast, two roundings */
    s.kind = ADAMW_SCHED_WARMUP;
    CHECK_NEAR(adamw_sched_lr(&s, 0), 1e-3 / 10, test_gamma(2) * 1e-3 / 10);
    CHECK_NEAR(adamw_sched_lr(&s, 4), 1e-3 * 5 / 10, test_gamma(2) * 1e-3 * 5 / 10);
    CHECK_NEAR(adamw_sched_lr(&s, 9), 1e-3, test_gamma(2) * 1e-3);
    CHECK(adamw_sched_lr(&s, 10) == 1e-3f);
    CHECK(adamw_sched_lr(&s, 10000) == 1e-3f); /* no decay past total */
    s.warmup = 0;
    CHECK(adamw_sched_lr(&s, 0) == 1e-3f);
}

static void test_sched_cosine(void) {
    /* min_lr + c (lr - min_lr) in double from the float literals (each off by u relative: at
     * most u (1e-3 + 2e-4) in all), then cast to float: one more u of the result */
    adamw_sched_t s = {ADAMW_SCHED_COSINE, 1e-3f, 1e-4f, 10, 110};
    const double lit = test_gamma(2) * (1e-3 + 2e-4);
    CHECK_NEAR(adamw_sched_lr(&s, 0), 1e-4, test_gamma(2) * 1e-4); /* lr / warmup */
    CHECK_NEAR(adamw_sched_lr(&s, 9), 1e-3, test_gamma(2) * 1e-3);
    CHECK_NEAR(adamw_sched_lr(&s, 10), 1e-3, lit + test_gamma(1) * 1e-3); /* starts at lr */
    CHECK_NEAR(adamw_sched_lr(&s, 60), (1e-3 + 1e-4) / 2, lit + test_gamma(1) * 5.5e-4);
    double q = 1e-4 + 0.5 * (1 + cos(3.14159265358979323846 * 0.25)) * (1e-3 - 1e-4);
    CHECK_NEAR(adamw_sched_lr(&s, 35), q, lit + test_gamma(1) * q);
    CHECK(adamw_sched_lr(&s, 110) == 1e-4f);
    CHECK(adamw_sched_lr(&s, 111) == 1e-4f);
    CHECK(adamw_sched_lr(&s, 1000000) == 1e-4f);
    /* Monotone non-increasing after warmup. */
    int mono = 1;
    for (long t = 11; t <= 120; t++) mono &= adamw_sched_lr(&s, t) <= adamw_sched_lr(&s, t - 1);
    CHECK(mono);
    /* Without warmup, step 0 is lr. */
    s.warmup = 0;
    CHECK_NEAR(adamw_sched_lr(&s, 0), 1e-3, lit + test_gamma(1) * 1e-3);
}

static void test_sched_parse(void) {
    adamw_sched_kind_t k = ADAMW_SCHED_CONSTANT;
    CHECK_OK(adamw_sched_parse("cosine", &k));
    CHECK_EQ(k, ADAMW_SCHED_COSINE);
    CHECK_OK(adamw_sched_parse("warmup", &k));
    CHECK_EQ(k, ADAMW_SCHED_WARMUP);
    CHECK_OK(adamw_sched_parse("constant", &k));
    CHECK_EQ(k, ADAMW_SCHED_CONSTANT);

    k = ADAMW_SCHED_WARMUP;
    rl_err_clear();
    CHECK_ERR(adamw_sched_parse("linear", &k), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "linear") != NULL);
    CHECK(strstr(rl_errmsg(), "cosine") != NULL);
    CHECK_EQ(k, ADAMW_SCHED_WARMUP); /* untouched on failure */
    CHECK_ERR(adamw_sched_parse("", &k), RL_EINVAL);
    CHECK_ERR(adamw_sched_parse("Cosine", &k), RL_EINVAL);
    CHECK_ERR(adamw_sched_parse(NULL, &k), RL_EINVAL);
}

static void test_bad_groups(void) {
    enum { N = 10 };
    float p[N], g[N], p0[N];
    fill(p, N, 1.0f);
    fill(g, N, 1.0f);
    memcpy(p0, p, sizeof p);
    adamw_t o;
    CHECK_OK(adamw_init(&o, N, 0.9f, 0.999f, 1e-8f, 0.1f));

    adamw_group_t gap[2] = {{0, 4, 1}, {5, 5, 0}};
    adamw_group_t overlap[2] = {{0, 6, 1}, {5, 5, 0}};
    adamw_group_t order[2] = {{4, 6, 1}, {0, 4, 0}};
    adamw_group_t short_[2] = {{0, 4, 1}, {4, 5, 0}};
    adamw_group_t past[2] = {{0, 4, 1}, {4, 7, 0}};
    adamw_group_t huge[2] = {{0, 4, 1}, {4, SIZE_MAX - 1, 0}}; /* offset + len overflows */
    adamw_group_t late[1] = {{1, 9, 1}};
    CHECK_ERR(adamw_step(&o, p, g, gap, 2, 1e-3f), RL_EINVAL);
    CHECK(strlen(rl_errmsg()) > 0);
    CHECK_ERR(adamw_step(&o, p, g, overlap, 2, 1e-3f), RL_EINVAL);
    CHECK_ERR(adamw_step(&o, p, g, order, 2, 1e-3f), RL_EINVAL);
    CHECK_ERR(adamw_step(&o, p, g, short_, 2, 1e-3f), RL_EINVAL);
    CHECK_ERR(adamw_step(&o, p, g, past, 2, 1e-3f), RL_EINVAL);
    CHECK_ERR(adamw_step(&o, p, g, huge, 2, 1e-3f), RL_EINVAL);
    CHECK_ERR(adamw_step(&o, p, g, late, 1, 1e-3f), RL_EINVAL);
    CHECK_ERR(adamw_step(&o, p, g, gap, 0, 1e-3f), RL_EINVAL);
    CHECK_ERR(adamw_step(&o, p, g, gap, -1, 1e-3f), RL_EINVAL);
    CHECK_ERR(adamw_step(&o, p, g, NULL, 2, 1e-3f), RL_EINVAL);
    CHECK(memcmp(p, p0, sizeof p) == 0);
    CHECK_EQ(o.t, 0);

    /* Zero-length groups inside a valid tiling are fine. */
    adamw_group_t ok[4] = {{0, 4, 1}, {4, 0, 0}, {4, 6, 0}, {10, 0, 1}};
    CHECK_OK(adamw_step(&o, p, g, ok, 4, 1e-3f));
    CHECK_EQ(o.t, 1);
    adamw_free(&o);
}

/* Runs a few steps on `threads` threads (0: leave as is) and returns the params and moments. */
static float *run_steps(size_t n, int threads, double *norm) {
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    if (threads > 0) omp_set_num_threads(threads);
#endif
    uint64_t saved_rng = rng_state;
    rng_state = 12345;
    float *out = malloc(3 * n * sizeof *out), *g = malloc(n * sizeof *g);
    fill(out, n, 1.0f);
    adamw_group_t groups[3];
    groups3(groups, n);
    adamw_t o;
    CHECK_OK(adamw_init(&o, n, 0.9f, 0.999f, 1e-8f, 0.1f));
    for (int s = 0; s < 4; s++) {
        fill(g, n, 3.0f);
        CHECK_OK(adamw_clip(g, n, 1.0f, norm));
        CHECK_OK(adamw_step(&o, out, g, groups, 3, 1e-3f));
    }
    memcpy(out + n, o.moments, 2 * n * sizeof *out);
    adamw_free(&o);
    free(g);
    rng_state = saved_rng;
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
    return out;
}

static void test_thread_count_independent(void) {
    const size_t n = 500009;
    double norm1 = 0, norm2 = 0, norm3 = 0;
    float *a = run_steps(n, 1, &norm1);
    float *b = run_steps(n, 2, &norm2);
    float *c = run_steps(n, 3, &norm3);
    CHECK(memcmp(a, b, 3 * n * sizeof *a) == 0);
    CHECK(memcmp(a, c, 3 * n * sizeof *a) == 0);
    CHECK(norm1 == norm2 && norm1 == norm3);
    CHECK(norm1 > 1.0); /* the clip did something */
    free(a);
    free(b);
    free(c);
}

int main(void) {
    RUN(test_init_free);
    RUN(test_first_step_is_lr_sign);
    RUN(test_matches_reference);
    RUN(test_matches_reference_large);
    RUN(test_weight_decay_groups);
    RUN(test_nonfinite_grad);
    RUN(test_grad_norm);
    RUN(test_clip);
    RUN(test_scaled_step_equals_clip_then_step);
    RUN(test_sched_constant_warmup);
    RUN(test_sched_cosine);
    RUN(test_sched_parse);
    RUN(test_bad_groups);
    RUN(test_thread_count_independent);
    return TEST_REPORT();
}
