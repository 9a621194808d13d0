#!/usr/bin/env bash
# bench_overlap.sh - the PPO iteration time without and with overlap=one_step_off on the
# embedded demo task: `rlhf ppo` on a finished demo run's instruct model and reward model with
# the demo's PPO settings (deploy/demo.yaml: 32 prompts per iteration, 2 rollout workers, 1
# reward worker, the gold judge), ITERS iterations per run, the two modes alternated ROUNDS
# times so that a change of the machine's load falls on both. Prints one markdown table: per
# mode the median over every run's iterations but the first (models loaded, caches cold) of
# ms_iteration (commit to commit: the loop's wall time per iteration), ms_generate, ms_score and
# ms_update (each phase's own wall time; with overlap the first two run during the update).
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
for r in $(seq 1 "$ROUNDS"); do
    for mode in off one_step_off; do
        "$BIN/rlhf" ppo "${DEMO[@]}" --set overlap=$mode --iterations "$ITERS" \
            --out "$W/$mode-$r" >"$W/$mode-$r.log" 2>&1 || {
            echo "bench_overlap: the $mode run failed:" >&2
            tail -5 "$W/$mode-$r.log" >&2
            exit 1
        }
    done
done
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { # col MODE FIELD: the median of FIELD over the mode's runs, first iteration left out
    for r in $(seq 1 "$ROUNDS"); do jq -r "select(.iteration > 0) | .$2" "$W/$1-$r/metrics.jsonl"; done | median
}
echo "| overlap | ms_iteration | ms_generate | ms_score | ms_update | iterations |"
echo "|---|---|---|---|---|---|"
for mode in off one_step_off; do
    printf '| %s | %.0f | %.0f | %.0f | %.0f | %d x %d |\n' "$mode" "$(col $mode ms_iteration)" \
        "$(col $mode ms_generate)" "$(col $mode ms_score)" "$(col $mode ms_update)" \
        "$ROUNDS" "$((ITERS - 1))"
done
