/*
 * test_rank.c - unit tests for ranking aggregation: fractional ranks, Borda consensus,
 * Kendall's W, pairwise agreement, Krippendorff's alpha and the preference pairs.
 *
 * Reference values are hand computations shown in the comments, the published values of
 * Krippendorff's (2011) worked example, and for alpha on random data a plain reference written
 * here that builds the full coincidence matrix and the V x V distance table exactly as the
 * paper lays them out (the module never forms either).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "align/rank.h"
#include "test.h"

#define M NAN /* a missing value in a reliability matrix */

/* A small deterministic generator (xorshift64*) so runs are reproducible. */
static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static int irand(int n) { /* uniform in [0, n) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (int)(((rng_state * 0x2545f4914f6cdd1dull) >> 33) % (uint64_t)n);
}

/* ------------------------------------------------------------------------------------------ */
/* rank_fractional */

static void test_fractional_ties(void) {
    /* [0,1,1,2]: item 0 first; items 1, 2 share positions 2 and 3 -> 2.5; item 3 fourth. */
    const int lv[4] = {0, 1, 1, 2};
    double r[4];
    rank_fractional(lv, 4, r);
    CHECK_NEAR(r[0], 1.0, 0);
    CHECK_NEAR(r[1], 2.5, 0);
    CHECK_NEAR(r[2], 2.5, 0);
    CHECK_NEAR(r[3], 4.0, 0);

    /* Only the order of the levels matters: {7, 3, 3, 0} -> item 3 first (1), items 1, 2 on
     * positions 2..3 (2.5), item 0 last (4). */
    const int sparse[4] = {7, 3, 3, 0};
    rank_fractional(sparse, 4, r);
    CHECK_NEAR(r[0], 4.0, 0);
    CHECK_NEAR(r[1], 2.5, 0);
    CHECK_NEAR(r[2], 2.5, 0);
    CHECK_NEAR(r[3], 1.0, 0);

    /* All tied: positions 1..5, mean 3. */
    const int all[5] = {2, 2, 2, 2, 2};
    double r5[5];
    rank_fractional(all, 5, r5);
    for (int i = 0; i < 5; i++) CHECK_NEAR(r5[i], 3.0, 0);
}

static void test_fractional_missing(void) {
    /* [1,-1,0,1]: three items ranked: item 2 first (1); items 0, 3 share positions 2..3 (2.5);
     * item 1 missing. The missing item takes no position. */
    const int lv[4] = {1, -1, 0, 1};
    double r[4];
    rank_fractional(lv, 4, r);
    CHECK_NEAR(r[0], 2.5, 0);
    CHECK(isnan(r[1]));
    CHECK_NEAR(r[2], 1.0, 0);
    CHECK_NEAR(r[3], 2.5, 0);

    /* Nothing ranked: every rank NAN. */
    const int none[3] = {-1, -1, -1};
    double r3[3];
    rank_fractional(none, 3, r3);
    for (int i = 0; i < 3; i++) CHECK(isnan(r3[i]));
}

/* Property: ranks of any ranking of k ranked items sum to k(k+1)/2 and lie in [1, k]. */
static void test_fractional_sum(void) {
    for (int trial = 0; trial < 200; trial++) {
        const int K = 2 + irand(9);
        int lv[10];
        double r[10];
        int k = 0;
        for (int i = 0; i < K; i++) {
            lv[i] = irand(5) - 1; /* -1 .. 3: many ties and some missing */
            k += lv[i] >= 0;
        }
        rank_fractional(lv, K, r);
        double sum = 0;
        for (int i = 0; i < K; i++) {
            if (lv[i] < 0) {
                CHECK(isnan(r[i]));
                continue;
            }
            CHECK(r[i] >= 1 && r[i] <= k);
            sum += r[i];
        }
        CHECK_NEAR(sum, k * (k + 1) / 2.0, 0);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* rank_consensus */

static void test_consensus_ties_missing(void) {
    /*
     *          item:   0     1     2     3     4
     *   A1 levels:     0     1     2    -1    -1   -> ranks 1    2    3    .    .
     *   A2 levels:     1     0     2     3    -1   -> ranks 2    1    3    4    .
     *   A3 levels:     0     0    -1     1    -1   -> ranks 1.5  1.5  .    3    .
     *   means:  item 0 (1+2+1.5)/3 = 1.5; item 1 (2+1+1.5)/3 = 1.5; item 2 (3+3)/2 = 3;
     *           item 3 (4+3)/2 = 3.5; item 4 nobody -> NAN.
     *   consensus levels: 0, 0, 1, 2, -1 (dense: items 0 and 1 tie).
     */
    const int lv[3 * 5] = {0, 1, 2, -1, -1, 1, 0, 2, 3, -1, 0, 0, -1, 1, -1};
    double mean[5];
    int cl[5];
    CHECK_OK(rank_consensus(lv, 3, 5, mean, cl));
    CHECK_NEAR(mean[0], 1.5, 1e-15);
    CHECK_NEAR(mean[1], 1.5, 1e-15);
    CHECK_NEAR(mean[2], 3.0, 1e-15);
    CHECK_NEAR(mean[3], 3.5, 1e-15);
    CHECK(isnan(mean[4]));
    CHECK_EQ(cl[0], 0);
    CHECK_EQ(cl[1], 0);
    CHECK_EQ(cl[2], 1);
    CHECK_EQ(cl[3], 2);
    CHECK_EQ(cl[4], -1);
}

static void test_consensus_rational_tie(void) {
    /*
     * Means equal as rationals but reached through different sums and counts tie:
     *   A1 {0, 1, 2}: ranks 1 2 3;  A2 {1, -1, 0}: ranks 2 . 1;  A3 {2, 1, 0}: ranks 3 2 1.
     *   item 0: (1+2+3)/3 = 2;  item 1: (2+2)/2 = 2;  item 2: (3+1+1)/3 = 5/3 (best).
     *   Consensus levels 1, 1, 0.
     */
    const int lv[3 * 3] = {0, 1, 2, 1, -1, 0, 2, 1, 0};
    double mean[3];
    int cl[3];
    CHECK_OK(rank_consensus(lv, 3, 3, mean, cl));
    CHECK_NEAR(mean[0], 2.0, 1e-15);
    CHECK_NEAR(mean[1], 2.0, 1e-15);
    CHECK_NEAR(mean[2], 5.0 / 3.0, 1e-15);
    CHECK_EQ(cl[0], 1);
    CHECK_EQ(cl[1], 1);
    CHECK_EQ(cl[2], 0);

    /* The tolerance: 0.1 + 0.2 and 0.3 differ in double (checked) yet tie; a real difference
     * of 1e-6 does not. NAN sorts after numbers. */
    volatile double x = 0.1, y = 0.2;
    const double a = x + y, b = 0.3;
    CHECK(a != b);
    CHECK_EQ(rank_mean_cmp(a, b), 0);
    CHECK_EQ(rank_mean_cmp(b, b + 1e-6), -1);
    CHECK_EQ(rank_mean_cmp(b + 1e-6, b), 1);
    CHECK_EQ(rank_mean_cmp(NAN, 1.0), 1);
    CHECK_EQ(rank_mean_cmp(1.0, NAN), -1);
    CHECK_EQ(rank_mean_cmp(NAN, NAN), 0);
}

static void test_consensus_errors(void) {
    const int lv[4] = {0, 1, 1, 0};
    double mean[4];
    int cl[4];
    CHECK_ERR(rank_consensus(lv, 0, 2, mean, cl), RL_EINVAL);
    CHECK_ERR(rank_consensus(lv, 1, 1, mean, cl), RL_EINVAL);
    CHECK_ERR(rank_consensus(NULL, 1, 2, mean, cl), RL_EINVAL);
    CHECK_ERR(rank_consensus(lv, 2, 2, NULL, cl), RL_EINVAL);
    const int bad[2] = {0, -2};
    CHECK_ERR(rank_consensus(bad, 1, 2, mean, cl), RL_EINVAL);
    CHECK_OK(rank_consensus(lv, 2, 2, mean, cl));
}

/* ------------------------------------------------------------------------------------------ */
/* rank_kendall_w */

static void test_kendall_no_ties(void) {
    double w;
    /* Perfect agreement: 3 judges, same strict order of 5 items -> W = 1. */
    const int same[3 * 5] = {0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4};
    CHECK_OK(rank_kendall_w(same, 3, 5, &w));
    CHECK_NEAR(w, 1.0, 1e-15);

    /*
     * 3 judges x 4 items, ranks:  J1 1 2 3 4;  J2 2 1 3 4;  J3 1 3 2 4.
     * Rank sums 4, 6, 8, 12; mean R(K+1)/2 = 7.5; deviations -3.5 -1.5 0.5 4.5;
     * S = 12.25 + 2.25 + 0.25 + 20.25 = 35.  W = 12 * 35 / (9 * (64 - 4)) = 420 / 540 = 7/9.
     */
    const int lv[3 * 4] = {0, 1, 2, 3, 1, 0, 2, 3, 0, 2, 1, 3};
    CHECK_OK(rank_kendall_w(lv, 3, 4, &w));
    CHECK_NEAR(w, 7.0 / 9.0, 1e-15);

    /* Two exactly reversed rankings: rank sums all K + 1 = 6, S = 0, W = 0. */
    const int rev[2 * 5] = {0, 1, 2, 3, 4, 4, 3, 2, 1, 0};
    CHECK_OK(rank_kendall_w(rev, 2, 5, &w));
    CHECK_NEAR(w, 0.0, 1e-15);

    /* One strict ranking agrees with itself: S = sum (i - (K+1)/2)^2 = (K^3 - K)/12, W = 1. */
    const int one[6] = {3, 0, 5, 1, 4, 2};
    CHECK_OK(rank_kendall_w(one, 1, 6, &w));
    CHECK_NEAR(w, 1.0, 1e-15);
}

static void test_kendall_ties(void) {
    double w;
    /*
     * 2 judges x 3 items: J1 levels {0,0,1} -> ranks 1.5 1.5 3 (one group t=2: t^3-t = 6);
     * J2 levels {0,1,2} -> ranks 1 2 3 (no ties).
     * Rank sums 2.5, 3.5, 6; mean 2*4/2 = 4; deviations -1.5 -0.5 2; S = 2.25+0.25+4 = 6.5.
     * Denominator R^2 (K^3-K) - R T = 4*24 - 2*6 = 84.  W = 12*6.5/84 = 78/84 = 13/14.
     * (Without the correction it would be 78/96 = 0.8125.)
     */
    const int a[2 * 3] = {0, 0, 1, 0, 1, 2};
    CHECK_OK(rank_kendall_w(a, 2, 3, &w));
    CHECK_NEAR(w, 13.0 / 14.0, 1e-15);

    /*
     * 3 judges x 4 items: J1 {0,0,1,1} -> 1.5 1.5 3.5 3.5 (two groups of 2: T = 6 + 6 = 12);
     * J2 {0,1,1,2} -> 1 2.5 2.5 4 (T = 6); J3 {0,1,2,3} -> 1 2 3 4 (T = 0).
     * Rank sums 3.5, 6, 9, 11.5; mean 3*5/2 = 7.5; deviations -4 -1.5 1.5 4;
     * S = 16 + 2.25 + 2.25 + 16 = 36.5.  Denominator 9*60 - 3*18 = 486.
     * W = 12*36.5/486 = 438/486 = 73/81.  Sparse levels ({0,9,9,20}) mean the same.
     */
    const int b[3 * 4] = {0, 0, 1, 1, 0, 9, 9, 20, 0, 1, 2, 3};
    CHECK_OK(rank_kendall_w(b, 3, 4, &w));
    CHECK_NEAR(w, 73.0 / 81.0, 1e-15);

    /* Tied only where they agree: both judges {0,0,1}: sums 3,3,6, mean 4, S = 1+1+4 = 6;
     * denominator 4*24 - 2*12 = 72; W = 72/72 = 1 (the correction makes full agreement 1). */
    const int c[2 * 3] = {0, 0, 1, 0, 0, 1};
    CHECK_OK(rank_kendall_w(c, 2, 3, &w));
    CHECK_NEAR(w, 1.0, 1e-15);

    /* Everyone ties everything: each judge has one group of t = 3 (t^3 - t = 24), so the
     * denominator is 4*24 - 2*(24 + 24) = 0: W undefined -> NAN. */
    const int d[2 * 3] = {0, 0, 0, 1, 1, 1};
    CHECK_OK(rank_kendall_w(d, 2, 3, &w));
    CHECK(isnan(w));
}

static void test_kendall_errors(void) {
    double w = 0;
    const int lv[2 * 3] = {0, 1, 2, 0, -1, 1};
    CHECK_ERR(rank_kendall_w(lv, 2, 3, &w), RL_EINVAL); /* missing item */
    CHECK_ERR(rank_kendall_w(lv, 0, 3, &w), RL_EINVAL); /* R < 1 */
    CHECK_ERR(rank_kendall_w(lv, 1, 1, &w), RL_EINVAL); /* K < 2 */
    CHECK_ERR(rank_kendall_w(lv, 1, 3, NULL), RL_EINVAL);
    CHECK_OK(rank_kendall_w(lv, 1, 3, &w)); /* the first ranking alone is complete */
}

/* Property: W lies in [0, 1] for random complete rankings with ties. */
static void test_kendall_range(void) {
    for (int trial = 0; trial < 300; trial++) {
        const int R = 1 + irand(6), K = 2 + irand(7);
        int lv[6 * 8];
        for (int i = 0; i < R * K; i++) lv[i] = irand(K);
        double w;
        CHECK_OK(rank_kendall_w(lv, R, K, &w));
        if (!isnan(w)) CHECK(w >= -1e-12 && w <= 1 + 1e-12);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* rank_pair_agreement */

static void test_pair_agreement(void) {
    /*
     * ra = 1 2.5 2.5 4 NAN;  rb = 2 1 3 4 1.  Item 4 is missing in ra: pairs among items 0..3:
     *   (0,1): a 0<1, b 1<0 -> strict, disagree     (0,2): a 0<2, b 0<2 -> agree
     *   (0,3): agree                                 (1,2): a tie -> tied
     *   (1,3): a 1<3, b 1<3 -> agree                 (2,3): a 2<3, b 2<3 -> agree
     * strict 5, agree 4, tied 1.
     */
    const double ra[5] = {1, 2.5, 2.5, 4, NAN}, rb[5] = {2, 1, 3, 4, 1};
    long agree = 0, strict = 0, tied = 0;
    rank_pair_agreement(ra, rb, 5, &agree, &strict, &tied);
    CHECK_EQ(agree, 4);
    CHECK_EQ(strict, 5);
    CHECK_EQ(tied, 1);
    /* Counts accumulate. */
    rank_pair_agreement(ra, rb, 5, &agree, &strict, &tied);
    CHECK_EQ(agree, 8);
    CHECK_EQ(strict, 10);
    CHECK_EQ(tied, 2);

    /* Reversed strict rankings of 4: C(4,2) = 6 strict pairs, none agree. */
    const double fa[4] = {1, 2, 3, 4}, fb[4] = {4, 3, 2, 1};
    agree = strict = tied = 0;
    rank_pair_agreement(fa, fb, 4, &agree, &strict, &tied);
    CHECK_EQ(agree, 0);
    CHECK_EQ(strict, 6);
    CHECK_EQ(tied, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* rank_kripp_alpha */

/*
 * Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the reliability data with
 * missing values: 4 coders (A-D) x 12 units. Published: nominal 0.743, ordinal 0.815,
 * interval 0.849. Stored unit-major: values[u * 4 + c].
 */
static const double kripp_data[12 * 4] = {
    /* unit:   A  B  C  D */
    /*  1 */ 1, 1, M, 1,
    /*  2 */ 2, 2, 3, 2,
    /*  3 */ 3, 3, 3, 3,
    /*  4 */ 3, 3, 3, 3,
    /*  5 */ 2, 2, 2, 2,
    /*  6 */ 1, 2, 3, 4,
    /*  7 */ 4, 4, 4, 4,
    /*  8 */ 1, 1, 2, 1,
    /*  9 */ 2, 2, 2, 2,
    /* 10 */ M, 5, 5, 5,
    /* 11 */ M, M, 1, 1,
    /* 12 */ M, 3, M, M,
};

static void test_kripp_published(void) {
    double a;
    CHECK_OK(rank_kripp_alpha(kripp_data, 12, 4, RANK_NOMINAL, &a));
    CHECK_NEAR(a, 0.743, 0.0005); /* the published values have three decimals */
    CHECK_OK(rank_kripp_alpha(kripp_data, 12, 4, RANK_ORDINAL, &a));
    CHECK_NEAR(a, 0.815, 0.0005);
    CHECK_OK(rank_kripp_alpha(kripp_data, 12, 4, RANK_INTERVAL, &a));
    CHECK_NEAR(a, 0.849, 0.0005);

    /* Unit 12 has one value and is not pairable: dropping it changes nothing. */
    double b;
    CHECK_OK(rank_kripp_alpha(kripp_data, 11, 4, RANK_ORDINAL, &b));
    CHECK_OK(rank_kripp_alpha(kripp_data, 12, 4, RANK_ORDINAL, &a));
    CHECK_NEAR(a, b, 0);
}

static void test_kripp_hand(void) {
    /*
     * 2 coders x 3 units: (1,1), (1,2), (2,2). Every unit has m = 2, so each ordered pair adds
     * 1: o_11 = 2, o_12 = o_21 = 1, o_22 = 2; n_1 = n_2 = 3, n = 6.
     * Nominal: alpha = 1 - (n-1) (o_12 + o_21) / (n_1 n_2 + n_2 n_1) = 1 - 5*2/18 = 4/9.
     * With only two values every metric's d_12 is one constant (interval 1, ordinal
     * (3 + 3 - 3)^2 = 9) that cancels, so all three give 4/9.
     */
    const double v[3 * 2] = {1, 1, 1, 2, 2, 2};
    double a;
    CHECK_OK(rank_kripp_alpha(v, 3, 2, RANK_NOMINAL, &a));
    CHECK_NEAR(a, 4.0 / 9.0, 1e-14);
    CHECK_OK(rank_kripp_alpha(v, 3, 2, RANK_ORDINAL, &a));
    CHECK_NEAR(a, 4.0 / 9.0, 1e-14);
    CHECK_OK(rank_kripp_alpha(v, 3, 2, RANK_INTERVAL, &a));
    CHECK_NEAR(a, 4.0 / 9.0, 1e-14);

    /*
     * Interval, 2 coders x 2 units: (1,3), (3,3). o_13 = o_31 = 1, o_33 = 2; n_1 = 1, n_3 = 3,
     * n = 4. Observed sum o d = 2 * (1-3)^2 = 8; expected sum n_c n_k d = 2 * 1*3 * 4 = 24.
     * alpha = 1 - 3 * 8 / 24 = 0.
     */
    const double w[2 * 2] = {1, 3, 3, 3};
    CHECK_OK(rank_kripp_alpha(w, 2, 2, RANK_INTERVAL, &a));
    CHECK_NEAR(a, 0.0, 1e-14);

    /* Perfect agreement on several values: alpha = 1. */
    const double p[3 * 3] = {1, 1, 1, 5, M, 5, 2, 2, M};
    for (int m = RANK_NOMINAL; m <= RANK_INTERVAL; m++) {
        CHECK_OK(rank_kripp_alpha(p, 3, 3, (rank_metric_t)m, &a));
        CHECK_NEAR(a, 1.0, 1e-14);
    }

    /* A single distinct value, or nothing pairable: no expected disagreement -> NAN. */
    const double s[2 * 2] = {4, 4, 4, M};
    CHECK_OK(rank_kripp_alpha(s, 2, 2, RANK_NOMINAL, &a));
    CHECK(isnan(a));
    const double q[2 * 2] = {4, M, M, 7};
    CHECK_OK(rank_kripp_alpha(q, 2, 2, RANK_INTERVAL, &a));
    CHECK(isnan(a));
}

static void test_kripp_errors(void) {
    const double v[2 * 2] = {1, 2, 2, INFINITY};
    double a;
    CHECK_ERR(rank_kripp_alpha(v, 2, 2, RANK_NOMINAL, &a), RL_EINVAL); /* infinite value */
    CHECK_ERR(rank_kripp_alpha(v, 0, 2, RANK_NOMINAL, &a), RL_EINVAL);
    CHECK_ERR(rank_kripp_alpha(v, 2, 1, RANK_NOMINAL, &a), RL_EINVAL);
    CHECK_ERR(rank_kripp_alpha(v, 1, 2, (rank_metric_t)7, &a), RL_EINVAL);
    CHECK_ERR(rank_kripp_alpha(NULL, 1, 2, RANK_NOMINAL, &a), RL_EINVAL);
    CHECK_OK(rank_kripp_alpha(v, 1, 2, RANK_NOMINAL, &a)); /* the first unit alone is fine */
}

/*
 * The reference: the coincidence matrix o (V x V) as in the paper, each unit adding
 * n_uc n_uk / (m_u - 1) (c != k) and n_uc (n_uc - 1) / (m_u - 1) (c == k) from its value
 * counts, and the distance table d_ck from the paper's definitions, ordinal by its sum over g.
 */
static double ref_alpha(const double *values, int n_units, int n_coders, rank_metric_t metric) {
    double uniq[64];
    int V = 0;
    for (int u = 0; u < n_units; u++) {
        int m = 0;
        for (int c = 0; c < n_coders; c++) m += !isnan(values[u * n_coders + c]);
        if (m < 2) continue;
        for (int c = 0; c < n_coders; c++) {
            const double x = values[u * n_coders + c];
            if (isnan(x)) continue;
            int seen = 0;
            for (int g = 0; g < V; g++) seen |= uniq[g] == x;
            if (!seen) uniq[V++] = x;
        }
    }
    for (int i = 1; i < V; i++) /* insertion sort */
        for (int j = i; j > 0 && uniq[j - 1] > uniq[j]; j--) {
            const double t = uniq[j];
            uniq[j] = uniq[j - 1];
            uniq[j - 1] = t;
        }
    static double o[64][64];
    memset(o, 0, sizeof o);
    for (int u = 0; u < n_units; u++) {
        int cnt[64] = {0}, m = 0;
        for (int c = 0; c < n_coders; c++) {
            const double x = values[u * n_coders + c];
            if (isnan(x)) continue;
            m++;
            for (int g = 0; g < V; g++)
                if (uniq[g] == x) cnt[g]++;
        }
        if (m < 2) continue;
        for (int c = 0; c < V; c++)
            for (int k = 0; k < V; k++)
                o[c][k] += (c == k ? cnt[c] * (cnt[c] - 1.0) : (double)cnt[c] * cnt[k]) / (m - 1);
    }
    double nc[64], n = 0;
    for (int c = 0; c < V; c++) {
        nc[c] = 0;
        for (int k = 0; k < V; k++) nc[c] += o[c][k];
        n += nc[c];
    }
    double num = 0, den = 0;
    for (int c = 0; c < V; c++)
        for (int k = 0; k < V; k++) {
            double d;
            if (metric == RANK_NOMINAL) {
                d = c != k;
            } else if (metric == RANK_INTERVAL) {
                d = (uniq[c] - uniq[k]) * (uniq[c] - uniq[k]);
            } else {
                const int lo = c < k ? c : k, hi = c < k ? k : c;
                double s = 0;
                for (int g = lo; g <= hi; g++) s += nc[g];
                s -= (nc[lo] + nc[hi]) / 2;
                d = s * s;
            }
            num += o[c][k] * d;
            den += nc[c] * nc[k] * d;
        }
    return den > 0 ? 1 - (n - 1) * num / den : NAN;
}

static void test_kripp_reference(void) {
    /* The published example against the reference too, at full precision. */
    for (int m = RANK_NOMINAL; m <= RANK_INTERVAL; m++) {
        double a;
        CHECK_OK(rank_kripp_alpha(kripp_data, 12, 4, (rank_metric_t)m, &a));
        CHECK_NEAR(a, ref_alpha(kripp_data, 12, 4, (rank_metric_t)m), 1e-12);
    }
    /* Random matrices: up to 20 units x 6 coders, values from a few levels (some non-integer
     * and negative), about a quarter missing. */
    const double levels[6] = {-2, 0, 0.5, 1, 3, 7.25};
    int compared = 0;
    for (int trial = 0; trial < 300; trial++) {
        const int nu = 1 + irand(20), nco = 2 + irand(5), nv = 1 + irand(6);
        double v[20 * 6];
        for (int i = 0; i < nu * nco; i++) v[i] = irand(4) == 0 ? NAN : levels[irand(nv)];
        for (int m = RANK_NOMINAL; m <= RANK_INTERVAL; m++) {
            double a;
            CHECK_OK(rank_kripp_alpha(v, nu, nco, (rank_metric_t)m, &a));
            const double r = ref_alpha(v, nu, nco, (rank_metric_t)m);
            if (isnan(r)) {
                CHECK(isnan(a));
            } else {
                CHECK_NEAR(a, r, 1e-12);
                compared++;
            }
        }
    }
    CHECK(compared > 500); /* most trials have something to compare */
}

/* ------------------------------------------------------------------------------------------ */
/* rank_pairs */

static void test_pairs_margin(void) {
    /*
     * 3 annotators x 3 items: A1, A2 {0,1,2} (ranks 1 2 3); A3 {1,0,0} (ranks 3 1.5 1.5).
     * Means: item 0 (1+1+3)/3 = 5/3, item 1 (2+2+1.5)/3 = 11/6, item 2 (3+3+1.5)/3 = 2.5:
     * consensus 0 < 1 < 2, all strict, so C(3,2) = 3 pairs:
     *   (0 over 1): A1, A2 agree, A3 disagrees -> 2/3
     *   (0 over 2): A1, A2 agree, A3 disagrees -> 2/3
     *   (1 over 2): A1, A2 agree, A3 ties      -> (2 + 1/2)/3 = 5/6
     */
    const int lv[3 * 3] = {0, 1, 2, 0, 1, 2, 1, 0, 0};
    double mean[3];
    int cl[3];
    rank_pair_t p[3];
    CHECK_OK(rank_consensus(lv, 3, 3, mean, cl));
    CHECK_EQ(rank_pairs(lv, 3, 3, mean, p), 3);
    CHECK_EQ(p[0].chosen, 0);
    CHECK_EQ(p[0].rejected, 1);
    CHECK_NEAR(p[0].margin, 2.0 / 3.0, 1e-15);
    CHECK_EQ(p[1].chosen, 0);
    CHECK_EQ(p[1].rejected, 2);
    CHECK_NEAR(p[1].margin, 2.0 / 3.0, 1e-15);
    CHECK_EQ(p[2].chosen, 1);
    CHECK_EQ(p[2].rejected, 2);
    CHECK_NEAR(p[2].margin, 5.0 / 6.0, 1e-15);
}

static void test_pairs_orientation(void) {
    /* Both annotators rank 4 items in reverse index order: C(4,2) = 6 pairs, each with the
     * higher index chosen, margin 1, in order (0,1) (0,2) (0,3) (1,2) (1,3) (2,3). */
    const int lv[2 * 4] = {3, 2, 1, 0, 3, 2, 1, 0};
    double mean[4];
    int cl[4];
    rank_pair_t p[6];
    CHECK_OK(rank_consensus(lv, 2, 4, mean, cl));
    CHECK_EQ(rank_pairs(lv, 2, 4, mean, p), 6);
    int n = 0;
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++, n++) {
            CHECK_EQ(p[n].chosen, j);
            CHECK_EQ(p[n].rejected, i);
            CHECK_NEAR(p[n].margin, 1.0, 0);
            CHECK(mean[p[n].chosen] < mean[p[n].rejected]);
        }
}

static void test_pairs_ties_missing(void) {
    /* The consensus of test_consensus_ties_missing: levels 0, 0, 1, 2, -1. The tie (0,1) and
     * every pair with item 4 are dropped: (0,2) (0,3) (1,2) (1,3) (2,3) remain.
     *   (0 over 2): A1 (1<3), A2 (2<3) rank both and agree; A3 lacks 2 -> 1
     *   (0 over 3): A2 (2<4) agrees, A3 (1.5<3) agrees; A1 lacks 3 -> 1
     *   (1 over 2): A1, A2 agree -> 1
     *   (1 over 3): A2, A3 agree -> 1
     *   (2 over 3): only A2 ranks both, agrees -> 1 */
    const int lv[3 * 5] = {0, 1, 2, -1, -1, 1, 0, 2, 3, -1, 0, 0, -1, 1, -1};
    double mean[5];
    int cl[5];
    rank_pair_t p[10];
    CHECK_OK(rank_consensus(lv, 3, 5, mean, cl));
    CHECK_EQ(rank_pairs(lv, 3, 5, mean, p), 5);
    const int want[5][2] = {{0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
    for (int k = 0; k < 5; k++) {
        CHECK_EQ(p[k].chosen, want[k][0]);
        CHECK_EQ(p[k].rejected, want[k][1]);
        CHECK_NEAR(p[k].margin, 1.0, 0);
    }

    /*
     * No annotator ranks items 0 and 2 together: A1 {0,1,-1}, A2 {-1,0,1}. Means 1, 1.5, 2:
     * a strict consensus, but (0,2) has no direct comparison and is dropped; (0,1) from A1
     * and (1,2) from A2 remain with margin 1.
     */
    const int gap[2 * 3] = {0, 1, -1, -1, 0, 1};
    double m3[3];
    int c3[3];
    CHECK_OK(rank_consensus(gap, 2, 3, m3, c3));
    CHECK_EQ(rank_pairs(gap, 2, 3, m3, p), 2);
    CHECK_EQ(p[0].chosen, 0);
    CHECK_EQ(p[0].rejected, 1);
    CHECK_EQ(p[1].chosen, 1);
    CHECK_EQ(p[1].rejected, 2);

    /*
     * A margin below 1/2 (mean rank and pairwise majority disagree), complete rankings of
     * items a=0, b=1, x=2, y=3:
     *   A1, A2 {1, 0, 2, 3}: b > a > x > y, ranks 2 1 3 4;  A3 {0, 3, 1, 2}: a > x > y > b,
     *   ranks 1 4 2 3.  Means: a (2+2+1)/3 = 5/3, b (1+1+4)/3 = 2, x 8/3, y 11/3.
     * The consensus puts a over b, but only A3 of the three agrees: margin 1/3.
     */
    const int lo[3 * 4] = {1, 0, 2, 3, 1, 0, 2, 3, 0, 3, 1, 2};
    double m4[4];
    int c4[4];
    CHECK_OK(rank_consensus(lo, 3, 4, m4, c4));
    CHECK_EQ(rank_pairs(lo, 3, 4, m4, p), 6);
    CHECK_EQ(p[0].chosen, 0);
    CHECK_EQ(p[0].rejected, 1);
    CHECK_NEAR(p[0].margin, 1.0 / 3.0, 1e-15);
}

static void test_pairs_errors(void) {
    const int lv[2] = {0, 1};
    const double mean[2] = {1, 2};
    rank_pair_t p[1];
    CHECK_ERR(rank_pairs(lv, 0, 2, mean, p), RL_EINVAL);
    CHECK_ERR(rank_pairs(lv, 1, 1, mean, p), RL_EINVAL);
    CHECK_ERR(rank_pairs(lv, 1, 2, NULL, p), RL_EINVAL);
    const int bad[2] = {0, -5};
    CHECK_ERR(rank_pairs(bad, 1, 2, mean, p), RL_EINVAL);
    CHECK_EQ(rank_pairs(lv, 1, 2, mean, p), 1);
}

/* Property on random complete rankings: a pair is emitted exactly for the item pairs whose
 * consensus levels differ, chosen has the lower level, and margins lie in [0, 1]. */
static void test_pairs_match_consensus(void) {
    for (int trial = 0; trial < 300; trial++) {
        const int R = 1 + irand(5), K = 2 + irand(7);
        int lv[5 * 8], cl[8];
        double mean[8];
        rank_pair_t p[28];
        for (int i = 0; i < R * K; i++) lv[i] = irand(3);
        CHECK_OK(rank_consensus(lv, R, K, mean, cl));
        int differ = 0;
        for (int i = 0; i < K; i++)
            for (int j = i + 1; j < K; j++) differ += cl[i] != cl[j];
        const int np = rank_pairs(lv, R, K, mean, p);
        CHECK_EQ(np, differ);
        for (int k = 0; k < np && k < 28; k++) {
            CHECK(cl[p[k].chosen] < cl[p[k].rejected]);
            CHECK(p[k].margin >= 0 && p[k].margin <= 1);
        }
    }
}

int main(void) {
    RUN(test_fractional_ties);
    RUN(test_fractional_missing);
    RUN(test_fractional_sum);
    RUN(test_consensus_ties_missing);
    RUN(test_consensus_rational_tie);
    RUN(test_consensus_errors);
    RUN(test_kendall_no_ties);
    RUN(test_kendall_ties);
    RUN(test_kendall_errors);
    RUN(test_kendall_range);
    RUN(test_pair_agreement);
    RUN(test_kripp_published);
    RUN(test_kripp_hand);
    RUN(test_kripp_errors);
    RUN(test_kripp_reference);
    RUN(test_pairs_margin);
    RUN(test_pairs_orientation);
    RUN(test_pairs_ties_missing);
    RUN(test_pairs_errors);
    RUN(test_pairs_match_consensus);
    return TEST_REPORT();
}
