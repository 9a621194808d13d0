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
    return local_learner_latest(ldir, NULL, path, sizeof path, &it) == 0 ? it : 0;
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
    int rc = local_learner_latest(path, NULL, dir, sizeof dir, &it);
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

static const char ppo_help[] =
    "usage: rlhf ppo --policy DIR --rm DIR --prompts FILE --out DIR [options]\n\n"
    "PPO through a local master with rollout, reward and learner workers.\n\n"
    "  --ref DIR             frozen reference for the KL penalty (default: --policy)\n"
    "  --value DIR           initial value model (default: --rm, as InstructGPT)\n"
    "  --iterations N        PPO iterations (default 20)\n"
    "  --batch P             prompts per iteration (default 32)\n"
    "  --samples K           completions per prompt (default 1)\n"
    "  --max-new N           tokens per completion at most (default 24)\n"
    "  --temperature T       rollout sampling temperature (default 1)\n"
    "  --prompts-per-job J   prompts per GENERATE / SCORE job (default 8)\n"
    "  --rollout R           rollout workers (default 2)\n"
    "  --reward M            reward workers (default 1)\n"
    "  --checkpoint-every N  learner checkpoint every N iterations (default 1)\n"
    "  --seed S              run seed (default 1)\n"
    "  --gold                also score the rollouts with the embedded task's gold judge\n"
    "  --reward-count-token ID   a constructed reward instead of --rm (tests): the number of\n"
    "                        times token ID occurs in the completion; --rm still gives the\n"
    "                        value model unless --value is set\n"
    "  --set NAME=VALUE      a PPO setting (ppo.h; `rlhf ppo --list-settings`)\n"
    "  --config FILE         YAML: the `ppo:` mapping holds these options (names with _)\n"
    "                        and PPO settings; command-line options win\n"
    "  --list-settings       print the PPO settings and their defaults\n";

typedef struct {
    const char *policy, *rm, *ref, *value, *prompts, *out;
    int iterations, batch, samples, max_new, per_job, rollout, reward, ckpt_every, gold;
    float temperature;
    long seed;
    ppo_config_t pc;
} ppo_opts_t;

/* A `ppo.NAME` key of a --config file: a driver option or a PPO setting. */
typedef struct {
    ppo_opts_t *o;
    char *strs[16];
    int n_strs;
} cfgctx_t;

static int ppo_cfg_key(void *ctx, const char *key, const char *value, const char *where) {
    cfgctx_t *c = ctx;
    ppo_opts_t *o = c->o;
    if (strncmp(key, "ppo.", 4)) return 0; /* other stages' keys: not ours */
    const char *k = key + 4;
    struct {
        const char *name;
        const char **s;
        int *i;
        long lo, hi;
    } opts[] = {{"policy", &o->policy, NULL, 0, 0},
                {"rm", &o->rm, NULL, 0, 0},
                {"ref", &o->ref, NULL, 0, 0},
                {"value", &o->value, NULL, 0, 0},
                {"prompts", &o->prompts, NULL, 0, 0},
                {"out", &o->out, NULL, 0, 0},
                {"iterations", NULL, &o->iterations, 1, 1000000},
                {"batch", NULL, &o->batch, 1, 100000},
                {"samples", NULL, &o->samples, 1, 64},
                {"max_new", NULL, &o->max_new, 1, 100000},
                {"prompts_per_job", NULL, &o->per_job, 1, 4096},
                {"rollout", NULL, &o->rollout, 1, 32},
                {"reward", NULL, &o->reward, 1, 16},
                {"checkpoint_every", NULL, &o->ckpt_every, 1, 1000000}};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        if (strcmp(k, opts[i].name)) continue;
        if (opts[i].s) {
            if (c->n_strs == 16) return rl_fail(RL_EINVAL, "%s: too many paths", where);
            *opts[i].s = c->strs[c->n_strs++] = strdup(value);
            return 0;
        }
        char *end;
        long v = strtol(value, &end, 10);
        if (end == value || *end || v < opts[i].lo || v > opts[i].hi)
            return rl_fail(RL_EINVAL, "%s: %s: '%s' is not an integer in [%ld, %ld]", where, key,
                           value, opts[i].lo, opts[i].hi);
        *opts[i].i = (int)v;
        return 0;
    }
    if (!strcmp(k, "temperature")) {
        char *end;
        double d = strtod(value, &end);
        if (end == value || *end || !(d >= 0 && d <= 100))
            return rl_fail(RL_EINVAL, "%s: %s: '%s' is not a temperature", where, key, value);
        o->temperature = (float)d;
        return 0;
    }
    return ppo_config_set(&o->pc, k, value, where);
}

int cmd_ppo(int argc, char **argv) {
    static const struct option opts[] = {{"policy", 1, 0, 'p'},
                                         {"rm", 1, 0, 'r'},
                                         {"ref", 1, 0, 'R'},
                                         {"value", 1, 0, 'V'},
                                         {"prompts", 1, 0, 'P'},
                                         {"out", 1, 0, 'o'},
                                         {"iterations", 1, 0, 'n'},
                                         {"batch", 1, 0, 'b'},
                                         {"samples", 1, 0, 'k'},
                                         {"max-new", 1, 0, 'm'},
                                         {"temperature", 1, 0, 't'},
                                         {"prompts-per-job", 1, 0, 'j'},
                                         {"rollout", 1, 0, 'w'},
                                         {"reward", 1, 0, 'W'},
                                         {"checkpoint-every", 1, 0, 'c'},
                                         {"seed", 1, 0, 's'},
                                         {"gold", 0, 0, 'g'},
                                         {"reward-count-token", 1, 0, 'X'},
                                         {"set", 1, 0, 'S'},
                                         {"config", 1, 0, 'C'},
                                         {"list-settings", 0, 0, 'L'},
                                         {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    ppo_opts_t o = {.iterations = 20,
                    .batch = 32,
                    .samples = 1,
                    .max_new = 24,
                    .per_job = 8,
                    .rollout = 2,
                    .reward = 1,
                    .ckpt_every = 1,
                    .temperature = 1.0f,
                    .seed = 1};
    ppo_config_default(&o.pc);
    o.pc.score_norm = PPO_SCORE_NORM; /* reward-model scores to unit scale (ppo.h explains) */
    cfgctx_t cc = {.o = &o};
    const char *sets[64];
    int n_sets = 0, c, ret = 1, rc, count_token = -1;
    /* a --config file first, so that the command line wins */
    for (int i = 1; i < argc - 1; i++)
        if (!strcmp(argv[i], "--config")) {
            cfg_run_t cfg;
            cfg_defaults(&cfg);
            cfg.extra_set = ppo_cfg_key;
            cfg.extra_ctx = &cc;
            rc = cfg_load_yaml(&cfg, argv[i + 1]);
            cfg_free(&cfg);
            if (rc < 0) {
                fprintf(stderr, "rlhf ppo: %s\n", rl_errmsg());
                return 2;
            }
        }
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'p':
            o.policy = optarg;
            break;
        case 'r':
            o.rm = optarg;
            break;
        case 'R':
            o.ref = optarg;
            break;
        case 'V':
            o.value = optarg;
            break;
        case 'P':
            o.prompts = optarg;
            break;
        case 'o':
            o.out = optarg;
            break;
        case 'n':
            bad = cli_int("ppo", "iterations", optarg, 1, 1000000, &o.iterations);
            break;
        case 'b':
            bad = cli_int("ppo", "batch", optarg, 1, 100000, &o.batch);
            break;
        case 'k':
            bad = cli_int("ppo", "samples", optarg, 1, 64, &o.samples);
            break;
        case 'm':
            bad = cli_int("ppo", "max-new", optarg, 1, 100000, &o.max_new);
            break;
        case 't':
            bad = cli_float("ppo", "temperature", optarg, 0, 100, &o.temperature);
            break;
        case 'j':
            bad = cli_int("ppo", "prompts-per-job", optarg, 1, 4096, &o.per_job);
            break;
        case 'w':
            bad = cli_int("ppo", "rollout", optarg, 1, 32, &o.rollout);
            break;
        case 'W':
            bad = cli_int("ppo", "reward", optarg, 1, 16, &o.reward);
            break;
        case 'c':
            bad = cli_int("ppo", "checkpoint-every", optarg, 1, 1000000, &o.ckpt_every);
            break;
        case 's':
            bad = cli_long("ppo", "seed", optarg, 0, LONG_MAX, &o.seed);
            break;
        case 'g':
            o.gold = 1;
            break;
        case 'X':
            bad = cli_int("ppo", "reward-count-token", optarg, 0, INT_MAX, &count_token);
            break;
        case 'S':
            if (n_sets < 64) sets[n_sets++] = optarg;
            break;
        case 'C':
            break; /* read above */
        case 'L': {
            json_t *d = ppo_config_to_json(&o.pc);
            char *s = json_dumps(d, JSON_INDENT(2) | JSON_REAL_PRECISION(7));
            printf("%s\n", s ? s : "{}");
            free(s);
            json_decref(d);
            return 0;
        }
        case 'h':
            fputs(ppo_help, stdout);
            return 0;
        default:
            return cli_usage_error("ppo");
        }
        if (bad < 0) return 2;
    }
    for (int i = 0; i < n_sets; i++) {
        char name[64];
        const char *eq = strchr(sets[i], '=');
        if (!eq || eq == sets[i] || (size_t)(eq - sets[i]) >= sizeof name) {
            fprintf(stderr, "rlhf ppo: --set: '%s' is not NAME=VALUE\n", sets[i]);
            return 2;
        }
        memcpy(name, sets[i], (size_t)(eq - sets[i]));
        name[eq - sets[i]] = 0;
        if (ppo_config_set(&o.pc, name, eq + 1, "--set") < 0) {
            fprintf(stderr, "rlhf ppo: %s\n", rl_errmsg());
            return 2;
        }
    }
    if (!o.policy || !o.rm || !o.prompts || !o.out) {
        fprintf(stderr, "rlhf ppo: --policy, --rm, --prompts and --out are required\n");
        return cli_usage_error("ppo");
    }
    if (ppo_config_check(&o.pc) < 0) {
        fprintf(stderr, "rlhf ppo: %s\n", rl_errmsg());
        return 2;
    }
    char policy[PATH_MAX], rmdir_[PATH_MAX], ref[PATH_MAX], value[PATH_MAX], out[PATH_MAX];
    if (!realpath(o.policy, policy) || !realpath(o.rm, rmdir_) ||
        !realpath(o.ref ? o.ref : o.policy, ref) || !realpath(o.value ? o.value : o.rm, value)) {
        fprintf(stderr, "rlhf ppo: a model directory does not exist: %s\n", strerror(errno));
        return 1;
    }
    if (fs_mkdir_p(o.out) < 0 || !realpath(o.out, out)) {
        fprintf(stderr, "rlhf ppo: %s: cannot create it\n", o.out);
        return 1;
    }
    pset_t ps = {0};
    gpt_config_t mc;
    if ((rc = hf_config_read(policy, &mc)) < 0) return cli_fail("ppo", "policy", rc);
    ps.ctx = mc.n_positions;
    if (!(ps.tok = tok_load(policy))) return cli_fail("ppo", "tokenizer", RL_EINVAL);
    int eot = tok_eot(ps.tok), vocab = tok_vocab_size(ps.tok);
    o.pc.vocab_limit = vocab;
    o.pc.seed = (uint64_t)o.seed;
    char metrics[PATH_MAX + 16];
    local_session_t ss = {0};
    client_t *cl = NULL; /* the session's */
    iter_t it = {0};
    long n = jsonl_read(o.prompts, load_p, &ps);
    if (n < 0) {
        cli_fail("ppo", "prompts", (int)n);
        goto done;
    }
    if (ps.n == 0) {
        fprintf(stderr, "rlhf ppo: %s: no prompts\n", o.prompts);
        goto done;
    }
    /* reward-model statistics seed the score normalisation */
    double s_mean = 0, s_std = 0;
    {
        char sp[PATH_MAX + 32];
        snprintf(sp, sizeof sp, "%s/reward_stats.json", rmdir_);
        json_t *st = json_load_file(sp, 0, NULL);
        s_mean = json_number_value(json_object_get(st, "mean"));
        s_std = json_number_value(json_object_get(st, "std"));
        json_decref(st);
        if (count_token >= 0) s_mean = s_std = 0; /* not the reward model's scores */
    }
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", out);
    long start = resume_iteration(out);
    if (start >= o.iterations) {
        fprintf(stderr, "rlhf ppo: all %d iterations done earlier (%s)\n", o.iterations, out);
        ret = 0;
        goto done;
    }
    if ((rc = metrics_truncate(metrics, start)) < 0) {
        cli_fail("ppo", "metrics", rc);
        goto done;
    }
    if (start) fprintf(stderr, "rlhf ppo: resuming at iteration %ld\n", start);
    if ((rc = local_session_open(&ss, out, o.rollout, o.reward, 1, "ppo-driver")) < 0) {
        cli_fail("ppo", "cluster", rc);
        goto done;
    }
    cl = ss.client;
    json_t *cfgj = ppo_config_to_json(&o.pc);
    char *cfg_json = json_dumps(cfgj, JSON_COMPACT);
    json_decref(cfgj);
    int P = o.batch, K = o.samples, J = o.per_job;
    int n_jobs = (P + J - 1) / J;
    it.r = calloc((size_t)P * K, sizeof *it.r);
    client_job_t *jobs = calloc((size_t)n_jobs, sizeof *jobs);
    uint64_t *ids = calloc((size_t)n_jobs, sizeof *ids);
    uint8_t **bufs = calloc((size_t)n_jobs, sizeof *bufs);
    if (!it.r || !jobs || !ids || !bufs || !cfg_json) {
        fprintf(stderr, "rlhf ppo: out of memory\n");
        goto loop_done;
    }
    for (long i = start; i < o.iterations; i++) {
        double t_iter = cli_now_ms();
        for (int k = 0; k < P * K; k++) {
            free(it.r[k].tokens), free(it.r[k].logprobs), free(it.r[k].ref_logprobs);
            memset(&it.r[k], 0, sizeof it.r[k]);
            it.r[k].prompt = (int)(((long)i * P + k / K) % ps.n); /* the prompt cursor */
        }
        it.n_per_job = J, it.K = K, it.n_jobs = n_jobs, it.n = P * K;
        it.failed = 0;
        json_decref(it.gen_by), json_decref(it.score_by);
        it.gen_by = json_object(), it.score_by = json_object();
        json_decref(it.train_out);
        it.train_out = NULL;
        /* ids: iteration i owns [i * 2^20 + 1, (i + 1) * 2^20) */
        uint64_t base = (uint64_t)i << 20;
        it.gen_base = base + 1;
        it.score_base = base + 1 + 0x40000;
        uint64_t train_id = base + 0xFFFFF;
        /* 1. GENERATE */
        double t0 = cli_now_ms();
        for (int c2 = 0; c2 < n_jobs; c2++) {
            Rlhf__GenerateSpec sp = RLHF__GENERATE_SPEC__INIT;
            int np = c2 == n_jobs - 1 ? P - c2 * J : J;
            Rlhf__PromptIds *pids = calloc((size_t)np, sizeof *pids);
            Rlhf__PromptIds **pp = calloc((size_t)np, sizeof *pp);
            int32_t **tmp = calloc((size_t)np, sizeof *tmp);
            for (int q = 0; pids && pp && tmp && q < np; q++) {
                const pprompt_t *pr = &ps.p[it.r[(c2 * J + q) * K].prompt];
                rlhf__prompt_ids__init(&pids[q]);
                tmp[q] = malloc(pr->n * sizeof(int32_t));
                for (size_t t = 0; tmp[q] && t < pr->n; t++) tmp[q][t] = pr->ids[t];
                pids[q].ids = tmp[q];
                pids[q].n_ids = pr->n;
                pp[q] = &pids[q];
            }
            sp.model_dir = policy;
            sp.prompts = pp;
            sp.n_prompts = (size_t)np;
            sp.max_new_tokens = (uint32_t)o.max_new;
            sp.n_samples = (uint32_t)K;
            sp.temperature = o.temperature;
            sp.top_p = 1.0f;
            sp.eot = eot;
            sp.vocab_limit = (uint32_t)vocab;
            size_t len = rlhf__generate_spec__get_packed_size(&sp);
            bufs[c2] = malloc(len ? len : 1);
            if (bufs[c2]) rlhf__generate_spec__pack(&sp, bufs[c2]);
            for (int q = 0; tmp && q < np; q++) free(tmp[q]);
            free(tmp), free(pp), free(pids);
            ids[c2] = it.gen_base + (uint64_t)c2;
            jobs[c2] = (client_job_t){.id = ids[c2],
                                      .kind = RLHF__JOB_KIND__JOB_KIND_GENERATE,
                                      .seed = mix((uint64_t)o.seed ^ mix((uint64_t)i * 4096 + c2)),
                                      .policy_version = (uint64_t)i,
                                      .role = RLHF__ROLE__ROLE_ROLLOUT,
                                      .payload = bufs[c2],
                                      .payload_len = len};
        }
        rc = client_submit(cl, jobs, n_jobs);
        for (int c2 = 0; c2 < n_jobs; c2++) free(bufs[c2]), bufs[c2] = NULL;
        if (rc == 0) rc = client_wait(cl, ids, n_jobs, -1, on_generated, &it);
        if (rc < 0 || it.failed) {
            fprintf(stderr, "rlhf ppo: iteration %ld: %s\n", i, it.failed ? it.why : rl_errmsg());
            goto loop_done;
        }
        double t_gen = cli_now_ms() - t0;
        /* 2. SCORE */
        t0 = cli_now_ms();
        for (int c2 = 0; c2 < n_jobs; c2++) {
            int first = c2 * J * K, cnt = (c2 == n_jobs - 1 ? P * K - first : J * K);
            Rlhf__ScoreItem *items = calloc((size_t)cnt, sizeof *items);
            Rlhf__ScoreItem **ip = calloc((size_t)cnt, sizeof *ip);
            for (int q = 0; items && ip && q < cnt; q++) {
                roll_t *ro = &it.r[first + q];
                const pprompt_t *pr = &ps.p[ro->prompt];
                rlhf__score_item__init(&items[q]);
                items[q].prompt = (int32_t *)pr->ids;
                items[q].n_prompt = pr->n;
                items[q].completion = (int32_t *)ro->tokens;
                items[q].n_completion = (size_t)ro->n;
                ip[q] = &items[q];
            }
            Rlhf__ScoreSpec sp = RLHF__SCORE_SPEC__INIT;
            sp.rm_dir = count_token >= 0 ? "" : rmdir_;
            sp.count_reward = count_token >= 0;
            sp.count_token = count_token;
            sp.ref_dir = ref;
            sp.items = ip;
            sp.n_items = (size_t)cnt;
            sp.eot = eot;
            sp.vocab_limit = (uint32_t)vocab;
            size_t len = rlhf__score_spec__get_packed_size(&sp);
            bufs[c2] = malloc(len ? len : 1);
            if (bufs[c2]) rlhf__score_spec__pack(&sp, bufs[c2]);
            free(items), free(ip);
            ids[c2] = it.score_base + (uint64_t)c2;
            jobs[c2] = (client_job_t){.id = ids[c2],
                                      .kind = RLHF__JOB_KIND__JOB_KIND_SCORE,
                                      .role = RLHF__ROLE__ROLE_REWARD,
                                      .payload = bufs[c2],
                                      .payload_len = len};
        }
        rc = client_submit(cl, jobs, n_jobs);
        for (int c2 = 0; c2 < n_jobs; c2++) free(bufs[c2]), bufs[c2] = NULL;
        if (rc == 0) rc = client_wait(cl, ids, n_jobs, -1, on_scored, &it);
        if (rc < 0 || it.failed) {
            fprintf(stderr, "rlhf ppo: iteration %ld: %s\n", i, it.failed ? it.why : rl_errmsg());
            goto loop_done;
        }
        double t_score = cli_now_ms() - t0;
        /* 3. UPDATE */
        t0 = cli_now_ms();
        {
            Rlhf__PpoRollout *rs = calloc((size_t)P * K, sizeof *rs);
            Rlhf__PpoRollout **rp = calloc((size_t)P * K, sizeof *rp);
            for (int q = 0; rs && rp && q < P * K; q++) {
                roll_t *ro = &it.r[q];
                const pprompt_t *pr = &ps.p[ro->prompt];
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
            pp.policy_dir = policy;
            pp.value_dir = value;
            pp.config_json = cfg_json;
            pp.rollouts = rp;
            pp.n_rollouts = (size_t)P * K;
            pp.seed = (uint64_t)o.seed;
            pp.checkpoint_every = (uint32_t)o.ckpt_every;
            pp.score_mean = s_mean;
            pp.score_std = s_std;
            pp.last = i == o.iterations - 1;
            Rlhf__TrainSpec ts = RLHF__TRAIN_SPEC__INIT;
            ts.kind = RLHF__TRAIN_KIND__TRAIN_KIND_PPO;
            ts.ppo = &pp;
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
            rc = client_submit(cl, &tj, 1);
            free(buf);
            if (rc == 0) rc = client_wait(cl, &train_id, 1, -1, on_trained, &it);
        }
        if (rc < 0 || it.failed || !it.train_out) {
            fprintf(stderr, "rlhf ppo: iteration %ld: %s\n", i, it.failed ? it.why : rl_errmsg());
            goto loop_done;
        }
        double t_update = cli_now_ms() - t0, t_total = cli_now_ms() - t_iter;
        /* the iteration's figures */
        long toks = 0, eots = 0;
        double gold = 0;
        for (int q = 0; q < P * K; q++) {
            roll_t *ro = &it.r[q];
            toks += ro->n;
            eots += ro->finish == 1;
            if (o.gold) {
                char *text = NULL;
                size_t tl;
                int nd = ro->n && ro->finish == 1 ? ro->n - 1 : ro->n;
                if (tok_decode(ps.tok, ro->tokens, (size_t)nd, &text, &tl) == 0) {
                    float sc[TASK_NCRIT];
                    task_score(ps.p[ro->prompt].text, text, sc);
                    gold += task_gold(sc);
                }
                free(text);
            }
        }
        double upd_ms = json_number_value(json_object_get(it.train_out, "update_ms"));
        double pub_ms = json_number_value(json_object_get(it.train_out, "publish_ms"));
        /* the framework's own share: everything but model math. The math of a phase is its
         * critical path: the busiest worker's handler time (the update: the learner's
         * ppo_update alone, not its checkpoint and publish). */
        double math_ms = max_worker(it.gen_by) + max_worker(it.score_by) + upd_ms;
        json_t *m =
            json_pack("{s:I, s:I, s:O, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I}",
                      "iteration", (json_int_t)i, "policy_version",
                      json_integer_value(json_object_get(it.train_out, "policy_version")), "ppo",
                      json_object_get(it.train_out, "stats"), "response_length",
                      (double)toks / (P * K), "eot_rate", (double)eots / (P * K), "ms_generate",
                      t_gen, "ms_score", t_score, "ms_update", t_update, "ms_update_math", upd_ms,
                      "ms_weight_publish", pub_ms, "ms_iteration", t_total, "overhead_frac",
                      t_total > 0 ? fmax(0, 1 - math_ms / t_total) : 0, "tokens_per_s",
                      toks / (t_gen > 0 ? t_gen / 1000 : 1e-9), "rollouts", (json_int_t)(P * K));
        if (o.gold) json_object_set_new(m, "gold_mean", json_real(gold / (P * K)));
        json_object_set_new(m, "ms_generate_math", json_real(max_worker(it.gen_by)));
        json_object_set_new(m, "ms_score_math", json_real(max_worker(it.score_by)));
        json_t *stats = json_object_get(m, "ppo");
        char line[400];
        snprintf(
            line, sizeof line, "{\"iter\": %ld, \"iters\": %d, \"score\": %.4f, \"kl\": %.4f%s%s}",
            i + 1, o.iterations, json_number_value(json_object_get(stats, "score_mean")),
            json_number_value(json_object_get(stats, "kl_k1")), o.gold ? ", \"gold\": " : "", "");
        if (o.gold) {
            size_t l = strlen(line) - 1;
            snprintf(line + l, sizeof line - l, "%.4f}", gold / (P * K));
        }
        printf("%s\n", line);
        fflush(stdout);
        if ((rc = metrics_append(metrics, m)) < 0) {
            cli_fail("ppo", "metrics", rc);
            goto loop_done;
        }
    }
    ret = export_policy(out) < 0 ? cli_fail("ppo", "exporting the policy", RL_EIO) : 0;
    if (ret == 0)
        fprintf(stderr, "rlhf ppo: %d iterations done; metrics in %s, the policy in %s/policy\n",
                o.iterations, metrics, out);
loop_done:
    for (int k = 0; it.r && k < P * K; k++)
        free(it.r[k].tokens), free(it.r[k].logprobs), free(it.r[k].ref_logprobs);
    free(it.r);
    json_decref(it.train_out);
    json_decref(it.gen_by), json_decref(it.score_by);
    free(jobs);
    free(ids);
    free(bufs);
    free(cfg_json);
    local_session_close(&ss);
done:
    for (int i = 0; i < ps.n; i++) free(ps.p[i].text), free(ps.p[i].ids);
    free(ps.p);
    tok_destroy(&ps.tok);
    for (int i = 0; i < cc.n_strs; i++) free(cc.strs[i]);
    return ret;
}
