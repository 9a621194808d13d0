/*
 * fs.c - whole-file reads and crash-safe (atomic) writes (see fs.h).
 *
 * An atomic write creates ".NAME.tmp.PID.N.RAND" next to the destination with O_EXCL (mode 0666
 * minus the umask, like any other new file - mkstemp would force 0600), streams the data into
 * it, then fsync + rename + fsync of the directory. A temporary file is removed on every failure
 * path, so an interrupted write leaves the destination untouched and no litter behind.
 *
 * `tmp != NULL` is what marks a write in progress: a zeroed fs_atomic_t has fd 0, which must
 * never be closed. A failed fs_atomic_write closes and unlinks the temporary file at once but
 * keeps the names, so a later commit reports failure instead of renaming a torn file.
 */
#include "base/fs.h"

#include <errno.h>
#include <ftw.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"

/* The code for a failed syscall on `path`: a missing file is RL_ENOTFOUND, the rest RL_EIO. */
static int fs_errno_code(int e) {
    return (e == ENOENT || e == ENOTDIR) ? RL_ENOTFOUND : (e == ENOMEM ? RL_ENOMEM : RL_EIO);
}

int fs_read_all(const char *path, char **data, size_t *len) {
    return fs_read_file(path, (size_t)-1 / 2, data, len);
}

int fs_read_file(const char *path, size_t max_len, char **data, size_t *len) {
    int fd = -1, rc;
    char *buf = NULL;
    size_t cap, n = 0;
    struct stat sb;

    if (!path || !data || !len) return rl_fail(RL_EINVAL, "fs_read_all: NULL argument");
    *data = NULL;
    *len = 0;
    do {
        fd = open(path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return rl_fail(fs_errno_code(errno), "%s: open: %s", path, strerror(errno));
    if (fstat(fd, &sb) < 0) {
        rc = rl_fail(RL_EIO, "%s: stat: %s", path, strerror(errno));
        goto fail;
    }
    if (S_ISDIR(sb.st_mode)) {
        rc = rl_fail(RL_EIO, "%s: is a directory", path);
        goto fail;
    }
    /* a device or pipe could stream forever: only regular files, and no larger than asked */
    if (!S_ISREG(sb.st_mode)) {
        rc = rl_fail(RL_EIO, "%s: not a regular file", path);
        goto fail;
    }
    if ((size_t)sb.st_size > max_len) {
        rc = rl_fail(RL_EFORMAT, "%s: %lld bytes, more than the %zu allowed", path,
                     (long long)sb.st_size, max_len);
        goto fail;
    }
    /* st_size is only a hint (0 for /proc files): read until EOF, growing as needed. */
    cap = (S_ISREG(sb.st_mode) && sb.st_size > 0 ? (size_t)sb.st_size : 4096) + 1;
    buf = malloc(cap);
    if (!buf) {
        rc = rl_fail(RL_ENOMEM, "%s: cannot allocate %zu bytes", path, cap);
        goto fail;
    }
    for (;;) {
        ssize_t r;
        if (n + 1 >= cap) {
            size_t ncap = cap * 2;
            char *nb = ncap > cap ? realloc(buf, ncap) : NULL;
            if (!nb) {
                rc = rl_fail(RL_ENOMEM, "%s: cannot allocate %zu bytes", path, ncap);
                goto fail;
            }
            buf = nb;
            cap = ncap;
        }
        r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = rl_fail(RL_EIO, "%s: read: %s", path, strerror(errno));
            goto fail;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n > max_len) { /* the file grew while we read it */
            rc = rl_fail(RL_EFORMAT, "%s: more than the %zu bytes allowed", path, max_len);
            goto fail;
        }
    }
    close(fd);
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;

fail:
    free(buf);
    if (fd >= 0) close(fd);
    return rc;
}

/* Splits `path` into a malloc'ed directory part ("." when there is none). NULL on ENOMEM. */
static char *fs_dirname(const char *path) {
    const char *slash = strrchr(path, '/');
    char *d;
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    d = malloc((size_t)(slash - path) + 1);
    if (!d) return NULL;
    memcpy(d, path, (size_t)(slash - path));
    d[slash - path] = '\0';
    return d;
}

/* fsyncs directory `dir`. Filesystems that cannot sync a directory (EINVAL) are accepted. */
static int fs_sync_dir(const char *dir) {
    int fd, r;
    do {
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return rl_fail_errno(RL_EIO, errno, "%s: open directory: %s", dir, strerror(errno));
    do {
        r = fsync(fd);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno != EINVAL && errno != ENOTSUP) {
        int e = errno;
        close(fd);
        return rl_fail_errno(RL_EIO, e, "%s: fsync directory: %s", dir, strerror(e));
    }
    close(fd);
    return 0;
}

/* Frees the names and marks the struct closed (does not touch the file). */
static void fs_atomic_reset(fs_atomic_t *w) {
    free(w->tmp);
    free(w->path);
    w->tmp = NULL;
    w->path = NULL;
    w->fd = -1;
}

int fs_atomic_open(fs_atomic_t *w, const char *path) {
    static atomic_uint counter;
    const char *base;
    size_t dirlen, tmpcap;
    int rc, attempt;

    if (!w) return rl_fail(RL_EINVAL, "fs_atomic_open: NULL state");
    w->fd = -1;
    w->tmp = NULL;
    w->path = NULL;
    if (!path || !*path) return rl_fail(RL_EINVAL, "fs_atomic_open: empty path");
    base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!*base) return rl_fail(RL_EINVAL, "%s: path names a directory, not a file", path);
    dirlen = (size_t)(base - path);

    w->path = strdup(path);
    tmpcap = strlen(path) + 64;
    w->tmp = malloc(tmpcap);
    if (!w->path || !w->tmp) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (attempt = 0; attempt < 100; attempt++) {
        struct timespec ts;
        unsigned n = atomic_fetch_add(&counter, 1u);
        clock_gettime(CLOCK_REALTIME, &ts);
        /* Hidden, so a half-written file is never mistaken for a real one by a directory scan. */
        snprintf(w->tmp, tmpcap, "%.*s.%s.tmp.%ld.%u.%lx", (int)dirlen, path, base, (long)getpid(),
                 n, (unsigned long)(ts.tv_nsec ^ ((uintptr_t)w >> 4)) & 0xffffffUL);
        do {
            w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        } while (w->fd < 0 && errno == EINTR);
        if (w->fd >= 0) return 0;
        if (errno != EEXIST) break;
    }
    rc = rl_fail_errno(fs_errno_code(errno), errno, "%s: cannot create temporary file %s: %s", path,
                       w->tmp, strerror(errno));

fail:
    fs_atomic_reset(w);
    return rc;
}

int fs_atomic_write(fs_atomic_t *w, const void *data, size_t len) {
    const char *p = data;
    if (!w || !w->tmp) return rl_fail(RL_EINVAL, "fs_atomic_write: no write in progress");
    if (w->fd < 0) return RL_EIO; /* an earlier write failed; its detail message stands */
    if (len && !data) return rl_fail(RL_EINVAL, "%s: fs_atomic_write: NULL data", w->path);
    while (len > 0) {
        ssize_t r = write(w->fd, p, len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            /* Poison the write: the data is incomplete, so commit must not rename it. */
            close(w->fd);
            w->fd = -1;
            unlink(w->tmp);
            return rl_fail_errno(RL_EIO, e, "%s: write: %s", w->path, strerror(e));
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

int fs_atomic_commit(fs_atomic_t *w) {
    char *dir = NULL;
    int rc, r;

    if (!w || !w->tmp) return rl_fail(RL_EINVAL, "fs_atomic_commit: no write in progress");
    if (w->fd < 0) {
        fs_atomic_reset(w); /* failed earlier: temporary already removed, detail already set */
        return RL_EIO;
    }
    do {
        r = fsync(w->fd);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        rc = rl_fail_errno(RL_EIO, errno, "%s: fsync: %s", w->path, strerror(errno));
        goto fail;
    }
    r = close(w->fd);
    w->fd = -1;
    if (r < 0 && errno != EINTR) {
        rc = rl_fail_errno(RL_EIO, errno, "%s: close: %s", w->path, strerror(errno));
        goto fail;
    }
    if (rename(w->tmp, w->path) < 0) {
        rc = rl_fail_errno(RL_EIO, errno, "%s: rename from %s: %s", w->path, w->tmp,
                           strerror(errno));
        goto fail;
    }
    dir = fs_dirname(w->path);
    if (!dir) {
        fs_atomic_reset(w);
        return rl_fail(RL_ENOMEM, "out of memory");
    }
    /* The file is in place now; only its durability is in question if this fails. */
    rc = fs_sync_dir(dir);
    free(dir);
    fs_atomic_reset(w);
    return rc;

fail:
    fs_atomic_abort(w);
    return rc;
}

void fs_atomic_abort(fs_atomic_t *w) {
    if (!w) return;
    if (w->tmp) {
        if (w->fd >= 0) close(w->fd);
        unlink(w->tmp);
    }
    fs_atomic_reset(w);
}

int fs_write_atomic(const char *path, const void *data, size_t len) {
    fs_atomic_t w;
    int rc = fs_atomic_open(&w, path);
    if (rc < 0) return rc;
    rc = fs_atomic_write(&w, data, len);
    if (rc < 0) {
        fs_atomic_abort(&w);
        return rc;
    }
    return fs_atomic_commit(&w);
}

/* mkdir of one component; an existing directory is success. */
static int fs_mkdir_one(const char *p, const char *full) {
    struct stat sb;
    if (mkdir(p, 0755) == 0) {
        /* the new entry is durable only once its parent directory is synced */
        char *parent = fs_dirname(p);
        int rc = parent ? fs_sync_dir(parent) : rl_fail(RL_ENOMEM, "%s: out of memory", full);
        free(parent);
        return rc;
    }
    if (errno == EEXIST) {
        if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) return 0;
        return rl_fail(RL_EIO, "%s: cannot create directory: %s exists and is not a directory",
                       full, p);
    }
    return rl_fail_errno(RL_EIO, errno, "%s: cannot create directory %s: %s", full, p,
                         strerror(errno));
}

int fs_mkdir_p(const char *path) {
    char *p, *s;
    int rc = 0;

    if (!path || !*path) return rl_fail(RL_EINVAL, "fs_mkdir_p: empty path");
    p = strdup(path);
    if (!p) return rl_fail(RL_ENOMEM, "%s: out of memory", path);
    for (s = p + 1; *s && rc == 0; s++) {
        if (*s != '/' || s[-1] == '/') continue;
        *s = '\0';
        rc = fs_mkdir_one(p, path);
        *s = '/';
    }
    if (rc == 0) rc = fs_mkdir_one(p, path);
    free(p);
    return rc;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path) == 0 || errno == ENOENT
               ? 0
               : rl_fail_errno(RL_EIO, errno, "%s: %s", path, strerror(errno));
}

int fs_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0 && errno == ENOENT) return 0;
    int rc = nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc < 0 ? (rc == -1 ? rl_fail_errno(RL_EIO, errno, "%s: %s", path, strerror(errno)) : rc)
                  : 0;
}
