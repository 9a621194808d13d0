/*
 * test_cfg.c - the run configuration: YAML file, defaults, overrides, and errors that name the
 * file, line and key.
 */
#include "base/cfg.h"
#include "base/fs.h"
#include "test.h"

static const char *write_tmp(const char *name, const char *text) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    if (fs_write_atomic(path, text, strlen(text)) < 0) return NULL;
    return path;
}

static void test_yaml_and_overrides(void) {
    cfg_run_t c;
    cfg_defaults(&c);
    CHECK_EQ(c.heartbeat_ms, 1000);
    CHECK_EQ(c.liveness, 3);
    CHECK_STREQ(c.http_host, "127.0.0.1");
    const char *p = write_tmp("ok.yaml", "run_dir: runs/x\nseed: 9\nmaster:\n  heartbeat_ms: 250\n"
                                         "  exit_when_done: true\nstages: [generate, score]\n");
    CHECK_OK(cfg_load_yaml(&c, p));
    CHECK_STREQ(c.run_dir, "runs/x");
    CHECK_EQ(c.seed, 9);
    CHECK_EQ(c.heartbeat_ms, 250);
    CHECK_EQ(c.exit_when_done, 1);
    CHECK_EQ(c.n_stages, 2);
    if (c.n_stages == 2) CHECK_STREQ(c.stages[1], "score");
    CHECK_OK(cfg_set_kv(&c, "master.heartbeat_ms=100"));
    CHECK_EQ(c.heartbeat_ms, 100);
    json_t *j = cfg_to_json(&c);
    CHECK_EQ(json_integer_value(json_object_get(j, "master.heartbeat_ms")), 100);
    json_decref(j);
    cfg_free(&c);
}

static void test_errors_name_the_key(void) {
    cfg_run_t c;
    cfg_defaults(&c);
    CHECK_ERR(cfg_set_kv(&c, "master.nope=1"), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "master.nope") != NULL);
    CHECK_ERR(cfg_set_kv(&c, "master.liveness=0"), RL_EINVAL); /* out of range */
    CHECK(strstr(rl_errmsg(), "master.liveness") != NULL);
    CHECK_ERR(cfg_set_kv(&c, "novalue"), RL_EINVAL);
    const char *p = write_tmp("bad.yaml", "master:\n  heartbeat_ms: 100\n  bogus: 3\n");
    CHECK_ERR(cfg_load_yaml(&c, p), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "bad.yaml:3") != NULL && strstr(rl_errmsg(), "master.bogus") != NULL);
    p = write_tmp("syntax.yaml", "master: [unclosed\n");
    CHECK_ERR(cfg_load_yaml(&c, p), RL_EINVAL);
    p = write_tmp("type.yaml", "master:\n  lease_ms: soon\n");
    CHECK_ERR(cfg_load_yaml(&c, p), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "master.lease_ms") != NULL);
    CHECK_ERR(cfg_load_yaml(&c, "/nonexistent/x.yaml"), RL_ENOTFOUND);
    cfg_free(&c);
}

int main(void) {
    RUN(test_yaml_and_overrides);
    RUN(test_errors_name_the_key);
    int rc = TEST_REPORT();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", test_tmpdir());
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", test_tmpdir());
    return rc;
}
