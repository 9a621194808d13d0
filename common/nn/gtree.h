/*
 * gtree.h - the fixed reduction of a training step's gradient: blocks, one canonical binary tree,
 * and a streaming accumulator that follows it. What makes a step's result the same bits whether
 * one process computes it or S learner shards share it.
 *
 * Blocks. A step's B rows (LM rows, or RM items) are cut into nb blocks, block j = rows
 * [B*j/nb, B*(j+1)/nb) (gtree_block). Each block's gradient is computed on its own, from a zeroed
 * arena, with the loss normalised by the whole step's count, so that a block's value never
 * depends on which other rows were computed next to it.
 *
 * The tree. Blocks are combined by one tree T(nb) of leaves 0..nb-1:
 *     T(1) = the leaf;   T(n) = T(h) over the first h leaves + T(n - h) over the rest,
 *     h = the largest power of two below n (gtree_split).
 * Every node of T(n) is itself the canonical tree of its leaves. A node's value is its children's
 * sum, element by element (one fp32 addition per element), except that a node whose leaves are
 * all empty (nothing to score) is empty and adds nothing: combine(a, b) = b if a is empty, a if
 * b is empty, a + b otherwise - the same rule at every node, so the result never depends on how
 * the work was split.
 *
 * Sharing it. gtree_cut cuts T(nb) top-down into k nodes (the node with the most leaves split
 * first, ties to the left): shard i computes the i-th node's value and shard 0 pushes those values
 * in order into its accumulator, which combines them as the tree does - the root's value is that
 * of one process computing every block.
 *
 * The accumulator (gtree_t) takes node values left to right - leaves it computes itself through a
 * callback (gtree_leaves) or values computed elsewhere (gtree_push) - and combines two adjacent
 * nodes as soon as they are siblings. It keeps at most ceil(log2 leaves) arenas of its own besides
 * the caller's work arena (the model's gradient arena, where leaves are computed and the result
 * is left). Each value carries GTREE_NSTAT doubles (losses, counts) combined by the same rule.
 *
 *   gtree_reset(&g, nb, m->grads_mem, m->num_params);
 *   gtree_leaves(&g, j0, j1, leaf_fn, ctx);            // my blocks
 *   gtree_push(&g, lo, hi, stats, empty, load, ctx);   // another shard's node (shard 0)
 *   gtree_take(&g, stats, &empty, &lo, &hi);           // the value in m->grads_mem
 */
#ifndef RLHF_GTREE_H
#define RLHF_GTREE_H

#include <stddef.h>

#define GTREE_NSTAT          6 /* doubles carried with each value */
#define GTREE_BLOCKS_DEFAULT 8 /* blocks per step when the setting is 0 */
#define GTREE_MAX_BLOCKS     (1 << 20)
#define GTREE_DEPTH          24 /* > log2(GTREE_MAX_BLOCKS) + 1 */

/* The blocks of a step of `rows` rows for a setting of `blocks` (0: GTREE_BLOCKS_DEFAULT):
 * capped at the rows (and at GTREE_MAX_BLOCKS), at least 1. */
int gtree_blocks(int blocks, int rows);

/* Rows [*r0, *r1) of block j of a step of B rows in nb blocks. */
void gtree_block(int B, int nb, int j, int *r0, int *r1);

/* The leaves of the left child of a node of n >= 2 leaves: the largest power of two below n. */
int gtree_split(int n);

/* Whether leaves [lo, hi) form a node of T(nb). */
int gtree_is_node(int nb, int lo, int hi);

/* Cuts T(nb) top-down into min(k, nb) nodes, left to right: node i is leaves [lo[i], hi[i]).
 * Returns the number of nodes. */
int gtree_cut(int nb, int k, int *lo, int *hi);

/* Loads a pushed value of n floats into dst: copied (add = 0) or added element by element
 * (add = 1). Returns 0 or RL_E*. */
typedef int (*gtree_load_fn)(void *ctx, float *dst, size_t n, int add);

/* Computes leaf j into the work arena (zeroing it first; the arena is ignored when *empty is set)
 * and its scalars into stats (GTREE_NSTAT, zeroed before the call). Returns 0 or RL_E*. */
typedef int (*gtree_leaf_fn)(void *ctx, int j, double *stats, int *empty);

typedef struct {
    int lo, hi;  /* leaves */
    int empty;   /* nothing to score under it: no value */
    int in_work; /* its value is in the work arena, else in arena[its index] */
    double stat[GTREE_NSTAT];
} gtree_node_t;

typedef struct {
    size_t n;                     /* floats per arena */
    float *arena[GTREE_DEPTH];    /* allocated on first use, kept */
    float *work;                  /* the caller's arena */
    int nb, next;                 /* the tree; the first leaf the next push must start at */
    gtree_node_t st[GTREE_DEPTH]; /* the nodes waiting for a sibling, left to right */
    int top;                      /* how many */
} gtree_t;

/* Starts a reduction over T(nb) (1 <= nb <= GTREE_MAX_BLOCKS) with values of n floats, work being
 * the caller's arena of n floats (leaves are computed there, the result is left there). Arenas
 * of an earlier reduction are kept when n is the same. g must be zeroed before the first call. */
void gtree_reset(gtree_t *g, int nb, float *work, size_t n);

/* Computes leaves [j0, j1) one by one with fn and pushes each. The first push of a reduction may
 * start at any leaf; later ones continue where the last ended. Returns 0 or RL_E* (from fn, or
 * RL_EINVAL: out of order, RL_ENOMEM). */
int gtree_leaves(gtree_t *g, int j0, int j1, gtree_leaf_fn fn, void *ctx);

/* Pushes the value of node [lo, hi) computed elsewhere: its scalars, whether it is empty, and
 * (when not) its arena through load. Returns 0 or RL_EINVAL (not a node of the tree, or not the
 * next one), RL_ENOMEM, or load's error. */
int gtree_push(gtree_t *g, int lo, int hi, const double *stats, int empty, gtree_load_fn load,
               void *ctx);

/* Ends the reduction: the pushed values must have combined into one node, whose leaves go to
 * *lo, *hi, its scalars to stats (may be NULL), its emptiness to *empty, and its value to the work
 * arena (zeros when empty). Returns 0 or RL_EINVAL (nothing pushed, or values that are not one
 * node yet). */
int gtree_take(gtree_t *g, double *stats, int *empty, int *lo, int *hi);

/* Frees the arenas; safe on a zeroed struct, and again. */
void gtree_free(gtree_t *g);

#endif
