/*
 * tok.h - byte-level BPE: the tokenizer of every model directory (GPT-2's vocab.json +
 * merges.txt, or a Hugging Face tokenizer.json as Llama 3, Qwen2.5/3 and SmolLM2 ship it), its
 * chat template, and a trainer that learns a GPT-2 style vocabulary.
 *
 * Encoding follows GPT-2 exactly: the text is split by GPT-2's pre-tokenisation pattern (PCRE2
 * with Unicode properties), each piece's bytes are mapped through GPT-2's byte<->unicode table,
 * and merges are applied by rank. A tokenizer.json directory runs its own pipeline instead
 * (added tokens, normalizer, pre-tokenizer steps, then the same BPE), as Hugging Face's
 * tokenizers do. Decoding returns the exact original bytes (after normalisation).
 */
#ifndef RLHF_TOK_H
#define RLHF_TOK_H

#include <stddef.h>

typedef struct tok tok_t;

/*
 * Loads DIR/tokenizer.json (with DIR/tokenizer_config.json if present) when DIR has one, else
 * DIR/vocab.json and DIR/merges.txt. NULL on failure: the detail names the file and the line,
 * or for tokenizer.json the key ("model.merges[12]"), and what is wrong or unsupported.
 *
 * tokenizer.json: a byte-level BPE model (vocab; merges as "a b" or [a, b]; ignore_merges),
 * normalizer null or NFC, pre_tokenizer Split / ByteLevel / Digits or a Sequence of them,
 * decoder ByteLevel, added_tokens (lstrip, rstrip, single_word, special; all matched in the
 * raw text, "normalized" ones too). The post_processor is not applied (encoding is Hugging
 * Face's add_special_tokens=False); only the BOS it adds is read, for tok_bos.
 */
tok_t *tok_load(const char *dir);

/* Frees; accepts NULL and NULLs the caller's pointer. */
void tok_destroy(tok_t **tp);

/* Number of ids (the largest id + 1). */
int tok_vocab_size(const tok_t *t);

/* The end-of-sequence id: tokenizer_config.json's eos_token when the directory has one, else
 * the id of "<|endoftext|>"; -1 if neither. */
int tok_eot(const tok_t *t);

/* The id to put before a sequence, or -1: tokenizer_config.json's bos_token when its
 * add_bos_token is true, none when false; without add_bos_token, the token tokenizer.json's
 * post-processor puts first (Llama 3's TemplateProcessing), so that BOS + encode is Hugging
 * Face's encode(text, add_special_tokens=True) for these families. -1 for GPT-2 directories
 * (vocab.json + merges.txt), which add none. */
int tok_bos(const tok_t *t);

/*
 * Whether the pipeline's texts (prompts, completions, pairs) are encoded with special tokens
 * matched (tok_encode's allow_special): 1 for a tokenizer.json directory, as Hugging Face's
 * encode does and as a chat template's rendering needs (its <|im_start|> must be one id, in
 * every stage that encodes the text again); 0 for GPT-2 directories, where "<|endoftext|>"
 * written in a prompt stays text (GPT-2's own data has none).
 */
int tok_text_special(const tok_t *t);

/* tokenizer_config.json's chat_template (its "default" one if it lists several), or NULL. */
const char *tok_chat_template(const tok_t *t);

/*
 * Renders a conversation through the directory's chat template (nn/jinja.h: Jinja as
 * transformers' apply_chat_template runs it). messages_json: len bytes of a JSON array of
 * {"role", "content", ...} objects, or an object whose "messages" is one (other keys, such as
 * "tools" or "enable_thinking", become template variables too). The template also sees
 * add_generation_prompt, bos_token and eos_token. *out: malloc'ed NUL-terminated text of *out_len
 * bytes (caller frees), to be encoded with allow_special. Returns 0; RL_ENOTFOUND if the
 * directory has no chat template; RL_EFORMAT for malformed messages or template; RL_EINVAL for a
 * template error (raise_exception's message); RL_EUNSUPPORTED for Jinja outside the subset.
 */
int tok_chat_render(const tok_t *t, const char *messages_json, size_t len,
                    int add_generation_prompt, char **out, size_t *out_len);

/*
 * Encodes len bytes of text (any bytes: invalid UTF-8 is encoded byte by byte, losslessly) into
 * a malloc'ed array *ids of *n ids (caller frees). With allow_special, the literal text
 * "<|endoftext|>" becomes the special id (as Hugging Face's GPT-2 tokenizer does); without, it
 * is encoded as ordinary text. With tokenizer.json, every added token written in the text is
 * matched (as Hugging Face's encode does), except that without allow_special the ones marked
 * special are ordinary text (its split_special_tokens). No BOS is added. Returns 0 or RL_E*.
 */
int tok_encode(tok_t *t, const char *text, size_t len, int allow_special, int **ids, size_t *n);

/* Decodes ids into a malloc'ed NUL-terminated buffer of *len bytes (the exact original bytes).
 * An id outside the vocabulary is RL_EINVAL naming it. */
int tok_decode(const tok_t *t, const int *ids, size_t n, char **text, size_t *len);

/*
 * Learns a byte-level BPE vocabulary of vocab_size ids (256 byte tokens + merges +
 * "<|endoftext|>", which is the last id) from len bytes of corpus, and writes DIR/vocab.json
 * and DIR/merges.txt atomically. Deterministic: ties between equally frequent pairs are broken
 * by a fixed order. Returns 0 or RL_E* (RL_EINVAL if vocab_size < 257).
 */
int tok_train(const char *corpus, size_t len, int vocab_size, const char *dir);

/*
 * A malloc'ed NUL-terminated copy of len bytes of text in which every byte that is not part of
 * a valid UTF-8 sequence is replaced by U+FFFD; valid sequences are kept as they are. For
 * showing decoded text where UTF-8 is required (JSON): a sample may end inside a character.
 * *out_len receives the length. NULL on ENOMEM.
 */
char *tok_utf8_lossy(const char *text, size_t len, size_t *out_len);

#endif
