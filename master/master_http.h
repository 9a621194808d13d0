/*
 * master_http.h - rlhf-master's HTTP side (master_http.c): /healthz, /status and /metrics,
 * served by h2o on the master's libuv loop, reading the state in master.h.
 */
#ifndef RLHF_MASTER_HTTP_H
#define RLHF_MASTER_HTTP_H

#include <stddef.h>

#include <jansson.h>

#include "master.h"

/* JSON status of the run (the /status body); new reference. */
json_t *master_status_json(master_t *m);

/* Prometheus text exposition of the master's metrics; malloc'ed, *len set. */
char *master_metrics_text(master_t *m, size_t *len);

/* Starts the HTTP server on host:port (port 0: any free port; m->http_port gets the bound
 * one). Returns 0 or a negative RL_E* code. */
int master_http_start(master_t *m, const char *host, int port);

/* Stops listening and frees the HTTP server; safe to call when it never started. */
void master_http_stop(master_t *m);

#endif
