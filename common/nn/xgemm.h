/*
 * xgemm.h - exact matrix products for training: the same bits on any machine.
 *
 *   C(M,N) = op(A)(M,K) op(B)(K,N)            (accumulate = 0)
 *   C(M,N) = C + op(A)(M,K) op(B)(K,N)        (accumulate = 1)
 *
 * op(A)[m][k] is A[m * lda + k] (XGEMM_N) or A[k * lda + m] (XGEMM_T); op(B)[k][n] is
 * B[k * ldb + n] (XGEMM_N) or B[n * ldb + k] (XGEMM_T). Every output is computed as
 *
 *   acc = +0.0f;  for k = 0 .. K-1: acc = fmaf(op(A)[m][k], op(B)[k][n], acc);
 *   C[m][n] = accumulate ? C[m][n] + acc : acc;
 *
 * one fused multiply-add chain in k order, whatever the thread count, the instruction set (the
 * kernel pgemm_kernel() names: AVX-512, AVX2 + FMA or portable C), the blocking, M or N. A row
 * of C therefore depends on that row of op(A) alone: the forward pass of a sequence gives the
 * same bits in any batch. xgemm_ref is that loop written out; tests compare the two with memcmp.
 *
 * Why by hand: no BLAS fixes its summation order. OpenBLAS picks a kernel per CPU (and per
 * OPENBLAS_CORETYPE), splits K differently per kernel and rounds differently with it, so the
 * same training run takes another course on another machine (the demo's figures did).
 */
#ifndef RLHF_XGEMM_H
#define RLHF_XGEMM_H

typedef enum { XGEMM_N = 0, XGEMM_T = 1 } xgemm_trans_t;

/* Runs on the OpenMP team when the product is large enough and no parallel region is active
 * (inside one it runs on the calling thread: attention calls it per head). M, N, K >= 0; K = 0
 * gives acc = +0. Each thread keeps its packing buffers (up to about 4 MiB) for its next call;
 * a thread that cannot get them computes its share with the reference loops (the same bits). */
void xgemm(xgemm_trans_t ta, xgemm_trans_t tb, int M, int N, int K, const float *A, int lda,
           const float *B, int ldb, float *C, int ldc, int accumulate);

/* The definition above as plain loops: the oracle of the tests. */
void xgemm_ref(xgemm_trans_t ta, xgemm_trans_t tb, int M, int N, int K, const float *A, int lda,
               const float *B, int ldb, float *C, int ldc, int accumulate);

#endif
