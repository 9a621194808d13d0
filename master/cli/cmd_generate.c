/*
 * cmd_generate.c - `rlhf generate`: stage 1's generation step. K sampled completions per
 * prompt, produced by rollout workers through the master.
 *
 *   rlhf generate --model DIR --prompts FILE --out FILE [--k 4] [--max-new 32] [--seed 1]
 *                 [--temperature 1] [--top-k 0] [--top-p 1] [--workers 2] [--run-dir DIR]
 *                 [--template-user T] [--template-assistant T] [--template-system T]
 *                 [--template-end T]
 *
 * The prompts (JSONL {"id","prompt"}, or chat-style {"id","messages":[{"role","content"}]}
 * rendered with the templates; ids are assigned when missing) are tokenised with the model's
 * tokenizer, and each becomes one GENERATE job (a packed GenerateSpec, id = the prompt's position)
 * submitted as a client to a local cluster of its own: a master and `--workers` rollout workers
 * in RUN_DIR/cluster (local_session_open). The outputs are collected as they arrive and become
 * the completions JSONL, written atomically once every prompt is done:
 *   {"prompt_id","prompt","completions":[{"id","text","tokens","logprob","logprobs","finish"}]}
 * Sample i of a prompt is drawn with the seed derived from (--seed, prompt id) and stream i, so
 * the file does not depend on the number of workers or on which worker ran which prompt. An
 * interrupted run continues where it stopped when run again with the same arguments: the
 * master's journal records every finished prompt, and the restarted master
 * answers those from its records instead of generating them again. Other settings on the same
 * run directory give other specs under the same ids, which the master refuses.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "base/err.h"
#include "nn/hf.h"
#include "base/jsonl.h"
#include "nn/tok.h"
#include "rlhf.pb-c.h"

typedef struct {
    char *id, *text; /* prompt id, rendered prompt */
    int *ids;
    size_t n;
    Rlhf__GenerateOutput *result; /* its completions, once its job is done */
} gprompt_t;

typedef struct {
    tok_t *tok;
    int ctx;
    const char *t_user, *t_assistant, *t_system, *t_end;
    gprompt_t *p;
    int n, cap;
    json_t *seen; /* prompt ids so far (a set) */
    int failed;   /* jobs that came back failed or rejected */
} gload_t;

/* What every prompt's GENERATE job asks for. */
typedef struct {
    int k, max_new, top_k, eot, vocab_limit, delay_ms;
    float temperature, top_p;
    uint64_t seed; /* the run seed: prompt p's samples use prompt_seed(seed, p's id) */
} gen_settings_t;

/* Appends `tmpl` with every "{content}" replaced by `content`. */
static int render(char **buf, size_t *len, const char *tmpl, const char *content) {
    size_t cl = strlen(content);
    for (const char *t = tmpl; *t;) {
        const char *hit = strstr(t, "{content}");
        size_t seg = hit ? (size_t)(hit - t) : strlen(t);
        size_t add = seg + (hit ? cl : 0);
        char *nb = realloc(*buf, *len + add + 1);
        if (!nb) return rl_fail(RL_ENOMEM, "out of memory");
        *buf = nb;
        memcpy(*buf + *len, t, seg);
        if (hit) memcpy(*buf + *len + seg, content, cl);
        *len += add;
        (*buf)[*len] = 0;
        t += seg + (hit ? 9 : 0);
    }
    return 0;
}

static int load_prompt(void *ctx, json_t *o, const char *where) {
    gload_t *g = ctx;
    char *text = NULL;
    size_t len = 0;
    int rc = 0;
    json_t *jp = json_object_get(o, "prompt"), *jm = json_object_get(o, "messages");
    if (!json_is_string(jp) && json_array_size(jm) > 0 && !tok_chat_template(g->tok)) {
        /* messages for a model without a chat template: the --template-* framing */
        size_t i;
        json_t *msg;
        json_array_foreach(jm, i, msg) {
            const char *role, *content;
            char w2[4300];
            snprintf(w2, sizeof w2, "%s: messages[%zu]", where, i);
            if ((rc = jsonl_get_str(msg, "role", w2, &role)) < 0 ||
                (rc = jsonl_get_str(msg, "content", w2, &content)) < 0)
                break;
            const char *tm = !strcmp(role, "user") || !strcmp(role, "human") ? g->t_user
                             : !strcmp(role, "assistant")                    ? g->t_assistant
                             : !strcmp(role, "system")                       ? g->t_system
                                                                             : NULL;
            if (!tm) {
                rc =
                    rl_fail(RL_EFORMAT, "%s: role '%s' is not user, assistant or system", w2, role);
                break;
            }
            if ((rc = render(&text, &len, tm, content)) < 0) break;
        }
        if (rc == 0) rc = render(&text, &len, g->t_end, "");
    } else { /* a prompt's text, messages through the model's own chat template, or the error */
        rc = cli_prompt_text(g->tok, o, where, &text, &len);
    }
    if (rc < 0) {
        free(text);
        return rc;
    }
    if (g->n == g->cap) {
        int nc = g->cap ? 2 * g->cap : 64;
        gprompt_t *np = realloc(g->p, (size_t)nc * sizeof *np);
        if (!np) {
            free(text);
            return rl_fail(RL_ENOMEM, "out of memory");
        }
        g->p = np, g->cap = nc;
    }
    gprompt_t *p = &g->p[g->n];
    memset(p, 0, sizeof *p);
    p->text = text;
    json_t *jid = json_object_get(o, "id");
    char idbuf[32];
    if (json_is_string(jid) && json_string_length(jid) > 0) {
        p->id = strdup(json_string_value(jid));
    } else if (json_is_integer(jid)) {
        snprintf(idbuf, sizeof idbuf, "%" JSON_INTEGER_FORMAT, json_integer_value(jid));
        p->id = strdup(idbuf);
    } else if (!jid || json_is_null(jid)) {
        snprintf(idbuf, sizeof idbuf, "p%d", g->n + 1); /* assigned: the record's number */
        p->id = strdup(idbuf);
    } else {
        free(text);
        return rl_fail(RL_EFORMAT, "%s: id: a string or an integer is expected", where);
    }
    g->n++;
    if (!p->id) return rl_fail(RL_ENOMEM, "out of memory");
    if (json_object_get(g->seen, p->id))
        return rl_fail(RL_EFORMAT, "%s: id '%s' repeats an earlier prompt's", where, p->id);
    json_object_set_new(g->seen, p->id, json_true());
    if ((rc = tok_encode(g->tok, text, len, tok_text_special(g->tok), &p->ids, &p->n)) < 0)
        return rl_fail_ctx(rc, "%s: ", where);
    if (p->n < 1 || (int)p->n >= g->ctx)
        return rl_fail(RL_EFORMAT,
                       "%s: the prompt is %zu tokens; the model's context of %d needs "
                       "1 to %d",
                       where, p->n, g->ctx, g->ctx - 1);
    return 0;
}

/* 64-bit FNV-1a then a finaliser: the seed of a prompt's samples from its id. */
static uint64_t prompt_seed(uint64_t seed, const char *id) {
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    for (const unsigned char *c = (const unsigned char *)id; *c; c++)
        h = (h ^ *c) * 0x100000001b3ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h >> 1; /* 63 bits: a non-negative JSON integer */
}

/* client_wait's callback: job id i + 1 is prompt i; its decoded output is kept as the prompt's
 * completions. */
static int on_generated(void *ctx, const client_result_t *r) {
    gload_t *g = ctx;
    if (r->id < 1 || r->id > (uint64_t)g->n) return 0;
    if (r->status != CLIENT_DONE) {
        g->failed++;
        return 0;
    }
    Rlhf__GenerateOutput *go = rlhf__generate_output__unpack(NULL, r->output_len, r->output);
    if (!go)
        return rl_fail(RL_EPROTO, "job %" PRIu64 ": its output is not a GenerateOutput", r->id);
    gprompt_t *p = &g->p[r->id - 1];
    if (p->result) rlhf__generate_output__free_unpacked(p->result, NULL);
    p->result = go;
    return 0;
}

/* The GENERATE job of prompt i (id i + 1), its GenerateSpec packed into a malloc'ed payload. */
static int prompt_job(const gprompt_t *p, int i, const char *model, const gen_settings_t *gs,
                      client_job_t *job) {
    Rlhf__GenerateSpec sp = RLHF__GENERATE_SPEC__INIT;
    int32_t *prompt = malloc(p->n * sizeof *prompt);
    if (!prompt) return rl_fail(RL_ENOMEM, "out of memory");
    for (size_t k = 0; k < p->n; k++) prompt[k] = p->ids[k];
    sp.model_dir = (char *)model;
    sp.prompt = prompt;
    sp.n_prompt = p->n;
    sp.max_new_tokens = (uint32_t)gs->max_new;
    sp.n_samples = (uint32_t)gs->k;
    sp.temperature = gs->temperature;
    sp.top_k = (uint32_t)gs->top_k;
    sp.top_p = gs->top_p;
    sp.eot = gs->eot;
    sp.vocab_limit = (uint32_t)gs->vocab_limit;
    sp.delay_ms = (uint32_t)gs->delay_ms;
    size_t len = rlhf__generate_spec__get_packed_size(&sp);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf) rlhf__generate_spec__pack(&sp, buf);
    free(prompt);
    if (!buf) return rl_fail(RL_ENOMEM, "out of memory");
    *job = (client_job_t){.id = (uint64_t)i + 1,
                          .kind = RLHF__JOB_KIND__JOB_KIND_GENERATE,
                          .seed = prompt_seed(gs->seed, p->id),
                          .payload = buf,
                          .payload_len = len};
    return 0;
}

/* Generates every prompt's completions through a local cluster in rdir: submits one job per
 * prompt and collects the outputs into g->p[i].result as they come. Returns 0 (failed jobs are
 * counted in g->failed) or RL_E* with the reason. */
static int generate_all(gload_t *g, const char *rdir, const char *model, const gen_settings_t *gs,
                        int workers) {
    client_job_t *jobs = calloc((size_t)g->n, sizeof *jobs);
    uint64_t *ids = calloc((size_t)g->n, sizeof *ids);
    int rc = jobs && ids ? 0 : rl_fail(RL_ENOMEM, "out of memory");
    local_session_t ss = {0};
    char ref[PATH_MAX + 80];
    if (rc == 0 && (rc = local_session_open(&ss, rdir, workers, 0, 0, "generate")) == 0) {
        /* the workers get the model by its content from the master's host */
        rc = local_publish(&ss, model, ref, sizeof ref);
        for (int i = 0; i < g->n && rc == 0; i++) {
            rc = prompt_job(&g->p[i], i, ref, gs, &jobs[i]);
            ids[i] = (uint64_t)i + 1;
        }
        if (rc == 0) rc = client_submit(ss.client, jobs, g->n);
        if (rc == RL_EINVAL) { /* the master knows these ids with other specs */
            char why[512];
            snprintf(why, sizeof why, "%s", rl_errmsg());
            rc = rl_fail(RL_EINVAL,
                         "%s holds a different job set (other prompts, model or settings): %s; "
                         "remove it or choose another --run-dir",
                         rdir, why);
        }
        if (rc == 0) rc = client_wait(ss.client, ids, g->n, -1, on_generated, g);
        local_session_close(&ss);
    }
    for (int i = 0; jobs && i < g->n; i++) free((void *)jobs[i].payload);
    free(jobs);
    free(ids);
    return rc;
}

/* Turns the C escapes \n and \t of a command-line template into characters, in place. */
static char *unescape(char *s) {
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (r[0] == '\\' && (r[1] == 'n' || r[1] == 't' || r[1] == '\\')) {
            *w++ = r[1] == 'n' ? '\n' : r[1] == 't' ? '\t' : '\\';
            r++;
        } else {
            *w++ = *r;
        }
    }
    *w = 0;
    return s;
}

typedef struct {
    const char *model, *prompts, *out, *run_dir;
    const char *t_user, *t_assistant, *t_system, *t_end; /* with C escapes */
    int K, max_new, top_k, workers, delay_ms;
    float temp, top_p;
    long seed;
} gen_args_t;

#define GI(f, name, lo, hi, def, arg, help) CLI_OPT_INT(gen_args_t, f, name, lo, hi, def, arg, help)
static const cli_opt_t gen_opt_table[] = {
    CLI_OPT_STR(gen_args_t, model, "model", NULL, "DIR", "the instruct model", CLI_OPT_REQUIRED),
    CLI_OPT_STR(gen_args_t, prompts, "prompts", NULL, "FILE",
                "JSONL {id, prompt} or {id, messages}", CLI_OPT_REQUIRED),
    CLI_OPT_STR(gen_args_t, out, "out", NULL, "FILE", "the completions (JSONL)", CLI_OPT_REQUIRED),
    GI(K, "k", 1, 256, "4", "N", "completions per prompt"),
    GI(max_new, "max-new", 1, 1 << 20, "32", "N", "tokens per completion at most"),
    CLI_OPT_FLOAT(gen_args_t, temp, "temperature", 0, 100, "1", "T",
                  "sampling temperature (0: greedy)"),
    GI(top_k, "top-k", 0, INT_MAX, "0", "N", "keep the N most probable tokens (0: all)"),
    CLI_OPT_FLOAT(gen_args_t, top_p, "top-p", 1e-6, 1, "1", "P", "nucleus sampling mass (1: all)"),
    CLI_OPT_LONG(gen_args_t, seed, "seed", 0, LONG_MAX, "1", "S",
                 "run seed; sample i of prompt p uses (S, p's id, i)"),
    GI(workers, "workers", 1, 32, "2", "N", "rollout workers"),
    CLI_OPT_STR(gen_args_t, run_dir, "run-dir", NULL, "DIR",
                "jobs, results and logs (default OUT.run); keep it to resume", 0),
    CLI_OPT_STR(gen_args_t, t_user, "template-user", "\\n\\nHuman: {content}", "T",
                "chat rendering of a user message", 0),
    CLI_OPT_STR(gen_args_t, t_assistant, "template-assistant", "\\n\\nAssistant: {content}", "T",
                "of an assistant message", 0),
    CLI_OPT_STR(gen_args_t, t_system, "template-system", "{content}", "T", "of a system message",
                0),
    CLI_OPT_STR(gen_args_t, t_end, "template-end", "\\n\\nAssistant:", "T",
                "appended after the messages", 0),
    GI(delay_ms, "job-delay-ms", 0, 600000, "0", "N", "testing: every job takes at least N ms"),
};
#undef GI

const cli_opts_t cli_generate_opts =
    CLI_OPTS("generate", "rlhf generate --model DIR --prompts FILE --out FILE [options]",
             "K sampled completions per prompt by rollout workers through a local master.\n",
             gen_opt_table, NULL);

int cmd_generate(int argc, char **argv) {
    gen_args_t a = {0};
    int prc = cli_opts_parse(&cli_generate_opts, argc, argv, &a);
    if (prc != CLI_OPTS_GO) return prc;
    const char *model = a.model, *prompts = a.prompts, *out = a.out, *run_dir = a.run_dir;
    int K = a.K, max_new = a.max_new, top_k = a.top_k, workers = a.workers, delay_ms = a.delay_ms;
    float temp = a.temp, top_p = a.top_p;
    long seed = a.seed;
    /* the templates' escapes become characters (in copies: the defaults are literals) */
    static char tb[4][4096];
    const char *tv[4] = {a.t_user, a.t_assistant, a.t_system, a.t_end};
    for (int i = 0; i < 4; i++) snprintf(tb[i], sizeof tb[i], "%s", tv[i]), unescape(tb[i]);
    gload_t g = {.t_user = tb[0], .t_assistant = tb[1], .t_system = tb[2], .t_end = tb[3]};
    if (!model || !prompts || !out) {
        fprintf(stderr, "rlhf generate: --model, --prompts and --out are required\n");
        return cli_usage_error("generate");
    }
    double t0 = cli_now_ms();
    char rdir[PATH_MAX], amodel[PATH_MAX];
    snprintf(rdir, sizeof rdir, "%s", run_dir ? run_dir : "");
    if (!run_dir) snprintf(rdir, sizeof rdir, "%.4000s.run", out);
    if (!realpath(model, amodel)) {
        fprintf(stderr, "rlhf generate: %s: %s\n", model, strerror(errno));
        return 1;
    }
    gpt_config_t cfg;
    int rc = hf_config_read(amodel, &cfg);
    if (rc < 0) return cli_fail("generate", "model", rc);
    g.ctx = cfg.n_positions;
    g.tok = tok_load(amodel);
    if (!g.tok) return cli_fail("generate", "tokenizer", RL_EINVAL);
    int ret = 1;
    g.seen = json_object();
    jsonl_writer_t w = {.f = {.fd = -1}};
    long n = jsonl_read(prompts, load_prompt, &g);
    if (n < 0) {
        cli_fail("generate", "prompts", (int)n);
        goto done;
    }
    if (g.n == 0) {
        fprintf(stderr, "rlhf generate: %s: no prompts\n", prompts);
        goto done;
    }
    gen_settings_t gs = {.k = K,
                         .max_new = max_new,
                         .top_k = top_k,
                         .eot = tok_eot(g.tok),
                         .vocab_limit = tok_vocab_size(g.tok),
                         .delay_ms = delay_ms,
                         .temperature = temp,
                         .top_p = top_p,
                         .seed = (uint64_t)seed};
    const char *master = getenv("RLHF_MASTER"); /* the run's cluster: its workers, not ours */
    if (master && master[0])
        fprintf(stderr, "rlhf generate: %d prompts x %d completions, run dir %s\n", g.n, K, rdir);
    else
        fprintf(stderr,
                "rlhf generate: %d prompts x %d completions, %d rollout workers, run dir %s\n", g.n,
                K, workers, rdir);
    if ((rc = generate_all(&g, rdir, amodel, &gs, workers)) < 0) {
        cli_fail("generate", "local run", rc);
        goto done;
    }
    int missing = 0;
    for (int i = 0; i < g.n; i++) missing += !g.p[i].result;
    if (g.failed || missing) {
        fprintf(stderr,
                "rlhf generate: %d of %d prompts failed and %d are not finished (see "
                "%s/cluster/master.log)\n",
                g.failed, g.n, missing - g.failed, rdir);
        goto done;
    }
    if ((rc = jsonl_open(&w, out)) < 0) {
        cli_fail("generate", "output", rc);
        goto done;
    }
    long n_tok = 0, n_eot = 0;
    for (int i = 0; i < g.n && rc == 0; i++) {
        const Rlhf__GenerateOutput *go = g.p[i].result;
        json_t *outc = json_array();
        if (go->n_completions != (size_t)K) {
            json_decref(outc);
            rc = rl_fail(RL_EPROTO, "job %d has %zu completions, not %d", i + 1, go->n_completions,
                         K);
            break;
        }
        for (size_t ci = 0; ci < go->n_completions; ci++) {
            const Rlhf__Completion *cp = go->completions[ci];
            size_t nt = cp->n_tokens;
            int *ids = malloc((nt ? nt : 1) * sizeof *ids);
            json_t *jt = json_array(), *jl = json_array();
            double lp = 0;
            for (size_t k = 0; ids && k < nt; k++) {
                ids[k] = cp->tokens[k];
                json_array_append_new(jt, json_integer(cp->tokens[k]));
                if (k < cp->n_logprobs) lp += (double)cp->logprobs[k];
            }
            for (size_t k = 0; k < cp->n_logprobs; k++)
                json_array_append_new(jl, json_real(cp->logprobs[k]));
            int fin = (int)cp->finish;
            /* the text leaves the end-of-text token out; the tokens keep it */
            size_t nd = nt && fin == 1 ? nt - 1 : nt;
            char *text = NULL, cid[300];
            size_t tl;
            rc = ids ? tok_decode(g.tok, ids, nd, &text, &tl) : rl_fail(RL_ENOMEM, "no memory");
            free(ids);
            if (rc < 0) {
                json_decref(jt), json_decref(jl);
                break;
            }
            /* a sample may end inside a multi-byte character: JSON needs valid UTF-8 */
            size_t ul;
            char *utf8 = tok_utf8_lossy(text, tl, &ul);
            free(text);
            if (!(text = utf8)) {
                json_decref(jt), json_decref(jl);
                rc = rl_fail(RL_ENOMEM, "out of memory");
                break;
            }
            snprintf(cid, sizeof cid, "%.256s-%zu", g.p[i].id, ci);
            json_array_append_new(outc, json_pack("{s:s, s:s, s:o, s:f, s:o, s:s}", "id", cid,
                                                  "text", text, "tokens", jt, "logprob", lp,
                                                  "logprobs", jl, "finish",
                                                  fin == 1   ? "eot"
                                                  : fin == 2 ? "stop"
                                                             : "length"));
            free(text);
            n_tok += (long)nt;
            n_eot += fin == 1;
        }
        if (rc == 0)
            rc = jsonl_write(&w, json_pack("{s:s, s:s, s:o}", "prompt_id", g.p[i].id, "prompt",
                                           g.p[i].text, "completions", outc));
        else
            json_decref(outc);
    }
    if (rc == 0) rc = jsonl_commit(&w);
    if (rc < 0) {
        jsonl_abort(&w);
        cli_fail("generate", "writing the completions", rc);
        goto done;
    }
    double secs = (cli_now_ms() - t0) / 1000;
    ret = cli_print_json(json_pack("{s:s, s:i, s:i, s:I, s:f, s:f, s:f}", "out", out, "prompts",
                                   g.n, "k", K, "tokens", (json_int_t)n_tok, "eot_rate",
                                   (double)n_eot / (g.n * K), "seconds", secs, "tokens_per_s",
                                   n_tok / (secs > 0 ? secs : 1e-9)));
done:
    for (int i = 0; i < g.n; i++) {
        free(g.p[i].id);
        free(g.p[i].text);
        free(g.p[i].ids);
        if (g.p[i].result) rlhf__generate_output__free_unpacked(g.p[i].result, NULL);
    }
    free(g.p);
    json_decref(g.seen);
    tok_destroy(&g.tok);
    return ret;
}
