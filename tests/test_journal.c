/*
 * test_journal.c - the master's journal: records of random sizes round-tripped across reopens and
 * read back by location; a torn tail cut at every byte of the last frames; a flipped byte at the
 * tail (cut) and in the middle (refused, naming file and offset); compaction and crashes around
 * it; the SIGKILL crash hook; a failed append leaving no partial frame.
 *
 * `test_journal --bench [N]` (ctest journal_bench, label bench) appends N records of 100 bytes
 * (default 1000000), syncing every 64, and times the replay of journal_open; prints JSON.
 */
#include "journal.h"
#include "test.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/fs.h"

/* ---- helpers ------------------------------------------------------------------------------ */

/* A fresh, empty directory under the test's scratch directory (static buffer). */
static const char *fresh_dir(const char *name) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", test_tmpdir(), name);
    fs_remove_tree(dir);
    return dir;
}

static const char *path_in(const char *dir, const char *name) {
    static char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

static long long file_size(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 ? (long long)sb.st_size : -1;
}

/* Record i of length len: bytes a reader can check. */
static void rec_fill(uint8_t *buf, uint64_t i, size_t len) {
    uint64_t x = i * 0x9E3779B97F4A7C15ull + 1;
    for (size_t k = 0; k < len; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[k] = (uint8_t)x;
    }
}

typedef struct {
    uint8_t *data;
    size_t len;
    journal_loc_t loc;
} rec_t;

/* What a replay delivered. */
typedef struct {
    rec_t *r;
    size_t n, cap;
    size_t fail_at; /* when n reaches it (if non-zero), fail */
} coll_t;

static int coll_fn(void *ctx, const uint8_t *rec, size_t len, journal_loc_t loc) {
    coll_t *c = ctx;
    if (c->fail_at && c->n + 1 == c->fail_at) return rl_fail(RL_EPROTO, "record %zu refused", c->n);
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->r = realloc(c->r, c->cap * sizeof *c->r);
    }
    rec_t *r = &c->r[c->n++];
    r->data = malloc(len ? len : 1);
    if (len) memcpy(r->data, rec, len);
    r->len = len;
    r->loc = loc;
    return 0;
}

static void coll_free(coll_t *c) {
    for (size_t i = 0; i < c->n; i++) free(c->r[i].data);
    free(c->r);
    memset(c, 0, sizeof *c);
}

/* 1 if r holds record i of length len. */
static int rec_is(const rec_t *r, uint64_t i, size_t len) {
    uint8_t *want = malloc(len ? len : 1);
    rec_fill(want, i, len);
    int ok = r->len == len && (len == 0 || memcmp(r->data, want, len) == 0);
    free(want);
    return ok;
}

static int append_rec(journal_t *j, uint64_t i, size_t len, journal_loc_t *loc) {
    uint8_t *buf = malloc(len ? len : 1);
    rec_fill(buf, i, len);
    int rc = journal_append(j, buf, len, loc);
    free(buf);
    return rc;
}

/* A journal in dir with n records, record i of 30 + i bytes; their locations in locs. */
static void build(const char *dir, int n, journal_loc_t *locs) {
    journal_t *j = journal_open(dir, NULL, NULL);
    CHECK(j != NULL);
    if (!j) return;
    for (int i = 0; i < n; i++) CHECK_OK(append_rec(j, (uint64_t)i, 30 + (size_t)i, &locs[i]));
    CHECK_OK(journal_sync(j));
    journal_close(&j);
    CHECK(j == NULL);
}

static uint64_t loc_off(journal_loc_t l) {
    return l & ((UINT64_C(1) << 40) - 1);
}

static unsigned loc_no(journal_loc_t l) {
    return (unsigned)(l >> 40);
}

/* XORs byte off of file p with x. */
static void flip(const char *p, uint64_t off, uint8_t x) {
    int fd = open(p, O_RDWR);
    uint8_t b = 0;
    CHECK(fd >= 0);
    CHECK_EQ(pread(fd, &b, 1, (off_t)off), 1);
    b ^= x;
    CHECK_EQ(pwrite(fd, &b, 1, (off_t)off), 1);
    close(fd);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_round_trip(void) {
    const char *dir = fresh_dir("round");
    enum { N1 = 2000, N2 = 500 };
    static size_t lens[N1 + N2];
    static journal_loc_t locs[N1 + N2];
    uint64_t x = 12345;
    coll_t c = {0};

    journal_t *j = journal_open(dir, coll_fn, &c);
    CHECK(j != NULL);
    if (!j) return;
    CHECK_EQ(c.n, 0);
    CHECK_EQ(journal_dirty(j), 0);
    for (int i = 0; i < N1; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        lens[i] = i % 97 == 0 ? 0 : (size_t)(x % 3000);
        CHECK_OK(append_rec(j, (uint64_t)i, lens[i], &locs[i]));
        CHECK_EQ(journal_dirty(j), 1);
        if (i % 64 == 63) {
            CHECK_OK(journal_sync(j));
            CHECK_EQ(journal_dirty(j), 0);
        }
    }
    for (int i = 0; i < N1; i++) { /* read back by location, before and after the sync */
        uint8_t *r;
        size_t len;
        CHECK_OK(journal_read(j, locs[i], &r, &len));
        rec_t got = {r, len, 0};
        CHECK(rec_is(&got, (uint64_t)i, lens[i]));
        free(r);
    }
    journal_stats_t st;
    journal_stats(j, &st);
    CHECK_EQ(st.appends, N1);
    CHECK_EQ(st.fsyncs, N1 / 64);
    CHECK_EQ(journal_tail_bytes(j), file_size(path_in(dir, "segment-00000001")));
    journal_close(&j);

    j = journal_open(dir, coll_fn, &c);
    CHECK(j != NULL);
    if (!j) return;
    CHECK_EQ(c.n, N1);
    for (size_t i = 0; i < c.n && i < N1; i++) {
        CHECK(rec_is(&c.r[i], i, lens[i]));
        CHECK_EQ(c.r[i].loc, locs[i]);
    }
    for (int i = N1; i < N1 + N2; i++) {
        lens[i] = (size_t)i % 200;
        CHECK_OK(append_rec(j, (uint64_t)i, lens[i], &locs[i]));
    }
    journal_close(&j); /* syncs */
    coll_free(&c);

    j = journal_open(dir, coll_fn, &c);
    CHECK(j != NULL);
    CHECK_EQ(c.n, N1 + N2);
    for (size_t i = 0; i < c.n && i < N1 + N2; i++) {
        CHECK(rec_is(&c.r[i], i, lens[i]));
        CHECK_EQ(c.r[i].loc, locs[i]);
    }
    journal_stats(j, &st);
    CHECK_EQ(st.records_replayed, N1 + N2);
    CHECK_EQ(st.truncated_bytes, 0);
    CHECK_EQ(st.bytes_replayed, file_size(path_in(dir, "segment-00000001")));
    journal_close(&j);
    journal_close(&j); /* NULL is fine */
    journal_close(NULL);
    coll_free(&c);
}

/* Every cut inside the last three frames, and inside the file header. */
static void test_torn_tail(void) {
    const char *dir = fresh_dir("torn");
    enum { N = 12 };
    journal_loc_t locs[N];
    char *orig;
    size_t size;
    char seg[600];
    int bad = 0;

    build(dir, N, locs);
    snprintf(seg, sizeof seg, "%s", path_in(dir, "segment-00000001"));
    CHECK_OK(fs_read_all(seg, &orig, &size));
    uint64_t ends[N]; /* frame i ends at ends[i] */
    for (int i = 0; i < N; i++) ends[i] = loc_off(locs[i]) + 8 + 30 + (uint64_t)i;
    CHECK_EQ(ends[N - 1], size);

    for (uint64_t k = 0; k <= size && !bad; k++) {
        if (k >= 16 && k < loc_off(locs[N - 3])) continue;
        CHECK_OK(fs_write_atomic(seg, orig, k));
        int whole = 0;
        while (whole < N && ends[whole] <= k) whole++;
        uint64_t good = whole ? ends[whole - 1] : 16;
        coll_t c = {0};
        journal_t *j = journal_open(dir, coll_fn, &c);
        CHECK(j != NULL);
        if (!j) {
            fprintf(stderr, "cut at %llu: %s\n", (unsigned long long)k, rl_errmsg());
            bad = 1;
            break;
        }
        journal_stats_t st;
        journal_stats(j, &st);
        CHECK_EQ(c.n, whole);
        for (int i = 0; i < whole && i < (int)c.n; i++) CHECK(rec_is(&c.r[i], (uint64_t)i, 30 + i));
        CHECK_EQ(st.truncated_bytes, k >= 16 ? k - good : k);
        CHECK_EQ(file_size(seg), good);
        CHECK_OK(append_rec(j, 1000, 17, NULL)); /* appends continue after the good prefix */
        journal_close(&j);
        coll_free(&c);
        j = journal_open(dir, coll_fn, &c);
        CHECK(j != NULL);
        CHECK_EQ(c.n, whole + 1);
        if (c.n == (size_t)whole + 1) CHECK(rec_is(&c.r[whole], 1000, 17));
        journal_stats(j, &st);
        CHECK_EQ(st.truncated_bytes, 0);
        journal_close(&j);
        coll_free(&c);
        if (test__cur_failed) {
            fprintf(stderr, "  (cut at %llu of %zu)\n", (unsigned long long)k, size);
            bad = 1;
        }
    }
    free(orig);
}

/* A flipped byte in the last record: its payload, CRC or length. It is cut off. */
static void test_flip_last(void) {
    const char *dir = "";
    enum { N = 10 };
    journal_loc_t locs[N];
    const uint64_t where[] = {8 + 5, 4, 0, 1, 3};
    for (size_t w = 0; w < sizeof where / sizeof *where; w++) {
        dir = fresh_dir("flip_last");
        build(dir, N, locs);
        const char *seg = path_in(dir, "segment-00000001");
        flip(seg, loc_off(locs[N - 1]) + where[w], 0x10);
        coll_t c = {0};
        journal_t *j = journal_open(dir, coll_fn, &c);
        CHECK(j != NULL);
        if (!j) {
            fprintf(stderr, "  %s\n", rl_errmsg());
            continue;
        }
        journal_stats_t st;
        journal_stats(j, &st);
        CHECK_EQ(c.n, N - 1);
        CHECK_EQ(st.truncated_bytes, 8 + 30 + N - 1);
        CHECK_EQ(file_size(seg), loc_off(locs[N - 1]));
        journal_close(&j);
        coll_free(&c);
    }
}

/* A flipped byte in a middle record: the open fails, naming the file and the offset; nothing is
 * cut. */
static void test_flip_middle(void) {
    enum { N = 10 };
    journal_loc_t locs[N];
    const struct {
        int rec;
        uint64_t at;
    } cases[] = {{4, 8 + 7}, {4, 4}, {4, 0}, {0, 8}, {N - 2, 9}};
    for (size_t w = 0; w < sizeof cases / sizeof *cases; w++) {
        const char *dir = fresh_dir("flip_mid");
        build(dir, N, locs);
        char seg[600];
        snprintf(seg, sizeof seg, "%s", path_in(dir, "segment-00000001"));
        long long before = file_size(seg);
        flip(seg, loc_off(locs[cases[w].rec]) + cases[w].at, 0x01);
        coll_t c = {0};
        journal_t *j = journal_open(dir, coll_fn, &c);
        CHECK(j == NULL);
        journal_close(&j);
        char off[64];
        snprintf(off, sizeof off, "offset %llu", (unsigned long long)loc_off(locs[cases[w].rec]));
        CHECK(strstr(rl_errmsg(), "segment-00000001") != NULL);
        CHECK(strstr(rl_errmsg(), off) != NULL);
        if (test__cur_failed) fprintf(stderr, "  case %zu: %s\n", w, rl_errmsg());
        CHECK_EQ(file_size(seg), before);
        coll_free(&c);
    }
}

static void test_read_errors(void) {
    const char *dir = fresh_dir("read");
    journal_loc_t locs[5];
    build(dir, 5, locs);
    journal_t *j = journal_open(dir, NULL, NULL);
    CHECK(j != NULL);
    if (!j) return;
    uint8_t *r = NULL;
    size_t len;
    CHECK_ERR(journal_read(j, (journal_loc_t)99 << 40 | 16, &r, &len), RL_ENOTFOUND);
    CHECK_ERR(journal_read(j, locs[0] - 13, &r, &len), RL_EFORMAT);     /* in the header */
    CHECK_ERR(journal_read(j, locs[4] + 100000, &r, &len), RL_EFORMAT); /* past the end */
    CHECK_ERR(journal_read(j, locs[4] + 1, &r, &len), RL_EFORMAT);      /* not a frame */
    flip(path_in(dir, "segment-00000001"), loc_off(locs[2]) + 12, 0x40);
    CHECK_ERR(journal_read(j, locs[2], &r, &len), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "CRC") != NULL);
    CHECK(r == NULL);
    CHECK_OK(journal_read(j, locs[3], &r, &len));
    rec_t got = {r, len, 0};
    CHECK(rec_is(&got, 3, 33));
    free(r);
    CHECK_ERR(journal_append(j, NULL, 5, NULL), RL_EINVAL);
    CHECK_ERR(journal_append(j, "x", (size_t)JOURNAL_MAX_RECORD + 1, NULL), RL_EINVAL);
    CHECK_ERR(journal_snapshot_add(j, "x", 1, NULL), RL_EINVAL); /* outside a compaction */
    journal_close(&j);
}

/* The replay function's failure aborts the open with its code and message. */
static void test_replay_abort(void) {
    const char *dir = fresh_dir("abort");
    journal_loc_t locs[5];
    build(dir, 5, locs);
    coll_t c = {.fail_at = 3};
    CHECK(journal_open(dir, coll_fn, &c) == NULL);
    CHECK(strstr(rl_errmsg(), "record 2 refused") != NULL);
    CHECK(strstr(rl_errmsg(), "segment-00000001") != NULL);
    coll_free(&c);
    CHECK(journal_open("", NULL, NULL) == NULL);
}

/* ---- compaction: the state is the last value of each of K keys -------------------------- */

enum { K = 8 };
typedef struct {
    uint64_t val[K];
    journal_loc_t loc[K];
    int fail_after; /* write_state fails after this many records (-1: never) */
    int tried_append;
} kv_t;

static size_t kv_len(uint64_t v) {
    return 10 + (size_t)(v % 50);
}

/* A record: byte 0 the key, bytes 1..8 the value, then rec_fill(value) */
static size_t kv_rec(uint8_t *buf, int key, uint64_t v) {
    size_t len = kv_len(v);
    buf[0] = (uint8_t)key;
    memcpy(buf + 1, &v, 8);
    rec_fill(buf + 9, v, len - 9);
    return len;
}

static int kv_apply(void *ctx, const uint8_t *rec, size_t len, journal_loc_t loc) {
    kv_t *s = ctx;
    uint64_t v;
    uint8_t want[64];
    if (len < 9 || rec[0] >= K) return rl_fail(RL_EFORMAT, "bad kv record");
    memcpy(&v, rec + 1, 8);
    if (kv_rec(want, rec[0], v) != len || memcmp(want, rec, len) != 0)
        return rl_fail(RL_EFORMAT, "kv record %llu garbled", (unsigned long long)v);
    s->val[rec[0]] = v;
    s->loc[rec[0]] = loc;
    return 0;
}

static int kv_write(void *ctx, journal_t *j) {
    kv_t *s = ctx;
    uint8_t buf[64];
    s->tried_append = journal_append(j, "x", 1, NULL);
    for (int k = 0; k < K; k++) {
        if (s->fail_after >= 0 && k == s->fail_after) return rl_fail(RL_EIO, "write_state failed");
        size_t len = kv_rec(buf, k, s->val[k]);
        int rc = journal_snapshot_add(j, buf, len, &s->loc[k]);
        if (rc < 0) return rc;
    }
    return 0;
}

static void kv_put(journal_t *j, kv_t *s, uint64_t v) {
    uint8_t buf[64];
    int key = (int)(v % K);
    size_t len = kv_rec(buf, key, v);
    CHECK_OK(journal_append(j, buf, len, &s->loc[key]));
    s->val[key] = v;
}

/* Every key's location reads back its current record. */
static void kv_check_locs(journal_t *j, const kv_t *s) {
    for (int k = 0; k < K; k++) {
        uint8_t *r, want[64];
        size_t len;
        CHECK_OK(journal_read(j, s->loc[k], &r, &len));
        size_t wl = kv_rec(want, k, s->val[k]);
        CHECK(len == wl && memcmp(r, want, wl) == 0);
        free(r);
    }
}

static void test_compaction(void) {
    const char *dir0 = fresh_dir("compact");
    char dir[512];
    snprintf(dir, sizeof dir, "%s", dir0);
    kv_t s = {.fail_after = -1};
    journal_t *j = journal_open(dir, kv_apply, &s);
    CHECK(j != NULL);
    if (!j) return;
    for (uint64_t v = 1; v <= 200; v++) kv_put(j, &s, v);
    journal_loc_t old = s.loc[0];
    uint64_t before = journal_tail_bytes(j);
    CHECK(before > 200 * 18);

    CHECK_OK(journal_compact(j, kv_write, &s));
    CHECK_ERR(s.tried_append, RL_EINVAL); /* no appends while the snapshot is written */
    CHECK(!file_exists(path_in(dir, "segment-00000001")));
    CHECK(file_exists(path_in(dir, "snapshot-00000002")));
    CHECK(file_exists(path_in(dir, "segment-00000003")));
    CHECK_EQ(journal_tail_bytes(j), 16);
    CHECK_EQ(loc_no(s.loc[0]), 2);
    kv_check_locs(j, &s);
    uint8_t *r;
    size_t len;
    CHECK_ERR(journal_read(j, old, &r, &len), RL_ENOTFOUND);
    journal_stats_t st;
    journal_stats(j, &st);
    CHECK_EQ(st.compactions, 1);
    CHECK_EQ(st.snapshot_records, K);
    for (uint64_t v = 201; v <= 205; v++) kv_put(j, &s, v);
    kv_check_locs(j, &s); /* some in the snapshot, some in the segment */
    journal_close(&j);

    kv_t s2 = {.fail_after = -1};
    j = journal_open(dir, kv_apply, &s2);
    CHECK(j != NULL);
    if (!j) return;
    journal_stats(j, &st);
    CHECK_EQ(st.snapshot_records, K);
    CHECK_EQ(st.records_replayed, K + 5);
    for (int k = 0; k < K; k++) {
        CHECK_EQ(s2.val[k], s.val[k]);
        CHECK_EQ(s2.loc[k], s.loc[k]);
    }

    /* a failing write_state: the old state stays, appends go on in the old segment */
    s2.fail_after = 3;
    CHECK_ERR(journal_compact(j, kv_write, &s2), RL_EIO);
    CHECK(!file_exists(path_in(dir, "snapshot-00000004")));
    CHECK(file_exists(path_in(dir, "snapshot-00000002")));
    CHECK(file_exists(path_in(dir, "segment-00000003")));
    memcpy(s2.loc, s.loc, sizeof s.loc); /* the new locations given out are void */
    kv_put(j, &s2, 206);
    kv_check_locs(j, &s2);
    CHECK_EQ(loc_no(s2.loc[206 % K]), 3);

    /* a second compaction replaces the first snapshot */
    s2.fail_after = -1;
    CHECK_OK(journal_compact(j, kv_write, &s2));
    CHECK(!file_exists(path_in(dir, "snapshot-00000002")));
    CHECK(!file_exists(path_in(dir, "segment-00000003")));
    CHECK(file_exists(path_in(dir, "snapshot-00000004")));
    CHECK(file_exists(path_in(dir, "segment-00000005")));
    kv_put(j, &s2, 207);
    kv_check_locs(j, &s2);
    journal_close(&j);

    kv_t s3 = {.fail_after = -1};
    j = journal_open(dir, kv_apply, &s3);
    CHECK(j != NULL);
    for (int k = 0; k < K; k++) CHECK_EQ(s3.val[k], s2.val[k]);
    journal_close(&j);
}

/* Crashes around a compaction: before the rename, after it, before the old files went. */
static void test_compaction_crash(void) {
    const char *d = fresh_dir("compact_crash");
    char dir[512];
    snprintf(dir, sizeof dir, "%s", d);
    kv_t s = {.fail_after = -1};
    journal_t *j = journal_open(dir, kv_apply, &s);
    CHECK(j != NULL);
    if (!j) return;
    for (uint64_t v = 1; v <= 20; v++) kv_put(j, &s, v);
    journal_close(&j);

    /* before the rename: a temporary snapshot is left, and is ignored and removed */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s", path_in(dir, ".snapshot-00000002.tmp.123.0.abc"));
    CHECK_OK(fs_write_atomic(tmp, "RLHFJRN1\2\0\0\0\0\0\0\0junk", 20));
    kv_t s2 = {.fail_after = -1};
    j = journal_open(dir, kv_apply, &s2);
    CHECK(j != NULL);
    if (!j) return;
    CHECK(!file_exists(tmp));
    for (int k = 0; k < K; k++) CHECK_EQ(s2.val[k], s.val[k]);
    journal_close(&j);

    /* a snapshot without its end marker (never renamed by us, but say a disk lost its end) */
    CHECK_OK(fs_write_atomic(path_in(dir, "snapshot-00000002"), "RLHFJRN1\2\0\0\0\0\0\0\0", 16));
    memset(&s2, 0, sizeof s2);
    j = journal_open(dir, kv_apply, &s2);
    CHECK(j != NULL);
    if (!j) return;
    for (int k = 0; k < K; k++) CHECK_EQ(s2.val[k], s.val[k]);
    kv_put(j, &s, 21); /* appends go on in segment 1 */
    CHECK_EQ(loc_no(s.loc[21 % K]), 1);
    /* the next compaction takes a number above the broken snapshot's and removes it */
    CHECK_OK(journal_compact(j, kv_write, &s));
    CHECK(file_exists(path_in(dir, "snapshot-00000003")));
    CHECK(!file_exists(path_in(dir, "snapshot-00000002")));
    journal_close(&j);

    /* after the rename, before the new segment: the snapshot alone is the state */
    CHECK_EQ(unlink(path_in(dir, "segment-00000004")), 0);
    memset(&s2, 0, sizeof s2);
    j = journal_open(dir, kv_apply, &s2);
    CHECK(j != NULL);
    if (!j) return;
    for (int k = 0; k < K; k++) CHECK_EQ(s2.val[k], s.val[k]);
    CHECK(file_exists(path_in(dir, "segment-00000004")));
    kv_put(j, &s, 22);
    journal_close(&j);

    /* after the new segment, before the old files were deleted: they are ignored, then gone */
    char seg1[600];
    snprintf(seg1, sizeof seg1, "%s", path_in(dir, "segment-00000001"));
    CHECK_OK(fs_write_atomic(seg1, "RLHFJRN1\1\0\0\0\0\0\0\0garbage", 23));
    memset(&s2, 0, sizeof s2);
    j = journal_open(dir, kv_apply, &s2);
    CHECK(j != NULL);
    if (!j) return;
    for (int k = 0; k < K; k++) CHECK_EQ(s2.val[k], s.val[k]);
    CHECK(!file_exists(seg1));
    journal_close(&j);

    /* a lost segment between the snapshot and the last one is an error, not a silent gap */
    CHECK_OK(fs_write_atomic(path_in(dir, "segment-00000006"), "RLHFJRN1\6\0\0\0\0\0\0\0", 16));
    CHECK(journal_open(dir, kv_apply, &s2) == NULL);
    CHECK(strstr(rl_errmsg(), "segment-00000005 is missing") != NULL);
}

/* The crash hook: a child dies by SIGKILL in the middle of an append; the parent's reopen gets
 * exactly the records before the torn one. */
static void test_crash_hook(void) {
    const char *dir = fresh_dir("crash_hook");
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char n[32];
        snprintf(n, sizeof n, "%d", 7 * 108 + 10); /* reached by the 8th frame of 108 bytes */
        setenv("RLHF_JOURNAL_CRASH_AFTER", n, 1);
        journal_t *j = journal_open(dir, NULL, NULL);
        if (!j) _exit(2);
        for (int i = 0; i < 20; i++) {
            if (append_rec(j, (uint64_t)i, 100, NULL) < 0) _exit(3);
            if (journal_sync(j) < 0) _exit(4);
        }
        _exit(0);
    }
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status));
    CHECK_EQ(WIFSIGNALED(status) ? WTERMSIG(status) : -1, SIGKILL);
    CHECK_EQ(file_size(path_in(dir, "segment-00000001")), 16 + 7 * 108 + 54);
    coll_t c = {0};
    journal_t *j = journal_open(dir, coll_fn, &c);
    CHECK(j != NULL);
    if (!j) return;
    CHECK_EQ(c.n, 7);
    for (size_t i = 0; i < c.n; i++) CHECK(rec_is(&c.r[i], i, 100));
    journal_stats_t st;
    journal_stats(j, &st);
    CHECK_EQ(st.truncated_bytes, 54);
    journal_close(&j);
    coll_free(&c);
}

/* An append that fails half-way (the file size limit) leaves no partial frame; the journal goes
 * on. */
static void test_append_failure(void) {
    const char *dir = fresh_dir("append_fail");
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        journal_t *j = journal_open(dir, NULL, NULL);
        if (!j) _exit(2);
        if (append_rec(j, 0, 100, NULL) < 0) _exit(3);
        struct rlimit rl = {16 + 108 + 50, 16 + 108 + 50};
        if (setrlimit(RLIMIT_FSIZE, &rl) < 0) _exit(4);
        if (append_rec(j, 1, 100, NULL) != RL_EIO) _exit(5);
        if (!strstr(rl_errmsg(), "segment-00000001")) _exit(6);
        if (append_rec(j, 2, 30, NULL) < 0) _exit(7);
        if (journal_sync(j) < 0) _exit(8);
        journal_close(&j);
        _exit(0);
    }
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
    coll_t c = {0};
    journal_t *j = journal_open(dir, coll_fn, &c);
    CHECK(j != NULL);
    if (!j) return;
    CHECK_EQ(c.n, 2);
    if (c.n == 2) {
        CHECK(rec_is(&c.r[0], 0, 100));
        CHECK(rec_is(&c.r[1], 2, 30));
    }
    journal_stats_t st;
    journal_stats(j, &st);
    CHECK_EQ(st.truncated_bytes, 0);
    journal_close(&j);
    coll_free(&c);
}

/* ---- the benchmark ------------------------------------------------------------------------ */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int count_fn(void *ctx, const uint8_t *rec, size_t len, journal_loc_t loc) {
    (void)rec, (void)loc;
    ((uint64_t *)ctx)[0]++;
    ((uint64_t *)ctx)[1] += len;
    return 0;
}

static long bench_n = 1000000;

static void bench_replay(void) {
    const char *dir = fresh_dir("bench");
    uint8_t rec[100];
    journal_t *j = journal_open(dir, NULL, NULL);
    CHECK(j != NULL);
    if (!j) return;
    double t0 = now_s();
    for (long i = 0; i < bench_n; i++) {
        rec_fill(rec, (uint64_t)i & 1023, sizeof rec);
        memcpy(rec, &i, sizeof i);
        CHECK_OK(journal_append(j, rec, sizeof rec, NULL));
        if (i % 64 == 63) CHECK_OK(journal_sync(j));
    }
    CHECK_OK(journal_sync(j));
    double append_s = now_s() - t0;
    uint64_t bytes = journal_tail_bytes(j);
    journal_close(&j);

    uint64_t seen[2] = {0, 0};
    t0 = now_s();
    j = journal_open(dir, count_fn, seen);
    double replay_s = now_s() - t0;
    CHECK(j != NULL);
    CHECK_EQ(seen[0], bench_n);
    CHECK_EQ(seen[1], (uint64_t)bench_n * sizeof rec);
    journal_close(&j);
    printf("{\"records\":%ld,\"append_s\":%.3f,\"replay_s\":%.3f,\"replay_records_per_s\":%.0f,"
           "\"bytes\":%llu}\n",
           bench_n, append_s, replay_s, bench_n / replay_s, (unsigned long long)bytes);
    fs_remove_tree(dir);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        if (argc > 2) bench_n = strtol(argv[2], NULL, 10);
        if (bench_n <= 0 || argc > 3) {
            fprintf(stderr, "usage: %s [--bench [N]]\n", argv[0]);
            return EXIT_FAILURE;
        }
        RUN(bench_replay);
        fs_remove_tree(test_tmpdir());
        return TEST_REPORT();
    }
    if (argc > 1) {
        fprintf(stderr, "usage: %s [--bench [N]]\n", argv[0]);
        return EXIT_FAILURE;
    }
    RUN(test_round_trip);
    RUN(test_torn_tail);
    RUN(test_flip_last);
    RUN(test_flip_middle);
    RUN(test_read_errors);
    RUN(test_replay_abort);
    RUN(test_compaction);
    RUN(test_compaction_crash);
    RUN(test_crash_hook);
    RUN(test_append_failure);
    fs_remove_tree(test_tmpdir());
    return TEST_REPORT();
}
