/*
 * cmd_task.c - `rlhf task`: writes the embedded default task's data sets (prompts, held-out
 * prompts, SFT demonstrations, a tokenizer corpus and the annotators' guidelines), each file
 * atomically.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/jsonl.h"
#include "base/rng.h"
#include "align/task.h"
#include "cli.h"

/* Turns the escapes backslash-n, backslash-t and a doubled backslash of a command-line
 * template into the characters they stand for, in place. */
static void task_unescape(char *s) {
    char *o = s;
    for (; *s; s++) {
        if (*s == '\\' && (s[1] == 'n' || s[1] == 't' || s[1] == '\\')) {
            s++;
            *o++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : '\\';
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
}

/* Writes the prompts i = 0..n-1 of `split` as {"id": PREFIX i+1, "prompt", "kind"}, and
 * "reference" (task_prompt_reference) for those that have one. */
static int task_write_prompts(const char *path, uint64_t seed, int split, long n, const char *tmpl,
                              const char *prefix) {
    jsonl_writer_t w;
    int rc = jsonl_open(&w, path);
    if (rc < 0) return rc;
    char bare[128], text[1024], id[32];
    for (long i = 0; rc >= 0 && i < n; i++) {
        task_prompt_t p;
        task_prompt_at(seed, split, i, &p);
        if ((rc = task_prompt_text(&p, bare, sizeof(bare))) < 0) break;
        if ((rc = task_render(tmpl, bare, text, sizeof(text))) < 0) break;
        snprintf(id, sizeof(id), "%s%ld", prefix, i + 1);
        json_t *o =
            json_pack("{s:s,s:s,s:s}", "id", id, "prompt", text, "kind", task_kind_names[p.kind]);
        char ref[32]; /* arithmetic's answer: what a reward program can check (README) */
        if (o && task_prompt_reference(&p, ref, sizeof ref) >= 0)
            json_object_set_new(o, "reference", json_string(ref));
        rc = o ? jsonl_write(&w, o) : rl_fail(RL_ENOMEM, "out of memory");
    }
    if (rc < 0) {
        jsonl_abort(&w);
        return rc;
    }
    return jsonl_commit(&w);
}

/* Writes sft.jsonl and corpus.txt (every demonstration, then every held-out prompt with a good
 * response, one per line). */
static int task_write_sft(const char *dir, uint64_t seed, long n, long n_heldout,
                          const task_mix_t *mix, const char *tmpl, long counts[TASK_NSTYLE]) {
    char path[4096], cpath[4096];
    snprintf(path, sizeof(path), "%s/sft.jsonl", dir);
    snprintf(cpath, sizeof(cpath), "%s/corpus.txt", dir);
    jsonl_writer_t w;
    fs_atomic_t cf = {.fd = -1};
    int rc = jsonl_open(&w, path);
    if (rc < 0) return rc;
    if ((rc = fs_atomic_open(&cf, cpath)) < 0) {
        jsonl_abort(&w);
        return rc;
    }
    char prompt[1024], comp[512], line[1600];
    for (long i = 0; rc >= 0 && i < n; i++) {
        int st;
        rc = task_sft_at(mix, seed, n, i, tmpl, prompt, sizeof(prompt), comp, sizeof(comp), &st);
        if (rc < 0) break;
        counts[st]++;
        int len = snprintf(line, sizeof(line), "%s%s\n", prompt, comp);
        if ((rc = fs_atomic_write(&cf, line, (size_t)len)) < 0) break;
        json_t *o = json_pack("{s:s,s:s,s:s}", "prompt", prompt, "completion", comp, "style",
                              task_style_names[st]);
        rc = o ? jsonl_write(&w, o) : rl_fail(RL_ENOMEM, "out of memory");
    }
    for (long i = 0; rc >= 0 && i < n_heldout; i++) {
        task_prompt_t p;
        char bare[128];
        task_prompt_at(seed, TASK_SPLIT_HELDOUT, i, &p);
        if ((rc = task_prompt_text(&p, bare, sizeof(bare))) < 0 ||
            (rc = task_render(tmpl, bare, prompt, sizeof(prompt))) < 0 ||
            (rc = task_response(&p, TASK_GOOD, seed, (uint64_t)i, comp, sizeof(comp))) < 0)
            break;
        int len = snprintf(line, sizeof(line), "%s%s\n", prompt, comp);
        rc = fs_atomic_write(&cf, line, (size_t)len);
    }
    if (rc < 0) {
        jsonl_abort(&w);
        fs_atomic_abort(&cf);
        return rc;
    }
    if ((rc = jsonl_commit(&w)) < 0) {
        fs_atomic_abort(&cf);
        return rc;
    }
    return fs_atomic_commit(&cf);
}

typedef struct {
    const char *out, *tmpl;
    long seed, n_prompts, n_heldout, n_sft;
    float bad;
    char tmpl_buf[1024]; /* --template with its escapes turned into characters */
} task_args_t;

/* --template STR: must hold {prompt}; \n, \t stand for newline and tab. */
static int task_opt_template(void *args, const char *value) {
    task_args_t *a = args;
    if (!strstr(value, "{prompt}")) return rl_fail(RL_EINVAL, "must contain {prompt}");
    if (strlen(value) >= sizeof a->tmpl_buf) return rl_fail(RL_EINVAL, "too long");
    if (a) {
        snprintf(a->tmpl_buf, sizeof a->tmpl_buf, "%s", value);
        task_unescape(a->tmpl_buf);
        a->tmpl = a->tmpl_buf;
    }
    return 0;
}

#define TL(f, name, def, help) CLI_OPT_LONG(task_args_t, f, name, 0, 10000000, def, "N", help)
static const cli_opt_t task_opt_table[] = {
    CLI_OPT_STR(task_args_t, out, "out", NULL, "DIR", "where to write the task", CLI_OPT_REQUIRED),
    CLI_OPT_LONG(task_args_t, seed, "seed", 0, LONG_MAX, "1", "S", "task seed"),
    TL(n_prompts, "prompts", "256", "training prompts (RLHF and stage 1)"),
    TL(n_heldout, "heldout", "48", "held-out prompts (evaluation only)"),
    TL(n_sft, "sft", "4000", "SFT demonstrations"),
    CLI_OPT_FLOAT(task_args_t, bad, "bad-frac", 0, 1, "0.5", "F",
                  "share of deliberately bad demonstrations"),
    CLI_OPT_CALL("template", "STR",
                 "prompt rendering, {prompt} the instruction (default: the Anthropic HH form "
                 "\"\\n\\nHuman: {prompt}\\n\\nAssistant:\")",
                 task_opt_template, 0),
};
#undef TL

const cli_opts_t cli_task_opts = CLI_OPTS(
    "task", "rlhf task --out DIR [options]",
    "Writes the embedded default task (arithmetic, naming items of a category, short replies;\n"
    "judged on correct, polite, concise, on-topic) into DIR, each file atomically:\n"
    "  prompts.jsonl          N prompts {\"id\",\"prompt\",\"kind\"} from the train split (RLHF)\n"
    "  prompts_heldout.jsonl  M prompts from the disjoint held-out split (evaluation)\n"
    "  sft.jsonl              N demonstrations {\"prompt\",\"completion\",\"style\"}: a share F "
    "of\n"
    "                         bad ones (wrong, rude, rambling, off-topic in equal parts)\n"
    "  corpus.txt             text to train a tokenizer on (rlhf tokenizer-train)\n"
    "  guidelines.md          the written criteria annotators follow\n"
    "Prompts are rendered in --template, where \\n, \\t are newline and tab; completions start\n"
    "with a space.\n",
    task_opt_table, NULL);

int cmd_task(int argc, char **argv) {
    const char *cmd = "task";
    task_args_t a = {.tmpl = TASK_TEMPLATE_HH};
    int prc = cli_opts_parse(&cli_task_opts, argc, argv, &a);
    if (prc != CLI_OPTS_GO) return prc;
    const char *out = a.out, *tmpl = a.tmpl;
    long seed = a.seed, n_prompts = a.n_prompts, n_heldout = a.n_heldout, n_sft = a.n_sft;
    float bad = a.bad;
    if (!out) {
        fprintf(stderr, "rlhf %s: --out is required\n", cmd);
        return 2;
    }
    task_mix_t mix;
    task_mix_even(&mix, bad);
    long counts[TASK_NSTYLE] = {0};
    char path[4096];
    int rc = fs_mkdir_p(out);
    if (rc < 0) return cli_fail(cmd, "creating the output directory", rc);
    snprintf(path, sizeof(path), "%s/prompts.jsonl", out);
    rc = task_write_prompts(path, (uint64_t)seed, TASK_SPLIT_TRAIN, n_prompts, tmpl, "p");
    if (rc < 0) return cli_fail(cmd, "writing prompts", rc);
    snprintf(path, sizeof(path), "%s/prompts_heldout.jsonl", out);
    rc = task_write_prompts(path, (uint64_t)seed, TASK_SPLIT_HELDOUT, n_heldout, tmpl, "h");
    if (rc < 0) return cli_fail(cmd, "writing held-out prompts", rc);
    rc = task_write_sft(out, (uint64_t)seed, n_sft, n_heldout, &mix, tmpl, counts);
    if (rc < 0) return cli_fail(cmd, "writing demonstrations", rc);
    snprintf(path, sizeof(path), "%s/guidelines.md", out);
    char ver[128];
    int vl = snprintf(ver, sizeof(ver), "\nGuideline version: %s\n", task_guideline_version);
    fs_atomic_t g = {.fd = -1};
    if ((rc = fs_atomic_open(&g, path)) == 0 &&
        (rc = fs_atomic_write(&g, task_guidelines, strlen(task_guidelines))) == 0 &&
        (rc = fs_atomic_write(&g, ver, (size_t)vl)) == 0)
        rc = fs_atomic_commit(&g);
    if (rc < 0) {
        fs_atomic_abort(&g);
        return cli_fail(cmd, "writing guidelines", rc);
    }
    json_t *st = json_object();
    for (int s = 0; s < TASK_NSTYLE; s++)
        json_object_set_new(st, task_style_names[s], json_integer(counts[s]));
    return cli_print_json(json_pack("{s:s,s:I,s:I,s:I,s:I,s:o,s:i,s:i,s:s}", "out", out, "seed",
                                    (json_int_t)seed, "prompts", (json_int_t)n_prompts, "heldout",
                                    (json_int_t)n_heldout, "sft", (json_int_t)n_sft, "styles", st,
                                    "distinct_train_prompts",
                                    task_prompt_count(TASK_SPLIT_TRAIN, TASK_ARITH) +
                                        task_prompt_count(TASK_SPLIT_TRAIN, TASK_NAME) +
                                        task_prompt_count(TASK_SPLIT_TRAIN, TASK_REPLY),
                                    "distinct_heldout_prompts",
                                    task_prompt_count(TASK_SPLIT_HELDOUT, TASK_ARITH) +
                                        task_prompt_count(TASK_SPLIT_HELDOUT, TASK_NAME) +
                                        task_prompt_count(TASK_SPLIT_HELDOUT, TASK_REPLY),
                                    "guideline_version", task_guideline_version));
}

/* ---- rlhf gold-judge: the gold judge as a reward program ------------------------------------ */

/*
 * `rlhf gold-judge`: the embedded task's gold judge speaking the reward-program protocol
 * (align/rprog.h): for each line {"prompt": TEXT, "completion": TEXT, ...} on stdin, one line
 * {"score": task_gold_text(prompt, completion), "details": {criterion: score...}} on stdout,
 * flushed; the score printed with 17 significant digits, so that it reads back as the very
 * double the in-process judge computes. A line it cannot read gets {"error": ...} and the next
 * line is read. Exit 0 at the end of its input.
 */
int cmd_gold_judge(int argc, char **argv) {
    if (argc > 1) {
        int help = !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h");
        fprintf(help ? stdout : stderr,
                "usage: rlhf gold-judge  (JSON lines {prompt, completion} on stdin, {score, "
                "details} on stdout: the embedded task's gold judge as a reward program)\n");
        return help ? 0 : 2;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        json_error_t e;
        json_t *o = json_loadb(line, (size_t)n, 0, &e);
        const char *p = json_string_value(json_object_get(o, "prompt"));
        const char *c = json_string_value(json_object_get(o, "completion"));
        if (!p || !c) {
            json_t *err = json_pack("{s:s}", "error",
                                    o ? "needs string \"prompt\" and \"completion\"" : e.text);
            char *t = json_dumps(err, JSON_COMPACT);
            printf("%s\n", t ? t : "{\"error\":\"unreadable line\"}");
            free(t);
            json_decref(err);
        } else {
            float sc[TASK_NCRIT];
            task_score(p, c, sc);
            printf("{\"score\":%.17g,\"details\":{", task_gold(sc));
            for (int k = 0; k < TASK_NCRIT; k++)
                printf("%s\"%s\":%.9g", k ? "," : "", task_criteria_names[k], (double)sc[k]);
            printf("}}\n");
        }
        json_decref(o);
        if (fflush(stdout) != 0) break; /* the runner is gone */
    }
    free(line);
    return 0;
}
