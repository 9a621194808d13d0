/*
 * rm.c - the reward model: pair data grouped by prompt, the K-wise / pairwise Bradley-Terry
 * loss and its gradient, evaluation metrics, normalisation statistics and saving (see rm.h).
 */
#include "align/rm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "align/task.h"
#include "nn/adamw.h"
#include "base/err.h"
#include "base/fs.h"
#include "nn/hf.h"
#include "base/jsonl.h"
#include "base/rng.h"

/* rng streams of this module (weight init uses tensor ids, far below these) */
#define RM_STREAM_HEAD  0x524d000000000001ULL
#define RM_STREAM_EPOCH 0x524d000000000002ULL

/* ---- data ------------------------------------------------------------------------------ */

/* A group under construction: its sequences and pairs, by index into d->seqs / d->pairs. */
typedef struct {
    int *seq, n_seq, cap_seq;
    int *pair, n_pair, cap_pair;
    char *prompt; /* the prompt text when the key is a prompt_id (loader's consistency check) */
} rm_bgroup_t;

typedef struct {
    rm_bgroup_t *g; /* parallel to d->groups */
    int gcap;       /* entries allocated at g */
    int *table;     /* open addressing: group index or -1 */
    size_t tcap;
} rm_build_t;

static uint64_t rm_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Grows *p (elements of `size`) to hold at least `need`; *cap updated. */
static int rm_grow(void **p, int *cap, int need, size_t size) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap : 16;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, (size_t)nc * size);
    if (!q) return rl_fail(RL_ENOMEM, "reward data");
    *p = q;
    *cap = nc;
    return 0;
}

static void rm_build_free(rm_data_t *d) {
    rm_build_t *b = d->build;
    if (!b) return;
    for (int i = 0; i < d->n_groups; i++) {
        free(b->g[i].seq);
        free(b->g[i].pair);
        free(b->g[i].prompt);
    }
    free(b->g);
    free(b->table);
    free(b);
    d->build = NULL;
}

void rm_data_free(rm_data_t *d) {
    if (!d) return;
    rm_build_free(d);
    for (int i = 0; i < d->n_groups; i++) free(d->groups[i].key);
    free(d->ids);
    free(d->seqs);
    free(d->pairs);
    free(d->groups);
    memset(d, 0, sizeof *d);
}

static void rm_table_insert(rm_build_t *b, const rm_data_t *d, int g) {
    size_t i = rm_hash(d->groups[g].key) & (b->tcap - 1);
    while (b->table[i] >= 0) i = (i + 1) & (b->tcap - 1);
    b->table[i] = g;
}

/* The index of group `key` in *out, creating it (and the build state) if needed. */
static int rm_group_get(rm_data_t *d, const char *key, int *out) {
    if (!d->build) {
        d->build = calloc(1, sizeof(rm_build_t));
        if (!d->build) return rl_fail(RL_ENOMEM, "reward data");
    }
    rm_build_t *b = d->build;
    if (b->tcap) {
        size_t i = rm_hash(key) & (b->tcap - 1);
        for (; b->table[i] >= 0; i = (i + 1) & (b->tcap - 1))
            if (strcmp(d->groups[b->table[i]].key, key) == 0) {
                *out = b->table[i];
                return 0;
            }
    }
    int g = d->n_groups;
    if (rm_grow((void **)&d->groups, &d->cap_groups, g + 1, sizeof *d->groups) < 0 ||
        rm_grow((void **)&b->g, &b->gcap, g + 1, sizeof *b->g) < 0)
        return RL_ENOMEM;
    memset(&d->groups[g], 0, sizeof d->groups[g]);
    memset(&b->g[g], 0, sizeof b->g[g]);
    d->groups[g].key = strdup(key);
    if (!d->groups[g].key) return rl_fail(RL_ENOMEM, "reward data");
    d->n_groups++;
    if ((size_t)d->n_groups * 2 > b->tcap) { /* rehash at half load */
        size_t nc = b->tcap ? b->tcap * 2 : 64;
        int *t = malloc(nc * sizeof(int));
        if (!t) return rl_fail(RL_ENOMEM, "reward data");
        free(b->table);
        b->table = t;
        b->tcap = nc;
        for (size_t i = 0; i < nc; i++) t[i] = -1;
        for (int i = 0; i < d->n_groups; i++) rm_table_insert(b, d, i);
    } else {
        rm_table_insert(b, d, g);
    }
    *out = g;
    return 0;
}

/* The index of the sequence ids[0..n) in group bg, adding it if new. */
static int rm_seq_get(rm_data_t *d, rm_bgroup_t *bg, const int *ids, int n, int n_prompt,
                      double ref, const char *where, int *out) {
    for (int i = 0; i < bg->n_seq; i++) {
        rm_seq_t *s = &d->seqs[bg->seq[i]];
        if (s->len == n && s->n_prompt == n_prompt &&
            memcmp(d->ids + s->off, ids, (size_t)n * sizeof(int)) == 0) {
            if (isnan(s->ref_logp) && !isnan(ref)) {
                s->ref_logp = ref;
                d->n_ref++;
            } else if (!isnan(ref) && s->ref_logp != ref) {
                return rl_fail(RL_EFORMAT,
                               "%s: the reference logprob %.17g of a completion seen before "
                               "with %.17g",
                               where ? where : "reward data", ref, s->ref_logp);
            }
            *out = bg->seq[i];
            return 0;
        }
    }
    if (d->n_ids + (size_t)n > d->cap_ids) {
        size_t nc = d->cap_ids ? d->cap_ids : 1024;
        while (nc < d->n_ids + (size_t)n) nc *= 2;
        int *p = realloc(d->ids, nc * sizeof(int));
        if (!p) return rl_fail(RL_ENOMEM, "reward data: tokens");
        d->ids = p;
        d->cap_ids = nc;
    }
    if (rm_grow((void **)&d->seqs, &d->cap_seqs, d->n_seqs + 1, sizeof *d->seqs) < 0 ||
        rm_grow((void **)&bg->seq, &bg->cap_seq, bg->n_seq + 1, sizeof(int)) < 0)
        return RL_ENOMEM;
    memcpy(d->ids + d->n_ids, ids, (size_t)n * sizeof(int));
    d->seqs[d->n_seqs] = (rm_seq_t){d->n_ids, n, n_prompt, ref};
    d->n_ref += !isnan(ref);
    d->n_ids += (size_t)n;
    bg->seq[bg->n_seq++] = d->n_seqs;
    *out = d->n_seqs++;
    return 0;
}

/*
 * rm_data_add with the loader's check: when `prompt` is given (the key is a prompt_id), a group
 * seen before must have had the same prompt text; `where` names the line in that error.
 */
static int rm_add(rm_data_t *d, const char *key, const char *prompt, const char *where,
                  const int *c, int nc, const int *r, int nr, float margin, int npc, int npr,
                  double refc, double refr) {
    if (nc < 1 || nr < 1 || !c || !r || !key)
        return rl_fail(RL_EINVAL, "reward data: empty sequence in a pair");
    if (d->groups && !d->build)
        return rl_fail(RL_EINVAL, "reward data: rm_data_add after rm_data_finish");
    d->n_lines++;
    int g = -1, sw, sl, rc = rm_group_get(d, key, &g);
    if (rc < 0) return rc;
    rm_bgroup_t *bg = &((rm_build_t *)d->build)->g[g];
    if (prompt) {
        if (!bg->prompt) {
            bg->prompt = strdup(prompt);
            if (!bg->prompt) return rl_fail(RL_ENOMEM, "reward data");
        } else if (strcmp(bg->prompt, prompt) != 0) {
            return rl_fail(RL_EFORMAT, "%s: prompt_id '%s' was seen before with a different prompt",
                           where, key);
        }
    }
    if (nc == nr && npc == npr && memcmp(c, r, (size_t)nc * sizeof(int)) == 0) {
        d->n_skipped++;
        return 0;
    }
    if ((rc = rm_seq_get(d, bg, c, nc, npc, refc, where, &sw)) < 0 ||
        (rc = rm_seq_get(d, bg, r, nr, npr, refr, where, &sl)) < 0)
        return rc;
    if (rm_grow((void **)&d->pairs, &d->cap_pairs, d->n_pairs + 1, sizeof *d->pairs) < 0 ||
        rm_grow((void **)&bg->pair, &bg->cap_pair, bg->n_pair + 1, sizeof(int)) < 0)
        return RL_ENOMEM;
    d->pairs[d->n_pairs] = (rm_pair_t){sw, sl, margin, g, NAN, d->n_lines - 1};
    bg->pair[bg->n_pair++] = d->n_pairs++;
    return 0;
}

int rm_data_add(rm_data_t *d, const char *key, const int *chosen, int nc, const int *rejected,
                int nr, float margin) {
    return rm_add(d, key, NULL, NULL, chosen, nc, rejected, nr, margin, 0, 0, NAN, NAN);
}

int rm_data_finish(rm_data_t *d) {
    rm_build_t *b = d->build;
    if (!b) return 0;
    rm_seq_t *seqs = malloc((size_t)(d->n_seqs ? d->n_seqs : 1) * sizeof *seqs);
    rm_pair_t *pairs = malloc((size_t)(d->n_pairs ? d->n_pairs : 1) * sizeof *pairs);
    int *newidx = malloc((size_t)(d->n_seqs ? d->n_seqs : 1) * sizeof(int));
    if (!seqs || !pairs || !newidx) {
        free(seqs);
        free(pairs);
        free(newidx);
        return rl_fail(RL_ENOMEM, "reward data");
    }
    int ns = 0, np = 0, ng = 0;
    for (int g = 0; g < d->n_groups; g++) {
        rm_bgroup_t *bg = &b->g[g];
        if (bg->n_pair == 0) { /* every pair of it was skipped */
            free(d->groups[g].key);
            continue;
        }
        rm_group_t *G = &d->groups[ng];
        G->key = d->groups[g].key;
        G->seq0 = ns;
        G->n_seq = bg->n_seq;
        G->pair0 = np;
        G->n_pair = bg->n_pair;
        for (int i = 0; i < bg->n_seq; i++) {
            newidx[bg->seq[i]] = ns;
            seqs[ns++] = d->seqs[bg->seq[i]];
        }
        for (int i = 0; i < bg->n_pair; i++) {
            rm_pair_t p = d->pairs[bg->pair[i]];
            pairs[np++] = (rm_pair_t){newidx[p.w], newidx[p.l], p.margin, ng, p.gold, p.src};
        }
        ng++;
    }
    free(newidx);
    free(d->seqs);
    free(d->pairs);
    d->seqs = seqs;
    d->pairs = pairs;
    d->cap_seqs = d->n_seqs = ns;
    d->cap_pairs = d->n_pairs = np;
    d->n_ref = 0; /* of the sequences kept */
    for (int i = 0; i < ns; i++) d->n_ref += !isnan(seqs[i].ref_logp);
    rm_build_free(d); /* walks the build state of all d->n_groups groups made */
    d->n_groups = ng;
    return 0;
}

int rm_join(const int *prompt, int n_prompt, const int *completion, int n_completion, int eot,
            int max_len, int **ids, int *n) {
    *ids = NULL;
    *n = 0;
    if (max_len < 1 || n_prompt < 0 || n_completion < 0)
        return rl_fail(RL_EINVAL, "rm_join: lengths %d, %d, max_len %d", n_prompt, n_completion,
                       max_len);
    int add = eot >= 0 && (n_completion == 0 || completion[n_completion - 1] != eot);
    int m = n_prompt + n_completion + add, cut = m > max_len ? m - max_len : 0;
    int *w = malloc((size_t)(m > 0 ? m : 1) * sizeof *w);
    if (!w) return rl_fail(RL_ENOMEM, "rm_join: out of memory");
    memcpy(w, prompt, (size_t)n_prompt * sizeof *w);
    memcpy(w + n_prompt, completion, (size_t)n_completion * sizeof *w);
    if (add) w[m - 1] = eot;
    if (cut) memmove(w, w + cut, (size_t)(m - cut) * sizeof *w); /* keep the end */
    *ids = w;
    *n = m - cut;
    return 0;
}

int rm_encode(tok_t *tok, const char *prompt, const char *completion, int max_len, int **ids,
              int *n, int *truncated) {
    *ids = NULL;
    *n = 0;
    int eot = tok_eot(tok);
    if (eot < 0) return rl_fail(RL_EINVAL, "the tokenizer has no <|endoftext|> token");
    if (max_len < 1) return rl_fail(RL_EINVAL, "rm_encode: max_len %d", max_len);
    size_t lp = strlen(prompt), lc = strlen(completion), m = 0;
    char *text = malloc(lp + lc + 1);
    if (!text) return rl_fail(RL_ENOMEM, "encoding");
    memcpy(text, prompt, lp);
    memcpy(text + lp, completion, lc + 1);
    int *v = NULL;
    int rc = tok_encode(tok, text, lp + lc, tok_text_special(tok), &v, &m);
    free(text);
    if (rc < 0) return rc;
    int *w = realloc(v, (m + 1) * sizeof(int));
    if (!w) {
        free(v);
        return rl_fail(RL_ENOMEM, "encoding");
    }
    w[m++] = eot;
    int cut = m > (size_t)max_len;
    if (cut) { /* keep the end: the reward is read at the last token */
        memmove(w, w + (m - (size_t)max_len), (size_t)max_len * sizeof(int));
        m = (size_t)max_len;
    }
    if (truncated) *truncated = cut;
    *ids = w;
    *n = (int)m;
    return 0;
}

int rm_encode_split(tok_t *tok, const char *prompt, const char *completion, int max_len, int **ids,
                    int *n, int *n_prompt, int *truncated) {
    *ids = NULL;
    *n = *n_prompt = 0;
    int eot = tok_eot(tok);
    if (eot < 0) return rl_fail(RL_EINVAL, "the tokenizer has no <|endoftext|> token");
    if (max_len < 2) return rl_fail(RL_EINVAL, "rm_encode_split: max_len %d", max_len);
    int *p = NULL, *c = NULL;
    size_t np = 0, nc = 0;
    int rc = tok_encode(tok, prompt, strlen(prompt), tok_text_special(tok), &p, &np);
    if (rc == 0)
        rc = tok_encode(tok, completion, strlen(completion), tok_text_special(tok), &c, &nc);
    if (rc == 0 && np == 0) rc = rl_fail(RL_EINVAL, "an empty prompt");
    size_t m = np + nc + 1, keep_p = np, keep_c = nc + 1;
    if (rc == 0 && m > (size_t)max_len) { /* the prompt's start goes first, then the end */
        keep_p = np - (m - (size_t)max_len < np - 1 ? m - (size_t)max_len : np - 1);
        if (keep_p + keep_c > (size_t)max_len) keep_c = (size_t)max_len - keep_p;
    }
    int *w = rc == 0 ? malloc((keep_p + keep_c) * sizeof(int)) : NULL;
    if (rc == 0 && !w) rc = rl_fail(RL_ENOMEM, "encoding");
    if (rc == 0) {
        memcpy(w, p + (np - keep_p), keep_p * sizeof(int));
        size_t k = keep_c < nc ? keep_c : nc;
        memcpy(w + keep_p, c, k * sizeof(int));
        if (keep_c == nc + 1) w[keep_p + nc] = eot;
        *ids = w;
        *n = (int)(keep_p + keep_c);
        *n_prompt = (int)keep_p;
        if (truncated) *truncated = m > (size_t)max_len;
    }
    free(p);
    free(c);
    return rc;
}

typedef struct {
    rm_data_t *d;
    tok_t *tok;
    int max_len;
} rm_load_ctx_t;

/* The optional number `name` of a line into *out (NaN when absent or null). */
static int rm_opt_num(json_t *obj, const char *name, const char *where, double *out) {
    *out = NAN;
    json_t *j = json_object_get(obj, name);
    if (!j || json_is_null(j)) return 0;
    int rc = jsonl_get_num(obj, name, where, out);
    if (rc == 0 && !isfinite(*out))
        rc = rl_fail(RL_EFORMAT, "%s: %s: not a finite number", where, name);
    return rc;
}

static int rm_load_line(void *vctx, json_t *obj, const char *where) {
    rm_load_ctx_t *x = vctx;
    const char *prompt, *chosen, *rejected;
    int rc;
    if ((rc = jsonl_get_str(obj, "prompt", where, &prompt)) < 0 ||
        (rc = jsonl_get_str(obj, "chosen", where, &chosen)) < 0 ||
        (rc = jsonl_get_str(obj, "rejected", where, &rejected)) < 0)
        return rc;
    double margin = 0;
    json_t *jm = json_object_get(obj, "margin");
    if (jm && !json_is_null(jm) && (rc = jsonl_get_num(obj, "margin", where, &margin)) < 0)
        return rc;
    if (!isfinite(margin) || fabs(margin) > 1e30)
        return rl_fail(RL_EFORMAT, "%s: margin: not a finite number", where);
    char idbuf[32];
    const char *key = prompt, *check = NULL;
    json_t *jid = json_object_get(obj, "prompt_id");
    if (jid && !json_is_null(jid)) {
        if (json_is_string(jid))
            key = json_string_value(jid);
        else if (json_is_integer(jid))
            snprintf(idbuf, sizeof idbuf, "%lld", (long long)json_integer_value(jid)), key = idbuf;
        else
            return rl_fail(RL_EFORMAT, "%s: prompt_id: expected a string or an integer", where);
        check = prompt;
    }
    int *a = NULL, *b = NULL, na, nb, ta = 0, tb = 0, npa = 0, npb = 0;
    double refc = NAN, refr = NAN;
    if (x->d->split) {
        if ((rc = rm_opt_num(obj, "ref_chosen_logps", where, &refc)) < 0 ||
            (rc = rm_opt_num(obj, "ref_rejected_logps", where, &refr)) < 0)
            return rc;
        if (isnan(refc) != isnan(refr))
            return rl_fail(RL_EFORMAT, "%s: ref_chosen_logps and ref_rejected_logps go together",
                           where);
        rc = rm_encode_split(x->tok, prompt, chosen, x->max_len, &a, &na, &npa, &ta);
        if (rc == 0) rc = rm_encode_split(x->tok, prompt, rejected, x->max_len, &b, &nb, &npb, &tb);
    } else {
        rc = rm_encode(x->tok, prompt, chosen, x->max_len, &a, &na, &ta);
        if (rc == 0) rc = rm_encode(x->tok, prompt, rejected, x->max_len, &b, &nb, &tb);
    }
    int before = x->d->n_pairs;
    if (rc == 0)
        rc = rm_add(x->d, key, check, where, a, na, b, nb, (float)margin, npa, npb, refc, refr);
    if (rc == 0 && x->d->n_pairs > before) /* not skipped: its gold preference */
        x->d->pairs[before].gold =
            (float)(task_gold_text(prompt, chosen) - task_gold_text(prompt, rejected));
    if (rc < 0 && rc != RL_EFORMAT) rc = rl_fail_ctx(rc, "%s", where);
    x->d->n_truncated += ta + tb;
    free(a);
    free(b);
    return rc;
}

static int rm_data_read(const char *path, tok_t *tok, int max_len, int split, rm_data_t *d) {
    memset(d, 0, sizeof *d);
    d->split = split;
    rm_load_ctx_t x = {d, tok, max_len};
    long n = jsonl_read(path, rm_load_line, &x);
    int rc = n < 0 ? (int)n : rm_data_finish(d);
    if (rc == 0 && d->n_pairs == 0)
        rc = rl_fail(RL_EFORMAT, "%s: no preference pairs (%ld lines, %ld with identical sides)",
                     path, d->n_lines, d->n_skipped);
    if (rc < 0) rm_data_free(d);
    return rc;
}

int rm_data_load(const char *path, tok_t *tok, int max_len, rm_data_t *d) {
    return rm_data_read(path, tok, max_len, 0, d);
}

int rm_data_load_split(const char *path, tok_t *tok, int max_len, rm_data_t *d) {
    return rm_data_read(path, tok, max_len, 1, d);
}

int rm_split(const rm_data_t *d, double frac, uint64_t seed, unsigned char *held) {
    int n = 0;
    for (int g = 0; g < d->n_groups; g++) {
        held[g] = rng_uniform53(rm_hash(d->groups[g].key), seed, 0) < frac;
        n += held[g];
    }
    return n;
}

void rm_epoch_order(int n, uint64_t seed, uint64_t epoch, int *perm) {
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_uniform53(seed, RM_STREAM_EPOCH + epoch, (uint64_t)i) * (i + 1));
        if (j > i) j = i;
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* ---- loss and gradient ----------------------------------------------------------------- */

/* -log sigma(x), stably. */
static double rm_nls(double x) {
    return x > 0 ? log1p(exp(-x)) : -x + log1p(exp(x));
}

/* sigma(x), stably. */
static double rm_sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

/* How many sequences item `it` forwards, and the global index of its k-th. */
static int rm_item_nseq(const rm_data_t *d, const rm_opts_t *o, int it) {
    return o->items == RM_ITEMS_GROUPS ? d->groups[it].n_seq : 2;
}

static int rm_item_seq(const rm_data_t *d, const rm_opts_t *o, int it, int k) {
    if (o->items == RM_ITEMS_GROUPS) return d->groups[it].seq0 + k;
    return k == 0 ? d->pairs[it].w : d->pairs[it].l;
}

/* Pads sequences into inputs (B,T) and sets idx[b] = b*T + len-1; returns T. */
static int rm_pack(const int *const *seqs, const int *lens, int B, int pad, int **inputs,
                   size_t *cap, int *idx) {
    int T = 1;
    for (int b = 0; b < B; b++) T = lens[b] > T ? lens[b] : T;
    size_t need = (size_t)B * T;
    if (need > *cap) {
        int *p = realloc(*inputs, need * sizeof(int));
        if (!p) return rl_fail(RL_ENOMEM, "reward model: batch");
        *inputs = p;
        *cap = need;
    }
    for (int b = 0; b < B; b++) {
        int *row = *inputs + (size_t)b * T;
        memcpy(row, seqs[b], (size_t)lens[b] * sizeof(int));
        for (int t = lens[b]; t < T; t++) row[t] = pad;
        idx[b] = b * T + lens[b] - 1;
    }
    return T;
}

/* Checks a micro-batch's sequences against the model. */
static int rm_check_seqs(const gpt_t *m, const int *lens, int B) {
    if (!m->cfg.scalar_head)
        return rl_fail(RL_EINVAL, "reward model: the model has no scalar head");
    for (int b = 0; b < B; b++)
        if (lens[b] < 1 || lens[b] > m->cfg.n_positions)
            return rl_fail(RL_EINVAL,
                           "reward model: a sequence of %d tokens (the model takes 1..%d)", lens[b],
                           m->cfg.n_positions);
    return 0;
}

int rm_grad(gpt_t *m, const rm_data_t *d, const int *items, int n, const rm_opts_t *opt,
            float scale, rm_grad_stats_t *st) {
    int micro = opt->micro > 0 ? opt->micro : 1, maxk = micro, rc = 0;
    for (int i = 0; i < n; i++) {
        int lim = opt->items == RM_ITEMS_GROUPS ? d->n_groups : d->n_pairs;
        if (items[i] < 0 || items[i] >= lim)
            return rl_fail(RL_EINVAL, "reward model: item %d outside [0,%d)", items[i], lim);
        int k = rm_item_nseq(d, opt, items[i]);
        maxk = k > maxk ? k : maxk;
    }
    const int **seqs = malloc((size_t)maxk * sizeof *seqs);
    int *lens = malloc((size_t)maxk * sizeof(int)), *idx = malloc((size_t)maxk * sizeof(int));
    float *r = malloc((size_t)maxk * sizeof(float)), *dr = malloc((size_t)maxk * sizeof(float));
    int *inputs = NULL;
    size_t cap = 0;
    if (!seqs || !lens || !idx || !r || !dr) rc = rl_fail(RL_ENOMEM, "reward model: batch");
    for (int i0 = 0; rc == 0 && i0 < n;) {
        /* a micro-batch: whole items while they fit in `micro` sequences (at least one item) */
        int i1 = i0, B = 0;
        while (i1 < n && (B == 0 || B + rm_item_nseq(d, opt, items[i1]) <= micro))
            B += rm_item_nseq(d, opt, items[i1++]);
        for (int i = i0, b = 0; i < i1; i++)
            for (int k = 0; k < rm_item_nseq(d, opt, items[i]); k++, b++) {
                const rm_seq_t *s = &d->seqs[rm_item_seq(d, opt, items[i], k)];
                seqs[b] = d->ids + s->off;
                lens[b] = s->len;
                if (st) st->tokens += s->len;
            }
        if ((rc = rm_check_seqs(m, lens, B)) < 0) break;
        int T = rm_pack(seqs, lens, B, opt->pad_id, &inputs, &cap, idx);
        if (T < 0) {
            rc = T;
            break;
        }
        rc = gpt_forward(m, inputs, B, T, 0);
        if (rc == 0) rc = gpt_head_forward(m, idx, B, r);
        if (rc < 0) break;
        memset(dr, 0, (size_t)B * sizeof(float));
        for (int i = i0, base = 0; i < i1; i++) {
            int it = items[i], p0, np;
            if (opt->items == RM_ITEMS_GROUPS)
                p0 = d->groups[it].pair0, np = d->groups[it].n_pair;
            else
                p0 = it, np = 1;
            int first = rm_item_seq(d, opt, it, 0);
            double item_loss = 0, w = (double)scale / np;
            for (int p = p0; p < p0 + np; p++) {
                const rm_pair_t *pr = &d->pairs[p];
                /* rows of the two sequences in this micro-batch */
                int bw = opt->items == RM_ITEMS_GROUPS ? base + pr->w - first : base;
                int bl = opt->items == RM_ITEMS_GROUPS ? base + pr->l - first : base + 1;
                double rw = r[bw], rl = r[bl], sum = rw + rl;
                double x = rw - rl - (double)opt->margin_coef * pr->margin;
                item_loss += rm_nls(x) + (double)opt->center_coef * sum * sum;
                double g = -rm_sigmoid(-x); /* d(-log sigma(x))/dx */
                double gc = 2.0 * opt->center_coef * sum;
                dr[bw] += (float)(w * (g + gc));
                dr[bl] += (float)(w * (-g + gc));
                if (st) st->correct += rw > rl ? 1.0 : rw == rl ? 0.5 : 0.0;
            }
            if (!isfinite(item_loss)) {
                rc = rl_fail(RL_ENONFINITE, "reward model: loss of item %d is %g", it, item_loss);
                break;
            }
            if (st) {
                st->loss += (double)scale * item_loss / np;
                st->pairs += np;
            }
            base += rm_item_nseq(d, opt, it);
        }
        if (rc == 0) rc = gpt_backward(m, 0, dr);
        if (st) st->seqs += B;
        i0 = i1;
    }
    free(seqs);
    free(lens);
    free(idx);
    free(r);
    free(dr);
    free(inputs);
    return rc;
}

int rm_update(train_t *t, rm_update_stats_t *st) {
    gpt_t *m = t->model;
    rm_update_stats_t s = {0};
    float scale;
    int rc = adamw_clip_scale(m->grads_mem, m->num_params, t->clip, &s.grad_norm, &scale);
    if (rc < 0) return rl_fail_ctx(rc, "step %ld: gradient", t->step);
    s.lr = adamw_sched_lr(&t->sched, t->step);
    rc = adamw_step_scaled(&t->opt, m->params_mem, m->grads_mem, t->groups, t->n_groups, s.lr,
                           scale);
    if (rc < 0) return rl_fail_ctx(rc, "step %ld: optimizer", t->step);
    t->step++;
    if (st) *st = s;
    return 0;
}

/* The blocks of one step, for rm_leaf. */
typedef struct {
    gpt_t *m;
    const rm_data_t *d;
    const int *items; /* from the first item of block j0 */
    int B, nb, first;
    const rm_opts_t *opt;
} rm_blocks_t;

/* gtree_leaf_fn: block j of an RM step. */
static int rm_leaf(void *ctx, int j, double *stats, int *empty) {
    const rm_blocks_t *b = ctx;
    int i0, i1;
    gtree_block(b->B, b->nb, j, &i0, &i1);
    if (i1 == i0) { /* more blocks than items: nothing here */
        *empty = 1;
        return 0;
    }
    rm_grad_stats_t gs = {0};
    gpt_zero_grad(b->m);
    int rc =
        rm_grad(b->m, b->d, b->items + (i0 - b->first), i1 - i0, b->opt, 1.0f / (float)b->B, &gs);
    if (rc < 0) return rc;
    stats[RM_STAT_LOSS] = gs.loss;
    stats[RM_STAT_CORRECT] = gs.correct;
    stats[RM_STAT_PAIRS] = (double)gs.pairs;
    stats[RM_STAT_SEQS] = (double)gs.seqs;
    stats[RM_STAT_TOKENS] = (double)gs.tokens;
    return 0;
}

int rm_grad_leaves(gtree_t *g, gpt_t *m, const rm_data_t *d, const int *items, int B, int nb,
                   int j0, int j1, const rm_opts_t *opt) {
    if (B < 1 || nb < 1) return rl_fail(RL_EINVAL, "reward model: a step needs at least one item");
    int first, end;
    gtree_block(B, nb, j0, &first, &end);
    rm_blocks_t b = {m, d, items, B, nb, first, opt};
    int rc = gpt_grads_alloc(m);
    return rc < 0 ? rc : gtree_leaves(g, j0, j1, rm_leaf, &b);
}

void rm_grad_stats_add(rm_grad_stats_t *st, const double *stats) {
    st->loss += stats[RM_STAT_LOSS];
    st->correct += stats[RM_STAT_CORRECT];
    st->pairs += (long)stats[RM_STAT_PAIRS];
    st->seqs += (long)stats[RM_STAT_SEQS];
    st->tokens += (long)stats[RM_STAT_TOKENS];
}

int rm_step(train_t *t, const rm_data_t *d, const int *items, int n, const rm_opts_t *opt,
            rm_grad_stats_t *gs, rm_update_stats_t *us) {
    if (n < 1) return rl_fail(RL_EINVAL, "reward model: a step needs at least one item");
    gpt_t *m = t->model;
    int nb = gtree_blocks(t->grad_blocks, n), rc = gpt_grads_alloc(m), empty, lo, hi;
    double stats[GTREE_NSTAT];
    if (rc == 0) {
        gtree_reset(&t->tree, nb, m->grads_mem, m->num_params);
        rc = rm_grad_leaves(&t->tree, m, d, items, n, nb, 0, nb, opt);
    }
    if (rc == 0) rc = gtree_take(&t->tree, stats, &empty, &lo, &hi);
    if (rc < 0) return rl_fail_ctx(rc, "step %ld", t->step);
    if (gs) rm_grad_stats_add(gs, stats);
    return rm_update(t, us);
}

/* ---- scoring and metrics --------------------------------------------------------------- */

int rm_rewards(gpt_t *m, const int *const *seqs, const int *lens, int n, int micro, int pad_id,
               float *out) {
    if (micro < 1) micro = 1;
    int *idx = malloc((size_t)micro * sizeof(int)), *inputs = NULL, rc = 0;
    size_t cap = 0;
    if (!idx) return rl_fail(RL_ENOMEM, "reward model: batch");
    for (int i0 = 0; rc == 0 && i0 < n; i0 += micro) {
        int B = n - i0 < micro ? n - i0 : micro;
        if ((rc = rm_check_seqs(m, lens + i0, B)) < 0) break;
        int T = rm_pack(seqs + i0, lens + i0, B, pad_id, &inputs, &cap, idx);
        if (T < 0) {
            rc = T;
            break;
        }
        rc = gpt_forward(m, inputs, B, T, 0);
        if (rc == 0) rc = gpt_head_forward(m, idx, B, out + i0);
    }
    free(idx);
    free(inputs);
    return rc;
}

int rm_data_rewards(gpt_t *m, const rm_data_t *d, const int *idx, int n, int micro, int pad_id,
                    float *out) {
    const int **seqs = malloc((size_t)(n ? n : 1) * sizeof *seqs);
    int *lens = malloc((size_t)(n ? n : 1) * sizeof(int));
    int rc = seqs && lens ? 0 : rl_fail(RL_ENOMEM, "reward model: batch");
    for (int i = 0; rc == 0 && i < n; i++) {
        if (idx[i] < 0 || idx[i] >= d->n_seqs) {
            rc = rl_fail(RL_EINVAL, "reward model: sequence %d outside [0,%d)", idx[i], d->n_seqs);
            break;
        }
        seqs[i] = d->ids + d->seqs[idx[i]].off;
        lens[i] = d->seqs[idx[i]].len;
    }
    if (rc == 0) rc = rm_rewards(m, seqs, lens, n, micro, pad_id, out);
    free(seqs);
    free(lens);
    return rc;
}

void rm_metrics(const float *rc, const float *rr, long n, int bins, rm_metrics_t *out) {
    memset(out, 0, sizeof *out);
    if (bins < 1) bins = 1;
    out->bins = bins;
    out->pairs = n;
    if (n == 0) {
        out->accuracy = out->loss = out->ece = NAN;
        return;
    }
    double *sp = calloc((size_t)bins, sizeof(double)), *sy = calloc((size_t)bins, sizeof(double));
    long *cnt = calloc((size_t)bins, sizeof(long));
    double correct = 0, loss = 0;
    for (long i = 0; i < n; i++) {
        double x = (double)rc[i] - rr[i];
        correct += x > 0 ? 1.0 : x == 0 ? 0.5 : 0.0;
        loss += rm_nls(x);
        if (!sp || !sy || !cnt) continue;
        double p = rm_sigmoid(x);
        for (int side = 0; side < 2; side++) { /* (p, preferred) and (1 - p, not preferred) */
            double q = side ? 1.0 - p : p;
            int b = (int)(q * bins);
            b = b < 0 ? 0 : b >= bins ? bins - 1 : b;
            sp[b] += q;
            sy[b] += side ? 0.0 : 1.0;
            cnt[b]++;
        }
    }
    out->accuracy = correct / (double)n;
    out->loss = loss / (double)n;
    if (sp && sy && cnt) {
        double ece = 0;
        for (int b = 0; b < bins; b++)
            if (cnt[b]) ece += fabs(sp[b] - sy[b]) / (double)(2 * n);
        out->ece = ece; /* sum_b (cnt/N) |sp/cnt - sy/cnt| = sum_b |sp - sy| / N */
    } else {
        out->ece = NAN;
    }
    free(sp);
    free(sy);
    free(cnt);
}

void rm_stats_compute(const float *r, long n, rm_stats_t *out) {
    out->count = n;
    if (n <= 0) {
        out->mean = out->std = NAN;
        return;
    }
    double s = 0, ss = 0;
    for (long i = 0; i < n; i++) s += r[i];
    double mean = s / (double)n;
    for (long i = 0; i < n; i++) ss += ((double)r[i] - mean) * ((double)r[i] - mean);
    out->mean = mean;
    out->std = sqrt(ss / (double)n);
}

int rm_stats_read(const char *dir, rm_stats_t *out) {
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, RM_STATS_FILE) >= sizeof path)
        return rl_fail(RL_EINVAL, "%s: path too long", dir);
    char *buf = NULL;
    size_t len = 0;
    int rc = fs_read_file(path, 1 << 20, &buf, &len);
    if (rc < 0) return rc;
    json_error_t e;
    json_t *root = json_loadb(buf, len, 0, &e);
    free(buf);
    if (!root) return rl_fail(RL_EFORMAT, "%s:%d: %s", path, e.line, e.text);
    double mean = 0, sd = 0;
    long long count = 0;
    rc = json_is_object(root) ? 0 : rl_fail(RL_EFORMAT, "%s: expected an object", path);
    if (rc == 0) rc = jsonl_get_num(root, "mean", path, &mean);
    if (rc == 0) rc = jsonl_get_num(root, "std", path, &sd);
    if (rc == 0) rc = jsonl_get_int(root, "count", path, 0, 1LL << 62, &count);
    if (rc == 0 && (!isfinite(mean) || !isfinite(sd) || sd < 0))
        rc = rl_fail(RL_EFORMAT, "%s: mean and std must be finite, std >= 0", path);
    json_decref(root);
    if (rc == 0) *out = (rm_stats_t){mean, sd, (long)count};
    return rc;
}

/* ---- load and save --------------------------------------------------------------------- */

gpt_t *rm_load(const char *dir, uint64_t seed) {
    gpt_t *m = hf_load(dir);
    if (!m || m->cfg.scalar_head) return m;
    gpt_config_t cfg = m->cfg;
    cfg.scalar_head = 1;
    gpt_t *r = gpt_new(&cfg);
    if (!r) {
        rl_fail_ctx(RL_ENOMEM, "%s: reward model", dir);
        gpt_destroy(&m);
        return NULL;
    }
    /* the head's kinds come last in the arena: the trunk is the same prefix in both models */
    memcpy(r->params_mem, m->params_mem, m->num_params * sizeof(float));
    int C = cfg.n_embd;
    for (int i = 0; i < C; i++) r->params.headw[i] = 0.02f * rng_normal(seed, RM_STREAM_HEAD, i);
    r->params.headb[0] = 0.0f;
    gpt_destroy(&m);
    return r;
}

static int rm_fsync_parent(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = 0;
    else
        *slash = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return rl_fail(RL_EIO, "%s: %s", dir, strerror(errno));
    int rc = fsync(fd) < 0 ? rl_fail(RL_EIO, "%s: fsync: %s", dir, strerror(errno)) : 0;
    close(fd);
    return rc;
}

int rm_save(const gpt_t *m, const rm_stats_t *stats, const char *tokdir, const char *out) {
    char stage[4096], old[4096], cfgpath[4096], path[4200];
    size_t ol = strlen(out);
    while (ol > 1 && out[ol - 1] == '/') ol--; /* "dir/" names dir */
    if (ol == 0 || ol + 64 > sizeof stage) return rl_fail(RL_EINVAL, "bad output path '%s'", out);
    snprintf(stage, sizeof stage, "%.*s.staging-%ld", (int)ol, out, (long)getpid());
    snprintf(old, sizeof old, "%.*s.replaced-%ld", (int)ol, out, (long)getpid());
    snprintf(cfgpath, sizeof cfgpath, "%.*s/config.json", (int)ol, out);
    char dst[4096];
    snprintf(dst, sizeof dst, "%.*s", (int)ol, out);

    /* an existing output must be a model directory (never replace an unrelated one) */
    struct stat sb;
    int exists = stat(dst, &sb) == 0;
    if (exists && !S_ISDIR(sb.st_mode))
        return rl_fail(RL_EINVAL, "%s exists and is not a directory", dst);
    if (exists && stat(cfgpath, &sb) != 0) {
        DIR *dp = opendir(dst);
        int empty = 1;
        if (dp) {
            struct dirent *e;
            while ((e = readdir(dp)))
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
            closedir(dp);
        }
        if (!empty)
            return rl_fail(RL_EINVAL,
                           "%s exists and is not a model directory (no config.json): not replaced",
                           dst);
    }
    fs_remove_tree(stage);
    int rc = hf_save(m, stage);
    if (rc == 0 && tokdir) rc = hf_copy_tokenizer(tokdir, stage);
    if (rc == 0 && stats) {
        json_t *j = json_pack("{s:f,s:f,s:I}", "mean", stats->mean, "std", stats->std, "count",
                              (json_int_t)stats->count);
        char *text = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
        json_decref(j);
        snprintf(path, sizeof path, "%.4000s/%s", stage, RM_STATS_FILE);
        rc = text ? fs_write_atomic(path, text, strlen(text))
                  : rl_fail(RL_EINVAL, "reward statistics are not finite numbers");
        free(text);
    }
    if (rc == 0 && exists && rename(dst, old) < 0)
        rc = rl_fail(RL_EIO, "%s: rename: %s", dst, strerror(errno));
    if (rc == 0 && rename(stage, dst) < 0) {
        rc = rl_fail(RL_EIO, "%s: rename: %s", stage, strerror(errno));
        if (exists) rename(old, dst); /* put the previous model back */
    }
    if (rc == 0) {
        rc = rm_fsync_parent(dst);
        if (exists) fs_remove_tree(old);
    }
    if (rc < 0) fs_remove_tree(stage);
    return rc;
}
