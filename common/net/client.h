/*
 * client.h - (prefix client_) a small blocking client for drivers that submit jobs to a running
 * rlhf-master and wait for their outputs: the `rlhf ppo` loop submits an iteration's GENERATE
 * jobs, waits, submits SCORE jobs, waits, submits a TRAIN job, waits, and so on.
 *
 *   client_t *c = client_open("tcp://127.0.0.1:5555", "ppo-driver");
 *   client_job_t jobs[n] = {{.id = 1, .kind = RLHF__JOB_KIND__JOB_KIND_GENERATE,
 *                            .payload = packed_generate_spec, .payload_len = len}, ...};
 *   if (client_submit(c, jobs, n) < 0) ... rl_errmsg() ...
 *   client_wait(c, ids, n, -1, on_result, ctx);   on_result(ctx, &r) once per job
 *   client_close(&c);
 *
 * The protocol (proto/rlhf.proto, "clients"): the client is a DEALER that says Hello with
 * ROLE_CLIENT and heartbeats like a worker, but only while one of these calls runs - a driver
 * busy elsewhere for longer than the master's liveness limit is forgotten by the master and
 * registers again at its next call, asking for whatever finished meanwhile (nothing is lost).
 *
 * What the library guarantees:
 *   - submission is idempotent by job id: the master keeps one job per id and answers a
 *     resubmission of a finished job with its stored output; a different spec under a known id
 *     is rejected;
 *   - every submitted job is delivered to client_wait's callback exactly once per submission,
 *     whatever happens in between: duplicate answers are dropped; a restarted master (a new
 *     master_id) gets every job not yet finished submitted again (jobs it had finished it
 *     answers from its journal); lost answers are asked for again (FetchResults) every
 *     fetch_ms while waiting.
 * One client_t belongs to one thread. It never prints; errors are RL_E* codes with the detail in
 * rl_errmsg().
 */
#ifndef RLHF_CLIENT_H
#define RLHF_CLIENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct client client_t;

/* One job to submit. The payload is copied (kept until the job is delivered, to submit it again
 * to a restarted master). */
typedef struct {
    uint64_t id;             /* 1 .. 2^63-1, unique within the run */
    int kind;                /* Rlhf__JobKind */
    uint64_t seed;           /* 0: derived by the master from the run seed and the id */
    uint32_t lease_ms;       /* 0: the master's default */
    uint64_t policy_version; /* the weights version it needs (0: any) */
    int role;                /* Rlhf__Role that must run it; 0: any worker with the capability */
    const void *payload;     /* the kind's packed spec: GenerateSpec, TrainSpec, ... */
    size_t payload_len;
} client_job_t;

typedef enum {
    CLIENT_DONE = 0,     /* output is the kind's packed output message */
    CLIENT_FAILED = 1,   /* the master gave up on it (attempts spent) */
    CLIENT_REJECTED = 2, /* a restarted master refused it, or does not know a fetched job */
} client_status_t;

typedef struct {
    uint64_t id;
    client_status_t status;
    int kind;              /* Rlhf__JobKind (0 when rejected without being known) */
    uint32_t attempt;      /* the attempt that produced it */
    const char *worker;    /* who ran it ("" when unknown) */
    double elapsed_ms;     /* handler time on the worker */
    const uint8_t *output; /* valid during the callback only */
    size_t output_len;
    const char *reason; /* CLIENT_REJECTED or CLIENT_FAILED: why ("" when not known) */
} client_result_t;

/* Called once per finished job by client_wait. A negative return stops client_wait, which
 * returns that value (the job counts as delivered). */
typedef int (*client_result_fn)(void *ctx, const client_result_t *r);

typedef struct {
    int heartbeat_ms;  /* until the master's Welcome gives its own (default 1000) */
    int liveness;      /* missed heartbeats before the master is presumed gone (3) */
    int op_timeout_ms; /* client_submit gives up on acknowledgements after this long (60000) */
    int fetch_ms;      /* while waiting, ask for outstanding results this often (2000) */
    /* the job namespace sent in every Hello: job ids are unique within it and the client sees
     * only its own jobs (a run's stage commands use "RUN/STAGE"); NULL or "": the namespace of
     * plain clients. Copied by client_open_opts. */
    const char *ns;
} client_opts_t;

/* Connects to the master at endpoint and says Hello as `name` (NULL: host-pid), in the namespace
 * opts->ns; does not wait for the answer (a master that is not up yet is waited for by the calls
 * that need it). opts may be NULL (the defaults). Returns the client, or NULL with rl_errmsg()
 * set (RL_EINVAL: endpoint missing or too long, namespace longer than 255 bytes). */
client_t *client_open_opts(const char *endpoint, const char *name, const client_opts_t *opts);

/* client_open_opts with the defaults (the "" namespace). */
client_t *client_open(const char *endpoint, const char *name);

/* The master's artifact server (Welcome.blob_endpoint, net/blob.h), waiting up to timeout_ms
 * for the master's Welcome. NULL with the reason in rl_errmsg() (no answer, or none served). */
const char *client_blob_endpoint(client_t *c, int timeout_ms);

/*
 * Submits n jobs (sent in as many SubmitJobs as the envelope limit needs) and waits until the
 * master has acknowledged each. Results that arrive meanwhile are kept for client_wait.
 * Submitting an id again that was already delivered asks for it again (the master answers from
 * its record, nothing is re-run). Returns 0 when every job was accepted (or was already done);
 * RL_EINVAL when some were rejected (invalid spec, or another spec under a known id: those are
 * forgotten, the others stay submitted; rl_errmsg() names the first and the count); RL_EIO when
 * the master did not acknowledge within op_timeout_ms (the jobs stay submitted); RL_ENOMEM.
 */
int client_submit(client_t *c, const client_job_t *jobs, int n);

/*
 * Waits for jobs submitted earlier, possibly by another process (a restarted driver), without
 * their specs: asks the master for them (FetchResults); client_wait then delivers them. A job
 * the master does not know is delivered as CLIENT_REJECTED (there is no spec to submit).
 * Ids this client already has outstanding are left as they are. Returns 0 or RL_ENOMEM.
 */
int client_fetch(client_t *c, const uint64_t *ids, int n);

/*
 * Waits until every one of the n ids (submitted or fetched, not yet delivered) is finished and
 * calls cb once for each, in the order they become available; the results are then forgotten.
 * timeout_ms < 0: no limit. Returns 0 when all were delivered; RL_ERANGE on timeout (the ones
 * delivered so far stay delivered; call again for the rest); RL_EINVAL for an id that is not
 * outstanding (never submitted, or already delivered); a negative value cb returned; RL_EIO.
 */
int client_wait(client_t *c, const uint64_t *ids, int n, int timeout_ms, client_result_fn cb,
                void *ctx);

/* Jobs submitted or fetched and not yet delivered. */
int client_outstanding(const client_t *c);

/* The id of the master this client is registered with ("" before the first Welcome). */
const char *client_master_id(const client_t *c);

/* Counters for tests and logs: registrations (Welcomes), resubmissions after a master change,
 * duplicate answers dropped. */
typedef struct {
    uint64_t registrations, master_changes, jobs_resubmitted, duplicates_dropped, fetches_sent;
} client_stats_t;
void client_stats(const client_t *c, client_stats_t *st);

/*
 * Runs (proto/rlhf.proto, "runs"): a run submitted to the master, queried and cancelled. Each
 * call sends one request and waits up to timeout_ms (< 0: op_timeout_ms) for the RunReply with
 * its request_id, sending the request again after every (re-)registration - a restarted master,
 * or one that forgot us - and every second meanwhile (all three requests are idempotent on the
 * master). On success *out gets the reply (free it with rlhf__run_reply__free_unpacked); its
 * `code` may still be an RL_E* code with `error` saying why (a rejected plan, an unknown run).
 * Returns 0, RL_ERANGE when no reply came in time (*out NULL), RL_EINVAL, RL_ENOMEM, RL_EIO.
 */
struct Rlhf__RunReply;

/* RunSubmit: the run `name` with the plan (JSON; master/master_run.h describes it). */
int client_run_submit(client_t *c, const char *name, const char *plan_json,
                      struct Rlhf__RunReply **out, int timeout_ms);

/* RunQuery: the status of the run `name` ("" or NULL: all runs, as {"runs": [...]}); with
 * want_log, also its run log from byte log_offset (reply's log and log_offset, the offset after
 * it). */
int client_run_query(client_t *c, const char *name, int want_log, uint64_t log_offset,
                     struct Rlhf__RunReply **out, int timeout_ms);

/* RunCancel: cancels the run `name`; the reply holds its new status. */
int client_run_cancel(client_t *c, const char *name, struct Rlhf__RunReply **out, int timeout_ms);

/* Says Goodbye (jobs still outstanding go on running and are recorded by the master) and frees
 * the client; NULL-safe, nulls *cp. */
void client_close(client_t **cp);

#endif
