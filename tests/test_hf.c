/*
 * test_hf.c - Hugging Face model directories: save/load round trips, a transformers-style file
 * (prefixed names, mask buffers, tied lm_head), F16/BF16 checkpoints, and the errors for a
 * missing, misshapen or unknown tensor and for bad config.json keys; the same for the Llama
 * family (Llama, Qwen2, Qwen3), with BF16/F16 saving and sharded checkpoints (index and shards
 * that disagree, a missing shard, a tensor in two shards).
 */
#include <dirent.h>
#include <jansson.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fs.h"
#include "nn/hf.h"
#include "nn/st.h"
#include "test.h"

static const gpt_config_t small_cfg = {.n_layer = 2,
                                       .n_head = 2,
                                       .n_embd = 8,
                                       .vocab_size = 11,
                                       .n_positions = 6,
                                       .layer_norm_epsilon = 1e-5f};

static const char *tdir(const char *name) {
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", test_tmpdir(), name);
    return buf[i];
}

static const char *tfile(const char *dir, const char *name) {
    static char buf[4][600];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", dir, name);
    return buf[i];
}

/* Removes a model directory made by a test (its files, then the directory). */
static void rm_model_dir(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d) return;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            unlink(tfile(dir, e->d_name));
    closedir(d);
    rmdir(dir);
}

/* A small model with every parameter distinct (biases and LN included). */
static gpt_t *make_model(int scalar_head) {
    gpt_config_t cfg = small_cfg;
    gpt_t *m;
    cfg.scalar_head = scalar_head;
    m = gpt_new(&cfg);
    if (!m) return NULL;
    for (size_t i = 0; i < m->num_params; i++)
        m->params_mem[i] = (float)((double)((i * 2654435761u) % 2001) / 1000.0 - 1.0) * 0.37f;
    return m;
}

static void check_same_model(const gpt_t *a, const gpt_t *b) {
    CHECK_EQ(a->cfg.n_layer, b->cfg.n_layer);
    CHECK_EQ(a->cfg.n_head, b->cfg.n_head);
    CHECK_EQ(a->cfg.n_embd, b->cfg.n_embd);
    CHECK_EQ(a->cfg.vocab_size, b->cfg.vocab_size);
    CHECK_EQ(a->cfg.n_positions, b->cfg.n_positions);
    CHECK(a->cfg.layer_norm_epsilon == b->cfg.layer_norm_epsilon);
    CHECK_EQ(a->cfg.scalar_head, b->cfg.scalar_head);
    CHECK_EQ(a->num_params, b->num_params);
    if (a->num_params == b->num_params)
        CHECK(memcmp(a->params_mem, b->params_mem, a->num_params * sizeof(float)) == 0);
}

/* The model's tensors as st_write_f32 input, names prefixed with `prefix`. Caller frees. */
static st_wtensor_t *model_wtensors(const gpt_t *m, const char *prefix, char (*names)[96]) {
    st_wtensor_t *wt = calloc((size_t)m->n_tensors, sizeof *wt);
    for (int i = 0; i < m->n_tensors; i++) {
        const gpt_tensor_t *t = &m->tensors[i];
        snprintf(names[i], 96, "%s%s", prefix, t->name);
        wt[i].name = names[i];
        wt[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) wt[i].shape[d] = t->shape[d];
        wt[i].data = m->params_mem + t->offset;
    }
    return wt;
}

static void roundtrip(int scalar_head) {
    const char *dir = tdir(scalar_head ? "rt-head/nested" : "rt-plain");
    gpt_t *m = make_model(scalar_head), *m2;
    gpt_config_t cfg;
    CHECK(m != NULL);
    if (!m) return;
    CHECK_OK(hf_save(m, dir));
    CHECK_OK(hf_config_read(dir, &cfg));
    CHECK_EQ(cfg.scalar_head, scalar_head);
    m2 = hf_load(dir);
    CHECK(m2 != NULL);
    if (!m2) fprintf(stderr, "  hf_load: %s\n", rl_errmsg());
    if (m2) {
        check_same_model(m, m2);
        CHECK_EQ(m2->n_tensors, m->n_tensors);
    }

    /* config.json is in Hugging Face form. */
    json_error_t jerr;
    json_t *j = json_load_file(tfile(dir, "config.json"), 0, &jerr);
    CHECK(j != NULL);
    if (j) {
        CHECK_STREQ(json_string_value(json_array_get(json_object_get(j, "architectures"), 0)),
                    "GPT2LMHeadModel");
        CHECK_STREQ(json_string_value(json_object_get(j, "model_type")), "gpt2");
        CHECK_STREQ(json_string_value(json_object_get(j, "activation_function")), "gelu_new");
        CHECK_EQ(json_integer_value(json_object_get(j, "n_ctx")), small_cfg.n_positions);
        CHECK_EQ(json_integer_value(json_object_get(j, "eos_token_id")), small_cfg.vocab_size - 1);
        CHECK_EQ(json_integer_value(json_object_get(j, "bos_token_id")), small_cfg.vocab_size - 1);
        /* float settings written out: within one fp32 rounding of the decimal */
        CHECK_NEAR(json_real_value(json_object_get(j, "layer_norm_epsilon")), 1e-5,
                   test_gamma(1) * 1e-5);
        CHECK_NEAR(json_real_value(json_object_get(j, "initializer_range")), 0.02,
                   test_gamma(1) * 0.02);
        CHECK_EQ(json_object_get(j, "rlhf_scalar_head") != NULL, scalar_head);
        json_decref(j);
    }
    /* model.safetensors: F32, the table's order, format metadata. */
    st_file_t f;
    CHECK_OK(st_open(&f, tfile(dir, "model.safetensors")));
    CHECK_EQ(f.n_tensors, m->n_tensors);
    CHECK_STREQ(st_meta_get(&f, "format"), "pt");
    for (int i = 0; i < f.n_tensors && i < m->n_tensors; i++) {
        CHECK_STREQ(f.tensors[i].name, m->tensors[i].name);
        CHECK_EQ(f.tensors[i].dtype, ST_F32);
    }
    if (scalar_head) {
        const st_tensor_t *sw = st_find(&f, "score.weight");
        CHECK(sw && sw->ndim == 2 && sw->shape[0] == 1 && sw->shape[1] == small_cfg.n_embd);
        const st_tensor_t *sb = st_find(&f, "score.bias");
        CHECK(sb && sb->ndim == 1 && sb->shape[0] == 1);
    }
    st_close(&f);
    gpt_destroy(&m2);
    gpt_destroy(&m);
    CHECK(m == NULL);
    rm_model_dir(dir);
    if (scalar_head) rmdir(tdir("rt-head"));
}

static void test_roundtrip_plain(void) {
    roundtrip(0);
}

static void test_roundtrip_scalar_head(void) {
    roundtrip(1);
}

static void test_hf_layout(void) {
    /* What transformers' save_pretrained writes for GPT2LMHeadModel: "transformer." prefixes,
     * attn.bias / attn.masked_bias buffers and lm_head.weight. */
    const char *dir = tdir("hf-layout");
    gpt_t *m = make_model(0), *m2;
    int L = small_cfg.n_layer, P = small_cfg.n_positions, n;
    char(*names)[96] = calloc((size_t)m->n_tensors + 2 * (size_t)L + 1, 96);
    float *mask = calloc((size_t)P * P, sizeof(float)), masked_bias = -1e4f;
    st_wtensor_t *wt, *all;
    CHECK_OK(hf_save(m, dir)); /* config.json */
    wt = model_wtensors(m, "transformer.", names);
    all = calloc((size_t)m->n_tensors + 2 * (size_t)L + 1, sizeof *all);
    n = 0;
    all[n++] = (st_wtensor_t){.name = "lm_head.weight",
                              .ndim = 2,
                              .shape = {small_cfg.vocab_size, small_cfg.n_embd},
                              .data = m->params.wte};
    for (int i = 0; i < m->n_tensors; i++) all[n++] = wt[i];
    for (int l = 0; l < L; l++) {
        char *b = names[m->n_tensors + 2 * l], *mb = names[m->n_tensors + 2 * l + 1];
        snprintf(b, 96, "transformer.h.%d.attn.bias", l);
        snprintf(mb, 96, "transformer.h.%d.attn.masked_bias", l);
        all[n++] = (st_wtensor_t){.name = b, .ndim = 4, .shape = {1, 1, P, P}, .data = mask};
        all[n++] = (st_wtensor_t){.name = mb, .ndim = 0, .data = &masked_bias};
    }
    CHECK_OK(st_write_f32(tfile(dir, "model.safetensors"), all, n, NULL, NULL, 0));
    m2 = hf_load(dir);
    CHECK(m2 != NULL);
    if (!m2) fprintf(stderr, "  hf_load: %s\n", rl_errmsg());
    if (m2) check_same_model(m, m2);
    gpt_destroy(&m2);
    /* an lm_head that is not wte would be a different model: refused, not silently tied */
    size_t nwte = (size_t)small_cfg.vocab_size * small_cfg.n_embd;
    float *untied = malloc(nwte * sizeof(float));
    memcpy(untied, m->params.wte, nwte * sizeof(float));
    untied[nwte / 2] += 0.5f;
    all[0].data = untied;
    CHECK_OK(st_write_f32(tfile(dir, "model.safetensors"), all, n, NULL, NULL, 0));
    m2 = hf_load(dir);
    CHECK(m2 == NULL);
    CHECK(strstr(rl_errmsg(), "lm_head.weight differs from wte.weight") != NULL);
    gpt_destroy(&m2);
    free(untied);
    gpt_destroy(&m);
    free(all);
    free(wt);
    free(mask);
    free(names);
    rm_model_dir(dir);
}

/* Round-to-nearest-even float -> IEEE half (normal and subnormal range; no overflow here). */
static uint16_t f32_to_f16(float x) {
    uint32_t b;
    uint16_t sign;
    float a = fabsf(x);
    memcpy(&b, &x, 4);
    sign = (uint16_t)((b >> 16) & 0x8000);
    if (a < 0x1p-14f) return (uint16_t)(sign | (uint16_t)lrintf(a * 0x1p24f));
    uint32_t exp = ((b >> 23) & 0xff) - 127 + 15, mant = b & 0x7fffff;
    uint32_t h = (exp << 10) | (mant >> 13), rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

static uint16_t f32_to_bf16(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    return (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}

/* Writes m's tensors as a 16-bit safetensors file, header and data built by hand. */
static int write_half_file(const gpt_t *m, const char *path, int bf16) {
    size_t cap = 64 + (size_t)m->n_tensors * 160, hl = 1, off = 0, len;
    char *hdr = malloc(cap);
    uint8_t *buf;
    int rc;
    hdr[0] = '{';
    for (int i = 0; i < m->n_tensors; i++) {
        const gpt_tensor_t *t = &m->tensors[i];
        char shape[64];
        if (t->ndim == 2)
            snprintf(shape, sizeof shape, "[%d,%d]", t->shape[0], t->shape[1]);
        else
            snprintf(shape, sizeof shape, "[%d]", t->shape[0]);
        hl += (size_t)snprintf(
            hdr + hl, cap - hl,
            "%s\"%s\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%zu,%zu]}", i ? "," : "",
            t->name, bf16 ? "BF16" : "F16", shape, off, off + 2 * t->size);
        off += 2 * t->size;
    }
    hl += (size_t)snprintf(hdr + hl, cap - hl, "}");
    len = 8 + hl + off;
    buf = malloc(len);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, hl); /* odd header length: the half data are unaligned too */
    off = 8 + hl;
    for (int i = 0; i < m->n_tensors; i++) {
        const gpt_tensor_t *t = &m->tensors[i];
        for (size_t j = 0; j < t->size; j++) {
            float v = m->params_mem[t->offset + j];
            uint16_t h = bf16 ? f32_to_bf16(v) : f32_to_f16(v);
            memcpy(buf + off, &h, 2);
            off += 2;
        }
    }
    rc = fs_write_atomic(path, buf, len);
    free(buf);
    free(hdr);
    return rc;
}

static void half_model(int bf16) {
    const char *dir = tdir(bf16 ? "bf16" : "f16");
    gpt_t *m = make_model(1), *m2;
    /* Relative precision of the format (half an ulp after rounding), plus the subnormal step. */
    double rel = bf16 ? 0x1p-8 : 0x1p-11, abs_tol = bf16 ? 0 : 0x1p-25;
    CHECK_OK(hf_save(m, dir));
    CHECK_OK(write_half_file(m, tfile(dir, "model.safetensors"), bf16));
    m2 = hf_load(dir);
    CHECK(m2 != NULL);
    if (!m2) fprintf(stderr, "  hf_load: %s\n", rl_errmsg());
    if (m2 && m2->num_params == m->num_params) {
        size_t bad = 0, exact = 0;
        double worst = 0;
        for (size_t i = 0; i < m->num_params; i++) {
            double a = m->params_mem[i], b = m2->params_mem[i], d = fabs(a - b);
            if (d > fabs(a) * rel + abs_tol) bad++;
            if (d > worst) worst = d;
            exact += a == b;
        }
        CHECK_EQ(bad, 0);
        CHECK(worst > 0);                 /* really went through 16 bits */
        CHECK(exact < m->num_params / 2); /* the values were not all representable */
    }
    gpt_destroy(&m2);
    gpt_destroy(&m);
    rm_model_dir(dir);
}

static void test_f16_model(void) {
    half_model(0);
}

static void test_bf16_model(void) {
    half_model(1);
}

/* Saves a model, rewrites its tensors with `edit` applied, and expects hf_load to fail naming
 * every string in `want`. */
typedef void (*edit_fn)(gpt_t *m, st_wtensor_t *wt, int *n);

static void expect_load_error(const char *name, edit_fn edit, const char *want1,
                              const char *want2) {
    const char *dir = tdir(name);
    gpt_t *m = make_model(0), *m2;
    char(*names)[96] = calloc((size_t)m->n_tensors + 4, 96);
    st_wtensor_t *wt = model_wtensors(m, "", names), *big;
    int n = m->n_tensors;
    big = calloc((size_t)n + 4, sizeof *big);
    memcpy(big, wt, (size_t)n * sizeof *wt);
    edit(m, big, &n);
    CHECK_OK(hf_save(m, dir));
    CHECK_OK(st_write_f32(tfile(dir, "model.safetensors"), big, n, NULL, NULL, 0));
    rl_err_clear();
    m2 = hf_load(dir);
    CHECK(m2 == NULL);
    if (!strstr(rl_errmsg(), want1) || (want2 && !strstr(rl_errmsg(), want2)))
        TEST__FAIL("%s: message \"%s\" lacks \"%s\" / \"%s\"", name, rl_errmsg(), want1,
                   want2 ? want2 : "");
    if (!strstr(rl_errmsg(), "model.safetensors"))
        TEST__FAIL("%s: message \"%s\" does not name the file", name, rl_errmsg());
    gpt_destroy(&m2);
    gpt_destroy(&m);
    free(big);
    free(wt);
    free(names);
    rm_model_dir(dir);
}

static int find_wt(const st_wtensor_t *wt, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(wt[i].name, name) == 0) return i;
    return -1;
}

static void drop_ln2_bias(gpt_t *m, st_wtensor_t *wt, int *n) {
    (void)m;
    int i = find_wt(wt, *n, "h.1.ln_2.bias");
    memmove(&wt[i], &wt[i + 1], (size_t)(*n - i - 1) * sizeof *wt);
    (*n)--;
}

static void transpose_qkv(gpt_t *m, st_wtensor_t *wt, int *n) {
    (void)m;
    int i = find_wt(wt, *n, "h.0.attn.c_attn.weight");
    int64_t r = wt[i].shape[0];
    wt[i].shape[0] = wt[i].shape[1];
    wt[i].shape[1] = r;
}

static void narrow_fc(gpt_t *m, st_wtensor_t *wt, int *n) {
    (void)m;
    wt[find_wt(wt, *n, "h.1.mlp.c_fc.weight")].shape[1] = 24; /* only the second dim differs */
}

static void ln_as_matrix(gpt_t *m, st_wtensor_t *wt, int *n) {
    (void)m;
    int i = find_wt(wt, *n, "ln_f.weight");
    wt[i].ndim = 2;
    wt[i].shape[0] = 1;
    wt[i].shape[1] = 8;
}

static void add_unknown(gpt_t *m, st_wtensor_t *wt, int *n) {
    (void)m;
    wt[*n] = wt[find_wt(wt, *n, "ln_f.bias")];
    wt[*n].name = "h.0.mlp.c_gate.weight";
    (*n)++;
}

static void add_score_without_head(gpt_t *m, st_wtensor_t *wt, int *n) {
    (void)m;
    wt[*n] = wt[find_wt(wt, *n, "ln_f.bias")];
    wt[*n].name = "score.weight";
    (*n)++;
}

static void add_both_prefixes(gpt_t *m, st_wtensor_t *wt, int *n) {
    (void)m;
    wt[*n] = wt[find_wt(wt, *n, "wpe.weight")];
    wt[*n].name = "transformer.wpe.weight";
    (*n)++;
}

static void test_missing_tensor(void) {
    expect_load_error("missing", drop_ln2_bias, "missing tensor 'h.1.ln_2.bias'", NULL);
}

static void test_wrong_shape(void) {
    expect_load_error("shape", transpose_qkv, "'h.0.attn.c_attn.weight' has shape [24,8]",
                      "expected [8,24]");
    expect_load_error("shape2", narrow_fc, "'h.1.mlp.c_fc.weight' has shape [8,24]",
                      "expected [8,32] by ");
    /* the expected shape is config.json's: the message names it */
    expect_load_error("shape3", ln_as_matrix, "'ln_f.weight' has shape [1,8]",
                      "/config.json (config and weights do not match)");
}

static void test_unknown_tensor(void) {
    expect_load_error("unknown", add_unknown, "unknown tensor 'h.0.mlp.c_gate.weight'", NULL);
    expect_load_error("score", add_score_without_head, "unknown tensor 'score.weight'", NULL);
}

static void test_both_prefixes(void) {
    expect_load_error("both", add_both_prefixes, "'wpe.weight'", "'transformer.wpe.weight'");
}

static void test_unconvertible_dtype(void) {
    /* An I32 tensor where the model needs floats. */
    const char *dir = tdir("i32");
    gpt_config_t cfg = small_cfg;
    cfg.n_layer = 1;
    gpt_t *m = gpt_new(&cfg);
    size_t len, hl;
    CHECK_OK(hf_save(m, dir));
    /* Keep every tensor but retype ln_f.bias: rewrite the saved file's header in place. */
    char *data = NULL;
    CHECK_OK(fs_read_all(tfile(dir, "model.safetensors"), &data, &len));
    hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (uint8_t)data[i];
    char *p = strstr(data + 8, "\"ln_f.bias\":{\"dtype\":\"F32\"");
    CHECK(p != NULL && (size_t)(p - data) < 8 + hl);
    if (p) memcpy(p + strlen("\"ln_f.bias\":{\"dtype\":\""), "I32", 3);
    CHECK_OK(fs_write_atomic(tfile(dir, "model.safetensors"), data, len));
    free(data);
    gpt_t *m2 = hf_load(dir);
    CHECK(m2 == NULL);
    CHECK(strstr(rl_errmsg(), "ln_f.bias") != NULL);
    CHECK(strstr(rl_errmsg(), "I32") != NULL);
    gpt_destroy(&m2);
    gpt_destroy(&m);
    rm_model_dir(dir);
}

static void test_missing_files(void) {
    const char *dir = tdir("nofiles");
    gpt_t *m = make_model(0);
    gpt_config_t cfg;
    /* No directory at all. */
    CHECK_ERR(hf_config_read(dir, &cfg), RL_ENOTFOUND);
    CHECK(strstr(rl_errmsg(), "config.json") != NULL);
    CHECK(hf_load(dir) == NULL);
    CHECK(strstr(rl_errmsg(), "config.json") != NULL);
    /* A config but no weights. */
    CHECK_OK(hf_save(m, dir));
    unlink(tfile(dir, "model.safetensors"));
    CHECK(hf_load(dir) == NULL);
    CHECK(strstr(rl_errmsg(), "model.safetensors") != NULL);
    gpt_destroy(&m);
    rm_model_dir(dir);
}

/* Writes `text` as DIR/config.json and reads it back. */
static int read_config_text(const char *text, gpt_config_t *cfg) {
    const char *dir = tdir("cfg");
    int rc;
    fs_mkdir_p(dir);
    if (fs_write_atomic(tfile(dir, "config.json"), text, strlen(text)) < 0) return -100;
    rc = hf_config_read(dir, cfg);
    unlink(tfile(dir, "config.json"));
    rmdir(dir);
    return rc;
}

static void test_real_gpt2_config(void) {
    /* The config.json of the original gpt2 checkpoint on the Hugging Face hub. */
    const char *text =
        "{\n  \"activation_function\": \"gelu_new\",\n  \"architectures\": [\n"
        "    \"GPT2LMHeadModel\"\n  ],\n  \"attn_pdrop\": 0.1,\n  \"bos_token_id\": 50256,\n"
        "  \"embd_pdrop\": 0.1,\n  \"eos_token_id\": 50256,\n  \"initializer_range\": 0.02,\n"
        "  \"layer_norm_epsilon\": 1e-05,\n  \"model_type\": \"gpt2\",\n  \"n_ctx\": 1024,\n"
        "  \"n_embd\": 768,\n  \"n_head\": 12,\n  \"n_layer\": 12,\n  \"n_positions\": 1024,\n"
        "  \"resid_pdrop\": 0.1,\n  \"summary_activation\": null,\n"
        "  \"summary_first_dropout\": 0.1,\n  \"summary_proj_to_labels\": true,\n"
        "  \"summary_type\": \"cls_index\",\n  \"summary_use_proj\": true,\n"
        "  \"task_specific_params\": {\n    \"text-generation\": {\n      \"do_sample\": true,\n"
        "      \"max_length\": 50\n    }\n  },\n  \"vocab_size\": 50257\n}\n";
    gpt_config_t cfg;
    CHECK_OK(read_config_text(text, &cfg));
    CHECK_EQ(cfg.n_layer, 12);
    CHECK_EQ(cfg.n_head, 12);
    CHECK_EQ(cfg.n_embd, 768);
    CHECK_EQ(cfg.vocab_size, 50257);
    CHECK_EQ(cfg.n_positions, 1024);
    CHECK(cfg.layer_norm_epsilon == 1e-5f);
    CHECK_EQ(cfg.scalar_head, 0);

    /* Defaults and the scalar head. */
    CHECK_OK(read_config_text("{\"n_layer\":1,\"n_head\":2,\"n_embd\":4,\"vocab_size\":5,"
                              "\"n_positions\":3,\"n_inner\":16,\"rlhf_scalar_head\":"
                              "{\"weight\":\"score.weight\",\"bias\":\"score.bias\",\"n_out\":1}}",
                              &cfg));
    CHECK(cfg.layer_norm_epsilon == 1e-5f);
    CHECK_EQ(cfg.scalar_head, 1);
}

static void test_bad_config(void) {
    static const struct {
        const char *text;
        int code;
        const char *want;
    } cases[] = {
        {"{\"n_layer\":1,\"n_embd\":4,\"vocab_size\":5,\"n_positions\":3}", RL_EFORMAT,
         "missing required key 'n_head'"},
        {"{\"n_layer\":1,\"n_head\":2,\"n_embd\":\"4\",\"vocab_size\":5,\"n_positions\":3}",
         RL_EFORMAT, "key 'n_embd' must be an integer"},
        {"{\"n_layer\":1,\"n_head\":2,\"n_embd\":4.5,\"vocab_size\":5,\"n_positions\":3}",
         RL_EFORMAT, "key 'n_embd' must be an integer"},
        {"{\"n_layer\":0,\"n_head\":2,\"n_embd\":4,\"vocab_size\":5,\"n_positions\":3}", RL_EFORMAT,
         "key 'n_layer' = 0 is out of range"},
        {"{\"n_layer\":1,\"n_head\":2,\"n_embd\":4,\"vocab_size\":99999999999,\"n_positions\":3}",
         RL_EFORMAT, "key 'vocab_size'"},
        {"{\"n_layer\":1,\"n_head\":2,\"n_embd\":4,\"vocab_size\":5,\"n_positions\":3,"
         "\"layer_norm_epsilon\":\"small\"}",
         RL_EFORMAT, "key 'layer_norm_epsilon' must be a number"},
        {"{\"n_layer\":1,\"n_head\":2,\"n_embd\":4,\"vocab_size\":5,\"n_positions\":3,"
         "\"activation_function\":\"relu\"}",
         RL_EUNSUPPORTED, "activation_function 'relu'"},
        {"{\"n_layer\":1,\"n_head\":2,\"n_embd\":4,\"vocab_size\":5,\"n_positions\":3,"
         "\"n_inner\":8}",
         RL_EUNSUPPORTED, "n_inner = 8"},
        {"{\"n_layer\":1,\"n_head\":2,\"n_embd\":4,\"vocab_size\":5,\"n_positions\":3,"
         "\"scale_attn_by_inverse_layer_idx\":true}",
         RL_EUNSUPPORTED, "scale_attn_by_inverse_layer_idx"},
        {"{\"n_layer\":1,\"n_head\":2,\"n_embd\":4,\"vocab_size\":5,\"n_positions\":3,"
         "\"model_type\":\"gpt_neox\"}",
         RL_EUNSUPPORTED, "model_type 'gpt_neox'"},
        {"{\"n_layer\":1,\"n_head\":2,\"n_embd\":4,\"vocab_size\":5,\"n_positions\":3,"
         "\"rlhf_scalar_head\":{\"n_out\":2}}",
         RL_EUNSUPPORTED, "rlhf_scalar_head.n_out = 2"},
        {"{\"n_layer\":1,\"n_head\":2,\"n_embd\":4,\"vocab_size\":5,\"n_positions\":3,"
         "\"rlhf_scalar_head\":true}",
         RL_EFORMAT, "'rlhf_scalar_head' must be an object"},
        {"{\"n_layer\":1,\"n_head\":3,\"n_embd\":4,\"vocab_size\":5,\"n_positions\":3}", RL_EINVAL,
         "not divisible"},
        {"{\"n_layer\":1,\"n_layer\":2,\"n_head\":2,\"n_embd\":4,\"vocab_size\":5,"
         "\"n_positions\":3}",
         RL_EFORMAT, "duplicate"},
        {"{\"n_layer\":1,", RL_EFORMAT, "invalid JSON"},
        {"[1]", RL_EFORMAT, "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gpt_config_t cfg;
        int rc = read_config_text(cases[i].text, &cfg);
        if (rc != cases[i].code)
            TEST__FAIL("case %zu: got %d (%s), want %d: %s", i, rc, rl_strerror(rc), cases[i].code,
                       rl_errmsg());
        if (!strstr(rl_errmsg(), cases[i].want) || !strstr(rl_errmsg(), "config.json"))
            TEST__FAIL("case %zu: message \"%s\" lacks \"%s\" or the file name", i, rl_errmsg(),
                       cases[i].want);
    }
    /* hf_load reports the same. */
    const char *dir = tdir("badcfg");
    fs_mkdir_p(dir);
    CHECK_OK(fs_write_atomic(tfile(dir, "config.json"), "{\"n_layer\":1}", 13));
    CHECK(hf_load(dir) == NULL);
    CHECK(strstr(rl_errmsg(), "n_head") != NULL);
    rm_model_dir(dir);
}

/* Weights from one save beside the config.json of another (a crash between the two renames):
 * the shapes agree, only layer_norm_epsilon differs, and the load still refuses the mix. */
static void test_mixed_saves_refused(void) {
    const char *a = tdir("mix-a"), *b = tdir("mix-b");
    gpt_t *m = make_model(0);
    CHECK_OK(hf_save(m, a));
    m->cfg.layer_norm_epsilon = 1e-6f;
    CHECK_OK(hf_save(m, b));
    char *data = NULL;
    size_t len = 0;
    CHECK_OK(fs_read_all(tfile(b, "model.safetensors"), &data, &len));
    CHECK_OK(fs_write_atomic(tfile(a, "model.safetensors"), data, len));
    free(data);
    gpt_t *m2 = hf_load(a);
    CHECK(m2 == NULL);
    CHECK(strstr(rl_errmsg(), "does not match the config model.safetensors was saved with"));
    gpt_destroy(&m2);
    m2 = hf_load(b); /* a consistent directory loads, with its own epsilon */
    CHECK(m2 != NULL && m2->cfg.layer_norm_epsilon == 1e-6f);
    gpt_destroy(&m2);
    gpt_destroy(&m);
    rm_model_dir(a);
    rm_model_dir(b);
}

static void test_copy_tokenizer(void) {
    const char *a = tdir("tok-a"), *b = tdir("tok-b");
    CHECK_OK(fs_mkdir_p(a));
    CHECK_OK(hf_copy_tokenizer(a, b)); /* no tokenizer: nothing to copy */
    CHECK(access(tfile(b, "vocab.json"), F_OK) != 0);
    CHECK_OK(fs_write_atomic(tfile(a, "vocab.json"), "{\"a\": 0}", 8));
    CHECK_ERR(hf_copy_tokenizer(a, b), RL_EFORMAT); /* half a tokenizer */
    CHECK(strstr(rl_errmsg(), "only one of") != NULL);
    CHECK_OK(fs_write_atomic(tfile(a, "merges.txt"), "#version: 0.2\n", 14));
    CHECK_OK(hf_copy_tokenizer(a, b));
    char *data = NULL;
    size_t len = 0;
    CHECK_OK(fs_read_all(tfile(b, "merges.txt"), &data, &len));
    CHECK(len == 14 && memcmp(data, "#version: 0.2\n", 14) == 0);
    free(data);
    /* tokenizer.json and its config go along (the Llama family's tokenizer) */
    CHECK_OK(fs_write_atomic(tfile(a, "tokenizer.json"), "{\"model\": {}}", 13));
    CHECK_OK(fs_write_atomic(tfile(a, "tokenizer_config.json"), "{}", 2));
    CHECK_OK(hf_copy_tokenizer(a, b));
    CHECK_OK(fs_read_all(tfile(b, "tokenizer.json"), &data, &len));
    CHECK(len == 13 && memcmp(data, "{\"model\": {}}", 13) == 0);
    free(data);
    CHECK(access(tfile(b, "tokenizer_config.json"), F_OK) == 0);
    rm_model_dir(a);
    rm_model_dir(b);
}

/* ---- the Llama family --------------------------------------------------------------------- */

/* grouped-query, untied, Llama 3 rope scaling; q/k/v biases and tied embeddings (Qwen2); q/k
 * norms and a head_dim that is not hidden / heads (Qwen3), with a scalar head */
static const gpt_config_t fam_cfgs[3] = {
    {.n_layer = 2,
     .n_head = 4,
     .n_embd = 8,
     .vocab_size = 11,
     .n_positions = 16,
     .layer_norm_epsilon = 1e-5f,
     .arch = GPT_ARCH_LLAMA,
     .n_kv_head = 2,
     .n_inner = 12,
     .rope_theta = 500000.0f,
     .rope_llama3 = 1,
     .rope_factor = 8.0f,
     .rope_low_freq_factor = 1.0f,
     .rope_high_freq_factor = 4.0f,
     .rope_original_max_pos = 8,
     .bos_token_id = 1,
     .eos_token_id = 2},
    {.n_layer = 2,
     .n_head = 2,
     .n_embd = 8,
     .vocab_size = 11,
     .n_positions = 16,
     .layer_norm_epsilon = 1e-6f,
     .arch = GPT_ARCH_QWEN2,
     .n_kv_head = 1,
     .n_inner = 12,
     .tie_word_embeddings = 1,
     .attn_bias = 1,
     .rope_theta = 1000000.0f,
     .bos_token_id = -1,
     .eos_token_id = 3},
    {.n_layer = 2,
     .n_head = 4,
     .n_embd = 8,
     .vocab_size = 11,
     .n_positions = 16,
     .layer_norm_epsilon = 1e-6f,
     .scalar_head = 1,
     .arch = GPT_ARCH_QWEN3,
     .n_kv_head = 2,
     .head_dim = 6,
     .n_inner = 12,
     .qk_norm = 1,
     .rope_theta = 1000000.0f,
     .bos_token_id = -1,
     .eos_token_id = -1},
};
static const char *const fam_arch[3] = {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"};
static const char *const fam_type[3] = {"llama", "qwen2", "qwen3"};

/* A family model with every parameter distinct. */
static gpt_t *make_fam_model(int k) {
    gpt_t *m = gpt_new(&fam_cfgs[k]);
    if (!m) {
        fprintf(stderr, "gpt_new: %s\n", rl_errmsg());
        abort();
    }
    for (size_t i = 0; i < m->num_params; i++)
        m->params_mem[i] = (float)((double)((i * 2654435761u) % 2001) / 1000.0 - 1.0) * 0.37f;
    return m;
}

static void check_same_fam_model(const gpt_t *a, const gpt_t *b) {
    CHECK_EQ(memcmp(&a->cfg, &b->cfg, sizeof a->cfg), 0);
    CHECK_EQ(a->num_params, b->num_params);
    CHECK_EQ(a->n_tensors, b->n_tensors);
    if (a->num_params == b->num_params)
        CHECK_EQ(memcmp(a->params_mem, b->params_mem, a->num_params * sizeof(float)), 0);
}

static void test_llama_roundtrip(void) {
    for (int k = 0; k < 3; k++) {
        const char *dir = tdir(fam_type[k]);
        gpt_t *m = make_fam_model(k), *m2;
        CHECK_OK(hf_save(m, dir));
        m2 = hf_load(dir);
        CHECK(m2 != NULL);
        if (!m2) fprintf(stderr, "  hf_load: %s\n", rl_errmsg());
        if (m2) check_same_fam_model(m, m2);
        gpt_destroy(&m2);
        /* config.json in Hugging Face form */
        json_error_t jerr;
        json_t *j = json_load_file(tfile(dir, "config.json"), 0, &jerr);
        CHECK(j != NULL);
        if (j) {
            const gpt_config_t *c = &fam_cfgs[k];
            CHECK_STREQ(json_string_value(json_array_get(json_object_get(j, "architectures"), 0)),
                        fam_arch[k]);
            CHECK_STREQ(json_string_value(json_object_get(j, "model_type")), fam_type[k]);
            CHECK_EQ(json_integer_value(json_object_get(j, "hidden_size")), c->n_embd);
            CHECK_EQ(json_integer_value(json_object_get(j, "num_key_value_heads")), c->n_kv_head);
            CHECK_EQ(json_integer_value(json_object_get(j, "head_dim")), gpt_head_dim(c));
            CHECK_EQ(json_integer_value(json_object_get(j, "intermediate_size")), c->n_inner);
            CHECK_EQ(json_is_true(json_object_get(j, "tie_word_embeddings")),
                     c->tie_word_embeddings);
            CHECK_STREQ(json_string_value(json_object_get(j, "hidden_act")), "silu");
            CHECK_STREQ(json_string_value(json_object_get(j, "torch_dtype")), "float32");
            const json_t *rs = json_object_get(j, "rope_scaling");
            CHECK_EQ(json_is_object(rs), c->rope_llama3);
            if (c->rope_llama3)
                CHECK_STREQ(json_string_value(json_object_get(rs, "rope_type")), "llama3");
            CHECK_EQ(json_is_null(json_object_get(j, "bos_token_id")), c->bos_token_id < 0);
            json_decref(j);
        }
        /* the weights: F32, the table's order, Hugging Face names */
        st_file_t f;
        CHECK_OK(st_open(&f, tfile(dir, "model.safetensors")));
        CHECK_EQ(f.n_tensors, m->n_tensors);
        CHECK(st_find(&f, "model.embed_tokens.weight") != NULL);
        CHECK_EQ(st_find(&f, "lm_head.weight") != NULL, !fam_cfgs[k].tie_word_embeddings);
        CHECK_EQ(st_find(&f, "model.layers.1.self_attn.k_proj.bias") != NULL,
                 fam_cfgs[k].attn_bias);
        CHECK_EQ(st_find(&f, "model.layers.1.self_attn.q_norm.weight") != NULL,
                 fam_cfgs[k].qk_norm);
        for (int i = 0; i < f.n_tensors && i < m->n_tensors; i++) {
            CHECK_STREQ(f.tensors[i].name, m->tensors[i].name);
            CHECK_EQ(f.tensors[i].dtype, ST_F32);
        }
        st_close(&f);
        gpt_destroy(&m);
        rm_model_dir(dir);
    }
}

static void half_save(int k, hf_dtype_t dt) {
    const char *dir = tdir(dt == HF_BF16 ? "fam-bf16" : "fam-f16");
    gpt_t *m = make_fam_model(k), *m2;
    hf_save_opts_t o = {.dtype = dt};
    CHECK_OK(hf_save_opts(m, dir, &o));
    st_file_t f;
    CHECK_OK(st_open(&f, tfile(dir, "model.safetensors")));
    for (int i = 0; i < f.n_tensors; i++)
        CHECK_EQ(f.tensors[i].dtype, dt == HF_BF16 ? ST_BF16 : ST_F16);
    st_close(&f);
    m2 = hf_load(dir);
    CHECK(m2 != NULL);
    if (!m2) fprintf(stderr, "  hf_load: %s\n", rl_errmsg());
    if (m2 && m2->num_params == m->num_params) {
        size_t bad = 0, exact = 0;
        for (size_t i = 0; i < m->num_params; i++) {
            float x = m->params_mem[i], v = m2->params_mem[i];
            int ok = dt == HF_BF16 ? test_rounded_ok(x, v, 8, -126, 127)
                                   : test_rounded_ok(x, v, 11, -14, 15);
            if (!ok && bad++ < 5) TEST__FAIL("param %zu: %.9g stored as %.9g", i, x, v);
            exact += x == v;
        }
        CHECK(exact < m->num_params / 2); /* the values really went through 16 bits */
        /* saving the rounded values again changes nothing */
        const char *dir2 = tdir("fam-half-again");
        CHECK_OK(hf_save_opts(m2, dir2, &o));
        gpt_t *m3 = hf_load(dir2);
        CHECK(m3 && !memcmp(m3->params_mem, m2->params_mem, m2->num_params * sizeof(float)));
        gpt_destroy(&m3);
        rm_model_dir(dir2);
    }
    json_error_t jerr;
    json_t *j = json_load_file(tfile(dir, "config.json"), 0, &jerr);
    CHECK_STREQ(json_string_value(json_object_get(j, "torch_dtype")),
                dt == HF_BF16 ? "bfloat16" : "float16");
    json_decref(j);
    gpt_destroy(&m2);
    gpt_destroy(&m);
    rm_model_dir(dir);
}

static void test_llama_bf16_f16_save(void) {
    half_save(0, HF_BF16);
    half_save(2, HF_F16);
}

/* hf_save_opts with a shard size: several shards and an index, loading to the same model; a
 * later one-file save removes the index. */
static void test_sharded_save(void) {
    const char *dir = tdir("sharded");
    gpt_t *m = make_fam_model(2), *m2;
    hf_save_opts_t o = {.dtype = HF_F32, .max_shard_bytes = m->num_params * 4 / 3 + 1};
    CHECK_OK(hf_save_opts(m, dir, &o));
    CHECK(access(tfile(dir, "model.safetensors"), F_OK) != 0);
    CHECK(access(tfile(dir, "model.safetensors.index.json"), F_OK) == 0);
    json_error_t jerr;
    json_t *j = json_load_file(tfile(dir, "model.safetensors.index.json"), 0, &jerr);
    const json_t *map = json_object_get(j, "weight_map");
    CHECK_EQ(json_object_size(map), m->n_tensors);
    const char *last = json_string_value(json_object_get(map, m->tensors[m->n_tensors - 1].name));
    CHECK(last && strstr(last, "-of-0000") != NULL);
    int shards = last ? atoi(strstr(last, "-of-") + 4) : 0;
    CHECK(shards >= 3 && shards <= 5);
    for (int s = 1; s <= shards; s++) {
        char name[64];
        struct stat sb;
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s, shards);
        CHECK(stat(tfile(dir, name), &sb) == 0);
    }
    json_decref(j);
    m2 = hf_load(dir);
    CHECK(m2 != NULL);
    if (!m2) fprintf(stderr, "  hf_load: %s\n", rl_errmsg());
    if (m2) check_same_fam_model(m, m2);
    gpt_destroy(&m2);
    CHECK_OK(hf_save(m, dir));
    CHECK(access(tfile(dir, "model.safetensors.index.json"), F_OK) != 0);
    m2 = hf_load(dir);
    CHECK(m2 != NULL);
    gpt_destroy(&m2);
    gpt_destroy(&m);
    rm_model_dir(dir);
}

enum {
    SH_GOOD,
    SH_MISSING_SHARD,
    SH_TWO_SHARDS,
    SH_MISSING_TENSOR,
    SH_WRONG_SHAPE,
    SH_WRONG_MAP,
    SH_MAP_EXTRA,
    SH_NO_MAP,
    SH_BAD_NAME,
};

/*
 * A sharded directory written by hand, as transformers lays one out: the model's tensors cut
 * into three shards and an index, with one fault. Returns the loaded model (NULL on failure).
 */
static gpt_t *load_sharded(const gpt_t *m, const char *dir, int fault) {
    char names[3][64];
    int n = m->n_tensors, cut[4] = {0, n / 3, 2 * n / 3, n};
    st_wtensor_t *wt = calloc((size_t)n + 1, sizeof *wt);
    json_t *index = json_object(), *map = json_object();
    int victim = n / 3 + 1; /* a weight matrix in shard 2 */
    while (m->tensors[victim].ndim != 2) victim++;
    CHECK_OK(hf_save(m, dir)); /* config.json */
    unlink(tfile(dir, "model.safetensors"));
    for (int s = 0; s < 3; s++) {
        snprintf(names[s], sizeof names[s], "model-%05d-of-00003.safetensors", s + 1);
        int k = 0;
        for (int i = cut[s]; i < cut[s + 1]; i++) {
            const gpt_tensor_t *t = &m->tensors[i];
            if (fault == SH_MISSING_TENSOR && i == victim) continue;
            wt[k] =
                (st_wtensor_t){.name = t->name, .ndim = t->ndim, .data = m->params_mem + t->offset};
            for (int d = 0; d < t->ndim; d++) wt[k].shape[d] = t->shape[d];
            if (fault == SH_WRONG_SHAPE && i == victim)
                wt[k].shape[0] = t->shape[1], wt[k].shape[1] = t->shape[0];
            k++;
            json_object_set_new(
                map, t->name,
                json_string(fault == SH_WRONG_MAP && i == victim ? names[0] : names[s]));
        }
        if (fault == SH_TWO_SHARDS && s == 2) { /* the victim again, in shard 3 */
            const gpt_tensor_t *t = &m->tensors[victim];
            wt[k] = (st_wtensor_t){.name = t->name,
                                   .ndim = 2,
                                   .shape = {t->shape[0], t->shape[1]},
                                   .data = m->params_mem + t->offset};
            k++;
        }
        if (!(fault == SH_MISSING_SHARD && s == 1))
            CHECK_OK(st_write_f32(tfile(dir, names[s]), wt, k, NULL, NULL, 0));
    }
    if (fault == SH_MISSING_TENSOR) json_object_del(map, m->tensors[victim].name);
    if (fault == SH_MAP_EXTRA)
        json_object_set_new(map, "model.layers.7.mlp.up_proj.weight", json_string(names[2]));
    if (fault == SH_BAD_NAME)
        json_object_set_new(map, m->tensors[0].name, json_string("../elsewhere.safetensors"));
    json_object_set_new(index, "metadata", json_pack("{s:I}", "total_size", (json_int_t)0));
    json_object_set_new(index, fault == SH_NO_MAP ? "weightmap" : "weight_map", map);
    CHECK_EQ(json_dump_file(index, tfile(dir, "model.safetensors.index.json"), 0), 0);
    json_decref(index);
    free(wt);
    rl_err_clear();
    return hf_load(dir);
}

static void test_sharded_load_and_faults(void) {
    static const struct {
        int fault;
        const char *want1, *want2;
    } cases[] = {
        {SH_MISSING_SHARD, "model-00002-of-00003.safetensors", "index.json"},
        {SH_TWO_SHARDS, "in two shards", "model-00003-of-00003.safetensors"},
        {SH_MISSING_TENSOR, "missing tensor", NULL},
        {SH_WRONG_SHAPE, "has shape", "config.json"},
        {SH_WRONG_MAP, "weight_map maps it to 'model-00001-of-00003.safetensors'", NULL},
        {SH_MAP_EXTRA, "model.layers.7.mlp.up_proj.weight", "does not have it"},
        {SH_NO_MAP, "weight_map", "index.json"},
        {SH_BAD_NAME, "weight_map['model.embed_tokens.weight']", NULL},
    };
    gpt_t *m = make_fam_model(0), *m2;
    const char *dir = tdir("shards-good");
    m2 = load_sharded(m, dir, SH_GOOD);
    CHECK(m2 != NULL);
    if (!m2) fprintf(stderr, "  hf_load: %s\n", rl_errmsg());
    if (m2) check_same_fam_model(m, m2);
    gpt_destroy(&m2);
    rm_model_dir(dir);
    char victim[96];
    int v = m->n_tensors / 3 + 1;
    while (m->tensors[v].ndim != 2) v++;
    snprintf(victim, sizeof victim, "'%s'", m->tensors[v].name);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "shards-%zu", i);
        dir = tdir(name);
        m2 = load_sharded(m, dir, cases[i].fault);
        CHECK(m2 == NULL);
        const char *msg = rl_errmsg();
        if (!strstr(msg, cases[i].want1) || (cases[i].want2 && !strstr(msg, cases[i].want2)))
            TEST__FAIL("case %zu: message \"%s\" lacks \"%s\" / \"%s\"", i, msg, cases[i].want1,
                       cases[i].want2 ? cases[i].want2 : "");
        /* the message names the tensor where one is at fault */
        int names_victim = cases[i].fault == SH_TWO_SHARDS || cases[i].fault == SH_MISSING_TENSOR ||
                           cases[i].fault == SH_WRONG_SHAPE || cases[i].fault == SH_WRONG_MAP;
        if (names_victim && !strstr(msg, victim))
            TEST__FAIL("case %zu: message \"%s\" does not name %s", i, msg, victim);
        gpt_destroy(&m2);
        rm_model_dir(dir);
    }
    gpt_destroy(&m);
}

/* A tied model's checkpoint may repeat the embedding as lm_head.weight; one that differs is
 * refused. */
static void test_tied_lm_head(void) {
    const char *dir = tdir("tied");
    gpt_t *m = make_fam_model(1), *m2;
    char(*names)[96] = calloc((size_t)m->n_tensors + 1, 96);
    st_wtensor_t *wt = model_wtensors(m, "", names),
                 *all = calloc((size_t)m->n_tensors + 1, sizeof *all);
    const gpt_tensor_t *emb = gpt_tensor_find(m, "model.embed_tokens.weight");
    float *head = malloc(emb->size * sizeof(float));
    memcpy(head, m->params_mem + emb->offset, emb->size * sizeof(float));
    memcpy(all, wt, (size_t)m->n_tensors * sizeof *wt);
    all[m->n_tensors] = (st_wtensor_t){
        .name = "lm_head.weight", .ndim = 2, .shape = {emb->shape[0], emb->shape[1]}, .data = head};
    CHECK_OK(hf_save(m, dir));
    CHECK_OK(st_write_f32(tfile(dir, "model.safetensors"), all, m->n_tensors + 1, NULL, NULL, 0));
    m2 = hf_load(dir);
    CHECK(m2 != NULL);
    gpt_destroy(&m2);
    head[5] += 0.25f;
    CHECK_OK(st_write_f32(tfile(dir, "model.safetensors"), all, m->n_tensors + 1, NULL, NULL, 0));
    m2 = hf_load(dir);
    CHECK(m2 == NULL);
    CHECK(strstr(rl_errmsg(), "lm_head.weight differs from model.embed_tokens.weight") != NULL);
    /* and an untied model without its lm_head is missing a tensor */
    gpt_destroy(&m);
    m = make_fam_model(0);
    free(wt);
    wt = model_wtensors(m, "", names);
    int n = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(wt[i].name, "lm_head.weight") != 0) all[n++] = wt[i];
    CHECK_OK(hf_save(m, dir));
    CHECK_OK(st_write_f32(tfile(dir, "model.safetensors"), all, n, NULL, NULL, 0));
    m2 = hf_load(dir);
    CHECK(m2 == NULL);
    CHECK(strstr(rl_errmsg(), "missing tensor 'lm_head.weight'") != NULL);
    gpt_destroy(&m);
    free(head), free(all), free(wt), free(names);
    rm_model_dir(dir);
}

static void test_real_llama_configs(void) {
    /* SmolLM2-135M's config.json on the Hugging Face hub */
    const char *smol =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false,"
        " \"attention_dropout\": 0.0, \"bos_token_id\": 0, \"eos_token_id\": 0,"
        " \"hidden_act\": \"silu\", \"hidden_size\": 576, \"initializer_range\": "
        "0.041666666666666664,"
        " \"intermediate_size\": 1536, \"is_llama_config\": true, \"max_position_embeddings\": "
        "8192,"
        " \"model_type\": \"llama\", \"num_attention_heads\": 9, \"num_hidden_layers\": 30,"
        " \"num_key_value_heads\": 3, \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05,"
        " \"rope_interleaved\": false, \"rope_scaling\": null, \"rope_theta\": 100000,"
        " \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\","
        " \"transformers_version\": \"4.42.3\", \"use_cache\": true, \"vocab_size\": 49152}";
    gpt_config_t c;
    CHECK_OK(read_config_text(smol, &c));
    CHECK_EQ(c.arch, GPT_ARCH_LLAMA);
    CHECK_EQ(c.n_layer, 30);
    CHECK_EQ(c.n_embd, 576);
    CHECK_EQ(c.n_head, 9);
    CHECK_EQ(c.n_kv_head, 3);
    CHECK_EQ(gpt_head_dim(&c), 64);
    CHECK_EQ(c.n_inner, 1536);
    CHECK_EQ(c.vocab_size, 49152);
    CHECK_EQ(c.n_positions, 8192);
    CHECK_EQ(c.tie_word_embeddings, 1);
    CHECK(c.rope_theta == 100000.0f && !c.rope_llama3 && c.layer_norm_epsilon == 1e-5f);
    CHECK_EQ(c.bos_token_id, 0);
    /* Llama 3.2 1B's: rope scaling, an eos list */
    const char *l32 =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, \"bos_token_id\":"
        " 128000, \"eos_token_id\": [128001, 128008, 128009], \"head_dim\": 64, \"hidden_act\":"
        " \"silu\", \"hidden_size\": 2048, \"intermediate_size\": 8192,"
        " \"max_position_embeddings\": 131072, \"mlp_bias\": false, \"model_type\": \"llama\","
        " \"num_attention_heads\": 32, \"num_hidden_layers\": 16, \"num_key_value_heads\": 8,"
        " \"rms_norm_eps\": 1e-05, \"rope_scaling\": {\"factor\": 32.0, \"high_freq_factor\":"
        " 4.0, \"low_freq_factor\": 1.0, \"original_max_position_embeddings\": 8192,"
        " \"rope_type\": \"llama3\"}, \"rope_theta\": 500000.0, \"tie_word_embeddings\": true,"
        " \"torch_dtype\": \"bfloat16\", \"vocab_size\": 128256}";
    CHECK_OK(read_config_text(l32, &c));
    CHECK(c.rope_llama3 && c.rope_factor == 32.0f && c.rope_original_max_pos == 8192);
    CHECK_EQ(c.head_dim, 0); /* 64 = 2048 / 32: the default */
    CHECK_EQ(c.eos_token_id, 128001);
    /* Qwen3-0.6B's shape: head_dim 128 on 16 heads of a 1024 width */
    const char *q3 =
        "{\"architectures\": [\"Qwen3ForCausalLM\"], \"attention_bias\": false, \"head_dim\": 128,"
        " \"hidden_act\": \"silu\", \"hidden_size\": 1024, \"intermediate_size\": 3072,"
        " \"max_position_embeddings\": 40960, \"model_type\": \"qwen3\", \"num_attention_heads\":"
        " 16, \"num_hidden_layers\": 28, \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-06,"
        " \"rope_scaling\": null, \"rope_theta\": 1000000, \"sliding_window\": null,"
        " \"tie_word_embeddings\": true, \"use_sliding_window\": false, \"vocab_size\": 151936}";
    CHECK_OK(read_config_text(q3, &c));
    CHECK(c.arch == GPT_ARCH_QWEN3 && c.qk_norm && !c.attn_bias && c.head_dim == 128);
    const char *q2 =
        "{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_act\": \"silu\", \"hidden_size\":"
        " 896, \"intermediate_size\": 4864, \"max_position_embeddings\": 32768, \"model_type\":"
        " \"qwen2\", \"num_attention_heads\": 14, \"num_hidden_layers\": 24,"
        " \"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0,"
        " \"sliding_window\": 32768, \"tie_word_embeddings\": true, \"use_sliding_window\":"
        " false, \"vocab_size\": 151936}";
    CHECK_OK(read_config_text(q2, &c));
    CHECK(c.arch == GPT_ARCH_QWEN2 && c.attn_bias && !c.qk_norm && gpt_head_dim(&c) == 64);
}

static void test_bad_llama_config(void) {
#define LL                                                                                         \
    "{\"model_type\":\"llama\",\"hidden_size\":8,\"intermediate_size\":12,"                        \
    "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"vocab_size\":5,"                          \
    "\"max_position_embeddings\":16"
    static const struct {
        const char *text;
        int code;
        const char *want;
    } cases[] = {
        {"{\"model_type\":\"llama\",\"hidden_size\":8}", RL_EFORMAT,
         "missing required key 'intermediate_size'"},
        {LL ",\"hidden_act\":\"gelu\"}", RL_EUNSUPPORTED, "hidden_act gelu"},
        {LL ",\"attention_bias\":true}", RL_EUNSUPPORTED, "attention_bias"},
        {LL ",\"mlp_bias\":true}", RL_EUNSUPPORTED, "mlp_bias"},
        {LL ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}}", RL_EUNSUPPORTED,
         "rope_type 'yarn'"},
        {LL ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0}}", RL_EFORMAT,
         "rope_scaling.low_freq_factor"},
        {LL ",\"num_key_value_heads\":3}", RL_EINVAL, "num_key_value_heads=3"},
        {LL ",\"head_dim\":3}", RL_EINVAL, "even"},
        {LL ",\"tie_word_embeddings\":1}", RL_EFORMAT, "'tie_word_embeddings' must be a boolean"},
        {LL ",\"rope_theta\":\"big\"}", RL_EFORMAT, "'rope_theta' must be a number"},
        {LL ",\"model_type\":\"mistral\"}", RL_EFORMAT, "duplicate"},
        {"{\"model_type\":\"mistral\"}", RL_EUNSUPPORTED, "model_type 'mistral'"},
    };
#undef LL
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gpt_config_t cfg;
        int rc = read_config_text(cases[i].text, &cfg);
        if (rc != cases[i].code)
            TEST__FAIL("case %zu: got %d (%s), want %d: %s", i, rc, rl_strerror(rc), cases[i].code,
                       rl_errmsg());
        if (!strstr(rl_errmsg(), cases[i].want) || !strstr(rl_errmsg(), "config.json"))
            TEST__FAIL("case %zu: message \"%s\" lacks \"%s\" or the file name", i, rl_errmsg(),
                       cases[i].want);
    }
}

int main(void) {
    RUN(test_roundtrip_plain);
    RUN(test_roundtrip_scalar_head);
    RUN(test_hf_layout);
    RUN(test_f16_model);
    RUN(test_bf16_model);
    RUN(test_missing_tensor);
    RUN(test_wrong_shape);
    RUN(test_unknown_tensor);
    RUN(test_both_prefixes);
    RUN(test_unconvertible_dtype);
    RUN(test_missing_files);
    RUN(test_real_gpt2_config);
    RUN(test_bad_config);
    RUN(test_mixed_saves_refused);
    RUN(test_copy_tokenizer);
    RUN(test_llama_roundtrip);
    RUN(test_llama_bf16_f16_save);
    RUN(test_sharded_save);
    RUN(test_sharded_load_and_faults);
    RUN(test_tied_lm_head);
    RUN(test_real_llama_configs);
    RUN(test_bad_llama_config);
    rmdir(test_tmpdir());
    return TEST_REPORT();
}
