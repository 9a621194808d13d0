/*
 * gpt.h - the decoder-only transformer in fp32: parameters, forward, backward, scalar head.
 * Two families behind one handle: GPT-2 (cfg.arch = GPT_ARCH_GPT2, the default), and the Llama
 * family (Llama, Qwen2, Qwen3: RMSNorm, rotary positions, SwiGLU, grouped-query attention),
 * whose kernels are in llama.c (llama.h); gpt.c dispatches on cfg.arch.
 *
 * One model = four arenas (the llm.c pattern): parameters, gradients, activations (forward
 * activations plus backward scratch, sized for the largest B*T seen), and - owned by the
 * optimizer - the AdamW moments. Parameters are laid out by kind with the layer as the leading
 * dimension (all ln_1 weights, then all c_attn weights, ...); weight matrices use the Hugging
 * Face Conv1D orientation [in, out], so a model directory maps onto the arena with no transposes.
 *
 * Use:
 *   gpt_t *m = gpt_new(&cfg);             gpt_init_weights(m, seed);
 *   gpt_forward(m, inputs, B, T, GPT_FWD_LOGITS);
 *   gpt_lm_loss(m, targets, mask, &loss, 1);      // fills dlogits in place of the logits
 *   gpt_zero_grad(m); gpt_backward(m, 1, NULL);   // grads in m->grads_mem
 * For a reward/value model (cfg.scalar_head = 1):
 *   gpt_forward(m, inputs, B, T, 0); gpt_head_forward(m, idx, n, values);
 *   gpt_backward(m, 0, dvalues);
 */
#ifndef RLHF_GPT_H
#define RLHF_GPT_H

#include <stddef.h>
#include <stdint.h>

#include "nn/adamw.h"
#include "nn/gpt_types.h" /* gpt_config_t, gpt_t, the kinds and views */

/* Checks a config (positive sizes, n_embd divisible by n_head, ...; for the Llama family also
 * the kv heads, the MLP width and the rotary parameters). Returns 0 or RL_EINVAL. */
int gpt_config_check(const gpt_config_t *cfg);

/* Allocates a model with zeroed parameters (no gradients, no activations yet); NULL on failure
 * (detail in rl_errmsg()). */
gpt_t *gpt_new(const gpt_config_t *cfg);

/* Frees everything; accepts NULL and NULLs the caller's pointer. */
void gpt_destroy(gpt_t **mp);

/*
 * GPT-2 initialisation from `seed` (counter-based, so independent of thread count): weights
 * N(0, 0.02), residual projections (attn.c_proj, mlp.c_proj) N(0, 0.02/sqrt(2L)), biases 0,
 * LayerNorm weights 1. The Llama family as Hugging Face initialises it: every weight matrix
 * N(0, 0.02) (initializer_range), biases 0, RMSNorm weights 1.
 */
void gpt_init_weights(gpt_t *m, uint64_t seed);

/* Allocates the gradient arena (zeroed). Idempotent. Returns 0 or RL_ENOMEM. */
int gpt_grads_alloc(gpt_t *m);

/* Zeroes the gradient arena (one memset). */
void gpt_zero_grad(gpt_t *m);

/* The tensor named `name` (with or without a "transformer." prefix), or NULL. */
const gpt_tensor_t *gpt_tensor_find(const gpt_t *m, const char *name);

/* Fills `out` (room for GPT_NKINDS) with AdamW groups covering the arena in order: decay on
 * 2-D weight matrices only. Returns the number of groups. */
int gpt_adamw_groups(const gpt_t *m, adamw_group_t *out);

#define GPT_FWD_LOGITS 1 /* also compute logits (B,T,V) through the LM head (tied: wte) */

/*
 * Forward pass on inputs (B,T) token ids: the trunk always, the LM logits if flags has
 * GPT_FWD_LOGITS. Grows the activation arena if B*T is larger than before. Returns 0,
 * RL_EINVAL (bad shape or a token id out of range, named in the detail) or RL_ENOMEM. On
 * failure the model holds no forward state: loss, head and backward calls fail until the next
 * successful forward.
 */
int gpt_forward(gpt_t *m, const int *inputs, int B, int T, int flags);

/*
 * Mean next-token cross-entropy of the last forward's logits against targets (B,T): positions
 * with target < 0 or mask == 0 are ignored; mask (B,T, may be NULL) weights positions, and the
 * mean is sum(mask*loss)/sum(mask). Per-position losses go to acts.losses. With want_grad, the
 * logits are replaced by d(mean loss)/d(logits), ready for gpt_backward. Returns 0, RL_EINVAL
 * (no logits, or no position counted) or RL_ENONFINITE (loss is NaN/Inf).
 */
int gpt_lm_loss(gpt_t *m, const int *targets, const float *mask, float *loss, int want_grad);

/*
 * Declares that the caller has overwritten acts.logits (B,T,V) with d(loss)/d(logits) - for
 * losses other than cross-entropy (PPO) - so gpt_backward(m, 1, ...) may use them. Returns 0 or
 * RL_EINVAL if the last forward computed no logits or they already hold a gradient.
 */
int gpt_dlogits_set(gpt_t *m);

/*
 * Scalar head on the last forward's final hidden state at `n` positions idx[i] in [0, B*T)
 * (b*T + t): values[i] = lnf[idx[i]] . w + b. Returns 0, RL_EINVAL (no head, bad index) or
 * RL_ENONFINITE.
 */
int gpt_head_forward(gpt_t *m, const int *idx, int n, float *values);

/*
 * Backward pass of the last forward. Sources of gradient: dlogits in acts.logits if use_dlogits
 * (put there by gpt_lm_loss with want_grad, or by the caller and declared with
 * gpt_dlogits_set - raw logits are never taken for a gradient), and dvalues (n of the last head
 * forward, may be NULL). Gradients are accumulated into the gradient arena (allocated if
 * needed). Returns 0, RL_EINVAL (nothing to backpropagate) or RL_ENOMEM.
 */
int gpt_backward(gpt_t *m, int use_dlogits, const float *dvalues);

/* Matrix-multiply FLOPs of one forward + backward (2x forward) at (B,T), LM head included. */
double gpt_train_flops(const gpt_config_t *cfg, int B, int T);

#endif
