/*
 * cmd_ppo.c - `rlhf ppo`: stage 3, PPO through the master, rollout, reward and learner workers.
 *
 *   rlhf ppo --policy DIR --rm DIR --prompts FILE --out DIR [--ref DIR] [--value DIR]
 *            [--iterations N] [--batch P] [--samples K] [--max-new N] [--temperature T]
 *            [--prompts-per-job J] [--rollout R] [--reward M] [--checkpoint-every N]
 *            [--seed S] [--gold] [--set NAME=VALUE]... [--config FILE]
 *
 * The command is the driver of the run; it does no model math. It starts a local master with
 * R rollout workers, M reward workers and one learner (a supervisor restarts any that crashes)
 * and then, for each iteration i (policy version v = i; version 0 is the policy directory's
 * own weights):
 *   1. GENERATE jobs on rollout workers with policy_version v: the iteration's P prompts in jobs
 *      of J, K samples each, with their per-token logprobs (a worker never runs such a job with
 *      older weights: it fetches version v from the learner first);
 *   2. SCORE jobs on reward workers: the reward model's score of each <prompt, completion> and
 *      the frozen reference model's per-token logprobs;
 *   3. one TRAIN job (PPO) on the learner: the update (ppo.h), after which the learner
 *      publishes the weights as version v + 1 and announces them to the master.
 * Jobs go to the master through its client API (client.h): leases, retries on dead workers and
 * exactly-once results are the master's. Each iteration appends one line to OUT/metrics.jsonl
 * (the learner's figures, time per phase, tokens/s, lengths, end-of-text rate and, with --gold,
 * the embedded task's gold score of the rollouts). Seeds are derived from (seed, iteration,
 * job), so an iteration's rollouts do not depend on the number of workers.
 *
 * Resuming: the learner checkpoints every N iterations (OUT/learner, atomically); run the same
 * command again and the driver continues from the newest checkpoint, dropping metrics of the
 * iterations after it (they are redone, and come out the same).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "base/cfg.h"
#include "cli.h"
#include "net/client.h"
#include "base/err.h"
#include "base/fs.h"
#include "nn/hf.h"
#include "base/jsonl.h"
#include "align/ppo.h"
#include "rlhf.pb-c.h"
#include "align/task.h"
#include "nn/tok.h"

typedef struct {
    char *text;
    int *ids;
    size_t n;
} pprompt_t;

typedef struct {
    pprompt_t *p;
    int n, cap;
    tok_t *tok;
    int ctx;
} pset_t;

static int load_p(void *ctx, json_t *o, const char *where) {
    pset_t *s = ctx;
    const char *text;
    int rc = jsonl_get_str(o, "prompt", where, &text);
    if (rc < 0) return rc;
    if (s->n == s->cap) {
        int nc = s->cap ? 2 * s->cap : 64;
        pprompt_t *np = realloc(s->p, (size_t)nc * sizeof *np);
        if (!np) return rl_fail(RL_ENOMEM, "out of memory");
        s->p = np, s->cap = nc;
    }
    pprompt_t *p = &s->p[s->n];
    memset(p, 0, sizeof *p);
    if (!(p->text = strdup(text))) return rl_fail(RL_ENOMEM, "out of memory");
    s->n++;
    if ((rc = tok_encode(s->tok, text, strlen(text), 0, &p->ids, &p->n)) < 0)
        return rl_fail_ctx(rc, "%s: ", where);
    if (p->n < 1 || (int)p->n >= s->ctx)
        return rl_fail(RL_EFORMAT, "%s: the prompt is %zu tokens; the context is %d", where, p->n,
                       s->ctx);
    return 0;
}

/* One rollout of the iteration being run. */
typedef struct {
    int prompt; /* index into the prompt set */
    int *tokens;
    float *logprobs, *ref_logprobs;
    int n, finish;
    float score;
} roll_t;

typedef struct {
    roll_t *r;
    int n_per_job, K, n_jobs, n;
    uint64_t gen_base, score_base;
    json_t *gen_by, *score_by; /* handler time per worker: the phase's critical path is the max */
    json_t *train_out;
    int failed;
    char why[512];
} iter_t;

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return (x ^ (x >> 31)) >> 1;
}

static void per_worker(json_t *by, const client_result_t *r) {
    const char *w = r->worker && r->worker[0] ? r->worker : "?";
    double cur = json_number_value(json_object_get(by, w));
    json_object_set_new(by, w, json_real(cur + r->elapsed_ms));
}

static double max_worker(json_t *by) {
    const char *k;
    json_t *v;
    double m = 0;
    json_object_foreach(by, k, v) m = fmax(m, json_number_value(v));
    return m;
}

static int on_generated(void *ctx, const client_result_t *r) {
    iter_t *it = ctx;
    if (r->status != CLIENT_DONE) {
        it->failed = 1;
        snprintf(it->why, sizeof it->why, "GENERATE job %" PRIu64 " failed: %s", r->id,
                 r->reason ? r->reason : "");
        return 0;
    }
    int c = (int)(r->id - it->gen_base);
    Rlhf__GenerateOutput *g = rlhf__generate_output__unpack(NULL, r->output_len, r->output);
    int first = c * it->n_per_job * it->K;
    int want = (c == it->n_jobs - 1 ? it->n - first : it->n_per_job * it->K);
    if (!g || (int)g->n_completions != want) {
        if (g) rlhf__generate_output__free_unpacked(g, NULL);
        it->failed = 1;
        snprintf(it->why, sizeof it->why, "GENERATE job %" PRIu64 ": malformed output", r->id);
        return 0;
    }
    for (int i = 0; i < want; i++) {
        roll_t *ro = &it->r[first + i];
        const Rlhf__Completion *cp = g->completions[i];
        ro->n = (int)cp->n_tokens;
        ro->tokens = malloc((cp->n_tokens ? cp->n_tokens : 1) * sizeof(int));
        ro->logprobs = malloc((cp->n_tokens ? cp->n_tokens : 1) * sizeof(float));
        if (!ro->tokens || !ro->logprobs) return rl_fail(RL_ENOMEM, "out of memory");
        for (size_t k = 0; k < cp->n_tokens; k++) {
            ro->tokens[k] = cp->tokens[k];
            ro->logprobs[k] = k < cp->n_logprobs ? cp->logprobs[k] : 0;
        }
        ro->finish = (int)cp->finish;
    }
    per_worker(it->gen_by, r);
    rlhf__generate_output__free_unpacked(g, NULL);
    return 0;
}

static int on_scored(void *ctx, const client_result_t *r) {
    iter_t *it = ctx;
    if (r->status != CLIENT_DONE) {
        it->failed = 1;
        snprintf(it->why, sizeof it->why, "SCORE job %" PRIu64 " failed: %s", r->id,
                 r->reason ? r->reason : "");
        return 0;
    }
    int c = (int)(r->id - it->score_base);
    int first = c * it->n_per_job * it->K;
    int want = (c == it->n_jobs - 1 ? it->n - first : it->n_per_job * it->K);
    Rlhf__ScoreOutput *so = rlhf__score_output__unpack(NULL, r->output_len, r->output);
    if (!so || (int)so->n_scores != want || (int)so->n_ref_logprobs != want) {
        if (so) rlhf__score_output__free_unpacked(so, NULL);
        it->failed = 1;
        snprintf(it->why, sizeof it->why, "SCORE job %" PRIu64 ": malformed output", r->id);
        return 0;
    }
    for (int i = 0; i < want; i++) {
        roll_t *ro = &it->r[first + i];
        ro->score = so->scores[i];
        const Rlhf__TokenLogprobs *t = so->ref_logprobs[i];
        ro->ref_logprobs = malloc((ro->n ? (size_t)ro->n : 1) * sizeof(float));
        if (!ro->ref_logprobs) return rl_fail(RL_ENOMEM, "out of memory");
        for (int k = 0; k < ro->n; k++)
            ro->ref_logprobs[k] = k < (int)t->n_logprobs ? t->logprobs[k] : 0;
    }
    per_worker(it->score_by, r);
    rlhf__score_output__free_unpacked(so, NULL);
    return 0;
}

static int on_trained(void *ctx, const client_result_t *r) {
    iter_t *it = ctx;
    if (r->status != CLIENT_DONE) {
        it->failed = 1;
        snprintf(it->why, sizeof it->why, "TRAIN (PPO) job %" PRIu64 " failed: %s", r->id,
                 r->reason ? r->reason : "");
        return 0;
    }
    Rlhf__TrainOutput *t = rlhf__train_output__unpack(NULL, r->output_len, r->output);
    if (!t || !t->ppo) {
        if (t) rlhf__train_output__free_unpacked(t, NULL);
        it->failed = 1;
        snprintf(it->why, sizeof it->why, "TRAIN job %" PRIu64 ": no PPO output", r->id);
        return 0;
    }
    json_t *st = json_loads(t->ppo->stats_json ? t->ppo->stats_json : "", 0, NULL);
    it->train_out = json_pack("{s:I, s:I, s:o, s:f, s:f, s:f, s:b}", "learner_iteration",
                              (json_int_t)t->ppo->iteration, "policy_version",
                              (json_int_t)t->ppo->policy_version, "stats", st ? st : json_object(),
                              "update_ms", t->ppo->update_ms, "publish_ms", t->ppo->publish_ms,
                              "train_handler_ms", r->elapsed_ms, "replayed", (int)t->ppo->replayed);
    rlhf__train_output__free_unpacked(t, NULL);
    return 0;
}

/* ---- resuming ------------------------------------------------------------------------------ */

/* The iteration to resume at: the learner's newest PPO checkpoint, or 0. */
static long resume_iteration(const char *out) {
    char ldir[PATH_MAX + 64], path[PATH_MAX + 128];
    long it = 0;
    snprintf(ldir, sizeof ldir, "%s/learner", out);
    return local_learner_latest(ldir, 1, NULL, path, sizeof path, &it) == 0 ? it : 0;
}

/* Keeps the metrics lines of iterations below `keep` (rewrites the file atomically). */
static int metrics_truncate(const char *path, long keep) {
    char *buf;
    size_t len;
    if (fs_read_all(path, &buf, &len) < 0) return 0;
    size_t w = 0;
    for (char *line = buf; line < buf + len;) {
        char *nl = memchr(line, '\n', (size_t)(buf + len - line));
        size_t ll = nl ? (size_t)(nl - line) + 1 : (size_t)(buf + len - line);
        json_t *o = json_loadb(line, ll, 0, NULL);
        json_t *i = json_object_get(o, "iteration");
        if (json_is_integer(i) && json_integer_value(i) < keep && nl) {
            memmove(buf + w, line, ll);
            w += ll;
        }
        json_decref(o);
        line += ll;
    }
    int rc = fs_write_atomic(path, buf, w);
    free(buf);
    return rc;
}

static int metrics_append(const char *path, json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s) return rl_fail(RL_EINVAL, "metrics: cannot serialise");
    FILE *f = fopen(path, "a");
    int rc = f && fprintf(f, "%s\n", s) > 0 && fflush(f) == 0 && fdatasync(fileno(f)) == 0
                 ? 0
                 : rl_fail(RL_EIO, "%s: %s", path, strerror(errno));
    if (f) fclose(f);
    free(s);
    return rc;
}

/* Copies the newest checkpoint's policy to OUT/policy (a plain model directory), file by file
 * atomically; OUT/policy.json names the iteration it is from. */
static int export_policy(const char *out) {
    char path[PATH_MAX + 64], dst[PATH_MAX + 64], dir[PATH_MAX + 128];
    long it = 0;
    snprintf(path, sizeof path, "%s/learner", out);
    int rc = local_learner_latest(path, 1, NULL, dir, sizeof dir, &it);
    snprintf(dst, sizeof dst, "%s/policy", out);
    if (rc == 0) rc = fs_mkdir_p(dst);
    static const char *files[] = {"model.safetensors", "config.json", "vocab.json", "merges.txt"};
    for (int i = 0; rc == 0 && i < 4; i++) {
        char *data;
        size_t len;
        snprintf(path, sizeof path, "%.4000s/policy/%s", dir, files[i]);
        if ((rc = fs_read_all(path, &data, &len)) < 0) break;
        snprintf(path, sizeof path, "%.4000s/policy/%s", out, files[i]);
        rc = fs_write_atomic(path, data, len);
        free(data);
    }
    if (rc == 0) {
        json_t *m = json_pack("{s:I, s:s}", "iteration", (json_int_t)it, "checkpoint", dir);
        char *txt = json_dumps(m, JSON_COMPACT);
        snprintf(path, sizeof path, "%.4000s/policy.json", out);
        rc = txt ? fs_write_atomic(path, txt, strlen(txt)) : RL_ENOMEM;
        free(txt);
        json_decref(m);
    }
    return rc;
}

/* ---- options ------------------------------------------------------------------------------- */

typedef struct {
    const char *policy, *rm, *ref, *value, *prompts, *out;
    int iterations, batch, samples, max_new, per_job, rollout, reward, ckpt_every, gold;
    int count_token; /* -1: the reward model scores */
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
                "initial value model (default: --rm, as InstructGPT)", 0),
    PO(iterations, "iterations", 1, 1000000, "20", "N", "PPO iterations"),
    PO(batch, "batch", 1, 100000, "32", "P", "prompts per iteration"),
    PO(samples, "samples", 1, 64, "1", "K", "completions per prompt"),
    PO(max_new, "max-new", 1, 100000, "24", "N", "tokens per completion at most"),
    CLI_OPT_FLOAT(ppo_opts_t, temperature, "temperature", 0, 100, "1", "T",
                  "rollout sampling temperature"),
    PO(per_job, "prompts-per-job", 1, 4096, "8", "J", "prompts per GENERATE / SCORE job"),
    PO(rollout, "rollout", 1, 32, "2", "R", "rollout workers"),
    PO(reward, "reward", 1, 16, "1", "M", "reward workers"),
    PO(ckpt_every, "checkpoint-every", 1, 1000000, "1", "N",
       "learner checkpoint every N iterations"),
    CLI_OPT_LONG(ppo_opts_t, seed, "seed", 0, LONG_MAX, "1", "S", "run seed"),
    CLI_OPT_FLAG(ppo_opts_t, gold, "gold",
                 "also score the rollouts with the embedded task's gold judge"),
    PO(count_token, "reward-count-token", 0, INT_MAX, NULL, "ID",
       "a constructed reward instead of --rm (tests): the number of times token ID occurs in "
       "the completion; --rm still gives the value model unless --value is set"),
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
    if (ppo_config_check(&o->pc) < 0) {
        fprintf(stderr, "rlhf ppo: %s\n", rl_errmsg());
        return 2;
    }
    return CLI_OPTS_GO;
}

static void ppo_opts_free(ppo_opts_t *o) {
    for (int i = 0; i < o->n_strs; i++) free(o->strs[i]);
    o->n_strs = 0;
}

/* ---- the session: models, prompts, the cluster ------------------------------------------ */

typedef struct {
    ppo_opts_t *o;
    char policy[PATH_MAX], rmdir[PATH_MAX], ref[PATH_MAX], value[PATH_MAX], out[PATH_MAX];
    char metrics[PATH_MAX + 16];
    pset_t ps;
    int eot, vocab;
    double s_mean, s_std; /* reward-model statistics: seed the score normalisation */
    long start;           /* the iteration to begin with (resuming) */
    local_session_t ss;
    char *cfg_json; /* the PPO settings sent with every TRAIN job */
    int P, K, J, n_jobs;
    iter_t it;
    client_job_t *jobs;
    uint64_t *ids;
    uint8_t **bufs;
} ppo_run_t;

/* Phase 2a: model directories, tokenizer, prompts, reward statistics, the resume point. Returns
 * 0, 1 (all iterations done earlier) or -1 (message printed). */
static int ppo_prepare(ppo_run_t *s) {
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
    if (o->count_token >= 0) s->s_mean = s->s_std = 0; /* not the reward model's scores */
    snprintf(s->metrics, sizeof s->metrics, "%s/metrics.jsonl", s->out);
    s->start = resume_iteration(s->out);
    if (s->start >= o->iterations) {
        fprintf(stderr, "rlhf ppo: all %d iterations done earlier (%s)\n", o->iterations, s->out);
        return 1;
    }
    if ((rc = metrics_truncate(s->metrics, s->start)) < 0) return -cli_fail("ppo", "metrics", rc);
    if (s->start) fprintf(stderr, "rlhf ppo: resuming at iteration %ld\n", s->start);
    return 0;
}

/* Phase 2b: the cluster (master, workers, learner) and the iteration buffers. Returns 0 or -1
 * (message printed). */
static int ppo_open(ppo_run_t *s) {
    ppo_opts_t *o = s->o;
    int rc = local_session_open(&s->ss, s->out, o->rollout, o->reward, 1, "ppo-driver");
    if (rc < 0) return -cli_fail("ppo", "cluster", rc);
    json_t *cfgj = ppo_config_to_json(&o->pc);
    s->cfg_json = json_dumps(cfgj, JSON_COMPACT);
    json_decref(cfgj);
    s->P = o->batch, s->K = o->samples, s->J = o->per_job;
    s->n_jobs = (s->P + s->J - 1) / s->J;
    s->it.r = calloc((size_t)s->P * s->K, sizeof *s->it.r);
    s->jobs = calloc((size_t)s->n_jobs, sizeof *s->jobs);
    s->ids = calloc((size_t)s->n_jobs, sizeof *s->ids);
    s->bufs = calloc((size_t)s->n_jobs, sizeof *s->bufs);
    if (!s->it.r || !s->jobs || !s->ids || !s->bufs || !s->cfg_json) {
        fprintf(stderr, "rlhf ppo: out of memory\n");
        return -1;
    }
    return 0;
}

static void ppo_close(ppo_run_t *s) {
    for (int k = 0; s->it.r && k < s->P * s->K; k++)
        free(s->it.r[k].tokens), free(s->it.r[k].logprobs), free(s->it.r[k].ref_logprobs);
    free(s->it.r);
    json_decref(s->it.train_out);
    json_decref(s->it.gen_by), json_decref(s->it.score_by);
    free(s->jobs);
    free(s->ids);
    free(s->bufs);
    free(s->cfg_json);
    local_session_close(&s->ss);
    for (int i = 0; i < s->ps.n; i++) free(s->ps.p[i].text), free(s->ps.p[i].ids);
    free(s->ps.p);
    tok_destroy(&s->ps.tok);
}

/* ---- one iteration ------------------------------------------------------------------------ */

/* Empties the rollouts and points them at iteration i's prompts (the prompt cursor). */
static void iter_reset(ppo_run_t *s, long i) {
    iter_t *it = &s->it;
    int P = s->P, K = s->K;
    for (int k = 0; k < P * K; k++) {
        free(it->r[k].tokens), free(it->r[k].logprobs), free(it->r[k].ref_logprobs);
        memset(&it->r[k], 0, sizeof it->r[k]);
        it->r[k].prompt = (int)(((long)i * P + k / K) % s->ps.n);
    }
    it->n_per_job = s->J, it->K = K, it->n_jobs = s->n_jobs, it->n = P * K;
    it->failed = 0;
    json_decref(it->gen_by), json_decref(it->score_by);
    it->gen_by = json_object(), it->score_by = json_object();
    json_decref(it->train_out);
    it->train_out = NULL;
    /* ids: iteration i owns [i * 2^20 + 1, (i + 1) * 2^20) */
    uint64_t base = (uint64_t)i << 20;
    it->gen_base = base + 1;
    it->score_base = base + 1 + 0x40000;
}

/* Submits the prepared jobs[0..n_jobs) and waits for them; frees their payloads. */
static int submit_wait(ppo_run_t *s, client_result_fn on) {
    int rc = client_submit(s->ss.client, s->jobs, s->n_jobs);
    for (int c = 0; c < s->n_jobs; c++) free(s->bufs[c]), s->bufs[c] = NULL;
    if (rc == 0) rc = client_wait(s->ss.client, s->ids, s->n_jobs, -1, on, &s->it);
    return rc;
}

/* 1. GENERATE jobs on the rollout workers with policy version i. */
static int ppo_generate(ppo_run_t *s, long i) {
    iter_t *it = &s->it;
    int P = s->P, K = s->K, J = s->J;
    for (int c2 = 0; c2 < s->n_jobs; c2++) {
        Rlhf__GenerateSpec sp = RLHF__GENERATE_SPEC__INIT;
        int np = c2 == s->n_jobs - 1 ? P - c2 * J : J;
        Rlhf__PromptIds *pids = calloc((size_t)np, sizeof *pids);
        Rlhf__PromptIds **pp = calloc((size_t)np, sizeof *pp);
        int32_t **tmp = calloc((size_t)np, sizeof *tmp);
        for (int q = 0; pids && pp && tmp && q < np; q++) {
            const pprompt_t *pr = &s->ps.p[it->r[(c2 * J + q) * K].prompt];
            rlhf__prompt_ids__init(&pids[q]);
            tmp[q] = malloc(pr->n * sizeof(int32_t));
            for (size_t t = 0; tmp[q] && t < pr->n; t++) tmp[q][t] = pr->ids[t];
            pids[q].ids = tmp[q];
            pids[q].n_ids = pr->n;
            pp[q] = &pids[q];
        }
        sp.model_dir = s->policy;
        sp.prompts = pp;
        sp.n_prompts = (size_t)np;
        sp.max_new_tokens = (uint32_t)s->o->max_new;
        sp.n_samples = (uint32_t)K;
        sp.temperature = s->o->temperature;
        sp.top_p = 1.0f;
        sp.eot = s->eot;
        sp.vocab_limit = (uint32_t)s->vocab;
        size_t len = rlhf__generate_spec__get_packed_size(&sp);
        s->bufs[c2] = malloc(len ? len : 1);
        if (s->bufs[c2]) rlhf__generate_spec__pack(&sp, s->bufs[c2]);
        for (int q = 0; tmp && q < np; q++) free(tmp[q]);
        free(tmp), free(pp), free(pids);
        s->ids[c2] = it->gen_base + (uint64_t)c2;
        s->jobs[c2] =
            (client_job_t){.id = s->ids[c2],
                           .kind = RLHF__JOB_KIND__JOB_KIND_GENERATE,
                           .seed = mix((uint64_t)s->o->seed ^ mix((uint64_t)i * 4096 + c2)),
                           .policy_version = (uint64_t)i,
                           .role = RLHF__ROLE__ROLE_ROLLOUT,
                           .payload = s->bufs[c2],
                           .payload_len = len};
    }
    return submit_wait(s, on_generated);
}

/* 2. SCORE jobs on the reward workers: reward-model scores and reference logprobs. */
static int ppo_score(ppo_run_t *s) {
    iter_t *it = &s->it;
    int P = s->P, K = s->K, J = s->J, ct = s->o->count_token;
    for (int c2 = 0; c2 < s->n_jobs; c2++) {
        int first = c2 * J * K, cnt = (c2 == s->n_jobs - 1 ? P * K - first : J * K);
        Rlhf__ScoreItem *items = calloc((size_t)cnt, sizeof *items);
        Rlhf__ScoreItem **ip = calloc((size_t)cnt, sizeof *ip);
        for (int q = 0; items && ip && q < cnt; q++) {
            roll_t *ro = &it->r[first + q];
            const pprompt_t *pr = &s->ps.p[ro->prompt];
            rlhf__score_item__init(&items[q]);
            items[q].prompt = (int32_t *)pr->ids;
            items[q].n_prompt = pr->n;
            items[q].completion = (int32_t *)ro->tokens;
            items[q].n_completion = (size_t)ro->n;
            ip[q] = &items[q];
        }
        Rlhf__ScoreSpec sp = RLHF__SCORE_SPEC__INIT;
        sp.rm_dir = ct >= 0 ? "" : s->rmdir;
        sp.count_reward = ct >= 0;
        sp.count_token = ct;
        sp.ref_dir = s->ref;
        sp.items = ip;
        sp.n_items = (size_t)cnt;
        sp.eot = s->eot;
        sp.vocab_limit = (uint32_t)s->vocab;
        size_t len = rlhf__score_spec__get_packed_size(&sp);
        s->bufs[c2] = malloc(len ? len : 1);
        if (s->bufs[c2]) rlhf__score_spec__pack(&sp, s->bufs[c2]);
        free(items), free(ip);
        s->ids[c2] = it->score_base + (uint64_t)c2;
        s->jobs[c2] = (client_job_t){.id = s->ids[c2],
                                     .kind = RLHF__JOB_KIND__JOB_KIND_SCORE,
                                     .role = RLHF__ROLE__ROLE_REWARD,
                                     .payload = s->bufs[c2],
                                     .payload_len = len};
    }
    return submit_wait(s, on_scored);
}

/* 3. One TRAIN (PPO) job on the learner: the update, then version i + 1 is published. */
static int ppo_train(ppo_run_t *s, long i) {
    iter_t *it = &s->it;
    int n = s->P * s->K;
    uint64_t train_id = ((uint64_t)i << 20) + 0xFFFFF;
    Rlhf__PpoRollout *rs = calloc((size_t)n, sizeof *rs);
    Rlhf__PpoRollout **rp = calloc((size_t)n, sizeof *rp);
    for (int q = 0; rs && rp && q < n; q++) {
        roll_t *ro = &it->r[q];
        const pprompt_t *pr = &s->ps.p[ro->prompt];
        rlhf__ppo_rollout__init(&rs[q]);
        rs[q].prompt = (int32_t *)pr->ids;
        rs[q].n_prompt = pr->n;
        rs[q].completion = (int32_t *)ro->tokens;
        rs[q].n_completion = (size_t)ro->n;
        rs[q].logprobs = ro->logprobs;
        rs[q].n_logprobs = (size_t)ro->n;
        rs[q].ref_logprobs = ro->ref_logprobs;
        rs[q].n_ref_logprobs = (size_t)ro->n;
        rs[q].score = ro->score;
        rp[q] = &rs[q];
    }
    Rlhf__PpoSpec pp = RLHF__PPO_SPEC__INIT;
    pp.iteration = (uint64_t)i;
    pp.policy_dir = s->policy;
    pp.value_dir = s->value;
    pp.config_json = s->cfg_json;
    pp.rollouts = rp;
    pp.n_rollouts = (size_t)n;
    pp.seed = (uint64_t)s->o->seed;
    pp.checkpoint_every = (uint32_t)s->o->ckpt_every;
    pp.score_mean = s->s_mean;
    pp.score_std = s->s_std;
    pp.last = i == s->o->iterations - 1;
    Rlhf__TrainSpec ts = RLHF__TRAIN_SPEC__INIT;
    ts.kind = RLHF__TRAIN_KIND__TRAIN_KIND_PPO;
    ts.ppo = &pp;
    ts.ckpt_dir = s->ss.learner; /* OUT/learner, whichever learner trains */
    size_t len = rlhf__train_spec__get_packed_size(&ts);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf) rlhf__train_spec__pack(&ts, buf);
    free(rs), free(rp);
    client_job_t tj = {.id = train_id,
                       .kind = RLHF__JOB_KIND__JOB_KIND_TRAIN,
                       .policy_version = 0,
                       .role = RLHF__ROLE__ROLE_LEARNER,
                       .lease_ms = 600000,
                       .payload = buf,
                       .payload_len = len};
    int rc = client_submit(s->ss.client, &tj, 1);
    free(buf);
    if (rc == 0) rc = client_wait(s->ss.client, &train_id, 1, -1, on_trained, it);
    if (rc == 0 && !it->train_out && !it->failed) rc = rl_fail(RL_EIO, "TRAIN: no output");
    return rc;
}

/* The iteration's figures: one metrics line (appended) and one progress line on stdout. */
static int ppo_report(ppo_run_t *s, long i, double t_gen, double t_score, double t_update,
                      double t_total) {
    iter_t *it = &s->it;
    int n = s->P * s->K, gold_on = s->o->gold;
    long toks = 0, eots = 0;
    double gold = 0;
    for (int q = 0; q < n; q++) {
        roll_t *ro = &it->r[q];
        toks += ro->n;
        eots += ro->finish == 1;
        if (gold_on) {
            char *text = NULL;
            size_t tl;
            int nd = ro->n && ro->finish == 1 ? ro->n - 1 : ro->n;
            if (tok_decode(s->ps.tok, ro->tokens, (size_t)nd, &text, &tl) == 0) {
                float sc[TASK_NCRIT];
                task_score(s->ps.p[ro->prompt].text, text, sc);
                gold += task_gold(sc);
            }
            free(text);
        }
    }
    double upd_ms = json_number_value(json_object_get(it->train_out, "update_ms"));
    double pub_ms = json_number_value(json_object_get(it->train_out, "publish_ms"));
    /* the framework's own share: everything but model math. The math of a phase is its
     * critical path: the busiest worker's handler time (the update: the learner's
     * ppo_update alone, not its checkpoint and publish). */
    double math_ms = max_worker(it->gen_by) + max_worker(it->score_by) + upd_ms;
    json_t *m = json_pack("{s:I, s:I, s:O, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I}",
                          "iteration", (json_int_t)i, "policy_version",
                          json_integer_value(json_object_get(it->train_out, "policy_version")),
                          "ppo", json_object_get(it->train_out, "stats"), "response_length",
                          (double)toks / n, "eot_rate", (double)eots / n, "ms_generate", t_gen,
                          "ms_score", t_score, "ms_update", t_update, "ms_update_math", upd_ms,
                          "ms_weight_publish", pub_ms, "ms_iteration", t_total, "overhead_frac",
                          t_total > 0 ? fmax(0, 1 - math_ms / t_total) : 0, "tokens_per_s",
                          toks / (t_gen > 0 ? t_gen / 1000 : 1e-9), "rollouts", (json_int_t)n);
    if (gold_on) json_object_set_new(m, "gold_mean", json_real(gold / n));
    json_object_set_new(m, "ms_generate_math", json_real(max_worker(it->gen_by)));
    json_object_set_new(m, "ms_score_math", json_real(max_worker(it->score_by)));
    json_t *stats = json_object_get(m, "ppo");
    char line[400];
    snprintf(line, sizeof line, "{\"iter\": %ld, \"iters\": %d, \"score\": %.4f, \"kl\": %.4f%s%s}",
             i + 1, s->o->iterations, json_number_value(json_object_get(stats, "score_mean")),
             json_number_value(json_object_get(stats, "kl_k1")), gold_on ? ", \"gold\": " : "", "");
    if (gold_on) {
        size_t l = strlen(line) - 1;
        snprintf(line + l, sizeof line - l, "%.4f}", gold / n);
    }
    printf("%s\n", line);
    fflush(stdout);
    int rc = metrics_append(s->metrics, m);
    return rc < 0 ? -cli_fail("ppo", "metrics", rc) : 0;
}

/* Phase 3: iteration i - generate, score, update, report. Returns 0 or -1 (message printed). */
static int ppo_iteration(ppo_run_t *s, long i) {
    iter_t *it = &s->it;
    double t_iter = cli_now_ms(), t0 = t_iter;
    iter_reset(s, i);
    int rc = ppo_generate(s, i);
    double t_gen = cli_now_ms() - t0;
    t0 = cli_now_ms();
    if (rc == 0 && !it->failed) rc = ppo_score(s);
    double t_score = cli_now_ms() - t0;
    t0 = cli_now_ms();
    if (rc == 0 && !it->failed) rc = ppo_train(s, i);
    if (rc < 0 || it->failed) {
        fprintf(stderr, "rlhf ppo: iteration %ld: %s\n", i, it->failed ? it->why : rl_errmsg());
        return -1;
    }
    double t_update = cli_now_ms() - t0, t_total = cli_now_ms() - t_iter;
    return ppo_report(s, i, t_gen, t_score, t_update, t_total);
}

/* Phase 4: the policy exported, the summary printed. Returns the exit status. */
static int ppo_finish(ppo_run_t *s) {
    if (export_policy(s->out) < 0) return cli_fail("ppo", "exporting the policy", RL_EIO);
    fprintf(stderr, "rlhf ppo: %d iterations done; metrics in %s, the policy in %s/policy\n",
            s->o->iterations, s->metrics, s->out);
    return 0;
}

int cmd_ppo(int argc, char **argv) {
    ppo_opts_t o;
    int ret = ppo_parse(&o, argc, argv);
    if (ret != CLI_OPTS_GO) {
        ppo_opts_free(&o);
        return ret;
    }
    static ppo_run_t run; /* large (paths); one per process */
    ppo_run_t *s = &run;
    memset(s, 0, sizeof *s);
    s->o = &o;
    int rc = ppo_prepare(s);
    ret = rc > 0 ? 0 : 1;
    if (rc == 0 && ppo_open(s) == 0) {
        long i = s->start;
        while (i < o.iterations && ppo_iteration(s, i) == 0) i++;
        if (i == o.iterations) ret = ppo_finish(s);
    }
    ppo_close(s);
    ppo_opts_free(&o);
    return ret;
}
