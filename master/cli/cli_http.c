/*
 * cli_http.c - GET from a master's HTTP endpoints with its bearer token, over plain HTTP or TLS
 * (see cli_http.h). The connection is OpenSSL's: a socket BIO, with an SSL BIO pushed on it for
 * an https master, so the request and the answer take the same path either way.
 */
#include "cli_http.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "base/err.h"
#include "net/secret.h"

/* OpenSSL's reason for the last failure, for a detail message. */
static const char *ssl_reason(void) {
    static char buf[256];
    unsigned long e = ERR_peek_last_error();
    if (!e) return errno ? strerror(errno) : "connection closed";
    ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return buf;
}

/* A TCP socket connected to host:port (5 s send and receive timeouts) into *fd. Returns 0 or
 * RL_E* (the detail starts with where). */
static int tcp_connect(const char *host, int port, const char *where, int *fd) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
        return rl_fail(RL_EINVAL, "%s: %s is not an IPv4 address", where, host);
    *fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (*fd < 0) return rl_fail(RL_EIO, "%s: socket: %s", where, strerror(errno));
    /* the master answers at once or not at all: never wait on it for long */
    struct timeval tv = {5, 0};
    setsockopt(*fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(*fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(*fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int rc = rl_fail(RL_EIO, "%s: %s", where, strerror(errno));
        close(*fd);
        *fd = -1;
        return rc;
    }
    return 0;
}

/* The TLS handshake on *bio (the socket BIO; the SSL BIO is pushed on it), then the pin: the
 * master's certificate must be the first one in cert_file. */
static int tls_start(BIO **bio, SSL_CTX **ctx, const char *cert_file, const char *where) {
    *ctx = SSL_CTX_new(TLS_client_method());
    BIO *sb = *ctx ? BIO_new_ssl(*ctx, 1) : NULL;
    if (!sb) return rl_fail(RL_ENOMEM, "%s: TLS: %s", where, ssl_reason());
    SSL_CTX_set_min_proto_version(*ctx, TLS1_2_VERSION);
    *bio = BIO_push(sb, *bio);
    SSL *ssl = NULL;
    BIO_get_ssl(sb, &ssl);
    if (!ssl || BIO_do_handshake(*bio) != 1)
        return rl_fail(RL_EIO, "%s: TLS handshake: %s", where, ssl_reason());
    FILE *f = fopen(cert_file, "r");
    if (!f) return rl_fail(RL_EIO, "%s: %s", cert_file, strerror(errno));
    X509 *want = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    X509 *got = SSL_get1_peer_certificate(ssl);
    int same = want && got && X509_cmp(want, got) == 0;
    X509_free(want);
    X509_free(got);
    if (!same)
        return rl_fail(RL_EIO, "%s: the master's TLS certificate is not the one in %s", where,
                       cert_file);
    return 0;
}

/* The request on bio and its whole answer into *out (NUL-terminated), or RL_E*. */
static int exchange(BIO *bio, const char *req, size_t req_len, char **out, size_t *out_len,
                    const char *where) {
    for (size_t off = 0; off < req_len;) {
        int n = BIO_write(bio, req + off, (int)(req_len - off));
        if (n <= 0) return rl_fail(RL_EIO, "%s: %s", where, ssl_reason());
        off += (size_t)n;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    int n = 0;
    errno = 0;
    while (buf && (n = BIO_read(bio, buf + len, (int)(cap - len - 1))) > 0) {
        len += (size_t)n;
        if (len + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    if (!buf) return rl_fail(RL_ENOMEM, "http: out of memory");
    buf[len] = 0;
    /* an HTTP/1.0 answer ends when the peer closes; a read that fails before any byte came is
     * the error (a timeout, a reset, a TLS alert) */
    if (n < 0 && len == 0) {
        free(buf);
        return rl_fail(RL_EIO, "%s: %s", where, ssl_reason());
    }
    *out = buf;
    *out_len = len;
    return 0;
}

int cli_http_get(const char *dir, const char *token_file, const char *path, char **body) {
    return cli_http_request(dir, token_file, "GET", path, NULL, body);
}

int cli_http_request(const char *dir, const char *token_file, const char *method, const char *path,
                     const char *json_body, char **body) {
    *body = NULL;
    char mpath[PATH_MAX];
    snprintf(mpath, sizeof mpath, "%.4000s/master.json", dir);
    json_t *mj = json_load_file(mpath, 0, NULL);
    int port = (int)json_integer_value(json_object_get(mj, "http_port"));
    if (!mj || port <= 0) {
        json_decref(mj);
        return rl_fail(RL_ENOTFOUND, "%s: no master with HTTP", mpath);
    }
    const char *scheme = json_string_value(json_object_get(mj, "http_scheme"));
    const char *cert = json_string_value(json_object_get(mj, "tls_cert"));
    const char *mhost = json_string_value(json_object_get(mj, "http_host"));
    int tls = scheme && !strcmp(scheme, "https");
    if (!token_file) token_file = getenv(CLI_HTTP_TOKEN_ENV);
    if (!token_file || !*token_file)
        token_file = json_string_value(json_object_get(mj, "http_token_file"));
    /* the master's address when it bound one, else the loopback (a wildcard takes it too) */
    struct in_addr ia;
    char host[64] = "127.0.0.1", where[PATH_MAX + 200], tfile[PATH_MAX] = "";
    if (mhost && inet_pton(AF_INET, mhost, &ia) == 1 && ia.s_addr != htonl(INADDR_ANY))
        snprintf(host, sizeof host, "%s", mhost);
    snprintf(where, sizeof where, "%s://%s:%d%.400s", tls ? "https" : "http", host, port, path);
    if (token_file) snprintf(tfile, sizeof tfile, "%s", token_file);
    char cert_file[PATH_MAX] = "";
    if (cert) snprintf(cert_file, sizeof cert_file, "%s", cert);
    json_decref(mj);
    if (tls && !cert_file[0])
        return rl_fail(RL_EFORMAT, "%s: an https master without tls_cert", mpath);

    char tok[SECRET_TOKEN_CAP] = "", req[4096];
    int rc = tfile[0] ? secret_token_read(tfile, tok, sizeof tok) : 0;
    if (rc < 0) return rl_fail_ctx(rc, "the master's HTTP token");
    size_t bl = json_body ? strlen(json_body) : 0;
    if (bl > 2048) return rl_fail(RL_EINVAL, "%s: request body too long", where);
    char clen[96] = "";
    if (json_body)
        snprintf(clen, sizeof clen, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
                 bl);
    int rn = snprintf(req, sizeof req, "%s %.400s HTTP/1.0\r\nHost: %s:%d\r\n%s%s%s%s\r\n%s",
                      method, path, host, port, tok[0] ? "Authorization: Bearer " : "", tok,
                      tok[0] ? "\r\n" : "", clen, json_body ? json_body : "");
    OPENSSL_cleanse(tok, sizeof tok);
    int fd = -1;
    BIO *bio = NULL;
    SSL_CTX *ctx = NULL;
    char *buf = NULL;
    size_t len = 0;
    rc = tcp_connect(host, port, where, &fd);
    if (rc == 0 && !(bio = BIO_new_socket(fd, BIO_CLOSE))) {
        close(fd);
        rc = rl_fail(RL_ENOMEM, "http: out of memory");
    }
    if (rc == 0 && tls) rc = tls_start(&bio, &ctx, cert_file, where);
    if (rc == 0) rc = exchange(bio, req, (size_t)rn, &buf, &len, where);
    OPENSSL_cleanse(req, sizeof req);
    BIO_free_all(bio);
    SSL_CTX_free(ctx);
    if (rc < 0) return rc;
    char *sep = strstr(buf, "\r\n\r\n");
    int status = !strncmp(buf, "HTTP/1.", 7) && len > 12 ? atoi(buf + 9) : 0;
    if (!sep || status != 200) {
        /* the JSON APIs say why */
        json_t *e = status && sep ? json_loads(sep + 4, 0, NULL) : NULL;
        const char *why = json_string_value(json_object_get(e, "error"));
        free(buf);
        if (status == 401)
            rc =
                rl_fail(RL_EPROTO, "%s: 401 unauthorized (%s%s)", where,
                        tfile[0] ? "refused the token in " : "no token was sent: name its file in ",
                        tfile[0] ? tfile : CLI_HTTP_TOKEN_ENV);
        else if (why)
            rc = rl_fail(RL_EPROTO, "%s: %d: %s", where, status, why);
        else
            rc = rl_fail(RL_EPROTO, "%s: %s", where, status ? "no 200 answer" : "no HTTP answer");
        json_decref(e);
        return rc;
    }
    size_t body_len = len - (size_t)(sep + 4 - buf);
    memmove(buf, sep + 4, body_len + 1);
    *body = buf;
    return 0;
}
