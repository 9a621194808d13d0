/*
 * data.c - token-id file reader (see data.h).
 */
#include "nn/data.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>

#include "base/err.h"
#include "base/fs.h"

int data_read_tokens(const char *path, int vocab, int **ids, size_t *n) {
    char *buf = NULL;
    size_t len = 0;
    int rc = fs_read_all(path, &buf, &len);
    if (rc < 0) return rc;
    rc = data_parse_tokens(buf, len, path, vocab, ids, n);
    free(buf);
    return rc;
}

int data_parse_tokens(const char *buf, size_t len, const char *label, int vocab, int **ids,
                      size_t *n) {
    size_t cap = 0, count = 0;
    int *out = NULL, rc;
    long line = 1;
    for (const char *p = buf; p < buf + len;) {
        if (*p == '\n') line++;
        if (isspace((unsigned char)*p)) {
            p++;
            continue;
        }
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        int len_tok = 0;
        while (p + len_tok < buf + len && !isspace((unsigned char)p[len_tok]) && len_tok < 40)
            len_tok++;
        if (end == p || (end < buf + len && !isspace((unsigned char)*end))) {
            rc = rl_fail(RL_EFORMAT, "%s:%ld: '%.*s' is not a token id", label, line, len_tok, p);
            goto fail;
        }
        if (errno == ERANGE || v < 0 || v > 2147483647L || (vocab > 0 && v >= vocab)) {
            rc = rl_fail(RL_EFORMAT, "%s:%ld: token id %.*s outside [0,%d)", label, line, len_tok,
                         p, vocab);
            goto fail;
        }
        if (count == cap) {
            cap = cap ? 2 * cap : 4096;
            int *grown = realloc(out, cap * sizeof(int));
            if (!grown) {
                rc = rl_fail(RL_ENOMEM, "%s: too many tokens", label);
                goto fail;
            }
            out = grown;
        }
        out[count++] = (int)v;
        p = end;
    }
    *ids = out;
    *n = count;
    return 0;
fail:
    free(out);
    return rc;
}
