/*
 * master_sched.h - (prefix sched_; not sched.h, which would shadow <sched.h>) the master's job
 * queue and worker registry: leases, re-dispatch and fencing.
 *
 * Pure bookkeeping with the clock passed in (no sockets, no I/O), so that every rule is unit
 * tested: a job is QUEUED until sched_dispatch pairs it with an idle live worker that can run
 * its kind, which LEASES it (attempt + 1, a fresh lease id, a deadline). A lease ends in one of:
 *   - sched_result with the current attempt and lease id from the lease holder: DONE, once;
 *   - sched_reject, the holder's death (sched_worker_dead, or silence past the liveness limit in
 *     sched_tick) or the deadline passing (sched_tick): back to the queue, or FAILED after
 *     max_attempts.
 * Any other result (an old attempt, another lease, a finished job) is refused: that is the
 * fencing that makes each job's result count exactly once.
 *
 * Use:
 *   sched_t s; sched_init(&s, 5);
 *   sched_job_add(&s, id, kind, seed, payload, len, lease_ms);
 *   w = sched_worker_add(&s, rid, rid_len, "host-1", role, caps, now);
 *   while (sched_dispatch(&s, now, &j, &w)) send JobAssign for s.jobs[j] to s.workers[w];
 *   sched_tick(&s, now, liveness_ms);  ...  sched_free(&s);
 */
#ifndef RLHF_SCHED_H
#define RLHF_SCHED_H

#include <stddef.h>
#include <stdint.h>

#define SCHED_MAX_RID 255

typedef enum { SCHED_QUEUED, SCHED_LEASED, SCHED_DONE, SCHED_FAILED } sched_state_t;

typedef struct {
    uint64_t id;
    int kind; /* Rlhf__JobKind */
    uint64_t seed;
    uint8_t *payload; /* kind-specific spec, owned */
    size_t payload_len;
    uint32_t lease_ms;
    sched_state_t state;
    uint32_t attempt;   /* of the current or last lease; 0 before the first dispatch */
    uint64_t lease_id;  /* of the current lease */
    int worker;         /* index of the lease holder, -1 when not leased */
    double deadline_ms; /* lease expiry */
    double dispatched_ms;
    uint64_t policy_version; /* weights it needs: not dispatched before sched_t.weights_version */
    int role;                /* only workers of this role run it; 0: any that has the capability */
    double hold_until_ms;  /* not dispatched before (a job held back after an environment error) */
    int deterministic;     /* FAILED at once by SCHED_FAIL (its input is bad), not attempts spent */
    uint32_t max_attempts; /* leases before it fails (0: the scheduler's max_attempts) */
    int renew;             /* its lease is renewed by each heartbeat of its holder naming it: the
                              lease then bounds silence about the job, not the job's length */
    uint32_t holds;        /* SCHED_HOLD rejections so far (the caller's backoff) */
    /* the master's annotations (the scheduler only initialises them) */
    int client;         /* registry index of the client to tell when it finishes; -1: none */
    int run;            /* index of the run that created it (master_run.c); -1: a client's */
    int ns;             /* index of its namespace (master_ns); 0: "" */
    int forgotten;      /* its record is gone: created again, it runs again */
    char *reason;       /* why it failed (the worker's reason), owned; NULL */
    int64_t record_off; /* journal location of its end record; -1: not recorded */
    uint64_t spec_hash; /* identity of a job known only from its record; 0: hash the spec */
} sched_job_t;

typedef struct {
    char id[64];
    uint8_t rid[SCHED_MAX_RID];
    size_t rid_len;
    int role;
    uint32_t caps; /* bit k: can run job kind k */
    int alive;
    int pid;
    double registered_ms, last_seen_ms;
    int job;            /* index of the job leased to it, -1 when idle */
    uint64_t stale_job; /* a job it reports running that is no longer its lease (busy) */
    uint64_t jobs_done;
    int ns;             /* the master's annotation: a client's namespace index (0: "") */
    char relay_ep[256]; /* the master's annotation: a worker's weights relay ("": none) */
    char user[64];      /* the master's annotation: the key it registered with (net/sec.h) */
} sched_worker_t;

typedef enum {
    SCHED_ACCEPTED = 0,
    SCHED_STALE,     /* an old attempt or lease, or not the lease holder: dropped */
    SCHED_DUPLICATE, /* the job is already done: dropped */
    SCHED_UNKNOWN,   /* no such job: dropped */
} sched_verdict_t;

typedef void (*sched_log_fn)(void *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef struct {
    sched_job_t *jobs;
    int n_jobs, cap_jobs;
    int *index; /* open-addressing hash: job id -> index + 1 (0 = empty) */
    int index_cap;
    int *queue; /* FIFO of job indices */
    int q_head, q_len, q_cap;
    sched_worker_t *workers;
    int n_workers, cap_workers;
    uint32_t max_attempts;
    uint64_t lease_base, lease_seq; /* lease ids: base (random per master start) + counter */
    uint64_t weights_version;       /* newest weights announced: jobs needing more wait */
    /* counters */
    uint64_t n_done, n_failed, n_retried, n_dispatched, n_stale, n_duplicate, n_unknown, n_rejected,
        n_expired, n_worker_deaths;
    sched_log_fn log;
    void *log_ctx;
} sched_t;

/* Initialises an empty scheduler; jobs fail after max_attempts leases. lease_base seeds the
 * lease ids (use something that differs between master starts). Returns 0. */
int sched_init(sched_t *s, uint32_t max_attempts, uint64_t lease_base);

/* Frees all jobs and workers; safe on a zeroed struct. */
void sched_free(sched_t *s);

/* Adds a QUEUED job (payload copied). Returns its index, RL_EINVAL for a duplicate id or id 0,
 * or RL_ENOMEM. */
int sched_job_add(sched_t *s, uint64_t id, int kind, uint64_t seed, const void *payload,
                  size_t payload_len, uint32_t lease_ms);

/* Marks a job DONE without running it (its result is already recorded). Returns 0 or
 * RL_ENOTFOUND. */
int sched_job_mark_done(sched_t *s, uint64_t id);

/* Index of the job with this id, or -1. */
int sched_job_find(const sched_t *s, uint64_t id);

/* Number of jobs queued / leased / finished (done or failed). */
int sched_count(const sched_t *s, sched_state_t st);

/* Registers a worker (or re-registers the one with this routing id or worker id: any lease it
 * held is requeued, since a fresh hello means it no longer runs that job). Returns the index or
 * RL_ENOMEM. */
int sched_worker_add(sched_t *s, const void *rid, size_t rid_len, const char *id, int role,
                     uint32_t caps, int pid, double now);

/* Index of the live worker with this routing id, or -1. */
int sched_worker_find(const sched_t *s, const void *rid, size_t rid_len);

/* Records a sign of life; job_id/attempt are what the worker says it runs (0 = idle). The
 * lease of that job, when it is this worker's and renewable, runs lease_ms from now. */
void sched_worker_seen(sched_t *s, int w, double now, uint64_t job_id, uint32_t attempt);

/* Declares worker w dead (or gone): its lease is requeued. */
void sched_worker_dead(sched_t *s, int w, const char *why);

/* Pairs the oldest queued job with an idle live worker that can run it (its kind among the
 * worker's capabilities, and its role when the job names one) and leases it.
 * Returns 1 with *job and *worker set, or 0 when nothing can be dispatched now. Jobs nobody can
 * run stay queued without blocking the others behind them; so do jobs whose policy_version is
 * newer than weights_version (no worker could have those weights yet). */
int sched_dispatch(sched_t *s, double now, int *job, int *worker);

/* A result from worker w. ACCEPTED marks the job DONE and frees the worker. */
sched_verdict_t sched_result(sched_t *s, int w, uint64_t job_id, uint32_t attempt,
                             uint64_t lease_id);

/* A rejection (or hand-back) from worker w of its current lease: requeued, or FAILED after
 * max_attempts. Returns the verdict like sched_result (ACCEPTED when it applied). */
sched_verdict_t sched_reject(sched_t *s, int w, uint64_t job_id, uint32_t attempt,
                             uint64_t lease_id);

/* How sched_reject_ex ends a rejected lease. */
typedef enum {
    SCHED_RETRY = 0, /* back to the queue, or FAILED after max_attempts (sched_reject) */
    SCHED_FAIL,      /* FAILED at once: the job's input is bad, another attempt would fail too */
    SCHED_HOLD,      /* back to the queue without spending the attempt, held until hold_until_ms
                        (the environment, not the job, failed: a directory not writable) */
} sched_reject_mode_t;

/* sched_reject with the rejection's class. Returns the verdict like sched_result. */
sched_verdict_t sched_reject_ex(sched_t *s, int w, uint64_t job_id, uint32_t attempt,
                                uint64_t lease_id, sched_reject_mode_t mode, double hold_until_ms);

/* A finished job (DONE or FAILED) queued again, with attempt 0 and this payload (copied): a
 * failed job resubmitted after its input was fixed, or a job whose result is no longer wanted.
 * Returns 0, RL_EINVAL (the job is not finished) or RL_ENOMEM. */
int sched_job_retry(sched_t *s, int j, const void *payload, size_t payload_len);

/* Periodic duties: workers silent for more than liveness_ms die (their leases requeue), and
 * leases past their deadline requeue. Returns the number of leases requeued or failed. */
int sched_tick(sched_t *s, double now, double liveness_ms);

#endif
