/*
 * wsync.h - versioned weight snapshots over ZeroMQ: the learner serves, rollout and reward
 * workers fetch in chunks with credit-based flow control, verify, and swap between jobs; each
 * worker also relays what it fetches to the next one, so that a new version costs the learner
 * about one copy whatever the number of workers.
 *
 * Server (the learner, a test, the benchmark):
 *   wsync_server_t *s = wsync_server_new(NULL, "tcp://127.0.0.1:*", 0);
 *   wsync_server_publish(s, version, params, bytes, "params", config_json);  (copied, immutable)
 *   wsync_server_start(s);          (a thread of its own serves; or call wsync_server_poll)
 *   ... announce wsync_server_endpoint(s) and the version to the master (WeightsAnnounce) ...
 *   wsync_server_destroy(&s);
 *
 * Client (a worker):
 *   wsync_snapshot_t snap = {0}; wsync_stats_t st;
 *   wsync_fetch(zctx, endpoint, min_version, NULL, &snap, &st);  ...  wsync_snapshot_free(&snap);
 * or, with the double buffer a worker keeps (live weights + staging):
 *   wsync_replica_ensure(&rep, zctx, endpoint, v, NULL, &st);   fetch v or newer, then swap
 *   const wsync_snapshot_t *w = wsync_replica_acquire(&rep);    no swap until released
 *   ... run the job with w->data ...;  wsync_replica_release(&rep);
 *
 * Relay (a worker; the chain of them is the master's, see below):
 *   wsync_server_t *relay = wsync_server_new(zctx, "tcp://HOST:*", 0); wsync_server_start(relay);
 *   wsync_opts_t o = {.upstream = previous_workers_relay, .relay = relay};
 *   wsync_replica_ensure(&rep, zctx, origin, v, &o, &st);
 * fetches from the upstream relay (falling back to the origin) and serves what it fetches
 * through its own server while it fetches.
 *
 * Protocol (messages in proto/rlhf.proto): the server binds a ROUTER; a fetcher's DEALER asks
 * WeightsFetch{version, n_chunks = 0} and gets WeightsInfo: version, tensor name, dtype, shape,
 * size, chunk size, the CRC-32C of every chunk and of the whole snapshot, and the publisher's
 * meta text. It then asks WeightsFetch{version, first, n} and gets n WeightsChunk messages, each
 * the envelope (with a TensorHeader: name, dtype, shape, nbytes, crc32c) plus one raw frame of
 * chunk bytes, sent zero-copy from the immutable snapshot.
 *
 * Flow control is by credit, not by high-water marks: the fetcher keeps at most `credit` chunks
 * requested and not yet received (it asks for one more as each arrives, which keeps the pipe
 * full), so the bytes in flight per fetcher are bounded by credit x chunk_bytes on both sides.
 * The server never sends what was not asked for, and caps one request at WSYNC_MAX_CREDIT chunks.
 *
 * Integrity: each chunk is checked (while being copied into the staging buffer) against the CRC
 * in WeightsInfo and in its header; a bad chunk is asked for again (up to max_retries times per
 * chunk). At the end the whole-snapshot CRC-32C, combined from the chunk CRCs, must equal the
 * one the server computed over the whole buffer at publish time. Silence for timeout_ms makes
 * the fetcher drop its socket (discarding whatever was in flight) and ask again on a fresh one,
 * up to max_retries times in a row. A snapshot that changes under a fetch (the server restarted
 * with other bytes for the same version, or dropped the version) restarts the fetch.
 *
 * Versions: the server keeps the latest snapshot and the one before it (fetches in flight of the
 * previous version finish); older versions are answered with WeightsInfo.error and the latest's
 * description. A snapshot's bytes stay alive while any chunk of it is queued in libzmq.
 *
 * Relaying. A server can also be fed by a fetch instead of publish: wsync_server_begin installs
 * a snapshot whose description (every chunk CRC, the whole CRC) is known but whose bytes are
 * still arriving, as the latest version; wsync_server_chunk_put delivers one chunk, which is
 * servable from that moment. A request for a chunk not delivered yet is held, not refused, and
 * answered when the chunk arrives (the requester's credit bounds what is held for it, as it
 * bounds what is in flight); a begun snapshot that is given up (wsync_server_abort, or replaced
 * by another begin) answers what it held with WeightsInfo.error, as a dropped version does.
 * Once complete it is served like a published one: the latest and the one before it.
 *   A fetch with opts.relay feeds that server as it goes: it begins the snapshot as soon as it
 * has the origin's description and marks every chunk servable the moment it is verified. The
 * relay serves from the fetch's own destination buffer, lent to it (no copy, no memory of its
 * own): a worker's two replica buffers are the relay's latest and previous versions, and the
 * fetch of the next version first takes the older one back (a buffer still referenced by
 * chunks queued in libzmq is left to the relay to free, and the fetch allocates another). A
 * fetch with
 * opts.upstream (another worker's relay) always takes the description from the origin (the
 * `endpoint` argument) - a relay serving another training's snapshot of the same version number
 * is thereby never believed - then asks the upstream for that snapshot (exact version and CRC)
 * and takes the chunks from it. Since every worker of a chain begins serving right after its own
 * description round trip, requests travel down the chain at once and wait in each relay for
 * their chunk: a version reaches N workers in about size / bandwidth + N x (one chunk's
 * latency), and the origin sends it about once.
 *   Fallback: the upstream is given up - and the fetch goes on from the origin for the chunks it
 * still lacks, keeping those it has - when it answers nothing for upstream_timeout_ms (killed,
 * frozen, link down; it is asked for a description after half that silence, so an upstream that
 * is alive but itself waiting is not given up), when it has not delivered a chunk for 4 x
 * upstream_timeout_ms though alive (it never began the snapshot, or is stuck), when it answers
 * with another snapshot or an error, or when a chunk from it stays corrupt. The whole-snapshot
 * CRC is checked as always. A worker below a dead one thus waits upstream_timeout_ms, then
 * fetches the rest from the origin and serves it on; the workers further down keep their
 * upstream (it still answers) and see the chunks resume. A fetch never returns to the upstream.
 *
 * In the runtime: the learner publishes version v and sends WeightsAnnounce{v, endpoint} to the
 * master, repeating it (so a restarted master learns it again). The master keeps the newest,
 * forwards it to every worker and to each worker that registers later (joined late or
 * reconnected), and holds back jobs whose policy_version is newer. A rollout or reward worker
 * serves a relay (worker_main.c; --bind-host, --advertise, --no-relay) and names it in its Hello;
 * the master chains those workers in registry order and gives each, in its WeightsAnnounce, the
 * relay of the one before it as relay_from (the first gets "": the origin), recomputing the
 * chain at every send, so a dead worker leaves it with the next announcement. A worker keeps a
 * replica: it fetches an announced version at once on a thread of its own; a job that needs a
 * version the worker lacks fetches it first (failing that, the job is rejected and retried), and
 * runs holding the live snapshot. Each sync is logged with its bytes, seconds and GB/s, and how
 * many bytes came from the relay. A fetching process should call wsync_malloc_tune() once at
 * start (see there).
 */
#ifndef RLHF_WSYNC_H
#define RLHF_WSYNC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Default chunk size (a multiple of 4 KiB) and the largest one a fetcher accepts. */
#define WSYNC_CHUNK_BYTES     (4u << 20)
#define WSYNC_MAX_CHUNK_BYTES (64u << 20)
/* Default credit (chunks in flight per fetcher) and the most one request may ask for. */
#define WSYNC_CREDIT     8
#define WSYNC_MAX_CREDIT 64
/* Largest request frame the server accepts (ZMQ_MAXMSGSIZE of its socket). */
#define WSYNC_MAX_REQUEST 4096

/*
 * Process-wide allocator setting for a process that fetches snapshots (call once, early; it is
 * the caller's choice, nothing here calls it). libzmq allocates every received chunk itself;
 * with glibc's defaults a window of chunks freed one after the other makes the heap shrink and
 * grow again, so every chunk lands in freshly faulted pages - measured at a third of the
 * fetch's CPU time. This keeps chunk-sized blocks on the heap (mmap threshold 32 MiB) and up to
 * 256 MiB of freed heap mapped for reuse. No effect where the C library is not glibc.
 */
void wsync_malloc_tune(void);

/* ---- server ---------------------------------------------------------------------------------- */

typedef struct wsync_server wsync_server_t;

typedef struct {
    uint64_t requests;     /* WeightsFetch messages served */
    uint64_t chunks_sent;  /* chunk messages handed to libzmq */
    uint64_t bytes_sent;   /* their payload bytes */
    uint64_t send_dropped; /* chunk sends refused by libzmq (peer gone or pipe full) */
    uint64_t bad_requests; /* malformed or unexpected messages (answered with an Error) */
    uint64_t held;         /* chunks asked for before they arrived (relay), sent once they did */
} wsync_server_stats_t;

/*
 * A server with a ROUTER bound to `endpoint` ("tcp://127.0.0.1:*" picks a free port). zctx is
 * the ZeroMQ context to use, or NULL for a context of its own. chunk_bytes 0 means
 * WSYNC_CHUNK_BYTES; otherwise a multiple of 4 up to WSYNC_MAX_CHUNK_BYTES (for publish; a
 * begun snapshot keeps its own). An IPv6 literal binds ("tcp://[::1]:*"). Returns NULL with
 * rl_errmsg() set on failure.
 */
wsync_server_t *wsync_server_new(void *zctx, const char *endpoint, size_t chunk_bytes);

/* Stops its thread (if started), closes the socket and frees every snapshot no longer
 * referenced by libzmq (those still queued are freed when libzmq lets go of them, which the
 * socket's zero linger makes immediate). Accepts NULL; nulls *sp. */
void wsync_server_destroy(wsync_server_t **sp);

/* The bound endpoint (with the port resolved). */
const char *wsync_server_endpoint(const wsync_server_t *s);

/*
 * Publishes `bytes` bytes of `data` (copied; a multiple of 4: float32 "params" by default) as
 * `version`, which must be greater than the latest. name (NULL: "params") and meta (NULL: "")
 * are copied. The CRCs are computed here, once. May be called from any thread, also while the
 * server's thread serves. Returns 0, RL_EINVAL (version not newer, size not a multiple of 4, or
 * zero) or RL_ENOMEM.
 */
int wsync_server_publish(wsync_server_t *s, uint64_t version, const void *data, size_t bytes,
                         const char *name, const char *meta);

/* The latest published version (0: none). Any thread. */
uint64_t wsync_server_version(wsync_server_t *s);

/*
 * Serves the requests waiting on the socket, waiting up to timeout_ms (0: none, -1: forever)
 * for the first one, and answers the held requests whose chunks were delivered meanwhile. Use it
 * from one thread only, and not together with wsync_server_start. Returns the number of
 * messages handled (>= 0) or RL_EIO when the socket failed.
 */
int wsync_server_poll(wsync_server_t *s, int timeout_ms);

/* The ROUTER socket, for an event loop that polls it (then call wsync_server_poll(s, 0)); a
 * fed server's held requests are answered at the next poll after their chunk was delivered. */
void *wsync_server_socket(wsync_server_t *s);

/* Serves on a thread of its own until wsync_server_stop or destroy. Returns 0 or RL_ENOMEM. */
int wsync_server_start(wsync_server_t *s);
void wsync_server_stop(wsync_server_t *s);

/* Counters (any thread; a consistent-enough snapshot). */
void wsync_server_stats(wsync_server_t *s, wsync_server_stats_t *out);

/* ---- relay: a server fed by a fetch ---------------------------------------------------------- */

/* The description of a snapshot whose bytes are still to come (the fields of WeightsInfo). */
typedef struct {
    uint64_t version;
    size_t bytes;              /* a positive multiple of 4 */
    uint32_t chunk_bytes;      /* a multiple of 4 up to WSYNC_MAX_CHUNK_BYTES */
    const uint32_t *chunk_crc; /* n_chunks CRC-32Cs, copied */
    uint32_t n_chunks;         /* ceil(bytes / chunk_bytes) */
    uint32_t crc;              /* of the whole snapshot: must combine from chunk_crc */
    int dtype;                 /* Rlhf__DType */
    const char *name, *meta;   /* NULL: "params", "" */
} wsync_desc_t;

/*
 * Installs a snapshot with no chunk yet as the latest: descriptions are answered at once, chunk
 * requests held until wsync_server_chunk_put delivers the chunk. The latest, if complete,
 * becomes the previous one; an incomplete latest (a fetch given up) is dropped. The same
 * snapshot again (version, sizes and CRC) keeps what was delivered; another one with a version
 * not newer than the latest drops both snapshots held (another training, or an origin that
 * restarted with other bytes). Any thread, one feeder at a time. Returns 0, RL_EINVAL (sizes),
 * RL_EPROTO (the chunk CRCs do not make the whole CRC) or RL_ENOMEM.
 */
int wsync_server_begin(wsync_server_t *s, const wsync_desc_t *d);

/*
 * Delivers chunk `index` (len bytes, copied) of the begun snapshot `version`, checked against
 * its CRC; held requests for it are answered. Any thread. Returns 0 (also for a chunk delivered
 * before), RL_ENOTFOUND (that version is not the one being fed), RL_EINVAL (index or length)
 * or RL_EPROTO (the bytes do not match the chunk's CRC: not servable).
 */
int wsync_server_chunk_put(wsync_server_t *s, uint64_t version, uint32_t index, const void *data,
                           size_t len);

/* Gives up the begun snapshot `version` if it is incomplete: the previous one becomes the
 * latest again, and held requests are told the version is gone. Any thread. */
void wsync_server_abort(wsync_server_t *s, uint64_t version);

/* Test hooks: the next time chunk `index` is sent, one bit of a copy of it is flipped (the
 * header keeps the true CRC); and every request waits delay_ms before it is served (a slow
 * server, to catch a fetch in the middle). */
void wsync_server_corrupt_once(wsync_server_t *s, uint32_t index);
void wsync_server_set_delay(wsync_server_t *s, int delay_ms);

/* ---- client ---------------------------------------------------------------------------------- */

/* A fetched snapshot; owns data and meta. Zero it before first use (or set data and cap to a
 * malloc'ed buffer of your own: it is taken over). */
typedef struct {
    uint64_t version;
    void *data;  /* malloc'ed, `cap` bytes of which `bytes` are the snapshot */
    void *block; /* internal: data shared with a relay that serves from it (NULL: not shared) */
    size_t bytes, cap;
    uint32_t crc; /* CRC-32C of the whole snapshot (verified) */
    int dtype;    /* Rlhf__DType */
    char name[64];
    char *meta; /* malloc'ed, NUL-terminated (possibly "") */
} wsync_snapshot_t;

/* Frees data and meta and zeroes the struct; safe on a zeroed one. */
void wsync_snapshot_free(wsync_snapshot_t *s);

typedef struct {
    int credit;         /* chunks in flight (1..WSYNC_MAX_CREDIT); 0: WSYNC_CREDIT */
    int timeout_ms;     /* silence before a retry on a fresh socket; 0: 5000 */
    int max_retries;    /* per chunk (bad CRC) and timeouts in a row; 0: 5 */
    atomic_int *cancel; /* optional: set to give up (RL_EIO "cancelled") within ~100 ms */
    /* relaying (see the header comment): */
    const char *upstream;    /* another worker's relay to take the chunks from (NULL, "": none) */
    int upstream_timeout_ms; /* silence before the upstream is given up; 0: 2000 */
    wsync_server_t *relay;   /* serve the snapshot through this server while fetching it */
    /* the CURVE public keys (net/sec.h) of the origin's and the upstream's servers; needed when
     * the process is secure, else ignored */
    const char *origin_key, *upstream_key;
} wsync_opts_t;

typedef struct {
    uint64_t version;
    uint64_t bytes;
    uint32_t crc; /* CRC-32C of the whole snapshot */
    uint32_t chunks;
    uint32_t crc_errors;      /* chunks that failed their check and were asked for again */
    uint32_t timeouts;        /* silences that led to a retry on a fresh socket */
    uint32_t restarts;        /* the snapshot changed under the fetch: started again */
    uint32_t max_outstanding; /* most chunks requested and not yet received at any time */
    double seconds;           /* from the first request to the verified end */
    double gbps;              /* bytes / seconds / 1e9 */
    uint64_t upstream_bytes;  /* of them, received from the upstream relay */
    uint32_t fallbacks;       /* 1 when the upstream was given up for the origin */
    char fallback_why[128];   /* why ("": it was not) */
} wsync_stats_t;

/*
 * Fetches the latest snapshot of the server at `endpoint` into *dst, provided it is at least
 * min_version (0: any, but something must be published). dst's buffer is reused when large
 * enough; on failure dst's previous content may be partly overwritten (fetch into a staging
 * snapshot, never into live weights). zctx: the caller's ZeroMQ context (a DEALER is opened and
 * closed here). opts and stats may be NULL. With opts->upstream the chunks come from that relay
 * while it serves (the description always from `endpoint`, the origin); with opts->relay the
 * snapshot is served through that server as it arrives (given up there when the fetch fails).
 * Returns 0; RL_ENOTFOUND when the server's latest is
 * older than min_version; RL_EPROTO when a chunk stayed corrupt after max_retries or the
 * whole-snapshot CRC does not match; RL_EIO on a timeout after max_retries, a cancel or a socket
 * failure; RL_ENOMEM.
 */
int wsync_fetch(void *zctx, const char *endpoint, uint64_t min_version, const wsync_opts_t *opts,
                wsync_snapshot_t *dst, wsync_stats_t *stats);

/* ---- replica: live weights + staging, swapped between jobs ---------------------------------- */

typedef struct {
    pthread_mutex_t fetch_lock; /* one fetch at a time (the staging buffer) */
    pthread_rwlock_t use_lock;  /* readers: jobs using the live snapshot; writer: the swap */
    wsync_snapshot_t live, staging;
    atomic_uint_fast64_t version; /* live.version, readable without a lock */
    int ready;                    /* initialised */
} wsync_replica_t;

/* Initialises an empty replica (version 0). Returns 0 or RL_ENOMEM. */
int wsync_replica_init(wsync_replica_t *r);

/* Frees both buffers; safe on a zeroed struct. No job may hold the replica. */
void wsync_replica_free(wsync_replica_t *r);

/* The live version (0: none yet). Any thread. */
uint64_t wsync_replica_version(wsync_replica_t *r);

/*
 * Makes the live snapshot at least min_version: returns 0 at once when it is, else fetches the
 * server's latest into the staging buffer (wsync_fetch) and, once complete and verified, swaps
 * it live - waiting for the jobs that hold the replica to release it, so a job never sees its
 * weights change. A failed fetch leaves the live snapshot as it was. stats (may be NULL) is
 * zeroed when no fetch was needed. Returns what wsync_fetch returns.
 */
int wsync_replica_ensure(wsync_replica_t *r, void *zctx, const char *endpoint, uint64_t min_version,
                         const wsync_opts_t *opts, wsync_stats_t *stats);

/* Forgets the live snapshot's version (it becomes 0, so the next ensure fetches): its weights
 * belong to another training than the one now announced, whose versions count from 0 again.
 * Waits for the jobs holding the replica. */
void wsync_replica_drop(wsync_replica_t *r);

/* Holds the live snapshot for the length of a job (no swap until released). */
const wsync_snapshot_t *wsync_replica_acquire(wsync_replica_t *r);
void wsync_replica_release(wsync_replica_t *r);

#endif
