/*
 * test.h - the unit-test harness: typed checks that print both sides, and a runner.
 *
 * A test file defines `static void test_something(void)` functions and a main() that calls
 * RUN(test_something) for each, then returns TEST_REPORT(). A failed check prints the file,
 * line, expression and both values and marks the current test failed; the test keeps running so
 * one run shows every broken check. Exit status is non-zero if any check failed.
 */
#ifndef RLHF_TEST_H
#define RLHF_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"

static int test__failed_checks;
static int test__cur_failed;
static int test__n_pass, test__n_fail;

#define TEST__FAIL(...)                                                                            \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                            \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        test__failed_checks++;                                                                     \
        test__cur_failed = 1;                                                                      \
    } while (0)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) TEST__FAIL("CHECK(%s) failed", #cond);                                        \
    } while (0)

#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        long long test__a = (long long)(a), test__b = (long long)(b);                              \
        if (test__a != test__b)                                                                    \
            TEST__FAIL("CHECK_EQ(%s, %s) failed: %lld != %lld", #a, #b, test__a, test__b);         \
    } while (0)

#define CHECK_STREQ(a, b)                                                                          \
    do {                                                                                           \
        const char *test__a = (a), *test__b = (b);                                                 \
        if (!test__a || !test__b || strcmp(test__a, test__b) != 0)                                 \
            TEST__FAIL("CHECK_STREQ(%s, %s) failed: \"%s\" != \"%s\"", #a, #b,                     \
                       test__a ? test__a : "(null)", test__b ? test__b : "(null)");                \
    } while (0)

/* |a - b| <= tol, and neither is NaN. */
#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double test__a = (double)(a), test__b = (double)(b), test__t = (double)(tol);              \
        if (!(fabs(test__a - test__b) <= test__t))                                                 \
            TEST__FAIL("CHECK_NEAR(%s, %s, %s) failed: %.9g vs %.9g (diff %.3g > %.3g)", #a, #b,   \
                       #tol, test__a, test__b, fabs(test__a - test__b), test__t);                  \
    } while (0)

/*
 * Error bounds. A tolerance on a floating-point result is derived from the computation, never
 * picked: for a sum of k products (a dot product) or of k+1 terms computed in fp32 in any order
 * (any association, with or without FMA), every term passes through at most k roundings, so
 *     |fl(s) - s| <= gamma_k * sum |terms|,   gamma_k = k u / (1 - k u),   u = 2^-24
 * (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 3.1 and 3.5). Two fp32
 * evaluations of the same sum in different orders differ by at most 2 gamma_k sum |terms|; one
 * accumulated in double and rounded once to fp32 is within (u + 2 gamma64_k) sum |terms| of s.
 * Accumulating into an existing value c counts c as one more term: k+1 roundings, |c| added.
 */
#define TEST_U32 0x1p-24 /* unit roundoff of fp32 (round to nearest) */
#define TEST_U64 0x1p-53 /* unit roundoff of fp64 */

/* gamma_k for fp32. */
static inline double test_gamma(int k) {
    double ku = k * TEST_U32;
    return ku / (1.0 - ku);
}

/* gamma_k for fp64: the error of a k-term double accumulation in a reference. */
static inline double test_gamma64(int k) {
    double ku = k * TEST_U64;
    return ku / (1.0 - ku);
}

/* The bound on |fl32(s_double) - s| for a k-product sum accumulated in double, rounded once. */
static inline double test_gamma_ref(int k) {
    return TEST_U32 + 2.0 * test_gamma64(k);
}

/* expf's relative error: the kernels use ex_expf (nn/exact.h), whose contract is 2 ulp where
 * the result is normal (test_ops checks it over the whole range: 0.66 ulp measured); the
 * references call glibc's expf, within 1 ulp. 4 ulp, a relative 4 * 2^-23, covers both. */
#define TEST_EXPF_REL 0x1p-21

/* -log(1 - x): bounds |log(1 + d)| for |d| <= x, to add relative errors in log space. */
static inline double test_logerr(double x) {
    return -log1p(-x);
}

/* The rounding error of the fp32 difference x - m: 0 where Sterbenz's lemma makes it exact (same
 * sign, within a factor of 2), else at most u |x - m|. */
static inline double test_sub_err(float x, float m) {
    double ax = fabs(x), am = fabs(m);
    if ((x >= 0) == (m >= 0) && ax <= 2 * am && am <= 2 * ax) return 0;
    return TEST_U32 * fabs((double)x - m);
}

/*
 * log softmax(x)[tok] over V fp32 logits, in double, and in *bound the error bound of an fp32
 * kernel computing it from the row's max m as (x_tok - m) - log(sum_v expf(x_v - m)) with the
 * sum and the log in double. Each x_v - m rounds (test_sub_err) and each expf is off by
 * TEST_EXPF_REL, so the log of the sum moves by at most the largest of those plus expf's error,
 * and x_tok - m by its own; the double arithmetic adds a few 2^-53, counted for the kernel and
 * for this reference. A kernel that rounds the result to float adds u |result|: the caller's.
 */
static inline double test_logsoftmax(const float *x, int V, int tok, double *bound) {
    float mx = -INFINITY;
    for (int v = 0; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    double s = 0, sub = 0;
    for (int v = 0; v < V; v++) {
        s += exp((double)x[v] - mx);
        double e = isinf(x[v]) ? 0.0 : test_sub_err(x[v], mx); /* expf(-inf) = 0 exactly */
        sub = e > sub ? e : sub;
    }
    double lp = (double)x[tok] - mx - log(s);
    *bound = sub + test_logerr(TEST_EXPF_REL) + test_sub_err(x[tok], mx) +
             2 * test_gamma64(V + 4) * (fabs(log(s)) + fabs(mx) + fabs(x[tok]) + 1);
    return lp;
}

/*
 * Rounding x to nearest even on the grid of a format with p significand bits (implicit one
 * included), normal exponents from emin up to emax, checked by its properties rather than by
 * another rounding routine: v is on the grid, within half the grid's spacing at x, at an exact
 * tie its last significand bit is 0; Inf exactly when |x| reaches the largest finite value plus
 * half a spacing (a tie there goes to Inf: the largest finite value is odd); NaN stays NaN.
 */
static inline int test_rounded_ok(float x, float v, int p, int emin, int emax) {
    if (isnan(x)) return isnan(v);
    double ax = fabs((double)x), av = fabs((double)v);
    double top = ldexp(2.0 - ldexp(1.0, -(p - 1)), emax), over = top + ldexp(1.0, emax - p);
    if ((signbit(x) != 0) != (signbit(v) != 0)) return 0;
    if (isinf(v)) return ax >= over;
    if (ax >= over) return 0;
    int e;
    frexp(ax > 0 ? ax : 1, &e); /* ax in [2^(e-1), 2^e) */
    int ex = e - 1 < emin ? emin : e - 1;
    double spacing = ldexp(1.0, ex - (p - 1)), q = av / spacing, d = fabs(ax - av);
    return q == floor(q) && d <= spacing / 2 && !(d == spacing / 2 && fmod(q, 2) != 0);
}

/* Element-wise |a[i] - b[i]| <= bound[i] (and neither is NaN) for i < n; a failure prints the
 * first few offending indices with both values and the bound. Returns the number of failures. */
#define CHECK_WITHIN(a, b, bound, n)                                                               \
    test__within(__FILE__, __LINE__, #a, #b, (a), (b), NULL, (bound), (n))
/* The same against a double-precision reference ref (n). */
#define CHECK_WITHIN64(a, ref, bound, n)                                                           \
    test__within(__FILE__, __LINE__, #a, #ref, (a), NULL, (ref), (bound), (n))

static inline size_t test__within(const char *file, int line, const char *an, const char *bn,
                                  const float *a, const float *b, const double *b64,
                                  const double *bound, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double bi = b ? (double)b[i] : b64[i], d = fabs((double)a[i] - bi);
        if (d <= bound[i]) continue;
        if (bad < 5)
            fprintf(
                stderr,
                "%s:%d: CHECK_WITHIN(%s, %s) failed at [%zu]: %.9g vs %.9g (diff %.3g > %.3g)\n",
                file, line, an, bn, i, a[i], bi, d, bound[i]);
        bad++;
    }
    if (bad) {
        if (bad > 5)
            fprintf(stderr, "%s:%d: ... %zu elements out of bound in all\n", file, line, bad);
        test__failed_checks++;
        test__cur_failed = 1;
    }
    return bad;
}

/* An rl_* call that must succeed: prints the error string and detail when it does not. */
#define CHECK_OK(expr)                                                                             \
    do {                                                                                           \
        int test__rc = (expr);                                                                     \
        if (test__rc < 0)                                                                          \
            TEST__FAIL("CHECK_OK(%s) failed: %d (%s): %s", #expr, test__rc, rl_strerror(test__rc), \
                       rl_errmsg());                                                               \
    } while (0)

/* An rl_* call that must fail with exactly `code`. */
#define CHECK_ERR(expr, code)                                                                      \
    do {                                                                                           \
        int test__rc = (expr);                                                                     \
        if (test__rc != (code))                                                                    \
            TEST__FAIL("CHECK_ERR(%s, %s) failed: got %d (%s), detail: %s", #expr, #code,          \
                       test__rc, rl_strerror(test__rc), rl_errmsg());                              \
    } while (0)

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        test__cur_failed = 0;                                                                      \
        rl_err_clear();                                                                            \
        fn();                                                                                      \
        if (test__cur_failed) {                                                                    \
            test__n_fail++;                                                                        \
            fprintf(stderr, "FAIL %s\n", #fn);                                                     \
        } else {                                                                                   \
            test__n_pass++;                                                                        \
            fprintf(stderr, "ok   %s\n", #fn);                                                     \
        }                                                                                          \
    } while (0)

#define TEST_REPORT()                                                                              \
    (fprintf(stderr, "%d passed, %d failed\n", test__n_pass, test__n_fail),                        \
     test__n_fail ? EXIT_FAILURE : EXIT_SUCCESS)

/* A per-test scratch directory under $TMPDIR (or /tmp); the caller removes what it creates. */
static inline const char *test_tmpdir(void) {
    static char dir[256];
    if (!dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/rlhf-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            exit(EXIT_FAILURE);
        }
    }
    return dir;
}

/* test_tmpdir()/name; the four most recent results stay valid (a call may name two files). */
static inline char *test_path(const char *name) {
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", test_tmpdir(), name);
    return buf[i];
}

#endif
