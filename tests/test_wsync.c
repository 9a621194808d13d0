/*
 * test_wsync.c - weight sync (common/net/wsync.h): a server thread and fetchers over loopback TCP
 * in one process: bit-exact round trips, a corrupted chunk detected and fetched again, version
 * semantics, the credit bound, bad requests; relays: requests for chunks not yet delivered held
 * then served, a chain of three relays (byte-identical copies, the origin sending the snapshot
 * once), an upstream frozen or killed mid-transfer (the rest from the origin, the chunks in
 * kept), an upstream serving another snapshot of the same version (never believed), a replica
 * lending its buffers to its relay (never rewritten while a peer is sent chunks from them).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "test.h"
#include "base/crc32c.h"
#include "net/wire.h"
#include "net/wsync.h"

static uint64_t rng_state;
static uint64_t next_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Deterministic bytes for a version: what a fetcher got can be checked against it. */
static uint8_t *make_snapshot(uint64_t version, size_t bytes) {
    uint8_t *p = malloc(bytes);
    rng_state = 0x9E3779B97F4A7C15ULL * (version + 1);
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        uint64_t v = next_u64();
        memcpy(p + i, &v, 8);
    }
    for (size_t i = bytes & ~(size_t)7; i < bytes; i++) p[i] = (uint8_t)next_u64();
    return p;
}

static void nap(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void *ctx;

static void test_round_trip(void) {
    size_t bytes = (23u << 20) + 4 * 309; /* not a multiple of the chunk size */
    uint8_t *data = make_snapshot(1, bytes);
    wsync_server_t *s = wsync_server_new(NULL, "tcp://127.0.0.1:*", 1u << 20);
    CHECK(s != NULL);
    if (!s) return;
    CHECK_OK(wsync_server_publish(s, 1, data, bytes, "params", "{\"n_layer\":2}"));
    CHECK_OK(wsync_server_start(s));
    wsync_snapshot_t snap = {0};
    wsync_stats_t st;
    wsync_opts_t o = {.credit = 4};
    CHECK_OK(wsync_fetch(ctx, wsync_server_endpoint(s), 1, &o, &snap, &st));
    CHECK_EQ(snap.version, 1);
    CHECK_EQ(snap.bytes, bytes);
    CHECK(snap.data && memcmp(snap.data, data, bytes) == 0);
    CHECK_EQ(snap.crc, crc32c(0, data, bytes));
    CHECK_STREQ(snap.meta, "{\"n_layer\":2}");
    CHECK_STREQ(snap.name, "params");
    CHECK_EQ(st.chunks, 24);
    CHECK_EQ(st.crc_errors, 0);
    CHECK(st.max_outstanding >= 1 && st.max_outstanding <= 4);
    wsync_server_stats_t ss;
    wsync_server_stats(s, &ss);
    CHECK_EQ(ss.chunks_sent, 24);
    CHECK_EQ(ss.bytes_sent, bytes);
    fprintf(stderr, "  %zu bytes in %.3f s (%.2f GB/s)\n", bytes, st.seconds, st.gbps);
    /* the same again into the same buffer: reused, still exact */
    void *buf = snap.data;
    memset(snap.data, 0, bytes);
    CHECK_OK(wsync_fetch(ctx, wsync_server_endpoint(s), 0, NULL, &snap, &st));
    CHECK(snap.data == buf);
    CHECK(memcmp(snap.data, data, bytes) == 0);
    wsync_snapshot_free(&snap);
    wsync_server_destroy(&s);
    CHECK(s == NULL);
    free(data);
}

static void test_corrupt_chunk(void) {
    size_t bytes = 10u << 20;
    uint8_t *data = make_snapshot(2, bytes);
    wsync_server_t *s = wsync_server_new(NULL, "tcp://127.0.0.1:*", 1u << 20);
    CHECK(s != NULL);
    if (!s) return;
    CHECK_OK(wsync_server_publish(s, 5, data, bytes, NULL, NULL));
    CHECK_OK(wsync_server_start(s));
    wsync_server_corrupt_once(s, 3);
    wsync_snapshot_t snap = {0};
    wsync_stats_t st;
    CHECK_OK(wsync_fetch(ctx, wsync_server_endpoint(s), 5, NULL, &snap, &st));
    CHECK_EQ(st.crc_errors, 1);                              /* detected ... */
    CHECK(snap.data && memcmp(snap.data, data, bytes) == 0); /* ... and fetched again */
    wsync_server_stats_t ss;
    wsync_server_stats(s, &ss);
    CHECK_EQ(ss.chunks_sent, 11); /* 10 + the one sent again */
    wsync_snapshot_free(&snap);
    wsync_server_destroy(&s);
    free(data);
}

typedef struct {
    wsync_replica_t *r;
    const char *ep;
    uint64_t want;
    atomic_int done;
    int rc;
} ensure_arg_t;

static void *ensure_thread(void *arg) {
    ensure_arg_t *a = arg;
    a->rc = wsync_replica_ensure(a->r, ctx, a->ep, a->want, NULL, NULL);
    atomic_store(&a->done, 1);
    return NULL;
}

static void test_versions(void) {
    size_t bytes = 3u << 20;
    uint8_t *d1 = make_snapshot(1, bytes), *d2 = make_snapshot(2, bytes);
    uint8_t *d3 = make_snapshot(3, bytes);
    wsync_server_t *s = wsync_server_new(NULL, "tcp://127.0.0.1:*", 256u << 10);
    CHECK(s != NULL);
    if (!s) return;
    CHECK_OK(wsync_server_start(s));
    const char *ep = wsync_server_endpoint(s);
    wsync_snapshot_t snap = {0};
    wsync_opts_t o = {.timeout_ms = 2000};
    CHECK_ERR(wsync_fetch(ctx, ep, 0, &o, &snap, NULL), RL_ENOTFOUND); /* nothing published */
    CHECK_OK(wsync_server_publish(s, 1, d1, bytes, NULL, NULL));
    CHECK_ERR(wsync_server_publish(s, 1, d2, bytes, NULL, NULL), RL_EINVAL); /* not newer */
    CHECK_ERR(wsync_server_publish(s, 9, d2, 6, NULL, NULL), RL_EINVAL);     /* not floats */
    CHECK_EQ(wsync_server_version(s), 1);
    CHECK_ERR(wsync_fetch(ctx, ep, 2, &o, &snap, NULL), RL_ENOTFOUND); /* v2 is needed */

    /* a replica: a job holding version 1 never sees its weights change; the swap to 2 waits */
    wsync_replica_t r;
    CHECK_OK(wsync_replica_init(&r));
    CHECK_EQ(wsync_replica_version(&r), 0);
    wsync_stats_t st;
    CHECK_OK(wsync_replica_ensure(&r, ctx, ep, 1, NULL, &st));
    CHECK_EQ(wsync_replica_version(&r), 1);
    CHECK_EQ(st.bytes, bytes);
    CHECK_OK(wsync_replica_ensure(&r, ctx, ep, 1, NULL, &st)); /* already there: no fetch */
    CHECK_EQ(st.bytes, 0);
    const wsync_snapshot_t *live = wsync_replica_acquire(&r);
    CHECK_EQ(live->version, 1);
    CHECK_OK(wsync_server_publish(s, 2, d2, bytes, NULL, NULL));
    ensure_arg_t a = {.r = &r, .ep = ep, .want = 2, .rc = 1};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, ensure_thread, &a) == 0);
    /* wait until every chunk of version 2 has been sent (the fetch is done or nearly), then
     * check the job's weights are still exactly version 1: the swap cannot happen while held */
    wsync_server_stats_t ss;
    for (int i = 0; i < 1000; i++) {
        wsync_server_stats(s, &ss);
        if (ss.chunks_sent >= 24) break;
        nap(10);
    }
    CHECK_EQ(ss.chunks_sent, 24); /* 12 chunks of version 1, 12 of version 2 */
    nap(50);
    CHECK_EQ(live->version, 1);
    CHECK(memcmp(live->data, d1, bytes) == 0);
    CHECK_EQ(wsync_replica_version(&r), 1);
    wsync_replica_release(&r);
    pthread_join(th, NULL);
    CHECK_OK(a.rc);
    CHECK_EQ(wsync_replica_version(&r), 2);
    live = wsync_replica_acquire(&r);
    CHECK_EQ(live->version, 2);
    CHECK(memcmp(live->data, d2, bytes) == 0);
    wsync_replica_release(&r);

    /* the server keeps the latest and the previous version: a fetch of an older one is told
     * it is gone, and a fetch in flight when that happens starts over on the latest */
    CHECK_OK(wsync_server_publish(s, 3, d3, bytes, NULL, NULL));
    CHECK_OK(wsync_fetch(ctx, ep, 3, NULL, &snap, &st));
    CHECK_EQ(snap.version, 3);
    CHECK(memcmp(snap.data, d3, bytes) == 0);
    wsync_replica_free(&r);
    wsync_snapshot_free(&snap);
    wsync_server_destroy(&s);
    free(d1), free(d2), free(d3);
}

/* A fetch while the server publishes newer versions: whatever version it ends with, its bytes
 * are exactly that version's. */
typedef struct {
    wsync_server_t *s;
    size_t bytes;
    uint8_t **data;
    int n;
} publisher_arg_t;

static void *publisher_thread(void *arg) {
    publisher_arg_t *p = arg;
    for (int v = 2; v <= p->n; v++) {
        nap(30);
        wsync_server_publish(p->s, (uint64_t)v, p->data[v], p->bytes, NULL, NULL);
    }
    return NULL;
}

static void test_publish_during_fetch(void) {
    enum { N = 6 };
    size_t bytes = 4u << 20;
    uint8_t *data[N + 1] = {0};
    for (int v = 1; v <= N; v++) data[v] = make_snapshot((uint64_t)v, bytes);
    wsync_server_t *s = wsync_server_new(NULL, "tcp://127.0.0.1:*", 64u << 10);
    CHECK(s != NULL);
    if (!s) return;
    CHECK_OK(wsync_server_publish(s, 1, data[1], bytes, NULL, NULL));
    wsync_server_set_delay(s, 2); /* slow requests: the publisher overtakes the fetch */
    CHECK_OK(wsync_server_start(s));
    publisher_arg_t pa = {s, bytes, data, N};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, publisher_thread, &pa) == 0);
    wsync_snapshot_t snap = {0};
    wsync_stats_t st;
    wsync_opts_t o = {.credit = 2, .max_retries = 20};
    CHECK_OK(wsync_fetch(ctx, wsync_server_endpoint(s), 1, &o, &snap, &st));
    pthread_join(th, NULL);
    CHECK(snap.version >= 1 && snap.version <= N);
    if (snap.version >= 1 && snap.version <= N)
        CHECK(memcmp(snap.data, data[snap.version], bytes) == 0);
    fprintf(stderr, "  ended with version %llu after %u restarts\n",
            (unsigned long long)snap.version, st.restarts);
    wsync_snapshot_free(&snap);
    wsync_server_destroy(&s);
    for (int v = 1; v <= N; v++) free(data[v]);
}

/* Talks to the server raw: bad requests are answered with an Error and the server goes on; a
 * request for n chunks gets exactly n (the credit bound holds on the server side too). */
static int raw_recv(void *sock, wire_msg_t *m, int ms) {
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) <= 0) return 0;
    return wire_recv(sock, 0, m, ZMQ_DONTWAIT);
}

static int raw_expect(void *sock, int body_case) {
    wire_msg_t m;
    if (raw_recv(sock, &m, 5000) <= 0) return 0;
    Rlhf__Envelope *e = NULL;
    e = rlhf__envelope__unpack(NULL, wire_frame_size(&m, 0), wire_frame_data(&m, 0));
    int ok = e && (int)e->body_case == body_case;
    if (e) rlhf__envelope__free_unpacked(e, NULL);
    wire_msg_free(&m);
    return ok;
}

static void raw_fetch(void *sock, uint64_t version, uint32_t first, uint32_t n) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__WeightsFetch f = RLHF__WEIGHTS_FETCH__INIT;
    f.version = version;
    f.first_chunk = first;
    f.n_chunks = n;
    env.body_case = RLHF__ENVELOPE__BODY_WEIGHTS_FETCH;
    env.weights_fetch = &f;
    wire_send(sock, NULL, 0, &env, NULL, NULL, 0, 0);
}

static void test_bad_requests(void) {
    size_t bytes = 1u << 20;
    uint8_t *data = make_snapshot(4, bytes);
    wsync_server_t *s = wsync_server_new(NULL, "tcp://127.0.0.1:*", 64u << 10);
    CHECK(s != NULL);
    if (!s) return;
    CHECK_OK(wsync_server_publish(s, 1, data, bytes, NULL, NULL));
    CHECK_OK(wsync_server_publish(s, 2, data, bytes, NULL, NULL));
    CHECK_OK(wsync_server_publish(s, 3, data, bytes, NULL, NULL));
    CHECK_OK(wsync_server_start(s));
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    CHECK(zmq_connect(d, wsync_server_endpoint(s)) == 0);
    zmq_send(d, "garbage!", 8, 0);
    CHECK(raw_expect(d, RLHF__ENVELOPE__BODY_ERROR));
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Ping ping = RLHF__PING__INIT;
    env.body_case = RLHF__ENVELOPE__BODY_PING;
    env.ping = &ping;
    wire_send(d, NULL, 0, &env, NULL, NULL, 0, 0);
    CHECK(raw_expect(d, RLHF__ENVELOPE__BODY_ERROR)); /* not a request */
    raw_fetch(d, 3, 15, 2);                           /* past the end (16 chunks) */
    CHECK(raw_expect(d, RLHF__ENVELOPE__BODY_ERROR));
    raw_fetch(d, 3, 0, WSYNC_MAX_CREDIT + 1); /* more than a request may ask */
    CHECK(raw_expect(d, RLHF__ENVELOPE__BODY_ERROR));
    raw_fetch(d, 1, 0, 1); /* version 1 is gone (2 and 3 are kept) */
    CHECK(raw_expect(d, RLHF__ENVELOPE__BODY_WEIGHTS_INFO));
    raw_fetch(d, 2, 0, 3); /* the previous version is still served: exactly 3 chunks */
    int got = 0;
    for (int i = 0; i < 3; i++) got += raw_expect(d, RLHF__ENVELOPE__BODY_WEIGHTS_CHUNK);
    CHECK_EQ(got, 3);
    wire_msg_t m;
    CHECK_EQ(raw_recv(d, &m, 200), 0); /* and nothing more */
    wsync_server_stats_t ss;
    wsync_server_stats(s, &ss);
    CHECK_EQ(ss.bad_requests, 4);
    zmq_close(d);
    /* the server still serves */
    wsync_snapshot_t snap = {0};
    wsync_stats_t st;
    wsync_opts_t o = {.credit = 3};
    CHECK_OK(wsync_fetch(ctx, wsync_server_endpoint(s), 3, &o, &snap, &st));
    CHECK(snap.data && memcmp(snap.data, data, bytes) == 0);
    CHECK(st.max_outstanding <= 3);
    wsync_snapshot_free(&snap);
    wsync_server_destroy(&s);
    free(data);
}

/* A server that is silent at first: the fetcher times out, retries on a fresh socket and gets
 * everything once the server answers; with nobody answering it gives up after max_retries; a
 * cancel stops it. */
static void *late_start_thread(void *arg) {
    nap(700);
    wsync_server_start(arg);
    return NULL;
}

static void test_silence(void) {
    size_t bytes = 2u << 20;
    uint8_t *data = make_snapshot(5, bytes);
    wsync_server_t *s = wsync_server_new(NULL, "tcp://127.0.0.1:*", 256u << 10);
    CHECK(s != NULL);
    if (!s) return;
    CHECK_OK(wsync_server_publish(s, 1, data, bytes, NULL, NULL));
    pthread_t th;
    CHECK(pthread_create(&th, NULL, late_start_thread, s) == 0);
    wsync_snapshot_t snap = {0};
    wsync_stats_t st;
    wsync_opts_t o = {.timeout_ms = 200, .max_retries = 50};
    CHECK_OK(wsync_fetch(ctx, wsync_server_endpoint(s), 1, &o, &snap, &st));
    pthread_join(th, NULL);
    CHECK(snap.data && memcmp(snap.data, data, bytes) == 0);
    fprintf(stderr, "  %u timeouts before the server answered\n", st.timeouts);
    wsync_server_stop(s);
    o.max_retries = 2;
    CHECK_ERR(wsync_fetch(ctx, wsync_server_endpoint(s), 1, &o, &snap, &st), RL_EIO);
    CHECK_EQ(st.timeouts, 3);
    atomic_int cancel = 1;
    o.cancel = &cancel;
    o.max_retries = 50;
    CHECK_ERR(wsync_fetch(ctx, wsync_server_endpoint(s), 1, &o, &snap, &st), RL_EIO);
    wsync_snapshot_free(&snap);
    wsync_server_destroy(&s);
    free(data);
}

/* ---- relays ---------------------------------------------------------------------------------- */

/* The description of `data` in chunks of chunk_bytes, as a fetch would pass it on (chunk_crc is
 * malloc'ed: the caller frees it). */
static wsync_desc_t describe_bytes(uint64_t version, const uint8_t *data, size_t bytes,
                                   uint32_t chunk_bytes) {
    wsync_desc_t d = {.version = version, .bytes = bytes, .chunk_bytes = chunk_bytes};
    d.n_chunks = (uint32_t)((bytes + chunk_bytes - 1) / chunk_bytes);
    uint32_t *crc = malloc(d.n_chunks * sizeof *crc);
    for (uint32_t i = 0; i < d.n_chunks; i++) {
        size_t off = (size_t)i * chunk_bytes;
        crc[i] = crc32c(0, data + off, bytes - off < chunk_bytes ? bytes - off : chunk_bytes);
    }
    d.chunk_crc = crc;
    d.crc = crc32c(0, data, bytes);
    return d;
}

/* The index of the chunk message m, or -1 when it is not one. */
static int raw_chunk_index(void *sock, int ms) {
    wire_msg_t m;
    if (raw_recv(sock, &m, ms) <= 0) return -1;
    Rlhf__Envelope *e =
        rlhf__envelope__unpack(NULL, wire_frame_size(&m, 0), wire_frame_data(&m, 0));
    int i =
        e && e->body_case == RLHF__ENVELOPE__BODY_WEIGHTS_CHUNK ? (int)e->weights_chunk->index : -1;
    if (e) rlhf__envelope__free_unpacked(e, NULL);
    wire_msg_free(&m);
    return i;
}

/* A fed server: descriptions at once; chunk requests held (not refused) until each chunk is
 * delivered, then answered; bad deliveries refused; a given-up snapshot answers its holds. */
static void test_relay_hold(void) {
    size_t bytes = 6u << 16; /* 6 chunks of 64 KiB */
    uint8_t *data = make_snapshot(7, bytes);
    wsync_server_t *s = wsync_server_new(NULL, "tcp://127.0.0.1:*", 0);
    CHECK(s != NULL);
    if (!s) return;
    CHECK_OK(wsync_server_start(s));
    wsync_desc_t d = describe_bytes(3, data, bytes, 64u << 10);
    uint32_t good = d.crc;
    d.crc ^= 1;
    CHECK_ERR(wsync_server_begin(s, &d), RL_EPROTO); /* chunk CRCs that do not make the whole */
    d.crc = good;
    CHECK_OK(wsync_server_begin(s, &d));
    CHECK_EQ(wsync_server_version(s), 3);
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    CHECK(zmq_connect(sock, wsync_server_endpoint(s)) == 0);
    raw_fetch(sock, 3, 0, 0);
    CHECK(raw_expect(sock, RLHF__ENVELOPE__BODY_WEIGHTS_INFO)); /* described before any chunk */
    raw_fetch(sock, 3, 1, 4);                                   /* chunks 1..4: none there yet */
    wire_msg_t m;
    CHECK_EQ(raw_recv(sock, &m, 300), 0); /* held, not refused */
    CHECK_OK(wsync_server_chunk_put(s, 3, 3, data + 3 * (64u << 10), 64u << 10));
    CHECK_EQ(raw_chunk_index(sock, 2000), 3); /* served the moment it arrived */
    CHECK_EQ(raw_recv(sock, &m, 100), 0);
    uint8_t *bad = malloc(64u << 10);
    memcpy(bad, data + (64u << 10), 64u << 10);
    bad[5] ^= 1;
    CHECK_ERR(wsync_server_chunk_put(s, 3, 1, bad, 64u << 10), RL_EPROTO); /* not servable */
    CHECK_ERR(wsync_server_chunk_put(s, 2, 1, data, 64u << 10), RL_ENOTFOUND);
    CHECK_ERR(wsync_server_chunk_put(s, 3, 6, data, 64u << 10), RL_EINVAL);
    CHECK_ERR(wsync_server_chunk_put(s, 3, 1, data, 100), RL_EINVAL);
    CHECK_EQ(raw_recv(sock, &m, 100), 0);
    for (uint32_t i = 0; i < 6; i++)
        CHECK_OK(wsync_server_chunk_put(s, 3, i, data + (size_t)i * (64u << 10), 64u << 10));
    int got[6] = {0};
    for (int k = 0; k < 3; k++) { /* 1, 2 and 4, each once */
        int i = raw_chunk_index(sock, 2000);
        if (i >= 0 && i < 6) got[i]++;
    }
    CHECK(got[1] == 1 && got[2] == 1 && got[4] == 1 && got[0] == 0);
    CHECK_EQ(raw_recv(sock, &m, 100), 0);
    wsync_server_stats_t ss;
    wsync_server_stats(s, &ss);
    CHECK_EQ(ss.held, 4);
    CHECK_EQ(ss.chunks_sent, 4);
    /* complete: a plain fetch gets it; abort no longer touches it */
    wsync_server_abort(s, 3);
    wsync_snapshot_t snap = {0};
    CHECK_OK(wsync_fetch(ctx, wsync_server_endpoint(s), 3, NULL, &snap, NULL));
    CHECK(snap.data && memcmp(snap.data, data, bytes) == 0);
    /* a newer snapshot begun then given up: its held requests are told, 3 is the latest again */
    wsync_desc_t d4 = describe_bytes(4, data, bytes, 64u << 10);
    CHECK_OK(wsync_server_begin(s, &d4));
    raw_fetch(sock, 4, 0, 2);
    CHECK_EQ(raw_recv(sock, &m, 200), 0);
    wsync_server_abort(s, 4);
    CHECK(raw_expect(sock, RLHF__ENVELOPE__BODY_WEIGHTS_INFO));
    CHECK_EQ(raw_recv(sock, &m, 200), 0); /* one answer for both */
    CHECK_EQ(wsync_server_version(s), 3);
    /* another training's version 2 (not newer): both old snapshots dropped, no mixing */
    wsync_desc_t d2 = describe_bytes(2, data, bytes / 2, 64u << 10);
    CHECK_OK(wsync_server_begin(s, &d2));
    raw_fetch(sock, 3, 0, 0);
    CHECK(raw_expect(sock, RLHF__ENVELOPE__BODY_WEIGHTS_INFO)); /* "version 3 is not available" */
    CHECK_EQ(wsync_server_version(s), 2);
    zmq_close(sock);
    free((void *)d.chunk_crc), free((void *)d4.chunk_crc), free((void *)d2.chunk_crc);
    free(bad);
    wsync_snapshot_free(&snap);
    wsync_server_destroy(&s);
    free(data);
}

typedef struct {
    const char *origin, *upstream;
    char upstream_ep[256]; /* a copy: the upstream's server may be destroyed during the fetch */
    wsync_server_t *relay; /* its own, fed */
    int upstream_timeout_ms;
    atomic_int cancel;
    wsync_snapshot_t snap;
    wsync_stats_t st;
    int rc;
} relay_arg_t;

static void *relay_thread(void *arg) {
    relay_arg_t *a = arg;
    wsync_opts_t o = {.upstream = a->upstream,
                      .relay = a->relay,
                      .upstream_timeout_ms = a->upstream_timeout_ms,
                      .cancel = &a->cancel};
    a->rc = wsync_fetch(ctx, a->origin, 1, &o, &a->snap, &a->st);
    return NULL;
}

/* Relays 0..n-1 in a chain below `origin`: relay i fetches from relay i-1 (the first from the
 * origin) and serves through its own server, all started at once. */
static void chain_start(relay_arg_t *r, pthread_t *th, int n, const char *origin, int timeout_ms) {
    for (int i = 0; i < n; i++) {
        memset(&r[i], 0, sizeof r[i]);
        r[i].origin = origin;
        /* the middle one on IPv6 loopback, where the machine has it */
        r[i].relay = i == 1 ? wsync_server_new(ctx, "tcp://[::1]:*", 0) : NULL;
        if (!r[i].relay) r[i].relay = wsync_server_new(ctx, "tcp://127.0.0.1:*", 0);
        if (r[i].relay) wsync_server_start(r[i].relay);
        if (i && r[i - 1].relay) {
            snprintf(r[i].upstream_ep, sizeof r[i].upstream_ep, "%s",
                     wsync_server_endpoint(r[i - 1].relay));
            r[i].upstream = r[i].upstream_ep;
        }
        r[i].upstream_timeout_ms = timeout_ms;
        r[i].rc = 1;
    }
    for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, relay_thread, &r[i]);
}

static void test_relay_chain(void) {
    size_t bytes = (24u << 20) + 4 * 77;
    uint8_t *data = make_snapshot(8, bytes);
    wsync_server_t *o = wsync_server_new(NULL, "tcp://127.0.0.1:*", 1u << 20);
    CHECK(o != NULL);
    if (!o) return;
    CHECK_OK(wsync_server_publish(o, 1, data, bytes, "params", "{\"relay\":1}"));
    wsync_server_set_delay(o, 3); /* an origin slower than the relays: the chain waits on it */
    CHECK_OK(wsync_server_start(o));
    enum { N = 3 };
    relay_arg_t r[N];
    pthread_t th[N];
    chain_start(r, th, N, wsync_server_endpoint(o), 5000);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    uint64_t held = 0;
    for (int i = 0; i < N; i++) {
        CHECK_OK(r[i].rc);
        CHECK(r[i].snap.data && r[i].snap.bytes == bytes &&
              memcmp(r[i].snap.data, data, bytes) == 0);
        CHECK_STREQ(r[i].snap.meta, "{\"relay\":1}");
        CHECK_EQ(r[i].st.fallbacks, 0);
        CHECK_EQ(r[i].st.upstream_bytes, i ? bytes : 0);
        wsync_server_stats_t rs;
        wsync_server_stats(r[i].relay, &rs);
        held += rs.held;
        CHECK_EQ(rs.bytes_sent, i < N - 1 ? bytes : 0); /* each relay serves the next, once */
        fprintf(stderr, "  relay %d at %s: %.3f s, %llu chunks held for the next\n", i,
                wsync_server_endpoint(r[i].relay), r[i].st.seconds, (unsigned long long)rs.held);
    }
    wsync_server_stats_t os;
    wsync_server_stats(o, &os);
    CHECK_EQ(os.bytes_sent, bytes); /* the origin sent the snapshot once, not 3 times */
    CHECK(held > 0);                /* the chain ran pipelined: requests waited in relays */
    /* afterwards the last relay serves its complete copy like any server */
    wsync_snapshot_t snap = {0};
    CHECK_OK(wsync_fetch(ctx, wsync_server_endpoint(r[N - 1].relay), 1, NULL, &snap, NULL));
    CHECK(snap.data && memcmp(snap.data, data, bytes) == 0);
    wsync_snapshot_free(&snap);
    for (int i = 0; i < N; i++) {
        wsync_server_destroy(&r[i].relay);
        wsync_snapshot_free(&r[i].snap);
    }
    wsync_server_destroy(&o);
    free(data);
}

/* The middle relay of three frozen (its server stops answering) or killed (its fetch cancelled,
 * its server gone) mid-transfer: the last one fetches the chunks it lacks from the origin and
 * keeps those it had; the origin sends exactly those. */
static void relay_fallback(int kill) {
    size_t bytes = 32u << 20;
    uint8_t *data = make_snapshot(9, bytes);
    wsync_server_t *o = wsync_server_new(NULL, "tcp://127.0.0.1:*", 256u << 10);
    CHECK(o != NULL);
    if (!o) return;
    CHECK_OK(wsync_server_publish(o, 1, data, bytes, NULL, NULL));
    wsync_server_set_delay(o, 4); /* 128 chunks: the transfer takes a while */
    CHECK_OK(wsync_server_start(o));
    enum { N = 3 };
    relay_arg_t r[N];
    pthread_t th[N];
    chain_start(r, th, N, wsync_server_endpoint(o), 1000);
    wsync_server_stats_t ms = {0};
    for (int i = 0; i < 2000 && ms.chunks_sent < 24; i++) {
        wsync_server_stats(r[1].relay, &ms);
        nap(5);
    }
    CHECK(ms.chunks_sent >= 24 && ms.chunks_sent < 128); /* mid-transfer */
    if (kill) {
        atomic_store(&r[1].cancel, 1);
        pthread_join(th[1], NULL);
        wsync_server_destroy(&r[1].relay);
        CHECK_ERR(r[1].rc, RL_EIO);
    } else {
        wsync_server_stop(r[1].relay);
    }
    pthread_join(th[0], NULL);
    pthread_join(th[2], NULL);
    if (!kill) pthread_join(th[1], NULL); /* frozen server, but its own fetch went on */
    CHECK_OK(r[0].rc);
    CHECK_OK(r[2].rc);
    CHECK_EQ(r[2].snap.crc, crc32c(0, data, bytes));
    CHECK(r[2].snap.data && memcmp(r[2].snap.data, data, bytes) == 0);
    CHECK_EQ(r[2].st.fallbacks, 1);
    CHECK(r[2].st.upstream_bytes > 0 && r[2].st.upstream_bytes < bytes);
    wsync_server_stats_t os;
    wsync_server_stats(o, &os);
    /* relay 0 once, relay 2 what it lacked - nothing it had fetched again */
    CHECK_EQ(os.bytes_sent, bytes + (bytes - r[2].st.upstream_bytes));
    fprintf(stderr, "  %s: %llu of %zu bytes from the relay, then the origin (%s)\n",
            kill ? "killed" : "frozen", (unsigned long long)r[2].st.upstream_bytes, bytes,
            r[2].st.fallback_why);
    for (int i = 0; i < N; i++) {
        wsync_server_destroy(&r[i].relay);
        wsync_snapshot_free(&r[i].snap);
    }
    wsync_server_destroy(&o);
    free(data);
}

static void test_relay_frozen(void) {
    relay_fallback(0);
}

static void test_relay_killed(void) {
    relay_fallback(1);
}

/* An upstream that serves another snapshot under the same version number (a relay left from
 * another training) is never believed: the description comes from the origin, and the fetch
 * waits for the upstream to serve that one, then gives it up for the origin. */
static void test_relay_other_training(void) {
    size_t bytes = 2u << 20;
    uint8_t *mine = make_snapshot(10, bytes), *other = make_snapshot(11, bytes);
    wsync_server_t *o = wsync_server_new(NULL, "tcp://127.0.0.1:*", 256u << 10);
    wsync_server_t *up = wsync_server_new(NULL, "tcp://127.0.0.1:*", 256u << 10);
    CHECK(o && up);
    if (!o || !up) return;
    CHECK_OK(wsync_server_publish(o, 1, mine, bytes, NULL, NULL));
    CHECK_OK(wsync_server_publish(up, 1, other, bytes, NULL, NULL));
    CHECK_OK(wsync_server_start(o));
    CHECK_OK(wsync_server_start(up));
    wsync_snapshot_t snap = {0};
    wsync_stats_t st;
    wsync_opts_t opt = {.upstream = wsync_server_endpoint(up), .upstream_timeout_ms = 100};
    CHECK_OK(wsync_fetch(ctx, wsync_server_endpoint(o), 1, &opt, &snap, &st));
    CHECK(snap.data && memcmp(snap.data, mine, bytes) == 0);
    CHECK_EQ(st.fallbacks, 1);
    CHECK_EQ(st.upstream_bytes, 0);
    fprintf(stderr, "  %s\n", st.fallback_why);
    wsync_server_stats_t us;
    wsync_server_stats(up, &us);
    CHECK_EQ(us.chunks_sent, 0);
    wsync_snapshot_free(&snap);
    wsync_server_destroy(&o);
    wsync_server_destroy(&up);
    free(mine), free(other);
}

/* A worker's replica feeding its relay: the relay serves from the replica's two buffers (the
 * latest and the previous version), and the fetch of the next version takes the older buffer
 * back - but never while a peer is still being sent chunks from it: a slow peer reading the
 * previous version's chunks late gets them intact. */
static void test_relay_replica(void) {
    size_t bytes = 16u << 20, cb = 1u << 20;
    uint8_t *d[4] = {NULL, make_snapshot(21, bytes), make_snapshot(22, bytes),
                     make_snapshot(23, bytes)};
    wsync_server_t *o = wsync_server_new(NULL, "tcp://127.0.0.1:*", cb);
    wsync_server_t *relay = wsync_server_new(ctx, "tcp://127.0.0.1:*", 0);
    CHECK(o && relay);
    if (!o || !relay) return;
    CHECK_OK(wsync_server_start(o));
    CHECK_OK(wsync_server_start(relay));
    wsync_replica_t r;
    CHECK_OK(wsync_replica_init(&r));
    wsync_opts_t opt = {.relay = relay};
    for (uint64_t v = 1; v <= 2; v++) {
        CHECK_OK(wsync_server_publish(o, v, d[v], bytes, NULL, NULL));
        CHECK_OK(wsync_replica_ensure(&r, ctx, wsync_server_endpoint(o), v, &opt, NULL));
    }
    /* a slow peer: asks for 16 chunks of version 1 (the relay's previous) and reads none yet */
    void *slow = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, hwm = 1, small = 64 << 10;
    zmq_setsockopt(slow, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(slow, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(slow, ZMQ_RCVBUF, &small, sizeof small);
    CHECK(zmq_connect(slow, wsync_server_endpoint(relay)) == 0);
    raw_fetch(slow, 1, 0, 16);
    nap(200);
    /* version 3 goes into the buffer that holds version 1 - or, still in use, a new one */
    CHECK_OK(wsync_server_publish(o, 3, d[3], bytes, NULL, NULL));
    CHECK_OK(wsync_replica_ensure(&r, ctx, wsync_server_endpoint(o), 3, &opt, NULL));
    const wsync_snapshot_t *live = wsync_replica_acquire(&r);
    CHECK(live->version == 3 && memcmp(live->data, d[3], bytes) == 0);
    wsync_replica_release(&r);
    int intact = 0;
    for (int k = 0; k < 16; k++) {
        wire_msg_t m;
        if (raw_recv(slow, &m, 5000) <= 0) break;
        Rlhf__Envelope *e =
            rlhf__envelope__unpack(NULL, wire_frame_size(&m, 0), wire_frame_data(&m, 0));
        if (e && e->body_case == RLHF__ENVELOPE__BODY_WEIGHTS_CHUNK && m.n_frames == 2 &&
            wire_frame_size(&m, 1) == cb &&
            !memcmp(wire_frame_data(&m, 1), d[1] + (size_t)e->weights_chunk->index * cb, cb))
            intact++;
        if (e) rlhf__envelope__free_unpacked(e, NULL);
        wire_msg_free(&m);
    }
    CHECK_EQ(intact, 16); /* version 1's bytes, though version 3 was fetched meanwhile */
    zmq_close(slow);
    /* the relay serves versions 3 and 2 exactly, and no longer 1 */
    wsync_snapshot_t snap = {0};
    wsync_stats_t st;
    CHECK_OK(wsync_fetch(ctx, wsync_server_endpoint(relay), 3, NULL, &snap, &st));
    CHECK(snap.version == 3 && memcmp(snap.data, d[3], bytes) == 0);
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    CHECK(zmq_connect(sock, wsync_server_endpoint(relay)) == 0);
    raw_fetch(sock, 2, 5, 1);
    CHECK_EQ(raw_chunk_index(sock, 5000), 5);
    raw_fetch(sock, 1, 0, 1);
    CHECK(raw_expect(sock, RLHF__ENVELOPE__BODY_WEIGHTS_INFO)); /* gone */
    zmq_close(sock);
    wsync_snapshot_free(&snap);
    wsync_replica_free(&r); /* the relay still holds its buffers: freed with it */
    CHECK_OK(wsync_fetch(ctx, wsync_server_endpoint(relay), 3, NULL, &snap, NULL));
    CHECK(snap.version == 3 && memcmp(snap.data, d[3], bytes) == 0);
    wsync_snapshot_free(&snap);
    wsync_server_destroy(&relay);
    wsync_server_destroy(&o);
    for (int v = 1; v <= 3; v++) free(d[v]);
}

int main(void) {
    ctx = zmq_ctx_new();
    RUN(test_round_trip);
    RUN(test_corrupt_chunk);
    RUN(test_versions);
    RUN(test_publish_during_fetch);
    RUN(test_bad_requests);
    RUN(test_silence);
    RUN(test_relay_hold);
    RUN(test_relay_chain);
    RUN(test_relay_frozen);
    RUN(test_relay_killed);
    RUN(test_relay_other_training);
    RUN(test_relay_replica);
    zmq_ctx_term(ctx);
    return TEST_REPORT();
}
