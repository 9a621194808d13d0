/*
 * worker_ckpt.h - the learner's checkpoints: one layout and one format for every learner kind.
 *
 *   RUN_DIR/ckpt-NNNNNNNNNN/     one directory per checkpoint, NNNNNNNNNN its position (the
 *                                global step of an LM/RM learner; a PPO learner's are named
 *                                ppo-ckpt-NNNNNNNNNN, NNNNNNNNNN its iteration)
 *       model/ | policy/ value/  the models, each a Hugging Face directory (hf.h) with the
 *                                tokenizer: LM/RM "model", PPO "policy" and "value"
 *       state.bin                the rest of the learner's state (see below), written last
 *   RUN_DIR/latest               the name of the newest complete checkpoint ("ckpt-...\n");
 *                                ppo-latest for the PPO learner's
 *
 * state.bin (host byte order): "RLHFCKPT" | u32 version (1) | u32 kind | u64 position |
 * u32 n_models | n_models x {char name[16] | u64 n_params | u32 params_crc32c} | u64 len |
 * the learner's payload (len bytes) | u32 CRC-32C of every byte before it. The models' checksums
 * tie the model files to the state: a checkpoint whose models are not the ones its state was
 * saved with does not verify.
 *
 * Writing: the checkpoint's state.bin is removed first, then the models are written, then
 * state.bin and then `latest`, each file atomically (temp, fsync, rename: fs.h), so a crash at
 * any point leaves the newest complete checkpoint loadable. The checkpoint before the newest is
 * kept as a fallback; older ones are removed. Loading takes the one `latest` names if it
 * verifies, else the others newest first. The two kinds' names differ, so one learner that runs
 * both kinds in one run directory keeps two series that never touch; a checkpoint of another
 * kind is never loaded.
 *
 *   ckpt_buf_t b = {0};  ckpt_put(&b, &x, sizeof x); ...
 *   ckpt_model_t ms[] = {{"model", m, tok_dir}};
 *   rc = ckpt_save(run_dir, CKPT_KIND_TRAIN, step, ms, 1, b.p, b.n, who);
 *   ...
 *   rc = ckpt_load_latest(run_dir, CKPT_KIND_TRAIN, names, 1, accept, ctx, who);
 */
#ifndef RLHF_WORKER_CKPT_H
#define RLHF_WORKER_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "nn/gpt.h"

#define CKPT_MAX_MODELS 4
#define CKPT_PATH_LEN   4200

/* Whose state a checkpoint holds (a learner loads only its own kind). */
typedef enum {
    CKPT_KIND_TRAIN = 1, /* the LM / RM learner (worker_learner.c) */
    CKPT_KIND_PPO = 2,   /* the PPO learner (worker_ppo.c) */
} ckpt_kind_t;

/* A payload being built: ckpt_put appends; after an allocation failure `oom` is set and the
 * rest is ignored. Zero it to start; free(b.p) after. */
typedef struct {
    uint8_t *p;
    size_t n, cap;
    int oom;
} ckpt_buf_t;

void ckpt_put(ckpt_buf_t *b, const void *data, size_t n);

/* A payload being read: ckpt_get copies the next n bytes to data, or sets `bad` (and leaves
 * data alone) when fewer remain. */
typedef struct {
    const uint8_t *p, *end;
    int bad;
} ckpt_reader_t;

void ckpt_get(ckpt_reader_t *r, void *data, size_t n);

/* One model of a checkpoint. */
typedef struct {
    const char *name; /* its subdirectory: at most 15 characters */
    const gpt_t *model;
    const char *tok_dir; /* the tokenizer files are copied from this model directory (NULL: none) */
} ckpt_model_t;

/* The directory of checkpoint `pos` of `kind` in run_dir into dir (CKPT_PATH_LEN bytes). */
void ckpt_path(char *dir, const char *run_dir, ckpt_kind_t kind, uint64_t pos);

/*
 * Writes checkpoint `pos` of `kind` in run_dir with models[0..n_models) and the payload, then
 * points run_dir/latest at it and removes checkpoints older than the one before it (best effort:
 * disk space, not correctness). `who` names the learner in the log. If dir is not NULL it gets
 * the checkpoint's directory (CKPT_PATH_LEN bytes). Returns 0 or RL_E* (with the directory in
 * the message); on failure `latest` still names the previous checkpoint.
 */
int ckpt_save(const char *run_dir, ckpt_kind_t kind, uint64_t pos, const ckpt_model_t *models,
              int n_models, const void *payload, size_t len, const char *who, char *dir);

/* A checkpoint as loaded by ckpt_load_latest, handed to the learner's accept function. */
typedef struct {
    char dir[CKPT_PATH_LEN]; /* its directory */
    const char *name;        /* its name, "ckpt-..." or "ppo-ckpt-..." (points into dir) */
    uint64_t pos;
    gpt_t *models[CKPT_MAX_MODELS]; /* in the order of the names asked for: take one by nulling */
    ckpt_reader_t payload;          /* the learner's payload */
    char *buf;                      /* state.bin */
} ckpt_t;

/* Frees what the learner did not take; safe on a zeroed struct. */
void ckpt_free(ckpt_t *c);

/* The learner's part of loading: takes the payload and the models it keeps (nulling them in c),
 * returns 0, or RL_E* when the checkpoint does not fit (the next older one is then tried; the
 * function must then have taken nothing). */
typedef int (*ckpt_accept_fn)(void *ctx, ckpt_t *c);

/*
 * Loads the newest checkpoint of `kind` in run_dir that verifies and that `accept` takes: the one
 * run_dir/latest names, else the others newest first. names[0..n_names) are its models'
 * subdirectories. Each unusable checkpoint is logged (as `who`). Returns 1 (loaded: accept took
 * it), 0 (the run has no checkpoint of this kind) or RL_EFORMAT (it has some, none usable).
 */
int ckpt_load_latest(const char *run_dir, ckpt_kind_t kind, const char *const *names, int n_names,
                     ckpt_accept_fn accept, void *ctx, const char *who);

#endif
