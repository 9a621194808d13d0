/* test_err.c - error strings and the thread-local detail message. */
#include <errno.h>
#include "base/err.h"
#include "test.h"

static void test_strings(void) {
    CHECK_STREQ(rl_strerror(RL_OK), "success");
    CHECK_STREQ(rl_strerror(RL_EFORMAT), "malformed input");
    CHECK_STREQ(rl_strerror(RL_ENONFINITE), "NaN or Inf encountered");
    CHECK_STREQ(rl_strerror(-12345), "unknown error");
}

static void test_detail_and_context(void) {
    CHECK_EQ(rl_fail(RL_EIO, "%s: cannot read", "x.json"), RL_EIO);
    CHECK_STREQ(rl_errmsg(), "x.json: cannot read");
    CHECK_EQ(rl_fail_ctx(RL_EIO, "loading %s", "model"), RL_EIO);
    CHECK_STREQ(rl_errmsg(), "loading model: x.json: cannot read");
    rl_err_clear();
    CHECK_EQ(rl_fail_ctx(RL_ENOMEM, "step %d", 3), RL_ENOMEM);
    CHECK_STREQ(rl_errmsg(), "step 3: out of memory");
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    rl_fail(RL_EINVAL, "%s", big);
    rl_fail_ctx(RL_EINVAL, "ctx");
    CHECK(strncmp(rl_errmsg(), "ctx: aaa", 8) == 0);
    CHECK(strlen(rl_errmsg()) < 1024);
}

/* The root cause's code and errno survive added context and are reset by the next failure. */
static void test_root_and_errno(void) {
    rl_err_clear();
    CHECK_EQ(rl_errcode(), 0);
    CHECK_EQ(rl_errno(), 0);
    CHECK_EQ(rl_fail_errno(RL_EIO, EROFS, "out/x: write: read-only"), RL_EIO);
    CHECK_EQ(rl_fail_ctx(RL_EINVAL, "checkpoint"), RL_EINVAL);
    CHECK_EQ(rl_errcode(), RL_EIO);
    CHECK_EQ(rl_errno(), EROFS);
    CHECK_STREQ(rl_errmsg(), "checkpoint: out/x: write: read-only");
    CHECK(rl_errno_environment(rl_errno()));
    CHECK_EQ(rl_fail(RL_EFORMAT, "model.safetensors: truncated"), RL_EFORMAT);
    CHECK_EQ(rl_errcode(), RL_EFORMAT);
    CHECK_EQ(rl_errno(), 0);
    CHECK(rl_errno_environment(EACCES) && rl_errno_environment(ENOSPC) &&
          rl_errno_environment(EDQUOT) && rl_errno_environment(EPERM));
    CHECK(!rl_errno_environment(0) && !rl_errno_environment(EIO) && !rl_errno_environment(ENOENT));
    rl_err_clear();
    CHECK_EQ(rl_errcode(), 0);
}

int main(void) {
    RUN(test_strings);
    RUN(test_detail_and_context);
    RUN(test_root_and_errno);
    return TEST_REPORT();
}
