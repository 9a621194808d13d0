/*
 * test_wsync.c - weight sync (common/net/wsync.h): a server thread and fetchers over loopback TCP
 * in one process: bit-exact round trips, a corrupted chunk detected and fetched again, version
 * semantics, the credit bound, bad requests.
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

int main(void) {
    ctx = zmq_ctx_new();
    RUN(test_round_trip);
    RUN(test_corrupt_chunk);
    RUN(test_versions);
    RUN(test_publish_during_fetch);
    RUN(test_bad_requests);
    RUN(test_silence);
    zmq_ctx_term(ctx);
    return TEST_REPORT();
}
