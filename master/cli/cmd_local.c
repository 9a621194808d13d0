/*
 * cmd_local.c - local mode: `rlhf up`, `rlhf status`, `rlhf down`.
 *
 *   rlhf up [--run-dir DIR] [--config FILE] [--rollout N] [--reward M] [--learner K]
 *   rlhf status [--run-dir DIR]
 *   rlhf down [--run-dir DIR]
 *
 * `up` starts a supervisor in the background (its own session) that runs rlhf-master and the
 * workers, all on loopback, as its children, and restarts any that exits unexpectedly (the
 * master on the same endpoint, so the workers re-register by themselves). It writes
 * RUN_DIR/local.json (pids) and prints {"run_dir","endpoint","http_port","pid"} once the master
 * serves; jobs reach that master from clients (common/net/client.h), such as the drivers that
 * start a cluster of their own (local_session_open). `status` prints the master's /status JSON.
 * `down` sends the supervisor SIGTERM; it stops the workers (they hand back their jobs and say
 * goodbye), then the master, and exits. A master that exits with status 0 (its run finished) ends
 * the supervisor the same way. rlhf-master and rlhf-worker are taken from the directory of the
 * running `rlhf` binary.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <jansson.h>

#include "cli.h"
#include "cli_opts.h"
#include "base/err.h"
#include "base/fs.h"
#include "rlhf.pb-c.h"

int cmd_up(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_down(int argc, char **argv);

#define MAX_WORKERS 64

static volatile sig_atomic_t sup_stop;
static void on_term(int sig) {
    (void)sig;
    sup_stop = 1;
}

static void nap_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void local_bin_path(char *out, size_t n, const char *name) {
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    self[len > 0 ? len : 0] = 0;
    snprintf(out, n, "%.1000s/%s", len > 0 ? dirname(self) : ".", name);
}

static pid_t spawn(char *const *args, const char *log) {
    pid_t p = fork();
    if (p == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(args[0], args);
        _exit(127);
    }
    return p;
}

typedef struct {
    double started_ms; /* when the child was last started */
    int delay_ms;      /* the pause before its last restart */
} backoff_t;

typedef struct {
    char run_dir[1024], config[1024], endpoint[256];
    char master_bin[PATH_MAX + 32], worker_bin[PATH_MAX + 32];
    pid_t owner;            /* > 0: stop when this process is gone (a driver's own cluster) */
    char learner_dir[1024]; /* learners' --run-dir (checkpoints); default RUN_DIR/learner */
    int learner_shards;     /* S > 1: the learner is shard 0 of S, role "shard" the others */
    char shard_ep[64];      /* where shard 0 binds and the other shards connect */
    pid_t master;
    pid_t workers[MAX_WORKERS];
    const char *roles[MAX_WORKERS];
    backoff_t backoff[MAX_WORKERS + 1]; /* [0] the master, [i + 1] worker i */
    int n_workers;
} sup_t;

static pid_t start_master(sup_t *s) {
    char log[1100];
    snprintf(log, sizeof log, "%.1000s/master.log", s->run_dir);
    char *args[16];
    int n = 0;
    args[n++] = s->master_bin;
    if (s->config[0]) args[n++] = "--config", args[n++] = s->config;
    args[n++] = "--run-dir", args[n++] = s->run_dir;
    args[n++] = "--bind", args[n++] = s->endpoint[0] ? s->endpoint : "tcp://127.0.0.1:*";
    if (!s->config[0]) args[n++] = "--http-port", args[n++] = "0";
    args[n] = NULL;
    return spawn(args, log);
}

static pid_t start_worker(sup_t *s, int i) {
    char log[1200], id[64];
    snprintf(log, sizeof log, "%.1000s/worker-%s-%d.log", s->run_dir, s->roles[i], i);
    snprintf(id, sizeof id, "local-%s-%d", s->roles[i], i);
    /* the workers split the machine's cores: OpenMP teams that share cores stall each other */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    char threads[24];
    snprintf(threads, sizeof threads, "%ld", cores / s->n_workers > 1 ? cores / s->n_workers : 1);
    char ldir[1100];
    snprintf(ldir, sizeof ldir, "%.1000s", s->learner_dir);
    if (!ldir[0]) snprintf(ldir, sizeof ldir, "%.1000s/learner", s->run_dir);
    char *args[] = {s->worker_bin,
                    "--role",
                    (char *)s->roles[i],
                    "--master",
                    s->endpoint,
                    "--id",
                    id,
                    "--threads",
                    threads,
                    NULL,
                    NULL,
                    NULL,
                    NULL,
                    NULL,
                    NULL,
                    NULL}; /* room for 6 more arguments and the terminating NULL */
    char shard[32];
    int k = 0; /* the learner shard this worker is: 0, or 1.. for role "shard" */
    for (int j = 0; j < i; j++) k += !strcmp(s->roles[j], "shard");
    snprintf(shard, sizeof shard, "%d/%d", k + 1, s->learner_shards);
    if (!strcmp(s->roles[i], "shard")) { /* talks to shard 0 only, never to the master */
        args[2] = "learner", args[3] = "--shard", args[4] = shard;
        args[9] = "--shard-endpoint", args[10] = s->shard_ep;
    } else if (!strcmp(s->roles[i], "learner")) {
        args[9] = "--run-dir", args[10] = ldir;
        snprintf(shard, sizeof shard, "0/%d", s->learner_shards);
        if (s->learner_shards > 1)
            args[11] = "--shard", args[12] = shard, args[13] = "--shard-endpoint",
            args[14] = s->shard_ep;
    }
    return spawn(args, log);
}

static void write_local_json(sup_t *s) {
    json_t *w = json_array();
    for (int i = 0; i < s->n_workers; i++) json_array_append_new(w, json_integer(s->workers[i]));
    json_t *o = json_pack("{s:i, s:i, s:s, s:o}", "supervisor_pid", (int)getpid(), "master_pid",
                          (int)s->master, "endpoint", s->endpoint, "worker_pids", w);
    char *txt = json_dumps(o, JSON_COMPACT), path[1100];
    json_decref(o);
    snprintf(path, sizeof path, "%.1000s/local.json", s->run_dir);
    if (txt) fs_write_atomic(path, txt, strlen(txt));
    free(txt);
}

static json_t *read_json(const char *dir, const char *name) {
    char path[1100];
    snprintf(path, sizeof path, "%.1000s/%s", dir, name);
    return json_load_file(path, 0, NULL);
}

/* Waits (up to 15 s) for the master to write master.json; copies its endpoint. */
static int wait_master(sup_t *s) {
    for (int i = 0; i < 300; i++) {
        json_t *o = read_json(s->run_dir, "master.json");
        json_t *pid = o ? json_object_get(o, "pid") : NULL;
        if (pid && json_integer_value(pid) == s->master) {
            snprintf(s->endpoint, sizeof s->endpoint, "%s",
                     json_string_value(json_object_get(o, "endpoint")));
            json_decref(o);
            return 0;
        }
        json_decref(o);
        if (waitpid(s->master, NULL, WNOHANG) == s->master) return -1;
        nap_ms(50);
    }
    return -1;
}

/* The pause before restarting a child: 200 ms after a run of 2 s or more; doubled (up to 5 s)
 * each time it dies sooner, so that a child that cannot start does not spin. */
static int restart_delay(backoff_t *b) {
    double ran = cli_now_ms() - b->started_ms;
    b->delay_ms = ran >= 2000 || b->delay_ms == 0 ? 200 : b->delay_ms * 2;
    if (b->delay_ms > 5000) b->delay_ms = 5000;
    return b->delay_ms;
}

static void supervise(sup_t *s) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    char mj[1100];
    snprintf(mj, sizeof mj, "%.1000s/master.json", s->run_dir);
    unlink(mj);
    s->master = start_master(s);
    if (wait_master(s) < 0) {
        fprintf(stderr, "supervisor: the master did not start (see master.log)\n");
        _exit(1);
    }
    for (int i = 0; i < s->n_workers; i++) s->workers[i] = start_worker(s, i);
    for (int i = 0; i <= s->n_workers; i++) s->backoff[i].started_ms = cli_now_ms();
    write_local_json(s);
    while (!sup_stop) {
        int st;
        pid_t p = waitpid(-1, &st, s->owner ? WNOHANG : 0);
        if (p == 0) { /* --owner: the cluster lives only as long as the process it serves */
            if (kill(s->owner, 0) < 0 && errno == ESRCH) {
                fprintf(stderr, "supervisor: owner %d is gone: stopping\n", (int)s->owner);
                break;
            }
            nap_ms(200);
            continue;
        }
        if (p < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (sup_stop) break;
        /* a crashed child is restarted: the master on the same endpoint, a worker as before */
        if (p == s->master && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
            /* a clean exit (stopped on purpose, or --exit-when-done in a --config) ends the
             * run; restarting it would only loop */
            fprintf(stderr, "supervisor: master finished: stopping the workers\n");
            s->master = 0;
            break;
        }
        if (p == s->master) {
            int d = restart_delay(&s->backoff[0]);
            fprintf(stderr, "supervisor: master exited (status %d): restarting in %d ms\n", st, d);
            nap_ms(d);
            s->master = start_master(s);
            s->backoff[0].started_ms = cli_now_ms();
        }
        for (int i = 0; i < s->n_workers; i++)
            if (p == s->workers[i]) {
                int d = restart_delay(&s->backoff[i + 1]);
                fprintf(stderr, "supervisor: worker %d exited (status %d): restarting in %d ms\n",
                        i, st, d);
                nap_ms(d);
                s->workers[i] = start_worker(s, i);
                s->backoff[i + 1].started_ms = cli_now_ms();
            }
        write_local_json(s);
    }
    /* stop: workers first (they hand back and say goodbye), then the master */
    for (int i = 0; i < s->n_workers; i++) kill(s->workers[i], SIGTERM);
    for (int i = 0; i < s->n_workers; i++) {
        int waited = 0;
        while (waitpid(s->workers[i], NULL, WNOHANG) == 0 && waited < 10000) {
            nap_ms(20);
            waited += 20;
        }
        if (waited >= 10000) kill(s->workers[i], SIGKILL), waitpid(s->workers[i], NULL, 0);
    }
    if (s->master > 0) {
        kill(s->master, SIGTERM);
        waitpid(s->master, NULL, 0);
    }
    _exit(0);
}

typedef struct {
    const char *run_dir, *config, *learner_dir;
    int rollout, reward, learner, owner, learner_shards;
} up_args_t;

static const cli_opt_t up_opt_table[] = {
    CLI_OPT_STR(up_args_t, run_dir, "run-dir", "runs/local", "DIR",
                "the cluster's directory (logs, results, local.json)", 0),
    CLI_OPT_STR(up_args_t, config, "config", NULL, "FILE", "the master's YAML configuration", 0),
    CLI_OPT_INT(up_args_t, rollout, "rollout", 0, 32, "1", "N", "rollout workers"),
    CLI_OPT_INT(up_args_t, reward, "reward", 0, 16, "0", "M", "reward workers"),
    CLI_OPT_INT(up_args_t, learner, "learner", 0, 16, "0", "K", "learner workers"),
    CLI_OPT_STR(up_args_t, learner_dir, "learner-dir", NULL, "DIR",
                "the learners' checkpoints (default RUN_DIR/learner)", 0),
    CLI_OPT_INT(up_args_t, learner_shards, "learner-shards", 1, 16, "1", "S",
                "gradient shards of the learner (S > 1 needs --learner 1: S - 1 more processes)"),
    CLI_OPT_INT(up_args_t, owner, "owner", 0, INT_MAX, "0", "PID",
                "stop everything when this process is gone (0: never)"),
};

static const cli_opts_t up_opts =
    CLI_OPTS("up", "rlhf up [options]",
             "Starts rlhf-master and N rollout, M reward and K learner workers on loopback under\n"
             "a background supervisor that restarts any of them that crashes.\n",
             up_opt_table, NULL);

int cmd_up(int argc, char **argv) {
    static sup_t S;
    sup_t *s = &S;
    up_args_t ua;
    int prc = cli_opts_parse(&up_opts, argc, argv, &ua);
    if (prc != CLI_OPTS_GO) return prc;
    if (optind < argc) return cli_usage_error("up");
    snprintf(s->run_dir, sizeof s->run_dir, "%s", ua.run_dir);
    if (ua.config) snprintf(s->config, sizeof s->config, "%s", ua.config);
    if (ua.learner_dir) snprintf(s->learner_dir, sizeof s->learner_dir, "%s", ua.learner_dir);
    s->owner = (pid_t)ua.owner;
    s->learner_shards = ua.learner_shards;
    int n_roll = ua.rollout, n_rew = ua.reward, n_learn = ua.learner;
    if (fs_mkdir_p(s->run_dir) < 0) return cli_fail("up", "run directory", RL_EIO);
    if (s->learner_shards > 1 && n_learn != 1) {
        fprintf(stderr, "rlhf up: --learner-shards needs exactly one learner (--learner 1)\n");
        return 2;
    }
    for (int i = 0; i < n_roll + n_rew + n_learn; i++)
        s->roles[s->n_workers++] = i < n_roll           ? "rollout"
                                   : i < n_roll + n_rew ? "reward"
                                                        : "learner";
    for (int i = 1; i < s->learner_shards; i++) s->roles[s->n_workers++] = "shard";
    if (s->learner_shards > 1) { /* a free loopback port for the shards, kept across restarts */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET};
        socklen_t al = sizeof a;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
            getsockname(fd, (struct sockaddr *)&a, &al) < 0) {
            if (fd >= 0) close(fd);
            return cli_fail("up", "shard port", rl_fail(RL_EIO, "%s", strerror(errno)));
        }
        close(fd);
        snprintf(s->shard_ep, sizeof s->shard_ep, "tcp://127.0.0.1:%d", (int)ntohs(a.sin_port));
    }
    local_bin_path(s->master_bin, sizeof s->master_bin, "rlhf-master");
    local_bin_path(s->worker_bin, sizeof s->worker_bin, "rlhf-worker");
    char lj[1100];
    snprintf(lj, sizeof lj, "%.1000s/local.json", s->run_dir);
    unlink(lj);
    fflush(stdout);
    pid_t sup = fork();
    if (sup < 0) return cli_fail("up", "fork", RL_EIO);
    if (sup == 0) {
        setsid();
        char log[1100];
        snprintf(log, sizeof log, "%.1000s/local.log", s->run_dir);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644), nul = open("/dev/null", O_RDONLY);
        if (fd >= 0) dup2(fd, 1), dup2(fd, 2), close(fd);
        if (nul >= 0) dup2(nul, 0), close(nul);
        supervise(s);
    }
    for (int i = 0; i < 300; i++) { /* 15 s for the master to come up */
        json_t *o = read_json(s->run_dir, "local.json");
        if (o) {
            json_decref(o);
            json_t *m = read_json(s->run_dir, "master.json");
            json_t *out = json_pack("{s:s, s:O, s:O, s:i}", "run_dir", s->run_dir, "endpoint",
                                    json_object_get(m, "endpoint"), "http_port",
                                    json_object_get(m, "http_port"), "pid", (int)sup);
            json_decref(m);
            return cli_print_json(out);
        }
        if (waitpid(sup, NULL, WNOHANG) == sup) break;
        nap_ms(50);
    }
    fprintf(stderr, "rlhf up: the master did not start; see %s/local.log and master.log\n",
            s->run_dir);
    return 1;
}

/* Starts `rlhf up` in dir (its supervisor runs in the background) and returns the master's
 * endpoint: used by the commands that drive a cluster of their own (ppo, train-rm and sft with
 * --learner-shards). */
int local_cluster_up(const char *dir, const char *ldir, int rollout, int reward, int shards,
                     char *ep, size_t n) {
    char self[PATH_MAX], r[16], w[16], s[16], own[16];
    local_bin_path(self, sizeof self, "rlhf");
    snprintf(own, sizeof own, "%d", (int)getpid()); /* the cluster goes when we do */
    snprintf(r, sizeof r, "%d", rollout);
    snprintf(w, sizeof w, "%d", reward);
    snprintf(s, sizeof s, "%d", shards);
    char *args[] = {self,
                    "up",
                    "--run-dir",
                    (char *)dir,
                    "--owner",
                    own,
                    "--rollout",
                    r,
                    "--reward",
                    w,
                    "--learner",
                    shards ? "1" : "0",
                    "--learner-dir",
                    (char *)ldir,
                    "--learner-shards",
                    s,
                    NULL};
    if (!shards) args[12] = NULL; /* no learner: no learner options */
    int fds[2];
    if (pipe(fds) < 0) return rl_fail(RL_EIO, "pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(self, args);
        _exit(127);
    }
    close(fds[1]);
    char buf[4096];
    size_t len = 0;
    ssize_t k;
    while (len < sizeof buf - 1 && (k = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)k;
    close(fds[0]);
    buf[len] = 0;
    int st = 0;
    if (p > 0) waitpid(p, &st, 0);
    json_t *o = json_loads(buf, 0, NULL);
    const char *e = json_string_value(json_object_get(o, "endpoint"));
    int rc = 0;
    if (p < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || !e)
        rc = rl_fail(RL_EIO, "the local cluster did not start (see %s/local.log)", dir);
    else
        snprintf(ep, n, "%s", e);
    json_decref(o);
    return rc;
}

/* `rlhf down` for dir, quietly (nothing running there is fine). */
void local_cluster_down(const char *dir) {
    char self[PATH_MAX];
    local_bin_path(self, sizeof self, "rlhf");
    char *args[] = {self, "down", "--run-dir", (char *)dir, NULL};
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) dup2(nul, 1), dup2(nul, 2);
        execv(self, args);
        _exit(127);
    }
    if (p > 0) waitpid(p, NULL, 0);
}

/* ---- a driver's own cluster ------------------------------------------------------------ */

static char sess_bin[PATH_MAX], sess_dir[PATH_MAX + 16];

/* SIGINT/SIGTERM while a session is open: stop its cluster, then exit as the signal would (the
 * learner keeps the checkpoint of its last finished job and the master its records, where the
 * same command continues). Only async-signal-safe calls; the paths are set before the handler. */
static void sess_on_stop(int sig) {
    char *args[] = {sess_bin, "down", "--run-dir", sess_dir, NULL};
    pid_t p = fork();
    if (p == 0) {
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) dup2(nul, 1), dup2(nul, 2);
        execv(sess_bin, args);
        _exit(127);
    }
    if (p > 0) waitpid(p, NULL, 0);
    _exit(128 + sig);
}

/* RLHF_MASTER mode: a client of the run's master, in the namespace RLHF_NS. */
static int session_join(local_session_t *s, const char *master, const char *who) {
    const char *ns = getenv("RLHF_NS");
    snprintf(s->endpoint, sizeof s->endpoint, "%s", master);
    client_opts_t o = {0};
    o.ns = ns ? ns : "";
    if (!(s->client = client_open_opts(s->endpoint, who, &o)))
        return rl_fail_ctx(RL_EIO, "connecting to the master at %s: ", s->endpoint);
    return 0;
}

int local_session_open(local_session_t *s, const char *run_dir, int rollout, int reward, int shards,
                       const char *who) {
    memset(s, 0, sizeof *s);
    const char *master = getenv("RLHF_MASTER");
    /* the learner's directory by absolute path: the learner that gets it may run elsewhere */
    char abs[PATH_MAX];
    int rc = fs_mkdir_p(run_dir);
    if (rc < 0) return rc;
    if (!realpath(run_dir, abs)) return rl_fail(RL_EIO, "%s: %s", run_dir, strerror(errno));
    snprintf(s->learner, sizeof s->learner, "%.4000s/learner", abs);
    if (master && master[0]) return session_join(s, master, who);
    snprintf(s->cluster, sizeof s->cluster, "%.4000s/cluster", run_dir);
    if ((rc = fs_mkdir_p(s->cluster)) < 0) return rc;
    local_cluster_down(s->cluster); /* one left behind by a driver that was killed */
    if ((rc = local_cluster_up(s->cluster, s->learner, rollout, reward, shards, s->endpoint,
                               sizeof s->endpoint)) < 0)
        return rc;
    local_bin_path(sess_bin, sizeof sess_bin, "rlhf");
    snprintf(sess_dir, sizeof sess_dir, "%s", s->cluster);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sess_on_stop;
    sigaction(SIGINT, &sa, &s->old_int);
    sigaction(SIGTERM, &sa, &s->old_term);
    s->handlers = 1;
    if (!(s->client = client_open(s->endpoint, who))) {
        local_session_close(s);
        return rl_fail_ctx(RL_EIO, "connecting to the local master: ");
    }
    return 0;
}

void local_session_close(local_session_t *s) {
    client_close(&s->client);
    if (s->cluster[0]) local_cluster_down(s->cluster);
    if (s->handlers) {
        sigaction(SIGINT, &s->old_int, NULL);
        sigaction(SIGTERM, &s->old_term, NULL);
        s->handlers = 0;
    }
}

typedef struct {
    Rlhf__TrainOutput **out;
    const char *where; /* where the logs are */
} train_wait_t;

/* local_train_job's client callback: decodes the job's output, or says why there is none. */
static int train_job_done(void *ctx, const client_result_t *r) {
    train_wait_t *t = ctx;
    *t->out = r->status == CLIENT_DONE ? rlhf__train_output__unpack(NULL, r->output_len, r->output)
                                       : NULL;
    if (!*t->out)
        return rl_fail(RL_EIO, "job %" PRIu64 " %s%s (see %s)", r->id,
                       r->status == CLIENT_DONE ? "returned an output that does not decode"
                                                : "failed",
                       r->status == CLIENT_REJECTED ? r->reason : "", t->where);
    return 0;
}

int local_learner_latest(const char *ldir, int ppo, const char *model, char *path, size_t cap,
                         long *pos) {
    char p[PATH_MAX + 64], *name = NULL;
    const char *pre = ppo ? "ppo-ckpt-" : "ckpt-";
    size_t nl, pl = strlen(pre);
    snprintf(p, sizeof p, "%s/%s", ldir, ppo ? "ppo-latest" : "latest");
    int rc = fs_read_all(p, &name, &nl);
    if (rc < 0) return rc;
    int len = (int)strcspn(name, "\n");
    if (strncmp(name, pre, pl) || len <= (int)pl || len > 64) {
        free(name);
        return rl_fail(RL_EFORMAT, "%s: names no checkpoint", p);
    }
    if (pos) *pos = strtol(name + pl, NULL, 10);
    snprintf(path, cap, "%s/%.*s%s%s", ldir, len, name, model ? "/" : "", model ? model : "");
    free(name);
    return 0;
}

int local_train_job(local_session_t *s, uint64_t id, uint64_t seed, const void *spec,
                    Rlhf__TrainOutput **out) {
    /* the checkpoints go to the session's learner directory whichever learner trains */
    Rlhf__TrainSpec sp = *(const Rlhf__TrainSpec *)spec;
    sp.ckpt_dir = s->learner;
    *out = NULL;
    size_t len = rlhf__train_spec__get_packed_size(&sp);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) return rl_fail(RL_ENOMEM, "out of memory");
    rlhf__train_spec__pack(&sp, buf);
    /* a long lease: a training job is not re-dispatched while its learner lives */
    client_job_t job = {.id = id,
                        .kind = RLHF__JOB_KIND__JOB_KIND_TRAIN,
                        .seed = seed,
                        .lease_ms = 6 * 3600 * 1000,
                        .role = RLHF__ROLE__ROLE_LEARNER,
                        .payload = buf,
                        .payload_len = len};
    int rc = client_submit(s->client, &job, 1);
    free(buf);
    char where[PATH_MAX + 300];
    if (s->cluster[0])
        snprintf(where, sizeof where, "%s", s->cluster);
    else
        snprintf(where, sizeof where, "the logs of the master at %s", s->endpoint);
    train_wait_t t = {out, where};
    return rc < 0 ? rc : client_wait(s->client, &id, 1, -1, train_job_done, &t);
}

typedef struct {
    const char *data_dir, *run_dir;
} dir_args_t;

static const cli_opt_t dir_opt_table[] = {
    CLI_OPT_STR(dir_args_t, run_dir, "run-dir", "runs/local", "DIR", "the cluster's directory", 0),
};

/* The run directory of `rlhf status` / `rlhf down`; NULL after --help (*bad = 1) or a bad
 * option (*bad = 2). */
static const char *run_dir_opt(int argc, char **argv, const cli_opts_t *o, int *bad) {
    dir_args_t a;
    int rc = cli_opts_parse(o, argc, argv, &a);
    *bad = rc == CLI_OPTS_GO ? 0 : rc == 0 ? 1 : 2;
    if (!*bad && optind < argc) *bad = 2, cli_usage_error(o->cmd);
    return *bad ? NULL : a.run_dir;
}

int local_http_get(int port, const char *path, char **body) {
    *body = NULL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return rl_fail(RL_EIO, "socket: %s", strerror(errno));
    /* the master answers at once or not at all: never wait on it for long */
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char req[512];
    int rn = snprintf(req, sizeof req, "GET %.400s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 || write(fd, req, (size_t)rn) != rn) {
        int rc = rl_fail(RL_EIO, "127.0.0.1:%d: %s", port, strerror(errno));
        close(fd);
        return rc;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t n = 0;
    while (buf && (n = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (len + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    close(fd);
    if (!buf) return rl_fail(RL_ENOMEM, "http: out of memory");
    buf[len] = 0;
    char *sep = strstr(buf, "\r\n\r\n");
    if (n < 0 || strncmp(buf, "HTTP/1.", 7) || !sep || atoi(buf + 9) != 200) {
        free(buf);
        return rl_fail(RL_EPROTO, "127.0.0.1:%d%s: %s", port, path,
                       n < 0 ? strerror(errno) : "no 200 answer");
    }
    size_t body_len = len - (size_t)(sep + 4 - buf);
    memmove(buf, sep + 4, body_len + 1);
    *body = buf;
    return 0;
}

int cmd_status(int argc, char **argv) {
    int bad;
    static const cli_opts_t opts =
        CLI_OPTS("status", "rlhf status [--run-dir DIR]",
                 "Prints the local master's /status JSON.\n", dir_opt_table, NULL);
    const char *dir = run_dir_opt(argc, argv, &opts, &bad);
    if (bad) return bad == 1 ? 0 : 2;
    json_t *m = read_json(dir, "master.json");
    int port = m ? (int)json_integer_value(json_object_get(m, "http_port")) : 0;
    json_decref(m);
    if (port <= 0) {
        fprintf(stderr, "rlhf status: no master with HTTP in %s\n", dir);
        return 1;
    }
    char *body = NULL;
    if (local_http_get(port, "/status", &body) < 0) {
        fprintf(stderr, "rlhf status: cannot reach the master on port %d: %s\n", port, rl_errmsg());
        return 1;
    }
    json_t *o = json_loads(body, 0, NULL);
    free(body);
    if (!o) {
        fprintf(stderr, "rlhf status: bad answer from the master\n");
        return 1;
    }
    return cli_print_json(o);
}

int cmd_down(int argc, char **argv) {
    int bad;
    static const cli_opts_t opts =
        CLI_OPTS("down", "rlhf down [--run-dir DIR]",
                 "Stops the local master and workers (their supervisor).\n", dir_opt_table, NULL);
    const char *dir = run_dir_opt(argc, argv, &opts, &bad);
    if (bad) return bad == 1 ? 0 : 2;
    json_t *o = read_json(dir, "local.json");
    pid_t sup = o ? (pid_t)json_integer_value(json_object_get(o, "supervisor_pid")) : 0;
    json_decref(o);
    if (sup <= 0 || kill(sup, SIGTERM) < 0) {
        fprintf(stderr, "rlhf down: nothing running from %s\n", dir);
        return 1;
    }
    for (int i = 0; i < 400 && kill(sup, 0) == 0; i++) nap_ms(50); /* 20 s */
    if (kill(sup, 0) == 0) {
        fprintf(stderr, "rlhf down: supervisor %d still running\n", (int)sup);
        return 1;
    }
    char path[1100];
    snprintf(path, sizeof path, "%.1000s/local.json", dir);
    unlink(path);
    return cli_print_json(json_pack("{s:s, s:b}", "run_dir", dir, "stopped", 1));
}
