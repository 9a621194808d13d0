/*
 * cmd_gen.c - generation commands: `rlhf sample` and `rlhf bench generate`.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "cli.h"
#include "base/err.h"
#include "nn/gen.h"
#include "nn/gpt.h"
#include "nn/hf.h"
#include "nn/ops.h"
#include "nn/pgemm.h"
#include "base/rng.h"
#include "nn/tok.h"

/* ---- sample ------------------------------------------------------------------------------ */

typedef struct {
    const tok_t *tok;
    const char *stop;
} stop_ctx_t;

/* Stops a sequence once its decoded text contains the stop string. */
static int stop_on_string(void *ctx, int seq, const int *tokens, int n) {
    (void)seq;
    const stop_ctx_t *sc = ctx;
    char *text = NULL;
    size_t len = 0;
    if (tok_decode(sc->tok, tokens, (size_t)n, &text, &len) < 0) return 0;
    int hit = memmem(text, len, sc->stop, strlen(sc->stop)) != NULL;
    free(text);
    return hit;
}

static const char *finish_name(gen_finish_t f) {
    return f == GEN_FINISH_EOT ? "eot" : f == GEN_FINISH_STOP ? "stop" : "length";
}

typedef struct {
    const char *model, *prompt, *stop;
    int n, json, threads;
    long seed;
    gen_opts_t o;
} sample_args_t;

static const cli_opt_t sample_opt_table[] = {
    CLI_OPT_STR(sample_args_t, model, "model", NULL, "DIR", "model and tokenizer",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(sample_args_t, prompt, "prompt", NULL, "TEXT", "the prompt", CLI_OPT_REQUIRED),
    CLI_OPT_INT(sample_args_t, n, "n", 1, 4096, "1", "N", "continuations"),
    CLI_OPT_INT(sample_args_t, o.max_new_tokens, "max-new-tokens", 0, 1000000, "64", "M",
                "new tokens at most"),
    CLI_OPT_FLOAT(sample_args_t, o.sampling.temperature, "temperature", 0, 1e6, "1", "T",
                  "sampling temperature (0: greedy)"),
    CLI_OPT_INT(sample_args_t, o.sampling.top_k, "top-k", 0, 100000000, "0", "K", "top-k (0: off)"),
    CLI_OPT_FLOAT(sample_args_t, o.sampling.top_p, "top-p", 1e-9, 1, "1", "P",
                  "nucleus mass (1: off)"),
    CLI_OPT_LONG(sample_args_t, seed, "seed", 0, LONG_MAX, "0", "S", "seed"),
    CLI_OPT_STR(sample_args_t, stop, "stop", NULL, "STR", "end a sample at this string", 0),
    CLI_OPT_FLAG(sample_args_t, json, "json", "one JSON object per sample"),
    CLI_OPT_INT(sample_args_t, threads, "threads", 1, 1024, "2", "N", "threads"),
};

static const cli_opts_t sample_opts = CLI_OPTS(
    "sample",
    "rlhf sample --model DIR --prompt TEXT [--n N] [--max-new-tokens M]\n"
    "                   [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop STR]\n"
    "                   [--json] [--threads N]",
    "Generates N continuations of TEXT with the model and tokenizer in DIR (KV-cached, all N in\n"
    "one batch). --temperature 0 is greedy. Sample i draws its randomness from (seed, i,\n"
    "position) only, so it is the same whatever N is. A sample ends at <|endoftext|>, at the stop\n"
    "string, at M new tokens or when the context is full. The stop string is searched in the\n"
    "generated text only (not the prompt) after every token, and the sample keeps the token\n"
    "that completed it. --json prints one object per sample:\n"
    "text, token ids (prompt excluded), logprobs under the sampling distribution and under the\n"
    "model (temperature 1, untruncated), and the finish reason.\n",
    sample_opt_table, NULL);

int cmd_sample(int argc, char **argv) {
    const char *cmd = "sample";
    sample_args_t a = {.o = {.eot = -1}};
    int c = cli_opts_parse(&sample_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    const char *model = a.model, *prompt = a.prompt, *stop = a.stop;
    int n = a.n, json = a.json, threads = a.threads;
    long seed = a.seed;
    gen_opts_t o = a.o;
    if (!model || !prompt) {
        fprintf(stderr, "rlhf %s: --model and --prompt are required\n", cmd);
        return 2;
    }
    if (stop && !*stop) {
        fprintf(stderr, "rlhf %s: --stop must not be empty\n", cmd);
        return 2;
    }
    ops_set_threads(threads);
    o.seed = (uint64_t)seed;
    gpt_t *m = hf_load(model);
    if (!m) return cli_fail(cmd, "loading model", RL_EIO);
    tok_t *tok = tok_load(model);
    if (!tok) {
        gpt_destroy(&m);
        return cli_fail(cmd, "loading tokenizer", RL_EIO);
    }
    int rc = 0, print_rc = 0, *ids = NULL;
    size_t nids = 0;
    gen_seq_t *out = calloc((size_t)n, sizeof *out);
    const int **prompts = calloc((size_t)n, sizeof *prompts);
    int *lens = calloc((size_t)n, sizeof *lens);
    if (tok_vocab_size(tok) > m->cfg.vocab_size) {
        rc = rl_fail(RL_EINVAL, "%s: the tokenizer has %d ids but the model only %d", model,
                     tok_vocab_size(tok), m->cfg.vocab_size);
        goto done;
    }
    if (!out || !prompts || !lens) {
        rc = rl_fail(RL_ENOMEM, "buffers");
        goto done;
    }
    if ((rc = tok_encode(tok, prompt, strlen(prompt), 1, &ids, &nids)) < 0) goto done;
    if (nids == 0) {
        rc = rl_fail(RL_EINVAL, "the prompt encodes to no tokens");
        goto done;
    }
    for (int i = 0; i < n; i++) prompts[i] = ids, lens[i] = (int)nids;
    o.eot = tok_eot(tok);
    /* a model vocabulary padded past the tokenizer's: never sample an id it cannot decode */
    if (tok_vocab_size(tok) < m->cfg.vocab_size) o.vocab_limit = tok_vocab_size(tok);
    stop_ctx_t sc = {tok, stop};
    if (stop) o.stop = stop_on_string, o.stop_ctx = &sc;
    if ((rc = gen_generate(m, prompts, lens, n, NULL, &o, out)) < 0) goto done;
    for (int i = 0; i < n && rc == 0; i++) {
        char *text = NULL;
        size_t len = 0, vlen = 0;
        if ((rc = tok_decode(tok, out[i].tokens, (size_t)out[i].n, &text, &len)) < 0) break;
        if (!json) {
            printf("--- sample %d (%s, %d tokens)\n", i, finish_name(out[i].finish), out[i].n);
            fwrite(prompt, 1, strlen(prompt), stdout);
            fwrite(text, 1, len, stdout);
            putchar('\n');
        } else {
            json_t *t = json_array(), *lp = json_array(), *lm = json_array();
            for (int k = 0; k < out[i].n; k++) {
                json_array_append_new(t, json_integer(out[i].tokens[k]));
                json_array_append_new(lp, json_real(out[i].logprobs[k]));
                json_array_append_new(lm, json_real(out[i].logprobs_model[k]));
            }
            /* the text may hold any bytes (a sample can end inside a character) and JSON strings
             * are UTF-8: invalid sequences become U+FFFD, valid ones are kept; the token ids
             * are exact */
            char *valid = tok_utf8_lossy(text, len, &vlen);
            json_t *js = valid ? json_stringn(valid, vlen) : NULL;
            free(valid);
            if (!js) {
                rc = rl_fail(RL_ENOMEM, "sample %d: text", i);
                json_decref(t), json_decref(lp), json_decref(lm);
                free(text);
                break;
            }
            print_rc |= cli_print_json(json_pack("{s:i,s:o,s:o,s:o,s:o,s:s}", "index", i, "text",
                                                 js, "tokens", t, "logprobs", lp, "logprobs_model",
                                                 lm, "finish", finish_name(out[i].finish)));
        }
        free(text);
    }
done:
    if (out)
        for (int i = 0; i < n; i++) gen_seq_free(&out[i]);
    free(out);
    free(prompts);
    free(lens);
    free(ids);
    tok_destroy(&tok);
    gpt_destroy(&m);
    return rc < 0 ? cli_fail(cmd, "sampling", rc) : print_rc;
}

/* ---- bench generate ----------------------------------------------------------------------- */

static double now_mark; /* the time of the first logits callback of a run (end of prefill) */

static void mark_prefill(void *ctx, int seq, int pos, const float *logits, int V) {
    (void)seq, (void)pos, (void)logits, (void)V;
    if (*(int *)ctx == 0) now_mark = cli_now_ms(), *(int *)ctx = 1;
}

/* A buffer of `bytes` to stream through for the read-bandwidth measurement. */
typedef struct {
    float *buf;
    size_t n;
} bw_buf_t;

static int bw_init(bw_buf_t *b, size_t bytes) {
    b->n = bytes / sizeof(float);
    b->buf = malloc(b->n * sizeof(float));
    if (!b->buf) return rl_fail(RL_ENOMEM, "bandwidth buffer");
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < b->n; i++) b->buf[i] = (float)(i & 7);
    return 0;
}

/* GB/s of one pass summing the buffer on the OpenMP team (wide loads, independent
 * accumulators: pure DRAM reads). */
static double bw_pass(const bw_buf_t *b) {
    double t0 = cli_now_ms();
    float s = pgemm_read_sum(b->buf, b->n);
    double ms = cli_now_ms() - t0;
    volatile float sink = s; /* keep the sum alive */
    (void)sink;
    return b->n * sizeof(float) / (ms / 1e3) / 1e9;
}

/* One timed generation run: prefill and decode tokens/s. */
static int time_run(gpt_t *m, const gen_packed_t *pk, int B, int P, int N, double *prefill_tps,
                    double *decode_tps) {
    int V = m->cfg.vocab_size, rc;
    int *toks = malloc((size_t)B * P * sizeof(int)), *lens = malloc((size_t)B * sizeof(int));
    const int **prompts = malloc((size_t)B * sizeof *prompts);
    gen_seq_t *out = calloc((size_t)B, sizeof *out);
    if (!toks || !lens || !prompts || !out) {
        rc = rl_fail(RL_ENOMEM, "bench buffers");
        goto done;
    }
    for (int i = 0; i < B * P; i++) toks[i] = (int)(rng_uniform(3, 0, (uint64_t)i) * V) % V;
    for (int b = 0; b < B; b++) prompts[b] = toks + (size_t)b * P, lens[b] = P;
    int flag = 0;
    gen_opts_t o = {.max_new_tokens = N,
                    .sampling = {1.0f, 0, 1.0f},
                    .seed = 1,
                    .eot = -1,
                    .on_logits = mark_prefill,
                    .on_logits_ctx = &flag,
                    .packed = pk};
    double t0 = cli_now_ms();
    rc = gen_generate(m, prompts, lens, B, NULL, &o, out);
    double t1 = cli_now_ms();
    if (rc == 0) {
        long generated = 0;
        for (int b = 0; b < B; b++) generated += out[b].n;
        *prefill_tps = (double)B * P / ((now_mark - t0) / 1e3);
        /* the first token of each sequence comes from the prefill step */
        *decode_tps = (double)(generated - B) / ((t1 - now_mark) / 1e3);
    }
done:
    if (out)
        for (int b = 0; b < B; b++) gen_seq_free(&out[b]);
    free(out), free(toks), free(lens), free(prompts);
    return rc;
}

typedef struct {
    gpt_config_t cfg;
    int B, P, N, threads;
    const char *model;
} bench_gen_args_t;

static const cli_opt_t bench_gen_opt_table[] = {
    CLI_OPT_SHAPE(bench_gen_args_t, cfg),
    CLI_OPT_INT(bench_gen_args_t, B, "batch", 1, 4096, NULL, "B", "batch of the batched runs"),
    CLI_OPT_INT(bench_gen_args_t, P, "prompt-len", 1, 1000000, NULL, "P", "prompt tokens"),
    CLI_OPT_INT(bench_gen_args_t, N, "new", 2, 1000000, NULL, "N", "new tokens"),
    CLI_OPT_INT(bench_gen_args_t, threads, "threads", 1, 1024, "2", "T", "threads"),
    CLI_OPT_STR(bench_gen_args_t, model, "model", NULL, "DIR",
                "the shape of DIR/config.json (GPT-2, Llama, Qwen2, Qwen3) in place of --layers, "
                "--heads, --dim, --vocab, --ctx; its weights are not read",
                0),
};

static const cli_opts_t bench_gen_opts = CLI_OPTS(
    "bench generate",
    "rlhf bench generate --layers L --heads H --dim C --vocab V --batch B\n"
    "                           --prompt-len P --new N [--threads T] [--ctx N]\n"
    "       rlhf bench generate --model DIR --batch B --prompt-len P --new N [--threads T]",
    "Generates N new tokens (temperature-1 sampling) after random prompts of P tokens with a\n"
    "randomly initialised model whose weights are packed once (the time is reported): five\n"
    "single-stream (B=1) runs alternating with five DRAM read-bandwidth passes, then three runs\n"
    "of the batch B (medians of each). Prints JSON: prefill and decode tokens/s for both, the\n"
    "batched/single decode speedup, the memory-bandwidth bound of single-stream decoding (the\n"
    "bytes of weights every token reads, divided by the read bandwidth), and the compute bound\n"
    "of batched decoding (the machine's FMA rate, measured in the same run, divided by the\n"
    "floating-point operations of one decoded token).\n",
    bench_gen_opt_table, NULL);

int cmd_bench_generate(int argc, char **argv) {
    const char *cmd = "bench generate";
    bench_gen_args_t a = {.cfg = {.layer_norm_epsilon = 1e-5f}};
    int c = cli_opts_parse(&bench_gen_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    gpt_config_t cfg = a.cfg;
    int B = a.B, P = a.P, N = a.N, threads = a.threads;
    if (a.model) {
        int rc = hf_config_read(a.model, &cfg);
        if (rc < 0) return cli_fail(cmd, "model config", rc);
        cfg.scalar_head = 0;
    }
    if (!cfg.n_layer || !cfg.n_head || !cfg.n_embd || !cfg.vocab_size || !B || !P || !N) {
        fprintf(stderr,
                "rlhf %s: --layers, --heads, --dim, --vocab, --batch, --prompt-len and "
                "--new are required\n",
                cmd);
        return 2;
    }
    if (!cfg.n_positions) cfg.n_positions = P + N > 1024 ? P + N : 1024;
    ops_set_threads(threads);
    gpt_t *m = gpt_new(&cfg);
    if (!m) return cli_fail(cmd, "model", RL_EINVAL);
    gpt_init_weights(m, 1);
    /* every decoded token reads every weight once, except the position table (one row) and,
     * with an untied LM head, the embedding table (one row) */
    int untied = cfg.arch != GPT_ARCH_GPT2 && !cfg.tie_word_embeddings;
    double weight_bytes =
        (double)(m->num_params - m->param_sizes[GPT_WPE] - (untied ? m->param_sizes[GPT_WTE] : 0)) *
        sizeof(float);
    /* and does two operations per weight of the linear layers and the LM head, plus attention
     * over its context (P + N/2 positions on average): q.k and p.v, 2 * (query width) each per
     * layer */
    double C = cfg.n_embd, L = cfg.n_layer, Dq = (double)cfg.n_head * gpt_head_dim(&cfg);
    double per_layer = 12.0 * C * C;
    if (cfg.arch != GPT_ARCH_GPT2)
        per_layer =
            C * (Dq + 2.0 * cfg.n_kv_head * gpt_head_dim(&cfg)) + Dq * C + 3.0 * cfg.n_inner * C;
    double flop_token =
        2.0 * (L * per_layer + (double)cfg.vocab_size * C) + 4.0 * L * Dq * (P + N / 2.0);
    gen_packed_t *pk = NULL;
    double pack_t0 = cli_now_ms();
    if (gen_pack(m, &pk) < 0) {
        gpt_destroy(&m);
        return cli_fail(cmd, "packing the weights", RL_ENOMEM);
    }
    double pack_ms = cli_now_ms() - pack_t0;
    /* Five single-stream runs alternate with five read-bandwidth passes over a buffer the size
     * of the weights: medians of each, measured under the same conditions. */
    bw_buf_t bw = {0};
    double pre1s[5], dec1s[5], bws[5];
    int rc = bw_init(&bw, (size_t)weight_bytes);
    if (rc == 0) bw_pass(&bw); /* warm-up: page faults */
    for (int r = 0; rc == 0 && r < 5; r++) {
        rc = time_run(m, pk, 1, P, N, &pre1s[r], &dec1s[r]);
        bws[r] = bw_pass(&bw);
    }
    free(bw.buf);
    double pre1 = 0, dec1 = 0, preB = 0, decB = 0, gbps = 0;
    if (rc == 0)
        pre1 = cli_median(pre1s, 5), dec1 = cli_median(dec1s, 5), gbps = cli_median(bws, 5);
    double bound = gbps * 1e9 / weight_bytes;
    double preBs[3], decBs[3];
    for (int r = 0; rc == 0 && B > 1 && r < 3; r++)
        rc = time_run(m, pk, B, P, N, &preBs[r], &decBs[r]);
    if (rc == 0 && B > 1) preB = cli_median(preBs, 3), decB = cli_median(decBs, 3);
    if (B == 1) preB = pre1, decB = dec1;
    double peak = rc == 0 ? pgemm_fma_peak_gflops() : 0, ceiling = peak * 1e9 / flop_token;
    int print_rc = 0;
    if (rc == 0)
        print_rc = cli_print_json(json_pack(
            "{s:s,s:i,s:i,s:i,s:i,s:I,s:i,s:i,s:i,s:i,s:s,s:f," /* shape, kernel, pack */
            "s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", /* 15 figures */
            "bench", "generate", "layers", cfg.n_layer, "heads", cfg.n_head, "dim", cfg.n_embd,
            "vocab", cfg.vocab_size, "params", (json_int_t)m->num_params, "batch", B, "prompt_len",
            P, "new", N, "threads", threads, "kernel", pgemm_kernel(), "pack_ms", pack_ms,
            "single_prefill_tokens_per_s", pre1, "single_decode_tokens_per_s", dec1,
            "batch_prefill_tokens_per_s", preB, "batch_decode_tokens_per_s", decB, "batch_speedup",
            decB / dec1, "weight_gb", weight_bytes / 1e9, "read_gbps", gbps,
            "bandwidth_bound_tokens_per_s", bound, "single_vs_bound", dec1 / bound,
            "gflop_per_token", flop_token / 1e9, "fma_peak_gflops", peak, "batch_decode_gflops",
            decB * flop_token / 1e9, "batch_vs_fma_peak",
            peak > 0 ? decB * flop_token / 1e9 / peak : 0.0, "compute_bound_tokens_per_s", ceiling,
            "compute_bound_speedup", ceiling / dec1));
    gen_pack_free(&pk);
    gpt_destroy(&m);
    return rc < 0 ? cli_fail(cmd, "generate", rc) : print_rc;
}
