/*
 * test_pgemm.c - products against packed weights: every kernel this CPU runs gives, bit for
 * bit, the sum its contract names (one fmaf chain over k in order, then the bias), whatever the
 * number of rows, the row's neighbours or the thread count; both layouts; ragged shapes.
 */
#include "nn/ops.h"
#include "nn/pgemm.h"
#include "base/rng.h"
#include "test.h"

/* The contract, written out: Y[m][n] = fmaf chain over k of X[m][k] * W(k, n), then + bias[n]. */
static void reference(float *Y, const float *X, int M, const float *w, int K, int N,
                      pgemm_layout_t layout, const float *bias) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) {
                float wk = layout == PGEMM_KN ? w[(size_t)k * N + n] : w[(size_t)n * K + k];
                acc = fmaf(X[(size_t)m * K + k], wk, acc);
            }
            Y[(size_t)m * N + n] = bias ? acc + bias[n] : acc;
        }
}

static float *randn(size_t n, uint64_t stream) {
    float *a = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) a[i] = rng_normal(9, stream, i);
    return a;
}

#define GUARD 16

/* One shape through the current kernel: equal to the reference bit for bit, nothing written past
 * the output, and each row equal to that row computed alone. */
static void check_shape(int M, int K, int N, pgemm_layout_t layout, int with_bias) {
    float *w = randn((size_t)K * N, 1), *X = randn((size_t)M * K, 2), *bias = randn((size_t)N, 3);
    float *Y = malloc(((size_t)M * N + GUARD) * sizeof(float)),
          *R = malloc((size_t)M * N * sizeof(float)), *one = malloc((size_t)N * sizeof(float));
    for (int i = 0; i < GUARD; i++) Y[(size_t)M * N + i] = 12345.0f;
    pgemm_mat_t pm = {0};
    CHECK_OK(pgemm_pack(&pm, w, K, N, layout));
    CHECK_EQ(pm.panels, (N + PGEMM_NR - 1) / PGEMM_NR);
    pgemm(Y, X, M, &pm, with_bias ? bias : NULL);
    reference(R, X, M, w, K, N, layout, with_bias ? bias : NULL);
    if (memcmp(Y, R, (size_t)M * N * sizeof(float)))
        TEST__FAIL("%s kernel: M=%d K=%d N=%d layout %d bias %d differs from the reference",
                   pgemm_kernel(), M, K, N, (int)layout, with_bias);
    for (int i = 0; i < GUARD; i++) CHECK(Y[(size_t)M * N + i] == 12345.0f);
    for (int m = 0; m < M; m += 1 + M / 4) {
        pgemm(one, X + (size_t)m * K, 1, &pm, with_bias ? bias : NULL);
        if (memcmp(one, Y + (size_t)m * N, (size_t)N * sizeof(float)))
            TEST__FAIL("%s kernel: row %d of %d differs from the row alone", pgemm_kernel(), m, M);
    }
    pgemm_free(&pm);
    CHECK(pm.data == NULL);
    free(w), free(X), free(bias), free(Y), free(R), free(one);
}

/* {M, K, N}; the last ones take K in several chunks (a batch of more than 6 rows, K past 96),
 * the last chunk ragged */
static const int shapes[][3] = {{1, 1, 1},     {1, 5, 3},      {2, 7, 64},    {7, 33, 70},
                                {6, 17, 128},  {13, 64, 129},  {32, 96, 200}, {5, 300, 65},
                                {20, 300, 70}, {7, 1000, 130}, {33, 193, 64}};

static void test_kernels_equal_contract(void) {
    const char *kernels[] = {"c", "avx2", "avx512f"};
    int ran = 0;
    for (int k = 0; k < 3; k++) {
        if (pgemm_set_kernel(kernels[k]) < 0) {
            fprintf(stderr, "     this CPU cannot run the %s kernel: not tested here\n",
                    kernels[k]);
            continue;
        }
        CHECK_STREQ(pgemm_kernel(), kernels[k]);
        ran++;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int layout = 0; layout < 2; layout++)
                check_shape(shapes[s][0], shapes[s][1], shapes[s][2], (pgemm_layout_t)layout,
                            (int)(s % 2));
    }
    CHECK(ran >= 1); /* the portable kernel runs everywhere */
    CHECK_OK(pgemm_set_kernel(NULL));
}

/* Large enough to run on the OpenMP team: 1 and 2 threads give the same bits. */
static void test_thread_count(void) {
    int M = 32, K = 256, N = 320;
    float *w = randn((size_t)K * N, 4), *X = randn((size_t)M * K, 5), *bias = randn((size_t)N, 6);
    float *a = malloc((size_t)M * N * sizeof(float)), *b = malloc((size_t)M * N * sizeof(float));
    pgemm_mat_t pm = {0};
    CHECK_OK(pgemm_pack(&pm, w, K, N, PGEMM_NK));
    ops_set_threads(1);
    pgemm(a, X, M, &pm, bias);
    ops_set_threads(2);
    pgemm(b, X, M, &pm, bias);
    CHECK(!memcmp(a, b, (size_t)M * N * sizeof(float)));
    /* and the sums are the product's: against a double-precision one, within fp32 rounding -
     * K fused multiply-adds and the bias, K+1 roundings: gamma_{K+1} of the sum of |terms| */
    double worst = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double ref = bias[n], mag = fabs(bias[n]);
            for (int k = 0; k < K; k++) {
                double t = (double)X[(size_t)m * K + k] * w[(size_t)n * K + k];
                ref += t, mag += fabs(t);
            }
            double err = fabs(b[(size_t)m * N + n] - ref) / mag;
            worst = err > worst ? err : worst;
        }
    CHECK(worst <= test_gamma(K + 1) + test_gamma64(K + 1));
    pgemm_free(&pm);
    free(w), free(X), free(bias), free(a), free(b);
}

static void test_bad_input(void) {
    pgemm_mat_t pm = {0};
    float w[4] = {0};
    CHECK_ERR(pgemm_pack(&pm, w, 0, 4, PGEMM_KN), RL_EINVAL);
    CHECK_ERR(pgemm_pack(&pm, w, 4, -1, PGEMM_KN), RL_EINVAL);
    CHECK_ERR(pgemm_pack(&pm, NULL, 2, 2, PGEMM_KN), RL_EINVAL);
    CHECK(pm.data == NULL);
    CHECK_ERR(pgemm_set_kernel("sse9"), RL_EINVAL);
    CHECK_OK(pgemm_set_kernel(NULL));
}

int main(void) {
    ops_set_threads(2);
    RUN(test_kernels_equal_contract);
    RUN(test_thread_count);
    RUN(test_bad_input);
    return TEST_REPORT();
}
