/*
 * test_secret.c - secret files: modes refused and accepted, token files read (whitespace
 * trimmed, too short, two tokens, not ASCII), tokens created private and random, and the
 * comparison of tokens.
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "net/secret.h"
#include "test.h"

static void put(const char *path, const char *text, mode_t mode) {
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    if (fd < 0) return;
    CHECK_EQ(write(fd, text, strlen(text)), (long long)strlen(text));
    close(fd);
    CHECK_EQ(chmod(path, mode), 0);
}

static const char *TOK40 = "abcdefghijklmnopqrstuvwxyz0123456789ABCD";

static void test_modes(void) {
    const char *p = test_path("mode");
    put(p, TOK40, 0600);
    CHECK_OK(secret_file_check(p));
    CHECK_EQ(chmod(p, 0400), 0);
    CHECK_OK(secret_file_check(p));
    static const mode_t open_modes[] = {0644, 0640, 0604, 0660, 0602, 0610};
    for (size_t i = 0; i < sizeof open_modes / sizeof open_modes[0]; i++) {
        CHECK_EQ(chmod(p, open_modes[i]), 0);
        CHECK_ERR(secret_file_check(p), RL_EINVAL);
        CHECK(strstr(rl_errmsg(), p) != NULL);
        CHECK(strstr(rl_errmsg(), "0600") != NULL);
    }
    char tok[SECRET_TOKEN_CAP] = "x";
    CHECK_ERR(secret_token_read(p, tok, sizeof tok), RL_EINVAL);
    CHECK_STREQ(tok, "");
    CHECK(strstr(rl_errmsg(), "0610") != NULL);
    CHECK_ERR(secret_file_check(test_path("missing")), RL_ENOTFOUND);
    CHECK(strstr(rl_errmsg(), "missing") != NULL);
    CHECK_ERR(secret_file_check(test_tmpdir()), RL_EINVAL); /* a directory */
}

static void test_read(void) {
    char tok[SECRET_TOKEN_CAP], text[200];
    const char *p = test_path("tok");
    snprintf(text, sizeof text, "  \n%s \r\n\n", TOK40);
    put(p, text, 0600);
    CHECK_OK(secret_token_read(p, tok, sizeof tok));
    CHECK_STREQ(tok, TOK40);
    put(p, "0123456789012345678901234567890", 0600); /* 31 characters */
    CHECK_ERR(secret_token_read(p, tok, sizeof tok), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "31 characters") != NULL && strstr(rl_errmsg(), p) != NULL);
    CHECK(strstr(rl_errmsg(), "0123456789") == NULL); /* never shows the token */
    put(p, "01234567890123456789012345678901", 0600); /* 32: enough */
    CHECK_OK(secret_token_read(p, tok, sizeof tok));
    snprintf(text, sizeof text, "%s\n%s\n", TOK40, TOK40); /* two tokens */
    put(p, text, 0600);
    CHECK_ERR(secret_token_read(p, tok, sizeof tok), RL_EFORMAT);
    snprintf(text, sizeof text, "%s\xc3\xa9", TOK40); /* not ASCII */
    put(p, text, 0600);
    CHECK_ERR(secret_token_read(p, tok, sizeof tok), RL_EFORMAT);
    put(p, TOK40, 0600);
    CHECK_ERR(secret_token_read(p, tok, 40), RL_EFORMAT); /* no room for 40 and the NUL */
    CHECK_OK(secret_token_read(p, tok, 41));
    put(p, "", 0600);
    CHECK_ERR(secret_token_read(p, tok, sizeof tok), RL_EFORMAT);
    static char big[5000]; /* not a token file at all */
    memset(big, 'a', sizeof big - 1);
    put(p, big, 0600);
    CHECK_ERR(secret_token_read(p, tok, sizeof tok), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "larger than") != NULL);
}

static void test_create(void) {
    char a[SECRET_TOKEN_CAP], b[SECRET_TOKEN_CAP], back[SECRET_TOKEN_CAP];
    const char *p = test_path("created");
    put(p, "old", 0644); /* replaced, and private afterwards */
    CHECK_OK(secret_token_create(p, a, sizeof a));
    CHECK_EQ(strlen(a), 64);
    CHECK_EQ(strspn(a, "0123456789abcdef"), 64);
    struct stat st;
    CHECK_EQ(stat(p, &st), 0);
    CHECK_EQ(st.st_mode & 07777, 0600);
    CHECK_OK(secret_token_read(p, back, sizeof back));
    CHECK_STREQ(back, a);
    CHECK_OK(secret_token_create(p, b, sizeof b));
    CHECK(strcmp(a, b) != 0);
    CHECK_ERR(secret_token_create(p, b, 64), RL_EINVAL);
    CHECK_ERR(secret_token_create(test_path("no-such-dir/tok"), b, sizeof b), RL_ENOTFOUND);
}

static void test_equal(void) {
    CHECK(secret_token_equal(TOK40, strlen(TOK40), TOK40));
    CHECK(!secret_token_equal(TOK40, strlen(TOK40) - 1, TOK40)); /* a prefix */
    char other[64];
    snprintf(other, sizeof other, "%s", TOK40);
    other[39] = 'E';
    CHECK(!secret_token_equal(other, strlen(other), TOK40));
    snprintf(other, sizeof other, "%sX", TOK40); /* longer */
    CHECK(!secret_token_equal(other, strlen(other), TOK40));
    CHECK(!secret_token_equal(NULL, 0, TOK40));
    CHECK(!secret_token_equal("", 0, TOK40));
    /* only len bytes count: the header value is not NUL-terminated where the token ends */
    CHECK(secret_token_equal(other, strlen(TOK40), TOK40));
}

int main(void) {
    RUN(test_modes);
    RUN(test_read);
    RUN(test_create);
    RUN(test_equal);
    return TEST_REPORT();
}
