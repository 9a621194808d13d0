/* test_err.c - error strings and the thread-local detail message. */
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

int main(void) {
    RUN(test_strings);
    RUN(test_detail_and_context);
    return TEST_REPORT();
}
