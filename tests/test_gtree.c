/* test_gtree.c - the canonical reduction tree: its shape, its cuts, and the accumulator against a
 * plain recursive evaluation - any cut into shards' nodes gives the same bits. */
#include "nn/gtree.h"
#include "base/rng.h"
#include "test.h"

#define N     67 /* floats per value: not a multiple of any vector width */
#define MAXNB 24

static void test_shape(void) {
    CHECK_EQ(gtree_split(2), 1);
    CHECK_EQ(gtree_split(3), 2);
    CHECK_EQ(gtree_split(4), 2);
    CHECK_EQ(gtree_split(5), 4);
    CHECK_EQ(gtree_split(8), 4);
    CHECK_EQ(gtree_split(9), 8);
    CHECK(gtree_is_node(8, 0, 8) && gtree_is_node(8, 0, 4) && gtree_is_node(8, 4, 8));
    CHECK(gtree_is_node(8, 6, 7) && !gtree_is_node(8, 0, 3) && !gtree_is_node(8, 2, 6));
    CHECK(gtree_is_node(7, 4, 7) && gtree_is_node(7, 4, 6) && gtree_is_node(7, 6, 7));
    CHECK(!gtree_is_node(7, 5, 7) && !gtree_is_node(7, 0, 8) && !gtree_is_node(7, 3, 3));
    CHECK(gtree_is_node(5, 0, 4) && gtree_is_node(5, 4, 5) && !gtree_is_node(5, 2, 5));
    CHECK_EQ(gtree_blocks(0, 7), 7);
    CHECK_EQ(gtree_blocks(0, 100), GTREE_BLOCKS_DEFAULT);
    CHECK_EQ(gtree_blocks(3, 100), 3);
    CHECK_EQ(gtree_blocks(0, 0), 1);
    int r0, r1, prev = 0;
    for (int j = 0; j < 3; j++, prev = r1) { /* 7 rows in 3 blocks: 2, 2, 3 */
        gtree_block(7, 3, j, &r0, &r1);
        CHECK_EQ(r0, prev);
        CHECK_EQ(r1 - r0, j < 2 ? 2 : 3);
    }
}

static void cut_is(int nb, int k, const char *want) {
    int lo[MAXNB], hi[MAXNB], n = gtree_cut(nb, k, lo, hi);
    char got[256] = "";
    for (int i = 0; i < n; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s[%d,%d)", i ? " " : "", lo[i],
                 hi[i]);
    CHECK_STREQ(got, want);
}

static void test_cut(void) {
    cut_is(8, 1, "[0,8)");
    cut_is(8, 2, "[0,4) [4,8)");
    cut_is(8, 3, "[0,2) [2,4) [4,8)");
    cut_is(8, 5, "[0,1) [1,2) [2,4) [4,6) [6,8)");
    cut_is(7, 3, "[0,2) [2,4) [4,7)");
    cut_is(7, 4, "[0,2) [2,4) [4,6) [6,7)");
    cut_is(5, 2, "[0,4) [4,5)");
    cut_is(3, 5, "[0,1) [1,2) [2,3)"); /* no more nodes than leaves */
    cut_is(1, 4, "[0,1)");
}

/* The leaves of a test reduction and the work arena they are computed in. */
typedef struct {
    float leaf[MAXNB][N];
    double stat[MAXNB][GTREE_NSTAT];
    int empty[MAXNB];
    float *work;
} leaves_t;

static int leaf_fn(void *ctx, int j, double *stats, int *empty) {
    leaves_t *L = ctx;
    if (L->empty[j]) {
        for (int i = 0; i < N; i++) L->work[i] = NAN; /* must be ignored */
        *empty = 1;
        return 0;
    }
    memcpy(L->work, L->leaf[j], sizeof L->leaf[j]);
    memcpy(stats, L->stat[j], sizeof L->stat[j]);
    return 0;
}

static int load_fn(void *ctx, float *dst, size_t n, int add) {
    const float *src = ctx;
    for (size_t i = 0; i < n; i++) dst[i] = add ? dst[i] + src[i] : src[i];
    return 0;
}

/* The definition: a node's value from its children's, recursively. */
static int ref_value(const leaves_t *L, int lo, int hi, float *out, double *stat) {
    if (hi - lo == 1) {
        memcpy(out, L->leaf[lo], sizeof L->leaf[lo]);
        memcpy(stat, L->stat[lo], sizeof L->stat[lo]);
        return L->empty[lo];
    }
    float r[N];
    double rs[GTREE_NSTAT];
    int h = gtree_split(hi - lo), el = ref_value(L, lo, lo + h, out, stat);
    int er = ref_value(L, lo + h, hi, r, rs);
    if (el) memcpy(out, r, sizeof r), memcpy(stat, rs, sizeof rs);
    if (!el && !er)
        for (int i = 0; i < N; i++) out[i] += r[i];
    for (int k = 0; !el && !er && k < GTREE_NSTAT; k++) stat[k] += rs[k];
    return el && er;
}

static void make_leaves(leaves_t *L, int nb, uint64_t seed) {
    for (int j = 0; j < nb; j++) {
        /* magnitudes spread over 2^-20 .. 2^20: association changes the sums */
        for (int i = 0; i < N; i++)
            L->leaf[j][i] =
                ldexpf((float)rng_normal(seed, (uint64_t)j, (uint64_t)i),
                       (int)(rng_uniform(seed + 1, (uint64_t)j, (uint64_t)i) * 40) - 20);
        L->leaf[j][0] = -0.0f; /* signed zeros follow the rule too */
        for (int k = 0; k < GTREE_NSTAT; k++)
            L->stat[j][k] = rng_normal(seed + 2, (uint64_t)j, (uint64_t)k) * 1e3;
        L->empty[j] = rng_uniform(seed + 3, (uint64_t)j, 0) < 0.2;
    }
}

/* Every cut of T(nb) into k nodes, each computed by its own "shard", the nodes combined by a
 * "shard 0": the bits of the recursive definition, whatever k. */
static void test_any_cut_same_bits(void) {
    static leaves_t L;
    float work[N], node[MAXNB][N], want[N];
    double st[MAXNB][GTREE_NSTAT], want_st[GTREE_NSTAT], got_st[GTREE_NSTAT];
    int differs_from_sequential = 0;
    for (int nb = 1; nb <= 20; nb++) {
        make_leaves(&L, nb, (uint64_t)nb * 7919);
        L.work = work;
        int want_empty = ref_value(&L, 0, nb, want, want_st);
        for (int i = 1; i < N && nb >= 4 && !want_empty; i++) { /* the tree is not a loop */
            float seq = 0;
            for (int j = 0; j < nb; j++) seq += L.empty[j] ? 0.0f : L.leaf[j][i];
            differs_from_sequential |= seq != want[i];
        }
        for (int k = 1; k <= nb + 1; k++) {
            int lo[MAXNB + 1], hi[MAXNB + 1], n = gtree_cut(nb, k, lo, hi), emp[MAXNB], a, b;
            gtree_t g = {0};
            for (int i = 1; i < n; i++) { /* shards 1..n-1: a node each */
                gtree_reset(&g, nb, work, N);
                CHECK_OK(gtree_leaves(&g, lo[i], hi[i], leaf_fn, &L));
                CHECK_OK(gtree_take(&g, st[i], &emp[i], &a, &b));
                CHECK(a == lo[i] && b == hi[i]);
                memcpy(node[i], work, sizeof work);
            }
            gtree_reset(&g, nb, work, N); /* shard 0: its blocks, then the others' nodes */
            CHECK_OK(gtree_leaves(&g, lo[0], hi[0], leaf_fn, &L));
            for (int i = 1; i < n; i++)
                CHECK_OK(gtree_push(&g, lo[i], hi[i], st[i], emp[i], load_fn, node[i]));
            int empty = -1;
            CHECK_OK(gtree_take(&g, got_st, &empty, &a, &b));
            CHECK(a == 0 && b == nb);
            CHECK_EQ(empty, want_empty);
            if (!want_empty) {
                CHECK_EQ(memcmp(work, want, sizeof work), 0);
                CHECK_EQ(memcmp(got_st, want_st, sizeof got_st), 0);
            }
            if (k == 1) { /* one process: at most ceil(log2 nb) arenas besides the work one */
                int used = 0, bound = 0;
                while ((1 << bound) < nb) bound++;
                for (int i = 0; i < GTREE_DEPTH; i++) used += g.arena[i] != NULL;
                CHECK(used <= bound);
            }
            gtree_free(&g);
        }
    }
    CHECK(differs_from_sequential);
}

static void test_misuse(void) {
    static leaves_t L;
    float work[N];
    double st[GTREE_NSTAT] = {0};
    make_leaves(&L, 8, 5);
    memset(L.empty, 0, sizeof L.empty);
    L.work = work;
    gtree_t g = {0};
    int e, a, b;
    gtree_reset(&g, 8, work, N);
    CHECK_ERR(gtree_take(&g, st, &e, &a, &b), RL_EINVAL);                  /* nothing pushed */
    CHECK_ERR(gtree_push(&g, 0, 3, st, 0, load_fn, L.leaf[0]), RL_EINVAL); /* not a node */
    CHECK(strstr(rl_errmsg(), "[0, 3)") != NULL);
    CHECK_OK(gtree_leaves(&g, 0, 2, leaf_fn, &L));
    CHECK_ERR(gtree_push(&g, 4, 8, st, 0, load_fn, L.leaf[0]), RL_EINVAL); /* a gap */
    CHECK(strstr(rl_errmsg(), "block 2 expected") != NULL);
    CHECK_OK(gtree_leaves(&g, 2, 3, leaf_fn, &L));
    CHECK_ERR(gtree_take(&g, st, &e, &a, &b), RL_EINVAL); /* [0,2) and [2,3): not one node */
    gtree_free(&g);
    gtree_free(&g); /* again: safe */
}

int main(void) {
    RUN(test_shape);
    RUN(test_cut);
    RUN(test_any_cut_same_bits);
    RUN(test_misuse);
    return TEST_REPORT();
}
