/*
 * worker_learner.c - the learner role: TRAIN jobs, with the gradient computed on S shards.
 *
 *   rlhf-worker --role learner --master EP --run-dir DIR [--shard 0/S --shard-endpoint EP]
 *   rlhf-worker --role learner --shard k/S --shard-endpoint EP            (k = 1 .. S-1)
 *
 * Shard 0 is the learner proper: the only learner that registers with the master, the owner of
 * the parameters, the AdamW moments and the step count, and of the checkpoints in its run
 * directory. Shards 1..S-1 hold a copy of the parameters and nothing else; they connect to a
 * ROUTER that shard 0 binds on --shard-endpoint (its bound address is written to
 * RUN_DIR/learner.json) and beat every heartbeat interval. The master never sees them.
 *
 * One optimizer step (train step `k` of job `j`; each try at it is a new round id):
 *   1. shard 0 waits until every shard is present (heard within the liveness window);
 *   2. it sends each shard k its contiguous slice of the B rows (ShardStep, with the tokens, and
 *      the parameter arena when the shard does not hold the parameters the step is taken at);
 *   3. every shard, shard 0 included, computes the gradient of its slice's mean loss scaled by
 *      (scored tokens of the slice) / (scored tokens of the batch), so that the sum over shards
 *      is the gradient of the full batch's mean loss; shards 1..S-1 return it (ShardGrad);
 *   4. shard 0 adds the gradients in shard order 0, 1, .., S-1 (a fixed order: the result does
 *      not depend on who answered first), clips, steps AdamW and sends the new parameters to
 *      every shard (ShardUpdate; acknowledged with their checksum after the job's last step).
 * Nothing is applied before every gradient of the round is in. A shard that dies or stays silent
 * past the liveness window mid-round (or comes back as a new process) abandons the round: its
 * partial sums are dropped, shard 0 waits up to --shard-wait-ms for the shard to be back and
 * re-runs the step under a new round id (a late gradient of the old round is dropped). If the
 * shard does not come back, the job fails: shard 0 drops its unsaved progress (it reloads the
 * last checkpoint) and the master re-dispatches the job, which then starts from that state.
 *
 * Kinds. LM: B windows of T+1 tokens per step, drawn from a token file, one inline batch used
 * every step, or one masked batch per step (step_inputs/step_targets, target -1 untrained: what
 * `rlhf sft --learner-shards` sends); a shard's slice is rows of the batch. RM: the reward model
 * on a pairs file (common/align/rm.h): every shard loads the same file with the same tokenizer
 * (deterministic, so a global item index means the same thing everywhere), shard 0 draws the
 * step's items from the training split's epoch orders (rm_split, rm_epoch_order: those of
 * `rlhf train-rm`) and sends each shard a contiguous slice of them as its "inputs" rows (T = 1)
 * with a frame "rm" (the job's RM settings, a packed TrainSpec); every shard computes rm_grad
 * with scale 1/(items in the step) and returns its gradient after a frame "stats" {pairs ordered
 * correctly, pairs}. The sum, clipping and AdamW are those of LM (= rm_update), so one shard
 * gives exactly the parameters of the in-process command at the same thread count. Without a
 * checkpoint an RM learner starts from rm_load(model_dir): a new scalar head if it has none.
 *
 * Jobs are idempotent at step granularity: a job starting at global step k runs only if the
 * learner is at step k; a job the learner has already applied (it is at k + n_steps and the
 * job id is that of its last job) returns the recorded result without running anything. After
 * each job shard 0 writes a checkpoint RUN_DIR/ckpt-STEP/ (the model, in the Hugging Face
 * layout, and optim.bin: step, job, AdamW moments, the job's result, CRC-32C) and then points
 * RUN_DIR/latest at it, both atomically; a restarted learner resumes from the newest checkpoint
 * that verifies. Per-step figures go to RUN_DIR/metrics.jsonl.
 *
 * Threads: shard 0's ROUTER is created by the main thread before any job and then used only by
 * the job thread (one job at a time, started and joined by the main thread). A shard k > 0 has
 * a main thread (socket, beats) and a compute thread per slice.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "nn/adamw.h"
#include "nn/data.h"
#include "base/crc32c.h"
#include "base/err.h"
#include "base/fs.h"
#include "nn/gpt.h"
#include "nn/hf.h"
#include "nn/ops.h"
#include "align/rm.h"
#include "base/rng.h"
#include "nn/tok.h"
#include "nn/train.h"
#include "net/wire.h"
#include "worker.h"
#include "net/wsync.h"

/* Arenas travel in frames of at most 16 MiB (--shard-chunk-kib: less); a frame size limit of
 * that plus room for envelopes. */
#define CHUNK_FLOATS  ((size_t)4 << 20)
#define MAX_MSG_BYTES ((int64_t)(CHUNK_FLOATS * sizeof(float)) + (2 << 20))
/* Rounds tried for one step before the job fails (each lost shard or stale copy costs one). */
#define MAX_ROUNDS 8
#define CKPT_MAGIC "RLHFLRN1"
#define PATH_LEN   4096

static char who[96] = "learner";
static size_t chunk_floats = CHUNK_FLOATS;

static void llog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void llog(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    wire_logv(who, fmt, ap);
    va_end(ap);
}

/* ---- tensor frames -------------------------------------------------------------------------- */

/* The raw frames of one outgoing message and their headers. */
typedef struct {
    Rlhf__TensorHeader th[WIRE_MAX_FRAMES];
    Rlhf__TensorHeader *pth[WIRE_MAX_FRAMES];
    int64_t shape[WIRE_MAX_FRAMES][2];
    const void *data[WIRE_MAX_FRAMES];
    size_t len[WIRE_MAX_FRAMES];
    int n;
} frames_t;

static int frames_add(frames_t *f, const char *name, Rlhf__DType dt, const void *data,
                      size_t nbytes, int64_t d0, int64_t d1) {
    if (f->n >= WIRE_MAX_FRAMES - 1)
        return rl_fail(RL_EUNSUPPORTED, "more than %d tensor frames in one message",
                       WIRE_MAX_FRAMES - 1);
    int i = f->n++;
    f->shape[i][0] = d0;
    f->shape[i][1] = d1;
    wire_tensor_describe(&f->th[i], name, dt, f->shape[i], d1 >= 0 ? 2 : 1, data, nbytes);
    f->pth[i] = &f->th[i];
    f->data[i] = data;
    f->len[i] = nbytes;
    return 0;
}

/* Appends an arena of n floats as frames of at most chunk_floats, all named `name`. */
static int frames_add_arena(frames_t *f, const char *name, const float *x, size_t n) {
    for (size_t off = 0; off < n; off += chunk_floats) {
        size_t k = n - off < chunk_floats ? n - off : chunk_floats;
        int rc =
            frames_add(f, name, RLHF__DTYPE__DTYPE_F32, x + off, k * sizeof(float), (int64_t)k, -1);
        if (rc < 0) return rc;
    }
    return 0;
}

/* Appends the frames of `src` (already described: their checksums are not computed again). */
static int frames_append(frames_t *f, const frames_t *src) {
    if (f->n + src->n > WIRE_MAX_FRAMES - 1)
        return rl_fail(RL_EUNSUPPORTED, "more than %d tensor frames in one message",
                       WIRE_MAX_FRAMES - 1);
    for (int i = 0; i < src->n; i++, f->n++) {
        f->th[f->n] = src->th[i]; /* its shape still points into src, which outlives the send */
        f->pth[f->n] = &f->th[f->n];
        f->data[f->n] = src->data[i];
        f->len[f->n] = src->len[i];
    }
    return 0;
}

static int frames_send(void *sock, const void *rid, size_t rid_len, Rlhf__Envelope *env,
                       frames_t *f, int flags) {
    env->frames = f ? f->pth : NULL;
    env->n_frames = f ? (size_t)f->n : 0;
    return wire_send(sock, rid, rid_len, env, f ? f->data : NULL, f ? f->len : NULL, f ? f->n : 0,
                     flags);
}

/* Reads an arena of n floats sent as frames named `name` (envelope frames [first, end)) into
 * dst: copied (add = 0) or added element by element (add = 1). Frames received without copying
 * may be unaligned, hence the memcpy per element. RL_EPROTO if they do not add up to n. */
static int arena_read(const wire_msg_t *m, const Rlhf__Envelope *env, size_t first,
                      const char *name, float *dst, size_t n, int add) {
    size_t off = 0;
    for (size_t i = first; i < env->n_frames; i++) {
        const Rlhf__TensorHeader *th = env->frames[i];
        size_t bytes = wire_frame_size(m, (int)i + 1);
        const uint8_t *p = wire_frame_data(m, (int)i + 1);
        if (!th->name || strcmp(th->name, name) || th->dtype != RLHF__DTYPE__DTYPE_F32 ||
            bytes % sizeof(float) || off + bytes / sizeof(float) > n)
            return rl_fail(RL_EPROTO, "frame %zu: not a piece of the %zu-float '%s' arena", i, n,
                           name);
        size_t k = bytes / sizeof(float);
        if (add) {
            for (size_t j = 0; j < k; j++) {
                float v;
                memcpy(&v, p + j * sizeof(float), sizeof v);
                dst[off + j] += v;
            }
        } else if (k) {
            memcpy(dst + off, p, bytes);
        }
        off += k;
    }
    if (off != n) return rl_fail(RL_EPROTO, "'%s': %zu of %zu floats sent", name, off, n);
    return 0;
}

static uint32_t params_crc(const gpt_t *m) {
    return crc32c(0, m->params_mem, m->num_params * sizeof(float));
}

/* The CRC-32C of the arena carried by envelope frames [first, end), from their headers
 * (combined, without another pass over the data). */
static uint32_t frames_crc(const Rlhf__Envelope *env, size_t first) {
    uint32_t crc = 0;
    for (size_t i = first; i < env->n_frames; i++)
        crc = i == first ? env->frames[i]->crc32c
                         : crc32c_combine(crc, env->frames[i]->crc32c, env->frames[i]->nbytes);
    return crc;
}

/* ---- the math of one shard ------------------------------------------------------------------ */

/* Rows [*b0, *b1) of a batch of B rows that shard i of S computes: contiguous, balanced. */
static void slice_of(int B, int S, int i, int *b0, int *b1) {
    *b0 = (int)((long)B * i / S);
    *b1 = (int)((long)B * (i + 1) / S);
}

/*
 * The gradient of `scale` times the mean next-token loss of inputs/targets (rows,T) into the
 * model's gradient arena (zeroed first); *loss gets the scaled loss. rows = 0 or scale = 0 (a
 * slice with nothing to score) leaves a zero gradient. With scale 1 this is exactly the
 * forward/backward of train_lm_step, so one shard computes what `rlhf train-lm` computes.
 */
static int slice_grad(gpt_t *m, const int *in, const int *tg, int rows, int T, float scale,
                      float *loss) {
    int rc = gpt_grads_alloc(m);
    if (rc < 0) return rc;
    gpt_zero_grad(m);
    *loss = 0;
    if (rows == 0 || scale == 0) return 0;
    float l;
    rc = gpt_forward(m, in, rows, T, GPT_FWD_LOGITS);
    if (rc == 0) rc = gpt_lm_loss(m, tg, NULL, &l, 1);
    if (rc == 0) rc = gpt_backward(m, 1, NULL);
    if (rc < 0) return rc;
    if (scale != 1.0f)
        for (size_t i = 0; i < m->num_params; i++) m->grads_mem[i] *= scale;
    *loss = l * scale;
    return 0;
}

/* ---- reward-model jobs: the pairs file and one slice's gradient ------------------------------ */

/* The pairs file of RM jobs, loaded (and tokenised) once per process: every shard loads the same
 * file with the same tokenizer and max_len, so a global item index means the same thing in each
 * (rm_data_load is deterministic). */
static struct {
    char *key; /* pairs file, tokenizer directory and max_len it was loaded with */
    rm_data_t d;
    int pad; /* the tokenizer's end-of-text id: micro-batch padding */
} RMD;

static void rm_cache_free(void) {
    rm_data_free(&RMD.d);
    free(RMD.key);
    RMD.key = NULL;
}

/* The data of an RM spec for a model of `vocab` ids. Returns 0 or RL_E* (bad file: its line). */
static int rm_cache_get(const Rlhf__TrainSpec *sp, int vocab) {
    char key[3 * PATH_LEN];
    snprintf(key, sizeof key, "%s\n%s\n%u", sp->pairs_file, sp->model_dir, sp->seq_len);
    if (RMD.key && !strcmp(RMD.key, key)) return 0;
    rm_cache_free();
    tok_t *tok = tok_load(sp->model_dir);
    if (!tok) return rl_fail_ctx(RL_EINVAL, "rm: %s: tokenizer: ", sp->model_dir);
    int rc = 0;
    if (tok_vocab_size(tok) > vocab)
        rc = rl_fail(RL_EINVAL, "rm: %s: the tokenizer has %d ids, the model only %d",
                     sp->model_dir, tok_vocab_size(tok), vocab);
    else if (tok_eot(tok) < 0)
        rc = rl_fail(RL_EINVAL, "rm: %s: the tokenizer has no <|endoftext|>", sp->model_dir);
    if (rc == 0) rc = rm_data_load(sp->pairs_file, tok, (int)sp->seq_len, &RMD.d);
    RMD.pad = tok_eot(tok);
    tok_destroy(&tok);
    if (rc == 0 && !(RMD.key = strdup(key))) rc = rl_fail(RL_ENOMEM, "rm: out of memory");
    if (rc < 0) rm_cache_free();
    return rc;
}

static rm_opts_t rm_opts_of(const Rlhf__TrainSpec *sp) {
    rm_opts_t o = {sp->rm_pairwise ? RM_ITEMS_PAIRS : RM_ITEMS_GROUPS, sp->rm_margin, sp->rm_center,
                   sp->micro > 0 ? (int)sp->micro : 16, RMD.pad};
    return o;
}

/* The gradient of `scale` times the summed losses of items[0..n) into the model's gradient
 * arena (zeroed first): with scale = 1/(items in the step) the shards' sum is the gradient of the
 * step's mean loss, and with one shard exactly what rm_step computes. stats = {pairs ordered
 * correctly, pairs}; *loss the scaled loss. */
static int rm_slice_grad(gpt_t *m, const rm_opts_t *o, const int *items, int n, float scale,
                         float *loss, float *stats) {
    int rc = gpt_grads_alloc(m);
    if (rc < 0) return rc;
    gpt_zero_grad(m);
    rm_grad_stats_t gs = {0};
    if (n > 0 && (rc = rm_grad(m, &RMD.d, items, n, o, scale, &gs)) < 0) return rc;
    *loss = (float)gs.loss;
    stats[0] = (float)gs.correct;
    stats[1] = (float)gs.pairs;
    return 0;
}

/* ---- shard 0: state ------------------------------------------------------------------------- */

typedef struct {
    uint8_t rid[WIRE_MAX_RID];
    size_t rid_len;
    int pid;
    int known;        /* it has beaten at least once */
    double last_seen; /* when we last read a message of it */
    uint32_t crc;     /* the parameters we believe it holds; 0: unknown */
    /* the round in progress */
    int waiting; /* we sent it a ShardStep */
    int lost;    /* it died, went silent or restarted: the round is void */
    int stale;   /* it lacks the parameters: the round is re-run with them attached */
    int fail;    /* it failed the slice with this RL_E* code: the job fails */
    char err[256];
    int acked;
    wire_msg_t msg; /* its ShardGrad, kept until the sum */
    Rlhf__Envelope *env;
} peer_t;

static struct {
    int started;
    int index, n_shards, hb_ms, liveness, wait_ms;
    char run_dir[PATH_LEN];
    void *zctx, *sock;
    peer_t peers[WORKER_LEARNER_MAX_SHARDS];
    uint64_t round, round_base;
    frames_t fr; /* a message being built (job thread only) */
    frames_t pf; /* the parameter arena described, for pf_crc */
    uint32_t pf_crc;
    int pf_valid;
    /* training state */
    int loaded;
    gpt_t *model;
    train_t tr;        /* tr.step is the learner's global step count */
    long ckpt_step;    /* step of the checkpoint it was loaded from or last saved; -1: none */
    uint64_t last_job; /* job of the checkpoint */
    uint8_t *result;   /* that job's packed TrainOutput */
    size_t result_len;
    uint32_t crc; /* of the parameters */
    char src_dir[PATH_LEN +
                 100]; /* where the model came from (tokenizer files are copied from it) */
} L;

static double live_ms(void) {
    return (double)L.hb_ms * L.liveness;
}

static void state_drop(void) {
    train_free(&L.tr);
    memset(&L.tr, 0, sizeof L.tr);
    gpt_destroy(&L.model);
    free(L.result);
    L.result = NULL;
    L.result_len = 0;
    L.loaded = 0;
    L.pf_valid = 0;
}

/* ---- shard 0: checkpoints ------------------------------------------------------------------- */

/*
 * optim.bin (host byte order):
 *   "RLHFLRN1" | u64 step | u64 job_id | u64 n_params | i64 adam_t | u32 params_crc32c |
 *   u32 result_len | result (packed TrainOutput) | moments (2 n_params f32) | u32 crc32c of all
 *   the bytes before it
 */
#define OPT_HEAD (8 + 8 * 4 + 4 * 2)

static int ckpt_remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    char p[PATH_LEN + 700];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    return rmdir(dir);
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names of the ckpt-* directories of the run, sorted (the step is zero-padded, so by step).
 * Returns their number (*names malloc'ed, each entry too) or RL_ENOMEM. */
static int ckpt_list(char ***names) {
    *names = NULL;
    DIR *d = opendir(L.run_dir);
    if (!d) return 0;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "ckpt-", 5) || strchr(e->d_name, '.')) continue;
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

static int ckpt_save(void) {
    char name[64], dir[PATH_LEN + 80], path[PATH_LEN + 200];
    snprintf(name, sizeof name, "ckpt-%010ld", L.tr.step);
    snprintf(dir, sizeof dir, "%s/%s", L.run_dir, name);
    int rc = hf_save(L.model, dir);
    if (rc == 0 && L.src_dir[0] && strcmp(L.src_dir, dir)) rc = hf_copy_tokenizer(L.src_dir, dir);
    if (rc < 0) return rl_fail_ctx(rc, "checkpoint %s: ", dir);
    size_t n = L.model->num_params, mom = 2 * n * sizeof(float);
    size_t len = OPT_HEAD + L.result_len + mom + 4;
    uint8_t *b = malloc(len), *p = b;
    if (!b) return rl_fail(RL_ENOMEM, "checkpoint: out of memory");
    uint64_t u[3] = {(uint64_t)L.tr.step, L.last_job, (uint64_t)n};
    int64_t t = L.tr.opt.t;
    uint32_t w[2] = {L.crc, (uint32_t)L.result_len};
    memcpy(p, CKPT_MAGIC, 8), p += 8;
    memcpy(p, u, sizeof u), p += sizeof u;
    memcpy(p, &t, sizeof t), p += sizeof t;
    memcpy(p, w, sizeof w), p += sizeof w;
    if (L.result_len) memcpy(p, L.result, L.result_len), p += L.result_len;
    memcpy(p, L.tr.opt.moments, mom), p += mom;
    uint32_t crc = crc32c(0, b, (size_t)(p - b));
    memcpy(p, &crc, 4);
    snprintf(path, sizeof path, "%s/optim.bin", dir);
    rc = fs_write_atomic(path, b, len);
    free(b);
    /* the checkpoint is complete: only now does `latest` name it */
    snprintf(path, sizeof path, "%s/latest", L.run_dir);
    char line[80];
    snprintf(line, sizeof line, "%s\n", name);
    if (rc == 0) rc = fs_write_atomic(path, line, strlen(line));
    if (rc < 0) return rl_fail_ctx(rc, "checkpoint %s: ", dir);
    L.ckpt_step = L.tr.step;
    /* keep this one and the one before it (the fallback should this one be found corrupt) */
    char **names;
    int k = ckpt_list(&names), cur = -1;
    for (int i = 0; i < k; i++)
        if (!strcmp(names[i], name)) cur = i;
    for (int i = 0; i < cur - 1; i++) {
        snprintf(path, sizeof path, "%s/%s", L.run_dir, names[i]);
        ckpt_remove_dir(path);
    }
    names_free(names, k);
    return 0;
}

/* Loads checkpoint directory `name` of the run into the state. Returns 0 or RL_E*. */
static int ckpt_load_dir(const char *name) {
    char dir[PATH_LEN + 80], path[PATH_LEN + 200];
    snprintf(dir, sizeof dir, "%s/%s", L.run_dir, name);
    gpt_t *m = hf_load(dir);
    if (!m) return rl_fail_ctx(RL_EFORMAT, "%s: ", dir);
    char *b = NULL;
    size_t len = 0, n = m->num_params, mom = 2 * n * sizeof(float);
    snprintf(path, sizeof path, "%s/optim.bin", dir);
    int rc = fs_read_all(path, &b, &len);
    uint64_t u[3] = {0, 0, 0};
    int64_t t = 0;
    uint32_t w[2] = {0, 0}, crc = 0;
    if (rc == 0 && len < OPT_HEAD + 4) rc = rl_fail(RL_EFORMAT, "%s: truncated", path);
    if (rc == 0) {
        memcpy(&crc, b + len - 4, 4);
        memcpy(u, b + 8, sizeof u);
        memcpy(&t, b + 8 + sizeof u, sizeof t);
        memcpy(w, b + 8 + sizeof u + sizeof t, sizeof w);
        if (memcmp(b, CKPT_MAGIC, 8) || crc32c(0, b, len - 4) != crc)
            rc = rl_fail(RL_EFORMAT, "%s: bad magic or checksum", path);
        else if (u[2] != n || len != OPT_HEAD + (size_t)w[1] + mom + 4)
            rc = rl_fail(RL_EFORMAT, "%s: sized for %" PRIu64 " parameters, the model has %zu",
                         path, u[2], n);
        else if (params_crc(m) != w[0])
            rc = rl_fail(RL_EFORMAT,
                         "%s: the model's parameters are not the ones it was saved with", path);
    }
    adamw_sched_t sched = {ADAMW_SCHED_CONSTANT, 1e-3f, 0, 0, 0}; /* each job sets its own */
    if (rc == 0) rc = train_init(&L.tr, m, &sched, 0, 0);
    if (rc == 0 && w[1] && !(L.result = malloc(w[1]))) rc = rl_fail(RL_ENOMEM, "out of memory");
    if (rc < 0) {
        train_free(&L.tr);
        memset(&L.tr, 0, sizeof L.tr);
        gpt_destroy(&m);
        free(b);
        return rc;
    }
    L.result_len = w[1];
    if (w[1]) memcpy(L.result, b + OPT_HEAD, w[1]);
    memcpy(L.tr.opt.moments, b + OPT_HEAD + w[1], mom);
    L.tr.opt.t = (long)t;
    L.tr.step = (long)u[0];
    L.last_job = u[1];
    L.ckpt_step = (long)u[0];
    L.crc = w[0];
    L.model = m;
    snprintf(L.src_dir, sizeof L.src_dir, "%s", dir);
    free(b);
    return 0;
}

/* The newest checkpoint that verifies: the one `latest` names, else the others newest first.
 * Returns 1 (loaded), 0 (the run has none) or RL_EFORMAT (it has some, none usable). */
static int ckpt_load(void) {
    char path[PATH_LEN + 20], *cur = NULL, first[80] = "";
    size_t len;
    snprintf(path, sizeof path, "%s/latest", L.run_dir);
    if (fs_read_all(path, &cur, &len) == 0) {
        snprintf(first, sizeof first, "%.*s", (int)strcspn(cur, "\n"), cur);
        free(cur);
        if (first[0] && ckpt_load_dir(first) == 0) return 1;
        llog("checkpoint %s unusable (%s): trying older ones", first, rl_errmsg());
    }
    char **names;
    int n = ckpt_list(&names), rc = 0;
    for (int i = n - 1; i >= 0 && rc != 1; i--) {
        if (!strcmp(names[i], first)) continue;
        if (ckpt_load_dir(names[i]) == 0)
            rc = 1;
        else
            llog("checkpoint %s unusable: %s", names[i], rl_errmsg());
    }
    names_free(names, n);
    if (rc == 0 && (n > 0 || first[0]))
        return rl_fail(RL_EFORMAT, "%s: no usable checkpoint", L.run_dir);
    return rc;
}

/* The learner's state: the newest checkpoint of the run, or else the model in `model_dir` at
 * step 0 (rm: as a reward model, rm_load: a new scalar head from head_seed when it has none). */
static int state_ensure(const char *model_dir, int rm, uint64_t head_seed) {
    if (L.loaded) return 0;
    int rc = ckpt_load();
    if (rc < 0) return rc;
    if (rc == 1) {
        llog("resumed from checkpoint %s at step %ld", L.src_dir, L.tr.step);
    } else {
        if (!model_dir || !model_dir[0])
            return rl_fail(RL_EINVAL, "train: no checkpoint in %s and no model_dir", L.run_dir);
        gpt_t *m = rm ? rm_load(model_dir, head_seed) : hf_load(model_dir);
        if (!m) return rl_fail_ctx(RL_EINVAL, "train: ");
        adamw_sched_t sched = {ADAMW_SCHED_CONSTANT, 1e-3f, 0, 0, 0};
        if ((rc = train_init(&L.tr, m, &sched, 0, 0)) < 0) {
            train_free(&L.tr);
            gpt_destroy(&m);
            return rc;
        }
        L.model = m;
        L.last_job = 0;
        L.ckpt_step = -1;
        L.crc = params_crc(m);
        snprintf(L.src_dir, sizeof L.src_dir, "%s", model_dir);
        llog("starting from %s (no checkpoint in %s)", model_dir, L.run_dir);
    }
    L.loaded = 1;
    L.pf_valid = 0;
    return 0;
}

/* ---- shard 0: talking to the shards --------------------------------------------------------- */

static peer_t *peer_at(uint32_t index) {
    return index >= 1 && index < (uint32_t)L.n_shards ? &L.peers[index] : NULL;
}

static int peer_is(const peer_t *p, const wire_msg_t *m) {
    return p->known && p->rid_len == m->rid_len && !memcmp(p->rid, m->rid, m->rid_len);
}

static void peer_round_clear(peer_t *p) {
    p->waiting = p->lost = p->stale = p->fail = p->acked = 0;
    if (p->env) rlhf__envelope__free_unpacked(p->env, NULL);
    p->env = NULL;
    wire_msg_free(&p->msg);
}

static void on_shard_message(wire_msg_t *m) {
    Rlhf__Envelope *env = NULL;
    wire_bad_t bad = wire_decode(m, &env);
    if (bad != WIRE_OK) {
        llog("dropped a bad message from a shard (%s)", wire_bad_name(bad));
        return;
    }
    double now = wire_now_ms();
    peer_t *p = NULL;
    switch (env->body_case) {
    case RLHF__ENVELOPE__BODY_SHARD_BEAT: {
        const Rlhf__ShardBeat *b = env->shard_beat;
        if (!(p = peer_at(b->index)) || b->n_shards != (uint32_t)L.n_shards) {
            llog("dropped a beat of shard %u/%u: this learner has %d shards", b->index, b->n_shards,
                 L.n_shards);
            break;
        }
        if (!peer_is(p, m) || p->pid != b->pid) {
            if (p->known) {
                llog("shard %u is a new process (pid %d, was %d)", b->index, b->pid, p->pid);
                if (p->waiting && !p->env) p->lost = 1; /* its slice died with the old one */
            } else {
                llog("shard %u joined (pid %d)", b->index, b->pid);
            }
            memcpy(p->rid, m->rid, m->rid_len);
            p->rid_len = m->rid_len;
            p->pid = b->pid;
            p->crc = b->params_crc32c;
            p->known = 1;
        }
        p->last_seen = now;
        if (p->waiting && !p->env && !p->lost && b->round == L.round && !b->busy) {
            llog("shard %u is done with round %" PRIu64 " but its gradient never came", b->index,
                 b->round);
            p->lost = 1;
        }
        break;
    }
    case RLHF__ENVELOPE__BODY_SHARD_GRAD: {
        const Rlhf__ShardGrad *g = env->shard_grad;
        if (!(p = peer_at(g->index)) || !peer_is(p, m)) break;
        p->last_seen = now;
        if (!p->waiting || p->env || g->round != L.round) {
            llog("dropped a gradient of shard %u for round %" PRIu64 " (not the current one)",
                 g->index, g->round);
            break;
        }
        if (g->code == RL_EPROTO) { /* it does not hold the parameters: send them */
            p->crc = g->params_crc32c;
            p->stale = 1;
        } else if (g->code) {
            p->fail = g->code < 0 ? g->code : RL_EIO;
            snprintf(p->err, sizeof p->err, "%s", g->error ? g->error : "");
        } else {
            p->msg = *m; /* keep the frames: they are summed once every shard has answered */
            m->n_frames = 0;
            p->env = env;
            env = NULL;
        }
        break;
    }
    case RLHF__ENVELOPE__BODY_SHARD_ACK: {
        const Rlhf__ShardAck *a = env->shard_ack;
        if (!(p = peer_at(a->index)) || !peer_is(p, m)) break;
        p->last_seen = now;
        p->crc = a->params_crc32c;
        if (a->round == L.round) p->acked = 1;
        break;
    }
    default:
        llog("unexpected message %d from a shard", env->body_case);
        break;
    }
    if (env) rlhf__envelope__free_unpacked(env, NULL);
}

/* Waits up to timeout_ms for shard messages, then handles every one queued. */
static void shards_poll(int timeout_ms) {
    zmq_pollitem_t it = {L.sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0) return;
    wire_msg_t m;
    while (wire_recv(L.sock, 1, &m, ZMQ_DONTWAIT) > 0) {
        on_shard_message(&m);
        wire_msg_free(&m);
    }
}

static int peer_live(const peer_t *p, double now) {
    return p->known && now - p->last_seen <= live_ms();
}

/* Waits until every shard has been heard within the liveness window: RL_EIO after wait_ms or
 * when the job is cancelled. */
static int shards_wait(const worker_job_t *job) {
    double t0 = wire_now_ms();
    int logged = 0;
    for (;;) {
        shards_poll(0);
        double now = wire_now_ms();
        char missing[256] = "";
        size_t used = 0;
        for (int i = 1; i < L.n_shards; i++)
            if (!peer_live(&L.peers[i], now) && used < sizeof missing - 8)
                used += (size_t)snprintf(missing + used, sizeof missing - used, " %d", i);
        if (!missing[0]) {
            if (logged) llog("all %d shards present", L.n_shards);
            return 0;
        }
        if (atomic_load(job->cancel)) return rl_fail(RL_EIO, "train: cancelled");
        if (now - t0 > L.wait_ms)
            return rl_fail(RL_EIO, "train: learner shard(s)%s missing for %d ms", missing,
                           L.wait_ms);
        if (!logged) llog("waiting for shard(s)%s", missing);
        logged = 1;
        shards_poll(L.hb_ms);
    }
}

/* The parameter arena described as frames (once per parameter version). */
static int params_frames(void) {
    if (L.pf_valid && L.pf_crc == L.crc) return 0;
    L.pf.n = 0;
    int rc = frames_add_arena(&L.pf, "params", L.model->params_mem, L.model->num_params);
    L.pf_valid = rc == 0;
    L.pf_crc = L.crc;
    return rc;
}

/* After an update: the new checksum, and the frames that send the arena (one pass over it). */
static void params_changed(void) {
    L.pf.n = 0;
    L.pf_valid = frames_add_arena(&L.pf, "params", L.model->params_mem, L.model->num_params) == 0;
    uint32_t crc = 0;
    for (int i = 0; L.pf_valid && i < L.pf.n; i++)
        crc = i ? crc32c_combine(crc, L.pf.th[i].crc32c, L.pf.len[i]) : L.pf.th[i].crc32c;
    L.crc = L.pf_valid ? crc : params_crc(L.model);
    L.pf_crc = L.crc;
}

static int send_step(int i, uint64_t job_id, uint64_t step, const int *in, const int *tg, int T,
                     int rows, float scale, uint32_t delay_ms, const frames_t *extra) {
    peer_t *p = &L.peers[i];
    const gpt_config_t *c = &L.model->cfg;
    Rlhf__ShardStep st = RLHF__SHARD_STEP__INIT;
    st.job_id = job_id;
    st.step = step;
    st.round = L.round;
    st.index = (uint32_t)i;
    st.rows = (uint32_t)rows;
    st.seq_len = (uint32_t)T;
    st.grad_scale = scale;
    st.params_crc32c = L.crc;
    st.n_params = L.model->num_params;
    st.n_layer = (uint32_t)c->n_layer;
    st.n_head = (uint32_t)c->n_head;
    st.n_embd = (uint32_t)c->n_embd;
    st.vocab_size = (uint32_t)c->vocab_size;
    st.n_positions = (uint32_t)c->n_positions;
    st.layer_norm_epsilon = c->layer_norm_epsilon;
    st.scalar_head = c->scalar_head != 0;
    st.delay_ms = delay_ms;
    frames_t *f = &L.fr;
    f->n = 0;
    size_t bytes = (size_t)rows * (size_t)T * sizeof(int);
    int rc = frames_add(f, "inputs", RLHF__DTYPE__DTYPE_I32, in, bytes, rows, T);
    if (rc == 0) rc = frames_add(f, "targets", RLHF__DTYPE__DTYPE_I32, tg, bytes, rows, T);
    if (rc == 0 && extra) rc = frames_append(f, extra);
    if (rc == 0 && rows && p->crc != L.crc) {
        rc = params_frames();
        if (rc == 0) rc = frames_append(f, &L.pf);
    }
    if (rc < 0) return rc;
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    env.body_case = RLHF__ENVELOPE__BODY_SHARD_STEP;
    env.shard_step = &st;
    p->waiting = 1;
    if (frames_send(L.sock, p->rid, p->rid_len, &env, f, ZMQ_DONTWAIT) < 0) {
        llog("shard %d unreachable: %s", i, rl_errmsg());
        p->lost = 1;
        p->known = 0; /* present again only once it beats again */
    }
    return 0;
}

/* Sends the new parameters to every shard; with want_ack, waits (within the liveness window)
 * for their acknowledgements. Returns the number of shards known to hold them, shard 0 too. */
static int send_update(uint64_t job_id, uint64_t step, int want_ack) {
    if (params_frames() < 0) {
        llog("cannot describe the parameters: %s", rl_errmsg());
        for (int i = 1; i < L.n_shards; i++) L.peers[i].crc = 0;
        return 1;
    }
    Rlhf__ShardUpdate u = RLHF__SHARD_UPDATE__INIT;
    u.job_id = job_id;
    u.step = step;
    u.round = L.round;
    u.params_crc32c = L.crc;
    u.want_ack = want_ack != 0;
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    env.body_case = RLHF__ENVELOPE__BODY_SHARD_UPDATE;
    env.shard_update = &u;
    for (int i = 1; i < L.n_shards; i++) {
        peer_t *p = &L.peers[i];
        p->acked = 0;
        /* assumed applied: a shard that did not gets them again with its next slice, since its
         * ShardGrad then reports the checksum it really holds */
        p->crc =
            frames_send(L.sock, p->rid, p->rid_len, &env, &L.pf, ZMQ_DONTWAIT) == 0 ? L.crc : 0;
    }
    if (!want_ack) return L.n_shards;
    double t0 = wire_now_ms();
    for (;;) {
        int in_sync = 1, pending = 0;
        double now = wire_now_ms();
        for (int i = 1; i < L.n_shards; i++) {
            const peer_t *p = &L.peers[i];
            if (p->acked && p->crc == L.crc)
                in_sync++;
            else if (!p->acked && p->crc == L.crc && peer_live(p, now))
                pending++;
        }
        if (!pending || now - t0 > live_ms()) return in_sync;
        shards_poll(L.hb_ms);
    }
}

/* ---- shard 0: one optimizer step ------------------------------------------------------------ */

typedef struct {
    float loss, lr;
    double grad_norm, ms;
    double ms_slice;  /* shard 0's own slice (last round) */
    double ms_wait;   /* then waiting for the other shards' gradients */
    double ms_update; /* sum, clip, AdamW, checksum and sending the new parameters */
    int reruns, in_sync;
    double correct; /* RM: pairs ordered correctly, and pairs, over every slice */
    long pairs;
} step_out_t;

/* An RM step's items travel as the rows of the LM step (T = 1), with this. */
typedef struct {
    rm_opts_t opt;
    frames_t spec; /* the "rm" frame: the job's RM settings (a packed TrainSpec) */
} rm_step_t;

static int step_run(const worker_job_t *job, const Rlhf__TrainSpec *sp, const int *in,
                    const int *tg, int B, int T, int last, const rm_step_t *rm, step_out_t *so) {
    gpt_t *m = L.model;
    int S = L.n_shards, rc;
    uint64_t step = (uint64_t)L.tr.step;
    double t0 = wire_now_ms();
    long valid[WORKER_LEARNER_MAX_SHARDS], total = 0;
    int b0[WORKER_LEARNER_MAX_SHARDS], b1[WORKER_LEARNER_MAX_SHARDS];
    float scale[WORKER_LEARNER_MAX_SHARDS];
    for (int i = 0; i < S; i++) {
        slice_of(B, S, i, &b0[i], &b1[i]);
        valid[i] = 0;
        for (long k = (long)b0[i] * T; k < (long)b1[i] * T; k++) valid[i] += tg[k] >= 0;
        total += valid[i];
    }
    if (total == 0) return rl_fail(RL_EINVAL, "train: step %" PRIu64 ": no target to score", step);
    for (int i = 0; i < S; i++)
        scale[i] = rm ? 1.0f / (float)B : (float)((double)valid[i] / (double)total);
    memset(so, 0, sizeof *so);
    float stats[2] = {0, 0};
    for (int tries = 1;; tries++) {
        if (tries > MAX_ROUNDS)
            return rl_fail(RL_EIO, "train: step %" PRIu64 ": %d rounds failed", step, MAX_ROUNDS);
        for (int i = 1; i < S; i++) peer_round_clear(&L.peers[i]);
        if (S > 1 && (rc = shards_wait(job)) < 0) return rc;
        L.round++;
        for (int i = 1; i < S; i++) {
            rc = send_step(i, job->job_id, step, in + (long)b0[i] * T, tg + (long)b0[i] * T, T,
                           b1[i] - b0[i], scale[i], sp->delay_ms, rm ? &rm->spec : NULL);
            if (rc < 0) return rc;
        }
        /* our own slice while theirs compute */
        double ts = wire_now_ms();
        if (rm)
            rc = rm_slice_grad(m, &rm->opt, in + b0[0], b1[0] - b0[0], scale[0], &so->loss, stats);
        else
            rc = slice_grad(m, in + (long)b0[0] * T, tg + (long)b0[0] * T, b1[0] - b0[0], T,
                            scale[0], &so->loss);
        if (rc < 0) return rl_fail_ctx(rc, "train: step %" PRIu64 ": ", step);
        so->ms_slice = wire_now_ms() - ts;
        ts = wire_now_ms();
        int broken = 0;
        for (;;) {
            int pending = 0;
            double now = wire_now_ms();
            for (int i = 1; i < S; i++) {
                peer_t *p = &L.peers[i];
                if (p->fail)
                    return rl_fail(p->fail, "train: step %" PRIu64 ": shard %d: %s", step, i,
                                   p->err);
                if (!p->lost && !p->stale && !p->env && !peer_live(p, now)) {
                    llog("shard %d lost mid-step %" PRIu64 " (silent for %.0f ms)", i, step,
                         now - p->last_seen);
                    p->lost = 1;
                    p->known = 0;
                }
                if (p->lost || p->stale)
                    broken = 1;
                else if (!p->env)
                    pending++;
            }
            if (broken || !pending) break;
            if (atomic_load(job->cancel)) return rl_fail(RL_EIO, "train: cancelled");
            shards_poll(L.hb_ms);
        }
        so->ms_wait = wire_now_ms() - ts;
        if (!broken) break;
        /* nothing of this round has been applied: drop its partial sums and run it again */
        so->reruns++;
        llog("step %" PRIu64 " round %" PRIu64 " abandoned (a shard was lost or lacked the "
             "parameters): re-running",
             step, L.round);
    }
    /* the sum, in shard order */
    double tu = wire_now_ms();
    so->correct = stats[0];
    so->pairs = (long)stats[1];
    for (int i = 1; i < S; i++) {
        peer_t *p = &L.peers[i];
        /* an RM slice's gradient comes after a frame "stats" F32 {correct, pairs} */
        size_t first = rm ? 1 : 0;
        if (b1[i] > b0[i] && rm) {
            const Rlhf__TensorHeader *th = p->env->n_frames ? p->env->frames[0] : NULL;
            if (!th || !th->name || strcmp(th->name, "stats") ||
                wire_frame_size(&p->msg, 1) != sizeof stats)
                return rl_fail(RL_EPROTO, "train: shard %d's RM gradient has no stats", i);
            memcpy(stats, wire_frame_data(&p->msg, 1), sizeof stats);
            so->correct += stats[0];
            so->pairs += (long)stats[1];
        }
        if (b1[i] > b0[i] &&
            (rc = arena_read(&p->msg, p->env, first, "grad", m->grads_mem, m->num_params, 1)) < 0)
            return rl_fail_ctx(rc, "train: shard %d's gradient: ", i);
        so->loss += p->env->shard_grad->loss;
    }
    for (int i = 1; i < S; i++) peer_round_clear(&L.peers[i]);
    /* the update of train_lm_step: clip (fused into the update), learning rate, AdamW */
    float cs;
    rc = adamw_clip_scale(m->grads_mem, m->num_params, L.tr.clip, &so->grad_norm, &cs);
    if (rc < 0) return rl_fail_ctx(rc, "train: step %" PRIu64 ": gradient: ", step);
    so->lr = adamw_sched_lr(&L.tr.sched, L.tr.step);
    rc = adamw_step_scaled(&L.tr.opt, m->params_mem, m->grads_mem, L.tr.groups, L.tr.n_groups,
                           so->lr, cs);
    if (rc < 0) return rl_fail_ctx(rc, "train: step %" PRIu64 ": optimizer: ", step);
    L.tr.step++;
    if (S > 1) params_changed(); /* alone, the checksum is needed only at the end of the job */
    so->in_sync = S > 1 ? send_update(job->job_id, step, last) : 1;
    so->ms_update = wire_now_ms() - tu;
    so->ms = wire_now_ms() - t0;
    return 0;
}

/* ---- shard 0: the TRAIN job ----------------------------------------------------------------- */

/* B windows of T+1 tokens of ids[0..n) for global step `step`: the draw of `rlhf train-lm`. */
static void batch_from_tokens(const int *ids, size_t n, uint64_t seed, uint64_t step, int B, int T,
                              int *in, int *tg) {
    size_t span = n - (size_t)T; /* window starts in [0, span) */
    for (int b = 0; b < B; b++) {
        size_t start = (size_t)(rng_uniform(seed, step, (uint64_t)b) * span);
        if (start >= span) start = span - 1;
        memcpy(in + (size_t)b * T, ids + start, (size_t)T * sizeof(int));
        memcpy(tg + (size_t)b * T, ids + start + 1, (size_t)T * sizeof(int));
    }
}

static void metrics_append(uint64_t job_id, uint64_t first, const step_out_t *so, int n) {
    char path[PATH_LEN + 20];
    snprintf(path, sizeof path, "%s/metrics.jsonl", L.run_dir);
    FILE *f = fopen(path, "a");
    if (!f) return;
    for (int k = 0; k < n; k++) {
        char rm[96] = ""; /* RM steps: their pairs and accuracy */
        if (so[k].pairs)
            snprintf(rm, sizeof rm, ",\"pairs\":%ld,\"accuracy\":%.9g", so[k].pairs,
                     so[k].correct / (double)so[k].pairs);
        fprintf(f,
                "{\"job_id\":%" PRIu64 ",\"step\":%" PRIu64 ",\"loss\":%.9g,\"grad_norm\":%.9g,"
                "\"lr\":%.9g,\"ms\":%.3f,\"ms_slice\":%.3f,\"ms_wait\":%.3f,\"ms_update\":%.3f,"
                "\"shards\":%d,\"rounds_rerun\":%d%s}\n",
                job_id, first + (uint64_t)k, (double)so[k].loss, so[k].grad_norm, (double)so[k].lr,
                so[k].ms, so[k].ms_slice, so[k].ms_wait, so[k].ms_update, L.n_shards, so[k].reruns,
                rm);
    }
    fclose(f);
}

static int output_copy(const uint8_t *src, size_t len, int replayed, uint8_t **out,
                       size_t *out_len) {
    Rlhf__TrainOutput *o = rlhf__train_output__unpack(NULL, len, src);
    if (!o) return rl_fail(RL_EFORMAT, "train: the recorded result does not decode");
    o->replayed = replayed != 0;
    *out_len = rlhf__train_output__get_packed_size(o);
    *out = malloc(*out_len ? *out_len : 1);
    if (*out) rlhf__train_output__pack(o, *out);
    rlhf__train_output__free_unpacked(o, NULL);
    return *out ? 0 : rl_fail(RL_ENOMEM, "out of memory");
}

/* The RM side of a job: the training split's items and the epoch order they are drawn in. */
typedef struct {
    rm_step_t st;
    int *items, n_items, bsz; /* the training items; items per step (B, at most n_items) */
    int *perm;
    long perm_epoch;
    int *batch;
    uint8_t *spec;
} rm_job_t;

static void rm_job_free(rm_job_t *r) {
    free(r->items);
    free(r->perm);
    free(r->batch);
    free(r->spec);
    memset(r, 0, sizeof *r);
}

/* Loads the data, splits it (rm_split: the held-out prompts are never trained on) and packs the
 * settings the shards need. */
static int rm_job_init(rm_job_t *r, const Rlhf__TrainSpec *sp, int B) {
    const gpt_t *m = L.model;
    if (!m->cfg.scalar_head)
        return rl_fail(RL_EINVAL, "train: rm: the learner's model has no scalar head");
    int rc = rm_cache_get(sp, m->cfg.vocab_size);
    if (rc < 0) return rc;
    const rm_data_t *d = &RMD.d;
    unsigned char *held = calloc((size_t)d->n_groups, 1);
    int cap = d->n_pairs > d->n_groups ? d->n_pairs : d->n_groups;
    r->items = malloc((size_t)cap * sizeof(int));
    r->perm = malloc((size_t)cap * sizeof(int));
    r->batch = malloc((size_t)B * sizeof(int));
    if (!held || !r->items || !r->perm || !r->batch) {
        free(held);
        return rl_fail(RL_ENOMEM, "train: rm: out of memory");
    }
    rm_split(d, sp->heldout_frac, sp->split_seed, held);
    if (sp->rm_pairwise) {
        for (int p = 0; p < d->n_pairs; p++)
            if (!held[d->pairs[p].group]) r->items[r->n_items++] = p;
    } else {
        for (int g = 0; g < d->n_groups; g++)
            if (!held[g]) r->items[r->n_items++] = g;
    }
    free(held);
    if (r->n_items == 0)
        return rl_fail(RL_EINVAL, "train: rm: %s: every prompt is held out", sp->pairs_file);
    r->bsz = B < r->n_items ? B : r->n_items;
    r->perm_epoch = -1;
    r->st.opt = rm_opts_of(sp);
    /* what a shard needs to compute a slice: the data, its tokenizer and the loss */
    Rlhf__TrainSpec s = RLHF__TRAIN_SPEC__INIT;
    s.kind = RLHF__TRAIN_KIND__TRAIN_KIND_RM;
    s.model_dir = sp->model_dir;
    s.pairs_file = sp->pairs_file;
    s.seq_len = sp->seq_len;
    s.rm_pairwise = sp->rm_pairwise;
    s.rm_margin = sp->rm_margin;
    s.rm_center = sp->rm_center;
    s.micro = sp->micro;
    size_t len = rlhf__train_spec__get_packed_size(&s);
    if (!(r->spec = malloc(len ? len : 1))) return rl_fail(RL_ENOMEM, "train: rm: out of memory");
    rlhf__train_spec__pack(&s, r->spec);
    r->st.spec.n = 0;
    return frames_add(&r->st.spec, "rm", RLHF__DTYPE__DTYPE_UNSPECIFIED, r->spec, len, (int64_t)len,
                      -1);
}

/* The items of global step `step`: the seamless sequence of epoch orders, as `rlhf train-rm`. */
static void rm_job_batch(rm_job_t *r, uint64_t seed, long step) {
    for (int b = 0; b < r->bsz; b++) {
        long cursor = step * r->bsz + b, epoch = cursor / r->n_items;
        if (epoch != r->perm_epoch) {
            r->perm_epoch = epoch;
            rm_epoch_order(r->n_items, seed, (uint64_t)epoch, r->perm);
        }
        r->batch[b] = r->items[r->perm[cursor % r->n_items]];
    }
}

/* TRAIN of kind LM (token windows, one inline batch, or one masked batch per step) or RM. */
static int train_run(const worker_job_t *job, const Rlhf__TrainSpec *sp, uint8_t **out,
                     size_t *out_len) {
    int B = (int)sp->batch_size, T = (int)sp->seq_len, n = (int)sp->n_steps, rc;
    int is_rm = sp->kind == RLHF__TRAIN_KIND__TRAIN_KIND_RM;
    int per_step = !is_rm && sp->n_step_seq > 0; /* one masked batch per step (SFT) */
    if (B < 1 || B > 1 << 20 || T < 1 || n < 1 || sp->n_steps > 1u << 24)
        return rl_fail(RL_EINVAL, "train: batch_size %u, seq_len %u, n_steps %u", sp->batch_size,
                       sp->seq_len, sp->n_steps);
    if (is_rm && !sp->pairs_file[0]) return rl_fail(RL_EINVAL, "train: rm: no pairs_file");
    if (per_step) {
        size_t need = 0;
        for (size_t k = 0; k < sp->n_step_seq; k++) {
            if (sp->step_seq[k] < 1 || (int)sp->step_seq[k] > T)
                return rl_fail(RL_EINVAL, "train: step_seq[%zu] = %u is not in [1, seq_len %d]", k,
                               sp->step_seq[k], T);
            need += (size_t)B * sp->step_seq[k];
        }
        if (sp->n_step_seq != (size_t)n || sp->n_step_inputs != need || sp->n_step_targets != need)
            return rl_fail(RL_EINVAL,
                           "train: %zu step batches of %zu/%zu ids for %d steps of %d rows "
                           "(%zu ids)",
                           sp->n_step_seq, sp->n_step_inputs, sp->n_step_targets, n, B, need);
    } else if (!is_rm && !sp->tokens_file[0] && sp->n_batch != (size_t)B * (size_t)(T + 1)) {
        return rl_fail(RL_EINVAL,
                       "train: no tokens_file, and the inline batch has %zu ids, not "
                       "%d rows of %d",
                       sp->n_batch, B, T + 1);
    }
    if ((rc = state_ensure(sp->model_dir, is_rm, sp->rm_seed)) < 0) return rc;
    gpt_t *m = L.model;
    if (T > m->cfg.n_positions)
        return rl_fail(RL_EINVAL, "train: seq_len %d exceeds the model's n_positions %d", T,
                       m->cfg.n_positions);
    uint64_t at = (uint64_t)L.tr.step;
    if (at == sp->step + sp->n_steps && L.last_job == job->job_id && L.result &&
        L.ckpt_step == L.tr.step) {
        llog("job %" PRIu64 " (steps %" PRIu64 "..%" PRIu64 ") already applied: its recorded "
             "result",
             job->job_id, sp->step, at - 1);
        return output_copy(L.result, L.result_len, 1, out, out_len);
    }
    if (at != sp->step)
        return rl_fail(RL_ERANGE,
                       "train: the learner is at step %" PRIu64 ", job %" PRIu64
                       " starts at step %" PRIu64,
                       at, job->job_id, sp->step);
    adamw_sched_kind_t kinds[] = {ADAMW_SCHED_CONSTANT, ADAMW_SCHED_WARMUP, ADAMW_SCHED_COSINE};
    if ((unsigned)sp->schedule > 2) return rl_fail(RL_EINVAL, "train: schedule %d", sp->schedule);
    rm_job_t rj = {0};
    if (is_rm && (rc = rm_job_init(&rj, sp, B)) < 0) {
        rm_job_free(&rj);
        return rc;
    }
    L.tr.sched = (adamw_sched_t){kinds[sp->schedule], sp->lr, sp->min_lr, (long)sp->warmup,
                                 (long)sp->total_steps};
    L.tr.clip = sp->clip;
    L.tr.opt.weight_decay = sp->weight_decay;
    int *ids = NULL, *in = NULL, *tg = NULL;
    size_t n_ids = 0, off = 0;
    step_out_t *so = calloc((size_t)n, sizeof *so);
    float *losses = malloc((size_t)n * sizeof *losses);
    double *norms = malloc((size_t)n * sizeof *norms), *accs = malloc((size_t)n * sizeof *accs);
    in = malloc((size_t)B * T * sizeof *in);
    tg = malloc((size_t)B * T * sizeof *tg);
    rc = so && losses && norms && accs && in && tg ? 0 : rl_fail(RL_ENOMEM, "train: out of memory");
    if (rc == 0 && !is_rm && !per_step && sp->tokens_file[0]) {
        rc = data_read_tokens(sp->tokens_file, m->cfg.vocab_size, &ids, &n_ids);
        if (rc == 0 && n_ids < (size_t)T + 1)
            rc = rl_fail(RL_EINVAL, "train: %s: %zu tokens, need at least %d", sp->tokens_file,
                         n_ids, T + 1);
    } else if (rc == 0 && !is_rm && !per_step) {
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                in[b * T + t] = sp->batch[(size_t)b * (T + 1) + t];
                tg[b * T + t] = sp->batch[(size_t)b * (T + 1) + t + 1];
            }
    }
    double ms = 0;
    long pairs = 0;
    int reruns = 0, in_sync = 1;
    for (int k = 0; rc == 0 && k < n; k++) {
        if (atomic_load(job->cancel)) {
            rc = rl_fail(RL_EIO, "train: cancelled");
            break;
        }
        const int *sin = in, *stg = tg;
        int sB = B, sT = T;
        if (ids) batch_from_tokens(ids, n_ids, job->seed, (uint64_t)L.tr.step, B, T, in, tg);
        if (per_step) {
            sT = (int)sp->step_seq[k];
            sin = sp->step_inputs + off;
            stg = sp->step_targets + off;
            off += (size_t)B * (size_t)sT;
        }
        if (is_rm) {
            rm_job_batch(&rj, sp->rm_seed, L.tr.step);
            sin = stg = rj.batch;
            sB = rj.bsz;
            sT = 1;
        }
        rc = step_run(job, sp, sin, stg, sB, sT, k == n - 1, is_rm ? &rj.st : NULL, &so[k]);
        if (rc < 0) break;
        losses[k] = so[k].loss;
        norms[k] = so[k].grad_norm;
        accs[k] = so[k].pairs ? so[k].correct / (double)so[k].pairs : 0;
        ms += so[k].ms;
        pairs += so[k].pairs;
        reruns += so[k].reruns;
        in_sync = so[k].in_sync;
        llog("job %" PRIu64 " step %ld: loss %.5f |g| %.4f lr %.3g, %.1f ms, %d shard(s)%s",
             job->job_id, L.tr.step - 1, (double)so[k].loss, so[k].grad_norm, (double)so[k].lr,
             so[k].ms, L.n_shards, so[k].reruns ? " (re-run)" : "");
    }
    if (rc == 0) {
        char ck[PATH_LEN + 40];
        if (L.n_shards == 1) L.crc = params_crc(m);
        snprintf(ck, sizeof ck, "%s/ckpt-%010ld", L.run_dir, L.tr.step);
        Rlhf__TrainOutput o = RLHF__TRAIN_OUTPUT__INIT;
        o.step = (uint64_t)L.tr.step;
        o.loss = losses;
        o.n_loss = (size_t)n;
        o.grad_norm = norms;
        o.n_grad_norm = (size_t)n;
        o.params_crc32c = L.crc;
        o.shards = (uint32_t)L.n_shards;
        o.shards_in_sync = (uint32_t)in_sync;
        o.checkpoint = ck;
        o.step_ms = ms / n;
        o.rounds_rerun = (uint32_t)reruns;
        if (is_rm) {
            o.accuracy = accs;
            o.n_accuracy = (size_t)n;
            o.pairs = (uint64_t)pairs;
            o.pairs_per_s = ms > 0 ? pairs / (ms / 1e3) : 0;
        }
        free(L.result);
        L.result_len = rlhf__train_output__get_packed_size(&o);
        L.result = malloc(L.result_len ? L.result_len : 1);
        if (!L.result) rc = rl_fail(RL_ENOMEM, "out of memory");
        if (rc == 0) {
            rlhf__train_output__pack(&o, L.result);
            L.last_job = job->job_id;
            rc = ckpt_save();
        }
        if (rc == 0) rc = output_copy(L.result, L.result_len, 0, out, out_len);
        if (rc == 0) {
            metrics_append(job->job_id, sp->step, so, n);
            llog("job %" PRIu64 " done: step %ld, params %08x, %d/%d shards in sync, %.2f ms/step,"
                 " checkpoint %s",
                 job->job_id, L.tr.step, L.crc, in_sync, L.n_shards, ms / n, ck);
        }
    }
    if (rc < 0 && L.loaded && L.tr.step != L.ckpt_step) {
        /* steps of a job that did not finish are not kept: its retry starts from the state it
         * started from, the last checkpoint */
        llog("job %" PRIu64 " failed at step %ld: back to the last checkpoint", job->job_id,
             L.tr.step);
        state_drop();
    }
    rm_job_free(&rj);
    free(ids);
    free(in);
    free(tg);
    free(so);
    free(losses);
    free(norms);
    free(accs);
    return rc;
}

int worker_train(const worker_job_t *job, const uint8_t *payload, size_t len, uint8_t **out,
                 size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (!L.run_dir[0]) return rl_fail(RL_EINVAL, "train: this learner has no --run-dir");
    if (L.index != 0) return rl_fail(RL_EINVAL, "train: only shard 0 takes TRAIN jobs");
    Rlhf__TrainSpec *sp = rlhf__train_spec__unpack(NULL, len, payload);
    if (!sp) return rl_fail(RL_EFORMAT, "train: malformed TrainSpec");
    int rc;
    switch (sp->kind) {
    case RLHF__TRAIN_KIND__TRAIN_KIND_LM:
    case RLHF__TRAIN_KIND__TRAIN_KIND_RM:
        rc = train_run(job, sp, out, out_len);
        break;
    case RLHF__TRAIN_KIND__TRAIN_KIND_PPO:
        rc = worker_ppo(job, sp, out, out_len);
        break;
    default:
        rc = rl_fail(RL_EUNSUPPORTED, "train: kind %d is not supported by this learner", sp->kind);
        break;
    }
    rlhf__train_spec__free_unpacked(sp, NULL);
    return rc;
}

static void opts_copy(const worker_learner_opts_t *o) {
    L.index = o->index;
    L.n_shards = o->n_shards > 0 ? o->n_shards : 1;
    L.hb_ms = o->hb_ms > 0 ? o->hb_ms : 1000;
    L.liveness = o->liveness > 0 ? o->liveness : 3;
    L.wait_ms = o->wait_ms > 0 ? o->wait_ms : 30000;
    snprintf(L.run_dir, sizeof L.run_dir, "%s", o->run_dir ? o->run_dir : "");
    snprintf(who, sizeof who, "worker %.60s", o->id ? o->id : "learner");
    if (o->chunk_kib > 0 && (size_t)o->chunk_kib * 256 <= CHUNK_FLOATS)
        chunk_floats = (size_t)o->chunk_kib * 256;
}

int worker_learner_start(const worker_learner_opts_t *o) {
    opts_copy(o);
    L.started = 1;
    L.ckpt_step = -1;
    uint64_t t = wire_now_ns() ^ ((uint64_t)getpid() << 40);
    L.round_base = L.round = t & ~0xFFFFFULL; /* round ids differ between incarnations */
    if (L.run_dir[0]) {
        int rc = fs_mkdir_p(L.run_dir);
        if (rc < 0) return rc;
    }
    if (L.n_shards == 1) return 0;
    if (!o->endpoint) return rl_fail(RL_EINVAL, "--shard 0/%d needs --shard-endpoint", L.n_shards);
    L.zctx = zmq_ctx_new();
    L.sock = L.zctx ? zmq_socket(L.zctx, ZMQ_ROUTER) : NULL;
    if (!L.sock) return rl_fail(RL_EIO, "zmq_socket: %s", zmq_strerror(errno));
    int one = 1, linger = 1000, hwm = 1000;
    int64_t maxmsg = MAX_MSG_BYTES;
    /* a send to a shard that is gone fails at once (EHOSTUNREACH) instead of vanishing */
    zmq_setsockopt(L.sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(L.sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(L.sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(L.sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(L.sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_bind(L.sock, o->endpoint) < 0)
        return rl_fail(RL_EIO, "bind %s: %s", o->endpoint, zmq_strerror(errno));
    char ep[512];
    size_t sz = sizeof ep;
    zmq_getsockopt(L.sock, ZMQ_LAST_ENDPOINT, ep, &sz);
    llog("learner shard 0/%d: shards connect to %s", L.n_shards, ep);
    if (L.run_dir[0]) {
        char path[PATH_LEN + 20], js[700];
        snprintf(path, sizeof path, "%s/learner.json", L.run_dir);
        int n = snprintf(js, sizeof js, "{\"endpoint\":\"%s\",\"shards\":%d,\"pid\":%d}\n", ep,
                         L.n_shards, (int)getpid());
        int rc = fs_write_atomic(path, js, (size_t)n);
        if (rc < 0) return rc;
    }
    return 0;
}

void worker_learner_stop(void) {
    for (int i = 0; i < WORKER_LEARNER_MAX_SHARDS; i++) peer_round_clear(&L.peers[i]);
    if (L.sock) zmq_close(L.sock);
    if (L.zctx) zmq_ctx_term(L.zctx);
    L.sock = L.zctx = NULL;
    state_drop();
    rm_cache_free();
    L.started = 0;
}

/* ---- shards 1..S-1 -------------------------------------------------------------------------- */

typedef struct {
    int index, n_shards, hb_ms, threads;
    void *sock;
    int efd;
    gpt_t *model;
    uint32_t crc;   /* of the parameters held; 0: none */
    uint64_t round; /* of the last ShardStep read */
    /* the slice in progress (compute thread) */
    pthread_t th;
    int busy, threaded;
    atomic_int cancel;
    wire_msg_t msg;
    Rlhf__Envelope *env;
    int rc;
    char err[256];
    float loss;
    int rm;         /* the slice was an RM one: its gradient goes with "stats" */
    float stats[2]; /* RM: pairs ordered correctly, pairs */
} shard_t;

static int shard_model_fit(shard_t *s, const Rlhf__ShardStep *st) {
    gpt_config_t c = {(int)st->n_layer,       (int)st->n_head,      (int)st->n_embd,
                      (int)st->vocab_size,    (int)st->n_positions, st->layer_norm_epsilon,
                      st->scalar_head ? 1 : 0};
    if (s->model && !memcmp(&s->model->cfg, &c, sizeof c)) return 0;
    gpt_destroy(&s->model);
    s->crc = 0;
    if (gpt_config_check(&c) < 0) return rl_fail_ctx(RL_EPROTO, "shard step: ");
    if (!(s->model = gpt_new(&c))) return rl_fail_ctx(RL_ENOMEM, "shard step: ");
    if (s->model->num_params != st->n_params) {
        gpt_destroy(&s->model);
        return rl_fail(RL_EPROTO, "shard step: %" PRIu64 " parameters for a model of another size",
                       st->n_params);
    }
    return 0;
}

/* An RM slice: the items of the "inputs" frame, on the pairs file the spec names. */
static int rm_slice_run(shard_t *s, const Rlhf__TrainSpec *rs, int rows, size_t bytes) {
    const Rlhf__ShardStep *st = s->env->shard_step;
    if (!s->model || s->crc != st->params_crc32c)
        return rl_fail(RL_EPROTO, "shard %d holds parameters %08x, the step is at %08x", s->index,
                       s->crc, st->params_crc32c);
    int rc = rm_cache_get(rs, s->model->cfg.vocab_size);
    if (rc < 0) return rc;
    int *items = malloc(bytes);
    if (!items) return rl_fail(RL_ENOMEM, "shard step: out of memory");
    memcpy(items, wire_frame_data(&s->msg, 1), bytes);
    rm_opts_t o = rm_opts_of(rs);
    rc = rm_slice_grad(s->model, &o, items, rows, st->grad_scale, &s->loss, s->stats);
    free(items);
    return rc;
}

/* The slice of one ShardStep: parameters (when attached), then its gradient. */
static int shard_slice(shard_t *s) {
    const Rlhf__Envelope *env = s->env;
    const Rlhf__ShardStep *st = env->shard_step;
    int rows = (int)st->rows, T = (int)st->seq_len, rc;
    size_t bytes = (size_t)rows * (size_t)T * sizeof(int);
    s->loss = 0;
    if (st->index != (uint32_t)s->index)
        return rl_fail(RL_EINVAL, "shard step for shard %u sent to shard %d", st->index, s->index);
    s->rm = 0;
    if (env->n_frames < 2 || wire_frame_size(&s->msg, 1) != bytes ||
        wire_frame_size(&s->msg, 2) != bytes)
        return rl_fail(RL_EPROTO, "shard step: inputs and targets of %d x %d ids expected", rows,
                       T);
    /* an RM step: frame "rm" (the job's RM settings) after the targets; the rows are items */
    size_t pfirst = 2;
    Rlhf__TrainSpec *rs = NULL;
    if (env->n_frames > 2 && env->frames[2]->name && !strcmp(env->frames[2]->name, "rm")) {
        rs = rlhf__train_spec__unpack(NULL, wire_frame_size(&s->msg, 3),
                                      wire_frame_data(&s->msg, 3));
        if (!rs) return rl_fail(RL_EPROTO, "shard step: a malformed RM spec");
        s->rm = 1;
        pfirst = 3;
    }
    if (env->n_frames > pfirst) {
        rc = shard_model_fit(s, st);
        if (rc == 0)
            rc = arena_read(&s->msg, env, pfirst, "params", s->model->params_mem,
                            s->model->num_params, 0);
        s->crc = rc == 0 ? frames_crc(env, pfirst) : 0; /* wire_decode checked every frame's CRC */
        if (rc < 0) {
            if (rs) rlhf__train_spec__free_unpacked(rs, NULL);
            return rc;
        }
    }
    if (rs) {
        rc = rows == 0 ? 0 : rm_slice_run(s, rs, rows, bytes);
        rlhf__train_spec__free_unpacked(rs, NULL);
        return rc;
    }
    if (rows == 0) return 0;
    if (!s->model || s->crc != st->params_crc32c)
        return rl_fail(RL_EPROTO, "shard %d holds parameters %08x, the step is at %08x", s->index,
                       s->crc, st->params_crc32c);
    /* test hook: a slice that takes at least delay_ms */
    for (uint32_t waited = 0; waited < st->delay_ms && !atomic_load(&s->cancel); waited += 10) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    int *in = malloc(bytes), *tg = malloc(bytes);
    rc = in && tg ? 0 : rl_fail(RL_ENOMEM, "shard step: out of memory");
    if (rc == 0) {
        memcpy(in, wire_frame_data(&s->msg, 1), bytes);
        memcpy(tg, wire_frame_data(&s->msg, 2), bytes);
        rc = slice_grad(s->model, in, tg, rows, T, st->grad_scale, &s->loss);
    }
    free(in);
    free(tg);
    return rc;
}

static void *shard_thread(void *arg) {
    shard_t *s = arg;
    ops_set_threads(s->threads);
    rl_err_clear();
    s->rc = shard_slice(s);
    if (s->rc < 0) snprintf(s->err, sizeof s->err, "%s", rl_errmsg());
    uint64_t one = 1;
    if (write(s->efd, &one, sizeof one) != sizeof one) abort(); /* eventfd cannot fail here */
    return NULL;
}

static void shard_beat(shard_t *s) {
    Rlhf__ShardBeat b = RLHF__SHARD_BEAT__INIT;
    b.index = (uint32_t)s->index;
    b.n_shards = (uint32_t)s->n_shards;
    b.pid = (int32_t)getpid();
    b.params_crc32c = s->crc;
    b.round = s->round;
    b.busy = s->busy != 0;
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    env.body_case = RLHF__ENVELOPE__BODY_SHARD_BEAT;
    env.shard_beat = &b;
    wire_send(s->sock, NULL, 0, &env, NULL, NULL, 0, ZMQ_DONTWAIT); /* a beat may be dropped */
}

/* The compute thread finished: send the slice's gradient (or why there is none). */
static void shard_slice_done(shard_t *s) {
    uint64_t v;
    if (read(s->efd, &v, sizeof v) != sizeof v) return;
    if (s->threaded) pthread_join(s->th, NULL);
    s->busy = 0;
    const Rlhf__ShardStep *st = s->env->shard_step;
    Rlhf__ShardGrad g = RLHF__SHARD_GRAD__INIT;
    g.job_id = st->job_id;
    g.step = st->step;
    g.round = st->round;
    g.index = (uint32_t)s->index;
    g.params_crc32c = s->crc;
    g.loss = s->loss;
    g.code = s->rc;
    g.error = s->rc < 0 ? s->err : "";
    frames_t *f = malloc(sizeof *f);
    int rc = f ? 0 : RL_ENOMEM;
    if (f) f->n = 0;
    if (rc == 0 && s->rc == 0 && st->rows && s->rm)
        rc = frames_add(f, "stats", RLHF__DTYPE__DTYPE_F32, s->stats, sizeof s->stats, 2, -1);
    if (rc == 0 && s->rc == 0 && st->rows)
        rc = frames_add_arena(f, "grad", s->model->grads_mem, s->model->num_params);
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    env.body_case = RLHF__ENVELOPE__BODY_SHARD_GRAD;
    env.shard_grad = &g;
    /* blocking (up to the send timeout): a gradient must not be dropped at a full pipe */
    if (rc == 0) rc = frames_send(s->sock, NULL, 0, &env, f, 0);
    if (rc < 0)
        llog("cannot send the gradient of step %" PRIu64 ": %s", st->step, rl_errmsg());
    else if (s->rc < 0)
        llog("step %" PRIu64 " round %" PRIu64 ": %s", st->step, st->round, s->err);
    else
        llog("sent the gradient of step %" PRIu64 " round %" PRIu64 " (%u rows)", st->step,
             st->round, st->rows);
    free(f);
    rlhf__envelope__free_unpacked(s->env, NULL);
    s->env = NULL;
    wire_msg_free(&s->msg);
}

static void shard_on_update(shard_t *s, const wire_msg_t *m, const Rlhf__ShardUpdate *u,
                            const Rlhf__Envelope *env) {
    int rc = s->model
                 ? arena_read(m, env, 0, "params", s->model->params_mem, s->model->num_params, 0)
                 : rl_fail(RL_EPROTO, "no model yet");
    s->crc = rc == 0 ? frames_crc(env, 0) : 0;
    if (rc < 0 || s->crc != u->params_crc32c)
        llog("update after step %" PRIu64 " not applied (%s): the next step brings the "
             "parameters",
             u->step, rc < 0 ? rl_errmsg() : "checksum mismatch");
    if (!u->want_ack) return;
    Rlhf__ShardAck a = RLHF__SHARD_ACK__INIT;
    a.round = u->round;
    a.index = (uint32_t)s->index;
    a.params_crc32c = s->crc;
    Rlhf__Envelope out = RLHF__ENVELOPE__INIT;
    out.body_case = RLHF__ENVELOPE__BODY_SHARD_ACK;
    out.shard_ack = &a;
    wire_send(s->sock, NULL, 0, &out, NULL, NULL, 0, 0);
}

/* One message from shard 0 (not busy). */
static void shard_on_message(shard_t *s, wire_msg_t *m) {
    Rlhf__Envelope *env = NULL;
    wire_bad_t bad = wire_decode(m, &env);
    if (bad != WIRE_OK) {
        llog("dropped a bad message from shard 0 (%s)", wire_bad_name(bad));
        return;
    }
    if (env->body_case == RLHF__ENVELOPE__BODY_SHARD_STEP) {
        s->round = env->shard_step->round;
        s->msg = *m; /* the thread reads the frames in place */
        m->n_frames = 0;
        s->env = env;
        s->rc = 0;
        s->err[0] = 0;
        atomic_store(&s->cancel, 0);
        llog("computing step %" PRIu64 " round %" PRIu64 " of job %" PRIu64 " (%u rows%s)",
             env->shard_step->step, env->shard_step->round, env->shard_step->job_id,
             env->shard_step->rows, env->n_frames > 2 ? ", with parameters" : "");
        s->threaded = pthread_create(&s->th, NULL, shard_thread, s) == 0;
        if (!s->threaded) shard_thread(s); /* here, then: no beats meanwhile, same answer */
        s->busy = 1;
        return;
    }
    if (env->body_case == RLHF__ENVELOPE__BODY_SHARD_UPDATE)
        shard_on_update(s, m, env->shard_update, env);
    else
        llog("unexpected message %d from shard 0", env->body_case);
    rlhf__envelope__free_unpacked(env, NULL);
}

int worker_learner_shard_main(const worker_learner_opts_t *o, volatile sig_atomic_t *stop) {
    static shard_t S;
    shard_t *s = &S;
    opts_copy(o);
    s->index = L.index;
    s->n_shards = L.n_shards;
    s->hb_ms = L.hb_ms;
    s->threads = o->threads > 0 ? o->threads : 1;
    if (!o->endpoint) {
        fprintf(stderr, "rlhf-worker: --shard %d/%d needs --shard-endpoint (shard 0's)\n", s->index,
                s->n_shards);
        return 2;
    }
    void *zctx = zmq_ctx_new();
    s->efd = eventfd(0, EFD_CLOEXEC);
    s->sock = zctx ? zmq_socket(zctx, ZMQ_DEALER) : NULL;
    if (!s->sock || s->efd < 0) {
        fprintf(stderr, "rlhf-worker: cannot create a socket: %s\n", zmq_strerror(errno));
        return 1;
    }
    int linger = 1000, sndtimeo = s->hb_ms * (o->liveness > 0 ? o->liveness : 3) * 10;
    int64_t maxmsg = MAX_MSG_BYTES;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(s->sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo);
    if (zmq_connect(s->sock, o->endpoint) < 0) {
        fprintf(stderr, "rlhf-worker: connect %s: %s\n", o->endpoint, zmq_strerror(errno));
        return 1;
    }
    llog("learner shard %d/%d connecting to %s", s->index, s->n_shards, o->endpoint);
    double next_beat = 0;
    while (!*stop) {
        double now = wire_now_ms();
        if (now >= next_beat) {
            shard_beat(s);
            next_beat = now + s->hb_ms;
        }
        zmq_pollitem_t it[2] = {{s->sock, 0, s->busy ? 0 : ZMQ_POLLIN, 0},
                                {NULL, s->efd, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(it, 2, (long)(next_beat - now) + 1);
        if (rc < 0 && errno != EINTR) {
            llog("zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if (rc > 0 && (it[1].revents & ZMQ_POLLIN)) shard_slice_done(s);
        wire_msg_t m;
        /* one slice at a time: what arrives meanwhile waits in the socket */
        while (!*stop && !s->busy && wire_recv(s->sock, 0, &m, ZMQ_DONTWAIT) > 0) {
            shard_on_message(s, &m);
            wire_msg_free(&m);
        }
    }
    llog("stopping (signal %d)", (int)*stop);
    if (s->busy) {
        atomic_store(&s->cancel, 1);
        if (s->threaded) pthread_join(s->th, NULL);
        rlhf__envelope__free_unpacked(s->env, NULL);
        wire_msg_free(&s->msg);
    }
    linger = 0;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(s->sock);
    zmq_ctx_term(zctx);
    close(s->efd);
    gpt_destroy(&s->model);
    rm_cache_free();
    llog("exit");
    return 0;
}
