/*
 * test_st.c - safetensors: writer/reader round trip, every malformed-header case rejected with
 * its own message, half-precision conversion both ways (writing: rounding to nearest even),
 * and file-level errors.
 */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fs.h"
#include "nn/st.h"
#include "test.h"

/*
 * A safetensors image in a malloc'ed buffer: header length (hlen, or strlen(json) when hlen is
 * UINT64_MAX), the JSON, then data_len bytes of `data` (zeros when NULL). The caller frees it.
 */
static uint8_t *mk(const char *json, uint64_t hlen, const void *data, size_t data_len,
                   size_t *len) {
    size_t jl = strlen(json);
    uint8_t *b;
    if (hlen == UINT64_MAX) hlen = jl;
    *len = 8 + jl + data_len;
    b = calloc(1, *len);
    if (!b) abort();
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(b + 8, json, jl);
    if (data) memcpy(b + 8 + jl, data, data_len);
    return b;
}

static const char *tpath(const char *name) {
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", test_tmpdir(), name);
    return buf;
}

static void test_dtype_table(void) {
    CHECK_STREQ(st_dtype_name(ST_F32), "F32");
    CHECK_STREQ(st_dtype_name(ST_BF16), "BF16");
    CHECK_STREQ(st_dtype_name(ST_F8_E4M3), "F8_E4M3");
    CHECK_EQ(st_dtype_size(ST_F32), 4);
    CHECK_EQ(st_dtype_size(ST_F16), 2);
    CHECK_EQ(st_dtype_size(ST_F64), 8);
    CHECK_EQ(st_dtype_size(ST_BOOL), 1);
    CHECK_EQ(st_dtype_size(ST_F8_E5M2), 1);
    CHECK_EQ(st_dtype_size(ST_U64), 8);
}

static void test_roundtrip(void) {
    const char *p = tpath("rt.safetensors");
    float scalar = -3.25f, vec[5], mat[12], empty_dummy = 0;
    uint32_t specials[4] = {0x7fc00001u /* NaN with payload */, 0x80000000u /* -0 */,
                            0x7f800000u /* inf */, 0x00000001u /* smallest subnormal */};
    memcpy(vec, specials, sizeof specials);
    vec[4] = 1e-3f;
    for (int i = 0; i < 12; i++) mat[i] = (float)i * 0.5f - 2.0f;
    st_wtensor_t t[] = {
        {.name = "mat", .ndim = 2, .shape = {3, 4}, .data = mat},
        {.name = "scalar", .ndim = 0, .data = &scalar},
        {.name = "vec \"quoted\" \xc3\xa9", .ndim = 1, .shape = {5}, .data = vec},
        {.name = "empty", .ndim = 2, .shape = {0, 3}, .data = &empty_dummy},
    };
    const char *keys[] = {"format", "note"}, *vals[] = {"pt", "a \"b\"\nc"};
    st_file_t f;
    float out[12];

    CHECK_OK(st_write_f32(p, t, 4, keys, vals, 2));
    CHECK_OK(st_open(&f, p));
    CHECK_EQ(f.n_tensors, 4);
    CHECK_EQ(f.n_meta, 2);
    CHECK_STREQ(st_meta_get(&f, "format"), "pt");
    CHECK_STREQ(st_meta_get(&f, "note"), "a \"b\"\nc");
    CHECK(st_meta_get(&f, "nope") == NULL);
    CHECK(f.map != NULL);
    /* The header is padded so the data section is 8-byte aligned. */
    CHECK_EQ(((const uint8_t *)f.map)[0] % 8, 0);
    CHECK_EQ((f.tensors[0].data - (const uint8_t *)f.map) % 8, 0);
    /* Consecutive data in the given order (the empty tensor sorts at its offset, the end). */
    CHECK_STREQ(f.tensors[0].name, "mat");
    CHECK_STREQ(f.tensors[1].name, "scalar");
    CHECK_STREQ(f.tensors[2].name, "vec \"quoted\" \xc3\xa9");
    CHECK_STREQ(f.tensors[3].name, "empty");
    CHECK(f.tensors[1].data == f.tensors[0].data + 48);
    CHECK(f.tensors[2].data == f.tensors[1].data + 4);

    const st_tensor_t *m = st_find(&f, "mat");
    CHECK(m != NULL);
    if (m) {
        CHECK_EQ(m->dtype, ST_F32);
        CHECK_EQ(m->ndim, 2);
        CHECK_EQ(m->shape[0], 3);
        CHECK_EQ(m->shape[1], 4);
        CHECK_EQ(m->numel, 12);
        CHECK_EQ(m->nbytes, 48);
        CHECK_OK(st_tensor_to_f32(&f, m, out, 12));
        CHECK(memcmp(out, mat, sizeof mat) == 0);
    }
    const st_tensor_t *s = st_find(&f, "scalar");
    CHECK(s != NULL);
    if (s) {
        CHECK_EQ(s->ndim, 0);
        CHECK_EQ(s->numel, 1);
        CHECK_OK(st_tensor_to_f32(&f, s, out, 1));
        CHECK(memcmp(out, &scalar, 4) == 0);
    }
    const st_tensor_t *v = st_find(&f, "vec \"quoted\" \xc3\xa9");
    CHECK(v != NULL);
    if (v) {
        CHECK_EQ(v->ndim, 1);
        CHECK_EQ(v->shape[0], 5);
        CHECK_OK(st_tensor_to_f32(&f, v, out, 5));
        CHECK(memcmp(out, vec, sizeof vec) == 0); /* bit-exact, NaN payload and -0 included */
    }
    const st_tensor_t *e = st_find(&f, "empty");
    CHECK(e != NULL);
    if (e) {
        CHECK_EQ(e->numel, 0);
        CHECK_EQ(e->nbytes, 0);
        CHECK_OK(st_tensor_to_f32(&f, e, out, 0));
    }
    CHECK(st_find(&f, "missing") == NULL);
    /* Wrong count and unconvertible dtypes are refused. */
    if (m) CHECK_ERR(st_tensor_to_f32(&f, m, out, 11), RL_EINVAL);
    st_close(&f);
    st_close(&f); /* idempotent */
    CHECK(f.tensors == NULL && f.map == NULL);
    unlink(p);
}

static void test_roundtrip_no_meta_no_tensors(void) {
    const char *p = tpath("empty.safetensors");
    st_file_t f;
    CHECK_OK(st_write_f32(p, NULL, 0, NULL, NULL, 0));
    CHECK_OK(st_open(&f, p));
    CHECK_EQ(f.n_tensors, 0);
    CHECK_EQ(f.n_meta, 0);
    CHECK_EQ(f.map_len % 8, 0);
    st_close(&f);
    unlink(p);
}

static void test_write_rejects(void) {
    const char *p = tpath("bad.safetensors");
    float x[2] = {1, 2};
    struct stat sb;
    st_wtensor_t dup[] = {{.name = "a", .ndim = 1, .shape = {2}, .data = x},
                          {.name = "a", .ndim = 1, .shape = {2}, .data = x}};
    CHECK_ERR(st_write_f32(p, dup, 2, NULL, NULL, 0), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "duplicate tensor name 'a'") != NULL);
    CHECK(stat(p, &sb) != 0); /* nothing written */

    st_wtensor_t reserved[] = {{.name = "__metadata__", .ndim = 1, .shape = {2}, .data = x}};
    CHECK_ERR(st_write_f32(p, reserved, 1, NULL, NULL, 0), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "reserved") != NULL);

    st_wtensor_t neg[] = {{.name = "n", .ndim = 1, .shape = {-2}, .data = x}};
    CHECK_ERR(st_write_f32(p, neg, 1, NULL, NULL, 0), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "negative") != NULL);

    st_wtensor_t dims[] = {{.name = "d", .ndim = ST_MAX_DIMS + 1, .data = x}};
    CHECK_ERR(st_write_f32(p, dims, 1, NULL, NULL, 0), RL_EINVAL);

    st_wtensor_t nodata[] = {{.name = "z", .ndim = 1, .shape = {2}, .data = NULL}};
    CHECK_ERR(st_write_f32(p, nodata, 1, NULL, NULL, 0), RL_EINVAL);

    const char *k[] = {"k", "k"}, *v[] = {"1", "2"};
    CHECK_ERR(st_write_f32(p, dup, 1, k, v, 2), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "duplicate metadata key") != NULL);
    CHECK(stat(p, &sb) != 0);
}

/* One malformed input, the substring only its message contains, and its message once parsed. */
typedef struct {
    const char *what;
    uint8_t *buf;
    size_t len;
    const char *expect;
    char msg[1024];
} bad_case_t;

static void test_malformed(void) {
    static const uint8_t zeros[64];
    const char *ok_json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    bad_case_t c[32];
    int n = 0;
    size_t full_len;
    uint8_t *full = mk(ok_json, UINT64_MAX, zeros, 8, &full_len);

#define BAD(w, b, l, e)                                                                            \
    do {                                                                                           \
        c[n].what = (w);                                                                           \
        c[n].buf = (b);                                                                            \
        c[n].len = (l);                                                                            \
        c[n].expect = (e);                                                                         \
        n++;                                                                                       \
    } while (0)
#define BADJ(w, json, dlen, e)                                                                     \
    do {                                                                                           \
        size_t l_;                                                                                 \
        uint8_t *b_ = mk((json), UINT64_MAX, zeros, (dlen), &l_);                                  \
        BAD(w, b_, l_, e);                                                                         \
    } while (0)

    {
        size_t l;
        uint8_t *b = mk(ok_json, 200u * 1000 * 1000, zeros, 8, &l);
        BAD("header length too large", b, l, "byte limit");
        b = mk("{}", 1, NULL, 0, &l);
        BAD("header length too small", b, l, "too small");
        b = malloc(full_len);
        memcpy(b, full, full_len);
        BAD("truncated inside the header", b, 8 + strlen(ok_json) - 5, "runs past the end");
        b = malloc(5);
        memcpy(b, full, 5);
        BAD("truncated before the header length", b, 5, "too short");
    }
    BADJ("non-JSON", "{nope}", 0, "not valid JSON");
    BADJ("JSON not an object", "[1, 2]", 0, "header JSON is not an object");
    BADJ("entry not an object", "{\"a\": 5}", 0, "entry is not an object");
    BADJ("unknown dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
         "unknown dtype 'F33'");
    BADJ("dtype not a string", "{\"a\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
         "dtype is not a string");
    BADJ("missing field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8,
         "missing field 'data_offsets'");
    BADJ("shape not an array", "{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8,
         "shape is not an array");
    BADJ("negative shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,8]}}", 8,
         "shape[1] is not a non-negative integer");
    BADJ("too many dims",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         "9 dimensions");
    BADJ("shape overflow",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,8],\"data_offsets\":[0,8]}}", 8,
         "overflows");
    BADJ("offsets not a pair", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8,
         "not a [begin, end] array");
    BADJ("negative offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8,
         "data_offsets[0] is not a non-negative integer");
    BADJ("begin > end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8,
         "begin > end");
    BADJ("shape x dtype != byte range",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
         "= 12 bytes but data_offsets [0,8) span 8 bytes");
    BADJ("hole between ranges",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}",
         16, "hole in data section: bytes [8,12) before tensor 'b'");
    BADJ("overlapping ranges",
         "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
         12, "tensor 'b' data_offsets [4,12) overlap tensor 'a' [0,8)");
    BADJ("trailing bytes", ok_json, 12, "4 trailing bytes");
    BADJ("range past end", ok_json, 4, "extend past the end");
    BADJ("duplicate names",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "duplicate tensor name");
    BADJ("non-string metadata", "{\"__metadata__\":{\"format\":\"pt\",\"k\":1}}", 0,
         "__metadata__ value of 'k' is not a string");
    BADJ("metadata not an object", "{\"__metadata__\":[\"pt\"]}", 0,
         "__metadata__ is not an object");

    for (int i = 0; i < n; i++) {
        st_file_t f;
        int rc = st_parse(&f, c[i].buf, c[i].len, "m.safetensors");
        snprintf(c[i].msg, sizeof c[i].msg, "%s", rl_errmsg());
        if (rc != RL_EFORMAT)
            TEST__FAIL("%s: got %d (%s), detail: %s", c[i].what, rc, rl_strerror(rc), c[i].msg);
        if (!strstr(c[i].msg, c[i].expect))
            TEST__FAIL("%s: message \"%s\" lacks \"%s\"", c[i].what, c[i].msg, c[i].expect);
        if (strncmp(c[i].msg, "m.safetensors: ", 15) != 0)
            TEST__FAIL("%s: message \"%s\" does not start with the label", c[i].what, c[i].msg);
        CHECK(f.tensors == NULL && f.path == NULL && f.n_tensors == 0); /* left freed */
    }
    /* Each case is told apart: no other case's message contains its substring. */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            if (i != j && strstr(c[j].msg, c[i].expect))
                TEST__FAIL("'%s' and '%s' share message text \"%s\"", c[i].what, c[j].what,
                           c[i].expect);
    for (int i = 0; i < n; i++) free(c[i].buf);
    free(full);
#undef BAD
#undef BADJ
}

static void test_valid_edge_cases(void) {
    st_file_t f;
    size_t l;
    uint8_t *b;
    /* Minimal header, header padded with spaces, zero-size tensors, out-of-order entries. */
    b = mk("{}", UINT64_MAX, NULL, 0, &l);
    CHECK_OK(st_parse(&f, b, l, "min"));
    CHECK_EQ(f.n_tensors, 0);
    st_close(&f);
    free(b);
    b = mk("{\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[3,3]},"
           "\"y\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[2,3]},"
           "\"x\":{\"dtype\":\"I16\",\"shape\":[],\"data_offsets\":[0,2]}}     ",
           UINT64_MAX, "\x01\x02\x03", 3, &l);
    CHECK_OK(st_parse(&f, b, l, "edge"));
    CHECK_EQ(f.n_tensors, 3);
    if (f.n_tensors == 3) {
        /* Sorted by data offset. */
        CHECK_STREQ(f.tensors[0].name, "x");
        CHECK_STREQ(f.tensors[1].name, "y");
        CHECK_STREQ(f.tensors[2].name, "z");
        CHECK_EQ(f.tensors[1].data[0], 3);
        CHECK_EQ(f.tensors[0].ndim, 0);
        float o;
        CHECK_ERR(st_tensor_to_f32(&f, &f.tensors[0], &o, 1), RL_EUNSUPPORTED);
        CHECK(strstr(rl_errmsg(), "I16") != NULL);
    }
    st_close(&f);
    free(b);
}

static void test_mutations(void) {
    /* Every single-byte corruption of a valid file is either accepted consistently or rejected
     * as RL_EFORMAT - never a crash or an out-of-bounds read (run under ASan). */
    static const uint8_t data[24];
    const uint8_t vals[] = {0x00, 0x01, 0x22, 0x2c, 0x30, 0x39, 0x5b, 0x7d, 0xff};
    size_t l;
    uint8_t *b = mk("{\"__metadata__\":{\"f\":\"pt\"},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                    "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[16,24]}}",
                    UINT64_MAX, data, sizeof data, &l);
    int accepted = 0, rejected = 0, other = 0, inconsistent = 0;
    for (size_t pos = 0; pos < l - sizeof data; pos++) {
        for (size_t v = 0; v < sizeof vals; v++) {
            uint8_t *m = malloc(l);
            st_file_t f;
            int rc;
            memcpy(m, b, l);
            m[pos] = vals[v];
            rc = st_parse(&f, m, l, "mut");
            if (rc == 0) {
                accepted++;
                for (int i = 0; i < f.n_tensors; i++) {
                    if (f.tensors[i].numel * st_dtype_size(f.tensors[i].dtype) !=
                        f.tensors[i].nbytes)
                        inconsistent++;
                }
                if (f.n_tensors &&
                    f.tensors[f.n_tensors - 1].data + f.tensors[f.n_tensors - 1].nbytes != m + l)
                    inconsistent++;
                st_close(&f);
            } else if (rc == RL_EFORMAT) {
                rejected++;
            } else {
                other++;
            }
            free(m);
        }
    }
    free(b);
    CHECK_EQ(other, 0);
    CHECK_EQ(inconsistent, 0);
    CHECK(rejected > 0);
    CHECK(accepted > 0);
}

/* Parses `json` + data at an odd address and converts the tensor "t" (n elements). */
static int load_one(const char *json, const void *data, size_t dlen, float *out, size_t n) {
    size_t l;
    uint8_t *b = mk(json, UINT64_MAX, data, dlen, &l);
    uint8_t *odd = malloc(l + 1);
    st_file_t f;
    int rc;
    memcpy(odd + 1, b, l); /* the data are unaligned whatever the header length */
    rc = st_parse(&f, odd + 1, l, "half");
    if (rc == 0) {
        const st_tensor_t *t = st_find(&f, "t");
        rc = t ? st_tensor_to_f32(&f, t, out, n) : RL_ENOTFOUND;
        st_close(&f);
    }
    free(odd);
    free(b);
    return rc;
}

static void test_f16(void) {
    const uint16_t h[] = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x7C00, 0xFC00,
                          0x7E00, 0x2E66, 0x03FF, 0x0400, 0x8000, 0x8001};
    float o[12];
    CHECK_OK(load_one("{\"t\":{\"dtype\":\"F16\",\"shape\":[3,4],\"data_offsets\":[0,24]}}", h,
                      sizeof h, o, 12));
    CHECK_EQ(o[0], 1.0);
    CHECK_EQ(o[1], -2.5);
    CHECK_EQ(o[2], 65504.0);
    CHECK(o[3] == 0x1p-24f); /* smallest subnormal */
    CHECK(isinf(o[4]) && o[4] > 0);
    CHECK(isinf(o[5]) && o[5] < 0);
    CHECK(isnan(o[6]));
    CHECK_NEAR(o[7], 0.1, 0x1p-15);         /* the nearest half: half its ulp 2^-14 */
    CHECK(o[7] == 0.0999755859375f);        /* exact half value */
    CHECK(o[8] == 1023.0f * 0x1p-24f);      /* largest subnormal */
    CHECK(o[9] == 0x1p-14f);                /* smallest normal */
    CHECK(o[10] == 0.0f && signbit(o[10])); /* -0 */
    CHECK(o[11] == -0x1p-24f);
}

static void test_bf16(void) {
    const uint16_t h[] = {0x3F80, 0xC020, 0x4780, 0x3380, 0x7F80, 0xFF80, 0x7FC0, 0x3DCD, 0x0001};
    float o[9];
    CHECK_OK(load_one("{\"t\":{\"dtype\":\"BF16\",\"shape\":[9],\"data_offsets\":[0,18]}}", h,
                      sizeof h, o, 9));
    CHECK_EQ(o[0], 1.0);
    CHECK_EQ(o[1], -2.5);
    CHECK_EQ(o[2], 65536.0); /* 65504 is not representable; its bf16 rounding */
    CHECK(o[3] == 0x1p-24f);
    CHECK(isinf(o[4]) && o[4] > 0);
    CHECK(isinf(o[5]) && o[5] < 0);
    CHECK(isnan(o[6]));
    CHECK_NEAR(o[7], 0.1, 0x1p-12); /* the nearest bf16: half its ulp 2^-11 */
    CHECK(o[7] == 0.10009765625f);
    CHECK(o[8] == 0x1p-133f); /* a float subnormal */
}

static void test_f64(void) {
    const double d[] = {1.0, -2.5, 0.1, 1e300, -1e-50};
    float o[5];
    CHECK_OK(load_one("{\"t\":{\"dtype\":\"F64\",\"shape\":[5],\"data_offsets\":[0,40]}}", d,
                      sizeof d, o, 5));
    CHECK_EQ(o[0], 1.0);
    CHECK_EQ(o[1], -2.5);
    CHECK(o[2] == 0.1f);
    CHECK(isinf(o[3]));
    CHECK(o[4] == 0.0f);
}

static void test_open_errors(void) {
    st_file_t f;
    const char *missing = tpath("no-such.safetensors");
    int rc = st_open(&f, missing);
    CHECK(rc == RL_ENOTFOUND || rc == RL_EIO);
    CHECK_EQ(rc, RL_ENOTFOUND);
    CHECK(strstr(rl_errmsg(), missing) != NULL);
    CHECK(f.path == NULL);
    st_close(&f); /* safe after failure */

    rc = st_open(&f, test_tmpdir());
    CHECK_EQ(rc, RL_EIO);
    CHECK(strstr(rl_errmsg(), test_tmpdir()) != NULL);

    /* A malformed file on disk names the file. */
    const char *p = tpath("bad.safetensors");
    size_t bl;
    uint8_t *bad = mk("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                      UINT64_MAX, NULL, 8, &bl);
    CHECK_OK(fs_write_atomic(p, bad, bl));
    free(bad);
    CHECK_ERR(st_open(&f, p), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), p) != NULL);
    unlink(p);

    /* An empty file is malformed, not an I/O error. */
    FILE *fp = fopen(p, "wb");
    CHECK(fp != NULL);
    if (fp) fclose(fp);
    CHECK_ERR(st_open(&f, p), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "too short") != NULL);
    unlink(p);
}

/* The writer's conversions on every exponent and leading significand, with the dropped bits at
 * the cases that matter: zero, one, just below, at and just above half, all ones. */
static void test_f32_to_half_rounding(void) {
    static const uint32_t bf_low[] = {0, 1, 0x7fff, 0x8000, 0x8001, 0xffff};
    static const uint32_t h_low[] = {0, 1, 0xfff, 0x1000, 0x1001, 0x1fff};
    size_t bad = 0;
    for (uint32_t hi = 0; hi < 0x10000; hi++)
        for (size_t k = 0; k < sizeof bf_low / sizeof bf_low[0]; k++) {
            uint32_t u = hi << 16 | bf_low[k], w;
            float x, v;
            memcpy(&x, &u, 4);
            w = (uint32_t)st_f32_to_bf16(x) << 16;
            memcpy(&v, &w, 4);
            if (!test_rounded_ok(x, v, 8, -126, 127) && bad++ < 5)
                TEST__FAIL("bf16: %a (0x%08x) -> %a", x, u, v);
        }
    for (uint32_t hi = 0; hi < 0x80000; hi++)
        for (size_t k = 0; k < sizeof h_low / sizeof h_low[0]; k++) {
            uint32_t u = hi << 13 | h_low[k];
            float x;
            memcpy(&x, &u, 4);
            uint16_t h = st_f32_to_f16(x);
            /* back through the reader's own conversion, checked by test_f16 */
            float v;
            st_file_t f = {0};
            st_tensor_t t = {.name = "h",
                             .dtype = ST_F16,
                             .ndim = 1,
                             .numel = 1,
                             .nbytes = 2,
                             .data = (const uint8_t *)&h};
            if (st_tensor_to_f32(&f, &t, &v, 1) < 0 ||
                (!test_rounded_ok(x, v, 11, -14, 15) && bad++ < 5))
                TEST__FAIL("f16: %a (0x%08x) -> %a (0x%04x)", x, u, v, h);
        }
    CHECK_EQ(bad, 0);
    /* a few by name */
    CHECK_EQ(st_f32_to_f16(65504.0f), 0x7bff);
    CHECK_EQ(st_f32_to_f16(65519.99f), 0x7bff);
    CHECK_EQ(st_f32_to_f16(65520.0f), 0x7c00);
    CHECK_EQ(st_f32_to_f16(0x1p-25f), 0x0000);        /* a tie between 0 and the least: even */
    CHECK_EQ(st_f32_to_f16(0x1.8p-24f), 0x0002);      /* a tie between 1 and 2 ulp: even */
    CHECK_EQ(st_f32_to_f16(-0x1p-14f), 0x8400);       /* the least normal */
    CHECK_EQ(st_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80); /* tie: even */
    CHECK_EQ(st_f32_to_bf16(1.0f + 0x3p-8f), 0x3f82); /* tie: even, upward */
    CHECK_EQ(st_f32_to_bf16(-INFINITY), 0xff80);
    CHECK_EQ(st_f32_to_bf16(NAN) & 0x7fc0, 0x7fc0);
}

/* st_write in BF16 / F16: the reader gets the rounded values, the dtype in the header. */
static void test_write_half(void) {
    float x[5] = {1.0f, 1.0f + 0x1p-8f, -3.14159f, 1e-6f, 70000.0f};
    st_wtensor_t t = {.name = "x", .ndim = 1, .shape = {5}, .data = x};
    const char *path = test_path("half.safetensors");
    for (int k = 0; k < 2; k++) {
        st_dtype_t dt = k ? ST_F16 : ST_BF16;
        st_file_t f;
        float back[5];
        CHECK_OK(st_write(path, &t, 1, dt, NULL, NULL, 0));
        CHECK_OK(st_open(&f, path));
        CHECK_EQ(f.tensors[0].dtype, dt);
        CHECK_EQ(f.tensors[0].nbytes, 10);
        CHECK_OK(st_tensor_to_f32(&f, &f.tensors[0], back, 5));
        for (int i = 0; i < 5; i++)
            CHECK(k ? test_rounded_ok(x[i], back[i], 11, -14, 15)
                    : test_rounded_ok(x[i], back[i], 8, -126, 127));
        st_close(&f);
    }
    CHECK_ERR(st_write(path, &t, 1, ST_I32, NULL, NULL, 0), RL_EINVAL);
    unlink(path);
}

int main(void) {
    RUN(test_dtype_table);
    RUN(test_roundtrip);
    RUN(test_roundtrip_no_meta_no_tensors);
    RUN(test_write_rejects);
    RUN(test_malformed);
    RUN(test_valid_edge_cases);
    RUN(test_mutations);
    RUN(test_f16);
    RUN(test_bf16);
    RUN(test_f64);
    RUN(test_open_errors);
    RUN(test_f32_to_half_rounding);
    RUN(test_write_half);
    rmdir(test_tmpdir());
    return TEST_REPORT();
}
