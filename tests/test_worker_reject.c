/*
 * test_worker_reject.c - the classification of failed jobs (worker/worker_reject.c): each row
 * of its table, the handler's own verdict winning, and the root cause winning over the code a
 * caller wrapped it in.
 */
#include <errno.h>

#include "base/err.h"
#include "test.h"
#include "worker.h"

static void expect(int code, int root, int e, int verdict, int det, int env) {
    int d = -1, v = -1;
    worker_reject_classify(code, root, e, verdict, &d, &v);
    CHECK_EQ(d, det);
    CHECK_EQ(v, env);
}

static void test_table(void) {
    const int A = WORKER_VERDICT_AUTO;
    /* the job's input: a malformed model, a bad spec, a missing file, a prompt too long */
    expect(RL_EFORMAT, RL_EFORMAT, 0, A, 1, 0);
    expect(RL_EINVAL, RL_EINVAL, 0, A, 1, 0);
    expect(RL_ENOTFOUND, RL_ENOTFOUND, 0, A, 1, 0);
    expect(RL_EUNSUPPORTED, RL_EUNSUPPORTED, 0, A, 1, 0);
    expect(RL_ERANGE, RL_ERANGE, 0, A, 1, 0);
    expect(RL_EINVAL, 0, 0, A, 1, 0); /* no root recorded: the code decides */
    /* a write the system refused: the environment */
    expect(RL_EIO, RL_EIO, EACCES, A, 0, 1);
    expect(RL_EIO, RL_EIO, EROFS, A, 0, 1);
    expect(RL_EIO, RL_EIO, ENOSPC, A, 0, 1);
    expect(RL_EIO, RL_EIO, EDQUOT, A, 0, 1);
    expect(RL_EINVAL, RL_EIO, ENOSPC, A, 0, 1); /* wrapped by a caller */
    /* transient: I/O, memory, protocol, NaN, handed back */
    expect(RL_EIO, RL_EIO, 0, A, 0, 0);
    expect(RL_EIO, RL_EIO, EIO, A, 0, 0);
    expect(RL_ENOMEM, RL_ENOMEM, 0, A, 0, 0);
    expect(RL_EINVAL, RL_ENOMEM, 0, A, 0, 0); /* out of memory loading a model, wrapped */
    expect(RL_EPROTO, RL_EPROTO, 0, A, 0, 0);
    expect(RL_ENONFINITE, RL_ENONFINITE, 0, A, 0, 0);
    expect(0, RL_EFORMAT, EACCES, A, 0, 0);
}

static void test_verdict_wins(void) {
    /* "behind: at iteration 3" is RL_ERANGE, but transient */
    expect(RL_ERANGE, RL_ERANGE, 0, WORKER_VERDICT_TRANSIENT, 0, 0);
    expect(RL_EIO, RL_EIO, 0, WORKER_VERDICT_DETERMINISTIC, 1, 0);
    expect(RL_EIO, RL_EIO, 0, WORKER_VERDICT_ENVIRONMENT, 0, 1);
    expect(RL_EFORMAT, RL_EFORMAT, EACCES, WORKER_VERDICT_TRANSIENT, 0, 0);
}

int main(void) {
    RUN(test_table);
    RUN(test_verdict_wins);
    return TEST_REPORT();
}
