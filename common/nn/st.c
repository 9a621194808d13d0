/*
 * st.c - the safetensors format: a validating reader and an atomic F32 writer (see st.h).
 *
 * Reading: st_open maps the file read-only and st_parse checks it completely before a single
 * tensor is handed out - header length bounds, JSON syntax (jansson, duplicate keys rejected),
 * each entry's fields and types, element count x dtype size against the byte range, and that
 * the byte ranges tile the data section exactly. Every violation has its own message, prefixed
 * with the file's label, so a user can tell a truncated download from a hand-edited header.
 * Tensors are kept sorted by data offset, which makes a file's tensors stream in disk order.
 *
 * Writing: st_write_f32 builds the header with jansson (so names are escaped correctly), pads it
 * with spaces so the data section starts 8-byte aligned, and streams the header and then each
 * tensor's data through fs_atomic_* - no copy of the whole file is ever made.
 *
 * The host must be little-endian (as the format is): data is converted with memcpy.
 */
#include "nn/st.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "st.c assumes a little-endian host (safetensors data is little-endian)"
#endif

#define ST_MAX_HEADER (100u * 1000 * 1000) /* the limit the reference implementation uses */

static const struct {
    const char *name;
    size_t size;
} st_dtypes[] = {
    [ST_BOOL] = {"BOOL", 1},       [ST_U8] = {"U8", 1},           [ST_I8] = {"I8", 1},
    [ST_F8_E5M2] = {"F8_E5M2", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_I16] = {"I16", 2},
    [ST_U16] = {"U16", 2},         [ST_F16] = {"F16", 2},         [ST_BF16] = {"BF16", 2},
    [ST_I32] = {"I32", 4},         [ST_U32] = {"U32", 4},         [ST_F32] = {"F32", 4},
    [ST_F64] = {"F64", 8},         [ST_I64] = {"I64", 8},         [ST_U64] = {"U64", 8},
};
#define ST_NDTYPES ((int)(sizeof st_dtypes / sizeof st_dtypes[0]))

const char *st_dtype_name(st_dtype_t dt) {
    return (int)dt >= 0 && (int)dt < ST_NDTYPES ? st_dtypes[dt].name : "?";
}

size_t st_dtype_size(st_dtype_t dt) {
    return (int)dt >= 0 && (int)dt < ST_NDTYPES ? st_dtypes[dt].size : 0;
}

/* The dtype called `s`, or -1. */
static int st_dtype_parse(const char *s) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(s, st_dtypes[i].name) == 0) return i;
    return -1;
}

/* "[2,3]" into buf (truncated to cap). */
static const char *st_fmt_shape(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t n = 0;
    n += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, i ? "," : "", shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

/* A tensor's byte range during validation; idx is its slot in f->tensors. */
typedef struct {
    uint64_t begin, end;
    int idx;
} st_span_t;

static int st_span_cmp(const void *a, const void *b) {
    const st_span_t *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->idx - y->idx;
}

/* A JSON integer >= 0 into *v; 0 or -1. */
static int st_json_u64(const json_t *j, uint64_t *v) {
    if (!json_is_integer(j) || json_integer_value(j) < 0) return -1;
    *v = (uint64_t)json_integer_value(j);
    return 0;
}

static int st_parse_metadata(st_file_t *f, const json_t *meta) {
    const char *key;
    json_t *val;
    size_t n = json_object_size(meta);

    if (!json_is_object(meta))
        return rl_fail(RL_EFORMAT, "%s: __metadata__ is not an object", f->path);
    f->meta_keys = calloc(n ? n : 1, sizeof *f->meta_keys);
    f->meta_vals = calloc(n ? n : 1, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals) return rl_fail(RL_ENOMEM, "%s: out of memory", f->path);
    json_object_foreach((json_t *)meta, key, val) {
        if (!json_is_string(val))
            return rl_fail(RL_EFORMAT, "%s: __metadata__ value of '%s' is not a string", f->path,
                           key);
        f->meta_keys[f->n_meta] = strdup(key);
        f->meta_vals[f->n_meta] = strdup(json_string_value(val));
        if (!f->meta_keys[f->n_meta] || !f->meta_vals[f->n_meta]) {
            free(f->meta_keys[f->n_meta]);
            free(f->meta_vals[f->n_meta]);
            return rl_fail(RL_ENOMEM, "%s: out of memory", f->path);
        }
        f->n_meta++;
    }
    return 0;
}

/* Checks one header entry and fills tensor `t` (name set by the caller) and its span. */
static int st_parse_entry(const st_file_t *f, const char *name, const json_t *e, st_tensor_t *t,
                          st_span_t *sp) {
    const json_t *jd, *js, *jo;
    uint64_t numel = 1, nbytes;
    int dt, overflow = 0;
    char sh[256];

    if (!json_is_object(e))
        return rl_fail(RL_EFORMAT, "%s: tensor '%s': entry is not an object", f->path, name);
    jd = json_object_get(e, "dtype");
    js = json_object_get(e, "shape");
    jo = json_object_get(e, "data_offsets");
    if (!jd || !js || !jo)
        return rl_fail(RL_EFORMAT, "%s: tensor '%s': missing field '%s'", f->path, name,
                       !jd   ? "dtype"
                       : !js ? "shape"
                             : "data_offsets");

    if (!json_is_string(jd))
        return rl_fail(RL_EFORMAT, "%s: tensor '%s': dtype is not a string", f->path, name);
    dt = st_dtype_parse(json_string_value(jd));
    if (dt < 0)
        return rl_fail(RL_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", f->path, name,
                       json_string_value(jd));
    t->dtype = (st_dtype_t)dt;

    if (!json_is_array(js))
        return rl_fail(RL_EFORMAT, "%s: tensor '%s': shape is not an array", f->path, name);
    if (json_array_size(js) > ST_MAX_DIMS)
        return rl_fail(RL_EFORMAT, "%s: tensor '%s': shape has %zu dimensions (at most %d)",
                       f->path, name, json_array_size(js), ST_MAX_DIMS);
    t->ndim = (int)json_array_size(js);
    for (int i = 0; i < t->ndim; i++) {
        uint64_t d;
        if (st_json_u64(json_array_get(js, (size_t)i), &d) < 0)
            return rl_fail(RL_EFORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer",
                           f->path, name, i);
        t->shape[i] = (int64_t)d;
        overflow |= __builtin_mul_overflow(numel, d, &numel);
    }
    /* A zero dimension makes the product 0 whatever overflowed before it. */
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] == 0) numel = 0, overflow = 0;
    overflow |= __builtin_mul_overflow(numel, (uint64_t)st_dtype_size(t->dtype), &nbytes);
    if (overflow || numel > SIZE_MAX || nbytes > SIZE_MAX)
        return rl_fail(RL_EFORMAT, "%s: tensor '%s': shape %s x %s overflows", f->path, name,
                       st_fmt_shape(sh, sizeof sh, t->shape, t->ndim), st_dtype_name(t->dtype));

    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return rl_fail(RL_EFORMAT, "%s: tensor '%s': data_offsets is not a [begin, end] array",
                       f->path, name);
    for (int i = 0; i < 2; i++)
        if (st_json_u64(json_array_get(jo, (size_t)i), i ? &sp->end : &sp->begin) < 0)
            return rl_fail(RL_EFORMAT,
                           "%s: tensor '%s': data_offsets[%d] is not a non-negative integer",
                           f->path, name, i);
    if (sp->begin > sp->end)
        return rl_fail(RL_EFORMAT,
                       "%s: tensor '%s': data_offsets [%" PRIu64 ",%" PRIu64 ") has begin > end",
                       f->path, name, sp->begin, sp->end);
    if (sp->end - sp->begin != nbytes)
        return rl_fail(RL_EFORMAT,
                       "%s: tensor '%s': shape %s x %s (%zu bytes) = %" PRIu64
                       " bytes but data_offsets [%" PRIu64 ",%" PRIu64 ") span %" PRIu64 " bytes",
                       f->path, name, st_fmt_shape(sh, sizeof sh, t->shape, t->ndim),
                       st_dtype_name(t->dtype), st_dtype_size(t->dtype), nbytes, sp->begin, sp->end,
                       sp->end - sp->begin);
    t->numel = (size_t)numel;
    t->nbytes = (size_t)nbytes;
    return 0;
}

/* The byte ranges, sorted, must cover [0, data_len) with no hole, overlap or leftover. */
static int st_check_tiling(const st_file_t *f, const st_span_t *sp, int n, uint64_t data_len) {
    uint64_t expect = 0;
    for (int i = 0; i < n; i++) {
        const char *name = f->tensors[sp[i].idx].name;
        if (sp[i].begin > expect)
            return rl_fail(RL_EFORMAT,
                           "%s: hole in data section: bytes [%" PRIu64 ",%" PRIu64
                           ") before tensor '%s' belong to no tensor",
                           f->path, expect, sp[i].begin, name);
        if (sp[i].begin < expect) {
            int j = i - 1; /* the tensor that ends at `expect` */
            return rl_fail(RL_EFORMAT,
                           "%s: tensor '%s' data_offsets [%" PRIu64 ",%" PRIu64
                           ") overlap tensor '%s' [%" PRIu64 ",%" PRIu64 ")",
                           f->path, name, sp[i].begin, sp[i].end, f->tensors[sp[j].idx].name,
                           sp[j].begin, sp[j].end);
        }
        expect = sp[i].end;
    }
    if (expect < data_len)
        return rl_fail(RL_EFORMAT,
                       "%s: %" PRIu64
                       " trailing bytes after the last tensor (data section is %" PRIu64
                       " bytes, tensors cover %" PRIu64 ")",
                       f->path, data_len - expect, data_len, expect);
    return 0;
}

/* Validates buf[0, len) into f (path already set). On failure f holds partial state. */
static int st_validate(st_file_t *f, const uint8_t *buf, size_t len) {
    uint64_t hlen = 0, data_len;
    json_error_t jerr;
    json_t *root = NULL, *val;
    const char *key;
    st_span_t *spans = NULL;
    st_tensor_t *sorted = NULL;
    size_t n_entries;
    int rc, n = 0;

    if (len < 8)
        return rl_fail(RL_EFORMAT, "%s: file is %zu bytes, too short for the 8-byte header length",
                       f->path, len);
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen < 2)
        return rl_fail(RL_EFORMAT, "%s: header length %" PRIu64 " is too small (at least 2)",
                       f->path, hlen);
    if (hlen > ST_MAX_HEADER)
        return rl_fail(RL_EFORMAT, "%s: header length %" PRIu64 " exceeds the %u-byte limit",
                       f->path, hlen, ST_MAX_HEADER);
    if (hlen > len - 8)
        return rl_fail(RL_EFORMAT,
                       "%s: header length %" PRIu64 " runs past the end of the %zu-byte file"
                       " (truncated?)",
                       f->path, hlen, len);
    data_len = len - 8 - hlen;

    root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            return rl_fail(RL_EFORMAT, "%s: duplicate tensor name or key in header (%s)", f->path,
                           jerr.text);
        return rl_fail(RL_EFORMAT, "%s: header is not valid JSON: %s at byte %d", f->path,
                       jerr.text, jerr.position);
    }
    if (!json_is_object(root)) {
        rc = rl_fail(RL_EFORMAT, "%s: header JSON is not an object", f->path);
        goto fail;
    }

    n_entries = json_object_size(root);
    f->tensors = calloc(n_entries ? n_entries : 1, sizeof *f->tensors);
    spans = calloc(n_entries ? n_entries : 1, sizeof *spans);
    if (!f->tensors || !spans) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", f->path);
        goto fail;
    }
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            rc = st_parse_metadata(f, val);
            if (rc < 0) goto fail;
            continue;
        }
        st_tensor_t *t = &f->tensors[n];
        if (!(t->name = strdup(key))) {
            rc = rl_fail(RL_ENOMEM, "%s: out of memory", f->path);
            goto fail;
        }
        f->n_tensors = ++n;
        spans[n - 1].idx = n - 1;
        rc = st_parse_entry(f, key, val, t, &spans[n - 1]);
        if (rc < 0) goto fail;
        if (spans[n - 1].end > data_len) {
            rc = rl_fail(RL_EFORMAT,
                         "%s: tensor '%s' data_offsets [%" PRIu64 ",%" PRIu64
                         ") extend past the end of the %" PRIu64 "-byte data section"
                         " (truncated file?)",
                         f->path, key, spans[n - 1].begin, spans[n - 1].end, data_len);
            goto fail;
        }
    }

    qsort(spans, (size_t)n, sizeof *spans, st_span_cmp);
    rc = st_check_tiling(f, spans, n, data_len);
    if (rc < 0) goto fail;

    /* Reorder by data offset and point into the data section. */
    sorted = malloc((size_t)(n ? n : 1) * sizeof *sorted);
    if (!sorted) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", f->path);
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        sorted[i] = f->tensors[spans[i].idx];
        sorted[i].data = buf + 8 + hlen + spans[i].begin;
    }
    free(f->tensors);
    f->tensors = sorted;
    free(spans);
    json_decref(root);
    return 0;

fail:
    free(spans);
    json_decref(root);
    return rc;
}

int st_parse(st_file_t *f, const void *buf, size_t len, const char *label) {
    int rc;
    if (!f) return rl_fail(RL_EINVAL, "st_parse: NULL file");
    memset(f, 0, sizeof *f);
    if (!buf && len) return rl_fail(RL_EINVAL, "st_parse: NULL buffer");
    f->path = strdup(label ? label : "(buffer)");
    if (!f->path) return rl_fail(RL_ENOMEM, "out of memory");
    rc = st_validate(f, buf ? buf : (const void *)"", len);
    if (rc < 0) st_close(f);
    return rc;
}

int st_open(st_file_t *f, const char *path) {
    struct stat sb;
    int fd = -1, rc;

    if (!f || !path) return rl_fail(RL_EINVAL, "st_open: NULL argument");
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return rl_fail(RL_ENOMEM, "%s: out of memory", path);
    do {
        fd = open(path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        rc =
            rl_fail(errno == ENOENT ? RL_ENOTFOUND : RL_EIO, "%s: open: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(fd, &sb) < 0) {
        rc = rl_fail(RL_EIO, "%s: stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        rc = rl_fail(RL_EIO, "%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        rc = rl_fail(RL_EIO, "%s: file too large to map", path);
        goto fail;
    }
    if (sb.st_size > 0) {
        void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            rc = rl_fail(RL_EIO, "%s: mmap: %s", path, strerror(errno));
            goto fail;
        }
        f->map = map;
        f->map_len = (size_t)sb.st_size;
    }
    close(fd);
    fd = -1;
    rc = st_validate(f, f->map ? f->map : (const void *)"", f->map_len);
    if (rc < 0) goto fail;
    return 0;

fail:
    if (fd >= 0) close(fd);
    st_close(f);
    return rc;
}

void st_close(st_file_t *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const st_tensor_t *st_find(const st_file_t *f, const char *name) {
    if (!f || !name) return NULL;
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *st_meta_get(const st_file_t *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

/* IEEE half to float, exactly: subnormals, infinities and NaN payloads included. */
static float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    float v;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24 */
        v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (mant << 13);
    else
        bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    memcpy(&v, &bits, sizeof v);
    return v;
}

int st_tensor_to_f32(const st_file_t *f, const st_tensor_t *t, float *out, size_t n) {
    const char *label = f && f->path ? f->path : "(safetensors)";
    if (!t || (n && !out)) return rl_fail(RL_EINVAL, "%s: st_tensor_to_f32: NULL argument", label);
    if (n != t->numel)
        return rl_fail(RL_EINVAL, "%s: tensor '%s' has %zu elements, caller expects %zu", label,
                       t->name, t->numel, n);
    switch (t->dtype) {
    case ST_F32:
        if (n) memcpy(out, t->data, n * sizeof(float));
        return 0;
    case ST_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, t->data + 2 * i, 2);
            out[i] = st_f16_to_f32(h);
        }
        return 0;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            uint32_t bits;
            memcpy(&h, t->data + 2 * i, 2);
            bits = (uint32_t)h << 16;
            memcpy(&out[i], &bits, 4);
        }
        return 0;
    case ST_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, t->data + 8 * i, 8);
            out[i] = (float)d;
        }
        return 0;
    default:
        return rl_fail(RL_EUNSUPPORTED, "%s: tensor '%s' has dtype %s, cannot convert to F32",
                       label, t->name, st_dtype_name(t->dtype));
    }
}

/*
 * Builds the header JSON into *out (malloc'ed); numel_out[i] gets tensor i's element count.
 * Returns 0, RL_EINVAL (bad tensor or metadata) or RL_ENOMEM.
 */
static int st_build_header(const char *path, const st_wtensor_t *t, int n, st_dtype_t dtype,
                           const char *const *meta_keys, const char *const *meta_vals, int n_meta,
                           size_t *numel_out, char **out) {
    json_t *root = json_object(), *meta = NULL;
    uint64_t off = 0;
    int rc;

    if (!root) goto nomem;
    if (n_meta > 0) {
        if (!(meta = json_object())) goto nomem;
        for (int i = 0; i < n_meta; i++) {
            json_t *v;
            if (!meta_keys[i] || !meta_vals[i]) {
                rc = rl_fail(RL_EINVAL, "%s: metadata entry %d is NULL", path, i);
                goto fail;
            }
            if (json_object_get(meta, meta_keys[i])) {
                rc = rl_fail(RL_EINVAL, "%s: duplicate metadata key '%s'", path, meta_keys[i]);
                goto fail;
            }
            if (!(v = json_string(meta_vals[i])) || json_object_set_new(meta, meta_keys[i], v)) {
                rc = rl_fail(RL_EINVAL, "%s: metadata '%s' is not valid UTF-8", path, meta_keys[i]);
                goto fail;
            }
        }
        rc = json_object_set_new(root, "__metadata__", meta); /* steals meta, even on error */
        meta = NULL;
        if (rc) goto nomem;
    }
    for (int i = 0; i < n; i++) {
        json_t *e, *shape, *offs;
        uint64_t numel = 1, nbytes;
        int ov = 0;
        if (!t[i].name) {
            rc = rl_fail(RL_EINVAL, "%s: tensor %d has no name", path, i);
            goto fail;
        }
        if (strcmp(t[i].name, "__metadata__") == 0 || json_object_get(root, t[i].name)) {
            rc = rl_fail(RL_EINVAL, "%s: %s tensor name '%s'", path,
                         strcmp(t[i].name, "__metadata__") == 0 ? "reserved" : "duplicate",
                         t[i].name);
            goto fail;
        }
        if (t[i].ndim < 0 || t[i].ndim > ST_MAX_DIMS) {
            rc = rl_fail(RL_EINVAL, "%s: tensor '%s' has %d dimensions (0 to %d)", path, t[i].name,
                         t[i].ndim, ST_MAX_DIMS);
            goto fail;
        }
        if (!(e = json_object()) || json_object_set_new(root, t[i].name, e)) {
            rc = rl_fail(RL_EINVAL, "%s: tensor name '%s' is not valid UTF-8", path, t[i].name);
            goto fail;
        }
        if (!(shape = json_array()) ||
            json_object_set_new(e, "dtype", json_string(st_dtype_name(dtype))) ||
            json_object_set_new(e, "shape", shape))
            goto nomem;
        for (int d = 0; d < t[i].ndim; d++) {
            if (t[i].shape[d] < 0) {
                rc = rl_fail(RL_EINVAL, "%s: tensor '%s' has negative dimension %" PRId64, path,
                             t[i].name, t[i].shape[d]);
                goto fail;
            }
            ov |= __builtin_mul_overflow(numel, (uint64_t)t[i].shape[d], &numel);
            if (json_array_append_new(shape, json_integer(t[i].shape[d]))) goto nomem;
        }
        for (int d = 0; d < t[i].ndim; d++)
            if (t[i].shape[d] == 0) numel = 0, ov = 0;
        ov |= __builtin_mul_overflow(numel, (uint64_t)st_dtype_size(dtype), &nbytes);
        ov |= __builtin_add_overflow(off, nbytes, &off);
        if (ov || off > (uint64_t)INT64_MAX || numel > SIZE_MAX) {
            rc = rl_fail(RL_EINVAL, "%s: tensor '%s' is too large", path, t[i].name);
            goto fail;
        }
        if (numel && !t[i].data) {
            rc = rl_fail(RL_EINVAL, "%s: tensor '%s' has no data", path, t[i].name);
            goto fail;
        }
        numel_out[i] = (size_t)numel;
        if (!(offs = json_array()) || json_object_set_new(e, "data_offsets", offs) ||
            json_array_append_new(offs, json_integer((json_int_t)(off - nbytes))) ||
            json_array_append_new(offs, json_integer((json_int_t)off)))
            goto nomem;
    }
    *out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!*out) goto nomem;
    json_decref(root);
    return 0;

nomem:
    rc = rl_fail(RL_ENOMEM, "%s: out of memory building the header", path);
fail:
    json_decref(meta);
    json_decref(root);
    return rc;
}

uint16_t st_f32_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    /* add just under half a bf16 ulp, plus one when the kept part is odd: a tie goes to even */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

uint16_t st_f32_to_f16(float x) {
    uint32_t u, sign;
    memcpy(&u, &x, 4);
    sign = (u >> 16) & 0x8000u;
    u &= 0x7fffffffu;
    if (u >= 0x47800000u) /* 65536 and up (Inf), or NaN */
        return (uint16_t)(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (u < 0x38800000u) {
        /* below 2^-14: a half subnormal (or 0). In [0.5, 1) a float's ulp is 2^-24, the
         * subnormals' step, so adding 0.5 rounds to it (to nearest even, as IEEE adds) */
        float f;
        uint32_t v;
        memcpy(&f, &u, 4);
        f += 0.5f;
        memcpy(&v, &f, 4);
        return (uint16_t)(sign | (v - 0x3f000000u));
    }
    /* rebias the exponent and round the 13 dropped bits to nearest even; a carry into the
     * exponent is right, up to Inf from 65520 */
    u += ((uint32_t)(15 - 127) << 23) + 0xfffu + ((u >> 13) & 1);
    return (uint16_t)(sign | (u >> 13));
}

/* Writes n floats as `dtype` (F32, F16, BF16), converting in chunks. */
static int st_write_data(fs_atomic_t *w, const float *x, size_t n, st_dtype_t dtype) {
    if (dtype == ST_F32) return fs_atomic_write(w, x, n * sizeof(float));
    uint16_t buf[4096];
    for (size_t i = 0; i < n;) {
        size_t k = n - i < 4096 ? n - i : 4096;
        for (size_t j = 0; j < k; j++)
            buf[j] = dtype == ST_BF16 ? st_f32_to_bf16(x[i + j]) : st_f32_to_f16(x[i + j]);
        /* little-endian on disk: the host is (x86-64, aarch64) */
        int rc = fs_atomic_write(w, buf, k * 2);
        if (rc < 0) return rc;
        i += k;
    }
    return 0;
}

int st_write_f32(const char *path, const st_wtensor_t *t, int n, const char *const *meta_keys,
                 const char *const *meta_vals, int n_meta) {
    return st_write(path, t, n, ST_F32, meta_keys, meta_vals, n_meta);
}

int st_write(const char *path, const st_wtensor_t *t, int n, st_dtype_t dtype,
             const char *const *meta_keys, const char *const *meta_vals, int n_meta) {
    fs_atomic_t w = {.fd = -1};
    size_t *numel = NULL, hlen, padded;
    char *hdr = NULL;
    uint8_t lenbuf[8];
    static const char spaces[8] = "        ";
    int rc;

    if (!path || n < 0 || (n > 0 && !t) || n_meta < 0 || (n_meta > 0 && (!meta_keys || !meta_vals)))
        return rl_fail(RL_EINVAL, "st_write: bad arguments");
    if (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16)
        return rl_fail(RL_EINVAL, "%s: cannot write dtype %s (F32, F16 or BF16)", path,
                       st_dtype_name(dtype));
    numel = calloc((size_t)(n ? n : 1), sizeof *numel);
    if (!numel) return rl_fail(RL_ENOMEM, "%s: out of memory", path);
    rc = st_build_header(path, t, n, dtype, meta_keys, meta_vals, n_meta, numel, &hdr);
    if (rc < 0) {
        free(numel);
        return rc;
    }
    /* Pad so the data section (and every F32 tensor in it) starts 8-byte aligned. */
    hlen = strlen(hdr);
    padded = (hlen + 7) & ~(size_t)7;
    for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)((uint64_t)padded >> (8 * i));

    rc = fs_atomic_open(&w, path);
    if (rc < 0) goto fail;
    if ((rc = fs_atomic_write(&w, lenbuf, 8)) < 0 || (rc = fs_atomic_write(&w, hdr, hlen)) < 0 ||
        (rc = fs_atomic_write(&w, spaces, padded - hlen)) < 0)
        goto fail;
    for (int i = 0; i < n; i++)
        if ((rc = st_write_data(&w, t[i].data, numel[i], dtype)) < 0) goto fail;
    rc = fs_atomic_commit(&w);
    free(hdr);
    free(numel);
    return rc;

fail:
    fs_atomic_abort(&w);
    free(hdr);
    free(numel);
    return rc;
}
