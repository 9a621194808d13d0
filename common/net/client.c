/*
 * client.c - the blocking job-submission client of drivers (see client.h).
 *
 * State: one entry per job id this client has heard of, in an open-addressing hash:
 *   SUBMITTED  submitted (or fetched) and not finished as far as we know; `acked` once the
 *              master has acknowledged the current submission
 *   ARRIVED    its JobDone (or a rejection) is here, waiting for client_wait
 *   DELIVERED  handed to a callback: answers about it are duplicates and dropped
 *   FREE       forgotten (rejected by client_submit); the id may be submitted again
 * Every message is sent without blocking; anything lost (a full queue, a connection that
 * dropped, a master that restarted) is recovered by the same three rules:
 *   - a Welcome from a new master_id: submit every SUBMITTED job again;
 *   - any other Welcome (we were forgotten, or reconnected): submit the unacknowledged jobs
 *     again and ask for the acknowledged ones (FetchResults);
 *   - while jobs are outstanding, ask for all of them every fetch_ms (one the master does not
 *     know is submitted again).
 * All of it is idempotent on the master, and the DELIVERED state makes it so here.
 */
#include "net/client.h"
#include "net/sec.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "base/err.h"
#include "net/addr.h"
#include "net/wire.h"

/* SubmitJobs are cut to this size, well under WIRE_MAX_ENVELOPE */
#define CLIENT_CHUNK_BYTES (512u << 10)
/* ids per FetchResults */
#define CLIENT_FETCH_IDS 8192

enum { E_FREE = 0, E_SUBMITTED, E_ARRIVED, E_DELIVERED };

typedef struct {
    uint64_t id;
    int state;
    int acked;     /* the master acknowledged the current submission */
    int in_submit; /* listed by the running client_submit */
    int waiting;   /* listed by the running client_wait */
    int rejected;  /* rejected while in_submit (reason in `reason`) */
    /* spec (has_spec: kept until delivery, to submit it again) */
    int has_spec, kind, role;
    uint64_t seed, policy_version;
    uint32_t lease_ms;
    uint8_t *payload;
    size_t payload_len;
    /* result (ARRIVED) */
    client_status_t status;
    int rkind;
    uint32_t attempt;
    char *worker, *reason;
    double elapsed_ms;
    uint8_t *out;
    size_t out_len;
} entry_t;

struct client {
    char endpoint[256], name[64], ns[256];
    void *zctx, *sock;
    client_opts_t o;
    int hb_ms, liveness, backoff_ms;
    char master_id[40];
    char blob_ep[320]; /* Welcome.blob_endpoint */
    int registered;
    double last_heard_ms, last_hb_ms, last_hello_ms, last_fetch_ms, next_reconnect_ms;
    uint64_t req_seq;
    entry_t *e;
    int n_e, cap_e;
    int *index; /* job id -> entry index + 1 (0: empty) */
    int index_cap;
    int n_outstanding; /* SUBMITTED + ARRIVED */
    uint64_t arrivals; /* bumped whenever an entry becomes ARRIVED */
    client_stats_t st;
    /* the run request (client_run_*) waiting for its RunReply */
    uint64_t run_req;
    Rlhf__RunReply *run_reply;
};

/* ---- the entry table ------------------------------------------------------------------------ */

static size_t hash_id(uint64_t id, int cap) {
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    return (size_t)(id & (uint64_t)(cap - 1));
}

static int entry_find(const client_t *c, uint64_t id) {
    if (!c->index_cap) return -1;
    for (size_t h = hash_id(id, c->index_cap); c->index[h];
         h = (h + 1) & (size_t)(c->index_cap - 1))
        if (c->e[c->index[h] - 1].id == id) return c->index[h] - 1;
    return -1;
}

static void index_put(client_t *c, uint64_t id, int i) {
    size_t h = hash_id(id, c->index_cap);
    while (c->index[h]) h = (h + 1) & (size_t)(c->index_cap - 1);
    c->index[h] = i + 1;
}

/* The entry of id, added FREE when there is none. Returns its index or RL_ENOMEM. */
static int entry_get(client_t *c, uint64_t id) {
    int i = entry_find(c, id);
    if (i >= 0) return i;
    if (c->n_e == c->cap_e) {
        int cap = c->cap_e ? 2 * c->cap_e : 256;
        entry_t *e = realloc(c->e, (size_t)cap * sizeof *e);
        if (!e) return rl_fail(RL_ENOMEM, "client: out of memory");
        c->e = e;
        c->cap_e = cap;
    }
    if (2 * (c->n_e + 1) > c->index_cap) {
        int cap = c->index_cap ? 2 * c->index_cap : 512;
        int *idx = calloc((size_t)cap, sizeof *idx);
        if (!idx) return rl_fail(RL_ENOMEM, "client: out of memory");
        free(c->index);
        c->index = idx;
        c->index_cap = cap;
        for (int k = 0; k < c->n_e; k++) index_put(c, c->e[k].id, k);
    }
    memset(&c->e[c->n_e], 0, sizeof c->e[c->n_e]);
    c->e[c->n_e].id = id;
    index_put(c, id, c->n_e);
    return c->n_e++;
}

static void entry_clear_result(entry_t *e) {
    free(e->worker);
    free(e->reason);
    free(e->out);
    e->worker = e->reason = NULL;
    e->out = NULL;
    e->out_len = 0;
}

static void entry_clear_spec(entry_t *e) {
    free(e->payload);
    e->payload = NULL;
    e->payload_len = 0;
    e->has_spec = 0;
}

/* SUBMITTED -> ARRIVED with a rejection (no output). */
static void entry_reject(client_t *c, entry_t *e, const char *why) {
    entry_clear_result(e);
    e->state = E_ARRIVED;
    e->status = CLIENT_REJECTED;
    e->rkind = e->has_spec ? e->kind : 0;
    e->attempt = 0;
    e->elapsed_ms = 0;
    e->reason = strdup(why ? why : "");
    c->arrivals++;
}

static int outstanding(const entry_t *e) {
    return e->state == E_SUBMITTED || e->state == E_ARRIVED;
}

/* ---- sending -------------------------------------------------------------------------------- */

static int csend(client_t *c, Rlhf__Envelope *env) {
    /* never block: whatever does not go out now is recovered by the resubmit/fetch rules */
    return wire_send(c->sock, NULL, 0, env, NULL, NULL, 0, ZMQ_DONTWAIT);
}

static void send_hello(client_t *c) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Hello h = RLHF__HELLO__INIT;
    h.role = RLHF__ROLE__ROLE_CLIENT;
    h.worker_id = c->name;
    h.version = "client 0.1";
    h.pid = (int32_t)getpid();
    h.ns = c->ns;
    env.body_case = RLHF__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    csend(c, &env);
    c->last_hello_ms = wire_now_ms();
}

static void send_heartbeat(client_t *c) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Heartbeat hb = RLHF__HEARTBEAT__INIT;
    env.body_case = RLHF__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    csend(c, &env);
    c->last_hb_ms = wire_now_ms();
}

static void spec_fill(Rlhf__JobSpec *js, const entry_t *e) {
    rlhf__job_spec__init(js);
    js->id = e->id;
    js->kind = (Rlhf__JobKind)e->kind;
    js->seed = e->seed;
    js->lease_ms = e->lease_ms;
    js->policy_version = e->policy_version;
    js->role = (Rlhf__Role)e->role;
    js->payload.data = e->payload;
    js->payload.len = e->payload_len;
}

/* Submits the SUBMITTED entries with a spec for which pick(e) holds, in SubmitJobs of at most
 * CLIENT_CHUNK_BYTES. Returns 0 or RL_ENOMEM. */
static int send_submit(client_t *c, int (*pick)(const entry_t *)) {
    /* specs[n] is filled before the chunk of n is flushed: one more than a chunk holds */
    Rlhf__JobSpec *specs = malloc(4097 * sizeof *specs);
    Rlhf__JobSpec **ptrs = malloc(4097 * sizeof *ptrs);
    int rc = specs && ptrs ? 0 : rl_fail(RL_ENOMEM, "client: out of memory");
    int n = 0;
    size_t bytes = 0;
    for (int i = 0; rc == 0 && i <= c->n_e; i++) {
        const entry_t *e = i < c->n_e ? &c->e[i] : NULL;
        size_t sz = 0;
        if (e) {
            if (e->state != E_SUBMITTED || !e->has_spec || !pick(e)) continue;
            spec_fill(&specs[n], e);
            sz = rlhf__job_spec__get_packed_size(&specs[n]) + 8;
        }
        /* flush before this one would overflow the chunk, and at the end */
        if (n > 0 && (!e || n == 4096 || bytes + sz > CLIENT_CHUNK_BYTES)) {
            Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
            Rlhf__SubmitJobs sj = RLHF__SUBMIT_JOBS__INIT;
            sj.request_id = ++c->req_seq;
            sj.jobs = ptrs;
            sj.n_jobs = (size_t)n;
            env.body_case = RLHF__ENVELOPE__BODY_SUBMIT_JOBS;
            env.submit_jobs = &sj;
            csend(c, &env);
            if (e) specs[0] = specs[n]; /* the one that did not fit starts the next chunk */
            n = 0;
            bytes = 0;
        }
        if (e) {
            ptrs[n] = &specs[n];
            n++;
            bytes += sz;
        }
    }
    free(specs);
    free(ptrs);
    return rc;
}

static int pick_unacked(const entry_t *e) {
    return !e->acked;
}

/* Asks for the SUBMITTED entries for which pick(e) holds (FetchResults). */
static int send_fetch(client_t *c, int (*pick)(const entry_t *)) {
    uint64_t *ids = malloc(CLIENT_FETCH_IDS * sizeof *ids);
    if (!ids) return rl_fail(RL_ENOMEM, "client: out of memory");
    int n = 0;
    for (int i = 0; i <= c->n_e; i++) {
        const entry_t *e = i < c->n_e ? &c->e[i] : NULL;
        if (e && (e->state != E_SUBMITTED || !pick(e))) continue;
        if (e) ids[n++] = e->id;
        if (n > 0 && (!e || n == CLIENT_FETCH_IDS)) {
            Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
            Rlhf__FetchResults f = RLHF__FETCH_RESULTS__INIT;
            f.request_id = ++c->req_seq;
            f.job_ids = ids;
            f.n_job_ids = (size_t)n;
            env.body_case = RLHF__ENVELOPE__BODY_FETCH_RESULTS;
            env.fetch_results = &f;
            csend(c, &env);
            c->st.fetches_sent++;
            n = 0;
        }
    }
    free(ids);
    c->last_fetch_ms = wire_now_ms();
    return 0;
}

static int pick_acked(const entry_t *e) {
    return e->acked;
}

static int pick_all(const entry_t *e) {
    (void)e;
    return 1;
}

static int pick_specless(const entry_t *e) {
    return !e->has_spec;
}

/* ---- the socket ----------------------------------------------------------------------------- */

static int sock_open(client_t *c) {
    c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
    if (c->sock) addr_zmq_opts(c->sock);
    if (!c->sock) return rl_fail(RL_EIO, "zmq_socket: %s", zmq_strerror(errno));
    int src = sec_client(c->sock, sec_master_pub());
    if (src < 0) return src;
    /* HWMs: a burst of JobDone (a restarted master answering a big resubmission) must fit;
     * MAXMSGSIZE bounds what a bad peer can make us allocate */
    int linger = 0, hwm = 100000;
    int64_t maxmsg = 64LL << 20;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (zmq_connect(c->sock, c->endpoint) < 0) {
        int rc = rl_fail(RL_EIO, "connect %s: %s", c->endpoint, zmq_strerror(errno));
        zmq_close(c->sock);
        c->sock = NULL;
        return rc;
    }
    return 0;
}

static void sock_close(client_t *c, int linger) {
    if (!c->sock) return;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(c->sock);
    c->sock = NULL;
}

/* ---- receiving ------------------------------------------------------------------------------ */

static void on_welcome(client_t *c, const Rlhf__Welcome *w) {
    const char *id = w->master_id ? w->master_id : "";
    int changed = c->master_id[0] && strcmp(c->master_id, id);
    snprintf(c->master_id, sizeof c->master_id, "%s", id);
    if (w->heartbeat_ms) c->hb_ms = (int)w->heartbeat_ms;
    if (w->liveness) c->liveness = (int)w->liveness;
    snprintf(c->blob_ep, sizeof c->blob_ep, "%s", w->blob_endpoint ? w->blob_endpoint : "");
    c->registered = 1;
    c->st.registrations++;
    if (changed) { /* a restarted master knows only the jobs it had finished: submit them all */
        c->st.master_changes++;
        for (int i = 0; i < c->n_e; i++)
            if (c->e[i].state == E_SUBMITTED && c->e[i].has_spec) {
                c->e[i].acked = 0;
                c->st.jobs_resubmitted++;
            }
        send_submit(c, pick_unacked);
        send_fetch(c, pick_specless);
        return;
    }
    /* the same master (we were forgotten, or reconnected): what it did not acknowledge may
     * never have arrived; answers to the rest may have been lost */
    send_submit(c, pick_unacked);
    send_fetch(c, pick_acked);
}

static void on_submit_ack(client_t *c, const Rlhf__SubmitAck *a) {
    for (size_t i = 0; i < a->n_accepted + a->n_already_done; i++) {
        uint64_t id = i < a->n_accepted ? a->accepted[i] : a->already_done[i - a->n_accepted];
        int k = entry_find(c, id);
        if (k >= 0 && outstanding(&c->e[k])) c->e[k].acked = 1;
    }
    for (size_t i = 0; i < a->n_rejected; i++) {
        int k = entry_find(c, a->rejected[i]);
        if (k < 0 || c->e[k].state != E_SUBMITTED) continue;
        entry_t *e = &c->e[k];
        const char *why = i < a->n_reasons && a->reasons[i] ? a->reasons[i] : "rejected";
        if (e->in_submit) { /* client_submit reports it and forgets the job */
            e->rejected = 1;
            free(e->reason);
            e->reason = strdup(why);
        } else { /* a resubmission refused: the waiter hears of it */
            entry_reject(c, e, why);
        }
    }
}

static void on_job_done(client_t *c, const Rlhf__JobDone *d) {
    int k = entry_find(c, d->job_id);
    if (k < 0 || c->e[k].state != E_SUBMITTED) {
        c->st.duplicates_dropped++;
        return;
    }
    entry_t *e = &c->e[k];
    entry_clear_result(e);
    e->status = d->status == RLHF__JOB_STATUS__JOB_STATUS_DONE ? CLIENT_DONE : CLIENT_FAILED;
    e->rkind = d->kind;
    e->attempt = d->attempt;
    e->elapsed_ms = d->elapsed_ms;
    e->worker = strdup(d->worker ? d->worker : "");
    if (d->reason && d->reason[0]) e->reason = strdup(d->reason); /* why it failed */
    if (d->payload.len) {
        e->out = malloc(d->payload.len);
        if (!e->out) { /* cannot keep it: ask again later */
            free(e->worker);
            e->worker = NULL;
            return;
        }
        memcpy(e->out, d->payload.data, d->payload.len);
        e->out_len = d->payload.len;
    }
    e->acked = 1;
    e->state = E_ARRIVED;
    c->arrivals++;
}

static void on_fetch_ack(client_t *c, const Rlhf__FetchAck *a) {
    int resubmit = 0;
    for (size_t i = 0; i < a->n_unknown; i++) {
        int k = entry_find(c, a->unknown[i]);
        if (k < 0 || c->e[k].state != E_SUBMITTED) continue;
        if (c->e[k].has_spec) {
            c->e[k].acked = 0;
            resubmit = 1;
            c->st.jobs_resubmitted++;
        } else {
            entry_reject(c, &c->e[k], "the master does not know this job");
        }
    }
    if (resubmit) send_submit(c, pick_unacked);
}

static void on_message(client_t *c, wire_msg_t *msg) {
    Rlhf__Envelope *env = NULL;
    if (wire_decode(msg, &env) != WIRE_OK) return; /* not from a master we understand */
    c->last_heard_ms = wire_now_ms();
    c->backoff_ms = 100;
    switch (env->body_case) {
    case RLHF__ENVELOPE__BODY_WELCOME:
        on_welcome(c, env->welcome);
        break;
    case RLHF__ENVELOPE__BODY_HEARTBEAT:
        if (env->heartbeat->master_id && c->master_id[0] &&
            strcmp(env->heartbeat->master_id, c->master_id)) {
            c->registered = 0; /* a new master: register (the Welcome resubmits) */
            send_hello(c);
        }
        break;
    case RLHF__ENVELOPE__BODY_ERROR:
        /* at most one Hello per 100 ms: a burst of refusals needs one answer */
        if (env->error->code == RLHF__ERROR_CODE__ERROR_CODE_NOT_REGISTERED &&
            wire_now_ms() - c->last_hello_ms > 100) {
            c->registered = 0;
            send_hello(c);
        }
        break;
    case RLHF__ENVELOPE__BODY_SUBMIT_ACK:
        on_submit_ack(c, env->submit_ack);
        break;
    case RLHF__ENVELOPE__BODY_JOB_DONE:
        on_job_done(c, env->job_done);
        break;
    case RLHF__ENVELOPE__BODY_FETCH_ACK:
        on_fetch_ack(c, env->fetch_ack);
        break;
    case RLHF__ENVELOPE__BODY_RUN_REPLY:
        /* the awaited one is kept (taken out of the envelope); late answers to earlier
         * requests are dropped */
        if (c->run_req && env->run_reply->request_id == c->run_req && !c->run_reply) {
            c->run_reply = env->run_reply;
            env->run_reply = NULL;
            env->body_case = RLHF__ENVELOPE__BODY__NOT_SET;
        }
        break;
    default: /* weight announcements, pongs: not for us */
        break;
    }
    rlhf__envelope__free_unpacked(env, NULL);
}

/* Waits up to wait_ms for messages (less when a heartbeat is due), handles all that are queued,
 * then does the periodic duties: heartbeat, reconnect to a silent master, fetch outstanding
 * results. Returns 0 or RL_EIO. */
static int pump(client_t *c, int wait_ms) {
    double now = wire_now_ms();
    double until_hb = c->last_hb_ms + c->hb_ms - now;
    int t = wait_ms < 0 ? 0 : wait_ms;
    if (until_hb < t) t = until_hb > 0 ? (int)until_hb : 0;
    zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
    int rc = zmq_poll(&it, 1, t);
    if (rc < 0 && errno != EINTR) return rl_fail(RL_EIO, "zmq_poll: %s", zmq_strerror(errno));
    if (rc > 0) {
        wire_msg_t msg;
        while (wire_recv(c->sock, 0, &msg, ZMQ_DONTWAIT) > 0) {
            on_message(c, &msg);
            wire_msg_free(&msg);
        }
    }
    now = wire_now_ms();
    if (now - c->last_heard_ms > (double)c->hb_ms * c->liveness && now >= c->next_reconnect_ms) {
        /* the master is gone (or restarted and the connection with it): a fresh connection
         * and Hello again, with exponential backoff while nothing answers */
        sock_close(c, 0);
        if (sock_open(c) < 0) return RL_EIO;
        c->registered = 0;
        send_hello(c);
        c->next_reconnect_ms = now + c->backoff_ms;
        c->backoff_ms = c->backoff_ms * 2 > 2000 ? 2000 : c->backoff_ms * 2;
    }
    /* heartbeats also go out unregistered: a restarted master answers NOT_REGISTERED */
    if (now >= c->last_hb_ms + c->hb_ms) send_heartbeat(c);
    /* all of them: a submission lost on the way is reported unknown, and submitted again */
    if (c->registered && now - c->last_fetch_ms >= c->o.fetch_ms && c->n_outstanding)
        send_fetch(c, pick_all);
    return 0;
}

/* ---- API ------------------------------------------------------------------------------------ */

client_t *client_open_opts(const char *endpoint, const char *name, const client_opts_t *opts) {
    if (!endpoint || strlen(endpoint) >= sizeof((client_t *)0)->endpoint) {
        rl_fail(RL_EINVAL, "client: endpoint missing or too long");
        return NULL;
    }
    if (opts && opts->ns && strlen(opts->ns) >= sizeof((client_t *)0)->ns) {
        rl_fail(RL_EINVAL, "client: namespace longer than %zu bytes",
                sizeof((client_t *)0)->ns - 1);
        return NULL;
    }
    client_t *c = calloc(1, sizeof *c);
    if (!c) {
        rl_fail(RL_ENOMEM, "client: out of memory");
        return NULL;
    }
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    if (name && name[0]) {
        snprintf(c->name, sizeof c->name, "%s", name);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(c->name, sizeof c->name, "%.40s-%d", host, (int)getpid());
    }
    client_opts_t o = {1000, 3, 60000, 2000, NULL};
    if (opts && opts->ns) snprintf(c->ns, sizeof c->ns, "%s", opts->ns);
    if (opts) {
        if (opts->heartbeat_ms > 0) o.heartbeat_ms = opts->heartbeat_ms;
        if (opts->liveness > 0) o.liveness = opts->liveness;
        if (opts->op_timeout_ms > 0) o.op_timeout_ms = opts->op_timeout_ms;
        if (opts->fetch_ms > 0) o.fetch_ms = opts->fetch_ms;
    }
    c->o = o;
    c->hb_ms = o.heartbeat_ms;
    c->liveness = o.liveness;
    c->backoff_ms = 100;
    c->zctx = zmq_ctx_new();
    if (!c->zctx) {
        rl_fail(RL_EIO, "zmq_ctx_new: %s", zmq_strerror(errno));
        free(c);
        return NULL;
    }
    if (sock_open(c) < 0) {
        zmq_ctx_term(c->zctx);
        free(c);
        return NULL;
    }
    send_hello(c);
    c->last_heard_ms = c->last_hb_ms = c->last_fetch_ms = wire_now_ms();
    return c;
}

client_t *client_open(const char *endpoint, const char *name) {
    return client_open_opts(endpoint, name, NULL);
}

static int same_spec(const entry_t *e, const client_job_t *j) {
    return e->has_spec && e->kind == j->kind && e->seed == j->seed &&
           e->policy_version == j->policy_version && e->payload_len == j->payload_len &&
           (!j->payload_len || !memcmp(e->payload, j->payload, j->payload_len));
}

int client_submit(client_t *c, const client_job_t *jobs, int n) {
    if (n < 0 || (n > 0 && !jobs)) return rl_fail(RL_EINVAL, "client_submit: no jobs");
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const client_job_t *j = &jobs[i];
        if (j->id == 0 || j->id > (uint64_t)INT64_MAX || (j->payload_len && !j->payload))
            rc =
                rl_fail(RL_EINVAL, "job %" PRIu64 ": id 1 .. 2^63-1 and a payload required", j->id);
        else if (j->payload_len > WIRE_MAX_ENVELOPE - 4096)
            rc = rl_fail(RL_ERANGE, "job %" PRIu64 ": a %zu-byte spec exceeds the message limit",
                         j->id, j->payload_len);
    }
    /* record the specs; an id already outstanding with the same spec needs nothing */
    for (int i = 0; i < n && rc == 0; i++) {
        const client_job_t *j = &jobs[i];
        int k = entry_get(c, j->id);
        if (k < 0) {
            rc = k;
            break;
        }
        entry_t *e = &c->e[k];
        if (outstanding(e) || e->in_submit) {
            if (!same_spec(e, j))
                rc = rl_fail(RL_EINVAL, "job %" PRIu64 " is outstanding with another spec", j->id);
            continue;
        }
        uint8_t *p = malloc(j->payload_len ? j->payload_len : 1);
        if (!p) {
            rc = rl_fail(RL_ENOMEM, "client: out of memory");
            break;
        }
        if (j->payload_len) memcpy(p, j->payload, j->payload_len);
        entry_clear_result(e);
        entry_clear_spec(e);
        e->payload = p;
        e->payload_len = j->payload_len;
        e->has_spec = 1;
        e->kind = j->kind;
        e->role = j->role;
        e->seed = j->seed;
        e->policy_version = j->policy_version;
        e->lease_ms = j->lease_ms;
        e->state = E_SUBMITTED;
        e->acked = 0;
        e->rejected = 0;
        e->in_submit = 1;
        c->n_outstanding++;
    }
    /* unregistered, the Welcome submits them (they are unacknowledged) */
    if (c->registered && send_submit(c, pick_unacked) < 0 && rc == 0) rc = RL_ENOMEM;
    double deadline = wire_now_ms() + c->o.op_timeout_ms;
    int left = 1;
    while (left && rc == 0) {
        left = 0;
        for (int i = 0; i < c->n_e && !left; i++)
            left = c->e[i].in_submit && c->e[i].state == E_SUBMITTED && !c->e[i].acked &&
                   !c->e[i].rejected;
        if (!left) break;
        if (wire_now_ms() >= deadline) {
            rc = rl_fail(RL_EIO,
                         "no acknowledgement from the master at %s within %d ms (the "
                         "jobs stay submitted)",
                         c->endpoint, c->o.op_timeout_ms);
            break;
        }
        rc = pump(c, 100);
    }
    /* forget the rejected ones; report the first */
    int n_rej = 0;
    char first[300] = "";
    for (int i = 0; i < c->n_e; i++) {
        entry_t *e = &c->e[i];
        if (e->in_submit && e->rejected && e->state == E_SUBMITTED) {
            if (!n_rej++)
                snprintf(first, sizeof first, "job %" PRIu64 ": %s", e->id,
                         e->reason ? e->reason : "rejected");
            entry_clear_result(e);
            entry_clear_spec(e);
            e->state = E_FREE;
            c->n_outstanding--;
        }
        e->in_submit = 0;
        e->rejected = 0;
    }
    if (n_rej && rc == 0)
        rc = rl_fail(RL_EINVAL, "%d job%s rejected by the master; first: %s", n_rej,
                     n_rej > 1 ? "s" : "", first);
    return rc;
}

int client_fetch(client_t *c, const uint64_t *ids, int n) {
    for (int i = 0; i < n; i++) {
        int k = entry_get(c, ids[i]);
        if (k < 0) return k;
        entry_t *e = &c->e[k];
        if (outstanding(e)) continue;
        entry_clear_result(e);
        entry_clear_spec(e);
        e->state = E_SUBMITTED;
        e->acked = 1; /* nothing to submit: only to ask for */
        c->n_outstanding++;
    }
    /* unregistered, the Welcome asks for them */
    return c->registered ? send_fetch(c, pick_specless) : 0;
}

int client_wait(client_t *c, const uint64_t *ids, int n, int timeout_ms, client_result_fn cb,
                void *ctx) {
    int rc = 0, left = n;
    for (int i = 0; i < n && rc == 0; i++) {
        int k = entry_find(c, ids[i]);
        if (k < 0 || !outstanding(&c->e[k]))
            rc = rl_fail(RL_EINVAL,
                         "job %" PRIu64 " is not outstanding (never submitted, or "
                         "already delivered)",
                         ids[i]);
        else if (c->e[k].waiting)
            rc = rl_fail(RL_EINVAL, "job %" PRIu64 " is listed twice", ids[i]);
        else
            c->e[k].waiting = 1;
    }
    double deadline = timeout_ms < 0 ? 0 : wire_now_ms() + timeout_ms;
    uint64_t seen = c->arrivals - 1; /* scan once before the first pump */
    while (rc == 0 && left > 0) {
        if (seen != c->arrivals) {
            seen = c->arrivals;
            for (int i = 0; i < n && rc == 0; i++) {
                int k = entry_find(c, ids[i]);
                entry_t *e = &c->e[k];
                if (e->state != E_ARRIVED || !e->waiting) continue;
                /* the entry is done with before the callback, which may submit more (and move
                 * the table); the result it gets lives until it returns */
                char *worker = e->worker, *reason = e->reason;
                uint8_t *out = e->out;
                client_result_t r = {
                    e->id,         e->status, e->rkind,   e->attempt,          worker ? worker : "",
                    e->elapsed_ms, out,       e->out_len, reason ? reason : ""};
                e->worker = e->reason = NULL;
                e->out = NULL;
                e->out_len = 0;
                entry_clear_spec(e);
                e->state = E_DELIVERED;
                e->waiting = 0;
                c->n_outstanding--;
                left--;
                int cr = cb ? cb(ctx, &r) : 0;
                free(worker);
                free(reason);
                free(out);
                if (cr < 0) rc = cr;
            }
        }
        if (rc < 0 || left == 0) break;
        double now = wire_now_ms();
        if (timeout_ms >= 0 && now >= deadline) {
            rc = rl_fail(RL_ERANGE, "timed out: %d of %d jobs not finished", left, n);
            break;
        }
        int t = timeout_ms < 0 || deadline - now > 1000 ? 1000 : (int)(deadline - now) + 1;
        rc = pump(c, t);
    }
    for (int i = 0; i < n; i++) {
        int k = entry_find(c, ids[i]);
        if (k >= 0) c->e[k].waiting = 0;
    }
    return rc;
}

/* ---- runs ------------------------------------------------------------------------------------ */

/* Sends the run request in env and waits for its reply (see client.h). */
static int run_request(client_t *c, Rlhf__Envelope *env, uint64_t *req_id_field,
                       Rlhf__RunReply **out, int timeout_ms) {
    if (!out) return rl_fail(RL_EINVAL, "client: no place for the run reply");
    *out = NULL;
    if (c->run_reply) rlhf__run_reply__free_unpacked(c->run_reply, NULL);
    c->run_reply = NULL;
    c->run_req = *req_id_field = ++c->req_seq;
    if (timeout_ms < 0) timeout_ms = c->o.op_timeout_ms;
    double deadline = wire_now_ms() + timeout_ms, last_sent = -1e18;
    uint64_t regs = c->st.registrations;
    int rc = 0;
    while (rc == 0 && !c->run_reply) {
        double now = wire_now_ms();
        /* registered: sent now, after each new Welcome (a new master, or one that forgot us,
         * never saw it) and every second (a message lost on a dropped connection) */
        if (c->registered && (regs != c->st.registrations || now - last_sent >= 1000)) {
            regs = c->st.registrations;
            csend(c, env); /* a send that fails is made again by the same rules */
            last_sent = now;
        }
        if (now >= deadline) {
            rc = rl_fail(RL_ERANGE, "no answer from the master at %s within %d ms", c->endpoint,
                         timeout_ms);
            break;
        }
        int t = (int)(deadline - now) + 1;
        rc = pump(c, t > 100 ? 100 : t);
    }
    c->run_req = 0;
    if (rc == 0) {
        *out = c->run_reply;
        c->run_reply = NULL;
    }
    return rc;
}

int client_run_submit(client_t *c, const char *name, const char *plan_json, Rlhf__RunReply **out,
                      int timeout_ms) {
    if (!c || !name || !name[0] || !plan_json)
        return rl_fail(RL_EINVAL, "client_run_submit: a name and a plan are required");
    if (strlen(plan_json) > WIRE_MAX_ENVELOPE - 4096)
        return rl_fail(RL_ERANGE, "client_run_submit: the plan exceeds the message limit");
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__RunSubmit m = RLHF__RUN_SUBMIT__INIT;
    m.name = (char *)name;
    m.plan_json = (char *)plan_json;
    env.body_case = RLHF__ENVELOPE__BODY_RUN_SUBMIT;
    env.run_submit = &m;
    return run_request(c, &env, &m.request_id, out, timeout_ms);
}

int client_run_query(client_t *c, const char *name, int want_log, uint64_t log_offset,
                     Rlhf__RunReply **out, int timeout_ms) {
    if (!c) return rl_fail(RL_EINVAL, "client_run_query: no client");
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__RunQuery m = RLHF__RUN_QUERY__INIT;
    m.name = (char *)(name ? name : "");
    m.want_log = want_log != 0;
    m.log_offset = log_offset;
    env.body_case = RLHF__ENVELOPE__BODY_RUN_QUERY;
    env.run_query = &m;
    return run_request(c, &env, &m.request_id, out, timeout_ms);
}

int client_run_cancel(client_t *c, const char *name, Rlhf__RunReply **out, int timeout_ms) {
    if (!c || !name || !name[0]) return rl_fail(RL_EINVAL, "client_run_cancel: a name is required");
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__RunCancel m = RLHF__RUN_CANCEL__INIT;
    m.name = (char *)name;
    env.body_case = RLHF__ENVELOPE__BODY_RUN_CANCEL;
    env.run_cancel = &m;
    return run_request(c, &env, &m.request_id, out, timeout_ms);
}

const char *client_blob_endpoint(client_t *c, int timeout_ms) {
    double end = wire_now_ms() + timeout_ms;
    while (!c->registered && wire_now_ms() < end)
        if (pump(c, (int)(end - wire_now_ms()) > 100 ? 100 : (int)(end - wire_now_ms())) < 0) break;
    if (!c->registered) {
        rl_fail(RL_EIO, "master %s: no answer in %d ms", c->endpoint, timeout_ms);
        return NULL;
    }
    if (!c->blob_ep[0]) {
        rl_fail(RL_EUNSUPPORTED, "master %s serves no artifacts", c->endpoint);
        return NULL;
    }
    return c->blob_ep;
}

int client_outstanding(const client_t *c) {
    return c->n_outstanding;
}

const char *client_master_id(const client_t *c) {
    return c->master_id;
}

void client_stats(const client_t *c, client_stats_t *st) {
    *st = c->st;
}

void client_close(client_t **cp) {
    client_t *c = cp ? *cp : NULL;
    if (!c) return;
    if (c->sock) {
        Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
        Rlhf__Goodbye gb = RLHF__GOODBYE__INIT;
        gb.reason = "client closing";
        env.body_case = RLHF__ENVELOPE__BODY_GOODBYE;
        env.goodbye = &gb;
        csend(c, &env);
        sock_close(c, 200); /* the goodbye gets a moment, never more */
    }
    if (c->zctx) zmq_ctx_term(c->zctx);
    for (int i = 0; i < c->n_e; i++) {
        entry_clear_result(&c->e[i]);
        entry_clear_spec(&c->e[i]);
    }
    if (c->run_reply) rlhf__run_reply__free_unpacked(c->run_reply, NULL);
    free(c->e);
    free(c->index);
    free(c);
    *cp = NULL;
}
