/*
 * cmd_report.c - `rlhf report --run DIR`: the run's figures in one Markdown report with plots.
 *
 * Reads what the stages left in the run directory - agreement.json (aggregate), completions and
 * annotations (for each annotator's agreement with the gold judge), rm_eval.json (eval-rm), the
 * reward model's training log, ppo/metrics.jsonl (ppo --gold) and eval.json (eval-policy), and
 * where the run has them grpo/metrics.jsonl, dpo/dpo_stats.json and their evaluations
 * (eval_grpo.json, eval_dpo.json: PPO's, GRPO's and DPO's figures side by side) - and
 * writes DIR/report.md, linking SVG plots that gnuplot draws from data files written next to
 * them (DIR/plots/). Missing inputs leave their section out with a note; a missing gnuplot leaves
 * the plots out, said in the report. The Markdown is also printed.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "align/annot.h"
#include "cli.h"
#include "base/err.h"
#include "base/fs.h"
#include "align/rank.h"
#include "align/task.h"

static json_t *load(const char *dir, const char *name) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return json_load_file(p, 0, NULL);
}

static double num(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

/* Each annotator's (and the consensus') pairwise agreement with the gold judge's ranking; the
 * consensus' figure into *consensus (NaN when there is none). */
static void gold_agreement(const char *dir, FILE *md, double *consensus) {
    *consensus = NAN;
    char cp[PATH_MAX + 64], ap[PATH_MAX + 64];
    snprintf(cp, sizeof cp, "%s/completions.jsonl", dir);
    snprintf(ap, sizeof ap, "%s/annotations.jsonl", dir);
    annot_comp_t c = {0};
    annot_store_t s;
    if (annot_comp_load(&c, cp) < 0) {
        fprintf(md, "_(no completions to compare with the gold judge: %s)_\n\n", rl_errmsg());
        return;
    }
    annot_store_init(&s, &c);
    char now[40];
    annot_time_now(now, sizeof now);
    if (annot_store_read_jsonl(&s, ap, now, task_guideline_version) < 0) {
        fprintf(md, "_(no annotations: %s)_\n\n", rl_errmsg());
        annot_store_free(&s);
        annot_comp_free(&c);
        return;
    }
    /* the gold ranks of every prompt's completions */
    double **gold = calloc((size_t)c.n, sizeof *gold);
    for (int p = 0; gold && p < c.n; p++) {
        int k = c.v[p].k, *lv = malloc((size_t)k * sizeof *lv);
        double *g = malloc((size_t)k * sizeof *g);
        gold[p] = malloc((size_t)k * sizeof **gold);
        if (!lv || !g || !gold[p]) {
            free(lv), free(g);
            continue;
        }
        for (int i = 0; i < k; i++) g[i] = task_gold_text(c.v[p].prompt, c.v[p].text[i]);
        for (int i = 0; i < k; i++) { /* level = number of strictly better completions */
            lv[i] = 0;
            for (int j = 0; j < k; j++) lv[i] += g[j] > g[i] + 1e-12;
        }
        rank_fractional(lv, k, gold[p]);
        free(lv), free(g);
    }
    typedef struct {
        const char *id;
        long agree, strict, tied;
    } acc_t;
    acc_t *a = calloc((size_t)s.n + 1, sizeof *a);
    int na = 0;
    long ca = 0, cs = 0, ct = 0;
    double *r = NULL;
    for (int i = 0; a && i < s.n; i++) {
        const annot_rec_t *rec = &s.v[i];
        if (rec->skip || !gold || !gold[rec->prompt]) continue;
        int j = 0;
        while (j < na && strcmp(a[j].id, rec->annotator)) j++;
        if (j == na) a[na++].id = rec->annotator;
        double *nr = realloc(r, (size_t)rec->k * sizeof *r);
        if (!nr) break;
        r = nr;
        rank_fractional(rec->level, rec->k, r);
        rank_pair_agreement(r, gold[rec->prompt], rec->k, &a[j].agree, &a[j].strict, &a[j].tied);
    }
    /* the consensus (mean rank over a prompt's annotators) against gold */
    for (int p = 0; gold && p < c.n; p++) {
        int k = c.v[p].k, nr = 0;
        double *mean = calloc((size_t)k, sizeof *mean), *rr = malloc((size_t)k * sizeof *rr);
        for (int i = 0; mean && rr && i < s.n; i++) {
            if (s.v[i].prompt != p || s.v[i].skip) continue;
            rank_fractional(s.v[i].level, k, rr);
            for (int q = 0; q < k; q++) mean[q] += rr[q];
            nr++;
        }
        if (nr && gold[p]) rank_pair_agreement(mean, gold[p], k, &ca, &cs, &ct);
        free(mean), free(rr);
    }
    free(r);
    fprintf(md, "| annotator | agreement with gold | comparisons |\n| --- | --- | --- |\n");
    for (int j = 0; j < na; j++)
        fprintf(md, "| %s | %.3f | %ld |\n", a[j].id,
                a[j].strict ? (double)a[j].agree / a[j].strict : NAN, a[j].strict);
    fprintf(md, "| consensus (mean rank) | %.3f | %ld |\n\n", cs ? (double)ca / cs : NAN, cs);
    if (cs) *consensus = (double)ca / cs;
    free(a);
    for (int p = 0; gold && p < c.n; p++) free(gold[p]);
    free(gold);
    annot_store_free(&s);
    annot_comp_free(&c);
}

/* Runs gnuplot on `script`; 0 on success. */
/* A table cell: scale * the number `key` of o with fmt, or "-" without o. */
static void fmt_cell(char *out, json_t *o, const char *key, double scale, const char *fmt) {
    if (o)
        snprintf(out, 32, fmt, scale * num(o, key));
    else
        snprintf(out, 32, "-");
}

/* The DPO section (dpo/dpo_stats.json): its training figures; nothing when the run has no DPO
 * stage (its evaluation is in report_compare's table). */
static void report_dpo(FILE *md, const char *dir) {
    json_t *st = load(dir, "dpo/dpo_stats.json");
    if (!st) return;
    fprintf(md, "## DPO\n\n");
    {
        json_t *h = json_object_get(st, "heldout"), *t = json_object_get(st, "train");
        const char *loss = json_string_value(json_object_get(st, "loss"));
        const char *by = json_string_value(json_object_get(st, "reference_by"));
        fprintf(md,
                "Loss %s, beta %g, label smoothing %g; %d steps of %d pairs (lr %g); the reference "
                "logprobs by %s (%.1f s), the steps on %d learner shard(s) (%.1f s; 0 shards: in "
                "process).\n\n",
                loss ? loss : "?", num(st, "beta"), num(st, "label_smoothing"),
                (int)num(st, "steps"), (int)num(st, "batch"), num(st, "lr"), by ? by : "?",
                num(st, "seconds_reference"), (int)num(st, "learner_shards"),
                num(st, "seconds_train"));
        fprintf(md,
                "| pairs | count | loss | reward accuracy | rewards/chosen | rewards/rejected | "
                "margin |\n| --- | --- | --- | --- | --- | --- | --- |\n");
        json_t *sp[2] = {h, t};
        for (int i = 0; i < 2; i++)
            fprintf(md, "| %s | %d | %.4f | %.1f%% | %.3f | %.3f | %.3f |\n",
                    i ? "training" : "held-out", (int)num(sp[i], "pairs"), num(sp[i], "loss"),
                    100 * num(sp[i], "rewards/accuracies"), num(sp[i], "rewards/chosen"),
                    num(sp[i], "rewards/rejected"), num(sp[i], "rewards/margins"));
        fprintf(md,
                "\n(DPO's implicit rewards: beta (log pi - log ref) of a completion; the "
                "accuracy counts the pairs whose chosen completion has the higher reward.)\n\n");
    }
    json_decref(st);
}

/* The GRPO section (grpo/metrics.jsonl): the training, from its first iteration to its last;
 * nothing when the run has no grpo stage. */
static void report_grpo(FILE *md, const char *dir) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%.4000s/grpo/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[65536];
    json_t *first = NULL, *last = NULL;
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        if (!o) continue;
        n++;
        if (!first) {
            first = o;
        } else {
            json_decref(last);
            last = o;
        }
    }
    fclose(f);
    if (!last) last = json_incref(first);
    fprintf(md, "## GRPO\n\n");
    if (!first) {
        fprintf(md, "_(grpo/metrics.jsonl has no iteration)_\n\n");
        return;
    }
    /* the training signal: the reward program's mean when there is one (the gold judge), else
     * the score (reward model) */
    const char *sig = json_object_get(first, "reward_program_mean") ? "the reward program's"
                                                                    : "the reward model's";
    double s0 = json_object_get(first, "reward_program_mean")
                    ? num(first, "reward_program_mean")
                    : num(json_object_get(first, "ppo"), "score_mean");
    double s1 = json_object_get(last, "reward_program_mean")
                    ? num(last, "reward_program_mean")
                    : num(json_object_get(last, "ppo"), "score_mean");
    fprintf(md,
            "%d iterations of %d rollouts (a group of samples per prompt, advantages within "
            "the group, no value model). The mean reward (%s) %.3f at the first iteration, "
            "%.3f at the last; KL (k1) to SFT on the last rollouts %.3f nats per completion.\n\n",
            n, (int)num(last, "rollouts"), sig, s0, s1, num(json_object_get(last, "ppo"), "kl_k1"));
    json_decref(first);
    json_decref(last);
}

/* The aligned policies against the SFT policy, side by side: PPO's (eval.json; its column kept,
 * "-", when missing), GRPO's (eval_grpo.json) and DPO's (eval_dpo.json) where the run has
 * them, and each one's gold win rate and KL; nothing when the run has neither GRPO nor DPO. */
static void report_compare(FILE *md, const char *dir, json_t *ev) {
    const char *names[3] = {"PPO", "GRPO", "DPO"};
    json_t *e[3] = {ev, load(dir, "eval_grpo.json"), load(dir, "eval_dpo.json")};
    if (!e[1] && !e[2]) return;
    json_t *base = e[1] ? e[1] : e[2]; /* the SFT column: the same policy in each evaluation */
    fprintf(md, "## %s against the SFT policy (held-out prompts, gold judge)\n\n",
            e[1] && e[2] ? "PPO, GRPO and DPO"
            : e[1]       ? "PPO and GRPO"
                         : "PPO and DPO");
    fprintf(md, "| figure |");
    for (int i = 0; i < 3; i++)
        if (i == 0 || e[i]) fprintf(md, " %s |", names[i]);
    fprintf(md, " SFT |\n| --- |");
    for (int i = 0; i < 3; i++)
        if (i == 0 || e[i]) fprintf(md, " --- |");
    fprintf(md, " --- |\n");
    static const struct {
        const char *label, *key, *fmt, *sft_key;
        double scale;
    } rows[] = {
        {"gold win rate over SFT", "win_rate", "%.1f%%", NULL, 100},
        {"KL to SFT (nats per completion)", "kl", "%.3f", "", 1},
        {"gold score", "gold_policy", "%.3f", "gold_baseline", 1},
    };
    char c[32];
    for (int r = 0; r < 3 + TASK_NCRIT + 1; r++) {
        int crit = r >= 3 && r < 3 + TASK_NCRIT, len = r == 3 + TASK_NCRIT;
        const char *label = crit  ? task_criteria_names[r - 3]
                            : len ? "length (tokens)"
                                  : rows[r].label;
        fprintf(md, "| %s |", label);
        for (int i = 0; i < 3; i++) {
            if (i && !e[i]) continue;
            json_t *o = crit ? (e[i] ? json_object_get(e[i], "criteria_policy") : NULL) : e[i];
            const char *key = crit  ? task_criteria_names[r - 3]
                              : len ? "length_policy"
                                    : rows[r].key;
            fmt_cell(c, o, key, crit || len ? 1 : rows[r].scale,
                     len    ? "%.1f"
                     : crit ? "%.3f"
                            : rows[r].fmt);
            fprintf(md, " %s |", c);
        }
        if (crit)
            fprintf(md, " %.3f |\n",
                    num(json_object_get(base, "criteria_baseline"), task_criteria_names[r - 3]));
        else if (len)
            fprintf(md, " %.1f |\n", num(base, "length_baseline"));
        else if (!rows[r].sft_key)
            fprintf(md, " |\n");
        else if (!rows[r].sft_key[0])
            fprintf(md, " 0 |\n");
        else
            fprintf(md, " %.3f |\n", num(base, rows[r].sft_key));
    }
    fprintf(md, "\n");
    for (int i = 1; i < 3; i++)
        if (e[i])
            fprintf(md,
                    "**Gold win rate of %s over SFT: %.1f%%** of %d held-out prompts (ties "
                    "count half; %.1f%% of single samples). KL(%s || SFT) = %.3f nats per "
                    "completion (%.4f per token).\n\n",
                    names[i], 100 * num(e[i], "win_rate"), (int)num(e[i], "prompts"),
                    100 * num(e[i], "win_rate_samples"), names[i], num(e[i], "kl"),
                    num(e[i], "kl_per_token"));
    json_decref(e[1]);
    json_decref(e[2]);
}

static int gnuplot(const char *script) {
    pid_t p = fork();
    if (p == 0) {
        execlp("gnuplot", "gnuplot", script, (char *)NULL);
        _exit(127);
    }
    int st;
    if (p < 0 || waitpid(p, &st, 0) < 0) return -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

typedef struct {
    const char *dir;
} report_args_t;

static const cli_opt_t report_opt_table[] = {
    CLI_OPT_STR(report_args_t, dir, "run", NULL, "DIR", "the run directory", CLI_OPT_REQUIRED),
};

const cli_opts_t cli_report_opts = CLI_OPTS(
    "report", "rlhf report --run DIR",
    "Writes DIR/report.md (and prints it) with the run's figures: annotator agreement with each\n"
    "other and with the gold judge, reward-model accuracy against the agreement ceiling, the PPO\n"
    "policy against the SFT policy by the gold judge with the KL between them, reward / gold /\n"
    "KL over the PPO iterations and the over-optimisation picture (plots drawn with gnuplot into\n"
    "DIR/plots/), and sample completions before and after.\n",
    report_opt_table, NULL);

int cmd_report(int argc, char **argv) {
    report_args_t a = {0};
    int c = cli_opts_parse(&cli_report_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    const char *dir = a.dir;
    if (!dir) {
        fprintf(stderr, "rlhf report: --run is required\n");
        return cli_usage_error("report");
    }
    char *md_text = NULL;
    size_t md_len = 0;
    FILE *md = open_memstream(&md_text, &md_len);
    if (!md) return cli_fail("report", "a memory stream", RL_ENOMEM);
    char plots[PATH_MAX + 16], path[PATH_MAX + 64];
    snprintf(plots, sizeof plots, "%s/plots", dir);
    fs_mkdir_p(plots);
    fprintf(md, "# RLHF run report\n\nRun directory: `%s`\n\n", dir);

    /* ---- stage 1 */
    json_t *ag = load(dir, "agreement.json");
    fprintf(md, "## Stage 1: annotators\n\n");
    double consensus_gold = NAN;
    if (ag) {
        fprintf(md,
                "%d prompts, %d annotators, %.1f rankings per prompt.\n\n"
                "| figure | value |\n| --- | --- |\n"
                "| pairwise agreement between annotators (the ceiling) | %.3f |\n"
                "| Krippendorff's alpha (ordinal) | %.3f |\n| mean Kendall's W | %.3f |\n\n",
                (int)num(ag, "prompts"), (int)num(ag, "annotators"), num(ag, "overlap_mean"),
                num(ag, "pairwise_agreement"), num(ag, "krippendorff_alpha_ordinal"),
                num(ag, "mean_kendall_w"));
        fprintf(md, "Each annotator against the gold judge (the criteria without noise, used only "
                    "for evaluation):\n\n");
        gold_agreement(dir, md, &consensus_gold);
    } else {
        fprintf(md, "_(no agreement.json)_\n\n");
    }

    /* ---- stage 2 */
    json_t *rm = load(dir, "rm_eval.json");
    fprintf(md, "## Stage 2: reward model\n\n");
    if (rm) {
        double acc = num(rm, "accuracy"), ceil = num(rm, "ceiling");
        double acc_gold = num(rm, "accuracy_gold");
        fprintf(md,
                "| figure | value |\n| --- | --- |\n| held-out pairwise accuracy | %.3f |\n"
                "| annotator agreement ceiling | %.3f |\n| accuracy - ceiling | %+.1f points |\n",
                acc, ceil, 100 * (acc - ceil));
        if (!isnan(acc_gold))
            fprintf(md,
                    "| held-out accuracy against the gold judge | %.3f of %d pairs |\n"
                    "| the consensus' agreement with the gold judge | %.3f |\n",
                    acc_gold, (int)num(rm, "gold_pairs"), consensus_gold);
        fprintf(md,
                "| expected calibration error | %.3f |\n| held-out prompts / pairs | %d / %d |\n"
                "| reward mean / std | %.3f / %.3f |\n\n"
                "The held-out pairs carry the annotators' consensus; the ceiling is how often one "
                "annotator agrees with another. With several rankings per prompt the consensus is "
                "less noisy than any one annotator, and a reward model trained on it can pass "
                "that figure. Against the gold judge (the criteria without noise, which PPO is "
                "judged by) the reward model is the proxy PPO optimises: its accuracy there is "
                "bounded by what its training labels, the consensus, get right.\n\n",
                num(rm, "ece"), (int)num(rm, "prompts"), (int)num(rm, "pairs"),
                num(rm, "reward_mean"), num(rm, "reward_std"));
        /* training accuracy per step from the stage log */
        snprintf(path, sizeof path, "%s/logs/train_rm.log", dir);
        FILE *f = fopen(path, "r");
        snprintf(path, sizeof path, "%s/rm_train.dat", plots);
        FILE *d = f ? fopen(path, "w") : NULL;
        char line[4096];
        int rows = 0;
        while (f && d && fgets(line, sizeof line, f)) {
            json_t *o = line[0] == '{' ? json_loads(line, 0, NULL) : NULL;
            if (json_is_integer(json_object_get(o, "step")) &&
                json_is_number(json_object_get(o, "accuracy"))) {
                fprintf(d, "%lld %g %g\n",
                        (long long)json_integer_value(json_object_get(o, "step")),
                        num(o, "accuracy"), num(o, "loss"));
                rows++;
            }
            json_decref(o);
        }
        if (f) fclose(f);
        if (d) fclose(d);
        if (rows) {
            snprintf(path, sizeof path, "%s/rm.gp", plots);
            FILE *g = fopen(path, "w");
            if (g) {
                fprintf(g,
                        "set terminal svg size 720,400 dynamic\nset output '%s/rm_accuracy.svg'\n"
                        "set title 'Reward model: training accuracy per step'\n"
                        "set xlabel 'step'\nset ylabel 'pairwise accuracy'\nset yrange [0:1]\n"
                        "set key bottom right\n"
                        "plot '%s/rm_train.dat' using 1:2 with lines title 'training batch', "
                        "%g with lines dt 2 title 'held-out accuracy', "
                        "%g with lines dt 3 title 'annotator agreement ceiling'\n",
                        plots, plots, acc, isfinite(ceil) ? ceil : 0);
                fclose(g);
                if (gnuplot(path) == 0)
                    fprintf(md, "![reward-model accuracy](plots/rm_accuracy.svg)\n\n");
                else
                    fprintf(md, "_(gnuplot is not available: plots left out)_\n\n");
            }
        }
    } else {
        fprintf(md, "_(no rm_eval.json)_\n\n");
    }

    /* ---- stage 3 */
    fprintf(md, "## Stage 3: PPO\n\n");
    snprintf(path, sizeof path, "%s/ppo/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    snprintf(path, sizeof path, "%s/ppo.dat", plots);
    FILE *d = f ? fopen(path, "w") : NULL;
    char line[65536];
    int iters = 0;
    double t_gen = 0, t_score = 0, t_upd = 0, t_math = 0, t_pub = 0, t_all = 0;
    while (f && d && fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL), *p = json_object_get(o, "ppo");
        if (!p) {
            json_decref(o);
            continue;
        }
        double kl = num(p, "kl_k1");
        fprintf(d, "%d %g %g %g %g %g\n", (int)num(o, "iteration") + 1, num(p, "score_mean"),
                num(o, "gold_mean"), kl, sqrt(fmax(kl, 0)), num(p, "kl_coef"));
        t_gen += num(o, "ms_generate"), t_score += num(o, "ms_score");
        t_upd += num(o, "ms_update"), t_math += num(o, "ms_update_math");
        t_pub += num(o, "ms_weight_publish"), t_all += num(o, "ms_iteration");
        iters++;
        json_decref(o);
    }
    if (f) fclose(f);
    if (d) fclose(d);
    if (iters) {
        fprintf(
            md,
            "%d iterations. Time per iteration (mean): generate %.0f ms, score %.0f ms, update "
            "%.0f ms (of which the update's math %.0f ms and the weight publish %.1f ms), total "
            "%.0f ms.\n\n",
            iters, t_gen / iters, t_score / iters, t_upd / iters, t_math / iters, t_pub / iters,
            t_all / iters);
        snprintf(path, sizeof path, "%s/ppo.gp", plots);
        FILE *g = fopen(path, "w");
        if (g) {
            fprintf(g,
                    "set terminal svg size 720,400 dynamic\nset key bottom right\n"
                    "set output '%s/ppo_iterations.svg'\n"
                    "set title 'PPO: reward-model score, gold score and KL per iteration'\n"
                    "set xlabel 'iteration'\nset ylabel 'score'\nset y2label 'KL to SFT (nats "
                    "per completion)'\nset ytics nomirror\nset y2tics\n"
                    "plot '%s/ppo.dat' using 1:2 with linespoints title 'reward model (proxy)', "
                    "'' using 1:3 with linespoints title 'gold judge', "
                    "'' using 1:4 axes x1y2 with lines dt 2 title 'KL (k1)'\n"
                    "set output '%s/overoptimisation.svg'\nunset y2tics\nunset y2label\n"
                    "set title 'Proxy and gold score against sqrt(KL) from the SFT policy'\n"
                    "set xlabel 'sqrt(KL)'\nset ylabel 'score'\n"
                    "plot '%s/ppo.dat' using 5:2 with points pt 7 title 'reward model (proxy)', "
                    "'' using 5:3 with points pt 5 title 'gold judge'\n",
                    plots, plots, plots, plots);
            fclose(g);
            if (gnuplot(path) == 0)
                fprintf(md, "![PPO iterations](plots/ppo_iterations.svg)\n\n"
                            "![over-optimisation](plots/overoptimisation.svg)\n\n");
            else
                fprintf(md, "_(gnuplot is not available: plots left out)_\n\n");
        }
    } else {
        fprintf(md, "_(no ppo/metrics.jsonl)_\n\n");
    }

    /* ---- evaluation */
    json_t *ev = load(dir, "eval.json");
    fprintf(md, "## The PPO policy against the SFT policy (held-out prompts, gold judge)\n\n");
    if (ev) {
        fprintf(md,
                "| figure | PPO | SFT |\n| --- | --- | --- |\n| gold score | %.3f | %.3f |\n"
                "| reward-model score | %.3f | %.3f |\n| length (tokens) | %.1f | %.1f |\n",
                num(ev, "gold_policy"), num(ev, "gold_baseline"), num(ev, "rm_policy"),
                num(ev, "rm_baseline"), num(ev, "length_policy"), num(ev, "length_baseline"));
        json_t *cp = json_object_get(ev, "criteria_policy"),
               *cb = json_object_get(ev, "criteria_baseline");
        for (int k = 0; k < TASK_NCRIT; k++)
            fprintf(md, "| %s | %.3f | %.3f |\n", task_criteria_names[k],
                    num(cp, task_criteria_names[k]), num(cb, task_criteria_names[k]));
        fprintf(md,
                "\n**Gold win rate of PPO over SFT: %.1f%%** of %d held-out prompts (ties count "
                "half; %.1f%% of single samples). KL(PPO || SFT) = %.3f nats per completion (%.4f "
                "per token).\n\n",
                100 * num(ev, "win_rate"), (int)num(ev, "prompts"),
                100 * num(ev, "win_rate_samples"), num(ev, "kl"), num(ev, "kl_per_token"));
        fprintf(md, "### Sample completions, before (SFT) and after (PPO)\n\n");
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(ev, "examples"), i, e) {
            const char *p0 = json_string_value(json_object_get(e, "prompt"));
            char *pr = strdup(p0 ? p0 : "");
            for (char *q = pr; q && *q; q++)
                if (*q == '\n') *q = ' ';
            fprintf(md, "- prompt: `%s`\n  - SFT (gold %.2f): `%s`\n  - PPO (gold %.2f): `%s`\n",
                    pr ? pr : "", num(e, "baseline_gold"),
                    json_string_value(json_object_get(e, "baseline")), num(e, "policy_gold"),
                    json_string_value(json_object_get(e, "policy")));
            free(pr);
        }
        fprintf(md, "\n");
    } else {
        fprintf(md, "_(no eval.json)_\n\n");
    }
    report_grpo(md, dir);
    report_dpo(md, dir);
    report_compare(md, dir, ev);
    json_decref(ag);
    json_decref(rm);
    json_decref(ev);
    snprintf(path, sizeof path, "%s/report.md", dir);
    int rc = fclose(md) == 0 && md_text ? fs_write_atomic(path, md_text, md_len)
                                        : rl_fail(RL_ENOMEM, "out of memory");
    if (rc == 0) fwrite(md_text, 1, md_len, stdout);
    free(md_text);
    return rc < 0 ? cli_fail("report", "writing the report", rc) : 0;
}
