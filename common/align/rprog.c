/*
 * rprog.c - a reward program run in a sandbox, items streamed over JSON Lines (rprog.h has the
 * protocol and the sandbox).
 *
 * The runner forks with everything the child needs prepared beforehand (argv, environment,
 * limits, its directory), because the worker that calls it has other threads: between fork and
 * exec the child only calls async-signal-safe functions.
 */
#include "rprog.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sched.h>

#include "base/err.h"
#include "base/fs.h"

const char *const rprog_status_names[RPROG_NSTATUS] = {"ok", "timeout", "crash", "malformed"};

#define LINE_MAX_BYTES (1 << 20) /* a response line longer than this is malformed */

struct rprog {
    rprog_opts_t o;
    char *cmd;
    const char *bwrap; /* its path, or NULL: the fallback sandbox */
    pid_t pid;         /* the running program (its process group), 0: none */
    int fd_in, fd_out; /* its stdin (we write), its stdout (we read) */
    char base[4096];   /* where start directories are made */
    char dir[4200];    /* this start's directory ("": none): dir/work is the program's, dir/stderr
                        * its log */
    char *buf;         /* bytes read and not yet consumed */
    size_t len, cap;
    long starts;
};

static const char *find_bwrap(void) {
    static const char *const paths[] = {"/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        if (access(paths[i], X_OK) == 0) return paths[i];
    return NULL;
}

rprog_t *rprog_new(const rprog_opts_t *o) {
    if (!o || !o->cmd || !o->cmd[0] || o->timeout_ms <= 0) {
        rl_fail(RL_EINVAL, "reward program: a command and a time limit are needed");
        return NULL;
    }
    rprog_t *p = calloc(1, sizeof *p);
    if (!p || !(p->cmd = strdup(o->cmd))) {
        free(p);
        rl_fail(RL_ENOMEM, "reward program: out of memory");
        return NULL;
    }
    p->o = *o;
    p->o.cmd = p->cmd;
    p->o.tmp_root = NULL; /* resolved at each start: the caller's string need not live on */
    const char *tr = o->tmp_root ? o->tmp_root : getenv("TMPDIR");
    snprintf(p->base, sizeof p->base, "%s", tr && tr[0] ? tr : "/tmp");
    if (!p->o.cpu_s) p->o.cpu_s = 600;
    if (!p->o.mem_mb) p->o.mem_mb = 4096;
    if (!p->o.fsize_mb) p->o.fsize_mb = 64;
    if (!p->o.nofile) p->o.nofile = 256;
    if (!p->o.nproc) p->o.nproc = 256;
    p->bwrap = o->no_bwrap ? NULL : find_bwrap();
    p->fd_in = p->fd_out = -1;
    return p;
}

int rprog_same(const rprog_t *p, const char *cmd, int timeout_ms) {
    return p && cmd && !strcmp(p->cmd, cmd) && p->o.timeout_ms == timeout_ms;
}

const char *rprog_sandbox(const rprog_t *p) {
    return p && p->bwrap ? "bwrap" : "rlimits";
}

long rprog_starts(const rprog_t *p) {
    return p ? p->starts : 0;
}

/* Kills the program's process group, reaps it, removes its directory. status: its wait
 * status (NULL: not wanted). */
static void prog_stop(rprog_t *p, int *status) {
    int st = 0;
    if (p->fd_in >= 0) close(p->fd_in);
    if (p->fd_out >= 0) close(p->fd_out);
    p->fd_in = p->fd_out = -1;
    if (p->pid > 0) {
        kill(-p->pid, SIGKILL);
        while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR) {
        }
    }
    p->pid = 0;
    if (status) *status = st;
    if (p->dir[0]) fs_remove_tree(p->dir);
    p->dir[0] = 0;
    p->len = 0;
}

void rprog_destroy(rprog_t **pp) {
    if (!pp || !*pp) return;
    prog_stop(*pp, NULL);
    free((*pp)->cmd);
    free((*pp)->buf);
    free(*pp);
    *pp = NULL;
}

static void set_limit(int res, rlim_t v) {
    struct rlimit rl = {v, v};
    setrlimit(res, &rl);
}

/* Starts the program. Returns 0 or RL_E*. */
static int prog_start(rprog_t *p) {
    char root[4096], work[4200], errf[4200];
    snprintf(root, sizeof root, "%.4000s/rlhf-prog-XXXXXX", p->base);
    if (!mkdtemp(root)) return rl_fail(RL_EIO, "reward program: %s: %s", root, strerror(errno));
    snprintf(p->dir, sizeof p->dir, "%s", root);
    snprintf(work, sizeof work, "%s/work", root);
    snprintf(errf, sizeof errf, "%s/stderr", root);
    int fe = -1, in[2] = {-1, -1}, out[2] = {-1, -1};
    if (mkdir(work, 0700) < 0 ||
        (fe = open(errf, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0 ||
        pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0) {
        int e = errno;
        if (fe >= 0) close(fe);
        for (int i = 0; i < 2; i++) {
            if (in[i] >= 0) close(in[i]);
            if (out[i] >= 0) close(out[i]);
        }
        prog_stop(p, NULL);
        return rl_fail(RL_EIO, "reward program: its directory or pipes: %s", strerror(e));
    }
    char home[4300], tmpd[4300];
    snprintf(home, sizeof home, "HOME=%s", work);
    snprintf(tmpd, sizeof tmpd, "TMPDIR=%s", work);
    char *envp[] = {"PATH=/usr/local/bin:/usr/bin:/bin", home, tmpd, "LANG=C.UTF-8", NULL};
    char *argv[40];
    int n = 0;
    if (p->bwrap) {
        /* --unshare-all: user (where possible), ipc, pid, net, uts, cgroup namespaces; the file
         * system read-only but for the program's directory (its TMPDIR too: /tmp stays the
         * host's, read-only, so that a script kept there can run); capabilities dropped */
        // clang-format off
        char *const a[] = {(char *)p->bwrap, "--unshare-all",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--bind", work, work,
            "--chdir", work, "--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
            "--setenv", "HOME", work, "--setenv", "TMPDIR", work, "--setenv", "LANG", "C.UTF-8",
            "--", "/bin/sh", "-c", p->cmd, NULL};
        // clang-format on
        for (; a[n]; n++) argv[n] = a[n];
        argv[n] = NULL;
    } else {
        argv[n++] = "/bin/sh", argv[n++] = "-c", argv[n++] = p->cmd, argv[n] = NULL;
    }
    int maxfd = (int)sysconf(_SC_OPEN_MAX);
    if (maxfd < 0 || maxfd > 65536) maxfd = 65536;
    pid_t pid = fork();
    if (pid == 0) { /* the child: async-signal-safe calls only */
        setpgid(0, 0);
        /* no PR_SET_PDEATHSIG (nor bwrap's --die-with-parent, the same thing): it fires when
         * the forking *thread* ends, and a worker runs each job on a thread of its own. A
         * runner that dies closes the pipes: the program reads EOF on its stdin */
        dup2(in[0], 0), dup2(out[1], 1), dup2(fe, 2);
        if (close_range(3, ~0U, 0) < 0) /* Linux >= 5.9; else one by one */
            for (int fd = 3; fd < maxfd; fd++) close(fd);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (!p->bwrap) unshare(CLONE_NEWNET); /* no network where permitted (root) */
        if (chdir(work) < 0) _exit(126);
        set_limit(RLIMIT_CPU, (rlim_t)p->o.cpu_s);
#ifndef __SANITIZE_ADDRESS__
        set_limit(RLIMIT_AS, (rlim_t)p->o.mem_mb << 20);
#else
        /* the AddressSanitizer build's own programs (`rlhf gold-judge` in its tests) reserve
         * terabytes of address space for their shadow memory and cannot start under the limit:
         * that build leaves address space unlimited (the others still hold) */
#endif
        set_limit(RLIMIT_FSIZE, (rlim_t)p->o.fsize_mb << 20);
        set_limit(RLIMIT_NOFILE, (rlim_t)p->o.nofile);
        set_limit(RLIMIT_NPROC, (rlim_t)p->o.nproc);
        set_limit(RLIMIT_CORE, 0);
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        execve(argv[0], argv, envp);
        _exit(127);
    }
    int e = errno;
    close(in[0]), close(out[1]), close(fe);
    if (pid < 0) {
        close(in[1]), close(out[0]);
        prog_stop(p, NULL);
        return rl_fail(RL_EIO, "reward program: fork: %s", strerror(e));
    }
    setpgid(pid, pid); /* both sides: whichever runs first, the group exists before a kill */
    p->pid = pid;
    p->fd_in = in[1];
    p->fd_out = out[0];
    fcntl(p->fd_in, F_SETFL, fcntl(p->fd_in, F_GETFL) | O_NONBLOCK);
    p->starts++;
    p->len = 0;
    return 0;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Waits for fd to be ready for `events` until the deadline. 1 ready, 0 timed out. */
static int wait_fd(int fd, short events, double deadline) {
    for (;;) {
        double left = deadline - now_ms();
        if (left <= 0) return 0;
        struct pollfd pf = {fd, events, 0};
        int r = poll(&pf, 1, (int)ceil(left));
        if (r > 0) return 1;
        if (r < 0 && errno != EINTR) return 1; /* the read or write says what is wrong */
    }
}

/* The last bytes of the program's stderr, on one line, into out. */
static void stderr_tail(const rprog_t *p, char *out, size_t n) {
    char path[4300], buf[240];
    out[0] = 0;
    snprintf(path, sizeof path, "%s/stderr", p->dir);
    FILE *f = fopen(path, "rb");
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, sz > (long)sizeof buf - 1 ? sz - (long)sizeof buf + 1 : 0, SEEK_SET);
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    while (k && (buf[k - 1] == '\n' || buf[k - 1] == ' ')) k--;
    buf[k] = 0;
    for (size_t i = 0; i < k; i++)
        if ((unsigned char)buf[i] < 32) buf[i] = ' ';
    if (k) snprintf(out, n, "; its stderr ends: \"%s\"", buf);
}

/* A dead program's reason: its exit status or signal, and its stderr's end. */
static void crash_reason(rprog_t *p, char *why, size_t n) {
    char tail[300];
    int st = 0;
    /* its end of the pipes closes as it exits: give it a moment to become a zombie */
    pid_t pid = p->pid, done = 0;
    for (int i = 0; i < 50 && !done; i++) {
        done = waitpid(pid, &st, WNOHANG);
        if (!done) usleep(2000);
    }
    stderr_tail(p, tail, sizeof tail); /* before prog_stop removes the file */
    if (done == pid) {
        kill(-pid, SIGKILL); /* what is left of its group */
        p->pid = 0;
        prog_stop(p, NULL);
    } else {
        prog_stop(p, &st);
    }
    if (!done)
        snprintf(why, n, "the program closed its stdin or stdout and kept running; it was killed%s",
                 tail);
    else if (WIFSIGNALED(st))
        snprintf(why, n, "the program was killed by signal %d (%s)%s", WTERMSIG(st),
                 strsignal(WTERMSIG(st)), tail);
    else if (WEXITSTATUS(st) > 128 && WEXITSTATUS(st) < 128 + 65) /* bwrap, a shell: 128 + N */
        snprintf(why, n, "the program exited with status %d (128 + signal %d: %s)%s",
                 WEXITSTATUS(st), WEXITSTATUS(st) - 128, strsignal(WEXITSTATUS(st) - 128), tail);
    else
        snprintf(why, n, "the program exited with status %d%s", WEXITSTATUS(st), tail);
}

/* The response line, quoted for a message: its first 80 bytes. */
static void quote_line(const char *line, size_t len, char *out, size_t n) {
    size_t k = len < 80 ? len : 80;
    snprintf(out, n, "'%.*s%s'", (int)k, line, len > k ? "..." : "");
}

/* Parses one response line. Returns RPROG_OK or RPROG_MALFORMED (why set). */
static int parse_response(const char *line, size_t len, double *score, char *why, size_t n) {
    char q[100];
    quote_line(line, len, q, sizeof q);
    json_error_t e;
    json_t *o = json_loadb(line, len, 0, &e);
    int rc = RPROG_MALFORMED;
    json_t *s = o ? json_object_get(o, "score") : NULL;
    const char *err = o ? json_string_value(json_object_get(o, "error")) : NULL;
    if (!o)
        snprintf(why, n, "response line %s is not JSON: %s", q, e.text);
    else if (!json_is_object(o))
        snprintf(why, n, "response line %s is not a JSON object", q);
    else if (err && !json_is_number(s))
        snprintf(why, n, "the program's error: %s", err);
    else if (!json_is_number(s))
        snprintf(why, n, "response line %s has no number \"score\"", q);
    else if (!isfinite(json_number_value(s)))
        snprintf(why, n, "response line %s: the score is not finite", q);
    else {
        *score = json_number_value(s);
        rc = RPROG_OK;
    }
    json_decref(o);
    return rc;
}

/* Writes all of s (len bytes) to the program by the deadline. RPROG_OK, _TIMEOUT or _CRASH. */
static int send_all(rprog_t *p, const char *s, size_t len, double deadline) {
    while (len) {
        if (!wait_fd(p->fd_in, POLLOUT, deadline)) return RPROG_TIMEOUT;
        ssize_t w = write(p->fd_in, s, len);
        if (w < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (w <= 0) return RPROG_CRASH; /* EPIPE: it closed its stdin or exited */
        s += w, len -= (size_t)w;
    }
    return RPROG_OK;
}

int rprog_score(rprog_t *p, const char *request, double *score, char *why, size_t why_len) {
    why[0] = 0;
    *score = NAN;
    int rc;
    /* a program that ended after its last answer (a one-shot program: one line in, one out,
     * exit) is started again without charging this item */
    int st;
    if (p->pid && p->len == 0 && waitpid(p->pid, &st, WNOHANG) == p->pid) {
        /* reaped: what is left of its group goes (a group's id is not reused while it has
         * members), then prog_stop must not wait for it again */
        kill(-p->pid, SIGKILL);
        p->pid = 0;
        prog_stop(p, NULL);
    }
    if (!p->pid && (rc = prog_start(p)) < 0) return rc;
    double t0 = now_ms(), deadline = t0 + p->o.timeout_ms;
    rc = send_all(p, request, strlen(request), deadline);
    if (rc == RPROG_OK) rc = send_all(p, "\n", 1, deadline);
    size_t scanned = 0;
    char *nl = NULL;
    /* (memchr is not given the empty buffer before the first read: it may be NULL) */
    while (rc == RPROG_OK &&
           !(nl = p->len > scanned ? memchr(p->buf + scanned, '\n', p->len - scanned) : NULL)) {
        scanned = p->len;
        if (p->len >= LINE_MAX_BYTES) {
            snprintf(why, why_len, "response line longer than %d bytes", LINE_MAX_BYTES);
            rc = RPROG_MALFORMED;
            break;
        }
        if (p->cap - p->len < 4096) {
            size_t nc = p->cap ? 2 * p->cap : 65536;
            char *nb = realloc(p->buf, nc);
            if (!nb) {
                prog_stop(p, NULL);
                return rl_fail(RL_ENOMEM, "reward program: out of memory");
            }
            p->buf = nb, p->cap = nc;
        }
        if (!wait_fd(p->fd_out, POLLIN, deadline)) {
            rc = RPROG_TIMEOUT;
            break;
        }
        ssize_t r = read(p->fd_out, p->buf + p->len, p->cap - p->len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            rc = RPROG_CRASH;
        else
            p->len += (size_t)r;
    }
    if (rc == RPROG_TIMEOUT) {
        snprintf(why, why_len, "no response within the time limit of %d ms; the program was killed",
                 p->o.timeout_ms);
        prog_stop(p, NULL);
    } else if (rc == RPROG_CRASH) {
        crash_reason(p, why, why_len);
    } else if (rc == RPROG_OK) {
        size_t ll = (size_t)(nl - p->buf), rest = p->len - ll - 1;
        size_t l2 = ll && p->buf[ll - 1] == '\r' ? ll - 1 : ll;
        rc = parse_response(p->buf, l2, score, why, why_len);
        if (rc == RPROG_OK && rest) {
            char q[100];
            quote_line(nl + 1, rest, q, sizeof q);
            snprintf(why, why_len, "more output after the response line: %s", q);
            rc = RPROG_MALFORMED;
        }
        p->len = 0;
    }
    /* after malformed output the stream cannot be trusted to be in step: start afresh */
    if (rc == RPROG_MALFORMED) prog_stop(p, NULL);
    if (rc != RPROG_OK) *score = NAN;
    return rc;
}

/* ---- requests ------------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if not valid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t k = c < 0x80             ? 1
               : (c & 0xE0) == 0xC0 ? 2
               : (c & 0xF0) == 0xE0 ? 3
               : (c & 0xF8) == 0xF0 ? 4
                                    : 0;
    if (!k || k > n) return 0;
    unsigned cp = k == 1 ? c : k == 2 ? c & 0x1F : k == 3 ? c & 0x0F : c & 0x07;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    static const unsigned minv[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < minv[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) || (k == 1 && !cp))
        return 0; /* overlong, out of range, surrogates; NUL too (a C string ends there) */
    return k;
}

char *rprog_utf8_clean(const char *s, size_t n) {
    char *o = malloc(3 * n + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq((const unsigned char *)s + i, n - i);
        if (l) {
            memcpy(o + k, s + i, l);
            k += l, i += l;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3, i++;
        }
    }
    o[k] = 0;
    return o;
}

char *rprog_request(const char *prompt, const char *completion, size_t completion_len,
                    const char *extra) {
    char *pc = rprog_utf8_clean(prompt ? prompt : "", prompt ? strlen(prompt) : 0);
    char *cc = rprog_utf8_clean(completion ? completion : "", completion ? completion_len : 0);
    json_t *o = json_object();
    char *line = NULL;
    if (pc && cc && o && !json_object_set_new(o, "prompt", json_string(pc)) &&
        !json_object_set_new(o, "completion", json_string(cc))) {
        json_t *x = extra && extra[0] ? json_loads(extra, 0, NULL) : NULL;
        if (extra && extra[0] && !json_is_object(x))
            rl_fail(RL_EFORMAT, "reward program: an item's reference fields are not a JSON object");
        else {
            const char *k;
            json_t *v;
            json_object_foreach(x, k, v) {
                if (strcmp(k, "prompt") && strcmp(k, "completion")) json_object_set(o, k, v);
            }
            line = json_dumps(o, JSON_COMPACT);
            if (!line) rl_fail(RL_ENOMEM, "reward program: out of memory");
        }
        json_decref(x);
    } else {
        rl_fail(RL_ENOMEM, "reward program: out of memory");
    }
    json_decref(o);
    free(pc), free(cc);
    return line;
}
