/*
 * annot.h - the annotation store of stage 1: the completions being ranked, one raw ranking
 * record per (prompt, annotator), the assignment of prompts to annotators, simulated annotators,
 * and the aggregation of the rankings into consensus and agreement figures.
 *
 * Every way in goes through one store (annot_store_t) and one validator: the store file itself,
 * an import from JSONL or CSV written by other tools, the simulated annotators, and later a
 * browser UI (which builds an annot_rec_t and calls annot_store_add()). A store refuses a second
 * record for the same (prompt, annotator), so nobody ranks an item twice.
 *
 * Completions file (input, one object per prompt, written by `rlhf generate`):
 *   {"prompt_id": "p1", "prompt": "...", "completions": [{"id": "c0", "text": "..."}, ...]}
 * Other completion fields (tokens, logprob) are ignored here. Records refer to a prompt's
 * completions by their index 0..K-1 in that array.
 *
 * Annotation record (one JSONL line of the store, and the JSONL import format):
 *   {"prompt_id": "p1", "annotator": "ann01", "ranking": [[2], [0, 3], [1]], "skip": false,
 *    "confidence": 0.8, "note": "...", "time": "2026-01-02T03:04:05Z", "guideline": "v1",
 *    "shown": [3, 1, 0, 2]}
 *   prompt_id   required; must name a prompt of the completions file.
 *   annotator   required; a non-empty string.
 *   ranking     tie groups best -> worst, each a non-empty array of completion indices (a bare
 *               index stands for a group of one). Every completion appears exactly once: a
 *               repeated, missing or out-of-range index is an error. Must be empty (or absent)
 *               when skip is true; required otherwise.
 *   skip        optional boolean (default false): the annotator declined the prompt. A skipped
 *               record still occupies (prompt, annotator) but carries no ranking.
 *   confidence  optional number in [0, 1]. note: optional string.
 *   time        ISO-8601 UTC "YYYY-MM-DDTHH:MM:SS[.fff]Z"; when absent the reader fills in the
 *               `now` it is given (the import time).
 *   guideline   the guideline version followed; when absent the reader fills in the given
 *               default (the current guideline version).
 *   shown       optional: the order in which the completions were shown, a permutation of
 *               0..K-1.
 * Any other field is an error (a typo must not pass silently).
 *
 * CSV import: a header row naming the columns (any order, the names above); prompt_id,
 * annotator and ranking are required columns, the others optional, an empty cell is an absent
 * value. RFC 4180 quoting ("a ""b"", c" - a quoted cell may span lines). ranking is written
 * "2>0=3>1" ('>' separates tie groups best -> worst, '=' joins a tie; spaces allowed); skip is
 * true/false/1/0; shown is indices separated by spaces, e.g. "3 1 0 2".
 */
#ifndef RLHF_ANNOT_H
#define RLHF_ANNOT_H

#include <stdint.h>

#include <jansson.h>

#include "align/task.h"

/* The most completions per prompt (the simulator keys its draws with 20-bit item indices). */
#define ANNOT_MAX_K 1024

/* One prompt of the completions file. */
typedef struct {
    char *id;     /* prompt_id */
    char *prompt; /* the prompt text */
    int k;        /* number of completions */
    char **text;  /* k completion texts */
    char **cid;   /* k completion ids */
} annot_prompt_t;

/* The completions file: prompts in file order, with a lookup by id. */
typedef struct {
    annot_prompt_t *v;
    int n;
    int *by_id; /* indices of v sorted by id */
} annot_comp_t;

/*
 * Reads a completions JSONL file into c (zeroed or freed before). Every prompt needs a unique
 * string prompt_id, a string prompt and 1..ANNOT_MAX_K completions with a string text and id.
 * Returns 0, or RL_EFORMAT "PATH:LINE: ..." / RL_EIO / RL_ENOMEM with c left empty.
 */
int annot_comp_load(annot_comp_t *c, const char *path);

/* Index of the prompt with this id, or -1. */
int annot_comp_find(const annot_comp_t *c, const char *prompt_id);

/* Frees c; safe on a zeroed struct. */
void annot_comp_free(annot_comp_t *c);

/* One raw ranking record. The store owns every pointer in it. */
typedef struct {
    int prompt;        /* index into the completions set */
    int k;             /* the prompt's number of completions */
    char *annotator;   /* annotator id */
    int skip;          /* 1: declined, level is NULL */
    int *level;        /* k tie-group levels, 0 = best (rank.h convention); NULL when skipped */
    int *shown;        /* k indices in display order, or NULL when not recorded */
    double confidence; /* in [0, 1], NAN when absent */
    char *note;        /* NULL when absent */
    char *time;        /* ISO-8601 UTC */
    char *guideline;   /* guideline version */
    char *src;         /* "PATH:LINE" the record came from, for error messages */
} annot_rec_t;

/* Frees what a record owns and zeroes it. */
void annot_rec_free(annot_rec_t *r);

/* The store: records in insertion order, with a (prompt, annotator) index. */
typedef struct {
    const annot_comp_t *comp; /* borrowed: the completions the records refer to */
    annot_rec_t *v;
    int n, cap;
    int *slot; /* open-addressing hash of record indices, -1 = empty */
    int nslot;
} annot_store_t;

/* Starts an empty store over the completions c (borrowed; must outlive the store). */
void annot_store_init(annot_store_t *s, const annot_comp_t *c);

/* Frees the store; safe on a zeroed struct. */
void annot_store_free(annot_store_t *s);

/* Index of the record of (prompt, annotator), or -1. */
int annot_store_find(const annot_store_t *s, int prompt, const char *annotator);

/*
 * Adds *r to the store, taking ownership (r is zeroed, also on failure, where it is freed).
 * A second record for the same (prompt, annotator) is RL_EFORMAT naming both sources.
 */
int annot_store_add(annot_store_t *s, annot_rec_t *r);

/*
 * Validates one annotation object (format above) and fills *r. `where` is "PATH:LINE" for
 * errors (RL_EFORMAT "WHERE: FIELD: ..."); `now` and `guideline` fill an absent time and
 * guideline. On failure *r is left zeroed.
 */
int annot_rec_from_json(const annot_comp_t *c, json_t *obj, const char *where, const char *now,
                        const char *guideline, annot_rec_t *r);

/* The record as a JSON object (format above); NULL when out of memory. */
json_t *annot_rec_to_json(const annot_comp_t *c, const annot_rec_t *r);

/*
 * Reads a JSONL store or import file (format above) into s, record by record through
 * annot_store_add(). On failure the store keeps the records read before the bad line; callers
 * that must stay all-or-nothing read into a store they discard on error.
 */
int annot_store_read_jsonl(annot_store_t *s, const char *path, const char *now,
                           const char *guideline);

/* Same for a CSV file (format above); errors name "PATH:LINE" of the row's first line. */
int annot_store_read_csv(annot_store_t *s, const char *path, const char *now,
                         const char *guideline);

/* Writes every record as JSONL, atomically. Returns 0 or a negative RL_E* code. */
int annot_store_write(const annot_store_t *s, const char *path);

/*
 * Parses a ranking in text form "2>0=3>1" into k levels. Returns 0 or RL_EFORMAT with
 * "WHERE: ranking: ..." (repeated, missing or out-of-range index, empty group, stray text).
 */
int annot_ranking_parse(const char *text, int k, const char *where, int *level);

/*
 * Validates a ranking as JSON tie groups ([[2], [0, 3], 1]) into k levels; errors as above.
 */
int annot_ranking_from_json(json_t *arr, int k, const char *where, int *level);

/* The tie groups of k levels as a JSON array of arrays, best first; NULL when out of memory.
 * Items with a negative level are left out. */
json_t *annot_ranking_to_json(const int *level, int k);

/* The current UTC time as "YYYY-MM-DDTHH:MM:SSZ" into buf (at least 21 bytes). */
void annot_time_now(char *buf, int n);

/* 1 if s is an ISO-8601 UTC timestamp "YYYY-MM-DDTHH:MM:SS[.digits]Z", else 0. */
int annot_time_valid(const char *s);

/*
 * Assignment with overlap R: for each of n_prompts prompts (in order) picks R distinct of the
 * n_annot annotators, the least loaded first, equal loads broken by a draw keyed by (seed,
 * prompt key, annotator). So loads never differ by more than one and the groups vary.
 * keys[p] identifies prompt p (annot_prompt_key); out is n_prompts x R, each row ascending.
 * Returns 0, or RL_EINVAL when R < 1 or R > n_annot, RL_ENOMEM.
 */
int annot_assign(int n_prompts, const uint64_t *keys, int n_annot, int R, uint64_t seed, int *out);

/* A 64-bit key of a prompt id (FNV-1a), so that simulated draws do not depend on file order. */
uint64_t annot_prompt_key(const char *prompt_id);

/* A simulated annotator: a weighting of the alignment criteria plus Gaussian noise. */
typedef struct {
    char id[64];
    double w[TASK_NCRIT]; /* criteria weights, >= 0, summing to 1 */
    double noise;         /* standard deviation of the utility noise */
} annot_sim_t;

/*
 * The default panel of n simulated annotators "sim01".. with differing weights (each criterion
 * weight drawn in [0.5, 1.5] from a fixed key, then normalised) and noise levels spread evenly
 * over [0.5, 1.5] x `noise` (mean `noise`). The same n gives the same panel on every run.
 */
void annot_sim_panel(int n, double noise, annot_sim_t *out);

/*
 * Reads a panel from a JSON file: an array of {"id": "alice", "weights": {"correct": 2,
 * "polite": 1, "concise": 0.5, "on-topic": 1}, "noise": 0.1}. Absent weights are 0, weights
 * are normalised to sum 1 (at least one must be positive); absent noise takes `noise`.
 * *out is malloc'ed (caller frees), *n its length. Errors name the file and the entry.
 */
int annot_sim_load(const char *path, double noise, annot_sim_t **out, int *n);

/*
 * One simulated ranking of k completions with criterion scores scores[i][c] in [0, 1]:
 * utility_i = w . scores[i] + noise * N(0, 1), the normal drawn from Philox keyed by
 * (seed, prompt key, annotator index, item). Ranks by utility, best first; an item within 1e-9
 * of the best of the current tie group joins it (so zero noise and equal utility tie). shown (may
 * be NULL) receives a seeded shuffle of 0..k-1: the order the completions were shown in.
 */
void annot_sim_rank(const annot_sim_t *a, int annot_idx, uint64_t seed, uint64_t prompt_key,
                    const float (*scores)[TASK_NCRIT], int k, int *level, int *shown);

/* Aggregates of one prompt. */
typedef struct {
    int n_rankings;    /* non-skipped records */
    int n_skipped;     /* skipped records */
    int *rec;          /* the n_rankings record indices, in annotator-id order */
    double *mean_rank; /* k mean fractional ranks (NAN when no ranking) */
    int *consensus;    /* k consensus levels (-1 when no ranking) */
    double w;          /* Kendall's W (tie-corrected), NAN when fewer than 2 rankings or all tied */
    long agree, strict, tied; /* pairwise comparisons over the prompt's annotator pairs */
    int kept;                 /* 1 if it has a ranking and passes the W filter */
} annot_pagg_t;

/* Per-annotator figures. */
typedef struct {
    char *id;
    int records, skipped;
    int loo_prompts;            /* prompts ranked by this annotator and at least one other */
    long loo_agree, loo_strict; /* pairs agreeing with the others' consensus / strict in both */
} annot_aagg_t;

/* Aggregates of the whole store. */
typedef struct {
    int n_prompts;
    annot_pagg_t *p; /* per prompt of the completions set */
    int n_annot;
    annot_aagg_t *a; /* per annotator, by id */
    int records, skipped;
    int overlap_min, overlap_max; /* rankings per prompt that has one */
    double overlap_mean;
    double mean_w; /* over prompts with a defined W; NAN if none */
    int n_w;
    long agree, strict, tied; /* summed over prompts and annotator pairs */
    double alpha;             /* Krippendorff's alpha, ordinal; NAN when undefined */
    double min_w;             /* the filter threshold, NAN = no filter */
    int kept, dropped;
} annot_agg_t;

/*
 * Aggregates s: per prompt the consensus by mean fractional rank (ties averaged), Kendall's W
 * and pairwise agreement; over the set the pairwise agreement rate (comparisons where two
 * annotators both state a strict preference, fraction that agree), Krippendorff's ordinal alpha
 * (units = (prompt, completion), coders = annotators, value = the fractional rank, missing where
 * the annotator did not rank the prompt), and each annotator's pairwise agreement with the
 * mean-rank consensus of the other annotators of the same prompts. With min_w not NAN a prompt is
 * kept only if its W is defined and >= min_w; without, every prompt with a ranking is kept.
 * Returns 0 or a negative RL_E* code; free with annot_agg_free().
 */
int annot_aggregate(const annot_store_t *s, double min_w, annot_agg_t *g);

/* Frees g; safe on a zeroed struct. */
void annot_agg_free(annot_agg_t *g);

/* Pairwise agreement rate agree / strict, NAN when strict is 0. */
double annot_rate(long agree, long strict);

#endif
