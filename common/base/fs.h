/*
 * fs.h - whole-file reads and crash-safe (atomic) writes.
 *
 * Every output file of the system is written through fs_atomic_*: data goes to a temporary file
 * in the same directory, which is fsync'ed and renamed over the destination, and the directory
 * is fsync'ed. A crash leaves either the old file or the complete new one, never a torn one.
 */
#ifndef RLHF_FS_H
#define RLHF_FS_H

#include <stddef.h>

/*
 * Reads the whole regular file at `path` into a malloc'ed buffer (*data, with one extra NUL byte
 * after the end so text can be parsed in place) and its length (*len). The caller frees *data.
 * Returns 0, or RL_EIO / RL_ENOTFOUND / RL_ENOMEM with a detail naming the path.
 */
int fs_read_all(const char *path, char **data, size_t *len);

/*
 * fs_read_all() for regular files of at most max_len bytes: a larger file is RL_EFORMAT, a
 * device, pipe or directory RL_EIO, each with the path in the detail.
 */
int fs_read_file(const char *path, size_t max_len, char **data, size_t *len);

/* An atomic write in progress. Zero it or fill it with fs_atomic_open(). */
typedef struct {
    int fd;     /* the temporary file, -1 when closed */
    char *tmp;  /* its path */
    char *path; /* the final path */
} fs_atomic_t;

/* Creates the temporary file for `path`. Returns 0 or a negative RL_E* code. */
int fs_atomic_open(fs_atomic_t *w, const char *path);

/* Appends `len` bytes (handles short writes and EINTR). Returns 0 or RL_EIO. */
int fs_atomic_write(fs_atomic_t *w, const void *data, size_t len);

/*
 * fsyncs the temporary file, renames it over the final path, fsyncs the directory, and frees
 * the state. On failure the temporary file is removed. Returns 0 or RL_EIO.
 */
int fs_atomic_commit(fs_atomic_t *w);

/* Abandons the write: closes and removes the temporary file, frees the state. Safe to repeat. */
void fs_atomic_abort(fs_atomic_t *w);

/* fs_atomic_open + write + commit of one buffer. */
int fs_write_atomic(const char *path, const void *data, size_t len);

/* rm -r: removes the directory tree at `path` (symbolic links themselves, never what they point
 * to). A missing path is fine. Returns 0, or RL_EIO naming the first entry that could not go. */
int fs_remove_tree(const char *path);

/* mkdir -p: creates `path` and missing parents (mode 0755). Existing directories are fine. */
int fs_mkdir_p(const char *path);

#endif
