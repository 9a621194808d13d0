/*
 * cli_opts.c - parsing, --help and checking of a command's options from its one table
 * (cli_opts.h).
 */
#include "cli_opts.h"

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"

/* A bound of an integer option as a long (the table holds doubles; LONG_MAX is 2^63 there). */
static long int_bound(double d) {
    if (d >= 9.2e18) return LONG_MAX;
    if (d <= -9.2e18) return LONG_MIN;
    return (long)d;
}

static int is_integer(const cli_opt_t *o) {
    return o->type == CLI_OPT_INT || o->type == CLI_OPT_LONG;
}

int cli_opt_value(const cli_opt_t *o, const char *value, void *args) {
    char *p = args ? (char *)args + o->off : NULL, *end;
    errno = 0;
    switch (o->type) {
    case CLI_OPT_INT:
    case CLI_OPT_LONG: {
        long v = strtol(value, &end, 10);
        if (end == value || *end || errno || (double)v < o->lo || (double)v > o->hi)
            return rl_fail(RL_EINVAL, "'%s' is not an integer in [%ld, %ld]", value,
                           int_bound(o->lo), int_bound(o->hi));
        if (p && o->type == CLI_OPT_INT) *(int *)p = (int)v;
        if (p && o->type == CLI_OPT_LONG) *(long *)p = v;
        return 0;
    }
    case CLI_OPT_FLOAT:
    case CLI_OPT_DOUBLE: {
        double v = strtod(value, &end);
        if (end == value || *end || errno || !isfinite(v) || v < o->lo || v > o->hi)
            return rl_fail(RL_EINVAL, "'%s' is not a number in [%g, %g]", value, o->lo, o->hi);
        if (p && o->type == CLI_OPT_FLOAT) *(float *)p = (float)v;
        if (p && o->type == CLI_OPT_DOUBLE) *(double *)p = v;
        return 0;
    }
    case CLI_OPT_STRING:
        if (p) *(const char **)p = value;
        return 0;
    case CLI_OPT_BOOL:
    case CLI_OPT_FLAG: {
        int v = -1;
        if (!value)
            v = 1; /* a flag on the command line */
        else if (!strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "1"))
            v = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "0"))
            v = 0;
        if (v < 0) return rl_fail(RL_EINVAL, "'%s' is not true or false", value);
        if (p) *(int *)p = v;
        return 0;
    }
    case CLI_OPT_CALL:
        return o->fn(args, value);
    }
    return rl_fail(RL_EINVAL, "bad option type");
}

void cli_opts_defaults(const cli_opts_t *t, void *args) {
    for (int i = 0; i < t->n_opts; i++) {
        const cli_opt_t *o = &t->opts[i];
        if (o->def && o->type != CLI_OPT_CALL) {
            int rc = cli_opt_value(o, o->def, args);
            (void)rc; /* a table's default that does not parse is a bug */
        }
    }
}

const cli_opt_t *cli_opts_find(const cli_opts_t *t, const char *name) {
    for (int i = 0; i < t->n_opts; i++) {
        const char *a = t->opts[i].name, *b = name;
        while (*a && (*a == *b || (*a == '-' && *b == '_'))) a++, b++;
        if (!*a && !*b) return &t->opts[i];
    }
    return NULL;
}

void cli_opt_key(const cli_opt_t *o, char *out, size_t n) {
    snprintf(out, n, "%s", o->name);
    for (char *p = out; *p; p++)
        if (*p == '-') *p = '_';
}

void cli_opt_range(const cli_opt_t *o, char *out, size_t n) {
    out[0] = 0;
    if (o->type == CLI_OPT_BOOL || o->type == CLI_OPT_FLAG) {
        snprintf(out, n, "true|false");
    } else if (is_integer(o)) {
        long lo = int_bound(o->lo), hi = int_bound(o->hi);
        if (hi >= INT_MAX && lo <= INT_MIN)
            snprintf(out, n, "any");
        else if (hi >= INT_MAX)
            snprintf(out, n, ">= %ld", lo);
        else
            snprintf(out, n, "%ld..%ld", lo, hi);
    } else if (o->type == CLI_OPT_FLOAT || o->type == CLI_OPT_DOUBLE) {
        if (isinf(o->lo) && isinf(o->hi))
            snprintf(out, n, "any");
        else if (isinf(o->hi))
            snprintf(out, n, ">= %g", o->lo);
        else if (isinf(o->lo))
            snprintf(out, n, "<= %g", o->hi);
        else
            snprintf(out, n, "%g..%g", o->lo, o->hi);
    }
}

const char *cli_opt_type_name(const cli_opt_t *o) {
    switch (o->type) {
    case CLI_OPT_INT:
    case CLI_OPT_LONG:
        return "int";
    case CLI_OPT_FLOAT:
    case CLI_OPT_DOUBLE:
        return "number";
    case CLI_OPT_BOOL:
    case CLI_OPT_FLAG:
        return "bool";
    default:
        return "string";
    }
}

static int takes_arg(const cli_opt_t *o) {
    return o->type != CLI_OPT_FLAG && !(o->type == CLI_OPT_CALL && !o->arg);
}

/* Prints text from column `col` on, wrapped at word boundaries before column `width`. */
static void print_wrapped(FILE *f, const char *text, int col, int width) {
    int at = col;
    for (const char *p = text; *p;) {
        while (*p == ' ') p++;
        int len = (int)strcspn(p, " ");
        if (at > col && at + 1 + len > width) {
            fprintf(f, "\n%*s", col, "");
            at = col;
        }
        if (at > col) fputc(' ', f), at++;
        fprintf(f, "%.*s", len, p);
        at += len;
        p += len;
    }
    fputc('\n', f);
}

void cli_opts_help(const cli_opts_t *t, FILE *f) {
    fprintf(f, "usage: %s\n", t->usage);
    if (t->about) fprintf(f, "\n%s", t->about);
    fprintf(f, "\n");
    for (int i = 0; i < t->n_opts; i++) {
        const cli_opt_t *o = &t->opts[i];
        char head[64], range[64], tail[160] = "";
        snprintf(head, sizeof head, "--%s%s%s", o->name, takes_arg(o) ? " " : "",
                 takes_arg(o) ? (o->arg ? o->arg : "X") : "");
        cli_opt_range(o, range, sizeof range);
        if (o->type == CLI_OPT_FLAG || o->type == CLI_OPT_CALL) range[0] = 0;
        if (o->flags & CLI_OPT_REQUIRED)
            snprintf(tail, sizeof tail, " (required)");
        else if (o->def && range[0])
            snprintf(tail, sizeof tail, " (default %s; %s)", o->def, range);
        else if (o->def)
            snprintf(tail, sizeof tail, " (default %s)", o->def);
        else if (range[0])
            snprintf(tail, sizeof tail, " (%s)", range);
        char text[1024];
        snprintf(text, sizeof text, "%s%s", o->help, tail);
        fprintf(f, "  %-24s", head);
        if (strlen(head) > 23) fprintf(f, "\n%26s", "");
        print_wrapped(f, text, 26, 98);
    }
    fprintf(f, "  %-24s%s\n", "--help", "this text");
    if (t->notes) fprintf(f, "\n%s", t->notes);
    if (t->help_more) t->help_more(f);
}

int cli_opts_parse(const cli_opts_t *t, int argc, char **argv, void *args) {
    cli_opts_defaults(t, args);
    return cli_opts_getopt(t, argc, argv, args);
}

int cli_opts_getopt(const cli_opts_t *t, int argc, char **argv, void *args) {
    struct option lo[t->n_opts + 2];
    for (int i = 0; i < t->n_opts; i++)
        lo[i] = (struct option){t->opts[i].name, takes_arg(&t->opts[i]), 0, 256 + i};
    lo[t->n_opts] = (struct option){"help", 0, 0, 'h'};
    lo[t->n_opts + 1] = (struct option){0, 0, 0, 0};
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        if (c == 'h') {
            cli_opts_help(t, stdout);
            return 0;
        }
        if (c < 256 || c >= 256 + t->n_opts) {
            fprintf(stderr, "rlhf %s: see `rlhf %s --help`\n", t->cmd, t->cmd);
            return 2;
        }
        const cli_opt_t *o = &t->opts[c - 256];
        int rc = cli_opt_value(o, takes_arg(o) ? optarg : NULL, args);
        if (rc < 0) {
            fprintf(stderr, "rlhf %s: --%s: %s\n", t->cmd, o->name, rl_errmsg());
            return 2;
        }
        if (rc > 0) return 0;
    }
    return CLI_OPTS_GO;
}
