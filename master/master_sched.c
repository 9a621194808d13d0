/*
 * master_sched.c - job queue, leases and worker registry of the master (see master_sched.h).
 */
#include "master_sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"

#define LOG(s, ...)                                                                                \
    do {                                                                                           \
        if ((s)->log) (s)->log((s)->log_ctx, __VA_ARGS__);                                         \
    } while (0)

int sched_init(sched_t *s, uint32_t max_attempts, uint64_t lease_base) {
    memset(s, 0, sizeof *s);
    s->max_attempts = max_attempts ? max_attempts : 1;
    s->lease_base = lease_base;
    return 0;
}

void sched_free(sched_t *s) {
    for (int i = 0; i < s->n_jobs; i++) free(s->jobs[i].payload), free(s->jobs[i].reason);
    free(s->jobs);
    free(s->index);
    free(s->queue);
    free(s->workers);
    memset(s, 0, sizeof *s);
}

static size_t hash_id(uint64_t id, int cap) {
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    return (size_t)(id & (uint64_t)(cap - 1));
}

static void index_put(sched_t *s, uint64_t id, int j) {
    size_t h = hash_id(id, s->index_cap);
    while (s->index[h]) h = (h + 1) & (size_t)(s->index_cap - 1);
    s->index[h] = j + 1;
}

int sched_job_find(const sched_t *s, uint64_t id) {
    if (!s->index_cap) return -1;
    for (size_t h = hash_id(id, s->index_cap); s->index[h];
         h = (h + 1) & (size_t)(s->index_cap - 1))
        if (s->jobs[s->index[h] - 1].id == id) return s->index[h] - 1;
    return -1;
}

static int queue_push(sched_t *s, int j) {
    if (s->q_len == s->q_cap) {
        int cap = s->q_cap ? 2 * s->q_cap : 64;
        int *q = malloc((size_t)cap * sizeof *q);
        if (!q) return rl_fail(RL_ENOMEM, "sched: out of memory");
        for (int i = 0; i < s->q_len; i++) q[i] = s->queue[(s->q_head + i) % s->q_cap];
        free(s->queue);
        s->queue = q;
        s->q_cap = cap;
        s->q_head = 0;
    }
    s->queue[(s->q_head + s->q_len++) % s->q_cap] = j;
    return 0;
}

int sched_job_add(sched_t *s, uint64_t id, int kind, uint64_t seed, const void *payload,
                  size_t payload_len, uint32_t lease_ms) {
    if (id == 0) return rl_fail(RL_EINVAL, "job id 0 is reserved");
    if (sched_job_find(s, id) >= 0)
        return rl_fail(RL_EINVAL, "duplicate job id %llu", (unsigned long long)id);
    if (s->n_jobs == s->cap_jobs) {
        int cap = s->cap_jobs ? 2 * s->cap_jobs : 64;
        sched_job_t *jobs = realloc(s->jobs, (size_t)cap * sizeof *jobs);
        if (!jobs) return rl_fail(RL_ENOMEM, "sched: out of memory");
        s->jobs = jobs;
        s->cap_jobs = cap;
    }
    if (2 * (s->n_jobs + 1) > s->index_cap) { /* keep the hash at most half full */
        int cap = s->index_cap ? 2 * s->index_cap : 128;
        int *idx = calloc((size_t)cap, sizeof *idx);
        if (!idx) return rl_fail(RL_ENOMEM, "sched: out of memory");
        free(s->index);
        s->index = idx;
        s->index_cap = cap;
        for (int i = 0; i < s->n_jobs; i++) index_put(s, s->jobs[i].id, i);
    }
    sched_job_t *j = &s->jobs[s->n_jobs];
    memset(j, 0, sizeof *j);
    j->payload = malloc(payload_len ? payload_len : 1);
    if (!j->payload) return rl_fail(RL_ENOMEM, "sched: out of memory");
    if (payload_len) memcpy(j->payload, payload, payload_len);
    j->payload_len = payload_len;
    j->id = id;
    j->kind = kind;
    j->seed = seed;
    j->lease_ms = lease_ms;
    j->state = SCHED_QUEUED;
    j->worker = -1;
    j->client = -1;
    j->run = -1;
    j->record_off = -1;
    if (queue_push(s, s->n_jobs) < 0) {
        free(j->payload);
        return RL_ENOMEM;
    }
    index_put(s, id, s->n_jobs);
    return s->n_jobs++;
}

int sched_job_mark_done(sched_t *s, uint64_t id) {
    int j = sched_job_find(s, id);
    if (j < 0) return rl_fail(RL_ENOTFOUND, "no job %llu", (unsigned long long)id);
    if (s->jobs[j].state == SCHED_LEASED) s->workers[s->jobs[j].worker].job = -1;
    s->jobs[j].state = SCHED_DONE; /* its queue entry is skipped when reached */
    s->jobs[j].worker = -1;
    return 0;
}

int sched_count(const sched_t *s, sched_state_t st) {
    int n = 0;
    for (int i = 0; i < s->n_jobs; i++) n += s->jobs[i].state == st;
    return n;
}

/* Ends the current lease of job j without a result: requeue (attempt + 1 at the next dispatch)
 * or fail once the attempts are spent - or at once, if fail_now. */
static void lease_end(sched_t *s, int j, const char *why, int fail_now) {
    sched_job_t *job = &s->jobs[j];
    if (job->worker >= 0 && s->workers[job->worker].job == j) s->workers[job->worker].job = -1;
    job->worker = -1;
    if (fail_now || job->attempt >= (job->max_attempts ? job->max_attempts : s->max_attempts)) {
        job->state = SCHED_FAILED;
        s->n_failed++;
        LOG(s, "job %llu failed after %u attempt%s (%s)", (unsigned long long)job->id, job->attempt,
            job->attempt == 1 ? "" : "s", why);
        return;
    }
    job->state = SCHED_QUEUED;
    s->n_retried++;
    LOG(s, "job %llu attempt %u requeued: %s", (unsigned long long)job->id, job->attempt, why);
    if (queue_push(s, j) < 0) { /* cannot requeue: fail it rather than lose track of it */
        job->state = SCHED_FAILED;
        s->n_failed++;
    }
}

int sched_worker_find(const sched_t *s, const void *rid, size_t rid_len) {
    for (int w = 0; w < s->n_workers; w++)
        if (s->workers[w].alive && s->workers[w].rid_len == rid_len &&
            !memcmp(s->workers[w].rid, rid, rid_len))
            return w;
    return -1;
}

void sched_worker_dead(sched_t *s, int w, const char *why) {
    sched_worker_t *wk = &s->workers[w];
    if (!wk->alive) return;
    wk->alive = 0;
    s->n_worker_deaths++;
    LOG(s, "worker %s gone: %s", wk->id, why);
    if (wk->job >= 0) lease_end(s, wk->job, why, 0);
    wk->job = -1;
    wk->stale_job = 0;
}

int sched_worker_add(sched_t *s, const void *rid, size_t rid_len, const char *id, int role,
                     uint32_t caps, int pid, double now) {
    if (rid_len > SCHED_MAX_RID) rid_len = SCHED_MAX_RID;
    int w = sched_worker_find(s, rid, rid_len);
    if (w >= 0) sched_worker_dead(s, w, "registered again");
    for (int i = 0; i < s->n_workers; i++) /* the same worker on a new connection */
        if (s->workers[i].alive && !strncmp(s->workers[i].id, id, sizeof s->workers[i].id - 1))
            sched_worker_dead(s, i, "registered again on a new connection");
    w = -1;
    for (int i = 0; i < s->n_workers && w < 0; i++)
        if (!s->workers[i].alive && !strncmp(s->workers[i].id, id, sizeof s->workers[i].id - 1))
            w = i; /* reuse its old slot: its counters carry on */
    for (int i = 0; i < s->n_workers && w < 0; i++)
        if (!s->workers[i].alive && s->n_workers >= 1024) w = i; /* bound the registry */
    if (w < 0) {
        if (s->n_workers == s->cap_workers) {
            int cap = s->cap_workers ? 2 * s->cap_workers : 16;
            sched_worker_t *ws = realloc(s->workers, (size_t)cap * sizeof *ws);
            if (!ws) return rl_fail(RL_ENOMEM, "sched: out of memory");
            s->workers = ws;
            s->cap_workers = cap;
        }
        w = s->n_workers++;
        memset(&s->workers[w], 0, sizeof s->workers[w]);
    } else if (strncmp(s->workers[w].id, id, sizeof s->workers[w].id - 1)) {
        memset(&s->workers[w], 0, sizeof s->workers[w]);
    }
    sched_worker_t *wk = &s->workers[w];
    snprintf(wk->id, sizeof wk->id, "%s", id);
    memcpy(wk->rid, rid, rid_len);
    wk->rid_len = rid_len;
    wk->role = role;
    wk->caps = caps;
    wk->pid = pid;
    wk->alive = 1;
    wk->registered_ms = wk->last_seen_ms = now;
    wk->job = -1;
    wk->stale_job = 0;
    return w;
}

void sched_worker_seen(sched_t *s, int w, double now, uint64_t job_id, uint32_t attempt) {
    sched_worker_t *wk = &s->workers[w];
    wk->last_seen_ms = now;
    if (job_id && wk->job >= 0 && s->jobs[wk->job].id == job_id &&
        s->jobs[wk->job].attempt == attempt && s->jobs[wk->job].renew)
        s->jobs[wk->job].deadline_ms = now + s->jobs[wk->job].lease_ms; /* still at it */
    if (job_id == 0) {
        wk->stale_job = 0;
    } else if (wk->job < 0 || s->jobs[wk->job].id != job_id ||
               s->jobs[wk->job].attempt != attempt) {
        /* busy with a job it no longer holds (its lease expired): no new work until it is done */
        wk->stale_job = job_id;
    }
}

int sched_dispatch(sched_t *s, double now, int *job, int *worker) {
    int scanned = 0, n = s->q_len;
    while (scanned < n) {
        int j = s->queue[s->q_head];
        sched_job_t *jb = &s->jobs[j];
        if (jb->state != SCHED_QUEUED) { /* finished elsewhere (mark_done): drop the entry */
            s->q_head = (s->q_head + 1) % s->q_cap;
            s->q_len--;
            n--;
            continue;
        }
        int w = -1, ready = jb->policy_version <= s->weights_version && jb->hold_until_ms <= now;
        for (int i = 0; ready && i < s->n_workers && w < 0; i++) {
            sched_worker_t *wk = &s->workers[i];
            if (wk->alive && wk->job < 0 && !wk->stale_job && (wk->caps >> jb->kind & 1u) &&
                (!jb->role || wk->role == jb->role))
                w = i;
        }
        if (w < 0) { /* nobody can run it now: rotate it to the back, try the next one */
            s->q_head = (s->q_head + 1) % s->q_cap;
            s->queue[(s->q_head + s->q_len - 1) % s->q_cap] = j;
            scanned++;
            continue;
        }
        s->q_head = (s->q_head + 1) % s->q_cap;
        s->q_len--;
        jb->state = SCHED_LEASED;
        jb->attempt++;
        jb->lease_id = s->lease_base + ++s->lease_seq;
        jb->worker = w;
        jb->dispatched_ms = now;
        jb->deadline_ms = now + jb->lease_ms;
        s->workers[w].job = j;
        s->n_dispatched++;
        *job = j;
        *worker = w;
        return 1;
    }
    return 0;
}

static sched_verdict_t check_lease(sched_t *s, int w, uint64_t job_id, uint32_t attempt,
                                   uint64_t lease_id, int *jp) {
    int j = sched_job_find(s, job_id);
    if (w >= 0 && s->workers[w].stale_job == job_id) s->workers[w].stale_job = 0;
    if (j < 0) {
        s->n_unknown++;
        return SCHED_UNKNOWN;
    }
    sched_job_t *jb = &s->jobs[j];
    if (jb->state == SCHED_DONE || jb->state == SCHED_FAILED) {
        s->n_duplicate++;
        return SCHED_DUPLICATE;
    }
    if (jb->state != SCHED_LEASED || jb->worker != w || jb->attempt != attempt ||
        jb->lease_id != lease_id) {
        s->n_stale++;
        return SCHED_STALE;
    }
    *jp = j;
    return SCHED_ACCEPTED;
}

sched_verdict_t sched_result(sched_t *s, int w, uint64_t job_id, uint32_t attempt,
                             uint64_t lease_id) {
    int j = -1;
    sched_verdict_t v = check_lease(s, w, job_id, attempt, lease_id, &j);
    if (v != SCHED_ACCEPTED) return v;
    s->jobs[j].state = SCHED_DONE;
    s->jobs[j].worker = -1;
    s->workers[w].job = -1;
    s->workers[w].jobs_done++;
    s->n_done++;
    return SCHED_ACCEPTED;
}

sched_verdict_t sched_reject(sched_t *s, int w, uint64_t job_id, uint32_t attempt,
                             uint64_t lease_id) {
    int j = -1;
    sched_verdict_t v = check_lease(s, w, job_id, attempt, lease_id, &j);
    if (v != SCHED_ACCEPTED) return v;
    s->n_rejected++;
    lease_end(s, j, "rejected by the worker", 0);
    return SCHED_ACCEPTED;
}

sched_verdict_t sched_reject_ex(sched_t *s, int w, uint64_t job_id, uint32_t attempt,
                                uint64_t lease_id, sched_reject_mode_t mode, double hold_until_ms) {
    int j = -1;
    sched_verdict_t v = check_lease(s, w, job_id, attempt, lease_id, &j);
    if (v != SCHED_ACCEPTED) return v;
    s->n_rejected++;
    sched_job_t *jb = &s->jobs[j];
    if (mode == SCHED_FAIL) { /* the attempt count stays true: the record says how many ran */
        jb->deterministic = 1;
        lease_end(s, j, "its input is bad", 1);
        return SCHED_ACCEPTED;
    }
    if (mode == SCHED_HOLD) {
        jb->attempt--; /* the next dispatch counts it again: this one was not the job's fault */
        jb->hold_until_ms = hold_until_ms;
        jb->holds++;
    }
    lease_end(s, j, mode == SCHED_HOLD ? "held back" : "rejected by the worker", 0);
    return SCHED_ACCEPTED;
}

int sched_job_retry(sched_t *s, int j, const void *payload, size_t payload_len) {
    sched_job_t *jb = &s->jobs[j];
    if (jb->state != SCHED_DONE && jb->state != SCHED_FAILED)
        return rl_fail(RL_EINVAL, "job %llu is not finished", (unsigned long long)jb->id);
    uint8_t *p = malloc(payload_len ? payload_len : 1);
    if (!p) return rl_fail(RL_ENOMEM, "sched: out of memory");
    if (payload_len) memcpy(p, payload, payload_len);
    if (queue_push(s, j) < 0) {
        free(p);
        return RL_ENOMEM;
    }
    free(jb->payload);
    jb->payload = p;
    jb->payload_len = payload_len;
    jb->state = SCHED_QUEUED;
    jb->attempt = 0;
    jb->deterministic = 0;
    jb->hold_until_ms = 0;
    jb->forgotten = 0;
    jb->deterministic = 0;
    jb->holds = 0;
    free(jb->reason);
    jb->reason = NULL;
    jb->worker = -1;
    return 0;
}

int sched_tick(sched_t *s, double now, double liveness_ms) {
    uint64_t before = s->n_retried + s->n_failed;
    for (int w = 0; w < s->n_workers; w++)
        if (s->workers[w].alive && now - s->workers[w].last_seen_ms > liveness_ms)
            sched_worker_dead(s, w, "missed its heartbeats");
    for (int j = 0; j < s->n_jobs; j++)
        if (s->jobs[j].state == SCHED_LEASED && now > s->jobs[j].deadline_ms) {
            int w = s->jobs[j].worker;
            s->n_expired++;
            /* the holder is alive but still busy with it: keep it off new work until it says
             * it is done (its late result will be refused) */
            if (w >= 0) s->workers[w].stale_job = s->jobs[j].id;
            lease_end(s, j, "lease expired", 0);
        }
    return (int)(s->n_retried + s->n_failed - before);
}
