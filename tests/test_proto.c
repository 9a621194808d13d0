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

#ifdef RLHF_HAVE_DESCRIPTOR_LIST
/* every message type of every .proto file, listed at build time from protoc-c's output */
#include "rlhf_descriptors.h"
#endif

static void test_no_recursive_types(void) {
    const ProtobufCMessageDescriptor *roots[] = {
#ifdef RLHF_ALL_MESSAGE_DESCRIPTORS
        RLHF_ALL_MESSAGE_DESCRIPTORS
#else
        &rlhf__envelope__descriptor, &rlhf__error__descriptor, &rlhf__tensor_header__descriptor
#endif
    };
    const ProtobufCMessageDescriptor *stack[64];
    size_t n = sizeof roots / sizeof roots[0];
    for (size_t i = 0; i < n; i++) CHECK_EQ(has_cycle(roots[i], stack, 0), 0);
#ifdef RLHF_ALL_MESSAGE_DESCRIPTORS
    /* the list really is the generated one: it has the envelope and every body of its oneof */
    int found = 0;
    for (size_t i = 0; i < n; i++) found += roots[i] == &rlhf__envelope__descriptor;
    CHECK_EQ(found, 1);
    for (unsigned f = 0; f < rlhf__envelope__descriptor.n_fields; f++) {
        const ProtobufCFieldDescriptor *fd = &rlhf__envelope__descriptor.fields[f];
        if (fd->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        int listed = 0;
        for (size_t i = 0; i < n; i++) listed += roots[i] == fd->descriptor;
        if (!listed) fprintf(stderr, "not listed: %s\n", fd->name);
        CHECK_EQ(listed, 1);
    }
#endif
}

/* The cycle check itself: a descriptor that contains itself is found. */
static void test_cycle_detected(void) {
    ProtobufCFieldDescriptor field;
    ProtobufCMessageDescriptor self;
    memset(&field, 0, sizeof field);
    memset(&self, 0, sizeof self);
    field.type = PROTOBUF_C_TYPE_MESSAGE;
    field.descriptor = &self;
    self.name = "Loop";
    self.n_fields = 1;
    self.fields = &field;
    const ProtobufCMessageDescriptor *stack[64];
    CHECK_EQ(has_cycle(&self, stack, 0), 1);
}

/* Every body of the oneof round-trips with its case intact. */
static void test_all_bodies(void) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Hello h = RLHF__HELLO__INIT;
    Rlhf__JobKind caps[2] = {RLHF__JOB_KIND__JOB_KIND_GENERATE, RLHF__JOB_KIND__JOB_KIND_NOOP};
    h.role = RLHF__ROLE__ROLE_ROLLOUT;
    h.worker_id = "w1";
    h.capabilities = caps;
    h.n_capabilities = 2;
    env.protocol_version = RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    env.body_case = RLHF__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    uint8_t buf[256];
    size_t n = rlhf__envelope__pack(&env, buf);
    Rlhf__Envelope *back = rlhf__envelope__unpack(NULL, n, buf);
    CHECK(back != NULL);
    if (back) {
        CHECK_EQ(back->body_case, RLHF__ENVELOPE__BODY_HELLO);
        CHECK_EQ(back->hello->n_capabilities, 2);
        CHECK_EQ(back->hello->capabilities[1], RLHF__JOB_KIND__JOB_KIND_NOOP);
        CHECK_STREQ(back->hello->worker_id, "w1");
        rlhf__envelope__free_unpacked(back, NULL);
    }
    Rlhf__JobAssign a = RLHF__JOB_ASSIGN__INIT;
    uint8_t payload[3] = {1, 2, 3};
    a.job_id = 7;
    a.attempt = 2;
    a.lease_id = 99;
    a.seed = 1234567890123ULL;
    a.payload.data = payload;
    a.payload.len = 3;
    env.body_case = RLHF__ENVELOPE__BODY_JOB_ASSIGN;
    env.job_assign = &a;
    n = rlhf__envelope__pack(&env, buf);
    back = rlhf__envelope__unpack(NULL, n, buf);
    CHECK(back != NULL);
    if (back) {
        CHECK_EQ(back->body_case, RLHF__ENVELOPE__BODY_JOB_ASSIGN);
        CHECK_EQ(back->job_assign->seed, 1234567890123ULL);
        CHECK_EQ(back->job_assign->payload.len, 3);
        CHECK_EQ(back->job_assign->payload.data[2], 3);
        rlhf__envelope__free_unpacked(back, NULL);
    }
}

int main(void) {
    RUN(test_round_trip);
    RUN(test_no_recursive_types);
    RUN(test_cycle_detected);
    RUN(test_all_bodies);
    return TEST_REPORT();
}
