/*
 * secret.c - secret files and token comparison (see secret.h), on libsodium.
 */
#include "net/secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "base/err.h"
#include "base/fs.h"

/* a token file is a line, not a document: anything larger is not one */
#define TOKEN_FILE_MAX 4096

/* The mode check of secret_file_check on an open file (what is checked is what is read). */
static int check_fd(int fd, const char *path) {
    struct stat st;
    if (fstat(fd, &st) < 0) return rl_fail_errno(RL_EIO, errno, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return rl_fail(RL_EINVAL, "%s: not a regular file", path);
    if (st.st_mode & 077)
        return rl_fail(RL_EINVAL,
                       "%s: mode %04o is open to others than its owner; it must be 0600 or "
                       "stricter (chmod 600 %s)",
                       path, (unsigned)(st.st_mode & 07777), path);
    return 0;
}

static int open_checked(const char *path, int *fd) {
    *fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block us */
    if (*fd < 0)
        return rl_fail_errno(errno == ENOENT ? RL_ENOTFOUND : RL_EIO, errno, "%s: %s", path,
                             strerror(errno));
    int rc = check_fd(*fd, path);
    if (rc < 0) close(*fd), *fd = -1;
    return rc;
}

int secret_file_check(const char *path) {
    int fd, rc = open_checked(path, &fd);
    if (rc == 0) close(fd);
    return rc;
}

int secret_token_read(const char *path, char *tok, size_t cap) {
    if (cap) tok[0] = 0;
    if (sodium_init() < 0) return rl_fail(RL_EIO, "libsodium failed to initialise");
    int fd, rc = open_checked(path, &fd);
    if (rc < 0) return rc;
    char data[TOKEN_FILE_MAX + 1];
    size_t len = 0;
    ssize_t n = 0;
    while (len < sizeof data && (n = read(fd, data + len, sizeof data - len)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        len += (size_t)n;
    }
    int e = errno;
    close(fd);
    if (n < 0) rc = rl_fail_errno(RL_EIO, e, "%s: %s", path, strerror(e));
    if (rc == 0 && len > TOKEN_FILE_MAX)
        rc =
            rl_fail(RL_EFORMAT, "%s: larger than %d bytes: not a token file", path, TOKEN_FILE_MAX);
    size_t a = 0, b = len;
    while (a < b && strchr(" \t\r\n", data[a])) a++;
    while (b > a && strchr(" \t\r\n", data[b - 1])) b--;
    for (size_t i = a; i < b && rc == 0; i++)
        if (data[i] <= ' ' || data[i] > '~')
            rc = rl_fail(RL_EFORMAT,
                         "%s: a token file holds one token (printable ASCII, no spaces)", path);
    if (rc == 0 && b - a < SECRET_TOKEN_MIN)
        rc = rl_fail(RL_EFORMAT, "%s: the token has %zu characters, at least %d are needed", path,
                     b - a, SECRET_TOKEN_MIN);
    if (rc == 0 && b - a >= cap)
        rc = rl_fail(RL_EFORMAT, "%s: the token has %zu characters, at most %zu are allowed", path,
                     b - a, cap ? cap - 1 : 0);
    if (rc == 0) {
        memcpy(tok, data + a, b - a);
        tok[b - a] = 0;
    }
    sodium_memzero(data, sizeof data);
    return rc;
}

int secret_token_create(const char *path, char *tok, size_t cap) {
    unsigned char raw[32];
    if (cap < 2 * sizeof raw + 1)
        return rl_fail(RL_EINVAL, "%s: token buffer of %zu bytes is too small", path, cap);
    if (sodium_init() < 0) return rl_fail(RL_EIO, "libsodium failed to initialise");
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(tok, cap, raw, sizeof raw);
    sodium_memzero(raw, sizeof raw);
    char line[2 * sizeof raw + 2];
    snprintf(line, sizeof line, "%s\n", tok);
    fs_atomic_t w;
    int rc = fs_atomic_open(&w, path);
    /* private before the first byte is in it */
    if (rc == 0 && fchmod(w.fd, 0600) < 0)
        rc = rl_fail_errno(RL_EIO, errno, "%s: chmod: %s", path, strerror(errno));
    if (rc == 0) rc = fs_atomic_write(&w, line, strlen(line));
    if (rc == 0)
        rc = fs_atomic_commit(&w);
    else
        fs_atomic_abort(&w);
    sodium_memzero(line, sizeof line);
    if (rc < 0) tok[0] = 0;
    return rc;
}

int secret_token_new(char *tok, size_t cap) {
    unsigned char raw[32];
    if (cap < 2 * sizeof raw + 1)
        return rl_fail(RL_EINVAL, "token buffer of %zu bytes is too small", cap);
    if (sodium_init() < 0) return rl_fail(RL_EIO, "libsodium failed to initialise");
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(tok, cap, raw, sizeof raw);
    sodium_memzero(raw, sizeof raw);
    return 0;
}

void secret_token_hash(const char *tok, size_t len, unsigned char out[SECRET_HASH_LEN]) {
    if (sodium_init() < 0) { /* (a no-op after the first call; hashing needs no entropy) */
    }
    crypto_generichash(out, SECRET_HASH_LEN, (const unsigned char *)(tok ? tok : ""), tok ? len : 0,
                       NULL, 0);
}

int secret_token_equal(const char *a, size_t len, const char *b) {
    if (sodium_init() < 0) return 0; /* (a no-op after the first call) */
    unsigned char ha[crypto_generichash_BYTES], hb[crypto_generichash_BYTES];
    crypto_generichash(ha, sizeof ha, (const unsigned char *)(a ? a : ""), a ? len : 0, NULL, 0);
    crypto_generichash(hb, sizeof hb, (const unsigned char *)b, strlen(b), NULL, 0);
    return sodium_memcmp(ha, hb, sizeof ha) == 0;
}
