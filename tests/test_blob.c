/*
 * test_blob.c - content-addressed artifacts (common/net/blob.h): stores, refs and manifests; a
 * server thread and clients over loopback TCP in one process (and over IPv6 ::1 where the
 * machine has it): resolves into empty stores, pushes, a damaged blob on the server, a forged
 * upload, malformed requests, abandoned uploads, a 64 MiB round trip, two threads resolving one
 * ref. With --bench: the throughput of putting, fetching and pushing 256 MiB.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>
#include <sodium.h>
#include <zmq.h>

#include "test.h"
#include "base/fs.h"
#include "net/blob.h"
#include "net/wire.h"
#include "net/wsync.h"

static void *ctx;
static char root[512]; /* this run's scratch directory */

static void nap(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A path under the scratch directory (a few rotating buffers). */
static const char *P(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *P(const char *fmt, ...) {
    static char bufs[8][1024];
    static int k;
    char *b = bufs[k++ % 8], rel[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rel, sizeof rel, fmt, ap);
    va_end(ap);
    snprintf(b, 1024, "%s/%s", root, rel);
    return b;
}

/* Deterministic bytes for a seed. */
static uint8_t *make_bytes(uint64_t seed, size_t n) {
    uint8_t *p = malloc(n ? n : 1);
    uint64_t x = 0x9E3779B97F4A7C15ULL * (seed + 1);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)(x >> 24);
    }
    return p;
}

static void write_file(const char *path, const void *data, size_t n, mode_t mode) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    CHECK_OK(fs_mkdir_p(dir));
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    if (fd < 0) return;
    CHECK(n == 0 || write(fd, data, n) == (ssize_t)n);
    close(fd);
    chmod(path, mode);
}

static void write_seeded(const char *path, uint64_t seed, size_t n, mode_t mode) {
    uint8_t *b = make_bytes(seed, n);
    write_file(path, b, n, mode);
    free(b);
}

/* 1 when the two files have the same bytes. */
static int same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int ok = fs_read_all(a, &x, &nx) == 0 && fs_read_all(b, &y, &ny) == 0 && nx == ny &&
             memcmp(x, y, nx) == 0;
    if (!ok) fprintf(stderr, "  %s and %s differ\n", a, b);
    free(x);
    free(y);
    return ok;
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void hex_of(const void *data, size_t n, char hex[BLOB_HEX_LEN + 1]) {
    uint8_t d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(d, data, n);
    sodium_bin2hex(hex, BLOB_HEX_LEN + 1, d, sizeof d);
}

/* A model-like directory: files at the top, a nested subdirectory, an empty file, a script. */
static void make_model(const char *dir, uint64_t seed) {
    char p[1024];
    const char *cfg = "{\"n_layer\":2,\"n_head\":2,\"n_embd\":64}";
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_file(p, cfg, strlen(cfg), 0644);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    write_seeded(p, seed, (3u << 20) + 12345, 0644);
    snprintf(p, sizeof p, "%s/tokenizer/vocab.json", dir);
    write_seeded(p, seed + 1, 70000, 0644);
    snprintf(p, sizeof p, "%s/tokenizer/merges/merges.txt", dir);
    write_seeded(p, seed + 2, 5000, 0444); /* read-only: stored by a hard link */
    snprintf(p, sizeof p, "%s/empty", dir);
    write_file(p, "", 0, 0644);
    snprintf(p, sizeof p, "%s/run.sh", dir);
    write_file(p, "#!/bin/sh\n", 10, 0755);
}

static const char *const model_files[] = {"config.json",
                                          "model.safetensors",
                                          "tokenizer/vocab.json",
                                          "tokenizer/merges/merges.txt",
                                          "empty",
                                          "run.sh"};
#define N_MODEL_FILES (sizeof model_files / sizeof model_files[0])

static int same_tree(const char *a, const char *b) {
    int ok = 1;
    for (size_t i = 0; i < N_MODEL_FILES; i++) {
        char x[1024], y[1024];
        snprintf(x, sizeof x, "%s/%s", a, model_files[i]);
        snprintf(y, sizeof y, "%s/%s", b, model_files[i]);
        ok &= same_file(x, y);
    }
    return ok;
}

static void copy_file_to(const char *x, const char *y) {
    char *data = NULL;
    size_t n = 0;
    struct stat sb;
    CHECK_OK(fs_read_all(x, &data, &n));
    CHECK(stat(x, &sb) == 0);
    write_file(y, data, n, sb.st_mode & 0777);
    free(data);
}

static void copy_tree(const char *from, const char *to) {
    for (size_t i = 0; i < N_MODEL_FILES; i++) {
        char x[1024], y[1024];
        snprintf(x, sizeof x, "%s/%s", from, model_files[i]);
        snprintf(y, sizeof y, "%s/%s", to, model_files[i]);
        copy_file_to(x, y);
    }
}

/* Overwrites a few bytes of blobs/<hex> in a store (blobs are read-only). */
static void damage_blob(const char *store, const char *hex, uint64_t at) {
    const char *p = P("stores/%s/blobs/%s", store, hex);
    CHECK(chmod(p, 0644) == 0);
    int fd = open(p, O_WRONLY);
    CHECK(fd >= 0);
    CHECK(pwrite(fd, "XXXX", 4, (off_t)at) == 4);
    close(fd);
    chmod(p, 0444);
}

/* ---- the store, without a network -------------------------------------------------------------
 */

static void test_refs(void) {
    char ok[80] = "sha256:";
    for (int i = 0; i < 64; i++) ok[7 + i] = "0123456789abcdef"[i % 16];
    ok[71] = '\0';
    CHECK_EQ(blob_is_ref(ok), 1);
    CHECK_EQ(blob_is_ref(NULL), 0);
    CHECK_EQ(blob_is_ref("sha256:"), 0);
    ok[70] = 'A'; /* uppercase */
    CHECK_EQ(blob_is_ref(ok), 0);
    ok[70] = 'a';
    ok[71] = 'a'; /* 65 digits */
    ok[72] = '\0';
    CHECK_EQ(blob_is_ref(ok), 0);
    ok[71] = '\0';
    CHECK_EQ(blob_is_ref(ok + 1), 0); /* "ha256:..." */
    CHECK_EQ(blob_is_ref("sha256:../../etc/passwd"), 0);
    CHECK_EQ(BLOB_REF_LEN >= 7 + BLOB_HEX_LEN + 1, 1);
}

static void test_put_local(void) {
    make_model(P("src/m1"), 1);
    blob_store_t *st = blob_store_open(P("stores/local"));
    CHECK(st != NULL);
    if (!st) return;
    char ref[BLOB_REF_LEN], again[BLOB_REF_LEN], copy[BLOB_REF_LEN];
    CHECK_OK(blob_put_path(st, P("src/m1"), ref));
    CHECK_EQ(blob_is_ref(ref), 1);
    CHECK_OK(blob_put_path(st, P("src/m1/"), again)); /* same content, same ref */
    CHECK_STREQ(again, ref);
    copy_tree(P("src/m1"), P("elsewhere/copy-of-m1"));
    blob_store_t *other = blob_store_open(P("stores/other"));
    CHECK_OK(blob_put_path(other, P("elsewhere/copy-of-m1"), copy)); /* another store, too */
    CHECK_STREQ(copy, ref);
    /* one byte changed: another ref */
    write_file(P("elsewhere/copy-of-m1/config.json"), "{}", 2, 0644);
    CHECK_OK(blob_put_path(other, P("elsewhere/copy-of-m1"), copy));
    CHECK(strcmp(copy, ref) != 0);
    blob_store_close(&other);
    CHECK(other == NULL);

    /* the manifest: canonical JSON, sorted, relative paths */
    char *json = NULL;
    size_t n = 0;
    CHECK_OK(fs_read_all(P("stores/local/blobs/%s", ref + 7), &json, &n));
    if (json) {
        CHECK(strncmp(json, "{\"files\":[{\"mode\":\"0644\",\"path\":\"config.json\",", 45) == 0);
        CHECK(strstr(json, "\"kind\":\"dir\"") != NULL);
        CHECK(strstr(json, "{\"mode\":\"0755\",\"path\":\"run.sh\"") != NULL);
        const char *a = strstr(json, "\"tokenizer/merges/merges.txt\"");
        const char *b = strstr(json, "\"tokenizer/vocab.json\"");
        CHECK(a && b && a < b);
        CHECK(strstr(json, root) == NULL); /* nothing of the machine's paths */
        free(json);
    }

    /* a read-only file is stored by a hard link, a writable one is copied */
    struct stat ro, blob_ro, rw, blob_rw;
    char *data = NULL, hex[BLOB_HEX_LEN + 1];
    CHECK(stat(P("src/m1/tokenizer/merges/merges.txt"), &ro) == 0);
    CHECK_OK(fs_read_all(P("src/m1/tokenizer/merges/merges.txt"), &data, &n));
    hex_of(data, n, hex);
    free(data);
    CHECK(stat(P("stores/local/blobs/%s", hex), &blob_ro) == 0);
    CHECK(ro.st_ino == blob_ro.st_ino);
    CHECK(stat(P("src/m1/model.safetensors"), &rw) == 0);
    CHECK_OK(fs_read_all(P("src/m1/model.safetensors"), &data, &n));
    hex_of(data, n, hex);
    free(data);
    CHECK(stat(P("stores/local/blobs/%s", hex), &blob_rw) == 0);
    CHECK(rw.st_ino != blob_rw.st_ino);
    CHECK_EQ(blob_rw.st_mode & 0777, 0444);
    CHECK_EQ(blob_store_has(st, hex), 1);
    CHECK_EQ(blob_store_has(st, "../../etc/passwd"), 0);

    /* resolved locally: the tree, read-only, the same bytes; a second resolve is the same */
    char out[1024], out2[1024];
    CHECK_OK(blob_resolve(st, NULL, ref, out, sizeof out));
    CHECK_STREQ(out, P("stores/local/trees/%s", ref + 7));
    CHECK(same_tree(P("src/m1"), out));
    struct stat sb;
    CHECK(stat(P("stores/local/trees/%s/run.sh", ref + 7), &sb) == 0);
    CHECK_EQ(sb.st_mode & 0777, 0555);
    CHECK_OK(blob_resolve(st, NULL, ref, out2, sizeof out2));
    CHECK_STREQ(out2, out);
    CHECK_ERR(blob_resolve(st, NULL, ref, out2, 10), RL_EINVAL); /* does not fit */
    CHECK_EQ(count_entries(P("stores/local/tmp")), 0);

    /* a file: its ref names the file (with its name), resolve hands out the file */
    char fref[BLOB_REF_LEN];
    write_seeded(P("src/pairs.jsonl"), 7, 100000, 0644);
    CHECK_OK(blob_put_path(st, P("src/pairs.jsonl"), fref));
    CHECK(strcmp(fref, ref) != 0);
    CHECK_OK(blob_resolve(st, NULL, fref, out, sizeof out));
    CHECK_STREQ(out, P("stores/local/trees/%s/pairs.jsonl", fref + 7));
    CHECK(same_file(out, P("src/pairs.jsonl")));
    CHECK_OK(blob_resolve(st, NULL, fref, out2, sizeof out2)); /* from the tree at once */
    CHECK_STREQ(out2, out);
    /* a symbolic link to a file is followed: the same content, the same ref */
    char lref[BLOB_REF_LEN], cref[BLOB_REF_LEN];
    CHECK_OK(fs_mkdir_p(P("src/linked")));
    CHECK(symlink(P("src/pairs.jsonl"), P("src/linked/pairs.jsonl")) == 0);
    CHECK_OK(blob_put_path(st, P("src/linked"), lref));
    copy_file_to(P("src/pairs.jsonl"), P("src/copied/pairs.jsonl"));
    CHECK_OK(blob_put_path(st, P("src/copied"), cref));
    CHECK_STREQ(lref, cref);

    /* refused: a FIFO, a link to a directory, a missing path; a ref not in the store */
    CHECK_OK(fs_mkdir_p(P("src/bad")));
    CHECK(mkfifo(P("src/bad/fifo"), 0644) == 0);
    CHECK_ERR(blob_put_path(st, P("src/bad"), again), RL_EUNSUPPORTED);
    CHECK(strstr(rl_errmsg(), "fifo") != NULL);
    CHECK_EQ(again[0], '\0');
    unlink(P("src/bad/fifo"));
    CHECK(symlink(P("src/m1"), P("src/bad/dirlink")) == 0);
    CHECK_ERR(blob_put_path(st, P("src/bad"), again), RL_EUNSUPPORTED);
    CHECK(strstr(rl_errmsg(), "dirlink") != NULL);
    unlink(P("src/bad/dirlink"));
    CHECK(symlink(P("src/pairs.jsonl"), P("src/bad/filelink")) == 0);
    CHECK_OK(blob_put_path(st, P("src/bad"), again));
    CHECK_ERR(blob_put_path(st, P("src/nothing-here"), again), RL_ENOTFOUND);
    CHECK_ERR(blob_put_path(st, P("stores"), again), RL_EINVAL); /* holds the store */
    CHECK(strstr(rl_errmsg(), "blob store") != NULL);
    char missing[BLOB_REF_LEN] = "sha256:";
    memset(missing + 7, 'e', 64);
    missing[71] = '\0';
    CHECK_ERR(blob_resolve(st, NULL, missing, out, sizeof out), RL_ENOTFOUND);
    CHECK(strstr(rl_errmsg(), missing) != NULL);
    CHECK_ERR(blob_resolve(st, NULL, "sha256:nope", out, sizeof out), RL_EINVAL);
    /* a blob that is not a manifest */
    char nref[BLOB_REF_LEN];
    snprintf(nref, sizeof nref, "sha256:%s", hex);
    CHECK_ERR(blob_resolve(st, NULL, nref, out, sizeof out), RL_EFORMAT);
    blob_store_close(&st);
}

/* ---- over the wire ----------------------------------------------------------------------------
 */

static blob_store_t *srv_store, *cli_store;
static blob_server_t *srv;

static void test_fetch(void) {
    make_model(P("src/m2"), 2);
    srv_store = blob_store_open(P("stores/server"));
    CHECK(srv_store != NULL);
    srv = blob_server_start(ctx, srv_store, "tcp://127.0.0.1:*", NULL);
    CHECK(srv != NULL);
    if (!srv_store || !srv) return;
    CHECK(strncmp(blob_server_endpoint(srv), "tcp://127.0.0.1:", 16) == 0);
    char ref[BLOB_REF_LEN], fref[BLOB_REF_LEN], out[1024];
    CHECK_OK(blob_put_path(srv_store, P("src/m2"), ref));
    write_seeded(P("src/data.jsonl"), 9, 1234567, 0644);
    CHECK_OK(blob_put_path(srv_store, P("src/data.jsonl"), fref));

    cli_store = blob_store_open(P("stores/client"));
    blob_client_t *c = blob_client_new(ctx, blob_server_endpoint(srv));
    CHECK(c != NULL);
    if (!c || !cli_store) return;
    blob_client_opts_t o = {.chunk_bytes = 256u << 10, .credit = 4};
    blob_client_set_opts(c, &o);
    CHECK_OK(blob_resolve(cli_store, c, ref, out, sizeof out));
    CHECK_STREQ(out, P("stores/client/trees/%s", ref + 7));
    CHECK(same_tree(P("src/m2"), out));
    blob_client_stats_t cs;
    blob_client_stats(c, &cs);
    CHECK_EQ(cs.blobs_fetched, 7); /* the manifest and six files */
    CHECK_EQ(cs.crc_errors, 0);
    blob_server_stats_t ss;
    blob_server_stats(srv, &ss);
    CHECK_EQ(ss.bytes_sent, cs.bytes_received);
    CHECK_EQ(ss.bad_requests, 0);
    uint64_t before = ss.requests;
    /* the second time: from the store, nothing asked */
    CHECK_OK(blob_resolve(cli_store, c, ref, out, sizeof out));
    blob_server_stats(srv, &ss);
    CHECK_EQ(ss.requests, before);
    /* a blob damaged in the client's store: found by verify, removed with the tree, fetched
     * again by the next resolve */
    CHECK_OK(blob_store_verify(cli_store, ref));
    char *data = NULL, hex[BLOB_HEX_LEN + 1];
    size_t n = 0;
    CHECK_OK(fs_read_all(P("src/m2/model.safetensors"), &data, &n));
    hex_of(data, n, hex);
    free(data);
    damage_blob("client", hex, 100);
    CHECK_ERR(blob_store_verify(cli_store, ref), RL_EPROTO);
    CHECK(strstr(rl_errmsg(), hex) != NULL);
    CHECK_EQ(blob_store_has(cli_store, hex), 0);
    CHECK_EQ(count_entries(P("stores/client/trees")), 0);
    CHECK_OK(blob_resolve(cli_store, c, ref, out, sizeof out));
    CHECK(same_tree(P("src/m2"), out));
    CHECK_OK(blob_store_verify(cli_store, ref));
    /* a file ref */
    CHECK_OK(blob_resolve(cli_store, c, fref, out, sizeof out));
    CHECK_STREQ(out, P("stores/client/trees/%s/data.jsonl", fref + 7));
    CHECK(same_file(out, P("src/data.jsonl")));
    CHECK_EQ(count_entries(P("stores/client/tmp")), 0);
    /* a ref the server does not have: RL_ENOTFOUND naming it and the server */
    char missing[BLOB_REF_LEN] = "sha256:";
    memset(missing + 7, 'd', 64);
    missing[71] = '\0';
    CHECK_ERR(blob_resolve(cli_store, c, missing, out, sizeof out), RL_ENOTFOUND);
    CHECK(strstr(rl_errmsg(), missing) && strstr(rl_errmsg(), blob_server_endpoint(srv)));
    blob_client_free(&c);
    CHECK(c == NULL);
}

static void test_push(void) {
    if (!srv) return;
    make_model(P("src/result"), 3);
    blob_client_t *c = blob_client_new(NULL, blob_server_endpoint(srv)); /* its own context */
    CHECK(c != NULL);
    if (!c) return;
    char ref[BLOB_REF_LEN], out[1024];
    blob_server_stats_t before, after;
    blob_server_stats(srv, &before);
    CHECK_OK(blob_publish(c, cli_store, P("src/result"), ref));
    blob_server_stats(srv, &after);
    /* config.json, the empty file and run.sh are those of m2, which the server has */
    blob_client_stats_t cs;
    blob_client_stats(c, &cs);
    CHECK_EQ(after.blobs_received - before.blobs_received, 4);
    CHECK_EQ(cs.blobs_pushed, 4);
    CHECK_EQ(cs.blobs_present, 3);
    CHECK_EQ(blob_store_has(srv_store, ref + 7), 1);
    /* resolved on the server's side without any network */
    CHECK_OK(blob_resolve(srv_store, NULL, ref, out, sizeof out));
    CHECK(same_tree(P("src/result"), out));
    CHECK_EQ(count_entries(P("stores/server/tmp")), 0);
    /* pushed again: asked once, nothing sent */
    uint64_t requests = after.requests;
    CHECK_OK(blob_client_push(c, cli_store, ref));
    blob_client_stats(c, &cs);
    CHECK_EQ(cs.blobs_pushed, 4);
    CHECK_EQ(cs.blobs_present, 3 + 7);
    blob_server_stats(srv, &after);
    CHECK_EQ(after.blobs_received - before.blobs_received, 4);
    CHECK_EQ(after.requests - requests, 1);
    /* a small change: only the changed file and the new manifest travel */
    write_file(P("src/result/config.json"), "{\"n_layer\":3}", 13, 0644);
    CHECK_OK(blob_publish(c, cli_store, P("src/result"), ref));
    blob_server_stats(srv, &after);
    CHECK_EQ(after.blobs_received - before.blobs_received, 6);
    CHECK_ERR(blob_client_push(c, cli_store, "sha256:x"), RL_EINVAL);
    char missing[BLOB_REF_LEN] = "sha256:";
    memset(missing + 7, 'c', 64);
    missing[71] = '\0';
    CHECK_ERR(blob_client_push(c, cli_store, missing), RL_ENOTFOUND);
    blob_client_free(&c);
}

static void test_damaged_server_blob(void) {
    if (!srv) return;
    write_seeded(P("src/damaged.bin"), 11, 3u << 20, 0644);
    char ref[BLOB_REF_LEN], hex[BLOB_HEX_LEN + 1], out[1024], *data = NULL;
    size_t n = 0;
    CHECK_OK(fs_read_all(P("src/damaged.bin"), &data, &n));
    hex_of(data, n, hex);
    free(data);
    CHECK_OK(blob_put_path(srv_store, P("src/damaged.bin"), ref));
    damage_blob("server", hex, 2u << 20);
    blob_store_t *st = blob_store_open(P("stores/victim"));
    blob_client_t *c = blob_client_new(ctx, blob_server_endpoint(srv));
    CHECK_ERR(blob_resolve(st, c, ref, out, sizeof out), RL_EPROTO);
    CHECK(strstr(rl_errmsg(), hex) != NULL);                       /* names the digest */
    CHECK(strstr(rl_errmsg(), blob_server_endpoint(srv)) != NULL); /* and the endpoint */
    fprintf(stderr, "  %s\n", rl_errmsg());
    CHECK_EQ(blob_store_has(st, hex), 0); /* nothing corrupt in the store */
    CHECK_EQ(count_entries(P("stores/victim/trees")), 0);
    CHECK_EQ(count_entries(P("stores/victim/tmp")), 0);
    CHECK_EQ(blob_store_has(st, ref + 7), 1); /* the (good) manifest is kept */
    blob_client_free(&c);
    blob_store_close(&st);
}

/* A raw DEALER to the server, for what the client never sends. */
static void *raw_open(void) {
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    CHECK(zmq_connect(d, blob_server_endpoint(srv)) == 0);
    return d;
}

/* The body of the next answer (0 when none came within 3 s); *code from BlobAck/BlobData. */
static int raw_expect(void *d, int *code) {
    zmq_pollitem_t it = {d, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 3000) <= 0) return 0;
    wire_msg_t m;
    Rlhf__Envelope *e = NULL;
    int body = 0;
    if (wire_recv(d, 0, &m, 0) > 0 && wire_decode(&m, &e) == WIRE_OK) {
        body = e->body_case;
        if (code && body == RLHF__ENVELOPE__BODY_BLOB_ACK) *code = e->blob_ack->code;
        if (code && body == RLHF__ENVELOPE__BODY_BLOB_DATA) *code = e->blob_data->code;
        rlhf__envelope__free_unpacked(e, NULL);
    }
    wire_msg_free(&m);
    return body;
}

static void raw_get(void *d, const char *digest, uint64_t offset, uint64_t length) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__BlobGet g = RLHF__BLOB_GET__INIT;
    g.digest = (char *)digest;
    g.offset = offset;
    g.length = length;
    env.body_case = RLHF__ENVELOPE__BODY_BLOB_GET;
    env.blob_get = &g;
    CHECK_OK(wire_send(d, NULL, 0, &env, NULL, NULL, 0, 0));
}

static void raw_put(void *d, const char *digest, uint64_t offset, uint64_t total, int last,
                    const void *data, size_t len) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__BlobPut u = RLHF__BLOB_PUT__INIT;
    Rlhf__TensorHeader th, *ths[1] = {&th};
    int64_t shape[1] = {(int64_t)len};
    wire_tensor_describe(&th, "blob", RLHF__DTYPE__DTYPE_UNSPECIFIED, shape, 1, data, len);
    u.digest = (char *)digest;
    u.offset = offset;
    u.total_size = total;
    u.last = last;
    env.body_case = RLHF__ENVELOPE__BODY_BLOB_PUT;
    env.blob_put = &u;
    env.frames = ths;
    env.n_frames = 1;
    const void *frames[1] = {data};
    size_t lens[1] = {len};
    CHECK_OK(wire_send(d, NULL, 0, &env, frames, lens, 1, 0));
}

static void test_forged_upload(void) {
    if (!srv) return;
    void *d = raw_open();
    uint8_t *good = make_bytes(21, 100000), *bad = make_bytes(22, 100000);
    char hex[BLOB_HEX_LEN + 1];
    hex_of(good, 100000, hex);
    blob_server_stats_t before, after;
    blob_server_stats(srv, &before);
    int code = 0;
    raw_put(d, hex, 0, 100000, 1, bad, 100000); /* other bytes under good's digest */
    CHECK_EQ(raw_expect(d, &code), RLHF__ENVELOPE__BODY_BLOB_ACK);
    CHECK_EQ(code, RL_EPROTO);
    CHECK_EQ(blob_store_has(srv_store, hex), 0);
    CHECK_EQ(count_entries(P("stores/server/tmp")), 0);
    raw_put(d, hex, 0, 100000, 1, good, 100000); /* the right bytes are taken */
    CHECK_EQ(raw_expect(d, &code), RLHF__ENVELOPE__BODY_BLOB_ACK);
    CHECK_EQ(code, 0);
    CHECK_EQ(blob_store_has(srv_store, hex), 1);
    blob_server_stats(srv, &after);
    CHECK_EQ(after.blobs_received - before.blobs_received, 1);
    CHECK_EQ(after.bad_requests - before.bad_requests, 1);
    zmq_close(d);

    /* through the client: a damaged blob in the pushing store is refused by the server */
    blob_store_t *st = blob_store_open(P("stores/damaged-pusher"));
    write_seeded(P("src/to-push.bin"), 23, 2u << 20, 0644);
    char ref[BLOB_REF_LEN], *data = NULL;
    size_t n = 0;
    CHECK_OK(blob_put_path(st, P("src/to-push.bin"), ref));
    CHECK_OK(fs_read_all(P("src/to-push.bin"), &data, &n));
    hex_of(data, n, hex);
    free(data);
    damage_blob("damaged-pusher", hex, 1000);
    blob_client_t *c = blob_client_new(ctx, blob_server_endpoint(srv));
    CHECK_ERR(blob_client_push(c, st, ref), RL_EPROTO);
    CHECK(strstr(rl_errmsg(), hex) != NULL);
    CHECK_EQ(blob_store_has(srv_store, hex), 0);
    CHECK_EQ(blob_store_has(srv_store, ref + 7), 0); /* its manifest was never sent */
    CHECK_EQ(count_entries(P("stores/server/tmp")), 0);
    blob_client_free(&c);
    blob_store_close(&st);
    free(good);
    free(bad);
}

static void test_malformed(void) {
    if (!srv) return;
    void *d = raw_open();
    blob_server_stats_t before, after;
    blob_server_stats(srv, &before);
    char hex[BLOB_HEX_LEN + 1];
    uint8_t *b = make_bytes(31, 5000);
    hex_of(b, 5000, hex);
    zmq_send(d, "garbage!", 8, 0);
    CHECK_EQ(raw_expect(d, NULL), RLHF__ENVELOPE__BODY_ERROR);
    raw_get(d, "../../etc/passwd", 0, 1024); /* a path, not a digest */
    CHECK_EQ(raw_expect(d, NULL), RLHF__ENVELOPE__BODY_ERROR);
    char upper[BLOB_HEX_LEN + 1];
    memset(upper, 'A', BLOB_HEX_LEN);
    upper[BLOB_HEX_LEN] = '\0';
    raw_get(d, upper, 0, 1024);
    CHECK_EQ(raw_expect(d, NULL), RLHF__ENVELOPE__BODY_ERROR);
    raw_get(d, hex, 0, 1ull << 40); /* a huge length */
    CHECK_EQ(raw_expect(d, NULL), RLHF__ENVELOPE__BODY_ERROR);
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__BlobStat q = RLHF__BLOB_STAT__INIT;
    char *digests[2] = {hex, "../x"};
    q.digests = digests;
    q.n_digests = 2;
    env.body_case = RLHF__ENVELOPE__BODY_BLOB_STAT;
    env.blob_stat = &q;
    CHECK_OK(wire_send(d, NULL, 0, &env, NULL, NULL, 0, 0));
    CHECK_EQ(raw_expect(d, NULL), RLHF__ENVELOPE__BODY_ERROR);
    Rlhf__Envelope ping_env = RLHF__ENVELOPE__INIT;
    Rlhf__Ping ping = RLHF__PING__INIT;
    ping_env.body_case = RLHF__ENVELOPE__BODY_PING;
    ping_env.ping = &ping;
    CHECK_OK(wire_send(d, NULL, 0, &ping_env, NULL, NULL, 0, 0));
    CHECK_EQ(raw_expect(d, NULL), RLHF__ENVELOPE__BODY_ERROR); /* not a blob request */
    raw_put(d, hex, 1000, 5000, 0, b + 1000, 1000); /* a piece of an upload not started */
    CHECK_EQ(raw_expect(d, NULL), RLHF__ENVELOPE__BODY_ERROR);
    raw_put(d, hex, 0, 5000, 1, b, 1000); /* "last", but not the end */
    CHECK_EQ(raw_expect(d, NULL), RLHF__ENVELOPE__BODY_ERROR);
    blob_server_stats(srv, &after);
    CHECK_EQ(after.bad_requests - before.bad_requests, 8);
    /* legitimate questions still get answers: a blob it lacks, a stat */
    int code = 0;
    raw_get(d, hex, 0, 1024);
    CHECK_EQ(raw_expect(d, &code), RLHF__ENVELOPE__BODY_BLOB_DATA);
    CHECK_EQ(code, RL_ENOTFOUND);
    q.n_digests = 1;
    CHECK_OK(wire_send(d, NULL, 0, &env, NULL, NULL, 0, 0));
    CHECK_EQ(raw_expect(d, NULL), RLHF__ENVELOPE__BODY_BLOB_HAVE);

    /* an abandoned upload is deleted after its timeout */
    blob_server_set_partial_timeout(srv, 300);
    raw_put(d, hex, 0, 5000, 0, b, 1000);
    CHECK_EQ(raw_expect(d, &code), RLHF__ENVELOPE__BODY_BLOB_ACK);
    CHECK_EQ(code, 0);
    CHECK_EQ(count_entries(P("stores/server/tmp")), 1);
    for (int i = 0; i < 100 && count_entries(P("stores/server/tmp")) > 0; i++) nap(20);
    CHECK_EQ(count_entries(P("stores/server/tmp")), 0);
    blob_server_stats(srv, &after);
    CHECK_EQ(after.partials_expired - before.partials_expired, 1);
    /* at most BLOB_MAX_PARTIAL unfinished uploads per peer */
    blob_server_set_partial_timeout(srv, BLOB_PARTIAL_TIMEOUT_MS);
    for (int i = 0; i <= BLOB_MAX_PARTIAL; i++) {
        char other[BLOB_HEX_LEN + 1];
        memcpy(other, hex, sizeof other);
        other[0] = "0123456789abcdef"[i];
        raw_put(d, other, 0, 5000, 0, b, 1000);
        CHECK_EQ(raw_expect(d, &code), RLHF__ENVELOPE__BODY_BLOB_ACK);
        CHECK_EQ(code, i < BLOB_MAX_PARTIAL ? 0 : RL_ERANGE);
    }
    zmq_close(d);
    free(b);
    /* and the server keeps serving */
    blob_store_t *st = blob_store_open(P("stores/after-garbage"));
    blob_client_t *c = blob_client_new(ctx, blob_server_endpoint(srv));
    char ref[BLOB_REF_LEN], out[1024];
    CHECK_OK(blob_put_path(srv_store, P("src/m2"), ref));
    CHECK_OK(blob_resolve(st, c, ref, out, sizeof out));
    CHECK(same_tree(P("src/m2"), out));
    blob_client_free(&c);
    blob_store_close(&st);
}

static void test_large(void) {
    if (!srv) return;
    size_t n = 64u << 20;
    write_seeded(P("src/large.bin"), 41, n, 0644);
    char ref[BLOB_REF_LEN], out[1024];
    double t0 = wire_now_ms();
    CHECK_OK(blob_put_path(srv_store, P("src/large.bin"), ref));
    double t1 = wire_now_ms();
    blob_store_t *st = blob_store_open(P("stores/large"));
    blob_client_t *c = blob_client_new(ctx, blob_server_endpoint(srv));
    CHECK_OK(blob_resolve(st, c, ref, out, sizeof out));
    double t2 = wire_now_ms();
    CHECK(same_file(out, P("src/large.bin")));
    fprintf(stderr, "  64 MiB: put %.0f MB/s, fetch %.0f MB/s\n", n / (t1 - t0) / 1e3,
            n / (t2 - t1) / 1e3);
    /* and back the other way, into a fresh server */
    blob_store_t *st2 = blob_store_open(P("stores/large-back"));
    blob_server_t *s2 = blob_server_start(ctx, st2, "tcp://127.0.0.1:*", NULL);
    blob_client_t *c2 = blob_client_new(ctx, blob_server_endpoint(s2));
    t1 = wire_now_ms();
    CHECK_OK(blob_client_push(c2, st, ref));
    t2 = wire_now_ms();
    fprintf(stderr, "  64 MiB: push %.0f MB/s\n", n / (t2 - t1) / 1e3);
    CHECK_OK(blob_resolve(st2, NULL, ref, out, sizeof out));
    CHECK(same_file(out, P("src/large.bin")));
    blob_client_free(&c2);
    blob_server_stop(&s2);
    CHECK(s2 == NULL);
    blob_store_close(&st2);
    blob_client_free(&c);
    blob_store_close(&st);
    unlink(P("src/large.bin"));
}

/* A slow server: the client times out, drops its socket and asks again on a fresh one, for
 * fetches and pushes alike, until the server answers in time; a piece damaged on the way is
 * asked for again. */
static void *undelay_thread(void *arg) {
    nap(700);
    blob_server_set_delay(arg, 0);
    return NULL;
}

static void test_retries(void) {
    if (!srv) return;
    make_model(P("src/m5"), 5);
    make_model(P("src/m6"), 6);
    char ref[BLOB_REF_LEN], ref6[BLOB_REF_LEN], out[1024];
    CHECK_OK(blob_put_path(srv_store, P("src/m5"), ref));
    blob_store_t *st = blob_store_open(P("stores/retries"));
    blob_client_t *c = blob_client_new(ctx, blob_server_endpoint(srv));
    blob_client_opts_t o = {
        .chunk_bytes = 256u << 10, .credit = 4, .timeout_ms = 100, .max_retries = 100};
    blob_client_set_opts(c, &o);
    blob_server_set_partial_timeout(srv, 300);
    blob_server_set_delay(srv, 150);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, undelay_thread, srv) == 0);
    CHECK_OK(blob_resolve(st, c, ref, out, sizeof out));
    pthread_join(th, NULL);
    CHECK(same_tree(P("src/m5"), out));
    blob_client_stats_t cs;
    blob_client_stats(c, &cs);
    CHECK(cs.timeouts >= 1);
    fprintf(stderr, "  fetch: %llu silences before the server kept up\n",
            (unsigned long long)cs.timeouts);
    uint64_t before = cs.timeouts;
    CHECK_OK(blob_put_path(st, P("src/m6"), ref6));
    blob_server_set_delay(srv, 150);
    CHECK(pthread_create(&th, NULL, undelay_thread, srv) == 0);
    CHECK_OK(blob_client_push(c, st, ref6));
    pthread_join(th, NULL);
    blob_client_stats(c, &cs);
    CHECK(cs.timeouts > before);
    fprintf(stderr, "  push: %llu silences\n", (unsigned long long)(cs.timeouts - before));
    CHECK_OK(blob_resolve(srv_store, NULL, ref6, out, sizeof out));
    CHECK(same_tree(P("src/m6"), out));
    /* what the abandoned sockets left unfinished goes */
    for (int i = 0; i < 100 && count_entries(P("stores/server/tmp")) > 0; i++) nap(20);
    CHECK_EQ(count_entries(P("stores/server/tmp")), 0);
    blob_server_set_partial_timeout(srv, BLOB_PARTIAL_TIMEOUT_MS);

    /* a piece with a bad CRC is asked for again */
    blob_store_t *st2 = blob_store_open(P("stores/crc"));
    blob_client_t *c2 = blob_client_new(ctx, blob_server_endpoint(srv));
    blob_server_corrupt_once(srv);
    CHECK_OK(blob_resolve(st2, c2, ref, out, sizeof out));
    CHECK(same_tree(P("src/m5"), out));
    blob_client_stats(c2, &cs);
    CHECK_EQ(cs.crc_errors, 1);
    blob_client_free(&c2);
    blob_store_close(&st2);
    blob_client_free(&c);
    blob_store_close(&st);
}

typedef struct {
    const char *ref;
    blob_store_t *st;
    int rc;
    char out[1024];
} resolver_t;

static void *resolve_thread(void *arg) {
    resolver_t *r = arg;
    blob_client_t *c = blob_client_new(ctx, blob_server_endpoint(srv));
    r->rc = blob_resolve(r->st, c, r->ref, r->out, sizeof r->out);
    blob_client_free(&c);
    return NULL;
}

static void test_concurrent(void) {
    if (!srv) return;
    make_model(P("src/m4"), 4);
    char ref[BLOB_REF_LEN];
    CHECK_OK(blob_put_path(srv_store, P("src/m4"), ref));
    blob_store_t *st = blob_store_open(P("stores/shared"));
    resolver_t r[2] = {{.ref = ref, .st = st, .rc = 1}, {.ref = ref, .st = st, .rc = 1}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&th[i], NULL, resolve_thread, &r[i]) == 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    CHECK_OK(r[0].rc);
    CHECK_OK(r[1].rc);
    CHECK_STREQ(r[0].out, r[1].out);
    CHECK(same_tree(P("src/m4"), r[0].out));
    CHECK_EQ(count_entries(P("stores/shared/trees")), 1);
    CHECK_EQ(count_entries(P("stores/shared/tmp")), 0);
    blob_store_close(&st);
}

static void test_ipv6(void) {
    if (!srv) return;
    blob_server_t *s6 = blob_server_start(ctx, srv_store, "tcp://[::1]:*", NULL);
    if (!s6) {
        fprintf(stderr, "  no IPv6 loopback here (%s): skipped\n", rl_errmsg());
        return;
    }
    CHECK(strncmp(blob_server_endpoint(s6), "tcp://[::1]:", 12) == 0);
    char ref[BLOB_REF_LEN], out[1024];
    CHECK_OK(blob_put_path(srv_store, P("src/m2"), ref));
    blob_store_t *st = blob_store_open(P("stores/v6"));
    blob_client_t *c = blob_client_new(ctx, blob_server_endpoint(s6));
    blob_client_opts_t o = {.timeout_ms = 2000, .max_retries = 1};
    blob_client_set_opts(c, &o);
    int rc = blob_resolve(st, c, ref, out, sizeof out);
    CHECK_OK(rc);
    if (rc == 0) CHECK(same_tree(P("src/m2"), out));
    blob_client_free(&c);
    blob_store_close(&st);
    blob_server_stop(&s6);
}

static void test_advertise(void) {
    blob_store_t *st = blob_store_open(P("stores/adv"));
    blob_server_t *s = blob_server_start(NULL, st, "tcp://127.0.0.1:*", "::1");
    CHECK(s != NULL);
    if (!s) return;
    const char *port = strrchr(blob_server_endpoint(s), ':');
    char want[128];
    snprintf(want, sizeof want, "tcp://[::1]%s", port);
    CHECK_STREQ(blob_server_endpoint(s), want);
    blob_server_stop(&s);
    s = blob_server_start(NULL, st, "tcp://127.0.0.1:*", "node3");
    CHECK(s && strncmp(blob_server_endpoint(s), "tcp://node3:", 12) == 0);
    blob_server_stop(&s);
    s = blob_server_start(NULL, st, "tcp://127.0.0.1:*", "tcp://gateway:9000");
    CHECK(s != NULL);
    if (s) CHECK_STREQ(blob_server_endpoint(s), "tcp://gateway:9000");
    blob_server_stop(&s);
    CHECK(blob_server_start(NULL, st, "tcp://256.1.1.1:1", NULL) == NULL);
    CHECK(strstr(rl_errmsg(), "256.1.1.1") != NULL);
    blob_store_close(&st);
}

/* Nobody answers: bounded retries; a cancel stops a wait at once. */
static void test_silence(void) {
    blob_store_t *st = blob_store_open(P("stores/silence"));
    void *r = zmq_socket(ctx, ZMQ_ROUTER); /* binds, never answers */
    CHECK(zmq_bind(r, "tcp://127.0.0.1:*") == 0);
    char ep[256];
    size_t sz = sizeof ep;
    zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep, &sz);
    blob_client_t *c = blob_client_new(ctx, ep);
    blob_client_opts_t o = {.timeout_ms = 150, .max_retries = 2};
    blob_client_set_opts(c, &o);
    char ref[BLOB_REF_LEN] = "sha256:", out[1024];
    memset(ref + 7, 'b', 64);
    ref[71] = '\0';
    double t0 = wire_now_ms();
    CHECK_ERR(blob_resolve(st, c, ref, out, sizeof out), RL_EIO);
    CHECK(strstr(rl_errmsg(), ep) != NULL);
    blob_client_stats_t cs;
    blob_client_stats(c, &cs);
    CHECK_EQ(cs.timeouts, 3);
    CHECK(wire_now_ms() - t0 < 3000);
    _Atomic int cancel = 1;
    o.timeout_ms = 60000;
    blob_client_set_opts(c, &o);
    blob_client_set_cancel(c, &cancel);
    t0 = wire_now_ms();
    CHECK_ERR(blob_resolve(st, c, ref, out, sizeof out), RL_EIO);
    CHECK(strstr(rl_errmsg(), "cancelled") != NULL);
    CHECK(wire_now_ms() - t0 < 1000);
    CHECK_EQ(count_entries(P("stores/silence/tmp")), 0);
    blob_client_free(&c);
    zmq_close(r);
    blob_store_close(&st);
}

/* --bench [MiB]: a blob (256 MiB) put, fetched and pushed over loopback. */
static size_t bench_bytes = 256u << 20;

static void bench(void) {
    size_t n = bench_bytes;
    write_seeded(P("bench/big.bin"), 51, n, 0644);
    blob_store_t *a = blob_store_open(P("bench/a")), *b = blob_store_open(P("bench/b"));
    blob_store_t *c3 = blob_store_open(P("bench/c"));
    blob_server_t *s = blob_server_start(ctx, a, "tcp://127.0.0.1:*", NULL);
    blob_server_t *s3 = blob_server_start(ctx, c3, "tcp://127.0.0.1:*", NULL);
    blob_client_t *c = blob_client_new(ctx, blob_server_endpoint(s));
    blob_client_t *cp = blob_client_new(ctx, blob_server_endpoint(s3));
    char ref[BLOB_REF_LEN], out[1024];
    double t0 = wire_now_ms();
    CHECK_OK(blob_put_path(a, P("bench/big.bin"), ref));
    double t1 = wire_now_ms();
    CHECK_OK(blob_resolve(b, c, ref, out, sizeof out));
    double t2 = wire_now_ms();
    CHECK_OK(blob_client_push(cp, b, ref));
    double t3 = wire_now_ms();
    CHECK(same_file(out, P("bench/big.bin")));
    uint8_t *buf = make_bytes(1, 64u << 20);
    crypto_hash_sha256_state sha;
    double h0 = wire_now_ms();
    crypto_hash_sha256_init(&sha);
    crypto_hash_sha256_update(&sha, buf, 64u << 20);
    uint8_t d[32];
    crypto_hash_sha256_final(&sha, d);
    double h1 = wire_now_ms();
    free(buf);
    printf("{\"bytes\":%zu,\"put_MBps\":%.0f,\"fetch_MBps\":%.0f,\"push_MBps\":%.0f,"
           "\"sha256_MBps\":%.0f}\n",
           n, n / (t1 - t0) / 1e3, n / (t2 - t1) / 1e3, n / (t3 - t2) / 1e3,
           (64u << 20) / (h1 - h0) / 1e3);
    blob_client_free(&c);
    blob_client_free(&cp);
    blob_server_stop(&s);
    blob_server_stop(&s3);
    blob_store_close(&a);
    blob_store_close(&b);
    blob_store_close(&c3);
}

int main(int argc, char **argv) {
    ctx = zmq_ctx_new();
    snprintf(root, sizeof root, "%s", test_tmpdir());
    if (sodium_init() < 0) return 1;
    if (argc > 1 && !strcmp(argv[1], "--bench")) {
        wsync_malloc_tune(); /* as rlhf-worker does: received pieces reuse heap blocks */
        if (argc > 2) bench_bytes = (size_t)atol(argv[2]) << 20;
        RUN(bench);
    } else {
        RUN(test_refs);
        RUN(test_put_local);
        RUN(test_fetch);
        RUN(test_push);
        RUN(test_damaged_server_blob);
        RUN(test_forged_upload);
        RUN(test_malformed);
        RUN(test_large);
        RUN(test_retries);
        RUN(test_concurrent);
        RUN(test_ipv6);
        RUN(test_advertise);
        RUN(test_silence);
        blob_server_stop(&srv);
        blob_store_close(&srv_store);
        blob_store_close(&cli_store);
    }
    zmq_ctx_term(ctx);
    fs_remove_tree(root);
    return TEST_REPORT();
}
