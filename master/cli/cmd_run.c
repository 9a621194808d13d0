/*
 * cmd_run.c - `rlhf run CONFIG`: the whole pipeline, stage by stage, in one run directory.
 *
 *   rlhf run CONFIG [--set KEY=VALUE]... [--run-dir DIR] [--only STAGE] [--list-keys]
 *
 * CONFIG is a YAML file (see deploy/demo.yaml): `run_dir`, `seed`, `stages` (the ordered list
 * of stages to run) and one mapping per stage whose keys are that stage's options. Every key
 * is in the table below with its type, default and meaning (`--list-keys` prints it; the README's
 * configuration reference is generated from the same text); an unknown key or a value of the
 * wrong type is an error naming the file and line. `--set` overrides any key.
 *
 * Each stage is one `rlhf` subcommand run as a child process with options from the table; its
 * input paths default to the outputs of the stages before it, and can be pointed elsewhere
 * (for example `sft.model` at a Hugging Face GPT-2 directory). A stage whose command succeeded
 * leaves RUN_DIR/stages/NAME.json (written atomically, after the stage's own atomic outputs), so
 * running the same command again after an interruption skips finished stages, and the stages
 * that resume by themselves (generate, ppo) continue inside. Output of each stage goes to
 * RUN_DIR/logs/NAME.log; on a terminal one progress line shows the stage, its progress and an
 * ETA, otherwise plain log lines are printed.
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

typedef enum { T_STR, T_INT, T_NUM, T_BOOL } vtype_t;

/* One configuration key of a stage: `stage.name`, passed to the stage command as --opt. */
typedef struct {
    const char *stage, *name;
    vtype_t type;
    const char *def; /* NULL: not passed unless set */
    const char *opt; /* the command's option; NULL: used by the runner itself */
    const char *doc;
} run_key_t;

/* Paths in defaults: {run} = the run directory, {seed} = the run seed, {x.y} = key x.y. */
static const run_key_t run_keys[] = {
    /* task: the embedded default task */
    {"task", "prompts", T_INT, "256", "--prompts", "training prompts (RLHF and stage 1)"},
    {"task", "heldout", T_INT, "48", "--heldout", "held-out prompts (evaluation only)"},
    {"task", "sft", T_INT, "4000", "--sft", "SFT demonstrations"},
    {"task", "bad_frac", T_NUM, "0.5", "--bad-frac", "share of deliberately bad demonstrations"},
    /* tokenizer and model shape (from scratch; skip these stages to start from a real model) */
    {"tokenizer", "vocab_size", T_INT, "512", "--vocab-size", "BPE vocabulary size"},
    {"model", "layers", T_INT, "4", "--layers", "transformer blocks"},
    {"model", "heads", T_INT, "4", "--heads", "attention heads"},
    {"model", "dim", T_INT, "128", "--dim", "embedding width"},
    {"model", "ctx", T_INT, "64", "--ctx", "context length"},
    /* sft */
    {"sft", "model", T_STR, "{run}/init", "--model", "model to fine-tune (any HF GPT-2 dir)"},
    {"sft", "data", T_STR, "{run}/task/sft.jsonl", "--data",
     "JSONL {prompt, completion} or {text}"},
    {"sft", "steps", T_INT, "300", "--steps", "optimizer steps"},
    {"sft", "batch", T_INT, "16", "--batch", "sequences per step"},
    {"sft", "lr", T_NUM, "0.001", "--lr", "peak learning rate (cosine to a tenth)"},
    {"sft", "warmup", T_INT, "20", "--warmup", "warmup steps"},
    {"sft", "learner_shards", T_INT, NULL, "--learner-shards",
     "run the steps as TRAIN jobs on a learner of S shards (default: in-process)"},
    /* generate (stage 1) */
    {"generate", "model", T_STR, "{run}/sft", "--model", "the instruct model"},
    {"generate", "prompts", T_STR, "{run}/task/prompts.jsonl", "--prompts",
     "JSONL {id, prompt} or {id, messages}"},
    {"generate", "k", T_INT, "4", "--k", "completions per prompt"},
    {"generate", "max_new", T_INT, "24", "--max-new", "tokens per completion at most"},
    {"generate", "temperature", T_NUM, "1.0", "--temperature", "sampling temperature"},
    {"generate", "top_k", T_INT, "0", "--top-k", "top-k (0: off)"},
    {"generate", "top_p", T_NUM, "1.0", "--top-p", "nucleus mass (1: off)"},
    {"generate", "workers", T_INT, "2", "--workers", "rollout workers"},
    /* annotate (stage 1) */
    {"annotate", "simulate", T_INT, "5", "--simulate", "simulated annotators (0: import only)"},
    {"annotate", "overlap", T_INT, "3", "--overlap", "annotators per prompt"},
    {"annotate", "noise", T_NUM, "0.15", "--noise", "mean noise of the simulated panel"},
    {"annotate", "annotators", T_STR, NULL, "--annotators", "panel JSON instead of the default"},
    {"annotate", "import", T_STR, NULL, "--import",
     "JSONL/CSV rankings from another tool (instead of --simulate)"},
    /* aggregate, pairs (stage 1) */
    {"aggregate", "min_w", T_NUM, NULL, "--min-w", "drop prompts with Kendall's W below this"},
    /* reward model (stage 2) */
    {"rm", "model", T_STR, "{run}/sft", "--model", "trunk to start from"},
    {"rm", "pairs", T_STR, "{run}/pairs.jsonl", "--pairs", "preference pairs"},
    {"rm", "epochs", T_INT, "2", "--epochs", "passes over the pairs"},
    {"rm", "batch", T_INT, "8", "--batch", "prompts per step (pairs with pairwise)"},
    {"rm", "lr", T_NUM, "0.0003", "--lr", "peak learning rate"},
    {"rm", "heldout_frac", T_NUM, "0.1", "--heldout-frac", "prompts held out for evaluation"},
    {"rm", "pairwise", T_BOOL, NULL, "--pairwise", "plain pairwise batches (imported pairs)"},
    {"rm", "margin", T_NUM, NULL, "--margin", "margin term weight"},
    {"rm", "center", T_NUM, NULL, "--center", "reward-centering term weight"},
    {"rm", "learner_shards", T_INT, NULL, "--learner-shards",
     "run the steps as TRAIN jobs on a learner of S shards (default: in-process)"},
    /* evaluation against the gold judge */
    {"eval", "prompts", T_STR, "{run}/task/prompts_heldout.jsonl", "--prompts", "held-out prompts"},
    {"eval", "samples", T_INT, "4", "--samples", "completions per prompt and policy"},
    {"eval", "max_new", T_INT, "24", "--max-new", "tokens per completion at most"},
    /* PPO (stage 3) */
    {"ppo", "policy", T_STR, "{run}/sft", "--policy", "initial policy (and KL reference)"},
    {"ppo", "rm", T_STR, "{run}/rm", "--rm", "reward model"},
    {"ppo", "prompts", T_STR, "{run}/task/prompts.jsonl", "--prompts", "RLHF prompts"},
    {"ppo", "iterations", T_INT, "20", "--iterations", "PPO iterations"},
    {"ppo", "batch", T_INT, "32", "--batch", "prompts per iteration"},
    {"ppo", "samples", T_INT, "1", "--samples", "completions per prompt"},
    {"ppo", "max_new", T_INT, "24", "--max-new", "tokens per completion at most"},
    {"ppo", "temperature", T_NUM, "1.0", "--temperature", "rollout sampling temperature"},
    {"ppo", "prompts_per_job", T_INT, "8", "--prompts-per-job", "prompts per GENERATE job"},
    {"ppo", "rollout", T_INT, "2", "--rollout", "rollout workers"},
    {"ppo", "reward", T_INT, "1", "--reward", "reward workers"},
    {"ppo", "checkpoint_every", T_INT, "1", "--checkpoint-every", "learner checkpoint interval"},
    {"ppo", "gold", T_BOOL, NULL, "--gold", "score rollouts with the embedded task's gold judge"},
    {"ppo", "kl_coef", T_NUM, NULL, "--set", "KL penalty coefficient beta (default 0.03)"},
    {"ppo", "kl_adaptive", T_BOOL, NULL, "--set", "adaptive KL controller (default false)"},
    {"ppo", "kl_target", T_NUM, NULL, "--set", "adaptive: target KL per sequence (6)"},
    {"ppo", "kl_horizon", T_NUM, NULL, "--set", "adaptive: horizon in sequences (10000)"},
    {"ppo", "lr_policy", T_NUM, NULL, "--set", "policy learning rate (1e-5)"},
    {"ppo", "lr_value", T_NUM, NULL, "--set", "value learning rate (1e-5)"},
    {"ppo", "epochs", T_INT, NULL, "--set", "passes over each rollout batch (4)"},
    {"ppo", "minibatch", T_INT, NULL, "--set", "sequences per optimizer step (8)"},
    {"ppo", "clip_eps", T_NUM, NULL, "--set", "policy ratio clip (0.2)"},
    {"ppo", "value_clip", T_NUM, NULL, "--set", "value clip (0.2)"},
    {"ppo", "gamma", T_NUM, NULL, "--set", "discount (1)"},
    {"ppo", "lambda", T_NUM, NULL, "--set", "GAE lambda (0.95)"},
    {"ppo", "ent_coef", T_NUM, NULL, "--set", "entropy bonus (0)"},
    {"ppo", "max_grad_norm", T_NUM, NULL, "--set", "gradient clipping (1)"},
    {"ppo", "score_norm", T_STR, NULL, "--set", "raw, scale or norm (norm)"},
    {"ppo", "score_clip", T_NUM, NULL, "--set", "clip of the normalised score (off)"},
    {"ppo", "whiten", T_BOOL, NULL, "--set", "whiten advantages (true)"},
};
#define N_RUN_KEYS (int)(sizeof run_keys / sizeof run_keys[0])

typedef struct {
    json_t *vals; /* "stage.name" -> string value, as set */
} run_cfg_t;

static const run_key_t *key_find(const char *key) {
    for (int i = 0; i < N_RUN_KEYS; i++) {
        size_t sl = strlen(run_keys[i].stage);
        if (!strncmp(key, run_keys[i].stage, sl) && key[sl] == '.' &&
            !strcmp(key + sl + 1, run_keys[i].name))
            return &run_keys[i];
    }
    return NULL;
}

static int check_value(const run_key_t *k, const char *v, const char *key, const char *where) {
    char *end;
    errno = 0;
    switch (k->type) {
    case T_STR:
        return 0;
    case T_INT:
        (void)strtoll(v, &end, 10);
        if (end == v || *end || errno)
            return rl_fail(RL_EINVAL, "%s: %s: '%s' is not an integer", where, key, v);
        return 0;
    case T_NUM: {
        double d = strtod(v, &end);
        if (end == v || *end || errno || !isfinite(d))
            return rl_fail(RL_EINVAL, "%s: %s: '%s' is not a number", where, key, v);
        return 0;
    }
    case T_BOOL:
        if (strcmp(v, "true") && strcmp(v, "false"))
            return rl_fail(RL_EINVAL, "%s: %s: '%s' is not true or false", where, key, v);
        return 0;
    }
    return 0;
}

/* cfg_run_t's hook for keys outside the master's table: the stage keys. */
static int run_extra_set(void *ctx, const char *key, const char *value, const char *where) {
    run_cfg_t *rc = ctx;
    const run_key_t *k = key_find(key);
    if (!k) return rl_fail(RL_EINVAL, "%s: unknown key '%s' (rlhf run --list-keys)", where, key);
    int r = check_value(k, value, key, where);
    if (r < 0) return r;
    json_object_set_new(rc->vals, key, json_string(value));
    return 0;
}

/* ---- stages ------------------------------------------------------------------------------- */

typedef struct {
    const char *name, *summary;
    const char *cmd;       /* rlhf subcommand */
    const char *fixed;     /* fixed arguments, space-separated, with {run}/{seed}/{key} */
    const char *prefix;    /* key prefix of the options this stage takes */
    const char *prefix2;   /* a second one (model shape for init) */
    const char *stdout_to; /* the stage's stdout is its output file (atomically), or NULL */
    double weight;         /* expected share of the demo's time, for the ETA */
} stage_t;

static const stage_t stages[] = {
    {"task", "embedded task: prompts, SFT data, guidelines", "task",
     "--out {run}/task --seed {seed}", "task", NULL, NULL, 1},
    {"tokenizer", "byte-level BPE tokenizer from the task corpus", "tokenizer-train",
     "--corpus {run}/task/corpus.txt --out {run}/tokenizer", "tokenizer", NULL, NULL, 2},
    {"init", "a fresh GPT with that tokenizer", "init-model",
     "--tokenizer {run}/tokenizer --out {run}/init --vocab {tokenizer.vocab_size} --seed {seed}",
     "model", NULL, NULL, 1},
    {"sft", "supervised fine-tuning: the instruct model", "sft",
     "--out {run}/sft --seed {seed} --eval-every 100000", "sft", NULL, NULL, 80},
    {"generate", "stage 1: K completions per prompt (master + rollout workers)", "generate",
     "--out {run}/completions.jsonl --run-dir {run}/generate --seed {seed}", "generate", NULL, NULL,
     20},
    {"annotate", "stage 1: rankings by several annotators", "annotate",
     "--completions {run}/completions.jsonl --out {run}/annotations.jsonl --seed {seed} "
     "--replace",
     "annotate", NULL, NULL, 2},
    {"aggregate", "stage 1: consensus and agreement", "aggregate",
     "--completions {run}/completions.jsonl --annotations {run}/annotations.jsonl "
     "--out {run}/aggregated.jsonl --summary {run}/agreement.json",
     "aggregate", NULL, NULL, 1},
    {"pairs", "stage 1: C(K,2) preference pairs", "pairs",
     "--completions {run}/completions.jsonl --aggregated {run}/aggregated.jsonl "
     "--out {run}/pairs.jsonl --hh {run}/pairs_hh.jsonl",
     "pairs", NULL, NULL, 1},
    {"train_rm", "stage 2: reward model (Bradley-Terry)", "train-rm",
     "--out {run}/rm --seed {seed} --ceiling-from {run}/agreement.json", "rm", NULL, NULL, 60},
    {"ppo", "stage 3: PPO (master, rollout, reward and learner workers)", "ppo",
     "--out {run}/ppo --seed {seed}", "ppo", NULL, NULL, 120},
    {"evaluate", "gold judge: the PPO policy against the SFT policy on held-out prompts",
     "eval-policy", "--policy {run}/ppo/policy --baseline {ppo.policy} --rm {ppo.rm} --seed {seed}",
     "eval", NULL, "{run}/eval.json", 10},
    {"report", "the report: agreement, reward model, PPO, gold judge, plots", "report",
     "--run {run}", NULL, NULL, NULL, 1},
    {"eval_rm", "stage 2: held-out accuracy, calibration, reward statistics", "eval-rm",
     "--rm {run}/rm --pairs {rm.pairs} --ceiling-from {run}/agreement.json --write-stats", NULL,
     NULL, "{run}/rm_eval.json", 3},
};
#define N_STAGES (int)(sizeof stages / sizeof stages[0])

static const stage_t *stage_find(const char *name) {
    for (int i = 0; i < N_STAGES; i++)
        if (!strcmp(stages[i].name, name)) return &stages[i];
    return NULL;
}

typedef struct {
    cfg_run_t cfg;
    run_cfg_t rc;
    char run_dir[PATH_MAX];
    int tty;
} run_t;

/* The value of key (set, or its default; NULL if neither). */
static const char *key_value(run_t *r, const run_key_t *k) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", k->stage, k->name);
    json_t *v = json_object_get(r->rc.vals, full);
    return v ? json_string_value(v) : k->def;
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

/* The argv of a stage: rlhf CMD fixed... --opt value ... (NULL-terminated, malloc'ed). */
static char **stage_argv(run_t *r, const stage_t *s, int *argc) {
    int cap = 96, n = 0;
    char **av = calloc((size_t)cap, sizeof *av);
    if (!av) return NULL;
    char self[PATH_MAX];
    local_bin_path(self, sizeof self, "rlhf");
    av[n++] = strdup(self);
    av[n++] = strdup(s->cmd);
    char *fixed = expand(r, s->fixed);
    for (char *tok = fixed ? strtok(fixed, " ") : NULL; tok && n < cap - 4; tok = strtok(NULL, " "))
        av[n++] = strdup(tok);
    free(fixed);
    for (int i = 0; i < N_RUN_KEYS && n < cap - 4; i++) {
        const run_key_t *k = &run_keys[i];
        if (!k->opt || !((s->prefix && !strcmp(k->stage, s->prefix)) ||
                         (s->prefix2 && !strcmp(k->stage, s->prefix2))))
            continue;
        const char *v = key_value(r, k);
        if (!v) continue;
        if (!strcmp(k->opt, "--set")) { /* a setting passed through as NAME=VALUE */
            char kv[512];
            snprintf(kv, sizeof kv, "%s=%s", k->name, v);
            av[n++] = strdup("--set");
            av[n++] = strdup(kv);
            continue;
        }
        if (k->type == T_BOOL) {
            if (!strcmp(v, "true")) av[n++] = strdup(k->opt);
            continue;
        }
        av[n++] = strdup(k->opt);
        av[n++] = expand(r, v);
    }
    av[n] = NULL;
    *argc = n;
    return av;
}

static void argv_free(char **av) {
    for (int i = 0; av && av[i]; i++) free(av[i]);
    free(av);
}

static json_t *argv_json(char **av) {
    json_t *a = json_array();
    for (int i = 1; av[i]; i++) json_array_append_new(a, json_string(av[i]));
    return a;
}

static volatile sig_atomic_t run_interrupted;
static void on_int(int sig) {
    (void)sig;
    run_interrupted = 1;
}

/* The last line of a log that is a JSON object with a progress figure, as "step 120/300". */
static void progress_of(const char *log, char *out, size_t n) {
    out[0] = 0;
    FILE *f = fopen(log, "r");
    if (!f) return;
    if (fseek(f, -4096, SEEK_END) != 0) rewind(f);
    char line[4096], last[4096] = "";
    while (fgets(line, sizeof line, f))
        if (line[0] == '{') snprintf(last, sizeof last, "%s", line);
    fclose(f);
    json_t *o = json_loads(last, 0, NULL);
    static const char *pairs[][2] = {
        {"step", "steps"}, {"iter", "iters"}, {"iteration", "iterations"}};
    for (int i = 0; o && i < 3; i++) {
        json_t *a = json_object_get(o, pairs[i][0]), *b = json_object_get(o, pairs[i][1]);
        if (json_is_integer(a) && json_is_integer(b)) {
            snprintf(out, n, "%s %lld/%lld", pairs[i][0], (long long)json_integer_value(a),
                     (long long)json_integer_value(b));
            break;
        }
        if (json_is_integer(a)) {
            snprintf(out, n, "%s %lld", pairs[i][0], (long long)json_integer_value(a));
            break;
        }
    }
    json_decref(o);
}

static void fmt_secs(double s, char *out, size_t n) {
    if (s < 0 || !isfinite(s))
        snprintf(out, n, "?");
    else if (s < 60)
        snprintf(out, n, "%.0fs", s);
    else
        snprintf(out, n, "%dm%02ds", (int)s / 60, (int)s % 60);
}

/* Runs one stage as a child process; its stdout and stderr go to the stage log. */
static int run_stage(run_t *r, const stage_t *s, int idx, int total, double done_w, double total_w,
                     double t_start) {
    char marker[PATH_MAX + 64], log[PATH_MAX + 64];
    snprintf(marker, sizeof marker, "%s/stages/%s.json", r->run_dir, s->name);
    snprintf(log, sizeof log, "%s/logs/%s.log", r->run_dir, s->name);
    int argc;
    char **av = stage_argv(r, s, &argc);
    if (!av) return rl_fail(RL_ENOMEM, "out of memory");
    json_t *args = argv_json(av);
    json_t *prev = json_load_file(marker, 0, NULL);
    if (prev) {
        int same = json_equal(json_object_get(prev, "args"), args);
        json_decref(prev);
        json_decref(args);
        argv_free(av);
        fprintf(stderr, "[%d/%d] %-9s done earlier%s\n", idx, total, s->name,
                same ? "" : " (with other options: remove its stages/*.json to redo it)");
        return 0;
    }
    fprintf(stderr, "[%d/%d] %-9s %s\n", idx, total, s->name, s->summary);
    char out_tmp[PATH_MAX + 96] = "";
    char *out_path = s->stdout_to ? expand(r, s->stdout_to) : NULL;
    if (out_path) snprintf(out_tmp, sizeof out_tmp, "%s.stdout", log);
    double t0 = cli_now_ms();
    fflush(stderr);
    pid_t p = fork();
    if (p == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fo = out_path ? open(out_tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644) : fd;
        if (fd >= 0) dup2(fo >= 0 ? fo : fd, 1), dup2(fd, 2);
        execv(av[0], av);
        _exit(127);
    }
    int st = 0;
    double last_print = 0;
    while (p > 0) {
        pid_t w = waitpid(p, &st, WNOHANG);
        if (w == p) break;
        if (w < 0 && errno != EINTR) break;
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
        double now = cli_now_ms();
        if (now - last_print < (r->tty ? 500 : 30000)) continue;
        last_print = now;
        char prog[64], el[16], eta[16];
        progress_of(log, prog, sizeof prog);
        double el_run = (now - t_start) / 1000;
        /* ETA from the stage weights, scaled by the speed seen so far in this run */
        double frac = (done_w + s->weight * 0.5) / total_w;
        fmt_secs((now - t0) / 1000, el, sizeof el);
        fmt_secs(done_w > 0 ? el_run / frac * (1 - frac) : NAN, eta, sizeof eta);
        if (r->tty)
            fprintf(stderr, "\r\033[K[%d/%d] %-9s %s  %s  ETA %s", idx, total, s->name, prog, el,
                    eta);
        else
            fprintf(stderr, "[%d/%d] %-9s running %s %s\n", idx, total, s->name, el, prog);
    }
    if (r->tty) fprintf(stderr, "\r\033[K");
    int ok = p > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    int rc = 0;
    if (!ok) {
        rc = rl_fail(run_interrupted ? RL_EIO : RL_EINVAL, "stage %s %s (log: %s)", s->name,
                     run_interrupted ? "interrupted" : "failed", log);
        /* the tail of its log says why */
        FILE *f = fopen(log, "r");
        if (f && !run_interrupted) {
            char line[1024], tail[12][1024];
            int n = 0;
            while (fgets(line, sizeof line, f)) snprintf(tail[n++ % 12], 1024, "%s", line);
            for (int i = n > 12 ? n - 12 : 0; i < n; i++) fprintf(stderr, "    %s", tail[i % 12]);
        }
        if (f) fclose(f);
    }
    if (ok && out_path) {
        char *data;
        size_t len;
        rc = fs_read_all(out_tmp, &data, &len);
        if (rc == 0) {
            rc = fs_write_atomic(out_path, data, len);
            free(data);
        }
    }
    if (ok && rc == 0) {
        json_t *m = json_pack("{s:s, s:O, s:f}", "stage", s->name, "args", args, "seconds",
                              (cli_now_ms() - t0) / 1000);
        char *txt = json_dumps(m, JSON_INDENT(2));
        json_decref(m);
        rc = txt ? fs_write_atomic(marker, txt, strlen(txt)) : rl_fail(RL_ENOMEM, "no memory");
        free(txt);
        char el[16];
        fmt_secs((cli_now_ms() - t0) / 1000, el, sizeof el);
        fprintf(stderr, "[%d/%d] %-9s done in %s\n", idx, total, s->name, el);
    }
    free(out_path);
    json_decref(args);
    argv_free(av);
    return rc;
}

static const char run_help[] =
    "usage: rlhf run CONFIG [--set KEY=VALUE]... [--run-dir DIR] [--only STAGE] [--list-keys]\n\n"
    "Runs the pipeline configured in CONFIG (YAML) stage by stage in its run directory;\n"
    "running it again continues where it stopped. --only runs one stage (done or not),\n"
    "--list-keys prints every configuration key with its default.\n";

static void list_keys(void) {
    printf("%-22s %-6s %-28s %s\n", "key", "type", "default", "meaning");
    static const char *tn[] = {"string", "int", "number", "bool"};
    for (int i = 0; i < N_RUN_KEYS; i++) {
        char full[96];
        snprintf(full, sizeof full, "%s.%s", run_keys[i].stage, run_keys[i].name);
        printf("%-22s %-6s %-28s %s\n", full, tn[run_keys[i].type],
               run_keys[i].def ? run_keys[i].def : "-", run_keys[i].doc);
    }
}

int cmd_run(int argc, char **argv) {
    static const struct option opts[] = {{"set", 1, 0, 's'},  {"run-dir", 1, 0, 'r'},
                                         {"only", 1, 0, 'o'}, {"list-keys", 0, 0, 'l'},
                                         {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    static run_t R;
    run_t *r = &R;
    cfg_defaults(&r->cfg);
    r->rc.vals = json_object();
    r->cfg.extra_set = run_extra_set;
    r->cfg.extra_ctx = &r->rc;
    const char *sets[64], *run_dir = NULL, *only = NULL;
    int n_sets = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (n_sets == 64) {
                fprintf(stderr, "rlhf run: at most 64 --set\n");
                return 2;
            }
            sets[n_sets++] = optarg;
            break;
        case 'r':
            run_dir = optarg;
            break;
        case 'o':
            only = optarg;
            break;
        case 'l':
            list_keys();
            return 0;
        case 'h':
            fputs(run_help, stdout);
            return 0;
        default:
            return cli_usage_error("run");
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "rlhf run: one CONFIG file is required\n");
        return cli_usage_error("run");
    }
    const char *config = argv[optind];
    int rc = cfg_load_yaml(&r->cfg, config);
    for (int i = 0; rc == 0 && i < n_sets; i++) rc = cfg_set_kv(&r->cfg, sets[i]);
    if (rc < 0) {
        fprintf(stderr, "rlhf run: %s\n", rl_errmsg());
        return 2;
    }
    if (run_dir) snprintf(r->cfg.run_dir, sizeof r->cfg.run_dir, "%s", run_dir);
    if (only && !stage_find(only)) {
        fprintf(stderr, "rlhf run: --only: no stage '%s'\n", only);
        return 2;
    }
    for (int i = 0; i < r->cfg.n_stages; i++)
        if (!stage_find(r->cfg.stages[i])) {
            fprintf(stderr, "rlhf run: %s: stages: no stage '%s'; the stages are:", config,
                    r->cfg.stages[i]);
            for (int k = 0; k < N_STAGES; k++) fprintf(stderr, " %s", stages[k].name);
            fputc('\n', stderr);
            return 2;
        }
    if (r->cfg.n_stages == 0) {
        fprintf(stderr, "rlhf run: %s: no stages listed\n", config);
        return 2;
    }
    char sub[PATH_MAX + 32];
    if (fs_mkdir_p(r->cfg.run_dir) < 0 || !realpath(r->cfg.run_dir, r->run_dir)) {
        fprintf(stderr, "rlhf run: %s: cannot create the run directory\n", r->cfg.run_dir);
        return 1;
    }
    snprintf(sub, sizeof sub, "%s/stages", r->run_dir);
    fs_mkdir_p(sub);
    snprintf(sub, sizeof sub, "%s/logs", r->run_dir);
    fs_mkdir_p(sub);
    /* the resolved configuration, for the record and for stages that read it */
    json_t *res = cfg_to_json(&r->cfg);
    for (int i = 0; i < N_RUN_KEYS; i++) {
        char full[128];
        snprintf(full, sizeof full, "%s.%s", run_keys[i].stage, run_keys[i].name);
        const char *v = key_value(r, &run_keys[i]);
        if (v) json_object_set_new(res, full, json_string(v));
    }
    char *txt = json_dumps(res, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(res);
    snprintf(sub, sizeof sub, "%s/config.json", r->run_dir);
    if (!txt || fs_write_atomic(sub, txt, strlen(txt)) < 0) {
        free(txt);
        fprintf(stderr, "rlhf run: %s\n", rl_errmsg());
        return 1;
    }
    free(txt);
    r->tty = isatty(2);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_int;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    double total_w = 0, done_w = 0, t0 = cli_now_ms();
    for (int i = 0; i < r->cfg.n_stages; i++) total_w += stage_find(r->cfg.stages[i])->weight;
    fprintf(stderr, "rlhf run: %s, %d stages, run directory %s\n", config, r->cfg.n_stages,
            r->run_dir);
    for (int i = 0; i < r->cfg.n_stages && rc == 0 && !run_interrupted; i++) {
        const stage_t *s = stage_find(r->cfg.stages[i]);
        if (only && strcmp(only, s->name)) {
            done_w += s->weight;
            continue;
        }
        if (only) {
            char marker[PATH_MAX + 64];
            snprintf(marker, sizeof marker, "%s/stages/%s.json", r->run_dir, s->name);
            unlink(marker);
        }
        rc = run_stage(r, s, i + 1, r->cfg.n_stages, done_w, total_w, t0);
        done_w += s->weight;
    }
    json_decref(r->rc.vals);
    cfg_free(&r->cfg);
    if (rc < 0 || run_interrupted) {
        fprintf(stderr, "rlhf run: %s\n", run_interrupted ? "interrupted" : rl_errmsg());
        fprintf(stderr, "rlhf run: run the same command again to continue\n");
        return 1;
    }
    char el[16];
    fmt_secs((cli_now_ms() - t0) / 1000, el, sizeof el);
    fprintf(stderr, "rlhf run: all stages done in %s; outputs in %s\n", el, r->run_dir);
    return 0;
}
