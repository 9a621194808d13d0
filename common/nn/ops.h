/*
 * ops.h - the transformer's layer kernels (forward and backward), exact (xgemm.h, exact.h) or,
 * with the "openblas" backend, on OpenBLAS; OpenMP either way.
 *
 * Conventions (llm.c): `ops_layer_forward(out..., in..., weights..., sizes)` and
 * `ops_layer_backward(dinp..., dweights..., dout, saved inputs..., sizes)`; backward kernels
 * ACCUMULATE into every d* buffer (+=), so the caller zeroes what must start at zero. Tensors
 * are row-major; weight matrices are [in, out] (Hugging Face Conv1D). N is the number of
 * positions (B*T). Every matrix product goes through xgemm (or cblas_sgemm); element-wise loops
 * run on the OpenMP team. Each product-backed kernel has a plain-loop twin (`*_ref`) used as the
 * test oracle. With the exact backend every result is the same bits on any thread count,
 * instruction set and machine.
 */
#ifndef RLHF_OPS_H
#define RLHF_OPS_H

#include <stddef.h>

/* The backend of the matrix products: "exact" (xgemm: the same bits on every machine, the
 * default) or "openblas" (cblas_sgemm: rounding that depends on the CPU and OPENBLAS_CORETYPE).
 * The environment's RLHF_GEMM sets it before the first call; ops_set_gemm(NULL) goes back to
 * that default. Returns 0 or RL_EINVAL for another name. */
int ops_set_gemm(const char *name);
const char *ops_gemm(void);

/* Sets the threads used by OpenBLAS and by the OpenMP kernels (n >= 1). */
void ops_set_threads(int n);
/* The current thread count. */
int ops_get_threads(void);

/* out(B,T,C) = wte[inp] + wpe[t]. */
void ops_encoder_forward(float *out, const int *inp, const float *wte, const float *wpe, int B,
                         int T, int C);
/* dwte(V,C), dwpe(P,C) += scatter of dout(B,T,C). Serial (scatter-add into shared rows). */
void ops_encoder_backward(float *dwte, float *dwpe, const float *dout, const int *inp, int B, int T,
                          int C);

/* out(N,C) = (inp - mean) * rstd * w + b per row; saves mean(N), rstd(N). */
void ops_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                           const float *b, int N, int C, float eps);
/* dinp(N,C), dw(C), db(C) += LayerNorm backward of dout(N,C). */
void ops_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, const float *mean, const float *rstd, int N, int C);

/* out(N,OC) = inp(N,IC) @ w(IC,OC) + bias(OC) (bias may be NULL). N = 1 runs as a
 * matrix-vector product (cblas_sgemv), which streams the weights at memory bandwidth. */
void ops_matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N,
                        int IC, int OC);
/* dinp(N,IC) += dout @ w^T (skipped if dinp NULL); dw(IC,OC) += inp^T @ dout;
 * dbias(OC) += column sums of dout (skipped if NULL). */
void ops_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int N, int IC, int OC);
void ops_matmul_forward_ref(float *out, const float *inp, const float *w, const float *bias, int N,
                            int IC, int OC);
void ops_matmul_backward_ref(float *dinp, float *dw, float *dbias, const float *dout,
                             const float *inp, const float *w, int N, int IC, int OC);

/* Tied LM head: logits(N,V) = inp(N,C) @ wte(V,C)^T. */
void ops_lmhead_forward(float *logits, const float *inp, const float *wte, int N, int C, int V);
/* dinp(N,C) += dlogits @ wte; dwte(V,C) += dlogits^T @ inp. */
void ops_lmhead_backward(float *dinp, float *dwte, const float *dlogits, const float *inp,
                         const float *wte, int N, int C, int V);
void ops_lmhead_forward_ref(float *logits, const float *inp, const float *wte, int N, int C, int V);
void ops_lmhead_backward_ref(float *dinp, float *dwte, const float *dlogits, const float *inp,
                             const float *wte, int N, int C, int V);

/*
 * Causal multi-head self-attention. qkv(B,T,3C) holds q | k | v; out(B,T,C); att(B,H,T,T)
 * receives the softmax probabilities (zero above the diagonal) that backward needs.
 */
void ops_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int H);
/* dqkv(B,T,3C) += attention backward of dout(B,T,C); datt(B,H,T,T) is scratch (overwritten). */
void ops_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                            const float *att, int B, int T, int C, int H);
void ops_attention_forward_ref(float *out, float *att, const float *qkv, int B, int T, int C,
                               int H);
void ops_attention_backward_ref(float *dqkv, float *datt, const float *dout, const float *qkv,
                                const float *att, int B, int T, int C, int H);

/* The Llama family's kernels. Linear weights there are Hugging Face's [out, in]. */

/* out(N,C) = inp * rstd * w per row, rstd = 1 / sqrt(mean(inp^2) + eps) saved in rstd(N). */
void ops_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C,
                         float eps);
/* dinp(N,C), dw(C) += RMSNorm backward of dout(N,C). */
void ops_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp,
                          const float *w, const float *rstd, int N, int C);

/* out(N,OC) = inp(N,IC) @ w(OC,IC)^T + bias(OC) (bias may be NULL). */
void ops_linear_forward(float *out, const float *inp, const float *w, const float *bias, int N,
                        int IC, int OC);
/* dinp(N,IC) += dout @ w (skipped if dinp NULL); dw(OC,IC) += dout^T @ inp;
 * dbias(OC) += column sums of dout (skipped if NULL). */
void ops_linear_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int N, int IC, int OC);

/*
 * Causal grouped-query attention: qkv(B,T,D3) rows hold H query heads, then Hkv key heads, then
 * Hkv value heads, hd wide each (D3 = (H + 2 Hkv) hd); query head h reads key/value head
 * h / (H / Hkv). out(B,T,H*hd); att(B,H,T,T) receives the softmax probabilities (zero above the
 * diagonal). Scores are scaled by 1/sqrt(hd). With Hkv = H and hd = C/H this is
 * ops_attention_forward.
 */
void ops_gqa_attention_forward(float *out, float *att, const float *qkv, int B, int T, int H,
                               int Hkv, int hd);
/* dqkv(B,T,D3) += backward of dout(B,T,H*hd); datt(B,H,T,T) is scratch. The key/value gradients
 * of a shared head are summed over its query heads in head order. */
void ops_gqa_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                                const float *att, int B, int T, int H, int Hkv, int hd);

/* SwiGLU: out(N,F) = silu(inp[:, :F]) * inp[:, F:] for inp(N,2I) = gate | up;
 * silu(g) = g / (1 + exp(-g)). */
void ops_swiglu_forward(float *out, const float *inp, int N, int F);
/* dinp(N,2I) += SwiGLU backward of dout(N,F). */
void ops_swiglu_backward(float *dinp, const float *inp, const float *dout, int N, int F);

/* GELU, tanh approximation (GPT-2's "gelu_new"): out(N) = gelu(inp). */
void ops_gelu_forward(float *out, const float *inp, size_t N);
/* dinp(N) += gelu'(inp) * dout. */
void ops_gelu_backward(float *dinp, const float *inp, const float *dout, size_t N);

/* out(N) = a + b. */
void ops_residual_forward(float *out, const float *a, const float *b, size_t N);

/*
 * Softmax cross-entropy over rows of logits(N,V) against targets(N). Row i counts with weight
 * w_i = (targets[i] >= 0 ? (weights ? weights[i] : 1) : 0). losses[i] = w_i > 0 ? -log p : 0.
 * Returns the weighted mean sum(w_i * loss_i) / sum(w_i) (NaN if the weights sum to 0), summed
 * in fixed order so the result does not depend on thread count. With want_grad the logits are
 * overwritten by d(mean)/d(logits) = (p - onehot) * w_i / sum(w).
 */
double ops_crossentropy(float *logits, float *losses, const int *targets, const float *weights,
                        int N, int V, int want_grad);

/* The same rows with the normaliser given (a block of a step normalised by the whole step's
 * weight, nn/gtree.h): the gradient is (p - onehot) * w_i / norm; returns sum(w_i * loss_i) in
 * row order, not divided. ops_crossentropy is this with norm = the rows' own weight. */
double ops_crossentropy_sum(float *logits, float *losses, const int *targets, const float *weights,
                            int N, int V, int want_grad, double norm);

#endif
