/*
 * adamw.c - the AdamW optimizer, global gradient-norm clipping and learning-rate schedules
 * (see adamw.h).
 *
 * A training step is adamw_clip() (one read pass over the gradients, plus a write pass only when
 * clipping) followed by adamw_step() (one check pass reading the gradients, then one fused pass
 * that reads g, m, v, p and writes m, v, p). Every pass is memory-bound, so the loops are plain
 * element-wise float arithmetic that the compiler vectorises, split statically over the OpenMP
 * team. Each element's update depends only on that element, and the norm is summed over a fixed
 * set of chunks in a fixed order, each in 16 fixed lanes, so results are bit-identical for any
 * thread count and instruction set. The cosine schedule's cos is glibc's, which picks its code
 * per CPU: the same on every CPU with FMA (x86-64 since 2013), the machines this targets.
 */
#include "nn/adamw.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "nn/exact.h"

/* Below this many elements a pass runs on the calling thread: waking the team costs more. */
#define ADAMW_PAR_MIN ((size_t)1 << 15)

/* The element-wise passes hand the OpenMP team blocks of this many elements, statically. */
#define ADAMW_BLOCK ((size_t)1 << 14)

/*
 * adamw_grad_norm() sums squares over this many contiguous chunks, each in its own double
 * accumulator, then adds the partial sums in chunk order. The chunking does not depend on the
 * thread count, so neither does the norm (a plain OpenMP reduction would combine per-thread
 * partial sums whose boundaries move with the team size).
 */
#define ADAMW_NORM_CHUNKS 256

int adamw_init(adamw_t *o, size_t n, float beta1, float beta2, float eps, float weight_decay) {
    if (!o) return rl_fail(RL_EINVAL, "adamw_init: NULL optimizer");
    memset(o, 0, sizeof *o);
    if (n == 0) return rl_fail(RL_EINVAL, "adamw_init: no parameters");
    if (n > SIZE_MAX / (2 * sizeof(float)))
        return rl_fail(RL_EINVAL, "adamw_init: %zu parameters overflow the moment arena", n);
    /* The negated comparisons also reject NaN. */
    if (!(beta1 >= 0.0f && beta1 < 1.0f) || !(beta2 >= 0.0f && beta2 < 1.0f))
        return rl_fail(RL_EINVAL, "adamw_init: betas (%g, %g) must lie in [0, 1)", beta1, beta2);
    if (!(eps > 0.0f) || !isfinite(eps))
        return rl_fail(RL_EINVAL, "adamw_init: eps %g must be finite and > 0", eps);
    if (!(weight_decay >= 0.0f) || !isfinite(weight_decay))
        return rl_fail(RL_EINVAL, "adamw_init: weight decay %g must be finite and >= 0",
                       weight_decay);

    /* calloc: the pages are zero-filled lazily, so the first adamw_step() touches them from the
     * threads that will keep using them. */
    float *moments = calloc(2 * n, sizeof *moments);
    if (!moments)
        return rl_fail(RL_ENOMEM, "adamw_init: moments for %zu parameters (%zu bytes)", n,
                       2 * n * sizeof *moments);
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->weight_decay = weight_decay;
    o->n = n;
    o->moments = moments;
    o->m = moments;
    o->v = moments + n;
    o->t = 0;
    return 0;
}

void adamw_free(adamw_t *o) {
    if (!o) return;
    free(o->moments);
    memset(o, 0, sizeof *o);
}

/* Checks that groups[0..n_groups) tile [0, n) in order. */
static int groups_check(const adamw_group_t *groups, int n_groups, size_t n) {
    if (n_groups < 0) return rl_fail(RL_EINVAL, "adamw_step: %d groups", n_groups);
    if (n_groups > 0 && !groups) return rl_fail(RL_EINVAL, "adamw_step: NULL groups");
    size_t end = 0;
    for (int i = 0; i < n_groups; i++) {
        const adamw_group_t *gr = &groups[i];
        if (gr->offset != end)
            return rl_fail(RL_EINVAL, "adamw_step: group %d starts at %zu, expected %zu", i,
                           gr->offset, end);
        if (gr->len > n - end)
            return rl_fail(RL_EINVAL, "adamw_step: group %d [%zu, +%zu) runs past %zu params", i,
                           gr->offset, gr->len, n);
        end += gr->len;
    }
    if (end != n)
        return rl_fail(RL_EINVAL, "adamw_step: groups cover [0, %zu) of %zu params", end, n);
    return 0;
}

/* Non-zero if any of g[0..n) is NaN or Inf. Tests the exponent bits as integers so that the OR
 * vectorises without fast-math. */
static uint32_t block_nonfinite(const float *restrict g, size_t n) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &g[i], sizeof bits);
        bad |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
    }
    return bad;
}

/* Whether any of g[0..n) is NaN or Inf: one parallel read pass. */
static int any_nonfinite(const float *g, size_t n) {
    const size_t n_blocks = (n + ADAMW_BLOCK - 1) / ADAMW_BLOCK;
    uint32_t bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (n >= ADAMW_PAR_MIN)
    for (size_t b = 0; b < n_blocks; b++) {
        const size_t lo = b * ADAMW_BLOCK;
        bad |= block_nonfinite(g + lo, n - lo < ADAMW_BLOCK ? n - lo : ADAMW_BLOCK);
    }
    return bad != 0;
}

/* b^t by squaring in double: the same bits on every machine (libm's pow is not correctly
 * rounded, and glibc picks its implementation per CPU). */
static double pow_exact(float b, long t) {
    double r = 1.0, x = b;
    for (; t > 0; t >>= 1) {
        if (t & 1) r *= x;
        x *= x;
    }
    return r;
}

/* The per-step constants of the update, bias corrections folded in. */
typedef struct {
    float b1, b2, omb1, omb2; /* beta1, beta2, 1-beta1, 1-beta2 */
    float step_size;          /* lr / (1 - beta1^t) */
    float inv_sqrt_bc2;       /* 1 / sqrt(1 - beta2^t) */
    float eps;
    float grad_scale; /* clipping factor applied to each gradient as it is read */
} step_coef_t;

/*
 * The fused update of n elements: reads g, m, v, p once and writes m, v, p once. `wd` is lr*wd
 * for a decay group and 0 otherwise (then the term is an exact +0, so one body serves both).
 *
 * The loop vectorises only when sqrtf() may become the sqrt instruction, i.e. when the build
 * passes -fno-math-errno (the compiler then predefines __NO_MATH_ERRNO__). Under the default
 * -fmath-errno, GCC and clang keep a libm call on the path for a negative argument (to set
 * errno), the loop stays scalar and adamw_step() turns compute-bound and about 3-4x slower.
 * -fno-math-errno is not fast-math: NaN and Inf behave exactly as before.
 */
static void step_block(float *restrict p, float *restrict m, float *restrict v,
                       const float *restrict g, size_t n, const step_coef_t *c, float wd) {
    const float b1 = c->b1, b2 = c->b2, omb1 = c->omb1, omb2 = c->omb2;
    const float step_size = c->step_size, inv_sqrt_bc2 = c->inv_sqrt_bc2, eps = c->eps;
    const float gs = c->grad_scale;
    for (size_t i = 0; i < n; i++) {
        const float gi = g[i] * gs;
        const float mi = b1 * m[i] + omb1 * gi;
        const float vi = b2 * v[i] + omb2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        /* lr * mh / (sqrt(vh) + eps) = (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps) */
        const float pi = p[i];
        p[i] = pi - (step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps) + wd * pi);
    }
}

/*
 * Non-finite gradients: the contract leaves the parameters and moments untouched when any
 * gradient is NaN/Inf, and a fused pass cannot promise that (a NaN found late in the pass would
 * come after earlier elements were already written, and an update cannot be undone exactly). So
 * the step first reads the gradients once in a parallel check pass: 4 bytes more per parameter
 * on top of the fused pass's 28 (about 14%), which keeps the guarantee for callers that skipped
 * adamw_clip(). The fused pass then needs no check of its own.
 */
int adamw_step(adamw_t *o, float *params, const float *grads, const adamw_group_t *groups,
               int n_groups, float lr) {
    return adamw_step_scaled(o, params, grads, groups, n_groups, lr, 1.0f);
}

int adamw_step_scaled(adamw_t *o, float *params, const float *grads, const adamw_group_t *groups,
                      int n_groups, float lr, float grad_scale) {
    if (!o || !o->moments) return rl_fail(RL_EINVAL, "adamw_step: optimizer not initialised");
    if (!params || !grads) return rl_fail(RL_EINVAL, "adamw_step: NULL params or grads");
    if (!isfinite(lr)) return rl_fail(RL_EINVAL, "adamw_step: learning rate %g", lr);
    if (!isfinite(grad_scale))
        return rl_fail(RL_EINVAL, "adamw_step: gradient scale %g", grad_scale);
    int rc = groups_check(groups, n_groups, o->n);
    if (rc < 0) return rc;
    if (any_nonfinite(grads, o->n))
        return rl_fail(RL_ENONFINITE, "adamw_step: NaN or Inf gradient at step %ld", o->t + 1);

    long t = o->t + 1;
    /* Bias corrections in double (beta^t underflows gracefully towards 0). */
    const double bc1 = 1.0 - pow_exact(o->beta1, t);
    const double bc2 = 1.0 - pow_exact(o->beta2, t);
    const step_coef_t c = {
        .b1 = o->beta1,
        .b2 = o->beta2,
        .omb1 = 1.0f - o->beta1,
        .omb2 = 1.0f - o->beta2,
        .step_size = (float)((double)lr / bc1),
        .inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2)),
        .eps = o->eps,
        .grad_scale = grad_scale,
    };
    const float lr_wd = lr * o->weight_decay;

    /* One team for all groups; the groups are disjoint, so no barrier between them. Each
     * element's arithmetic is the same whichever thread runs it. */
#pragma omp parallel if (o->n >= ADAMW_PAR_MIN)
    for (int k = 0; k < n_groups; k++) {
        const size_t off = groups[k].offset, len = groups[k].len;
        const size_t n_blocks = (len + ADAMW_BLOCK - 1) / ADAMW_BLOCK;
        const float wd = groups[k].decay ? lr_wd : 0.0f;
#pragma omp for schedule(static) nowait
        for (size_t b = 0; b < n_blocks; b++) {
            const size_t lo = off + b * ADAMW_BLOCK;
            const size_t n =
                len - b * ADAMW_BLOCK < ADAMW_BLOCK ? len - b * ADAMW_BLOCK : ADAMW_BLOCK;
            step_block(params + lo, o->m + lo, o->v + lo, grads + lo, n, &c, wd);
        }
    }
    o->t = t;
    return 0;
}

/* Where chunk c of ADAMW_NORM_CHUNKS over n elements starts: floor(n * c / CHUNKS), computed
 * without overflowing n * c. */
static size_t chunk_start(size_t n, int c) {
    return n / ADAMW_NORM_CHUNKS * (size_t)c +
           n % ADAMW_NORM_CHUNKS * (size_t)c / ADAMW_NORM_CHUNKS;
}

double adamw_grad_norm(const float *g, size_t n) {
    if (n == 0) return 0.0;
    double partial[ADAMW_NORM_CHUNKS];
#pragma omp parallel for schedule(static) if (parallel : n >= ADAMW_PAR_MIN)
    for (int c = 0; c < ADAMW_NORM_CHUNKS; c++) {
        const size_t lo = chunk_start(n, c), hi = chunk_start(n, c + 1);
        /* 16 fixed lanes, then one fixed tree (exact.h): the same bits at any vector width */
        double acc[EX_LANES] = {0};
        size_t i = lo;
        for (; i + EX_LANES <= hi; i += EX_LANES)
            for (int j = 0; j < EX_LANES; j++) acc[j] += (double)g[i + j] * (double)g[i + j];
        for (int j = 0; i + j < hi; j++) acc[j] += (double)g[i + j] * (double)g[i + j];
        partial[c] = ex_lanes_sum64(acc);
    }
    /* A NaN or Inf element makes its partial sum, and so the total, NaN or Inf. */
    double sum = 0.0;
    for (int c = 0; c < ADAMW_NORM_CHUNKS; c++) sum += partial[c];
    return sqrt(sum);
}

int adamw_clip_scale(const float *g, size_t n, float max_norm, double *norm_out, float *scale_out) {
    double norm = adamw_grad_norm(g, n);
    if (norm_out) *norm_out = norm;
    *scale_out = 1.0f;
    if (!isfinite(norm))
        return rl_fail(RL_ENONFINITE, "gradient norm is %g over %zu elements", norm, n);
    if (max_norm > 0.0f && norm > (double)max_norm) *scale_out = (float)((double)max_norm / norm);
    return 0;
}

int adamw_clip(float *g, size_t n, float max_norm, double *norm_out) {
    float scale;
    int rc = adamw_clip_scale(g, n, max_norm, norm_out, &scale);
    if (rc < 0 || scale == 1.0f) return rc;
#pragma omp parallel for simd schedule(static) if (parallel : n >= ADAMW_PAR_MIN)
    for (size_t i = 0; i < n; i++) g[i] *= scale;
    return 0;
}

/* The linear warmup's factor at `step`, or 1 once warmup is over. */
static double warmup_factor(long warmup, long step) {
    if (warmup <= 0 || step >= warmup) return 1.0;
    return (double)(step + 1) / (double)warmup;
}

float adamw_sched_lr(const adamw_sched_t *s, long step) {
    if (step < 0) step = 0;
    switch (s->kind) {
    case ADAMW_SCHED_CONSTANT:
        return s->lr;
    case ADAMW_SCHED_WARMUP:
        return (float)((double)s->lr * warmup_factor(s->warmup, step));
    case ADAMW_SCHED_COSINE: {
        long warmup = s->warmup > 0 ? s->warmup : 0;
        if (step < warmup) return (float)((double)s->lr * warmup_factor(warmup, step));
        /* total <= warmup leaves no room to decay: min_lr straight after warmup. */
        double ratio =
            s->total > warmup ? (double)(step - warmup) / (double)(s->total - warmup) : 1.0;
        if (ratio > 1.0) ratio = 1.0;
        const double pi = 3.14159265358979323846;
        double coeff = 0.5 * (1.0 + cos(pi * ratio));
        return (float)((double)s->min_lr + coeff * ((double)s->lr - (double)s->min_lr));
    }
    }
    return s->lr;
}

int adamw_sched_parse(const char *name, adamw_sched_kind_t *kind) {
    static const struct {
        const char *name;
        adamw_sched_kind_t kind;
    } table[] = {
        {"constant", ADAMW_SCHED_CONSTANT},
        {"warmup", ADAMW_SCHED_WARMUP},
        {"cosine", ADAMW_SCHED_COSINE},
    };
    for (size_t i = 0; name && i < sizeof table / sizeof table[0]; i++) {
        if (strcmp(name, table[i].name) == 0) {
            *kind = table[i].kind;
            return 0;
        }
    }
    return rl_fail(RL_EINVAL,
                   "unknown learning-rate schedule '%s' (valid: constant, warmup, cosine)",
                   name ? name : "(null)");
}
