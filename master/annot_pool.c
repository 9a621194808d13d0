/*
 * annot_pool.c - the assignment of prompts to human annotators, leased (see annot_pool.h).
 */
#include "annot_pool.h"

#include <stdlib.h>
#include <string.h>

#include "base/err.h"

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

int apool_init(apool_t *p, int n_prompts, const uint64_t *keys, int overlap, uint64_t seed) {
    memset(p, 0, sizeof *p);
    if (n_prompts < 0 || overlap < 1 || (n_prompts && !keys))
        return rl_fail(RL_EINVAL, "annotation pool: %d prompts, overlap %d", n_prompts, overlap);
    size_t n = n_prompts ? (size_t)n_prompts : 1;
    p->keys = malloc(n * sizeof *p->keys);
    p->ranked = calloc(n, sizeof *p->ranked);
    p->leased = calloc(n, sizeof *p->leased);
    if (!p->keys || !p->ranked || !p->leased) {
        apool_free(p);
        return rl_fail(RL_ENOMEM, "out of memory");
    }
    if (n_prompts) memcpy(p->keys, keys, (size_t)n_prompts * sizeof *keys);
    p->n_prompts = n_prompts;
    p->overlap = overlap;
    p->seed = seed;
    return 0;
}

void apool_free(apool_t *p) {
    for (int a = 0; a < p->n_annot; a++) free(p->a[a].seen);
    free(p->a);
    free(p->keys);
    free(p->ranked);
    free(p->leased);
    memset(p, 0, sizeof *p);
}

int apool_annot_add(apool_t *p) {
    if (p->n_annot == p->cap_annot) {
        int cap = p->cap_annot ? 2 * p->cap_annot : 8;
        apool_annot_t *na = realloc(p->a, (size_t)cap * sizeof *na);
        if (!na) return rl_fail(RL_ENOMEM, "out of memory");
        p->a = na;
        p->cap_annot = cap;
    }
    apool_annot_t *an = &p->a[p->n_annot];
    memset(an, 0, sizeof *an);
    an->lease = -1;
    an->seen = calloc(p->n_prompts ? (size_t)p->n_prompts : 1, 1);
    if (!an->seen) return rl_fail(RL_ENOMEM, "out of memory");
    return p->n_annot++;
}

static void lease_end(apool_t *p, apool_annot_t *an) {
    if (an->lease < 0) return;
    p->leased[an->lease]--;
    an->lease = -1;
}

int apool_next(apool_t *p, int a, double now_ms, double lease_ms) {
    if (a < 0 || a >= p->n_annot) return APOOL_DONE;
    apool_annot_t *an = &p->a[a];
    if (an->lease >= 0 && an->lease_end_ms > now_ms) return an->lease;
    lease_end(p, an);
    int best = -1, open = 0;
    uint64_t best_draw = 0;
    for (int i = 0; i < p->n_prompts; i++) {
        if (an->seen[i] || p->ranked[i] >= p->overlap) continue;
        open = 1; /* a prompt this annotator may still rank */
        int load = p->ranked[i] + p->leased[i];
        if (load >= p->overlap) continue;
        uint64_t draw = mix(p->seed ^ mix(p->keys[i] ^ mix((uint64_t)a + 1)));
        int bl = best < 0 ? 0 : p->ranked[best] + p->leased[best];
        if (best < 0 || load < bl || (load == bl && draw < best_draw)) best = i, best_draw = draw;
    }
    if (best < 0) return open ? APOOL_WAIT : APOOL_DONE;
    an->lease = best;
    an->lease_start_ms = now_ms;
    an->lease_end_ms = now_ms + lease_ms;
    p->leased[best]++;
    p->n_leases++;
    return best;
}

int apool_record(apool_t *p, int a, int prompt, int skip) {
    if (a < 0 || a >= p->n_annot || prompt < 0 || prompt >= p->n_prompts)
        return rl_fail(RL_EINVAL, "annotation pool: annotator %d, prompt %d out of range", a,
                       prompt);
    apool_annot_t *an = &p->a[a];
    if (an->seen[prompt])
        return rl_fail(RL_EINVAL, "annotation pool: annotator %d has a record of prompt %d", a,
                       prompt);
    if (an->lease == prompt) lease_end(p, an);
    an->seen[prompt] = 1;
    if (skip)
        an->skipped++;
    else
        an->done++, p->ranked[prompt]++;
    return 0;
}

int apool_tick(apool_t *p, double now_ms) {
    int n = 0;
    for (int a = 0; a < p->n_annot; a++) {
        apool_annot_t *an = &p->a[a];
        if (an->lease >= 0 && an->lease_end_ms <= now_ms) {
            lease_end(p, an);
            n++;
        }
    }
    p->n_expired += (uint64_t)n;
    return n;
}

int apool_complete(const apool_t *p) {
    for (int i = 0; i < p->n_prompts; i++)
        if (p->ranked[i] < p->overlap) return 0;
    return 1;
}

int apool_share(const apool_t *p, int a) {
    if (a < 0 || a >= p->n_annot) return 0;
    const apool_annot_t *an = &p->a[a];
    long want = ((long)p->n_prompts * p->overlap + p->n_annot - 1) / p->n_annot;
    long least = an->done + (an->lease >= 0), most = least;
    for (int i = 0; i < p->n_prompts; i++) /* the prompts it may still take */
        most += !an->seen[i] && i != an->lease && p->ranked[i] < p->overlap;
    return (int)(want < least ? least : want > most ? most : want);
}

void apool_shown(uint64_t seed, uint64_t key, int a, int k, int *out) {
    for (int i = 0; i < k; i++) out[i] = i;
    uint64_t s = mix(seed ^ mix(key ^ mix(~(uint64_t)a)));
    for (int i = k - 1; i > 0; i--) {
        s = mix(s);
        int j = (int)(s % (uint64_t)(i + 1));
        int t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}
