/*
 * master_dump.c - `rlhf-master --dump-results RUN_DIR`: the finished jobs in a master's journal
 * as JSON lines, one per job, without disturbing a master that is running on it (the journal is
 * only read). Each line: job_id, ns, kind, status, attempt, seed, worker, elapsed_ms,
 * latency_ms (from its last lease to its end, by the master's clock), reason (failed), and the
 * output decoded (GENERATE: tokens / completions; SCORE: scores, ref_logprobs; TRAIN: loss,
 * train_step, params_crc32c, ...). For tests, benchmarks and people reading a run's history.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/err.h"
#include "journal.h"
#include "master_dump.h"
#include "net/wire.h"

static json_t *output_json(int kind, const ProtobufCBinaryData *payload) {
    json_t *o = json_object();
    if (kind == RLHF__JOB_KIND__JOB_KIND_GENERATE) {
        Rlhf__GenerateOutput *g = rlhf__generate_output__unpack(NULL, payload->len, payload->data);
        if (!g) {
            json_decref(o);
            return NULL;
        }
        json_t *t = json_array();
        for (size_t i = 0; i < g->n_tokens; i++)
            json_array_append_new(t, json_integer(g->tokens[i]));
        json_object_set_new(o, "tokens", t);
        if (g->n_completions) {
            json_t *cs = json_array();
            for (size_t c = 0; c < g->n_completions; c++) {
                const Rlhf__Completion *cp = g->completions[c];
                json_t *ct = json_array(), *cl = json_array();
                for (size_t i = 0; i < cp->n_tokens; i++)
                    json_array_append_new(ct, json_integer(cp->tokens[i]));
                for (size_t i = 0; i < cp->n_logprobs; i++)
                    json_array_append_new(cl, json_real(cp->logprobs[i]));
                json_array_append_new(cs, json_pack("{s:o, s:o, s:i}", "tokens", ct, "logprobs", cl,
                                                    "finish", (int)cp->finish));
            }
            json_object_set_new(o, "completions", cs);
        }
        rlhf__generate_output__free_unpacked(g, NULL);
    } else if (kind == RLHF__JOB_KIND__JOB_KIND_SCORE) {
        Rlhf__ScoreOutput *so = rlhf__score_output__unpack(NULL, payload->len, payload->data);
        if (!so) {
            json_decref(o);
            return NULL;
        }
        json_t *sc = json_array(), *rl = json_array();
        for (size_t i = 0; i < so->n_scores; i++)
            json_array_append_new(sc, json_real(so->scores[i]));
        for (size_t i = 0; i < so->n_ref_logprobs; i++) {
            json_t *row = json_array();
            for (size_t k = 0; k < so->ref_logprobs[i]->n_logprobs; k++)
                json_array_append_new(row, json_real(so->ref_logprobs[i]->logprobs[k]));
            json_array_append_new(rl, row);
        }
        json_object_set_new(o, "scores", sc);
        json_object_set_new(o, "ref_logprobs", rl);
        rlhf__score_output__free_unpacked(so, NULL);
    } else if (kind == RLHF__JOB_KIND__JOB_KIND_TRAIN) {
        Rlhf__TrainOutput *t = rlhf__train_output__unpack(NULL, payload->len, payload->data);
        if (!t) {
            json_decref(o);
            return NULL;
        }
        json_t *l = json_array();
        for (size_t i = 0; i < t->n_loss; i++) json_array_append_new(l, json_real(t->loss[i]));
        json_object_set_new(o, "loss", l);
        json_object_set_new(o, "train_step", json_integer((json_int_t)t->step));
        json_object_set_new(o, "params_crc32c", json_integer(t->params_crc32c));
        json_object_set_new(o, "shards", json_integer(t->shards));
        json_object_set_new(o, "shards_in_sync", json_integer(t->shards_in_sync));
        json_object_set_new(o, "checkpoint", json_string(t->checkpoint ? t->checkpoint : ""));
        json_object_set_new(o, "replayed", json_boolean(t->replayed));
        json_object_set_new(o, "step_ms", json_real(t->step_ms));
        if (t->ppo) {
            json_object_set_new(o, "policy_version",
                                json_integer((json_int_t)t->ppo->policy_version));
            json_t *st = json_loads(t->ppo->stats_json ? t->ppo->stats_json : "", 0, NULL);
            if (st) json_object_set_new(o, "ppo", st);
        }
        rlhf__train_output__free_unpacked(t, NULL);
    }
    return o;
}

typedef struct {
    json_t *jobs;  /* "ns\tid" -> {kind, seed, time of its last lease} */
    json_t *lines; /* one per end record, in journal order */
} dump_t;

static void key_of(char *k, size_t n, const char *ns, uint64_t id) {
    snprintf(k, n, "%s\t%" PRIu64, ns ? ns : "", id);
}

static int dump_one(void *ctx, const uint8_t *buf, size_t len, journal_loc_t loc) {
    (void)loc;
    dump_t *d = ctx;
    Rlhf__JournalRecord *rec = rlhf__journal_record__unpack(NULL, len, buf);
    if (!rec) return rl_fail(RL_EFORMAT, "journal: a record does not decode");
    char k[512];
    if (rec->body_case == RLHF__JOURNAL_RECORD__BODY_JOB && rec->job->spec) {
        key_of(k, sizeof k, rec->job->ns, rec->job->spec->id);
        json_object_set_new(d->jobs, k,
                            json_pack("{s:i, s:I, s:f}", "kind", rec->job->spec->kind, "seed",
                                      (json_int_t)rec->job->spec->seed, "leased", 0.0));
    } else if (rec->body_case == RLHF__JOURNAL_RECORD__BODY_LEASE) {
        key_of(k, sizeof k, rec->lease->ns, rec->lease->id);
        json_t *j = json_object_get(d->jobs, k);
        if (j) json_object_set_new(j, "leased", json_real(rec->time_unix));
    } else if (rec->body_case == RLHF__JOURNAL_RECORD__BODY_JOB_END) {
        const Rlhf__JournalJobEnd *e = rec->job_end;
        key_of(k, sizeof k, e->ns, e->id);
        json_t *j = json_object_get(d->jobs, k);
        int kind = j ? (int)json_integer_value(json_object_get(j, "kind")) : 0;
        int done = e->status == RLHF__JOB_STATUS__JOB_STATUS_DONE;
        json_t *o = done ? output_json(kind, &e->output) : json_object();
        if (!o) o = json_object();
        double leased = j ? json_number_value(json_object_get(j, "leased")) : 0;
        json_object_set_new(o, "job_id", json_integer((json_int_t)e->id));
        json_object_set_new(o, "ns", json_string(e->ns ? e->ns : ""));
        json_object_set_new(o, "kind", json_string(wire_job_kind_name(kind)));
        json_object_set_new(o, "status", json_string(done ? "done" : "failed"));
        json_object_set_new(o, "attempt", json_integer(e->attempt));
        json_object_set_new(o, "seed",
                            json_integer(j ? json_integer_value(json_object_get(j, "seed")) : 0));
        json_object_set_new(o, "worker", json_string(e->worker ? e->worker : ""));
        json_object_set_new(o, "elapsed_ms", json_real(e->elapsed_ms));
        json_object_set_new(o, "latency_ms",
                            json_real(leased > 0 ? (rec->time_unix - leased) * 1000 : 0));
        if (!done) {
            json_object_set_new(o, "reason", json_string(e->reason ? e->reason : ""));
            json_object_set_new(o, "deterministic", json_boolean(e->deterministic));
        }
        json_array_append_new(d->lines, o);
    }
    rlhf__journal_record__free_unpacked(rec, NULL);
    return 0;
}

int master_dump_results(const char *run_dir, FILE *out) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/journal", run_dir);
    dump_t d = {json_object(), json_array()};
    int rc = journal_scan(dir, dump_one, &d);
    size_t i;
    json_t *o;
    json_array_foreach(d.lines, i, o) {
        char *s = json_dumps(o, JSON_COMPACT);
        if (s) fprintf(out, "%s\n", s);
        free(s);
    }
    json_decref(d.jobs), json_decref(d.lines);
    return rc;
}
