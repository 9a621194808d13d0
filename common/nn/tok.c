/*
 * tok.c - GPT-2 byte-level BPE: loading, encoding, decoding and training (see tok.h).
 *
 * Tokens are held as raw byte strings. GPT-2's files spell every byte as one printable code
 * point (the byte<->unicode map below), so vocab.json keys and merges.txt lines are converted
 * to bytes on load and back on save; nothing else in this file sees the unicode spelling.
 *
 * Encoding has three stages:
 *   1. With allow_special, the text is cut at each literal "<|endoftext|>".
 *   2. Pre-tokenisation. The pattern only ever sees valid UTF-8: the text is split into maximal
 *      runs of valid UTF-8 and runs of invalid bytes. The pattern runs (PCRE2, UTF + UCP, so
 *      \p{L}, \p{N} and \s are the real Unicode classes) over each valid run, and every invalid
 *      byte becomes a pre-token of its own. GPT-2's reference works on already-decoded strings
 *      and has no answer for invalid bytes; this rule keeps them lossless (byte-level BPE can
 *      encode any byte), keeps valid text encoded exactly as GPT-2 does, and never lets a broken
 *      sequence glue itself onto its neighbours (so " \xff" is two pre-tokens, " " and "\xff").
 *      The classes are PCRE2's: its Unicode tables may be older or newer than another
 *      implementation's (code points assigned since then differ), and under UCP its \s also
 *      takes U+0085 and U+180E, which JavaScript's does not (JavaScript's takes U+FEFF).
 *   3. BPE on each pre-token: GPT-2's rule is "find the adjacent pair of lowest merge rank,
 *      merge every occurrence of it left to right, repeat". Short pre-tokens run exactly that
 *      loop on arrays, keeping each pair's rank so a pass only looks up the pairs it changed.
 *      Long ones (whitespace runs, CJK text without spaces) use a linked list of symbols and a
 *      heap of (rank, position) candidates: all candidates of the lowest rank are taken as one
 *      batch in position order, and the pairs the batch creates enter the heap only after it,
 *      which reproduces the reference pass by pass in O(n log n) instead of O(n^2). Pair ->
 *      (rank, merged id) is one hash lookup. Results for short pre-tokens are cached.
 *
 * Training (tok_train) counts the pre-tokens of the corpus, then repeatedly merges the most
 * frequent adjacent pair (ties: the pair whose (left, right) byte strings sort first), updating
 * the pair counts only in the words that contain the merged pair. A lazy max-heap holds the
 * candidates: a popped entry whose count is stale is pushed back with its current count. A pair
 * whose bytes some other pair already made (a + bc after ab + c) gets that token's id: the merge
 * is written, the vocabulary does not grow, so merges.txt may hold more than vocab_size - 257
 * lines.
 *
 * A tok_t is not safe for concurrent use (the cache and scratch buffers are shared); use one
 * per thread.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "nn/tok.h"

#include <assert.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/fs.h"

#define TOK_EOT       "<|endoftext|>"
#define TOK_EOT_LEN   (sizeof TOK_EOT - 1)
#define TOK_MAX_ID    (1 << 24)         /* ids are ints; this keeps tables sane */
#define TOK_MAX_FILE  ((size_t)1 << 30) /* vocab.json / merges.txt size limit */
#define TOK_NCP       324               /* byte-alphabet code points are all below this */
#define CACHE_SLOTS   (1 << 15)
#define CACHE_MAX_LEN 128 /* longest pre-token worth caching */
#define BPE_SMALL     32  /* pre-tokens up to this length use the plain quadratic loop */

/* GPT-2's pre-tokenisation pattern, verbatim. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- byte <-> unicode ---------------------------------------------------------------------- */

/*
 * GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
 * for U+0100.. in byte order. order[i] is the byte of id i in GPT-2's vocabulary (the same
 * enumeration: printable bytes first), which tok_train also uses for its first 256 ids.
 */
typedef struct {
    uint16_t cp[256];      /* byte -> code point */
    int16_t byte[TOK_NCP]; /* code point -> byte, -1 if none */
    uint8_t order[256];    /* id -> byte for the 256 byte tokens */
} bytemap_t;

static void bytemap_init(bytemap_t *m) {
    int n = 0, extra = 0;
    for (int i = 0; i < TOK_NCP; i++) m->byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
            m->cp[b] = (uint16_t)b;
            m->order[n++] = (uint8_t)b;
        }
    }
    for (int b = 0; b < 256; b++) {
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
            continue;
        m->cp[b] = (uint16_t)(256 + extra++);
        m->order[n++] = (uint8_t)b;
    }
    for (int b = 0; b < 256; b++) m->byte[m->cp[b]] = (int16_t)b;
}

/* ---- growable buffers ---------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t more) {
    if (b->n + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_add(buf_t *b, const void *data, size_t len) {
    int rc = buf_reserve(b, len);
    if (rc < 0) return rc;
    if (len) memcpy(b->p + b->n, data, len);
    b->n += len;
    return 0;
}

/* Appends the GPT-2 spelling (UTF-8 of each byte's code point) of len raw bytes. */
static int buf_add_spelled(buf_t *b, const bytemap_t *m, const unsigned char *s, size_t len) {
    int rc = buf_reserve(b, 2 * len);
    if (rc < 0) return rc;
    for (size_t i = 0; i < len; i++) {
        unsigned cp = m->cp[s[i]];
        if (cp < 0x80) {
            b->p[b->n++] = (char)cp;
        } else {
            b->p[b->n++] = (char)(0xC0 | (cp >> 6));
            b->p[b->n++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return 0;
}

typedef struct {
    int *p;
    size_t n, cap;
} ivec_t;

static int ivec_push(ivec_t *v, int x) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 64;
        int *p = realloc(v->p, cap * sizeof *p);
        if (!p) return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = x;
    return 0;
}

/* Makes room for n elements of size sz in *p (capacity *cap, in elements). */
static int grow(void *pp, size_t *cap, size_t n, size_t sz) {
    if (n <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < n) c *= 2;
    void *p = realloc(*(void **)pp, c * sz);
    if (!p) return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
    *(void **)pp = p;
    *cap = c;
    return 0;
}

static uint64_t hash_bytes(const void *data, size_t len) {
    const unsigned char *s = data;
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

/* ---- string pool + hash set: byte strings numbered 0.. with lookup by content ------------- */

typedef struct {
    buf_t bytes;
    size_t *off;
    uint32_t *len;
    size_t n, cap;
    int32_t *slot; /* index into the pool, -1 empty */
    uint32_t *hash;
    size_t nslot;
} strpool_t;

static const char *pool_str(const strpool_t *p, size_t i) {
    return p->bytes.p + p->off[i];
}

static void pool_free(strpool_t *p) {
    free(p->bytes.p);
    free(p->off);
    free(p->len);
    free(p->slot);
    free(p->hash);
    memset(p, 0, sizeof *p);
}

/* Index of the string, or -1. */
static int pool_find(const strpool_t *p, const void *s, size_t len) {
    if (!p->nslot) return -1;
    uint32_t h = (uint32_t)hash_bytes(s, len);
    for (size_t i = h & (p->nslot - 1);; i = (i + 1) & (p->nslot - 1)) {
        int32_t k = p->slot[i];
        if (k < 0) return -1;
        if (p->hash[i] == h && p->len[k] == len && !memcmp(pool_str(p, (size_t)k), s, len))
            return k;
    }
}

static void pool_place(strpool_t *p, int32_t k, uint32_t h) {
    size_t i = h & (p->nslot - 1);
    while (p->slot[i] >= 0) i = (i + 1) & (p->nslot - 1);
    p->slot[i] = k;
    p->hash[i] = h;
}

/* Appends a string known to be absent; returns its index or RL_ENOMEM. */
static int pool_add(strpool_t *p, const void *s, size_t len) {
    int rc;
    if (p->n == p->cap) {
        size_t cap = p->cap;
        if ((rc = grow(&p->off, &cap, p->n + 1, sizeof *p->off)) < 0) return rc;
        uint32_t *l = realloc(p->len, cap * sizeof *l);
        if (!l) return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
        p->len = l;
        p->cap = cap;
    }
    if (2 * (p->n + 1) > p->nslot) {
        size_t ns = p->nslot ? 2 * p->nslot : 1024;
        int32_t *slot = malloc(ns * sizeof *slot);
        uint32_t *hash = malloc(ns * sizeof *hash);
        if (!slot || !hash) {
            free(slot);
            free(hash);
            return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
        }
        for (size_t i = 0; i < ns; i++) slot[i] = -1;
        int32_t *old_slot = p->slot;
        uint32_t *old_hash = p->hash;
        size_t old_n = p->nslot;
        p->slot = slot;
        p->hash = hash;
        p->nslot = ns;
        for (size_t i = 0; i < old_n; i++)
            if (old_slot[i] >= 0) pool_place(p, old_slot[i], old_hash[i]);
        free(old_slot);
        free(old_hash);
    }
    p->off[p->n] = p->bytes.n;
    p->len[p->n] = (uint32_t)len;
    if ((rc = buf_add(&p->bytes, s, len)) < 0) return rc;
    pool_place(p, (int32_t)p->n, (uint32_t)hash_bytes(s, len));
    return (int)p->n++;
}

/* ---- pairs of ids -> two ints ------------------------------------------------------------ */

typedef struct {
    uint64_t key; /* UINT64_MAX: empty */
    int32_t v0, v1;
} pairslot_t;

typedef struct {
    pairslot_t *slot;
    size_t n, cap;
} pairmap_t;

static uint64_t pair_key(int a, int b) {
    return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}

static pairslot_t *pairmap_find(const pairmap_t *m, uint64_t k) {
    if (!m->cap) return NULL;
    for (size_t i = hash_u64(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->slot[i].key == k) return &m->slot[i];
        if (m->slot[i].key == UINT64_MAX) return NULL;
    }
}

/* Inserts k (absent) with values v0, v1. */
static int pairmap_put(pairmap_t *m, uint64_t k, int32_t v0, int32_t v1) {
    if (2 * (m->n + 1) > m->cap) {
        size_t nc = m->cap ? 2 * m->cap : 1024;
        pairslot_t *slot = malloc(nc * sizeof *slot);
        if (!slot) return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
        for (size_t i = 0; i < nc; i++) slot[i].key = UINT64_MAX;
        for (size_t j = 0; j < m->cap; j++) {
            if (m->slot[j].key == UINT64_MAX) continue;
            size_t i = hash_u64(m->slot[j].key) & (nc - 1);
            while (slot[i].key != UINT64_MAX) i = (i + 1) & (nc - 1);
            slot[i] = m->slot[j];
        }
        free(m->slot);
        m->slot = slot;
        m->cap = nc;
    }
    size_t i = hash_u64(k) & (m->cap - 1);
    while (m->slot[i].key != UINT64_MAX) i = (i + 1) & (m->cap - 1);
    m->slot[i] = (pairslot_t){k, v0, v1};
    m->n++;
    return 0;
}

static void pairmap_free(pairmap_t *m) {
    free(m->slot);
    memset(m, 0, sizeof *m);
}

/* ---- pre-tokenisation ---------------------------------------------------------------------- */

typedef struct {
    pcre2_code *re;
    pcre2_match_data *md;
} pretok_t;

typedef int (*piece_fn)(void *ctx, const unsigned char *s, size_t n);

static int pretok_init(pretok_t *p) {
    int err;
    PCRE2_SIZE at;
    p->re = pcre2_compile((PCRE2_SPTR)gpt2_pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                          &err, &at, NULL);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return rl_fail(RL_EUNSUPPORTED, "tokenizer: PCRE2 rejects the GPT-2 pattern at %zu: %s",
                       (size_t)at, (const char *)msg);
    }
    (void)pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE); /* without JIT, the interpreter runs */
    p->md = pcre2_match_data_create_from_pattern(p->re, NULL);
    if (!p->md) return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
    return 0;
}

static void pretok_free(pretok_t *p) {
    pcre2_match_data_free(p->md);
    pcre2_code_free(p->re);
    p->md = NULL;
    p->re = NULL;
}

/* Length of the valid UTF-8 character at s (n > 0 bytes available), or 0 if invalid: no
 * overlong forms, no surrogates, nothing above U+10FFFF - exactly what PCRE2 accepts. */
static size_t utf8_char_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0;
    if (c < 0xE0) return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0)) return 0;
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90)) return 0;
        return 4;
    }
    return 0;
}

/* Runs the pattern over valid UTF-8 and calls fn for every match. */
static int pretok_valid(pretok_t *p, const unsigned char *s, size_t n, piece_fn fn, void *ctx) {
    size_t off = 0;
    int rc;
    while (off < n) {
        int m = pcre2_match(p->re, s, n, off, PCRE2_NO_UTF_CHECK, p->md, NULL);
        if (m == PCRE2_ERROR_NOMATCH) return fn(ctx, s + off, n - off); /* cannot happen */
        if (m < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            return rl_fail(RL_EUNSUPPORTED, "tokenizer: pattern match failed: %s",
                           (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(p->md);
        /* every character starts some alternative, so there is never a gap or an empty match;
         * handle both anyway rather than lose bytes */
        if (ov[0] > off && (rc = fn(ctx, s + off, ov[0] - off)) < 0) return rc;
        size_t end = ov[1] > ov[0] ? ov[1] : ov[0] + utf8_char_len(s + ov[0], n - ov[0]);
        if ((rc = fn(ctx, s + ov[0], end - ov[0])) < 0) return rc;
        off = end;
    }
    return 0;
}

/* Pre-tokenises any bytes: valid UTF-8 runs through the pattern, each invalid byte alone. */
static int pretok_run(pretok_t *p, const unsigned char *s, size_t n, piece_fn fn, void *ctx) {
    size_t i = 0;
    int rc;
    while (i < n) {
        size_t j = i, k;
        while (j < n && (k = utf8_char_len(s + j, n - j)) > 0) j += k;
        if (j > i && (rc = pretok_valid(p, s + i, j - i, fn, ctx)) < 0) return rc;
        if (j < n && (rc = fn(ctx, s + j, 1)) < 0) return rc;
        i = j < n ? j + 1 : n;
    }
    return 0;
}

/* ---- the tokenizer ------------------------------------------------------------------------- */

typedef struct {
    uint64_t hash; /* 0: empty */
    uint32_t key_off, key_len, ids_off, ids_len;
} cache_slot_t;

typedef struct {
    int32_t rank, pos;
} cand_t;

struct tok {
    strpool_t toks;   /* token bytes, in vocab.json order */
    int32_t *pool_id; /* pool index -> id */
    int32_t *id_pool; /* id -> pool index, -1 for unused ids */
    int n_ids, eot;
    int byte_id[256];
    pairmap_t pairs; /* (left id, right id) -> (rank, id of the merged token) */
    int32_t *lines;  /* rank -> line in merges.txt, for duplicate reports */
    size_t n_merges, cap_merges;
    pretok_t pt;
    ivec_t *out; /* the encode in progress */
    /* cache of pre-token -> ids */
    cache_slot_t *cache;
    size_t cache_used;
    buf_t cache_keys;
    ivec_t cache_ids;
    /* BPE scratch */
    int *sym, *nxt, *prv, *pending;
    size_t cap_sym, cap_pending;
    cand_t *heap;
    size_t cap_heap;
};

void tok_destroy(tok_t **tp) {
    if (!tp || !*tp) return;
    tok_t *t = *tp;
    pool_free(&t->toks);
    free(t->pool_id);
    free(t->id_pool);
    pairmap_free(&t->pairs);
    free(t->lines);
    pretok_free(&t->pt);
    free(t->cache);
    free(t->cache_keys.p);
    free(t->cache_ids.p);
    free(t->sym);
    free(t->nxt);
    free(t->prv);
    free(t->pending);
    free(t->heap);
    free(t);
    *tp = NULL;
}

int tok_vocab_size(const tok_t *t) {
    return t->n_ids;
}

int tok_eot(const tok_t *t) {
    return t->eot;
}

/*
 * Converts a GPT-2 spelled token (UTF-8, code points of the byte alphabet) to raw bytes in out.
 * Returns 0, or -1 with *bad set to the offending code point (0x110000 for invalid UTF-8).
 */
static int unspell(const bytemap_t *m, const char *s, size_t len, buf_t *out, unsigned *bad) {
    const unsigned char *u = (const unsigned char *)s;
    out->n = 0;
    if (buf_reserve(out, len) < 0) return -2;
    for (size_t i = 0; i < len;) {
        size_t k = utf8_char_len(u + i, len - i);
        unsigned cp = 0x110000; /* invalid UTF-8 */
        if (k == 1) cp = u[i];
        if (k == 2) cp = (u[i] & 0x1Fu) << 6 | (u[i + 1] & 0x3Fu);
        if (k == 3) cp = (u[i] & 0x0Fu) << 12 | (u[i + 1] & 0x3Fu) << 6 | (u[i + 2] & 0x3Fu);
        if (k == 4)
            cp = (u[i] & 0x07u) << 18 | (u[i + 1] & 0x3Fu) << 12 | (u[i + 2] & 0x3Fu) << 6 |
                 (u[i + 3] & 0x3Fu);
        if (cp >= TOK_NCP || m->byte[cp] < 0) {
            *bad = cp;
            return -1;
        }
        out->p[out->n++] = (char)m->byte[cp];
        i += k;
    }
    return 0;
}

/* The line of the index-th key of the top-level object in (already valid) JSON text. */
static int json_key_line(const char *s, size_t n, size_t index) {
    int line = 1, depth = 0, in_str = 0, esc = 0, expect_key = 0;
    size_t key = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\n') line++;
        if (in_str) {
            if (esc)
                esc = 0;
            else if (c == '\\')
                esc = 1;
            else if (c == '"')
                in_str = 0;
            continue;
        }
        if (c == '"') {
            in_str = 1;
            if (depth == 1 && expect_key) {
                if (key++ == index) return line;
                expect_key = 0;
            }
        } else if (c == '{' || c == '[') {
            depth++;
            if (depth == 1) expect_key = 1;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ',' && depth == 1) {
            expect_key = 1;
        }
    }
    return line;
}

static int bad_char(const char *path, int line, const char *what, const char *tok, unsigned cp) {
    if (cp >= 0x110000)
        return rl_fail(RL_EFORMAT, "%s:%d: %s \"%.60s\" is not valid UTF-8", path, line, what, tok);
    return rl_fail(RL_EFORMAT,
                   "%s:%d: %s \"%.60s\" has U+%04X, which is not in GPT-2's byte alphabet", path,
                   line, what, tok, cp);
}

static int load_vocab(tok_t *t, const bytemap_t *m, const char *path) {
    char *text = NULL;
    size_t len = 0;
    json_t *root = NULL;
    buf_t b = {0};
    int rc = fs_read_file(path, TOK_MAX_FILE, &text, &len);
    if (rc < 0) return rc;
    json_error_t je;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        rc = rl_fail(RL_EFORMAT, "%s:%d: %s", path, je.line, je.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        rc = rl_fail(RL_EFORMAT, "%s:1: expected an object of token -> id", path);
        goto fail;
    }
    size_t count = json_object_size(root), index = 0;
    if (!(t->pool_id = malloc((count + 1) * sizeof *t->pool_id))) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    const char *key;
    json_t *val;
    int max_id = -1;
    json_object_foreach(root, key, val) {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || id >= TOK_MAX_ID) {
            rc = rl_fail(RL_EFORMAT, "%s:%d: token \"%.60s\": id must be an integer in [0, %d)",
                         path, json_key_line(text, len, index), key, TOK_MAX_ID);
            goto fail;
        }
        unsigned bad = 0;
        int u = unspell(m, key, strlen(key), &b, &bad);
        if (u == -2) {
            rc = RL_ENOMEM;
            goto fail;
        }
        if (u < 0 || b.n == 0) {
            rc = u < 0 ? bad_char(path, json_key_line(text, len, index), "token", key, bad)
                       : rl_fail(RL_EFORMAT, "%s:%d: empty token", path,
                                 json_key_line(text, len, index));
            goto fail;
        }
        /* distinct keys spell distinct byte strings: the map is a bijection */
        int k = pool_add(&t->toks, b.p, b.n);
        if (k < 0) {
            rc = k;
            goto fail;
        }
        t->pool_id[index++] = (int32_t)id;
        if (id > max_id) max_id = (int)id;
    }
    t->n_ids = max_id + 1;
    if (!(t->id_pool = malloc(((size_t)t->n_ids + 1) * sizeof *t->id_pool))) {
        rc = rl_fail(RL_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (int i = 0; i < t->n_ids; i++) t->id_pool[i] = -1;
    for (size_t i = 0; i < count; i++) {
        int id = t->pool_id[i];
        if (t->id_pool[id] >= 0) { /* name both tokens, in their GPT-2 spelling */
            buf_t s1 = {0}, s2 = {0};
            int j = t->id_pool[id];
            rc = rl_fail(RL_ENOMEM, "%s: out of memory", path);
            if (buf_add_spelled(&s1, m, (const unsigned char *)pool_str(&t->toks, (size_t)j),
                                t->toks.len[j]) == 0 &&
                buf_add_spelled(&s2, m, (const unsigned char *)pool_str(&t->toks, i),
                                t->toks.len[i]) == 0)
                rc = rl_fail(RL_EFORMAT, "%s:%d: id %d is used by both \"%.*s\" and \"%.*s\"", path,
                             json_key_line(text, len, i), id, (int)(s1.n < 60 ? s1.n : 60), s1.p,
                             (int)(s2.n < 60 ? s2.n : 60), s2.p);
            free(s1.p);
            free(s2.p);
            goto fail;
        }
        t->id_pool[id] = (int32_t)i;
    }
    for (int c = 0; c < 256; c++) {
        unsigned char ch = (unsigned char)c;
        int k = pool_find(&t->toks, &ch, 1);
        if (k < 0) {
            rc = rl_fail(RL_EFORMAT, "%s: no token for byte 0x%02x (\"\\u%04x\")", path, c,
                         m->cp[c]);
            goto fail;
        }
        t->byte_id[c] = t->pool_id[k];
    }
    int k = pool_find(&t->toks, TOK_EOT, TOK_EOT_LEN);
    t->eot = k >= 0 ? t->pool_id[k] : -1;
    rc = 0;
fail:
    free(b.p);
    json_decref(root);
    free(text);
    return rc;
}

static int load_merges(tok_t *t, const bytemap_t *m, const char *path) {
    char *text = NULL;
    size_t len = 0;
    buf_t left = {0}, right = {0}, both = {0};
    int rc = fs_read_file(path, TOK_MAX_FILE, &text, &len);
    if (rc < 0) return rc;
    int line = 0;
    for (char *p = text, *end = text + len; p < end;) {
        char *eol = memchr(p, '\n', (size_t)(end - p));
        char *next = eol ? eol + 1 : end;
        size_t n = (size_t)((eol ? eol : end) - p);
        line++;
        if (n && p[n - 1] == '\r') n--;
        if ((line == 1 && n >= 8 && !memcmp(p, "#version", 8)) || n == 0) {
            p = next;
            continue;
        }
        char *sp = memchr(p, ' ', n);
        if (!sp || sp == p || sp == p + n - 1 || memchr(sp + 1, ' ', (size_t)(p + n - sp - 1))) {
            rc = rl_fail(RL_EFORMAT, "%s:%d: expected two tokens separated by one space: \"%.*s\"",
                         path, line, (int)(n < 60 ? n : 60), p);
            goto fail;
        }
        *sp = '\0';
        p[n] = '\0'; /* the buffer has a spare byte after its end, and '\n'/'\r' are ours */
        unsigned bad = 0;
        const char *which = p;
        int u = unspell(m, p, (size_t)(sp - p), &left, &bad);
        if (u == 0) u = unspell(m, which = sp + 1, strlen(sp + 1), &right, &bad);
        if (u == -2) {
            rc = RL_ENOMEM;
            goto fail;
        }
        if (u < 0) {
            rc = bad_char(path, line, "token", which, bad);
            goto fail;
        }
        int ka = pool_find(&t->toks, left.p, left.n), kb = pool_find(&t->toks, right.p, right.n);
        if (ka < 0 || kb < 0) {
            rc = rl_fail(RL_EFORMAT, "%s:%d: token \"%.60s\" is not in vocab.json", path, line,
                         ka < 0 ? p : sp + 1);
            goto fail;
        }
        both.n = 0;
        if ((rc = buf_add(&both, left.p, left.n)) < 0 ||
            (rc = buf_add(&both, right.p, right.n)) < 0)
            goto fail;
        int kc = pool_find(&t->toks, both.p, both.n);
        if (kc < 0) {
            rc = rl_fail(RL_EFORMAT, "%s:%d: the merged token \"%s%s\" is not in vocab.json", path,
                         line, p, sp + 1);
            goto fail;
        }
        uint64_t key = pair_key(t->pool_id[ka], t->pool_id[kb]);
        pairslot_t *have = pairmap_find(&t->pairs, key);
        if (have) {
            rc = rl_fail(RL_EFORMAT, "%s:%d: duplicate merge \"%s %s\" (first on line %d)", path,
                         line, p, sp + 1, t->lines[have->v0]);
            goto fail;
        }
        if ((rc = grow(&t->lines, &t->cap_merges, t->n_merges + 1, sizeof *t->lines)) < 0)
            goto fail;
        t->lines[t->n_merges] = line;
        if ((rc = pairmap_put(&t->pairs, key, (int32_t)t->n_merges, t->pool_id[kc])) < 0) goto fail;
        t->n_merges++;
        p = next;
    }
    rc = 0;
fail:
    free(left.p);
    free(right.p);
    free(both.p);
    free(text);
    return rc;
}

tok_t *tok_load(const char *dir) {
    bytemap_t m;
    bytemap_init(&m);
    tok_t *t = calloc(1, sizeof *t);
    char path[4096];
    if (!t) {
        rl_fail(RL_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if (load_vocab(t, &m, path) < 0) goto fail;
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if (load_merges(t, &m, path) < 0) goto fail;
    if (pretok_init(&t->pt) < 0) goto fail;
    if (!(t->cache = calloc(CACHE_SLOTS, sizeof *t->cache))) {
        rl_fail(RL_ENOMEM, "tokenizer: out of memory");
        goto fail;
    }
    return t;
fail:
    tok_destroy(&t);
    return NULL;
}

/* ---- encoding ------------------------------------------------------------------------------ */

/* The merge of (a, b): v0 its rank, v1 the merged id; NULL if none. */
static const pairslot_t *merge_of(const tok_t *t, int a, int b) {
    return pairmap_find(&t->pairs, pair_key(a, b));
}

static int cand_less(cand_t x, cand_t y) {
    return x.rank < y.rank || (x.rank == y.rank && x.pos < y.pos);
}

static void heap_push(cand_t *h, size_t *n, cand_t c) {
    size_t i = (*n)++;
    while (i > 0 && cand_less(c, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = c;
}

static cand_t heap_pop(cand_t *h, size_t *n) {
    cand_t top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_less(h[c + 1], h[c])) c++;
        if (!cand_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* Pushes the pair starting at symbol i, if it has a merge. */
static void push_pair(tok_t *t, size_t *nh, int i) {
    if (i < 0 || t->nxt[i] < 0) return;
    const pairslot_t *mg = merge_of(t, t->sym[i], t->sym[t->nxt[i]]);
    if (mg) heap_push(t->heap, nh, (cand_t){mg->v0, i});
}

/*
 * BPE of a short pre-token (2 <= n <= BPE_SMALL bytes): GPT-2's loop on arrays, with the rank
 * of every adjacent pair kept so that a pass only looks up the pairs it changed.
 */
static int bpe_small(tok_t *t, const unsigned char *s, size_t n) {
    int32_t sym[BPE_SMALL], rank[BPE_SMALL], made[BPE_SMALL];
    unsigned char changed[BPE_SMALL];
    size_t m = n;
    for (size_t i = 0; i < n; i++) sym[i] = t->byte_id[s[i]];
    for (size_t i = 0; i + 1 < n; i++) {
        const pairslot_t *mg = merge_of(t, sym[i], sym[i + 1]);
        rank[i] = mg ? mg->v0 : INT32_MAX;
        made[i] = mg ? mg->v1 : -1;
    }
    while (m > 1) {
        int32_t r = INT32_MAX;
        for (size_t i = 0; i + 1 < m; i++) r = rank[i] < r ? rank[i] : r;
        if (r == INT32_MAX) break;
        /* one pass: every occurrence of the pair ranked r, left to right (j <= i throughout) */
        size_t j = 0;
        for (size_t i = 0; i < m; j++) {
            if (i + 1 < m && rank[i] == r) {
                sym[j] = made[i];
                changed[j] = 1;
                i += 2;
            } else {
                sym[j] = sym[i];
                rank[j] = rank[i]; /* still right unless the next symbol changes */
                made[j] = made[i];
                changed[j] = 0;
                i++;
            }
        }
        m = j;
        for (size_t i = 0; i + 1 < m; i++) {
            if (!changed[i] && !changed[i + 1]) continue;
            const pairslot_t *mg = merge_of(t, sym[i], sym[i + 1]);
            rank[i] = mg ? mg->v0 : INT32_MAX;
            made[i] = mg ? mg->v1 : -1;
        }
    }
    for (size_t i = 0; i < m; i++) {
        int rc = ivec_push(t->out, sym[i]);
        if (rc < 0) return rc;
    }
    return 0;
}

/* BPE of one pre-token of n >= 2 bytes; appends its ids to t->out. */
static int bpe(tok_t *t, const unsigned char *s, size_t n) {
    int rc;
    if (n <= BPE_SMALL) return bpe_small(t, s, n);
    if (n > t->cap_sym) {
        size_t cap = t->cap_sym;
        if ((rc = grow(&t->sym, &cap, n, sizeof *t->sym)) < 0) return rc;
        int *nx = realloc(t->nxt, cap * sizeof *nx);
        if (nx) t->nxt = nx;
        int *pv = realloc(t->prv, cap * sizeof *pv);
        if (pv) t->prv = pv;
        if (!nx || !pv) return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
        t->cap_sym = cap;
    }
    /* each merge can add two candidates; n candidates to start */
    size_t need_heap = 3 * n;
    if ((rc = grow(&t->heap, &t->cap_heap, need_heap, sizeof *t->heap)) < 0) return rc;
    if ((rc = grow(&t->pending, &t->cap_pending, 2 * n, sizeof *t->pending)) < 0) return rc;
    for (size_t i = 0; i < n; i++) {
        t->sym[i] = t->byte_id[s[i]];
        t->nxt[i] = i + 1 < n ? (int)i + 1 : -1;
        t->prv[i] = (int)i - 1;
    }
    size_t nh = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(t, &nh, (int)i);
    while (nh) {
        /* one GPT-2 pass: every occurrence of the lowest-rank pair, left to right */
        int32_t rank = t->heap[0].rank;
        size_t np = 0;
        while (nh && t->heap[0].rank == rank) {
            cand_t c = heap_pop(t->heap, &nh);
            int i = c.pos, j = t->sym[i] >= 0 ? t->nxt[i] : -1;
            if (j < 0) continue;
            const pairslot_t *mg = merge_of(t, t->sym[i], t->sym[j]);
            if (!mg || mg->v0 != rank) continue; /* stale: a neighbour changed */
            t->sym[i] = mg->v1;
            t->sym[j] = -1;
            t->nxt[i] = t->nxt[j];
            if (t->nxt[j] >= 0) t->prv[t->nxt[j]] = i;
            if (t->prv[i] >= 0) t->pending[np++] = t->prv[i];
            t->pending[np++] = i;
        }
        for (size_t k = 0; k < np; k++)
            if (t->sym[t->pending[k]] >= 0) push_pair(t, &nh, t->pending[k]);
    }
    for (int i = 0; i >= 0; i = t->nxt[i])
        if ((rc = ivec_push(t->out, t->sym[i])) < 0) return rc;
    return 0;
}

static int encode_piece(void *ctx, const unsigned char *s, size_t n) {
    tok_t *t = ctx;
    if (n == 1) return ivec_push(t->out, t->byte_id[s[0]]);
    if (n > CACHE_MAX_LEN) return bpe(t, s, n);
    uint64_t h = hash_bytes(s, n) | 1;
    size_t i = h & (CACHE_SLOTS - 1);
    for (; t->cache[i].hash; i = (i + 1) & (CACHE_SLOTS - 1)) {
        cache_slot_t *c = &t->cache[i];
        if (c->hash == h && c->key_len == n && !memcmp(t->cache_keys.p + c->key_off, s, n)) {
            for (uint32_t k = 0; k < c->ids_len; k++) {
                int rc = ivec_push(t->out, t->cache_ids.p[c->ids_off + k]);
                if (rc < 0) return rc;
            }
            return 0;
        }
    }
    size_t start = t->out->n;
    int rc = bpe(t, s, n);
    if (rc < 0) return rc;
    if (t->cache_used >= CACHE_SLOTS / 2) { /* full: start over rather than track age */
        memset(t->cache, 0, CACHE_SLOTS * sizeof *t->cache);
        t->cache_used = 0;
        t->cache_keys.n = 0;
        t->cache_ids.n = 0;
        for (i = h & (CACHE_SLOTS - 1); t->cache[i].hash; i = (i + 1) & (CACHE_SLOTS - 1)) {
        }
    }
    cache_slot_t slot = {h, (uint32_t)t->cache_keys.n, (uint32_t)n, (uint32_t)t->cache_ids.n,
                         (uint32_t)(t->out->n - start)};
    if (buf_add(&t->cache_keys, s, n) < 0) return 0; /* the cache is optional */
    for (size_t k = start; k < t->out->n; k++)
        if (ivec_push(&t->cache_ids, t->out->p[k]) < 0) {
            t->cache_ids.n = slot.ids_off;
            return 0;
        }
    t->cache[i] = slot;
    t->cache_used++;
    return 0;
}

int tok_encode(tok_t *t, const char *text, size_t len, int allow_special, int **ids, size_t *n) {
    if (!t || (!text && len) || !ids || !n) return rl_fail(RL_EINVAL, "tok_encode: NULL argument");
    ivec_t out = {0};
    int rc = 0;
    t->out = &out;
    const unsigned char *s = (const unsigned char *)text, *end = s + len;
    while (s < end && rc == 0) {
        const unsigned char *cut = NULL;
        if (allow_special && t->eot >= 0) cut = memmem(s, (size_t)(end - s), TOK_EOT, TOK_EOT_LEN);
        const unsigned char *stop = cut ? cut : end;
        rc = pretok_run(&t->pt, s, (size_t)(stop - s), encode_piece, t);
        if (rc == 0 && cut) rc = ivec_push(&out, t->eot);
        s = cut ? cut + TOK_EOT_LEN : end;
    }
    t->out = NULL;
    if (rc < 0) {
        free(out.p);
        return rc;
    }
    if (!out.p && !(out.p = malloc(sizeof *out.p))) /* an empty result is still an array */
        return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
    *ids = out.p;
    *n = out.n;
    return 0;
}

int tok_decode(const tok_t *t, const int *ids, size_t n, char **text, size_t *len) {
    if (!t || (!ids && n) || !text || !len) return rl_fail(RL_EINVAL, "tok_decode: NULL argument");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->n_ids || t->id_pool[id] < 0)
            return rl_fail(RL_EINVAL, "token id %d (position %zu) is not in the vocabulary", id, i);
        total += t->toks.len[t->id_pool[id]];
    }
    char *out = malloc(total + 1);
    if (!out) return rl_fail(RL_ENOMEM, "tok_decode: out of memory");
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        int k = t->id_pool[ids[i]];
        memcpy(out + at, pool_str(&t->toks, (size_t)k), t->toks.len[k]);
        at += t->toks.len[k];
    }
    out[at] = '\0';
    *text = out;
    *len = at;
    return 0;
}

/* ---- training ------------------------------------------------------------------------------ */

typedef struct {
    int64_t count; /* weighted by word frequency */
    int a, b;
    int *words; /* words that contain (or once contained) the pair; may repeat */
    size_t n_words, cap_words;
    int stamp; /* the last merge that changed this pair upwards */
} pairstat_t;

typedef struct {
    int64_t count;
    int a, b;
} hent_t;

typedef struct {
    strpool_t toks;  /* id -> bytes */
    strpool_t words; /* distinct pre-tokens */
    int64_t *freq;
    size_t cap_freq;
    int *sym; /* each word's current symbols */
    size_t *woff;
    uint32_t *wlen;
    pairmap_t pmap; /* (a, b) -> index into ps */
    pairstat_t *ps;
    size_t n_ps, cap_ps;
    hent_t *heap;
    size_t n_heap, cap_heap;
    int *touched;
    size_t n_touched, cap_touched;
    int (*merges)[2];
    size_t n_merges, cap_merges;
} trainer_t;

static void trainer_free(trainer_t *tr) {
    pool_free(&tr->toks);
    pool_free(&tr->words);
    free(tr->freq);
    free(tr->sym);
    free(tr->woff);
    free(tr->wlen);
    pairmap_free(&tr->pmap);
    for (size_t i = 0; i < tr->n_ps; i++) free(tr->ps[i].words);
    free(tr->ps);
    free(tr->heap);
    free(tr->touched);
    free(tr->merges);
}

static int count_word(void *ctx, const unsigned char *s, size_t n) {
    trainer_t *tr = ctx;
    int k = pool_find(&tr->words, s, n);
    if (k >= 0) {
        tr->freq[k]++;
        return 0;
    }
    if ((k = pool_add(&tr->words, s, n)) < 0) return k;
    int rc = grow(&tr->freq, &tr->cap_freq, (size_t)k + 1, sizeof *tr->freq);
    if (rc < 0) return rc;
    tr->freq[k] = 1;
    return 0;
}

/* Byte-string order of two tokens. */
static int tok_cmp(const trainer_t *tr, int x, int y) {
    uint32_t lx = tr->toks.len[x], ly = tr->toks.len[y];
    int c =
        memcmp(pool_str(&tr->toks, (size_t)x), pool_str(&tr->toks, (size_t)y), lx < ly ? lx : ly);
    return c ? c : (lx > ly) - (lx < ly);
}

/* Heap order: higher count first, then the pair whose (left, right) bytes sort first. */
static int hent_before(const trainer_t *tr, hent_t x, hent_t y) {
    if (x.count != y.count) return x.count > y.count;
    int c = tok_cmp(tr, x.a, y.a);
    if (c) return c < 0;
    return tok_cmp(tr, x.b, y.b) < 0;
}

static int hent_push(trainer_t *tr, hent_t e) {
    int rc = grow(&tr->heap, &tr->cap_heap, tr->n_heap + 1, sizeof *tr->heap);
    if (rc < 0) return rc;
    size_t i = tr->n_heap++;
    while (i > 0 && hent_before(tr, e, tr->heap[(i - 1) / 2])) {
        tr->heap[i] = tr->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    tr->heap[i] = e;
    return 0;
}

static hent_t hent_pop(trainer_t *tr) {
    hent_t top = tr->heap[0], last = tr->heap[--tr->n_heap];
    size_t i = 0, n = tr->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && hent_before(tr, tr->heap[c + 1], tr->heap[c])) c++;
        if (!hent_before(tr, tr->heap[c], last)) break;
        tr->heap[i] = tr->heap[c];
        i = c;
    }
    if (n) tr->heap[i] = last;
    return top;
}

/* Adds delta to the count of (a, b) in word w, creating the pair if needed. A pair that grows
 * and contains `fresh` (the token just made) records w and is marked for a heap push. */
static int pair_add(trainer_t *tr, int a, int b, int64_t delta, int w, int fresh, int stamp) {
    uint64_t key = pair_key(a, b);
    pairslot_t *idx = pairmap_find(&tr->pmap, key);
    int rc;
    size_t k;
    if (idx) {
        k = (size_t)idx->v0;
    } else {
        if ((rc = grow(&tr->ps, &tr->cap_ps, tr->n_ps + 1, sizeof *tr->ps)) < 0) return rc;
        k = tr->n_ps;
        tr->ps[k] = (pairstat_t){0, a, b, NULL, 0, 0, -1};
        if ((rc = pairmap_put(&tr->pmap, key, (int32_t)k, 0)) < 0) return rc;
        tr->n_ps++;
    }
    pairstat_t *p = &tr->ps[k];
    p->count += delta;
    if (delta > 0 && (fresh < 0 || a == fresh || b == fresh)) {
        if (!p->n_words || p->words[p->n_words - 1] != w) {
            if ((rc = grow(&p->words, &p->cap_words, p->n_words + 1, sizeof *p->words)) < 0)
                return rc;
            p->words[p->n_words++] = w;
        }
        if (fresh >= 0 && p->stamp != stamp) {
            p->stamp = stamp;
            rc = grow(&tr->touched, &tr->cap_touched, tr->n_touched + 1, sizeof *tr->touched);
            if (rc < 0) return rc;
            tr->touched[tr->n_touched++] = (int)k;
        }
    }
    return 0;
}

/* Replaces every (a, b) in word w by m, updating the pair counts. */
static int merge_word(trainer_t *tr, int w, int a, int b, int m, int stamp) {
    int *s = tr->sym + tr->woff[w];
    uint32_t n = tr->wlen[w], j = 0;
    int64_t f = tr->freq[w];
    int rc;
    /*
     * The word is s[0..j) (done) + s[i..n) (to do). Each merge site changes only the pairs
     * around it, so only those counts move: cost per site, not per word length. A word listed
     * for (a, b) that an older merge already took apart has no site and stays as it is.
     */
    for (uint32_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
            if (j > 0 && ((rc = pair_add(tr, s[j - 1], a, -f, w, m, stamp)) < 0 ||
                          (rc = pair_add(tr, s[j - 1], m, f, w, m, stamp)) < 0))
                return rc;
            if (i + 2 < n && ((rc = pair_add(tr, b, s[i + 2], -f, w, m, stamp)) < 0 ||
                              (rc = pair_add(tr, m, s[i + 2], f, w, m, stamp)) < 0))
                return rc;
            if ((rc = pair_add(tr, a, b, -f, w, m, stamp)) < 0) return rc;
            s[j++] = m;
            i += 2;
        } else {
            s[j++] = s[i++];
        }
    }
    tr->wlen[w] = j;
    return 0;
}

/* Writes DIR/vocab.json and DIR/merges.txt for the trained tokens (ids 0..n-1) + EOT. */
static int train_save(const trainer_t *tr, const bytemap_t *m, int eot, const char *dir) {
    buf_t s = {0}, text = {0};
    json_t *vocab = json_object();
    char path[4096];
    int rc = vocab ? 0 : rl_fail(RL_ENOMEM, "tokenizer: out of memory");
    for (size_t i = 0; rc == 0 && i < tr->toks.n; i++) {
        s.n = 0;
        rc = buf_add_spelled(&s, m, (const unsigned char *)pool_str(&tr->toks, i), tr->toks.len[i]);
        if (rc == 0) rc = buf_add(&s, "", 1);
        /* spellings are unique because byte strings are; _new steals the integer */
        if (rc == 0 && json_object_set_new(vocab, s.p, json_integer((json_int_t)i)) < 0)
            rc = rl_fail(RL_ENOMEM, "tokenizer: out of memory");
    }
    if (rc == 0 && json_object_set_new(vocab, TOK_EOT, json_integer(eot)) < 0)
        rc = rl_fail(RL_ENOMEM, "tokenizer: out of memory");
    char *js = rc == 0 ? json_dumps(vocab, JSON_INDENT(1)) : NULL;
    if (rc == 0 && !js) rc = rl_fail(RL_ENOMEM, "tokenizer: cannot format vocab.json");
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/vocab.json", dir);
        size_t jl = strlen(js);
        js[jl] = '\n'; /* json_dumps leaves no newline; reuse the NUL */
        rc = fs_write_atomic(path, js, jl + 1);
    }
    free(js);
    json_decref(vocab);
    rc = rc < 0 ? rc : buf_add(&text, "#version: 0.2\n", 14);
    for (size_t i = 0; rc == 0 && i < tr->n_merges; i++) {
        int a = tr->merges[i][0], b = tr->merges[i][1];
        rc = buf_add_spelled(&text, m, (const unsigned char *)pool_str(&tr->toks, (size_t)a),
                             tr->toks.len[a]);
        if (rc == 0) rc = buf_add(&text, " ", 1);
        if (rc == 0)
            rc = buf_add_spelled(&text, m, (const unsigned char *)pool_str(&tr->toks, (size_t)b),
                                 tr->toks.len[b]);
        if (rc == 0) rc = buf_add(&text, "\n", 1);
    }
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/merges.txt", dir);
        rc = fs_write_atomic(path, text.p, text.n);
    }
    free(s.p);
    free(text.p);
    return rc;
}

int tok_train(const char *corpus, size_t len, int vocab_size, const char *dir) {
    if ((!corpus && len) || !dir) return rl_fail(RL_EINVAL, "tok_train: NULL argument");
    if (vocab_size < 257 || vocab_size > TOK_MAX_ID)
        return rl_fail(RL_EINVAL, "tok_train: vocab_size %d outside [257, %d]", vocab_size,
                       TOK_MAX_ID);
    bytemap_t bm;
    bytemap_init(&bm);
    trainer_t tr = {0};
    pretok_t pt = {0};
    buf_t cat = {0};
    int rc = pretok_init(&pt);
    /* count pre-tokens; a literal <|endoftext|> separates documents and is not learned */
    const unsigned char *s = (const unsigned char *)corpus, *end = s + len;
    while (rc == 0 && s < end) {
        const unsigned char *cut = memmem(s, (size_t)(end - s), TOK_EOT, TOK_EOT_LEN);
        const unsigned char *stop = cut ? cut : end;
        rc = pretok_run(&pt, s, (size_t)(stop - s), count_word, &tr);
        s = cut ? cut + TOK_EOT_LEN : end;
    }
    pretok_free(&pt);
    int byte_tok[256];
    for (int i = 0; rc == 0 && i < 256; i++) {
        int k = pool_add(&tr.toks, &bm.order[i], 1);
        rc = k < 0 ? k : 0;
        byte_tok[bm.order[i]] = i;
    }
    if (rc < 0) goto done;
    /* symbols of every word, then the initial pair counts */
    size_t nw = tr.words.n;
    tr.woff = malloc((nw + 1) * sizeof *tr.woff);
    tr.wlen = malloc((nw + 1) * sizeof *tr.wlen);
    tr.sym = malloc((tr.words.bytes.n + 1) * sizeof *tr.sym);
    if (!tr.woff || !tr.wlen || !tr.sym) {
        rc = rl_fail(RL_ENOMEM, "tok_train: out of memory");
        goto done;
    }
    for (size_t w = 0; w < nw; w++) {
        const unsigned char *ws = (const unsigned char *)pool_str(&tr.words, w);
        tr.woff[w] = tr.words.off[w];
        tr.wlen[w] = tr.words.len[w];
        for (uint32_t i = 0; i < tr.wlen[w]; i++) tr.sym[tr.woff[w] + i] = byte_tok[ws[i]];
        for (uint32_t i = 0; rc == 0 && i + 1 < tr.wlen[w]; i++)
            rc = pair_add(&tr, tr.sym[tr.woff[w] + i], tr.sym[tr.woff[w] + i + 1], tr.freq[w],
                          (int)w, -1, 0);
        if (rc < 0) goto done;
    }
    for (size_t k = 0; rc == 0 && k < tr.n_ps; k++)
        rc = hent_push(&tr, (hent_t){tr.ps[k].count, tr.ps[k].a, tr.ps[k].b});
    /* merge until the vocabulary is full: byte tokens + learned tokens + EOT */
    while (rc == 0 && (int)tr.toks.n < vocab_size - 1) {
        if (!tr.n_heap) {
            rc = rl_fail(RL_EINVAL,
                         "tok_train: the corpus allows only %zu learned tokens (vocab size %zu "
                         "at most); vocab size %d needs %d",
                         tr.toks.n - 256, tr.toks.n + 1, vocab_size, vocab_size - 257);
            break;
        }
        hent_t e = hent_pop(&tr);
        size_t k = (size_t)pairmap_find(&tr.pmap, pair_key(e.a, e.b))->v0;
        int64_t cur = tr.ps[k].count;
        if (cur <= 0) continue;
        if (cur != e.count) {
            rc = hent_push(&tr, (hent_t){cur, e.a, e.b});
            continue;
        }
        /* the new token; if another pair already spelled the same bytes, reuse its id */
        cat.n = 0;
        if ((rc = buf_add(&cat, pool_str(&tr.toks, (size_t)e.a), tr.toks.len[e.a])) < 0 ||
            (rc = buf_add(&cat, pool_str(&tr.toks, (size_t)e.b), tr.toks.len[e.b])) < 0)
            break;
        int mid = pool_find(&tr.toks, cat.p, cat.n);
        if (mid < 0) mid = pool_add(&tr.toks, cat.p, cat.n);
        if (mid < 0) {
            rc = mid;
            break;
        }
        rc = grow(&tr.merges, &tr.cap_merges, tr.n_merges + 1, sizeof *tr.merges);
        if (rc < 0) break;
        int stamp = (int)tr.n_merges;
        tr.merges[tr.n_merges][0] = e.a;
        tr.merges[tr.n_merges++][1] = e.b;
        /* take the word list: new pairs may move tr.ps, and (a, b) will not come back */
        int *words = tr.ps[k].words;
        size_t n_words = tr.ps[k].n_words;
        tr.ps[k].words = NULL;
        tr.ps[k].n_words = tr.ps[k].cap_words = 0;
        tr.n_touched = 0;
        for (size_t i = 0; rc == 0 && i < n_words; i++)
            rc = merge_word(&tr, words[i], e.a, e.b, mid, stamp);
        free(words);
        assert(rc < 0 || tr.ps[k].count == 0);
        for (size_t i = 0; rc == 0 && i < tr.n_touched; i++) {
            pairstat_t *p = &tr.ps[tr.touched[i]];
            if (p->count > 0) rc = hent_push(&tr, (hent_t){p->count, p->a, p->b});
        }
    }
    if (rc == 0) rc = fs_mkdir_p(dir);
    if (rc == 0) rc = train_save(&tr, &bm, vocab_size - 1, dir);
done:
    free(cat.p);
    trainer_free(&tr);
    return rc;
}

char *tok_utf8_lossy(const char *text, size_t len, size_t *out_len) {
    char *o = malloc(len * 3 + 1); /* each byte becomes at most the 3 bytes of U+FFFD */
    if (!o) return NULL;
    const unsigned char *s = (const unsigned char *)text;
    size_t w = 0;
    for (size_t i = 0; i < len;) {
        size_t k = utf8_char_len(s + i, len - i);
        if (k) {
            memcpy(o + w, s + i, k);
            w += k, i += k;
        } else {
            memcpy(o + w, "\xef\xbf\xbd", 3);
            w += 3, i++;
        }
    }
    o[w] = '\0';
    *out_len = w;
    return o;
}
