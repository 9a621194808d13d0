/*
 * worker_shard.h - the learner's shard protocol: how shard 0 and shards 1..S-1 share the work
 * of one optimizer step (see worker_learner.c for the step, worker/README.md for the picture).
 *
 *   shard_frames_*   tensors as raw ZeroMQ frames after the envelope (an arena in chunks)
 *   shard_node_*     the math of one shard: its node of the step's gradient tree (gtree.h) -
 *                    the blocks under it, each computed alone, combined as the tree does
 *   shard_hub_*      shard 0's side: the ROUTER the shards connect to, their liveness, one round
 *                    of ShardStep -> ShardGrad, the nodes combined in the tree, ShardUpdate ->
 *                    ShardAck
 *   worker_learner_shard_main (worker.h)   shards 1..S-1: a DEALER that beats and computes
 *
 * The reduction does not depend on S: a step's rows are cut into grad_blocks fixed blocks, the
 * blocks are combined by one canonical tree, the tree is cut top-down into S nodes, shard i
 * computes the i-th node's value and shard 0 combines the S values in the same tree. Any S gives
 * the bits of one process computing every block (`rlhf sft`, `rlhf train-rm` in process).
 *
 * Each try at a step is a round with a fresh id; nothing is applied before every gradient of
 * the round is in, and a late gradient of an old round is dropped. The hub is created on the
 * main thread before any job and then used only by the job thread.
 */
#ifndef RLHF_WORKER_SHARD_H
#define RLHF_WORKER_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "align/rm.h"
#include "net/wire.h"
#include "nn/gpt.h"
#include "nn/gtree.h"
#include "rlhf.pb-c.h"
#include "worker.h"
#include "worker_rmdata.h"

/* Arenas travel in frames of at most 16 MiB (--shard-chunk-kib: less). */
#define SHARD_CHUNK_FLOATS ((size_t)4 << 20)

/* Logs one line as `who` (the worker's name). */
void shard_log(const char *who, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- tensor frames ---- */

/* The raw frames of one outgoing message and their headers. Set n = 0 to start. */
typedef struct {
    Rlhf__TensorHeader th[WIRE_MAX_FRAMES];
    Rlhf__TensorHeader *pth[WIRE_MAX_FRAMES];
    int64_t shape[WIRE_MAX_FRAMES][2];
    const void *data[WIRE_MAX_FRAMES];
    size_t len[WIRE_MAX_FRAMES];
    int n;
} shard_frames_t;

/* Appends one frame (not copied: data must outlive the send), shape (d0) or (d0, d1) with
 * d1 >= 0. Returns 0 or RL_EUNSUPPORTED when the message is full. */
int shard_frames_add(shard_frames_t *f, const char *name, Rlhf__DType dt, const void *data,
                     size_t nbytes, int64_t d0, int64_t d1);

/* Appends an arena of n floats as frames of at most chunk_floats, all named `name`. */
int shard_frames_add_arena(shard_frames_t *f, const char *name, const float *x, size_t n,
                           size_t chunk_floats);

/* Reads an arena of n floats sent as frames named `name` (envelope frames [first, end)) into
 * dst: copied (add = 0) or added element by element (add = 1). RL_EPROTO if they do not add up
 * to n. */
int shard_arena_read(const wire_msg_t *m, const Rlhf__Envelope *env, size_t first, const char *name,
                     float *dst, size_t n, int add);

/* The CRC-32C of the model's parameter arena. */
uint32_t shard_params_crc(const gpt_t *m);

/* ---- the math of one shard ---- */

/* A shard's node of a step's gradient tree: blocks [j0, j1) of nb over the step's B rows (B
 * items of an RM step); LM losses are divided by norm, the step's scored weight. j0 == j1: no
 * node (more shards than blocks: the shard idles this step). */
typedef struct {
    int nb, j0, j1, B;
    double norm;
} shard_node_t;

/* The rows of the step a node covers: [*r0, *r1). */
void shard_node_rows(const shard_node_t *nd, int *r0, int *r1);

/* Computes the blocks of node nd into g (gtree_leaves; g reset by the caller over nd->nb blocks
 * on m's gradient arena): an LM step's rows in/tg (rows, T) from the node's first row, or, with
 * rmd, an RM or DPO step's items `in` from the node's first item (RM loss settings ro; DPO's
 * are rmd->dpo). Returns 0 or RL_E* (the model's, rm_grad's or dpo_grad's, a target outside the
 * vocabulary). */
int shard_node_leaves(gtree_t *g, gpt_t *m, const shard_node_t *nd, const int *in, const int *tg,
                      int T, const rmdata_t *rmd, const rm_opts_t *ro);

/* ---- shard 0: the hub ---- */

/* What shard 0 knows of shard k >= 1. */
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
    int fail;    /* it failed its node with this RL_E* code: the job fails */
    char err[256];
    int acked;
    wire_msg_t msg; /* its ShardGrad, kept until the sum */
    Rlhf__Envelope *env;
} shard_peer_t;

typedef struct shard_hub {
    int n_shards, hb_ms, liveness, wait_ms;
    size_t chunk_floats;
    const char *who; /* for the log: the learner's */
    void *zctx, *sock;
    shard_peer_t peers[WORKER_LEARNER_MAX_SHARDS];
    uint64_t round;    /* the id of the round in progress (or last) */
    shard_frames_t fr; /* a message being built */
    shard_frames_t pf; /* the parameter arena described, for pf_crc */
    uint32_t pf_crc;
    int pf_valid;
} shard_hub_t;

/* Sets up the hub of a learner with o->n_shards shards; with S > 1 binds the ROUTER on
 * o->endpoint and writes run_dir/learner.json {"endpoint","shards","pid"} (run_dir "" : none).
 * `who` must outlive the hub. Returns 0 or RL_E*; shard_hub_close either way. */
int shard_hub_open(shard_hub_t *h, const worker_learner_opts_t *o, const char *run_dir,
                   const char *who);

/* Closes the socket and drops any round in progress; safe on a zeroed hub. */
void shard_hub_close(shard_hub_t *h);

/* Forgets the round in progress of every shard (their gradients included). */
void shard_hub_round_clear(shard_hub_t *h);

/* Waits until every shard has been heard within the liveness window: RL_EIO after wait_ms or
 * when the job is cancelled. */
int shard_hub_wait(shard_hub_t *h, const worker_job_t *job);

/* Sends shard i its node nd of step `step` in round h->round: the node's rows x T inputs and
 * targets (from its first row), the test delay, `extra` frames (RM: the "rm" spec) and, when the
 * shard does not hold them, the parameters of m (checksum crc). A shard found unreachable is
 * marked lost. */
int shard_hub_send_step(shard_hub_t *h, int i, const gpt_t *m, uint32_t crc, uint64_t job_id,
                        uint64_t step, const int *in, const int *tg, int T, const shard_node_t *nd,
                        uint32_t delay_ms, const shard_frames_t *extra);

/* Waits for the gradients of the round from shards 1..S-1: 0 with
 * *broken = 0 when all are in, *broken = 1 when a shard was lost or lacked the parameters (the
 * round must be re-run), RL_E* when a shard failed its node or the job was cancelled. */
int shard_hub_gather(shard_hub_t *h, const worker_job_t *job, uint64_t step, int *broken);

/* Pushes the node values of shards 1..k-1 (node i is blocks [lo[i], hi[i])) into g, in that
 * order, after shard 0's own node: g then holds the step's value (gtree_take). Shards k..S-1 had
 * no node. Clears the round. Returns 0 or RL_EPROTO (a value that is not what was asked for). */
int shard_hub_combine(shard_hub_t *h, gtree_t *g, int k, const int *lo, const int *hi);

/* After an update: describes m's new arena as frames and returns its checksum (one pass). */
uint32_t shard_hub_params_changed(shard_hub_t *h, const gpt_t *m);

/* Sends m's parameters (checksum crc) to every shard; with want_ack, waits (within the liveness
 * window) for their acknowledgements. Returns the number of shards known to hold them, shard 0
 * too. */
int shard_hub_send_update(shard_hub_t *h, const gpt_t *m, uint32_t crc, uint64_t job_id,
                          uint64_t step, int want_ack);

#endif
