/*
 * client_tool.c - rlhf-client-tool, a command-line driver around common/net/client.h for the
 * runtime tests: submits jobs to a running master and prints one JSON line per finished job.
 *
 *   rlhf-client-tool submit --master EP [--noop N] [--generate N --model DIR] [--first-id ID]
 *                    [--delay-ms MS] [--name NAME] [--ns NS] [--timeout-ms MS] [--fetch-ms MS]
 *       N NOOP jobs with ids ID.., then N GENERATE jobs after them (prompt [1 + id % 7, 2, 3],
 *       6 new tokens, the handler taking at least --delay-ms); waits for all of them.
 *   rlhf-client-tool jobs --master EP --file FILE|- [--name NAME] [--timeout-ms MS]
 *       submits the jobs of FILE (or stdin), one JSON object a line (see "Job lines in" below),
 *       all in one client_submit, and waits for all of them.
 *   rlhf-client-tool fetch --master EP --first-id ID --n N
 *       waits for jobs ID..ID+N-1 submitted earlier (by another process) without their specs.
 *   rlhf-client-tool conflict --master EP --first-id ID
 *       submits NOOP job ID with a seed of its own: exit 0 when the master rejects it.
 *   rlhf-client-tool bad-submit --master EP
 *       invalid SubmitJobs (id 0, an unknown kind, a role that is no worker's), one from an
 *       unregistered peer and one cut short; exit 0 when each was refused as it should be, a
 *       GENERATE payload that is not a GenerateSpec was accepted (the master never decodes
 *       payloads) and then failed by the workers, and a valid job still runs.
 *
 * Job lines in (`jobs`), blank lines skipped; every field but id and kind optional:
 *   {"id": 1.., "kind": "noop"|"generate"|"train"|"stage", "seed" (0 or absent: the master derives
 *    it from the run seed and the id), "lease_ms", "policy_version", "delay_ms"}, and
 *   generate (GenerateSpec): "model", "prompt": [ids] (required), "max_new_tokens" (required),
 *     "n_samples", "temperature" (1), "top_k", "top_p" (1), "eot" (-1), "vocab_limit",
 *     "sample_base";
 *   train (TrainSpec, an LM step; the defaults of `rlhf train-lm`): "train": "lm", "model",
 *     "tokens": FILE with "batch_size" and "seq", or "batch": [[B rows of T+1 ids]], "step" (0),
 *     "steps" (1), "lr" (1e-3), "min_lr" (1e-4), "schedule": "constant"|"warmup"|"cosine"
 *     (cosine), "warmup" (20), "total_steps" (step + steps), "weight_decay" (0.1), "clip" (1),
 *     "grad_blocks" (0: the learner's default, 8), "ckpt_dir" (the training's checkpoint
 *     directory; absent: the learner's --run-dir);
 *   stage (StageSpec): "argv": [strings] (required), "name", "cwd", "log", "stdout_to", "master",
 *     "ns".
 * A bad line is refused as FILE:LINE with the field named (exit 2), before anything is sent.
 *
 * Job lines out: {"id","status","kind","attempt","worker","output_bytes","output_crc32c",
 * "tokens"?, "step"?, "params_crc32c"?, "exit_code"?, "reason"?} (tokens: a GENERATE job's
 * output; step and params_crc32c a TRAIN job's; exit_code a STAGE job's). A summary goes to stderr.
 * submit, jobs and fetch exit 0 when every job was delivered exactly once and done.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <zmq.h>

#include "base/crc32c.h"
#include "net/sec.h"
#include "net/client.h"
#include "base/err.h"
#include "net/wire.h"

typedef struct {
    uint64_t first;
    long n;
    unsigned char *seen; /* per id: delivered already */
    long delivered, duplicates, not_done;
} tally_t;

static const char *kind_str(int k) {
    switch (k) {
    case RLHF__JOB_KIND__JOB_KIND_GENERATE:
        return "generate";
    case RLHF__JOB_KIND__JOB_KIND_NOOP:
        return "noop";
    case RLHF__JOB_KIND__JOB_KIND_SCORE:
        return "score";
    case RLHF__JOB_KIND__JOB_KIND_TRAIN:
        return "train";
    case RLHF__JOB_KIND__JOB_KIND_STAGE:
        return "stage";
    default:
        return "other";
    }
}

static int on_result(void *ctx, const client_result_t *r) {
    tally_t *t = ctx;
    long i = (long)(r->id - t->first);
    if (i >= 0 && i < t->n && t->seen[i]++) t->duplicates++;
    t->delivered++;
    if (r->status != CLIENT_DONE) t->not_done++;
    printf("{\"id\":%" PRIu64 ",\"status\":\"%s\",\"kind\":\"%s\",\"attempt\":%u,\"worker\":\"%s\","
           "\"output_bytes\":%zu,\"output_crc32c\":\"%08x\"",
           r->id,
           r->status == CLIENT_DONE     ? "done"
           : r->status == CLIENT_FAILED ? "failed"
                                        : "rejected",
           kind_str(r->kind), r->attempt, r->worker, r->output_len,
           crc32c(0, r->output, r->output_len));
    if (r->status == CLIENT_DONE && r->kind == RLHF__JOB_KIND__JOB_KIND_GENERATE) {
        Rlhf__GenerateOutput *g = rlhf__generate_output__unpack(NULL, r->output_len, r->output);
        printf(",\"tokens\":[");
        for (size_t k = 0; g && k < g->n_tokens; k++) printf("%s%d", k ? "," : "", g->tokens[k]);
        printf("]");
        if (g) rlhf__generate_output__free_unpacked(g, NULL);
    }
    if (r->status == CLIENT_DONE && r->kind == RLHF__JOB_KIND__JOB_KIND_STAGE) {
        Rlhf__StageOutput *so = rlhf__stage_output__unpack(NULL, r->output_len, r->output);
        if (so) printf(",\"exit_code\":%d", so->exit_code);
        if (so) rlhf__stage_output__free_unpacked(so, NULL);
    }
    if (r->status == CLIENT_DONE && r->kind == RLHF__JOB_KIND__JOB_KIND_TRAIN) {
        Rlhf__TrainOutput *to = rlhf__train_output__unpack(NULL, r->output_len, r->output);
        if (to)
            printf(",\"step\":%" PRIu64 ",\"params_crc32c\":\"%08x\"", to->step, to->params_crc32c);
        if (to) rlhf__train_output__free_unpacked(to, NULL);
    }
    if (r->reason[0]) {
        json_t *js = json_string(r->reason); /* quoted: a command's error line may hold quotes */
        char *q = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
        printf(",\"reason\":%s", q ? q : "\"?\"");
        free(q);
        json_decref(js);
    }
    printf("}\n");
    fflush(stdout);
    return 0;
}

static int finish(client_t *c, tally_t *t, int rc) {
    client_stats_t st;
    client_stats(c, &st);
    fprintf(stderr,
            "{\"delivered\":%ld,\"duplicates\":%ld,\"not_done\":%ld,\"registrations\":%" PRIu64
            ",\"master_changes\":%" PRIu64 ",\"jobs_resubmitted\":%" PRIu64
            ",\"duplicates_dropped\":%" PRIu64 ",\"rc\":%d%s%s%s}\n",
            t->delivered, t->duplicates, t->not_done, st.registrations, st.master_changes,
            st.jobs_resubmitted, st.duplicates_dropped, rc, rc ? ",\"error\":\"" : "",
            rc ? rl_errmsg() : "", rc ? "\"" : "");
    int ok = rc == 0 && t->delivered == t->n && !t->duplicates && !t->not_done;
    client_close(&c);
    free(t->seen);
    return ok ? 0 : 1;
}

static uint8_t *pack_generate(const char *model, uint64_t id, uint32_t delay_ms, size_t *len) {
    Rlhf__GenerateSpec sp = RLHF__GENERATE_SPEC__INIT;
    int32_t prompt[3] = {1 + (int32_t)(id % 7), 2, 3};
    sp.model_dir = (char *)model;
    sp.prompt = prompt;
    sp.n_prompt = 3;
    sp.max_new_tokens = 6;
    sp.delay_ms = delay_ms;
    *len = rlhf__generate_spec__get_packed_size(&sp);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (buf) rlhf__generate_spec__pack(&sp, buf);
    return buf;
}

static int cmd_submit(client_t *c, long n_noop, long n_gen, const char *model, uint64_t first,
                      uint32_t delay_ms, int timeout_ms) {
    long n = n_noop + n_gen;
    tally_t t = {first, n, calloc((size_t)n + 1, 1), 0, 0, 0};
    client_job_t *jobs = calloc((size_t)n + 1, sizeof *jobs);
    uint64_t *ids = calloc((size_t)n + 1, sizeof *ids);
    if (!t.seen || !jobs || !ids) return 2;
    for (long i = 0; i < n; i++) {
        client_job_t *j = &jobs[i];
        j->id = ids[i] = first + (uint64_t)i;
        if (i < n_noop) {
            j->kind = RLHF__JOB_KIND__JOB_KIND_NOOP;
        } else {
            j->kind = RLHF__JOB_KIND__JOB_KIND_GENERATE;
            j->payload = pack_generate(model, j->id, delay_ms, &j->payload_len);
        }
    }
    int rc = client_submit(c, jobs, (int)n);
    fprintf(stderr, "submitted %ld jobs: %s\n", n, rc ? rl_errmsg() : "ok");
    if (rc == 0) rc = client_wait(c, ids, (int)n, timeout_ms, on_result, &t);
    for (long i = 0; i < n; i++) free((void *)jobs[i].payload);
    free(jobs);
    free(ids);
    return finish(c, &t, rc);
}

static int cmd_fetch(client_t *c, uint64_t first, long n, int timeout_ms) {
    tally_t t = {first, n, calloc((size_t)n + 1, 1), 0, 0, 0};
    uint64_t *ids = calloc((size_t)n + 1, sizeof *ids);
    if (!t.seen || !ids) return 2;
    for (long i = 0; i < n; i++) ids[i] = first + (uint64_t)i;
    int rc = client_fetch(c, ids, (int)n);
    if (rc == 0) rc = client_wait(c, ids, (int)n, timeout_ms, on_result, &t);
    free(ids);
    return finish(c, &t, rc);
}

static int cmd_conflict(client_t *c, uint64_t id) {
    client_job_t j = {.id = id, .kind = RLHF__JOB_KIND__JOB_KIND_NOOP, .seed = 0x5eed0ddULL};
    int rc = client_submit(c, &j, 1);
    printf("{\"id\":%" PRIu64 ",\"rejected\":%s,\"error\":\"%s\"}\n", id,
           rc == RL_EINVAL ? "true" : "false", rc ? rl_errmsg() : "");
    client_close(&c);
    return rc == RL_EINVAL ? 0 : 1;
}

/* ---- jobs: job lines from a file ----------------------------------------------------------- */

static double num_or(json_t *o, const char *key, double def) {
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : def;
}

/* A GENERATE line's spec, packed into *buf. Returns 0 or RL_E* with the reason. */
static int generate_from_json(json_t *o, const char *where, uint8_t **buf, size_t *len) {
    Rlhf__GenerateSpec sp = RLHF__GENERATE_SPEC__INIT;
    json_t *jm = json_object_get(o, "model"), *jp = json_object_get(o, "prompt");
    json_t *jn = json_object_get(o, "max_new_tokens");
    if (!json_is_string(jm) || !json_is_array(jp) || !json_array_size(jp) || !json_is_integer(jn))
        return rl_fail(RL_EINVAL, "%s: generate needs model, prompt (non-empty) and max_new_tokens",
                       where);
    size_t n = json_array_size(jp);
    int32_t *prompt = malloc(n * sizeof *prompt);
    if (!prompt) return rl_fail(RL_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) prompt[i] = (int32_t)json_integer_value(json_array_get(jp, i));
    sp.model_dir = (char *)json_string_value(jm);
    sp.prompt = prompt;
    sp.n_prompt = n;
    sp.max_new_tokens = (uint32_t)json_integer_value(jn);
    sp.delay_ms = (uint32_t)num_or(o, "delay_ms", 0);
    sp.n_samples = (uint32_t)num_or(o, "n_samples", 0);
    sp.temperature = (float)num_or(o, "temperature", 1.0);
    sp.top_k = (uint32_t)num_or(o, "top_k", 0);
    sp.top_p = (float)num_or(o, "top_p", 1.0);
    sp.eot = (int32_t)num_or(o, "eot", -1);
    sp.vocab_limit = (uint32_t)num_or(o, "vocab_limit", 0);
    sp.sample_base = (uint64_t)num_or(o, "sample_base", 0);
    *len = rlhf__generate_spec__get_packed_size(&sp);
    *buf = malloc(*len ? *len : 1);
    if (*buf) rlhf__generate_spec__pack(&sp, *buf);
    free(prompt);
    return *buf ? 0 : rl_fail(RL_ENOMEM, "out of memory");
}

/* A TRAIN line's spec (an LM step), packed into *buf. Returns 0 or RL_E* with the reason. */
static int train_from_json(json_t *o, const char *where, uint8_t **buf, size_t *len) {
    Rlhf__TrainSpec sp = RLHF__TRAIN_SPEC__INIT;
    json_t *jt = json_object_get(o, "train"), *jm = json_object_get(o, "model");
    json_t *jf = json_object_get(o, "tokens"), *jb = json_object_get(o, "batch");
    json_t *js = json_object_get(o, "schedule");
    const char *kind = json_is_string(jt) ? json_string_value(jt) : "lm";
    const char *sched = json_is_string(js) ? json_string_value(js) : "cosine";
    if (strcmp(kind, "lm"))
        return rl_fail(RL_EUNSUPPORTED, "%s: train: '%s' is not a supported kind (lm)", where,
                       kind);
    sp.kind = RLHF__TRAIN_KIND__TRAIN_KIND_LM;
    if (!strcmp(sched, "constant"))
        sp.schedule = RLHF__TRAIN_SCHEDULE__TRAIN_SCHEDULE_CONSTANT;
    else if (!strcmp(sched, "warmup"))
        sp.schedule = RLHF__TRAIN_SCHEDULE__TRAIN_SCHEDULE_WARMUP;
    else if (!strcmp(sched, "cosine"))
        sp.schedule = RLHF__TRAIN_SCHEDULE__TRAIN_SCHEDULE_COSINE;
    else
        return rl_fail(RL_EINVAL, "%s: schedule: '%s' is not constant, warmup or cosine", where,
                       sched);
    if (!json_is_string(jm) || json_is_string(jf) == json_is_array(jb))
        return rl_fail(RL_EINVAL, "%s: train needs model and one of tokens (a file) or batch",
                       where);
    sp.model_dir = (char *)json_string_value(jm);
    double B = num_or(o, "batch_size", 0), T = num_or(o, "seq", 0);
    int32_t *ids = NULL;
    if (json_is_array(jb)) { /* rows of T+1 ids, all the same length */
        json_t *r0 = json_array_get(jb, 0);
        B = (double)json_array_size(jb);
        T = json_is_array(r0) ? (double)json_array_size(r0) - 1 : 0;
        if (B < 1 || T < 1 || B * (T + 1) > 1 << 24)
            return rl_fail(RL_EINVAL, "%s: batch: rows of at least 2 ids expected", where);
        ids = malloc((size_t)(B * (T + 1)) * sizeof *ids);
        if (!ids) return rl_fail(RL_ENOMEM, "out of memory");
        for (size_t b = 0; b < (size_t)B; b++) {
            json_t *row = json_array_get(jb, b);
            if (!json_is_array(row) || json_array_size(row) != (size_t)T + 1) {
                free(ids);
                return rl_fail(RL_EINVAL, "%s: batch row %zu: %d ids expected", where, b,
                               (int)T + 1);
            }
            for (size_t t = 0; t <= (size_t)T; t++)
                ids[b * ((size_t)T + 1) + t] = (int32_t)json_integer_value(json_array_get(row, t));
        }
        sp.batch = ids;
        sp.n_batch = (size_t)(B * (T + 1));
    } else {
        sp.tokens_file = (char *)json_string_value(jf);
    }
    double step = num_or(o, "step", 0), steps = num_or(o, "steps", 1);
    if (B < 1 || B > 1 << 20 || T < 1 || T > 1 << 20 || step < 0 || steps < 1 || steps > 1 << 24) {
        free(ids);
        return rl_fail(RL_EINVAL, "%s: train: batch_size, seq, step or steps out of range", where);
    }
    sp.batch_size = (uint32_t)B;
    sp.seq_len = (uint32_t)T;
    sp.step = (uint64_t)step;
    sp.n_steps = (uint32_t)steps;
    sp.lr = (float)num_or(o, "lr", 1e-3);
    sp.min_lr = (float)num_or(o, "min_lr", 1e-4);
    sp.warmup = (uint64_t)num_or(o, "warmup", 20);
    sp.total_steps = (uint64_t)num_or(o, "total_steps", step + steps);
    sp.weight_decay = (float)num_or(o, "weight_decay", 0.1);
    sp.clip = (float)num_or(o, "clip", 1.0);
    sp.delay_ms = (uint32_t)num_or(o, "delay_ms", 0);
    sp.grad_blocks = (uint32_t)num_or(o, "grad_blocks", 0);
    json_t *jc = json_object_get(o, "ckpt_dir");
    if (json_is_string(jc)) sp.ckpt_dir = (char *)json_string_value(jc);
    *len = rlhf__train_spec__get_packed_size(&sp);
    *buf = malloc(*len ? *len : 1);
    if (*buf) rlhf__train_spec__pack(&sp, *buf);
    free(ids);
    return *buf ? 0 : rl_fail(RL_ENOMEM, "out of memory");
}

/* A STAGE line's spec: "argv" (strings), "name", "cwd", "log", "stdout_to", "master", "ns". */
static int stage_from_json(json_t *o, const char *where, uint8_t **buf, size_t *len) {
    Rlhf__StageSpec sp = RLHF__STAGE_SPEC__INIT;
    json_t *ja = json_object_get(o, "argv");
    if (!json_is_array(ja) || !json_array_size(ja))
        return rl_fail(RL_EINVAL, "%s: stage needs argv (non-empty)", where);
    size_t n = json_array_size(ja);
    char **argv = calloc(n, sizeof *argv);
    if (!argv) return rl_fail(RL_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) argv[i] = (char *)json_string_value(json_array_get(ja, i));
    for (size_t i = 0; i < n; i++)
        if (!argv[i]) {
            free(argv);
            return rl_fail(RL_EINVAL, "%s: argv[%zu]: a string is required", where, i);
        }
    sp.argv = argv;
    sp.n_argv = n;
    const char *keys[] = {"name", "cwd", "log", "stdout_to", "master", "ns"};
    char **fields[] = {&sp.name, &sp.cwd, &sp.log, &sp.stdout_to, &sp.master, &sp.ns};
    for (int i = 0; i < 6; i++) {
        json_t *v = json_object_get(o, keys[i]);
        if (json_is_string(v)) *fields[i] = (char *)json_string_value(v);
    }
    *len = rlhf__stage_spec__get_packed_size(&sp);
    *buf = malloc(*len ? *len : 1);
    if (*buf) rlhf__stage_spec__pack(&sp, *buf);
    free(argv);
    return *buf ? 0 : rl_fail(RL_ENOMEM, "out of memory");
}

/* One job line into *j (its payload malloc'ed). Returns 0 or RL_E* naming where and the field. */
static int job_from_json(json_t *o, const char *where, client_job_t *j) {
    json_t *jid = json_object_get(o, "id"), *jk = json_object_get(o, "kind");
    json_t *js = json_object_get(o, "seed"), *jl = json_object_get(o, "lease_ms");
    json_t *jv = json_object_get(o, "policy_version");
    const char *ks = json_is_string(jk) ? json_string_value(jk) : "";
    memset(j, 0, sizeof *j);
    if (!json_is_integer(jid) || json_integer_value(jid) <= 0)
        return rl_fail(RL_EINVAL, "%s: id: a positive integer is required", where);
    if ((js && (!json_is_integer(js) || json_integer_value(js) < 0)) ||
        (jl && (!json_is_integer(jl) || json_integer_value(jl) < 0)) ||
        (jv && (!json_is_integer(jv) || json_integer_value(jv) < 0)))
        return rl_fail(RL_EINVAL, "%s: seed, lease_ms, policy_version: non-negative integers",
                       where);
    j->id = (uint64_t)json_integer_value(jid);
    j->seed = js ? (uint64_t)json_integer_value(js) : 0;
    j->lease_ms = jl ? (uint32_t)json_integer_value(jl) : 0;
    j->policy_version = jv ? (uint64_t)json_integer_value(jv) : 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = 0;
    if (!strcmp(ks, "noop")) {
        j->kind = RLHF__JOB_KIND__JOB_KIND_NOOP;
    } else if (!strcmp(ks, "generate")) {
        j->kind = RLHF__JOB_KIND__JOB_KIND_GENERATE;
        rc = generate_from_json(o, where, &buf, &len);
    } else if (!strcmp(ks, "train")) {
        j->kind = RLHF__JOB_KIND__JOB_KIND_TRAIN;
        rc = train_from_json(o, where, &buf, &len);
    } else if (!strcmp(ks, "stage")) {
        j->kind = RLHF__JOB_KIND__JOB_KIND_STAGE;
        rc = stage_from_json(o, where, &buf, &len);
    } else {
        rc = rl_fail(RL_EINVAL, "%s: kind: '%s' is not generate, train, stage or noop", where, ks);
    }
    j->payload = buf;
    j->payload_len = len;
    return rc;
}

/* Reads every job line of path ("-": stdin) into *jobs. Returns the count or RL_E*. */
static long jobs_read(const char *path, client_job_t **jobs) {
    FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!f) return rl_fail(RL_ENOTFOUND, "%s: %s", path, strerror(errno));
    char *line = NULL, where[4200];
    size_t cap = 0;
    long n = 0, room = 0, lineno = 0;
    int rc = 0;
    *jobs = NULL;
    while (rc >= 0 && getline(&line, &cap, f) > 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == strlen(line)) continue;
        snprintf(where, sizeof where, "%.4000s:%ld", path, lineno);
        if (n == room) {
            client_job_t *nj = realloc(*jobs, (size_t)(room = room ? 2 * room : 64) * sizeof *nj);
            if (!nj) {
                rc = rl_fail(RL_ENOMEM, "out of memory");
                break;
            }
            *jobs = nj;
        }
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        rc = o ? job_from_json(o, where, &(*jobs)[n])
               : rl_fail(RL_EFORMAT, "%s: %s", where, je.text);
        if (o) n++; /* its payload (if any) is freed with the others */
        json_decref(o);
    }
    free(line);
    if (f != stdin) fclose(f);
    if (rc < 0) { /* nothing is sent: the jobs read so far go */
        for (long i = 0; i < n; i++) free((void *)(*jobs)[i].payload);
        free(*jobs);
        *jobs = NULL;
    }
    return rc < 0 ? rc : n;
}

/* Submits the n jobs read from path (their payloads are freed here) and waits for them. */
static int cmd_jobs(client_t *c, client_job_t *jobs, long n, const char *path, int timeout_ms) {
    uint64_t *ids = n > 0 ? calloc((size_t)n, sizeof *ids) : NULL;
    uint64_t lo = UINT64_MAX;
    for (long i = 0; i < n; i++) {
        if (ids) ids[i] = jobs[i].id;
        lo = jobs[i].id < lo ? jobs[i].id : lo;
    }
    /* repeats are told apart among ids lo .. lo + n - 1 (consecutive ids: all of them); a
     * repeat anywhere still shows as more deliveries than jobs */
    tally_t t = {lo, n, n > 0 ? calloc((size_t)n + 1, 1) : NULL, 0, 0, 0};
    int rc = n == 0 ? rl_fail(RL_EINVAL, "%s: no jobs", path) : 0;
    if (rc == 0 && (!ids || !t.seen)) rc = rl_fail(RL_ENOMEM, "out of memory");
    if (rc < 0) {
        fprintf(stderr, "rlhf-client-tool: %s\n", rl_errmsg());
        for (long i = 0; i < n; i++) free((void *)jobs[i].payload);
        free(jobs);
        free(ids);
        free(t.seen);
        client_close(&c);
        return 2;
    }
    rc = client_submit(c, jobs, (int)n);
    fprintf(stderr, "submitted %ld jobs from %s: %s\n", n, path, rc ? rl_errmsg() : "ok");
    if (rc == 0) rc = client_wait(c, ids, (int)n, timeout_ms, on_result, &t);
    for (long i = 0; i < n; i++) free((void *)jobs[i].payload);
    free(jobs);
    free(ids);
    return finish(c, &t, rc);
}

/* ---- bad-submit: raw messages --------------------------------------------------------------- */

static void *raw_dealer(void *ctx, const char *ep) {
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (sec_client(s, sec_master_pub()) < 0 || zmq_connect(s, ep) < 0) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

static void raw_send(void *s, Rlhf__Envelope *env) {
    wire_send(s, NULL, 0, env, NULL, NULL, 0, 0);
}

/* The next message with this body (others skipped), or NULL after 10 s. */
static Rlhf__Envelope *raw_expect(void *s, Rlhf__Envelope__BodyCase body) {
    double deadline = wire_now_ms() + 10000;
    while (wire_now_ms() < deadline) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0) continue;
        wire_msg_t m;
        Rlhf__Envelope *env = NULL;
        while (wire_recv(s, 0, &m, ZMQ_DONTWAIT) > 0) {
            int hit = wire_decode(&m, &env) == WIRE_OK && env->body_case == body;
            wire_msg_free(&m);
            if (hit) return env;
            if (env) rlhf__envelope__free_unpacked(env, NULL);
            env = NULL;
        }
    }
    return NULL;
}

static int cmd_bad_submit(void *zctx, const char *ep) {
    int ok = 1;
    /* from a peer that never said Hello: NOT_REGISTERED */
    void *s = raw_dealer(zctx, ep);
    if (!s) return 2;
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__SubmitJobs sj = RLHF__SUBMIT_JOBS__INIT;
    Rlhf__JobSpec js[4], *jp[4];
    for (int i = 0; i < 4; i++) {
        rlhf__job_spec__init(&js[i]);
        jp[i] = &js[i];
        js[i].kind = RLHF__JOB_KIND__JOB_KIND_NOOP;
    }
    js[0].id = 0;      /* id 0 */
    js[1].id = 900001; /* an unknown kind */
    js[1].kind = (Rlhf__JobKind)99;
    static uint8_t junk[] = {0xff, 0xff, 0xff, 0x07, 0x01};
    js[2].id = 900002; /* a GENERATE payload that is not a GenerateSpec */
    js[2].kind = RLHF__JOB_KIND__JOB_KIND_GENERATE;
    js[2].payload.data = junk;
    js[2].payload.len = sizeof junk;
    js[3].id = 900003; /* a role that is no worker's */
    js[3].role = RLHF__ROLE__ROLE_TOOL;
    sj.request_id = 7;
    sj.jobs = jp;
    sj.n_jobs = 4;
    env.body_case = RLHF__ENVELOPE__BODY_SUBMIT_JOBS;
    env.submit_jobs = &sj;
    raw_send(s, &env);
    Rlhf__Envelope *in = raw_expect(s, RLHF__ENVELOPE__BODY_ERROR);
    int unreg = in && in->error->code == RLHF__ERROR_CODE__ERROR_CODE_NOT_REGISTERED;
    printf("{\"check\":\"unregistered\",\"refused\":%s}\n", unreg ? "true" : "false");
    ok &= unreg;
    if (in) rlhf__envelope__free_unpacked(in, NULL);
    /* registered as a client: every one of the four is rejected with a reason */
    Rlhf__Envelope he = RLHF__ENVELOPE__INIT;
    Rlhf__Hello h = RLHF__HELLO__INIT;
    h.role = RLHF__ROLE__ROLE_CLIENT;
    h.worker_id = "bad-client";
    he.body_case = RLHF__ENVELOPE__BODY_HELLO;
    he.hello = &h;
    raw_send(s, &he);
    in = raw_expect(s, RLHF__ENVELOPE__BODY_WELCOME);
    ok &= in != NULL;
    if (in) rlhf__envelope__free_unpacked(in, NULL);
    raw_send(s, &env);
    in = raw_expect(s, RLHF__ENVELOPE__BODY_SUBMIT_ACK);
    size_t n_rej = in ? in->submit_ack->n_rejected : 0;
    /* three refused by the master; the fourth's payload is opaque to it: accepted */
    int all = in && n_rej == 3 && in->submit_ack->n_reasons == 3 &&
              in->submit_ack->n_accepted == 1 && in->submit_ack->accepted[0] == 900002;
    printf("{\"check\":\"invalid specs\",\"rejected\":%zu,\"reasons\":[", n_rej);
    for (size_t i = 0; in && i < in->submit_ack->n_reasons; i++)
        printf("%s\"%s\"", i ? "," : "", in->submit_ack->reasons[i]);
    printf("]}\n");
    ok &= all;
    if (in) rlhf__envelope__free_unpacked(in, NULL);
    /* a SubmitJobs cut short: not even an envelope (refused by the wire layer), then a Ping
     * that must still be answered */
    Rlhf__JobSpec one = RLHF__JOB_SPEC__INIT, *onep = &one;
    one.id = 900004;
    one.kind = RLHF__JOB_KIND__JOB_KIND_NOOP;
    sj.jobs = &onep;
    sj.n_jobs = 1;
    env.protocol_version = RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    uint8_t buf[256];
    size_t n = rlhf__envelope__pack(&env, buf);
    zmq_send(s, buf, n - 2, 0);
    Rlhf__Envelope pe = RLHF__ENVELOPE__INIT;
    Rlhf__Ping p = RLHF__PING__INIT;
    p.nonce = 4242;
    pe.body_case = RLHF__ENVELOPE__BODY_PING;
    pe.ping = &p;
    raw_send(s, &pe);
    in = raw_expect(s, RLHF__ENVELOPE__BODY_PONG);
    int pong = in && in->pong->nonce == 4242;
    printf("{\"check\":\"truncated\",\"still_served\":%s}\n", pong ? "true" : "false");
    ok &= pong;
    if (in) rlhf__envelope__free_unpacked(in, NULL);
    zmq_close(s);
    /* the job whose payload is not a GenerateSpec: failed by the workers, after its attempts */
    client_t *c = client_open(ep, "good-client");
    tally_t t = {900002, 1, calloc(2, 1), 0, 0, 0};
    uint64_t id = 900002;
    int rc = c ? client_fetch(c, &id, 1) : RL_EIO;
    if (rc == 0) rc = client_wait(c, &id, 1, 60000, on_result, &t);
    int failed = rc == 0 && t.delivered == 1 && t.not_done == 1;
    printf("{\"check\":\"opaque payload\",\"failed_by_worker\":%s}\n", failed ? "true" : "false");
    ok &= failed;
    free(t.seen);
    /* and a valid job from a real client still runs */
    t = (tally_t){900010, 1, calloc(2, 1), 0, 0, 0};
    client_job_t j = {.id = 900010, .kind = RLHF__JOB_KIND__JOB_KIND_NOOP};
    id = 900010;
    rc = c ? client_submit(c, &j, 1) : RL_EIO;
    if (rc == 0) rc = client_wait(c, &id, 1, 30000, on_result, &t);
    ok &= c && finish(c, &t, rc) == 0;
    return ok ? 0 : 1;
}

static const char usage[] =
    "usage: rlhf-client-tool submit|jobs|fetch|conflict|bad-submit --master EP [--noop N]\n"
    "       [--generate N --model DIR] [--file FILE|-] [--first-id ID] [--n N] [--delay-ms MS]\n"
    "       [--name NAME] [--ns NS] [--timeout-ms MS] [--fetch-ms MS]\n";

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    /* a client of the cluster under test: its key from $RLHF_KEY / $RLHF_KEYS, plaintext
     * without */
    const char *kd = getenv("RLHF_KEYS"), *kf = getenv("RLHF_KEY");
    if (((kd && kd[0]) || (kf && kf[0])) && sec_init(SEC_ROLE_CLIENT, NULL, NULL, 0) < 0) {
        fprintf(stderr, "rlhf-client-tool: %s\n", rl_errmsg());
        return 2;
    }
    const char *cmd = argv[1], *ep = NULL, *model = NULL, *name = NULL, *file = NULL;
    long n_noop = 0, n_gen = 0, n = 0;
    uint64_t first = 1;
    uint32_t delay = 0;
    int timeout = 120000;
    client_opts_t o = {0, 0, 0, 0, NULL};
    static const struct option opts[] = {{"master", 1, 0, 'm'},
                                         {"noop", 1, 0, 'N'},
                                         {"generate", 1, 0, 'G'},
                                         {"model", 1, 0, 'M'},
                                         {"first-id", 1, 0, 'f'},
                                         {"n", 1, 0, 'n'},
                                         {"delay-ms", 1, 0, 'd'},
                                         {"name", 1, 0, 'a'},
                                         {"timeout-ms", 1, 0, 't'},
                                         {"fetch-ms", 1, 0, 'F'},
                                         {"file", 1, 0, 'J'},
                                         {"ns", 1, 0, 'S'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            ep = optarg;
            break;
        case 'N':
            n_noop = atol(optarg);
            break;
        case 'G':
            n_gen = atol(optarg);
            break;
        case 'M':
            model = optarg;
            break;
        case 'f':
            first = strtoull(optarg, NULL, 10);
            break;
        case 'n':
            n = atol(optarg);
            break;
        case 'd':
            delay = (uint32_t)atol(optarg);
            break;
        case 'a':
            name = optarg;
            break;
        case 't':
            timeout = atoi(optarg);
            break;
        case 'F':
            o.fetch_ms = atoi(optarg);
            break;
        case 'J':
            file = optarg;
            break;
        case 'S':
            o.ns = optarg;
            break;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    if (!ep || n_noop < 0 || n_gen < 0 || n < 0 || (n_gen && !model) || first == 0 ||
        (!strcmp(cmd, "jobs") && !file)) {
        fputs(usage, stderr);
        return 2;
    }
    if (!strcmp(cmd, "bad-submit")) {
        void *zctx = zmq_ctx_new();
        int rc = cmd_bad_submit(zctx, ep);
        zmq_ctx_term(zctx);
        return rc;
    }
    client_job_t *jobs = NULL;
    long n_jobs = 0;
    if (!strcmp(cmd, "jobs") && (n_jobs = jobs_read(file, &jobs)) < 0) {
        fprintf(stderr, "rlhf-client-tool: %s\n", rl_errmsg());
        return 2; /* nothing sent */
    }
    client_t *cl = client_open_opts(ep, name, &o);
    if (!cl) {
        fprintf(stderr, "rlhf-client-tool: %s\n", rl_errmsg());
        return 2;
    }
    if (!strcmp(cmd, "submit")) return cmd_submit(cl, n_noop, n_gen, model, first, delay, timeout);
    if (!strcmp(cmd, "jobs")) return cmd_jobs(cl, jobs, n_jobs, file, timeout);
    if (!strcmp(cmd, "fetch")) return cmd_fetch(cl, first, n, timeout);
    if (!strcmp(cmd, "conflict")) return cmd_conflict(cl, first);
    client_close(&cl);
    fputs(usage, stderr);
    return 2;
}
