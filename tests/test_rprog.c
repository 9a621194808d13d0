/*
 * test_rprog.c - the reward-program runner (align/rprog.h) with toy shell programs: scores from
 * a program that reads its requests; a program that sleeps past the time limit, one that exits
 * 1, one killed by SIGSEGV, one that writes what is not a response - each a per-item error
 * naming what was wrong, after which the next item is scored by a fresh program; the sandbox:
 * a clean environment, its own empty directory, nothing written outside it, no network
 * (under bubblewrap, and the fallback's network namespace as root). The requests' UTF-8
 * cleaning and reference fields.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "align/rprog.h"
#include "align/task.h"
#include "test.h"

static char tmp[4096], cwd[1024]; /* our directory; the test's own (not under /tmp) */

static rprog_t *runner(const char *cmd, int timeout_ms, int no_bwrap) {
    rprog_opts_t o = {.cmd = cmd, .timeout_ms = timeout_ms, .tmp_root = tmp, .no_bwrap = no_bwrap};
    return rprog_new(&o);
}

/* One item; returns the status, the score in *s, the reason in why. */
static int item(rprog_t *p, const char *completion, double *s, char *why) {
    char *req = rprog_request("p", completion, strlen(completion), "{\"reference\": 7}");
    int rc = rprog_score(p, req, s, why, 512);
    free(req);
    return rc;
}

/* the score is the request line's length in bytes, plus a half */
#define LEN_PROG "while read -r l; do echo \"{\\\"score\\\": ${#l}.5}\"; done"

static void test_scores(void) {
    const char *cmd = LEN_PROG;
    char why[512];
    rprog_t *p = runner(cmd, 5000, 0);
    CHECK(p);
    double s;
    size_t base = strlen("{\"prompt\":\"p\",\"completion\":\"\",\"reference\":7}");
    CHECK_EQ(item(p, "abc", &s, why), RPROG_OK);
    CHECK_NEAR(s, base + 3.5, 0);
    CHECK_EQ(item(p, "abcdefg", &s, why), RPROG_OK);
    CHECK_NEAR(s, base + 7.5, 0);
    CHECK_EQ(rprog_starts(p), 1); /* one long-lived process for both */
    CHECK(rprog_same(p, cmd, 5000));
    rprog_t *one = runner("read -r l; echo '{\"score\": 2}'", 5000, 0); /* one-shot */
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(item(one, "x", &s, why), RPROG_OK);
        CHECK_NEAR(s, 2, 0);
        usleep(100000); /* it has exited before the next item: no error, a new process */
    }
    CHECK_EQ(rprog_starts(one), 3);
    rprog_destroy(&one);
    CHECK(!rprog_same(p, cmd, 4000));
    rprog_destroy(&p);
    CHECK(p == NULL);
    rprog_destroy(&p);
}

/* item 2 sleeps: a timeout within the limit, then item 3 scores with a new process */
static void test_timeout(void) {
    char why[512];
    rprog_t *p = runner("n=0; while read -r l; do n=$((n+1)); case $l in *slow*) sleep 30;; esac; "
                        "echo \"{\\\"score\\\": $n}\"; done",
                        300, 0);
    double s;
    CHECK_EQ(item(p, "fast", &s, why), RPROG_OK);
    CHECK_NEAR(s, 1, 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK_EQ(item(p, "slow", &s, why), RPROG_TIMEOUT);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    CHECK(ms >= 290 && ms < 3000);
    CHECK(isnan(s));
    CHECK(strstr(why, "time limit of 300 ms"));
    CHECK_EQ(item(p, "fast", &s, why), RPROG_OK);
    CHECK_NEAR(s, 1, 0); /* a fresh process: its count starts again */
    CHECK_EQ(rprog_starts(p), 2);
    rprog_destroy(&p);
}

static void test_crashes(void) {
    char why[512];
    double s;
    rprog_t *p = runner("while read -r l; do case $l in *die*) echo dying >&2; exit 1;; "
                        "*segv*) kill -SEGV $$;; esac; echo '{\"score\": 1}'; done",
                        5000, 0);
    CHECK_EQ(item(p, "ok", &s, why), RPROG_OK);
    CHECK_EQ(item(p, "die", &s, why), RPROG_CRASH);
    CHECK(strstr(why, "exited with status 1"));
    CHECK(strstr(why, "dying")); /* its stderr's end */
    CHECK_EQ(item(p, "ok", &s, why), RPROG_OK);
    CHECK_NEAR(s, 1, 0);
    CHECK_EQ(item(p, "segv", &s, why), RPROG_CRASH);
    CHECK(strstr(why, "signal 11"));
    CHECK_EQ(item(p, "ok", &s, why), RPROG_OK);
    CHECK_EQ(rprog_starts(p), 3);
    rprog_destroy(&p);
    /* one that closes its stdout and stays: killed, and said so (in the fallback sandbox: under
     * bubblewrap, bwrap itself holds the pipe open, and the item is a timeout) */
    p = runner("read -r l; exec >&-; sleep 30", 5000, 1);
    CHECK_EQ(item(p, "ok", &s, why), RPROG_CRASH);
    CHECK(strstr(why, "closed its stdin or stdout"));
    rprog_destroy(&p);
    /* a program that does not start at all: every item says so, nothing hangs */
    p = runner("/nonexistent/program", 5000, 0);
    CHECK_EQ(item(p, "ok", &s, why), RPROG_CRASH);
    CHECK(strstr(why, "status 127"));
    rprog_destroy(&p);
}

static void test_malformed(void) {
    char why[512];
    double s;
    rprog_t *p = runner("while read -r l; do case $l in *nojson*) echo 'not json';; "
                        "*noscore*) echo '{\"details\": 1}';; *nan*) echo '{\"score\": \"x\"}';; "
                        "*err*) echo '{\"error\": \"no answer found\"}';; "
                        "*two*) printf '{\"score\": 1}\\n{\"score\": 2}\\n';; "
                        "*) echo '{\"score\": 0.25, \"details\": {\"why\": [1, 2]}}';; esac; done",
                        5000, 0);
    CHECK_EQ(item(p, "nojson", &s, why), RPROG_MALFORMED);
    CHECK(strstr(why, "'not json'") && strstr(why, "not JSON"));
    CHECK_EQ(item(p, "noscore", &s, why), RPROG_MALFORMED);
    CHECK(strstr(why, "no number \"score\""));
    CHECK_EQ(item(p, "nan", &s, why), RPROG_MALFORMED);
    CHECK_EQ(item(p, "err", &s, why), RPROG_MALFORMED);
    CHECK(strstr(why, "no answer found"));
    CHECK_EQ(item(p, "fine", &s, why), RPROG_OK);
    CHECK_NEAR(s, 0.25, 0);
    CHECK_EQ(item(p, "two", &s, why), RPROG_MALFORMED);
    CHECK(strstr(why, "more output"));
    CHECK_EQ(item(p, "fine", &s, why), RPROG_OK);
    rprog_destroy(&p);
}

/* The program reports what it sees as its score's details... as bits of its score: 1 its cwd
 * is empty and its own, 2 no variable of ours reached it, 4 it could not write in the test's
 * working directory, 8 it could write inside, 16 only a loopback interface. */
#define SANDBOX_PROG                                                                               \
    "read -r l; b=0; [ -z \"$(ls -A .)\" ] && [ \"$(pwd)\" = \"$HOME\" ] && b=1; "                 \
    "[ -z \"${RPROG_TEST_SECRET:-}\" ] && [ \"$(env | wc -l)\" -le 6 ] && b=$((b+2)); "            \
    "touch %s/outside 2>/dev/null || b=$((b+4)); touch inside && b=$((b+8)); "                     \
    "[ \"$(tail -n +3 /proc/net/dev | wc -l)\" -eq 1 ] && b=$((b+16)); echo \"{\\\"score\\\": "    \
    "$b}\""

static void test_sandbox(void) {
    char cmd[2048], why[512], out[1100];
    snprintf(cmd, sizeof cmd, SANDBOX_PROG, cwd);
    snprintf(out, sizeof out, "%s/outside", cwd);
    setenv("RPROG_TEST_SECRET", "hunter2", 1);
    int have_bwrap = access("/usr/bin/bwrap", X_OK) == 0;
    if (!have_bwrap)
        fprintf(stderr, "test_sandbox: no /usr/bin/bwrap (deploy/bootstrap.sh installs "
                        "bubblewrap): its checks skipped\n");
    for (int fb = have_bwrap ? 0 : 1; fb < 2; fb++) {
        rprog_t *p = runner(cmd, 10000, fb);
        CHECK_STREQ(rprog_sandbox(p), fb ? "rlimits" : "bwrap");
        double s;
        CHECK_EQ(item(p, "x", &s, why), RPROG_OK);
        int b = (int)s;
        fprintf(stderr, "sandbox %s: bits %d (%s)\n", rprog_sandbox(p), b, why);
        CHECK(b & 1);
        CHECK(b & 2);
        CHECK(b & 8);
        if (!fb) { /* bubblewrap: read-only outside its directory, no network */
            CHECK(b & 4);
            CHECK(access(out, F_OK) != 0);
            CHECK(b & 16);
        } else if (geteuid() == 0) {
            CHECK(b & 16); /* the fallback's own network namespace */
        }
        unlink(out);
        rprog_destroy(&p);
    }
    unsetenv("RPROG_TEST_SECRET");
    /* a file larger than the limit kills the program (SIGXFSZ): a per-item error */
    rprog_opts_t o = {.cmd = "read -r l; head -c 3000000 /dev/zero >big; echo '{\"score\": 1}'",
                      .timeout_ms = 10000,
                      .tmp_root = tmp,
                      .fsize_mb = 1};
    rprog_t *p = rprog_new(&o);
    double s;
    CHECK_EQ(item(p, "x", &s, why), RPROG_OK); /* head fails; the shell goes on */
    rprog_destroy(&p);
    o.cmd = "read -r l; exec head -c 3000000 /dev/zero >big";
    p = rprog_new(&o);
    CHECK_EQ(item(p, "x", &s, why), RPROG_CRASH);
    CHECK(strstr(why, "signal 25") && strstr(why, "ize limit")); /* "File size limit exceeded" */
    rprog_destroy(&p);
}

static void test_request(void) {
    char *r =
        rprog_request("What is 1 plus 2?",
                      "ab\xff"
                      "c",
                      4, "{\"reference\": \"3\", \"prompt\": \"no\", \"record\": {\"a\": 1}}");
    CHECK_STREQ(r, "{\"prompt\":\"What is 1 plus 2?\",\"completion\":\"ab\xEF\xBF\xBD"
                   "c\",\"reference\":\"3\",\"record\":{\"a\":1}}");
    free(r);
    r = rprog_request("p", "c", 1, "[1]");
    CHECK(r == NULL);
    char *c = rprog_utf8_clean("\xC3\xA9\xC0\x80\xE2\x82", 6);
    CHECK_STREQ(c, "\xC3\xA9\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    free(c);
}

/* `rlhf gold-judge` (RLHF_BIN, set by CMake) through the runner scores every demonstration of
 * every style exactly as the in-process gold judge does: the same doubles, and not one value. */
static void test_gold_judge(void) {
    const char *bin = getenv("RLHF_BIN");
    if (!bin || access(bin, X_OK) != 0) {
        fprintf(stderr, "test_gold_judge: RLHF_BIN not set: skipped\n");
        return;
    }
    char cmd[4200], why[512], prompt[512], completion[512];
    snprintf(cmd, sizeof cmd, "%s gold-judge", bin);
    rprog_t *p = runner(cmd, 10000, 0);
    task_mix_t mix;
    task_mix_even(&mix, 0.8f);
    int same = 0, n = 300;
    double lo = 1, hi = 0;
    for (int i = 0; i < n; i++) {
        CHECK_EQ(task_sft_at(&mix, 11, n, i, NULL, prompt, sizeof prompt, completion,
                             sizeof completion, NULL),
                 0);
        double want = task_gold_text(prompt, completion), got;
        char *req = rprog_request(prompt, completion, strlen(completion), NULL);
        CHECK_EQ(rprog_score(p, req, &got, why, sizeof why), RPROG_OK);
        free(req);
        same += got == want;
        if (got != want) fprintf(stderr, "item %d: %.17g != %.17g\n", i, got, want);
        lo = want < lo ? want : lo, hi = want > hi ? want : hi;
    }
    CHECK_EQ(same, n);
    CHECK(hi - lo > 0.5); /* the demonstrations' styles score far apart */
    CHECK_EQ(rprog_starts(p), 1);
    rprog_destroy(&p);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const char *t = getenv("TMPDIR");
    snprintf(tmp, sizeof tmp, "%s/rprog-test-XXXXXX", t && t[0] ? t : "/tmp");
    if (!mkdtemp(tmp) || !getcwd(cwd, sizeof cwd)) return 1;
    RUN(test_request);
    RUN(test_scores);
    RUN(test_timeout);
    RUN(test_crashes);
    RUN(test_malformed);
    RUN(test_sandbox);
    RUN(test_gold_judge);
    rmdir(tmp);
    return TEST_REPORT();
}
