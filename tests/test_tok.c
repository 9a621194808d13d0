/*
 * test_tok.c - the GPT-2 byte-level BPE tokenizer against small references: the byte map, BPE
 * merge order against a naive GPT-2 loop, pre-token boundaries, special tokens, malformed files
 * named by file and line, lossless round trips on arbitrary bytes, and the trainer against a
 * naive trainer. The real GPT-2 vocabulary is checked by test_tok_gpt2.sh (needs the network).
 */
#include "nn/tok.h"
#include "test.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fs.h"

static char dir[512];

/* ---- helpers: a reference byte map and hand-made model directories --------------------- */

/* GPT-2's bytes_to_unicode(), written out independently of tok.c. */
static unsigned ref_cp(int b) {
    static unsigned cp[256];
    static int done;
    if (!done) {
        int n = 0;
        for (int i = 0; i < 256; i++) cp[i] = 0;
        for (int i = 0; i < 256; i++)
            if ((i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174 && i <= 255))
                cp[i] = (unsigned)i;
        for (int i = 0; i < 256; i++)
            if (!cp[i] && !((i >= 33 && i <= 126) || (i >= 161 && i <= 172) || i >= 174))
                cp[i] = 256u + (unsigned)n++;
        done = 1;
    }
    return cp[b];
}

/* Appends the GPT-2 spelling of n bytes to out (UTF-8), JSON-escaped if json. */
static void spell(const char *s, size_t n, int json, char *out) {
    char *o = out + strlen(out);
    for (size_t i = 0; i < n; i++) {
        unsigned cp = ref_cp((unsigned char)s[i]);
        if (json && (cp == '"' || cp == '\\')) *o++ = '\\';
        if (cp < 0x80) {
            *o++ = (char)cp;
        } else {
            *o++ = (char)(0xC0 | (cp >> 6));
            *o++ = (char)(0x80 | (cp & 0x3F));
        }
    }
    *o = '\0';
}

static void write_text(const char *name, const char *text) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

/*
 * Writes dir/vocab.json (byte b has id b, extra[i] has id 256 + i, then "<|endoftext|>" if
 * eot) and dir/merges.txt (merges[i][0] + merges[i][1], in rank order), one entry per line.
 */
static void write_model(const char *const *extra, int n_extra, const char *const (*merges)[2],
                        int n_merges, int eot) {
    size_t cap = 64 * (size_t)(256 + n_extra + n_merges) + 64;
    char *v = malloc(cap), *m = malloc(cap);
    strcpy(v, "{\n");
    for (int i = 0; i < 256 + n_extra; i++) {
        char b = (char)i;
        strcat(v, " \"");
        if (i < 256)
            spell(&b, 1, 1, v);
        else
            spell(extra[i - 256], strlen(extra[i - 256]), 1, v);
        sprintf(v + strlen(v), "\": %d%s\n", i, i + 1 < 256 + n_extra || eot ? "," : "");
    }
    if (eot) sprintf(v + strlen(v), " \"<|endoftext|>\": %d\n", 256 + n_extra);
    strcat(v, "}\n");
    strcpy(m, "#version: 0.2\n");
    for (int i = 0; i < n_merges; i++) {
        spell(merges[i][0], strlen(merges[i][0]), 0, m);
        strcat(m, " ");
        spell(merges[i][1], strlen(merges[i][1]), 0, m);
        strcat(m, "\n");
    }
    write_text("vocab.json", v);
    write_text("merges.txt", m);
    free(v);
    free(m);
}

/* Encodes text and compares with want[0..nwant). */
static int encodes_to(tok_t *t, const char *text, size_t len, int special, const int *want,
                      size_t nwant) {
    int *ids = NULL;
    size_t n = 0;
    int rc = tok_encode(t, text, len, special, &ids, &n), same = rc == 0 && n == nwant;
    for (size_t i = 0; same && i < n; i++) same = ids[i] == want[i];
    if (!same) {
        fprintf(stderr, "  encoding \"%.*s\" (rc %d):", (int)len, text, rc);
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "  want:");
        for (size_t i = 0; i < nwant; i++) fprintf(stderr, " %d", want[i]);
        fputc('\n', stderr);
    }
    free(ids);
    return same;
}

/* decode(encode(text)) == text, byte for byte. */
static int round_trips(tok_t *t, const char *text, size_t len, int special) {
    int *ids = NULL;
    size_t n = 0, back_len = 0;
    char *back = NULL;
    int ok = tok_encode(t, text, len, special, &ids, &n) == 0 &&
             tok_decode(t, ids, n, &back, &back_len) == 0 && back_len == len &&
             !memcmp(back, text, len) && back[len] == '\0';
    free(ids);
    free(back);
    return ok;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(uint32_t n) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

/* ---- the byte map ------------------------------------------------------------------------ */

static void test_byte_map_round_trip(void) {
    /* the reference map itself: GPT-2's well-known spellings */
    CHECK_EQ(ref_cp(' '), 0x120);  /* Ġ */
    CHECK_EQ(ref_cp('\n'), 0x10A); /* Ċ */
    CHECK_EQ(ref_cp(0), 0x100);
    CHECK_EQ(ref_cp(0x7F), 0x121);
    CHECK_EQ(ref_cp(0xAD), 0x143);
    CHECK_EQ(ref_cp('A'), 'A');
    CHECK_EQ(ref_cp(0xE9), 0xE9);
    write_model(NULL, 0, NULL, 0, 1);
    tok_t *t = tok_load(dir);
    CHECK(t != NULL);
    if (!t) {
        fprintf(stderr, "  %s\n", rl_errmsg());
        return;
    }
    CHECK_EQ(tok_vocab_size(t), 257);
    CHECK_EQ(tok_eot(t), 256);
    /* every byte alone is its own pre-token and must come back as the id we spelled for it */
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int want = b;
        CHECK(encodes_to(t, &c, 1, 1, &want, 1));
        char *back = NULL;
        size_t len = 0;
        CHECK_OK(tok_decode(t, &want, 1, &back, &len));
        CHECK(len == 1 && back && (unsigned char)back[0] == b);
        free(back);
    }
    tok_destroy(&t);
    CHECK(t == NULL);
    tok_destroy(&t); /* NULL is fine */
}

/* ---- merges ------------------------------------------------------------------------------ */

static void test_merge_rank_order(void) {
    const char *extra[] = {"ab", "bc", "abc", "aa", "aaa", "ba", "bab"};
    enum { AB = 256, BC, ABC, AA, AAA, BA, BAB };
    const char *const m1[][2] = {{"a", "b"}, {"b", "c"}, {"ab", "c"}};
    write_model(extra, 7, m1, 3, 1);
    tok_t *t = tok_load(dir);
    CHECK(t != NULL);
    if (!t) return;
    CHECK(encodes_to(t, "abc", 3, 0, (int[]){ABC}, 1));
    CHECK(encodes_to(t, "abab", 4, 0, (int[]){AB, AB}, 2));
    CHECK(encodes_to(t, "cab", 3, 0, (int[]){'c', AB}, 2));
    tok_destroy(&t);
    /* the same merges with "b c" ranked first: "abc" becomes a + bc, and (a, bc) has no merge */
    const char *const m2[][2] = {{"b", "c"}, {"a", "b"}, {"ab", "c"}};
    write_model(extra, 7, m2, 3, 1);
    CHECK((t = tok_load(dir)) != NULL);
    if (!t) return;
    CHECK(encodes_to(t, "abc", 3, 0, (int[]){'a', BC}, 2));
    tok_destroy(&t);
    /* a pass merges every occurrence left to right: "aaa" -> aa a -> aaa, "aaaaa" -> aa aaa */
    const char *const m3[][2] = {{"a", "a"}, {"aa", "a"}};
    write_model(extra, 7, m3, 2, 1);
    CHECK((t = tok_load(dir)) != NULL);
    if (!t) return;
    CHECK(encodes_to(t, "aa", 2, 0, (int[]){AA}, 1));
    CHECK(encodes_to(t, "aaa", 3, 0, (int[]){AAA}, 1));
    CHECK(encodes_to(t, "aaaa", 4, 0, (int[]){AA, AA}, 2));
    CHECK(encodes_to(t, "aaaaa", 5, 0, (int[]){AA, AAA}, 2));
    tok_destroy(&t);
    /*
     * A pair made during a pass waits for the pass to end even if its rank is lower: in "baba"
     * the pass of (b, a) makes ba, b, a; (ba, b) ranks first but GPT-2 finishes the pass -> ba ba.
     */
    const char *const m4[][2] = {{"ba", "b"}, {"b", "a"}};
    write_model(extra, 7, m4, 2, 1);
    CHECK((t = tok_load(dir)) != NULL);
    if (!t) return;
    CHECK(encodes_to(t, "baba", 4, 0, (int[]){BA, BA}, 2));
    CHECK(encodes_to(t, "bab", 3, 0, (int[]){BAB}, 1));
    /* the same beyond the short-token path: 40 bytes of "ba" are 20 x ba */
    char s[41];
    int want[20];
    for (int i = 0; i < 20; i++) s[2 * i] = 'b', s[2 * i + 1] = 'a', want[i] = BA;
    s[40] = '\0';
    CHECK(encodes_to(t, s, 40, 0, want, 20));
    s[39] = 'b'; /* 19 x ba, b, b; then (ba, b) merges once the pass is over */
    want[18] = BAB;
    want[19] = 'b';
    CHECK(encodes_to(t, s, 40, 0, want, 20));
    tok_destroy(&t);
}

/* GPT-2's encoder.py loop, naively: tokens as strings, ranks by linear search. */
static size_t naive_bpe(const char *s, char toks[][64], int ntok, int (*merges)[2], int nm,
                        int *out) {
    static char w[4096][64], nw[4096][64];
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++) w[i][0] = s[i], w[i][1] = '\0';
    for (;;) {
        int best = -1;
        for (size_t i = 0; i + 1 < n; i++)
            for (int r = 0; r < nm && (best < 0 || r < best); r++)
                if (!strcmp(w[i], toks[merges[r][0]]) && !strcmp(w[i + 1], toks[merges[r][1]]))
                    best = r;
        if (best < 0) break;
        const char *first = toks[merges[best][0]], *second = toks[merges[best][1]];
        size_t k = 0;
        for (size_t i = 0; i < n;) {
            if (i + 1 < n && !strcmp(w[i], first) && !strcmp(w[i + 1], second)) {
                snprintf(nw[k++], 64, "%s%s", first, second);
                i += 2;
            } else {
                strcpy(nw[k++], w[i++]);
            }
        }
        memcpy(w, nw, k * sizeof w[0]);
        n = k;
    }
    for (size_t i = 0; i < n; i++) {
        out[i] = -1;
        if (!w[i][1]) out[i] = (unsigned char)w[i][0];
        for (int k = 3; k < ntok && out[i] < 0; k++)
            if (!strcmp(w[i], toks[k])) out[i] = 256 + k - 3;
    }
    return n;
}

static void test_bpe_matches_naive_gpt2_loop(void) {
    /* random merges over {a, b, c}; a result may repeat a token another pair already makes */
    enum { NT = 3 + 60 };
    static char toks[NT][64] = {"a", "b", "c"};
    int merges[4 * NT][2], nm = 0, ntok = 3;
    while (ntok < NT && nm < 4 * NT) {
        int i = (int)rnd((uint32_t)ntok), j = (int)rnd((uint32_t)ntok), dup = 0;
        char cat[128];
        snprintf(cat, sizeof cat, "%s%s", toks[i], toks[j]);
        if (strlen(cat) > 12) continue;
        for (int r = 0; r < nm; r++) dup |= merges[r][0] == i && merges[r][1] == j;
        if (dup) continue;
        merges[nm][0] = i;
        merges[nm++][1] = j;
        int have = 0;
        for (int k = 0; k < ntok; k++) have |= !strcmp(toks[k], cat);
        if (!have) strcpy(toks[ntok++], cat);
    }
    const char *extra[NT];
    for (int k = 3; k < ntok; k++) extra[k - 3] = toks[k];
    for (int shuffled = 0; shuffled < 2; shuffled++) {
        if (shuffled) /* arbitrary rank order: later parts may rank before their makers */
            for (int r = nm - 1; r > 0; r--) {
                int q = (int)rnd((uint32_t)r + 1), a = merges[r][0], b = merges[r][1];
                merges[r][0] = merges[q][0], merges[r][1] = merges[q][1];
                merges[q][0] = a, merges[q][1] = b;
            }
        const char *mm[4 * NT][2];
        for (int r = 0; r < nm; r++) mm[r][0] = toks[merges[r][0]], mm[r][1] = toks[merges[r][1]];
        write_model(extra, ntok - 3, (const char *const(*)[2])mm, nm, 1);
        tok_t *t = tok_load(dir);
        CHECK(t != NULL);
        if (!t) return;
        static char s[3001];
        static int want[3001];
        int bad = 0;
        for (int trial = 0; trial < 300 && bad < 3; trial++) {
            /* one \p{L}+ run is one pre-token: the whole string goes through BPE */
            size_t len = trial == 0 ? 3000 : 1 + rnd(trial < 150 ? 12 : 80);
            for (size_t i = 0; i < len; i++) s[i] = (char)('a' + rnd(trial % 3 ? 3 : 2));
            s[len] = '\0';
            size_t n = naive_bpe(s, toks, ntok, merges, nm, want);
            if (!encodes_to(t, s, len, 0, want, n)) bad++;
        }
        CHECK_EQ(bad, 0);
        tok_destroy(&t);
    }
}

/* ---- pre-tokenisation ---------------------------------------------------------------------- */

/*
 * Checks that text splits into exactly `pieces`: for every adjacent byte pair (x, y) of the
 * text, a vocabulary whose only merge is x + y must merge it inside pieces and never across a
 * boundary - the expected ids come from merging each piece on its own.
 */
static void check_split(const char *text, size_t len, const char *const *pieces) {
    static unsigned char seen[256][256];
    char cat[512] = "";
    for (int i = 0; pieces[i]; i++) strcat(cat, pieces[i]);
    CHECK(strlen(cat) == len && !memcmp(cat, text, len)); /* the test data itself */
    memset(seen, 0, sizeof seen);
    for (size_t j = 1; j < len; j++) {
        unsigned char x = (unsigned char)text[j - 1], y = (unsigned char)text[j];
        if (seen[x][y]) continue;
        seen[x][y] = 1;
        char sx[2] = {(char)x, 0}, sy[2] = {(char)y, 0}, sxy[3] = {(char)x, (char)y, 0};
        const char *extra[] = {sxy};
        const char *const merge[][2] = {{sx, sy}};
        write_model(extra, 1, merge, 1, 1);
        tok_t *t = tok_load(dir);
        if (!t) {
            CHECK(t != NULL);
            return;
        }
        int want[512];
        size_t n = 0;
        for (int i = 0; pieces[i]; i++) {
            const unsigned char *p = (const unsigned char *)pieces[i];
            for (size_t k = 0, pl = strlen(pieces[i]); k < pl;) {
                if (k + 1 < pl && p[k] == x && p[k + 1] == y) {
                    want[n++] = 256;
                    k += 2;
                } else {
                    want[n++] = p[k++];
                }
            }
        }
        int ok = encodes_to(t, text, len, 0, want, n);
        tok_destroy(&t);
        if (!ok) {
            TEST__FAIL("split of \"%.*s\" differs around the pair 0x%02x 0x%02x", (int)len, text, x,
                       y);
            return;
        }
    }
}

static void test_pretokenize_like_gpt2(void) {
    /* expected pieces from GPT-2's pattern (checked with the JS reference's regex) */
    static const struct {
        const char *text;
        const char *pieces[32];
    } cases[] = {
        {"I'm here, you're there; they'll've gone. It's 'd",
         {"I", "'m", " here", ",", " you", "'re", " there", ";", " they", "'ll", "'ve", " gone",
          ".", " It", "'s", " '", "d", NULL}},
        {"DON'T shout: she'S Y'all",
         {"DON", "'", "T", " shout", ":", " she", "'", "S", " Y", "'", "all", NULL}},
        {"abc123def 2024 12345678 3.14 -7",
         {"abc", "123", "def", " 2024", " 12345678", " 3", ".", "14", " -", "7", NULL}},
        {"x  = 1;   y\t\t=2\n\n\nz \n w",
         {"x", " ", " =", " 1", ";", "  ", " y", "\t", "\t", "=", "2", "\n\n", "\n", "z", " \n",
          " w", NULL}},
        {"hello   world  \n  end  ", {"hello", "  ", " world", "  \n ", " end", "  ", NULL}},
        {"日本語のテキスト 中文。韓国어", {"日本語のテキスト", " 中文", "。", "韓国어", NULL}},
        {"hi 🤖🤖 there😀! 👍🏽 ❤\ufe0f",
         {"hi", " 🤖🤖", " there", "😀!", " 👍🏽", " ❤\ufe0f", NULL}},
        {"café! naïve Ærø Straße", {"café", "!", " naïve", " Ærø", " Straße", NULL}},
        {"if (x) {\n\treturn a[i]->b + 0x1F;\n}\n",
         {"if", " (", "x",  ")", " {", "\n", "\t", "return", " a", "[",  "i", "]->",
          "b",  " +", " 0", "x", "1",  "F",  ";",  "\n",     "}",  "\n", NULL}},
        /* combining marks are neither letters nor numbers; fullwidth and other numbers are */
        {"नमस\u094dत\u0947 １２３ＡＢ ½Ⅷ x²",
         {"नमस", "\u094d", "त", "\u0947", " １２３", "ＡＢ", " ½Ⅷ", " x", "²", NULL}},
        {"a\u00a0b \u3000c\u2028d", {"a", "\u00a0", "b", " ", "\u3000", "c", "\u2028", "d", NULL}},
        /* invalid UTF-8: each bad byte alone, the valid runs around it split as usual */
        {"ab\xff"
         "cd \xe2\x82 x",
         {"ab", "\xff", "cd", " ", "\xe2", "\x82", " x", NULL}},
        {"\xc3\xa9\xc3 \xed\xa0\x80!",
         {"\xc3\xa9", "\xc3", " ", "\xed", "\xa0", "\x80", "!", NULL}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_split(cases[i].text, strlen(cases[i].text), cases[i].pieces);
}

/* ---- special token --------------------------------------------------------------------- */

static void test_special_token(void) {
    const char *extra[] = {"<|", "|>"};
    const char *const m[][2] = {{"<", "|"}, {"|", ">"}};
    write_model(extra, 2, m, 2, 1);
    tok_t *t = tok_load(dir);
    CHECK(t != NULL);
    if (!t) return;
    int eot = tok_eot(t);
    CHECK_EQ(eot, 258);
    const char *s = "a<|endoftext|>b<|endoftext|><|endoftext|>";
    CHECK(encodes_to(t, s, strlen(s), 1, (int[]){'a', eot, 'b', eot, eot}, 5));
    /* as text: "a" "<|" "endoftext" "|>" "b" ... with byte-level pieces */
    int *ids = NULL;
    size_t n = 0;
    CHECK_OK(tok_encode(t, s, strlen(s), 0, &ids, &n));
    for (size_t i = 0; i < n; i++) CHECK(ids[i] != eot);
    CHECK_EQ(n, 1 + 3 * (1 + 9 + 1) + 1);
    CHECK_EQ(ids[1], 256); /* "<|" */
    free(ids);
    CHECK(round_trips(t, s, strlen(s), 1));
    CHECK(round_trips(t, s, strlen(s), 0));
    CHECK(encodes_to(t, "<|endoftext|", 12, 1,
                     (int[]){256, 'e', 'n', 'd', 'o', 'f', 't', 'e', 'x', 't', '|'}, 11));
    tok_destroy(&t);
    /* a vocabulary without it: no special id, the text is ordinary */
    write_model(extra, 2, m, 2, 0);
    CHECK((t = tok_load(dir)) != NULL);
    if (!t) return;
    CHECK_EQ(tok_eot(t), -1);
    CHECK_EQ(tok_vocab_size(t), 258);
    CHECK_OK(tok_encode(t, s, strlen(s), 1, &ids, &n));
    CHECK_EQ(n, 1 + 3 * (1 + 9 + 1) + 1);
    free(ids);
    tok_destroy(&t);
}

/* ---- malformed files ------------------------------------------------------------------- */

/* tok_load must fail and its message must contain `want`. */
static void load_fails(const char *want, int line) {
    tok_t *t = tok_load(dir);
    if (t || !strstr(rl_errmsg(), want))
        TEST__FAIL("(line %d) tok_load: want failure with \"%s\", got %s \"%s\"", line, want,
                   t ? "success" : "failure", rl_errmsg());
    tok_destroy(&t);
}
#define LOAD_FAILS(want) load_fails(want, __LINE__)

static void test_malformed_files_rejected(void) {
    const char *extra[] = {"ab"};
    const char *const m[][2] = {{"a", "b"}};
    write_model(extra, 1, m, 1, 1);
    /* merges.txt: the good file, then broken lines (line 1 is "#version: 0.2") */
    write_text("merges.txt", "#version: 0.2\na b\nab\n");
    LOAD_FAILS("merges.txt:3: expected two tokens");
    write_text("merges.txt", "a b\na b c\n");
    LOAD_FAILS("merges.txt:2: expected two tokens");
    write_text("merges.txt", "#version: 0.2\na  b\n");
    LOAD_FAILS("merges.txt:2: expected two tokens");
    write_text("merges.txt", "#version: 0.2\na b\nab ab\n");
    LOAD_FAILS("merges.txt:3: the merged token \"abab\" is not in vocab.json");
    write_text("merges.txt", "#version: 0.2\n\na b\na b\n");
    LOAD_FAILS("merges.txt:4: duplicate merge \"a b\" (first on line 3)");
    write_text("merges.txt", "#version: 0.2\nabc b\n");
    LOAD_FAILS("merges.txt:2: token \"abc\" is not in vocab.json");
    write_text("merges.txt", "#version: 0.2\na \xe3\x81\x82\n");
    LOAD_FAILS("merges.txt:2: token \"\xe3\x81\x82\" has U+3042");
    write_text("merges.txt", "#version: 0.2\na b\n#version: 0.2\n");
    LOAD_FAILS("merges.txt:3:");
    /* accepted: no header, CRLF, blank lines */
    write_text("merges.txt", "a b\r\n\r\n");
    tok_t *t = tok_load(dir);
    CHECK(t != NULL);
    if (t) CHECK(encodes_to(t, "ab", 2, 0, (int[]){256}, 1));
    tok_destroy(&t);
    write_text("merges.txt", "#version: 0.2\na b\n");
    /* vocab.json */
    write_text("vocab.json", "{\n \"a\": 0,\n \"b\": 1,,\n}\n");
    LOAD_FAILS("vocab.json:3:");
    write_text("vocab.json", "{\n \"a\": 0,\n \"b\": \"x\"\n}\n");
    LOAD_FAILS("vocab.json:3: token \"b\": id must be an integer");
    write_text("vocab.json", "{\n \"a\": 0,\n\n \"b\": -4\n}\n");
    LOAD_FAILS("vocab.json:4: token \"b\": id must be an integer");
    write_text("vocab.json", "{\"a\": 0, \"b\": 1.5}");
    LOAD_FAILS("vocab.json:1: token \"b\"");
    write_text("vocab.json", "{\n \"a\": 0,\n \"b\": 1,\n \"a\": 2\n}\n");
    LOAD_FAILS("vocab.json:4:"); /* duplicate key */
    write_text("vocab.json", "{\n \"a\": 7,\n \"\\u0120\": 3,\n \"b\": 7\n}\n");
    LOAD_FAILS("vocab.json:4: id 7 is used by both \"a\" and \"b\"");
    write_text("vocab.json", "{\n \"a\": 0,\n \"\xe3\x81\x82\": 1\n}\n");
    LOAD_FAILS("vocab.json:3: token \"\xe3\x81\x82\" has U+3042");
    write_text("vocab.json", "{\n \"a\": 0,\n \"\": 1\n}\n");
    LOAD_FAILS("vocab.json:3: empty token");
    write_text("vocab.json", "[1, 2]");
    LOAD_FAILS("vocab.json:1: expected an object");
    write_text("vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
    LOAD_FAILS("vocab.json: no token for byte 0x00");
    /* missing files */
    char path[600];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    remove(path);
    CHECK(tok_load(dir) == NULL);
    CHECK(strstr(rl_errmsg(), "vocab.json") != NULL);
    write_model(extra, 1, m, 1, 1);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    remove(path);
    LOAD_FAILS("merges.txt");
}

static void test_decode_errors(void) {
    write_model(NULL, 0, NULL, 0, 0);
    /* id 300 leaves 256..299 unused */
    char path[600];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    char *v = NULL;
    size_t len = 0;
    CHECK_OK(fs_read_all(path, &v, &len));
    if (!v) return;
    char *w = malloc(len + 32);
    memcpy(w, v, len);
    strcpy(w + (strrchr(v, '}') - v), ", \"ab\": 300}\n");
    write_text("vocab.json", w);
    free(v);
    free(w);
    tok_t *t = tok_load(dir);
    CHECK(t != NULL);
    if (!t) return;
    CHECK_EQ(tok_vocab_size(t), 301);
    char *text = NULL;
    size_t n = 0;
    CHECK_OK(tok_decode(t, (int[]){300, 'x'}, 2, &text, &n));
    CHECK(n == 3 && text && !strcmp(text, "abx"));
    free(text);
    CHECK_ERR(tok_decode(t, (int[]){'a', 299}, 2, &text, &n), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "299") != NULL);
    CHECK_ERR(tok_decode(t, (int[]){-1}, 1, &text, &n), RL_EINVAL);
    CHECK_ERR(tok_decode(t, (int[]){301}, 1, &text, &n), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "301") != NULL);
    CHECK_OK(tok_decode(t, NULL, 0, &text, &n));
    CHECK(n == 0 && text && text[0] == '\0');
    free(text);
    int *ids = NULL;
    CHECK_OK(tok_encode(t, "", 0, 1, &ids, &n));
    CHECK_EQ(n, 0);
    free(ids);
    tok_destroy(&t);
}

/* ---- training -------------------------------------------------------------------------- */

/* A deterministic corpus: English-like words, numbers, code, Unicode, whitespace runs,
 * document separators and a few invalid bytes. */
static char *make_corpus(size_t want, size_t *len) {
    static const char *words[] = {
        "the",    "model",  "learns", "tokens", "from", "text",   "and",    "it",     "is",
        "fast",   "we're",  "don't",  "value",  "loss", "step",   "return", "int",    "café",
        "日本語", "データ", "🤖",   "naïve",  "(x)",  "{",      "}",      "==",     "->",
        "a[i]",   "Straße", "42",     "3.14",   "2024", "you'll", "reward", "policy", "KL"};
    size_t nw = sizeof words / sizeof words[0], cap = want + 256, n = 0;
    char *c = malloc(cap);
    while (n < want) {
        uint32_t r = rnd(100);
        const char *w = words[rnd((uint32_t)nw)];
        const char *sep = r < 70 ? " " : r < 80 ? "\n" : r < 85 ? "  " : r < 88 ? "\n\n    " : "";
        if (r == 99) sep = "<|endoftext|>";
        if (r == 98) sep = "\xff\xfe";
        n += (size_t)snprintf(c + n, cap - n, "%s%s", sep, w);
    }
    *len = n;
    return c;
}

static int files_equal(const char *a, const char *b) {
    char *da = NULL, *db = NULL;
    size_t la = 0, lb = 0;
    int eq = fs_read_all(a, &da, &la) == 0 && fs_read_all(b, &db, &lb) == 0 && la == lb &&
             !memcmp(da, db, la);
    free(da);
    free(db);
    return eq;
}

static void test_train_deterministic_and_round_trips(void) {
    size_t len = 0;
    char *corpus = make_corpus(200000, &len);
    char d1[600], d2[600], p1[700], p2[700];
    snprintf(d1, sizeof d1, "%s/t1", dir);
    snprintf(d2, sizeof d2, "%s/t2", dir);
    CHECK_OK(tok_train(corpus, len, 600, d1));
    CHECK_OK(tok_train(corpus, len, 600, d2));
    snprintf(p1, sizeof p1, "%s/vocab.json", d1);
    snprintf(p2, sizeof p2, "%s/vocab.json", d2);
    CHECK(files_equal(p1, p2));
    snprintf(p1, sizeof p1, "%s/merges.txt", d1);
    snprintf(p2, sizeof p2, "%s/merges.txt", d2);
    CHECK(files_equal(p1, p2));
    tok_t *t = tok_load(d1);
    CHECK(t != NULL);
    if (!t) {
        fprintf(stderr, "  %s\n", rl_errmsg());
        free(corpus);
        return;
    }
    CHECK_EQ(tok_vocab_size(t), 600);
    CHECK_EQ(tok_eot(t), 599);
    /* GPT-2's order for the byte tokens: "!" is 0, "Ā" (byte 0) 188, "Ġ" (space) 220 */
    CHECK(encodes_to(t, "!", 1, 0, (int[]){0}, 1));
    CHECK(encodes_to(t, "\0", 1, 0, (int[]){188}, 1));
    CHECK(encodes_to(t, " ", 1, 0, (int[]){220}, 1));
    CHECK(encodes_to(t, "<|endoftext|>", 13, 1, (int[]){599}, 1));
    /* it compresses its own corpus, losslessly, and every id is in range */
    int *ids = NULL;
    size_t n = 0;
    CHECK_OK(tok_encode(t, corpus, len, 1, &ids, &n));
    CHECK(n < len / 3);
    int max_id = 0;
    for (size_t i = 0; i < n; i++) max_id = ids[i] > max_id ? ids[i] : max_id;
    CHECK(max_id < 600);
    fprintf(stderr, "  trained vocab 600: %zu bytes -> %zu ids\n", len, n);
    free(ids);
    CHECK(round_trips(t, corpus, len, 1));
    CHECK(round_trips(t, corpus, len, 0));
    tok_destroy(&t);
    free(corpus);
}

static void test_round_trip_random_bytes(void) {
    size_t len = 0;
    char *corpus = make_corpus(50000, &len);
    char d[600];
    snprintf(d, sizeof d, "%s/rt", dir);
    CHECK_OK(tok_train(corpus, len, 500, d));
    free(corpus);
    tok_t *t = tok_load(d);
    CHECK(t != NULL);
    if (!t) return;
    static const char *frags[] = {" ",
                                  "  ",
                                  "\n",
                                  "\t",
                                  "\r\n",
                                  "the",
                                  " model",
                                  "é",
                                  "日",
                                  "🤖",
                                  "42",
                                  "'s",
                                  "\0",
                                  "<|endoftext|>",
                                  "\xff",
                                  "\xe2\x82",
                                  "\xed\xa0\x80",
                                  "\xf4\x90\x80\x80",
                                  "ab"};
    static const size_t fraglen[] = {1, 2, 1, 1, 2, 3, 6, 2, 3, 4, 2, 2, 1, 13, 1, 2, 3, 4, 2};
    static char s[8192];
    int bad = 0;
    for (int trial = 0; trial < 2000; trial++) {
        size_t n = 0, target = rnd(trial < 1000 ? 40 : 400);
        while (n < target) {
            if (rnd(3) == 0) {
                s[n++] = (char)rnd(256); /* any byte at all */
            } else {
                size_t k = rnd((uint32_t)(sizeof frags / sizeof frags[0]));
                memcpy(s + n, frags[k], fraglen[k]);
                n += fraglen[k];
            }
        }
        if (!round_trips(t, s, n, trial & 1)) bad++;
    }
    CHECK_EQ(bad, 0);
    /* long runs: whitespace, letters, digits, NULs, invalid bytes, CJK without spaces */
    static const char *fill[] = {" ", "\n", "a", "7", "\0", "\x80", "日", "ab "};
    static const size_t fill_len[] = {1, 1, 1, 1, 1, 1, 3, 3};
    for (size_t k = 0; k < sizeof fill / sizeof fill[0]; k++) {
        size_t n = 0;
        while (n + fill_len[k] < sizeof s - 2) {
            memcpy(s + n, fill[k], fill_len[k]);
            n += fill_len[k];
        }
        s[n++] = 'x';
        CHECK(round_trips(t, s, n, 1));
    }
    tok_destroy(&t);
}

/*
 * A naive trainer (recount every pair for every merge) on words over {a, b, c} separated by
 * single spaces, where pre-tokens are simply "word" and " word". The merges must match tok_train.
 */
static void test_train_matches_naive_trainer(void) {
    enum { NWORDS = 600, NMERGE = 30, MAXT = 300 };
    static char corpus[NWORDS * 8], words[NWORDS][8];
    static char toks[MAXT][64];
    static int syms[NWORDS][8], nsym[NWORDS], count[NWORDS];
    int nwords = 0, ntok = 0;
    size_t len = 0;
    for (int i = 0; i < NWORDS; i++) {
        char w[8];
        int wl = 0;
        if (i) w[wl++] = ' ';
        for (int k = 1 + (int)rnd(5); k > 0; k--) w[wl++] = (char)('a' + rnd(3));
        w[wl] = '\0';
        memcpy(corpus + len, w, (size_t)wl);
        len += (size_t)wl;
        int found = -1;
        for (int k = 0; k < nwords && found < 0; k++)
            if (!strcmp(words[k], w)) found = k;
        if (found >= 0) {
            count[found]++;
            continue;
        }
        strcpy(words[nwords], w);
        count[nwords] = 1;
        nsym[nwords] = wl;
        for (int k = 0; k < wl; k++) {
            int id = -1;
            for (int q = 0; q < ntok && id < 0; q++)
                if (toks[q][0] == w[k] && !toks[q][1]) id = q;
            if (id < 0) toks[id = ntok++][0] = w[k];
            syms[nwords][k] = id;
        }
        nwords++;
    }
    char want[8192] = "#version: 0.2\n";
    static long pc[MAXT][MAXT];
    for (int learned = 0; learned < NMERGE;) {
        memset(pc, 0, sizeof pc);
        for (int w = 0; w < nwords; w++)
            for (int k = 0; k + 1 < nsym[w]; k++) pc[syms[w][k]][syms[w][k + 1]] += count[w];
        int ba = -1, bb = -1;
        for (int a = 0; a < ntok; a++)
            for (int b = 0; b < ntok; b++) {
                if (!pc[a][b]) continue;
                if (ba < 0 || pc[a][b] > pc[ba][bb] ||
                    (pc[a][b] == pc[ba][bb] &&
                     (strcmp(toks[a], toks[ba]) < 0 ||
                      (!strcmp(toks[a], toks[ba]) && strcmp(toks[b], toks[bb]) < 0))))
                    ba = a, bb = b;
            }
        if (ba < 0) break;
        char cat[128];
        snprintf(cat, sizeof cat, "%s%s", toks[ba], toks[bb]);
        int m = -1;
        for (int q = 0; q < ntok && m < 0; q++)
            if (!strcmp(toks[q], cat)) m = q;
        if (m < 0) {
            strcpy(toks[m = ntok++], cat);
            learned++;
        }
        spell(toks[ba], strlen(toks[ba]), 0, want);
        strcat(want, " ");
        spell(toks[bb], strlen(toks[bb]), 0, want);
        strcat(want, "\n");
        for (int w = 0; w < nwords; w++) {
            int j = 0;
            for (int k = 0; k < nsym[w];) {
                if (k + 1 < nsym[w] && syms[w][k] == ba && syms[w][k + 1] == bb) {
                    syms[w][j++] = m;
                    k += 2;
                } else {
                    syms[w][j++] = syms[w][k++];
                }
            }
            nsym[w] = j;
        }
    }
    char d[600], p[700];
    snprintf(d, sizeof d, "%s/naive", dir);
    CHECK_OK(tok_train(corpus, len, 257 + NMERGE, d));
    snprintf(p, sizeof p, "%s/merges.txt", d);
    char *got = NULL;
    size_t glen = 0;
    CHECK_OK(fs_read_all(p, &got, &glen));
    CHECK_STREQ(got, want);
    free(got);
    tok_t *t = tok_load(d);
    CHECK(t != NULL);
    if (t) CHECK_EQ(tok_vocab_size(t), 257 + NMERGE);
    if (t) CHECK(round_trips(t, corpus, len, 0));
    tok_destroy(&t);
}

static void test_train_ties_and_limits(void) {
    char d[600], p[700];
    snprintf(d, sizeof d, "%s/tie", dir);
    /* every pair occurs once: (" ", "c") sorts before ("a", "b") and ("c", "d") */
    CHECK_OK(tok_train("ab cd", 5, 258, d));
    snprintf(p, sizeof p, "%s/merges.txt", d);
    char *got = NULL;
    size_t len = 0;
    CHECK_OK(fs_read_all(p, &got, &len));
    CHECK_STREQ(got, "#version: 0.2\nĠ c\n");
    free(got);
    /* only 3 merges exist in "ab cd" ( c, cd... ): asking for more fails, naming the count */
    CHECK_ERR(tok_train("ab cd", 5, 257 + 10, d), RL_EINVAL);
    CHECK(strstr(rl_errmsg(), "only 3") != NULL);
    CHECK_ERR(tok_train("ab", 2, 256, d), RL_EINVAL);
    CHECK_OK(tok_train("", 0, 257, d)); /* bytes + EOT need no corpus */
    tok_t *t = tok_load(d);
    CHECK(t != NULL);
    if (t) CHECK_EQ(tok_vocab_size(t), 257);
    tok_destroy(&t);
}

static void test_utf8_lossy(void) {
    /* "é" whole, "€" cut after two bytes, "a", a lone continuation byte, "b" */
    const char in[] = "\xc3\xa9"
                      "\xe2\x82"
                      "a\x80"
                      "b";
    size_t n = 0;
    char *o = tok_utf8_lossy(in, sizeof in - 1, &n);
    CHECK(o != NULL);
    const char want[] = "\xc3\xa9"
                        "\xef\xbf\xbd\xef\xbf\xbd"
                        "a\xef\xbf\xbd"
                        "b";
    CHECK_EQ(n, sizeof want - 1);
    CHECK(o && memcmp(o, want, sizeof want - 1) == 0);
    free(o);
    o = tok_utf8_lossy("", 0, &n);
    CHECK(o && n == 0 && o[0] == 0);
    free(o);
}

/* ---- tokenizer.json ------------------------------------------------------------------------ */

static char tjdir[600];

static void write_tj(const char *name, const char *text) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s", tjdir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void remove_tj(const char *name) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s", tjdir, name);
    remove(path);
}

/*
 * Writes tjdir/tokenizer.json: byte b has id b and extra[i] id 256 + i (GPT-2 spelling) in
 * model.vocab, no merges, ignore_merges (so a piece that is a token comes out as that one id,
 * which shows where the pre-tokeniser cut), and the top-level members in `rest` (JSON without
 * the braces: pre_tokenizer, normalizer, added_tokens...).
 */
static void write_tokjson(const char *const *extra, int n_extra, const char *rest) {
    size_t cap = 64 * (size_t)(256 + n_extra) + strlen(rest) + 512;
    char *v = malloc(cap);
    strcpy(v, "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\", \"ignore_merges\": true, "
              "\"merges\": [], \"vocab\": {");
    for (int i = 0; i < 256 + n_extra; i++) {
        char b = (char)i;
        strcat(v, i ? ", \"" : "\"");
        if (i < 256)
            spell(&b, 1, 1, v);
        else
            spell(extra[i - 256], strlen(extra[i - 256]), 1, v);
        sprintf(v + strlen(v), "\": %d", i);
    }
    strcat(v, "}}, \"decoder\": {\"type\": \"ByteLevel\"}");
    if (*rest) strcat(strcat(v, ", "), rest);
    strcat(v, "}\n");
    write_tj("tokenizer.json", v);
    free(v);
}

/* Loads tjdir (NULL after a failed check). */
static tok_t *load_tj(void) {
    tok_t *t = tok_load(tjdir);
    if (!t) TEST__FAIL("tok_load(%s): %s", tjdir, rl_errmsg());
    return t;
}

#define ENCODES(t, text, special, ...)                                                             \
    CHECK(encodes_to(t, text, strlen(text), special, (int[]){__VA_ARGS__},                         \
                     sizeof((int[]){__VA_ARGS__}) / sizeof(int)))

static void test_tokjson_split_behaviors(void) {
    const char *extra[] = {"a ", "b ", " b", " c", "  "}; /* 256.. */
    static const char *const split =
        "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, "
        "\"behavior\": \"%s\", \"invert\": %s}";
    char rest[512];
    struct {
        const char *behavior, *invert, *text;
        int want[6], n;
    } cases[] = {
        {"Isolated", "false", "a b c", {97, 32, 98, 32, 99}, 5},
        {"Removed", "false", "a b c", {97, 98, 99}, 3},
        {"MergedWithPrevious", "false", "a b c", {256, 257, 99}, 3},
        {"MergedWithNext", "false", "a b c", {97, 258, 259}, 3},
        {"Contiguous", "false", "a  b", {97, 260, 98}, 3},
        {"Isolated", "false", "a  b", {97, 32, 32, 98}, 4},
        {"Removed", "true", "a b c", {32, 32}, 2}, /* invert: the letters are the delimiters */
        {"Isolated", "false", "", {0}, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(rest, sizeof rest, split, cases[i].behavior, cases[i].invert);
        write_tokjson(extra, 5, rest);
        tok_t *t = load_tj();
        if (!t) continue;
        if (!encodes_to(t, cases[i].text, strlen(cases[i].text), 1, cases[i].want,
                        (size_t)cases[i].n))
            TEST__FAIL("behavior %s, invert %s", cases[i].behavior, cases[i].invert);
        tok_destroy(&t);
    }
    /* a regex, with invalid UTF-8 around: the invalid bytes are pieces of their own and the
     * round trip is exact */
    write_tokjson(extra, 5,
                  "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": "
                  "\"Split\", \"pattern\": {\"Regex\": \"\\\\p{L}+| ?\\\\p{N}+|\\\\s+\"}, "
                  "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", "
                  "\"add_prefix_space\": false, \"use_regex\": false}]}");
    tok_t *t = load_tj();
    if (t) {
        ENCODES(t, "a \xff b", 1, 97, 32, 255, 32, 98);
        const char bin[] = "x\xc3 \xe2\x82\xac\xf0\x9f\x98 12 \x80\x80";
        CHECK(round_trips(t, bin, sizeof bin - 1, 1));
    }
    tok_destroy(&t);
}

static void test_tokjson_pretokenizers_and_nfc(void) {
    const char *extra[] = {" hi", "12", "\xc3\xa9", "hi"}; /* 256.. */
    /* ByteLevel: a prefix space, then GPT-2's pattern */
    write_tokjson(extra, 4,
                  "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true}");
    tok_t *t = load_tj();
    if (t) {
        ENCODES(t, "hi", 1, 256);
        ENCODES(t, " hi", 1, 256);
        ENCODES(t, "hi12", 1, 256, 257); /* GPT-2's pattern cuts before the digits */
    }
    tok_destroy(&t);
    /* Digits, one by one and in runs */
    write_tokjson(extra, 4,
                  "\"pre_tokenizer\": {\"type\": \"Digits\", \"individual_digits\": true}");
    if ((t = load_tj())) ENCODES(t, "hi12", 1, 259, 49, 50);
    tok_destroy(&t);
    write_tokjson(extra, 4,
                  "\"pre_tokenizer\": {\"type\": \"Digits\", \"individual_digits\": false}");
    if ((t = load_tj())) ENCODES(t, "hi12", 1, 259, 257);
    tok_destroy(&t);
    /* NFC: e + combining acute becomes one character (one token here); without, three bytes */
    write_tokjson(extra, 4, "\"normalizer\": {\"type\": \"NFC\"}");
    if ((t = load_tj())) {
        ENCODES(t, "e\xcc\x81", 1, 258);
        ENCODES(t, "\xc3\xa9", 1, 258);
        const char bin[] = "\xff\xc3\xa9\xfe"; /* invalid bytes around: still lossless */
        CHECK(round_trips(t, bin, sizeof bin - 1, 1));
    }
    tok_destroy(&t);
    write_tokjson(extra, 4, "\"normalizer\": null");
    if ((t = load_tj())) ENCODES(t, "e\xcc\x81", 1, 101, 0xcc, 0x81);
    tok_destroy(&t);
}

static void test_tokjson_added_tokens_and_config(void) {
    const char *added =
        "\"added_tokens\": ["
        "{\"id\": 300, \"content\": \"<x>\", \"special\": true},"
        "{\"id\": 301, \"content\": \"<y>\", \"special\": false, \"lstrip\": true},"
        "{\"id\": 302, \"content\": \"<w>\", \"special\": false, \"single_word\": true, "
        "\"rstrip\": true},"
        "{\"id\": 303, \"content\": \"<x>>\", \"special\": true}]";
    write_tokjson(NULL, 0, added);
    remove_tj("tokenizer_config.json");
    tok_t *t = load_tj();
    if (!t) return;
    CHECK_EQ(tok_vocab_size(t), 304);
    CHECK_EQ(tok_bos(t), -1);
    CHECK_EQ(tok_eot(t), -1);
    ENCODES(t, "a<x>b", 1, 97, 300, 98);
    ENCODES(t, "a<x>b", 0, 97, '<', 'x', '>', 98); /* special: text without allow_special */
    ENCODES(t, "<x>>", 1, 303);                    /* leftmost-longest */
    ENCODES(t, "a <y>b", 0, 97, 301, 98);          /* lstrip takes the space; not special */
    ENCODES(t, "a<w>", 1, 97, '<', 'w', '>');      /* single_word: not inside a word */
    ENCODES(t, "a <w>  b", 1, 97, 32, 302, 98);    /* rstrip takes the spaces */
    char *text = NULL, *out = NULL;
    size_t len = 0;
    CHECK_OK(tok_decode(t, (int[]){97, 300, 303}, 3, &text, &len));
    if (text) CHECK_STREQ(text, "a<x><x>>");
    free(text);
    CHECK_ERR(tok_chat_render(t, "[]", 2, 0, &out, &len), RL_ENOTFOUND);
    tok_destroy(&t);

    /* tokenizer_config.json: EOS, the template; no add_bos_token and no post-processor: no BOS */
    write_tj(
        "tokenizer_config.json",
        "{\"bos_token\": \"<x>\", \"eos_token\": {\"content\": \"<y>\"}, \"model_max_length\": "
        "1000000000000000019884624838656, \"chat_template\": \"{{ bos_token }}{% for m in "
        "messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}{% if add_generation_prompt "
        "%}>{{ eos_token }}{% endif %}\"}");
    if (!(t = load_tj())) return;
    CHECK_EQ(tok_bos(t), -1);
    CHECK_EQ(tok_eot(t), 301);
    const char *msgs = "[{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", "
                       "\"content\": \"yo\"}]";
    CHECK_OK(tok_chat_render(t, msgs, strlen(msgs), 1, &out, &len));
    if (out) CHECK_STREQ(out, "<x>[user:hi][assistant:yo]><y>");
    free(out);
    out = NULL;
    const char *obj = "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}";
    CHECK_OK(tok_chat_render(t, obj, strlen(obj), 0, &out, &len));
    if (out) CHECK_STREQ(out, "<x>[user:q]");
    free(out);
    CHECK_ERR(tok_chat_render(t, "{\"messages\": 3}", 15, 0, &out, &len), RL_EFORMAT);
    CHECK_ERR(tok_chat_render(t, "[{\"content\": \"x\"}]", 18, 0, &out, &len), RL_EFORMAT);
    CHECK(strstr(rl_errmsg(), "messages[0]") != NULL);
    CHECK_ERR(tok_chat_render(t, "[", 1, 0, &out, &len), RL_EFORMAT);
    tok_destroy(&t);
    write_tj("tokenizer_config.json",
             "{\"bos_token\": \"<x>\", \"add_bos_token\": false, \"eos_token\": null}");
    if ((t = load_tj())) {
        CHECK_EQ(tok_bos(t), -1);
        CHECK_EQ(tok_eot(t), -1);
    }
    tok_destroy(&t);
    write_tj("tokenizer_config.json", "{\"bos_token\": \"<x>\", \"add_bos_token\": true}");
    if ((t = load_tj())) CHECK_EQ(tok_bos(t), 300);
    tok_destroy(&t);
    /* BOS from the post-processor (Llama 3's: a TemplateProcessing in a Sequence), unless
     * add_bos_token says otherwise */
    char rest[1024];
    snprintf(rest, sizeof rest,
             "%s, \"post_processor\": {\"type\": \"Sequence\", \"processors\": [{\"type\": "
             "\"ByteLevel\"}, {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": "
             "{\"id\": \"<x>>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": "
             "0}}], \"special_tokens\": {\"<x>>\": {\"id\": \"<x>>\", \"ids\": [303]}}}]}",
             added);
    write_tokjson(NULL, 0, rest);
    write_tj("tokenizer_config.json", "{\"bos_token\": \"<x>\"}");
    if ((t = load_tj())) CHECK_EQ(tok_bos(t), 303);
    tok_destroy(&t);
    write_tj("tokenizer_config.json", "{\"bos_token\": \"<x>\", \"add_bos_token\": false}");
    if ((t = load_tj())) CHECK_EQ(tok_bos(t), -1);
    tok_destroy(&t);
    remove_tj("tokenizer_config.json");
    if ((t = load_tj())) CHECK_EQ(tok_bos(t), 303);
    tok_destroy(&t);
}

/* Random bytes (valid and invalid UTF-8, added tokens, whitespace runs, digits) round-trip
 * through a tokenizer.json pipeline of Llama 3's shape: Split by its pattern, ByteLevel, Digits,
 * added tokens, some merges. */
static void test_tokjson_random_round_trip(void) {
    static const char *const atoms[] = {"a",
                                        "b",
                                        "ab",
                                        " ",
                                        "  ",
                                        "\t",
                                        "\n",
                                        "\r\n",
                                        "'s",
                                        "'LL",
                                        "1",
                                        "23",
                                        "4567",
                                        ".",
                                        "!",
                                        "\xc3\xa9",
                                        "\xe4\xb8\xad",
                                        "\xf0\x9f\x98\x80",
                                        "\xe2\x80\x8d",
                                        "e\xcc\x81",
                                        "<x>",
                                        "<x",
                                        "x>",
                                        "<y>",
                                        "\xff",
                                        "\xc3",
                                        "\xe2\x82",
                                        "\x80",
                                        "\x00"};
    const char *extra[] = {"ab", " a", "  ", "12"};
    write_tokjson(
        extra, 4,
        "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
        "\"pattern\": {\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?"
        "\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r"
        "\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, \"behavior\": \"Isolated\", \"invert\": false}, "
        "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}, "
        "{\"type\": \"Digits\", \"individual_digits\": false}]}, \"added_tokens\": [{\"id\": 400, "
        "\"content\": \"<x>\", \"special\": true}, {\"id\": 401, \"content\": \"<y>\", "
        "\"special\": false}]");
    tok_t *t = load_tj();
    if (!t) return;
    char text[2048];
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = 0;
        for (int k = (int)rnd(40); k > 0; k--) {
            const char *a = atoms[rnd(sizeof atoms / sizeof *atoms)];
            size_t al = a[0] ? strlen(a) : 1; /* "\x00" is one NUL byte */
            memcpy(text + n, a, al);
            n += al;
        }
        for (int special = 0; special < 2; special++)
            if (!round_trips(t, text, n, special)) {
                TEST__FAIL("round trip failed (special %d) on %zu bytes", special, n);
                iter = 2000;
                break;
            }
    }
    tok_destroy(&t);
}

/* tok_load must fail on tjdir with code and a message containing want. */
static void tj_fails(int code, const char *want, int line) {
    tok_t *t = tok_load(tjdir);
    if (t || rl_errcode() != code || !strstr(rl_errmsg(), want))
        TEST__FAIL("(line %d) tok_load: want failure %d with \"%s\", got %s %d \"%s\"", line, code,
                   want, t ? "success" : "failure", rl_errcode(), rl_errmsg());
    tok_destroy(&t);
}
#define TJ_FAILS(code, want) tj_fails(code, want, __LINE__)

static void test_tokjson_malformed(void) {
    const char *extra[] = {"ab"};
    write_tj("tokenizer.json", "{\"model\": ");
    TJ_FAILS(RL_EFORMAT, "tokenizer.json:1:");
    write_tj("tokenizer.json", "{\"version\": \"1.0\"}");
    TJ_FAILS(RL_EFORMAT, "tokenizer.json: \"model\": missing");
    write_tj("tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
    TJ_FAILS(RL_EUNSUPPORTED, "tokenizer.json: \"model.type\": \"WordPiece\"");
    write_tj("tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"merges\": []}}");
    TJ_FAILS(RL_EFORMAT, "\"model.vocab\": missing");
    write_tj("tokenizer.json",
             "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {}}}");
    TJ_FAILS(RL_EUNSUPPORTED, "model.byte_fallback");
    write_tj("tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}");
    TJ_FAILS(RL_EFORMAT, "tokenizer.json: model.vocab: no token for byte 0x00");
    write_tokjson(extra, 1, "\"normalizer\": {\"type\": \"NFKC\"}");
    TJ_FAILS(RL_EUNSUPPORTED, "\"normalizer.type\": normalizer \"NFKC\"");
    write_tokjson(extra, 1, "\"decoder\": {\"type\": \"WordPiece\"}");
    /* a duplicate "decoder" member: jansson keeps the last, which is the bad one */
    TJ_FAILS(RL_EUNSUPPORTED, "\"decoder.type\": decoder \"WordPiece\"");
    write_tokjson(extra, 1,
                  "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": "
                  "\"ByteLevel\"}, {\"type\": \"Metaspace\"}]}");
    TJ_FAILS(RL_EUNSUPPORTED,
             "\"pre_tokenizer.pretokenizers[1].type\": pre-tokenizer \"Metaspace\"");
    write_tokjson(extra, 1,
                  "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a\"}, "
                  "\"behavior\": \"Isolated\"}");
    TJ_FAILS(RL_EUNSUPPORTED, "\"pre_tokenizer.pattern\": PCRE2 rejects the pattern");
    write_tokjson(extra, 1,
                  "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, "
                  "\"behavior\": \"Sideways\"}");
    TJ_FAILS(RL_EFORMAT, "\"pre_tokenizer.behavior\": \"Sideways\"");
    write_tokjson(extra, 1, "\"pre_tokenizer\": {\"type\": \"Split\", \"behavior\": \"Isolated\"}");
    TJ_FAILS(RL_EFORMAT, "\"pre_tokenizer.pattern\"");
    write_tokjson(extra, 1, "\"added_tokens\": [{\"id\": 5}]");
    TJ_FAILS(RL_EFORMAT, "\"added_tokens[0].content\"");
    write_tokjson(extra, 1, "\"added_tokens\": [{\"id\": -1, \"content\": \"<s>\"}]");
    TJ_FAILS(RL_EFORMAT, "\"added_tokens[0].id\" (token \"<s>\")");
    write_tokjson(extra, 1,
                  "\"added_tokens\": [{\"id\": 9, \"content\": \"<s>\", \"special\": \"yes\"}]");
    TJ_FAILS(RL_EFORMAT, "\"added_tokens[0].special\": expected true or false");
    /* merges: bad forms, unknown tokens, duplicates */
    static const struct {
        const char *merges, *want;
    } bad[] = {
        {"[\"a b\", 7]", "tokenizer.json: model.merges[1]: expected \"left right\""},
        {"[\"a b c\"]", "model.merges[0]: expected"},
        {"[[\"a\"]]", "model.merges[0]: expected"},
        {"[[\"a\", \"b\"], [\"ab\", \"ab\"]]",
         "model.merges[1]: the merged token \"abab\" is not in model.vocab"},
        {"[\"a b\", [\"a\", \"b\"]]",
         "model.merges[1]: duplicate merge \"a b\" (first at index 0)"},
        {"[\"abc b\"]", "model.merges[0]: token \"abc\" is not in model.vocab"},
        {"{}", "\"model.merges\": missing or not an array"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[64 * 300];
        strcpy(text, "{\"model\": {\"type\": \"BPE\", \"merges\": ");
        strcat(text, bad[i].merges);
        strcat(text, ", \"vocab\": {");
        for (int b = 0; b < 257; b++) {
            char c = (char)b;
            strcat(text, b ? ", \"" : "\"");
            if (b < 256)
                spell(&c, 1, 1, text);
            else
                strcat(text, "ab");
            sprintf(text + strlen(text), "\": %d", b);
        }
        strcat(text, "}}}");
        write_tj("tokenizer.json", text);
        TJ_FAILS(RL_EFORMAT, bad[i].want);
    }
    write_tokjson(extra, 1,
                  "\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": "
                  "[{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}]}");
    TJ_FAILS(RL_EFORMAT, "\"post_processor.single\": special token \"<s>\" is not a token");
    /* tokenizer_config.json */
    write_tokjson(extra, 1, "\"added_tokens\": []");
    write_tj("tokenizer_config.json", "{\"bos_token\": \"<nope>\"}");
    TJ_FAILS(RL_EFORMAT, "tokenizer_config.json: \"bos_token\": \"<nope>\" is not a token");
    write_tj("tokenizer_config.json", "{\"eos_token\": 5}");
    TJ_FAILS(RL_EFORMAT, "tokenizer_config.json: \"eos_token\": expected a string");
    write_tj("tokenizer_config.json", "{\"add_bos_token\": \"no\"}");
    TJ_FAILS(RL_EFORMAT, "tokenizer_config.json: \"tokenizer_config.add_bos_token\"");
    write_tj("tokenizer_config.json", "{\"chat_template\": 7}");
    TJ_FAILS(RL_EFORMAT, "tokenizer_config.json: \"chat_template\"");
    write_tj("tokenizer_config.json", "{\"bos_token\": ");
    TJ_FAILS(RL_EFORMAT, "tokenizer_config.json:1:");
    remove_tj("tokenizer_config.json");
    remove_tj("tokenizer.json");
}

int main(void) {
    snprintf(dir, sizeof dir, "%s", test_tmpdir());
    RUN(test_byte_map_round_trip);
    RUN(test_merge_rank_order);
    RUN(test_bpe_matches_naive_gpt2_loop);
    RUN(test_pretokenize_like_gpt2);
    RUN(test_special_token);
    RUN(test_malformed_files_rejected);
    RUN(test_decode_errors);
    RUN(test_train_deterministic_and_round_trips);
    RUN(test_round_trip_random_bytes);
    RUN(test_train_matches_naive_trainer);
    RUN(test_train_ties_and_limits);
    RUN(test_utf8_lossy);
    snprintf(tjdir, sizeof tjdir, "%s/tj", dir);
    mkdir(tjdir, 0755);
    RUN(test_tokjson_split_behaviors);
    RUN(test_tokjson_pretokenizers_and_nfc);
    RUN(test_tokjson_added_tokens_and_config);
    RUN(test_tokjson_random_round_trip);
    RUN(test_tokjson_malformed);
    int rc = TEST_REPORT();
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return rc;
}
