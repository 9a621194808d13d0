/*
 * xgemm.c - exact matrix products (see xgemm.h for the definition and why).
 *
 * This first version reuses pgemm: op(B) is packed into pgemm's panels for the call and op(A)
 * made row-major where it is not, so every output is pgemm's chain (+0, then one fmaf per k in
 * order, then nothing added), and the result is added to C or stored. Without the memory for
 * the copies it falls back to the reference loops: slower, the same bits.
 */
#include "nn/xgemm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn/pgemm.h"

static inline float opa(xgemm_trans_t t, const float *A, int lda, int m, int k) {
    return t == XGEMM_N ? A[(size_t)m * lda + k] : A[(size_t)k * lda + m];
}

void xgemm_ref(xgemm_trans_t ta, xgemm_trans_t tb, int M, int N, int K, const float *A, int lda,
               const float *B, int ldb, float *C, int ldc, int accumulate) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++)
                acc = fmaf(opa(ta, A, lda, m, k), opa(tb, B, ldb, k, n), acc);
            float *c = C + (size_t)m * ldc + n;
            *c = accumulate ? *c + acc : acc;
        }
}

void xgemm(xgemm_trans_t ta, xgemm_trans_t tb, int M, int N, int K, const float *A, int lda,
           const float *B, int ldb, float *C, int ldc, int accumulate) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                float *c = C + (size_t)m * ldc + n;
                *c = accumulate ? *c + 0.0f : 0.0f;
            }
        return;
    }
    float *abuf = NULL, *bbuf = NULL, *ybuf = NULL;
    const float *a = A, *b = B;
    pgemm_mat_t pm = {0};
    if (ta == XGEMM_T || lda != K) {
        if (!(abuf = malloc((size_t)M * K * sizeof(float)))) goto fallback;
        for (int m = 0; m < M; m++)
            for (int k = 0; k < K; k++) abuf[(size_t)m * K + k] = opa(ta, A, lda, m, k);
        a = abuf;
    }
    /* pgemm packs (K,N) given as w[k*N+n] or as w[n*K+k]: other strides are copied first */
    pgemm_layout_t lay = tb == XGEMM_N ? PGEMM_KN : PGEMM_NK;
    if ((tb == XGEMM_N && ldb != N) || (tb == XGEMM_T && ldb != K)) {
        int rows = tb == XGEMM_N ? K : N, cols = tb == XGEMM_N ? N : K;
        if (!(bbuf = malloc((size_t)rows * cols * sizeof(float)))) goto fallback;
        for (int r = 0; r < rows; r++)
            memcpy(bbuf + (size_t)r * cols, B + (size_t)r * ldb, (size_t)cols * sizeof(float));
        b = bbuf;
    }
    if (pgemm_pack(&pm, b, K, N, lay) < 0) goto fallback;
    float *y = C;
    if (accumulate || ldc != N) {
        if (!(ybuf = malloc((size_t)M * N * sizeof(float)))) goto fallback;
        y = ybuf;
    }
    pgemm(y, a, M, &pm, NULL);
    if (ybuf)
        for (int m = 0; m < M; m++) {
            float *c = C + (size_t)m * ldc;
            const float *t = ybuf + (size_t)m * N;
            if (accumulate)
                for (int n = 0; n < N; n++) c[n] += t[n];
            else
                memcpy(c, t, (size_t)N * sizeof(float));
        }
    pgemm_free(&pm);
    free(abuf), free(bbuf), free(ybuf);
    return;
fallback:
    pgemm_free(&pm);
    free(abuf), free(bbuf), free(ybuf);
    xgemm_ref(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}
