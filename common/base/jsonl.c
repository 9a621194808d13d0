/*
 * jsonl.c - JSON Lines reading with file:line errors, atomic JSONL writing.
 */
#include "base/jsonl.h"

#include <stdlib.h>
#include <string.h>

#include "base/err.h"

long jsonl_parse(const char *buf, size_t len, const char *label, jsonl_fn fn, void *ctx) {
    long n = 0;
    size_t pos = 0;
    char where[4200];
    for (int lineno = 1; pos < len; lineno++) {
        const char *line = buf + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - line) : len - pos;
        pos += ll + (nl ? 1 : 0);
        size_t k = 0;
        while (k < ll && strchr(" \t\r", line[k])) k++;
        if (k == ll) continue;
        snprintf(where, sizeof where, "%s:%d", label, lineno);
        json_error_t je;
        json_t *o = json_loadb(line, ll, JSON_REJECT_DUPLICATES, &je);
        if (!o) return rl_fail(RL_EFORMAT, "%s: %s (column %d)", where, je.text, je.column);
        if (!json_is_object(o)) {
            json_decref(o);
            return rl_fail(RL_EFORMAT, "%s: a JSON object is expected", where);
        }
        int rc = fn(ctx, o, where);
        json_decref(o);
        if (rc < 0) return rc;
        n++;
    }
    return n;
}

long jsonl_read(const char *path, jsonl_fn fn, void *ctx) {
    char *buf;
    size_t len;
    int rc = fs_read_all(path, &buf, &len);
    if (rc < 0) return rc;
    long n = jsonl_parse(buf, len, path, fn, ctx);
    free(buf);
    return n;
}

int jsonl_open(jsonl_writer_t *w, const char *path) {
    w->n = 0;
    return fs_atomic_open(&w->f, path);
}

int jsonl_write(jsonl_writer_t *w, json_t *obj) {
    char *s = obj ? json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(obj);
    if (!s) return rl_fail(RL_EINVAL, "%s: cannot serialise a record (NaN or Inf?)", w->f.path);
    size_t len = strlen(s);
    s[len] = '\n'; /* json_dumps leaves room for the NUL we overwrite; we write len + 1 bytes */
    int rc = fs_atomic_write(&w->f, s, len + 1);
    free(s);
    if (rc == 0) w->n++;
    return rc;
}

int jsonl_commit(jsonl_writer_t *w) {
    return fs_atomic_commit(&w->f);
}

void jsonl_abort(jsonl_writer_t *w) {
    fs_atomic_abort(&w->f);
}

int jsonl_get_str(json_t *obj, const char *key, const char *where, const char **out) {
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v))
        return rl_fail(RL_EFORMAT, "%s: %s: %s", where, key,
                       v ? "a string is expected" : "missing");
    *out = json_string_value(v);
    return 0;
}

int jsonl_get_int(json_t *obj, const char *key, const char *where, long long lo, long long hi,
                  long long *out) {
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v))
        return rl_fail(RL_EFORMAT, "%s: %s: %s", where, key,
                       v ? "an integer is expected" : "missing");
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return rl_fail(RL_EFORMAT, "%s: %s: %lld is outside [%lld, %lld]", where, key, x, lo, hi);
    *out = x;
    return 0;
}

int jsonl_get_num(json_t *obj, const char *key, const char *where, double *out) {
    json_t *v = json_object_get(obj, key);
    if (!json_is_number(v))
        return rl_fail(RL_EFORMAT, "%s: %s: %s", where, key,
                       v ? "a number is expected" : "missing");
    *out = json_number_value(v);
    return 0;
}
