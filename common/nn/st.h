/*
 * st.h - the safetensors file format: a validating reader and an atomic F32 writer.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON mapping tensor names to
 * {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional "__metadata__" string map),
 * then the data section. The reader maps the file and checks everything the format requires
 * before any tensor is used: N within bounds, well-formed JSON object, known dtypes, shape x
 * dtype size equal to the byte range, byte ranges tiling the data section exactly (no holes, no
 * overlaps, nothing left over), no duplicate names. A violation is RL_EFORMAT with a detail that
 * names the file and the problem.
 */
#ifndef RLHF_ST_H
#define RLHF_ST_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    ST_BOOL,
    ST_U8,
    ST_I8,
    ST_F8_E5M2,
    ST_F8_E4M3,
    ST_I16,
    ST_U16,
    ST_F16,
    ST_BF16,
    ST_I32,
    ST_U32,
    ST_F32,
    ST_F64,
    ST_I64,
    ST_U64,
} st_dtype_t;

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    st_dtype_t dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;        /* product of shape (1 for a scalar) */
    size_t nbytes;       /* data_offsets end - begin */
    const uint8_t *data; /* points into the mapped file; may be unaligned */
} st_tensor_t;

typedef struct {
    char *path; /* for error messages */
    void *map;  /* the mapped file (or NULL when parsed from a caller's buffer) */
    size_t map_len;
    st_tensor_t *tensors; /* in file order of their data */
    int n_tensors;
    char **meta_keys, **meta_vals; /* "__metadata__" entries */
    int n_meta;
} st_file_t;

/* The safetensors name of a dtype ("F32"), and its size in bytes (F8 types: 1). */
const char *st_dtype_name(st_dtype_t dt);
size_t st_dtype_size(st_dtype_t dt);

/* Maps and validates the file at `path`. On failure `f` is left freed. Returns 0 or RL_E*. */
int st_open(st_file_t *f, const char *path);

/*
 * Validates `len` bytes at `buf` (not copied: must outlive `f`); `label` names it in errors.
 * Used by st_open and by tests and fuzzers.
 */
int st_parse(st_file_t *f, const void *buf, size_t len, const char *label);

/* Unmaps and frees everything; safe on a zeroed or already-closed struct. */
void st_close(st_file_t *f);

/* The tensor called `name`, or NULL. */
const st_tensor_t *st_find(const st_file_t *f, const char *name);

/* The value of metadata key `key`, or NULL. */
const char *st_meta_get(const st_file_t *f, const char *key);

/*
 * Converts tensor `t` (F32, F16, BF16 or F64) to `n` floats at `out`; n must equal t->numel.
 * Returns 0, RL_EUNSUPPORTED for other dtypes, RL_EINVAL on a count mismatch.
 */
int st_tensor_to_f32(const st_file_t *f, const st_tensor_t *t, float *out, size_t n);

/* One tensor to write: F32 data, `ndim` dims (0 = scalar). */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const float *data;
} st_wtensor_t;

/*
 * Writes `n` F32 tensors, in the given order, to `path` atomically (temp file, fsync, rename),
 * with optional metadata pairs (n_meta may be 0). Names must be unique. Returns 0 or RL_E*.
 */
int st_write_f32(const char *path, const st_wtensor_t *t, int n, const char *const *meta_keys,
                 const char *const *meta_vals, int n_meta);

/* The same with the data stored as `dtype`: ST_F32, or ST_F16 / ST_BF16 with every value
 * rounded to nearest even (st_f32_to_f16, st_f32_to_bf16). RL_EINVAL for another dtype. */
int st_write(const char *path, const st_wtensor_t *t, int n, st_dtype_t dtype,
             const char *const *meta_keys, const char *const *meta_vals, int n_meta);

/* One float to IEEE binary16 / bfloat16, rounded to nearest even: subnormals exact, a value past
 * the largest finite one rounds to Inf as IEEE says, NaN stays a (quiet) NaN. */
uint16_t st_f32_to_f16(float x);
uint16_t st_f32_to_bf16(float x);

#endif
