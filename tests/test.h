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

#endif
