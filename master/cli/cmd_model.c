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

/* Checks that the tokenizer in `dir` loads and that its ids fit a vocabulary of `vocab`. */
static int check_tokenizer(const char *dir, int vocab) {
    tok_t *tok = tok_load(dir);
    if (!tok) return rl_fail_ctx(RL_EIO, "tokenizer");
    int n = tok_vocab_size(tok);
    tok_destroy(&tok);
    if (n > vocab)
        return rl_fail(RL_EINVAL, "%s: the tokenizer has %d ids but --vocab is %d", dir, n, vocab);
    return 0;
}

typedef struct {
    const char *out, *tokdir;
    gpt_config_t cfg;
    long seed;
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
};

const cli_opts_t cli_init_model_opts = CLI_OPTS(
    "init-model",
    "rlhf init-model --out DIR --layers L --heads H --dim C --vocab V --ctx N\n"
    "                       [--seed S] [--scalar-head] [--tokenizer TDIR]",
    "Writes a freshly initialised GPT-2 model (GPT-2 initialisation) as a Hugging Face\n"
    "directory: DIR/config.json and DIR/model.safetensors (F32), each written atomically.\n"
    "The shape options --layers, --heads, --dim, --vocab and --ctx are required.\n",
    init_opt_table, NULL);

int cmd_init_model(int argc, char **argv) {
    const char *cmd = "init-model";
    init_args_t a = {.cfg = {0, 0, 0, 0, 0, 1e-5f, 0}};
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
    gpt_t *m = gpt_new(&cfg);
    if (!m) return cli_fail(cmd, "model", RL_EINVAL);
    gpt_init_weights(m, (uint64_t)seed);
    /* the tokenizer is checked before anything is written, and copied after the weights */
    int rc = tokdir ? check_tokenizer(tokdir, cfg.vocab_size) : 0;
    if (rc == 0) rc = hf_save(m, out);
    if (rc == 0 && tokdir) rc = hf_copy_tokenizer(tokdir, out);
    size_t n = m->num_params;
    gpt_destroy(&m);
    if (rc < 0) return cli_fail(cmd, "saving", rc);
    return cli_print_json(json_pack("{s:s,s:I}", "out", out, "params", (json_int_t)n));
}

/* ---- eval-lm --------------------------------------------------------------------------- */

static const char eval_help[] =
    "usage: rlhf eval-lm --model DIR (--tokens FILE | --text FILE) [--seq T] [--batch B]\n"
    "                    [--threads N]\n\n"
    "--tokens FILE holds whitespace-separated token ids; --text FILE holds text, encoded with\n"
    "the tokenizer in DIR (<|endoftext|> in the text is the special token). The ids are cut\n"
    "into consecutive windows of at most\n"
    "T tokens (default: the model's n_positions); every position whose next token is in the\n"
    "same window is scored. Prints {\"loss\": mean cross-entropy in nats, \"ppl\": exp(loss),\n"
    "\"tokens\": number of scored positions}.\n";

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

int cmd_eval_lm(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},   {"tokens", 1, 0, 't'}, {"seq", 1, 0, 'T'},  {"batch", 1, 0, 'B'},
        {"threads", 1, 0, 'j'}, {"help", 0, 0, 'h'},   {"text", 1, 0, 'x'}, {0, 0, 0, 0}};
    const char *cmd = "eval-lm", *model = NULL, *tokens = NULL, *text = NULL;
    int T = 0, B = 4, threads = 2, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 't':
            tokens = optarg;
            break;
        case 'x':
            text = optarg;
            break;
        case 'T':
            bad = cli_int(cmd, "seq", optarg, 2, 1000000, &T);
            break;
        case 'B':
            bad = cli_int(cmd, "batch", optarg, 1, 4096, &B);
            break;
        case 'j':
            bad = cli_int(cmd, "threads", optarg, 1, 1024, &threads);
            break;
        case 'h':
            fputs(eval_help, stdout);
            return 0;
        default:
            return cli_usage_error(cmd);
        }
        if (bad) return 2;
    }
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

static const char train_help[] =
    "usage: rlhf train-lm --model DIR --tokens FILE --out DIR [--steps N] [--batch B] [--seq T]\n"
    "                     [--lr X] [--min-lr X] [--schedule constant|warmup|cosine]\n"
    "                     [--warmup N] [--weight-decay X] [--clip X] [--seed S] [--threads N]\n"
    "                     [--log-every N]\n\n"
    "Trains the model in DIR on windows of T+1 consecutive tokens drawn from FILE (window starts\n"
    "come from a counter-based RNG keyed by --seed and the step, so a run is reproducible),\n"
    "with AdamW (betas 0.9/0.95, decay on 2-D weights only), global-norm clipping and the LR\n"
    "schedule. Prints one JSON object per logged step and writes the result to --out\n"
    "(atomic writes). Defaults: 200 steps, B=8, T=64, lr 1e-3 cosine to 1e-4, warmup 20,\n"
    "weight decay 0.1, clip 1.0, seed 1, 2 threads.\n";

int cmd_train_lm(int argc, char **argv) {
    static const struct option opts[] = {{"model", 1, 0, 'm'},
                                         {"tokens", 1, 0, 't'},
                                         {"out", 1, 0, 'o'},
                                         {"steps", 1, 0, 'n'},
                                         {"batch", 1, 0, 'B'},
                                         {"seq", 1, 0, 'T'},
                                         {"lr", 1, 0, 'l'},
                                         {"min-lr", 1, 0, 'L'},
                                         {"schedule", 1, 0, 'S'},
                                         {"warmup", 1, 0, 'w'},
                                         {"weight-decay", 1, 0, 'd'},
                                         {"clip", 1, 0, 'c'},
                                         {"seed", 1, 0, 's'},
                                         {"threads", 1, 0, 'j'},
                                         {"log-every", 1, 0, 'e'},
                                         {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *cmd = "train-lm", *model = NULL, *tokens = NULL, *out = NULL;
    int steps = 200, B = 8, T = 64, threads = 2, log_every = 10, warmup = 20, seq_given = 0, c;
    float lr = 1e-3f, min_lr = 1e-4f, wd = 0.1f, clip = 1.0f;
    long seed = 1;
    adamw_sched_kind_t kind = ADAMW_SCHED_COSINE;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 't':
            tokens = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'n':
            bad = cli_int(cmd, "steps", optarg, 1, 100000000, &steps);
            break;
        case 'B':
            bad = cli_int(cmd, "batch", optarg, 1, 4096, &B);
            break;
        case 'T':
            bad = cli_int(cmd, "seq", optarg, 1, 1000000, &T);
            break;
        case 'l':
            bad = cli_float(cmd, "lr", optarg, 0, 10, &lr);
            break;
        case 'L':
            bad = cli_float(cmd, "min-lr", optarg, 0, 10, &min_lr);
            break;
        case 'S':
            if (adamw_sched_parse(optarg, &kind) < 0) {
                fprintf(stderr, "rlhf %s: --schedule: %s\n", cmd, rl_errmsg());
                bad = -1;
            }
            break;
        case 'w':
            bad = cli_int(cmd, "warmup", optarg, 0, 100000000, &warmup);
            break;
        case 'd':
            bad = cli_float(cmd, "weight-decay", optarg, 0, 10, &wd);
            break;
        case 'c':
            bad = cli_float(cmd, "clip", optarg, 0, 1e9, &clip);
            break;
        case 's':
            bad = cli_long(cmd, "seed", optarg, 0, 0x7fffffffffffffffL, &seed);
            break;
        case 'j':
            bad = cli_int(cmd, "threads", optarg, 1, 1024, &threads);
            break;
        case 'e':
            bad = cli_int(cmd, "log-every", optarg, 1, 100000000, &log_every);
            break;
        case 'h':
            fputs(train_help, stdout);
            return 0;
        default:
            return cli_usage_error(cmd);
        }
        if (bad) return 2;
    }
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
