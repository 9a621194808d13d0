/*
 * cmd_ppo.c - `rlhf ppo`: stage 3, PPO as a run of the local master; and `rlhf ppo-prep`, the
 * checks and inputs the master's PPO loop starts from.
 *
 *   rlhf ppo --policy DIR --rm DIR --prompts FILE --out DIR [--ref DIR] [--value DIR]
 *            [--iterations N] [--batch P] [--samples K] [--max-new N] [--temperature T]
 *            [--prompts-per-job J] [--rollout R] [--reward M] [--checkpoint-every N]
 *            [--seed S] [--gold] [--reward-program CMD [--reward-program-weight W]
 *            [--rm-weight W] [--reward-program-timeout-ms MS] [--reward-program-fallback X]]
 *            [--set NAME=VALUE]... [--config FILE]
 *
 * The PPO loop is the master's (master/master_run.h): for each iteration i, GENERATE jobs on
 * rollout workers with policy version i, SCORE jobs on reward workers (reward-model scores and
 * the frozen reference's logprobs), one TRAIN job on the learner, which publishes version i + 1;
 * one line per iteration in OUT/metrics.jsonl, the last policy copied to OUT/policy. Resuming
 * is the master's too: submitting the same run again continues from the learner's newest
 * checkpoint.
 *
 * `rlhf ppo` checks its options, then submits a one-stage run named after OUT (basename(OUT),
 * in the data directory dirname(OUT), so that the run directory is OUT) to the local cluster
 * serving that directory, and follows it like `rlhf run` (runs_submit, cmd_runs.c).
 *
 * `rlhf ppo-prep` (hidden; the same options) is the first half of that stage, run by a stage
 * worker: the model directories resolved, the tokenizer loaded, every prompt tokenised and
 * checked against the context, the reward model's statistics read, the PPO settings checked.
 * It writes OUT/ppo_prompts.jsonl ({"text", "ids"} per prompt, in file order) and then
 * OUT/ppo_plan.json (both atomically), which the master's loop reads:
 *   {"policy", "rm", "ref", "value", "out" (absolute), "iterations", "batch", "samples",
 *    "max_new", "temperature", "per_job", "checkpoint_every", "seed", "gold", "count_token"
 *    (-1: the reward model scores), "eot", "vocab", "score_mean", "score_std", "config_json"
 *    (the PPO settings as every TRAIN job carries them), "prompts" (the JSONL's absolute path),
 *    "n_prompts"; with --reward-program: "reward_program", "reward_program_weight",
 *    "rm_weight", "reward_program_fallback", "reward_program_timeout_ms"}
 * Each line of ppo_prompts.jsonl carries the prompts file's record too ("record"), for reward
 * programs (the reference answer travels in the SCORE jobs: workers need no file of ours).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "align/ppo.h"
#include "base/cfg.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/jsonl.h"
#include "cli.h"
#include "nn/hf.h"
#include "nn/tok.h"

/* ---- prompts ------------------------------------------------------------------------------- */

typedef struct {
    char *text;
    int *ids;
    size_t n;
    json_t *record; /* the prompts file's record, all of it (a reward program gets it) */
} pprompt_t;

typedef struct {
    pprompt_t *p;
    int n, cap;
    tok_t *tok;
    int ctx;
} pset_t;

static int load_p(void *ctx, json_t *o, const char *where) {
    pset_t *s = ctx;
    char *text;
    size_t len;
    int rc = cli_prompt_text(s->tok, o, where, &text, &len);
    if (rc < 0) return rc;
    if (s->n == s->cap) {
        int nc = s->cap ? 2 * s->cap : 64;
        pprompt_t *np = realloc(s->p, (size_t)nc * sizeof *np);
        if (!np) {
            free(text);
            return rl_fail(RL_ENOMEM, "out of memory");
        }
        s->p = np, s->cap = nc;
    }
    pprompt_t *p = &s->p[s->n];
    memset(p, 0, sizeof *p);
    p->text = text;
    p->record = json_incref(o);
    s->n++;
    if ((rc = tok_encode(s->tok, text, len, tok_text_special(s->tok), &p->ids, &p->n)) < 0)
        return rl_fail_ctx(rc, "%s: ", where);
    if (p->n < 1 || (int)p->n >= s->ctx)
        return rl_fail(RL_EFORMAT, "%s: the prompt is %zu tokens; the context is %d", where, p->n,
                       s->ctx);
    return 0;
}

/* ---- options ------------------------------------------------------------------------------- */

typedef struct {
    const char *policy, *rm, *ref, *value, *prompts, *out;
    int iterations, batch, samples, max_new, per_job, rollout, reward, ckpt_every, gold;
    int shards;          /* learner shards (0: whatever the local cluster has) */
    int count_token;     /* -1: the reward model scores */
    const char *program; /* a reward program's command line (NULL: none) */
    float program_weight, rm_weight, program_fallback;
    int program_timeout_ms;
    float temperature;
    long seed;
    ppo_config_t pc;
    char *strs[16]; /* a --config file's paths (owned) */
    int n_strs;
} ppo_opts_t;

/* --set NAME=VALUE: a PPO setting (args NULL: only checked). */
static int ppo_opt_set(void *args, const char *kv) {
    char name[64];
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv || (size_t)(eq - kv) >= sizeof name)
        return rl_fail(RL_EINVAL, "'%s' is not NAME=VALUE", kv);
    memcpy(name, kv, (size_t)(eq - kv));
    name[eq - kv] = 0;
    ppo_opts_t *o = args;
    return ppo_config_set(o ? &o->pc : NULL, name, eq + 1, NULL);
}

/* --list-settings: the PPO settings as they stand, as JSON. */
static int ppo_opt_list(void *args, const char *unused) {
    (void)unused;
    json_t *d = ppo_config_to_json(&((ppo_opts_t *)args)->pc);
    char *s = json_dumps(d, JSON_INDENT(2) | JSON_REAL_PRECISION(7));
    printf("%s\n", s ? s : "{}");
    free(s);
    json_decref(d);
    return 1;
}

/* --config FILE: read before the command line (ppo_read_config). */
/* --config is read by ppo_parse before the other options (so that they win over the file);
 * here it only has to be accepted. */
static int ppo_opt_config(void *args, const char *path) {
    (void)args, (void)path;
    return 0;
}

#define PO(f, name, lo, hi, def, arg, help) CLI_OPT_INT(ppo_opts_t, f, name, lo, hi, def, arg, help)
static const cli_opt_t ppo_opt_table[] = {
    CLI_OPT_STR(ppo_opts_t, policy, "policy", NULL, "DIR", "initial policy (and KL reference)",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(ppo_opts_t, rm, "rm", NULL, "DIR", "reward model", CLI_OPT_REQUIRED),
    CLI_OPT_STR(ppo_opts_t, prompts, "prompts", NULL, "FILE", "RLHF prompts (JSONL {prompt})",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(ppo_opts_t, out, "out", NULL, "DIR", "output directory", CLI_OPT_REQUIRED),
    CLI_OPT_STR(ppo_opts_t, ref, "ref", NULL, "DIR",
                "frozen reference for the KL penalty (default: --policy)", 0),
    CLI_OPT_STR(ppo_opts_t, value, "value", NULL, "DIR",
                "initial value model (default: --rm, as InstructGPT; not loaded by the "
                "critic-free adv_estimator grpo, rloo, reinforce_pp)",
                0),
    PO(iterations, "iterations", 1, 1000000, "20", "N", "PPO iterations"),
    PO(batch, "batch", 1, 100000, "32", "P", "prompts per iteration"),
    PO(samples, "samples", 1, 64, "1", "K", "completions per prompt"),
    PO(max_new, "max-new", 1, 100000, "24", "N", "tokens per completion at most"),
    CLI_OPT_FLOAT(ppo_opts_t, temperature, "temperature", 0, 100, "1", "T",
                  "rollout sampling temperature (> 0); every logprob is taken under logits / T"),
    PO(per_job, "prompts-per-job", 1, 4096, "8", "J", "prompts per GENERATE / SCORE job"),
    PO(rollout, "rollout", 1, 32, "2", "R", "rollout workers"),
    PO(reward, "reward", 1, 16, "1", "M", "reward workers"),
    PO(shards, "learner-shards", 1, 16, NULL, "S",
       "the local cluster's learner in S gradient shards, each minibatch step's blocks "
       "(grad_blocks >= S) shared among them: the same bits for any S"),
    PO(ckpt_every, "checkpoint-every", 1, 1000000, "1", "N",
       "learner checkpoint every N iterations"),
    CLI_OPT_LONG(ppo_opts_t, seed, "seed", 0, LONG_MAX, "1", "S", "run seed"),
    CLI_OPT_FLAG(ppo_opts_t, gold, "gold",
                 "also score the rollouts with the embedded task's gold judge"),
    PO(count_token, "reward-count-token", 0, INT_MAX, NULL, "ID",
       "a constructed reward instead of --rm (tests): the number of times token ID occurs in "
       "the completion; --rm still gives the value model unless --value is set"),
    CLI_OPT_STR(ppo_opts_t, program, "reward-program", NULL, "CMD",
                "a reward program (run by /bin/sh -c on each reward worker's host, sandboxed; "
                "README \"Reward programs\"): JSON lines {prompt, completion, reference, record} "
                "in, {score} out; the score is rm-weight * the model's + this weight * the "
                "program's",
                0),
    CLI_OPT_FLOAT(ppo_opts_t, program_weight, "reward-program-weight", -1000, 1000, "1", "W",
                  "the reward program's weight"),
    CLI_OPT_FLOAT(ppo_opts_t, rm_weight, "rm-weight", -1000, 1000, "1", "W",
                  "the reward model's (or --reward-count-token's) weight with a reward program; "
                  "0: the program alone (--rm then only gives the value model)"),
    PO(program_timeout_ms, "reward-program-timeout-ms", 1, 3600000, "10000", "MS",
       "the reward program's time limit per item: past it the program is killed and restarted"),
    CLI_OPT_FLOAT(ppo_opts_t, program_fallback, "reward-program-fallback", -1e6, 1e6, "0", "X",
                  "the program's score of an item it failed on (timeout, crash, bad line)"),
    CLI_OPT_CALL("set", "NAME=VALUE", "a PPO setting (below; `rlhf ppo --list-settings`)",
                 ppo_opt_set, CLI_OPT_NOKEY),
    CLI_OPT_CALL("config", "FILE",
                 "YAML: the `ppo:` mapping holds these options (names with _) and PPO settings; "
                 "command-line options win",
                 ppo_opt_config, CLI_OPT_NOKEY),
    CLI_OPT_CALL("list-settings", NULL, "print the PPO settings and their defaults", ppo_opt_list,
                 CLI_OPT_NOKEY),
};
#undef PO

void ppo_cli_config_default(ppo_config_t *pc) {
    ppo_config_default(pc);
    pc->score_norm = PPO_SCORE_NORM; /* reward-model scores to unit scale (ppo.h explains) */
}

/* The PPO settings in --help: name, default (as `rlhf ppo` sets it), range, meaning. */
static void ppo_settings_help(FILE *f) {
    ppo_config_t pc;
    ppo_cli_config_default(&pc);
    fprintf(f, "\nPPO settings (--set NAME=VALUE; `ppo.NAME` keys of rlhf run):\n");
    for (int i = 0; i < ppo_n_settings; i++) {
        char def[32];
        ppo_setting_format(&ppo_settings[i], &pc, def, sizeof def);
        fprintf(f, "  %-20s%s (default %s)\n", ppo_settings[i].name, ppo_settings[i].help, def);
    }
}

const cli_opts_t cli_ppo_opts = {
    .cmd = "ppo",
    .usage = "rlhf ppo --policy DIR --rm DIR --prompts FILE --out DIR [options]",
    .about = "PPO through a local master with rollout, reward and learner workers.\n",
    .opts = ppo_opt_table,
    .n_opts = (int)(sizeof ppo_opt_table / sizeof ppo_opt_table[0]),
    .help_more = ppo_settings_help,
};

/* A `ppo.NAME` key of a --config file: a driver option or a PPO setting. */
static int ppo_cfg_key(void *ctx, const char *key, const char *value, const char *where) {
    ppo_opts_t *o = ctx;
    if (strncmp(key, "ppo.", 4)) return 0; /* other stages' keys: not ours */
    const cli_opt_t *opt = cli_opts_find(&cli_ppo_opts, key + 4);
    if (!opt || (opt->flags & CLI_OPT_NOKEY)) {
        int rc = ppo_config_set(&o->pc, key + 4, value, NULL);
        return rc < 0 ? rl_fail_ctx(rc, "%s", where) : 0;
    }
    if (opt->type == CLI_OPT_STRING) { /* the file's text is gone after reading it */
        if (o->n_strs == 16) return rl_fail(RL_EINVAL, "%s: too many paths", where);
        if (!(value = o->strs[o->n_strs++] = strdup(value)))
            return rl_fail(RL_ENOMEM, "out of memory");
    }
    int rc = cli_opt_value(opt, value, o);
    return rc < 0 ? rl_fail_ctx(rc, "%s: %s", where, key) : 0;
}

/* Phase 1: the options - defaults, a --config file, the command line - checked. Returns
 * CLI_OPTS_GO or the exit status. */
static int ppo_parse(ppo_opts_t *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    cli_opts_defaults(&cli_ppo_opts, o);
    o->count_token = -1;
    ppo_cli_config_default(&o->pc);
    /* a --config file first, so that the command line wins */
    for (int i = 1; i < argc; i++) {
        const char *path = NULL;
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            path = argv[i + 1];
        else if (!strncmp(argv[i], "--config=", 9))
            path = argv[i] + 9;
        if (path) {
            cfg_run_t cfg;
            cfg_defaults(&cfg);
            cfg.extra_set = ppo_cfg_key;
            cfg.extra_ctx = o;
            int rc = cfg_load_yaml(&cfg, path);
            cfg_free(&cfg);
            if (rc < 0) {
                fprintf(stderr, "rlhf ppo: %s\n", rl_errmsg());
                return 2;
            }
        }
    }
    int rc = cli_opts_getopt(&cli_ppo_opts, argc, argv, o);
    if (rc != CLI_OPTS_GO) return rc;
    if (!o->policy || !o->rm || !o->prompts || !o->out) {
        fprintf(stderr, "rlhf ppo: --policy, --rm, --prompts and --out are required\n");
        return cli_usage_error("ppo");
    }
    if (!(o->temperature > 0)) {
        /* every logprob is taken under logits / T; greedy rollouts have no distribution */
        fprintf(stderr, "rlhf ppo: --temperature %g: PPO needs a sampling temperature > 0\n",
                (double)o->temperature);
        return 2;
    }
    o->pc.temperature = o->temperature;
    if (ppo_config_check(&o->pc) < 0) {
        fprintf(stderr, "rlhf ppo: %s\n", rl_errmsg());
        return 2;
    }
    int blocks = o->pc.grad_blocks > 1 ? o->pc.grad_blocks : 1;
    if (blocks > o->pc.minibatch) blocks = o->pc.minibatch;
    if (o->shards > blocks) {
        /* the result depends on the blocks, never on S: the setting is the user's to choose */
        fprintf(stderr,
                "rlhf ppo: --learner-shards %d: a minibatch step's gradient has %d block(s) "
                "(grad_blocks %d, minibatch %d), so %d shard(s) would have nothing to compute: "
                "set grad_blocks to %d or more (--set grad_blocks=N; it changes the result, the "
                "number of shards never does)\n",
                o->shards, blocks, o->pc.grad_blocks, o->pc.minibatch, o->shards - blocks,
                o->shards);
        return 2;
    }
    if ((o->pc.adv_estimator == PPO_ADV_GRPO || o->pc.adv_estimator == PPO_ADV_RLOO) &&
        o->samples < 2) {
        fprintf(stderr,
                "rlhf ppo: adv_estimator=%s compares the samples of a prompt: it needs "
                "--samples >= 2\n",
                o->pc.adv_estimator == PPO_ADV_GRPO ? "grpo" : "rloo");
        return 2;
    }
    return CLI_OPTS_GO;
}

static void ppo_opts_free(ppo_opts_t *o) {
    for (int i = 0; i < o->n_strs; i++) free(o->strs[i]);
    o->n_strs = 0;
}

/* ---- ppo-prep: the stage's inputs, checked ---------------------------------------------- */

typedef struct {
    ppo_opts_t *o;
    char policy[PATH_MAX], rmdir[PATH_MAX], ref[PATH_MAX], value[PATH_MAX], out[PATH_MAX];
    pset_t ps;
    int eot, vocab;
    double s_mean, s_std; /* reward-model statistics: seed the score normalisation */
    char *cfg_json;       /* the PPO settings every TRAIN job carries */
} ppo_prep_t;

/* Model directories, tokenizer, prompts, reward statistics, the settings as sent. Returns 0 or
 * -1 (message printed). */
static int ppo_prepare(ppo_prep_t *s) {
    ppo_opts_t *o = s->o;
    int rc;
    if (!realpath(o->policy, s->policy) || !realpath(o->rm, s->rmdir) ||
        !realpath(o->ref ? o->ref : o->policy, s->ref) ||
        !realpath(o->value ? o->value : o->rm, s->value)) {
        fprintf(stderr, "rlhf ppo: a model directory does not exist: %s\n", strerror(errno));
        return -1;
    }
    if (fs_mkdir_p(o->out) < 0 || !realpath(o->out, s->out)) {
        fprintf(stderr, "rlhf ppo: %s: cannot create it\n", o->out);
        return -1;
    }
    gpt_config_t mc;
    if ((rc = hf_config_read(s->policy, &mc)) < 0) return -cli_fail("ppo", "policy", rc);
    s->ps.ctx = mc.n_positions;
    if (!(s->ps.tok = tok_load(s->policy))) return -cli_fail("ppo", "tokenizer", RL_EINVAL);
    s->eot = tok_eot(s->ps.tok), s->vocab = tok_vocab_size(s->ps.tok);
    o->pc.vocab_limit = s->vocab;
    o->pc.seed = (uint64_t)o->seed;
    long n = jsonl_read(o->prompts, load_p, &s->ps);
    if (n < 0) return -cli_fail("ppo", "prompts", (int)n);
    if (s->ps.n == 0) {
        fprintf(stderr, "rlhf ppo: %s: no prompts\n", o->prompts);
        return -1;
    }
    char sp[PATH_MAX + 32];
    snprintf(sp, sizeof sp, "%s/reward_stats.json", s->rmdir);
    json_t *st = json_load_file(sp, 0, NULL);
    s->s_mean = json_number_value(json_object_get(st, "mean"));
    s->s_std = json_number_value(json_object_get(st, "std"));
    json_decref(st);
    /* not the reward model's scores alone: no statistics seed the normalisation */
    if (o->count_token >= 0 || (o->program && o->program[0])) s->s_mean = s->s_std = 0;
    json_t *cfgj = ppo_config_to_json(&o->pc);
    s->cfg_json = json_dumps(cfgj, JSON_COMPACT);
    json_decref(cfgj);
    if (!s->cfg_json) {
        fprintf(stderr, "rlhf ppo: the PPO settings cannot be written as JSON\n");
        return -1;
    }
    return 0;
}

static void ppo_prep_free(ppo_prep_t *s) {
    for (int i = 0; i < s->ps.n; i++)
        free(s->ps.p[i].text), free(s->ps.p[i].ids), json_decref(s->ps.p[i].record);
    free(s->ps.p);
    tok_destroy(&s->ps.tok);
    free(s->cfg_json);
}

/* Writes `text` (consumed) to OUT/name atomically; path gets the file's path. */
static int write_out(const ppo_prep_t *s, const char *name, char *text, size_t len, char *path,
                     size_t n) {
    snprintf(path, n, "%.4000s/%s", s->out, name);
    int rc = text ? fs_write_atomic(path, text, len) : rl_fail(RL_ENOMEM, "out of memory");
    free(text);
    return rc;
}

/* OUT/ppo_prompts.jsonl, then OUT/ppo_plan.json. Returns 0 or RL_E*. */
static int ppo_prep_write(const ppo_prep_t *s) {
    const ppo_opts_t *o = s->o;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (int i = 0; buf && i < s->ps.n; i++) {
        json_t *ids = json_array();
        for (size_t k = 0; k < s->ps.p[i].n; k++)
            json_array_append_new(ids, json_integer(s->ps.p[i].ids[k]));
        json_t *line = json_pack("{s:s, s:o, s:O}", "text", s->ps.p[i].text, "ids", ids, "record",
                                 s->ps.p[i].record);
        char *t = line ? json_dumps(line, JSON_COMPACT) : NULL;
        json_decref(line);
        size_t tl = t ? strlen(t) : 0;
        if (t && len + tl + 2 > cap) {
            cap = 2 * (len + tl + 2);
            char *nb = realloc(buf, cap);
            if (!nb) free(buf);
            buf = nb;
        }
        if (!t || !buf) {
            free(t);
            free(buf);
            return rl_fail(RL_ENOMEM, "out of memory");
        }
        memcpy(buf + len, t, tl);
        len += tl;
        buf[len++] = '\n';
        free(t);
    }
    char prompts[PATH_MAX + 64], plan_path[PATH_MAX + 64];
    int rc = write_out(s, "ppo_prompts.jsonl", buf, len, prompts, sizeof prompts);
    if (rc < 0) return rc;
    json_t *plan = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:f, s:i, s:i, s:I, s:b, s:i, s:i, s:i,"
        " s:f, s:f, s:s, s:s, s:i}",
        "policy", s->policy, "rm", s->rmdir, "ref", s->ref, "value", s->value, "out", s->out,
        "iterations", o->iterations, "batch", o->batch, "samples", o->samples, "max_new",
        o->max_new, "temperature", (double)o->temperature, "per_job", o->per_job,
        "checkpoint_every", o->ckpt_every, "seed", (json_int_t)o->seed, "gold", o->gold,
        "count_token", o->count_token, "eot", s->eot, "vocab", s->vocab, "score_mean", s->s_mean,
        "score_std", s->s_std, "config_json", s->cfg_json, "prompts", prompts, "n_prompts",
        s->ps.n);
    if (plan && o->program && o->program[0]) {
        json_t *rp = json_pack(
            "{s:s, s:f, s:f, s:f, s:i}", "reward_program", o->program, "reward_program_weight",
            (double)o->program_weight, "rm_weight", (double)o->rm_weight, "reward_program_fallback",
            (double)o->program_fallback, "reward_program_timeout_ms", o->program_timeout_ms);
        json_object_update(plan, rp);
        json_decref(rp);
    }
    /* the models by content too, for workers that do not share this disk: the master names
     * them so in its jobs (run by a stage worker; alone, paths are all there is) */
    const char *models[][2] = {
        {"policy", s->policy}, {"rm", s->rmdir}, {"ref", s->ref}, {"value", s->value}};
    for (int i = 0; plan && i < 4; i++) {
        char ref[PATH_MAX + 80], key[16];
        if ((rc = local_publish_env(models[i][1], ref, sizeof ref)) < 0) {
            json_decref(plan);
            return rc;
        }
        snprintf(key, sizeof key, "%s_ref", models[i][0]);
        if (ref[0]) json_object_set_new(plan, key, json_string(ref));
    }
    char *txt = plan ? json_dumps(plan, JSON_INDENT(2)) : NULL;
    json_decref(plan);
    return write_out(s, "ppo_plan.json", txt, txt ? strlen(txt) : 0, plan_path, sizeof plan_path);
}

int cmd_ppo_prep(int argc, char **argv) {
    ppo_opts_t o;
    int ret = ppo_parse(&o, argc, argv);
    if (ret == CLI_OPTS_GO) {
        static ppo_prep_t prep; /* large (paths); one per process */
        ppo_prep_t *s = &prep;
        memset(s, 0, sizeof *s);
        s->o = &o;
        ret = 1;
        if (ppo_prepare(s) == 0) {
            int rc = ppo_prep_write(s);
            if (rc < 0)
                cli_fail("ppo", "writing the plan", rc);
            else {
                fprintf(stderr, "rlhf ppo: %d prompts, %s/ppo_plan.json written\n", s->ps.n,
                        s->out);
                ret = 0;
            }
        }
        ppo_prep_free(s);
    }
    ppo_opts_free(&o);
    return ret;
}

/* ---- rlhf ppo: a run of the local master --------------------------------------------------- */

/* path made absolute against cwd (lexically: it need not exist yet), without trailing '/'. */
static void abs_path(const char *cwd, const char *path, char *out, size_t n) {
    if (path[0] == '/')
        snprintf(out, n, "%s", path);
    else
        snprintf(out, n, "%s/%s", cwd, path);
    size_t l = strlen(out);
    while (l > 1 && out[l - 1] == '/') out[--l] = 0;
}

/* The options whose values are paths: made absolute in the stage's argv. */
static int is_path_opt(const char *name, size_t len) {
    static const char *paths[] = {"policy", "rm", "prompts", "out", "ref", "value", "config"};
    for (int i = 0; i < 7; i++)
        if (strlen(paths[i]) == len && !strncmp(name, paths[i], len)) return 1;
    return 0;
}

/* The one-stage plan: {"name", "seed", "cwd", "stages": [{"name": "ppo", "argv": ...}]}. */
static json_t *ppo_plan(const ppo_opts_t *o, const char *cwd, const char *name, int argc,
                        char **argv) {
    json_t *av = json_array();
    json_array_append_new(av, json_string("ppo"));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *eq = strchr(a, '=');
        char p[PATH_MAX + 64], opt[PATH_MAX + 128];
        if (!strncmp(a, "--", 2) && eq && is_path_opt(a + 2, (size_t)(eq - a - 2))) {
            abs_path(cwd, eq + 1, p, sizeof p);
            snprintf(opt, sizeof opt, "%.*s=%s", (int)(eq - a), a, p);
            json_array_append_new(av, json_string(opt));
        } else if (!strncmp(a, "--", 2) && !eq && is_path_opt(a + 2, strlen(a + 2)) &&
                   i + 1 < argc) {
            abs_path(cwd, argv[i + 1], p, sizeof p);
            json_array_append_new(av, json_string(a));
            json_array_append_new(av, json_string(p));
            i++;
        } else {
            json_array_append_new(av, json_string(a));
        }
    }
    json_t *stage = json_pack("{s:s, s:s, s:i, s:o}", "name", "ppo", "summary",
                              "stage 3: PPO (master, rollout, reward and learner workers)",
                              "weight", 1, "argv", av);
    /* "only": a tool run again (more iterations, other settings) runs its stage again - it
     * continues from the iterations already done - instead of finding it done earlier */
    return json_pack("{s:s, s:I, s:s, s:s, s:[o]}", "name", name, "seed", (json_int_t)o->seed,
                     "cwd", cwd, "only", "ppo", "stages", stage);
}

int cmd_ppo(int argc, char **argv) {
    ppo_opts_t o;
    int ret = ppo_parse(&o, argc, argv);
    if (ret != CLI_OPTS_GO) {
        ppo_opts_free(&o);
        return ret;
    }
    char cwd[PATH_MAX], out[PATH_MAX + 64], data[PATH_MAX + 64];
    if (!getcwd(cwd, sizeof cwd)) {
        ppo_opts_free(&o);
        return cli_fail("ppo", "the working directory", RL_EIO);
    }
    abs_path(cwd, o.out, out, sizeof out);
    const char *name = strrchr(out, '/') + 1;
    snprintf(data, sizeof data, "%.*s", (int)(name - out - 1 > 0 ? name - out - 1 : 1), out);
    json_t *plan = ppo_plan(&o, cwd, name, argc, argv);
    char *txt = plan ? json_dumps(plan, JSON_COMPACT) : NULL;
    json_decref(plan);
    char ep[256];
    if (!txt)
        ret = cli_fail("ppo", "the plan", RL_ENOMEM);
    else if (local_cluster_ensure_shards(data, o.shards, ep, sizeof ep) < 0)
        ret = cli_fail("ppo", "the local cluster", RL_EIO);
    else
        ret = runs_submit("ppo", ep, data, name, txt, 0);
    free(txt);
    ppo_opts_free(&o);
    return ret;
}
