/*
 * sample.c - picking the next token from a row of logits (see sample.h).
 *
 * A pick runs a few linear passes over the V logits and never sorts them:
 *
 *   1. one pass checks for NaN / +Inf and finds the largest logit m;
 *   2. one vectorised pass of ex_expf writes w[i] = exp((logit[i] - m) / t), unnormalised,
 *      summed in double per block of SMP_BLOCK tokens (in 16 fixed lanes: exact.h, so a pick is
 *      the same on every machine);
 *   3. top-k and top-p each keep a prefix of the tokens in order of decreasing logit (ties: lower
 *      id first) without sorting (select_prefix()): a histogram of the logits' distance below m
 *      finds the bin holding the boundary, only the few tokens in that bin are narrowed down to
 *      the exact boundary, and one more pass collects the kept set, in ascending token id.
 *      top-k counts tokens, top-p weighs them by w;
 *   4. the draw u = rng_uniform53(seed, stream, counter) picks the token whose interval of the
 *      cumulative mass, in ascending token id over the kept set, holds u * mass: the block sums
 *      find the block, then a walk inside it finds the token.
 *
 * The order of the kept tokens is by id, not by probability: any fixed order gives the same
 * distribution, and this one leaves the pick unchanged by a truncation that keeps every token
 * (top_k = V, or a top_p the whole vocabulary is needed for).
 *
 * "Most probable" means the larger logit, which is the larger probability at any temperature;
 * comparing logits rather than the rounded float probabilities keeps two tokens whose
 * probabilities round to the same float in their true order.
 */
#include "nn/sample.h"

#include <math.h>
#include <string.h>

#include "base/err.h"
#include "base/rng.h"
#include "nn/exact.h"

/* Masses are summed in double per block of this many tokens; the draw finds its block from the
 * block sums and walks only inside that block. */
#define SMP_BLOCK 256

/* Histogram bins of select_prefix() and cut_exact(). */
#define SMP_BINS 2048

/* select_prefix()'s first level: bins per unit of logit (top-k) or of logit / t (top-p), so
 * the bins span 64 units below the largest logit: probabilities down to e^-64 of the largest. */
#define SMP_BINS_PER_UNIT 32.0f

/*
 * top-p keeps the smallest prefix whose mass reaches top_p * (1 - SMP_P_RTOL) of the total.
 * The probabilities are float expf values, so a prefix whose exact mass is top_p (0.5 + 0.3 for
 * top_p = 0.8) may sum to a hair below it; the slack keeps such a prefix a prefix, rather than
 * adding one more token by rounding. It is far below any top_p a user distinguishes.
 */
#define SMP_P_RTOL 1e-6

/* ------------------------------------------------------------------------------------------ */
/* Scratch layout */

typedef struct {
    double *hist;   /* SMP_BINS: selection histogram */
    double *bs;     /* blocks(V): block sums of the set being drawn from */
    float *w;       /* V: weights of the full vocabulary, or of the top-k set */
    float *wk;      /* V: weights of the top-p set */
    uint16_t *bins; /* V: select_prefix()'s first-level bins */
    int *ids;       /* V: the top-k set */
    int *ia, *ib;   /* V each: select_prefix()'s candidates; ia then holds the top-p set */
} smp_scratch_t;

static size_t align64(size_t x) {
    return (x + 63) & ~(size_t)63;
}

static int n_blocks(int n) {
    return (n + SMP_BLOCK - 1) / SMP_BLOCK;
}

/* The byte offsets of the scratch's arrays for V, in smp_scratch_t's order; returns the size. */
static size_t scratch_layout(int V, size_t o[8]) {
    const size_t v = (size_t)V;
    const size_t bytes[8] = {
        SMP_BINS * sizeof(double), (size_t)n_blocks(V) * sizeof(double),
        v * sizeof(float),         v * sizeof(float),
        v * sizeof(uint16_t),      v * sizeof(int),
        v * sizeof(int),           v * sizeof(int),
    };
    size_t off = 0;
    for (int i = 0; i < 8; i++) {
        o[i] = off;
        off = align64(off + bytes[i]);
    }
    return off;
}

/* The scratch's arrays for V at base, from its first 64-byte boundary on (the size reserves
 * room for that, so any pointer the caller has will do). */
static smp_scratch_t scratch_at(int V, void *base) {
    size_t o[8];
    scratch_layout(V, o);
    char *c = (char *)base + (64 - (uintptr_t)base % 64) % 64;
    return (smp_scratch_t){
        .hist = (double *)(void *)(c + o[0]),
        .bs = (double *)(void *)(c + o[1]),
        .w = (float *)(void *)(c + o[2]),
        .wk = (float *)(void *)(c + o[3]),
        .bins = (uint16_t *)(void *)(c + o[4]),
        .ids = (int *)(void *)(c + o[5]),
        .ia = (int *)(void *)(c + o[6]),
        .ib = (int *)(void *)(c + o[7]),
    };
}

size_t smp_scratch_size(int V) {
    size_t o[8];
    return V > 0 ? scratch_layout(V, o) + 63 : 0;
}

int smp_params_check(const smp_params_t *p) {
    if (!p) return rl_fail(RL_EINVAL, "sampling: NULL params");
    /* The negated comparisons also reject NaN. */
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return rl_fail(RL_EINVAL, "sampling: temperature %g must be finite and >= 0",
                       p->temperature);
    if (p->top_k < 0) return rl_fail(RL_EINVAL, "sampling: top_k %d must be >= 0", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return rl_fail(RL_EINVAL, "sampling: top_p %g must lie in (0, 1]", p->top_p);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Passes over the logits */

/* A key whose unsigned order is the float order of x (for non-NaN x; -0 and +0 share one). */
static inline uint32_t logit_key(float x) {
    uint32_t u;
    x += 0.0f; /* -0 + 0 = +0, so equal logits get equal keys */
    memcpy(&u, &x, sizeof u);
    return u ^ ((0u - (u >> 31)) | 0x80000000u);
}

/* The largest logit into *mx, or RL_ENONFINITE for a NaN or +Inf logit or no finite one. The
 * checks test bit patterns so that the loop vectorises without fast-math. Whether any logit is
 * finite is tested apart from the max: OpenMP lets a max reduction start its private copies at
 * -FLT_MAX rather than -inf, so an all -inf row need not come out as -inf. */
static int scan_max(const float *l, int V, const char *who, float *mx_out) {
    float mx = -INFINITY;
    uint32_t bad = 0, finite = 0;
#pragma omp simd reduction(max : mx) reduction(| : bad, finite)
    for (int i = 0; i < V; i++) {
        uint32_t b;
        memcpy(&b, &l[i], sizeof b);
        bad |= (uint32_t)((b & 0x7fffffffu) > 0x7f800000u) | (uint32_t)(b == 0x7f800000u);
        finite |= (uint32_t)((b & 0x7f800000u) != 0x7f800000u);
        mx = l[i] > mx ? l[i] : mx;
    }
    if (bad) {
        for (int i = 0; i < V; i++)
            if (isnan(l[i]) || l[i] == INFINITY)
                return rl_fail(RL_ENONFINITE, "%s: logit %d of %d is %g", who, i, V, l[i]);
    }
    if (!finite) return rl_fail(RL_ENONFINITE, "%s: all %d logits are -inf", who, V);
    *mx_out = mx;
    return 0;
}

/* sum_i exp(l[i] - mx): the normaliser of the model's own distribution. */
static inline void sum_exp_body(const float *l, int V, float mx, double *out) {
    double acc[EX_LANES] = {0};
    int i = 0;
    for (; i + EX_LANES <= V; i += EX_LANES)
        for (int j = 0; j < EX_LANES; j++) acc[j] += ex_expf(l[i + j] - mx);
    for (int j = 0; i + j < V; j++) acc[j] += ex_expf(l[i + j] - mx);
    *out = ex_lanes_sum64(acc);
}
EX_VARIANTS(sum_exp_v, (const float *l, int V, float mx, double *out), sum_exp_body,
            (l, V, mx, out))

static double sum_exp(const float *l, int V, float mx) {
    double s;
    sum_exp_v(l, V, mx, &s);
    return s;
}

/* The sum of a[lo..hi) in double, 16 fixed lanes. */
static inline __attribute__((always_inline)) double lanes_mass(const float *a, int lo, int hi) {
    double acc[EX_LANES] = {0};
    int i = lo;
    for (; i + EX_LANES <= hi; i += EX_LANES)
        for (int j = 0; j < EX_LANES; j++) acc[j] += a[i + j];
    for (int j = 0; i + j < hi; j++) acc[j] += a[i + j];
    return ex_lanes_sum64(acc);
}

/* w[i] = exp((l[i] - mx) / t) with block sums into bs; their sum into *total. Dividing by t
 * (not multiplying by 1/t) keeps l == mx at exactly 1 however small t is. */
static inline void exp_pass_body(const float *l, int V, float mx, float t, float *w, double *bs,
                                 double *total) {
    double sum = 0.0;
    for (int b = 0, lo = 0; lo < V; b++, lo += SMP_BLOCK) {
        const int hi = V - lo < SMP_BLOCK ? V : lo + SMP_BLOCK;
#pragma omp simd
        for (int i = lo; i < hi; i++) w[i] = ex_expf((l[i] - mx) / t);
        bs[b] = lanes_mass(w, lo, hi);
        sum += bs[b];
    }
    *total = sum;
}
EX_VARIANTS(exp_pass_v,
            (const float *l, int V, float mx, float t, float *w, double *bs, double *total),
            exp_pass_body, (l, V, mx, t, w, bs, total))

static double exp_pass(const float *l, int V, float mx, float t, float *w, double *bs) {
    double total;
    exp_pass_v(l, V, mx, t, w, bs, &total);
    return total;
}

/* Block sums of a[0..n) into bs; returns their sum. */
static double block_mass(const float *a, int n, double *bs) {
    double total = 0.0;
    for (int b = 0, lo = 0; lo < n; b++, lo += SMP_BLOCK) {
        const int hi = n - lo < SMP_BLOCK ? n : lo + SMP_BLOCK;
        bs[b] = lanes_mass(a, lo, hi);
        total += bs[b];
    }
    return total;
}

/* w[j] = exp((l[ids[j]] - mx) / t) for the n kept tokens. */
static inline void kept_exp_body(const float *l, const int *ids, int n, float mx, float t,
                                 float *w) {
#pragma omp simd
    for (int j = 0; j < n; j++) w[j] = ex_expf((l[ids[j]] - mx) / t);
}
EX_VARIANTS(kept_exp, (const float *l, const int *ids, int n, float mx, float t, float *w),
            kept_exp_body, (l, ids, n, mx, t, w))

/*
 * The position j whose interval [cum(j-1), cum(j)) of the cumulative mass of a[0..n) holds
 * `target` (0 < target < mass), using the block sums bs. Only a positive weight can hold it.
 * Should rounding leave target past the last interval, the last positive weight takes it.
 */
static int walk(const float *a, int n, const double *bs, double target) {
    const int nb = n_blocks(n);
    int b = 0;
    double acc = 0.0;
    while (b < nb - 1 && acc + bs[b] <= target) acc += bs[b++];
    const int lo = b * SMP_BLOCK, hi = n - lo < SMP_BLOCK ? n : lo + SMP_BLOCK;
    int last = -1;
    for (int j = lo; j < hi; j++) {
        if (a[j] > 0.0f) {
            last = j;
            acc += a[j];
            if (acc > target) return j;
        }
    }
    if (last >= 0) return last;
    for (int j = lo - 1; j >= 0; j--)
        if (a[j] > 0.0f) return j;
    return 0; /* not reached: every set holds its largest logit, of weight exp(0) = 1 */
}

/* ------------------------------------------------------------------------------------------ */
/* Selection of the most probable prefix */

/*
 * Sets of tokens: position j in [0, n) is token ids[j] (ids NULL: token j), ids ascending, with
 * weight w[j] (w NULL: every weight 1). The order that top-k and top-p take prefixes of is by
 * logit, descending, then by position (so by id), ascending.
 *
 * A cut marks the end of such a prefix: it keeps the positions whose logit key is above `key`,
 * and those at `key` up to position `pos`.
 */
typedef struct {
    uint32_t key;
    int pos;
} cut_t;

/* The weight of position j, and its logit's key. */
#define SET_W(w, j)        ((w) ? (double)(w)[j] : 1.0)
#define SET_KEY(l, ids, j) logit_key((l)[(ids) ? (ids)[j] : (j)])

/* select_prefix() skips over tokens it does not want in chunks of this many. */
#define SMP_CHUNK 64

/* Below this many candidates the exact cut sorts them instead of taking another radix level. */
#define SMP_SORT_MAX 64

/*
 * The cut of the prefix, among the positions cur[0..ncur) (ascending, ncur >= 1), whose weight
 * first reaches `need`. Radix levels over bits [21,32), [10,21) and [0,10) of the key narrow the
 * candidates in place (cur is clobbered) until few are left; those are sorted. If rounding leaves
 * need out of reach, everything of positive weight is kept. Uses hist (SMP_BINS).
 */
static cut_t cut_exact(const float *l, const int *ids, const float *w, int *cur, int ncur,
                       double need, double *hist) {
    static const int shift[3] = {21, 10, 0};
    static const uint32_t mask[3] = {0x7ff, 0x7ff, 0x3ff};
    for (int lev = 0; lev < 3 && ncur > SMP_SORT_MAX; lev++) {
        const int sh = shift[lev];
        const uint32_t mk = mask[lev];
        memset(hist, 0, (mk + 1) * sizeof *hist);
        for (int c = 0; c < ncur; c++)
            hist[(SET_KEY(l, ids, cur[c]) >> sh) & mk] += SET_W(w, cur[c]);
        /* The boundary bin: the first, from the top, where the running weight reaches need. */
        double acc = 0.0;
        int bb = -1, lowest = -1;
        for (int b = (int)mk; b >= 0; b--) {
            if (!(hist[b] > 0.0)) continue;
            lowest = b;
            if (acc + hist[b] >= need) {
                bb = b;
                break;
            }
            acc += hist[b];
        }
        if (bb >= 0) {
            need -= acc;
        } else {
            bb = lowest;
            need = INFINITY;
        }
        int m = 0;
        for (int c = 0; c < ncur; c++) {
            cur[m] = cur[c];
            m += ((SET_KEY(l, ids, cur[c]) >> sh) & mk) == (uint32_t)bb;
        }
        ncur = m;
    }
    /* Few enough (or one key left): sort by (key descending, position ascending) and count. */
    if (ncur > SMP_SORT_MAX) { /* all share one key: the order is by position already */
        double acc = 0.0;
        for (int c = 0; c < ncur; c++) {
            acc += SET_W(w, cur[c]);
            if (acc >= need) return (cut_t){SET_KEY(l, ids, cur[c]), cur[c]};
        }
        return (cut_t){SET_KEY(l, ids, cur[0]), cur[ncur - 1]};
    }
    uint64_t srt[SMP_SORT_MAX];
    for (int c = 0; c < ncur; c++) {
        const uint64_t e = (uint64_t)SET_KEY(l, ids, cur[c]) << 32 | (uint32_t) ~(uint32_t)cur[c];
        int d = c;
        for (; d > 0 && srt[d - 1] < e; d--) srt[d] = srt[d - 1];
        srt[d] = e;
    }
    int last = ncur - 1;
    double acc = 0.0;
    for (int c = 0; c < ncur; c++) {
        acc += SET_W(w, (int)~(uint32_t)srt[c]);
        if (acc >= need) {
            last = c;
            break;
        }
    }
    return (cut_t){(uint32_t)(srt[last] >> 32), (int)~(uint32_t)srt[last]};
}

/* Whether any of bins[lo..hi) is bb (upto 0) or at most bb (upto 1). */
static int chunk_has(const uint16_t *bins, int lo, int hi, int bb, int upto) {
    int any = 0;
    if (upto) {
#pragma omp simd reduction(| : any)
        for (int j = lo; j < hi; j++) any |= bins[j] <= bb;
    } else {
#pragma omp simd reduction(| : any)
        for (int j = lo; j < hi; j++) any |= bins[j] == bb;
    }
    return any;
}

/*
 * Keeps the prefix of the set (ids, w, n) whose weight first reaches need (> 0): with unit
 * weights and need = k that is top-k; with probabilities it is top-p. Writes the kept tokens' ids
 * to ids_out and, when the set has weights, their weights to w_out, in set order; returns how
 * many. ids_out may be s->ia or s->ib, not ids.
 *
 * A first level bins the tokens by their logit's distance below the largest, mx - l, times
 * `scale` (SMP_BINS bins, the last one open-ended): a monotone map, so the bins are the prefix
 * order coarsened, and unlike bits of the key they spread over the range where logits actually
 * lie. A pass over the bins finds the one where the running weight reaches need; cut_exact()
 * settles the few tokens in it, and one more pass writes out the kept set.
 */
static int select_prefix(const float *l, const int *ids, const float *w, int n, double need,
                         float mx, float scale, const smp_scratch_t *s, int *ids_out,
                         float *w_out) {
    uint16_t *bins = s->bins;
    double *hist = s->hist;
    const float top = (float)(SMP_BINS - 1);
    if (ids) {
#pragma omp simd
        for (int j = 0; j < n; j++) {
            const float d = (mx - l[ids[j]]) * scale; /* -inf logits: +inf, the last bin */
            bins[j] = (uint16_t)(d < top ? (int)d : SMP_BINS - 1);
        }
    } else {
#pragma omp simd
        for (int j = 0; j < n; j++) {
            const float d = (mx - l[j]) * scale;
            bins[j] = (uint16_t)(d < top ? (int)d : SMP_BINS - 1);
        }
    }
    memset(hist, 0, SMP_BINS * sizeof *hist);
    if (w)
        for (int j = 0; j < n; j++) hist[bins[j]] += (double)w[j];
    else
        for (int j = 0; j < n; j++) hist[bins[j]] += 1.0;
    double acc = 0.0;
    int bb = -1, lowest = -1;
    for (int b = 0; b < SMP_BINS; b++) {
        if (!(hist[b] > 0.0)) continue;
        lowest = b;
        if (acc + hist[b] >= need) {
            bb = b;
            break;
        }
        acc += hist[b];
    }
    /* lowest >= 0: the set holds its largest logit, of weight 1, and need > 0 */
    if (bb >= 0) {
        need -= acc;
    } else { /* rounding left need out of reach: keep everything of positive weight */
        bb = lowest;
        need = INFINITY;
    }

    /* How many tokens are in the boundary bin, and in or above it. When they are few, the
     * loops below skip the chunks without any (a vectorised test per chunk); otherwise they
     * store every token and advance only over the wanted ones, with no branch to mispredict. */
    int n_in = 0, n_upto = 0;
#pragma omp simd reduction(+ : n_in, n_upto)
    for (int j = 0; j < n; j++) {
        n_in += bins[j] == bb;
        n_upto += bins[j] <= bb;
    }
    const int few_in = n_in <= n / 8, few_upto = n_upto <= n / 8;

    /* The boundary bin's tokens, narrowed down to the exact cut on a copy. */
    int *cand = s->ia, nc = 0;
    for (int lo = 0; lo < n; lo += SMP_CHUNK) {
        const int hi = n - lo < SMP_CHUNK ? n : lo + SMP_CHUNK;
        if (few_in && !chunk_has(bins, lo, hi, bb, 0)) continue;
        for (int j = lo; j < hi; j++) {
            cand[nc] = j;
            nc += bins[j] == bb;
        }
    }
    memcpy(s->ib, cand, (size_t)nc * sizeof *cand);
    const cut_t cut = cut_exact(l, ids, w, s->ib, nc, need, hist);

    /* Everything above the boundary bin, and the boundary bin's tokens up to the cut. */
    int o = 0;
    for (int lo = 0; lo < n; lo += SMP_CHUNK) {
        const int hi = n - lo < SMP_CHUNK ? n : lo + SMP_CHUNK;
        if (few_upto && !chunk_has(bins, lo, hi, bb, 1)) continue;
        for (int j = lo; j < hi; j++) {
            const int b = bins[j];
            int keep = b < bb;
            if (b == bb) { /* rare: only the boundary bin's tokens */
                const uint32_t k = SET_KEY(l, ids, j);
                keep = (k > cut.key) | ((k == cut.key) & (j <= cut.pos));
            }
            ids_out[o] = ids ? ids[j] : j;
            if (w) w_out[o] = w[j];
            o += keep;
        }
    }
    return o;
}

/* ------------------------------------------------------------------------------------------ */
/* The sampling distribution */

/* The kept set to draw from: token ids[j] (ids NULL: token j) with weight w[j], block sums bs. */
typedef struct {
    float mx;         /* the largest logit */
    int argmax;       /* greedy: the pick */
    const int *ids;   /* NULL: position j is token j */
    const float *w;   /* unnormalised weights exp((logit - mx) / t) */
    const double *bs; /* block sums of w */
    int n;            /* tokens in the set */
    double mass;      /* sum of w */
    double full_mass; /* sum over the whole vocabulary at t = 1, or NAN if not computed */
} smp_set_t;

static int set_build(const float *l, int V, const smp_params_t *p, void *scratch, const char *who,
                     smp_set_t *set) {
    if (!l || V <= 0 || !scratch)
        return rl_fail(RL_EINVAL, "%s: NULL logits or scratch, or V = %d", who, V);
    int rc = smp_params_check(p);
    if (rc < 0) return rl_fail_ctx(rc, "%s", who);
    const smp_scratch_t s = scratch_at(V, scratch);
    memset(set, 0, sizeof *set);
    set->full_mass = NAN;
    rc = scan_max(l, V, who, &set->mx);
    if (rc < 0) return rc;
    const float mx = set->mx, t = p->temperature;

    if (t == 0.0f) {
        int i = 0;
        while (i < V - 1 && l[i] != mx) i++;
        set->argmax = i;
        return 0;
    }

    if (p->top_k > 0 && p->top_k < V) {
        const int n = select_prefix(l, NULL, NULL, V, (double)p->top_k, mx, SMP_BINS_PER_UNIT, &s,
                                    s.ids, NULL);
        kept_exp(l, s.ids, n, mx, t, s.w);
        set->ids = s.ids;
        set->n = n;
        set->mass = block_mass(s.w, n, s.bs);
    } else {
        set->ids = NULL;
        set->n = V;
        set->mass = exp_pass(l, V, mx, t, s.w, s.bs);
        if (t == 1.0f) set->full_mass = set->mass;
    }
    set->w = s.w;
    set->bs = s.bs;

    if (p->top_p < 1.0f) {
        const double need = (double)p->top_p * (1.0 - SMP_P_RTOL) * set->mass;
        float scale = SMP_BINS_PER_UNIT / t;
        if (!(scale <= 1e30f)) scale = 1e30f; /* a tiny t: keep 0 * scale = 0 for the largest */
        set->n = select_prefix(l, set->ids, set->w, set->n, need, mx, scale, &s, s.ia, s.wk);
        set->ids = s.ia;
        set->w = s.wk;
        set->mass = block_mass(s.wk, set->n, s.bs);
    }
    return 0;
}

int smp_pick(const float *logits, int V, const smp_params_t *p, uint64_t seed, uint64_t stream,
             uint64_t counter, void *scratch, smp_pick_t *out) {
    if (!out) return rl_fail(RL_EINVAL, "smp_pick: NULL out");
    smp_set_t set;
    int rc = set_build(logits, V, p, scratch, "smp_pick", &set);
    if (rc < 0) return rc;
    const float mx = set.mx;
    if (p->temperature == 0.0f) {
        out->token = set.argmax;
        out->logprob = 0.0f;
        out->logprob_model = (float)(-log(sum_exp(logits, V, mx)));
        return 0;
    }
    const float t = p->temperature;
    const double u = rng_uniform53(seed, stream, counter);
    const int j = walk(set.w, set.n, set.bs, u * set.mass);
    const int tok = set.ids ? set.ids[j] : j;
    const double full = isnan(set.full_mass) ? sum_exp(logits, V, mx) : set.full_mass;
    out->token = tok;
    /* log(w / mass) with w's own exponent, which is exact where expf is not. */
    out->logprob = (float)((double)((logits[tok] - mx) / t) - log(set.mass));
    out->logprob_model = (float)((double)(logits[tok] - mx) - log(full));
    return 0;
}

int smp_distribution(const float *logits, int V, const smp_params_t *p, void *scratch,
                     float *probs) {
    if (!probs) return rl_fail(RL_EINVAL, "smp_distribution: NULL probs");
    smp_set_t set;
    int rc = set_build(logits, V, p, scratch, "smp_distribution", &set);
    if (rc < 0) return rc;
    memset(probs, 0, (size_t)V * sizeof *probs);
    if (p->temperature == 0.0f) {
        probs[set.argmax] = 1.0f;
        return 0;
    }
    const double inv = 1.0 / set.mass;
    for (int j = 0; j < set.n; j++) probs[set.ids ? set.ids[j] : j] = (float)(set.w[j] * inv);
    return 0;
}
