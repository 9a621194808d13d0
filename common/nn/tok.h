/*
 * tok.h - GPT-2 byte-level BPE: the tokenizer of every model directory (vocab.json +
 * merges.txt in the Hugging Face layout), and a trainer that learns such a vocabulary.
 *
 * Encoding follows GPT-2 exactly: the text is split by GPT-2's pre-tokenisation pattern (PCRE2
 * with Unicode properties), each piece's bytes are mapped through GPT-2's byte<->unicode table,
 * and merges are applied by rank. Decoding returns the exact original bytes.
 */
#ifndef RLHF_TOK_H
#define RLHF_TOK_H

#include <stddef.h>

typedef struct tok tok_t;

/* Loads DIR/vocab.json and DIR/merges.txt. NULL on failure (detail names file and line). */
tok_t *tok_load(const char *dir);

/* Frees; accepts NULL and NULLs the caller's pointer. */
void tok_destroy(tok_t **tp);

/* Number of ids (the largest id + 1). */
int tok_vocab_size(const tok_t *t);

/* The id of "<|endoftext|>", or -1 if the vocabulary has none. */
int tok_eot(const tok_t *t);

/*
 * Encodes len bytes of text (any bytes: invalid UTF-8 is encoded byte by byte, losslessly) into
 * a malloc'ed array *ids of *n ids (caller frees). With allow_special, the literal text
 * "<|endoftext|>" becomes the special id (as Hugging Face's GPT-2 tokenizer does); without, it
 * is encoded as ordinary text. Returns 0 or RL_E*.
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
