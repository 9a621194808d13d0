/*
 * xgemm.c - exact matrix products (see xgemm.h for the definition and for why they are written
 * by hand: no BLAS fixes its summation order).
 *
 * The loops are BLIS's, with the one rule the contract adds: K is never split into partial sums
 * that are added later. Each thread owns a rectangle of C (a grid of tm x tn rectangles, the one
 * that packs least) and runs, inside it:
 *
 *   for each block of up to NC_MAX columns
 *     for each block of rows (all of them, or up to MCK_MAX when K is blocked)
 *       for each block of up to KC_MAX of k, in order
 *         pack op(B)'s block into panels of NR = 64 columns, k-major (aligned, in read order)
 *         for each block of up to MC_MAX rows, for each panel, for each micro-block of up to
 *         MR = 6 rows: the kernel
 *
 * op(A) is not packed: the kernel broadcasts its elements from where they lie (a row of A, or a
 * column of A stored transposed), as pgemm's kernel does, and copying it cost more than it saved.
 *
 * The kernel computes mr <= MR rows x one panel over one block of k: its accumulators start at
 * +0 (first block of k) or are reloaded from the buffer where the previous block stored them,
 * take one fused multiply-add per k in order, and are stored back (not the last block) or
 * written to C (C = acc, or C + acc). A float stored and reloaded is the same float, so every
 * output is the contract's single chain whatever the blocking; the threads split only M and N,
 * so each output has one owner. The AVX-512, AVX2 and portable kernels do the same operations on
 * the same operands and give the same bits.
 *
 * The packing buffers are each thread's own and kept for its next call (attention calls this
 * per head, inside a parallel region); a thread that cannot get them computes its rectangle with
 * the reference loops: slower, the same bits.
 */
#include "nn/xgemm.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "nn/pgemm.h"

#if defined(__x86_64__)
#define XGEMM_X86 1
#include <immintrin.h>
#else
#define XGEMM_X86 0
#endif

#define MR 6  /* rows of a micro-panel */
#define NR 64 /* columns of a panel */

/* Block sizes. A panel of up to KC_MAX x NR floats (192 KiB) stays in L2 while the kernels sweep
 * up to MC_MAX rows of A past it (432 KiB at KC_MAX); B's block, up to 3 MiB, in L3. K is
 * blocked only beyond KC_MAX (GPT-2's 768 is not; its 3072 and the LM head's vocabulary are),
 * and then the accumulators of up to MCK_MAX rows wait in a buffer between blocks of k. */
#define KC_MAX  768
#define MC_MAX  144
#define NC_MAX  1024
#define MCK_MAX 256

typedef enum { KERN_C, KERN_AVX2, KERN_AVX512 } kern_t;

/* pgemm_kernel_id's numbering */
static kern_t kern_current(void) {
    int id = pgemm_kernel_id();
    return id == 2 ? KERN_AVX512 : id == 1 ? KERN_AVX2 : KERN_C;
}

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

/* ---- the kernels ----------------------------------------------------------------------------
 *
 * kernel(mr, kc, a, rs, ks, bp, ci, ldi, co, ldo, add, nv): op(A)'s rows r < mr are read where
 * they lie, element k of row r at a[r * rs + k * ks] (rs = lda, ks = 1 for A as stored, the
 * other way round for its transpose), bp is a panel (kc x NR floats). The accumulators of rows
 * r < mr and columns j < nv start at ci[r * ldi + j] (ci NULL: +0), take acc = fma(a, b, acc)
 * for k in order, and end in co[r * ldo + j] (add: co + acc). Columns past nv are computed and
 * dropped.
 */

/* The portable kernel: the same chain per output, with fmaf (exactly rounded whether the compiler
 * emits an instruction or calls the library). */
static void kern_c(int mr, int kc, const float *a, size_t rs, size_t ks, const float *bp,
                   const float *ci, int ldi, float *co, int ldo, int add, int nv) {
    for (int r = 0; r < mr; r++) {
        float acc[NR];
        for (int j = 0; j < NR; j++) acc[j] = ci && j < nv ? ci[(size_t)r * ldi + j] : 0.0f;
        for (int k = 0; k < kc; k++) {
            float x = a[r * rs + k * ks];
            const float *b = bp + (size_t)k * NR;
            for (int j = 0; j < NR; j++) acc[j] = fmaf(x, b[j], acc[j]);
        }
        float *o = co + (size_t)r * ldo;
        for (int j = 0; j < nv; j++) o[j] = add ? o[j] + acc[j] : acc[j];
    }
}

#if XGEMM_X86
static inline __mmask16 mask16(int left) {
    return left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
}

/* mr rows x 64 columns: 24 accumulators of 16 floats, four panel loads and mr broadcasts per k.
 * Inlined with a constant mr so the accumulators stay in registers. */
__attribute__((target("avx512f"), always_inline)) static inline void
kern_avx512_mr(const int mr, int kc, const float *a, size_t rs, size_t ks, const float *bp,
               const float *ci, int ldi, float *co, int ldo, int add, int nv) {
    __m512 c[MR][4];
    __mmask16 mk[4];
    for (int j = 0; j < 4; j++) mk[j] = mask16(nv - 16 * j);
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < 4; j++)
            c[r][j] = ci ? _mm512_maskz_loadu_ps(mk[j], ci + (size_t)r * ldi + 16 * j)
                         : _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int k = 0; k < kc; k++) {
        const float *b = bp + (size_t)k * NR;
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), b2 = _mm512_load_ps(b + 32),
               b3 = _mm512_load_ps(b + 48);
        for (int r = 0; r < mr; r++) {
            __m512 x = _mm512_set1_ps(a[r * rs + k * ks]);
            c[r][0] = _mm512_fmadd_ps(x, b0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(x, b1, c[r][1]);
            c[r][2] = _mm512_fmadd_ps(x, b2, c[r][2]);
            c[r][3] = _mm512_fmadd_ps(x, b3, c[r][3]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < 4; j++) {
            float *o = co + (size_t)r * ldo + 16 * j;
            __m512 v = add ? _mm512_add_ps(_mm512_maskz_loadu_ps(mk[j], o), c[r][j]) : c[r][j];
            _mm512_mask_storeu_ps(o, mk[j], v);
        }
}

/* One inlined copy of a kernel per row count, so that each keeps its accumulators in registers:
 * the body of kern_avx512 and kern_avx2. */
#define KERN_PER_MR(fn)                                                                            \
    switch (mr) {                                                                                  \
    case 1:                                                                                        \
        fn(1, kc, a, rs, ks, bp, ci, ldi, co, ldo, add, nv);                                       \
        break;                                                                                     \
    case 2:                                                                                        \
        fn(2, kc, a, rs, ks, bp, ci, ldi, co, ldo, add, nv);                                       \
        break;                                                                                     \
    case 3:                                                                                        \
        fn(3, kc, a, rs, ks, bp, ci, ldi, co, ldo, add, nv);                                       \
        break;                                                                                     \
    case 4:                                                                                        \
        fn(4, kc, a, rs, ks, bp, ci, ldi, co, ldo, add, nv);                                       \
        break;                                                                                     \
    case 5:                                                                                        \
        fn(5, kc, a, rs, ks, bp, ci, ldi, co, ldo, add, nv);                                       \
        break;                                                                                     \
    default:                                                                                       \
        fn(MR, kc, a, rs, ks, bp, ci, ldi, co, ldo, add, nv);                                      \
    }

__attribute__((target("avx512f"))) static void kern_avx512(int mr, int kc, const float *a,
                                                           size_t rs, size_t ks, const float *bp,
                                                           const float *ci, int ldi, float *co,
                                                           int ldo, int add, int nv) {
    KERN_PER_MR(kern_avx512_mr)
}

/* AVX2 has 16 registers: mr rows x 16 columns at a time (12 accumulators), four times across the
 * panel; partial columns through masked moves, as in the AVX-512 kernel. */
__attribute__((target("avx2"))) static inline __m256i mask8(int left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

__attribute__((target("avx2,fma"), always_inline)) static inline void
kern_avx2_mr(const int mr, int kc, const float *a, size_t rs, size_t ks, const float *bp,
             const float *ci, int ldi, float *co, int ldo, int add, int nv) {
    for (int j0 = 0; j0 < nv; j0 += 16) {
        __m256i m0 = mask8(nv - j0), m1 = mask8(nv - j0 - 8);
        __m256 c[MR][2];
        for (int r = 0; r < mr; r++) {
            c[r][0] = ci ? _mm256_maskload_ps(ci + (size_t)r * ldi + j0, m0) : _mm256_setzero_ps();
            c[r][1] =
                ci ? _mm256_maskload_ps(ci + (size_t)r * ldi + j0 + 8, m1) : _mm256_setzero_ps();
        }
#pragma GCC unroll 4
        for (int k = 0; k < kc; k++) {
            const float *b = bp + (size_t)k * NR + j0;
            __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
            for (int r = 0; r < mr; r++) {
                __m256 x = _mm256_broadcast_ss(a + r * rs + k * ks);
                c[r][0] = _mm256_fmadd_ps(x, b0, c[r][0]);
                c[r][1] = _mm256_fmadd_ps(x, b1, c[r][1]);
            }
        }
        for (int r = 0; r < mr; r++) {
            float *o = co + (size_t)r * ldo + j0;
            __m256 v0 = c[r][0], v1 = c[r][1];
            if (add) {
                v0 = _mm256_add_ps(_mm256_maskload_ps(o, m0), v0);
                v1 = _mm256_add_ps(_mm256_maskload_ps(o + 8, m1), v1);
            }
            _mm256_maskstore_ps(o, m0, v0), _mm256_maskstore_ps(o + 8, m1, v1);
        }
    }
}

__attribute__((target("avx2,fma"))) static void kern_avx2(int mr, int kc, const float *a, size_t rs,
                                                          size_t ks, const float *bp,
                                                          const float *ci, int ldi, float *co,
                                                          int ldo, int add, int nv) {
    KERN_PER_MR(kern_avx2_mr)
}
#endif

/* ---- packing --------------------------------------------------------------------------------- */

#if XGEMM_X86
/* dst[k * ldd + j] = src[j * lds + k] for a 16 x 16 block: the (N, K)-stored B into a panel. */
__attribute__((target("avx512f"))) static void transpose16(const float *src, size_t lds, float *dst,
                                                           size_t ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * lds);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * ldd, r[i]);
}
#endif

/* op(B) rows [k0, k0 + kc) x columns [n0, n0 + nc) into panels of NR columns (dst + p * kc * NR),
 * columns past nc zero. */
static void pack_b(float *dst, xgemm_trans_t tb, const float *B, int ldb, int k0, int kc, int n0,
                   int nc, kern_t kern) {
    if (tb == XGEMM_N) {
        /* row by row, each read in order across the panels; a loop, not memcpy, which the
         * compiler makes a slow rep movs at 256 bytes */
        for (int k = 0; k < kc; k++) {
            const float *s = B + (size_t)(k0 + k) * ldb + n0;
            for (int p = 0; p * NR < nc; p++) {
                float *d = dst + ((size_t)p * kc + k) * NR;
                const float *sp = s + p * NR;
                int nv = nc - p * NR;
                if (nv >= NR)
                    for (int j = 0; j < NR; j++) d[j] = sp[j];
                else
                    for (int j = 0; j < NR; j++) d[j] = j < nv ? sp[j] : 0.0f;
            }
        }
        return;
    }
    for (int p = 0; p * NR < nc; p++) {
        float *d = dst + (size_t)p * kc * NR;
        int c0 = n0 + p * NR, nv = nc - p * NR < NR ? nc - p * NR : NR;
        /* (N, K) storage: column c of the panel is row c0 + c of B, contiguous in k */
        int j = 0;
#if XGEMM_X86
        if (kern == KERN_AVX512)
            for (; j + 16 <= nv; j += 16) {
                int k = 0;
                for (; k + 16 <= kc; k += 16)
                    transpose16(B + (size_t)(c0 + j) * ldb + k0 + k, (size_t)ldb,
                                d + (size_t)k * NR + j, NR);
                for (; k < kc; k++)
                    for (int jj = j; jj < j + 16; jj++)
                        d[(size_t)k * NR + jj] = B[(size_t)(c0 + jj) * ldb + k0 + k];
            }
#else
        (void)kern;
#endif
        /* the rest a block of 16 k at a time, so the panel rows written stay in L1 */
        for (int kb = 0; kb < kc; kb += 16) {
            int ke = kb + 16 < kc ? kb + 16 : kc;
            for (int jj = j; jj < NR; jj++) {
                const float *s = jj < nv ? B + (size_t)(c0 + jj) * ldb + k0 : NULL;
                for (int k = kb; k < ke; k++) d[(size_t)k * NR + jj] = s ? s[k] : 0.0f;
            }
        }
    }
}

/* The first row of block i of `mc` rows split into nb = ceil(mc / MR) balanced blocks (6 6 5 5,
 * not 6 6 6 4: few accumulators leave the FMA units waiting on latency). */
static inline int mblock_lo(int mc, int nb, int i) {
    return i * (mc / nb) + (i < mc % nb ? i : mc % nb);
}

/* ---- one thread's rectangle ------------------------------------------------------------------ */

typedef struct {
    xgemm_trans_t ta, tb;
    int M, N, K;
    const float *A, *B;
    int lda, ldb, ldc;
    float *C;
    int accumulate;
    kern_t kern;
} prob_t;

/* A thread's packing buffers, kept for its next call and freed when the thread ends (a worker
 * computes each job on a thread of its own: a buffer left behind would leak once per job). */
static _Thread_local float *ws_buf;
static _Thread_local size_t ws_cap;
static pthread_key_t ws_key;
static pthread_once_t ws_once = PTHREAD_ONCE_INIT;
static int ws_key_ok;

static void ws_free(void *p) {
    free(p);
}

static void ws_key_make(void) {
    ws_key_ok = pthread_key_create(&ws_key, ws_free) == 0;
}

static float *ws_get(size_t floats) {
    if (floats <= ws_cap) return ws_buf;
    pthread_once(&ws_once, ws_key_make);
    free(ws_buf);
    ws_buf = NULL, ws_cap = 0;
    if (ws_key_ok) pthread_setspecific(ws_key, NULL);
    void *mem = NULL;
    if (posix_memalign(&mem, 64, floats * sizeof(float))) return NULL;
    /* without a key to free it at the thread's end it would leak: none (the caller falls back
     * to the reference loop for its share) */
    if (!ws_key_ok || pthread_setspecific(ws_key, mem) != 0) {
        free(mem);
        return NULL;
    }
    ws_buf = mem, ws_cap = floats;
    return ws_buf;
}

static inline int ceil_div(int a, int b) {
    return (a + b - 1) / b;
}

/* Block b of n blocks that split [0, len): [lo, hi). */
static inline int split_lo(int len, int n, int b) {
    return (int)((long)len * b / n);
}

static void run_kernel(kern_t kern, int mr, int kc, const float *a, size_t rs, size_t ks,
                       const float *bp, const float *ci, int ldi, float *co, int ldo, int add,
                       int nv) {
    switch (kern) {
#if XGEMM_X86
    case KERN_AVX512:
        kern_avx512(mr, kc, a, rs, ks, bp, ci, ldi, co, ldo, add, nv);
        break;
    case KERN_AVX2:
        kern_avx2(mr, kc, a, rs, ks, bp, ci, ldi, co, ldo, add, nv);
        break;
#endif
    default:
        kern_c(mr, kc, a, rs, ks, bp, ci, ldi, co, ldo, add, nv);
    }
}

/* C rows [m0, m1) x columns [n0, n1) on the calling thread. */
static void rect(const prob_t *p, int m0, int m1, int n0, int n1) {
    int Mt = m1 - m0, Nt = n1 - n0, K = p->K;
    if (Mt <= 0 || Nt <= 0) return;
    int nk = ceil_div(K, KC_MAX), kcmax = ceil_div(K, nk);
    int njc = ceil_div(Nt, NC_MAX), ncmax = ceil_div(ceil_div(Nt, njc), NR) * NR;
    /* with K blocked, the accumulators of a block of rows wait in a buffer between blocks of k;
     * otherwise every row's block of B is packed once */
    int nic = nk > 1 ? ceil_div(Mt, MCK_MAX) : 1, icmax = ceil_div(Mt, nic);
    size_t bsz = (size_t)kcmax * ncmax, csz = nk > 1 ? (size_t)icmax * ncmax : 0;
    float *ws = ws_get(bsz + csz);
    if (!ws) {
        xgemm_ref(p->ta, p->tb, Mt, Nt, K,
                  p->ta == XGEMM_N ? p->A + (size_t)m0 * p->lda : p->A + m0, p->lda,
                  p->tb == XGEMM_N ? p->B + n0 : p->B + (size_t)n0 * p->ldb, p->ldb,
                  p->C + (size_t)m0 * p->ldc + n0, p->ldc, p->accumulate);
        return;
    }
    float *bp = ws, *cb = ws + bsz;
    /* op(A)[m][k] at A[m * rs + k * ks] */
    size_t rs = p->ta == XGEMM_N ? (size_t)p->lda : 1, ks = p->ta == XGEMM_N ? 1 : (size_t)p->lda;
    for (int jc = 0; jc < njc; jc++) {
        int j0 = n0 + jc * ncmax, nc = n1 - j0 < ncmax ? n1 - j0 : ncmax;
        if (nc <= 0) break;
        for (int ic = 0; ic < nic; ic++) {
            int i0 = m0 + split_lo(Mt, nic, ic), i1 = m0 + split_lo(Mt, nic, ic + 1);
            for (int pc = 0; pc < nk; pc++) {
                int k0 = split_lo(K, nk, pc), kc = split_lo(K, nk, pc + 1) - k0;
                int first = pc == 0, last = pc == nk - 1;
                pack_b(bp, p->tb, p->B, p->ldb, k0, kc, j0, nc, p->kern);
                /* rows a block at a time, so that their share of A stays in L2 across the panels */
                int nmc = ceil_div(i1 - i0, MC_MAX);
                for (int mb = 0; mb < nmc; mb++) {
                    int a0 = i0 + split_lo(i1 - i0, nmc, mb),
                        mc = i0 + split_lo(i1 - i0, nmc, mb + 1) - a0;
                    int nb = ceil_div(mc, MR);
                    for (int q = 0; q * NR < nc; q++) {
                        int nv = nc - q * NR < NR ? nc - q * NR : NR;
                        const float *bq = bp + (size_t)q * kc * NR;
                        for (int i = 0; i < nb; i++) {
                            int lo = mblock_lo(mc, nb, i), mr = mblock_lo(mc, nb, i + 1) - lo;
                            int row = a0 + lo, col = j0 + q * NR;
                            float *cacc = cb + (size_t)(row - i0) * ncmax + q * NR;
                            const float *ci = first ? NULL : cacc;
                            float *co = last ? p->C + (size_t)row * p->ldc + col : cacc;
                            int ldo = last ? p->ldc : ncmax;
                            run_kernel(p->kern, mr, kc, p->A + row * rs + k0 * ks, rs, ks, bq, ci,
                                       ncmax, co, ldo, last && p->accumulate, nv);
                        }
                    }
                }
            }
        }
    }
}

/* ---- the threads' rectangles ----------------------------------------------------------------- */

/* The grid of tm x tn rectangles for T threads with the least estimated time per thread: the
 * multiply-adds of the largest rectangle plus what it packs (op(A) once per block of columns,
 * op(B) once per block of rows), a packed float counted as 16 multiply-adds. */
static void choose_grid(int M, int N, int K, int T, int *tm, int *tn) {
    double best = -1;
    int P = ceil_div(N, NR);
    *tm = 1, *tn = 1;
    for (int a = 1; a <= T; a++) {
        if (T % a) continue;
        int b = T / a;
        if (a > ceil_div(M, MR) || b > P) continue;
        double rows = ceil_div(ceil_div(M, a), MR) * MR, cols = (double)ceil_div(P, b) * NR;
        double njc = ceil(cols / NC_MAX), nic = K > KC_MAX ? ceil(rows / MCK_MAX) : 1;
        double t = rows * cols * K + 16.0 * (rows * K * njc + cols * K * nic);
        if (best < 0 || t < best) best = t, *tm = a, *tn = b;
    }
}

void xgemm(xgemm_trans_t ta, xgemm_trans_t tb, int M, int N, int K, const float *A, int lda,
           const float *B, int ldb, float *C, int ldc, int accumulate) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* no k: every chain is its +0 (the blocked loops would leave C alone) */
        xgemm_ref(ta, tb, M, N, 0, A, lda, B, ldb, C, ldc, accumulate);
        return;
    }
    prob_t p = {ta, tb, M, N, K, A, B, lda, ldb, ldc, C, accumulate, kern_current()};
    int T = omp_in_parallel() ? 1 : omp_get_max_threads();
    if ((double)M * N * K < 262144.0) T = 1;
    if (T == 1) {
        rect(&p, 0, M, 0, N);
        return;
    }
    int tm, tn;
    choose_grid(M, N, K, T, &tm, &tn);
    int P = ceil_div(N, NR);
#pragma omp parallel num_threads(tm *tn)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        if (nt == tm * tn) {
            int a = t / tn, b = t % tn;
            int n0 = split_lo(P, tn, b) * NR, n1 = split_lo(P, tn, b + 1) * NR;
            rect(&p, split_lo(M, tm, a), split_lo(M, tm, a + 1), n0, n1 < N ? n1 : N);
        } else if (t == 0) { /* the runtime gave fewer threads: all on one */
            rect(&p, 0, M, 0, N);
        }
    }
}
