/*
 * worker_ckpt.c - the learner's checkpoints: writing, pruning and loading the newest that
 * verifies (see worker_ckpt.h for the layout and the format).
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "base/err.h"
#include "base/fs.h"
#include "net/wire.h"
#include "nn/hf.h"
#include "worker_ckpt.h"

#define MAGIC      "RLHFCKPT"
#define VERSION    1u
#define NAME_LEN   16
#define HEAD_LEN   (8 + 4 + 4 + 8 + 4) /* magic, version, kind, position, n_models */
#define MODEL_LEN  (NAME_LEN + 8 + 4)  /* name, n_params, params_crc32c */
#define STATE_FILE "state.bin"

static void ckpt_log(const char *who, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ckpt_log(const char *who, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    wire_logv(who, fmt, ap);
    va_end(ap);
}

void ckpt_put(ckpt_buf_t *b, const void *data, size_t n) {
    if (b->oom || n == 0) return;
    if (b->n + n > b->cap) {
        /* doubling for the small fields; a large piece (the moments) gets just its size */
        size_t nc = b->cap * 2 > b->n + n ? b->cap * 2 : b->n + n;
        uint8_t *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np, b->cap = nc;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

void ckpt_get(ckpt_reader_t *r, void *data, size_t n) {
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return;
    }
    if (n) memcpy(data, r->p, n);
    r->p += n;
}

static uint32_t params_crc(const gpt_t *m) {
    return crc32c(0, m->params_mem, m->num_params * sizeof(float));
}

/* ---- the run's checkpoints ------------------------------------------------------------------ */

/* Each kind has its own names, so one learner that runs both kinds in one run directory keeps
 * two series of checkpoints that never overwrite each other. */
static const char *kind_prefix(ckpt_kind_t kind) {
    return kind == CKPT_KIND_PPO ? "ppo-ckpt-" : "ckpt-";
}

static const char *kind_latest(ckpt_kind_t kind) {
    return kind == CKPT_KIND_PPO ? "ppo-latest" : "latest";
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names of the run's checkpoint directories of `kind`, sorted (the position is zero-padded, so
 * by position). Returns their number (*names malloc'ed, each entry too; 0: none or no memory). */
static int ckpt_list(const char *run_dir, ckpt_kind_t kind, char ***names) {
    *names = NULL;
    DIR *d = opendir(run_dir);
    if (!d) return 0;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *pre = kind_prefix(kind);
        if (strncmp(e->d_name, pre, strlen(pre)) || strchr(e->d_name, '.')) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **nn = realloc(*names, (size_t)cap * sizeof *nn);
            if (!nn) break;
            *names = nn;
        }
        if (!((*names)[n] = strdup(e->d_name))) break;
        n++;
    }
    closedir(d);
    if (n) qsort(*names, (size_t)n, sizeof **names, name_cmp);
    return n;
}

static void names_free(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* The kind in the head of checkpoint `name`'s state file, or 0 when it has none readable (a
 * partial checkpoint). */
static int kind_of(const char *run_dir, const char *name) {
    char path[CKPT_PATH_LEN + 64];
    snprintf(path, sizeof path, "%s/%s/" STATE_FILE, run_dir, name);
    FILE *f = fopen(path, "rb");
    uint8_t head[16];
    size_t got = f ? fread(head, 1, sizeof head, f) : 0;
    if (f) fclose(f);
    uint32_t kind = 0, version = 0;
    if (got != sizeof head || memcmp(head, MAGIC, 8)) return 0;
    memcpy(&version, head + 8, 4);
    memcpy(&kind, head + 12, 4);
    return version == VERSION ? (int)kind : 0;
}

/* ---- writing -------------------------------------------------------------------------------- */

/* Removes the checkpoints of `kind` (or partial ones) older than the one before `cur`. */
static void prune(const char *run_dir, ckpt_kind_t kind, const char *cur, const char *who) {
    char **names, path[CKPT_PATH_LEN + 64];
    int n = ckpt_list(run_dir, kind, &names), at = -1;
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], cur)) at = i;
    int kept = 0; /* of this kind, before cur: the first one stays as the fallback */
    for (int i = at - 1; i >= 0; i--) {
        int k = kind_of(run_dir, names[i]);
        if (k && k != (int)kind) continue; /* another learner's: not ours to remove */
        if (k && !kept) {
            kept = 1;
            continue;
        }
        snprintf(path, sizeof path, "%s/%s", run_dir, names[i]);
        if (fs_remove_tree(path) < 0) ckpt_log(who, "%s", rl_errmsg());
    }
    names_free(names, n);
}

void ckpt_path(char *dir, const char *run_dir, ckpt_kind_t kind, uint64_t pos) {
    snprintf(dir, CKPT_PATH_LEN, "%s/%s%010" PRIu64, run_dir, kind_prefix(kind), pos);
}

int ckpt_save(const char *run_dir, ckpt_kind_t kind, uint64_t pos, const ckpt_model_t *models,
              int n_models, const void *payload, size_t len, const char *who, char *dir_out) {
    char name[32], dir[CKPT_PATH_LEN], path[CKPT_PATH_LEN + 64];
    if (n_models < 0 || n_models > CKPT_MAX_MODELS)
        return rl_fail(RL_EINVAL, "checkpoint: %d models", n_models);
    ckpt_path(dir, run_dir, kind, pos);
    snprintf(name, sizeof name, "%s", strrchr(dir, '/') + 1);
    if (dir_out) snprintf(dir_out, CKPT_PATH_LEN, "%s", dir);
    /* while its models are rewritten the directory holds no state file: it is not complete */
    snprintf(path, sizeof path, "%s/" STATE_FILE, dir);
    int rc = fs_mkdir_p(dir);
    if (rc == 0 && unlink(path) < 0 && errno != ENOENT)
        rc = rl_fail_errno(RL_EIO, errno, "%s: %s", path, strerror(errno));
    ckpt_buf_t b = {0};
    uint32_t u32[2] = {VERSION, (uint32_t)kind}, nm = (uint32_t)n_models;
    ckpt_put(&b, MAGIC, 8);
    ckpt_put(&b, u32, sizeof u32);
    ckpt_put(&b, &pos, 8);
    ckpt_put(&b, &nm, 4);
    for (int i = 0; rc == 0 && i < n_models; i++) {
        const ckpt_model_t *m = &models[i];
        char sub[CKPT_PATH_LEN + 64], mname[NAME_LEN] = {0};
        if (strlen(m->name) >= NAME_LEN) {
            rc = rl_fail(RL_EINVAL, "checkpoint: model name '%s' too long", m->name);
            break;
        }
        snprintf(sub, sizeof sub, "%s/%s", dir, m->name);
        rc = hf_save(m->model, sub);
        /* the tokenizer travels with the model, so each is a usable model directory */
        if (rc == 0 && m->tok_dir && m->tok_dir[0] && strcmp(m->tok_dir, sub))
            rc = hf_copy_tokenizer(m->tok_dir, sub);
        memcpy(mname, m->name, strlen(m->name));
        uint64_t np = m->model->num_params;
        uint32_t crc = params_crc(m->model);
        ckpt_put(&b, mname, NAME_LEN);
        ckpt_put(&b, &np, 8);
        ckpt_put(&b, &crc, 4);
    }
    uint64_t len64 = len;
    ckpt_put(&b, &len64, 8);
    if (rc == 0 && b.oom) rc = rl_fail(RL_ENOMEM, "out of memory");
    /* head, payload and CRC streamed into the file: the payload (the AdamW moments, as large as
     * the models) is not copied once more */
    if (rc == 0) {
        uint32_t crc = crc32c(crc32c(0, b.p, b.n), payload, len);
        fs_atomic_t w = {.fd = -1};
        rc = fs_atomic_open(&w, path);
        if (rc == 0 && (rc = fs_atomic_write(&w, b.p, b.n)) == 0 &&
            (rc = fs_atomic_write(&w, payload, len)) == 0 &&
            (rc = fs_atomic_write(&w, &crc, 4)) == 0)
            rc = fs_atomic_commit(&w);
        else
            fs_atomic_abort(&w); /* nothing half-written stays behind */
    }
    free(b.p);
    /* the checkpoint is complete: only now does `latest` name it */
    char line[40];
    snprintf(line, sizeof line, "%s\n", name);
    snprintf(path, sizeof path, "%s/%s", run_dir, kind_latest(kind));
    if (rc == 0) rc = fs_write_atomic(path, line, strlen(line));
    if (rc < 0) return rl_fail_ctx(rc, "checkpoint %s", dir);
    prune(run_dir, kind, name, who);
    return 0;
}

/* ---- loading -------------------------------------------------------------------------------- */

void ckpt_free(ckpt_t *c) {
    for (int i = 0; i < CKPT_MAX_MODELS; i++) gpt_destroy(&c->models[i]);
    free(c->buf);
    c->buf = NULL;
}

/* Reads and verifies checkpoint `name` of the run into c (zeroed): its state file, then its
 * models. Returns 0, 1 (a checkpoint of another kind) or RL_EFORMAT / RL_E*. */
static int ckpt_read(const char *run_dir, const char *name, ckpt_kind_t kind,
                     const char *const *names, int n_names, ckpt_t *c) {
    char path[CKPT_PATH_LEN + 64];
    snprintf(c->dir, sizeof c->dir, "%s/%s", run_dir, name);
    c->name = c->dir + strlen(c->dir) - strlen(name);
    snprintf(path, sizeof path, "%s/" STATE_FILE, c->dir);
    size_t len = 0;
    int rc = fs_read_all(path, &c->buf, &len);
    if (rc < 0) return rc;
    const uint8_t *b = (const uint8_t *)c->buf;
    uint32_t crc = 0, u32[2] = {0, 0}, nm = 0;
    if (len < HEAD_LEN + 12) return rl_fail(RL_EFORMAT, "%s: truncated", path);
    memcpy(&crc, b + len - 4, 4);
    if (memcmp(b, MAGIC, 8) || crc32c(0, b, len - 4) != crc)
        return rl_fail(RL_EFORMAT, "%s: bad magic or checksum", path);
    ckpt_reader_t r = {b + 8, b + len - 4, 0};
    ckpt_get(&r, u32, sizeof u32);
    ckpt_get(&r, &c->pos, 8);
    ckpt_get(&r, &nm, 4);
    if (u32[0] != VERSION) return rl_fail(RL_EFORMAT, "%s: version %u", path, u32[0]);
    if (u32[1] != (uint32_t)kind) return 1;
    if (nm != (uint32_t)n_names)
        return rl_fail(RL_EFORMAT, "%s: %u models, %d expected", path, nm, n_names);
    for (int i = 0; i < n_names; i++) {
        char mname[NAME_LEN + 1] = {0}, sub[CKPT_PATH_LEN + 64];
        uint64_t np = 0;
        uint32_t pcrc = 0;
        ckpt_get(&r, mname, NAME_LEN);
        ckpt_get(&r, &np, 8);
        ckpt_get(&r, &pcrc, 4);
        if (r.bad || strcmp(mname, names[i]))
            return rl_fail(RL_EFORMAT, "%s: model %d is not '%s'", path, i, names[i]);
        snprintf(sub, sizeof sub, "%s/%s", c->dir, names[i]);
        if (!(c->models[i] = hf_load(sub))) return rl_fail_ctx(RL_EFORMAT, "%s", sub);
        if (c->models[i]->num_params != np || params_crc(c->models[i]) != pcrc)
            return rl_fail(RL_EFORMAT,
                           "%s: the model's parameters are not the ones it was saved with", sub);
    }
    uint64_t plen = 0;
    ckpt_get(&r, &plen, 8);
    if (r.bad || plen != (uint64_t)(r.end - r.p))
        return rl_fail(RL_EFORMAT, "%s: the payload's length does not match", path);
    c->payload = r;
    return 0;
}

/* Tries checkpoint `name`: 1 loaded and taken, 0 another kind's, RL_E* unusable (logged). */
static int ckpt_try(const char *run_dir, const char *name, ckpt_kind_t kind,
                    const char *const *names, int n_names, ckpt_accept_fn accept, void *ctx,
                    const char *who, const char *then) {
    ckpt_t c;
    memset(&c, 0, sizeof c);
    int rc = ckpt_read(run_dir, name, kind, names, n_names, &c);
    if (rc == 0) rc = accept(ctx, &c);
    ckpt_free(&c);
    if (rc == 1) return 0;
    if (rc < 0) {
        ckpt_log(who, "checkpoint %s unusable (%s)%s", name, rl_errmsg(), then);
        return rc;
    }
    return 1;
}

int ckpt_load_latest(const char *run_dir, ckpt_kind_t kind, const char *const *names, int n_names,
                     ckpt_accept_fn accept, void *ctx, const char *who) {
    char path[CKPT_PATH_LEN + 64], *cur = NULL, first[64] = "";
    size_t len;
    int unusable = 0, rc;
    snprintf(path, sizeof path, "%s/%s", run_dir, kind_latest(kind));
    if (fs_read_all(path, &cur, &len) == 0) {
        snprintf(first, sizeof first, "%.*s", (int)strcspn(cur, "\n"), cur);
        free(cur);
        if (first[0]) {
            rc = ckpt_try(run_dir, first, kind, names, n_names, accept, ctx, who,
                          ": trying older ones");
            if (rc == 1) return 1;
            unusable += rc < 0;
        }
    }
    char **list;
    int n = ckpt_list(run_dir, kind, &list);
    rc = 0;
    for (int i = n - 1; i >= 0 && rc != 1; i--) {
        if (!strcmp(list[i], first)) continue;
        rc = ckpt_try(run_dir, list[i], kind, names, n_names, accept, ctx, who, "");
        unusable += rc < 0;
    }
    names_free(list, n);
    if (rc == 1) return 1;
    if (unusable) return rl_fail(RL_EFORMAT, "%s: no usable checkpoint", run_dir);
    return 0;
}
