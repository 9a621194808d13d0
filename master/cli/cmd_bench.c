/*
 * cmd_bench.c - `rlhf bench train`: times full training steps (forward + backward + AdamW) with
 * the exact matrix products (xgemm) and with OpenBLAS, alternating step by step, and measures
 * the machine's FMA rate in the same run, so the figures that matter - the step's rate as a
 * fraction of that peak, and what exactness costs against OpenBLAS - need no reference numbers
 * from elsewhere.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "base/err.h"
#include "nn/gpt.h"
#include "nn/hf.h"
#include "nn/ops.h"
#include "nn/pgemm.h"
#include "base/rng.h"
#include "nn/train.h"

typedef struct {
    gpt_config_t cfg;
    int B, T, steps, threads, grad_blocks;
    const char *gemm, *model;
} bench_args_t;

static const cli_opt_t bench_opt_table[] = {
    CLI_OPT_SHAPE(bench_args_t, cfg),
    CLI_OPT_INT(bench_args_t, B, "batch", 1, 4096, NULL, "B", "sequences per step"),
    CLI_OPT_INT(bench_args_t, T, "seq", 1, 1000000, NULL, "T", "sequence length"),
    CLI_OPT_INT(bench_args_t, steps, "steps", 1, 1000, "5", "K", "timed steps per backend"),
    CLI_OPT_INT(bench_args_t, threads, "threads", 1, 1024, "2", "N", "threads"),
    CLI_OPT_INT(bench_args_t, grad_blocks, "grad-blocks", 1, GTREE_MAX_BLOCKS, "8", "N",
                "gradient blocks per step, capped at the batch (as rlhf sft)"),
    CLI_OPT_STR(bench_args_t, gemm, "gemm", "both", "G",
                "matrix products: exact, openblas or both (alternating)", 0),
    CLI_OPT_STR(bench_args_t, model, "model", NULL, "DIR",
                "the shape of DIR/config.json (GPT-2, Llama, Qwen2, Qwen3) in place of --layers, "
                "--heads, --dim, --vocab, --ctx; its weights are not read",
                0),
};

static const cli_opts_t bench_train_opts = CLI_OPTS(
    "bench train",
    "rlhf bench train --layers L --heads H --dim C --vocab V --batch B --seq T\n"
    "                        [--steps K] [--threads N] [--gemm exact|openblas|both] [--ctx N]\n"
    "                        [--grad-blocks N]\n"
    "       rlhf bench train --model DIR --batch B --seq T [options]",
    "Times K full training steps (forward, cross-entropy, backward, clipping, AdamW) per\n"
    "matrix-product backend after one warm-up step each; with --gemm both the exact products\n"
    "and OpenBLAS alternate step by step on the same model, so both are measured under the same\n"
    "conditions. The machine's FMA rate is measured three times in between (median).\n"
    "Prints JSON: per backend (gemm.exact, gemm.openblas) ms_per_step (median) and its\n"
    "forward/backward/optimizer parts, tokens_per_s, model_gflops (matmul FLOPs of the step /\n"
    "median time) and vs_fma_peak (model_gflops / fma_peak_gflops); with both, exact_vs_openblas\n"
    "(the exact step's time / OpenBLAS's). --ctx defaults to max(T, 1024).\n",
    bench_opt_table, NULL);

/* The medians of one backend's timed steps. */
typedef struct {
    const char *name;
    double *ms, *fw, *bw, *op; /* per step */
    double step_ms;
} bench_backend_t;

/* Times one training step with the backend `b`, into its slot s. */
static int bench_step(train_t *tr, const int *in, const int *tg, int B, int T, bench_backend_t *b,
                      int s) {
    train_stats_t st;
    int rc = ops_set_gemm(b->name);
    double t0 = cli_now_ms();
    if (rc == 0) rc = train_lm_step(tr, in, tg, NULL, B, T, &st);
    if (rc < 0 || s < 0) return rc;
    b->ms[s] = cli_now_ms() - t0;
    b->fw[s] = st.ms_forward, b->bw[s] = st.ms_backward, b->op[s] = st.ms_optimizer;
    return 0;
}

static json_t *bench_backend_json(bench_backend_t *b, int steps, int tokens, double flops,
                                  double peak) {
    double model = flops / (b->step_ms / 1e3) / 1e9;
    return json_pack("{s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "ms_per_step", b->step_ms, "ms_forward",
                     cli_median(b->fw, steps), "ms_backward", cli_median(b->bw, steps),
                     "ms_optimizer", cli_median(b->op, steps), "tokens_per_s",
                     tokens / (b->step_ms / 1e3), "model_gflops", model, "vs_fma_peak",
                     peak > 0 ? model / peak : 0.0);
}

static int bench_train(int argc, char **argv) {
    const char *cmd = "bench train";
    bench_args_t a = {.cfg = {.layer_norm_epsilon = 1e-5f}};
    int c = cli_opts_parse(&bench_train_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    gpt_config_t cfg = a.cfg;
    int B = a.B, T = a.T, steps = a.steps, threads = a.threads;
    if (a.model) {
        int rc = hf_config_read(a.model, &cfg);
        if (rc < 0) return cli_fail(cmd, "model config", rc);
        cfg.scalar_head = 0;
    }
    if (!cfg.n_layer || !cfg.n_head || !cfg.n_embd || !cfg.vocab_size || !B || !T) {
        fprintf(stderr, "rlhf %s: --layers, --heads, --dim, --vocab, --batch, --seq required\n",
                cmd);
        return 2;
    }
    bench_backend_t be[2] = {{.name = "exact"}, {.name = "openblas"}};
    int nb = 2, first = 0;
    if (!strcmp(a.gemm, "exact"))
        nb = 1;
    else if (!strcmp(a.gemm, "openblas"))
        nb = 1, first = 1;
    else if (strcmp(a.gemm, "both")) {
        fprintf(stderr, "rlhf %s: --gemm: '%s' is not exact, openblas or both\n", cmd, a.gemm);
        return 2;
    }
    if (!cfg.n_positions) cfg.n_positions = T > 1024 ? T : 1024;
    ops_set_threads(threads);
    gpt_t *m = gpt_new(&cfg);
    if (!m) return cli_fail(cmd, "model", RL_EINVAL);
    gpt_init_weights(m, 1);
    int *in = malloc((size_t)B * T * sizeof(int)), *tg = malloc((size_t)B * T * sizeof(int));
    int rc = in && tg ? 0 : rl_fail(RL_ENOMEM, "buffers");
    for (int i = first; i < first + nb; i++) {
        bench_backend_t *b = &be[i];
        b->ms = calloc((size_t)steps, sizeof(double)),
        b->fw = calloc((size_t)steps, sizeof(double));
        b->bw = calloc((size_t)steps, sizeof(double)),
        b->op = calloc((size_t)steps, sizeof(double));
        if (!b->ms || !b->fw || !b->bw || !b->op) rc = rl_fail(RL_ENOMEM, "buffers");
    }
    for (int i = 0; rc == 0 && i < B * T; i++) {
        in[i] = (int)(rng_uniform(7, 0, (uint64_t)i) * cfg.vocab_size) % cfg.vocab_size;
        tg[i] = (int)(rng_uniform(7, 1, (uint64_t)i) * cfg.vocab_size) % cfg.vocab_size;
    }
    train_t tr = {0};
    adamw_sched_t sched = {ADAMW_SCHED_CONSTANT, 1e-4f, 0, 0, 0};
    if (rc == 0) rc = train_init(&tr, m, &sched, 0.1f, 1.0f);
    tr.grad_blocks = a.grad_blocks;
    /* warm-up, one step per backend: allocations, packing buffers, OpenBLAS's threads */
    for (int i = first; rc == 0 && i < first + nb; i++)
        rc = bench_step(&tr, in, tg, B, T, &be[i], -1);
    /* the backends alternate step by step, and the FMA rate is measured at the start, the middle
     * and the end: every figure comes from the same minutes */
    double peaks[3] = {0};
    int np = 0;
    for (int s = 0; rc == 0 && s < steps; s++) {
        if (s == 0 || s == steps / 2) peaks[np++] = pgemm_fma_peak_gflops();
        for (int k = 0; rc == 0 && k < nb; k++) /* which goes first alternates too */
            rc = bench_step(&tr, in, tg, B, T, &be[nb == 2 ? (k + s) % 2 : first], s);
    }
    ops_set_gemm(NULL);
    int print_rc = 0;
    if (rc == 0) {
        peaks[np++] = pgemm_fma_peak_gflops();
        double peak = cli_median(peaks, np), flops = gpt_train_flops(&cfg, B, T);
        json_t *gemm = json_object();
        for (int i = first; i < first + nb; i++) {
            be[i].step_ms = cli_median(be[i].ms, steps);
            json_object_set_new(gemm, be[i].name,
                                bench_backend_json(&be[i], steps, B * T, flops, peak));
        }
        json_t *out = json_pack(
            "{s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:I,s:i,s:i,s:i,s:s,s:f,s:f,s:o}", "bench", "train",
            "layers", cfg.n_layer, "heads", cfg.n_head, "dim", cfg.n_embd, "vocab", cfg.vocab_size,
            "batch", B, "seq", T, "params", (json_int_t)m->num_params, "threads", threads,
            "grad_blocks", gtree_blocks(a.grad_blocks, B), "steps", steps, "kernel", pgemm_kernel(),
            "gflop_per_step", flops / 1e9, "fma_peak_gflops", peak, "gemm", gemm);
        if (cfg.arch != GPT_ARCH_GPT2)
            json_object_set_new(out, "kv_heads", json_integer(cfg.n_kv_head)),
                json_object_set_new(out, "inner", json_integer(cfg.n_inner)),
                json_object_set_new(out, "head_dim", json_integer(gpt_head_dim(&cfg)));
        if (nb == 2)
            json_object_set_new(out, "exact_vs_openblas", json_real(be[0].step_ms / be[1].step_ms));
        print_rc = cli_print_json(out);
    }
    train_free(&tr);
    for (int i = 0; i < 2; i++) free(be[i].ms), free(be[i].fw), free(be[i].bw), free(be[i].op);
    free(in), free(tg);
    gpt_destroy(&m);
    return rc < 0 ? cli_fail(cmd, "step", rc) : print_rc;
}

int cmd_bench(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "train")) return bench_train(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "generate")) return cmd_bench_generate(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "wire")) return cmd_bench_wire(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        cli_opts_help(&bench_train_opts, stdout);
        return 0;
    }
    fprintf(stderr, "rlhf bench: expected a benchmark name: train, generate, wire\n");
    return 2;
}
