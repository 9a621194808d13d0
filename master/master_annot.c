/*
 * master_annot.c - human annotators of a run on the master: tokens, the human annotate stage,
 * the annotation API, journaled (see master_annot.h for the design).
 */
#include "master_annot.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "align/annot.h"
#include "align/rank.h"
#include "align/task.h"
#include "annot_pool.h"
#include "base/err.h"
#include "base/fs.h"
#include "net/secret.h"
#include "net/wire.h"

/* The most annotators per run, and the longest guidelines served. */
#define MANN_MAX_ANNOT  10000
#define MANN_MAX_GUIDES (1 << 20)

typedef struct {
    char name[65];
    unsigned char hash[SECRET_HASH_LEN];
    double secs; /* server-side seconds from lease to accepted ranking, summed */
    int n_timed;
} mann_annotator_t;

/* One run's human annotation. */
typedef struct {
    char run[128];
    mann_annotator_t *an;
    int n_an, cap_an;
    json_t *recs;       /* the accepted records (JSON strings), in journal order */
    double opened_unix; /* 0: the stage has not opened */
    char closed[256];   /* why it closed; "" while open */
    /* the stage, loaded in this process by its first step */
    int loaded;
    char out[PATH_MAX], log[PATH_MAX];
    char *guidelines;
    int overlap;
    uint64_t seed;
    double deadline_s, lease_s;
    annot_comp_t comp;
    annot_store_t store;
    apool_t pool;
    int written; /* the store written after the stage closed */
    /* counters */
    uint64_t n_accepted, n_skipped, n_rejected;
    /* the admin view's consensus figures (rlhf aggregate's), kept between views: computing them
     * is O(prompts x completions x annotators), 0.2 s at 200 annotators and 7,600 prompts, on
     * the master's loop */
    annot_agg_t agg;
    int agg_have, agg_records;  /* computed; the store's size then */
    double agg_at_ms, agg_cost; /* when, and what it cost (ms) */
} mann_run_t;

struct mann {
    mann_run_t **v;
    int n, cap;
    uint64_t n_unknown_token; /* API requests with a token nobody holds (401) */
};

static double now_unix(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static mann_run_t *run_get(master_t *m, const char *run, int create) {
    struct mann *s = m->ann;
    for (int i = 0; s && i < s->n; i++)
        if (!strcmp(s->v[i]->run, run)) return s->v[i];
    if (!create) return NULL;
    if (!s && !(s = m->ann = calloc(1, sizeof *s))) return NULL;
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 4;
        mann_run_t **nv = realloc(s->v, (size_t)cap * sizeof *nv);
        if (!nv) return NULL;
        s->v = nv;
        s->cap = cap;
    }
    mann_run_t *r = calloc(1, sizeof *r);
    if (!r || !(r->recs = json_array())) {
        free(r);
        return NULL;
    }
    snprintf(r->run, sizeof r->run, "%s", run);
    s->v[s->n++] = r;
    return r;
}

static void run_free(mann_run_t *r) {
    if (!r) return;
    sodium_memzero(r->an, (size_t)r->cap_an * sizeof *r->an);
    free(r->an);
    json_decref(r->recs);
    free(r->guidelines);
    if (r->agg_have) annot_agg_free(&r->agg);
    annot_store_free(&r->store);
    annot_comp_free(&r->comp);
    apool_free(&r->pool);
    free(r);
}

void mann_free(master_t *m) {
    struct mann *s = m->ann;
    if (!s) return;
    for (int i = 0; i < s->n; i++) run_free(s->v[i]);
    free(s->v);
    free(s);
    m->ann = NULL;
}

static int name_ok(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n > 64) return 0;
    for (; *s; s++)
        if (!(('a' <= *s && *s <= 'z') || ('A' <= *s && *s <= 'Z') || ('0' <= *s && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

static int an_find(const mann_run_t *r, const char *name) {
    for (int i = 0; i < r->n_an; i++)
        if (!strcmp(r->an[i].name, name)) return i;
    return -1;
}

/* Adds an annotator to the run's list (and to its pool when the stage is loaded). */
static int an_put(mann_run_t *r, const char *name, const unsigned char *hash) {
    if (an_find(r, name) >= 0) return 0;
    if (r->n_an == r->cap_an) {
        int cap = r->cap_an ? 2 * r->cap_an : 8;
        mann_annotator_t *na = realloc(r->an, (size_t)cap * sizeof *na);
        if (!na) return rl_fail(RL_ENOMEM, "out of memory");
        r->an = na;
        r->cap_an = cap;
    }
    mann_annotator_t *a = &r->an[r->n_an];
    memset(a, 0, sizeof *a);
    snprintf(a->name, sizeof a->name, "%s", name);
    memcpy(a->hash, hash, SECRET_HASH_LEN);
    if (r->loaded && apool_annot_add(&r->pool) < 0) return RL_ENOMEM;
    r->n_an++;
    return 0;
}

/* Applies an accepted record (JSON text) to the loaded store and pool. */
static int rec_apply(mann_run_t *r, const char *txt, const char *where, double *secs_out) {
    json_error_t e;
    json_t *o = json_loads(txt, 0, &e);
    if (!o) return rl_fail(RL_EFORMAT, "%s: %s", where, e.text);
    annot_rec_t rec;
    int rc = annot_rec_from_json(&r->comp, o, where, "1970-01-01T00:00:00Z", task_guideline_version,
                                 &rec);
    json_decref(o);
    if (rc < 0) return rc;
    int a = an_find(r, rec.annotator), p = rec.prompt, skip = rec.skip;
    if (a < 0) {
        rc = rl_fail(RL_EFORMAT, "%s: no annotator '%s' in this run", where, rec.annotator);
        annot_rec_free(&rec);
        return rc;
    }
    double now = wire_now_ms();
    if (secs_out && r->pool.a[a].lease == p) *secs_out = (now - r->pool.a[a].lease_start_ms) / 1e3;
    if ((rc = annot_store_add(&r->store, &rec)) < 0) return rc;
    apool_record(&r->pool, a, p, skip);
    return 0;
}

/* ---- the stage ---------------------------------------------------------------------------- */

int mann_is_human(json_t *argv) {
    if (strcmp(json_string_value(json_array_get(argv, 0)) ?: "", "annotate")) return 0;
    for (size_t i = 1; i + 1 < json_array_size(argv); i++)
        if (!strcmp(json_string_value(json_array_get(argv, i)) ?: "", "--source"))
            return !strcmp(json_string_value(json_array_get(argv, i + 1)) ?: "", "human");
    return 0;
}

/* The value of option --name in argv, or def. */
static const char *arg_of(json_t *argv, const char *name, const char *def) {
    for (size_t i = 1; i + 1 < json_array_size(argv); i++) {
        const char *a = json_string_value(json_array_get(argv, i));
        if (a && a[0] == '-' && a[1] == '-' && !strcmp(a + 2, name))
            return json_string_value(json_array_get(argv, i + 1)) ?: def;
    }
    return def;
}

static void path_in(const char *cwd, const char *p, char *out, size_t n) {
    if (p[0] == '/' || !cwd || !cwd[0])
        snprintf(out, n, "%s", p);
    else
        snprintf(out, n, "%s/%s", cwd, p);
}

/* Journals the stage's state (opened, closed); sync: the record on disk before returning. */
static int state_journal(master_t *m, mann_run_t *r, int sync) {
    Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
    Rlhf__JournalAnnotate ja = RLHF__JOURNAL_ANNOTATE__INIT;
    ja.run = r->run;
    ja.opened_unix = r->opened_unix;
    ja.closed = r->closed;
    rec.body_case = RLHF__JOURNAL_RECORD__BODY_ANNOTATE;
    rec.annotate = &ja;
    return master_journal(m, &rec, sync);
}

/* The stage's first step in this process: its files read, the records replayed applied. */
static int stage_load(master_t *m, mann_run_t *r, const char *cwd, const char *log, json_t *argv) {
    snprintf(r->log, sizeof r->log, "%s", log);
    char comp[PATH_MAX], guides[PATH_MAX];
    path_in(cwd, arg_of(argv, "completions", "completions.jsonl"), comp, sizeof comp);
    path_in(cwd, arg_of(argv, "out", "annotations.jsonl"), r->out, sizeof r->out);
    const char *g = arg_of(argv, "guidelines", NULL);
    r->overlap = atoi(arg_of(argv, "overlap", "3"));
    r->seed = strtoull(arg_of(argv, "seed", "1"), NULL, 10);
    r->deadline_s = atof(arg_of(argv, "deadline", "0"));
    r->lease_s = atof(arg_of(argv, "lease", "900"));
    if (r->overlap < 1) r->overlap = 1;
    if (r->lease_s <= 0) r->lease_s = 900;
    int rc = annot_comp_load(&r->comp, comp);
    if (rc < 0) return rl_fail_ctx(rc, "the completions");
    size_t len = 0;
    if (g) {
        path_in(cwd, g, guides, sizeof guides);
        if ((rc = fs_read_file(guides, MANN_MAX_GUIDES, &r->guidelines, &len)) < 0)
            return rl_fail_ctx(rc, "the guidelines (annotate.guidelines)");
    } else {
        /* none named: the task's, where the run's task stage wrote them, else one line (a run
         * of the user's own completions has no task) */
        path_in(cwd, "task/guidelines.md", guides, sizeof guides);
        rc = fs_read_file(guides, MANN_MAX_GUIDES, &r->guidelines, &len);
        if (rc == RL_ENOTFOUND) {
            rl_err_clear();
            r->guidelines = strdup("Rank the completions from best to worst.");
            rc = r->guidelines ? 0 : rl_fail(RL_ENOMEM, "out of memory");
        }
        if (rc < 0) return rl_fail_ctx(rc, "the guidelines (task/guidelines.md)");
    }
    uint64_t *keys = malloc((size_t)(r->comp.n ? r->comp.n : 1) * sizeof *keys);
    if (!keys) return rl_fail(RL_ENOMEM, "out of memory");
    for (int i = 0; i < r->comp.n; i++) keys[i] = annot_prompt_key(r->comp.v[i].id);
    rc = apool_init(&r->pool, r->comp.n, keys, r->overlap, r->seed);
    free(keys);
    if (rc < 0) return rc;
    if (r->agg_have) annot_agg_free(&r->agg), r->agg_have = 0;
    annot_store_init(&r->store, &r->comp);
    for (int i = 0; i < r->n_an; i++)
        if ((rc = apool_annot_add(&r->pool)) < 0) return rc;
    r->loaded = 1;
    for (size_t i = 0; i < json_array_size(r->recs); i++) {
        char where[64];
        snprintf(where, sizeof where, "journal record %zu", i + 1);
        if (rec_apply(r, json_string_value(json_array_get(r->recs, i)), where, NULL) < 0)
            master_log("run %s: annotate: %s (left out)", r->run, rl_errmsg());
    }
    if (!r->opened_unix) {
        r->opened_unix = now_unix();
        if ((rc = state_journal(m, r, 1)) < 0) return rc;
    }
    master_log("run %s: annotate: open for %d annotators, %d prompts x overlap %d, %zu records",
               r->run, r->n_an, r->comp.n, r->overlap, json_array_size(r->recs));
    return 0;
}

/* A progress line in logs/annotate.log (what rlhf status shows as the stage's progress). */
static void progress_log(mann_run_t *r) {
    long have = 0;
    for (int i = 0; i < r->pool.n_prompts; i++)
        have += r->pool.ranked[i] < r->overlap ? r->pool.ranked[i] : r->overlap;
    FILE *f = fopen(r->log, "a");
    if (!f) return;
    fprintf(f, "{\"step\": %ld, \"steps\": %ld, \"records\": %d}\n", have,
            (long)r->pool.n_prompts * r->overlap, r->store.n);
    fclose(f);
}

int mann_stage_step(master_t *m, const char *run, const char *cwd, const char *log, json_t *argv,
                    char *why, size_t n) {
    mann_run_t *r = run_get(m, run, 1);
    if (!r) {
        snprintf(why, n, "annotate: out of memory");
        return -1;
    }
    if (!r->loaded) {
        if (stage_load(m, r, cwd, log, argv) < 0) {
            snprintf(why, n, "annotate: %s", rl_errmsg());
            annot_store_free(&r->store);
            annot_comp_free(&r->comp);
            apool_free(&r->pool);
            free(r->guidelines);
            r->guidelines = NULL;
            r->loaded = 0;
            return -1;
        }
        progress_log(r);
    }
    apool_tick(&r->pool, wire_now_ms());
    if (!r->closed[0]) {
        if (apool_complete(&r->pool))
            snprintf(r->closed, sizeof r->closed, "the target is met: %d prompts x %d annotators",
                     r->comp.n, r->overlap);
        else if (r->deadline_s > 0 && now_unix() >= r->opened_unix + r->deadline_s)
            snprintf(r->closed, sizeof r->closed, "the deadline passed (%.0f s)", r->deadline_s);
        if (r->closed[0]) {
            master_log("run %s: annotate: closed: %s", r->run, r->closed);
            state_journal(m, r, 1);
        }
    }
    if (!r->closed[0]) return 0;
    if (!r->written) {
        int rc = annot_store_write(&r->store, r->out);
        if (rc < 0) {
            snprintf(why, n, "annotate: %s", rl_errmsg());
            return -1;
        }
        r->written = 1;
    }
    return 1;
}

/* ---- admin: annotators, close -------------------------------------------------------------- */

static int err_out(json_t **out, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int err_out(json_t **out, int status, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    *out = json_pack("{s:s}", "error", buf);
    return status;
}

int mann_annotator_add(master_t *m, const char *run, const char *name, const char *base_url,
                       json_t **out) {
    if (!name || !name_ok(name))
        return err_out(out, 400, "an annotator's name is 1-64 letters, digits, '-', '_' or '.'");
    mann_run_t *r = run_get(m, run, 1);
    if (!r) return err_out(out, 503, "out of memory");
    if (an_find(r, name) >= 0)
        return err_out(out, 409, "run %s has an annotator '%s' already", run, name);
    if (r->n_an >= MANN_MAX_ANNOT)
        return err_out(out, 409, "run %s has %d annotators, the most there can be", run, r->n_an);
    char tok[SECRET_TOKEN_CAP], link[1024];
    unsigned char hash[SECRET_HASH_LEN];
    if (secret_token_new(tok, sizeof tok) < 0) return err_out(out, 503, "%s", rl_errmsg());
    secret_token_hash(tok, strlen(tok), hash);
    Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
    Rlhf__JournalAnnotator ja = RLHF__JOURNAL_ANNOTATOR__INIT;
    ja.run = (char *)run;
    ja.name = (char *)name;
    ja.token_hash.data = hash;
    ja.token_hash.len = sizeof hash;
    rec.body_case = RLHF__JOURNAL_RECORD__BODY_ANNOTATOR;
    rec.annotator = &ja;
    if (master_journal(m, &rec, 1) < 0 || an_put(r, name, hash) < 0) {
        sodium_memzero(tok, sizeof tok);
        return err_out(out, 503, "the journal: %s", rl_errmsg());
    }
    snprintf(link, sizeof link, "%.900s/annotate#token=%s", base_url, tok);
    *out = json_pack("{s:s, s:s, s:s, s:s}", "run", run, "annotator", name, "token", tok, "link",
                     link);
    sodium_memzero(tok, sizeof tok);
    sodium_memzero(link, sizeof link);
    master_log("run %s: annotator %s added", run, name);
    return 200;
}

int mann_close(master_t *m, const char *run, json_t **out) {
    mann_run_t *r = run_get(m, run, 0);
    if (!r || !r->opened_unix)
        return err_out(out, 409, "run %s is not at a human annotate stage", run);
    if (r->closed[0])
        return err_out(out, 409, "run %s: annotation closed already: %s", run, r->closed);
    snprintf(r->closed, sizeof r->closed, "closed by its operator (rlhf annotate close)");
    if (state_journal(m, r, 1) < 0) return err_out(out, 503, "the journal: %s", rl_errmsg());
    master_log("run %s: annotate: %s", run, r->closed);
    master_runs_tick(m);
    *out = json_pack("{s:s, s:s, s:i}", "run", run, "closed", r->closed, "records", r->store.n);
    return 200;
}

/* ---- the annotation API -------------------------------------------------------------------- */

/* The run and annotator holding token tok, or NULL. Every annotator's digest is compared (in
 * constant time each), so the time taken says nothing of which one matched. */
static mann_run_t *token_find(master_t *m, const char *tok, size_t tlen, int *ai) {
    if (!m->ann || !tok || tlen < SECRET_TOKEN_MIN) return NULL;
    unsigned char h[SECRET_HASH_LEN];
    secret_token_hash(tok, tlen, h);
    mann_run_t *found = NULL;
    for (int i = 0; i < m->ann->n; i++)
        for (int a = 0; a < m->ann->v[i]->n_an; a++)
            if (sodium_memcmp(h, m->ann->v[i]->an[a].hash, sizeof h) == 0)
                found = m->ann->v[i], *ai = a;
    return found;
}

static const char *stage_state(const mann_run_t *r) {
    return !r->loaded || !r->opened_unix ? "waiting" : r->closed[0] ? "closed" : "open";
}

static json_t *progress_json(const mann_run_t *r, int a) {
    if (!r->loaded)
        return json_pack("{s:i, s:i, s:i, s:i}", "done", 0, "ranked", 0, "skipped", 0, "assigned",
                         0);
    const apool_annot_t *pa = &r->pool.a[a];
    return json_pack("{s:i, s:i, s:i, s:i}", "done", pa->done + pa->skipped, "ranked", pa->done,
                     "skipped", pa->skipped, "assigned", apool_share(&r->pool, a) + pa->skipped);
}

static json_t *assignment_json(const mann_run_t *r, int a, int p) {
    const annot_prompt_t *pr = &r->comp.v[p];
    int shown[ANNOT_MAX_K];
    apool_shown(r->seed, r->pool.keys[p], a, pr->k, shown);
    json_t *cs = json_array(), *sh = json_array();
    for (int i = 0; i < pr->k; i++) {
        json_array_append_new(
            cs, json_pack("{s:i, s:s}", "index", shown[i], "text", pr->text[shown[i]]));
        json_array_append_new(sh, json_integer(shown[i]));
    }
    double left = (r->pool.a[a].lease_end_ms - wire_now_ms()) / 1e3;
    return json_pack("{s:s, s:s, s:o, s:o, s:f}", "prompt_id", pr->id, "prompt", pr->prompt,
                     "completions", cs, "shown", sh, "lease_s", left > 0 ? left : 0);
}

/* POST /submit and /skip: the body validated as an imported record would be, journaled, then
 * stored. */
static int api_submit(master_t *m, mann_run_t *r, int a, const char *body, size_t blen, int skip,
                      json_t **out) {
    if (!r->loaded || r->closed[0])
        return err_out(out, 409, "annotation is %s for run %s", stage_state(r), r->run);
    json_error_t e;
    json_t *o = json_loadb(body ? body : "", blen, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(o)) {
        json_decref(o);
        r->n_rejected++;
        return err_out(out, 400, "the body is not a JSON object: %s", o ? "" : e.text);
    }
    const char *claimed = json_string_value(json_object_get(o, "annotator"));
    if (claimed && strcmp(claimed, r->an[a].name)) {
        json_decref(o);
        r->n_rejected++;
        return err_out(out, 403, "this token is annotator %s's, not %s's", r->an[a].name, claimed);
    }
    json_object_set_new(o, "annotator", json_string(r->an[a].name));
    if (skip) { /* /skip {"prompt_id", "reason"}: a skip record whose note is the reason */
        json_t *why = json_object_get(o, "reason");
        if (why && !json_is_string(why)) {
            json_decref(o);
            r->n_rejected++;
            return err_out(out, 400, "skip: reason: expected a string");
        }
        if (why) json_object_set(o, "note", why);
        json_object_del(o, "reason");
        json_object_set_new(o, "skip", json_true());
        json_object_set_new(o, "ranking", json_array());
    }
    char now[32], where[160];
    annot_time_now(now, sizeof now);
    snprintf(where, sizeof where, "annotator %s's submission", r->an[a].name);
    annot_rec_t rec;
    int rc = annot_rec_from_json(&r->comp, o, where, now, task_guideline_version, &rec);
    json_decref(o);
    if (rc < 0) {
        r->n_rejected++;
        return err_out(out, 400, "%s", rl_errmsg());
    }
    if (annot_store_find(&r->store, rec.prompt, rec.annotator) >= 0) {
        int p = rec.prompt;
        annot_rec_free(&rec);
        r->n_rejected++;
        return err_out(out, 409, "%s: prompt %s: you have ranked or skipped it already", where,
                       r->comp.v[p].id);
    }
    json_t *canon = annot_rec_to_json(&r->comp, &rec);
    char *txt = canon ? json_dumps(canon, JSON_COMPACT) : NULL;
    json_decref(canon);
    annot_rec_free(&rec);
    if (!txt) return err_out(out, 503, "out of memory");
    Rlhf__JournalRecord jr = RLHF__JOURNAL_RECORD__INIT;
    Rlhf__JournalAnnotation ja = RLHF__JOURNAL_ANNOTATION__INIT;
    ja.run = r->run;
    ja.record_json = txt;
    jr.body_case = RLHF__JOURNAL_RECORD__BODY_ANNOTATION;
    jr.annotation = &ja;
    /* durable before it is acknowledged or counted */
    if (master_journal(m, &jr, 1) < 0) {
        free(txt);
        return err_out(out, 503, "the journal: %s", rl_errmsg());
    }
    double secs = -1;
    if (json_array_append_new(r->recs, json_string(txt)) < 0 ||
        rec_apply(r, txt, where, &secs) < 0) {
        free(txt);
        return err_out(out, 503, "%s", rl_errmsg());
    }
    free(txt);
    if (skip)
        r->n_skipped++;
    else
        r->n_accepted++;
    if (secs >= 0 && !skip) r->an[a].secs += secs, r->an[a].n_timed++;
    progress_log(r);
    master_runs_tick(m); /* the target may be met now */
    *out = json_pack("{s:b, s:o, s:s}", "ok", 1, "progress", progress_json(r, a), "state",
                     stage_state(r));
    return 200;
}

int mann_api(master_t *m, const char *tok, size_t tlen, const char *method, const char *path,
             const char *body, size_t blen, json_t **out) {
    int a = -1;
    mann_run_t *r = token_find(m, tok, tlen, &a);
    if (!r) {
        if (m->ann) m->ann->n_unknown_token++;
        return 401;
    }
    /* a restarted master loads the open stage at its first tick: not later than this request */
    if (!r->loaded && r->opened_unix && !r->written) master_runs_tick(m);
    int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (get && (!strcmp(path, "/me") || !path[0])) {
        *out = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:o}", "annotator", r->an[a].name, "run",
                         r->run, "state", stage_state(r), "guidelines",
                         r->guidelines ? r->guidelines : "", "guideline_version",
                         task_guideline_version, "overlap", r->overlap, "progress",
                         progress_json(r, a));
        return 200;
    }
    if (get && !strcmp(path, "/progress")) {
        *out = json_pack("{s:s, s:o}", "state", stage_state(r), "progress", progress_json(r, a));
        return 200;
    }
    if (get && !strcmp(path, "/next")) {
        int p = r->loaded && !r->closed[0]
                    ? apool_next(&r->pool, a, wire_now_ms(), r->lease_s * 1e3)
                    : APOOL_DONE;
        *out = json_pack("{s:s, s:o, s:o}", "state",
                         p == APOOL_DONE && !r->closed[0] && r->loaded ? "done" : stage_state(r),
                         "progress", progress_json(r, a), "assignment",
                         p >= 0 ? assignment_json(r, a, p) : json_null());
        return 200;
    }
    if (post && (!strcmp(path, "/submit") || !strcmp(path, "/skip")))
        return api_submit(m, r, a, body, blen, !strcmp(path, "/skip"), out);
    return err_out(out, get || post ? 404 : 405, "no %s %s in the annotation API", method, path);
}

/* ---- the admin view -------------------------------------------------------------------------- */

static json_t *num_or_null(double x) {
    return isfinite(x) ? json_real(x) : json_null();
}

/*
 * Pairwise agreement so far: per annotator, with every other annotator's ranking of the prompts
 * it ranked (an_agree, an_strict: n_an each, may be NULL), and over all pairs of rankings of a
 * prompt (agree, strict: may be NULL). The rankings are bucketed by prompt first, so the cost is
 * the records times the overlap: comparing every record with every other was quadratic, 0.7 s on
 * the master's loop for 22,000 records. Returns 0 or RL_ENOMEM.
 */
static int agreement(const mann_run_t *r, long *an_agree, long *an_strict, long *agree,
                     long *strict) {
    const annot_store_t *s = &r->store;
    int np = r->comp.n, n = s->n;
    /* start[p] .. start[p + 1]: the records of prompt p in idx (in store order); who: the
     * annotator of each record (-1: none of this run's, as an imported record's) */
    int *start = calloc((size_t)np + 1, sizeof *start),
        *fill = calloc((size_t)np + 1, sizeof *fill);
    int *idx = malloc((size_t)n * sizeof *idx + 1), *who = malloc((size_t)n * sizeof *who + 1);
    if (!start || !fill || !idx || !who) {
        free(start), free(fill), free(idx), free(who);
        return rl_fail(RL_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) start[s->v[i].prompt + 1]++, who[i] = an_find(r, s->v[i].annotator);
    for (int p = 0; p < np; p++) start[p + 1] += start[p];
    for (int i = 0; i < n; i++) idx[start[s->v[i].prompt] + fill[s->v[i].prompt]++] = i;
    free(fill);
    double ra[ANNOT_MAX_K], rb[ANNOT_MAX_K];
    long tied = 0;
    for (int p = 0; p < np; p++)
        for (int x = start[p]; x < start[p + 1]; x++) {
            const annot_rec_t *u = &s->v[idx[x]];
            if (u->skip) continue;
            rank_fractional(u->level, u->k, ra);
            for (int y = start[p]; y < start[p + 1]; y++) {
                const annot_rec_t *v = &s->v[idx[y]];
                if (y == x || v->skip) continue;
                rank_fractional(v->level, v->k, rb);
                int a = who[idx[x]];
                if (an_agree && a >= 0)
                    rank_pair_agreement(ra, rb, u->k, &an_agree[a], &an_strict[a], &tied);
                if (agree && y > x) rank_pair_agreement(ra, rb, u->k, agree, strict, &tied);
            }
        }
    free(start), free(idx), free(who);
    return 0;
}

/*
 * The consensus figures of the store as it is, or as it was at most 20 times their last cost
 * ago: a view in every refresh (the dashboard's, every 2 s) spends at most a twentieth of the
 * loop on them. NULL when they cannot be computed.
 */
static const annot_agg_t *agg_current(mann_run_t *r) {
    double now = wire_now_ms();
    if (r->agg_have && (r->agg_records == r->store.n || now - r->agg_at_ms < 20 * r->agg_cost))
        return &r->agg;
    annot_agg_t g;
    if (annot_aggregate(&r->store, NAN, &g) < 0) {
        annot_agg_free(&g);
        return r->agg_have ? &r->agg : NULL;
    }
    if (r->agg_have) annot_agg_free(&r->agg);
    r->agg = g, r->agg_have = 1, r->agg_records = r->store.n;
    r->agg_at_ms = now, r->agg_cost = wire_now_ms() - now;
    return &r->agg;
}

json_t *mann_admin_json(master_t *m, const char *run) {
    mann_run_t *r = run_get(m, run, 0);
    if (!r) return NULL;
    json_t *as = json_array();
    const annot_agg_t *g = r->loaded ? agg_current(r) : NULL;
    long *an_ag = calloc((size_t)(r->n_an ? r->n_an : 1), sizeof *an_ag),
         *an_st = calloc((size_t)(r->n_an ? r->n_an : 1), sizeof *an_st);
    int have_ag = an_ag && an_st && r->loaded && agreement(r, an_ag, an_st, NULL, NULL) == 0;
    for (int a = 0; a < r->n_an; a++) {
        json_t *o = json_pack("{s:s}", "annotator", r->an[a].name);
        if (r->loaded) {
            json_object_update_new(o, progress_json(r, a));
            if (have_ag) {
                json_object_set_new(o, "agreement_with_others",
                                    num_or_null(annot_rate(an_ag[a], an_st[a])));
                json_object_set_new(o, "pairs_with_others", json_integer(an_st[a]));
            }
            for (int k = 0; g && k < g->n_annot; k++)
                if (!strcmp(g->a[k].id, r->an[a].name)) {
                    json_object_set_new(
                        o, "agreement_with_consensus",
                        num_or_null(annot_rate(g->a[k].loo_agree, g->a[k].loo_strict)));
                    json_object_set_new(o, "loo_prompts", json_integer(g->a[k].loo_prompts));
                }
            json_object_set_new(o, "seconds_per_ranking",
                                r->an[a].n_timed ? json_real(r->an[a].secs / r->an[a].n_timed)
                                                 : json_null());
            const apool_annot_t *pa = &r->pool.a[a];
            json_object_set_new(o, "working_on",
                                pa->lease >= 0 ? json_string(r->comp.v[pa->lease].id)
                                               : json_null());
        }
        json_array_append_new(as, o);
    }
    free(an_ag), free(an_st);
    int complete = 0;
    for (int i = 0; r->loaded && i < r->pool.n_prompts; i++)
        complete += r->pool.ranked[i] >= r->overlap;
    json_t *o = json_pack(
        "{s:s, s:s, s:s, s:o, s:i, s:i, s:i, s:i, s:I, s:I}", "run", r->run, "state",
        stage_state(r), "closed", r->closed, "annotators", as, "prompts", r->loaded ? r->comp.n : 0,
        "prompts_complete", complete, "overlap", r->overlap, "records", r->loaded ? r->store.n : 0,
        "leases", (json_int_t)r->pool.n_leases, "leases_expired", (json_int_t)r->pool.n_expired);
    if (g) {
        json_object_set_new(o, "pairwise_agreement", num_or_null(annot_rate(g->agree, g->strict)));
        json_object_set_new(o, "mean_kendall_w", num_or_null(g->mean_w));
        json_object_set_new(o, "krippendorff_alpha_ordinal", num_or_null(g->alpha));
        json_object_set_new(o, "consensus_records", json_integer(r->agg_records));
        json_object_set_new(o, "consensus_age_s", json_real((wire_now_ms() - r->agg_at_ms) / 1e3));
    }
    if (r->opened_unix && r->deadline_s > 0)
        json_object_set_new(o, "deadline_unix", json_real(r->opened_unix + r->deadline_s));
    return o;
}

/* ---- /metrics -------------------------------------------------------------------------------- */

char *mann_metrics_text(master_t *m) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    uint64_t unknown = m->ann ? m->ann->n_unknown_token : 0;
    fprintf(f,
            "# HELP rlhf_annotation_unauthorized_total Annotation API requests with no token "
            "or one nobody holds.\n# TYPE rlhf_annotation_unauthorized_total counter\n"
            "rlhf_annotation_unauthorized_total %" PRIu64 "\n",
            unknown);
    static const char *heads[][3] = {
        {"rlhf_annotation_rankings_total", "counter", "Rankings accepted, by run and annotator."},
        {"rlhf_annotation_skips_total", "counter", "Skips accepted, by run and annotator."},
        {"rlhf_annotation_seconds_per_ranking", "gauge",
         "Mean seconds from an assignment's lease to its accepted ranking."},
        {"rlhf_annotation_rejected_total", "counter",
         "Submissions refused (invalid, a second record, the wrong annotator), by run."},
        {"rlhf_annotation_agreement", "gauge",
         "Pairwise agreement so far between the run's annotators (NaN: no pair yet)."},
        {"rlhf_annotation_prompts_complete", "gauge", "Prompts with all their rankings."},
    };
    for (size_t h = 0; h < sizeof heads / sizeof heads[0]; h++) {
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", heads[h][0], heads[h][2], heads[h][0],
                heads[h][1]);
        for (int i = 0; m->ann && i < m->ann->n; i++) {
            const mann_run_t *r = m->ann->v[i];
            if (!r->loaded) continue;
            if (h < 3) {
                for (int a = 0; a < r->n_an; a++) {
                    const mann_annotator_t *an = &r->an[a];
                    fprintf(f, "%s{run=\"%s\",annotator=\"%s\"} ", heads[h][0], r->run, an->name);
                    if (h == 0)
                        fprintf(f, "%d\n", r->pool.a[a].done);
                    else if (h == 1)
                        fprintf(f, "%d\n", r->pool.a[a].skipped);
                    else
                        fprintf(f, an->n_timed ? "%.6g\n" : "NaN\n",
                                an->n_timed ? an->secs / an->n_timed : 0);
                }
            } else if (h == 3) {
                fprintf(f, "%s{run=\"%s\"} %" PRIu64 "\n", heads[h][0], r->run, r->n_rejected);
            } else if (h == 4) {
                long ag = 0, st = 0;
                double rate = agreement(r, NULL, NULL, &ag, &st) == 0 ? annot_rate(ag, st) : NAN;
                fprintf(f, isfinite(rate) ? "%s{run=\"%s\"} %.6g\n" : "%s{run=\"%s\"} NaN\n",
                        heads[h][0], r->run, rate);
            } else {
                int c = 0;
                for (int p = 0; p < r->pool.n_prompts; p++) c += r->pool.ranked[p] >= r->overlap;
                fprintf(f, "%s{run=\"%s\"} %d\n", heads[h][0], r->run, c);
            }
        }
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* ---- journal ------------------------------------------------------------------------------- */

int mann_replay(master_t *m, const Rlhf__JournalRecord *rec) {
    switch (rec->body_case) {
    case RLHF__JOURNAL_RECORD__BODY_ANNOTATOR: {
        const Rlhf__JournalAnnotator *ja = rec->annotator;
        mann_run_t *r = run_get(m, ja->run ?: "", 1);
        if (!r) return rl_fail(RL_ENOMEM, "out of memory");
        if (ja->token_hash.len != SECRET_HASH_LEN)
            return rl_fail(RL_EFORMAT, "journal: annotator %s: a token digest of %zu bytes",
                           ja->name ?: "", ja->token_hash.len);
        return an_put(r, ja->name ?: "", ja->token_hash.data) < 0 ? RL_ENOMEM : 1;
    }
    case RLHF__JOURNAL_RECORD__BODY_ANNOTATION: {
        mann_run_t *r = run_get(m, rec->annotation->run ?: "", 1);
        if (!r || json_array_append_new(r->recs, json_string(rec->annotation->record_json ?: "")))
            return rl_fail(RL_ENOMEM, "out of memory");
        return 1;
    }
    case RLHF__JOURNAL_RECORD__BODY_ANNOTATE: {
        mann_run_t *r = run_get(m, rec->annotate->run ?: "", 1);
        if (!r) return rl_fail(RL_ENOMEM, "out of memory");
        r->opened_unix = rec->annotate->opened_unix;
        snprintf(r->closed, sizeof r->closed, "%s", rec->annotate->closed ?: "");
        return 1;
    }
    default:
        return 0;
    }
}

int mann_snapshot(master_t *m) {
    for (int i = 0; m->ann && i < m->ann->n; i++) {
        mann_run_t *r = m->ann->v[i];
        int rc;
        for (int a = 0; a < r->n_an; a++) {
            Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
            Rlhf__JournalAnnotator ja = RLHF__JOURNAL_ANNOTATOR__INIT;
            ja.run = r->run;
            ja.name = r->an[a].name;
            ja.token_hash.data = r->an[a].hash;
            ja.token_hash.len = SECRET_HASH_LEN;
            rec.body_case = RLHF__JOURNAL_RECORD__BODY_ANNOTATOR;
            rec.annotator = &ja;
            if ((rc = master_journal(m, &rec, 0)) < 0) return rc;
        }
        for (size_t k = 0; k < json_array_size(r->recs); k++) {
            Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
            Rlhf__JournalAnnotation ja = RLHF__JOURNAL_ANNOTATION__INIT;
            ja.run = r->run;
            ja.record_json = (char *)json_string_value(json_array_get(r->recs, k));
            rec.body_case = RLHF__JOURNAL_RECORD__BODY_ANNOTATION;
            rec.annotation = &ja;
            if ((rc = master_journal(m, &rec, 0)) < 0) return rc;
        }
        if (r->opened_unix && (rc = state_journal(m, r, 0)) < 0) return rc;
    }
    return 0;
}
