/*
 * cmd_sft.c - `rlhf sft`: supervised fine-tuning of an HF GPT-2 directory on JSONL
 * demonstrations.
 *
 * SFT examples are {"prompt","completion"} (loss on the completion tokens and the appended
 * <|endoftext|> only) or {"text"} (loss on every token). Each example is one padded row of a
 * batch; rows are drawn in a seeded shuffled order, epoch after epoch, so a run is a pure
 * function of the data, the model and --seed. The steps run in process, or with
 * --learner-shards S as TRAIN jobs on a learner of S shards (see "sft on the learner").
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "net/client.h"
#include "base/err.h"
#include "base/fs.h"
#include "nn/gen.h"
#include "nn/gpt.h"
#include "nn/hf.h"
#include "base/jsonl.h"
#include "nn/ops.h"
#include "rlhf.pb-c.h"
#include "base/rng.h"
#include "align/task.h"
#include "nn/tok.h"
#include "nn/train.h"

/* ---- sft --------------------------------------------------------------------------------- */

/* One training row: ids[0..n), and how many leading ids are prompt (not trained on). */
typedef struct {
    int *ids;
    int n, n_prompt;
} sft_ex_t;

typedef struct {
    sft_ex_t *ex;
    int n, cap;
    long truncated, tokens, target_tokens;
} sft_set_t;

static void sft_set_free(sft_set_t *s) {
    for (int i = 0; i < s->n; i++) free(s->ex[i].ids);
    free(s->ex);
    memset(s, 0, sizeof(*s));
}

/* Appends a copy of ids[0..n) with n_prompt untrained leading ids. */
static int sft_set_add(sft_set_t *s, const int *ids, int n, int n_prompt) {
    if (s->n == s->cap) {
        int nc = s->cap ? 2 * s->cap : 256;
        sft_ex_t *e = realloc(s->ex, (size_t)nc * sizeof(*e));
        if (!e) return rl_fail(RL_ENOMEM, "out of memory");
        s->ex = e, s->cap = nc;
    }
    int *c = malloc((size_t)n * sizeof(int));
    if (!c) return rl_fail(RL_ENOMEM, "out of memory");
    memcpy(c, ids, (size_t)n * sizeof(int));
    s->ex[s->n++] = (sft_ex_t){c, n, n_prompt};
    s->tokens += n;
    s->target_tokens += n - (n_prompt > 0 ? n_prompt : 1); /* positions trained on */
    return 0;
}

typedef struct {
    tok_t *tok;
    int T, eot;
    sft_set_t *set;
} sft_load_t;

/* Strips one trailing literal "<|endoftext|>" (the trainer appends the real token). */
static size_t strip_eot(const char *s) {
    size_t n = strlen(s), e = strlen(TASK_EOT);
    return n >= e && strcmp(s + n - e, TASK_EOT) == 0 ? n - e : n;
}

static int sft_load_line(void *vctx, json_t *o, const char *where) {
    sft_load_t *c = vctx;
    json_t *jt = json_object_get(o, "text");
    int rc = 0, *a = NULL, *b = NULL, *row = NULL;
    size_t na = 0, nb = 0;
    char *rendered = NULL; /* a conversation's prompt, rendered by the chat template */
    if (jt && !json_object_get(o, "prompt")) {
        const char *text;
        if ((rc = jsonl_get_str(o, "text", where, &text)) < 0) return rc;
        if ((rc = tok_encode(c->tok, text, strip_eot(text), 1, &a, &na)) < 0)
            return rl_fail_ctx(rc, "%s: text", where);
        if (!(row = malloc((na + 1) * sizeof(int)))) {
            rc = rl_fail(RL_ENOMEM, "out of memory");
            goto done;
        }
        memcpy(row, a, na * sizeof(int));
        size_t n = na;
        if (c->eot >= 0) row[n++] = c->eot;
        if (n < 2) {
            rc = rl_fail(RL_EFORMAT, "%s: text: fewer than 2 tokens", where);
            goto done;
        }
        /* windows of T+1 tokens overlapping by one, so every next-token pair is trained once */
        for (size_t s = 0; rc == 0 && s + 1 < n; s += (size_t)c->T) {
            size_t len = n - s < (size_t)c->T + 1 ? n - s : (size_t)c->T + 1;
            rc = sft_set_add(c->set, row + s, (int)len, 0);
        }
        goto done;
    }
    const char *prompt, *comp;
    json_t *jm = json_object_get(o, "messages");
    if (json_is_array(jm) && !json_object_get(o, "prompt")) {
        /* {"messages": [..., {"role": "assistant", "content": C}]}: the conversation before the
         * last message, rendered with the generation prompt, is the prompt; C the completion */
        size_t nm = json_array_size(jm), len;
        json_t *last = nm ? json_array_get(jm, nm - 1) : NULL;
        const char *role = json_string_value(json_object_get(last, "role"));
        if (nm < 2 || !role || strcmp(role, "assistant") != 0 ||
            !json_is_string(json_object_get(last, "content")))
            return rl_fail(RL_EFORMAT,
                           "%s: messages: a conversation that ends with an assistant message "
                           "{\"role\": \"assistant\", \"content\": \"...\"} (the completion) is "
                           "expected",
                           where);
        json_t *head = json_pack("{s:o}", "messages", json_array());
        for (size_t i = 0; head && i + 1 < nm; i++)
            json_array_append(json_object_get(head, "messages"), json_array_get(jm, i));
        rc = head ? cli_prompt_text(c->tok, head, where, &rendered, &len)
                  : rl_fail(RL_ENOMEM, "out of memory");
        json_decref(head);
        if (rc < 0) return rc;
        prompt = rendered;
        comp = json_string_value(json_object_get(last, "content"));
    } else if ((rc = jsonl_get_str(o, "prompt", where, &prompt)) < 0 ||
               (rc = jsonl_get_str(o, "completion", where, &comp)) < 0) {
        return rc;
    }
    if ((rc = tok_encode(c->tok, prompt, strlen(prompt), tok_text_special(c->tok), &a, &na)) < 0) {
        rl_fail_ctx(rc, "%s: prompt", where);
        goto done;
    }
    if ((rc = tok_encode(c->tok, comp, strip_eot(comp), tok_text_special(c->tok), &b, &nb)) < 0) {
        rl_fail_ctx(rc, "%s: completion", where);
        goto done;
    }
    size_t nt = nb + (c->eot >= 0); /* trained tokens */
    if (na == 0 || nt == 0) {
        rc = rl_fail(RL_EFORMAT, "%s: %s is empty", where, na == 0 ? "prompt" : "completion");
        goto done;
    }
    if (nt > (size_t)c->T) {
        rc = rl_fail(RL_EINVAL,
                     "%s: the completion has %zu tokens with <|endoftext|>, more than --seq %d "
                     "allows (at most %d, leaving one prompt token)",
                     where, nt, c->T, c->T);
        goto done;
    }
    size_t keep = na; /* prompt tokens kept: the row must be at most T+1 long */
    if (na + nt > (size_t)c->T + 1) {
        keep = (size_t)c->T + 1 - nt;
        c->set->truncated++;
    }
    if (!(row = malloc((keep + nt) * sizeof(int)))) {
        rc = rl_fail(RL_ENOMEM, "out of memory");
        goto done;
    }
    memcpy(row, a + (na - keep), keep * sizeof(int));
    memcpy(row + keep, b, nb * sizeof(int));
    if (c->eot >= 0) row[keep + nb] = c->eot;
    rc = sft_set_add(c->set, row, (int)(keep + nt), (int)keep);
done:
    free(a);
    free(b);
    free(row);
    free(rendered);
    return rc;
}

/* Reads and tokenises a data file; an empty one is an error. */
static int sft_load(const char *path, tok_t *tok, int T, sft_set_t *set) {
    sft_load_t c = {tok, T, tok_eot(tok), set};
    long n = jsonl_read(path, sft_load_line, &c);
    if (n < 0) return (int)n;
    if (set->n == 0) return rl_fail(RL_EFORMAT, "%s: no examples", path);
    return 0;
}

/* Fills a padded batch of rows rows[0..B) into in/tg/mask (B,Tb) with Tb the longest row - 1;
 * returns Tb. */
static int sft_batch(const sft_set_t *s, const int *rows, int B, int pad, int *in, int *tg,
                     float *mask) {
    int Tb = 1;
    for (int b = 0; b < B; b++)
        if (s->ex[rows[b]].n - 1 > Tb) Tb = s->ex[rows[b]].n - 1;
    for (int b = 0; b < B; b++) {
        const sft_ex_t *e = &s->ex[rows[b]];
        for (int t = 0; t < Tb; t++) {
            size_t k = (size_t)b * Tb + t;
            int live = t + 1 < e->n;
            in[k] = t < e->n ? e->ids[t] : pad;
            tg[k] = live ? e->ids[t + 1] : pad;
            mask[k] = live && t + 1 >= e->n_prompt ? 1.0f : 0.0f;
        }
    }
    return Tb;
}

/* Mean masked loss over every example of s, B rows at a time. */
static int sft_eval(gpt_t *m, const sft_set_t *s, int B, int pad, int *in, int *tg, float *mask,
                    double *mean) {
    double sum = 0, cnt = 0;
    int rows[4096];
    if (B > 4096) B = 4096;
    for (int i = 0; i < s->n; i += B) {
        int nb = s->n - i < B ? s->n - i : B;
        for (int b = 0; b < nb; b++) rows[b] = i + b;
        int Tb = sft_batch(s, rows, nb, pad, in, tg, mask);
        float loss;
        int rc = gpt_forward(m, in, nb, Tb, GPT_FWD_LOGITS);
        if (rc == 0) rc = gpt_lm_loss(m, tg, mask, &loss, 0);
        if (rc < 0) return rc;
        double w = 0;
        for (int k = 0; k < nb * Tb; k++) w += mask[k];
        sum += (double)loss * w;
        cnt += w;
    }
    *mean = cnt > 0 ? sum / cnt : 0;
    return 0;
}

/* gold evaluation: K sampled completions per prompt, scored by the embedded task's judge */
typedef struct {
    const char *path;
    char **prompts;
    int n, cap;
} sft_prompts_t;

#define SFT_MAX_GOLD   4  /* --gold-prompts files */
#define SFT_GOLD_CHUNK 64 /* sequences generated together */

static int gold_prompt_line(void *vctx, json_t *o, const char *where) {
    sft_prompts_t *p = vctx;
    const char *s;
    int rc = jsonl_get_str(o, "prompt", where, &s);
    if (rc < 0) return rc;
    if (p->n == p->cap) {
        int nc = p->cap ? 2 * p->cap : 64;
        char **np = realloc(p->prompts, (size_t)nc * sizeof(char *));
        if (!np) return rl_fail(RL_ENOMEM, "out of memory");
        p->prompts = np, p->cap = nc;
    }
    if (!(p->prompts[p->n] = strdup(s))) return rl_fail(RL_ENOMEM, "out of memory");
    p->n++;
    return 0;
}

static int sft_gold(gpt_t *m, tok_t *tok, const sft_prompts_t *gp, int K, uint64_t seed,
                    json_t **out) {
    int n = gp->n * K, rc = 0;
    int **ids = calloc((size_t)n, sizeof(int *)), *lens = calloc((size_t)n, sizeof(int));
    uint64_t *sid = calloc((size_t)n, sizeof(uint64_t));
    gen_seq_t *seqs = calloc((size_t)n, sizeof(gen_seq_t));
    double sums[TASK_NCRIT] = {0}, gold = 0, kgold[TASK_NKIND + 1] = {0};
    int kn[TASK_NKIND + 1] = {0};
    json_t *examples = json_array();
    if (!ids || !lens || !sid || !seqs || !examples) {
        rc = rl_fail(RL_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        const char *p = gp->prompts[i / K];
        size_t len;
        rc = tok_encode(tok, p, strlen(p), tok_text_special(tok), &ids[i], &len);
        if (rc == 0 && (len == 0 || (int)len >= m->cfg.n_positions))
            rc = rl_fail(RL_EINVAL, "gold prompt %d: %zu tokens (context %d)", i / K + 1, len,
                         m->cfg.n_positions);
        lens[i] = (int)len;
        sid[i] = (uint64_t)i;
    }
    if (rc < 0) goto done;
    gen_opts_t o = {0};
    o.max_new_tokens = 48;
    o.sampling = (smp_params_t){1.0f, 0, 1.0f};
    o.seed = seed;
    o.eot = tok_eot(tok);
    if (tok_vocab_size(tok) < m->cfg.vocab_size) o.vocab_limit = tok_vocab_size(tok);
    /* chunks bound the KV cache; draws are keyed by the sample's index, not its chunk; the
     * weights are packed once for all chunks */
    gen_packed_t *pk = NULL;
    if ((rc = gen_pack(m, &pk)) < 0) goto done;
    o.packed = pk;
    for (int i = 0; i < n && rc == 0; i += SFT_GOLD_CHUNK) {
        int nb = n - i < SFT_GOLD_CHUNK ? n - i : SFT_GOLD_CHUNK;
        rc = gen_generate(m, (const int *const *)(ids + i), lens + i, nb, sid + i, &o, seqs + i);
    }
    gen_pack_free(&pk);
    if (rc < 0) goto done;
    for (int i = 0; i < n && rc == 0; i++) {
        int nt = seqs[i].n;
        if (nt > 0 && seqs[i].tokens[nt - 1] == o.eot) nt--;
        char *text = NULL;
        size_t tl;
        if ((rc = tok_decode(tok, seqs[i].tokens, (size_t)nt, &text, &tl)) < 0) break;
        float sc[TASK_NCRIT];
        task_score(gp->prompts[i / K], text, sc);
        double g = task_gold(sc);
        gold += g;
        task_prompt_t tp;
        int kind = task_prompt_parse(gp->prompts[i / K], &tp) == 0 ? tp.kind : TASK_NKIND;
        kgold[kind] += g;
        kn[kind]++;
        for (int k = 0; k < TASK_NCRIT; k++) sums[k] += sc[k];
        if (i < 3 * K && i % K == 0) {
            char *u = tok_utf8_lossy(text, tl, &tl);
            if (u) json_array_append_new(examples, json_pack("{s:s,s:f}", "text", u, "gold", g));
            free(u);
        }
        free(text);
    }
    if (rc < 0) goto done;
    json_t *r = json_pack("{s:s,s:i,s:f}", "gold_prompts", gp->path, "gold_samples", n, "gold_mean",
                          gold / n);
    for (int k = 0; k < TASK_NCRIT; k++)
        json_object_set_new(r, task_criteria_names[k], json_real(sums[k] / n));
    json_t *byk = json_object();
    for (int k = 0; k < TASK_NKIND; k++)
        if (kn[k]) json_object_set_new(byk, task_kind_names[k], json_real(kgold[k] / kn[k]));
    json_object_set_new(r, "gold_by_kind", byk);
    json_object_set(r, "examples", examples);
    *out = r;
done:
    json_decref(examples);
    for (int i = 0; i < n && ids; i++) free(ids[i]);
    for (int i = 0; i < n && seqs; i++) gen_seq_free(&seqs[i]);
    free(ids);
    free(lens);
    free(sid);
    free(seqs);
    return rc;
}

/* ---- sft on the learner ------------------------------------------------------------------- */

/*
 * With --learner-shards S the steps run as TRAIN jobs of kind LM on a learner of S gradient
 * shards behind a local master (`rlhf up` under RUN_DIR/cluster, checkpoints in
 * RUN_DIR/learner), one job per --steps-per-job steps, submitted one after the other through
 * the master's client API. Each job carries its steps' batches, built here exactly as the
 * in-process loop builds them (same order, same padding), with the masked positions as target
 * -1: the masked mean loss is then the same number, and the gradient the same blocks combined in
 * the same tree (--grad-blocks), so any number of shards gives the parameters of the in-process
 * run. A finished job is answered from the master's record (its journal): running
 * the same command again after an interruption continues.
 */

typedef struct {
    int steps, log_every, print_rc;
    double step_ms; /* the learner's step time, summed */
} sft_jobs_t;

/* Prints the logged steps of a finished job and adds up its step times. */
static void sft_job_done(sft_jobs_t *c, uint64_t id, const Rlhf__TrainOutput *o) {
    long first = (long)o->step - (long)o->n_loss;
    for (size_t k = 0; k < o->n_loss; k++) {
        long s = first + (long)k;
        if (s % c->log_every == 0 || s == c->steps - 1)
            c->print_rc |= cli_print_json(json_pack(
                "{s:I,s:f,s:f,s:I,s:f,s:i}", "step", (json_int_t)s, "loss", (double)o->loss[k],
                "grad_norm", k < o->n_grad_norm ? o->grad_norm[k] : 0.0, "job", (json_int_t)id,
                "ms", o->step_ms, "shards", (int)o->shards));
    }
    c->step_ms += o->step_ms * (double)o->n_loss;
}

typedef struct {
    const char *model, *out, *run_dir;
    int shards, steps_per_job, steps, B, T, warmup, log_every, grad_blocks;
    float lr, min_lr, wd, clip;
    long seed;
} sft_learner_t;

/* The rows of step s: the seeded shuffle of epoch after epoch (order[] holds the current
 * epoch's, *epoch its number). */
static void sft_rows(const sft_set_t *set, long seed, int s, int B, int *order, long *epoch,
                     int *rows) {
    for (int b = 0; b < B; b++) {
        long k = (long)s * B + b, e = k / set->n;
        if (e != *epoch) { /* a fresh seeded shuffle per epoch (Fisher-Yates) */
            *epoch = e;
            for (int i = 0; i < set->n; i++) order[i] = i;
            for (int i = set->n - 1; i > 0; i--) {
                int j = (int)(rng_uniform53((uint64_t)seed, 0x534654ull << 32 | (uint64_t)e,
                                            (uint64_t)i) *
                              (i + 1));
                if (j > i) j = i;
                int t = order[i];
                order[i] = order[j], order[j] = t;
            }
        }
        rows[b] = order[k % set->n];
    }
}

/* The steps on the learner; *out = the model of its last checkpoint. */
static int sft_learner(const sft_learner_t *a, const sft_set_t *set, int pad, gpt_t **out,
                       sft_jobs_t *c) {
    char rdir[PATH_MAX], amodel[PATH_MAX];
    if (!realpath(a->model, amodel)) return rl_fail(RL_EIO, "%s: %s", a->model, strerror(errno));
    snprintf(rdir, sizeof rdir, "%.4000s", a->run_dir ? a->run_dir : a->out);
    if (!a->run_dir) snprintf(rdir, sizeof rdir, "%.4000s.run", a->out);
    int rc = 0;
    int J = a->steps_per_job, B = a->B, T = a->T;
    size_t cap = (size_t)J * B * T;
    int *in = malloc(cap * sizeof(int)), *tg = malloc(cap * sizeof(int));
    float *mask = malloc((size_t)B * T * sizeof(float));
    uint32_t *seq = malloc((size_t)J * sizeof *seq);
    int *rows = malloc((size_t)B * sizeof(int)), *order = malloc((size_t)set->n * sizeof(int));
    if (!in || !tg || !mask || !seq || !rows || !order) rc = rl_fail(RL_ENOMEM, "batches");
    local_session_t ss = {0};
    char mref[PATH_MAX + 80], final_ref[PATH_MAX + 80] = "";
    if (rc == 0) rc = local_session_open(&ss, rdir, 0, 0, a->shards, "sft");
    if (rc == 0)
        rc = local_publish(&ss, amodel, mref, sizeof mref); /* the learner gets it by content */
    long epoch = -1;
    for (int j = 0; rc == 0 && j * J < a->steps; j++) {
        int n = a->steps - j * J < J ? a->steps - j * J : J;
        size_t off = 0;
        for (int k = 0; k < n; k++) {
            sft_rows(set, a->seed, j * J + k, B, order, &epoch, rows);
            int Tb = sft_batch(set, rows, B, pad, in + off, tg + off, mask);
            for (int i = 0; i < B * Tb; i++)
                if (mask[i] == 0.0f) tg[off + (size_t)i] = -1;
            seq[k] = (uint32_t)Tb;
            off += (size_t)B * Tb;
        }
        Rlhf__TrainSpec sp = RLHF__TRAIN_SPEC__INIT;
        sp.kind = RLHF__TRAIN_KIND__TRAIN_KIND_LM;
        sp.model_dir = mref;
        sp.export_model = j * J + n >= a->steps; /* the result comes back over the wire */
        sp.batch_size = (uint32_t)B;
        sp.seq_len = (uint32_t)T;
        sp.step = (uint64_t)j * (uint64_t)J;
        sp.n_steps = (uint32_t)n;
        sp.lr = a->lr;
        sp.min_lr = a->min_lr;
        sp.schedule = RLHF__TRAIN_SCHEDULE__TRAIN_SCHEDULE_COSINE;
        sp.warmup = (uint64_t)a->warmup;
        sp.total_steps = (uint64_t)a->steps;
        sp.weight_decay = a->wd;
        sp.clip = a->clip;
        sp.grad_blocks = (uint32_t)a->grad_blocks;
        sp.step_inputs = in;
        sp.n_step_inputs = off;
        sp.step_targets = tg;
        sp.n_step_targets = off;
        sp.step_seq = seq;
        sp.n_step_seq = (size_t)n;
        Rlhf__TrainOutput *o;
        rc = local_train_job(&ss, (uint64_t)j + 1, (uint64_t)a->seed + 1, &sp, &o);
        if (rc == 0) sft_job_done(c, (uint64_t)j + 1, o);
        if (rc == 0 && sp.export_model) snprintf(final_ref, sizeof final_ref, "%s", o->model_ref);
        if (o) rlhf__train_output__free_unpacked(o, NULL);
    }
    char path[PATH_MAX + 64];
    if (rc == 0 && !final_ref[0])
        rc = rl_fail(RL_EPROTO, "the learner exported no model after the last job");
    if (rc == 0) rc = local_fetch(&ss, final_ref, path, sizeof path);
    local_session_close(&ss);
    free(in), free(tg), free(mask), free(seq), free(rows), free(order);
    if (rc < 0) return rc;
    if (!(*out = hf_load(path))) return rl_fail_ctx(RL_EIO, "the learner's last checkpoint: ");
    return 0;
}

typedef struct {
    const char *model, *data, *out, *eval_data, *run_dir;
    const char *gold[SFT_MAX_GOLD];
    int n_gold;
    int steps, B, T, warmup, threads, eval_every, log_every, gold_n, gold_every, shards,
        steps_per_job, grad_blocks;
    float lr, min_lr, wd, clip;
    long seed;
} sft_args_t;

/* --gold-prompts FILE, up to SFT_MAX_GOLD times. */
static int sft_opt_gold(void *args, const char *path) {
    sft_args_t *a = args;
    if (a && a->n_gold == SFT_MAX_GOLD) return rl_fail(RL_EINVAL, "at most %d files", SFT_MAX_GOLD);
    if (a) a->gold[a->n_gold++] = path;
    return 0;
}

#define SI(f, name, lo, hi, def, arg, help) CLI_OPT_INT(sft_args_t, f, name, lo, hi, def, arg, help)
#define SF(f, name, lo, hi, def, arg, help)                                                        \
    CLI_OPT_FLOAT(sft_args_t, f, name, lo, hi, def, arg, help)
static const cli_opt_t sft_opt_table[] = {
    CLI_OPT_STR(sft_args_t, model, "model", NULL, "DIR", "model to fine-tune (any HF GPT-2 dir)",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(sft_args_t, data, "data", NULL, "FILE", "JSONL {prompt, completion} or {text}",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(sft_args_t, out, "out", NULL, "DIR", "where to save the model", CLI_OPT_REQUIRED),
    SI(steps, "steps", 1, 100000000, "300", "N", "optimizer steps"),
    SI(B, "batch", 1, 4096, "16", "B", "sequences per step"),
    SI(T, "seq", 1, 1000000, NULL, "T", "sequence length (default: the model's n_positions)"),
    SF(lr, "lr", 0, 10, "0.001", "LR", "peak learning rate (cosine to --min-lr)"),
    SF(min_lr, "min-lr", 0, 10, "0.0001", "LR", "final learning rate"),
    SI(warmup, "warmup", 0, 100000000, "20", "N", "warmup steps"),
    SF(wd, "weight-decay", 0, 10, "0.1", "WD", "AdamW weight decay"),
    SF(clip, "clip", 0, 1e9, "1", "C", "gradient-norm clip"),
    CLI_OPT_LONG(sft_args_t, seed, "seed", 0, LONG_MAX, "1", "S", "run seed"),
    CLI_OPT_STR(sft_args_t, eval_data, "eval-data", NULL, "FILE",
                "held-out JSONL: its loss every --eval-every steps and at the end", 0),
    SI(eval_every, "eval-every", 1, 100000000, "100", "N", "evaluation interval"),
    SI(log_every, "log-every", 1, 100000000, "10", "N", "log interval"),
    CLI_OPT_CALL("gold-prompts", "FILE",
                 "JSONL {prompt} (up to 4 files): K sampled completions per prompt scored by the "
                 "embedded task's gold judge at the end",
                 sft_opt_gold, 0),
    SI(gold_n, "gold-n", 1, 1000, "1", "K", "completions per gold prompt"),
    SI(gold_every, "gold-every", 1, 100000000, NULL, "N", "also score every N steps"),
    SI(threads, "threads", 1, 1024, "2", "N", "threads"),
    SI(shards, "learner-shards", 1, 16, NULL, "S",
       "run the steps as TRAIN jobs on a learner of S shards (default: in-process)"),
    SI(steps_per_job, "steps-per-job", 1, 1 << 20, "20", "N", "steps per TRAIN job"),
    CLI_OPT_STR(sft_args_t, run_dir, "run-dir", NULL, "DIR",
                "the learner's local cluster (default OUT.run)", 0),
    SI(grad_blocks, "grad-blocks", 1, GTREE_MAX_BLOCKS, "8", "N",
       "gradient blocks per step (capped at the batch): the fixed order the step's gradient is "
       "summed in, the same on any number of learner shards"),
};
#undef SI
#undef SF

const cli_opts_t cli_sft_opts = CLI_OPTS(
    "sft", "rlhf sft --model DIR --data FILE.jsonl --out DIR [options]",
    "Supervised fine-tuning of the HF GPT-2 model in DIR with its tokenizer (vocab.json,\n"
    "merges.txt). Each line of the data is {\"prompt\",\"completion\"} - the completion gets\n"
    "<|endoftext|> appended and only its tokens are trained on - or {\"text\"}, trained on every\n"
    "token (<|endoftext|> appended; a text longer than the context is cut into windows).\n"
    "An example longer than T+1 tokens loses prompt tokens from the left; one whose completion\n"
    "alone does not fit is an error. Batches are padded to their longest row (padding is not\n"
    "trained on). Prints one JSON line per logged step; with --eval-data, the held-out loss on\n"
    "it every --eval-every steps and at the end; with --gold-prompts (JSONL {\"prompt\"}, up to\n"
    "4 files), K sampled completions per prompt (temperature 1) scored by the embedded task's\n"
    "gold judge, at the end (and every --gold-every steps; \"seconds\" of training exclude it).\n"
    "Saves the model and its tokenizer to --out, atomically file by file. Deterministic from\n"
    "--seed.\n",
    sft_opt_table,
    "--learner-shards S: the steps run as TRAIN jobs (--steps-per-job N each, the batches\n"
    "inline) on a learner of S gradient shards behind a local master (`rlhf up` in --run-dir,\n"
    "default OUT.run; checkpoints in RUN_DIR/learner); the same command run again after an\n"
    "interruption continues from the last finished job. Whatever S, the parameters are those of\n"
    "the in-process run: each step's gradient is --grad-blocks blocks summed in one fixed tree,\n"
    "the shards computing parts of the tree (S above the blocks leaves shards idle). The\n"
    "evaluations then run once, at the end.\n");

int cmd_sft(int argc, char **argv) {
    const char *cmd = "sft";
    sft_args_t a = {0};
    int prc = cli_opts_parse(&cli_sft_opts, argc, argv, &a);
    if (prc != CLI_OPTS_GO) return prc;
    const char *model = a.model, *data = a.data, *out = a.out, *eval_data = a.eval_data;
    sft_prompts_t gp[SFT_MAX_GOLD] = {{0}};
    int n_gold = a.n_gold;
    for (int i = 0; i < n_gold; i++) gp[i].path = a.gold[i];
    int steps = a.steps, B = a.B, T = a.T, warmup = a.warmup, threads = a.threads;
    int eval_every = a.eval_every, log_every = a.log_every, gold_n = a.gold_n;
    int gold_every = a.gold_every, shards = a.shards, steps_per_job = a.steps_per_job;
    const char *run_dir = a.run_dir;
    float lr = a.lr, min_lr = a.min_lr, wd = a.wd, clip = a.clip;
    long seed = a.seed;
    if (!model || !data || !out) {
        fprintf(stderr, "rlhf %s: --model, --data and --out are required\n", cmd);
        return 2;
    }
    ops_set_threads(threads);
    int rc = 0, print_rc = 0, *in = NULL, *tg = NULL, *rows = NULL, *order = NULL;
    float *mask = NULL;
    sft_set_t set = {0}, eset = {0};
    train_t tr = {0};
    tok_t *tok = NULL;
    gpt_t *m = hf_load(model);
    if (!m) return cli_fail(cmd, "loading model", RL_EIO);
    if (!(tok = tok_load(model))) {
        rc = rl_fail_ctx(RL_EIO, "%s: tokenizer", model);
        goto done;
    }
    if (tok_vocab_size(tok) > m->cfg.vocab_size) {
        rc = rl_fail(RL_EINVAL, "%s: the tokenizer has %d ids, the model only %d", model,
                     tok_vocab_size(tok), m->cfg.vocab_size);
        goto done;
    }
    if (T == 0) T = m->cfg.n_positions;
    if (T > m->cfg.n_positions || T < 1) {
        rc = rl_fail(RL_EINVAL, "--seq %d exceeds the model's n_positions %d", T,
                     m->cfg.n_positions);
        goto done;
    }
    if ((rc = sft_load(data, tok, T, &set)) < 0) goto done;
    if (eval_data && (rc = sft_load(eval_data, tok, T, &eset)) < 0) goto done;
    for (int g = 0; g < n_gold; g++) {
        long ng = jsonl_read(gp[g].path, gold_prompt_line, &gp[g]);
        if (ng < 0) {
            rc = (int)ng;
            goto done;
        }
    }
    int pad = tok_eot(tok) >= 0 ? tok_eot(tok) : 0;
    in = malloc((size_t)B * T * sizeof(int));
    tg = malloc((size_t)B * T * sizeof(int));
    mask = malloc((size_t)B * T * sizeof(float));
    rows = malloc((size_t)B * sizeof(int));
    order = malloc((size_t)set.n * sizeof(int));
    if (!in || !tg || !mask || !rows || !order) {
        rc = rl_fail(RL_ENOMEM, "batch buffers");
        goto done;
    }
    print_rc |= cli_print_json(json_pack(
        "{s:i,s:I,s:I,s:I,s:i,s:i,s:I}", "examples", set.n, "tokens", (json_int_t)set.tokens,
        "target_tokens", (json_int_t)set.target_tokens, "truncated", (json_int_t)set.truncated,
        "eval_examples", eset.n, "seq", T, "params", (json_int_t)m->num_params));
    adamw_sched_t sched = {ADAMW_SCHED_COSINE, lr, min_lr, warmup, steps};
    if (!shards && (rc = train_init(&tr, m, &sched, wd, clip)) < 0) goto done;
    tr.grad_blocks = a.grad_blocks;
    double t_start = cli_now_ms(), side_ms = 0; /* side_ms: evaluation, not training */
    long epoch = -1;
    sft_jobs_t lj = {.steps = steps, .log_every = log_every};
    if (shards) { /* the steps on the learner, then the evaluations of the last step below */
        sft_learner_t la = {model,  out, run_dir, shards,    steps_per_job, steps,
                            B,      T,   warmup,  log_every, a.grad_blocks, lr,
                            min_lr, wd,  clip,    seed};
        gpt_t *fm = NULL;
        rc = sft_learner(&la, &set, pad, &fm, &lj);
        print_rc |= lj.print_rc;
        if (rc < 0) goto done;
        gpt_destroy(&m);
        m = fm;
    }
    for (int s = shards ? steps - 1 : 0; rc == 0 && s < steps; s++) {
        if (!shards) {
            sft_rows(&set, seed, s, B, order, &epoch, rows);
            int Tb = sft_batch(&set, rows, B, pad, in, tg, mask);
            train_stats_t st;
            rc = train_lm_step(&tr, in, tg, mask, B, Tb, &st);
            if (rc == 0 && (s % log_every == 0 || s == steps - 1)) {
                double ms = st.ms_forward + st.ms_backward + st.ms_optimizer;
                print_rc |= cli_print_json(json_pack("{s:i,s:f,s:f,s:f,s:f,s:f}", "step", s, "loss",
                                                     (double)st.loss, "lr", (double)st.lr,
                                                     "grad_norm", st.grad_norm, "ms", ms,
                                                     "tokens_per_s", B * Tb / (ms / 1e3)));
            }
        }
        if (rc == 0 && eset.n && ((s + 1) % eval_every == 0 || s == steps - 1)) {
            double el, t0 = cli_now_ms();
            rc = sft_eval(m, &eset, B, pad, in, tg, mask, &el);
            side_ms += cli_now_ms() - t0;
            if (rc == 0)
                print_rc |= cli_print_json(json_pack("{s:i,s:f}", "step", s, "eval_loss", el));
        }
        int gold_now = s == steps - 1 || (gold_every && (s + 1) % gold_every == 0);
        for (int i = 0; rc == 0 && gold_now && i < n_gold; i++) {
            json_t *g = NULL;
            double t0 = cli_now_ms();
            if (gp[i].n && (rc = sft_gold(m, tok, &gp[i], gold_n, (uint64_t)seed, &g)) == 0) {
                json_object_set_new(g, "step", json_integer(s));
                json_object_set_new(g, "seconds", json_real((cli_now_ms() - t0) / 1e3));
                print_rc |= cli_print_json(g);
            }
            side_ms += cli_now_ms() - t0;
        }
    }
    /* on the learner: the learner's own step time (the cluster's start-up is not training) */
    double train_s = shards ? lj.step_ms / 1e3 : (cli_now_ms() - t_start - side_ms) / 1e3;
    if (rc == 0) rc = hf_save(m, out);
    if (rc == 0) rc = hf_copy_tokenizer(model, out);
    if (rc == 0)
        print_rc |= cli_print_json(json_pack("{s:s,s:i,s:f,s:i}", "saved", out, "steps", steps,
                                             "seconds", train_s, "learner_shards", shards));
done:
    train_free(&tr);
    sft_set_free(&set);
    sft_set_free(&eset);
    for (int g = 0; g < n_gold; g++) {
        for (int i = 0; i < gp[g].n; i++) free(gp[g].prompts[i]);
        free(gp[g].prompts);
    }
    free(in);
    free(tg);
    free(mask);
    free(rows);
    free(order);
    tok_destroy(&tok);
    gpt_destroy(&m);
    return rc < 0 ? cli_fail(cmd, "fine-tuning", rc) : print_rc;
}
