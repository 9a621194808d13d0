/*
 * gtree.c - the canonical reduction tree of a step's gradient blocks and its streaming
 * accumulator (see gtree.h).
 */
#include "nn/gtree.h"

#include <stdlib.h>
#include <string.h>

#include "base/err.h"

/* Element-wise work below this many floats stays on one thread. */
#define GTREE_PAR_MIN (1 << 16)

int gtree_blocks(int blocks, int rows) {
    int nb = blocks > 0 ? blocks : GTREE_BLOCKS_DEFAULT;
    if (nb > rows) nb = rows;
    if (nb > GTREE_MAX_BLOCKS) nb = GTREE_MAX_BLOCKS;
    return nb < 1 ? 1 : nb;
}

void gtree_block(int B, int nb, int j, int *r0, int *r1) {
    *r0 = (int)((long)B * j / nb);
    *r1 = (int)((long)B * (j + 1) / nb);
}

int gtree_split(int n) {
    int h = 1;
    while (2 * h < n) h *= 2;
    return h;
}

int gtree_is_node(int nb, int lo, int hi) {
    if (lo < 0 || hi > nb || lo >= hi) return 0;
    for (int a = 0, b = nb;;) {
        if (a == lo && b == hi) return 1;
        if (b - a < 2) return 0;
        int mid = a + gtree_split(b - a);
        if (hi <= mid)
            b = mid;
        else if (lo >= mid)
            a = mid;
        else
            return 0;
    }
}

int gtree_cut(int nb, int k, int *lo, int *hi) {
    int n = 1;
    lo[0] = 0;
    hi[0] = nb;
    while (n < k) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (hi[i] - lo[i] > hi[best] - lo[best]) best = i; /* ties: the leftmost */
        int size = hi[best] - lo[best];
        if (size < 2) break; /* every node a leaf */
        memmove(lo + best + 1, lo + best, (size_t)(n - best) * sizeof *lo);
        memmove(hi + best + 1, hi + best, (size_t)(n - best) * sizeof *hi);
        hi[best] = lo[best + 1] = lo[best] + gtree_split(size);
        n++;
    }
    return n;
}

/* ---- the accumulator ------------------------------------------------------------------------ */

void gtree_reset(gtree_t *g, int nb, float *work, size_t n) {
    if (g->n != n) gtree_free(g);
    g->n = n;
    g->work = work;
    g->nb = nb;
    g->next = -1;
    g->top = 0;
}

void gtree_free(gtree_t *g) {
    for (int i = 0; i < GTREE_DEPTH; i++) {
        free(g->arena[i]);
        g->arena[i] = NULL;
    }
    g->n = 0;
    g->top = 0;
}

static float *arena_get(gtree_t *g, int i) {
    if (!g->arena[i] && !(g->arena[i] = malloc((g->n ? g->n : 1) * sizeof(float))))
        rl_fail(RL_ENOMEM, "gradient tree: an arena of %zu floats", g->n);
    return g->arena[i];
}

/* x += y, element by element (each element one fp32 addition: the same on any thread count). */
static void arena_add(float *x, const float *y, size_t n) {
#pragma omp parallel for schedule(static) if (n >= GTREE_PAR_MIN)
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* a's scalars combined with b's under the empty rule. */
static void stat_combine(double *a, int a_empty, const double *b, int b_empty) {
    for (int k = 0; k < GTREE_NSTAT; k++) a[k] = a_empty ? b[k] : b_empty ? a[k] : a[k] + b[k];
}

static int siblings(int nb, int alo, int ahi, int bhi) {
    return gtree_is_node(nb, alo, bhi) && alo + gtree_split(bhi - alo) == ahi;
}

/* Checks that [lo, hi) may be pushed next. */
static int push_check(gtree_t *g, int lo, int hi) {
    if (!gtree_is_node(g->nb, lo, hi))
        return rl_fail(RL_EINVAL, "gradient tree: blocks [%d, %d) are not a node of the tree of %d",
                       lo, hi, g->nb);
    if (g->next >= 0 && lo != g->next)
        return rl_fail(RL_EINVAL, "gradient tree: blocks [%d, %d) pushed, block %d expected", lo,
                       hi, g->next);
    if (g->top == GTREE_DEPTH)
        return rl_fail(RL_EINVAL, "gradient tree: more than %d nodes waiting", GTREE_DEPTH);
    return 0;
}

/* Combines the two top nodes while they are siblings. At most one node's value is in the work
 * arena (the last leaf computed, until the work arena is needed again). */
static void settle(gtree_t *g) {
    while (g->top >= 2) {
        gtree_node_t *a = &g->st[g->top - 2], *b = &g->st[g->top - 1];
        if (!siblings(g->nb, a->lo, a->hi, b->hi)) break;
        stat_combine(a->stat, a->empty, b->stat, b->empty);
        if (!b->empty && a->empty) { /* a takes b's value where it is */
            a->in_work = b->in_work;
            if (!b->in_work) {
                float *t = g->arena[g->top - 2];
                g->arena[g->top - 2] = g->arena[g->top - 1];
                g->arena[g->top - 1] = t;
            }
        } else if (!b->empty) {
            arena_add(a->in_work ? g->work : g->arena[g->top - 2],
                      b->in_work ? g->work : g->arena[g->top - 1], g->n);
        }
        a->empty = a->empty && b->empty;
        a->hi = b->hi;
        g->top--;
    }
}

/* The work arena is about to be overwritten: a value there moves to its node's own arena. */
static int spill(gtree_t *g) {
    for (int i = 0; i < g->top; i++) {
        gtree_node_t *t = &g->st[i];
        if (!t->in_work) continue;
        t->in_work = 0;
        if (t->empty) continue;
        float *x = arena_get(g, i);
        if (!x) return RL_ENOMEM;
        memcpy(x, g->work, g->n * sizeof(float));
    }
    return 0;
}

int gtree_leaves(gtree_t *g, int j0, int j1, gtree_leaf_fn fn, void *ctx) {
    for (int j = j0; j < j1; j++) {
        int rc = push_check(g, j, j + 1), empty = 0;
        if (rc == 0) rc = spill(g);
        double stat[GTREE_NSTAT] = {0};
        if (rc == 0) rc = fn(ctx, j, stat, &empty);
        if (rc < 0) return rc;
        gtree_node_t *t = g->top ? &g->st[g->top - 1] : NULL;
        if (t && siblings(g->nb, t->lo, t->hi, j + 1)) {
            /* nothing is in the work arena (spilled) but the leaf: add it into the top */
            stat_combine(t->stat, t->empty, stat, empty);
            if (!empty && t->empty)
                t->in_work = 1;
            else if (!empty)
                arena_add(g->arena[g->top - 1], g->work, g->n);
            t->empty = t->empty && empty;
            t->hi = j + 1;
            settle(g);
        } else {
            t = &g->st[g->top++];
            *t = (gtree_node_t){j, j + 1, empty, !empty, {0}};
            memcpy(t->stat, stat, sizeof stat);
        }
        g->next = j + 1;
    }
    return 0;
}

int gtree_push(gtree_t *g, int lo, int hi, const double *stats, int empty, gtree_load_fn load,
               void *ctx) {
    int rc = push_check(g, lo, hi);
    if (rc < 0) return rc;
    gtree_node_t *t = g->top ? &g->st[g->top - 1] : NULL;
    if (t && siblings(g->nb, t->lo, t->hi, hi)) {
        if (!empty) { /* into the top's value, wherever it is */
            float *x = t->in_work ? g->work : arena_get(g, g->top - 1);
            if (!x) return RL_ENOMEM;
            if ((rc = load(ctx, x, g->n, !t->empty)) < 0) return rc;
        }
        stat_combine(t->stat, t->empty, stats, empty);
        t->empty = t->empty && empty;
        t->hi = hi;
        settle(g);
    } else {
        float *x = empty ? NULL : arena_get(g, g->top);
        if (!empty && !x) return RL_ENOMEM;
        if (x && (rc = load(ctx, x, g->n, 0)) < 0) return rc;
        t = &g->st[g->top++];
        *t = (gtree_node_t){lo, hi, empty, 0, {0}};
        memcpy(t->stat, stats, sizeof t->stat);
    }
    g->next = hi;
    return 0;
}

int gtree_take(gtree_t *g, double *stats, int *empty, int *lo, int *hi) {
    if (g->top != 1)
        return rl_fail(RL_EINVAL, "gradient tree: %d values that do not form one node", g->top);
    gtree_node_t *t = &g->st[0];
    if (t->empty)
        memset(g->work, 0, g->n * sizeof(float));
    else if (!t->in_work)
        memcpy(g->work, g->arena[0], g->n * sizeof(float));
    if (stats) memcpy(stats, t->stat, sizeof t->stat);
    *empty = t->empty;
    *lo = t->lo;
    *hi = t->hi;
    g->top = 0;
    g->next = -1;
    return 0;
}
