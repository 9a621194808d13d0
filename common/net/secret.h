/*
 * secret.h - files that hold secrets (the master's HTTP bearer token, a TLS private key) and the
 * comparison of a presented token with the expected one.
 *
 * Tokens handed to people (an annotator's personal link) are made with secret_token_new and
 * kept only as their secret_token_hash digest.
 *
 * A secret file must be a regular file that only its owner can read or write (mode 0600 or
 * stricter): a looser one is refused with its name and mode, as ssh refuses a key others can
 * read. A token file holds one token - printable ASCII without spaces, at least
 * SECRET_TOKEN_MIN characters - with surrounding whitespace (a final newline) ignored.
 *
 *   char tok[SECRET_TOKEN_CAP];
 *   if (secret_token_read("http.token", tok, sizeof tok) < 0) show(rl_errmsg());
 *   if (!secret_token_equal(header_value, header_len, tok)) answer 401;
 */
#ifndef RLHF_SECRET_H
#define RLHF_SECRET_H

#include <stddef.h>

#define SECRET_TOKEN_MIN 32  /* characters */
#define SECRET_TOKEN_CAP 257 /* a token buffer: at most 256 characters and the NUL */

/* 0 when path is a regular file with no group or other permission bits; RL_ENOTFOUND / RL_EIO
 * when it cannot be stat'ed, RL_EINVAL when it is not a regular file or its mode is too open
 * ("FILE: mode 0644 is open to others than its owner; it must be 0600 or stricter
 * (chmod 600 FILE)"). The detail names the file. */
int secret_file_check(const char *path);

/* The token in path into tok (cap bytes, NUL-terminated): secret_file_check, then the file's
 * content less surrounding whitespace, which must be one token of SECRET_TOKEN_MIN to cap - 1
 * printable, non-space ASCII characters. Returns 0 or a negative RL_E* code whose detail names
 * the file (never the token); tok is "" on failure. */
int secret_token_read(const char *path, char *tok, size_t cap);

/* A new random token (32 bytes of randombytes_buf as 64 hex digits) into tok (cap >= 65) and
 * written to path atomically with mode 0600 (an existing file is replaced). Returns 0 or
 * RL_EINVAL (cap too small) / RL_EIO with the detail naming the file. */
int secret_token_create(const char *path, char *tok, size_t cap);

/* The size of secret_token_hash's digest. */
#define SECRET_HASH_LEN 32

/* A new random token, kept by nobody but its holder: 32 bytes of randombytes_buf (256 bits) as
 * 64 hex digits into tok (cap >= 65). Returns 0 or RL_EINVAL (cap too small) / RL_EIO. */
int secret_token_new(char *tok, size_t cap);

/* The digest by which a token is stored and looked up (BLAKE2b-256 of its len bytes), so that
 * a store of digests gives away no token. */
void secret_token_hash(const char *tok, size_t len, unsigned char out[SECRET_HASH_LEN]);

/* 1 when the len bytes at a are the NUL-terminated token b, else 0. Both are hashed (BLAKE2b)
 * and the digests compared with sodium_memcmp, so the time taken tells nothing of where they
 * differ or of b's length. a may be NULL when len is 0. */
int secret_token_equal(const char *a, size_t len, const char *b);

#endif
