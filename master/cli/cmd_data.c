/*
 * cmd_data.c - the stage-1 data commands after generation: annotate (simulated annotators or an
 * import into the annotation store), aggregate (consensus rankings and agreement statistics),
 * pairs (the C(K,2) preference pairs of each prompt, as pairs JSONL and HH transcripts) and
 * import-pairs (existing pair datasets straight into stage 2). Formats: common/align/annot.h and
 * the help texts below.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "align/annot.h"
#include "cli.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/jsonl.h"
#include "align/rank.h"
#include "align/task.h"

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static int ends_with_ci(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    if (n < m) return 0;
    for (size_t i = 0; i < m; i++) {
        char a = s[n - m + i], b = suffix[i];
        if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
        if (a != b) return 0;
    }
    return 1;
}

/* A real, or JSON null for NaN (undefined statistics). */
static json_t *num_or_null(double x) {
    return isfinite(x) ? json_real(x) : json_null();
}

/* ---- annotate ---------------------------------------------------------------------------- */

/* Simulates rankings into s. */
static int simulate(annot_store_t *s, const annot_sim_t *panel, int n, int R, uint64_t seed,
                    const char *when, int *added) {
    const annot_comp_t *c = s->comp;
    uint64_t *keys = malloc((size_t)(c->n ? c->n : 1) * sizeof *keys);
    int *assign = malloc((size_t)(c->n ? c->n : 1) * (size_t)R * sizeof *assign);
    float(*scores)[TASK_NCRIT] = malloc(ANNOT_MAX_K * sizeof *scores);
    int rc = 0;
    if (!keys || !assign || !scores) {
        rc = rl_fail(RL_ENOMEM, "out of memory");
        goto out;
    }
    for (int p = 0; p < c->n; p++) keys[p] = annot_prompt_key(c->v[p].id);
    if ((rc = annot_assign(c->n, keys, n, R, seed, assign)) < 0) goto out;
    for (int p = 0; p < c->n; p++) {
        const annot_prompt_t *pr = &c->v[p];
        for (int i = 0; i < pr->k; i++) task_score(pr->prompt, pr->text[i], scores[i]);
        for (int j = 0; j < R; j++) {
            int a = assign[(size_t)p * R + j];
            annot_rec_t r;
            memset(&r, 0, sizeof r);
            r.confidence = NAN;
            r.prompt = p;
            r.k = pr->k;
            char src[128];
            snprintf(src, sizeof src, "simulated annotator %s", panel[a].id);
            r.annotator = strdup(panel[a].id);
            r.level = malloc((size_t)pr->k * sizeof *r.level);
            r.shown = malloc((size_t)pr->k * sizeof *r.shown);
            r.time = strdup(when);
            r.guideline = strdup(task_guideline_version);
            r.src = strdup(src);
            if (!r.annotator || !r.level || !r.shown || !r.time || !r.guideline || !r.src) {
                annot_rec_free(&r);
                rc = rl_fail(RL_ENOMEM, "out of memory");
                goto out;
            }
            annot_sim_rank(&panel[a], a, seed, keys[p], (const float(*)[TASK_NCRIT])scores, pr->k,
                           r.level, r.shown);
            if ((rc = annot_store_add(s, &r)) < 0) goto out;
            (*added)++;
        }
    }
out:
    free(keys);
    free(assign);
    free(scores);
    return rc;
}

typedef struct {
    const char *comp_path, *out, *panel_path, *import, *when, *source, *guidelines;
    int n_sim, R, replace;
    long seed;
    double noise, deadline, lease;
} annotate_args_t;

static const cli_opt_t annotate_opt_table[] = {
    CLI_OPT_STR(annotate_args_t, comp_path, "completions", NULL, "C.jsonl", "the completions",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(annotate_args_t, out, "out", NULL, "A.jsonl", "the annotation store",
                CLI_OPT_REQUIRED),
    CLI_OPT_INT(annotate_args_t, n_sim, "simulate", 1, 100000, NULL, "N",
                "N simulated annotators sim01..simNN, each with its own weighting of the "
                "alignment criteria and a noise level spread over [0.5, 1.5] x X; utility = w . "
                "criteria scores + noise * N(0,1), ranked best first, equal utilities tie"),
    CLI_OPT_STR(annotate_args_t, panel_path, "annotators", NULL, "FILE",
                "the panel from FILE instead: [{\"id\", \"weights\": {\"correct\", \"polite\", "
                "\"concise\", \"on-topic\"}, \"noise\"}, ...]",
                0),
    CLI_OPT_INT(annotate_args_t, R, "overlap", 1, 100000, NULL, "R",
                "annotators per prompt, distinct, balanced load (default min(3, N))"),
    CLI_OPT_LONG(annotate_args_t, seed, "seed", 0, LONG_MAX, "1", "S",
                 "seed of the noise, display order and assignment"),
    CLI_OPT_DOUBLE(annotate_args_t, noise, "noise", 0, 1e6, "0.15", "X",
                   "mean noise of the default panel; the noise of a panel entry without one"),
    CLI_OPT_STR(annotate_args_t, when, "time", NULL, "T",
                "the ISO-8601 UTC time written on simulated records (default now)", 0),
    CLI_OPT_STR(annotate_args_t, import, "import", NULL, "FILE",
                "records written by another tool: CSV if FILE ends in .csv, else JSONL", 0),
    CLI_OPT_FLAG(annotate_args_t, replace, "replace",
                 "start from an empty store instead of merging into --out"),
    CLI_OPT_STR(annotate_args_t, source, "source", "simulate", "SOURCE",
                "simulate (or --import), or human: people rank in the browser, served by the "
                "run's master (rlhf annotators add; in a run only)",
                0),
    CLI_OPT_STR(annotate_args_t, guidelines, "guidelines", NULL, "FILE",
                "human: the guidelines the page shows (default: the run's task/guidelines.md where "
                "the task stage wrote it, else a one-line instruction)",
                0),
    CLI_OPT_DOUBLE(annotate_args_t, deadline, "deadline", 0, 1e9, "0", "SECONDS",
                   "human: close the stage this long after it opened, target met or not (0: "
                   "no deadline; rlhf annotate close RUN closes it at any time)"),
    CLI_OPT_DOUBLE(annotate_args_t, lease, "lease", 1, 1e7, "900", "SECONDS",
                   "human: an assignment not submitted within this returns to the pool"),
};

const cli_opts_t cli_annotate_opts = CLI_OPTS(
    "annotate",
    "rlhf annotate --completions C.jsonl --out A.jsonl --simulate N [--overlap R]\n"
    "                     [--seed S] [--noise X] [--annotators PANEL.json] [--time T] [--replace]\n"
    "       rlhf annotate --completions C.jsonl --out A.jsonl --import FILE.jsonl|FILE.csv\n"
    "                     [--replace]\n"
    "       rlhf annotate close RUN      (a run's human annotate stage: rlhf annotate close "
    "--help)",
    "Adds ranking records, one per (prompt, annotator), to the annotation store A.jsonl. An\n"
    "existing A.jsonl is loaded and merged (unless --replace); a second record for the same\n"
    "(prompt, annotator) is refused with the file and line of both. The store is written\n"
    "atomically and only when every new record is valid.\n",
    annotate_opt_table, NULL);

int cmd_annotate(int argc, char **argv) {
    const char *cmd = "annotate";
    if (argc >= 2 && !strcmp(argv[1], "close")) return cmd_annotate_close(argc - 1, argv + 1);
    annotate_args_t a = {0};
    int c = cli_opts_parse(&cli_annotate_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    const char *comp_path = a.comp_path, *out = a.out, *panel_path = a.panel_path,
               *import = a.import, *when = a.when;
    int n_sim = a.n_sim, R = a.R, replace = a.replace;
    long seed = a.seed;
    double noise = a.noise;
    if (a.source && !strcmp(a.source, "human")) {
        fprintf(stderr,
                "rlhf %s: --source human runs in a run's master (rlhf run with annotate.source: "
                "human); the annotators rank in the browser (rlhf annotators add)\n",
                cmd);
        return 2;
    }
    if (a.source && strcmp(a.source, "simulate")) {
        fprintf(stderr, "rlhf %s: --source: '%s' is neither simulate nor human\n", cmd, a.source);
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "rlhf %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return 2;
    }
    int sim = n_sim > 0 || panel_path;
    if (!comp_path || !out || sim == !!import) {
        fprintf(stderr,
                "rlhf %s: --completions, --out and one of --simulate / --import are "
                "required\n",
                cmd);
        return 2;
    }
    if (when && !annot_time_valid(when)) {
        fprintf(stderr, "rlhf %s: --time: '%s' is not ISO-8601 UTC (YYYY-MM-DDTHH:MM:SSZ)\n", cmd,
                when);
        return 2;
    }
    char now[32];
    annot_time_now(now, sizeof now);
    if (!when) when = now;

    annot_comp_t comp;
    annot_store_t s;
    annot_sim_t *panel = NULL;
    int rc, n_panel = 0, added = 0, status = 1;
    if ((rc = annot_comp_load(&comp, comp_path)) < 0) return cli_fail(cmd, "completions", rc);
    annot_store_init(&s, &comp);
    if (sim) {
        if (panel_path) {
            if ((rc = annot_sim_load(panel_path, noise, &panel, &n_panel)) < 0) {
                cli_fail(cmd, "annotators", rc);
                goto out;
            }
            if (n_sim && n_sim != n_panel) {
                fprintf(stderr, "rlhf %s: --simulate %d but %s has %d annotators\n", cmd, n_sim,
                        panel_path, n_panel);
                status = 2;
                goto out;
            }
        } else {
            n_panel = n_sim;
            if (!(panel = calloc((size_t)n_panel, sizeof *panel))) {
                cli_fail(cmd, "panel", rl_fail(RL_ENOMEM, "out of memory"));
                goto out;
            }
            annot_sim_panel(n_panel, noise, panel);
        }
        if (!R) R = n_panel < 3 ? n_panel : 3;
        if (R > n_panel) {
            fprintf(stderr, "rlhf %s: --overlap %d exceeds the %d annotators\n", cmd, R, n_panel);
            status = 2;
            goto out;
        }
    } else if (R || panel_path || seed != 1 || when != now) {
        fprintf(stderr,
                "rlhf %s: --overlap, --seed, --time and --annotators go with "
                "--simulate\n",
                cmd);
        status = 2;
        goto out;
    }
    if (!replace && file_exists(out)) {
        if ((rc = annot_store_read_jsonl(&s, out, now, task_guideline_version)) < 0) {
            cli_fail(cmd, "the existing store", rc);
            goto out;
        }
    }
    int before = s.n;
    if (sim) {
        if ((rc = simulate(&s, panel, n_panel, R, (uint64_t)seed, when, &added)) < 0) {
            cli_fail(cmd, "simulating", rc);
            goto out;
        }
    } else {
        rc = ends_with_ci(import, ".csv")
                 ? annot_store_read_csv(&s, import, now, task_guideline_version)
                 : annot_store_read_jsonl(&s, import, now, task_guideline_version);
        if (rc < 0) {
            cli_fail(cmd, "importing", rc);
            goto out;
        }
        added = s.n - before;
    }
    if ((rc = annot_store_write(&s, out)) < 0) {
        cli_fail(cmd, "writing", rc);
        goto out;
    }
    status = cli_print_json(json_pack("{s:s,s:i,s:i,s:i,s:i,s:s}", "out", out, "added", added,
                                      "records", s.n, "prompts", comp.n, "overlap", sim ? R : 0,
                                      "guideline", task_guideline_version));
out:
    free(panel);
    annot_store_free(&s);
    annot_comp_free(&comp);
    return status;
}

/* ---- aggregate --------------------------------------------------------------------------- */

static json_t *summary_json(const annot_agg_t *g) {
    json_t *per = json_array();
    for (int a = 0; per && a < g->n_annot; a++) {
        const annot_aagg_t *x = &g->a[a];
        json_array_append_new(per,
                              json_pack("{s:s,s:i,s:i,s:i,s:I,s:I,s:o}", "annotator", x->id,
                                        "records", x->records, "skipped", x->skipped, "prompts",
                                        x->loo_prompts, "agree", (json_int_t)x->loo_agree, "strict",
                                        (json_int_t)x->loo_strict, "agreement_with_others",
                                        num_or_null(annot_rate(x->loo_agree, x->loo_strict))));
    }
    int annotated = 0;
    for (int p = 0; p < g->n_prompts; p++) annotated += g->p[p].n_rankings > 0;
    return json_pack(
        "{s:i,s:i,s:i,s:i,s:i,s:o,s:i,s:i,s:o,s:i,s:o,s:I,s:I,s:I,s:o,s:o,s:i,"
        "s:i,s:o}",
        "prompts", g->n_prompts, "prompts_annotated", annotated, "annotators", g->n_annot,
        "records", g->records, "skipped", g->skipped, "overlap_mean", num_or_null(g->overlap_mean),
        "overlap_min", g->overlap_min, "overlap_max", g->overlap_max, "mean_kendall_w",
        num_or_null(g->mean_w), "prompts_with_w", g->n_w, "pairwise_agreement",
        num_or_null(annot_rate(g->agree, g->strict)), "pairwise_agree", (json_int_t)g->agree,
        "pairwise_strict", (json_int_t)g->strict, "pairwise_tied", (json_int_t)g->tied,
        "krippendorff_alpha_ordinal", num_or_null(g->alpha), "min_w", num_or_null(g->min_w), "kept",
        g->kept, "dropped", g->dropped, "per_annotator", per ? per : json_null());
}

static void fmt_num(char *buf, size_t n, double x) {
    if (isfinite(x))
        snprintf(buf, n, "%.3f", x);
    else
        snprintf(buf, n, "-");
}

static void print_table(const annot_agg_t *g) {
    char a[32], b[32];
    int annotated = 0;
    for (int p = 0; p < g->n_prompts; p++) annotated += g->p[p].n_rankings > 0;
    printf("prompts                %d (annotated %d, kept %d, dropped %d)\n", g->n_prompts,
           annotated, g->kept, g->dropped);
    printf("annotators             %d\n", g->n_annot);
    printf("records                %d (skipped %d)\n", g->records, g->skipped);
    fmt_num(a, sizeof a, g->overlap_mean);
    printf("overlap                %s rankings per prompt (min %d, max %d)\n", a, g->overlap_min,
           g->overlap_max);
    fmt_num(a, sizeof a, g->mean_w);
    printf("mean Kendall's W       %s (%d prompts with W)\n", a, g->n_w);
    fmt_num(a, sizeof a, annot_rate(g->agree, g->strict));
    printf("pairwise agreement     %s (%ld of %ld strict comparisons; %ld with a tie)\n", a,
           g->agree, g->strict, g->tied);
    fmt_num(a, sizeof a, g->alpha);
    printf("Krippendorff's alpha   %s (ordinal)\n", a);
    if (!isnan(g->min_w)) printf("filter                 Kendall's W >= %g\n", g->min_w);
    printf("\n%-20s %8s %8s %8s %12s\n", "annotator", "records", "skipped", "prompts",
           "vs. others");
    for (int i = 0; i < g->n_annot; i++) {
        const annot_aagg_t *x = &g->a[i];
        fmt_num(b, sizeof b, annot_rate(x->loo_agree, x->loo_strict));
        printf("%-20s %8d %8d %8d %12s\n", x->id, x->records, x->skipped, x->loo_prompts, b);
    }
    fflush(stdout);
}

static json_t *agg_record(const annot_store_t *s, const annot_agg_t *g, int p) {
    const annot_prompt_t *pr = &s->comp->v[p];
    const annot_pagg_t *pa = &g->p[p];
    json_t *ids = json_array(), *rk = json_array(), *mr = json_array();
    for (int r = 0; ids && rk && r < pa->n_rankings; r++) {
        const annot_rec_t *rec = &s->v[pa->rec[r]];
        json_array_append_new(ids, json_string(rec->annotator));
        json_array_append_new(rk, annot_ranking_to_json(rec->level, rec->k));
    }
    for (int i = 0; mr && i < pr->k; i++) json_array_append_new(mr, num_or_null(pa->mean_rank[i]));
    return json_pack(
        "{s:s,s:i,s:o*,s:o*,s:i,s:o*,s:o*,s:o,s:o,s:b}", "prompt_id", pr->id, "n_completions",
        pr->k, "annotators", ids, "rankings", rk, "n_skipped", pa->n_skipped, "mean_rank", mr,
        "consensus", annot_ranking_to_json(pa->consensus, pr->k), "kendall_w", num_or_null(pa->w),
        "pairwise_agreement", num_or_null(annot_rate(pa->agree, pa->strict)), "kept", pa->kept);
}

typedef struct {
    const char *comp_path, *ann_path, *out, *summary;
    double min_w;
} aggregate_args_t;

static const cli_opt_t aggregate_opt_table[] = {
    CLI_OPT_STR(aggregate_args_t, comp_path, "completions", NULL, "C.jsonl", "the completions",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(aggregate_args_t, ann_path, "annotations", NULL, "A.jsonl", "the rankings",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(aggregate_args_t, out, "out", NULL, "AGG.jsonl", "one line per prompt (below)",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(aggregate_args_t, summary, "summary", NULL, "FILE.json",
                "the summary (default: --out with .jsonl replaced by .summary.json)", 0),
    CLI_OPT_DOUBLE(aggregate_args_t, min_w, "min-w", 0, 1, NULL, "W",
                   "keep only prompts whose Kendall's W is defined (two or more rankings, not "
                   "all tied) and at least W; without it every prompt with a ranking is kept"),
};

const cli_opts_t cli_aggregate_opts = CLI_OPTS(
    "aggregate",
    "rlhf aggregate --completions C.jsonl --annotations A.jsonl --out AGG.jsonl\n"
    "                      [--summary FILE.json] [--min-w W]",
    "Consensus ranking per prompt by mean fractional rank (Borda; tied completions share the\n"
    "mean of their positions; equal means tie in the consensus) and agreement figures: Kendall's\n"
    "W per prompt (tie-corrected), the pairwise agreement rate (of the comparisons where two\n"
    "annotators of a prompt both state a strict preference, the fraction that agree),\n"
    "Krippendorff's alpha (ordinal; units = (prompt, completion), missing where an annotator did\n"
    "not rank a prompt) and each annotator's agreement with the consensus of the others.\n"
    "Prints a summary table and writes it as JSON to --summary.\n",
    aggregate_opt_table,
    "AGG.jsonl, one line per prompt of C.jsonl:\n"
    "  {\"prompt_id\", \"n_completions\", \"annotators\": [ids], \"rankings\": [tie groups per\n"
    "   annotator], \"n_skipped\", \"mean_rank\": [per completion], \"consensus\": [tie groups],\n"
    "   \"kendall_w\", \"pairwise_agreement\", \"kept\"}   (undefined figures are null)\n");

int cmd_aggregate(int argc, char **argv) {
    const char *cmd = "aggregate";
    aggregate_args_t a = {.min_w = NAN};
    int c = cli_opts_parse(&cli_aggregate_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    const char *comp_path = a.comp_path, *ann_path = a.ann_path, *out = a.out, *summary = a.summary;
    double min_w = a.min_w;
    if (optind < argc) {
        fprintf(stderr, "rlhf %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return 2;
    }
    if (!comp_path || !ann_path || !out) {
        fprintf(stderr, "rlhf %s: --completions, --annotations and --out are required\n", cmd);
        return 2;
    }
    char sum_path[4096];
    if (!summary) {
        size_t n = strlen(out);
        if (ends_with_ci(out, ".jsonl")) n -= 6;
        if (n + 14 >= sizeof sum_path) {
            fprintf(stderr, "rlhf %s: --out: path too long\n", cmd);
            return 2;
        }
        snprintf(sum_path, sizeof sum_path, "%.*s.summary.json", (int)n, out);
        summary = sum_path;
    }
    annot_comp_t comp;
    annot_store_t s;
    annot_agg_t g;
    memset(&g, 0, sizeof g);
    int rc, status = 1;
    char now[32];
    annot_time_now(now, sizeof now);
    if ((rc = annot_comp_load(&comp, comp_path)) < 0) return cli_fail(cmd, "completions", rc);
    annot_store_init(&s, &comp);
    if ((rc = annot_store_read_jsonl(&s, ann_path, now, task_guideline_version)) < 0) {
        cli_fail(cmd, "annotations", rc);
        goto out;
    }
    if ((rc = annot_aggregate(&s, min_w, &g)) < 0) {
        cli_fail(cmd, "aggregating", rc);
        goto out;
    }
    jsonl_writer_t w;
    if ((rc = jsonl_open(&w, out)) < 0) {
        cli_fail(cmd, "writing", rc);
        goto out;
    }
    for (int p = 0; p < comp.n; p++) {
        json_t *o = agg_record(&s, &g, p);
        if (!o) rc = rl_fail(RL_ENOMEM, "%s: out of memory", out);
        if (rc < 0 || (rc = jsonl_write(&w, o)) < 0) {
            jsonl_abort(&w);
            cli_fail(cmd, "writing", rc);
            goto out;
        }
    }
    if ((rc = jsonl_commit(&w)) < 0) {
        cli_fail(cmd, "writing", rc);
        goto out;
    }
    json_t *sj = summary_json(&g);
    char *text = sj ? json_dumps(sj, JSON_INDENT(2) | JSON_REAL_PRECISION(7)) : NULL;
    json_decref(sj);
    if (!text) {
        cli_fail(cmd, "summary", rl_fail(RL_ENOMEM, "cannot format the summary"));
        goto out;
    }
    size_t tl = strlen(text);
    char *nl = realloc(text, tl + 2);
    if (nl) {
        text = nl;
        text[tl++] = '\n';
        text[tl] = '\0';
    }
    rc = fs_write_atomic(summary, text, tl);
    free(text);
    if (rc < 0) {
        cli_fail(cmd, "writing the summary", rc);
        goto out;
    }
    print_table(&g);
    status = 0;
out:
    annot_agg_free(&g);
    annot_store_free(&s);
    annot_comp_free(&comp);
    return status;
}

/* ---- pairs ------------------------------------------------------------------------------- */

/* The HH transcript of prompt + response: a prompt already in transcript form (starting with
 * "\n\nHuman:" and ending with "\n\nAssistant:") is used as it is. */
static json_t *hh_text(const char *prompt, const char *response) {
    static const char H[] = "\n\nHuman:", A[] = "\n\nAssistant:";
    size_t pl = strlen(prompt), al = sizeof A - 1;
    int transcript = !strncmp(prompt, H, sizeof H - 1) && pl >= al && !strcmp(prompt + pl - al, A);
    size_t n = pl + strlen(response) + 32;
    char *buf = malloc(n);
    if (!buf) return NULL;
    if (transcript)
        snprintf(buf, n, "%s %s", prompt, response);
    else
        snprintf(buf, n, "\n\nHuman: %s\n\nAssistant: %s", prompt, response);
    json_t *s = json_string(buf);
    free(buf);
    return s;
}

typedef struct {
    const annot_comp_t *comp;
    jsonl_writer_t *out, *hh;
    long prompts, pairs, tied, skipped;
} pairs_ctx_t;

static int pairs_line(void *vctx, json_t *obj, const char *where) {
    pairs_ctx_t *x = vctx;
    const char *pid;
    long long k;
    int rc;
    if ((rc = jsonl_get_str(obj, "prompt_id", where, &pid)) < 0) return rc;
    int p = annot_comp_find(x->comp, pid);
    if (p < 0)
        return rl_fail(RL_EFORMAT, "%s: prompt_id: '%s' is not in the completions", where, pid);
    const annot_prompt_t *pr = &x->comp->v[p];
    if ((rc = jsonl_get_int(obj, "n_completions", where, pr->k, pr->k, &k)) < 0) return rc;
    json_t *kept = json_object_get(obj, "kept"), *rk = json_object_get(obj, "rankings");
    if (!json_is_boolean(kept))
        return rl_fail(RL_EFORMAT, "%s: kept: %s", where,
                       kept ? "true or false is expected" : "missing");
    if (!json_is_array(rk))
        return rl_fail(RL_EFORMAT, "%s: rankings: %s", where,
                       rk ? "an array is expected" : "missing");
    if (!json_is_true(kept) || json_array_size(rk) == 0) {
        x->skipped++;
        return 0;
    }
    int R = (int)json_array_size(rk), K = pr->k;
    int *levels = malloc((size_t)R * K * sizeof *levels);
    double *mean = malloc((size_t)K * sizeof *mean);
    int *cons = malloc((size_t)K * sizeof *cons);
    rank_pair_t *pairs = malloc((size_t)(K * (K - 1) / 2 + 1) * sizeof *pairs);
    if (!levels || !mean || !cons || !pairs) {
        rc = rl_fail(RL_ENOMEM, "out of memory");
        goto out;
    }
    for (int r = 0; r < R; r++) {
        char w2[4300];
        snprintf(w2, sizeof w2, "%s: rankings[%d]", where, r);
        if ((rc = annot_ranking_from_json(json_array_get(rk, (size_t)r), K, w2,
                                          levels + (size_t)r * K)) < 0)
            goto out;
    }
    if ((rc = rank_consensus(levels, R, K, mean, cons)) < 0) goto out;
    int np = rank_pairs(levels, R, K, mean, pairs);
    x->prompts++;
    x->pairs += np;
    x->tied += (long)K * (K - 1) / 2 - np;
    for (int i = 0; i < np; i++) {
        const char *ch = pr->text[pairs[i].chosen], *rj = pr->text[pairs[i].rejected];
        json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:f}", "prompt_id", pr->id, "prompt", pr->prompt,
                              "chosen", ch, "rejected", rj, "margin", pairs[i].margin);
        if ((rc = jsonl_write(x->out, o)) < 0) goto out;
        if (x->hh) {
            json_t *hc = hh_text(pr->prompt, ch), *hr = hh_text(pr->prompt, rj);
            o = hc && hr ? json_pack("{s:o,s:o}", "chosen", hc, "rejected", hr) : NULL;
            if (!o) {
                json_decref(hc);
                json_decref(hr);
            }
            if ((rc = jsonl_write(x->hh, o)) < 0) goto out;
        }
    }
    rc = 0;
out:
    free(levels);
    free(mean);
    free(cons);
    free(pairs);
    return rc;
}

typedef struct {
    const char *comp_path, *agg, *out, *hh;
} pairs_args_t;

static const cli_opt_t pairs_opt_table[] = {
    CLI_OPT_STR(pairs_args_t, comp_path, "completions", NULL, "C.jsonl", "the completions",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(pairs_args_t, agg, "aggregated", NULL, "AGG.jsonl", "rlhf aggregate's output",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(pairs_args_t, out, "out", NULL, "P.jsonl", "the pairs (below)", CLI_OPT_REQUIRED),
    CLI_OPT_STR(pairs_args_t, hh, "hh", NULL, "HH.jsonl", "the pairs in the HH form (below)", 0),
};

const cli_opts_t cli_pairs_opts = CLI_OPTS(
    "pairs",
    "rlhf pairs --completions C.jsonl --aggregated AGG.jsonl --out P.jsonl [--hh HH.jsonl]",
    "Turns each kept prompt of AGG.jsonl into its preference pairs: one per pair of completions\n"
    "that the consensus (mean rank over the record's \"rankings\") orders strictly, preferred\n"
    "first; pairs the consensus ties carry no preference and are left out. Pairs of a prompt are\n"
    "consecutive and share its prompt_id.\n",
    pairs_opt_table,
    "P.jsonl:  {\"prompt_id\", \"prompt\", \"chosen\", \"rejected\", \"margin\"}  margin = the "
    "fraction\n"
    "          of the prompt's annotators whose ranking agrees with the pair's order (a tie\n"
    "          counts half); usually >= 0.5, but a mean-rank consensus can go against a narrow\n"
    "          majority, so it may be lower\n"
    "HH.jsonl: {\"chosen\": \"\\n\\nHuman: PROMPT\\n\\nAssistant: CHOSEN\", \"rejected\": ...}\n");

int cmd_pairs(int argc, char **argv) {
    const char *cmd = "pairs";
    pairs_args_t a = {0};
    int c = cli_opts_parse(&cli_pairs_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    const char *comp_path = a.comp_path, *agg = a.agg, *out = a.out, *hh = a.hh;
    if (optind < argc) {
        fprintf(stderr, "rlhf %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return 2;
    }
    if (!comp_path || !agg || !out) {
        fprintf(stderr, "rlhf %s: --completions, --aggregated and --out are required\n", cmd);
        return 2;
    }
    annot_comp_t comp;
    int rc;
    if ((rc = annot_comp_load(&comp, comp_path)) < 0) return cli_fail(cmd, "completions", rc);
    jsonl_writer_t w, wh;
    pairs_ctx_t x = {&comp, &w, hh ? &wh : NULL, 0, 0, 0, 0};
    if ((rc = jsonl_open(&w, out)) < 0) {
        annot_comp_free(&comp);
        return cli_fail(cmd, "writing", rc);
    }
    if (hh && (rc = jsonl_open(&wh, hh)) < 0) {
        jsonl_abort(&w);
        annot_comp_free(&comp);
        return cli_fail(cmd, "writing", rc);
    }
    long n = jsonl_read(agg, pairs_line, &x);
    annot_comp_free(&comp);
    if (n < 0) {
        jsonl_abort(&w);
        if (hh) jsonl_abort(&wh);
        return cli_fail(cmd, "aggregated rankings", (int)n);
    }
    if ((rc = jsonl_commit(&w)) < 0 || (hh && (rc = jsonl_commit(&wh)) < 0)) {
        if (hh) jsonl_abort(&wh);
        return cli_fail(cmd, "writing", rc);
    }
    return cli_print_json(json_pack("{s:s,s:I,s:I,s:I,s:I}", "out", out, "prompts",
                                    (json_int_t)x.prompts, "pairs", (json_int_t)x.pairs,
                                    "tied_left_out", (json_int_t)x.tied, "prompts_left_out",
                                    (json_int_t)x.skipped));
}

/* ---- import-pairs ------------------------------------------------------------------------ */

typedef struct {
    jsonl_writer_t *out;
    char **key; /* prompt texts seen, open addressing */
    int *id;
    size_t cap, n;
    long pairs, hh;
} imp_ctx_t;

/* The id number of a prompt text (new texts get the next number); -1 when out of memory. */
static int prompt_number(imp_ctx_t *x, const char *text) {
    if (2 * (x->n + 1) > x->cap) {
        size_t cap = x->cap ? 2 * x->cap : 1024;
        char **key = calloc(cap, sizeof *key);
        int *id = calloc(cap, sizeof *id);
        if (!key || !id) {
            free(key);
            free(id);
            return -1;
        }
        for (size_t i = 0; i < x->cap; i++) {
            if (!x->key[i]) continue;
            size_t h = (size_t)annot_prompt_key(x->key[i]) & (cap - 1);
            while (key[h]) h = (h + 1) & (cap - 1);
            key[h] = x->key[i];
            id[h] = x->id[i];
        }
        free(x->key);
        free(x->id);
        x->key = key;
        x->id = id;
        x->cap = cap;
    }
    size_t h = (size_t)annot_prompt_key(text) & (x->cap - 1);
    while (x->key[h]) {
        if (!strcmp(x->key[h], text)) return x->id[h];
        h = (h + 1) & (x->cap - 1);
    }
    if (!(x->key[h] = strdup(text))) return -1;
    x->id[h] = (int)++x->n;
    return x->id[h];
}

static int import_line(void *vctx, json_t *obj, const char *where) {
    imp_ctx_t *x = vctx;
    static const char H[] = "\n\nHuman:", A[] = "\n\nAssistant:";
    const char *chosen, *rejected, *prompt, *pid = NULL;
    char *prompt_buf = NULL;
    double margin = 1;
    int rc;
    if ((rc = jsonl_get_str(obj, "chosen", where, &chosen)) < 0 ||
        (rc = jsonl_get_str(obj, "rejected", where, &rejected)) < 0)
        return rc;
    if (json_object_get(obj, "prompt")) {
        if ((rc = jsonl_get_str(obj, "prompt", where, &prompt)) < 0) return rc;
    } else {
        /* HH: the common prefix, cut after its last "\n\nAssistant:" */
        size_t n = 0, cut = 0, al = sizeof A - 1;
        while (chosen[n] && chosen[n] == rejected[n]) n++;
        for (size_t i = 0; i + al <= n; i++)
            if (!memcmp(chosen + i, A, al)) cut = i + al;
        if (!cut)
            return rl_fail(RL_EFORMAT,
                           "%s: no \"prompt\" field and no common \"\\n\\nAssistant:\" prefix in "
                           "chosen and rejected (neither pairs JSONL nor an HH transcript)",
                           where);
        /* single turn: "\n\nHuman: X\n\nAssistant:" -> X */
        size_t hl = sizeof H - 1, start = 0, end = cut;
        int single = !memcmp(chosen, H, hl);
        for (size_t i = 1; single && i + hl <= cut; i++)
            if (!memcmp(chosen + i, H, hl)) single = 0;
        for (size_t i = 0; single && i + al < cut; i++)
            if (!memcmp(chosen + i, A, al)) single = 0;
        if (single) {
            start = hl + (chosen[hl] == ' ' ? 1 : 0);
            end = cut - al;
            if (end < start) end = start;
        }
        if (!(prompt_buf = strndup(chosen + start, end - start)))
            return rl_fail(RL_ENOMEM, "out of memory");
        prompt = prompt_buf;
        chosen += cut + (chosen[cut] == ' ' ? 1 : 0);
        rejected += cut + (rejected[cut] == ' ' ? 1 : 0);
        x->hh++;
    }
    if (json_object_get(obj, "margin")) {
        if ((rc = jsonl_get_num(obj, "margin", where, &margin)) < 0) goto out;
        if (!(margin >= 0 && margin <= 1)) {
            rc = rl_fail(RL_EFORMAT, "%s: margin: %g is outside [0, 1]", where, margin);
            goto out;
        }
    }
    if (json_object_get(obj, "prompt_id") &&
        (rc = jsonl_get_str(obj, "prompt_id", where, &pid)) < 0)
        goto out;
    char idbuf[32];
    if (!pid) {
        int num = prompt_number(x, prompt);
        if (num < 0) {
            rc = rl_fail(RL_ENOMEM, "out of memory");
            goto out;
        }
        snprintf(idbuf, sizeof idbuf, "imp-%d", num);
        pid = idbuf;
    }
    rc = jsonl_write(x->out, json_pack("{s:s,s:s,s:s,s:s,s:f}", "prompt_id", pid, "prompt", prompt,
                                       "chosen", chosen, "rejected", rejected, "margin", margin));
    if (rc == 0) x->pairs++;
out:
    free(prompt_buf);
    return rc;
}

typedef struct {
    const char *in, *out;
} import_args_t;

static const cli_opt_t import_opt_table[] = {
    CLI_OPT_STR(import_args_t, in, "in", NULL, "FILE.jsonl", "the pair dataset", CLI_OPT_REQUIRED),
    CLI_OPT_STR(import_args_t, out, "out", NULL, "P.jsonl", "our pairs JSONL", CLI_OPT_REQUIRED),
};

static const cli_opts_t import_pairs_opts = CLI_OPTS(
    "import-pairs", "rlhf import-pairs --in FILE.jsonl --out P.jsonl",
    "Reads an existing pair dataset and writes our pairs JSONL (see `rlhf pairs --help`). Each\n"
    "line is one of:\n"
    "  {\"prompt\", \"chosen\", \"rejected\"[, \"margin\"][, \"prompt_id\"]}   (TRL / OpenRLHF)\n"
    "  {\"chosen\", \"rejected\"}   HH transcripts: the prompt is the common prefix of the two, "
    "cut\n"
    "                           after its last \"\\n\\nAssistant:\"; the response is the rest, "
    "less\n"
    "                           one leading space. A single-turn prompt \"\\n\\nHuman: "
    "X\\n\\nAssistant:\"\n"
    "                           becomes X; a longer dialogue is kept as the transcript.\n"
    "Other fields are ignored. A missing margin is 1; a given one must be in [0, 1]. A missing\n"
    "prompt_id is \"imp-N\", shared by every pair with the same prompt text (N counts distinct\n"
    "prompts from 1), so a prompt's pairs stay together.\n",
    import_opt_table, NULL);

int cmd_import_pairs(int argc, char **argv) {
    const char *cmd = "import-pairs";
    import_args_t a = {0};
    int c = cli_opts_parse(&import_pairs_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    const char *in = a.in, *out = a.out;
    if (optind < argc) {
        fprintf(stderr, "rlhf %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return 2;
    }
    if (!in || !out) {
        fprintf(stderr, "rlhf %s: --in and --out are required\n", cmd);
        return 2;
    }
    jsonl_writer_t w;
    int rc;
    if ((rc = jsonl_open(&w, out)) < 0) return cli_fail(cmd, "writing", rc);
    imp_ctx_t x = {&w, NULL, NULL, 0, 0, 0, 0};
    long n = jsonl_read(in, import_line, &x);
    for (size_t i = 0; i < x.cap; i++) free(x.key[i]);
    free(x.key);
    free(x.id);
    if (n < 0) {
        jsonl_abort(&w);
        return cli_fail(cmd, "reading", (int)n);
    }
    if ((rc = jsonl_commit(&w)) < 0) return cli_fail(cmd, "writing", rc);
    return cli_print_json(json_pack("{s:s,s:I,s:I}", "out", out, "pairs", (json_int_t)x.pairs,
                                    "hh_transcripts", (json_int_t)x.hh));
}
