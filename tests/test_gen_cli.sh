#!/usr/bin/env bash
# test_gen_cli.sh - tokenizer and generation commands as a user runs them: tokenizer-train,
# init-model --tokenizer (GPT-2 and Qwen3), tokenize/detokenize, eval-lm --text, sample (plain and --json, stop
# strings, determinism, independence of --n), bench generate. Usage: test_gen_cli.sh PATH/TO/rlhf
set -u
RLHF=${1:?usage: test_gen_cli.sh PATH/TO/rlhf}
SRC=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/rlhf-gen-XXXXXX")
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() {
    local name=$1; shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
awk_true() { awk "BEGIN { exit !($1) }"; }

cat "$SRC"/README.md "$SRC"/common/*.h >"$W/corpus.txt"
"$RLHF" tokenizer-train --corpus "$W/corpus.txt" --vocab-size 400 --out "$W/tok" >/dev/null
check "tokenizer-train writes vocab.json and merges.txt" test -s "$W/tok/vocab.json" -a -s "$W/tok/merges.txt"
"$RLHF" init-model --out "$W/m0" --layers 2 --heads 2 --dim 64 --vocab 400 --ctx 64 --seed 1 \
    --tokenizer "$W/tok" >/dev/null
check "init-model --tokenizer copies the tokenizer" cmp -s "$W/tok/vocab.json" "$W/m0/vocab.json"
"$RLHF" init-model --out "$W/small" --layers 1 --heads 1 --dim 8 --vocab 300 --ctx 8 \
    --tokenizer "$W/tok" 2>"$W/err" >/dev/null
check "a tokenizer larger than --vocab is refused" grep -q "400 ids but --vocab is 300" "$W/err"

# round trip of the corpus through tokenize / detokenize
"$RLHF" tokenize --model "$W/m0" <"$W/corpus.txt" >"$W/ids.txt"
"$RLHF" detokenize --model "$W/m0" <"$W/ids.txt" >"$W/back.txt"
check "tokenize | detokenize gives the exact bytes" cmp -s "$W/corpus.txt" "$W/back.txt"
tr ' ' '\n' <"$W/ids.txt" | sed '/^$/d' >"$W/ids1.txt"

# eval-lm --text equals eval-lm --tokens of the same text
a=$("$RLHF" eval-lm --model "$W/m0" --text "$W/corpus.txt" --seq 64 | jq .loss)
b=$("$RLHF" eval-lm --model "$W/m0" --tokens "$W/ids1.txt" --seq 64 | jq .loss)
check "eval-lm --text equals --tokens ($a)" test "$a" = "$b"

# a model that has learned the corpus a little, so samples are not uniform noise
"$RLHF" train-lm --model "$W/m0" --tokens "$W/ids1.txt" --out "$W/m" --steps 60 --batch 8 \
    --seq 64 --lr 3e-3 --log-every 1000 >/dev/null
s1=$("$RLHF" sample --model "$W/m" --prompt "The model" --temperature 0 --max-new-tokens 20 --json)
s2=$("$RLHF" sample --model "$W/m" --prompt "The model" --temperature 0 --max-new-tokens 20 --json)
check "sample succeeds on a trained model (tokenizer carried over)" test -n "$s1" -a -f "$W/m/vocab.json"
check "greedy sampling is deterministic" test "$s1" = "$s2"
check "--json has text, tokens and both logprob lists" bash -c "jq -e '(.tokens | length) == 20 and (.logprobs | length) == 20 and (.logprobs_model | length) == 20 and (.text | type) == \"string\" and .finish == \"length\"' <<<'$s1' >/dev/null"
check "greedy logprobs are 0" bash -c "jq -e 'all(.logprobs[]; . == 0)' <<<'$s1' >/dev/null"
# sample i does not depend on how many samples are drawn
one=$("$RLHF" sample --model "$W/m" --prompt "The model" --n 1 --seed 9 --max-new-tokens 15 --json | jq -c .tokens)
three=$("$RLHF" sample --model "$W/m" --prompt "The model" --n 3 --seed 9 --max-new-tokens 15 --json)
check "--n 3 prints three samples" test "$(wc -l <<<"$three")" -eq 3 -a -n "$one"
check "sample 0 of --n 3 equals --n 1" test "$one" = "$(head -1 <<<"$three" | jq -c .tokens)"
check "the three samples differ" test "$(jq -c .tokens <<<"$three" | sort -u | wc -l)" -eq 3
other=$("$RLHF" sample --model "$W/m" --prompt "The model" --n 1 --seed 10 --max-new-tokens 15 --json | jq -c .tokens)
check "another seed, another sample" test "$one" != "$other"
# top-k 1 is greedy
k1=$("$RLHF" sample --model "$W/m" --prompt "The model" --top-k 1 --seed 4 --max-new-tokens 20 --json | jq -c .tokens)
check "top-k 1 equals greedy" test "$k1" = "$(jq -c .tokens <<<"$s1")"
# a stop string ends the sample once the text contains it
txt=$(jq -r '.text + "|"' <<<"$s1") # the sentinel keeps trailing newlines
txt=${txt%|}
stop=${txt:3:2} # 20 tokens are at least 20 bytes
if [ -n "$stop" ]; then
    "$RLHF" sample --model "$W/m" --prompt "The model" --temperature 0 --max-new-tokens 20 \
        --stop "$stop" --json >"$W/stop.json"
    check "stop string ends the sample" jq -e '.finish == "stop" and (.tokens | length) < 20' "$W/stop.json"
    check "the stopped text contains the stop string" \
        jq -e --arg s "$stop" '.text | contains($s)' "$W/stop.json"
else
    bad "greedy sample too short to pick a stop string"
fi
# a model vocabulary padded past the tokenizer's: samples stay within the tokenizer's ids
"$RLHF" init-model --out "$W/padded" --layers 1 --heads 2 --dim 32 --vocab 512 --ctx 64 \
    --tokenizer "$W/tok" >/dev/null
"$RLHF" sample --model "$W/padded" --prompt "The model" --n 4 --max-new-tokens 30 --json \
    >"$W/padded.jsonl"
check "padded vocabulary: 4 samples decoded" test "$(wc -l <"$W/padded.jsonl")" -eq 4
check "padded vocabulary: every id below the tokenizer's 400" \
    jq -se 'all(.[].tokens[]; . < 400)' "$W/padded.jsonl"
"$RLHF" sample --model "$W/m" --prompt "x" --top-p 0 2>"$W/err" >/dev/null
check "bad --top-p names the option" grep -q -- "--top-p" "$W/err"
"$RLHF" sample --model "$W/nope" --prompt "x" 2>"$W/err" >/dev/null
check "missing model fails clearly" grep -q "nope" "$W/err"

# the Llama family through the same commands: a Qwen3-style model (GQA, q/k norms, q/k/v biases,
# tied embeddings) saved in BF16 shards, trained, sampled
"$RLHF" init-model --out "$W/q3" --arch qwen3 --layers 2 --heads 4 --kv-heads 2 --head-dim 12 \
    --dim 32 --inner 64 --tie --vocab 400 --ctx 64 --seed 2 --tokenizer "$W/tok" --dtype bf16 \
    --shard-bytes 40000 >/dev/null
check "init-model --arch qwen3 writes shards and an index" test -s "$W/q3/model.safetensors.index.json" -a "$(jq '[.weight_map[]] | unique | length' "$W/q3/model.safetensors.index.json")" -ge 2
check "its config.json is Qwen3's" jq -e '.model_type == "qwen3" and .architectures[0] == "Qwen3ForCausalLM" and .num_key_value_heads == 2 and .head_dim == 12 and .tie_word_embeddings == true and .torch_dtype == "bfloat16"' "$W/q3/config.json"
"$RLHF" train-lm --model "$W/q3" --tokens "$W/ids1.txt" --out "$W/q3t" --steps 30 --batch 8 \
    --seq 64 --lr 3e-3 --log-every 1 >"$W/q3.log"
check "train-lm lowers a qwen3 model's loss" jq -se '.[-2].loss < .[0].loss - 0.3' "$W/q3.log"
q1=$("$RLHF" sample --model "$W/q3t" --prompt "The model" --temperature 0 --max-new-tokens 12 --json)
q2=$("$RLHF" sample --model "$W/q3t" --prompt "The model" --temperature 0 --max-new-tokens 12 --json)
check "greedy sampling of a qwen3 model is deterministic" test -n "$q1" -a "$q1" = "$q2"
"$RLHF" init-model --out "$W/bad" --layers 1 --heads 3 --kv-heads 2 --dim 12 --vocab 400 \
    --ctx 8 --arch llama 2>"$W/err" >/dev/null
check "kv heads that do not divide the heads are refused" grep -q "num_key_value_heads" "$W/err"

b=$("$RLHF" bench generate --layers 2 --heads 2 --dim 64 --vocab 400 --batch 4 --prompt-len 8 --new 8)
echo "  bench: $b"
check "bench generate reports decode rates and the bound" bash -c "jq -e '.single_decode_tokens_per_s > 0 and .batch_decode_tokens_per_s > 0 and .bandwidth_bound_tokens_per_s > 0 and .read_gbps > 0' <<<'$b' >/dev/null"
check "bench generate reports the packing and the compute bound of its kernel" bash -c "jq -e '.pack_ms >= 0 and (.kernel | IN(\"c\", \"avx2\", \"avx512f\")) and (.kernel == \"c\" or (.fma_peak_gflops > 0 and .compute_bound_tokens_per_s > 0 and .batch_vs_fma_peak > 0))' <<<'$b' >/dev/null"

echo "$pass passed, $fail failed"
test "$fail" -eq 0
