/*
 * test_fs.c - whole-file reads, atomic writes (success, overwrite, abort, write failure) and
 * mkdir -p.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fs.h"
#include "test.h"

/* Number of entries in `dir` whose name contains ".tmp." (leftover temporary files). */
static int count_tmp_files(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d) return -1;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void test_read_missing(void) {
    char *data = (char *)1;
    size_t len = 99;
    const char *p = test_path("does-not-exist");
    CHECK_ERR(fs_read_all(p, &data, &len), RL_ENOTFOUND);
    CHECK(strstr(rl_errmsg(), p) != NULL);
    CHECK(data == NULL);
    CHECK_EQ(len, 0);
}

static void test_read_directory(void) {
    char *data = NULL;
    size_t len = 0;
    CHECK_ERR(fs_read_all(test_tmpdir(), &data, &len), RL_EIO);
    CHECK(strstr(rl_errmsg(), test_tmpdir()) != NULL);
}

/* Devices and pipes could stream forever; files over the cap are refused unread. */
static void test_read_limits(void) {
    char *data = NULL;
    size_t len = 0;
    CHECK_ERR(fs_read_all("/dev/zero", &data, &len), RL_EIO);
    CHECK(strstr(rl_errmsg(), "/dev/zero: not a regular file") != NULL);
    const char *p = test_path("big.txt");
    CHECK_OK(fs_write_atomic(p, "0123456789", 10));
    CHECK_ERR(fs_read_file(p, 9, &data, &len), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "10 bytes, more than the 9 allowed") != NULL);
    CHECK(data == NULL);
    CHECK_OK(fs_read_file(p, 10, &data, &len));
    CHECK_EQ(len, 10);
    free(data);
    unlink(p);
}

static void test_write_read_roundtrip(void) {
    const char *p = test_path("hello.txt");
    const char msg[] = "hello, world";
    char *data = NULL;
    size_t len = 0;
    struct stat sb;
    CHECK_OK(fs_write_atomic(p, msg, strlen(msg)));
    CHECK_OK(fs_read_all(p, &data, &len));
    CHECK_EQ(len, strlen(msg));
    CHECK(data && memcmp(data, msg, len) == 0);
    CHECK(data && data[len] == '\0');
    free(data);
    /* The file gets the usual permissions (not mkstemp's 0600): readable by the group too. */
    mode_t um = umask(022);
    umask(um);
    CHECK_EQ(stat(p, &sb), 0);
    CHECK_EQ(sb.st_mode & 0777, 0666 & ~um);
    CHECK_EQ(count_tmp_files(test_tmpdir()), 0);
    unlink(p);
}

static void test_empty_file(void) {
    const char *p = test_path("empty");
    char *data = NULL;
    size_t len = 7;
    CHECK_OK(fs_write_atomic(p, NULL, 0));
    CHECK_OK(fs_read_all(p, &data, &len));
    CHECK_EQ(len, 0);
    CHECK(data && data[0] == '\0');
    free(data);
    unlink(p);
}

static void test_overwrite_and_stream(void) {
    const char *p = test_path("big.bin");
    size_t n = 3 * 1024 * 1024 + 17, i, len = 0;
    unsigned char *buf = malloc(n);
    char *data = NULL;
    fs_atomic_t w;
    CHECK(buf != NULL);
    if (!buf) return;
    for (i = 0; i < n; i++) buf[i] = (unsigned char)(i * 2654435761u >> 13);
    CHECK_OK(fs_write_atomic(p, "old", 3));
    CHECK_OK(fs_atomic_open(&w, p));
    /* Streamed in uneven pieces. */
    CHECK_OK(fs_atomic_write(&w, buf, 1));
    CHECK_OK(fs_atomic_write(&w, buf + 1, 1000));
    CHECK_OK(fs_atomic_write(&w, buf + 1001, n - 1001));
    /* Until commit the old file is intact and the temporary exists. */
    CHECK_OK(fs_read_all(p, &data, &len));
    CHECK_EQ(len, 3);
    free(data);
    CHECK_EQ(count_tmp_files(test_tmpdir()), 1);
    CHECK_OK(fs_atomic_commit(&w));
    CHECK(w.tmp == NULL && w.path == NULL && w.fd == -1);
    CHECK_OK(fs_read_all(p, &data, &len));
    CHECK_EQ(len, n);
    CHECK(data && memcmp(data, buf, n) == 0);
    free(data);
    free(buf);
    CHECK_EQ(count_tmp_files(test_tmpdir()), 0);
    unlink(p);
}

static void test_abort_keeps_old(void) {
    const char *p = test_path("keep.txt");
    char *data = NULL;
    size_t len = 0;
    fs_atomic_t w;
    CHECK_OK(fs_write_atomic(p, "original", 8));
    CHECK_OK(fs_atomic_open(&w, p));
    CHECK_OK(fs_atomic_write(&w, "replacement", 11));
    fs_atomic_abort(&w);
    fs_atomic_abort(&w); /* safe to repeat */
    CHECK_EQ(count_tmp_files(test_tmpdir()), 0);
    CHECK_OK(fs_read_all(p, &data, &len));
    CHECK_EQ(len, 8);
    CHECK(data && memcmp(data, "original", 8) == 0);
    free(data);
    /* Commit after abort is an error, not a crash. */
    CHECK_ERR(fs_atomic_commit(&w), RL_EINVAL);
    unlink(p);
}

static void test_abort_zeroed_struct(void) {
    /* A zeroed struct has fd 0; abort must not close stdin. */
    fs_atomic_t w;
    int before = fcntl(0, F_GETFD);
    memset(&w, 0, sizeof w);
    fs_atomic_abort(&w);
    CHECK_EQ(fcntl(0, F_GETFD), before);
    CHECK_ERR(fs_atomic_write(&w, "x", 1), RL_EINVAL);
}

static void test_write_failure_poisons(void) {
    /* Swap the temporary's fd for /dev/full: write fails with ENOSPC. */
    const char *p = test_path("full.bin");
    char *data = NULL;
    size_t len = 0;
    fs_atomic_t w;
    int full = open("/dev/full", O_WRONLY);
    if (full < 0) {
        fprintf(stderr, "  (no /dev/full; skipped)\n");
        CHECK_OK(0);
        return;
    }
    CHECK_OK(fs_write_atomic(p, "old", 3));
    CHECK_OK(fs_atomic_open(&w, p));
    close(w.fd);
    w.fd = full;
    CHECK_ERR(fs_atomic_write(&w, "abcdef", 6), RL_EIO);
    CHECK(strstr(rl_errmsg(), p) != NULL);
    /* The torn temporary is gone already, and commit refuses. */
    CHECK_EQ(count_tmp_files(test_tmpdir()), 0);
    CHECK_ERR(fs_atomic_write(&w, "x", 1), RL_EIO);
    CHECK_ERR(fs_atomic_commit(&w), RL_EIO);
    CHECK(strstr(rl_errmsg(), "write") != NULL);
    CHECK(w.tmp == NULL && w.path == NULL);
    CHECK_OK(fs_read_all(p, &data, &len));
    CHECK_EQ(len, 3);
    free(data);
    unlink(p);
}

static void test_write_into_missing_dir(void) {
    const char *p = test_path("no/such/dir/file");
    CHECK(fs_write_atomic(p, "x", 1) < 0);
    CHECK(strstr(rl_errmsg(), p) != NULL);
    CHECK_ERR(fs_write_atomic("", "x", 1), RL_EINVAL);
    CHECK_ERR(fs_write_atomic(test_path("dir/"), "x", 1), RL_EINVAL);
}

static void test_mkdir_p(void) {
    const char *d = test_path("a/b//c/");
    const char *f = test_path("a/b/c/file");
    struct stat sb;
    CHECK_OK(fs_mkdir_p(d));
    CHECK(stat(test_path("a/b/c"), &sb) == 0 && S_ISDIR(sb.st_mode));
    CHECK_OK(fs_mkdir_p(d)); /* existing is fine */
    CHECK_OK(fs_mkdir_p(test_path("a")));
    /* A file in the way is an error naming the path. */
    CHECK_OK(fs_write_atomic(f, "x", 1));
    CHECK_ERR(fs_mkdir_p(test_path("a/b/c/file/d")), RL_EIO);
    CHECK(strstr(rl_errmsg(), "not a directory") != NULL);
    CHECK_ERR(fs_mkdir_p(""), RL_EINVAL);
    unlink(f);
    rmdir(test_path("a/b/c"));
    rmdir(test_path("a/b"));
    rmdir(test_path("a"));
}

static void test_relative_path(void) {
    /* A bare file name commits in the current directory (fsync of "."). */
    char cwd[1024];
    char *data = NULL;
    size_t len = 0;
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    CHECK_EQ(chdir(test_tmpdir()), 0);
    CHECK_OK(fs_write_atomic("rel.txt", "rel", 3));
    CHECK_OK(fs_read_all("rel.txt", &data, &len));
    CHECK_EQ(len, 3);
    free(data);
    unlink("rel.txt");
    CHECK_EQ(chdir(cwd), 0);
}

/* rm -r of a tree with files, subdirectories and a link to outside, which must survive */
static void test_remove_tree(void) {
    char root[] = "/tmp/test_fs_tree_XXXXXX", p[512], keep[512];
    CHECK(mkdtemp(root) != NULL);
    snprintf(p, sizeof p, "%s/a/b/c", root);
    CHECK_OK(fs_mkdir_p(p));
    snprintf(p, sizeof p, "%s/a/b/c/f", root);
    CHECK_OK(fs_write_atomic(p, "x", 1));
    snprintf(p, sizeof p, "%s/a/g", root);
    CHECK_OK(fs_write_atomic(p, "y", 1));
    snprintf(keep, sizeof keep, "%s/keep", root);
    CHECK_OK(fs_write_atomic(keep, "z", 1));
    snprintf(p, sizeof p, "%s/a/link", root);
    CHECK(symlink(keep, p) == 0);
    snprintf(p, sizeof p, "%s/a", root);
    CHECK_OK(fs_remove_tree(p));
    CHECK(access(p, F_OK) != 0);
    CHECK(access(keep, F_OK) == 0); /* the link went, not its target */
    CHECK_OK(fs_remove_tree(p));    /* already gone: fine */
    CHECK_OK(fs_remove_tree(root));
    CHECK(access(root, F_OK) != 0);
}

int main(void) {
    RUN(test_remove_tree);
    RUN(test_read_missing);
    RUN(test_read_directory);
    RUN(test_read_limits);
    RUN(test_write_read_roundtrip);
    RUN(test_empty_file);
    RUN(test_overwrite_and_stream);
    RUN(test_abort_keeps_old);
    RUN(test_abort_zeroed_struct);
    RUN(test_write_failure_poisons);
    RUN(test_write_into_missing_dir);
    RUN(test_mkdir_p);
    RUN(test_relative_path);
    rmdir(test_tmpdir());
    return TEST_REPORT();
}
