/*
 * cmd_eval.c - `rlhf eval-policy`: a policy against a baseline on held-out prompts, judged by the
 * embedded task's gold judge (the alignment criteria without noise; never used for training),
 * by the reward model (the proxy PPO optimised), and by the KL between the two policies.
 *
 *   rlhf eval-policy --policy DIR --baseline DIR --prompts FILE [--rm DIR] [--samples K]
 *                    [--max-new N] [--temperature T] [--seed S] [--show N] [--threads N]
 *
 * For every prompt both policies sample K completions with the same seeds; sample i of the
 * policy is compared with sample i of the baseline by the gold judge (a win counts 1, a tie
 * 1/2): win_rate_samples is the mean over all of them; win_rate compares each prompt's mean gold
 * score over its K samples, prompt by prompt. KL(policy || baseline) is estimated per
 * completion as the sum over its tokens of log p_policy - log p_baseline (the k1 estimator,
 * unbiased for samples of the policy), averaged. Prints one JSON object: prompts, samples,
 * gold_policy, gold_baseline, win_rate, rm_policy, rm_baseline (with --rm), kl, kl_per_token,
 * the criteria means of each, length and end-of-text rate, and --show N example completions of
 * both side by side.
 */
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "base/err.h"
#include "nn/gen.h"
#include "nn/hf.h"
#include "base/jsonl.h"
#include "align/ppo.h"
#include "align/rm.h"
#include "align/task.h"
#include "nn/tok.h"

typedef struct {
    char **text;
    int n, cap;
    const tok_t *tok; /* the policy's: renders "messages" */
} plist_t;

static int add_prompt(void *ctx, json_t *o, const char *where) {
    plist_t *l = ctx;
    char *t;
    size_t len;
    int rc = cli_prompt_text(l->tok, o, where, &t, &len);
    if (rc < 0) return rc;
    if (l->n == l->cap) {
        int nc = l->cap ? 2 * l->cap : 64;
        char **nt = realloc(l->text, (size_t)nc * sizeof *nt);
        if (!nt) {
            free(t);
            return rl_fail(RL_ENOMEM, "out of memory");
        }
        l->text = nt, l->cap = nc;
    }
    l->text[l->n++] = t;
    return 0;
}

typedef struct {
    gen_seq_t *seq; /* n_prompts * K */
    char **text;
    double *gold, *crit, *rm, *lp_self; /* crit: TASK_NCRIT per completion */
} side_t;

/* Samples K completions per prompt from m; decodes and judges them. */
static int sample_side(gpt_t *m, tok_t *tok, int **ids, int *lens, int np, int K,
                       const gen_opts_t *o, side_t *s, char **prompts) {
    int n = np * K, rc = 0;
    const int **pp = malloc((size_t)n * sizeof *pp);
    int *pl = malloc((size_t)n * sizeof *pl);
    uint64_t *sid = malloc((size_t)n * sizeof *sid);
    s->seq = calloc((size_t)n, sizeof *s->seq);
    s->text = calloc((size_t)n, sizeof *s->text);
    s->gold = calloc((size_t)n, sizeof *s->gold);
    s->crit = calloc((size_t)n * TASK_NCRIT, sizeof *s->crit);
    s->rm = calloc((size_t)n, sizeof *s->rm);
    s->lp_self = calloc((size_t)n, sizeof *s->lp_self);
    if (!pp || !pl || !sid || !s->seq || !s->text || !s->gold || !s->crit || !s->rm || !s->lp_self)
        rc = rl_fail(RL_ENOMEM, "out of memory");
    for (int i = 0; rc == 0 && i < n; i++) {
        pp[i] = ids[i / K];
        pl[i] = lens[i / K];
        sid[i] = (uint64_t)i;
    }
    /* in batches of 64 sequences: the KV cache of all of them at once is not needed; the
     * weights are packed once for all batches */
    gen_opts_t ob = *o;
    gen_packed_t *pk = NULL;
    if (rc == 0 && (rc = gen_pack(m, &pk)) == 0) ob.packed = pk;
    for (int b = 0; rc == 0 && b < n; b += 64) {
        int nb = n - b < 64 ? n - b : 64;
        rc = gen_generate(m, pp + b, pl + b, nb, sid + b, &ob, s->seq + b);
    }
    gen_pack_free(&pk);
    for (int i = 0; rc == 0 && i < n; i++) {
        gen_seq_t *q = &s->seq[i];
        size_t nd = q->n && q->finish == GEN_FINISH_EOT ? (size_t)q->n - 1 : (size_t)q->n, tl;
        char *t = NULL;
        if ((rc = tok_decode(tok, q->tokens, nd, &t, &tl)) < 0) break;
        s->text[i] = tok_utf8_lossy(t, tl, &tl);
        free(t);
        if (!s->text[i]) {
            rc = rl_fail(RL_ENOMEM, "out of memory");
            break;
        }
        float sc[TASK_NCRIT];
        task_score(prompts[i / K], s->text[i], sc);
        for (int c = 0; c < TASK_NCRIT; c++) s->crit[(size_t)i * TASK_NCRIT + c] = sc[c];
        s->gold[i] = task_gold(sc);
        for (int k = 0; k < q->n; k++) s->lp_self[i] += q->logprobs_model[k];
    }
    free(pp);
    free(pl);
    free(sid);
    return rc;
}

/* log p of each side's completions under model m, summed per completion. */
static int score_under(gpt_t *m, int **ids, int *lens, int K, const side_t *s, int n,
                       int vocab_limit, double *out) {
    ppo_seq_t *seqs = calloc((size_t)n, sizeof *seqs);
    long total = 0;
    for (int i = 0; i < n; i++) total += s->seq[i].n;
    float *lp = malloc((size_t)(total ? total : 1) * sizeof *lp);
    int rc = seqs && lp ? 0 : rl_fail(RL_ENOMEM, "out of memory");
    int k = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        if (s->seq[i].n < 1) continue; /* nothing generated: no tokens to score */
        seqs[k].prompt = ids[i / K];
        seqs[k].prompt_len = lens[i / K];
        seqs[k].completion = s->seq[i].tokens;
        seqs[k].completion_len = s->seq[i].n;
        k++;
    }
    if (rc == 0) rc = ppo_seq_logprobs(m, seqs, k, 16, vocab_limit, lp);
    long off = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        out[i] = 0;
        for (int t = 0; t < s->seq[i].n; t++) out[i] += lp[off + t];
        off += s->seq[i].n;
    }
    free(seqs);
    free(lp);
    return rc;
}

static void side_free(side_t *s, int n) {
    for (int i = 0; s->seq && i < n; i++) gen_seq_free(&s->seq[i]);
    for (int i = 0; s->text && i < n; i++) free(s->text[i]);
    free(s->seq), free(s->text), free(s->gold), free(s->crit), free(s->rm), free(s->lp_self);
}

typedef struct {
    const char *policy, *base, *prompts, *rmd;
    int K, max_new, show, threads;
    float temp;
    long seed;
} evalp_args_t;

static const cli_opt_t evalp_opt_table[] = {
    CLI_OPT_STR(evalp_args_t, policy, "policy", NULL, "DIR", "the policy", CLI_OPT_REQUIRED),
    CLI_OPT_STR(evalp_args_t, base, "baseline", NULL, "DIR", "the baseline", CLI_OPT_REQUIRED),
    CLI_OPT_STR(evalp_args_t, prompts, "prompts", NULL, "FILE", "held-out prompts",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(evalp_args_t, rmd, "rm", NULL, "DIR", "also the reward model's score", 0),
    CLI_OPT_INT(evalp_args_t, K, "samples", 1, 256, "4", "K", "completions per prompt and policy"),
    CLI_OPT_INT(evalp_args_t, max_new, "max-new", 1, 4096, "24", "N",
                "tokens per completion at most"),
    CLI_OPT_FLOAT(evalp_args_t, temp, "temperature", 0, 100, "1", "T", "sampling temperature"),
    CLI_OPT_LONG(evalp_args_t, seed, "seed", 0, LONG_MAX, "1", "S", "seed"),
    CLI_OPT_INT(evalp_args_t, show, "show", 0, 1000, "3", "N", "examples shown"),
    CLI_OPT_INT(evalp_args_t, threads, "threads", 1, 256, "2", "N", "threads"),
};

const cli_opts_t cli_eval_policy_opts = CLI_OPTS(
    "eval-policy",
    "rlhf eval-policy --policy DIR --baseline DIR --prompts FILE [--rm DIR]\n"
    "                        [--samples K] [--max-new N] [--temperature T] [--seed S]\n"
    "                        [--show N] [--threads N]",
    "Compares a policy with a baseline on held-out prompts (JSONL {\"prompt\"}): gold score and\n"
    "gold win rate (the embedded task's criteria without noise; ties count half), reward-model\n"
    "score with --rm, and KL(policy || baseline) per completion.\n",
    evalp_opt_table, NULL);

int cmd_eval_policy(int argc, char **argv) {
    evalp_args_t args = {0};
    int c = cli_opts_parse(&cli_eval_policy_opts, argc, argv, &args);
    if (c != CLI_OPTS_GO) return c;
    const char *policy = args.policy, *base = args.base, *prompts = args.prompts, *rmd = args.rmd;
    int K = args.K, max_new = args.max_new, show = args.show, threads = args.threads;
    float temp = args.temp;
    long seed = args.seed;
    if (!policy || !base || !prompts) {
        fprintf(stderr, "rlhf eval-policy: --policy, --baseline and --prompts are required\n");
        return cli_usage_error("eval-policy");
    }
    omp_set_num_threads(threads);
    plist_t pl = {0};
    int ret = 1, rc, np = 0;
    gpt_t *mp = NULL, *mb = NULL, *mr = NULL;
    tok_t *tok = NULL;
    int **ids = NULL, *lens = NULL;
    side_t sp = {0}, sb = {0};
    if (!(mp = hf_load(policy)) || !(mb = hf_load(base)) || !(tok = tok_load(policy))) {
        cli_fail("eval-policy", "models", RL_EINVAL);
        goto done;
    }
    pl.tok = tok;
    long n = jsonl_read(prompts, add_prompt, &pl);
    if (n < 0) {
        cli_fail("eval-policy", "prompts", (int)n);
        goto done;
    }
    np = pl.n;
    if (rmd && !(mr = hf_load(rmd))) {
        cli_fail("eval-policy", "reward model", RL_EINVAL);
        goto done;
    }
    ids = calloc((size_t)np, sizeof *ids);
    lens = calloc((size_t)np, sizeof *lens);
    for (int i = 0; ids && lens && i < np; i++) {
        size_t len;
        if ((rc = tok_encode(tok, pl.text[i], strlen(pl.text[i]), tok_text_special(tok), &ids[i],
                             &len)) < 0) {
            cli_fail("eval-policy", "tokenizing a prompt", rc);
            goto done;
        }
        if ((int)len >= mp->cfg.n_positions || len < 1) {
            fprintf(stderr, "rlhf eval-policy: %s: prompt %d is %zu tokens (context %d)\n", prompts,
                    i + 1, len, mp->cfg.n_positions);
            goto done;
        }
        lens[i] = (int)len;
    }
    gen_opts_t o = {.max_new_tokens = max_new,
                    .sampling = {temp, 0, 1.0f},
                    .seed = (uint64_t)seed,
                    .eot = tok_eot(tok),
                    .vocab_limit = tok_vocab_size(tok)};
    int ns = np * K;
    if ((rc = sample_side(mp, tok, ids, lens, np, K, &o, &sp, pl.text)) < 0 ||
        (rc = sample_side(mb, tok, ids, lens, np, K, &o, &sb, pl.text)) < 0) {
        cli_fail("eval-policy", "sampling", rc);
        goto done;
    }
    double *lp_base = calloc((size_t)ns, sizeof *lp_base);
    if (!lp_base || (rc = score_under(mb, ids, lens, K, &sp, ns, o.vocab_limit, lp_base)) < 0) {
        free(lp_base);
        cli_fail("eval-policy", "KL", rc < 0 ? rc : RL_ENOMEM);
        goto done;
    }
    double kl = 0, toks = 0, gp = 0, gb = 0, wins = 0, rp = 0, rb = 0, lenp = 0, lenb = 0;
    double eotp = 0, eotb = 0, crp[TASK_NCRIT] = {0}, crb[TASK_NCRIT] = {0};
    for (int i = 0; i < ns; i++) {
        kl += sp.lp_self[i] - lp_base[i];
        toks += sp.seq[i].n;
        gp += sp.gold[i], gb += sb.gold[i];
        wins += sp.gold[i] > sb.gold[i] ? 1 : sp.gold[i] == sb.gold[i] ? 0.5 : 0;
        lenp += sp.seq[i].n, lenb += sb.seq[i].n;
        eotp += sp.seq[i].finish == GEN_FINISH_EOT, eotb += sb.seq[i].finish == GEN_FINISH_EOT;
        for (int k = 0; k < TASK_NCRIT; k++)
            crp[k] += sp.crit[(size_t)i * TASK_NCRIT + k],
                crb[k] += sb.crit[(size_t)i * TASK_NCRIT + k];
    }
    free(lp_base);
    /* per prompt: the mean gold of its K samples against the baseline's */
    double pwins = 0;
    for (int p = 0; p < np; p++) {
        double a = 0, b = 0;
        for (int i = p * K; i < (p + 1) * K; i++) a += sp.gold[i], b += sb.gold[i];
        pwins += fabs(a - b) < 1e-9 * K ? 0.5 : a > b ? 1 : 0;
    }
    if (mr) {
        int pad = tok_eot(tok) >= 0 ? tok_eot(tok) : 0;
        for (int side = 0; side < 2; side++) {
            side_t *s = side ? &sb : &sp;
            int **seqs = calloc((size_t)ns, sizeof *seqs), *sl = calloc((size_t)ns, sizeof *sl);
            float *r = calloc((size_t)ns, sizeof *r);
            rc = seqs && sl && r ? 0 : rl_fail(RL_ENOMEM, "out of memory");
            /* the reward model reads prompt + completion + end-of-text, as it was trained */
            for (int i = 0; rc == 0 && i < ns; i++)
                rc = rm_join(ids[i / K], lens[i / K], s->seq[i].tokens, s->seq[i].n, tok_eot(tok),
                             mr->cfg.n_positions, &seqs[i], &sl[i]);
            if (rc == 0) rc = rm_rewards(mr, (const int *const *)seqs, sl, ns, 16, pad, r);
            for (int i = 0; rc == 0 && i < ns; i++) (side ? &rb : &rp)[0] += r[i];
            for (int i = 0; seqs && i < ns; i++) free(seqs[i]);
            free(seqs), free(sl), free(r);
            if (rc < 0) {
                cli_fail("eval-policy", "reward model", rc);
                goto done;
            }
        }
    }
    json_t *cp = json_object(), *cb = json_object(), *ex = json_array();
    for (int k = 0; k < TASK_NCRIT; k++) {
        json_object_set_new(cp, task_criteria_names[k], json_real(crp[k] / ns));
        json_object_set_new(cb, task_criteria_names[k], json_real(crb[k] / ns));
    }
    for (int i = 0; i < show && i < np; i++)
        json_array_append_new(ex,
                              json_pack("{s:s, s:s, s:f, s:s, s:f}", "prompt", pl.text[i], "policy",
                                        sp.text[i * K], "policy_gold", sp.gold[i * K], "baseline",
                                        sb.text[i * K], "baseline_gold", sb.gold[i * K]));
    json_t *outj =
        json_pack("{s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:o, s:o, s:f, s:f, s:f, s:f, s:o}",
                  "prompts", np, "samples", K, "gold_policy", gp / ns, "gold_baseline", gb / ns,
                  "win_rate", pwins / np, "win_rate_samples", wins / ns, "kl", kl / ns,
                  "kl_per_token", toks > 0 ? kl / toks : 0.0, "criteria_policy", cp,
                  "criteria_baseline", cb, "length_policy", lenp / ns, "length_baseline", lenb / ns,
                  "eot_rate_policy", eotp / ns, "eot_rate_baseline", eotb / ns, "examples", ex);
    if (mr && outj) {
        json_object_set_new(outj, "rm_policy", json_real(rp / ns));
        json_object_set_new(outj, "rm_baseline", json_real(rb / ns));
    }
    ret = cli_print_json(outj);
done:
    side_free(&sp, np * K);
    side_free(&sb, np * K);
    for (int i = 0; ids && i < np; i++) free(ids[i]);
    free(ids);
    free(lens);
    for (int i = 0; i < pl.n; i++) free(pl.text[i]);
    free(pl.text);
    gpt_destroy(&mp);
    gpt_destroy(&mb);
    gpt_destroy(&mr);
    tok_destroy(&tok);
    return ret;
}
