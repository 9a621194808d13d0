/*
 * Security of the wire: key files, authorized_keys, CURVE options and the ZAP handler (sec.h).
 */
#include "net/sec.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>
#include <zmq.h>

#include "base/err.h"
#include "base/fs.h"
#include "net/secret.h"
#include "net/wire.h"

static const char *const role_names[] = {"master", "learner", "rollout",
                                         "reward", "stage",   "client"};
#define N_ROLES ((int)(sizeof role_names / sizeof *role_names))

unsigned sec_roles_parse(const char *s) {
    unsigned roles = 0;
    while (*s) {
        size_t n = strcspn(s, ",");
        int found = 0;
        for (int i = 0; i < N_ROLES; i++)
            if (strlen(role_names[i]) == n && !strncmp(s, role_names[i], n)) {
                roles |= 1u << i;
                found = 1;
            }
        if (!found) return 0;
        s += n;
        if (*s == ',') s++;
    }
    return roles;
}

void sec_role_names(unsigned roles, char *out, size_t cap) {
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; i < N_ROLES; i++)
        if (roles & (1u << i) && o < cap)
            o += (size_t)snprintf(out + o, cap - o, "%s%s", o ? "," : "", role_names[i]);
}

const char *sec_role_name(unsigned role) {
    for (int i = 0; i < N_ROLES; i++)
        if (role == 1u << i) return role_names[i];
    return "?";
}

/* A key's name: letters, digits, '-', '_', '.', '@'; 1..63 characters. */
static int name_ok(const char *s) {
    size_t n = strlen(s);
    if (!n || n >= SEC_NAME_MAX) return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("-_.@", *p)))
            return 0;
    return 1;
}

/* A Z85 public or secret key: 40 characters that decode to 32 bytes. */
static int z85_key_ok(const char *s) {
    uint8_t raw[32];
    return strlen(s) == SEC_Z85_LEN && zmq_z85_decode(raw, s) != NULL;
}

int sec_key_new(sec_key_t *k, const char *name, unsigned roles, const char *master_pub) {
    memset(k, 0, sizeof *k);
    if (!name_ok(name))
        return rl_fail(RL_EINVAL, "key name '%s': 1 to 63 letters, digits or -_.@", name);
    if (!roles || roles & ~(unsigned)SEC_ROLE_ALL)
        return rl_fail(RL_EINVAL, "key '%s': no roles", name);
    if (master_pub && !z85_key_ok(master_pub))
        return rl_fail(RL_EINVAL, "the master's public key is not a Z85 key");
    if (zmq_curve_keypair(k->pub, k->secret) < 0)
        return rl_fail(RL_EIO, "zmq_curve_keypair: %s (a libzmq without CURVE?)",
                       zmq_strerror(errno));
    snprintf(k->name, sizeof k->name, "%s", name);
    k->roles = roles;
    if (master_pub) snprintf(k->master, sizeof k->master, "%s", master_pub);
    return 0;
}

int sec_key_save(const char *path, const sec_key_t *k) {
    char tmp[4200], roles[128];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    struct stat st;
    if (stat(path, &st) == 0) return rl_fail(RL_EINVAL, "%s: exists (not replaced)", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return rl_fail(RL_EIO, "%s: %s", tmp, strerror(errno));
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(tmp);
        return rl_fail(RL_EIO, "%s: %s", tmp, strerror(errno));
    }
    sec_role_names(k->roles, roles, sizeof roles);
    fprintf(f,
            "# rlhf key '%s' (roles %s): its secret half below - keep this file mode 0600\n"
            "name %s\nroles %s\npublic %s\nsecret %s\n",
            k->name, roles, k->name, roles, k->pub, k->secret);
    if (k->master[0]) fprintf(f, "master %s\n", k->master);
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return rl_fail(RL_EIO, "%s: %s", path, strerror(e));
    }
    return 0;
}

/* Splits a line into at most max whitespace-separated fields (in place). Returns the count,
 * max + 1 when there are more. */
static int fields(char *line, char **f, int max) {
    int n = 0;
    for (char *p = strtok(line, " \t\r\n"); p; p = strtok(NULL, " \t\r\n")) {
        if (n == max) return max + 1;
        f[n++] = p;
    }
    return n;
}

int sec_key_load(const char *path, sec_key_t *k) {
    memset(k, 0, sizeof *k);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rl_fail(errno == ENOENT ? RL_ENOTFOUND : RL_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return rl_fail(RL_EINVAL, "%s: not a regular file", path);
    }
    if (st.st_mode & 077) {
        close(fd);
        return rl_fail(RL_EINVAL,
                       "%s: mode %04o lets others read a secret key (chmod 600 %s): refused", path,
                       (unsigned)(st.st_mode & 07777), path);
    }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return rl_fail(RL_EIO, "%s: %s", path, strerror(errno));
    }
    char line[512];
    int ln = 0, rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        ln++;
        char *fl[3];
        if (line[0] == '#') continue;
        int n = fields(line, fl, 2);
        if (n == 0) continue;
        if (n != 2) {
            rc = rl_fail(RL_EFORMAT, "%s:%d: expected 'FIELD VALUE'", path, ln);
        } else if (!strcmp(fl[0], "name")) {
            if (!name_ok(fl[1])) rc = rl_fail(RL_EFORMAT, "%s:%d: bad name '%s'", path, ln, fl[1]);
            snprintf(k->name, sizeof k->name, "%s", fl[1]);
        } else if (!strcmp(fl[0], "roles")) {
            if (!(k->roles = sec_roles_parse(fl[1])))
                rc = rl_fail(RL_EFORMAT,
                             "%s:%d: unknown role in '%s' (master, learner, rollout, "
                             "reward, stage, client)",
                             path, ln, fl[1]);
        } else if (!strcmp(fl[0], "public") || !strcmp(fl[0], "secret") ||
                   !strcmp(fl[0], "master")) {
            char *dst = fl[0][0] == 'p' ? k->pub : fl[0][0] == 's' ? k->secret : k->master;
            if (!z85_key_ok(fl[1]))
                rc = rl_fail(RL_EFORMAT, "%s:%d: %s: not a 40-character Z85 key", path, ln, fl[0]);
            else
                memcpy(dst, fl[1], SEC_Z85_LEN + 1);
        } else {
            rc = rl_fail(RL_EFORMAT, "%s:%d: unknown field '%s'", path, ln, fl[0]);
        }
    }
    fclose(f);
    if (rc) return rc;
    if (!k->name[0] || !k->roles || !k->pub[0] || !k->secret[0])
        return rl_fail(RL_EFORMAT, "%s: incomplete key (name, roles, public and secret needed)",
                       path);
    /* the halves must belong together: a public key typed over would lock the process out */
    char derived[SEC_Z85_LEN + 1];
    if (zmq_curve_public(derived, k->secret) < 0 || strcmp(derived, k->pub))
        return rl_fail(RL_EFORMAT, "%s: the public key is not the secret key's", path);
    return 0;
}

int sec_authz_load(const char *path, sec_peer_t **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    FILE *f = fopen(path, "re");
    if (!f)
        return rl_fail(errno == ENOENT ? RL_ENOTFOUND : RL_EIO, "%s: %s", path, strerror(errno));
    sec_peer_t *v = NULL;
    int n = 0, cap = 0, ln = 0, rc = 0;
    char line[1024];
    while (!rc && fgets(line, sizeof line, f)) {
        ln++;
        char *fl[4];
        if (line[0] == '#') continue;
        int nf = fields(line, fl, 3);
        if (nf == 0) continue;
        if (nf != 3) {
            rc = rl_fail(RL_EFORMAT, "%s:%d: expected 'ROLES PUBLIC-KEY NAME'", path, ln);
            break;
        }
        sec_peer_t p = {0};
        if (!(p.roles = sec_roles_parse(fl[0])))
            rc = rl_fail(RL_EFORMAT,
                         "%s:%d: unknown role in '%s' (master, learner, rollout, reward, stage, "
                         "client)",
                         path, ln, fl[0]);
        else if (!z85_key_ok(fl[1]))
            rc = rl_fail(RL_EFORMAT, "%s:%d: '%s' is not a 40-character Z85 public key", path, ln,
                         fl[1]);
        else if (!name_ok(fl[2]))
            rc = rl_fail(RL_EFORMAT, "%s:%d: bad name '%s'", path, ln, fl[2]);
        for (int i = 0; !rc && i < n; i++)
            if (!strcmp(v[i].name, fl[2]) || !strcmp(v[i].pub, fl[1]))
                rc = rl_fail(RL_EFORMAT, "%s:%d: %s listed twice", path, ln,
                             strcmp(v[i].name, fl[2]) ? "the key" : "the name");
        if (rc) break;
        memcpy(p.pub, fl[1], SEC_Z85_LEN + 1);
        snprintf(p.name, sizeof p.name, "%s", fl[2]);
        if (n == cap) {
            sec_peer_t *nv = realloc(v, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *v);
            if (!nv) {
                rc = rl_fail(RL_ENOMEM, "%s: out of memory", path);
                break;
            }
            v = nv;
        }
        v[n++] = p;
    }
    fclose(f);
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *n_out = n;
    return 0;
}

void sec_authz_line(const sec_peer_t *p, char *out, size_t cap) {
    char roles[128];
    sec_role_names(p->roles, roles, sizeof roles);
    snprintf(out, cap, "%-20s %s %s\n", roles, p->pub, p->name);
}

/* ---- the process's security ----------------------------------------------------------------- */

static struct {
    int on;
    sec_key_t own;
    pthread_mutex_t mu; /* peers */
    sec_peer_t *peers;
    int n_peers;
    char path[4096]; /* the key file sec_init loaded */
} g = {.mu = PTHREAD_MUTEX_INITIALIZER};
static atomic_uint_fast64_t n_refused, n_admitted;

int sec_setup(const sec_key_t *own, const sec_peer_t *peers, int n_peers) {
    if (!zmq_has("curve"))
        return rl_fail(RL_EINVAL, "this libzmq has no CURVE: security needs one (or --insecure)");
    g.own = *own;
    g.on = 1;
    return sec_set_peers(peers, n_peers);
}

static int paused;

void sec_pause(int p) {
    paused = p;
}

int sec_enabled(void) {
    return g.on && !paused;
}

const sec_key_t *sec_own(void) {
    return g.on ? &g.own : NULL;
}

const char *sec_key_path(void) {
    return g.on && g.path[0] ? g.path : NULL;
}

const char *sec_master_pub(void) {
    return !g.on ? NULL : g.own.master[0] ? g.own.master : g.own.pub;
}

int sec_set_peers(const sec_peer_t *peers, int n) {
    sec_peer_t *v = NULL;
    if (n > 0) {
        if (!(v = malloc((size_t)n * sizeof *v))) return rl_fail(RL_ENOMEM, "out of memory");
        memcpy(v, peers, (size_t)n * sizeof *v);
    }
    pthread_mutex_lock(&g.mu);
    free(g.peers);
    g.peers = v;
    g.n_peers = n > 0 ? n : 0;
    pthread_mutex_unlock(&g.mu);
    return 0;
}

int sec_peers_copy(sec_peer_t **out) {
    *out = NULL;
    pthread_mutex_lock(&g.mu);
    int n = g.n_peers;
    if (n > 0 && (*out = malloc((size_t)n * sizeof **out)))
        memcpy(*out, g.peers, (size_t)n * sizeof **out);
    pthread_mutex_unlock(&g.mu);
    return n > 0 && !*out ? RL_ENOMEM : n;
}

int sec_peer_find(const char *name, sec_peer_t *p) {
    int rc = RL_ENOTFOUND;
    pthread_mutex_lock(&g.mu);
    for (int i = 0; i < g.n_peers; i++)
        if (!strcmp(g.peers[i].name, name)) {
            *p = g.peers[i];
            rc = 0;
            break;
        }
    pthread_mutex_unlock(&g.mu);
    if (rc && g.on && !strcmp(g.own.name, name)) {
        snprintf(p->name, sizeof p->name, "%s", g.own.name);
        p->roles = g.own.roles;
        memcpy(p->pub, g.own.pub, sizeof p->pub);
        rc = 0;
    }
    return rc;
}

unsigned sec_peer_roles(const char *user_id) {
    if (!g.on) return SEC_ROLE_ALL;
    sec_peer_t p;
    return user_id && user_id[0] && sec_peer_find(user_id, &p) == 0 ? p.roles : 0;
}

const char *sec_silence_hint(void) {
    return sec_enabled() ? " - or the server refused this key (its log says)"
                         : " - plaintext here: a secure server ignores it (a key: --key?)";
}

uint64_t sec_refused_total(void) {
    return atomic_load(&n_refused);
}
uint64_t sec_admitted_total(void) {
    return atomic_load(&n_admitted);
}

void sec_msg_user(void *zmq_msg, char *out, size_t cap) {
    const char *u = zmq_msg_gets(zmq_msg, "User-Id");
    snprintf(out, cap, "%s", u ? u : "");
}

/* ---- ZAP (ZeroMQ RFC 27) -------------------------------------------------------------------- */

/* The roles each domain admits. */
static unsigned domain_roles(const char *domain) {
    if (!strcmp(domain, "master") || !strcmp(domain, "blob")) return SEC_ROLE_ALL;
    if (!strcmp(domain, "weights")) return SEC_ROLE_ALL & ~(unsigned)SEC_ROLE_CLIENT;
    if (!strcmp(domain, "shard")) return SEC_ROLE_LEARNER;
    return 0;
}

static void zap_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    wire_logv("zap", fmt, ap);
    va_end(ap);
}

/* The decision on one request: 0 and the name admitted, or -1 and why not. */
static int zap_decide(const char *domain, const char *mech, const uint8_t *cred, size_t cred_len,
                      char *user, size_t ucap, char *why, size_t wcap) {
    if (strcmp(mech, "CURVE") || cred_len != 32) {
        snprintf(why, wcap, "mechanism %.16s, not CURVE", mech);
        return -1;
    }
    char z85[SEC_Z85_LEN + 1];
    zmq_z85_encode(z85, cred, 32);
    unsigned want = domain_roles(domain);
    if (!strcmp(z85, g.own.pub)) { /* ourselves (a learner's shards share a key) */
        snprintf(user, ucap, "%s", g.own.name);
        return 0;
    }
    int found = 0;
    unsigned roles = 0;
    pthread_mutex_lock(&g.mu);
    for (int i = 0; i < g.n_peers; i++)
        if (!strcmp(g.peers[i].pub, z85)) {
            found = 1;
            roles = g.peers[i].roles;
            snprintf(user, ucap, "%s", g.peers[i].name);
            break;
        }
    pthread_mutex_unlock(&g.mu);
    if (!found) {
        snprintf(why, wcap, "key %s is not listed", z85);
        return -1;
    }
    if (!(roles & want)) {
        char names[128];
        sec_role_names(roles, names, sizeof names);
        snprintf(why, wcap, "key '%s' (roles %s) has no role the %.16s domain takes", user, names,
                 domain);
        return -1;
    }
    return 0;
}

/* Contexts with a running ZAP handler. */
static pthread_mutex_t zap_mu = PTHREAD_MUTEX_INITIALIZER;
static void *zap_ctx[64];

static void zap_forget(void *zctx) {
    pthread_mutex_lock(&zap_mu);
    for (size_t i = 0; i < sizeof zap_ctx / sizeof *zap_ctx; i++)
        if (zap_ctx[i] == zctx) zap_ctx[i] = NULL;
    pthread_mutex_unlock(&zap_mu);
}

typedef struct {
    void *zctx, *sock;
} zap_arg_t;

/* Receives one frame into buf (cap bytes, NUL-terminated when it fits). Returns its size, or -1
 * (ETERM: the context is ending). */
static int zap_frame(void *sock, char *buf, size_t cap, int *more) {
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, 0) < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    size_t n = zmq_msg_size(&m);
    size_t c = n < cap - 1 ? n : cap - 1;
    memcpy(buf, zmq_msg_data(&m), c);
    buf[c] = 0;
    *more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    return (int)n;
}

static void *zap_main(void *arg) {
    zap_arg_t a = *(zap_arg_t *)arg;
    free(arg);
    for (;;) {
        /* version, request id, domain, address, routing id, mechanism, credentials... */
        char f[8][256];
        int len[8] = {0}, n = 0, more = 1, dead = 0;
        while (more) {
            char sink[256];
            int r = zap_frame(a.sock, n < 8 ? f[n] : sink, 256, &more);
            if (r < 0) {
                dead = 1;
                break;
            }
            if (n < 8) len[n] = r;
            n++;
        }
        if (dead && errno == ETERM) break;
        if (dead || n < 6) continue; /* a malformed request: libzmq never sends one */
        char user[SEC_NAME_MAX] = "", why[200] = "";
        int ok = strcmp(f[0], "1.0") == 0 &&
                 zap_decide(f[2], f[5], (const uint8_t *)f[6], n > 6 ? (size_t)len[6] : 0, user,
                            sizeof user, why, sizeof why) == 0;
        if (ok) {
            atomic_fetch_add(&n_admitted, 1);
        } else {
            atomic_fetch_add(&n_refused, 1);
            zap_log("refused a connection from %s to the %s domain: %s", f[3], f[2],
                    why[0] ? why : "bad ZAP version");
        }
        zmq_send(a.sock, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(a.sock, f[1], (size_t)len[1] < 256 ? (size_t)len[1] : 255, ZMQ_SNDMORE);
        zmq_send(a.sock, ok ? "200" : "400", 3, ZMQ_SNDMORE);
        zmq_send(a.sock, ok ? "OK" : "refused", ok ? 2 : 7, ZMQ_SNDMORE);
        zmq_send(a.sock, user, ok ? strlen(user) : 0, ZMQ_SNDMORE);
        zmq_send(a.sock, "", 0, 0);
    }
    zap_forget(a.zctx);
    int linger = 0;
    zmq_setsockopt(a.sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(a.sock);
    return NULL;
}

/* Starts zctx's ZAP handler unless it runs. Returns 0 or RL_E*. */
static int zap_ensure(void *zctx) {
    pthread_mutex_lock(&zap_mu);
    size_t slot = SIZE_MAX;
    for (size_t i = 0; i < sizeof zap_ctx / sizeof *zap_ctx; i++) {
        if (zap_ctx[i] == zctx) {
            pthread_mutex_unlock(&zap_mu);
            return 0;
        }
        if (!zap_ctx[i] && slot == SIZE_MAX) slot = i;
    }
    int rc = 0;
    void *sock = NULL;
    zap_arg_t *a = NULL;
    pthread_t th;
    if (slot == SIZE_MAX) {
        rc = rl_fail(RL_ENOMEM, "ZAP: too many ZeroMQ contexts");
    } else if (!(sock = zmq_socket(zctx, ZMQ_REP)) ||
               zmq_bind(sock, "inproc://zeromq.zap.01") < 0) {
        rc = rl_fail(RL_EIO, "ZAP handler: %s", zmq_strerror(errno));
    } else if (!(a = malloc(sizeof *a))) {
        rc = rl_fail(RL_ENOMEM, "out of memory");
    } else {
        a->zctx = zctx;
        a->sock = sock;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &at, zap_main, a) != 0)
            rc = rl_fail(RL_EIO, "ZAP handler: cannot start its thread");
        pthread_attr_destroy(&at);
    }
    if (rc) {
        free(a);
        if (sock) zmq_close(sock);
    } else {
        zap_ctx[slot] = zctx;
    }
    pthread_mutex_unlock(&zap_mu);
    return rc;
}

int sec_server(void *zctx, void *sock, const char *domain) {
    if (!sec_enabled()) return 0;
    if (!domain_roles(domain)) return rl_fail(RL_EINVAL, "ZAP: unknown domain '%s'", domain);
    /* the handler is bound before the socket and lives as long as its context: libzmq admits
     * every CURVE client where no handler answers (ZMQ_ZAP_ENFORCE_DOMAIN is a draft option) */
    int one = 1, rc = zap_ensure(zctx);
    if (rc < 0) return rc;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) < 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, g.own.secret, SEC_Z85_LEN) < 0 ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) < 0)
        return rl_fail(RL_EIO, "CURVE server options: %s", zmq_strerror(errno));
    return 0;
}

int sec_client(void *sock, const char *server_pub) {
    if (!sec_enabled()) return 0;
    if (!server_pub || !z85_key_ok(server_pub))
        return rl_fail(RL_EINVAL, "no public key for the server: refusing a plaintext connection");
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_pub, SEC_Z85_LEN) < 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, g.own.pub, SEC_Z85_LEN) < 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, g.own.secret, SEC_Z85_LEN) < 0)
        return rl_fail(RL_EIO, "CURVE client options: %s", zmq_strerror(errno));
    return 0;
}

/* ---- a process's options -------------------------------------------------------------------- */

int sec_init(unsigned role, const char *key_file, const char *keys_dir, int insecure) {
    const char *env_key = getenv("RLHF_KEY"), *env_dir = getenv("RLHF_KEYS");
    if (key_file && !key_file[0]) key_file = NULL;
    if (keys_dir && !keys_dir[0]) keys_dir = NULL;
    if (insecure) {
        if (key_file || keys_dir) return rl_fail(RL_EINVAL, "--insecure and a key: choose one");
        return 0;
    }
    const char *env_ins = getenv("RLHF_INSECURE");
    if (!key_file && !keys_dir && env_ins && !strcmp(env_ins, "1")) return 0; /* a parent's */
    if (!key_file && !keys_dir) {
        if (env_key && env_key[0] && role != SEC_ROLE_MASTER)
            key_file = env_key;
        else if (env_dir && env_dir[0])
            keys_dir = env_dir;
    }
    if (!key_file && !keys_dir)
        return rl_fail(RL_EINVAL,
                       "no key: --keys DIR (a cluster's keys, made by `rlhf keygen --dir DIR`), "
                       "%s$RLHF_KEYS; or --insecure for plaintext",
                       role == SEC_ROLE_MASTER ? "" : "--key FILE, $RLHF_KEY or ");
    char path[4096];
    sec_key_t k;
    if (key_file)
        snprintf(path, sizeof path, "%s", key_file);
    else
        snprintf(path, sizeof path, "%s/%s.key", keys_dir, sec_role_name(role));
    int rc = sec_key_load(path, &k);
    if (rc < 0) return rc;
    /* a stage's commands are clients of the master with the stage's key */
    unsigned accept = role | (role == SEC_ROLE_CLIENT ? SEC_ROLE_STAGE : 0);
    if (!(k.roles & accept)) {
        char names[128];
        sec_role_names(k.roles, names, sizeof names);
        return rl_fail(RL_EINVAL, "%s: key '%s' has roles %s, not %s", path, k.name, names,
                       sec_role_name(role));
    }
    snprintf(g.path, sizeof g.path, "%s", path);
    if (role != SEC_ROLE_MASTER) {
        if (!k.master[0])
            return rl_fail(RL_EINVAL, "%s: no master key in it (made by rlhf keygen?)", path);
        return sec_setup(&k, NULL, 0);
    }
    sec_peer_t *peers;
    int n;
    snprintf(path, sizeof path, "%s/authorized_keys", keys_dir);
    if ((rc = sec_authz_load(path, &peers, &n)) < 0) return rc;
    rc = sec_setup(&k, peers, n);
    free(peers);
    return rc;
}

/* ---- key sets ------------------------------------------------------------------------------- */

static int add_key(const char *dir, const char *name, unsigned roles, const char *master_pub,
                   sec_key_t *k) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.key", dir, name);
    int rc = sec_key_new(k, name, roles, master_pub);
    return rc < 0 ? rc : sec_key_save(path, k);
}

int sec_keyset_create(const char *dir) {
    char path[4200];
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return rl_fail(RL_EIO, "%s: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/master.key", dir);
    if (access(path, F_OK) == 0)
        return rl_fail(RL_EINVAL, "%s holds a key set already (master.key): not replaced", dir);
    sec_key_t m, k;
    int rc = add_key(dir, "master", SEC_ROLE_MASTER, NULL, &m);
    if (rc < 0) return rc;
    char authz[4096] = "# the keys this cluster's master admits: ROLES PUBLIC-KEY NAME\n";
    for (unsigned r = SEC_ROLE_LEARNER; r <= SEC_ROLE_CLIENT; r <<= 1) {
        if ((rc = add_key(dir, sec_role_name(r), r, m.pub, &k)) < 0) return rc;
        sec_peer_t p = {.roles = r};
        snprintf(p.name, sizeof p.name, "%s", k.name);
        memcpy(p.pub, k.pub, sizeof p.pub);
        sec_authz_line(&p, authz + strlen(authz), sizeof authz - strlen(authz));
    }
    snprintf(path, sizeof path, "%s/authorized_keys", dir);
    if ((rc = fs_write_atomic(path, authz, strlen(authz))) < 0) return rc;
    char token[SECRET_TOKEN_CAP];
    snprintf(path, sizeof path, "%s/http.token", dir);
    rc = secret_token_create(path, token, sizeof token);
    sodium_memzero(token, sizeof token);
    return rc;
}

int sec_keyset_add(const char *dir, const char *name, unsigned roles) {
    char path[4200];
    sec_key_t m, k;
    snprintf(path, sizeof path, "%s/master.key", dir);
    int rc = sec_key_load(path, &m);
    if (rc < 0) return rc;
    sec_peer_t *v;
    int n;
    snprintf(path, sizeof path, "%s/authorized_keys", dir);
    if ((rc = sec_authz_load(path, &v, &n)) < 0) return rc;
    for (int i = 0; i < n; i++)
        if (!strcmp(v[i].name, name)) {
            free(v);
            return rl_fail(RL_EINVAL, "%s: '%s' is listed already", path, name);
        }
    free(v);
    if ((rc = add_key(dir, name, roles, m.pub, &k)) < 0) return rc;
    /* the list as it is, plus one line */
    FILE *f = fopen(path, "re");
    if (!f) return rl_fail(RL_EIO, "%s: %s", path, strerror(errno));
    char *text = NULL;
    size_t cap = 0;
    FILE *mem = open_memstream(&text, &cap);
    char line[1024];
    while (mem && fgets(line, sizeof line, f)) fputs(line, mem);
    fclose(f);
    if (!mem) return rl_fail(RL_ENOMEM, "out of memory");
    sec_peer_t p = {.roles = roles};
    snprintf(p.name, sizeof p.name, "%s", k.name);
    memcpy(p.pub, k.pub, sizeof p.pub);
    sec_authz_line(&p, line, sizeof line);
    fputs(line, mem);
    fclose(mem);
    rc = fs_write_atomic(path, text, strlen(text));
    free(text);
    return rc;
}
