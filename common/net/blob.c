/*
 * blob.c - content-addressed artifacts over the wire (see blob.h): the store (hashing, putting,
 * manifests, materialised trees), the client (pipelined fetch and upload) and the server.
 *
 * Every file that enters blobs/ or trees/ is first written under tmp/ (a name no other writer
 * uses: pid, a counter and a random number) and renamed into place once complete: a blob only
 * after its SHA-256 matched its name, a tree only after every file is in it. Two writers of the
 * same blob both rename identical bytes; two writers of the same tree find the second rename
 * refused and keep the first (and in one store they do not race at all: resolves of a ref take
 * the flock of locks/<hex>).
 *
 * SHA-256 is libsodium's, streamed as the bytes go by: a put hashes what it copies, a fetch
 * each piece as it arrives (in order; a piece that arrives before its turn is read back from the
 * file when its turn comes), both on a hashing thread beside the one doing the I/O (see "hashing
 * beside the I/O"); the server hashes an upload as it writes it.
 */
#include "net/blob.h"
#include "net/sec.h"
#include "net/addr.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/fs.h> /* FICLONE */
#endif

#include <jansson.h>
#include <sodium.h>
#include <zmq.h>

#include "base/crc32c.h"
#include "base/err.h"
#include "base/fs.h"
#include "net/wire.h"

#define IO_BYTES       (1u << 20)     /* read/write block of puts and copies */
#define SYNC_BYTES     (32u << 20)    /* received bytes after which writeback is started */
#define TMP_STALE_S    (24 * 3600)    /* tmp/ litter older than this is removed at open */
#define MAX_PARTIAL    256            /* unfinished uploads a server accepts from all peers */
#define MAX_BLOB_BYTES (1ull << 42)   /* 4 TiB: larger sizes are refused as nonsense */
#define MAX_REL_PATH   (PATH_MAX / 2) /* a path in a manifest: the tree's own path goes first */

/* ---- helpers ----------------------------------------------------------------------------------
 */

static void hex_encode(const uint8_t d[crypto_hash_sha256_BYTES], char hex[BLOB_HEX_LEN + 1]) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < crypto_hash_sha256_BYTES; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[BLOB_HEX_LEN] = '\0';
}

/* Exactly 64 lowercase hex characters: the only strings ever used as names in blobs/. */
static int hex_valid(const char *s) {
    if (!s) return 0;
    for (int i = 0; i < BLOB_HEX_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return s[BLOB_HEX_LEN] == '\0';
}

int blob_is_ref(const char *s) {
    return s && strncmp(s, "sha256:", 7) == 0 && hex_valid(s + 7);
}

static void sha_final_hex(crypto_hash_sha256_state *sha, char hex[BLOB_HEX_LEN + 1]) {
    uint8_t d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(sha, d);
    hex_encode(d, hex);
}

/* The code of a failed file operation: a missing file is RL_ENOTFOUND, the rest RL_EIO. */
static int errno_code(int e) {
    return e == ENOENT || e == ENOTDIR ? RL_ENOTFOUND : e == ENOMEM ? RL_ENOMEM : RL_EIO;
}

static int fail_errno(int e, const char *what, const char *path) {
    return rl_fail_errno(errno_code(e), e, "%s: %s: %s", path, what, strerror(e));
}

static int write_full(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int pwrite_full(int fd, const void *p, size_t n, uint64_t off) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = pwrite(fd, c, n, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* Reads up to n bytes at off; fewer only at the end of the file. Returns the count or -1. */
static ssize_t pread_full(int fd, void *p, size_t n, uint64_t off) {
    char *c = p;
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, c + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static int sync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fail_errno(errno, "open directory", dir);
    int r = fsync(fd), e = errno;
    close(fd);
    if (r < 0 && e != EINVAL && e != ENOTSUP) return fail_errno(e, "fsync directory", dir);
    return 0;
}

/* Starts writeback of what was written since *synced, once SYNC_BYTES have piled up, so the
 * fsync before the rename does not stall for the whole blob (a silent peer could time out). */
static void sync_some(int fd, uint64_t upto, uint64_t *synced) {
    if (upto - *synced < SYNC_BYTES) return;
#if defined(SYNC_FILE_RANGE_WRITE)
    sync_file_range(fd, (off_t)*synced, (off_t)(upto - *synced), SYNC_FILE_RANGE_WRITE);
#endif
    *synced = upto;
}

static void nap_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- hashing beside the I/O -------------------------------------------------------------------
 * libsodium's SHA-256 runs at about 400 MB/s on one core: as slow as all the rest a fetch or a
 * put does to a byte (receive, CRC, write, read) together. So the hashing has a thread of its
 * own: the I/O thread queues each block, in order, as soon as it has it and goes on with the
 * next, and the hasher runs the queue in order. The queue is bounded (HQ_SLOTS tasks, HQ_BYTES
 * of queued blocks): an I/O thread faster than the hasher waits in hq_push. After a failure the
 * remaining tasks only release what they hold.
 */

#define HQ_SLOTS 64
#define HQ_BYTES (32u << 20)

typedef struct {
    crypto_hash_sha256_state *sha; /* hash len bytes into it: */
    const void *data;              /*   these, or (NULL) those at off in fd */
    size_t len;
    int fd;
    uint64_t off;
    void (*release)(void *); /* then release(frame) (may be NULL) */
    void *frame;
    int (*call)(void *, void *); /* or (sha NULL) call(a, b): its failure stops the queue */
    void *a, *b;
} hq_task_t;

typedef struct {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t wake, progress;
    hq_task_t ring[HQ_SLOTS];
    size_t head, count, bytes;
    uint64_t pushed, done; /* tasks queued and run so far */
    int stop, started;
    int rc; /* the first failure, and its detail (rl_errmsg is the thread's own) */
    char msg[1024];
    atomic_int failed;
    uint8_t *scratch; /* blocks read back from files */
    size_t scratch_cap;
} hq_t;

static int hq_run(hq_t *q, const hq_task_t *t) {
    if (t->call) return t->call(t->a, t->b);
    if (t->len == 0) return 0;
    const void *p = t->data;
    if (!p) {
        if (t->len > q->scratch_cap) {
            free(q->scratch);
            q->scratch_cap = 0;
            if (!(q->scratch = malloc(t->len))) return rl_fail(RL_ENOMEM, "out of memory");
            q->scratch_cap = t->len;
        }
        if (pread_full(t->fd, q->scratch, t->len, t->off) != (ssize_t)t->len)
            return rl_fail(RL_EIO, "reading %zu bytes at %llu back: %s", t->len,
                           (unsigned long long)t->off, strerror(errno ? errno : EIO));
        p = q->scratch;
    }
    crypto_hash_sha256_update(t->sha, p, t->len);
    return 0;
}

static void *hq_main(void *arg) {
    hq_t *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->count && !q->stop) pthread_cond_wait(&q->wake, &q->mu);
        if (!q->count) break;
        hq_task_t t = q->ring[q->head];
        pthread_mutex_unlock(&q->mu);
        int rc = atomic_load(&q->failed) ? 0 : hq_run(q, &t);
        if (t.release) t.release(t.frame);
        pthread_mutex_lock(&q->mu);
        if (rc < 0 && !q->rc) {
            q->rc = rc;
            snprintf(q->msg, sizeof q->msg, "%s", rl_errmsg());
            atomic_store(&q->failed, 1);
        }
        q->head = (q->head + 1) % HQ_SLOTS;
        q->count--;
        q->bytes -= t.data ? t.len : 0;
        q->done++;
        pthread_cond_broadcast(&q->progress);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static int hq_start(hq_t *q) {
    memset(q, 0, sizeof *q);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->wake, NULL);
    pthread_cond_init(&q->progress, NULL);
    if (pthread_create(&q->th, NULL, hq_main, q) != 0) {
        pthread_cond_destroy(&q->progress);
        pthread_cond_destroy(&q->wake);
        pthread_mutex_destroy(&q->mu);
        return rl_fail(RL_ENOMEM, "cannot start a hashing thread");
    }
    q->started = 1;
    return 0;
}

/* Queues t (waiting while the queue is full). Returns the task's number (1, 2, ...). */
static uint64_t hq_push(hq_t *q, const hq_task_t *t) {
    size_t held = t->sha && t->data ? t->len : 0;
    pthread_mutex_lock(&q->mu);
    while (q->count == HQ_SLOTS || (q->count > 0 && q->bytes + held > HQ_BYTES))
        pthread_cond_wait(&q->progress, &q->mu);
    q->ring[(q->head + q->count) % HQ_SLOTS] = *t;
    q->count++;
    q->bytes += held;
    uint64_t n = ++q->pushed;
    pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->mu);
    return n;
}

/* Waits until task number n has run (0: at once). */
static void hq_wait(hq_t *q, uint64_t n) {
    if (!q->started || n == 0) return;
    pthread_mutex_lock(&q->mu);
    while (q->done < n) pthread_cond_wait(&q->progress, &q->mu);
    pthread_mutex_unlock(&q->mu);
}

/* Waits until every queued task has run. Returns 0 or the first failure (with its detail). */
static int hq_drain(hq_t *q) {
    pthread_mutex_lock(&q->mu);
    while (q->count) pthread_cond_wait(&q->progress, &q->mu);
    int rc = q->rc;
    if (rc < 0) rl_fail(rc, "%s", q->msg);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* Runs what is queued, then ends the thread. Safe on a queue that failed to start. */
static void hq_stop(hq_t *q) {
    if (!q->started) return;
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->mu);
    pthread_join(q->th, NULL);
    pthread_cond_destroy(&q->progress);
    pthread_cond_destroy(&q->wake);
    pthread_mutex_destroy(&q->mu);
    free(q->scratch);
    q->started = 0;
}

/* ---- store ------------------------------------------------------------------------------------
 */

struct blob_store {
    char *dir;
    atomic_uint seq; /* tmp/ names */
};

/* DIR/sub/name (name may be NULL) into out; RL_EINVAL when it does not fit. */
static int st_path(const blob_store_t *st, char *out, size_t cap, const char *sub,
                   const char *name) {
    int n = snprintf(out, cap, "%s/%s%s%s", st->dir, sub, name ? "/" : "", name ? name : "");
    if (n < 0 || (size_t)n >= cap) return rl_fail(RL_EINVAL, "%s: path too long", st->dir);
    return 0;
}

/* A fresh name in tmp/ that no other writer (thread or process) uses. */
static int st_tmp(blob_store_t *st, char *out, size_t cap, const char *what) {
    char name[96];
    snprintf(name, sizeof name, "%s.%ld.%u.%08x", what, (long)getpid(),
             atomic_fetch_add(&st->seq, 1u), (unsigned)randombytes_random());
    return st_path(st, out, cap, "tmp", name);
}

/* Removes tmp/ entries older than TMP_STALE_S: what crashed writers left. */
static void st_clean_tmp(blob_store_t *st) {
    char dir[PATH_MAX], p[PATH_MAX];
    if (st_path(st, dir, sizeof dir, "tmp", NULL) < 0) return;
    DIR *d = opendir(dir);
    if (!d) return;
    time_t old = time(NULL) - TMP_STALE_S;
    struct dirent *e;
    while ((e = readdir(d))) {
        struct stat sb;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (st_path(st, p, sizeof p, "tmp", e->d_name) < 0) continue;
        if (lstat(p, &sb) == 0 && sb.st_mtime < old) fs_remove_tree(p);
    }
    closedir(d);
    rl_err_clear(); /* litter that cannot go is no failure of the open */
}

blob_store_t *blob_store_open(const char *dir) {
    static const char *const subs[] = {"blobs", "trees", "tmp", "locks"};
    if (!dir || !*dir) {
        rl_fail(RL_EINVAL, "blob store: empty directory name");
        return NULL;
    }
    if (sodium_init() < 0) {
        rl_fail(RL_EIO, "blob store %s: libsodium cannot be initialised", dir);
        return NULL;
    }
    blob_store_t *st = calloc(1, sizeof *st);
    if (st) st->dir = strdup(dir);
    if (!st || !st->dir) {
        rl_fail(RL_ENOMEM, "blob store %s: out of memory", dir);
        goto fail;
    }
    size_t n = strlen(st->dir);
    while (n > 1 && st->dir[n - 1] == '/') st->dir[--n] = '\0';
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        char p[PATH_MAX];
        int rc = st_path(st, p, sizeof p, subs[i], NULL);
        if (rc == 0) rc = fs_mkdir_p(p);
        if (rc < 0) {
            rl_fail_ctx(rc, "blob store %s", dir);
            goto fail;
        }
    }
    st_clean_tmp(st);
    return st;
fail:
    blob_store_close(&st);
    return NULL;
}

void blob_store_close(blob_store_t **sp) {
    blob_store_t *st = sp ? *sp : NULL;
    if (!st) return;
    free(st->dir);
    free(st);
    *sp = NULL;
}

const char *blob_store_dir(const blob_store_t *st) {
    return st->dir;
}

int blob_store_has(const blob_store_t *st, const char *hex) {
    char p[PATH_MAX];
    return hex_valid(hex) && st_path(st, p, sizeof p, "blobs", hex) == 0 && access(p, F_OK) == 0;
}

/*
 * Moves the complete tmp file (fd open on it, its bytes hashing to hex) to blobs/<hex>: made
 * read-only (own: it is our file to chmod, not a hard link to someone else's), made durable and
 * renamed; when the blob is already there the tmp file is dropped. Closes fd either way.
 */
static int st_commit(blob_store_t *st, int fd, const char *tmp, const char *hex, int own) {
    char dst[PATH_MAX];
    int rc = st_path(st, dst, sizeof dst, "blobs", hex);
    if (rc == 0 && access(dst, F_OK) == 0) {
        close(fd);
        unlink(tmp);
        return 0;
    }
    if (rc == 0 && own && fchmod(fd, 0444) < 0) rc = fail_errno(errno, "chmod", tmp);
    if (rc == 0 && fsync(fd) < 0) rc = fail_errno(errno, "fsync", tmp);
    close(fd);
    if (rc == 0 && rename(tmp, dst) < 0) rc = fail_errno(errno, "rename into the store", tmp);
    if (rc < 0) unlink(tmp);
    return rc;
}

static int st_sync_blobs(blob_store_t *st) {
    char p[PATH_MAX];
    int rc = st_path(st, p, sizeof p, "blobs", NULL);
    return rc < 0 ? rc : sync_dir(p);
}

/* Stores len bytes of data as a blob; hex gets its digest. */
static int st_put_bytes(blob_store_t *st, const void *data, size_t len,
                        char hex[BLOB_HEX_LEN + 1]) {
    uint8_t d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(d, data, len);
    hex_encode(d, hex);
    if (blob_store_has(st, hex)) return 0;
    char tmp[PATH_MAX];
    int rc = st_tmp(st, tmp, sizeof tmp, "put");
    if (rc < 0) return rc;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    if (fd < 0) return fail_errno(errno, "create", tmp);
    if (write_full(fd, data, len) < 0) {
        rc = fail_errno(errno, "write", tmp);
        close(fd);
        unlink(tmp);
        return rc;
    }
    return st_commit(st, fd, tmp, hex, 1);
}

/* What a put works with: the hashing thread and the blocks it reads into (each reused once
 * the hasher is done with it). */
#define PUT_BUFS 4

typedef struct {
    hq_t hq;
    uint8_t *buf[PUT_BUFS];
    uint64_t task[PUT_BUFS]; /* the hashing task that holds each block (0: none) */
} io_t;

/* Reads fd from its current offset to the end (into sha, and into out when out >= 0); *size
 * gets the byte count. The hasher hashes one block while the next is read and written. */
static int hash_stream(io_t *io, int fd, const char *src, int out, const char *dst,
                       crypto_hash_sha256_state *sha, uint64_t *size) {
    *size = 0;
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    int rc = 0;
    for (unsigned k = 0;; k = (k + 1) % PUT_BUFS) {
        hq_wait(&io->hq, io->task[k]);
        ssize_t r;
        do r = read(fd, io->buf[k], IO_BYTES);
        while (r < 0 && errno == EINTR);
        if (r < 0) rc = fail_errno(errno, "read", src);
        if (r <= 0) break;
        if (out >= 0 && write_full(out, io->buf[k], (size_t)r) < 0) {
            rc = fail_errno(errno, "write", dst);
            break;
        }
        hq_task_t t = {.sha = sha, .data = io->buf[k], .len = (size_t)r};
        io->task[k] = hq_push(&io->hq, &t);
        *size += (uint64_t)r;
    }
    int hrc = hq_drain(&io->hq); /* in any case: the queued tasks use sha and the blocks */
    return rc < 0 ? rc : hrc;
}

/*
 * Puts the regular file src into the store: hex and size of what was stored. Nobody may write
 * a file without write permission bits, so a hard link to it is as immutable as a copy (and
 * costs nothing); any other file is cloned (copy-on-write filesystems) or copied, so a later
 * write to it cannot reach the blob. The digest is always computed over the stored inode.
 */
static int st_put_file(blob_store_t *st, io_t *io, const char *src, char hex[BLOB_HEX_LEN + 1],
                       uint64_t *size, int *exec) {
    int fd = open(src, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail_errno(errno, "open", src);
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        int e = errno;
        close(fd);
        return fail_errno(e, "stat", src);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return rl_fail(RL_EUNSUPPORTED, "%s: not a regular file", src);
    }
    *exec = (sb.st_mode & S_IXUSR) != 0;
    char tmp[PATH_MAX];
    int rc = st_tmp(st, tmp, sizeof tmp, "put");
    if (rc < 0) {
        close(fd);
        return rc;
    }
    crypto_hash_sha256_state sha;
    crypto_hash_sha256_init(&sha);
    int out = -1, own = 1;
    if (!(sb.st_mode & 0222) && linkat(AT_FDCWD, src, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW) == 0) {
        own = 0;
        out = open(tmp, O_RDONLY | O_CLOEXEC);
        rc = out < 0 ? fail_errno(errno, "open", tmp)
                     : hash_stream(io, out, tmp, -1, NULL, &sha, size);
    } else {
        out = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
        if (out < 0) {
            rc = fail_errno(errno, "create", tmp);
#if defined(FICLONE)
        } else if (ioctl(out, FICLONE, fd) == 0) {
            rc = hash_stream(io, out, tmp, -1, NULL, &sha, size);
#endif
        } else {
            rc = hash_stream(io, fd, src, out, tmp, &sha, size);
        }
    }
    close(fd);
    if (rc < 0) {
        if (out >= 0) close(out);
        unlink(tmp);
        return rc;
    }
    sha_final_hex(&sha, hex);
    return st_commit(st, out, tmp, hex, own);
}

/* ---- manifests --------------------------------------------------------------------------------
 */

typedef struct {
    char *path; /* relative, '/'-separated */
    char hex[BLOB_HEX_LEN + 1];
    uint64_t size;
    int exec; /* mode "0755" (else "0644") */
} mfile_t;

typedef struct {
    int is_file; /* "kind":"file": one file, named by the original file's name */
    mfile_t *files;
    size_t n, cap;
} manifest_t;

static void manifest_free(manifest_t *m) {
    for (size_t i = 0; i < m->n; i++) free(m->files[i].path);
    free(m->files);
    memset(m, 0, sizeof *m);
}

static int manifest_add(manifest_t *m, const char *path, const char *hex, uint64_t size, int exec) {
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 16;
        mfile_t *f = realloc(m->files, cap * sizeof *f);
        if (!f) return rl_fail(RL_ENOMEM, "manifest: out of memory");
        m->files = f;
        m->cap = cap;
    }
    mfile_t *f = &m->files[m->n];
    if (!(f->path = strdup(path))) return rl_fail(RL_ENOMEM, "manifest: out of memory");
    memcpy(f->hex, hex, sizeof f->hex);
    f->size = size;
    f->exec = exec;
    m->n++;
    return 0;
}

static int mfile_cmp(const void *a, const void *b) {
    return strcmp(((const mfile_t *)a)->path, ((const mfile_t *)b)->path);
}

/* A relative path of len bytes with no empty, "." or ".." component (nothing that could leave
 * the tree it is materialised in). */
static int path_valid(const char *p, size_t len) {
    if (len == 0 || len >= MAX_REL_PATH || strlen(p) != len || p[0] == '/') return 0;
    for (const char *c = p; *c;) {
        const char *e = strchr(c, '/');
        size_t n = e ? (size_t)(e - c) : strlen(c);
        if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.')) return 0;
        if (!e) break;
        c = e + 1;
        if (!*c) return 0; /* a trailing '/' */
    }
    return 1;
}

/* The canonical JSON of m (files sorted already): compact, keys sorted. *out is malloc'ed. */
static int manifest_encode(const manifest_t *m, const char *root, char **out) {
    *out = NULL;
    json_t *files = json_array(), *doc = json_object();
    int rc = files && doc ? 0 : rl_fail(RL_ENOMEM, "manifest: out of memory");
    for (size_t i = 0; rc == 0 && i < m->n; i++) {
        const mfile_t *f = &m->files[i];
        json_t *name = json_string(f->path), *o = json_object();
        if (!name) {
            json_decref(o);
            rc = rl_fail(RL_EINVAL, "%s: the name \"%s\" is not UTF-8", root, f->path);
            break;
        }
        if (!o || json_object_set_new(o, "path", name) < 0 ||
            json_object_set_new(o, "sha256", json_string(f->hex)) < 0 ||
            json_object_set_new(o, "size", json_integer((json_int_t)f->size)) < 0 ||
            json_object_set_new(o, "mode", json_string(f->exec ? "0755" : "0644")) < 0 ||
            json_array_append_new(files, o) < 0)
            rc = rl_fail(RL_ENOMEM, "manifest: out of memory");
    }
    if (rc == 0 &&
        (json_object_set_new(doc, "kind", json_string(m->is_file ? "file" : "dir")) < 0 ||
         json_object_set(doc, "files", files) < 0))
        rc = rl_fail(RL_ENOMEM, "manifest: out of memory");
    if (rc == 0 && !(*out = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS)))
        rc = rl_fail(RL_ENOMEM, "manifest: out of memory");
    json_decref(files);
    json_decref(doc);
    return rc;
}

/* Parses and checks a manifest (what names it in messages): every field present and typed,
 * nothing else, paths valid and strictly sorted, digests valid. */
static int manifest_decode(const char *buf, size_t len, const char *what, manifest_t *m) {
    memset(m, 0, sizeof *m);
    json_error_t je;
    json_t *doc = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (!doc) return rl_fail(RL_EFORMAT, "%s: not a manifest: %s", what, je.text);
    json_t *kind = json_object_get(doc, "kind"), *files = json_object_get(doc, "files");
    const char *k = json_string_value(kind);
    int rc = 0;
    if (json_object_size(doc) != 2 || !k || (strcmp(k, "dir") && strcmp(k, "file")) ||
        !json_is_array(files)) {
        rc = rl_fail(RL_EFORMAT, "%s: not a manifest (kind and files expected)", what);
        goto done;
    }
    m->is_file = !strcmp(k, "file");
    for (size_t i = 0; rc == 0 && i < json_array_size(files); i++) {
        json_t *o = json_array_get(files, i);
        json_t *p = json_object_get(o, "path"), *h = json_object_get(o, "sha256");
        json_t *sz = json_object_get(o, "size"), *md = json_object_get(o, "mode");
        const char *path = json_string_value(p), *hex = json_string_value(h);
        const char *mode = json_string_value(md);
        if (json_object_size(o) != 4 || !path || !path_valid(path, json_string_length(p)) ||
            !hex_valid(hex) || !json_is_integer(sz) || json_integer_value(sz) < 0 || !mode ||
            (strcmp(mode, "0644") && strcmp(mode, "0755"))) {
            rc = rl_fail(RL_EFORMAT, "%s: file %zu of the manifest is malformed", what, i);
        } else if (m->n > 0 && strcmp(m->files[m->n - 1].path, path) >= 0) {
            rc = rl_fail(RL_EFORMAT, "%s: the manifest's paths are not sorted and unique at %s",
                         what, path);
        } else {
            rc =
                manifest_add(m, path, hex, (uint64_t)json_integer_value(sz), !strcmp(mode, "0755"));
        }
    }
    if (rc == 0 && m->is_file && (m->n != 1 || strchr(m->files[0].path, '/')))
        rc = rl_fail(RL_EFORMAT, "%s: a file manifest names one file", what);
done:
    json_decref(doc);
    if (rc < 0) manifest_free(m);
    return rc;
}

static int st_read_manifest(const blob_store_t *st, const char *hex, manifest_t *m) {
    char p[PATH_MAX], what[BLOB_REF_LEN];
    snprintf(what, sizeof what, "sha256:%s", hex);
    int rc = st_path(st, p, sizeof p, "blobs", hex);
    char *data = NULL;
    size_t len = 0;
    if (rc == 0) rc = fs_read_file(p, BLOB_MAX_MANIFEST, &data, &len);
    if (rc < 0) return rl_fail_ctx(rc, "%s", what);
    rc = manifest_decode(data, len, what, m);
    free(data);
    return rc;
}

static int mfile_hexcmp(const void *a, const void *b) {
    return strcmp((*(const mfile_t *const *)a)->hex, (*(const mfile_t *const *)b)->hex);
}

/* One file of m per distinct digest, sorted by digest (pointers into m); *out is malloc'ed
 * with room for one more entry. */
static int manifest_blobs(const manifest_t *m, const mfile_t ***out, size_t *n) {
    const mfile_t **f = malloc((m->n + 1) * sizeof *f);
    if (!f) return rl_fail(RL_ENOMEM, "manifest: out of memory");
    for (size_t i = 0; i < m->n; i++) f[i] = &m->files[i];
    qsort(f, m->n, sizeof *f, mfile_hexcmp);
    size_t k = 0;
    for (size_t i = 0; i < m->n; i++)
        if (k == 0 || strcmp(f[k - 1]->hex, f[i]->hex)) f[k++] = f[i];
    *out = f;
    *n = k;
    return 0;
}

/* ---- put --------------------------------------------------------------------------------------
 */

typedef struct {
    blob_store_t *st;
    io_t io;
    manifest_t m;
    char abs[PATH_MAX], rel[PATH_MAX];
} put_t;

static int put_file(put_t *p) {
    char hex[BLOB_HEX_LEN + 1];
    uint64_t size;
    int exec;
    int rc = st_put_file(p->st, &p->io, p->abs, hex, &size, &exec);
    return rc < 0 ? rc : manifest_add(&p->m, p->rel, hex, size, exec);
}

static int put_dir(put_t *p);

/* p->abs / p->rel name an entry of a directory being put. */
static int put_entry(put_t *p) {
    struct stat sb;
    if (lstat(p->abs, &sb) < 0) return fail_errno(errno, "stat", p->abs);
    if (S_ISLNK(sb.st_mode)) {
        if (stat(p->abs, &sb) < 0)
            return rl_fail(RL_EUNSUPPORTED, "%s: a symbolic link to nothing (%s)", p->abs,
                           strerror(errno));
        if (!S_ISREG(sb.st_mode))
            return rl_fail(RL_EUNSUPPORTED,
                           "%s: a symbolic link to something other than a regular file", p->abs);
        return put_file(p);
    }
    if (S_ISDIR(sb.st_mode)) return put_dir(p);
    if (S_ISREG(sb.st_mode)) return put_file(p);
    return rl_fail(RL_EUNSUPPORTED, "%s: not a regular file or directory (%s)", p->abs,
                   S_ISFIFO(sb.st_mode)   ? "a FIFO"
                   : S_ISSOCK(sb.st_mode) ? "a socket"
                                          : "a device");
}

static int put_dir(put_t *p) {
    struct stat sb, store;
    if (stat(p->abs, &sb) == 0 && stat(p->st->dir, &store) == 0 && sb.st_dev == store.st_dev &&
        sb.st_ino == store.st_ino) /* it would put what it writes */
        return rl_fail(RL_EINVAL, "%s: is the blob store itself", p->abs);
    DIR *d = opendir(p->abs);
    if (!d) return fail_errno(errno, "open directory", p->abs);
    size_t alen = strlen(p->abs), rlen = strlen(p->rel);
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (errno = 0, e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        size_t n = strlen(e->d_name);
        if (alen + 1 + n >= sizeof p->abs || rlen + 1 + n >= MAX_REL_PATH) {
            rc = rl_fail(RL_EINVAL, "%s/%s: path too long", p->abs, e->d_name);
            break;
        }
        snprintf(p->abs + alen, sizeof p->abs - alen, "/%s", e->d_name);
        snprintf(p->rel + rlen, sizeof p->rel - rlen, "%s%s", rlen ? "/" : "", e->d_name);
        rc = put_entry(p);
        p->abs[alen] = '\0';
        p->rel[rlen] = '\0';
    }
    if (rc == 0 && errno) rc = fail_errno(errno, "read directory", p->abs);
    closedir(d);
    return rc;
}

int blob_put_path(blob_store_t *st, const char *path, char ref[BLOB_REF_LEN]) {
    ref[0] = '\0';
    if (!path || !*path) return rl_fail(RL_EINVAL, "blob_put_path: empty path");
    struct stat sb;
    if (stat(path, &sb) < 0) return fail_errno(errno, "stat", path);
    put_t *p = calloc(1, sizeof *p);
    if (!p) return rl_fail(RL_ENOMEM, "%s: out of memory", path);
    p->st = st;
    int rc = hq_start(&p->io.hq);
    for (int k = 0; rc == 0 && k < PUT_BUFS; k++)
        if (!(p->io.buf[k] = malloc(IO_BYTES))) rc = rl_fail(RL_ENOMEM, "%s: out of memory", path);
    if (rc == 0 && strlen(path) >= sizeof p->abs)
        rc = rl_fail(RL_EINVAL, "%s: path too long", path);
    if (rc == 0) {
        snprintf(p->abs, sizeof p->abs, "%s", path);
        size_t n = strlen(p->abs);
        while (n > 1 && p->abs[n - 1] == '/') p->abs[--n] = '\0';
        if (S_ISDIR(sb.st_mode)) {
            rc = put_dir(p);
        } else if (S_ISREG(sb.st_mode)) {
            const char *slash = strrchr(p->abs, '/');
            snprintf(p->rel, sizeof p->rel, "%s", slash ? slash + 1 : p->abs);
            p->m.is_file = 1;
            rc = put_file(p);
        } else {
            rc = rl_fail(RL_EUNSUPPORTED, "%s: not a regular file or directory", path);
        }
    }
    char *json = NULL, hex[BLOB_HEX_LEN + 1];
    if (rc == 0) {
        qsort(p->m.files, p->m.n, sizeof *p->m.files, mfile_cmp);
        rc = manifest_encode(&p->m, path, &json);
    }
    if (rc == 0) rc = st_put_bytes(st, json, strlen(json), hex);
    if (rc == 0) rc = st_sync_blobs(st);
    if (rc == 0) snprintf(ref, BLOB_REF_LEN, "sha256:%s", hex);
    free(json);
    manifest_free(&p->m);
    hq_stop(&p->io.hq);
    for (int k = 0; k < PUT_BUFS; k++) free(p->io.buf[k]);
    free(p);
    return rc;
}

/* ---- trees ------------------------------------------------------------------------------------
 */

/* What resolve hands out: the tree, or the one file in it. */
static int st_tree_out(const blob_store_t *st, const char *hex, const manifest_t *m, char *out,
                       size_t cap) {
    int n = m->is_file ? snprintf(out, cap, "%s/trees/%s/%s", st->dir, hex, m->files[0].path)
                       : snprintf(out, cap, "%s/trees/%s", st->dir, hex);
    if (n < 0 || (size_t)n >= cap)
        return rl_fail(RL_EINVAL, "sha256:%s: its path does not fit in %zu bytes", hex, cap);
    return 0;
}

/* The kind of a manifest that was checked once (its tree exists) from the end of its canonical
 * JSON alone: 1 "file", 0 "dir", -1 when it does not end as ours do. No parse of a long list. */
static int st_manifest_kind(const blob_store_t *st, const char *hex) {
    static const char dir[] = "],\"kind\":\"dir\"}", file[] = "],\"kind\":\"file\"}";
    char p[PATH_MAX], tail[sizeof file];
    if (st_path(st, p, sizeof p, "blobs", hex) < 0) return -1;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    ssize_t n = -1;
    if (fd >= 0 && fstat(fd, &sb) == 0 && sb.st_size >= (off_t)sizeof file)
        n = pread_full(fd, tail, sizeof file - 1, (uint64_t)sb.st_size - (sizeof file - 1));
    if (fd >= 0) close(fd);
    if (n != (ssize_t)sizeof file - 1) return -1;
    tail[sizeof file - 1] = '\0';
    if (!strcmp(tail, file)) return 1;
    return !strcmp(tail + 1, dir) ? 0 : -1;
}

/* The one file in the tree of a "file" manifest: out gets its path. */
static int st_tree_file(const char *tree, char *out, size_t cap) {
    DIR *d = opendir(tree);
    if (!d) return -1;
    struct dirent *e;
    int n = -1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            n = snprintf(out, cap, "%s/%s", tree, e->d_name);
            break;
        }
    closedir(d);
    return n >= 0 && (size_t)n < cap ? 0 : -1;
}

/* 1 with out filled when trees/<hex> is there (and its manifest readable), else 0. Cheap: a
 * stat and the end of the manifest (and for a file, the tree's one entry). */
static int st_tree_ready(const blob_store_t *st, const char *hex, char *out, size_t cap) {
    char p[PATH_MAX];
    struct stat sb;
    if (st_path(st, p, sizeof p, "trees", hex) < 0 || stat(p, &sb) < 0 || !S_ISDIR(sb.st_mode))
        return 0;
    int kind = st_manifest_kind(st, hex);
    if (kind == 0 && strlen(p) < cap) {
        memcpy(out, p, strlen(p) + 1);
        return 1;
    }
    if (kind == 1 && st_tree_file(p, out, cap) == 0) return 1;
    manifest_t m; /* another form, or a path too long: the whole manifest says */
    if (st_read_manifest(st, hex, &m) < 0) {
        rl_err_clear();
        return 0;
    }
    int rc = st_tree_out(st, hex, &m, out, cap);
    manifest_free(&m);
    return rc < 0 ? rc : 1;
}

/* A copy of blob src at dst with mode (a file whose mode a hard link cannot give). */
static int copy_file(const char *src, const char *dst, mode_t mode, uint8_t *buf) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return fail_errno(errno, "open", src);
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int rc = out < 0 ? fail_errno(errno, "create", dst) : 0;
    while (rc == 0) {
        ssize_t r = read(in, buf, IO_BYTES);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) rc = fail_errno(errno, "read", src);
        if (r <= 0) break;
        if (write_full(out, buf, (size_t)r) < 0) rc = fail_errno(errno, "write", dst);
    }
    if (rc == 0 && (fchmod(out, mode) < 0 || fsync(out) < 0)) rc = fail_errno(errno, "sync", dst);
    close(in);
    if (out >= 0) close(out);
    return rc;
}

static int sync_tree_dir(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)ftw;
    return flag == FTW_D || flag == FTW_DP ? sync_dir(path) : 0;
}

/* Builds trees/<hex>/ from m (every blob present) in tmp/ and renames it into place. */
static int st_materialise(blob_store_t *st, const char *hex, const manifest_t *m) {
    char tmp[PATH_MAX], dst[PATH_MAX], src[PATH_MAX], tree[PATH_MAX];
    int rc = st_tmp(st, tmp, sizeof tmp, "tree");
    if (rc == 0) rc = st_path(st, tree, sizeof tree, "trees", hex);
    if (rc < 0) return rc;
    if (mkdir(tmp, 0755) < 0) return fail_errno(errno, "mkdir", tmp);
    uint8_t *buf = NULL;
    for (size_t i = 0; rc == 0 && i < m->n; i++) {
        const mfile_t *f = &m->files[i];
        int n = snprintf(dst, sizeof dst, "%s/%s", tmp, f->path);
        if (n < 0 || (size_t)n >= sizeof dst) {
            rc = rl_fail(RL_EINVAL, "%s: path too long", f->path);
            break;
        }
        /* the directories above the file (the manifest's paths stay inside: path_valid) */
        for (char *c = dst + strlen(tmp) + 1; rc == 0 && (c = strchr(c, '/')); c++) {
            struct stat sb;
            *c = '\0';
            if (mkdir(dst, 0755) < 0 &&
                (errno != EEXIST || stat(dst, &sb) < 0 || !S_ISDIR(sb.st_mode)))
                rc = rl_fail(RL_EFORMAT, "sha256:%s: %s cannot be a directory and a file", hex,
                             f->path);
            *c = '/';
        }
        struct stat sb;
        if (rc == 0) rc = st_path(st, src, sizeof src, "blobs", f->hex);
        if (rc == 0 && stat(src, &sb) < 0) rc = fail_errno(errno, "stat", src);
        if (rc == 0 && (uint64_t)sb.st_size != f->size)
            rc =
                rl_fail(RL_EFORMAT, "sha256:%s: %s is %llu bytes in the manifest, its blob %s %lld",
                        hex, f->path, (unsigned long long)f->size, f->hex, (long long)sb.st_size);
        if (rc < 0) break;
        if (!f->exec && link(src, dst) == 0) continue;
        if (errno == EEXIST && !f->exec) {
            rc = rl_fail(RL_EFORMAT, "sha256:%s: %s twice", hex, f->path);
            break;
        }
        if (!buf && !(buf = malloc(IO_BYTES))) rc = rl_fail(RL_ENOMEM, "out of memory");
        if (rc == 0) rc = copy_file(src, dst, f->exec ? 0555 : 0444, buf); /* EMLINK, EXDEV */
    }
    free(buf);
    if (rc == 0) { /* the callback's codes are below -1: -1 is nftw's own failure */
        int r = nftw(tmp, sync_tree_dir, 16, FTW_PHYS | FTW_DEPTH);
        if (r != 0) rc = r == -1 ? fail_errno(errno, "walk", tmp) : r;
    }
    if (rc == 0 && rename(tmp, tree) < 0) {
        if (errno != EEXIST && errno != ENOTEMPTY) rc = fail_errno(errno, "rename into place", tmp);
        fs_remove_tree(tmp); /* another writer's complete tree is there: keep it */
    }
    if (rc == 0) {
        char trees[PATH_MAX];
        rc = st_path(st, trees, sizeof trees, "trees", NULL);
        if (rc == 0) rc = sync_dir(trees);
    } else {
        int keep = rc;
        fs_remove_tree(tmp);
        rc = keep;
    }
    return rc;
}

/* Takes the flock of locks/<hex> (polling `cancel`). *fd gets the lock's descriptor. */
static int st_lock(blob_store_t *st, const char *hex, const _Atomic int *cancel, int *fd) {
    char p[PATH_MAX];
    int rc = st_path(st, p, sizeof p, "locks", hex);
    if (rc < 0) return rc;
    *fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (*fd < 0) return fail_errno(errno, "open", p);
    while (flock(*fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK && errno != EINTR) {
            rc = fail_errno(errno, "flock", p);
            break;
        }
        if (cancel && atomic_load(cancel)) {
            rc = rl_fail(RL_EIO, "sha256:%s: cancelled", hex);
            break;
        }
        nap_ms(20);
    }
    if (rc < 0) close(*fd);
    return rc;
}

/* ---- client -----------------------------------------------------------------------------------
 */

struct blob_client {
    void *zctx, *sock;
    int own_ctx;
    char *endpoint;
    blob_client_opts_t o;
    const _Atomic int *cancel;
    uint32_t op;       /* the operation in progress: the high half of its request ids */
    uint32_t silences; /* in a row, without a message */
    blob_client_stats_t stats;
    pthread_mutex_t lock; /* one operation at a time */
};

blob_client_t *blob_client_new(void *zctx, const char *endpoint) {
    if (!endpoint || !*endpoint) {
        rl_fail(RL_EINVAL, "blob client: empty endpoint");
        return NULL;
    }
    blob_client_t *c = calloc(1, sizeof *c);
    if (c) c->endpoint = strdup(endpoint);
    if (!c || !c->endpoint) {
        if (c) free(c);
        rl_fail(RL_ENOMEM, "blob client: out of memory");
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->zctx = zctx;
    if (!c->zctx) {
        c->zctx = zmq_ctx_new();
        c->own_ctx = 1;
        if (!c->zctx) {
            rl_fail(RL_EIO, "blob client: zmq_ctx_new: %s", zmq_strerror(errno));
            blob_client_free(&c);
            return NULL;
        }
    }
    blob_client_set_opts(c, NULL);
    return c;
}

void blob_client_set_opts(blob_client_t *c, const blob_client_opts_t *o) {
    blob_client_opts_t d = {BLOB_CHUNK_BYTES, BLOB_CREDIT, 10000, 5};
    if (o && o->chunk_bytes) d.chunk_bytes = o->chunk_bytes;
    if (o && o->credit > 0) d.credit = o->credit;
    if (o && o->timeout_ms > 0) d.timeout_ms = o->timeout_ms;
    if (o && o->max_retries > 0) d.max_retries = o->max_retries;
    if (d.chunk_bytes > BLOB_MAX_REQUEST) d.chunk_bytes = BLOB_MAX_REQUEST;
    if (d.credit > BLOB_MAX_CREDIT) d.credit = BLOB_MAX_CREDIT;
    if (d.max_retries > 250) d.max_retries = 250;
    pthread_mutex_lock(&c->lock);
    c->o = d;
    pthread_mutex_unlock(&c->lock);
}

void blob_client_set_cancel(blob_client_t *c, const _Atomic int *cancel) {
    c->cancel = cancel;
}

const char *blob_client_endpoint(const blob_client_t *c) {
    return c->endpoint;
}

void blob_client_stats(const blob_client_t *c, blob_client_stats_t *out) {
    pthread_mutex_lock((pthread_mutex_t *)&c->lock);
    *out = c->stats;
    pthread_mutex_unlock((pthread_mutex_t *)&c->lock);
}

static void cl_close(blob_client_t *c) {
    if (c->sock) zmq_close(c->sock);
    c->sock = NULL;
}

void blob_client_free(blob_client_t **cp) {
    blob_client_t *c = cp ? *cp : NULL;
    if (!c) return;
    cl_close(c);
    if (c->own_ctx && c->zctx) zmq_ctx_term(c->zctx);
    pthread_mutex_destroy(&c->lock);
    free(c->endpoint);
    free(c);
    *cp = NULL;
}

static int cl_open(blob_client_t *c) {
    if (c->sock) return 0;
    c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
    if (!c->sock) return rl_fail(RL_EIO, "blob client: zmq_socket: %s", zmq_strerror(errno));
    int linger = 0, hwm = 4 * BLOB_MAX_CREDIT;
    int64_t maxmsg = (int64_t)BLOB_MAX_REQUEST + WIRE_MAX_ENVELOPE;
    addr_zmq_opts(c->sock);
    int src = sec_client(c->sock, sec_master_pub()); /* the artifact server is the master's */
    if (src < 0) {
        cl_close(c);
        return src;
    }
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_connect(c->sock, c->endpoint) < 0) {
        int e = errno;
        cl_close(c);
        return rl_fail(RL_EIO, "blob client: connect %s: %s", c->endpoint, zmq_strerror(e));
    }
    return 0;
}

static int cl_cancelled(const blob_client_t *c) {
    return c->cancel && atomic_load(c->cancel);
}

/* Sends env (+ frame, consumed either way) on sock, to rid when rid_len > 0 (ROUTER). Returns 0
 * or -1 with errno from libzmq (EAGAIN: the peer's pipe is full; EHOSTUNREACH: it is gone). */
static int send_env(void *sock, const void *rid, size_t rid_len, Rlhf__Envelope *env,
                    zmq_msg_t *frame) {
    env->protocol_version = RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    size_t sz = rlhf__envelope__get_packed_size(env);
    uint8_t stackbuf[1024], *buf = sz <= sizeof stackbuf ? stackbuf : malloc(sz);
    int rc = -1;
    errno = ENOMEM;
    if (buf) {
        rlhf__envelope__pack(env, buf);
        int more = frame ? ZMQ_SNDMORE : 0;
        if (rid_len) {
            if (zmq_send(sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
                zmq_send(sock, buf, sz, more) >= 0 && (!frame || zmq_msg_send(frame, sock, 0) >= 0))
                rc = 0;
        } else if (zmq_send(sock, buf, sz, more | ZMQ_DONTWAIT) >= 0 &&
                   (!frame || zmq_msg_send(frame, sock, 0) >= 0)) {
            rc = 0;
        }
    }
    int e = errno;
    if (buf != stackbuf) free(buf);
    if (frame && rc < 0) zmq_msg_close(frame);
    errno = e;
    return rc;
}

/* Unpacks the envelope of m; NULL unless it is a current-version Envelope with a body. Raw
 * frames are checked by the caller. */
static Rlhf__Envelope *env_unpack(const wire_msg_t *m) {
    if (m->n_frames < 1 || m->too_many || wire_frame_size(m, 0) > WIRE_MAX_ENVELOPE) return NULL;
    Rlhf__Envelope *e = rlhf__envelope__unpack(NULL, wire_frame_size(m, 0), wire_frame_data(m, 0));
    if (e && (e->protocol_version != RLHF__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT ||
              e->body_case == RLHF__ENVELOPE__BODY__NOT_SET)) {
        rlhf__envelope__free_unpacked(e, NULL);
        e = NULL;
    }
    return e;
}

/* Waits up to timeout_ms for a message, polling the cancel flag. 1: *m filled; 0: silence. */
static int cl_wait(blob_client_t *c, wire_msg_t *m) {
    double end = wire_now_ms() + c->o.timeout_ms;
    for (;;) {
        if (cl_cancelled(c)) return rl_fail(RL_EIO, "blob client %s: cancelled", c->endpoint);
        int rc = wire_recv(c->sock, 0, m, ZMQ_DONTWAIT);
        if (rc != 0) return rc;
        double left = end - wire_now_ms();
        if (left <= 0) return 0;
        zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, left < 100 ? (long)left + 1 : 100) < 0 && errno != EINTR)
            return rl_fail(RL_EIO, "blob client: zmq_poll: %s", zmq_strerror(errno));
    }
}

/* A silence: drop the socket with whatever was in flight and open a fresh one. */
static int cl_silence(blob_client_t *c, const char *what) {
    c->stats.timeouts++;
    if (++c->silences > (uint32_t)c->o.max_retries)
        return rl_fail(RL_EIO, "blob %s: no answer from %s in %d ms, %d times%s", what, c->endpoint,
                       c->o.timeout_ms, c->o.max_retries + 1, sec_silence_hint());
    cl_close(c);
    return cl_open(c);
}

/* An Error from the server ends the operation. */
static int cl_server_error(const blob_client_t *c, const Rlhf__Envelope *e) {
    return rl_fail(RL_EPROTO, "blob server %s: %s", c->endpoint,
                   e->error->message ? e->error->message : "error");
}

static uint64_t cl_rid(const blob_client_t *c, uint32_t n) {
    return (uint64_t)c->op << 32 | n;
}

static int cl_ours(const blob_client_t *c, uint64_t request_id) {
    return (uint32_t)(request_id >> 32) == c->op;
}

/* ---- client: fetch ----------------------------------------------------------------------------
 */

enum { P_TODO = 0, P_ASKED, P_DONE };

typedef struct {
    const char *hex;   /* borrowed */
    int64_t size;      /* -1: unknown until the first answer */
    uint64_t max_size; /* for an unknown size */
    int fd;            /* the tmp file, open from the first request on; else -1 */
    char *tmp;
    crypto_hash_sha256_state sha; /* the hasher's */
    uint64_t synced;              /* written back */
    uint32_t n_pieces, next, done;
    uint32_t hash_next; /* the next piece to queue for hashing */
    uint8_t *state, *tries;
    int asked0;   /* the first piece of a blob of unknown size is asked */
    int received; /* every piece is in and queued: from then on, the hasher's */
} fjob_t;

typedef struct {
    blob_client_t *c;
    blob_store_t *st;
    fjob_t *jobs;
    size_t n, lo, cursor; /* jobs below lo are received; from cursor on, none asked */
    uint32_t outstanding;
    uint64_t piece;
    hq_t hq;
} fetch_t;

static size_t fj_len(const fetch_t *f, const fjob_t *b, uint32_t i) {
    uint64_t off = (uint64_t)i * f->piece;
    return (size_t)((uint64_t)b->size - off < f->piece ? (uint64_t)b->size - off : f->piece);
}

static int fj_set_size(fetch_t *f, fjob_t *b, uint64_t size) {
    uint64_t n = size ? (size + f->piece - 1) / f->piece : 1; /* an empty blob: one empty piece */
    if (n > UINT32_MAX)
        return rl_fail(RL_EPROTO, "blob %s: %llu bytes", b->hex, (unsigned long long)size);
    b->size = (int64_t)size;
    b->n_pieces = (uint32_t)n;
    b->state = calloc(n, 1);
    b->tries = calloc(n, 1);
    if (!b->state || !b->tries) return rl_fail(RL_ENOMEM, "blob %s: out of memory", b->hex);
    return 0;
}

static void fj_drop(fjob_t *b) {
    if (b->fd >= 0) {
        close(b->fd);
        unlink(b->tmp);
    }
    b->fd = -1;
    free(b->tmp);
    free(b->state);
    free(b->tries);
    b->tmp = NULL;
    b->state = b->tries = NULL;
}

/* The tmp file a blob is received into, made at its first request. */
static int fj_start(fetch_t *f, fjob_t *b) {
    if (b->fd >= 0) return 0;
    char tmp[PATH_MAX];
    int rc = b->size >= 0 && !b->state ? fj_set_size(f, b, (uint64_t)b->size) : 0;
    if (rc == 0) rc = st_tmp(f->st, tmp, sizeof tmp, "get");
    if (rc < 0) return rc;
    if (!(b->tmp = strdup(tmp))) return rl_fail(RL_ENOMEM, "out of memory");
    b->fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    if (b->fd < 0) return fail_errno(errno, "create", tmp);
    crypto_hash_sha256_init(&b->sha);
    b->synced = 0;
    return 0;
}

/* Asks for the piece at off (the server sends what is left of it: an empty blob's piece is
 * empty). */
static int fx_ask(fetch_t *f, fjob_t *b, uint64_t off) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__BlobGet g = RLHF__BLOB_GET__INIT;
    g.request_id = cl_rid(f->c, 0);
    g.digest = (char *)b->hex;
    g.offset = off;
    g.length = f->piece;
    env.body_case = RLHF__ENVELOPE__BODY_BLOB_GET;
    env.blob_get = &g;
    /* a full queue (EAGAIN) is left to the silence that follows; the rest is the socket's end */
    if (send_env(f->c->sock, NULL, 0, &env, NULL) < 0 && errno != EAGAIN)
        return rl_fail(RL_EIO, "blob client %s: send: %s", f->c->endpoint, zmq_strerror(errno));
    return 0;
}

/* Asks for pieces, in order of jobs and offsets, until `credit` are in flight. */
static int fx_fill(fetch_t *f) {
    uint32_t credit = (uint32_t)f->c->o.credit;
    while (f->outstanding < credit && f->cursor < f->n) {
        fjob_t *b = &f->jobs[f->cursor];
        if (b->received) {
            f->cursor++;
            continue;
        }
        int rc = fj_start(f, b);
        if (rc < 0) return rc;
        if (b->size < 0) { /* its size comes with the first piece: nothing else until then */
            if (b->asked0) return 0;
            if ((rc = fx_ask(f, b, 0)) < 0) return rc;
            b->asked0 = 1;
            f->outstanding++;
            return 0;
        }
        while (b->next < b->n_pieces && b->state[b->next] != P_TODO) b->next++;
        if (b->next == b->n_pieces) {
            f->cursor++;
            continue;
        }
        uint32_t i = b->next++;
        if ((rc = fx_ask(f, b, (uint64_t)i * f->piece)) < 0) return rc;
        b->state[i] = P_ASKED;
        f->outstanding++;
    }
    return 0;
}

/* After a silence, on a fresh socket: everything in flight is asked for again. */
static void fx_reset(fetch_t *f) {
    for (size_t j = f->lo; j < f->n && j <= f->cursor; j++) {
        fjob_t *b = &f->jobs[j];
        b->asked0 = 0;
        for (uint32_t i = 0; b->state && i < b->n_pieces; i++)
            if (b->state[i] == P_ASKED) b->state[i] = P_TODO;
        b->next = 0;
    }
    f->cursor = f->lo;
    f->outstanding = 0;
}

static fjob_t *fx_find(fetch_t *f, const char *hex) {
    if (!hex) return NULL;
    for (size_t j = f->lo; j < f->n && j <= f->cursor; j++)
        if (!f->jobs[j].received && !strcmp(f->jobs[j].hex, hex)) return &f->jobs[j];
    return NULL;
}

/* On the hasher, once every piece is hashed: the digest decides whether the blob enters the
 * store (the tmp file is the hasher's now; nothing of a bad blob is kept). */
static int fj_finish(void *fp, void *bp) {
    fetch_t *f = fp;
    fjob_t *b = bp;
    char got[BLOB_HEX_LEN + 1];
    sha_final_hex(&b->sha, got);
    if (strcmp(got, b->hex) != 0) {
        close(b->fd);
        unlink(b->tmp);
        b->fd = -1;
        return rl_fail(RL_EPROTO, "blob %s from %s: its %lld bytes hash to %s (discarded)", b->hex,
                       f->c->endpoint, (long long)b->size, got);
    }
    int rc = st_commit(f->st, b->fd, b->tmp, b->hex, 1);
    b->fd = -1;
    if (rc < 0) return rc;
    f->c->stats.blobs_fetched++;
    f->c->stats.bytes_received += (uint64_t)b->size;
    return 0;
}

/* Queues for hashing what is contiguous from b->hash_next on: piece i with its frame (taken
 * from the message), the pieces that arrived before their turn read back from the file; then,
 * once all are queued, the check and the rename. */
static int fj_queue(fetch_t *f, fjob_t *b, uint32_t i, void *frame) {
    while (b->hash_next < b->n_pieces && b->state[b->hash_next] == P_DONE) {
        uint32_t k = b->hash_next++;
        hq_task_t t = {
            .sha = &b->sha, .len = fj_len(f, b, k), .fd = b->fd, .off = (uint64_t)k * f->piece};
        if (k == i && frame) {
            t.data = wire_frame_bytes(frame);
            t.release = wire_frame_release;
            t.frame = frame;
            frame = NULL;
        }
        hq_push(&f->hq, &t);
    }
    wire_frame_release(frame); /* an early piece: read back from the file in its turn */
    if (b->hash_next < b->n_pieces) return 0;
    hq_task_t fin = {.call = fj_finish, .a = f, .b = b};
    b->received = 1;
    hq_push(&f->hq, &fin);
    while (f->lo < f->n && f->jobs[f->lo].received) f->lo++;
    return 0;
}

static int fx_data(fetch_t *f, wire_msg_t *m, const Rlhf__Envelope *e) {
    const Rlhf__BlobData *d = e->blob_data;
    fjob_t *b = fx_find(f, d->digest);
    if (!b) return 0; /* not one we wait for (an answer to an earlier try) */
    if (d->code != 0)
        return rl_fail(d->code == RL_ENOTFOUND ? RL_ENOTFOUND : RL_EPROTO, "blob %s at %s: %s",
                       b->hex, f->c->endpoint,
                       d->error && *d->error ? d->error : rl_strerror(d->code));
    int rc;
    if (b->size < 0) {
        if (!b->asked0 || d->offset != 0) return 0;
        if (d->total_size > b->max_size)
            return rl_fail(RL_EPROTO, "blob %s at %s: %llu bytes, more than the %llu allowed",
                           b->hex, f->c->endpoint, (unsigned long long)d->total_size,
                           (unsigned long long)b->max_size);
        if ((rc = fj_set_size(f, b, d->total_size)) < 0) return rc;
        b->state[0] = P_ASKED;
        b->next = 1;
    } else if (d->total_size != (uint64_t)b->size) {
        return rl_fail(RL_EPROTO, "blob %s at %s: %llu bytes, the manifest says %lld", b->hex,
                       f->c->endpoint, (unsigned long long)d->total_size, (long long)b->size);
    }
    if (d->offset % f->piece) return 0;
    uint64_t i = d->offset / f->piece;
    if (i >= b->n_pieces || b->state[i] != P_ASKED) return 0; /* a duplicate after a retry */
    size_t len = fj_len(f, b, (uint32_t)i);
    const void *data = wire_frame_data(m, 1);
    int ok = m->n_frames == 2 && e->n_frames == 1 && wire_frame_size(m, 1) == len &&
             e->frames[0]->nbytes == len;
    if (ok) ok = crc32c(0, data, len) == e->frames[0]->crc32c;
    if (!ok) {
        f->c->stats.crc_errors++;
        if (++b->tries[i] > f->c->o.max_retries)
            return rl_fail(
                RL_EPROTO, "blob %s from %s: the piece at %llu is still damaged after %d tries",
                b->hex, f->c->endpoint, (unsigned long long)d->offset, f->c->o.max_retries + 1);
        return fx_ask(f, b, d->offset); /* still asked: the window stays the same */
    }
    if (len && pwrite_full(b->fd, data, len, d->offset) < 0)
        return fail_errno(errno, "write", b->tmp);
    sync_some(b->fd, d->offset + len, &b->synced);
    b->state[i] = P_DONE;
    b->done++;
    f->outstanding--;
    return fj_queue(f, b, (uint32_t)i, wire_frame_take(m, 1));
}

/* Fetches the blobs of jobs[0..n) into the store (a job of unknown size only alone). The
 * caller holds c->lock. */
static int cl_fetch(blob_client_t *c, blob_store_t *st, fjob_t *jobs, size_t n) {
    fetch_t f = {.c = c, .st = st, .jobs = jobs, .n = n, .piece = c->o.chunk_bytes};
    for (size_t j = 0; j < n; j++) jobs[j].fd = -1;
    c->op++;
    c->silences = 0;
    int rc = hq_start(&f.hq);
    if (rc == 0) rc = cl_open(c);
    while (rc == 0 && f.lo < n) {
        if (atomic_load(&f.hq.failed)) { /* a blob did not match: no use fetching the rest */
            rc = hq_drain(&f.hq);
            break;
        }
        if ((rc = fx_fill(&f)) < 0) break;
        wire_msg_t m;
        rc = cl_wait(c, &m);
        if (rc < 0) break;
        if (rc == 0) {
            if ((rc = cl_silence(c, "fetch")) == 0) fx_reset(&f);
            continue;
        }
        Rlhf__Envelope *e = env_unpack(&m);
        rc = 0; /* what we cannot read is ignored: a silence or a retry covers it */
        if (e && e->body_case == RLHF__ENVELOPE__BODY_ERROR)
            rc = cl_server_error(c, e);
        else if (e && e->body_case == RLHF__ENVELOPE__BODY_BLOB_DATA &&
                 cl_ours(c, e->blob_data->request_id))
            rc = fx_data(&f, &m, e);
        if (e) rlhf__envelope__free_unpacked(e, NULL);
        wire_msg_free(&m);
        c->silences = 0;
    }
    if (rc == 0) rc = hq_drain(&f.hq);
    hq_stop(&f.hq);
    if (rc == 0) rc = st_sync_blobs(st);
    for (size_t j = 0; j < n; j++) fj_drop(&jobs[j]); /* unfinished ones leave nothing */
    if (rc < 0) cl_close(c); /* answers still in flight must not reach the next operation */
    return rc;
}

/* ---- client: stat and push --------------------------------------------------------------------
 */

static int cl_send_stat(blob_client_t *c, const char **hex, size_t n, size_t batch) {
    size_t first = batch * BLOB_MAX_STAT, k = n - first < BLOB_MAX_STAT ? n - first : BLOB_MAX_STAT;
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__BlobStat s = RLHF__BLOB_STAT__INIT;
    s.request_id = cl_rid(c, (uint32_t)batch);
    s.digests = (char **)(hex + first);
    s.n_digests = k;
    env.body_case = RLHF__ENVELOPE__BODY_BLOB_STAT;
    env.blob_stat = &s;
    if (send_env(c->sock, NULL, 0, &env, NULL) < 0 && errno != EAGAIN)
        return rl_fail(RL_EIO, "blob client %s: send: %s", c->endpoint, zmq_strerror(errno));
    return 0;
}

/* have[i]: whether the server has hex[i]. All batches go out at once: one round trip. */
static int cl_stat(blob_client_t *c, const char **hex, size_t n, uint8_t *have) {
    size_t nb = (n + BLOB_MAX_STAT - 1) / BLOB_MAX_STAT, left = nb;
    uint8_t *got = calloc(nb ? nb : 1, 1);
    if (!got) return rl_fail(RL_ENOMEM, "out of memory");
    c->op++;
    c->silences = 0;
    int rc = cl_open(c);
    for (size_t b = 0; rc == 0 && b < nb; b++) rc = cl_send_stat(c, hex, n, b);
    while (rc == 0 && left > 0) {
        wire_msg_t m;
        rc = cl_wait(c, &m);
        if (rc < 0) break;
        if (rc == 0) {
            rc = cl_silence(c, "stat");
            for (size_t b = 0; rc == 0 && b < nb; b++)
                if (!got[b]) rc = cl_send_stat(c, hex, n, b);
            continue;
        }
        Rlhf__Envelope *e = env_unpack(&m);
        rc = 0;
        if (e && e->body_case == RLHF__ENVELOPE__BODY_ERROR) {
            rc = cl_server_error(c, e);
        } else if (e && e->body_case == RLHF__ENVELOPE__BODY_BLOB_HAVE &&
                   cl_ours(c, e->blob_have->request_id)) {
            size_t b = (uint32_t)e->blob_have->request_id, first = b * BLOB_MAX_STAT;
            if (b < nb && !got[b]) {
                size_t k = n - first < BLOB_MAX_STAT ? n - first : BLOB_MAX_STAT;
                if (e->blob_have->n_have != k) {
                    rc = rl_fail(RL_EPROTO, "blob server %s: %zu answers to %zu digests",
                                 c->endpoint, e->blob_have->n_have, k);
                } else {
                    for (size_t i = 0; i < k; i++) have[first + i] = e->blob_have->have[i] != 0;
                    got[b] = 1;
                    left--;
                }
            }
        }
        if (e) rlhf__envelope__free_unpacked(e, NULL);
        wire_msg_free(&m);
        c->silences = 0;
    }
    free(got);
    if (rc < 0) cl_close(c);
    return rc;
}

enum { U_WAIT = 0, U_OPEN, U_DONE };

typedef struct {
    const char *hex; /* borrowed */
    uint64_t size, sent, last_off;
    int fd, state, sent_all;
} ujob_t;

typedef struct {
    blob_client_t *c;
    blob_store_t *st;
    ujob_t *jobs;
    size_t n, lo, next, done; /* next: the first job not yet started */
    size_t cur;               /* the open job being sent */
    int n_open;
    uint32_t outstanding;
    int manifest_last; /* jobs[n-1] only once all others are stored */
} push_t;

static int ux_open(push_t *p, ujob_t *b) {
    if (b->fd < 0) {
        char src[PATH_MAX];
        int rc = st_path(p->st, src, sizeof src, "blobs", b->hex);
        if (rc < 0) return rc;
        b->fd = open(src, O_RDONLY | O_CLOEXEC);
        struct stat sb;
        if (b->fd < 0 || fstat(b->fd, &sb) < 0) return fail_errno(errno, "open", src);
        b->size = (uint64_t)sb.st_size;
    }
    b->state = U_OPEN;
    b->sent = 0;
    b->sent_all = 0;
    p->n_open++;
    return 0;
}

static int ux_send(push_t *p, ujob_t *b) {
    uint64_t piece = p->c->o.chunk_bytes, left = b->size - b->sent;
    size_t len = (size_t)(left < piece ? left : piece);
    zmq_msg_t frame;
    if (zmq_msg_init_size(&frame, len) < 0) return rl_fail(RL_ENOMEM, "out of memory");
    if (pread_full(b->fd, zmq_msg_data(&frame), len, b->sent) != (ssize_t)len) {
        zmq_msg_close(&frame);
        return rl_fail(RL_EIO, "blob %s in %s: shorter than %llu bytes", b->hex, p->st->dir,
                       (unsigned long long)b->size);
    }
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__BlobPut u = RLHF__BLOB_PUT__INIT;
    Rlhf__TensorHeader th, *ths[1] = {&th};
    int64_t shape[1] = {(int64_t)len};
    wire_tensor_describe(&th, "blob", RLHF__DTYPE__DTYPE_UNSPECIFIED, shape, 1,
                         zmq_msg_data(&frame), len);
    u.request_id = cl_rid(p->c, 0);
    u.digest = (char *)b->hex;
    u.offset = b->sent;
    u.total_size = b->size;
    u.last = b->sent + len == b->size;
    env.body_case = RLHF__ENVELOPE__BODY_BLOB_PUT;
    env.blob_put = &u;
    env.frames = ths;
    env.n_frames = 1;
    if (send_env(p->c->sock, NULL, 0, &env, &frame) < 0 && errno != EAGAIN)
        return rl_fail(RL_EIO, "blob client %s: send: %s", p->c->endpoint, zmq_strerror(errno));
    if (u.last) {
        b->sent_all = 1;
        b->last_off = b->sent;
    }
    b->sent += len;
    p->outstanding++;
    return 0;
}

/* Sends pieces until `credit` are unacknowledged, at most BLOB_MAX_PARTIAL blobs open. */
static int ux_fill(push_t *p) {
    while (p->outstanding < (uint32_t)p->c->o.credit) {
        while (p->cur < p->next && (p->jobs[p->cur].state != U_OPEN || p->jobs[p->cur].sent_all))
            p->cur++;
        if (p->cur == p->next) { /* start the next blob, if allowed */
            while (p->next < p->n && p->jobs[p->next].state == U_DONE) p->next++;
            if (p->next == p->n || p->n_open >= BLOB_MAX_PARTIAL) return 0;
            if (p->manifest_last && p->next == p->n - 1 && p->done < p->n - 1) return 0;
            int rc = ux_open(p, &p->jobs[p->next]);
            if (rc < 0) return rc;
            p->cur = p->next++;
        }
        int rc = ux_send(p, &p->jobs[p->cur]);
        if (rc < 0) return rc;
    }
    return 0;
}

/* After a silence, on a fresh socket: the blobs not yet acknowledged start again from 0. */
static void ux_reset(push_t *p) {
    for (size_t j = p->lo; j < p->next; j++)
        if (p->jobs[j].state == U_OPEN) p->jobs[j].state = U_WAIT;
    p->next = p->cur = p->lo;
    p->n_open = 0;
    p->outstanding = 0;
}

static int ux_ack(push_t *p, const Rlhf__BlobAck *a) {
    ujob_t *b = NULL;
    for (size_t j = p->lo; j < p->next && !b; j++)
        if (p->jobs[j].state == U_OPEN && a->digest && !strcmp(p->jobs[j].hex, a->digest))
            b = &p->jobs[j];
    if (!b) return 0;
    if (a->code != 0)
        return rl_fail(RL_EPROTO, "blob %s refused by %s: %s", b->hex, p->c->endpoint,
                       a->error && *a->error ? a->error : rl_strerror(a->code));
    p->outstanding--;
    if (b->sent_all && a->offset == b->last_off) {
        b->state = U_DONE;
        close(b->fd);
        b->fd = -1;
        p->n_open--;
        p->done++;
        p->c->stats.blobs_pushed++;
        p->c->stats.bytes_sent += b->size;
        while (p->lo < p->n && p->jobs[p->lo].state == U_DONE) p->lo++;
    }
    return 0;
}

/* Uploads jobs[0..n); the caller holds c->lock. */
static int cl_upload(blob_client_t *c, blob_store_t *st, ujob_t *jobs, size_t n,
                     int manifest_last) {
    push_t p = {.c = c, .st = st, .jobs = jobs, .n = n, .manifest_last = manifest_last};
    c->op++;
    c->silences = 0;
    int rc = cl_open(c);
    while (rc == 0 && p.done < n) {
        if ((rc = ux_fill(&p)) < 0) break;
        wire_msg_t m;
        rc = cl_wait(c, &m);
        if (rc < 0) break;
        if (rc == 0) {
            /* the server deletes what this socket left unfinished; start those blobs again */
            if ((rc = cl_silence(c, "push")) == 0) ux_reset(&p);
            continue;
        }
        Rlhf__Envelope *e = env_unpack(&m);
        rc = 0;
        if (e && e->body_case == RLHF__ENVELOPE__BODY_ERROR)
            rc = cl_server_error(c, e);
        else if (e && e->body_case == RLHF__ENVELOPE__BODY_BLOB_ACK &&
                 cl_ours(c, e->blob_ack->request_id))
            rc = ux_ack(&p, e->blob_ack);
        if (e) rlhf__envelope__free_unpacked(e, NULL);
        wire_msg_free(&m);
        c->silences = 0;
    }
    for (size_t j = 0; j < n; j++)
        if (jobs[j].fd >= 0) close(jobs[j].fd);
    if (rc < 0) cl_close(c);
    return rc;
}

int blob_client_push(blob_client_t *c, blob_store_t *local, const char *ref) {
    if (!blob_is_ref(ref)) return rl_fail(RL_EINVAL, "not a blob ref: \"%.80s\"", ref ? ref : "");
    const char *mhex = ref + 7;
    if (!blob_store_has(local, mhex))
        return rl_fail(RL_ENOTFOUND, "%s: not in the blob store %s", ref, local->dir);
    manifest_t m;
    int rc = st_read_manifest(local, mhex, &m);
    if (rc < 0) return rc;
    const mfile_t **files = NULL;
    const char **hex = NULL;
    size_t n = 0;
    uint8_t *have = NULL;
    ujob_t *jobs = NULL;
    rc = manifest_blobs(&m, &files, &n);
    if (rc == 0 && !(hex = malloc((n + 1) * sizeof *hex))) rc = rl_fail(RL_ENOMEM, "out of memory");
    if (rc == 0) {
        for (size_t i = 0; i < n; i++) hex[i] = files[i]->hex;
        hex[n++] = mhex; /* the manifest, last */
        for (size_t i = 0; rc == 0 && i < n; i++)
            if (!blob_store_has(local, hex[i]))
                rc = rl_fail(RL_ENOTFOUND, "%s: blob %s is not in the blob store %s", ref, hex[i],
                             local->dir);
    }
    if (rc == 0 && (!(have = calloc(n, 1)) || !(jobs = calloc(n, sizeof *jobs))))
        rc = rl_fail(RL_ENOMEM, "out of memory");
    if (rc == 0) {
        pthread_mutex_lock(&c->lock);
        rc = cl_stat(c, hex, n, have);
        size_t k = 0;
        for (size_t i = 0; rc == 0 && i < n; i++) {
            if (have[i]) {
                c->stats.blobs_present++;
                continue;
            }
            jobs[k].hex = hex[i];
            jobs[k].fd = -1;
            k++;
        }
        if (rc == 0 && k > 0) rc = cl_upload(c, local, jobs, k, !have[n - 1]);
        pthread_mutex_unlock(&c->lock);
        if (rc < 0) rl_fail_ctx(rc, "pushing %s to %s", ref, c->endpoint);
    }
    free(jobs);
    free(have);
    free(hex);
    free(files);
    manifest_free(&m);
    return rc;
}

int blob_publish(blob_client_t *c, blob_store_t *local, const char *path, char ref[BLOB_REF_LEN]) {
    int rc = blob_put_path(local, path, ref);
    return rc < 0 ? rc : blob_client_push(c, local, ref);
}

/* ---- resolve ----------------------------------------------------------------------------------
 */

static int cl_fetch_locked(blob_client_t *c, blob_store_t *st, fjob_t *jobs, size_t n) {
    pthread_mutex_lock(&c->lock);
    int rc = cl_fetch(c, st, jobs, n);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* With the ref's lock held: the manifest, the missing blobs, the tree. */
static int resolve_locked(blob_store_t *st, blob_client_t *c, const char *ref, char *out,
                          size_t cap) {
    const char *hex = ref + 7;
    const char *why = "(and no blob server to fetch it from)";
    int rc = 0;
    if (!blob_store_has(st, hex)) {
        if (!c) return rl_fail(RL_ENOTFOUND, "%s: not in the blob store %s %s", ref, st->dir, why);
        fjob_t j = {.hex = hex, .size = -1, .max_size = BLOB_MAX_MANIFEST};
        if ((rc = cl_fetch_locked(c, st, &j, 1)) < 0) return rl_fail_ctx(rc, "resolving %s", ref);
    }
    manifest_t m;
    if ((rc = st_read_manifest(st, hex, &m)) < 0) return rc;
    const mfile_t **files = NULL;
    size_t n = 0, k = 0;
    fjob_t *jobs = NULL;
    rc = manifest_blobs(&m, &files, &n);
    if (rc == 0 && !(jobs = calloc(n ? n : 1, sizeof *jobs)))
        rc = rl_fail(RL_ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (blob_store_has(st, files[i]->hex)) continue;
        if (!c) {
            rc = rl_fail(RL_ENOTFOUND, "%s: blob %s is not in the blob store %s %s", ref,
                         files[i]->hex, st->dir, why);
            break;
        }
        jobs[k].hex = files[i]->hex;
        jobs[k].size = (int64_t)files[i]->size;
        k++;
    }
    if (rc == 0 && k > 0 && (rc = cl_fetch_locked(c, st, jobs, k)) < 0)
        rl_fail_ctx(rc, "resolving %s", ref);
    if (rc == 0) {
        char tree[PATH_MAX];
        struct stat sb;
        rc = st_path(st, tree, sizeof tree, "trees", hex);
        if (rc == 0 && stat(tree, &sb) < 0) rc = st_materialise(st, hex, &m);
    }
    if (rc == 0) rc = st_tree_out(st, hex, &m, out, cap);
    free(jobs);
    free(files);
    manifest_free(&m);
    return rc;
}

int blob_resolve(blob_store_t *st, blob_client_t *c, const char *ref, char *out, size_t cap) {
    if (!blob_is_ref(ref)) return rl_fail(RL_EINVAL, "not a blob ref: \"%.80s\"", ref ? ref : "");
    const char *hex = ref + 7;
    int rc = st_tree_ready(st, hex, out, cap);
    if (rc != 0) return rc < 0 ? rc : 0;
    int lock;
    if ((rc = st_lock(st, hex, c ? c->cancel : NULL, &lock)) < 0) return rc;
    rc = st_tree_ready(st, hex, out, cap); /* made by whoever held the lock */
    if (rc == 0) rc = resolve_locked(st, c, ref, out, cap);
    close(lock);
    return rc < 0 ? rc : 0;
}

/* Hashes blobs/<hex> again: 0 when it matches, RL_EPROTO (after removing it) when not. */
static int st_verify_blob(blob_store_t *st, const char *hex, uint8_t *buf) {
    char p[PATH_MAX], got[BLOB_HEX_LEN + 1];
    int rc = st_path(st, p, sizeof p, "blobs", hex);
    int fd = rc < 0 ? -1 : open(p, O_RDONLY | O_CLOEXEC);
    if (rc == 0 && fd < 0) rc = fail_errno(errno, "open", p);
    if (rc < 0) return rc;
    crypto_hash_sha256_state sha;
    crypto_hash_sha256_init(&sha);
    for (;;) {
        ssize_t r = read(fd, buf, IO_BYTES);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) rc = fail_errno(errno, "read", p);
        if (r <= 0) break;
        crypto_hash_sha256_update(&sha, buf, (unsigned long long)r);
    }
    close(fd);
    if (rc < 0) return rc;
    sha_final_hex(&sha, got);
    if (!strcmp(got, hex)) return 0;
    unlink(p);
    return rl_fail(RL_EPROTO, "blob %s in %s: its bytes hash to %s (removed)", hex, st->dir, got);
}

int blob_store_verify(blob_store_t *st, const char *ref) {
    if (!blob_is_ref(ref)) return rl_fail(RL_EINVAL, "not a blob ref: \"%.80s\"", ref ? ref : "");
    const char *hex = ref + 7;
    uint8_t *buf = malloc(IO_BYTES);
    if (!buf) return rl_fail(RL_ENOMEM, "out of memory");
    int lock, rc = st_lock(st, hex, NULL, &lock);
    manifest_t m = {0};
    if (rc == 0) {
        rc = st_verify_blob(st, hex, buf); /* the list of files is only as good as this */
        if (rc == 0) rc = st_read_manifest(st, hex, &m);
        int first = 0;
        for (size_t i = 0; rc == 0 && i < m.n; i++) {
            int r = st_verify_blob(st, m.files[i].hex, buf);
            if (r < 0 && !first) first = r;
            if (r < 0 && r != RL_EPROTO && r != RL_ENOTFOUND) rc = r;
        }
        if (rc == 0) rc = first;
        if (rc < 0) rl_fail_ctx(rc, "verifying %s", ref);
        char tree[PATH_MAX];
        if (rc < 0 && st_path(st, tree, sizeof tree, "trees", hex) == 0) {
            int keep = rc;
            fs_remove_tree(tree); /* hard links to what was damaged, or incomplete */
            rc = keep;
        }
        close(lock);
    }
    manifest_free(&m);
    free(buf);
    return rc;
}

/* ---- server -----------------------------------------------------------------------------------
 */

typedef struct partial {
    struct partial *next;
    uint8_t rid[WIRE_MAX_RID];
    size_t rid_len;
    char hex[BLOB_HEX_LEN + 1];
    int fd;
    char *tmp;
    uint64_t total, received, synced;
    crypto_hash_sha256_state sha; /* the hasher's, until task has run */
    uint64_t task;                /* the last hashing task queued for it */
    double last_ms;
} partial_t;

struct blob_server {
    void *zctx, *sock;
    int own_ctx;
    blob_store_t *st;
    char bound[256], endpoint[320];
    pthread_t th;
    int started;
    atomic_int stop;
    atomic_int partial_timeout_ms;
    atomic_int delay_ms, corrupt_once; /* test hooks */
    partial_t *partials;               /* the server thread's own */
    int n_partials;
    hq_t hq; /* hashes uploads while the server thread writes and answers */
    _Atomic uint64_t n_requests, n_sent, n_received, n_blobs, n_bad, n_dropped, n_expired;
};

static void sv_send(blob_server_t *s, const wire_msg_t *req, Rlhf__Envelope *env,
                    zmq_msg_t *frame) {
    if (send_env(s->sock, req->rid, req->rid_len, env, frame) < 0)
        atomic_fetch_add(&s->n_dropped, 1); /* the peer retries after its silence */
}

/* A malformed request: counted and answered with an Error. */
static void sv_bad(blob_server_t *s, const wire_msg_t *req, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void sv_bad(blob_server_t *s, const wire_msg_t *req, const char *fmt, ...) {
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__Error er = RLHF__ERROR__INIT;
    er.code = RLHF__ERROR_CODE__ERROR_CODE_BAD_MESSAGE;
    er.message = text;
    env.body_case = RLHF__ENVELOPE__BODY_ERROR;
    env.error = &er;
    atomic_fetch_add(&s->n_bad, 1);
    sv_send(s, req, &env, NULL);
}

static void sv_stat(blob_server_t *s, const wire_msg_t *req, const Rlhf__BlobStat *q) {
    if (q->n_digests > BLOB_MAX_STAT) {
        sv_bad(s, req, "BlobStat: %zu digests, at most %d", q->n_digests, BLOB_MAX_STAT);
        return;
    }
    for (size_t i = 0; i < q->n_digests; i++)
        if (!hex_valid(q->digests[i])) {
            sv_bad(s, req, "BlobStat: digest %zu is not 64 lowercase hex characters", i);
            return;
        }
    protobuf_c_boolean *have = calloc(q->n_digests ? q->n_digests : 1, sizeof *have);
    if (!have) return; /* the peer retries */
    for (size_t i = 0; i < q->n_digests; i++) have[i] = blob_store_has(s->st, q->digests[i]);
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__BlobHave h = RLHF__BLOB_HAVE__INIT;
    h.request_id = q->request_id;
    h.have = have;
    h.n_have = q->n_digests;
    env.body_case = RLHF__ENVELOPE__BODY_BLOB_HAVE;
    env.blob_have = &h;
    sv_send(s, req, &env, NULL);
    free(have);
}

static void sv_data_error(blob_server_t *s, const wire_msg_t *req, const Rlhf__BlobGet *g, int code,
                          const char *error) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__BlobData d = RLHF__BLOB_DATA__INIT;
    d.request_id = g->request_id;
    d.digest = g->digest;
    d.offset = g->offset;
    d.code = code;
    d.error = (char *)error;
    env.body_case = RLHF__ENVELOPE__BODY_BLOB_DATA;
    env.blob_data = &d;
    sv_send(s, req, &env, NULL);
}

static void sv_get(blob_server_t *s, const wire_msg_t *req, const Rlhf__BlobGet *g) {
    if (!hex_valid(g->digest)) {
        sv_bad(s, req, "BlobGet: the digest is not 64 lowercase hex characters");
        return;
    }
    if (g->length == 0 || g->length > BLOB_MAX_REQUEST) {
        sv_bad(s, req, "BlobGet: length %llu (1 to %u)", (unsigned long long)g->length,
               BLOB_MAX_REQUEST);
        return;
    }
    char p[PATH_MAX], why[160];
    if (st_path(s->st, p, sizeof p, "blobs", g->digest) < 0) {
        sv_data_error(s, req, g, RL_EIO, "path too long");
        return;
    }
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0) {
        int e = errno;
        snprintf(why, sizeof why, "blob %s: %s", g->digest,
                 e == ENOENT ? "not in this store" : strerror(e));
        sv_data_error(s, req, g, e == ENOENT ? RL_ENOTFOUND : RL_EIO, why);
        if (fd >= 0) close(fd);
        return;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (g->offset > size) {
        close(fd);
        sv_bad(s, req, "BlobGet: offset %llu past the end of blob %s (%llu bytes)",
               (unsigned long long)g->offset, g->digest, (unsigned long long)size);
        return;
    }
    size_t len = (size_t)(size - g->offset < g->length ? size - g->offset : g->length);
    zmq_msg_t frame;
    if (zmq_msg_init_size(&frame, len) < 0) {
        close(fd);
        return;
    }
    ssize_t got = pread_full(fd, zmq_msg_data(&frame), len, g->offset);
    close(fd);
    if (got != (ssize_t)len) {
        zmq_msg_close(&frame);
        snprintf(why, sizeof why, "blob %s: cannot read %zu bytes at %llu", g->digest, len,
                 (unsigned long long)g->offset);
        sv_data_error(s, req, g, RL_EIO, why);
        return;
    }
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__BlobData d = RLHF__BLOB_DATA__INIT;
    Rlhf__TensorHeader th, *ths[1] = {&th};
    int64_t shape[1] = {(int64_t)len};
    wire_tensor_describe(&th, "blob", RLHF__DTYPE__DTYPE_UNSPECIFIED, shape, 1,
                         zmq_msg_data(&frame), len);
    if (len && atomic_exchange(&s->corrupt_once, 0)) /* one bit, after the CRC: a bad piece */
        ((uint8_t *)zmq_msg_data(&frame))[len / 2] ^= 0x10;
    d.request_id = g->request_id;
    d.digest = g->digest;
    d.offset = g->offset;
    d.total_size = size;
    env.body_case = RLHF__ENVELOPE__BODY_BLOB_DATA;
    env.blob_data = &d;
    env.frames = ths;
    env.n_frames = 1;
    if (send_env(s->sock, req->rid, req->rid_len, &env, &frame) < 0) {
        atomic_fetch_add(&s->n_dropped, 1);
        return;
    }
    atomic_fetch_add(&s->n_sent, len);
}

static void sv_partial_free(blob_server_t *s, partial_t **pp, int remove) {
    partial_t *p = *pp;
    *pp = p->next;
    hq_wait(&s->hq, p->task); /* its queued pieces hash into p */
    if (p->fd >= 0) close(p->fd);
    if (remove && p->tmp) unlink(p->tmp);
    free(p->tmp);
    free(p);
    s->n_partials--;
}

static partial_t **sv_partial_find(blob_server_t *s, const wire_msg_t *req, const char *hex,
                                   int *n_peer) {
    partial_t **found = NULL;
    *n_peer = 0;
    for (partial_t **pp = &s->partials; *pp; pp = &(*pp)->next) {
        partial_t *p = *pp;
        if (p->rid_len != req->rid_len || memcmp(p->rid, req->rid, req->rid_len)) continue;
        ++*n_peer;
        if (!strcmp(p->hex, hex)) found = pp;
    }
    return found;
}

static void sv_ack(blob_server_t *s, const wire_msg_t *req, const Rlhf__BlobPut *u, int code,
                   const char *error) {
    Rlhf__Envelope env = RLHF__ENVELOPE__INIT;
    Rlhf__BlobAck a = RLHF__BLOB_ACK__INIT;
    a.request_id = u->request_id;
    a.digest = u->digest;
    a.offset = u->offset;
    a.code = code;
    a.error = (char *)(error ? error : "");
    env.body_case = RLHF__ENVELOPE__BODY_BLOB_ACK;
    env.blob_ack = &a;
    sv_send(s, req, &env, NULL);
}

/* A new upload from this peer, in tmp/. NULL (answered) when refused. */
static partial_t *sv_partial_new(blob_server_t *s, const wire_msg_t *req, const Rlhf__BlobPut *u,
                                 int n_peer) {
    char why[160], tmp[PATH_MAX];
    if (n_peer >= BLOB_MAX_PARTIAL || s->n_partials >= MAX_PARTIAL) {
        snprintf(why, sizeof why, "too many unfinished uploads (at most %d per peer, %d in all)",
                 BLOB_MAX_PARTIAL, MAX_PARTIAL);
        atomic_fetch_add(&s->n_bad, 1);
        sv_ack(s, req, u, RL_ERANGE, why);
        return NULL;
    }
    partial_t *p = calloc(1, sizeof *p);
    if (!p || st_tmp(s->st, tmp, sizeof tmp, "up") < 0 || !(p->tmp = strdup(tmp)) ||
        (p->fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0444)) < 0) {
        snprintf(why, sizeof why, "cannot store an upload: %s", strerror(errno));
        if (p) free(p->tmp);
        free(p);
        sv_ack(s, req, u, RL_EIO, why);
        return NULL;
    }
    memcpy(p->rid, req->rid, req->rid_len);
    p->rid_len = req->rid_len;
    memcpy(p->hex, u->digest, sizeof p->hex);
    p->total = u->total_size;
    crypto_hash_sha256_init(&p->sha);
    p->next = s->partials;
    s->partials = p;
    s->n_partials++;
    return p;
}

/* The last piece is in: store the blob if its bytes match the digest. */
static void sv_put_finish(blob_server_t *s, const wire_msg_t *req, const Rlhf__BlobPut *u,
                          partial_t **pp) {
    partial_t *p = *pp;
    char got[BLOB_HEX_LEN + 1], why[200];
    hq_wait(&s->hq, p->task);
    sha_final_hex(&p->sha, got);
    if (strcmp(got, p->hex) != 0) {
        snprintf(why, sizeof why, "upload of %s: its %llu bytes hash to %s (discarded)", p->hex,
                 (unsigned long long)p->total, got);
        sv_partial_free(s, pp, 1);
        atomic_fetch_add(&s->n_bad, 1);
        sv_ack(s, req, u, RL_EPROTO, why);
        return;
    }
    int rc = st_commit(s->st, p->fd, p->tmp, p->hex, 1);
    p->fd = -1;
    if (rc == 0) rc = st_sync_blobs(s->st);
    sv_partial_free(s, pp, rc < 0);
    if (rc < 0) {
        sv_ack(s, req, u, rc, rl_errmsg());
        return;
    }
    atomic_fetch_add(&s->n_blobs, 1);
    sv_ack(s, req, u, 0, NULL);
}

static void sv_put(blob_server_t *s, wire_msg_t *req, const Rlhf__Envelope *e) {
    const Rlhf__BlobPut *u = e->blob_put;
    if (!hex_valid(u->digest)) {
        sv_bad(s, req, "BlobPut: the digest is not 64 lowercase hex characters");
        return;
    }
    size_t len = e->n_frames == 1 ? wire_frame_size(req, 1) : 0;
    if (e->n_frames != 1 || len > BLOB_MAX_REQUEST || u->total_size > MAX_BLOB_BYTES ||
        u->offset > u->total_size || len > u->total_size - u->offset ||
        (u->offset + len == u->total_size) != (u->last != 0)) {
        sv_bad(s, req, "BlobPut %s: a piece of %zu bytes at %llu of %llu%s", u->digest, len,
               (unsigned long long)u->offset, (unsigned long long)u->total_size,
               u->last ? " (last)" : "");
        return;
    }
    int n_peer;
    partial_t **pp = sv_partial_find(s, req, u->digest, &n_peer);
    if (u->offset == 0 && pp) { /* started again: forget the old start */
        sv_partial_free(s, pp, 1);
        pp = NULL;
        n_peer--;
    }
    if (!pp && u->offset != 0) {
        sv_bad(s, req, "BlobPut %s: a piece at %llu of an upload not started", u->digest,
               (unsigned long long)u->offset);
        return;
    }
    if (!pp) {
        if (!sv_partial_new(s, req, u, n_peer)) return;
        pp = &s->partials;
    }
    partial_t *p = *pp;
    if (u->offset != p->received || u->total_size != p->total) {
        sv_bad(s, req, "BlobPut %s: a piece at %llu of %llu bytes, %llu of %llu expected",
               u->digest, (unsigned long long)u->offset, (unsigned long long)u->total_size,
               (unsigned long long)p->received, (unsigned long long)p->total);
        sv_partial_free(s, pp, 1);
        return;
    }
    const void *data = wire_frame_data(req, 1);
    if (len && write_full(p->fd, data, len) < 0) {
        char why[160];
        snprintf(why, sizeof why, "upload of %s: %s", u->digest, strerror(errno));
        sv_partial_free(s, pp, 1);
        sv_ack(s, req, u, RL_EIO, why);
        return;
    }
    hq_task_t t = {.sha = &p->sha, .data = data, .len = len, .release = wire_frame_release};
    t.frame = wire_frame_take(req, 1); /* the bytes stay until hashed */
    p->task = hq_push(&s->hq, &t);
    p->received += len;
    p->last_ms = wire_now_ms();
    sync_some(p->fd, p->received, &p->synced);
    atomic_fetch_add(&s->n_received, len);
    if (u->last)
        sv_put_finish(s, req, u, pp);
    else
        sv_ack(s, req, u, 0, NULL);
}

static void sv_expire(blob_server_t *s) {
    double now = wire_now_ms(), limit = atomic_load(&s->partial_timeout_ms);
    for (partial_t **pp = &s->partials; *pp;) {
        if (now - (*pp)->last_ms > limit) {
            sv_partial_free(s, pp, 1);
            atomic_fetch_add(&s->n_expired, 1);
        } else {
            pp = &(*pp)->next;
        }
    }
}

static void sv_handle(blob_server_t *s, wire_msg_t *m) {
    int delay = atomic_load(&s->delay_ms);
    if (delay > 0) nap_ms(delay);
    Rlhf__Envelope *e = NULL;
    wire_bad_t bad = wire_decode(m, &e);
    if (bad != WIRE_OK) {
        sv_bad(s, m, "a %s message", wire_bad_name(bad));
        return;
    }
    switch (e->body_case) {
    case RLHF__ENVELOPE__BODY_BLOB_STAT:
        atomic_fetch_add(&s->n_requests, 1);
        sv_stat(s, m, e->blob_stat);
        break;
    case RLHF__ENVELOPE__BODY_BLOB_GET:
        atomic_fetch_add(&s->n_requests, 1);
        sv_get(s, m, e->blob_get);
        break;
    case RLHF__ENVELOPE__BODY_BLOB_PUT:
        atomic_fetch_add(&s->n_requests, 1);
        sv_put(s, m, e);
        break;
    default:
        sv_bad(s, m, "a blob server answers BlobStat, BlobGet and BlobPut only");
    }
    rlhf__envelope__free_unpacked(e, NULL);
}

static void *sv_thread(void *arg) {
    blob_server_t *s = arg;
    while (!atomic_load(&s->stop)) {
        zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) < 0 && errno != EINTR) nap_ms(10);
        for (int k = 0; k < 256; k++) { /* then look at the clock again */
            wire_msg_t m;
            int rc = wire_recv(s->sock, 1, &m, ZMQ_DONTWAIT);
            if (rc <= 0) break;
            sv_handle(s, &m);
            wire_msg_free(&m);
        }
        sv_expire(s);
    }
    return NULL;
}

blob_server_t *blob_server_start(void *zctx, blob_store_t *st, const char *bind,
                                 const char *advertise) {
    blob_server_t *s = calloc(1, sizeof *s);
    if (!s) {
        rl_fail(RL_ENOMEM, "blob server: out of memory");
        return NULL;
    }
    s->st = st;
    atomic_init(&s->partial_timeout_ms, BLOB_PARTIAL_TIMEOUT_MS);
    s->zctx = zctx;
    if (!s->zctx) {
        s->zctx = zmq_ctx_new();
        s->own_ctx = 1;
    }
    s->sock = s->zctx ? zmq_socket(s->zctx, ZMQ_ROUTER) : NULL;
    if (!s->sock) {
        rl_fail(RL_EIO, "blob server: zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    /* ROUTER_MANDATORY: an answer to a vanished peer fails at once instead of being queued;
     * MAXMSGSIZE: no frame above a piece (libzmq drops a peer sending one); the HWMs only
     * guard against a peer that ignores its credit */
    int one = 1, linger = 0, hwm = 2 * BLOB_MAX_CREDIT;
    int64_t maxmsg = (int64_t)BLOB_MAX_REQUEST + WIRE_MAX_ENVELOPE;
    zmq_setsockopt(s->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    addr_zmq_opts(s->sock);
    if (sec_server(s->zctx, s->sock, "blob") < 0) goto fail;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(s->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (!bind || zmq_bind(s->sock, bind) < 0) {
        rl_fail(RL_EIO, "blob server: bind %s: %s", bind ? bind : "(null)", zmq_strerror(errno));
        goto fail;
    }
    size_t sz = sizeof s->bound;
    zmq_getsockopt(s->sock, ZMQ_LAST_ENDPOINT, s->bound, &sz);
    /* the endpoint others dial: net/addr.h's rules, as every listener of the project */
    if (addr_normalize(s->bound, sizeof s->bound) < 0 ||
        addr_advertise(s->bound, advertise, s->endpoint, sizeof s->endpoint) < 0 ||
        hq_start(&s->hq) < 0)
        goto fail;
    if (pthread_create(&s->th, NULL, sv_thread, s) != 0) {
        rl_fail(RL_ENOMEM, "blob server: cannot start its thread");
        goto fail;
    }
    s->started = 1;
    return s;
fail:
    blob_server_stop(&s);
    return NULL;
}

const char *blob_server_endpoint(const blob_server_t *s) {
    return s->endpoint;
}

void blob_server_stats(blob_server_t *s, blob_server_stats_t *o) {
    o->requests = atomic_load(&s->n_requests);
    o->bytes_sent = atomic_load(&s->n_sent);
    o->bytes_received = atomic_load(&s->n_received);
    o->blobs_received = atomic_load(&s->n_blobs);
    o->bad_requests = atomic_load(&s->n_bad);
    o->send_dropped = atomic_load(&s->n_dropped);
    o->partials_expired = atomic_load(&s->n_expired);
}

void blob_server_set_partial_timeout(blob_server_t *s, int ms) {
    atomic_store(&s->partial_timeout_ms, ms);
}

void blob_server_set_delay(blob_server_t *s, int ms) {
    atomic_store(&s->delay_ms, ms);
}

void blob_server_corrupt_once(blob_server_t *s) {
    atomic_store(&s->corrupt_once, 1);
}

void blob_server_stop(blob_server_t **sp) {
    blob_server_t *s = sp ? *sp : NULL;
    if (!s) return;
    if (s->started) {
        atomic_store(&s->stop, 1);
        pthread_join(s->th, NULL);
    }
    while (s->partials) sv_partial_free(s, &s->partials, 1);
    hq_stop(&s->hq);
    if (s->sock) zmq_close(s->sock);
    if (s->own_ctx && s->zctx) zmq_ctx_term(s->zctx);
    free(s);
    *sp = NULL;
}

int blob_name_parse(const char *name, char ref[BLOB_REF_LEN], const char **origin) {
    size_t n = 7 + BLOB_HEX_LEN;
    if (!name || strncmp(name, "sha256:", 7) || strlen(name) < n || (name[n] && name[n] != '@'))
        return 0;
    memcpy(ref, name, n);
    ref[n] = 0;
    if (!blob_is_ref(ref)) return 0;
    if (origin) *origin = name[n] ? name + n + 1 : "";
    return 1;
}

int blob_name_format(const char *ref, const char *path, char *out, size_t cap) {
    int k =
        path && path[0] ? snprintf(out, cap, "%s@%s", ref, path) : snprintf(out, cap, "%s", ref);
    return k < 0 || (size_t)k >= cap ? rl_fail(RL_EINVAL, "artifact name too long: %.200s", path)
                                     : 0;
}
