/*
 * err.h - the project's error codes and the last error's detail message.
 *
 * Every fallible function in common/ returns 0 (or a non-negative value) on success and a
 * negative RL_E* code on failure. The codes come from one X-macro table so that the enum and
 * rl_strerror() can never disagree. A function that fails also records a human-readable detail
 * ("model.safetensors: tensor 'wte.weight' byte range overlaps 'wpe.weight'") in a thread-local
 * buffer that the caller reads with rl_errmsg() and shows to the user.
 */
#ifndef RLHF_ERR_H
#define RLHF_ERR_H

#include <stdarg.h>

#define RL_ERRORS(X)                                                                               \
    X(RL_OK, 0, "success")                                                                         \
    X(RL_ENOMEM, -1, "out of memory")                                                              \
    X(RL_EINVAL, -2, "invalid argument")                                                           \
    X(RL_EIO, -3, "I/O error")                                                                     \
    X(RL_EFORMAT, -4, "malformed input")                                                           \
    X(RL_ENOTFOUND, -5, "not found")                                                               \
    X(RL_ENONFINITE, -6, "NaN or Inf encountered")                                                 \
    X(RL_EUNSUPPORTED, -7, "unsupported")                                                          \
    X(RL_ERANGE, -8, "value out of range")                                                         \
    X(RL_EPROTO, -9, "protocol error")

enum {
#define RL__ERR_ENUM(name, val, str) name = (val),
    RL_ERRORS(RL__ERR_ENUM)
#undef RL__ERR_ENUM
};

/* The fixed description of an error code ("malformed input"); never NULL. */
const char *rl_strerror(int code);

/*
 * Records a detail message for the calling thread and returns `code`, so that a failure reads
 * `return rl_fail(RL_EFORMAT, "%s: line %d: ...", path, line);`.
 */
int rl_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Like rl_fail() but prefixes the existing detail message with new context ("loading X: ..."). */
int rl_fail_ctx(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Like rl_fail() for a failed system call: also records its errno `e`, which rl_errno() reports
 * until the next rl_fail() (rl_fail_ctx() keeps it), so a caller far up can tell a full disk or a
 * read-only directory from other I/O errors without parsing the message.
 */
int rl_fail_errno(int code, int e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The calling thread's last detail message; "" if none was recorded. Valid until the next fail. */
const char *rl_errmsg(void);

/* The code of the calling thread's last rl_fail() / rl_fail_errno() (what rl_fail_ctx() wraps
 * keeps the code it started with): the root cause of a chain of failures; 0 if none. */
int rl_errcode(void);

/* The errno recorded by the calling thread's last failure (rl_fail_errno), 0 if it had none. */
int rl_errno(void);

/* Whether errno `e` is the environment's fault, something waiting or an operator may cure:
 * permission denied, a read-only file system, a full disk, a quota exceeded. */
int rl_errno_environment(int e);

/* Clears the calling thread's detail message, code and errno. */
void rl_err_clear(void);

#endif
