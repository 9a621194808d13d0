/*
 * llama.h - the Llama family (Llama, Qwen2, Qwen3) inside the gpt_t handle: the parts of the
 * model that differ from GPT-2. gpt.c dispatches here on cfg.arch and gen.c shares the rotary
 * step; everyone else uses gpt.h, whose API is the same for both families.
 *
 * The block (Hugging Face's LlamaDecoderLayer, Qwen2's and Qwen3's):
 *   h = x + o_proj(attention(rope(qk_norm(q)), rope(qk_norm(k)), v)),  q|k|v = qkv_proj(rms_1(x))
 *   x' = h + down_proj(silu(gate_proj(rms_2(h))) * up_proj(rms_2(h)))
 * with RMSNorm, grouped-query attention (query head h reads key/value head h / (H / Hkv)), rotary
 * positions in the rotate_half convention (the two halves of a head rotate together), optional
 * q/k/v biases (Qwen2) and per-head q/k RMSNorm (Qwen3). The rotary table is fixed when the model
 * is made: angles in double (pos * inv_freq, inv_freq from rope_theta and Llama 3's scaling), their
 * cos and sin by glibc in double, rounded once to float. Everything after is the exact kernels.
 */
#ifndef RLHF_LLAMA_H
#define RLHF_LLAMA_H

#include <stddef.h>

#include "nn/gpt_types.h"

/* gpt_config_check for the family. Returns 0 or RL_EINVAL. */
int llama__config_check(const gpt_config_t *c);

/* Elements per parameter kind (GPT_NKINDS). */
void llama__param_sizes(const gpt_config_t *c, size_t *s);

/* m->tensors, m->n_tensors: the Hugging Face names viewing the arena (kind_off: each kind's
 * offset). Returns 0 or RL_ENOMEM. */
int llama__tensor_table(gpt_t *m, const size_t *kind_off);

/* The rotary table m->rope_cos, m->rope_sin. Returns 0 or RL_ENOMEM. */
int llama__rope_init(gpt_t *m);

/* Floats of activations for (B,T), as a double (no overflow); with mem, points a's views there. */
double llama__acts_floats(const gpt_config_t *c, size_t B, size_t T, gpt_acts_t *a, float *mem);

/* The forward of gpt_forward after its checks: m->inputs, m->B, m->T and the arena are set; the
 * logits too when want_logits. */
void llama__forward(gpt_t *m, int want_logits);

/* The backward of the trunk from d(loss)/d(final norm output) in acts.dbuf (B*T, C). */
void llama__backward(gpt_t *m);

/*
 * Attention's input for R rows of q | k | v (qkv, R x D3) of layer l: q and k through the q/k
 * norms (if any; 1/rms into rstd, R x (H + Hkv)) and RoPE at position pos[r] (pos NULL: r % T),
 * v copied, into out (R x D3). Rows are independent of each other.
 */
void llama__qk_rope(const gpt_t *m, int l, float *out, float *rstd, const float *qkv, int R,
                    const int *pos, int T);

/* Matrix-multiply FLOPs of one forward + backward at (B,T), LM head included. */
double llama__train_flops(const gpt_config_t *c, int B, int T);

#endif
