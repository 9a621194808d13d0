/*
 * worker_stage.c - the STAGE handler of stage workers (`rlhf-worker --role stage`): one stage
 * command of a run (`rlhf task`, `rlhf sft`, ...) as a child process.
 *
 * The child is the `rlhf` binary next to rlhf-worker, run as `rlhf ARGV...` in the spec's cwd,
 * with RLHF_MASTER and RLHF_NS in its environment (the jobs it submits go to the run's master
 * under the stage's namespace), stdin /dev/null, stdout and stderr appended to the spec's log
 * (or stdout to stdout_to + ".tmp", renamed onto stdout_to once the command succeeded). It has
 * its own process group and dies with the worker's job thread (PR_SET_PDEATHSIG); a cancelled
 * job (the worker stopping) gets its group SIGTERM, then SIGKILL after 2 s.
 *
 * Its exit status decides the outcome (rlhf commands exit 1 or 2 on bad input, 75 on an
 * environment error, cli_fail):
 *   0       StageOutput {exit_code, seconds, the log's last lines}
 *   1, 2    a deterministic rejection whose reason is the command's own error line: the last
 *           line of this run's log starting with "rlhf " (else its last non-empty line)
 *   75      an environment rejection, the same reason
 *   other   transient: killed by a signal, exec failed (127), anything else
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "rlhf.pb-c.h"
#include "worker.h"

extern char **environ;

#define TAIL_LINES    20
#define TAIL_BYTES    (64 << 10)
#define KILL_GRACE_MS 2000
#define EXIT_TEMPFAIL 75

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Creates the directory that holds `path` (nothing to do for a bare name). */
static int parent_mkdir(const char *path) {
    char *d = strdup(path);
    if (!d) return rl_fail(RL_ENOMEM, "out of memory");
    char *slash = strrchr(d, '/');
    int rc = 0;
    if (slash && slash != d) {
        *slash = 0;
        rc = fs_mkdir_p(d);
    }
    free(d);
    return rc;
}

/* The child's own variables: where its jobs go (RLHF_MASTER, RLHF_NS), where it publishes and
 * fetches artifacts (RLHF_BLOB: the master's artifact server; RLHF_CACHE_DIR: the worker's
 * cache, whose copies it may share). */
enum { N_OWN_ENV = 4 };
static const char *const own_env_names[N_OWN_ENV] = {"RLHF_MASTER", "RLHF_NS", "RLHF_BLOB",
                                                     "RLHF_CACHE_DIR"};

/* The environment of the child: ours, with the own variables replaced by `vals` (own[] gets the
 * strings to free). NULL: no memory. */
static char **child_env(const char *const vals[N_OWN_ENV], char *own[N_OWN_ENV]) {
    size_t n = 0;
    while (environ[n]) n++;
    char **env = calloc(n + N_OWN_ENV + 1, sizeof *env);
    if (!env) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int ours = 0;
        for (int j = 0; j < N_OWN_ENV; j++) {
            size_t l = strlen(own_env_names[j]);
            ours |= !strncmp(environ[i], own_env_names[j], l) && environ[i][l] == '=';
        }
        if (!ours) env[k++] = environ[i];
    }
    for (int j = 0; j < N_OWN_ENV; j++) {
        if (asprintf(&own[j], "%s=%s", own_env_names[j], vals[j] ? vals[j] : "") < 0) {
            own[j] = NULL;
            free(env);
            return NULL;
        }
        env[k++] = own[j];
    }
    env[k] = NULL;
    return env;
}

/* What the log gained since `from` (at most its last TAIL_BYTES), malloc'ed; "" if nothing. */
static char *log_since(const char *path, off_t from) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0) {
        if (fd >= 0) close(fd);
        return strdup("");
    }
    off_t start = sb.st_size - from > TAIL_BYTES ? sb.st_size - TAIL_BYTES : from;
    size_t n = sb.st_size > start ? (size_t)(sb.st_size - start) : 0;
    char *buf = malloc(n + 1);
    ssize_t got = buf && n ? pread(fd, buf, n, start) : 0;
    close(fd);
    if (!buf) return NULL;
    buf[got > 0 ? got : 0] = 0;
    return buf;
}

/* The last `lines` lines of text (a pointer into it). */
static const char *tail_of(const char *text, int lines) {
    const char *p = text + strlen(text);
    if (p > text && p[-1] == '\n') p--;
    while (p > text) {
        if (p[-1] == '\n' && --lines == 0) break;
        p--;
    }
    return p;
}

/* Whether line p[0..m) is the "rlhf CMD: see `rlhf CMD --help`" that follows a usage error. */
static int is_help_hint(const char *p, size_t m) {
    static const char see[] = ": see `rlhf ", end[] = " --help`";
    if (m < sizeof end || memcmp(p + m - (sizeof end - 1), end, sizeof end - 1)) return 0;
    for (size_t i = 0; i + sizeof see - 1 <= m; i++)
        if (!memcmp(p + i, see, sizeof see - 1)) return 1;
    return 0;
}

/* The command's error line in the text of its log: the last line starting with "rlhf ", else
 * the last non-empty one, never the "see `rlhf CMD --help`" hint after a usage error (the line
 * before it names the problem); copied into out (empty if there is none). */
void worker_stage_error_line(const char *text, char *out, size_t cap) {
    const char *best = NULL, *last = NULL;
    size_t best_n = 0, last_n = 0;
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        size_t m = n;
        while (m && (p[m - 1] == ' ' || p[m - 1] == '\t' || p[m - 1] == '\r')) m--;
        /* "rlhf CMD: see `rlhf CMD --help`" follows a usage error: the line before says it */
        int hint = is_help_hint(p, m);
        if (m && !hint) last = p, last_n = m;
        if (m && !hint && !strncmp(p, "rlhf ", 5)) best = p, best_n = m;
        p += n + (p[n] == '\n');
    }
    if (!best) best = last, best_n = last_n;
    snprintf(out, cap, "%.*s", best ? (int)best_n : 0, best ? best : "");
}

/* Waits for the child; on cancellation kills its group (TERM, then KILL after the grace).
 * Returns its wait status, or -1 if waiting failed. *cancelled is set if it was killed so. */
static int child_wait(pid_t pid, atomic_int *cancel, int *cancelled) {
    int status = 0;
    double kill_at = 0;
    *cancelled = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0 && errno != EINTR) return -1;
        if (!*cancelled && atomic_load(cancel)) {
            *cancelled = 1;
            kill(-pid, SIGTERM);
            kill_at = now_ms() + KILL_GRACE_MS;
        }
        if (*cancelled && kill_at && now_ms() >= kill_at) {
            kill(-pid, SIGKILL);
            kill_at = 0;
        }
        sleep_ms(20);
    }
}

/* Renames the finished stdout file onto its name, durably. */
static int stdout_commit(int fd, const char *tmp, const char *path) {
    if (fsync(fd) < 0) return rl_fail_errno(RL_EIO, errno, "%s: fsync: %s", tmp, strerror(errno));
    if (rename(tmp, path) < 0)
        return rl_fail_errno(RL_EIO, errno, "%s: rename from %s: %s", path, tmp, strerror(errno));
    char *d = strdup(path);
    if (!d) return 0;
    int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(d);
    return 0;
}

/* Runs the command of sp; fills *out_o. Returns 0 or RL_E* with the verdict set. */
static int stage_run(const worker_job_t *job, const Rlhf__StageSpec *sp, Rlhf__StageOutput *o,
                     char **tail_out) {
    const char *name = sp->name && sp->name[0] ? sp->name : "stage";
    if (!sp->n_argv || !sp->argv[0][0])
        return rl_fail(RL_EINVAL, "stage %s: no command (argv is empty)", name);
    if (!sp->log || !sp->log[0]) return rl_fail(RL_EINVAL, "stage %s: no log file", name);
    if (sp->n_argv > 4096) return rl_fail(RL_EINVAL, "stage %s: %zu arguments", name, sp->n_argv);
    const char *cwd = sp->cwd && sp->cwd[0] ? sp->cwd : NULL;
    struct stat sb;
    if (cwd && (stat(cwd, &sb) < 0 || !S_ISDIR(sb.st_mode)))
        return rl_fail(RL_ENOTFOUND, "stage %s: %s: not a directory", name, cwd);
    char bin[PATH_MAX + 8], self[PATH_MAX];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    self[sl > 0 ? sl : 0] = 0;
    snprintf(bin, sizeof bin, "%.*s/rlhf", PATH_MAX - 8, sl > 0 ? dirname(self) : ".");
    int rc = parent_mkdir(sp->log);
    if (rc == 0 && sp->stdout_to && sp->stdout_to[0]) rc = parent_mkdir(sp->stdout_to);
    if (rc < 0) return rl_fail_ctx(rc, "stage %s", name);
    int lfd = open(sp->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (lfd < 0)
        return rl_fail_errno(RL_EIO, errno, "stage %s: %s: %s", name, sp->log, strerror(errno));
    off_t from = lseek(lfd, 0, SEEK_END);
    char *tmp = NULL;
    int ofd = lfd;
    if (sp->stdout_to && sp->stdout_to[0]) {
        if (asprintf(&tmp, "%s.tmp", sp->stdout_to) < 0) tmp = NULL;
        ofd = tmp ? open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
        if (ofd < 0) {
            int e = tmp ? errno : ENOMEM;
            rc = rl_fail_errno(RL_EIO, e, "stage %s: %s: %s", name, tmp ? tmp : sp->stdout_to,
                               strerror(e));
            close(lfd);
            free(tmp);
            return rc;
        }
    }
    char **argv = calloc(sp->n_argv + 2, sizeof *argv), *own[N_OWN_ENV] = {NULL};
    /* the command's jobs go to the master this worker serves (the one that gave it the job),
     * or to the spec's when it names one */
    const char *master = sp->master && sp->master[0] ? sp->master : job->master ? job->master : "";
    const char *vals[N_OWN_ENV] = {master, sp->ns ? sp->ns : "", job->blob_ep, job->cache_dir};
    char **env = child_env(vals, own);
    int nfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t parent = getpid(), pid = -1;
    if (argv && env && nfd >= 0) {
        argv[0] = "rlhf";
        for (size_t i = 0; i < sp->n_argv; i++) argv[i + 1] = sp->argv[i];
        pid = fork();
    }
    if (pid == 0) { /* the child: async-signal-safe calls only until exec */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127); /* the worker died before the line above */
        dup2(nfd, 0);
        dup2(ofd, 1);
        dup2(lfd, 2);
        if (cwd && chdir(cwd) < 0) _exit(127);
        execve(bin, argv, env);
        static const char msg[] = "rlhf-worker: stage: cannot execute the rlhf binary\n";
        if (write(2, msg, sizeof msg - 1) < 0) _exit(127);
        _exit(127);
    }
    double t0 = now_ms();
    int status = 0, cancelled = 0;
    if (pid > 0) {
        setpgid(pid, pid); /* also here: no race with a kill before the child's own call */
        status = child_wait(pid, job->cancel, &cancelled);
    }
    int e = errno;
    if (nfd >= 0) close(nfd);
    free(argv);
    free(env);
    for (int j = 0; j < N_OWN_ENV; j++) free(own[j]);
    o->seconds = (now_ms() - t0) / 1e3;
    char *text = log_since(sp->log, from);
    char line[512] = "";
    if (text) worker_stage_error_line(text, line, sizeof line);
    int code = pid > 0 && status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (pid <= 0) {
        rc = rl_fail(pid < 0 && argv && env ? RL_EIO : RL_ENOMEM, "stage %s: cannot start: %s",
                     name, strerror(e));
    } else if (status < 0) {
        rc = rl_fail(RL_EIO, "stage %s: waiting for the command: %s", name, strerror(e));
    } else if (cancelled) {
        rc = rl_fail(RL_EIO, "stage %s: cancelled", name);
    } else if (code == 0) {
        o->exit_code = 0;
        rc = tmp ? stdout_commit(ofd, tmp, sp->stdout_to) : 0;
        if (rc < 0) rl_fail_ctx(rc, "stage %s", name);
    } else if (code == 1 || code == 2 || code == EXIT_TEMPFAIL) {
        *job->verdict =
            code == EXIT_TEMPFAIL ? WORKER_VERDICT_ENVIRONMENT : WORKER_VERDICT_DETERMINISTIC;
        rc = line[0] ? rl_fail(RL_EINVAL, "%s", line)
                     : rl_fail(RL_EINVAL, "stage %s: `rlhf %s` exited with status %d", name,
                               sp->argv[0], code);
    } else {
        *job->verdict = WORKER_VERDICT_TRANSIENT;
        if (WIFSIGNALED(status))
            rc = rl_fail(RL_EIO, "stage %s: `rlhf %s` killed by signal %d%s%s", name, sp->argv[0],
                         WTERMSIG(status), line[0] ? ": " : "", line);
        else
            rc = rl_fail(RL_EIO, "stage %s: `rlhf %s` exited with status %d%s%s", name, sp->argv[0],
                         code, line[0] ? ": " : "", line);
    }
    if (rc < 0 && cancelled) *job->verdict = WORKER_VERDICT_TRANSIENT;
    if (ofd != lfd) close(ofd);
    close(lfd);
    if (rc < 0 && tmp) unlink(tmp);
    free(tmp);
    if (rc == 0 && text) *tail_out = strdup(tail_of(text, TAIL_LINES));
    free(text);
    return rc;
}

int worker_stage(const worker_job_t *job, const uint8_t *payload, size_t len, uint8_t **out,
                 size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    Rlhf__StageSpec *sp = rlhf__stage_spec__unpack(NULL, len, payload);
    if (!sp) return rl_fail(RL_EFORMAT, "stage: malformed StageSpec");
    Rlhf__StageOutput o = RLHF__STAGE_OUTPUT__INIT;
    char *tail = NULL;
    int rc = stage_run(job, sp, &o, &tail);
    if (rc == 0) {
        o.tail = tail ? tail : "";
        *out_len = rlhf__stage_output__get_packed_size(&o);
        *out = malloc(*out_len ? *out_len : 1);
        if (*out)
            rlhf__stage_output__pack(&o, *out);
        else
            rc = rl_fail(RL_ENOMEM, "stage: out of memory");
    }
    free(tail);
    rlhf__stage_spec__free_unpacked(sp, NULL);
    return rc;
}
