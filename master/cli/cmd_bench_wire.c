/*
 * cmd_bench_wire.c - `rlhf bench wire`: the distributed runtime measured with real processes on
 * loopback, nothing simulated on the master's side.
 *
 *   rlhf bench wire [--jobs N] [--workers K] [--swarm S] [--seconds T] [--sync-mb M]
 *                   [--fanout N1,N2,...] [--relay [--bind-host HOST] [--fetcher-wrap CMD]] [--keep]
 *
 * Phase 1 (dispatch): rlhf-master is started, N NOOP jobs are submitted to it as a client
 * (common/net/client.h), then K rollout workers are started, and the client waits for every
 * job. Each worker holds one lease at a time, so every job is one round trip
 * JobAssign -> handler -> JobResult; the master records its latency (dispatch to result, on the
 * master's clock) as latency_ms in its journal, from which p50 / p99 are taken. Every job must
 * be delivered and recorded exactly once, or the benchmark fails.
 *
 * Phase 2 (swarm): a fresh master with no jobs and 1 s heartbeats x 3; its CPU use is sampled
 * for 1 s idle, then `rlhf-wiretool swarm` opens S DEALER sockets in one process, each
 * registered and heartbeating at 1 Hz; once all S are registered (from /metrics), the master's
 * CPU time (utime + stime of /proc/PID/stat) is sampled over T seconds. /metrics also gives the
 * messages the master received and sent in that window and the workers it declared dead
 * (there should be none).
 *
 * Phase 3 (weight sync, skipped with --sync-mb 0): `rlhf-wiretool wsync-bench` measures, in one
 * process and one run, raw ZeroMQ throughput of M MiB streamed in 4 MiB chunks (zero-copy, no
 * flow control, no checks: the ceiling) against a wsync fetch of the same bytes over loopback
 * TCP (credit window, copy into the staging buffer, CRC-32C of every chunk and of the whole),
 * cold (fresh buffer) and warm (buffer reused, as between versions), the ratio warm / raw, and
 * the wall time until each of N concurrent fetchers holds a verified copy (fan-out). Each side
 * has a ZeroMQ context of its own, as separate processes would.
 *
 * Phase 4 (broadcast, with --relay): `rlhf-wiretool wsync-broadcast` publishes the M MiB snapshot
 * on an origin server bound on --bind-host and, for each fan-out N, starts N fetcher processes
 * twice: direct (each fetches from the origin) and relay (each from the previous one's relay, the
 * first from the origin: the chain the master builds, wsync.h). Per round: the wall time from the
 * go to the last verified copy, and the origin's egress (bytes_sent of its wsync server) - about
 * N copies direct, one with relays. --fetcher-wrap CMD starts fetcher I as `CMD I FETCHER...`,
 * so that a script can place each in a network namespace of its own (tests/bench_broadcast.sh).
 *
 * rlhf-master, rlhf-worker and rlhf-wiretool are taken from the directory of the `rlhf` binary.
 * Every child gets PR_SET_PDEATHSIG, and every exit path (failure, SIGINT, SIGTERM, time limit)
 * kills and reaps the children and removes the working directory (unless --keep). Prints one
 * JSON object.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "cli_http.h"
#include "base/err.h"
#include "net/sec.h"
#include "rlhf.pb-c.h"

#define BW_MAX_WORKERS 64

static volatile sig_atomic_t bw_stop;
static void bw_on_signal(int sig) {
    bw_stop = sig;
}

typedef struct {
    char dir[PATH_MAX];
    char keys[PATH_MAX + 16]; /* the bench cluster's key set (DIR/keys) */
    int plain;                /* the phase runs --insecure (CURVE's cost: both are measured) */
    char master_bin[PATH_MAX + 32], worker_bin[PATH_MAX + 32], tool_bin[PATH_MAX + 32];
    pid_t master, helper, workers[BW_MAX_WORKERS];
    int n_workers;                     /* started, to stop */
    int k, jobs, swarm, seconds, keep; /* options */
    int sync_mb;
    const char *fanout;
    int relay;                    /* phase 4 */
    const char *bind_host, *wrap; /* its origin's host, the fetchers' wrapper */
} bw_t;

static void nap_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* fork + exec with stdout/stderr to `log` and stdin from /dev/null. The child dies with us
 * (PR_SET_PDEATHSIG), so even a SIGKILLed benchmark leaves no process behind. */
static pid_t spawn(char *const *args, const char *log) {
    pid_t parent = getpid();
    pid_t p = fork();
    if (p == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127); /* the parent died before the prctl */
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
        if (nul >= 0) dup2(nul, 0);
        execv(args[0], args);
        _exit(127);
    }
    if (p < 0) rl_fail(RL_EIO, "fork: %s", strerror(errno));
    return p;
}

/* Sends sig, waits up to ms for the exit, then SIGKILLs; reaps. *pid becomes 0. */
static void stop_child(pid_t *pid, int sig, int ms) {
    if (*pid <= 0) return;
    kill(*pid, sig);
    for (int waited = 0; waitpid(*pid, NULL, WNOHANG) == 0; waited += 10) {
        if (waited >= ms) {
            kill(*pid, SIGKILL);
            waitpid(*pid, NULL, 0);
            break;
        }
        nap_ms(10);
    }
    *pid = 0;
}

static void stop_all(bw_t *b) {
    stop_child(&b->helper, SIGKILL, 0);
    for (int i = 0; i < b->n_workers; i++) stop_child(&b->workers[i], SIGTERM, 3000);
    b->n_workers = 0;
    stop_child(&b->master, SIGTERM, 3000);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* Prints the last lines of a log to stderr: a failed benchmark says why. */
static void show_log_tail(const char *dir, const char *name) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f) return;
    char lines[10][256];
    int n = 0;
    while (fgets(lines[n % 10], sizeof lines[0], f)) n++;
    fclose(f);
    fprintf(stderr, "--- %s (last lines)\n", name);
    for (int i = n > 10 ? n - 10 : 0; i < n; i++) fputs(lines[i % 10], stderr);
}

static int interrupted(void) {
    if (!bw_stop) return 0;
    return rl_fail(RL_EIO, "interrupted by signal %d", (int)bw_stop);
}

/* Waits for RUN_DIR/master.json written by this master; copies endpoint and HTTP port. */
static int wait_master(bw_t *b, const char *run, char *ep, size_t ep_len, int *http_port) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/master.json", run);
    for (int i = 0; i < 300; i++) { /* 15 s */
        if (interrupted()) return RL_EIO;
        json_t *o = json_load_file(path, 0, NULL);
        if (o && json_integer_value(json_object_get(o, "pid")) == b->master) {
            snprintf(ep, ep_len, "%s", json_string_value(json_object_get(o, "endpoint")));
            *http_port = (int)json_integer_value(json_object_get(o, "http_port"));
            json_decref(o);
            return 0;
        }
        json_decref(o);
        if (waitpid(b->master, NULL, WNOHANG) == b->master) {
            b->master = 0;
            return rl_fail(RL_EIO, "rlhf-master exited at start");
        }
        nap_ms(50);
    }
    return rl_fail(RL_EIO, "rlhf-master did not start within 15 s");
}

static int start_master(bw_t *b, const char *name, char **extra, int n_extra) {
    char run[PATH_MAX + 64], log[PATH_MAX + 64];
    snprintf(run, sizeof run, "%s/%s", b->dir, name);
    snprintf(log, sizeof log, "%s/%s.log", b->dir, name);
    char *args[32] = {b->master_bin, "--bind", "tcp://127.0.0.1:*", "--run-dir", run,
                      "--http-port", "0"};
    int n = 7;
    if (b->plain)
        args[n++] = "--insecure";
    else
        args[n++] = "--keys", args[n++] = b->keys;
    for (int i = 0; i < n_extra && n < 31; i++) args[n++] = extra[i];
    args[n] = NULL;
    b->master = spawn(args, log);
    return b->master > 0 ? 0 : RL_EIO;
}

/* CPU seconds (user + system) used so far by pid, from /proc/PID/stat; < 0 when it is gone. */
static double cpu_seconds(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may hold spaces; the fields follow the last ')' */
    if (!p) return -1;
    unsigned long long utime = 0, stime = 0;
    /* fields 3..13 skipped: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
     * cmajflt; then 14 utime, 15 stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* The value of an unlabelled sample `name` in /metrics text; NAN when absent. */
static double metric_value(const char *text, const char *name) {
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, name, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
    return NAN;
}

typedef struct {
    double received, sent, registrations, deaths;
} bw_metrics_t;

/* /metrics of the master whose files are in run (its master.json, its token). */
static int read_metrics(const char *run, bw_metrics_t *mt) {
    char *text = NULL;
    int rc = cli_http_get(run, NULL, "/metrics", &text);
    if (rc < 0) return rc;
    mt->received = metric_value(text, "rlhf_wire_messages_received_total");
    mt->sent = metric_value(text, "rlhf_wire_messages_sent_total");
    mt->registrations = metric_value(text, "rlhf_worker_registrations_total");
    mt->deaths = metric_value(text, "rlhf_worker_deaths_total");
    free(text);
    if (isnan(mt->received) || isnan(mt->sent) || isnan(mt->registrations) || isnan(mt->deaths))
        return rl_fail(RL_EPROTO, "/metrics lacks the wire counters");
    return 0;
}

/* Nearest-rank percentile of sorted v[n]. */
static double percentile(const double *v, int n, double p) {
    int k = (int)ceil(p / 100.0 * n) - 1;
    return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

/* ---- phase 1: dispatch round trips -------------------------------------------------------- */

typedef struct {
    double p50, p90, p99, mean, max, wall_s, handler_p50;
} bw_dispatch_t;

/* The client's view of phase 1: which of jobs 1..N were delivered. */
typedef struct {
    int n;               /* jobs 1..n */
    unsigned char *seen; /* [id]: delivered */
    int delivered;
} bw_wait_t;

static int bw_on_done(void *ctx, const client_result_t *r) {
    bw_wait_t *w = ctx;
    if (r->id < 1 || r->id > (uint64_t)w->n) return rl_fail(RL_EPROTO, "an unexpected job id");
    w->seen[r->id]++;
    w->delivered++;
    if (r->status != CLIENT_DONE)
        return rl_fail(RL_EIO, "NOOP job %llu %s %s", (unsigned long long)r->id,
                       r->status == CLIENT_FAILED ? "failed" : "rejected:", r->reason);
    return 0;
}

/* Submits NOOP jobs 1..N as a client, then waits for all of them while watching for signals,
 * dead workers and the time limit. Sets *t0 to when the workers were started. */
static int dispatch_run(bw_t *b, const char *ep, double *t0) {
    sec_pause(b->plain); /* this client's socket: plaintext in the --insecure phase */
    client_t *c = client_open(ep, "bench-wire");
    sec_pause(0);
    client_job_t *jobs = calloc((size_t)b->jobs, sizeof *jobs);
    uint64_t *ids = calloc((size_t)b->jobs, sizeof *ids);
    bw_wait_t w = {b->jobs, calloc((size_t)b->jobs + 1, 1), 0};
    int rc = c && jobs && ids && w.seen ? 0 : rl_fail_ctx(RL_ENOMEM, "client: ");
    for (int i = 0; rc == 0 && i < b->jobs; i++)
        jobs[i] = (client_job_t){.id = (uint64_t)i + 1, .kind = RLHF__JOB_KIND__JOB_KIND_NOOP};
    if (rc == 0) rc = client_submit(c, jobs, b->jobs);
    *t0 = cli_now_ms();
    for (int i = 0; rc == 0 && i < b->k; i++) {
        char log[PATH_MAX + 64], id[32];
        snprintf(log, sizeof log, "%s/worker-%d.log", b->dir, i);
        snprintf(id, sizeof id, "bench-%d", i);
        char *args[] = {b->worker_bin,
                        "--role",
                        "rollout",
                        "--master",
                        (char *)ep,
                        "--id",
                        id,
                        b->plain ? "--insecure" : "--keys",
                        b->plain ? NULL : b->keys,
                        NULL};
        if ((b->workers[i] = spawn(args, log)) < 0) rc = RL_EIO;
        b->n_workers = i + 1;
    }
    /* bounded: 30 s plus 25 ms a job, far above what loopback and an fsync per result need */
    double deadline = *t0 + 30e3 + 25.0 * b->jobs;
    while (rc == 0 && w.delivered < b->jobs) {
        int n = 0;
        for (int i = 1; i <= b->jobs; i++)
            if (!w.seen[i]) ids[n++] = (uint64_t)i;
        rc = client_wait(c, ids, n, 100, bw_on_done, &w);
        if (rc != RL_ERANGE) break;
        rc = interrupted();
        int st = 0;
        for (int i = 0; rc == 0 && i < b->n_workers; i++)
            if (b->workers[i] > 0 && waitpid(b->workers[i], &st, WNOHANG) == b->workers[i]) {
                b->workers[i] = 0;
                rc = rl_fail(RL_EIO, "rlhf-worker %d exited (status %d, see worker-%d.log)", i, st,
                             i);
            }
        if (rc == 0 && waitpid(b->master, &st, WNOHANG) == b->master) {
            b->master = 0;
            rc = rl_fail(RL_EIO, "rlhf-master (dispatch) exited with status %d", st);
        }
        if (rc == 0 && cli_now_ms() > deadline)
            rc =
                rl_fail(RL_EIO, "the dispatch phase took more than %.0f s", (deadline - *t0) / 1e3);
    }
    client_close(&c);
    free(jobs), free(ids), free(w.seen);
    return rc;
}

/* Reads the job ends of the master's journal (`rlhf-master --dump-results RUN`): every job
 * 1..N exactly once, status done; fills the latency figures. */
static int read_results(const bw_t *b, const char *run, bw_dispatch_t *d) {
    char cmd[PATH_MAX * 3], master[PATH_MAX + 32];
    local_bin_path(master, sizeof master, "rlhf-master");
    snprintf(cmd, sizeof cmd, "'%.4000s' --dump-results '%.4000s'", master, run);
    const char *path = "the journal";
    FILE *f = popen(cmd, "r");
    if (!f) return rl_fail(RL_EIO, "%s: %s", cmd, strerror(errno));
    double *lat = malloc((size_t)b->jobs * sizeof *lat),
           *hand = malloc((size_t)b->jobs * sizeof *hand);
    unsigned char *seen = calloc((size_t)b->jobs + 1, 1);
    char *line = NULL;
    size_t cap = 0;
    int n = 0, rc = lat && hand && seen ? 0 : rl_fail(RL_ENOMEM, "out of memory");
    while (rc == 0 && getline(&line, &cap, f) > 0) {
        json_t *o = json_loads(line, 0, NULL);
        json_int_t id = json_integer_value(json_object_get(o, "job_id"));
        const char *st = json_string_value(json_object_get(o, "status"));
        json_t *jl = json_object_get(o, "latency_ms"), *je = json_object_get(o, "elapsed_ms");
        if (!o || id < 1 || id > b->jobs || !st || strcmp(st, "done") || !json_is_number(jl))
            rc = rl_fail(RL_EFORMAT, "%s: unexpected record: %.200s", path, line);
        else if (seen[id]++)
            rc = rl_fail(RL_EFORMAT, "%s: job %lld recorded twice", path, (long long)id);
        else {
            lat[n] = json_number_value(jl);
            hand[n++] = json_is_number(je) ? json_number_value(je) : 0;
        }
        json_decref(o);
    }
    free(line);
    if (pclose(f) != 0 && rc == 0) rc = rl_fail(RL_EIO, "%s failed", cmd);
    if (rc == 0 && n != b->jobs)
        rc = rl_fail(RL_EFORMAT, "%s: %d results for %d jobs", path, n, b->jobs);
    if (rc == 0) {
        qsort(lat, (size_t)n, sizeof *lat, cli_cmp_double);
        qsort(hand, (size_t)n, sizeof *hand, cli_cmp_double);
        double sum = 0;
        for (int i = 0; i < n; i++) sum += lat[i];
        d->p50 = percentile(lat, n, 50);
        d->p90 = percentile(lat, n, 90);
        d->p99 = percentile(lat, n, 99);
        d->max = lat[n - 1];
        d->mean = sum / n;
        d->handler_p50 = percentile(hand, n, 50);
    }
    free(lat), free(hand), free(seen);
    return rc;
}

static int phase_dispatch(bw_t *b, bw_dispatch_t *d) {
    char run[PATH_MAX + 64], ep[256];
    const char *name = b->plain ? "dispatch-insecure" : "dispatch";
    snprintf(run, sizeof run, "%s/%s", b->dir, name);
    int port, rc = start_master(b, name, NULL, 0);
    if (rc == 0) rc = wait_master(b, run, ep, sizeof ep, &port);
    double t0 = 0;
    if (rc == 0) rc = dispatch_run(b, ep, &t0);
    if (rc < 0) return rc;
    d->wall_s = (cli_now_ms() - t0) / 1e3;
    for (int i = 0; i < b->n_workers; i++) stop_child(&b->workers[i], SIGTERM, 3000);
    b->n_workers = 0;
    stop_child(&b->master, SIGTERM, 3000); /* every record is on disk (fsync'ed) already */
    return read_results(b, run, d);
}

/* ---- phase 2: master CPU under a swarm of heartbeating workers ------------------------------ */

typedef struct {
    double cpu_idle_pct, cpu_pct, helper_cpu_pct, recv_per_s, sent_per_s, registered, deaths;
    double register_s;
} bw_swarm_t;

/* Sleeps ms, awake to signals and to the death of the master or the helper. */
static int watch(bw_t *b, int ms) {
    for (double end = cli_now_ms() + ms; cli_now_ms() < end;) {
        int rc = interrupted();
        if (rc < 0) return rc;
        if (waitpid(b->master, NULL, WNOHANG) == b->master) {
            b->master = 0;
            return rl_fail(RL_EIO, "rlhf-master (swarm) died");
        }
        if (b->helper > 0 && waitpid(b->helper, NULL, WNOHANG) == b->helper) {
            b->helper = 0;
            return rl_fail(RL_EIO, "rlhf-wiretool swarm exited early");
        }
        nap_ms(20);
    }
    return 0;
}

static int phase_swarm(bw_t *b, bw_swarm_t *s) {
    char run[PATH_MAX + 64], ep[256];
    snprintf(run, sizeof run, "%s/swarm", b->dir);
    char *extra[] = {"--heartbeat-ms", "1000", "--liveness", "3"};
    int port, rc = start_master(b, "swarm", extra, 4);
    if (rc == 0) rc = wait_master(b, run, ep, sizeof ep, &port);
    if (rc == 0) rc = watch(b, 500); /* past start-up */
    if (rc < 0) return rc;
    /* idle baseline: the cron timer and nothing else */
    double c0 = cpu_seconds(b->master), t0 = cli_now_ms();
    if ((rc = watch(b, 1000)) < 0) return rc;
    s->cpu_idle_pct = 100.0 * (cpu_seconds(b->master) - c0) / ((cli_now_ms() - t0) / 1e3);

    char n[32], secs[32], log[PATH_MAX + 64];
    snprintf(n, sizeof n, "%d", b->swarm);
    snprintf(secs, sizeof secs, "%d", b->seconds + 60); /* stopped by us once measured */
    snprintf(log, sizeof log, "%s/swarm-helper.log", b->dir);
    char *args[] = {b->tool_bin, "swarm", "--master",       ep,     "--n", n,
                    "--seconds", secs,    "--heartbeat-ms", "1000", NULL};
    double t_reg = cli_now_ms();
    if ((b->helper = spawn(args, log)) < 0) return RL_EIO;
    bw_metrics_t m0, m1;
    for (;;) { /* every simulated worker registered, within 30 s */
        if ((rc = watch(b, 100)) < 0) return rc;
        if ((rc = read_metrics(run, &m0)) < 0) return rc;
        if (m0.registrations >= b->swarm) break;
        if (cli_now_ms() - t_reg > 30e3)
            return rl_fail(RL_EIO, "only %.0f of %d simulated workers registered in 30 s",
                           m0.registrations, b->swarm);
    }
    s->register_s = (cli_now_ms() - t_reg) / 1e3;
    /* one heartbeat interval to settle into the steady 1 Hz pattern, then measure */
    if ((rc = watch(b, 1000)) < 0 || (rc = read_metrics(run, &m0)) < 0) return rc;
    c0 = cpu_seconds(b->master);
    double h0 = cpu_seconds(b->helper);
    t0 = cli_now_ms();
    if ((rc = watch(b, b->seconds * 1000)) < 0) return rc;
    double c1 = cpu_seconds(b->master), h1 = cpu_seconds(b->helper);
    double dt = (cli_now_ms() - t0) / 1e3;
    if ((rc = read_metrics(run, &m1)) < 0) return rc;
    if (c0 < 0 || c1 < 0 || h0 < 0 || h1 < 0)
        return rl_fail(RL_EIO, "cannot read /proc/PID/stat of the master or the helper");
    s->cpu_pct = 100.0 * (c1 - c0) / dt;
    s->helper_cpu_pct = 100.0 * (h1 - h0) / dt;
    s->recv_per_s = (m1.received - m0.received) / dt;
    s->sent_per_s = (m1.sent - m0.sent) / dt;
    s->registered = m1.registrations;
    s->deaths = m1.deaths;
    stop_child(&b->helper, SIGKILL, 0);
    stop_child(&b->master, SIGTERM, 3000);
    return 0;
}

/* ---- phase 3: weight sync -------------------------------------------------------------------- */

/* Runs `rlhf-wiretool wsync-bench` (it links the weight-sync module) and takes its JSON. */
static int phase_sync(bw_t *b, json_t **out) {
    char mb[32], file[PATH_MAX + 64], log[PATH_MAX + 64];
    snprintf(mb, sizeof mb, "%d", b->sync_mb);
    snprintf(file, sizeof file, "%s/sync%s.json", b->dir, b->plain ? "" : "-curve");
    snprintf(log, sizeof log, "%s/sync%s.log", b->dir, b->plain ? "" : "-curve");
    char *args[] = {b->tool_bin,       "wsync-bench", "--mb", mb,  "--fanout",
                    (char *)b->fanout, "--out",       file,   NULL};
    /* the tool's CURVE keys: $RLHF_KEYS for the encrypted run, none for the plaintext one */
    if (b->plain)
        unsetenv("RLHF_KEYS");
    else
        setenv("RLHF_KEYS", b->keys, 1);
    unsetenv("RLHF_KEY");
    b->helper = spawn(args, log);
    setenv("RLHF_KEYS", b->keys, 1);
    if (b->helper < 0) return RL_EIO;
    /* bounded: 60 s plus 1 s a MiB, far above what loopback needs */
    double t0 = cli_now_ms(), deadline = t0 + 60e3 + 1e3 * b->sync_mb;
    int st = 0, rc;
    while (waitpid(b->helper, &st, WNOHANG) == 0) {
        if ((rc = interrupted()) < 0) return rc;
        if (cli_now_ms() > deadline)
            return rl_fail(RL_EIO, "the weight-sync phase took more than %.0f s",
                           (deadline - t0) / 1e3);
        nap_ms(20);
    }
    b->helper = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return rl_fail(RL_EIO, "rlhf-wiretool wsync-bench exited with status %d", st);
    json_error_t je;
    *out = json_load_file(file, 0, &je);
    return *out ? 0 : rl_fail(RL_EFORMAT, "%s: %s", file, je.text);
}

/* ---- phase 4: broadcast to fetcher processes, direct and through relays -------------------- */

/* Runs `rlhf-wiretool wsync-broadcast` and takes its JSON. */
static int phase_broadcast(bw_t *b, json_t **out) {
    char mb[32], file[PATH_MAX + 64], log[PATH_MAX + 64];
    snprintf(mb, sizeof mb, "%d", b->sync_mb);
    snprintf(file, sizeof file, "%s/broadcast.json", b->dir);
    snprintf(log, sizeof log, "%s/broadcast.log", b->dir);
    char *args[16] = {b->tool_bin,   "wsync-broadcast",   "--mb",  mb,
                      "--fanout",    (char *)b->fanout,   "--out", file,
                      "--bind-host", (char *)b->bind_host};
    int n = 10;
    if (b->wrap && b->wrap[0]) args[n++] = "--wrap", args[n++] = (char *)b->wrap;
    args[n] = NULL;
    if ((b->helper = spawn(args, log)) < 0) return RL_EIO;
    /* bounded: each round gets 60 s plus what its copies need at 10 MB/s */
    int sum = 0;
    for (const char *p = b->fanout; *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : "")
        sum += atoi(p);
    double t0 = cli_now_ms(), deadline = t0 + 1e3 * (120 + 2 * 0.105 * sum * b->sync_mb);
    int st = 0, rc;
    while (waitpid(b->helper, &st, WNOHANG) == 0) {
        if ((rc = interrupted()) < 0) return rc;
        if (cli_now_ms() > deadline)
            return rl_fail(RL_EIO, "the broadcast phase took more than %.0f s",
                           (deadline - t0) / 1e3);
        nap_ms(20);
    }
    b->helper = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return rl_fail(RL_EIO, "rlhf-wiretool wsync-broadcast exited with status %d", st);
    json_error_t je;
    *out = json_load_file(file, 0, &je);
    return *out ? 0 : rl_fail(RL_EFORMAT, "%s: %s", file, je.text);
}

/* ---- command -------------------------------------------------------------------------------- */

static int bw_run(bw_t *b) {
    const char *tmp = getenv("TMPDIR");
    snprintf(b->dir, sizeof b->dir, "%.3000s/rlhf-bench-wire-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(b->dir)) {
        b->dir[0] = 0;
        return cli_fail("bench wire", "working directory", rl_fail(RL_EIO, "%s", strerror(errno)));
    }
    local_bin_path(b->master_bin, sizeof b->master_bin, "rlhf-master");
    local_bin_path(b->worker_bin, sizeof b->worker_bin, "rlhf-worker");
    local_bin_path(b->tool_bin, sizeof b->tool_bin, "rlhf-wiretool");
    const char *bins[] = {b->master_bin, b->worker_bin, b->tool_bin};
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++)
        if (access(bins[i], X_OK) != 0)
            rc = rl_fail(RL_ENOTFOUND, "%s: %s", bins[i], strerror(errno));
    /* the bench cluster's own keys: its master, workers and tools and this client use them
     * (the swarm's simulated workers through $RLHF_KEYS), but in the --insecure phases */
    snprintf(b->keys, sizeof b->keys, "%s/keys", b->dir);
    if (rc == 0 && (rc = sec_keyset_create(b->keys)) == 0 &&
        (rc = sec_init(SEC_ROLE_CLIENT, NULL, b->keys, 0)) == 0) {
        setenv("RLHF_KEYS", b->keys, 1);
        unsetenv("RLHF_KEY");
    }
    bw_dispatch_t d = {0}, dp = {0};
    bw_swarm_t s = {0};
    const char *phase = "setup";
    if (rc == 0) phase = "dispatch", rc = phase_dispatch(b, &d);
    if (rc == 0) phase = "dispatch-insecure", b->plain = 1, rc = phase_dispatch(b, &dp);
    b->plain = 0;
    if (rc == 0) phase = "swarm", rc = phase_swarm(b, &s);
    json_t *sync = NULL, *sync_curve = NULL, *bcast = NULL;
    if (rc == 0 && b->sync_mb > 0) phase = "sync", b->plain = 1, rc = phase_sync(b, &sync);
    b->plain = 0;
    if (rc == 0 && b->sync_mb > 0) phase = "sync-curve", rc = phase_sync(b, &sync_curve);
    if (rc == 0 && b->sync_mb > 0 && b->relay) phase = "broadcast", rc = phase_broadcast(b, &bcast);
    stop_all(b);
    int out = 1;
    if (rc < 0) {
        fprintf(stderr, "rlhf bench wire: %s: %s\n", phase, rl_errmsg());
        show_log_tail(b->dir, !strcmp(phase, "swarm") ? "swarm.log" : "dispatch.log");
        if (!strcmp(phase, "swarm")) show_log_tail(b->dir, "swarm-helper.log");
        if (!strcmp(phase, "dispatch")) show_log_tail(b->dir, "worker-0.log");
        if (!strcmp(phase, "sync")) show_log_tail(b->dir, "sync.log");
        if (!strcmp(phase, "sync-curve")) show_log_tail(b->dir, "sync-curve.log");
        if (!strcmp(phase, "broadcast")) show_log_tail(b->dir, "broadcast.log");
        json_decref(sync);
        json_decref(sync_curve);
    } else {
        json_t *disp = json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "p50_ms", d.p50,
                                 "p90_ms", d.p90, "p99_ms", d.p99, "mean_ms", d.mean, "max_ms",
                                 d.max, "handler_p50_ms", d.handler_p50, "wall_s", d.wall_s,
                                 "jobs_per_s", d.wall_s > 0 ? b->jobs / d.wall_s : 0.0);
        json_t *sw = json_pack(
            "{s:i, s:i, s:i, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:I}", "workers", b->swarm,
            "heartbeat_ms", 1000, "seconds", b->seconds, "registered", (json_int_t)s.registered,
            "register_s", s.register_s, "master_cpu_pct", s.cpu_pct, "master_cpu_idle_pct",
            s.cpu_idle_pct, "helper_cpu_pct", s.helper_cpu_pct, "master_recv_per_s", s.recv_per_s,
            "master_sent_per_s", s.sent_per_s, "worker_deaths", (json_int_t)s.deaths);
        json_t *dispp = json_pack("{s:f, s:f, s:f, s:f, s:f}", "p50_ms", dp.p50, "p90_ms", dp.p90,
                                  "p99_ms", dp.p99, "mean_ms", dp.mean, "jobs_per_s",
                                  dp.wall_s > 0 ? b->jobs / dp.wall_s : 0.0);
        json_t *o =
            json_pack("{s:s, s:i, s:i, s:o, s:o, s:o}", "bench", "wire", "jobs", b->jobs, "workers",
                      b->k, "dispatch", disp, "dispatch_insecure", dispp, "swarm", sw);
        /* CURVE's cost, both measured in this run: the round trip and the weight sync, each
         * encrypted over plaintext */
        json_t *cost =
            json_pack("{s:f, s:f}", "dispatch_p50_ratio", dp.p50 > 0 ? d.p50 / dp.p50 : 0.0,
                      "dispatch_p99_ratio", dp.p99 > 0 ? d.p99 / dp.p99 : 0.0);
        if (sync && sync_curve) {
            double ps = json_real_value(json_object_get(json_object_get(sync, "wsync"), "seconds")),
                   cs = json_real_value(
                       json_object_get(json_object_get(sync_curve, "wsync"), "seconds"));
            json_object_set_new(cost, "sync_gbps_plain",
                                json_real(ps > 0 ? b->sync_mb * 1048576.0 / ps / 1e9 : 0));
            json_object_set_new(cost, "sync_gbps_curve",
                                json_real(cs > 0 ? b->sync_mb * 1048576.0 / cs / 1e9 : 0));
            json_object_set_new(cost, "sync_throughput_ratio", json_real(cs > 0 ? ps / cs : 0));
        }
        if (o) json_object_set_new(o, "curve_cost", cost);
        if (o && sync_curve)
            json_object_set_new(o, "sync_curve", sync_curve);
        else
            json_decref(sync_curve);
        if (o && sync)
            json_object_set_new(o, "sync", sync);
        else
            json_decref(sync);
        if (o && bcast)
            json_object_set_new(o, "broadcast", bcast);
        else
            json_decref(bcast);
        out = cli_print_json(o);
    }
    if (b->keep)
        fprintf(stderr, "rlhf bench wire: logs kept in %s\n", b->dir);
    else
        nftw(b->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return out;
}

/* --fanout N1,N2,...: the fetcher counts of the fan-out measurement. */
static int bw_opt_fanout(void *args, const char *value) {
    if (strspn(value, "0123456789,") != strlen(value) || !value[0] || strlen(value) > 64)
        return rl_fail(RL_EINVAL, "'%s' is not a list like 1,2,4", value);
    if (args) ((bw_t *)args)->fanout = value;
    return 0;
}

static const cli_opt_t bw_opt_table[] = {
    CLI_OPT_INT(bw_t, jobs, "jobs", 1, 1000000, "2000", "N", "NOOP jobs of the round trip"),
    CLI_OPT_INT(bw_t, k, "workers", 1, BW_MAX_WORKERS, "1", "K", "rollout workers"),
    CLI_OPT_INT(bw_t, swarm, "swarm", 1, 10000, "1000", "S", "simulated workers"),
    CLI_OPT_INT(bw_t, seconds, "seconds", 1, 600, "10", "T", "seconds of the CPU measurement"),
    CLI_OPT_INT(bw_t, sync_mb, "sync-mb", 0, 16384, "500", "M",
                "MiB of the weight-sync snapshot (0: no weight sync)"),
    CLI_OPT_CALL("fanout", "N1,N2,...", "fetchers at once (default 1,2,4)", bw_opt_fanout, 0),
    CLI_OPT_FLAG(bw_t, relay, "relay", "also broadcast to N fetcher processes, direct and relayed"),
    CLI_OPT_STR(bw_t, bind_host, "bind-host", "127.0.0.1", "HOST",
                "the broadcast's origin binds and is reached here", 0),
    CLI_OPT_STR(bw_t, wrap, "fetcher-wrap", NULL, "CMD",
                "start broadcast fetcher I as CMD I FETCHER-COMMAND... (CMD places it)", 0),
    CLI_OPT_FLAG(bw_t, keep, "keep", "keep the working directory (logs)"),
};

static const cli_opts_t bw_opts = CLI_OPTS(
    "bench wire",
    "rlhf bench wire [--jobs N] [--workers K] [--swarm S] [--seconds T] [--sync-mb M]\n"
    "                       [--fanout N1,N2,...] [--relay [--bind-host HOST] [--fetcher-wrap "
    "CMD]]\n"
    "                       [--keep]",
    "Starts rlhf-master and K rollout workers on loopback, runs N NOOP jobs through them and\n"
    "reports the dispatch round trip (JobAssign to JobResult, on the master's clock) p50 / p99.\n"
    "Then starts a fresh master, lets `rlhf-wiretool swarm` register S simulated workers that\n"
    "heartbeat at 1 Hz, and reports the master's CPU use over T seconds (100 = one core), next\n"
    "to its idle CPU use. Prints one JSON object.\n"
    "Then weight sync: raw ZeroMQ throughput of an M MiB snapshot against a wsync fetch of the\n"
    "same bytes (the ratio), and the time for N1, N2, ... fetchers at once.\n"
    "With --relay, the broadcast: the snapshot to N1, N2, ... fetcher processes, each fetching\n"
    "from the origin (direct) and each from the previous one's relay (relay): the wall time\n"
    "until all hold a verified copy and the bytes the origin sent, per mode and N.\n",
    bw_opt_table, NULL);

int cmd_bench_wire(int argc, char **argv) {
    bw_t b = {.fanout = "1,2,4"};
    int c = cli_opts_parse(&bw_opts, argc, argv, &b);
    if (c != CLI_OPTS_GO) return c;
    if (optind < argc) return cli_usage_error("bench");
    /* 1,000 simulated workers are 1,000 connections on each side, plus libzmq's own fds */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = bw_on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    int rc = bw_run(&b);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (bw_stop) rc = 128 + (int)bw_stop;
    return rc;
}
