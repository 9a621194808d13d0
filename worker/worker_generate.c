/*
 * worker_generate.c - the GENERATE handler of rollout workers: greedy continuation of token ids
 * with KV-cached generation (gen.h). Ties go to the lowest id, so the output is a pure function
 * of the weights and the prompt.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "gen.h"
#include "gpt.h"
#include "hf.h"
#include "rlhf.pb-c.h"
#include "worker.h"

static gpt_t *cached;
static char cached_dir[4096];

void worker_generate_cleanup(void) {
    gpt_destroy(&cached);
    cached_dir[0] = 0;
}

static gpt_t *model_get(const char *dir) {
    if (cached && !strcmp(cached_dir, dir)) return cached;
    worker_generate_cleanup();
    if (strlen(dir) >= sizeof cached_dir) {
        rl_fail(RL_EINVAL, "model_dir too long");
        return NULL;
    }
    cached = hf_load(dir);
    if (cached) snprintf(cached_dir, sizeof cached_dir, "%s", dir);
    return cached;
}

static int stop_if_cancelled(void *ctx, int seq, const int *tokens, int n) {
    (void)seq, (void)tokens, (void)n;
    const worker_job_t *job = ctx;
    return atomic_load(job->cancel) ? 1 : 0;
}

int worker_generate(const worker_job_t *job, const uint8_t *payload, size_t len, uint8_t **out,
                    size_t *out_len) {
    Rlhf__GenerateSpec *sp = rlhf__generate_spec__unpack(NULL, len, payload);
    if (!sp) return rl_fail(RL_EFORMAT, "generate: malformed GenerateSpec");
    int rc = 0, *toks = NULL;
    int32_t *gen = NULL;
    /* test hook: a job that takes at least delay_ms, still cancellable */
    for (uint32_t waited = 0; waited < sp->delay_ms && !atomic_load(job->cancel); waited += 10) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    gpt_t *m = model_get(sp->model_dir ? sp->model_dir : "");
    if (!m) {
        rc = rl_fail_ctx(RL_EINVAL, "generate: ");
        goto out;
    }
    int P = (int)sp->n_prompt, V = m->cfg.vocab_size, ctx = m->cfg.n_positions;
    if (P < 1 || P >= ctx) {
        rc = rl_fail(RL_EINVAL, "generate: prompt of %d tokens (context %d)", P, ctx);
        goto out;
    }
    int n_new = (int)sp->max_new_tokens;
    if (n_new > ctx - P) n_new = ctx - P; /* the context is full: stop there */
    toks = malloc((size_t)(P + n_new) * sizeof *toks);
    gen = malloc((size_t)(n_new ? n_new : 1) * sizeof *gen);
    if (!toks || !gen) {
        rc = rl_fail(RL_ENOMEM, "generate: out of memory");
        goto out;
    }
    for (int i = 0; i < P; i++) {
        if (sp->prompt[i] < 0 || sp->prompt[i] >= V) {
            rc = rl_fail(RL_EINVAL, "generate: prompt token %d out of range [0, %d)", sp->prompt[i],
                         V);
            goto out;
        }
        toks[i] = sp->prompt[i];
    }
    /* KV-cached generation; greedy, so the output is a pure function of weights and prompt.
     * The stop callback doubles as the cancellation check between tokens. */
    gen_opts_t o = {.max_new_tokens = n_new,
                    .sampling = {0.0f, 0, 1.0f},
                    .seed = 0,
                    .eot = -1,
                    .stop = stop_if_cancelled,
                    .stop_ctx = (void *)job};
    const int *prompt = toks;
    gen_seq_t seq = {0};
    if ((rc = gen_generate(m, &prompt, &P, 1, NULL, &o, &seq)) < 0) goto out;
    if (seq.finish == GEN_FINISH_STOP) {
        gen_seq_free(&seq);
        rc = rl_fail(RL_EIO, "generate: cancelled");
        goto out;
    }
    for (int k = 0; k < seq.n; k++) gen[k] = seq.tokens[k];
    n_new = seq.n;
    gen_seq_free(&seq);
    Rlhf__GenerateOutput go = RLHF__GENERATE_OUTPUT__INIT;
    go.tokens = gen;
    go.n_tokens = (size_t)n_new;
    *out_len = rlhf__generate_output__get_packed_size(&go);
    *out = malloc(*out_len ? *out_len : 1);
    if (!*out) {
        rc = rl_fail(RL_ENOMEM, "generate: out of memory");
        goto out;
    }
    rlhf__generate_output__pack(&go, *out);
out:
    free(toks);
    free(gen);
    rlhf__generate_spec__free_unpacked(sp, NULL);
    return rc;
}
