/*
 * jinja.h - the subset of Jinja that chat templates (tokenizer_config.json "chat_template") are
 * written in, rendered over JSON values.
 *
 * Hand-written because no C library in Debian renders Jinja. It renders templates as Hugging Face's
 * apply_chat_template does: Jinja2 with trim_blocks and lstrip_blocks, a single trailing newline
 * of the template dropped, Python's semantics for strings, lists and dicts.
 *
 * The subset: text, {{ expr }}, {# comments #}, whitespace control (-), {% if/elif/else %},
 * {% for x[, y] in expr [if cond] %} with {% else %}, loop.index/index0/first/last/length/
 * revindex/revindex0/previtem/nextitem, {% break %} / {% continue %}, {% set x = expr %},
 * {% set ns.attr = expr %}, {% set x %}...{% endset %}. Expressions: literals (strings,
 * numbers, true/false/none in either case, lists, dicts, tuples), names, .attr and [key], slices
 * [a:b:c], calls, filters (|name or |name(args)), tests (is [not] name), not/and/or, in/not in,
 * == != < > <= >=, + - * / // % ~, unary -, "a if c else b". Functions: namespace(), range(),
 * raise_exception(msg), strftime_now(fmt) (local time, as transformers does). Methods: on
 * strings strip/lstrip/rstrip/split/startswith/endswith/upper/lower/replace/title/capitalize/
 * count/find/join; on dicts get/items/keys/values. Filters: trim, length/count, tojson
 * (indent), upper, lower, title, capitalize, string, int, float, abs, first, last, join,
 * default/d, list, reverse, replace, safe, items, map (attribute= or a filter), select, reject,
 * selectattr, rejectattr. Tests: defined, undefined, none, string, number, integer, float,
 * boolean, true, false, mapping, sequence, iterable, odd, even, equalto/eq/sameas, in.
 *
 * Not supported (an error naming it): macros, call blocks, includes, extends, the % operator on
 * strings, filters and tests outside the lists above (an error only when the template reaches
 * them: a template parses whatever its untaken branches use).
 */
#ifndef RLHF_JINJA_H
#define RLHF_JINJA_H

#include <jansson.h>
#include <stddef.h>

/*
 * Renders the NUL-terminated template tmpl with the variables of vars (a JSON object, borrowed)
 * into a malloc'ed NUL-terminated *out of *len bytes (caller frees). Returns 0; RL_EFORMAT for a
 * syntax error (the detail names the line); RL_EUNSUPPORTED for a construct outside the subset;
 * RL_EINVAL for a runtime error or raise_exception() (the detail carries its message); RL_ENOMEM.
 */
int jinja_render(const char *tmpl, const json_t *vars, char **out, size_t *len);

#endif
