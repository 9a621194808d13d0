/*
 * worker_reject.c - how a failed job is reported to the master: deterministic (its input is at
 * fault, so the master fails it at once), environment (the master holds the run until an
 * operator or time cures it) or transient (retried). A pure function of the failure, so that the
 * table below is tested on its own (tests/test_worker_reject.c).
 *
 *   root cause                                          deterministic  environment
 *   handler verdict TRANSIENT / DETERMINISTIC / ENVIRONMENT   as it says
 *   errno EACCES, EPERM, EROFS, ENOSPC, EDQUOT (a write)      0              1
 *   RL_EFORMAT, RL_EINVAL, RL_ENOTFOUND, RL_EUNSUPPORTED,
 *   RL_ERANGE                                                 1              0
 *   RL_ENOMEM, RL_EIO, RL_ENONFINITE, RL_EPROTO, handed back  0              0
 */
#include "base/err.h"
#include "worker.h"

void worker_reject_classify(int code, int root, int sys_errno, int verdict, int *deterministic,
                            int *environment) {
    *deterministic = *environment = 0;
    if (code >= 0) return; /* handed back: another worker runs it */
    switch (verdict) {
    case WORKER_VERDICT_TRANSIENT:
        return;
    case WORKER_VERDICT_DETERMINISTIC:
        *deterministic = 1;
        return;
    case WORKER_VERDICT_ENVIRONMENT:
        *environment = 1;
        return;
    }
    if (rl_errno_environment(sys_errno)) {
        *environment = 1;
        return;
    }
    /* the root cause decides: an out-of-memory while loading a model that a caller wrapped
     * as RL_EINVAL ("train: ...") is still an out-of-memory */
    switch (root < 0 ? root : code) {
    case RL_EFORMAT:
    case RL_EINVAL:
    case RL_ENOTFOUND:
    case RL_EUNSUPPORTED:
    case RL_ERANGE:
        *deterministic = 1;
        break;
    }
}
