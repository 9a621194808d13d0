/*
 * tok.c - byte-level BPE: loading, encoding, decoding and training (see tok.h).
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
 * A tokenizer.json directory (tok_load picks it when present) has the same token store and BPE,
 * and a pipeline in Hugging Face's order instead of stages 1 and 2: its added tokens are cut out
 * of the raw text (leftmost-longest, with lstrip/rstrip/single_word; the special ones only with
 * allow_special), then each stretch between them is normalised (NFC or nothing), then split by
 * its pre-tokenizer steps (Split, ByteLevel, Digits: patterns on PCRE2, one piece list rewritten
 * per step, invalid UTF-8 isolated as above), then BPE'd piece by piece, a piece that is a whole
 * vocabulary token taken as is where the model says ignore_merges. Added tokens' contents join
 * the token store so that they decode to themselves.
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
#include <unistd.h>
#include <uninorm.h>

#include "base/err.h"
#include "base/fs.h"
#include "nn/jinja.h"

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

enum { TOK_GPT2, TOK_JSON }; /* vocab.json + merges.txt, or tokenizer.json */

/* How a Split step keeps what its pattern matches (Hugging Face's SplitDelimiterBehavior). */
enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_PREV, SPLIT_NEXT, SPLIT_CONTIG };

/* One pre-tokeniser step of tokenizer.json: a pattern split, or a prefix space. */
typedef struct {
    pcre2_code *re; /* NULL: the step only adds the prefix space */
    pcre2_match_data *md;
    int behavior, invert, prefix_space;
} pstep_t;

/* An added token of tokenizer.json, matched in the raw text before anything else runs. */
typedef struct {
    char *text;
    size_t len;
    int id, special, lstrip, rstrip, single_word;
} added_t;

/* A piece of text being pre-tokenised: bytes [off, off + len) of the working buffer; match
 * marks a pattern match while a split step runs. */
typedef struct {
    size_t off, len;
    int match;
} seg_t;

typedef struct {
    seg_t *p;
    size_t n, cap;
} segvec_t;

struct tok {
    int kind;
    strpool_t toks;   /* token bytes: the vocabulary in file order, then added tokens' contents */
    int32_t *pool_id; /* pool index -> id */
    size_t cap_pool_id;
    size_t n_model;   /* pool indices below this are the model's vocabulary */
    int32_t *id_pool; /* id -> pool index, -1 for unused ids */
    int n_ids, eot, bos, post_bos;
    int byte_id[256];
    pairmap_t pairs; /* (left id, right id) -> (rank, id of the merged token) */
    int32_t *lines;  /* rank -> line in merges.txt (index in tokenizer.json), for duplicates */
    size_t n_merges, cap_merges;
    pretok_t pt; /* GPT-2 */
    /* tokenizer.json */
    int ignore_merges, nfc;
    pstep_t *steps;
    size_t n_steps, cap_steps;
    added_t *added;
    size_t n_added;
    unsigned char added_first[256]; /* bytes that start some added token */
    char *bos_text, *eos_text, *chat_template;
    buf_t norm, work;           /* the normalised segment; the working buffer of the steps */
    segvec_t segs, next, marks; /* pieces before and after a step; a split's matches */
    ivec_t *out;                /* the encode in progress */
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
    for (size_t i = 0; i < t->n_steps; i++) {
        pcre2_match_data_free(t->steps[i].md);
        pcre2_code_free(t->steps[i].re);
    }
    free(t->steps);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].text);
    free(t->added);
    free(t->bos_text);
    free(t->eos_text);
    free(t->chat_template);
    free(t->norm.p);
    free(t->work.p);
    free(t->segs.p);
    free(t->next.p);
    free(t->marks.p);
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

int tok_bos(const tok_t *t) {
    return t->bos;
}

int tok_text_special(const tok_t *t) {
    return t->kind == TOK_JSON;
}

const char *tok_chat_template(const tok_t *t) {
    return t->chat_template;
}

int tok_chat_render(const tok_t *t, const char *messages_json, size_t len,
                    int add_generation_prompt, char **out, size_t *out_len) {
    if (!t || !messages_json || !out || !out_len)
        return rl_fail(RL_EINVAL, "tok_chat_render: NULL argument");
    if (!t->chat_template)
        return rl_fail(RL_ENOTFOUND, "the tokenizer has no chat template (tokenizer_config.json "
                                     "\"chat_template\")");
    json_error_t je;
    json_t *in = json_loadb(messages_json, len, 0, &je), *vars = NULL;
    int rc = 0;
    if (!in) return rl_fail(RL_EFORMAT, "messages: line %d: %s", je.line, je.text);
    if (json_is_array(in)) {
        vars = json_pack("{sO}", "messages", in);
    } else if (json_is_object(in) && json_is_array(json_object_get(in, "messages"))) {
        vars = json_copy(in);
    } else {
        rc = rl_fail(RL_EFORMAT, "messages: expected an array of {\"role\", \"content\"} objects "
                                 "or an object with \"messages\"");
    }
    json_decref(in);
    if (rc < 0) return rc;
    size_t i;
    json_t *msg;
    json_array_foreach(json_object_get(vars, "messages"), i, msg) {
        if (!json_is_object(msg) || !json_is_string(json_object_get(msg, "role"))) {
            json_decref(vars);
            return rl_fail(RL_EFORMAT, "messages[%zu]: expected an object with a string \"role\"",
                           i);
        }
    }
    if (!vars ||
        json_object_set_new(vars, "add_generation_prompt", json_boolean(add_generation_prompt)) <
            0 ||
        (t->bos_text && json_object_set_new(vars, "bos_token", json_string(t->bos_text)) < 0) ||
        (t->eos_text && json_object_set_new(vars, "eos_token", json_string(t->eos_text)) < 0)) {
        json_decref(vars);
        return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
    }
    rc = jinja_render(t->chat_template, vars, out, out_len);
    json_decref(vars);
    return rc;
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

/* Where a vocabulary entry is: "FILE:LINE" in vocab.json, "FILE: model.vocab" in tokenizer.json
 * (text NULL: the vocabulary is one key among many, so a line number would not help). */
static const char *vocab_loc(char *buf, size_t cap, const char *path, const char *text, size_t len,
                             size_t index) {
    if (text)
        snprintf(buf, cap, "%s:%d", path, json_key_line(text, len, index));
    else
        snprintf(buf, cap, "%s: model.vocab", path);
    return buf;
}

static int bad_char(const char *loc, const char *what, const char *tok, unsigned cp) {
    if (cp >= 0x110000)
        return rl_fail(RL_EFORMAT, "%s: %s \"%.60s\" is not valid UTF-8", loc, what, tok);
    return rl_fail(RL_EFORMAT, "%s: %s \"%.60s\" has U+%04X, which is not in GPT-2's byte alphabet",
                   loc, what, tok, cp);
}

/* Makes room for n pool indices in t->pool_id. */
static int pool_id_reserve(tok_t *t, size_t n) {
    return grow(&t->pool_id, &t->cap_pool_id, n, sizeof *t->pool_id);
}

/*
 * Fills the vocabulary from root, an object of GPT-2-spelled token -> id. text/len: the file's
 * text, for line numbers (vocab.json); NULL for the "model.vocab" of tokenizer.json.
 */
static int vocab_from_json(tok_t *t, const bytemap_t *m, json_t *root, const char *path,
                           const char *text, size_t len) {
    buf_t b = {0};
    char loc[4200];
    int rc;
    size_t count = json_object_size(root), index = 0;
    if ((rc = pool_id_reserve(t, count + 1)) < 0) goto fail;
    const char *key;
    json_t *val;
    int max_id = -1;
    json_object_foreach(root, key, val) {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || id >= TOK_MAX_ID) {
            rc = rl_fail(RL_EFORMAT, "%s: token \"%.60s\": id must be an integer in [0, %d)",
                         vocab_loc(loc, sizeof loc, path, text, len, index), key, TOK_MAX_ID);
            goto fail;
        }
        unsigned bad = 0;
        int u = unspell(m, key, strlen(key), &b, &bad);
        if (u == -2) {
            rc = RL_ENOMEM;
            goto fail;
        }
        if (u < 0 || b.n == 0) {
            vocab_loc(loc, sizeof loc, path, text, len, index);
            rc = u < 0 ? bad_char(loc, "token", key, bad)
                       : rl_fail(RL_EFORMAT, "%s: empty token", loc);
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
    t->n_model = count;
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
                rc =
                    rl_fail(RL_EFORMAT, "%s: id %d is used by both \"%.*s\" and \"%.*s\"",
                            vocab_loc(loc, sizeof loc, path, text, len, i), id,
                            (int)(s1.n < 60 ? s1.n : 60), s1.p, (int)(s2.n < 60 ? s2.n : 60), s2.p);
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
            rc = rl_fail(RL_EFORMAT, "%s: no token for byte 0x%02x (\"\\u%04x\")",
                         text ? path : vocab_loc(loc, sizeof loc, path, text, len, 0), c, m->cp[c]);
            goto fail;
        }
        t->byte_id[c] = t->pool_id[k];
    }
    int k = pool_find(&t->toks, TOK_EOT, TOK_EOT_LEN);
    t->eot = k >= 0 ? t->pool_id[k] : -1;
    rc = 0;
fail:
    free(b.p);
    return rc;
}

static int load_vocab(tok_t *t, const bytemap_t *m, const char *path) {
    char *text = NULL;
    size_t len = 0;
    json_t *root = NULL;
    int rc = fs_read_file(path, TOK_MAX_FILE, &text, &len);
    if (rc < 0) return rc;
    json_error_t je;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        rc = rl_fail(RL_EFORMAT, "%s:%d: %s", path, je.line, je.text);
    else if (!json_is_object(root))
        rc = rl_fail(RL_EFORMAT, "%s:1: expected an object of token -> id", path);
    else
        rc = vocab_from_json(t, m, root, path, text, len);
    json_decref(root);
    free(text);
    return rc;
}

typedef struct {
    buf_t left, right, both;
} merge_scratch_t;

/*
 * Adds the merge of the GPT-2-spelled tokens a and b (NUL-terminated) with the next rank. loc
 * names it in messages; at is its line (merges.txt) or index (tokenizer.json), kept to name the
 * first of two duplicates.
 */
static int add_merge(tok_t *t, const bytemap_t *m, const char *loc, int at, const char *a,
                     const char *b, merge_scratch_t *sc) {
    unsigned bad = 0;
    const char *which = a;
    int rc, u = unspell(m, a, strlen(a), &sc->left, &bad);
    if (u == 0) u = unspell(m, which = b, strlen(b), &sc->right, &bad);
    if (u == -2) return RL_ENOMEM;
    if (u < 0) return bad_char(loc, "token", which, bad);
    const char *vocab = t->kind == TOK_JSON ? "model.vocab" : "vocab.json";
    int ka = pool_find(&t->toks, sc->left.p, sc->left.n);
    int kb = pool_find(&t->toks, sc->right.p, sc->right.n);
    if (ka < 0 || kb < 0)
        return rl_fail(RL_EFORMAT, "%s: token \"%.60s\" is not in %s", loc, ka < 0 ? a : b, vocab);
    sc->both.n = 0;
    if ((rc = buf_add(&sc->both, sc->left.p, sc->left.n)) < 0 ||
        (rc = buf_add(&sc->both, sc->right.p, sc->right.n)) < 0)
        return rc;
    int kc = pool_find(&t->toks, sc->both.p, sc->both.n);
    if (kc < 0)
        return rl_fail(RL_EFORMAT, "%s: the merged token \"%s%s\" is not in %s", loc, a, b, vocab);
    uint64_t key = pair_key(t->pool_id[ka], t->pool_id[kb]);
    pairslot_t *have = pairmap_find(&t->pairs, key);
    if (have)
        return rl_fail(RL_EFORMAT, "%s: duplicate merge \"%s %s\" (first %s %d)", loc, a, b,
                       t->kind == TOK_JSON ? "at index" : "on line", t->lines[have->v0]);
    if ((rc = grow(&t->lines, &t->cap_merges, t->n_merges + 1, sizeof *t->lines)) < 0) return rc;
    t->lines[t->n_merges] = at;
    if ((rc = pairmap_put(&t->pairs, key, (int32_t)t->n_merges, t->pool_id[kc])) < 0) return rc;
    t->n_merges++;
    return 0;
}

static void merge_scratch_free(merge_scratch_t *sc) {
    free(sc->left.p);
    free(sc->right.p);
    free(sc->both.p);
}

static int load_merges(tok_t *t, const bytemap_t *m, const char *path) {
    char *text = NULL;
    size_t len = 0;
    merge_scratch_t sc = {0};
    char loc[4200];
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
        snprintf(loc, sizeof loc, "%s:%d", path, line);
        if ((rc = add_merge(t, m, loc, line, p, sp + 1, &sc)) < 0) goto fail;
        p = next;
    }
    rc = 0;
fail:
    merge_scratch_free(&sc);
    free(text);
    return rc;
}

/* ---- tokenizer.json ------------------------------------------------------------------------ */

/* The string at key of object o, or NULL. */
static const char *json_str(const json_t *o, const char *key) {
    return json_string_value(json_object_get(o, key));
}

/* A boolean at key of object o, def if absent or null; -1 (after a message) if another type. */
static int json_flag(const json_t *o, const char *key, int def, const char *path,
                     const char *where) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_boolean(v))
        return rl_fail(RL_EFORMAT, "%s: \"%s.%s\": expected true or false", path, where, key);
    return json_is_true(v);
}

/* Compiles a pre-tokeniser pattern (PCRE2, UTF + UCP as in tok.c's GPT-2 pattern; literal for
 * a {"String": ...} pattern) into step st. */
static int step_compile(pstep_t *st, const char *pattern, int literal, const char *path,
                        const char *where) {
    int err;
    PCRE2_SIZE at;
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP); /* LITERAL refuses UCP */
    st->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opt, &err, &at, NULL);
    if (!st->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return rl_fail(RL_EUNSUPPORTED, "%s: \"%s\": PCRE2 rejects the pattern at %zu: %s", path,
                       where, (size_t)at, (const char *)msg);
    }
    (void)pcre2_jit_compile(st->re, PCRE2_JIT_COMPLETE);
    if (!(st->md = pcre2_match_data_create_from_pattern(st->re, NULL)))
        return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
    return 0;
}

static int add_step(tok_t *t, pstep_t **st) {
    int rc = grow(&t->steps, &t->cap_steps, t->n_steps + 1, sizeof *t->steps);
    if (rc < 0) return rc;
    *st = &t->steps[t->n_steps++];
    memset(*st, 0, sizeof **st);
    return 0;
}

/* One pre-tokeniser of tokenizer.json (where: its key path, for messages). */
static int parse_pretok(tok_t *t, const json_t *pt, const char *path, const char *where) {
    static const char *const behaviors[] = {"Removed", "Isolated", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
    const char *type = json_str(pt, "type");
    pstep_t *st;
    int rc;
    if (!json_is_object(pt) || !type)
        return rl_fail(RL_EFORMAT, "%s: \"%s\": expected an object with a \"type\"", path, where);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(pt, "pretokenizers"), *v;
        size_t i;
        if (!json_is_array(list))
            return rl_fail(RL_EFORMAT, "%s: \"%s.pretokenizers\": expected an array", path, where);
        json_array_foreach(list, i, v) {
            char sub[512];
            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", where, i);
            if ((rc = parse_pretok(t, v, path, sub)) < 0) return rc;
        }
        return 0;
    }
    if (!strcmp(type, "Split")) {
        json_t *pat = json_object_get(pt, "pattern");
        const char *re = json_str(pat, "Regex"), *lit = json_str(pat, "String");
        const char *beh = json_str(pt, "behavior");
        char sub[512];
        if (!re && !lit)
            return rl_fail(RL_EFORMAT,
                           "%s: \"%s.pattern\": expected {\"Regex\": ...} or "
                           "{\"String\": ...}",
                           path, where);
        int b = -1;
        for (int i = 0; beh && i < 5; i++)
            if (!strcmp(beh, behaviors[i])) b = i;
        if (b < 0)
            return rl_fail(RL_EFORMAT,
                           "%s: \"%s.behavior\": \"%s\" is not one of Removed, "
                           "Isolated, MergedWithPrevious, MergedWithNext, Contiguous",
                           path, where, beh ? beh : "(missing)");
        int inv = json_flag(pt, "invert", 0, path, where);
        if (inv < 0) return inv;
        if ((rc = add_step(t, &st)) < 0) return rc;
        st->behavior = b;
        st->invert = inv;
        snprintf(sub, sizeof sub, "%s.pattern", where);
        return step_compile(st, re ? re : lit, !re, path, sub);
    }
    if (!strcmp(type, "ByteLevel")) {
        /* the defaults are those of Hugging Face's ByteLevel: a prefix space, GPT-2's pattern */
        int prefix = json_flag(pt, "add_prefix_space", 1, path, where);
        int use_regex = json_flag(pt, "use_regex", 1, path, where);
        if (prefix < 0 || use_regex < 0) return prefix < 0 ? prefix : use_regex;
        if (prefix) {
            if ((rc = add_step(t, &st)) < 0) return rc;
            st->prefix_space = 1;
        }
        if (!use_regex) return 0;
        if ((rc = add_step(t, &st)) < 0) return rc;
        st->behavior = SPLIT_ISOLATED;
        return step_compile(st, gpt2_pattern, 0, path, where);
    }
    if (!strcmp(type, "Digits")) { /* Rust's char::is_numeric is \p{N} */
        int single = json_flag(pt, "individual_digits", 0, path, where);
        if (single < 0) return single;
        if ((rc = add_step(t, &st)) < 0) return rc;
        st->behavior = single ? SPLIT_ISOLATED : SPLIT_CONTIG;
        return step_compile(st, "\\p{N}", 0, path, where);
    }
    return rl_fail(RL_EUNSUPPORTED,
                   "%s: \"%s.type\": pre-tokenizer \"%s\" is not supported (Sequence, Split, "
                   "ByteLevel and Digits are)",
                   path, where, type);
}

/* normalizer: null, NFC, or a Sequence of those. */
static int parse_normalizer(tok_t *t, const json_t *nm, const char *path, const char *where) {
    const char *type = json_str(nm, "type");
    if (!nm || json_is_null(nm)) return 0;
    if (!type)
        return rl_fail(RL_EFORMAT, "%s: \"%s\": expected null or an object with a \"type\"", path,
                       where);
    if (!strcmp(type, "NFC")) {
        t->nfc = 1;
        return 0;
    }
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(nm, "normalizers"), *v;
        size_t i;
        if (!json_is_array(list))
            return rl_fail(RL_EFORMAT, "%s: \"%s.normalizers\": expected an array", path, where);
        json_array_foreach(list, i, v) {
            char sub[512];
            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", where, i);
            int rc = parse_normalizer(t, v, path, sub);
            if (rc < 0) return rc;
        }
        return 0;
    }
    return rl_fail(
        RL_EUNSUPPORTED,
        "%s: \"%s.type\": normalizer \"%s\" is not supported (null, NFC and Sequence are)", path,
        where, type);
}

/* decoder: ByteLevel (or a Sequence holding only ByteLevel), or null. */
static int check_decoder(const json_t *d, const char *path, const char *where) {
    const char *type = json_str(d, "type");
    if (!d || json_is_null(d)) return 0;
    if (type && !strcmp(type, "ByteLevel")) return 0;
    if (type && !strcmp(type, "Sequence")) {
        json_t *list = json_object_get(d, "decoders"), *v;
        size_t i;
        if (!json_is_array(list))
            return rl_fail(RL_EFORMAT, "%s: \"%s.decoders\": expected an array", path, where);
        json_array_foreach(list, i, v) {
            char sub[512];
            snprintf(sub, sizeof sub, "%s.decoders[%zu]", where, i);
            int rc = check_decoder(v, path, sub);
            if (rc < 0) return rc;
        }
        return 0;
    }
    return rl_fail(RL_EUNSUPPORTED,
                   "%s: \"%s.type\": decoder \"%s\" is not supported (a byte-level BPE decodes "
                   "with ByteLevel)",
                   path, where, type ? type : "(missing)");
}

/* model.merges: "a b" strings or [a, b] pairs. */
static int merges_from_json(tok_t *t, const bytemap_t *m, const json_t *list, const char *path) {
    merge_scratch_t sc = {0};
    char loc[4200], *copy = NULL;
    size_t i;
    json_t *v;
    int rc = 0;
    if (!json_is_array(list))
        return rl_fail(RL_EFORMAT, "%s: \"model.merges\": missing or not an array", path);
    json_array_foreach(list, i, v) {
        const char *a = NULL, *b = NULL;
        snprintf(loc, sizeof loc, "%s: model.merges[%zu]", path, i);
        if (json_is_string(v)) {
            free(copy);
            if (!(copy = strdup(json_string_value(v)))) {
                rc = rl_fail(RL_ENOMEM, "tokenizer: out of memory");
                break;
            }
            char *sp = strchr(copy, ' ');
            if (sp && sp > copy && sp[1] && !strchr(sp + 1, ' ')) {
                *sp = '\0';
                a = copy;
                b = sp + 1;
            }
        } else if (json_is_array(v) && json_array_size(v) == 2) {
            a = json_string_value(json_array_get(v, 0));
            b = json_string_value(json_array_get(v, 1));
            if (a && b && (!*a || !*b)) a = NULL;
        }
        if (!a || !b) {
            rc = rl_fail(RL_EFORMAT, "%s: expected \"left right\" or [\"left\", \"right\"]", loc);
            break;
        }
        if ((rc = add_merge(t, m, loc, (int)i, a, b, &sc)) < 0) break;
    }
    free(copy);
    merge_scratch_free(&sc);
    return rc;
}

/*
 * The pool index of token bytes s (an added token's content), added to the pool (with id) if no
 * vocabulary token has them: decoding goes through the pool, and several ids may share bytes.
 */
static int pool_index_for(tok_t *t, const char *s, size_t n, int id) {
    int k = pool_find(&t->toks, s, n);
    if (k >= 0) return k;
    int rc = pool_id_reserve(t, t->toks.n + 1);
    if (rc < 0) return rc;
    if ((k = pool_add(&t->toks, s, n)) < 0) return k;
    t->pool_id[k] = id;
    return k;
}

static int added_from_json(tok_t *t, const json_t *list, const char *path) {
    size_t i;
    json_t *v;
    if (!list || json_is_null(list)) return 0;
    if (!json_is_array(list))
        return rl_fail(RL_EFORMAT, "%s: \"added_tokens\": expected an array", path);
    if (!(t->added = calloc(json_array_size(list) + 1, sizeof *t->added)))
        return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
    json_array_foreach(list, i, v) {
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        json_t *jid = json_object_get(v, "id");
        const char *content = json_str(v, "content");
        json_int_t id = json_is_integer(jid) ? json_integer_value(jid) : -1;
        if (!content || !*content)
            return rl_fail(RL_EFORMAT, "%s: \"%s.content\": expected a non-empty string", path,
                           where);
        if (id < 0 || id >= TOK_MAX_ID)
            return rl_fail(RL_EFORMAT,
                           "%s: \"%s.id\" (token \"%.60s\"): expected an integer in "
                           "[0, %d)",
                           path, where, content, TOK_MAX_ID);
        added_t *a = &t->added[t->n_added];
        a->id = (int)id;
        a->len = strlen(content);
        int f[4];
        static const char *const flags[4] = {"special", "lstrip", "rstrip", "single_word"};
        for (int j = 0; j < 4; j++)
            if ((f[j] = json_flag(v, flags[j], 0, path, where)) < 0) return f[j];
        a->special = f[0], a->lstrip = f[1], a->rstrip = f[2], a->single_word = f[3];
        if (!(a->text = strdup(content))) return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
        t->n_added++;
        t->added_first[(unsigned char)content[0]] = 1;
        if (id >= t->n_ids) {
            int32_t *ip = realloc(t->id_pool, ((size_t)id + 2) * sizeof *ip);
            if (!ip) return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
            for (int j = t->n_ids; j <= (int)id; j++) ip[j] = -1;
            t->id_pool = ip;
            t->n_ids = (int)id + 1;
        }
        int k = pool_index_for(t, content, a->len, (int)id);
        if (k < 0) return k;
        t->id_pool[id] = k; /* decodes to its content, as in Hugging Face's decoder */
    }
    return 0;
}

/* The id of a token named by its text: an added token's content, else a vocabulary token's
 * bytes; -1 if neither. */
static int id_of_text(const tok_t *t, const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].text, s, n)) return t->added[i].id;
    int k = pool_find(&t->toks, s, n);
    return k >= 0 && (size_t)k < t->n_model ? t->pool_id[k] : -1;
}

/*
 * The token a post_processor puts before a single sequence (Llama 3's TemplateProcessing, alone
 * or in a Sequence of processors) into t->post_bos; -1 if none. Encoding never applies the
 * post-processor (add_special_tokens=False); this only tells tok_bos what BOS is.
 */
static int post_bos(tok_t *t, const json_t *pp, const char *path, const char *where) {
    const char *type = json_str(pp, "type");
    char sub[512];
    if (!pp || json_is_null(pp) || !type) return 0;
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(pp, "processors"), *v;
        size_t i;
        json_array_foreach(list, i, v) {
            snprintf(sub, sizeof sub, "%s.processors[%zu]", where, i);
            int rc = post_bos(t, v, path, sub);
            if (rc < 0) return rc;
        }
        return 0;
    }
    if (strcmp(type, "TemplateProcessing")) return 0; /* ByteLevel, RobertaProcessing...: no BOS */
    json_t *first =
        json_object_get(json_array_get(json_object_get(pp, "single"), 0), "SpecialToken");
    const char *name = json_str(first, "id");
    if (!name) return 0;
    json_t *ids =
        json_object_get(json_object_get(json_object_get(pp, "special_tokens"), name), "ids");
    json_t *id0 = json_array_get(ids, 0);
    t->post_bos = json_is_integer(id0) ? (int)json_integer_value(id0) : id_of_text(t, name);
    if (t->post_bos < 0 || t->post_bos >= t->n_ids || t->id_pool[t->post_bos] < 0)
        return rl_fail(RL_EFORMAT, "%s: \"%s.single\": special token \"%.60s\" is not a token",
                       path, where, name);
    return 0;
}

static int load_tokjson(tok_t *t, const bytemap_t *m, const char *path) {
    char *text = NULL;
    size_t len = 0;
    json_t *root = NULL;
    int rc = fs_read_file(path, TOK_MAX_FILE, &text, &len);
    if (rc < 0) return rc;
    json_error_t je;
    root = json_loadb(text, len, 0, &je);
    free(text);
    if (!root) return rl_fail(RL_EFORMAT, "%s:%d: %s", path, je.line, je.text);
    json_t *model = json_object_get(root, "model");
    const char *type = json_str(model, "type");
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(root)) {
        rc = rl_fail(RL_EFORMAT, "%s:1: expected an object", path);
    } else if (!json_is_object(model)) {
        rc = rl_fail(RL_EFORMAT, "%s: \"model\": missing or not an object", path);
    } else if (type && strcmp(type, "BPE")) {
        rc = rl_fail(RL_EUNSUPPORTED, "%s: \"model.type\": \"%s\" is not supported (BPE is)", path,
                     type);
    } else if (json_is_true(json_object_get(model, "byte_fallback"))) {
        rc = rl_fail(RL_EUNSUPPORTED, "%s: \"model.byte_fallback\": true is not supported", path);
    } else if (!json_is_object(vocab)) {
        rc = rl_fail(RL_EFORMAT, "%s: \"model.vocab\": missing or not an object", path);
    } else if ((rc = t->ignore_merges = json_flag(model, "ignore_merges", 0, path, "model")) >= 0 &&
               (rc = vocab_from_json(t, m, vocab, path, NULL, 0)) == 0 &&
               (rc = merges_from_json(t, m, json_object_get(model, "merges"), path)) == 0 &&
               (rc = added_from_json(t, json_object_get(root, "added_tokens"), path)) == 0 &&
               (rc = parse_normalizer(t, json_object_get(root, "normalizer"), path,
                                      "normalizer")) == 0 &&
               (rc = check_decoder(json_object_get(root, "decoder"), path, "decoder")) == 0) {
        json_t *pt = json_object_get(root, "pre_tokenizer");
        rc = pt && !json_is_null(pt) ? parse_pretok(t, pt, path, "pre_tokenizer") : 0;
        if (rc == 0)
            rc = post_bos(t, json_object_get(root, "post_processor"), path, "post_processor");
        if (t->eot < 0) t->eot = id_of_text(t, TOK_EOT);
    }
    json_decref(root);
    return rc;
}

/* A token named in tokenizer_config.json: a string, an object with "content", or null. */
static int config_token(tok_t *t, const json_t *cfg, const char *key, const char *path, char **text,
                        int *id) {
    json_t *v = json_object_get(cfg, key);
    const char *s = json_is_object(v) ? json_str(v, "content") : json_string_value(v);
    *id = -1;
    if (!v || json_is_null(v)) return 0;
    if (!s)
        return rl_fail(RL_EFORMAT, "%s: \"%s\": expected a string, {\"content\": ...} or null",
                       path, key);
    if ((*id = id_of_text(t, s)) < 0)
        return rl_fail(RL_EFORMAT, "%s: \"%s\": \"%.60s\" is not a token of tokenizer.json", path,
                       key, s);
    if (!(*text = strdup(s))) return rl_fail(RL_ENOMEM, "tokenizer: out of memory");
    return 0;
}

/*
 * DIR/tokenizer_config.json, if there is one: the BOS and EOS tokens, whether BOS is added, the
 * chat template. Without the file there is no BOS, EOS is <|endoftext|> if the vocabulary has it,
 * and there is no template.
 */
static int load_tokconfig(tok_t *t, const char *path) {
    char *text = NULL;
    size_t len = 0;
    if (access(path, F_OK) != 0) return 0;
    int rc = fs_read_file(path, TOK_MAX_FILE, &text, &len);
    if (rc < 0) return rc;
    json_error_t je;
    /* integers as reals: model_max_length is often 1e30, beyond jansson's integers */
    json_t *cfg = json_loadb(text, len, JSON_DECODE_INT_AS_REAL, &je);
    free(text);
    if (!cfg) return rl_fail(RL_EFORMAT, "%s:%d: %s", path, je.line, je.text);
    int bos = -1, eos = -1, add;
    if (!json_is_object(cfg)) {
        rc = rl_fail(RL_EFORMAT, "%s:1: expected an object", path);
    } else if ((rc = config_token(t, cfg, "bos_token", path, &t->bos_text, &bos)) == 0 &&
               (rc = config_token(t, cfg, "eos_token", path, &t->eos_text, &eos)) == 0 &&
               (rc = add = json_flag(cfg, "add_bos_token", 2, path, "tokenizer_config")) >= 0) {
        rc = 0;
        /* add_bos_token decides when given (true: bos_token); without it, BOS is what the
         * post-processor puts first, as Llama 3's does */
        if (add != 2) t->bos = add ? bos : -1;
        if (eos >= 0) t->eot = eos;
        json_t *tmpl = json_object_get(cfg, "chat_template"), *v;
        size_t i;
        if (json_is_array(tmpl)) { /* a list of named templates: the "default" one */
            json_array_foreach(tmpl, i, v) {
                const char *name = json_str(v, "name");
                if (name && !strcmp(name, "default")) tmpl = json_object_get(v, "template");
            }
        }
        if (json_is_string(tmpl) && !(t->chat_template = strdup(json_string_value(tmpl))))
            rc = rl_fail(RL_ENOMEM, "tokenizer: out of memory");
        else if (tmpl && !json_is_null(tmpl) && !json_is_string(tmpl))
            rc = rl_fail(RL_EFORMAT,
                         "%s: \"chat_template\": expected a string or a list with a "
                         "\"default\" template",
                         path);
    }
    json_decref(cfg);
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
    t->bos = t->post_bos = -1;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (access(path, F_OK) == 0) {
        t->kind = TOK_JSON;
        if (load_tokjson(t, &m, path) < 0) goto fail;
        t->bos = t->post_bos;
        snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
        if (load_tokconfig(t, path) < 0) goto fail;
    } else {
        snprintf(path, sizeof path, "%s/vocab.json", dir);
        if (load_vocab(t, &m, path) < 0) goto fail;
        snprintf(path, sizeof path, "%s/merges.txt", dir);
        if (load_merges(t, &m, path) < 0) goto fail;
        if (pretok_init(&t->pt) < 0) goto fail;
    }
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
    if (t->ignore_merges) { /* a piece that is a token of the vocabulary is taken whole */
        int k = pool_find(&t->toks, s, n);
        if (k >= 0 && (size_t)k < t->n_model) return ivec_push(t->out, t->pool_id[k]);
    }
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

/* ---- encoding with tokenizer.json ------------------------------------------------------------ */

static int seg_push(segvec_t *v, size_t off, size_t len, int match) {
    int rc = grow(&v->p, &v->cap, v->n + 1, sizeof *v->p);
    if (rc < 0) return rc;
    v->p[v->n++] = (seg_t){off, len, match};
    return 0;
}

/*
 * Applies a split's behavior to the run's matches and gaps m[0..n) (in order, covering the run)
 * and appends the non-empty pieces to out. This is Hugging Face's
 * NormalizedString::split, case by case.
 */
static int split_behave(int behavior, seg_t *m, size_t n, segvec_t *out) {
    size_t k = 0; /* pieces kept, rewritten in place */
    int prev = 0, rc;
    if (behavior == SPLIT_NEXT) { /* a match joins the gap after it */
        for (size_t i = 0; i < n; i++) {
            m[k] = m[i];
            if (m[i].match && i + 1 < n && !m[i + 1].match) m[k].len += m[++i].len;
            k++;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            if (behavior == SPLIT_REMOVED && m[i].match) continue;
            int join = (behavior == SPLIT_PREV && m[i].match && !prev) ||
                       (behavior == SPLIT_CONTIG && m[i].match == prev);
            if (join && k)
                m[k - 1].len = m[i].off + m[i].len - m[k - 1].off;
            else
                m[k++] = m[i];
            prev = m[i].match;
        }
    }
    for (size_t i = 0; i < k; i++)
        if (m[i].len && (rc = seg_push(out, m[i].off, m[i].len, 0)) < 0) return rc;
    return 0;
}

/* Splits the valid UTF-8 run [off, off + n) of the working buffer by step st into out. */
static int split_run(tok_t *t, const pstep_t *st, size_t off, size_t n, segvec_t *out,
                     segvec_t *m) {
    const unsigned char *s = (const unsigned char *)t->work.p + off;
    size_t at = 0, prev = 0;
    int rc;
    m->n = 0;
    while (at <= n) {
        int r = pcre2_match(st->re, s, n, at, PCRE2_NO_UTF_CHECK, st->md, NULL);
        if (r == PCRE2_ERROR_NOMATCH) break;
        if (r < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(r, msg, sizeof msg);
            return rl_fail(RL_EUNSUPPORTED, "tokenizer: pattern match failed: %s",
                           (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
        if (ov[0] > prev && (rc = seg_push(m, off + prev, ov[0] - prev, st->invert)) < 0) return rc;
        if ((rc = seg_push(m, off + ov[0], ov[1] - ov[0], !st->invert)) < 0) return rc;
        prev = ov[1];
        /* an empty match moves on by one character (as a regex iterator does) */
        at = ov[1] > ov[0] ? ov[1] : ov[1] + (ov[1] < n ? utf8_char_len(s + ov[1], n - ov[1]) : 1);
    }
    if (prev < n && (rc = seg_push(m, off + prev, n - prev, st->invert)) < 0) return rc;
    return split_behave(st->behavior, m->p, m->n, out);
}

/* One pre-tokeniser step over every piece in t->segs, into t->next (then swapped). Invalid
 * UTF-8 never reaches a pattern: each invalid byte is a piece of its own, as in the GPT-2 path. */
static int run_step(tok_t *t, const pstep_t *st, segvec_t *scratch) {
    int rc = 0;
    t->next.n = 0;
    if (st->prefix_space) { /* a space before every piece that does not start with one */
        buf_t nb = {0};
        for (size_t i = 0; i < t->segs.n; i++) {
            seg_t g = t->segs.p[i];
            size_t start = nb.n;
            if (t->work.p[g.off] != ' ' && (rc = buf_add(&nb, " ", 1)) < 0) break;
            if ((rc = buf_add(&nb, t->work.p + g.off, g.len)) < 0) break;
            if ((rc = seg_push(&t->next, start, nb.n - start, 0)) < 0) break;
        }
        if (rc < 0) {
            free(nb.p);
            return rc;
        }
        free(t->work.p);
        t->work = nb;
    } else {
        for (size_t i = 0; i < t->segs.n; i++) {
            seg_t g = t->segs.p[i];
            const unsigned char *s = (const unsigned char *)t->work.p + g.off;
            size_t a = 0;
            while (a < g.len) {
                size_t b = a, k;
                while (b < g.len && (k = utf8_char_len(s + b, g.len - b)) > 0) b += k;
                if (b > a && (rc = split_run(t, st, g.off + a, b - a, &t->next, scratch)) < 0)
                    return rc;
                if (b < g.len && (rc = seg_push(&t->next, g.off + b, 1, 0)) < 0) return rc;
                a = b < g.len ? b + 1 : g.len;
            }
        }
    }
    segvec_t x = t->segs;
    t->segs = t->next;
    t->next = x;
    return 0;
}

/*
 * NFC of len bytes into t->work: each maximal run of valid UTF-8 is normalised (libunistring's
 * u8_normalize, the Unicode algorithm as a Debian library rather than tables of our own), invalid
 * bytes are copied as they are. An all-ASCII run is already NFC.
 */
static int normalize_nfc(tok_t *t, const unsigned char *s, size_t len) {
    int rc;
    t->work.n = 0;
    for (size_t a = 0; a < len;) {
        size_t b = a, k;
        int ascii = 1;
        while (b < len && (k = utf8_char_len(s + b, len - b)) > 0) {
            ascii &= s[b] < 0x80;
            b += k;
        }
        if (ascii || b == a) {
            if ((rc = buf_add(&t->work, s + a, b - a)) < 0) return rc;
        } else {
            size_t n = t->norm.cap;
            uint8_t *r = u8_normalize(UNINORM_NFC, s + a, b - a, (uint8_t *)t->norm.p, &n);
            if (!r) return rl_fail(RL_ENOMEM, "tokenizer: NFC normalisation failed");
            if (r != (uint8_t *)t->norm.p) { /* it allocated: keep the larger buffer */
                free(t->norm.p);
                t->norm.p = (char *)r;
                t->norm.cap = n;
            }
            if ((rc = buf_add(&t->work, r, n)) < 0) return rc;
        }
        if (b < len && (rc = buf_add(&t->work, s + b, 1)) < 0) return rc;
        a = b < len ? b + 1 : len;
    }
    return 0;
}

static int encode_piece(void *ctx, const unsigned char *s, size_t n);

/* Text between added tokens: normaliser, pre-tokeniser steps, then BPE of every piece. */
static int encode_segment(tok_t *t, const unsigned char *s, size_t len) {
    int rc;
    if (t->nfc) {
        if ((rc = normalize_nfc(t, s, len)) < 0) return rc;
    } else {
        t->work.n = 0;
        if ((rc = buf_add(&t->work, s, len)) < 0) return rc;
    }
    t->segs.n = 0;
    if (t->work.n && (rc = seg_push(&t->segs, 0, t->work.n, 0)) < 0) return rc;
    for (size_t i = 0; i < t->n_steps && rc == 0; i++) rc = run_step(t, &t->steps[i], &t->marks);
    for (size_t i = 0; i < t->segs.n && rc == 0; i++)
        rc = encode_piece(t, (const unsigned char *)t->work.p + t->segs.p[i].off, t->segs.p[i].len);
    return rc;
}

static int is_word_byte(unsigned char c) {
    return c >= 0x80 || c == '_' || (c >= '0' && c <= '9') ||
           ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
}

static int is_space_byte(unsigned char c) {
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/*
 * The leftmost-longest added token in s[from..n) (special ones only with allow_special), as
 * Hugging Face matches them (an Aho-Corasick automaton, leftmost-longest): *a..*b is the text it
 * takes, whitespace that lstrip/rstrip absorb included. Returns its index or -1.
 * single_word tokens must not touch a word character on either side (ASCII alphanumerics, '_'
 * and any non-ASCII byte count as word characters; lstrip/rstrip take ASCII whitespace).
 */
static int find_added(const tok_t *t, const unsigned char *s, size_t from, size_t n,
                      int allow_special, size_t *a, size_t *b) {
    for (size_t i = from; i < n; i++) {
        if (!t->added_first[s[i]]) continue;
        int best = -1;
        for (size_t j = 0; j < t->n_added; j++) {
            const added_t *d = &t->added[j];
            if ((d->special && !allow_special) || d->len > n - i ||
                (best >= 0 && d->len <= t->added[best].len) || memcmp(s + i, d->text, d->len))
                continue;
            if (d->single_word && ((i > 0 && is_word_byte(s[i - 1])) ||
                                   (i + d->len < n && is_word_byte(s[i + d->len]))))
                continue;
            best = (int)j;
        }
        if (best < 0) continue;
        const added_t *d = &t->added[best];
        *a = i;
        *b = i + d->len;
        if (d->lstrip)
            while (*a > from && is_space_byte(s[*a - 1])) (*a)--;
        if (d->rstrip)
            while (*b < n && is_space_byte(s[*b])) (*b)++;
        return best;
    }
    return -1;
}

/* tokenizer.json: added tokens are cut out of the raw text first; the text between them is
 * normalised and pre-tokenised segment by segment (Hugging Face's AddedVocabulary order). */
static int encode_json(tok_t *t, const unsigned char *s, size_t len, int allow_special) {
    size_t at = 0;
    while (at < len) {
        size_t a = len, b = len;
        int k = t->n_added ? find_added(t, s, at, len, allow_special, &a, &b) : -1;
        int rc = a > at ? encode_segment(t, s + at, a - at) : 0;
        if (rc == 0 && k >= 0) rc = ivec_push(t->out, t->added[k].id);
        if (rc < 0) return rc;
        at = k >= 0 ? b : len;
    }
    return 0;
}

int tok_encode(tok_t *t, const char *text, size_t len, int allow_special, int **ids, size_t *n) {
    if (!t || (!text && len) || !ids || !n) return rl_fail(RL_EINVAL, "tok_encode: NULL argument");
    ivec_t out = {0};
    int rc = 0;
    t->out = &out;
    const unsigned char *s = (const unsigned char *)text, *end = s + len;
    if (t->kind == TOK_JSON) {
        rc = encode_json(t, s, len, allow_special);
        s = end;
    }
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
