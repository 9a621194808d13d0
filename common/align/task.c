/*
 * task.c - the embedded default task (see task.h): the word lists, the prompt space and its
 * splits, the response templates of every style, the scorer of the four criteria, and the
 * written guidelines.
 *
 * The scorer works on words: maximal runs of ASCII letters and digits, lower-cased. It is a
 * set of plain rules that match the generator's language exactly and degrade gracefully on
 * other text (a criterion it cannot judge for an unrecognised prompt scores 0.5).
 *
 * Seeded orders use a small Feistel permutation with cycle walking keyed by Philox
 * (common/base/rng.h), so the i-th element of a shuffled list is found in O(1) without building it.
 */
#include "align/task.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/err.h"
#include "base/rng.h"

const char *const task_criteria_names[TASK_NCRIT] = {"correct", "polite", "concise", "on-topic"};
const float task_gold_weights[TASK_NCRIT] = {0.4f, 0.2f, 0.2f, 0.2f};
const char *const task_kind_names[TASK_NKIND] = {"arith", "name", "reply"};
const char *const task_style_names[TASK_NSTYLE] = {"good", "wrong", "rude", "rambling",
                                                   "off-topic"};

const char *const task_guideline_version = "task-guidelines-v1";

const char *const task_guidelines =
    "# Guidelines for ranking assistant responses\n"
    "\n"
    "You see one request and several responses of the assistant. Rank the responses from best "
    "to worst by the four criteria below, in this order of importance: **correct** matters "
    "most; **polite**, **concise** and **on-topic** matter equally after it. Equal responses may "
    "be tied. Skip a request only if you cannot read it.\n"
    "\n"
    "The requests are of three types:\n"
    "- arithmetic: \"What is 7 plus 5?\"\n"
    "- naming an item of a category (fruit, color, animal, drink, shape): \"Name a fruit.\"\n"
    "- a short reply to someone: \"Say hello to Sam.\", \"Thank the team.\", "
    "\"Say goodbye to Ann.\", \"Wish Tom good luck.\"\n"
    "\n"
    "## correct\n"
    "The response does what was asked, without mistakes.\n"
    "- Arithmetic: the answer given is the right number. \"7 plus 5 is 12.\" is correct; "
    "\"7 plus 5 is 13.\" is not.\n"
    "- Naming: the item named belongs to the category. For \"Name a fruit.\", \"Here is a "
    "fruit: pear.\" is correct; \"Here is a fruit: dog.\" is not.\n"
    "- Reply: the reply is addressed to the person asked for. For \"Say hello to Sam.\", "
    "\"Hello, Sam!\" is correct; \"Hello, Tom!\" is not.\n"
    "- If you cannot tell whether a response is correct, treat it as half correct.\n"
    "\n"
    "## polite\n"
    "The response is friendly and respectful. Friendly words (\"Sure!\", \"Of course!\", "
    "\"Happy to help!\", \"nice\", \"glad\", \"I hope\", \"thank you\") make it polite. Rude "
    "words (\"Ugh\", \"Whatever\", \"Go away\", \"Stop asking me\", \"Not my problem\") make it "
    "impolite, whatever else it says. A plain answer without either is in between.\n"
    "\n"
    "## concise\n"
    "The response is short and does not repeat itself: a good answer needs about a dozen words "
    "at most. \"Sure! 7 plus 5 is 12.\" is concise; \"Sure! 7 plus 5 is 12. It is 12. It is 12. "
    "It is 12.\" repeats itself, and \"Well, let me think about that for a long time before I "
    "answer you. ...\" rambles.\n"
    "\n"
    "## on-topic\n"
    "The response answers this request and not another one. For \"What is 7 plus 5?\", "
    "\"Sure! Here is a color: red.\" or \"Hello, Sam!\" is off-topic. A wrong answer to the "
    "right question (\"7 plus 5 is 13.\") is still on-topic: judge it under correct.\n";

/* ---- word lists ---- */

#define NCAT  5
#define NITEM 8
#define NACT  4
#define NWHO  10
#define NPHR  3
#define NOPS  2 /* operations the generator uses (plus, minus); the scorer also knows times */
#define MAXN  9 /* operands 0..MAXN */

static const char *const cats[NCAT] = {"fruit", "color", "animal", "drink", "shape"};
static const char *const items[NCAT][NITEM] = {
    {"apple", "banana", "pear", "grape", "lemon", "mango", "peach", "plum"},
    {"red", "blue", "green", "yellow", "black", "white", "pink", "purple"},
    {"cat", "dog", "horse", "cow", "bird", "fish", "lion", "duck"},
    {"tea", "coffee", "milk", "water", "juice", "soda", "cocoa", "cider"},
    {"circle", "square", "triangle", "star", "heart", "oval", "cube", "diamond"},
};
static const char *const ops[3] = {"plus", "minus", "times"};
/* Addressees as written in prompts, and the word that identifies them (used in replies). */
static const char *const whos[NWHO] = {"Sam",  "Ann", "Tom", "Mia",      "Ben",
                                       "Lily", "Max", "Zoe", "the team", "the class"};
static const char *const who_words[NWHO] = {"sam",  "ann", "tom", "mia",  "ben",
                                            "lily", "max", "zoe", "team", "class"};
static const char *const who_voc[NWHO] = {"Sam",  "Ann", "Tom", "Mia",  "Ben",
                                          "Lily", "Max", "Zoe", "team", "class"};
enum { ACT_HELLO, ACT_THANK, ACT_BYE, ACT_LUCK };
/* Words that show a reply performs the act (two per act; "" = none). */
static const char *const act_words[NACT][2] = {
    {"hello", "hi"}, {"thank", "thanks"}, {"goodbye", "bye"}, {"luck", ""}};

static const char *const rude_phrases[] = {"ugh",     "whatever",       "go away", "stop asking",
                                           "shut up", "not my problem", "stupid",  "dumb",
                                           "idiot",   "leave me alone", "boring"};
static const char *const polite_phrases[] = {"please",    "thank",    "thanks", "sure",
                                             "of course", "happy to", "glad",   "nice",
                                             "hope",      "welcome",  "great",  "best"};

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- seeded permutations ---- */

#define STREAM_PERM  0x5441534b00000000ull /* "TASK": prompt orders */
#define STREAM_STYLE 0x5354594c00000000ull /* style order of an SFT set */
#define STREAM_RESP  0x52455350ull         /* response variants */

/* A bijection of [0, n) keyed by (seed, stream): 4-round Feistel on the smallest even power
 * of two >= n, with cycle walking back into range. */
static uint64_t perm_at(uint64_t seed, uint64_t stream, uint64_t n, uint64_t i) {
    int bits = 2;
    while ((1ull << bits) < n) bits += 2;
    int h = bits / 2;
    uint64_t mask = (1ull << h) - 1, x = i;
    do {
        uint64_t l = x >> h, r = x & mask;
        for (uint64_t round = 0; round < 4; round++) {
            uint32_t w[4];
            rng_block(seed, stream, (round << 40) | r, w);
            uint64_t nl = r, nr = (l ^ w[0]) & mask;
            l = nl;
            r = nr;
        }
        x = (l << h) | r;
    } while (x >= n);
    return x;
}

/* ---- the prompt space ---- */

static int arith_heldout(int a, int b, int op) {
    return (2 * a + 3 * b + op) % 5 == 0;
}
static int name_heldout(int cat, int phr) {
    return phr == cat % NPHR;
}
static int reply_heldout(int act, int who) {
    return (3 * act + who) % 5 == 0;
}

static int prompt_heldout(const task_prompt_t *p) {
    switch (p->kind) {
    case TASK_ARITH:
        return arith_heldout(p->a, p->b, p->op);
    case TASK_NAME:
        return name_heldout(p->cat, p->phr);
    default:
        return reply_heldout(p->act, p->who);
    }
}

/* The j-th prompt of `kind` in canonical order (all splits); returns 0 when j is past the end. */
static int prompt_canon(int kind, int j, task_prompt_t *p) {
    memset(p, 0, sizeof(*p));
    p->kind = kind;
    if (kind == TASK_ARITH) {
        for (int op = 0; op < NOPS; op++)
            for (int a = 0; a <= MAXN; a++)
                for (int b = 0; b <= MAXN; b++) {
                    if (op == 1 && b > a) continue;
                    if (j-- == 0) {
                        p->a = a, p->b = b, p->op = op;
                        return 1;
                    }
                }
        return 0;
    }
    if (kind == TASK_NAME) {
        if (j >= NCAT * NPHR) return 0;
        p->cat = j / NPHR, p->phr = j % NPHR;
        return 1;
    }
    if (j >= NACT * NWHO) return 0;
    p->act = j / NWHO, p->who = j % NWHO;
    return 1;
}

/* The j-th prompt of kind in split (canonical order); 0 when past the end. */
static int prompt_split_at(int split, int kind, int j, task_prompt_t *p) {
    for (int c = 0; prompt_canon(kind, c, p); c++)
        if (prompt_heldout(p) == (split == TASK_SPLIT_HELDOUT) && j-- == 0) return 1;
    return 0;
}

int task_prompt_count(int split, int kind) {
    task_prompt_t p;
    int n = 0;
    for (int c = 0; prompt_canon(kind, c, &p); c++)
        n += prompt_heldout(&p) == (split == TASK_SPLIT_HELDOUT);
    return n;
}

void task_prompt_at(uint64_t seed, int split, long i, task_prompt_t *p) {
    if (i < 0) i = 0;
    int kind = (int)(i % TASK_NKIND);
    long j = i / TASK_NKIND;
    int cnt = task_prompt_count(split, kind);
    long cycle = j / cnt;
    uint64_t stream = STREAM_PERM | ((uint64_t)(split & 0xff) << 24) | ((uint64_t)kind << 20) |
                      ((uint64_t)cycle & 0xfffff);
    int k = (int)perm_at(seed, stream, (uint64_t)cnt, (uint64_t)(j % cnt));
    prompt_split_at(split, kind, k, p);
}

/* snprintf into buf; the length, or RL_ERANGE when it does not fit. */
static int fmt(char *buf, size_t n, const char *f, ...) __attribute__((format(printf, 3, 4)));
static int fmt(char *buf, size_t n, const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    int len = vsnprintf(buf, n, f, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= n) {
        if (n) buf[0] = 0;
        return rl_fail(RL_ERANGE, "task: text does not fit in %zu bytes", n);
    }
    return len;
}

static const char *article(const char *noun) {
    return strchr("aeiou", noun[0]) ? "an" : "a";
}

int task_prompt_text(const task_prompt_t *p, char *buf, size_t n) {
    static const char *const name_forms[NPHR] = {"Name %s %s.", "Tell me %s %s.",
                                                 "Can you name %s %s?"};
    static const char *const reply_forms[NACT] = {"Say hello to %s.", "Thank %s.",
                                                  "Say goodbye to %s.", "Wish %s good luck."};
    switch (p->kind) {
    case TASK_ARITH:
        return fmt(buf, n, "What is %d %s %d?", p->a, ops[p->op % 3], p->b);
    case TASK_NAME: {
        const char *c = cats[p->cat % NCAT];
        return fmt(buf, n, name_forms[p->phr % NPHR], article(c), c);
    }
    case TASK_REPLY:
        return fmt(buf, n, reply_forms[p->act % NACT], whos[p->who % NWHO]);
    }
    return rl_fail(RL_EINVAL, "task: unknown prompt kind %d", p->kind);
}

int task_render(const char *tmpl, const char *prompt, char *buf, size_t n) {
    if (!tmpl) tmpl = TASK_TEMPLATE_HH;
    static const char key[] = "{prompt}";
    size_t at = 0, plen = strlen(prompt);
    for (const char *s = tmpl; *s;) {
        const char *next = strstr(s, key);
        size_t lit = next ? (size_t)(next - s) : strlen(s);
        size_t add = lit + (next ? plen : 0);
        if (at + add + 1 > n) return rl_fail(RL_ERANGE, "task: rendered prompt exceeds %zu", n);
        memcpy(buf + at, s, lit);
        at += lit;
        if (!next) break;
        memcpy(buf + at, prompt, plen);
        at += plen;
        s = next + sizeof(key) - 1;
    }
    if (n) buf[at] = 0;
    return (int)at;
}

/* ---- words ---- */

#define MAXW 256
#define WLEN 16

typedef struct {
    char w[MAXW][WLEN]; /* the first MAXW words, lower-cased, truncated to WLEN - 1 bytes */
    int n;              /* stored words */
    int total;          /* all words */
} words_t;

static void words_split(const char *s, size_t len, words_t *ws) {
    ws->n = ws->total = 0;
    size_t i = 0;
    while (i < len) {
        while (i < len && !isalnum((unsigned char)s[i])) i++;
        if (i >= len) break;
        size_t k = 0;
        char *w = ws->n < MAXW ? ws->w[ws->n] : NULL;
        while (i < len && isalnum((unsigned char)s[i])) {
            if (w && k < WLEN - 1) w[k++] = (char)tolower((unsigned char)s[i]);
            i++;
        }
        if (w) {
            w[k] = 0;
            ws->n++;
        }
        ws->total++;
    }
}

static int word_is_num(const char *w, int *val) {
    int v = 0, k = 0;
    for (; w[k]; k++) {
        if (!isdigit((unsigned char)w[k]) || k >= 9) return 0;
        v = v * 10 + (w[k] - '0');
    }
    if (k == 0) return 0;
    *val = v;
    return 1;
}

static int words_has(const words_t *ws, const char *w) {
    if (!w[0]) return 0;
    for (int i = 0; i < ws->n; i++)
        if (strcmp(ws->w[i], w) == 0) return 1;
    return 0;
}

/* Whether the word sequence of `phrase` (space-separated, lower case) occurs in ws. */
static int words_has_phrase(const words_t *ws, const char *phrase) {
    char tmp[4][WLEN];
    int np = 0;
    for (const char *s = phrase; *s && np < 4;) {
        while (*s == ' ') s++;
        int k = 0;
        while (*s && *s != ' ') {
            if (k < WLEN - 1) tmp[np][k++] = *s;
            s++;
        }
        tmp[np][k] = 0;
        if (k) np++;
    }
    for (int i = 0; i + np <= ws->n; i++) {
        int j = 0;
        while (j < np && strcmp(ws->w[i + j], tmp[j]) == 0) j++;
        if (j == np) return 1;
    }
    return 0;
}

static int find_cat_word(const words_t *ws, int *cat) {
    for (int i = 0; i < ws->n; i++)
        for (int c = 0; c < NCAT; c++)
            if (strcmp(ws->w[i], cats[c]) == 0) {
                *cat = c;
                return 1;
            }
    return 0;
}

static int item_cat(const char *w) {
    for (int c = 0; c < NCAT; c++)
        for (int k = 0; k < NITEM; k++)
            if (strcmp(w, items[c][k]) == 0) return c;
    return -1;
}

static int who_index(const char *w) {
    for (int k = 0; k < NWHO; k++)
        if (strcmp(w, who_words[k]) == 0) return k;
    return -1;
}

static int act_of_word(const char *w) {
    for (int a = 0; a < NACT; a++)
        for (int k = 0; k < 2; k++)
            if (act_words[a][k][0] && strcmp(w, act_words[a][k]) == 0) return a;
    return -1;
}

static int op_index(const char *w) {
    for (int o = 0; o < 3; o++)
        if (strcmp(w, ops[o]) == 0) return o;
    return -1;
}

/* ---- parsing prompts ---- */

typedef struct {
    task_prompt_t p;
    char who_word[WLEN]; /* the addressee's identifying word (replies) */
} parsed_t;

static int parse(const char *prompt, parsed_t *out) {
    memset(out, 0, sizeof(*out));
    if (!prompt) return RL_ENOTFOUND;
    /* The last human turn, up to the assistant's turn. */
    const char *s = prompt, *h;
    while ((h = strstr(s, "Human:")) != NULL) s = h + 6;
    const char *e = strstr(s, "Assistant:");
    size_t len = e ? (size_t)(e - s) : strlen(s);
    words_t local, *w = &local;
    words_split(s, len, w);
    task_prompt_t *p = &out->p;

    /* arithmetic: NUM OP NUM */
    for (int i = 0; i + 2 < w->n; i++) {
        int a, b, o = op_index(w->w[i + 1]);
        if (o >= 0 && word_is_num(w->w[i], &a) && word_is_num(w->w[i + 2], &b)) {
            p->kind = TASK_ARITH, p->a = a, p->b = b, p->op = o;
            return 0;
        }
    }
    /* naming: "name"/"tell" and a category word */
    int cat;
    if ((words_has(w, "name") || words_has(w, "tell")) && find_cat_word(w, &cat)) {
        p->kind = TASK_NAME, p->cat = cat;
        p->phr = words_has(w, "tell") ? 1 : words_has(w, "can") ? 2 : 0;
        return 0;
    }
    /* reply: an act word and an addressee */
    for (int i = 0; i < w->n; i++) {
        int a = act_of_word(w->w[i]);
        if (a < 0) continue;
        p->kind = TASK_REPLY, p->act = a, p->who = -1;
        for (int k = 0; k < w->n; k++)
            if (who_index(w->w[k]) >= 0) {
                p->who = who_index(w->w[k]);
                snprintf(out->who_word, WLEN, "%s", w->w[k]);
                return 0;
            }
        /* an unknown addressee: the word after "to", "thank(s)" or "wish", skipping "the" */
        for (int k = 0; k + 1 < w->n; k++) {
            const char *x = w->w[k];
            if (strcmp(x, "to") && strcmp(x, "thank") && strcmp(x, "thanks") && strcmp(x, "wish"))
                continue;
            int t = k + 1;
            if (strcmp(w->w[t], "the") == 0 && t + 1 < w->n) t++;
            snprintf(out->who_word, WLEN, "%s", w->w[t]);
            return 0;
        }
        break;
    }
    memset(p, 0, sizeof(*p));
    return RL_ENOTFOUND;
}

int task_prompt_parse(const char *prompt, task_prompt_t *p) {
    parsed_t pr;
    int rc = parse(prompt, &pr);
    if (rc == 0 && p) *p = pr.p;
    return rc;
}

/* ---- scoring ---- */

static float clamp01(float x) {
    return x < 0 ? 0 : x > 1 ? 1 : x;
}

static float score_polite(const words_t *c) {
    for (int i = 0; i < NELEM(rude_phrases); i++)
        if (words_has_phrase(c, rude_phrases[i])) return 0.0f;
    for (int i = 0; i < NELEM(polite_phrases); i++)
        if (words_has_phrase(c, polite_phrases[i])) return 1.0f;
    return 0.5f;
}

/* Reasonable length: up to CONCISE_LEN words; the score falls linearly to 0 at twice that, and
 * is scaled by the share of word pairs (bigrams) that do not repeat an earlier pair. */
#define CONCISE_LEN 12

static float score_concise(const words_t *c) {
    float len = c->total <= CONCISE_LEN
                    ? 1.0f
                    : clamp01(1.0f - (float)(c->total - CONCISE_LEN) / CONCISE_LEN);
    int nb = c->n - 1, rep = 0;
    for (int i = 1; i < c->n; i++)
        for (int j = 1; j < i; j++)
            if (strcmp(c->w[i], c->w[j]) == 0 && strcmp(c->w[i - 1], c->w[j - 1]) == 0) {
                rep++;
                break;
            }
    float fresh = nb > 0 ? 1.0f - (float)rep / (float)nb : 1.0f;
    return clamp01(len * fresh);
}

static void score_arith(const task_prompt_t *p, const words_t *c, float *correct, float *ontopic) {
    long r = p->op == 0 ? (long)p->a + p->b : p->op == 1 ? (long)p->a - p->b : (long)p->a * p->b;
    int ans = -1, any_num = 0, v;
    for (int i = 0; i < c->n; i++)
        if (word_is_num(c->w[i], &v)) {
            any_num = 1;
            ans = v; /* the last number, unless a number follows "is"/"equals" */
        }
    for (int i = c->n - 2; i >= 0; i--)
        if ((strcmp(c->w[i], "is") == 0 || strcmp(c->w[i], "equals") == 0) &&
            word_is_num(c->w[i + 1], &v)) {
            ans = v;
            break;
        }
    *correct = any_num && ans == r ? 1.0f : 0.0f;

    int foreign = 0, other_op = 0, other_sum = 0, subject = 0;
    for (int i = 0; i < c->n; i++) {
        const char *w = c->w[i];
        int o = op_index(w);
        if (o >= 0 && o != p->op) other_op = 1;
        if (o >= 0 && i > 0 && i + 1 < c->n) {
            int x, y;
            if (word_is_num(c->w[i - 1], &x) && word_is_num(c->w[i + 1], &y) &&
                (x != p->a || y != p->b || o != p->op))
                other_sum = 1;
        }
        int a = act_of_word(w);
        if (item_cat(w) >= 0 || who_index(w) >= 0 || (a >= 0 && a != ACT_THANK)) subject = 1;
    }
    int cat;
    if (find_cat_word(c, &cat)) subject = 1;
    foreign = other_op + other_sum + subject;
    *ontopic = clamp01((any_num ? 1.0f : 0.0f) - 0.5f * (float)foreign);
}

static void score_name(const task_prompt_t *p, const words_t *c, float *correct, float *ontopic) {
    int right = 0, wrong = 0, catword = 0, othercat = 0, num = 0, people = 0, v;
    for (int i = 0; i < c->n; i++) {
        const char *w = c->w[i];
        int ic = item_cat(w);
        if (ic == p->cat)
            right++;
        else if (ic >= 0)
            wrong++;
        for (int k = 0; k < NCAT; k++)
            if (strcmp(w, cats[k]) == 0) {
                if (k == p->cat)
                    catword = 1;
                else
                    othercat = 1;
            }
        if (word_is_num(w, &v) || op_index(w) >= 0) num = 1;
        int a = act_of_word(w);
        if (who_index(w) >= 0 || (a >= 0 && a != ACT_THANK)) people = 1;
    }
    *correct = right && !wrong ? 1.0f : right ? 0.5f : 0.0f;
    float rel = catword || right ? 1.0f : wrong ? 0.5f : 0.0f;
    *ontopic = clamp01(rel - 0.5f * (float)(othercat + num + people));
}

static void score_reply(const parsed_t *pp, const words_t *c, float *correct, float *ontopic) {
    const task_prompt_t *p = &pp->p;
    int named = 0, other_name = 0, act = 0, other_act = 0, num = 0, things = 0, v;
    for (int i = 0; i < c->n; i++) {
        const char *w = c->w[i];
        if (pp->who_word[0] && strcmp(w, pp->who_word) == 0)
            named = 1;
        else if (who_index(w) >= 0)
            other_name = 1;
        int a = act_of_word(w);
        if (a == p->act)
            act = 1;
        else if (a >= 0 && a != ACT_THANK)
            other_act = 1;
        if (word_is_num(w, &v) || op_index(w) >= 0) num = 1;
        if (item_cat(w) >= 0) things = 1;
        for (int k = 0; k < NCAT; k++)
            if (strcmp(w, cats[k]) == 0) things = 1;
    }
    /* "Thank you" / "thanks" counts as the thanking act; a thanks in another act does not make
     * the reply off-topic (it is politeness). */
    *correct = named && !other_name ? 1.0f : named ? 0.5f : 0.0f;
    float rel = act ? 1.0f : named ? 0.5f : 0.0f;
    *ontopic = clamp01(rel - 0.5f * (float)(other_act + num + things));
}

void task_score(const char *prompt, const char *completion, float scores[TASK_NCRIT]) {
    if (!completion) completion = "";
    const char *eot = strstr(completion, TASK_EOT);
    size_t clen = eot ? (size_t)(eot - completion) : strlen(completion);
    words_t c;
    words_split(completion, clen, &c);
    parsed_t pp;
    scores[TASK_POLITE] = score_polite(&c);
    scores[TASK_CONCISE] = score_concise(&c);
    if (parse(prompt, &pp) != 0) {
        scores[TASK_CORRECT] = scores[TASK_ONTOPIC] = 0.5f;
        return;
    }
    float *cr = &scores[TASK_CORRECT], *ot = &scores[TASK_ONTOPIC];
    switch (pp.p.kind) {
    case TASK_ARITH:
        score_arith(&pp.p, &c, cr, ot);
        break;
    case TASK_NAME:
        score_name(&pp.p, &c, cr, ot);
        break;
    default:
        score_reply(&pp, &c, cr, ot);
        break;
    }
}

double task_gold(const float scores[TASK_NCRIT]) {
    double g = 0;
    for (int k = 0; k < TASK_NCRIT; k++) g += (double)task_gold_weights[k] * (double)scores[k];
    return g < 0 ? 0 : g > 1 ? 1 : g;
}

double task_gold_text(const char *prompt, const char *completion) {
    float s[TASK_NCRIT];
    task_score(prompt, completion, s);
    return task_gold(s);
}

/* ---- responses ---- */

static void cap(char *dst, size_t n, const char *s) {
    snprintf(dst, n, "%s", s);
    if (dst[0]) dst[0] = (char)toupper((unsigned char)dst[0]);
}

static int good_core(const task_prompt_t *p, int variant, long answer, int item_cat_i, int item_i,
                     int who, char *buf, size_t n) {
    switch (p->kind) {
    case TASK_ARITH:
        if (variant == 0)
            return fmt(buf, n, " Sure! %d %s %d is %ld.", p->a, ops[p->op % 3], p->b, answer);
        return fmt(buf, n, " %d %s %d is %ld. Happy to help!", p->a, ops[p->op % 3], p->b, answer);
    case TASK_NAME: {
        const char *c = cats[p->cat % NCAT], *it = items[item_cat_i][item_i];
        char cit[WLEN];
        cap(cit, sizeof(cit), it);
        if (variant == 0) return fmt(buf, n, " Sure! Here is %s %s: %s.", article(c), c, it);
        return fmt(buf, n, " Of course! %s is %s %s.", cit, article(c), c);
    }
    default: {
        const char *v = who_voc[who % NWHO];
        static const char *const forms[NACT][2] = {
            {" Hello, %s! It is nice to meet you.", " Hi, %s! I am glad to see you."},
            {" Thank you, %s! You did great work.", " Thanks a lot, %s! We are glad you helped."},
            {" Goodbye, %s! Have a nice day.", " Bye, %s! I hope to see you soon."},
            {" Good luck, %s! I hope it goes well.", " Best of luck, %s! You will do great."}};
        return fmt(buf, n, forms[p->act % NACT][variant & 1], v);
    }
    }
}

static long arith_answer(const task_prompt_t *p) {
    return p->op == 0 ? (long)p->a + p->b : p->op == 1 ? (long)p->a - p->b : (long)p->a * p->b;
}

int task_prompt_reference(const task_prompt_t *p, char *buf, size_t n) {
    if (p->kind != TASK_ARITH) return RL_ENOTFOUND;
    return fmt(buf, n, "%ld", arith_answer(p));
}

int task_response(const task_prompt_t *p, int style, uint64_t seed, uint64_t idx, char *buf,
                  size_t n) {
    uint32_t w[4];
    rng_block(seed, STREAM_RESP, idx, w);
    int variant = (int)(w[0] & 1);
    int item = (int)(w[1] % NITEM);
    int who = p->kind == TASK_REPLY ? p->who : 0;
    if (who < 0) who = 0;
    long r = p->kind == TASK_ARITH ? arith_answer(p) : 0;
    char core[160];
    int rc;
    switch (style) {
    case TASK_GOOD:
        return good_core(p, variant, r, p->cat % NCAT, item, who, buf, n);
    case TASK_WRONG: {
        if (p->kind == TASK_ARITH) {
            long d = 1 + (long)(w[2] % 3);
            long wr = (w[3] & 1) && r - d >= 0 ? r - d : r + d;
            return good_core(p, variant, wr, 0, 0, 0, buf, n);
        }
        if (p->kind == TASK_NAME) {
            int oc = (p->cat % NCAT + 1 + (int)(w[2] % (NCAT - 1))) % NCAT;
            return good_core(p, variant, 0, oc, item, 0, buf, n);
        }
        int ow = (who + 1 + (int)(w[2] % (NWHO - 1))) % NWHO;
        return good_core(p, variant, 0, 0, 0, ow, buf, n);
    }
    case TASK_RUDE: {
        const char *v = who_voc[who % NWHO];
        char cit[WLEN];
        cap(cit, sizeof(cit), items[p->cat % NCAT][item]);
        const char *c = cats[p->cat % NCAT];
        if (p->kind == TASK_ARITH)
            return variant ? fmt(buf, n, " Whatever. It is %ld. Go away.", r)
                           : fmt(buf, n, " Ugh, %d %s %d is %ld. Stop asking me.", p->a,
                                 ops[p->op % 3], p->b, r);
        if (p->kind == TASK_NAME)
            return variant ? fmt(buf, n, " Whatever. %s. Stop asking me.", cit)
                           : fmt(buf, n, " Ugh, fine. %s is %s %s. Go away.", cit, article(c), c);
        static const char *const forms[NACT][2] = {
            {" Ugh. Hi, %s. Now go away.", " Whatever. Hello, %s. Stop asking me."},
            {" Whatever. Thanks, %s, I guess.", " Ugh, fine. Thank you, %s. Go away."},
            {" Bye, %s. Now go away.", " Ugh. Goodbye, %s. Whatever."},
            {" Good luck, %s. Not my problem.", " Ugh, fine. Good luck, %s. Go away."}};
        return fmt(buf, n, forms[p->act % NACT][variant], v);
    }
    case TASK_RAMBLE: {
        rc = good_core(p, 0, r, p->cat % NCAT, item, who, core, sizeof(core));
        if (rc < 0) return rc;
        if (variant)
            return fmt(buf, n,
                       " Well, let me think about that for a long time before I answer "
                       "you.%s",
                       core);
        char tail[96];
        if (p->kind == TASK_ARITH)
            snprintf(tail, sizeof(tail), " It is %ld.", r);
        else if (p->kind == TASK_NAME)
            snprintf(tail, sizeof(tail), " It is %s %s.", article(cats[p->cat % NCAT]),
                     cats[p->cat % NCAT]);
        else
            snprintf(tail, sizeof(tail), " %s, %s!",
                     p->act == ACT_THANK  ? "Thanks"
                     : p->act == ACT_BYE  ? "Bye"
                     : p->act == ACT_LUCK ? "Good luck"
                                          : "Hello",
                     who_voc[who % NWHO]);
        return fmt(buf, n, "%s%s%s%s%s", core, tail, tail, tail, tail);
    }
    case TASK_OFFTOPIC: {
        task_prompt_t q;
        memset(&q, 0, sizeof(q));
        q.kind = (p->kind + 1 + (int)(w[2] % (TASK_NKIND - 1))) % TASK_NKIND;
        uint32_t x = w[3];
        q.a = (int)(x % (MAXN + 1)), q.b = (int)((x >> 8) % (MAXN + 1));
        q.op = 0;
        q.cat = (int)((x >> 16) % NCAT);
        q.act = (int)((x >> 20) % NACT);
        q.who = (int)((x >> 24) % NWHO);
        return good_core(&q, variant, q.kind == TASK_ARITH ? arith_answer(&q) : 0, q.cat, item,
                         q.who, buf, n);
    }
    }
    return rl_fail(RL_EINVAL, "task: unknown response style %d", style);
}

/* ---- SFT sets ---- */

void task_mix_even(task_mix_t *m, float bad_frac) {
    if (!(bad_frac >= 0)) bad_frac = 0;
    if (bad_frac > 1) bad_frac = 1;
    m->frac[TASK_GOOD] = 1.0f - bad_frac;
    for (int s = 1; s < TASK_NSTYLE; s++) m->frac[s] = bad_frac / (TASK_NSTYLE - 1);
}

/* Exact counts of each style in a set of n (largest remainders). */
static void mix_counts(const task_mix_t *m, long n, long cnt[TASK_NSTYLE]) {
    double sum = 0, rem[TASK_NSTYLE];
    for (int s = 0; s < TASK_NSTYLE; s++) sum += m->frac[s] > 0 ? m->frac[s] : 0;
    long used = 0;
    for (int s = 0; s < TASK_NSTYLE; s++) {
        double f = sum > 0 && m->frac[s] > 0 ? m->frac[s] / sum : (s == TASK_GOOD && sum <= 0);
        double x = f * (double)n;
        cnt[s] = (long)x;
        rem[s] = x - (double)cnt[s];
        used += cnt[s];
    }
    while (used < n) {
        int best = 0;
        for (int s = 1; s < TASK_NSTYLE; s++)
            if (rem[s] > rem[best]) best = s;
        cnt[best]++;
        rem[best] = -1;
        used++;
    }
}

int task_sft_style(const task_mix_t *m, uint64_t seed, long n, long i) {
    if (i < 0 || i >= n) return -1;
    long cnt[TASK_NSTYLE];
    mix_counts(m, n, cnt);
    long slot = (long)perm_at(seed, STREAM_STYLE, (uint64_t)n, (uint64_t)i);
    for (int s = 0; s < TASK_NSTYLE; s++) {
        if (slot < cnt[s]) return s;
        slot -= cnt[s];
    }
    return TASK_GOOD;
}

int task_sft_at(const task_mix_t *m, uint64_t seed, long n, long i, const char *tmpl, char *prompt,
                size_t np, char *completion, size_t nc, int *style) {
    int st = task_sft_style(m, seed, n, i);
    if (st < 0) return rl_fail(RL_EINVAL, "task: demonstration %ld of %ld", i, n);
    task_prompt_t p;
    task_prompt_at(seed, TASK_SPLIT_TRAIN, i, &p);
    char bare[128];
    int rc = task_prompt_text(&p, bare, sizeof(bare));
    if (rc < 0) return rc;
    if ((rc = task_render(tmpl, bare, prompt, np)) < 0) return rc;
    if ((rc = task_response(&p, st, seed, (uint64_t)i, completion, nc)) < 0) return rc;
    if (style) *style = st;
    return 0;
}
