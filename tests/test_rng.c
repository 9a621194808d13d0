/* test_rng.c - the counter-based RNG: determinism, independence of streams, distributions. */
#include "base/rng.h"
#include "test.h"

static void test_known_answer(void) {
    /* Random123's published known-answer vector for philox4x32-10: key and counter all zero. */
    uint32_t w[4];
    rng_block(0, 0, 0, w);
    CHECK_EQ(w[0], 0x6627e8d5u);
    CHECK_EQ(w[1], 0xe169c58du);
    CHECK_EQ(w[2], 0xbc57ac4cu);
    CHECK_EQ(w[3], 0x9b00dbd8u);
}

static void test_pure_function(void) {
    CHECK_EQ(rng_uniform(42, 7, 1000) == rng_uniform(42, 7, 1000), 1);
    CHECK(rng_uniform(42, 7, 1000) != rng_uniform(42, 8, 1000));
    CHECK(rng_uniform(42, 7, 1000) != rng_uniform(43, 7, 1000));
    CHECK(rng_uniform(42, 7, 1000) != rng_uniform(42, 7, 1001));
}

static void test_uniform_moments(void) {
    const int n = 200000;
    double s = 0, s2 = 0, lo = 1, hi = 0;
    for (int i = 0; i < n; i++) {
        double u = rng_uniform(1, 2, (uint64_t)i);
        s += u, s2 += u * u;
        if (u < lo) lo = u;
        if (u > hi) hi = u;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    /* statistical: sd of the mean sqrt(1/12 / n) = 6.5e-4, of the variance sqrt(1/180 / n) =
     * 1.7e-4; the tolerances are about 8 and 12 of those */
    CHECK_NEAR(mean, 0.5, 0.005);
    CHECK_NEAR(var, 1.0 / 12, 0.002);
    CHECK(lo > 0.0 && hi < 1.0);
}

static void test_normal_moments(void) {
    const int n = 200000;
    double s = 0, s2 = 0, s4 = 0;
    for (int i = 0; i < n; i++) {
        double z = rng_normal(9, 3, (uint64_t)i);
        s += z, s2 += z * z, s4 += z * z * z * z;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    /* statistical: sds sqrt(1/n) = 2.2e-3, sqrt(2/n) = 3.2e-3 and sqrt(96/n) = 0.022 for the
     * mean, variance and fourth moment: the tolerances are 4.5 to 6.5 of those */
    CHECK_NEAR(mean, 0.0, 0.01);
    CHECK_NEAR(var, 1.0, 0.02);
    CHECK_NEAR(s4 / n, 3.0, 0.1); /* kurtosis of a normal */
}

static void test_uniform53(void) {
    const int n = 200000;
    double s = 0, lo = 1, hi = 0;
    int fine = 0;
    for (int i = 0; i < n; i++) {
        double u = rng_uniform53(5, 6, (uint64_t)i);
        s += u;
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
        /* more than 24 bits: most draws are not on the float grid */
        fine += (double)(float)u != u;
    }
    CHECK_NEAR(s / n, 0.5, 0.005); /* statistical: 8 sds of the mean, as above */
    CHECK(lo > 0.0 && hi < 1.0);
    CHECK(fine > n / 2);
    CHECK(rng_uniform53(5, 6, 7) == rng_uniform53(5, 6, 7));
}

int main(void) {
    RUN(test_known_answer);
    RUN(test_pure_function);
    RUN(test_uniform_moments);
    RUN(test_normal_moments);
    RUN(test_uniform53);
    return TEST_REPORT();
}
