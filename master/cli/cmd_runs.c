/*
 * cmd_runs.c - the runs a master owns, seen and steered from the command line:
 *
 *   rlhf runs                  a table of the runs: name, state, stage, progress, age
 *   rlhf status [RUN] [--json] one run (or all), readable or as the master's status JSON
 *   rlhf logs RUN [-f]         the run log (-f: as it grows, until the run ends)
 *   rlhf cancel RUN            cancels it
 *   rlhf wait RUN [--timeout S] until it ends: exit 0 when it succeeded
 *
 * Each takes --master ENDPOINT, or finds the local cluster serving --data-dir (default `runs`)
 * from DATA_DIR/.cluster/master.json; none of them starts a cluster. They speak RunQuery and
 * RunCancel (client.h); the run's status object is described in master/master_run.h.
 *
 * runs_submit() is `rlhf run`'s and `rlhf ppo`'s second half: RunSubmit, then the follow loop
 * (follow() below) that `rlhf logs -f` and `rlhf wait` share. Only theirs, in local mode, starts
 * the local cluster again when it died under the run (its supervisor killed).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "base/err.h"
#include "cli.h"
#include "net/client.h"
#include "rlhf.pb-c.h"

/* How long one query waits for its answer, and how long a silent master is waited for while
 * following a run (it may be restarting: the client reconnects by itself). */
#define RUNS_QUERY_MS 2000
#define RUNS_GONE_S   60
#define RUNS_POLL_MS  500
/* Local mode: a master silent this long may have lost its supervisor (and the whole cluster with
 * it); the follow loop of `rlhf run` then makes sure a cluster serves the data directory again. */
#define RUNS_ENSURE_S 3

/* ---- pieces ---------------------------------------------------------------------------------- */

static volatile sig_atomic_t runs_interrupted;
static void on_int(int sig) {
    (void)sig;
    runs_interrupted = 1;
}

static void fmt_secs(double s, char *out, size_t n) {
    if (s < 0 || !isfinite(s))
        snprintf(out, n, "?");
    else if (s < 60)
        snprintf(out, n, "%.0fs", s);
    else if (s < 3600)
        snprintf(out, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(out, n, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

static const char *jstr(json_t *o, const char *k) {
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static int terminal(const char *state) {
    return !strcmp(state, "succeeded") || !strcmp(state, "failed") || !strcmp(state, "cancelled");
}

/* The seconds the finished stages took, together. */
static double stages_seconds(json_t *st) {
    double t = 0;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(st, "stages"), i, s) t +=
        json_number_value(json_object_get(s, "seconds"));
    return t;
}

/* "[4/13] sft  step 300/1500  1m02s  ETA 3m10s" from a status object. */
static void progress_line(json_t *st, char *out, size_t n) {
    char el[16], eta[16];
    json_t *e = json_object_get(st, "eta_s");
    fmt_secs(json_number_value(json_object_get(st, "elapsed_s")), el, sizeof el);
    fmt_secs(json_is_number(e) ? json_number_value(e) : NAN, eta, sizeof eta);
    const char *state = jstr(st, "state");
    if (!strcmp(state, "running"))
        snprintf(out, n, "[%d/%d] %-9s %s  %s  ETA %s",
                 (int)json_integer_value(json_object_get(st, "stage_index")) + 1,
                 (int)json_integer_value(json_object_get(st, "n_stages")), jstr(st, "stage"),
                 jstr(st, "progress"), el, eta);
    else
        snprintf(out, n, "%s%s%s", state, jstr(st, "reason")[0] ? ": " : "", jstr(st, "reason"));
}

/* ---- finding the master ---------------------------------------------------------------------- */

typedef struct {
    const char *master, *data_dir, *key;
    int json, follow;
    double timeout;
} runs_args_t;

#define RUNS_OPT_WHERE                                                                             \
    CLI_OPT_STR(runs_args_t, master, "master", NULL, "ENDPOINT", "the master (tcp://HOST:PORT)",   \
                0),                                                                                \
        CLI_OPT_STR(runs_args_t, data_dir, "data-dir", "runs", "DIR",                              \
                    "without --master: the local cluster serving DIR", 0),                         \
        CLI_OPT_STR(runs_args_t, key, "key", NULL, "FILE",                                         \
                    "with --master: the client key (rlhf keygen; default $RLHF_KEY)", 0)

/* The master's endpoint: --master, or the local cluster's (DATA_DIR/.cluster/master.json).
 * Returns 0, or 1 with a message. */
static int runs_endpoint(const char *cmd, const runs_args_t *a, char *ep, size_t n) {
    if (a->key) setenv("RLHF_KEY", a->key, 1);
    if (a->master) {
        snprintf(ep, n, "%s", a->master);
        return 0;
    }
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/.cluster/master.json", a->data_dir);
    json_t *m = json_load_file(path, 0, NULL);
    const char *e = json_string_value(json_object_get(m, "endpoint"));
    int found = e && e[0];
    if (found) snprintf(ep, n, "%s", e);
    json_decref(m); /* e goes with it */
    if (found) return 0;
    fprintf(stderr, "rlhf %s: no cluster serves %s/ (start one with rlhf run or rlhf up)\n", cmd,
            a->data_dir);
    return 1;
}

/* A client of the master at ep; data_dir: the local cluster's data directory (its keys), NULL
 * for a master given by --master ($RLHF_KEY and the like). */
static client_t *runs_open(const char *cmd, const char *ep, const char *data_dir) {
    char who[64], cdir[PATH_MAX + 32];
    if (data_dir) snprintf(cdir, sizeof cdir, "%.4000s/.cluster", data_dir);
    int rc = cli_security(data_dir ? cdir : NULL);
    if (rc < 0) {
        cli_fail(cmd, "security", rc);
        return NULL;
    }
    snprintf(who, sizeof who, "rlhf-%s-%d", cmd, (int)getpid());
    client_t *c = client_open(ep, who);
    if (!c) cli_fail(cmd, ep, RL_EIO);
    return c;
}

/* One RunQuery/RunCancel answered: 0 with *rep and *st (the status object, or NULL), or 1 with
 * a message (no answer within timeout_ms, or the master's error). */
static int runs_ask(const char *cmd, client_t *c, const char *ep, const char *name, int cancel,
                    int want_log, uint64_t off, Rlhf__RunReply **rep, json_t **st) {
    *st = NULL;
    int rc = cancel ? client_run_cancel(c, name, rep, 10000)
                    : client_run_query(c, name, want_log, off, rep, 10000);
    if (rc < 0) {
        fprintf(stderr, "rlhf %s: the master at %s: %s\n", cmd, ep, rl_errmsg());
        return 1;
    }
    if ((*rep)->code != 0) {
        fprintf(stderr, "rlhf %s: %s\n", cmd,
                (*rep)->error && (*rep)->error[0] ? (*rep)->error : rl_strerror((*rep)->code));
        rlhf__run_reply__free_unpacked(*rep, NULL);
        *rep = NULL;
        return 1;
    }
    *st = json_loads((*rep)->status_json ? (*rep)->status_json : "", 0, NULL);
    return 0;
}

/* ---- following a run ------------------------------------------------------------------------- */

typedef struct {
    const char *cmd, *name, *ep;
    const char *data_dir; /* non-NULL: local mode, a cluster gone is started again (rlhf run) */
    char ep_buf[256];     /* the endpoint of that new cluster (f->ep points here then) */
    FILE *log_to;         /* the run log goes here as it grows (NULL: not asked for) */
    uint64_t log_off;     /* from this offset */
    int progress;         /* a progress line on stderr (a terminal) */
    double timeout_s;     /* > 0: give up after this long (124) */
    json_t *final;        /* the status the run ended with */
    int progress_shown;
} follow_t;

static void progress_clear(follow_t *f) {
    if (f->progress_shown) fprintf(stderr, "\r\033[K");
    f->progress_shown = 0;
}

/* Local mode, the master silent: local_cluster_ensure finds the cluster serving f->data_dir
 * (waiting for a master its supervisor restarts) or, when the supervisor is gone, starts a new
 * one, whose master replays the journal and goes on with the run. A new endpoint replaces *cp. */
static void follow_ensure(client_t **cp, follow_t *f) {
    char ep[256];
    if (local_cluster_ensure(f->data_dir, ep, sizeof ep) < 0 || !strcmp(ep, f->ep)) return;
    client_t *c = client_open(ep, "rlhf-follow");
    if (!c) return;
    progress_clear(f);
    fprintf(stderr, "rlhf %s: the cluster of %s was restarted; following %s on %s\n", f->cmd,
            f->data_dir, f->name, ep);
    client_close(cp);
    *cp = c;
    snprintf(f->ep_buf, sizeof f->ep_buf, "%s", ep);
    f->ep = f->ep_buf;
}

/*
 * Queries the run every RUNS_POLL_MS until it is in a terminal state (its status in f->final,
 * its log drained), copying the log and showing progress meanwhile. A master that does not
 * answer is asked again (the client reconnects) for RUNS_GONE_S; with f->data_dir, after
 * RUNS_ENSURE_S of silence, the local cluster is made sure of (follow_ensure), which may replace
 * *cp. Returns 0 (ended), 1 (an error or the master gone: message printed), 124 (timeout) or
 * 130 (SIGINT).
 */
static int follow(client_t **cp, follow_t *f) {
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_int;
    sigaction(SIGINT, &sa, &old);
    runs_interrupted = 0;
    double t0 = cli_now_ms(), last_ok = t0, last_ensure = t0;
    int ret = -1;
    while (ret < 0) {
        if (runs_interrupted) {
            ret = 130;
            break;
        }
        Rlhf__RunReply *rep = NULL;
        int rc = client_run_query(*cp, f->name, f->log_to != NULL, f->log_off, &rep, RUNS_QUERY_MS);
        double now = cli_now_ms();
        if (rc == RL_ERANGE && f->data_dir && now - last_ok > RUNS_ENSURE_S * 1000.0 &&
            now - last_ensure > RUNS_ENSURE_S * 1000.0) {
            follow_ensure(cp, f);
            last_ensure = now = cli_now_ms();
        }
        if (rc == RL_ERANGE) {
            if (now - last_ok > RUNS_GONE_S * 1000.0) {
                progress_clear(f);
                fprintf(stderr,
                        "rlhf %s: the master at %s has not answered for %d s; %s goes on if it "
                        "comes back (rlhf status %s)\n",
                        f->cmd, f->ep, RUNS_GONE_S, f->name, f->name);
                ret = 1;
            }
            continue;
        }
        if (rc < 0 || rep->code != 0) {
            progress_clear(f);
            fprintf(stderr, "rlhf %s: %s\n", f->cmd,
                    rc < 0                        ? rl_errmsg()
                    : rep->error && rep->error[0] ? rep->error
                                                  : rl_strerror(rep->code));
            if (rep) rlhf__run_reply__free_unpacked(rep, NULL);
            ret = 1;
            break;
        }
        last_ok = now;
        int more = 0;
        if (f->log_to && rep->log.len) {
            progress_clear(f);
            fwrite(rep->log.data, 1, rep->log.len, f->log_to);
            fflush(f->log_to);
            f->log_off = rep->log_offset;
            more = 1; /* there may be more than one answer holds */
        }
        json_t *st = json_loads(rep->status_json ? rep->status_json : "", 0, NULL);
        rlhf__run_reply__free_unpacked(rep, NULL);
        if (st && terminal(jstr(st, "state")) && !more) {
            progress_clear(f);
            f->final = st;
            ret = 0;
            break;
        }
        if (st && f->progress) {
            char line[256];
            progress_line(st, line, sizeof line);
            fprintf(stderr, "\r\033[K%s", line);
            f->progress_shown = 1;
        }
        json_decref(st);
        if (f->timeout_s > 0 && now - t0 > f->timeout_s * 1000) {
            ret = 124;
            break;
        }
        if (!more) {
            struct timespec ts = {0, RUNS_POLL_MS * 1000000L};
            nanosleep(&ts, NULL); /* SIGINT cuts it short */
        }
    }
    progress_clear(f);
    sigaction(SIGINT, &old, NULL);
    return ret;
}

/* The end of a followed run as the exit status: 0 succeeded, 1 otherwise (message printed). */
static int run_outcome(const char *cmd, const char *name, json_t *st) {
    const char *state = jstr(st, "state"), *reason = jstr(st, "reason");
    if (!strcmp(state, "succeeded")) {
        char el[16];
        fmt_secs(stages_seconds(st), el, sizeof el);
        fprintf(stderr, "rlhf %s: all stages done in %s; outputs in %s\n", cmd, el,
                jstr(st, "run_dir"));
        return 0;
    }
    fprintf(stderr, "rlhf %s: %s %s%s%s\n", cmd, name, state, reason[0] ? ": " : "", reason);
    return 1;
}

int runs_submit(const char *cmd, const char *endpoint, const char *data_dir, const char *name,
                const char *plan_json, int detach) {
    client_t *c = runs_open(cmd, endpoint, data_dir);
    if (!c) return 1;
    /* a run submitted again continues: its log so far was shown then, only what follows is new */
    uint64_t off = 0;
    for (;;) {
        Rlhf__RunReply *rep = NULL;
        if (client_run_query(c, name, 1, off, &rep, 10000) < 0) break;
        int known = rep->code == 0 && rep->log.len;
        if (rep->code == 0) off = rep->log_offset;
        rlhf__run_reply__free_unpacked(rep, NULL);
        if (!known) break;
    }
    Rlhf__RunReply *rep = NULL;
    int rc = client_run_submit(c, name, plan_json, &rep, 30000);
    if (rc < 0) {
        client_close(&c);
        return cli_fail(cmd, "submitting the run", rc);
    }
    if (rep->code != 0) {
        fprintf(stderr, "rlhf %s: %s\n", cmd,
                rep->error && rep->error[0] ? rep->error : rl_strerror(rep->code));
        rlhf__run_reply__free_unpacked(rep, NULL);
        client_close(&c);
        return 2;
    }
    rlhf__run_reply__free_unpacked(rep, NULL);
    if (detach) {
        fprintf(stderr, "rlhf %s: %s submitted (rlhf status %s, rlhf logs %s -f, rlhf wait %s)\n",
                cmd, name, name, name, name);
        client_close(&c);
        return 0;
    }
    follow_t f = {.cmd = cmd,
                  .name = name,
                  .ep = endpoint,
                  .data_dir = data_dir,
                  .log_to = stderr,
                  .log_off = off,
                  .progress = isatty(2)};
    int ret = follow(&c, &f);
    client_close(&c);
    if (ret == 130)
        fprintf(stderr,
                "\nrlhf %s: detached; %s goes on (rlhf status %s, rlhf logs %s -f, rlhf wait %s)\n",
                cmd, name, name, name, name);
    if (ret == 0) ret = run_outcome(cmd, name, f.final);
    json_decref(f.final);
    return ret;
}

/* ---- the commands ---------------------------------------------------------------------------- */

/* Parses a command's options; *name gets its RUN operand (required: need_run). Returns
 * CLI_OPTS_GO or the exit status. */
static int runs_parse(const cli_opts_t *t, int argc, char **argv, runs_args_t *a, const char **name,
                      int need_run) {
    memset(a, 0, sizeof *a);
    int rc = cli_opts_parse(t, argc, argv, a);
    if (rc != CLI_OPTS_GO) return rc;
    *name = optind < argc ? argv[optind] : NULL;
    if ((need_run && !*name) || optind + (*name != NULL) < argc) {
        fprintf(stderr, "rlhf %s: %s\n", t->cmd,
                need_run ? "one RUN is required" : "one RUN at most");
        return cli_usage_error(t->cmd);
    }
    return CLI_OPTS_GO;
}

static const cli_opt_t runs_where_table[] = {RUNS_OPT_WHERE};
static const cli_opts_t runs_opts =
    CLI_OPTS("runs", "rlhf runs [--master ENDPOINT | --data-dir DIR]",
             "A table of the runs the master holds: name, state, stage, progress, age.\n",
             runs_where_table, NULL);

int cmd_runs(int argc, char **argv) {
    runs_args_t a;
    const char *name;
    int ret = runs_parse(&runs_opts, argc, argv, &a, &name, 0);
    if (ret != CLI_OPTS_GO) return ret;
    if (name) {
        fprintf(stderr, "rlhf runs: no operand expected (rlhf status %s)\n", name);
        return 2;
    }
    char ep[256];
    if (runs_endpoint("runs", &a, ep, sizeof ep)) return 1;
    client_t *c = runs_open("runs", ep, a.master ? NULL : a.data_dir);
    Rlhf__RunReply *rep = NULL;
    json_t *st = NULL;
    ret = c ? runs_ask("runs", c, ep, "", 0, 0, 0, &rep, &st) : 1;
    client_close(&c);
    if (ret) return ret;
    rlhf__run_reply__free_unpacked(rep, NULL);
    printf("%-20s %-10s %-16s %-18s %s\n", "NAME", "STATE", "STAGE", "PROGRESS", "AGE");
    size_t i;
    json_t *r;
    time_t now = time(NULL);
    json_array_foreach(json_object_get(st, "runs"), i, r) {
        char stage[64] = "", age[16];
        if (jstr(r, "stage")[0])
            snprintf(stage, sizeof stage, "%d/%d %s",
                     (int)json_integer_value(json_object_get(r, "stage_index")) + 1,
                     (int)json_integer_value(json_object_get(r, "n_stages")), jstr(r, "stage"));
        json_t *sub = json_object_get(r, "submitted_unix");
        /* the stamp may be rounded (a real with 7 digits): never a negative age */
        fmt_secs(json_is_number(sub) ? fmax(0, (double)now - json_number_value(sub)) : NAN, age,
                 sizeof age);
        printf("%-20s %-10s %-16s %-18s %s\n", jstr(r, "name"), jstr(r, "state"), stage,
               jstr(r, "progress"), age);
    }
    json_decref(st);
    return 0;
}

/* One run, readable. */
static void status_print(json_t *r) {
    printf("%s: %s%s%s\n", jstr(r, "name"), jstr(r, "state"), jstr(r, "reason")[0] ? ": " : "",
           jstr(r, "reason"));
    if (jstr(r, "run_dir")[0]) printf("  run directory  %s\n", jstr(r, "run_dir"));
    if (!strcmp(jstr(r, "state"), "running")) {
        char line[256];
        progress_line(r, line, sizeof line);
        printf("  now            %s\n", line);
    }
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(r, "stages"), i, s) {
        char el[16] = "";
        double secs = json_number_value(json_object_get(s, "seconds"));
        if (secs > 0) fmt_secs(secs, el, sizeof el);
        printf("  %2zu %-10s %-10s %s\n", i + 1, jstr(s, "name"), jstr(s, "state"), el);
    }
}

/* --run-dir: handled before parsing (cmd_status_local); listed for --help */
static int status_opt_run_dir(void *args, const char *dir) {
    (void)args, (void)dir;
    return 0;
}

static const cli_opt_t status_table[] = {
    RUNS_OPT_WHERE,
    CLI_OPT_FLAG(runs_args_t, json, "json", "print the master's status JSON"),
    CLI_OPT_CALL("run-dir", "DIR", "(the old form) the /status JSON of the master in DIR",
                 status_opt_run_dir, CLI_OPT_NOKEY),
    CLI_OPT_CALL("http-token-file", "FILE",
                 "with --run-dir: the master's HTTP bearer token (default: $RLHF_HTTP_TOKEN_FILE, "
                 "else DIR/http.token or the file the master's master.json names)",
                 status_opt_run_dir, CLI_OPT_NOKEY),
};
static const cli_opts_t status_opts =
    CLI_OPTS("status", "rlhf status [RUN] [--json] [--master ENDPOINT | --data-dir DIR]",
             "The state of one run (or of every run): its stage, progress, ETA and stages;\n"
             "with --json the master's status object. `rlhf status --run-dir DIR` prints the\n"
             "/status JSON of the master `rlhf up --run-dir DIR` started.\n",
             status_table, NULL);

int cmd_status(int argc, char **argv) {
    for (int i = 1; i < argc; i++) /* the old form: the master's own /status */
        if (!strcmp(argv[i], "--run-dir") || !strncmp(argv[i], "--run-dir=", 10))
            return cmd_status_local(argc, argv);
    runs_args_t a;
    const char *name;
    int ret = runs_parse(&status_opts, argc, argv, &a, &name, 0);
    if (ret != CLI_OPTS_GO) return ret;
    char ep[256];
    if (runs_endpoint("status", &a, ep, sizeof ep)) return 1;
    client_t *c = runs_open("status", ep, a.master ? NULL : a.data_dir);
    Rlhf__RunReply *rep = NULL;
    json_t *st = NULL;
    ret = c ? runs_ask("status", c, ep, name ? name : "", 0, 0, 0, &rep, &st) : 1;
    client_close(&c);
    if (ret) return ret;
    rlhf__run_reply__free_unpacked(rep, NULL);
    if (!st) {
        fprintf(stderr, "rlhf status: the master's status is not JSON\n");
        return 1;
    }
    if (a.json) return cli_print_json(st);
    if (name) {
        status_print(st);
    } else {
        size_t i;
        json_t *r;
        json_array_foreach(json_object_get(st, "runs"), i, r) status_print(r);
        if (!json_array_size(json_object_get(st, "runs"))) printf("no runs\n");
    }
    json_decref(st);
    return 0;
}

static const cli_opt_t logs_table[] = {
    RUNS_OPT_WHERE,
    CLI__OPT(runs_args_t, follow, "follow", CLI_OPT_FLAG, 0, 1, NULL, NULL,
             "keep printing as the log grows, until the run ends (also -f)", NULL, 0),
};
static const cli_opts_t logs_opts = CLI_OPTS(
    "logs", "rlhf logs RUN [-f] [--master ENDPOINT | --data-dir DIR]",
    "The run's log: each stage started and finished, progress, failures.\n", logs_table, NULL);

int cmd_logs(int argc, char **argv) {
    /* -f, the short form of --follow */
    char **av = malloc((size_t)(argc + 1) * sizeof *av);
    if (!av) return 1;
    for (int i = 0; i < argc; i++) av[i] = !strcmp(argv[i], "-f") ? "--follow" : argv[i];
    av[argc] = NULL;
    runs_args_t a;
    const char *name;
    int ret = runs_parse(&logs_opts, argc, av, &a, &name, 1);
    free(av);
    if (ret != CLI_OPTS_GO) return ret;
    char ep[256];
    if (runs_endpoint("logs", &a, ep, sizeof ep)) return 1;
    client_t *c = runs_open("logs", ep, a.master ? NULL : a.data_dir);
    if (!c) return 1;
    uint64_t off = 0;
    for (;;) { /* what there is */
        Rlhf__RunReply *rep = NULL;
        json_t *st = NULL;
        if ((ret = runs_ask("logs", c, ep, name, 0, 1, off, &rep, &st))) break;
        json_decref(st);
        size_t len = rep->log.len;
        fwrite(rep->log.data, 1, len, stdout);
        off = rep->log_offset;
        rlhf__run_reply__free_unpacked(rep, NULL);
        if (!len) break;
    }
    fflush(stdout);
    if (ret == 0 && a.follow) {
        follow_t f = {.cmd = "logs", .name = name, .ep = ep, .log_to = stdout, .log_off = off};
        ret = follow(&c, &f);
        json_decref(f.final);
    }
    client_close(&c);
    return ret;
}

static const cli_opts_t cancel_opts =
    CLI_OPTS("cancel", "rlhf cancel RUN [--master ENDPOINT | --data-dir DIR]",
             "Cancels the run: its running stage is stopped, nothing more is started.\n"
             "Submitting it again (rlhf run) continues it.\n",
             runs_where_table, NULL);

int cmd_cancel(int argc, char **argv) {
    runs_args_t a;
    const char *name;
    int ret = runs_parse(&cancel_opts, argc, argv, &a, &name, 1);
    if (ret != CLI_OPTS_GO) return ret;
    char ep[256];
    if (runs_endpoint("cancel", &a, ep, sizeof ep)) return 1;
    client_t *c = runs_open("cancel", ep, a.master ? NULL : a.data_dir);
    Rlhf__RunReply *rep = NULL;
    json_t *st = NULL;
    ret = c ? runs_ask("cancel", c, ep, name, 1, 0, 0, &rep, &st) : 1;
    client_close(&c);
    if (ret) return ret;
    rlhf__run_reply__free_unpacked(rep, NULL);
    printf("%s: %s\n", name, st ? jstr(st, "state") : "?");
    json_decref(st);
    return 0;
}

static const cli_opt_t wait_table[] = {
    RUNS_OPT_WHERE,
    CLI_OPT_DOUBLE(runs_args_t, timeout, "timeout", 0, INFINITY, "0", "S",
                   "give up after S seconds (exit 124); 0: no limit"),
};
static const cli_opts_t wait_opts =
    CLI_OPTS("wait", "rlhf wait RUN [--timeout S] [--master ENDPOINT | --data-dir DIR]",
             "Waits until the run ends. Exit status 0 when it succeeded, 1 when it failed or was\n"
             "cancelled, 124 on timeout.\n",
             wait_table, NULL);

int cmd_wait(int argc, char **argv) {
    runs_args_t a;
    const char *name;
    int ret = runs_parse(&wait_opts, argc, argv, &a, &name, 1);
    if (ret != CLI_OPTS_GO) return ret;
    char ep[256];
    if (runs_endpoint("wait", &a, ep, sizeof ep)) return 1;
    client_t *c = runs_open("wait", ep, a.master ? NULL : a.data_dir);
    if (!c) return 1;
    follow_t f = {.cmd = "wait", .name = name, .ep = ep, .timeout_s = a.timeout};
    ret = follow(&c, &f);
    client_close(&c);
    if (ret == 124) fprintf(stderr, "rlhf wait: %s not finished after %g s\n", name, a.timeout);
    if (ret == 0 && strcmp(jstr(f.final, "state"), "succeeded")) {
        fprintf(stderr, "rlhf wait: %s %s: %s\n", name, jstr(f.final, "state"),
                jstr(f.final, "reason"));
        ret = 1;
    }
    json_decref(f.final);
    return ret;
}
