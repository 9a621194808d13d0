/*
 * worker_main.c - rlhf-worker: one role, connected to one master.
 *
 *   rlhf-worker --role rollout|reward|learner|stage --master tcp://HOST:PORT [--id NAME]
 *
 * The main thread owns the DEALER socket: it says Hello, heartbeats, receives jobs and sends
 * results. A job runs on its own thread (the worker's heartbeats go on meanwhile) and signals
 * its end through an eventfd the main thread polls next to the socket.
 *
 * The master is presumed gone when it has been silent for heartbeat_ms * liveness: the worker
 * then opens a fresh connection and says Hello again, with exponential backoff (100 ms .. 2 s)
 * while it hears nothing. A master that restarted on the same address answers our heartbeats
 * with NOT_REGISTERED, or heartbeats with a new master id: both also make us say Hello again.
 *
 * SIGTERM / SIGINT (or a Shutdown message): the running job is cancelled and handed back (or
 * its result sent, if it finished first), then Goodbye, and exit 0.
 *
 * Weights relay (wsync.h): a rollout or reward worker serves the weights versions it fetches,
 * while it fetches them, at tcp://BIND_HOST:PORT (--bind-host, default 127.0.0.1; the port is the
 * kernel's choice), named in its Hello as tcp://ADVERTISE:PORT (--advertise, default the bind
 * host; required when that is 0.0.0.0 or ::). The master then gives it, with each announced
 * version, the relay of the worker before it in its chain to fetch from, the learner's server
 * staying the fallback. --no-relay: no relay; every version straight from the learner.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "base/err.h"
#include "nn/ops.h"
#include "net/addr.h"
#include "net/sec.h"
#include "net/blob.h"
#include "net/wire.h"
#include "worker.h"
#include "net/wsync.h"

#define WORKER_VERSION "0.1"

typedef struct {
    /* set by the main thread before the job thread starts */
    worker_job_t job;
    worker_handler_fn fn;
    uint64_t lease_id;
    uint8_t *payload;
    size_t payload_len;
    uint64_t policy_version;   /* the weights the job needs: fetched first if we lack them */
    int kind;                  /* Rlhf__JobKind */
    char blob_ep[ADDR_EP_LEN]; /* the master's artifact server when the job was assigned */
    /* set by the job thread before it signals the eventfd */
    int rc;
    int verdict, root, sys_errno; /* how a failure classifies (worker_reject_classify) */
    char reason[1024];
    uint8_t *out;
    size_t out_len;
    double elapsed_ms;
    pthread_t th;
    int busy;
} job_slot_t;

typedef struct {
    int role;
    char id[64];
    const char *master;
    /* --bind-host, --advertise: where the worker's own listening sockets (the learner's weights
     * server) bind, and the host its peers dial (net/addr.h); loopback by default */
    const char *bind_host, *advertise;
    /* --cache-dir: the verified copies of the models and datasets jobs name by content
     * (worker_fetch.c); --ckpt-root: where a learner keeps its checkpoints */
    blob_store_t *cache;
    const char *cache_dir, *ckpt_root;
    char cache_path[4096]; /* the cache's directory (the default's when --cache-dir is not given) */
    char blob_ep[ADDR_EP_LEN]; /* Welcome.blob_endpoint */
    void *zctx, *sock;
    int efd;
    char master_id[40];
    int registered;
    double last_heard_ms, last_hb_ms, last_hello_ms;
    int hb_ms, liveness;
    int threads; /* compute threads of each job (OpenBLAS + OpenMP) */
    int backoff_ms;
    double next_reconnect_ms;
    atomic_int cancel;
    atomic_int fetch_stop; /* the job thread's weights fetch stops: cancel, or a new endpoint */
    job_slot_t slot;
    /* weights (wsync.h): the live snapshot jobs run with, swapped only between jobs; the newest
     * version the master announced and where it is served. A sync thread fetches it as soon as
     * it is announced; a job needing a version we lack fetches it itself before it runs. */
    wsync_replica_t weights;
    pthread_mutex_t weights_mu; /* weights_ep and weights_announced (written by the main thread) */
    char weights_ep[256];
    uint64_t weights_announced;
    pthread_t sync_th;
    int sync_started;
    atomic_int syncing, sync_cancel;
    atomic_int sync_stop; /* the sync thread's fetch stops: sync_cancel, or a new endpoint */
    double next_sync_ms;
    /* the weights relay: serves what this worker fetches to the next worker of the master's
     * chain (NULL: none - --no-relay, or a role that fetches no weights between jobs) */
    wsync_server_t *relay;
    char relay_ep[ADDR_EP_LEN]; /* advertised in Hello */
    char relay_from[256]; /* the upstream given with the announcement (weights_mu; "": none) */
    /* the CURVE public keys of the weights server and of relay_from (weights_mu; net/sec.h) */
    char weights_key[SEC_Z85_LEN + 1], relay_key[SEC_Z85_LEN + 1];
    /* --key, --keys, --insecure (net/sec.h's sec_init); key_path: the key file in use */
    const char *key_file, *keys_dir;
    int insecure;
    char key_path[4096];
    int no_relay;
    worker_state_t st; /* the role's state between jobs, handed to its handlers */
    char log_id[80];
} worker_t;

/* The one piece of process-wide state: a signal handler can reach nothing else. */
static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) {
    stop_signal = sig;
}

static void wlog(worker_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void wlog(worker_t *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    flockfile(stderr); /* the job and sync threads log too: one line at a time */
    wire_logv(w->log_id, fmt, ap);
    funlockfile(stderr);
    va_end(ap);
}

static int wsend(worker_t *w, Rlhf__Envelope *env) {
    /* blocking would stall heartbeats: a DEALER with no connection queues up to its HWM */
    return wire_send(w->sock, NULL, 0, env, NULL, NULL, 0, ZMQ_DONTWAIT);
}

static void send_hello(worker_t *w) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Hello h = RLHF__HELLO__INIT;
    int kinds[32];
    int n = worker_capabilities(w->role, kinds);
    Rlhf__JobKind caps[32];
    for (int i = 0; i < n; i++) caps[i] = (Rlhf__JobKind)kinds[i];
    h.role = (Rlhf__Role)w->role;
    h.worker_id = w->id;
    h.version = WORKER_VERSION;
    h.capabilities = caps;
    h.n_capabilities = (size_t)n;
    h.max_jobs = 1;
    h.pid = (int32_t)getpid();
    if (w->slot.busy) { /* still running a job: the master must not hand us another */
        h.job_id = w->slot.job.job_id;
        h.job_attempt = w->slot.job.attempt;
    }
    if (w->relay) h.relay_endpoint = w->relay_ep;
    env.body_case = RLHF__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    wsend(w, &env);
    w->last_hello_ms = wire_now_ms();
}

static void send_heartbeat(worker_t *w) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Heartbeat hb = RLHF__HEARTBEAT__INIT;
    if (w->slot.busy) {
        hb.job_id = w->slot.job.job_id;
        hb.job_attempt = w->slot.job.attempt;
    }
    env.body_case = RLHF__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    wsend(w, &env);
    w->last_hb_ms = wire_now_ms();
}

static int sock_open(worker_t *w) {
    w->sock = zmq_socket(w->zctx, ZMQ_DEALER);
    if (w->sock) addr_zmq_opts(w->sock);
    if (!w->sock) return rl_fail(RL_EIO, "zmq_socket: %s", zmq_strerror(errno));
    int src = sec_client(w->sock, sec_master_pub());
    if (src < 0) return src;
    /* LINGER: queued messages get 1 s at exit (the goodbye), none when we drop a dead master's
     * connection (sock_close sets 0 first). MAXMSGSIZE: the master sends no big frames to us
     * yet; 64 MiB bounds what a bad peer can make us allocate. */
    int linger = 1000, rcvhwm = 10000;
    int64_t maxmsg = 64LL << 20;
    zmq_setsockopt(w->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(w->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(w->sock, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    if (zmq_connect(w->sock, w->master) < 0)
        return rl_fail(RL_EIO, "connect %s: %s", w->master, zmq_strerror(errno));
    return 0;
}

static void sock_close(worker_t *w, int linger) {
    if (!w->sock) return;
    zmq_setsockopt(w->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(w->sock);
    w->sock = NULL;
}

/* Makes the live weights at least version `need`, fetching the announced snapshot if they are
 * not (one line logged per sync: bytes, seconds, GB/s). Job and sync threads. */
static int weights_sync(worker_t *w, uint64_t need, atomic_int *cancel) {
    if (wsync_replica_version(&w->weights) >= need) return 0;
    char ep[sizeof w->weights_ep], from[sizeof w->relay_from];
    pthread_mutex_lock(&w->weights_mu);
    memcpy(ep, w->weights_ep, sizeof ep);
    memcpy(from, w->relay_from, sizeof from);
    char okey[sizeof w->weights_key], ukey[sizeof w->relay_key];
    memcpy(okey, w->weights_key, sizeof okey);
    memcpy(ukey, w->relay_key, sizeof ukey);
    pthread_mutex_unlock(&w->weights_mu);
    if (!ep[0])
        return rl_fail(RL_ENOTFOUND, "weights version %" PRIu64 " needed, none announced", need);
    if (!w->relay) from[0] = 0;                 /* --no-relay: the origin only */
    if (sec_enabled() && !ukey[0]) from[0] = 0; /* an upstream we cannot authenticate */
    wlog(w, "weights: fetching version >= %" PRIu64 " from %s%s%s", need, ep,
         from[0] ? " via relay " : "", from);
    wsync_opts_t o = {.cancel = cancel,
                      .upstream = from,
                      .relay = w->relay,
                      .origin_key = okey,
                      .upstream_key = ukey};
    wsync_stats_t st;
    int rc = wsync_replica_ensure(&w->weights, w->zctx, ep, need, &o, &st);
    char via[512] = "";
    if (from[0])
        snprintf(via, sizeof via, ", %" PRIu64 " bytes from relay %s%s%s", st.upstream_bytes, from,
                 st.fallbacks ? ", the rest from the origin: " : "", st.fallback_why);
    if (rc < 0)
        wlog(w, "weights: fetching version %" PRIu64 " failed: %s", need, rl_errmsg());
    else if (st.bytes)
        wlog(w,
             "weights: version %" PRIu64 " synced: %" PRIu64 " bytes in %.3f s (%.2f GB/s), "
             "%u chunks, crc32c %08x, %u bad chunks fetched again, %u timeouts%s",
             st.version, st.bytes, st.seconds, st.gbps, st.chunks, st.crc, st.crc_errors,
             st.timeouts, via);
    return rc;
}

/* weights_sync that follows the learner: the main thread raises *stop when quit is raised, and
 * when weights are announced at another endpoint (a restarted learner: the old one will never
 * answer, and a fetch from it would hold the replica for all its retries). A fetch stopped by
 * the latter starts again from the new endpoint. Job and sync threads. */
static int weights_sync_follow(worker_t *w, uint64_t need, atomic_int *stop, atomic_int *quit) {
    for (;;) {
        int rc = weights_sync(w, need, stop);
        if (rc >= 0 || atomic_load(quit) || !atomic_load(stop)) return rc;
        atomic_store(stop, 0);
        /* quit raised while we cleared stop (the main thread raises quit first) */
        if (atomic_load(quit)) return rc;
        wlog(w, "weights: announced at another endpoint: fetching from there");
    }
}

static void *sync_thread(void *arg) {
    worker_t *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->weights_mu);
        uint64_t v = w->weights_announced;
        pthread_mutex_unlock(&w->weights_mu);
        if (atomic_load(&w->sync_cancel) || wsync_replica_version(&w->weights) >= v) break;
        if (weights_sync_follow(w, v, &w->sync_stop, &w->sync_cancel) < 0)
            break; /* the main thread tries again */
    }
    atomic_store(&w->syncing, 0);
    return NULL;
}

/* Main thread: starts a sync when a newer version is announced than we have (and none runs);
 * after a failed one, not before a second has passed. Rollout and reward workers only: a
 * learner or stage worker runs no job that needs the policy (one that states a version still
 * fetches it first), and each of them fetching every version would cost the learner a copy. */
static void weights_maybe_sync(worker_t *w) {
    if (w->role != RLHF__ROLE__ROLE_ROLLOUT && w->role != RLHF__ROLE__ROLE_REWARD) return;
    if (atomic_load(&w->syncing)) return;
    if (w->sync_started) {
        pthread_join(w->sync_th, NULL);
        w->sync_started = 0;
        w->next_sync_ms = wire_now_ms() + 1000;
    }
    if (!w->weights_announced || wsync_replica_version(&w->weights) >= w->weights_announced ||
        wire_now_ms() < w->next_sync_ms)
        return;
    atomic_store(&w->syncing, 1);
    atomic_store(&w->sync_stop, atomic_load(&w->sync_cancel));
    if (pthread_create(&w->sync_th, NULL, sync_thread, w) != 0) {
        atomic_store(&w->syncing, 0);
        return;
    }
    w->sync_started = 1;
}

static void *job_thread(void *arg) {
    worker_t *w = arg;
    job_slot_t *s = &w->slot;
    double t0 = wire_now_ms();
    rl_err_clear();
    /* OpenMP's thread count is per thread: set it on the thread that computes */
    ops_set_threads(w->threads);
    /* the spec's models and datasets on this host's disk (fetched first when they are not) */
    uint64_t fetched = 0;
    worker_names_t names = {.n = 0};
    worker_artifacts_t art = {.cache = w->cache,
                              .fetched = &fetched,
                              .names = &names,
                              .blob_ep = s->blob_ep,
                              .ckpt_root = w->ckpt_root,
                              .zctx = w->zctx,
                              .cancel = &w->cancel};
    uint8_t *local = NULL;
    size_t local_len = 0;
    double tf = wire_now_ms();
    s->rc = worker_localize(&art, s->kind, s->payload, s->payload_len, &local, &local_len);
    if (fetched)
        wlog(w, "job %" PRIu64 ": fetched %.1f MB of models and data in %.0f ms", s->job.job_id,
             fetched / 1e6, wire_now_ms() - tf);
    if (local) {
        free(s->payload);
        s->payload = local, s->payload_len = local_len;
    }
    if (s->rc < 0) goto done;
    /* never run a job with older weights than it states: fetch first (failing that, the job is
     * rejected and the master retries it), and hold the live snapshot so no swap happens
     * while the job runs */
    s->rc = weights_sync_follow(w, s->policy_version, &w->fetch_stop, &w->cancel);
    if (s->rc < 0) s->verdict = WORKER_VERDICT_TRANSIENT; /* weights not there yet: not the job's */
    if (s->rc == 0) {
        const wsync_snapshot_t *live = wsync_replica_acquire(&w->weights);
        if (live->version < s->policy_version) {
            s->rc = rl_fail(RL_ENOTFOUND, "weights version %" PRIu64 " not available",
                            s->policy_version);
            s->verdict = WORKER_VERDICT_TRANSIENT;
        } else {
            if (s->policy_version)
                wlog(w,
                     "job %" PRIu64 " attempt %u runs with weights version %" PRIu64
                     " (needs %" PRIu64 ")",
                     s->job.job_id, s->job.attempt, live->version, s->policy_version);
            /* a job stating no version runs with its model directory's own weights */
            s->job.weights_version = s->policy_version ? live->version : 0;
            s->job.weights = s->policy_version ? live->data : NULL;
            s->job.weights_bytes = s->policy_version ? live->bytes : 0;
            s->rc = s->fn(&w->st, &s->job, s->payload, s->payload_len, &s->out, &s->out_len);
        }
        wsync_replica_release(&w->weights);
    }
    if (s->rc == 0)
        s->rc = worker_export(&art, s->kind, s->payload, s->payload_len, &s->out, &s->out_len);
done:
    if (s->rc < 0) { /* the reason is never empty: the master shows it to the user */
        snprintf(s->reason, sizeof s->reason, "%s",
                 rl_errmsg()[0] ? rl_errmsg() : rl_strerror(s->rc));
        worker_names_rewrite(&names, s->reason, sizeof s->reason);
        s->root = rl_errcode();
        s->sys_errno = rl_errno();
    }
    s->elapsed_ms = wire_now_ms() - t0;
    uint64_t one = 1;
    if (write(w->efd, &one, sizeof one) != sizeof one) abort(); /* eventfd cannot fail here */
    return NULL;
}

/* Sends a JobReject; deterministic and environment as worker_reject_classify says. */
static void reject(worker_t *w, const Rlhf__JobAssign *a, int code, const char *reason,
                   int deterministic, int environment) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__JobReject r = RLHF__JOB_REJECT__INIT;
    r.job_id = a->job_id;
    r.attempt = a->attempt;
    r.lease_id = a->lease_id;
    r.code = code;
    r.reason = (char *)(reason && reason[0] ? reason : rl_strerror(code));
    r.deterministic = deterministic != 0;
    r.environment = environment != 0;
    env.body_case = RLHF__ENVELOPE__BODY_JOB_REJECT;
    env.job_reject = &r;
    wsend(w, &env);
}

static void on_assign(worker_t *w, const Rlhf__JobAssign *a) {
    worker_handler_fn fn = worker_handler(w->role, a->kind);
    if (w->slot.busy) {
        reject(w, a, RL_ERANGE, "busy", 0, 0);
        return;
    }
    if (!fn) {
        reject(w, a, RL_EUNSUPPORTED, "no handler for this job kind", 0, 0);
        return;
    }
    job_slot_t *s = &w->slot;
    free(s->payload);
    s->payload = malloc(a->payload.len ? a->payload.len : 1);
    if (!s->payload) {
        reject(w, a, RL_ENOMEM, "out of memory", 0, 0);
        return;
    }
    if (a->payload.len) memcpy(s->payload, a->payload.data, a->payload.len); /* NULL when empty */
    s->payload_len = a->payload.len;
    s->job.job_id = a->job_id;
    s->job.attempt = a->attempt;
    s->job.seed = a->seed;
    s->job.master = w->master;
    s->job.cancel = &w->cancel;
    s->lease_id = a->lease_id;
    s->policy_version = a->policy_version;
    s->kind = a->kind;
    memcpy(s->blob_ep, w->blob_ep, sizeof s->blob_ep);
    s->job.blob_ep = s->blob_ep;
    s->job.cache_dir = w->cache_path;
    s->fn = fn;
    s->out = NULL;
    s->out_len = 0;
    s->reason[0] = 0;
    s->verdict = WORKER_VERDICT_AUTO;
    s->root = s->sys_errno = 0;
    s->job.verdict = &s->verdict;
    atomic_store(&w->cancel, 0);
    atomic_store(&w->fetch_stop, 0);
    if (pthread_create(&s->th, NULL, job_thread, w) != 0) {
        reject(w, a, RL_ENOMEM, "cannot start a thread", 0, 0);
        return;
    }
    s->busy = 1;
    wlog(w, "start job %" PRIu64 " attempt %u", a->job_id, a->attempt);
}

/* The job thread signalled: report its outcome (or hand the job back if it was cancelled). */
static void on_job_done(worker_t *w, int handing_back) {
    job_slot_t *s = &w->slot;
    uint64_t v;
    if (read(w->efd, &v, sizeof v) != sizeof v) return;
    pthread_join(s->th, NULL);
    s->busy = 0;
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    if (s->rc == 0) {
        Rlhf__JobResult r = RLHF__JOB_RESULT__INIT;
        r.job_id = s->job.job_id;
        r.attempt = s->job.attempt;
        r.lease_id = s->lease_id;
        r.payload.data = s->out;
        r.payload.len = s->out_len;
        r.elapsed_ms = s->elapsed_ms;
        env.body_case = RLHF__ENVELOPE__BODY_JOB_RESULT;
        env.job_result = &r;
        wsend(w, &env);
        wlog(w, "done job %" PRIu64 " attempt %u (%.1f ms)", s->job.job_id, s->job.attempt,
             s->elapsed_ms);
    } else {
        Rlhf__JobAssign a = RLHF__JOB_ASSIGN__INIT;
        a.job_id = s->job.job_id;
        a.attempt = s->job.attempt;
        a.lease_id = s->lease_id;
        int code = handing_back ? 0 : s->rc, det, envir;
        worker_reject_classify(code, s->root, s->sys_errno, s->verdict, &det, &envir);
        reject(w, &a, code, handing_back ? "handed back" : s->reason, det, envir);
        wlog(w, "%s job %" PRIu64 " attempt %u (%s): %s", handing_back ? "handed back" : "failed",
             s->job.job_id, s->job.attempt,
             det     ? "deterministic"
             : envir ? "environment"
                     : "transient",
             s->reason);
    }
    free(s->out);
    s->out = NULL;
}

/* A secure cluster's keys, from the master's Welcome: who the servers of this worker (its
 * relay, a learner's weights server) admit. */
static void welcome_peers(worker_t *w, const Rlhf__Welcome *wl) {
    sec_peer_t *v = wl->n_peers ? calloc(wl->n_peers, sizeof *v) : NULL;
    int n = 0;
    for (size_t i = 0; v && i < wl->n_peers; i++) {
        const Rlhf__PeerKey *p = wl->peers[i];
        if (!p->name || !p->public_key || strlen(p->name) >= sizeof v[n].name ||
            strlen(p->public_key) != SEC_Z85_LEN)
            continue;
        snprintf(v[n].name, sizeof v[n].name, "%s", p->name);
        memcpy(v[n].pub, p->public_key, SEC_Z85_LEN + 1);
        v[n++].roles = p->roles;
    }
    if (sec_set_peers(v, n) < 0) wlog(w, "keys from the master: %s", rl_errmsg());
    free(v);
}

static void on_message(worker_t *w, wire_msg_t *msg) {
    Rlhf__Envelope *env = NULL;
    wire_bad_t bad = wire_decode(msg, &env);
    if (bad != WIRE_OK) {
        wlog(w, "dropped a bad message from the master (%s)", wire_bad_name(bad));
        return;
    }
    w->last_heard_ms = wire_now_ms();
    w->backoff_ms = 100;
    switch (env->body_case) {
    case RLHF__ENVELOPE__BODY_WELCOME:
        snprintf(w->master_id, sizeof w->master_id, "%s", env->welcome->master_id);
        if (env->welcome->heartbeat_ms) w->hb_ms = (int)env->welcome->heartbeat_ms;
        if (env->welcome->liveness) w->liveness = (int)env->welcome->liveness;
        snprintf(w->blob_ep, sizeof w->blob_ep, "%s",
                 env->welcome->blob_endpoint ? env->welcome->blob_endpoint : "");
        if (sec_enabled()) welcome_peers(w, env->welcome);
        if (!w->registered) wlog(w, "registered with master %s", w->master_id);
        w->registered = 1;
        break;
    case RLHF__ENVELOPE__BODY_HEARTBEAT:
        if (env->heartbeat->master_id && strcmp(env->heartbeat->master_id, w->master_id)) {
            wlog(w, "master changed (%s): registering again", env->heartbeat->master_id);
            w->registered = 0;
            send_hello(w);
        }
        break;
    case RLHF__ENVELOPE__BODY_ERROR:
        if (env->error->code == RLHF__ERROR_CODE__ERROR_CODE_NOT_REGISTERED) {
            /* at most one Hello per 100 ms: a burst of refusals needs only one answer */
            if (wire_now_ms() - w->last_hello_ms > 100) {
                wlog(w, "master does not know us: registering again");
                w->registered = 0;
                send_hello(w);
            }
        } else {
            wlog(w, "error from master: %d %s", env->error->code, env->error->message);
        }
        break;
    case RLHF__ENVELOPE__BODY_JOB_ASSIGN:
        on_assign(w, env->job_assign);
        break;
    case RLHF__ENVELOPE__BODY_WEIGHTS_ANNOUNCE: {
        const Rlhf__WeightsAnnounce *a = env->weights_announce;
        /* a newer version, or any version at another endpoint: a learner that restarted, or
         * that serves another training now, whose versions count from 0 again - weights of a
         * higher version than it announces are another training's: dropped */
        int other = a->endpoint && strcmp(a->endpoint, w->weights_ep) != 0;
        if (a->endpoint && a->endpoint[0] && strlen(a->endpoint) < sizeof w->weights_ep &&
            (a->version >= w->weights_announced || other)) {
            if (other && wsync_replica_version(&w->weights) > a->version) {
                wsync_replica_drop(&w->weights);
                wlog(w, "weights: version %" PRIu64 " at a new endpoint: dropped ours", a->version);
            }
            int moved = other && w->weights_ep[0]; /* not the first announcement */
            const char *from = a->relay_from ? a->relay_from : "";
            pthread_mutex_lock(&w->weights_mu);
            snprintf(w->weights_ep, sizeof w->weights_ep, "%s", a->endpoint);
            snprintf(w->relay_from, sizeof w->relay_from, "%s",
                     strlen(from) < sizeof w->relay_from ? from : "");
            snprintf(w->weights_key, sizeof w->weights_key, "%s",
                     a->endpoint_key ? a->endpoint_key : "");
            snprintf(w->relay_key, sizeof w->relay_key, "%s",
                     a->relay_from_key ? a->relay_from_key : "");
            w->weights_announced = a->version;
            pthread_mutex_unlock(&w->weights_mu);
            if (moved) { /* fetches from the old endpoint start again from this one */
                atomic_store(&w->fetch_stop, 1);
                atomic_store(&w->sync_stop, 1);
            }
            w->next_sync_ms = 0;
            wlog(w, "weights version %" PRIu64 " announced at %s%s%s", a->version, a->endpoint,
                 from[0] && w->relay ? ", relay from " : "", w->relay ? from : "");
        }
        break;
    }
    case RLHF__ENVELOPE__BODY_SHUTDOWN:
        wlog(w, "shutdown requested: %s", env->shutdown->reason);
        stop_signal = SIGTERM;
        break;
    case RLHF__ENVELOPE__BODY_PING: {
        Rlhf__Envelope out = RLHF__ENVELOPE__INIT;
        Rlhf__Pong pong = RLHF__PONG__INIT;
        pong.nonce = env->ping->nonce;
        pong.sent_ns = env->ping->sent_ns;
        out.body_case = RLHF__ENVELOPE__BODY_PONG;
        out.pong = &pong;
        wsend(w, &out);
        break;
    }
    default:
        wlog(w, "unexpected message %d from the master", env->body_case);
        break;
    }
    rlhf__envelope__free_unpacked(env, NULL);
}

static int parse_role(const char *s) {
    if (!strcmp(s, "rollout")) return RLHF__ROLE__ROLE_ROLLOUT;
    if (!strcmp(s, "reward")) return RLHF__ROLE__ROLE_REWARD;
    if (!strcmp(s, "learner")) return RLHF__ROLE__ROLE_LEARNER;
    if (!strcmp(s, "stage")) return RLHF__ROLE__ROLE_STAGE;
    return -1;
}

static const char usage_text[] =
    "usage: rlhf-worker --role rollout|reward|learner|stage --master tcp://HOST:PORT [--id NAME]\n"
    "                   [--heartbeat-ms N] [--liveness N] [--threads N]\n"
    "                   [--bind-host HOST] [--advertise HOST] [--cache-dir DIR]\n"
    "                   [--ckpt-root DIR] [--no-relay] (--key FILE | --keys DIR | --insecure)\n\n"
    "Connects to the master, registers, heartbeats and runs the jobs of its role. Heartbeat\n"
    "settings apply until the master's Welcome gives its own. SIGTERM: hand back, goodbye, exit.\n"
    "--threads: compute threads per job (default: all online cores); workers sharing a machine\n"
    "should split its cores between them.\n"
    "--bind-host: the address this worker's listening sockets bind (default 127.0.0.1; 0.0.0.0\n"
    "or :: for every interface); --advertise: the address other hosts reach it at (required\n"
    "with a wildcard bind host). IPv4 and IPv6 both work (tcp://[fd77::1]:5555).\n"
    "--key FILE: this worker's key (`rlhf keygen`; or $RLHF_KEY), holding its role and the\n"
    "master's public key; --keys DIR: a key set, of which DIR/ROLE.key is used (or $RLHF_KEYS);\n"
    "--insecure: plaintext. Every socket is CURVE-encrypted with the key.\n"
    "--cache-dir DIR: the models and datasets jobs name by content, fetched from the master's\n"
    "host and verified (default $XDG_CACHE_HOME/rlhf or ~/.cache/rlhf); a learner's\n"
    "--ckpt-root DIR keeps its checkpoints under DIR on this host instead of where jobs name.\n"
    "Learner: --run-dir DIR (checkpoints) [--shard 0/S --shard-endpoint EP] [--shard-wait-ms N]\n"
    "[--shard-chunk-kib N];\n"
    "shards 1..S-1: --role learner --shard I/S --shard-endpoint EP (shard 0's; no --master).\n"
    "Stage: runs a run's stage commands (the rlhf binary next to this one); no model needed.\n"
    "Rollout and reward: the weights relay (weights fetched are served on to the next worker)\n"
    "binds the --bind-host and is named to the master with the --advertise host; --no-relay:\n"
    "every version straight from the learner.\n";

/* Starts the weights relay of a rollout or reward worker (none with --no-relay): its server on
 * the bind host, its endpoint as others reach it (net/addr.h; addr_check has refused a wildcard
 * bind host without --advertise). Returns 0 or RL_EIO (cannot bind). */
static int relay_open(worker_t *w) {
    if (w->no_relay || (w->role != RLHF__ROLE__ROLE_ROLLOUT && w->role != RLHF__ROLE__ROLE_REWARD))
        return 0;
    char bind[ADDR_EP_LEN];
    int rc = addr_bind_ep(w->bind_host, bind, sizeof bind);
    if (rc < 0) return rc;
    if (!(w->relay = wsync_server_new(w->zctx, bind, 0)) || wsync_server_start(w->relay) < 0)
        return rl_fail_ctx(RL_EIO, "weights relay");
    const char *bound = wsync_server_endpoint(w->relay);
    if ((rc = addr_advertise(bound, w->advertise, w->relay_ep, sizeof w->relay_ep)) < 0) return rc;
    wlog(w, "weights relay: serving at %s (bound %s)", w->relay_ep, bound);
    return 0;
}

/* Creates the state of w's role (the learner's after worker_learner_start). Returns 0 or RL_E*. */
static int roles_init(worker_t *w, const worker_learner_opts_t *lo) {
    worker_state_t *st = &w->st;
    switch (w->role) {
    case RLHF__ROLE__ROLE_ROLLOUT:
        return (st->rollout = rollout_state_new()) ? 0 : RL_ENOMEM;
    case RLHF__ROLE__ROLE_REWARD:
        return (st->score = score_state_new()) ? 0 : RL_ENOMEM;
    case RLHF__ROLE__ROLE_LEARNER:
        if (!(st->learner = learner_new(lo))) return RL_EIO;
        return (st->ppo = ppo_state_new(w->master, lo->run_dir, w->bind_host, w->advertise))
                   ? 0
                   : RL_ENOMEM;
    }
    return 0;
}

static void roles_free(worker_t *w) {
    rollout_state_destroy(&w->st.rollout);
    score_state_destroy(&w->st.score);
    ppo_state_destroy(&w->st.ppo);
    learner_destroy(&w->st.learner);
}

int main(int argc, char **argv) {
    worker_t *w = calloc(1, sizeof *w);
    if (!w) return 1;
    w->role = -1;
    w->hb_ms = 1000;
    w->liveness = 3;
    w->threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (w->threads < 1) w->threads = 1;
    w->backoff_ms = 100;
    worker_learner_opts_t lo = {.index = 0, .n_shards = 1, .wait_ms = 30000};
    static const struct option opts[] = {{"role", required_argument, 0, 'r'},
                                         {"master", required_argument, 0, 'm'},
                                         {"id", required_argument, 0, 'i'},
                                         {"heartbeat-ms", required_argument, 0, 'H'},
                                         {"liveness", required_argument, 0, 'L'},
                                         {"threads", required_argument, 0, 't'},
                                         {"shard", required_argument, 0, 0x100},
                                         {"shard-endpoint", required_argument, 0, 0x101},
                                         {"run-dir", required_argument, 0, 0x102},
                                         {"shard-wait-ms", required_argument, 0, 0x103},
                                         {"shard-chunk-kib", required_argument, 0, 0x104},
                                         {"bind-host", required_argument, 0, 0x105},
                                         {"advertise", required_argument, 0, 0x106},
                                         {"cache-dir", required_argument, 0, 0x107},
                                         {"ckpt-root", required_argument, 0, 0x108},
                                         {"no-relay", no_argument, 0, 0x112},
                                         {"key", required_argument, 0, 0x113},
                                         {"keys", required_argument, 0, 0x114},
                                         {"insecure", no_argument, 0, 0x115},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            if ((w->role = parse_role(optarg)) < 0) {
                fprintf(stderr,
                        "rlhf-worker: --role: '%s' is not rollout, reward, learner or stage\n",
                        optarg);
                return 2;
            }
            break;
        case 'm':
            w->master = optarg;
            break;
        case 'i':
            snprintf(w->id, sizeof w->id, "%s", optarg);
            break;
        case 'H':
            w->hb_ms = atoi(optarg) > 0 ? atoi(optarg) : 1000;
            break;
        case 'L':
            w->liveness = atoi(optarg) > 0 ? atoi(optarg) : 3;
            break;
        case 't':
            if (atoi(optarg) < 1 || atoi(optarg) > 1024) {
                fprintf(stderr, "rlhf-worker: --threads: '%s' is not in [1, 1024]\n", optarg);
                return 2;
            }
            w->threads = atoi(optarg);
            break;
        case 0x100: /* learner shard I/S */
            if (sscanf(optarg, "%d/%d", &lo.index, &lo.n_shards) != 2 || lo.n_shards < 1 ||
                lo.n_shards > WORKER_LEARNER_MAX_SHARDS || lo.index < 0 ||
                lo.index >= lo.n_shards) {
                fprintf(stderr, "rlhf-worker: --shard: '%s' is not I/S with 0 <= I < S <= %d\n",
                        optarg, WORKER_LEARNER_MAX_SHARDS);
                return 2;
            }
            break;
        case 0x101:
            lo.endpoint = optarg;
            break;
        case 0x102:
            lo.run_dir = optarg;
            break;
        case 0x103:
            lo.wait_ms = atoi(optarg) > 0 ? atoi(optarg) : 30000;
            break;
        case 0x104:
            if (atoi(optarg) < 1 || atoi(optarg) > 16384) {
                fprintf(stderr, "rlhf-worker: --shard-chunk-kib: '%s' is not in [1, 16384]\n",
                        optarg);
                return 2;
            }
            lo.chunk_kib = atoi(optarg);
            break;
        case 0x105:
            w->bind_host = optarg;
            break;
        case 0x106:
            w->advertise = optarg;
            break;
        case 0x107:
            w->cache_dir = optarg;
            break;
        case 0x108:
            w->ckpt_root = optarg;
            break;
        case 0x112:
            w->no_relay = 1;
            break;
        case 0x113:
            w->key_file = optarg;
            break;
        case 0x114:
            w->keys_dir = optarg;
            break;
        case 0x115:
            w->insecure = 1;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return 0;
        default:
            fputs(usage_text, stderr);
            return 2;
        }
    }
    if (w->role < 0 || (!w->master && lo.index == 0) || optind < argc ||
        (w->role != RLHF__ROLE__ROLE_LEARNER && lo.n_shards > 1)) {
        fputs(usage_text, stderr);
        return 2;
    }
    /* a listener others cannot dial is an error now, not at the first publish */
    if (addr_check(w->bind_host, w->advertise) < 0) {
        fprintf(stderr, "rlhf-worker: --bind-host/--advertise: %s\n", rl_errmsg());
        free(w);
        return 2;
    }
    unsigned role_bit = w->role == RLHF__ROLE__ROLE_ROLLOUT   ? SEC_ROLE_ROLLOUT
                        : w->role == RLHF__ROLE__ROLE_REWARD  ? SEC_ROLE_REWARD
                        : w->role == RLHF__ROLE__ROLE_LEARNER ? SEC_ROLE_LEARNER
                                                              : SEC_ROLE_STAGE;
    if (sec_init(role_bit, w->key_file, w->keys_dir, w->insecure) < 0) {
        fprintf(stderr, "rlhf-worker: %s\n", rl_errmsg());
        free(w);
        return 2;
    }
    /* the commands a stage worker runs are clients of the master with its key */
    if (sec_key_path()) setenv("RLHF_KEY", sec_key_path(), 1);
    if (!sec_enabled()) setenv("RLHF_INSECURE", "1", 1);
    if (!w->id[0]) {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(w->id, sizeof w->id, "%.40s-%d", host, (int)getpid());
    }
    snprintf(w->log_id, sizeof w->log_id, "worker %.63s", w->id);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: zmq_poll returns EINTR at once */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (w->role == RLHF__ROLE__ROLE_LEARNER) {
        lo.id = w->id;
        lo.hb_ms = w->hb_ms;
        lo.liveness = w->liveness;
        lo.threads = w->threads;
        /* shards 1..S-1 talk to shard 0 only, never to the master */
        if (lo.index > 0) {
            int status = worker_learner_shard_main(&lo, &stop_signal);
            free(w);
            return status;
        }
    }
    char *cache_dir = w->cache_path;
    size_t cache_cap = sizeof w->cache_path;
    if (w->cache_dir)
        snprintf(cache_dir, cache_cap, "%s", w->cache_dir);
    else if (getenv("XDG_CACHE_HOME") && getenv("XDG_CACHE_HOME")[0])
        snprintf(cache_dir, cache_cap, "%s/rlhf", getenv("XDG_CACHE_HOME"));
    else
        snprintf(cache_dir, cache_cap, "%s/.cache/rlhf",
                 getenv("HOME") && getenv("HOME")[0] ? getenv("HOME") : ".");
    if (!(w->cache = blob_store_open(cache_dir))) {
        fprintf(stderr, "rlhf-worker: --cache-dir: %s\n", rl_errmsg());
        free(w);
        return 1;
    }
    char abs_cache[PATH_MAX]; /* absolute: stage commands run in other directories */
    if (realpath(cache_dir, abs_cache)) snprintf(w->cache_path, cache_cap, "%s", abs_cache);
    if (roles_init(w, &lo) < 0) {
        fprintf(stderr, "rlhf-worker: %s\n", rl_errmsg());
        return 1;
    }
    wsync_malloc_tune(); /* weight chunks: recycled heap blocks, not fresh pages each */
    w->efd = eventfd(0, EFD_CLOEXEC);
    w->zctx = zmq_ctx_new();
    pthread_mutex_init(&w->weights_mu, NULL);
    if (w->efd < 0 || !w->zctx || wsync_replica_init(&w->weights) < 0 || sock_open(w) < 0) {
        fprintf(stderr, "rlhf-worker: %s\n", rl_errmsg()[0] ? rl_errmsg() : strerror(errno));
        return 1;
    }
    if (relay_open(w) < 0) {
        fprintf(stderr, "rlhf-worker: %s\n", rl_errmsg());
        wsync_server_destroy(&w->relay);
        sock_close(w, 0);
        zmq_ctx_term(w->zctx);
        close(w->efd);
        roles_free(w);
        wsync_replica_free(&w->weights);
        free(w);
        return 1;
    }
    send_hello(w);
    w->last_heard_ms = wire_now_ms();
    while (!stop_signal) {
        double now = wire_now_ms();
        double next_hb = w->last_hb_ms + w->hb_ms;
        int timeout = (int)(next_hb - now);
        if (timeout < 0) timeout = 0;
        zmq_pollitem_t items[2] = {{w->sock, 0, ZMQ_POLLIN, 0}, {NULL, w->efd, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, 2, timeout);
        if (rc < 0 && errno != EINTR) {
            wlog(w, "zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if (rc > 0 && (items[1].revents & ZMQ_POLLIN)) on_job_done(w, 0);
        if (rc > 0 && (items[0].revents & ZMQ_POLLIN)) {
            wire_msg_t msg;
            /* drain everything that is queued */
            while (!stop_signal && wire_recv(w->sock, 0, &msg, ZMQ_DONTWAIT) > 0) {
                on_message(w, &msg);
                wire_msg_free(&msg);
            }
        }
        now = wire_now_ms();
        if (now - w->last_heard_ms > (double)w->hb_ms * w->liveness &&
            now >= w->next_reconnect_ms) {
            /* the master is gone: a fresh connection and Hello again; while nothing answers,
             * retry with exponential backoff */
            wlog(w, "master silent for %.0f ms: reconnecting (next try in %d ms)",
                 now - w->last_heard_ms, w->backoff_ms);
            sock_close(w, 0);
            if (sock_open(w) < 0) {
                wlog(w, "%s", rl_errmsg());
                break;
            }
            w->registered = 0;
            send_hello(w);
            w->next_reconnect_ms = now + w->backoff_ms;
            w->backoff_ms = w->backoff_ms * 2 > 2000 ? 2000 : w->backoff_ms * 2;
        }
        if (now >= w->last_hb_ms + w->hb_ms) send_heartbeat(w);
        weights_maybe_sync(w);
    }
    wlog(w, "stopping (signal %d)", (int)stop_signal);
    if (w->slot.busy) { /* cancel and wait: the thread polls the flag between tokens */
        atomic_store(&w->cancel, 1);
        atomic_store(&w->fetch_stop, 1);
        zmq_pollitem_t it = {NULL, w->efd, ZMQ_POLLIN, 0};
        while (zmq_poll(&it, 1, -1) < 0 && errno == EINTR) {
        }
        on_job_done(w, 1);
    }
    atomic_store(&w->sync_cancel, 1);
    atomic_store(&w->sync_stop, 1);
    if (w->sync_started) pthread_join(w->sync_th, NULL);
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Goodbye gb = RLHF__GOODBYE__INIT;
    gb.reason = "shutting down";
    env.body_case = RLHF__ENVELOPE__BODY_GOODBYE;
    env.goodbye = &gb;
    wsend(w, &env);
    sock_close(w, 1000);
    wsync_server_destroy(&w->relay); /* no fetch feeds it any more */
    zmq_ctx_term(w->zctx);
    close(w->efd);
    free(w->slot.payload);
    roles_free(w);
    blob_store_close(&w->cache);
    wsync_replica_free(&w->weights);
    wlog(w, "exit");
    free(w);
    return 0;
}
