/*
 * cmd_annotators.c - the human annotators of a run on its master (master/master_annot.h):
 *
 *   rlhf annotators add NAME --run RUN [--data-dir DIR | --run-dir DIR] [--http-token-file F]
 *   rlhf annotate close RUN [--data-dir DIR | --run-dir DIR] [--http-token-file F]
 *
 * Both speak the master's HTTP API with the master's bearer token, found as `rlhf status`
 * finds it (cli_http.h): `add` prints the annotator's personal link (its token is shown this
 * once: the master keeps only its digest); `close` ends the run's human annotate stage now, and
 * the run goes on with the rankings it has.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/err.h"
#include "cli.h"
#include "cli_http.h"

typedef struct {
    const char *run, *data_dir, *run_dir, *token_file;
    int json;
} ann_args_t;

static const cli_opt_t ann_opt_table[] = {
    CLI_OPT_STR(ann_args_t, run, "run", NULL, "RUN", "the run (its name)", 0),
    CLI_OPT_STR(ann_args_t, data_dir, "data-dir", "runs", "DIR",
                "the local cluster serving this data directory (DIR/.cluster)", 0),
    CLI_OPT_STR(ann_args_t, run_dir, "run-dir", NULL, "DIR",
                "the master whose files (master.json) are in DIR", 0),
    CLI_OPT_STR(ann_args_t, token_file, "http-token-file", NULL, "FILE",
                "the master's HTTP bearer token (default: $" CLI_HTTP_TOKEN_ENV
                ", else the file its master.json names)",
                0),
    CLI_OPT_FLAG(ann_args_t, json, "json", "print the master's answer as JSON"),
};

static const cli_opts_t ann_opts =
    CLI_OPTS("annotators",
             "rlhf annotators add NAME --run RUN [--data-dir DIR | --run-dir DIR]\n"
             "                [--http-token-file FILE] [--json]",
             "Adds a human annotator to run RUN on its master and prints the annotator's\n"
             "personal link: the page where they rank the run's completions once its annotate\n"
             "stage (annotate.source: human) opens. The link holds the annotator's token; it is\n"
             "shown this once (the master keeps only a digest of it).\n",
             ann_opt_table, NULL);

static const cli_opts_t close_opts =
    CLI_OPTS("annotate close",
             "rlhf annotate close RUN [--data-dir DIR | --run-dir DIR] [--http-token-file FILE]",
             "Closes run RUN's human annotate stage now: the rankings submitted so far are its\n"
             "output, and the run goes on.\n",
             ann_opt_table, NULL);

static void master_dir(const ann_args_t *a, char *out, size_t n) {
    if (a->run_dir)
        snprintf(out, n, "%s", a->run_dir);
    else
        snprintf(out, n, "%.1000s/.cluster", a->data_dir ? a->data_dir : "runs");
}

/* POSTs body to path; prints the answer. */
static int post(const char *cmd, const ann_args_t *a, const char *path, const char *body,
                int link_only) {
    char dir[1100], *resp = NULL;
    master_dir(a, dir, sizeof dir);
    if (cli_http_request(dir, a->token_file, "POST", path, body, &resp) < 0) {
        fprintf(stderr, "rlhf %s: %s\n", cmd, rl_errmsg());
        return 1;
    }
    json_t *o = json_loads(resp, 0, NULL);
    free(resp);
    if (!o) {
        fprintf(stderr, "rlhf %s: a bad answer from the master\n", cmd);
        return 1;
    }
    if (link_only && !a->json) {
        printf("%s\n", json_string_value(json_object_get(o, "link")) ?: "");
        json_decref(o);
        return 0;
    }
    return cli_print_json(o);
}

int cmd_annotators(int argc, char **argv) {
    ann_args_t a = {0};
    if (argc < 2 || strcmp(argv[1], "add")) {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            cli_opts_parse(&ann_opts, argc, argv, &a);
            return 0;
        }
        fprintf(stderr, "rlhf annotators: expected 'add NAME --run RUN'\n");
        return 2;
    }
    int c = cli_opts_parse(&ann_opts, argc - 1, argv + 1, &a);
    if (c != CLI_OPTS_GO) return c;
    if (optind != argc - 2 || !a.run) {
        fprintf(stderr, "rlhf annotators add: one NAME and --run RUN are required\n");
        return 2;
    }
    const char *name = argv[1 + optind];
    json_t *b = json_pack("{s:s}", "name", name);
    char *body = b ? json_dumps(b, JSON_COMPACT) : NULL, path[300];
    json_decref(b);
    snprintf(path, sizeof path, "/api/runs/%.200s/annotators", a.run);
    int rc = body ? post("annotators add", &a, path, body, 1) : 1;
    free(body);
    return rc;
}

int cmd_annotate_close(int argc, char **argv) {
    ann_args_t a = {0};
    int c = cli_opts_parse(&close_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    const char *run = optind == argc - 1 ? argv[optind] : a.run;
    if (!run || (optind != argc - 1 && optind != argc)) {
        fprintf(stderr, "rlhf annotate close: one RUN is required\n");
        return 2;
    }
    char path[300];
    snprintf(path, sizeof path, "/api/runs/%.200s/close", run);
    return post("annotate close", &a, path, "{}", 0);
}
