/* test_train.c - the shared training step: loss goes down, NaN/Inf applies nothing. */
#include "nn/ops.h"
#include "nn/train.h"
#include "test.h"

static const gpt_config_t cfg = {2, 2, 16, 13, 16, 1e-5f, 0};

static void test_step_learns(void) {
    gpt_t *m = gpt_new(&cfg);
    gpt_init_weights(m, 1);
    train_t t;
    adamw_sched_t s = {ADAMW_SCHED_WARMUP, 1e-2f, 0, 5, 100};
    CHECK_OK(train_init(&t, m, &s, 0.0f, 1.0f));
    int in[2 * 8], tg[2 * 8];
    for (int i = 0; i < 16; i++) in[i] = (i * 5) % 13, tg[i] = (i * 5 + 5) % 13;
    train_stats_t st, first = {0};
    for (int i = 0; i < 60; i++) {
        CHECK_OK(train_lm_step(&t, in, tg, NULL, 2, 8, &st));
        if (i == 0) first = st;
    }
    CHECK_EQ(t.step, 60);
    fprintf(stderr, "loss %g -> %g\n", first.loss, st.loss);
    CHECK(st.loss < 0.2f * first.loss); /* a deterministic successor rule is learned */
    CHECK_NEAR(first.lr, 1e-2 / 5, 1e-9);
    CHECK_NEAR(st.lr, 1e-2, 1e-9);
    CHECK(first.grad_norm > 0 && st.ms_forward >= 0 && st.ms_optimizer >= 0);
    train_free(&t);
    gpt_destroy(&m);
}

static void test_nonfinite_applies_nothing(void) {
    gpt_t *m = gpt_new(&cfg);
    gpt_init_weights(m, 2);
    train_t t;
    adamw_sched_t s = {ADAMW_SCHED_CONSTANT, 1e-3f, 0, 0, 0};
    CHECK_OK(train_init(&t, m, &s, 0.1f, 1.0f));
    int in[8] = {1, 2, 3, 4, 5, 6, 7, 8}, tg[8] = {2, 3, 4, 5, 6, 7, 8, 9};
    CHECK_OK(train_lm_step(&t, in, tg, NULL, 1, 8, NULL));
    m->params_mem[gpt_tensor_find(m, "h.1.mlp.c_fc.weight")->offset] = INFINITY;
    float *snap = malloc(m->num_params * sizeof(float));
    memcpy(snap, m->params_mem, m->num_params * sizeof(float));
    CHECK_ERR(train_lm_step(&t, in, tg, NULL, 1, 8, NULL), RL_ENONFINITE);
    CHECK(strstr(rl_errmsg(), "step 1") != NULL);
    CHECK_EQ(memcmp(snap, m->params_mem, m->num_params * sizeof(float)), 0);
    CHECK_EQ(t.step, 1);
    free(snap);
    train_free(&t);
    gpt_destroy(&m);
}

/* The windowed evaluation against a plain reference: every window forwarded alone, each
 * position's loss computed from its logits in double, crossing positions never scored. */
static void test_eval_windows(void) {
    gpt_t *m = gpt_new(&cfg);
    gpt_init_weights(m, 4);
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] *= 8.0f; /* sharp predictions */
    enum { n = 53, T = 8 };
    int ids[n], V = cfg.vocab_size;
    for (int i = 0; i < n; i++) ids[i] = (i * i + 3 * i) % V;
    double ref = 0;
    size_t ref_count = 0;
    for (int w0 = 0; w0 < n; w0 += T) {
        int w = n - w0 < T ? n - w0 : T;
        CHECK_OK(gpt_forward(m, ids + w0, 1, w, GPT_FWD_LOGITS));
        for (int t = 0; t + 1 < w; t++) {
            const float *x = m->acts.logits + (size_t)t * V;
            double mx = -1e30, s = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, x[v]);
            for (int v = 0; v < V; v++) s += exp(x[v] - mx);
            ref += log(s) + mx - x[ids[w0 + t + 1]];
            ref_count++;
        }
    }
    for (int batch = 1; batch <= 4; batch += 3) { /* batching must not change the result */
        double sum = 0;
        size_t count = 0;
        CHECK_OK(train_eval_lm(m, ids, n, T, batch, &sum, &count));
        CHECK_EQ(count, ref_count);
        CHECK_EQ(count, 6 * (T - 1) + 4); /* six full windows, then 5 tokens score 4 */
        CHECK_NEAR(sum / count, ref / ref_count, 1e-5);
    }
    double sum = 0;
    size_t count = 0;
    CHECK_ERR(train_eval_lm(m, ids, n, 1, 1, &sum, &count), RL_EINVAL);
    CHECK_ERR(train_eval_lm(m, ids, n, cfg.n_positions + 1, 1, &sum, &count), RL_EINVAL);
    gpt_destroy(&m);
}

int main(void) {
    ops_set_threads(2);
    RUN(test_step_learns);
    RUN(test_nonfinite_applies_nothing);
    RUN(test_eval_windows);
    return TEST_REPORT();
}
