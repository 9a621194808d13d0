/*
 * worker_generate.c - the GENERATE handler of rollout workers: KV-cached generation (gen.h) of
 * K completions of each prompt, sampled with the job's temperature / top-k / top-p (greedy at
 * temperature 0), with their per-token logprobs (at temperature 1, or at the sampling
 * temperature with logprobs_at_temperature: PPO's old logprobs). Every draw is keyed by (job seed,
 * sample index), so the output is a pure function of the weights and the spec, whichever worker
 * runs it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/err.h"
#include "nn/gen.h"
#include "nn/gpt.h"
#include "nn/hf.h"
#include "rlhf.pb-c.h"
#include "worker.h"

/* A rollout worker's state between jobs: the model of the last job's directory and its packed
 * weights, kept while jobs name the same directory. */
struct rollout_state {
    gpt_t *cached;
    char cached_dir[4096];
    uint64_t cached_version; /* weights version in `cached`: 0 = the directory's own */
    /* `cached`'s weights packed for generation; repacked (in place) when a job brings another
     * version, so a weights version is packed once however many jobs use it */
    gen_packed_t *cached_pack;
    int pack_stale;
};

static void rollout_state_drop(rollout_state_t *r) {
    gpt_destroy(&r->cached);
    gen_pack_free(&r->cached_pack);
    r->pack_stale = 1;
    r->cached_dir[0] = 0;
    r->cached_version = 0;
}

rollout_state_t *rollout_state_new(void) {
    rollout_state_t *r = calloc(1, sizeof *r);
    if (!r) {
        rl_fail(RL_ENOMEM, "rollout state: out of memory");
        return NULL;
    }
    r->pack_stale = 1;
    return r;
}

void rollout_state_destroy(rollout_state_t **rp) {
    if (!rp || !*rp) return;
    rollout_state_drop(*rp);
    free(*rp);
    *rp = NULL;
}

/* The model of `dir` with the job's weights: the directory gives the configuration (and the
 * version-0 weights); a synced snapshot of another version replaces the parameters. */
static gpt_t *model_get(rollout_state_t *r, const char *dir, const worker_job_t *job) {
    if (!r->cached || strcmp(r->cached_dir, dir)) {
        rollout_state_drop(r);
        if (strlen(dir) >= sizeof r->cached_dir) {
            rl_fail(RL_EINVAL, "model_dir too long");
            return NULL;
        }
        r->cached = hf_load(dir);
        if (!r->cached) return NULL;
        snprintf(r->cached_dir, sizeof r->cached_dir, "%s", dir);
    }
    if (job->weights_version && job->weights_version != r->cached_version) {
        if (job->weights_bytes != r->cached->num_params * sizeof(float)) {
            rl_fail(RL_EINVAL, "weights version %llu has %zu bytes; %s needs %zu",
                    (unsigned long long)job->weights_version, job->weights_bytes, dir,
                    r->cached->num_params * sizeof(float));
            return NULL;
        }
        memcpy(r->cached->params_mem, job->weights, job->weights_bytes);
        r->cached_version = job->weights_version;
        r->pack_stale = 1;
    } else if (!job->weights_version && r->cached_version) {
        /* a job for the directory's own weights after a synced version: reload them */
        rollout_state_drop(r);
        return model_get(r, dir, job);
    }
    return r->cached;
}

static int stop_if_cancelled(void *ctx, int seq, const int *tokens, int n) {
    (void)seq, (void)tokens, (void)n;
    const worker_job_t *job = ctx;
    return atomic_load(job->cancel) ? 1 : 0;
}

int worker_generate(rollout_state_t *r, const worker_job_t *job, const uint8_t *payload, size_t len,
                    uint8_t **out, size_t *out_len) {
    Rlhf__GenerateSpec *sp = rlhf__generate_spec__unpack(NULL, len, payload);
    if (!sp) return rl_fail(RL_EFORMAT, "generate: malformed GenerateSpec");
    int rc = 0, K = 0, NP = 0, *plens = NULL;
    int32_t *gen = NULL;
    gen_seq_t *seqs = NULL;
    uint64_t *ids = NULL;
    const int **prompts = NULL;
    Rlhf__Completion *comps = NULL, **compp = NULL;
    /* test hook: a job that takes at least delay_ms, still cancellable */
    for (uint32_t waited = 0; waited < sp->delay_ms && !atomic_load(job->cancel); waited += 10) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    gpt_t *m = model_get(r, sp->model_dir ? sp->model_dir : "", job);
    if (!m) {
        rc = rl_fail_ctx(RL_EINVAL, "generate");
        goto out;
    }
    int V = m->cfg.vocab_size, ctx = m->cfg.n_positions;
    /* the prompts: `prompts` when given (each gets n_samples), else the one `prompt` */
    NP = sp->n_prompts ? (int)sp->n_prompts : 1;
    int n_new = (int)sp->max_new_tokens; /* a full context ends a sequence earlier */
    K = sp->n_samples ? (int)sp->n_samples : 1;
    if (!sp->n_samples && sp->n_prompts > 1) {
        rc = rl_fail(RL_EINVAL, "generate: several prompts need n_samples");
        goto out;
    }
    if ((long)K * NP > 4096) {
        rc = rl_fail(RL_EINVAL, "generate: %d prompts x %d samples (at most 4096)", NP, K);
        goto out;
    }
    int NS = K * NP;
    gen = malloc((size_t)(n_new ? n_new : 1) * sizeof *gen);
    if (!gen) {
        rc = rl_fail(RL_ENOMEM, "generate: out of memory");
        goto out;
    }
    seqs = calloc((size_t)NS, sizeof *seqs);
    ids = malloc((size_t)NS * sizeof *ids);
    prompts = malloc((size_t)NS * sizeof *prompts);
    plens = malloc((size_t)NS * sizeof *plens);
    comps = calloc((size_t)NS, sizeof *comps);
    compp = malloc((size_t)NS * sizeof *compp);
    if (!seqs || !ids || !prompts || !plens || !comps || !compp) {
        rc = rl_fail(RL_ENOMEM, "generate: out of memory");
        goto out;
    }
    for (int p = 0; p < NP; p++) {
        const int32_t *pt = sp->n_prompts ? sp->prompts[p]->ids : sp->prompt;
        int P = sp->n_prompts ? (int)sp->prompts[p]->n_ids : (int)sp->n_prompt;
        if (P < 1 || P >= ctx) {
            rc = rl_fail(RL_EINVAL, "generate: prompt %d of %d tokens (context %d)", p, P, ctx);
            goto out;
        }
        for (int i = 0; i < P; i++)
            if (pt[i] < 0 || pt[i] >= V) {
                rc = rl_fail(RL_EINVAL, "generate: prompt token %d out of range [0, %d)", pt[i], V);
                goto out;
            }
        for (int i = 0; i < K; i++) {
            ids[p * K + i] = sp->sample_base + (uint64_t)(p * K + i);
            prompts[p * K + i] = pt; /* int32_t and int: the same type on every target we build */
            plens[p * K + i] = P;
        }
    }
    gen_opts_t o = {.max_new_tokens = n_new,
                    .sampling = {0.0f, 0, 1.0f},
                    .seed = 0,
                    .eot = sp->n_samples ? sp->eot : -1,
                    .vocab_limit = (int)sp->vocab_limit,
                    .stop = stop_if_cancelled,
                    .stop_ctx = (void *)job};
    if (sp->n_samples) {
        o.sampling.temperature = sp->temperature;
        o.sampling.top_k = (int)sp->top_k;
        o.sampling.top_p = sp->top_p > 0 ? sp->top_p : 1.0f;
        o.seed = job->seed;
        if (smp_params_check(&o.sampling) < 0) {
            rc = rl_fail_ctx(RL_EINVAL, "generate");
            goto out;
        }
        if (sp->logprobs_at_temperature &&
            (o.sampling.top_k != 0 || o.sampling.top_p < 1.0f || !(o.sampling.temperature > 0))) {
            rc = rl_fail(RL_EINVAL, "generate: logprobs at the temperature need temperature > 0, "
                                    "top_k 0 and top_p 1");
            goto out;
        }
        if (o.eot >= V || (o.vocab_limit && o.vocab_limit > V)) {
            rc = rl_fail(RL_EINVAL, "generate: eot %d / vocab_limit %d outside the vocabulary %d",
                         o.eot, o.vocab_limit, V);
            goto out;
        }
    }
    if (r->pack_stale) {
        if ((rc = gen_pack(m, &r->cached_pack)) < 0) goto out;
        r->pack_stale = 0;
    }
    o.packed = r->cached_pack;
    if ((rc = gen_generate(m, prompts, plens, NS, ids, &o, seqs)) < 0) goto out;
    for (int i = 0; i < NS; i++)
        if (seqs[i].finish == GEN_FINISH_STOP) {
            rc = rl_fail(RL_EIO, "generate: cancelled");
            goto out;
        }
    Rlhf__GenerateOutput go = RLHF__GENERATE_OUTPUT__INIT;
    if (!sp->n_samples) {
        for (int k = 0; k < seqs[0].n; k++) gen[k] = seqs[0].tokens[k];
        go.tokens = gen;
        go.n_tokens = (size_t)seqs[0].n;
    } else {
        for (int i = 0; i < K * NP; i++) {
            rlhf__completion__init(&comps[i]);
            comps[i].tokens = seqs[i].tokens;
            comps[i].n_tokens = (size_t)seqs[i].n;
            /* without top-k / top-p the sampling distribution is softmax(logits / T) */
            comps[i].logprobs =
                sp->logprobs_at_temperature ? seqs[i].logprobs : seqs[i].logprobs_model;
            comps[i].n_logprobs = (size_t)seqs[i].n;
            comps[i].finish = (uint32_t)seqs[i].finish;
            compp[i] = &comps[i];
        }
        go.completions = compp;
        go.n_completions = (size_t)(K * NP);
    }
    *out_len = rlhf__generate_output__get_packed_size(&go);
    *out = malloc(*out_len ? *out_len : 1);
    if (!*out) {
        rc = rl_fail(RL_ENOMEM, "generate: out of memory");
        goto out;
    }
    rlhf__generate_output__pack(&go, *out);
out:
    if (seqs)
        for (int i = 0; i < K * NP; i++) gen_seq_free(&seqs[i]);
    free(seqs);
    free(ids);
    free(prompts);
    free(plens);
    free(comps);
    free(compp);
    free(gen);
    rlhf__generate_spec__free_unpacked(sp, NULL);
    return rc;
}
