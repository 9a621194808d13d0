/*
 * test_gen.c - KV-cached batched generation against the full forward pass: cached logits equal
 * full-forward logits at every step, batches equal sequences alone, draws keyed by
 * (seed, sequence id, position), stop conditions, bad input; the same for the Llama family.
 */
#include "nn/gen.h"
#include "nn/ops.h"
#include "base/rng.h"
#include "test.h"

static const gpt_config_t cfg = {.n_layer = 2,
                                 .n_head = 4,
                                 .n_embd = 32,
                                 .vocab_size = 40,
                                 .n_positions = 24,
                                 .layer_norm_epsilon = 1e-5f,
                                 .scalar_head = 0};

static gpt_t *model(void) {
    gpt_t *m = gpt_new(&cfg);
    gpt_init_weights(m, 5);
    /* larger weights than GPT-2's init: peaked, position-dependent predictions */
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] += 0.15f * rng_normal(6, 0, i);
    return m;
}

static const int p0[] = {3, 17, 5}, p1[] = {9, 1, 1, 30, 2, 8, 11}, p2[] = {4},
                 p3[] = {20, 21, 22, 23, 24};
static const int *const prompts[] = {p0, p1, p2, p3};
static const int lens[] = {3, 7, 1, 5};

/* Records every step's logits: trace[seq][pos] (V floats), positions up to cfg.n_positions. */
typedef struct {
    float *logits; /* [4][n_positions][V] */
    int seen;
} trace_t;

static void on_logits(void *ctx, int seq, int pos, const float *logits, int V) {
    trace_t *t = ctx;
    memcpy(t->logits + ((size_t)seq * cfg.n_positions + pos) * V, logits, V * sizeof(float));
    t->seen++;
}

static void test_cached_equals_full_forward(void) {
    gpt_t *m = model();
    int V = cfg.vocab_size, P = cfg.n_positions;
    trace_t tr = {calloc((size_t)4 * P * V, sizeof(float)), 0};
    gen_opts_t o = {.max_new_tokens = 10,
                    .sampling = {1.0f, 0, 1.0f},
                    .seed = 42,
                    .eot = -1,
                    .on_logits = on_logits,
                    .on_logits_ctx = &tr};
    gen_seq_t out[4];
    CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, out));
    CHECK_EQ(tr.seen, 40);
    double worst = 0;
    for (int s = 0; s < 4; s++) {
        CHECK_EQ(out[s].n, 10);
        CHECK_EQ(out[s].finish, GEN_FINISH_LENGTH);
        /* the whole sequence through the uncached forward */
        int full[64], n = lens[s] + out[s].n;
        memcpy(full, prompts[s], lens[s] * sizeof(int));
        memcpy(full + lens[s], out[s].tokens, out[s].n * sizeof(int));
        CHECK_OK(gpt_forward(m, full, 1, n, GPT_FWD_LOGITS));
        for (int i = 0; i < out[s].n; i++) {
            int pos = lens[s] + i; /* the token at pos was sampled from the logits at pos - 1 */
            const float *ref = m->acts.logits + (size_t)(pos - 1) * V;
            const float *got = tr.logits + ((size_t)s * P + pos) * V;
            for (int v = 0; v < V; v++) worst = fmax(worst, fabs(ref[v] - got[v]));
            /* the sampled token's log-probabilities, from the logits generation sampled from:
             * log softmax in double within test_logsoftmax's bound and the cast to float */
            double e, lp = test_logsoftmax(got, V, out[s].tokens[i], &e);
            e += test_gamma(1) * (fabs(lp) + e);
            CHECK_NEAR(out[s].logprobs_model[i], lp, e);
            CHECK_NEAR(out[s].logprobs[i], lp, e); /* temperature 1, untruncated */
        }
        gen_seq_free(&out[s]);
    }
    /* Not a derived bound: two implementations of the whole network (packed-weight products and
     * a KV cache against OpenBLAS on the full sequence) differ by roundings that each stage
     * bounds (test_gpt, test_pgemm) but that no element-wise bound carries through the network:
     * worst-case bounds propagated stage by stage come out larger than the logits themselves.
     * Measured: 1.2e-6 to 1.5e-6 under OpenBLAS's Haswell, SkylakeX, Sandybridge and Zen
     * kernels. A cache or position error changes logits by O(0.1); 1e-4 separates the two. */
    CHECK_NEAR(worst, 0, 1e-4);
    free(tr.logits);
    gpt_destroy(&m);
}

/* The same tokens and bit for bit the same logprobs: a row's sums never depend on the batch. */
static int same_seq(const gen_seq_t *a, const gen_seq_t *b) {
    if (a->n != b->n || a->finish != b->finish) return 0;
    size_t n = (size_t)a->n;
    return !memcmp(a->tokens, b->tokens, n * sizeof(int)) &&
           !memcmp(a->logprobs, b->logprobs, n * sizeof(float)) &&
           !memcmp(a->logprobs_model, b->logprobs_model, n * sizeof(float));
}

static void test_batch_equals_alone(void) {
    gpt_t *m = model();
    gen_opts_t o = {.max_new_tokens = 12, .sampling = {0.9f, 8, 0.95f}, .seed = 7, .eot = -1};
    uint64_t ids[4] = {100, 101, 102, 103};
    gen_seq_t batch[4], alone;
    CHECK_OK(gen_generate(m, prompts, lens, 4, ids, &o, batch));
    for (int s = 0; s < 4; s++) {
        CHECK_OK(gen_generate(m, &prompts[s], &lens[s], 1, &ids[s], &o, &alone));
        if (!same_seq(&batch[s], &alone)) TEST__FAIL("sequence %d differs alone and in batch", s);
        gen_seq_free(&alone);
    }
    /* sequence id 101 in a different batch, at a different index: the same sample */
    const int *const other[] = {p3, p1};
    int other_lens[] = {5, 7};
    uint64_t other_ids[] = {555, 101};
    gen_seq_t two[2];
    CHECK_OK(gen_generate(m, other, other_lens, 2, other_ids, &o, two));
    CHECK(same_seq(&two[1], &batch[1]));
    CHECK(!same_seq(&two[0], &batch[3])); /* a different id gives a different sample */
    /* another seed changes the sample */
    gen_opts_t o2 = o;
    o2.seed = 8;
    CHECK_OK(gen_generate(m, &prompts[1], &lens[1], 1, &ids[1], &o2, &alone));
    CHECK(!same_seq(&alone, &batch[1]));
    gen_seq_free(&alone);
    for (int s = 0; s < 4; s++) gen_seq_free(&batch[s]);
    for (int s = 0; s < 2; s++) gen_seq_free(&two[s]);
    gpt_destroy(&m);
}

static void test_greedy_deterministic(void) {
    gpt_t *m = model();
    gen_opts_t o = {.max_new_tokens = 15, .sampling = {0.0f, 0, 1.0f}, .seed = 1, .eot = -1};
    gen_seq_t a[4], b[4];
    CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, a));
    o.seed = 999; /* greedy ignores the seed */
    ops_set_threads(1);
    CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, b));
    ops_set_threads(2);
    for (int s = 0; s < 4; s++) {
        CHECK(same_seq(&a[s], &b[s]));
        for (int i = 0; i < a[s].n; i++) CHECK_NEAR(a[s].logprobs[i], 0, 0);
        gen_seq_free(&a[s]);
        gen_seq_free(&b[s]);
    }
    gpt_destroy(&m);
}

static int stop_after_3(void *ctx, int seq, const int *tokens, int n) {
    (void)ctx, (void)seq, (void)tokens;
    return n == 3;
}

static void test_stops(void) {
    gpt_t *m = model();
    gen_opts_t o = {.max_new_tokens = 10, .sampling = {0.0f, 0, 1.0f}, .eot = -1};
    gen_seq_t a, b;
    CHECK_OK(gen_generate(m, &prompts[1], &lens[1], 1, NULL, &o, &a));
    /* end of text: make the 4th greedy token the end-of-text id */
    o.eot = a.tokens[3];
    int first = 0;
    while (a.tokens[first] != o.eot) first++; /* it may already occur earlier */
    CHECK_OK(gen_generate(m, &prompts[1], &lens[1], 1, NULL, &o, &b));
    CHECK_EQ(b.finish, GEN_FINISH_EOT);
    CHECK_EQ(b.n, first + 1); /* the end-of-text token is included */
    gen_seq_free(&b);
    o.eot = -1;
    o.stop = stop_after_3;
    CHECK_OK(gen_generate(m, &prompts[1], &lens[1], 1, NULL, &o, &b));
    CHECK_EQ(b.finish, GEN_FINISH_STOP);
    CHECK_EQ(b.n, 3);
    gen_seq_free(&b);
    /* the context fills up: a prompt of P-2 tokens has room for 2 more */
    o.stop = NULL;
    int longp[22], ll = cfg.n_positions - 2;
    for (int i = 0; i < ll; i++) longp[i] = i % cfg.vocab_size;
    const int *lp = longp;
    CHECK_OK(gen_generate(m, &lp, &ll, 1, NULL, &o, &b));
    CHECK_EQ(b.finish, GEN_FINISH_LENGTH);
    CHECK_EQ(b.n, 2);
    gen_seq_free(&b);
    o.max_new_tokens = 0;
    CHECK_OK(gen_generate(m, &prompts[0], &lens[0], 1, NULL, &o, &b));
    CHECK_EQ(b.n, 0);
    gen_seq_free(&b);
    gen_seq_free(&a);
    gpt_destroy(&m);
}

/* Sequences of one batch finishing at different steps (end-of-text, length, a full context)
 * equal the same sequences generated alone. */
static void test_ragged_finishes(void) {
    gpt_t *m = model();
    gen_opts_t o = {.max_new_tokens = 12, .sampling = {0.0f, 0, 1.0f}, .eot = -1};
    gen_seq_t probe;
    CHECK_OK(gen_generate(m, &prompts[1], &lens[1], 1, NULL, &o, &probe));
    o.eot = probe.tokens[2]; /* sequence 1 stops at its third token (or earlier) */
    gen_seq_free(&probe);
    int longp[24], ll = cfg.n_positions - 3;
    for (int i = 0; i < ll; i++) longp[i] = (i * 7) % cfg.vocab_size;
    const int *pp[4] = {p0, p1, p3, longp};
    int pl[4] = {lens[0], lens[1], lens[3], ll};
    gen_seq_t batch[4], alone;
    CHECK_OK(gen_generate(m, pp, pl, 4, NULL, &o, batch));
    CHECK_EQ(batch[1].finish, GEN_FINISH_EOT);
    CHECK(batch[1].n <= 3);
    CHECK(batch[3].n <= 3); /* the context fills after at most 3 tokens */
    int finished_early = 0;
    for (int s = 0; s < 4; s++) {
        uint64_t id = (uint64_t)s;
        CHECK_OK(gen_generate(m, &pp[s], &pl[s], 1, &id, &o, &alone));
        if (!same_seq(&batch[s], &alone)) TEST__FAIL("sequence %d differs alone and in batch", s);
        finished_early += batch[s].n < 12;
        gen_seq_free(&alone);
        gen_seq_free(&batch[s]);
    }
    CHECK(finished_early >= 2);
    gpt_destroy(&m);
}

/* A request for more tokens than the context holds is cut at the context, not overflowed; a
 * vocabulary limit keeps every sampled id below it. */
static void test_limits(void) {
    gpt_t *m = model();
    gen_opts_t o = {
        .max_new_tokens = 2147483647, .sampling = {1.0f, 0, 1.0f}, .seed = 3, .eot = -1};
    gen_seq_t out[2];
    const int *pp[2] = {p0, p1};
    int pl[2] = {lens[0], lens[1]};
    CHECK_OK(gen_generate(m, pp, pl, 2, NULL, &o, out));
    CHECK_EQ(out[0].n, cfg.n_positions - lens[0]);
    CHECK_EQ(out[1].n, cfg.n_positions - lens[1]);
    CHECK_EQ(out[0].finish, GEN_FINISH_LENGTH);
    gen_seq_free(&out[0]), gen_seq_free(&out[1]);
    o.max_new_tokens = 20;
    o.vocab_limit = 10;
    CHECK_OK(gen_generate(m, pp, pl, 2, NULL, &o, out));
    for (int s = 0; s < 2; s++) {
        for (int i = 0; i < out[s].n; i++) {
            CHECK(out[s].tokens[i] < 10);
            CHECK(out[s].logprobs_model[i] <= 0 && isfinite(out[s].logprobs_model[i]));
        }
        gen_seq_free(&out[s]);
    }
    gpt_destroy(&m);
}

static void test_bad_input(void) {
    gpt_t *m = model();
    gen_opts_t o = {.max_new_tokens = 3, .sampling = {1.0f, 0, 1.0f}, .eot = -1};
    gen_seq_t out[2];
    int toolong[24] = {0}, n = cfg.n_positions, bad[2] = {1, 40};
    const int *pp[2] = {p0, toolong};
    int pl[2] = {3, n};
    CHECK_ERR(gen_generate(m, pp, pl, 2, NULL, &o, out), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "prompt 1") != NULL);
    pp[1] = bad, pl[1] = 2;
    CHECK_ERR(gen_generate(m, pp, pl, 2, NULL, &o, out), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "40") != NULL);
    o.sampling.top_p = 0.0f;
    CHECK_ERR(gen_generate(m, pp, pl, 1, NULL, &o, out), RL_EINVAL);
    o.sampling.top_p = 1.0f;
    const gpt_tensor_t *t = gpt_tensor_find(m, "ln_f.weight");
    m->params_mem[t->offset] = NAN;
    CHECK_ERR(gen_generate(m, pp, pl, 1, NULL, &o, out), RL_ENONFINITE);
    CHECK(out[0].tokens == NULL); /* nothing left allocated */
    gpt_destroy(&m);
}

/* One thread or two: the same bits (each output of the packed products has one owner and one
 * order; attention runs per sequence and head). A model large enough that the products and the
 * attention loop run on the thread team. */
static void test_thread_count(void) {
    const gpt_config_t big = {.n_layer = 2,
                              .n_head = 4,
                              .n_embd = 128,
                              .vocab_size = 512,
                              .n_positions = 64,
                              .layer_norm_epsilon = 1e-5f,
                              .scalar_head = 0};
    gpt_t *m = gpt_new(&big);
    gpt_init_weights(m, 8);
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] += 0.05f * rng_normal(6, 1, i);
    gen_opts_t o = {.max_new_tokens = 10, .sampling = {1.0f, 0, 1.0f}, .seed = 5, .eot = -1};
    gen_seq_t one[4], two[4];
    ops_set_threads(1);
    CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, one));
    ops_set_threads(2);
    CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, two));
    for (int s = 0; s < 4; s++) {
        if (!same_seq(&one[s], &two[s])) TEST__FAIL("sequence %d differs on 1 and 2 threads", s);
        gen_seq_free(&one[s]), gen_seq_free(&two[s]);
    }
    gpt_destroy(&m);
}

/* A pack made once serves many calls with the same result as packing per call; weights changed
 * after packing are refused, and packing again (in place) serves the new weights. */
static void test_packed_weights(void) {
    gpt_t *m = model();
    gen_opts_t o = {.max_new_tokens = 8, .sampling = {1.0f, 0, 1.0f}, .seed = 11, .eot = -1};
    gen_seq_t own[4], packed[4];
    CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, own));
    gen_packed_t *pk = NULL;
    CHECK_OK(gen_pack(m, &pk));
    CHECK(pk != NULL && gen_pack_bytes(pk) >= m->num_params * sizeof(float) / 2);
    o.packed = pk;
    CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, packed));
    for (int s = 0; s < 4; s++) {
        CHECK(same_seq(&own[s], &packed[s]));
        gen_seq_free(&packed[s]);
    }
    /* new weights (a PPO step, a synced version) without packing again: refused */
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] *= 1.01f;
    CHECK_ERR(gen_generate(m, prompts, lens, 4, NULL, &o, packed), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "changed") != NULL);
    gen_packed_t *same = pk;
    CHECK_OK(gen_pack(m, &pk));
    CHECK(pk == same); /* packed in place */
    CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, packed));
    o.packed = NULL;
    for (int s = 0; s < 4; s++) gen_seq_free(&own[s]);
    CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, own));
    for (int s = 0; s < 4; s++) CHECK(same_seq(&own[s], &packed[s]));
    /* a pack of another model's shape is refused, and replaced when packing that model */
    gpt_config_t c2 = cfg;
    c2.n_layer = 1;
    gpt_t *m2 = gpt_new(&c2);
    gpt_init_weights(m2, 5);
    o.packed = pk;
    gen_seq_t one;
    CHECK_ERR(gen_generate(m2, prompts, lens, 1, NULL, &o, &one), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "shape") != NULL);
    CHECK_OK(gen_pack(m2, &pk));
    o.packed = pk;
    CHECK_OK(gen_generate(m2, prompts, lens, 1, NULL, &o, &one));
    gen_seq_free(&one);
    for (int s = 0; s < 4; s++) gen_seq_free(&own[s]), gen_seq_free(&packed[s]);
    gen_pack_free(&pk);
    CHECK(pk == NULL);
    gpt_destroy(&m2);
    gpt_destroy(&m);
}

/* ---- the Llama family ------------------------------------------------------------------- */

/* grouped-query, untied head, Llama 3 rope scaling; and q/k norms, q/k/v biases, a head_dim that
 * is not hidden / heads, tied embeddings */
static const gpt_config_t fam_cfg[2] = {
    {.n_layer = 2,
     .n_head = 4,
     .n_embd = 32,
     .vocab_size = 40,
     .n_positions = 24,
     .layer_norm_epsilon = 1e-5f,
     .arch = GPT_ARCH_LLAMA,
     .n_kv_head = 2,
     .n_inner = 48,
     .rope_theta = 500000.0f,
     .rope_llama3 = 1,
     .rope_factor = 8.0f,
     .rope_low_freq_factor = 1.0f,
     .rope_high_freq_factor = 4.0f,
     .rope_original_max_pos = 8},
    {.n_layer = 2,
     .n_head = 4,
     .n_embd = 32,
     .vocab_size = 40,
     .n_positions = 24,
     .layer_norm_epsilon = 1e-6f,
     .arch = GPT_ARCH_QWEN3,
     .n_kv_head = 1,
     .head_dim = 12,
     .n_inner = 40,
     .tie_word_embeddings = 1,
     .attn_bias = 1,
     .qk_norm = 1,
     .rope_theta = 10000.0f},
};

static gpt_t *fam_model(int k) {
    gpt_t *m = gpt_new(&fam_cfg[k]);
    gpt_init_weights(m, 5 + k);
    /* larger weights than the init: peaked, position-dependent predictions */
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] += 0.15f * rng_normal(6, 0, i);
    return m;
}

/* Cached generation's logits at every step against the full forward of the whole sequence, as
 * test_cached_equals_full_forward does for GPT-2 (and with its tolerance, for its reasons: the
 * two compute attention's sums in different orders). A wrong rotary position, cache slot or
 * key/value head changes logits by O(0.1). */
static void test_llama_cached_equals_full_forward(void) {
    for (int k = 0; k < 2; k++) {
        gpt_t *m = fam_model(k);
        int V = fam_cfg[k].vocab_size, P = fam_cfg[k].n_positions;
        trace_t tr = {calloc((size_t)4 * P * V, sizeof(float)), 0};
        gen_opts_t o = {.max_new_tokens = 10,
                        .sampling = {1.0f, 0, 1.0f},
                        .seed = 42,
                        .eot = -1,
                        .on_logits = on_logits,
                        .on_logits_ctx = &tr};
        gen_seq_t out[4];
        CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, out));
        CHECK_EQ(tr.seen, 40);
        double worst = 0;
        for (int s = 0; s < 4; s++) {
            int full[64], n = lens[s] + out[s].n;
            memcpy(full, prompts[s], lens[s] * sizeof(int));
            memcpy(full + lens[s], out[s].tokens, out[s].n * sizeof(int));
            CHECK_OK(gpt_forward(m, full, 1, n, GPT_FWD_LOGITS));
            for (int i = 0; i < out[s].n; i++) {
                int pos = lens[s] + i;
                const float *ref = m->acts.logits + (size_t)(pos - 1) * V;
                const float *got = tr.logits + ((size_t)s * P + pos) * V;
                for (int v = 0; v < V; v++) worst = fmax(worst, fabs(ref[v] - got[v]));
            }
            gen_seq_free(&out[s]);
        }
        CHECK_NEAR(worst, 0, 1e-4);
        free(tr.logits);
        gpt_destroy(&m);
    }
}

/* Bits: a sequence alone equals itself in a batch; one thread equals two. */
static void test_llama_batch_and_threads(void) {
    for (int k = 0; k < 2; k++) {
        gpt_t *m = fam_model(k);
        gen_opts_t o = {.max_new_tokens = 12, .sampling = {0.9f, 8, 0.95f}, .seed = 7, .eot = -1};
        uint64_t ids[4] = {100, 101, 102, 103};
        gen_seq_t batch[4], alone, one[4];
        CHECK_OK(gen_generate(m, prompts, lens, 4, ids, &o, batch));
        ops_set_threads(1);
        CHECK_OK(gen_generate(m, prompts, lens, 4, ids, &o, one));
        ops_set_threads(2);
        for (int s = 0; s < 4; s++) {
            CHECK_OK(gen_generate(m, &prompts[s], &lens[s], 1, &ids[s], &o, &alone));
            if (!same_seq(&batch[s], &alone))
                TEST__FAIL("model %d: sequence %d differs alone and in batch", k, s);
            if (!same_seq(&batch[s], &one[s]))
                TEST__FAIL("model %d: sequence %d differs on 1 and 2 threads", k, s);
            gen_seq_free(&alone), gen_seq_free(&one[s]), gen_seq_free(&batch[s]);
        }
        gpt_destroy(&m);
    }
    /* large enough that the products and the attention loops run on the thread team */
    gpt_config_t big = fam_cfg[1];
    big.n_embd = 128, big.head_dim = 48, big.n_kv_head = 2, big.n_inner = 256;
    big.vocab_size = 512, big.n_positions = 64;
    gpt_t *m = gpt_new(&big);
    gpt_init_weights(m, 8);
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] += 0.05f * rng_normal(6, 1, i);
    gen_opts_t o = {.max_new_tokens = 10, .sampling = {1.0f, 0, 1.0f}, .seed = 5, .eot = -1};
    gen_seq_t one[4], two[4];
    ops_set_threads(1);
    CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, one));
    ops_set_threads(2);
    CHECK_OK(gen_generate(m, prompts, lens, 4, NULL, &o, two));
    for (int s = 0; s < 4; s++) {
        if (!same_seq(&one[s], &two[s])) TEST__FAIL("sequence %d differs on 1 and 2 threads", s);
        gen_seq_free(&one[s]), gen_seq_free(&two[s]);
    }
    gpt_destroy(&m);
}

int main(void) {
    ops_set_threads(2);
    RUN(test_cached_equals_full_forward);
    RUN(test_batch_equals_alone);
    RUN(test_greedy_deterministic);
    RUN(test_stops);
    RUN(test_ragged_finishes);
    RUN(test_limits);
    RUN(test_bad_input);
    RUN(test_packed_weights);
    RUN(test_thread_count);
    RUN(test_llama_cached_equals_full_forward);
    RUN(test_llama_batch_and_threads);
    return TEST_REPORT();
}
