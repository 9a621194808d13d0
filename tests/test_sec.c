/*
 * test_sec.c - the wire's security (common/net/sec.h): key files (round trip, mode 0600 enforced,
 * file:line errors, halves that do not belong together), authorized_keys, and real CURVE
 * connections through the ZAP handler: a listed key is admitted and named in User-Id; an
 * unlisted key, a plaintext client and a key without the domain's role are refused and counted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "base/err.h"
#include "net/sec.h"
#include "test.h"

static char dir[256];

static void path(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", dir, name);
}

static void write_file(const char *p, const char *text, int mode) {
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    chmod(p, (mode_t)mode);
}

static void test_roles(void) {
    CHECK_EQ(sec_roles_parse("learner"), SEC_ROLE_LEARNER);
    CHECK_EQ(sec_roles_parse("rollout,reward"), SEC_ROLE_ROLLOUT | SEC_ROLE_REWARD);
    CHECK_EQ(sec_roles_parse("rollout,nobody"), 0u);
    char s[128];
    sec_role_names(SEC_ROLE_STAGE | SEC_ROLE_CLIENT, s, sizeof s);
    CHECK_STREQ(s, "stage,client");
}

static void test_key_files(void) {
    sec_key_t m, k, back;
    char p[512];
    CHECK_EQ(sec_key_new(&m, "master", SEC_ROLE_MASTER, NULL), 0);
    CHECK_EQ(sec_key_new(&k, "gpu-7", SEC_ROLE_ROLLOUT | SEC_ROLE_REWARD, m.pub), 0);
    CHECK_EQ(sec_key_new(&back, "bad name", SEC_ROLE_ROLLOUT, NULL), RL_EINVAL);
    path(p, sizeof p, "gpu-7.key");
    CHECK_EQ(sec_key_save(p, &k), 0);
    struct stat st;
    CHECK_EQ(stat(p, &st), 0);
    CHECK_EQ(st.st_mode & 0777, 0600u);
    CHECK_EQ(sec_key_save(p, &k), RL_EINVAL); /* never replaced */
    CHECK_EQ(sec_key_load(p, &back), 0);
    CHECK_STREQ(back.name, "gpu-7");
    CHECK_EQ(back.roles, SEC_ROLE_ROLLOUT | SEC_ROLE_REWARD);
    CHECK_STREQ(back.pub, k.pub);
    CHECK_STREQ(back.secret, k.secret);
    CHECK_STREQ(back.master, m.pub);
    /* readable by others: refused, and the message says which file and what to do */
    chmod(p, 0644);
    CHECK_EQ(sec_key_load(p, &back), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "gpu-7.key") && strstr(rl_errmsg(), "0644") &&
          strstr(rl_errmsg(), "chmod 600"));
    chmod(p, 0400);
    CHECK_EQ(sec_key_load(p, &back), 0);
    /* malformed lines name the file and line */
    char text[1024];
    path(p, sizeof p, "bad.key");
    snprintf(text, sizeof text, "# c\nname x\nroles rollout,wizard\npublic %s\nsecret %s\n", k.pub,
             k.secret);
    write_file(p, text, 0600);
    CHECK_EQ(sec_key_load(p, &back), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "bad.key:3:") != NULL);
    /* a public key that is not the secret's */
    path(p, sizeof p, "mixed.key");
    snprintf(text, sizeof text, "name x\nroles rollout\npublic %s\nsecret %s\n", m.pub, k.secret);
    write_file(p, text, 0600);
    CHECK_EQ(sec_key_load(p, &back), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "not the secret key's") != NULL);
    path(p, sizeof p, "short.key");
    write_file(p, "name x\nroles rollout\npublic abc\n", 0600);
    CHECK_EQ(sec_key_load(p, &back), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "short.key:3:") != NULL);
}

static void test_authz(void) {
    sec_key_t a, b;
    CHECK_EQ(sec_key_new(&a, "learner", SEC_ROLE_LEARNER, NULL), 0);
    CHECK_EQ(sec_key_new(&b, "ro-1", SEC_ROLE_ROLLOUT, NULL), 0);
    char p[512], text[2048], l1[256], l2[256];
    sec_peer_t pa = {.roles = a.roles}, pb = {.roles = SEC_ROLE_ROLLOUT | SEC_ROLE_REWARD};
    strcpy(pa.name, a.name);
    strcpy(pa.pub, a.pub);
    strcpy(pb.name, b.name);
    strcpy(pb.pub, b.pub);
    sec_authz_line(&pa, l1, sizeof l1);
    sec_authz_line(&pb, l2, sizeof l2);
    snprintf(text, sizeof text, "# the cluster\n\n%s%s", l1, l2);
    path(p, sizeof p, "authorized_keys");
    write_file(p, text, 0644);
    sec_peer_t *v;
    int n;
    CHECK_EQ(sec_authz_load(p, &v, &n), 0);
    CHECK_EQ(n, 2);
    CHECK_STREQ(v[1].name, "ro-1");
    CHECK_EQ(v[1].roles, SEC_ROLE_ROLLOUT | SEC_ROLE_REWARD);
    free(v);
    snprintf(text, sizeof text, "%s%s", l1, l1);
    write_file(p, text, 0644);
    CHECK_EQ(sec_authz_load(p, &v, &n), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "authorized_keys:2:") && strstr(rl_errmsg(), "twice"));
    snprintf(text, sizeof text, "%slearner %s\n", l1, b.pub);
    write_file(p, text, 0644);
    CHECK_EQ(sec_authz_load(p, &v, &n), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "authorized_keys:2:") != NULL);
    snprintf(text, sizeof text, "root %s ro-2\n", b.pub);
    write_file(p, text, 0644);
    CHECK_EQ(sec_authz_load(p, &v, &n), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "authorized_keys:1: unknown role") != NULL);
}

/* A DEALER with the given CURVE keys (NULL pub: plaintext) sends "hi" to ep; the ROUTER then
 * receives within 1 s or not. Returns 1 when it arrived, with its User-Id in user. */
static int try_send(void *zctx, void *router, const char *ep, const char *server_pub,
                    const char *pub, const char *secret, char *user, size_t cap) {
    void *d = zmq_socket(zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    if (pub) {
        zmq_setsockopt(d, ZMQ_CURVE_SERVERKEY, server_pub, 40);
        zmq_setsockopt(d, ZMQ_CURVE_PUBLICKEY, pub, 40);
        zmq_setsockopt(d, ZMQ_CURVE_SECRETKEY, secret, 40);
    }
    zmq_connect(d, ep);
    zmq_send(d, "hi", 2, ZMQ_DONTWAIT);
    zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
    int got = 0;
    if (zmq_poll(&it, 1, 1000) > 0) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        zmq_msg_recv(&id, router, 0);
        zmq_msg_recv(&body, router, 0);
        sec_msg_user(&body, user, cap);
        got = zmq_msg_size(&body) == 2;
        zmq_msg_close(&id);
        zmq_msg_close(&body);
    }
    zmq_close(d);
    return got;
}

static void test_curve(void) {
    sec_key_t m, lrn, cli, stranger;
    CHECK_EQ(sec_key_new(&m, "master", SEC_ROLE_MASTER, NULL), 0);
    CHECK_EQ(sec_key_new(&lrn, "learner-1", SEC_ROLE_LEARNER, m.pub), 0);
    CHECK_EQ(sec_key_new(&cli, "alice", SEC_ROLE_CLIENT, m.pub), 0);
    CHECK_EQ(sec_key_new(&stranger, "mallory", SEC_ROLE_LEARNER, m.pub), 0);
    sec_peer_t peers[2] = {{.roles = SEC_ROLE_LEARNER}, {.roles = SEC_ROLE_CLIENT}};
    strcpy(peers[0].name, lrn.name);
    strcpy(peers[0].pub, lrn.pub);
    strcpy(peers[1].name, cli.name);
    strcpy(peers[1].pub, cli.pub);
    CHECK_EQ(sec_client(NULL, m.pub), 0); /* plaintext before setup: a no-op */
    CHECK_EQ(sec_setup(&m, peers, 2), 0);
    CHECK(sec_enabled());
    CHECK_EQ(sec_peer_roles("alice"), (unsigned)SEC_ROLE_CLIENT);
    CHECK_EQ(sec_peer_roles("mallory"), 0u);
    CHECK_EQ(sec_peer_roles(""), 0u);

    void *zctx = zmq_ctx_new();
    void *r1 = zmq_socket(zctx, ZMQ_ROUTER), *r2 = zmq_socket(zctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(r1, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(r2, ZMQ_LINGER, &linger, sizeof linger);
    CHECK_EQ(sec_server(zctx, r1, "master"), 0);
    CHECK_EQ(sec_server(zctx, r2, "weights"), 0); /* the same context: one handler */
    CHECK_EQ(sec_server(zctx, r2, "nowhere"), RL_EINVAL);
    CHECK_EQ(zmq_bind(r1, "tcp://127.0.0.1:*"), 0);
    CHECK_EQ(zmq_bind(r2, "tcp://127.0.0.1:*"), 0);
    char ep1[128], ep2[128], user[64];
    size_t sz = sizeof ep1;
    zmq_getsockopt(r1, ZMQ_LAST_ENDPOINT, ep1, &sz);
    sz = sizeof ep2;
    zmq_getsockopt(r2, ZMQ_LAST_ENDPOINT, ep2, &sz);

    uint64_t ref0 = sec_refused_total(), adm0 = sec_admitted_total();
    CHECK(try_send(zctx, r1, ep1, m.pub, cli.pub, cli.secret, user, sizeof user));
    CHECK_STREQ(user, "alice");
    CHECK(try_send(zctx, r1, ep1, m.pub, lrn.pub, lrn.secret, user, sizeof user));
    CHECK_STREQ(user, "learner-1");
    CHECK_EQ(sec_admitted_total() - adm0, 2u);
    /* not listed; plaintext; the client role in the weights domain; the wrong server key */
    CHECK(!try_send(zctx, r1, ep1, m.pub, stranger.pub, stranger.secret, user, sizeof user));
    CHECK(!try_send(zctx, r1, ep1, NULL, NULL, NULL, user, sizeof user));
    CHECK(!try_send(zctx, r2, ep2, m.pub, cli.pub, cli.secret, user, sizeof user));
    CHECK(try_send(zctx, r2, ep2, m.pub, lrn.pub, lrn.secret, user, sizeof user));
    CHECK(!try_send(zctx, r1, ep1, lrn.pub, cli.pub, cli.secret, user, sizeof user));
    /* refused: the stranger and the client in the weights domain (the plaintext client and the
     * wrong server key fail the handshake before any ZAP request) */
    CHECK(sec_refused_total() - ref0 >= 2);
    /* the list can change under a running handler (a worker's, from Welcome) */
    sec_peer_t more[3] = {peers[0], peers[1], {.roles = SEC_ROLE_LEARNER}};
    strcpy(more[2].name, stranger.name);
    strcpy(more[2].pub, stranger.pub);
    CHECK_EQ(sec_set_peers(more, 3), 0);
    CHECK(try_send(zctx, r1, ep1, m.pub, stranger.pub, stranger.secret, user, sizeof user));
    CHECK_STREQ(user, "mallory");
    /* sec_client: the process's key, and never plaintext by mistake */
    void *d = zmq_socket(zctx, ZMQ_DEALER);
    CHECK_EQ(sec_client(d, NULL), RL_EINVAL);
    CHECK_EQ(sec_client(d, ""), RL_EINVAL);
    CHECK_EQ(sec_client(d, m.pub), 0);
    zmq_close(d);
    zmq_close(r1);
    zmq_close(r2);
    CHECK_EQ(zmq_ctx_term(zctx), 0); /* the handler ends with its context */
    /* a new context gets a handler of its own */
    zctx = zmq_ctx_new();
    r1 = zmq_socket(zctx, ZMQ_ROUTER);
    zmq_setsockopt(r1, ZMQ_LINGER, &linger, sizeof linger);
    CHECK_EQ(sec_server(zctx, r1, "shard"), 0);
    CHECK_EQ(zmq_bind(r1, "tcp://127.0.0.1:*"), 0);
    sz = sizeof ep1;
    zmq_getsockopt(r1, ZMQ_LAST_ENDPOINT, ep1, &sz);
    CHECK(try_send(zctx, r1, ep1, m.pub, m.pub, m.secret, user, sizeof user)); /* itself */
    CHECK_STREQ(user, "master");
    CHECK(!try_send(zctx, r1, ep1, m.pub, cli.pub, cli.secret, user, sizeof user));
    zmq_close(r1);
    CHECK_EQ(zmq_ctx_term(zctx), 0);
}

int main(void) {
    snprintf(dir, sizeof dir, "%s/test_sec.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) return 1;
    RUN(test_roles);
    RUN(test_key_files);
    RUN(test_authz);
    RUN(test_curve);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    return TEST_REPORT();
}
