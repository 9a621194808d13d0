/*
 * cmd_run.c - `rlhf run CONFIG`: the whole pipeline, compiled into a plan that a master runs.
 *
 *   rlhf run CONFIG [--master EP] [--name NAME] [--detach] [--set KEY=VALUE]... [--run-dir DIR]
 *               [--only STAGE] [--list-keys] [--print-plan]
 *
 * CONFIG is a YAML file (see deploy/demo.yaml): `run_dir`, `seed`, `stages` (the ordered list
 * of stages to run) and one mapping per stage whose keys are that stage's options. A stage's
 * keys are its command's option table (cli_opts.h; `max_new` for --max-new) less the options
 * the stage fixes itself, and for ppo and grpo (the same command: a PPO-kind stage, each with
 * its own section of keys) the PPO settings (ppo_settings); run_defaults below holds
 * the run's own defaults where they differ from the command's. `--list-keys` prints every key
 * with its type, default, range and meaning (the README's configuration reference is that
 * output). Every value is checked against its type and range when the file is read, before
 * any stage runs; an unknown key, a bad value or a misshapen entry is an error naming the file
 * and line. `--set` overrides any key.
 *
 * Nothing runs here: the command compiles the config into a PLAN - each stage as the `rlhf`
 * subcommand line that runs it, with options from its keys and {run} for the run directory - and
 * submits it to a master (--master, or the local cluster of the data directory, dirname of
 * run_dir), which journals it and runs the stages in DATA_DIR/NAME as STAGE jobs on a stage
 * worker, and the PPO loop itself (master/master_run.h). A stage's input paths default to the
 * outputs of the stages before it, and can be pointed elsewhere (for example `sft.model` at a
 * Hugging Face GPT-2 directory). Submitting the same run again continues it: finished stages are
 * skipped by the master. The command then follows the run (runs_submit, cmd_runs.c): the run log
 * as it grows and, on a terminal, one progress line with the stage, its progress and an ETA;
 * Ctrl-C detaches and the run goes on (rlhf status / logs / wait / cancel).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "base/cfg.h"
#include "cli.h"
#include "base/err.h"
#include "base/fs.h"

/* ---- stages ------------------------------------------------------------------------------- */

typedef struct {
    const char *name, *summary;
    const char *cmd;        /* rlhf subcommand */
    const cli_opts_t *opts; /* its option table: the stage's keys (NULL: none) */
    const char *prefix;     /* the keys' prefix ("rm" for rm.epochs) */
    int ppo_settings;       /* the PPO settings are keys too, passed as --set NAME=VALUE */
    const char *fixed;      /* fixed arguments, space-separated, with {run}/{seed}/{key}; the
                               options named here are not keys */
    const char *stdout_to;  /* the stage's stdout is its output file (atomically), or NULL */
    double weight;          /* expected share of the demo's time, for the ETA */
} stage_t;

static const stage_t stages[] = {
    {"task", "embedded task: prompts, SFT data, guidelines", "task", &cli_task_opts, "task", 0,
     "--out {run}/task --seed {seed}", NULL, 1},
    {"tokenizer", "byte-level BPE tokenizer from the task corpus", "tokenizer-train",
     &cli_tokenizer_train_opts, "tokenizer", 0,
     "--corpus {run}/task/corpus.txt --out {run}/tokenizer", NULL, 2},
    {"init", "a fresh GPT with that tokenizer", "init-model", &cli_init_model_opts, "model", 0,
     "--tokenizer {run}/tokenizer --out {run}/init --vocab {tokenizer.vocab_size} --seed {seed}",
     NULL, 1},
    {"sft", "supervised fine-tuning: the instruct model", "sft", &cli_sft_opts, "sft", 0,
     "--out {run}/sft --seed {seed} --eval-every 100000", NULL, 80},
    {"generate", "stage 1: K completions per prompt (master + rollout workers)", "generate",
     &cli_generate_opts, "generate", 0,
     "--out {run}/completions.jsonl --run-dir {run}/generate --seed {seed}", NULL, 20},
    {"annotate", "stage 1: rankings by several annotators", "annotate", &cli_annotate_opts,
     "annotate", 0,
     "--completions {run}/completions.jsonl --out {run}/annotations.jsonl --seed {seed} "
     "--replace",
     NULL, 2},
    {"aggregate", "stage 1: consensus and agreement", "aggregate", &cli_aggregate_opts, "aggregate",
     0,
     "--completions {run}/completions.jsonl --annotations {run}/annotations.jsonl "
     "--out {run}/aggregated.jsonl --summary {run}/agreement.json",
     NULL, 1},
    {"pairs", "stage 1: C(K,2) preference pairs", "pairs", NULL, NULL, 0,
     "--completions {run}/completions.jsonl --aggregated {run}/aggregated.jsonl "
     "--out {run}/pairs.jsonl --hh {run}/pairs_hh.jsonl",
     NULL, 1},
    {"train_rm", "stage 2: reward model (Bradley-Terry)", "train-rm", &cli_train_rm_opts, "rm", 0,
     "--out {run}/rm --seed {seed} --ceiling-from {run}/agreement.json", NULL, 60},
    {"ppo", "stage 3: PPO (master, rollout, reward and learner workers)", "ppo", &cli_ppo_opts,
     "ppo", 1, "--out {run}/ppo --seed {seed}", NULL, 120},
    {"grpo", "GRPO (K samples per prompt, critic-free) on verifiable rewards: the gold judge",
     "ppo", &cli_ppo_opts, "grpo", 1, "--out {run}/grpo --seed {seed}", NULL, 60},
    {"evaluate_grpo", "gold judge: the GRPO policy against the SFT policy on held-out prompts",
     "eval-policy", NULL, NULL, 0,
     "--policy {run}/grpo/policy --baseline {grpo.policy} --prompts {eval.prompts} --samples "
     "{eval.samples} --max-new {eval.max_new} --temperature {eval.temperature} --seed {seed}",
     "{run}/eval_grpo.json", 10},
    {"dpo", "DPO on the stage-1 pairs against the SFT policy (reward and learner workers)", "dpo",
     &cli_dpo_opts, "dpo", 0, "--out {run}/dpo --seed {seed}", NULL, 30},
    {"evaluate_dpo", "gold judge: the DPO policy against the SFT policy on held-out prompts",
     "eval-policy", NULL, NULL, 0,
     "--policy {run}/dpo --baseline {dpo.policy} --prompts {eval.prompts} --samples "
     "{eval.samples} --max-new {eval.max_new} --temperature {eval.temperature} --seed {seed}",
     "{run}/eval_dpo.json", 10},
    {"evaluate", "gold judge: the PPO policy against the SFT policy on held-out prompts",
     "eval-policy", &cli_eval_policy_opts, "eval", 0,
     "--policy {run}/ppo/policy --baseline {ppo.policy} --rm {ppo.rm} --seed {seed}",
     "{run}/eval.json", 10},
    {"report", "the report: agreement, reward model, PPO, gold judge, plots", "report", NULL, NULL,
     0, "--run {run}", NULL, 1},
    {"eval_rm", "stage 2: held-out accuracy, calibration, reward statistics", "eval-rm", NULL, NULL,
     0, "--rm {run}/rm --pairs {rm.pairs} --ceiling-from {run}/agreement.json --gold --write-stats",
     "{run}/rm_eval.json", 3},
};
#define N_STAGES (int)(sizeof stages / sizeof stages[0])

static const stage_t *stage_find(const char *name) {
    for (int i = 0; i < N_STAGES; i++)
        if (!strcmp(stages[i].name, name)) return &stages[i];
    return NULL;
}

/*
 * The run's own defaults, where the pipeline starts a stage differently from its command's
 * default: the paths from stage to stage, the model shape, the tokenizer size. Paths may name
 * {run} (the run directory), {seed} (the run seed) and {x.y} (the value of key x.y).
 */
static const struct {
    const char *key, *value;
} run_defaults[] = {
    {"tokenizer.vocab_size", "512"},
    {"model.layers", "4"},
    {"model.heads", "4"},
    {"model.dim", "128"},
    {"model.ctx", "64"},
    {"sft.model", "{run}/init"},
    {"sft.data", "{run}/task/sft.jsonl"},
    {"generate.model", "{run}/sft"},
    {"generate.prompts", "{run}/task/prompts.jsonl"},
    {"generate.max_new", "24"},
    {"annotate.simulate", "5"},
    {"annotate.overlap", "3"},
    {"rm.model", "{run}/sft"},
    {"rm.pairs", "{run}/pairs.jsonl"},
    {"rm.epochs", "2"},
    {"eval.prompts", "{run}/task/prompts_heldout.jsonl"},
    {"eval.samples", "4"}, /* the command's defaults, named: evaluate_dpo passes them on */
    {"eval.max_new", "24"},
    {"eval.temperature", "1"},
    {"dpo.policy", "{run}/sft"},
    {"dpo.pairs", "{run}/pairs.jsonl"},
    {"ppo.policy", "{run}/sft"},
    {"ppo.rm", "{run}/rm"},
    {"ppo.prompts", "{run}/task/prompts.jsonl"},
    /* GRPO as DeepSeekMath ran it: K samples per prompt, advantages within the group (no value
     * model), the KL to SFT in the loss (k3) and each sequence weighed alike; its reward the
     * task's gold judge as a program (verifiable rewards: the reward model's weight 0, so --rm
     * only satisfies ppo's required option and is never scored with) */
    {"grpo.policy", "{run}/sft"},
    {"grpo.rm", "{run}/rm"},
    {"grpo.prompts", "{run}/task/prompts.jsonl"},
    {"grpo.samples", "4"},
    {"grpo.reward_program", "rlhf gold-judge"},
    {"grpo.rm_weight", "0"},
    {"grpo.adv_estimator", "grpo"},
    {"grpo.kl_in", "loss"},
    {"grpo.kl_estimator", "k3"},
    {"grpo.loss_agg", "sequence"},
};
#define N_RUN_DEFAULTS (int)(sizeof run_defaults / sizeof run_defaults[0])

/* ---- configuration keys: each stage's command options (and the PPO settings) ------------- */

/* One key of a stage: an option of its command, or a PPO setting. */
typedef struct {
    char key[64]; /* "ppo.max_new" */
    const stage_t *stage;
    const cli_opt_t *opt;         /* the command's option, or NULL */
    const ppo_setting_t *setting; /* the PPO setting, or NULL */
    const char *run_def;          /* run_defaults' value, or NULL */
} run_key_t;

static run_key_t run_keys[512];
static int n_run_keys;

/* Whether the stage's fixed arguments name option o (then o is not a key of the stage). */
static int fixed_has(const stage_t *s, const cli_opt_t *o) {
    char flag[80];
    size_t n = (size_t)snprintf(flag, sizeof flag, "--%s", o->name);
    for (const char *p = strstr(s->fixed, flag); p; p = strstr(p + 1, flag))
        if ((p == s->fixed || p[-1] == ' ') && (p[n] == ' ' || !p[n])) return 1;
    return 0;
}

static void key_add(const stage_t *s, const char *name, const cli_opt_t *o,
                    const ppo_setting_t *ps) {
    run_key_t *k = &run_keys[n_run_keys++];
    memset(k, 0, sizeof *k);
    snprintf(k->key, sizeof k->key, "%.20s.%.40s", s->prefix, name);
    k->stage = s, k->opt = o, k->setting = ps;
    for (int i = 0; i < N_RUN_DEFAULTS; i++)
        if (!strcmp(run_defaults[i].key, k->key)) k->run_def = run_defaults[i].value;
}

/* Builds run_keys from the stages' tables (once). */
static void keys_build(void) {
    if (n_run_keys) return;
    for (int i = 0; i < N_STAGES; i++) {
        const stage_t *s = &stages[i];
        for (int j = 0; s->opts && j < s->opts->n_opts; j++) {
            const cli_opt_t *o = &s->opts->opts[j];
            char name[64];
            cli_opt_key(o, name, sizeof name);
            if (!(o->flags & CLI_OPT_NOKEY) && !fixed_has(s, o)) key_add(s, name, o, NULL);
        }
        for (int j = 0; s->ppo_settings && j < ppo_n_settings; j++)
            if (!ppo_settings[j].driver) key_add(s, ppo_settings[j].name, NULL, &ppo_settings[j]);
    }
}

static const run_key_t *key_find(const char *key) {
    for (int i = 0; i < n_run_keys; i++)
        if (!strcmp(run_keys[i].key, key)) return &run_keys[i];
    return NULL;
}

/* cfg_run_t's enumeration of the keys outside the master's table. */
static const char *run_key_at(void *ctx, int i) {
    (void)ctx;
    return i < n_run_keys ? run_keys[i].key : NULL;
}

typedef struct {
    json_t *vals; /* "stage.name" -> string value, as set */
} run_cfg_t;

/* cfg_run_t's hook for keys outside the master's table: the stage keys, checked against their
 * option's (or setting's) type and range now, before any stage runs. */
static int run_extra_set(void *ctx, const char *key, const char *value, const char *where) {
    run_cfg_t *rc = ctx;
    const run_key_t *k = key_find(key);
    if (!k) return rl_fail(RL_EINVAL, "%s: unknown key '%s' (rlhf run --list-keys)", where, key);
    int r = k->opt ? cli_opt_value(k->opt, value, NULL)
                   : ppo_config_set(NULL, k->setting->name, value, NULL);
    if (r < 0 && k->setting) { /* ppo_config_set's message names the setting: skip it */
        char why[512];
        snprintf(why, sizeof why, "%s", rl_errmsg() + strlen(k->setting->name) + 2);
        return rl_fail(r, "%s: %s: %s", where, key, why);
    }
    if (r < 0) return rl_fail_ctx(r, "%s: %s", where, key);
    json_object_set_new(rc->vals, key, json_string(value));
    return 0;
}

typedef struct {
    cfg_run_t cfg;
    run_cfg_t rc;
    char run_dir[PATH_MAX]; /* what {run} expands to: "{run}" itself, for the master */
} run_t;

/* The value of key as set, or its run default (NULL if neither: the command's default holds). */
static const char *key_value(run_t *r, const run_key_t *k) {
    json_t *v = json_object_get(r->rc.vals, k->key);
    return v ? json_string_value(v) : k->run_def;
}

/* The PPO settings of each PPO-kind stage (ppo, grpo) together, as set or as the run's default
 * (a value may be fine alone and not with another: clip_eps > 0, the adaptive controller's
 * target and horizon), checked as `rlhf ppo` will check them, so that a bad combination is
 * refused when the config is read, not after the stages before it. */
static int run_check_ppo(run_t *r, const char *config) {
    for (int i = 0; i < N_STAGES; i++) {
        const stage_t *s = &stages[i];
        if (!s->ppo_settings) continue;
        ppo_config_t pc;
        ppo_cli_config_default(&pc);
        for (int j = 0; j < n_run_keys; j++) {
            const run_key_t *k = &run_keys[j];
            const char *v = k->stage == s && k->setting ? key_value(r, k) : NULL;
            int rc = v ? ppo_config_set(&pc, k->setting->name, v, NULL) : 0;
            if (rc < 0) return rl_fail_ctx(rc, "%s: %s", config, k->key);
        }
        int rc = ppo_config_check(&pc);
        if (rc < 0) return rl_fail_ctx(rc, "%s: the %s settings", config, s->prefix);
        /* the run's learner has ppo.learner_shards shards, for every PPO-kind stage; shards
         * beyond a minibatch step's blocks would idle (`rlhf ppo` refuses them) */
        char key[64];
        snprintf(key, sizeof key, "%s.learner_shards", s->prefix);
        json_t *own = json_object_get(r->rc.vals, key), *sv;
        sv = json_object_get(r->rc.vals, "ppo.learner_shards");
        int shards = sv ? atoi(json_string_value(sv)) : 0;
        if (own && atoi(json_string_value(own)) != shards)
            return rl_fail(RL_EINVAL,
                           "%s: %s %s: one learner serves every PPO stage of a run, with the "
                           "shards ppo.learner_shards gives it (%d): set that key instead",
                           config, key, json_string_value(own), shards);
        int blocks = pc.grad_blocks > 1 ? pc.grad_blocks : 1;
        if (blocks > pc.minibatch) blocks = pc.minibatch;
        if (shards > blocks)
            return rl_fail(RL_EINVAL,
                           "%s: ppo.learner_shards %d: a %s minibatch step's gradient has %d "
                           "block(s) (%s.grad_blocks %d, %s.minibatch %d): set %s.grad_blocks to "
                           "%d or more",
                           config, shards, s->prefix, blocks, s->prefix, pc.grad_blocks, s->prefix,
                           pc.minibatch, s->prefix, shards);
    }
    return 0;
}

/* The default of key k as `rlhf run` starts its stage with it, as text, or NULL. */
static const char *key_default(const run_key_t *k, char *buf, size_t n) {
    if (k->run_def) return k->run_def;
    if (k->opt) return k->opt->def;
    ppo_config_t pc;
    ppo_cli_config_default(&pc);
    ppo_setting_format(k->setting, &pc, buf, n);
    return buf;
}

/* Expands {run}, {seed} and {stage.key} in `in`. Returns a malloc'ed string or NULL. */
static char *expand(run_t *r, const char *in) {
    size_t cap = strlen(in) + PATH_MAX + 64, n = 0;
    char *out = malloc(cap);
    for (const char *p = in; out && *p;) {
        const char *v = NULL;
        char name[128], num[32], *sub = NULL;
        const char *close = *p == '{' ? strchr(p, '}') : NULL;
        if (close && (size_t)(close - p - 1) < sizeof name) {
            memcpy(name, p + 1, (size_t)(close - p - 1));
            name[close - p - 1] = 0;
            if (!strcmp(name, "run")) {
                v = r->run_dir;
            } else if (!strcmp(name, "seed")) {
                snprintf(num, sizeof num, "%llu", (unsigned long long)r->cfg.seed);
                v = num;
            } else {
                /* a key's value may itself name {run} or other keys (depth-limited) */
                const run_key_t *k = key_find(name);
                static int depth;
                if (k && key_value(r, k) && depth < 8) {
                    depth++;
                    sub = expand(r, key_value(r, k));
                    depth--;
                    v = sub;
                }
            }
        }
        size_t add = v ? strlen(v) : 1;
        if (n + add + 1 > cap) {
            cap = 2 * (n + add + 1);
            char *no = realloc(out, cap);
            if (!no) {
                free(out);
                free(sub);
                return NULL;
            }
            out = no;
        }
        if (v) {
            memcpy(out + n, v, add);
            n += add;
            p = close + 1;
        } else {
            out[n++] = *p++;
        }
        free(sub);
    }
    if (out) out[n] = 0;
    return out;
}

/* The argv of a stage: CMD fixed... --opt value ... (the subcommand first, without the
 * program; NULL-terminated, malloc'ed). */
static char **stage_argv(run_t *r, const stage_t *s) {
    int cap = 96, n = 0;
    char **av = calloc((size_t)cap, sizeof *av);
    if (!av) return NULL;
    av[n++] = strdup(s->cmd);
    char *fixed = expand(r, s->fixed);
    for (char *tok = fixed ? strtok(fixed, " ") : NULL; tok && n < cap - 4; tok = strtok(NULL, " "))
        av[n++] = strdup(tok);
    free(fixed);
    for (int i = 0; i < n_run_keys && n < cap - 4; i++) {
        const run_key_t *k = &run_keys[i];
        if (k->stage != s) continue;
        const char *v = key_value(r, k);
        if (!v) continue;
        if (k->setting) { /* a PPO setting passed through as NAME=VALUE */
            char kv[512];
            snprintf(kv, sizeof kv, "%s=%s", k->setting->name, v);
            av[n++] = strdup("--set");
            av[n++] = strdup(kv);
            continue;
        }
        char opt[80];
        snprintf(opt, sizeof opt, "--%s", k->opt->name);
        if (k->opt->type == CLI_OPT_FLAG) {
            if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1")) av[n++] = strdup(opt);
            continue;
        }
        av[n++] = strdup(opt);
        av[n++] = expand(r, v);
    }
    av[n] = NULL;
    return av;
}

static void argv_free(char **av) {
    for (int i = 0; av && av[i]; i++) free(av[i]);
    free(av);
}

/* ---- the plan ------------------------------------------------------------------------------ */

/* The resolved configuration: the run's own keys, then every stage key as set, as its run
 * default, or as its command's default (unexpanded: {run} and {key} as written). */
static json_t *run_resolved(run_t *r) {
    json_t *res = cfg_to_json(&r->cfg);
    for (int i = 0; res && i < n_run_keys; i++) {
        const char *v = key_value(r, &run_keys[i]);
        if (!v && run_keys[i].opt) v = run_keys[i].opt->def;
        if (v) json_object_set_new(res, run_keys[i].key, json_string(v));
    }
    return res;
}

/*
 * The plan the master runs (master/master_run.h): the run's name, seed, the directory paths are
 * relative to, the configuration, and each stage's command line with {run} left for the master
 * to replace by the run directory. Returns the plan or NULL (out of memory).
 */
static json_t *run_plan(run_t *r, const char *config, const char *name, const char *only,
                        int remote) {
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return NULL;
    snprintf(r->run_dir, sizeof r->run_dir, "{run}"); /* kept literally by expand() */
    json_t *plan = json_pack("{s:s, s:I, s:s, s:o}", "name", name, "seed", (json_int_t)r->cfg.seed,
                             "config", config, "config_json", run_resolved(r));
    /* a master on another machine does not share our directories: without "cwd" it reads the
     * plan's relative paths in its own data directory */
    if (plan && !remote) json_object_set_new(plan, "cwd", json_string(cwd));
    json_t *list = json_array();
    if (!plan || !list) {
        json_decref(plan);
        json_decref(list);
        return NULL;
    }
    if (only) json_object_set_new(plan, "only", json_string(only));
    json_object_set_new(plan, "stages", list);
    for (int i = 0; i < r->cfg.n_stages; i++) {
        const stage_t *s = stage_find(r->cfg.stages[i]);
        char **av = stage_argv(r, s);
        json_t *args = av ? json_array() : NULL;
        for (int k = 0; args && av[k]; k++) json_array_append_new(args, json_string(av[k]));
        argv_free(av);
        json_t *w = s->weight == floor(s->weight) ? json_integer((json_int_t)s->weight)
                                                  : json_real(s->weight);
        json_t *st = json_pack("{s:s, s:s, s:o, s:o}", "name", s->name, "summary", s->summary,
                               "weight", w, "argv", args);
        if (st && s->stdout_to) {
            char *to = expand(r, s->stdout_to);
            json_object_set_new(st, "stdout_to", json_string(to ? to : ""));
            free(to);
        }
        if (!st || json_array_append_new(list, st) < 0) {
            json_decref(plan);
            return NULL;
        }
    }
    return plan;
}

/* The run's name and data directory from run_dir: "runs/demo" -> "demo" in "runs". */
static void run_dir_split(const char *run_dir, char *name, size_t nn, char *data, size_t dn) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", run_dir);
    size_t l = strlen(tmp);
    while (l > 1 && tmp[l - 1] == '/') tmp[--l] = 0;
    char *slash = strrchr(tmp, '/');
    if (!slash) {
        snprintf(name, nn, "%s", tmp);
        snprintf(data, dn, ".");
    } else {
        snprintf(name, nn, "%s", slash + 1);
        if (slash == tmp)
            snprintf(data, dn, "/");
        else
            snprintf(data, dn, "%.*s", (int)(slash - tmp), tmp);
    }
}

/* ---- the command ---------------------------------------------------------------------- */

/* --list-keys: every key with its type, default (as the stage starts with it), range, meaning. */
static void list_keys(void) {
    keys_build();
    printf("%-27s %-6s %-28s %-14s %s\n", "key", "type", "default", "range", "meaning");
    for (int i = 0; i < n_run_keys; i++) {
        const run_key_t *k = &run_keys[i];
        char buf[64], range[64] = "";
        const char *def = key_default(k, buf, sizeof buf), *type = "string", *help;
        if (k->opt) {
            type = cli_opt_type_name(k->opt);
            cli_opt_range(k->opt, range, sizeof range);
            help = k->opt->help;
        } else {
            const ppo_setting_t *ps = k->setting;
            type = ps->type == PPO_SETTING_FLOAT  ? "number"
                   : ps->type == PPO_SETTING_BOOL ? "bool"
                   : ps->type == PPO_SETTING_ENUM ? "string"
                                                  : "int";
            cli_opt_t tmp = {.type = ps->type == PPO_SETTING_FLOAT  ? CLI_OPT_FLOAT
                                     : ps->type == PPO_SETTING_BOOL ? CLI_OPT_BOOL
                                     : ps->type == PPO_SETTING_ENUM ? CLI_OPT_STRING
                                                                    : CLI_OPT_LONG,
                             .lo = ps->lo,
                             .hi = ps->type == PPO_SETTING_U64 ? INFINITY : ps->hi};
            cli_opt_range(&tmp, range, sizeof range);
            if (ps->type == PPO_SETTING_ENUM) ppo_setting_choices(ps, range, sizeof range);
            help = ps->help;
        }
        printf("%-27s %-6s %-28s %-14s %s\n", k->key, type, def ? def : "-", range, help);
    }
}

typedef struct {
    const char *sets[64];
    int n_sets;
    const char *run_dir, *only, *master, *name, *key;
    int detach, print_plan;
} run_args_t;

static int run_opt_set(void *args, const char *kv) {
    run_args_t *a = args;
    if (a && a->n_sets == 64) return rl_fail(RL_EINVAL, "at most 64");
    if (a) a->sets[a->n_sets++] = kv;
    return 0;
}

static int run_opt_list_keys(void *args, const char *unused) {
    (void)args, (void)unused;
    list_keys();
    return 1;
}

static const cli_opt_t run_opt_table[] = {
    CLI_OPT_CALL("set", "KEY=VALUE", "override a key of CONFIG (repeatable)", run_opt_set,
                 CLI_OPT_NOKEY),
    CLI_OPT_STR(run_args_t, run_dir, "run-dir", NULL, "DIR",
                "the run directory (run_dir): the run's name and data directory", CLI_OPT_NOKEY),
    CLI_OPT_STR(run_args_t, only, "only", NULL, "STAGE", "run this stage only (done or not)",
                CLI_OPT_NOKEY),
    CLI_OPT_STR(run_args_t, master, "master", NULL, "ENDPOINT",
                "submit to this master (default: the local cluster of the data directory, "
                "started if none runs)",
                CLI_OPT_NOKEY),
    CLI_OPT_STR(run_args_t, key, "key", NULL, "FILE",
                "with --master: the client key (rlhf keygen; default $RLHF_KEY, "
                "$RLHF_KEYS/client.key)",
                CLI_OPT_NOKEY),
    CLI_OPT_STR(run_args_t, name, "name", NULL, "NAME",
                "the run's name (default: the last part of run_dir)", CLI_OPT_NOKEY),
    CLI_OPT_FLAG(run_args_t, detach, "detach", "submit and return; the run goes on"),
    CLI_OPT_FLAG(run_args_t, print_plan, "print-plan",
                 "print the plan that would be submitted (JSON) and exit"),
    CLI_OPT_CALL("list-keys", NULL, "print every configuration key with its default",
                 run_opt_list_keys, CLI_OPT_NOKEY),
};

const cli_opts_t cli_run_opts =
    CLI_OPTS("run",
             "rlhf run CONFIG [--master ENDPOINT] [--name NAME] [--detach] [--set KEY=VALUE]...\n"
             "                [--run-dir DIR] [--only STAGE] [--list-keys]",
             "Compiles the pipeline configured in CONFIG (YAML) into a plan and submits it to a\n"
             "master, which runs its stages in the run directory DATA_DIR/NAME and keeps running\n"
             "them if this command stops; then follows the run (its log, progress and ETA) until\n"
             "it ends. Ctrl-C detaches. Submitting the same run again continues where it stopped.\n"
             "Every value is checked when CONFIG is read, before anything is submitted.\n"
             "With --master, the run's files live on the master's host: relative paths in CONFIG\n"
             "name files in the master's data directory, and its workers get every model and\n"
             "dataset over the wire.\n",
             run_opt_table,
             "Exit status: 0 the run succeeded, 1 it failed or was cancelled (or the master went\n"
             "away), 2 a bad config or a plan the master rejected, 130 detached by Ctrl-C.\n");

/* Phase 1: CONFIG and the options, read and checked as a whole. Returns CLI_OPTS_GO or the exit
 * status (message printed). */
static int run_read(run_t *r, run_args_t *a, int argc, char **argv, const char **config) {
    keys_build();
    int c = cli_opts_parse(&cli_run_opts, argc, argv, a);
    if (c != CLI_OPTS_GO) return c;
    cfg_defaults(&r->cfg);
    r->rc.vals = json_object();
    r->cfg.extra_set = run_extra_set;
    r->cfg.extra_key = run_key_at;
    r->cfg.extra_ctx = &r->rc;
    if (optind != argc - 1) {
        fprintf(stderr, "rlhf run: one CONFIG file is required\n");
        return cli_usage_error("run");
    }
    *config = argv[optind];
    int rc = cfg_load_yaml(&r->cfg, *config);
    for (int i = 0; rc == 0 && i < a->n_sets; i++) rc = cfg_set_kv(&r->cfg, a->sets[i]);
    if (rc == 0) rc = run_check_ppo(r, *config);
    if (rc < 0) {
        fprintf(stderr, "rlhf run: %s\n", rl_errmsg());
        return 2;
    }
    if (a->run_dir) snprintf(r->cfg.run_dir, sizeof r->cfg.run_dir, "%s", a->run_dir);
    if (a->only && !stage_find(a->only)) {
        fprintf(stderr, "rlhf run: --only: no stage '%s'\n", a->only);
        return 2;
    }
    for (int i = 0; i < r->cfg.n_stages; i++)
        if (!stage_find(r->cfg.stages[i])) {
            fprintf(stderr, "rlhf run: %s: stages: no stage '%s'; the stages are:", *config,
                    r->cfg.stages[i]);
            for (int k = 0; k < N_STAGES; k++) fprintf(stderr, " %s", stages[k].name);
            fputc('\n', stderr);
            return 2;
        }
    if (r->cfg.n_stages == 0) {
        fprintf(stderr, "rlhf run: %s: no stages listed\n", *config);
        return 2;
    }
    return CLI_OPTS_GO;
}

/* ppo.learner_shards: the local cluster's learner shards for the run's PPO (0: not set). */
static int run_learner_shards(run_t *r) {
    json_t *v = json_object_get(r->rc.vals, "ppo.learner_shards");
    return v ? atoi(json_string_value(v)) : 0;
}

/* Phase 2: the plan compiled and submitted; then followed (runs_submit). */
static int run_submit(run_t *r, const run_args_t *a, const char *config) {
    char name[256], data[PATH_MAX];
    run_dir_split(r->cfg.run_dir, name, sizeof name, data, sizeof data);
    if (a->name) snprintf(name, sizeof name, "%s", a->name);
    if (!name[0] || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..")) {
        fprintf(stderr, "rlhf run: '%s' is not a run name (a name without '/')\n", name);
        return 2;
    }
    json_t *plan = run_plan(r, config, name, a->only, a->master != NULL);
    char *txt = plan ? json_dumps(plan, a->print_plan ? JSON_INDENT(2) : JSON_COMPACT) : NULL;
    json_decref(plan);
    if (!txt) {
        fprintf(stderr, "rlhf run: out of memory\n");
        return 1;
    }
    int ret;
    if (a->print_plan) {
        printf("%s\n", txt);
        ret = 0;
    } else {
        char ep[256];
        if (a->key) setenv("RLHF_KEY", a->key, 1);
        if (a->master) {
            snprintf(ep, sizeof ep, "%s", a->master);
        } else if (local_cluster_ensure_shards(data, run_learner_shards(r), ep, sizeof ep) < 0) {
            free(txt);
            return cli_fail("run", "the local cluster", RL_EIO);
        }
        fprintf(stderr, "rlhf run: %s, %d stages, run %s on %s\n", config, r->cfg.n_stages, name,
                ep);
        ret = runs_submit("run", ep, a->master ? NULL : data, name, txt, a->detach);
    }
    free(txt);
    return ret;
}

int cmd_run(int argc, char **argv) {
    static run_t R; /* large (paths); one per process */
    run_t *r = &R;
    run_args_t a = {0};
    const char *config = NULL;
    int ret = run_read(r, &a, argc, argv, &config);
    if (ret == CLI_OPTS_GO) ret = run_submit(r, &a, config);
    json_decref(r->rc.vals);
    cfg_free(&r->cfg);
    return ret;
}
