/*
 * gpt_types.h - the model handle's data: the config, the parameter kinds and their arena
 * layout, the Hugging Face tensor view, the activations, gpt_t. Apart from gpt.h so that the
 * Llama family's code (llama.c, which gpt.c calls) uses them without depending on gpt.c.
 * Callers include gpt.h.
 */
#ifndef RLHF_GPT_TYPES_H
#define RLHF_GPT_TYPES_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    GPT_ARCH_GPT2 = 0, /* GPT2LMHeadModel */
    GPT_ARCH_LLAMA,    /* LlamaForCausalLM */
    GPT_ARCH_QWEN2,    /* Qwen2ForCausalLM: Llama with q/k/v biases */
    GPT_ARCH_QWEN3,    /* Qwen3ForCausalLM: Llama with per-head q/k RMSNorm */
} gpt_arch_t;

/* Field order matters: configs are written positionally ({L, H, C, V, P, eps, head}) and the
 * Llama fields after them default to 0 (GPT-2). Only int and float fields: no padding, so two
 * configs compare with memcmp. */
typedef struct {
    int n_layer, n_head, n_embd, vocab_size, n_positions;
    float layer_norm_epsilon; /* LayerNorm's eps; RMSNorm's (rms_norm_eps) in the Llama family */
    int scalar_head; /* 1: linear n_embd -> 1 head, tensors "score.weight" [1,C], "score.bias" [1]
                      */
    /* The Llama family (arch != GPT_ARCH_GPT2); all 0 for GPT-2. n_positions is then
     * max_position_embeddings: the longest sequence, and the rotary table's length. */
    int arch;                /* gpt_arch_t */
    int n_kv_head;           /* key/value heads (grouped-query attention); divides n_head */
    int head_dim;            /* per head; 0: n_embd / n_head */
    int n_inner;             /* the MLP's width (intermediate_size) */
    int tie_word_embeddings; /* the LM head is embed_tokens (no lm_head.weight) */
    int attn_bias;           /* q/k/v projections have biases (always for qwen2) */
    int qk_norm;             /* RMSNorm per head on q and k before RoPE (qwen3) */
    float rope_theta;        /* RoPE base */
    int rope_llama3;         /* rope_scaling {"rope_type": "llama3", ...}: */
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;      /* original_max_position_embeddings */
    int bos_token_id, eos_token_id; /* config.json's, kept for saving; -1: none */
} gpt_config_t;

/*
 * Parameter kinds, in arena order. The Llama family reuses the GPT-2 kinds it has, in Hugging
 * Face Linear orientation [out, in] (each tensor is a contiguous block of its kind, so a model
 * directory still maps onto the arena with no transposes):
 *   GPT_WTE embed_tokens (V,C); GPT_LN1W input_layernorm; GPT_LN2W post_attention_layernorm;
 *   GPT_LNFW norm;
 *   GPT_QKVW (L, Dq+2Dkv, C): q_proj, k_proj, v_proj stacked by rows (Dq = n_head * head_dim,
 *   Dkv = n_kv_head * head_dim), so one product gives q | k | v; GPT_QKVB their biases;
 *   GPT_ATTPROJW o_proj (L, C, Dq); GPT_FCW (L, 2I, C): gate_proj, up_proj stacked;
 *   GPT_FCPROJW down_proj (L, C, I); GPT_QNORMW, GPT_KNORMW (L, head_dim) q_norm, k_norm;
 *   GPT_LMHEADW lm_head (V, C) when untied.
 * Kinds a model does not have are empty. The scalar head's kinds come last: a model with a head
 * has the arena of the same model without one as its prefix (rm_load relies on it).
 */
enum {
    GPT_WTE,      /* (V, C) */
    GPT_WPE,      /* (P, C) */
    GPT_LN1W,     /* (L, C) */
    GPT_LN1B,     /* (L, C) */
    GPT_QKVW,     /* (L, C, 3C) */
    GPT_QKVB,     /* (L, 3C) */
    GPT_ATTPROJW, /* (L, C, C) */
    GPT_ATTPROJB, /* (L, C) */
    GPT_LN2W,     /* (L, C) */
    GPT_LN2B,     /* (L, C) */
    GPT_FCW,      /* (L, C, 4C) */
    GPT_FCB,      /* (L, 4C) */
    GPT_FCPROJW,  /* (L, 4C, C) */
    GPT_FCPROJB,  /* (L, C) */
    GPT_LNFW,     /* (C) */
    GPT_LNFB,     /* (C) */
    GPT_QNORMW,   /* (L, head_dim) - Llama family with qk_norm */
    GPT_KNORMW,   /* (L, head_dim) - Llama family with qk_norm */
    GPT_LMHEADW,  /* (V, C) - Llama family, untied */
    GPT_HEADW,    /* (C) - "score.weight" [1, C]; size 0 without a scalar head */
    GPT_HEADB,    /* (1) - "score.bias" [1]; size 0 without a scalar head */
    GPT_NKINDS
};

/* Pointers into an arena, one per kind (same order as the enum). */
typedef struct {
    float *wte, *wpe, *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb,
        *fcprojw, *fcprojb, *lnfw, *lnfb, *qnormw, *knormw, *lmheadw, *headw, *headb;
} gpt_params_t;

/* One tensor in Hugging Face naming ("h.3.attn.c_attn.weight"), viewing the arenas. */
typedef struct {
    char name[64];
    int ndim;
    int shape[2];
    size_t size;   /* elements */
    size_t offset; /* into the parameter (and gradient) arena */
    int decay;     /* 1 for 2-D weight matrices: AdamW weight decay applies */
} gpt_tensor_t;

/* Forward activations and backward scratch, all views into one arena. In the Llama family, ln*
 * hold RMSNorm outputs (the *_mean are empty), qkv is (L,N,D3) with D3 = Dq + 2 Dkv, atty
 * (L,N,Dq), att (L,B,H,T,T), fch (L,N,2I) gate | up, fch_gelu (L,N,I) silu(gate) * up, and the
 * backward scratch dbuf, dbuf2 is max(C, Dq) wide, dqkv D3, dfch 2I, dfch_gelu I. */
typedef struct {
    float *encoded;                   /* (B,T,C) */
    float *ln1, *ln1_mean, *ln1_rstd; /* (L,B,T,C), (L,B,T), (L,B,T) */
    float *qkv;                       /* (L,B,T,3C) */
    float *atty;                      /* (L,B,T,C) */
    float *att;                       /* (L,B,H,T,T) softmax probabilities */
    float *attproj;                   /* (L,B,T,C) */
    float *residual2;                 /* (L,B,T,C) */
    float *ln2, *ln2_mean, *ln2_rstd; /* (L,B,T,C), (L,B,T), (L,B,T) */
    float *fch;                       /* (L,B,T,4C) pre-GELU */
    float *fch_gelu;                  /* (L,B,T,4C) */
    float *fcproj;                    /* (L,B,T,C) */
    float *residual3;                 /* (L,B,T,C) */
    float *lnf, *lnf_mean, *lnf_rstd; /* (B,T,C), (B,T), (B,T) */
    float *logits;                    /* (B,T,V); dlogits in place after gpt_lm_loss(grad=1) */
    float *losses;                    /* (B,T) per-position cross-entropy (0 where masked) */
    /* backward scratch */
    float *dres, *dbuf, *dbuf2; /* (B,T,C) each */
    float *dqkv;                /* (B,T,3C) */
    float *datt;                /* (B,H,T,T) */
    float *dfch_gelu;           /* (B,T,4C) gradient after GELU */
    float *dfch;                /* (B,T,4C) gradient before GELU */
    /* Llama family only */
    float *qkr;     /* (L,B,T,D3) q and k after the q/k norms and RoPE, then v: attention's input */
    float *qk_rstd; /* (L,B,T,H+Hkv) the q/k norms' 1/rms per head */
    float *dqkr;    /* (B,T,D3) */
} gpt_acts_t;

typedef struct {
    gpt_config_t cfg;
    size_t param_sizes[GPT_NKINDS];
    size_t num_params;
    float *params_mem; /* parameter arena */
    gpt_params_t params;
    float *grads_mem; /* gradient arena (NULL until gpt_grads_alloc) */
    gpt_params_t grads;
    gpt_tensor_t *tensors; /* Hugging Face view of the arena */
    int n_tensors;
    /* activations, sized for acts_BT = B*T positions */
    float *acts_mem;
    size_t acts_cap; /* floats allocated */
    gpt_acts_t acts;
    int B, T;          /* shape of the last forward */
    int have_logits;   /* the last forward computed logits */
    int dlogits_ready; /* acts.logits holds dlogits */
    int *inputs;       /* (B,T) copy of the last inputs */
    size_t inputs_cap; /* ints allocated at `inputs` */
    int *head_idx;     /* positions of the last gpt_head_forward */
    int head_n;
    float *rope_cos, *rope_sin; /* Llama family: (n_positions, head_dim/2), llama.h */
} gpt_t;

/* The width of one attention head: cfg->head_dim, or n_embd / n_head when that is 0. */
static inline int gpt_head_dim(const gpt_config_t *cfg) {
    return cfg->head_dim > 0 ? cfg->head_dim : cfg->n_head > 0 ? cfg->n_embd / cfg->n_head : 0;
}

#endif
