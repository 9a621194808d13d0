/*
 * rank.h - aggregating K-way rankings from several annotators: consensus, agreement
 * statistics, and the C(K,2) preference pairs of a prompt.
 *
 * A ranking of K completions is given as levels: level[i] is the tie group of completion i,
 * 0 = best, equal levels = tied, -1 = not ranked (missing). A set of R rankings of the same K
 * completions is an R x K row-major array of levels. Rank values (double) are fractional ranks
 * 1..K (ties share the mean of the positions they span; lower = better) with NAN for missing.
 */
#ifndef RLHF_RANK_H
#define RLHF_RANK_H

#include <stddef.h>

/* Fractional ranks of one ranking: ranks[i] in [1, k] where k is the number of ranked items,
 * ties averaged; NAN where level[i] < 0. */
void rank_fractional(const int *level, int K, double *ranks);

/*
 * Consensus of R rankings (R x K levels) by mean fractional rank (Borda): mean_rank[i] is the
 * mean over annotators that ranked i (NAN if none did); consensus_level[i] the resulting tie
 * groups (equal means tie; -1 if nobody ranked i). Returns 0 or RL_EINVAL.
 */
int rank_consensus(const int *levels, int R, int K, double *mean_rank, int *consensus_level);

/*
 * Kendall's coefficient of concordance W of R complete rankings of K items, with the
 * correction for ties (W = 12 S / (R^2 (K^3 - K) - R sum_j (t_j^3 - t_j))). Rankings with a
 * missing item are not allowed (RL_EINVAL). W = 1 when the denominator is 0 (every annotator
 * tied everything) is not defined: returns NAN then. *w receives the value.
 */
int rank_kendall_w(const int *levels, int R, int K, double *w);

/*
 * Pairwise agreement between two rankings given as rank values (lower = better, NAN missing):
 * over item pairs both rank, counts pairs where both state a strict preference (*strict) and
 * where those preferences agree (*agree); pairs one or both tie go to *tied. Counts are added
 * to, not reset, so a caller sums them over prompts and annotator pairs.
 */
void rank_pair_agreement(const double *ra, const double *rb, int K, long *agree, long *strict,
                         long *tied);

typedef enum { RANK_NOMINAL, RANK_ORDINAL, RANK_INTERVAL } rank_metric_t;

/*
 * Krippendorff's alpha of a reliability matrix: values[u * n_coders + c] is coder c's value
 * for unit u, NAN when missing. Units with fewer than two values are not pairable and are
 * ignored. Ordinal uses the rank-based distance over the observed value frequencies. *alpha
 * gets NAN when there is no disagreement to expect (a single distinct value). Returns 0,
 * RL_EINVAL or RL_ENOMEM.
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
 * rank_consensus): one pair per i < j that the consensus orders strictly, preferred first; pairs
 * the consensus ties are left out (documented policy: a tie carries no preference). out needs
 * room for K(K-1)/2. Returns the number of pairs.
 */
int rank_pairs(const int *levels, int R, int K, const double *mean_rank, rank_pair_t *out);

#endif
