/*
 * wsync.c - versioned weight snapshots over ZeroMQ (see wsync.h): CRC-32C at memory speed, the
 * snapshot server, the chunked credit-window fetch, and the live/staging replica.
 */
#include "net/wsync.h"
#include "net/sec.h"

#include <errno.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

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

/* "tcp://[...]:port": an IPv6 literal, for which a socket needs ZMQ_IPV6. */
static int ep_is_ipv6(const char *endpoint) {
    return strchr(endpoint, '[') != NULL;
}

void wsync_malloc_tune(void) {
#if defined(__GLIBC__) && defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
    mallopt(M_MMAP_THRESHOLD, 32 << 20); /* glibc's largest allowed value */
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

/* ---- server -----------------------------------------------------------------------------------
 */

/* A snapshot buffer a fetch lends to its relay: the fetched snapshot (wsync_snapshot_t.block)
 * and the relay's server both hold it; freed with the last reference. A fetch never writes into
 * a block someone else holds. */
typedef struct {
    atomic_int refs;
    uint8_t *data; /* malloc'ed */
    size_t cap;
} blk_t;

static blk_t *blk_wrap(void *data, size_t cap) {
    blk_t *b = malloc(sizeof *b);
    if (!b) return NULL;
    atomic_init(&b->refs, 1);
    b->data = data;
    b->cap = cap;
    return b;
}

static void blk_unref(blk_t *b) {
    if (!b || atomic_fetch_sub(&b->refs, 1) != 1) return;
    free(b->data);
    free(b);
}

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
    /* a snapshot fed by a fetch (wsync_server_begin): chunk i is servable once ready[i] is set,
     * after its bytes are in; NULL for a published one, complete from the start. `data` is its
     * own, or the fetch's destination buffer lent by it (block). */
    blk_t *block;
    atomic_uchar *ready;
    atomic_uint n_ready;
} snap_t;

static void snap_unref(snap_t *p) {
    if (!p || atomic_fetch_sub(&p->refs, 1) != 1) return;
    if (p->block)
        blk_unref(p->block); /* lent: back to the fetch (or freed, if it let go) */
    else
        free(p->data);
    free(p->chunk_crc);
    free(p->meta);
    free(p->ready);
    free(p);
}

static int snap_complete(snap_t *p) {
    return !p->ready || atomic_load(&p->n_ready) == p->n_chunks;
}

static int snap_chunk_ready(snap_t *p, uint32_t i) {
    return !p->ready || atomic_load_explicit(&p->ready[i], memory_order_acquire);
}

static size_t snap_chunk_len(const snap_t *p, uint32_t i) {
    size_t off = (size_t)i * p->chunk_bytes;
    return p->bytes - off < p->chunk_bytes ? p->bytes - off : p->chunk_bytes;
}

/* A snapshot with its buffers allocated (data uninitialised, or lent: a fed snapshot in the
 * fetch's own buffer), one reference; NULL when out of memory. */
static snap_t *snap_new(uint64_t version, size_t bytes, uint32_t chunk_bytes, uint32_t n_chunks,
                        const char *name, const char *meta, int fed, blk_t *lent) {
    snap_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    atomic_init(&p->refs, 1);
    atomic_init(&p->n_ready, 0);
    p->version = version;
    p->bytes = bytes;
    p->chunk_bytes = chunk_bytes;
    p->n_chunks = n_chunks;
    p->dtype = RLHF__DTYPE__DTYPE_F32;
    snprintf(p->name, sizeof p->name, "%s", name ? name : "params");
    if (lent) {
        atomic_fetch_add(&lent->refs, 1);
        p->block = lent;
        p->data = lent->data;
    } else {
        p->data = malloc(bytes);
    }
    p->chunk_crc = malloc(n_chunks * sizeof *p->chunk_crc);
    p->meta = strdup(meta ? meta : "");
    p->ready = fed ? calloc(n_chunks, sizeof *p->ready) : NULL;
    if (!p->data || !p->chunk_crc || !p->meta || (fed && !p->ready)) {
        snap_unref(p);
        return NULL;
    }
    return p;
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

/* A chunk request held until its chunk is delivered (a fed snapshot). */
typedef struct {
    uint8_t rid[WIRE_MAX_RID];
    size_t rid_len;
    uint64_t version;
    uint32_t index;
    int dead; /* answered: removed at the end of the pass */
} held_t;

/* Held requests at most (beyond: an Error). Credit bounds them per fetcher. */
#define WSYNC_MAX_HELD 4096

struct wsync_server {
    void *zctx, *sock;
    int own_ctx;
    int wake_fd; /* eventfd: a chunk was delivered, or a fed snapshot begun or given up */
    char endpoint[256];
    size_t chunk_bytes;
    pthread_mutex_t lock; /* latest, prev */
    snap_t *latest, *prev;
    held_t *held; /* the serving thread's only */
    int n_held, cap_held;
    atomic_long corrupt_index; /* -1: none */
    atomic_int delay_ms;
    pthread_t th;
    int started;
    atomic_int stop;
    _Atomic uint64_t n_requests, n_chunks, n_bytes, n_dropped, n_bad, n_held_total;
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
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->wake_fd < 0) {
        rl_fail(RL_EIO, "wsync: eventfd: %s", strerror(errno));
        goto fail;
    }
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
     * only guard against a misbehaving peer: flow control is the fetchers' credit. IPV6 for
     * an IPv6 literal only: with it, an IPv4 address would be reported as ::ffff:a.b.c.d. */
    int one = 1, linger = 0, hwm = 4 * WSYNC_MAX_CREDIT, v6 = ep_is_ipv6(endpoint);
    int64_t maxmsg = WSYNC_MAX_REQUEST;
    zmq_setsockopt(s->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s->sock, ZMQ_IPV6, &v6, sizeof v6);
    if (sec_server(s->zctx, s->sock, "weights") < 0) goto fail;
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
    if (s->wake_fd >= 0) close(s->wake_fd);
    snap_unref(s->latest);
    snap_unref(s->prev);
    free(s->held);
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

static void srv_wake(wsync_server_t *s) {
    uint64_t one = 1;
    if (write(s->wake_fd, &one, sizeof one) < 0) { /* only EAGAIN (counter full): awake anyway */
    }
}

/* Makes p the latest (under s->lock). A complete latest becomes the previous one; an incomplete
 * one (a fed snapshot given up) is dropped. The snapshots no longer held are returned in
 * drop[0..1] to be unreferenced outside the lock. */
static void srv_install(wsync_server_t *s, snap_t *p, snap_t *drop[2]) {
    if (s->latest && !snap_complete(s->latest)) {
        drop[0] = s->latest;
    } else {
        drop[0] = s->prev;
        s->prev = s->latest;
    }
    s->latest = p;
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
    size_t n = (bytes + s->chunk_bytes - 1) / s->chunk_bytes;
    if (n > UINT32_MAX) return rl_fail(RL_EINVAL, "wsync: too many chunks");
    snap_t *p =
        snap_new(version, bytes, (uint32_t)s->chunk_bytes, (uint32_t)n, name, meta, 0, NULL);
    if (!p) return rl_fail(RL_ENOMEM, "wsync: out of memory for a %zu-byte snapshot", bytes);
    /* the copy and the chunk CRCs in one pass; the whole CRC in a second, independent one */
    for (size_t i = 0; i < n; i++) {
        size_t off = i * s->chunk_bytes,
               len = bytes - off < s->chunk_bytes ? bytes - off : s->chunk_bytes;
        p->chunk_crc[i] = crc32c_copy(0, p->data + off, (const uint8_t *)data + off, len);
    }
    p->crc = crc32c(0, p->data, bytes);
    snap_t *drop[2] = {NULL, NULL};
    pthread_mutex_lock(&s->lock);
    if (s->latest && version <= s->latest->version) { /* lost a race with another publisher */
        pthread_mutex_unlock(&s->lock);
        snap_unref(p);
        return rl_fail(RL_EINVAL, "wsync: version %llu is not newer than the latest",
                       (unsigned long long)version);
    }
    srv_install(s, p, drop);
    pthread_mutex_unlock(&s->lock);
    snap_unref(drop[0]);
    srv_wake(s); /* held requests of a dropped fed snapshot are answered */
    return 0;
}

static int desc_valid(const wsync_desc_t *d) {
    if (!d->bytes || d->bytes % 4 || !d->chunk_bytes || d->chunk_bytes % 4 ||
        d->chunk_bytes > WSYNC_MAX_CHUNK_BYTES || !d->chunk_crc)
        return rl_fail(RL_EINVAL, "wsync: begin: impossible sizes");
    if (d->n_chunks != (d->bytes + d->chunk_bytes - 1) / d->chunk_bytes)
        return rl_fail(RL_EINVAL, "wsync: begin: %u chunk CRCs for %zu bytes", d->n_chunks,
                       d->bytes);
    uint32_t whole = d->chunk_crc[0];
    for (uint32_t i = 1; i < d->n_chunks; i++) {
        size_t off = (size_t)i * d->chunk_bytes;
        whole = crc32c_combine(whole, d->chunk_crc[i],
                               d->bytes - off < d->chunk_bytes ? d->bytes - off : d->chunk_bytes);
    }
    if (whole != d->crc)
        return rl_fail(RL_EPROTO, "wsync: begin: the chunk CRCs make %08x, not %08x", whole,
                       d->crc);
    return 0;
}

/* wsync_server_begin, in the server's own buffer (lent NULL) or in a fetch's (lent). */
static int srv_begin(wsync_server_t *s, const wsync_desc_t *d, blk_t *lent) {
    int rc = desc_valid(d);
    if (rc < 0) return rc;
    pthread_mutex_lock(&s->lock);
    snap_t *l = s->latest;
    int same = l && l->version == d->version && l->crc == d->crc && l->bytes == d->bytes &&
               l->chunk_bytes == d->chunk_bytes;
    pthread_mutex_unlock(&s->lock);
    if (same && !lent) return 0; /* what was delivered stays */
    snap_t *p =
        snap_new(d->version, d->bytes, d->chunk_bytes, d->n_chunks, d->name, d->meta, 1, lent);
    if (!p) return rl_fail(RL_ENOMEM, "wsync: out of memory for a %zu-byte snapshot", d->bytes);
    memcpy(p->chunk_crc, d->chunk_crc, d->n_chunks * sizeof *p->chunk_crc);
    p->crc = d->crc;
    p->dtype = d->dtype;
    snap_t *drop[3] = {NULL, NULL, NULL};
    pthread_mutex_lock(&s->lock);
    if (s->latest && d->version <= s->latest->version) { /* not ours to keep: drop both */
        drop[1] = s->latest;
        drop[2] = s->prev;
        s->latest = s->prev = NULL;
    }
    srv_install(s, p, drop);
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < 3; i++) snap_unref(drop[i]);
    srv_wake(s);
    return 0;
}

int wsync_server_begin(wsync_server_t *s, const wsync_desc_t *d) {
    return srv_begin(s, d, NULL);
}

/* Forgets the snapshots served from block b (a fetch is about to write into it): the latest or
 * the previous one. Held requests for them are answered as for any version gone. */
static void srv_forget_block(wsync_server_t *s, const blk_t *b) {
    snap_t *drop[2] = {NULL, NULL};
    pthread_mutex_lock(&s->lock);
    if (s->prev && s->prev->block == b) drop[0] = s->prev, s->prev = NULL;
    if (s->latest && s->latest->block == b)
        drop[1] = s->latest, s->latest = s->prev, s->prev = NULL;
    pthread_mutex_unlock(&s->lock);
    snap_unref(drop[0]);
    snap_unref(drop[1]);
    if (drop[0] || drop[1]) srv_wake(s);
}

/* The begun (incomplete) latest snapshot of this version, referenced; NULL if there is none. */
static snap_t *srv_fed_ref(wsync_server_t *s, uint64_t version) {
    pthread_mutex_lock(&s->lock);
    snap_t *p = s->latest && s->latest->ready && s->latest->version == version ? s->latest : NULL;
    if (p) atomic_fetch_add(&p->refs, 1);
    pthread_mutex_unlock(&s->lock);
    return p;
}

/* Delivers chunk i of the fed snapshot `version`: a copy of data, checked against the chunk's
 * CRC, or - data NULL - the bytes a fetch has just checked in the buffer it lent. */
static int srv_chunk_store(wsync_server_t *s, uint64_t version, uint32_t i, const void *data,
                           size_t len) {
    snap_t *p = srv_fed_ref(s, version);
    if (!p)
        return rl_fail(RL_ENOTFOUND, "wsync: version %llu is not being fed",
                       (unsigned long long)version);
    int rc = 0;
    if (i >= p->n_chunks || len != snap_chunk_len(p, i)) {
        rc = rl_fail(RL_EINVAL, "wsync: chunk %u of %zu bytes does not fit version %llu", i, len,
                     (unsigned long long)version);
    } else if (data && p->block) { /* the fetch's own buffer: only the fetch writes into it */
        rc = rl_fail(RL_EINVAL, "wsync: version %llu is fed by a fetch",
                     (unsigned long long)version);
    } else if (!atomic_load(&p->ready[i])) {
        if (data &&
            crc32c_copy(0, p->data + (size_t)i * p->chunk_bytes, data, len) != p->chunk_crc[i])
            rc = rl_fail(RL_EPROTO, "wsync: chunk %u of version %llu does not match its CRC", i,
                         (unsigned long long)version);
        if (rc == 0) {
            atomic_store_explicit(&p->ready[i], 1, memory_order_release);
            atomic_fetch_add(&p->n_ready, 1);
            srv_wake(s);
        }
    }
    snap_unref(p);
    return rc;
}

int wsync_server_chunk_put(wsync_server_t *s, uint64_t version, uint32_t index, const void *data,
                           size_t len) {
    if (!data) return rl_fail(RL_EINVAL, "wsync: chunk %u: no bytes", index);
    return srv_chunk_store(s, version, index, data, len);
}

void wsync_server_abort(wsync_server_t *s, uint64_t version) {
    snap_t *drop = NULL;
    pthread_mutex_lock(&s->lock);
    if (s->latest && s->latest->version == version && !snap_complete(s->latest)) {
        drop = s->latest;
        s->latest = s->prev;
        s->prev = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    if (drop) {
        snap_unref(drop);
        srv_wake(s);
    }
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
    o->held = atomic_load(&s->n_held_total);
}

/* Sends envelope + optional frame (zero-copy: msg already initialised) to rid. Returns 0 or -1
 * (errno from libzmq); the frame is consumed either way. */
static int srv_send(wsync_server_t *s, const uint8_t *rid, size_t rid_len, Rlhf__Envelope *env,
                    zmq_msg_t *frame) {
    env->protocol_version = RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    size_t sz = rlhf__envelope__get_packed_size(env);
    uint8_t stackbuf[1024], *buf = sz <= sizeof stackbuf ? stackbuf : malloc(sz);
    int rc = -1;
    if (buf) {
        rlhf__envelope__pack(env, buf);
        if (zmq_send(s->sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
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
    srv_send(s, req->rid, req->rid_len, &env, NULL);
}

static void srv_send_info(wsync_server_t *s, const uint8_t *rid, size_t rid_len, const snap_t *p,
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
    srv_send(s, rid, rid_len, &env, NULL);
}

static int srv_send_chunk(wsync_server_t *s, const uint8_t *rid, size_t rid_len, snap_t *p,
                          uint32_t i) {
    size_t off = (size_t)i * p->chunk_bytes;
    size_t len = snap_chunk_len(p, i);
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
    if (srv_send(s, rid, rid_len, &env, &frame) < 0) {
        atomic_fetch_add(&s->n_dropped, 1);
        return -1;
    }
    atomic_fetch_add(&s->n_chunks, 1);
    atomic_fetch_add(&s->n_bytes, len);
    return 0;
}

/* The snapshot of `version` (0: the latest), referenced, and the latest, referenced (either may
 * be NULL): a publish on another thread may retire them meanwhile. */
static snap_t *srv_find(wsync_server_t *s, uint64_t version, snap_t **latest_out) {
    pthread_mutex_lock(&s->lock);
    snap_t *p = NULL, *latest = s->latest;
    if (version == 0 || (latest && version == latest->version))
        p = latest;
    else if (s->prev && version == s->prev->version)
        p = s->prev;
    if (p) atomic_fetch_add(&p->refs, 1);
    if (latest) atomic_fetch_add(&latest->refs, 1);
    pthread_mutex_unlock(&s->lock);
    *latest_out = latest;
    return p;
}

static void srv_gone(wsync_server_t *s, const uint8_t *rid, size_t rid_len, uint64_t version,
                     const snap_t *latest) {
    char why[128];
    snprintf(why, sizeof why, "version %llu is not available", (unsigned long long)version);
    srv_send_info(s, rid, rid_len, latest, latest ? why : "nothing published");
}

/* Holds a request for chunk i of p, not delivered yet. Returns 0, or -1 when the list is full. */
static int srv_hold(wsync_server_t *s, const wire_msg_t *m, const snap_t *p, uint32_t i) {
    if (s->n_held == s->cap_held) {
        int cap = s->cap_held ? 2 * s->cap_held : 64;
        if (cap > WSYNC_MAX_HELD) return -1;
        held_t *h = realloc(s->held, (size_t)cap * sizeof *h);
        if (!h) return -1;
        s->held = h;
        s->cap_held = cap;
    }
    held_t *h = &s->held[s->n_held++];
    memcpy(h->rid, m->rid, m->rid_len);
    h->rid_len = m->rid_len;
    h->version = p->version;
    h->index = i;
    h->dead = 0;
    atomic_fetch_add(&s->n_held_total, 1);
    return 0;
}

/* Answers the held requests that can be: their chunk was delivered (sent, in the order asked),
 * or their snapshot was given up (one WeightsInfo.error per requester). */
static void srv_serve_held(wsync_server_t *s) {
    for (int i = 0; i < s->n_held; i++) {
        held_t *h = &s->held[i];
        if (h->dead) continue;
        snap_t *latest, *p = srv_find(s, h->version, &latest);
        if (!p) {
            srv_gone(s, h->rid, h->rid_len, h->version, latest);
            for (int k = i; k < s->n_held; k++) /* the rest of this requester's are answered */
                if (s->held[k].version == h->version && s->held[k].rid_len == h->rid_len &&
                    !memcmp(s->held[k].rid, h->rid, h->rid_len))
                    s->held[k].dead = 1;
        } else if (snap_chunk_ready(p, h->index)) {
            srv_send_chunk(s, h->rid, h->rid_len, p, h->index); /* a failure: the peer retries */
            h->dead = 1;
        }
        snap_unref(p);
        snap_unref(latest);
    }
    int k = 0;
    for (int i = 0; i < s->n_held; i++)
        if (!s->held[i].dead) s->held[k++] = s->held[i];
    s->n_held = k;
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
    snap_t *latest, *p = srv_find(s, f->version, &latest);
    char why[128];
    if (!p) {
        srv_gone(s, m->rid, m->rid_len, f->version, latest);
    } else if (f->n_chunks == 0) {
        srv_send_info(s, m->rid, m->rid_len, p, NULL);
    } else if (f->n_chunks > WSYNC_MAX_CREDIT || f->first_chunk >= p->n_chunks ||
               f->n_chunks > p->n_chunks - f->first_chunk) {
        snprintf(why, sizeof why, "chunks %u+%u: out of range (%u chunks, at most %d a request)",
                 f->first_chunk, f->n_chunks, p->n_chunks, WSYNC_MAX_CREDIT);
        srv_send_error(s, m, why);
    } else {
        for (uint32_t i = f->first_chunk; i < f->first_chunk + f->n_chunks; i++) {
            if (!snap_chunk_ready(p, i)) {
                if (srv_hold(s, m, p, i) < 0) {
                    srv_send_error(s, m, "too many requests held for chunks still to come");
                    break;
                }
            } else if (srv_send_chunk(s, m->rid, m->rid_len, p, i) < 0) {
                break; /* the peer retries */
            }
        }
    }
    snap_unref(p);
    snap_unref(latest);
    rlhf__envelope__free_unpacked(env, NULL);
}

int wsync_server_poll(wsync_server_t *s, int timeout_ms) {
    zmq_pollitem_t it[2] = {{s->sock, 0, ZMQ_POLLIN, 0}, {NULL, s->wake_fd, ZMQ_POLLIN, 0}};
    if (timeout_ms != 0 && zmq_poll(it, 2, timeout_ms) < 0 && errno != EINTR)
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
    uint64_t woken;
    if (read(s->wake_fd, &woken, sizeof woken) == sizeof woken && s->n_held) srv_serve_held(s);
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
    if (s->block)
        blk_unref(s->block); /* a relay may still serve from it: freed with its last holder */
    else
        free(s->data);
    free(s->meta);
    memset(s, 0, sizeof *s);
}

enum { CH_TODO = 0, CH_ASKED, CH_DONE };

/* How often a fetch asks its upstream whether it has begun the snapshot yet. */
#define WSYNC_ATTACH_POLL_MS 5

typedef struct {
    void *zctx, *sock;
    const char *endpoint; /* where sock is connected: the origin, or the upstream */
    const char *origin;
    wsync_opts_t o;
    wsync_stats_t *st;
    Rlhf__Envelope *info_env; /* owns info: the origin's description */
    const Rlhf__WeightsInfo *info;
    uint8_t *state, *tries;
    uint32_t n, outstanding, done, cursor;
    uint32_t silences; /* in a row, without progress */
    uint8_t *dst;
    int on_upstream;                                 /* the chunks come from o.upstream */
    double up_heard_ms, up_progress_ms, up_probe_ms; /* its last message, chunk, our probe */
    uint64_t fed;                                    /* the version begun in o.relay (0: none) */
} fetch_t;

static int fc_open(fetch_t *f) {
    f->sock = zmq_socket(f->zctx, ZMQ_DEALER);
    if (!f->sock) return rl_fail(RL_EIO, "wsync: zmq_socket: %s", zmq_strerror(errno));
    int linger = 0, hwm = 4 * WSYNC_MAX_CREDIT, v6 = 1; /* any address family to connect to */
    int64_t maxmsg = (int64_t)WSYNC_MAX_CHUNK_BYTES + WIRE_MAX_ENVELOPE;
    zmq_setsockopt(f->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(f->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(f->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(f->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(f->sock, ZMQ_IPV6, &v6, sizeof v6);
    int src = sec_client(f->sock, f->on_upstream ? f->o.upstream_key : f->o.origin_key);
    if (src < 0) return src;
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

/* Waits up to timeout_ms for a message (checking the cancel flag every 100 ms). Returns 1 with
 * *m filled, 0 on silence, or a negative code. */
static int fc_wait(fetch_t *f, wire_msg_t *m, int timeout_ms) {
    double end = wire_now_ms() + timeout_ms;
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

/* Drops the socket with whatever was in flight and connects to `endpoint` afresh. */
static int fc_switch(fetch_t *f, const char *endpoint, int upstream) {
    fc_close(f);
    for (uint32_t i = 0; i < f->n; i++)
        if (f->state && f->state[i] == CH_ASKED) f->state[i] = CH_TODO;
    f->outstanding = 0;
    f->cursor = 0;
    f->endpoint = endpoint;
    f->on_upstream = upstream;
    return fc_open(f);
}

/* A silence: drop the socket with whatever was in flight, start over on a fresh one. */
static int fc_timeout(fetch_t *f, const char *what) {
    f->st->timeouts++;
    if (++f->silences > (uint32_t)f->o.max_retries)
        return rl_fail(RL_EIO, "wsync: %s: no answer from %s in %d ms, %d times%s", what,
                       f->endpoint, f->o.timeout_ms, f->o.max_retries + 1, sec_silence_hint());
    return fc_switch(f, f->endpoint, f->on_upstream);
}

/* Gives the upstream up: the chunks still missing come from the origin (those in stay). */
static int fc_fallback(fetch_t *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fc_fallback(fetch_t *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->st->fallback_why, sizeof f->st->fallback_why, fmt, ap);
    va_end(ap);
    f->st->fallbacks++;
    f->silences = 0;
    if (f->tries) memset(f->tries, 0, f->n);
    return fc_switch(f, f->origin, 0);
}

/* Asks the origin for its latest snapshot's description. Returns 0 with f->info set. */
static int fc_describe(fetch_t *f) {
    if (f->info_env) rlhf__envelope__free_unpacked(f->info_env, NULL);
    f->info_env = NULL;
    f->info = NULL;
    int rc = fc_request(f, 0, 0, 0);
    while (rc == 0) {
        wire_msg_t m;
        rc = fc_wait(f, &m, f->o.timeout_ms);
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

/* Whether a description is of the very snapshot the origin described. */
static int fc_same(const fetch_t *f, const Rlhf__WeightsInfo *a) {
    const Rlhf__WeightsInfo *b = f->info;
    return (!a->error || !a->error[0]) && a->version == b->version && a->crc32c == b->crc32c &&
           a->nbytes == b->nbytes && a->chunk_bytes == b->chunk_bytes &&
           a->n_chunk_crc32c == b->n_chunk_crc32c &&
           !memcmp(a->chunk_crc32c, b->chunk_crc32c, b->n_chunk_crc32c * sizeof *b->chunk_crc32c);
}

/* Moves to the upstream once it serves the snapshot the origin described: a relay begins it
 * right after its own description round trip, so usually at the first or second asking. Gives
 * it up (staying with the origin) when it is silent, answers an error, or has not begun the
 * snapshot after 4 x upstream_timeout_ms. Returns 0 or a negative code. */
static int fc_attach(fetch_t *f) {
    int rc = fc_switch(f, f->o.upstream, 1);
    double t0 = wire_now_ms();
    f->up_heard_ms = f->up_progress_ms = f->up_probe_ms = t0;
    if (rc < 0) return fc_fallback(f, "%s: %s", f->o.upstream, rl_errmsg());
    for (;;) {
        if (fc_request(f, f->info->version, 0, 0) < 0)
            return fc_fallback(f, "%s: cannot send", f->endpoint);
        wire_msg_t m;
        rc = fc_wait(f, &m, f->o.upstream_timeout_ms);
        if (rc < 0) return rc;
        if (rc == 0)
            return fc_fallback(f, "%s silent for %d ms", f->endpoint, f->o.upstream_timeout_ms);
        Rlhf__Envelope *e = env_unpack(&m);
        wire_msg_free(&m);
        int info = e && e->body_case == RLHF__ENVELOPE__BODY_WEIGHTS_INFO;
        int same = info && fc_same(f, e->weights_info);
        if (e) rlhf__envelope__free_unpacked(e, NULL);
        if (same) {
            f->up_heard_ms = f->up_progress_ms = wire_now_ms();
            return 0;
        }
        if (!info) return fc_fallback(f, "%s answered with an error", f->endpoint);
        if (wire_now_ms() - t0 > 4.0 * f->o.upstream_timeout_ms)
            return fc_fallback(f, "%s did not begin version %llu in %d ms", f->endpoint,
                               (unsigned long long)f->info->version, 4 * f->o.upstream_timeout_ms);
        nap_ms(WSYNC_ATTACH_POLL_MS);
    }
}

/* Silence from the upstream: asked for a description after half upstream_timeout_ms (an
 * upstream alive but itself waiting answers it), given up after the whole of it. */
static int fc_upstream_silence(fetch_t *f) {
    double now = wire_now_ms();
    if (now - f->up_heard_ms >= f->o.upstream_timeout_ms)
        return fc_fallback(f, "%s silent for %.0f ms", f->endpoint, now - f->up_heard_ms);
    if (now - f->up_probe_ms >= f->o.upstream_timeout_ms / 2) {
        f->up_probe_ms = now;
        fc_request(f, f->info->version, 0, 0);
    }
    return 0;
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

/* Handles one chunk message. Returns 0, 1 when the snapshot changed (start over; from the
 * upstream: give it up), or < 0. */
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
        if (f->on_upstream) {
            f->up_progress_ms = wire_now_ms();
            f->st->upstream_bytes += len;
        }
        /* servable downstream the moment it is verified, from where it lies */
        if (f->fed) srv_chunk_store(f->o.relay, f->fed, i, NULL, len);
        return 0;
    }
    f->st->crc_errors++;
    if (++f->tries[i] > f->o.max_retries) {
        if (f->on_upstream)
            return fc_fallback(f, "%s: chunk %u still corrupt after %d tries", f->endpoint, i,
                               f->o.max_retries + 1);
        return rl_fail(RL_EPROTO, "wsync: chunk %u of version %llu still corrupt after %d tries", i,
                       (unsigned long long)in->version, f->o.max_retries + 1);
    }
    return fc_request(f, in->version, i, 1); /* still ASKED: the window stays the same */
}

/* Handles one message of a transfer. Returns 0, 1 when the snapshot changed (start over), or
 * < 0. From the upstream, anything but its chunks and its answer to a probe gives it up. */
static int fc_message(fetch_t *f, const wire_msg_t *m, const Rlhf__Envelope *e) {
    int up = f->on_upstream;
    if (up) f->up_heard_ms = wire_now_ms();
    if (e && e->body_case == RLHF__ENVELOPE__BODY_WEIGHTS_CHUNK) {
        int rc = fc_chunk(f, m, e);
        if (rc == 1 && up) return fc_fallback(f, "%s sent chunks of another snapshot", f->endpoint);
        return rc;
    }
    if (e && e->body_case == RLHF__ENVELOPE__BODY_WEIGHTS_INFO) {
        if (!up) return 1;                         /* our version is gone */
        if (fc_same(f, e->weights_info)) return 0; /* the answer to a probe: alive */
        return fc_fallback(f, "%s no longer serves version %llu", f->endpoint,
                           (unsigned long long)f->info->version);
    }
    if (e && e->body_case == RLHF__ENVELOPE__BODY_ERROR) {
        if (up) return fc_fallback(f, "%s: %s", f->endpoint, e->error->message);
        return rl_fail(RL_EPROTO, "wsync: %s: %s", f->endpoint, e->error->message);
    }
    return 0; /* a message we cannot read is ignored: a silence or a retry covers it */
}

/* The per-chunk state of a fetch of the snapshot f->info describes. */
static int fc_prepare(fetch_t *f) {
    f->n = f->info->n_chunk_crc32c;
    free(f->state);
    free(f->tries);
    f->state = calloc(f->n, 1);
    f->tries = calloc(f->n, 1);
    if (!f->state || !f->tries) return rl_fail(RL_ENOMEM, "wsync: out of memory");
    f->outstanding = f->done = f->cursor = 0;
    return 0;
}

/* One attempt at the snapshot f->info describes. Returns 0 when every chunk is in and the whole
 * CRC checks, 1 when the snapshot changed under us (start over), or < 0. */
static int fc_transfer(fetch_t *f) {
    const Rlhf__WeightsInfo *in = f->info;
    while (f->done < f->n) {
        fc_fill(f);
        wire_msg_t m;
        int rc = fc_wait(f, &m, f->on_upstream ? f->o.upstream_timeout_ms / 2 : f->o.timeout_ms);
        if (rc < 0) return rc;
        if (rc == 0) {
            rc = f->on_upstream ? fc_upstream_silence(f) : fc_timeout(f, "fetch");
            if (rc < 0) return rc;
            continue;
        }
        Rlhf__Envelope *e = env_unpack(&m);
        rc = fc_message(f, &m, e);
        if (e) rlhf__envelope__free_unpacked(e, NULL);
        wire_msg_free(&m);
        if (rc != 0) return rc;
        f->silences = 0; /* a message: the retry budget counts silences in a row */
        if (f->on_upstream && wire_now_ms() - f->up_progress_ms > 4.0 * f->o.upstream_timeout_ms &&
            (rc = fc_fallback(f, "%s delivered no chunk in %d ms", f->endpoint,
                              4 * f->o.upstream_timeout_ms)) < 0)
            return rc;
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

/* Makes dst's buffer one this fetch may write into: nbytes at least, and held by no one else -
 * never a block a relay still serves from. With a relay, a block it can lend: the relay first
 * forgets the snapshots it served from it (normally the version before the previous one), and a
 * block libzmq still sends from after 100 ms (a slow peer's queue) is left to the relay to
 * free, the fetch taking a new buffer. Returns 0 or RL_ENOMEM. */
static int fc_dst_ready(fetch_t *f, wsync_snapshot_t *dst, size_t nbytes) {
    blk_t *b = dst->block;
    if (b && f->o.relay) {
        srv_forget_block(f->o.relay, b);
        for (int i = 0; i < 100 && atomic_load(&b->refs) > 1; i++) nap_ms(1);
    }
    if ((b && atomic_load(&b->refs) > 1) || dst->cap < nbytes) {
        if (b)
            blk_unref(b);
        else
            free(dst->data);
        dst->block = NULL;
        dst->cap = 0;
        if (!(dst->data = malloc(nbytes)))
            return rl_fail(RL_ENOMEM, "wsync: out of memory for %zu bytes", nbytes);
        dst->cap = nbytes;
    }
    if (f->o.relay && !dst->block) dst->block = blk_wrap(dst->data, dst->cap); /* NULL: no relay */
    return 0;
}

/* Begins the described snapshot in o.relay, served from dst's buffer as the chunks land; a
 * relay that cannot take it (out of memory) is simply not fed: the fetch goes on, and the
 * workers below fall back to the origin. */
static void fc_feed_begin(fetch_t *f, wsync_snapshot_t *dst) {
    const Rlhf__WeightsInfo *in = f->info;
    wsync_desc_t d = {.version = in->version,
                      .bytes = in->nbytes,
                      .chunk_bytes = in->chunk_bytes,
                      .chunk_crc = in->chunk_crc32c,
                      .n_chunks = (uint32_t)in->n_chunk_crc32c,
                      .crc = in->crc32c,
                      .dtype = in->dtype,
                      .name = in->name,
                      .meta = in->meta};
    f->fed = dst->block && srv_begin(f->o.relay, &d, dst->block) == 0 ? in->version : 0;
}

int wsync_fetch(void *zctx, const char *endpoint, uint64_t min_version, const wsync_opts_t *opts,
                wsync_snapshot_t *dst, wsync_stats_t *stats) {
    wsync_stats_t local;
    fetch_t f = {
        .zctx = zctx, .endpoint = endpoint, .origin = endpoint, .st = stats ? stats : &local};
    memset(f.st, 0, sizeof *f.st);
    if (opts) f.o = *opts;
    if (f.o.credit <= 0) f.o.credit = WSYNC_CREDIT;
    if (f.o.credit > WSYNC_MAX_CREDIT) f.o.credit = WSYNC_MAX_CREDIT;
    if (f.o.timeout_ms <= 0) f.o.timeout_ms = 5000;
    if (f.o.max_retries <= 0) f.o.max_retries = 5;
    if (f.o.max_retries > 250) f.o.max_retries = 250;
    if (f.o.upstream_timeout_ms <= 0) f.o.upstream_timeout_ms = 2000;
    int upstream = f.o.upstream && f.o.upstream[0];
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
        if ((rc = fc_dst_ready(&f, dst, in->nbytes)) < 0) break;
        f.dst = dst->data;
        if ((rc = fc_prepare(&f)) < 0) break;
        if (f.o.relay) fc_feed_begin(&f, dst);
        /* from the upstream while it serves; once given up, the origin only */
        if (upstream && !f.st->fallbacks) rc = fc_attach(&f);
        if (rc == 0) rc = fc_transfer(&f);
        if (rc <= 0) break;
        /* the snapshot changed under us: describe again, bounded */
        if (++f.st->restarts > (uint32_t)f.o.max_retries) {
            rc = rl_fail(RL_EIO, "wsync: the snapshot changed %u times during the fetch",
                         f.st->restarts);
            break;
        }
        rc = fc_switch(&f, f.origin, 0);
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
    if (rc < 0 && f.fed) wsync_server_abort(f.o.relay, f.fed); /* held requests learn it */
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
