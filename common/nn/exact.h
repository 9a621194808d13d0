/*
 * exact.h - the element-wise and reduction primitives of the exact kernels: results that are
 * the same bits on every x86-64 machine, whatever instruction set a loop is compiled for.
 *
 * A vectorised reduction (`omp simd reduction`, or a compiler allowed to reassociate) adds in
 * an order that follows the vector width: 4 lanes on the x86-64 baseline, 8 with AVX2, 16 with
 * AVX-512, so the same sum rounds differently on another machine. Here every sum has 16 lanes
 * written out (lane j takes elements j, j+16, j+32, ... in order) and one fixed tree at the end;
 * a compiler vectorises the lanes at any width without changing what is computed.
 *
 * glibc's vector expf (libmvec) has one implementation per width, and its scalar expf picks one
 * per CPU, so ex_expf below is ours: a range reduction and a polynomial in explicit fmaf, every
 * step an exactly rounded IEEE operation (the build never contracts a * b + c on its own:
 * -ffp-contract=off). Why by hand: no library offers an expf with the same bits in scalar and in
 * every vector width.
 *
 * The functions are static inline, to be compiled inside each kernel variant (AVX-512, AVX2 +
 * FMA, baseline): EX_VARIANTS builds the three from one body and dispatches on the kernel
 * pgemm_kernel() names, so a test can run all three on one machine and compare their bits.
 */
#ifndef RLHF_EXACT_H
#define RLHF_EXACT_H

#include <math.h>
#include <stdint.h>

#define EX_LANES 16

/* exp(x) for float x, within 2 ulp where the result is normal; +Inf above ~88.72, 0 below
 * ~-103.97 (subnormal results are rounded twice), NaN for NaN. Branch-free, so it vectorises. */
static inline __attribute__((always_inline)) float ex_expf(float x) {
    const float log2e = 0x1.715476p+0f, shift = 0x1.8p23f;
    const float ln2_hi = 0x1.62e43p-1f, ln2_lo = -0x1.05c610p-29f;
    /* clamp (NaN compares false and stays NaN) */
    float xc = x < -104.0f ? -104.0f : x;
    xc = xc > 89.0f ? 89.0f : xc;
    /* n = nearest integer to x / ln 2, in [-150, 129]; r = x - n ln 2, |r| <= ~0.347 */
    float kf = (xc * log2e + shift) - shift;
    kf = kf == kf ? kf : 0.0f;
    float r = fmaf(-kf, ln2_hi, xc);
    r = fmaf(-kf, ln2_lo, r);
    /* exp(r): Taylor polynomial of degree 7 (truncation below 7e-9 relative), Horner */
    float p = 0x1.a01a02p-13f;       /* 1/5040 */
    p = fmaf(p, r, 0x1.6c16c2p-10f); /* 1/720 */
    p = fmaf(p, r, 0x1.111112p-7f);  /* 1/120 */
    p = fmaf(p, r, 0x1.555556p-5f);  /* 1/24 */
    p = fmaf(p, r, 0x1.555556p-3f);  /* 1/6 */
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    /* times 2^n as 2^n1 * 2^n2, both normal: n1 = floor(n / 2) */
    int n = (int)kf, n1 = n >> 1, n2 = n - n1;
    union {
        uint32_t u;
        float f;
    } s1 = {.u = (uint32_t)(n1 + 127) << 23}, s2 = {.u = (uint32_t)(n2 + 127) << 23};
    return (p * s1.f) * s2.f;
}

/* The 16 lanes added in one fixed tree: (0+8), (1+9), ... then 4, 2, 1 apart. */
static inline __attribute__((always_inline)) float ex_lanes_sum(float acc[EX_LANES]) {
    for (int w = EX_LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}

static inline __attribute__((always_inline)) double ex_lanes_sum64(double acc[EX_LANES]) {
    for (int w = EX_LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}

/* sum of x[0..n) */
static inline __attribute__((always_inline)) float ex_sum(const float *x, int n) {
    float acc[EX_LANES] = {0};
    int i = 0;
    for (; i + EX_LANES <= n; i += EX_LANES)
        for (int j = 0; j < EX_LANES; j++) acc[j] += x[i + j];
    for (int j = 0; i + j < n; j++) acc[j] += x[i + j];
    return ex_lanes_sum(acc);
}

/* sum of (x[i] - m)^2 over [0, n) */
static inline __attribute__((always_inline)) float ex_sumsq_dev(const float *x, float m, int n) {
    float acc[EX_LANES] = {0};
    int i = 0;
    for (; i + EX_LANES <= n; i += EX_LANES)
        for (int j = 0; j < EX_LANES; j++) {
            float d = x[i + j] - m;
            acc[j] += d * d;
        }
    for (int j = 0; i + j < n; j++) {
        float d = x[i + j] - m;
        acc[j] += d * d;
    }
    return ex_lanes_sum(acc);
}

/* sum of a[i] * b[i] over [0, n), each lane an fmaf chain */
static inline __attribute__((always_inline)) float ex_dot(const float *a, const float *b, int n) {
    float acc[EX_LANES] = {0};
    int i = 0;
    for (; i + EX_LANES <= n; i += EX_LANES)
        for (int j = 0; j < EX_LANES; j++) acc[j] = fmaf(a[i + j], b[i + j], acc[j]);
    for (int j = 0; i + j < n; j++) acc[j] = fmaf(a[i + j], b[i + j], acc[j]);
    return ex_lanes_sum(acc);
}

/* max of x[0..n) (NaN-blind, as a > b ? a : b is; n >= 1). The maximum does not depend on the
 * order, but for the sign of a zero, so this one stays a plain loop. */
static inline __attribute__((always_inline)) float ex_max(const float *x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

/* The kernel variant to run: 2 = AVX-512, 1 = AVX2 + FMA, 0 = portable (pgemm.h). */
int pgemm_kernel_id(void);

#if defined(__x86_64__)
#define EX_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define EX_TARGET_AVX2   __attribute__((target("avx2,fma")))
/* void NAME(PARAMS) in three variants of BODY_FN (a static inline void function taking ARGS),
 * and NAME dispatching on pgemm_kernel_id(). */
#define EX_VARIANTS(name, params, body_fn, args)                                                   \
    EX_TARGET_AVX512 static void name##_v2 params {                                                \
        body_fn args;                                                                              \
    }                                                                                              \
    EX_TARGET_AVX2 static void name##_v1 params {                                                  \
        body_fn args;                                                                              \
    }                                                                                              \
    static void name##_v0 params {                                                                 \
        body_fn args;                                                                              \
    }                                                                                              \
    static void name params {                                                                      \
        switch (pgemm_kernel_id()) {                                                               \
        case 2:                                                                                    \
            name##_v2 args;                                                                        \
            break;                                                                                 \
        case 1:                                                                                    \
            name##_v1 args;                                                                        \
            break;                                                                                 \
        default:                                                                                   \
            name##_v0 args;                                                                        \
        }                                                                                          \
    }
#else
#define EX_VARIANTS(name, params, body_fn, args)                                                   \
    static void name params {                                                                      \
        body_fn args;                                                                              \
    }
#endif

#endif
