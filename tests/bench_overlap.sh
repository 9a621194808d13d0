#!/usr/bin/env bash
# bench_overlap.sh - the PPO iteration time without and with overlap=one_step_off, on one learner
# process and on two learner shards, on the embedded demo task: `rlhf ppo` on a finished demo
# run's instruct model and reward model with the demo's PPO settings (deploy/demo.yaml: 32
# prompts per iteration, 2 rollout workers, 1 reward worker, the gold judge), ITERS iterations
# per run, the four configurations alternated ROUNDS times so that a change of the machine's
# load falls on all. The sharded runs sum each minibatch step in 8 gradient blocks (grad_blocks
# 8, which S = 2 needs), and so does a third S = 1 configuration for comparison; the default
# step is one block. Prints one markdown table: per configuration the median over every run's
# iterations but the first (models loaded, caches cold) of ms_iteration (commit to commit: the
# loop's wall time per iteration), ms_generate, ms_score and ms_update (each phase's own wall
# time; with overlap the first two run during the update).
# Usage: tests/bench_overlap.sh [BUILD_DIR (build)] [RUN_DIR (runs/demo)] [ITERS (10)] [ROUNDS (2)]
set -euo pipefail
BIN=$(cd "${1:-build}" && pwd)
RUN=$(cd "${2:-runs/demo}" && pwd)
ITERS=${3:-10}
ROUNDS=${4:-2}
for d in sft rm; do
    [ -f "$RUN/$d/model.safetensors" ] || {
        echo "bench_overlap: $RUN/$d is missing: run the demo first (deploy/demo.sh)" >&2
        exit 2
    }
done
W=$(mktemp -d "${TMPDIR:-/tmp}/bench_overlap.XXXXXX")
trap '"$BIN/rlhf" down --data-dir "$W" >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
DEMO=(--policy "$RUN/sft" --rm "$RUN/rm" --prompts "$RUN/task/prompts.jsonl" --batch 32 --gold
    --checkpoint-every 5 --seed 1 --set lr_policy=0.0003 --set lr_value=0.0001 --set kl_coef=0.4)
CONFIGS=(off/1/1 one_step_off/1/1 off/1/8 off/2/8 one_step_off/2/8) # overlap/shards/grad_blocks
for r in $(seq 1 "$ROUNDS"); do
    for c in "${CONFIGS[@]}"; do
        IFS=/ read -r mode S gb <<<"$c"
        "$BIN/rlhf" ppo "${DEMO[@]}" --set overlap="$mode" --set grad_blocks="$gb" \
            --learner-shards "$S" --iterations "$ITERS" --out "$W/${c//\//-}-$r" \
            >"$W/${c//\//-}-$r.log" 2>&1 || {
            echo "bench_overlap: the $c run failed:" >&2
            tail -5 "$W/${c//\//-}-$r.log" >&2
            exit 1
        }
    done
done
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { # col CONFIG FIELD: the median of FIELD over the configuration's runs, first iteration out
    for r in $(seq 1 "$ROUNDS"); do
        jq -r "select(.iteration > 0) | .$2" "$W/${1//\//-}-$r/metrics.jsonl"
    done | median
}
echo "| overlap | learner shards | grad_blocks | ms_iteration | ms_generate | ms_score | ms_update | iterations |"
echo "|---|---|---|---|---|---|---|---|"
for c in "${CONFIGS[@]}"; do
    IFS=/ read -r mode S gb <<<"$c"
    printf '| %s | %s | %s | %.0f | %.0f | %.0f | %.0f | %d x %d |\n' "$mode" "$S" "$gb" \
        "$(col "$c" ms_iteration)" "$(col "$c" ms_generate)" "$(col "$c" ms_score)" \
        "$(col "$c" ms_update)" "$ROUNDS" "$((ITERS - 1))"
done
# the same bits whatever the shards: S = 1 and S = 2 at 8 blocks end with the same policy
for m in off; do
    cmp -s "$W/$m-1-8-1/policy/model.safetensors" "$W/$m-2-8-1/policy/model.safetensors" || {
        echo "bench_overlap: S = 1 and S = 2 ended with different policies" >&2
        exit 1
    }
done
