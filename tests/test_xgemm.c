/*
 * test_xgemm.c - exact products: every kernel this CPU runs, on 1 and 2 threads, gives the bits
 * of the contract's loop (xgemm_ref) for all four transpose cases, strided operands, both
 * accumulate modes and ragged shapes; a row of the output is that row computed alone.
 */
#include "nn/ops.h"
#include "nn/pgemm.h"
#include "nn/xgemm.h"
#include "base/rng.h"
#include "test.h"

static float *randn(size_t n, uint64_t stream) {
    float *a = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) a[i] = rng_normal(11, stream, i);
    return a;
}

/* One case: the operands stored with padding (leading dimensions larger than needed). */
static void check_case(int ta, int tb, int M, int N, int K, int acc) {
    int pad = 3;
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    size_t arows = ta ? K : M, brows = tb ? N : K;
    float *A = randn(arows * lda, 1), *B = randn(brows * ldb, 2);
    float *C = randn((size_t)M * ldc, 3), *R = malloc(((size_t)M * ldc + 1) * sizeof(float));
    memcpy(R, C, (size_t)M * ldc * sizeof(float));
    xgemm((xgemm_trans_t)ta, (xgemm_trans_t)tb, M, N, K, A, lda, B, ldb, C, ldc, acc);
    xgemm_ref((xgemm_trans_t)ta, (xgemm_trans_t)tb, M, N, K, A, lda, B, ldb, R, ldc, acc);
    if (memcmp(C, R, (size_t)M * ldc * sizeof(float)))
        TEST__FAIL("%s kernel, %d threads: ta=%d tb=%d M=%d N=%d K=%d acc=%d differs from the "
                   "contract",
                   pgemm_kernel(), ops_get_threads(), ta, tb, M, N, K, acc);
    free(A), free(B), free(C), free(R);
}

static const int shapes[][3] = {{1, 1, 1},     {1, 5, 3},      {2, 64, 7},    {7, 70, 33},
                                {6, 128, 17},  {13, 129, 64},  {32, 200, 96}, {5, 65, 300},
                                {64, 192, 64}, {100, 96, 257}, {3, 4, 0}};

static void test_contract(void) {
    const char *kernels[] = {"c", "avx2", "avx512f"};
    int ran = 0;
    for (int k = 0; k < 3; k++) {
        if (pgemm_set_kernel(kernels[k]) < 0) {
            fprintf(stderr, "     this CPU cannot run the %s kernel: not tested here\n",
                    kernels[k]);
            continue;
        }
        ran++;
        for (int th = 1; th <= 2; th++) {
            ops_set_threads(th);
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
                for (int c = 0; c < 8; c++)
                    check_case(c & 1, (c >> 1) & 1, shapes[s][0], shapes[s][1], shapes[s][2],
                               (c >> 2) & 1);
        }
    }
    CHECK(ran >= 1);
    CHECK_OK(pgemm_set_kernel(NULL));
    ops_set_threads(2);
}

/* The contract itself is a product: within fp32 rounding of a double-precision one. */
static void test_accuracy(void) {
    int M = 9, N = 33, K = 500;
    float *A = randn((size_t)M * K, 4), *B = randn((size_t)K * N, 5), *C = malloc(M * N * 4);
    xgemm(XGEMM_N, XGEMM_N, M, N, K, A, K, B, N, C, N, 0);
    double worst = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double ref = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                double t = (double)A[(size_t)m * K + k] * B[(size_t)k * N + n];
                ref += t, mag += fabs(t);
            }
            double err = fabs(C[(size_t)m * N + n] - ref) / mag;
            worst = err > worst ? err : worst;
        }
    CHECK(worst <= test_gamma(K) + test_gamma64(K));
    free(A), free(B), free(C);
}

int main(void) {
    ops_set_threads(2);
    RUN(test_contract);
    RUN(test_accuracy);
    return TEST_REPORT();
}
