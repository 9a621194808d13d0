/*
 * gen.h - KV-cached batched generation with the GPT-2 model.
 *
 * Sequences of different prompt lengths run together with no padding: every forward step works
 * on a ragged set of rows (sequence, position, token). The linear layers are GEMMs over all rows
 * of all sequences at once; attention runs per sequence and head against that sequence's own
 * key/value cache. Prefill is one step with all prompt tokens; each decode step has one row per
 * live sequence. Sampling draws come from (seed, sequence id, position), and every sum a row's
 * logits depend on is taken in an order that does not depend on the other rows (the linear
 * layers run on weights packed once, see pgemm.h; attention is per sequence), so a sequence's
 * tokens and both logprobs are bit for bit the same alone or in any batch, on any thread count.
 */
#ifndef RLHF_GEN_H
#define RLHF_GEN_H

#include <stdint.h>

#include "nn/gpt.h"
#include "nn/sample.h"

typedef enum {
    GEN_FINISH_LENGTH = 0, /* max_new_tokens reached, or the context is full */
    GEN_FINISH_EOT,        /* the end-of-text token was generated (it is included) */
    GEN_FINISH_STOP,       /* the stop callback said so */
} gen_finish_t;

/* Called after each new token of sequence `seq` (its generated tokens so far, n of them);
 * returns 1 to stop that sequence. */
typedef int (*gen_stop_fn)(void *ctx, int seq, const int *tokens, int n);

/* Called after each forward step with the logits (V) that sequence `seq` samples its token at
 * position `pos` from; for tests and diagnostics. */
typedef void (*gen_logits_fn)(void *ctx, int seq, int pos, const float *logits, int V);

/* The model's weight matrices packed for generation (pgemm.h): one more copy of the weights.
 * Pack once per weights version and pass it in gen_opts_t.packed; gen_generate packs for the
 * call when none is given. */
typedef struct gen_packed gen_packed_t;

/* Packs m's current weights into *out: a new pack when *out is NULL (or of another shape),
 * else in place, reusing its memory (a new weights version of the same model). Returns 0 or
 * RL_ENOMEM; on failure *out is freed and NULL. */
int gen_pack(const gpt_t *m, gen_packed_t **out);
void gen_pack_free(gen_packed_t **pk);
size_t gen_pack_bytes(const gen_packed_t *pk);

typedef struct {
    int max_new_tokens;
    smp_params_t sampling;
    uint64_t seed;
    int eot;          /* end-of-text id, or -1 for none */
    int vocab_limit;  /* > 0: only ids below it are ever sampled (a tokenizer smaller than the
                         model's padded vocabulary); both logprobs are then over those ids */
    gen_stop_fn stop; /* may be NULL */
    void *stop_ctx;
    gen_logits_fn on_logits; /* may be NULL */
    void *on_logits_ctx;
    /* m's weights packed by gen_pack after their last change, or NULL. A pack that does not
     * match the model's shape, or whose weights have visibly changed since (a sample of them is
     * compared), is refused with RL_EINVAL. */
    const gen_packed_t *packed;
} gen_opts_t;

/* One generated sequence; arrays are malloc'ed, freed with gen_seq_free(). */
typedef struct {
    int *tokens;                      /* generated ids, prompt excluded */
    float *logprobs, *logprobs_model; /* per token: sampling distribution, model distribution */
    int n;
    gen_finish_t finish;
} gen_seq_t;

void gen_seq_free(gen_seq_t *s);

/*
 * Generates a continuation for each of B prompts (prompts[i], prompt_lens[i] >= 1 tokens).
 * seq_ids[i] keys sequence i's random draws (NULL: i). out[i] receives sequence i. Returns 0 or
 * RL_E* (a prompt longer than n_positions - 1, a bad token id, NaN logits, a stale pack, ENOMEM);
 * on failure
 * nothing is left allocated in out.
 */
int gen_generate(gpt_t *m, const int *const *prompts, const int *prompt_lens, int B,
                 const uint64_t *seq_ids, const gen_opts_t *o, gen_seq_t *out);

#endif
