/*
 * annot.c - the annotation store, its JSONL / CSV readers, assignment, simulated annotators and
 * aggregation (see annot.h for the formats).
 */
#include "align/annot.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/jsonl.h"
#include "align/rank.h"
#include "base/rng.h"

/* Domain tags that keep the simulator's random streams apart. */
enum { TAG_NOISE = 1, TAG_SHOWN = 2, TAG_ASSIGN = 3, TAG_PANEL = 4 };

static uint64_t tagged(uint64_t key, int tag) {
    return key ^ ((uint64_t)tag * 0x9E3779B97F4A7C15ull);
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* ---- completions ------------------------------------------------------------------------- */

static void prompt_free(annot_prompt_t *p) {
    for (int i = 0; i < p->k; i++) {
        if (p->text) free(p->text[i]);
        if (p->cid) free(p->cid[i]);
    }
    free(p->text);
    free(p->cid);
    free(p->id);
    free(p->prompt);
    memset(p, 0, sizeof *p);
}

void annot_comp_free(annot_comp_t *c) {
    for (int i = 0; i < c->n; i++) prompt_free(&c->v[i]);
    free(c->v);
    free(c->by_id);
    memset(c, 0, sizeof *c);
}

typedef struct {
    annot_comp_t *c;
    int cap;
} comp_ctx_t;

static int comp_line(void *vctx, json_t *obj, const char *where) {
    comp_ctx_t *x = vctx;
    annot_comp_t *c = x->c;
    const char *id, *prompt;
    int rc;
    if ((rc = jsonl_get_str(obj, "prompt_id", where, &id)) < 0) return rc;
    if ((rc = jsonl_get_str(obj, "prompt", where, &prompt)) < 0) return rc;
    json_t *arr = json_object_get(obj, "completions");
    if (!json_is_array(arr))
        return rl_fail(RL_EFORMAT, "%s: completions: %s", where,
                       arr ? "an array is expected" : "missing");
    size_t k = json_array_size(arr);
    if (k < 1 || k > ANNOT_MAX_K)
        return rl_fail(RL_EFORMAT, "%s: completions: %zu entries, 1..%d expected", where, k,
                       ANNOT_MAX_K);
    if (c->n == x->cap) {
        int cap = x->cap ? 2 * x->cap : 64;
        annot_prompt_t *v = realloc(c->v, (size_t)cap * sizeof *v);
        if (!v) return rl_fail(RL_ENOMEM, "%s: out of memory", where);
        c->v = v;
        x->cap = cap;
    }
    annot_prompt_t *p = &c->v[c->n];
    memset(p, 0, sizeof *p);
    p->id = dup_str(id);
    p->prompt = dup_str(prompt);
    p->text = calloc(k, sizeof *p->text);
    p->cid = calloc(k, sizeof *p->cid);
    if (!p->id || !p->prompt || !p->text || !p->cid) {
        prompt_free(p);
        return rl_fail(RL_ENOMEM, "%s: out of memory", where);
    }
    p->k = (int)k;
    for (size_t i = 0; i < k; i++) {
        json_t *e = json_array_get(arr, i);
        char w2[4300];
        snprintf(w2, sizeof w2, "%s: completions[%zu]", where, i);
        const char *t, *cid;
        if (!json_is_object(e)) {
            prompt_free(p);
            return rl_fail(RL_EFORMAT, "%s: an object is expected", w2);
        }
        if ((rc = jsonl_get_str(e, "text", w2, &t)) < 0 ||
            (rc = jsonl_get_str(e, "id", w2, &cid)) < 0) {
            prompt_free(p);
            return rc;
        }
        p->text[i] = dup_str(t);
        p->cid[i] = dup_str(cid);
        if (!p->text[i] || !p->cid[i]) {
            prompt_free(p);
            return rl_fail(RL_ENOMEM, "%s: out of memory", where);
        }
    }
    c->n++;
    return 0;
}

/* A string key with an index, to sort indices by name without global state. */
typedef struct {
    const char *key;
    int idx;
} keyed_t;

static int cmp_keyed(const void *a, const void *b) {
    const keyed_t *x = a, *y = b;
    int r = strcmp(x->key, y->key);
    return r ? r : (x->idx > y->idx) - (x->idx < y->idx);
}

/* Sorts idx[0..n) by name(idx[i]) (stable for equal names). Returns 0 or RL_ENOMEM. */
static int sort_by_key(int *idx, int n, const char *(*name)(const void *, int), const void *ctx) {
    if (n <= 1) return 0;
    keyed_t *t = malloc((size_t)n * sizeof *t);
    if (!t) return RL_ENOMEM;
    for (int i = 0; i < n; i++) t[i] = (keyed_t){name(ctx, idx[i]), idx[i]};
    qsort(t, (size_t)n, sizeof *t, cmp_keyed);
    for (int i = 0; i < n; i++) idx[i] = t[i].idx;
    free(t);
    return 0;
}

static const char *prompt_id_of(const void *c, int i) {
    return ((const annot_comp_t *)c)->v[i].id;
}

int annot_comp_load(annot_comp_t *c, const char *path) {
    memset(c, 0, sizeof *c);
    comp_ctx_t x = {c, 0};
    long n = jsonl_read(path, comp_line, &x);
    if (n < 0) {
        annot_comp_free(c);
        return (int)n;
    }
    c->by_id = malloc((size_t)(c->n ? c->n : 1) * sizeof *c->by_id);
    if (!c->by_id) {
        annot_comp_free(c);
        return rl_fail(RL_ENOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < c->n; i++) c->by_id[i] = i;
    if (sort_by_key(c->by_id, c->n, prompt_id_of, c) < 0) {
        annot_comp_free(c);
        return rl_fail(RL_ENOMEM, "%s: out of memory", path);
    }
    for (int i = 1; i < c->n; i++) {
        if (strcmp(c->v[c->by_id[i]].id, c->v[c->by_id[i - 1]].id) == 0) {
            int a = c->by_id[i - 1] < c->by_id[i] ? c->by_id[i - 1] : c->by_id[i];
            int b = c->by_id[i - 1] < c->by_id[i] ? c->by_id[i] : c->by_id[i - 1];
            int rc = rl_fail(RL_EFORMAT, "%s: prompt_id '%s' appears twice (prompts %d and %d)",
                             path, c->v[a].id, a + 1, b + 1);
            annot_comp_free(c);
            return rc;
        }
    }
    return 0;
}

int annot_comp_find(const annot_comp_t *c, const char *prompt_id) {
    int lo = 0, hi = c->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int r = strcmp(prompt_id, c->v[c->by_id[mid]].id);
        if (r == 0) return c->by_id[mid];
        if (r < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return -1;
}

/* ---- rankings ---------------------------------------------------------------------------- */

/* Places completion `idx` in tie group `lvl`; errors for an index out of range or repeated. */
static int place(int *level, int k, long long idx, int lvl, const char *where) {
    if (idx < 0 || idx >= k)
        return rl_fail(RL_EFORMAT, "%s: ranking: completion %lld is out of range (%d completions)",
                       where, idx, k);
    if (level[idx] >= 0)
        return rl_fail(RL_EFORMAT, "%s: ranking: completion %lld appears twice", where, idx);
    level[idx] = lvl;
    return 0;
}

static int check_complete(const int *level, int k, const char *where) {
    for (int i = 0; i < k; i++)
        if (level[i] < 0)
            return rl_fail(RL_EFORMAT, "%s: ranking: completion %d is not ranked", where, i);
    return 0;
}

int annot_ranking_parse(const char *text, int k, const char *where, int *level) {
    for (int i = 0; i < k; i++) level[i] = -1;
    const char *s = text;
    int lvl = 0;
    for (;;) {
        /* one group: idx ('=' idx)* */
        for (;;) {
            while (*s == ' ' || *s == '\t') s++;
            if (!isdigit((unsigned char)*s))
                return rl_fail(RL_EFORMAT, "%s: ranking: a completion index is expected at '%s'",
                               where, s);
            long long v = 0;
            while (isdigit((unsigned char)*s) && v < 1000000000) v = v * 10 + (*s++ - '0');
            int rc = place(level, k, v, lvl, where);
            if (rc < 0) return rc;
            while (*s == ' ' || *s == '\t') s++;
            if (*s != '=') break;
            s++;
        }
        if (*s == '\0') break;
        if (*s != '>')
            return rl_fail(RL_EFORMAT, "%s: ranking: '>' or '=' is expected at '%s'", where, s);
        s++;
        lvl++;
    }
    return check_complete(level, k, where);
}

int annot_ranking_from_json(json_t *arr, int k, const char *where, int *level) {
    if (!json_is_array(arr))
        return rl_fail(RL_EFORMAT, "%s: ranking: an array of tie groups is expected", where);
    for (int i = 0; i < k; i++) level[i] = -1;
    size_t ng = json_array_size(arr);
    for (size_t g = 0; g < ng; g++) {
        json_t *grp = json_array_get(arr, g);
        int rc;
        if (json_is_integer(grp)) {
            if ((rc = place(level, k, json_integer_value(grp), (int)g, where)) < 0) return rc;
            continue;
        }
        if (!json_is_array(grp) || json_array_size(grp) == 0)
            return rl_fail(RL_EFORMAT,
                           "%s: ranking: group %zu: a non-empty array of completion indices is "
                           "expected",
                           where, g + 1);
        for (size_t j = 0; j < json_array_size(grp); j++) {
            json_t *e = json_array_get(grp, j);
            if (!json_is_integer(e))
                return rl_fail(RL_EFORMAT, "%s: ranking: group %zu: an integer index is expected",
                               where, g + 1);
            if ((rc = place(level, k, json_integer_value(e), (int)g, where)) < 0) return rc;
        }
    }
    return check_complete(level, k, where);
}

json_t *annot_ranking_to_json(const int *level, int k) {
    json_t *out = json_array();
    if (!out) return NULL;
    int maxl = -1;
    for (int i = 0; i < k; i++)
        if (level[i] > maxl) maxl = level[i];
    for (int l = 0; l <= maxl; l++) {
        json_t *grp = NULL;
        for (int i = 0; i < k; i++) {
            if (level[i] != l) continue;
            if (!grp && !(grp = json_array())) goto fail;
            if (json_array_append_new(grp, json_integer(i)) < 0) {
                json_decref(grp);
                goto fail;
            }
        }
        if (grp && json_array_append_new(out, grp) < 0) goto fail;
    }
    return out;
fail:
    json_decref(out);
    return NULL;
}

/* ---- time -------------------------------------------------------------------------------- */

void annot_time_now(char *buf, int n) {
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, (size_t)n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int annot_time_valid(const char *s) {
    static const char pat[] = "dddd-dd-ddTdd:dd:dd";
    for (int i = 0; pat[i]; i++) {
        if (pat[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != pat[i]) return 0;
    }
    s += sizeof pat - 1;
    if (*s == '.') {
        s++;
        if (!isdigit((unsigned char)*s)) return 0;
        while (isdigit((unsigned char)*s)) s++;
    }
    return s[0] == 'Z' && s[1] == '\0';
}

/* ---- records ----------------------------------------------------------------------------- */

void annot_rec_free(annot_rec_t *r) {
    free(r->annotator);
    free(r->level);
    free(r->shown);
    free(r->note);
    free(r->time);
    free(r->guideline);
    free(r->src);
    memset(r, 0, sizeof *r);
    r->confidence = NAN;
}

static const char *const rec_fields[] = {"prompt_id", "annotator",  "ranking",
                                         "skip",      "confidence", "note",
                                         "time",      "guideline",  "shown"};

int annot_rec_from_json(const annot_comp_t *c, json_t *obj, const char *where, const char *now,
                        const char *guideline, annot_rec_t *r) {
    memset(r, 0, sizeof *r);
    r->confidence = NAN;
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val) {
        size_t i = 0, nf = sizeof rec_fields / sizeof *rec_fields;
        while (i < nf && strcmp(key, rec_fields[i]) != 0) i++;
        if (i == nf) return rl_fail(RL_EFORMAT, "%s: unknown field '%s'", where, key);
    }
    const char *pid, *ann, *s;
    int rc;
    if ((rc = jsonl_get_str(obj, "prompt_id", where, &pid)) < 0) return rc;
    int p = annot_comp_find(c, pid);
    if (p < 0)
        return rl_fail(RL_EFORMAT, "%s: prompt_id: '%s' is not in the completions", where, pid);
    if ((rc = jsonl_get_str(obj, "annotator", where, &ann)) < 0) return rc;
    if (!ann[0]) return rl_fail(RL_EFORMAT, "%s: annotator: empty", where);
    r->prompt = p;
    r->k = c->v[p].k;
    json_t *skip = json_object_get(obj, "skip");
    if (skip && !json_is_boolean(skip)) {
        rc = rl_fail(RL_EFORMAT, "%s: skip: true or false is expected", where);
        goto fail;
    }
    r->skip = json_is_true(skip);
    if (!(r->annotator = dup_str(ann)) || !(r->src = dup_str(where))) goto nomem;
    json_t *rk = json_object_get(obj, "ranking");
    if (r->skip) {
        if (rk && !(json_is_array(rk) && json_array_size(rk) == 0)) {
            rc = rl_fail(RL_EFORMAT, "%s: ranking: must be empty when skip is true", where);
            goto fail;
        }
    } else {
        if (!rk) {
            rc = rl_fail(RL_EFORMAT, "%s: ranking: missing", where);
            goto fail;
        }
        if (!(r->level = malloc((size_t)r->k * sizeof *r->level))) goto nomem;
        if ((rc = annot_ranking_from_json(rk, r->k, where, r->level)) < 0) goto fail;
    }
    json_t *sh = json_object_get(obj, "shown");
    if (sh) {
        if (!json_is_array(sh) || json_array_size(sh) != (size_t)r->k) {
            rc = rl_fail(RL_EFORMAT,
                         "%s: shown: a permutation of the %d completion indices is "
                         "expected",
                         where, r->k);
            goto fail;
        }
        if (!(r->shown = malloc((size_t)r->k * sizeof *r->shown))) goto nomem;
        char seen[ANNOT_MAX_K] = {0};
        for (int i = 0; i < r->k; i++) {
            json_t *e = json_array_get(sh, (size_t)i);
            long long v = json_is_integer(e) ? json_integer_value(e) : -1;
            if (v < 0 || v >= r->k || seen[v]) {
                rc = rl_fail(RL_EFORMAT, "%s: shown: entry %d is not a new index in 0..%d", where,
                             i + 1, r->k - 1);
                goto fail;
            }
            seen[v] = 1;
            r->shown[i] = (int)v;
        }
    }
    json_t *cf = json_object_get(obj, "confidence");
    if (cf) {
        double v = json_is_number(cf) ? json_number_value(cf) : -1;
        if (!(v >= 0 && v <= 1)) {
            rc = rl_fail(RL_EFORMAT, "%s: confidence: a number in [0, 1] is expected", where);
            goto fail;
        }
        r->confidence = v;
    }
    if (json_object_get(obj, "note")) {
        if ((rc = jsonl_get_str(obj, "note", where, &s)) < 0) goto fail;
        if (!(r->note = dup_str(s))) goto nomem;
    }
    if (json_object_get(obj, "time")) {
        if ((rc = jsonl_get_str(obj, "time", where, &s)) < 0) goto fail;
        if (!annot_time_valid(s)) {
            rc = rl_fail(RL_EFORMAT, "%s: time: '%s' is not ISO-8601 UTC (YYYY-MM-DDTHH:MM:SSZ)",
                         where, s);
            goto fail;
        }
    } else {
        s = now;
    }
    if (!(r->time = dup_str(s))) goto nomem;
    if (json_object_get(obj, "guideline")) {
        if ((rc = jsonl_get_str(obj, "guideline", where, &s)) < 0) goto fail;
    } else {
        s = guideline;
    }
    if (!(r->guideline = dup_str(s))) goto nomem;
    return 0;
nomem:
    rc = rl_fail(RL_ENOMEM, "%s: out of memory", where);
fail:
    annot_rec_free(r);
    return rc;
}

json_t *annot_rec_to_json(const annot_comp_t *c, const annot_rec_t *r) {
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    bad |= json_object_set_new(o, "prompt_id", json_string(c->v[r->prompt].id));
    bad |= json_object_set_new(o, "annotator", json_string(r->annotator));
    bad |= json_object_set_new(o, "ranking",
                               r->skip ? json_array() : annot_ranking_to_json(r->level, r->k));
    bad |= json_object_set_new(o, "skip", json_boolean(r->skip));
    if (!isnan(r->confidence))
        bad |= json_object_set_new(o, "confidence", json_real(r->confidence));
    if (r->note) bad |= json_object_set_new(o, "note", json_string(r->note));
    bad |= json_object_set_new(o, "time", json_string(r->time));
    bad |= json_object_set_new(o, "guideline", json_string(r->guideline));
    if (r->shown) {
        json_t *a = json_array();
        for (int i = 0; a && i < r->k; i++)
            bad |= json_array_append_new(a, json_integer(r->shown[i]));
        bad |= json_object_set_new(o, "shown", a);
    }
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* ---- the store --------------------------------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const char *s) {
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

uint64_t annot_prompt_key(const char *prompt_id) {
    return fnv1a(0xcbf29ce484222325ull, prompt_id);
}

static uint64_t rec_hash(int prompt, const char *annotator) {
    return fnv1a(0xcbf29ce484222325ull ^ ((uint64_t)prompt * 0x9E3779B97F4A7C15ull), annotator);
}

void annot_store_init(annot_store_t *s, const annot_comp_t *c) {
    memset(s, 0, sizeof *s);
    s->comp = c;
}

void annot_store_free(annot_store_t *s) {
    for (int i = 0; i < s->n; i++) annot_rec_free(&s->v[i]);
    free(s->v);
    free(s->slot);
    memset(s, 0, sizeof *s);
}

int annot_store_find(const annot_store_t *s, int prompt, const char *annotator) {
    if (!s->nslot) return -1;
    size_t mask = (size_t)s->nslot - 1;
    for (size_t h = rec_hash(prompt, annotator) & mask;; h = (h + 1) & mask) {
        int i = s->slot[h];
        if (i < 0) return -1;
        if (s->v[i].prompt == prompt && strcmp(s->v[i].annotator, annotator) == 0) return i;
    }
}

static void slot_insert(annot_store_t *s, int i) {
    size_t mask = (size_t)s->nslot - 1;
    size_t h = rec_hash(s->v[i].prompt, s->v[i].annotator) & mask;
    while (s->slot[h] >= 0) h = (h + 1) & mask;
    s->slot[h] = i;
}

int annot_store_add(annot_store_t *s, annot_rec_t *r) {
    int rc;
    int dup = annot_store_find(s, r->prompt, r->annotator);
    if (dup >= 0) {
        rc = rl_fail(RL_EFORMAT, "%s: prompt '%s' already has a record by annotator '%s' (%s)",
                     r->src ? r->src : "record", s->comp->v[r->prompt].id, r->annotator,
                     s->v[dup].src ? s->v[dup].src : "earlier");
        annot_rec_free(r);
        return rc;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        annot_rec_t *v = realloc(s->v, (size_t)cap * sizeof *v);
        if (!v) goto nomem;
        s->v = v;
        s->cap = cap;
    }
    if (2 * (s->n + 1) > s->nslot) {
        int nslot = s->nslot ? 2 * s->nslot : 128;
        while (2 * (s->n + 1) > nslot) nslot *= 2;
        int *slot = malloc((size_t)nslot * sizeof *slot);
        if (!slot) goto nomem;
        free(s->slot);
        s->slot = slot;
        s->nslot = nslot;
        for (int i = 0; i < nslot; i++) slot[i] = -1;
        for (int i = 0; i < s->n; i++) slot_insert(s, i);
    }
    s->v[s->n] = *r;
    slot_insert(s, s->n);
    s->n++;
    memset(r, 0, sizeof *r);
    r->confidence = NAN;
    return 0;
nomem:
    annot_rec_free(r);
    return rl_fail(RL_ENOMEM, "annotation store: out of memory");
}

typedef struct {
    annot_store_t *s;
    const char *now, *guideline;
} read_ctx_t;

static int store_add_json(void *vctx, json_t *obj, const char *where) {
    read_ctx_t *x = vctx;
    annot_rec_t r;
    int rc = annot_rec_from_json(x->s->comp, obj, where, x->now, x->guideline, &r);
    if (rc < 0) return rc;
    return annot_store_add(x->s, &r);
}

int annot_store_read_jsonl(annot_store_t *s, const char *path, const char *now,
                           const char *guideline) {
    read_ctx_t x = {s, now, guideline};
    long n = jsonl_read(path, store_add_json, &x);
    return n < 0 ? (int)n : 0;
}

/* ---- CSV --------------------------------------------------------------------------------- */

/* One CSV row: cells as NUL-terminated strings in a scratch buffer. */
typedef struct {
    char **cell;
    int n, cap;
    char *buf;
    size_t len, bcap;
} csv_row_t;

static int row_putc(csv_row_t *row, char ch) {
    if (row->len + 1 >= row->bcap) {
        size_t cap = row->bcap ? 2 * row->bcap : 256;
        char *b = realloc(row->buf, cap);
        if (!b) return RL_ENOMEM;
        row->buf = b;
        row->bcap = cap;
    }
    row->buf[row->len++] = ch;
    return 0;
}

/* Reads the row starting at *pos; *line is advanced by the newlines consumed. Cells are stored
 * as offsets first (the buffer may move) and turned into pointers at the end. */
static int csv_row(const char *d, size_t len, size_t *pos, int *line, const char *where,
                   csv_row_t *row) {
    size_t p = *pos;
    size_t offs[64];
    int n = 0;
    row->len = 0;
    for (;;) {
        if (n == 64) return rl_fail(RL_EFORMAT, "%s: more than 64 columns", where);
        offs[n++] = row->len;
        if (p < len && d[p] == '"') {
            p++;
            for (;;) {
                if (p >= len) return rl_fail(RL_EFORMAT, "%s: unterminated quoted cell", where);
                if (d[p] == '"') {
                    if (p + 1 < len && d[p + 1] == '"') {
                        if (row_putc(row, '"')) return rl_fail(RL_ENOMEM, "out of memory");
                        p += 2;
                        continue;
                    }
                    p++;
                    break;
                }
                if (d[p] == '\n') (*line)++;
                if (row_putc(row, d[p++])) return rl_fail(RL_ENOMEM, "out of memory");
            }
            if (p < len && d[p] != ',' && d[p] != '\n' && d[p] != '\r')
                return rl_fail(RL_EFORMAT, "%s: text after a closing quote", where);
        } else {
            while (p < len && d[p] != ',' && d[p] != '\n' && d[p] != '\r') {
                if (d[p] == '"')
                    return rl_fail(RL_EFORMAT, "%s: a quote inside an unquoted cell", where);
                if (row_putc(row, d[p++])) return rl_fail(RL_ENOMEM, "out of memory");
            }
        }
        if (row_putc(row, '\0')) return rl_fail(RL_ENOMEM, "out of memory");
        if (p < len && d[p] == ',') {
            p++;
            continue;
        }
        if (p < len && d[p] == '\r') p++;
        if (p < len && d[p] == '\n') {
            p++;
            (*line)++;
        } else if (p < len) {
            return rl_fail(RL_EFORMAT, "%s: a stray carriage return", where);
        }
        break;
    }
    if (n > row->cap) {
        char **c = realloc(row->cell, (size_t)n * sizeof *c);
        if (!c) return rl_fail(RL_ENOMEM, "out of memory");
        row->cell = c;
        row->cap = n;
    }
    for (int i = 0; i < n; i++) row->cell[i] = row->buf + offs[i];
    row->n = n;
    *pos = p;
    return 0;
}

static int blank_row(const csv_row_t *row) {
    return row->n == 1 && row->cell[0][0] == '\0';
}

/* Turns one CSV row into the JSON record form so that one validator serves both formats. */
static int csv_to_json(const annot_comp_t *c, char **names, const csv_row_t *row, const char *where,
                       json_t **out) {
    json_t *o = json_object();
    if (!o) return rl_fail(RL_ENOMEM, "out of memory");
    int rc = 0, skip = 0;
    const char *ranking = NULL;
    for (int i = 0; i < row->n; i++) {
        const char *v = row->cell[i], *name = names[i];
        if (!v[0]) continue;
        json_t *j = NULL;
        if (!strcmp(name, "skip")) {
            if (!strcmp(v, "true") || !strcmp(v, "1"))
                skip = 1;
            else if (strcmp(v, "false") && strcmp(v, "0")) {
                rc = rl_fail(RL_EFORMAT, "%s: skip: '%s' is not true/false/1/0", where, v);
                goto fail;
            }
            j = json_boolean(skip);
        } else if (!strcmp(name, "confidence")) {
            char *end;
            double x = strtod(v, &end);
            if (*end || end == v) {
                rc = rl_fail(RL_EFORMAT, "%s: confidence: '%s' is not a number", where, v);
                goto fail;
            }
            j = json_real(x);
        } else if (!strcmp(name, "shown")) {
            j = json_array();
            const char *s = v;
            while (j && *s) {
                char *end;
                while (*s == ' ') s++;
                if (!*s) break;
                long x = strtol(s, &end, 10);
                if (end == s) {
                    json_decref(j);
                    rc = rl_fail(RL_EFORMAT, "%s: shown: '%s' is not a list of indices", where, v);
                    goto fail;
                }
                json_array_append_new(j, json_integer(x));
                s = end;
            }
        } else if (!strcmp(name, "ranking")) {
            ranking = v;
            continue;
        } else {
            j = json_string(v);
        }
        if (!j || json_object_set_new(o, name, j) < 0) {
            rc = rl_fail(RL_ENOMEM, "out of memory");
            goto fail;
        }
    }
    if (ranking && !skip) {
        /* the prompt decides k; an unknown prompt is reported by the record validator */
        json_t *pid = json_object_get(o, "prompt_id");
        int p = json_is_string(pid) ? annot_comp_find(c, json_string_value(pid)) : -1;
        if (p >= 0) {
            int level[ANNOT_MAX_K];
            if ((rc = annot_ranking_parse(ranking, c->v[p].k, where, level)) < 0) goto fail;
            json_t *j = annot_ranking_to_json(level, c->v[p].k);
            if (!j || json_object_set_new(o, "ranking", j) < 0) {
                rc = rl_fail(RL_ENOMEM, "out of memory");
                goto fail;
            }
        }
    } else if (ranking && skip) {
        rc = rl_fail(RL_EFORMAT, "%s: ranking: must be empty when skip is true", where);
        goto fail;
    }
    *out = o;
    return 0;
fail:
    json_decref(o);
    return rc;
}

int annot_store_read_csv(annot_store_t *s, const char *path, const char *now,
                         const char *guideline) {
    char *d;
    size_t len;
    int rc = fs_read_all(path, &d, &len);
    if (rc < 0) return rc;
    csv_row_t row = {0};
    char **names = NULL;
    int ncol = 0, line = 1;
    size_t pos = 0;
    char where[4200];
    if (len >= 3 && !memcmp(d, "\xef\xbb\xbf", 3)) pos = 3; /* a byte-order mark */
    /* header */
    while (pos < len) {
        snprintf(where, sizeof where, "%s:%d", path, line);
        if ((rc = csv_row(d, len, &pos, &line, where, &row)) < 0) goto out;
        if (!blank_row(&row)) break;
    }
    if (row.n == 0 || blank_row(&row)) {
        rc = rl_fail(RL_EFORMAT, "%s: no header row", path);
        goto out;
    }
    ncol = row.n;
    if (!(names = calloc((size_t)ncol, sizeof *names))) {
        rc = rl_fail(RL_ENOMEM, "out of memory");
        goto out;
    }
    int have[3] = {0};
    for (int i = 0; i < ncol; i++) {
        char *nm = row.cell[i];
        while (*nm == ' ') nm++;
        size_t l = strlen(nm);
        while (l && nm[l - 1] == ' ') nm[--l] = '\0';
        size_t f = 0, nf = sizeof rec_fields / sizeof *rec_fields;
        while (f < nf && strcmp(nm, rec_fields[f]) != 0) f++;
        if (f == nf) {
            rc = rl_fail(RL_EFORMAT, "%s: unknown column '%s'", where, nm);
            goto out;
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(names[j], nm)) {
                rc = rl_fail(RL_EFORMAT, "%s: column '%s' appears twice", where, nm);
                goto out;
            }
        if (f < 3) have[f] = 1;
        if (!(names[i] = dup_str(nm))) {
            rc = rl_fail(RL_ENOMEM, "out of memory");
            goto out;
        }
    }
    for (int f = 0; f < 3; f++)
        if (!have[f]) {
            rc = rl_fail(RL_EFORMAT, "%s: the header has no '%s' column", where, rec_fields[f]);
            goto out;
        }
    while (pos < len) {
        snprintf(where, sizeof where, "%s:%d", path, line);
        if ((rc = csv_row(d, len, &pos, &line, where, &row)) < 0) goto out;
        if (blank_row(&row)) continue;
        if (row.n != ncol) {
            rc = rl_fail(RL_EFORMAT, "%s: %d cells, the header has %d", where, row.n, ncol);
            goto out;
        }
        json_t *o = NULL;
        if ((rc = csv_to_json(s->comp, names, &row, where, &o)) < 0) goto out;
        rc = store_add_json(&(read_ctx_t){s, now, guideline}, o, where);
        json_decref(o);
        if (rc < 0) goto out;
    }
    rc = 0;
out:
    for (int i = 0; names && i < ncol; i++) free(names[i]);
    free(names);
    free(row.cell);
    free(row.buf);
    free(d);
    return rc;
}

int annot_store_write(const annot_store_t *s, const char *path) {
    jsonl_writer_t w;
    int rc = jsonl_open(&w, path);
    if (rc < 0) return rc;
    for (int i = 0; i < s->n; i++) {
        json_t *o = annot_rec_to_json(s->comp, &s->v[i]);
        if (!o) {
            jsonl_abort(&w);
            return rl_fail(RL_ENOMEM, "%s: out of memory", path);
        }
        if ((rc = jsonl_write(&w, o)) < 0) {
            jsonl_abort(&w);
            return rc;
        }
    }
    return jsonl_commit(&w);
}

/* ---- assignment -------------------------------------------------------------------------- */

typedef struct {
    int load;
    uint32_t tie;
    int idx;
} cand_t;

static int cmp_cand(const void *a, const void *b) {
    const cand_t *x = a, *y = b;
    if (x->load != y->load) return x->load < y->load ? -1 : 1;
    if (x->tie != y->tie) return x->tie < y->tie ? -1 : 1;
    return x->idx - y->idx;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int annot_assign(int n_prompts, const uint64_t *keys, int n_annot, int R, uint64_t seed, int *out) {
    if (R < 1 || R > n_annot)
        return rl_fail(RL_EINVAL, "overlap %d: must be in [1, %d] (the number of annotators)", R,
                       n_annot);
    cand_t *cand = malloc((size_t)n_annot * sizeof *cand);
    int *load = calloc((size_t)n_annot, sizeof *load);
    if (!cand || !load) {
        free(cand);
        free(load);
        return rl_fail(RL_ENOMEM, "assignment: out of memory");
    }
    for (int p = 0; p < n_prompts; p++) {
        for (int a = 0; a < n_annot; a++) {
            uint32_t b[4];
            rng_block(seed, tagged(keys[p], TAG_ASSIGN), (uint64_t)a, b);
            cand[a] = (cand_t){load[a], b[0], a};
        }
        qsort(cand, (size_t)n_annot, sizeof *cand, cmp_cand);
        int *row = out + (size_t)p * R;
        for (int j = 0; j < R; j++) {
            row[j] = cand[j].idx;
            load[cand[j].idx]++;
        }
        qsort(row, (size_t)R, sizeof *row, cmp_int);
    }
    free(cand);
    free(load);
    return 0;
}

/* ---- simulated annotators ---------------------------------------------------------------- */

static void normalise(double *w) {
    double s = 0;
    for (int c = 0; c < TASK_NCRIT; c++) s += w[c];
    for (int c = 0; c < TASK_NCRIT; c++) w[c] /= s;
}

void annot_sim_panel(int n, double noise, annot_sim_t *out) {
    for (int a = 0; a < n; a++) {
        annot_sim_t *s = &out[a];
        snprintf(s->id, sizeof s->id, "sim%02d", a + 1);
        for (int c = 0; c < TASK_NCRIT; c++)
            s->w[c] = 0.5 + rng_uniform53(0x616e6e6f74ull, TAG_PANEL, (uint64_t)a * 16 + c);
        normalise(s->w);
        s->noise = noise * (0.5 + (a + 0.5) / n);
    }
}

int annot_sim_load(const char *path, double noise, annot_sim_t **out, int *n) {
    *out = NULL;
    *n = 0;
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (je.line < 1) return rl_fail(RL_EIO, "%s: %s", path, je.text);
        return rl_fail(RL_EFORMAT, "%s:%d: %s (column %d)", path, je.line, je.text, je.column);
    }
    int rc = 0;
    size_t na = json_array_size(root);
    if (!json_is_array(root) || na == 0) {
        rc = rl_fail(RL_EFORMAT, "%s: a non-empty array of annotators is expected", path);
        goto out;
    }
    annot_sim_t *v = calloc(na, sizeof *v);
    if (!v) {
        rc = rl_fail(RL_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < na; i++) {
        json_t *e = json_array_get(root, i), *w = json_object_get(e, "weights"),
               *nz = json_object_get(e, "noise");
        const char *id = json_string_value(json_object_get(e, "id"));
        char where[4200];
        snprintf(where, sizeof where, "%s: annotator %zu", path, i + 1);
        if (!json_is_object(e) || !id || !id[0] || strlen(id) >= sizeof v[i].id) {
            rc = rl_fail(RL_EFORMAT, "%s: id: a string of 1..63 characters is expected", where);
            break;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(v[j].id, id)) {
                rc = rl_fail(RL_EFORMAT, "%s: id '%s' appears twice", where, id);
                break;
            }
        if (rc) break;
        snprintf(v[i].id, sizeof v[i].id, "%s", id);
        if (!json_is_object(w)) {
            rc = rl_fail(RL_EFORMAT, "%s: weights: an object is expected", where);
            break;
        }
        const char *key;
        json_t *val;
        double sum = 0;
        json_object_foreach(w, key, val) {
            int c = 0;
            while (c < TASK_NCRIT && strcmp(key, task_criteria_names[c]) != 0) c++;
            double x = json_is_number(val) ? json_number_value(val) : -1;
            if (c == TASK_NCRIT) {
                rc = rl_fail(RL_EFORMAT, "%s: weights: unknown criterion '%s'", where, key);
                break;
            }
            if (!(x >= 0 && x < 1e6)) {
                rc = rl_fail(RL_EFORMAT, "%s: weights: %s: a number >= 0 is expected", where, key);
                break;
            }
            v[i].w[c] = x;
            sum += x;
        }
        if (rc) break;
        if (!(sum > 0)) {
            rc = rl_fail(RL_EFORMAT, "%s: weights: at least one must be positive", where);
            break;
        }
        normalise(v[i].w);
        v[i].noise = noise;
        if (nz) {
            double x = json_is_number(nz) ? json_number_value(nz) : -1;
            if (!(x >= 0 && x < 1e6)) {
                rc = rl_fail(RL_EFORMAT, "%s: noise: a number >= 0 is expected", where);
                break;
            }
            v[i].noise = x;
        }
    }
    if (rc) {
        free(v);
    } else {
        *out = v;
        *n = (int)na;
    }
out:
    json_decref(root);
    return rc;
}

typedef struct {
    double u;
    int idx;
} util_t;

static int cmp_util(const void *a, const void *b) {
    const util_t *x = a, *y = b;
    if (x->u != y->u) return x->u > y->u ? -1 : 1; /* higher utility first */
    return x->idx - y->idx;
}

void annot_sim_rank(const annot_sim_t *a, int annot_idx, uint64_t seed, uint64_t prompt_key,
                    const float (*scores)[TASK_NCRIT], int k, int *level, int *shown) {
    util_t t[ANNOT_MAX_K];
    for (int i = 0; i < k; i++) {
        double u = 0;
        for (int c = 0; c < TASK_NCRIT; c++) u += a->w[c] * scores[i][c];
        if (a->noise > 0) {
            uint64_t ctr = ((uint64_t)annot_idx << 20) | (uint64_t)i;
            u += a->noise * rng_normal(seed, tagged(prompt_key, TAG_NOISE), ctr);
        }
        t[i] = (util_t){u, i};
    }
    qsort(t, (size_t)k, sizeof *t, cmp_util);
    /* a new tie group whenever an item falls more than 1e-9 below the current group's best */
    int lvl = 0;
    double head = k ? t[0].u : 0;
    for (int j = 0; j < k; j++) {
        if (head - t[j].u > 1e-9) {
            lvl++;
            head = t[j].u;
        }
        level[t[j].idx] = lvl;
    }
    if (shown) {
        for (int i = 0; i < k; i++) shown[i] = i;
        for (int i = k - 1; i > 0; i--) {
            uint64_t ctr = ((uint64_t)annot_idx << 20) | (uint64_t)i;
            int j = (int)(rng_uniform53(seed, tagged(prompt_key, TAG_SHOWN), ctr) * (i + 1));
            if (j > i) j = i;
            int tmp = shown[i];
            shown[i] = shown[j];
            shown[j] = tmp;
        }
    }
}

/* ---- aggregation ------------------------------------------------------------------------- */

double annot_rate(long agree, long strict) {
    return strict > 0 ? (double)agree / (double)strict : NAN;
}

void annot_agg_free(annot_agg_t *g) {
    for (int p = 0; p < g->n_prompts && g->p; p++) {
        free(g->p[p].rec);
        free(g->p[p].mean_rank);
        free(g->p[p].consensus);
    }
    free(g->p);
    for (int a = 0; a < g->n_annot && g->a; a++) free(g->a[a].id);
    free(g->a);
    memset(g, 0, sizeof *g);
}

static const char *annotator_of(const void *s, int i) {
    return ((const annot_store_t *)s)->v[i].annotator;
}
static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int annot_aggregate(const annot_store_t *s, double min_w, annot_agg_t *g) {
    const annot_comp_t *c = s->comp;
    memset(g, 0, sizeof *g);
    g->min_w = min_w;
    g->mean_w = g->alpha = g->overlap_mean = NAN;
    int rc = 0, maxk = 1;
    double *values = NULL, *ranks = NULL, *loo_mean = NULL;
    int *levels = NULL, *olevels = NULL, *loo_level = NULL, *ann_of = NULL, *count = NULL;
    char **names = NULL;
    for (int p = 0; p < c->n; p++)
        if (c->v[p].k > maxk) maxk = c->v[p].k;

    /* annotators, sorted by id */
    if (!(names = malloc((size_t)(s->n ? s->n : 1) * sizeof *names))) goto nomem;
    for (int i = 0; i < s->n; i++) names[i] = s->v[i].annotator;
    qsort(names, (size_t)s->n, sizeof *names, cmp_str);
    int na = 0;
    for (int i = 0; i < s->n; i++)
        if (na == 0 || strcmp(names[na - 1], names[i]) != 0) names[na++] = names[i];
    if (!(g->a = calloc((size_t)(na ? na : 1), sizeof *g->a))) goto nomem;
    g->n_annot = na;
    for (int a = 0; a < na; a++)
        if (!(g->a[a].id = dup_str(names[a]))) goto nomem;
    if (!(ann_of = malloc((size_t)(s->n ? s->n : 1) * sizeof *ann_of))) goto nomem;
    for (int i = 0; i < s->n; i++) {
        char *key = s->v[i].annotator;
        char **hit = bsearch(&key, names, (size_t)na, sizeof *names, cmp_str);
        ann_of[i] = (int)(hit - names);
        g->a[ann_of[i]].records++;
        g->a[ann_of[i]].skipped += s->v[i].skip;
        g->records++;
        g->skipped += s->v[i].skip;
    }

    /* records per prompt */
    if (!(g->p = calloc((size_t)(c->n ? c->n : 1), sizeof *g->p))) goto nomem;
    g->n_prompts = c->n;
    if (!(count = calloc((size_t)(c->n ? c->n : 1), sizeof *count))) goto nomem;
    for (int i = 0; i < s->n; i++)
        if (!s->v[i].skip) count[s->v[i].prompt]++;
    for (int p = 0; p < c->n; p++) {
        annot_pagg_t *pa = &g->p[p];
        int k = c->v[p].k;
        pa->w = NAN;
        if (!(pa->rec = malloc((size_t)(count[p] ? count[p] : 1) * sizeof *pa->rec)) ||
            !(pa->mean_rank = malloc((size_t)k * sizeof *pa->mean_rank)) ||
            !(pa->consensus = malloc((size_t)k * sizeof *pa->consensus)))
            goto nomem;
    }
    for (int i = 0; i < s->n; i++) {
        annot_pagg_t *pa = &g->p[s->v[i].prompt];
        if (s->v[i].skip)
            pa->n_skipped++;
        else
            pa->rec[pa->n_rankings++] = i;
    }

    /* Krippendorff's reliability matrix: one unit per (prompt, completion) */
    long n_units = 0;
    for (int p = 0; p < c->n; p++) n_units += c->v[p].k;
    if (!(values =
              malloc((size_t)(n_units ? n_units : 1) * (size_t)(na ? na : 1) * sizeof *values)))
        goto nomem;
    for (long u = 0; u < n_units * na; u++) values[u] = NAN;
    size_t rmax = (size_t)(na ? na : 1);
    if (!(levels = malloc(rmax * (size_t)maxk * sizeof *levels)) ||
        !(ranks = malloc(rmax * (size_t)maxk * sizeof *ranks)) ||
        !(olevels = malloc(rmax * (size_t)maxk * sizeof *olevels)) ||
        !(loo_mean = malloc((size_t)maxk * sizeof *loo_mean)) ||
        !(loo_level = malloc((size_t)maxk * sizeof *loo_level)))
        goto nomem;

    long unit0 = 0;
    double wsum = 0;
    long osum = 0;
    int nprompts_ranked = 0;
    for (int p = 0; p < c->n; p++) {
        annot_pagg_t *pa = &g->p[p];
        int k = c->v[p].k, R = pa->n_rankings;
        if (sort_by_key(pa->rec, R, annotator_of, s) < 0) goto nomem;
        for (int r = 0; r < R; r++) {
            const annot_rec_t *rec = &s->v[pa->rec[r]];
            memcpy(levels + (size_t)r * k, rec->level, (size_t)k * sizeof *levels);
            rank_fractional(rec->level, k, ranks + (size_t)r * k);
            for (int i = 0; i < k; i++)
                values[(unit0 + i) * na + ann_of[pa->rec[r]]] = ranks[(size_t)r * k + i];
        }
        unit0 += k;
        if (R == 0) {
            for (int i = 0; i < k; i++) {
                pa->mean_rank[i] = NAN;
                pa->consensus[i] = -1;
            }
            continue;
        }
        nprompts_ranked++;
        osum += R;
        if (g->overlap_min == 0 || R < g->overlap_min) g->overlap_min = R;
        if (R > g->overlap_max) g->overlap_max = R;
        if ((rc = rank_consensus(levels, R, k, pa->mean_rank, pa->consensus)) < 0) goto fail;
        if (R >= 2) {
            if ((rc = rank_kendall_w(levels, R, k, &pa->w)) < 0) goto fail;
            if (!isnan(pa->w)) {
                wsum += pa->w;
                g->n_w++;
            }
        }
        for (int a = 0; a < R; a++)
            for (int b = a + 1; b < R; b++)
                rank_pair_agreement(ranks + (size_t)a * k, ranks + (size_t)b * k, k, &pa->agree,
                                    &pa->strict, &pa->tied);
        g->agree += pa->agree;
        g->strict += pa->strict;
        g->tied += pa->tied;
        /* each annotator against the consensus of the others */
        if (R >= 2) {
            for (int a = 0; a < R; a++) {
                /* the others' levels, contiguous */
                int m = 0;
                for (int b = 0; b < R; b++) {
                    if (b == a) continue;
                    memcpy(olevels + (size_t)m * k, levels + (size_t)b * k,
                           (size_t)k * sizeof *olevels);
                    m++;
                }
                if ((rc = rank_consensus(olevels, m, k, loo_mean, loo_level)) < 0) goto fail;
                annot_aagg_t *aa = &g->a[ann_of[pa->rec[a]]];
                long tied = 0;
                aa->loo_prompts++;
                rank_pair_agreement(ranks + (size_t)a * k, loo_mean, k, &aa->loo_agree,
                                    &aa->loo_strict, &tied);
            }
        }
    }
    if (nprompts_ranked) g->overlap_mean = (double)osum / nprompts_ranked;
    if (g->n_w) g->mean_w = wsum / g->n_w;
    if (na >= 2 && n_units > 0) {
        if ((rc = rank_kripp_alpha(values, (int)n_units, na, RANK_ORDINAL, &g->alpha)) < 0)
            goto fail;
    }
    for (int p = 0; p < c->n; p++) {
        annot_pagg_t *pa = &g->p[p];
        pa->kept = pa->n_rankings > 0 && (isnan(min_w) || (!isnan(pa->w) && pa->w >= min_w));
        if (pa->kept)
            g->kept++;
        else
            g->dropped++;
    }
    goto out;
nomem:
    rc = rl_fail(RL_ENOMEM, "aggregation: out of memory");
fail:
    annot_agg_free(g);
out:
    free(values);
    free(ranks);
    free(olevels);
    free(loo_mean);
    free(loo_level);
    free(levels);
    free(ann_of);
    free(count);
    free(names);
    return rc;
}
