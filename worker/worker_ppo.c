/*
 * worker_ppo.c - the learner's PPO update (TRAIN jobs of kind PPO): policy and value models,
 * their AdamW states and the PPO state (KL controller, score moments, iteration) live here
 * between jobs; each job is one iteration's update on its rollouts (ppo.h), after which the new
 * policy weights are published as version iteration + 1 (wsync.h) and announced to the master,
 * so that rollout workers fetch them before their next GENERATE job.
 *
 * Checkpoints (worker_ckpt.h: RUN_DIR/ckpt-ITERATION/ with policy/ and value/ as Hugging Face
 * directories and state.bin holding both AdamW moment arenas, the PPO state, the job id and
 * packed result of the last update; RUN_DIR/latest names the newest) are written after every
 * `checkpoint_every`-th update; the checkpoint before stays as a fallback when the newest does
 * not verify. A learner that starts (or restarts) loads the newest checkpoint that verifies,
 * publishes its policy as the version it stands at, and announces it.
 *
 * Overlap (ppo.h, ppo_overlap_t). With overlap=one_step_off the rollouts of iteration i come
 * from version i - 1, so the learner publishes version i when update i STARTS (the rollouts of
 * iteration i + 1 are generated with it while it updates), not when it ends, and keeps the
 * weights before its last update (`prev`, version i - 1 when it stands at i): between updates
 * it serves version i - 1, the one iteration i's rollouts - if not generated yet - need. So the
 * newest version it serves is always the one every rollout job still to run asks for, and a
 * worker never holds a newer one. A checkpoint of such a training also holds `prev`, so that a
 * restarted learner serves the same version as the one that wrote it.
 *
 * Learner shards (S > 1, worker_shard.h): each minibatch step's gradient - the policy's and, with
 * GAE, the value model's - is computed as nodes of the step's fixed gradient tree, one per shard
 * (shard_grad below), so the update is the same bits for any S; everything that depends on the
 * whole rollout batch is computed here once and sent with each step.
 *
 * Idempotence: an update job for iteration i runs only when the learner stands at iteration i;
 * the job that brought the learner to i + 1 (same job id) gets the recorded result back without
 * running again; any other iteration is refused, naming where the learner stands, so that the
 * driver can resume from there.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <zmq.h>

#include "base/err.h"
#include "base/fs.h"
#include "nn/gpt.h"
#include "nn/hf.h"
#include "align/ppo.h"
#include "rlhf.pb-c.h"
#include "net/addr.h"
#include "net/sec.h"
#include "net/wire.h"
#include "worker.h"
#include "worker_ckpt.h"
#include "worker_shard.h"
#include "net/wsync.h"

/* Rounds tried for one minibatch step before the update fails (as LM / RM steps). */
#define MAX_ROUNDS 8

/* The PPO learner's state between jobs (owned by the worker's main state, see worker.h). */
struct ppo_state {
    char run_dir[4096], master[256];
    char tok_dir[CKPT_PATH_LEN + 32]; /* the policy's directory: its tokenizer */
    int loaded;
    char ckpt_seen[64]; /* the checkpoint it loaded or wrote last ("": none) */
    gpt_t *policy, *value;
    ppo_learner_t l;
    uint64_t last_job;
    uint8_t *last_out;
    size_t last_out_len;
    wsync_server_t *ws;
    char ws_endpoint[ADDR_EP_LEN];       /* the weights server's advertised endpoint */
    char bind_host[256], advertise[256]; /* --bind-host, --advertise */
    void *zctx;                          /* the announcer's */
    pthread_t ann_th;
    int ann_started;
    atomic_int ann_stop;
    pthread_mutex_t ann_mu; /* with ann_cv: wakes the announcer when a version is published */
    pthread_cond_t ann_cv;
    _Atomic uint64_t published; /* the newest version served (0: none) */
    int overlap;                /* ppo_overlap_t of this training (fixed for its life) */
    float *prev;                /* overlap: the policy before the last update (NULL at 0) */
    /* the update in progress on the learner's shards (S > 1; shard_grad) */
    shard_hub_t *hub;
    const worker_job_t *job;
    char *cfg_json; /* the settings as the shards read them */
    uint64_t steps; /* minibatch steps sent (ShardStep.step: for the log) */
    int reruns;     /* rounds re-run in this update */
    double ms[4];   /* this update's time: sending the steps, shard 0's own nodes, waiting for the
                       other shards, combining the nodes */
};

static int load_latest(ppo_state_t *ps, const ppo_config_t *cfg);
static int publish(ppo_state_t *ps, uint64_t version, const float *params);
static int serve(ppo_state_t *ps);

ppo_state_t *ppo_state_new(const char *master, const char *run_dir, const char *bind_host,
                           const char *advertise) {
    ppo_state_t *ps = calloc(1, sizeof *ps);
    if (!ps) {
        rl_fail(RL_ENOMEM, "ppo state: out of memory");
        return NULL;
    }
    pthread_mutex_init(&ps->ann_mu, NULL);
    pthread_cond_init(&ps->ann_cv, NULL);
    snprintf(ps->master, sizeof ps->master, "%s", master ? master : "");
    snprintf(ps->run_dir, sizeof ps->run_dir, "%s", run_dir ? run_dir : "");
    snprintf(ps->bind_host, sizeof ps->bind_host, "%s", bind_host ? bind_host : "");
    snprintf(ps->advertise, sizeof ps->advertise, "%s", advertise ? advertise : "");
    /* a restarted learner stands at its newest checkpoint and serves those weights at once:
     * rollout jobs of the current iteration need them before any update job comes */
    ppo_config_t cfg;
    ppo_config_default(&cfg);
    int rc = ps->run_dir[0] ? load_latest(ps, &cfg) : RL_ENOTFOUND;
    if (rc < 0 && ps->run_dir[0]) { /* a critic-free training's checkpoint: the policy alone */
        rl_err_clear();
        cfg.adv_estimator = PPO_ADV_GRPO; /* any critic-free one; the first job sets its own */
        rc = load_latest(ps, &cfg);
    }
    if (rc == 0) {
        ps->loaded = 1;
        if (serve(ps) < 0)
            fprintf(stderr, "learner: publishing iteration %ld: %s\n", ps->l.iteration,
                    rl_errmsg());
    }
    return ps;
}

static void unload(ppo_state_t *ps) {
    ppo_learner_free(&ps->l);
    memset(&ps->l, 0, sizeof ps->l);
    gpt_destroy(&ps->policy);
    gpt_destroy(&ps->value);
    free(ps->last_out);
    ps->last_out = NULL;
    ps->last_out_len = 0;
    ps->last_job = 0;
    free(ps->prev);
    ps->prev = NULL;
    ps->overlap = 0;
    ps->loaded = 0;
    ps->ckpt_seen[0] = 0;
}

int ppo_state_switch(ppo_state_t *ps, const char *run_dir) {
    if (strlen(run_dir) >= sizeof ps->run_dir)
        return rl_fail(RL_EINVAL, "ppo: checkpoint directory name too long");
    unload(ps);
    pthread_mutex_lock(&ps->ann_mu);
    atomic_store(&ps->published, 0);
    ps->ws_endpoint[0] = 0;
    pthread_mutex_unlock(&ps->ann_mu);
    /* the old training's snapshots go with their server: the next publish starts a new one */
    wsync_server_destroy(&ps->ws);
    ps->tok_dir[0] = 0;
    snprintf(ps->run_dir, sizeof ps->run_dir, "%s", run_dir);
    return 0;
}

void ppo_state_destroy(ppo_state_t **psp) {
    ppo_state_t *ps = psp ? *psp : NULL;
    if (!ps) return;
    unload(ps);
    if (ps->ann_started) {
        pthread_mutex_lock(&ps->ann_mu);
        atomic_store(&ps->ann_stop, 1);
        pthread_cond_signal(&ps->ann_cv);
        pthread_mutex_unlock(&ps->ann_mu);
        pthread_join(ps->ann_th, NULL);
        ps->ann_started = 0;
    }
    wsync_server_destroy(&ps->ws);
    free(ps->cfg_json);
    if (ps->zctx) zmq_ctx_term(ps->zctx);
    pthread_mutex_destroy(&ps->ann_mu);
    pthread_cond_destroy(&ps->ann_cv);
    free(ps);
    *psp = NULL;
}

/* ---- weights: publish and announce -------------------------------------------------------- */

/* The announcer thread: tells the master the newest published version every second, so that a
 * restarted master learns it again (it ignores repeats of what it knows). Its own socket. */
static void *announcer(void *arg) {
    ppo_state_t *ps = arg;
    void *sock = zmq_socket(ps->zctx, ZMQ_DEALER);
    if (sock) addr_zmq_opts(sock);
    int linger = 0;
    if (!sock || sec_client(sock, sec_master_pub()) < 0 ||
        zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
        zmq_connect(sock, ps->master) < 0) {
        fprintf(stderr, "learner: announce socket: %s\n", zmq_strerror(errno));
        if (sock) zmq_close(sock);
        return NULL;
    }
    while (!atomic_load(&ps->ann_stop)) {
        /* the version and its endpoint together: a switch of training changes both */
        char ep[sizeof ps->ws_endpoint];
        pthread_mutex_lock(&ps->ann_mu);
        uint64_t v = atomic_load(&ps->published);
        memcpy(ep, ps->ws_endpoint, sizeof ep);
        pthread_mutex_unlock(&ps->ann_mu);
        if (v && ep[0]) {
            Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
            Rlhf__WeightsAnnounce a = RLHF__WEIGHTS_ANNOUNCE__INIT;
            a.version = v;
            a.endpoint = ep;
            env.protocol_version = RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
            env.body_case = RLHF__ENVELOPE__BODY_WEIGHTS_ANNOUNCE;
            env.weights_announce = &a;
            uint8_t buf[512];
            size_t len = rlhf__envelope__get_packed_size(&env);
            if (len <= sizeof buf) {
                rlhf__envelope__pack(&env, buf);
                zmq_send(sock, buf, len, ZMQ_DONTWAIT); /* best effort: the next one follows */
            }
        }
        /* until a new version is published (announced at once) or a second has passed */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_mutex_lock(&ps->ann_mu);
        while (!atomic_load(&ps->ann_stop) && atomic_load(&ps->published) == v &&
               pthread_cond_timedwait(&ps->ann_cv, &ps->ann_mu, &until) == 0) {
        }
        pthread_mutex_unlock(&ps->ann_mu);
    }
    zmq_close(sock);
    return NULL;
}

static int announce(ppo_state_t *ps) {
    if (!ps->master[0] || ps->ann_started) return 0;
    if (!ps->zctx && !(ps->zctx = zmq_ctx_new())) return rl_fail(RL_EIO, "zmq context");
    if (pthread_create(&ps->ann_th, NULL, announcer, ps) != 0)
        return rl_fail(RL_EIO, "announcer thread");
    ps->ann_started = 1;
    return 0;
}

/* Publishes params (the policy's arena, or `prev`) as `version` (once per version) and
 * announces it. */
static int publish(ppo_state_t *ps, uint64_t version, const float *params) {
    if (version < atomic_load(&ps->published)) {
        /* back to an older version (reloaded from a checkpoint after a failed update, or the
         * directory changed): the server's newer snapshots are not this state's - a new
         * server, at a new endpoint, serves from here (workers drop what they fetched) */
        pthread_mutex_lock(&ps->ann_mu);
        atomic_store(&ps->published, 0);
        ps->ws_endpoint[0] = 0;
        pthread_mutex_unlock(&ps->ann_mu);
        wsync_server_destroy(&ps->ws);
    }
    if (version == 0) return 0; /* version 0 is the policy directory's own weights */
    if (!ps->ws) {
        char bind[ADDR_EP_LEN], adv[ADDR_EP_LEN];
        int rc = addr_bind_ep(ps->bind_host, bind, sizeof bind);
        if (rc < 0) return rc;
        ps->ws = wsync_server_new(NULL, bind, 0);
        if (!ps->ws || wsync_server_start(ps->ws) < 0) return rl_fail_ctx(RL_EIO, "weights server");
        if ((rc = addr_advertise(wsync_server_endpoint(ps->ws), ps->advertise, adv, sizeof adv)) <
            0)
            return rc;
        pthread_mutex_lock(&ps->ann_mu);
        snprintf(ps->ws_endpoint, sizeof ps->ws_endpoint, "%s", adv);
        pthread_mutex_unlock(&ps->ann_mu);
    }
    if (version > atomic_load(&ps->published)) {
        int rc = wsync_server_publish(ps->ws, version, params,
                                      ps->policy->num_params * sizeof(float), "params", NULL);
        if (rc < 0) return rc;
        pthread_mutex_lock(&ps->ann_mu);
        atomic_store(&ps->published, version);
        pthread_cond_signal(&ps->ann_cv);
        pthread_mutex_unlock(&ps->ann_mu);
    }
    return announce(ps);
}

/* The version a learner standing at iteration L serves between updates: L, or with overlap
 * L - 1 (from prev), the version that generates iteration L's rollouts. */
static int serve(ppo_state_t *ps) {
    uint64_t at = (uint64_t)ps->l.iteration;
    if (!ps->overlap || at == 0) return publish(ps, at, ps->policy->params_mem);
    if (!ps->prev)
        return rl_fail(RL_EFORMAT, "ppo: overlap: the weights of version %" PRIu64 " are missing",
                       at - 1);
    return publish(ps, at - 1, ps->prev);
}

/* ---- checkpoints (worker_ckpt.h: the layout, the format, atomic writes, the fallback) ----- */

/*
 * The PPO learner's payload (host byte order; the iteration is the checkpoint's position):
 *   u64 last_job | f64 kl.beta | score_stats (ppo_moments_t as in memory) | u64 t_policy |
 *   u64 t_value | u64 n_policy | u64 n_value | policy moments (2 n_policy f32) | value moments
 *   (2 n_value f32) | u64 result_len | result (the last update's packed TrainOutput)
 * and with overlap (absent in a training without: old checkpoints read as overlap=off):
 *   u64 overlap | u64 n_prev | prev (n_prev f32: the policy one update before the checkpoint's)
 */
static const char *const ckpt_models[] = {"policy", "value"};

/* The models a checkpoint of this learner holds: the policy, and the value model when its
 * estimator has a critic. */
static int n_models(const ppo_state_t *ps) {
    return ps->value && !ppo_adv_critic_free(ps->l.cfg.adv_estimator) ? 2 : 1;
}

static int ckpt_write(ppo_state_t *ps, uint64_t iteration, char *dir) {
    ckpt_buf_t b = {0};
    ppo_learner_t *l = &ps->l;
    uint64_t n_p = l->opt_policy.n, n_v = l->opt_value.n, t_p = (uint64_t)l->opt_policy.t,
             t_v = (uint64_t)l->opt_value.t, ol = (uint64_t)ps->last_out_len;
    ckpt_put(&b, &ps->last_job, 8);
    ckpt_put(&b, &l->kl.beta, sizeof l->kl.beta);
    ckpt_put(&b, &l->score_stats, sizeof l->score_stats);
    if (n_models(ps) == 1) n_v = 0, t_v = 0; /* no value model: no value moments either */
    ckpt_put(&b, &t_p, 8);
    ckpt_put(&b, &t_v, 8);
    ckpt_put(&b, &n_p, 8);
    ckpt_put(&b, &n_v, 8);
    ckpt_put(&b, l->opt_policy.moments, 2 * n_p * sizeof(float));
    ckpt_put(&b, l->opt_value.moments, 2 * n_v * sizeof(float));
    ckpt_put(&b, &ol, 8);
    ckpt_put(&b, ps->last_out, ol);
    if (ps->overlap) {
        uint64_t ov = (uint64_t)ps->overlap, n_prev = ps->prev ? n_p : 0;
        ckpt_put(&b, &ov, 8);
        ckpt_put(&b, &n_prev, 8);
        ckpt_put(&b, ps->prev, n_prev * sizeof(float));
    }
    /* the tokenizer travels with the policy, so the checkpoint's policy is a usable model; a
     * critic-free learner has no value model (n_value 0) */
    ckpt_model_t ms[2] = {{ckpt_models[0], ps->policy, ps->tok_dir},
                          {ckpt_models[1], ps->value, NULL}};
    int rc = b.oom ? rl_fail(RL_ENOMEM, "checkpoint: out of memory")
                   : ckpt_save(ps->run_dir, CKPT_KIND_PPO, iteration, ms, n_models(ps), b.p, b.n,
                               "learner", dir);
    free(b.p);
    if (rc == 0) {
        const char *base = strrchr(dir, '/');
        snprintf(ps->ckpt_seen, sizeof ps->ckpt_seen, "%.63s", base ? base + 1 : dir);
    }
    return rc;
}

/* Whether the checkpoint directory's newest checkpoint (its ppo-latest) is still the one this
 * learner loaded or wrote last: not when the directory was removed or another learner wrote
 * there since - the state in memory is then not this training's any more. */
static int disk_agrees(const ppo_state_t *ps) {
    char path[CKPT_PATH_LEN + 32], *name = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/ppo-latest", ps->run_dir);
    if (fs_read_all(path, &name, &len) < 0) {
        rl_err_clear();
        return ps->ckpt_seen[0] == 0;
    }
    int same = strlen(ps->ckpt_seen) == strcspn(name, "\n") &&
               !strncmp(name, ps->ckpt_seen, strlen(ps->ckpt_seen));
    free(name);
    return same;
}

/* ckpt_accept_fn: the checkpoint's models and payload become the PPO state (ctx: a
 * ppo_take_t, the optimiser settings in cfg). */
typedef struct {
    ppo_state_t *ps;
    const ppo_config_t *cfg;
} ppo_take_t;

static int ckpt_take(void *ctx, ckpt_t *c) {
    ppo_take_t *pt = ctx;
    ppo_state_t *ps = pt->ps;
    ppo_learner_t *l = &ps->l;
    int critic = !ppo_adv_critic_free(pt->cfg->adv_estimator);
    int rc = ppo_learner_init(l, c->models[0], critic ? c->models[1] : NULL, pt->cfg);
    if (rc < 0) {
        ppo_learner_free(l);
        memset(l, 0, sizeof *l);
        return rc;
    }
    ckpt_reader_t *r = &c->payload;
    uint64_t n_p = 0, n_v = 0, t_p = 0, t_v = 0, ol = 0, job = 0;
    ckpt_get(r, &job, 8);
    ckpt_get(r, &l->kl.beta, sizeof l->kl.beta);
    ckpt_get(r, &l->score_stats, sizeof l->score_stats);
    ckpt_get(r, &t_p, 8);
    ckpt_get(r, &t_v, 8);
    ckpt_get(r, &n_p, 8);
    ckpt_get(r, &n_v, 8);
    if (!r->bad && n_p == l->opt_policy.n && n_v == l->opt_value.n) {
        ckpt_get(r, l->opt_policy.moments, 2 * n_p * sizeof(float));
        ckpt_get(r, l->opt_value.moments, 2 * n_v * sizeof(float));
        ckpt_get(r, &ol, 8);
    } else {
        r->bad = 1;
    }
    uint8_t *out = !r->bad && ol && ol <= (uint64_t)(r->end - r->p) ? malloc(ol) : NULL;
    if (out) ckpt_get(r, out, ol);
    uint64_t ov = 0, n_prev = 0;
    float *prev = NULL;
    if (!r->bad && r->p != r->end) { /* a training with overlap: its mode and prev */
        ckpt_get(r, &ov, 8);
        ckpt_get(r, &n_prev, 8);
        if (!r->bad && ov == PPO_OVERLAP_ONE_STEP_OFF && n_prev == n_p &&
            n_prev * sizeof(float) == (uint64_t)(r->end - r->p) &&
            (prev = malloc(n_prev * sizeof(float))))
            ckpt_get(r, prev, n_prev * sizeof(float));
        else if (!(ov == PPO_OVERLAP_ONE_STEP_OFF && n_prev == 0))
            r->bad = 1;
    }
    if (r->bad || r->p != r->end || (ol && !out) || (ov && c->pos > 0 && !prev)) {
        free(out);
        free(prev);
        ppo_learner_free(l);
        memset(l, 0, sizeof *l);
        return rl_fail(RL_EFORMAT, "%s: corrupt or incomplete", c->dir);
    }
    l->iteration = (long)c->pos;
    l->opt_policy.t = (long)t_p;
    l->opt_value.t = (long)t_v;
    ps->last_job = job;
    ps->last_out = out;
    ps->last_out_len = (size_t)ol;
    ps->overlap = (int)ov;
    ps->prev = prev;
    ps->policy = c->models[0];
    ps->value = critic ? c->models[1] : NULL;
    c->models[0] = NULL;
    if (critic) c->models[1] = NULL;
    snprintf(ps->tok_dir, sizeof ps->tok_dir, "%s/%s", c->dir, ckpt_models[0]);
    const char *base = strrchr(c->dir, '/');
    snprintf(ps->ckpt_seen, sizeof ps->ckpt_seen, "%.63s", base ? base + 1 : c->dir);
    fprintf(stderr, "learner: resumed from %s at iteration %ld%s\n", c->dir, l->iteration,
            ov ? " (overlap: serving the version before)" : "");
    return 0;
}

/* Loads the newest checkpoint that verifies, else the one before: policy and value, or the
 * policy alone with a critic-free estimator (a training keeps its estimator's kind: a checkpoint
 * of the other kind does not verify). 0, RL_ENOTFOUND (none) or RL_E*. */
static int load_latest(ppo_state_t *ps, const ppo_config_t *cfg) {
    ppo_take_t pt = {ps, cfg};
    int nm = ppo_adv_critic_free(cfg->adv_estimator) ? 1 : 2;
    int rc =
        ckpt_load_latest(ps->run_dir, CKPT_KIND_PPO, ckpt_models, nm, ckpt_take, &pt, "learner");
    return rc == 1 ? 0 : rc == 0 ? RL_ENOTFOUND : rc;
}

/* Makes the learner stand somewhere: the newest checkpoint that verifies (then the one before),
 * else the initial models of the spec. */
/* ckpt_accept_fn of a probe: the checkpoint verifies; nothing is taken. */
static int ckpt_probe(void *ctx, ckpt_t *c) {
    (void)ctx, (void)c;
    return 0;
}

/* The error of a training whose estimator needs a value model where its state has none, or the
 * other way round: switching between GAE and a critic-free estimator is not a resume. */
static int kind_error(const ppo_state_t *ps, const ppo_config_t *cfg) {
    char name[32];
    ppo_setting_format(ppo_setting_find("adv_estimator"), cfg, name, sizeof name);
    return rl_fail(RL_EINVAL,
                   "ppo: %s was trained %s a value model: adv_estimator=%s cannot resume it "
                   "(start a new --out)",
                   ps->run_dir, ppo_adv_critic_free(cfg->adv_estimator) ? "with" : "without", name);
}

/* The error of a training resumed with another overlap mode: which version generated which
 * iteration is part of the training (and a checkpoint without `prev` cannot serve it). */
static int overlap_error(const ppo_state_t *ps, const ppo_config_t *cfg) {
    char was[32], now[32];
    ppo_config_t c = *cfg;
    c.overlap = ps->overlap;
    ppo_setting_format(ppo_setting_find("overlap"), &c, was, sizeof was);
    ppo_setting_format(ppo_setting_find("overlap"), cfg, now, sizeof now);
    return rl_fail(RL_EINVAL,
                   "ppo: %s was trained with overlap=%s: overlap=%s cannot resume it (start a "
                   "new --out)",
                   ps->run_dir, was, now);
}

static int ensure_loaded(ppo_state_t *ps, const Rlhf__PpoSpec *sp, const ppo_config_t *cfg) {
    if (ps->loaded) {
        if (!ppo_adv_critic_free(cfg->adv_estimator) != (ps->value != NULL))
            return kind_error(ps, cfg);
        if (ps->l.iteration > 0 && ps->overlap != cfg->overlap) return overlap_error(ps, cfg);
        ps->overlap = cfg->overlap;
        ps->l.cfg = *cfg; /* settings may change between iterations; the state stays */
        ps->l.opt_policy.weight_decay = ps->l.opt_value.weight_decay = cfg->weight_decay;
        ps->l.kl.adaptive = cfg->kl_adaptive;
        ps->l.kl.target = cfg->kl_target;
        ps->l.kl.horizon = cfg->kl_horizon;
        return 0;
    }
    int rc = load_latest(ps, cfg);
    if (rc == RL_EFORMAT) { /* checkpoints, none usable: of the other kind? */
        int other = ppo_adv_critic_free(cfg->adv_estimator) ? 2 : 1;
        if (ckpt_load_latest(ps->run_dir, CKPT_KIND_PPO, ckpt_models, other, ckpt_probe, NULL,
                             "learner") == 1)
            return kind_error(ps, cfg);
        rl_err_clear();
    }
    if (rc < 0) {
        /* a critic-free estimator (grpo, rloo, reinforce_pp) neither loads nor trains one */
        int critic = !ppo_adv_critic_free(cfg->adv_estimator);
        if (!sp->policy_dir || !sp->policy_dir[0] ||
            (critic && (!sp->value_dir || !sp->value_dir[0])))
            return rl_fail(RL_EINVAL, "ppo: policy_dir and value_dir are required");
        ps->policy = hf_load(sp->policy_dir);
        ps->value = ps->policy && critic ? hf_load(sp->value_dir) : NULL;
        if (!ps->policy || (critic && !ps->value))
            rc = rl_fail_ctx(RL_EINVAL, "ppo: initial models");
        else if (critic && !ps->value->cfg.scalar_head)
            rc = rl_fail(RL_EINVAL, "ppo: %s has no scalar head for a value model", sp->value_dir);
        else
            rc = ppo_learner_init(&ps->l, ps->policy, ps->value, cfg);
        if (rc < 0) { /* nothing kept: the job's retry loads them again */
            gpt_destroy(&ps->policy);
            gpt_destroy(&ps->value);
            return rc;
        }
        /* the reward model's statistics seed the score normalisation */
        if (sp->score_std > 0) {
            ps->l.score_stats.n = 1000;
            ps->l.score_stats.mean = sp->score_mean;
            ps->l.score_stats.m2 = sp->score_std * sp->score_std * 999;
        }
    }
    if (ps->l.iteration > 0 && ps->overlap != cfg->overlap) return overlap_error(ps, cfg);
    ps->overlap = cfg->overlap;
    ps->loaded = 1;
    return serve(ps);
}

static int pack_output(const Rlhf__PpoOutput *po, uint8_t **out, size_t *out_len) {
    Rlhf__TrainOutput to = RLHF__TRAIN_OUTPUT__INIT;
    to.ppo = (Rlhf__PpoOutput *)po;
    to.step = po->iteration;
    *out_len = rlhf__train_output__get_packed_size(&to);
    *out = malloc(*out_len ? *out_len : 1);
    if (!*out) return rl_fail(RL_ENOMEM, "out of memory");
    rlhf__train_output__pack(&to, *out);
    return 0;
}

/* The stats as JSON; figures of a model that is not there (NaN: the value model of a critic-free
 * estimator) are null, so that a metrics line keeps its shape. */
static json_t *stats_json(const ppo_stats_t *s) {
    int critic = !isnan(s->value_loss);
    json_t *o = json_pack(
        "{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, "
        "s:f, s:f, s:f, s:f, s:I, s:I, s:I}",
        "policy_loss", s->policy_loss, "value_loss", critic ? s->value_loss : 0.0, "entropy",
        s->entropy, "clipfrac", s->clipfrac, "value_clipfrac", critic ? s->value_clipfrac : 0.0,
        "approx_kl", s->approx_kl, "kl_k1", s->kl_k1, "kl_k3", s->kl_k3, "explained_var",
        isfinite(s->explained_var) ? s->explained_var : 0.0, "reward_mean", s->reward_mean,
        "reward_std", s->reward_std, "score_mean", s->score_mean, "score_std", s->score_std,
        "adv_mean", s->adv_mean, "adv_std", s->adv_std, "kl_coef", s->beta, "grad_norm_policy",
        s->grad_norm_policy, "grad_norm_value", critic ? s->grad_norm_value : 0.0, "n_seqs",
        (json_int_t)s->n_seqs, "n_tokens", (json_int_t)s->n_tokens, "n_steps",
        (json_int_t)s->n_steps);
    if (o && !critic) { /* jansson has no NaN: packed as 0, then null */
        const char *none[] = {"value_loss", "value_clipfrac", "explained_var", "grad_norm_value"};
        for (int i = 0; i < 4; i++) json_object_set_new(o, none[i], json_null());
    }
    return o;
}

/* ---- the update on S learner shards ------------------------------------------------------ */

/* The minibatch r as a PpoStep (what every shard needs to compute any of its blocks), packed into
 * a new buffer. Returns 0 or RL_ENOMEM. */
static int step_pack(const ppo_state_t *ps, int value, const ppo_rows_t *r, uint8_t **buf,
                     size_t *len) {
    Rlhf__PpoStep st = RLHF__PPO_STEP__INIT;
    Rlhf__PpoStepRow *rows = calloc((size_t)r->n, sizeof *rows);
    Rlhf__PpoStepRow **pr = calloc((size_t)r->n, sizeof *pr);
    if (!rows || !pr) {
        free(rows), free(pr);
        return rl_fail(RL_ENOMEM, "ppo: out of memory");
    }
    st.value = value != 0;
    st.config_json = ps->cfg_json;
    st.denom = r->denom;
    st.beta = r->beta;
    st.n_rows = (size_t)r->n;
    st.rows = pr;
    size_t k = 0;
    for (int i = 0; i < r->n; i++) {
        const ppo_seq_t *q = &r->seqs[i];
        size_t n = (size_t)q->completion_len;
        Rlhf__PpoStepRow *w = &rows[i];
        rlhf__ppo_step_row__init(w);
        /* protobuf-c's repeated int32 is int32_t: the same as int on every target we build */
        w->n_prompt = (size_t)q->prompt_len;
        w->prompt = (int32_t *)q->prompt;
        w->n_completion = n;
        w->completion = (int32_t *)q->completion;
        w->n_lp_old = w->n_adv = w->n_v_old = w->n_ret = w->n_ref = w->n_w = n;
        w->lp_old = (float *)r->lp_old + k;
        w->adv = (float *)r->adv + k;
        w->v_old = (float *)r->v_old + k;
        w->ret = (float *)r->ret + k;
        w->ref = (float *)r->ref + k;
        w->w = (float *)r->w + k;
        pr[i] = w;
        k += n;
    }
    *len = rlhf__ppo_step__get_packed_size(&st);
    *buf = malloc(*len ? *len : 1);
    if (*buf) rlhf__ppo_step__pack(&st, *buf);
    free(rows), free(pr);
    return *buf ? 0 : rl_fail(RL_ENOMEM, "ppo: out of memory");
}

/* ppo_grad_fn on the learner's shards: the minibatch's tree (gtree_blocks(grad_blocks, rows)
 * blocks) cut top-down into S nodes; shard i computes node i (ShardStep with the minibatch in
 * frame "ppo" and the model's parameters attached), shard 0 its own, then combines the nodes in
 * the tree - the bits of one process computing every block. A round a shard was lost in is run
 * again, as LM / RM steps are (worker_learner.c). */
static int shard_grad(void *ctx, gpt_t *m, int value, const ppo_config_t *c, const ppo_rows_t *r,
                      double *stats) {
    ppo_state_t *ps = ctx;
    shard_hub_t *h = ps->hub;
    int S = h->n_shards, nb = gtree_blocks(c->grad_blocks > 0 ? c->grad_blocks : 1, r->n);
    int lo[WORKER_LEARNER_MAX_SHARDS], hi[WORKER_LEARNER_MAX_SHARDS], empty, a, b;
    int k = gtree_cut(nb, S, lo, hi);
    uint64_t step = ++ps->steps;
    uint8_t *buf = NULL;
    size_t len = 0;
    shard_frames_t *ex = malloc(sizeof *ex);
    int *rows = malloc((size_t)r->n * sizeof *rows);
    int rc = ex && rows ? step_pack(ps, value, r, &buf, &len) : rl_fail(RL_ENOMEM, "ppo: memory");
    if (rc == 0) {
        ex->n = 0;
        rc =
            shard_frames_add(ex, "ppo", RLHF__DTYPE__DTYPE_UNSPECIFIED, buf, len, (int64_t)len, -1);
    }
    for (int i = 0; rows && i < r->n; i++) rows[i] = i; /* the rows travel as their indices */
    shard_node_t nd[WORKER_LEARNER_MAX_SHARDS];
    for (int i = 0; i < S; i++)
        nd[i] = (shard_node_t){nb, i < k ? lo[i] : 0, i < k ? hi[i] : 0, r->n, r->denom};
    /* the arena described as frames and its checksum, in one pass */
    uint32_t crc = rc == 0 ? shard_hub_params_changed(h, m) : 0;
    for (int tries = 1; rc == 0; tries++) {
        if (tries > MAX_ROUNDS) {
            rc = rl_fail(RL_EIO, "ppo: minibatch step %" PRIu64 ": %d rounds failed", step,
                         MAX_ROUNDS);
            break;
        }
        shard_hub_round_clear(h);
        if ((rc = shard_hub_wait(h, ps->job)) < 0) break;
        h->round++;
        double t0 = wire_now_ms();
        for (int i = 1; rc == 0 && i < S; i++) {
            /* the parameters go with every node: each step leaves the other model's or older
             * ones on the shards (a shard keeps one model of each kind, worker_shard.c) */
            h->peers[i].crc = 0;
            rc = shard_hub_send_step(h, i, m, crc, ps->job->job_id, step, rows, rows, 1, &nd[i], 0,
                                     ex);
        }
        if (rc < 0) break;
        double t1 = wire_now_ms();
        ps->ms[0] += t1 - t0;
        gtree_reset(&ps->l.tree[value != 0], nb, m->grads_mem, m->num_params);
        if ((rc = ppo_grad_leaves(&ps->l.tree[value != 0], m, value, c, r, nb, lo[0], hi[0])) < 0)
            break;
        double t2 = wire_now_ms();
        ps->ms[1] += t2 - t1;
        int broken = 0;
        rc = shard_hub_gather(h, ps->job, step, &broken);
        ps->ms[2] += wire_now_ms() - t2;
        if (rc < 0 || !broken) break;
        ps->reruns++;
        fprintf(stderr,
                "learner: ppo minibatch step %" PRIu64 " round %" PRIu64 " abandoned (a shard "
                "was lost or lacked the parameters): re-running\n",
                step, h->round);
    }
    double t3 = wire_now_ms();
    if (rc == 0 && (rc = shard_hub_combine(h, &ps->l.tree[value != 0], k, lo, hi)) == 0)
        rc = gtree_take(&ps->l.tree[value != 0], stats, &empty, &a, &b);
    ps->ms[3] += wire_now_ms() - t3;
    shard_hub_round_clear(h);
    free(buf), free(ex), free(rows);
    return rc;
}

int worker_ppo(ppo_state_t *ps, shard_hub_t *hub, const worker_job_t *job,
               const Rlhf__TrainSpec *ts, uint8_t **out, size_t *out_len) {
    const Rlhf__PpoSpec *sp = ts->ppo;
    if (!sp) return rl_fail(RL_EINVAL, "ppo: TrainSpec.ppo is missing");
    if (!ps->run_dir[0]) return rl_fail(RL_EINVAL, "ppo: this learner has no --run-dir");
    ppo_config_t cfg;
    ppo_config_default(&cfg);
    json_t *cj = sp->config_json && sp->config_json[0] ? json_loads(sp->config_json, 0, NULL)
                                                       : json_object();
    int rc = cj ? ppo_config_from_json(&cfg, cj, "ppo config: ")
                : rl_fail(RL_EINVAL, "ppo: config_json is not JSON");
    json_decref(cj);
    if (rc < 0) return rc;
    cfg.seed = sp->seed;
    if (sp->policy_dir) snprintf(ps->tok_dir, sizeof ps->tok_dir, "%s", sp->policy_dir);
    if (sp->n_rollouts == 0 && ps->loaded && !disk_agrees(ps)) {
        fprintf(stderr, "learner: %s changed under us: loading it again\n", ps->run_dir);
        unload(ps);
    }
    if ((rc = ensure_loaded(ps, sp, &cfg)) < 0) {
        unload(ps);
        return rc;
    }
    uint64_t at = (uint64_t)ps->l.iteration;
    if (sp->n_rollouts == 0) {
        /* an attach request (the master starting or resuming the loop): where the learner
         * stands, whatever the iteration asked - it serves those weights (ensure_loaded
         * published them) */
        Rlhf__PpoOutput po = RLHF__PPO_OUTPUT__INIT;
        po.iteration = at;
        po.policy_version = at;
        po.stats_json = "{}";
        return pack_output(&po, out, out_len);
    }
    if (at == sp->iteration + 1 && ps->last_job == job->job_id && ps->last_out) {
        /* applied before (a retry after a lost result): the recorded result */
        Rlhf__TrainOutput *to = rlhf__train_output__unpack(NULL, ps->last_out_len, ps->last_out);
        if (!to || !to->ppo) {
            if (to) rlhf__train_output__free_unpacked(to, NULL);
            return rl_fail(RL_EFORMAT, "ppo: the recorded result does not decode");
        }
        to->ppo->replayed = 1;
        rc = pack_output(to->ppo, out, out_len);
        rlhf__train_output__free_unpacked(to, NULL);
        return rc;
    }
    if (at < sp->iteration) {
        /* restarted from an older checkpoint (checkpoint_every > 1): the driver rolls its loop
         * back to `at` and regenerates; not the job's fault, so not deterministic */
        *job->verdict = WORKER_VERDICT_TRANSIENT;
        return rl_fail(RL_ERANGE, "behind: at iteration %" PRIu64, at);
    }
    if (at != sp->iteration)
        return rl_fail(RL_ERANGE,
                       "ppo: the learner stands at iteration %" PRIu64 ", not %" PRIu64
                       " (resume from there)",
                       at, sp->iteration);
    ppo_seq_t *seqs = calloc(sp->n_rollouts, sizeof *seqs);
    if (!seqs) return rl_fail(RL_ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < sp->n_rollouts; i++) {
        const Rlhf__PpoRollout *r = sp->rollouts[i];
        if (!r->n_prompt || !r->n_completion || r->n_logprobs != r->n_completion ||
            r->n_ref_logprobs != r->n_completion) {
            rc = rl_fail(RL_EINVAL, "ppo: rollout %zu: empty, or logprobs do not match", i);
            break;
        }
        /* protobuf-c's repeated int32 is int32_t: the same as int on every target we build */
        seqs[i].prompt = (const int *)r->prompt;
        seqs[i].prompt_len = (int)r->n_prompt;
        seqs[i].completion = (const int *)r->completion;
        seqs[i].completion_len = (int)r->n_completion;
        seqs[i].logprobs = r->logprobs;
        seqs[i].ref_logprobs = r->ref_logprobs;
        seqs[i].score = r->score;
        seqs[i].group = (int)r->group;
        seqs[i].truncated = r->truncated;
    }
    double t0 = wire_now_ms(), t_pub = 0;
    if (rc == 0 && ps->overlap) {
        /* the version this update starts from generates the next iteration's rollouts while it
         * runs; it becomes prev, the version served from the update's end until the next starts */
        size_t bytes = ps->policy->num_params * sizeof(float);
        if (!ps->prev && !(ps->prev = malloc(bytes ? bytes : 1)))
            rc = rl_fail(RL_ENOMEM, "out of memory");
        if (rc == 0) rc = publish(ps, at, ps->policy->params_mem);
        if (rc == 0) memcpy(ps->prev, ps->policy->params_mem, bytes);
        t_pub = wire_now_ms() - t0;
    }
    ppo_stats_t st;
    t0 = wire_now_ms();
    ps->hub = hub;
    ps->job = job;
    ps->reruns = 0;
    memset(ps->ms, 0, sizeof ps->ms);
    if (hub && hub->n_shards > 1) { /* the minibatch gradients on the shards */
        ps->l.grad_fn = shard_grad;
        ps->l.grad_ctx = ps;
        free(ps->cfg_json);
        json_t *cj2 = ppo_config_to_json(&ps->l.cfg);
        ps->cfg_json = cj2 ? json_dumps(cj2, JSON_COMPACT) : NULL;
        json_decref(cj2);
        if (!ps->cfg_json) rc = rl_fail(RL_ENOMEM, "ppo: the settings as JSON");
    }
    if (rc == 0) rc = ppo_update(&ps->l, seqs, (int)sp->n_rollouts, &st);
    ps->l.grad_fn = NULL;
    ps->job = NULL;
    double t_upd = wire_now_ms() - t0;
    if (hub && hub->n_shards > 1)
        fprintf(stderr,
                "learner: iteration %" PRIu64 " updated on %d shards in %.1f ms (sending %.1f, "
                "own nodes %.1f, waiting %.1f, combining %.1f)%s\n",
                sp->iteration, hub->n_shards, t_upd, ps->ms[0], ps->ms[1], ps->ms[2], ps->ms[3],
                ps->reruns ? " (rounds re-run)" : "");
    free(seqs);
    if (rc < 0) {
        /* the update may have been partly applied: drop the state, the checkpoint has it */
        unload(ps);
        return rc;
    }
    t0 = wire_now_ms();
    uint64_t version = (uint64_t)ps->l.iteration;
    if (!ps->overlap) { /* without overlap the new version generates the next iteration */
        rc = publish(ps, version, ps->policy->params_mem);
        t_pub = wire_now_ms() - t0;
    }
    json_t *sj = stats_json(&st);
    char *stxt = sj ? json_dumps(sj, JSON_COMPACT) : NULL;
    json_decref(sj);
    Rlhf__PpoOutput po = RLHF__PPO_OUTPUT__INIT;
    po.iteration = version;
    po.policy_version = version;
    po.stats_json = stxt ? stxt : "{}";
    po.update_ms = t_upd;
    po.publish_ms = t_pub;
    char ck[CKPT_PATH_LEN] = "";
    uint32_t every = sp->checkpoint_every ? sp->checkpoint_every : 1;
    if (rc == 0 && (version % every == 0 || sp->last))
        ckpt_path(ck, ps->run_dir, CKPT_KIND_PPO, version);
    po.checkpoint = ck;
    if (rc == 0) rc = pack_output(&po, out, out_len);
    if (rc == 0) {
        free(ps->last_out);
        ps->last_out = malloc(*out_len ? *out_len : 1);
        if (ps->last_out) memcpy(ps->last_out, *out, *out_len);
        ps->last_out_len = ps->last_out ? *out_len : 0;
        ps->last_job = job->job_id;
        if (ck[0] && (rc = ckpt_write(ps, version, ck)) == 0) /* the tokenizer's home now */
            snprintf(ps->tok_dir, sizeof ps->tok_dir, "%s/%s", ck, ckpt_models[0]);
        if (rc < 0) {
            free(*out);
            *out = NULL;
        }
    }
    free(stxt);
    if (rc < 0) unload(ps); /* a failed publish or checkpoint: start from the last checkpoint */
    return rc;
}
