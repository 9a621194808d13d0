/*
 * master.h - rlhf-master's state, shared by its files: master_main.c (the libuv loop, the
 * ROUTER socket, message handling, the cron timer, results) and master_http.c (/healthz,
 * /status, /metrics on the same loop, declared in master_http.h). Only the struct lives here:
 * master_main.c calls into master_http.h, never the other way round.
 */
#ifndef RLHF_MASTER_H
#define RLHF_MASTER_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <uv.h>

#include "base/cfg.h"
#include "master_sched.h"
#include "net/wire.h"

/* Bad-input classes counted by the master: wire_bad_t, plus messages that decode fine but make
 * no sense from this peer (a worker sending JobAssign, a result from nobody). */
#define MASTER_BAD_UNEXPECTED WIRE_BAD_COUNT
#define MASTER_BAD_COUNT      (WIRE_BAD_COUNT + 1)

typedef struct master_http master_http_t;

typedef struct {
    cfg_run_t cfg;
    uv_loop_t *loop;
    void *zctx, *router;
    uv_poll_t zpoll;    /* ZMQ_FD: readable = "ZMQ_EVENTS may have changed" (edge) */
    uv_prepare_t zprep; /* before the loop blocks: re-check ZMQ_EVENTS, never miss an edge */
    uv_idle_t zidle;    /* active only while a drain stopped early with messages left */
    uv_timer_t cron;
    uv_signal_t sigterm, sigint;
    int draining;
    int zhandles; /* zpoll, zprep, zidle initialised */
    char master_id[40];
    char endpoint[256];
    double start_ms;
    double start_unix;
    sched_t sched;
    FILE *results; /* run_dir/results.jsonl, appended and fsync'ed per record */
    char results_path[4096];
    int results_rfd;          /* the same file read-only: records read back for clients */
    int64_t results_last_off; /* offset of the line results_append wrote last */
    /* counters */
    uint64_t n_recv, n_sent, n_send_fail, n_bad[MASTER_BAD_COUNT], n_registrations;
    uint64_t n_results_recorded;
    /* clients: jobs submitted (new), resubmitted (known, same spec), rejected; fetch requests */
    uint64_t n_submitted, n_resubmitted, n_submit_rejected, n_fetches;
    /* newest weights announced (WeightsAnnounce from the learner): forwarded to every worker */
    uint64_t weights_version;
    char weights_endpoint[256];
    json_t *ppo_stats;    /* the newest PPO update's figures (TrainOutput.ppo), or NULL */
    uint64_t ppo_version; /* the policy version that update published */
    master_http_t *http;
    int http_port;
    int stopping;
} master_t;

#endif
