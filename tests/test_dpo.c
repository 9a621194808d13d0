/*
 * test_dpo.c - the DPO / IPO / label-smoothed DPO losses and their gradients (common/align/dpo.h)
 * against independent references: the per-pair losses written out from the papers' formulas in
 * double with central differences for their derivatives, the completion log-probabilities
 * against a double-precision log-softmax with its error bound, and the model gradient against one
 * assembled from per-sequence masked cross-entropy gradients (gpt_lm_loss: another code path,
 * itself checked by finite differences in test_gpt).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "align/dpo.h"
#include "align/ppo.h"
#include "base/fs.h"
#include "nn/ops.h"
#include "nn/tok.h"
#include "test.h"

enum { V = 13, EOT = 12 };

static gpt_t *tiny_model(uint64_t seed) {
    gpt_config_t cfg = {.n_layer = 2,
                        .n_head = 2,
                        .n_embd = 16,
                        .vocab_size = V,
                        .n_positions = 24,
                        .layer_norm_epsilon = 1e-5f};
    gpt_t *m = gpt_new(&cfg);
    gpt_init_weights(m, seed);
    /* larger weights than GPT-2's init, so that the logprobs (and the gradient) are not flat */
    for (size_t i = 0; i < m->num_params; i++) m->params_mem[i] *= 8.0f;
    return m;
}

/* Builds a split data set by hand: n_pairs pairs, each a prompt with two completions. */
typedef struct {
    const int *prompt;
    int np;
    const int *c, *r;
    int nc, nr;
} pair_src_t;

static void add_seq(rm_data_t *d, const int *p, int np, const int *c, int nc) {
    memcpy(d->ids + d->n_ids, p, (size_t)np * sizeof(int));
    memcpy(d->ids + d->n_ids + np, c, (size_t)nc * sizeof(int));
    d->ids[d->n_ids + np + nc] = EOT;
    d->seqs[d->n_seqs++] = (rm_seq_t){d->n_ids, np + nc + 1, np, NAN};
    d->n_ids += (size_t)(np + nc + 1);
}

static void build(rm_data_t *d, const pair_src_t *src, int n) {
    memset(d, 0, sizeof *d);
    d->split = 1;
    d->ids = malloc(4096 * sizeof(int));
    d->seqs = malloc((size_t)2 * n * sizeof(rm_seq_t));
    d->pairs = malloc((size_t)n * sizeof(rm_pair_t));
    d->groups = malloc((size_t)n * sizeof(rm_group_t));
    for (int i = 0; i < n; i++) {
        add_seq(d, src[i].prompt, src[i].np, src[i].c, src[i].nc);
        add_seq(d, src[i].prompt, src[i].np, src[i].r, src[i].nr);
        d->pairs[i] = (rm_pair_t){2 * i, 2 * i + 1, 0, i, NAN, i};
        char key[16];
        snprintf(key, sizeof key, "p%d", i);
        d->groups[i] = (rm_group_t){strdup(key), 2 * i, 2, i, 1};
    }
    d->n_pairs = d->n_groups = n;
}

static const int P0[] = {1, 2, 3}, P1[] = {4, 5}, P2[] = {6, 1, 7, 2};
static const int C0[] = {7, 8}, R0[] = {9}, C1[] = {3, 3, 10}, R1[] = {11, 2}, C2[] = {5},
                 R2[] = {8, 6, 4};
static const pair_src_t SRC[] = {
    {P0, 3, C0, R0, 2, 1}, {P1, 2, C1, R1, 3, 2}, {P2, 4, C2, R2, 1, 3}, {P1, 2, R1, C0, 2, 2}};
#define NSRC 4

/* ---- the per-pair losses ---------------------------------------------------------------- */

/* The losses as the papers write them, in double: DPO's -log sigma(beta h) (label-smoothed:
 * the expectation over a label flipped with probability eps), IPO's (h - 1/(2 beta))^2. */
static double ref_loss(const dpo_config_t *c, double pc, double pr, double rc, double rr) {
    double h = (pc - rc) - (pr - rr);
    if (c->loss == DPO_LOSS_IPO) return pow(h - 0.5 / c->beta, 2);
    double eps = c->label_smoothing;
    double p = 1.0 / (1.0 + exp(-c->beta * h)); /* the modelled preference probability */
    return -(1.0 - eps) * log(p) - eps * log(1.0 - p);
}

/*
 * dpo_pair_loss against ref_loss over a grid of (policy, reference) logprobs with |beta h| <= 12
 * (where the plain formulas lose no precision worth counting: 1 - p >= 6e-6 keeps log(1 - p)
 * within 1e-10 relative), and its derivatives against central differences with step 1e-4: the
 * truncation term h^2/6 |f'''| <= 1e-8 (|f'''| <= beta^3 / 4 + ... <= 64 for beta <= 4) and the
 * rounding term 2^-52 |f| / h <= 1e-10, so 1e-6 absolute plus 1e-6 relative holds.
 */
static void test_pair_loss(void) {
    const dpo_config_t cfgs[] = {
        {DPO_LOSS_SIGMOID, 0.1, 0, 1, 0},   {DPO_LOSS_SIGMOID, 1.0, 0, 1, 0},
        {DPO_LOSS_SIGMOID, 0.5, 0.2, 1, 0}, {DPO_LOSS_SIGMOID, 4, 0.1, 1, 0},
        {DPO_LOSS_IPO, 0.1, 0, 1, 0},       {DPO_LOSS_IPO, 2.0, 0, 1, 0}};
    int checked = 0;
    for (size_t k = 0; k < sizeof cfgs / sizeof cfgs[0]; k++) {
        const dpo_config_t *c = &cfgs[k];
        for (double pc = -9; pc <= -1; pc += 2.0)
            for (double pr = -8.5; pr <= -1; pr += 2.5)
                for (double rc = -7; rc <= -2; rc += 2.5) {
                    double rr = -5.25, dpc, dpr;
                    if (fabs(c->beta * ((pc - rc) - (pr - rr))) > 12) continue;
                    double got = dpo_pair_loss(c, pc, pr, rc, rr, &dpc, &dpr);
                    double want = ref_loss(c, pc, pr, rc, rr);
                    CHECK_NEAR(got, want, 1e-12 + 1e-10 * fabs(want));
                    const double e = 1e-4;
                    double nc =
                        (ref_loss(c, pc + e, pr, rc, rr) - ref_loss(c, pc - e, pr, rc, rr)) /
                        (2 * e);
                    double nr =
                        (ref_loss(c, pc, pr + e, rc, rr) - ref_loss(c, pc, pr - e, rc, rr)) /
                        (2 * e);
                    CHECK_NEAR(dpc, nc, 1e-6 + 1e-6 * fabs(nc));
                    CHECK_NEAR(dpr, nr, 1e-6 + 1e-6 * fabs(nr));
                    checked++;
                }
    }
    CHECK(checked > 300);
    /* at h = 0: DPO's loss is log 2 whatever the smoothing, IPO's 1/(4 beta^2) */
    CHECK_NEAR(dpo_pair_loss(&cfgs[2], -3, -4, -3, -4, NULL, NULL), log(2.0), 1e-15);
    CHECK_NEAR(dpo_pair_loss(&cfgs[5], -3, -4, -3, -4, NULL, NULL), 1.0 / 16, 1e-15);
    /* far out: stable, no overflow, the limits of the formulas */
    double d1, d2;
    CHECK_NEAR(dpo_pair_loss(&cfgs[1], 0, -800, 0, 0, &d1, &d2), 0, 1e-300);
    CHECK_NEAR(dpo_pair_loss(&cfgs[1], -800, 0, 0, 0, &d1, &d2), 800, 1e-9);
    CHECK_NEAR(d1, -1.0, 1e-15);
    CHECK_NEAR(d2, 1.0, 1e-15);
    /* label smoothing keeps the loss from rewarding an unbounded margin: its minimum is at
     * beta h = log((1 - eps) / eps), where the derivative vanishes */
    double hstar = log(0.8 / 0.2) / 0.5;
    dpo_pair_loss(&cfgs[2], hstar, 0, 0, 0, &d1, NULL);
    CHECK_NEAR(d1, 0, 1e-12);
    dpo_loss_t l;
    CHECK_OK(dpo_loss_parse("ipo", &l));
    CHECK_EQ(l, DPO_LOSS_IPO);
    CHECK_ERR(dpo_loss_parse("hinge", &l), RL_EINVAL);
    dpo_config_t bad = cfgs[0];
    bad.label_smoothing = 0.5;
    CHECK_ERR(dpo_config_check(&bad), RL_EINVAL);
    bad = cfgs[0];
    bad.beta = 0;
    CHECK_ERR(dpo_config_check(&bad), RL_EINVAL);
}

/* ---- completion log-probabilities ----------------------------------------------------------- */

/*
 * dpo_seq_logps (sequences padded together, several per pass) against each sequence forwarded
 * alone and its completion tokens' log-softmax taken in double (test_logsoftmax, with the fp32
 * kernel's error bound plus the rounding to float, u |lp|, per token). And bit for bit against
 * the float logprobs a reward worker sends (ppo_seq_logprobs) summed in double in token order:
 * the reference a pairs file carries is what this computes for the same model.
 */
static void test_seq_logps(void) {
    gpt_t *m = tiny_model(3);
    rm_data_t d;
    build(&d, SRC, NSRC);
    dpo_config_t c = {DPO_LOSS_SIGMOID, 0.1, 0, 2, EOT};
    int seqs[2 * NSRC];
    for (int i = 0; i < 2 * NSRC; i++) seqs[i] = i;
    double lp[2 * NSRC];
    long ntok = 0;
    CHECK_OK(dpo_seq_logps(m, &d, seqs, 2 * NSRC, &c, lp, &ntok));
    long want_tok = 0;
    for (int i = 0; i < 2 * NSRC; i++) {
        const rm_seq_t *s = &d.seqs[i];
        const int *ids = d.ids + s->off;
        CHECK_OK(gpt_forward(m, ids, 1, s->len, GPT_FWD_LOGITS));
        double ref = 0, bound = 0;
        for (int t = s->n_prompt; t < s->len; t++) {
            double b, x = test_logsoftmax(m->acts.logits + (size_t)(t - 1) * V, V, ids[t], &b);
            ref += x;
            bound += b + TEST_U32 * fabs(x) + test_gamma64(s->len) * fabs(ref);
        }
        CHECK_NEAR(lp[i], ref, bound);
        CHECK(ref < -0.5); /* a real logprob, not a degenerate one */
        want_tok += s->len - s->n_prompt;
        /* the reward worker's floats, summed as the pairs file's reference is */
        ppo_seq_t ps = {.prompt = ids,
                        .prompt_len = s->n_prompt,
                        .completion = ids + s->n_prompt,
                        .completion_len = s->len - s->n_prompt};
        float tl[32];
        CHECK_OK(ppo_seq_logprobs(m, &ps, 1, 1, 0, tl));
        double sum = 0;
        for (int t = 0; t < ps.completion_len; t++) sum += (double)tl[t];
        CHECK(sum == lp[i]);
    }
    CHECK_EQ(ntok, want_tok);
    rm_data_free(&d);
    gpt_destroy(&m);
}

/* ---- the model gradient ------------------------------------------------------------------ */

/*
 * The reference gradient of the mean pair loss: for each sequence alone, the masked LM loss on
 * its completion tokens (gpt_lm_loss: mean cross-entropy = -logp / n) gives d(-logp/n)/dlogits;
 * scaled by -n * dL/dlogp (dL from ref_loss's derivative in double, L the step's mean) it is
 * that sequence's term, and the backward passes accumulate the terms. Returns the mean loss.
 */
static double ref_grad(gpt_t *m, const rm_data_t *d, const int *pairs, int n, const dpo_config_t *c,
                       float *out) {
    double loss = 0;
    CHECK_OK(gpt_grads_alloc(m));
    gpt_zero_grad(m);
    for (int i = 0; i < n; i++) {
        const rm_pair_t *p = &d->pairs[pairs[i]];
        int sq[2] = {p->w, p->l};
        double lp[2], cnt[2];
        for (int k = 0; k < 2; k++) { /* the logprobs from the per-token losses */
            const rm_seq_t *s = &d->seqs[sq[k]];
            const int *ids = d->ids + s->off;
            int tg[32];
            for (int t = 0; t < s->len; t++)
                tg[t] = t + 1 < s->len && t + 1 >= s->n_prompt ? ids[t + 1] : -1;
            CHECK_OK(gpt_forward(m, ids, 1, s->len, GPT_FWD_LOGITS));
            float l;
            CHECK_OK(gpt_lm_loss(m, tg, NULL, &l, 0));
            cnt[k] = s->len - s->n_prompt;
            lp[k] = 0;
            for (int t = 0; t < s->len; t++)
                if (tg[t] >= 0) lp[k] -= m->acts.losses[t];
        }
        double nc = c->loss == DPO_LOSS_IPO ? cnt[0] : 1, nr = c->loss == DPO_LOSS_IPO ? cnt[1] : 1;
        double pc = lp[0] / nc, pr = lp[1] / nr;
        double rc = d->seqs[sq[0]].ref_logp / nc, rr = d->seqs[sq[1]].ref_logp / nr;
        loss += ref_loss(c, pc, pr, rc, rr) / n;
        const double e = 1e-5; /* dL/dlogp by central differences of the paper's formula */
        double g[2] = {
            (ref_loss(c, pc + e, pr, rc, rr) - ref_loss(c, pc - e, pr, rc, rr)) / (2 * e) / nc,
            (ref_loss(c, pc, pr + e, rc, rr) - ref_loss(c, pc, pr - e, rc, rr)) / (2 * e) / nr};
        for (int k = 0; k < 2; k++) {
            const rm_seq_t *s = &d->seqs[sq[k]];
            const int *ids = d->ids + s->off;
            int tg[32];
            for (int t = 0; t < s->len; t++)
                tg[t] = t + 1 < s->len && t + 1 >= s->n_prompt ? ids[t + 1] : -1;
            CHECK_OK(gpt_forward(m, ids, 1, s->len, GPT_FWD_LOGITS));
            float l;
            CHECK_OK(gpt_lm_loss(m, tg, NULL, &l, 1));
            float f = (float)(-cnt[k] * g[k] / n);
            for (size_t j = 0; j < (size_t)s->len * V; j++) m->acts.logits[j] *= f;
            CHECK_OK(gpt_backward(m, 1, NULL));
        }
    }
    memcpy(out, m->grads_mem, m->num_params * sizeof(float));
    return loss;
}

/*
 * dpo_grad (pairs batched two per pass, padded) against ref_grad, for each loss. The two are
 * fp32 computations of the same sums in different orders and through different softmax
 * gradients; each gradient entry is a sum of O(100) products of O(1) activations with dlogits
 * rounded to within a few ulps, so they agree to ~1e-5 of the largest entry: 1e-4 of it (and
 * 1e-3 relative) is the tolerance. A missing factor (beta, 1/n of IPO, the sign of the rejected
 * term, the smoothing) moves entries by O(the entry).
 */
static void grad_case(dpo_loss_t loss, double beta, double eps) {
    gpt_t *m = tiny_model(5);
    rm_data_t d;
    build(&d, SRC, NSRC);
    /* a reference other than the policy (h != 0): the logprobs of another model */
    gpt_t *ref = tiny_model(6);
    dpo_config_t c = {loss, beta, eps, 2, EOT};
    int seqs[2 * NSRC], pairs[NSRC] = {0, 1, 2, 3};
    double lp[2 * NSRC];
    for (int i = 0; i < 2 * NSRC; i++) seqs[i] = i;
    CHECK_OK(dpo_seq_logps(ref, &d, seqs, 2 * NSRC, &c, lp, NULL));
    for (int i = 0; i < 2 * NSRC; i++) d.seqs[i].ref_logp = lp[i];
    float *want = malloc(m->num_params * sizeof(float));
    double want_loss = ref_grad(m, &d, pairs, NSRC, &c, want);
    gpt_zero_grad(m);
    dpo_stats_t st = {0};
    CHECK_OK(dpo_grad(m, &d, pairs, NSRC, &c, 1.0f / NSRC, &st));
    CHECK_NEAR(st.loss, want_loss, 1e-4 * fabs(want_loss));
    CHECK_EQ(st.pairs, NSRC);
    double gmax = 0;
    for (size_t j = 0; j < m->num_params; j++) gmax = fmax(gmax, fabs(want[j]));
    CHECK(gmax > 1e-2);
    int bad = 0;
    for (size_t j = 0; j < m->num_params && bad < 10; j++) {
        double a = m->grads_mem[j], b = want[j];
        if (!(fabs(a - b) <= 1e-4 * gmax + 1e-3 * fabs(b))) {
            TEST__FAIL("%s beta %g eps %g: grad[%zu] %.8g vs reference %.8g", dpo_loss_name(loss),
                       beta, eps, j, a, b);
            bad++;
        }
    }
    free(want);
    rm_data_free(&d);
    gpt_destroy(&m);
    gpt_destroy(&ref);
}

static void test_grad(void) {
    grad_case(DPO_LOSS_SIGMOID, 0.5, 0);
    grad_case(DPO_LOSS_SIGMOID, 0.5, 0.2);
    grad_case(DPO_LOSS_IPO, 0.5, 0);
}

/*
 * A policy equal to its reference: every implicit reward is exactly 0, the loss exactly log 2,
 * and one step of DPO raises the chosen completions' logprobs against the rejected ones (the
 * margin becomes positive on the pairs trained on).
 */
static void test_step(void) {
    gpt_t *m = tiny_model(9);
    rm_data_t d;
    build(&d, SRC, 3); /* the fourth pair would reverse the second's preference */
    dpo_config_t c = {DPO_LOSS_SIGMOID, 0.5, 0, 2, EOT};
    int seqs[6] = {0, 1, 2, 3, 4, 5}, pairs[3] = {0, 1, 2};
    double lp[6];
    CHECK_OK(dpo_seq_logps(m, &d, seqs, 6, &c, lp, NULL));
    for (int i = 0; i < 6; i++) d.seqs[i].ref_logp = lp[i];
    dpo_stats_t ev = {0};
    CHECK_OK(dpo_eval(m, &d, pairs, 3, &c, &ev));
    CHECK(ev.loss == 3 * log(2.0));
    CHECK(ev.reward_chosen == 0 && ev.reward_rejected == 0 && ev.correct == 1.5);
    train_t tr = {0};
    adamw_sched_t sched = {ADAMW_SCHED_CONSTANT, 1e-2f, 0, 0, 10};
    CHECK_OK(train_init(&tr, m, &sched, 0, 1.0f));
    tr.grad_blocks = 2;
    for (int s = 0; s < 5; s++) CHECK_OK(dpo_step(&tr, &d, pairs, 3, &c, NULL, NULL));
    memset(&ev, 0, sizeof ev);
    CHECK_OK(dpo_eval(m, &d, pairs, 3, &c, &ev));
    CHECK(ev.loss < 3 * log(2.0));
    CHECK(ev.reward_chosen > ev.reward_rejected);
    CHECK_EQ(ev.correct, 3);
    /* no reference logprobs: refused, naming the pair */
    d.seqs[2].ref_logp = NAN;
    CHECK_ERR(dpo_eval(m, &d, pairs, 3, &c, &ev), RL_EINVAL);
    train_free(&tr);
    rm_data_free(&d);
    gpt_destroy(&m);
}

/* ---- data ---------------------------------------------------------------------------------- */

/* Prompt and completion encoded on their own and joined; truncation takes the prompt's start
 * first (one prompt token always stays), then the completion's end; the reference fields of a
 * pairs file, and their errors naming FILE:LINE. */
static void test_load_split(void) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/split", test_tmpdir());
    CHECK_OK(fs_mkdir_p(dir));
    const char corpus[] = "the cat sat on the mat. please be kind. the dog ran.";
    CHECK_OK(tok_train(corpus, sizeof corpus - 1, 270, dir));
    tok_t *tok = tok_load(dir);
    CHECK(tok != NULL);
    if (!tok) return;
    int *p, *c, *ids, n, np, cut;
    size_t lp, lc;
    CHECK_OK(tok_encode(tok, "the cat", 7, 0, &p, &lp));
    CHECK_OK(tok_encode(tok, " sat on", 7, 0, &c, &lc));
    CHECK_OK(rm_encode_split(tok, "the cat", " sat on", 64, &ids, &n, &np, &cut));
    CHECK(!cut && np == (int)lp && n == (int)(lp + lc + 1) && ids[n - 1] == tok_eot(tok));
    CHECK(!memcmp(ids, p, lp * sizeof(int)) && !memcmp(ids + lp, c, lc * sizeof(int)));
    free(ids);
    /* one token too many: the prompt's first goes */
    CHECK_OK(rm_encode_split(tok, "the cat", " sat on", (int)(lp + lc), &ids, &n, &np, &cut));
    CHECK(cut && np == (int)lp - 1 && n == (int)(lp + lc) && ids[0] == p[1]);
    free(ids);
    /* far too long: one prompt token, then the completion's start (no end-of-text) */
    CHECK_OK(rm_encode_split(tok, "the cat", " sat on", 2, &ids, &n, &np, &cut));
    CHECK(cut && np == 1 && n == 2 && ids[0] == p[lp - 1] && ids[1] == c[0]);
    free(ids);
    CHECK_ERR(rm_encode_split(tok, "", " sat", 64, &ids, &n, &np, &cut), RL_EINVAL);
    free(p);
    free(c);

    snprintf(path, sizeof path, "%s/pairs.jsonl", dir);
    const char good[] =
        "{\"prompt\": \"the cat\", \"chosen\": \" sat\", \"rejected\": \" ran\", "
        "\"ref_chosen_logps\": -3.5, \"ref_rejected_logps\": -4.25}\n"
        "{\"prompt\": \"the cat\", \"chosen\": \" sat\", \"rejected\": \" be kind\"}\n";
    CHECK_OK(fs_write_atomic(path, good, sizeof good - 1));
    rm_data_t d;
    CHECK_OK(rm_data_load_split(path, tok, 64, &d));
    CHECK_EQ(d.n_pairs, 2);
    CHECK_EQ(d.n_seqs, 3); /* " sat" once */
    CHECK_EQ(d.n_ref, 2);
    CHECK(d.split && d.seqs[d.pairs[0].w].ref_logp == -3.5 &&
          d.seqs[d.pairs[0].l].ref_logp == -4.25 && isnan(d.seqs[d.pairs[1].l].ref_logp));
    CHECK(d.pairs[0].src == 0 && d.pairs[1].src == 1);
    rm_data_free(&d);
    const char *bad[] = {
        "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\", \"ref_chosen_logps\": -1}\n",
        "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\", \"ref_chosen_logps\": -1, "
        "\"ref_rejected_logps\": \"x\"}\n",
        "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\", \"ref_chosen_logps\": -1, "
        "\"ref_rejected_logps\": -2}\n{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" "
        "d\", \"ref_chosen_logps\": -1.5, \"ref_rejected_logps\": -2}\n"};
    const char *why[] = {":1: ref_chosen_logps and ref_rejected_logps go together",
                         ":1: ref_rejected_logps", ":2: the reference logprob -1.5"};
    for (int i = 0; i < 3; i++) {
        CHECK_OK(fs_write_atomic(path, bad[i], strlen(bad[i])));
        CHECK_ERR(rm_data_load_split(path, tok, 64, &d), RL_EFORMAT);
        if (!strstr(rl_errmsg(), why[i])) TEST__FAIL("error '%s' lacks '%s'", rl_errmsg(), why[i]);
    }
    tok_destroy(&tok);
}

int main(void) {
    ops_set_threads(1);
    RUN(test_pair_loss);
    RUN(test_seq_logps);
    RUN(test_grad);
    RUN(test_step);
    RUN(test_load_split);
    return TEST_REPORT();
}
