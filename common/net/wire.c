/*
 * wire.c - Envelope framing over ZeroMQ multipart messages (see wire.h).
 */
#include "net/wire.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "base/crc32c.h"
#include "base/err.h"

static const char *const bad_names[WIRE_BAD_COUNT] = {"ok",      "malformed", "version",
                                                      "unknown", "oversized", "frames"};

const char *wire_bad_name(wire_bad_t b) {
    return b >= 0 && b < WIRE_BAD_COUNT ? bad_names[b] : "?";
}

void wire_msg_free(wire_msg_t *m) {
    for (int i = 0; i < m->n_frames; i++) {
        if (!m->frames[i]) continue;
        zmq_msg_close(m->frames[i]);
        free(m->frames[i]);
        m->frames[i] = NULL;
    }
    m->n_frames = 0;
    m->rid_len = 0;
}

const void *wire_frame_data(const wire_msg_t *m, int i) {
    return i < m->n_frames && m->frames[i] ? zmq_msg_data(m->frames[i]) : NULL;
}

size_t wire_frame_size(const wire_msg_t *m, int i) {
    return i < m->n_frames && m->frames[i] ? zmq_msg_size(m->frames[i]) : 0;
}

void *wire_frame_take(wire_msg_t *m, int i) {
    if (i < 0 || i >= m->n_frames) return NULL;
    void *f = m->frames[i];
    m->frames[i] = NULL; /* wire_msg_free skips it */
    return f;
}

const void *wire_frame_bytes(const void *frame) {
    return frame ? zmq_msg_data((zmq_msg_t *)frame) : NULL;
}

void wire_frame_release(void *frame) {
    if (!frame) return;
    zmq_msg_close(frame);
    free(frame);
}

int wire_recv(void *sock, int with_rid, wire_msg_t *m, int flags) {
    memset(m, 0, sizeof *m);
    int first = 1, more = 1, need_rid = with_rid;
    while (more) {
        zmq_msg_t *f = malloc(sizeof *f);
        if (!f) return rl_fail(RL_ENOMEM, "wire_recv: out of memory");
        zmq_msg_init(f);
        /* the later frames of a multipart message are already here: blocking is safe */
        if (zmq_msg_recv(f, sock, first ? flags : 0) < 0) {
            int e = errno;
            zmq_msg_close(f);
            free(f);
            if (first && (e == EAGAIN || e == EINTR)) return 0;
            wire_msg_free(m);
            return rl_fail(RL_EIO, "zmq_msg_recv: %s", zmq_strerror(e));
        }
        if (!m->user[0]) { /* the connection's metadata (not on a ROUTER's routing id frame) */
            const char *u = zmq_msg_gets(f, "User-Id");
            if (u) snprintf(m->user, sizeof m->user, "%s", u);
        }
        first = 0;
        more = zmq_msg_more(f);
        if (need_rid) {
            size_t n = zmq_msg_size(f);
            if (n > WIRE_MAX_RID) n = WIRE_MAX_RID;
            memcpy(m->rid, zmq_msg_data(f), n);
            m->rid_len = n;
            need_rid = 0;
            zmq_msg_close(f);
            free(f);
        } else if (m->n_frames < WIRE_MAX_FRAMES) {
            m->frames[m->n_frames++] = f;
        } else { /* keep reading to the end of the message, then report it */
            m->too_many = 1;
            zmq_msg_close(f);
            free(f);
        }
    }
    return 1;
}

wire_bad_t wire_decode(const wire_msg_t *m, Rlhf__Envelope **env) {
    *env = NULL;
    if (m->n_frames < 1) return WIRE_BAD_MALFORMED;
    if (m->too_many) return WIRE_BAD_FRAMES;
    size_t n = wire_frame_size(m, 0);
    if (n > WIRE_MAX_ENVELOPE) return WIRE_BAD_OVERSIZED;
    Rlhf__Envelope *e = rlhf__envelope__unpack(NULL, n, wire_frame_data(m, 0));
    if (!e) return WIRE_BAD_MALFORMED;
    wire_bad_t bad = WIRE_OK;
    if (e->protocol_version != RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT)
        bad = WIRE_BAD_VERSION;
    else if (e->body_case == RLHF__ENVELOPE__BODY__NOT_SET)
        bad = WIRE_BAD_UNKNOWN;
    else if (e->n_frames != (size_t)(m->n_frames - 1))
        bad = WIRE_BAD_FRAMES;
    for (size_t i = 0; bad == WIRE_OK && i < e->n_frames; i++) {
        const Rlhf__TensorHeader *th = e->frames[i];
        size_t len = wire_frame_size(m, (int)i + 1);
        if (th->nbytes != len || crc32c(0, wire_frame_data(m, (int)i + 1), len) != th->crc32c)
            bad = WIRE_BAD_FRAMES;
    }
    if (bad != WIRE_OK) {
        rlhf__envelope__free_unpacked(e, NULL);
        return bad;
    }
    *env = e;
    return WIRE_OK;
}

static void free_buf(void *data, void *hint) {
    (void)hint;
    free(data);
}

/* RL_EIO with the detail recorded and errno left as zmq set it: callers tell EAGAIN (full
 * pipe) from EHOSTUNREACH (peer gone) by errno, which formatting the detail could clobber. */
static int send_fail(int e) {
    int rc = rl_fail(RL_EIO, "zmq_send: %s", zmq_strerror(e));
    errno = e;
    return rc;
}

int wire_send(void *sock, const void *rid, size_t rid_len, Rlhf__Envelope *env,
              const void *const *data, const size_t *len, int n, int flags) {
    env->protocol_version = RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    size_t sz = rlhf__envelope__get_packed_size(env);
    uint8_t *buf = malloc(sz ? sz : 1);
    if (!buf) return rl_fail(RL_ENOMEM, "wire_send: out of memory");
    rlhf__envelope__pack(env, buf);
    zmq_msg_t msg;
    if (rid_len && zmq_send(sock, rid, rid_len, flags | ZMQ_SNDMORE) < 0) {
        int e = errno;
        free(buf);
        return send_fail(e);
    }
    /* the routing id frame is queued: the rest of the message goes out whatever happens */
    zmq_msg_init_data(&msg, buf, sz, free_buf, NULL);
    if (zmq_msg_send(&msg, sock, (rid_len ? 0 : flags) | (n > 0 ? ZMQ_SNDMORE : 0)) < 0) {
        int e = errno;
        zmq_msg_close(&msg);
        return send_fail(e);
    }
    for (int i = 0; i < n; i++)
        if (zmq_send(sock, data[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
            return send_fail(errno);
    return 0;
}

/* CRC-32C, reflected polynomial 0x82F63B78. */
void wire_tensor_describe(Rlhf__TensorHeader *th, const char *name, Rlhf__DType dtype,
                          int64_t *shape, size_t ndim, const void *data, size_t nbytes) {
    rlhf__tensor_header__init(th);
    th->name = (char *)name;
    th->dtype = dtype;
    th->shape = shape;
    th->n_shape = ndim;
    th->nbytes = nbytes;
    th->crc32c = crc32c(0, data, nbytes);
}

void wire_logv(const char *who, const char *fmt, va_list ap) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    char t[32];
    strftime(t, sizeof t, "%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ld %s: ", t, ts.tv_nsec / 1000000, who);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

double wire_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

uint64_t wire_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const char *wire_job_kind_name(int k) {
    switch (k) {
    case RLHF__JOB_KIND__JOB_KIND_GENERATE:
        return "generate";
    case RLHF__JOB_KIND__JOB_KIND_SCORE:
        return "score";
    case RLHF__JOB_KIND__JOB_KIND_TRAIN:
        return "train";
    case RLHF__JOB_KIND__JOB_KIND_EVAL:
        return "eval";
    case RLHF__JOB_KIND__JOB_KIND_NOOP:
        return "noop";
    case RLHF__JOB_KIND__JOB_KIND_STAGE:
        return "stage";
    default:
        return "unknown";
    }
}
