/*
 * test_jsonl.c - JSONL reading (file:line errors, blank lines) and atomic writing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fs.h"
#include "base/jsonl.h"
#include "test.h"

static int sum_ids(void *ctx, json_t *o, const char *where) {
    long long id;
    int rc = jsonl_get_int(o, "id", where, 0, 100, &id);
    if (rc < 0) return rc;
    *(long long *)ctx += id;
    return 0;
}

static void test_parse(void) {
    const char *ok = "{\"id\": 1}\n\n  \r\n{\"id\": 2}\n{\"id\":3}";
    long long sum = 0;
    CHECK_EQ(jsonl_parse(ok, strlen(ok), "x.jsonl", sum_ids, &sum), 3);
    CHECK_EQ(sum, 6);
    const char *bad = "{\"id\": 1}\n{\"id\": 2,\n";
    sum = 0;
    CHECK_EQ(jsonl_parse(bad, strlen(bad), "x.jsonl", sum_ids, &sum), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "x.jsonl:2:") != NULL);
    const char *arr = "{\"id\": 1}\n[1]\n";
    CHECK_EQ(jsonl_parse(arr, strlen(arr), "y", sum_ids, &sum), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "y:2: a JSON object") != NULL);
    const char *range = "{\"id\": 1}\n{}\n{\"id\": 101}\n";
    CHECK_EQ(jsonl_parse(range, strlen(range), "z", sum_ids, &sum), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "z:2: id: missing") != NULL);
    const char *dup = "{\"id\": 1, \"id\": 2}\n";
    CHECK_EQ(jsonl_parse(dup, strlen(dup), "d", sum_ids, &sum), RL_EFORMAT);
}

static void test_write(void) {
    char dir[] = "/tmp/test_jsonl_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/out.jsonl", dir);
    jsonl_writer_t w;
    CHECK_OK(jsonl_open(&w, path));
    CHECK_OK(jsonl_write(&w, json_pack("{s:i,s:s}", "id", 7, "t", "caf\xc3\xa9")));
    CHECK_OK(jsonl_write(&w, json_pack("{s:i}", "id", 8)));
    CHECK_EQ(access(path, F_OK), -1); /* nothing visible before the commit */
    CHECK_EQ(jsonl_write(&w, json_real(0.0 / 0.0)), RL_EINVAL);
    CHECK_OK(jsonl_commit(&w));
    long long sum = 0;
    CHECK_EQ(jsonl_read(path, sum_ids, &sum), 2);
    CHECK_EQ(sum, 15);
    jsonl_writer_t a;
    CHECK_OK(jsonl_open(&a, path));
    CHECK_OK(jsonl_write(&a, json_pack("{s:i}", "id", 1)));
    jsonl_abort(&a);
    sum = 0;
    CHECK_EQ(jsonl_read(path, sum_ids, &sum), 2); /* the aborted write left the old file */
    unlink(path);
    rmdir(dir);
}

int main(void) {
    RUN(test_parse);
    RUN(test_write);
    return TEST_REPORT();
}
