/*
 * cfg.c - run configuration: one key table, a YAML reader (libyaml events) and overrides.
 */
#include "base/cfg.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "base/err.h"

typedef enum { K_STR, K_INT, K_I64, K_U64, K_BOOL } kind_t;

typedef struct {
    const char *key;
    kind_t kind;
    size_t off, size; /* size: buffer size for K_STR */
    long long lo, hi;
} cfg_key_t;

#define STR(k, f)                                                                                  \
    { k, K_STR, offsetof(cfg_run_t, f), sizeof(((cfg_run_t *)0)->f), 0, 0 }
#define NUM(k, t, f, lo, hi)                                                                       \
    { k, t, offsetof(cfg_run_t, f), 0, lo, hi }

static const cfg_key_t keys[] = {
    STR("run_dir", run_dir),
    NUM("seed", K_U64, seed, 0, 0),
    STR("master.bind", bind),
    STR("master.advertise", advertise),
    NUM("master.blob_port", K_INT, blob_port, 0, 65535),
    STR("master.http_host", http_host),
    NUM("master.http_port", K_INT, http_port, -1, 65535),
    NUM("master.heartbeat_ms", K_INT, heartbeat_ms, 10, 600000),
    NUM("master.liveness", K_INT, liveness, 1, 1000),
    NUM("master.lease_ms", K_INT, lease_ms, 10, 86400000),
    NUM("master.max_attempts", K_INT, max_attempts, 1, 1000),
    NUM("master.max_msg_bytes", K_I64, max_msg_bytes, 1024, 1LL << 40),
    NUM("master.exit_when_done", K_BOOL, exit_when_done, 0, 1),
    NUM("master.journal_compact_bytes", K_I64, journal_compact_bytes, 4096, 1LL << 40),
    STR("master.keys", keys),
    STR("master.http_token_file", http_token_file),
    STR("master.tls_cert", tls_cert),
    STR("master.tls_key", tls_key),
    NUM("master.insecure", K_BOOL, insecure, 0, 1),
};
#define N_KEYS (int)(sizeof keys / sizeof keys[0])

void cfg_defaults(cfg_run_t *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->run_dir, sizeof c->run_dir, "runs/default");
    c->seed = 1;
    snprintf(c->bind, sizeof c->bind, "tcp://127.0.0.1:5555");
    snprintf(c->http_host, sizeof c->http_host, "127.0.0.1");
    c->http_port = 8080;
    c->heartbeat_ms = 1000;
    c->liveness = 3;
    c->lease_ms = 60000;
    c->max_attempts = 5;
    c->max_msg_bytes = 64LL << 20;
    c->journal_compact_bytes = 64LL << 20;
}

void cfg_free(cfg_run_t *c) {
    for (int i = 0; i < c->n_stages; i++) free(c->stages[i]);
    c->n_stages = 0;
}

/* The i-th key known to c - its table, `stages`, then the extra keys - or NULL. */
static const char *key_at(const cfg_run_t *c, int i) {
    if (i < N_KEYS) return keys[i].key;
    if (i == N_KEYS) return "stages";
    return c->extra_key ? c->extra_key(c->extra_ctx, i - N_KEYS - 1) : NULL;
}

/* 2: key is a known key; 1: a prefix of known keys ("master"); 0: neither. */
static int key_kind(const cfg_run_t *c, const char *key) {
    size_t n = strlen(key);
    int kind = 0;
    const char *k;
    for (int i = 0; (k = key_at(c, i)); i++) {
        if (!strcmp(k, key)) return 2;
        if (!strncmp(k, key, n) && k[n] == '.') kind = 1;
    }
    return kind;
}

/* Levenshtein distance of a and b (their first 63 bytes). */
static int edit_distance(const char *a, const char *b) {
    int la = (int)strnlen(a, 63), lb = (int)strnlen(b, 63), row[64];
    for (int j = 0; j <= lb; j++) row[j] = j;
    for (int i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = i;
        for (int j = 1; j <= lb; j++) {
            int up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

/* An unknown key, with the nearest known key or key prefix as a suggestion (at most 2 edits). */
static int unknown_key(const cfg_run_t *c, const char *key, const char *where) {
    char best[128] = "", cand[128];
    int best_d = 3;
    const char *k;
    for (int i = 0; (k = key_at(c, i)); i++) {
        /* the key itself and each of its prefixes: "ppo.kl_coef", "ppo" */
        for (const char *dot = k;; dot++) {
            if (*dot && *dot != '.') continue;
            snprintf(cand, sizeof cand, "%.*s", (int)(dot - k), k);
            int d = edit_distance(key, cand);
            if (d < best_d && d < (int)strlen(key))
                best_d = d, snprintf(best, sizeof best, "%s", cand);
            if (!*dot) break;
        }
    }
    if (best[0])
        return rl_fail(RL_EINVAL, "%s: unknown key '%s' (did you mean '%s'?)", where, key, best);
    return rl_fail(RL_EINVAL, "%s: unknown key '%s'", where, key);
}

/* A list or a mapping (`got`) where key wants something else. */
static int wrong_shape(const cfg_run_t *c, const char *key, const char *got, const char *where) {
    if (!strcmp(key, "stages"))
        return rl_fail(RL_EINVAL, "%s: stages: expected a list of stage names, got %s", where, got);
    int kind = key_kind(c, key);
    if (kind == 0 && (c->extra_key || !c->extra_set)) return unknown_key(c, key, where);
    if (kind == 1)
        return rl_fail(RL_EINVAL, "%s: %s: expected a mapping of keys, got %s", where, key, got);
    return rl_fail(RL_EINVAL, "%s: %s: expected a single value, got %s", where, key, got);
}

int cfg_set(cfg_run_t *c, const char *key, const char *value, const char *where) {
    const cfg_key_t *k = NULL;
    for (int i = 0; i < N_KEYS && !k; i++)
        if (!strcmp(keys[i].key, key)) k = &keys[i];
    if (!k) {
        int kind = key_kind(c, key);
        if (!strcmp(key, "stages") || kind == 1) return wrong_shape(c, key, "a scalar", where);
        if (c->extra_set && (kind == 2 || !c->extra_key))
            return c->extra_set(c->extra_ctx, key, value, where);
        return unknown_key(c, key, where);
    }
    char *p = (char *)c + k->off, *end;
    errno = 0;
    switch (k->kind) {
    case K_STR:
        if (strlen(value) >= k->size)
            return rl_fail(RL_EINVAL, "%s: %s: value longer than %zu bytes", where, key,
                           k->size - 1);
        memcpy(p, value, strlen(value) + 1);
        return 0;
    case K_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes"))
            *(int *)p = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no"))
            *(int *)p = 0;
        else
            return rl_fail(RL_EINVAL, "%s: %s: '%s' is not a boolean", where, key, value);
        return 0;
    case K_U64: {
        unsigned long long v = strtoull(value, &end, 10);
        if (end == value || *end || errno || value[0] == '-')
            return rl_fail(RL_EINVAL, "%s: %s: '%s' is not an unsigned integer", where, key, value);
        *(uint64_t *)p = v;
        return 0;
    }
    case K_INT:
    case K_I64: {
        long long v = strtoll(value, &end, 10);
        if (end == value || *end || errno || v < k->lo || v > k->hi)
            return rl_fail(RL_EINVAL, "%s: %s: '%s' is not an integer in [%lld, %lld]", where, key,
                           value, k->lo, k->hi);
        if (k->kind == K_INT)
            *(int *)p = (int)v;
        else
            *(int64_t *)p = v;
        return 0;
    }
    }
    return rl_fail(RL_EINVAL, "%s: %s: bad key type", where, key);
}

int cfg_set_kv(cfg_run_t *c, const char *kv) {
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv) return rl_fail(RL_EINVAL, "--set: '%s' is not key=value", kv);
    char key[128];
    size_t n = (size_t)(eq - kv);
    if (n >= sizeof key) return rl_fail(RL_EINVAL, "--set: key too long in '%s'", kv);
    memcpy(key, kv, n);
    key[n] = 0;
    return cfg_set(c, key, eq + 1, "--set");
}

/* The dotted path of the first depth keys of stack into out. */
static void path_of(char *out, size_t n, char stack[][64], int depth) {
    size_t used = 0;
    out[0] = 0;
    for (int i = 0; i < depth && used < n; i++)
        used += (size_t)snprintf(out + used, n - used, "%s%s", i ? "." : "", stack[i]);
}

/* Walks the YAML event stream keeping the path of mapping keys. */
int cfg_load_yaml(cfg_run_t *c, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return rl_fail(errno == ENOENT ? RL_ENOTFOUND : RL_EIO, "%s: %s", path, strerror(errno));
    yaml_parser_t ps;
    yaml_event_t ev;
    yaml_parser_initialize(&ps);
    yaml_parser_set_input_file(&ps, f);
    char stack[8][64]; /* mapping keys on the path */
    int depth = 0;     /* mappings open */
    int want_key[9] = {0};
    int in_stages = 0, rc = 0, done = 0;
    char where[1100], full[600], key_where[1100] = ""; /* key_where: the line of the last key */
    while (!done && rc == 0) {
        if (!yaml_parser_parse(&ps, &ev)) {
            rc = rl_fail(RL_EINVAL, "%s:%zu: YAML: %s", path, ps.problem_mark.line + 1,
                         ps.problem ? ps.problem : "syntax error");
            break;
        }
        snprintf(where, sizeof where, "%s:%zu", path, ev.start_mark.line + 1);
        full[0] = 0;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        case YAML_MAPPING_START_EVENT:
            if (in_stages) {
                rc = rl_fail(RL_EINVAL, "%s: stages: entries must be names", where);
                break;
            }
            if (depth > 0 && !want_key[depth]) { /* the value of a key: a known key wants one */
                path_of(full, sizeof full, stack, depth);
                int kind = key_kind(c, full);
                if (kind == 2 || !strcmp(full, "stages") ||
                    (kind == 0 && (c->extra_key || !c->extra_set))) {
                    rc = wrong_shape(c, full, "a mapping", key_where);
                    break;
                }
            }
            if (depth >= 8) {
                rc = rl_fail(RL_EINVAL, "%s: mappings nested too deeply", where);
                break;
            }
            depth++;
            want_key[depth] = 1;
            break;
        case YAML_MAPPING_END_EVENT:
            depth--;
            if (depth > 0) want_key[depth] = 1;
            break;
        case YAML_SEQUENCE_START_EVENT:
            path_of(full, sizeof full, stack, depth);
            if (depth == 1 && !strcmp(stack[0], "stages") && !in_stages) {
                in_stages = 1;
                cfg_free(c);
            } else if (depth == 0 || in_stages) {
                rc = rl_fail(RL_EINVAL, "%s: %s", where,
                             depth ? "stages: entries must be names"
                                   : "the file must be a mapping of keys");
            } else {
                rc = wrong_shape(c, full, "a list", key_where);
            }
            break;
        case YAML_SEQUENCE_END_EVENT:
            in_stages = 0;
            want_key[depth] = 1;
            break;
        case YAML_SCALAR_EVENT: {
            const char *v = (const char *)ev.data.scalar.value;
            if (in_stages) {
                if (c->n_stages == CFG_MAX_STAGES) {
                    rc = rl_fail(RL_EINVAL, "%s: stages: more than %d", where, CFG_MAX_STAGES);
                } else if (!(c->stages[c->n_stages] = strdup(v))) {
                    rc = rl_fail(RL_ENOMEM, "out of memory");
                } else {
                    c->n_stages++;
                }
            } else if (depth == 0) {
                rc = rl_fail(RL_EINVAL, "%s: the file must be a mapping of keys", where);
            } else if (want_key[depth]) {
                snprintf(stack[depth - 1], sizeof stack[0], "%s", v);
                snprintf(key_where, sizeof key_where, "%s", where);
                want_key[depth] = 0;
            } else {
                path_of(full, sizeof full, stack, depth);
                rc = cfg_set(c, full, v, key_where);
                want_key[depth] = 1;
            }
            break;
        }
        case YAML_ALIAS_EVENT:
            rc = rl_fail(RL_EINVAL, "%s: YAML aliases are not supported", where);
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&ps);
    fclose(f);
    return rc;
}

json_t *cfg_to_json(const cfg_run_t *c) {
    json_t *o = json_object(), *st = json_array();
    for (int i = 0; i < N_KEYS; i++) {
        const cfg_key_t *k = &keys[i];
        const char *p = (const char *)c + k->off;
        json_t *v = NULL;
        switch (k->kind) {
        case K_STR:
            v = json_string(p);
            break;
        case K_INT:
            v = json_integer(*(const int *)p);
            break;
        case K_BOOL:
            v = json_boolean(*(const int *)p);
            break;
        case K_I64:
            v = json_integer(*(const int64_t *)p);
            break;
        case K_U64:
            v = json_integer((json_int_t) * (const uint64_t *)p);
            break;
        }
        json_object_set_new(o, k->key, v);
    }
    for (int i = 0; i < c->n_stages; i++) json_array_append_new(st, json_string(c->stages[i]));
    json_object_set_new(o, "stages", st);
    return o;
}
