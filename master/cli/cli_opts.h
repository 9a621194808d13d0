/*
 * cli_opts.h - a command's options described once, in one table, that drives everything said
 * about them: parsing (getopt_long built from the table, a bad value named with its allowed
 * range), `--help` (name, default, range, meaning), the YAML keys of `rlhf run` (a stage's keys
 * are its command's table, an option `max-new` being the key `max_new`) and their validation
 * when a config is read.
 *
 * Use:
 *   typedef struct { const char *out; int steps; float lr; int gold; } my_args_t;
 *   static const cli_opt_t my_opts[] = {
 *       CLI_OPT_STR(my_args_t, out, "out", NULL, "DIR", "where to write", CLI_OPT_REQUIRED),
 *       CLI_OPT_INT(my_args_t, steps, "steps", 1, 100000, "300", "N", "optimizer steps"),
 *       CLI_OPT_FLOAT(my_args_t, lr, "lr", 0, 10, "0.001", "LR", "peak learning rate"),
 *       CLI_OPT_FLAG(my_args_t, gold, "gold", "also score with the gold judge"),
 *   };
 *   const cli_opts_t cli_my_opts =
 *       CLI_OPTS("my", "rlhf my --out DIR [options]", "About.\n", my_opts, NULL);
 *
 *   my_args_t a;
 *   int rc = cli_opts_parse(&cli_my_opts, argc, argv, &a); // defaults first, then argv
 *   if (rc != CLI_OPTS_GO) return rc; // --help (0) or a bad option (2)
 *   ... optind is the first operand ...
 */
#ifndef RLHF_CLI_OPTS_H
#define RLHF_CLI_OPTS_H

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>

typedef enum {
    CLI_OPT_INT,    /* int in [lo, hi] */
    CLI_OPT_LONG,   /* long in [lo, hi] */
    CLI_OPT_FLOAT,  /* float, finite, in [lo, hi] */
    CLI_OPT_DOUBLE, /* double, finite, in [lo, hi] */
    CLI_OPT_STRING, /* const char *: the argument itself (argv outlives the command) */
    CLI_OPT_BOOL,   /* int 0/1 from true/false, yes/no, 1/0 */
    CLI_OPT_FLAG,   /* int set to 1, no argument; true/false as a configuration key */
    CLI_OPT_CALL,   /* fn(args, value) does the work: repeated options (--set), actions */
} cli_opt_type_t;

enum {
    CLI_OPT_REQUIRED = 1, /* shown as required in --help (the command checks it) */
    CLI_OPT_NOKEY = 2,    /* not a configuration key of `rlhf run` (--config, actions) */
};

typedef struct {
    const char *name; /* long option without the dashes; the run key has '_' for '-' */
    cli_opt_type_t type;
    double lo, hi;   /* range of the numeric types (+-INFINITY: open) */
    const char *def; /* the default as text: set before parsing, shown in --help; NULL: none */
    const char *arg; /* the argument's name in --help ("N", "DIR"); NULL for flags */
    const char *help;
    size_t off; /* offsetof(the command's args struct, the field) */
    /* CLI_OPT_CALL: handles value (NULL for an option without an argument) into args; args is
     * NULL to only check the value. Returns 0, 1 (done: the command exits 0, for actions such
     * as --list-settings) or RL_EINVAL with the reason in rl_errmsg(). */
    int (*fn)(void *args, const char *value);
    unsigned flags;
} cli_opt_t;

typedef struct {
    const char *cmd;   /* "ppo": messages read "rlhf ppo: ..." */
    const char *usage; /* the synopsis after "usage: " */
    const char *about; /* paragraphs between the synopsis and the options; may be NULL */
    const cli_opt_t *opts;
    int n_opts;
    const char *notes;          /* text after the options; may be NULL */
    void (*help_more)(FILE *f); /* prints more --help after the notes (a second table); NULL */
} cli_opts_t;

#define CLI_OPTS(cmd, usage, about, table, notes)                                                  \
    { cmd, usage, about, table, (int)(sizeof table / sizeof table[0]), notes, NULL }

#define CLI__OPT(T, f, name, type, lo, hi, def, arg, help, fn, flags)                              \
    { name, type, lo, hi, def, arg, help, offsetof(T, f), fn, flags }
#define CLI_OPT_INT(T, f, name, lo, hi, def, arg, help)                                            \
    CLI__OPT(T, f, name, CLI_OPT_INT, lo, hi, def, arg, help, NULL, 0)
#define CLI_OPT_LONG(T, f, name, lo, hi, def, arg, help)                                           \
    CLI__OPT(T, f, name, CLI_OPT_LONG, lo, hi, def, arg, help, NULL, 0)
#define CLI_OPT_FLOAT(T, f, name, lo, hi, def, arg, help)                                          \
    CLI__OPT(T, f, name, CLI_OPT_FLOAT, lo, hi, def, arg, help, NULL, 0)
#define CLI_OPT_DOUBLE(T, f, name, lo, hi, def, arg, help)                                         \
    CLI__OPT(T, f, name, CLI_OPT_DOUBLE, lo, hi, def, arg, help, NULL, 0)
#define CLI_OPT_STR(T, f, name, def, arg, help, flags)                                             \
    CLI__OPT(T, f, name, CLI_OPT_STRING, 0, 0, def, arg, help, NULL, flags)
#define CLI_OPT_BOOL(T, f, name, def, help)                                                        \
    CLI__OPT(T, f, name, CLI_OPT_BOOL, 0, 1, def, "BOOL", help, NULL, 0)
#define CLI_OPT_FLAG(T, f, name, help)                                                             \
    CLI__OPT(T, f, name, CLI_OPT_FLAG, 0, 1, NULL, NULL, help, NULL, 0)
/* an option handled by fn; arg NULL: it takes no argument */
#define CLI_OPT_CALL(name, arg, help, fn, flags)                                                   \
    { name, CLI_OPT_CALL, 0, 0, NULL, arg, help, 0, fn, flags }

/* The model-shape options shared by init-model and the benchmarks, into the gpt_config_t field
 * `f` of T. */
#define CLI_OPT_SHAPE(T, f)                                                                        \
    CLI_OPT_INT(T, f.n_layer, "layers", 1, 1000, NULL, "L", "transformer blocks"),                 \
        CLI_OPT_INT(T, f.n_head, "heads", 1, 1000, NULL, "H", "attention heads"),                  \
        CLI_OPT_INT(T, f.n_embd, "dim", 1, 65536, NULL, "C", "embedding width"),                   \
        CLI_OPT_INT(T, f.vocab_size, "vocab", 1, 10000000, NULL, "V", "vocabulary size"),          \
        CLI_OPT_INT(T, f.n_positions, "ctx", 1, 1000000, NULL, "N", "context length")

/* cli_opts_parse()'s "go on with the command"; any other value is the command's exit status. */
#define CLI_OPTS_GO (-1)

/*
 * Sets every option's default into args, then parses argv[1..] (getopt_long; optind is reset,
 * and after the call names the first operand). Returns CLI_OPTS_GO, or 0 after --help (printed
 * on stdout) or an action, or 2 after a bad option (message "rlhf CMD: --NAME: ..." on stderr,
 * with the allowed range).
 */
int cli_opts_parse(const cli_opts_t *t, int argc, char **argv, void *args);

/* cli_opts_parse() without setting the defaults first: for options read on top of others (a
 * config file's). */
int cli_opts_getopt(const cli_opts_t *t, int argc, char **argv, void *args);

/* Sets the defaults of the table into args (cli_opts_parse does it first). */
void cli_opts_defaults(const cli_opts_t *t, void *args);

/*
 * Parses `value` as option o's value into args (NULL: only checks it). Returns 0, 1 (an action
 * ran) or RL_EINVAL with rl_errmsg() saying why without naming the option, as "'0' is not an
 * integer in [1, 1000000]", so that the caller names it ("--iterations", "FILE:LINE: ppo.x").
 */
int cli_opt_value(const cli_opt_t *o, const char *value, void *args);

/* The option of t named `name` - the option ("max-new") or key ("max_new") form - or NULL. */
const cli_opt_t *cli_opts_find(const cli_opts_t *t, const char *name);

/* o's configuration-key name into out: the option name with '_' for '-'. */
void cli_opt_key(const cli_opt_t *o, char *out, size_t n);

/* The allowed values of o as text ("1..1000000", ">= 0", "true|false"; "" for strings). */
void cli_opt_range(const cli_opt_t *o, char *out, size_t n);

/* The type of o as a configuration key: "int", "number", "bool" or "string". */
const char *cli_opt_type_name(const cli_opt_t *o);

/* Prints t's --help: the synopsis, about, one line per option (with its default and range) and
 * the notes. */
void cli_opts_help(const cli_opts_t *t, FILE *f);

#endif
