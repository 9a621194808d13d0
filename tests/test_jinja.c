/*
 * test_jinja.c - the Jinja-subset renderer against Python's Jinja2 as transformers configures it
 * (trim_blocks, lstrip_blocks, loop controls, its tojson): each case's expected text is what
 * Jinja2 3.1 renders ({% generation %} is transformers' own extension). test_tok_hf.sh
 * checks whole chat templates against @huggingface/jinja; these are the cases where that
 * renderer departs from Python (booleans print as True/False, strip() takes an argument, length
 * counts code points), the whitespace rules, loop scoping, and the errors.
 */
#include "nn/jinja.h"
#include "test.h"

#include <stdint.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(uint32_t n) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

/* Renders tmpl with vars (JSON text) and compares with want. */
static void renders(const char *tmpl, const char *vars, const char *want, int line) {
    json_error_t je;
    json_t *v = json_loads(vars, 0, &je);
    char *out = NULL;
    size_t len = 0;
    if (!v) {
        TEST__FAIL("(line %d) bad vars: %s", line, je.text);
        return;
    }
    int rc = jinja_render(tmpl, v, &out, &len);
    if (rc < 0)
        TEST__FAIL("(line %d) render failed: %s", line, rl_errmsg());
    else if (strcmp(out, want) || len != strlen(want))
        TEST__FAIL("(line %d) rendered \"%s\", want \"%s\"", line, out, want);
    free(out);
    json_decref(v);
}
#define RENDERS(tmpl, vars, want) renders(tmpl, vars, want, __LINE__)

/* Rendering must fail with code and a message containing want. */
static void fails(const char *tmpl, int code, const char *want, int line) {
    json_t *v = json_object();
    char *out = NULL;
    size_t len = 0;
    int rc = jinja_render(tmpl, v, &out, &len);
    if (rc != code || !strstr(rl_errmsg(), want))
        TEST__FAIL("(line %d) want failure %d with \"%s\", got %d \"%s\" (%s)", line, code, want,
                   rc, rl_errmsg(), out ? out : "");
    free(out);
    json_decref(v);
}
#define FAILS(tmpl, code, want) fails(tmpl, code, want, __LINE__)

static void test_text_and_whitespace(void) {
    RENDERS("Hello {{ name }}!", "{\"name\": \"W\"}", "Hello W!");
    RENDERS("", "{}", "");
    RENDERS("a  {{- 'b' -}}  c", "{}", "abc");
    RENDERS("a \n {%- if true -%} \n b {%- endif %}", "{}", "ab");
    /* trim_blocks + lstrip_blocks: block lines vanish, expression lines do not */
    RENDERS("x\n  {% if true %}\n  y\n  {% endif %}\nz", "{}", "x\n  y\nz");
    RENDERS("a {% if true %}b{% endif %}", "{}", "a b"); /* not at the start of a line */
    RENDERS("  {{ 1 }}\n", "{}", "  1");                 /* one trailing newline is dropped */
    RENDERS("a\n\n", "{}", "a\n");
    RENDERS("a{# note #}b\n{# own line #}\nc", "{}", "ab\nc");
    RENDERS("{%+ if true %}x{% endif %}", "{}", "x");
    RENDERS("{{ 'a\\nb' }}|{{ \"it's\" }}|{{ 'x' 'y' }}", "{}", "a\nb|it's|xy");
}

static void test_python_values(void) {
    RENDERS("{{ true }} {{ false }} {{ none }} {{ 1 == 1 }} {{ True }}", "{}",
            "True False None True True");
    RENDERS("[{{ nothing }}]", "{}", "[]");
    RENDERS("{{ ['a', 1, none] }} {{ {'k': 'v'} }} {{ \"it's\" ~ [\"it's\"] }}", "{}",
            "['a', 1, None] {'k': 'v'} it's[\"it's\"]");
    RENDERS("{{ 3.0 }} {{ 0.1 + 0.2 }} {{ 7 / 2 }} {{ 1e3 if false else 2.5 }}", "{}",
            "3.0 0.30000000000000004 3.5 2.5");
    RENDERS("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 'ab' * 2 }} "
            "{{ 1 ~ 2 }} {{ -3 + 10 * 2 }} {{ (1 + 2) * 3 }}",
            "{}", "3 -4 1 2 1024 abab 12 17 9");
    RENDERS("{{ 'y' if 0 else 'n' }}{{ 0 or 'z' }}{{ 1 and 'w' }}{{ 'v' if 1 }}[{{ 'u' if 0 }}]",
            "{}", "nzwv[]");
    RENDERS("{{ 'b' in 'abc' }}{{ 2 not in [1, 2] }}{{ 'k' in {'k': 1} }}{{ not 'k' in {} }}", "{}",
            "TrueFalseTrueTrue");
    RENDERS("{{ 1 < 2 }}{{ 'b' >= 'a' }}{{ 2 != 2.0 }}{{ [1] == [1] }}", "{}", "TrueTrueFalseTrue");
}

static void test_strings_and_filters(void) {
    RENDERS("{{ '--a--'.strip('-') }}|{{ 'xxaxx'.lstrip('x') }}|{{ 'xxaxx'.rstrip('x') }}|"
            "{{ ' \\t a \\n'.strip() }}|{{ '\\n\\nx\\n'.lstrip('\\n') }}",
            "{}", "a|axx|xxa|a|x\n");
    RENDERS("{{ 'h\xc3\xa9llo\xf0\x9f\x98\x80' | length }} {{ 'h\xc3\xa9llo'[1] }} "
            "{{ 'h\xc3\xa9llo'[-4:-2] }}",
            "{}", "6 \xc3\xa9 \xc3\xa9l");
    RENDERS("{{ 'a b  c'.split() | length }} {{ 'a,b,c'.split(',', 1)[1] }} "
            "{{ 'x</think>y</think>z'.split('</think>')[-1] }} {{ '  a  b '.split(none, 1)[1] }}",
            "{}", "3 b,c z b ");
    RENDERS("{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('bc') }}{{ 'abc'.startswith('c') }} "
            "{{ 'Hello World'.lower() }} {{ 'hi'.upper() }} {{ 'a-b-c'.replace('-', '+') }} "
            "{{ 'banana'.count('an') }} {{ 'banana'.find('n') }} {{ '-'.join(['a', 'b']) }}",
            "{}", "TrueTrueFalse hello world HI a+b+c 2 2 a-b");
    RENDERS(
        "{{ '  x ' | trim }}|{{ 'hello world' | title }}|{{ 'hEllo' | capitalize }}|"
        "{{ [3, 1] | first }}|{{ [3, 1] | last }}|{{ 'abc' | reverse }}|{{ x | default('d') }}|"
        "{{ '' | default('e', true) }}|{{ [1, 2] | join('+') }}|{{ 'a_b' | replace('_', ' ') }}|"
        "{{ '7' | int + 1 }}|{{ -2 | abs }}|{{ 'x' | string }}{{ 5 | string }}|{{ [2, 1] | "
        "reverse | list }}",
        "{}", "x|Hello World|Hello|3|1|cba|d|e|1+2|a b|8|2|x5|[1, 2]");
    RENDERS("{{ {'a': [1, 'x', none, true], 'b': {'c': 'é'}} | tojson }}|{{ [1] | tojson(indent=2) "
            "}}",
            "{}", "{\"a\": [1, \"x\", null, true], \"b\": {\"c\": \"é\"}}|[\n  1\n]");
    RENDERS("{{ s | tojson }}", "{\"s\": \"x\\u0001\\u001f\\u2028\\\"\\\\u\"}",
            "\"x\\u0001\\u001f\xe2\x80\xa8\\\"\\\\u\"");
    RENDERS(
        "{{ [1, 2, 3, 4, 5][::-2] | join(',') }} {{ 'abcdef'[-3:] }} {{ [1, 2, 3][5:] | length }} "
        "{{ [1, 2, 3][1:] }} {{ 'abc'[::-1] }} {{ [1, 2, 3][-1] }} {{ [1, 2, 3].0 }}",
        "{}", "5,3,1 def 0 [2, 3] cba 3 1");
    RENDERS("{{ ['a', 'code', 'b'] | reject('equalto', 'code') | join(', ') }}|"
            "{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [0, 1, '', 'x'] | select | list }}|"
            "{{ m | map(attribute='role') | join(',') }}|{{ ['a', 'B'] | map('upper') | list }}|"
            "{{ m | selectattr('role', 'equalto', 'user') | list | length }}|"
            "{{ m | rejectattr('tool') | map(attribute='role') | list }}",
            "{\"m\": [{\"role\": \"user\"}, {\"role\": \"tool\", \"tool\": 1}, {\"role\": "
            "\"user\"}]}",
            "a, b|[1, 3]|[1, 'x']|user,tool,user|['A', 'B']|2|['user', 'user']");
    RENDERS("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}{{ v }}{% endfor %}"
            "{{ {'a': 1}.get('b', 'd') }}{{ {'a': 1}.get('a') }}{{ {'a': 1}.keys() | list }}",
            "{}", "a1b2d1['a']");
}

static void test_tests_and_statements(void) {
    RENDERS("{{ x is defined }}{{ x is not defined }}{{ none is none }}{{ 'a' is string }}"
            "{{ 3 is number }}{{ 3 is odd }}{{ {} is mapping }}{{ [] is sequence }}"
            "{{ false is false }}{{ 1 is true }}{{ m.a is defined }}{{ 2 is equalto 2 }}",
            "{\"m\": {\"a\": null}}", "FalseTrueTrueTrueTrueTrueTrueTrueTrueFalseTrueTrue");
    RENDERS("{% set x = 1 %}{% for i in [5] %}{% set x = i %}{{ x }}{% endfor %}{{ x }}", "{}",
            "51");
    RENDERS("{% set ns = namespace(n=0, s='') %}{% for i in range(4) %}{% set ns.n = ns.n + i %}"
            "{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}",
            "{}", "6 0123");
    RENDERS("{% for c in 'ab' %}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.revindex0 }}"
            "{{ loop.length }}{% endfor %}",
            "{}", "1TrueFalse122FalseTrue02");
    RENDERS("{% for x in [] %}a{% else %}empty{% endfor %}", "{}", "empty");
    RENDERS("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{{ loop.length }}{% endfor %}", "{}",
            "2242");
    RENDERS("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}"
            "{% break %}{% endif %}{{ i }}{% endfor %}{{ range(2, 8, 3) | join(',') }}",
            "{}", "022,5");
    RENDERS("{% set s %}x{{ 1 }}{% endset %}[{{ s }}]", "{}", "[x1]");
    RENDERS("{% if a %}1{% elif b %}2{% elif c %}3{% else %}4{% endif %}",
            "{\"a\": 0, \"b\": \"\", \"c\": [1]}", "3");
    RENDERS("{% for m in messages %}{% if loop.index0 == 0 %}{{ bos }}{% endif %}"
            "{{ m['role'] | upper }}:{{ m.content | trim }};{% endfor %}",
            "{\"bos\": \"<s>\", \"messages\": [{\"role\": \"user\", \"content\": \" hi \"}, "
            "{\"role\": \"assistant\", \"content\": \"yo\\n\"}]}",
            "<s>USER:hi;ASSISTANT:yo;");
    RENDERS("{% generation %}kept{% endgeneration %}", "{}", "kept");
    RENDERS("{{ strftime_now is defined }}{{ namespace is defined }}", "{}", "TrueTrue");
}

static void test_errors(void) {
    FAILS("{{ raise_exception('boom: ' ~ 2) }}", RL_EINVAL, "raise_exception: boom: 2");
    FAILS("{% macro f() %}{% endmacro %}", RL_EUNSUPPORTED, "{% macro %} is not supported");
    FAILS("{{ 'x' | frobnicate }}", RL_EUNSUPPORTED, "filter 'frobnicate'");
    FAILS("{{ 1 is frobnicated }}", RL_EUNSUPPORTED, "test 'frobnicated'");
    FAILS("line1\n{% if %}", RL_EFORMAT, "line 2: expected an expression");
    FAILS("{% if true %}x", RL_EFORMAT, "missing {% endif %}");
    FAILS("{% for x in y %}", RL_EFORMAT, "missing {% endfor %}");
    FAILS("{{ 1 + 'a' }}", RL_EINVAL, "unsupported operand types for +: int and string");
    FAILS("{{ 'a ", RL_EFORMAT, "unterminated string");
    FAILS("{{ 1 ", RL_EFORMAT, "unclosed tag");
    FAILS("{# x", RL_EFORMAT, "unclosed comment");
    FAILS("{{ 1 / 0 }}", RL_EINVAL, "division by zero");
    FAILS("{{ 3 | length }}", RL_EINVAL, "has no length");
    FAILS("{{ x.y() }}", RL_EINVAL, "has no method y()");
    FAILS("{{ nope() }}", RL_EINVAL, "nope is not a function");
    FAILS("{% set n = 1 %}{% set n.a = 2 %}", RL_EINVAL, "n is not a namespace");
    FAILS("{{ 1 $ 2 }}", RL_EFORMAT, "unexpected character '$'");
    FAILS("{% endif %}", RL_EUNSUPPORTED, "{% endif %} is not supported");
    /* nesting is bounded, not a stack overflow */
    char deep[2000] = "{{ ";
    for (int i = 0; i < 600; i++) strcat(deep, "(");
    strcat(deep, "1");
    for (int i = 0; i < 600; i++) strcat(deep, ")");
    strcat(deep, " }}");
    FAILS(deep, RL_EFORMAT, "nested too deeply");
    json_t *v = json_object();
    char *out = NULL;
    size_t len;
    CHECK_ERR(jinja_render(NULL, v, &out, &len), RL_EINVAL);
    CHECK_ERR(jinja_render("x", NULL, &out, &len), RL_EINVAL);
    json_decref(v);
}

/* Random edits of a template that uses most of the subset: every result must be a rendering or
 * an error with a message, never a crash (the sanitizer build runs this too). */
static void test_mutations_fail_cleanly(void) {
    static const char base[] =
        "{%- set ns = namespace(n=0, last=messages|length - 1) %}\n"
        "{%- for m in messages[::-1] if m.role != 'tool' %}{% set ns.n = ns.n + loop.index0 %}"
        "{%- if m.content is string and m.content.startswith('<think>') %}"
        "{{ m.content.split('</think>')[-1].lstrip('\\n') }}{% elif m.role == 'user' %}"
        "{{- '<|im_start|>' ~ m.role ~ '\\n' + m.content | trim + '<|im_end|>' -}}"
        "{% else %}{{ m | tojson(indent=2) }}{% endif %}{% endfor %}\n"
        "{# comment #}{{ ns.n if ns.n > 2 else {'a': [1, 2.5, none]}['a'][1:] }}"
        "{% if add_generation_prompt %}{{ raise_exception('x') if false }}{% endif %}";
    static const char *const bits[] = {
        "{%", "%}", "{{", "}}", "{#",   "#}",     "-",       "(",     ")",    "[",        "]",
        "{",  "}",  "'",  "\"", " if ", " else ", " endif ", " for ", " in ", " endfor ", ".",
        "|",  ",",  ":",  "~",  "not ", " is ",   "=",       "\\",    "\n",   "loop",     "ns"};
    json_error_t je;
    json_t *v = json_loads("{\"add_generation_prompt\": true, \"messages\": [{\"role\": "
                           "\"user\", \"content\": \" hi \"}, {\"role\": \"assistant\", "
                           "\"content\": \"<think>\\nr\\n</think>\\n\\nok\"}, {\"role\": "
                           "\"tool\", \"content\": {\"k\": 1}}]}",
                           0, &je);
    CHECK(v != NULL);
    char *out = NULL;
    size_t len = 0;
    CHECK_OK(jinja_render(base, v, &out, &len));
    free(out);
    int ok = 0, failed = 0;
    for (int iter = 0; iter < 3000 && v; iter++) {
        char t[sizeof base + 256];
        strcpy(t, base);
        for (int e = (int)rnd(4) + 1; e > 0; e--) {
            size_t n = strlen(t), at = rnd((uint32_t)n + 1);
            if (rnd(2)) { /* delete a few characters */
                size_t k = rnd(6) + 1;
                if (at + k > n) k = n - at;
                memmove(t + at, t + at + k, n - at - k + 1);
            } else if (n + 16 < sizeof t) { /* insert a piece of syntax */
                const char *b = bits[rnd(sizeof bits / sizeof *bits)];
                size_t k = strlen(b);
                memmove(t + at + k, t + at, n - at + 1);
                memcpy(t + at, b, k);
            }
        }
        out = NULL;
        rl_err_clear();
        int rc = jinja_render(t, v, &out, &len);
        if (rc == 0) {
            ok++;
            if (!out || strlen(out) != len) TEST__FAIL("rendered without a proper text: %s", t);
        } else {
            failed++;
            if (out || !*rl_errmsg()) TEST__FAIL("failed (%d) without a message: %s", rc, t);
        }
        free(out);
    }
    printf("  %d mutated templates rendered, %d refused\n", ok, failed);
    CHECK(ok > 0 && failed > 0);
    json_decref(v);
}

int main(void) {
    RUN(test_text_and_whitespace);
    RUN(test_python_values);
    RUN(test_strings_and_filters);
    RUN(test_tests_and_statements);
    RUN(test_errors);
    RUN(test_mutations_fail_cleanly);
    return TEST_REPORT();
}
