/*
 * cmd_bench.c - `rlhf bench train`: times full training steps (forward + backward + AdamW)
 * and, in the same run, OpenBLAS sgemm at the model's largest GEMM shape, so the figure that
 * matters - the fraction of the machine's GEMM speed the whole step achieves - needs no
 * reference numbers from elsewhere.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "cli.h"
#include "base/err.h"
#include "nn/gpt.h"
#include "nn/ops.h"
#include "base/rng.h"
#include "nn/train.h"

/* The reference GEMM: C(M,N) = A(M,K) @ B(N,K)^T, the LM head's shape and layout. */
typedef struct {
    int M, N, K;
    float *a, *b, *c;
} ref_gemm_t;

static int ref_gemm_init(ref_gemm_t *g, int M, int N, int K) {
    *g = (ref_gemm_t){M,
                      N,
                      K,
                      malloc((size_t)M * K * sizeof(float)),
                      malloc((size_t)N * K * sizeof(float)),
                      malloc((size_t)M * N * sizeof(float))};
    if (!g->a || !g->b || !g->c) return rl_fail(RL_ENOMEM, "reference GEMM buffers");
    for (size_t i = 0; i < (size_t)M * K; i++) g->a[i] = rng_normal(1, 1, i);
    for (size_t i = 0; i < (size_t)N * K; i++) g->b[i] = rng_normal(1, 2, i);
    return 0;
}

/* Milliseconds of one reference GEMM. */
static double ref_gemm_ms(ref_gemm_t *g) {
    double t0 = cli_now_ms();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->M, g->N, g->K, 1, g->a, g->K, g->b,
                g->K, 0, g->c, g->N);
    return cli_now_ms() - t0;
}

static void ref_gemm_free(ref_gemm_t *g) {
    free(g->a), free(g->b), free(g->c);
}

typedef struct {
    gpt_config_t cfg;
    int B, T, steps, threads, grad_blocks;
} bench_args_t;

static const cli_opt_t bench_opt_table[] = {
    CLI_OPT_SHAPE(bench_args_t, cfg),
    CLI_OPT_INT(bench_args_t, B, "batch", 1, 4096, NULL, "B", "sequences per step"),
    CLI_OPT_INT(bench_args_t, T, "seq", 1, 1000000, NULL, "T", "sequence length"),
    CLI_OPT_INT(bench_args_t, steps, "steps", 1, 1000, "5", "K", "timed steps"),
    CLI_OPT_INT(bench_args_t, threads, "threads", 1, 1024, "2", "N", "threads"),
    CLI_OPT_INT(bench_args_t, grad_blocks, "grad-blocks", 1, GTREE_MAX_BLOCKS, "8", "N",
                "gradient blocks per step, capped at the batch (as rlhf sft)"),
};

static const cli_opts_t bench_train_opts = CLI_OPTS(
    "bench train",
    "rlhf bench train --layers L --heads H --dim C --vocab V --batch B --seq T\n"
    "                        [--steps K] [--threads N] [--ctx N] [--grad-blocks N]",
    "Times K full training steps (forward, cross-entropy, backward, clipping, AdamW) after one\n"
    "warm-up step and, interleaved with them (3 after each step), cblas_sgemm at the model's\n"
    "largest GEMM (the LM head: B*T x V x C), so both are measured under the same conditions.\n"
    "Prints JSON: ms_per_step (median) and its forward/backward/optimizer parts, tokens_per_s,\n"
    "model_gflops (matmul FLOPs of the step / median time), sgemm_gflops, and their ratio.\n"
    "--ctx defaults to max(T, 1024).\n",
    bench_opt_table, NULL);

static int bench_train(int argc, char **argv) {
    const char *cmd = "bench train";
    bench_args_t a = {.cfg = {0, 0, 0, 0, 0, 1e-5f, 0}};
    int c = cli_opts_parse(&bench_train_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    gpt_config_t cfg = a.cfg;
    int B = a.B, T = a.T, steps = a.steps, threads = a.threads;
    if (!cfg.n_layer || !cfg.n_head || !cfg.n_embd || !cfg.vocab_size || !B || !T) {
        fprintf(stderr, "rlhf %s: --layers, --heads, --dim, --vocab, --batch, --seq required\n",
                cmd);
        return 2;
    }
    if (!cfg.n_positions) cfg.n_positions = T > 1024 ? T : 1024;
    ops_set_threads(threads);
    gpt_t *m = gpt_new(&cfg);
    if (!m) return cli_fail(cmd, "model", RL_EINVAL);
    gpt_init_weights(m, 1);
    int *in = malloc((size_t)B * T * sizeof(int)), *tg = malloc((size_t)B * T * sizeof(int));
    double *ms = calloc((size_t)steps, sizeof(double)), *fw = calloc((size_t)steps, sizeof(double));
    double *bw = calloc((size_t)steps, sizeof(double)), *op = calloc((size_t)steps, sizeof(double));
    /* GEMM_REPS reference GEMMs after every step: both figures come from the same minutes */
    enum { GEMM_REPS = 3 };
    double *gm = calloc((size_t)steps * GEMM_REPS, sizeof(double));
    train_t tr = {0};
    ref_gemm_t ref = {0};
    int print_rc = 0;
    int rc = in && tg && ms && fw && bw && op && gm ? 0 : rl_fail(RL_ENOMEM, "buffers");
    if (rc == 0) rc = ref_gemm_init(&ref, B * T, cfg.vocab_size, cfg.n_embd);
    for (int i = 0; rc == 0 && i < B * T; i++) {
        in[i] = (int)(rng_uniform(7, 0, (uint64_t)i) * cfg.vocab_size) % cfg.vocab_size;
        tg[i] = (int)(rng_uniform(7, 1, (uint64_t)i) * cfg.vocab_size) % cfg.vocab_size;
    }
    adamw_sched_t sched = {ADAMW_SCHED_CONSTANT, 1e-4f, 0, 0, 0};
    if (rc == 0) rc = train_init(&tr, m, &sched, 0.1f, 1.0f);
    tr.grad_blocks = a.grad_blocks;
    train_stats_t st;
    if (rc == 0) rc = train_lm_step(&tr, in, tg, NULL, B, T, &st); /* warm-up: allocations */
    if (rc == 0) ref_gemm_ms(&ref);
    for (int s = 0; rc == 0 && s < steps; s++) {
        double t0 = cli_now_ms();
        rc = train_lm_step(&tr, in, tg, NULL, B, T, &st);
        ms[s] = cli_now_ms() - t0;
        fw[s] = st.ms_forward, bw[s] = st.ms_backward, op[s] = st.ms_optimizer;
        for (int r = 0; r < GEMM_REPS; r++) gm[s * GEMM_REPS + r] = ref_gemm_ms(&ref);
    }
    if (rc == 0) {
        double step_ms = cli_median(ms, steps), flops = gpt_train_flops(&cfg, B, T);
        double model = flops / (step_ms / 1e3) / 1e9;
        double blas = 2.0 * ref.M * ref.N * ref.K / (cli_median(gm, steps * GEMM_REPS) / 1e3) / 1e9;
        json_t *shape =
            json_pack("{s:i,s:i,s:i}", "M", B * T, "N", cfg.vocab_size, "K", cfg.n_embd);
        print_rc = cli_print_json(json_pack(
            "{s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:I,s:i,s:i,s:i,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:o,s:f}",
            "bench", "train", "layers", cfg.n_layer, "heads", cfg.n_head, "dim", cfg.n_embd,
            "vocab", cfg.vocab_size, "batch", B, "seq", T, "params", (json_int_t)m->num_params,
            "threads", threads, "grad_blocks", gtree_blocks(a.grad_blocks, B), "steps", steps,
            "ms_per_step", step_ms, "ms_forward", cli_median(fw, steps), "ms_backward",
            cli_median(bw, steps), "ms_optimizer", cli_median(op, steps), "tokens_per_s",
            B * T / (step_ms / 1e3), "gflop_per_step", flops / 1e9, "model_gflops", model,
            "sgemm_gflops", blas, "sgemm_shape", shape, "ratio", blas > 0 ? model / blas : 0.0));
    }
    train_free(&tr);
    ref_gemm_free(&ref);
    free(in), free(tg), free(ms), free(fw), free(bw), free(op), free(gm);
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
