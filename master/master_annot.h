/*
 * master_annot.h - (prefix mann_) human annotators of a run, on the master: their tokens, the
 * annotate stage with `annotate.source: human`, the rankings they submit through the HTTP API
 * (master_http.c serves the page and routes /api/annotate/... here), all journaled.
 *
 * Annotators. `rlhf annotators add NAME --run RUN` asks the master (POST /api/runs/RUN/
 * annotators, with the master's token) for a personal token: 256 random bits, handed out once
 * in the link it prints (http://HOST:PORT/annotate#token=TOKEN: a fragment, which browsers send
 * to no server and no Referer carries) and kept only as its BLAKE2b digest, in the journal
 * (JournalAnnotator). A request of the annotation API carries it as `Authorization: Bearer`,
 * and sees the assignments of that annotator alone.
 *
 * The stage. master_run.c hands a human annotate stage (argv `annotate ... --source human`) to
 * mann_stage_step at every tick. On its first step it reads the completions and guidelines the
 * argv names, and opens (journaled: JournalAnnotate with the time, from which --deadline
 * counts). Annotators pull assignments (annot_pool.h: --overlap distinct annotators per prompt,
 * leased for --lease seconds, the display order drawn per annotator and recorded as `shown`).
 * A submission is validated by the rules of file import (annot_rec_from_json, then the store's
 * refusal of a second record for a (prompt, annotator)), journaled and fsync'ed
 * (JournalAnnotation, the record as the store writes it), and only then acknowledged and added
 * to the store. The stage closes when every prompt has its rankings, when the deadline passes,
 * or when `rlhf annotate close RUN` says so (journaled); it then writes the store (--out)
 * atomically and the pipeline goes on. A restarted master replays annotators, records and the
 * stage's state from the journal; leases are not journaled (an open page asks again).
 */
#ifndef RLHF_MASTER_ANNOT_H
#define RLHF_MASTER_ANNOT_H

#include <stddef.h>

#include <jansson.h>

#include "master.h"

struct Rlhf__JournalRecord;

/* One step of run `run`'s human annotate stage, whose command line is argv (the stage's argv
 * with {run} replaced, JSON strings) and relative paths are in cwd; its progress lines go to
 * the stage's log (what rlhf status shows). Returns 1 when the stage is done (the store
 * written), 0 while it waits, -1 when it failed with why (a file unreadable). */
int mann_stage_step(master_t *m, const char *run, const char *cwd, const char *log, json_t *argv,
                    char *why, size_t n);

/* Whether argv (a stage's argv, JSON strings) is a human annotate stage. */
int mann_is_human(json_t *argv);

/* A new annotator NAME (1-64 letters, digits, '-', '_', '.') of run `run` (the caller checked
 * that it exists): journaled with its token's digest. *out gets {"run","annotator","token",
 * "link"}, the link BASE_URL/annotate#token=TOKEN. Returns the HTTP status (200; 400 a bad
 * name; 409 the name is taken; 503 the journal) with *out {"error": why} when not 200. */
int mann_annotator_add(master_t *m, const char *run, const char *name, const char *base_url,
                       json_t **out);

/* Closes run `run`'s annotate stage now (rlhf annotate close): journaled; the stage ends at the
 * next tick. Returns the HTTP status (200, 409 not at its annotate stage or closed) and *out
 * as above. */
int mann_close(master_t *m, const char *run, json_t **out);

/* The annotation API (path below /api/annotate: "/me", "/next", "/submit", "/skip",
 * "/progress") for the bearer token tok (tlen bytes; NULL when none came). Returns the HTTP
 * status and *out, the JSON answer (or {"error": why}); 401 for a token nobody holds. */
int mann_api(master_t *m, const char *tok, size_t tlen, const char *method, const char *path,
             const char *body, size_t blen, json_t **out);

/* The admin view of run `run`'s annotation: each annotator's progress, seconds per ranking,
 * agreement with the others and with the leave-one-out consensus, and the run's agreement
 * figures (those of rlhf aggregate). NULL when the run has no human annotation. */
json_t *mann_admin_json(master_t *m, const char *run);

/* The annotation figures in Prometheus text (appended to /metrics); malloc'ed, or NULL. */
char *mann_metrics_text(master_t *m);

/* A journal record of human annotation replayed at start (JournalAnnotator, JournalAnnotation,
 * JournalAnnotate). Returns 1 when it was one (applied), 0 when it is another kind, or RL_E*. */
int mann_replay(master_t *m, const struct Rlhf__JournalRecord *rec);

/* Writes the live annotation state into a snapshot (journal_compact's writer). Returns 0 or
 * RL_E*. */
int mann_snapshot(master_t *m);

/* Frees the annotation state. */
void mann_free(master_t *m);

#endif
