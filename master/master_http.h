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

/* What master_http_start does before it binds (after sec_init): the token read or its file
 * named (RUN_DIR/http.token: RUN_DIR must exist), the TLS context loaded, so that a bad file
 * stops the master before it touches its journal. Returns 0 (also when called again) or a
 * negative RL_E* code naming the file or key at fault. */
int master_http_prepare(master_t *m);

/* Starts the HTTP server on host:port (port 0: any free port; m->http_port gets the bound
 * one), with the token and TLS of m->cfg: the token of master.http_token_file (refused unless
 * mode 0600 and one token of 32+ characters), else that of the key set's http.token (beside the
 * master.key sec_init loaded), else a new one written to RUN_DIR/http.token once the port is
 * bound; none with master.insecure. HTTPS with
 * master.tls_cert and master.tls_key (both or neither; the key mode 0600). Calls
 * master_http_prepare() unless it was called. Returns 0 or a negative RL_E* code whose detail
 * names the file or key at fault; master_http_stop() frees what was set up either way. */
int master_http_start(master_t *m, const char *host, int port);

/* The file holding the bearer token the HTTP server wants (absolute), or NULL when it wants
 * none (master.insecure, or no HTTP). */
const char *master_http_token_path(const master_t *m);

/* The certificate (absolute path) of an HTTPS server, or NULL for plain HTTP. */
const char *master_http_cert_path(const master_t *m);

/* Stops listening and frees the HTTP server; safe to call when it never started. */
void master_http_stop(master_t *m);

#endif
