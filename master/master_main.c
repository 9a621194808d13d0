/*
 * master_main.c - rlhf-master: owns a run, schedules its jobs over ZeroMQ, serves HTTP status.
 *
 *   rlhf-master [--config run.yaml] [--set key=value]... [--bind EP] [--run-dir DIR]
 *               [--jobs FILE] [--http-port N]
 *
 * One single-threaded libuv loop drives everything. The ROUTER socket is integrated through
 * ZMQ_FD, which is edge-triggered: it becomes readable when ZMQ_EVENTS *may* have changed, and
 * any zmq_send/zmq_recv can consume that edge. So the loop never trusts the fd alone: every drain
 * re-checks ZMQ_EVENTS until ZMQ_POLLIN is clear, and a uv_prepare handle re-checks it once more
 * right before the loop blocks (after timers, HTTP callbacks or anything else that sent). A
 * drain handles at most DRAIN_BATCH messages, then lets HTTP run; a uv_idle handle, active only
 * while messages are left, keeps the loop from blocking until they are drained.
 *
 * Results are appended to RUN_DIR/results.jsonl (one line per job, fsync'ed before anything
 * else happens); on start the file is read back so a restarted master never runs or records a
 * finished job again. RUN_DIR/master.json gives the bound endpoint and HTTP port and the pid.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>
#include <zmq.h>

#include "err.h"
#include "fs.h"
#include "master.h"

#define DRAIN_BATCH 512

static void mlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void mlog(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    wire_logv("master", fmt, ap);
    va_end(ap);
}

static void sched_log(void *ctx, const char *fmt, ...) {
    (void)ctx;
    va_list ap;
    va_start(ap, fmt);
    wire_logv("master", fmt, ap);
    va_end(ap);
}

static const char *kind_name(int k) {
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
    default:
        return "unknown";
    }
}

/* ---- sending ------------------------------------------------------------------------------ */

/* Sends to one peer without blocking. With ZMQ_ROUTER_MANDATORY a vanished peer is an error
 * (EHOSTUNREACH) instead of a silent drop, and a full pipe is EAGAIN: either way the caller
 * learns the worker cannot be reached. Returns 0 or -1. */
static int msend(master_t *m, const uint8_t *rid, size_t rid_len, Rlhf__Envelope *env) {
    if (wire_send(m->router, rid, rid_len, env, NULL, NULL, 0, ZMQ_DONTWAIT) < 0) {
        m->n_send_fail++;
        return -1;
    }
    m->n_sent++;
    return 0;
}

static void send_error(master_t *m, const uint8_t *rid, size_t rid_len, int code,
                       const char *text) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Error er = RLHF__ERROR__INIT;
    er.code = code;
    er.message = (char *)text;
    env.body_case = RLHF__ENVELOPE__BODY_ERROR;
    env.error = &er;
    msend(m, rid, rid_len, &env);
}

/* ---- results -------------------------------------------------------------------------------- */

/* Appends one record and fsyncs it before returning: once a result is acknowledged in memory it
 * is on disk, so a restarted master never hands the job out again. */
static int results_append(master_t *m, json_t *rec) {
    char *line = json_dumps(rec, JSON_COMPACT);
    json_decref(rec);
    if (!line) return rl_fail(RL_ENOMEM, "results: cannot format a record");
    int rc = 0;
    if (fprintf(m->results, "%s\n", line) < 0 || fflush(m->results) != 0 ||
        fdatasync(fileno(m->results)) != 0)
        rc = rl_fail(RL_EIO, "%s: %s", m->results_path, strerror(errno));
    free(line);
    if (rc == 0) m->n_results_recorded++;
    return rc;
}

/* Reads back the results of an earlier master of this run: those jobs are done. A torn last
 * line (a crash mid-write) is ignored, and a newline is added so the next record starts clean. */
static int results_open(master_t *m) {
    snprintf(m->results_path, sizeof m->results_path, "%s/results.jsonl", m->cfg.run_dir);
    FILE *f = fopen(m->results_path, "r");
    int last_nl = 1, n = 0;
    if (f) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t len;
        while ((len = getline(&line, &cap, f)) > 0) {
            last_nl = line[len - 1] == '\n';
            json_t *o = json_loads(line, 0, NULL);
            json_t *id = o ? json_object_get(o, "job_id") : NULL;
            if (json_is_integer(id) &&
                sched_job_mark_done(&m->sched, (uint64_t)json_integer_value(id)) == 0)
                n++;
            json_decref(o);
        }
        free(line);
        fclose(f);
    }
    m->results = fopen(m->results_path, "a");
    if (!m->results) return rl_fail(RL_EIO, "%s: %s", m->results_path, strerror(errno));
    if (!last_nl) fputc('\n', m->results);
    if (n) mlog("%d jobs already done in %s", n, m->results_path);
    return 0;
}

/* ---- jobs file ------------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* One JSONL line: {"id", "kind": "generate"|"noop", "seed"?, "lease_ms"?, "model", "prompt",
 * "max_new_tokens", "delay_ms"?}. */
static int job_from_json(master_t *m, json_t *o, const char *where) {
    json_t *jid = json_object_get(o, "id"), *jk = json_object_get(o, "kind");
    if (!json_is_integer(jid) || json_integer_value(jid) <= 0)
        return rl_fail(RL_EINVAL, "%s: id: a positive integer is required", where);
    uint64_t id = (uint64_t)json_integer_value(jid);
    const char *ks = json_is_string(jk) ? json_string_value(jk) : "";
    json_t *js = json_object_get(o, "seed"), *jl = json_object_get(o, "lease_ms");
    /* 63 bits: the seed stays a non-negative integer in JSON */
    uint64_t seed = json_is_integer(js) ? (uint64_t)json_integer_value(js)
                                        : mix64(m->cfg.seed ^ mix64(id)) >> 1;
    uint32_t lease =
        json_is_integer(jl) ? (uint32_t)json_integer_value(jl) : (uint32_t)m->cfg.lease_ms;
    if (!strcmp(ks, "noop"))
        return sched_job_add(&m->sched, id, RLHF__JOB_KIND__JOB_KIND_NOOP, seed, NULL, 0, lease);
    if (strcmp(ks, "generate"))
        return rl_fail(RL_EINVAL, "%s: kind: '%s' is not generate or noop", where, ks);
    Rlhf__GenerateSpec sp = RLHF__GENERATE_SPEC__INIT;
    json_t *jm = json_object_get(o, "model"), *jp = json_object_get(o, "prompt");
    json_t *jn = json_object_get(o, "max_new_tokens"), *jd = json_object_get(o, "delay_ms");
    if (!json_is_string(jm) || !json_is_array(jp) || !json_array_size(jp) || !json_is_integer(jn))
        return rl_fail(RL_EINVAL, "%s: generate needs model, prompt (non-empty) and max_new_tokens",
                       where);
    size_t n = json_array_size(jp);
    int32_t *prompt = malloc(n * sizeof *prompt);
    if (!prompt) return rl_fail(RL_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) prompt[i] = (int32_t)json_integer_value(json_array_get(jp, i));
    sp.model_dir = (char *)json_string_value(jm);
    sp.prompt = prompt;
    sp.n_prompt = n;
    sp.max_new_tokens = (uint32_t)json_integer_value(jn);
    sp.delay_ms = json_is_integer(jd) ? (uint32_t)json_integer_value(jd) : 0;
    /* sampling (optional): K samples per prompt with their logprobs */
    json_t *jk2 = json_object_get(o, "n_samples"), *jt = json_object_get(o, "temperature");
    json_t *jtk = json_object_get(o, "top_k"), *jtp = json_object_get(o, "top_p");
    json_t *je = json_object_get(o, "eot"), *jv = json_object_get(o, "vocab_limit");
    json_t *jb = json_object_get(o, "sample_base");
    sp.n_samples = json_is_integer(jk2) ? (uint32_t)json_integer_value(jk2) : 0;
    sp.temperature = json_is_number(jt) ? (float)json_number_value(jt) : 1.0f;
    sp.top_k = json_is_integer(jtk) ? (uint32_t)json_integer_value(jtk) : 0;
    sp.top_p = json_is_number(jtp) ? (float)json_number_value(jtp) : 1.0f;
    sp.eot = json_is_integer(je) ? (int32_t)json_integer_value(je) : -1;
    sp.vocab_limit = json_is_integer(jv) ? (uint32_t)json_integer_value(jv) : 0;
    sp.sample_base = json_is_integer(jb) ? (uint64_t)json_integer_value(jb) : 0;
    size_t len = rlhf__generate_spec__get_packed_size(&sp);
    uint8_t *buf = malloc(len ? len : 1);
    int rc = buf ? 0 : rl_fail(RL_ENOMEM, "out of memory");
    if (buf) {
        rlhf__generate_spec__pack(&sp, buf);
        rc = sched_job_add(&m->sched, id, RLHF__JOB_KIND__JOB_KIND_GENERATE, seed, buf, len, lease);
    }
    free(buf);
    free(prompt);
    return rc < 0 ? rl_fail_ctx(rc, "%s: ", where) : rc;
}

static int jobs_load(master_t *m, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return rl_fail(RL_ENOTFOUND, "%s: %s", path, strerror(errno));
    char *line = NULL, where[8192];
    size_t cap = 0;
    int lineno = 0, rc = 0;
    while (rc >= 0 && getline(&line, &cap, f) > 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == strlen(line)) continue;
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        rc = o ? job_from_json(m, o, where) : rl_fail(RL_EFORMAT, "%s: %s", where, je.text);
        json_decref(o);
    }
    free(line);
    fclose(f);
    return rc < 0 ? rc : 0;
}

/* ---- dispatch ------------------------------------------------------------------------------- */

static void dispatch_all(master_t *m) {
    int j, w;
    double now = wire_now_ms();
    while (sched_dispatch(&m->sched, now, &j, &w)) {
        sched_job_t *jb = &m->sched.jobs[j];
        sched_worker_t *wk = &m->sched.workers[w];
        Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
        Rlhf__JobAssign a = RLHF__JOB_ASSIGN__INIT;
        a.job_id = jb->id;
        a.kind = jb->kind;
        a.attempt = jb->attempt;
        a.lease_id = jb->lease_id;
        a.lease_ms = jb->lease_ms;
        a.seed = jb->seed;
        a.payload.data = jb->payload;
        a.payload.len = jb->payload_len;
        env.body_case = RLHF__ENVELOPE__BODY_JOB_ASSIGN;
        env.job_assign = &a;
        if (msend(m, wk->rid, wk->rid_len, &env) < 0) {
            /* EHOSTUNREACH (gone) or EAGAIN (its pipe is full): either way not a worker we can
             * use now; it re-registers when it hears from us again */
            sched_worker_dead(&m->sched, w, errno == EAGAIN ? "send queue full" : "unreachable");
        } else {
            mlog("job %" PRIu64 " attempt %u -> %s", jb->id, jb->attempt, wk->id);
        }
    }
}

static int all_finished(master_t *m) {
    return m->sched.n_jobs > 0 && sched_count(&m->sched, SCHED_QUEUED) == 0 &&
           sched_count(&m->sched, SCHED_LEASED) == 0;
}

static void master_stop(master_t *m, const char *why) {
    if (m->stopping) return;
    m->stopping = 1;
    mlog("stopping: %s", why);
    uv_stop(m->loop);
}

/* ---- message handling ----------------------------------------------------------------------- */

static void count_bad(master_t *m, int cls, const wire_msg_t *msg, const char *detail) {
    uint64_t n = ++m->n_bad[cls];
    /* log the first few of each class, then every 1000th: a flood must not flood the log */
    if (n <= 10 || n % 1000 == 0)
        mlog("bad message #%" PRIu64 " (%s, %zu bytes, %d frames): %s", n,
             cls == MASTER_BAD_UNEXPECTED ? "unexpected" : wire_bad_name((wire_bad_t)cls),
             wire_frame_size(msg, 0), msg->n_frames, detail);
}

static void on_hello(master_t *m, const wire_msg_t *msg, const Rlhf__Hello *h) {
    uint32_t caps = 0;
    for (size_t i = 0; i < h->n_capabilities; i++)
        if (h->capabilities[i] > 0 && h->capabilities[i] < 32) caps |= 1u << h->capabilities[i];
    if (h->role == RLHF__ROLE__ROLE_TOOL) caps = 0; /* diagnostics peers never get jobs */
    const char *id = h->worker_id && h->worker_id[0] ? h->worker_id : "anonymous";
    double now = wire_now_ms();
    int w = sched_worker_add(&m->sched, msg->rid, msg->rid_len, id, h->role, caps, h->pid, now);
    if (w < 0) return;
    /* still busy with a job (of an earlier master, or one whose lease we ended): no work for it
     * until it reports that job finished, or every assignment would come back "busy" and burn
     * an attempt of the job */
    sched_worker_seen(&m->sched, w, now, h->job_id, h->job_attempt);
    m->n_registrations++;
    if (h->role != RLHF__ROLE__ROLE_TOOL)
        mlog("worker %s registered (role %d, pid %d, version %s)", id, h->role, h->pid,
             h->version ? h->version : "?");
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Welcome wl = RLHF__WELCOME__INIT;
    wl.master_id = m->master_id;
    wl.heartbeat_ms = (uint32_t)m->cfg.heartbeat_ms;
    wl.liveness = (uint32_t)m->cfg.liveness;
    env.body_case = RLHF__ENVELOPE__BODY_WELCOME;
    env.welcome = &wl;
    if (msend(m, msg->rid, msg->rid_len, &env) < 0) sched_worker_dead(&m->sched, w, "unreachable");
    dispatch_all(m);
}

static json_t *output_json(int kind, const ProtobufCBinaryData *payload) {
    json_t *o = json_object();
    if (kind == RLHF__JOB_KIND__JOB_KIND_GENERATE) {
        Rlhf__GenerateOutput *g = rlhf__generate_output__unpack(NULL, payload->len, payload->data);
        if (!g) {
            json_decref(o);
            return NULL;
        }
        json_t *t = json_array();
        for (size_t i = 0; i < g->n_tokens; i++)
            json_array_append_new(t, json_integer(g->tokens[i]));
        json_object_set_new(o, "tokens", t);
        if (g->n_completions) {
            json_t *cs = json_array();
            for (size_t c = 0; c < g->n_completions; c++) {
                const Rlhf__Completion *cp = g->completions[c];
                json_t *ct = json_array(), *cl = json_array();
                for (size_t i = 0; i < cp->n_tokens; i++)
                    json_array_append_new(ct, json_integer(cp->tokens[i]));
                for (size_t i = 0; i < cp->n_logprobs; i++)
                    json_array_append_new(cl, json_real(cp->logprobs[i]));
                json_array_append_new(cs, json_pack("{s:o, s:o, s:i}", "tokens", ct, "logprobs",
                                                    cl, "finish", (int)cp->finish));
            }
            json_object_set_new(o, "completions", cs);
        }
        rlhf__generate_output__free_unpacked(g, NULL);
    }
    return o;
}

static void on_result(master_t *m, const wire_msg_t *msg, int w, const Rlhf__JobResult *r) {
    int j = sched_job_find(&m->sched, r->job_id);
    json_t *out = NULL;
    /* decode before accepting: an undecodable output is the worker's failure, not a result */
    if (j >= 0 && m->sched.jobs[j].state == SCHED_LEASED && m->sched.jobs[j].worker == w &&
        m->sched.jobs[j].lease_id == r->lease_id) {
        out = output_json(m->sched.jobs[j].kind, &r->payload);
        if (!out) {
            count_bad(m, WIRE_BAD_MALFORMED, msg, "undecodable job output");
            sched_reject(&m->sched, w, r->job_id, r->attempt, r->lease_id);
            dispatch_all(m);
            return;
        }
    }
    sched_verdict_t v = sched_result(&m->sched, w, r->job_id, r->attempt, r->lease_id);
    if (v != SCHED_ACCEPTED) {
        json_decref(out);
        mlog("dropped result of job %" PRIu64 " attempt %u from %s: %s", r->job_id, r->attempt,
             w >= 0 ? m->sched.workers[w].id : "an unregistered peer",
             v == SCHED_STALE       ? "stale lease"
             : v == SCHED_DUPLICATE ? "already done"
                                    : "no such job");
        if (w < 0)
            send_error(m, msg->rid, msg->rid_len, RLHF__ERROR_CODE__ERROR_CODE_NOT_REGISTERED,
                       "register first");
        else
            dispatch_all(m); /* the worker is free now, whatever became of its old job */
        return;
    }
    sched_job_t *jb = &m->sched.jobs[j];
    json_object_set_new(out, "job_id", json_integer((json_int_t)jb->id));
    json_object_set_new(out, "kind", json_string(kind_name(jb->kind)));
    json_object_set_new(out, "status", json_string("done"));
    json_object_set_new(out, "attempt", json_integer(jb->attempt));
    json_object_set_new(out, "seed", json_integer((json_int_t)jb->seed));
    json_object_set_new(out, "worker", json_string(m->sched.workers[w].id));
    json_object_set_new(out, "latency_ms", json_real(wire_now_ms() - jb->dispatched_ms));
    json_object_set_new(out, "elapsed_ms", json_real(r->elapsed_ms));
    if (results_append(m, out) < 0) {
        /* not durable: we cannot promise exactly-once any more */
        mlog("cannot record a result: %s", rl_errmsg());
        master_stop(m, "results file not writable");
        return;
    }
    mlog("job %" PRIu64 " attempt %u done by %s", jb->id, jb->attempt, m->sched.workers[w].id);
    dispatch_all(m);
}

static void record_failures(master_t *m) {
    /* failed jobs are recorded too, once: their line says so */
    static uint64_t recorded_failed;
    if (m->sched.n_failed == recorded_failed) return;
    for (int j = 0; j < m->sched.n_jobs; j++) {
        sched_job_t *jb = &m->sched.jobs[j];
        if (jb->state != SCHED_FAILED || jb->lease_ms == 0) continue;
        json_t *o = json_pack("{s:I, s:s, s:s, s:i}", "job_id", (json_int_t)jb->id, "kind",
                              kind_name(jb->kind), "status", "failed", "attempt", jb->attempt);
        if (results_append(m, o) < 0) mlog("cannot record a failure: %s", rl_errmsg());
        jb->lease_ms = 0; /* marks "failure recorded" */
    }
    recorded_failed = m->sched.n_failed;
}

static void handle(master_t *m, wire_msg_t *msg) {
    Rlhf__Envelope *env = NULL;
    wire_bad_t bad = wire_decode(msg, &env);
    m->n_recv++;
    if (bad != WIRE_OK) {
        count_bad(m, bad, msg, "refused");
        if (bad == WIRE_BAD_VERSION)
            send_error(m, msg->rid, msg->rid_len, RLHF__ERROR_CODE__ERROR_CODE_BAD_VERSION,
                       "protocol version mismatch");
        return;
    }
    double now = wire_now_ms();
    int w = sched_worker_find(&m->sched, msg->rid, msg->rid_len);
    switch (env->body_case) {
    case RLHF__ENVELOPE__BODY_HELLO:
        on_hello(m, msg, env->hello);
        break;
    case RLHF__ENVELOPE__BODY_HEARTBEAT:
        if (w < 0)
            send_error(m, msg->rid, msg->rid_len, RLHF__ERROR_CODE__ERROR_CODE_NOT_REGISTERED,
                       "register first");
        else
            sched_worker_seen(&m->sched, w, now, env->heartbeat->job_id,
                              env->heartbeat->job_attempt);
        break;
    case RLHF__ENVELOPE__BODY_JOB_RESULT:
        if (w >= 0) sched_worker_seen(&m->sched, w, now, 0, 0);
        on_result(m, msg, w, env->job_result);
        break;
    case RLHF__ENVELOPE__BODY_JOB_REJECT: {
        const Rlhf__JobReject *r = env->job_reject;
        sched_verdict_t v = sched_reject(&m->sched, w, r->job_id, r->attempt, r->lease_id);
        mlog("job %" PRIu64 " attempt %u %s by %s (%d: %s)%s", r->job_id, r->attempt,
             r->code ? "rejected" : "handed back", w >= 0 ? m->sched.workers[w].id : "?", r->code,
             r->reason ? r->reason : "", v == SCHED_ACCEPTED ? "" : " - ignored, not its lease");
        record_failures(m);
        dispatch_all(m);
        break;
    }
    case RLHF__ENVELOPE__BODY_GOODBYE:
        if (w >= 0) sched_worker_dead(&m->sched, w, "said goodbye");
        record_failures(m);
        dispatch_all(m);
        break;
    case RLHF__ENVELOPE__BODY_PING: {
        Rlhf__Envelope out = RLHF__ENVELOPE__INIT;
        Rlhf__Pong pong = RLHF__PONG__INIT;
        pong.nonce = env->ping->nonce;
        pong.sent_ns = env->ping->sent_ns;
        out.body_case = RLHF__ENVELOPE__BODY_PONG;
        out.pong = &pong;
        msend(m, msg->rid, msg->rid_len, &out);
        break;
    }
    case RLHF__ENVELOPE__BODY_ERROR:
        mlog("error from %s: %d %s", w >= 0 ? m->sched.workers[w].id : "a peer", env->error->code,
             env->error->message);
        break;
    default: /* Welcome, JobAssign, Shutdown, Pong: the master sends these, never receives them */
        count_bad(m, MASTER_BAD_UNEXPECTED, msg, "a message only the master sends");
        send_error(m, msg->rid, msg->rid_len, RLHF__ERROR_CODE__ERROR_CODE_BAD_MESSAGE,
                   "unexpected message");
        break;
    }
    rlhf__envelope__free_unpacked(env, NULL);
}

/* Reads and handles messages until ZMQ_EVENTS has no POLLIN, or DRAIN_BATCH of them (then the
 * idle handle keeps the loop spinning so HTTP interleaves with a long backlog). Every send made
 * while handling can consume the fd's edge; re-reading ZMQ_EVENTS each round covers that. */
static void on_zidle(uv_idle_t *h);

static void drain(master_t *m) {
    if (m->draining) return; /* re-entered from a send inside handle(): the outer loop goes on */
    m->draining = 1;
    int n = 0, more = 0;
    for (;;) {
        int ev = 0;
        size_t sz = sizeof ev;
        if (zmq_getsockopt(m->router, ZMQ_EVENTS, &ev, &sz) < 0 || !(ev & ZMQ_POLLIN)) break;
        if (n == DRAIN_BATCH) {
            more = 1;
            break;
        }
        wire_msg_t msg;
        int rc = wire_recv(m->router, 1, &msg, ZMQ_DONTWAIT);
        if (rc <= 0) break;
        handle(m, &msg);
        wire_msg_free(&msg);
        n++;
    }
    m->draining = 0;
    if (more && !uv_is_active((uv_handle_t *)&m->zidle)) uv_idle_start(&m->zidle, on_zidle);
    if (!more && uv_is_active((uv_handle_t *)&m->zidle)) uv_idle_stop(&m->zidle);
    if (m->cfg.exit_when_done && all_finished(m)) master_stop(m, "all jobs finished");
}

static void on_zpoll(uv_poll_t *h, int status, int events) {
    (void)status;
    (void)events;
    drain(h->data);
}
static void on_zprep(uv_prepare_t *h) {
    drain(h->data);
}
static void on_zidle(uv_idle_t *h) {
    drain(h->data);
}

/* ---- cron ----------------------------------------------------------------------------------- */

/*
 * The cron timer, every heartbeat interval. Its duties, all of them:
 *   1. send a Heartbeat (with our master id) to every live worker;
 *   2. sched_tick: declare workers silent for heartbeat_ms * liveness dead and requeue their
 *      leases; requeue leases past their deadline (attempt + 1 at the next dispatch);
 *   3. record jobs that ran out of attempts as failed in results.jsonl;
 *   4. dispatch queued jobs to idle workers;
 *   5. stop the master when exit_when_done is set and every job is finished.
 * ZMQ_EVENTS is re-checked after these sends by the uv_prepare handle before the loop blocks.
 */
static void on_cron(uv_timer_t *t) {
    master_t *m = t->data;
    double now = wire_now_ms();
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Heartbeat hb = RLHF__HEARTBEAT__INIT;
    hb.master_id = m->master_id;
    env.body_case = RLHF__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    for (int w = 0; w < m->sched.n_workers; w++) {
        sched_worker_t *wk = &m->sched.workers[w];
        if (wk->alive && msend(m, wk->rid, wk->rid_len, &env) < 0 && errno == EHOSTUNREACH)
            sched_worker_dead(&m->sched, w, "connection gone");
    }
    sched_tick(&m->sched, now, (double)m->cfg.heartbeat_ms * m->cfg.liveness);
    record_failures(m);
    dispatch_all(m);
    if (m->cfg.exit_when_done && all_finished(m)) master_stop(m, "all jobs finished");
}

static void on_signal(uv_signal_t *s, int sig) {
    master_stop(s->data, sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- setup ---------------------------------------------------------------------------------- */

static int zsetup(master_t *m) {
    m->zctx = zmq_ctx_new();
    m->router = m->zctx ? zmq_socket(m->zctx, ZMQ_ROUTER) : NULL;
    if (!m->router) return rl_fail(RL_EIO, "zmq_socket: %s", zmq_strerror(errno));
    int one = 1, linger = 1000, hwm = 20000;
    int64_t maxmsg = m->cfg.max_msg_bytes;
    /* ROUTER_MANDATORY: a send to a peer that is not connected fails with EHOSTUNREACH (and a
     * full pipe with EAGAIN) instead of being dropped silently - that is how a vanished worker
     * is noticed at once and its lease requeued. */
    zmq_setsockopt(m->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    /* MAXMSGSIZE: a peer sending a frame larger than this is disconnected by libzmq before the
     * frame is allocated - bulk tensors travel in bounded chunks, so nothing legitimate is
     * bigger. (Envelopes have their own, smaller, application limit: WIRE_MAX_ENVELOPE.) */
    zmq_setsockopt(m->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    /* LINGER: at exit, unsent messages get at most 1 s; the master never hangs on a dead peer. */
    zmq_setsockopt(m->router, ZMQ_LINGER, &linger, sizeof linger);
    /* HWMs: room for bursts (heartbeats of many workers, a burst of pings) per peer. */
    zmq_setsockopt(m->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(m->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_bind(m->router, m->cfg.bind) < 0)
        return rl_fail(RL_EIO, "bind %s: %s", m->cfg.bind, zmq_strerror(errno));
    size_t sz = sizeof m->endpoint;
    zmq_getsockopt(m->router, ZMQ_LAST_ENDPOINT, m->endpoint, &sz);
    int fd;
    sz = sizeof fd;
    zmq_getsockopt(m->router, ZMQ_FD, &fd, &sz);
    uv_poll_init(m->loop, &m->zpoll, fd);
    m->zpoll.data = m;
    uv_poll_start(&m->zpoll, UV_READABLE, on_zpoll);
    uv_prepare_init(m->loop, &m->zprep);
    m->zprep.data = m;
    uv_prepare_start(&m->zprep, on_zprep);
    uv_idle_init(m->loop, &m->zidle);
    m->zidle.data = m;
    m->zhandles = 1;
    return 0;
}

static int write_master_json(master_t *m) {
    char path[4200];
    snprintf(path, sizeof path, "%s/master.json", m->cfg.run_dir);
    json_t *o = json_pack("{s:i, s:s, s:s, s:i, s:s}", "pid", (int)getpid(), "endpoint",
                          m->endpoint, "http_host", m->cfg.http_host, "http_port", m->http_port,
                          "master_id", m->master_id);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    int rc = s ? fs_write_atomic(path, s, strlen(s)) : RL_ENOMEM;
    free(s);
    if (rc < 0) return rc;
    snprintf(path, sizeof path, "%s/config.json", m->cfg.run_dir);
    o = cfg_to_json(&m->cfg);
    s = json_dumps(o, JSON_INDENT(2));
    json_decref(o);
    rc = s ? fs_write_atomic(path, s, strlen(s)) : RL_ENOMEM;
    free(s);
    return rc;
}

static const char usage_text[] =
    "usage: rlhf-master [--config FILE] [--set KEY=VALUE]... [--bind EP] [--run-dir DIR]\n"
    "                   [--jobs FILE] [--http-port N] [--heartbeat-ms N] [--liveness N]\n"
    "                   [--lease-ms N] [--exit-when-done]\n\n"
    "Runs the master of one run: the job queue, the worker registry, HTTP status.\n"
    "Options other than --config are shorthands for --set of the config keys (master.bind,\n"
    "run_dir, jobs, master.http_port, ...); they apply in order after the file.\n";

int main(int argc, char **argv) {
    static master_t M;
    master_t *m = &M;
    cfg_defaults(&m->cfg);
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"set", required_argument, 0, 's'},
                                         {"bind", required_argument, 0, 'b'},
                                         {"run-dir", required_argument, 0, 'r'},
                                         {"jobs", required_argument, 0, 'j'},
                                         {"http-port", required_argument, 0, 'p'},
                                         {"heartbeat-ms", required_argument, 0, 'H'},
                                         {"liveness", required_argument, 0, 'L'},
                                         {"lease-ms", required_argument, 0, 'l'},
                                         {"exit-when-done", no_argument, 0, 'x'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    /* the config file first, whatever its position, so that every other option overrides it */
    for (int i = 1; i < argc; i++) {
        const char *file = !strcmp(argv[i], "--config") && i + 1 < argc ? argv[++i]
                           : !strncmp(argv[i], "--config=", 9)          ? argv[i] + 9
                                                                        : NULL;
        if (file && cfg_load_yaml(&m->cfg, file) < 0) {
            fprintf(stderr, "rlhf-master: %s\n", rl_errmsg());
            return 2;
        }
    }
    int c, rc = 0;
    char kv[1400];
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        const char *key = NULL;
        switch (c) {
        case 'c':
            continue;
        case 's':
            rc = cfg_set_kv(&m->cfg, optarg);
            break;
        case 'b':
            key = "master.bind";
            break;
        case 'r':
            key = "run_dir";
            break;
        case 'j':
            key = "jobs";
            break;
        case 'p':
            key = "master.http_port";
            break;
        case 'H':
            key = "master.heartbeat_ms";
            break;
        case 'L':
            key = "master.liveness";
            break;
        case 'l':
            key = "master.lease_ms";
            break;
        case 'x':
            rc = cfg_set(&m->cfg, "master.exit_when_done", "true", "--exit-when-done");
            break;
        case 'h':
            fputs(usage_text, stdout);
            return 0;
        default:
            fputs(usage_text, stderr);
            return 2;
        }
        if (key) {
            snprintf(kv, sizeof kv, "%s=%s", key, optarg);
            rc = cfg_set_kv(&m->cfg, kv);
        }
        if (rc < 0) {
            fprintf(stderr, "rlhf-master: %s\n", rl_errmsg());
            return 2;
        }
    }
    if (optind < argc) {
        fputs(usage_text, stderr);
        return 2;
    }
    uint8_t rnd[8] = {0};
    if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd) { /* fall back: time and pid differ */
        uint64_t t = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        memcpy(rnd, &t, sizeof rnd);
    }
    uint64_t r64;
    memcpy(&r64, rnd, sizeof r64);
    snprintf(m->master_id, sizeof m->master_id, "%016" PRIx64, r64);
    /* lease ids: the high half changes per master start, so no two masters of a run agree */
    sched_init(&m->sched, (uint32_t)m->cfg.max_attempts, r64 & 0xFFFFFFFF00000000ULL);
    m->sched.log = sched_log;
    m->start_ms = wire_now_ms();
    m->start_unix = (double)time(NULL);
    m->loop = uv_default_loop();
    signal(SIGPIPE, SIG_IGN);
    /* every worker is a TCP connection (and libzmq adds fds of its own): a soft limit of 1024
     * would cap the master below the 1,000 workers it is sized for */
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
    uv_timer_init(m->loop, &m->cron);
    m->cron.data = m;
    uv_signal_init(m->loop, &m->sigterm);
    uv_signal_init(m->loop, &m->sigint);
    m->sigterm.data = m->sigint.data = m;
    if ((rc = fs_mkdir_p(m->cfg.run_dir)) < 0 ||
        (m->cfg.jobs[0] && (rc = jobs_load(m, m->cfg.jobs)) < 0) || (rc = results_open(m)) < 0 ||
        (rc = zsetup(m)) < 0 ||
        (m->cfg.http_port >= 0 &&
         (rc = master_http_start(m, m->cfg.http_host, m->cfg.http_port)) < 0) ||
        (rc = write_master_json(m)) < 0) {
        fprintf(stderr, "rlhf-master: %s\n", rl_errmsg());
        rc = 1;
        goto out;
    }
    mlog("%s listening on %s, http %s:%d, run %s, %d jobs (%d queued), id %s", argv[0], m->endpoint,
         m->cfg.http_host, m->http_port, m->cfg.run_dir, m->sched.n_jobs,
         sched_count(&m->sched, SCHED_QUEUED), m->master_id);
    uv_timer_start(&m->cron, on_cron, (uint64_t)m->cfg.heartbeat_ms, (uint64_t)m->cfg.heartbeat_ms);
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    if (m->cfg.exit_when_done && all_finished(m))
        master_stop(m, "all jobs finished");
    else
        uv_run(m->loop, UV_RUN_DEFAULT);
    mlog("done: %" PRIu64 " results recorded, %" PRIu64 " retried, %" PRIu64 " failed",
         m->n_results_recorded, m->sched.n_retried, m->sched.n_failed);
    rc = 0;
out:
    master_http_stop(m);
    if (m->zhandles) {
        uv_close((uv_handle_t *)&m->zpoll, NULL);
        uv_close((uv_handle_t *)&m->zprep, NULL);
        uv_close((uv_handle_t *)&m->zidle, NULL);
    }
    uv_close((uv_handle_t *)&m->cron, NULL);
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    uv_run(m->loop, UV_RUN_DEFAULT); /* let the handles close */
    if (m->router) zmq_close(m->router);
    if (m->zctx) zmq_ctx_term(m->zctx);
    if (m->results) fclose(m->results);
    uv_loop_close(m->loop);
    sched_free(&m->sched);
    cfg_free(&m->cfg);
    return rc;
}
