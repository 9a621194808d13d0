/*
 * pgemm.h - matrix products against weights packed once, for generation.
 *
 * Y(M,N) = X(M,K) W(K,N) + bias, with W packed ahead of time into panels of 64 output columns,
 * each panel K rows of 64 consecutive floats, so that a product reads the weights strictly in
 * memory order. Every output Y[m][n] is one fused multiply-add chain over k = 0..K-1 in order,
 * computed by one thread, then the bias is added. The result of a row therefore does not depend
 * on M, on the other rows, on the thread count or on the instruction set used (the AVX-512
 * kernel and the portable C path give the same bits): a sequence decodes to the same logits
 * alone or in any batch.
 *
 * Why by hand: OpenBLAS has no pack-once interface - sgemm packs W again on every call, which
 * at the 1-32 rows of a decode step costs as much as the arithmetic (about half of sgemm's
 * large-matrix rate), and sgemv streams a (K,N) matrix at about 0.75 of the read bandwidth. No
 * BLAS promises that a row's sums are independent of the number of rows. Packing once per
 * weights version and one register-blocked kernel serve both one stream (memory-bound: the
 * panels are read once, in order) and a batch (compute-bound: each weight loaded into a register
 * is used for up to 6 rows).
 */
#ifndef RLHF_PGEMM_H
#define RLHF_PGEMM_H

#include <stddef.h>

#define PGEMM_NR 64 /* output columns per panel */

typedef enum {
    PGEMM_KN, /* w[k * N + n]: (in, out) - the model's linear layers */
    PGEMM_NK, /* w[n * K + k]: (out, in) - the tied LM head, wte (V, C) */
} pgemm_layout_t;

typedef struct {
    int K, N, panels;
    float *data; /* panels x K x PGEMM_NR floats, 64-byte aligned; columns past N are zero */
    size_t bytes;
} pgemm_mat_t;

/* Packs the (K, N) matrix w given in `layout` into pm, which is zero-initialised or holds an
 * earlier pack: a pack of the same shape is overwritten in place (new weights of the same model,
 * no new memory). Returns 0, RL_EINVAL or RL_ENOMEM (pm is then empty). */
int pgemm_pack(pgemm_mat_t *pm, const float *w, int K, int N, pgemm_layout_t layout);
void pgemm_free(pgemm_mat_t *pm);

/* Y(M, N) (row stride N) = X(M, K) (row stride K) W + bias (bias NULL: none). Runs on the
 * OpenMP team when the product is large enough; must not be called inside a parallel region. */
void pgemm(float *Y, const float *X, int M, const pgemm_mat_t *W, const float *bias);

/* The kernel pgemm uses: "avx512f", "avx2" (with FMA) or "c", the best this CPU runs unless
 * pgemm_set_kernel chose one (NULL: back to the default) or the environment's RLHF_SIMD names
 * one. Every exact kernel of the project (xgemm, the layer kernels of ops) follows this choice. All
 * give the same bits; tests compare them. Returns 0, or RL_EINVAL for an unknown name or one the
 * CPU cannot run. */
const char *pgemm_kernel(void);
/* The same as a number: 0 = "c", 1 = "avx2", 2 = "avx512f". */
int pgemm_kernel_id(void);
int pgemm_set_kernel(const char *name);

/* The machine's fp32 FMA rate in GFLOP/s on the OpenMP team, measured now with register-only
 * FMA chains of the kernel's vector width (0 for the portable kernel): the ceiling of a batch. */
double pgemm_fma_peak_gflops(void);

/* The sum of a[0..n) read once on the OpenMP team with the kernel's widest loads and
 * independent accumulators: limited by the memory alone, for measuring read bandwidth. */
float pgemm_read_sum(const float *a, size_t n);

#endif
