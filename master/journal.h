/*
 * journal.h - (prefix journal_) the rlhf-master's append-only journal: every state change is one
 * record, appended before anything depends on it, made durable in groups (journal_sync), and
 * replayed in order when the master starts again.
 *
 * The journal is a directory of numbered files, one number space for both kinds:
 *   DIR/snapshot-NNNNNNNN  the live state as records, written by journal_compact
 *   DIR/segment-NNNNNNNN   records appended after the snapshot with the next lower number
 * Opening replays the newest complete snapshot, then every segment numbered above it, in order;
 * appends go to the highest segment. A compaction writes snapshot N (N above every number in use)
 * through a temporary file that is fsync'ed and renamed, starts segment N + 1, and deletes all
 * files numbered below N. A crash at any point leaves either the old snapshot and its segments or
 * the new snapshot complete.
 *
 * Every file starts with a 16-byte header: "RLHFJRN1" and its number (u64, little-endian). A
 * record is framed as
 *     [u32 length][u32 CRC-32C of the 4 length bytes then the payload][payload]
 * (little-endian) with a length of at most JOURNAL_MAX_RECORD; a larger one is corruption. A
 * snapshot ends with an end marker, a frame of length 0xFFFFFFFF whose 8-byte payload is the
 * snapshot's record count, so a snapshot that does not end with it is never used.
 *
 * Use:
 *   journal_t *j = journal_open(dir, apply_record, state);   replays everything
 *   journal_append(j, rec, len, &loc);  ...  journal_sync(j);  before acting on the records
 *   if (journal_tail_bytes(j) > limit) journal_compact(j, write_live_state, state);
 *   journal_close(&j);
 *
 * Crash test hook: if the environment variable RLHF_JOURNAL_CRASH_AFTER=N (bytes) is set when
 * journal_open is called, the append that makes this process's count of appended frame bytes
 * (headers and payloads through journal_append, counted since the process started; a forked
 * child starts again from 0) reach N writes only the first half of its frame, then the process
 * kills itself with SIGKILL. The master's torn-journal test uses it to leave a torn tail.
 * RLHF_JOURNAL_CRASH_AFTER=LO-HI draws N in [LO, HI] for each process anew (from its pid and the
 * clock), so that a master restarted with the same environment tears its journal elsewhere. With
 * RLHF_JOURNAL_CRASH_BUDGET=FILE as well, a crash happens only while FILE holds a count above 0,
 * and takes one from it first (written and fsync'ed before the torn write); a missing FILE or a 0
 * turns the hook off. A test hook only: neither variable is set outside tests.
 *
 * Single-threaded: one journal_t is used by one thread at a time.
 */
#ifndef RLHF_JOURNAL_H
#define RLHF_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

/* The largest record payload; a frame claiming more is corruption. */
#define JOURNAL_MAX_RECORD (256u << 20)

/* Where a record lies, for journal_read: (file number << 40) | byte offset of its frame. */
typedef uint64_t journal_loc_t;
typedef struct journal journal_t;

typedef struct {
    uint64_t records_replayed; /* by journal_open, snapshot records included */
    uint64_t bytes_replayed;   /* bytes of the files replayed, headers included */
    uint64_t snapshot_records; /* records in the current snapshot (replayed or last written) */
    uint64_t truncated_bytes;  /* torn/corrupt tail cut off at open */
    uint64_t appends, fsyncs, bytes_appended, compactions; /* since open; bytes are whole frames */
    double replay_ms;                                      /* journal_open's replay */
} journal_stats_t;

/* Called once per record during open (snapshot first, then the segments after it, in order).
 * rec is valid only during the call. A negative return aborts the open with that code. */
typedef int (*journal_replay_fn)(void *ctx, const uint8_t *rec, size_t len, journal_loc_t loc);

/*
 * Opens (creating) the journal in directory dir (created with its parents if missing): replays
 * the newest complete snapshot, then every segment after it, through fn (may be NULL: only
 * checks). A torn or corrupt tail (bad length, bad CRC-32C, short frame) of the LAST segment is
 * cut off - the file is truncated to the end of its last good record, and fn never sees a bad
 * record. A bad record that is not the tail (a good record follows it, or it is in an earlier
 * segment or in the snapshot) is RL_EFORMAT naming the file and the offset, never silently cut;
 * so is a missing file number between the snapshot and the last segment. Leftover temporary
 * snapshots and files numbered below the snapshot are deleted. Returns NULL with rl_errmsg() on
 * error (fn's own code and message, prefixed with where, if fn failed).
 */
journal_t *journal_open(const char *dir, journal_replay_fn fn, void *ctx);

/*
 * Appends one record of len (<= JOURNAL_MAX_RECORD) bytes, written with one write(2) at once;
 * durable only after journal_sync. *loc (may be NULL) gets its location. Returns 0, RL_EINVAL
 * (bad arguments, record too large, or called during a compaction), or RL_EIO with the errno
 * text: a failed append leaves no partial frame behind (the file is truncated back) and the
 * journal stays usable - unless even that truncation fails, after which every append is RL_EIO.
 */
int journal_append(journal_t *j, const void *rec, size_t len, journal_loc_t *loc);

/* Group commit: fdatasync if anything was appended since the last sync. Returns 0 or RL_EIO. */
int journal_sync(journal_t *j);

/* 1 if records were appended and not yet synced, else 0. */
int journal_dirty(const journal_t *j);

/*
 * Reads back the record at loc, CRC checked, into *rec (malloc'ed, the caller frees; NULL for an
 * empty record) and *len. Returns 0, RL_ENOTFOUND (its file is gone after a compaction),
 * RL_EFORMAT (no good record there) or RL_EIO.
 */
int journal_read(journal_t *j, journal_loc_t loc, uint8_t **rec, size_t *len);

/* Bytes (headers included) in the segments after the current snapshot: the caller compacts when
 * this grows. */
uint64_t journal_tail_bytes(const journal_t *j);

/*
 * Compaction: writes a new snapshot holding the live state, which write_state emits by calling
 * journal_snapshot_add for each record (each call gets that record's NEW location, so the caller
 * can update the locations it keeps; no journal_append meanwhile). A negative return from
 * write_state abandons the compaction with that code. The snapshot goes to a temporary file,
 * fsync'ed, renamed, and the directory fsync'ed; then a new empty segment starts and the older
 * segments and snapshots are deleted. Returns 0, or an error: then the old snapshot and segments
 * are kept, appends continue in the old segment, and the locations given out by
 * journal_snapshot_add during this call are void (the old ones stand).
 */
int journal_compact(journal_t *j, int (*write_state)(void *ctx, journal_t *j), void *ctx);

/* Adds one record to the snapshot being written (only inside write_state). *loc (may be NULL)
 * gets its location in the new snapshot. Returns 0, RL_EINVAL or RL_EIO. */
int journal_snapshot_add(journal_t *j, const void *rec, size_t len, journal_loc_t *loc);

/* Copies the counters into *out. */
void journal_stats(const journal_t *j, journal_stats_t *out);

/* Syncs (an error is lost: call journal_sync first to see it), closes, frees and NULLs *jp.
 * Accepts NULL and a NULL *jp. */
void journal_close(journal_t **jp);

/* Replays the journal in dir through fn as journal_open does, but only reads: nothing is
 * created, truncated or removed, and a bad tail is passed over (a master may be writing it).
 * For readers beside a running master (rlhf-master --dump-results). Returns 0 or RL_E*. */
int journal_scan(const char *dir, journal_replay_fn fn, void *ctx);

#endif
