/*
 * worker_score.c - the SCORE handler of reward workers: for each <prompt, completion> of a job,
 * the reward model's score at the last token and the frozen reference model's logprob of every
 * completion token (the KL penalty's other half).
 *
 * The reward model sees prompt + completion with the end-of-text id appended when the completion
 * does not already end with it (how the reward model was trained; rm_join). A sequence longer
 * than its context is cut from the LEFT on purpose: the last n_ctx tokens are kept, the
 * end-of-text id and the completion's end included, since the score is read at the last token
 * and a reward model trained on whole answers has never scored one without its end; the
 * prompt's beginning is what is lost. It is read through rm_rewards(), as train-rm and eval-rm
 * read it. The reference logprobs come from ppo_seq_logprobs_temp(), the learner's own
 * function, under logits / ScoreSpec.temperature (the rollouts' sampling temperature). Both
 * models are loaded once and kept while their directories stay the same. The output is a pure
 * function of the spec and the weights.
 *
 * With ScoreSpec.gold, the embedded task's gold judge (task.h) of each item too: the completion
 * decoded with rm_dir's tokenizer (ref_dir's without rm_dir), a final end-of-text id dropped, and
 * judged against prompt_texts[i]. ScoreOutput.gold carries task_gold() of each item (a double,
 * so the master's sum of them is exactly what the PPO metrics always summed). An item whose
 * completion does not decode scores 0.
 *
 * With ScoreSpec.program, a reward program (align/rprog.h) scores each item too: the request
 * carries prompt_texts[i], the completion decoded as for the gold judge (invalid UTF-8 replaced)
 * and the members of references[i] (the prompt record's reference fields). The program is
 * started with the first such job and kept while jobs name the same command and time limit. An
 * item it fails on (timeout, crash, malformed line) gets program_fallback, its error in
 * ScoreOutput.program_errors (and this worker's log), and the next item runs a fresh program:
 * a job is never failed by its program. ScoreOutput.scores is then the weighted sum of the
 * model's part and the program's part, both also returned as they are.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "nn/gpt.h"
#include "nn/hf.h"
#include "nn/tok.h"
#include "align/ppo.h"
#include "align/rm.h"
#include "align/rprog.h"
#include "align/task.h"
#include "rlhf.pb-c.h"
#include "worker.h"

typedef struct {
    gpt_t *m;
    char dir[4096];
} slot_t;

/* A reward worker's state between jobs: both models, kept while jobs name the same
 * directories. */
struct score_state {
    slot_t slots[2]; /* 0: reward model, 1: reference */
    tok_t *tok;      /* the gold judge's tokenizer, and the directory it came from */
    char tok_dir[4096];
    rprog_t *prog; /* the reward program, while jobs name the same */
};

score_state_t *score_state_new(void) {
    score_state_t *s = calloc(1, sizeof *s);
    if (!s) rl_fail(RL_ENOMEM, "score state: out of memory");
    return s;
}

void score_state_destroy(score_state_t **sp) {
    if (!sp || !*sp) return;
    for (int i = 0; i < 2; i++) gpt_destroy(&(*sp)->slots[i].m);
    tok_destroy(&(*sp)->tok);
    rprog_destroy(&(*sp)->prog);
    free(*sp);
    *sp = NULL;
}

static gpt_t *slot_get(score_state_t *st, int i, const char *dir) {
    slot_t *s = &st->slots[i];
    if (s->m && !strcmp(s->dir, dir)) return s->m;
    gpt_destroy(&s->m);
    s->dir[0] = 0;
    if (strlen(dir) >= sizeof s->dir) {
        rl_fail(RL_EINVAL, "model directory name too long");
        return NULL;
    }
    s->m = hf_load(dir);
    if (s->m) snprintf(s->dir, sizeof s->dir, "%s", dir);
    return s->m;
}

static int check_tokens(const Rlhf__ScoreItem *it, int V, size_t k) {
    for (size_t i = 0; i < it->n_prompt + it->n_completion; i++) {
        int t = i < it->n_prompt ? it->prompt[i] : it->completion[i - it->n_prompt];
        if (t < 0 || t >= V)
            return rl_fail(RL_EINVAL, "score: item %zu: token %d outside the vocabulary %d", k, t,
                           V);
    }
    if (it->n_prompt < 1) return rl_fail(RL_EINVAL, "score: item %zu: empty prompt", k);
    return 0;
}

/* The reward model's score of every item: at the last token of prompt + completion + end-of-text
 * (rm_join), as the reward model was trained; rm_rewards pads micro-batches of 16. */
static int run_rm(gpt_t *m, const Rlhf__ScoreSpec *sp, float *scores) {
    size_t n = sp->n_items;
    int **seqs = calloc(n ? n : 1, sizeof *seqs), *lens = calloc(n ? n : 1, sizeof *lens);
    int rc = seqs && lens ? 0 : rl_fail(RL_ENOMEM, "score: out of memory");
    for (size_t k = 0; rc == 0 && k < n; k++) {
        const Rlhf__ScoreItem *it = sp->items[k];
        /* protobuf-c's repeated int32 is int32_t: the same as int on every target we build */
        rc = rm_join((const int *)it->prompt, (int)it->n_prompt, (const int *)it->completion,
                     (int)it->n_completion, sp->eot, m->cfg.n_positions, &seqs[k], &lens[k]);
    }
    if (rc == 0) rc = rm_rewards(m, (const int *const *)seqs, lens, (int)n, 16, 0, scores);
    for (size_t k = 0; seqs && k < n; k++) free(seqs[k]);
    free(seqs);
    free(lens);
    return rc < 0 ? rl_fail_ctx(rc, "score: reward model") : 0;
}

/* The reference model's logprob of every completion token (ppo.h computes them as the learner
 * does, so the KL penalty compares like with like). */
static int run_ref(gpt_t *m, const Rlhf__ScoreSpec *sp, Rlhf__TokenLogprobs *lps) {
    size_t n = sp->n_items, total = 0;
    ppo_seq_t *seqs = calloc(n ? n : 1, sizeof *seqs);
    if (!seqs) return rl_fail(RL_ENOMEM, "score: out of memory");
    int k = 0, rc = 0;
    for (size_t i = 0; i < n; i++) {
        const Rlhf__ScoreItem *it = sp->items[i];
        if (!it->n_completion) continue; /* nothing to score: no logprobs */
        seqs[k].prompt = (const int *)it->prompt;
        seqs[k].prompt_len = (int)it->n_prompt;
        seqs[k].completion = (const int *)it->completion;
        seqs[k].completion_len = (int)it->n_completion;
        total += it->n_completion;
        k++;
    }
    float *lp = malloc((total ? total : 1) * sizeof *lp);
    int V = m->cfg.vocab_size;
    int vl = sp->vocab_limit > 0 && (int)sp->vocab_limit < V ? (int)sp->vocab_limit : 0;
    float T = sp->temperature > 0 ? sp->temperature : 1.0f; /* the rollouts' distribution */
    rc =
        lp ? ppo_seq_logprobs_temp(m, seqs, k, 16, vl, T, lp) : rl_fail(RL_ENOMEM, "out of memory");
    size_t off = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t c = sp->items[i]->n_completion;
        lps[i].n_logprobs = c;
        lps[i].logprobs = malloc((c ? c : 1) * sizeof(float));
        if (!lps[i].logprobs) {
            rc = rl_fail(RL_ENOMEM, "score: out of memory");
            break;
        }
        memcpy(lps[i].logprobs, lp + off, c * sizeof(float));
        off += c;
    }
    free(lp);
    free(seqs);
    return rc < 0 ? rl_fail_ctx(rc, "score: reference") : 0;
}

static int run_model(score_state_t *st, const worker_job_t *job, const char *dir,
                     const Rlhf__ScoreSpec *sp, int reward, float *scores,
                     Rlhf__TokenLogprobs *lps) {
    gpt_t *m = slot_get(st, reward ? 0 : 1, dir);
    if (!m) return rl_fail_ctx(RL_EINVAL, "score: %s", reward ? "reward model" : "reference");
    if (reward && !m->cfg.scalar_head)
        return rl_fail(RL_EINVAL, "score: %s has no scalar head: not a reward model", dir);
    for (size_t k = 0; k < sp->n_items; k++) {
        int rc = check_tokens(sp->items[k], m->cfg.vocab_size, k);
        if (rc < 0) return rc;
    }
    if (atomic_load(job->cancel)) return rl_fail(RL_EIO, "score: cancelled");
    return reward ? run_rm(m, sp, scores) : run_ref(m, sp, lps);
}

/* The tokenizer that decodes completions for the gold judge and the program: rm_dir's, else
 * ref_dir's, kept while jobs name the same directory. NULL on failure (reason set). */
static tok_t *score_tok(score_state_t *st, const Rlhf__ScoreSpec *sp, const char *what) {
    const char *dir = sp->rm_dir && sp->rm_dir[0] ? sp->rm_dir : sp->ref_dir;
    if (!dir || !dir[0]) {
        rl_fail(RL_EINVAL, "score: %s needs rm_dir or ref_dir", what);
        return NULL;
    }
    if (sp->n_prompt_texts != sp->n_items) {
        rl_fail(RL_EINVAL, "score: %s: %zu prompt texts for %zu items", what, sp->n_prompt_texts,
                sp->n_items);
        return NULL;
    }
    if (!st->tok || strcmp(st->tok_dir, dir)) {
        tok_destroy(&st->tok);
        st->tok_dir[0] = 0;
        if (strlen(dir) >= sizeof st->tok_dir) {
            rl_fail(RL_EINVAL, "score: %s: tokenizer directory name too long", what);
            return NULL;
        }
        if (!(st->tok = tok_load(dir))) {
            rl_fail_ctx(RL_EINVAL, "score: %s: tokenizer", what);
            return NULL;
        }
        snprintf(st->tok_dir, sizeof st->tok_dir, "%s", dir);
    }
    return st->tok;
}

/* An item's completion as text (malloc'ed, *len bytes), a final end-of-text id dropped; NULL
 * when it does not decode. */
static char *completion_text(tok_t *tok, const Rlhf__ScoreItem *it, int eot, size_t *len) {
    size_t n = it->n_completion;
    if (n && it->completion[n - 1] == eot) n--;
    char *text = NULL;
    if (tok_decode(tok, (const int *)it->completion, n, &text, len) < 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* The gold judge's score of every item into gold (n_items). */
static int run_gold(score_state_t *st, const Rlhf__ScoreSpec *sp, double *gold) {
    tok_t *tok = score_tok(st, sp, "gold");
    if (!tok) return rl_errcode();
    for (size_t k = 0; k < sp->n_items; k++) {
        size_t tl;
        char *text = completion_text(tok, sp->items[k], sp->eot, &tl);
        float sc[TASK_NCRIT];
        gold[k] = 0;
        if (text) {
            task_score(sp->prompt_texts[k], text, sc);
            gold[k] = task_gold(sc);
        }
        free(text);
    }
    return 0;
}

/* The per-item errors of a job's program, for ScoreOutput. */
typedef struct {
    char **msgs;
    size_t n;
    uint32_t timeouts;
} prog_errs_t;

static void prog_errs_free(prog_errs_t *e) {
    for (size_t i = 0; i < e->n; i++) free(e->msgs[i]);
    free(e->msgs);
}

/* The program's score of every item into ps (n_items); an item it fails on gets the fallback
 * and an error in errs. Returns 0, or RL_E* when the runner itself cannot run. */
static int run_program(score_state_t *st, const worker_job_t *job, const Rlhf__ScoreSpec *sp,
                       double *ps, prog_errs_t *errs) {
    tok_t *tok = score_tok(st, sp, "program");
    if (!tok) return rl_errcode();
    if (sp->n_references && sp->n_references != sp->n_items)
        return rl_fail(RL_EINVAL, "score: program: %zu references for %zu items", sp->n_references,
                       sp->n_items);
    int tmo = sp->program_timeout_ms ? (int)sp->program_timeout_ms : 10000;
    /* `rlhf ...` (rlhf gold-judge) is the rlhf binary next to this worker's: the program's
     * PATH is clean, and a build directory is on no PATH */
    char cmd[PATH_MAX + 4096];
    const char *prog = sp->program;
    if (!strncmp(prog, "rlhf", 4) && (prog[4] == ' ' || !prog[4])) {
        char self[PATH_MAX];
        ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
        self[sl > 0 ? sl : 0] = 0;
        char *slash = strrchr(self, '/');
        if (slash && !strchr(self, '\'') && strlen(prog) < 4000) {
            *slash = 0;
            snprintf(cmd, sizeof cmd, "'%s/rlhf'%s", self, prog + 4);
            prog = cmd;
        }
    }
    if (!rprog_same(st->prog, prog, tmo)) {
        rprog_destroy(&st->prog);
        /* RLHF_REWARD_SANDBOX=rlimits: where bwrap is installed but cannot make namespaces (an
         * unprivileged container), the fallback sandbox instead of every item failing */
        const char *sb = getenv("RLHF_REWARD_SANDBOX");
        rprog_opts_t o = {.cmd = prog, .timeout_ms = tmo, .no_bwrap = sb && !strcmp(sb, "rlimits")};
        if (!(st->prog = rprog_new(&o))) return rl_fail_ctx(RL_EINVAL, "score: program");
        fprintf(stderr, "rlhf-worker: reward program `%s` (sandbox: %s, %d ms per item)\n", prog,
                rprog_sandbox(st->prog), tmo);
    }
    errs->msgs = calloc(sp->n_items ? sp->n_items : 1, sizeof *errs->msgs);
    if (!errs->msgs) return rl_fail(RL_ENOMEM, "score: out of memory");
    for (size_t k = 0; k < sp->n_items; k++) {
        if (atomic_load(job->cancel)) return rl_fail(RL_EIO, "score: cancelled");
        size_t tl;
        char *text = completion_text(tok, sp->items[k], sp->eot, &tl), why[1024];
        char *req = rprog_request(sp->prompt_texts[k], text ? text : "", text ? tl : 0,
                                  sp->n_references ? sp->references[k] : NULL);
        free(text);
        if (!req) return rl_fail_ctx(rl_errcode(), "score: item %zu", k);
        int rc = rprog_score(st->prog, req, &ps[k], why, sizeof why);
        free(req);
        if (rc < 0) return rl_fail_ctx(rc, "score: item %zu", k);
        if (rc == RPROG_OK) continue;
        ps[k] = sp->program_fallback;
        errs->timeouts += rc == RPROG_TIMEOUT;
        char msg[1200];
        snprintf(msg, sizeof msg, "item %zu: %s: %s", k, rprog_status_names[rc], why);
        fprintf(stderr, "rlhf-worker: reward program: %s\n", msg);
        if (!(errs->msgs[errs->n++] = strdup(msg))) return rl_fail(RL_ENOMEM, "out of memory");
    }
    return 0;
}

int worker_score(score_state_t *st, const worker_job_t *job, const uint8_t *payload, size_t len,
                 uint8_t **out, size_t *out_len) {
    Rlhf__ScoreSpec *sp = rlhf__score_spec__unpack(NULL, len, payload);
    if (!sp) return rl_fail(RL_EFORMAT, "score: malformed ScoreSpec");
    for (uint32_t waited = 0; waited < sp->delay_ms && !atomic_load(job->cancel); waited += 10) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    size_t n = sp->n_items;
    int rc = 0, want_rm = sp->rm_dir && sp->rm_dir[0], want_ref = sp->ref_dir && sp->ref_dir[0];
    int want_prog = sp->program && sp->program[0];
    float *scores = calloc(n ? n : 1, sizeof *scores);
    double *model = calloc(n ? n : 1, sizeof *model), *prog = calloc(n ? n : 1, sizeof *prog);
    Rlhf__TokenLogprobs *lps = calloc(n ? n : 1, sizeof *lps);
    Rlhf__TokenLogprobs **lpp = calloc(n ? n : 1, sizeof *lpp);
    prog_errs_t errs = {0};
    if (!scores || !lps || !lpp || !model || !prog) rc = rl_fail(RL_ENOMEM, "score: out of memory");
    if (rc == 0 && !want_rm && !want_ref && !sp->count_reward && !want_prog)
        rc = rl_fail(RL_EINVAL, "score: neither rm_dir nor ref_dir is set");
    if (rc == 0 && want_rm && sp->count_reward)
        rc = rl_fail(RL_EINVAL, "score: rm_dir and count_reward both set");
    for (size_t k = 0; rc == 0 && sp->count_reward && k < n; k++) {
        scores[k] = 0;
        for (size_t t = 0; t < sp->items[k]->n_completion; t++)
            scores[k] += sp->items[k]->completion[t] == sp->count_token;
    }
    for (size_t k = 0; k < n && lps; k++) rlhf__token_logprobs__init(&lps[k]), lpp[k] = &lps[k];
    if (rc == 0 && want_rm) rc = run_model(st, job, sp->rm_dir, sp, 1, scores, lps);
    if (rc == 0 && want_ref) rc = run_model(st, job, sp->ref_dir, sp, 0, scores, lps);
    double *gold = sp->gold ? calloc(n ? n : 1, sizeof *gold) : NULL;
    if (rc == 0 && sp->gold)
        rc = gold ? run_gold(st, sp, gold) : rl_fail(RL_ENOMEM, "score: out of memory");
    if (rc == 0 && want_prog) rc = run_program(st, job, sp, prog, &errs);
    int has_model = want_rm || sp->count_reward;
    if (rc == 0 && want_prog) /* the weighted sum; each part is returned too */
        for (size_t k = 0; k < n; k++) {
            model[k] = has_model ? scores[k] : 0;
            scores[k] = (float)(sp->model_weight * model[k] + sp->program_weight * prog[k]);
        }
    if (rc == 0) {
        Rlhf__ScoreOutput so = RLHF__SCORE_OUTPUT__INIT;
        if (has_model || want_prog) so.scores = scores, so.n_scores = n;
        if (want_ref) so.ref_logprobs = lpp, so.n_ref_logprobs = n;
        if (sp->gold) so.gold = gold, so.n_gold = n;
        if (want_prog) {
            if (has_model) so.model_scores = model, so.n_model_scores = n;
            so.program_scores = prog, so.n_program_scores = n;
            so.program_errors = errs.msgs, so.n_program_errors = errs.n;
            so.program_timeouts = errs.timeouts;
        }
        *out_len = rlhf__score_output__get_packed_size(&so);
        *out = malloc(*out_len ? *out_len : 1);
        if (!*out)
            rc = rl_fail(RL_ENOMEM, "score: out of memory");
        else
            rlhf__score_output__pack(&so, *out);
    }
    for (size_t k = 0; k < n && lps; k++) free(lps[k].logprobs);
    free(lps);
    free(lpp);
    free(scores);
    free(model);
    free(prog);
    free(gold);
    prog_errs_free(&errs);
    rlhf__score_spec__free_unpacked(sp, NULL);
    return rc;
}
