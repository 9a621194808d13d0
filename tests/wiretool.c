/*
 * wiretool.c - rlhf-wiretool, a test and benchmark helper that talks to rlhf-master raw.
 *
 *   rlhf-wiretool send  --master EP --what KIND
 *       KIND: garbage|truncated|version|unknown|oversized|frames|unexpected
 *   rlhf-wiretool burst --master EP --n N [--timeout-s S]
 *   rlhf-wiretool swarm --master EP --n N --seconds S [--heartbeat-ms MS]
 *
 * send:  one bad message of the given kind, then a Ping that must be answered (so the master
 *        provably still serves this peer); exit 0 when the Pong arrives.
 * burst: N Pings as fast as the socket takes them, while counting the Pongs; prints
 *        {"sent","received","ms"} and exits 0 when every Ping was answered before the timeout.
 * swarm: N DEALER sockets in this one process, each registered (role tool) and heartbeating at
 *        the given interval for S seconds, their phases spread evenly over the interval (as
 *        independent workers would be); prints {"sockets","heartbeats_sent","received"}.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "wire.h"

static void *dealer(void *ctx, const char *ep) {
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 2000, hwm = 100000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_connect(s, ep) < 0) {
        fprintf(stderr, "connect %s: %s\n", ep, zmq_strerror(errno));
        exit(2);
    }
    return s;
}

static void send_hello(void *s, const char *id) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Hello h = RLHF__HELLO__INIT;
    h.role = RLHF__ROLE__ROLE_TOOL;
    h.worker_id = (char *)id;
    h.version = "wiretool";
    env.body_case = RLHF__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    wire_send(s, NULL, 0, &env, NULL, NULL, 0, 0);
}

static int send_ping(void *s, uint64_t nonce, int flags) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Ping p = RLHF__PING__INIT;
    p.nonce = nonce;
    p.sent_ns = wire_now_ns();
    env.body_case = RLHF__ENVELOPE__BODY_PING;
    env.ping = &p;
    return wire_send(s, NULL, 0, &env, NULL, NULL, 0, flags);
}

/* Receives until a Pong with `nonce` arrives or the deadline passes. Returns 1 when it did. */
static int wait_pong(void *s, uint64_t nonce, double deadline_ms) {
    while (wire_now_ms() < deadline_ms) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0) continue;
        wire_msg_t m;
        Rlhf__Envelope *env;
        while (wire_recv(s, 0, &m, ZMQ_DONTWAIT) > 0) {
            int hit = wire_decode(&m, &env) == WIRE_OK &&
                      env->body_case == RLHF__ENVELOPE__BODY_PONG && env->pong->nonce == nonce;
            if (env) rlhf__envelope__free_unpacked(env, NULL);
            wire_msg_free(&m);
            if (hit) return 1;
        }
    }
    return 0;
}

static int cmd_send(void *ctx, const char *ep, const char *what) {
    void *s = dealer(ctx, ep);
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Ping p = RLHF__PING__INIT;
    env.body_case = RLHF__ENVELOPE__BODY_PING;
    env.ping = &p;
    env.protocol_version = RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    uint8_t buf[256];
    if (!strcmp(what, "garbage")) {
        static const char junk[] = "\xff\xff\xff\xff garbage that is not protobuf \x07\x00";
        zmq_send(s, junk, sizeof junk - 1, 0);
    } else if (!strcmp(what, "truncated")) {
        p.nonce = 0x123456789abcdefULL;
        size_t n = rlhf__envelope__pack(&env, buf);
        zmq_send(s, buf, n - 3, 0); /* a length-delimited field cut short */
    } else if (!strcmp(what, "version")) {
        env.protocol_version = 99;
        size_t n = rlhf__envelope__pack(&env, buf);
        zmq_send(s, buf, n, 0);
    } else if (!strcmp(what, "unknown")) {
        /* protocol_version = 1, then field 99 (length-delimited, 2 bytes): a body from a newer
         * schema that this one does not have */
        static const uint8_t unk[] = {0x08, 0x01, 0x9a, 0x06, 0x02, 0x08, 0x01};
        zmq_send(s, unk, sizeof unk, 0);
    } else if (!strcmp(what, "oversized")) {
        size_t n = WIRE_MAX_ENVELOPE + 4096;
        uint8_t *big = calloc(1, n);
        zmq_send(s, big, n, 0);
        free(big);
    } else if (!strcmp(what, "frames")) {
        /* an envelope announcing one tensor frame, followed by none */
        Rlhf__TensorHeader th, *ths[1] = {&th};
        int64_t shape[1] = {4};
        float x[4] = {1, 2, 3, 4};
        wire_tensor_describe(&th, "x", RLHF__DTYPE__DTYPE_F32, shape, 1, x, sizeof x);
        env.n_frames = 1;
        env.frames = ths;
        size_t n = rlhf__envelope__pack(&env, buf);
        zmq_send(s, buf, n, 0);
    } else if (!strcmp(what, "unexpected")) {
        Rlhf__JobAssign a = RLHF__JOB_ASSIGN__INIT;
        env.body_case = RLHF__ENVELOPE__BODY_JOB_ASSIGN;
        env.job_assign = &a;
        size_t n = rlhf__envelope__pack(&env, buf);
        zmq_send(s, buf, n, 0);
    } else {
        fprintf(stderr, "rlhf-wiretool: unknown --what %s\n", what);
        return 2;
    }
    /* the master must still answer this very peer */
    send_ping(s, 42, 0);
    int ok = wait_pong(s, 42, wire_now_ms() + 10000);
    printf("{\"what\":\"%s\",\"answered\":%s}\n", what, ok ? "true" : "false");
    zmq_close(s);
    return ok ? 0 : 1;
}

static int cmd_burst(void *ctx, const char *ep, long n, double timeout_s) {
    void *s = dealer(ctx, ep);
    send_hello(s, "burst");
    double t0 = wire_now_ms(), deadline = t0 + timeout_s * 1e3;
    long sent = 0, got = 0;
    while (got < n && wire_now_ms() < deadline) {
        zmq_pollitem_t it = {s, 0, (short)(ZMQ_POLLIN | (sent < n ? ZMQ_POLLOUT : 0)), 0};
        if (zmq_poll(&it, 1, 100) <= 0) continue;
        if (it.revents & ZMQ_POLLOUT)
            while (sent < n && send_ping(s, (uint64_t)sent + 1, ZMQ_DONTWAIT) == 0) sent++;
        if (it.revents & ZMQ_POLLIN) {
            wire_msg_t m;
            Rlhf__Envelope *env;
            while (wire_recv(s, 0, &m, ZMQ_DONTWAIT) > 0) {
                if (wire_decode(&m, &env) == WIRE_OK && env->body_case == RLHF__ENVELOPE__BODY_PONG)
                    got++;
                if (env) rlhf__envelope__free_unpacked(env, NULL);
                wire_msg_free(&m);
            }
        }
    }
    printf("{\"sent\":%ld,\"received\":%ld,\"ms\":%.1f}\n", sent, got, wire_now_ms() - t0);
    zmq_close(s);
    return got == n ? 0 : 1;
}

static int cmd_swarm(void *ctx, const char *ep, long n, double seconds, int hb_ms) {
    void **socks = calloc((size_t)n, sizeof *socks);
    zmq_pollitem_t *items = calloc((size_t)n, sizeof *items);
    char id[64];
    for (long i = 0; i < n; i++) {
        socks[i] = dealer(ctx, ep);
        snprintf(id, sizeof id, "sim-%ld", i);
        send_hello(socks[i], id);
        items[i].socket = socks[i];
        items[i].events = ZMQ_POLLIN;
    }
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Heartbeat hb = RLHF__HEARTBEAT__INIT;
    env.body_case = RLHF__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    double t0 = wire_now_ms(), *next = calloc((size_t)n, sizeof *next);
    for (long i = 0; i < n; i++) next[i] = t0 + (double)hb_ms * (double)i / (double)n;
    long sent = 0, got = 0;
    while (wire_now_ms() < t0 + seconds * 1e3) {
        double now = wire_now_ms();
        for (long i = 0; i < n; i++)
            if (now >= next[i]) {
                sent += wire_send(socks[i], NULL, 0, &env, NULL, NULL, 0, ZMQ_DONTWAIT) == 0;
                next[i] += hb_ms;
            }
        int rc = zmq_poll(items, (int)n, 20);
        for (long i = 0; rc > 0 && i < n; i++)
            if (items[i].revents & ZMQ_POLLIN) {
                wire_msg_t m;
                while (wire_recv(socks[i], 0, &m, ZMQ_DONTWAIT) > 0) {
                    got++;
                    wire_msg_free(&m);
                }
            }
    }
    printf("{\"sockets\":%ld,\"heartbeats_sent\":%ld,\"received\":%ld}\n", n, sent, got);
    for (long i = 0; i < n; i++) {
        int zero = 0;
        zmq_setsockopt(socks[i], ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(socks[i]);
    }
    free(socks);
    free(items);
    free(next);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: rlhf-wiretool send|burst|swarm --master EP [...]\n");
        return 2;
    }
    const char *cmd = argv[1], *ep = NULL, *what = "garbage";
    long n = 1000;
    double secs = 5, timeout = 30;
    int hb = 1000;
    static const struct option opts[] = {{"master", required_argument, 0, 'm'},
                                         {"what", required_argument, 0, 'w'},
                                         {"n", required_argument, 0, 'n'},
                                         {"seconds", required_argument, 0, 's'},
                                         {"timeout-s", required_argument, 0, 't'},
                                         {"heartbeat-ms", required_argument, 0, 'H'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            ep = optarg;
            break;
        case 'w':
            what = optarg;
            break;
        case 'n':
            n = atol(optarg);
            break;
        case 's':
            secs = atof(optarg);
            break;
        case 't':
            timeout = atof(optarg);
            break;
        case 'H':
            hb = atoi(optarg);
            break;
        default:
            return 2;
        }
    }
    if (!ep || n <= 0) {
        fprintf(stderr, "rlhf-wiretool: --master EP (and --n > 0) required\n");
        return 2;
    }
    void *ctx = zmq_ctx_new();
    int max_sockets = (int)n + 64;
    zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, max_sockets);
    int rc;
    if (!strcmp(cmd, "send"))
        rc = cmd_send(ctx, ep, what);
    else if (!strcmp(cmd, "burst"))
        rc = cmd_burst(ctx, ep, n, timeout);
    else if (!strcmp(cmd, "swarm"))
        rc = cmd_swarm(ctx, ep, n, secs, hb);
    else {
        fprintf(stderr, "rlhf-wiretool: unknown command %s\n", cmd);
        rc = 2;
    }
    zmq_ctx_term(ctx);
    return rc;
}
