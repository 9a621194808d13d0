/*
 * gpt.c - the model handle: arenas, forward, backward, scalar head (see gpt.h). GPT-2's layers
 * are here; the Llama family's are in llama.c, called where cfg.arch says so.
 */
#include "nn/gpt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/rng.h"
#include "nn/llama.h"
#include "nn/ops.h"

int gpt_config_check(const gpt_config_t *c) {
    if (c->arch != GPT_ARCH_GPT2) return llama__config_check(c);
    if (c->n_layer < 1 || c->n_head < 1 || c->n_embd < 1 || c->vocab_size < 1 || c->n_positions < 1)
        return rl_fail(RL_EINVAL,
                       "model config: sizes must be positive (n_layer=%d n_head=%d n_embd=%d "
                       "vocab_size=%d n_positions=%d)",
                       c->n_layer, c->n_head, c->n_embd, c->vocab_size, c->n_positions);
    if (c->n_embd % c->n_head != 0)
        return rl_fail(RL_EINVAL, "model config: n_embd=%d is not divisible by n_head=%d",
                       c->n_embd, c->n_head);
    if (!(c->layer_norm_epsilon > 0.0f) || !isfinite(c->layer_norm_epsilon))
        return rl_fail(RL_EINVAL, "model config: layer_norm_epsilon must be positive");
    /* Arena offsets are size_t, but kernels index rows and per-layer offsets with int: keep
     * every int product (4C, V*C, P*C) and the parameter count far from overflow. */
    if (c->n_embd > (1 << 20) || c->n_layer > (1 << 16))
        return rl_fail(RL_EINVAL, "model config: n_embd=%d or n_layer=%d too large", c->n_embd,
                       c->n_layer);
    if ((double)c->vocab_size * c->n_embd > 2e9 || (double)c->n_positions * c->n_embd > 2e9)
        return rl_fail(RL_EINVAL, "model config: embedding tables too large");
    double params = 12.0 * c->n_layer * (double)c->n_embd * c->n_embd;
    if (params > 1e12)
        return rl_fail(RL_EINVAL, "model config: %.3g parameters is beyond any machine", params);
    return 0;
}

static void param_sizes(const gpt_config_t *cfg, size_t *s) {
    if (cfg->arch != GPT_ARCH_GPT2) {
        llama__param_sizes(cfg, s);
        return;
    }
    size_t L = cfg->n_layer, C = cfg->n_embd, V = cfg->vocab_size, P = cfg->n_positions;
    s[GPT_WTE] = V * C;
    s[GPT_WPE] = P * C;
    s[GPT_LN1W] = L * C;
    s[GPT_LN1B] = L * C;
    s[GPT_QKVW] = L * C * 3 * C;
    s[GPT_QKVB] = L * 3 * C;
    s[GPT_ATTPROJW] = L * C * C;
    s[GPT_ATTPROJB] = L * C;
    s[GPT_LN2W] = L * C;
    s[GPT_LN2B] = L * C;
    s[GPT_FCW] = L * C * 4 * C;
    s[GPT_FCB] = L * 4 * C;
    s[GPT_FCPROJW] = L * 4 * C * C;
    s[GPT_FCPROJB] = L * C;
    s[GPT_LNFW] = C;
    s[GPT_LNFB] = C;
    s[GPT_HEADW] = cfg->scalar_head ? C : 0;
    s[GPT_HEADB] = cfg->scalar_head ? 1 : 0;
    s[GPT_QNORMW] = s[GPT_KNORMW] = s[GPT_LMHEADW] = 0;
}

/* Points the kind pointers of `p` into `mem` (kinds laid out back to back). */
static void point_params(gpt_params_t *p, float *mem, const size_t *sizes) {
    float **ptrs = (float **)p; /* gpt_params_t is GPT_NKINDS float pointers in enum order */
    for (int i = 0; i < GPT_NKINDS; i++) {
        ptrs[i] = sizes[i] ? mem : NULL;
        mem += sizes[i];
    }
}

/* Per-layer kinds: HF suffix, kind, shape as multiples of C (rows, cols; cols 0 = 1-D). */
static const struct {
    const char *suffix;
    int kind, rows, cols;
} layer_tensors[] = {
    {"ln_1.weight", GPT_LN1W, 1, 0},
    {"ln_1.bias", GPT_LN1B, 1, 0},
    {"attn.c_attn.weight", GPT_QKVW, 1, 3},
    {"attn.c_attn.bias", GPT_QKVB, 3, 0},
    {"attn.c_proj.weight", GPT_ATTPROJW, 1, 1},
    {"attn.c_proj.bias", GPT_ATTPROJB, 1, 0},
    {"ln_2.weight", GPT_LN2W, 1, 0},
    {"ln_2.bias", GPT_LN2B, 1, 0},
    {"mlp.c_fc.weight", GPT_FCW, 1, 4},
    {"mlp.c_fc.bias", GPT_FCB, 4, 0},
    {"mlp.c_proj.weight", GPT_FCPROJW, 4, 1},
    {"mlp.c_proj.bias", GPT_FCPROJB, 1, 0},
};
#define N_LAYER_TENSORS ((int)(sizeof layer_tensors / sizeof layer_tensors[0]))

static void add_tensor(gpt_t *m, const char *name, int ndim, int r, int c, size_t offset,
                       int decay) {
    gpt_tensor_t *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = r;
    t->shape[1] = ndim == 2 ? c : 0;
    t->size = (size_t)r * (ndim == 2 ? (size_t)c : 1);
    t->offset = offset;
    t->decay = decay;
}

static int build_tensor_table(gpt_t *m) {
    const gpt_config_t *cfg = &m->cfg;
    int C = cfg->n_embd, L = cfg->n_layer;
    size_t kind_off[GPT_NKINDS], off = 0;
    for (int i = 0; i < GPT_NKINDS; i++) {
        kind_off[i] = off;
        off += m->param_sizes[i];
    }
    if (cfg->arch != GPT_ARCH_GPT2) return llama__tensor_table(m, kind_off);
    m->tensors = calloc((size_t)(4 + L * N_LAYER_TENSORS + 2), sizeof *m->tensors);
    if (!m->tensors) return rl_fail(RL_ENOMEM, "model: tensor table");
    add_tensor(m, "wte.weight", 2, cfg->vocab_size, C, kind_off[GPT_WTE], 1);
    add_tensor(m, "wpe.weight", 2, cfg->n_positions, C, kind_off[GPT_WPE], 1);
    for (int l = 0; l < L; l++)
        for (int j = 0; j < N_LAYER_TENSORS; j++) {
            char name[64];
            snprintf(name, sizeof name, "h.%d.%s", l, layer_tensors[j].suffix);
            int k = layer_tensors[j].kind, r = layer_tensors[j].rows * C;
            int c = layer_tensors[j].cols * C, two_d = layer_tensors[j].cols != 0;
            size_t per_layer = m->param_sizes[k] / L;
            add_tensor(m, name, two_d ? 2 : 1, r, c, kind_off[k] + (size_t)l * per_layer, two_d);
        }
    add_tensor(m, "ln_f.weight", 1, C, 0, kind_off[GPT_LNFW], 0);
    add_tensor(m, "ln_f.bias", 1, C, 0, kind_off[GPT_LNFB], 0);
    if (cfg->scalar_head) {
        add_tensor(m, "score.weight", 2, 1, C, kind_off[GPT_HEADW], 1);
        add_tensor(m, "score.bias", 1, 1, 0, kind_off[GPT_HEADB], 0);
    }
    return 0;
}

gpt_t *gpt_new(const gpt_config_t *cfg) {
    if (gpt_config_check(cfg) < 0) return NULL;
    gpt_t *m = calloc(1, sizeof *m);
    if (!m) goto fail;
    m->cfg = *cfg;
    param_sizes(cfg, m->param_sizes);
    for (int i = 0; i < GPT_NKINDS; i++) m->num_params += m->param_sizes[i];
    m->params_mem = calloc(m->num_params, sizeof(float));
    if (!m->params_mem) goto fail;
    point_params(&m->params, m->params_mem, m->param_sizes);
    if (build_tensor_table(m) < 0) goto fail;
    if (cfg->arch != GPT_ARCH_GPT2 && llama__rope_init(m) < 0) goto fail;
    return m;
fail:;
    size_t n = m ? m->num_params : 0;
    gpt_destroy(&m);
    rl_fail(RL_ENOMEM, "model: cannot allocate %zu parameters (%.1f GB)", n,
            n * sizeof(float) / 1e9);
    return NULL;
}

void gpt_destroy(gpt_t **mp) {
    if (!mp || !*mp) return;
    gpt_t *m = *mp;
    free(m->params_mem);
    free(m->grads_mem);
    free(m->acts_mem);
    free(m->tensors);
    free(m->inputs);
    free(m->head_idx);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m);
    *mp = NULL;
}

void gpt_init_weights(gpt_t *m, uint64_t seed) {
    const gpt_config_t *cfg = &m->cfg;
    float resid_std = 0.02f / sqrtf(2.0f * cfg->n_layer);
    for (int i = 0; i < m->n_tensors; i++) {
        const gpt_tensor_t *t = &m->tensors[i];
        float *p = m->params_mem + t->offset;
        /* GPT-2's LayerNorms are ln_*; the Llama family's RMSNorms all have "norm" in the name */
        int is_ln = strstr(t->name, cfg->arch == GPT_ARCH_GPT2 ? "ln_" : "norm") != NULL;
        if (t->ndim == 1) {
            float v = is_ln && strstr(t->name, ".weight") ? 1.0f : 0.0f;
            for (size_t j = 0; j < t->size; j++) p[j] = v;
            continue;
        }
        float std =
            cfg->arch == GPT_ARCH_GPT2 && strstr(t->name, "c_proj.weight") ? resid_std : 0.02f;
        /* stream = tensor index: each tensor's values are fixed by (seed, name order) alone */
#pragma omp parallel for schedule(static) if (t->size >= 65536)
        for (size_t j = 0; j < t->size; j++) p[j] = std * rng_normal(seed, (uint64_t)i, j);
    }
}

int gpt_grads_alloc(gpt_t *m) {
    if (m->grads_mem) return 0;
    m->grads_mem = calloc(m->num_params, sizeof(float));
    if (!m->grads_mem)
        return rl_fail(RL_ENOMEM, "model: cannot allocate gradients (%zu floats)", m->num_params);
    point_params(&m->grads, m->grads_mem, m->param_sizes);
    return 0;
}

void gpt_zero_grad(gpt_t *m) {
    if (!m->grads_mem) return;
    /* a parallel memset in chunks: the arena is hundreds of MB at GPT-2 size */
    const size_t chunk = 1 << 20;
    long n_chunks = (long)((m->num_params + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (long i = 0; i < n_chunks; i++) {
        size_t lo = (size_t)i * chunk,
               len = m->num_params - lo < chunk ? m->num_params - lo : chunk;
        memset(m->grads_mem + lo, 0, len * sizeof(float));
    }
}

const gpt_tensor_t *gpt_tensor_find(const gpt_t *m, const char *name) {
    if (strncmp(name, "transformer.", 12) == 0) name += 12;
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

int gpt_adamw_groups(const gpt_t *m, adamw_group_t *out) {
    static const int decay_kind[GPT_NKINDS] = {
        [GPT_WTE] = 1, [GPT_WPE] = 1,     [GPT_QKVW] = 1,  [GPT_ATTPROJW] = 1,
        [GPT_FCW] = 1, [GPT_FCPROJW] = 1, [GPT_HEADW] = 1, [GPT_LMHEADW] = 1};
    int n = 0;
    size_t off = 0;
    for (int k = 0; k < GPT_NKINDS; k++) {
        size_t len = m->param_sizes[k];
        if (!len) continue;
        if (n > 0 && out[n - 1].decay == decay_kind[k]) {
            out[n - 1].len += len; /* merge neighbours with the same flag */
        } else {
            out[n].offset = off;
            out[n].len = len;
            out[n].decay = decay_kind[k];
            n++;
        }
        off += len;
    }
    return n;
}

/* ------------------------------------------------------------------------------------------ */

/* Floats of activation arena needed for B*T = N positions. */
static size_t acts_floats(const gpt_config_t *cfg, size_t B, size_t T, gpt_acts_t *a, float *mem) {
    size_t L = cfg->n_layer, C = cfg->n_embd, H = cfg->n_head, V = cfg->vocab_size, N = B * T;
    struct {
        float **p;
        size_t n;
    } f[] = {
        {&a->encoded, N * C},
        {&a->ln1, L * N * C},
        {&a->ln1_mean, L * N},
        {&a->ln1_rstd, L * N},
        {&a->qkv, L * N * 3 * C},
        {&a->atty, L * N * C},
        {&a->att, L * B * H * T * T},
        {&a->attproj, L * N * C},
        {&a->residual2, L * N * C},
        {&a->ln2, L * N * C},
        {&a->ln2_mean, L * N},
        {&a->ln2_rstd, L * N},
        {&a->fch, L * N * 4 * C},
        {&a->fch_gelu, L * N * 4 * C},
        {&a->fcproj, L * N * C},
        {&a->residual3, L * N * C},
        {&a->lnf, N * C},
        {&a->lnf_mean, N},
        {&a->lnf_rstd, N},
        {&a->logits, N * V},
        {&a->losses, N},
        {&a->dres, N * C},
        {&a->dbuf, N * C},
        {&a->dbuf2, N * C},
        {&a->dqkv, N * 3 * C},
        {&a->datt, B * H * T * T},
        {&a->dfch_gelu, N * 4 * C},
        {&a->dfch, N * 4 * C},
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (mem) *f[i].p = mem + total;
        total += f[i].n;
    }
    return total;
}

/* Makes the activation arena fit (B,T); the T*T attention buffers make the layout depend on
 * both, so it is re-pointed whenever the shape changes. */
static int acts_fit(gpt_t *m, int B, int T) {
    /* the size in double first: (L,B,H,T,T) at a large T must fail cleanly, not wrap */
    double need_d = 0;
    int llama = m->cfg.arch != GPT_ARCH_GPT2;
    if (llama) {
        need_d = llama__acts_floats(&m->cfg, (size_t)B, (size_t)T, &m->acts, NULL);
    } else {
        const gpt_config_t *c = &m->cfg;
        double N = (double)B * T, L = c->n_layer, C = c->n_embd, H = c->n_head;
        need_d = N * C * (18.0 * L + 16.0) + N * c->vocab_size + 2.0 * L * B * H * T * T +
                 B * H * (double)T * T + N * (4.0 * L + 3.0);
    }
    if (need_d * sizeof(float) > 1e13)
        return rl_fail(RL_ENOMEM, "model: activations for B=%d T=%d would take %.3g GB", B, T,
                       need_d * sizeof(float) / 1e9);
    size_t need = llama ? (size_t)need_d : acts_floats(&m->cfg, B, T, &m->acts, NULL);
    if (need > m->acts_cap) {
        free(m->acts_mem);
        m->acts_mem = malloc(need * sizeof(float));
        m->acts_cap = m->acts_mem ? need : 0;
        if (!m->acts_mem) {
            memset(&m->acts, 0, sizeof m->acts); /* nothing may point into freed memory */
            return rl_fail(RL_ENOMEM, "model: cannot allocate activations for B=%d T=%d (%.1f GB)",
                           B, T, need * sizeof(float) / 1e9);
        }
    }
    if ((size_t)B * T > m->inputs_cap) {
        int *in = realloc(m->inputs, (size_t)B * T * sizeof(int));
        if (!in) return rl_fail(RL_ENOMEM, "model: inputs");
        m->inputs = in;
        m->inputs_cap = (size_t)B * T;
    }
    if (llama)
        llama__acts_floats(&m->cfg, (size_t)B, (size_t)T, &m->acts, m->acts_mem);
    else
        acts_floats(&m->cfg, B, T, &m->acts, m->acts_mem);
    return 0;
}

int gpt_forward(gpt_t *m, const int *inputs, int B, int T, int flags) {
    const gpt_config_t *cfg = &m->cfg;
    int L = cfg->n_layer, C = cfg->n_embd, H = cfg->n_head, V = cfg->vocab_size;
    /* whatever happens below, the previous pass's state is gone */
    m->B = m->T = 0;
    m->have_logits = 0;
    m->dlogits_ready = 0;
    m->head_n = 0;
    if (!inputs || B < 1 || T < 1 || T > cfg->n_positions || (long)B * T > (1L << 30))
        return rl_fail(RL_EINVAL, "forward: bad shape B=%d T=%d (n_positions=%d)", B, T,
                       cfg->n_positions);
    for (int i = 0; i < B * T; i++)
        if (inputs[i] < 0 || inputs[i] >= V)
            return rl_fail(RL_EINVAL, "forward: token id %d at position %d outside [0,%d)",
                           inputs[i], i, V);
    int rc = acts_fit(m, B, T);
    if (rc < 0) return rc;
    m->B = B;
    m->T = T;
    memcpy(m->inputs, inputs, (size_t)B * T * sizeof(int));
    if (cfg->arch != GPT_ARCH_GPT2) {
        llama__forward(m, (flags & GPT_FWD_LOGITS) != 0);
        m->have_logits = (flags & GPT_FWD_LOGITS) != 0;
        return 0;
    }

    gpt_params_t *p = &m->params;
    gpt_acts_t *a = &m->acts;
    size_t N = (size_t)B * T;
    ops_encoder_forward(a->encoded, inputs, p->wte, p->wpe, B, T, C);
    const float *residual = a->encoded;
    for (int l = 0; l < L; l++) {
        float *ln1 = a->ln1 + l * N * C, *qkv = a->qkv + l * N * 3 * C;
        float *atty = a->atty + l * N * C, *att = a->att + (size_t)l * B * H * T * T;
        float *attproj = a->attproj + l * N * C, *res2 = a->residual2 + l * N * C;
        float *ln2 = a->ln2 + l * N * C, *fch = a->fch + l * N * 4 * C;
        float *fch_gelu = a->fch_gelu + l * N * 4 * C, *fcproj = a->fcproj + l * N * C;
        float *res3 = a->residual3 + l * N * C;
        ops_layernorm_forward(ln1, a->ln1_mean + l * N, a->ln1_rstd + l * N, residual,
                              p->ln1w + l * C, p->ln1b + l * C, (int)N, C, cfg->layer_norm_epsilon);
        ops_matmul_forward(qkv, ln1, p->qkvw + (size_t)l * C * 3 * C, p->qkvb + l * 3 * C, (int)N,
                           C, 3 * C);
        ops_attention_forward(atty, att, qkv, B, T, C, H);
        ops_matmul_forward(attproj, atty, p->attprojw + (size_t)l * C * C, p->attprojb + l * C,
                           (int)N, C, C);
        ops_residual_forward(res2, residual, attproj, N * C);
        ops_layernorm_forward(ln2, a->ln2_mean + l * N, a->ln2_rstd + l * N, res2, p->ln2w + l * C,
                              p->ln2b + l * C, (int)N, C, cfg->layer_norm_epsilon);
        ops_matmul_forward(fch, ln2, p->fcw + (size_t)l * C * 4 * C, p->fcb + l * 4 * C, (int)N, C,
                           4 * C);
        ops_gelu_forward(fch_gelu, fch, N * 4 * C);
        ops_matmul_forward(fcproj, fch_gelu, p->fcprojw + (size_t)l * 4 * C * C, p->fcprojb + l * C,
                           (int)N, 4 * C, C);
        ops_residual_forward(res3, res2, fcproj, N * C);
        residual = res3;
    }
    ops_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, residual, p->lnfw, p->lnfb, (int)N, C,
                          cfg->layer_norm_epsilon);
    if (flags & GPT_FWD_LOGITS) {
        ops_lmhead_forward(a->logits, a->lnf, p->wte, (int)N, C, V);
        m->have_logits = 1;
    }
    return 0;
}

int gpt_lm_loss(gpt_t *m, const int *targets, const float *mask, float *loss, int want_grad) {
    if (!m->have_logits || m->dlogits_ready)
        return rl_fail(RL_EINVAL, "loss: no logits (run gpt_forward with GPT_FWD_LOGITS first)");
    int N = m->B * m->T, V = m->cfg.vocab_size, counted = 0;
    for (int i = 0; i < N; i++) {
        if (targets[i] >= V)
            return rl_fail(RL_EINVAL, "loss: target id %d at position %d outside [0,%d)",
                           targets[i], i, V);
        if (mask && (mask[i] < 0.0f || !isfinite(mask[i])))
            return rl_fail(RL_EINVAL, "loss: mask[%d] = %g is not a non-negative weight", i,
                           mask[i]);
        counted += targets[i] >= 0 && (!mask || mask[i] > 0.0f);
    }
    if (!counted) return rl_fail(RL_EINVAL, "loss: no position has a target and a non-zero mask");
    double l = ops_crossentropy(m->acts.logits, m->acts.losses, targets, mask, N, V, want_grad);
    if (loss) *loss = (float)l;
    if (want_grad) m->dlogits_ready = 1;
    if (!isfinite(l)) return rl_fail(RL_ENONFINITE, "loss is %g", l);
    return 0;
}

/* dst(k,C) = rows idx[0..k) of src(.,C). */
static void gather_rows(float *dst, const float *src, const int *idx, int k, int C) {
    for (int j = 0; j < k; j++)
        memcpy(dst + (size_t)j * C, src + (size_t)idx[j] * C, (size_t)C * sizeof(float));
}

int gpt_dlogits_set(gpt_t *m) {
    if (!m->have_logits || m->dlogits_ready)
        return rl_fail(RL_EINVAL, "dlogits: the last forward computed no logits to replace");
    m->dlogits_ready = 1;
    return 0;
}

int gpt_head_forward(gpt_t *m, const int *idx, int n, float *values) {
    if (!m->cfg.scalar_head) return rl_fail(RL_EINVAL, "head: model has no scalar head");
    if (m->B == 0) return rl_fail(RL_EINVAL, "head: no forward pass to read");
    if (n < 0 || (n > 0 && (!idx || !values)))
        return rl_fail(RL_EINVAL, "head: bad arguments (n=%d)", n);
    int N = m->B * m->T, C = m->cfg.n_embd;
    for (int i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= N)
            return rl_fail(RL_EINVAL, "head: position %d outside [0,%d)", idx[i], N);
    int *keep = realloc(m->head_idx, (size_t)(n > 0 ? n : 1) * sizeof(int));
    if (!keep) return rl_fail(RL_ENOMEM, "head: positions");
    m->head_idx = keep;
    memcpy(m->head_idx, idx, (size_t)n * sizeof(int));
    m->head_n = n;
    /* the head is a matrix product (n,C) @ (C,1) on the gathered rows, chunk by chunk */
    for (int i0 = 0; i0 < n; i0 += N) {
        int k = n - i0 < N ? n - i0 : N;
        gather_rows(m->acts.dbuf2, m->acts.lnf, idx + i0, k, C);
        ops_matmul_forward(values + i0, m->acts.dbuf2, m->params.headw, m->params.headb, k, C, 1);
    }
    for (int i = 0; i < n; i++)
        if (!isfinite(values[i]))
            return rl_fail(RL_ENONFINITE, "head: value %d is %g", i, values[i]);
    return 0;
}

int gpt_backward(gpt_t *m, int use_dlogits, const float *dvalues) {
    const gpt_config_t *cfg = &m->cfg;
    if (m->B == 0) return rl_fail(RL_EINVAL, "backward: no forward pass to differentiate");
    if (use_dlogits && !m->dlogits_ready)
        return rl_fail(RL_EINVAL, "backward: the logits hold no gradient (call gpt_lm_loss with "
                                  "want_grad, or write dlogits and call gpt_dlogits_set)");
    if (!use_dlogits && !(dvalues && m->head_n > 0))
        return rl_fail(RL_EINVAL, "backward: nothing to backpropagate");
    int rc = gpt_grads_alloc(m);
    if (rc < 0) return rc;
    int B = m->B, T = m->T, L = cfg->n_layer, C = cfg->n_embd, H = cfg->n_head;
    int V = cfg->vocab_size;
    size_t N = (size_t)B * T;
    gpt_params_t *p = &m->params, *g = &m->grads;
    gpt_acts_t *a = &m->acts;

    /* gradient with respect to the final LayerNorm's output, from both heads */
    float *dlnf = a->dbuf;
    memset(dlnf, 0, N * C * sizeof(float));
    /* the LM head: wte (tied), or the Llama family's own lm_head */
    int own_head = cfg->arch != GPT_ARCH_GPT2 && !cfg->tie_word_embeddings;
    if (use_dlogits)
        ops_lmhead_backward(dlnf, own_head ? g->lmheadw : g->wte, a->logits, a->lnf,
                            own_head ? p->lmheadw : p->wte, (int)N, C, V);
    if (dvalues)
        for (int i0 = 0; i0 < m->head_n; i0 += (int)N) {
            int k = m->head_n - i0 < (int)N ? m->head_n - i0 : (int)N;
            const int *idx = m->head_idx + i0;
            gather_rows(a->dbuf2, a->lnf, idx, k, C); /* the head's input rows, again */
            memset(a->dres, 0, (size_t)k * C * sizeof(float));
            ops_matmul_backward(a->dres, g->headw, g->headb, dvalues + i0, a->dbuf2, p->headw, k, C,
                                1);
            for (int j = 0; j < k; j++) /* scatter-add: a position may be scored twice */
                for (int c = 0; c < C; c++)
                    dlnf[(size_t)idx[j] * C + c] += a->dres[(size_t)j * C + c];
        }
    if (cfg->arch != GPT_ARCH_GPT2) {
        llama__backward(m); /* from dlnf = a->dbuf */
        return 0;
    }
    memset(a->dres, 0, N * C * sizeof(float));
    const float *last = L > 0 ? a->residual3 + (L - 1) * N * C : a->encoded;
    ops_layernorm_backward(a->dres, g->lnfw, g->lnfb, dlnf, last, p->lnfw, a->lnf_mean, a->lnf_rstd,
                           (int)N, C);

    for (int l = L - 1; l >= 0; l--) {
        const float *residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * N * C;
        float *ln1 = a->ln1 + l * N * C, *qkv = a->qkv + l * N * 3 * C;
        float *atty = a->atty + l * N * C, *att = a->att + (size_t)l * B * H * T * T;
        float *res2 = a->residual2 + l * N * C, *ln2 = a->ln2 + l * N * C;
        float *fch = a->fch + l * N * 4 * C, *fch_gelu = a->fch_gelu + l * N * 4 * C;
        /* residual3 = residual2 + fcproj: dres flows to both unchanged */
        memset(a->dfch_gelu, 0, N * 4 * C * sizeof(float));
        ops_matmul_backward(a->dfch_gelu, g->fcprojw + (size_t)l * 4 * C * C, g->fcprojb + l * C,
                            a->dres, fch_gelu, p->fcprojw + (size_t)l * 4 * C * C, (int)N, 4 * C,
                            C);
        memset(a->dfch, 0, N * 4 * C * sizeof(float));
        ops_gelu_backward(a->dfch, fch, a->dfch_gelu, N * 4 * C);
        memset(a->dbuf, 0, N * C * sizeof(float));
        ops_matmul_backward(a->dbuf, g->fcw + (size_t)l * C * 4 * C, g->fcb + l * 4 * C, a->dfch,
                            ln2, p->fcw + (size_t)l * C * 4 * C, (int)N, C, 4 * C);
        ops_layernorm_backward(a->dres, g->ln2w + l * C, g->ln2b + l * C, a->dbuf, res2,
                               p->ln2w + l * C, a->ln2_mean + l * N, a->ln2_rstd + l * N, (int)N,
                               C);
        /* residual2 = residual + attproj */
        memset(a->dbuf, 0, N * C * sizeof(float));
        ops_matmul_backward(a->dbuf, g->attprojw + (size_t)l * C * C, g->attprojb + l * C, a->dres,
                            atty, p->attprojw + (size_t)l * C * C, (int)N, C, C);
        memset(a->dqkv, 0, N * 3 * C * sizeof(float));
        ops_attention_backward(a->dqkv, a->datt, a->dbuf, qkv, att, B, T, C, H);
        memset(a->dbuf2, 0, N * C * sizeof(float));
        ops_matmul_backward(a->dbuf2, g->qkvw + (size_t)l * C * 3 * C, g->qkvb + l * 3 * C, a->dqkv,
                            ln1, p->qkvw + (size_t)l * C * 3 * C, (int)N, C, 3 * C);
        ops_layernorm_backward(a->dres, g->ln1w + l * C, g->ln1b + l * C, a->dbuf2, residual,
                               p->ln1w + l * C, a->ln1_mean + l * N, a->ln1_rstd + l * N, (int)N,
                               C);
    }
    ops_encoder_backward(g->wte, g->wpe, a->dres, m->inputs, B, T, C);
    return 0;
}

double gpt_train_flops(const gpt_config_t *cfg, int B, int T) {
    if (cfg->arch != GPT_ARCH_GPT2) return llama__train_flops(cfg, B, T);
    double N = (double)B * T, C = cfg->n_embd, L = cfg->n_layer, V = cfg->vocab_size;
    double per_layer = 2.0 * N * 12.0 * C * C         /* c_attn, attn.c_proj, c_fc, mlp.c_proj */
                       + 4.0 * B * (double)T * T * C; /* q@k^T and att@v, all heads */
    double fwd = L * per_layer + 2.0 * N * C * V;     /* + tied LM head */
    return 3.0 * fwd;                                 /* backward is two products per one */
}
