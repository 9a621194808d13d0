/*
 * cmd_tok.c - tokenizer commands: tokenize, detokenize, tokenizer-train.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nn/data.h"
#include "base/err.h"
#include "base/fs.h"
#include "nn/tok.h"

/* Reads all of stdin (any bytes) into a malloc'ed, NUL-terminated buffer. */
static int read_stdin(char **data, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) return rl_fail(RL_ENOMEM, "stdin: out of memory");
    for (;;) {
        if (n == cap) {
            char *grown = realloc(buf, 2 * cap + 1);
            if (!grown) {
                free(buf);
                return rl_fail(RL_ENOMEM, "stdin: out of memory");
            }
            buf = grown;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, stdin);
        n += got;
        if (got == 0) break;
    }
    if (ferror(stdin)) {
        free(buf);
        return rl_fail(RL_EIO, "stdin: %s", strerror(errno));
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;
}

/* Writes len bytes to stdout; returns 0 or 1 after a message. */
static int write_stdout(const char *cmd, const void *data, size_t len) {
    if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0) {
        fprintf(stderr, "rlhf %s: writing stdout: %s\n", cmd, strerror(errno));
        return 1;
    }
    return 0;
}

typedef struct {
    const char *model, *chat;
    int no_special, bos, gen_prompt, render;
} tok_args_t;

static const cli_opt_t tokenize_opt_table[] = {
    CLI_OPT_STR(tok_args_t, model, "model", NULL, "DIR", "the tokenizer's model directory",
                CLI_OPT_REQUIRED),
    CLI_OPT_FLAG(tok_args_t, no_special, "no-special",
                 "encode special tokens written in the text (<|endoftext|>, <|im_start|>...) as "
                 "ordinary text"),
    CLI_OPT_FLAG(tok_args_t, bos, "bos",
                 "start with the BOS token where tokenizer_config.json adds one"),
    CLI_OPT_STR(tok_args_t, chat, "chat", NULL, "FILE",
                "render the conversation in FILE (JSON messages; - for stdin) through the chat "
                "template, then encode it",
                0),
    CLI_OPT_FLAG(tok_args_t, gen_prompt, "generation-prompt",
                 "with --chat: end with the prompt of the assistant's turn"),
    CLI_OPT_FLAG(tok_args_t, render, "render",
                 "with --chat: print the rendered text instead of ids"),
};

static const cli_opts_t tokenize_opts = CLI_OPTS(
    "tokenize",
    "rlhf tokenize --model DIR [--no-special] [--bos] < TEXT\n"
    "       rlhf tokenize --model DIR --chat FILE [--generation-prompt] [--render]",
    "Encodes stdin (any bytes) with the tokenizer of DIR and prints the token ids,\n"
    "space-separated, on one line. DIR holds tokenizer.json (+ tokenizer_config.json), as\n"
    "Llama 3, Qwen2.5/3 and SmolLM2 ship it, or GPT-2's vocab.json + merges.txt. The ids are\n"
    "Hugging Face's encode(text, add_special_tokens=False): special tokens written in the text\n"
    "(<|endoftext|>, <|im_start|>, <|eot_id|>...) become their ids unless --no-special, and no\n"
    "BOS is added unless --bos. With --chat, FILE holds a conversation, a JSON array of\n"
    "{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": ...} (or an object with\n"
    "\"messages\" and other template variables), rendered by the model's own chat template\n"
    "(tokenizer_config.json \"chat_template\") as transformers' apply_chat_template does.\n",
    tokenize_opt_table, NULL);

/* The options of tokenize / detokenize: --model DIR, no operands. */
static int parse_model_opts(const cli_opts_t *t, int argc, char **argv, tok_args_t *a) {
    int rc = cli_opts_parse(t, argc, argv, a);
    if (rc != CLI_OPTS_GO) return rc;
    if (optind < argc) {
        fprintf(stderr, "rlhf %s: unexpected argument '%s'\n", t->cmd, argv[optind]);
        return 2;
    }
    if (!a->model) {
        fprintf(stderr, "rlhf %s: --model is required\n", t->cmd);
        return 2;
    }
    return CLI_OPTS_GO;
}

/* ---- tokenize -------------------------------------------------------------------------- */

/* The text to encode: stdin, or with --chat the rendered conversation. */
static int tokenize_input(const tok_t *t, const tok_args_t *a, char **text, size_t *len) {
    if (!a->chat) return read_stdin(text, len);
    char *msgs = NULL;
    size_t mlen = 0;
    int rc = strcmp(a->chat, "-") ? fs_read_all(a->chat, &msgs, &mlen) : read_stdin(&msgs, &mlen);
    if (rc < 0) return rc;
    rc = tok_chat_render(t, msgs, mlen, a->gen_prompt, text, len);
    free(msgs);
    return rc < 0 ? rl_fail_ctx(rc, "%s", a->chat) : rc;
}

int cmd_tokenize(int argc, char **argv) {
    const char *cmd = "tokenize";
    tok_args_t a = {0};
    int rc = parse_model_opts(&tokenize_opts, argc, argv, &a);
    if (rc != CLI_OPTS_GO) return rc;
    if ((a.gen_prompt || a.render) && !a.chat) {
        fprintf(stderr, "rlhf %s: --generation-prompt and --render need --chat\n", cmd);
        return 2;
    }
    const char *model = a.model;
    int special = !a.no_special;
    tok_t *t = tok_load(model);
    if (!t) return cli_fail(cmd, "loading the tokenizer", RL_EFORMAT);
    char *text = NULL, *out = NULL;
    size_t len = 0, n = 0;
    int *ids = NULL;
    if ((rc = tokenize_input(t, &a, &text, &len)) < 0) {
        tok_destroy(&t);
        return cli_fail(cmd, a.chat ? "rendering the conversation" : "reading", rc);
    }
    if (a.render) {
        tok_destroy(&t);
        rc = write_stdout(cmd, text, len);
        free(text);
        return rc;
    }
    rc = tok_encode(t, text, len, special, &ids, &n);
    int bos = a.bos ? tok_bos(t) : -1;
    free(text);
    tok_destroy(&t);
    if (rc < 0) return cli_fail(cmd, "encoding", rc);
    /* at most 11 characters per id plus the newline, and the BOS */
    if (!(out = malloc(n * 12 + 14))) {
        free(ids);
        return cli_fail(cmd, "formatting", rl_fail(RL_ENOMEM, "out of memory"));
    }
    size_t at = 0;
    for (size_t i = 0; i < n + (bos >= 0); i++) {
        char digits[12];
        int k = 0;
        unsigned v = (unsigned)(bos >= 0 ? (i ? ids[i - 1] : bos) : ids[i]);
        do {
            digits[k++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        if (i) out[at++] = ' ';
        while (k) out[at++] = digits[--k];
    }
    out[at++] = '\n';
    free(ids);
    rc = write_stdout(cmd, out, at);
    free(out);
    return rc;
}

/* ---- detokenize ------------------------------------------------------------------------ */

static const cli_opt_t detokenize_opt_table[] = {
    CLI_OPT_STR(tok_args_t, model, "model", NULL, "DIR", "the tokenizer's model directory",
                CLI_OPT_REQUIRED),
};

static const cli_opts_t detokenize_opts = CLI_OPTS(
    "detokenize", "rlhf detokenize --model DIR < IDS",
    "Reads whitespace-separated token ids from stdin and writes the exact bytes they decode to\n"
    "(no newline is added). An id that is not a number or not in the vocabulary is an error\n"
    "naming it.\n",
    detokenize_opt_table, NULL);

int cmd_detokenize(int argc, char **argv) {
    const char *cmd = "detokenize";
    tok_args_t a = {0};
    int rc = parse_model_opts(&detokenize_opts, argc, argv, &a);
    if (rc != CLI_OPTS_GO) return rc;
    const char *model = a.model;
    tok_t *t = tok_load(model);
    if (!t) return cli_fail(cmd, "loading the tokenizer", RL_EFORMAT);
    char *text = NULL, *out = NULL;
    size_t len = 0, n = 0;
    int *ids = NULL;
    if ((rc = read_stdin(&text, &len)) < 0) goto done;
    if ((rc = data_parse_tokens(text, len, "stdin", 0, &ids, &n)) < 0) goto done;
    size_t olen = 0;
    if ((rc = tok_decode(t, ids, n, &out, &olen)) < 0) goto done;
    tok_destroy(&t);
    free(text);
    free(ids);
    rc = write_stdout(cmd, out, olen);
    free(out);
    return rc;
done:
    tok_destroy(&t);
    free(text);
    free(ids);
    return cli_fail(cmd, "decoding", rc);
}

/* ---- tokenizer-train ------------------------------------------------------------------- */

typedef struct {
    const char *corpus, *out;
    int vocab;
} toktrain_args_t;

static const cli_opt_t toktrain_opt_table[] = {
    CLI_OPT_STR(toktrain_args_t, corpus, "corpus", NULL, "FILE", "the text to learn from",
                CLI_OPT_REQUIRED),
    CLI_OPT_INT(toktrain_args_t, vocab, "vocab-size", 257, 1 << 24, NULL, "N",
                "BPE vocabulary size (required)"),
    CLI_OPT_STR(toktrain_args_t, out, "out", NULL, "DIR", "where to write vocab.json, merges.txt",
                CLI_OPT_REQUIRED),
};

const cli_opts_t cli_tokenizer_train_opts = CLI_OPTS(
    "tokenizer-train", "rlhf tokenizer-train --corpus FILE --vocab-size N --out DIR",
    "Learns a GPT-2 style byte-level BPE vocabulary of N ids from FILE: ids 0-255 are the bytes\n"
    "(in GPT-2's order), then one id per learned merge, then <|endoftext|> as id N-1. Pairs are\n"
    "merged most frequent first, ties broken by byte order, so the result is deterministic.\n"
    "A literal <|endoftext|> in FILE separates documents and is not learned from. Writes\n"
    "DIR/vocab.json and DIR/merges.txt (atomically) and prints a JSON summary.\n",
    toktrain_opt_table, NULL);

int cmd_tokenizer_train(int argc, char **argv) {
    const char *cmd = "tokenizer-train";
    toktrain_args_t a = {0};
    int prc = cli_opts_parse(&cli_tokenizer_train_opts, argc, argv, &a);
    if (prc != CLI_OPTS_GO) return prc;
    const char *corpus = a.corpus, *out = a.out;
    int vocab = a.vocab;
    if (!corpus || !vocab || !out) {
        fprintf(stderr, "rlhf %s: --corpus, --vocab-size and --out are required\n", cmd);
        return 2;
    }
    char *text = NULL;
    size_t len = 0;
    int rc = fs_read_all(corpus, &text, &len);
    if (rc < 0) return cli_fail(cmd, "reading the corpus", rc);
    double t0 = cli_now_ms();
    rc = tok_train(text, len, vocab, out);
    double ms = cli_now_ms() - t0;
    free(text);
    if (rc < 0) return cli_fail(cmd, "training", rc);
    return cli_print_json(json_pack("{s:s,s:i,s:I,s:f}", "out", out, "vocab_size", vocab,
                                    "corpus_bytes", (json_int_t)len, "seconds", ms / 1e3));
}
