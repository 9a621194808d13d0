/*
 * err.c - error code strings and the thread-local detail message (see err.h).
 */
#include "base/err.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char err_detail[1024];
static _Thread_local int err_code, err_errno;

const char *rl_strerror(int code) {
    switch (code) {
#define RL__ERR_CASE(name, val, str)                                                               \
    case name:                                                                                     \
        return str;
        RL_ERRORS(RL__ERR_CASE)
#undef RL__ERR_CASE
    }
    return "unknown error";
}

int rl_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_detail, sizeof err_detail, fmt, ap);
    va_end(ap);
    err_code = code;
    err_errno = 0;
    return code;
}

int rl_fail_errno(int code, int e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_detail, sizeof err_detail, fmt, ap);
    va_end(ap);
    err_code = code;
    err_errno = e;
    return code;
}

int rl_fail_ctx(int code, const char *fmt, ...) {
    char old[sizeof err_detail];
    memcpy(old, err_detail, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err_detail, sizeof err_detail, fmt, ap);
    va_end(ap);
    size_t used = n < 0 ? 0 : (size_t)n < sizeof err_detail ? (size_t)n : sizeof err_detail - 1;
    const char *rest = old[0] ? old : rl_strerror(code);
    /* Truncation of a long chain of context is acceptable; the start names the culprit. */
    if (used + 2 < sizeof err_detail) {
        memcpy(err_detail + used, ": ", 2);
        used += 2;
        size_t len = strlen(rest);
        if (len > sizeof err_detail - 1 - used) len = sizeof err_detail - 1 - used;
        memcpy(err_detail + used, rest, len);
        err_detail[used + len] = '\0';
    }
    return code;
}

const char *rl_errmsg(void) {
    return err_detail;
}

int rl_errcode(void) {
    return err_code;
}

int rl_errno(void) {
    return err_errno;
}

int rl_errno_environment(int e) {
    return e == EACCES || e == EPERM || e == EROFS || e == ENOSPC || e == EDQUOT;
}

void rl_err_clear(void) {
    err_detail[0] = '\0';
    err_code = 0;
    err_errno = 0;
}
