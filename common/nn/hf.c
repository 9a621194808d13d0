/*
 * hf.c - Hugging Face GPT-2 model directories (see hf.h).
 *
 * config.json is parsed with jansson; keys we do not model are ignored unless they would change
 * the network's math, in which case loading fails rather than silently computing something
 * else. Tensors are matched by name with or without the "transformer." prefix that
 * GPT2LMHeadModel checkpoints use; shapes must match the config exactly, and every tensor in the
 * file must be either a model tensor or one of the known redundant HF entries.
 */
#include "nn/hf.h"

#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "nn/st.h"

#define HF_PATH_MAX    4096
#define HF_META_CONFIG "rlhf_config" /* safetensors metadata key: the config.json text */

/* DIR/FILE into buf. Returns 0 or RL_EINVAL when it does not fit. */
static int hf_path(char *buf, size_t cap, const char *dir, const char *file) {
    size_t dl = strlen(dir);
    int n = snprintf(buf, cap, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", file);
    if (n < 0 || (size_t)n >= cap) return rl_fail(RL_EINVAL, "%s: path too long", dir);
    return 0;
}

/* Required positive int key `key` of `root` into *out. */
static int hf_cfg_int(const char *path, const json_t *root, const char *key, int *out) {
    const json_t *j = json_object_get(root, key);
    json_int_t v;
    if (!j) return rl_fail(RL_EFORMAT, "%s: missing required key '%s'", path, key);
    if (!json_is_integer(j))
        return rl_fail(RL_EFORMAT, "%s: key '%s' must be an integer", path, key);
    v = json_integer_value(j);
    if (v < 1 || v > INT_MAX)
        return rl_fail(RL_EFORMAT, "%s: key '%s' = %lld is out of range (1 to %d)", path, key,
                       (long long)v, INT_MAX);
    *out = (int)v;
    return 0;
}

/* Optional boolean `key`: must equal `want` if present. */
static int hf_cfg_bool(const char *path, const json_t *root, const char *key, int want) {
    const json_t *j = json_object_get(root, key);
    if (!j || json_is_null(j)) return 0;
    if (!json_is_boolean(j))
        return rl_fail(RL_EFORMAT, "%s: key '%s' must be a boolean", path, key);
    if (json_is_true(j) != want)
        return rl_fail(RL_EUNSUPPORTED, "%s: '%s': %s is not supported", path, key,
                       want ? "false" : "true");
    return 0;
}

/* The "rlhf_scalar_head" object: only the layout hf_save writes is understood. */
static int hf_cfg_head(const char *path, const json_t *h) {
    static const struct {
        const char *key, *val;
    } names[] = {{"weight", "score.weight"}, {"bias", "score.bias"}};
    const json_t *j;
    if (!json_is_object(h))
        return rl_fail(RL_EFORMAT, "%s: key 'rlhf_scalar_head' must be an object", path);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        j = json_object_get(h, names[i].key);
        if (!j) continue;
        if (!json_is_string(j))
            return rl_fail(RL_EFORMAT, "%s: key 'rlhf_scalar_head.%s' must be a string", path,
                           names[i].key);
        if (strcmp(json_string_value(j), names[i].val) != 0)
            return rl_fail(RL_EUNSUPPORTED,
                           "%s: rlhf_scalar_head.%s '%s' is not supported (only '%s')", path,
                           names[i].key, json_string_value(j), names[i].val);
    }
    j = json_object_get(h, "n_out");
    if (j && !json_is_integer(j))
        return rl_fail(RL_EFORMAT, "%s: key 'rlhf_scalar_head.n_out' must be an integer", path);
    if (j && json_integer_value(j) != 1)
        return rl_fail(RL_EUNSUPPORTED,
                       "%s: rlhf_scalar_head.n_out = %lld is not supported (only 1)", path,
                       (long long)json_integer_value(j));
    return 0;
}

static int hf_cfg_parse(const char *path, const json_t *root, gpt_config_t *cfg) {
    static const char *const int_keys[] = {"n_layer", "n_head", "n_embd", "vocab_size",
                                           "n_positions"};
    int *const int_dst[] = {&cfg->n_layer, &cfg->n_head, &cfg->n_embd, &cfg->vocab_size,
                            &cfg->n_positions};
    const json_t *j;
    int rc;

    if (!json_is_object(root)) return rl_fail(RL_EFORMAT, "%s: not a JSON object", path);
    for (size_t i = 0; i < sizeof int_keys / sizeof int_keys[0]; i++)
        if ((rc = hf_cfg_int(path, root, int_keys[i], int_dst[i])) < 0) return rc;

    cfg->layer_norm_epsilon = 1e-5f;
    j = json_object_get(root, "layer_norm_epsilon");
    if (j) {
        double e;
        if (!json_is_number(j))
            return rl_fail(RL_EFORMAT, "%s: key 'layer_norm_epsilon' must be a number", path);
        e = json_number_value(j);
        if (!(e > 0 && e <= FLT_MAX))
            return rl_fail(RL_EFORMAT, "%s: key 'layer_norm_epsilon' = %g is out of range", path,
                           e);
        cfg->layer_norm_epsilon = (float)e;
    }

    j = json_object_get(root, "activation_function");
    if (j) {
        const char *a;
        if (!json_is_string(j))
            return rl_fail(RL_EFORMAT, "%s: key 'activation_function' must be a string", path);
        a = json_string_value(j);
        if (strcmp(a, "gelu_new") != 0 && strcmp(a, "gelu_pytorch_tanh") != 0)
            return rl_fail(RL_EUNSUPPORTED,
                           "%s: activation_function '%s' is not supported (only gelu_new)", path,
                           a);
    }
    j = json_object_get(root, "model_type");
    if (j && (!json_is_string(j) || strcmp(json_string_value(j), "gpt2") != 0))
        return rl_fail(RL_EUNSUPPORTED, "%s: model_type %s%s%s is not supported (only gpt2)", path,
                       json_is_string(j) ? "'" : "",
                       json_is_string(j) ? json_string_value(j) : "(not a string)",
                       json_is_string(j) ? "'" : "");
    j = json_object_get(root, "n_inner");
    if (j && !json_is_null(j)) {
        if (!json_is_integer(j))
            return rl_fail(RL_EFORMAT, "%s: key 'n_inner' must be an integer or null", path);
        if (json_integer_value(j) != 4 * (json_int_t)cfg->n_embd)
            return rl_fail(RL_EUNSUPPORTED, "%s: n_inner = %lld is not supported (only 4*n_embd)",
                           path, (long long)json_integer_value(j));
    }
    if ((rc = hf_cfg_bool(path, root, "scale_attn_weights", 1)) < 0 ||
        (rc = hf_cfg_bool(path, root, "scale_attn_by_inverse_layer_idx", 0)) < 0 ||
        (rc = hf_cfg_bool(path, root, "add_cross_attention", 0)) < 0)
        return rc;

    cfg->scalar_head = 0;
    j = json_object_get(root, "rlhf_scalar_head");
    if (j && !json_is_null(j)) {
        if ((rc = hf_cfg_head(path, j)) < 0) return rc;
        cfg->scalar_head = 1;
    }
    if ((rc = gpt_config_check(cfg)) < 0) return rl_fail_ctx(rc, "%s", path);
    return 0;
}

int hf_config_read(const char *dir, gpt_config_t *cfg) {
    char path[HF_PATH_MAX], *text = NULL;
    size_t len;
    json_error_t jerr;
    json_t *root;
    int rc;

    if (!dir || !cfg) return rl_fail(RL_EINVAL, "hf_config_read: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    if ((rc = hf_path(path, sizeof path, dir, "config.json")) < 0) return rc;
    /* a config.json is a few hundred bytes; anything past 16 MB is not one */
    if ((rc = fs_read_file(path, 16u << 20, &text, &len)) < 0) return rc;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return rl_fail(RL_EFORMAT, "%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
    rc = hf_cfg_parse(path, root, cfg);
    json_decref(root);
    return rc;
}

/* "[768,2304]" for messages. */
static const char *hf_fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

/* Redundant entries of HF checkpoints: causal-mask buffers and the LM head tied to wte. */
static int hf_is_skipped(const char *name) {
    static const char *const suffixes[] = {".attn.bias", ".attn.masked_bias"};
    size_t n = strlen(name);
    if (strcmp(name, "lm_head.weight") == 0) return 1;
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t sl = strlen(suffixes[i]);
        if (n >= sl && strcmp(name + n - sl, suffixes[i]) == 0) return 1;
    }
    return 0;
}

/*
 * Files written by hf_save carry their config in the safetensors metadata. If it disagrees with
 * config.json, the directory is a mix of two saves (a crash between writing the weights and the
 * config): refuse it rather than run weights under a config they were not saved with. Files
 * from elsewhere have no such entry and are not checked.
 */
static int hf_check_saved_config(const char *dir, const gpt_config_t *cfg, const st_file_t *f) {
    const char *text = st_meta_get(f, HF_META_CONFIG);
    if (!text) return 0;
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    gpt_config_t saved;
    int rc = root ? hf_cfg_parse(f->path, root, &saved)
                  : rl_fail(RL_EFORMAT, "%s: metadata '%s' is not JSON: %s", f->path,
                            HF_META_CONFIG, jerr.text);
    json_decref(root);
    if (rc < 0) return rc;
    if (saved.n_layer != cfg->n_layer || saved.n_head != cfg->n_head ||
        saved.n_embd != cfg->n_embd || saved.vocab_size != cfg->vocab_size ||
        saved.n_positions != cfg->n_positions || saved.scalar_head != cfg->scalar_head ||
        saved.layer_norm_epsilon != cfg->layer_norm_epsilon)
        return rl_fail(RL_EFORMAT,
                       "%s: config.json does not match the config model.safetensors was saved "
                       "with (an interrupted save?)",
                       dir);
    return 0;
}

/*
 * A checkpoint may carry lm_head.weight although GPT-2 ties it to wte. We compute logits with
 * wte, so a head that differs would silently be a different model: refuse it instead.
 */
static int hf_check_tied_head(const gpt_t *m, const st_file_t *f) {
    const st_tensor_t *t = st_find(f, "lm_head.weight");
    if (!t) return 0;
    const gpt_tensor_t *wte = gpt_tensor_find(m, "wte.weight");
    if (t->ndim != 2 || t->shape[0] != wte->shape[0] || t->shape[1] != wte->shape[1])
        return rl_fail(RL_EFORMAT, "%s: tensor 'lm_head.weight' does not have the shape of wte",
                       f->path);
    float *head = malloc(wte->size * sizeof(float));
    if (!head) return rl_fail(RL_ENOMEM, "%s: lm_head.weight", f->path);
    int rc = st_tensor_to_f32(f, t, head, wte->size);
    if (rc == 0 && memcmp(head, m->params_mem + wte->offset, wte->size * sizeof(float)) != 0)
        rc = rl_fail(RL_EUNSUPPORTED,
                     "%s: lm_head.weight differs from wte.weight (an untied LM head is not "
                     "supported: GPT-2 ties them)",
                     f->path);
    free(head);
    return rc;
}

/* Finds, checks and converts model tensor `mt` from file `f`. The shapes it expects come from
 * DIR/config.json, which a wrong shape names: config and weights disagree. */
static int hf_load_tensor(gpt_t *m, const st_file_t *f, const gpt_tensor_t *mt, const char *dir) {
    char pref[96], want[64], got[256];
    const st_tensor_t *a, *b, *t;
    int64_t shape[2] = {mt->shape[0], mt->shape[1]};

    snprintf(pref, sizeof pref, "transformer.%s", mt->name);
    a = st_find(f, mt->name);
    b = st_find(f, pref);
    if (a && b)
        return rl_fail(RL_EFORMAT, "%s: tensor '%s' is present both as '%s' and as '%s'", f->path,
                       mt->name, mt->name, pref);
    t = a ? a : b;
    if (!t) return rl_fail(RL_EFORMAT, "%s: missing tensor '%s'", f->path, mt->name);
    if (t->ndim != mt->ndim || t->shape[0] != shape[0] ||
        (mt->ndim == 2 && t->shape[1] != shape[1]))
        return rl_fail(RL_EFORMAT,
                       "%s: tensor '%s' has shape %s, expected %s by %s/config.json (config and "
                       "weights do not match)",
                       f->path, t->name, hf_fmt_shape(got, sizeof got, t->ndim, t->shape),
                       hf_fmt_shape(want, sizeof want, mt->ndim, shape), dir);
    return st_tensor_to_f32(f, t, m->params_mem + mt->offset, mt->size);
}

gpt_t *hf_load(const char *dir) {
    char path[HF_PATH_MAX];
    gpt_config_t cfg;
    st_file_t f;
    gpt_t *m = NULL;

    memset(&f, 0, sizeof f);
    if (!dir) {
        rl_fail(RL_EINVAL, "hf_load: NULL directory");
        return NULL;
    }
    if (hf_config_read(dir, &cfg) < 0) goto fail;
    if (hf_path(path, sizeof path, dir, "model.safetensors") < 0) goto fail;
    /* the weights file is validated before the arena its config asks for is allocated */
    if (st_open(&f, path) < 0) goto fail;
    m = gpt_new(&cfg);
    if (!m) {
        rl_fail_ctx(RL_ENOMEM, "%s", dir);
        goto fail;
    }
    /* Extra tensors first: a file for another config fails naming the first surprise. */
    for (int i = 0; i < f.n_tensors; i++) {
        const char *name = f.tensors[i].name;
        if (gpt_tensor_find(m, name) || hf_is_skipped(name)) continue;
        rl_fail(RL_EFORMAT, "%s: unknown tensor '%s' (not in a GPT-2 model%s)", path, name,
                cfg.scalar_head ? " with a scalar head" : " without a scalar head");
        goto fail;
    }
    for (int i = 0; i < m->n_tensors; i++)
        if (hf_load_tensor(m, &f, &m->tensors[i], dir) < 0) goto fail;
    if (hf_check_tied_head(m, &f) < 0) goto fail;
    if (hf_check_saved_config(dir, &cfg, &f) < 0) goto fail;
    st_close(&f);
    return m;

fail:
    st_close(&f);
    gpt_destroy(&m);
    return NULL;
}

/* The double whose shortest decimal form reads back as `x`, so 1e-5f is written as 1e-05. */
static double hf_short_real(float x) {
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)x);
        if (strtof(buf, NULL) == x) break;
    }
    return strtod(buf, NULL);
}

/* config.json text for `cfg` (malloc'ed), or NULL on ENOMEM. */
static char *hf_config_json(const gpt_config_t *cfg) {
    json_t *root = json_object(), *arch = json_array(), *head = NULL;
    char *s = NULL;
    int bad = !root || !arch;

    bad |= json_array_append_new(arch, json_string("GPT2LMHeadModel"));
    bad |= json_object_set_new(root, "architectures", arch);
    arch = NULL;
    bad |= json_object_set_new(root, "model_type", json_string("gpt2"));
    bad |= json_object_set_new(root, "vocab_size", json_integer(cfg->vocab_size));
    bad |= json_object_set_new(root, "n_positions", json_integer(cfg->n_positions));
    bad |= json_object_set_new(root, "n_ctx", json_integer(cfg->n_positions));
    bad |= json_object_set_new(root, "n_embd", json_integer(cfg->n_embd));
    bad |= json_object_set_new(root, "n_layer", json_integer(cfg->n_layer));
    bad |= json_object_set_new(root, "n_head", json_integer(cfg->n_head));
    bad |= json_object_set_new(root, "n_inner", json_null());
    bad |= json_object_set_new(root, "layer_norm_epsilon",
                               json_real(hf_short_real(cfg->layer_norm_epsilon)));
    bad |= json_object_set_new(root, "activation_function", json_string("gelu_new"));
    bad |= json_object_set_new(root, "initializer_range", json_real(0.02));
    bad |= json_object_set_new(root, "bos_token_id", json_integer(cfg->vocab_size - 1));
    bad |= json_object_set_new(root, "eos_token_id", json_integer(cfg->vocab_size - 1));
    if (cfg->scalar_head) {
        head = json_object();
        bad |= !head;
        bad |= json_object_set_new(head, "weight", json_string("score.weight"));
        bad |= json_object_set_new(head, "bias", json_string("score.bias"));
        bad |= json_object_set_new(head, "n_out", json_integer(1));
        bad |= json_object_set_new(root, "rlhf_scalar_head", head);
    }
    if (!bad) s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(root);
    return s;
}

int hf_save(const gpt_t *m, const char *dir) {
    char path[HF_PATH_MAX];
    st_wtensor_t *wt = NULL;
    char *cfg_text = NULL;
    fs_atomic_t w = {.fd = -1};
    int rc;

    if (!m || !dir) return rl_fail(RL_EINVAL, "hf_save: NULL argument");
    if ((rc = fs_mkdir_p(dir)) < 0) return rc;
    cfg_text = hf_config_json(&m->cfg);
    if (!cfg_text) return rl_fail(RL_ENOMEM, "%s: out of memory", dir);
    /* The weights file carries the config it was written for, so a load can tell a config.json
     * left over from an earlier save (a crash between the two renames) from a matching one. */
    const char *const meta_keys[] = {"format", HF_META_CONFIG};
    const char *const meta_vals[] = {"pt", cfg_text};

    wt = calloc((size_t)(m->n_tensors ? m->n_tensors : 1), sizeof *wt);
    if (!wt) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const gpt_tensor_t *t = &m->tensors[i];
        wt[i].name = t->name;
        wt[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) wt[i].shape[d] = t->shape[d];
        wt[i].data = m->params_mem + t->offset;
    }
    if ((rc = hf_path(path, sizeof path, dir, "model.safetensors")) < 0) goto fail;
    if ((rc = st_write_f32(path, wt, m->n_tensors, meta_keys, meta_vals, 2)) < 0) goto fail;

    /* config.json last: a directory with a config has its weights. */
    if ((rc = hf_path(path, sizeof path, dir, "config.json")) < 0) goto fail;
    if ((rc = fs_atomic_open(&w, path)) < 0 ||
        (rc = fs_atomic_write(&w, cfg_text, strlen(cfg_text))) < 0 ||
        (rc = fs_atomic_write(&w, "\n", 1)) < 0)
        goto fail;
    rc = fs_atomic_commit(&w);
    free(cfg_text);
    free(wt);
    return rc;

fail:
    fs_atomic_abort(&w);
    free(cfg_text);
    free(wt);
    return rc;
}

int hf_copy_tokenizer(const char *from, const char *to) {
    static const char *const files[] = {"vocab.json", "merges.txt"};
    char src[HF_PATH_MAX], dst[HF_PATH_MAX];
    int present = 0, rc;
    for (int i = 0; i < 2; i++) {
        if ((rc = hf_path(src, sizeof src, from, files[i])) < 0) return rc;
        present += access(src, F_OK) == 0;
    }
    if (present == 0) return 0;
    if (present == 1)
        return rl_fail(RL_EFORMAT, "%s: has only one of vocab.json and merges.txt", from);
    if ((rc = fs_mkdir_p(to)) < 0) return rc;
    for (int i = 0; i < 2; i++) {
        char *data = NULL;
        size_t len = 0;
        if ((rc = hf_path(src, sizeof src, from, files[i])) < 0 ||
            (rc = hf_path(dst, sizeof dst, to, files[i])) < 0)
            return rc;
        rc = fs_read_all(src, &data, &len);
        if (rc == 0) rc = fs_write_atomic(dst, data, len);
        free(data);
        if (rc < 0) return rc;
    }
    return 0;
}
