/*
 * test_addr.c - bind and advertised addresses (common/net/addr.h): the endpoint forms, IPv6
 * brackets, wildcards refused as advertised addresses, and a real bind + connect over IPv4 and
 * (where the machine has it) IPv6 loopback with the options every socket gets.
 */
#include <string.h>

#include <zmq.h>

#include "base/err.h"
#include "net/addr.h"
#include "test.h"

static void test_forms(void) {
    char ep[ADDR_EP_LEN], host[256];
    int port;
    CHECK_EQ(addr_bind_ep(NULL, ep, sizeof ep), 0);
    CHECK_STREQ(ep, "tcp://127.0.0.1:*");
    CHECK_EQ(addr_bind_ep("::", ep, sizeof ep), 0);
    CHECK_STREQ(ep, "tcp://[::]:*");
    CHECK_EQ(addr_bind_ep("[fd77::2]", ep, sizeof ep), 0);
    CHECK_STREQ(ep, "tcp://[fd77::2]:*");
    CHECK_EQ(addr_split("tcp://[fd77::1]:5555", host, sizeof host, &port), 0);
    CHECK_STREQ(host, "fd77::1");
    CHECK_EQ(port, 5555);
    CHECK_EQ(addr_split("tcp://10.0.0.1:*", host, sizeof host, &port), 0);
    CHECK_STREQ(host, "10.0.0.1");
    CHECK_EQ(port, 0);
    CHECK_EQ(addr_split("fd77::9", host, sizeof host, &port), 0); /* bare literal: no port */
    CHECK_STREQ(host, "fd77::9");
    CHECK_EQ(port, 0);
    CHECK_EQ(addr_split("tcp://[::ffff:10.1.2.3]:7", host, sizeof host, &port), 0);
    CHECK_STREQ(host, "10.1.2.3"); /* what an IPv6-enabled socket reports for IPv4 */
    strcpy(ep, "tcp://[::ffff:127.0.0.1]:4000");
    CHECK_EQ(addr_normalize(ep, sizeof ep), 0);
    CHECK_STREQ(ep, "tcp://127.0.0.1:4000");
    strcpy(ep, "tcp://[::]:4000");
    CHECK_EQ(addr_normalize(ep, sizeof ep), 0);
    CHECK_STREQ(ep, "tcp://[::]:4000");
    CHECK_EQ(addr_split("tcp://h:99999", host, sizeof host, &port), RL_EINVAL);
    CHECK_EQ(addr_split("tcp://[::1:5", host, sizeof host, &port), RL_EINVAL);

    CHECK_EQ(addr_advertise("tcp://127.0.0.1:4000", NULL, ep, sizeof ep), 0);
    CHECK_STREQ(ep, "tcp://127.0.0.1:4000");
    CHECK_EQ(addr_advertise("tcp://0.0.0.0:4000", "10.77.0.3", ep, sizeof ep), 0);
    CHECK_STREQ(ep, "tcp://10.77.0.3:4000");
    CHECK_EQ(addr_advertise("tcp://[::]:4000", "fd77::3", ep, sizeof ep), 0);
    CHECK_STREQ(ep, "tcp://[fd77::3]:4000");
    CHECK_EQ(addr_advertise("tcp://[::]:4000", "[fd77::3]", ep, sizeof ep), 0);
    CHECK_STREQ(ep, "tcp://[fd77::3]:4000");
    CHECK_EQ(addr_advertise("tcp://0.0.0.0:4000", "tcp://gw.example:8000", ep, sizeof ep), 0);
    CHECK_STREQ(ep, "tcp://gw.example:8000");
    CHECK_EQ(addr_advertise("tcp://0.0.0.0:4000", "tcp://node3", ep, sizeof ep), 0);
    CHECK_STREQ(ep, "tcp://node3:4000");
    /* a wildcard is never an address to dial */
    CHECK_EQ(addr_advertise("tcp://0.0.0.0:4000", NULL, ep, sizeof ep), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "--advertise") != NULL);
    CHECK_EQ(addr_advertise("tcp://[::]:4000", "", ep, sizeof ep), RL_EINVAL);
    CHECK_EQ(addr_advertise("tcp://10.0.0.1:4000", "0.0.0.0", ep, sizeof ep), RL_EINVAL);
    CHECK_EQ(addr_check(NULL, NULL), 0);
    CHECK_EQ(addr_check("0.0.0.0", NULL), RL_EINVAL);
    CHECK_EQ(addr_check("::", "fd77::2"), 0);
    CHECK(addr_is_wildcard("*") && addr_is_wildcard("[::]") && !addr_is_wildcard("::1"));
}

/* bind on `host`, advertise `adv`, connect to the advertised endpoint, one message each way */
static int roundtrip(void *ctx, const char *host, const char *adv) {
    char bind[ADDR_EP_LEN], bound[ADDR_EP_LEN], ep[ADDR_EP_LEN];
    void *srv = zmq_socket(ctx, ZMQ_PAIR), *cli = zmq_socket(ctx, ZMQ_PAIR);
    addr_zmq_opts(srv), addr_zmq_opts(cli);
    int linger = 0, tmo = 5000, ok = 0;
    zmq_setsockopt(srv, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(cli, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(srv, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    size_t sz = sizeof bound;
    if (addr_bind_ep(host, bind, sizeof bind) == 0 && zmq_bind(srv, bind) == 0 &&
        zmq_getsockopt(srv, ZMQ_LAST_ENDPOINT, bound, &sz) == 0 &&
        addr_advertise(bound, adv, ep, sizeof ep) == 0 && zmq_connect(cli, ep) == 0 &&
        zmq_send(cli, "hi", 2, 0) == 2) {
        char buf[4];
        ok = zmq_recv(srv, buf, sizeof buf, 0) == 2 && !memcmp(buf, "hi", 2);
    }
    zmq_close(srv), zmq_close(cli);
    return ok;
}

static void test_sockets(void) {
    void *ctx = zmq_ctx_new();
    CHECK(roundtrip(ctx, "127.0.0.1", NULL));
    CHECK(roundtrip(ctx, "0.0.0.0", "127.0.0.1"));
    /* IPv6 where the machine has a loopback for it (a container may not) */
    void *probe = zmq_socket(ctx, ZMQ_PAIR);
    addr_zmq_opts(probe);
    int have6 = zmq_bind(probe, "tcp://[::1]:*") == 0;
    zmq_close(probe);
    if (have6) {
        CHECK(roundtrip(ctx, "::1", NULL));
        CHECK(roundtrip(ctx, "::", "::1"));
        CHECK(roundtrip(ctx, "::", "127.0.0.1")); /* a v6 wildcard takes v4 too */
    } else {
        printf("no IPv6 loopback here: the IPv6 socket cases are skipped\n");
    }
    zmq_ctx_term(ctx);
}

int main(void) {
    RUN(test_forms);
    RUN(test_sockets);
    return TEST_REPORT();
}
