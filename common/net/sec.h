/*
 * Security of the wire: CURVE on every ZeroMQ socket, keys bound to roles, a ZAP handler that
 * admits only listed keys.
 *
 * A cluster's key set is a directory made by `rlhf keygen --dir DIR`:
 *   master.key        the master's key pair (its ROUTER and its artifact server)
 *   ROLE.key          one per role: learner, rollout, reward, stage, client; each holds its own
 *                     pair and the master's public key (all a process needs to join)
 *   authorized_keys   the keys the master admits, each with its roles:
 *                       # roles           public key (Z85)                          name
 *                       learner           rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7  learner
 *                       rollout,reward    ...                                       gpu-7
 *   http.token        the bearer token of the master's HTTP endpoints
 * Key files are mode 0600 (no bits for group or others) or refused.
 *
 * A process calls sec_setup() once with its key (or never: plaintext, `--insecure`). From then
 * every socket the project opens calls sec_server() (a listening socket: CURVE server with the
 * process's secret key, a ZAP domain) or sec_client() (a connecting one: the server's public
 * key). The ZAP handler (one thread per ZeroMQ context with a listening socket) admits a client
 * whose key is listed with a role the domain takes, and names it: the "User-Id" property of its
 * messages is the key's name (sec_peer_roles() gives its roles). Everything else is refused,
 * counted and logged: fail closed. The master loads authorized_keys; a worker gets the same
 * list from the master in Welcome (over CURVE), so the list lives on the master's host only;
 * a server always admits its own key (a learner's shards share one).
 *
 * Domains: "master" and "blob" admit every listed key (the master then checks each message's
 * roles); "weights" (the learner's weights server and the workers' relays) admits every role
 * but client; "shard" admits learner keys.
 *
 * Hand-written: the key and authorized_keys files are two line formats of our own (like ssh's
 * authorized_keys); ZeroMQ does the cryptography (libsodium underneath), the ZAP protocol is
 * libzmq's RFC 27.
 */
#ifndef RLHF_NET_SEC_H
#define RLHF_NET_SEC_H

#include <stddef.h>
#include <stdint.h>

enum {
    SEC_ROLE_MASTER = 1u << 0,
    SEC_ROLE_LEARNER = 1u << 1,
    SEC_ROLE_ROLLOUT = 1u << 2,
    SEC_ROLE_REWARD = 1u << 3,
    SEC_ROLE_STAGE = 1u << 4,
    SEC_ROLE_CLIENT = 1u << 5,
    SEC_ROLE_ALL = (1u << 6) - 1,
};

#define SEC_Z85_LEN  40 /* a 32-byte key in Z85 */
#define SEC_NAME_MAX 64 /* a key's name, with its NUL */

typedef struct {
    char name[SEC_NAME_MAX];
    unsigned roles;
    char pub[SEC_Z85_LEN + 1], secret[SEC_Z85_LEN + 1];
    char master[SEC_Z85_LEN + 1]; /* the master's public key ("" in master.key) */
} sec_key_t;

/* A listed key. */
typedef struct {
    char name[SEC_NAME_MAX];
    unsigned roles;
    char pub[SEC_Z85_LEN + 1];
} sec_peer_t;

/* "learner,rollout" -> the role bits; 0 for an unknown name (sec_role_names: the reverse, into
 * out of cap bytes). */
unsigned sec_roles_parse(const char *s);
void sec_role_names(unsigned roles, char *out, size_t cap);

/* A new key pair named `name` with `roles`; master_pub: the master's public key (NULL: none).
 * Returns 0 or RL_EINVAL. */
int sec_key_new(sec_key_t *k, const char *name, unsigned roles, const char *master_pub);
/* Writes k to path, mode 0600, atomically; refuses to replace an existing file. Returns 0 or
 * RL_E*. */
int sec_key_save(const char *path, const sec_key_t *k);
/* Reads a key file; refuses one that group or others may read (naming the file and its mode)
 * and a malformed one (naming the file and line). Returns 0 or RL_E*. */
int sec_key_load(const char *path, sec_key_t *k);

/* authorized_keys: n peers into *out (malloc'd). Errors name the file and line (a bad key, an
 * unknown role, a name twice). Returns 0 or RL_E*. */
int sec_authz_load(const char *path, sec_peer_t **out, int *n);
/* One line of authorized_keys for p, with its newline. */
void sec_authz_line(const sec_peer_t *p, char *out, size_t cap);

/* A cluster's key set in dir (made mode 0700 when missing; refused when it holds master.key):
 * master.key, one key per role (learner, rollout, reward, stage, client: each named after its
 * role), authorized_keys listing them, and http.token (64 hex digits from libsodium). Returns 0
 * or RL_E*. */
int sec_keyset_create(const char *dir);
/* One more key in dir's set: DIR/NAME.key with `roles`, appended to authorized_keys (rewritten
 * atomically). Returns 0 or RL_E* (a name or file that exists is refused). */
int sec_keyset_add(const char *dir, const char *name, unsigned roles);

/* The process's security: its key and, in the master, the listed keys (NULL, 0: a worker's
 * list comes later through sec_set_peers). After it every sec_server/sec_client applies CURVE.
 * Call once, before any socket. Returns 0 or RL_E*. */
int sec_setup(const sec_key_t *own, const sec_peer_t *peers, int n_peers);
/* A process's security from its options, then sec_setup: the key of `role` (one SEC_ROLE_* bit)
 * is key_file (--key), else KEYS_DIR/ROLE.key with keys_dir (--keys), else $RLHF_KEY, else
 * $RLHF_KEYS/ROLE.key; the master (SEC_ROLE_MASTER) takes KEYS_DIR/master.key and
 * KEYS_DIR/authorized_keys. The key must hold the role (a client's may be a stage's: a stage
 * worker's commands are clients with its key). insecure (--insecure): plaintext, and no
 * key may be given with it; $RLHF_INSECURE=1 is --insecure where no key option is given (what
 * an insecure stage worker hands its commands). Returns 0, or RL_E* with a message that says how to
 * get keys. */
int sec_init(unsigned role, const char *key_file, const char *keys_dir, int insecure);
/* The key file sec_init loaded (NULL: none) - what a process hands its children ($RLHF_KEY). */
const char *sec_key_path(void);
/* The role's name ("learner", ...) of one SEC_ROLE_* bit. */
const char *sec_role_name(unsigned role);
/* Pauses the process's security (paused: sec_server and sec_client are no-ops, for sockets
 * opened meanwhile; sec_enabled() is 0) or resumes it - for a benchmark that measures both. */
void sec_pause(int paused);
/* Whether sec_setup was called (else plaintext). */
int sec_enabled(void);
/* The process's key (NULL when plaintext). */
const sec_key_t *sec_own(void);
/* The master's public key: what a connection to the master or its artifact server needs (the
 * process's own in the master; NULL when plaintext). */
const char *sec_master_pub(void);
/* Replaces the listed keys (a worker, from the master's Welcome). Thread-safe. */
int sec_set_peers(const sec_peer_t *peers, int n);
/* A copy of the listed keys (malloc'd; *out NULL when none). Returns their count or RL_ENOMEM. */
int sec_peers_copy(sec_peer_t **out);
/* The listed key named `name` into *p. Returns 0 or RL_ENOTFOUND. Thread-safe. */
int sec_peer_find(const char *name, sec_peer_t *p);
/* The roles of the key a message came from (its "User-Id"); SEC_ROLE_ALL when plaintext. */
unsigned sec_peer_roles(const char *user_id);

/* A listening socket of context zctx: CURVE server in `domain` (see above), its ZAP handler
 * started. Call before bind. No-op when plaintext. Returns 0 or RL_E*. */
int sec_server(void *zctx, void *sock, const char *domain);
/* A connecting socket: CURVE client of the server with public key server_pub (Z85). No-op when
 * plaintext; RL_EINVAL when secure and server_pub is NULL or empty (never a plaintext
 * connection by mistake). Call before connect. */
int sec_client(void *sock, const char *server_pub);

/* What a silent server may mean, for an error message: " - plaintext here: a secure server
 * ignores it (--key?)", or " - or the server refused this key (its log says)". */
const char *sec_silence_hint(void);

/* Clients refused by this process's ZAP handlers, and admitted, since start. */
uint64_t sec_refused_total(void);
uint64_t sec_admitted_total(void);

/* The "User-Id" of a received frame (zmq_msg_t *), "" when none, into out. */
void sec_msg_user(void *zmq_msg, char *out, size_t cap);

#endif
