#!/usr/bin/env bash
# bench_ppo_shards.sh - PPO iteration time with the update on 1 and on 2 learner shards, at the
# demo's shapes: policy and value model of 2 layers, 4 heads, 128 dims, context 64, vocabulary
# 512 (deploy/demo.yaml), 32 prompts per iteration, 24 new tokens, minibatches of 8, 4 epochs;
# a constructed reward (a token's count) instead of a reward model, so that nothing but the PPO
# loop is timed. Each minibatch step's gradient is in 8 blocks (grad_blocks=8) for both S, which
# give the same bits (the script checks it); grad_blocks=1, the default, is the one-block step of
# an unsharded learner. Prints the median ms_iteration, ms_update and ms_update_math over the
# iterations after the first, per configuration, as a Markdown table.
# The learner's log ("updated on 2 shards in T ms (sending, own nodes, waiting, combining)")
# and the shard's are copied to $BENCH_LOG when it is set.
# Usage: bench_ppo_shards.sh BIN_DIR [ITERATIONS (default 12)]
BIN=$(cd "${1:?usage: bench_ppo_shards.sh BIN_DIR [ITERATIONS]}" && pwd)
N=${2:-12}
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1

words=(hello world what is two plus three name a fruit apple please thanks banana red green
    blue seven eight nine ten eleven count letters word answer question short long polite)
for i in $(seq 1 400); do
    echo "${words[$((i % 30))]} ${words[$((i * 7 % 30))]} ${words[$((i * 11 % 30))]} $i $((i * 37))"
done >corpus.txt
"$R" tokenizer-train --corpus corpus.txt --vocab-size 512 --out tok >/dev/null
"$R" init-model --tokenizer tok --layers 2 --heads 4 --dim 128 --vocab 512 --ctx 64 --out pol >/dev/null
"$R" init-model --tokenizer tok --layers 2 --heads 4 --dim 128 --vocab 512 --ctx 64 --scalar-head \
    --seed 2 --out val >/dev/null
for i in $(seq 1 64); do echo "{\"prompt\":\"what is $i plus ${words[$((i % 30))]}\"}"; done >prompts.jsonl

COMMON=(--policy pol --rm val --prompts prompts.jsonl --batch 32 --max-new 24 --iterations "$N"
    --reward-count-token 97 --rollout 2 --set lr_policy=3e-4 --set lr_value=1e-4)
run() { # run OUT S GRAD_BLOCKS
    "$R" ppo "${COMMON[@]}" --set grad_blocks="$3" --learner-shards "$2" --out "$1" >/dev/null 2>"$1.err" ||
        { cat "$1.err" >&2; exit 1; }
}
run b1 1 1
run s1 1 8
run s2 2 8
[ -n "${BENCH_LOG:-}" ] && cat .cluster/worker-learner-*.log .cluster/worker-shard-*.log >"$BENCH_LOG" 2>/dev/null; "$R" down --data-dir . >/dev/null

median() { jq -s "[.[1:][] | .$2] | sort | .[length / 2 | floor] | . * 10 | round / 10" "$1/metrics.jsonl"; }
echo "| learner | grad_blocks | ms_iteration | ms_update | ms_update_math |"
echo "| --- | --- | --- | --- | --- |"
for c in "b1 1 1" "s1 1 8" "s2 2 8"; do
    set -- $c
    echo "| S = $2 | $3 | $(median "$1" ms_iteration) | $(median "$1" ms_update) | $(median "$1" ms_update_math) |"
done
cmp -s s1/policy/model.safetensors s2/policy/model.safetensors &&
    cmp -s s1/learner/ppo-ckpt-$(printf %010d "$N")/value/model.safetensors \
        s2/learner/ppo-ckpt-$(printf %010d "$N")/value/model.safetensors &&
    echo "S = 1 and S = 2 (grad_blocks 8): byte-identical policy and value model" ||
    { echo "S = 1 and S = 2 differ" >&2; exit 1; }
