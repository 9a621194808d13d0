/*
 * addr.c - bind and advertised addresses (addr.h). String handling only: ZeroMQ resolves and
 * binds, so nothing here needs a resolver library.
 */
#include "net/addr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <zmq.h>

#include "base/err.h"

void addr_zmq_opts(void *sock) {
    int one = 1;
    zmq_setsockopt(sock, ZMQ_IPV6, &one, sizeof one);
}

/* host without brackets */
static void unbracket(const char *in, char *out, size_t cap) {
    size_t n = strlen(in);
    if (n >= 2 && in[0] == '[' && in[n - 1] == ']')
        snprintf(out, cap, "%.*s", (int)(n - 2), in + 1);
    else
        snprintf(out, cap, "%s", in);
}

int addr_is_wildcard(const char *host) {
    char h[256];
    unbracket(host ? host : "", h, sizeof h);
    return !strcmp(h, "0.0.0.0") || !strcmp(h, "::") || !strcmp(h, "*");
}

/* "tcp://HOST:PORTSTR" with brackets around an IPv6 literal */
static int format_ep(const char *host, const char *port, char *out, size_t cap) {
    char h[256];
    unbracket(host, h, sizeof h);
    int v6 = strchr(h, ':') != NULL;
    int n = snprintf(out, cap, "tcp://%s%s%s:%s", v6 ? "[" : "", h, v6 ? "]" : "", port);
    if (n < 0 || (size_t)n >= cap) return rl_fail(RL_EINVAL, "address '%.200s' too long", host);
    return 0;
}

int addr_bind_ep(const char *host, char *out, size_t cap) {
    return format_ep(host && host[0] ? host : "127.0.0.1", "*", out, cap);
}

int addr_split(const char *ep, char *host, size_t cap, int *port) {
    const char *p = strstr(ep, "://");
    p = p ? p + 3 : ep;
    const char *colon = NULL;
    if (*p == '[') {
        const char *close = strchr(p, ']');
        if (!close) return rl_fail(RL_EINVAL, "endpoint '%.200s': unclosed '['", ep);
        snprintf(host, cap, "%.*s", (int)(close - p - 1), p + 1);
        colon = close[1] == ':' ? close + 1 : NULL;
        if (close[1] && !colon) return rl_fail(RL_EINVAL, "endpoint '%.200s': junk after ']'", ep);
    } else {
        colon = strrchr(p, ':');
        /* an unbracketed IPv6 literal has several colons and no port */
        if (colon && strchr(p, ':') != colon) colon = NULL;
        snprintf(host, cap, "%.*s", (int)(colon ? (size_t)(colon - p) : strlen(p)), p);
    }
    if (!host[0]) return rl_fail(RL_EINVAL, "endpoint '%.200s': no host", ep);
    /* an IPv4 address as an IPv6 socket reports it ("::ffff:10.0.0.1"): the IPv4 address */
    if (!strncasecmp(host, "::ffff:", 7) && strchr(host + 7, '.') && !strchr(host + 7, ':'))
        memmove(host, host + 7, strlen(host + 7) + 1);
    *port = 0;
    if (colon && strcmp(colon + 1, "*")) {
        char *end;
        long v = strtol(colon + 1, &end, 10);
        if (*end || v < 0 || v > 65535)
            return rl_fail(RL_EINVAL, "endpoint '%.200s': bad port '%s'", ep, colon + 1);
        *port = (int)v;
    }
    return 0;
}

int addr_advertise(const char *bound, const char *advertise, char *out, size_t cap) {
    char host[256], ahost[256], port[16];
    int bport, aport;
    int rc = addr_split(bound, host, sizeof host, &bport);
    if (rc < 0) return rc;
    snprintf(port, sizeof port, "%d", bport);
    if (!advertise || !advertise[0]) {
        if (addr_is_wildcard(host))
            return rl_fail(RL_EINVAL,
                           "%s listens on every interface, which peers cannot dial: give the "
                           "address they reach this host at (--advertise HOST)",
                           bound);
        return format_ep(host, port, out, cap);
    }
    if ((rc = addr_split(advertise, ahost, sizeof ahost, &aport)) < 0) return rc;
    if (addr_is_wildcard(ahost))
        return rl_fail(RL_EINVAL, "advertised address '%.200s' is a wildcard: peers cannot dial it",
                       advertise);
    if (aport) snprintf(port, sizeof port, "%d", aport);
    return format_ep(ahost, port, out, cap);
}

int addr_check(const char *bind_host, const char *advertise) {
    char ep[ADDR_EP_LEN], adv[ADDR_EP_LEN];
    int rc = format_ep(bind_host && bind_host[0] ? bind_host : "127.0.0.1", "1", ep, sizeof ep);
    return rc < 0 ? rc : addr_advertise(ep, advertise, adv, sizeof adv);
}

int addr_normalize(char *ep, size_t cap) {
    char host[256], port[16];
    int p, rc = addr_split(ep, host, sizeof host, &p);
    if (rc < 0) return rc;
    snprintf(port, sizeof port, "%d", p);
    return format_ep(host, p ? port : "*", ep, cap);
}
