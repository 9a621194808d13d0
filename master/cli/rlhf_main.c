/*
 * rlhf_main.c - the `rlhf` command: one binary, one subcommand per task. The table below
 * (`commands`) is the list `rlhf --help` prints; each entry's function lives in the cmd_*.c
 * file of its group (cli.h says which):
 *
 *   models        init-model, eval-lm, train-lm, sample            cmd_model.c, cmd_gen.c
 *   tokenizer     tokenize, detokenize, tokenizer-train            cmd_tok.c
 *   the pipeline  run (stages from a YAML file), report            cmd_run.c, cmd_report.c
 *   runs          runs, status, logs, cancel, wait                 cmd_runs.c
 *   data          task, annotate, aggregate, pairs, import-pairs   cmd_task.c, cmd_data.c
 *   training      sft, train-rm, eval-rm, score                    cmd_sft.c, cmd_rm.c
 *   through the master   generate, ppo (ppo-prep)                  cmd_generate.c, cmd_ppo.c
 *   evaluation    eval-policy                                      cmd_eval.c
 *   local mode    up, status --run-dir, down                       cmd_local.c
 *   benchmarks    bench train|generate|wire                        cmd_bench.c, cmd_gen.c,
 *                                                                  cmd_bench_wire.c
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <protobuf-c/protobuf-c.h>
#include <zmq.h>

#include "cli.h"
#include "nn/pgemm.h"
#include "base/err.h"

static const cli_cmd_t commands[] = {
    {"init-model", cmd_init_model, "write a freshly initialised GPT-2 model directory"},
    {"eval-lm", cmd_eval_lm, "mean next-token loss and perplexity on a token file"},
    {"train-lm", cmd_train_lm, "train a language model on a token file"},
    {"tokenize", cmd_tokenize, "text on stdin -> token ids on stdout"},
    {"detokenize", cmd_detokenize, "token ids on stdin -> text on stdout"},
    {"tokenizer-train", cmd_tokenizer_train, "learn a byte-level BPE vocabulary from a corpus"},
    {"sample", cmd_sample, "generate continuations of a prompt"},
    {"run", cmd_run, "submit the pipeline of a YAML config to a master and follow it"},
    {"runs", cmd_runs, "the runs a master holds: state, stage, progress"},
    {"logs", cmd_logs, "a run's log (-f: as it grows)"},
    {"cancel", cmd_cancel, "cancel a run"},
    {"wait", cmd_wait, "wait until a run ends (exit 0: it succeeded)"},
    {"sft", cmd_sft, "supervised fine-tuning on prompt/completion or text JSONL"},
    {"task", cmd_task, "write the embedded task's prompts and SFT data"},
    {"gold-judge", cmd_gold_judge, "the task's gold judge as a reward program (JSON lines)"},
    {"generate", cmd_generate, "stage 1: K completions per prompt through the master"},
    {"annotate", cmd_annotate, "stage 1: rankings from simulated annotators or an import"},
    {"annotators", cmd_annotators, "stage 1: add a human annotator to a run (a personal link)"},
    {"aggregate", cmd_aggregate, "stage 1: consensus rankings and agreement statistics"},
    {"pairs", cmd_pairs, "stage 1: preference pairs from aggregated rankings"},
    {"import-pairs", cmd_import_pairs, "stage 1: existing pair datasets (JSONL, HH) in"},
    {"train-rm", cmd_train_rm, "stage 2: train a reward model on preference pairs"},
    {"dpo", cmd_dpo, "direct preference optimisation of a policy on preference pairs"},
    {"eval-rm", cmd_eval_rm, "stage 2: accuracy and calibration of a reward model"},
    {"score", cmd_score, "stage 2: reward of a completion (and preference of two)"},
    {"ppo", cmd_ppo, "stage 3: PPO as a run of the local master (rollout, reward, learner)"},
    {"ppo-prep", cmd_ppo_prep, NULL}, /* the ppo stage's checks and inputs, for the master */
    {"eval-policy", cmd_eval_policy, "a policy against a baseline: gold judge, reward model, KL"},
    {"report", cmd_report, "the run's report: agreement, reward model, PPO, gold judge, plots"},
    {"up", cmd_up, "start a master and workers on loopback (local mode)"},
    {"status", cmd_status, "a run's state (--run-dir DIR: the local master's /status JSON)"},
    {"down", cmd_down, "stop the local master and workers"},
    {"keygen", cmd_keygen, "a cluster's keys: CURVE key pairs bound to roles, HTTP token"},
    {"bench", cmd_bench, "benchmarks: `rlhf bench train|generate|wire --help`"},
    {"cluster-ensure", cmd_cluster_ensure, NULL}, /* for tests: local_cluster_ensure */
};
#define N_COMMANDS (int)(sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
    fprintf(f, "usage: rlhf [--gemm exact|openblas] [--simd avx512f|avx2|c] COMMAND [OPTIONS]\n"
               "       (rlhf COMMAND --help for its options; rlhf --version)\n\n"
               "  --gemm B     the matrix products: exact (the default: the same bits on every\n"
               "               machine) or openblas (OpenBLAS's rounding, which differs per CPU)\n"
               "  --simd K     the exact kernels' instruction set (default: the best this CPU\n"
               "               runs; every one gives the same bits)\n"
               "  Both are also the environment's RLHF_GEMM and RLHF_SIMD, which the workers a\n"
               "  command starts inherit.\n\n");
    for (int i = 0; i < N_COMMANDS; i++)
        if (commands[i].summary) /* NULL: a command for the master's stages, not listed */
            fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
}

int cli_fail(const char *cmd, const char *what, int rc) {
    const char *detail = rl_errmsg();
    fprintf(stderr, "rlhf %s: %s: %s\n", cmd, what, detail[0] ? detail : rl_strerror(rc));
    /* EX_TEMPFAIL for a write the system refused (not writable, disk full): a stage worker then
     * holds the run until that is cured, instead of failing it */
    return rl_errno_environment(rl_errno()) ? CLI_EXIT_ENVIRONMENT : 1;
}

int cli_print_json(json_t *obj) {
    char *s = obj ? json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(7)) : NULL;
    json_decref(obj);
    if (!s) {
        /* json_pack refuses NaN/Inf reals: a result we cannot print is a failure, not silence */
        fprintf(stderr, "rlhf: cannot format the result as JSON (a NaN or Inf value?)\n");
        return 1;
    }
    puts(s);
    fflush(stdout);
    free(s);
    return 0;
}

double cli_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int cli_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cli_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cli_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int cli_usage_error(const char *cmd) {
    fprintf(stderr, "rlhf %s: see `rlhf %s --help`\n", cmd, cmd);
    return 2;
}

int cli_prompt_text(const tok_t *t, json_t *rec, const char *where, char **text, size_t *len) {
    json_t *jp = json_object_get(rec, "prompt"), *jm = json_object_get(rec, "messages");
    *text = NULL;
    *len = 0;
    if (json_is_string(jp)) {
        *len = json_string_length(jp);
        if (!(*text = malloc(*len + 1))) return rl_fail(RL_ENOMEM, "out of memory");
        memcpy(*text, json_string_value(jp), *len + 1);
        return 0;
    }
    if (!json_is_array(jm) || json_array_size(jm) == 0)
        return rl_fail(RL_EFORMAT,
                       "%s: a \"prompt\" string or a non-empty \"messages\" array is "
                       "required",
                       where);
    if (!tok_chat_template(t))
        return rl_fail(RL_EFORMAT,
                       "%s: \"messages\" are rendered by the model's chat template "
                       "(tokenizer_config.json's \"chat_template\"), and this model "
                       "has none: give the prompt's text as \"prompt\"",
                       where);
    char *js = json_dumps(jm, JSON_COMPACT);
    if (!js) return rl_fail(RL_ENOMEM, "out of memory");
    int rc = tok_chat_render(t, js, strlen(js), 1, text, len);
    free(js);
    return rc < 0 ? rl_fail_ctx(rc, "%s: messages: ", where) : 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        int ma, mi, pa;
        zmq_version(&ma, &mi, &pa);
        printf("rlhf %s (libzmq %d.%d.%d%s, protobuf-c %s)\n", RLHF_VERSION, ma, mi, pa,
               zmq_has("curve") ? " with CURVE" : "", protobuf_c_version());
        return 0;
    }
    /* the global options: set in the environment, so that the workers and stage commands a
     * command starts run the same arithmetic */
    while (argc >= 3 && (!strcmp(argv[1], "--gemm") || !strcmp(argv[1], "--simd"))) {
        int gemm = !strcmp(argv[1], "--gemm");
        const char *v = argv[2];
        if (gemm ? strcmp(v, "exact") && strcmp(v, "openblas")
                 : strcmp(v, "avx512f") && strcmp(v, "avx2") && strcmp(v, "c")) {
            fprintf(stderr, "rlhf: %s %s: expected %s\n", argv[1], v,
                    gemm ? "exact or openblas" : "avx512f, avx2 or c");
            return 2;
        }
        if (!gemm && pgemm_set_kernel(v) < 0) {
            fprintf(stderr, "rlhf: --simd %s: %s\n", v, rl_errmsg());
            return 2;
        }
        setenv(gemm ? "RLHF_GEMM" : "RLHF_SIMD", v, 1);
        argc -= 2, argv += 2;
    }
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "rlhf: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
