/*
 * test_annot_pool.c - the assignment of prompts to human annotators: overlap reached by
 * distinct annotators, the load spread, a prompt never shown twice to one annotator (a skip
 * included), leases kept while live and returned to the pool at their deadline, APOOL_WAIT and
 * APOOL_DONE, the share shown as progress, and the display order a pure function of its key.
 */
#include "annot_pool.h"
#include "test.h"

static uint64_t keys[64];

static void setup_keys(void) {
    for (int i = 0; i < 64; i++) keys[i] = 0x1234567ULL * (uint64_t)(i + 1);
}

/* Three annotators pulling in turn until nothing is left: every prompt gets overlap 2 from
 * distinct annotators, loads differ by at most one. */
static void test_round_robin(void) {
    apool_t p;
    CHECK_OK(apool_init(&p, 10, keys, 2, 7));
    for (int a = 0; a < 3; a++) CHECK_EQ(apool_annot_add(&p), a);
    int left = 3, guard = 0;
    while (left && guard++ < 100) {
        left = 0;
        for (int a = 0; a < 3; a++) {
            int q = apool_next(&p, a, guard, 1000);
            if (q < 0) continue;
            left = 1;
            CHECK_EQ(p.a[a].seen[q], 0);
            CHECK_OK(apool_record(&p, a, q, 0));
        }
    }
    CHECK_EQ(apool_complete(&p), 1);
    for (int i = 0; i < 10; i++) CHECK_EQ(p.ranked[i], 2);
    int lo = 99, hi = 0;
    for (int a = 0; a < 3; a++) {
        lo = p.a[a].done < lo ? p.a[a].done : lo;
        hi = p.a[a].done > hi ? p.a[a].done : hi;
        CHECK_EQ(apool_next(&p, a, 200, 1000), APOOL_DONE);
    }
    CHECK(hi - lo <= 1);
    apool_free(&p);
}

/* A lease is kept while live (the same prompt on a reload), returned at its deadline; another
 * annotator then gets the prompt. */
static void test_lease(void) {
    apool_t p;
    CHECK_OK(apool_init(&p, 1, keys, 1, 1));
    int a = apool_annot_add(&p), b = apool_annot_add(&p);
    CHECK_EQ(apool_next(&p, a, 0, 100), 0);
    CHECK_EQ(apool_next(&p, a, 50, 100), 0); /* its live lease again */
    CHECK_EQ(p.leased[0], 1);
    CHECK_EQ(apool_next(&p, b, 50, 100), APOOL_WAIT); /* leased to a: nothing for b now */
    CHECK_EQ(apool_tick(&p, 99), 0);
    CHECK_EQ(apool_tick(&p, 100), 1); /* abandoned: back in the pool */
    CHECK_EQ(p.leased[0], 0);
    CHECK_EQ(p.n_expired, 1);
    CHECK_EQ(apool_next(&p, b, 101, 100), 0);
    CHECK_OK(apool_record(&p, b, 0, 0));
    CHECK_EQ(apool_complete(&p), 1);
    CHECK_EQ(apool_next(&p, a, 102, 100), APOOL_DONE);
    /* a late submission of a, for a prompt that has its ranking: still recorded once */
    CHECK_OK(apool_record(&p, a, 0, 0));
    CHECK_ERR(apool_record(&p, a, 0, 0), RL_EINVAL);
    CHECK_ERR(apool_record(&p, a, 1, 0), RL_EINVAL);
    CHECK_EQ(p.ranked[0], 2);
    apool_free(&p);
}

/* A skip: the annotator never gets the prompt again, the prompt still wants its rankings and
 * goes to somebody else. */
static void test_skip(void) {
    apool_t p;
    CHECK_OK(apool_init(&p, 2, keys, 1, 3));
    int a = apool_annot_add(&p);
    int q = apool_next(&p, a, 0, 100);
    CHECK(q == 0 || q == 1);
    CHECK_OK(apool_record(&p, a, q, 1));
    CHECK_EQ(p.ranked[q], 0);
    CHECK_EQ(p.a[a].skipped, 1);
    int r = apool_next(&p, a, 1, 100);
    CHECK_EQ(r, 1 - q);
    CHECK_OK(apool_record(&p, a, r, 0));
    CHECK_EQ(apool_next(&p, a, 2, 100), APOOL_DONE); /* the skipped one is not offered again */
    CHECK_EQ(apool_complete(&p), 0);
    int b = apool_annot_add(&p); /* a new annotator takes it */
    CHECK_EQ(apool_next(&p, b, 3, 100), q);
    CHECK_OK(apool_record(&p, b, q, 0));
    CHECK_EQ(apool_complete(&p), 1);
    apool_free(&p);
}

/* The share shown as "assigned": the fair share, never below what was done, never above what
 * the annotator may take. */
static void test_share(void) {
    apool_t p;
    CHECK_OK(apool_init(&p, 6, keys, 2, 3));
    int a = apool_annot_add(&p), b = apool_annot_add(&p), c = apool_annot_add(&p);
    CHECK_EQ(apool_share(&p, a), 4); /* 6 * 2 / 3 */
    for (int i = 0; i < 6; i++) CHECK_OK(apool_record(&p, a, i, 0));
    CHECK_EQ(apool_share(&p, a), 6); /* did more than its share */
    CHECK_EQ(apool_share(&p, b), 4);
    for (int i = 0; i < 6; i++) CHECK_OK(apool_record(&p, c, i, 0));
    CHECK_EQ(apool_share(&p, b), 0); /* nothing left for b */
    CHECK_EQ(apool_complete(&p), 1);
    apool_free(&p);
}

/* The display order: a permutation, the same for the same key, differing between annotators. */
static void test_shown(void) {
    int x[8], y[8], z[8], seen[8] = {0};
    apool_shown(5, 99, 0, 8, x);
    apool_shown(5, 99, 0, 8, y);
    apool_shown(5, 99, 1, 8, z);
    for (int i = 0; i < 8; i++) seen[x[i]]++;
    for (int i = 0; i < 8; i++) CHECK_EQ(seen[i], 1);
    CHECK_EQ(memcmp(x, y, sizeof x), 0);
    CHECK(memcmp(x, z, sizeof x) != 0);
    CHECK_ERR(apool_init(&(apool_t){0}, 3, keys, 0, 1), RL_EINVAL);
}

int main(void) {
    setup_keys();
    RUN(test_round_robin);
    RUN(test_lease);
    RUN(test_skip);
    RUN(test_share);
    RUN(test_shown);
    return TEST_REPORT();
}
