/*
 * wsync.c - versioned weight snapshots over ZeroMQ (see wsync.h): CRC-32C at memory speed, the
 * snapshot server, the chunked credit-window fetch, and the live/staging replica.
 */
#include "net/wsync.h"

#include <errno.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "base/crc32c.h"
#include "base/err.h"
#include "net/wire.h"

/* ---- shared helpers -------------------------------------------------------------------------- */

static void nap_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Unpacks and checks the envelope frame of m; NULL when it is not a current-version Envelope
 * with a body. The raw frames are checked by the caller (chunks against their own CRCs). */
static Rlhf__Envelope *env_unpack(const wire_msg_t *m) {
    if (m->n_frames < 1 || m->too_many || wire_frame_size(m, 0) > WIRE_MAX_ENVELOPE) return NULL;
    Rlhf__Envelope *e = rlhf__envelope__unpack(NULL, wire_frame_size(m, 0), wire_frame_data(m, 0));
    if (e && (e->protocol_version != RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT ||
              e->body_case == RLHF__ENVELOPE__BODY__NOT_SET)) {
        rlhf__envelope__free_unpacked(e, NULL);
        e = NULL;
    }
    return e;
}

void wsync_malloc_tune(void) {
#if defined(__GLIBC__) && defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
    mallopt(M_MMAP_THRESHOLD, 32 << 20); /* glibc's largest allowed value */
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

/* ---- server -----------------------------------------------------------------------------------
 */

typedef struct {
    atomic_int refs; /* the server's own reference + one per chunk message libzmq holds */
    uint64_t version;
    uint8_t *data;
    size_t bytes;
    uint32_t chunk_bytes, n_chunks;
    uint32_t *chunk_crc;
    uint32_t crc;
    int dtype;
    char name[64];
    char *meta;
} snap_t;

static void snap_unref(snap_t *p) {
    if (!p || atomic_fetch_sub(&p->refs, 1) != 1) return;
    free(p->data);
    free(p->chunk_crc);
    free(p->meta);
    free(p);
}

/* libzmq's free callback of a zero-copy chunk frame (runs on an I/O thread) */
static void chunk_free(void *data, void *hint) {
    (void)data;
    snap_unref(hint);
}

static void copy_free(void *data, void *hint) {
    (void)hint;
    free(data);
}

struct wsync_server {
    void *zctx, *sock;
    int own_ctx;
    char endpoint[256];
    size_t chunk_bytes;
    pthread_mutex_t lock; /* latest, prev */
    snap_t *latest, *prev;
    atomic_long corrupt_index; /* -1: none */
    atomic_int delay_ms;
    pthread_t th;
    int started;
    atomic_int stop;
    _Atomic uint64_t n_requests, n_chunks, n_bytes, n_dropped, n_bad;
};

wsync_server_t *wsync_server_new(void *zctx, const char *endpoint, size_t chunk_bytes) {
    if (!chunk_bytes) chunk_bytes = WSYNC_CHUNK_BYTES;
    if (chunk_bytes % 4 || chunk_bytes > WSYNC_MAX_CHUNK_BYTES) {
        rl_fail(RL_EINVAL, "wsync: chunk size %zu is not a multiple of 4 up to %u", chunk_bytes,
                WSYNC_MAX_CHUNK_BYTES);
        return NULL;
    }
    wsync_server_t *s = calloc(1, sizeof *s);
    if (!s) {
        rl_fail(RL_ENOMEM, "wsync: out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    atomic_init(&s->corrupt_index, -1);
    s->chunk_bytes = chunk_bytes;
    s->zctx = zctx;
    if (!s->zctx) {
        s->zctx = zmq_ctx_new();
        s->own_ctx = 1;
    }
    s->sock = s->zctx ? zmq_socket(s->zctx, ZMQ_ROUTER) : NULL;
    if (!s->sock) {
        rl_fail(RL_EIO, "wsync: zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    /* ROUTER_MANDATORY: a chunk for a vanished fetcher fails at once (EHOSTUNREACH) instead of
     * being queued; MAXMSGSIZE: requests are tiny, so a peer sending more is cut off by libzmq;
     * LINGER 0: at close, queued chunks are dropped (their fetchers retry elsewhere). The HWMs
     * only guard against a misbehaving peer: flow control is the fetchers' credit. */
    int one = 1, linger = 0, hwm = 4 * WSYNC_MAX_CREDIT;
    int64_t maxmsg = WSYNC_MAX_REQUEST;
    zmq_setsockopt(s->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_bind(s->sock, endpoint) < 0) {
        rl_fail(RL_EIO, "wsync: bind %s: %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    size_t sz = sizeof s->endpoint;
    zmq_getsockopt(s->sock, ZMQ_LAST_ENDPOINT, s->endpoint, &sz);
    return s;
fail:
    wsync_server_destroy(&s);
    return NULL;
}

void wsync_server_stop(wsync_server_t *s) {
    if (!s || !s->started) return;
    atomic_store(&s->stop, 1);
    pthread_join(s->th, NULL);
    s->started = 0;
}

void wsync_server_destroy(wsync_server_t **sp) {
    wsync_server_t *s = sp ? *sp : NULL;
    if (!s) return;
    wsync_server_stop(s);
    if (s->sock) zmq_close(s->sock);
    if (s->own_ctx && s->zctx) zmq_ctx_term(s->zctx);
    snap_unref(s->latest);
    snap_unref(s->prev);
    pthread_mutex_destroy(&s->lock);
    free(s);
    *sp = NULL;
}

const char *wsync_server_endpoint(const wsync_server_t *s) {
    return s->endpoint;
}

void *wsync_server_socket(wsync_server_t *s) {
    return s->sock;
}

int wsync_server_publish(wsync_server_t *s, uint64_t version, const void *data, size_t bytes,
                         const char *name, const char *meta) {
    if (!bytes || bytes % 4)
        return rl_fail(RL_EINVAL, "wsync: a snapshot of %zu bytes (not a positive multiple of 4)",
                       bytes);
    uint64_t cur = wsync_server_version(s);
    if (version <= cur)
        return rl_fail(RL_EINVAL, "wsync: version %llu is not newer than %llu",
                       (unsigned long long)version, (unsigned long long)cur);
    snap_t *p = calloc(1, sizeof *p);
    size_t n = (bytes + s->chunk_bytes - 1) / s->chunk_bytes;
    if (n > UINT32_MAX) {
        free(p);
        return rl_fail(RL_EINVAL, "wsync: too many chunks");
    }
    if (p) {
        p->data = malloc(bytes);
        p->chunk_crc = malloc(n * sizeof *p->chunk_crc);
        p->meta = strdup(meta ? meta : "");
    }
    if (!p || !p->data || !p->chunk_crc || !p->meta) {
        if (p) free(p->data), free(p->chunk_crc), free(p->meta);
        free(p);
        return rl_fail(RL_ENOMEM, "wsync: out of memory for a %zu-byte snapshot", bytes);
    }
    atomic_init(&p->refs, 1);
    p->version = version;
    p->bytes = bytes;
    p->chunk_bytes = (uint32_t)s->chunk_bytes;
    p->n_chunks = (uint32_t)n;
    p->dtype = RLHF__DTYPE__DTYPE_F32;
    snprintf(p->name, sizeof p->name, "%s", name ? name : "params");
    /* the copy and the chunk CRCs in one pass; the whole CRC in a second, independent one */
    for (size_t i = 0; i < n; i++) {
        size_t off = i * s->chunk_bytes,
               len = bytes - off < s->chunk_bytes ? bytes - off : s->chunk_bytes;
        p->chunk_crc[i] = crc32c_copy(0, p->data + off, (const uint8_t *)data + off, len);
    }
    p->crc = crc32c(0, p->data, bytes);
    pthread_mutex_lock(&s->lock);
    snap_t *old = s->prev;
    if (s->latest && version <= s->latest->version) { /* lost a race with another publisher */
        pthread_mutex_unlock(&s->lock);
        snap_unref(p);
        return rl_fail(RL_EINVAL, "wsync: version %llu is not newer than the latest",
                       (unsigned long long)version);
    }
    s->prev = s->latest;
    s->latest = p;
    pthread_mutex_unlock(&s->lock);
    snap_unref(old);
    return 0;
}

uint64_t wsync_server_version(wsync_server_t *s) {
    pthread_mutex_lock(&s->lock);
    uint64_t v = s->latest ? s->latest->version : 0;
    pthread_mutex_unlock(&s->lock);
    return v;
}

void wsync_server_corrupt_once(wsync_server_t *s, uint32_t index) {
    atomic_store(&s->corrupt_index, (long)index);
}

void wsync_server_set_delay(wsync_server_t *s, int delay_ms) {
    atomic_store(&s->delay_ms, delay_ms);
}

void wsync_server_stats(wsync_server_t *s, wsync_server_stats_t *o) {
    o->requests = atomic_load(&s->n_requests);
    o->chunks_sent = atomic_load(&s->n_chunks);
    o->bytes_sent = atomic_load(&s->n_bytes);
    o->send_dropped = atomic_load(&s->n_dropped);
    o->bad_requests = atomic_load(&s->n_bad);
}

/* Sends envelope + optional frame (zero-copy: msg already initialised) to rid. Returns 0 or -1
 * (errno from libzmq); the frame is consumed either way. */
static int srv_send(wsync_server_t *s, const wire_msg_t *req, Rlhf__Envelope *env,
                    zmq_msg_t *frame) {
    env->protocol_version = RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    size_t sz = rlhf__envelope__get_packed_size(env);
    uint8_t stackbuf[1024], *buf = sz <= sizeof stackbuf ? stackbuf : malloc(sz);
    int rc = -1;
    if (buf) {
        rlhf__envelope__pack(env, buf);
        if (zmq_send(s->sock, req->rid, req->rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
            zmq_send(s->sock, buf, sz, frame ? ZMQ_SNDMORE : 0) >= 0 &&
            (!frame || zmq_msg_send(frame, s->sock, 0) >= 0))
            rc = 0;
    }
    int e = errno;
    if (buf != stackbuf) free(buf);
    if (frame && rc < 0) zmq_msg_close(frame);
    errno = e;
    return rc;
}

static void srv_send_error(wsync_server_t *s, const wire_msg_t *req, const char *text) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Error er = RLHF__ERROR__INIT;
    er.code = RLHF__ERROR_CODE__ERROR_CODE_BAD_MESSAGE;
    er.message = (char *)text;
    env.body_case = RLHF__ENVELOPE__BODY_ERROR;
    env.error = &er;
    atomic_fetch_add(&s->n_bad, 1);
    srv_send(s, req, &env, NULL);
}

static void srv_send_info(wsync_server_t *s, const wire_msg_t *req, const snap_t *p,
                          const char *error) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__WeightsInfo in = RLHF__WEIGHTS_INFO__INIT;
    int64_t shape[1];
    if (p) {
        in.version = p->version;
        in.name = (char *)p->name;
        in.dtype = (Rlhf__DType)p->dtype;
        shape[0] = (int64_t)(p->bytes / 4);
        in.shape = shape;
        in.n_shape = 1;
        in.nbytes = p->bytes;
        in.chunk_bytes = p->chunk_bytes;
        in.chunk_crc32c = p->chunk_crc;
        in.n_chunk_crc32c = p->n_chunks;
        in.crc32c = p->crc;
        in.meta = p->meta;
    }
    in.error = (char *)(error ? error : "");
    env.body_case = RLHF__ENVELOPE__BODY_WEIGHTS_INFO;
    env.weights_info = &in;
    srv_send(s, req, &env, NULL);
}

static int srv_send_chunk(wsync_server_t *s, const wire_msg_t *req, snap_t *p, uint32_t i) {
    size_t off = (size_t)i * p->chunk_bytes;
    size_t len = p->bytes - off < p->chunk_bytes ? p->bytes - off : p->chunk_bytes;
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__WeightsChunk ch = RLHF__WEIGHTS_CHUNK__INIT;
    Rlhf__TensorHeader th = RLHF__TENSOR_HEADER__INIT, *ths[1] = {&th};
    int64_t shape[1] = {(int64_t)(len / 4)};
    ch.version = p->version;
    ch.index = i;
    ch.offset = off;
    ch.snapshot_crc32c = p->crc;
    th.name = p->name;
    th.dtype = (Rlhf__DType)p->dtype;
    th.shape = shape;
    th.n_shape = 1;
    th.nbytes = len;
    th.crc32c = p->chunk_crc[i];
    env.frames = ths;
    env.n_frames = 1;
    env.body_case = RLHF__ENVELOPE__BODY_WEIGHTS_CHUNK;
    env.weights_chunk = &ch;
    zmq_msg_t frame;
    long want = (long)i;
    if (atomic_compare_exchange_strong(&s->corrupt_index, &want, -1)) {
        uint8_t *copy = malloc(len);
        if (!copy) return -1;
        memcpy(copy, p->data + off, len);
        copy[len / 2] ^= 0x10; /* one bit, the true CRC stays in the header */
        zmq_msg_init_data(&frame, copy, len, copy_free, NULL);
    } else {
        atomic_fetch_add(&p->refs, 1); /* libzmq holds the bytes until chunk_free */
        zmq_msg_init_data(&frame, p->data + off, len, chunk_free, p);
    }
    if (srv_send(s, req, &env, &frame) < 0) {
        atomic_fetch_add(&s->n_dropped, 1);
        return -1;
    }
    atomic_fetch_add(&s->n_chunks, 1);
    atomic_fetch_add(&s->n_bytes, len);
    return 0;
}

static void srv_handle(wsync_server_t *s, wire_msg_t *m) {
    Rlhf__Envelope *env = env_unpack(m);
    if (!env || m->n_frames != 1) {
        srv_send_error(s, m, env ? "unexpected frames" : "malformed or unknown message");
        if (env) rlhf__envelope__free_unpacked(env, NULL);
        return;
    }
    if (env->body_case != RLHF__ENVELOPE__BODY_WEIGHTS_FETCH) {
        srv_send_error(s, m, "a weights server answers WeightsFetch only");
        rlhf__envelope__free_unpacked(env, NULL);
        return;
    }
    const Rlhf__WeightsFetch *f = env->weights_fetch;
    atomic_fetch_add(&s->n_requests, 1);
    int delay = atomic_load(&s->delay_ms);
    if (delay > 0) nap_ms(delay);
    /* take a reference: a publish on another thread may retire the snapshot meanwhile */
    pthread_mutex_lock(&s->lock);
    snap_t *p = NULL, *latest = s->latest;
    if (f->version == 0 || (latest && f->version == latest->version))
        p = latest;
    else if (s->prev && f->version == s->prev->version)
        p = s->prev;
    if (p) atomic_fetch_add(&p->refs, 1);
    if (latest) atomic_fetch_add(&latest->refs, 1);
    pthread_mutex_unlock(&s->lock);
    char why[128];
    if (!p) {
        snprintf(why, sizeof why, "version %llu is not available", (unsigned long long)f->version);
        srv_send_info(s, m, latest, latest ? why : "nothing published");
    } else if (f->n_chunks == 0) {
        srv_send_info(s, m, p, NULL);
    } else if (f->n_chunks > WSYNC_MAX_CREDIT || f->first_chunk >= p->n_chunks ||
               f->n_chunks > p->n_chunks - f->first_chunk) {
        snprintf(why, sizeof why, "chunks %u+%u: out of range (%u chunks, at most %d a request)",
                 f->first_chunk, f->n_chunks, p->n_chunks, WSYNC_MAX_CREDIT);
        srv_send_error(s, m, why);
    } else {
        for (uint32_t i = 0; i < f->n_chunks; i++)
            if (srv_send_chunk(s, m, p, f->first_chunk + i) < 0) break; /* the peer retries */
    }
    snap_unref(p);
    snap_unref(latest);
    rlhf__envelope__free_unpacked(env, NULL);
}

int wsync_server_poll(wsync_server_t *s, int timeout_ms) {
    zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
    if (timeout_ms != 0 && zmq_poll(&it, 1, timeout_ms) < 0 && errno != EINTR)
        return rl_fail(RL_EIO, "wsync: zmq_poll: %s", zmq_strerror(errno));
    int n = 0;
    for (;;) {
        wire_msg_t m;
        int rc = wire_recv(s->sock, 1, &m, ZMQ_DONTWAIT);
        if (rc < 0) return rc;
        if (rc == 0) break;
        srv_handle(s, &m);
        wire_msg_free(&m);
        n++;
    }
    return n;
}

static void *srv_thread(void *arg) {
    wsync_server_t *s = arg;
    while (!atomic_load(&s->stop))
        if (wsync_server_poll(s, 100) < 0) nap_ms(10);
    return NULL;
}

int wsync_server_start(wsync_server_t *s) {
    if (s->started) return 0;
    atomic_store(&s->stop, 0);
    if (pthread_create(&s->th, NULL, srv_thread, s) != 0)
        return rl_fail(RL_ENOMEM, "wsync: cannot start the server thread");
    s->started = 1;
    return 0;
}

/* ---- client -----------------------------------------------------------------------------------
 */

void wsync_snapshot_free(wsync_snapshot_t *s) {
    free(s->data);
    free(s->meta);
    memset(s, 0, sizeof *s);
}

enum { CH_TODO = 0, CH_ASKED, CH_DONE };

typedef struct {
    void *zctx, *sock;
    const char *endpoint;
    wsync_opts_t o;
    wsync_stats_t *st;
    Rlhf__Envelope *info_env; /* owns info */
    const Rlhf__WeightsInfo *info;
    uint8_t *state, *tries;
    uint32_t n, outstanding, done, cursor;
    uint32_t silences; /* in a row, without progress */
    uint8_t *dst;
} fetch_t;

static int fc_open(fetch_t *f) {
    f->sock = zmq_socket(f->zctx, ZMQ_DEALER);
    if (!f->sock) return rl_fail(RL_EIO, "wsync: zmq_socket: %s", zmq_strerror(errno));
    int linger = 0, hwm = 4 * WSYNC_MAX_CREDIT;
    int64_t maxmsg = (int64_t)WSYNC_MAX_CHUNK_BYTES + WIRE_MAX_ENVELOPE;
    zmq_setsockopt(f->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(f->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(f->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(f->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_connect(f->sock, f->endpoint) < 0)
        return rl_fail(RL_EIO, "wsync: connect %s: %s", f->endpoint, zmq_strerror(errno));
    return 0;
}

static void fc_close(fetch_t *f) {
    if (f->sock) zmq_close(f->sock);
    f->sock = NULL;
}

static int fc_request(fetch_t *f, uint64_t version, uint32_t first, uint32_t n) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__WeightsFetch rq = RLHF__WEIGHTS_FETCH__INIT;
    rq.version = version;
    rq.first_chunk = first;
    rq.n_chunks = n;
    env.body_case = RLHF__ENVELOPE__BODY_WEIGHTS_FETCH;
    env.weights_fetch = &rq;
    /* a DEALER with no connection yet queues the request; EAGAIN only if that queue is full */
    if (wire_send(f->sock, NULL, 0, &env, NULL, NULL, 0, ZMQ_DONTWAIT) < 0 && errno != EAGAIN)
        return RL_EIO;
    return 0;
}

/* Waits up to f->o.timeout_ms for a message (checking the cancel flag every 100 ms). Returns 1
 * with *m filled, 0 on silence, or a negative code. */
static int fc_wait(fetch_t *f, wire_msg_t *m) {
    double end = wire_now_ms() + f->o.timeout_ms;
    for (;;) {
        if (f->o.cancel && atomic_load(f->o.cancel)) return rl_fail(RL_EIO, "wsync: cancelled");
        int rc = wire_recv(f->sock, 0, m, ZMQ_DONTWAIT);
        if (rc != 0) return rc;
        double left = end - wire_now_ms();
        if (left <= 0) return 0;
        zmq_pollitem_t it = {f->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, left < 100 ? (long)left + 1 : 100) < 0 && errno != EINTR)
            return rl_fail(RL_EIO, "wsync: zmq_poll: %s", zmq_strerror(errno));
    }
}

/* A silence: drop the socket with whatever was in flight, start over on a fresh one. */
static int fc_timeout(fetch_t *f, const char *what) {
    f->st->timeouts++;
    if (++f->silences > (uint32_t)f->o.max_retries)
        return rl_fail(RL_EIO, "wsync: %s: no answer from %s in %d ms, %d times", what, f->endpoint,
                       f->o.timeout_ms, f->o.max_retries + 1);
    fc_close(f);
    for (uint32_t i = 0; i < f->n; i++)
        if (f->state && f->state[i] == CH_ASKED) f->state[i] = CH_TODO;
    f->outstanding = 0;
    f->cursor = 0;
    return fc_open(f);
}

/* Asks for the server's latest snapshot description. Returns 0 with f->info set. */
static int fc_describe(fetch_t *f) {
    if (f->info_env) rlhf__envelope__free_unpacked(f->info_env, NULL);
    f->info_env = NULL;
    f->info = NULL;
    int rc = fc_request(f, 0, 0, 0);
    while (rc == 0) {
        wire_msg_t m;
        rc = fc_wait(f, &m);
        if (rc < 0) break;
        if (rc == 0) {
            if ((rc = fc_timeout(f, "describe")) == 0) rc = fc_request(f, 0, 0, 0);
            continue;
        }
        Rlhf__Envelope *e = env_unpack(&m);
        wire_msg_free(&m);
        rc = 0;
        if (e && e->body_case == RLHF__ENVELOPE__BODY_WEIGHTS_INFO) {
            f->info_env = e;
            f->info = e->weights_info;
            f->silences = 0;
            return 0;
        }
        if (e && e->body_case == RLHF__ENVELOPE__BODY_ERROR)
            rc = rl_fail(RL_EPROTO, "wsync: %s: %s", f->endpoint, e->error->message);
        if (e) rlhf__envelope__free_unpacked(e, NULL); /* a late chunk of an earlier try */
    }
    return rc;
}

static void fc_fill(fetch_t *f) {
    uint32_t credit = (uint32_t)f->o.credit;
    while (f->outstanding < credit && f->cursor < f->n) {
        if (f->state[f->cursor] != CH_TODO) {
            f->cursor++;
            continue;
        }
        uint32_t first = f->cursor, k = 0;
        while (f->cursor < f->n && f->state[f->cursor] == CH_TODO && f->outstanding + k < credit)
            f->state[f->cursor++] = CH_ASKED, k++;
        if (fc_request(f, f->info->version, first, k) < 0) return; /* the silence will retry */
        f->outstanding += k;
    }
    if (f->outstanding > f->st->max_outstanding) f->st->max_outstanding = f->outstanding;
}

/* Handles one chunk message. Returns 0, 1 when the snapshot changed (start over), or < 0. */
static int fc_chunk(fetch_t *f, const wire_msg_t *m, const Rlhf__Envelope *e) {
    const Rlhf__WeightsChunk *c = e->weights_chunk;
    const Rlhf__WeightsInfo *in = f->info;
    if (c->version != in->version || c->snapshot_crc32c != in->crc32c) return 1;
    uint32_t i = c->index;
    if (i >= f->n || f->state[i] != CH_ASKED) return 0; /* a duplicate after a retry */
    size_t off = (size_t)i * in->chunk_bytes;
    size_t len = in->nbytes - off < in->chunk_bytes ? in->nbytes - off : in->chunk_bytes;
    int ok = m->n_frames == 2 && e->n_frames == 1 && wire_frame_size(m, 1) == len &&
             e->frames[0]->nbytes == len && c->offset == off;
    if (ok) {
        uint32_t crc = crc32c_copy(0, f->dst + off, wire_frame_data(m, 1), len);
        ok = crc == in->chunk_crc32c[i] && crc == e->frames[0]->crc32c;
    }
    if (ok) {
        f->state[i] = CH_DONE;
        f->outstanding--;
        f->done++;
        return 0;
    }
    f->st->crc_errors++;
    if (++f->tries[i] > f->o.max_retries)
        return rl_fail(RL_EPROTO, "wsync: chunk %u of version %llu still corrupt after %d tries", i,
                       (unsigned long long)in->version, f->o.max_retries + 1);
    return fc_request(f, in->version, i, 1); /* still ASKED: the window stays the same */
}

/* One attempt at the snapshot f->info describes. Returns 0 when every chunk is in and the whole
 * CRC checks, 1 when the snapshot changed under us (start over), or < 0. */
static int fc_transfer(fetch_t *f) {
    const Rlhf__WeightsInfo *in = f->info;
    f->n = in->n_chunk_crc32c;
    free(f->state);
    free(f->tries);
    f->state = calloc(f->n, 1);
    f->tries = calloc(f->n, 1);
    if (!f->state || !f->tries) return rl_fail(RL_ENOMEM, "wsync: out of memory");
    f->outstanding = f->done = f->cursor = 0;
    while (f->done < f->n) {
        fc_fill(f);
        wire_msg_t m;
        int rc = fc_wait(f, &m);
        if (rc < 0) return rc;
        if (rc == 0) {
            if ((rc = fc_timeout(f, "fetch")) < 0) return rc;
            continue;
        }
        Rlhf__Envelope *e = env_unpack(&m);
        rc = 0; /* a message we cannot read is ignored: a silence or a retry covers it */
        if (e && e->body_case == RLHF__ENVELOPE__BODY_WEIGHTS_CHUNK)
            rc = fc_chunk(f, &m, e);
        else if (e && e->body_case == RLHF__ENVELOPE__BODY_WEIGHTS_INFO)
            rc = 1; /* our version is gone */
        else if (e && e->body_case == RLHF__ENVELOPE__BODY_ERROR)
            rc = rl_fail(RL_EPROTO, "wsync: %s: %s", f->endpoint, e->error->message);
        if (e) rlhf__envelope__free_unpacked(e, NULL);
        wire_msg_free(&m);
        if (rc != 0) return rc;
        f->silences = 0; /* a message: the retry budget counts silences in a row */
    }
    /* the whole snapshot: the chunk CRCs (each checked against the bytes) combined must give
     * the CRC the server computed over the whole buffer in one pass */
    uint32_t whole = in->chunk_crc32c[0];
    for (uint32_t i = 1; i < f->n; i++) {
        size_t off = (size_t)i * in->chunk_bytes;
        size_t len = in->nbytes - off < in->chunk_bytes ? in->nbytes - off : in->chunk_bytes;
        whole = crc32c_combine(whole, in->chunk_crc32c[i], len);
    }
    if (whole != in->crc32c)
        return rl_fail(RL_EPROTO, "wsync: version %llu: snapshot CRC %08x, expected %08x",
                       (unsigned long long)in->version, whole, in->crc32c);
    return 0;
}

/* Checks a description before trusting its sizes. */
static int fc_info_valid(const Rlhf__WeightsInfo *in) {
    if (!in->nbytes || in->nbytes % 4 || in->nbytes > (uint64_t)SIZE_MAX / 2 || !in->chunk_bytes ||
        in->chunk_bytes % 4 || in->chunk_bytes > WSYNC_MAX_CHUNK_BYTES)
        return 0;
    return in->n_chunk_crc32c == (in->nbytes + in->chunk_bytes - 1) / in->chunk_bytes;
}

int wsync_fetch(void *zctx, const char *endpoint, uint64_t min_version, const wsync_opts_t *opts,
                wsync_snapshot_t *dst, wsync_stats_t *stats) {
    wsync_stats_t local;
    fetch_t f = {.zctx = zctx, .endpoint = endpoint, .st = stats ? stats : &local};
    memset(f.st, 0, sizeof *f.st);
    if (opts) f.o = *opts;
    if (f.o.credit <= 0) f.o.credit = WSYNC_CREDIT;
    if (f.o.credit > WSYNC_MAX_CREDIT) f.o.credit = WSYNC_MAX_CREDIT;
    if (f.o.timeout_ms <= 0) f.o.timeout_ms = 5000;
    if (f.o.max_retries <= 0) f.o.max_retries = 5;
    if (f.o.max_retries > 250) f.o.max_retries = 250;
    double t0 = wire_now_ms();
    int rc = fc_open(&f);
    for (;;) {
        if (rc == 0) rc = fc_describe(&f);
        if (rc < 0) break;
        const Rlhf__WeightsInfo *in = f.info;
        if (in->version == 0 || in->version < min_version) {
            rc =
                rl_fail(RL_ENOTFOUND, "wsync: %s has version %llu%s, version %llu is needed",
                        endpoint, (unsigned long long)in->version,
                        in->version ? "" : " (nothing published)", (unsigned long long)min_version);
            break;
        }
        if (!fc_info_valid(in)) {
            rc = rl_fail(RL_EPROTO, "wsync: %s describes an impossible snapshot", endpoint);
            break;
        }
        if (dst->cap < in->nbytes) {
            free(dst->data);
            dst->cap = 0;
            dst->data = malloc(in->nbytes);
            if (!dst->data) {
                rc = rl_fail(RL_ENOMEM, "wsync: out of memory for %llu bytes",
                             (unsigned long long)in->nbytes);
                break;
            }
            dst->cap = in->nbytes;
        }
        f.dst = dst->data;
        rc = fc_transfer(&f);
        if (rc <= 0) break;
        /* the snapshot changed under us: describe again, bounded */
        if (++f.st->restarts > (uint32_t)f.o.max_retries) {
            rc = rl_fail(RL_EIO, "wsync: the snapshot changed %u times during the fetch",
                         f.st->restarts);
            break;
        }
        fc_close(&f);
        rc = fc_open(&f);
    }
    if (rc == 0) {
        const Rlhf__WeightsInfo *in = f.info;
        char *meta = strdup(in->meta ? in->meta : "");
        if (!meta) {
            rc = rl_fail(RL_ENOMEM, "wsync: out of memory");
        } else {
            free(dst->meta);
            dst->meta = meta;
            dst->version = in->version;
            dst->bytes = in->nbytes;
            dst->crc = in->crc32c;
            dst->dtype = in->dtype;
            snprintf(dst->name, sizeof dst->name, "%s", in->name ? in->name : "");
            f.st->version = in->version;
            f.st->bytes = in->nbytes;
            f.st->crc = in->crc32c;
            f.st->chunks = f.n;
            f.st->seconds = (wire_now_ms() - t0) / 1e3;
            f.st->gbps = f.st->seconds > 0 ? in->nbytes / f.st->seconds / 1e9 : 0;
        }
    }
    fc_close(&f);
    if (f.info_env) rlhf__envelope__free_unpacked(f.info_env, NULL);
    free(f.state);
    free(f.tries);
    return rc;
}

/* ---- replica ----------------------------------------------------------------------------------
 */

int wsync_replica_init(wsync_replica_t *r) {
    memset(r, 0, sizeof *r);
    if (pthread_mutex_init(&r->fetch_lock, NULL) != 0) return rl_fail(RL_ENOMEM, "mutex");
    if (pthread_rwlock_init(&r->use_lock, NULL) != 0) {
        pthread_mutex_destroy(&r->fetch_lock);
        return rl_fail(RL_ENOMEM, "rwlock");
    }
    atomic_init(&r->version, 0);
    r->ready = 1;
    return 0;
}

void wsync_replica_free(wsync_replica_t *r) {
    if (!r->ready) return;
    wsync_snapshot_free(&r->live);
    wsync_snapshot_free(&r->staging);
    pthread_rwlock_destroy(&r->use_lock);
    pthread_mutex_destroy(&r->fetch_lock);
    r->ready = 0;
}

uint64_t wsync_replica_version(wsync_replica_t *r) {
    return atomic_load(&r->version);
}

int wsync_replica_ensure(wsync_replica_t *r, void *zctx, const char *endpoint, uint64_t min_version,
                         const wsync_opts_t *opts, wsync_stats_t *stats) {
    if (stats) memset(stats, 0, sizeof *stats);
    if (min_version == 0) min_version = 1;
    if (atomic_load(&r->version) >= min_version) return 0;
    pthread_mutex_lock(&r->fetch_lock);
    int rc = 0;
    if (atomic_load(&r->version) < min_version) { /* not done by whoever held the lock */
        rc = wsync_fetch(zctx, endpoint, min_version, opts, &r->staging, stats);
        if (rc == 0) {
            pthread_rwlock_wrlock(&r->use_lock); /* waits for the jobs using the live one */
            wsync_snapshot_t t = r->live;
            r->live = r->staging;
            r->staging = t; /* the old buffer is the next staging buffer */
            atomic_store(&r->version, r->live.version);
            pthread_rwlock_unlock(&r->use_lock);
        }
    }
    pthread_mutex_unlock(&r->fetch_lock);
    return rc;
}

void wsync_replica_drop(wsync_replica_t *r) {
    pthread_mutex_lock(&r->fetch_lock);
    pthread_rwlock_wrlock(&r->use_lock);
    r->live.version = 0;
    atomic_store(&r->version, 0);
    pthread_rwlock_unlock(&r->use_lock);
    pthread_mutex_unlock(&r->fetch_lock);
}

const wsync_snapshot_t *wsync_replica_acquire(wsync_replica_t *r) {
    pthread_rwlock_rdlock(&r->use_lock);
    return &r->live;
}

void wsync_replica_release(wsync_replica_t *r) {
    pthread_rwlock_unlock(&r->use_lock);
}
