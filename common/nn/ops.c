/*
 * ops.c - layer kernels of the transformer (see ops.h for conventions).
 *
 * Matrix products go to xgemm (exact: one fmaf chain per output in a fixed order) or, with the
 * "openblas" backend, to cblas_sgemm. Everything else is written so that its bits do not depend
 * on the thread count or the instruction set either (common/nn/exact.h): sums over a row run in
 * 16 fixed lanes and one fixed tree, exp is ex_expf, and the loops that vectorise are compiled in
 * three variants (AVX-512, AVX2 + FMA, baseline) chosen by the kernel pgemm_kernel() names, all
 * computing the same thing. Reductions that produce parameter gradients (LayerNorm weights,
 * biases) are split by column, never by row, so every sum is taken in the same order whatever
 * the thread count. OpenBLAS is the OpenMP build, so both share one thread team and a product
 * made inside a parallel region (attention, per head) runs on the calling thread.
 */
#include "nn/ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <omp.h>

#include "base/err.h"
#include "nn/exact.h"
#include "nn/xgemm.h"

/* Below this many elements of work a loop runs on the calling thread: waking the team costs
 * more than it saves, and far more when processes share cores (oversubscribed OpenMP teams
 * wait for each other through the scheduler). */
#define OPS_PAR_MIN 32768

static int ops_threads = 1;

/* ------------------------------------------------------------------------------------------ */

typedef enum { GEMM_DEFAULT = -1, GEMM_EXACT = 0, GEMM_OPENBLAS = 1 } gemm_backend_t;
static const char *const gemm_names[] = {"exact", "openblas"};
static gemm_backend_t gemm_forced = GEMM_DEFAULT;

static gemm_backend_t gemm_backend(void) {
    static int env_done;
    static gemm_backend_t env = GEMM_EXACT;
    if (gemm_forced != GEMM_DEFAULT) return gemm_forced;
    if (!env_done) {
        const char *e = getenv("RLHF_GEMM");
        if (e && !strcmp(e, "openblas"))
            env = GEMM_OPENBLAS;
        else if (e && *e && strcmp(e, "exact"))
            fprintf(stderr, "rlhf: RLHF_GEMM=%s is neither exact nor openblas; using exact\n", e);
        env_done = 1;
    }
    return env;
}

int ops_set_gemm(const char *name) {
    if (!name) {
        gemm_forced = GEMM_DEFAULT;
        return 0;
    }
    for (int i = 0; i < 2; i++)
        if (!strcmp(name, gemm_names[i])) {
            gemm_forced = (gemm_backend_t)i;
            return 0;
        }
    return rl_fail(RL_EINVAL, "no matrix-product backend named '%s' (exact, openblas)", name);
}

const char *ops_gemm(void) {
    return gemm_names[gemm_backend()];
}

void ops_set_threads(int n) {
    if (n < 1) n = 1;
    ops_threads = n;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int ops_get_threads(void) {
    return ops_threads;
}

/* ------------------------------------------------------------------------------------------ */

void ops_encoder_forward(float *out, const int *inp, const float *wte, const float *wpe, int B,
                         int T, int C) {
#pragma omp parallel for schedule(static) if ((long)B * T * C >= OPS_PAR_MIN)
    for (int bt = 0; bt < B * T; bt++) {
        int t = bt % T;
        const float *we = wte + (size_t)inp[bt] * C, *pe = wpe + (size_t)t * C;
        float *o = out + (size_t)bt * C;
        for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
    }
}

void ops_encoder_backward(float *dwte, float *dwpe, const float *dout, const int *inp, int B, int T,
                          int C) {
    for (int bt = 0; bt < B * T; bt++) {
        int t = bt % T;
        const float *d = dout + (size_t)bt * C;
        float *dwe = dwte + (size_t)inp[bt] * C, *dpe = dwpe + (size_t)t * C;
        for (int c = 0; c < C; c++) {
            dwe[c] += d[c];
            dpe[c] += d[c];
        }
    }
}

/* ------------------------------------------------------------------------------------------ */

/* Rows [lo, hi) of the LayerNorm forward. */
static inline void layernorm_rows_body(float *out, float *mean, float *rstd, const float *inp,
                                       const float *w, const float *b, int lo, int hi, int C,
                                       float eps) {
    for (int n = lo; n < hi; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float m = ex_sum(x, C) / C;
        float v = ex_sumsq_dev(x, m, C) / C;
        float s = 1.0f / sqrtf(v + eps);
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * s * w[c] + b[c];
        mean[n] = m;
        rstd[n] = s;
    }
}
EX_VARIANTS(layernorm_rows,
            (float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
             int lo, int hi, int C, float eps),
            layernorm_rows_body, (out, mean, rstd, inp, w, b, lo, hi, C, eps))

void ops_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                           const float *b, int N, int C, float eps) {
    int nt = (long)N * C >= OPS_PAR_MIN ? ops_threads : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int t = 0; t < nt; t++)
        layernorm_rows(out, mean, rstd, inp, w, b, (int)((long)N * t / nt),
                       (int)((long)N * (t + 1) / nt), C, eps);
}

void ops_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, const float *mean, const float *rstd, int N, int C) {
#pragma omp parallel if ((long)N * C >= OPS_PAR_MIN)
    {
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
            float *di = dinp + (size_t)n * C;
            float m = mean[n], s = rstd[n];
            float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
            for (int c = 0; c < C; c++) {
                float norm = (x[c] - m) * s;
                float dnorm = w[c] * d[c];
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * norm;
            }
            dnorm_mean /= C;
            dnorm_norm_mean /= C;
            for (int c = 0; c < C; c++) {
                float norm = (x[c] - m) * s;
                float dnorm = w[c] * d[c];
                di[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
            }
        }
        /* parameter gradients: each thread owns a column range, rows summed in order */
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int c0 = (int)((long)C * id / nt), c1 = (int)((long)C * (id + 1) / nt);
        for (int n = 0; n < N; n++) {
            const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
            float m = mean[n], s = rstd[n];
            for (int c = c0; c < c1; c++) {
                db[c] += d[c];
                dw[c] += (x[c] - m) * s * d[c];
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------ */

void ops_matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N,
                        int IC, int OC) {
    int blas = gemm_backend() == GEMM_OPENBLAS;
    if (bias) {
        /* seed the output with the bias and accumulate the product onto it: one pass fewer
         * (bias + acc: the exact contract's sum, addition being commutative) */
#pragma omp parallel for schedule(static) if ((long)N * OC >= OPS_PAR_MIN)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, sizeof(float) * OC);
    }
    if (!blas) {
        xgemm(XGEMM_N, XGEMM_N, N, OC, IC, inp, IC, w, OC, out, OC, bias != NULL);
        return;
    }
    float beta = bias ? 1.0f : 0.0f;
    if (N == 1) {
        /* One row (single-stream decoding) is a matrix-vector product: OpenBLAS's sgemm packs
         * the whole weight matrix for it and runs at a fraction of the memory bandwidth that
         * sgemv streams the weights at. out = w^T inp. */
        cblas_sgemv(CblasRowMajor, CblasTrans, IC, OC, 1.0f, w, OC, inp, 1, beta, out, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, OC, IC, 1.0f, inp, IC, w, OC, beta,
                out, OC);
}

/* dbias(OC) += column sums of dout(N,OC), split by column so the order never changes. */
static void bias_backward(float *dbias, const float *dout, int N, int OC) {
#pragma omp parallel if ((long)N * OC >= OPS_PAR_MIN)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int c0 = (int)((long)OC * id / nt), c1 = (int)((long)OC * (id + 1) / nt);
        for (int n = 0; n < N; n++) {
            const float *d = dout + (size_t)n * OC;
            for (int c = c0; c < c1; c++) dbias[c] += d[c];
        }
    }
}

void ops_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int N, int IC, int OC) {
    if (gemm_backend() == GEMM_EXACT) {
        if (dinp) xgemm(XGEMM_N, XGEMM_T, N, IC, OC, dout, OC, w, OC, dinp, IC, 1);
        xgemm(XGEMM_T, XGEMM_N, IC, OC, N, inp, IC, dout, OC, dw, OC, 1);
    } else {
        if (dinp)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, IC, OC, 1.0f, dout, OC, w, OC,
                        1.0f, dinp, IC);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, IC, OC, N, 1.0f, inp, IC, dout, OC,
                    1.0f, dw, OC);
    }
    if (dbias) bias_backward(dbias, dout, N, OC);
}

void ops_matmul_forward_ref(float *out, const float *inp, const float *w, const float *bias, int N,
                            int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bias ? bias[o] : 0.0;
            for (int i = 0; i < IC; i++)
                s += (double)inp[(size_t)n * IC + i] * w[(size_t)i * OC + o];
            out[(size_t)n * OC + o] = (float)s;
        }
}

void ops_matmul_backward_ref(float *dinp, float *dw, float *dbias, const float *dout,
                             const float *inp, const float *w, int N, int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            float d = dout[(size_t)n * OC + o];
            if (dbias) dbias[o] += d;
            for (int i = 0; i < IC; i++) {
                if (dinp) dinp[(size_t)n * IC + i] += d * w[(size_t)i * OC + o];
                dw[(size_t)i * OC + o] += inp[(size_t)n * IC + i] * d;
            }
        }
}

/* ------------------------------------------------------------------------------------------ */

void ops_lmhead_forward(float *logits, const float *inp, const float *wte, int N, int C, int V) {
    if (gemm_backend() == GEMM_EXACT) {
        xgemm(XGEMM_N, XGEMM_T, N, V, C, inp, C, wte, C, logits, V, 0);
        return;
    }
    if (N == 1) { /* matrix-vector, see ops_matmul_forward */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, V, C, 1.0f, wte, C, inp, 1, 0.0f, logits, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, V, C, 1.0f, inp, C, wte, C, 0.0f,
                logits, V);
}

void ops_lmhead_backward(float *dinp, float *dwte, const float *dlogits, const float *inp,
                         const float *wte, int N, int C, int V) {
    if (gemm_backend() == GEMM_EXACT) {
        xgemm(XGEMM_N, XGEMM_N, N, C, V, dlogits, V, wte, C, dinp, C, 1);
        xgemm(XGEMM_T, XGEMM_N, V, C, N, dlogits, V, inp, C, dwte, C, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, V, 1.0f, dlogits, V, wte, C, 1.0f,
                dinp, C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, N, 1.0f, dlogits, V, inp, C, 1.0f,
                dwte, C);
}

void ops_lmhead_forward_ref(float *logits, const float *inp, const float *wte, int N, int C,
                            int V) {
    for (int n = 0; n < N; n++)
        for (int v = 0; v < V; v++) {
            double s = 0.0;
            for (int c = 0; c < C; c++)
                s += (double)inp[(size_t)n * C + c] * wte[(size_t)v * C + c];
            logits[(size_t)n * V + v] = (float)s;
        }
}

void ops_lmhead_backward_ref(float *dinp, float *dwte, const float *dlogits, const float *inp,
                             const float *wte, int N, int C, int V) {
    for (int n = 0; n < N; n++)
        for (int v = 0; v < V; v++) {
            float d = dlogits[(size_t)n * V + v];
            for (int c = 0; c < C; c++) {
                dinp[(size_t)n * C + c] += d * wte[(size_t)v * C + c];
                dwte[(size_t)v * C + c] += d * inp[(size_t)n * C + c];
            }
        }
}

/* ------------------------------------------------------------------------------------------ */

/* Row-wise causal softmax of scale * scores (T,T) in place: row t keeps columns 0..t, zeros the
 * rest. Sequential sums: the same order on every machine. */
static inline void causal_softmax_body(float *att, int T, float scale) {
    for (int t = 0; t < T; t++) {
        float *row = att + (size_t)t * T;
        for (int u = 0; u <= t; u++) row[u] *= scale;
        float mx = ex_max(row, t + 1);
        float sum = 0.0f;
        for (int u = 0; u <= t; u++) {
            row[u] = ex_expf(row[u] - mx);
            sum += row[u];
        }
        float inv = 1.0f / sum;
        for (int u = 0; u <= t; u++) row[u] *= inv;
        for (int u = t + 1; u < T; u++) row[u] = 0.0f;
    }
}
EX_VARIANTS(causal_softmax, (float *att, int T, float scale), causal_softmax_body, (att, T, scale))

/* In place: datt(T,T) <- d(scores) = att * (datt - rowsum(att * datt)) * scale, causal. */
static void causal_softmax_backward(float *datt, const float *att, int T, float scale) {
    for (int t = 0; t < T; t++) {
        float *d = datt + (size_t)t * T;
        const float *a = att + (size_t)t * T;
        float dot = 0.0f;
        for (int u = 0; u <= t; u++) dot += a[u] * d[u];
        for (int u = 0; u <= t; u++) d[u] = a[u] * (d[u] - dot) * scale;
        for (int u = t + 1; u < T; u++) d[u] = 0.0f;
    }
}

/* C(M,N) [+]= op(A) op(B) through the current backend, on the calling thread's share. */
static void prod(xgemm_trans_t ta, xgemm_trans_t tb, int M, int N, int K, const float *A, int lda,
                 const float *B, int ldb, float *C, int ldc, int accumulate) {
    if (gemm_backend() == GEMM_EXACT) {
        xgemm(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
        return;
    }
    cblas_sgemm(CblasRowMajor, ta == XGEMM_T ? CblasTrans : CblasNoTrans,
                tb == XGEMM_T ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb,
                accumulate ? 1.0f : 0.0f, C, ldc);
}

void ops_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int H) {
    int hs = C / H, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static) if ((long)B * T * T * C >= OPS_PAR_MIN)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *q = qkv + (size_t)b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
        float *a = att + (size_t)bh * T * T;
        float *o = out + (size_t)b * T * C + h * hs;
        /* the full T x T product; the upper triangle is discarded by the causal softmax */
        prod(XGEMM_N, XGEMM_T, T, T, hs, q, C3, k, C3, a, T, 0);
        causal_softmax(a, T, scale);
        prod(XGEMM_N, XGEMM_N, T, hs, T, a, T, v, C3, o, C, 0);
    }
}

void ops_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                            const float *att, int B, int T, int C, int H) {
    int hs = C / H, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static) if ((long)B * T * T * C >= OPS_PAR_MIN)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *q = qkv + (size_t)b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
        float *dq = dqkv + (size_t)b * T * C3 + h * hs, *dk = dq + C, *dv = dq + 2 * C;
        const float *a = att + (size_t)bh * T * T, *d = dout + (size_t)b * T * C + h * hs;
        float *da = datt + (size_t)bh * T * T;
        /* out = att @ v */
        prod(XGEMM_N, XGEMM_T, T, T, hs, d, C, v, C3, da, T, 0);
        prod(XGEMM_T, XGEMM_N, T, hs, T, a, T, d, C, dv, C3, 1);
        causal_softmax_backward(da, a, T, scale);
        /* scores = scale * q @ k^T (scale folded into da above) */
        prod(XGEMM_N, XGEMM_N, T, hs, T, da, T, k, C3, dq, C3, 1);
        prod(XGEMM_T, XGEMM_N, T, hs, T, da, T, q, C3, dk, C3, 1);
    }
}

void ops_attention_forward_ref(float *out, float *att, const float *qkv, int B, int T, int C,
                               int H) {
    int hs = C / H, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const float *q = qkv + ((size_t)b * T + t) * C3 + h * hs;
                float *a = att + (((size_t)b * H + h) * T + t) * T;
                float mx = -INFINITY;
                for (int u = 0; u <= t; u++) {
                    const float *k = qkv + ((size_t)b * T + u) * C3 + C + h * hs;
                    float s = 0.0f;
                    for (int i = 0; i < hs; i++) s += q[i] * k[i];
                    a[u] = s * scale;
                    if (a[u] > mx) mx = a[u];
                }
                float sum = 0.0f;
                for (int u = 0; u <= t; u++) {
                    a[u] = expf(a[u] - mx);
                    sum += a[u];
                }
                for (int u = 0; u <= t; u++) a[u] /= sum;
                for (int u = t + 1; u < T; u++) a[u] = 0.0f;
                float *o = out + ((size_t)b * T + t) * C + h * hs;
                for (int i = 0; i < hs; i++) {
                    float s = 0.0f;
                    for (int u = 0; u <= t; u++)
                        s += a[u] * qkv[((size_t)b * T + u) * C3 + 2 * C + h * hs + i];
                    o[i] = s;
                }
            }
}

void ops_attention_backward_ref(float *dqkv, float *datt, const float *dout, const float *qkv,
                                const float *att, int B, int T, int C, int H) {
    int hs = C / H, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const float *a = att + (((size_t)b * H + h) * T + t) * T;
                float *da = datt + (((size_t)b * H + h) * T + t) * T;
                const float *d = dout + ((size_t)b * T + t) * C + h * hs;
                for (int u = 0; u < T; u++) da[u] = 0.0f;
                for (int u = 0; u <= t; u++) {
                    size_t vo = ((size_t)b * T + u) * C3 + 2 * C + h * hs;
                    for (int i = 0; i < hs; i++) {
                        da[u] += d[i] * qkv[vo + i];
                        dqkv[vo + i] += a[u] * d[i];
                    }
                }
                float dot = 0.0f;
                for (int u = 0; u <= t; u++) dot += a[u] * da[u];
                const float *q = qkv + ((size_t)b * T + t) * C3 + h * hs;
                float *dq = dqkv + ((size_t)b * T + t) * C3 + h * hs;
                for (int u = 0; u <= t; u++) {
                    float ds = a[u] * (da[u] - dot) * scale;
                    size_t ko = ((size_t)b * T + u) * C3 + C + h * hs;
                    for (int i = 0; i < hs; i++) {
                        dq[i] += ds * qkv[ko + i];
                        dqkv[ko + i] += ds * q[i];
                    }
                }
            }
}

/* ------------------------------------------------------------------------------------------ */
/* The Llama family */

/* Rows [lo, hi) of the RMSNorm forward. */
static inline void rmsnorm_rows_body(float *out, float *rstd, const float *inp, const float *w,
                                     int lo, int hi, int C, float eps) {
    for (int n = lo; n < hi; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float ms = ex_sumsq_dev(x, 0.0f, C) / C;
        float s = 1.0f / sqrtf(ms + eps);
        for (int c = 0; c < C; c++) o[c] = x[c] * s * w[c];
        rstd[n] = s;
    }
}
EX_VARIANTS(rmsnorm_rows,
            (float *out, float *rstd, const float *inp, const float *w, int lo, int hi, int C,
             float eps),
            rmsnorm_rows_body, (out, rstd, inp, w, lo, hi, C, eps))

void ops_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C,
                         float eps) {
    int nt = (long)N * C >= OPS_PAR_MIN ? ops_threads : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int t = 0; t < nt; t++)
        rmsnorm_rows(out, rstd, inp, w, (int)((long)N * t / nt), (int)((long)N * (t + 1) / nt), C,
                     eps);
}

void ops_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp,
                          const float *w, const float *rstd, int N, int C) {
#pragma omp parallel if ((long)N * C >= OPS_PAR_MIN)
    {
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
            float *di = dinp + (size_t)n * C;
            float s = rstd[n], dnorm_norm_mean = 0.0f;
            for (int c = 0; c < C; c++) dnorm_norm_mean += w[c] * d[c] * (x[c] * s);
            dnorm_norm_mean /= C;
            for (int c = 0; c < C; c++) di[c] += (w[c] * d[c] - x[c] * s * dnorm_norm_mean) * s;
        }
        /* the weight's gradient: each thread owns a column range, rows summed in order */
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int c0 = (int)((long)C * id / nt), c1 = (int)((long)C * (id + 1) / nt);
        for (int n = 0; n < N; n++) {
            const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
            float s = rstd[n];
            for (int c = c0; c < c1; c++) dw[c] += x[c] * s * d[c];
        }
    }
}

void ops_linear_forward(float *out, const float *inp, const float *w, const float *bias, int N,
                        int IC, int OC) {
    if (bias) {
#pragma omp parallel for schedule(static) if ((long)N * OC >= OPS_PAR_MIN)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, sizeof(float) * OC);
    }
    if (gemm_backend() == GEMM_EXACT) {
        xgemm(XGEMM_N, XGEMM_T, N, OC, IC, inp, IC, w, IC, out, OC, bias != NULL);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, w, IC,
                bias ? 1.0f : 0.0f, out, OC);
}

void ops_linear_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int N, int IC, int OC) {
    if (gemm_backend() == GEMM_EXACT) {
        if (dinp) xgemm(XGEMM_N, XGEMM_N, N, IC, OC, dout, OC, w, IC, dinp, IC, 1);
        xgemm(XGEMM_T, XGEMM_N, OC, IC, N, dout, OC, inp, IC, dw, IC, 1);
    } else {
        if (dinp)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC, w, IC,
                        1.0f, dinp, IC);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC, inp, IC,
                    1.0f, dw, IC);
    }
    if (dbias) bias_backward(dbias, dout, N, OC);
}

void ops_gqa_attention_forward(float *out, float *att, const float *qkv, int B, int T, int H,
                               int Hkv, int hd) {
    int Dq = H * hd, D3 = (H + 2 * Hkv) * hd, group = H / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for schedule(static) if ((long)B * T * T * Dq >= OPS_PAR_MIN)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H, kvh = h / group;
        const float *q = qkv + (size_t)b * T * D3 + h * hd;
        const float *k = qkv + (size_t)b * T * D3 + Dq + kvh * hd, *v = k + Hkv * hd;
        float *a = att + (size_t)bh * T * T;
        float *o = out + (size_t)b * T * Dq + h * hd;
        prod(XGEMM_N, XGEMM_T, T, T, hd, q, D3, k, D3, a, T, 0);
        causal_softmax(a, T, scale);
        prod(XGEMM_N, XGEMM_N, T, hd, T, a, T, v, D3, o, Dq, 0);
    }
}

void ops_gqa_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                                const float *att, int B, int T, int H, int Hkv, int hd) {
    int Dq = H * hd, D3 = (H + 2 * Hkv) * hd, group = H / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
    /* one task per key/value head: its query heads add into dk, dv one after another */
#pragma omp parallel for schedule(static) if ((long)B * T * T * Dq >= OPS_PAR_MIN)
    for (int bk = 0; bk < B * Hkv; bk++) {
        int b = bk / Hkv, kvh = bk % Hkv;
        const float *k = qkv + (size_t)b * T * D3 + Dq + kvh * hd, *v = k + Hkv * hd;
        float *dk = dqkv + (size_t)b * T * D3 + Dq + kvh * hd, *dv = dk + Hkv * hd;
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            const float *q = qkv + (size_t)b * T * D3 + h * hd;
            float *dq = dqkv + (size_t)b * T * D3 + h * hd;
            const float *a = att + ((size_t)b * H + h) * T * T;
            const float *d = dout + (size_t)b * T * Dq + h * hd;
            float *da = datt + ((size_t)b * H + h) * T * T;
            prod(XGEMM_N, XGEMM_T, T, T, hd, d, Dq, v, D3, da, T, 0);
            prod(XGEMM_T, XGEMM_N, T, hd, T, a, T, d, Dq, dv, D3, 1);
            causal_softmax_backward(da, a, T, scale);
            prod(XGEMM_N, XGEMM_N, T, hd, T, da, T, k, D3, dq, D3, 1);
            prod(XGEMM_T, XGEMM_N, T, hd, T, da, T, q, D3, dk, D3, 1);
        }
    }
}

static inline __attribute__((always_inline)) float silu_sigmoid(float g) {
    return 1.0f / (1.0f + ex_expf(-g));
}

static inline void swiglu_rows_body(float *out, const float *inp, int lo, int hi, int F) {
    for (int n = lo; n < hi; n++) {
        const float *g = inp + (size_t)n * 2 * F, *u = g + F;
        float *o = out + (size_t)n * F;
#pragma omp simd
        for (int i = 0; i < F; i++) o[i] = g[i] * silu_sigmoid(g[i]) * u[i];
    }
}
EX_VARIANTS(swiglu_rows, (float *out, const float *inp, int lo, int hi, int F), swiglu_rows_body,
            (out, inp, lo, hi, F))

static inline void swiglu_back_rows_body(float *dinp, const float *inp, const float *dout, int lo,
                                         int hi, int F) {
    for (int n = lo; n < hi; n++) {
        const float *g = inp + (size_t)n * 2 * F, *u = g + F, *d = dout + (size_t)n * F;
        float *dg = dinp + (size_t)n * 2 * F, *du = dg + F;
#pragma omp simd
        for (int i = 0; i < F; i++) {
            float s = silu_sigmoid(g[i]), silu = g[i] * s;
            dg[i] += d[i] * u[i] * (s * (1.0f + g[i] * (1.0f - s)));
            du[i] += d[i] * silu;
        }
    }
}
EX_VARIANTS(swiglu_back_rows,
            (float *dinp, const float *inp, const float *dout, int lo, int hi, int F),
            swiglu_back_rows_body, (dinp, inp, dout, lo, hi, F))

void ops_swiglu_forward(float *out, const float *inp, int N, int F) {
    int nt = (long)N * F >= OPS_PAR_MIN ? ops_threads : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int t = 0; t < nt; t++)
        swiglu_rows(out, inp, (int)((long)N * t / nt), (int)((long)N * (t + 1) / nt), F);
}

void ops_swiglu_backward(float *dinp, const float *inp, const float *dout, int N, int F) {
    int nt = (long)N * F >= OPS_PAR_MIN ? ops_threads : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int t = 0; t < nt; t++)
        swiglu_back_rows(dinp, inp, dout, (int)((long)N * t / nt), (int)((long)N * (t + 1) / nt),
                         F);
}

/* ------------------------------------------------------------------------------------------ */

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */

/* gelu(x) = 0.5 x (1 + tanh(u)) with u = k (x + 0.044715 x^3), computed as x * sigmoid(2u):
 * the same function, one exp instead of a tanh (and vectorised), and no cancellation in
 * 1 + tanh(u) for very negative x. */
static inline __attribute__((always_inline)) float gelu_sigmoid(float x) {
    float u = GELU_K * (x + 0.044715f * x * x * x);
    return 1.0f / (1.0f + ex_expf(-2.0f * u));
}

/* GELU runs in chunks, each through a kernel variant (exact.h). */
#define OPS_CHUNK 4096

static inline void gelu_forward_body(float *out, const float *inp, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) out[i] = inp[i] * gelu_sigmoid(inp[i]);
}
EX_VARIANTS(gelu_forward_chunk, (float *out, const float *inp, size_t n), gelu_forward_body,
            (out, inp, n))

static inline void gelu_backward_body(float *dinp, const float *inp, const float *dout, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i], s = gelu_sigmoid(x);
        float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += (s + x * s * (1.0f - s) * 2.0f * du) * dout[i];
    }
}
EX_VARIANTS(gelu_backward_chunk, (float *dinp, const float *inp, const float *dout, size_t n),
            gelu_backward_body, (dinp, inp, dout, n))

void ops_gelu_forward(float *out, const float *inp, size_t N) {
    size_t chunks = (N + OPS_CHUNK - 1) / OPS_CHUNK;
#pragma omp parallel for schedule(static) if (N >= OPS_PAR_MIN)
    for (size_t c = 0; c < chunks; c++) {
        size_t lo = c * OPS_CHUNK, n = N - lo < OPS_CHUNK ? N - lo : OPS_CHUNK;
        gelu_forward_chunk(out + lo, inp + lo, n);
    }
}

void ops_gelu_backward(float *dinp, const float *inp, const float *dout, size_t N) {
    size_t chunks = (N + OPS_CHUNK - 1) / OPS_CHUNK;
#pragma omp parallel for schedule(static) if (N >= OPS_PAR_MIN)
    for (size_t c = 0; c < chunks; c++) {
        size_t lo = c * OPS_CHUNK, n = N - lo < OPS_CHUNK ? N - lo : OPS_CHUNK;
        gelu_backward_chunk(dinp + lo, inp + lo, dout + lo, n);
    }
}

void ops_residual_forward(float *out, const float *a, const float *b, size_t N) {
#pragma omp parallel for schedule(static) if (N >= OPS_PAR_MIN)
    for (size_t i = 0; i < N; i++) out[i] = a[i] + b[i];
}

/* ------------------------------------------------------------------------------------------ */

/* One row of the cross-entropy: the loss, and with want_grad the row's gradient in place. The
 * normaliser sum(exp) runs in 16 fixed lanes of doubles. */
static inline void ce_row_body(float *x, float *loss, int target, float w, float inv_w, int V,
                               int want_grad) {
    /* a NaN logit may be skipped by the max, but it still turns the sum below into NaN */
    float mx = ex_max(x, V);
    float xt = x[target];
    double acc[EX_LANES] = {0};
    int v = 0;
    if (want_grad) {
        for (; v + EX_LANES <= V; v += EX_LANES)
            for (int j = 0; j < EX_LANES; j++) acc[j] += (x[v + j] = ex_expf(x[v + j] - mx));
        for (int j = 0; v + j < V; j++) acc[j] += (x[v + j] = ex_expf(x[v + j] - mx));
    } else {
        for (; v + EX_LANES <= V; v += EX_LANES)
            for (int j = 0; j < EX_LANES; j++) acc[j] += ex_expf(x[v + j] - mx);
        for (int j = 0; v + j < V; j++) acc[j] += ex_expf(x[v + j] - mx);
    }
    double sum = ex_lanes_sum64(acc);
    if (want_grad) {
        float sc = (float)(1.0 / sum) * w * inv_w;
        for (int u = 0; u < V; u++) x[u] *= sc;
        x[target] -= w * inv_w;
    }
    *loss = (float)(log(sum) + mx - xt);
}
EX_VARIANTS(ce_row, (float *x, float *loss, int target, float w, float inv_w, int V, int want_grad),
            ce_row_body, (x, loss, target, w, inv_w, V, want_grad))

double ops_crossentropy_sum(float *logits, float *losses, const int *targets, const float *weights,
                            int N, int V, int want_grad, double norm) {
    float inv_w = norm > 0 ? (float)(1.0 / norm) : 0.0f;
#pragma omp parallel for schedule(static) if ((long)N * V >= OPS_PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *x = logits + (size_t)n * V;
        float w = targets[n] >= 0 ? (weights ? weights[n] : 1.0f) : 0.0f;
        if (w == 0.0f) {
            losses[n] = 0.0f;
            if (want_grad) memset(x, 0, sizeof(float) * V);
            continue;
        }
        ce_row(x, &losses[n], targets[n], w, inv_w, V, want_grad);
    }
    double total = 0.0;
    for (int n = 0; n < N; n++)
        if (targets[n] >= 0) total += (double)(weights ? weights[n] : 1.0f) * losses[n];
    return total;
}

double ops_crossentropy(float *logits, float *losses, const int *targets, const float *weights,
                        int N, int V, int want_grad) {
    double wsum = 0.0;
    for (int n = 0; n < N; n++)
        if (targets[n] >= 0) wsum += weights ? weights[n] : 1.0f;
    double total = ops_crossentropy_sum(logits, losses, targets, weights, N, V, want_grad, wsum);
    return wsum > 0 ? total / wsum : NAN;
}
