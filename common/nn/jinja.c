/*
 * jinja.c - a Jinja-subset renderer for chat templates (see jinja.h).
 *
 * Three phases: the lexer turns the template into text and tag tokens, applying whitespace
 * control, trim_blocks and lstrip_blocks as it goes (so later phases never see them); the parser
 * builds a tree of statements and expressions (Jinja2's grammar and precedence: filters and
 * tests bind tighter than arithmetic, `~` tighter than + and -, `not` looser than comparisons);
 * the renderer walks the tree over jansson values. Every value is a json_t reference; NULL is
 * Jinja's undefined. Scopes are JSON objects: a for loop's body gets a scope of its own, so a
 * variable set inside it is gone after the loop, which is why templates carry state across
 * iterations in a namespace() (a JSON object shared by reference, like Jinja's).
 */
#include "nn/jinja.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/err.h"

#define JJ_MAX_DEPTH 200 /* nesting of expressions and statements, and loop iterations x depth */

/* ---- output buffer ------------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf_t;

static int sb_add(sbuf_t *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return rl_fail(RL_ENOMEM, "chat template: out of memory");
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

static int sb_str(sbuf_t *b, const char *s) {
    return sb_add(b, s, strlen(s));
}

/* ---- lexer --------------------------------------------------------------------------------- */

enum { T_TEXT, T_VBEGIN, T_VEND, T_BBEGIN, T_BEND, T_NAME, T_STR, T_INT, T_FLOAT, T_OP, T_EOF };

typedef struct {
    int type, line;
    char *s; /* text, name, string value or operator */
    size_t n;
    long long i;
    double f;
} jtok_t;

typedef struct {
    jtok_t *p;
    size_t n, cap;
} jtoks_t;

static int tok_push(jtoks_t *v, int type, int line, const char *s, size_t n) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 256;
        jtok_t *p = realloc(v->p, cap * sizeof *p);
        if (!p) return rl_fail(RL_ENOMEM, "chat template: out of memory");
        v->p = p;
        v->cap = cap;
    }
    jtok_t *t = &v->p[v->n];
    memset(t, 0, sizeof *t);
    t->type = type;
    t->line = line;
    if (s) {
        if (!(t->s = malloc(n + 1))) return rl_fail(RL_ENOMEM, "chat template: out of memory");
        memcpy(t->s, s, n);
        t->s[n] = '\0';
        t->n = n;
    }
    v->n++;
    return 0;
}

static void toks_free(jtoks_t *v) {
    for (size_t i = 0; i < v->n; i++) free(v->p[i].s);
    free(v->p);
}

static int is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int is_name_start(char c) {
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

static int count_lines(const char *s, size_t a, size_t b) {
    int n = 0;
    for (size_t i = a; i < b; i++) n += s[i] == '\n';
    return n;
}

/* A string literal starting at s[*i] (the quote); Python's escapes. */
static int lex_string(const char *s, size_t n, size_t *i, int line, jtoks_t *tv) {
    char q = s[(*i)++];
    sbuf_t b = {0};
    int rc = 0;
    while (*i < n && s[*i] != q && rc == 0) {
        char c = s[(*i)++];
        if (c == '\\' && *i < n) {
            char e = s[(*i)++];
            switch (e) {
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            case '0':
                c = '\0';
                break;
            case '\\':
            case '\'':
            case '"':
                c = e;
                break;
            default:
                rc = sb_add(&b, "\\", 1);
                c = e; /* unknown escapes stay as written */
            }
        }
        if (rc == 0) rc = sb_add(&b, &c, 1);
    }
    if (rc == 0 && *i >= n)
        rc = rl_fail(RL_EFORMAT, "chat template line %d: unterminated string", line);
    if (rc == 0) {
        (*i)++;
        rc = tok_push(tv, T_STR, line, b.p ? b.p : "", b.n);
    }
    free(b.p);
    return rc;
}

/* The tokens inside a tag, from s[*i] up to and including its close ("}}" or "%}"). Sets *minus
 * if the close is "-}}" / "-%}". */
static int lex_tag(const char *s, size_t n, size_t *i, int *line, char close, jtoks_t *tv,
                   int *minus) {
    static const char *const ops2[] = {"==", "!=", "<=", ">=", "//", "**"};
    int rc, depth = 0; /* open brackets: "}}" inside {'a': {'b': 1}} does not close the tag */
    for (;;) {
        while (*i < n && is_ws(s[*i])) *line += s[(*i)++] == '\n';
        if (*i >= n) return rl_fail(RL_EFORMAT, "chat template line %d: unclosed tag", *line);
        char c = s[*i];
        *minus = c == '-' && *i + 2 < n && s[*i + 1] == close && s[*i + 2] == '}';
        if (depth == 0 && (*minus || (c == close && *i + 1 < n && s[*i + 1] == '}'))) {
            *i += *minus ? 3 : 2;
            return tok_push(tv, close == '}' ? T_VEND : T_BEND, *line, NULL, 0);
        }
        if (c == '+' && *i + 2 < n && s[*i + 1] == close && s[*i + 2] == '}') {
            (*i)++; /* "+%}": no whitespace control; trim_blocks still applies after it */
            continue;
        }
        if (is_name_start(c)) {
            size_t a = (*i)++;
            while (*i < n && (is_name_start(s[*i]) || is_digit(s[*i]))) (*i)++;
            rc = tok_push(tv, T_NAME, *line, s + a, *i - a);
        } else if (is_digit(c)) {
            size_t a = *i;
            while (*i < n && is_digit(s[*i])) (*i)++;
            int real = *i + 1 < n && s[*i] == '.' && is_digit(s[*i + 1]);
            if (real)
                for ((*i)++; *i < n && is_digit(s[*i]);) (*i)++;
            size_t e = *i + 1 + (*i + 1 < n && (s[*i + 1] == '+' || s[*i + 1] == '-'));
            if (*i < n && (s[*i] == 'e' || s[*i] == 'E') && e < n && is_digit(s[e])) { /* 1e-3 */
                real = 1;
                for (*i = e; *i < n && is_digit(s[*i]);) (*i)++;
            }
            rc = tok_push(tv, real ? T_FLOAT : T_INT, *line, s + a, *i - a);
            if (rc == 0) {
                tv->p[tv->n - 1].i = strtoll(tv->p[tv->n - 1].s, NULL, 10);
                tv->p[tv->n - 1].f = strtod(tv->p[tv->n - 1].s, NULL);
            }
        } else if (c == '"' || c == '\'') {
            rc = lex_string(s, n, i, *line, tv);
        } else {
            size_t k = 1;
            for (size_t j = 0; j < sizeof ops2 / sizeof *ops2; j++)
                if (*i + 1 < n && s[*i] == ops2[j][0] && s[*i + 1] == ops2[j][1]) k = 2;
            if (k == 1 && !strchr("+-*/%~|.,:()[]{}<>=", c))
                return rl_fail(RL_EFORMAT, "chat template line %d: unexpected character '%c'",
                               *line, c);
            if (k == 1 && strchr("([{", c)) depth++;
            if (k == 1 && strchr(")]}", c) && depth > 0) depth--;
            rc = tok_push(tv, T_OP, *line, s + *i, k);
            *i += k;
        }
        if (rc < 0) return rc;
    }
}

/*
 * Template source -> tokens. Text runs become T_TEXT with Jinja's whitespace rules applied:
 * "{%-" / "{{-" / "{#-" strip the whitespace before, "-%}" / "-}}" / "-#}" the whitespace after;
 * trim_blocks drops the first newline after a block or comment tag; lstrip_blocks drops the
 * spaces and tabs between the start of a line and a block or comment tag.
 */
static int lex(const char *src, jtoks_t *tv) {
    size_t n = strlen(src), i = 0;
    int line = 1, lstrip_next = 0, rc;
    if (n && src[n - 1] == '\n') n--; /* keep_trailing_newline=False */
    for (;;) {
        size_t p = i;
        while (p + 1 < n && !(src[p] == '{' && strchr("{%#", src[p + 1]))) p++;
        if (p + 1 >= n) p = n;
        size_t a = i, b = p;
        if (lstrip_next)
            while (a < b && is_ws(src[a])) a++;
        lstrip_next = 0;
        char kind = p < n ? src[p + 1] : 0;
        int minus = p + 2 < n && src[p + 2] == '-', plus = p + 2 < n && src[p + 2] == '+';
        if (p < n && minus) {
            while (b > a && is_ws(src[b - 1])) b--;
        } else if (p < n && kind != '{' && !plus) {
            size_t j = b;
            while (j > a && (src[j - 1] == ' ' || src[j - 1] == '\t')) j--;
            if (j == 0 || src[j - 1] == '\n') b = j;
        }
        if (b > a && (rc = tok_push(tv, T_TEXT, line, src + a, b - a)) < 0) return rc;
        line += count_lines(src, i, p);
        if (p >= n) break;
        i = p + 2 + (minus || plus);
        int close_minus = 0;
        if (kind == '#') {
            const char *e = strstr(src + i, "#}");
            if (!e || (size_t)(e - src) > n)
                return rl_fail(RL_EFORMAT, "chat template line %d: unclosed comment", line);
            size_t end = (size_t)(e - src);
            close_minus = end > i && src[end - 1] == '-';
            line += count_lines(src, i, end);
            i = end + 2;
        } else {
            if ((rc = tok_push(tv, kind == '{' ? T_VBEGIN : T_BBEGIN, line, NULL, 0)) < 0)
                return rc;
            if ((rc = lex_tag(src, n, &i, &line, kind == '{' ? '}' : '%', tv, &close_minus)) < 0)
                return rc;
        }
        if (close_minus)
            lstrip_next = 1;
        else if (kind != '{' && i < n && src[i] == '\n') /* trim_blocks */
            i++, line++;
    }
    return tok_push(tv, T_EOF, line, NULL, 0);
}

/* ---- syntax tree --------------------------------------------------------------------------- */

enum {
    N_TEXT,
    N_OUT,
    N_IF,
    N_FOR,
    N_SET,
    N_SETBLOCK,
    N_BREAK,
    N_CONTINUE,
    N_BLOCK,
    E_LIT,
    E_NAME,
    E_LIST,
    E_TUPLE,
    E_DICT,
    E_ATTR,
    E_INDEX,
    E_SLICE,
    E_CALL,
    E_FILTER,
    E_TEST,
    E_NOT,
    E_NEG,
    E_AND,
    E_OR,
    E_BIN,
    E_COND,
    E_KW
};

enum {
    OP_EQ,
    OP_NE,
    OP_LT,
    OP_GT,
    OP_LE,
    OP_GE,
    OP_IN,
    OP_NOTIN,
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_FDIV,
    OP_MOD,
    OP_POW,
    OP_CAT
};

typedef struct node node_t;

typedef struct {
    node_t **p;
    size_t n, cap;
} nodes_t;

struct node {
    int kind, line, op;
    char *name; /* borrowed from a token */
    json_t *lit;
    node_t *a, *b, *c, *d;
    nodes_t kids, alt; /* body / arguments / items; else body */
};

typedef struct {
    jtoks_t tv;
    size_t pos;
    nodes_t all; /* every node, for freeing */
    int depth;
} parser_t;

static int nodes_push(nodes_t *v, node_t *x) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 8;
        node_t **p = realloc(v->p, cap * sizeof *p);
        if (!p) return rl_fail(RL_ENOMEM, "chat template: out of memory");
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = x;
    return 0;
}

static node_t *node_new(parser_t *ps, int kind, int line) {
    node_t *x = calloc(1, sizeof *x);
    if (!x || nodes_push(&ps->all, x) < 0) {
        free(x);
        rl_fail(RL_ENOMEM, "chat template: out of memory");
        return NULL;
    }
    x->kind = kind;
    x->line = line;
    return x;
}

static void parser_free(parser_t *ps) {
    for (size_t i = 0; i < ps->all.n; i++) {
        node_t *x = ps->all.p[i];
        json_decref(x->lit);
        free(x->kids.p);
        free(x->alt.p);
        free(x);
    }
    free(ps->all.p);
    toks_free(&ps->tv);
}

static jtok_t *peek(parser_t *ps) {
    return &ps->tv.p[ps->pos];
}

static int is_op(const jtok_t *t, const char *op) {
    return t->type == T_OP && !strcmp(t->s, op);
}

static int is_name(const jtok_t *t, const char *name) {
    return t->type == T_NAME && !strcmp(t->s, name);
}

static int syntax(parser_t *ps, const char *what) {
    jtok_t *t = peek(ps);
    const char *got = t->type == T_EOF    ? "the end of the template"
                      : t->type == T_VEND ? "}}"
                      : t->type == T_BEND ? "%}"
                      : t->s              ? t->s
                                          : "a tag";
    return rl_fail(RL_EFORMAT, "chat template line %d: expected %s, found '%.40s'", t->line, what,
                   got);
}

static int expect_op(parser_t *ps, const char *op) {
    if (!is_op(peek(ps), op)) {
        char what[16];
        snprintf(what, sizeof what, "'%s'", op);
        return syntax(ps, what);
    }
    ps->pos++;
    return 0;
}

/* Every parse function returns the node, or NULL after rl_fail. */
static node_t *parse_expr(parser_t *ps);
static node_t *parse_or(parser_t *ps);
static node_t *parse_unary(parser_t *ps, int with_filter);

/* Call arguments after "(": expressions and name=expr, up to ")". */
static int parse_args(parser_t *ps, nodes_t *args) {
    while (!is_op(peek(ps), ")")) {
        node_t *v;
        jtok_t *t = peek(ps);
        if (t->type == T_NAME && is_op(&ps->tv.p[ps->pos + 1], "=")) {
            ps->pos += 2;
            if (!(v = node_new(ps, E_KW, t->line))) return RL_ENOMEM;
            v->name = t->s;
            if (!(v->a = parse_expr(ps))) return RL_EFORMAT;
        } else if (!(v = parse_expr(ps))) {
            return RL_EFORMAT;
        }
        int rc = nodes_push(args, v);
        if (rc < 0) return rc;
        if (is_op(peek(ps), ","))
            ps->pos++;
        else if (!is_op(peek(ps), ")"))
            return syntax(ps, "',' or ')'");
    }
    ps->pos++;
    return 0;
}

static node_t *lit_node(parser_t *ps, json_t *v, int line) {
    node_t *x = v ? node_new(ps, E_LIT, line) : NULL;
    if (!v) rl_fail(RL_ENOMEM, "chat template: out of memory");
    if (!x) {
        json_decref(v);
        return NULL;
    }
    x->lit = v;
    return x;
}

static node_t *parse_primary(parser_t *ps) {
    jtok_t *t = peek(ps);
    node_t *x;
    if (t->type == T_STR) {
        sbuf_t b = {0};
        while (peek(ps)->type == T_STR) { /* adjacent literals concatenate */
            if (sb_add(&b, peek(ps)->s, peek(ps)->n) < 0) {
                free(b.p);
                return NULL;
            }
            ps->pos++;
        }
        x = lit_node(ps, json_stringn(b.p ? b.p : "", b.n), t->line);
        free(b.p);
        return x;
    }
    if (t->type == T_INT || t->type == T_FLOAT) {
        ps->pos++;
        return lit_node(ps, t->type == T_INT ? json_integer(t->i) : json_real(t->f), t->line);
    }
    if (t->type == T_NAME) {
        ps->pos++;
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True"))
            return lit_node(ps, json_true(), t->line);
        if (!strcmp(t->s, "false") || !strcmp(t->s, "False"))
            return lit_node(ps, json_false(), t->line);
        if (!strcmp(t->s, "none") || !strcmp(t->s, "None"))
            return lit_node(ps, json_null(), t->line);
        if (!(x = node_new(ps, E_NAME, t->line))) return NULL;
        x->name = t->s;
        return x;
    }
    if (is_op(t, "(")) {
        ps->pos++;
        node_t *first = is_op(peek(ps), ")") ? NULL : parse_expr(ps);
        if (!first && !is_op(peek(ps), ")")) return NULL;
        if (first && is_op(peek(ps), ")")) {
            ps->pos++;
            return first;
        }
        if (!(x = node_new(ps, E_TUPLE, t->line))) return NULL;
        if (first && nodes_push(&x->kids, first) < 0) return NULL;
        while (is_op(peek(ps), ",")) {
            ps->pos++;
            if (is_op(peek(ps), ")")) break;
            node_t *v = parse_expr(ps);
            if (!v || nodes_push(&x->kids, v) < 0) return NULL;
        }
        return expect_op(ps, ")") < 0 ? NULL : x;
    }
    if (is_op(t, "[") || is_op(t, "{")) {
        int dict = is_op(t, "{");
        const char *close = dict ? "}" : "]";
        ps->pos++;
        if (!(x = node_new(ps, dict ? E_DICT : E_LIST, t->line))) return NULL;
        while (!is_op(peek(ps), close)) {
            node_t *v = parse_expr(ps);
            if (!v || nodes_push(&x->kids, v) < 0) return NULL;
            if (dict) {
                if (expect_op(ps, ":") < 0 || !(v = parse_expr(ps)) || nodes_push(&x->kids, v) < 0)
                    return NULL;
            }
            if (is_op(peek(ps), ","))
                ps->pos++;
            else if (!is_op(peek(ps), close))
                return syntax(ps, dict ? "',' or '}'" : "',' or ']'"), NULL;
        }
        ps->pos++;
        return x;
    }
    syntax(ps, "an expression");
    return NULL;
}

/* .name, [index], [a:b:c], (args) */
static node_t *parse_postfix(parser_t *ps, node_t *x) {
    for (;;) {
        jtok_t *t = peek(ps);
        node_t *y;
        if (is_op(t, ".")) {
            ps->pos++;
            jtok_t *nm = peek(ps);
            if (nm->type == T_INT) { /* x.0 */
                ps->pos++;
                if (!(y = node_new(ps, E_INDEX, t->line))) return NULL;
                if (!(y->b = lit_node(ps, json_integer(nm->i), t->line))) return NULL;
            } else {
                if (nm->type != T_NAME) return syntax(ps, "an attribute name"), NULL;
                ps->pos++;
                if (!(y = node_new(ps, E_ATTR, t->line))) return NULL;
                y->name = nm->s;
            }
            y->a = x;
            x = y;
        } else if (is_op(t, "[")) {
            ps->pos++;
            node_t *part[3] = {NULL, NULL, NULL};
            int k = 0;
            for (;;) {
                if (!is_op(peek(ps), ":") && !is_op(peek(ps), "]") && !(part[k] = parse_expr(ps)))
                    return NULL;
                if (is_op(peek(ps), ":") && k < 2) {
                    ps->pos++;
                    k++;
                    continue;
                }
                break;
            }
            if (expect_op(ps, "]") < 0) return NULL;
            if (k == 0 && !part[0]) return syntax(ps, "an index"), NULL;
            if (!(y = node_new(ps, k ? E_SLICE : E_INDEX, t->line))) return NULL;
            y->a = x;
            y->b = part[0];
            y->c = part[1];
            y->d = part[2];
            x = y;
        } else if (is_op(t, "(")) {
            ps->pos++;
            if (!(y = node_new(ps, E_CALL, t->line))) return NULL;
            y->a = x;
            if (parse_args(ps, &y->kids) < 0) return NULL;
            x = y;
        } else {
            return x;
        }
    }
}

/* |filter(args) and "is [not] test(args)" */
static node_t *parse_filters(parser_t *ps, node_t *x) {
    for (;;) {
        jtok_t *t = peek(ps);
        if (is_op(t, "|") || is_name(t, "is")) {
            int test = is_name(t, "is");
            ps->pos++;
            node_t *y = node_new(ps, test ? E_TEST : E_FILTER, t->line);
            if (!y) return NULL;
            if (test && is_name(peek(ps), "not")) {
                y->op = 1;
                ps->pos++;
            }
            jtok_t *nm = peek(ps);
            if (nm->type != T_NAME) return syntax(ps, test ? "a test name" : "a filter name"), NULL;
            ps->pos++;
            y->name = nm->s;
            y->a = x;
            if (is_op(peek(ps), "(")) {
                ps->pos++;
                if (parse_args(ps, &y->kids) < 0) return NULL;
            } else if (test && (peek(ps)->type == T_STR || peek(ps)->type == T_INT ||
                                peek(ps)->type == T_FLOAT)) { /* "is equalto 3" */
                node_t *arg = parse_primary(ps);
                if (!arg || nodes_push(&y->kids, arg) < 0) return NULL;
            }
            x = y;
        } else {
            return x;
        }
    }
}

static node_t *parse_unary(parser_t *ps, int with_filter) {
    jtok_t *t = peek(ps);
    node_t *x;
    if (++ps->depth > JJ_MAX_DEPTH) {
        rl_fail(RL_EFORMAT, "chat template line %d: expression nested too deeply", t->line);
        return NULL;
    }
    if (is_op(t, "-") || is_op(t, "+")) {
        ps->pos++;
        node_t *v = parse_unary(ps, 0);
        if (!v) return NULL;
        if (is_op(t, "+")) {
            x = v;
        } else {
            if (!(x = node_new(ps, E_NEG, t->line))) return NULL;
            x->a = v;
        }
    } else {
        if (!(x = parse_primary(ps)) || !(x = parse_postfix(ps, x))) return NULL;
    }
    ps->depth--;
    return with_filter ? parse_filters(ps, x) : x;
}

static node_t *binary(parser_t *ps, int kind, int op, node_t *a, node_t *b, int line) {
    node_t *x = a && b ? node_new(ps, kind, line) : NULL;
    if (x) {
        x->op = op;
        x->a = a;
        x->b = b;
    }
    return x;
}

static node_t *parse_pow(parser_t *ps) {
    node_t *x = parse_unary(ps, 1);
    while (x && is_op(peek(ps), "**")) {
        int line = peek(ps)->line;
        ps->pos++;
        x = binary(ps, E_BIN, OP_POW, x, parse_unary(ps, 1), line);
    }
    return x;
}

static node_t *parse_math2(parser_t *ps) {
    static const char *const ops[] = {"*", "/", "//", "%"};
    static const int codes[] = {OP_MUL, OP_DIV, OP_FDIV, OP_MOD};
    node_t *x = parse_pow(ps);
    for (int k = 0; x && k < 4;) {
        if (!is_op(peek(ps), ops[k])) {
            k++;
            continue;
        }
        int line = peek(ps)->line;
        ps->pos++;
        x = binary(ps, E_BIN, codes[k], x, parse_pow(ps), line);
        k = 0;
    }
    return x;
}

static node_t *parse_concat(parser_t *ps) {
    node_t *x = parse_math2(ps);
    while (x && is_op(peek(ps), "~")) {
        int line = peek(ps)->line;
        ps->pos++;
        x = binary(ps, E_BIN, OP_CAT, x, parse_math2(ps), line);
    }
    return x;
}

static node_t *parse_math1(parser_t *ps) {
    node_t *x = parse_concat(ps);
    while (x && (is_op(peek(ps), "+") || is_op(peek(ps), "-"))) {
        int op = is_op(peek(ps), "+") ? OP_ADD : OP_SUB, line = peek(ps)->line;
        ps->pos++;
        x = binary(ps, E_BIN, op, x, parse_concat(ps), line);
    }
    return x;
}

static node_t *parse_compare(parser_t *ps) {
    static const char *const ops[] = {"==", "!=", "<", ">", "<=", ">="};
    node_t *x = parse_math1(ps);
    while (x) {
        jtok_t *t = peek(ps);
        int op = -1;
        for (int k = 0; k < 6; k++)
            if (is_op(t, ops[k])) op = k; /* OP_EQ.. OP_GE in the same order */
        if (is_name(t, "in")) op = OP_IN;
        if (is_name(t, "not") && is_name(&ps->tv.p[ps->pos + 1], "in")) {
            op = OP_NOTIN;
            ps->pos++;
        }
        if (op < 0) break;
        ps->pos++;
        x = binary(ps, E_BIN, op, x, parse_math1(ps), t->line);
    }
    return x;
}

static node_t *parse_not(parser_t *ps) {
    if (is_name(peek(ps), "not")) {
        int line = peek(ps)->line;
        ps->pos++;
        node_t *v = parse_not(ps), *x = v ? node_new(ps, E_NOT, line) : NULL;
        if (x) x->a = v;
        return x;
    }
    return parse_compare(ps);
}

static node_t *parse_and(parser_t *ps) {
    node_t *x = parse_not(ps);
    while (x && is_name(peek(ps), "and")) {
        int line = peek(ps)->line;
        ps->pos++;
        x = binary(ps, E_AND, 0, x, parse_not(ps), line);
    }
    return x;
}

static node_t *parse_or(parser_t *ps) {
    node_t *x = parse_and(ps);
    while (x && is_name(peek(ps), "or")) {
        int line = peek(ps)->line;
        ps->pos++;
        x = binary(ps, E_OR, 0, x, parse_and(ps), line);
    }
    return x;
}

/* or-expression [if or-expression [else expression]] */
static node_t *parse_expr(parser_t *ps) {
    node_t *x = parse_or(ps);
    if (x && is_name(peek(ps), "if")) {
        int line = peek(ps)->line;
        ps->pos++;
        node_t *y = node_new(ps, E_COND, line);
        if (!y || !(y->b = parse_or(ps))) return NULL;
        y->a = x;
        if (is_name(peek(ps), "else")) {
            ps->pos++;
            if (!(y->c = parse_expr(ps))) return NULL;
        }
        x = y;
    }
    return x;
}

/* ---- statements ---------------------------------------------------------------------------- */

static int expect_bend(parser_t *ps) {
    if (peek(ps)->type != T_BEND) return syntax(ps, "'%}'");
    ps->pos++;
    return 0;
}

/*
 * Statements into body until a block tag whose keyword is in stop (NULL-terminated; NULL for
 * the top level, which ends at EOF). *ended is that keyword (a token's string), and the parser
 * stands after it, inside the tag.
 */
static int parse_body(parser_t *ps, nodes_t *body, const char *const *stop, const char **ended);

static int parse_target(parser_t *ps, node_t **out) {
    jtok_t *t = peek(ps);
    if (t->type != T_NAME) return syntax(ps, "a variable name");
    node_t *x = node_new(ps, E_NAME, t->line);
    if (!x) return RL_ENOMEM;
    x->name = t->s;
    ps->pos++;
    if (is_op(peek(ps), ".")) { /* ns.attr */
        jtok_t *nm = &ps->tv.p[ps->pos + 1];
        if (nm->type != T_NAME) return syntax(ps, "an attribute name");
        node_t *y = node_new(ps, E_ATTR, t->line);
        if (!y) return RL_ENOMEM;
        y->a = x;
        y->name = nm->s;
        ps->pos += 2;
        x = y;
    }
    *out = x;
    return 0;
}

static int parse_if(parser_t *ps, node_t *x) {
    static const char *const stop[] = {"elif", "else", "endif", NULL};
    const char *ended;
    int rc;
    if (!(x->a = parse_expr(ps)) || (rc = expect_bend(ps)) < 0) return RL_EFORMAT;
    if ((rc = parse_body(ps, &x->kids, stop, &ended)) < 0) return rc;
    if (!strcmp(ended, "elif")) {
        node_t *y = node_new(ps, N_IF, peek(ps)->line);
        if (!y || nodes_push(&x->alt, y) < 0) return RL_ENOMEM;
        return parse_if(ps, y);
    }
    if (!strcmp(ended, "else")) {
        static const char *const stop2[] = {"endif", NULL};
        if ((rc = expect_bend(ps)) < 0 || (rc = parse_body(ps, &x->alt, stop2, &ended)) < 0)
            return rc;
    }
    return expect_bend(ps);
}

static int parse_for(parser_t *ps, node_t *x) {
    static const char *const stop[] = {"else", "endfor", NULL};
    const char *ended;
    int rc;
    node_t *tgt = node_new(ps, E_TUPLE, peek(ps)->line);
    if (!tgt) return RL_ENOMEM;
    for (;;) {
        jtok_t *t = peek(ps);
        if (t->type != T_NAME) return syntax(ps, "a loop variable");
        node_t *v = node_new(ps, E_NAME, t->line);
        if (!v || nodes_push(&tgt->kids, v) < 0) return RL_ENOMEM;
        v->name = t->s;
        ps->pos++;
        if (!is_op(peek(ps), ",")) break;
        ps->pos++;
    }
    x->a = tgt;
    if (!is_name(peek(ps), "in")) return syntax(ps, "'in'");
    ps->pos++;
    if (!(x->b = parse_or(ps))) return RL_EFORMAT;
    if (is_name(peek(ps), "if")) {
        ps->pos++;
        if (!(x->c = parse_or(ps))) return RL_EFORMAT;
    }
    if ((rc = expect_bend(ps)) < 0 || (rc = parse_body(ps, &x->kids, stop, &ended)) < 0) return rc;
    if (!strcmp(ended, "else")) {
        static const char *const stop2[] = {"endfor", NULL};
        if ((rc = expect_bend(ps)) < 0 || (rc = parse_body(ps, &x->alt, stop2, &ended)) < 0)
            return rc;
    }
    return expect_bend(ps);
}

static int parse_stmt(parser_t *ps, jtok_t *kw, nodes_t *body) {
    int rc;
    node_t *x;
    const char *k = kw->s, *ended;
    if (!strcmp(k, "if") || !strcmp(k, "for")) {
        if (!(x = node_new(ps, !strcmp(k, "if") ? N_IF : N_FOR, kw->line))) return RL_ENOMEM;
        if (++ps->depth > JJ_MAX_DEPTH)
            return rl_fail(RL_EFORMAT, "chat template line %d: blocks nested too deeply", kw->line);
        rc = x->kind == N_IF ? parse_if(ps, x) : parse_for(ps, x);
        ps->depth--;
    } else if (!strcmp(k, "set")) {
        node_t *tgt = NULL;
        if ((rc = parse_target(ps, &tgt)) < 0) return rc;
        if (is_op(peek(ps), "=")) {
            ps->pos++;
            if (!(x = node_new(ps, N_SET, kw->line))) return RL_ENOMEM;
            x->a = tgt;
            if (!(x->b = parse_expr(ps))) return RL_EFORMAT;
            rc = expect_bend(ps);
        } else {
            static const char *const stop[] = {"endset", NULL};
            if (!(x = node_new(ps, N_SETBLOCK, kw->line))) return RL_ENOMEM;
            x->a = tgt;
            if ((rc = expect_bend(ps)) == 0 && (rc = parse_body(ps, &x->kids, stop, &ended)) == 0)
                rc = expect_bend(ps);
        }
    } else if (!strcmp(k, "break") || !strcmp(k, "continue")) {
        if (!(x = node_new(ps, k[0] == 'b' ? N_BREAK : N_CONTINUE, kw->line))) return RL_ENOMEM;
        rc = expect_bend(ps);
    } else if (!strcmp(k,
                       "generation")) { /* transformers' assistant-mask marker: renders its body */
        static const char *const stop[] = {"endgeneration", NULL};
        if (!(x = node_new(ps, N_BLOCK, kw->line))) return RL_ENOMEM;
        if ((rc = expect_bend(ps)) == 0 && (rc = parse_body(ps, &x->kids, stop, &ended)) == 0)
            rc = expect_bend(ps);
    } else {
        return rl_fail(RL_EUNSUPPORTED, "chat template line %d: {%% %s %%} is not supported",
                       kw->line, k);
    }
    return rc < 0 ? rc : nodes_push(body, x);
}

static int parse_body(parser_t *ps, nodes_t *body, const char *const *stop, const char **ended) {
    int rc;
    for (;;) {
        jtok_t *t = peek(ps);
        node_t *x;
        if (t->type == T_EOF) {
            if (!stop) return 0;
            size_t last = 0;
            while (stop[last + 1]) last++;
            return rl_fail(RL_EFORMAT, "chat template line %d: missing {%% %s %%}", t->line,
                           stop[last]);
        }
        ps->pos++;
        if (t->type == T_TEXT) {
            if (!(x = lit_node(ps, json_stringn(t->s, t->n), t->line))) return RL_ENOMEM;
            x->kind = N_TEXT;
            if ((rc = nodes_push(body, x)) < 0) return rc;
        } else if (t->type == T_VBEGIN) {
            if (!(x = node_new(ps, N_OUT, t->line)) || !(x->a = parse_expr(ps))) return RL_EFORMAT;
            if (peek(ps)->type != T_VEND) return syntax(ps, "'}}'");
            ps->pos++;
            if ((rc = nodes_push(body, x)) < 0) return rc;
        } else if (t->type == T_BBEGIN) {
            jtok_t *kw = peek(ps);
            if (kw->type != T_NAME) return syntax(ps, "a statement");
            ps->pos++;
            for (size_t i = 0; stop && stop[i]; i++)
                if (!strcmp(kw->s, stop[i])) {
                    *ended = kw->s;
                    return 0;
                }
            if ((rc = parse_stmt(ps, kw, body)) < 0) return rc;
        } else {
            ps->pos--;
            return syntax(ps, "text or a tag");
        }
    }
}

/* ---- values ---------------------------------------------------------------------------------- */

typedef struct {
    json_t **scope;
    size_t n_scope, cap_scope;
    sbuf_t out;
    int jump;  /* a pending break (1) or continue (2) */
    int depth; /* of rendering: bounds recursion through nested loops */
} rctx_t;

static int truthy(const json_t *v) {
    if (!v) return 0;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return json_object_size(v) > 0;
    case JSON_ARRAY:
        return json_array_size(v) > 0;
    case JSON_STRING:
        return json_string_length(v) > 0;
    case JSON_INTEGER:
        return json_integer_value(v) != 0;
    case JSON_REAL:
        return json_real_value(v) != 0;
    case JSON_TRUE:
        return 1;
    default:
        return 0;
    }
}

static int run_fail(int line, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run_fail(int line, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return rl_fail(RL_EINVAL, "chat template line %d: %s", line, msg);
}

static const char *type_name(const json_t *v) {
    if (!v) return "undefined";
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "dict";
    case JSON_ARRAY:
        return "list";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "int";
    case JSON_REAL:
        return "float";
    case JSON_NULL:
        return "none";
    default:
        return "bool";
    }
}

/* Python's str() of a value (repr inside lists and dicts). */
static int to_str(sbuf_t *b, const json_t *v, int repr) {
    char num[64];
    int rc = 0;
    if (!v) return 0;
    switch (json_typeof(v)) {
    case JSON_STRING:
        if (!repr) return sb_add(b, json_string_value(v), json_string_length(v));
        {
            const char *s = json_string_value(v);
            size_t n = json_string_length(v);
            char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
            rc = sb_add(b, &q, 1);
            for (size_t i = 0; i < n && rc == 0; i++) {
                if (s[i] == q || s[i] == '\\') rc = sb_add(b, "\\", 1);
                if (rc == 0 && s[i] == '\n')
                    rc = sb_add(b, "\\n", 2);
                else if (rc == 0)
                    rc = sb_add(b, s + i, 1);
            }
            return rc ? rc : sb_add(b, &q, 1);
        }
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
        return sb_str(b, num);
    case JSON_REAL: {
        double d = json_real_value(v);
        snprintf(num, sizeof num, "%.17g", d);
        for (int p = 1; p <= 17; p++) { /* the shortest form that reads back, as Python's */
            snprintf(num, sizeof num, "%.*g", p, d);
            if (strtod(num, NULL) == d) break;
        }
        if (!strpbrk(num, ".eEn")) strcat(num, ".0");
        return sb_str(b, num);
    }
    case JSON_TRUE:
        return sb_str(b, "True");
    case JSON_FALSE:
        return sb_str(b, "False");
    case JSON_NULL:
        return sb_str(b, "None");
    case JSON_ARRAY: {
        size_t i;
        json_t *x;
        rc = sb_str(b, "[");
        json_array_foreach(v, i, x) {
            if (rc == 0 && i) rc = sb_str(b, ", ");
            if (rc == 0) rc = to_str(b, x, 1);
        }
        return rc ? rc : sb_str(b, "]");
    }
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        int first = 1;
        rc = sb_str(b, "{");
        json_object_foreach((json_t *)v, k, x) {
            json_t *key = json_string(k);
            if (rc == 0 && !first) rc = sb_str(b, ", ");
            if (rc == 0) rc = key ? to_str(b, key, 1) : RL_ENOMEM;
            if (rc == 0) rc = sb_str(b, ": ");
            if (rc == 0) rc = to_str(b, x, 1);
            json_decref(key);
            first = 0;
        }
        return rc ? rc : sb_str(b, "}");
    }
    }
    return 0;
}

/* A new string value of str(v). */
static json_t *str_of(const json_t *v) {
    sbuf_t b = {0};
    json_t *r = to_str(&b, v, 0) == 0 ? json_stringn(b.p ? b.p : "", b.n) : NULL;
    free(b.p);
    return r;
}

static int is_num(const json_t *v) {
    return v && (json_is_integer(v) || json_is_real(v));
}

static double num_of(const json_t *v) {
    return json_is_integer(v) ? (double)json_integer_value(v) : json_real_value(v);
}

static int values_equal(const json_t *a, const json_t *b) {
    if (!a || !b) return !a && !b;
    if (is_num(a) && is_num(b)) return num_of(a) == num_of(b);
    if (json_is_boolean(a) && json_is_boolean(b)) return json_is_true(a) == json_is_true(b);
    return json_equal((json_t *)a, (json_t *)b);
}

/* Code points of a UTF-8 string: byte offsets of each (n + 1 entries), malloc'ed. */
static size_t *cp_offsets(const char *s, size_t n, size_t *count) {
    size_t *off = malloc((n + 1) * sizeof *off), k = 0;
    if (!off) return NULL;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) off[k++] = i;
    off[k] = n;
    *count = k;
    return off;
}

/* Python's str.isspace() for the code point at s (n bytes left); its length in *len. */
static int py_space(const unsigned char *s, size_t n, size_t *len) {
    *len = 1;
    if (s[0] < 0x80) return (s[0] >= 0x09 && s[0] <= 0x0D) || (s[0] >= 0x1C && s[0] <= 0x20);
    if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) return (*len = 2);
    if (n >= 3 && s[0] == 0xE1 && s[1] == 0x9A && s[2] == 0x80) return (*len = 3);
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x80 &&
        (s[2] <= 0x8A || s[2] == 0xA8 || s[2] == 0xA9 || s[2] == 0xAF))
        return (*len = 3);
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0x9F) return (*len = 3);
    if (n >= 3 && s[0] == 0xE3 && s[1] == 0x80 && s[2] == 0x80) return (*len = 3);
    return 0;
}

/* Python's strip/lstrip/rstrip: whitespace, or the characters of chars (UTF-8). */
static json_t *py_strip(const json_t *v, const json_t *chars, int left, int right) {
    const char *s = json_string_value(v), *cs = chars ? json_string_value(chars) : NULL;
    size_t a = 0, b = json_string_length(v), k;
    size_t cn = cs ? json_string_length(chars) : 0;
    for (;;) { /* from the left */
        if (!left || a >= b) break;
        const unsigned char *p = (const unsigned char *)s + a;
        if (cs) {
            size_t cl = 1;
            while (a + cl < b && (p[cl] & 0xC0) == 0x80) cl++;
            if (!memmem(cs, cn, p, cl)) break;
            a += cl;
        } else if (py_space(p, b - a, &k)) {
            a += k;
        } else {
            break;
        }
    }
    while (right && b > a) { /* from the right: back to the start of the last code point */
        size_t st = b - 1;
        while (st > a && ((unsigned char)s[st] & 0xC0) == 0x80) st--;
        const unsigned char *p = (const unsigned char *)s + st;
        if (cs ? memmem(cs, cn, p, b - st) != NULL : (py_space(p, b - st, &k) && k == b - st))
            b = st;
        else
            break;
    }
    return json_stringn(s + a, b - a);
}

/* Python's str.split(sep) (sep NULL: runs of whitespace, ends dropped), maxsplit -1 = all. */
static json_t *py_split(const json_t *v, const json_t *sep, long long maxsplit) {
    const char *s = json_string_value(v);
    size_t n = json_string_length(v), k;
    json_t *r = json_array();
    if (!r) return NULL;
    if (sep && json_string_length(sep) > 0) {
        const char *p = json_string_value(sep);
        size_t sn = json_string_length(sep), a = 0;
        for (long long done = 0; maxsplit < 0 || done < maxsplit; done++) {
            const char *hit = memmem(s + a, n - a, p, sn);
            if (!hit) break;
            json_array_append_new(r, json_stringn(s + a, (size_t)(hit - s) - a));
            a = (size_t)(hit - s) + sn;
        }
        json_array_append_new(r, json_stringn(s + a, n - a));
        return r;
    }
    size_t i = 0;
    long long done = 0;
    while (i < n) {
        while (i < n && py_space((const unsigned char *)s + i, n - i, &k)) i += k;
        if (i >= n) break;
        size_t a = i;
        if (maxsplit >= 0 && done >= maxsplit) { /* the rest, as it is */
            json_array_append_new(r, json_stringn(s + a, n - a));
            return r;
        }
        while (i < n && !py_space((const unsigned char *)s + i, n - i, &k)) i++;
        json_array_append_new(r, json_stringn(s + a, i - a));
        done++;
    }
    return r;
}

/* ASCII upper/lower/title/capitalize (templates apply them to role names and the like). */
static json_t *py_case(const json_t *v, int mode) {
    size_t n = json_string_length(v);
    char *s = malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, json_string_value(v), n);
    int start = 1;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        int up = mode == 0 || ((mode == 2 && start) || (mode == 3 && i == 0));
        if (alpha && up && c >= 'a' && c <= 'z') s[i] = (char)(c - 32);
        if (alpha && !up && c >= 'A' && c <= 'Z') s[i] = (char)(c + 32);
        start = !alpha;
    }
    json_t *r = json_stringn(s, n);
    free(s);
    return r;
}

static json_t *py_replace(const json_t *v, const json_t *from, const json_t *to) {
    const char *s = json_string_value(v), *f = json_string_value(from);
    size_t n = json_string_length(v), fn = json_string_length(from), a = 0;
    sbuf_t b = {0};
    int rc = 0;
    while (fn && rc == 0) {
        const char *hit = memmem(s + a, n - a, f, fn);
        if (!hit) break;
        rc = sb_add(&b, s + a, (size_t)(hit - s) - a);
        if (rc == 0) rc = sb_add(&b, json_string_value(to), json_string_length(to));
        a = (size_t)(hit - s) + fn;
    }
    if (rc == 0) rc = sb_add(&b, s + a, n - a);
    json_t *r = rc == 0 ? json_stringn(b.p, b.n) : NULL;
    free(b.p);
    return r;
}

/* Python slicing of a list or string: [start:stop:step], each may be absent (NULL). */
static json_t *py_slice(const json_t *v, const json_t *js, const json_t *je, const json_t *jp,
                        int line, int *rc) {
    long long step = jp && !json_is_null(jp) ? json_integer_value(jp) : 1;
    size_t *off = NULL, count;
    if (step == 0) {
        *rc = run_fail(line, "slice step cannot be zero");
        return NULL;
    }
    if (json_is_string(v)) {
        if (!(off = cp_offsets(json_string_value(v), json_string_length(v), &count))) {
            *rc = rl_fail(RL_ENOMEM, "chat template: out of memory");
            return NULL;
        }
    } else if (json_is_array(v)) {
        count = json_array_size(v);
    } else {
        *rc = run_fail(line, "cannot slice a %s", type_name(v));
        return NULL;
    }
    long long n = (long long)count, lo, hi;
    /* CPython's PySlice_AdjustIndices */
    if (step > 0) {
        lo = js && !json_is_null(js) ? json_integer_value(js) : 0;
        hi = je && !json_is_null(je) ? json_integer_value(je) : n;
        if (lo < 0) lo = lo + n < 0 ? 0 : lo + n;
        if (lo > n) lo = n;
        if (hi < 0) hi = hi + n < 0 ? 0 : hi + n;
        if (hi > n) hi = n;
    } else {
        lo = js && !json_is_null(js) ? json_integer_value(js) : n - 1;
        hi = je && !json_is_null(je) ? json_integer_value(je) : -n - 1;
        if (lo < 0) lo = lo + n < 0 ? -1 : lo + n;
        if (lo >= n) lo = n - 1;
        if (hi < 0) hi = hi + n < 0 ? -1 : hi + n;
        if (hi >= n) hi = n - 1;
    }
    json_t *r;
    if (off) {
        sbuf_t b = {0};
        const char *s = json_string_value(v);
        for (long long i = lo; step > 0 ? i < hi : i > hi; i += step)
            if (sb_add(&b, s + off[i], off[i + 1] - off[i]) < 0) break;
        r = json_stringn(b.p ? b.p : "", b.n);
        free(b.p);
        free(off);
    } else {
        r = json_array();
        for (long long i = lo; r && (step > 0 ? i < hi : i > hi); i += step)
            json_array_append(r, json_array_get(v, (size_t)i));
    }
    if (!r) *rc = rl_fail(RL_ENOMEM, "chat template: out of memory");
    return r;
}

/* ---- rendering ----------------------------------------------------------------------------- */

static int eval(rctx_t *c, const node_t *x, json_t **out);
static int render_body(rctx_t *c, const nodes_t *body);

static json_t *lookup(rctx_t *c, const char *name) {
    for (size_t i = c->n_scope; i-- > 0;) {
        json_t *v = json_object_get(c->scope[i], name);
        if (v) return v;
    }
    return NULL;
}

static int set_var(rctx_t *c, const char *name, json_t *v) { /* steals v */
    if (!v) v = json_null(); /* an undefined value stored stays "defined" as none */
    if (json_object_set_new(c->scope[c->n_scope - 1], name, v) < 0)
        return rl_fail(RL_ENOMEM, "chat template: out of memory");
    return 0;
}

static int push_scope(rctx_t *c) {
    if (c->n_scope == c->cap_scope) {
        size_t cap = c->cap_scope ? 2 * c->cap_scope : 8;
        json_t **p = realloc(c->scope, cap * sizeof *p);
        if (!p) return rl_fail(RL_ENOMEM, "chat template: out of memory");
        c->scope = p;
        c->cap_scope = cap;
    }
    if (!(c->scope[c->n_scope] = json_object()))
        return rl_fail(RL_ENOMEM, "chat template: out of memory");
    c->n_scope++;
    return 0;
}

static void pop_scope(rctx_t *c) {
    json_decref(c->scope[--c->n_scope]);
}

/* Evaluated arguments: positional in pos[], keyword ones in kw (an object). */
typedef struct {
    json_t *pos[8];
    size_t n;
    json_t *kw;
} args_t;

static void args_free(args_t *a) {
    for (size_t i = 0; i < a->n; i++) json_decref(a->pos[i]);
    json_decref(a->kw);
}

static int eval_args(rctx_t *c, const nodes_t *kids, args_t *a) {
    int rc;
    memset(a, 0, sizeof *a);
    for (size_t i = 0; i < kids->n; i++) {
        const node_t *k = kids->p[i];
        json_t *v;
        if ((rc = eval(c, k->kind == E_KW ? k->a : k, &v)) < 0) return rc;
        if (k->kind == E_KW) {
            if (!a->kw && !(a->kw = json_object())) {
                json_decref(v);
                return rl_fail(RL_ENOMEM, "chat template: out of memory");
            }
            json_object_set_new(a->kw, k->name, v ? v : json_null());
        } else if (a->n < sizeof a->pos / sizeof *a->pos) {
            a->pos[a->n++] = v;
        } else {
            json_decref(v);
            return run_fail(k->line, "too many arguments");
        }
    }
    return 0;
}

/* Argument i, or keyword name, or NULL. */
static json_t *arg(const args_t *a, size_t i, const char *name) {
    if (i < a->n) return a->pos[i];
    return a->kw && name ? json_object_get(a->kw, name) : NULL;
}

static int want_str(const json_t *v, const char *what, int line) {
    if (json_is_string(v)) return 0;
    return run_fail(line, "%s expects a string, not %s", what, type_name(v));
}

static json_t *tojson(const json_t *v, const json_t *indent) {
    size_t flags = JSON_ENCODE_ANY;
    if (indent && json_is_integer(indent)) flags |= JSON_INDENT(json_integer_value(indent) & 31);
    char *s = json_dumps(v ? v : json_null(), flags);
    /* Python writes the \uXXXX of control characters in lower case, jansson in upper case */
    for (char *p = s; p && *p; p++)
        if (*p == '\\' && *++p == 'u')
            for (int k = 1; k <= 4 && p[k]; k++)
                if (p[k] >= 'A' && p[k] <= 'F') p[k] = (char)(p[k] + 32);
    json_t *r = s ? json_string(s) : NULL;
    free(s);
    return r;
}

/* Methods of strings and dicts: obj.name(args). */
static int call_method(json_t *obj, const char *name, const args_t *a, int line, json_t **out) {
    json_t *a0 = arg(a, 0, NULL), *a1 = arg(a, 1, NULL);
    json_t *r = NULL;
    if (json_is_string(obj)) {
        const char *s = json_string_value(obj);
        size_t n = json_string_length(obj);
        if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
            if (a0 && !json_is_null(a0) && want_str(a0, name, line) < 0) return RL_EINVAL;
            r = py_strip(obj, a0 && !json_is_null(a0) ? a0 : NULL, name[0] != 'r', name[0] != 'l');
        } else if (!strcmp(name, "split")) {
            json_t *sep = arg(a, 0, "sep"), *mx = arg(a, 1, "maxsplit");
            if (sep && !json_is_null(sep) && want_str(sep, name, line) < 0) return RL_EINVAL;
            r = py_split(obj, sep && !json_is_null(sep) ? sep : NULL,
                         mx && json_is_integer(mx) ? json_integer_value(mx) : -1);
        } else if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
            if (want_str(a0, name, line) < 0) return RL_EINVAL;
            size_t k = json_string_length(a0);
            const char *p = json_string_value(a0);
            int hit = k <= n && !memcmp(name[0] == 's' ? s : s + n - k, p, k);
            r = json_boolean(hit);
        } else if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "title") ||
                   !strcmp(name, "capitalize")) {
            r = py_case(obj, name[0] == 'u' ? 0 : name[0] == 'l' ? 1 : name[0] == 't' ? 2 : 3);
        } else if (!strcmp(name, "replace")) {
            if (want_str(a0, name, line) < 0 || want_str(a1, name, line) < 0) return RL_EINVAL;
            r = py_replace(obj, a0, a1);
        } else if (!strcmp(name, "find") || !strcmp(name, "count")) {
            if (want_str(a0, name, line) < 0) return RL_EINVAL;
            const char *p = json_string_value(a0), *hit;
            size_t k = json_string_length(a0), at = 0;
            long long cnt = 0;
            if (name[0] == 'f') {
                hit = memmem(s, n, p, k);
                size_t cps = 0;
                for (const char *q = s; hit && q < hit; q++)
                    cps += ((unsigned char)*q & 0xC0) != 0x80;
                r = json_integer(hit ? (long long)cps : -1);
            } else {
                while (k && (hit = memmem(s + at, n - at, p, k))) {
                    cnt++;
                    at = (size_t)(hit - s) + k;
                }
                r = json_integer(cnt);
            }
        } else if (!strcmp(name, "join")) {
            sbuf_t b = {0};
            size_t i;
            json_t *x;
            int rc = 0;
            if (!json_is_array(a0)) return run_fail(line, "join expects a list");
            json_array_foreach(a0, i, x) {
                if (rc == 0 && i) rc = sb_add(&b, s, n);
                if (rc == 0) rc = to_str(&b, x, 0);
            }
            r = rc == 0 ? json_stringn(b.p ? b.p : "", b.n) : NULL;
            free(b.p);
        } else {
            return run_fail(line, "strings have no method %s() here", name);
        }
    } else if (json_is_object(obj)) {
        if (!strcmp(name, "get")) {
            if (want_str(a0, name, line) < 0) return RL_EINVAL;
            json_t *v = json_object_get(obj, json_string_value(a0));
            r = json_incref(v ? v : a1 ? a1 : json_null());
        } else if (!strcmp(name, "items") || !strcmp(name, "keys") || !strcmp(name, "values")) {
            const char *k;
            json_t *v;
            if (!(r = json_array())) return rl_fail(RL_ENOMEM, "chat template: out of memory");
            json_object_foreach(obj, k, v) {
                json_t *e = name[0] == 'k'   ? json_string(k)
                            : name[0] == 'v' ? json_incref(v)
                                             : json_pack("[sO]", k, v);
                json_array_append_new(r, e);
            }
        } else {
            return run_fail(line, "dicts have no method %s() here", name);
        }
    } else {
        return run_fail(line, "a %s has no method %s()", type_name(obj), name);
    }
    if (!r) return rl_fail(RL_ENOMEM, "chat template: out of memory");
    *out = r;
    return 0;
}

/* raise_exception, namespace, range, strftime_now. */
static int call_builtin(const char *name, const args_t *a, int line, json_t **out) {
    if (!strcmp(name, "raise_exception")) {
        json_t *m = arg(a, 0, NULL);
        return rl_fail(RL_EINVAL, "chat template line %d: raise_exception: %s", line,
                       json_is_string(m) ? json_string_value(m) : "(no message)");
    }
    if (!strcmp(name, "namespace")) {
        json_t *ns = a->kw ? json_deep_copy(a->kw) : json_object();
        if (ns && a->n && json_is_object(a->pos[0])) json_object_update(ns, a->pos[0]);
        *out = ns;
        return ns ? 0 : rl_fail(RL_ENOMEM, "chat template: out of memory");
    }
    if (!strcmp(name, "range")) {
        long long v[3] = {0, 0, 1};
        for (size_t i = 0; i < a->n && i < 3; i++) {
            if (!json_is_integer(a->pos[i])) return run_fail(line, "range expects integers");
            v[i] = json_integer_value(a->pos[i]);
        }
        if (a->n == 1) v[1] = v[0], v[0] = 0;
        if (v[2] == 0 || a->n == 0) return run_fail(line, "range: bad arguments");
        json_t *r = json_array();
        for (long long i = v[0]; r && (v[2] > 0 ? i < v[1] : i > v[1]); i += v[2]) {
            if (json_array_size(r) > 1000000) break;
            json_array_append_new(r, json_integer(i));
        }
        *out = r;
        return r ? 0 : rl_fail(RL_ENOMEM, "chat template: out of memory");
    }
    if (!strcmp(name, "strftime_now")) {
        json_t *f = arg(a, 0, "format");
        char buf[256];
        time_t now = time(NULL);
        struct tm tm;
        if (want_str(f, name, line) < 0) return RL_EINVAL;
        localtime_r(&now, &tm);
        size_t k = strftime(buf, sizeof buf, json_string_value(f), &tm);
        *out = json_stringn(buf, k);
        return *out ? 0 : rl_fail(RL_ENOMEM, "chat template: out of memory");
    }
    return run_fail(line, "%s is not a function here", name);
}

static int is_builtin(const char *name) {
    return !strcmp(name, "raise_exception") || !strcmp(name, "namespace") ||
           !strcmp(name, "range") || !strcmp(name, "strftime_now");
}

static size_t length_of(const json_t *v) {
    if (json_is_string(v)) {
        size_t n = 0, len = json_string_length(v);
        const char *s = json_string_value(v);
        for (size_t i = 0; i < len; i++) n += ((unsigned char)s[i] & 0xC0) != 0x80;
        return n;
    }
    return json_is_array(v) ? json_array_size(v) : json_is_object(v) ? json_object_size(v) : 0;
}

/* A list of the items of a list, the keys of a dict, the characters of a string. */
static json_t *as_list(const json_t *v) {
    if (json_is_array(v)) return json_incref((json_t *)v);
    json_t *r = json_array();
    if (!r) return NULL;
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) json_array_append_new(r, json_string(k));
    } else if (json_is_string(v)) {
        size_t count, *off = cp_offsets(json_string_value(v), json_string_length(v), &count);
        for (size_t i = 0; off && i < count; i++)
            json_array_append_new(r,
                                  json_stringn(json_string_value(v) + off[i], off[i + 1] - off[i]));
        free(off);
    } else if (v && !json_is_null(v)) {
        json_decref(r);
        return NULL;
    }
    return r;
}

static int apply_test(const char *name, const json_t *v, const args_t *a, int line, int *res);
static int apply_filter(const char *name, json_t *v, const args_t *a, int line, json_t **out);

/*
 * map(attribute=name) / map(filter), select / reject(test[, arg]) and selectattr / rejectattr(
 * attr[, test[, arg]]) over the items of a sequence: a new list in *out.
 */
static int filter_items(const char *name, json_t *v, const args_t *a, int line, json_t **out) {
    json_t *l = as_list(v), *r = json_array();
    int rc = 0, attr = !strcmp(name, "selectattr") || !strcmp(name, "rejectattr");
    int keep_if = name[0] == 's'; /* select, selectattr */
    if (!l || !r) {
        json_decref(l);
        json_decref(r);
        return l ? rl_fail(RL_ENOMEM, "chat template: out of memory")
                 : run_fail(line, "%s expects a sequence, not %s", name, type_name(v));
    }
    json_t *key = attr                   ? arg(a, 0, NULL)
                  : !strcmp(name, "map") ? (a->kw ? json_object_get(a->kw, "attribute") : NULL)
                                         : NULL;
    json_t *test = arg(a, attr ? 1 : 0, NULL);
    if ((attr || (!strcmp(name, "map") && key)) && !json_is_string(key))
        rc = run_fail(line, "%s: the attribute must be a string", name);
    if (rc == 0 && test && !json_is_string(test))
        rc = run_fail(line, "%s: the test or filter must be a name", name);
    args_t rest = {0};
    for (size_t i = attr ? 2 : 1; rc == 0 && i < a->n && rest.n < 7; i++)
        rest.pos[rest.n++] = a->pos[i];
    for (size_t i = 0; rc == 0 && i < json_array_size(l); i++) {
        json_t *e = json_array_get(l, i), *x = key ? json_object_get(e, json_string_value(key)) : e;
        if (!strcmp(name, "map")) {
            json_t *m = NULL;
            if (key)
                m = x ? json_incref(x) : json_null();
            else if (test)
                rc = apply_filter(json_string_value(test), x, &rest, line, &m);
            else
                rc = run_fail(line, "map needs a filter or attribute=");
            if (rc == 0) json_array_append_new(r, m ? m : json_null());
            continue;
        }
        int res = 0;
        if (test)
            rc = apply_test(json_string_value(test), x, &rest, line, &res);
        else
            res = truthy(x);
        if (rc == 0 && res == keep_if) json_array_append(r, e);
    }
    json_decref(l);
    if (rc < 0) {
        json_decref(r);
        return rc;
    }
    *out = r;
    return 0;
}

static int apply_filter(const char *name, json_t *v, const args_t *a, int line, json_t **out) {
    json_t *r = NULL, *a0 = arg(a, 0, NULL);
    if (!strcmp(name, "trim")) {
        if (want_str(v, name, line) < 0) return RL_EINVAL;
        r = py_strip(v, a0 && json_is_string(a0) ? a0 : NULL, 1, 1);
    } else if (!strcmp(name, "length") || !strcmp(name, "count")) {
        if (!json_is_string(v) && !json_is_array(v) && !json_is_object(v))
            return run_fail(line, "a %s has no length", type_name(v));
        r = json_integer((json_int_t)length_of(v));
    } else if (!strcmp(name, "tojson")) {
        r = tojson(v, arg(a, 0, "indent"));
    } else if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "title") ||
               !strcmp(name, "capitalize")) {
        if (want_str(v, name, line) < 0) return RL_EINVAL;
        r = py_case(v, name[0] == 'u' ? 0 : name[0] == 'l' ? 1 : name[0] == 't' ? 2 : 3);
    } else if (!strcmp(name, "string")) {
        r = str_of(v);
    } else if (!strcmp(name, "safe") || !strcmp(name, "e") || !strcmp(name, "escape")) {
        r = v ? json_incref(v) : json_string(""); /* no autoescape, as in transformers */
    } else if (!strcmp(name, "int")) {
        r = json_integer(is_num(v)           ? (json_int_t)num_of(v)
                         : json_is_string(v) ? strtoll(json_string_value(v), NULL, 10)
                                             : 0);
    } else if (!strcmp(name, "float")) {
        r = json_real(is_num(v)           ? num_of(v)
                      : json_is_string(v) ? strtod(json_string_value(v), NULL)
                                          : 0);
    } else if (!strcmp(name, "abs")) {
        if (!is_num(v)) return run_fail(line, "abs expects a number");
        r = json_is_integer(v) ? json_integer(llabs(json_integer_value(v)))
                               : json_real(fabs(num_of(v)));
    } else if (!strcmp(name, "first") || !strcmp(name, "last") || !strcmp(name, "list") ||
               !strcmp(name, "reverse") || !strcmp(name, "join") || !strcmp(name, "items")) {
        if (!strcmp(name, "items")) {
            if (!json_is_object(v)) return run_fail(line, "items expects a dict");
            args_t none = {0};
            return call_method(v, "items", &none, line, out);
        }
        json_t *l = as_list(v);
        if (!l) return run_fail(line, "%s expects a sequence, not %s", name, type_name(v));
        size_t n = json_array_size(l);
        if (!strcmp(name, "list")) {
            r = json_copy(l);
        } else if (!strcmp(name, "first") || !strcmp(name, "last")) {
            json_t *e = n ? json_array_get(l, name[0] == 'f' ? 0 : n - 1) : NULL;
            json_decref(l);
            *out = e ? json_incref(e) : NULL;
            return 0;
        } else if (!strcmp(name, "reverse")) {
            if (json_is_string(v)) {
                sbuf_t b = {0};
                for (size_t i = n; i-- > 0;) {
                    json_t *e = json_array_get(l, i);
                    sb_add(&b, json_string_value(e), json_string_length(e));
                }
                r = json_stringn(b.p ? b.p : "", b.n);
                free(b.p);
            } else {
                r = json_array();
                for (size_t i = n; r && i-- > 0;) json_array_append(r, json_array_get(l, i));
            }
        } else { /* join */
            sbuf_t b = {0};
            json_t *sep = arg(a, 0, "d");
            for (size_t i = 0; i < n; i++) {
                if (i && json_is_string(sep))
                    sb_add(&b, json_string_value(sep), json_string_length(sep));
                to_str(&b, json_array_get(l, i), 0);
            }
            r = json_stringn(b.p ? b.p : "", b.n);
            free(b.p);
        }
        json_decref(l);
    } else if (!strcmp(name, "map") || !strcmp(name, "select") || !strcmp(name, "reject") ||
               !strcmp(name, "selectattr") || !strcmp(name, "rejectattr")) {
        return filter_items(name, v, a, line, out);
    } else if (!strcmp(name, "default") || !strcmp(name, "d")) {
        json_t *b1 = arg(a, 1, "boolean");
        int use = !v || (truthy(b1) && !truthy(v));
        r = use ? (a0 ? json_incref(a0) : json_string("")) : json_incref(v);
    } else if (!strcmp(name, "replace")) {
        json_t *a1 = arg(a, 1, NULL);
        if (want_str(v, name, line) < 0 || want_str(a0, name, line) < 0 ||
            want_str(a1, name, line) < 0)
            return RL_EINVAL;
        r = py_replace(v, a0, a1);
    } else {
        return rl_fail(RL_EUNSUPPORTED, "chat template line %d: filter '%s' is not supported", line,
                       name);
    }
    if (!r) return rl_fail(RL_ENOMEM, "chat template: out of memory");
    *out = r;
    return 0;
}

static int contains(const json_t *hay, const json_t *needle, int line, int *res) {
    if (json_is_string(hay)) {
        if (!json_is_string(needle)) return run_fail(line, "'in <string>' needs a string");
        *res = memmem(json_string_value(hay), json_string_length(hay), json_string_value(needle),
                      json_string_length(needle)) != NULL;
    } else if (json_is_array(hay)) {
        size_t i;
        json_t *x;
        *res = 0;
        json_array_foreach(hay, i, x) if (values_equal(x, needle)) *res = 1;
    } else if (json_is_object(hay)) {
        *res = json_is_string(needle) && json_object_get(hay, json_string_value(needle));
    } else {
        return run_fail(line, "'in' needs a string, list or dict, not %s", type_name(hay));
    }
    return 0;
}

static int apply_test(const char *name, const json_t *v, const args_t *a, int line, int *res) {
    json_t *a0 = arg(a, 0, NULL);
    if (!strcmp(name, "defined"))
        *res = v != NULL;
    else if (!strcmp(name, "undefined"))
        *res = v == NULL;
    else if (!strcmp(name, "none"))
        *res = v && json_is_null(v);
    else if (!strcmp(name, "string"))
        *res = json_is_string(v);
    else if (!strcmp(name, "number"))
        *res = is_num(v);
    else if (!strcmp(name, "integer"))
        *res = json_is_integer(v);
    else if (!strcmp(name, "float"))
        *res = json_is_real(v);
    else if (!strcmp(name, "boolean"))
        *res = json_is_boolean(v);
    else if (!strcmp(name, "true"))
        *res = json_is_true(v);
    else if (!strcmp(name, "false"))
        *res = json_is_false(v);
    else if (!strcmp(name, "mapping"))
        *res = json_is_object(v);
    else if (!strcmp(name, "sequence") || !strcmp(name, "iterable"))
        *res = json_is_array(v) || json_is_string(v) || json_is_object(v);
    else if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (!json_is_integer(v)) return run_fail(line, "%s expects an integer", name);
        *res = (json_integer_value(v) & 1) == (name[0] == 'o');
    } else if (!strcmp(name, "equalto") || !strcmp(name, "eq") || !strcmp(name, "sameas"))
        *res = values_equal(v, a0);
    else if (!strcmp(name, "in"))
        return contains(a0, v, line, res);
    else
        return rl_fail(RL_EUNSUPPORTED, "chat template line %d: test '%s' is not supported", line,
                       name);
    return 0;
}

static int compare(int op, const json_t *l, const json_t *r, int line, int *res) {
    int c;
    if (op == OP_EQ || op == OP_NE) {
        *res = values_equal(l, r) == (op == OP_EQ);
        return 0;
    }
    if (op == OP_IN || op == OP_NOTIN) {
        int rc = contains(r, l, line, res);
        if (op == OP_NOTIN) *res = !*res;
        return rc;
    }
    if (is_num(l) && is_num(r)) {
        double x = num_of(l), y = num_of(r);
        c = (x > y) - (x < y);
    } else if (json_is_string(l) && json_is_string(r)) {
        size_t a = json_string_length(l), b = json_string_length(r);
        c = memcmp(json_string_value(l), json_string_value(r), a < b ? a : b);
        if (!c) c = (a > b) - (a < b);
    } else {
        return run_fail(line, "cannot compare %s with %s", type_name(l), type_name(r));
    }
    *res = op == OP_LT ? c < 0 : op == OP_GT ? c > 0 : op == OP_LE ? c <= 0 : c >= 0;
    return 0;
}

static int arith(int op, const json_t *l, const json_t *r, int line, json_t **out) {
    if (op == OP_CAT) {
        sbuf_t b = {0};
        int rc = to_str(&b, l, 0);
        if (rc == 0) rc = to_str(&b, r, 0);
        *out = rc == 0 ? json_stringn(b.p ? b.p : "", b.n) : NULL;
        free(b.p);
        return rc < 0 ? rc : *out ? 0 : rl_fail(RL_ENOMEM, "chat template: out of memory");
    }
    if (op == OP_ADD && json_is_string(l) && json_is_string(r)) {
        sbuf_t b = {0};
        sb_add(&b, json_string_value(l), json_string_length(l));
        sb_add(&b, json_string_value(r), json_string_length(r));
        *out = json_stringn(b.p ? b.p : "", b.n);
        free(b.p);
    } else if (op == OP_ADD && json_is_array(l) && json_is_array(r)) {
        *out = json_copy((json_t *)l);
        if (*out) json_array_extend(*out, (json_t *)r);
    } else if (op == OP_MUL && json_is_string(l) && json_is_integer(r)) {
        sbuf_t b = {0};
        for (long long i = 0; i < json_integer_value(r) && i < 1000000; i++)
            sb_add(&b, json_string_value(l), json_string_length(l));
        *out = json_stringn(b.p ? b.p : "", b.n);
        free(b.p);
    } else if (is_num(l) && is_num(r)) {
        int ints = json_is_integer(l) && json_is_integer(r);
        long long x = ints ? json_integer_value(l) : 0, y = ints ? json_integer_value(r) : 0;
        double fx = num_of(l), fy = num_of(r);
        if ((op == OP_DIV || op == OP_FDIV || op == OP_MOD) && fy == 0)
            return run_fail(line, "division by zero");
        switch (op) {
        case OP_ADD:
            *out = ints ? json_integer(x + y) : json_real(fx + fy);
            break;
        case OP_SUB:
            *out = ints ? json_integer(x - y) : json_real(fx - fy);
            break;
        case OP_MUL:
            *out = ints ? json_integer(x * y) : json_real(fx * fy);
            break;
        case OP_DIV:
            *out = json_real(fx / fy);
            break;
        case OP_FDIV:
            *out = ints ? json_integer(x / y - ((x % y != 0) && ((x < 0) != (y < 0))))
                        : json_real(floor(fx / fy));
            break;
        case OP_MOD:
            *out = ints ? json_integer(((x % y) + y) % y) : json_real(fx - fy * floor(fx / fy));
            break;
        default:
            *out = ints && y >= 0 ? json_integer((long long)pow(fx, fy)) : json_real(pow(fx, fy));
        }
    } else {
        static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
        return run_fail(line, "unsupported operand types for %s: %s and %s", names[op - OP_ADD],
                        type_name(l), type_name(r));
    }
    return *out ? 0 : rl_fail(RL_ENOMEM, "chat template: out of memory");
}

/* obj[key] or obj.name: dict keys, list and string indices (negative from the end). */
static json_t *item(const json_t *obj, const json_t *key) {
    if (json_is_object(obj) && json_is_string(key))
        return json_object_get(obj, json_string_value(key));
    if (!json_is_integer(key)) return NULL;
    long long i = json_integer_value(key);
    if (json_is_array(obj)) {
        long long n = (long long)json_array_size(obj);
        if (i < 0) i += n;
        return i >= 0 && i < n ? json_array_get(obj, (size_t)i) : NULL;
    }
    return NULL;
}

static int eval(rctx_t *c, const node_t *x, json_t **out) {
    json_t *l = NULL, *r = NULL;
    int rc = 0, res = 0;
    *out = NULL;
    switch (x->kind) {
    case E_LIT:
        *out = json_incref(x->lit);
        return 0;
    case E_NAME: {
        json_t *v = lookup(c, x->name);
        if (!v && is_builtin(x->name)) v = json_true(); /* a function: defined, callable */
        *out = v ? json_incref(v) : NULL;
        return 0;
    }
    case E_LIST:
    case E_TUPLE:
    case E_DICT: {
        json_t *v = x->kind == E_DICT ? json_object() : json_array();
        if (!v) return rl_fail(RL_ENOMEM, "chat template: out of memory");
        for (size_t i = 0; i < x->kids.n && rc == 0; i++) {
            if ((rc = eval(c, x->kids.p[i], &l)) < 0) break;
            if (x->kind != E_DICT) {
                json_array_append_new(v, l ? l : json_null());
            } else if (!json_is_string(l)) {
                rc = run_fail(x->line, "dict keys must be strings here");
                json_decref(l);
            } else if ((rc = eval(c, x->kids.p[++i], &r)) == 0) {
                json_object_set_new(v, json_string_value(l), r ? r : json_null());
                json_decref(l);
            } else {
                json_decref(l);
            }
        }
        if (rc < 0)
            json_decref(v);
        else
            *out = v;
        return rc;
    }
    case E_ATTR:
    case E_INDEX:
        if ((rc = eval(c, x->a, &l)) < 0) return rc;
        if (x->kind == E_INDEX && (rc = eval(c, x->b, &r)) < 0) break;
        if (x->kind == E_ATTR) {
            *out = json_is_object(l) ? json_object_get(l, x->name) : NULL;
        } else if (json_is_string(l) && json_is_integer(r)) {
            size_t count, *off = cp_offsets(json_string_value(l), json_string_length(l), &count);
            long long i = json_integer_value(r);
            if (i < 0) i += (long long)count;
            if (off && i >= 0 && i < (long long)count)
                *out = json_stringn(json_string_value(l) + off[i], off[i + 1] - off[i]);
            free(off);
            if (*out) break;
        } else {
            *out = item(l, r);
        }
        if (*out) json_incref(*out);
        break;
    case E_SLICE: {
        json_t *p[3] = {NULL, NULL, NULL};
        const node_t *e[3] = {x->b, x->c, x->d};
        if ((rc = eval(c, x->a, &l)) < 0) return rc;
        for (int i = 0; i < 3 && rc == 0; i++)
            if (e[i]) {
                rc = eval(c, e[i], &p[i]);
                if (rc == 0 && p[i] && !json_is_integer(p[i]) && !json_is_null(p[i]))
                    rc = run_fail(x->line, "slice indices must be integers");
            }
        if (rc == 0) *out = py_slice(l, p[0], p[1], p[2], x->line, &rc);
        for (int i = 0; i < 3; i++) json_decref(p[i]);
        break;
    }
    case E_CALL: {
        args_t a;
        if ((rc = eval_args(c, &x->kids, &a)) < 0) {
            args_free(&a);
            return rc;
        }
        if (x->a->kind == E_ATTR) {
            if ((rc = eval(c, x->a->a, &l)) == 0) rc = call_method(l, x->a->name, &a, x->line, out);
        } else if (x->a->kind == E_NAME && !lookup(c, x->a->name)) {
            rc = call_builtin(x->a->name, &a, x->line, out);
        } else {
            rc = run_fail(x->line, "this is not callable here");
        }
        args_free(&a);
        break;
    }
    case E_FILTER:
    case E_TEST: {
        args_t a;
        if ((rc = eval(c, x->a, &l)) < 0) return rc;
        if ((rc = eval_args(c, &x->kids, &a)) == 0) {
            if (x->kind == E_FILTER) {
                rc = apply_filter(x->name, l, &a, x->line, out);
            } else if ((rc = apply_test(x->name, l, &a, x->line, &res)) == 0) {
                *out = json_boolean(res != x->op);
            }
        }
        args_free(&a);
        break;
    }
    case E_NOT:
        if ((rc = eval(c, x->a, &l)) < 0) return rc;
        *out = json_boolean(!truthy(l));
        break;
    case E_NEG:
        if ((rc = eval(c, x->a, &l)) < 0) return rc;
        if (!is_num(l)) return json_decref(l), run_fail(x->line, "bad operand for unary -");
        *out = json_is_integer(l) ? json_integer(-json_integer_value(l)) : json_real(-num_of(l));
        break;
    case E_AND:
    case E_OR: /* Python's: the deciding operand */
        if ((rc = eval(c, x->a, &l)) < 0) return rc;
        if (truthy(l) == (x->kind == E_OR)) {
            *out = l;
            return 0;
        }
        json_decref(l);
        return eval(c, x->b, out);
    case E_COND:
        if ((rc = eval(c, x->b, &l)) < 0) return rc;
        res = truthy(l);
        json_decref(l);
        return res ? eval(c, x->a, out) : x->c ? eval(c, x->c, out) : 0;
    case E_BIN:
        if ((rc = eval(c, x->a, &l)) < 0) return rc;
        if ((rc = eval(c, x->b, &r)) < 0) break;
        if (x->op <= OP_NOTIN) {
            if ((rc = compare(x->op, l, r, x->line, &res)) == 0) *out = json_boolean(res);
        } else {
            rc = arith(x->op, l, r, x->line, out);
        }
        break;
    default:
        rc = run_fail(x->line, "not an expression");
    }
    json_decref(l);
    json_decref(r);
    return rc;
}

static int assign(rctx_t *c, const node_t *tgt, json_t *v) { /* steals v */
    if (tgt->kind == E_NAME) return set_var(c, tgt->name, v);
    json_t *ns = lookup(c, tgt->a->name);
    if (!json_is_object(ns)) {
        json_decref(v);
        return run_fail(tgt->line, "%s is not a namespace", tgt->a->name);
    }
    if (json_object_set_new(ns, tgt->name, v ? v : json_null()) < 0)
        return rl_fail(RL_ENOMEM, "chat template: out of memory");
    return 0;
}

static int render_for(rctx_t *c, const node_t *x) {
    json_t *it, *list = NULL, *items = NULL;
    int rc = eval(c, x->b, &it);
    if (rc < 0) return rc;
    if (it && !(list = as_list(it))) {
        rc = run_fail(x->line, "cannot loop over a %s", type_name(it));
        json_decref(it);
        return rc;
    }
    json_decref(it);
    if (!list && !(list = json_array())) return rl_fail(RL_ENOMEM, "chat template: out of memory");
    /* the loop's filter ("for x in xs if cond") runs before the loop object counts */
    if (x->c) {
        if (!(items = json_array()) || (rc = push_scope(c)) < 0) {
            json_decref(items);
            json_decref(list);
            return rc < 0 ? rc : rl_fail(RL_ENOMEM, "chat template: out of memory");
        }
        for (size_t i = 0; i < json_array_size(list) && rc == 0; i++) {
            json_t *e = json_array_get(list, i), *cond;
            const nodes_t *vars = &x->a->kids;
            if (vars->n == 1) rc = set_var(c, vars->p[0]->name, json_incref(e));
            for (size_t k = 0; vars->n > 1 && k < vars->n && rc == 0; k++)
                rc = set_var(c, vars->p[k]->name, json_incref(json_array_get(e, k)));
            if (rc == 0 && (rc = eval(c, x->c, &cond)) == 0) {
                if (truthy(cond)) json_array_append(items, e);
                json_decref(cond);
            }
        }
        pop_scope(c);
        json_decref(list);
        list = items;
        if (rc < 0) {
            json_decref(list);
            return rc;
        }
    }
    size_t n = json_array_size(list);
    if (n == 0) {
        json_decref(list);
        return render_body(c, &x->alt);
    }
    if ((rc = push_scope(c)) < 0) {
        json_decref(list);
        return rc;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *e = json_array_get(list, i);
        const nodes_t *vars = &x->a->kids;
        json_t *loop =
            json_pack("{sI sI sb sb sI sI sI}", "index0", (json_int_t)i, "index", (json_int_t)i + 1,
                      "first", i == 0, "last", i + 1 == n, "length", (json_int_t)n, "revindex",
                      (json_int_t)(n - i), "revindex0", (json_int_t)(n - i - 1));
        if (!loop) {
            rc = rl_fail(RL_ENOMEM, "chat template: out of memory");
            break;
        }
        if (i > 0) json_object_set(loop, "previtem", json_array_get(list, i - 1));
        if (i + 1 < n) json_object_set(loop, "nextitem", json_array_get(list, i + 1));
        /* a fresh scope per iteration: what the body sets does not outlive it */
        json_object_clear(c->scope[c->n_scope - 1]);
        rc = set_var(c, "loop", loop);
        if (rc == 0 && vars->n == 1) rc = set_var(c, vars->p[0]->name, json_incref(e));
        for (size_t k = 0; vars->n > 1 && k < vars->n && rc == 0; k++) {
            json_t *part = json_is_array(e) ? json_array_get(e, k) : NULL;
            if (!part)
                rc = run_fail(x->line, "cannot unpack a %s into %zu names", type_name(e), vars->n);
            else
                rc = set_var(c, vars->p[k]->name, json_incref(part));
        }
        if (rc == 0) rc = render_body(c, &x->kids);
        if (c->jump == 1) {
            c->jump = 0;
            break;
        }
        c->jump = 0;
    }
    pop_scope(c);
    json_decref(list);
    return rc;
}

static int render_node(rctx_t *c, const node_t *x) {
    json_t *v = NULL;
    int rc = 0;
    switch (x->kind) {
    case N_TEXT:
        return sb_add(&c->out, json_string_value(x->lit), json_string_length(x->lit));
    case N_OUT:
        if ((rc = eval(c, x->a, &v)) < 0) return rc;
        rc = to_str(&c->out, v, 0);
        json_decref(v);
        return rc;
    case N_IF:
        if ((rc = eval(c, x->a, &v)) < 0) return rc;
        rc = truthy(v) ? render_body(c, &x->kids) : render_body(c, &x->alt);
        json_decref(v);
        return rc;
    case N_FOR:
        if (++c->depth > JJ_MAX_DEPTH) return run_fail(x->line, "loops nested too deeply");
        rc = render_for(c, x);
        c->depth--;
        return rc;
    case N_SET:
        if ((rc = eval(c, x->b, &v)) < 0) return rc;
        return assign(c, x->a, v);
    case N_SETBLOCK: {
        sbuf_t saved = c->out;
        memset(&c->out, 0, sizeof c->out);
        rc = render_body(c, &x->kids);
        json_t *s = rc == 0 ? json_stringn(c->out.p ? c->out.p : "", c->out.n) : NULL;
        free(c->out.p);
        c->out = saved;
        if (rc < 0) return rc;
        return s ? assign(c, x->a, s) : rl_fail(RL_ENOMEM, "chat template: out of memory");
    }
    case N_BREAK:
    case N_CONTINUE:
        c->jump = x->kind == N_BREAK ? 1 : 2;
        return 0;
    case N_BLOCK:
        return render_body(c, &x->kids);
    }
    return run_fail(x->line, "not a statement");
}

static int render_body(rctx_t *c, const nodes_t *body) {
    for (size_t i = 0; i < body->n && !c->jump; i++) {
        int rc = render_node(c, body->p[i]);
        if (rc < 0) return rc;
    }
    return 0;
}

int jinja_render(const char *tmpl, const json_t *vars, char **out, size_t *len) {
    if (!tmpl || !json_is_object(vars) || !out || !len)
        return rl_fail(RL_EINVAL, "jinja_render: NULL argument");
    parser_t ps = {0};
    rctx_t c = {0};
    nodes_t top = {0};
    const char *ended = NULL;
    int rc = lex(tmpl, &ps.tv);
    if (rc == 0) rc = parse_body(&ps, &top, NULL, &ended);
    if (rc == 0 && (rc = push_scope(&c)) == 0) {
        json_object_update(c.scope[0], (json_t *)vars);
        if ((rc = push_scope(&c)) == 0) rc = render_body(&c, &top); /* the template's own sets */
    }
    while (c.n_scope) pop_scope(&c);
    free(c.scope);
    free(top.p);
    parser_free(&ps);
    if (rc < 0) {
        free(c.out.p);
        return rc;
    }
    if (!c.out.p && (rc = sb_add(&c.out, "", 0)) < 0) return rc;
    *out = c.out.p;
    *len = c.out.n;
    return 0;
}
