/*
 * test_xgemm.c - exact products: every kernel this CPU runs, on 1 and 2 threads, gives the bits
 * of the contract's loop (xgemm_ref) for all four transpose cases, strided operands, both
 * accumulate modes, ragged shapes and every blocking edge (K, M and N past their blocks), and
 * inside a parallel region.
 */
#include <malloc.h>
#include <pthread.h>

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

/* One case: the operands stored with padding (leading dimensions larger than needed), the
 * contract's loop computed once, then every kernel this CPU runs on 1 and 2 threads. */
static void check_case(int ta, int tb, int M, int N, int K, int acc) {
    static const char *const kernels[] = {"c", "avx2", "avx512f"};
    int pad = 3;
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    size_t arows = ta ? K : M, brows = tb ? N : K, csz = (size_t)M * ldc;
    float *A = randn(arows * lda, 1), *B = randn(brows * ldb, 2), *C0 = randn(csz, 3);
    float *C = malloc((csz + 1) * sizeof(float)), *R = malloc((csz + 1) * sizeof(float));
    memcpy(R, C0, csz * sizeof(float));
    xgemm_ref((xgemm_trans_t)ta, (xgemm_trans_t)tb, M, N, K, A, lda, B, ldb, R, ldc, acc);
    for (int k = 0; k < 3; k++) {
        if (pgemm_set_kernel(kernels[k]) < 0) continue;
        for (int th = 1; th <= 2; th++) {
            ops_set_threads(th);
            memcpy(C, C0, csz * sizeof(float));
            xgemm((xgemm_trans_t)ta, (xgemm_trans_t)tb, M, N, K, A, lda, B, ldb, C, ldc, acc);
            if (memcmp(C, R, csz * sizeof(float)))
                TEST__FAIL("%s kernel, %d threads: ta=%d tb=%d M=%d N=%d K=%d acc=%d differs from "
                           "the contract",
                           kernels[k], th, ta, tb, M, N, K, acc);
        }
    }
    CHECK_OK(pgemm_set_kernel(NULL));
    ops_set_threads(2);
    free(A), free(B), free(C0), free(C), free(R);
}

/* Ragged shapes (M not a multiple of the 6-row micro-blocks, N not of the 64-column panels or
 * of the 16-column transposes, K not of 16), then the blockings: K past the 768 of one block of
 * k (accumulators stored and reloaded, the last block ragged), N past the 1024 of a column
 * block, M past the 144 rows of a row block and the 256 kept while K is blocked - large enough
 * to run on both threads, split by rows or by columns. */
static const int shapes[][3] = {
    {1, 1, 1},     {1, 5, 3},      {2, 64, 7},      {7, 70, 33},     {6, 128, 17},  {13, 129, 64},
    {32, 200, 96}, {5, 65, 300},   {64, 192, 64},   {100, 96, 257},  {3, 4, 0},     {1, 17, 1601},
    {7, 1100, 40}, {11, 90, 1601}, {300, 70, 1600}, {150, 1090, 20}, {2, 3000, 770}};

static void test_contract(void) {
    const char *kernels[] = {"c", "avx2", "avx512f"};
    int ran = 0;
    for (int k = 0; k < 3; k++) {
        if (pgemm_set_kernel(kernels[k]) < 0)
            fprintf(stderr, "     this CPU cannot run the %s kernel: not tested here\n",
                    kernels[k]);
        else
            ran++;
    }
    CHECK(ran >= 1);
    CHECK_OK(pgemm_set_kernel(NULL));
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int c = 0; c < 8; c++)
            check_case(c & 1, (c >> 1) & 1, shapes[s][0], shapes[s][1], shapes[s][2], (c >> 2) & 1);
}

/* Inside a parallel region (attention calls it per head) each call runs on its own thread and
 * gives the bits it gives alone. */
static void test_inside_parallel(void) {
    enum { H = 4, T = 64, D = 48 };
    float *q = randn((size_t)H * T * D, 6), *k = randn((size_t)H * T * D, 7);
    float *a = malloc((size_t)H * T * T * sizeof(float)),
          *r = malloc((size_t)H * T * T * sizeof(float));
    for (int h = 0; h < H; h++)
        xgemm_ref(XGEMM_N, XGEMM_T, T, T, D, q + (size_t)h * T * D, D, k + (size_t)h * T * D, D,
                  r + (size_t)h * T * T, T, 0);
    ops_set_threads(2);
#pragma omp parallel for schedule(static)
    for (int h = 0; h < H; h++)
        xgemm(XGEMM_N, XGEMM_T, T, T, D, q + (size_t)h * T * D, D, k + (size_t)h * T * D, D,
              a + (size_t)h * T * T, T, 0);
    CHECK(!memcmp(a, r, (size_t)H * T * T * sizeof(float)));
    free(q), free(k), free(a), free(r);
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

/* A product on a thread of its own, as a worker computes each job. */
static void *product_thread(void *arg) {
    float *buf = arg;
    /* OpenMP's thread count is each thread's own: a new thread would start at the machine's
     * and hand the product to a team whose threads end after this one, at their own time */
    ops_set_threads(1);
    xgemm(XGEMM_N, XGEMM_N, 64, 256, 256, buf, 256, buf + 64 * 256, 256, buf + 2 * 64 * 256 + 65536,
          256, 0);
    return NULL;
}

/* The packing buffers of threads that ended are freed: 40 threads, one after another, leave
 * the heap as one did (each would otherwise keep its buffer, hundreds of KB). The heap counts
 * both the arenas' chunks and the blocks malloc maps by themselves, as a large buffer is. */
static size_t heap_in_use(void) {
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static void test_buffers_freed_with_thread(void) {
    ops_set_threads(1);
    float *buf = randn(2 * 64 * 256 + 65536 + 64 * 256, 7);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, product_thread, buf) == 0 && pthread_join(t, NULL) == 0);
    size_t before = heap_in_use();
    for (int i = 0; i < 40; i++)
        CHECK(pthread_create(&t, NULL, product_thread, buf) == 0 && pthread_join(t, NULL) == 0);
    size_t after = heap_in_use();
    fprintf(stderr, "     heap in use: %zu bytes before 40 threads, %zu after\n", before, after);
    CHECK(after <= before + 65536);
    free(buf);
}

int main(void) {
    ops_set_threads(2);
    RUN(test_buffers_freed_with_thread);
    RUN(test_contract);
    RUN(test_inside_parallel);
    RUN(test_accuracy);
    return TEST_REPORT();
}
