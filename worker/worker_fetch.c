/*
 * worker_fetch.c - a job's spec made local to this host, and a training's result sent home.
 *
 * Across machines nothing is shared but the wire: a spec names its models and datasets by
 * content ("sha256:..." references, common/net/blob.h), which the worker resolves, before the
 * handler runs, into verified copies in its --cache-dir, fetched from the master's artifact
 * server (Welcome.blob_endpoint) when missing. The handler then sees an ordinary spec whose
 * fields are paths: no handler knows where its files came from, and a spec that names paths
 * (one machine, tools, tests) passes through unchanged. A copy is fetched once per cache, and
 * its path is stable, so a worker's model caches (keyed by directory) keep working.
 *
 * A TRAIN job's checkpoint directory is the submitter's name for its training; a learner started
 * with --ckpt-root keeps it under that root on its own disk. A TRAIN job asking export_model
 * has the model of the checkpoint written after it pushed to the master's artifact server and
 * named in TrainOutput.model_ref, so the training's result reaches the master's host.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "net/blob.h"
#include "rlhf.pb-c.h"
#include "worker.h"

/* The strings put into a decoded spec, and the fields they replaced: the unpacker's own strings
 * go back before the message is freed (protobuf-c frees every string field it finds). */
typedef struct {
    char *mine[8], **slot[8], *orig[8];
    int n;
} swaps_t;

static int swap_in(swaps_t *sw, char **field, char *mine) {
    if (!mine) return rl_fail(RL_ENOMEM, "out of memory");
    sw->mine[sw->n] = mine, sw->slot[sw->n] = field, sw->orig[sw->n] = *field;
    sw->n++;
    *field = mine;
    return 1;
}

static void swaps_undo(swaps_t *sw) {
    for (int i = sw->n - 1; i >= 0; i--) *sw->slot[i] = sw->orig[i], free(sw->mine[i]);
    sw->n = 0;
}

/* *field (a string of a decoded spec) replaced by its local path when it is a reference.
 * Returns 1 if replaced, 0 if not, or RL_E*. */
static int localize_field(const worker_artifacts_t *a, char **field, swaps_t *sw) {
    char ref[BLOB_REF_LEN];
    const char *origin = "";
    if (!*field || !blob_name_parse(*field, ref, &origin)) return 0;
    if (!a->cache) return rl_fail(RL_EINVAL, "%s: this worker has no --cache-dir", *field);
    if (!a->blob_ep || !a->blob_ep[0])
        return rl_fail(RL_EIO, "%s: the master named no artifact server (yet)", *field);
    blob_client_t *c = blob_client_new(a->zctx, a->blob_ep);
    if (!c) return rl_fail_ctx(RL_EIO, "artifact server %s: ", a->blob_ep);
    if (a->cancel) blob_client_set_cancel(c, a->cancel);
    char path[4096];
    int rc = blob_resolve(a->cache, c, ref, path, sizeof path);
    blob_client_stats_t st;
    blob_client_stats(c, &st);
    if (a->fetched) *a->fetched += st.bytes_received;
    blob_client_free(&c);
    if (rc < 0) return rl_fail_ctx(rc, "%s: ", origin[0] ? origin : ref);
    worker_names_t *nm = a->names;
    if (nm && origin[0] && nm->n < WORKER_MAX_NAMES) { /* messages name the publisher's file */
        snprintf(nm->local[nm->n], sizeof nm->local[0], "%.1000s", path);
        snprintf(nm->origin[nm->n], sizeof nm->origin[0], "%.1000s", origin);
        nm->n++;
    }
    return swap_in(sw, field, strdup(path));
}

/* TrainSpec.ckpt_dir under --ckpt-root: "/srv/runs/demo/sft/learner" -> ROOT/srv/runs/... */
static int rebase_ckpt(const worker_artifacts_t *a, char **dir, swaps_t *sw) {
    if (!a->ckpt_root || !a->ckpt_root[0] || !*dir || !(*dir)[0]) return 0;
    const char *d = *dir;
    while (*d == '/') d++;
    for (const char *p = d; *p;) { /* never outside the root */
        size_t n = strcspn(p, "/");
        if (n == 2 && !strncmp(p, "..", 2))
            return rl_fail(RL_EINVAL, "train: ckpt_dir '%.200s' leaves --ckpt-root", *dir);
        p += n;
        while (*p == '/') p++;
    }
    size_t len = strlen(a->ckpt_root) + strlen(d) + 2;
    char *p = malloc(len);
    if (p) snprintf(p, len, "%s/%s", a->ckpt_root, d);
    return swap_in(sw, dir, p);
}

#define LOCALIZE(field)                                                                            \
    do {                                                                                           \
        int r_ = localize_field(a, &(field), &sw);                                                 \
        if (r_ < 0) rc = r_;                                                                       \
        changed |= r_ > 0;                                                                         \
    } while (0)

/* Packs msg into a new buffer (*out, *out_len). */
static int repack(const ProtobufCMessage *msg, uint8_t **out, size_t *out_len) {
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (!(*out = malloc(n ? n : 1))) return rl_fail(RL_ENOMEM, "out of memory");
    *out_len = protobuf_c_message_pack(msg, *out);
    return 0;
}

int worker_localize(const worker_artifacts_t *a, int kind, const uint8_t *payload, size_t len,
                    uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    swaps_t sw = {.n = 0};
    int rc = 0, changed = 0;
    ProtobufCMessage *msg = NULL;
    switch (kind) {
    case RLHF__JOB_KIND__JOB_KIND_GENERATE: {
        Rlhf__GenerateSpec *sp = rlhf__generate_spec__unpack(NULL, len, payload);
        if (!sp) return 0; /* the handler says what is wrong with it */
        msg = &sp->base;
        LOCALIZE(sp->model_dir);
        break;
    }
    case RLHF__JOB_KIND__JOB_KIND_SCORE: {
        Rlhf__ScoreSpec *sp = rlhf__score_spec__unpack(NULL, len, payload);
        if (!sp) return 0;
        msg = &sp->base;
        LOCALIZE(sp->rm_dir);
        if (rc == 0) LOCALIZE(sp->ref_dir);
        break;
    }
    case RLHF__JOB_KIND__JOB_KIND_TRAIN: {
        Rlhf__TrainSpec *sp = rlhf__train_spec__unpack(NULL, len, payload);
        if (!sp) return 0;
        msg = &sp->base;
        LOCALIZE(sp->model_dir);
        if (rc == 0) LOCALIZE(sp->tokens_file);
        if (rc == 0) LOCALIZE(sp->pairs_file);
        if (rc == 0 && sp->ppo) LOCALIZE(sp->ppo->policy_dir);
        if (rc == 0 && sp->ppo) LOCALIZE(sp->ppo->value_dir);
        if (rc == 0) {
            int r = rebase_ckpt(a, &sp->ckpt_dir, &sw);
            if (r < 0) rc = r;
            changed |= r > 0;
        }
        break;
    }
    default:
        return 0;
    }
    if (rc == 0 && changed) rc = repack(msg, out, out_len);
    swaps_undo(&sw);
    protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
}

int worker_export(const worker_artifacts_t *a, int kind, const uint8_t *spec, size_t spec_len,
                  uint8_t **out, size_t *out_len) {
    if (kind != RLHF__JOB_KIND__JOB_KIND_TRAIN) return 0;
    Rlhf__TrainSpec *sp = rlhf__train_spec__unpack(NULL, spec_len, spec);
    int want = sp && sp->export_model;
    if (sp) rlhf__train_spec__free_unpacked(sp, NULL);
    if (!want) return 0;
    Rlhf__TrainOutput *o = rlhf__train_output__unpack(NULL, *out_len, *out);
    if (!o) return rl_fail(RL_EPROTO, "train: export: the job's output does not decode");
    int rc = 0, ppo = o->ppo != NULL;
    const char *ck = ppo ? o->ppo->checkpoint : o->checkpoint;
    swaps_t sw = {.n = 0};
    if (o->model_ref && o->model_ref[0]) {
        /* already named (a recorded result) */
    } else if (!ck || !ck[0]) {
        rc = rl_fail(RL_EINVAL, "train: export_model, but the job wrote no checkpoint");
    } else if (!a->cache || !a->blob_ep || !a->blob_ep[0]) {
        rc = rl_fail(RL_EIO, "train: export_model: %s",
                     a->cache ? "no artifact server known" : "this worker has no --cache-dir");
    } else {
        char dir[4200], ref[BLOB_REF_LEN];
        snprintf(dir, sizeof dir, "%.4000s/%s", ck, ppo ? "policy" : "model");
        blob_client_t *c = blob_client_new(a->zctx, a->blob_ep);
        if (!c) rc = rl_fail_ctx(RL_EIO, "artifact server %s: ", a->blob_ep);
        if (c && a->cancel) blob_client_set_cancel(c, a->cancel);
        if (rc == 0 && (rc = blob_publish(c, a->cache, dir, ref)) < 0)
            rl_fail_ctx(rc, "train: exporting %s: ", dir);
        blob_client_free(&c);
        uint8_t *buf = NULL;
        size_t n = 0;
        if (rc == 0 && (rc = swap_in(&sw, &o->model_ref, strdup(ref))) > 0 &&
            (rc = repack(&o->base, &buf, &n)) == 0) {
            free(*out);
            *out = buf, *out_len = n;
        }
    }
    swaps_undo(&sw);
    rlhf__train_output__free_unpacked(o, NULL);
    return rc < 0 ? rc : 0;
}

void worker_names_rewrite(const worker_names_t *nm, char *msg, size_t cap) {
    for (int i = 0; nm && i < nm->n; i++) {
        size_t ll = strlen(nm->local[i]);
        char *at;
        while (ll && (at = strstr(msg, nm->local[i]))) {
            char rest[1024];
            snprintf(rest, sizeof rest, "%s", at + ll);
            snprintf(at, cap - (size_t)(at - msg), "%s%s", nm->origin[i], rest);
        }
    }
}
