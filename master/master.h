/*
 * master.h - rlhf-master's state, shared by its files: master_main.c (the libuv loop, the
 * ROUTER socket, message handling, the cron timer, results) and master_http.c (/healthz,
 * /status, /metrics on the same loop, declared in master_http.h). Only the struct lives here:
 * master_main.c calls into master_http.h, never the other way round.
 */
#ifndef RLHF_MASTER_H
#define RLHF_MASTER_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <uv.h>

#include "base/cfg.h"
#include "journal.h"
#include "master_sched.h"
#include "net/sec.h"
#include "net/wire.h"

/* Bad-input classes counted by the master: wire_bad_t, plus messages that decode fine but make
 * no sense from this peer (a worker sending JobAssign, a result from nobody). */
#define MASTER_BAD_UNEXPECTED WIRE_BAD_COUNT
#define MASTER_BAD_FORBIDDEN  (WIRE_BAD_COUNT + 1) /* the key's roles do not allow it */
#define MASTER_BAD_COUNT      (WIRE_BAD_COUNT + 2)

typedef struct master_http master_http_t;
typedef struct mrun mrun_t;

typedef struct {
    cfg_run_t cfg;
    uv_loop_t *loop;
    void *zctx, *router;
    uv_poll_t zpoll;    /* ZMQ_FD: readable = "ZMQ_EVENTS may have changed" (edge) */
    uv_prepare_t zprep; /* before the loop blocks: re-check ZMQ_EVENTS, never miss an edge */
    uv_idle_t zidle;    /* active only while a drain stopped early with messages left */
    uv_timer_t cron;
    uv_signal_t sigterm, sigint;
    int draining;
    int zhandles; /* zpoll, zprep, zidle initialised */
    char master_id[40];
    char endpoint[256];
    /* the artifact server (net/blob.h): DATA_DIR/.blobs, the models and datasets runs name by
     * content and the results learners push; its advertised endpoint goes in every Welcome */
    struct blob_store *blobs;
    struct blob_server *blob_srv;
    char blob_endpoint[320];
    double start_ms;
    double start_unix;
    sched_t sched;
    journal_t *journal; /* RUN_DIR/journal: every state change, replayed at start */
    char journal_dir[4096];
    int replaying;       /* journal_open is replaying: nothing is journaled again */
    char data_dir[4096]; /* where runs live: DATA_DIR/NAME */
    char **ns;           /* job namespaces: ns[0] = "" (plain clients) */
    uint32_t *ns_code;   /* each one's code in the scheduler's job ids (master_job_id) */
    int n_ns, cap_ns;
    mrun_t *runs; /* master_run.c */
    int n_runs, cap_runs;
    uint64_t run_seq; /* submissions so far (the runs' order) */
    uint64_t n_journal_records, n_journal_errors;
    journal_loc_t last_loc; /* of the record master_journal appended last */
    /* counters */
    uint64_t n_recv, n_sent, n_send_fail, n_bad[MASTER_BAD_COUNT], n_registrations;
    uint64_t n_results_recorded;
    /* clients: jobs submitted (new), resubmitted (known, same spec), rejected; fetch requests */
    uint64_t n_submitted, n_resubmitted, n_submit_rejected, n_fetches;
    /* newest weights announced (WeightsAnnounce from the learner): forwarded to every worker */
    uint64_t weights_version;
    char weights_endpoint[256];
    char weights_key[48];
    /* the keys of authorized_keys (secure clusters), handed to workers in Welcome */
    sec_peer_t *peers;
    int n_peers;             /* its server's CURVE public key (secure clusters; "" otherwise) */
    double weights_first_ms; /* when its announcer was first heard (0: unknown, or reset) */
    struct {
        uint8_t rid[SCHED_MAX_RID];
        size_t rid_len;
        double first_ms;
    } announcers[32]; /* the weights announcers heard lately, by routing id */
    int n_announcers;
    json_t *ppo_stats;    /* the newest PPO update's figures (TrainOutput.ppo), or NULL */
    uint64_t ppo_version; /* the policy version that update published */
    /* reward programs' per-item errors and timeouts in SCORE outputs taken (for /metrics) */
    uint64_t program_errors, program_timeouts;
    struct mann *ann; /* human annotators and their rankings (master_annot.c) */
    master_http_t *http;
    int http_port;
    int stopping;
} master_t;

/* ---- master_main.c's services to master_run.c ---- */

/* Logs a line to the master's log. */
void master_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The index of job namespace ns, added (and journaled with the first job that names it) when
 * new. Returns the index or RL_ENOMEM. */
int master_ns_index(master_t *m, const char *ns);

/* The scheduler's id of job `id` of namespace index ns: the id itself in namespace 0, otherwise
 * 2^63 | code << 40 | id (ids of a namespace are below 2^40), code a 23-bit hash of the
 * namespace's name - so a job keeps its id across master restarts and masters (workers see it:
 * a learner recognises a job it applied already by its id). */
uint64_t master_job_id(const master_t *m, int ns, uint64_t id);

/* Creates a job of run `run` (journaled). Returns its scheduler index, or RL_E*. */
int master_job_create(master_t *m, int ns, uint64_t id, int kind, uint64_t seed,
                      uint64_t policy_version, int role, uint32_t lease_ms, const void *payload,
                      size_t len, int run);

/* A finished job's record (JournalJobEnd: output, worker, elapsed_ms), read back from the
 * journal; free with rlhf__journal_job_end__free_unpacked... via the record: *rec is the whole
 * record (free with rlhf__journal_record__free_unpacked). Returns 0, or RL_ENOTFOUND when the
 * job has no readable record. */
int master_job_end_read(master_t *m, const sched_job_t *jb, Rlhf__JournalRecord **rec);

/* A finished job whose record is no longer needed: journaled as forgotten; a job created again
 * under its id runs again. */
void master_job_forget(master_t *m, sched_job_t *jb);

/* A queued job failed without running (its run was cancelled): journaled, its client told. */
void master_job_fail(master_t *m, sched_job_t *jb, const char *reason);

/* Whether finished job jb was created with this spec (its identity: kind, seed, version,
 * payload). */
int master_job_same_spec(const sched_job_t *jb, int kind, uint64_t seed, uint64_t version,
                         const void *payload, size_t len);

/* Whether a finished job was forgotten (master_job_forget). */
int master_job_forgotten(const sched_job_t *jb);

/* Appends one record to the journal (made durable by the loop's group commit, or at once with
 * sync). Returns 0 or RL_EIO (logged; the master stops: it cannot promise anything more). */

int master_journal(master_t *m, Rlhf__JournalRecord *rec, int sync);

/* Dispatches whatever can be dispatched now. */
void master_dispatch(master_t *m);

/* Advances the runs now (mrun_tick), for master_annot.c: a submission may end a stage. */
void master_runs_tick(master_t *m);

/* Forgets the weights announced so far (a new training's versions start again). */
void master_weights_reset(master_t *m);

#endif
