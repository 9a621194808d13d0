/*
 * gen.c - KV-cached batched generation (see gen.h).
 *
 * One forward step processes R rows (sequence, position, token). Rows of one sequence are
 * contiguous and in position order: the whole prompt at prefill, one row per live sequence when
 * decoding. Per layer: LayerNorm and the QKV projection over all R rows (one GEMM), keys and
 * values written into the cache at their (sequence, position), attention per (sequence, head)
 * block against that sequence's cache (attend_rows: each row on its own), then the rest of
 * the block over all rows again. Only each sequence's last row goes through the final LayerNorm
 * and the LM head. The cache is laid out [layer][sequence][head][position][head_size] so a
 * sequence's keys for one head are one contiguous (len, hs) matrix. The linear layers and the LM
 * head run on packed weights (pgemm.h): one stream reads them at memory bandwidth, a batch reuses
 * each loaded weight for up to six rows, and a row's result never depends on the other rows.
 * Everything else is exact as well (exact.h), so a sequence's tokens are the same bits on every
 * machine.
 *
 * The Llama family (llama.h) runs the same steps with its own layers: RMSNorm, the q | k | v
 * product, the q/k norms and RoPE at each row's position (llama__qk_rope), a cache of the
 * key/value heads only ([layer][sequence][kv head][position][head_dim]: grouped-query attention
 * reads one kv head for several query heads), SwiGLU, and weights packed from Hugging Face's
 * [out, in] layout (PGEMM_NK).
 */
#include "nn/gen.h"

#include "nn/exact.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "base/err.h"
#include "nn/llama.h"
#include "nn/ops.h"
#include "nn/pgemm.h"

/* Weights sampled for the staleness check of a pack. */
#define PACK_PROBES 64

struct gen_packed {
    int n_layer, n_embd, vocab_size;
    pgemm_mat_t *qkv, *attproj, *fc, *fcproj; /* per layer */
    pgemm_mat_t lmhead;
    size_t num_params;
    float probe[PACK_PROBES]; /* params_mem at PACK_PROBES evenly spread offsets */
};

static void pack_probe(const gpt_t *m, float *out) {
    for (int i = 0; i < PACK_PROBES; i++)
        out[i] = m->params_mem[(m->num_params - 1) * (size_t)i / (PACK_PROBES - 1)];
}

void gen_pack_free(gen_packed_t **pkp) {
    gen_packed_t *pk = pkp ? *pkp : NULL;
    if (!pk) return;
    for (int l = 0; l < pk->n_layer; l++) {
        if (pk->qkv) pgemm_free(&pk->qkv[l]);
        if (pk->attproj) pgemm_free(&pk->attproj[l]);
        if (pk->fc) pgemm_free(&pk->fc[l]);
        if (pk->fcproj) pgemm_free(&pk->fcproj[l]);
    }
    pgemm_free(&pk->lmhead);
    free(pk->qkv), free(pk->attproj), free(pk->fc), free(pk->fcproj);
    free(pk);
    *pkp = NULL;
}

/* The Llama family's matrices, all [out, in]. */
static int pack_llama(const gpt_t *m, gen_packed_t *pk) {
    const gpt_config_t *c = &m->cfg;
    const gpt_params_t *p = &m->params;
    size_t C = (size_t)c->n_embd, hd = (size_t)gpt_head_dim(c), I = (size_t)c->n_inner;
    size_t Dq = (size_t)c->n_head * hd, D3 = Dq + 2 * (size_t)c->n_kv_head * hd;
    int rc = 0;
    for (size_t l = 0; rc == 0 && l < (size_t)c->n_layer; l++)
        if ((rc = pgemm_pack(&pk->qkv[l], p->qkvw + l * D3 * C, (int)C, (int)D3, PGEMM_NK)) < 0 ||
            (rc = pgemm_pack(&pk->attproj[l], p->attprojw + l * C * Dq, (int)Dq, (int)C,
                             PGEMM_NK)) < 0 ||
            (rc = pgemm_pack(&pk->fc[l], p->fcw + l * 2 * I * C, (int)C, (int)(2 * I), PGEMM_NK)) <
                0 ||
            (rc = pgemm_pack(&pk->fcproj[l], p->fcprojw + l * C * I, (int)I, (int)C, PGEMM_NK)) < 0)
            break;
    if (rc == 0)
        rc = pgemm_pack(&pk->lmhead, c->tie_word_embeddings ? p->wte : p->lmheadw, (int)C,
                        c->vocab_size, PGEMM_NK);
    return rc;
}

int gen_pack(const gpt_t *m, gen_packed_t **out) {
    const gpt_config_t *c = &m->cfg;
    const gpt_params_t *p = &m->params;
    int L = c->n_layer, C = c->n_embd;
    size_t Ls = (size_t)L;
    gen_packed_t *pk = *out;
    if (pk && (pk->n_layer != L || pk->n_embd != C || pk->vocab_size != c->vocab_size))
        gen_pack_free(out), pk = NULL;
    if (!pk) {
        if (!(pk = calloc(1, sizeof *pk))) return rl_fail(RL_ENOMEM, "generate: packed weights");
        pk->n_layer = L, pk->n_embd = C, pk->vocab_size = c->vocab_size;
        pk->qkv = calloc(Ls, sizeof *pk->qkv), pk->attproj = calloc(Ls, sizeof *pk->attproj);
        pk->fc = calloc(Ls, sizeof *pk->fc), pk->fcproj = calloc(Ls, sizeof *pk->fcproj);
    }
    *out = NULL;
    int rc = pk->qkv && pk->attproj && pk->fc && pk->fcproj
                 ? 0
                 : rl_fail(RL_ENOMEM, "generate: packed weights");
    if (rc == 0 && c->arch != GPT_ARCH_GPT2) rc = pack_llama(m, pk);
    for (size_t l = 0; rc == 0 && c->arch == GPT_ARCH_GPT2 && l < Ls; l++) {
        size_t CC = (size_t)C * C;
        if ((rc = pgemm_pack(&pk->qkv[l], p->qkvw + l * 3 * CC, C, 3 * C, PGEMM_KN)) < 0 ||
            (rc = pgemm_pack(&pk->attproj[l], p->attprojw + l * CC, C, C, PGEMM_KN)) < 0 ||
            (rc = pgemm_pack(&pk->fc[l], p->fcw + l * 4 * CC, C, 4 * C, PGEMM_KN)) < 0 ||
            (rc = pgemm_pack(&pk->fcproj[l], p->fcprojw + l * 4 * CC, 4 * C, C, PGEMM_KN)) < 0)
            break;
    }
    if (rc == 0 && c->arch == GPT_ARCH_GPT2)
        rc = pgemm_pack(&pk->lmhead, p->wte, C, c->vocab_size, PGEMM_NK);
    if (rc < 0) {
        gen_pack_free(&pk);
        return rc;
    }
    pk->num_params = m->num_params;
    pack_probe(m, pk->probe);
    *out = pk;
    return 0;
}

size_t gen_pack_bytes(const gen_packed_t *pk) {
    size_t b = pk->lmhead.bytes;
    for (int l = 0; l < pk->n_layer; l++)
        b += pk->qkv[l].bytes + pk->attproj[l].bytes + pk->fc[l].bytes + pk->fcproj[l].bytes;
    return b;
}

/* RL_EINVAL unless pk was packed from a model of m's shape with (as far as a sample shows) m's
 * current weights. */
static int pack_check(const gen_packed_t *pk, const gpt_t *m) {
    const gpt_config_t *c = &m->cfg;
    if (pk->n_layer != c->n_layer || pk->n_embd != c->n_embd || pk->vocab_size != c->vocab_size ||
        pk->num_params != m->num_params)
        return rl_fail(RL_EINVAL, "generate: the packed weights are of another model shape");
    float now[PACK_PROBES];
    pack_probe(m, now);
    if (memcmp(now, pk->probe, sizeof now))
        return rl_fail(RL_EINVAL, "generate: the weights changed after they were packed "
                                  "(pack them again with gen_pack)");
    return 0;
}

void gen_seq_free(gen_seq_t *s) {
    if (!s) return;
    free(s->tokens);
    free(s->logprobs);
    free(s->logprobs_model);
    memset(s, 0, sizeof *s);
}

/* The working state of one gen_generate call. */
typedef struct {
    gpt_t *m;
    const gen_packed_t *pk;
    int S, cap; /* sequences, cache positions per sequence */
    float *kc, *vc;
    /* per-step row buffers, sized for max_rows */
    int max_rows;
    float *x, *ln, *qkv, *atty, *tmp, *fch, *fchg, *mean, *rstd;
    float *qkr, *qk_rstd; /* Llama family: attention's input, the q/k norms' 1/rms */
    float *scores;        /* attention scratch */
    size_t scores_cap;    /* floats */
    float *last;          /* (S, C) final hidden state of each group's last row */
    float *logits;        /* (S, V) */
    int *row_seq, *row_pos, *row_tok;
    int *grp_start,
        *grp_n; /* rows of group g: grp_start[g] .. + grp_n[g]; group g is seq grp_seq[g] */
    int *grp_seq;
} gen_state_t;

static void state_free(gen_state_t *g) {
    free(g->kc), free(g->vc), free(g->x), free(g->ln), free(g->qkv), free(g->atty), free(g->tmp);
    free(g->fch), free(g->fchg), free(g->mean), free(g->rstd), free(g->scores), free(g->last);
    free(g->logits), free(g->row_seq), free(g->row_pos), free(g->row_tok), free(g->grp_start);
    free(g->grp_n), free(g->grp_seq), free(g->qkr), free(g->qk_rstd);
}

static int state_init(gen_state_t *g, gpt_t *m, int S, int cap, int max_rows) {
    const gpt_config_t *c = &m->cfg;
    size_t C = c->n_embd, L = c->n_layer, R = (size_t)max_rows;
    int llama = c->arch != GPT_ARCH_GPT2;
    /* widths: GPT-2's 3C, C, 4C, 4C; the Llama family's D3, Dq, 2I, I */
    size_t hd = (size_t)gpt_head_dim(c), Hkv = llama ? (size_t)c->n_kv_head : (size_t)c->n_head;
    size_t Dq = (size_t)c->n_head * hd, D3 = Dq + 2 * Hkv * hd, I = (size_t)c->n_inner;
    size_t w_qkv = llama ? D3 : 3 * C, w_att = llama ? Dq : C;
    size_t w_fc = llama ? 2 * I : 4 * C, w_fcg = llama ? I : 4 * C;
    memset(g, 0, sizeof *g);
    g->m = m, g->S = S, g->cap = cap, g->max_rows = max_rows;
    size_t cache = L * (size_t)S * (size_t)cap * Hkv * hd; /* GPT-2: H * hs = C */
    g->kc = malloc(cache * sizeof(float));
    g->vc = malloc(cache * sizeof(float));
    g->x = malloc(R * C * sizeof(float));
    g->ln = malloc(R * C * sizeof(float));
    g->qkv = malloc(R * w_qkv * sizeof(float));
    g->atty = malloc(R * w_att * sizeof(float));
    g->tmp = malloc(R * C * sizeof(float));
    g->fch = malloc(R * w_fc * sizeof(float));
    g->fchg = malloc(R * w_fcg * sizeof(float));
    if (llama) {
        g->qkr = malloc(R * D3 * sizeof(float));
        g->qk_rstd = malloc(R * ((size_t)c->n_head + Hkv) * sizeof(float));
        if (!g->qkr || !g->qk_rstd) {
            state_free(g);
            return rl_fail(RL_ENOMEM, "generate: cannot allocate state for %d rows", max_rows);
        }
    }
    g->mean = malloc(R * sizeof(float));
    g->rstd = malloc(R * sizeof(float));
    g->last = malloc((size_t)S * C * sizeof(float));
    g->logits = malloc((size_t)S * c->vocab_size * sizeof(float));
    g->row_seq = malloc(R * sizeof(int));
    g->row_pos = malloc(R * sizeof(int));
    g->row_tok = malloc(R * sizeof(int));
    g->grp_start = malloc((size_t)S * sizeof(int));
    g->grp_n = malloc((size_t)S * sizeof(int));
    g->grp_seq = malloc((size_t)S * sizeof(int));
    if (!g->kc || !g->vc || !g->x || !g->ln || !g->qkv || !g->atty || !g->tmp || !g->fch ||
        !g->fchg || !g->mean || !g->rstd || !g->last || !g->logits || !g->row_seq || !g->row_pos ||
        !g->row_tok || !g->grp_start || !g->grp_n || !g->grp_seq) {
        state_free(g);
        return rl_fail(RL_ENOMEM, "generate: cannot allocate state for %d sequences x %d positions",
                       S, cap);
    }
    return 0;
}

/* Key (or value) cache row of (layer l, sequence s, key/value head h, position 0). */
static float *cache_at(const gen_state_t *g, float *base, int l, int s, int h) {
    const gpt_config_t *c = &g->m->cfg;
    size_t hs = (size_t)gpt_head_dim(c);
    size_t nkv = (size_t)(c->arch == GPT_ARCH_GPT2 ? c->n_head : c->n_kv_head);
    return base + (((size_t)l * g->S + s) * nkv + h) * (size_t)g->cap * hs;
}

/*
 * Attention of n new rows of one sequence for one head: row i (query q + i*ldq) attends to the
 * cached positions 0..pos[i] and writes out + i*ldo (hs floats); sc is scratch (pos[i] + 1
 * floats). Each score is ex_dot (16 fixed lanes), the softmax sums in position order and the
 * output adds p_u * V[u] in position order, so a row's result depends on nothing but its own
 * inputs: the same bits in a decode step, in a prompt's prefill, in any batch and on any machine
 * (exact.h). Written out because a BLAS call per (sequence, head) costs more than its few
 * thousand FMAs, and BLAS would round differently per CPU.
 */
static inline void attend_rows_body(float *out, int ldo, float *sc, const float *q, int ldq,
                                    const float *K, const float *Vc, int n, const int *pos, int hs,
                                    float scale) {
    for (int r = 0; r < n; r++) {
        const float *qr = q + (size_t)r * ldq;
        float *o = out + (size_t)r * ldo;
        int ctx = pos[r] + 1;
        for (int u = 0; u < ctx; u++) sc[u] = ex_dot(qr, K + (size_t)u * hs, hs) * scale;
        float mx = ex_max(sc, ctx), sum = 0.0f;
        for (int u = 0; u < ctx; u++) sum += (sc[u] = ex_expf(sc[u] - mx));
        float inv = 1.0f / sum;
        for (int i = 0; i < hs; i++) o[i] = 0.0f;
        for (int u = 0; u < ctx; u++) {
            const float *vr = Vc + (size_t)u * hs;
            float pu = sc[u] * inv;
            for (int i = 0; i < hs; i++) o[i] += pu * vr[i];
        }
    }
}
EX_VARIANTS(attend_rows,
            (float *out, int ldo, float *sc, const float *q, int ldq, const float *K,
             const float *Vc, int n, const int *pos, int hs, float scale),
            attend_rows_body, (out, ldo, sc, q, ldq, K, Vc, n, pos, hs, scale))

/* The attention scratch for a step: one (n_g, ctx_g) score matrix per thread at a time; *per
 * gets the largest, *total the sum over groups times heads. */
static int scores_fit(gen_state_t *g, int G, int H, size_t *per, size_t *total) {
    *per = 0, *total = 0;
    for (int k = 0; k < G; k++) {
        size_t n_ctx =
            (size_t)g->grp_n[k] * (size_t)(g->row_pos[g->grp_start[k] + g->grp_n[k] - 1] + 1);
        if (n_ctx > *per) *per = n_ctx;
        *total += n_ctx * H;
    }
    size_t need = *per * (size_t)omp_get_max_threads();
    if (need > g->scores_cap) {
        float *s = realloc(g->scores, need * sizeof(float));
        if (!s) return rl_fail(RL_ENOMEM, "generate: attention scratch");
        g->scores = s;
        g->scores_cap = need;
    }
    return 0;
}

/* forward_rows for the Llama family. */
static int forward_rows_llama(gen_state_t *g, int R, int G) {
    gpt_t *m = g->m;
    const gpt_config_t *c = &m->cfg;
    const gpt_params_t *p = &m->params;
    const gen_packed_t *pk = g->pk;
    int C = c->n_embd, L = c->n_layer, H = c->n_head, Hkv = c->n_kv_head, hd = gpt_head_dim(c);
    int Dq = H * hd, D3 = (H + 2 * Hkv) * hd, I = c->n_inner, grp = H / Hkv;
    float scale = 1.0f / sqrtf((float)hd), eps = c->layer_norm_epsilon;
    size_t per, total_scores;
    int rc = scores_fit(g, G, H, &per, &total_scores);
    if (rc < 0) return rc;
    for (int r = 0; r < R; r++)
        memcpy(g->x + (size_t)r * C, p->wte + (size_t)g->row_tok[r] * C, (size_t)C * sizeof(float));
    for (int l = 0; l < L; l++) {
        ops_rmsnorm_forward(g->ln, g->rstd, g->x, p->ln1w + (size_t)l * C, R, C, eps);
        pgemm(g->qkv, g->ln, R, &pk->qkv[l], c->attn_bias ? p->qkvb + (size_t)l * D3 : NULL);
        llama__qk_rope(m, l, g->qkr, g->qk_rstd, g->qkv, R, g->row_pos, 0);
        long work = (long)total_scores * hd;
        /* the group's new keys and values into its cache, one task per (group, kv head) */
#pragma omp parallel for schedule(static) if (work >= 32768)
        for (int gk = 0; gk < G * Hkv; gk++) {
            int k = gk / Hkv, h = gk % Hkv, r0 = g->grp_start[k], n = g->grp_n[k];
            int s = g->row_seq[r0];
            float *K = cache_at(g, g->kc, l, s, h), *Vc = cache_at(g, g->vc, l, s, h);
            for (int r = r0; r < r0 + n; r++) {
                const float *src = g->qkr + (size_t)r * D3 + Dq + (size_t)h * hd;
                size_t off = (size_t)g->row_pos[r] * hd;
                memcpy(K + off, src, (size_t)hd * sizeof(float));
                memcpy(Vc + off, src + (size_t)Hkv * hd, (size_t)hd * sizeof(float));
            }
        }
        /* then attention per (group, query head) against its kv head's cache */
#pragma omp parallel for schedule(dynamic) if (work >= 32768)
        for (int gh = 0; gh < G * H; gh++) {
            int k = gh / H, h = gh % H, r0 = g->grp_start[k], n = g->grp_n[k];
            int s = g->row_seq[r0];
            float *sc = g->scores + per * (size_t)omp_get_thread_num();
            const float *K = cache_at(g, g->kc, l, s, h / grp),
                        *Vc = cache_at(g, g->vc, l, s, h / grp);
            attend_rows(g->atty + (size_t)r0 * Dq + (size_t)h * hd, Dq, sc,
                        g->qkr + (size_t)r0 * D3 + (size_t)h * hd, D3, K, Vc, n, g->row_pos + r0,
                        hd, scale);
        }
        pgemm(g->tmp, g->atty, R, &pk->attproj[l], NULL);
        ops_residual_forward(g->x, g->x, g->tmp, (size_t)R * C);
        ops_rmsnorm_forward(g->ln, g->rstd, g->x, p->ln2w + (size_t)l * C, R, C, eps);
        pgemm(g->fch, g->ln, R, &pk->fc[l], NULL);
        ops_swiglu_forward(g->fchg, g->fch, R, I);
        pgemm(g->tmp, g->fchg, R, &pk->fcproj[l], NULL);
        ops_residual_forward(g->x, g->x, g->tmp, (size_t)R * C);
    }
    for (int k = 0; k < G; k++)
        memcpy(g->tmp + (size_t)k * C, g->x + (size_t)(g->grp_start[k] + g->grp_n[k] - 1) * C,
               (size_t)C * sizeof(float));
    ops_rmsnorm_forward(g->last, g->rstd, g->tmp, p->lnfw, G, C, eps);
    pgemm(g->logits, g->last, G, &pk->lmhead, NULL);
    return 0;
}

/*
 * One forward step over R rows forming G groups (one per sequence present). Leaves the logits
 * of each group's last row in g->logits (G, V), in group order.
 */
static int forward_rows(gen_state_t *g, int R, int G) {
    if (g->m->cfg.arch != GPT_ARCH_GPT2) return forward_rows_llama(g, R, G);
    gpt_t *m = g->m;
    const gpt_config_t *c = &m->cfg;
    const gpt_params_t *p = &m->params;
    const gen_packed_t *pk = g->pk;
    int C = c->n_embd, L = c->n_layer, H = c->n_head, hs = C / H;
    float scale = 1.0f / sqrtf((float)hs), eps = c->layer_norm_epsilon;

    /* attention scratch: one (n_g, ctx_g) score matrix per thread at a time */
    size_t per = 0, total_scores = 0;
    for (int k = 0; k < G; k++) {
        size_t n_ctx =
            (size_t)g->grp_n[k] * (size_t)(g->row_pos[g->grp_start[k] + g->grp_n[k] - 1] + 1);
        if (n_ctx > per) per = n_ctx;
        total_scores += n_ctx * H;
    }
    size_t need = per * (size_t)omp_get_max_threads();
    if (need > g->scores_cap) {
        float *s = realloc(g->scores, need * sizeof(float));
        if (!s) return rl_fail(RL_ENOMEM, "generate: attention scratch");
        g->scores = s;
        g->scores_cap = need;
    }

    for (int r = 0; r < R; r++) {
        const float *te = p->wte + (size_t)g->row_tok[r] * C,
                    *pe = p->wpe + (size_t)g->row_pos[r] * C;
        for (int i = 0; i < C; i++) g->x[(size_t)r * C + i] = te[i] + pe[i];
    }
    for (int l = 0; l < L; l++) {
        ops_layernorm_forward(g->ln, g->mean, g->rstd, g->x, p->ln1w + (size_t)l * C,
                              p->ln1b + (size_t)l * C, R, C, eps);
        pgemm(g->qkv, g->ln, R, &pk->qkv[l], p->qkvb + (size_t)l * 3 * C);
        /* attention per (group, head): the group's new keys and values into its cache block,
         * then scores = q K^T, causal softmax, out = scores V. Each (group, head) owns its
         * block, so the writes need no ordering, and the block is in cache when read. */
        long work = (long)total_scores * hs;
#pragma omp parallel for schedule(dynamic) if (work >= 32768)
        for (int gh = 0; gh < G * H; gh++) {
            int k = gh / H, h = gh % H, r0 = g->grp_start[k], n = g->grp_n[k];
            int s = g->row_seq[r0];
            float *sc = g->scores + per * (size_t)omp_get_thread_num();
            float *K = cache_at(g, g->kc, l, s, h), *Vc = cache_at(g, g->vc, l, s, h);
            const float *q = g->qkv + (size_t)r0 * 3 * C + h * hs;
            float *o = g->atty + (size_t)r0 * C + h * hs;
            for (int r = r0; r < r0 + n; r++) {
                const float *src = g->qkv + (size_t)r * 3 * C + h * hs;
                size_t off = (size_t)g->row_pos[r] * hs;
                memcpy(K + off, src + C, (size_t)hs * sizeof(float));
                memcpy(Vc + off, src + 2 * C, (size_t)hs * sizeof(float));
            }
            attend_rows(o, C, sc, q, 3 * C, K, Vc, n, g->row_pos + r0, hs, scale);
        }
        pgemm(g->tmp, g->atty, R, &pk->attproj[l], p->attprojb + (size_t)l * C);
        ops_residual_forward(g->x, g->x, g->tmp, (size_t)R * C);
        ops_layernorm_forward(g->ln, g->mean, g->rstd, g->x, p->ln2w + (size_t)l * C,
                              p->ln2b + (size_t)l * C, R, C, eps);
        pgemm(g->fch, g->ln, R, &pk->fc[l], p->fcb + (size_t)l * 4 * C);
        ops_gelu_forward(g->fchg, g->fch, (size_t)R * 4 * C);
        pgemm(g->tmp, g->fchg, R, &pk->fcproj[l], p->fcprojb + (size_t)l * C);
        ops_residual_forward(g->x, g->x, g->tmp, (size_t)R * C);
    }
    /* final LayerNorm and LM head on each group's last row only */
    for (int k = 0; k < G; k++)
        memcpy(g->tmp + (size_t)k * C, g->x + (size_t)(g->grp_start[k] + g->grp_n[k] - 1) * C,
               (size_t)C * sizeof(float));
    ops_layernorm_forward(g->last, g->mean, g->rstd, g->tmp, p->lnfw, p->lnfb, G, C, eps);
    pgemm(g->logits, g->last, G, &pk->lmhead, NULL);
    return 0;
}

/* Appends a picked token to sequence `out`. Arrays were sized for max_new_tokens. */
static void seq_push(gen_seq_t *out, const smp_pick_t *pk) {
    out->tokens[out->n] = pk->token;
    out->logprobs[out->n] = pk->logprob;
    out->logprobs_model[out->n] = pk->logprob_model;
    out->n++;
}

int gen_generate(gpt_t *m, const int *const *prompts, const int *prompt_lens, int B,
                 const uint64_t *seq_ids, const gen_opts_t *o, gen_seq_t *out) {
    const gpt_config_t *c = &m->cfg;
    int V = c->vocab_size, P = c->n_positions, rc = 0;
    if (B < 1 || !prompts || !prompt_lens || !o || !out || o->max_new_tokens < 0)
        return rl_fail(RL_EINVAL, "generate: bad arguments (B=%d)", B);
    if ((rc = smp_params_check(&o->sampling)) < 0) return rc;
    size_t total = 0;
    int cap = 0;
    for (int i = 0; i < B; i++) {
        if (prompt_lens[i] < 1 || prompt_lens[i] > P - 1)
            return rl_fail(RL_EINVAL, "generate: prompt %d has %d tokens (need 1..%d)", i,
                           prompt_lens[i], P - 1);
        for (int t = 0; t < prompt_lens[i]; t++)
            if (prompts[i][t] < 0 || prompts[i][t] >= V)
                return rl_fail(RL_EINVAL, "generate: prompt %d: token id %d outside [0,%d)", i,
                               prompts[i][t], V);
        total += (size_t)prompt_lens[i];
        /* a sequence never grows past the context, however many tokens were asked for */
        int room = P - prompt_lens[i], n_new = o->max_new_tokens < room ? o->max_new_tokens : room;
        if (prompt_lens[i] + n_new > cap) cap = prompt_lens[i] + n_new;
    }
    memset(out, 0, (size_t)B * sizeof *out);
    int max_new = o->max_new_tokens;
    for (int i = 0; i < B; i++) {
        int room = P - prompt_lens[i];
        size_t n = (size_t)(max_new < room ? (max_new > 0 ? max_new : 1) : room);
        out[i].tokens = malloc(n * sizeof(int));
        out[i].logprobs = malloc(n * sizeof(float));
        out[i].logprobs_model = malloc(n * sizeof(float));
        if (!out[i].tokens || !out[i].logprobs || !out[i].logprobs_model) {
            rc = rl_fail(RL_ENOMEM, "generate: output buffers");
            goto fail;
        }
    }
    if (max_new == 0) return 0;
    if (total > (size_t)1 << 30) {
        rc = rl_fail(RL_EINVAL, "generate: %zu prompt tokens in one batch", total);
        goto fail;
    }

    gen_packed_t *own = NULL; /* packed for this call when the caller has no pack */
    if (o->packed ? (rc = pack_check(o->packed, m)) < 0 : (rc = gen_pack(m, &own)) < 0) goto fail;
    gen_state_t g;
    int max_rows = (int)total > B ? (int)total : B;
    if ((rc = state_init(&g, m, B, cap, max_rows)) < 0) {
        gen_pack_free(&own);
        goto fail;
    }
    g.pk = o->packed ? o->packed : own;
    int *len = calloc((size_t)B, sizeof(int)), *live = calloc((size_t)B, sizeof(int));
    size_t scratch_sz = smp_scratch_size(V);
    int nthreads = omp_get_max_threads();
    char *scratch = malloc(scratch_sz * (size_t)nthreads);
    if (!len || !live || !scratch) {
        rc = rl_fail(RL_ENOMEM, "generate: bookkeeping");
        goto done;
    }
    /* prefill: every prompt token is a row */
    int R = 0, G = 0;
    for (int i = 0; i < B; i++) {
        g.grp_start[G] = R, g.grp_n[G] = prompt_lens[i], g.grp_seq[G] = i, G++;
        for (int t = 0; t < prompt_lens[i]; t++, R++)
            g.row_seq[R] = i, g.row_pos[R] = t, g.row_tok[R] = prompts[i][t];
        len[i] = prompt_lens[i];
        live[i] = 1;
    }
    for (;;) {
        if ((rc = forward_rows(&g, R, G)) < 0) goto done;
        if (o->vocab_limit > 0 && o->vocab_limit < V) /* ids the tokenizer cannot decode */
            for (int k = 0; k < G; k++)
                for (int v = o->vocab_limit; v < V; v++) g.logits[(size_t)k * V + v] = -INFINITY;
        if (o->on_logits)
            for (int k = 0; k < G; k++)
                o->on_logits(o->on_logits_ctx, g.grp_seq[k], len[g.grp_seq[k]],
                             g.logits + (size_t)k * V, V);
        /* one pick per group, in parallel: each draw is keyed by (seed, sequence id, position) */
        int bad = G;
#pragma omp parallel for schedule(static) reduction(min : bad) if (G > 1)
        for (int k = 0; k < G; k++) {
            int s = g.grp_seq[k];
            smp_pick_t pk;
            int prc = smp_pick(g.logits + (size_t)k * V, V, &o->sampling, o->seed,
                               seq_ids ? seq_ids[s] : (uint64_t)s, (uint64_t)len[s],
                               scratch + scratch_sz * (size_t)omp_get_thread_num(), &pk);
            if (prc < 0) {
                bad = k < bad ? k : bad;
                continue;
            }
            seq_push(&out[s], &pk);
        }
        if (bad < G) {
            /* the detail was recorded on a worker thread: pick again here to report it */
            int s = g.grp_seq[bad];
            smp_pick_t pk;
            rc = smp_pick(g.logits + (size_t)bad * V, V, &o->sampling, o->seed,
                          seq_ids ? seq_ids[s] : (uint64_t)s, (uint64_t)len[s], scratch, &pk);
            rc = rl_fail_ctx(rc < 0 ? rc : RL_ENONFINITE, "generate: sequence %d, position %d", s,
                             len[s]);
            goto done;
        }
        /* stop checks, then the next step's rows: the token just picked, one per live sequence */
        R = G = 0;
        for (int s = 0; s < B; s++) {
            if (!live[s]) continue;
            int tok = out[s].tokens[out[s].n - 1];
            len[s]++;
            if (o->eot >= 0 && tok == o->eot)
                out[s].finish = GEN_FINISH_EOT, live[s] = 0;
            else if (o->stop && o->stop(o->stop_ctx, s, out[s].tokens, out[s].n))
                out[s].finish = GEN_FINISH_STOP, live[s] = 0;
            else if (out[s].n >= max_new || len[s] >= P)
                out[s].finish = GEN_FINISH_LENGTH, live[s] = 0;
            if (!live[s]) continue;
            g.grp_start[G] = R, g.grp_n[G] = 1, g.grp_seq[G] = s, G++;
            g.row_seq[R] = s, g.row_pos[R] = len[s] - 1, g.row_tok[R] = tok, R++;
        }
        if (G == 0) break;
    }
done:
    free(len);
    free(live);
    free(scratch);
    state_free(&g);
    gen_pack_free(&own);
    if (rc == 0) return 0;
fail:
    for (int i = 0; i < B; i++) gen_seq_free(&out[i]);
    return rc;
}
