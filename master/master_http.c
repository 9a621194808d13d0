/*
 * master_http.c - the master's HTTP endpoints, served by H2O on the master's own libuv loop:
 *   GET /healthz  "ok" - open to anyone (liveness probes)
 *   GET /status   JSON: workers (role, state, last seen, current job), queue depths, jobs
 *                 done / retried / failed, dropped results, bad messages, current stage
 *   GET /metrics  Prometheus text exposition format 0.0.4
 * Every path but /healthz wants `Authorization: Bearer TOKEN` (the token of
 * master.http_token_file, else the key set's http.token, else one made at start and written to
 * RUN_DIR/http.token); any other request to it is answered 401 and counted
 * (rlhf_http_unauthorized_total) unless master.insecure. With master.tls_cert and
 * master.tls_key the listener speaks TLS only (H2O's OpenSSL integration: the accept context's
 * SSL_CTX). Binds to the configured host (loopback by default). Handlers read the master's state
 * and never touch the ZeroMQ socket.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <unistd.h>

#include <h2o.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "base/err.h"
#include "master_annot.h"
#include "master_http.h"
#include "master_run.h"
#include "master_ui.h"
#include "net/sec.h"
#include "net/secret.h"

struct master_http {
    h2o_globalconf_t config;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    uv_tcp_t listener;
    master_t *m;
    SSL_CTX *ssl;                 /* TLS: the listener's context (accept_ctx.ssl_ctx), or NULL */
    int auth;                     /* requests but /healthz need the token */
    char token[SECRET_TOKEN_CAP]; /* the bearer token */
    char token_path[PATH_MAX];    /* the file that holds it, absolute */
    char cert_path[PATH_MAX];     /* with TLS: the certificate, absolute */
    uint64_t n_unauthorized;      /* requests refused for want of the token */
    uint64_t n_csrf;              /* POSTs refused as cross-site (Origin, Sec-Fetch-Site, type) */
    uint64_t n_bad_requests;      /* API requests answered 4xx (but 401) */
};

/* H2O passes our handler struct; the server hangs off a larger one. */
typedef struct {
    h2o_handler_t super;
    master_http_t *h;
    int open; /* served without the master's token (the annotation API checks its own) */
    int (*serve)(master_t *m, h2o_req_t *req);
} handler_t;

static const char *role_name(int r) {
    switch (r) {
    case RLHF__ROLE__ROLE_ROLLOUT:
        return "rollout";
    case RLHF__ROLE__ROLE_REWARD:
        return "reward";
    case RLHF__ROLE__ROLE_LEARNER:
        return "learner";
    case RLHF__ROLE__ROLE_TOOL:
        return "tool";
    case RLHF__ROLE__ROLE_CLIENT:
        return "client";
    case RLHF__ROLE__ROLE_STAGE:
        return "stage";
    default:
        return "unknown";
    }
}

static const char *bad_label(int i) {
    return i == MASTER_BAD_UNEXPECTED  ? "unexpected"
           : i == MASTER_BAD_FORBIDDEN ? "forbidden"
                                       : wire_bad_name((wire_bad_t)i);
}

json_t *master_status_json(master_t *m) {
    double now = wire_now_ms();
    sched_t *s = &m->sched;
    json_t *ws = json_array(), *cs = json_array();
    for (int w = 0; w < s->n_workers; w++) {
        sched_worker_t *wk = &s->workers[w];
        if (wk->role == RLHF__ROLE__ROLE_TOOL) continue;
        if (wk->role == RLHF__ROLE__ROLE_CLIENT) {
            json_array_append_new(cs, json_pack("{s:s, s:s, s:i, s:f}", "id", wk->id, "state",
                                                wk->alive ? "alive" : "dead", "pid", wk->pid,
                                                "last_seen_s_ago", (now - wk->last_seen_ms) / 1e3));
            continue;
        }
        json_t *o =
            json_pack("{s:s, s:s, s:s, s:i, s:f, s:I}", "id", wk->id, "role", role_name(wk->role),
                      "state", wk->alive ? "alive" : "dead", "pid", wk->pid, "last_seen_s_ago",
                      (now - wk->last_seen_ms) / 1e3, "jobs_done", (json_int_t)wk->jobs_done);
        /* a job id is a uint64 (as the logs print it): a string, which JSON readers that hold
         * numbers as doubles (the dashboard's) take whole */
        char jid[24];
        if (wk->job >= 0) snprintf(jid, sizeof jid, "%" PRIu64, s->jobs[wk->job].id);
        json_object_set_new(o, "job", wk->job >= 0 ? json_string(jid) : json_null());
        json_array_append_new(ws, o);
    }
    json_t *bad = json_object();
    for (int i = 1; i < MASTER_BAD_COUNT; i++)
        json_object_set_new(bad, bad_label(i), json_integer((json_int_t)m->n_bad[i]));
    /* jobs by kind and state: {"generate": {"queued", "leased", "done", "failed"}, ...} */
    int by_kind[32][4] = {{0}};
    for (int j = 0; j < s->n_jobs; j++)
        if (s->jobs[j].kind >= 0 && s->jobs[j].kind < 32)
            by_kind[s->jobs[j].kind][s->jobs[j].state]++;
    json_t *kinds = json_object();
    for (int k = 0; k < 32; k++)
        if (by_kind[k][0] + by_kind[k][1] + by_kind[k][2] + by_kind[k][3])
            json_object_set_new(kinds, wire_job_kind_name(k),
                                json_pack("{s:i, s:i, s:i, s:i}", "queued", by_kind[k][0], "leased",
                                          by_kind[k][1], "done", by_kind[k][2], "failed",
                                          by_kind[k][3]));
    json_t *st = json_pack(
        "{s:s, s:s, s:s, s:f, s:o, s:{s:i, s:i, s:i, s:i}, s:{s:I, s:I, s:I, s:I}, "
        "s:{s:I, s:I, s:I}, s:o, s:{s:I, s:I}}",
        "master_id", m->master_id, "endpoint", m->endpoint, "stage",
        m->cfg.n_stages ? m->cfg.stages[0] : "idle", "uptime_s", (now - m->start_ms) / 1e3,
        "workers", ws, "queue", "queued", sched_count(s, SCHED_QUEUED), "leased",
        sched_count(s, SCHED_LEASED), "done", sched_count(s, SCHED_DONE), "failed",
        sched_count(s, SCHED_FAILED), "jobs", "done", (json_int_t)s->n_done, "retried",
        (json_int_t)s->n_retried, "failed", (json_int_t)s->n_failed, "dispatched",
        (json_int_t)s->n_dispatched, "results_dropped", "stale", (json_int_t)s->n_stale,
        "duplicate", (json_int_t)s->n_duplicate, "unknown", (json_int_t)s->n_unknown,
        "bad_messages", bad, "messages", "received", (json_int_t)m->n_recv, "sent",
        (json_int_t)m->n_sent);
    json_object_set_new(st, "jobs_by_kind", kinds);
    journal_stats_t jst = {0};
    if (m->journal) journal_stats(m->journal, &jst);
    json_object_set_new(st, "journal",
                        json_pack("{s:I, s:I, s:I, s:I, s:f}", "records",
                                  (json_int_t)m->n_journal_records, "fsyncs",
                                  (json_int_t)jst.fsyncs, "bytes", (json_int_t)jst.bytes_appended,
                                  "records_replayed", (json_int_t)jst.records_replayed, "replay_ms",
                                  jst.replay_ms));
    json_t *rs = mrun_status(m, -1); /* {"runs": [...]}: the runs this master holds */
    json_object_set(st, "runs", json_object_get(rs, "runs"));
    json_decref(rs);
    json_object_set_new(st, "clients", cs);
    json_object_set_new(st, "submissions",
                        json_pack("{s:I, s:I, s:I, s:I}", "submitted", (json_int_t)m->n_submitted,
                                  "resubmitted", (json_int_t)m->n_resubmitted, "rejected",
                                  (json_int_t)m->n_submit_rejected, "fetches",
                                  (json_int_t)m->n_fetches));
    return st;
}

typedef struct {
    char *buf;
    size_t len, cap;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf ? b->buf + b->len : NULL, b->buf ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (b->buf && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) return;
        b->buf = nb;
        b->cap = cap;
    }
}

static void metric_head(sbuf_t *b, const char *name, const char *type, const char *help) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *master_metrics_text(master_t *m, size_t *len) {
    sched_t *s = &m->sched;
    sbuf_t b = {0};
    metric_head(&b, "rlhf_up", "gauge", "1 while the master is serving.");
    sb_printf(&b, "rlhf_up 1\n");
    metric_head(&b, "rlhf_master_start_time_seconds", "gauge", "Start time of the master.");
    sb_printf(&b, "rlhf_master_start_time_seconds %.0f\n", m->start_unix);
    metric_head(&b, "rlhf_workers", "gauge", "Registered workers by role and state.");
    static const int roles[] = {RLHF__ROLE__ROLE_ROLLOUT, RLHF__ROLE__ROLE_REWARD,
                                RLHF__ROLE__ROLE_LEARNER};
    for (int r = 0; r < 3; r++)
        for (int alive = 1; alive >= 0; alive--) {
            int n = 0;
            for (int w = 0; w < s->n_workers; w++)
                n += s->workers[w].role == roles[r] && s->workers[w].alive == alive;
            sb_printf(&b, "rlhf_workers{role=\"%s\",state=\"%s\"} %d\n", role_name(roles[r]),
                      alive ? "alive" : "dead", n);
        }
    metric_head(&b, "rlhf_jobs", "gauge", "Jobs by state.");
    static const char *states[] = {"queued", "leased", "done", "failed"};
    for (int st = 0; st < 4; st++)
        sb_printf(&b, "rlhf_jobs{state=\"%s\"} %d\n", states[st],
                  sched_count(s, (sched_state_t)st));
    journal_stats_t js = {0};
    if (m->journal) journal_stats(m->journal, &js);
    struct {
        const char *name, *help;
        uint64_t v;
    } counters[] = {
        {"rlhf_jobs_dispatched_total", "Leases handed out.", s->n_dispatched},
        {"rlhf_jobs_done_total", "Results accepted (each job at most once).", s->n_done},
        {"rlhf_jobs_retried_total", "Leases requeued (worker death, lease expiry, rejection).",
         s->n_retried},
        {"rlhf_jobs_failed_total", "Jobs that ran out of attempts.", s->n_failed},
        {"rlhf_jobs_rejected_total", "Jobs rejected or handed back by workers.", s->n_rejected},
        {"rlhf_leases_expired_total", "Leases that passed their deadline.", s->n_expired},
        {"rlhf_worker_deaths_total", "Workers declared dead or gone.", s->n_worker_deaths},
        {"rlhf_worker_registrations_total", "Hello messages accepted.", m->n_registrations},
        {"rlhf_results_recorded_total", "Job ends (results and failures) written to the journal.",
         m->n_results_recorded},
        {"rlhf_journal_records_total", "Records appended to the journal.", m->n_journal_records},
        {"rlhf_journal_fsyncs_total", "fdatasync calls of the journal (group commits).", js.fsyncs},
        {"rlhf_journal_bytes_total", "Bytes appended to the journal.", js.bytes_appended},
        {"rlhf_journal_compactions_total", "Snapshots written (the journal compacted).",
         js.compactions},
        {"rlhf_wire_messages_received_total", "Messages received on the ROUTER socket.", m->n_recv},
        {"rlhf_wire_messages_sent_total", "Messages sent on the ROUTER socket.", m->n_sent},
        {"rlhf_wire_send_failures_total", "Sends refused (peer gone or its queue full).",
         m->n_send_fail},
        {"rlhf_client_jobs_submitted_total", "New jobs submitted by clients.", m->n_submitted},
        {"rlhf_client_jobs_resubmitted_total", "Known jobs submitted again with the same spec.",
         m->n_resubmitted},
        {"rlhf_client_jobs_rejected_total",
         "Submitted jobs rejected (invalid, or another spec "
         "under a known id).",
         m->n_submit_rejected},
        {"rlhf_client_fetches_total", "FetchResults requests answered.", m->n_fetches},
        {"rlhf_http_unauthorized_total",
         "HTTP requests refused for a missing or wrong bearer token.",
         m->http ? m->http->n_unauthorized : 0},
        {"rlhf_http_csrf_refused_total",
         "POSTs refused as cross-site (Origin, Sec-Fetch-Site, or not application/json).",
         m->http ? m->http->n_csrf : 0},
        {"rlhf_http_bad_requests_total", "API requests refused as malformed or not allowed (4xx).",
         m->http ? m->http->n_bad_requests : 0},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
        metric_head(&b, counters[i].name, "counter", counters[i].help);
        sb_printf(&b, "%s %llu\n", counters[i].name, (unsigned long long)counters[i].v);
    }
    metric_head(&b, "rlhf_results_dropped_total", "counter",
                "Results refused by fencing, by reason.");
    sb_printf(&b, "rlhf_results_dropped_total{reason=\"stale\"} %llu\n",
              (unsigned long long)s->n_stale);
    sb_printf(&b, "rlhf_results_dropped_total{reason=\"duplicate\"} %llu\n",
              (unsigned long long)s->n_duplicate);
    sb_printf(&b, "rlhf_results_dropped_total{reason=\"unknown\"} %llu\n",
              (unsigned long long)s->n_unknown);
    metric_head(&b, "rlhf_wire_bad_messages_total", "counter",
                "Messages refused and dropped, by reason.");
    for (int i = 1; i < MASTER_BAD_COUNT; i++)
        sb_printf(&b, "rlhf_wire_bad_messages_total{reason=\"%s\"} %llu\n", bad_label(i),
                  (unsigned long long)m->n_bad[i]);
    metric_head(&b, "rlhf_auth_connections_total", "counter",
                "CURVE connections to the master's sockets (its ROUTER, its artifact server), "
                "by the ZAP handler's decision: refused ones are keys not listed or without a "
                "role the socket takes.");
    sb_printf(&b, "rlhf_auth_connections_total{result=\"admitted\"} %llu\n",
              (unsigned long long)sec_admitted_total());
    sb_printf(&b, "rlhf_auth_connections_total{result=\"refused\"} %llu\n",
              (unsigned long long)sec_refused_total());
    if (m->ppo_stats) { /* the newest PPO iteration, one gauge per figure */
        metric_head(&b, "rlhf_ppo_policy_version", "gauge",
                    "Policy version published by the newest PPO update.");
        sb_printf(&b, "rlhf_ppo_policy_version %llu\n", (unsigned long long)m->ppo_version);
        const char *k;
        json_t *v;
        json_object_foreach(m->ppo_stats, k, v) {
            if (!json_is_number(v)) continue;
            char name[96];
            snprintf(name, sizeof name, "rlhf_ppo_%s", k);
            metric_head(&b, name, "gauge", "Newest PPO update (rlhf ppo metrics.jsonl).");
            sb_printf(&b, "%s %.9g\n", name, json_number_value(v));
        }
    }
    char *ann = mann_metrics_text(m);
    if (ann) sb_printf(&b, "%s", ann);
    free(ann);
    *len = b.len;
    return b.buf;
}

static int is_get(h2o_req_t *req) {
    return h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
}

static int reply(h2o_req_t *req, const char *type, const char *body, size_t len) {
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
    /* h2o_send_inline copies the body into the request's pool */
    h2o_send_inline(req, body, len);
    return 0;
}

/* The bearer token of the request into *tok / *n: 1, or 0 when it has no Authorization header,
 * -1 when the header is of another scheme. */
static int bearer_of(h2o_req_t *req, const char **tok, size_t *len) {
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (i < 0) return 0;
    const char *v = req->headers.entries[i].value.base;
    size_t n = req->headers.entries[i].value.len;
    /* "Bearer TOKEN", the scheme in any case (RFC 7235) */
    if (n < 7 || !h2o_lcstris(v, 6, H2O_STRLIT("bearer")) || (v[6] != ' ' && v[6] != '\t'))
        return -1;
    size_t a = 7;
    while (a < n && (v[a] == ' ' || v[a] == '\t')) a++;
    while (n > a && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    *tok = v + a;
    *len = n - a;
    return 1;
}

/* 0: the request carries no bearer token; 1: the right one; -1: another one. */
static int bearer_check(const master_http_t *h, h2o_req_t *req) {
    const char *tok;
    size_t n;
    int b = bearer_of(req, &tok, &n);
    if (b <= 0) return b;
    return secret_token_equal(tok, n, h->token) ? 1 : -1;
}

/* 401 with the challenge of RFC 6750 (invalid_token when a token came and was wrong). */
static int unauthorized(master_http_t *h, h2o_req_t *req, int had_token, const char *body) {
    h->n_unauthorized++;
    req->res.status = 401;
    req->res.reason = "Unauthorized";
    static const char plain[] = "Bearer realm=\"rlhf-master\"",
                      wrong[] = "Bearer realm=\"rlhf-master\", error=\"invalid_token\"";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                   had_token ? wrong : plain, had_token ? sizeof wrong - 1 : sizeof plain - 1);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("text/plain"));
    h2o_send_inline(req, body, strlen(body));
    return 0;
}

static const char master_401[] =
    "401 unauthorized: send Authorization: Bearer TOKEN (the master's RUN_DIR/http.token or "
    "its --http-token-file)\n";

/* Every request: the token where the path wants it, then the path's own handler. */
static int on_request(h2o_handler_t *self, h2o_req_t *req) {
    handler_t *hd = (handler_t *)self;
    if (!hd->open && hd->h->auth) {
        int ok = bearer_check(hd->h, req);
        if (ok <= 0) return unauthorized(hd->h, req, ok < 0, master_401);
    }
    return hd->serve(hd->h->m, req);
}

static int on_healthz(master_t *m, h2o_req_t *req) {
    (void)m;
    if (!is_get(req)) return -1;
    return reply(req, "text/plain", "ok\n", 3);
}

static int on_status(master_t *m, h2o_req_t *req) {
    if (!is_get(req)) return -1;
    json_t *o = master_status_json(m);
    char *s = o ? json_dumps(o, JSON_INDENT(1)) : NULL;
    json_decref(o);
    if (!s) {
        h2o_send_error_generic(req, 500, "Internal Server Error", "status unavailable", 0);
        return 0;
    }
    reply(req, "application/json", s, strlen(s));
    free(s);
    return 0;
}

static int on_metrics(master_t *m, h2o_req_t *req) {
    if (!is_get(req)) return -1;
    size_t len = 0;
    char *s = master_metrics_text(m, &len);
    if (!s) {
        h2o_send_error_generic(req, 500, "Internal Server Error", "metrics unavailable", 0);
        return 0;
    }
    reply(req, "text/plain; version=0.0.4", s, len);
    free(s);
    return 0;
}

/* ---- the pages and the JSON APIs ------------------------------------------------------------- */

/* Headers of everything the pages load: nothing from elsewhere, no inline script, no framing,
 * no referrer (an annotator's link carries the token in its fragment, which Referer never
 * holds, but the pages need send nothing either way). */
static void page_headers(h2o_req_t *req) {
    static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                              "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                              "form-action 'none'; frame-ancestors 'none'";
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("content-security-policy"), 0,
                          NULL, csp, sizeof csp - 1);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-content-type-options"), 0,
                          NULL, H2O_STRLIT("nosniff"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("referrer-policy"), 0, NULL,
                          H2O_STRLIT("no-referrer"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-frame-options"), 0, NULL,
                          H2O_STRLIT("DENY"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-store"));
}

static int serve_asset(h2o_req_t *req, const char *name) {
    const mui_asset_t *a = mui_asset_find(name);
    if (!a) {
        h2o_send_error_404(req, "Not Found", "no such file", 0);
        return 0;
    }
    page_headers(req);
    return reply(req, a->type, (const char *)a->data, a->len);
}

static int on_annotate_page(master_t *m, h2o_req_t *req) {
    (void)m;
    if (!is_get(req)) return -1;
    return serve_asset(req, "annotate.html");
}

static int on_dashboard_page(master_t *m, h2o_req_t *req) {
    (void)m;
    if (!is_get(req)) return -1;
    return serve_asset(req, "dashboard.html");
}

/* /ui/NAME: the pages' scripts and style sheet */
static int on_ui(master_t *m, h2o_req_t *req) {
    (void)m;
    if (!is_get(req)) return -1;
    const char *p = req->path_normalized.base;
    size_t n = req->path_normalized.len;
    char name[64];
    if (n < 5 || n - 4 >= sizeof name || memchr(p + 4, '/', n - 4)) {
        h2o_send_error_404(req, "Not Found", "no such file", 0);
        return 0;
    }
    memcpy(name, p + 4, n - 4);
    name[n - 4] = 0;
    return serve_asset(req, name);
}

/* A JSON answer with status; o is consumed. */
static int reply_json(master_t *m, h2o_req_t *req, int status, json_t *o) {
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (status >= 400 && status != 401 && m->http) m->http->n_bad_requests++;
    req->res.status = status;
    req->res.reason = status == 200   ? "OK"
                      : status == 400 ? "Bad Request"
                      : status == 403 ? "Forbidden"
                      : status == 404 ? "Not Found"
                      : status == 405 ? "Method Not Allowed"
                      : status == 409 ? "Conflict"
                      : status == 413 ? "Payload Too Large"
                      : status == 415 ? "Unsupported Media Type"
                                      : "Service Unavailable";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-store"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-content-type-options"), 0,
                          NULL, H2O_STRLIT("nosniff"));
    if (!s) {
        h2o_send_inline(req, H2O_STRLIT("{\"error\":\"out of memory\"}"));
        return 0;
    }
    h2o_send_inline(req, s, strlen(s));
    free(s);
    return 0;
}

static int reply_error(master_t *m, h2o_req_t *req, int status, const char *why) {
    return reply_json(m, req, status, json_pack("{s:s}", "error", why));
}

/* Why a POST is refused as possibly cross-site, or NULL. Credentials travel only in the
 * Authorization header (no cookie is ever set), which a page of another site cannot make a
 * browser send; besides, the body must be declared application/json (a form cannot, and a
 * script of another origin would need a preflight nobody answers), and a browser's Origin or
 * Sec-Fetch-Site must say the request comes from this server's own pages. */
static const char *csrf_refusal(h2o_req_t *req) {
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
    if (i < 0 || req->headers.entries[i].value.len < 16 ||
        !h2o_lcstris(req->headers.entries[i].value.base, 16, H2O_STRLIT("application/json")))
        return "a POST must carry Content-Type: application/json";
    i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("sec-fetch-site"), -1);
    if (i >= 0) {
        h2o_iovec_t v = req->headers.entries[i].value;
        if (!h2o_memis(v.base, v.len, H2O_STRLIT("same-origin")) &&
            !h2o_memis(v.base, v.len, H2O_STRLIT("none")))
            return "a cross-site POST (Sec-Fetch-Site) is refused";
    }
    i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("origin"), -1);
    if (i >= 0) {
        h2o_iovec_t v = req->headers.entries[i].value;
        char want[512];
        int n = snprintf(want, sizeof want, "%.*s://%.*s", (int)req->scheme->name.len,
                         req->scheme->name.base, (int)req->authority.len, req->authority.base);
        if (n <= 0 || (size_t)n >= sizeof want || !h2o_memis(v.base, v.len, want, (size_t)n))
            return "a POST from another origin is refused";
    }
    return NULL;
}

static int is_post(h2o_req_t *req) {
    return h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
}

/* /api/annotate/...: an annotator's own token */
static int on_annot_api(master_t *m, h2o_req_t *req) {
    master_http_t *h = m->http;
    const char *tok = NULL;
    size_t tlen = 0;
    bearer_of(req, &tok, &tlen);
    if (is_post(req)) {
        const char *why = csrf_refusal(req);
        if (why) {
            h->n_csrf++;
            master_log("http: %.*s %.*s refused: %s", (int)req->method.len, req->method.base,
                       (int)req->path.len, req->path.base, why);
            return reply_error(m, req, 403, why);
        }
    }
    char method[8], path[64];
    snprintf(method, sizeof method, "%.*s", (int)(req->method.len < 7 ? req->method.len : 7),
             req->method.base);
    size_t pre = sizeof "/api/annotate" - 1, n = req->path_normalized.len;
    snprintf(path, sizeof path, "%.*s", n > pre ? (int)(n - pre < 63 ? n - pre : 63) : 0,
             req->path_normalized.base + pre);
    json_t *out = NULL;
    int st = mann_api(m, tok, tlen, method, path, req->entity.base, req->entity.len, &out);
    if (st == 401) {
        json_decref(out);
        return unauthorized(h, req, tok != NULL,
                            "401 unauthorized: send Authorization: Bearer TOKEN, the token of "
                            "your personal link\n");
    }
    if (st >= 400 && out)
        master_log("http: %s %s: %d %s", method, path, st,
                   json_string_value(json_object_get(out, "error")) ?: "");
    return reply_json(m, req, st, out);
}

/* /api/runs[/NAME[/annotators|/close]]: the master's token */
static int on_runs_api(master_t *m, h2o_req_t *req) {
    const char *p = req->path_normalized.base + (sizeof "/api/runs" - 1);
    size_t n = req->path_normalized.len - (sizeof "/api/runs" - 1);
    char name[128] = "", rest[64] = "";
    if (n > 0 && p[0] == '/') p++, n--;
    const char *sl = memchr(p, '/', n);
    size_t nl = sl ? (size_t)(sl - p) : n;
    if (nl >= sizeof name || (sl && n - nl >= sizeof rest))
        return reply_error(m, req, 404, "no such path");
    memcpy(name, p, nl);
    if (sl) memcpy(rest, sl, n - nl);
    if (is_post(req)) {
        const char *why = csrf_refusal(req);
        if (why) {
            m->http->n_csrf++;
            return reply_error(m, req, 403, why);
        }
    } else if (!is_get(req)) {
        return reply_error(m, req, 405, "GET or POST");
    }
    if (!name[0]) {
        if (!is_get(req)) return reply_error(m, req, 405, "GET /api/runs");
        return reply_json(m, req, 200, mrun_status(m, -1));
    }
    int ri = mrun_find(m, name);
    if (ri < 0) return reply_error(m, req, 404, "no such run");
    json_t *out = NULL;
    if (!rest[0] && is_get(req)) {
        out = mrun_status(m, ri);
        json_object_set_new(out, "metrics", mrun_metrics(m, ri));
        json_t *ann = mann_admin_json(m, name);
        json_object_set_new(out, "annotation", ann ? ann : json_null());
        return reply_json(m, req, 200, out);
    }
    if (!strcmp(rest, "/annotators") && is_post(req)) {
        json_t *body =
            json_loadb(req->entity.base ? req->entity.base : "", req->entity.len, 0, NULL);
        const char *an = json_string_value(json_object_get(body, "name"));
        /* the personal link: this server as its clients reach it (the host they asked for) */
        char base[600];
        snprintf(base, sizeof base, "%s://%.*s", m->http->ssl ? "https" : "http",
                 (int)(req->authority.len < 500 ? req->authority.len : 500), req->authority.base);
        /* a run that has ended takes no one: a link to it would show nothing to do */
        const char *ended = mrun_ended(m, ri);
        int st;
        char why[512];
        if (!an) {
            st = 400, out = json_pack("{s:s}", "error", "the body wants {\"name\": NAME}");
        } else if (ended) {
            snprintf(why, sizeof why, "run %s has ended (%s): no annotator can join it", name,
                     ended);
            st = 409, out = json_pack("{s:s}", "error", why);
        } else {
            st = mann_annotator_add(m, name, an, base, &out);
        }
        json_decref(body);
        return reply_json(m, req, st, out);
    }
    if (!strcmp(rest, "/close") && is_post(req)) {
        int st = mann_close(m, name, &out);
        return reply_json(m, req, st, out);
    }
    return reply_error(m, req, 404, "no such path");
}

/* Registers path; open: served without the token (only /healthz - anything that shows data or
 * changes state is not). */
static void add_path(master_http_t *h, h2o_hostconf_t *host, const char *path, int open,
                     int (*serve)(master_t *, h2o_req_t *)) {
    h2o_pathconf_t *pc = h2o_config_register_path(host, path, 0);
    handler_t *hd = (handler_t *)h2o_create_handler(pc, sizeof *hd);
    hd->super.on_req = on_request;
    hd->h = h;
    hd->open = open;
    hd->serve = serve;
}

static void on_conn_close(uv_handle_t *hd) {
    free(hd);
}

static void on_accept(uv_stream_t *listener, int status) {
    master_http_t *h = listener->data;
    if (status != 0) return;
    uv_tcp_t *conn = malloc(sizeof *conn);
    if (!conn) return;
    uv_tcp_init(listener->loop, conn);
    if (uv_accept(listener, (uv_stream_t *)conn) != 0) {
        uv_close((uv_handle_t *)conn, on_conn_close);
        return;
    }
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)conn, on_conn_close);
    h2o_accept(&h->accept_ctx, sock);
}

/* OpenSSL's reason for the last failure, for a detail message. */
static const char *ssl_reason(void) {
    static char buf[256];
    unsigned long e = ERR_peek_last_error();
    if (!e) return "no reason given";
    ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return buf;
}

/* The TLS context of the listener from the PEM certificate chain and private key. */
static int tls_setup(master_http_t *h, const char *cert, const char *key) {
    if (!cert[0] || !key[0])
        return rl_fail(RL_EINVAL, "http: TLS wants both master.tls_cert and master.tls_key "
                                  "(--tls-cert and --tls-key), or neither");
    int rc = secret_file_check(key);
    if (rc < 0) return rl_fail_ctx(rc, "master.tls_key (--tls-key)");
    if (!realpath(cert, h->cert_path))
        return rl_fail(RL_ENOTFOUND, "http: TLS certificate %s: %s", cert, strerror(errno));
    h->ssl = SSL_CTX_new(TLS_server_method());
    if (!h->ssl) return rl_fail(RL_ENOMEM, "http: TLS: %s", ssl_reason());
    SSL_CTX_set_min_proto_version(h->ssl, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(h->ssl, cert) != 1)
        return rl_fail(RL_EFORMAT, "http: TLS certificate %s: %s", cert, ssl_reason());
    if (SSL_CTX_use_PrivateKey_file(h->ssl, key, SSL_FILETYPE_PEM) != 1)
        return rl_fail(RL_EFORMAT, "http: TLS key %s: %s", key, ssl_reason());
    if (SSL_CTX_check_private_key(h->ssl) != 1)
        return rl_fail(RL_EINVAL, "http: TLS key %s does not match the certificate %s: %s", key,
                       cert, ssl_reason());
    h2o_ssl_register_alpn_protocols(h->ssl, h2o_alpn_protocols); /* h2, http/1.1 */
    h->accept_ctx.ssl_ctx = h->ssl;
    return 0;
}

/* The token: read from master.http_token_file, else from the key set's http.token (what `rlhf
 * keygen` writes beside master.key; sec_key_path() is KEYS/master.key), else made (written once
 * the listener is bound). */
static int token_setup(master_http_t *h, const cfg_run_t *c) {
    if (c->insecure) return 0;
    h->auth = 1;
    char keyset[PATH_MAX] = "";
    const char *mk = sec_key_path(), *slash = mk ? strrchr(mk, '/') : NULL;
    if (mk && !c->http_token_file[0])
        snprintf(keyset, sizeof keyset, "%.*s%shttp.token", slash ? (int)(slash - mk) : 0,
                 slash ? mk : "", slash ? "/" : "");
    const char *file = c->http_token_file[0]                ? c->http_token_file
                       : keyset[0] && !access(keyset, F_OK) ? keyset
                                                            : NULL;
    if (file) {
        int rc = secret_token_read(file, h->token, sizeof h->token);
        if (rc < 0)
            return rl_fail_ctx(rc, file == keyset ? "the key set's HTTP token"
                                                  : "master.http_token_file (--http-token-file)");
        if (!realpath(file, h->token_path))
            return rl_fail(RL_EIO, "http: token file %s: %s", file, strerror(errno));
        return 0;
    }
    char dir[PATH_MAX];
    if (!realpath(c->run_dir, dir))
        return rl_fail(RL_EIO, "http: run directory %s: %s", c->run_dir, strerror(errno));
    if (strlen(dir) + sizeof "/http.token" > sizeof h->token_path)
        return rl_fail(RL_EINVAL, "http: run directory %s: path too long", dir);
    snprintf(h->token_path, sizeof h->token_path, "%s/http.token", dir);
    return 0;
}

int master_http_prepare(master_t *m) {
    if (m->http) return 0;
    master_http_t *h = calloc(1, sizeof *h);
    if (!h) return rl_fail(RL_ENOMEM, "http: out of memory");
    h->m = m;
    m->http = h;
    h2o_config_init(&h->config);
    h2o_hostconf_t *hc =
        h2o_config_register_host(&h->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    add_path(h, hc, "/healthz", 1, on_healthz);
    add_path(h, hc, "/status", 0, on_status);
    add_path(h, hc, "/metrics", 0, on_metrics);
    add_path(h, hc, "/api/runs", 0, on_runs_api);
    /* open: the pages and their files hold no data; the annotation API wants an annotator's
     * token, checked by master_annot.c */
    add_path(h, hc, "/annotate", 1, on_annotate_page);
    add_path(h, hc, "/dashboard", 1, on_dashboard_page);
    add_path(h, hc, "/ui", 1, on_ui);
    add_path(h, hc, "/api/annotate", 1, on_annot_api);
    h->config.max_request_entity_size = 1 << 20;
    h2o_context_init(&h->ctx, m->loop, &h->config);
    h->accept_ctx.ctx = &h->ctx;
    h->accept_ctx.hosts = h->config.hosts;
    uv_tcp_init(m->loop, &h->listener);
    h->listener.data = h;
    int rc = token_setup(h, &m->cfg);
    if (rc == 0 && (m->cfg.tls_cert[0] || m->cfg.tls_key[0]))
        rc = tls_setup(h, m->cfg.tls_cert, m->cfg.tls_key);
    return rc;
}

int master_http_start(master_t *m, const char *host, int port) {
    int rc = master_http_prepare(m);
    if (rc < 0) return rc;
    master_http_t *h = m->http;
    struct sockaddr_in addr;
    rc = uv_ip4_addr(host, port, &addr);
    if (rc == 0) rc = uv_tcp_bind(&h->listener, (struct sockaddr *)&addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&h->listener, 128, on_accept);
    if (rc != 0) return rl_fail(RL_EIO, "http %s:%d: %s", host, port, uv_strerror(rc));
    struct sockaddr_storage sa;
    int salen = sizeof sa;
    uv_tcp_getsockname(&h->listener, (struct sockaddr *)&sa, &salen);
    m->http_port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
    /* a new token only now that this master serves: one that failed to start leaves the
     * running master's token in place */
    if (h->auth && !h->token[0] &&
        (rc = secret_token_create(h->token_path, h->token, sizeof h->token)) < 0)
        return rl_fail_ctx(rc, "http token");
    return 0;
}

const char *master_http_token_path(const master_t *m) {
    return m->http && m->http->auth ? m->http->token_path : NULL;
}

const char *master_http_cert_path(const master_t *m) {
    return m->http && m->http->ssl ? m->http->cert_path : NULL;
}

void master_http_stop(master_t *m) {
    master_http_t *h = m->http;
    if (!h) return;
    uv_close((uv_handle_t *)&h->listener, NULL);
    uv_run(m->loop, UV_RUN_NOWAIT);
    h2o_context_dispose(&h->ctx);
    h2o_config_dispose(&h->config);
    if (h->ssl) SSL_CTX_free(h->ssl);
    OPENSSL_cleanse(h->token, sizeof h->token);
    free(h);
    m->http = NULL;
}
