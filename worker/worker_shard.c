/*
 * worker_shard.c - the learner's shard protocol (see worker_shard.h): tensor frames, the math of
 * one node of a step's gradient tree, shard 0's hub, and the main loop of shards 1..S-1.
 *
 * A shard k >= 1 holds a copy of the parameters and nothing else: it connects a DEALER to the
 * ROUTER that shard 0 binds on --shard-endpoint, beats every heartbeat interval (ShardBeat:
 * index, pid, parameter checksum, last round, busy), computes each node it is sent on a compute
 * thread (its main thread keeps beating) - the node's blocks one by one, combined as the tree
 * does - and returns the node's value (ShardGrad); a ShardUpdate brings the new parameters after
 * each step. The master never sees it.
 */
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

#include <jansson.h>
#include <zmq.h>

#include "align/ppo.h"
#include "base/crc32c.h"
#include "base/err.h"
#include "base/fs.h"
#include "net/addr.h"
#include "net/sec.h"
#include "nn/ops.h"
#include "nn/train.h"
#include "worker_rmdata.h"
#include "worker_shard.h"

/* A frame size limit of the largest chunk plus room for envelopes. */
#define MAX_MSG_BYTES ((int64_t)(SHARD_CHUNK_FLOATS * sizeof(float)) + (2 << 20))
#define PATH_LEN      4096

void shard_log(const char *who, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    wire_logv(who, fmt, ap);
    va_end(ap);
}

/* ---- tensor frames -------------------------------------------------------------------------- */

int shard_frames_add(shard_frames_t *f, const char *name, Rlhf__DType dt, const void *data,
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

int shard_frames_add_arena(shard_frames_t *f, const char *name, const float *x, size_t n,
                           size_t chunk_floats) {
    for (size_t off = 0; off < n; off += chunk_floats) {
        size_t k = n - off < chunk_floats ? n - off : chunk_floats;
        int rc = shard_frames_add(f, name, RLHF__DTYPE__DTYPE_F32, x + off, k * sizeof(float),
                                  (int64_t)k, -1);
        if (rc < 0) return rc;
    }
    return 0;
}

/* Appends the frames of `src` (already described: their checksums are not computed again). */
static int frames_append(shard_frames_t *f, const shard_frames_t *src) {
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
                       shard_frames_t *f, int flags) {
    env->frames = f ? f->pth : NULL;
    env->n_frames = f ? (size_t)f->n : 0;
    return wire_send(sock, rid, rid_len, env, f ? f->data : NULL, f ? f->len : NULL, f ? f->n : 0,
                     flags);
}

/* Frames received without copying may be unaligned, hence the memcpy per element. */
int shard_arena_read(const wire_msg_t *m, const Rlhf__Envelope *env, size_t first, const char *name,
                     float *dst, size_t n, int add) {
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

uint32_t shard_params_crc(const gpt_t *m) {
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

void shard_node_rows(const shard_node_t *nd, int *r0, int *r1) {
    int x;
    if (nd->j1 <= nd->j0) {
        *r0 = *r1 = 0;
        return;
    }
    gtree_block(nd->B, nd->nb, nd->j0, r0, &x);
    gtree_block(nd->B, nd->nb, nd->j1 - 1, &x, r1);
}

int shard_node_leaves(gtree_t *g, gpt_t *m, const shard_node_t *nd, const int *in, const int *tg,
                      int T, const rmdata_t *rmd, const rm_opts_t *ro) {
    if (rmd && rmd->is_dpo)
        return dpo_grad_leaves(g, m, &rmd->d, in, nd->B, nd->nb, nd->j0, nd->j1, &rmd->dpo);
    if (rmd) return rm_grad_leaves(g, m, &rmd->d, in, nd->B, nd->nb, nd->j0, nd->j1, ro);
    int r0, r1;
    shard_node_rows(nd, &r0, &r1);
    train_lm_blocks_t b = {m, in, tg, NULL, nd->B, T, nd->nb, r0, nd->norm, 0, 0};
    int rc = gpt_grads_alloc(m);
    return rc < 0 ? rc : train_lm_leaves(g, &b, nd->j0, nd->j1);
}

/* ---- shard 0: the hub ----------------------------------------------------------------------- */

#define hlog(h, ...) shard_log((h)->who, __VA_ARGS__)

static double live_ms(const shard_hub_t *h) {
    return (double)h->hb_ms * h->liveness;
}

int shard_hub_open(shard_hub_t *h, const worker_learner_opts_t *o, const char *run_dir,
                   const char *who) {
    h->who = who;
    h->n_shards = o->n_shards > 0 ? o->n_shards : 1;
    h->hb_ms = o->hb_ms > 0 ? o->hb_ms : 1000;
    h->liveness = o->liveness > 0 ? o->liveness : 3;
    h->wait_ms = o->wait_ms > 0 ? o->wait_ms : 30000;
    h->chunk_floats = SHARD_CHUNK_FLOATS;
    if (o->chunk_kib > 0 && (size_t)o->chunk_kib * 256 <= SHARD_CHUNK_FLOATS)
        h->chunk_floats = (size_t)o->chunk_kib * 256;
    uint64_t t = wire_now_ns() ^ ((uint64_t)getpid() << 40);
    h->round = t & ~0xFFFFFULL; /* round ids differ between incarnations */
    if (h->n_shards == 1) return 0;
    if (!o->endpoint) return rl_fail(RL_EINVAL, "--shard 0/%d needs --shard-endpoint", h->n_shards);
    h->zctx = zmq_ctx_new();
    h->sock = h->zctx ? zmq_socket(h->zctx, ZMQ_ROUTER) : NULL;
    if (h->sock) addr_zmq_opts(h->sock);
    if (!h->sock) return rl_fail(RL_EIO, "zmq_socket: %s", zmq_strerror(errno));
    int src = sec_server(h->zctx, h->sock, "shard"); /* the shards share the learner's key */
    if (src < 0) return src;
    int one = 1, linger = 1000, hwm = 1000;
    int64_t maxmsg = MAX_MSG_BYTES;
    /* a send to a shard that is gone fails at once (EHOSTUNREACH) instead of vanishing */
    zmq_setsockopt(h->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(h->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(h->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(h->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(h->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_bind(h->sock, o->endpoint) < 0)
        return rl_fail(RL_EIO, "bind %s: %s", o->endpoint, zmq_strerror(errno));
    char ep[512];
    size_t sz = sizeof ep;
    zmq_getsockopt(h->sock, ZMQ_LAST_ENDPOINT, ep, &sz);
    addr_normalize(ep, sizeof ep);
    hlog(h, "learner shard 0/%d: shards connect to %s", h->n_shards, ep);
    if (run_dir[0]) {
        char path[PATH_LEN + 20], js[700];
        snprintf(path, sizeof path, "%s/learner.json", run_dir);
        int n = snprintf(js, sizeof js, "{\"endpoint\":\"%s\",\"shards\":%d,\"pid\":%d}\n", ep,
                         h->n_shards, (int)getpid());
        int rc = fs_write_atomic(path, js, (size_t)n);
        if (rc < 0) return rc;
    }
    return 0;
}

static void peer_round_clear(shard_peer_t *p) {
    p->waiting = p->lost = p->stale = p->fail = p->acked = 0;
    if (p->env) rlhf__envelope__free_unpacked(p->env, NULL);
    p->env = NULL;
    wire_msg_free(&p->msg);
}

void shard_hub_round_clear(shard_hub_t *h) {
    for (int i = 1; i < h->n_shards; i++) peer_round_clear(&h->peers[i]);
}

void shard_hub_close(shard_hub_t *h) {
    for (int i = 0; i < WORKER_LEARNER_MAX_SHARDS; i++) peer_round_clear(&h->peers[i]);
    if (h->sock) zmq_close(h->sock);
    if (h->zctx) zmq_ctx_term(h->zctx);
    h->sock = h->zctx = NULL;
    h->pf_valid = 0;
}

static shard_peer_t *peer_at(shard_hub_t *h, uint32_t index) {
    return index >= 1 && index < (uint32_t)h->n_shards ? &h->peers[index] : NULL;
}

static int peer_is(const shard_peer_t *p, const wire_msg_t *m) {
    return p->known && p->rid_len == m->rid_len && !memcmp(p->rid, m->rid, m->rid_len);
}

static void on_shard_message(shard_hub_t *h, wire_msg_t *m) {
    Rlhf__Envelope *env = NULL;
    wire_bad_t bad = wire_decode(m, &env);
    if (bad != WIRE_OK) {
        hlog(h, "dropped a bad message from a shard (%s)", wire_bad_name(bad));
        return;
    }
    double now = wire_now_ms();
    shard_peer_t *p = NULL;
    switch (env->body_case) {
    case RLHF__ENVELOPE__BODY_SHARD_BEAT: {
        const Rlhf__ShardBeat *b = env->shard_beat;
        if (!(p = peer_at(h, b->index)) || b->n_shards != (uint32_t)h->n_shards) {
            hlog(h, "dropped a beat of shard %u/%u: this learner has %d shards", b->index,
                 b->n_shards, h->n_shards);
            break;
        }
        if (!peer_is(p, m) || p->pid != b->pid) {
            if (p->known) {
                hlog(h, "shard %u is a new process (pid %d, was %d)", b->index, b->pid, p->pid);
                if (p->waiting && !p->env) p->lost = 1; /* its node died with the old one */
            } else {
                hlog(h, "shard %u joined (pid %d)", b->index, b->pid);
            }
            memcpy(p->rid, m->rid, m->rid_len);
            p->rid_len = m->rid_len;
            p->pid = b->pid;
            p->crc = b->params_crc32c;
            p->known = 1;
        }
        p->last_seen = now;
        if (p->waiting && !p->env && !p->lost && b->round == h->round && !b->busy) {
            hlog(h, "shard %u is done with round %" PRIu64 " but its gradient never came", b->index,
                 b->round);
            p->lost = 1;
        }
        break;
    }
    case RLHF__ENVELOPE__BODY_SHARD_GRAD: {
        const Rlhf__ShardGrad *g = env->shard_grad;
        if (!(p = peer_at(h, g->index)) || !peer_is(p, m)) break;
        p->last_seen = now;
        if (!p->waiting || p->env || g->round != h->round) {
            hlog(h, "dropped a gradient of shard %u for round %" PRIu64 " (not the current one)",
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
        if (!(p = peer_at(h, a->index)) || !peer_is(p, m)) break;
        p->last_seen = now;
        p->crc = a->params_crc32c;
        if (a->round == h->round) p->acked = 1;
        break;
    }
    default:
        hlog(h, "unexpected message %d from a shard", env->body_case);
        break;
    }
    if (env) rlhf__envelope__free_unpacked(env, NULL);
}

/* Waits up to timeout_ms for shard messages, then handles every one queued. */
static void shards_poll(shard_hub_t *h, int timeout_ms) {
    zmq_pollitem_t it = {h->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0) return;
    wire_msg_t m;
    while (wire_recv(h->sock, 1, &m, ZMQ_DONTWAIT) > 0) {
        on_shard_message(h, &m);
        wire_msg_free(&m);
    }
}

static int peer_live(const shard_hub_t *h, const shard_peer_t *p, double now) {
    return p->known && now - p->last_seen <= live_ms(h);
}

int shard_hub_wait(shard_hub_t *h, const worker_job_t *job) {
    double t0 = wire_now_ms();
    int logged = 0;
    for (;;) {
        shards_poll(h, 0);
        double now = wire_now_ms();
        char missing[256] = "";
        size_t used = 0;
        for (int i = 1; i < h->n_shards; i++)
            if (!peer_live(h, &h->peers[i], now) && used < sizeof missing - 8)
                used += (size_t)snprintf(missing + used, sizeof missing - used, " %d", i);
        if (!missing[0]) {
            if (logged) hlog(h, "all %d shards present", h->n_shards);
            return 0;
        }
        if (atomic_load(job->cancel)) return rl_fail(RL_EIO, "train: cancelled");
        if (now - t0 > h->wait_ms)
            return rl_fail(RL_EIO, "train: learner shard(s)%s missing for %d ms", missing,
                           h->wait_ms);
        if (!logged) hlog(h, "waiting for shard(s)%s", missing);
        logged = 1;
        shards_poll(h, h->hb_ms);
    }
}

/* The parameter arena described as frames (once per parameter version). */
static int params_frames(shard_hub_t *h, const gpt_t *m, uint32_t crc) {
    if (h->pf_valid && h->pf_crc == crc) return 0;
    h->pf.n = 0;
    int rc =
        shard_frames_add_arena(&h->pf, "params", m->params_mem, m->num_params, h->chunk_floats);
    h->pf_valid = rc == 0;
    h->pf_crc = crc;
    return rc;
}

uint32_t shard_hub_params_changed(shard_hub_t *h, const gpt_t *m) {
    h->pf.n = 0;
    h->pf_valid = shard_frames_add_arena(&h->pf, "params", m->params_mem, m->num_params,
                                         h->chunk_floats) == 0;
    uint32_t crc = 0;
    for (int i = 0; h->pf_valid && i < h->pf.n; i++)
        crc = i ? crc32c_combine(crc, h->pf.th[i].crc32c, h->pf.len[i]) : h->pf.th[i].crc32c;
    crc = h->pf_valid ? crc : shard_params_crc(m);
    h->pf_crc = crc;
    return crc;
}

int shard_hub_send_step(shard_hub_t *h, int i, const gpt_t *m, uint32_t crc, uint64_t job_id,
                        uint64_t step, const int *in, const int *tg, int T, const shard_node_t *nd,
                        uint32_t delay_ms, const shard_frames_t *extra) {
    shard_peer_t *p = &h->peers[i];
    const gpt_config_t *c = &m->cfg;
    int r0, r1;
    shard_node_rows(nd, &r0, &r1);
    int rows = r1 - r0;
    in += (size_t)r0 * (size_t)T;
    tg += (size_t)r0 * (size_t)T;
    Rlhf__ShardStep st = RLHF__SHARD_STEP__INIT;
    st.job_id = job_id;
    st.step = step;
    st.round = h->round;
    st.index = (uint32_t)i;
    st.rows = (uint32_t)rows;
    st.seq_len = (uint32_t)T;
    st.norm = nd->norm;
    st.grad_blocks = (uint32_t)nd->nb;
    st.block0 = (uint32_t)nd->j0;
    st.n_blocks = (uint32_t)(nd->j1 - nd->j0);
    st.batch_rows = (uint32_t)nd->B;
    st.params_crc32c = crc;
    st.n_params = m->num_params;
    st.n_layer = (uint32_t)c->n_layer;
    st.n_head = (uint32_t)c->n_head;
    st.n_embd = (uint32_t)c->n_embd;
    st.vocab_size = (uint32_t)c->vocab_size;
    st.n_positions = (uint32_t)c->n_positions;
    st.layer_norm_epsilon = c->layer_norm_epsilon;
    st.scalar_head = c->scalar_head != 0;
    st.arch = (uint32_t)c->arch;
    st.n_kv_head = (uint32_t)c->n_kv_head;
    st.head_dim = (uint32_t)c->head_dim;
    st.n_inner = (uint32_t)c->n_inner;
    st.tie_word_embeddings = c->tie_word_embeddings != 0;
    st.attn_bias = c->attn_bias != 0;
    st.qk_norm = c->qk_norm != 0;
    st.rope_theta = c->rope_theta;
    st.rope_llama3 = c->rope_llama3 != 0;
    st.rope_factor = c->rope_factor;
    st.rope_low_freq_factor = c->rope_low_freq_factor;
    st.rope_high_freq_factor = c->rope_high_freq_factor;
    st.rope_original_max_pos = (uint32_t)c->rope_original_max_pos;
    st.bos_token_id = c->bos_token_id;
    st.eos_token_id = c->eos_token_id;
    st.delay_ms = delay_ms;
    shard_frames_t *f = &h->fr;
    f->n = 0;
    size_t bytes = (size_t)rows * (size_t)T * sizeof(int);
    int rc = shard_frames_add(f, "inputs", RLHF__DTYPE__DTYPE_I32, in, bytes, rows, T);
    if (rc == 0) rc = shard_frames_add(f, "targets", RLHF__DTYPE__DTYPE_I32, tg, bytes, rows, T);
    if (rc == 0 && extra) rc = frames_append(f, extra);
    if (rc == 0 && rows && p->crc != crc) {
        rc = params_frames(h, m, crc);
        if (rc == 0) rc = frames_append(f, &h->pf);
    }
    if (rc < 0) return rc;
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    env.body_case = RLHF__ENVELOPE__BODY_SHARD_STEP;
    env.shard_step = &st;
    p->waiting = 1;
    if (frames_send(h->sock, p->rid, p->rid_len, &env, f, ZMQ_DONTWAIT) < 0) {
        hlog(h, "shard %d unreachable: %s", i, rl_errmsg());
        p->lost = 1;
        p->known = 0; /* present again only once it beats again */
    }
    return 0;
}

int shard_hub_gather(shard_hub_t *h, const worker_job_t *job, uint64_t step, int *broken) {
    *broken = 0;
    for (;;) {
        int pending = 0;
        double now = wire_now_ms();
        for (int i = 1; i < h->n_shards; i++) {
            shard_peer_t *p = &h->peers[i];
            if (p->fail)
                return rl_fail(p->fail, "train: step %" PRIu64 ": shard %d: %s", step, i, p->err);
            if (!p->lost && !p->stale && !p->env && !peer_live(h, p, now)) {
                hlog(h, "shard %d lost mid-step %" PRIu64 " (silent for %.0f ms)", i, step,
                     now - p->last_seen);
                p->lost = 1;
                p->known = 0;
            }
            if (p->lost || p->stale)
                *broken = 1;
            else if (!p->env)
                pending++;
        }
        if (*broken || !pending) return 0;
        if (atomic_load(job->cancel)) return rl_fail(RL_EIO, "train: cancelled");
        shards_poll(h, h->hb_ms);
    }
}

/* gtree_load_fn: a shard's node value from the "grad" frames of its ShardGrad. */
static int peer_load(void *ctx, float *dst, size_t n, int add) {
    const shard_peer_t *p = ctx;
    return shard_arena_read(&p->msg, p->env, 0, "grad", dst, n, add);
}

int shard_hub_combine(shard_hub_t *h, gtree_t *g, int k, const int *lo, const int *hi) {
    int rc = 0;
    for (int i = 1; rc == 0 && i < k; i++) {
        shard_peer_t *p = &h->peers[i];
        const Rlhf__ShardGrad *sg = p->env->shard_grad;
        if (sg->n_stats != GTREE_NSTAT)
            rc = rl_fail(RL_EPROTO, "train: shard %d sent %zu figures with its node, not %d", i,
                         sg->n_stats, GTREE_NSTAT);
        else if ((rc = gtree_push(g, lo[i], hi[i], sg->stats, sg->empty, peer_load, p)) < 0)
            rc = rl_fail_ctx(RL_EPROTO, "train: shard %d's node (blocks %d..%d)", i, lo[i],
                             hi[i] - 1);
    }
    shard_hub_round_clear(h);
    return rc;
}

int shard_hub_send_update(shard_hub_t *h, const gpt_t *m, uint32_t crc, uint64_t job_id,
                          uint64_t step, int want_ack) {
    if (params_frames(h, m, crc) < 0) {
        hlog(h, "cannot describe the parameters: %s", rl_errmsg());
        for (int i = 1; i < h->n_shards; i++) h->peers[i].crc = 0;
        return 1;
    }
    Rlhf__ShardUpdate u = RLHF__SHARD_UPDATE__INIT;
    u.job_id = job_id;
    u.step = step;
    u.round = h->round;
    u.params_crc32c = crc;
    u.want_ack = want_ack != 0;
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    env.body_case = RLHF__ENVELOPE__BODY_SHARD_UPDATE;
    env.shard_update = &u;
    for (int i = 1; i < h->n_shards; i++) {
        shard_peer_t *p = &h->peers[i];
        p->acked = 0;
        /* assumed applied: a shard that did not gets them again with its next node, since its
         * ShardGrad then reports the checksum it really holds */
        p->crc =
            frames_send(h->sock, p->rid, p->rid_len, &env, &h->pf, ZMQ_DONTWAIT) == 0 ? crc : 0;
    }
    if (!want_ack) return h->n_shards;
    double t0 = wire_now_ms();
    for (;;) {
        int in_sync = 1, pending = 0;
        double now = wire_now_ms();
        for (int i = 1; i < h->n_shards; i++) {
            const shard_peer_t *p = &h->peers[i];
            if (p->acked && p->crc == crc)
                in_sync++;
            else if (!p->acked && p->crc == crc && peer_live(h, p, now))
                pending++;
        }
        if (!pending || now - t0 > live_ms(h)) return in_sync;
        shards_poll(h, h->hb_ms);
    }
}

/* ---- shards 1..S-1 -------------------------------------------------------------------------- */

/* A shard k >= 1: its socket, parameters, the node in progress and the RM data. */
typedef struct {
    int index, n_shards, hb_ms, threads;
    size_t chunk_floats;
    char who[96];
    rmdata_t rmd; /* the pairs file of RM nodes */
    void *sock;
    int efd;
    gpt_t *model;
    uint32_t crc; /* of the parameters held; 0: none */
    gpt_t *other; /* the model of the other kind (with / without a scalar head: PPO's value
                     model and policy), kept for the next step that needs it, with its
                     checksum and its reduction (arenas of its size) */
    uint32_t other_crc;
    gtree_t other_tree;
    uint64_t round; /* of the last ShardStep read */
    /* the node in progress (compute thread) */
    pthread_t th;
    int busy, threaded;
    atomic_int cancel;
    wire_msg_t msg;
    Rlhf__Envelope *env;
    int rc;
    char err[256];
    double stat[GTREE_NSTAT]; /* the node's figures (worker_shard.h) */
    int empty;                /* the node had nothing to score (or there was none) */
    gtree_t tree;             /* the node's reduction */
} shard_t;

#define slog(s, ...) shard_log((s)->who, __VA_ARGS__)

static int shard_model_fit(shard_t *s, const Rlhf__ShardStep *st) {
    gpt_config_t c = {.n_layer = (int)st->n_layer,
                      .n_head = (int)st->n_head,
                      .n_embd = (int)st->n_embd,
                      .vocab_size = (int)st->vocab_size,
                      .n_positions = (int)st->n_positions,
                      .layer_norm_epsilon = st->layer_norm_epsilon,
                      .scalar_head = st->scalar_head ? 1 : 0,
                      .arch = (int)st->arch,
                      .n_kv_head = (int)st->n_kv_head,
                      .head_dim = (int)st->head_dim,
                      .n_inner = (int)st->n_inner,
                      .tie_word_embeddings = st->tie_word_embeddings ? 1 : 0,
                      .attn_bias = st->attn_bias ? 1 : 0,
                      .qk_norm = st->qk_norm ? 1 : 0,
                      .rope_theta = st->rope_theta,
                      .rope_llama3 = st->rope_llama3 ? 1 : 0,
                      .rope_factor = st->rope_factor,
                      .rope_low_freq_factor = st->rope_low_freq_factor,
                      .rope_high_freq_factor = st->rope_high_freq_factor,
                      .rope_original_max_pos = (int)st->rope_original_max_pos,
                      .bos_token_id = st->bos_token_id,
                      .eos_token_id = st->eos_token_id};
    if (s->model && !memcmp(&s->model->cfg, &c, sizeof c)) return 0;
    gpt_destroy(&s->model);
    s->crc = 0;
    if (gpt_config_check(&c) < 0) return rl_fail_ctx(RL_EPROTO, "shard step");
    if (!(s->model = gpt_new(&c))) return rl_fail_ctx(RL_ENOMEM, "shard step");
    if (s->model->num_params != st->n_params) {
        gpt_destroy(&s->model);
        return rl_fail(RL_EPROTO, "shard step: %" PRIu64 " parameters for a model of another size",
                       st->n_params);
    }
    return 0;
}

/* Makes the model of the step's kind (scalar head or not) the current one: PPO alternates
 * policy and value steps, and each keeps its model instead of rebuilding it. */
static void shard_model_pick(shard_t *s, int scalar_head) {
    if (s->model && (s->model->cfg.scalar_head != 0) == (scalar_head != 0)) return;
    gpt_t *m = s->model;
    uint32_t crc = s->crc;
    s->model = s->other;
    s->crc = s->other_crc;
    s->other = m;
    s->other_crc = crc;
    gtree_t t = s->tree;
    s->tree = s->other_tree;
    s->other_tree = t;
}

/* The node a ShardStep asks for, checked against its rows. */
static int node_of(const Rlhf__ShardStep *st, shard_node_t *nd) {
    *nd = (shard_node_t){0, 0, 0, 0, st->norm};
    if (st->n_blocks == 0 && st->rows == 0) return 0; /* no node */
    if (st->n_blocks >= 1 && st->grad_blocks <= GTREE_MAX_BLOCKS &&
        st->batch_rows >= st->grad_blocks && st->batch_rows <= 1u << 20 &&
        st->n_blocks <= st->grad_blocks && st->block0 <= st->grad_blocks - st->n_blocks) {
        *nd = (shard_node_t){(int)st->grad_blocks, (int)st->block0,
                             (int)(st->block0 + st->n_blocks), (int)st->batch_rows, st->norm};
        int r0, r1;
        shard_node_rows(nd, &r0, &r1);
        if (gtree_is_node(nd->nb, nd->j0, nd->j1) && (uint32_t)(r1 - r0) == st->rows) return 0;
    }
    return rl_fail(RL_EINVAL,
                   "shard step: %u rows for blocks %u..+%u of %u over %u rows: not a node of the "
                   "step's tree",
                   st->rows, st->block0, st->n_blocks, st->grad_blocks, st->batch_rows);
}

/* The node's blocks (rows = items of an RM step, with rs) into s->tree, then its value; the
 * shard holds the step's parameters. */
static int node_run(shard_t *s, const shard_node_t *nd, const Rlhf__TrainSpec *rs, int T,
                    size_t bytes) {
    int rc = rs ? rmdata_get(&s->rmd, rs, s->model->cfg.vocab_size) : 0;
    if (rc < 0) return rc;
    rm_opts_t o = rs ? rmdata_opts(&s->rmd, rs) : (rm_opts_t){0};
    /* frames received without copying may be unaligned */
    int *in = malloc(bytes ? bytes : 1), *tg = malloc(bytes ? bytes : 1), lo, hi;
    rc = in && tg ? gpt_grads_alloc(s->model) : rl_fail(RL_ENOMEM, "shard step: out of memory");
    if (rc == 0) {
        memcpy(in, wire_frame_data(&s->msg, 1), bytes);
        memcpy(tg, wire_frame_data(&s->msg, 2), bytes);
        gtree_reset(&s->tree, nd->nb, s->model->grads_mem, s->model->num_params);
        rc = shard_node_leaves(&s->tree, s->model, nd, in, tg, T, rs ? &s->rmd : NULL, &o);
    }
    if (rc == 0) rc = gtree_take(&s->tree, s->stat, &s->empty, &lo, &hi);
    free(in);
    free(tg);
    return rc;
}

/* A PPO step's node (frame "ppo": the minibatch, PpoStep): its blocks of the policy's or the
 * value model's gradient (ppo_grad_leaves) into s->tree, then its value. */
static int node_run_ppo(shard_t *s, const shard_node_t *nd, const Rlhf__PpoStep *ps) {
    ppo_config_t c;
    ppo_config_default(&c);
    json_t *cj = json_loads(ps->config_json ? ps->config_json : "{}", 0, NULL);
    int rc = cj ? ppo_config_from_json(&c, cj, "shard step: ppo config: ")
                : rl_fail(RL_EPROTO, "shard step: the PPO settings are not JSON");
    json_decref(cj);
    if (rc < 0) return rc;
    if (ps->n_rows != (size_t)nd->B || (ps->value != 0) != (s->model->cfg.scalar_head != 0))
        return rl_fail(RL_EPROTO, "shard step: %zu PPO rows (%s) for a minibatch of %d (%s)",
                       ps->n_rows, ps->value ? "value" : "policy", nd->B,
                       s->model->cfg.scalar_head ? "a model with a head" : "a policy");
    size_t ntok = 0;
    for (size_t i = 0; i < ps->n_rows; i++) {
        const Rlhf__PpoStepRow *w = ps->rows[i];
        size_t n = w->n_completion;
        if (!w->n_prompt || !n || w->n_lp_old != n || w->n_adv != n || w->n_v_old != n ||
            w->n_ret != n || w->n_ref != n || w->n_w != n)
            return rl_fail(RL_EPROTO, "shard step: PPO row %zu is not one rollout's", i);
        ntok += n;
    }
    ppo_seq_t *seqs = calloc(ps->n_rows, sizeof *seqs);
    float *buf = malloc(6 * (ntok ? ntok : 1) * sizeof(float));
    if (!seqs || !buf) {
        free(seqs), free(buf);
        return rl_fail(RL_ENOMEM, "shard step: out of memory");
    }
    float *a[6];
    for (int j = 0; j < 6; j++) a[j] = buf + (size_t)j * ntok;
    size_t k = 0;
    for (size_t i = 0; i < ps->n_rows; i++) {
        const Rlhf__PpoStepRow *w = ps->rows[i];
        size_t n = w->n_completion;
        const float *src[6] = {w->lp_old, w->adv, w->v_old, w->ret, w->ref, w->w};
        for (int j = 0; j < 6; j++) memcpy(a[j] + k, src[j], n * sizeof(float));
        seqs[i].prompt = (const int *)w->prompt;
        seqs[i].prompt_len = (int)w->n_prompt;
        seqs[i].completion = (const int *)w->completion;
        seqs[i].completion_len = (int)n;
        k += n;
    }
    ppo_rows_t r = {seqs, (int)ps->n_rows, a[0], a[1], a[2], a[3], a[4], a[5], ps->denom, ps->beta};
    int lo, hi;
    rc = gpt_grads_alloc(s->model);
    if (rc == 0) {
        gtree_reset(&s->tree, nd->nb, s->model->grads_mem, s->model->num_params);
        rc = ppo_grad_leaves(&s->tree, s->model, ps->value, &c, &r, nd->nb, nd->j0, nd->j1);
    }
    if (rc == 0) rc = gtree_take(&s->tree, s->stat, &s->empty, &lo, &hi);
    free(seqs), free(buf);
    return rc;
}

/* The node of one ShardStep: parameters (when attached), then its value. */
static int shard_slice(shard_t *s) {
    const Rlhf__Envelope *env = s->env;
    const Rlhf__ShardStep *st = env->shard_step;
    int rows = (int)st->rows, T = (int)st->seq_len, rc;
    size_t bytes = (size_t)rows * (size_t)T * sizeof(int);
    memset(s->stat, 0, sizeof s->stat);
    s->empty = 1;
    if (st->index != (uint32_t)s->index)
        return rl_fail(RL_EINVAL, "shard step for shard %u sent to shard %d", st->index, s->index);
    shard_node_t nd;
    if ((rc = node_of(st, &nd)) < 0) return rc;
    shard_model_pick(s, st->scalar_head);
    if (env->n_frames < 2 || wire_frame_size(&s->msg, 1) != bytes ||
        wire_frame_size(&s->msg, 2) != bytes)
        return rl_fail(RL_EPROTO, "shard step: inputs and targets of %d x %d ids expected", rows,
                       T);
    /* an RM step: frame "rm" (the job's RM settings) after the targets; the rows are items */
    size_t pfirst = 2;
    Rlhf__TrainSpec *rs = NULL;
    Rlhf__PpoStep *pst = NULL; /* a PPO step: frame "ppo" (the minibatch) after the targets */
    if (env->n_frames > 2 && env->frames[2]->name && !strcmp(env->frames[2]->name, "rm")) {
        rs = rlhf__train_spec__unpack(NULL, wire_frame_size(&s->msg, 3),
                                      wire_frame_data(&s->msg, 3));
        if (!rs) return rl_fail(RL_EPROTO, "shard step: a malformed RM spec");
        pfirst = 3;
    } else if (env->n_frames > 2 && env->frames[2]->name && !strcmp(env->frames[2]->name, "ppo")) {
        pst =
            rlhf__ppo_step__unpack(NULL, wire_frame_size(&s->msg, 3), wire_frame_data(&s->msg, 3));
        if (!pst) return rl_fail(RL_EPROTO, "shard step: a malformed PPO minibatch");
        pfirst = 3;
    }
    if (env->n_frames > pfirst) {
        rc = shard_model_fit(s, st);
        if (rc == 0)
            rc = shard_arena_read(&s->msg, env, pfirst, "params", s->model->params_mem,
                                  s->model->num_params, 0);
        s->crc = rc == 0 ? frames_crc(env, pfirst) : 0; /* wire_decode checked every frame's CRC */
        if (rc < 0) {
            if (rs) rlhf__train_spec__free_unpacked(rs, NULL);
            if (pst) rlhf__ppo_step__free_unpacked(pst, NULL);
            return rc;
        }
    }
    int run = nd.j1 > nd.j0; /* no node this step: nothing to compute */
    if (run && (!s->model || s->crc != st->params_crc32c)) {
        rc = rl_fail(RL_EPROTO, "shard %d holds parameters %08x, the step is at %08x", s->index,
                     s->crc, st->params_crc32c);
        run = 0;
    }
    /* test hook: an LM node that takes at least delay_ms */
    for (uint32_t waited = 0; run && !rs && waited < st->delay_ms && !atomic_load(&s->cancel);
         waited += 10) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (run) rc = pst ? node_run_ppo(s, &nd, pst) : node_run(s, &nd, rs, T, bytes);
    if (rs) rlhf__train_spec__free_unpacked(rs, NULL);
    if (pst) rlhf__ppo_step__free_unpacked(pst, NULL);
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

/* The compute thread finished: send the node's value (or why there is none). */
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
    g.code = s->rc;
    g.error = s->rc < 0 ? s->err : "";
    g.stats = s->stat;
    g.n_stats = s->rc == 0 ? GTREE_NSTAT : 0;
    g.empty = s->rc == 0 && s->empty;
    shard_frames_t *f = malloc(sizeof *f);
    int rc = f ? 0 : RL_ENOMEM;
    if (f) f->n = 0;
    if (rc == 0 && s->rc == 0 && !s->empty)
        rc = shard_frames_add_arena(f, "grad", s->model->grads_mem, s->model->num_params,
                                    s->chunk_floats);
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    env.body_case = RLHF__ENVELOPE__BODY_SHARD_GRAD;
    env.shard_grad = &g;
    /* blocking (up to the send timeout): a gradient must not be dropped at a full pipe */
    if (rc == 0) rc = frames_send(s->sock, NULL, 0, &env, f, 0);
    if (rc < 0)
        slog(s, "cannot send the gradient of step %" PRIu64 ": %s", st->step, rl_errmsg());
    else if (s->rc < 0)
        slog(s, "step %" PRIu64 " round %" PRIu64 ": %s", st->step, st->round, s->err);
    else
        slog(s, "sent the gradient of step %" PRIu64 " round %" PRIu64 " (%u rows, blocks %u..+%u)",
             st->step, st->round, st->rows, st->block0, st->n_blocks);
    free(f);
    rlhf__envelope__free_unpacked(s->env, NULL);
    s->env = NULL;
    wire_msg_free(&s->msg);
}

static void shard_on_update(shard_t *s, const wire_msg_t *m, const Rlhf__ShardUpdate *u,
                            const Rlhf__Envelope *env) {
    int rc = s->model ? shard_arena_read(m, env, 0, "params", s->model->params_mem,
                                         s->model->num_params, 0)
                      : rl_fail(RL_EPROTO, "no model yet");
    s->crc = rc == 0 ? frames_crc(env, 0) : 0;
    if (rc < 0 || s->crc != u->params_crc32c)
        slog(s,
             "update after step %" PRIu64 " not applied (%s): the next step brings the "
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
        slog(s, "dropped a bad message from shard 0 (%s)", wire_bad_name(bad));
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
        slog(s, "computing step %" PRIu64 " round %" PRIu64 " of job %" PRIu64 " (%u rows%s)",
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
        slog(s, "unexpected message %d from shard 0", env->body_case);
    rlhf__envelope__free_unpacked(env, NULL);
}

int worker_learner_shard_main(const worker_learner_opts_t *o, volatile sig_atomic_t *stop) {
    shard_t *s = calloc(1, sizeof *s);
    if (!s) {
        fprintf(stderr, "rlhf-worker: out of memory\n");
        return 1;
    }
    s->index = o->index;
    s->n_shards = o->n_shards > 0 ? o->n_shards : 1;
    s->hb_ms = o->hb_ms > 0 ? o->hb_ms : 1000;
    s->threads = o->threads > 0 ? o->threads : 1;
    s->chunk_floats = SHARD_CHUNK_FLOATS;
    if (o->chunk_kib > 0 && (size_t)o->chunk_kib * 256 <= SHARD_CHUNK_FLOATS)
        s->chunk_floats = (size_t)o->chunk_kib * 256;
    snprintf(s->who, sizeof s->who, "worker %.60s", o->id ? o->id : "learner");
    if (!o->endpoint) {
        fprintf(stderr, "rlhf-worker: --shard %d/%d needs --shard-endpoint (shard 0's)\n", s->index,
                s->n_shards);
        free(s);
        return 2;
    }
    void *zctx = zmq_ctx_new();
    s->efd = eventfd(0, EFD_CLOEXEC);
    s->sock = zctx ? zmq_socket(zctx, ZMQ_DEALER) : NULL;
    if (s->sock) addr_zmq_opts(s->sock);
    if (s->sock && sec_client(s->sock, sec_own() ? sec_own()->pub : NULL) < 0) {
        fprintf(stderr, "rlhf-worker: %s\n", rl_errmsg());
        return 1;
    }
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
    slog(s, "learner shard %d/%d connecting to %s", s->index, s->n_shards, o->endpoint);
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
            slog(s, "zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if (rc > 0 && (it[1].revents & ZMQ_POLLIN)) shard_slice_done(s);
        wire_msg_t m;
        /* one node at a time: what arrives meanwhile waits in the socket */
        while (!*stop && !s->busy && wire_recv(s->sock, 0, &m, ZMQ_DONTWAIT) > 0) {
            shard_on_message(s, &m);
            wire_msg_free(&m);
        }
    }
    slog(s, "stopping (signal %d)", (int)*stop);
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
    gpt_destroy(&s->other);
    gtree_free(&s->tree);
    gtree_free(&s->other_tree);
    rmdata_free(&s->rmd);
    slog(s, "exit");
    free(s);
    return 0;
}
