/* test_rm.c - the reward model: K-wise loss equals the pairwise form, gradients against finite
 * differences, a tiny model learns a constructed preference, metrics on hand-made scores, the
 * data loader and saving. */
#include <sys/stat.h>
#include <unistd.h>

#include "base/fs.h"
#include "nn/hf.h"
#include "nn/ops.h"
#include "align/rm.h"
#include "base/rng.h"
#include "test.h"

enum { V = 16, EOT = 15 };

static gpt_t *tiny_model(int dim, int layers, uint64_t seed) {
    gpt_config_t cfg = {.n_layer = layers,
                        .n_head = 2,
                        .n_embd = dim,
                        .vocab_size = V,
                        .n_positions = 24,
                        .layer_norm_epsilon = 1e-5f,
                        .scalar_head = 1};
    gpt_t *m = gpt_new(&cfg);
    gpt_init_weights(m, seed);
    return m;
}

/* Adds prompt+completion+EOT as one side of a pair. */
static int seq_of(const int *p, int np, const int *c, int nc, int *out) {
    memcpy(out, p, (size_t)np * sizeof(int));
    memcpy(out + np, c, (size_t)nc * sizeof(int));
    out[np + nc] = EOT;
    return np + nc + 1;
}

/* One prompt, K = 3 completions, all three pairs (a > b, a > c, b > c) with margins. */
static void three_way(rm_data_t *d) {
    static const int p[] = {3, 4, 5}, a[] = {1, 2}, b[] = {6, 7, 8, 9}, c[] = {10};
    int sa[16], sb[16], sc[16];
    int na = seq_of(p, 3, a, 2, sa), nb = seq_of(p, 3, b, 4, sb), nc = seq_of(p, 3, c, 1, sc);
    memset(d, 0, sizeof *d);
    CHECK_OK(rm_data_add(d, "p", sa, na, sb, nb, 0.5f));
    CHECK_OK(rm_data_add(d, "p", sa, na, sc, nc, 1.0f));
    CHECK_OK(rm_data_add(d, "p", sb, nb, sc, nc, 0.75f));
    CHECK_OK(rm_data_finish(d));
}

/*
 * The loss rm_grad reports for `items`, recomputed by hand in double from rewards of forward
 * passes with the same batches (the sequences in item order, `per` to a forward, the same
 * padding): the same inputs to the same kernels, so the same reward bits. *bound is then the
 * loss arithmetic's: x = r_w - r_l - margin_coef * margin and s = r_w + r_l in double, -log
 * sigmoid(x) (1-Lipschitz) and c s^2, a few 2^-53 each.
 */
static double hand_loss(gpt_t *m, const rm_data_t *d, const int *items, int n, const rm_opts_t *o,
                        int per, float scale, double *bound) {
    int seq[64], ns = 0;
    for (int i = 0; i < n; i++) {
        if (o->items == RM_ITEMS_GROUPS)
            for (int k = 0; k < d->groups[items[i]].n_seq; k++)
                seq[ns++] = d->groups[items[i]].seq0 + k;
        else
            seq[ns++] = d->pairs[items[i]].w, seq[ns++] = d->pairs[items[i]].l;
    }
    float r[64];
    CHECK_OK(rm_data_rewards(m, d, seq, ns, per, o->pad_id, r));
    double loss = 0;
    *bound = 0;
    for (int i = 0, base = 0; i < n; i++) {
        int p0 = o->items == RM_ITEMS_GROUPS ? d->groups[items[i]].pair0 : items[i];
        int np = o->items == RM_ITEMS_GROUPS ? d->groups[items[i]].n_pair : 1;
        int first = o->items == RM_ITEMS_GROUPS ? d->groups[items[i]].seq0 : 0;
        for (int p = p0; p < p0 + np; p++) {
            const rm_pair_t *pr = &d->pairs[p];
            int bw = o->items == RM_ITEMS_GROUPS ? base + pr->w - first : base;
            int bl = o->items == RM_ITEMS_GROUPS ? base + pr->l - first : base + 1;
            double mg = (double)o->margin_coef * pr->margin, x = (double)r[bw] - r[bl] - mg;
            double sum = (double)r[bw] + r[bl], c = (double)o->center_coef * sum * sum;
            double nls = -log(1.0 / (1.0 + exp(-x)));
            loss += (double)scale / np * (nls + c);
            *bound += (double)scale / np * test_gamma64(16) *
                      (fabs(r[bw]) + fabs(r[bl]) + fabs(mg) + nls + c + 1);
        }
        base += o->items == RM_ITEMS_GROUPS ? d->groups[items[i]].n_seq : 2;
    }
    return loss;
}

/*
 * Two batchings of the whole network give gradients that differ by the order of OpenBLAS's sums
 * in every layer (rows per product, padding), for which no element-wise bound carries through
 * the network. So this is not a derived tolerance: measured, the largest difference is 2e-7 to
 * 6e-7 of the largest gradient under OpenBLAS's Haswell, SkylakeX, Sandybridge and Zen kernels,
 * while a wrong row, pair or scale changes gradients by O(1) of it; 1e-5 separates the two.
 */
static int grads_agree(const float *a, const float *b, size_t n) {
    double amax, diff = 0, am = 0;
    for (size_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs((double)a[i] - b[i]));
        am = fmax(am, fabs((double)a[i]));
    }
    amax = am;
    fprintf(stderr, "  grad max %.3g, max diff %.3g\n", amax, diff);
    return amax > 1e-3 && diff <= 1e-5 * amax;
}

/* The K-wise item (each completion forwarded once) and the three pairs as separate items give
 * the same gradient arena (up to batching, see grads_agree), with and without margin and
 * centering terms; and each one's loss equals a hand computation from its rewards. */
static void test_kwise_equals_pairwise(void) {
    rm_data_t d;
    three_way(&d);
    CHECK_EQ(d.n_groups, 1);
    CHECK_EQ(d.n_seqs, 3);
    CHECK_EQ(d.n_pairs, 3);
    gpt_t *m = tiny_model(16, 2, 7);
    for (int i = 0; i < 16; i++) m->params.headw[i] *= 50.0f; /* rewards of order 1 */
    float *g1 = malloc(m->num_params * sizeof(float));
    float margins[2] = {0.0f, 0.8f}, centers[2] = {0.0f, 0.05f};
    for (int v = 0; v < 2; v++) {
        rm_opts_t og = {RM_ITEMS_GROUPS, margins[v], centers[v], 8, 0};
        rm_opts_t op = {RM_ITEMS_PAIRS, margins[v], centers[v], 1, 0};
        rm_grad_stats_t sg = {0}, sp = {0};
        CHECK_OK(gpt_grads_alloc(m));
        gpt_zero_grad(m);
        int g0 = 0, pp[3] = {0, 1, 2};
        CHECK_OK(rm_grad(m, &d, &g0, 1, &og, 1.0f, &sg));
        memcpy(g1, m->grads_mem, m->num_params * sizeof(float));
        gpt_zero_grad(m);
        CHECK_OK(rm_grad(m, &d, pp, 3, &op, 1.0f / 3, &sp));
        CHECK_EQ(sg.pairs, 3);
        CHECK_EQ(sp.pairs, 3);
        CHECK_EQ(sg.seqs, 3); /* each completion forwarded once ... */
        CHECK_EQ(sp.seqs, 6); /* ... against twice per pair */
        CHECK_NEAR(sg.correct, sp.correct, 0);
        fprintf(stderr, "  margin %g center %g: loss %.6f\n", margins[v], centers[v], sg.loss);
        CHECK(grads_agree(g1, m->grads_mem, m->num_params));
        /* each loss by hand from the rewards of its own forward passes */
        double bound, ref = hand_loss(m, &d, &g0, 1, &og, 3, 1.0f, &bound);
        CHECK_NEAR(sg.loss, ref, bound);
        ref = hand_loss(m, &d, pp, 3, &op, 2, 1.0f / 3, &bound);
        CHECK_NEAR(sp.loss, ref, bound);
    }
    free(g1);
    gpt_destroy(&m);
    rm_data_free(&d);
}

/* Micro-batching and the padding it brings change nothing (up to batching, see grads_agree). */
static void test_microbatch_invariance(void) {
    rm_data_t d;
    three_way(&d);
    gpt_t *m = tiny_model(16, 2, 8);
    for (int i = 0; i < 16; i++) m->params.headw[i] *= 50.0f;
    float *g1 = malloc(m->num_params * sizeof(float));
    int pp[3] = {2, 0, 1};
    rm_opts_t o1 = {RM_ITEMS_PAIRS, 0, 0, 1, 0}, o6 = {RM_ITEMS_PAIRS, 0, 0, 6, EOT};
    rm_grad_stats_t s1 = {0}, s6 = {0};
    CHECK_OK(gpt_grads_alloc(m));
    gpt_zero_grad(m);
    CHECK_OK(rm_grad(m, &d, pp, 3, &o1, 0.5f, &s1));
    memcpy(g1, m->grads_mem, m->num_params * sizeof(float));
    gpt_zero_grad(m);
    CHECK_OK(rm_grad(m, &d, pp, 3, &o6, 0.5f, &s6));
    CHECK(grads_agree(g1, m->grads_mem, m->num_params));
    double bound, ref = hand_loss(m, &d, pp, 3, &o1, 2, 0.5f, &bound);
    CHECK_NEAR(s1.loss, ref, bound);
    ref = hand_loss(m, &d, pp, 3, &o6, 6, 0.5f, &bound);
    CHECK_NEAR(s6.loss, ref, bound);
    /* slices of a step summed = the whole step (what a sharded learner does): with one pair per
     * micro-batch the slices run the very forwards and backwards of the whole step, in the same
     * order, accumulating into the same arena: the same bits */
    gpt_zero_grad(m);
    CHECK_OK(rm_grad(m, &d, pp, 1, &o1, 0.5f, NULL));
    CHECK_OK(rm_grad(m, &d, pp + 1, 2, &o1, 0.5f, NULL));
    CHECK_EQ(memcmp(g1, m->grads_mem, m->num_params * sizeof(float)), 0);
    free(g1);
    gpt_destroy(&m);
    rm_data_free(&d);
}

/* Loss of the K-wise item as a function of the parameters, for finite differences. */
static double loss_at(gpt_t *m, const rm_data_t *d, const rm_opts_t *o) {
    rm_grad_stats_t s = {0};
    int g0 = 0;
    gpt_zero_grad(m);
    CHECK_OK(rm_grad(m, d, &g0, 1, o, 1.0f, &s));
    return s.loss;
}

/* The analytic gradient against central differences: the head (its bias moves every reward
 * alike, so only the centering term sees it; its weights move rewards apart) and the trunk. */
static void test_grad_finite_differences(void) {
    rm_data_t d;
    three_way(&d);
    gpt_t *m = tiny_model(16, 1, 9);
    for (int i = 0; i < 16; i++) m->params.headw[i] *= 40.0f;
    rm_opts_t o = {RM_ITEMS_GROUPS, 0.5f, 0.1f, 8, 0};
    CHECK_OK(gpt_grads_alloc(m));
    float *g = malloc(m->num_params * sizeof(float));
    loss_at(m, &d, &o);
    memcpy(g, m->grads_mem, m->num_params * sizeof(float));
    size_t at[6] = {
        (size_t)(m->params.headb - m->params_mem),
        (size_t)(m->params.headw - m->params_mem),
        (size_t)(m->params.headw + 5 - m->params_mem),
        (size_t)(m->params.lnfw + 3 - m->params_mem),
        (size_t)(m->params.wte + 10 * 16 - m->params_mem), /* token 10: only in completion c */
        (size_t)(m->params.lnfb + 7 - m->params_mem)};
    for (int k = 0; k < 6; k++) {
        float keep = m->params_mem[at[k]], h = 1e-2f;
        m->params_mem[at[k]] = keep + h;
        double lp = loss_at(m, &d, &o);
        m->params_mem[at[k]] = keep - h;
        double lm = loss_at(m, &d, &o);
        m->params_mem[at[k]] = keep;
        double fd = (lp - lm) / (2.0 * h);
        fprintf(stderr, "  param %zu: analytic %.6g, numeric %.6g\n", at[k], g[at[k]], fd);
        /* central differences, h = 1e-2: truncation h^2/6 |f'''| = 1.7e-5 |f'''|, rounding of
         * the loss (rewards of O(1) from fp32 forwards, ~1e-6 each) over 2h ~ 1e-4; 2e-3 and
         * 2e-2 |fd| cover |f'''| up to ~100 and 1000 |f'| (rewards scaled by 40 make the head's
         * derivatives large), as in test_gpt */
        CHECK_NEAR(g[at[k]], fd, 2e-3 + 2e-2 * fabs(fd));
        CHECK(fabs(g[at[k]]) > 1e-4);
    }
    free(g);
    gpt_destroy(&m);
    rm_data_free(&d);
}

/* Grouping by key in any line order, completions stored once, identical sides skipped. */
static void test_data_grouping(void) {
    rm_data_t d = {0};
    int a[] = {1, 2, EOT}, b[] = {3, EOT}, c[] = {4, 4, 4, EOT}, e[] = {5, EOT};
    CHECK_OK(rm_data_add(&d, "x", a, 3, b, 2, 0));
    CHECK_OK(rm_data_add(&d, "y", e, 2, b, 2, 0)); /* same tokens as in x: its own sequence */
    CHECK_OK(rm_data_add(&d, "x", c, 4, b, 2, 0));
    CHECK_OK(rm_data_add(&d, "x", a, 3, a, 3, 0)); /* no preference: skipped */
    CHECK_OK(rm_data_add(&d, "z", a, 3, a, 3, 0)); /* a group with nothing left: dropped */
    CHECK_OK(rm_data_add(&d, "x", a, 3, c, 4, 0.25f));
    CHECK_ERR(rm_data_add(&d, "x", a, 0, c, 4, 0), RL_EINVAL);
    CHECK_OK(rm_data_finish(&d));
    CHECK_EQ(d.n_groups, 2);
    CHECK_EQ(d.n_lines, 6);
    CHECK_EQ(d.n_skipped, 2);
    CHECK_STREQ(d.groups[0].key, "x");
    CHECK_EQ(d.groups[0].n_seq, 3);
    CHECK_EQ(d.groups[0].n_pair, 3);
    CHECK_EQ(d.groups[1].seq0, 3);
    CHECK_EQ(d.groups[1].pair0, 3);
    CHECK_EQ(d.n_seqs, 5);
    const rm_pair_t *p = &d.pairs[2];
    CHECK_EQ(d.seqs[p->w].len, 3);
    CHECK_EQ(d.seqs[p->l].len, 4);
    CHECK_NEAR(p->margin, 0.25, 0);
    CHECK_EQ(d.ids[d.seqs[p->l].off], 4);
    for (int i = 0; i < d.n_pairs; i++) {
        const rm_group_t *g = &d.groups[d.pairs[i].group];
        CHECK(d.pairs[i].w >= g->seq0 && d.pairs[i].w < g->seq0 + g->n_seq);
        CHECK(d.pairs[i].l >= g->seq0 && d.pairs[i].l < g->seq0 + g->n_seq);
    }
    rm_data_free(&d);
    rm_data_free(&d); /* safe twice */
}

/* The split depends only on the key: same decisions in any order, about the asked fraction. */
static void test_split(void) {
    enum { N = 1000 };
    rm_data_t d1 = {0}, d2 = {0};
    int a[] = {1, EOT}, b[] = {2, EOT};
    char key[32];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "prompt-%d", i);
        CHECK_OK(rm_data_add(&d1, key, a, 2, b, 2, 0));
        snprintf(key, sizeof key, "prompt-%d", N - 1 - i);
        CHECK_OK(rm_data_add(&d2, key, a, 2, b, 2, 0));
    }
    CHECK_OK(rm_data_finish(&d1));
    CHECK_OK(rm_data_finish(&d2));
    unsigned char h1[N], h2[N], h3[N];
    int n1 = rm_split(&d1, 0.2, 0, h1), n2 = rm_split(&d2, 0.2, 0, h2);
    CHECK_EQ(n1, n2);
    int same = 1;
    for (int i = 0; i < N; i++) same &= h1[i] == h2[N - 1 - i];
    CHECK(same);
    fprintf(stderr, "  held out %d of %d\n", n1, N);
    CHECK(n1 > 150 && n1 < 250);
    int n3 = rm_split(&d1, 0.2, 1, h3), differ = 0;
    for (int i = 0; i < N; i++) differ += h1[i] != h3[i];
    CHECK(n3 > 150 && n3 < 250 && differ > 100); /* another seed, another split */
    CHECK_EQ(rm_split(&d1, 0.0, 0, h3), 0);
    CHECK_EQ(rm_split(&d1, 1.0, 0, h3), N);
    int perm[50], seen[50] = {0}, moved = 0;
    rm_epoch_order(50, 3, 1, perm);
    for (int i = 0; i < 50; i++) seen[perm[i]]++, moved += perm[i] != i;
    int ok = 1;
    for (int i = 0; i < 50; i++) ok &= seen[i] == 1;
    CHECK(ok && moved > 10);
    rm_data_free(&d1);
    rm_data_free(&d2);
}

/* Completions holding more of token 1 ("please") are preferred; prompts and the rest of the
 * completions are random. Three completions per prompt with 0, 1 and 2 of them. */
static void build_preference(rm_data_t *d, int n_prompts, uint64_t seed) {
    memset(d, 0, sizeof *d);
    uint64_t ctr = 0;
    for (int q = 0; q < n_prompts; q++) {
        int p[6], np = 2 + (int)(rng_uniform(seed, 1, ctr++) * 4), seqs[3][24], lens[3];
        for (int i = 0; i < np; i++) p[i] = 2 + (int)(rng_uniform(seed, 1, ctr++) * 12);
        for (int k = 0; k < 3; k++) {
            int c[8], nc = 3 + (int)(rng_uniform(seed, 1, ctr++) * 4);
            for (int i = 0; i < nc; i++) c[i] = 2 + (int)(rng_uniform(seed, 1, ctr++) * 12);
            for (int j = 0; j < k; j++) /* k copies of token 1 at random places */
                c[(int)(rng_uniform(seed, 1, ctr++) * nc) % nc] = 1;
            int ones = 0;
            for (int i = 0; i < nc; i++) ones += c[i] == 1;
            if (ones != k) c[(c[0] == 1) ? 1 : 0] = 1; /* two draws hit one place */
            lens[k] = seq_of(p, np, c, nc, seqs[k]);
        }
        char key[16];
        snprintf(key, sizeof key, "q%d", q);
        CHECK_OK(rm_data_add(d, key, seqs[2], lens[2], seqs[1], lens[1], 1));
        CHECK_OK(rm_data_add(d, key, seqs[2], lens[2], seqs[0], lens[0], 1));
        CHECK_OK(rm_data_add(d, key, seqs[1], lens[1], seqs[0], lens[0], 1));
    }
    CHECK_OK(rm_data_finish(d));
}

/* Held-out accuracy of the model over the pairs of the held-out groups. */
static double heldout_accuracy(gpt_t *m, const rm_data_t *d, const unsigned char *held,
                               rm_metrics_t *mt) {
    int *all = malloc((size_t)d->n_seqs * sizeof(int));
    float *r = malloc((size_t)d->n_seqs * sizeof(float)), *rc = malloc(d->n_pairs * sizeof(float));
    float *rr = malloc(d->n_pairs * sizeof(float));
    for (int i = 0; i < d->n_seqs; i++) all[i] = i;
    CHECK_OK(rm_data_rewards(m, d, all, d->n_seqs, 32, EOT, r));
    long n = 0;
    for (int p = 0; p < d->n_pairs; p++)
        if (held[d->pairs[p].group]) rc[n] = r[d->pairs[p].w], rr[n++] = r[d->pairs[p].l];
    rm_metrics(rc, rr, n, 10, mt);
    free(all);
    free(r);
    free(rc);
    free(rr);
    return mt->accuracy;
}

static void test_learns_preference(void) {
    rm_data_t d;
    build_preference(&d, 240, 5);
    unsigned char held[240];
    int nh = rm_split(&d, 0.25, 0, held), train[240], nt = 0;
    for (int g = 0; g < d.n_groups; g++)
        if (!held[g]) train[nt++] = g;
    CHECK(nh > 30 && nt > 150);
    gpt_t *m = tiny_model(32, 2, 11);
    train_t t;
    adamw_sched_t s = {ADAMW_SCHED_WARMUP, 3e-3f, 0, 10, 0};
    CHECK_OK(train_init(&t, m, &s, 0.0f, 1.0f));
    rm_opts_t o = {RM_ITEMS_GROUPS, 0, 0, 64, EOT};
    rm_metrics_t before, after;
    double acc0 = heldout_accuracy(m, &d, held, &before);
    int *perm = malloc((size_t)nt * sizeof(int)), items[8], step = 0;
    double last_loss = 0;
    for (int epoch = 0; epoch < 6; epoch++) {
        rm_epoch_order(nt, 1, (uint64_t)epoch, perm);
        for (int i = 0; i + 8 <= nt; i += 8, step++) {
            for (int k = 0; k < 8; k++) items[k] = train[perm[i + k]];
            rm_grad_stats_t gs = {0};
            rm_update_stats_t us;
            CHECK_OK(rm_step(&t, &d, items, 8, &o, &gs, &us));
            last_loss = gs.loss;
        }
    }
    double acc = heldout_accuracy(m, &d, held, &after);
    fprintf(stderr, "  %d steps: held-out accuracy %.3f -> %.3f (%ld pairs), loss %.3f, ECE %.3f\n",
            step, acc0, acc, after.pairs, last_loss, after.ece);
    CHECK(acc > 0.9);
    CHECK(after.loss < 0.5 * before.loss);
    CHECK_EQ(t.step, step);
    free(perm);
    train_free(&t);
    gpt_destroy(&m);
    rm_data_free(&d);
}

static int load_arena(void *ctx, float *dst, size_t n, int add) {
    const float *src = ctx;
    for (size_t i = 0; i < n; i++) dst[i] = add ? dst[i] + src[i] : src[i];
    return 0;
}

/* A step of 9 K-wise items in 4 blocks (2, 2, 2, 3 items; micro-batches of 4 sequences inside a
 * block): the blocks shared out as the nodes of any cut of the tree, each node computed on its own
 * copy of the model from its items only, combine to the bits and figures of rm_step. */
static void test_blocks_any_cut(void) {
    enum { B = 9, NB = 4 };
    rm_data_t d;
    build_preference(&d, 40, 9);
    gpt_t *m = tiny_model(16, 1, 12), *c = tiny_model(16, 1, 12);
    size_t np = m->num_params;
    int items[B];
    for (int i = 0; i < B; i++) items[i] = (i * 7 + 2) % d.n_groups;
    rm_opts_t o = {RM_ITEMS_GROUPS, 0.3f, 0.01f, 4, EOT};
    train_t t;
    adamw_sched_t s = {ADAMW_SCHED_CONSTANT, 1e-3f, 0, 0, 0};
    CHECK_OK(train_init(&t, m, &s, 0.0f, 0.0f));
    t.grad_blocks = NB;
    rm_grad_stats_t want = {0};
    /* the step's gradient, before rm_update touches anything but the parameters */
    gtree_t g = {0};
    double st[GTREE_NSTAT], nst[NB][GTREE_NSTAT];
    int empty, a, b, lo[NB], hi[NB], nemp[NB];
    CHECK_OK(gpt_grads_alloc(c));
    gtree_reset(&g, NB, c->grads_mem, np);
    CHECK_OK(rm_grad_leaves(&g, c, &d, items, B, NB, 0, NB, &o));
    CHECK_OK(gtree_take(&g, st, &empty, &a, &b));
    float *full = malloc(np * sizeof(float)), *node[NB];
    memcpy(full, c->grads_mem, np * sizeof(float));
    CHECK_OK(rm_step(&t, &d, items, B, &o, &want, NULL));
    CHECK_EQ(memcmp(full, m->grads_mem, np * sizeof(float)), 0);
    CHECK_EQ(want.loss, st[RM_STAT_LOSS]);
    CHECK_EQ(want.pairs, 9 * 3); /* three pairs per prompt */
    for (int k = 2; k <= NB; k++) {
        int n = gtree_cut(NB, k, lo, hi);
        for (int i = 0; i < n; i++) { /* every node alone, from its own items */
            int i0, i1;
            gtree_block(B, NB, lo[i], &i0, &i1);
            gtree_reset(&g, NB, c->grads_mem, np);
            CHECK_OK(rm_grad_leaves(&g, c, &d, items + i0, B, NB, lo[i], hi[i], &o));
            CHECK_OK(gtree_take(&g, nst[i], &nemp[i], &a, &b));
            node[i] = malloc(np * sizeof(float));
            memcpy(node[i], c->grads_mem, np * sizeof(float));
        }
        gtree_reset(&g, NB, c->grads_mem, np);
        for (int i = 0; i < n; i++) {
            CHECK_OK(gtree_push(&g, lo[i], hi[i], nst[i], nemp[i], load_arena, node[i]));
            free(node[i]);
        }
        double got[GTREE_NSTAT];
        CHECK_OK(gtree_take(&g, got, &empty, &a, &b));
        CHECK_EQ(memcmp(full, c->grads_mem, np * sizeof(float)), 0);
        CHECK_EQ(memcmp(got, st, sizeof got), 0);
    }
    free(full);
    gtree_free(&g);
    train_free(&t);
    gpt_destroy(&m);
    gpt_destroy(&c);
    rm_data_free(&d);
}

/* Accuracy, loss, ECE and reward statistics on hand-made scores. */
static void test_metrics(void) {
    rm_metrics_t mt;
    float c1[4] = {2, 1, 0, 0}, r1[4] = {0, 1, 1, -3};
    rm_metrics(c1, r1, 4, 10, &mt);
    CHECK_EQ(mt.pairs, 4);
    CHECK_NEAR(mt.accuracy, (1 + 0.5 + 0 + 1) / 4.0, 1e-12); /* a tie counts half */
    /* the same function of exact small differences in double: a few 2^-53 */
    const double g64 = test_gamma64(16);
    double ref = (log1p(exp(-2.0)) + log(2.0) + log1p(exp(1.0)) + log1p(exp(-3.0))) / 4;
    CHECK_NEAR(mt.loss, ref, g64 * (ref + 1));
    /* Every pair at p = 0.75 and all preferred: (0.75, 1) and (0.25, 0) -> ECE 0.25. The
     * scores are floats: log 3 and l3 + 1, l3 - 2 each rounded, so x = c - r is within
     * u (2 log 3 + 2) of log 3, p within a quarter of that of 0.75 (sigmoid' <= 1/4), and the
     * ECE, a weighted mean of |mean p - mean y| over bins, within that too. */
    float l3 = (float)log(3.0), c2[3] = {l3, l3 + 1, l3 - 2}, r2[3] = {0, 1, -2};
    const double ece_tol = TEST_U32 * (2 * log(3.0) + 2) / 4 + g64;
    rm_metrics(c2, r2, 3, 10, &mt);
    CHECK_NEAR(mt.ece, 0.25, ece_tol);
    CHECK_NEAR(mt.accuracy, 1.0, 0);
    /* three of four right at p = 0.75: calibrated, ECE 0 (within the same rounding of log 3) */
    float c3[4] = {l3, l3, l3, 0}, r3[4] = {0, 0, 0, l3};
    rm_metrics(c3, r3, 4, 10, &mt);
    CHECK_NEAR(mt.ece, 0.0, ece_tol);
    CHECK_NEAR(mt.accuracy, 0.75, 0); /* 3 / 4, exact */
    /* confident and right: ECE = 1 - sigmoid(30) = 9.4e-14; confident and wrong: 1 minus that */
    float big[2] = {30, 30}, zero[2] = {0, 0};
    const double s30 = 1 / (1 + exp(30.0));
    rm_metrics(big, zero, 2, 10, &mt);
    CHECK_NEAR(mt.ece, s30, g64);
    rm_metrics(zero, big, 2, 10, &mt);
    CHECK_NEAR(mt.ece, 1.0 - s30, g64);
    CHECK_NEAR(mt.accuracy, 0.0, 0);
    /* ties: p = 0.5 both ways, half preferred: calibrated, exactly */
    rm_metrics(zero, zero, 2, 10, &mt);
    CHECK_NEAR(mt.ece, 0.0, 0);
    CHECK_NEAR(mt.loss, log(2.0), g64);
    /* two bins: p = 0.6 and 0.4 in bins 1 and 0; the float log 1.5 moves p by u log 1.5 / 4 */
    float c4[1] = {(float)log(1.5)}, r4[1] = {0};
    rm_metrics(c4, r4, 1, 2, &mt);
    CHECK_NEAR(mt.ece, 0.5 * 0.4 + 0.5 * 0.4, TEST_U32 * log(1.5) / 4 + g64);
    rm_metrics(NULL, NULL, 0, 10, &mt);
    CHECK(isnan(mt.accuracy) && mt.pairs == 0);

    rm_stats_t st;
    float r[4] = {1, 2, 3, 4};
    rm_stats_compute(r, 4, &st);
    CHECK_NEAR(st.mean, 2.5, 0);       /* small integers: exact */
    CHECK_NEAR(st.std, sqrt(1.25), 0); /* exactly 1.25 under a correctly rounded sqrt */
    CHECK_EQ(st.count, 4);
    float one = 7;
    rm_stats_compute(&one, 1, &st);
    CHECK_NEAR(st.mean, 7, 0);
    CHECK_NEAR(st.std, 0, 0);
}

/* Loading pairs text through a tokenizer, left truncation, errors naming file:line. */
static void test_load_file(void) {
    char dir[512], path[600], tdir[600];
    snprintf(dir, sizeof dir, "%s/load", test_tmpdir());
    snprintf(tdir, sizeof tdir, "%s/tok", dir);
    CHECK_OK(fs_mkdir_p(tdir));
    const char corpus[] = "the cat sat on the mat. please be kind. the dog ran.";
    CHECK_OK(tok_train(corpus, sizeof corpus - 1, 270, tdir));
    tok_t *tok = tok_load(tdir);
    CHECK(tok != NULL);
    if (!tok) return;
    int *ids, n, cut;
    CHECK_OK(rm_encode(tok, "the cat", " sat", 64, &ids, &n, &cut));
    CHECK(!cut && n >= 2 && ids[n - 1] == tok_eot(tok));
    int full = n, *keep = ids;
    CHECK_OK(rm_encode(tok, "the cat", " sat", 2, &ids, &n, &cut));
    CHECK(cut && n == 2 && ids[1] == tok_eot(tok) && ids[0] == keep[full - 2]);
    free(ids);
    free(keep);

    snprintf(path, sizeof path, "%s/pairs.jsonl", dir);
    const char good[] =
        "{\"prompt_id\": 7, \"prompt\": \"the cat\", \"chosen\": \" please\", \"rejected\": \" "
        "ran\", \"margin\": 0.5}\n"
        "\n"
        "{\"prompt\": \"the dog\", \"chosen\": \" sat\", \"rejected\": \" ran\"}\n"
        "{\"prompt_id\": 7, \"prompt\": \"the cat\", \"chosen\": \" please\", \"rejected\": \" "
        "mat\"}\n"
        "{\"prompt_id\": \"7\", \"prompt\": \"the cat\", \"chosen\": \" mat\", \"rejected\": \" "
        "ran\", \"margin\": null}\n";
    CHECK_OK(fs_write_atomic(path, good, sizeof good - 1));
    rm_data_t d;
    CHECK_OK(rm_data_load(path, tok, 64, &d));
    CHECK_EQ(d.n_groups, 2);
    CHECK_EQ(d.n_pairs, 4);
    CHECK_STREQ(d.groups[0].key, "7");
    CHECK_EQ(d.groups[0].n_seq, 3);
    CHECK_EQ(d.groups[0].n_pair, 3);
    CHECK_STREQ(d.groups[1].key, "the dog");
    CHECK_NEAR(d.pairs[0].margin, 0.5, 0);
    rm_data_free(&d);
    CHECK_OK(rm_data_load(path, tok, 3, &d));
    CHECK_EQ(d.n_truncated, 8);
    rm_data_free(&d);

    struct {
        const char *text, *want;
    } bad[] = {
        {"{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", "
         "\"chosen\": 3, \"rejected\": \"c\"}\n",
         "pairs.jsonl:2"},
        {"{\"prompt\": \"a\", \"chosen\": \"b\"}\n", "pairs.jsonl:1"},
        {"{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\", \"margin\": \"x\"}\n",
         "pairs.jsonl:1"},
        {"{\"prompt_id\": 1, \"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n"
         "{\"prompt_id\": 1, \"prompt\": \"z\", \"chosen\": \"b\", \"rejected\": \"c\"}\n",
         "pairs.jsonl:2: prompt_id '1'"},
        {"{\"prompt_id\": [1], \"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n",
         "pairs.jsonl:1"},
        {"{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"b\"}\n", "no preference pairs"},
        {"not json\n", "pairs.jsonl:1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_OK(fs_write_atomic(path, bad[i].text, strlen(bad[i].text)));
        CHECK_ERR(rm_data_load(path, tok, 64, &d), RL_EFORMAT);
        if (!strstr(rl_errmsg(), bad[i].want))
            TEST__FAIL("case %zu: '%s' not in '%s'", i, bad[i].want, rl_errmsg());
        CHECK(d.n_pairs == 0 && d.groups == NULL);
    }
    tok_destroy(&tok);
}

/* A trunk without a head gets one; saving writes a complete directory with the statistics and
 * replaces an earlier save, but never a directory that is not a model. */
static void test_save_load(void) {
    char dir[512], lm[600], out[600], other[600], f[700];
    snprintf(dir, sizeof dir, "%s/save", test_tmpdir());
    snprintf(lm, sizeof lm, "%s/lm", dir);
    snprintf(out, sizeof out, "%s/rm", dir);
    snprintf(other, sizeof other, "%s/other", dir);
    gpt_config_t cfg = {.n_layer = 1,
                        .n_head = 2,
                        .n_embd = 16,
                        .vocab_size = V,
                        .n_positions = 24,
                        .layer_norm_epsilon = 1e-5f,
                        .scalar_head = 0};
    gpt_t *base = gpt_new(&cfg);
    gpt_init_weights(base, 3);
    CHECK_OK(hf_save(base, lm));
    gpt_t *m = rm_load(lm, 4);
    CHECK(m && m->cfg.scalar_head);
    if (!m) return;
    CHECK_EQ(memcmp(m->params_mem, base->params_mem, base->num_params * sizeof(float)), 0);
    double ss = 0;
    for (int i = 0; i < 16; i++) ss += (double)m->params.headw[i] * m->params.headw[i];
    CHECK(ss > 0 && sqrt(ss / 16) < 0.1);
    rm_stats_t st = {0.25, 1.5, 42}, back;
    CHECK_OK(rm_save(m, &st, NULL, out));
    CHECK_OK(rm_stats_read(out, &back));
    CHECK_NEAR(back.mean, 0.25, 0);
    CHECK_NEAR(back.std, 1.5, 0);
    CHECK_EQ(back.count, 42);
    m->params.headb[0] = 3.0f;
    st.mean = -1;
    CHECK_OK(rm_save(m, &st, NULL, out)); /* replaces the earlier save */
    gpt_t *again = rm_load(out, 99);
    CHECK(again && again->params.headb[0] == 3.0f);
    CHECK_OK(rm_stats_read(out, &back));
    CHECK_NEAR(back.mean, -1, 0);
    snprintf(f, sizeof f, "%s.staging-%ld", out, (long)getpid());
    struct stat sb;
    CHECK(stat(f, &sb) != 0); /* nothing left behind */
    snprintf(f, sizeof f, "%s.replaced-%ld", out, (long)getpid());
    CHECK(stat(f, &sb) != 0);
    CHECK_ERR(rm_stats_read(lm, &back), RL_ENOTFOUND);
    snprintf(f, sizeof f, "%s/notes.txt", other);
    CHECK_OK(fs_mkdir_p(other));
    CHECK_OK(fs_write_atomic(f, "keep", 4));
    CHECK_ERR(rm_save(m, &st, NULL, other), RL_EINVAL);
    CHECK(stat(f, &sb) == 0);
    gpt_destroy(&again);
    gpt_destroy(&m);
    gpt_destroy(&base);
}

/* rm_join: end-of-text appended only when missing, the end kept when too long */
static void test_join(void) {
    int p[] = {5, 6, 7}, c1[] = {8, 9}, c2[] = {8, 99}, *ids;
    int n;
    CHECK_OK(rm_join(p, 3, c1, 2, 99, 64, &ids, &n));
    CHECK_EQ(n, 6);
    CHECK(n == 6 && ids[0] == 5 && ids[3] == 8 && ids[4] == 9 && ids[5] == 99);
    free(ids);
    CHECK_OK(rm_join(p, 3, c2, 2, 99, 64, &ids, &n)); /* already ends with it */
    CHECK_EQ(n, 5);
    CHECK(n == 5 && ids[4] == 99);
    free(ids);
    CHECK_OK(rm_join(p, 3, c1, 2, -1, 64, &ids, &n)); /* no end-of-text id: nothing added */
    CHECK_EQ(n, 5);
    free(ids);
    CHECK_OK(rm_join(p, 3, c1, 2, 99, 4, &ids, &n)); /* 6 ids, the last 4 kept */
    CHECK_EQ(n, 4);
    CHECK(n == 4 && ids[0] == 7 && ids[1] == 8 && ids[3] == 99);
    free(ids);
    CHECK_OK(rm_join(p, 3, c1, 0, 99, 64, &ids, &n)); /* an empty completion */
    CHECK(n == 4 && ids[3] == 99);
    free(ids);
    CHECK_EQ(rm_join(p, 3, c1, 2, 99, 0, &ids, &n), RL_EINVAL);
}

int main(void) {
    RUN(test_join);
    ops_set_threads(1);
    RUN(test_kwise_equals_pairwise);
    RUN(test_microbatch_invariance);
    RUN(test_grad_finite_differences);
    RUN(test_data_grouping);
    RUN(test_split);
    RUN(test_metrics);
    RUN(test_load_file);
    RUN(test_save_load);
    RUN(test_learns_preference);
    RUN(test_blocks_any_cut);
    return TEST_REPORT();
}
