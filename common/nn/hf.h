/*
 * hf.h - Hugging Face model directories: config.json + model.safetensors (or shards named by
 * model.safetensors.index.json), for GPT-2 (model_type gpt2) and the Llama family (llama, qwen2,
 * qwen3: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM).
 *
 * A directory written by hf_save loads in `transformers` (GPT2LMHeadModel.from_pretrained), and
 * hf_load reads both our own directories and ones saved by `transformers`: tensor names with or
 * without the "transformer." prefix, F32/F16/BF16 data, and the attention-mask buffers
 * (*.attn.bias, *.attn.masked_bias) and tied lm_head.weight that HF files may carry, which are
 * skipped. Anything else unexpected - a missing or extra tensor, a wrong shape, an unsupported
 * config option - is an error that names the file and the tensor or key.
 *
 * A reward/value model adds a linear scalar head, stored as "score.weight" [1, n_embd] and
 * "score.bias" [1] and announced in config.json by
 *   "rlhf_scalar_head": {"weight": "score.weight", "bias": "score.bias", "n_out": 1}
 *
 * A sharded directory (model.safetensors.index.json with its "weight_map" from tensor name to
 * shard file) loads when every shard opens, every tensor of a shard is mapped to that shard and
 * appears in no other, and every mapped tensor is in its shard. A directory with both forms
 * loads model.safetensors, as transformers does.
 *
 * Use:
 *   gpt_t *m = hf_load("models/gpt2");   if (!m) show(rl_errmsg());
 *   ...train...
 *   if (hf_save(m, "out/step-100") < 0) show(rl_errmsg());
 */
#ifndef RLHF_HF_H
#define RLHF_HF_H

#include "nn/gpt.h"

/*
 * Parses DIR/config.json into *cfg (all fields set; scalar_head from "rlhf_scalar_head"),
 * dispatching on model_type (absent: gpt2). GPT-2: required integer keys n_layer, n_head,
 * n_embd, vocab_size, n_positions; layer_norm_epsilon defaults to 1e-5. The Llama family:
 * required hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size,
 * max_position_embeddings; num_key_value_heads (default: the heads), head_dim, rms_norm_eps
 * (1e-6), rope_theta (10000), rope_scaling (null or rope_type llama3), tie_word_embeddings
 * (false), attention_bias (llama, qwen3: false only; qwen2 always has q/k/v biases),
 * bos_token_id and eos_token_id (the first of a list) are read. Unknown keys are ignored, but
 * options that change the model's math (activation_function other than gelu_new, n_inner !=
 * 4*n_embd, hidden_act other than silu, another rope_type, a sliding window, ...) are rejected.
 * Returns 0, RL_ENOTFOUND / RL_EIO (file), RL_EFORMAT (bad JSON, missing key, wrong type),
 * RL_EUNSUPPORTED or RL_EINVAL (sizes gpt_config_check refuses), with a detail naming the file and
 * the key.
 */
int hf_config_read(const char *dir, gpt_config_t *cfg);

/*
 * Loads the model in directory `dir`: config.json, then every tensor of the model from
 * model.safetensors or the shards of model.safetensors.index.json, converted to F32 (shapes
 * must match exactly). Returns a new model owned by the caller (gpt_destroy), or NULL with the
 * detail in rl_errmsg().
 */
gpt_t *hf_load(const char *dir);

/*
 * Writes `m` to directory `dir` (created with parents if needed): model.safetensors (F32, the
 * tensors of m->tensors in order, metadata {"format": "pt"}) and then config.json, each
 * atomically. Returns 0 or a negative RL_E* code; on failure a file either keeps its old
 * content or has its complete new one.
 */
int hf_save(const gpt_t *m, const char *dir);

typedef enum { HF_F32 = 0, HF_BF16, HF_F16 } hf_dtype_t;

typedef struct {
    hf_dtype_t dtype;       /* the stored dtype (torch_dtype in config.json); BF16 and F16 are
                               rounded to nearest even */
    size_t max_shard_bytes; /* 0: one model.safetensors; else shards model-0000i-of-0000n
                               of at most this many data bytes each (a larger tensor is a shard
                               of its own), named by model.safetensors.index.json */
} hf_save_opts_t;

/*
 * hf_save with options (NULL: hf_save's). The form not written (one file or shards) is removed
 * after the new weights are complete and before config.json, so a load never mixes the two;
 * shards of an earlier save that the new index does not name are left alone.
 */
int hf_save_opts(const gpt_t *m, const char *dir, const hf_save_opts_t *o);

/*
 * Copies the tokenizer files of model directory `from` (GPT-2's vocab.json + merges.txt, and
 * tokenizer.json + tokenizer_config.json, whichever it has) into `to` (created if needed),
 * atomically each, so a model derived from another keeps its tokenizer. A directory with none of
 * them has no tokenizer: nothing is copied and 0 returned; one with only one of vocab.json and
 * merges.txt is RL_EFORMAT. Returns 0 or RL_E*.
 */
int hf_copy_tokenizer(const char *from, const char *to);

#endif
