/*
 * cmd_local.c - local mode: `rlhf up`, `rlhf status`, `rlhf down`.
 *
 *   rlhf up [--data-dir DIR | --run-dir DIR] [--config FILE] [--rollout N] [--reward M]
 *           [--learner K] [--stage S]
 *   rlhf status [--data-dir DIR | --run-dir DIR]
 *   rlhf down [--data-dir DIR | --run-dir DIR]
 *
 * `up` starts a supervisor in the background (its own session) that runs rlhf-master and the
 * workers, all on loopback, as its children, and restarts any that exits unexpectedly (the
 * master on the same endpoint, so the workers re-register by themselves). The cluster's own files
 * live in its directory CDIR: DATA_DIR/.cluster for the long-lived cluster that serves the runs of
 * a data directory (the master gets --data-dir DATA_DIR), or the --run-dir given (a command's
 * own cluster). It writes CDIR/local.json (pids) and prints {"run_dir","endpoint","http_port",
 * "pid"} once the master serves; jobs reach that master from clients (common/net/client.h), such
 * as the stage commands (local_session_open). `status` prints the master's /status JSON.
 * `down` sends the supervisor SIGTERM; it stops the workers (SIGTERM: they hand back their jobs
 * and say goodbye; SIGKILL for any still there after 3 s), then the master the same way, and
 * exits. A master that exits with status 0 (stopped on purpose) ends the supervisor the same way.
 * The children die with the supervisor (PR_SET_PDEATHSIG), and an `up` in a directory whose
 * children outlived their supervisor kills them first. rlhf-master and rlhf-worker are taken
 * from the directory of the running `rlhf` binary.
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
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <jansson.h>

#include "cli.h"
#include "cli_http.h"
#include "cli_opts.h"
#include "base/err.h"
#include "base/fs.h"
#include "net/sec.h"
#include "net/blob.h"
#include "rlhf.pb-c.h"

int cmd_up(int argc, char **argv);
int cmd_status_local(int argc, char **argv);
int cmd_down(int argc, char **argv);

#define MAX_WORKERS 64
/* how long the workers, then the master, get to stop on SIGTERM before SIGKILL */
#define STOP_GRACE_MS 3000

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

/* Starts args[0] with stdout and stderr appended to log, as a child that dies with us. */
static pid_t spawn(char *const *args, const char *log) {
    pid_t parent = getpid();
    pid_t p = fork();
    if (p == 0) {
        /* SIGKILLed when the supervisor dies, however it dies; if it died before prctl took
         * effect we already belong to another parent, and must not run on unsupervised */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
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
    char http_port[16];  /* the HTTP port the master took first, taken again on a restart */
    char data_dir[1024]; /* the master's --data-dir (where run directories live); "": none */
    char master_bin[PATH_MAX + 32], worker_bin[PATH_MAX + 32];
    pid_t owner;            /* > 0: stop when this process is gone (a driver's own cluster) */
    char learner_dir[1024]; /* learners' --run-dir (checkpoints); default RUN_DIR/learner */
    int learner_shards;     /* S > 1: the learner is shard 0 of S, role "shard" the others */
    char shard_ep[64];      /* where shard 0 binds and the other shards connect */
    char keys[1100]; /* the cluster's key set (CLUSTER_DIR/keys); "": plaintext (--insecure) */
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
    if (s->data_dir[0]) args[n++] = "--data-dir", args[n++] = s->data_dir;
    args[n++] = "--bind", args[n++] = s->endpoint[0] ? s->endpoint : "tcp://127.0.0.1:*";
    /* an ephemeral HTTP port (master.json names it) whatever the config says: two local
     * clusters on one machine must not collide; a restarted master takes the same one again,
     * so that the links handed to annotators and open pages keep working */
    args[n++] = "--http-port", args[n++] = s->http_port[0] ? s->http_port : "0";
    if (s->keys[0])
        args[n++] = "--keys", args[n++] = s->keys;
    else
        args[n++] = "--insecure";
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
    char ldir[1100], cache[1100];
    /* one cache for the cluster's workers: a model is fetched from the master's artifact
     * server once per machine */
    snprintf(cache, sizeof cache, "%.1000s/cache", s->run_dir);
    snprintf(ldir, sizeof ldir, "%.1000s", s->learner_dir);
    if (!ldir[0]) snprintf(ldir, sizeof ldir, "%.1000s/learner", s->run_dir);
    char shard[32], *args[24];
    int n = 0;
    int k = 0; /* the learner shard this worker is: 0, or 1.. for role "shard" */
    for (int j = 0; j < i; j++) k += !strcmp(s->roles[j], "shard");
    args[n++] = s->worker_bin;
    /* a shard talks to shard 0 only, never to the master */
    args[n++] = "--role",
    args[n++] = !strcmp(s->roles[i], "shard") ? "learner" : (char *)s->roles[i];
    if (strcmp(s->roles[i], "shard")) args[n++] = "--master", args[n++] = s->endpoint;
    args[n++] = "--id", args[n++] = id;
    args[n++] = "--threads", args[n++] = threads;
    args[n++] = "--cache-dir", args[n++] = cache;
    if (s->keys[0])
        args[n++] = "--keys", args[n++] = s->keys;
    else
        args[n++] = "--insecure";
    if (!strcmp(s->roles[i], "shard")) {
        snprintf(shard, sizeof shard, "%d/%d", k + 1, s->learner_shards);
        args[n++] = "--shard", args[n++] = shard;
        args[n++] = "--shard-endpoint", args[n++] = s->shard_ep;
    } else if (!strcmp(s->roles[i], "learner")) {
        args[n++] = "--run-dir", args[n++] = ldir;
        snprintf(shard, sizeof shard, "0/%d", s->learner_shards);
        if (s->learner_shards > 1) {
            args[n++] = "--shard", args[n++] = shard;
            args[n++] = "--shard-endpoint", args[n++] = s->shard_ep;
        }
    }
    args[n] = NULL;
    return spawn(args, log);
}

static void write_local_json(sup_t *s) {
    json_t *w = json_array(), *roles = json_array();
    for (int i = 0; i < s->n_workers; i++) {
        json_array_append_new(w, json_integer(s->workers[i]));
        json_array_append_new(roles, json_string(s->roles[i]));
    }
    json_t *o =
        json_pack("{s:i, s:i, s:s, s:o, s:o}", "supervisor_pid", (int)getpid(), "master_pid",
                  (int)s->master, "endpoint", s->endpoint, "worker_pids", w, "worker_roles", roles);
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
            if (json_integer_value(json_object_get(o, "http_port")) > 0)
                snprintf(s->http_port, sizeof s->http_port, "%lld",
                         (long long)json_integer_value(json_object_get(o, "http_port")));
            json_decref(o);
            return 0;
        }
        json_decref(o);
        if (waitpid(s->master, NULL, WNOHANG) == s->master) return -1;
        nap_ms(50);
    }
    return -1;
}

/* The pause before restarting a child: 200 ms after a run of 2 s or more, or after it came up
 * (came_up: a master that replayed its journal and wrote master.json); doubled (up to 5 s) each
 * time it dies sooner, so that a child that cannot start does not spin. */
static int restart_delay(backoff_t *b, int came_up) {
    double ran = cli_now_ms() - b->started_ms;
    b->delay_ms = ran >= 2000 || came_up || b->delay_ms == 0 ? 200 : b->delay_ms * 2;
    if (b->delay_ms > 5000) b->delay_ms = 5000;
    return b->delay_ms;
}

/* Stops the n children in p (0: none): SIGTERM, and SIGCONT so that a stopped one acts on it;
 * up to grace_ms for all of them together, then SIGKILL for any left. Reaps them all and zeroes
 * their pids. */
static void stop_children(pid_t *p, int n, int grace_ms) {
    for (int i = 0; i < n; i++)
        if (p[i] > 0) kill(p[i], SIGTERM), kill(p[i], SIGCONT);
    double deadline = cli_now_ms() + grace_ms;
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++)
            if (p[i] > 0 && waitpid(p[i], NULL, WNOHANG) != 0) /* gone, or not ours */
                p[i] = 0;
            else
                left += p[i] > 0;
        if (!left || cli_now_ms() >= deadline) break;
        nap_ms(20);
    }
    for (int i = 0; i < n; i++)
        if (p[i] > 0) kill(p[i], SIGKILL), waitpid(p[i], NULL, 0), p[i] = 0;
}

/* Stops the workers first (they hand back their jobs and say goodbye), then the master. */
static void stop_all(sup_t *s) {
    stop_children(s->workers, s->n_workers, STOP_GRACE_MS);
    stop_children(&s->master, 1, STOP_GRACE_MS);
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
        stop_children(&s->master, 1, STOP_GRACE_MS);
        _exit(1);
    }
    for (int i = 0; i < s->n_workers; i++) s->workers[i] = start_worker(s, i);
    for (int i = 0; i <= s->n_workers; i++) s->backoff[i].started_ms = cli_now_ms();
    write_local_json(s);
    while (!sup_stop) {
        /* polled, so that a SIGTERM between the check and the wait is not slept through */
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p == 0) { /* --owner: the cluster lives only as long as the process it serves */
            if (s->owner && kill(s->owner, 0) < 0 && errno == ESRCH) {
                fprintf(stderr, "supervisor: owner %d is gone: stopping\n", (int)s->owner);
                break;
            }
            nap_ms(100);
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
             * cluster; restarting it would only loop */
            fprintf(stderr, "supervisor: master finished: stopping the workers\n");
            s->master = 0;
            break;
        }
        if (p == s->master) {
            json_t *o = read_json(s->run_dir, "master.json");
            int came_up = o && json_integer_value(json_object_get(o, "pid")) == p;
            json_decref(o);
            int d = restart_delay(&s->backoff[0], came_up);
            fprintf(stderr, "supervisor: master exited (status %d): restarting in %d ms\n", st, d);
            nap_ms(d);
            s->master = start_master(s);
            s->backoff[0].started_ms = cli_now_ms();
        }
        for (int i = 0; i < s->n_workers; i++)
            if (p == s->workers[i]) {
                int d = restart_delay(&s->backoff[i + 1], 0);
                fprintf(stderr, "supervisor: worker %d exited (status %d): restarting in %d ms\n",
                        i, st, d);
                nap_ms(d);
                s->workers[i] = start_worker(s, i);
                s->backoff[i + 1].started_ms = cli_now_ms();
            }
        write_local_json(s);
    }
    stop_all(s);
    _exit(0);
}

/* Whether process pid runs the program at path (after a rebuild, its old file still counts). */
/* Whether pid exists and is not a zombie (a supervisor orphaned where PID 1 reaps nothing - a
 * container without an init - stays one after it exited: kill(pid, 0) alone would wait for it). */
static int pid_live(pid_t pid) {
    char path[64], buf[512];
    if (pid <= 0 || kill(pid, 0) != 0) return 0;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f) return 1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the state follows the command's name */
    return !(p && p[1] == ' ' && p[2] == 'Z');
}

static int pid_runs(pid_t pid, const char *path) {
    char link[64], exe[PATH_MAX];
    snprintf(link, sizeof link, "/proc/%d/exe", (int)pid);
    ssize_t n = pid > 0 ? readlink(link, exe, sizeof exe - 1) : -1;
    if (n <= 0) return 0; /* gone, a zombie, or not ours to look at */
    exe[n] = 0;
    size_t k = strlen(path);
    return !strncmp(exe, path, k) && (!exe[k] || !strcmp(exe + k, " (deleted)"));
}

/* Whether a supervisor started from dir still runs (its pid in *sup). */
static int supervisor_alive(const char *dir, pid_t *sup) {
    json_t *o = read_json(dir, "local.json");
    *sup = o ? (pid_t)json_integer_value(json_object_get(o, "supervisor_pid")) : 0;
    json_decref(o);
    char self[PATH_MAX + 32];
    local_bin_path(self, sizeof self, "rlhf");
    return *sup > 0 && *sup != getpid() && pid_runs(*sup, self);
}

/* Before a supervisor starts in s->run_dir: the master and workers that local.json names and
 * that still run - children of a supervisor that died without taking them along - are killed,
 * so that two clusters never share the directory. Only processes running our own rlhf-master /
 * rlhf-worker are touched (a pid may have been reused). */
static void kill_leftovers(const sup_t *s) {
    json_t *o = read_json(s->run_dir, "local.json");
    if (!o) return;
    pid_t left[MAX_WORKERS + 1];
    int n = 0;
    pid_t m = (pid_t)json_integer_value(json_object_get(o, "master_pid"));
    if (pid_runs(m, s->master_bin)) left[n++] = m;
    json_t *w = json_object_get(o, "worker_pids"), *v;
    size_t i;
    json_array_foreach(w, i, v) {
        pid_t p = (pid_t)json_integer_value(v);
        if (n <= MAX_WORKERS && pid_runs(p, s->worker_bin)) left[n++] = p;
    }
    json_decref(o);
    for (int k = 0; k < n; k++) {
        fprintf(stderr, "rlhf up: killing %d, left behind by an earlier supervisor in %s\n",
                (int)left[k], s->run_dir);
        kill(left[k], SIGKILL);
    }
    /* not our children: gone once their /proc entry no longer shows the program (2 s at most) */
    for (int t = 0; t < 100; t++) {
        int alive = 0;
        for (int k = 0; k < n; k++)
            alive += pid_runs(left[k], k == 0 && left[0] == m ? s->master_bin : s->worker_bin);
        if (!alive) break;
        nap_ms(20);
    }
}

/* The cluster's directory: run_dir when given, else DATA_DIR/.cluster. */
static void cluster_dir(char *out, size_t n, const char *run_dir, const char *data_dir) {
    if (run_dir)
        snprintf(out, n, "%s", run_dir);
    else
        snprintf(out, n, "%.1000s/.cluster", data_dir);
}

typedef struct {
    const char *data_dir, *run_dir, *config, *learner_dir;
    int rollout, reward, learner, stage, owner, learner_shards, insecure;
} up_args_t;

static const cli_opt_t up_opt_table[] = {
    CLI_OPT_STR(up_args_t, data_dir, "data-dir", "runs", "DIR",
                "the data directory the cluster serves: run directories in DIR (the master's "
                "--data-dir), the cluster's own files (logs, local.json) in DIR/.cluster",
                0),
    CLI_OPT_STR(up_args_t, run_dir, "run-dir", NULL, "DIR",
                "a cluster of its own instead: its files in DIR, no data directory", 0),
    CLI_OPT_STR(up_args_t, config, "config", NULL, "FILE", "the master's YAML configuration", 0),
    CLI_OPT_INT(up_args_t, rollout, "rollout", 0, 32, "1", "N", "rollout workers"),
    CLI_OPT_INT(up_args_t, reward, "reward", 0, 16, "0", "M", "reward workers"),
    CLI_OPT_INT(up_args_t, learner, "learner", 0, 16, "0", "K", "learner workers"),
    CLI_OPT_INT(up_args_t, stage, "stage", 0, 16, "0", "S",
                "stage workers (they run the stage commands of runs)"),
    CLI_OPT_STR(up_args_t, learner_dir, "learner-dir", NULL, "DIR",
                "the learners' --run-dir (default CLUSTER_DIR/learner)", 0),
    CLI_OPT_INT(up_args_t, learner_shards, "learner-shards", 1, 16, "1", "S",
                "gradient shards of the learner (S > 1 needs --learner 1: S - 1 more processes)"),
    CLI_OPT_INT(up_args_t, owner, "owner", 0, INT_MAX, "0", "PID",
                "stop everything when this process is gone (0: never)"),
    CLI_OPT_FLAG(up_args_t, insecure, "insecure",
                 "plaintext: no keys (by default the cluster's own, made in CLUSTER_DIR/keys)"),
};

static const cli_opts_t up_opts =
    CLI_OPTS("up", "rlhf up [options]",
             "Starts rlhf-master and N rollout, M reward, K learner and S stage workers on\n"
             "loopback under a background supervisor that restarts any of them that crashes.\n",
             up_opt_table, NULL);

int cmd_up(int argc, char **argv) {
    static sup_t S;
    sup_t *s = &S;
    up_args_t ua = {0};
    int prc = cli_opts_parse(&up_opts, argc, argv, &ua);
    if (prc != CLI_OPTS_GO) return prc;
    if (optind < argc) return cli_usage_error("up");
    cluster_dir(s->run_dir, sizeof s->run_dir, ua.run_dir, ua.data_dir);
    if (!ua.run_dir) snprintf(s->data_dir, sizeof s->data_dir, "%s", ua.data_dir);
    if (ua.config) snprintf(s->config, sizeof s->config, "%s", ua.config);
    if (ua.learner_dir) snprintf(s->learner_dir, sizeof s->learner_dir, "%s", ua.learner_dir);
    s->owner = (pid_t)ua.owner;
    s->learner_shards = ua.learner_shards;
    int n_roll = ua.rollout, n_rew = ua.reward, n_learn = ua.learner, n_stage = ua.stage;
    if (fs_mkdir_p(s->run_dir) < 0) return cli_fail("up", "run directory", RL_EIO);
    if (!ua.insecure) { /* the cluster's own keys, made once, kept across restarts */
        char mk[1200];
        snprintf(s->keys, sizeof s->keys, "%.1000s/keys", s->run_dir);
        snprintf(mk, sizeof mk, "%.1000s/master.key", s->keys);
        int krc = access(mk, F_OK) == 0 ? 0 : sec_keyset_create(s->keys);
        if (krc < 0) return cli_fail("up", "keys", krc);
    }
    if (s->learner_shards > 1 && n_learn != 1) {
        fprintf(stderr, "rlhf up: --learner-shards needs exactly one learner (--learner 1)\n");
        return 2;
    }
    if (n_roll + n_rew + n_learn + n_stage + s->learner_shards - 1 > MAX_WORKERS) {
        fprintf(stderr, "rlhf up: at most %d workers\n", MAX_WORKERS);
        return 2;
    }
    for (int i = 0; i < n_roll + n_rew + n_learn + n_stage; i++)
        s->roles[s->n_workers++] = i < n_roll                     ? "rollout"
                                   : i < n_roll + n_rew           ? "reward"
                                   : i < n_roll + n_rew + n_learn ? "learner"
                                                                  : "stage";
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
    pid_t old;
    if (supervisor_alive(s->run_dir, &old)) {
        fprintf(stderr,
                "rlhf up: a cluster already runs from %s (supervisor %d); rlhf down first\n",
                s->run_dir, (int)old);
        return 1;
    }
    kill_leftovers(s);
    char lj[1100];
    snprintf(lj, sizeof lj, "%.1000s/local.json", s->run_dir);
    unlink(lj);
    fflush(stdout);
    pid_t sup = fork();
    if (sup < 0) return cli_fail("up", "fork", RL_EIO);
    if (sup == 0) {
        setsid();
        /* a lock the caller of `up` passed on (local_cluster_ensure) is held until the `up`
         * exits, not for the supervisor's whole life */
        for (int k = 3; k < 1024; k++) close(k);
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

/* Runs `rlhf` args (an `up`) and copies the endpoint it prints into ep; dir names the cluster in
 * the error. lock_fd >= 0: a file locked by the caller that the `up` holds too, until it exits
 * (the cluster serves), so that the lock outlasts a caller killed meanwhile. Returns 0 or RL_EIO.
 */
static int run_up(char *const *args, const char *dir, int lock_fd, char *ep, size_t n) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) return rl_fail(RL_EIO, "pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        dup2(fds[1], 1); /* dup2 clears close-on-exec on 1 */
        if (lock_fd >= 0) fcntl(lock_fd, F_SETFD, 0);
        execv(args[0], args);
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
    return run_up(args, dir, -1, ep, n);
}

/* The endpoint of the master of the cluster in dir when its supervisor runs and the master
 * answers on HTTP (waiting up to wait_ms for it: a master being restarted). Returns 0, or
 * RL_ENOTFOUND when no supervisor runs from dir, RL_EIO when its master does not answer. */
static int cluster_endpoint(const char *dir, int wait_ms, char *ep, size_t n) {
    pid_t sup;
    if (!supervisor_alive(dir, &sup))
        return rl_fail(RL_ENOTFOUND, "no local cluster runs from %s", dir);
    double deadline = cli_now_ms() + wait_ms;
    for (;;) {
        json_t *l = read_json(dir, "local.json"), *m = read_json(dir, "master.json");
        json_int_t mpid = json_integer_value(json_object_get(l, "master_pid"));
        int port = (int)json_integer_value(json_object_get(m, "http_port"));
        const char *e = json_string_value(json_object_get(m, "endpoint"));
        char *body = NULL;
        int up = mpid > 0 && mpid == json_integer_value(json_object_get(m, "pid")) && e &&
                 port > 0 && cli_http_get(dir, NULL, "/status", &body) == 0;
        free(body);
        if (up) snprintf(ep, n, "%s", e);
        json_decref(l);
        json_decref(m);
        if (up) return 0;
        if (cli_now_ms() >= deadline || !supervisor_alive(dir, &sup))
            return rl_fail(RL_EIO, "the local master of %s does not answer (see %s/master.log)",
                           dir, dir);
        nap_ms(100);
    }
}

/* Whether a process of the cluster in dir runs another binary than the one next to us now
 * (rebuilt since: its /proc/PID/exe is the old file). */
static int cluster_stale(const char *dir) {
    json_t *o = read_json(dir, "local.json");
    char master[PATH_MAX + 32], worker[PATH_MAX + 32];
    local_bin_path(master, sizeof master, "rlhf-master");
    local_bin_path(worker, sizeof worker, "rlhf-worker");
    struct stat bm, bw;
    int stale = 0;
    if (!o || stat(master, &bm) < 0 || stat(worker, &bw) < 0) {
        json_decref(o);
        return 0;
    }
    json_t *pids = json_deep_copy(json_object_get(o, "worker_pids"));
    json_array_insert_new(pids, 0,
                          json_integer(json_integer_value(json_object_get(o, "master_pid"))));
    size_t i;
    json_t *v;
    json_array_foreach(pids, i, v) {
        char exe[64];
        struct stat se;
        snprintf(exe, sizeof exe, "/proc/%lld/exe", (long long)json_integer_value(v));
        const struct stat *want = i == 0 ? &bm : &bw;
        if (stat(exe, &se) == 0 && (se.st_ino != want->st_ino || se.st_dev != want->st_dev))
            stale = 1;
    }
    json_decref(pids);
    json_decref(o);
    return stale;
}

/* The learner shards of the cluster in dir, from its local.json (1 + its "shard" workers); 0
 * when it cannot be read. */
static int cluster_shards(const char *dir) {
    json_t *o = read_json(dir, "local.json"), *roles = json_object_get(o, "worker_roles"), *v;
    size_t i;
    int n = o && json_is_array(roles) ? 1 : 0;
    json_array_foreach(roles, i, v) n +=
        json_is_string(v) && !strcmp(json_string_value(v), "shard");
    json_decref(o);
    return n;
}

int local_cluster_ensure(const char *data_dir, char *ep, size_t n) {
    return local_cluster_ensure_shards(data_dir, 0, ep, n);
}

int local_cluster_ensure_shards(const char *data_dir, int shards, char *ep, size_t n) {
    char dir[1100], lock[1200];
    cluster_dir(dir, sizeof dir, NULL, data_dir);
    snprintf(lock, sizeof lock, "%s/lock", dir);
    if (fs_mkdir_p(dir) < 0) return rl_fail_ctx(RL_EIO, "the cluster directory: ");
    /* one caller at a time checks and starts: two would start two clusters (with two masters
     * on one journal). The `up` holds the lock too, so a caller killed while the cluster starts
     * does not let the next one find no supervisor and start a second. */
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return rl_fail(RL_EIO, "%s: %s", lock, strerror(errno));
    int rc;
    while ((rc = flock(fd, LOCK_EX)) < 0 && errno == EINTR) {
    }
    if (rc < 0) {
        rc = rl_fail(RL_EIO, "%s: %s", lock, strerror(errno));
        close(fd);
        return rc;
    }
    rc = cluster_endpoint(dir, 15000, ep, n);
    if (rc == 0 && cluster_stale(dir)) {
        /* rebuilt since it started: a cluster of the old binaries would serve the new command
         * (and it may not speak its protocol); its runs survive the restart (the journal) */
        fprintf(stderr, "rlhf: the local cluster in %s runs an older build: restarting it\n", dir);
        local_cluster_down(dir);
        rc = RL_ENOTFOUND;
    }
    int have = rc == 0 && shards > 0 ? cluster_shards(dir) : 0;
    if (have > 0 && have != shards) {
        /* the learner's shard count is a setting of the cluster; results do not depend on it
         * (README "Exact arithmetic"), its runs survive the restart (the journal) */
        fprintf(stderr,
                "rlhf: the local cluster in %s has %d learner shard(s), %d asked for: "
                "restarting it\n",
                dir, have, shards);
        local_cluster_down(dir);
        rc = RL_ENOTFOUND;
    }
    if (rc == RL_ENOTFOUND) {
        char self[PATH_MAX], conf[1200];
        local_bin_path(self, sizeof self, "rlhf");
        /* the master's settings for this data directory, when there are any */
        snprintf(conf, sizeof conf, "%.1000s/master.yaml", data_dir);
        int has_conf = access(conf, R_OK) == 0;
        /* no --owner: the cluster outlives the command that needed it */
        char *args[] = {
            self, "up",        "--data-dir", (char *)data_dir, "--rollout", "2",  "--reward",
            "1",  "--learner", "1",          "--stage",        "1",         NULL, NULL,
            NULL, NULL,        NULL};
        char sh[16];
        int k = 12;
        snprintf(sh, sizeof sh, "%d", shards);
        if (shards > 1) args[k++] = "--learner-shards", args[k++] = sh;
        if (has_conf) args[k++] = "--config", args[k++] = conf;
        rc = run_up(args, dir, fd, ep, n);
    }
    close(fd); /* releases the lock */
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
    int rc = cli_security(NULL); /* the stage worker's key ($RLHF_KEY) */
    if (rc < 0) return rc;
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
    /* the threads a cluster of its own gives its learner (start_worker's rule): the training's
     * results depend on them, so they are the same whichever cluster runs it */
    long cores = sysconf(_SC_NPROCESSORS_ONLN), nw = shards > 1 ? shards : 1;
    s->threads = cores / nw > 1 ? (int)(cores / nw) : 1;
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
    if ((rc = cli_security(s->cluster)) < 0) {
        local_session_close(s);
        return rc;
    }
    if (!(s->client = client_open(s->endpoint, who))) {
        local_session_close(s);
        return rl_fail_ctx(RL_EIO, "connecting to the local master: ");
    }
    return 0;
}

/* The session's cache and artifact server (local_publish's rules). */
static int session_artifacts(local_session_t *s) {
    if (s->cache && s->blob_ep[0]) return 0;
    const char *env = getenv("RLHF_CACHE_DIR"), *blob = getenv("RLHF_BLOB");
    char dir[PATH_MAX + 32];
    if (env && env[0])
        snprintf(dir, sizeof dir, "%s", env);
    else
        snprintf(dir, sizeof dir, "%.4000s/cache", s->cluster[0] ? s->cluster : ".");
    if (!s->cache && !(s->cache = blob_store_open(dir))) return rl_fail_ctx(RL_EIO, "cache: ");
    if (blob && blob[0]) {
        snprintf(s->blob_ep, sizeof s->blob_ep, "%s", blob);
        return 0;
    }
    const char *ep = s->client ? client_blob_endpoint(s->client, 15000) : NULL;
    if (!ep) return rl_fail_ctx(RL_EIO, "the master's artifact server: ");
    snprintf(s->blob_ep, sizeof s->blob_ep, "%s", ep);
    return 0;
}

int local_publish(local_session_t *s, const char *path, char *name, size_t cap) {
    int rc = session_artifacts(s);
    if (rc < 0) return rc;
    blob_client_t *c = blob_client_new(NULL, s->blob_ep);
    if (!c) return rl_fail_ctx(RL_EIO, "artifact server %s: ", s->blob_ep);
    char ref[BLOB_REF_LEN], abs[PATH_MAX];
    rc = blob_publish(c, s->cache, path, ref);
    blob_client_free(&c);
    if (rc < 0) return rl_fail_ctx(rc, "publishing %s: ", path);
    return blob_name_format(ref, realpath(path, abs) ? abs : path, name, cap);
}

int local_fetch(local_session_t *s, const char *ref, char *path, size_t cap) {
    int rc = session_artifacts(s);
    if (rc < 0) return rc;
    blob_client_t *c = blob_client_new(NULL, s->blob_ep);
    if (!c) return rl_fail_ctx(RL_EIO, "artifact server %s: ", s->blob_ep);
    char r[BLOB_REF_LEN];
    rc = blob_name_parse(ref, r, NULL) ? blob_resolve(s->cache, c, r, path, cap)
                                       : rl_fail(RL_EINVAL, "'%.200s' names no artifact", ref);
    blob_client_free(&c);
    return rc;
}

int local_publish_env(const char *path, char *name, size_t cap) {
    const char *blob = getenv("RLHF_BLOB"), *cache = getenv("RLHF_CACHE_DIR");
    name[0] = 0;
    if (!blob || !blob[0] || !cache || !cache[0]) return 0;
    int rc = cli_security(NULL); /* the stage worker's key ($RLHF_KEY) */
    if (rc < 0) return rc;
    local_session_t s;
    memset(&s, 0, sizeof s);
    rc = local_publish(&s, path, name, cap);
    blob_store_close(&s.cache);
    return rc;
}

void local_session_close(local_session_t *s) {
    blob_store_close(&s->cache);
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
    if (!sp.threads) sp.threads = (uint32_t)s->threads;
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
    const char *data_dir, *run_dir, *token_file;
} dir_args_t;

/* where the cluster is, for `rlhf status --run-dir` (all of them: it reads HTTP) and `rlhf
 * down` (all but the token) */
static const cli_opt_t dir_opt_table[] = {
    CLI_OPT_STR(dir_args_t, data_dir, "data-dir", "runs", "DIR",
                "the cluster serving this data directory (its files in DIR/.cluster)", 0),
    CLI_OPT_STR(dir_args_t, run_dir, "run-dir", NULL, "DIR",
                "the cluster whose files are in DIR (`rlhf up --run-dir`)", 0),
    CLI_OPT_STR(dir_args_t, token_file, "http-token-file", NULL, "FILE",
                "the master's HTTP bearer token (default: $" CLI_HTTP_TOKEN_ENV
                ", else the file the master's master.json names, DIR/http.token)",
                0),
};
#define DIR_OPTS_N (int)(sizeof dir_opt_table / sizeof dir_opt_table[0])

/* The cluster directory of `rlhf status` / `rlhf down` into dir, the options into *a; *bad = 1
 * after --help, 2 after a bad option. */
static void run_dir_opt(int argc, char **argv, const cli_opts_t *o, dir_args_t *a, char *dir,
                        size_t n, int *bad) {
    int rc = cli_opts_parse(o, argc, argv, a);
    *bad = rc == CLI_OPTS_GO ? 0 : rc == 0 ? 1 : 2;
    if (!*bad && optind < argc) *bad = 2, cli_usage_error(o->cmd);
    if (!*bad) cluster_dir(dir, n, a->run_dir, a->data_dir);
}

int cmd_status_local(int argc, char **argv) {
    int bad;
    static const cli_opts_t opts =
        CLI_OPTS("status", "rlhf status [--data-dir DIR | --run-dir DIR] [--http-token-file FILE]",
                 "Prints the local master's /status JSON.\n", dir_opt_table, NULL);
    char dir[1100];
    dir_args_t a = {0};
    run_dir_opt(argc, argv, &opts, &a, dir, sizeof dir, &bad);
    if (bad) return bad == 1 ? 0 : 2;
    char *body = NULL;
    if (cli_http_get(dir, a.token_file, "/status", &body) < 0) {
        fprintf(stderr, "rlhf status: cannot read the master's /status: %s\n", rl_errmsg());
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
    static const cli_opts_t opts = {"down",
                                    "rlhf down [--data-dir DIR | --run-dir DIR]",
                                    "Stops the local master and workers (their supervisor).\n",
                                    dir_opt_table,
                                    DIR_OPTS_N - 1,
                                    NULL,
                                    NULL};
    char dir[1100];
    dir_args_t a = {0};
    run_dir_opt(argc, argv, &opts, &a, dir, sizeof dir, &bad);
    if (bad) return bad == 1 ? 0 : 2;
    json_t *o = read_json(dir, "local.json");
    pid_t sup = o ? (pid_t)json_integer_value(json_object_get(o, "supervisor_pid")) : 0;
    json_decref(o);
    if (sup <= 0 || kill(sup, SIGTERM) < 0) {
        fprintf(stderr, "rlhf down: nothing running from %s\n", dir);
        return 1;
    }
    for (int i = 0; i < 400 && pid_live(sup); i++) nap_ms(50); /* 20 s */
    if (pid_live(sup)) {
        fprintf(stderr, "rlhf down: supervisor %d still running\n", (int)sup);
        return 1;
    }
    char path[1100];
    snprintf(path, sizeof path, "%.1000s/local.json", dir);
    unlink(path);
    return cli_print_json(json_pack("{s:s, s:b}", "run_dir", dir, "stopped", 1));
}

int cmd_cluster_ensure(int argc, char **argv) {
    static const cli_opt_t table[] = {
        CLI_OPT_STR(dir_args_t, data_dir, "data-dir", "runs", "DIR",
                    "the data directory the cluster serves", 0),
    };
    static const cli_opts_t opts = CLI_OPTS(
        "cluster-ensure", "rlhf cluster-ensure [--data-dir DIR]",
        "Starts the local cluster serving DIR unless one runs; prints its master's endpoint.\n",
        table, NULL);
    dir_args_t a = {0};
    int rc = cli_opts_parse(&opts, argc, argv, &a);
    if (rc != CLI_OPTS_GO) return rc;
    if (optind < argc) return cli_usage_error("cluster-ensure");
    char ep[256];
    if ((rc = local_cluster_ensure(a.data_dir, ep, sizeof ep)) < 0)
        return cli_fail("cluster-ensure", "the local cluster", rc);
    return cli_print_json(json_pack("{s:s}", "endpoint", ep));
}
