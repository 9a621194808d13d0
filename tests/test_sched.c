/*
 * test_sched.c - the master's job queue and registry: dispatch by capability, fencing of stale
 * and duplicate results, requeue with attempt + 1 on death, lease expiry and rejection, failure
 * after max_attempts, results recorded before a restart.
 */
#include "master_sched.h"
#include "test.h"

#define GEN  1
#define NOOP 5

static int add_worker(sched_t *s, const char *id, uint32_t caps, double now) {
    return sched_worker_add(s, id, strlen(id), id, 1, caps, 1, now);
}

static void test_dispatch_and_result(void) {
    sched_t s;
    sched_init(&s, 3, 1000);
    CHECK_EQ(sched_job_add(&s, 7, GEN, 42, "ab", 2, 500), 0);
    CHECK_ERR(sched_job_add(&s, 7, GEN, 42, NULL, 0, 500), RL_EINVAL); /* duplicate id */
    int j, w;
    CHECK_EQ(sched_dispatch(&s, 0, &j, &w), 0); /* no worker yet */
    int a = add_worker(&s, "a", 1u << NOOP, 0); /* cannot run GENERATE */
    CHECK_EQ(sched_dispatch(&s, 0, &j, &w), 0);
    int b = add_worker(&s, "b", 1u << GEN, 0);
    CHECK_EQ(sched_dispatch(&s, 10, &j, &w), 1);
    CHECK_EQ(w, b);
    CHECK_EQ(s.jobs[j].attempt, 1);
    CHECK_EQ(s.jobs[j].lease_id, 1001);
    CHECK_EQ(s.jobs[j].deadline_ms, 510);
    CHECK_EQ(sched_result(&s, a, 7, 1, 1001), SCHED_STALE); /* not the holder */
    CHECK_EQ(sched_result(&s, b, 7, 1, 999), SCHED_STALE);  /* another lease */
    CHECK_EQ(sched_result(&s, b, 7, 1, 1001), SCHED_ACCEPTED);
    CHECK_EQ(sched_result(&s, b, 7, 1, 1001), SCHED_DUPLICATE); /* exactly once */
    CHECK_EQ(sched_result(&s, b, 8, 1, 1001), SCHED_UNKNOWN);
    CHECK_EQ(s.n_done, 1);
    CHECK_EQ(s.workers[b].job, -1);
    sched_free(&s);
}

static void test_death_requeues_and_fences(void) {
    sched_t s;
    sched_init(&s, 5, 0);
    sched_job_add(&s, 1, GEN, 1, NULL, 0, 10000);
    int a = add_worker(&s, "a", 1u << GEN, 0), j, w;
    CHECK_EQ(sched_dispatch(&s, 0, &j, &w), 1);
    CHECK_EQ(w, a);
    uint64_t lease1 = s.jobs[j].lease_id;
    int b = add_worker(&s, "b", 1u << GEN, 0);
    sched_worker_seen(&s, b, 350, 0, 0);
    CHECK_EQ(sched_tick(&s, 400, 300), 1); /* a silent for 400 ms > 300: dead, job requeued */
    CHECK_EQ(s.workers[a].alive, 0);
    CHECK_EQ(s.workers[b].alive, 1);
    CHECK_EQ(sched_dispatch(&s, 400, &j, &w), 1);
    CHECK_EQ(w, b);
    CHECK_EQ(s.jobs[j].attempt, 2);
    /* the frozen worker comes back and registers again: its old lease is worthless */
    a = add_worker(&s, "a", 1u << GEN, 500);
    CHECK_EQ(sched_result(&s, a, 1, 1, lease1), SCHED_STALE);
    CHECK_EQ(sched_result(&s, b, 1, 2, s.jobs[j].lease_id), SCHED_ACCEPTED);
    CHECK_EQ(sched_result(&s, a, 1, 1, lease1), SCHED_DUPLICATE);
    CHECK_EQ(s.n_retried, 1);
    CHECK_EQ(s.n_worker_deaths, 1);
    sched_free(&s);
}

static void test_expiry_reject_and_failure(void) {
    sched_t s;
    sched_init(&s, 2, 0);
    sched_job_add(&s, 1, GEN, 1, NULL, 0, 100);
    int a = add_worker(&s, "a", 1u << GEN, 0), j, w;
    CHECK_EQ(sched_dispatch(&s, 0, &j, &w), 1);
    sched_worker_seen(&s, a, 150, 1, 1);
    CHECK_EQ(sched_tick(&s, 150, 1000), 1); /* lease of 100 ms expired */
    CHECK_EQ(s.jobs[j].state, SCHED_QUEUED);
    CHECK_EQ(s.n_expired, 1);
    /* a is still busy with the expired job: it gets no new work until it says it is idle */
    CHECK_EQ(sched_dispatch(&s, 150, &j, &w), 0);
    sched_worker_seen(&s, a, 160, 0, 0);
    CHECK_EQ(sched_dispatch(&s, 160, &j, &w), 1);
    CHECK_EQ(s.jobs[j].attempt, 2);
    CHECK_EQ(sched_reject(&s, a, 1, 2, s.jobs[j].lease_id), SCHED_ACCEPTED);
    CHECK_EQ(s.jobs[j].state, SCHED_FAILED); /* 2 attempts spent */
    CHECK_EQ(s.n_failed, 1);
    CHECK_EQ(sched_dispatch(&s, 170, &j, &w), 0);
    sched_free(&s);
}

/* A deterministic rejection fails the job at the attempt it ran (not "max_attempts spent"); a
 * hold keeps the attempt; a retry starts the job afresh. */
static void test_reject_modes(void) {
    sched_t s;
    sched_init(&s, 5, 0);
    sched_job_add(&s, 1, GEN, 1, NULL, 0, 100);
    int a = add_worker(&s, "a", 1u << GEN, 0), j, w;
    CHECK_EQ(sched_dispatch(&s, 0, &j, &w), 1);
    CHECK_EQ(sched_reject_ex(&s, a, 1, 1, s.jobs[j].lease_id, SCHED_HOLD, 50), SCHED_ACCEPTED);
    CHECK_EQ(s.jobs[j].state, SCHED_QUEUED);
    sched_worker_seen(&s, a, 10, 0, 0);
    CHECK_EQ(sched_dispatch(&s, 10, &j, &w), 0); /* held until 50 */
    CHECK_EQ(sched_dispatch(&s, 60, &j, &w), 1);
    CHECK_EQ(s.jobs[j].attempt, 1); /* the hold did not spend it */
    CHECK_EQ(sched_reject_ex(&s, a, 1, 1, s.jobs[j].lease_id, SCHED_FAIL, 0), SCHED_ACCEPTED);
    CHECK_EQ(s.jobs[j].state, SCHED_FAILED);
    CHECK_EQ(s.jobs[j].attempt, 1);
    CHECK_EQ(s.jobs[j].deterministic, 1);
    CHECK_EQ(s.n_failed, 1);
    CHECK_OK(sched_job_retry(&s, j, NULL, 0));
    CHECK_EQ(s.jobs[j].deterministic, 0);
    CHECK_EQ(s.jobs[j].attempt, 0);
    sched_worker_seen(&s, a, 70, 0, 0);
    CHECK_EQ(sched_dispatch(&s, 70, &j, &w), 1);
    CHECK_EQ(s.jobs[j].attempt, 1);
    sched_free(&s);
}

static void test_mark_done_and_fifo(void) {
    sched_t s;
    sched_init(&s, 2, 0);
    for (uint64_t id = 1; id <= 300; id++)
        CHECK(sched_job_add(&s, id, NOOP, id, NULL, 0, 100) >= 0);
    CHECK_EQ(sched_job_find(&s, 250), 249);
    CHECK_OK(sched_job_mark_done(&s, 1)); /* recorded by an earlier master */
    CHECK_ERR(sched_job_mark_done(&s, 999), RL_ENOTFOUND);
    add_worker(&s, "a", 1u << NOOP, 0);
    int j, w;
    CHECK_EQ(sched_dispatch(&s, 0, &j, &w), 1);
    CHECK_EQ(s.jobs[j].id, 2); /* FIFO, the finished job skipped */
    CHECK_EQ(sched_count(&s, SCHED_QUEUED), 298);
    CHECK_EQ(sched_worker_find(&s, "a", 1), 0);
    CHECK_EQ(sched_worker_find(&s, "b", 1), -1);
    sched_worker_dead(&s, 0, "test");
    CHECK_EQ(sched_count(&s, SCHED_QUEUED), 299);
    sched_free(&s);
}

/* A run's job: its holder's heartbeats naming it renew the lease, and no number of lost
 * leases fails it (only SCHED_FAIL does). */
static void test_renew_and_unlimited(void) {
    sched_t s;
    sched_init(&s, 2, 0);
    int j0 = sched_job_add(&s, 1, GEN, 1, NULL, 0, 100), j, w;
    s.jobs[j0].renew = 1;
    s.jobs[j0].max_attempts = UINT32_MAX;
    int a = add_worker(&s, "a", 1u << GEN, 0);
    CHECK_EQ(sched_dispatch(&s, 0, &j, &w), 1);
    sched_worker_seen(&s, a, 90, 1, 1); /* still at it at 90 ms: the lease runs to 190 */
    CHECK_EQ(sched_tick(&s, 150, 1000), 0);
    CHECK_EQ(s.jobs[j].state, SCHED_LEASED);
    sched_worker_seen(&s, a, 180, 1, 7); /* another attempt named: no renewal */
    CHECK_EQ(sched_tick(&s, 200, 1000), 1);
    CHECK_EQ(s.jobs[j].state, SCHED_QUEUED);
    for (uint32_t k = 2; k <= 6; k++) { /* far past max_attempts (2): requeued each time */
        sched_worker_seen(&s, a, 300.0 * k, 0, 0);
        CHECK_EQ(sched_dispatch(&s, 300.0 * k, &j, &w), 1);
        CHECK_EQ(s.jobs[j].attempt, k);
        CHECK_EQ(sched_reject(&s, a, 1, k, s.jobs[j].lease_id), SCHED_ACCEPTED);
        CHECK_EQ(s.jobs[j].state, SCHED_QUEUED);
    }
    CHECK_EQ(s.n_failed, 0);
    sched_free(&s);
}

int main(void) {
    RUN(test_dispatch_and_result);
    RUN(test_renew_and_unlimited);
    RUN(test_death_requeues_and_fences);
    RUN(test_expiry_reject_and_failure);
    RUN(test_reject_modes);
    RUN(test_mark_done_and_fifo);
    return TEST_REPORT();
}
