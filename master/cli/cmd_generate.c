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
 * tokenizer and written as one GENERATE job per prompt to RUN_DIR/jobs.jsonl. A local master and
 * `--workers` rollout workers run them (local_run_jobs), and the results become the completions
 * JSONL, written atomically:
 *   {"prompt_id","prompt","completions":[{"id","text","tokens","logprob","logprobs","finish"}]}
 * Sample i of a prompt is drawn with the seed derived from (--seed, prompt id) and stream i, so
 * the file does not depend on the number of workers or on which worker ran which prompt. An
 * interrupted run continues where it stopped when run again with the same arguments: the
 * master's results.jsonl records every finished prompt, and those are not generated again.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "base/err.h"
#include "base/fs.h"
#include "nn/hf.h"
#include "base/jsonl.h"
#include "nn/tok.h"

typedef struct {
    char *id, *text; /* prompt id, rendered prompt */
    int *ids;
    size_t n;
    json_t *result; /* the master's record, once read back */
} gprompt_t;

typedef struct {
    tok_t *tok;
    int ctx;
    const char *t_user, *t_assistant, *t_system, *t_end;
    gprompt_t *p;
    int n, cap;
    json_t *seen; /* prompt ids so far (a set) */
} gload_t;

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
    if (json_is_string(jp)) {
        rc = render(&text, &len, "{content}", json_string_value(jp));
    } else if (json_is_array(jm) && json_array_size(jm) > 0) {
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
    } else {
        rc = rl_fail(RL_EFORMAT,
                     "%s: a \"prompt\" string or a non-empty \"messages\" array is "
                     "required",
                     where);
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
    if ((rc = tok_encode(g->tok, text, len, 0, &p->ids, &p->n)) < 0)
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

static int read_result(void *ctx, json_t *o, const char *where) {
    (void)where;
    gload_t *g = ctx;
    json_t *jid = json_object_get(o, "job_id");
    if (!json_is_integer(jid)) return 0;
    json_int_t id = json_integer_value(jid);
    if (id < 1 || id > g->n) return 0;
    gprompt_t *p = &g->p[id - 1];
    json_decref(p->result);
    p->result = json_incref(o);
    return 0;
}

static const char generate_help[] =
    "usage: rlhf generate --model DIR --prompts FILE --out FILE [options]\n\n"
    "K sampled completions per prompt by rollout workers through a local master.\n\n"
    "  --k N                completions per prompt (default 4)\n"
    "  --max-new N          tokens per completion at most (default 32)\n"
    "  --temperature T      sampling temperature (default 1; 0 = greedy)\n"
    "  --top-k N            keep the N most probable tokens (default 0: all)\n"
    "  --top-p P            nucleus sampling mass (default 1: all)\n"
    "  --seed S             run seed; sample i of prompt p uses (S, p's id, i) (default 1)\n"
    "  --workers N          rollout workers (default 2)\n"
    "  --run-dir DIR        jobs, results and logs (default OUT.run); keep it to resume\n"
    "  --template-user T    chat rendering of a user message (default \"\\n\\nHuman: "
    "{content}\")\n"
    "  --template-assistant T   of an assistant message (default \"\\n\\nAssistant: "
    "{content}\")\n"
    "  --template-system T  of a system message (default \"{content}\")\n"
    "  --template-end T     appended after the messages (default \"\\n\\nAssistant:\")\n"
    "  --job-delay-ms N     testing: every job takes at least N ms\n";

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

int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {{"model", 1, 0, 'm'},
                                         {"prompts", 1, 0, 'p'},
                                         {"out", 1, 0, 'o'},
                                         {"k", 1, 0, 'k'},
                                         {"max-new", 1, 0, 'n'},
                                         {"temperature", 1, 0, 't'},
                                         {"top-k", 1, 0, 'K'},
                                         {"top-p", 1, 0, 'P'},
                                         {"seed", 1, 0, 's'},
                                         {"workers", 1, 0, 'w'},
                                         {"run-dir", 1, 0, 'r'},
                                         {"template-user", 1, 0, 'U'},
                                         {"template-assistant", 1, 0, 'A'},
                                         {"template-system", 1, 0, 'S'},
                                         {"template-end", 1, 0, 'E'},
                                         {"job-delay-ms", 1, 0, 'D'},
                                         {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *prompts = NULL, *out = NULL, *run_dir = NULL;
    int K = 4, max_new = 32, top_k = 0, workers = 2, delay_ms = 0, c;
    float temp = 1.0f, top_p = 1.0f;
    long seed = 1;
    gload_t g = {.t_user = "\n\nHuman: {content}",
                 .t_assistant = "\n\nAssistant: {content}",
                 .t_system = "{content}",
                 .t_end = "\n\nAssistant:"};
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'p':
            prompts = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'r':
            run_dir = optarg;
            break;
        case 'k':
            bad = cli_int("generate", "k", optarg, 1, 256, &K);
            break;
        case 'n':
            bad = cli_int("generate", "max-new", optarg, 1, 1 << 20, &max_new);
            break;
        case 't':
            bad = cli_float("generate", "temperature", optarg, 0, 100, &temp);
            break;
        case 'K':
            bad = cli_int("generate", "top-k", optarg, 0, INT_MAX, &top_k);
            break;
        case 'P':
            bad = cli_float("generate", "top-p", optarg, 1e-6, 1, &top_p);
            break;
        case 's':
            bad = cli_long("generate", "seed", optarg, 0, LONG_MAX, &seed);
            break;
        case 'w':
            bad = cli_int("generate", "workers", optarg, 1, 32, &workers);
            break;
        case 'U':
            g.t_user = unescape(optarg);
            break;
        case 'A':
            g.t_assistant = unescape(optarg);
            break;
        case 'S':
            g.t_system = unescape(optarg);
            break;
        case 'E':
            g.t_end = unescape(optarg);
            break;
        case 'D':
            bad = cli_int("generate", "job-delay-ms", optarg, 0, 600000, &delay_ms);
            break;
        case 'h':
            fputs(generate_help, stdout);
            return 0;
        default:
            return cli_usage_error("generate");
        }
        if (bad < 0) return 2;
    }
    if (!model || !prompts || !out) {
        fprintf(stderr, "rlhf generate: --model, --prompts and --out are required\n");
        return cli_usage_error("generate");
    }
    double t0 = cli_now_ms();
    char rdir[PATH_MAX], jobs[PATH_MAX + 16], results[PATH_MAX + 16], amodel[PATH_MAX];
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
    /* the job set: one GENERATE job per prompt, id = its position */
    json_t *arr = json_array();
    char *jtxt = NULL;
    size_t jlen = 0;
    for (int i = 0; i < g.n; i++) {
        json_t *ids = json_array();
        for (size_t k = 0; k < g.p[i].n; k++)
            json_array_append_new(ids, json_integer(g.p[i].ids[k]));
        json_t *job = json_pack("{s:i, s:s, s:s, s:I, s:o, s:i, s:i, s:f, s:i, s:f, s:i, s:i}",
                                "id", i + 1, "kind", "generate", "model", amodel, "seed",
                                (json_int_t)prompt_seed((uint64_t)seed, g.p[i].id), "prompt", ids,
                                "max_new_tokens", max_new, "n_samples", K, "temperature",
                                (double)temp, "top_k", top_k, "top_p", (double)top_p, "eot",
                                tok_eot(g.tok), "vocab_limit", tok_vocab_size(g.tok));
        if (job && delay_ms) json_object_set_new(job, "delay_ms", json_integer(delay_ms));
        char *line = job ? json_dumps(job, JSON_COMPACT) : NULL;
        json_decref(job);
        char *nt = line ? realloc(jtxt, jlen + strlen(line) + 2) : NULL;
        if (!nt) {
            free(line);
            free(jtxt);
            json_decref(arr);
            fprintf(stderr, "rlhf generate: out of memory\n");
            goto done;
        }
        jtxt = nt;
        jlen += (size_t)sprintf(jtxt + jlen, "%s\n", line);
        free(line);
    }
    json_decref(arr);
    /* a run directory from an earlier run continues only with the same job set */
    snprintf(jobs, sizeof jobs, "%s/jobs.jsonl", rdir);
    snprintf(results, sizeof results, "%s/results.jsonl", rdir);
    char *old = NULL;
    size_t old_len = 0;
    if (fs_read_all(jobs, &old, &old_len) == 0) {
        int same = old_len == jlen && !memcmp(old, jtxt, jlen);
        free(old);
        if (!same) {
            free(jtxt);
            fprintf(stderr,
                    "rlhf generate: %s holds a different job set (other prompts, model or "
                    "settings); remove it or choose another --run-dir\n",
                    rdir);
            goto done;
        }
    } else if ((rc = fs_mkdir_p(rdir)) < 0 || (rc = fs_write_atomic(jobs, jtxt, jlen)) < 0) {
        free(jtxt);
        cli_fail("generate", "run directory", rc);
        goto done;
    }
    free(jtxt);
    fprintf(stderr, "rlhf generate: %d prompts x %d completions, %d rollout workers, run dir %s\n",
            g.n, K, workers, rdir);
    if ((rc = local_run_jobs(rdir, jobs, workers, 0, 0)) < 0) {
        cli_fail("generate", "local run", rc);
        goto done;
    }
    if (access(results, F_OK) == 0 && (rc = (int)jsonl_read(results, read_result, &g)) < 0) {
        cli_fail("generate", "results", rc);
        goto done;
    }
    int missing = 0, failed = 0;
    for (int i = 0; i < g.n; i++) {
        json_t *r = g.p[i].result;
        if (!r)
            missing++;
        else if (!json_is_string(json_object_get(r, "status")) ||
                 strcmp(json_string_value(json_object_get(r, "status")), "done"))
            failed++;
    }
    if (failed || missing) {
        fprintf(stderr,
                "rlhf generate: %d of %d prompts failed and %d are not finished (see %s); run "
                "the same command again to continue\n",
                failed, g.n, missing, results);
        goto done;
    }
    if ((rc = jsonl_open(&w, out)) < 0) {
        cli_fail("generate", "output", rc);
        goto done;
    }
    long n_tok = 0, n_eot = 0;
    for (int i = 0; i < g.n && rc == 0; i++) {
        json_t *cs = json_object_get(g.p[i].result, "completions"), *comp, *outc = json_array();
        size_t ci;
        if (json_array_size(cs) != (size_t)K) {
            json_decref(outc);
            rc = rl_fail(RL_EPROTO, "%s: job %d has %zu completions, not %d", results, i + 1,
                         json_array_size(cs), K);
            break;
        }
        json_array_foreach(cs, ci, comp) {
            json_t *jt = json_object_get(comp, "tokens"), *jl = json_object_get(comp, "logprobs");
            size_t nt = json_array_size(jt);
            int *ids = malloc((nt ? nt : 1) * sizeof *ids);
            double lp = 0;
            for (size_t k = 0; ids && k < nt; k++) {
                ids[k] = (int)json_integer_value(json_array_get(jt, k));
                lp += json_number_value(json_array_get(jl, k));
            }
            int fin = (int)json_integer_value(json_object_get(comp, "finish"));
            /* the text leaves the end-of-text token out; the tokens keep it */
            size_t nd = nt && fin == 1 ? nt - 1 : nt;
            char *text = NULL, cid[300];
            size_t tl;
            rc = ids ? tok_decode(g.tok, ids, nd, &text, &tl) : rl_fail(RL_ENOMEM, "no memory");
            free(ids);
            if (rc < 0) break;
            /* a sample may end inside a multi-byte character: JSON needs valid UTF-8 */
            size_t ul;
            char *utf8 = tok_utf8_lossy(text, tl, &ul);
            free(text);
            if (!(text = utf8)) {
                rc = rl_fail(RL_ENOMEM, "out of memory");
                break;
            }
            snprintf(cid, sizeof cid, "%.256s-%zu", g.p[i].id, ci);
            json_array_append_new(outc, json_pack("{s:s, s:s, s:O, s:f, s:O, s:s}", "id", cid,
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
        json_decref(g.p[i].result);
    }
    free(g.p);
    json_decref(g.seen);
    tok_destroy(&g.tok);
    return ret;
}
