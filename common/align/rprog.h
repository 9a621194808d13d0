/*
 * rprog.h - a reward program: a user's executable that scores <prompt, completion> items over
 * JSON Lines on its stdin and stdout (verifiable rewards: a math checker, unit tests of code, the
 * embedded task's gold judge as `rlhf gold-judge`).
 *
 * Protocol (README.md, "Reward programs"): the program is started once, by `/bin/sh -c CMD`, and
 * kept for the items that follow. For each item the runner writes one request line
 *     {"prompt": TEXT, "completion": TEXT, "reference": ANY, "record": OBJECT}
 * and reads one response line
 *     {"score": NUMBER, "details": ANY}      ("details" optional; ignored here)
 * or {"error": TEXT} (the program's own per-item error). One line in, one line out, in order;
 * the program must flush after each line. A program that exits after answering (one item per
 * process) is started again for the next item. An item whose response does not come within the
 * time limit, a program that exits or dies, a line that is not such a JSON object are per-item
 * errors: the program is killed (its whole process group) and started afresh for the next item.
 *
 * Sandbox: each start gets a fresh private directory (its working directory and $HOME), a clean
 * environment (PATH, HOME, TMPDIR, LANG only), its own process group, no-new-privs, and resource
 * limits (CPU seconds, address space, file size, open files, processes). Where bubblewrap
 * (`bwrap`) is installed it runs inside it: every namespace unshared (no network), the whole
 * file system read-only except its directory (it reads what the worker's user may read), its
 * own /proc and /dev, all capabilities dropped. bubblewrap rather than hand-written namespace and
 * mount code: it is small, audited, the sandbox of Flatpak, and packaged by Debian; getting
 * read-only remounts and pid namespaces right by hand is where sandboxes go wrong. Without it: the
 * same limits, and a network namespace of its own when the runner may create one (root), but no
 * file system isolation (rprog_sandbox() says which).
 *
 * Not thread-safe: one rprog_t per thread. SIGPIPE must be ignored by the process (a program
 * that closed its stdin is an item error, not a dead worker).
 */
#ifndef RLHF_RPROG_H
#define RLHF_RPROG_H

#include <stddef.h>

typedef struct rprog rprog_t;

typedef struct {
    const char *cmd;      /* the command line, run by /bin/sh -c (copied) */
    int timeout_ms;       /* per item, from its request to its response line (> 0) */
    long cpu_s;           /* RLIMIT_CPU of the process, for its whole life (0: 600) */
    long mem_mb;          /* RLIMIT_AS (0: 4096) */
    long fsize_mb;        /* RLIMIT_FSIZE: the largest file it may write (0: 64) */
    int nofile;           /* RLIMIT_NOFILE (0: 256) */
    int nproc;            /* RLIMIT_NPROC (0: 256; not enforced for root by the kernel) */
    const char *tmp_root; /* where its directories are made (NULL: $TMPDIR, else /tmp) */
    int no_bwrap;         /* tests: the fallback sandbox even where bwrap exists */
} rprog_opts_t;

/* The outcome of an item (rprog_score). */
enum { RPROG_OK, RPROG_TIMEOUT, RPROG_CRASH, RPROG_MALFORMED, RPROG_NSTATUS };
extern const char *const rprog_status_names[RPROG_NSTATUS]; /* "ok", "timeout", ... */

/* A runner for o->cmd; the program starts with the first item. NULL on failure (rl_errmsg). */
rprog_t *rprog_new(const rprog_opts_t *o);

/* Kills the program (its process group), removes its directory; accepts NULL, nulls *pp. */
void rprog_destroy(rprog_t **pp);

/* Whether p runs `cmd` with these limits (a worker keeps its runner while jobs name the same). */
int rprog_same(const rprog_t *p, const char *cmd, int timeout_ms);

/* "bwrap" or "rlimits" (the fallback): the sandbox its programs run in. */
const char *rprog_sandbox(const rprog_t *p);

/* How many times a program was started. */
long rprog_starts(const rprog_t *p);

/*
 * Scores one item: `request` is one JSON object (no newline). Returns RPROG_OK with *score
 * (finite), or another RPROG_* with the reason in why (NUL-terminated, naming the response line
 * where there was one) - the program has then been stopped and the next item starts it again.
 * A negative RL_E* only when the runner itself fails (out of memory, no directory, no fork).
 */
int rprog_score(rprog_t *p, const char *request, double *score, char *why, size_t why_len);

/*
 * The request line of an item: {"prompt", "completion"} and the members of `extra` (a JSON
 * object's text, e.g. {"reference": ..., "record": ...}; NULL or "" for none). Text that is not
 * valid UTF-8 has each bad byte replaced by U+FFFD. Returns a malloc'ed string or NULL
 * (RL_ENOMEM / RL_EFORMAT: extra is not an object).
 */
char *rprog_request(const char *prompt, const char *completion, size_t completion_len,
                    const char *extra);

/* A copy of s (n bytes) with each byte that is not part of valid UTF-8 replaced by U+FFFD
 * (malloc'ed, NUL-terminated; NULL: out of memory). */
char *rprog_utf8_clean(const char *s, size_t n);

#endif
