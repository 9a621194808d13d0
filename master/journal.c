/*
 * journal.c - the rlhf-master's append-only journal (see journal.h for the format and the
 * guarantees).
 *
 * Replay maps each file and walks its frames in memory, so a journal of a million records is read
 * with a few large reads, not one system call per record. A snapshot is checked whole (every
 * CRC and the end marker) before its first record is handed to the caller, so an incomplete one
 * is never half applied. Appends are one pwritev(2) of frame header and payload at the end of the
 * current segment; a failed one is truncated away.
 */
#include "journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "base/err.h"
#include "base/fs.h"

#define JOURNAL_MAGIC     "RLHFJRN1"
#define JOURNAL_HDR       16u         /* file header: magic, u64 number */
#define JOURNAL_FRAME     8u          /* frame header: u32 length, u32 CRC */
#define JOURNAL_END       0xFFFFFFFFu /* length field of a snapshot's end marker */
#define JOURNAL_NO_BITS   24          /* file numbers below 2^24 ... */
#define JOURNAL_OFF_BITS  40          /* ... offsets below 2^40 */
#define JOURNAL_OFF_MASK  ((UINT64_C(1) << JOURNAL_OFF_BITS) - 1)
#define JOURNAL_SNAP_BUF  (1u << 20) /* snapshot write buffer */
#define JOURNAL_MAX_FILES (1u << 20) /* directory entries considered */

struct journal {
    char *dir;
    int seg_fd;           /* the current segment, read-write */
    uint32_t seg_no;      /* its number */
    uint64_t seg_size;    /* its size: where the next frame goes */
    int snap_fd;          /* the current snapshot, for journal_read; -1: none open */
    uint32_t snap_no;     /* its number; 0: no snapshot */
    uint32_t next_no;     /* above every file number in use */
    uint64_t older_bytes; /* segments after the snapshot before the current one */
    int dirty;            /* appended since the last sync */
    int broken;           /* a failed append could not be truncated away */
    int readonly;         /* journal_scan: nothing is written, truncated or removed */
    /* the compaction in progress */
    int compacting;
    fs_atomic_t snap_w;
    uint32_t snap_w_no;
    uint64_t snap_w_off, snap_w_count;
    uint8_t *snap_buf;
    size_t snap_buf_len;
    int snap_w_rc;
    journal_stats_t st;
};

/* ---- little-endian fields and frames ------------------------------------------------------ */

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p) {
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* The CRC of a frame: over the 4 length bytes, then the payload. */
static uint32_t frame_crc(uint32_t len_field, const void *payload, size_t len) {
    uint8_t l[4];
    put32(l, len_field);
    return crc32c(crc32c(0, l, 4), payload, len);
}

static void frame_header(uint8_t hdr[JOURNAL_FRAME], uint32_t len_field, const void *payload,
                         size_t len) {
    put32(hdr, len_field);
    put32(hdr + 4, frame_crc(len_field, payload, len));
}

static void file_header(uint8_t hdr[JOURNAL_HDR], uint32_t no) {
    memcpy(hdr, JOURNAL_MAGIC, 8);
    put64(hdr + 8, no);
}

static journal_loc_t make_loc(uint32_t no, uint64_t off) {
    return (uint64_t)no << JOURNAL_OFF_BITS | off;
}

/* Checks the frame at off of buf (size bytes). Returns its payload length, or -1 with *why. */
static int64_t frame_check(const uint8_t *buf, uint64_t size, uint64_t off, const char **why) {
    if (size - off < JOURNAL_FRAME) {
        *why = "short frame header";
        return -1;
    }
    uint32_t len = get32(buf + off);
    if (len > JOURNAL_MAX_RECORD) {
        *why = len == JOURNAL_END ? "unexpected end marker" : "bad length";
        return -1;
    }
    if (size - off - JOURNAL_FRAME < len) {
        *why = "short frame";
        return -1;
    }
    if (frame_crc(len, buf + off + JOURNAL_FRAME, len) != get32(buf + off + 4)) {
        *why = "bad CRC-32C";
        return -1;
    }
    return len;
}

/* ---- files ------------------------------------------------------------------------------- */

static char *file_path(const char *dir, const char *kind, uint32_t no) {
    size_t n = strlen(dir) + strlen(kind) + 24;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s-%08u", dir, kind, no);
    return p;
}

/* fsyncs the journal's directory (so that created, renamed and deleted names last). */
static int sync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return rl_fail(RL_EIO, "%s: open directory: %s", dir, strerror(errno));
    if (fsync(fd) < 0 && errno != EINVAL && errno != ENOTSUP) {
        int e = errno;
        close(fd);
        return rl_fail(RL_EIO, "%s: fsync directory: %s", dir, strerror(e));
    }
    close(fd);
    return 0;
}

static int write_at(int fd, const uint8_t *p, size_t n, uint64_t off) {
    while (n > 0) {
        ssize_t r = pwrite(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = EIO;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static int read_at(int fd, uint8_t *p, size_t n, uint64_t off) {
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) return 1; /* past the end */
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

/* Creates segment no (header written, fdatasync'ed, directory synced). Returns its fd or < 0. */
static int segment_create(const char *dir, uint32_t no) {
    char *path = file_path(dir, "segment", no);
    uint8_t hdr[JOURNAL_HDR];
    int rc, fd;
    if (!path) return rl_fail(RL_ENOMEM, "%s: out of memory", dir);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = rl_fail(RL_EIO, "%s: create: %s", path, strerror(errno));
        goto fail;
    }
    file_header(hdr, no);
    if (write_at(fd, hdr, sizeof hdr, 0) < 0 || fdatasync(fd) < 0) {
        rc = rl_fail(RL_EIO, "%s: write header: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        goto fail;
    }
    rc = sync_dir(dir);
    if (rc < 0) {
        close(fd);
        unlink(path);
        goto fail;
    }
    free(path);
    return fd;
fail:
    free(path);
    return rc;
}

/* A snapshot or segment name: 1 with *no and *is_snap, else 0. */
static int parse_name(const char *name, uint32_t *no, int *is_snap) {
    const char *digits;
    if (strncmp(name, "snapshot-", 9) == 0) {
        *is_snap = 1;
        digits = name + 9;
    } else if (strncmp(name, "segment-", 8) == 0) {
        *is_snap = 0;
        digits = name + 8;
    } else {
        return 0;
    }
    if (strlen(digits) != 8 || strspn(digits, "0123456789") != 8) return 0;
    unsigned long v = strtoul(digits, NULL, 10);
    if (v == 0 || v >= (1ul << JOURNAL_NO_BITS)) return 0;
    *no = (uint32_t)v;
    return 1;
}

typedef struct {
    uint32_t no;
    int is_snap;
} journal_file_t;

static int file_cmp(const void *a, const void *b) {
    uint32_t x = ((const journal_file_t *)a)->no, y = ((const journal_file_t *)b)->no;
    return x < y ? -1 : x > y;
}

/*
 * Lists the snapshots and segments of dir sorted by number into *files (*n); with remove_tmp,
 * deletes temporary snapshots a crash left behind. Returns 0 or < 0.
 */
static int dir_scan(const char *dir, int remove_tmp, journal_file_t **files, size_t *n) {
    DIR *d = opendir(dir);
    journal_file_t *f = NULL;
    size_t len = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    if (!d) return rl_fail(RL_EIO, "%s: open directory: %s", dir, strerror(errno));
    while ((e = readdir(d)) != NULL) {
        uint32_t no;
        int is_snap;
        if (remove_tmp && strncmp(e->d_name, ".snapshot-", 10) == 0 && strstr(e->d_name, ".tmp.")) {
            if (unlinkat(dirfd(d), e->d_name, 0) < 0 && errno != ENOENT) {
                rc = rl_fail(RL_EIO, "%s/%s: remove: %s", dir, e->d_name, strerror(errno));
                break;
            }
            continue;
        }
        if (!parse_name(e->d_name, &no, &is_snap)) continue;
        if (len == cap) {
            size_t ncap = cap ? 2 * cap : 16;
            journal_file_t *nf = ncap <= JOURNAL_MAX_FILES ? realloc(f, ncap * sizeof *f) : NULL;
            if (!nf) {
                rc = rl_fail(RL_ENOMEM, "%s: too many files", dir);
                break;
            }
            f = nf;
            cap = ncap;
        }
        f[len].no = no;
        f[len].is_snap = is_snap;
        len++;
    }
    closedir(d);
    if (rc < 0) {
        free(f);
        return rc;
    }
    if (len) qsort(f, len, sizeof *f, file_cmp);
    for (size_t i = 1; i < len; i++)
        if (f[i].no == f[i - 1].no) {
            uint32_t no = f[i].no;
            free(f);
            return rl_fail(RL_EFORMAT, "%s: both snapshot-%08u and segment-%08u exist", dir, no,
                           no);
        }
    *files = f;
    *n = len;
    return 0;
}

/* Deletes the snapshots and segments numbered below `below`. Failures are left for the next
 * open to retry: those files are never replayed again. */
static void remove_below(const char *dir, uint32_t below) {
    journal_file_t *f;
    size_t n;
    if (dir_scan(dir, 0, &f, &n) < 0) return;
    for (size_t i = 0; i < n && f[i].no < below; i++) {
        char *p = file_path(dir, f[i].is_snap ? "snapshot" : "segment", f[i].no);
        if (p) unlink(p);
        free(p);
    }
    free(f);
    sync_dir(dir);
    rl_err_clear();
}

/* ---- replay ------------------------------------------------------------------------------ */

/* A file mapped for reading. */
typedef struct {
    char *path;
    int fd;
    const uint8_t *buf;
    uint64_t size;
} jmap_t;

static void jmap_close(jmap_t *m) {
    if (m->buf) munmap((void *)m->buf, m->size);
    if (m->fd >= 0) close(m->fd);
    free(m->path);
    m->buf = NULL;
    m->fd = -1;
    m->path = NULL;
}

/* Opens and maps file `no` of dir (writable fd for a segment, to truncate it). */
static int scan_only; /* journal_scan in progress: files are opened read-only */

static int jmap_open(jmap_t *m, const char *dir, int is_snap, uint32_t no) {
    struct stat sb;
    m->fd = -1;
    m->buf = NULL;
    m->size = 0;
    m->path = file_path(dir, is_snap ? "snapshot" : "segment", no);
    if (!m->path) return rl_fail(RL_ENOMEM, "%s: out of memory", dir);
    m->fd = open(m->path, (is_snap || scan_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (m->fd < 0 || fstat(m->fd, &sb) < 0) {
        int rc = rl_fail(RL_EIO, "%s: open: %s", m->path, strerror(errno));
        jmap_close(m);
        return rc;
    }
    m->size = (uint64_t)sb.st_size;
    if (m->size == 0) return 0;
    void *p = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, m->fd, 0);
    if (p == MAP_FAILED) {
        int rc = rl_fail(RL_EIO, "%s: mmap: %s", m->path, strerror(errno));
        jmap_close(m);
        return rc;
    }
    madvise(p, m->size, MADV_SEQUENTIAL);
    madvise(p, m->size, MADV_WILLNEED);
    m->buf = p;
    return 0;
}

static int header_check(const jmap_t *m, uint32_t no) {
    if (m->size < JOURNAL_HDR || memcmp(m->buf, JOURNAL_MAGIC, 8) != 0 || get64(m->buf + 8) != no)
        return rl_fail(RL_EFORMAT, "%s: bad file header (want \"%s\" and number %u)", m->path,
                       JOURNAL_MAGIC, no);
    return 0;
}

/* 1 if snapshot m is whole (header, good frames, the end marker with the right count, nothing
 * after it); else 0 with the reason in rl_errmsg(). */
static int snapshot_complete(const jmap_t *m, uint32_t no) {
    uint64_t off = JOURNAL_HDR, count = 0;
    const char *why;
    if (header_check(m, no) < 0) return 0;
    for (;;) {
        if (m->size - off >= JOURNAL_FRAME + 8 && get32(m->buf + off) == JOURNAL_END) {
            const uint8_t *p = m->buf + off + JOURNAL_FRAME;
            if (frame_crc(JOURNAL_END, p, 8) != get32(m->buf + off + 4) || get64(p) != count ||
                off + JOURNAL_FRAME + 8 != m->size) {
                rl_fail(RL_EFORMAT, "%s: bad end marker at offset %llu", m->path,
                        (unsigned long long)off);
                return 0;
            }
            return 1;
        }
        if (off == m->size) {
            rl_fail(RL_EFORMAT, "%s: no end marker", m->path);
            return 0;
        }
        int64_t len = frame_check(m->buf, m->size, off, &why);
        if (len < 0) {
            rl_fail(RL_EFORMAT, "%s: %s at offset %llu", m->path, why, (unsigned long long)off);
            return 0;
        }
        off += JOURNAL_FRAME + (uint64_t)len;
        count++;
    }
}

/* Hands the frames of m from the header up to `end` to fn (already checked). */
static int replay_frames(journal_t *j, const jmap_t *m, uint32_t no, uint64_t end,
                         journal_replay_fn fn, void *ctx) {
    uint64_t off = JOURNAL_HDR;
    while (off < end) {
        uint32_t len = get32(m->buf + off);
        if (fn) {
            int rc = fn(ctx, m->buf + off + JOURNAL_FRAME, len, make_loc(no, off));
            if (rc < 0)
                return rl_fail_ctx(rc, "%s: replaying the record at offset %llu", m->path,
                                   (unsigned long long)off);
        }
        j->st.records_replayed++;
        off += JOURNAL_FRAME + len;
    }
    return 0;
}

/* The offset of a good frame after the bad one at `bad`, or 0: is the bad frame a torn tail
 * (nothing good after it) or corruption in the middle? A real next frame starts at most
 * JOURNAL_FRAME + JOURNAL_MAX_RECORD bytes after `bad`. */
static uint64_t good_frame_after(const jmap_t *m, uint64_t bad) {
    uint64_t stop = m->size - JOURNAL_FRAME;
    const char *why;
    if (m->size < JOURNAL_FRAME || bad >= stop) return 0;
    if (stop - bad > JOURNAL_FRAME + JOURNAL_MAX_RECORD)
        stop = bad + JOURNAL_FRAME + JOURNAL_MAX_RECORD;
    for (uint64_t q = bad + 1; q <= stop; q++)
        if (frame_check(m->buf, m->size, q, &why) >= 0) return q;
    return 0;
}

/* Replays segment m; the last segment's torn tail is truncated away. Returns 0 or < 0. */
static int replay_segment(journal_t *j, jmap_t *m, uint32_t no, int is_last, journal_replay_fn fn,
                          void *ctx) {
    uint64_t off = JOURNAL_HDR;
    const char *why = NULL;
    if (m->size < JOURNAL_HDR && is_last && j->readonly) return 0;
    if (m->size < JOURNAL_HDR && is_last) { /* torn while it was being created */
        if (m->size > 0 && memcmp(m->buf, JOURNAL_MAGIC, m->size < 8 ? m->size : 8) != 0)
            return rl_fail(RL_EFORMAT, "%s: bad file header", m->path);
        uint8_t hdr[JOURNAL_HDR];
        file_header(hdr, no);
        j->st.truncated_bytes += m->size;
        if (write_at(m->fd, hdr, sizeof hdr, 0) < 0 || fdatasync(m->fd) < 0)
            return rl_fail(RL_EIO, "%s: write header: %s", m->path, strerror(errno));
        return 0;
    }
    int rc = header_check(m, no);
    if (rc < 0) return rc;
    /* find the end of the good records first, then replay them: fn never sees a bad one */
    while (off < m->size) {
        int64_t len = frame_check(m->buf, m->size, off, &why);
        if (len < 0) break;
        off += JOURNAL_FRAME + (uint64_t)len;
    }
    if (off < m->size) {
        uint64_t next = is_last ? good_frame_after(m, off) : 0;
        if (!is_last)
            return rl_fail(RL_EFORMAT, "%s: %s at offset %llu (not the last segment)", m->path, why,
                           (unsigned long long)off);
        if (next)
            return rl_fail(RL_EFORMAT,
                           "%s: %s at offset %llu, followed by a good record at offset %llu: "
                           "corruption inside the journal, not a torn tail",
                           m->path, why, (unsigned long long)off, (unsigned long long)next);
    }
    rc = replay_frames(j, m, no, off, fn, ctx);
    if (rc < 0) return rc;
    j->st.bytes_replayed += off;
    if (off < m->size && j->readonly) { /* being written, or torn: not ours to cut */
        j->st.truncated_bytes += m->size - off;
        return 0;
    }
    if (off < m->size) { /* the torn tail */
        if (ftruncate(m->fd, (off_t)off) < 0 || fdatasync(m->fd) < 0)
            return rl_fail(RL_EIO, "%s: truncate to %llu: %s", m->path, (unsigned long long)off,
                           strerror(errno));
        j->st.truncated_bytes += m->size - off;
    }
    return 0;
}

/* Picks the newest complete snapshot among files[0..n) and leaves it mapped in *m; returns its
 * number, or 0 if there is none. */
static uint32_t pick_snapshot(const char *dir, const journal_file_t *files, size_t n, jmap_t *m) {
    for (size_t i = n; i-- > 0;) {
        if (!files[i].is_snap) continue;
        if (jmap_open(m, dir, 1, files[i].no) < 0) continue;
        if (snapshot_complete(m, files[i].no)) return files[i].no;
        jmap_close(m);
    }
    rl_err_clear();
    return 0;
}

/* Replays snapshot m (known complete), then unmaps it. */
static int replay_snapshot(journal_t *j, jmap_t *m, uint32_t no, journal_replay_fn fn, void *ctx) {
    uint64_t before = j->st.records_replayed;
    int rc = replay_frames(j, m, no, m->size - JOURNAL_FRAME - 8, fn, ctx);
    j->st.snapshot_records = j->st.records_replayed - before;
    j->st.bytes_replayed += m->size;
    jmap_close(m);
    return rc;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- the crash test hook ------------------------------------------------------------------ */

static uint64_t crash_after;   /* RLHF_JOURNAL_CRASH_AFTER, read at each journal_open; 0: off */
static uint64_t crash_counted; /* frame bytes this process appended */
static pid_t crash_pid;        /* the process they were counted in */

/* N, or LO-HI: a value drawn for this process from its pid and the clock (each restarted master
 * tears its journal at another point). */
static void crash_hook_read(void) {
    const char *s = getenv("RLHF_JOURNAL_CRASH_AFTER");
    char *end;
    crash_after = s && *s ? strtoull(s, &end, 10) : 0;
    if (crash_after && *end == '-') {
        uint64_t hi = strtoull(end + 1, NULL, 10);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t x = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_nsec;
        x ^= x >> 31, x *= 0xBF58476D1CE4E5B9ull, x ^= x >> 29; /* splitmix64's finaliser */
        if (hi > crash_after) crash_after += x % (hi - crash_after + 1);
    }
}

/* RLHF_JOURNAL_CRASH_BUDGET=FILE: takes one crash from the count in FILE. Returns 1 if there was
 * one (FILE now holds one less), 0 if FILE is missing or holds 0 (the hook then stays off). */
static int crash_budget_take(void) {
    const char *path = getenv("RLHF_JOURNAL_CRASH_BUDGET");
    if (!path || !*path) return 1;
    FILE *f = fopen(path, "r+");
    long left = 0;
    if (f && fscanf(f, "%ld", &left) == 1 && left > 0) {
        rewind(f);
        fprintf(f, "%ld\n", left - 1);
        fflush(f);
        (void)fsync(fileno(f));
    }
    if (f) fclose(f);
    return left > 0;
}

/* Counts a frame of n bytes about to be written at off; at the byte count, writes half of it
 * and dies. */
static void crash_hook(int fd, const uint8_t *hdr, const void *rec, size_t len, uint64_t off) {
    if (!crash_after) return;
    if (crash_pid != getpid()) {
        crash_pid = getpid();
        crash_counted = 0;
    }
    size_t n = JOURNAL_FRAME + len, half = n / 2;
    if (crash_counted + n < crash_after) {
        crash_counted += n;
        return;
    }
    if (!crash_budget_take()) {
        crash_after = 0;
        return;
    }
    uint8_t *frame = malloc(n);
    if (frame) {
        memcpy(frame, hdr, JOURNAL_FRAME);
        if (len) memcpy(frame + JOURNAL_FRAME, rec, len);
        (void)write_at(fd, frame, half, off);
    }
    raise(SIGKILL);
}

/* ---- the API ----------------------------------------------------------------------------- */

static journal_t *open_impl(const char *dir, journal_replay_fn fn, void *ctx, int readonly);

journal_t *journal_open(const char *dir, journal_replay_fn fn, void *ctx) {
    return open_impl(dir, fn, ctx, 0);
}

int journal_scan(const char *dir, journal_replay_fn fn, void *ctx) {
    scan_only = 1;
    journal_t *j = open_impl(dir, fn, ctx, 1);
    scan_only = 0;
    if (!j) return RL_EIO;
    journal_close(&j);
    return 0;
}

static journal_t *open_impl(const char *dir, journal_replay_fn fn, void *ctx, int readonly) {
    journal_file_t *files = NULL;
    size_t n = 0;
    jmap_t m = {.fd = -1};
    journal_t *j;
    int rc;
    double t0 = now_ms();

    if (!dir || !*dir) {
        rl_fail(RL_EINVAL, "journal_open: empty directory name");
        return NULL;
    }
    crash_hook_read();
    j = calloc(1, sizeof *j);
    if (!j || !(j->dir = strdup(dir))) {
        free(j);
        rl_fail(RL_ENOMEM, "%s: out of memory", dir);
        return NULL;
    }
    j->seg_fd = -1;
    j->snap_fd = -1;
    j->snap_w.fd = -1;
    j->readonly = readonly;
    if ((!readonly && (rc = fs_mkdir_p(dir)) < 0) ||
        (rc = dir_scan(dir, !readonly, &files, &n)) < 0)
        goto fail;

    j->snap_no = pick_snapshot(dir, files, n, &m);
    j->next_no = n ? files[n - 1].no + 1 : 1;
    /* every number between the snapshot and the last file must be there: a gap is a lost
     * segment (falling back to an older snapshot whose segments were already deleted) */
    size_t first = 0;
    while (first < n && files[first].no <= j->snap_no) first++;
    for (size_t i = first; i < n; i++) {
        uint32_t want = i == first ? j->snap_no + 1 : files[i - 1].no + 1;
        if (files[i].no != want) {
            rc = rl_fail(RL_EFORMAT, "%s: segment-%08u is missing (found %s-%08u after %s %u)", dir,
                         want, files[i].is_snap ? "snapshot" : "segment", files[i].no,
                         j->snap_no ? "snapshot" : "start", j->snap_no);
            goto fail;
        }
    }
    if (j->snap_no && (rc = replay_snapshot(j, &m, j->snap_no, fn, ctx)) < 0) goto fail;

    size_t last = n;
    for (size_t i = n; i-- > first;)
        if (!files[i].is_snap) {
            last = i;
            break;
        }
    for (size_t i = first; i < n; i++) {
        if (files[i].is_snap) continue; /* an incomplete newer snapshot: never used */
        if ((rc = jmap_open(&m, dir, 0, files[i].no)) < 0) goto fail;
        rc = replay_segment(j, &m, files[i].no, i == last, fn, ctx);
        if (rc < 0) goto fail;
        if (i == last) {
            struct stat sb;
            if (fstat(m.fd, &sb) < 0) {
                rc = rl_fail(RL_EIO, "%s: stat: %s", m.path, strerror(errno));
                goto fail;
            }
            j->seg_no = files[i].no;
            j->seg_size = (uint64_t)sb.st_size;
            j->seg_fd = m.fd;
            m.fd = -1;
        } else {
            j->older_bytes += m.size;
        }
        jmap_close(&m);
    }
    if (readonly) {
        free(files);
        return j;
    }
    if (j->seg_fd < 0) { /* no segment after the snapshot: start one */
        if (j->next_no >= (1u << JOURNAL_NO_BITS)) {
            rc = rl_fail(RL_ERANGE, "%s: file numbers exhausted", dir);
            goto fail;
        }
        if ((rc = segment_create(dir, j->next_no)) < 0) goto fail;
        j->seg_fd = rc;
        j->seg_no = j->next_no++;
        j->seg_size = JOURNAL_HDR;
    }
    if (j->snap_no) {
        char *p = file_path(dir, "snapshot", j->snap_no);
        if (p) j->snap_fd = open(p, O_RDONLY | O_CLOEXEC);
        free(p);
        remove_below(dir, j->snap_no);
    }
    free(files);
    j->st.replay_ms = now_ms() - t0;
    return j;

fail:
    jmap_close(&m);
    free(files);
    journal_close(&j);
    (void)rc;
    return NULL;
}

int journal_append(journal_t *j, const void *rec, size_t len, journal_loc_t *loc) {
    uint8_t hdr[JOURNAL_FRAME];
    if (!j || (len && !rec)) return rl_fail(RL_EINVAL, "journal_append: NULL argument");
    if (j->compacting) return rl_fail(RL_EINVAL, "%s: journal_append during a compaction", j->dir);
    if (len > JOURNAL_MAX_RECORD)
        return rl_fail(RL_EINVAL, "%s: record of %zu bytes, more than the %u allowed", j->dir, len,
                       JOURNAL_MAX_RECORD);
    if (j->broken)
        return rl_fail(RL_EIO, "%s: segment-%08u: an earlier failed append left it unusable",
                       j->dir, j->seg_no);
    if (j->seg_size + JOURNAL_FRAME + len > JOURNAL_OFF_MASK)
        return rl_fail(RL_ERANGE, "%s: segment-%08u is full: compact", j->dir, j->seg_no);
    frame_header(hdr, (uint32_t)len, rec, len);
    crash_hook(j->seg_fd, hdr, rec, len, j->seg_size);

    struct iovec iov[2] = {{hdr, JOURNAL_FRAME}, {(void *)rec, len}};
    size_t left = JOURNAL_FRAME + len;
    uint64_t off = j->seg_size;
    int k = 0;
    while (left > 0) {
        ssize_t r = pwritev(j->seg_fd, iov + k, 2 - k, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            if (ftruncate(j->seg_fd, (off_t)j->seg_size) < 0) j->broken = 1;
            return rl_fail(RL_EIO, "%s/segment-%08u: append at offset %llu: %s", j->dir, j->seg_no,
                           (unsigned long long)j->seg_size, strerror(e));
        }
        off += (uint64_t)r;
        left -= (size_t)r;
        while (k < 2 && (size_t)r >= iov[k].iov_len) r -= (ssize_t)iov[k++].iov_len;
        if (k < 2) {
            iov[k].iov_base = (uint8_t *)iov[k].iov_base + r;
            iov[k].iov_len -= (size_t)r;
        }
    }
    if (loc) *loc = make_loc(j->seg_no, j->seg_size);
    j->seg_size = off;
    j->dirty = 1;
    j->st.appends++;
    j->st.bytes_appended += JOURNAL_FRAME + len;
    return 0;
}

int journal_sync(journal_t *j) {
    if (!j) return rl_fail(RL_EINVAL, "journal_sync: NULL journal");
    if (!j->dirty) return 0;
    if (fdatasync(j->seg_fd) < 0)
        return rl_fail(RL_EIO, "%s/segment-%08u: fdatasync: %s", j->dir, j->seg_no,
                       strerror(errno));
    j->dirty = 0;
    j->st.fsyncs++;
    return 0;
}

int journal_dirty(const journal_t *j) {
    return j && j->dirty;
}

int journal_read(journal_t *j, journal_loc_t loc, uint8_t **rec, size_t *len) {
    uint32_t no = (uint32_t)(loc >> JOURNAL_OFF_BITS);
    uint64_t off = loc & JOURNAL_OFF_MASK, size;
    uint8_t hdr[JOURNAL_FRAME], *buf = NULL;
    int fd, own = 0, rc;
    char *path = NULL;

    if (!j || !rec || !len) return rl_fail(RL_EINVAL, "journal_read: NULL argument");
    *rec = NULL;
    *len = 0;
    int is_snap = no == j->snap_no;
    if (no == j->seg_no) {
        fd = j->seg_fd;
        size = j->seg_size;
    } else {
        fd = is_snap ? j->snap_fd : -1;
        if (fd < 0) {
            path = file_path(j->dir, is_snap ? "snapshot" : "segment", no);
            if (!path) return rl_fail(RL_ENOMEM, "%s: out of memory", j->dir);
            fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                rc = errno == ENOENT ? rl_fail(RL_ENOTFOUND, "%s: gone (compacted)", path)
                                     : rl_fail(RL_EIO, "%s: open: %s", path, strerror(errno));
                free(path);
                return rc;
            }
            own = 1;
        }
        struct stat sb;
        if (fstat(fd, &sb) < 0) {
            rc = rl_fail(RL_EIO, "%s/%s-%08u: stat: %s", j->dir, is_snap ? "snapshot" : "segment",
                         no, strerror(errno));
            goto out;
        }
        size = (uint64_t)sb.st_size;
    }
    if (off < JOURNAL_HDR || off > size || size - off < JOURNAL_FRAME) {
        rc = rl_fail(RL_EFORMAT, "%s/%s-%08u: no record at offset %llu", j->dir,
                     is_snap ? "snapshot" : "segment", no, (unsigned long long)off);
        goto out;
    }
    if ((rc = read_at(fd, hdr, sizeof hdr, off)) != 0) goto io;
    uint32_t n = get32(hdr);
    if (n > JOURNAL_MAX_RECORD || size - off - JOURNAL_FRAME < n) {
        rc = rl_fail(RL_EFORMAT, "%s/%s-%08u: bad length at offset %llu", j->dir,
                     is_snap ? "snapshot" : "segment", no, (unsigned long long)off);
        goto out;
    }
    buf = malloc(n ? n : 1);
    if (!buf) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", j->dir);
        goto out;
    }
    if ((rc = read_at(fd, buf, n, off + JOURNAL_FRAME)) != 0) goto io;
    if (frame_crc(n, buf, n) != get32(hdr + 4)) {
        rc = rl_fail(RL_EFORMAT, "%s/%s-%08u: bad CRC-32C at offset %llu", j->dir,
                     is_snap ? "snapshot" : "segment", no, (unsigned long long)off);
        goto out;
    }
    if (n) {
        *rec = buf;
        buf = NULL;
    }
    *len = n;
    rc = 0;
    goto out;
io:
    rc = rc > 0 ? rl_fail(RL_EFORMAT, "%s/%s-%08u: short record at offset %llu", j->dir,
                          is_snap ? "snapshot" : "segment", no, (unsigned long long)off)
                : rl_fail(RL_EIO, "%s/%s-%08u: read: %s", j->dir, is_snap ? "snapshot" : "segment",
                          no, strerror(errno));
out:
    free(buf);
    free(path);
    if (own) close(fd);
    return rc;
}

uint64_t journal_tail_bytes(const journal_t *j) {
    return j ? j->older_bytes + j->seg_size : 0;
}

/* Writes out the snapshot buffer. */
static int snap_flush(journal_t *j) {
    if (j->snap_buf_len == 0) return 0;
    int rc = fs_atomic_write(&j->snap_w, j->snap_buf, j->snap_buf_len);
    j->snap_buf_len = 0;
    return rc;
}

/* Adds a frame (len_field, payload) to the snapshot being written. */
static int snap_put(journal_t *j, uint32_t len_field, const void *rec, size_t len) {
    uint8_t hdr[JOURNAL_FRAME];
    int rc;
    frame_header(hdr, len_field, rec, len);
    if (j->snap_buf_len + JOURNAL_FRAME + len > JOURNAL_SNAP_BUF && (rc = snap_flush(j)) < 0)
        return rc;
    if (JOURNAL_FRAME + len > JOURNAL_SNAP_BUF) { /* a large record goes straight out */
        if ((rc = fs_atomic_write(&j->snap_w, hdr, sizeof hdr)) < 0 ||
            (rc = fs_atomic_write(&j->snap_w, rec, len)) < 0)
            return rc;
    } else {
        memcpy(j->snap_buf + j->snap_buf_len, hdr, sizeof hdr);
        if (len) memcpy(j->snap_buf + j->snap_buf_len + JOURNAL_FRAME, rec, len);
        j->snap_buf_len += JOURNAL_FRAME + len;
    }
    j->snap_w_off += JOURNAL_FRAME + len;
    return 0;
}

int journal_snapshot_add(journal_t *j, const void *rec, size_t len, journal_loc_t *loc) {
    if (!j || (len && !rec)) return rl_fail(RL_EINVAL, "journal_snapshot_add: NULL argument");
    if (!j->compacting)
        return rl_fail(RL_EINVAL, "%s: journal_snapshot_add outside a compaction", j->dir);
    if (len > JOURNAL_MAX_RECORD)
        return rl_fail(RL_EINVAL, "%s: record of %zu bytes, more than the %u allowed", j->dir, len,
                       JOURNAL_MAX_RECORD);
    if (j->snap_w_rc < 0) return j->snap_w_rc;
    if (j->snap_w_off + JOURNAL_FRAME + len + JOURNAL_FRAME + 8 > JOURNAL_OFF_MASK)
        return j->snap_w_rc = rl_fail(RL_ERANGE, "%s: snapshot too large", j->dir);
    uint64_t off = j->snap_w_off;
    int rc = snap_put(j, (uint32_t)len, rec, len);
    if (rc < 0) return j->snap_w_rc = rc;
    j->snap_w_count++;
    if (loc) *loc = make_loc(j->snap_w_no, off);
    return 0;
}

int journal_compact(journal_t *j, int (*write_state)(void *ctx, journal_t *j), void *ctx) {
    uint8_t hdr[JOURNAL_HDR], count[8];
    char *path = NULL;
    int rc, fd;

    if (!j || !write_state) return rl_fail(RL_EINVAL, "journal_compact: NULL argument");
    if (j->compacting) return rl_fail(RL_EINVAL, "%s: compaction already in progress", j->dir);
    if (j->next_no + 1 >= (1u << JOURNAL_NO_BITS))
        return rl_fail(RL_ERANGE, "%s: file numbers exhausted", j->dir);
    uint32_t no = j->next_no;
    path = file_path(j->dir, "snapshot", no);
    j->snap_buf = malloc(JOURNAL_SNAP_BUF);
    if (!path || !j->snap_buf) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", j->dir);
        goto fail;
    }
    if ((rc = fs_atomic_open(&j->snap_w, path)) < 0) goto fail;
    file_header(hdr, no);
    memcpy(j->snap_buf, hdr, sizeof hdr);
    j->snap_buf_len = sizeof hdr;
    j->snap_w_no = no;
    j->snap_w_off = JOURNAL_HDR;
    j->snap_w_count = 0;
    j->snap_w_rc = 0;
    j->compacting = 1;
    rc = write_state(ctx, j);
    j->compacting = 0;
    if (rc >= 0 && j->snap_w_rc < 0) rc = j->snap_w_rc;
    if (rc >= 0) {
        put64(count, j->snap_w_count);
        rc = snap_put(j, JOURNAL_END, count, sizeof count);
    }
    if (rc >= 0) rc = snap_flush(j);
    if (rc < 0) {
        fs_atomic_abort(&j->snap_w);
        goto fail;
    }
    if ((rc = fs_atomic_commit(&j->snap_w)) < 0) {
        unlink(path); /* in case only the directory sync failed: keep the old state */
        goto fail;
    }
    /* the snapshot is in place: without a segment after it, appends would be lost */
    fd = segment_create(j->dir, no + 1);
    if (fd < 0) {
        rc = fd;
        if (unlink(path) < 0 || sync_dir(j->dir) < 0) j->broken = 1; /* old appends lost */
        goto fail;
    }
    close(j->seg_fd);
    if (j->snap_fd >= 0) close(j->snap_fd);
    j->seg_fd = fd;
    j->seg_no = no + 1;
    j->seg_size = JOURNAL_HDR;
    j->snap_no = no;
    j->snap_fd = open(path, O_RDONLY | O_CLOEXEC); /* -1: journal_read opens it when needed */
    j->next_no = no + 2;
    j->older_bytes = 0;
    j->dirty = 0;
    j->st.compactions++;
    j->st.snapshot_records = j->snap_w_count;
    remove_below(j->dir, no);
    free(path);
    free(j->snap_buf);
    j->snap_buf = NULL;
    return 0;

fail:
    free(path);
    free(j->snap_buf);
    j->snap_buf = NULL;
    return rc;
}

void journal_stats(const journal_t *j, journal_stats_t *out) {
    if (!out) return;
    if (j)
        *out = j->st;
    else
        memset(out, 0, sizeof *out);
}

void journal_close(journal_t **jp) {
    journal_t *j = jp ? *jp : NULL;
    if (!j) return;
    if (j->seg_fd >= 0) {
        if (j->dirty) fdatasync(j->seg_fd);
        close(j->seg_fd);
    }
    if (j->snap_fd >= 0) close(j->snap_fd);
    free(j->snap_buf);
    free(j->dir);
    free(j);
    *jp = NULL;
}
