/*
 * addr.h - the addresses of listening sockets: where a socket binds, and the endpoint others
 * dial (its advertised address). One machine needs neither: every listener binds the loopback
 * by default. Across machines a listener binds a routable or wildcard address ("0.0.0.0", "::")
 * and advertises the address its peers reach it at, which a wildcard can never be.
 *
 * Hosts are IPv4 addresses, IPv6 literals (with or without brackets) or names; endpoints are
 * ZeroMQ's "tcp://HOST:PORT", with IPv6 literals in brackets ("tcp://[fd77::1]:5555"). Every
 * socket of the project gets addr_zmq_opts(), which lets it bind and connect IPv6 as well as
 * IPv4 (ZeroMQ's default is IPv4 only).
 *
 *   char ep[ADDR_EP_LEN], adv[ADDR_EP_LEN];
 *   addr_bind_ep("0.0.0.0", ep, sizeof ep);           "tcp://0.0.0.0:*"
 *   zmq_bind(sock, ep); ...ZMQ_LAST_ENDPOINT -> bound ("tcp://0.0.0.0:41234")
 *   addr_advertise(bound, "10.0.0.5", adv, sizeof adv) "tcp://10.0.0.5:41234"
 */
#ifndef RLHF_ADDR_H
#define RLHF_ADDR_H

#include <stddef.h>

#define ADDR_EP_LEN 320

/* ZMQ_IPV6 on `sock`: it binds and connects IPv6 endpoints as well as IPv4 ones. */
void addr_zmq_opts(void *sock);

/* 1 when `host` binds every interface ("0.0.0.0", "::", "[::]", "*"), else 0. */
int addr_is_wildcard(const char *host);

/* "tcp://HOST:*" (a free port), HOST in brackets when it is an IPv6 literal; NULL or "" is the
 * loopback 127.0.0.1. Returns 0 or RL_EINVAL (too long). */
int addr_bind_ep(const char *host, char *out, size_t cap);

/* The host of endpoint `ep` (brackets removed) into host; its port into *port (0 when absent or
 * "*"). Returns 0 or RL_EINVAL naming the endpoint. */
int addr_split(const char *ep, char *host, size_t cap, int *port);

/*
 * The endpoint others dial for a socket bound at `bound` (its ZMQ_LAST_ENDPOINT):
 *   advertise NULL or ""      the bound endpoint, unless it is a wildcard: RL_EINVAL saying to
 *                             give an advertised address (peers cannot dial "0.0.0.0");
 *   "HOST" / "[v6]" / "v6"    tcp://HOST:PORT with the bound port;
 *   "tcp://HOST"              the same;
 *   "tcp://HOST:PORT"         as given (a port forwarded to this one, for example).
 * Returns 0 or RL_EINVAL.
 */
int addr_advertise(const char *bound, const char *advertise, char *out, size_t cap);

/* ep (cap bytes) rewritten in the canonical form: "tcp://HOST:PORT", IPv6 in brackets, and an
 * IPv4 address that an IPv6-enabled socket reports as "::ffff:a.b.c.d" as plain a.b.c.d (what
 * ZMQ_LAST_ENDPOINT gives with addr_zmq_opts). Returns 0 or RL_EINVAL. */
int addr_normalize(char *ep, size_t cap);

/* Whether a listener bound on bind_host (NULL: loopback) can be advertised as `advertise`
 * (addr_advertise's rules, checked before anything binds). Returns 0 or RL_EINVAL. */
int addr_check(const char *bind_host, const char *advertise);

#endif
