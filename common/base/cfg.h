/*
 * cfg.h - the run configuration: a YAML file plus `key=value` overrides.
 *
 * Keys are dotted paths into the YAML mappings ("master.heartbeat_ms"); every key has a type and
 * a range in one table (cfg.c), so the file, `--set` overrides and the defaults go through the
 * same check. An unknown key, a value of the wrong type or out of range, or a YAML syntax error
 * is RL_EINVAL with a detail naming the file, line and key. Later stages add their keys to the
 * table; `stages` is the ordered list of pipeline stages (empty until they exist).
 *
 * Use:
 *   cfg_run_t c; cfg_defaults(&c);
 *   if (cfg_load_yaml(&c, "run.yaml") < 0 || cfg_set_kv(&c, "master.liveness=5") < 0)
 *       show(rl_errmsg());
 *   ... cfg_free(&c);
 */
#ifndef RLHF_CFG_H
#define RLHF_CFG_H

#include <stdint.h>

#include <jansson.h>

#define CFG_MAX_STAGES 32

typedef struct {
    char run_dir[1024];            /* run_dir: where results, journal and outputs live */
    uint64_t seed;                 /* seed: the run seed (jobs derive theirs from it) */
    char bind[256];                /* master.bind: ZeroMQ endpoint of the ROUTER */
    char advertise[256];           /* master.advertise: the host (or endpoint) others dial */
    int blob_port;                 /* master.blob_port: the artifact server's port (0: any) */
    char http_host[64];            /* master.http_host: loopback unless configured otherwise */
    int http_port;                 /* master.http_port: 0 = any free port, -1 = no HTTP */
    int heartbeat_ms;              /* master.heartbeat_ms */
    int liveness;                  /* master.liveness: missed heartbeats before a worker is dead */
    int lease_ms;                  /* master.lease_ms: default job lease */
    int max_attempts;              /* master.max_attempts */
    int64_t max_msg_bytes;         /* master.max_msg_bytes: ZMQ_MAXMSGSIZE per frame */
    int exit_when_done;            /* master.exit_when_done: stop when every job is finished */
    int64_t journal_compact_bytes; /* master.journal_compact_bytes: snapshot past this tail */
    char keys[1024];               /* master.keys: the cluster's key set (net/sec.h) */
    int insecure;                  /* master.insecure: plaintext, no keys, no HTTP token */
    char http_token_file[1024];    /* master.http_token_file: "" = KEYS/http.token or a new one */
    char tls_cert[1024];           /* master.tls_cert: PEM chain; with tls_key, HTTPS */
    char tls_key[1024];            /* master.tls_key: PEM private key (mode 0600) */
    char *stages[CFG_MAX_STAGES];  /* stages: names, in order (owned) */
    int n_stages;
    /* Keys outside the table above go here when set (the pipeline's stage options, checked by
     * `rlhf run`'s own table); without it they are unknown keys. Same contract as cfg_set. */
    int (*extra_set)(void *ctx, const char *key, const char *value, const char *where);
    /* The i-th of those keys ("ppo.max_new"), NULL past the last: with it, a key of neither
     * table is refused here, with the nearest key as a suggestion, and a list or a mapping
     * where a key wants a value is named as such. NULL: every other key goes to extra_set. */
    const char *(*extra_key)(void *ctx, int i);
    void *extra_ctx;
} cfg_run_t;

/* Fills the defaults (loopback, 1 s heartbeats x 3, 60 s leases, 5 attempts, 64 MiB frames). */
void cfg_defaults(cfg_run_t *c);

/* Frees the stage names; safe on a zeroed or default struct. */
void cfg_free(cfg_run_t *c);

/* Sets one key from its text value (`where` names the source in errors: "run.yaml:12", "--set").
 * Returns 0 or RL_EINVAL (unknown key, bad value), detail naming the key. */
int cfg_set(cfg_run_t *c, const char *key, const char *value, const char *where);

/* cfg_set from "key=value". */
int cfg_set_kv(cfg_run_t *c, const char *kv);

/* Reads a YAML file of nested mappings whose scalar leaves are keys of the table, plus the
 * `stages` sequence. Returns 0, RL_ENOTFOUND/RL_EIO (file) or RL_EINVAL with file:line and the
 * key in the detail: a syntax error, an unknown key ("unknown key 'stage' (did you mean
 * 'stages'?)"), a bad value, or a value of the wrong shape ("stages: expected a list of stage
 * names, got a scalar", "master.bind: expected a single value, got a list"). */
int cfg_load_yaml(cfg_run_t *c, const char *path);

/* The resolved configuration as JSON (written to the run directory); new reference. */
json_t *cfg_to_json(const cfg_run_t *c);

#endif
