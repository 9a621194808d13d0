/*
 * hf.c - Hugging Face model directories, GPT-2 and the Llama family (see hf.h).
 *
 * config.json is parsed with jansson; keys we do not model are ignored unless they would change
 * the network's math, in which case loading fails rather than silently computing something
 * else. Tensors are matched by name (GPT-2's with or without the "transformer." prefix that
 * GPT2LMHeadModel checkpoints use); shapes must match the config exactly, and every tensor in
 * the files must be either a model tensor or one of the known redundant HF entries. The weights
 * come from one file or from shards; both are a list of open safetensors files (hf_src_t) in
 * which a name is found at most once.
 */
#include "nn/hf.h"

#include <errno.h>
#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "nn/st.h"

#define HF_PATH_MAX    4096
#define HF_META_CONFIG "rlhf_config" /* safetensors metadata key: the config.json text */
#define HF_INDEX       "model.safetensors.index.json"

/* model_type, architectures[0] and the family's name in messages, by gpt_arch_t */
static const struct {
    const char *model_type, *architecture;
} hf_archs[] = {
    [GPT_ARCH_GPT2] = {"gpt2", "GPT2LMHeadModel"},
    [GPT_ARCH_LLAMA] = {"llama", "LlamaForCausalLM"},
    [GPT_ARCH_QWEN2] = {"qwen2", "Qwen2ForCausalLM"},
    [GPT_ARCH_QWEN3] = {"qwen3", "Qwen3ForCausalLM"},
};
#define HF_N_ARCHS ((int)(sizeof hf_archs / sizeof hf_archs[0]))

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

static int hf_cfg_parse_gpt2(const char *path, const json_t *root, gpt_config_t *cfg) {
    static const char *const int_keys[] = {"n_layer", "n_head", "n_embd", "vocab_size",
                                           "n_positions"};
    int *const int_dst[] = {&cfg->n_layer, &cfg->n_head, &cfg->n_embd, &cfg->vocab_size,
                            &cfg->n_positions};
    const json_t *j;
    int rc;

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

    return 0;
}

/* Optional number `key` into *out (left alone when absent or null). */
static int hf_cfg_real(const char *path, const json_t *obj, const char *key, float *out) {
    const json_t *j = json_object_get(obj, key);
    if (!j || json_is_null(j)) return 0;
    if (!json_is_number(j)) return rl_fail(RL_EFORMAT, "%s: key '%s' must be a number", path, key);
    double v = json_number_value(j);
    if (!(fabs(v) <= FLT_MAX))
        return rl_fail(RL_EFORMAT, "%s: key '%s' = %g is out of range", path, key, v);
    *out = (float)v;
    return 0;
}

/* Optional boolean `key` into *out. */
static int hf_cfg_flag(const char *path, const json_t *obj, const char *key, int *out) {
    const json_t *j = json_object_get(obj, key);
    if (!j || json_is_null(j)) return 0;
    if (!json_is_boolean(j))
        return rl_fail(RL_EFORMAT, "%s: key '%s' must be a boolean", path, key);
    *out = json_is_true(j);
    return 0;
}

/* Optional token id `key` (an integer, or a list whose first one is taken) into *out. */
static int hf_cfg_token(const char *path, const json_t *root, const char *key, int *out) {
    const json_t *j = json_object_get(root, key);
    *out = -1;
    if (json_is_array(j)) j = json_array_get(j, 0);
    if (!j || json_is_null(j)) return 0;
    if (!json_is_integer(j) || json_integer_value(j) < 0 || json_integer_value(j) > INT_MAX)
        return rl_fail(RL_EFORMAT, "%s: key '%s' must be a token id", path, key);
    *out = (int)json_integer_value(j);
    return 0;
}

/* rope_scaling: null, rope_type "default", or Llama 3's. */
static int hf_cfg_rope_scaling(const char *path, const json_t *j, gpt_config_t *cfg) {
    if (!j || json_is_null(j)) return 0;
    if (!json_is_object(j))
        return rl_fail(RL_EFORMAT, "%s: key 'rope_scaling' must be an object or null", path);
    const json_t *t = json_object_get(j, "rope_type");
    if (!t) t = json_object_get(j, "type");
    if (!json_is_string(t))
        return rl_fail(RL_EFORMAT, "%s: key 'rope_scaling.rope_type' must be a string", path);
    if (strcmp(json_string_value(t), "default") == 0) return 0;
    if (strcmp(json_string_value(t), "llama3") != 0)
        return rl_fail(RL_EUNSUPPORTED,
                       "%s: rope_scaling.rope_type '%s' is not supported (only llama3)", path,
                       json_string_value(t));
    static const char *const keys[] = {"factor", "low_freq_factor", "high_freq_factor"};
    float *dst[] = {&cfg->rope_factor, &cfg->rope_low_freq_factor, &cfg->rope_high_freq_factor};
    int rc;
    for (int i = 0; i < 3; i++) {
        if (!json_object_get(j, keys[i]))
            return rl_fail(RL_EFORMAT, "%s: missing required key 'rope_scaling.%s'", path, keys[i]);
        if ((rc = hf_cfg_real(path, j, keys[i], dst[i])) < 0) return rc;
    }
    if ((rc = hf_cfg_int(path, j, "original_max_position_embeddings",
                         &cfg->rope_original_max_pos)) < 0)
        return rl_fail_ctx(rc, "rope_scaling");
    cfg->rope_llama3 = 1;
    return 0;
}

static int hf_cfg_parse_llama(const char *path, const json_t *root, gpt_config_t *cfg) {
    static const char *const int_keys[] = {"hidden_size",       "intermediate_size",
                                           "num_hidden_layers", "num_attention_heads",
                                           "vocab_size",        "max_position_embeddings"};
    int *const int_dst[] = {&cfg->n_embd, &cfg->n_inner,    &cfg->n_layer,
                            &cfg->n_head, &cfg->vocab_size, &cfg->n_positions};
    const json_t *j;
    int rc;
    for (size_t i = 0; i < sizeof int_keys / sizeof int_keys[0]; i++)
        if ((rc = hf_cfg_int(path, root, int_keys[i], int_dst[i])) < 0) return rc;
    cfg->n_kv_head = cfg->n_head;
    j = json_object_get(root, "num_key_value_heads");
    if (j && !json_is_null(j) &&
        (rc = hf_cfg_int(path, root, "num_key_value_heads", &cfg->n_kv_head)) < 0)
        return rc;
    j = json_object_get(root, "head_dim");
    if (j && !json_is_null(j)) {
        if ((rc = hf_cfg_int(path, root, "head_dim", &cfg->head_dim)) < 0) return rc;
        /* the default written out is no choice: keep configs comparable */
        if (cfg->n_embd % cfg->n_head == 0 && cfg->head_dim == cfg->n_embd / cfg->n_head)
            cfg->head_dim = 0;
    }
    cfg->layer_norm_epsilon = 1e-6f;
    cfg->rope_theta = 10000.0f;
    if ((rc = hf_cfg_real(path, root, "rms_norm_eps", &cfg->layer_norm_epsilon)) < 0 ||
        (rc = hf_cfg_real(path, root, "rope_theta", &cfg->rope_theta)) < 0 ||
        (rc = hf_cfg_rope_scaling(path, json_object_get(root, "rope_scaling"), cfg)) < 0 ||
        (rc = hf_cfg_flag(path, root, "tie_word_embeddings", &cfg->tie_word_embeddings)) < 0 ||
        (rc = hf_cfg_token(path, root, "bos_token_id", &cfg->bos_token_id)) < 0 ||
        (rc = hf_cfg_token(path, root, "eos_token_id", &cfg->eos_token_id)) < 0)
        return rc;
    j = json_object_get(root, "hidden_act");
    if (j && (!json_is_string(j) || strcmp(json_string_value(j), "silu") != 0))
        return rl_fail(RL_EUNSUPPORTED, "%s: hidden_act %s is not supported (only silu)", path,
                       json_is_string(j) ? json_string_value(j) : "(not a string)");
    /* Llama's and Qwen3's attention_bias puts a bias on o_proj too, which we do not have;
     * Qwen2 always has q/k/v biases and never one on o_proj */
    if (cfg->arch == GPT_ARCH_QWEN2) {
        cfg->attn_bias = 1;
    } else if ((rc = hf_cfg_bool(path, root, "attention_bias", 0)) < 0) {
        return rc;
    }
    if ((rc = hf_cfg_bool(path, root, "mlp_bias", 0)) < 0 ||
        (rc = hf_cfg_bool(path, root, "use_sliding_window", 0)) < 0)
        return rc;
    cfg->qk_norm = cfg->arch == GPT_ARCH_QWEN3;
    return 0;
}

static int hf_cfg_parse(const char *path, const json_t *root, gpt_config_t *cfg) {
    const json_t *j;
    int rc;
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(root)) return rl_fail(RL_EFORMAT, "%s: not a JSON object", path);
    j = json_object_get(root, "model_type");
    if (j) {
        int a = HF_N_ARCHS;
        if (json_is_string(j))
            for (a = 0; a < HF_N_ARCHS; a++)
                if (strcmp(json_string_value(j), hf_archs[a].model_type) == 0) break;
        if (a == HF_N_ARCHS)
            return rl_fail(RL_EUNSUPPORTED,
                           "%s: model_type %s%s%s is not supported (gpt2, llama, qwen2, qwen3)",
                           path, json_is_string(j) ? "'" : "",
                           json_is_string(j) ? json_string_value(j) : "(not a string)",
                           json_is_string(j) ? "'" : "");
        cfg->arch = a;
    }
    rc = cfg->arch == GPT_ARCH_GPT2 ? hf_cfg_parse_gpt2(path, root, cfg)
                                    : hf_cfg_parse_llama(path, root, cfg);
    if (rc < 0) return rc;
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

/* Redundant entries of HF checkpoints: GPT-2's causal-mask buffers and its LM head tied to wte
 * (checked by hf_check_tied_head), old Llama checkpoints' rotary buffers, a tied model's
 * lm_head (checked the same way). */
static int hf_is_skipped(const gpt_config_t *cfg, const char *name) {
    static const char *const gpt2_suffixes[] = {".attn.bias", ".attn.masked_bias"};
    static const char *const llama_suffixes[] = {".self_attn.rotary_emb.inv_freq"};
    int gpt2 = cfg->arch == GPT_ARCH_GPT2;
    const char *const *suffixes = gpt2 ? gpt2_suffixes : llama_suffixes;
    size_t n = strlen(name), ns = gpt2 ? 2 : 1;
    if (strcmp(name, "lm_head.weight") == 0 && (gpt2 || cfg->tie_word_embeddings)) return 1;
    for (size_t i = 0; i < ns; i++) {
        size_t sl = strlen(suffixes[i]);
        if (n >= sl && strcmp(name + n - sl, suffixes[i]) == 0) return 1;
    }
    return 0;
}

/* The weights of a directory: one safetensors file, or the shards of an index. */
typedef struct {
    st_file_t *files;
    int n_files;
} hf_src_t;

static void hf_src_close(hf_src_t *s) {
    for (int i = 0; i < s->n_files; i++) st_close(&s->files[i]);
    free(s->files);
    memset(s, 0, sizeof *s);
}

/* The tensor `name` in any file of s (a name is in at most one: hf_src_open checks), or NULL. */
static const st_tensor_t *hf_src_find(const hf_src_t *s, const char *name, const st_file_t **f) {
    for (int i = 0; i < s->n_files; i++) {
        const st_tensor_t *t = st_find(&s->files[i], name);
        if (t) {
            if (f) *f = &s->files[i];
            return t;
        }
    }
    return NULL;
}

/* A shard's file name from an index: a plain name in the directory, nothing else. */
static int hf_shard_name_ok(const char *n) {
    size_t len = strlen(n), sl = strlen(".safetensors");
    return len > sl && !strchr(n, '/') && n[0] != '.' && strcmp(n + len - sl, ".safetensors") == 0;
}

/* Opens the shards named by DIR/model.safetensors.index.json (path: its path) and checks that
 * the index and the shards agree tensor by tensor. */
static int hf_src_open_index(hf_src_t *s, const char *dir, const char *path) {
    char *text = NULL, fpath[HF_PATH_MAX];
    size_t len;
    json_error_t jerr;
    const char *key;
    json_t *v;
    int rc = fs_read_file(path, 256u << 20, &text, &len);
    if (rc < 0) return rc;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return rl_fail(RL_EFORMAT, "%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
    const json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map) || json_object_size(map) == 0) {
        rc = rl_fail(RL_EFORMAT, "%s: no 'weight_map' object naming the tensors' shards", path);
        goto done;
    }
    /* the shards, each once, in order of first mention */
    const char **names = calloc(json_object_size(map), sizeof *names);
    s->files = calloc(json_object_size(map), sizeof *s->files);
    if (!names || !s->files) {
        free(names);
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    int n_names = 0;
    json_object_foreach((json_t *)map, key, v) {
        if (!json_is_string(v) || !hf_shard_name_ok(json_string_value(v))) {
            rc = rl_fail(RL_EFORMAT,
                         "%s: weight_map['%s'] must be the name of a .safetensors file in the "
                         "directory",
                         path, key);
            free(names);
            goto done;
        }
        int k = 0;
        while (k < n_names && strcmp(names[k], json_string_value(v)) != 0) k++;
        if (k == n_names) names[n_names++] = json_string_value(v);
    }
    for (int k = 0; k < n_names; k++) {
        if ((rc = hf_path(fpath, sizeof fpath, dir, names[k])) < 0 ||
            (rc = st_open(&s->files[k], fpath)) < 0) {
            rc = rl_fail_ctx(rc, "%s: shard '%s'", path, names[k]);
            free(names);
            goto done;
        }
        s->n_files++;
        /* every tensor of the shard: in no earlier shard, and mapped to this one */
        const st_file_t *f = &s->files[k];
        for (int i = 0; i < f->n_tensors; i++) {
            const char *tn = f->tensors[i].name;
            const json_t *to = json_object_get(map, tn);
            for (int e = 0; e < k; e++)
                if (st_find(&s->files[e], tn)) {
                    rc = rl_fail(RL_EFORMAT, "%s: tensor '%s' is in two shards, '%s' and '%s'",
                                 path, tn, names[e], names[k]);
                    free(names);
                    goto done;
                }
            if (!to || strcmp(json_string_value(to), names[k]) != 0) {
                rc = rl_fail(RL_EFORMAT, "%s: tensor '%s' is in shard '%s' but weight_map %s%s%s",
                             path, tn, names[k], to ? "maps it to '" : "does not name it",
                             to ? json_string_value(to) : "", to ? "'" : "");
                free(names);
                goto done;
            }
        }
    }
    free(names);
    /* and every mapped tensor is there */
    json_object_foreach((json_t *)map, key, v) {
        const st_file_t *f = NULL;
        if (!hf_src_find(s, key, &f)) {
            rc = rl_fail(RL_EFORMAT,
                         "%s: weight_map names tensor '%s' in shard '%s', which does "
                         "not have it",
                         path, key, json_string_value(v));
            goto done;
        }
    }
    rc = 0;
done:
    json_decref(root);
    if (rc < 0) hf_src_close(s);
    return rc;
}

/* Opens the weights of `dir`: model.safetensors, else the index's shards. */
static int hf_src_open(hf_src_t *s, const char *dir) {
    char path[HF_PATH_MAX];
    int rc;
    memset(s, 0, sizeof *s);
    if ((rc = hf_path(path, sizeof path, dir, "model.safetensors")) < 0) return rc;
    if (access(path, F_OK) != 0) {
        char ipath[HF_PATH_MAX];
        if ((rc = hf_path(ipath, sizeof ipath, dir, HF_INDEX)) < 0) return rc;
        if (access(ipath, F_OK) == 0) return hf_src_open_index(s, dir, ipath);
    }
    if (!(s->files = calloc(1, sizeof *s->files))) return rl_fail(RL_ENOMEM, "%s", path);
    if ((rc = st_open(&s->files[0], path)) < 0) {
        hf_src_close(s);
        return rc;
    }
    s->n_files = 1;
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
    /* both parsed by hf_cfg_parse, which zeroes first; the struct has no padding */
    const char *base = strrchr(f->path, '/');
    if (memcmp(&saved, cfg, sizeof saved) != 0)
        return rl_fail(RL_EFORMAT,
                       "%s: config.json does not match the config %s was saved with (an "
                       "interrupted save?)",
                       dir, base ? base + 1 : f->path);
    return 0;
}

/*
 * A checkpoint may carry lm_head.weight although the model ties it to the embedding (GPT-2
 * always; the Llama family with tie_word_embeddings). We compute logits with the embedding, so a
 * head that differs would silently be a different model: refuse it instead.
 */
static int hf_check_tied_head(const gpt_t *m, const hf_src_t *s) {
    const st_file_t *f = NULL;
    const st_tensor_t *t = hf_src_find(s, "lm_head.weight", &f);
    int gpt2 = m->cfg.arch == GPT_ARCH_GPT2;
    if (!t || !(gpt2 || m->cfg.tie_word_embeddings)) return 0;
    const char *emb = gpt2 ? "wte.weight" : "model.embed_tokens.weight";
    const gpt_tensor_t *wte = gpt_tensor_find(m, emb);
    if (t->ndim != 2 || t->shape[0] != wte->shape[0] || t->shape[1] != wte->shape[1])
        return rl_fail(RL_EFORMAT, "%s: tensor 'lm_head.weight' does not have the shape of %s",
                       f->path, emb);
    float *head = malloc(wte->size * sizeof(float));
    if (!head) return rl_fail(RL_ENOMEM, "%s: lm_head.weight", f->path);
    int rc = st_tensor_to_f32(f, t, head, wte->size);
    if (rc == 0 && memcmp(head, m->params_mem + wte->offset, wte->size * sizeof(float)) != 0)
        rc = gpt2 ? rl_fail(RL_EUNSUPPORTED,
                            "%s: lm_head.weight differs from wte.weight (an untied LM head is "
                            "not supported: GPT-2 ties them)",
                            f->path)
                  : rl_fail(RL_EFORMAT,
                            "%s: lm_head.weight differs from model.embed_tokens.weight, but "
                            "config.json says tie_word_embeddings",
                            f->path);
    free(head);
    return rc;
}

/* Finds, checks and converts model tensor `mt` from the weights. The shapes it expects come
 * from DIR/config.json, which a wrong shape names: config and weights disagree. */
static int hf_load_tensor(gpt_t *m, const hf_src_t *s, const gpt_tensor_t *mt, const char *dir) {
    char pref[96], want[64], got[256];
    const st_file_t *fa = NULL, *fb = NULL;
    const st_tensor_t *a, *b = NULL, *t;
    int64_t shape[2] = {mt->shape[0], mt->shape[1]};

    a = hf_src_find(s, mt->name, &fa);
    if (m->cfg.arch == GPT_ARCH_GPT2) {
        snprintf(pref, sizeof pref, "transformer.%s", mt->name);
        b = hf_src_find(s, pref, &fb);
    }
    if (a && b)
        return rl_fail(RL_EFORMAT, "%s: tensor '%s' is present both as '%s' and as '%s'", fa->path,
                       mt->name, mt->name, pref);
    t = a ? a : b;
    const st_file_t *f = a ? fa : fb;
    if (!t) return rl_fail(RL_EFORMAT, "%s: missing tensor '%s'", s->files[0].path, mt->name);
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
    gpt_config_t cfg;
    hf_src_t s = {0};
    gpt_t *m = NULL;

    if (!dir) {
        rl_fail(RL_EINVAL, "hf_load: NULL directory");
        return NULL;
    }
    if (hf_config_read(dir, &cfg) < 0) goto fail;
    /* the weights files are validated before the arena their config asks for is allocated */
    if (hf_src_open(&s, dir) < 0) goto fail;
    m = gpt_new(&cfg);
    if (!m) {
        rl_fail_ctx(RL_ENOMEM, "%s", dir);
        goto fail;
    }
    /* Extra tensors first: a file for another config fails naming the first surprise. */
    for (int k = 0; k < s.n_files; k++)
        for (int i = 0; i < s.files[k].n_tensors; i++) {
            const char *name = s.files[k].tensors[i].name;
            const gpt_tensor_t *mt = gpt_tensor_find(m, name);
            if ((mt && (cfg.arch == GPT_ARCH_GPT2 || strcmp(mt->name, name) == 0)) ||
                hf_is_skipped(&cfg, name))
                continue;
            rl_fail(RL_EFORMAT, "%s: unknown tensor '%s' (not in a %s model%s%s)", s.files[k].path,
                    name, hf_archs[cfg.arch].architecture,
                    cfg.scalar_head ? " with a scalar head" : " without a scalar head",
                    cfg.arch == GPT_ARCH_GPT2 ? ""
                    : cfg.tie_word_embeddings ? ", tied embeddings"
                                              : ", untied embeddings");
            goto fail;
        }
    for (int i = 0; i < m->n_tensors; i++)
        if (hf_load_tensor(m, &s, &m->tensors[i], dir) < 0) goto fail;
    if (hf_check_tied_head(m, &s) < 0) goto fail;
    for (int k = 0; k < s.n_files; k++)
        if (hf_check_saved_config(dir, &cfg, &s.files[k]) < 0) goto fail;
    hf_src_close(&s);
    return m;

fail:
    hf_src_close(&s);
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

static const char *const hf_torch_dtypes[] = {"float32", "bfloat16", "float16"};

/* The Llama family's keys into root. */
static int hf_config_json_llama(json_t *root, const gpt_config_t *cfg) {
    int bad = 0;
    json_t *rs = json_null();
    bad |= json_object_set_new(root, "vocab_size", json_integer(cfg->vocab_size));
    bad |= json_object_set_new(root, "hidden_size", json_integer(cfg->n_embd));
    bad |= json_object_set_new(root, "intermediate_size", json_integer(cfg->n_inner));
    bad |= json_object_set_new(root, "num_hidden_layers", json_integer(cfg->n_layer));
    bad |= json_object_set_new(root, "num_attention_heads", json_integer(cfg->n_head));
    bad |= json_object_set_new(root, "num_key_value_heads", json_integer(cfg->n_kv_head));
    bad |= json_object_set_new(root, "head_dim", json_integer(gpt_head_dim(cfg)));
    bad |= json_object_set_new(root, "max_position_embeddings", json_integer(cfg->n_positions));
    bad |= json_object_set_new(root, "rms_norm_eps",
                               json_real(hf_short_real(cfg->layer_norm_epsilon)));
    bad |= json_object_set_new(root, "rope_theta", json_real(hf_short_real(cfg->rope_theta)));
    if (cfg->rope_llama3) {
        bad |= !(rs = json_object());
        bad |= json_object_set_new(rs, "rope_type", json_string("llama3"));
        bad |= json_object_set_new(rs, "factor", json_real(hf_short_real(cfg->rope_factor)));
        bad |= json_object_set_new(rs, "low_freq_factor",
                                   json_real(hf_short_real(cfg->rope_low_freq_factor)));
        bad |= json_object_set_new(rs, "high_freq_factor",
                                   json_real(hf_short_real(cfg->rope_high_freq_factor)));
        bad |= json_object_set_new(rs, "original_max_position_embeddings",
                                   json_integer(cfg->rope_original_max_pos));
    }
    bad |= json_object_set_new(root, "rope_scaling", rs);
    bad |= json_object_set_new(root, "tie_word_embeddings", json_boolean(cfg->tie_word_embeddings));
    if (cfg->arch != GPT_ARCH_QWEN2) /* Qwen2 has q/k/v biases and no such key */
        bad |= json_object_set_new(root, "attention_bias", json_false());
    if (cfg->arch == GPT_ARCH_LLAMA)
        bad |= json_object_set_new(root, "mlp_bias", json_false());
    else
        bad |= json_object_set_new(root, "use_sliding_window", json_false());
    bad |= json_object_set_new(root, "hidden_act", json_string("silu"));
    bad |= json_object_set_new(root, "initializer_range", json_real(0.02));
    bad |= json_object_set_new(root, "attention_dropout", json_real(0.0));
    bad |=
        json_object_set_new(root, "bos_token_id",
                            cfg->bos_token_id >= 0 ? json_integer(cfg->bos_token_id) : json_null());
    bad |=
        json_object_set_new(root, "eos_token_id",
                            cfg->eos_token_id >= 0 ? json_integer(cfg->eos_token_id) : json_null());
    bad |= json_object_set_new(root, "use_cache", json_true());
    return bad;
}

/* config.json text for `cfg` stored as `dt` (malloc'ed), or NULL on ENOMEM. */
static char *hf_config_json(const gpt_config_t *cfg, hf_dtype_t dt) {
    json_t *root = json_object(), *arch = json_array(), *head = NULL;
    char *s = NULL;
    int bad = !root || !arch;

    bad |= json_array_append_new(arch, json_string(hf_archs[cfg->arch].architecture));
    bad |= json_object_set_new(root, "architectures", arch);
    arch = NULL;
    bad |= json_object_set_new(root, "model_type", json_string(hf_archs[cfg->arch].model_type));
    if (cfg->arch != GPT_ARCH_GPT2) {
        bad |= hf_config_json_llama(root, cfg);
        bad |= json_object_set_new(root, "torch_dtype", json_string(hf_torch_dtypes[dt]));
    } else {
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
        if (dt != HF_F32)
            bad |= json_object_set_new(root, "torch_dtype", json_string(hf_torch_dtypes[dt]));
    }
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

/* Removes DIR/FILE if it is there. */
static int hf_remove(const char *dir, const char *file) {
    char path[HF_PATH_MAX];
    int rc = hf_path(path, sizeof path, dir, file);
    if (rc < 0) return rc;
    if (unlink(path) != 0 && errno != ENOENT)
        return rl_fail_errno(RL_EIO, errno, "%s: cannot remove", path);
    return 0;
}

/* The shards of the weights in wt (n tensors), written as model-0000k-of-0000s.safetensors,
 * then the index naming them. */
static int hf_save_shards(const char *dir, const st_wtensor_t *wt, const size_t *bytes, int n,
                          const hf_save_opts_t *o, st_dtype_t dt, const char *const *meta_keys,
                          const char *const *meta_vals) {
    char path[HF_PATH_MAX], name[64];
    int *first = calloc((size_t)n + 1, sizeof *first), n_shards = 0, rc = 0;
    json_t *index = json_object(), *map = json_object(), *meta = json_object();
    size_t total = 0;
    if (!first || !index || !map || !meta) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", dir);
        goto done;
    }
    /* tensors in order; a new shard when the next one would overflow a non-empty one */
    size_t cur = 0;
    for (int i = 0; i < n; i++) {
        if (i == 0 || cur + bytes[i] > o->max_shard_bytes) first[n_shards++] = i, cur = 0;
        cur += bytes[i];
        total += bytes[i];
    }
    first[n_shards] = n;
    for (int k = 0; k < n_shards && rc == 0; k++) {
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1, n_shards);
        if ((rc = hf_path(path, sizeof path, dir, name)) < 0 ||
            (rc = st_write(path, wt + first[k], first[k + 1] - first[k], dt, meta_keys, meta_vals,
                           2)) < 0)
            break;
        for (int i = first[k]; i < first[k + 1]; i++)
            if (json_object_set_new(map, wt[i].name, json_string(name)))
                rc = rl_fail(RL_ENOMEM, "%s: out of memory", dir);
    }
    if (rc < 0) goto done;
    if (json_object_set_new(meta, "total_size", json_integer((json_int_t)total)) ||
        json_object_set(index, "metadata", meta) || json_object_set(index, "weight_map", map)) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", dir);
        goto done;
    }
    char *text = json_dumps(index, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", dir);
        goto done;
    }
    if ((rc = hf_path(path, sizeof path, dir, HF_INDEX)) == 0)
        rc = fs_write_atomic(path, text, strlen(text));
    free(text);
done:
    free(first);
    json_decref(index);
    json_decref(map);
    json_decref(meta);
    return rc;
}

int hf_save(const gpt_t *m, const char *dir) {
    return hf_save_opts(m, dir, NULL);
}

int hf_save_opts(const gpt_t *m, const char *dir, const hf_save_opts_t *o) {
    static const st_dtype_t st_dt[] = {ST_F32, ST_BF16, ST_F16};
    static const hf_save_opts_t defaults = {HF_F32, 0};
    char path[HF_PATH_MAX];
    st_wtensor_t *wt = NULL;
    size_t *bytes = NULL, total = 0;
    char *cfg_text = NULL;
    fs_atomic_t w = {.fd = -1};
    int rc;

    if (!m || !dir) return rl_fail(RL_EINVAL, "hf_save: NULL argument");
    if (!o) o = &defaults;
    if ((unsigned)o->dtype > HF_F16)
        return rl_fail(RL_EINVAL, "hf_save: unknown dtype %d", o->dtype);
    if ((rc = fs_mkdir_p(dir)) < 0) return rc;
    cfg_text = hf_config_json(&m->cfg, o->dtype);
    if (!cfg_text) return rl_fail(RL_ENOMEM, "%s: out of memory", dir);
    /* The weights file carries the config it was written for, so a load can tell a config.json
     * left over from an earlier save (a crash between the two renames) from a matching one. */
    const char *const meta_keys[] = {"format", HF_META_CONFIG};
    const char *const meta_vals[] = {"pt", cfg_text};

    wt = calloc((size_t)(m->n_tensors ? m->n_tensors : 1), sizeof *wt);
    bytes = calloc((size_t)(m->n_tensors ? m->n_tensors : 1), sizeof *bytes);
    if (!wt || !bytes) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const gpt_tensor_t *t = &m->tensors[i];
        wt[i].name = t->name;
        wt[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) wt[i].shape[d] = t->shape[d];
        wt[i].data = m->params_mem + t->offset;
        bytes[i] = t->size * st_dtype_size(st_dt[o->dtype]);
        total += bytes[i];
    }
    if (o->max_shard_bytes && total > o->max_shard_bytes) {
        if ((rc = hf_save_shards(dir, wt, bytes, m->n_tensors, o, st_dt[o->dtype], meta_keys,
                                 meta_vals)) < 0 ||
            (rc = hf_remove(dir, "model.safetensors")) < 0)
            goto fail;
    } else {
        if ((rc = hf_path(path, sizeof path, dir, "model.safetensors")) < 0) goto fail;
        if ((rc = st_write(path, wt, m->n_tensors, st_dt[o->dtype], meta_keys, meta_vals, 2)) < 0 ||
            (rc = hf_remove(dir, HF_INDEX)) < 0)
            goto fail;
    }

    /* config.json last: a directory with a config has its weights. */
    if ((rc = hf_path(path, sizeof path, dir, "config.json")) < 0) goto fail;
    if ((rc = fs_atomic_open(&w, path)) < 0 ||
        (rc = fs_atomic_write(&w, cfg_text, strlen(cfg_text))) < 0 ||
        (rc = fs_atomic_write(&w, "\n", 1)) < 0)
        goto fail;
    rc = fs_atomic_commit(&w);
    free(cfg_text);
    free(wt);
    free(bytes);
    return rc;

fail:
    fs_atomic_abort(&w);
    free(cfg_text);
    free(wt);
    free(bytes);
    return rc;
}

int hf_copy_tokenizer(const char *from, const char *to) {
    /* GPT-2's pair first (both or neither), then the tokenizers library's file and its config */
    static const char *const files[] = {"vocab.json", "merges.txt", "tokenizer.json",
                                        "tokenizer_config.json"};
    enum { N_FILES = sizeof files / sizeof files[0] };
    char src[HF_PATH_MAX], dst[HF_PATH_MAX];
    int present[N_FILES], n = 0, rc;
    for (int i = 0; i < N_FILES; i++) {
        if ((rc = hf_path(src, sizeof src, from, files[i])) < 0) return rc;
        n += present[i] = access(src, F_OK) == 0;
    }
    if (present[0] != present[1])
        return rl_fail(RL_EFORMAT, "%s: has only one of vocab.json and merges.txt", from);
    if (n == 0) return 0;
    if ((rc = fs_mkdir_p(to)) < 0) return rc;
    for (int i = 0; i < N_FILES; i++) {
        if (!present[i]) continue;
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
