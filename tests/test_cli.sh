#!/usr/bin/env bash
# test_cli.sh - the `rlhf` commands as a user runs them: init-model, eval-lm, train-lm,
# bench train, --help, and clear errors for bad input. Usage: test_cli.sh PATH/TO/rlhf
set -u
RLHF=${1:?usage: test_cli.sh PATH/TO/rlhf}
W=$(mktemp -d "${TMPDIR:-/tmp}/rlhf-cli-XXXXXX")
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { # check NAME COMMAND...: the command must succeed
    local name=$1; shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
num() { jq -r "$1" <<<"$2"; }
awk_true() { awk "BEGIN { exit !($1) }"; }

# --help on every command, and the top-level list
for c in init-model eval-lm train-lm; do
    check "$c --help" bash -c "'$RLHF' $c --help | grep -q usage"
done
check "bench train --help" bash -c "'$RLHF' bench train --help | grep -q usage"
check "top-level help lists commands" bash -c "'$RLHF' --help | grep -q eval-lm"
"$RLHF" init-model --bogus >/dev/null 2>&1
check "unknown option exits 2" test $? -eq 2
"$RLHF" init-model --out "$W/x" --layers 0 --heads 1 --dim 8 --vocab 10 --ctx 8 2>"$W/err"
check "bad value names the option" grep -q -- "--layers: '0'" "$W/err"
check "... and its range" grep -qF -- "--layers: '0' is not an integer in [1, 1000]" "$W/err"

# --help is generated from the option tables: each option with its default and range
"$RLHF" sft --help >"$W/help"
check "sft --help shows a default and range" grep -qE -- "--steps N +optimizer steps \(default 300; 1\.\.100000000\)" "$W/help"
check "sft --help marks the required options" grep -qE -- "--model DIR +.*\(required\)" "$W/help"
"$RLHF" ppo --help >"$W/help"
check "ppo --help shows the driver's defaults" grep -qE -- "--iterations N +PPO iterations \(default 20; 1\.\.1000000\)" "$W/help"
check "ppo --help lists the PPO settings" grep -qE "^  kl_coef +.*\(default 0\.03\)" "$W/help"
"$RLHF" ppo --policy a --rm b --prompts c --out d --batch 0 2>"$W/err"
check "an out-of-range value exits 2" test $? -eq 2
check "... naming the option and the range" grep -qF -- "rlhf ppo: --batch: '0' is not an integer in [1, 100000]" "$W/err"
"$RLHF" ppo --policy a --rm b --prompts c --out d --set clip_eps=2 2>"$W/err"
check "a PPO setting out of range names the range" grep -qF -- "--set: clip_eps: '2' is not a number in [0, 1]" "$W/err"
"$RLHF" generate --temperature -1 2>"$W/err"
check "generate: out of range" grep -qF -- "--temperature: '-1' is not a number in [0, 100]" "$W/err"

# init-model writes an HF directory
out=$("$RLHF" init-model --out "$W/m0" --layers 2 --heads 2 --dim 32 --vocab 64 --ctx 32 --seed 3)
check "init-model succeeds" test -f "$W/m0/model.safetensors" -a -f "$W/m0/config.json"
check "config.json has the shape" bash -c "jq -e '.n_layer == 2 and .n_embd == 32 and .vocab_size == 64' '$W/m0/config.json' >/dev/null"
check "init-model reports params" test "$(num .params "$out")" -gt 0

# a token file: a repeating pattern over 64 ids, 40 per line
awk 'BEGIN { for (i = 0; i < 2000; i++) printf "%d%s", (i * 7) % 61, (i % 40 == 39) ? "\n" : " " }' >"$W/tok.txt"

# eval-lm on a fresh model: nearly uniform predictions, loss ~ ln 64 = 4.159
e0=$("$RLHF" eval-lm --model "$W/m0" --tokens "$W/tok.txt" --seq 32)
echo "  eval-lm fresh: $e0"
check "fresh loss near ln V" awk_true "$(num .loss "$e0") > 4.0 && $(num .loss "$e0") < 4.3"
# 2000 tokens in windows of 32: 62 full windows (31 scored each) + a 16-token tail (15 scored)
check "scored positions counted per window" test "$(num .tokens "$e0")" -eq $((62 * 31 + 15))
check "ppl = exp(loss)" awk_true "$(num '.ppl - (.loss | exp) | fabs' "$e0") < 1e-3"

# train-lm learns the pattern; eval-lm on the saved model agrees
"$RLHF" train-lm --model "$W/m0" --tokens "$W/tok.txt" --out "$W/m1" --steps 60 --batch 4 \
    --seq 32 --lr 3e-3 --warmup 5 --log-every 20 >"$W/train.jsonl"
check "train-lm succeeds" test $? -eq 0
first=$(head -1 "$W/train.jsonl" | jq .loss)
last=$(grep '"step"' "$W/train.jsonl" | tail -1 | jq .loss)
echo "  train-lm loss $first -> $last"
check "training lowers the loss" awk_true "$last < 0.5 * $first"
e1=$("$RLHF" eval-lm --model "$W/m1" --tokens "$W/tok.txt" --seq 32)
echo "  eval-lm trained: $e1"
check "trained model evaluates lower" awk_true "$(num .loss "$e1") < 0.5 * $(num .loss "$e0")"

# bad input: clear errors naming the file and line
printf '1 2 3\n4 99 5\n' >"$W/bad.txt"
"$RLHF" eval-lm --model "$W/m0" --tokens "$W/bad.txt" 2>"$W/err" >/dev/null
check "out-of-vocab id fails" test $? -ne 0
check "error names file:line" grep -q "bad.txt:2: token id 99" "$W/err"
cp -r "$W/m0" "$W/broken"
truncate -s 1000 "$W/broken/model.safetensors"
"$RLHF" eval-lm --model "$W/broken" --tokens "$W/tok.txt" 2>"$W/err" >/dev/null
check "truncated model fails" test $? -ne 0
check "error names the safetensors file" grep -q "model.safetensors" "$W/err"
"$RLHF" eval-lm --model "$W/nope" --tokens "$W/tok.txt" 2>"$W/err" >/dev/null
check "missing model dir fails clearly" grep -q "nope" "$W/err"

# bench train times both matrix-product backends and the FMA peak in the same run
b=$("$RLHF" bench train --layers 2 --heads 2 --dim 64 --vocab 512 --batch 2 --seq 32 --steps 3)
echo "  bench: $b"
check "bench reports the exact step" awk_true "$(num .gemm.exact.ms_per_step "$b") > 0"
check "bench reports the OpenBLAS step" awk_true "$(num .gemm.openblas.ms_per_step "$b") > 0"
check "bench ratio = exact/openblas" awk_true "$(num '.exact_vs_openblas - .gemm.exact.ms_per_step / .gemm.openblas.ms_per_step | fabs' "$b") < 1e-3"
check "bench fraction = model/peak" awk_true "$(num '.gemm.exact.vs_fma_peak - .gemm.exact.model_gflops / .fma_peak_gflops | fabs' "$b") < 1e-3"
b=$("$RLHF" bench train --layers 2 --heads 2 --dim 64 --vocab 512 --batch 2 --seq 32 --steps 1 --gemm exact)
check "bench --gemm exact times exact alone" test "$(num '.gemm | keys | join(",")' "$b")" = exact
"$RLHF" bench train --layers 2 --heads 2 --dim 64 --vocab 512 --batch 2 --seq 32 --gemm x 2>"$W/err"
check "bench --gemm refuses another name" test $? -eq 2

echo "$pass passed, $fail failed"
test "$fail" -eq 0
