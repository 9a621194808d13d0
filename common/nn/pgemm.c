/*
 * pgemm.c - matrix products against packed weights (see pgemm.h for the layout and why).
 *
 * The kernel computes a block of up to MR = 6 rows x 64 columns (one panel): 24 accumulators of
 * 16 floats, four panel loads and six broadcasts per k. One stream's block runs over the whole of
 * K; a batch's blocks take the panel 96 k at a time, each chunk through every block while it is
 * in L1, the accumulators stored in Y between chunks and reloaded (the same floats: the chain of
 * each output goes on unchanged). The threads split the panels, so each output has one owner and
 * one summation order. While a panel's row blocks are computed, each block prefetches its share
 * of the next panel into L2.
 */
#include "nn/pgemm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <omp.h>

#include "base/err.h"

/* The vector kernels are x86-64's; elsewhere the portable C kernel runs (same bits). */
#if defined(__x86_64__)
#define PGEMM_X86 1
#include <immintrin.h>
#else
#define PGEMM_X86 0
#endif

#define MR 6
/* k per chunk of a batch: 96 rows of a panel (24 KiB) stay in L1 across the row blocks; from
 * L2 the panel was read at 0.75-0.8 of the rate from L1 (GPT-2 small at 32 rows, one thread) */
#define KCH 96

typedef enum { KERNEL_C, KERNEL_AVX2, KERNEL_AVX512, KERNEL_AUTO } kernel_t;

static const char *const kernel_names[] = {"c", "avx2", "avx512f"};
static kernel_t forced = KERNEL_AUTO;

static int cpu_has(kernel_t k) {
#if PGEMM_X86
    switch (k) {
    case KERNEL_AVX512:
        return __builtin_cpu_supports("avx512f");
    case KERNEL_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
        return 1;
    }
#else
    return k == KERNEL_C;
#endif
}

/* The kernel RLHF_SIMD names (read once): how a test or a user forces the AVX2 or the portable
 * path on a machine that has AVX-512. An unknown name, or one this CPU cannot run, is reported
 * once and ignored. */
static kernel_t env_kernel(void) {
    static int done;
    static kernel_t k = KERNEL_AUTO;
    if (done) return k;
    const char *e = getenv("RLHF_SIMD");
    if (e && *e) {
        for (int i = KERNEL_C; i < KERNEL_AUTO; i++)
            if (!strcmp(e, kernel_names[i])) k = (kernel_t)i;
        if (k == KERNEL_AUTO || !cpu_has(k)) {
            fprintf(stderr, "rlhf: RLHF_SIMD=%s: %s; using the best this CPU runs\n", e,
                    k == KERNEL_AUTO ? "not one of avx512f, avx2, c" : "this CPU cannot run it");
            k = KERNEL_AUTO;
        }
    }
    done = 1;
    return k;
}

static kernel_t kernel(void) {
    if (forced != KERNEL_AUTO) return forced;
    kernel_t e = env_kernel();
    if (e != KERNEL_AUTO) return e;
    return cpu_has(KERNEL_AVX512) ? KERNEL_AVX512 : cpu_has(KERNEL_AVX2) ? KERNEL_AVX2 : KERNEL_C;
}

const char *pgemm_kernel(void) {
    return kernel_names[kernel()];
}

int pgemm_kernel_id(void) {
    return (int)kernel();
}

int pgemm_set_kernel(const char *name) {
    if (!name) {
        forced = KERNEL_AUTO;
        return 0;
    }
    for (int k = KERNEL_C; k < KERNEL_AUTO; k++)
        if (!strcmp(name, kernel_names[k])) {
            if (!cpu_has((kernel_t)k))
                return rl_fail(RL_EINVAL, "pgemm: this CPU cannot run the %s kernel", name);
            forced = (kernel_t)k;
            return 0;
        }
    return rl_fail(RL_EINVAL, "pgemm: no kernel named '%s'", name);
}

/* Copies w into pm's panels (allocated for w's shape). Rows of the (K, N) layout are copied 64
 * floats at a time; the (N, K) layout is transposed a column at a time, each read contiguous. */
static void pack_into(pgemm_mat_t *pm, const float *w, pgemm_layout_t layout) {
    int K = pm->K, N = pm->N, P = pm->panels;
    float *d = pm->data;
#pragma omp parallel for schedule(static) if ((size_t)P * K >= 4096)
    for (int p = 0; p < P; p++) {
        float *dp = d + (size_t)p * K * PGEMM_NR;
        int n0 = p * PGEMM_NR, nv = N - n0 < PGEMM_NR ? N - n0 : PGEMM_NR;
        if (layout == PGEMM_KN) {
            for (int k = 0; k < K; k++) {
                memcpy(dp + (size_t)k * PGEMM_NR, w + (size_t)k * N + n0,
                       (size_t)nv * sizeof(float));
                memset(dp + (size_t)k * PGEMM_NR + nv, 0, (size_t)(PGEMM_NR - nv) * sizeof(float));
            }
        } else {
            for (int j = 0; j < PGEMM_NR; j++) {
                const float *src = j < nv ? w + (size_t)(n0 + j) * K : NULL;
                for (int k = 0; k < K; k++) dp[(size_t)k * PGEMM_NR + j] = src ? src[k] : 0.0f;
            }
        }
    }
}

int pgemm_pack(pgemm_mat_t *pm, const float *w, int K, int N, pgemm_layout_t layout) {
    if (K < 1 || N < 1 || !w) {
        pgemm_free(pm);
        return rl_fail(RL_EINVAL, "pgemm_pack: bad shape %d x %d", K, N);
    }
    if (!pm->data || pm->K != K || pm->N != N) {
        pgemm_free(pm);
        int P = (N + PGEMM_NR - 1) / PGEMM_NR;
        size_t bytes = (size_t)P * (size_t)K * PGEMM_NR * sizeof(float);
        /* large matrices on 2 MiB boundaries, where transparent huge pages (if enabled) can
         * back them; no madvise, whose direct compaction made a fresh pack 4x slower here */
        size_t align = bytes >= ((size_t)4 << 20) ? ((size_t)2 << 20) : 64;
        void *mem = NULL;
        if (posix_memalign(&mem, align, bytes))
            return rl_fail(RL_ENOMEM, "pgemm_pack: %zu bytes for a %d x %d matrix", bytes, K, N);
        pm->K = K, pm->N = N, pm->panels = P, pm->data = mem, pm->bytes = bytes;
    }
    pack_into(pm, w, layout);
    return 0;
}

void pgemm_free(pgemm_mat_t *pm) {
    if (!pm) return;
    free(pm->data);
    memset(pm, 0, sizeof *pm);
}

/*
 * The portable path: the same sums in the same order (fmaf is exactly rounded whether the
 * compiler emits an instruction or calls glibc's function), so it gives the AVX-512 kernel's
 * bits. Compiled twice: for AVX2 + FMA, where the compiler vectorises the 64 columns, and for
 * the baseline.
 */
#define BLOCK_C_BODY                                                                               \
    for (int r = 0; r < mr; r++) {                                                                 \
        float acc[PGEMM_NR] = {0};                                                                 \
        const float *x = X + (size_t)r * K;                                                        \
        for (int k = 0; k < K; k++) {                                                              \
            const float *w = Wp + (size_t)k * PGEMM_NR;                                            \
            float xv = x[k];                                                                       \
            for (int j = 0; j < PGEMM_NR; j++) acc[j] = fmaf(xv, w[j], acc[j]);                    \
        }                                                                                          \
        float *y = Y + (size_t)r * ldy;                                                            \
        for (int j = 0; j < nvalid; j++) y[j] = bias ? acc[j] + bias[j] : acc[j];                  \
    }

#if PGEMM_X86
__attribute__((target("avx2,fma"))) static void block_avx2(int mr, const float *X, int K,
                                                           const float *Wp, float *Y, int ldy,
                                                           int nvalid, const float *bias) {
    BLOCK_C_BODY
}

#endif

static void block_c(int mr, const float *X, int K, const float *Wp, float *Y, int ldy, int nvalid,
                    const float *bias) {
    BLOCK_C_BODY
}

#if PGEMM_X86
/* One k step of a block: four panel loads, then per row a broadcast and four FMAs. */
#define BLOCK_STEP(k)                                                                              \
    do {                                                                                           \
        const float *w_ = Wp + (size_t)(k)*PGEMM_NR;                                               \
        __m512 w0 = _mm512_load_ps(w_), w1 = _mm512_load_ps(w_ + 16),                              \
               w2 = _mm512_load_ps(w_ + 32), w3 = _mm512_load_ps(w_ + 48);                         \
        for (int r = 0; r < mr; r++) {                                                             \
            __m512 b = _mm512_set1_ps(X[(size_t)r * K + (k)]);                                     \
            c[r][0] = _mm512_fmadd_ps(b, w0, c[r][0]);                                             \
            c[r][1] = _mm512_fmadd_ps(b, w1, c[r][1]);                                             \
            c[r][2] = _mm512_fmadd_ps(b, w2, c[r][2]);                                             \
            c[r][3] = _mm512_fmadd_ps(b, w3, c[r][3]);                                             \
        }                                                                                          \
    } while (0)

/* mr rows x one panel over k in [k0, k1). The accumulators start at +0 (k0 = 0) or from Y,
 * where the previous range of k left them (a float stored and reloaded is the same float: the
 * chain goes on unchanged), and end in Y: with the bias added after the last k (k1 = K), as they
 * are otherwise. Rows k in [pf_lo, pf_hi) of `next` (the following panel, or NULL) are
 * prefetched into L2 on the way. Inlined with a constant mr so the accumulators stay in
 * registers. */
__attribute__((target("avx512f"), always_inline)) static inline void
block_avx512(const int mr, const float *X, int K, int k0, int k1, const float *Wp, float *Y,
             int ldy, int nvalid, const float *bias, const float *next, int pf_lo, int pf_hi) {
    __m512 c[MR][4];
    __mmask16 mask[4];
    for (int j = 0; j < 4; j++) {
        int left = nvalid - 16 * j;
        mask[j] = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
    }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < 4; j++)
            c[r][j] = k0 ? _mm512_maskz_loadu_ps(mask[j], Y + (size_t)r * ldy + 16 * j)
                         : _mm512_setzero_ps();
    if (!next) pf_lo = pf_hi = k0;
    int k = k0;
#pragma GCC unroll 2
    for (; k < pf_lo; k++) BLOCK_STEP(k);
    for (; k < pf_hi; k++) {
        const char *q = (const char *)(next + (size_t)k * PGEMM_NR);
        _mm_prefetch(q, _MM_HINT_T1), _mm_prefetch(q + 64, _MM_HINT_T1);
        _mm_prefetch(q + 128, _MM_HINT_T1), _mm_prefetch(q + 192, _MM_HINT_T1);
        BLOCK_STEP(k);
    }
#pragma GCC unroll 2
    for (; k < k1; k++) BLOCK_STEP(k);
    int last = k1 == K;
    for (int j = 0; j < 4; j++) {
        if (!mask[j]) break;
        __m512 bj =
            bias && last ? _mm512_maskz_loadu_ps(mask[j], bias + 16 * j) : _mm512_setzero_ps();
        for (int r = 0; r < mr; r++) {
            __m512 v = bias && last ? _mm512_add_ps(c[r][j], bj) : c[r][j];
            _mm512_mask_storeu_ps(Y + (size_t)r * ldy + 16 * j, mask[j], v);
        }
    }
}

__attribute__((target("avx512f"))) static void
dispatch_avx512(int mr, const float *X, int K, int k0, int k1, const float *Wp, float *Y, int ldy,
                int nvalid, const float *bias, const float *next, int pf_lo, int pf_hi) {
    /* one inlined copy per row count, so that each keeps its accumulators in registers */
#define BLOCK_CASE(n)                                                                              \
    case n:                                                                                        \
        block_avx512(n, X, K, k0, k1, Wp, Y, ldy, nvalid, bias, next, pf_lo, pf_hi);               \
        break
    switch (mr) {
        BLOCK_CASE(1);
        BLOCK_CASE(2);
        BLOCK_CASE(3);
        BLOCK_CASE(4);
        BLOCK_CASE(5);
    default:
        block_avx512(MR, X, K, k0, k1, Wp, Y, ldy, nvalid, bias, next, pf_lo, pf_hi);
    }
#undef BLOCK_CASE
}
#endif

void pgemm(float *Y, const float *X, int M, const pgemm_mat_t *W, const float *bias) {
    int P = W->panels, K = W->K, N = W->N;
    kernel_t kern = kernel();
    int nb = (M + MR - 1) / MR;
    double work = (double)M * K * N;
#pragma omp parallel for schedule(static) if (work >= 262144.0 && P > 1)
    for (int p = 0; p < P; p++) {
        const float *wp = W->data + (size_t)p * K * PGEMM_NR;
        /* the next panel into L2 while this one is computed: a batch would otherwise stall on
         * DRAM at the start of each panel, and one stream reads 5-10% faster with it than with
         * the hardware prefetcher alone */
        const float *next = p + 1 < P ? wp + (size_t)K * PGEMM_NR : NULL;
        (void)next; /* only the AVX-512 kernel prefetches */
        int nvalid = N - p * PGEMM_NR < PGEMM_NR ? N - p * PGEMM_NR : PGEMM_NR;
        const float *bp = bias ? bias + (size_t)p * PGEMM_NR : NULL;
        /* balanced blocks (32 rows: 6 6 5 5 5 5, not 6 6 6 6 6 2): few accumulators leave the
         * FMA units waiting on latency */
        if (kern == KERNEL_AVX512) {
#if PGEMM_X86
            /* A batch takes the panel a chunk of k at a time, each chunk through every row block
             * while it is in L1, the accumulators waiting in Y between chunks; each block
             * prefetches its share of the next panel's rows of the chunk. */
            int nch = nb > 1 ? (K + KCH - 1) / KCH : 1;
            for (int ch = 0; ch < nch; ch++) {
                int k0 = (int)((long)K * ch / nch), k1 = (int)((long)K * (ch + 1) / nch);
                for (int b = 0, m0 = 0; b < nb; m0 += M / nb + (b < M % nb), b++) {
                    int mr = M / nb + (b < M % nb);
                    dispatch_avx512(mr, X + (size_t)m0 * K, K, k0, k1, wp,
                                    Y + (size_t)m0 * N + (size_t)p * PGEMM_NR, N, nvalid, bp, next,
                                    k0 + (int)((long)(k1 - k0) * b / nb),
                                    k0 + (int)((long)(k1 - k0) * (b + 1) / nb));
                }
            }
#endif
            continue;
        }
        for (int b = 0, m0 = 0; b < nb; m0 += M / nb + (b < M % nb), b++) {
            int mr = M / nb + (b < M % nb);
            const float *xb = X + (size_t)m0 * K;
            float *yb = Y + (size_t)m0 * N + (size_t)p * PGEMM_NR;
#if PGEMM_X86
            if (kern == KERNEL_AVX2) {
                block_avx2(mr, xb, K, wp, yb, N, nvalid, bp);
                continue;
            }
#endif
            block_c(mr, xb, K, wp, yb, N, nvalid, bp);
        }
    }
}

#if PGEMM_X86
/* The FMA chains of the peak measurement: 12 independent accumulators per thread, enough to
 * cover the FMA latency on both pipes. */
#define PEAK_CHAINS 12

__attribute__((target("avx512f"))) static float peak_avx512(long iters) {
    __m512 a[PEAK_CHAINS], b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-3f);
    for (int i = 0; i < PEAK_CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < PEAK_CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    __m512 sum = a[0];
    for (int i = 1; i < PEAK_CHAINS; i++) sum = _mm512_add_ps(sum, a[i]);
    return _mm512_reduce_add_ps(sum);
}

__attribute__((target("avx2,fma"))) static float peak_avx2(long iters) {
    __m256 a[PEAK_CHAINS], b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-3f);
    for (int i = 0; i < PEAK_CHAINS; i++) a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < PEAK_CHAINS; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
    __m256 sum = a[0];
    for (int i = 1; i < PEAK_CHAINS; i++) sum = _mm256_add_ps(sum, a[i]);
    float out[8];
    _mm256_storeu_ps(out, sum);
    return out[0];
}
#endif

double pgemm_fma_peak_gflops(void) {
    kernel_t k = kernel();
#if !PGEMM_X86
    (void)k;
    return 0.0;
#else
    if (k == KERNEL_C) return 0.0;
    int lanes = k == KERNEL_AVX512 ? 16 : 8;
    long iters = 20000000; /* about 0.1 s per thread at 3.5 GHz */
    float sink = 0.0f;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int threads = 1;
#pragma omp parallel reduction(+ : sink)
    {
#pragma omp single
        threads = omp_get_num_threads();
        sink += k == KERNEL_AVX512 ? peak_avx512(iters) : peak_avx2(iters);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    volatile float keep = sink; /* the chains must be computed */
    (void)keep;
    double s = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    return (double)threads * iters * PEAK_CHAINS * lanes * 2.0 / s / 1e9;
#endif
}

#if PGEMM_X86
/* A thread's share of pgemm_read_sum: eight accumulators, so the adds never wait on each other
 * and the loop is limited by the memory alone. */
__attribute__((target("avx512f"))) static float read_avx512(const float *a, size_t n) {
    __m512 s[8];
    for (int i = 0; i < 8; i++) s[i] = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 128 <= n; i += 128)
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) s[j] = _mm512_add_ps(s[j], _mm512_loadu_ps(a + i + 16 * j));
    float t = 0.0f;
    for (; i < n; i++) t += a[i];
    for (int j = 1; j < 8; j++) s[0] = _mm512_add_ps(s[0], s[j]);
    return t + _mm512_reduce_add_ps(s[0]);
}

__attribute__((target("avx2"))) static float read_avx2(const float *a, size_t n) {
    __m256 s[8];
    for (int i = 0; i < 8; i++) s[i] = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) s[j] = _mm256_add_ps(s[j], _mm256_loadu_ps(a + i + 8 * j));
    float t = 0.0f, out[8];
    for (; i < n; i++) t += a[i];
    for (int j = 1; j < 8; j++) s[0] = _mm256_add_ps(s[0], s[j]);
    _mm256_storeu_ps(out, s[0]);
    for (int j = 0; j < 8; j++) t += out[j];
    return t;
}
#endif

float pgemm_read_sum(const float *a, size_t n) {
    kernel_t k = kernel();
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {
        size_t T = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
        size_t lo = n * t / T, hi = n * (t + 1) / T;
#if PGEMM_X86
        if (k == KERNEL_AVX512)
            total += read_avx512(a + lo, hi - lo);
        else if (k == KERNEL_AVX2)
            total += read_avx2(a + lo, hi - lo);
        else
#endif
            for (size_t i = lo; i < hi; i++) total += a[i];
    }
    return total;
}
