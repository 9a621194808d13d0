/*
 * worker_jobs.c - the job handler table of each role, and the handlers that do no model work.
 */
#include <stdlib.h>

#include "rlhf.pb-c.h"
#include "worker.h"

static int job_noop(worker_state_t *st, const worker_job_t *job, const uint8_t *payload, size_t len,
                    uint8_t **out, size_t *out_len) {
    (void)st;
    (void)job;
    (void)payload;
    (void)len;
    *out = NULL;
    *out_len = 0;
    return 0;
}

/* Each handler gets exactly the role state it works on. */
static int job_generate(worker_state_t *st, const worker_job_t *job, const uint8_t *payload,
                        size_t len, uint8_t **out, size_t *out_len) {
    return worker_generate(st->rollout, job, payload, len, out, out_len);
}

static int job_score(worker_state_t *st, const worker_job_t *job, const uint8_t *payload,
                     size_t len, uint8_t **out, size_t *out_len) {
    return worker_score(st->score, job, payload, len, out, out_len);
}

static int job_train(worker_state_t *st, const worker_job_t *job, const uint8_t *payload,
                     size_t len, uint8_t **out, size_t *out_len) {
    return worker_train(st->learner, st->ppo, job, payload, len, out, out_len);
}

/* A stage worker has no role state: the command is a process of its own. */
static int job_stage(worker_state_t *st, const worker_job_t *job, const uint8_t *payload,
                     size_t len, uint8_t **out, size_t *out_len) {
    (void)st;
    return worker_stage(job, payload, len, out, out_len);
}

static const struct {
    int role, kind;
    worker_handler_fn fn;
} table[] = {
    {RLHF__ROLE__ROLE_ROLLOUT, RLHF__JOB_KIND__JOB_KIND_GENERATE, job_generate},
    {RLHF__ROLE__ROLE_ROLLOUT, RLHF__JOB_KIND__JOB_KIND_NOOP, job_noop},
    {RLHF__ROLE__ROLE_REWARD, RLHF__JOB_KIND__JOB_KIND_NOOP, job_noop},
    {RLHF__ROLE__ROLE_REWARD, RLHF__JOB_KIND__JOB_KIND_SCORE, job_score},
    {RLHF__ROLE__ROLE_LEARNER, RLHF__JOB_KIND__JOB_KIND_NOOP, job_noop},
    {RLHF__ROLE__ROLE_LEARNER, RLHF__JOB_KIND__JOB_KIND_TRAIN, job_train},
    {RLHF__ROLE__ROLE_STAGE, RLHF__JOB_KIND__JOB_KIND_NOOP, job_noop},
    {RLHF__ROLE__ROLE_STAGE, RLHF__JOB_KIND__JOB_KIND_STAGE, job_stage},
};
#define N_TABLE (int)(sizeof table / sizeof table[0])

worker_handler_fn worker_handler(int role, int kind) {
    for (int i = 0; i < N_TABLE; i++)
        if (table[i].role == role && table[i].kind == kind) return table[i].fn;
    return NULL;
}

int worker_capabilities(int role, int *kinds) {
    int n = 0;
    for (int i = 0; i < N_TABLE && n < 32; i++)
        if (table[i].role == role) kinds[n++] = table[i].kind;
    return n;
}
