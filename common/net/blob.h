/*
 * blob.h - content-addressed artifacts over the wire. Models (directories), datasets (files) and
 * results move between machines that share no filesystem, named by the SHA-256 of their bytes,
 * verified on arrival and cached in a store on each machine.
 *
 * A store is a directory (any number of processes may use one at once: everything appears by
 * an atomic rename, so a half-written file or tree is never visible under its final name):
 *   DIR/blobs/<hex>    immutable files (mode 0444), each named by the SHA-256 of its bytes
 *   DIR/trees/<hex>/   materialised manifests: the files of a ref, hard links to the blobs
 *   DIR/tmp/           where everything is written first (litter older than a day is removed
 *                      when a store is opened)
 *   DIR/locks/<hex>    empty files: flock'ed while a ref is resolved, so that processes and
 *                      threads sharing a store fetch a ref once, not once each
 *
 * A ref ("sha256:<64 hex>") names a manifest blob: canonical JSON (jansson, compact, keys
 * sorted)
 *   {"files":[{"mode":"0644","path":"config.json","sha256":"<hex>","size":N},...],"kind":"dir"}
 * with the files sorted by path (bytes), paths relative with '/' separators and no "." or ".."
 * components. "kind":"file" has exactly one file, named by the original file's name (a dataset
 * keeps its extension). Modes are "0755" for a file its owner may execute and "0644" otherwise
 * (as git does), so the same content gives the same ref on any machine whatever its umask.
 * Empty directories are not recorded.
 *
 * Use (the master's host publishes a model and serves its store; a worker resolves it, trains,
 * and publishes its result back):
 *   blob_store_t *st = blob_store_open("/var/cache/rlhf");
 *   blob_server_t *srv = blob_server_start(NULL, st, "tcp://0.0.0.0:7000", "10.0.0.5");
 *   char ref[BLOB_REF_LEN];
 *   blob_put_path(st, "models/sft", ref);        ... the ref travels in a job spec ...
 * worker:
 *   blob_client_t *c = blob_client_new(zctx, blob_server_endpoint(srv));   (the advertised one)
 *   char dir[4096];
 *   blob_resolve(wst, c, ref, dir, sizeof dir);   ... load the model from dir (read-only) ...
 *   blob_publish(c, wst, "out/ppo", result_ref);  ... the result's ref travels back ...
 * master: blob_resolve(st, NULL, result_ref, dir, sizeof dir) (already in its store).
 *
 * Protocol (proto/rlhf.proto, "blobs"): BlobStat -> BlobHave (which digests the server has, one
 * round trip for a whole list); BlobGet -> BlobData + one raw frame; BlobPut + one raw frame ->
 * BlobAck. The client keeps at most `credit` pieces in flight, which bounds what either side
 * buffers; silence for timeout_ms makes it drop its socket and ask again on a fresh one, up to
 * max_retries silences in a row (as weight sync does). Every piece carries a CRC-32C (in the
 * envelope's TensorHeader); every blob is checked against its SHA-256 before it is renamed into
 * blobs/, on whichever side receives it, and bad bytes are discarded. SHA-256 is libsodium's
 * (about 400 MB/s on one core): a put, a fetch and the server each hash on a thread of their
 * own beside the one doing the I/O.
 *
 * The server keeps serving whatever it is sent: a malformed request (not an Envelope, another
 * body, a digest that is not 64 lowercase hex - never used as a path otherwise - a length above
 * BLOB_MAX_REQUEST, a range past the end, pieces out of order) is counted and answered with an
 * Error (a frame larger than a piece never arrives: libzmq drops the connection that sends it).
 * Uploads: at most BLOB_MAX_PARTIAL unfinished blobs per peer, each written to tmp/, hashed as
 * it arrives, stored only when its SHA-256 matches (then acknowledged; otherwise refused with
 * BlobAck code RL_EPROTO and counted), and deleted when abandoned for BLOB_PARTIAL_TIMEOUT_MS.
 *
 * Nothing here prints; errors are RL_E* codes with a detail (naming the path, ref, digest or
 * endpoint) in rl_errmsg().
 */
#ifndef RLHF_BLOB_H
#define RLHF_BLOB_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define BLOB_REF_LEN 72 /* "sha256:" + 64 hex + NUL, rounded */
#define BLOB_HEX_LEN 64 /* a digest: 64 lowercase hex characters */

/* Default size of the pieces a client asks for and sends, and the most one request may move. */
#define BLOB_CHUNK_BYTES (1u << 20)
#define BLOB_MAX_REQUEST (4u << 20)
/* Default credit (pieces in flight per client) and the most a client may use. */
#define BLOB_CREDIT     16
#define BLOB_MAX_CREDIT 32
/* Unfinished uploads a server accepts per peer, and the idle time after which one is deleted. */
#define BLOB_MAX_PARTIAL        8
#define BLOB_PARTIAL_TIMEOUT_MS 60000
/* Most digests in one BlobStat (a client splits longer lists; they travel together). */
#define BLOB_MAX_STAT 4096
/* Largest manifest accepted (about 150,000 files). */
#define BLOB_MAX_MANIFEST (64u << 20)

/* 1 when s is "sha256:" followed by exactly 64 lowercase hex characters; else 0 (also NULL). */
int blob_is_ref(const char *s);

/* ---- store ----------------------------------------------------------------------------------- */

typedef struct blob_store blob_store_t;

/*
 * Opens the store in `dir`, creating it (with parents) and its subdirectories if missing, and
 * removes what crashed writers left in tmp/ more than a day ago. The handle may be used by
 * several threads at once. Returns NULL with rl_errmsg() set on failure.
 */
blob_store_t *blob_store_open(const char *dir);

/* Frees the handle (the directory stays). Accepts NULL; nulls *sp. */
void blob_store_close(blob_store_t **sp);

/* The store's directory, as given to blob_store_open (without trailing slashes). */
const char *blob_store_dir(const blob_store_t *st);

/* 1 when blobs/<hex> exists in the store, 0 when not or hex is not a digest. */
int blob_store_has(const blob_store_t *st, const char *hex);

/*
 * Puts `path` into the store: a regular file, or a directory tree of regular files (symbolic
 * links are followed to regular files; a link to anything else, a FIFO, socket or device is
 * refused with RL_EUNSUPPORTED naming it). Every file is hashed and stored as a blob, then the
 * manifest, and ref becomes "sha256:<hex of the manifest>": the same content (names, bytes,
 * executable bits) gives the same ref on any machine. A file is stored by a hard link when that
 * is safe - same filesystem, and nobody may write it (no write permission bit): a file that can
 * change in place would change the blob under its name - else by a copy-on-write clone where
 * the filesystem has them, else by a copy; whichever, the digest is computed over the stored
 * bytes, and a file already in the store is not stored again. Returns 0, RL_ENOTFOUND (no such
 * path), RL_EUNSUPPORTED, RL_EINVAL (a name that is not UTF-8, a path too long), RL_EIO, or
 * RL_ENOMEM.
 */
int blob_put_path(blob_store_t *st, const char *path, char ref[BLOB_REF_LEN]);

/*
 * Hashes every blob of ref in the store again (the manifest and each file). A blob whose bytes
 * no longer match its name (a failing disk, a write through a hard link in a tree) is removed,
 * and so is ref's tree, so that the next blob_resolve fetches and builds them again (other trees
 * linking a removed blob are not touched). Takes the ref's lock; not while its tree is in use.
 * Returns 0 when everything is intact; RL_EPROTO naming the first damaged digest; RL_ENOTFOUND
 * when the manifest or a blob is missing; RL_EINVAL (not a ref); RL_EFORMAT; RL_EIO.
 */
int blob_store_verify(blob_store_t *st, const char *ref);

/* ---- client ---------------------------------------------------------------------------------- */

typedef struct blob_client blob_client_t;

typedef struct {
    size_t chunk_bytes; /* piece size; 0: BLOB_CHUNK_BYTES; at most BLOB_MAX_REQUEST */
    int credit;         /* pieces in flight, 1..BLOB_MAX_CREDIT; 0: BLOB_CREDIT */
    int timeout_ms;     /* silence before a retry on a fresh socket; 0: 10000 */
    int max_retries;    /* silences in a row, and tries of a piece with a bad CRC; 0: 5 */
} blob_client_opts_t;

typedef struct {
    uint64_t bytes_received; /* blob bytes fetched and verified */
    uint64_t bytes_sent;     /* blob bytes uploaded */
    uint64_t blobs_fetched;  /* blobs verified and stored */
    uint64_t blobs_pushed;   /* blobs the server acknowledged */
    uint64_t blobs_present;  /* blobs a push did not send: the server had them */
    uint64_t timeouts;       /* silences that led to a retry on a fresh socket */
    uint64_t crc_errors;     /* pieces that failed their CRC and were asked for again */
} blob_client_stats_t;

/*
 * A client of the blob server at `endpoint` (tcp://HOST:PORT; IPv6 literals in brackets). zctx
 * is the ZeroMQ context to use, or NULL for one of its own. Connects lazily (at the first call
 * that needs the server). One operation at a time: calls from several threads are serialised.
 * Returns NULL with rl_errmsg() set on failure.
 */
blob_client_t *blob_client_new(void *zctx, const char *endpoint);

/* Replaces the defaults (see blob_client_opts_t); zero fields keep them. */
void blob_client_set_opts(blob_client_t *c, const blob_client_opts_t *o);

/* A flag polled (every 100 ms at most) by the client's operations, which give up with RL_EIO
 * "cancelled" once it is non-zero. NULL: none. Set it between operations; the flag must outlive
 * its use. */
void blob_client_set_cancel(blob_client_t *c, const _Atomic int *cancel);

/* The endpoint it talks to. */
const char *blob_client_endpoint(const blob_client_t *c);

/* Counters since the client was made (waits for an operation in progress to end). */
void blob_client_stats(const blob_client_t *c, blob_client_stats_t *out);

/* Closes the socket (and the context if its own). Accepts NULL; nulls *cp. */
void blob_client_free(blob_client_t **cp);

/*
 * Uploads ref from the store `local` to the client's server: asks which of its blobs (the
 * manifest and every file) the server lacks - one round trip for the whole list - and sends
 * those, the manifest last, so a server holding a manifest pushed here holds its files. The
 * server acknowledges each blob only after verifying its SHA-256 and storing it. Returns 0;
 * RL_EINVAL (not a ref); RL_ENOTFOUND (ref or one of its blobs not in `local`); RL_EFORMAT (not a
 * manifest); RL_EPROTO (the server refused a blob: its bytes do not match the digest, which
 * means `local` is damaged, or an Error); RL_EIO (silence after max_retries, cancelled, a socket
 * or file failure).
 */
int blob_client_push(blob_client_t *c, blob_store_t *local, const char *ref);

/* blob_put_path(local, path, ref) then blob_client_push(c, local, ref). */
int blob_publish(blob_client_t *c, blob_store_t *local, const char *path, char ref[BLOB_REF_LEN]);

/*
 * Materialises ref in the store: DIR/trees/<hex>/ with every file of the manifest (hard links
 * to the blobs, read-only: never write into them; a file with mode 0755 is a copy, mode 0555),
 * built in tmp/ and renamed into place, so a complete tree is the only thing ever visible. out
 * (cap bytes) receives the tree's path for a "dir" manifest, or the path of the single file in
 * it for a "file" manifest. An already materialised tree is returned at once (a stat and the
 * last bytes of the manifest; nothing is hashed or parsed again). Missing blobs are fetched with c,
 * pipelined across files; every fetched byte is verified against its SHA-256 before it is renamed
 * into blobs/. c may be NULL: then a missing blob is RL_ENOTFOUND naming the ref. Threads and
 * processes resolving the same ref in one store wait for each other and share one tree.
 * Returns 0; RL_EINVAL (not a ref, cap too small); RL_ENOTFOUND (a blob neither here nor on the
 * server); RL_EFORMAT (the ref is not a manifest, or its files do not match it); RL_EPROTO (a
 * blob's bytes do not match its digest - the digest and the endpoint are named, and nothing of
 * it is kept - or the server answered with an Error); RL_EIO (silence after max_retries,
 * cancelled, a socket or file failure).
 */
int blob_resolve(blob_store_t *st, blob_client_t *c, const char *ref, char *out, size_t cap);

/* ---- server ---------------------------------------------------------------------------------- */

typedef struct blob_server blob_server_t;

typedef struct {
    uint64_t requests;         /* BlobStat, BlobGet and BlobPut messages received */
    uint64_t bytes_sent;       /* blob bytes sent (BlobData frames) */
    uint64_t bytes_received;   /* blob bytes received (BlobPut frames) */
    uint64_t blobs_received;   /* uploads verified and stored */
    uint64_t bad_requests;     /* malformed requests and refused uploads (each answered) */
    uint64_t send_dropped;     /* answers libzmq refused (peer gone, or its pipe full) */
    uint64_t partials_expired; /* unfinished uploads deleted after their timeout */
} blob_server_stats_t;

/*
 * Serves the store `st` (borrowed: it must outlive the server) on a thread of its own, over a
 * ROUTER bound to `bind` ("tcp://127.0.0.1:*" picks a free port; "tcp://0.0.0.0:7000",
 * "tcp://[::]:*": ZMQ_IPV6 is set, so IPv6 endpoints work). `advertise` is what others dial:
 * NULL or "" for the bound endpoint itself; a host name or address without scheme and port
 * ("10.0.0.5", "::1", "node3") for tcp://HOST:PORT with the bound port (an IPv6 literal in
 * brackets); a full endpoint ("tcp://node3:7000") as given. zctx NULL: a context of its own.
 * Returns NULL with rl_errmsg() set on failure (the bind, a thread).
 */
blob_server_t *blob_server_start(void *zctx, blob_store_t *st, const char *bind,
                                 const char *advertise);

/* The advertised endpoint. */
const char *blob_server_endpoint(const blob_server_t *s);

/* Counters (any thread). */
void blob_server_stats(blob_server_t *s, blob_server_stats_t *out);

/* Test hook: the idle time after which an unfinished upload is deleted (ms; default
 * BLOB_PARTIAL_TIMEOUT_MS). Any thread. */
void blob_server_set_partial_timeout(blob_server_t *s, int ms);

/* Test hooks: every request waits delay_ms before it is handled (a slow server, for clients to
 * time out on); the next piece sent has one bit flipped after its CRC was computed. */
void blob_server_set_delay(blob_server_t *s, int ms);
void blob_server_corrupt_once(blob_server_t *s);

/* Stops the thread, closes the socket (the context if its own) and deletes unfinished uploads.
 * Accepts NULL; nulls *sp. */
void blob_server_stop(blob_server_t **sp);

/*
 * An artifact's name in a job spec: a reference, optionally followed by "@" and where the
 * publisher had it ("sha256:ab12...@/srv/runs/demo/sft"). The path is for messages only - an
 * error about the worker's copy names the publisher's file - and is never read. ref gets the
 * reference; *origin the path ("" when none). Returns 1 for such a name, 0 for anything else
 * (a plain path).
 */
int blob_name_parse(const char *name, char ref[BLOB_REF_LEN], const char **origin);

/* "REF@PATH" (or REF alone when path is NULL or "") into out. Returns 0 or RL_EINVAL (cap). */
int blob_name_format(const char *ref, const char *path, char *out, size_t cap);

#endif
