/*
 * master_run.c - the runs a master owns: stages as jobs, the PPO loop, journaled (see
 * master_run.h for the design).
 */
#include "master_run.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/jsonl.h"
#include "master_annot.h"
#include "net/blob.h"
#include "net/wire.h"

enum { R_QUEUED, R_RUNNING, R_PAUSED, R_FAILED, R_CANCELLED, R_SUCCEEDED };
static const char *const state_names[] = {"queued", "running",   "paused",
                                          "failed", "cancelled", "succeeded"};

/* A PPO stage's prompt: its text and token ids (ppo-prep's OUT/ppo_prompts.jsonl), and what a
 * reward program gets of its record: {"reference": ..., "record": {...}} (NULL: no record). */
typedef struct {
    char *text;
    int32_t *ids;
    size_t n;
    char *refs;
} mprompt_t;

/* One rollout of the iteration in flight. */
typedef struct {
    int prompt;
    int32_t *tokens;
    float *logprobs, *ref_logprobs;
    int n, finish;
    float score;
    double gold, model_score, prog_score; /* the parts of score, with a reward program */
} mroll_t;

/* The rollouts of one iteration, from its GENERATE then its SCORE outputs. */
typedef struct {
    mroll_t *r;                      /* P * K */
    long have_gen;                   /* the iteration whose GENERATE outputs r holds (-1: none) */
    long have_score;                 /* ... whose SCORE outputs */
    long prog_errors, prog_timeouts; /* the reward program's, in its SCORE jobs */
    json_t *gen_by, *score_by;       /* milliseconds of math per worker */
    double t_gen0, t_gen, t_score0, t_score;
} mbatch_t;

/* The PPO loop of a run: its plan (OUT/ppo_plan.json) and the iterations in flight: the one
 * being updated and, with overlap, the next one, whose rollouts are generated meanwhile - each
 * in the batch of its parity (batch()). */
typedef struct {
    char *policy, *rm, *ref, *value, *out, *cfg_json;
    int iterations, P, K, J, n_jobs, max_new, ckpt_every, gold, count_token, eot, vocab;
    float temperature;
    uint64_t seed;
    double s_mean, s_std;
    char *program; /* the reward program's command ("": none), its weights and limits */
    double program_weight, model_weight, program_fallback;
    int program_timeout_ms;
    int overlap; /* config_json's "overlap" is one_step_off */
    mprompt_t *p;
    int n_p;
    mbatch_t b[2];
    int attached;      /* the learner holds this training at the committed iteration */
    uint64_t attaches; /* attach jobs sent by this master (ids) */
    double t_iter, t_train0;
} mppo_t;

struct mrun {
    char name[128];
    json_t *plan;
    char dir[PATH_MAX];
    int state, stage, n_stages;
    char reason[2048];
    int retry;          /* resubmitted after a failure: failed jobs run again */
    json_t *metrics_by; /* PPO-kind stage name -> its committed iterations' metrics lines */
    json_t *metrics;    /* metrics_by's array of metrics_stage (borrowed; never NULL) */
    char metrics_stage[72];
    char policy_ref[PATH_MAX + 80]; /* the last iteration's exported policy (blob_name_parse) */
    char policy_stage[72];          /* the stage whose iteration exported policy_ref */
    mppo_t *ppo;
    int ns_self, ns_ppo; /* "@NAME", the PPO loop's: "@NAME/ppo" or "@NAME/STAGE" (ppo_ns) */
    double t_stage0;     /* when the current stage started (wall ms; 0: not in this process) */
    double submitted_unix, updated_unix;
    double *stage_secs;
    int logged_stage; /* the stage whose start line is in run.log (-1: none) */
    uint64_t seq;     /* submission order: the oldest queued run becomes active first */
    int io_paused;    /* the master's own write to the run directory failed */
    uint64_t env_job; /* the job whose environment error paused the run (0: none) */
};

/* ---- small helpers ------------------------------------------------------------------------ */

static mrun_t *run_at(master_t *m, int r) {
    return &m->runs[r];
}

static int terminal(int st) {
    return st == R_FAILED || st == R_CANCELLED || st == R_SUCCEEDED;
}

static double now_unix(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static json_t *stage_at(const mrun_t *r, int i) {
    return json_array_get(json_object_get(r->plan, "stages"), (size_t)i);
}

static const char *stage_name(const mrun_t *r, int i) {
    const char *s = json_string_value(json_object_get(stage_at(r, i), "name"));
    return s ? s : "?";
}

static int stage_is_ppo(const mrun_t *r, int i) {
    json_t *av = json_object_get(stage_at(r, i), "argv");
    return !strcmp(json_string_value(json_array_get(av, 0)) ?: "", "ppo");
}

/* The plan's first PPO-kind stage (the one journals from before a run could hold several
 * name with an empty stage), or "ppo". */
static const char *first_ppo_stage(const mrun_t *r) {
    for (int i = 0; i < r->n_stages; i++)
        if (stage_is_ppo(r, i)) return stage_name(r, i);
    return "ppo";
}

/* Makes r->metrics the committed lines of PPO-kind stage st (an empty array at first).
 * Returns 0 or RL_ENOMEM. */
static int metrics_select(mrun_t *r, const char *st) {
    if (!st[0]) st = first_ppo_stage(r);
    json_t *a = json_object_get(r->metrics_by, st);
    if (!a) {
        a = json_array();
        if (!a || json_object_set_new(r->metrics_by, st, a) < 0) return RL_ENOMEM;
    }
    r->metrics = a;
    snprintf(r->metrics_stage, sizeof r->metrics_stage, "%s", st);
    return 0;
}

/* The job namespace of PPO-kind stage i's loop: "@NAME/ppo" for the plan's first (as runs with
 * one always had it), "@NAME/STAGE" for the others (plan_invalid keeps them apart). */
static void ppo_ns(const mrun_t *r, int i, char *out, size_t n) {
    if (!strcmp(stage_name(r, i), first_ppo_stage(r)))
        snprintf(out, n, "@%s/ppo", r->name);
    else
        snprintf(out, n, "@%s/%s", r->name, stage_name(r, i));
}

/* `in` with every "{run}" replaced by the run directory (malloc'ed). */
static char *subst_run(const mrun_t *r, const char *in) {
    size_t dl = strlen(r->dir), cap = strlen(in) + 1, n = 0;
    for (const char *p = strstr(in, "{run}"); p; p = strstr(p + 5, "{run}")) cap += dl;
    char *out = malloc(cap);
    if (!out) return NULL;
    for (const char *p = in; *p;) {
        if (!strncmp(p, "{run}", 5)) {
            memcpy(out + n, r->dir, dl);
            n += dl;
            p += 5;
        } else {
            out[n++] = *p++;
        }
    }
    out[n] = 0;
    return out;
}

/* Appends a line to RUN_DIR/run.log (what `rlhf logs` shows). A failure pauses the run. */
static void run_log(master_t *m, mrun_t *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void run_log(master_t *m, mrun_t *r, const char *fmt, ...) {
    (void)m;
    char line[4096], path[PATH_MAX + 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    master_log("run %s: %s", r->name, line);
    snprintf(path, sizeof path, "%.4000s/run.log", r->dir);
    FILE *f = fopen(path, "a");
    int bad = !f || fprintf(f, "%s\n", line) < 0;
    if (f && fclose(f) != 0) bad = 1;
    if (bad) {
        master_log("run %s: %s: %s", r->name, path, strerror(errno));
        r->io_paused = 1;
        snprintf(r->reason, sizeof r->reason, "waiting: %.1900s: %s", path, strerror(errno));
    }
}

static void fmt_secs(double s, char *out, size_t n) {
    if (s < 0 || !isfinite(s))
        snprintf(out, n, "?");
    else if (s < 60)
        snprintf(out, n, "%.0fs", s);
    else
        snprintf(out, n, "%dm%02ds", (int)s / 60, (int)s % 60);
}

/* Journals the run's state (and applies it): state, current stage, reason. */
static void run_set(master_t *m, mrun_t *r, int state, int stage, const char *reason) {
    int changed = r->state != state || r->stage != stage || strcmp(r->reason, reason ? reason : "");
    r->state = state;
    r->stage = stage;
    if (reason != r->reason) /* callers pass r->reason itself: snprintf onto itself empties it */
        snprintf(r->reason, sizeof r->reason, "%s", reason ? reason : "");
    r->updated_unix = now_unix();
    if (!changed) return;
    Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
    Rlhf__JournalRunState rs = RLHF__JOURNAL_RUN_STATE__INIT;
    rs.name = r->name;
    rs.state = (char *)state_names[state];
    rs.stage = stage;
    rs.reason = r->reason;
    rs.retry = r->retry;
    rec.body_case = RLHF__JOURNAL_RECORD__BODY_RUN_STATE;
    rec.run_state = &rs;
    master_journal(m, &rec, 0);
}

/* ---- jobs of a run ------------------------------------------------------------------------- */

/* The job (ns, id) of run r, created with this spec if it does not exist, or run again when it
 * was forgotten, or failed and the run was resubmitted. Returns its scheduler index, or -1. */
static int job_ensure(master_t *m, int ri, int ns, uint64_t id, int kind, uint64_t seed,
                      uint64_t version, int role, uint32_t lease_ms, const void *payload,
                      size_t len) {
    mrun_t *r = run_at(m, ri);
    int j = sched_job_find(&m->sched, master_job_id(m, ns, id));
    if (j < 0)
        return master_job_create(m, ns, id, kind, seed, version, role, lease_ms, payload, len, ri);
    sched_job_t *jb = &m->sched.jobs[j];
    (void)r;
    /* forgotten (its record no longer needed, or a failure the run was resubmitted after), or
     * finished with another spec than this one (a cancelled run's stage, settings changed
     * since): it runs again */
    int again = jb->forgotten || (jb->state == SCHED_DONE &&
                                  !master_job_same_spec(jb, kind, seed, version, payload, len));
    if (again) {
        /* the same id with a fresh spec: journaled as a new job */
        if (master_job_create(m, ns, id, kind, seed, version, role, lease_ms, payload, len, ri) < 0)
            return -1;
    }
    return j;
}

/* The packed output of finished job j (its journal record); NULL when unreadable. */
static Rlhf__JournalRecord *job_end(master_t *m, int j) {
    Rlhf__JournalRecord *rec = NULL;
    if (master_job_end_read(m, &m->sched.jobs[j], &rec) < 0 || !rec || !rec->job_end) {
        if (rec) rlhf__journal_record__free_unpacked(rec, NULL);
        return NULL;
    }
    return rec;
}

/* Whether job j is finished; a failed one fails the run (returns -1 with the reason set). */
static int job_state(master_t *m, mrun_t *r, int j, const char *what) {
    if (j < 0) {
        snprintf(r->reason, sizeof r->reason, "%s: %s", what, rl_errmsg());
        return -1;
    }
    sched_job_t *jb = &m->sched.jobs[j];
    if (jb->state == SCHED_DONE && !jb->forgotten) return 1;
    if (jb->state == SCHED_FAILED) {
        snprintf(r->reason, sizeof r->reason, "%s failed: %s", what,
                 jb->reason && jb->reason[0] ? jb->reason : "attempts spent");
        return -1;
    }
    return 0;
}

/* ---- plain stages: one STAGE job each ----------------------------------------------------- */

/* The STAGE job of stage i running argv (argv[0] replaced by sub when not NULL) with id. */
static int stage_job(master_t *m, int ri, int i, uint64_t id, const char *sub) {
    mrun_t *r = run_at(m, ri);
    json_t *st = stage_at(r, i), *av = json_object_get(st, "argv");
    size_t n = json_array_size(av);
    char **argv = calloc(n ? n : 1, sizeof *argv);
    char log[PATH_MAX + 64], ns[300];
    const char *so = json_string_value(json_object_get(st, "stdout_to"));
    char *stdout_to = so ? subst_run(r, so) : NULL;
    snprintf(log, sizeof log, "%.4000s/logs/%s.log", r->dir, stage_name(r, i));
    snprintf(ns, sizeof ns, "%s/%s", r->name, stage_name(r, i));
    int ok = argv != NULL;
    for (size_t k = 0; ok && k < n; k++) {
        const char *a = k == 0 && sub ? sub : json_string_value(json_array_get(av, k));
        ok = a && (argv[k] = subst_run(r, a)) != NULL;
    }
    int j = -1;
    if (ok) {
        Rlhf__StageSpec sp = RLHF__STAGE_SPEC__INIT;
        sp.name = (char *)stage_name(r, i);
        sp.argv = argv;
        sp.n_argv = n;
        const char *cwd = json_string_value(json_object_get(r->plan, "cwd"));
        /* a plan from another machine names paths on this one, relative to the data directory */
        sp.cwd = (char *)(cwd ? cwd : m->data_dir);
        sp.log = log;
        sp.stdout_to = stdout_to ? stdout_to : "";
        sp.master = ""; /* the stage worker's own master: this one, at whatever endpoint */
        sp.ns = ns;
        size_t len = rlhf__stage_spec__get_packed_size(&sp);
        uint8_t *buf = malloc(len ? len : 1);
        if (buf) {
            rlhf__stage_spec__pack(&sp, buf);
            /* a stage runs for as long as it needs: its worker's heartbeats say it is alive */
            j = job_ensure(m, ri, r->ns_self, id, RLHF__JOB_KIND__JOB_KIND_STAGE, 1, 0,
                           RLHF__ROLE__ROLE_STAGE, 7 * 86400000u, buf, len);
        }
        free(buf);
    }
    for (size_t k = 0; argv && k < n; k++) free(argv[k]);
    free(argv);
    free(stdout_to);
    if (!ok) rl_fail(RL_ENOMEM, "out of memory");
    return j;
}

/* ---- the PPO stage --------------------------------------------------------------------------- */

static void ppo_free(mppo_t *p) {
    if (!p) return;
    free(p->policy), free(p->rm), free(p->ref), free(p->value), free(p->out), free(p->cfg_json);
    for (int i = 0; i < p->n_p; i++) free(p->p[i].text), free(p->p[i].ids), free(p->p[i].refs);
    free(p->program);
    free(p->p);
    for (int h = 0; h < 2; h++) {
        mbatch_t *b = &p->b[h];
        for (int k = 0; b->r && k < p->P * p->K; k++)
            free(b->r[k].tokens), free(b->r[k].logprobs), free(b->r[k].ref_logprobs);
        free(b->r);
        json_decref(b->gen_by), json_decref(b->score_by);
    }
    free(p);
}

/* The batch of iteration i. */
static mbatch_t *batch(mppo_t *p, long i) {
    return &p->b[i & 1];
}

static int load_prompt(void *ctx, json_t *o, const char *where) {
    mppo_t *p = ctx;
    json_t *ids = json_object_get(o, "ids");
    const char *text = json_string_value(json_object_get(o, "text"));
    if (!text || !json_is_array(ids) || json_array_size(ids) == 0)
        return rl_fail(RL_EFORMAT, "%s: needs \"text\" and \"ids\"", where);
    mprompt_t *np = realloc(p->p, (size_t)(p->n_p + 1) * sizeof *np);
    if (!np) return rl_fail(RL_ENOMEM, "out of memory");
    p->p = np;
    mprompt_t *q = &p->p[p->n_p++];
    q->n = json_array_size(ids);
    q->text = strdup(text);
    q->ids = malloc(q->n * sizeof *q->ids);
    if (!q->text || !q->ids) return rl_fail(RL_ENOMEM, "out of memory");
    for (size_t k = 0; k < q->n; k++)
        q->ids[k] = (int32_t)json_integer_value(json_array_get(ids, k));
    /* the prompt record's reference answer: "reference", else "answer", else null */
    json_t *rec = json_object_get(o, "record");
    q->refs = NULL;
    if (json_is_object(rec)) {
        json_t *ref = json_object_get(rec, "reference");
        if (!ref) ref = json_object_get(rec, "answer");
        json_t *x = json_pack("{s:O, s:O}", "reference", ref ? ref : json_null(), "record", rec);
        q->refs = x ? json_dumps(x, JSON_COMPACT) : NULL;
        json_decref(x);
        if (!q->refs) return rl_fail(RL_ENOMEM, "out of memory");
    }
    return 0;
}

static char *jstr(json_t *o, const char *k) {
    const char *s = json_string_value(json_object_get(o, k));
    return strdup(s ? s : "");
}

/* Reads ppo-prep's plan and prompts from OUT (the ppo stage's --out). Returns 0 or RL_E*. */
static int ppo_load(mrun_t *r, const char *out) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%.4000s/ppo_plan.json", out);
    json_error_t e;
    json_t *o = json_load_file(path, 0, &e);
    if (!o) return rl_fail(RL_EFORMAT, "%s: %s", path, e.text);
    mppo_t *p = calloc(1, sizeof *p);
    if (!p) {
        json_decref(o);
        return rl_fail(RL_ENOMEM, "out of memory");
    }
    p->policy = jstr(o, "policy"), p->rm = jstr(o, "rm"), p->ref = jstr(o, "ref");
    p->value = jstr(o, "value"), p->out = jstr(o, "out"), p->cfg_json = jstr(o, "config_json");
    /* the models by content when ppo-prep published them: workers on other hosts fetch them */
    char **models[] = {&p->policy, &p->rm, &p->ref, &p->value};
    const char *keys[] = {"policy_ref", "rm_ref", "ref_ref", "value_ref"};
    for (int k = 0; k < 4; k++) {
        const char *ref = json_string_value(json_object_get(o, keys[k]));
        if (ref && ref[0] && *models[k]) free(*models[k]), *models[k] = strdup(ref);
    }
#define GI(f, k) p->f = (int)json_integer_value(json_object_get(o, k))
    GI(iterations, "iterations");
    GI(P, "batch");
    GI(K, "samples");
    GI(J, "per_job");
    GI(max_new, "max_new");
    GI(ckpt_every, "checkpoint_every");
    GI(count_token, "count_token");
    GI(eot, "eot");
    GI(vocab, "vocab");
#undef GI
    p->gold = json_is_true(json_object_get(o, "gold"));
    p->temperature = (float)json_number_value(json_object_get(o, "temperature"));
    p->seed = (uint64_t)json_integer_value(json_object_get(o, "seed"));
    p->s_mean = json_number_value(json_object_get(o, "score_mean"));
    p->s_std = json_number_value(json_object_get(o, "score_std"));
    p->program = jstr(o, "reward_program");
    p->program_weight = json_number_value(json_object_get(o, "reward_program_weight"));
    p->model_weight = json_number_value(json_object_get(o, "rm_weight"));
    p->program_fallback = json_number_value(json_object_get(o, "reward_program_fallback"));
    p->program_timeout_ms =
        (int)json_integer_value(json_object_get(o, "reward_program_timeout_ms"));
    char *prompts = jstr(o, "prompts");
    /* the overlap mode from the settings the learner gets (align/ppo.h's "overlap", which
     * `rlhf ppo-prep` checked), so that both follow one schedule; the master reads that one key
     * itself: model math and its settings are not the master's layer */
    json_t *cj = p->cfg_json[0] ? json_loads(p->cfg_json, 0, NULL) : NULL;
    const char *ov = json_string_value(json_object_get(cj, "overlap"));
    p->overlap = ov && !strcmp(ov, "one_step_off");
    int bad_cfg = (p->cfg_json[0] && !cj) || (ov && !p->overlap && strcmp(ov, "off") != 0);
    json_decref(cj);
    json_decref(o);
    int rc = bad_cfg ? rl_fail(RL_EFORMAT,
                               "%s: config_json: not JSON, or an overlap other than "
                               "off and one_step_off",
                               path)
                     : 0;
    if (rc == 0 && (p->iterations < 1 || p->P < 1 || p->K < 1 || p->J < 1))
        rc = rl_fail(RL_EFORMAT, "%s: iterations, batch, samples, per_job must be >= 1", path);
    long n = rc == 0 ? jsonl_read(prompts, load_prompt, p) : 0;
    free(prompts);
    if (rc == 0 && n < 0) rc = (int)n;
    if (rc == 0 && p->n_p == 0) rc = rl_fail(RL_EFORMAT, "%s: no prompts", path);
    p->n_jobs = (p->P + p->J - 1) / p->J;
    for (int h = 0; h < 2 && rc == 0; h++)
        if (!(p->b[h].r = calloc((size_t)p->P * p->K, sizeof *p->b[h].r)))
            rc = rl_fail(RL_ENOMEM, "out of memory");
    if (rc < 0) {
        ppo_free(p);
        return rc;
    }
    for (int h = 0; h < 2; h++) p->b[h].have_gen = p->b[h].have_score = -1;
    r->ppo = p;
    return 0;
}

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return (x ^ (x >> 31)) >> 1;
}

/* Job ids of iteration i: [i * 2^20 + 1, (i + 1) * 2^20), as `rlhf ppo` always numbered them. */
static uint64_t gen_id(long i, int c) {
    return ((uint64_t)i << 20) + 1 + (uint64_t)c;
}
static uint64_t score_id(long i, int c) {
    return ((uint64_t)i << 20) + 1 + 0x40000 + (uint64_t)c;
}
static uint64_t train_id(long i) {
    return ((uint64_t)i << 20) + 0xFFFFF;
}
static uint64_t attach_id(long i, uint64_t k) {
    return ((uint64_t)i << 20) + 0x80000 + (k & 0x7FFFF);
}

static int pack_train(mrun_t *r, long i, int attach, uint8_t **buf, size_t *len) {
    mppo_t *p = r->ppo;
    int n = attach ? 0 : p->P * p->K;
    Rlhf__PpoRollout *rs = calloc((size_t)(n ? n : 1), sizeof *rs);
    Rlhf__PpoRollout **rp = calloc((size_t)(n ? n : 1), sizeof *rp);
    char ckpt[PATH_MAX + 16];
    snprintf(ckpt, sizeof ckpt, "%.4000s/learner", p->out);
    int ok = rs && rp;
    for (int q = 0; ok && q < n; q++) {
        mroll_t *ro = &batch(p, i)->r[q];
        const mprompt_t *pr = &p->p[ro->prompt];
        rlhf__ppo_rollout__init(&rs[q]);
        rs[q].prompt = pr->ids;
        rs[q].n_prompt = pr->n;
        rs[q].completion = ro->tokens;
        rs[q].n_completion = (size_t)ro->n;
        rs[q].logprobs = ro->logprobs;
        rs[q].n_logprobs = (size_t)ro->n;
        rs[q].ref_logprobs = ro->ref_logprobs;
        rs[q].n_ref_logprobs = (size_t)ro->n;
        rs[q].score = ro->score;
        rs[q].group = (uint32_t)(q / p->K); /* rollouts come prompt-major: K per prompt */
        rs[q].truncated = ro->finish != 1;  /* no end-of-text (gen.h's GEN_FINISH_EOT) */
        rp[q] = &rs[q];
    }
    Rlhf__PpoSpec pp = RLHF__PPO_SPEC__INIT;
    pp.iteration = (uint64_t)i;
    pp.policy_dir = p->policy;
    pp.value_dir = p->value;
    pp.config_json = p->cfg_json;
    pp.rollouts = rp;
    pp.n_rollouts = (size_t)n;
    pp.seed = p->seed;
    pp.checkpoint_every = (uint32_t)p->ckpt_every;
    pp.score_mean = p->s_mean;
    pp.score_std = p->s_std;
    pp.last = !attach && i == p->iterations - 1; /* an attach updates nothing, exports nothing */
    Rlhf__TrainSpec ts = RLHF__TRAIN_SPEC__INIT;
    ts.kind = RLHF__TRAIN_KIND__TRAIN_KIND_PPO;
    ts.ppo = &pp;
    ts.ckpt_dir = ckpt;
    ts.export_model = pp.last; /* the final policy reaches this host over the wire */
    *len = rlhf__train_spec__get_packed_size(&ts);
    *buf = ok ? malloc(*len ? *len : 1) : NULL;
    if (*buf) rlhf__train_spec__pack(&ts, *buf);
    free(rs), free(rp);
    return *buf ? 0 : rl_fail(RL_ENOMEM, "out of memory");
}

/* The policy version that generates iteration i: i, or with overlap one_step_off the version
 * before (i - 1; version 0 for iterations 0 and 1). align/ppo.h's ppo_rollout_version is the
 * learner's side of the same rule (test_ppo_stage checks every rollout's version end to end). */
static long rollout_version(int overlap, long i) {
    return overlap ? (i > 0 ? i - 1 : 0) : i;
}

/* GENERATE job c of iteration i (its spec as `rlhf ppo` built it), with the policy version the
 * overlap mode gives iteration i (rollout_version). */
static int gen_job(master_t *m, int ri, long i, int c) {
    mrun_t *r = run_at(m, ri);
    mppo_t *p = r->ppo;
    int np = c == p->n_jobs - 1 ? p->P - c * p->J : p->J;
    Rlhf__PromptIds *pids = calloc((size_t)np, sizeof *pids);
    Rlhf__PromptIds **pp = calloc((size_t)np, sizeof *pp);
    int j = -1;
    if (pids && pp) {
        for (int q = 0; q < np; q++) {
            const mprompt_t *pr = &p->p[((long)i * p->P + c * p->J + q) % p->n_p];
            rlhf__prompt_ids__init(&pids[q]);
            pids[q].ids = pr->ids;
            pids[q].n_ids = pr->n;
            pp[q] = &pids[q];
        }
        Rlhf__GenerateSpec sp = RLHF__GENERATE_SPEC__INIT;
        sp.model_dir = p->policy;
        sp.prompts = pp;
        sp.n_prompts = (size_t)np;
        sp.max_new_tokens = (uint32_t)p->max_new;
        sp.n_samples = (uint32_t)p->K;
        sp.temperature = p->temperature;
        sp.top_p = 1.0f;
        sp.eot = p->eot;
        sp.vocab_limit = (uint32_t)p->vocab;
        sp.logprobs_at_temperature = 1; /* the old logprobs of the distribution sampled */
        size_t len = rlhf__generate_spec__get_packed_size(&sp);
        uint8_t *buf = malloc(len ? len : 1);
        if (buf) {
            rlhf__generate_spec__pack(&sp, buf);
            j = job_ensure(m, ri, r->ns_ppo, gen_id(i, c), RLHF__JOB_KIND__JOB_KIND_GENERATE,
                           mix(p->seed ^ mix((uint64_t)i * 4096 + (uint64_t)c)),
                           (uint64_t)rollout_version(p->overlap, i), RLHF__ROLE__ROLE_ROLLOUT, 0,
                           buf, len);
        }
        free(buf);
    }
    free(pids), free(pp);
    return j;
}

static int score_job(master_t *m, int ri, long i, int c) {
    mrun_t *r = run_at(m, ri);
    mppo_t *p = r->ppo;
    int first = c * p->J * p->K, cnt = c == p->n_jobs - 1 ? p->P * p->K - first : p->J * p->K;
    Rlhf__ScoreItem *items = calloc((size_t)cnt, sizeof *items);
    Rlhf__ScoreItem **ip = calloc((size_t)cnt, sizeof *ip);
    char **texts = calloc((size_t)cnt, sizeof *texts), **refs = calloc((size_t)cnt, sizeof *refs);
    int j = -1;
    if (items && ip && texts && refs) {
        for (int q = 0; q < cnt; q++) {
            mroll_t *ro = &batch(p, i)->r[first + q];
            const mprompt_t *pr = &p->p[ro->prompt];
            rlhf__score_item__init(&items[q]);
            items[q].prompt = pr->ids;
            items[q].n_prompt = pr->n;
            items[q].completion = ro->tokens;
            items[q].n_completion = (size_t)ro->n;
            ip[q] = &items[q];
            texts[q] = pr->text;
            refs[q] = pr->refs ? pr->refs : "";
        }
        Rlhf__ScoreSpec sp = RLHF__SCORE_SPEC__INIT;
        /* with a program of weight rm_weight 0, no model part at all */
        int model = !p->program[0] || p->model_weight != 0;
        sp.rm_dir = p->count_token >= 0 || !model ? "" : p->rm;
        sp.count_reward = p->count_token >= 0 && model;
        sp.count_token = p->count_token;
        sp.ref_dir = p->ref;
        sp.items = ip;
        sp.n_items = (size_t)cnt;
        sp.eot = p->eot;
        sp.vocab_limit = (uint32_t)p->vocab;
        sp.temperature = p->temperature; /* reference logprobs under the rollouts' T */
        if (p->gold) sp.gold = 1;
        if (p->gold || p->program[0]) {
            sp.prompt_texts = texts;
            sp.n_prompt_texts = (size_t)cnt;
        }
        if (p->program[0]) {
            sp.program = p->program;
            sp.program_timeout_ms = (uint32_t)p->program_timeout_ms;
            sp.program_weight = p->program_weight;
            sp.model_weight = p->model_weight;
            sp.program_fallback = p->program_fallback;
            sp.references = refs;
            sp.n_references = (size_t)cnt;
        }
        size_t len = rlhf__score_spec__get_packed_size(&sp);
        uint8_t *buf = malloc(len ? len : 1);
        if (buf) {
            rlhf__score_spec__pack(&sp, buf);
            j = job_ensure(m, ri, r->ns_ppo, score_id(i, c), RLHF__JOB_KIND__JOB_KIND_SCORE, 0, 0,
                           RLHF__ROLE__ROLE_REWARD, 0, buf, len);
        }
        free(buf);
    }
    free(items), free(ip), free(texts), free(refs);
    return j;
}

static void per_worker(json_t *by, const Rlhf__JournalJobEnd *e) {
    const char *w = e->worker && e->worker[0] ? e->worker : "?";
    double cur = json_number_value(json_object_get(by, w));
    json_object_set_new(by, w, json_real(cur + e->elapsed_ms));
}

static double max_worker(json_t *by) {
    const char *k;
    json_t *v;
    double mx = 0;
    json_object_foreach(by, k, v) mx = fmax(mx, json_number_value(v));
    return mx;
}

/* Fills the rollouts of iteration i from its GENERATE outputs. Returns 0 or -1 (reason set). */
static int take_generated(master_t *m, mrun_t *r, long i, const int *jobs) {
    mppo_t *p = r->ppo;
    mbatch_t *b = batch(p, i);
    for (int k = 0; k < p->P * p->K; k++) {
        free(b->r[k].tokens), free(b->r[k].logprobs), free(b->r[k].ref_logprobs);
        memset(&b->r[k], 0, sizeof b->r[k]);
        b->r[k].prompt = (int)(((long)i * p->P + k / p->K) % p->n_p);
    }
    json_decref(b->gen_by);
    b->gen_by = json_object();
    for (int c = 0; c < p->n_jobs; c++) {
        Rlhf__JournalRecord *rec = job_end(m, jobs[c]);
        Rlhf__GenerateOutput *g =
            rec ? rlhf__generate_output__unpack(NULL, rec->job_end->output.len,
                                                rec->job_end->output.data)
                : NULL;
        int first = c * p->J * p->K;
        int want = c == p->n_jobs - 1 ? p->P * p->K - first : p->J * p->K;
        if (!g || (int)g->n_completions != want) {
            snprintf(r->reason, sizeof r->reason, "iteration %ld: GENERATE job %d: %s", i, c,
                     g ? "wrong number of completions" : "output unreadable");
            if (g) rlhf__generate_output__free_unpacked(g, NULL);
            if (rec) rlhf__journal_record__free_unpacked(rec, NULL);
            return -1;
        }
        for (int q = 0; q < want; q++) {
            mroll_t *ro = &b->r[first + q];
            const Rlhf__Completion *cp = g->completions[q];
            size_t nt = cp->n_tokens ? cp->n_tokens : 1;
            ro->n = (int)cp->n_tokens;
            ro->tokens = malloc(nt * sizeof *ro->tokens);
            ro->logprobs = malloc(nt * sizeof *ro->logprobs);
            if (!ro->tokens || !ro->logprobs) break;
            for (size_t t = 0; t < cp->n_tokens; t++) {
                ro->tokens[t] = cp->tokens[t];
                ro->logprobs[t] = t < cp->n_logprobs ? cp->logprobs[t] : 0;
            }
            ro->finish = (int)cp->finish;
        }
        per_worker(b->gen_by, rec->job_end);
        rlhf__generate_output__free_unpacked(g, NULL);
        rlhf__journal_record__free_unpacked(rec, NULL);
    }
    b->have_gen = i;
    b->have_score = -1;
    return 0;
}

static int take_scored(master_t *m, mrun_t *r, long i, const int *jobs) {
    mppo_t *p = r->ppo;
    mbatch_t *b = batch(p, i);
    json_decref(b->score_by);
    b->score_by = json_object();
    b->prog_errors = b->prog_timeouts = 0;
    int prog = p->program[0] != 0, model = !prog || p->model_weight != 0;
    for (int c = 0; c < p->n_jobs; c++) {
        Rlhf__JournalRecord *rec = job_end(m, jobs[c]);
        Rlhf__ScoreOutput *so = rec ? rlhf__score_output__unpack(NULL, rec->job_end->output.len,
                                                                 rec->job_end->output.data)
                                    : NULL;
        int first = c * p->J * p->K;
        int want = c == p->n_jobs - 1 ? p->P * p->K - first : p->J * p->K;
        if (!so || (int)so->n_scores != want || (int)so->n_ref_logprobs != want ||
            (p->gold && (int)so->n_gold != want) ||
            (prog && ((int)so->n_program_scores != want ||
                      (int)so->n_model_scores != (model ? want : 0)))) {
            snprintf(r->reason, sizeof r->reason, "iteration %ld: SCORE job %d: %s", i, c,
                     so ? "wrong number of scores" : "output unreadable");
            if (so) rlhf__score_output__free_unpacked(so, NULL);
            if (rec) rlhf__journal_record__free_unpacked(rec, NULL);
            return -1;
        }
        for (int q = 0; q < want; q++) {
            mroll_t *ro = &b->r[first + q];
            ro->score = so->scores[q];
            ro->gold = p->gold ? so->gold[q] : 0;
            ro->prog_score = prog ? so->program_scores[q] : 0;
            ro->model_score = prog && model ? so->model_scores[q] : 0;
            const Rlhf__TokenLogprobs *t = so->ref_logprobs[q];
            free(ro->ref_logprobs);
            ro->ref_logprobs = malloc((ro->n ? (size_t)ro->n : 1) * sizeof(float));
            for (int k = 0; ro->ref_logprobs && k < ro->n; k++)
                ro->ref_logprobs[k] = k < (int)t->n_logprobs ? t->logprobs[k] : 0;
        }
        /* the program's per-item errors: counted, the first few of each job in the run's log */
        b->prog_errors += (long)so->n_program_errors;
        b->prog_timeouts += so->program_timeouts;
        m->program_errors += so->n_program_errors;
        m->program_timeouts += so->program_timeouts;
        for (size_t e = 0; e < so->n_program_errors && e < 3; e++)
            run_log(m, r, "iteration %ld: SCORE job %d: reward program: %s%s", i, c,
                    so->program_errors[e],
                    e == 2 && so->n_program_errors > 3 ? " (and more: program_errors counts)" : "");
        per_worker(b->score_by, rec->job_end);
        rlhf__score_output__free_unpacked(so, NULL);
        rlhf__journal_record__free_unpacked(rec, NULL);
    }
    b->have_score = i;
    return 0;
}

/* OUT/metrics.jsonl from the committed lines (atomically). Returns 0 or RL_E*. */
static int metrics_write(mrun_t *r) {
    if (!r->ppo && !r->metrics) return 0;
    size_t n = json_array_size(r->metrics), len = 0;
    for (size_t i = 0; i < n; i++)
        len += strlen(json_string_value(json_array_get(r->metrics, i))) + 1;
    char *buf = malloc(len + 1), path[PATH_MAX + 32];
    if (!buf) return rl_fail(RL_ENOMEM, "out of memory");
    len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(r->metrics, i));
        size_t l = strlen(s);
        memcpy(buf + len, s, l);
        buf[len + l] = '\n';
        len += l + 1;
    }
    snprintf(path, sizeof path, "%.4000s/metrics.jsonl", r->ppo ? r->ppo->out : r->dir);
    int rc = fs_write_atomic(path, buf, len);
    free(buf);
    return rc;
}

/* Iteration i commits: its metrics line journaled (synced), the file rewritten, its jobs
 * forgotten. Returns 0 or -1 (paused: the run directory cannot be written). */
static int ppo_commit(master_t *m, int ri, long i, const Rlhf__PpoOutput *po,
                      const char *policy_ref, double train_ms, const int *gj, const int *sj,
                      int tj) {
    mrun_t *r = run_at(m, ri);
    mppo_t *p = r->ppo;
    mbatch_t *b = batch(p, i);
    const mroll_t *ro = b->r;
    int n = p->P * p->K;
    long toks = 0, eots = 0, cut = 0;
    double gold = 0, psum = 0, msum = 0;
    for (int q = 0; q < n; q++) {
        toks += ro[q].n;
        eots += ro[q].finish == 1;
        cut += ro[q].finish != 1; /* cut at the length limit: no end-of-text */
        gold += ro[q].gold;
        psum += ro[q].prog_score;
        msum += ro[q].model_score;
    }
    double now = wire_now_ms();
    double t_gen = b->t_gen, t_score = b->t_score, t_update = train_ms;
    double t_total = p->t_iter > 0 ? now - p->t_iter : t_gen + t_score + t_update;
    double upd_ms = po->update_ms, pub_ms = po->publish_ms;
    double math_ms = max_worker(b->gen_by) + max_worker(b->score_by) + upd_ms;
    json_t *st = json_loads(po->stats_json ? po->stats_json : "", 0, NULL);
    json_t *mo = json_pack(
        "{s:I, s:I, s:o, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I}", "iteration",
        (json_int_t)i, "policy_version", (json_int_t)po->policy_version, "ppo",
        st ? st : json_object(), "response_length", (double)toks / n, "eot_rate", (double)eots / n,
        "ms_generate", t_gen, "ms_score", t_score, "ms_update", t_update, "ms_update_math", upd_ms,
        "ms_weight_publish", pub_ms, "ms_iteration", t_total, "overhead_frac",
        t_total > 0 ? fmax(0, 1 - math_ms / t_total) : 0, "tokens_per_s",
        toks / (t_gen > 0 ? t_gen / 1000 : 1e-9), "rollouts", (json_int_t)n);
    if (p->gold) json_object_set_new(mo, "gold_mean", json_real(gold / n));
    json_object_set_new(mo, "truncated_rate", json_real((double)cut / n));
    if (p->program[0]) { /* the reward's parts: score = rm_weight * model + weight * program */
        json_object_set_new(mo, "reward_program_mean", json_real(psum / n));
        if (p->model_weight != 0) json_object_set_new(mo, "reward_model_mean", json_real(msum / n));
        json_object_set_new(mo, "program_errors", json_integer(b->prog_errors));
        json_object_set_new(mo, "program_timeouts", json_integer(b->prog_timeouts));
    }
    json_object_set_new(mo, "ms_generate_math", json_real(max_worker(b->gen_by)));
    json_object_set_new(mo, "ms_score_math", json_real(max_worker(b->score_by)));
    /* the policy version that generated the iteration's rollouts (the behaviour policy) */
    json_object_set_new(mo, "rollout_version", json_integer(rollout_version(p->overlap, i)));
    char *line = json_dumps(mo, JSON_COMPACT);
    json_t *stats = json_object_get(mo, "ppo");
    char prog[400];
    int pl =
        snprintf(prog, sizeof prog, "{\"iter\": %ld, \"iters\": %d, \"score\": %.4f, \"kl\": %.4f",
                 i + 1, p->iterations, json_number_value(json_object_get(stats, "score_mean")),
                 json_number_value(json_object_get(stats, "kl_k1")));
    if (p->gold)
        snprintf(prog + pl, sizeof prog - (size_t)pl, ", \"gold\": %.4f}", gold / n);
    else
        snprintf(prog + pl, sizeof prog - (size_t)pl, "}");
    json_decref(mo);
    if (!line) return -1;
    Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
    Rlhf__JournalIteration it = RLHF__JOURNAL_ITERATION__INIT;
    it.run = r->name;
    it.stage = r->metrics_stage;
    it.iteration = (uint64_t)i;
    it.metrics_line = line;
    it.policy_ref = (char *)(policy_ref ? policy_ref : "");
    rec.body_case = RLHF__JOURNAL_RECORD__BODY_ITERATION;
    rec.iteration = &it;
    if (master_journal(m, &rec, 1) < 0) {
        free(line);
        return -1;
    }
    snprintf(r->policy_ref, sizeof r->policy_ref, "%s", it.policy_ref);
    snprintf(r->policy_stage, sizeof r->policy_stage, "%s", r->metrics_stage);
    while (json_array_size(r->metrics) > (size_t)i)
        json_array_remove(r->metrics, json_array_size(r->metrics) - 1);
    json_array_append_new(r->metrics, json_string(line));
    free(line);
    for (int c = 0; c < p->n_jobs; c++) {
        master_job_forget(m, &m->sched.jobs[gj[c]]);
        master_job_forget(m, &m->sched.jobs[sj[c]]);
    }
    master_job_forget(m, &m->sched.jobs[tj]);
    p->t_iter = now;
    b->t_gen0 = b->t_score0 = p->t_train0 = 0;
    run_log(m, r, "%s", prog);
    if (metrics_write(r) < 0) {
        r->io_paused = 1;
        snprintf(r->reason, sizeof r->reason, "waiting: %s", rl_errmsg());
        return -1;
    }
    return 0;
}

/* The iterations from L on undone: the learner restarted from the checkpoint of iteration L. */
static void ppo_rollback(master_t *m, mrun_t *r, long L) {
    Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
    Rlhf__JournalIteration it = RLHF__JOURNAL_ITERATION__INIT;
    it.run = r->name;
    it.stage = r->metrics_stage;
    it.iteration = (uint64_t)L;
    it.metrics_line = "";
    rec.body_case = RLHF__JOURNAL_RECORD__BODY_ITERATION;
    rec.iteration = &it;
    master_journal(m, &rec, 1);
    run_log(m, r, "the learner is at iteration %ld: iterations %ld..%zu run again", L, L + 1,
            json_array_size(r->metrics));
    while (json_array_size(r->metrics) > (size_t)L)
        json_array_remove(r->metrics, json_array_size(r->metrics) - 1);
    metrics_write(r);
    if (r->ppo) /* their rollouts are taken again from their jobs (run again if forgotten) */
        for (int h = 0; h < 2; h++) r->ppo->b[h].have_gen = r->ppo->b[h].have_score = -1;
}

/* The iterations from..L-1 committed from OUT/metrics.jsonl, whose first L lines must be those
 * iterations in order. Returns 0 or -1 (reason set). */
static int ppo_adopt(master_t *m, mrun_t *r, long from, long L) {
    mppo_t *p = r->ppo;
    char path[PATH_MAX + 32], *buf = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%.4000s/metrics.jsonl", p->out);
    int rc = fs_read_all(path, &buf, &len);
    long k = 0;
    json_t *lines = json_array();
    for (char *line = buf; rc == 0 && line && line < buf + len && k < L;) {
        char *nl = memchr(line, '\n', (size_t)(buf + len - line));
        if (!nl) break;
        json_t *o = json_loadb(line, (size_t)(nl - line), 0, NULL);
        json_t *it = json_object_get(o, "iteration");
        int ok = json_is_integer(it) && json_integer_value(it) == k;
        json_decref(o);
        if (!ok) break;
        json_array_append_new(lines, json_stringn(line, (size_t)(nl - line)));
        k++;
        line = nl + 1;
    }
    free(buf);
    if (k < L) {
        snprintf(
            r->reason, sizeof r->reason,
            "ppo: the learner's checkpoints in %.1800s/learner are at iteration %ld but "
            "the run has %ld and metrics.jsonl only %ld: remove those checkpoints to start over",
            p->out, L, from, k);
        json_decref(lines);
        return -1;
    }
    for (long i = from; i < L; i++) {
        Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
        Rlhf__JournalIteration jit = RLHF__JOURNAL_ITERATION__INIT;
        jit.run = r->name;
        jit.stage = r->metrics_stage;
        jit.iteration = (uint64_t)i;
        jit.metrics_line = (char *)json_string_value(json_array_get(lines, (size_t)i));
        rec.body_case = RLHF__JOURNAL_RECORD__BODY_ITERATION;
        rec.iteration = &jit;
        master_journal(m, &rec, i == L - 1);
        json_array_append(r->metrics, json_array_get(lines, (size_t)i));
    }
    json_decref(lines);
    metrics_write(r); /* the file holds these lines already: rewriting them changes nothing */
    return 0;
}

static int policy_copy(mppo_t *p, const char *src, const char *sub, long it, const char *ref);

/* OUT/policy: the policy the learner exported after the last iteration (r->policy_ref, in this
 * host's artifact store), or else its newest checkpoint on this disk (a learner that exported
 * nothing: one of an older version); OUT/policy.json names its iteration and source. */
static int ppo_export(master_t *m, mrun_t *r) {
    mppo_t *p = r->ppo;
    char path[PATH_MAX + 64], dir[PATH_MAX + 64], *name = NULL;
    size_t nl;
    if (r->policy_ref[0] && !strcmp(r->policy_stage, r->metrics_stage)) {
        char src[PATH_MAX], ref[BLOB_REF_LEN];
        int rc = blob_name_parse(r->policy_ref, ref, NULL)
                     ? blob_resolve(m->blobs, NULL, ref, src, sizeof src)
                     : rl_fail(RL_EFORMAT, "'%.200s' names no artifact", r->policy_ref);
        if (rc < 0) return rl_fail_ctx(rc, "the exported policy %s: ", r->policy_ref);
        return policy_copy(p, src, "", (long)json_array_size(r->metrics) - 1, r->policy_ref);
    }
    snprintf(path, sizeof path, "%.4000s/learner/ppo-latest", p->out);
    int rc = fs_read_all(path, &name, &nl);
    if (rc < 0) return rc;
    int len = (int)strcspn(name, "\n");
    long it = strncmp(name, "ppo-ckpt-", 9) ? -1 : strtol(name + 9, NULL, 10);
    snprintf(dir, sizeof dir, "%.4000s/learner/%.*s", p->out, len < 64 ? len : 64, name);
    free(name);
    if (it < 0) return rl_fail(RL_EFORMAT, "%s: names no checkpoint", path);
    return policy_copy(p, dir, "/policy", it, NULL);
}

/* OUT/policy/ from the model files in SRC+sub, and OUT/policy.json. */
static int policy_copy(mppo_t *p, const char *src, const char *sub, long it, const char *ref) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%.4000s/policy", p->out);
    int rc = fs_mkdir_p(path);
    if (rc < 0) return rc;
    /* the model, then its tokenizer: GPT-2's pair or tokenizer.json with its config (the
     * learner's checkpoint holds what the policy directory it started from held) */
    static const char *files[] = {"model.safetensors", "config.json",    "vocab.json",
                                  "merges.txt",        "tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; rc == 0 && i < 6; i++) {
        char *data;
        size_t dl;
        snprintf(path, sizeof path, "%.4000s%s/%s", src, sub, files[i]);
        if ((rc = fs_read_all(path, &data, &dl)) == RL_ENOTFOUND && i >= 2) {
            rl_err_clear();
            rc = 0;
            continue;
        }
        if (rc < 0) break;
        snprintf(path, sizeof path, "%.4000s/policy/%s", p->out, files[i]);
        rc = fs_write_atomic(path, data, dl);
        free(data);
    }
    if (rc == 0) {
        json_t *o = ref ? json_pack("{s:I, s:s}", "iteration", (json_int_t)it, "policy_ref", ref)
                        : json_pack("{s:I, s:s}", "iteration", (json_int_t)it, "checkpoint", src);
        char *txt = json_dumps(o, JSON_COMPACT);
        snprintf(path, sizeof path, "%.4000s/policy.json", p->out);
        rc = txt ? fs_write_atomic(path, txt, strlen(txt)) : RL_ENOMEM;
        free(txt);
        json_decref(o);
    }
    return rc;
}

enum { STEP_WAIT = 0, STEP_DONE = 1, STEP_FAIL = -1 };

/* The rollouts of iteration i: its GENERATE jobs, then, once they are all done, its SCORE jobs
 * (their specs hold the completions), their outputs taken into its batch; gj and sj get the
 * jobs' scheduler indices. With overlap, the GENERATE jobs are made only once the learner has
 * announced the version they need (or it is 0, the policy directory's own): the learner
 * publishes version v as update v starts, and a version the master still believes from before
 * a learner restart must not let a job run with newer weights than its own. Returns 1 when both
 * are done, 0 to wait, -1 failed (reason set). */
static int rollouts_step(master_t *m, int ri, long i, int *gj, int *sj) {
    mrun_t *r = run_at(m, ri);
    mppo_t *p = r->ppo;
    mbatch_t *b = batch(p, i);
    long v = rollout_version(p->overlap, i);
    if (b->have_gen != i && p->overlap && v > 0 && m->weights_version != (uint64_t)v) {
        int j0 = sched_job_find(&m->sched, master_job_id(m, r->ns_ppo, gen_id(i, 0)));
        if (j0 < 0 || m->sched.jobs[j0].forgotten) return 0;
    }
    if (b->t_gen0 == 0) b->t_gen0 = wire_now_ms();
    int all = 1;
    for (int c = 0; c < p->n_jobs; c++) {
        gj[c] = gen_job(m, ri, i, c);
        int s = job_state(m, r, gj[c], "GENERATE");
        if (s < 0) return -1;
        all &= s;
    }
    if (!all) return 0;
    if (b->have_gen != i) {
        b->t_gen = wire_now_ms() - b->t_gen0;
        if (take_generated(m, r, i, gj) < 0) return -1;
    }
    if (b->t_score0 == 0) b->t_score0 = wire_now_ms();
    for (int c = 0; c < p->n_jobs; c++) {
        sj[c] = score_job(m, ri, i, c);
        int s = job_state(m, r, sj[c], "SCORE");
        if (s < 0) return -1;
        all &= s;
    }
    if (!all) return 0;
    if (b->have_score != i) {
        b->t_score = wire_now_ms() - b->t_score0;
        if (take_scored(m, r, i, sj) < 0) return -1;
    }
    return 1;
}

/* The ppo stage: preparation, then iterations until done. */
static int ppo_step(master_t *m, int ri) {
    mrun_t *r = run_at(m, ri);
    if (!r->ppo) {
        int j = stage_job(m, ri, r->stage, (uint64_t)r->stage + 1, "ppo-prep");
        int s = job_state(m, r, j, "ppo preparation");
        if (s <= 0) return s < 0 ? STEP_FAIL : STEP_WAIT;
        /* this stage's loop: its own jobs and committed iterations */
        char ns[256];
        ppo_ns(r, r->stage, ns, sizeof ns);
        int nsi = master_ns_index(m, ns);
        if (nsi < 0 || metrics_select(r, stage_name(r, r->stage)) < 0) {
            snprintf(r->reason, sizeof r->reason, "%s: out of memory", stage_name(r, r->stage));
            return STEP_FAIL;
        }
        r->ns_ppo = nsi;
        /* ppo-prep's plan lives in the stage's --out */
        json_t *av = json_object_get(stage_at(r, r->stage), "argv");
        char *out = NULL;
        for (size_t k = 0; k + 1 < json_array_size(av); k++)
            if (!strcmp(json_string_value(json_array_get(av, k)), "--out"))
                out = subst_run(r, json_string_value(json_array_get(av, k + 1)));
        if (!out || ppo_load(r, out) < 0) {
            snprintf(r->reason, sizeof r->reason, "ppo: %s", out ? rl_errmsg() : "no --out");
            free(out);
            return STEP_FAIL;
        }
        free(out);
        master_weights_reset(m); /* this training's versions start again */
        r->ppo->t_iter = wire_now_ms();
        if (json_array_size(r->metrics))
            run_log(m, r, "ppo: resuming at iteration %zu of %d", json_array_size(r->metrics),
                    r->ppo->iterations);
        else
            run_log(m, r, "ppo: %d iterations of %d prompts x %d samples", r->ppo->iterations,
                    r->ppo->P, r->ppo->K);
    }
    mppo_t *p = r->ppo;
    for (int guard = 0; guard < 4; guard++) {
        long i = (long)json_array_size(r->metrics);
        if (!p->attached) {
            uint8_t *buf;
            size_t len;
            if (pack_train(r, i, 1, &buf, &len) < 0) return STEP_FAIL;
            int j = job_ensure(m, ri, r->ns_ppo, attach_id(i, p->attaches),
                               RLHF__JOB_KIND__JOB_KIND_TRAIN, 0, 0, RLHF__ROLE__ROLE_LEARNER,
                               600000, buf, len);
            free(buf);
            int s = job_state(m, r, j, "the learner");
            if (s <= 0) return s < 0 ? STEP_FAIL : STEP_WAIT;
            Rlhf__JournalRecord *rec = job_end(m, j);
            Rlhf__TrainOutput *t = rec ? rlhf__train_output__unpack(NULL, rec->job_end->output.len,
                                                                    rec->job_end->output.data)
                                       : NULL;
            long L = t && t->ppo ? (long)t->ppo->iteration : -1;
            if (t) rlhf__train_output__free_unpacked(t, NULL);
            if (rec) rlhf__journal_record__free_unpacked(rec, NULL);
            master_job_forget(m, &m->sched.jobs[j]);
            p->attaches++;
            if (L < 0) {
                snprintf(r->reason, sizeof r->reason, "ppo: the learner's answer is unreadable");
                return STEP_FAIL;
            }
            /* ahead by more than the update a crash kept from the journal: checkpoints of an
             * earlier master (or of `rlhf ppo` before runs had a journal) - their iterations are
             * adopted with their lines of OUT/metrics.jsonl */
            if (L > i + 1 && ppo_adopt(m, r, i, L) < 0) return STEP_FAIL;
            if (L < i) ppo_rollback(m, r, L);
            /* updates the learner does not hold (it restarted from an older checkpoint): a
             * recorded result of one is not the learner's state, it is run again */
            for (long k = L; k <= i && L <= i; k++) {
                int tj = sched_job_find(&m->sched, master_job_id(m, r->ns_ppo, train_id(k)));
                if (tj >= 0 && m->sched.jobs[tj].state == SCHED_DONE)
                    master_job_forget(m, &m->sched.jobs[tj]);
            }
            if (L > i + 1 || L < i) run_log(m, r, "ppo: resuming at iteration %ld", L);
            p->attached = 1;
            continue;
        }
        if (i >= p->iterations) {
            int rc = ppo_export(m, r);
            if (rc < 0) {
                snprintf(r->reason, sizeof r->reason, "ppo: exporting the policy: %s", rl_errmsg());
                if (rc == RL_EIO) {
                    r->io_paused = 1;
                    return STEP_WAIT;
                }
                return STEP_FAIL;
            }
            return STEP_DONE;
        }
        int gj[4096], sj[4096];
        if (p->n_jobs > 4096) {
            snprintf(r->reason, sizeof r->reason, "ppo: more than 4096 jobs per phase");
            return STEP_FAIL;
        }
        int s = rollouts_step(m, ri, i, gj, sj);
        if (s <= 0) return s < 0 ? STEP_FAIL : STEP_WAIT;
        if (p->t_train0 == 0) p->t_train0 = wire_now_ms();
        uint8_t *buf;
        size_t len;
        if (pack_train(r, i, 0, &buf, &len) < 0) return STEP_FAIL;
        int tj = job_ensure(m, ri, r->ns_ppo, train_id(i), RLHF__JOB_KIND__JOB_KIND_TRAIN, 0, 0,
                            RLHF__ROLE__ROLE_LEARNER, 600000, buf, len);
        free(buf);
        /* overlap: iteration i + 1's rollouts (version i, which the learner publishes as update
         * i starts) are generated and scored while update i runs */
        if (p->overlap && i + 1 < p->iterations) {
            int gn[4096], sn[4096];
            if (rollouts_step(m, ri, i + 1, gn, sn) < 0) return STEP_FAIL;
        }
        s = job_state(m, r, tj, "TRAIN (PPO)");
        if (s <= 0) return s < 0 ? STEP_FAIL : STEP_WAIT;
        Rlhf__JournalRecord *rec = job_end(m, tj);
        Rlhf__TrainOutput *t = rec ? rlhf__train_output__unpack(NULL, rec->job_end->output.len,
                                                                rec->job_end->output.data)
                                   : NULL;
        if (!t || !t->ppo) {
            if (t) rlhf__train_output__free_unpacked(t, NULL);
            if (rec) rlhf__journal_record__free_unpacked(rec, NULL);
            snprintf(r->reason, sizeof r->reason, "iteration %ld: TRAIN: no PPO output", i);
            return STEP_FAIL;
        }
        int rc =
            ppo_commit(m, ri, i, t->ppo, t->model_ref, wire_now_ms() - p->t_train0, gj, sj, tj);
        rlhf__train_output__free_unpacked(t, NULL);
        rlhf__journal_record__free_unpacked(rec, NULL);
        if (rc < 0) return STEP_WAIT; /* paused: the commit is tried again */
        guard = 0;
    }
    return STEP_WAIT;
}

/* ---- the pipeline ------------------------------------------------------------------------- */

static int marker_path(const mrun_t *r, int i, char *out, size_t n) {
    return snprintf(out, n, "%.4000s/stages/%s.json", r->dir, stage_name(r, i)) < (int)n;
}

static int marker_write(mrun_t *r, int i, double secs) {
    char path[PATH_MAX + 64];
    marker_path(r, i, path, sizeof path);
    json_t *o = json_pack("{s:s, s:O, s:f}", "stage", stage_name(r, i), "args",
                          json_object_get(stage_at(r, i), "argv"), "seconds", secs);
    char *txt = json_dumps(o, JSON_INDENT(2));
    json_decref(o);
    int rc = txt ? fs_write_atomic(path, txt, strlen(txt)) : rl_fail(RL_ENOMEM, "no memory");
    free(txt);
    return rc;
}

/* A human annotate stage (master_annot.h): runs in the master, as the PPO loop does. */
static int human_step(master_t *m, int ri, int i) {
    mrun_t *r = run_at(m, ri);
    json_t *av = json_object_get(stage_at(r, i), "argv"), *argv = json_array();
    for (size_t k = 0; argv && k < json_array_size(av); k++) {
        char *a = subst_run(r, json_string_value(json_array_get(av, k)) ?: "");
        if (!a || json_array_append_new(argv, json_string(a)) < 0) {
            free(a);
            json_decref(argv);
            argv = NULL;
            break;
        }
        free(a);
    }
    if (!argv) {
        snprintf(r->reason, sizeof r->reason, "annotate: out of memory");
        return STEP_FAIL;
    }
    char log[PATH_MAX + 64];
    snprintf(log, sizeof log, "%.4000s/logs/%s.log", r->dir, stage_name(r, i));
    const char *cwd = json_string_value(json_object_get(r->plan, "cwd"));
    int s = mann_stage_step(m, r->name, cwd ? cwd : m->data_dir, log, argv, r->reason,
                            sizeof r->reason);
    json_decref(argv);
    return s > 0 ? STEP_DONE : s < 0 ? STEP_FAIL : STEP_WAIT;
}

/* Advances run ri as far as it can go now. */
static void run_step(master_t *m, int ri) {
    mrun_t *r = run_at(m, ri);
    if (terminal(r->state)) return;
    if (r->state == R_QUEUED) run_set(m, r, R_RUNNING, r->stage, "");
    if (r->io_paused) { /* try the run directory again */
        char probe[PATH_MAX + 32];
        snprintf(probe, sizeof probe, "%.4000s/.probe", r->dir);
        if (fs_write_atomic(probe, "", 0) < 0) {
            if (r->state != R_PAUSED) run_set(m, r, R_PAUSED, r->stage, r->reason);
            return;
        }
        unlink(probe);
        r->io_paused = 0;
        if (r->ppo && metrics_write(r) < 0) return;
        run_set(m, r, R_RUNNING, r->stage, "");
        run_log(m, r, "the run directory is writable again: going on");
    }
    const char *only = json_string_value(json_object_get(r->plan, "only"));
    while (r->stage < r->n_stages) {
        int i = r->stage;
        const char *nm = stage_name(r, i);
        char marker[PATH_MAX + 64];
        marker_path(r, i, marker, sizeof marker);
        if (only && strcmp(only, nm)) {
            run_set(m, r, r->state, i + 1, "");
            continue;
        }
        struct stat sb;
        if (r->logged_stage != i && stat(marker, &sb) == 0) {
            run_log(m, r, "[%d/%d] %-9s done earlier", i + 1, r->n_stages, nm);
            r->stage_secs[i] = 0;
            run_set(m, r, r->state, i + 1, "");
            continue;
        }
        if (r->logged_stage != i) {
            run_log(m, r, "[%d/%d] %-9s %s", i + 1, r->n_stages, nm,
                    json_string_value(json_object_get(stage_at(r, i), "summary")) ?: "");
            r->logged_stage = i;
            r->t_stage0 = wire_now_ms();
        }
        if (r->t_stage0 == 0) r->t_stage0 = wire_now_ms();
        int s;
        if (stage_is_ppo(r, i)) {
            s = ppo_step(m, ri);
        } else if (mann_is_human(json_object_get(stage_at(r, i), "argv"))) {
            s = human_step(m, ri, i);
        } else {
            int j = stage_job(m, ri, i, (uint64_t)i + 1, NULL);
            s = job_state(m, r, j, nm);
        }
        if (s == STEP_WAIT) {
            if (r->io_paused && r->state != R_PAUSED) run_set(m, r, R_PAUSED, i, r->reason);
            return;
        }
        if (s == STEP_FAIL) {
            char why[2048];
            snprintf(why, sizeof why, "%s", r->reason);
            run_log(m, r, "[%d/%d] %-9s failed: %s", i + 1, r->n_stages, nm, why);
            run_set(m, r, R_FAILED, i, why);
            r->retry = 0;
            return;
        }
        double secs = (wire_now_ms() - r->t_stage0) / 1000;
        if (marker_write(r, i, secs) < 0) {
            r->io_paused = 1;
            run_set(m, r, R_PAUSED, i, rl_errmsg());
            return;
        }
        r->stage_secs[i] = secs;
        /* its job's record is not needed any more: the stage is done by its marker, and a rerun
         * (the marker removed, --only) runs the job afresh */
        int sj = sched_job_find(&m->sched, master_job_id(m, r->ns_self, (uint64_t)i + 1));
        if (sj >= 0) master_job_forget(m, &m->sched.jobs[sj]);
        char el[16];
        fmt_secs(secs, el, sizeof el);
        run_log(m, r, "[%d/%d] %-9s done in %s", i + 1, r->n_stages, nm, el);
        if (r->ppo) {
            ppo_free(r->ppo);
            r->ppo = NULL;
        }
        r->t_stage0 = 0;
        run_set(m, r, r->state == R_PAUSED ? R_RUNNING : r->state, i + 1, "");
    }
    run_log(m, r, "all stages done; outputs in %s", r->dir);
    run_set(m, r, R_SUCCEEDED, r->stage, "");
}

/* The active run: the one running or paused, else the queued run submitted first; -1. */
static int active_run(const master_t *m) {
    int best = -1;
    for (int ri = 0; ri < m->n_runs; ri++) {
        const mrun_t *r = &m->runs[ri];
        if (r->state == R_RUNNING || r->state == R_PAUSED) return ri;
        if (r->state == R_QUEUED && (best < 0 || r->seq < m->runs[best].seq)) best = ri;
    }
    return best;
}

void mrun_tick(master_t *m) {
    /* one active run at a time (the learner holds one training at a time): the one under way
     * goes on; when it ends, the queued run submitted first starts */
    for (int guard = 0; guard < m->n_runs + 1; guard++) {
        int ri = active_run(m);
        if (ri < 0) return;
        run_step(m, ri);
        mrun_t *r = &m->runs[ri];
        if (!terminal(r->state)) return;
        ppo_free(r->ppo); /* ended: its loop's state goes; read again if it is resubmitted */
        r->ppo = NULL;
    }
}

void mrun_learner_hello(master_t *m) {
    int ri = active_run(m);
    if (ri >= 0 && m->runs[ri].ppo) m->runs[ri].ppo->attached = 0;
}

/* ---- submission, queries ----------------------------------------------------------------- */

/* Checks a plan's shape. Returns NULL or why it is refused. */
static const char *plan_invalid(json_t *plan) {
    json_t *st = json_object_get(plan, "stages");
    if (!json_is_object(plan)) return "the plan is not a JSON object";
    if (!json_is_array(st) || json_array_size(st) == 0) return "the plan has no stages";
    size_t i;
    json_t *s;
    int n_ppo = 0;
    json_array_foreach(st, i, s) {
        json_t *av = json_object_get(s, "argv");
        const char *nm = json_string_value(json_object_get(s, "name"));
        if (!nm || !nm[0] || strchr(nm, '/') || strlen(nm) > 64) return "a stage has no valid name";
        if (!json_is_array(av) || json_array_size(av) == 0) return "a stage has no argv";
        for (size_t k = 0; k < json_array_size(av); k++)
            if (!json_is_string(json_array_get(av, k))) return "a stage's argv is not strings";
        if (!strcmp(json_string_value(json_array_get(av, 0)), "ppo") && n_ppo++ &&
            !strcmp(nm, "ppo"))
            return "a PPO stage named 'ppo' must be the plan's first PPO stage (its jobs are "
                   "@NAME/ppo, the first's)";
        for (size_t k = 0; k < i; k++)
            if (!strcmp(nm, json_string_value(json_object_get(json_array_get(st, k), "name"))))
                return "two stages have the same name";
    }
    return NULL;
}

static int name_invalid(const char *name) {
    if (!name || !name[0] || strlen(name) > 100 || name[0] == '.' || name[0] == '@') return 1;
    for (const char *p = name; *p; p++)
        if (!(('a' <= *p && *p <= 'z') || ('A' <= *p && *p <= 'Z') || ('0' <= *p && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.'))
            return 1;
    return 0;
}

int mrun_find(const master_t *m, const char *name) {
    for (int i = 0; i < m->n_runs; i++)
        if (!strcmp(m->runs[i].name, name)) return i;
    return -1;
}

/* Creates or updates run `name` with plan (owned by the run). Returns its index or -1. */
static int run_put(master_t *m, const char *name, json_t *plan) {
    int ri = mrun_find(m, name);
    if (ri < 0) {
        if (m->n_runs == m->cap_runs) {
            int cap = m->cap_runs ? 2 * m->cap_runs : 8;
            mrun_t *nr = realloc(m->runs, (size_t)cap * sizeof *nr);
            if (!nr) {
                json_decref(plan);
                return -1;
            }
            m->runs = nr;
            m->cap_runs = cap;
        }
        ri = m->n_runs++;
        mrun_t *r = &m->runs[ri];
        memset(r, 0, sizeof *r);
        snprintf(r->name, sizeof r->name, "%s", name);
        snprintf(r->dir, sizeof r->dir, "%.4000s/%s", m->data_dir, name);
        r->metrics_by = json_object();
        r->logged_stage = -1;
        char ns[160];
        snprintf(ns, sizeof ns, "@%s", name);
        r->ns_self = master_ns_index(m, ns);
        snprintf(ns, sizeof ns, "@%s/ppo", name);
        r->ns_ppo = master_ns_index(m, ns);
        r->submitted_unix = now_unix();
        r->seq = ++m->run_seq;
        if (r->ns_self < 0 || r->ns_ppo < 0 || !r->metrics_by) {
            json_decref(r->metrics_by);
            m->n_runs--;
            json_decref(plan);
            return -1;
        }
    }
    mrun_t *r = &m->runs[ri];
    json_decref(r->plan);
    r->plan = plan;
    r->n_stages = (int)json_array_size(json_object_get(plan, "stages"));
    free(r->stage_secs);
    r->stage_secs = calloc((size_t)r->n_stages + 1, sizeof *r->stage_secs);
    r->updated_unix = now_unix();
    /* until a PPO-kind stage loads: the lines of the first (or of the stage they were) */
    if (metrics_select(r, r->metrics_stage[0] ? r->metrics_stage : first_ppo_stage(r)) < 0)
        return -1;
    return ri;
}

/* A run's plan replaced by another: the jobs its stage commands finished under the old plan
 * (namespaces NAME/STAGE) may be of other inputs - a retrained model, other settings - under
 * the same ids. Forgotten, so that the new plan's commands run theirs (finished stages are
 * skipped by their markers, not by these jobs). */
static void run_forget_stage_jobs(master_t *m, const char *name) {
    size_t nl = strlen(name);
    for (int j = 0; j < m->sched.n_jobs; j++) {
        sched_job_t *jb = &m->sched.jobs[j];
        const char *ns = m->ns[jb->ns];
        if (!jb->forgotten && !strncmp(ns, name, nl) && ns[nl] == '/') master_job_forget(m, jb);
    }
}

int mrun_submit(master_t *m, const char *name, const char *plan_json, char *why, size_t n) {
    json_error_t e;
    json_t *plan = json_loads(plan_json ? plan_json : "", 0, &e);
    const char *bad = plan ? plan_invalid(plan) : e.text;
    if (!bad && name_invalid(name))
        bad = "a run name is 1-100 letters, digits, '-', '_' or '.' (not starting with '.')";
    if (bad) {
        snprintf(why, n, "%s", bad);
        json_decref(plan);
        return -1;
    }
    int ri = mrun_find(m, name);
    if (ri >= 0 && !terminal(m->runs[ri].state) &&
        !json_equal(json_object_get(m->runs[ri].plan, "stages"), json_object_get(plan, "stages"))) {
        snprintf(why, n, "run %s is %s with another plan: cancel it first (rlhf cancel %s)", name,
                 state_names[m->runs[ri].state], name);
        json_decref(plan);
        return -1;
    }
    Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
    Rlhf__JournalRun jr = RLHF__JOURNAL_RUN__INIT;
    jr.name = (char *)name;
    jr.plan_json = (char *)plan_json;
    rec.body_case = RLHF__JOURNAL_RECORD__BODY_RUN;
    rec.run = &jr;
    if (master_journal(m, &rec, 1) < 0) {
        snprintf(why, n, "the master cannot write its journal: %s", rl_errmsg());
        json_decref(plan);
        return -1;
    }
    int was = ri >= 0 ? m->runs[ri].state : -1;
    if (ri >= 0 && !json_equal(m->runs[ri].plan, plan)) run_forget_stage_jobs(m, name);
    ri = run_put(m, name, plan);
    if (ri < 0) {
        snprintf(why, n, "out of memory");
        return -1;
    }
    mrun_t *r = &m->runs[ri];
    /* the run directory and what it holds from the start */
    char path[PATH_MAX + 32];
    int rc = fs_mkdir_p(r->dir);
    snprintf(path, sizeof path, "%.4000s/stages", r->dir);
    if (rc == 0) rc = fs_mkdir_p(path);
    snprintf(path, sizeof path, "%.4000s/logs", r->dir);
    if (rc == 0) rc = fs_mkdir_p(path);
    json_t *cj = json_object_get(plan, "config_json");
    if (rc == 0 && cj) {
        char *txt = json_dumps(cj, JSON_INDENT(2) | JSON_SORT_KEYS);
        snprintf(path, sizeof path, "%.4000s/config.json", r->dir);
        rc = txt ? fs_write_atomic(path, txt, strlen(txt)) : RL_ENOMEM;
        free(txt);
    }
    const char *only = json_string_value(json_object_get(plan, "only"));
    for (int i = 0; rc == 0 && only && i < r->n_stages; i++)
        if (!strcmp(stage_name(r, i), only)) {
            marker_path(r, i, path, sizeof path);
            unlink(path);
        }
    if (rc < 0) {
        snprintf(why, n, "the run directory: %s", rl_errmsg());
        r->io_paused = 1;
    }
    if (was < 0 || terminal(was)) {
        /* submitted again: its failed jobs run again, once each (forgotten now, so a job that
         * fails again fails the run again), and its PPO plan is read again */
        for (int j = 0; j < m->sched.n_jobs; j++)
            if (m->sched.jobs[j].run == ri && m->sched.jobs[j].state == SCHED_FAILED)
                master_job_forget(m, &m->sched.jobs[j]);
        /* ppo-prep too: it names the models by content, and a model fixed since must be
         * published again (a job naming the old content would fail the same way) */
        for (int i = 0; (was == R_FAILED || was == R_CANCELLED) && i < r->n_stages; i++) {
            int j = stage_is_ppo(r, i)
                        ? sched_job_find(&m->sched, master_job_id(m, r->ns_self, (uint64_t)i + 1))
                        : -1;
            if (j >= 0) master_job_forget(m, &m->sched.jobs[j]);
        }
        ppo_free(r->ppo);
        r->ppo = NULL;
        r->retry = 0;
        r->seq = ++m->run_seq;
        r->logged_stage = -1;
        run_set(m, r, R_QUEUED, 0, rc < 0 ? why : "");
        run_log(m, r, "submitted: %d stages, run directory %s", r->n_stages, r->dir);
    }
    mrun_tick(m);
    return ri;
}

int mrun_cancel(master_t *m, int ri, char *why, size_t n) {
    mrun_t *r = run_at(m, ri);
    if (terminal(r->state)) {
        snprintf(why, n, "run %s already %s", r->name, state_names[r->state]);
        return -1;
    }
    /* its queued jobs are not dispatched any more; a running stage command finishes or is
     * stopped with its worker, and its result is then not used */
    for (int j = 0; j < m->sched.n_jobs; j++) {
        sched_job_t *jb = &m->sched.jobs[j];
        if (jb->run == ri && jb->state == SCHED_QUEUED) master_job_fail(m, jb, "cancelled");
    }
    run_log(m, r, "cancelled");
    run_set(m, r, R_CANCELLED, r->stage, "cancelled");
    mrun_tick(m);
    return 0;
}

/* The last line of a stage log that is a JSON object with a progress figure. */
static void progress_of(const char *log, char *out, size_t n) {
    out[0] = 0;
    FILE *f = fopen(log, "r");
    if (!f) return;
    if (fseek(f, -4096, SEEK_END) != 0) rewind(f);
    char line[4096], last[4096] = "";
    while (fgets(line, sizeof line, f))
        if (line[0] == '{') snprintf(last, sizeof last, "%s", line);
    fclose(f);
    json_t *o = json_loads(last, 0, NULL);
    static const char *pairs[][2] = {
        {"step", "steps"}, {"iter", "iters"}, {"iteration", "iterations"}};
    for (int i = 0; o && i < 3; i++) {
        json_t *a = json_object_get(o, pairs[i][0]), *b = json_object_get(o, pairs[i][1]);
        if (json_is_integer(a)) {
            if (json_is_integer(b))
                snprintf(out, n, "%s %lld/%lld", pairs[i][0], (long long)json_integer_value(a),
                         (long long)json_integer_value(b));
            else
                snprintf(out, n, "%s %lld", pairs[i][0], (long long)json_integer_value(a));
            break;
        }
    }
    json_decref(o);
}

static json_t *run_status(master_t *m, int ri) {
    mrun_t *r = run_at(m, ri);
    char prog[96] = "", log[PATH_MAX + 64];
    if (r->stage < r->n_stages && r->state != R_QUEUED) {
        if (r->ppo && stage_is_ppo(r, r->stage))
            snprintf(prog, sizeof prog, "iteration %zu/%d", json_array_size(r->metrics),
                     r->ppo->iterations);
        else {
            snprintf(log, sizeof log, "%.4000s/logs/%s.log", r->dir, stage_name(r, r->stage));
            progress_of(log, prog, sizeof prog);
        }
    }
    double el = r->t_stage0 > 0 ? (wire_now_ms() - r->t_stage0) / 1000 : 0;
    json_t *stages = json_array();
    double total_w = 0, done_w = 0, done_s = 0;
    for (int i = 0; i < r->n_stages; i++) {
        double w = json_number_value(json_object_get(stage_at(r, i), "weight"));
        total_w += w > 0 ? w : 1;
        const char *st = i < r->stage              ? "done"
                         : i > r->stage            ? "pending"
                         : r->state == R_FAILED    ? "failed"
                         : r->state == R_SUCCEEDED ? "done"
                         : r->state == R_CANCELLED ? "cancelled"
                         : r->state == R_QUEUED    ? "pending"
                                                   : "running";
        if (i < r->stage) done_w += w > 0 ? w : 1, done_s += r->stage_secs[i];
        /* the running stage: its time so far */
        double secs = !strcmp(st, "running") ? el : r->stage_secs[i];
        json_array_append_new(stages, json_pack("{s:s, s:s, s:f}", "name", stage_name(r, i),
                                                "state", st, "seconds", secs));
    }
    double frac =
        total_w > 0
            ? (done_w + (r->stage < r->n_stages ? 0.5 : 0) *
                            json_number_value(json_object_get(stage_at(r, r->stage), "weight"))) /
                  total_w
            : 0;
    double spent = done_s + el;
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:s, s:f, s:f, s:o}", "name", r->name,
                  "state", state_names[r->state], "reason", r->reason, "run_dir", r->dir, "stage",
                  r->stage < r->n_stages ? stage_name(r, r->stage) : "", "stage_index", r->stage,
                  "n_stages", r->n_stages, "progress", prog, "submitted_unix", r->submitted_unix,
                  "updated_unix", r->updated_unix, "stages", stages);
    json_object_set_new(o, "elapsed_s", json_real(el));
    json_object_set_new(o, "eta_s",
                        r->state == R_RUNNING && done_w > 0 && frac > 0 && frac < 1
                            ? json_real(spent / frac * (1 - frac))
                            : json_null());
    if (r->ppo)
        json_object_set_new(o, "iteration", json_integer((json_int_t)json_array_size(r->metrics)));
    return o;
}

json_t *mrun_status(master_t *m, int r) {
    if (r >= 0) return run_status(m, r);
    json_t *a = json_array();
    for (int i = 0; i < m->n_runs; i++) json_array_append_new(a, run_status(m, i));
    return json_pack("{s:o}", "runs", a);
}

const char *mrun_ended(const master_t *m, int ri) {
    int st = m->runs[ri].state;
    return terminal(st) ? state_names[st] : NULL;
}

json_t *mrun_metrics(master_t *m, int ri) {
    json_t *a = json_array();
    json_t *lines = run_at(m, ri)->metrics;
    for (size_t i = 0; a && i < json_array_size(lines); i++) {
        json_t *o = json_loads(json_string_value(json_array_get(lines, i)) ?: "", 0, NULL);
        json_array_append_new(a, o ? o : json_null());
    }
    return a;
}

int mrun_log_read(master_t *m, int ri, uint64_t off, size_t max, uint8_t **buf, size_t *len,
                  uint64_t *next) {
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%.4000s/run.log", run_at(m, ri)->dir);
    *buf = NULL, *len = 0, *next = off;
    FILE *f = fopen(path, "r");
    if (!f) return errno == ENOENT ? 0 : rl_fail(RL_EIO, "%s: %s", path, strerror(errno));
    uint8_t *b = malloc(max ? max : 1);
    size_t n = 0;
    if (b && fseeko(f, (off_t)off, SEEK_SET) == 0) n = fread(b, 1, max, f);
    fclose(f);
    if (!b) return rl_fail(RL_ENOMEM, "out of memory");
    *buf = b, *len = n, *next = off + n;
    return 0;
}

void mrun_job_end(master_t *m, sched_job_t *jb, int ok, const char *reason, int deterministic,
                  int environment) {
    if (jb->run < 0 || jb->run >= m->n_runs) return;
    mrun_t *r = run_at(m, jb->run);
    if (!ok && r->ppo && jb->ns == r->ns_ppo && jb->kind == RLHF__JOB_KIND__JOB_KIND_TRAIN)
        r->ppo->attached = 0; /* the learner may have lost this training: ask it again */
    if (!ok && environment && !terminal(r->state)) {
        snprintf(r->reason, sizeof r->reason, "waiting: %s", reason ? reason : "");
        r->env_job = jb->id;
        run_set(m, r, R_PAUSED, r->stage, r->reason);
    } else if (!ok && !deterministic && !terminal(r->state)) {
        master_log("run %s: job %" PRIu64 " will be retried: %s", r->name, jb->id,
                   reason ? reason : "");
    } else if (ok && r->state == R_PAUSED && !r->io_paused &&
               (!r->env_job || r->env_job == jb->id)) {
        /* only the held job's success ends the pause: another job (the learner's ATTACH while
         * its TRAIN cannot write its checkpoint) says nothing about the directory */
        r->env_job = 0;
        run_set(m, r, R_RUNNING, r->stage, "");
    }
    mrun_tick(m);
}

/* ---- journal ------------------------------------------------------------------------------ */

int mrun_replay(master_t *m, const Rlhf__JournalRecord *rec) {
    if (rec->body_case == RLHF__JOURNAL_RECORD__BODY_RUN) {
        json_t *plan = json_loads(rec->run->plan_json ? rec->run->plan_json : "", 0, NULL);
        if (!plan) return rl_fail(RL_EFORMAT, "journal: run %s: plan unreadable", rec->run->name);
        if (run_put(m, rec->run->name, plan) < 0) return rl_fail(RL_ENOMEM, "out of memory");
        m->runs[mrun_find(m, rec->run->name)].submitted_unix = rec->time_unix;
        return 0;
    }
    if (rec->body_case == RLHF__JOURNAL_RECORD__BODY_RUN_STATE) {
        int ri = mrun_find(m, rec->run_state->name);
        if (ri < 0) return 0;
        mrun_t *r = &m->runs[ri];
        for (int s = 0; s < 6; s++)
            if (!strcmp(rec->run_state->state, state_names[s])) r->state = s;
        r->stage = rec->run_state->stage;
        r->retry = rec->run_state->retry;
        snprintf(r->reason, sizeof r->reason, "%s", rec->run_state->reason ?: "");
        r->updated_unix = rec->time_unix;
        return 0;
    }
    if (rec->body_case == RLHF__JOURNAL_RECORD__BODY_ITERATION) {
        int ri = mrun_find(m, rec->iteration->run);
        if (ri < 0) return 0;
        mrun_t *r = &m->runs[ri];
        if (metrics_select(r, rec->iteration->stage ? rec->iteration->stage : "") < 0)
            return rl_fail(RL_ENOMEM, "out of memory");
        size_t i = (size_t)rec->iteration->iteration;
        while (json_array_size(r->metrics) > i)
            json_array_remove(r->metrics, json_array_size(r->metrics) - 1);
        if (rec->iteration->metrics_line && rec->iteration->metrics_line[0]) {
            if (json_array_size(r->metrics) != i)
                return rl_fail(RL_EFORMAT, "journal: run %s: stage %s: iteration %zu after %zu",
                               r->name, r->metrics_stage, i, json_array_size(r->metrics));
            json_array_append_new(r->metrics, json_string(rec->iteration->metrics_line));
        }
        snprintf(r->policy_ref, sizeof r->policy_ref, "%s",
                 rec->iteration->policy_ref ? rec->iteration->policy_ref : "");
        snprintf(r->policy_stage, sizeof r->policy_stage, "%s", r->metrics_stage);
        return 0;
    }
    return 0;
}

void mrun_resume(master_t *m) {
    for (int ri = 0; ri < m->n_runs; ri++) {
        mrun_t *r = &m->runs[ri];
        if (terminal(r->state)) continue;
        /* a paused run tries again at once; a running stage continues where the journal says */
        if (r->state == R_PAUSED) r->io_paused = 1;
        master_log("run %s: %s at stage %d/%d (%zu iterations of %s committed)", r->name,
                   state_names[r->state], r->stage + 1, r->n_stages, json_array_size(r->metrics),
                   r->metrics_stage);
    }
}

int mrun_snapshot(master_t *m, journal_t *j) {
    (void)j;
    for (int ri = 0; ri < m->n_runs; ri++) {
        mrun_t *r = &m->runs[ri];
        char *plan = json_dumps(r->plan, JSON_COMPACT);
        Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
        Rlhf__JournalRun jr = RLHF__JOURNAL_RUN__INIT;
        jr.name = r->name;
        jr.plan_json = plan;
        rec.time_unix = r->submitted_unix;
        rec.body_case = RLHF__JOURNAL_RECORD__BODY_RUN;
        rec.run = &jr;
        int rc = plan ? master_journal(m, &rec, 0) : RL_ENOMEM;
        free(plan);
        if (rc < 0) return rc;
        Rlhf__JournalRunState rs = RLHF__JOURNAL_RUN_STATE__INIT;
        rs.name = r->name;
        rs.state = (char *)state_names[r->state];
        rs.stage = r->stage;
        rs.reason = r->reason;
        rs.retry = r->retry;
        rec.time_unix = r->updated_unix;
        rec.body_case = RLHF__JOURNAL_RECORD__BODY_RUN_STATE;
        rec.run_state = &rs;
        if ((rc = master_journal(m, &rec, 0)) < 0) return rc;
        /* each PPO-kind stage's lines, the current stage's last (replay ends on it) */
        const char *st;
        json_t *lines;
        for (int cur = 0; cur < 2; cur++) json_object_foreach(r->metrics_by, st, lines) {
                if (cur != !strcmp(st, r->metrics_stage)) continue;
                for (size_t i = 0; i < json_array_size(lines); i++) {
                    Rlhf__JournalIteration it = RLHF__JOURNAL_ITERATION__INIT;
                    it.run = r->name;
                    it.stage = (char *)st;
                    it.iteration = i;
                    it.metrics_line = (char *)json_string_value(json_array_get(lines, i));
                    if (i + 1 == json_array_size(lines) && !strcmp(st, r->policy_stage))
                        it.policy_ref = r->policy_ref;
                    rec.body_case = RLHF__JOURNAL_RECORD__BODY_ITERATION;
                    rec.iteration = &it;
                    if ((rc = master_journal(m, &rec, 0)) < 0) return rc;
                }
            }
    }
    return 0;
}

void mrun_free(master_t *m) {
    for (int ri = 0; ri < m->n_runs; ri++) {
        json_decref(m->runs[ri].plan);
        json_decref(m->runs[ri].metrics_by);
        ppo_free(m->runs[ri].ppo);
        free(m->runs[ri].stage_secs);
    }
    free(m->runs);
    m->runs = NULL;
    m->n_runs = m->cap_runs = 0;
}
