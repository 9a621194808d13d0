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
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <zmq.h>

#include "base/crc32c.h"
#include "base/err.h"
#include "net/wire.h"
#include "net/wsync.h"

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
    wsync_opts_t o = {.credit = f->credit};
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
    wsync_opts_t o = {.credit = credit};
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

static int wsync_tool_main(int argc, char **argv) {
    const char *cmd = argv[1], *bind = "tcp://127.0.0.1:*", *master = NULL, *ready = NULL;
    const char *fanout = "1,2,4", *out = NULL;
    double mb = 0, seconds = 0;
    long version = 1, chunk_kb = WSYNC_CHUNK_BYTES / 1024;
    int delay = 0, credit = WSYNC_CREDIT, repeat = 5, c;
    static const struct option opts[] = {
        {"bind", 1, 0, 'b'},   {"master", 1, 0, 'm'},   {"version", 1, 0, 'v'},
        {"mb", 1, 0, 'M'},     {"chunk-kb", 1, 0, 'c'}, {"delay-ms", 1, 0, 'd'},
        {"ready", 1, 0, 'r'},  {"seconds", 1, 0, 's'},  {"fanout", 1, 0, 'f'},
        {"credit", 1, 0, 'C'}, {"repeat", 1, 0, 'R'},   {"out", 1, 0, 'o'},
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
        default:
            return 2;
        }
    }
    size_t chunk = (size_t)chunk_kb * 1024;
    wsync_malloc_tune(); /* as rlhf-worker does: the raw stream runs with it too */
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
    fprintf(stderr, "rlhf-wiretool: unknown command %s\n", cmd);
    return 2;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strncmp(argv[1], "wsync-", 6)) return wsync_tool_main(argc, argv);
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
