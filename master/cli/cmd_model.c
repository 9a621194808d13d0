/*
 * cmd_model.c - model commands: init-model, eval-lm, train-lm.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nn/data.h"
#include "base/err.h"
#include "base/fs.h"
#include "nn/gpt.h"
#include "nn/hf.h"
#include "nn/ops.h"
#include "base/rng.h"
#include "nn/tok.h"
#include "nn/train.h"

/* ---- init-model ------------------------------------------------------------------------ */

/* Checks that the tokenizer in `dir` loads and that its ids fit a vocabulary of `vocab`; *bos
 * and *eos get its BOS and end-of-text ids (-1: none), for the config of the Llama family. */
static int check_tokenizer(const char *dir, int vocab, int *bos, int *eos) {
    tok_t *tok = tok_load(dir);
    if (!tok) return rl_fail_ctx(RL_EIO, "tokenizer");
    int n = tok_vocab_size(tok);
    *bos = tok_bos(tok), *eos = tok_eot(tok);
    tok_destroy(&tok);
    if (n > vocab)
        return rl_fail(RL_EINVAL, "%s: the tokenizer has %d ids but --vocab is %d", dir, n, vocab);
    return 0;
}

typedef struct {
    const char *out, *tokdir, *arch, *dtype;
    gpt_config_t cfg;
    long seed, shard_bytes;
} init_args_t;

static const cli_opt_t init_opt_table[] = {
    CLI_OPT_STR(init_args_t, out, "out", NULL, "DIR", "the model directory to write",
                CLI_OPT_REQUIRED),
    CLI_OPT_SHAPE(init_args_t, cfg),
    CLI_OPT_LONG(init_args_t, seed, "seed", 0, LONG_MAX, "0", "S", "initialisation seed"),
    CLI_OPT_FLAG(init_args_t, cfg.scalar_head, "scalar-head",
                 "add a linear n_embd -> 1 head (score.weight, score.bias)"),
    CLI_OPT_STR(init_args_t, tokdir, "tokenizer", NULL, "TDIR",
                "copy TDIR/vocab.json and TDIR/merges.txt into DIR (the tokenizer's vocabulary "
                "must fit --vocab)",
                0),
    CLI_OPT_STR(init_args_t, arch, "arch", "gpt2", "A",
                "architecture: gpt2, llama, qwen2 (q/k/v biases) or qwen3 (q/k norms)", 0),
    CLI_OPT_INT(init_args_t, cfg.n_kv_head, "kv-heads", 1, 1000, NULL, "K",
                "llama family: key/value heads, dividing --heads (default: --heads)"),
    CLI_OPT_INT(init_args_t, cfg.head_dim, "head-dim", 2, 65536, NULL, "D",
                "llama family: width of a head (default: dim / heads)"),
    CLI_OPT_INT(init_args_t, cfg.n_inner, "inner", 1, 1 << 24, NULL, "I",
                "llama family: MLP width, intermediate_size (default: 4 * dim)"),
    CLI_OPT_FLAG(init_args_t, cfg.tie_word_embeddings, "tie",
                 "llama family: tie the LM head to the embedding (tie_word_embeddings)"),
    CLI_OPT_FLOAT(init_args_t, cfg.rope_theta, "rope-theta", 1, 1e12, "10000", "X",
                  "llama family: RoPE base"),
    CLI_OPT_STR(init_args_t, dtype, "dtype", "f32", "T",
                "stored dtype: f32, bf16 or f16 (rounded to nearest even)", 0),
    CLI_OPT_LONG(init_args_t, shard_bytes, "shard-bytes", 0, LONG_MAX, "0", "B",
                 "write shards of at most B bytes and an index (0: one file)"),
};

/* --arch and --dtype by name; -1 for an unknown one. */
static int arch_by_name(const char *s) {
    static const char *const names[] = {"gpt2", "llama", "qwen2", "qwen3"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) return i;
    return -1;
}

static int dtype_by_name(const char *s) {
    static const char *const names[] = {"f32", "bf16", "f16"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, names[i])) return i;
    return -1;
}

const cli_opts_t cli_init_model_opts = CLI_OPTS(
    "init-model",
    "rlhf init-model --out DIR --layers L --heads H --dim C --vocab V --ctx N\n"
    "                       [--seed S] [--scalar-head] [--tokenizer TDIR]\n"
    "                       [--arch gpt2|llama|qwen2|qwen3 [--kv-heads K] [--head-dim D]\n"
    "                        [--inner I] [--tie] [--rope-theta X]] [--dtype T] [--shard-bytes B]",
    "Writes a freshly initialised model as a Hugging Face directory: DIR/config.json and\n"
    "DIR/model.safetensors (or shards and model.safetensors.index.json), each written\n"
    "atomically. GPT-2 gets GPT-2's initialisation; the Llama family (--arch llama, qwen2,\n"
    "qwen3) Hugging Face's: weight matrices N(0, 0.02), RMSNorm weights 1, biases 0.\n"
    "The shape options --layers, --heads, --dim, --vocab and --ctx are required.\n",
    init_opt_table, NULL);

int cmd_init_model(int argc, char **argv) {
    const char *cmd = "init-model";
    init_args_t a = {.cfg = {.layer_norm_epsilon = 1e-5f}};
    int prc = cli_opts_parse(&cli_init_model_opts, argc, argv, &a);
    if (prc != CLI_OPTS_GO) return prc;
    const char *out = a.out, *tokdir = a.tokdir;
    gpt_config_t cfg = a.cfg;
    long seed = a.seed;
    if (!out || !cfg.n_layer || !cfg.n_head || !cfg.n_embd || !cfg.vocab_size || !cfg.n_positions) {
        fprintf(stderr,
                "rlhf %s: --out, --layers, --heads, --dim, --vocab and --ctx are required\n", cmd);
        return 2;
    }
    int arch = arch_by_name(a.arch), dtype = dtype_by_name(a.dtype);
    if (arch < 0 || dtype < 0) {
        fprintf(stderr, "rlhf %s: %s\n", cmd,
                arch < 0 ? "--arch: gpt2, llama, qwen2 or qwen3" : "--dtype: f32, bf16 or f16");
        return 2;
    }
    int family_only = cfg.n_kv_head || cfg.head_dim || cfg.n_inner || cfg.tie_word_embeddings;
    if (arch == GPT_ARCH_GPT2 && family_only) {
        fprintf(stderr,
                "rlhf %s: --kv-heads, --head-dim, --inner and --tie need --arch llama, qwen2 or "
                "qwen3\n",
                cmd);
        return 2;
    }
    if (arch != GPT_ARCH_GPT2) {
        cfg.arch = arch;
        if (!cfg.n_kv_head) cfg.n_kv_head = cfg.n_head;
        if (!cfg.n_inner) cfg.n_inner = 4 * cfg.n_embd;
        cfg.attn_bias = arch == GPT_ARCH_QWEN2;
        cfg.qk_norm = arch == GPT_ARCH_QWEN3;
        cfg.bos_token_id = cfg.eos_token_id = -1;
    } else {
        cfg.rope_theta = 0; /* GPT-2 has none */
    }
    /* the tokenizer is checked before anything is written (its BOS and end-of-text ids go
     * into a Llama-family config, as the hub's configs name them), and copied after the
     * weights */
    int bos = -1, eos = -1;
    int rc = tokdir ? check_tokenizer(tokdir, cfg.vocab_size, &bos, &eos) : 0;
    if (rc < 0) return cli_fail(cmd, "saving", rc);
    if (arch != GPT_ARCH_GPT2) cfg.bos_token_id = bos, cfg.eos_token_id = eos;
    gpt_t *m = gpt_new(&cfg);
    if (!m) return cli_fail(cmd, "model", RL_EINVAL);
    gpt_init_weights(m, (uint64_t)seed);
    hf_save_opts_t so = {.dtype = (hf_dtype_t)dtype, .max_shard_bytes = (size_t)a.shard_bytes};
    if (rc == 0) rc = hf_save_opts(m, out, &so);
    if (rc == 0 && tokdir) rc = hf_copy_tokenizer(tokdir, out);
    size_t n = m->num_params;
    gpt_destroy(&m);
    if (rc < 0) return cli_fail(cmd, "saving", rc);
    return cli_print_json(json_pack("{s:s,s:I}", "out", out, "params", (json_int_t)n));
}

/* ---- eval-lm --------------------------------------------------------------------------- */

/* Encodes the text file `path` with the tokenizer of model directory `dir`. */
static int encode_text_file(const char *dir, const char *path, int vocab, int **ids, size_t *n) {
    tok_t *tok = tok_load(dir);
    if (!tok) return rl_fail_ctx(RL_EIO, "loading tokenizer");
    char *buf = NULL;
    size_t len = 0;
    int rc = tok_vocab_size(tok) > vocab
                 ? rl_fail(RL_EINVAL, "%s: the tokenizer has %d ids but the model only %d", dir,
                           tok_vocab_size(tok), vocab)
                 : fs_read_all(path, &buf, &len);
    if (rc == 0) rc = tok_encode(tok, buf, len, 1, ids, n);
    free(buf);
    tok_destroy(&tok);
    return rc;
}

typedef struct {
    const char *model, *tokens, *text;
    int T, B, threads;
} evallm_args_t;

static const cli_opt_t evallm_opt_table[] = {
    CLI_OPT_STR(evallm_args_t, model, "model", NULL, "DIR", "the model", CLI_OPT_REQUIRED),
    CLI_OPT_STR(evallm_args_t, tokens, "tokens", NULL, "FILE", "whitespace-separated token ids", 0),
    CLI_OPT_STR(evallm_args_t, text, "text", NULL, "FILE",
                "text, encoded with the tokenizer in DIR (<|endoftext|> in the text is the "
                "special token)",
                0),
    CLI_OPT_INT(evallm_args_t, T, "seq", 2, 1000000, NULL, "T",
                "window length (default: the model's n_positions)"),
    CLI_OPT_INT(evallm_args_t, B, "batch", 1, 4096, "4", "B", "windows per forward pass"),
    CLI_OPT_INT(evallm_args_t, threads, "threads", 1, 1024, "2", "N", "threads"),
};

static const cli_opts_t cli_eval_lm_opts = CLI_OPTS(
    "eval-lm",
    "rlhf eval-lm --model DIR (--tokens FILE | --text FILE) [--seq T] [--batch B]\n"
    "                    [--threads N]",
    "The ids are cut into consecutive windows of at most T tokens; every position whose next\n"
    "token is in the same window is scored. Prints {\"loss\": mean cross-entropy in nats,\n"
    "\"ppl\": exp(loss), \"tokens\": number of scored positions}.\n",
    evallm_opt_table, NULL);

int cmd_eval_lm(int argc, char **argv) {
    const char *cmd = "eval-lm";
    evallm_args_t a = {0};
    int c = cli_opts_parse(&cli_eval_lm_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    const char *model = a.model, *tokens = a.tokens, *text = a.text;
    int T = a.T, B = a.B, threads = a.threads;
    if (!model || !tokens == !text) {
        fprintf(stderr, "rlhf %s: --model and one of --tokens or --text are required\n", cmd);
        return 2;
    }
    ops_set_threads(threads);
    gpt_t *m = hf_load(model);
    if (!m) return cli_fail(cmd, "loading model", RL_EIO);
    if (T == 0) T = m->cfg.n_positions;
    if (T > m->cfg.n_positions) {
        fprintf(stderr, "rlhf %s: --seq %d exceeds the model's n_positions %d\n", cmd, T,
                m->cfg.n_positions);
        gpt_destroy(&m);
        return 2;
    }
    if (T < 2) {
        fprintf(stderr, "rlhf %s: windows of %d token(s) score nothing (need --seq >= 2)\n", cmd,
                T);
        gpt_destroy(&m);
        return 2;
    }
    int *ids = NULL, rc;
    size_t n = 0, scored = 0;
    double sum = 0;
    if (tokens)
        rc = data_read_tokens(tokens, m->cfg.vocab_size, &ids, &n);
    else
        rc = encode_text_file(model, text, m->cfg.vocab_size, &ids, &n);
    if (rc == 0) rc = train_eval_lm(m, ids, n, T, B, &sum, &scored);
    free(ids);
    gpt_destroy(&m);
    if (rc < 0) return cli_fail(cmd, "evaluating", rc);
    if (scored == 0) {
        fprintf(stderr, "rlhf %s: %s: fewer than 2 tokens, nothing to score\n", cmd,
                tokens ? tokens : text);
        return 1;
    }
    double loss = sum / scored;
    cli_print_json(
        json_pack("{s:f,s:f,s:I}", "loss", loss, "ppl", exp(loss), "tokens", (json_int_t)scored));
    return 0;
}

/* ---- train-lm -------------------------------------------------------------------------- */

typedef struct {
    const char *model, *tokens, *out;
    int steps, B, T, threads, log_every, warmup, grad_blocks;
    float lr, min_lr, wd, clip;
    long seed;
    adamw_sched_kind_t kind;
} trainlm_args_t;

/* --schedule constant|warmup|cosine */
static int trainlm_opt_schedule(void *args, const char *value) {
    adamw_sched_kind_t k;
    if (adamw_sched_parse(value, &k) < 0) return RL_EINVAL;
    if (args) ((trainlm_args_t *)args)->kind = k;
    return 0;
}

#define LI(f, name, lo, hi, def, arg, help)                                                        \
    CLI_OPT_INT(trainlm_args_t, f, name, lo, hi, def, arg, help)
#define LF(f, name, lo, hi, def, arg, help)                                                        \
    CLI_OPT_FLOAT(trainlm_args_t, f, name, lo, hi, def, arg, help)
static const cli_opt_t trainlm_opt_table[] = {
    CLI_OPT_STR(trainlm_args_t, model, "model", NULL, "DIR", "the model to train",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(trainlm_args_t, tokens, "tokens", NULL, "FILE", "whitespace-separated token ids",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(trainlm_args_t, out, "out", NULL, "DIR", "where to write the result",
                CLI_OPT_REQUIRED),
    LI(steps, "steps", 1, 100000000, "200", "N", "optimizer steps"),
    LI(B, "batch", 1, 4096, "8", "B", "windows per step"),
    LI(T, "seq", 1, 1000000, "64", "T", "window length (at most the model's n_positions)"),
    LF(lr, "lr", 0, 10, "0.001", "X", "peak learning rate"),
    LF(min_lr, "min-lr", 0, 10, "0.0001", "X", "final learning rate"),
    CLI_OPT_CALL("schedule", "constant|warmup|cosine", "learning-rate schedule (default cosine)",
                 trainlm_opt_schedule, 0),
    LI(warmup, "warmup", 0, 100000000, "20", "N", "warmup steps"),
    LF(wd, "weight-decay", 0, 10, "0.1", "X", "AdamW weight decay (2-D weights only)"),
    LF(clip, "clip", 0, 1e9, "1", "X", "global gradient-norm clip"),
    CLI_OPT_LONG(trainlm_args_t, seed, "seed", 0, LONG_MAX, "1", "S", "seed of the windows"),
    LI(threads, "threads", 1, 1024, "2", "N", "threads"),
    LI(log_every, "log-every", 1, 100000000, "10", "N", "log interval"),
    LI(grad_blocks, "grad-blocks", 1, GTREE_MAX_BLOCKS, "8", "N",
       "gradient blocks per step (capped at the batch): the fixed order the step's gradient is "
       "summed in, the same on any number of learner shards"),
};
#undef LI
#undef LF

static const cli_opts_t cli_train_lm_opts = CLI_OPTS(
    "train-lm", "rlhf train-lm --model DIR --tokens FILE --out DIR [options]",
    "Trains the model in DIR on windows of T+1 consecutive tokens drawn from FILE (window starts\n"
    "come from a counter-based RNG keyed by --seed and the step, so a run is reproducible),\n"
    "with AdamW (betas 0.9/0.95, decay on 2-D weights only), global-norm clipping and the LR\n"
    "schedule. Prints one JSON object per logged step and writes the result to --out\n"
    "(atomic writes).\n",
    trainlm_opt_table, NULL);

int cmd_train_lm(int argc, char **argv) {
    const char *cmd = "train-lm";
    trainlm_args_t a = {.kind = ADAMW_SCHED_COSINE};
    int c = cli_opts_parse(&cli_train_lm_opts, argc, argv, &a);
    if (c != CLI_OPTS_GO) return c;
    const char *model = a.model, *tokens = a.tokens, *out = a.out;
    int steps = a.steps, B = a.B, T = a.T, threads = a.threads, log_every = a.log_every;
    int warmup = a.warmup, seq_given = 0; /* as before: a --seq over the context is clamped */
    float lr = a.lr, min_lr = a.min_lr, wd = a.wd, clip = a.clip;
    long seed = a.seed;
    adamw_sched_kind_t kind = a.kind;
    if (!model || !tokens || !out) {
        fprintf(stderr, "rlhf %s: --model, --tokens and --out are required\n", cmd);
        return 2;
    }
    ops_set_threads(threads);
    gpt_t *m = hf_load(model);
    if (!m) return cli_fail(cmd, "loading model", RL_EIO);
    int rc = 0, print_rc = 0, *ids = NULL, *in = NULL, *tg = NULL;
    size_t n = 0;
    train_t tr = {0};
    if (!seq_given && T > m->cfg.n_positions) T = m->cfg.n_positions; /* default fits the model */
    if (T > m->cfg.n_positions) {
        rc = rl_fail(RL_EINVAL, "--seq %d exceeds the model's n_positions %d", T,
                     m->cfg.n_positions);
        goto done;
    }
    rc = data_read_tokens(tokens, m->cfg.vocab_size, &ids, &n);
    if (rc < 0) goto done;
    if (n < (size_t)T + 1) {
        rc = rl_fail(RL_EINVAL, "%s: %zu tokens, need at least --seq + 1 = %d", tokens, n, T + 1);
        goto done;
    }
    in = malloc((size_t)B * T * sizeof(int));
    tg = malloc((size_t)B * T * sizeof(int));
    adamw_sched_t sched = {kind, lr, min_lr, warmup, steps};
    if (!in || !tg) rc = rl_fail(RL_ENOMEM, "batch buffers");
    if (rc == 0) rc = train_init(&tr, m, &sched, wd, clip);
    tr.grad_blocks = a.grad_blocks;
    double t_start = cli_now_ms();
    for (int s = 0; rc == 0 && s < steps; s++) {
        size_t span = n - (size_t)T; /* window starts in [0, span) */
        for (int b = 0; b < B; b++) {
            size_t start = (size_t)(rng_uniform((uint64_t)seed, (uint64_t)s, (uint64_t)b) * span);
            if (start >= span) start = span - 1;
            memcpy(in + (size_t)b * T, ids + start, (size_t)T * sizeof(int));
            memcpy(tg + (size_t)b * T, ids + start + 1, (size_t)T * sizeof(int));
        }
        train_stats_t st;
        rc = train_lm_step(&tr, in, tg, NULL, B, T, &st);
        if (rc == 0 && (s % log_every == 0 || s == steps - 1)) {
            double ms = st.ms_forward + st.ms_backward + st.ms_optimizer;
            print_rc |= cli_print_json(json_pack("{s:i,s:f,s:f,s:f,s:f,s:f}", "step", s, "loss",
                                                 (double)st.loss, "lr", (double)st.lr, "grad_norm",
                                                 st.grad_norm, "ms", ms, "tokens_per_s",
                                                 B * T / (ms / 1e3)));
        }
    }
    if (rc == 0) rc = hf_save(m, out);
    if (rc == 0) rc = hf_copy_tokenizer(model, out); /* the trained model keeps its tokenizer */
    if (rc == 0)
        print_rc |= cli_print_json(json_pack("{s:s,s:i,s:f}", "saved", out, "steps", steps,
                                             "seconds", (cli_now_ms() - t_start) / 1e3));
done:
    train_free(&tr);
    free(ids);
    free(in);
    free(tg);
    gpt_destroy(&m);
    return rc < 0 ? cli_fail(cmd, "training", rc) : print_rc;
}
