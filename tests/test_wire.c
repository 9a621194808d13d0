/*
 * test_wire.c - envelope framing over real ZeroMQ sockets (inproc ROUTER/DEALER): round trip
 * with tensor frames and routing ids, and each class of bad input.
 */
#include <zmq.h>

#include "test.h"
#include "net/wire.h"

/* Sends raw bytes from the dealer and classifies what the router receives. */
static wire_bad_t classify(void *router, void *dealer, const void *buf, size_t n) {
    zmq_send(dealer, buf, n, 0);
    wire_msg_t m;
    Rlhf__Envelope *env = NULL;
    CHECK_EQ(wire_recv(router, 1, &m, 0), 1);
    wire_bad_t b = wire_decode(&m, &env);
    if (env) rlhf__envelope__free_unpacked(env, NULL);
    wire_msg_free(&m);
    return b;
}

static void test_round_trip_and_bad_input(void) {
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER), *dealer = zmq_socket(ctx, ZMQ_DEALER);
    CHECK_EQ(zmq_bind(router, "inproc://wire"), 0);
    CHECK_EQ(zmq_setsockopt(dealer, ZMQ_ROUTING_ID, "w1", 2), 0);
    CHECK_EQ(zmq_connect(dealer, "inproc://wire"), 0);
    /* a heartbeat with one tensor frame, dealer -> router */
    float x[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3};
    Rlhf__TensorHeader th, *ths[1] = {&th};
    wire_tensor_describe(&th, "x", RLHF__DTYPE__DTYPE_F32, shape, 2, x, sizeof x);
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Heartbeat hb = RLHF__HEARTBEAT__INIT;
    hb.job_id = 77;
    env.body_case = RLHF__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    env.n_frames = 1;
    env.frames = ths;
    const void *data[1] = {x};
    size_t len[1] = {sizeof x};
    CHECK_OK(wire_send(dealer, NULL, 0, &env, data, len, 1, 0));
    wire_msg_t m;
    Rlhf__Envelope *got = NULL;
    CHECK_EQ(wire_recv(router, 1, &m, 0), 1);
    CHECK_EQ(m.rid_len, 2);
    CHECK(memcmp(m.rid, "w1", 2) == 0);
    CHECK_EQ(m.n_frames, 2);
    CHECK_EQ(wire_decode(&m, &got), WIRE_OK);
    if (got) {
        CHECK_EQ(got->heartbeat->job_id, 77);
        CHECK_EQ(got->frames[0]->shape[1], 3);
        CHECK(memcmp(wire_frame_data(&m, 1), x, sizeof x) == 0);
        rlhf__envelope__free_unpacked(got, NULL);
    }
    wire_msg_free(&m);
    /* router -> dealer by routing id */
    env.n_frames = 0;
    CHECK_OK(wire_send(router, "w1", 2, &env, NULL, NULL, 0, 0));
    CHECK_EQ(wire_recv(dealer, 0, &m, 0), 1);
    CHECK_EQ(wire_decode(&m, &got), WIRE_OK);
    if (got) rlhf__envelope__free_unpacked(got, NULL);
    wire_msg_free(&m);
    CHECK_EQ(wire_recv(dealer, 0, &m, ZMQ_DONTWAIT), 0); /* nothing more waiting */
    /* a corrupted tensor frame */
    x[0] = 9;
    env.n_frames = 1;
    CHECK_OK(wire_send(dealer, NULL, 0, &env, data, len, 1, 0));
    CHECK_EQ(wire_recv(router, 1, &m, 0), 1);
    CHECK_EQ(wire_decode(&m, &got), WIRE_BAD_FRAMES);
    CHECK(got == NULL);
    wire_msg_free(&m);
    /* bad classes */
    uint8_t buf[128];
    Rlhf__Envelope e2 = RLHF__ENVELOPE__INIT;
    Rlhf__Ping p = RLHF__PING__INIT;
    p.nonce = 0x1234567890ULL;
    e2.body_case = RLHF__ENVELOPE__BODY_PING;
    e2.ping = &p;
    e2.protocol_version = 1;
    size_t n = rlhf__envelope__pack(&e2, buf);
    CHECK_EQ(classify(router, dealer, buf, n), WIRE_OK);
    CHECK_EQ(classify(router, dealer, buf, n - 2), WIRE_BAD_MALFORMED);
    CHECK_EQ(classify(router, dealer, "\xff\xff\xff\xff\xff", 5), WIRE_BAD_MALFORMED);
    e2.protocol_version = 2;
    n = rlhf__envelope__pack(&e2, buf);
    CHECK_EQ(classify(router, dealer, buf, n), WIRE_BAD_VERSION);
    static const uint8_t unk[] = {0x08, 0x01, 0x9a, 0x06, 0x02, 0x08, 0x01};
    CHECK_EQ(classify(router, dealer, unk, sizeof unk), WIRE_BAD_UNKNOWN);
    uint8_t *big = calloc(1, WIRE_MAX_ENVELOPE + 1);
    CHECK_EQ(classify(router, dealer, big, WIRE_MAX_ENVELOPE + 1), WIRE_BAD_OVERSIZED);
    free(big);
    CHECK_STREQ(wire_bad_name(WIRE_BAD_OVERSIZED), "oversized");
    int zero = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(dealer);
    zmq_close(router);
    zmq_ctx_term(ctx);
}

int main(void) {
    RUN(test_round_trip_and_bad_input);
    return TEST_REPORT();
}
