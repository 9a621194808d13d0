/*
 * annot_pool.h - (prefix apool_) the assignment of prompts to human annotators in a run's
 * annotate stage: which prompt an annotator ranks next, leased for a while, so that every prompt
 * gets `overlap` rankings by distinct annotators and the load is spread.
 *
 * Pure bookkeeping with the clock passed in (no I/O), tested on its own like master_sched.h.
 * Annotators pull work: apool_next gives annotator a the prompt it holds a live lease on, or
 * leases it a new one: among the prompts a has no record of and that still need rankings (ranked
 * + leased to others < overlap), the one with the fewest ranked + leased, equal ones ordered by a
 * draw keyed by (seed, prompt key, annotator index), so that annotators working at once are
 * given different prompts. A lease ends with the annotator's record (apool_record: a ranking or
 * a skip), or at its deadline (apool_tick): the prompt goes back to the pool. An annotator never
 * gets a prompt it has a record of (a skip included: the prompt goes to somebody else).
 *
 *   apool_t p; apool_init(&p, n_prompts, keys, overlap, seed);
 *   a = apool_annot_add(&p);
 *   prompt = apool_next(&p, a, now_ms, lease_ms);   APOOL_WAIT / APOOL_DONE: nothing now / ever
 *   apool_record(&p, a, prompt, skip);  apool_tick(&p, now_ms);  apool_complete(&p);
 *   apool_free(&p);
 */
#ifndef RLHF_ANNOT_POOL_H
#define RLHF_ANNOT_POOL_H

#include <stdint.h>

#define APOOL_WAIT (-1) /* no prompt for this annotator now: the rest are leased to others */
#define APOOL_DONE (-2) /* none ever: every prompt it may rank is done or has been ranked by it */

typedef struct {
    uint8_t *seen;     /* n_prompts: 1 where this annotator has a record */
    int done, skipped; /* records: rankings and skips */
    int lease;         /* the leased prompt, or -1 */
    double lease_start_ms, lease_end_ms;
} apool_annot_t;

typedef struct {
    int n_prompts, overlap;
    uint64_t seed;
    uint64_t *keys; /* n_prompts prompt keys (annot_prompt_key) */
    int *ranked;    /* n_prompts: rankings (not skips) recorded */
    int *leased;    /* n_prompts: live leases */
    apool_annot_t *a;
    int n_annot, cap_annot;
    uint64_t n_leases, n_expired; /* leases handed out, leases that passed their deadline */
} apool_t;

/* Starts a pool of n_prompts prompts (keys copied), each wanting `overlap` (>= 1) rankings.
 * Returns 0, RL_EINVAL or RL_ENOMEM (p left freed). */
int apool_init(apool_t *p, int n_prompts, const uint64_t *keys, int overlap, uint64_t seed);

/* Frees p; safe on a zeroed struct. */
void apool_free(apool_t *p);

/* Adds an annotator; returns its index (0, 1, ... in the order added) or RL_ENOMEM. */
int apool_annot_add(apool_t *p);

/* The prompt annotator a works on now: its live lease, else a new lease ending at now +
 * lease_ms; or APOOL_WAIT, or APOOL_DONE (see above). */
int apool_next(apool_t *p, int a, double now_ms, double lease_ms);

/* Annotator a's record of prompt `prompt` (a ranking, or a skip): its lease on the prompt, if
 * any, ends. Returns 0, or RL_EINVAL when a already has a record of it (nothing changes) or an
 * index is out of range. */
int apool_record(apool_t *p, int a, int prompt, int skip);

/* Ends the leases past their deadline; returns how many. */
int apool_tick(apool_t *p, double now_ms);

/* 1 when every prompt has `overlap` rankings, else 0. */
int apool_complete(const apool_t *p);

/* What annotator a is asked to do, for its progress (done out of assigned): its fair share of
 * the rankings still wanted, ceil(n_prompts * overlap / n_annot), at least what it has done
 * (and its lease), at most the prompts it may rank. */
int apool_share(const apool_t *p, int a);

/* The order in which annotator a is shown the k completions of the prompt with key `key`: a
 * permutation of 0..k-1 into out, a function of (seed, key, a) alone. */
void apool_shown(uint64_t seed, uint64_t key, int a, int k, int *out);

#endif
