/*
 * hf.h - Hugging Face GPT-2 model directories: config.json + model.safetensors.
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
 * Use:
 *   gpt_t *m = hf_load("models/gpt2");   if (!m) show(rl_errmsg());
 *   ...train...
 *   if (hf_save(m, "out/step-100") < 0) show(rl_errmsg());
 */
#ifndef RLHF_HF_H
#define RLHF_HF_H

#include "nn/gpt.h"

/*
 * Parses DIR/config.json into *cfg (all fields set; scalar_head from "rlhf_scalar_head").
 * Required integer keys: n_layer, n_head, n_embd, vocab_size, n_positions; layer_norm_epsilon
 * defaults to 1e-5. Unknown keys are ignored, but options that change the model's math
 * (activation_function other than gelu_new/gelu_pytorch_tanh, n_inner != 4*n_embd, ...) are
 * rejected. Returns 0, RL_ENOTFOUND / RL_EIO (file), RL_EFORMAT (bad JSON, missing key, wrong
 * type), RL_EUNSUPPORTED or RL_EINVAL (sizes gpt_config_check refuses), with a detail naming the
 * file and the key.
 */
int hf_config_read(const char *dir, gpt_config_t *cfg);

/*
 * Loads the model in directory `dir`: config.json, then every tensor of the model from
 * model.safetensors, converted to F32 (shapes must match exactly). Returns a new model owned by
 * the caller (gpt_destroy), or NULL with the detail in rl_errmsg().
 */
gpt_t *hf_load(const char *dir);

/*
 * Writes `m` to directory `dir` (created with parents if needed): model.safetensors (F32, the
 * tensors of m->tensors in order, metadata {"format": "pt"}) and then config.json, each
 * atomically. Returns 0 or a negative RL_E* code; on failure a file either keeps its old
 * content or has its complete new one.
 */
int hf_save(const gpt_t *m, const char *dir);

/*
 * Copies the tokenizer files (vocab.json, merges.txt) of model directory `from` into `to`
 * (created if needed), atomically each, so a model derived from another keeps its tokenizer.
 * A directory with neither file has no tokenizer: nothing is copied and 0 returned; one with
 * only one of the two is RL_EFORMAT. Returns 0 or RL_E*.
 */
int hf_copy_tokenizer(const char *from, const char *to);

#endif
