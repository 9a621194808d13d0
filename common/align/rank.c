/*
 * rank.c - ranking aggregation for the reward-model dataset (see rank.h).
 *
 * K is small (a handful of completions per prompt), so the ranking functions work by counting
 * rather than sorting: the fractional rank of item i in one ranking is
 *
 *     (number of ranked items with a smaller level) + (size of i's tie group + 1) / 2,
 *
 * an O(K) count that needs no scratch memory, which keeps every ranking function
 * allocation-free at O(R K^2) per prompt. Twice a fractional rank is an integer, so rank sums
 * and Kendall's S are exact in double; only the final divisions round.
 *
 * Krippendorff's alpha sorts the pairable values once to find the distinct values, then
 * accumulates the observed disagreement sum_ck o_ck d_ck unit by unit (each ordered pair of a
 * unit's values adds d / (m_u - 1), which is the coincidence matrix's entry summed against d
 * without storing the V x V matrix) and the expected one from the marginals n_c. The ordinal
 * distance sum_{g=c..k} n_g - (n_c + n_k)/2 equals M_k - M_c with the mid-cumulative
 * frequency M_g = sum_{h<g} n_h + n_g / 2, so ordinal alpha is interval alpha on M, and every
 * metric's expected disagreement is O(V) through the weighted variance:
 * sum_ck n_c n_k (x_c - x_k)^2 = 2 n sum_c n_c (x_c - mean)^2.
 */
#include "align/rank.h"

#include <math.h>
#include <stdlib.h>

#include "base/err.h"

int rank_mean_cmp(double a, double b) {
    const int na = isnan(a), nb = isnan(b);
    if (na || nb) return na - nb; /* NAN after every number, equal to NAN */
    const double scale = fmax(fabs(a), fabs(b));
    if (fabs(a - b) <= RANK_MEAN_RTOL * scale) return 0;
    return a < b ? -1 : 1;
}

/* Twice the fractional rank of item i (level[i] >= 0) among the ranked items of one ranking;
 * *tie gets the size of i's tie group. */
static int rank2_of(const int *level, int K, int i, int *tie) {
    const int li = level[i];
    int less = 0, eq = 0;
    for (int j = 0; j < K; j++) {
        const int lj = level[j];
        if (lj < 0) continue;
        less += lj < li;
        eq += lj == li;
    }
    if (tie) *tie = eq;
    return 2 * less + eq + 1;
}

void rank_fractional(const int *level, int K, double *ranks) {
    for (int i = 0; i < K; i++) ranks[i] = level[i] < 0 ? NAN : 0.5 * rank2_of(level, K, i, NULL);
}

/* Checks R x K levels: R >= 1, K >= 2, every level >= -1. */
static int check_levels(const char *fn, const int *levels, int R, int K) {
    if (!levels) return rl_fail(RL_EINVAL, "%s: levels is NULL", fn);
    if (R < 1 || K < 2)
        return rl_fail(RL_EINVAL, "%s: need R >= 1 rankings of K >= 2 items, got R=%d K=%d", fn, R,
                       K);
    for (int r = 0; r < R; r++)
        for (int i = 0; i < K; i++)
            if (levels[(size_t)r * K + i] < -1)
                return rl_fail(RL_EINVAL, "%s: ranking %d item %d: level %d (missing is -1)", fn, r,
                               i, levels[(size_t)r * K + i]);
    return 0;
}

int rank_consensus(const int *levels, int R, int K, double *mean_rank, int *consensus_level) {
    int rc = check_levels("rank_consensus", levels, R, K);
    if (rc < 0) return rc;
    if (!mean_rank || !consensus_level)
        return rl_fail(RL_EINVAL, "rank_consensus: output array is NULL");

    for (int i = 0; i < K; i++) {
        double sum2 = 0; /* sum of twice the ranks: an exact integer */
        int n = 0;
        for (int r = 0; r < R; r++) {
            const int *row = levels + (size_t)r * K;
            if (row[i] < 0) continue;
            sum2 += rank2_of(row, K, i, NULL);
            n++;
        }
        mean_rank[i] = n ? sum2 / (2.0 * n) : NAN;
        consensus_level[i] = n ? -2 : -1; /* -2: ranked, level not yet assigned */
    }

    /* Repeatedly take the best unassigned mean and give the next level to every unassigned
     * item tied with it: O(K * levels), no sort and no scratch. */
    for (int g = 0;; g++) {
        int best = -1;
        for (int i = 0; i < K; i++)
            if (consensus_level[i] == -2 && (best < 0 || mean_rank[i] < mean_rank[best])) best = i;
        if (best < 0) break;
        const double m0 = mean_rank[best];
        for (int i = 0; i < K; i++)
            if (consensus_level[i] == -2 && rank_mean_cmp(mean_rank[i], m0) == 0)
                consensus_level[i] = g;
    }
    return 0;
}

int rank_kendall_w(const int *levels, int R, int K, double *w) {
    int rc = check_levels("rank_kendall_w", levels, R, K);
    if (rc < 0) return rc;
    if (!w) return rl_fail(RL_EINVAL, "rank_kendall_w: w is NULL");
    for (int r = 0; r < R; r++)
        for (int i = 0; i < K; i++)
            if (levels[(size_t)r * K + i] < 0)
                return rl_fail(RL_EINVAL,
                               "rank_kendall_w: ranking %d leaves item %d unranked; W needs "
                               "complete rankings",
                               r, i);

    /* In units of twice the rank: item i's doubled rank sum deviates from its mean R(K+1) by
     * d_i, and S = sum_i (d_i / 2)^2. Each tie group of size t is met t times, once per member,
     * so sum_groups (t^3 - t) = sum_items (t_i^2 - 1). All exact integers in double. */
    double S4 = 0, T = 0;
    for (int i = 0; i < K; i++) {
        double sum2 = 0;
        for (int r = 0; r < R; r++) {
            int t;
            sum2 += rank2_of(levels + (size_t)r * K, K, i, &t);
            T += (double)t * t - 1;
        }
        const double d = sum2 - (double)R * (K + 1);
        S4 += d * d;
    }
    const double S = S4 / 4;
    const double den = (double)R * R * ((double)K * K * K - K) - (double)R * T;
    *w = den > 0 ? 12 * S / den : NAN;
    return 0;
}

void rank_pair_agreement(const double *ra, const double *rb, int K, long *agree, long *strict,
                         long *tied) {
    for (int i = 0; i < K; i++) {
        if (isnan(ra[i]) || isnan(rb[i])) continue;
        for (int j = i + 1; j < K; j++) {
            if (isnan(ra[j]) || isnan(rb[j])) continue;
            const int ca = rank_mean_cmp(ra[i], ra[j]), cb = rank_mean_cmp(rb[i], rb[j]);
            if (ca == 0 || cb == 0) {
                (*tied)++;
            } else {
                (*strict)++;
                *agree += ca == cb;
            }
        }
    }
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The index of v in the sorted distinct values u[0..V-1]; v is one of them. */
static int value_index(const double *u, int V, double v) {
    int lo = 0, hi = V - 1;
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (u[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int rank_kripp_alpha(const double *values, int n_units, int n_coders, rank_metric_t metric,
                     double *alpha) {
    if (!values || !alpha) return rl_fail(RL_EINVAL, "rank_kripp_alpha: NULL argument");
    if (n_units < 1 || n_coders < 2)
        return rl_fail(RL_EINVAL, "rank_kripp_alpha: need >= 1 unit and >= 2 coders, got %d x %d",
                       n_units, n_coders);
    if (metric != RANK_NOMINAL && metric != RANK_ORDINAL && metric != RANK_INTERVAL)
        return rl_fail(RL_EINVAL, "rank_kripp_alpha: unknown metric %d", (int)metric);

    /* Count the pairable values (units with m_u >= 2) and reject infinities. */
    size_t N = 0;
    for (int u = 0; u < n_units; u++) {
        const double *row = values + (size_t)u * n_coders;
        int m = 0;
        for (int c = 0; c < n_coders; c++) {
            if (isinf(row[c]))
                return rl_fail(RL_EINVAL, "rank_kripp_alpha: unit %d coder %d: infinite value", u,
                               c);
            m += !isnan(row[c]);
        }
        if (m >= 2) N += (size_t)m;
    }
    *alpha = NAN;
    if (N == 0) return 0;

    /* uniq: the sorted distinct pairable values (V of them); then x[g] the coordinate each
     * metric measures distance on, n[g] the marginal frequency; idx: one unit's value indices. */
    double *uniq = malloc(N * sizeof *uniq);
    double *n = malloc(N * sizeof *n);
    double *x = malloc(N * sizeof *x);
    int *idx = malloc((size_t)n_coders * sizeof *idx);
    int rc = 0;
    if (!uniq || !n || !x || !idx) {
        rc = rl_fail(RL_ENOMEM, "rank_kripp_alpha: %zu values", N);
        goto done;
    }
    size_t k = 0;
    for (int u = 0; u < n_units; u++) {
        const double *row = values + (size_t)u * n_coders;
        int m = 0;
        for (int c = 0; c < n_coders; c++) m += !isnan(row[c]);
        if (m < 2) continue;
        for (int c = 0; c < n_coders; c++)
            if (!isnan(row[c])) uniq[k++] = row[c];
    }
    qsort(uniq, N, sizeof *uniq, cmp_double);
    int V = 0;
    for (size_t i = 0; i < N; i++)
        if (V == 0 || uniq[i] != uniq[V - 1]) uniq[V++] = uniq[i];

    /* Marginals: n_c = sum_k o_ck is the number of pairable values equal to c, since a unit's
     * m_u values each take part in m_u - 1 ordered pairs weighted 1 / (m_u - 1). */
    for (int g = 0; g < V; g++) n[g] = 0;
    for (int u = 0; u < n_units; u++) {
        const double *row = values + (size_t)u * n_coders;
        int m = 0;
        for (int c = 0; c < n_coders; c++) m += !isnan(row[c]);
        if (m < 2) continue;
        for (int c = 0; c < n_coders; c++)
            if (!isnan(row[c])) n[value_index(uniq, V, row[c])] += 1;
    }
    double cum = 0;
    for (int g = 0; g < V; g++) {
        switch (metric) {
        case RANK_NOMINAL:
            x[g] = g;
            break;
        case RANK_INTERVAL:
            x[g] = uniq[g];
            break;
        case RANK_ORDINAL:
            x[g] = cum + n[g] / 2;
            break;
        }
        cum += n[g];
    }
    const double ntot = (double)N;

    /* Observed: sum_ck o_ck d_ck, one unit at a time. */
    double Do = 0;
    for (int u = 0; u < n_units; u++) {
        const double *row = values + (size_t)u * n_coders;
        int m = 0;
        for (int c = 0; c < n_coders; c++)
            if (!isnan(row[c])) idx[m++] = value_index(uniq, V, row[c]);
        if (m < 2) continue;
        double du = 0;
        for (int a = 0; a < m; a++)
            for (int b = a + 1; b < m; b++) {
                if (idx[a] == idx[b]) continue;
                const double d = x[idx[a]] - x[idx[b]];
                du += metric == RANK_NOMINAL ? 1.0 : d * d;
            }
        Do += 2 * du / (m - 1); /* both orders of each pair */
    }

    /* Expected: sum_ck n_c n_k d_ck. Nominal: n^2 - sum_c n_c^2; the others 2 n times the
     * n-weighted sum of squared deviations of x from its weighted mean. */
    double De = 0;
    if (metric == RANK_NOMINAL) {
        double sq = 0;
        for (int g = 0; g < V; g++) sq += n[g] * n[g];
        De = ntot * ntot - sq;
    } else {
        double mean = 0;
        for (int g = 0; g < V; g++) mean += n[g] * x[g];
        mean /= ntot;
        double ss = 0;
        for (int g = 0; g < V; g++) ss += n[g] * (x[g] - mean) * (x[g] - mean);
        De = 2 * ntot * ss;
    }
    if (V >= 2 && De > 0) *alpha = 1 - (ntot - 1) * Do / De;

done:
    free(uniq);
    free(n);
    free(x);
    free(idx);
    return rc;
}

int rank_pairs(const int *levels, int R, int K, const double *mean_rank, rank_pair_t *out) {
    int rc = check_levels("rank_pairs", levels, R, K);
    if (rc < 0) return rc;
    if (!mean_rank || !out) return rl_fail(RL_EINVAL, "rank_pairs: NULL argument");

    int np = 0;
    for (int i = 0; i < K; i++) {
        for (int j = i + 1; j < K; j++) {
            const int cmp = rank_mean_cmp(mean_rank[i], mean_rank[j]);
            if (cmp == 0 || isnan(mean_rank[i]) || isnan(mean_rank[j])) continue;
            const int a = cmp < 0 ? i : j, b = cmp < 0 ? j : i; /* a preferred */
            int both = 0, wins = 0, ties = 0;
            for (int r = 0; r < R; r++) {
                const int *row = levels + (size_t)r * K;
                if (row[a] < 0 || row[b] < 0) continue;
                both++;
                wins += row[a] < row[b];
                ties += row[a] == row[b];
            }
            if (both == 0) continue;
            out[np].chosen = a;
            out[np].rejected = b;
            out[np].margin = (wins + 0.5 * ties) / both;
            np++;
        }
    }
    return np;
}
