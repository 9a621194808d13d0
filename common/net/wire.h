/*
 * wire.h - the message layer between rlhf-master and rlhf-worker: protobuf Envelopes over
 * ZeroMQ multipart messages, with raw tensor frames after the envelope frame.
 *
 * A message on the wire is [routing id (ROUTER side only)] [envelope] [tensor frame]*. The
 * envelope's `frames` list describes each tensor frame (name, dtype, shape, byte count, CRC-32C);
 * wire_decode checks every one. Classification of bad input is part of the contract so that a
 * daemon can count each kind separately and keep serving:
 *   WIRE_BAD_MALFORMED  not a protobuf Envelope (garbage, truncated)
 *   WIRE_BAD_VERSION    protocol_version is not PROTOCOL_VERSION_CURRENT
 *   WIRE_BAD_UNKNOWN    no body we know (an unknown oneof field from a newer peer)
 *   WIRE_BAD_OVERSIZED  the envelope frame is larger than WIRE_MAX_ENVELOPE
 *   WIRE_BAD_FRAMES     tensor frames missing, extra, wrong size or wrong checksum
 *
 * Use:
 *   Rlhf__Envelope env = RLHF__ENVELOPE__INIT; ...set a body...
 *   wire_send(sock, rid, rid_len, &env, NULL, NULL, 0, ZMQ_DONTWAIT);
 *   wire_msg_t m; Rlhf__Envelope *in;
 *   if (wire_recv(sock, 1, &m, ZMQ_DONTWAIT) > 0 && wire_decode(&m, &in) == WIRE_OK) {
 *       ...; rlhf__envelope__free_unpacked(in, NULL);
 *   }
 *   wire_msg_free(&m);
 */
#ifndef RLHF_WIRE_H
#define RLHF_WIRE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "rlhf.pb-c.h"

/* Largest envelope frame accepted (tensors travel in their own frames). */
#define WIRE_MAX_ENVELOPE (1u << 20)
/* Most frames in one message: routing id + envelope + tensors. */
#define WIRE_MAX_FRAMES 64
/* Largest routing id (ZeroMQ's own limit). */
#define WIRE_MAX_RID 255

typedef enum {
    WIRE_OK = 0,
    WIRE_BAD_MALFORMED,
    WIRE_BAD_VERSION,
    WIRE_BAD_UNKNOWN,
    WIRE_BAD_OVERSIZED,
    WIRE_BAD_FRAMES,
    WIRE_BAD_COUNT
} wire_bad_t;

/* Short label of a wire_bad_t ("malformed", ...), used as a metrics label. */
const char *wire_bad_name(wire_bad_t b);

/* One received multipart message. Zero it or fill it with wire_recv(). */
typedef struct {
    uint8_t rid[WIRE_MAX_RID];
    size_t rid_len;                /* 0 when received without a routing id */
    void *frames[WIRE_MAX_FRAMES]; /* zmq_msg_t* each (opaque here) */
    int n_frames;                  /* envelope + tensor frames (routing id excluded) */
    int too_many;                  /* the message had more frames than WIRE_MAX_FRAMES (dropped) */
    char user[64]; /* the sender's key name (its ZAP "User-Id", net/sec.h); "" in plaintext */
} wire_msg_t;

/*
 * Receives one whole multipart message. With `with_rid` the first frame is the routing id
 * (ROUTER). flags is 0 or ZMQ_DONTWAIT (applies to the first frame). Returns 1 when a message
 * was received, 0 when none was waiting (EAGAIN) or the call was interrupted (EINTR), or
 * RL_EIO. The caller frees the message with wire_msg_free().
 */
int wire_recv(void *sock, int with_rid, wire_msg_t *m, int flags);

/* Releases the frames of a received message; safe on a zeroed one and to repeat. */
void wire_msg_free(wire_msg_t *m);

/* Data and size of frame i (0 = envelope). */
const void *wire_frame_data(const wire_msg_t *m, int i);
size_t wire_frame_size(const wire_msg_t *m, int i);

/* Takes frame i out of m, to keep its bytes (no copy) after wire_msg_free(m): returns the
 * frame (NULL when there is none), whose bytes wire_frame_bytes() gives, and which the caller
 * releases with wire_frame_release(). Frame i of m is then empty (size 0, data NULL). */
void *wire_frame_take(wire_msg_t *m, int i);
const void *wire_frame_bytes(const void *frame);
void wire_frame_release(void *frame);

/*
 * Decodes and validates the envelope of `m` (see the classes above). On WIRE_OK *env is a new
 * envelope the caller frees with rlhf__envelope__free_unpacked(env, NULL); on any other result
 * *env is NULL. Returns the class.
 */
wire_bad_t wire_decode(const wire_msg_t *m, Rlhf__Envelope **env);

/*
 * Sends env (protocol_version is set here) followed by n raw tensor frames data[i] of len[i]
 * bytes, as one multipart message, to routing id rid (rid_len 0: no routing id frame, DEALER).
 * env->frames must already describe the frames (see wire_tensor_describe). flags: 0 or
 * ZMQ_DONTWAIT. Returns 0, RL_EIO with errno preserved (EAGAIN: high-water mark reached,
 * EHOSTUNREACH: unknown peer on a ROUTER_MANDATORY socket), or RL_ENOMEM.
 */
int wire_send(void *sock, const void *rid, size_t rid_len, Rlhf__Envelope *env,
              const void *const *data, const size_t *len, int n, int flags);

/* Fills a TensorHeader for a raw frame (nbytes and crc32c computed from the data). name and
 * shape are borrowed, not copied. */
void wire_tensor_describe(Rlhf__TensorHeader *th, const char *name, Rlhf__DType dtype,
                          int64_t *shape, size_t ndim, const void *data, size_t nbytes);

/* The daemons' log line on stderr: "HH:MM:SS.mmm WHO: message". */
void wire_logv(const char *who, const char *fmt, va_list ap);

/* Monotonic clock in milliseconds / nanoseconds. */
double wire_now_ms(void);
uint64_t wire_now_ns(void);

/* A job kind's name as in rlhf-master --dump-results and /metrics (Rlhf__JobKind; "unknown"
 * otherwise). */
const char *wire_job_kind_name(int kind);

#endif
