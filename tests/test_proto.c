/*
 * test_proto.c - the wire schema compiled by protoc-c at build time: an envelope packs and
 * unpacks, garbage is rejected, and no message type can contain itself (protobuf-c has no
 * nesting limit, so a cycle would let a peer exhaust the stack).
 */
#include "rlhf.pb-c.h"
#include "test.h"

static void test_round_trip(void) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Error err = RLHF__ERROR__INIT;
    Rlhf__TensorHeader th = RLHF__TENSOR_HEADER__INIT, *ths[1] = {&th};
    int64_t shape[2] = {768, 2304};
    env.protocol_version = RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    env.msg_id = 42;
    err.code = -4;
    err.message = "bad input";
    env.body_case = RLHF__ENVELOPE__BODY_ERROR;
    env.error = &err;
    th.name = "h.0.attn.c_attn.weight";
    th.dtype = RLHF__DTYPE__DTYPE_F32;
    th.n_shape = 2;
    th.shape = shape;
    th.nbytes = 768 * 2304 * 4;
    env.n_frames = 1;
    env.frames = ths;
    size_t n = rlhf__envelope__get_packed_size(&env);
    uint8_t *buf = malloc(n);
    CHECK_EQ(rlhf__envelope__pack(&env, buf), n);
    Rlhf__Envelope *back = rlhf__envelope__unpack(NULL, n, buf);
    CHECK(back != NULL);
    if (back) {
        CHECK_EQ(back->msg_id, 42);
        CHECK_EQ(back->body_case, RLHF__ENVELOPE__BODY_ERROR);
        CHECK_STREQ(back->error->message, "bad input");
        CHECK_EQ(back->n_frames, 1);
        CHECK_EQ(back->frames[0]->shape[1], 2304);
        rlhf__envelope__free_unpacked(back, NULL);
    }
    /* a truncated buffer is refused, not half-read */
    CHECK(rlhf__envelope__unpack(NULL, n - 3, buf) == NULL);
    free(buf);
}

/* Depth-first search for a message type reachable from itself through message fields. */
static int has_cycle(const ProtobufCMessageDescriptor *d, const ProtobufCMessageDescriptor **stack,
                     int depth) {
    for (int i = 0; i < depth; i++)
        if (stack[i] == d) {
            fprintf(stderr, "recursive message type: %s\n", d->name);
            return 1;
        }
    if (depth == 64) return 1;
    stack[depth] = d;
    for (unsigned f = 0; f < d->n_fields; f++)
        if (d->fields[f].type == PROTOBUF_C_TYPE_MESSAGE &&
            has_cycle(d->fields[f].descriptor, stack, depth + 1))
            return 1;
    return 0;
}

static void test_no_recursive_types(void) {
    const ProtobufCMessageDescriptor *roots[] = {
        &rlhf__envelope__descriptor, &rlhf__error__descriptor, &rlhf__tensor_header__descriptor};
    const ProtobufCMessageDescriptor *stack[64];
    for (size_t i = 0; i < sizeof roots / sizeof roots[0]; i++)
        CHECK_EQ(has_cycle(roots[i], stack, 0), 0);
}

int main(void) {
    RUN(test_round_trip);
    RUN(test_no_recursive_types);
    return TEST_REPORT();
}
