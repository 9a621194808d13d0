/*
 * cli.h - shared pieces of the `rlhf` command line: the subcommand table entry, option-value
 * parsing with errors that name the option, timing and JSON output.
 */
#ifndef RLHF_CLI_H
#define RLHF_CLI_H

#include <jansson.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} cli_cmd_t;

/* Parses an integer option value in [lo, hi]; prints "rlhf CMD: --opt: ..." and returns -1 on
 * error. */
int cli_int(const char *cmd, const char *opt, const char *val, long lo, long hi, int *out);
int cli_long(const char *cmd, const char *opt, const char *val, long lo, long hi, long *out);
/* Parses a finite float option value in [lo, hi]. */
int cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi, float *out);

/* Prints "rlhf CMD: MESSAGE: rl_errmsg()" for a failed library call and returns 1. */
int cli_fail(const char *cmd, const char *what, int rc);

/* Prints `obj` as one line of JSON on stdout and releases it. Returns 0, or 1 (with a message
 * on stderr) if obj is NULL or cannot be serialised - json_pack returns NULL for NaN/Inf. */
int cli_print_json(json_t *obj);

/* Monotonic wall-clock milliseconds. */
double cli_now_ms(void);

/* Unknown option / missing argument: prints usage hint and returns 2. */
int cli_usage_error(const char *cmd);

int cmd_init_model(int argc, char **argv);
int cmd_eval_lm(int argc, char **argv);
int cmd_train_lm(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_generate(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_tokenizer_train(int argc, char **argv);
int cmd_up(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_down(int argc, char **argv);

#endif
