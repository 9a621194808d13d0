/*
 * master_main.c - rlhf-master: owns runs (master_run.c), schedules their jobs and its clients'
 * over ZeroMQ, journals every state change, serves HTTP status.
 *
 *   rlhf-master [--config run.yaml] [--set key=value]... [--bind EP] [--run-dir DIR]
 *               [--data-dir DIR] [--http-port N] [--exit-when-done]
 *
 * One single-threaded libuv loop drives everything. The ROUTER socket is integrated through
 * ZMQ_FD, which is edge-triggered: it becomes readable when ZMQ_EVENTS *may* have changed, and
 * any zmq_send/zmq_recv can consume that edge. So the loop never trusts the fd alone: every drain
 * re-checks ZMQ_EVENTS until ZMQ_POLLIN is clear, and a uv_prepare handle re-checks it once more
 * right before the loop blocks (after timers, HTTP callbacks or anything else that sent). A
 * drain handles at most DRAIN_BATCH messages, then lets HTTP run; a uv_idle handle, active only
 * while messages are left, keeps the loop from blocking until they are drained.
 *
 * The journal (RUN_DIR/journal, journal.h). Every state change is a JournalRecord appended as it
 * happens: a job created (its spec), leased, ended (its packed output, or why it failed) or
 * forgotten, a weights version announced, and the runs' records (master_run.c). The same
 * uv_prepare handle, once the drain is done, makes the turn's records durable with one
 * fdatasync (group commit); what must be durable before it is acted on (a run submitted, an
 * iteration committed) syncs at once. Nothing is lost by acting before the group commit: a job
 * whose end was not yet durable runs again after a crash and gives the same result (a job's
 * result is a function of its spec). On start the master replays the newest snapshot and the
 * segments after it (a torn last record cut off): finished jobs answer from their records, jobs
 * that had not finished are queued again, runs go on where they stood. Past
 * master.journal_compact_bytes of tail the live state is written as a snapshot, so replay stays
 * bounded. RUN_DIR/master.json gives the bound endpoint and HTTP port and the pid.
 *
 * Clients. Jobs come from the runs (master_run.c) and from clients: drivers (the stage commands
 * `rlhf generate`, `rlhf sft`, `rlhf train-rm`, `rlhf bench wire`, tests/client_tool.c;
 * common/net/client.h) that connect like a worker, say Hello with ROLE_CLIENT and a namespace
 * (never assigned jobs), heartbeat, and send SubmitJobs / FetchResults (proto/rlhf.proto); runs
 * come as RunSubmit / RunQuery / RunCancel. A job id is unique within its namespace. A job is
 * scheduled to a live worker with its kind among its capabilities (and of its role when the
 * spec names one), held back until the weights version it names has been announced, and its
 * end journaled once; the client that last submitted or fetched it gets a JobDone with the
 * packed output (or the reason it failed). The master schedules by the JobSpec fields (id,
 * kind, role, seed, lease, policy_version) and treats the payload - the kind's packed spec - as
 * opaque bytes: the worker decodes it and rejects a job whose spec is not valid. A rejection
 * says whether the job's input is at fault (deterministic: failed at once, the worker's reason
 * kept), the environment (held back without spending an attempt) or neither (retried).
 * Submission is idempotent by id: the same spec again is accepted (a finished job answers at
 * once from its record, a failed one runs again); another spec under a known id is rejected. A
 * JobSpec with an invalid field is rejected with its reason and counted as a malformed message.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
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
#include <openssl/evp.h>
#include <uv.h>
#include <zmq.h>

#include "base/err.h"
#include "base/fs.h"
#include "master.h"
#include "net/addr.h"
#include "net/blob.h"
#include "net/sec.h"
#include "master_annot.h"
#include "master_dump.h"
#include "master_http.h"
#include "master_run.h"

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

/* ---- the journal --------------------------------------------------------------------------- */

void master_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    wire_logv("master", fmt, ap);
    va_end(ap);
}

static journal_t *snap_j; /* during a compaction, master_journal writes into the snapshot */
static void record_failures(master_t *m);
static uint64_t job_spec_hash(const sched_job_t *jb);
static void master_stop(master_t *m, const char *why);

int master_journal(master_t *m, Rlhf__JournalRecord *rec, int sync) {
    if (m->replaying) return 0;
    if (!rec->time_unix) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        rec->time_unix = (double)ts.tv_sec + ts.tv_nsec / 1e9;
    }
    size_t len = rlhf__journal_record__get_packed_size(rec);
    uint8_t stack[4096], *buf = len <= sizeof stack ? stack : malloc(len);
    if (!buf) return rl_fail(RL_ENOMEM, "journal: out of memory");
    rlhf__journal_record__pack(rec, buf);
    journal_loc_t loc = 0;
    int rc = snap_j ? journal_snapshot_add(snap_j, buf, len, &loc)
                    : journal_append(m->journal, buf, len, &loc);
    if (buf != stack) free(buf);
    if (rc == 0 && sync && !snap_j) rc = journal_sync(m->journal);
    if (rc < 0 && snap_j) return rc; /* a failed compaction: the journal goes on as it was */
    if (rc < 0) {
        /* not durable: the master cannot promise exactly-once any more. It stops; its
         * supervisor restarts it, and it replays the journal up to the last good record. */
        m->n_journal_errors++;
        mlog("journal: %s", rl_errmsg());
        master_stop(m, "the journal cannot be written");
        return rc;
    }
    m->n_journal_records++;
    m->last_loc = loc;
    return 0;
}

void master_runs_tick(master_t *m) {
    mrun_tick(m);
}

int master_ns_index(master_t *m, const char *ns) {
    for (int i = 0; i < m->n_ns; i++)
        if (!strcmp(m->ns[i], ns)) return i;
    if (m->n_ns == m->cap_ns) {
        int cap = m->cap_ns ? 2 * m->cap_ns : 16;
        char **n = realloc(m->ns, (size_t)cap * sizeof *n);
        uint32_t *c = n ? realloc(m->ns_code, (size_t)cap * sizeof *c) : NULL;
        if (n) m->ns = n;
        if (!c) return rl_fail(RL_ENOMEM, "out of memory");
        m->ns_code = c;
        m->cap_ns = cap;
    }
    if (!(m->ns[m->n_ns] = strdup(ns))) return rl_fail(RL_ENOMEM, "out of memory");
    /* FNV-1a of the name, 23 bits, never 0 (namespace ""); a collision takes the next free code
     * (then, and only then, the code depends on the order namespaces appeared in) */
    uint32_t h = 0x811c9dc5u;
    for (const char *p = ns; *p; p++) h = (h ^ (uint8_t)*p) * 0x01000193u;
    uint32_t code = (h ^ (h >> 23)) & 0x7FFFFF;
    for (int again = 1; again;) {
        again = code == 0;
        for (int i = 0; i < m->n_ns && !again; i++) again = m->ns_code[i] == code;
        if (again) code = (code + 1) & 0x7FFFFF;
    }
    m->ns_code[m->n_ns] = m->n_ns ? code : 0;
    return m->n_ns++;
}

uint64_t master_job_id(const master_t *m, int ns, uint64_t id) {
    return ns ? (1ULL << 63) | ((uint64_t)m->ns_code[ns] << 40) | id : id;
}

/* The id a client of namespace ns knows job jb by. */
static uint64_t client_job_id(const sched_job_t *jb) {
    return jb->ns ? jb->id & ((1ULL << 40) - 1) : jb->id;
}

static void journal_job(master_t *m, const sched_job_t *jb, uint64_t spec_hash) {
    Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
    Rlhf__JournalJob jj = RLHF__JOURNAL_JOB__INIT;
    Rlhf__JobSpec js = RLHF__JOB_SPEC__INIT;
    js.id = client_job_id(jb);
    js.kind = jb->kind;
    js.seed = jb->seed;
    js.lease_ms = jb->lease_ms;
    js.policy_version = jb->policy_version;
    js.role = jb->role;
    if (!spec_hash) {
        js.payload.data = jb->payload;
        js.payload.len = jb->payload_len;
    }
    jj.ns = m->ns[jb->ns];
    jj.spec = &js;
    jj.spec_hash = spec_hash;
    rec.body_case = RLHF__JOURNAL_RECORD__BODY_JOB;
    rec.job = &jj;
    master_journal(m, &rec, 0);
}

/* Adds (or, for a finished job, queues again) job id of namespace ns. Returns its index. */
static int job_put(master_t *m, int ns, uint64_t id, int kind, uint64_t seed,
                   uint64_t policy_version, int role, uint32_t lease_ms, const void *payload,
                   size_t len) {
    uint64_t sid = master_job_id(m, ns, id);
    int j = sched_job_find(&m->sched, sid);
    if (j >= 0 && m->sched.jobs[j].state == SCHED_FAILED && m->sched.jobs[j].record_off < 0 &&
        !m->sched.jobs[j].forgotten)
        record_failures(m); /* its failure journaled first: replay sees end, then the new job */
    if (j >= 0 && m->sched.jobs[j].state == SCHED_QUEUED) {
        /* queued still (replay: a job created again after its end record was lost with a
         * crash): the newer spec replaces the old one */
        sched_job_t *q = &m->sched.jobs[j];
        uint8_t *p = malloc(len ? len : 1);
        if (!p) return rl_fail(RL_ENOMEM, "out of memory");
        if (len) memcpy(p, payload, len);
        free(q->payload);
        q->payload = p;
        q->payload_len = len;
    } else if (j >= 0) {
        int rc = sched_job_retry(&m->sched, j, payload, len);
        if (rc < 0) return rc;
    } else if ((j = sched_job_add(&m->sched, sid, kind, seed, payload, len, lease_ms)) < 0) {
        return j;
    }
    sched_job_t *jb = &m->sched.jobs[j];
    jb->kind = kind;
    jb->seed = seed;
    jb->lease_ms = lease_ms;
    jb->policy_version = policy_version;
    jb->role = role;
    jb->ns = ns;
    jb->spec_hash = 0;
    jb->record_off = -1;
    return j;
}

int master_job_create(master_t *m, int ns, uint64_t id, int kind, uint64_t seed,
                      uint64_t policy_version, int role, uint32_t lease_ms, const void *payload,
                      size_t len, int run) {
    int j = job_put(m, ns, id, kind, seed, policy_version, role,
                    lease_ms ? lease_ms : (uint32_t)m->cfg.lease_ms, payload, len);
    if (j < 0) return j;
    m->sched.jobs[j].run = run;
    /* a run's job is never given up for crashes and timeouts (only a deterministic failure
     * fails it), and a worker still at it keeps its lease: a run survives any crash */
    m->sched.jobs[j].max_attempts = UINT32_MAX;
    m->sched.jobs[j].renew = 1;
    journal_job(m, &m->sched.jobs[j], 0);
    return j;
}

int master_job_end_read(master_t *m, const sched_job_t *jb, Rlhf__JournalRecord **rec) {
    *rec = NULL;
    if (jb->record_off < 0) return rl_fail(RL_ENOTFOUND, "job %" PRIu64 ": no record", jb->id);
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = journal_read(m->journal, (journal_loc_t)jb->record_off, &buf, &len);
    if (rc < 0) return rc;
    *rec = rlhf__journal_record__unpack(NULL, len, buf);
    free(buf);
    if (!*rec || (*rec)->body_case != RLHF__JOURNAL_RECORD__BODY_JOB_END) {
        if (*rec) rlhf__journal_record__free_unpacked(*rec, NULL);
        *rec = NULL;
        return rl_fail(RL_EFORMAT, "job %" PRIu64 ": its record is not a job's end", jb->id);
    }
    return 0;
}

void master_job_forget(master_t *m, sched_job_t *jb) {
    if (jb->state != SCHED_DONE && jb->state != SCHED_FAILED) return;
    Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
    Rlhf__JournalJobForget f = RLHF__JOURNAL_JOB_FORGET__INIT;
    f.ns = m->ns[jb->ns];
    f.id = client_job_id(jb);
    rec.body_case = RLHF__JOURNAL_RECORD__BODY_JOB_FORGET;
    rec.job_forget = &f;
    master_journal(m, &rec, 0);
    jb->forgotten = 1;
    jb->record_off = -1;
}

int master_job_forgotten(const sched_job_t *jb) {
    return jb->forgotten;
}

void master_weights_reset(master_t *m) {
    m->weights_first_ms = 0;
    m->weights_version = 0;
    m->weights_endpoint[0] = 0;
    m->weights_key[0] = 0;
    m->sched.weights_version = 0;
}

/* Journals the end of a job: done with its output, or failed with why; the job remembers where
 * the record is (to answer clients and the run that made it), and drops its spec. */
static int journal_job_end(master_t *m, sched_job_t *jb, int status, const char *worker,
                           double elapsed_ms, const ProtobufCBinaryData *out, const char *reason,
                           int deterministic) {
    Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
    Rlhf__JournalJobEnd e = RLHF__JOURNAL_JOB_END__INIT;
    e.ns = m->ns[jb->ns];
    e.id = client_job_id(jb);
    e.status = status;
    e.attempt = jb->attempt;
    e.worker = (char *)(worker ? worker : "");
    e.elapsed_ms = elapsed_ms;
    if (out) e.output = *out;
    e.reason = (char *)(reason ? reason : "");
    e.deterministic = deterministic;
    rec.body_case = RLHF__JOURNAL_RECORD__BODY_JOB_END;
    rec.job_end = &e;
    jb->spec_hash = job_spec_hash(jb);
    int rc = master_journal(m, &rec, 0);
    if (rc < 0) return rc;
    jb->record_off = (int64_t)m->last_loc;
    free(jb->payload);
    jb->payload = NULL;
    jb->payload_len = 0;
    if (status == RLHF__JOB_STATUS__JOB_STATUS_FAILED) {
        free(jb->reason);
        jb->reason = strdup(reason ? reason : "");
    }
    m->n_results_recorded++;
    return 0;
}

/* One record of the journal at start (snapshot, then the segments after it). */
static int replay_one(void *ctx, const uint8_t *buf, size_t len, journal_loc_t loc) {
    master_t *m = ctx;
    Rlhf__JournalRecord *rec = rlhf__journal_record__unpack(NULL, len, buf);
    if (!rec) return rl_fail(RL_EFORMAT, "journal: a record does not decode");
    int rc = 0;
    switch (rec->body_case) {
    case RLHF__JOURNAL_RECORD__BODY_JOB: {
        const Rlhf__JournalJob *jj = rec->job;
        const Rlhf__JobSpec *js = jj->spec;
        int ns = master_ns_index(m, jj->ns ? jj->ns : "");
        if (!js || ns < 0) break;
        int j = job_put(m, ns, js->id, js->kind, js->seed, js->policy_version, js->role,
                        js->lease_ms, js->payload.data, js->payload.len);
        if (j < 0) {
            rc = j;
            break;
        }
        sched_job_t *jb = &m->sched.jobs[j];
        jb->spec_hash = jj->spec_hash;
        if (jj->ns && jj->ns[0] == '@') { /* a run's own job: "@NAME" or "@NAME/ppo" */
            char name[160];
            snprintf(name, sizeof name, "%s", jj->ns + 1);
            name[strcspn(name, "/")] = 0;
            jb->run = mrun_find(m, name);
        }
        break;
    }
    case RLHF__JOURNAL_RECORD__BODY_LEASE:
        break; /* leases end with the master that gave them: the job is queued again */
    case RLHF__JOURNAL_RECORD__BODY_JOB_END: {
        int ns = master_ns_index(m, rec->job_end->ns ? rec->job_end->ns : "");
        int j = ns < 0 ? -1 : sched_job_find(&m->sched, master_job_id(m, ns, rec->job_end->id));
        if (j < 0) break;
        sched_job_t *jb = &m->sched.jobs[j];
        int done = rec->job_end->status == RLHF__JOB_STATUS__JOB_STATUS_DONE;
        sched_job_mark_done(&m->sched, jb->id);
        if (!done) {
            jb->state = SCHED_FAILED;
            free(jb->reason);
            jb->reason = strdup(rec->job_end->reason ? rec->job_end->reason : "");
            jb->deterministic = rec->job_end->deterministic;
        }
        jb->attempt = rec->job_end->attempt;
        jb->record_off = (int64_t)loc;
        if (!jb->spec_hash) jb->spec_hash = job_spec_hash(jb);
        free(jb->payload);
        jb->payload = NULL;
        jb->payload_len = 0;
        break;
    }
    case RLHF__JOURNAL_RECORD__BODY_JOB_FORGET: {
        int ns = master_ns_index(m, rec->job_forget->ns ? rec->job_forget->ns : "");
        int j = ns < 0 ? -1 : sched_job_find(&m->sched, master_job_id(m, ns, rec->job_forget->id));
        if (j >= 0) {
            m->sched.jobs[j].forgotten = 1;
            m->sched.jobs[j].record_off = -1;
        }
        break;
    }
    case RLHF__JOURNAL_RECORD__BODY_WEIGHTS:
        m->weights_version = m->sched.weights_version = rec->weights->version;
        snprintf(m->weights_endpoint, sizeof m->weights_endpoint, "%s",
                 rec->weights->endpoint ? rec->weights->endpoint : "");
        snprintf(m->weights_key, sizeof m->weights_key, "%s",
                 rec->weights->endpoint_key ? rec->weights->endpoint_key : "");
        break;
    default:
        rc = mann_replay(m, rec);
        rc = rc == 0 ? mrun_replay(m, rec) : rc > 0 ? 0 : rc;
        break;
    }
    rlhf__journal_record__free_unpacked(rec, NULL);
    return rc;
}

/* Compaction's writer: the live state as records - the runs, then every job not forgotten
 * (its spec, or for a finished one its identity and end record), then the weights. */
static int64_t *snap_locs; /* the jobs' end records' locations in the snapshot being written */

static int snapshot_state(void *ctx, journal_t *j) {
    master_t *m = ctx;
    snap_j = j;
    int rc = mrun_snapshot(m, j);
    if (rc == 0) rc = mann_snapshot(m);
    for (int k = 0; rc == 0 && k < m->sched.n_jobs; k++) {
        sched_job_t *jb = &m->sched.jobs[k];
        snap_locs[k] = jb->record_off;
        if (jb->forgotten) continue;
        int fin = jb->state == SCHED_DONE || jb->state == SCHED_FAILED;
        journal_job(m, jb, fin ? job_spec_hash(jb) : 0);
        if (fin && jb->record_off >= 0) {
            Rlhf__JournalRecord *rec = NULL;
            /* an end that cannot be read back would come back as a queued job without a spec:
             * no snapshot rather than that one */
            if ((rc = master_job_end_read(m, jb, &rec)) < 0) break;
            rc = master_journal(m, rec, 0);
            snap_locs[k] = (int64_t)m->last_loc;
            rlhf__journal_record__free_unpacked(rec, NULL);
        }
    }
    if (rc == 0 && m->weights_version) {
        Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
        Rlhf__JournalWeights w = RLHF__JOURNAL_WEIGHTS__INIT;
        w.version = m->weights_version;
        w.endpoint = m->weights_endpoint;
        w.endpoint_key = m->weights_key;
        rec.body_case = RLHF__JOURNAL_RECORD__BODY_WEIGHTS;
        rec.weights = &w;
        rc = master_journal(m, &rec, 0);
    }
    snap_j = NULL;
    return rc;
}

/* Opens the journal in RUN_DIR/journal and replays it. */
static int journal_start(master_t *m) {
    snprintf(m->journal_dir, sizeof m->journal_dir, "%.4000s/journal", m->cfg.run_dir);
    m->replaying = 1;
    double t0 = wire_now_ms();
    m->journal = journal_open(m->journal_dir, replay_one, m);
    m->replaying = 0;
    if (!m->journal) return rl_fail_ctx(RL_EIO, "%s: ", m->journal_dir);
    journal_stats_t st;
    journal_stats(m->journal, &st);
    mlog("journal %s: %" PRIu64 " records replayed in %.0f ms (%" PRIu64
         " from the snapshot), %" PRIu64 " torn bytes cut",
         m->journal_dir, st.records_replayed, wire_now_ms() - t0, st.snapshot_records,
         st.truncated_bytes);
    int done = sched_count(&m->sched, SCHED_DONE), queued = sched_count(&m->sched, SCHED_QUEUED);
    if (done + queued) mlog("%d jobs already done, %d queued again", done, queued);
    mrun_resume(m);
    return 0;
}

/* Compacts when the journal's tail has grown past master.journal_compact_bytes. */
static void journal_maybe_compact(master_t *m) {
    if (journal_tail_bytes(m->journal) < (uint64_t)m->cfg.journal_compact_bytes) return;
    double t0 = wire_now_ms();
    /* the new locations count only once the snapshot is complete: until then the old ones
     * are the valid ones (a failed compaction keeps them) */
    if (!(snap_locs = malloc((size_t)(m->sched.n_jobs ? m->sched.n_jobs : 1) * sizeof *snap_locs)))
        return;
    if (journal_compact(m->journal, snapshot_state, m) < 0) {
        mlog("journal: compaction failed (%s): the journal goes on growing", rl_errmsg());
    } else {
        for (int k = 0; k < m->sched.n_jobs; k++) m->sched.jobs[k].record_off = snap_locs[k];
        mlog("journal compacted in %.0f ms", wire_now_ms() - t0);
    }
    free(snap_locs);
    snap_locs = NULL;
}

/* ---- job seeds ------------------------------------------------------------------------------ */

/* splitmix64's finaliser: a job submitted without a seed gets mix64(run seed ^ mix64(id)) >> 1
 * (63 bits: the seed stays a non-negative integer in JSON). */
static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
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
        a.policy_version = jb->policy_version;
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
            Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
            Rlhf__JournalLease l = RLHF__JOURNAL_LEASE__INIT;
            l.ns = m->ns[jb->ns];
            l.id = client_job_id(jb);
            l.attempt = jb->attempt;
            l.worker = wk->id;
            rec.body_case = RLHF__JOURNAL_RECORD__BODY_LEASE;
            rec.lease = &l;
            master_journal(m, &rec, 0);
        }
    }
}

void master_dispatch(master_t *m) {
    dispatch_all(m);
}

/* exit_when_done's condition: this master has been given jobs (a restarted master knows the
 * finished ones from its journal before any client resubmits the rest) and none is left. */
static int all_finished(master_t *m) {
    return m->n_submitted + m->n_resubmitted > 0 && sched_count(&m->sched, SCHED_QUEUED) == 0 &&
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

/* The weights relay chain (wsync.h): the alive rollout and reward workers that serve a relay
 * (Hello.relay_endpoint), in registry order - the order they first registered, which a worker
 * keeps when it reconnects. Each gets the newest version from the relay of the one before it,
 * the first from the origin, so the learner sends a version about once whatever the number of
 * workers. Worker w's upstream, "" for the origin (also for a worker outside the chain).
 * Computed at every send: a dead worker is out of the chain from the next announcement. */
static const char *weights_relay_from(const master_t *m, int w) {
    if (!m->sched.workers[w].relay_ep[0]) return "";
    for (int k = w - 1; k >= 0; k--) {
        const sched_worker_t *up = &m->sched.workers[k];
        if (up->alive && up->relay_ep[0]) return up->relay_ep;
    }
    return "";
}

/* The public key of the worker serving the relay at ep (secure clusters), "" when unknown. */
static void relay_key(const master_t *m, const char *ep, char *out, size_t cap) {
    out[0] = 0;
    sec_peer_t p;
    for (int k = 0; ep[0] && k < m->sched.n_workers; k++)
        if (m->sched.workers[k].alive && !strcmp(m->sched.workers[k].relay_ep, ep) &&
            sec_peer_find(m->sched.workers[k].user, &p) == 0)
            snprintf(out, cap, "%s", p.pub);
}

static void send_weights(master_t *m, int w) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__WeightsAnnounce a = RLHF__WEIGHTS_ANNOUNCE__INIT;
    char rkey[SEC_Z85_LEN + 1];
    a.version = m->weights_version;
    a.endpoint = m->weights_endpoint;
    a.relay_from = (char *)weights_relay_from(m, w);
    relay_key(m, a.relay_from, rkey, sizeof rkey);
    a.endpoint_key = m->weights_key;
    a.relay_from_key = rkey;
    env.body_case = RLHF__ENVELOPE__BODY_WEIGHTS_ANNOUNCE;
    env.weights_announce = &a;
    msend(m, m->sched.workers[w].rid, m->sched.workers[w].rid_len, &env);
}

static void on_hello(master_t *m, const wire_msg_t *msg, const Rlhf__Hello *h) {
    uint32_t caps = 0;
    for (size_t i = 0; i < h->n_capabilities; i++)
        if (h->capabilities[i] > 0 && h->capabilities[i] < 32) caps |= 1u << h->capabilities[i];
    if (h->role == RLHF__ROLE__ROLE_TOOL || h->role == RLHF__ROLE__ROLE_CLIENT)
        caps = 0; /* diagnostics peers and clients never get jobs */
    const char *id = h->worker_id && h->worker_id[0] ? h->worker_id : "anonymous";
    double now = wire_now_ms();
    const char *ns = h->role == RLHF__ROLE__ROLE_CLIENT && h->ns ? h->ns : "";
    int nsi = ns[0] == '@' || strlen(ns) > 200 ? -1 : master_ns_index(m, ns);
    if (nsi < 0) {
        count_bad(m, WIRE_BAD_MALFORMED, msg, "Hello with an invalid namespace");
        send_error(m, msg->rid, msg->rid_len, RLHF__ERROR_CODE__ERROR_CODE_BAD_MESSAGE,
                   "namespace: at most 200 bytes, not starting with '@'");
        return;
    }
    if (sec_enabled()) { /* a worker id belongs to the key that first registered it */
        for (int k = 0; k < m->sched.n_workers; k++) {
            const sched_worker_t *o = &m->sched.workers[k];
            if (!strncmp(o->id, id, sizeof o->id - 1) && strcmp(o->user, msg->user)) {
                char why[200];
                snprintf(why, sizeof why, "worker id %.64s is registered with another key", id);
                count_bad(m, MASTER_BAD_FORBIDDEN, msg, why);
                send_error(m, msg->rid, msg->rid_len, RLHF__ERROR_CODE__ERROR_CODE_FORBIDDEN, why);
                return;
            }
        }
    }
    if (h->role == RLHF__ROLE__ROLE_LEARNER) { /* (re)started: what it serves is announced anew */
        master_weights_reset(m);
        mrun_learner_hello(m); /* and the PPO loop asks it where it stands */
    }
    int w = sched_worker_add(&m->sched, msg->rid, msg->rid_len, id, h->role, caps, h->pid, now);
    if (w < 0) return;
    m->sched.workers[w].ns = nsi;
    snprintf(m->sched.workers[w].user, sizeof m->sched.workers[w].user, "%s", msg->user);
    /* a rollout or reward worker serving a weights relay is a link of the chain */
    const char *relay = h->relay_endpoint ? h->relay_endpoint : "";
    if ((h->role != RLHF__ROLE__ROLE_ROLLOUT && h->role != RLHF__ROLE__ROLE_REWARD) ||
        strlen(relay) >= sizeof m->sched.workers[w].relay_ep)
        relay = "";
    snprintf(m->sched.workers[w].relay_ep, sizeof m->sched.workers[w].relay_ep, "%s", relay);
    /* still busy with a job (of an earlier master, or one whose lease we ended): no work for it
     * until it reports that job finished, or every assignment would come back "busy" and burn
     * an attempt of the job */
    sched_worker_seen(&m->sched, w, now, h->job_id, h->job_attempt);
    m->n_registrations++;
    if (h->role != RLHF__ROLE__ROLE_TOOL)
        mlog("%s %s registered (role %d, pid %d, version %s)",
             h->role == RLHF__ROLE__ROLE_CLIENT ? "client" : "worker", id, h->role, h->pid,
             h->version ? h->version : "?");
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Welcome wl = RLHF__WELCOME__INIT;
    wl.master_id = m->master_id;
    wl.heartbeat_ms = (uint32_t)m->cfg.heartbeat_ms;
    wl.liveness = (uint32_t)m->cfg.liveness;
    wl.blob_endpoint = m->blob_endpoint;
    env.body_case = RLHF__ENVELOPE__BODY_WELCOME;
    env.welcome = &wl;
    /* a worker in a secure cluster: the keys its own servers may admit */
    Rlhf__PeerKey *pk = NULL, **pkp = NULL;
    int n_pk = 0;
    if (sec_enabled() && h->role != RLHF__ROLE__ROLE_CLIENT && h->role != RLHF__ROLE__ROLE_TOOL &&
        m->n_peers > 0 && (pk = calloc((size_t)m->n_peers, sizeof *pk)) &&
        (pkp = calloc((size_t)m->n_peers, sizeof *pkp))) {
        for (int k = 0; k < m->n_peers; k++) {
            rlhf__peer_key__init(&pk[k]);
            pk[k].name = m->peers[k].name;
            pk[k].roles = m->peers[k].roles;
            pk[k].public_key = m->peers[k].pub;
            pkp[k] = &pk[k];
        }
        n_pk = m->n_peers;
    }
    wl.n_peers = (size_t)n_pk;
    wl.peers = pkp;
    int sent = msend(m, msg->rid, msg->rid_len, &env);
    free(pk);
    free(pkp);
    if (sent < 0)
        sched_worker_dead(&m->sched, w, "unreachable");
    else if (m->weights_version && h->role != RLHF__ROLE__ROLE_TOOL)
        send_weights(m, w); /* joined late or reconnected: fetch the latest */
    dispatch_all(m);
}

/* The learner (or a tool) announces weights: a newer version, or the same one served at a new
 * endpoint (a restarted learner), is forwarded to every worker, and jobs waiting for it become
 * dispatchable. Announcers repeat themselves, so a restarted master learns the version again. */
/* When the announcer with this routing id was first heard (remembered for the last 32). */
static double announcer_first_ms(master_t *m, const wire_msg_t *msg) {
    for (int i = 0; i < m->n_announcers; i++)
        if (m->announcers[i].rid_len == msg->rid_len &&
            !memcmp(m->announcers[i].rid, msg->rid, msg->rid_len))
            return m->announcers[i].first_ms;
    int i = m->n_announcers < 32 ? m->n_announcers++ : 0;
    if (i == 0 && m->n_announcers == 32) /* full: the oldest goes */
        for (int k = 1; k < 32; k++)
            if (m->announcers[k].first_ms < m->announcers[i].first_ms) i = k;
    memcpy(m->announcers[i].rid, msg->rid, msg->rid_len);
    m->announcers[i].rid_len = msg->rid_len;
    m->announcers[i].first_ms = wire_now_ms();
    return m->announcers[i].first_ms;
}

static void on_weights_announce(master_t *m, const wire_msg_t *msg,
                                const Rlhf__WeightsAnnounce *a) {
    const char *ep = a->endpoint ? a->endpoint : "";
    if (!ep[0] || strlen(ep) >= sizeof m->weights_endpoint || a->version == 0) return;
    int same_ep = !strcmp(ep, m->weights_endpoint);
    double first = announcer_first_ms(m, msg);
    /* a newer version is believed. A lower one at another endpoint only from the announcer of
     * the current one (its learner switched to another training, or went back to an older
     * checkpoint and serves from a new server) or from one first heard after it (a restarted
     * learner): an older announcer repeating itself never takes the version back */
    if (a->version < m->weights_version && (same_ep || first < m->weights_first_ms)) return;
    if (a->version == m->weights_version && same_ep) return;
    m->weights_first_ms = first;
    m->weights_version = a->version;
    snprintf(m->weights_endpoint, sizeof m->weights_endpoint, "%s", ep);
    sec_peer_t p; /* its server's key: the announcing learner's own */
    snprintf(m->weights_key, sizeof m->weights_key, "%s",
             sec_enabled() && sec_peer_find(msg->user, &p) == 0 ? p.pub : "");
    m->sched.weights_version = a->version;
    mlog("weights version %" PRIu64 " announced at %s", a->version, ep);
    Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
    Rlhf__JournalWeights jw = RLHF__JOURNAL_WEIGHTS__INIT;
    jw.version = a->version;
    jw.endpoint = m->weights_endpoint;
    jw.endpoint_key = m->weights_key;
    rec.body_case = RLHF__JOURNAL_RECORD__BODY_WEIGHTS;
    rec.weights = &jw;
    master_journal(m, &rec, 0);
    for (int k = 0; k < m->sched.n_workers; k++) {
        sched_worker_t *wk = &m->sched.workers[k];
        if (wk->alive && wk->role != RLHF__ROLE__ROLE_TOOL) send_weights(m, k);
    }
    mrun_tick(m); /* a PPO loop with overlap makes the jobs of the version now there */
    dispatch_all(m);
}

/* ---- clients -------------------------------------------------------------------------------- */

/* The identity of a job spec: FNV-1a (64 bits) over kind, seed, policy_version (little-endian)
 * and the payload. Never 0 (0 means "hash the spec" in sched_job_t.spec_hash). */
static uint64_t spec_hash(int kind, uint64_t seed, uint64_t policy_version, const uint8_t *p,
                          size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL, head[3] = {(uint64_t)(uint32_t)kind, seed, policy_version};
    for (int i = 0; i < 3; i++)
        for (int b = 0; b < 8; b++) h = (h ^ ((head[i] >> (8 * b)) & 0xFF)) * 0x100000001b3ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h ? h : 1;
}

static uint64_t job_spec_hash(const sched_job_t *jb) {
    return jb->spec_hash
               ? jb->spec_hash
               : spec_hash(jb->kind, jb->seed, jb->policy_version, jb->payload, jb->payload_len);
}

int master_job_same_spec(const sched_job_t *jb, int kind, uint64_t seed, uint64_t version,
                         const void *payload, size_t len) {
    return job_spec_hash(jb) == spec_hash(kind, seed, version, payload, len);
}

static void send_job_done(master_t *m, const uint8_t *rid, size_t rid_len, const sched_job_t *jb,
                          int status, const char *worker, double elapsed_ms,
                          const ProtobufCBinaryData *out) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__JobDone d = RLHF__JOB_DONE__INIT;
    d.job_id = client_job_id(jb);
    d.reason = jb->reason ? jb->reason : "";
    d.status = status;
    d.kind = jb->kind;
    d.attempt = jb->attempt;
    d.worker = (char *)(worker ? worker : "");
    d.elapsed_ms = elapsed_ms;
    if (out) d.payload = *out;
    env.body_case = RLHF__ENVELOPE__BODY_JOB_DONE;
    env.job_done = &d;
    /* a client that is gone or slow misses it; it asks again (FetchResults) */
    msend(m, rid, rid_len, &env);
}

/* A job just recorded: tell the client that submitted it, if it is still with us. */
static void client_notify(master_t *m, const sched_job_t *jb, int status, const char *worker,
                          double elapsed_ms, const ProtobufCBinaryData *out) {
    int c = jb->client;
    if (c < 0 || c >= m->sched.n_workers) return;
    const sched_worker_t *ck = &m->sched.workers[c];
    if (ck->alive && ck->role == RLHF__ROLE__ROLE_CLIENT)
        send_job_done(m, ck->rid, ck->rid_len, jb, status, worker, elapsed_ms, out);
}

/* A finished job's JobDone, rebuilt from its journal record (after a restart, or for a client
 * that asks again). An unreadable record is reported as a failure rather than left unanswered. */
static void send_job_done_recorded(master_t *m, const uint8_t *rid, size_t rid_len,
                                   const sched_job_t *jb) {
    Rlhf__JournalRecord *rec = NULL;
    int ok = master_job_end_read(m, jb, &rec) == 0;
    const Rlhf__JournalJobEnd *e = ok ? rec->job_end : NULL;
    if (!ok && jb->state == SCHED_DONE)
        mlog("job %" PRIu64 ": its record cannot be read back (%s): reported as failed", jb->id,
             rl_errmsg());
    sched_job_t copy = *jb;
    if (e) copy.attempt = e->attempt;
    int done = e && e->status == RLHF__JOB_STATUS__JOB_STATUS_DONE;
    send_job_done(m, rid, rid_len, &copy,
                  done ? RLHF__JOB_STATUS__JOB_STATUS_DONE : RLHF__JOB_STATUS__JOB_STATUS_FAILED,
                  e && e->worker ? e->worker : "", e ? e->elapsed_ms : 0, done ? &e->output : NULL);
    if (rec) rlhf__journal_record__free_unpacked(rec, NULL);
}

/* The client sending a SubmitJobs / FetchResults: its registry index, or -1 after answering
 * (not registered: say Hello; not a client: counted as unexpected). */
static int client_of(master_t *m, const wire_msg_t *msg, int w, const char *what) {
    if (w < 0) {
        send_error(m, msg->rid, msg->rid_len, RLHF__ERROR_CODE__ERROR_CODE_NOT_REGISTERED,
                   "register first");
        return -1;
    }
    if (m->sched.workers[w].role != RLHF__ROLE__ROLE_CLIENT) {
        count_bad(m, MASTER_BAD_UNEXPECTED, msg, what);
        send_error(m, msg->rid, msg->rid_len, RLHF__ERROR_CODE__ERROR_CODE_BAD_MESSAGE, what);
        return -1;
    }
    sched_worker_seen(&m->sched, w, wire_now_ms(), 0, 0);
    return w;
}

/* Checks the JobSpec fields the master schedules by. The payload (the kind's packed spec) is
 * opaque here: the master never decodes it; the worker that runs the job does, and rejects the
 * job with the reason when it is not a valid spec. Returns NULL or why the job is refused. */
static const char *spec_invalid(const Rlhf__JobSpec *js) {
    if (js->id == 0 || js->id > (uint64_t)INT64_MAX) return "id: 1 .. 2^63-1 required";
    if (js->role != RLHF__ROLE__ROLE_UNSPECIFIED && js->role != RLHF__ROLE__ROLE_ROLLOUT &&
        js->role != RLHF__ROLE__ROLE_REWARD && js->role != RLHF__ROLE__ROLE_LEARNER &&
        js->role != RLHF__ROLE__ROLE_STAGE)
        return "role: not a worker role";
    if (js->lease_ms > 7 * 86400000u) return "lease_ms: more than a week";
    if (js->seed > (uint64_t)INT64_MAX) return "seed: 0 .. 2^63-1 required";
    switch (js->kind) {
    case RLHF__JOB_KIND__JOB_KIND_GENERATE:
    case RLHF__JOB_KIND__JOB_KIND_SCORE:
    case RLHF__JOB_KIND__JOB_KIND_TRAIN:
    case RLHF__JOB_KIND__JOB_KIND_EVAL:
    case RLHF__JOB_KIND__JOB_KIND_NOOP:
    case RLHF__JOB_KIND__JOB_KIND_STAGE:
        return NULL;
    default:
        return "kind: not a job kind";
    }
}

/* One JobSpec from client c: 0 queued (or already queued / running with this spec), 1 already
 * finished (recorded), -1 rejected with the reason in why (*malformed set when the spec itself
 * is invalid). */
static int submit_one(master_t *m, int c, const Rlhf__JobSpec *js, char *why, size_t why_len,
                      int *malformed) {
    const char *bad = spec_invalid(js);
    if (bad) {
        *malformed = 1;
        snprintf(why, why_len, "%s", bad);
        return -1;
    }
    int ns = m->sched.workers[c].ns;
    if (ns && js->id >= (1ULL << 40)) {
        *malformed = 1;
        snprintf(why, why_len, "id: below 2^40 in a namespace");
        return -1;
    }
    uint64_t seed = js->seed ? js->seed : mix64(m->cfg.seed ^ mix64(js->id)) >> 1;
    uint64_t h = spec_hash(js->kind, seed, js->policy_version, js->payload.data, js->payload.len);
    int j = sched_job_find(&m->sched, master_job_id(m, ns, js->id));
    if (j >= 0) {
        sched_job_t *jb = &m->sched.jobs[j];
        uint64_t have = job_spec_hash(jb);
        if (!jb->forgotten && (have == UINT64_MAX ? jb->kind != (int)js->kind : have != h)) {
            snprintf(why, why_len, "job %" PRIu64 " exists with another spec", js->id);
            return -1;
        }
        jb->client = c; /* whoever asked last hears about it */
        m->n_resubmitted++;
        /* a recorded failure never poisons a resubmission: the job runs again (its input may
         * have been fixed since) */
        if (jb->state != SCHED_FAILED && !jb->forgotten) return jb->record_off >= 0 ? 1 : 0;
    }
    uint32_t lease = js->lease_ms ? js->lease_ms : (uint32_t)m->cfg.lease_ms;
    j = job_put(m, ns, js->id, js->kind, seed, js->policy_version, js->role, lease,
                js->payload.data, js->payload.len);
    if (j < 0) {
        snprintf(why, why_len, "master: %s", rl_errmsg());
        return -1;
    }
    sched_job_t *jb = &m->sched.jobs[j];
    jb->client = c;
    jb->run = -1;
    journal_job(m, jb, 0);
    m->n_submitted++;
    return 0;
}

static void on_submit(master_t *m, const wire_msg_t *msg, int w, const Rlhf__SubmitJobs *sj) {
    int c = client_of(m, msg, w, "SubmitJobs from a peer that is not a client");
    if (c < 0) return;
    size_t n = sj->n_jobs;
    uint64_t *ids = malloc((n ? n : 1) * 3 * sizeof *ids);
    char **why = calloc(n ? n : 1, sizeof *why);
    if (!ids || !why) {
        free(ids);
        free(why);
        send_error(m, msg->rid, msg->rid_len, RLHF__ERROR_CODE__ERROR_CODE_BAD_MESSAGE,
                   "master: out of memory");
        return;
    }
    uint64_t *acc = ids, *done = ids + n, *rej = ids + 2 * n;
    size_t n_acc = 0, n_done = 0, n_rej = 0;
    int malformed = 0, logged = 0;
    char reason[200];
    for (size_t i = 0; i < n; i++) {
        const Rlhf__JobSpec *js = sj->jobs[i];
        int rc = submit_one(m, c, js, reason, sizeof reason, &malformed);
        if (rc == 0) acc[n_acc++] = js->id;
        if (rc == 1) done[n_done++] = js->id;
        if (rc < 0) {
            m->n_submit_rejected++;
            if (logged++ < 5)
                mlog("client %s: job %" PRIu64 " rejected: %s", m->sched.workers[c].id, js->id,
                     reason);
            why[n_rej] = strdup(reason);
            rej[n_rej++] = js->id;
        }
    }
    if (malformed) count_bad(m, WIRE_BAD_MALFORMED, msg, "invalid job spec in SubmitJobs");
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__SubmitAck ack = RLHF__SUBMIT_ACK__INIT;
    ack.request_id = sj->request_id;
    ack.accepted = acc;
    ack.n_accepted = n_acc;
    ack.already_done = done;
    ack.n_already_done = n_done;
    ack.rejected = rej;
    ack.n_rejected = n_rej;
    for (size_t i = 0; i < n_rej; i++)
        if (!why[i]) why[i] = strdup("?"); /* strdup failed: still one reason per id */
    ack.reasons = why;
    ack.n_reasons = n_rej;
    env.body_case = RLHF__ENVELOPE__BODY_SUBMIT_ACK;
    env.submit_ack = &ack;
    msend(m, msg->rid, msg->rid_len, &env);
    for (size_t i = 0; i < n_done; i++)
        send_job_done_recorded(m, msg->rid, msg->rid_len,
                               &m->sched.jobs[sched_job_find(
                                   &m->sched, master_job_id(m, m->sched.workers[c].ns, done[i]))]);
    if (n_acc + n_done)
        mlog("client %s submitted %zu jobs: %zu accepted, %zu already done, %zu rejected",
             m->sched.workers[c].id, n, n_acc, n_done, n_rej);
    for (size_t i = 0; i < n_rej; i++) free(why[i]);
    free(why);
    free(ids);
    dispatch_all(m);
}

static void on_fetch(master_t *m, const wire_msg_t *msg, int w, const Rlhf__FetchResults *f) {
    int c = client_of(m, msg, w, "FetchResults from a peer that is not a client");
    if (c < 0) return;
    m->n_fetches++;
    size_t n = f->n_job_ids, n_pend = 0, n_unk = 0;
    uint64_t *pend = malloc((n ? n : 1) * 2 * sizeof *pend), *unk = pend ? pend + n : NULL;
    if (!pend) {
        send_error(m, msg->rid, msg->rid_len, RLHF__ERROR_CODE__ERROR_CODE_BAD_MESSAGE,
                   "master: out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        int j = sched_job_find(&m->sched, master_job_id(m, m->sched.workers[c].ns, f->job_ids[i]));
        if (j >= 0 && m->sched.jobs[j].forgotten) j = -1;
        if (j < 0) {
            unk[n_unk++] = f->job_ids[i];
        } else if (m->sched.jobs[j].record_off >= 0) {
            send_job_done_recorded(m, msg->rid, msg->rid_len, &m->sched.jobs[j]);
        } else {
            m->sched.jobs[j].client = c;
            pend[n_pend++] = f->job_ids[i];
        }
    }
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__FetchAck ack = RLHF__FETCH_ACK__INIT;
    ack.request_id = f->request_id;
    ack.pending = pend;
    ack.n_pending = n_pend;
    ack.unknown = unk;
    ack.n_unknown = n_unk;
    env.body_case = RLHF__ENVELOPE__BODY_FETCH_ACK;
    env.fetch_ack = &ack;
    msend(m, msg->rid, msg->rid_len, &env);
    free(pend);
}

static void on_result(master_t *m, const wire_msg_t *msg, int w, const Rlhf__JobResult *r) {
    sched_verdict_t v = sched_result(&m->sched, w, r->job_id, r->attempt, r->lease_id);
    if (v != SCHED_ACCEPTED) {
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
    sched_job_t *jb = &m->sched.jobs[sched_job_find(&m->sched, r->job_id)];
    if (jb->kind == RLHF__JOB_KIND__JOB_KIND_TRAIN) { /* the newest PPO figures, for /metrics */
        Rlhf__TrainOutput *t = rlhf__train_output__unpack(NULL, r->payload.len, r->payload.data);
        json_t *st =
            t && t->ppo ? json_loads(t->ppo->stats_json ? t->ppo->stats_json : "", 0, NULL) : NULL;
        if (st && json_object_size(st) > 0) {
            json_decref(m->ppo_stats);
            m->ppo_stats = st;
            m->ppo_version = t->ppo->policy_version;
        } else {
            /* an attach (a restarted learner saying where it stands) carries no figures: the
             * newest update's stay what /metrics shows */
            json_decref(st);
        }
        if (t) rlhf__train_output__free_unpacked(t, NULL);
    }
    if (journal_job_end(m, jb, RLHF__JOB_STATUS__JOB_STATUS_DONE, m->sched.workers[w].id,
                        r->elapsed_ms, &r->payload, NULL, 0) < 0)
        return; /* the master is stopping: the job runs again after the restart */
    client_notify(m, jb, RLHF__JOB_STATUS__JOB_STATUS_DONE, m->sched.workers[w].id, r->elapsed_ms,
                  &r->payload);
    mlog("job %" PRIu64 " attempt %u done by %s", jb->id, jb->attempt, m->sched.workers[w].id);
    if (jb->run >= 0) mrun_job_end(m, jb, 1, NULL, 0, 0);
    dispatch_all(m);
}

void master_job_fail(master_t *m, sched_job_t *jb, const char *reason) {
    if (jb->state != SCHED_QUEUED) return;
    jb->state = SCHED_FAILED; /* its queue entry is skipped when reached */
    m->sched.n_failed++;
    free(jb->reason);
    jb->reason = strdup(reason);
    if (journal_job_end(m, jb, RLHF__JOB_STATUS__JOB_STATUS_FAILED, "", 0, NULL, reason, 1) == 0)
        client_notify(m, jb, RLHF__JOB_STATUS__JOB_STATUS_FAILED, "", 0, NULL);
}

/* Failed jobs that have not been journaled yet (attempts spent): journaled once, their client
 * told. */
static void record_failures(master_t *m) {
    static uint64_t recorded_failed;
    if (m->sched.n_failed == recorded_failed) return;
    for (int j = 0; j < m->sched.n_jobs; j++) {
        sched_job_t *jb = &m->sched.jobs[j];
        if (jb->state != SCHED_FAILED || jb->record_off >= 0 || jb->forgotten) continue;
        const char *why = jb->reason && jb->reason[0] ? jb->reason : "attempts spent";
        char *reason = strdup(why);
        if (journal_job_end(m, jb, RLHF__JOB_STATUS__JOB_STATUS_FAILED, "", 0, NULL,
                            reason ? reason : "attempts spent", jb->deterministic) == 0) {
            client_notify(m, jb, RLHF__JOB_STATUS__JOB_STATUS_FAILED, "", 0, NULL);
            if (jb->run >= 0) mrun_job_end(m, jb, 0, reason, 1, 0);
        }
        free(reason);
    }
    recorded_failed = m->sched.n_failed;
}

/* A worker rejects (or hands back) its job. The class decides: a deterministic error fails the
 * job at once (its input is bad: another attempt fails the same way), an environment error
 * holds it back without spending an attempt, anything else is retried - a run's own jobs with a
 * growing pause and never failed for it (a run survives any crash), a client's up to
 * max_attempts. */
static void on_reject(master_t *m, int w, const Rlhf__JobReject *r) {
    int j = sched_job_find(&m->sched, r->job_id);
    sched_job_t *jb = j >= 0 ? &m->sched.jobs[j] : NULL;
    const char *reason = r->reason && r->reason[0] ? r->reason : rl_strerror(r->code);
    double now = wire_now_ms();
    sched_reject_mode_t mode = SCHED_RETRY;
    double hold = 0;
    if (r->code == 0) {
        mode = SCHED_HOLD; /* handed back: no fault of the job */
    } else if (r->deterministic) {
        mode = SCHED_FAIL;
    } else if (r->environment) {
        mode = SCHED_HOLD, hold = now + 2000;
    } else if (jb && jb->run >= 0) {
        mode = SCHED_HOLD; /* 250 ms, doubling with each such rejection, up to 8 s */
        hold = now + fmin(8000, 250.0 * (1u << (jb->holds < 5 ? jb->holds : 5)));
    }
    if (jb && r->code) {
        free(jb->reason);
        jb->reason = strdup(reason);
    }
    sched_verdict_t v =
        sched_reject_ex(&m->sched, w, r->job_id, r->attempt, r->lease_id, mode, hold);
    mlog("job %" PRIu64 " attempt %u %s by %s (%d: %s)%s%s", r->job_id, r->attempt,
         r->code ? "rejected" : "handed back", w >= 0 ? m->sched.workers[w].id : "?", r->code,
         reason,
         r->deterministic ? " [deterministic]"
         : r->environment ? " [environment]"
                          : "",
         v == SCHED_ACCEPTED ? "" : " - ignored, not its lease");
    if (v == SCHED_ACCEPTED && jb && jb->run >= 0 && r->code && mode != SCHED_FAIL)
        mrun_job_end(m, jb, 0, reason, 0, r->environment);
    record_failures(m);
    dispatch_all(m);
}

/* ---- runs ----------------------------------------------------------------------------------- */

static void send_run_reply(master_t *m, const wire_msg_t *msg, uint64_t request_id, int code,
                           const char *error, json_t *status, const uint8_t *log, size_t log_len,
                           uint64_t log_off) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__RunReply rr = RLHF__RUN_REPLY__INIT;
    char *st = status ? json_dumps(status, JSON_COMPACT) : NULL;
    rr.request_id = request_id;
    rr.code = code;
    rr.error = (char *)(error ? error : "");
    rr.status_json = st ? st : "";
    rr.log.data = (uint8_t *)log;
    rr.log.len = log_len;
    rr.log_offset = log_off;
    env.body_case = RLHF__ENVELOPE__BODY_RUN_REPLY;
    env.run_reply = &rr;
    msend(m, msg->rid, msg->rid_len, &env);
    free(st);
    json_decref(status);
}

static void on_run_submit(master_t *m, const wire_msg_t *msg, int w, const Rlhf__RunSubmit *rs) {
    if (client_of(m, msg, w, "RunSubmit from a peer that is not a client") < 0) return;
    char why[1024];
    int r = mrun_submit(m, rs->name ? rs->name : "", rs->plan_json, why, sizeof why);
    if (r < 0) {
        mlog("run %s refused: %s", rs->name ? rs->name : "", why);
        send_run_reply(m, msg, rs->request_id, RL_EINVAL, why, NULL, NULL, 0, 0);
    } else {
        send_run_reply(m, msg, rs->request_id, 0, "", mrun_status(m, r), NULL, 0, 0);
    }
    dispatch_all(m);
}

static void on_run_query(master_t *m, const wire_msg_t *msg, int w, const Rlhf__RunQuery *q) {
    if (client_of(m, msg, w, "RunQuery from a peer that is not a client") < 0) return;
    const char *name = q->name ? q->name : "";
    int r = name[0] ? mrun_find(m, name) : -1;
    if (name[0] && r < 0) {
        char why[300];
        snprintf(why, sizeof why, "no run named %.200s", name);
        send_run_reply(m, msg, q->request_id, RL_ENOTFOUND, why, NULL, NULL, 0, 0);
        return;
    }
    uint8_t *log = NULL;
    size_t len = 0;
    uint64_t next = q->log_offset;
    if (q->want_log && r >= 0) mrun_log_read(m, r, q->log_offset, 256 << 10, &log, &len, &next);
    send_run_reply(m, msg, q->request_id, 0, "", mrun_status(m, r), log, len, next);
    free(log);
}

static void on_run_cancel(master_t *m, const wire_msg_t *msg, int w, const Rlhf__RunCancel *c) {
    if (client_of(m, msg, w, "RunCancel from a peer that is not a client") < 0) return;
    int r = mrun_find(m, c->name ? c->name : "");
    char why[1024] = "";
    if (r < 0) snprintf(why, sizeof why, "no run named %.200s", c->name ? c->name : "");
    int rc = r < 0 ? -1 : mrun_cancel(m, r, why, sizeof why);
    send_run_reply(m, msg, c->request_id, rc < 0 ? RL_EINVAL : 0, why,
                   r >= 0 ? mrun_status(m, r) : NULL, NULL, 0, 0);
}

/* The SEC_ROLE_* bit of a worker role of the wire. */
static unsigned role_bit(int role) {
    switch (role) {
    case RLHF__ROLE__ROLE_ROLLOUT:
        return SEC_ROLE_ROLLOUT;
    case RLHF__ROLE__ROLE_REWARD:
        return SEC_ROLE_REWARD;
    case RLHF__ROLE__ROLE_LEARNER:
        return SEC_ROLE_LEARNER;
    case RLHF__ROLE__ROLE_STAGE:
        return SEC_ROLE_STAGE;
    default: /* clients and diagnostics tools: a client key, or a stage's for its commands */
        return SEC_ROLE_CLIENT | SEC_ROLE_STAGE;
    }
}

/* Why the sender's key may not send this message (NULL: it may). Plaintext: every message is
 * allowed. Secure: a Hello needs the key's role for the role it registers as; a registered
 * worker's messages must come with the key it registered with (so nobody speaks for it); only
 * a learner announces weights; only a client submits or cancels runs; jobs and results are
 * asked for by clients and stages (whose commands are clients). */
static const char *forbidden(const master_t *m, const wire_msg_t *msg, int w,
                             const Rlhf__Envelope *env) {
    if (!sec_enabled()) return NULL;
    unsigned roles = sec_peer_roles(msg->user);
    if (w >= 0 && strcmp(m->sched.workers[w].user, msg->user) &&
        env->body_case != RLHF__ENVELOPE__BODY_HELLO)
        return "this connection's worker registered with another key";
    switch (env->body_case) {
    case RLHF__ENVELOPE__BODY_HELLO:
        return roles & role_bit(env->hello->role) ? NULL : "the key has no role to register so";
    case RLHF__ENVELOPE__BODY_WEIGHTS_ANNOUNCE:
        return roles & SEC_ROLE_LEARNER ? NULL : "only a learner's key announces weights";
    case RLHF__ENVELOPE__BODY_RUN_SUBMIT:
    case RLHF__ENVELOPE__BODY_RUN_CANCEL:
        return roles & SEC_ROLE_CLIENT ? NULL : "only a client's key submits or cancels runs";
    case RLHF__ENVELOPE__BODY_SUBMIT_JOBS:
    case RLHF__ENVELOPE__BODY_FETCH_RESULTS:
    case RLHF__ENVELOPE__BODY_RUN_QUERY:
        return roles & (SEC_ROLE_CLIENT | SEC_ROLE_STAGE) ? NULL
                                                          : "only a client's or stage's key may";
    default: /* heartbeats, results, rejects, goodbyes: a registered worker's, checked above */
        return NULL;
    }
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
    const char *why = forbidden(m, msg, w, env);
    if (why) {
        count_bad(m, MASTER_BAD_FORBIDDEN, msg, why);
        send_error(m, msg->rid, msg->rid_len, RLHF__ERROR_CODE__ERROR_CODE_FORBIDDEN, why);
        rlhf__envelope__free_unpacked(env, NULL);
        return;
    }
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
    case RLHF__ENVELOPE__BODY_SUBMIT_JOBS:
        on_submit(m, msg, w, env->submit_jobs);
        break;
    case RLHF__ENVELOPE__BODY_FETCH_RESULTS:
        on_fetch(m, msg, w, env->fetch_results);
        break;
    case RLHF__ENVELOPE__BODY_JOB_REJECT:
        on_reject(m, w, env->job_reject);
        break;
    case RLHF__ENVELOPE__BODY_RUN_SUBMIT:
        on_run_submit(m, msg, w, env->run_submit);
        break;
    case RLHF__ENVELOPE__BODY_RUN_QUERY:
        on_run_query(m, msg, w, env->run_query);
        break;
    case RLHF__ENVELOPE__BODY_RUN_CANCEL:
        on_run_cancel(m, msg, w, env->run_cancel);
        break;
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
    case RLHF__ENVELOPE__BODY_WEIGHTS_ANNOUNCE:
        on_weights_announce(m, msg, env->weights_announce);
        break;
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
/* Before the loop blocks: drain what ZMQ_EVENTS still holds, then the group commit - every
 * record appended in this turn of the loop made durable with one fdatasync. */
static void on_zprep(uv_prepare_t *h) {
    master_t *m = h->data;
    drain(m);
    if (m->journal && journal_dirty(m->journal) && journal_sync(m->journal) < 0) {
        mlog("journal: %s", rl_errmsg());
        master_stop(m, "the journal cannot be synced");
    }
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
 *   3. journal jobs that ran out of attempts as failed; advance the runs (mrun_tick);
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
    mrun_tick(m);
    dispatch_all(m);
    journal_maybe_compact(m);
    if (m->cfg.exit_when_done && all_finished(m)) master_stop(m, "all jobs finished");
}

static void on_signal(uv_signal_t *s, int sig) {
    master_stop(s->data, sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- setup ---------------------------------------------------------------------------------- */

/* The artifact server: on the ROUTER's bind host (master.blob_port, 0: any free port), serving
 * DATA_DIR/.blobs, advertised at master.advertise's host (the bound address when none). A master
 * bound to a wildcard without master.advertise is refused here: its peers could not dial it. */
static int blob_setup(master_t *m) {
    char host[256], adv[256] = "", bind[ADDR_EP_LEN], dir[4200], port[16];
    int p, rc = addr_split(m->endpoint, host, sizeof host, &p);
    if (rc < 0) return rc;
    if (m->cfg.advertise[0] && (rc = addr_split(m->cfg.advertise, adv, sizeof adv, &p)) < 0)
        return rl_fail_ctx(rc, "master.advertise: ");
    if (!adv[0] && addr_is_wildcard(host))
        return rl_fail(RL_EINVAL,
                       "master.bind %s listens on every interface: give the address workers "
                       "reach this host at (--advertise HOST)",
                       m->endpoint);
    snprintf(port, sizeof port, "%d", m->cfg.blob_port);
    if ((rc = addr_bind_ep(host, bind, sizeof bind)) < 0) return rc;
    if (m->cfg.blob_port) snprintf(strrchr(bind, ':') + 1, 16, "%s", port);
    snprintf(dir, sizeof dir, "%.4000s/.blobs", m->data_dir[0] ? m->data_dir : m->cfg.run_dir);
    if (!(m->blobs = blob_store_open(dir))) return rl_fail_ctx(RL_EIO, "artifact store: ");
    if (!(m->blob_srv = blob_server_start(m->zctx, m->blobs, bind, adv[0] ? adv : NULL)))
        return rl_fail_ctx(RL_EIO, "artifact server: ");
    snprintf(m->blob_endpoint, sizeof m->blob_endpoint, "%s", blob_server_endpoint(m->blob_srv));
    return 0;
}

static int zsetup(master_t *m) {
    m->zctx = zmq_ctx_new();
    m->router = m->zctx ? zmq_socket(m->zctx, ZMQ_ROUTER) : NULL;
    if (m->router) addr_zmq_opts(m->router);
    if (!m->router) return rl_fail(RL_EIO, "zmq_socket: %s", zmq_strerror(errno));
    int rc = sec_server(m->zctx, m->router, "master");
    if (rc < 0) return rc;
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
    addr_normalize(m->endpoint, sizeof m->endpoint);
    rc = blob_setup(m);
    if (rc < 0) return rc;
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
    json_t *o = json_pack("{s:i, s:s, s:s, s:s, s:i, s:s}", "pid", (int)getpid(), "endpoint",
                          m->endpoint, "blob_endpoint", m->blob_endpoint, "http_host",
                          m->cfg.http_host, "http_port", m->http_port, "master_id", m->master_id);
    /* what an HTTP client of this master needs, never the token itself: the scheme, the file
     * with the token (none: insecure), the certificate to trust */
    const char *tok = master_http_token_path(m), *cert = master_http_cert_path(m);
    json_object_set_new(o, "http_scheme", json_string(cert ? "https" : "http"));
    if (tok) json_object_set_new(o, "http_token_file", json_string(tok));
    if (cert) json_object_set_new(o, "tls_cert", json_string(cert));
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
    "usage: rlhf-master [--config FILE] [--set KEY=VALUE]... [--bind EP] [--advertise HOST]\n"
    "                   [--run-dir DIR] [--data-dir DIR] [--http-port N] [--heartbeat-ms N]\n"
    "                   [--liveness N] [--lease-ms N] [--exit-when-done]\n"
    "                   (--keys DIR | --insecure) [--http-token-file FILE]\n"
    "                   [--tls-cert FILE --tls-key FILE]\n"
    "       rlhf-master --dump-results DIR\n"
    "       rlhf-master --run-dir DIR --bench-journal N\n\n"
    "Runs a master: the runs it owns (each in DATA_DIR/NAME; --data-dir defaults to the run\n"
    "directory), the job queue, the worker registry, HTTP status, and its journal in\n"
    "RUN_DIR/journal, replayed at start. Runs and jobs come from clients (rlhf run;\n"
    "common/net/client.h). --exit-when-done stops it once it has been given jobs and every one\n"
    "of them is finished. --dump-results prints the job ends in DIR's journal as JSON lines\n"
    "(only reading it). --bench-journal writes a journal of N finished jobs in DIR and times\n"
    "the replay a starting master does of it.\n"
    "--bind takes any ZeroMQ TCP endpoint, IPv4 or IPv6 (tcp://0.0.0.0:5555, tcp://[::]:5555);\n"
    "the default is the loopback. Bound to a wildcard, the master needs --advertise: the host\n"
    "(or tcp://HOST:PORT) workers on other machines reach it at, given to them for the\n"
    "master's artifact server (master.blob_port, same bind host).\n"
    "--keys DIR: the cluster's keys (`rlhf keygen --dir DIR`; or $RLHF_KEYS): CURVE on every\n"
    "socket with DIR/master.key, admitting only the keys of DIR/authorized_keys, each to what\n"
    "its roles allow. --insecure: plaintext, anyone who reaches the ports is admitted.\n"
    "HTTP: /healthz is open; /status and /metrics want `Authorization: Bearer TOKEN`, the token\n"
    "in --http-token-file (mode 0600, one token of 32+ characters) or, without it, a new random\n"
    "one the master writes to RUN_DIR/http.token (0600) at every start. --tls-cert and --tls-key\n"
    "(PEM, the key mode 0600) serve HTTPS instead of HTTP. --insecure wants no token either.\n"
    "Options other than --config are shorthands for --set of the config keys (master.bind,\n"
    "run_dir, master.http_port, ...); they apply in order after the file.\n";

/* --bench-journal N: N client jobs (created, leased, ended with a 64-byte output: the records a
 * finished GENERATE job leaves) appended to a fresh journal in RUN_DIR/journal with a group
 * commit every 512 records, then replayed as a starting master replays (the scheduler rebuilt).
 * Prints {"jobs","records","bytes","write_s","replay_s","jobs_per_s"}. */
static int bench_journal(master_t *m, long n) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%.4000s/journal", m->cfg.run_dir);
    if (fs_remove_tree(dir) < 0 && errno != ENOENT) return -1;
    master_ns_index(m, "");
    m->journal = journal_open(dir, NULL, NULL);
    if (!m->journal) return -1;
    uint8_t out[64];
    for (int i = 0; i < 64; i++) out[i] = (uint8_t)(i * 7);
    double t0 = wire_now_ms();
    for (long id = 1; id <= n; id++) {
        Rlhf__JournalRecord rec = RLHF__JOURNAL_RECORD__INIT;
        Rlhf__JournalJob jj = RLHF__JOURNAL_JOB__INIT;
        Rlhf__JobSpec js = RLHF__JOB_SPEC__INIT;
        js.id = (uint64_t)id;
        js.kind = RLHF__JOB_KIND__JOB_KIND_GENERATE;
        js.seed = mix64((uint64_t)id) >> 1;
        js.lease_ms = 30000;
        js.payload.data = out;
        js.payload.len = 48;
        jj.ns = "";
        jj.spec = &js;
        rec.body_case = RLHF__JOURNAL_RECORD__BODY_JOB;
        rec.job = &jj;
        master_journal(m, &rec, 0);
        Rlhf__JournalLease l = RLHF__JOURNAL_LEASE__INIT;
        l.ns = "";
        l.id = (uint64_t)id;
        l.attempt = 1;
        l.worker = "bench-worker-1";
        rec.body_case = RLHF__JOURNAL_RECORD__BODY_LEASE;
        rec.lease = &l;
        master_journal(m, &rec, 0);
        Rlhf__JournalJobEnd e = RLHF__JOURNAL_JOB_END__INIT;
        e.ns = "";
        e.id = (uint64_t)id;
        e.status = RLHF__JOB_STATUS__JOB_STATUS_DONE;
        e.attempt = 1;
        e.worker = "bench-worker-1";
        e.elapsed_ms = 12.5;
        e.output.data = out;
        e.output.len = sizeof out;
        rec.body_case = RLHF__JOURNAL_RECORD__BODY_JOB_END;
        rec.job_end = &e;
        master_journal(m, &rec, id % 171 == 0);
        if (m->stopping) return -1;
    }
    journal_sync(m->journal);
    journal_stats_t st;
    journal_stats(m->journal, &st);
    double write_s = (wire_now_ms() - t0) / 1e3;
    journal_close(&m->journal);
    sched_free(&m->sched);
    sched_init(&m->sched, 5, 0);
    t0 = wire_now_ms();
    if (journal_start(m) < 0) return -1;
    double replay_s = (wire_now_ms() - t0) / 1e3;
    int done = sched_count(&m->sched, SCHED_DONE);
    printf("{\"jobs\":%ld,\"records\":%llu,\"bytes\":%llu,\"write_s\":%.3f,\"replay_s\":%.3f,"
           "\"jobs_per_s\":%.0f,\"jobs_done_after_replay\":%d}\n",
           n, (unsigned long long)st.appends, (unsigned long long)st.bytes_appended, write_s,
           replay_s, n / (replay_s > 0 ? replay_s : 1e-9), done);
    return done == n ? 0 : rl_fail(RL_EFORMAT, "replayed %d done jobs of %ld", done, n);
}

int main(int argc, char **argv) {
    static master_t M;
    master_t *m = &M;
    cfg_defaults(&m->cfg);
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"set", required_argument, 0, 's'},
                                         {"bind", required_argument, 0, 'b'},
                                         {"advertise", required_argument, 0, 'a'},
                                         {"run-dir", required_argument, 0, 'r'},
                                         {"data-dir", required_argument, 0, 'd'},
                                         {"dump-results", required_argument, 0, 'D'},
                                         {"bench-journal", required_argument, 0, 'B'},
                                         {"http-port", required_argument, 0, 'p'},
                                         {"heartbeat-ms", required_argument, 0, 'H'},
                                         {"liveness", required_argument, 0, 'L'},
                                         {"lease-ms", required_argument, 0, 'l'},
                                         {"exit-when-done", no_argument, 0, 'x'},
                                         {"keys", required_argument, 0, 'K'},
                                         {"http-token-file", required_argument, 0, 'T'},
                                         {"tls-cert", required_argument, 0, 'C'},
                                         {"tls-key", required_argument, 0, 'k'},
                                         {"insecure", no_argument, 0, 'I'},
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
    long bench_n = 0;
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
        case 'a':
            key = "master.advertise";
            break;
        case 'r':
            key = "run_dir";
            break;
        case 'd':
            snprintf(m->data_dir, sizeof m->data_dir, "%s", optarg);
            continue;
        case 'B':
            bench_n = strtol(optarg, NULL, 10);
            continue;
        case 'D':
            if (master_dump_results(optarg, stdout) < 0) {
                fprintf(stderr, "rlhf-master: %s\n", rl_errmsg());
                return 1;
            }
            return 0;
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
        case 'K':
            key = "master.keys";
            break;
        case 'T':
            key = "master.http_token_file";
            break;
        case 'C':
            key = "master.tls_cert";
            break;
        case 'k':
            key = "master.tls_key";
            break;
        case 'I':
            rc = cfg_set(&m->cfg, "master.insecure", "true", "--insecure");
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
    /* secure unless told otherwise: CURVE on every socket, the keys of authorized_keys only */
    if (!bench_n && sec_init(SEC_ROLE_MASTER, NULL, m->cfg.keys, m->cfg.insecure) < 0) {
        fprintf(stderr, "rlhf-master: %s\n", rl_errmsg());
        return 2;
    }
    if (sec_enabled() && (m->n_peers = sec_peers_copy(&m->peers)) < 0) {
        fprintf(stderr, "rlhf-master: out of memory\n");
        return 1;
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
    if (bench_n > 0) {
        if (bench_journal(m, bench_n) < 0) {
            fprintf(stderr, "rlhf-master: --bench-journal: %s\n", rl_errmsg());
            return 1;
        }
        journal_close(&m->journal);
        return 0;
    }
    /* runs live in DATA_DIR/NAME: by default beside the master's own files, in RUN_DIR/runs */
    if (!m->data_dir[0]) snprintf(m->data_dir, sizeof m->data_dir, "%.4000s/runs", m->cfg.run_dir);
    char abs_dir[4096];
    if (fs_mkdir_p(m->data_dir) == 0 && realpath(m->data_dir, abs_dir))
        snprintf(m->data_dir, sizeof m->data_dir, "%s", abs_dir);
    master_ns_index(m, ""); /* namespace 0: plain clients */
    if ((rc = fs_mkdir_p(m->cfg.run_dir)) < 0 ||
        (m->cfg.http_port >= 0 && (rc = master_http_prepare(m)) < 0) ||
        (rc = journal_start(m)) < 0 || (rc = zsetup(m)) < 0 ||
        (m->cfg.http_port >= 0 &&
         (rc = master_http_start(m, m->cfg.http_host, m->cfg.http_port)) < 0) ||
        (rc = write_master_json(m)) < 0) {
        fprintf(stderr, "rlhf-master: %s\n", rl_errmsg());
        rc = 1;
        goto out;
    }
    mlog("%s listening on %s, artifacts %s, http %s:%d, run %s, %d jobs (%d queued), id %s",
         argv[0], m->endpoint, m->blob_endpoint, m->cfg.http_host, m->http_port, m->cfg.run_dir,
         m->sched.n_jobs, sched_count(&m->sched, SCHED_QUEUED), m->master_id);
    if (m->http)
        mlog("http: %s, %s%s", master_http_cert_path(m) ? "TLS" : "plain (no TLS)",
             master_http_token_path(m) ? "bearer token in " : "no authentication (insecure)",
             master_http_token_path(m) ? master_http_token_path(m) : "");
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
    blob_server_stop(&m->blob_srv);
    blob_store_close(&m->blobs);
    if (m->zctx) zmq_ctx_term(m->zctx);
    journal_close(&m->journal);
    mrun_free(m);
    mann_free(m);
    for (int i = 0; i < m->n_ns; i++) free(m->ns[i]);
    free(m->ns);
    free(m->ns_code);
    uv_loop_close(m->loop);
    sched_free(&m->sched);
    cfg_free(&m->cfg);
    json_decref(m->ppo_stats);
    free(m->peers);
    return rc;
}
