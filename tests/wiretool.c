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
 *
 * Weight sync (common/net/wsync.h):
 *   rlhf-wiretool wsync-serve [--bind EP] [--master EP] --version V --mb N [--chunk-kb K]
 *                             [--delay-ms D] [--ready FILE] [--seconds S]
 *   rlhf-wiretool wsync-bench --mb N [--fanout 1,2,4] [--chunk-kb K] [--credit C]
 *                             [--repeat R] [--out FILE]
 * wsync-serve: publishes N MiB of deterministic bytes as version V, announces them to the master
 *        every 500 ms, serves until SIGTERM; --ready FILE gets {"endpoint","version","bytes",
 *        "crc32c"} once serving; --delay-ms slows every request (to catch a fetch midway).
 * wsync-bench: raw ZeroMQ throughput of N MiB in chunks against a wsync fetch of the same bytes
 *        (same run, same machine), and the time for 1, 2, 4... fetchers at once; one JSON object
 *        on stdout (and in --out FILE). Used by `rlhf bench wire`.
 *
 *   rlhf-wiretool wsync-broadcast --mb N [--fanout 1,2,4] [--chunk-kb K] [--credit C]
 *                                 [--bind-host HOST] [--wrap CMD] [--out FILE]
 *   rlhf-wiretool wsync-fetcher --control EP --index I --bytes B [--relay] [--credit C]
 * wsync-broadcast: publishes N MiB (the origin, bound on HOST, default 127.0.0.1) and, for each
 *        fan-out n, starts n `wsync-fetcher` processes twice: direct (each fetches from the
 *        origin) and relay (fetcher i from fetcher i-1's relay, the first from the origin, as the
 *        master chains workers). Reports per round the wall time from the go to the last
 *        verified copy (and when each fetcher had its copy: done_s), the origin's egress
 *        (wsync_server_stats bytes_sent) and the fetchers' CPU time; one JSON object
 *        {"bytes","chunk_bytes","credit","rounds":[{"mode","n","seconds","origin_bytes",...}]}.
 *        --wrap CMD runs fetcher I as `CMD I rlhf-wiretool wsync-fetcher ...` (CMD places it,
 *        e.g. `exec ip netns exec ns$1 "${@:2}"`). Used by `rlhf bench wire --relay`.
 * wsync-fetcher: one fetcher process, driven by wsync-broadcast over its control socket: warms
 *        up as a worker is after its first version (a staging buffer faulted in, a local fetch of
 *        64 MiB), says ready (with its relay's endpoint, bound on the address it reaches the
 *        control host from), fetches on "go", reports, serves its relay until "quit".
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <zmq.h>

#include "base/crc32c.h"
#include "base/err.h"
#include "net/sec.h"
#include "net/wire.h"
#include "net/wsync.h"

/* With $RLHF_KEYS (a key set of the cluster under test), the tool talks CURVE with the key of
 * `role` from it, and its own servers admit the set's authorized_keys (what a worker is given
 * in Welcome); without, plaintext. */
static void wt_security(unsigned role) {
    const char *dir = getenv("RLHF_KEYS"), *file = getenv("RLHF_KEY");
    if (file && file[0]) { /* any key, whatever its roles: the tool plays any peer */
        sec_key_t k;
        if (sec_key_load(file, &k) < 0 || sec_setup(&k, NULL, 0) < 0) {
            fprintf(stderr, "rlhf-wiretool: %s\n", rl_errmsg());
            exit(2);
        }
        return;
    }
    if (!dir || !dir[0]) return;
    char path[4200];
    sec_peer_t *v = NULL;
    int n = 0;
    snprintf(path, sizeof path, "%s/authorized_keys", dir);
    if (sec_init(role, NULL, dir, 0) < 0 || sec_authz_load(path, &v, &n) < 0 ||
        sec_set_peers(v, n) < 0) {
        fprintf(stderr, "rlhf-wiretool: %s\n", rl_errmsg());
        exit(2);
    }
    free(v);
}

static void *dealer(void *ctx, const char *ep) {
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    if (sec_client(s, sec_master_pub()) < 0) {
        fprintf(stderr, "rlhf-wiretool: %s\n", rl_errmsg());
        exit(2);
    }
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

/* ask: sends one message a key's roles may forbid, then reports the master's answer within 2 s
 * as JSON {"what","answer","code","message"}: "forbidden" (Error FORBIDDEN), "welcome", "error"
 * (another Error), or "none" (no answer: a message the master takes silently). what:
 * hello-ROLE[:ID] (a Hello as worker ROLE - rollout, reward, learner, stage - or client, id
 * ID), announce (a WeightsAnnounce), run-submit (an empty RunSubmit), heartbeat. */
static int cmd_ask(void *ctx, const char *ep, const char *what) {
    void *s = dealer(ctx, ep);
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Hello h = RLHF__HELLO__INIT;
    Rlhf__WeightsAnnounce a = RLHF__WEIGHTS_ANNOUNCE__INIT;
    Rlhf__RunSubmit rs = RLHF__RUN_SUBMIT__INIT;
    Rlhf__Heartbeat hb = RLHF__HEARTBEAT__INIT;
    char id[64] = "wiretool-ask";
    if (!strncmp(what, "hello-", 6)) {
        const char *role = what + 6, *colon = strchr(role, ':');
        size_t rl = colon ? (size_t)(colon - role) : strlen(role);
        if (colon) snprintf(id, sizeof id, "%s", colon + 1);
        h.role = !strncmp(role, "rollout", rl)   ? RLHF__ROLE__ROLE_ROLLOUT
                 : !strncmp(role, "reward", rl)  ? RLHF__ROLE__ROLE_REWARD
                 : !strncmp(role, "learner", rl) ? RLHF__ROLE__ROLE_LEARNER
                 : !strncmp(role, "stage", rl)   ? RLHF__ROLE__ROLE_STAGE
                                                 : RLHF__ROLE__ROLE_CLIENT;
        h.worker_id = id;
        h.version = "wiretool";
        env.body_case = RLHF__ENVELOPE__BODY_HELLO;
        env.hello = &h;
    } else if (!strcmp(what, "announce")) {
        a.version = 999;
        a.endpoint = "tcp://127.0.0.1:1";
        env.body_case = RLHF__ENVELOPE__BODY_WEIGHTS_ANNOUNCE;
        env.weights_announce = &a;
    } else if (!strcmp(what, "run-submit")) {
        rs.name = "wiretool-ask";
        rs.plan_json = "{}";
        env.body_case = RLHF__ENVELOPE__BODY_RUN_SUBMIT;
        env.run_submit = &rs;
    } else if (!strcmp(what, "heartbeat")) {
        env.body_case = RLHF__ENVELOPE__BODY_HEARTBEAT;
        env.heartbeat = &hb;
    } else {
        fprintf(stderr, "rlhf-wiretool: unknown --what %s\n", what);
        return 2;
    }
    wire_send(s, NULL, 0, &env, NULL, NULL, 0, 0);
    const char *answer = "none";
    int code = 0;
    char msg[256] = "";
    double end = wire_now_ms() + 2000;
    while (!strcmp(answer, "none") && wire_now_ms() < end) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0) continue;
        wire_msg_t m;
        Rlhf__Envelope *in;
        if (wire_recv(s, 0, &m, ZMQ_DONTWAIT) <= 0) continue;
        if (wire_decode(&m, &in) == WIRE_OK) {
            if (in->body_case == RLHF__ENVELOPE__BODY_WELCOME) {
                answer = "welcome";
            } else if (in->body_case == RLHF__ENVELOPE__BODY_ERROR) {
                code = in->error->code;
                answer = code == RLHF__ERROR_CODE__ERROR_CODE_FORBIDDEN ? "forbidden" : "error";
                snprintf(msg, sizeof msg, "%s", in->error->message ? in->error->message : "");
            }
        }
        if (in) rlhf__envelope__free_unpacked(in, NULL);
        wire_msg_free(&m);
    }
    json_t *o = json_pack("{s:s, s:s, s:i, s:s}", "what", what, "answer", answer, "code", code,
                          "message", msg);
    char *txt = json_dumps(o, JSON_COMPACT);
    printf("%s\n", txt);
    free(txt);
    json_decref(o);
    zmq_close(s);
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

/* ---- weight sync: wsync-serve and wsync-bench ------------------------------------------------ */

static volatile sig_atomic_t wt_stop;
static void wt_on_signal(int sig) {
    wt_stop = sig;
}

/* Deterministic bytes of a version: a fetcher's copy can be checked against its CRC. */
static uint8_t *wt_snapshot(uint64_t version, size_t bytes) {
    uint8_t *p = malloc(bytes);
    if (!p) return NULL;
    uint64_t x = 0x9E3779B97F4A7C15ULL * (version + 1);
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
    return p;
}

static int wt_write_json(const char *path, json_t *o) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc = json_dump_file(o, tmp, JSON_COMPACT) == 0 && rename(tmp, path) == 0 ? 0 : -1;
    json_decref(o);
    return rc;
}

/* Publishes one version, announces it to the master every 500 ms (a restarted master learns it
 * again), and serves until SIGTERM / SIGINT or --seconds. */
static int wsync_serve(const char *bind, const char *master, uint64_t version, size_t bytes,
                       size_t chunk, int delay_ms, const char *ready, double seconds) {
    uint8_t *data = wt_snapshot(version, bytes);
    wsync_server_t *s = data ? wsync_server_new(NULL, bind, chunk) : NULL;
    if (!s || wsync_server_publish(s, version, data, bytes, "params", "{}") < 0 ||
        wsync_server_start(s) < 0) {
        fprintf(stderr, "rlhf-wiretool wsync-serve: %s\n", rl_errmsg());
        free(data);
        wsync_server_destroy(&s);
        return 1;
    }
    wsync_server_set_delay(s, delay_ms);
    uint32_t crc = crc32c(0, data, bytes);
    free(data);
    fprintf(stderr, "wsync-serve: version %llu, %zu bytes, crc32c %08x at %s\n",
            (unsigned long long)version, bytes, crc, wsync_server_endpoint(s));
    if (ready) {
        char hex[16];
        snprintf(hex, sizeof hex, "%08x", crc);
        wt_write_json(ready, json_pack("{s:s, s:I, s:I, s:s}", "endpoint", wsync_server_endpoint(s),
                                       "version", (json_int_t)version, "bytes", (json_int_t)bytes,
                                       "crc32c", hex));
    }
    void *ctx = zmq_ctx_new(), *d = master ? dealer(ctx, master) : NULL;
    signal(SIGTERM, wt_on_signal);
    signal(SIGINT, wt_on_signal);
    double end = seconds > 0 ? wire_now_ms() + seconds * 1e3 : 1e300;
    while (!wt_stop && wire_now_ms() < end) {
        if (d) {
            Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
            Rlhf__WeightsAnnounce a = RLHF__WEIGHTS_ANNOUNCE__INIT;
            a.version = version;
            a.endpoint = (char *)wsync_server_endpoint(s);
            env.body_case = RLHF__ENVELOPE__BODY_WEIGHTS_ANNOUNCE;
            env.weights_announce = &a;
            wire_send(d, NULL, 0, &env, NULL, NULL, 0, ZMQ_DONTWAIT);
            wire_msg_t m; /* the master's answers (none expected): drop them */
            while (wire_recv(d, 0, &m, ZMQ_DONTWAIT) > 0) wire_msg_free(&m);
        }
        struct timespec ts = {0, 500 * 1000000L};
        nanosleep(&ts, NULL);
    }
    wsync_server_stats_t st;
    wsync_server_stats(s, &st);
    fprintf(stderr, "wsync-serve: %llu requests, %llu chunks, %llu bytes sent\n",
            (unsigned long long)st.requests, (unsigned long long)st.chunks_sent,
            (unsigned long long)st.bytes_sent);
    if (d) {
        int zero = 0;
        zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(d);
    }
    zmq_ctx_term(ctx);
    wsync_server_destroy(&s);
    return 0;
}

/* The raw baseline: the same chunks, zero-copy from the same buffer, streamed ROUTER -> DEALER
 * with nothing else (no requests per chunk, no copy, no checksum), each side with a ZeroMQ
 * context of its own as separate processes would have. */
typedef struct {
    void *ctx, *sock;
    const uint8_t *data;
    size_t bytes, chunk;
} wt_raw_t;

static void *wt_raw_server(void *arg) {
    wt_raw_t *r = arg;
    for (;;) {
        uint8_t rid[256], cmd[8];
        int rl = zmq_recv(r->sock, rid, sizeof rid, 0);
        int cl = zmq_recv(r->sock, cmd, sizeof cmd, 0);
        if (rl <= 0 || cl <= 0 || cmd[0] != 'g') break;
        for (size_t off = 0; off < r->bytes; off += r->chunk) {
            size_t len = r->bytes - off < r->chunk ? r->bytes - off : r->chunk;
            uint8_t hdr[64] = {0};
            memcpy(hdr, &off, sizeof off);
            zmq_msg_t m;
            zmq_msg_init_data(&m, (void *)(r->data + off), len, NULL, NULL);
            zmq_send(r->sock, rid, (size_t)rl, ZMQ_SNDMORE);
            zmq_send(r->sock, hdr, sizeof hdr, ZMQ_SNDMORE);
            zmq_msg_send(&m, r->sock, 0);
        }
    }
    return NULL;
}

/* One stream of `bytes` from the raw server: seconds from asking to the last byte in. */
static double wt_raw_once(void *d, size_t bytes) {
    size_t got = 0;
    double t0 = wire_now_ms();
    zmq_send(d, "g", 1, 0);
    while (got < bytes) {
        zmq_msg_t h, m;
        zmq_msg_init(&h);
        zmq_msg_init(&m);
        if (zmq_msg_recv(&h, d, 0) < 0 || zmq_msg_recv(&m, d, 0) < 0) return -1;
        got += zmq_msg_size(&m);
        zmq_msg_close(&h);
        zmq_msg_close(&m);
    }
    return (wire_now_ms() - t0) / 1e3;
}

static int wt_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double wt_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, wt_cmp);
    return v[n / 2];
}

typedef struct {
    const char *ep;
    int credit;
    wsync_snapshot_t snap;
    wsync_stats_t st;
    pthread_barrier_t *go;
    double end_ms;
    int rc;
} wt_fetcher_t;

static void *wt_fetch_thread(void *arg) {
    wt_fetcher_t *f = arg;
    void *ctx = zmq_ctx_new();
    wsync_opts_t o = {.credit = f->credit, .origin_key = sec_own() ? sec_own()->pub : NULL};
    pthread_barrier_wait(f->go);
    f->rc = wsync_fetch(ctx, f->ep, 1, &o, &f->snap, &f->st);
    f->end_ms = wire_now_ms();
    zmq_ctx_term(ctx);
    return NULL;
}

/* N fetchers at once, each with its own context and a buffer already faulted in; the time from
 * the common start until the last one holds a verified copy. */
static int wt_fanout(const char *ep, int n, size_t bytes, int credit, uint32_t crc, double *secs) {
    wt_fetcher_t *f = calloc((size_t)n, sizeof *f);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)n + 1);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        f[i].ep = ep;
        f[i].credit = credit;
        f[i].go = &go;
        /* a staging buffer as a worker has it from its previous version: faulted in */
        f[i].snap.data = malloc(bytes);
        f[i].snap.cap = f[i].snap.data ? bytes : 0;
        if (f[i].snap.data) memset(f[i].snap.data, 0, bytes);
        pthread_create(&th[i], NULL, wt_fetch_thread, &f[i]);
    }
    double t0 = wire_now_ms(), end = t0;
    pthread_barrier_wait(&go);
    t0 = wire_now_ms();
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        if (f[i].rc < 0 || f[i].snap.crc != crc) rc = -1;
        if (f[i].end_ms > end) end = f[i].end_ms;
        wsync_snapshot_free(&f[i].snap);
    }
    pthread_barrier_destroy(&go);
    free(f);
    free(th);
    *secs = (end - t0) / 1e3;
    return rc;
}

/* CPU seconds (user + system) of this process so far. */
static double wt_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static json_t *wt_figures(const double *secs, const double *cpu, int n, size_t bytes) {
    double t[50], c[50];
    memcpy(t, secs, (size_t)n * sizeof *t);
    memcpy(c, cpu, (size_t)n * sizeof *c);
    double med = wt_median(t, n), best = t[0]; /* sorted by wt_median */
    return json_pack("{s:f, s:f, s:f, s:f, s:f}", "seconds", med, "gbps", bytes / med / 1e9,
                     "best_seconds", best, "best_gbps", bytes / best / 1e9, "cpu_s",
                     wt_median(c, n));
}

/* The raw stream and the wsync fetch alternate, R times each, in the same run: a machine busy
 * with other work slows both alike. Medians and bests are reported, and the ratio of each. */
static int wsync_bench(double mb, const char *fanout, size_t chunk, int credit, int repeat,
                       const char *out) {
    size_t bytes = (size_t)(mb * 1048576.0) & ~(size_t)3;
    if (bytes < 4 || repeat < 1 || repeat > 50) {
        fprintf(stderr, "rlhf-wiretool wsync-bench: --mb > 0 and --repeat 1..50 required\n");
        return 2;
    }
    uint8_t *data = wt_snapshot(1, bytes);
    if (!data) {
        fprintf(stderr, "rlhf-wiretool wsync-bench: out of memory\n");
        return 1;
    }
    /* the checksum speed on this machine, for the record */
    double t0 = wire_now_ms();
    uint32_t crc = crc32c(0, data, bytes);
    double crc_gbps = bytes / ((wire_now_ms() - t0) / 1e3) / 1e9;

    /* the raw stream's server, and the wsync server with the same bytes published */
    wt_raw_t raw = {.ctx = zmq_ctx_new(), .data = data, .bytes = bytes, .chunk = chunk};
    raw.sock = zmq_socket(raw.ctx, ZMQ_ROUTER);
    int zero = 0, one = 1, rc = 0, rcvtimeo = 30000;
    zmq_setsockopt(raw.sock, ZMQ_LINGER, &zero, sizeof zero);
    /* a ROUTER drops what exceeds the high-water mark unless it is "mandatory": then it blocks,
     * and the stream runs at the pace of the receiver */
    zmq_setsockopt(raw.sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_bind(raw.sock, "tcp://127.0.0.1:*");
    char raw_ep[256];
    size_t sz = sizeof raw_ep;
    zmq_getsockopt(raw.sock, ZMQ_LAST_ENDPOINT, raw_ep, &sz);
    pthread_t raw_th;
    pthread_create(&raw_th, NULL, wt_raw_server, &raw);
    wsync_server_t *s = wsync_server_new(NULL, "tcp://127.0.0.1:*", chunk);
    if (!s || wsync_server_publish(s, 1, data, bytes, "params", "{}") < 0 ||
        wsync_server_start(s) < 0) {
        fprintf(stderr, "rlhf-wiretool wsync-bench: %s\n", rl_errmsg());
        rc = -1;
    }
    void *cctx = zmq_ctx_new(), *d = zmq_socket(cctx, ZMQ_DEALER);
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(d, ZMQ_RCVTIMEO, &rcvtimeo, sizeof rcvtimeo); /* never hang the benchmark */
    zmq_connect(d, raw_ep);
    double raw_s[50], raw_cpu[50], sync_s[50], sync_cpu[50], cold_s = 0;
    wsync_snapshot_t snap = {0};
    wsync_stats_t st = {0};
    /* with $RLHF_KEYS: CURVE, the server being this process (its own key is admitted) */
    wsync_opts_t o = {.credit = credit, .origin_key = sec_own() ? sec_own()->pub : NULL};
    uint32_t crc_errors = 0, max_out = 0;
    /* warm-up of the raw path (connection, allocator); the first fetch is the cold one: a
     * fresh staging buffer whose pages are faulted in as the chunks land */
    if (rc == 0 && wt_raw_once(d, bytes) < 0) rc = -1;
    if (rc == 0 && wsync_fetch(cctx, wsync_server_endpoint(s), 1, &o, &snap, &st) < 0) rc = -1;
    cold_s = st.seconds;
    for (int i = 0; i < repeat && rc == 0; i++) {
        double c0 = wt_cpu_s();
        if ((raw_s[i] = wt_raw_once(d, bytes)) < 0) rc = -1;
        double c1 = wt_cpu_s();
        if (wsync_fetch(cctx, wsync_server_endpoint(s), 1, &o, &snap, &st) < 0 || snap.crc != crc)
            rc = -1;
        double c2 = wt_cpu_s();
        raw_cpu[i] = c1 - c0;
        sync_cpu[i] = c2 - c1;
        sync_s[i] = st.seconds;
        crc_errors += st.crc_errors;
        if (st.max_outstanding > max_out) max_out = st.max_outstanding;
    }
    if (rc < 0) fprintf(stderr, "rlhf-wiretool wsync-bench: fetch: %s\n", rl_errmsg());
    wsync_snapshot_free(&snap);
    zmq_send(d, "q", 1, 0);
    pthread_join(raw_th, NULL);
    zmq_close(d);
    zmq_close(raw.sock);
    zmq_ctx_term(raw.ctx);
    free(data);

    /* fan-out */
    json_t *fo = json_array();
    char list[256];
    snprintf(list, sizeof list, "%s", fanout ? fanout : "1,2,4");
    for (char *tok = strtok(list, ","); tok && rc == 0; tok = strtok(NULL, ",")) {
        int n = atoi(tok);
        double secs = 0;
        if (n < 1 || n > 64) continue;
        if (wt_fanout(wsync_server_endpoint(s), n, bytes, credit, crc, &secs) < 0) {
            fprintf(stderr, "rlhf-wiretool wsync-bench: fan-out %d: a fetch failed\n", n);
            rc = -1;
        }
        json_array_append_new(fo, json_pack("{s:i, s:f, s:f}", "n", n, "seconds", secs,
                                            "total_gbps", secs > 0 ? n * bytes / secs / 1e9 : 0.0));
    }
    wsync_server_destroy(&s);
    zmq_ctx_term(cctx);
    if (rc < 0) {
        json_decref(fo);
        return 1;
    }
    json_t *jr = wt_figures(raw_s, raw_cpu, repeat, bytes);
    json_t *js = wt_figures(sync_s, sync_cpu, repeat, bytes);
    double ratio = json_real_value(json_object_get(jr, "seconds")) /
                   json_real_value(json_object_get(js, "seconds"));
    double ratio_best = json_real_value(json_object_get(jr, "best_seconds")) /
                        json_real_value(json_object_get(js, "best_seconds"));
    json_object_set_new(js, "cold_seconds", json_real(cold_s));
    json_object_set_new(js, "cold_gbps", json_real(bytes / cold_s / 1e9));
    json_object_set_new(js, "crc_errors", json_integer(crc_errors));
    json_object_set_new(js, "max_outstanding", json_integer(max_out));
    json_t *res = json_pack("{s:I, s:I, s:i, s:i, s:f, s:o, s:o, s:f, s:f, s:o}", "bytes",
                            (json_int_t)bytes, "chunk_bytes", (json_int_t)chunk, "credit", credit,
                            "repeat", repeat, "crc32c_gbps", crc_gbps, "raw_zmq", jr, "wsync", js,
                            "ratio", ratio, "ratio_best", ratio_best, "fanout", fo);
    char *text = json_dumps(res, JSON_COMPACT);
    printf("%s\n", text);
    free(text);
    if (out && wt_write_json(out, json_incref(res)) < 0) rc = -1;
    json_decref(res);
    return rc < 0 ? 1 : 0;
}

/* ---- wsync-broadcast / wsync-fetcher: one origin, N fetcher processes, direct or chained ---- */

#define WT_MAX_FETCHERS 64

/* tcp://HOST:PORT with an IPv6 literal in brackets. */
static void wt_endpoint(char *out, size_t cap, const char *host, const char *port) {
    int v6 = strchr(host, ':') != NULL;
    snprintf(out, cap, "tcp://%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "", port);
}

/* A socket of `type` connected (or bound) to ep, IPv6 on for an IPv6 literal, linger 0. */
static void *wt_socket(void *ctx, int type, const char *ep, int bind) {
    void *s = zmq_socket(ctx, type);
    int zero = 0, v6 = strchr(ep, '[') != NULL;
    if (!s) return NULL;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_IPV6, &v6, sizeof v6);
    if ((bind ? zmq_bind(s, ep) : zmq_connect(s, ep)) < 0) {
        fprintf(stderr, "rlhf-wiretool: %s %s: %s\n", bind ? "bind" : "connect", ep,
                zmq_strerror(errno));
        zmq_close(s);
        return NULL;
    }
    return s;
}

/* The address this host reaches the host of `endpoint` from (a UDP socket connected there
 * picks the route and sends nothing): where a peer on that network reaches us. */
static int wt_local_addr(const char *endpoint, char *out, size_t cap) {
    char host[256];
    const char *p = strstr(endpoint, "://"), *end;
    p = p ? p + 3 : endpoint;
    if (*p == '[')
        end = strchr(++p, ']');
    else
        end = strrchr(p, ':');
    if (!end || (size_t)(end - p) >= sizeof host) return -1;
    memcpy(host, p, (size_t)(end - p));
    host[end - p] = 0;
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM, .ai_flags = AI_NUMERICHOST}, *ai = NULL;
    if (getaddrinfo(host, "9", &hints, &ai) != 0) return -1;
    int fd = socket(ai->ai_family, SOCK_DGRAM, 0), rc = -1;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
        getnameinfo((struct sockaddr *)&ss, sl, out, (socklen_t)cap, NULL, 0, NI_NUMERICHOST) == 0)
        rc = 0;
    if (fd >= 0) close(fd);
    freeaddrinfo(ai);
    return rc;
}

/* Sends one JSON object (consumed) as a message, after a routing id when rid is not NULL. */
static int wt_send_json(void *sock, const void *rid, size_t rid_len, json_t *o) {
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) return -1;
    int rc = (!rid || zmq_send(sock, rid, rid_len, ZMQ_SNDMORE) >= 0) &&
                     zmq_send(sock, text, strlen(text), 0) >= 0
                 ? 0
                 : -1;
    free(text);
    return rc;
}

/* Receives one JSON object (after a routing id, copied into rid, when rid is not NULL) within
 * ms; NULL on silence or garbage. */
static json_t *wt_recv_json(void *sock, uint8_t *rid, size_t *rid_len, int ms) {
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) <= 0) return NULL;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (rid) {
        if (zmq_msg_recv(&m, sock, 0) < 0) return NULL;
        *rid_len = zmq_msg_size(&m) < 256 ? zmq_msg_size(&m) : 255;
        memcpy(rid, zmq_msg_data(&m), *rid_len);
    }
    json_t *o = NULL;
    if (zmq_msg_recv(&m, sock, 0) >= 0) o = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, NULL);
    zmq_msg_close(&m);
    return o;
}

/* Warms the receive path of ctx up as a worker's is after its first version: a fetch of 64 MiB
 * from a server on this host's loopback. The first fetch of a process pays the page faults of
 * libzmq's receive buffers (on this machine about 1 s for the first 500 MB instead of 0.15 s);
 * later ones reuse them. */
static void wt_warm_up(void *ctx, int credit) {
    size_t bytes = 64u << 20;
    uint8_t *data = calloc(1, bytes);
    wsync_server_t *s = data ? wsync_server_new(NULL, "tcp://127.0.0.1:*", 0) : NULL;
    wsync_snapshot_t snap = {0};
    wsync_opts_t o = {.credit = credit};
    if (s && wsync_server_publish(s, 1, data, bytes, NULL, NULL) == 0 && wsync_server_start(s) == 0)
        wsync_fetch(ctx, wsync_server_endpoint(s), 1, &o, &snap, NULL);
    wsync_snapshot_free(&snap);
    wsync_server_destroy(&s);
    free(data);
}

static int wsync_fetcher(const char *control, int index, size_t bytes, int relay, int credit) {
    void *ctx = zmq_ctx_new(), *c = wt_socket(ctx, ZMQ_DEALER, control, 0);
    wsync_server_t *rs = NULL;
    int rc = c ? 0 : -1;
    if (rc == 0 && relay) { /* bound on the address the control host is reached from */
        char addr[128], ep[200];
        if (wt_local_addr(control, addr, sizeof addr) < 0) {
            fprintf(stderr, "wsync-fetcher %d: no route to %s\n", index, control);
            rc = -1;
        } else {
            wt_endpoint(ep, sizeof ep, addr, "*");
            if (!(rs = wsync_server_new(ctx, ep, 0)) || wsync_server_start(rs) < 0) {
                fprintf(stderr, "wsync-fetcher %d: %s\n", index, rl_errmsg());
                rc = -1;
            }
        }
    }
    /* a staging buffer as a worker has it from its previous version: faulted in; and a warm
     * receive path */
    wsync_snapshot_t snap = {.data = malloc(bytes), .cap = bytes};
    if (!snap.data) rc = -1;
    if (rc == 0) {
        memset(snap.data, 0, bytes);
        wt_warm_up(ctx, credit);
        rc = wt_send_json(
            c, NULL, 0,
            json_pack("{s:i, s:s}", "index", index, "relay", rs ? wsync_server_endpoint(rs) : ""));
    }
    json_t *go = rc == 0 ? wt_recv_json(c, NULL, NULL, 600000) : NULL;
    const char *origin = json_string_value(json_object_get(go, "origin"));
    const char *up = json_string_value(json_object_get(go, "upstream"));
    if (rc == 0 && origin) {
        wsync_opts_t o = {.credit = credit, .upstream = up, .relay = rs};
        wsync_stats_t st;
        int frc = wsync_fetch(ctx, origin, 1, &o, &snap, &st);
        char crc[16];
        snprintf(crc, sizeof crc, "%08x", frc == 0 ? snap.crc : 0);
        wt_send_json(c, NULL, 0,
                     json_pack("{s:i, s:i, s:s, s:s, s:f, s:I, s:i, s:s}", "index", index, "rc",
                               frc, "error", frc < 0 ? rl_errmsg() : "", "crc32c", crc, "seconds",
                               frc == 0 ? st.seconds : 0.0, "upstream_bytes",
                               (json_int_t)st.upstream_bytes, "fallbacks", (int)st.fallbacks,
                               "fallback_why", st.fallback_why));
        json_decref(wt_recv_json(c, NULL, NULL, 600000)); /* quit: serve the relay until then */
    } else {
        rc = -1;
    }
    json_decref(go);
    wsync_snapshot_free(&snap);
    wsync_server_destroy(&rs);
    if (c) zmq_close(c);
    zmq_ctx_term(ctx);
    return rc < 0 ? 1 : 0;
}

typedef struct {
    pid_t pid[WT_MAX_FETCHERS];
    uint8_t rid[WT_MAX_FETCHERS][256];
    size_t rid_len[WT_MAX_FETCHERS];
    char relay[WT_MAX_FETCHERS][256];
    int n;
} wt_fleet_t;

/* Starts fetcher i: [wrap i] tool wsync-fetcher ..., dying with us, its stdout on our stderr
 * (our stdout is the JSON). */
static pid_t wt_spawn_fetcher(const char *wrap, const char *tool, const char *control, int i,
                              size_t bytes, int relay, int credit) {
    char idx[16], nb[32], cr[16];
    snprintf(idx, sizeof idx, "%d", i);
    snprintf(nb, sizeof nb, "%zu", bytes);
    snprintf(cr, sizeof cr, "%d", credit);
    char *args[16];
    int n = 0;
    if (wrap && wrap[0]) args[n++] = (char *)wrap, args[n++] = idx;
    char *rest[] = {(char *)tool, "wsync-fetcher", "--control", (char *)control, "--index",
                    idx,          "--bytes",       nb,          "--credit",      cr};
    for (size_t k = 0; k < sizeof rest / sizeof rest[0]; k++) args[n++] = rest[k];
    if (relay) args[n++] = "--relay";
    args[n] = NULL;
    pid_t parent = getpid(), p = fork();
    if (p == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        dup2(2, 1);
        execvp(args[0], args);
        _exit(127);
    }
    return p;
}

/* Stops the fleet: quit to each (they exit), then SIGKILL whatever is left after 5 s. */
static void wt_fleet_stop(wt_fleet_t *f, void *ctl) {
    for (int i = 0; i < f->n; i++)
        if (f->rid_len[i])
            wt_send_json(ctl, f->rid[i], f->rid_len[i], json_pack("{s:b}", "quit", 1));
    double end = wire_now_ms() + 5000;
    for (int i = 0; i < f->n; i++) {
        while (f->pid[i] > 0 && waitpid(f->pid[i], NULL, WNOHANG) == 0 && wire_now_ms() < end) {
            struct timespec ts = {0, 10 * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (f->pid[i] > 0 && waitpid(f->pid[i], NULL, WNOHANG) == 0) {
            kill(f->pid[i], SIGKILL);
            waitpid(f->pid[i], NULL, 0);
        }
        f->pid[i] = 0;
    }
    f->n = 0;
}

/* A fetcher of the fleet that exited (before it should have): its index, or -1. */
static int wt_fleet_died(wt_fleet_t *f) {
    for (int i = 0; i < f->n; i++)
        if (f->pid[i] > 0 && waitpid(f->pid[i], NULL, WNOHANG) == f->pid[i]) {
            f->pid[i] = 0;
            return i;
        }
    return -1;
}

/* CPU seconds (user + system) of the children reaped so far. */
static double wt_children_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* One round: n fetcher processes, direct or chained, from the go to the last verified copy.
 * Returns the round's JSON, or NULL (the reason on stderr). */
static json_t *wt_round(void *ctl, const char *ctl_ep, wsync_server_t *origin, const char *wrap,
                        const char *tool, int n, int relay, size_t bytes, int credit,
                        uint32_t crc) {
    wt_fleet_t f = {.n = n};
    json_t *res = NULL, *done_s = json_array();
    double cpu0 = wt_children_cpu_s();
    int ready = 0, done = 0, fallbacks = 0;
    double fetch_max = 0, deadline = wire_now_ms() + 60e3;
    for (int i = 0; i < n; i++)
        if ((f.pid[i] = wt_spawn_fetcher(wrap, tool, ctl_ep, i, bytes, relay, credit)) < 0) {
            fprintf(stderr, "wsync-broadcast: fork: %s\n", strerror(errno));
            goto out;
        }
    while (ready < n) { /* each says ready, with its relay */
        uint8_t rid[256];
        size_t rl = 0;
        json_t *o = wt_recv_json(ctl, rid, &rl, 100);
        int i = (int)json_integer_value(json_object_get(o, "index"));
        if (o && i >= 0 && i < n && !f.rid_len[i]) {
            memcpy(f.rid[i], rid, rl);
            f.rid_len[i] = rl;
            snprintf(f.relay[i], sizeof f.relay[i], "%s",
                     json_string_value(json_object_get(o, "relay")));
            ready++;
        }
        json_decref(o);
        int dead = wt_fleet_died(&f);
        if (dead >= 0 || wire_now_ms() > deadline || wt_stop) {
            fprintf(stderr, "wsync-broadcast: fetcher %d %s\n", dead,
                    dead >= 0 ? "exited at start" : "not ready in 60 s");
            goto out;
        }
    }
    wsync_server_stats_t s0, s1;
    wsync_server_stats(origin, &s0);
    double t0 = wire_now_ms(), end = t0;
    deadline = t0 + 60e3 + (double)n * bytes / 10e6 * 1e3; /* 10 MB/s at the least */
    for (int i = 0; i < n; i++)
        wt_send_json(ctl, f.rid[i], f.rid_len[i],
                     json_pack("{s:s, s:s}", "origin", wsync_server_endpoint(origin), "upstream",
                               relay && i > 0 ? f.relay[i - 1] : ""));
    while (done < n) {
        uint8_t rid[256];
        size_t rl = 0;
        json_t *d = wt_recv_json(ctl, rid, &rl, 100);
        if (d) {
            const char *c = json_string_value(json_object_get(d, "crc32c"));
            char want[16];
            snprintf(want, sizeof want, "%08x", crc);
            if (json_integer_value(json_object_get(d, "rc")) != 0 || !c || strcmp(c, want)) {
                fprintf(stderr, "wsync-broadcast: fetcher %lld: %s (crc32c %s, expected %s)\n",
                        json_integer_value(json_object_get(d, "index")),
                        json_string_value(json_object_get(d, "error")), c ? c : "-", want);
                json_decref(d);
                goto out;
            }
            end = wire_now_ms();
            json_array_append_new(done_s, json_real((end - t0) / 1e3));
            double s = json_number_value(json_object_get(d, "seconds"));
            fetch_max = s > fetch_max ? s : fetch_max;
            fallbacks += (int)json_integer_value(json_object_get(d, "fallbacks"));
            done++;
            json_decref(d);
        }
        int dead = wt_fleet_died(&f);
        if (dead >= 0 || wire_now_ms() > deadline || wt_stop) {
            fprintf(stderr, "wsync-broadcast: fetcher %d %s\n", dead,
                    dead >= 0 ? "died" : "round past its deadline");
            goto out;
        }
    }
    wsync_server_stats(origin, &s1);
    double secs = (end - t0) / 1e3;
    uint64_t egress = s1.bytes_sent - s0.bytes_sent;
    res = json_pack("{s:s, s:i, s:f, s:I, s:f, s:f, s:f, s:i, s:O}", "mode",
                    relay ? "relay" : "direct", "n", n, "seconds", secs, "origin_bytes",
                    (json_int_t)egress, "origin_copies", (double)egress / bytes, "total_gbps",
                    n * (double)bytes / secs / 1e9, "fetch_max_s", fetch_max, "fallbacks",
                    fallbacks, "done_s", done_s);
out:
    json_decref(done_s);
    wt_fleet_stop(&f, ctl);
    /* the fetchers' CPU time, start-up and buffer included (they are reaped by now) */
    if (res) json_object_set_new(res, "fetchers_cpu_s", json_real(wt_children_cpu_s() - cpu0));
    return res;
}

static int wsync_broadcast(double mb, const char *fanout, size_t chunk, int credit,
                           const char *host, const char *wrap, const char *out) {
    size_t bytes = (size_t)(mb * 1048576.0) & ~(size_t)3;
    char tool[4096], ep[300], ctl_ep[300];
    ssize_t tl = readlink("/proc/self/exe", tool, sizeof tool - 1);
    if (bytes < 4 || tl <= 0) {
        fprintf(stderr, "rlhf-wiretool wsync-broadcast: --mb > 0 required\n");
        return 2;
    }
    tool[tl] = 0;
    uint8_t *data = wt_snapshot(1, bytes);
    wt_endpoint(ep, sizeof ep, host, "*");
    wsync_server_t *origin = data ? wsync_server_new(NULL, ep, chunk) : NULL;
    if (!origin || wsync_server_publish(origin, 1, data, bytes, "params", "{}") < 0 ||
        wsync_server_start(origin) < 0) {
        fprintf(stderr, "rlhf-wiretool wsync-broadcast: origin: %s\n", rl_errmsg());
        free(data);
        wsync_server_destroy(&origin);
        return 1;
    }
    uint32_t crc = crc32c(0, data, bytes);
    free(data);
    void *ctx = zmq_ctx_new(), *ctl = wt_socket(ctx, ZMQ_ROUTER, ep, 1);
    size_t sz = sizeof ctl_ep;
    if (ctl) zmq_getsockopt(ctl, ZMQ_LAST_ENDPOINT, ctl_ep, &sz);
    signal(SIGTERM, wt_on_signal);
    signal(SIGINT, wt_on_signal);
    json_t *rounds = json_array();
    int rc = ctl ? 0 : 1;
    char list[256];
    snprintf(list, sizeof list, "%s", fanout ? fanout : "1,2,4");
    for (char *tok = strtok(list, ","); tok && rc == 0; tok = strtok(NULL, ",")) {
        int n = atoi(tok);
        if (n < 1 || n > WT_MAX_FETCHERS) continue;
        for (int relay = 0; relay < 2 && rc == 0; relay++) {
            json_t *r = wt_round(ctl, ctl_ep, origin, wrap, tool, n, relay, bytes, credit, crc);
            if (!r) {
                fprintf(stderr, "rlhf-wiretool wsync-broadcast: %s round of %d failed\n",
                        relay ? "relay" : "direct", n);
                rc = 1;
                break;
            }
            char *line = json_dumps(r, JSON_COMPACT);
            fprintf(stderr, "wsync-broadcast: %s\n", line ? line : "");
            free(line);
            json_array_append_new(rounds, r);
        }
    }
    if (ctl) zmq_close(ctl);
    zmq_ctx_term(ctx);
    wsync_server_destroy(&origin);
    if (rc != 0) {
        json_decref(rounds);
        return rc;
    }
    json_t *res = json_pack("{s:I, s:I, s:i, s:s, s:o}", "bytes", (json_int_t)bytes, "chunk_bytes",
                            (json_int_t)chunk, "credit", credit, "origin", ep, "rounds", rounds);
    char *text = json_dumps(res, JSON_COMPACT);
    printf("%s\n", text);
    free(text);
    if (out && wt_write_json(out, json_incref(res)) < 0) rc = 1;
    json_decref(res);
    return rc;
}

static int wsync_tool_main(int argc, char **argv) {
    const char *cmd = argv[1], *bind = "tcp://127.0.0.1:*", *master = NULL, *ready = NULL;
    const char *fanout = "1,2,4", *out = NULL, *host = "127.0.0.1", *wrap = NULL, *control = NULL;
    double mb = 0, seconds = 0;
    long version = 1, chunk_kb = WSYNC_CHUNK_BYTES / 1024, fbytes = 0;
    int delay = 0, credit = WSYNC_CREDIT, repeat = 5, index = 0, relay = 0, c;
    static const struct option opts[] = {{"bind", 1, 0, 'b'},
                                         {"master", 1, 0, 'm'},
                                         {"version", 1, 0, 'v'},
                                         {"mb", 1, 0, 'M'},
                                         {"chunk-kb", 1, 0, 'c'},
                                         {"delay-ms", 1, 0, 'd'},
                                         {"ready", 1, 0, 'r'},
                                         {"seconds", 1, 0, 's'},
                                         {"fanout", 1, 0, 'f'},
                                         {"credit", 1, 0, 'C'},
                                         {"repeat", 1, 0, 'R'},
                                         {"out", 1, 0, 'o'},
                                         {"bind-host", 1, 0, 'H'},
                                         {"wrap", 1, 0, 'w'},
                                         {"control", 1, 0, 'k'},
                                         {"index", 1, 0, 'i'},
                                         {"bytes", 1, 0, 'B'},
                                         {"relay", 0, 0, 'L'},
                                         {0, 0, 0, 0}};
    optind = 2;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'b':
            bind = optarg;
            break;
        case 'm':
            master = optarg;
            break;
        case 'v':
            version = atol(optarg);
            break;
        case 'M':
            mb = atof(optarg);
            break;
        case 'c':
            chunk_kb = atol(optarg);
            break;
        case 'd':
            delay = atoi(optarg);
            break;
        case 'r':
            ready = optarg;
            break;
        case 's':
            seconds = atof(optarg);
            break;
        case 'f':
            fanout = optarg;
            break;
        case 'C':
            credit = atoi(optarg);
            break;
        case 'R':
            repeat = atoi(optarg);
            break;
        case 'o':
            out = optarg;
            break;
        case 'H':
            host = optarg;
            break;
        case 'w':
            wrap = optarg;
            break;
        case 'k':
            control = optarg;
            break;
        case 'i':
            index = atoi(optarg);
            break;
        case 'B':
            fbytes = atol(optarg);
            break;
        case 'L':
            relay = 1;
            break;
        default:
            return 2;
        }
    }
    wsync_malloc_tune(); /* as rlhf-worker does */
    if (!strcmp(cmd, "wsync-fetcher")) {
        if (!control || fbytes <= 0 || credit < 1 || credit > WSYNC_MAX_CREDIT) {
            fprintf(stderr, "rlhf-wiretool wsync-fetcher: --control EP and --bytes B required\n");
            return 2;
        }
        return wsync_fetcher(control, index, (size_t)fbytes, relay, credit);
    }
    size_t chunk = (size_t)chunk_kb * 1024;
    if (version < 1 || mb <= 0 || chunk_kb < 1 || chunk > WSYNC_MAX_CHUNK_BYTES || credit < 1 ||
        credit > WSYNC_MAX_CREDIT) {
        fprintf(stderr,
                "rlhf-wiretool %s: --version >= 1, --mb > 0, --chunk-kb 1..%u and "
                "--credit 1..%d required\n",
                cmd, WSYNC_MAX_CHUNK_BYTES / 1024, WSYNC_MAX_CREDIT);
        return 2;
    }
    if (!strcmp(cmd, "wsync-serve"))
        return wsync_serve(bind, master, (uint64_t)version, (size_t)(mb * 1048576.0) & ~(size_t)3,
                           chunk, delay, ready, seconds);
    if (!strcmp(cmd, "wsync-bench")) return wsync_bench(mb, fanout, chunk, credit, repeat, out);
    if (!strcmp(cmd, "wsync-broadcast"))
        return wsync_broadcast(mb, fanout, chunk, credit, host, wrap, out);
    fprintf(stderr, "rlhf-wiretool: unknown command %s\n", cmd);
    return 2;
}

int main(int argc, char **argv) {
    /* wsync-serve is a learner; wsync-bench measures CURVE with $RLHF_KEYS; the broadcast's
     * origin and fetchers are plaintext */
    if (argc >= 2 && (!strcmp(argv[1], "wsync-serve") || !strcmp(argv[1], "wsync-bench")))
        wt_security(SEC_ROLE_LEARNER);
    if (argc >= 2 && !strncmp(argv[1], "wsync-", 6)) return wsync_tool_main(argc, argv);
    wt_security(SEC_ROLE_CLIENT);
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
    else if (!strcmp(cmd, "ask"))
        rc = cmd_ask(ctx, ep, what);
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
