/*
 * rank.h - aggregating K-way rankings from several annotators: consensus, agreement
 * statistics, and the C(K,2) preference pairs of a prompt (stage 1 of the pipeline).
 *
 * A ranking of K completions is given as levels: level[i] is the tie group of completion i,
 * 0 = best, equal levels = tied, -1 = not ranked (missing). Only the order of the levels
 * matters: {0, 5, 5, 9} and {0, 1, 1, 2} are the same ranking. A set of R rankings of the same
 * K completions is an R x K row-major array of levels (levels[r * K + i]). Rank values
 * (double) are fractional ranks (ties share the mean of the positions they span; lower =
 * better) with NAN for missing.
 *
 * Missing data. An annotator who ranked only k of the K completions contributes ranks 1..k
 * over the ones it ranked (it says nothing about the others, and is not taken to have put the
 * missing ones last). Every statistic below uses, per item or per pair, only the annotators
 * who ranked it; what happens when nobody did is stated per function.
 *
 * Ties. A tied group of t items at positions p+1..p+t gets the fractional rank p + (t+1)/2 for
 * each item (so every complete ranking's ranks sum to K(K+1)/2). Consensus mean ranks are
 * compared with a relative tolerance (rank_mean_cmp()), so that means that are equal as
 * rationals tie however they were rounded; rank_consensus() and rank_pairs() use that same
 * comparison, so a pair is emitted exactly when its two consensus levels differ. Two different
 * means of at most R annotators' half-integer ranks differ by at least 1 / (2 R^2), more than
 * the tolerance (at most K * RANK_MEAN_RTOL) whenever R^2 K < 5e8 (R < 7000 for K = 10), so
 * the tolerance never merges means that truly differ.
 *
 * Every function is O(R K^2) or better for one prompt, allocates nothing (except
 * rank_kripp_alpha()) and is thread-safe.
 */
#ifndef RLHF_RANK_H
#define RLHF_RANK_H

#include <stddef.h>

/* The relative tolerance under which two mean ranks count as equal (see rank_mean_cmp()). */
#define RANK_MEAN_RTOL 1e-9

/*
 * Compares two mean ranks: -1 if a is better (smaller), +1 if b is, 0 if they tie, i.e.
 * |a - b| <= RANK_MEAN_RTOL * max(|a|, |b|). NANs compare equal to each other and after every
 * number (a missing item is never better than a ranked one).
 */
int rank_mean_cmp(double a, double b);

/* Fractional ranks of one ranking: ranks[i] in [1, k] where k is the number of ranked items
 * (level >= 0), ties averaged; NAN where level[i] < 0. level and ranks are K long, K >= 0. */
void rank_fractional(const int *level, int K, double *ranks);

/*
 * Consensus of R rankings (R x K levels) by mean fractional rank (Borda): mean_rank[i] is the
 * mean of rank_fractional() of i over the annotators that ranked i (NAN if none did).
 * consensus_level[i] is the resulting dense tie group: 0 = best mean, then 1, 2, ... with no
 * gaps; items whose means tie (rank_mean_cmp() == 0 against the group's smallest mean) share a
 * level; -1 if nobody ranked i. Returns 0, or RL_EINVAL for R < 1, K < 2, a NULL array or a
 * level below -1.
 */
int rank_consensus(const int *levels, int R, int K, double *mean_rank, int *consensus_level);

/*
 * Kendall's coefficient of concordance W of R complete rankings of K items, with the
 * correction for ties: W = 12 S / (R^2 (K^3 - K) - R sum_r sum_groups (t^3 - t)), where S is
 * the sum over items of the squared deviation of the item's rank sum from its mean R(K+1)/2,
 * and t runs over the sizes of the tie groups of each ranking r. W is 1 for identical strict
 * rankings and 0 when the rank sums are all equal (two exactly reversed rankings). *w receives
 * the value; it is NAN when the denominator is 0 (every annotator tied every item). Returns 0,
 * or RL_EINVAL for R < 1, K < 2, a NULL pointer, or any missing item (level < 0): W is defined
 * for complete rankings only.
 */
int rank_kendall_w(const int *levels, int R, int K, double *w);

/*
 * Pairwise agreement between two rankings given as rank values (lower = better, NAN missing),
 * e.g. two annotators' rank_fractional() or one annotator's against the consensus mean ranks:
 * over item pairs i < j that both rank (all four values not NAN), a pair that either ranking
 * ties (rank_mean_cmp() == 0) goes to *tied; otherwise it is a strict pair (*strict += 1), and
 * *agree += 1 if both prefer the same item. *agree / *strict is the fraction of strict pairs
 * with the same preference. Counts are added to, not reset, so a caller sums them over prompts
 * and annotator pairs. Pointers must not be NULL; O(K^2).
 */
void rank_pair_agreement(const double *ra, const double *rb, int K, long *agree, long *strict,
                         long *tied);

typedef enum { RANK_NOMINAL, RANK_ORDINAL, RANK_INTERVAL } rank_metric_t;

/*
 * Krippendorff's alpha of a reliability matrix: values[u * n_coders + c] is coder c's value
 * for unit u, NAN when missing. Computed as in Krippendorff (2011), "Computing Krippendorff's
 * Alpha-Reliability": alpha = 1 - (n - 1) sum_ck o_ck d_ck / sum_ck n_c n_k d_ck, with o the
 * coincidence matrix (each ordered pair of values of unit u, from different coders, adds
 * 1 / (m_u - 1), m_u = the unit's number of values), n_c its marginals and n = sum_c n_c.
 * Units with fewer than two values are not pairable and are ignored entirely (also in n_c).
 * Metrics d_ck over the sorted distinct values: nominal 1 if c != k (values compared exactly),
 * else 0; interval (c - k)^2; ordinal (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2.
 * *alpha is 1 for perfect agreement, 0 for chance agreement, NAN when there is no disagreement
 * to expect (no pairable unit, or a single distinct value). Returns 0, RL_EINVAL (n_units < 1,
 * n_coders < 2, a NULL pointer, an unknown metric or an infinite value) or RL_ENOMEM.
 * O(n_units n_coders^2 + N log N) time, O(N + n_coders) memory for N pairable values.
 */
int rank_kripp_alpha(const double *values, int n_units, int n_coders, rank_metric_t metric,
                     double *alpha);

/* One preference pair: completion `chosen` preferred to `rejected`. */
typedef struct {
    int chosen, rejected;
    double margin; /* fraction of the annotators ranking both that agree with the order
                      (a tie counts half) */
} rank_pair_t;

/*
 * The preference pairs of one prompt from its R rankings and their consensus (mean_rank from
 * rank_consensus()): one pair per i < j, in that order (i ascending, then j), that the
 * consensus orders strictly (rank_mean_cmp() != 0), preferred (smaller mean) first. Left out:
 * pairs the consensus ties (a tie carries no preference), pairs with an item nobody ranked, and
 * pairs that no single annotator ranked both items of (no direct comparison to give a margin).
 * margin = (number of annotators ranking both who put chosen strictly first + 1/2 * number who
 * tied them) / number of annotators ranking both, in [0, 1]. It can be below 1/2 where the mean
 * rank and the pairwise majority disagree (possible with missing items or cyclic preferences);
 * a caller that wants only majority-backed pairs filters on it. out needs room for K(K-1)/2.
 * Returns the number of pairs, or RL_EINVAL for R < 1, K < 2, a NULL pointer or a level below -1.
 */
int rank_pairs(const int *levels, int R, int K, const double *mean_rank, rank_pair_t *out);

#endif
