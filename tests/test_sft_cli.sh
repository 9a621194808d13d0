#!/usr/bin/env bash
# test_sft_cli.sh - the embedded task and supervised fine-tuning as a user runs them:
# `rlhf task` (files, the configured mix, determinism) -> tokenizer-train -> init-model
# --tokenizer -> `rlhf sft` (the loss falls, held-out loss, gold evaluation, saved HF directory,
# determinism), {"text"} data, and clear errors for bad input. Usage: test_sft_cli.sh PATH/TO/rlhf
set -u
RLHF=${1:?usage: test_sft_cli.sh PATH/TO/rlhf}
W=$(mktemp -d "${TMPDIR:-/tmp}/rlhf-sft-XXXXXX")
trap 'rm -rf "$W"' EXIT
# results_of RUN_DIR: the job ends in the journal of that master (a file; its path printed)
results_of() {
    "$(dirname "$RLHF")/rlhf-master" --dump-results "$1" >"$1.results" 2>/dev/null || true
    echo "$1.results"
}
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { # check NAME COMMAND...: the command must succeed
    local name=$1; shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
awk_true() { awk "BEGIN { exit !($1) }"; }

for c in task sft; do
    check "$c --help" bash -c "'$RLHF' $c --help | grep -q usage"
done
"$RLHF" task 2>"$W/err" >/dev/null
check "task without --out exits 2" test $? -eq 2
"$RLHF" task --out "$W/x" --bad-frac 1.5 2>"$W/err" >/dev/null
check "bad --bad-frac names the option" grep -q -- "--bad-frac" "$W/err"

# ---- rlhf task -------------------------------------------------------------------------------
T="$W/task"
out=$("$RLHF" task --out "$T" --seed 3 --prompts 30 --heldout 12 --sft 600 --bad-frac 0.4)
check "task succeeds" test $? -eq 0
echo "  task: $out"
for f in prompts.jsonl prompts_heldout.jsonl sft.jsonl corpus.txt guidelines.md; do
    check "task writes $f" test -s "$T/$f"
done
check "30 prompts" test "$(wc -l <"$T/prompts.jsonl")" -eq 30
check "12 held-out prompts" test "$(wc -l <"$T/prompts_heldout.jsonl")" -eq 12
check "600 demonstrations" test "$(wc -l <"$T/sft.jsonl")" -eq 600
check "prompts have id and rendered prompt" \
    bash -c "jq -e 'has(\"id\") and (.prompt | startswith(\"\n\nHuman: \") and endswith(\"\n\nAssistant:\"))' '$T/prompts.jsonl' | grep -qv false"
check "arithmetic prompts carry their answer as \"reference\", the others none" jq -e -s \
    'all(.[]; if .kind == "arith" then (.reference | test("^[0-9]+$")) else (has("reference") | not) end)
     and any(.[]; .kind == "arith")' "$T/prompts.jsonl"
check "completions start with a space" \
    bash -c "jq -r '.completion[0:1]' '$T/sft.jsonl' | sort -u | tr -d '\n' | grep -qx ' '"
check "the configured mix: 360 good" test "$(jq -c 'select(.style == "good")' "$T/sft.jsonl" | wc -l)" -eq 360
for s in wrong rude rambling off-topic; do
    check "the configured mix: 60 $s" test "$(jq -c "select(.style == \"$s\")" "$T/sft.jsonl" | wc -l)" -eq 60
done
check "held-out prompts are not training prompts" \
    bash -c "! grep -qxF -f <(jq -c .prompt '$T/prompts_heldout.jsonl' | sort -u) <(jq -c .prompt '$T/sft.jsonl' '$T/prompts.jsonl' | sort -u)"
check "guidelines name every criterion" \
    bash -c "grep -q correct '$T/guidelines.md' && grep -q polite '$T/guidelines.md' && grep -q concise '$T/guidelines.md' && grep -q on-topic '$T/guidelines.md'"
"$RLHF" task --out "$W/task_again" --seed 3 --prompts 30 --heldout 12 --sft 600 --bad-frac 0.4 >/dev/null
check "task is deterministic" bash -c "for f in prompts.jsonl prompts_heldout.jsonl sft.jsonl corpus.txt; do cmp -s '$T/'\$f '$W/task_again/'\$f || exit 1; done"
"$RLHF" task --out "$W/task_seed4" --seed 4 --prompts 30 --heldout 12 --sft 600 --bad-frac 0.4 >/dev/null
check "another seed gives other data" bash -c "! cmp -s '$T/sft.jsonl' '$W/task_seed4/sft.jsonl'"
"$RLHF" task --out "$W/task_tmpl" --template "Q: {prompt}\nA:" --prompts 3 --heldout 0 --sft 3 >/dev/null
check "--template is used" bash -c "jq -r .prompt '$W/task_tmpl/prompts.jsonl' | head -1 | grep -q '^Q: '"

# ---- tokenizer and a tiny model --------------------------------------------------------------
"$RLHF" tokenizer-train --corpus "$T/corpus.txt" --vocab-size 400 --out "$W/tok" >/dev/null
check "tokenizer-train on the task corpus" test -s "$W/tok/vocab.json"
"$RLHF" init-model --out "$W/m0" --layers 2 --heads 2 --dim 32 --vocab 400 --ctx 64 --seed 1 \
    --tokenizer "$W/tok" >/dev/null
check "init-model --tokenizer" test -s "$W/m0/merges.txt"
head -40 "$T/sft.jsonl" >"$W/eval.jsonl"

# ---- rlhf sft --------------------------------------------------------------------------------
"$RLHF" sft --model "$W/m0" --data "$T/sft.jsonl" --eval-data "$W/eval.jsonl" --out "$W/s1" \
    --steps 40 --batch 8 --lr 3e-3 --warmup 5 --log-every 1 --eval-every 20 --seed 5 \
    --gold-prompts "$T/prompts_heldout.jsonl" >"$W/sft.jsonl" 2>"$W/err"
check "sft succeeds" test $? -eq 0
cat "$W/err"
check "sft reports its data" test "$(head -1 "$W/sft.jsonl" | jq .examples)" -eq 600
first=$(grep '"step":0,' "$W/sft.jsonl" | jq .loss)
last5=$(grep '"loss"' "$W/sft.jsonl" | tail -5 | jq .loss | jq -s 'add / length')
echo "  sft loss $first -> $last5 (mean of the last 5 steps)"
check "sft lowers the loss by over 1 nat" awk_true "$last5 < $first - 1.0"
check "held-out loss printed twice" test "$(grep -c eval_loss "$W/sft.jsonl")" -eq 2
e1=$(grep eval_loss "$W/sft.jsonl" | head -1 | jq .eval_loss)
e2=$(grep eval_loss "$W/sft.jsonl" | tail -1 | jq .eval_loss)
check "held-out loss falls" awk_true "$e2 < $e1"
g=$(grep gold_mean "$W/sft.jsonl")
check "gold evaluation of 12 samples in [0,1]" \
    bash -c "jq -e '.gold_samples == 12 and .gold_mean >= 0 and .gold_mean <= 1' <<<'$(sed "s/'//g" <<<"$g")' >/dev/null"
for f in config.json model.safetensors vocab.json merges.txt; do
    check "saved $f" test -s "$W/s1/$f"
done
check "the saved model samples" bash -c "'$RLHF' sample --model '$W/s1' --prompt 'x' --max-new-tokens 4 >/dev/null"

# deterministic from --seed
"$RLHF" sft --model "$W/m0" --data "$T/sft.jsonl" --out "$W/d1" --steps 6 --batch 4 --seed 9 >/dev/null
"$RLHF" sft --model "$W/m0" --data "$T/sft.jsonl" --out "$W/d2" --steps 6 --batch 4 --seed 9 >/dev/null
"$RLHF" sft --model "$W/m0" --data "$T/sft.jsonl" --out "$W/d3" --steps 6 --batch 4 --seed 10 >/dev/null
check "same seed, same weights" cmp -s "$W/d1/model.safetensors" "$W/d2/model.safetensors"
check "another seed, other weights" bash -c "! cmp -s '$W/d1/model.safetensors' '$W/d3/model.safetensors'"

# on the learner (--learner-shards S): the same steps as TRAIN jobs through a local master, the
# batches inline with the masked positions as target -1. The learner alone in `rlhf up` gets
# every core, so the in-process reference runs with as many threads.
SFTL=(--model "$W/m0" --data "$T/sft.jsonl" --eval-data "$W/eval.jsonl" --steps 12 --batch 8
    --lr 3e-3 --warmup 5 --log-every 1 --seed 5)
"$RLHF" sft "${SFTL[@]}" --out "$W/l0" --threads "$(nproc)" >"$W/l0.jsonl" 2>"$W/err"
"$RLHF" sft "${SFTL[@]}" --out "$W/l1" --learner-shards 1 --steps-per-job 5 >"$W/l1.jsonl" \
    2>"$W/err"
check "sft --learner-shards 1 succeeds" test $? -eq 0
check "S=1: 3 TRAIN jobs recorded by the master" test "$(jq -r 'select(.status == "done") |
    .job_id' "$(results_of $W/l1.run/cluster)" | sort -u | grep -c .)" -eq 3
check "S=1 on the learner = in process, byte for byte" cmp -s "$W/l0/model.safetensors" \
    "$W/l1/model.safetensors"
check "S=1: the saved directory has the tokenizer" test -s "$W/l1/vocab.json"
"$RLHF" sft "${SFTL[@]}" --out "$W/l2" --learner-shards 2 --steps-per-job 5 >"$W/l2.jsonl" \
    2>"$W/err"
check "sft --learner-shards 2 succeeds" test $? -eq 0
# the shards hold nodes of the tree of each step's 8 gradient blocks; shard 0 combines them as one
# process does: the same bits
check "S=2 = S=1, byte for byte" cmp -s "$W/l1/model.safetensors" "$W/l2/model.safetensors"
check "S=2: the same losses, step by step" test "$(grep '"loss"' "$W/l1.jsonl" | jq -c .loss)" = \
    "$(grep '"loss"' "$W/l2.jsonl" | jq -c .loss)"
check "S=2: the same held-out loss" test "$(grep eval_loss "$W/l1.jsonl" | jq .eval_loss)" = \
    "$(grep eval_loss "$W/l2.jsonl" | jq .eval_loss)"
check "S=2: two shards reported" test "$(grep '"step":0,' "$W/l2.jsonl" | jq .shards)" -eq 2
# the Llama family on shards: ShardStep carries its whole shape (GQA, SwiGLU width, q/k/v biases,
# untied head, RoPE base), so shard 1 builds the model shard 0 has
"$RLHF" init-model --out "$W/q0" --arch qwen2 --layers 2 --heads 4 --kv-heads 2 --dim 32 \
    --inner 88 --vocab 400 --ctx 64 --rope-theta 50000 --seed 2 --tokenizer "$W/tok" \
    >/dev/null 2>"$W/err"
check "init-model --arch qwen2" test $? -eq 0
QL=(--model "$W/q0" --data "$T/sft.jsonl" --steps 6 --batch 8 --lr 3e-3 --log-every 1 --seed 5
    --steps-per-job 3)
"$RLHF" sft "${QL[@]}" --out "$W/q1" --learner-shards 1 >"$W/q1.jsonl" 2>"$W/err"
check "qwen2: sft --learner-shards 1 succeeds" test $? -eq 0
"$RLHF" sft "${QL[@]}" --out "$W/q2" --learner-shards 2 >"$W/q2.jsonl" 2>"$W/err"
check "qwen2: sft --learner-shards 2 succeeds" test $? -eq 0
check "qwen2: S=2 = S=1, byte for byte" cmp -s "$W/q1/model.safetensors" "$W/q2/model.safetensors"
check "qwen2: S=2 trained (the weights moved)" bash -c "! cmp -s '$W/q0/model.safetensors' \
    '$W/q2/model.safetensors'"
check "qwen2: S=2: two shards reported" \
    test "$(grep '"step":0,' "$W/q2.jsonl" | jq .shards)" -eq 2

# {"text"} data: every token is trained on; long texts are cut into windows
jq -c '{text: (.prompt + .completion)}' "$T/sft.jsonl" >"$W/text.jsonl"
"$RLHF" sft --model "$W/m0" --data "$W/text.jsonl" --out "$W/s2" --steps 30 --batch 8 \
    --lr 3e-3 --warmup 5 --log-every 1 >"$W/sft2.jsonl" 2>"$W/err"
check "sft on {\"text\"} succeeds" test $? -eq 0
check "text: every token is a target" \
    bash -c "head -1 '$W/sft2.jsonl' | jq -e '.tokens == .target_tokens + .examples' >/dev/null"
first=$(grep '"step":0,' "$W/sft2.jsonl" | jq .loss)
last5=$(grep '"loss"' "$W/sft2.jsonl" | tail -5 | jq .loss | jq -s 'add / length')
check "text: the loss falls by over 1 nat ($first -> $last5)" awk_true "$last5 < $first - 1.0"
printf '{"text": "%s"}\n' "$(printf 'one two three %.0s' $(seq 40))" >"$W/long.jsonl"
"$RLHF" sft --model "$W/m0" --data "$W/long.jsonl" --out "$W/s3" --steps 2 --batch 2 --seq 16 \
    >"$W/sft3.jsonl" 2>"$W/err"
check "a long text is cut into windows" awk_true "$(head -1 "$W/sft3.jsonl" | jq .examples) > 1"

# ---- bad input -------------------------------------------------------------------------------
head -2 "$T/sft.jsonl" >"$W/bad.jsonl"
echo '{"prompt": "x", "completion": ' >>"$W/bad.jsonl"
"$RLHF" sft --model "$W/m0" --data "$W/bad.jsonl" --out "$W/nope1" --steps 2 >/dev/null 2>"$W/err"
check "malformed JSONL fails" test $? -ne 0
check "error names file:line" grep -q "bad.jsonl:3" "$W/err"
check "no output directory written" test ! -e "$W/nope1"
printf '{"prompt": "a"}\n' >"$W/nocomp.jsonl"
"$RLHF" sft --model "$W/m0" --data "$W/nocomp.jsonl" --out "$W/nope2" --steps 2 >/dev/null 2>"$W/err"
check "a missing completion is named" grep -q "nocomp.jsonl:1: completion" "$W/err"
check "no output directory written (missing field)" test ! -e "$W/nope2"
: >"$W/empty.jsonl"
"$RLHF" sft --model "$W/m0" --data "$W/empty.jsonl" --out "$W/nope3" --steps 2 >/dev/null 2>"$W/err"
check "empty data is refused" grep -q "no examples" "$W/err"
printf '{"prompt": "What is 1 plus 1?", "completion": "%s"}\n' "$(printf ' two%.0s' $(seq 40))" \
    >"$W/longc.jsonl"
"$RLHF" sft --model "$W/m0" --data "$W/longc.jsonl" --out "$W/nope4" --seq 16 --steps 2 >/dev/null 2>"$W/err"
check "a completion longer than --seq is refused" grep -q "longc.jsonl:1: the completion has" "$W/err"
printf '{"prompt": "%s", "completion": " two"}\n' "$(printf 'one %.0s' $(seq 40))" >"$W/longp.jsonl"
"$RLHF" sft --model "$W/m0" --data "$W/longp.jsonl" --out "$W/s4" --seq 16 --steps 1 >"$W/sft4.jsonl" 2>"$W/err"
check "a long prompt is truncated from the left" test "$(head -1 "$W/sft4.jsonl" | jq .truncated)" -eq 1
"$RLHF" sft --model "$W/m0" --data "$T/sft.jsonl" --out "$W/nope5" --seq 65 >/dev/null 2>"$W/err"
check "--seq beyond the context is refused" grep -q "n_positions 64" "$W/err"

echo "$pass passed, $fail failed"
test "$fail" -eq 0
