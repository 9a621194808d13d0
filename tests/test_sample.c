/*
 * test_sample.c - unit tests for token sampling (greedy, temperature, top-k, top-p).
 *
 * The sampling distribution is compared with a plain double-precision reference written here:
 * a full sort of the vocabulary by (logit descending, id ascending), softmax(logits / t), the
 * first k tokens, then the shortest prefix reaching top_p, renormalised. Picks are checked
 * against the distribution (log-probabilities, support) and, over many RNG counters, by a
 * chi-square test of the empirical frequencies. `test_sample --bench` runs only a timing table at
 * V = 50257 instead (registered as the ctest sample_bench, label bench): it asserts nothing.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nn/sample.h"
#include "test.h"

#define GPT2_V 50257

/* The slack sample.c allows a top-p prefix (SMP_P_RTOL): the reference uses the same. */
#define REF_P_RTOL 1e-6

/* A small deterministic generator (xorshift64*) so runs are reproducible. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double drand(void) { /* uniform in [0, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
}

static float nrand(void) { /* standard normal */
    double u1 = drand(), u2 = drand();
    return (float)(sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2));
}

/* GPT-2-like logits: a large negative offset, a spread of a few units, a handful of spikes. */
static void fill_logits(float *l, int V, float offset, float scale, int spikes) {
    for (int i = 0; i < V; i++) l[i] = offset + scale * nrand();
    for (int s = 0; s < spikes; s++) l[(int)(drand() * V)] = offset + scale * (4.0f + nrand());
}

static void *scratch_new(int V) {
    void *s = malloc(smp_scratch_size(V));
    if (!s) abort();
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* The reference */

static const float *cmp_logits;

static int cmp_desc(const void *a, const void *b) {
    const int i = *(const int *)a, j = *(const int *)b;
    const float li = cmp_logits[i], lj = cmp_logits[j];
    if (li != lj) return li > lj ? -1 : 1;
    return i < j ? -1 : i > j;
}

/* The sampling distribution of p over l (V), by its definition, into probs (V). */
static void ref_dist(const float *l, int V, const smp_params_t *p, double *probs) {
    memset(probs, 0, (size_t)V * sizeof *probs);
    int *order = malloc((size_t)V * sizeof *order);
    for (int i = 0; i < V; i++) order[i] = i;
    cmp_logits = l;
    qsort(order, (size_t)V, sizeof *order, cmp_desc);
    if (p->temperature == 0.0f) {
        probs[order[0]] = 1.0;
        free(order);
        return;
    }
    const double mx = l[order[0]], t = p->temperature;
    double z = 0.0;
    for (int i = 0; i < V; i++) z += exp(((double)l[i] - mx) / t);
    int n = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    double kept = 0.0;
    for (int r = 0; r < n; r++) kept += exp(((double)l[order[r]] - mx) / t) / z;
    if (p->top_p < 1.0f) {
        double cum = 0.0, need = (double)p->top_p * (1.0 - REF_P_RTOL);
        for (int r = 0; r < n; r++) {
            cum += exp(((double)l[order[r]] - mx) / t) / z / kept;
            if (cum >= need) {
                n = r + 1;
                break;
            }
        }
    }
    double mass = 0.0;
    for (int r = 0; r < n; r++) mass += exp(((double)l[order[r]] - mx) / t);
    for (int r = 0; r < n; r++) probs[order[r]] = exp(((double)l[order[r]] - mx) / t) / mass;
    free(order);
}

/*
 * How far the kernel's log w_i can be from exact, w_i = expf((l_i - mx) / t): the float
 * subtraction (test_sub_err), the division (one rounding of the quotient) and expf. A -inf logit
 * gives exactly 0 on both sides.
 */
static double logw_err(float li, float mx, float t) {
    if (isinf(li)) return 0.0;
    const double es = test_sub_err(li, mx) / t, a = fabs(((double)li - mx) / t);
    return es + TEST_U32 * (a + es) + test_logerr(TEST_EXPF_REL);
}

/*
 * The bound on the kernel's probability of token i against the exact r_i: p_i = w_i / mass with
 * the mass the double sum of the kept w, so log p_i is off by i's own error plus at most the
 * largest over the kept set (E); the double arithmetic adds a few 2^-53 and the cast to float one
 * rounding of the result. Below FLT_MIN, expf and the cast are off by ulps of the subnormal
 * spacing 2^-149 instead (4 and 1/2 of them), not relatively: 2^-146 absolute covers both.
 */
static double prob_bound(double r, double own, double E, int V) {
    const double rel = expm1(own + E + test_gamma64(V + 4));
    return r * rel + test_gamma(1) * r * (1 + rel) + 0x1p-146;
}

/* smp_distribution() against ref_dist(): the same support, each probability within its bound,
 * and a sum of 1 within the roundings of the casts and the double sums. */
static void check_dist(const float *l, int V, const smp_params_t *p, void *scratch) {
    float *d = malloc((size_t)V * sizeof *d);
    double *r = malloc((size_t)V * sizeof *r);
    CHECK_OK(smp_distribution(l, V, p, scratch, d));
    ref_dist(l, V, p, r);
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = l[i] > mx ? l[i] : mx;
    double E = 0.0;
    for (int i = 0; i < V; i++)
        if (r[i] > 0.0 && p->temperature > 0.0f) E = fmax(E, logw_err(l[i], mx, p->temperature));
    int support_mismatch = -1, worst = -1;
    double sum = 0.0, worst_ratio = 0.0;
    for (int i = 0; i < V; i++) {
        sum += d[i];
        if ((d[i] > 0.0f) != (r[i] > 0.0) && support_mismatch < 0) support_mismatch = i;
        double bound = p->temperature > 0.0f
                           ? prob_bound(r[i], logw_err(l[i], mx, p->temperature), E, V)
                           : 0.0; /* greedy: exactly 1 and 0 */
        double ratio = fabs((double)d[i] - r[i]) / bound;
        if (bound == 0.0) ratio = d[i] == r[i] ? 0.0 : INFINITY;
        if (!(ratio <= worst_ratio)) worst_ratio = ratio, worst = i;
    }
    if (support_mismatch >= 0)
        fprintf(stderr, "  support differs at %d: %g vs %g (t=%g k=%d p=%g)\n", support_mismatch,
                d[support_mismatch], r[support_mismatch], p->temperature, p->top_k, p->top_p);
    CHECK_EQ(support_mismatch, -1);
    if (!(worst_ratio <= 1.0))
        TEST__FAIL("probability %d: %.9g vs %.9g, %.3g times its bound (t=%g k=%d p=%g)", worst,
                   d[worst], r[worst], worst_ratio, p->temperature, p->top_k, p->top_p);
    CHECK_NEAR(sum, 1.0, TEST_U32 + 3 * test_gamma64(V + 2));
    free(d);
    free(r);
}

/* d[set[0..n)] against the exact probabilities softmax(l / t) over that set, within their
 * bounds (prob_bound). */
static void check_probs(const float *l, int V, float t, const int *set, int n, const float *d) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = l[set[j]] > mx ? l[set[j]] : mx;
    double z = 0.0, E = 0.0;
    for (int j = 0; j < n; j++) {
        z += exp(((double)l[set[j]] - mx) / t);
        E = fmax(E, logw_err(l[set[j]], mx, t));
    }
    for (int j = 0; j < n; j++) {
        double r = exp(((double)l[set[j]] - mx) / t) / z;
        CHECK_NEAR(d[set[j]], r, prob_bound(r, logw_err(l[set[j]], mx, t), E, V));
    }
}

/* The bound on |logprob - log d[tok]| for one pick: the pick's (float)(a - log mass) and the
 * distribution's (float)(expf(a) / mass) share a and the mass, so they differ by expf's error,
 * the two casts and a few 2^-53. */
static double pick_vs_dist_bound(float logprob) {
    return test_logerr(TEST_EXPF_REL) + test_logerr(TEST_U32) + test_gamma(1) * fabs(logprob) +
           test_gamma64(8) * (fabs(logprob) + 64); /* |a|, |log mass| <= |logprob| + log V */
}

/* The bound on the pick's logprob_model against log softmax in double: test_logsoftmax's bound
 * (the kernel's (float)((l_tok - mx) - log(sum expf(l - mx)))) and the cast to float. */
static double model_logprob_bound(const float *l, int V, int tok, double *want) {
    double e;
    *want = test_logsoftmax(l, V, tok, &e);
    return e + test_gamma(1) * (fabs(*want) + e);
}

/* The number of nonzero probabilities, and whether they are exactly the ids in want (n_want). */
static int support_is(const float *d, int V, const int *want, int n_want) {
    int n = 0;
    for (int i = 0; i < V; i++) n += d[i] > 0.0f;
    if (n != n_want) return 0;
    for (int k = 0; k < n_want; k++)
        if (!(d[want[k]] > 0.0f)) return 0;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */

static void test_params(void) {
    const smp_params_t good[] = {{0.0f, 0, 1.0f}, {1.0f, 50, 0.9f}, {0.7f, 0, 1e-6f}, {2.0f, 1, 1}};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) CHECK_OK(smp_params_check(&good[i]));
    const smp_params_t bad[] = {
        {-1.0f, 0, 1.0f},    {NAN, 0, 1.0f},      {INFINITY, 0, 1.0f}, {1.0f, -1, 1.0f},
        {1.0f, 0, 0.0f},     {1.0f, 0, -0.1f},    {1.0f, 0, 1.5f},     {1.0f, 0, NAN},
        {-0.0001f, 5, 0.5f}, {1.0f, 0, INFINITY},
    };
    float l[8] = {0}, d[8];
    void *s = scratch_new(8);
    smp_pick_t pk;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_ERR(smp_params_check(&bad[i]), RL_EINVAL);
        CHECK_ERR(smp_pick(l, 8, &bad[i], 1, 0, 0, s, &pk), RL_EINVAL);
        CHECK_ERR(smp_distribution(l, 8, &bad[i], s, d), RL_EINVAL);
    }
    CHECK(strstr(rl_errmsg(), "smp_distribution") != NULL);
    CHECK_ERR(smp_params_check(NULL), RL_EINVAL);
    CHECK_ERR(smp_pick(l, 8, NULL, 1, 0, 0, s, &pk), RL_EINVAL);
    CHECK_ERR(smp_pick(NULL, 8, &good[1], 1, 0, 0, s, &pk), RL_EINVAL);
    CHECK_ERR(smp_pick(l, 0, &good[1], 1, 0, 0, s, &pk), RL_EINVAL);
    CHECK_ERR(smp_pick(l, -3, &good[1], 1, 0, 0, s, &pk), RL_EINVAL);
    CHECK_ERR(smp_pick(l, 8, &good[1], 1, 0, 0, NULL, &pk), RL_EINVAL);
    CHECK_ERR(smp_pick(l, 8, &good[1], 1, 0, 0, s, NULL), RL_EINVAL);
    CHECK_ERR(smp_distribution(l, 8, &good[1], s, NULL), RL_EINVAL);
    /* Scratch at any address: the layout aligns itself (UBSan would flag a misaligned one). */
    char *raw = malloc(smp_scratch_size(8) + 3);
    const smp_params_t kp = {1.0f, 3, 0.9f};
    for (int off = 0; off < 4; off++) CHECK_OK(smp_pick(l, 8, &kp, 1, 0, 0, raw + off, &pk));
    free(raw);
    CHECK_EQ(smp_scratch_size(0), 0);
    CHECK(smp_scratch_size(GPT2_V) >= (size_t)GPT2_V * 2 * sizeof(float));
    CHECK(smp_scratch_size(GPT2_V) < (size_t)GPT2_V * 64);
    free(s);
}

static void test_greedy(void) {
    enum { V = 1000 };
    float l[V];
    fill_logits(l, V, -60.0f, 3.0f, 0);
    l[417] = 10.0f;
    l[903] = 10.0f; /* a tie: the lower id wins */
    l[650] = 9.9999f;
    void *s = scratch_new(V);
    const smp_params_t greedy[] = {{0.0f, 0, 1.0f}, {0.0f, 5, 0.3f}}; /* k, p ignored */
    for (int g = 0; g < 2; g++) {
        smp_pick_t pk;
        for (uint64_t c = 0; c < 4; c++) {
            CHECK_OK(smp_pick(l, V, &greedy[g], 7, 3, c, s, &pk));
            CHECK_EQ(pk.token, 417);
            CHECK(pk.logprob == 0.0f);
            double want, tol = model_logprob_bound(l, V, 417, &want);
            CHECK_NEAR(pk.logprob_model, want, tol);
        }
        float d[V];
        CHECK_OK(smp_distribution(l, V, &greedy[g], s, d));
        CHECK(d[417] == 1.0f);
        const int want[] = {417};
        CHECK(support_is(d, V, want, 1));
    }
    /* -0 and +0 are one value: the lower id wins whichever sign it carries. */
    float z[6] = {-1.0f, -INFINITY, 0.0f, -2.0f, -0.0f, -0.5f};
    smp_pick_t pk;
    CHECK_OK(smp_pick(z, 6, &greedy[0], 0, 0, 0, s, &pk));
    CHECK_EQ(pk.token, 2);
    z[2] = -0.0f, z[4] = 0.0f;
    CHECK_OK(smp_pick(z, 6, &greedy[0], 0, 0, 0, s, &pk));
    CHECK_EQ(pk.token, 2);
    double want, tol = model_logprob_bound(z, 6, 2, &want);
    CHECK_NEAR(pk.logprob_model, want, tol);
    free(s);
}

static void test_temperature(void) {
    enum { V = 3000 };
    float l[V];
    fill_logits(l, V, -40.0f, 2.5f, 5);
    void *s = scratch_new(V);
    const float temps[] = {1.0f, 0.5f, 0.7f, 2.0f, 10.0f};
    for (size_t i = 0; i < sizeof temps / sizeof *temps; i++) {
        const smp_params_t p = {temps[i], 0, 1.0f};
        check_dist(l, V, &p, s);
        /* top_k >= V and top_p = 1 are no truncation, and draw the same tokens. */
        const smp_params_t pk_all = {temps[i], V, 1.0f}, pk_more = {temps[i], V + 5, 1.0f};
        for (uint64_t c = 0; c < 50; c++) {
            smp_pick_t a, b, e;
            CHECK_OK(smp_pick(l, V, &p, 11, 2, c, s, &a));
            CHECK_OK(smp_pick(l, V, &pk_all, 11, 2, c, s, &b));
            CHECK_OK(smp_pick(l, V, &pk_more, 11, 2, c, s, &e));
            CHECK_EQ(a.token, b.token);
            CHECK_EQ(a.token, e.token);
        }
    }
    /* A tiny temperature is (almost) greedy; a huge one (almost) uniform. */
    float d[V];
    const smp_params_t cold = {1e-30f, 0, 1.0f}, hot = {1e30f, 0, 1.0f};
    CHECK_OK(smp_distribution(l, V, &cold, s, d));
    int am = 0;
    for (int i = 1; i < V; i++) am = l[i] > l[am] ? i : am;
    CHECK(d[am] == 1.0f);
    smp_pick_t pk;
    CHECK_OK(smp_pick(l, V, &cold, 1, 1, 1, s, &pk));
    CHECK_EQ(pk.token, am);
    /* every other w is expf(-gap / 1e-30) = 0: the mass is exactly 1 and log(1) = 0 */
    CHECK(pk.logprob == 0.0f);
    /* t = 1e30: every probability is 1/V up to exp of the spread of (l - mx) / t, ~1e-29,
     * within prob_bound of 1/V */
    CHECK_OK(smp_distribution(l, V, &hot, s, d));
    const int all[2] = {0, V - 1};
    float lo = l[0], hi = l[0];
    for (int i = 1; i < V; i++) lo = fminf(lo, l[i]), hi = fmaxf(hi, l[i]);
    double spread = ((double)hi - lo) / 1e30, E = logw_err(lo, hi, 1e30f);
    for (int k = 0; k < 2; k++)
        CHECK_NEAR(d[all[k]], 1.0 / V, prob_bound(1.0 / V, E, E, V) + expm1(2 * spread) / V);
    free(s);
}

static void test_top_k(void) {
    enum { V = 200 };
    float l[V];
    for (int i = 0; i < V; i++) l[i] = (float)(drand() * 2.0 - 1.0);
    l[50] = 5.0f, l[10] = 4.0f, l[80] = 3.0f;
    l[95] = 2.5f, l[30] = 2.5f, l[5] = 2.5f; /* a three-way tie at the boundary */
    void *s = scratch_new(V);
    float d[V];
    const smp_params_t p4 = {1.0f, 4, 1.0f}, p5 = {0.8f, 5, 1.0f}, p1 = {3.0f, 1, 1.0f};
    CHECK_OK(smp_distribution(l, V, &p4, s, d));
    const int w4[] = {50, 10, 80, 5}, w5[] = {50, 10, 80, 5, 30}, w1[] = {50};
    CHECK(support_is(d, V, w4, 4));
    check_probs(l, V, 1.0f, w4, 4, d);
    CHECK_OK(smp_distribution(l, V, &p5, s, d));
    CHECK(support_is(d, V, w5, 5));
    check_probs(l, V, 0.8f, w5, 5, d); /* the tied 30 and 5 each within bound of one value */
    CHECK_OK(smp_distribution(l, V, &p1, s, d));
    CHECK(support_is(d, V, w1, 1));
    CHECK(d[50] == 1.0f);
    smp_pick_t pk;
    CHECK_OK(smp_pick(l, V, &p1, 5, 5, 5, s, &pk));
    CHECK_EQ(pk.token, 50);
    CHECK(pk.logprob == 0.0f); /* one token: expf(0) / itself */

    /* Against the reference on random logits, with ties and -inf tokens mixed in. */
    for (int i = 0; i < V; i += 7) l[i] = l[i + 3];
    for (int i = 2; i < V; i += 31) l[i] = -INFINITY;
    const int ks[] = {1, 2, 3, 17, 100, 190, 199};
    for (size_t i = 0; i < sizeof ks / sizeof *ks; i++) {
        const smp_params_t p = {0.9f, ks[i], 1.0f};
        check_dist(l, V, &p, s);
    }
    /* More tokens asked for than are finite: the -inf ones are kept at probability 0. */
    const smp_params_t p_all = {1.0f, V - 1, 1.0f};
    check_dist(l, V, &p_all, s);
    free(s);

    /* -0 and +0 tie at the boundary: the lower id wins, whichever sign it carries. */
    float z[5] = {-1.0f, -0.0f, 0.5f, 0.0f, -2.0f};
    const smp_params_t p2 = {1.0f, 2, 1.0f};
    const int wz[] = {2, 1};
    void *sz = scratch_new(5);
    CHECK_OK(smp_distribution(z, 5, &p2, sz, d));
    CHECK(support_is(d, 5, wz, 2));
    z[1] = 0.0f, z[3] = -0.0f;
    CHECK_OK(smp_distribution(z, 5, &p2, sz, d));
    CHECK(support_is(d, 5, wz, 2));
    free(sz);

    /* All logits equal: the k lowest ids, each 1/k (many tokens share the boundary logit). */
    enum { E = 1000 };
    float *e = malloc(E * sizeof *e), *de = malloc(E * sizeof *de);
    void *se = scratch_new(E);
    for (int i = 0; i < E; i++) e[i] = -3.0f;
    const smp_params_t p300 = {1.0f, 300, 1.0f};
    CHECK_OK(smp_distribution(e, E, &p300, se, de));
    /* equal w, each within expf's error: 1/300 within prob_bound */
    double b300 = prob_bound(1.0 / 300, test_logerr(TEST_EXPF_REL), test_logerr(TEST_EXPF_REL), E);
    int wrong = 0;
    for (int i = 0; i < E; i++)
        wrong += i < 300 ? !(fabs(de[i] - 1.0 / 300) <= b300) : de[i] != 0.0f;
    CHECK_EQ(wrong, 0);
    /* Logits far apart: the boundary lies beyond the first level's range of bins. */
    for (int i = 0; i < E; i++) e[i] = (float)(-100.0 * drand());
    e[123] = 0.0f;
    const int kw[] = {1, 2, 10, 500, 999};
    for (size_t i = 0; i < sizeof kw / sizeof *kw; i++) {
        const smp_params_t p = {1.0f, kw[i], 1.0f};
        check_dist(e, E, &p, se);
    }
    free(se);
    free(de);
    free(e);
}

static void test_top_p(void) {
    enum { V = 10 };
    /* Probabilities 0.5, 0.3, 0.2 at ids 4, 7, 2; the rest impossible. */
    float l[V];
    for (int i = 0; i < V; i++) l[i] = -INFINITY;
    l[4] = logf(0.5f), l[7] = logf(0.3f), l[2] = logf(0.2f);
    void *s = scratch_new(V);
    float d[V];
    const int w1[] = {4}, w2[] = {4, 7}, w3[] = {4, 7, 2};
    const struct {
        float p;
        const int *want;
        int n;
    } cases[] = {{0.8f, w2, 2},  {0.81f, w3, 3}, {0.5f, w1, 1},  {0.3f, w1, 1},
                 {0.51f, w2, 2}, {1e-6f, w1, 1}, {0.99f, w3, 3}, {1.0f, w3, 3}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const smp_params_t p = {1.0f, 0, cases[c].p};
        CHECK_OK(smp_distribution(l, V, &p, s, d));
        if (!support_is(d, V, cases[c].want, cases[c].n))
            fprintf(stderr, "  top_p %g: wrong support\n", cases[c].p);
        CHECK(support_is(d, V, cases[c].want, cases[c].n));
    }
    /* 0.5 / 0.8 and 0.3 / 0.8, of the logits as floats */
    const smp_params_t p8 = {1.0f, 0, 0.8f};
    CHECK_OK(smp_distribution(l, V, &p8, s, d));
    check_probs(l, V, 1.0f, w2, 2, d);

    /* Equal probabilities at the boundary: the lower ids come first. */
    float e[V];
    for (int i = 0; i < V; i++) e[i] = -INFINITY;
    e[9] = e[3] = e[7] = e[1] = 2.0f;
    const smp_params_t ph = {1.0f, 0, 0.5f}, p6 = {1.0f, 0, 0.6f};
    const int h[] = {1, 3}, h6[] = {1, 3, 7};
    CHECK_OK(smp_distribution(e, V, &ph, s, d));
    CHECK(support_is(d, V, h, 2));
    check_probs(e, V, 1.0f, h, 2, d); /* 0.5 each */
    CHECK_OK(smp_distribution(e, V, &p6, s, d));
    CHECK(support_is(d, V, h6, 3));
    free(s);

    /* 1000 equal tokens: top_p = 0.25 keeps exactly ids 0..249. */
    enum { U = 1000 };
    float *u = malloc(U * sizeof *u), *du = malloc(U * sizeof *du);
    void *su = scratch_new(U);
    for (int i = 0; i < U; i++) u[i] = 1.5f;
    const smp_params_t pq = {0.9f, 0, 0.25f};
    CHECK_OK(smp_distribution(u, U, &pq, su, du));
    double b250 = prob_bound(1.0 / 250, test_logerr(TEST_EXPF_REL), test_logerr(TEST_EXPF_REL), U);
    int wrong = 0;
    for (int i = 0; i < U; i++)
        wrong += i < 250 ? !(fabs(du[i] - 1.0 / 250) <= b250) : du[i] != 0.0f;
    CHECK_EQ(wrong, 0);
    free(su);
    free(du);
    free(u);

    /* Against the reference on random logits: nuclei from one token to most of the vocabulary. */
    enum { W = 5000 };
    float *r = malloc(W * sizeof *r);
    void *sw = scratch_new(W);
    fill_logits(r, W, -70.0f, 2.0f, 20);
    for (int i = 0; i < W; i += 13) r[i] = r[i + 1]; /* ties */
    const float ps[] = {0.05f, 0.3f, 0.5f, 0.9f, 0.95f, 0.999f};
    const float ts[] = {1.0f, 0.6f, 1.7f};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++)
        for (size_t j = 0; j < sizeof ts / sizeof *ts; j++) {
            const smp_params_t p = {ts[j], 0, ps[i]};
            check_dist(r, W, &p, sw);
        }
    free(sw);
    free(r);
}

static void test_top_k_then_top_p(void) {
    enum { V = 16 };
    /* 0.4, 0.3, 0.2, 0.1 (and nothing else): top_p = 0.75 alone needs three tokens, but after
     * top_k = 3 the renormalised 0.444 + 0.333 already reaches it. */
    float l[V];
    for (int i = 0; i < V; i++) l[i] = -INFINITY;
    l[12] = logf(0.4f), l[3] = logf(0.3f), l[8] = logf(0.2f), l[0] = logf(0.1f);
    void *s = scratch_new(V);
    float d[V];
    const smp_params_t p_only = {1.0f, 0, 0.75f}, kp = {1.0f, 3, 0.75f};
    const int w3[] = {12, 3, 8}, w2[] = {12, 3};
    CHECK_OK(smp_distribution(l, V, &p_only, s, d));
    CHECK(support_is(d, V, w3, 3));
    CHECK_OK(smp_distribution(l, V, &kp, s, d));
    CHECK(support_is(d, V, w2, 2));
    check_probs(l, V, 1.0f, w2, 2, d); /* 0.4 / 0.7 and 0.3 / 0.7 */
    free(s);

    enum { W = 4000 };
    float *r = malloc(W * sizeof *r);
    void *sw = scratch_new(W);
    fill_logits(r, W, -20.0f, 1.5f, 10);
    for (int i = 0; i < W; i += 9) r[i] = r[i + 2];
    const int ks[] = {1, 5, 50, 400, 3999};
    const float ps[] = {0.1f, 0.5f, 0.9f, 0.99f};
    for (size_t i = 0; i < sizeof ks / sizeof *ks; i++)
        for (size_t j = 0; j < sizeof ps / sizeof *ps; j++) {
            const smp_params_t p = {0.8f, ks[i], ps[j]};
            check_dist(r, W, &p, sw);
        }
    free(sw);
    free(r);
}

/* The parameter sets the pick tests run through. */
static const smp_params_t modes[] = {
    {1.0f, 0, 1.0f}, {0.7f, 0, 1.0f}, {1.0f, 40, 1.0f},  {1.3f, 300, 1.0f},
    {1.0f, 0, 0.9f}, {0.8f, 0, 0.5f}, {0.9f, 50, 0.95f}, {1.0f, 2000, 0.99f},
};
#define N_MODES ((int)(sizeof modes / sizeof *modes))

static void test_pick_logprobs(void) {
    enum { V = 3000 };
    float *l = malloc(V * sizeof *l), *d = malloc(V * sizeof *d);
    fill_logits(l, V, -50.0f, 2.0f, 8);
    for (int i = 5; i < V; i += 97) l[i] = -INFINITY;
    void *s = scratch_new(V);
    for (int m = 0; m < N_MODES; m++) {
        CHECK_OK(smp_distribution(l, V, &modes[m], s, d));
        int bad_support = 0, bad = 0, bad_model = 0;
        for (uint64_t c = 0; c < 300; c++) {
            smp_pick_t pk;
            CHECK_OK(smp_pick(l, V, &modes[m], 1234, 5, c, s, &pk));
            if (pk.token < 0 || pk.token >= V || !(d[pk.token] > 0.0f)) {
                bad_support++;
                continue;
            }
            double want;
            bad += !(fabs(pk.logprob - log(d[pk.token])) <= pick_vs_dist_bound(pk.logprob));
            double tol = model_logprob_bound(l, V, pk.token, &want);
            bad_model += !(fabs(pk.logprob_model - want) <= tol);
        }
        CHECK_EQ(bad_support, 0);
        CHECK_EQ(bad, 0);
        CHECK_EQ(bad_model, 0);
    }
    free(s);
    free(l);
    free(d);
}

static void test_determinism(void) {
    enum { V = 2000, N = 64 };
    float l[V];
    fill_logits(l, V, -30.0f, 0.5f, 0); /* flat: every mode keeps many tokens */
    void *s = scratch_new(V);
    for (int m = 0; m < N_MODES; m++) {
        int same_seed_differs = 0, other_seed_same = 0, other_stream_same = 0, distinct = 0;
        int first = -1;
        for (uint64_t c = 0; c < N; c++) {
            smp_pick_t a, b, o, q;
            CHECK_OK(smp_pick(l, V, &modes[m], 42, 9, c, s, &a));
            CHECK_OK(smp_pick(l, V, &modes[m], 42, 9, c, s, &b));
            CHECK_OK(smp_pick(l, V, &modes[m], 43, 9, c, s, &o));
            CHECK_OK(smp_pick(l, V, &modes[m], 42, 10, c, s, &q));
            same_seed_differs += a.token != b.token || memcmp(&a, &b, sizeof a) != 0;
            other_seed_same += a.token == o.token;
            other_stream_same += a.token == q.token;
            if (first < 0) first = a.token;
            distinct += a.token != first;
        }
        CHECK_EQ(same_seed_differs, 0);
        /* Different keys give different draws (these modes keep dozens of tokens or more). */
        CHECK(other_seed_same < N / 2);
        CHECK(other_stream_same < N / 2);
        CHECK(distinct > 0);
    }
    free(s);
}

/* Chi-square statistic of counts (V) against probabilities d (V) over n draws; tokens with
 * d = 0 must never be drawn (then returns INFINITY). *df gets the degrees of freedom. */
static double chi_square(const int *counts, const float *d, int V, int n, int *df) {
    double chi = 0.0;
    int cells = 0;
    *df = 0;
    for (int i = 0; i < V; i++) {
        if (!(d[i] > 0.0f)) {
            if (counts[i]) return INFINITY;
            continue;
        }
        const double e = (double)n * d[i];
        chi += (counts[i] - e) * (counts[i] - e) / e;
        cells++;
    }
    *df = cells - 1;
    return chi;
}

static void test_frequencies(void) {
    enum { V = 24, N = 40000 };
    float l[V];
    for (int i = 0; i < V; i++) l[i] = (float)(1.5 * nrand());
    l[17] = -INFINITY;
    l[6] = l[11]; /* a tie */
    void *s = scratch_new(V);
    const smp_params_t ps[] = {{1.0f, 0, 1.0f}, {0.6f, 0, 1.0f},  {1.0f, 6, 1.0f},
                               {1.0f, 0, 0.8f}, {1.4f, 10, 0.7f}, {1.0f, 0, 0.999f}};
    for (size_t m = 0; m < sizeof ps / sizeof *ps; m++) {
        float d[V];
        int counts[V] = {0}, df;
        CHECK_OK(smp_distribution(l, V, &ps[m], s, d));
        for (int c = 0; c < N; c++) {
            smp_pick_t pk;
            CHECK_OK(smp_pick(l, V, &ps[m], 2024, 77, (uint64_t)c, s, &pk));
            counts[pk.token]++;
        }
        const double chi = chi_square(counts, d, V, N, &df);
        /* About 5 standard deviations above the mean df: generous, never flaky with fixed keys,
         * and still small enough to catch a skewed sampler (checked below). */
        const double bound = df + 5.0 * sqrt(2.0 * df) + 5.0;
        if (!(chi <= bound))
            fprintf(stderr, "  mode %zu: chi2 %.2f > %.2f (df %d)\n", m, chi, bound, df);
        CHECK(chi <= bound);
        /* The test has power: swapping the two most probable tokens' probabilities fails it. */
        int a = -1, b = -1;
        for (int i = 0; i < V; i++) {
            if (a < 0 || d[i] > d[a])
                b = a, a = i;
            else if (b < 0 || d[i] > d[b])
                b = i;
        }
        if (d[a] - d[b] > 0.02f) {
            float t = d[a];
            d[a] = d[b], d[b] = t;
            CHECK(chi_square(counts, d, V, N, &df) > bound);
        }
    }
    free(s);
}

/* Frequencies over a vocabulary of many draw blocks, counted per group of ids (cells of a
 * usable size): checks the walk across blocks as well as inside one. */
static void test_frequencies_blocks(void) {
    enum { V = 1200, G = 20, N = 8000 };
    float *l = malloc(V * sizeof *l), *d = malloc(V * sizeof *d);
    for (int i = 0; i < V; i++) l[i] = (float)(0.7 * nrand());
    void *s = scratch_new(V);
    const smp_params_t ps[] = {{1.0f, 0, 1.0f}, {0.8f, 900, 1.0f}, {1.0f, 0, 0.7f}};
    for (size_t m = 0; m < sizeof ps / sizeof *ps; m++) {
        int counts[G] = {0}, df;
        float gp[G] = {0};
        CHECK_OK(smp_distribution(l, V, &ps[m], s, d));
        for (int i = 0; i < V; i++) gp[i * G / V] += d[i];
        for (int c = 0; c < N; c++) {
            smp_pick_t pk;
            CHECK_OK(smp_pick(l, V, &ps[m], 99, 1, (uint64_t)c, s, &pk));
            counts[pk.token * G / V]++;
        }
        const double chi = chi_square(counts, gp, G, N, &df);
        const double bound = df + 5.0 * sqrt(2.0 * df) + 5.0;
        if (!(chi <= bound))
            fprintf(stderr, "  mode %zu: chi2 %.2f > %.2f (df %d)\n", m, chi, bound, df);
        CHECK(chi <= bound);
    }
    free(s);
    free(d);
    free(l);
}

static void test_nonfinite(void) {
    enum { V = 300 };
    float l[V], d[V];
    fill_logits(l, V, 0.0f, 1.0f, 0);
    void *s = scratch_new(V);
    const smp_params_t ps[] = {
        {0.0f, 0, 1.0f}, {1.0f, 0, 1.0f}, {1.0f, 10, 1.0f}, {1.0f, 0, 0.9f}, {0.5f, 10, 0.9f}};
    const float bad[] = {NAN, -NAN, INFINITY};
    for (size_t m = 0; m < sizeof ps / sizeof *ps; m++) {
        smp_pick_t pk;
        for (size_t b = 0; b < sizeof bad / sizeof *bad; b++) {
            const float keep = l[123];
            l[123] = bad[b];
            CHECK_ERR(smp_pick(l, V, &ps[m], 1, 1, 1, s, &pk), RL_ENONFINITE);
            CHECK(strstr(rl_errmsg(), "logit 123") != NULL);
            CHECK_ERR(smp_distribution(l, V, &ps[m], s, d), RL_ENONFINITE);
            l[123] = keep;
        }
        /* -inf is a token the model rules out: never drawn, probability 0. */
        float n[V];
        memcpy(n, l, sizeof n);
        int am = 0;
        for (int i = 1; i < V; i++) am = n[i] > n[am] ? i : am;
        for (int i = 0; i < V; i++)
            if (i % 3 && i != am) n[i] = -INFINITY;
        CHECK_OK(smp_distribution(n, V, &ps[m], s, d));
        int bad_prob = 0;
        for (int i = 0; i < V; i++) bad_prob += n[i] == -INFINITY && d[i] != 0.0f;
        CHECK_EQ(bad_prob, 0);
        int bad_pick = 0;
        for (uint64_t c = 0; c < 200; c++) {
            CHECK_OK(smp_pick(n, V, &ps[m], 3, 4, c, s, &pk));
            bad_pick += n[pk.token] == -INFINITY || !isfinite(pk.logprob_model);
        }
        CHECK_EQ(bad_pick, 0);
        /* Nothing possible at all. */
        for (int i = 0; i < V; i++) n[i] = -INFINITY;
        CHECK_ERR(smp_pick(n, V, &ps[m], 1, 1, 1, s, &pk), RL_ENONFINITE);
        CHECK_ERR(smp_distribution(n, V, &ps[m], s, d), RL_ENONFINITE);
        /* One possible token. */
        n[77] = -1e30f;
        CHECK_OK(smp_pick(n, V, &ps[m], 1, 1, 1, s, &pk));
        CHECK_EQ(pk.token, 77);
        CHECK(pk.logprob == 0.0f && pk.logprob_model == 0.0f);
    }
    free(s);
}

/* The GPT-2 vocabulary size, against the reference, for every mode. */
static void test_gpt2_vocab(void) {
    float *l = malloc(GPT2_V * sizeof *l), *d = malloc(GPT2_V * sizeof *d);
    fill_logits(l, GPT2_V, -80.0f, 3.0f, 30);
    void *s = scratch_new(GPT2_V);
    for (int m = 0; m < N_MODES; m++) {
        check_dist(l, GPT2_V, &modes[m], s);
        CHECK_OK(smp_distribution(l, GPT2_V, &modes[m], s, d));
        int bad = 0;
        for (uint64_t c = 0; c < 20; c++) {
            smp_pick_t pk;
            CHECK_OK(smp_pick(l, GPT2_V, &modes[m], 5, 6, c, s, &pk));
            bad += !(d[pk.token] > 0.0f) ||
                   !(fabs(pk.logprob - log(d[pk.token])) <= pick_vs_dist_bound(pk.logprob));
        }
        CHECK_EQ(bad, 0);
    }
    free(s);
    free(d);
    free(l);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The benchmark, not a test: microseconds per pick at V = 50257, printed for each mode. */
static void bench_timing(void) {
    float *l = malloc(GPT2_V * sizeof *l);
    fill_logits(l, GPT2_V, -80.0f, 3.0f, 30);
    void *s = scratch_new(GPT2_V);
    const struct {
        const char *name;
        smp_params_t p;
    } bench[] = {
        {"greedy", {0.0f, 0, 1.0f}},
        {"t=1", {1.0f, 0, 1.0f}},
        {"t=0.7", {0.7f, 0, 1.0f}},
        {"t=0.7 top_k=50", {0.7f, 50, 1.0f}},
        {"t=1 top_k=40000", {1.0f, 40000, 1.0f}},
        {"t=1 top_p=0.9", {1.0f, 0, 0.9f}},
        {"t=0.7 top_p=0.95", {0.7f, 0, 0.95f}},
        {"t=0.7 top_k=50 top_p=0.9", {0.7f, 50, 0.9f}},
    };
    int sink = 0;
    uint64_t counter = 0;
    for (size_t b = 0; b < sizeof bench / sizeof *bench; b++) {
        smp_pick_t pk;
        CHECK_OK(smp_pick(l, GPT2_V, &bench[b].p, 1, 2, 0, s, &pk)); /* warm up */
        /* The best of a few short batches: the machine may be shared. */
        double best = INFINITY;
        for (int rep = 0; rep < 5; rep++) {
            int n = 0;
            const double t0 = now_s();
            double t1 = t0;
            while (n < 400 && (n < 5 || t1 - t0 < 0.01)) {
                CHECK_OK(smp_pick(l, GPT2_V, &bench[b].p, 1, 2, counter++, s, &pk));
                sink += pk.token;
                n++;
                t1 = now_s();
            }
            if ((t1 - t0) / n < best) best = (t1 - t0) / n;
        }
        fprintf(stderr, "  V=%d %-26s %8.1f us/pick\n", GPT2_V, bench[b].name, 1e6 * best);
    }
    fprintf(stderr, "  (sum of the picked ids: %d)\n", sink); /* keeps the picks observable */
    free(s);
    free(l);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        RUN(bench_timing);
        return TEST_REPORT();
    }
    if (argc > 1) {
        fprintf(stderr, "usage: %s [--bench]\n", argv[0]);
        return EXIT_FAILURE;
    }
    RUN(test_params);
    RUN(test_greedy);
    RUN(test_temperature);
    RUN(test_top_k);
    RUN(test_top_p);
    RUN(test_top_k_then_top_p);
    RUN(test_pick_logprobs);
    RUN(test_determinism);
    RUN(test_frequencies);
    RUN(test_frequencies_blocks);
    RUN(test_nonfinite);
    RUN(test_gpt2_vocab);
    return TEST_REPORT();
}
