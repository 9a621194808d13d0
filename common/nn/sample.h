/*
 * sample.h - picking the next token from a row of logits: greedy, temperature, top-k, top-p.
 *
 * A pick is a pure function of (logits, params, seed, stream, counter): the one uniform draw it
 * needs comes from the counter-based RNG (rng.h), so a sequence's sample does not depend on the
 * batch it is in, the thread that computes it, or the process that runs it. Each pick reports
 * the token's log-probability under the distribution it was drawn from and under the model's
 * own distribution (temperature 1, no truncation) - the one PPO needs.
 */
#ifndef RLHF_SAMPLE_H
#define RLHF_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float temperature; /* 0: greedy (argmax, lowest id on ties); > 0: softmax(logits / t) */
    int top_k;         /* keep the k most probable tokens; 0: no limit */
    float top_p;       /* keep the smallest most-probable set with mass >= top_p; 1: no limit */
} smp_params_t;

typedef struct {
    int token;
    float logprob;       /* log-probability under the sampling distribution (0 for greedy) */
    float logprob_model; /* log-probability under softmax(logits): temperature 1, untruncated */
} smp_pick_t;

/* Checks params (temperature >= 0 and finite, top_k >= 0, 0 < top_p <= 1). 0 or RL_EINVAL. */
int smp_params_check(const smp_params_t *p);

/* Bytes of scratch space smp_pick() and smp_distribution() need for a vocabulary of V. */
size_t smp_scratch_size(int V);

/*
 * Picks a token from logits (V) with params p, using the uniform draw
 * rng_uniform53(seed, stream, counter). `scratch` holds smp_scratch_size(V) bytes (not shared
 * between threads). Returns 0, RL_EINVAL (bad params) or RL_ENONFINITE (a NaN logit, or no
 * finite logit).
 */
int smp_pick(const float *logits, int V, const smp_params_t *p, uint64_t seed, uint64_t stream,
             uint64_t counter, void *scratch, smp_pick_t *out);

/*
 * The full sampling distribution of params p over logits (V) into probs (V): zero outside the
 * kept set, renormalised inside it (greedy: a one-hot). For tests and diagnostics.
 */
int smp_distribution(const float *logits, int V, const smp_params_t *p, void *scratch,
                     float *probs);

#endif
