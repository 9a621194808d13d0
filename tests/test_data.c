/* test_data.c - token-id files: good input, and bad input named by file and line. */
#include "nn/data.h"
#include "test.h"

#include <unistd.h>

static char path[512];

static void write_file(const char *text) {
    snprintf(path, sizeof path, "%s/tokens.txt", test_tmpdir());
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_reads_ids(void) {
    write_file("1 2  3\n\n 40\t5\n6");
    int *ids = NULL;
    size_t n = 0;
    CHECK_OK(data_read_tokens(path, 41, &ids, &n));
    CHECK_EQ(n, 6);
    int want[6] = {1, 2, 3, 40, 5, 6};
    for (int i = 0; i < 6 && i < (int)n; i++) CHECK_EQ(ids[i], want[i]);
    free(ids);
    write_file("");
    ids = NULL;
    CHECK_OK(data_read_tokens(path, 10, &ids, &n));
    CHECK_EQ(n, 0);
    free(ids);
    remove(path);
}

static void test_errors_name_file_and_line(void) {
    int *ids = NULL;
    size_t n = 0;
    write_file("1 2\n3 x4 5\n");
    CHECK_ERR(data_read_tokens(path, 10, &ids, &n), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "tokens.txt:2:") != NULL);
    CHECK(strstr(rl_errmsg(), "'x4'") != NULL);
    write_file("1\n2\n3\n12\n");
    CHECK_ERR(data_read_tokens(path, 10, &ids, &n), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), ":4: token id 12 outside [0,10)") != NULL);
    write_file("1 -3\n");
    CHECK_ERR(data_read_tokens(path, 10, &ids, &n), RL_EFORMAT);
    write_file("1 2.5\n");
    CHECK_ERR(data_read_tokens(path, 10, &ids, &n), RL_EFORMAT);
    write_file("99999999999999999999\n");
    CHECK_ERR(data_read_tokens(path, 0, &ids, &n), RL_EFORMAT);
    remove(path);
    CHECK(data_read_tokens(path, 10, &ids, &n) < 0);
    CHECK(strstr(rl_errmsg(), "tokens.txt") != NULL);
    rmdir(test_tmpdir());
}

int main(void) {
    RUN(test_reads_ids);
    RUN(test_errors_name_file_and_line);
    return TEST_REPORT();
}
