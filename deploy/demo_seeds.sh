#!/usr/bin/env bash
# demo_seeds.sh - the demo on several seeds, and the table of what each ended with: the gold
# win rate of PPO over SFT, every gold criterion of PPO against SFT, KL, and the reward model's
# held-out accuracy against the consensus and against the gold judge. Each seed runs as
# runs/seed-N (the local cluster of runs/, as the demo; a finished seed is not run again), so
# the figures are those the README states: the same on every x86-64 machine. Another demo config
# (deploy/demo-llama.yaml) runs as runs/NAME-seed-N, NAME its file's name without .yaml.
#   deploy/demo_seeds.sh [BUILD_DIR] [FIRST LAST] [CONFIG]  (default: build 1 8 deploy/demo.yaml)
# Exit status 0 when every seed meets the demo's bar (win rate >= 75 %, no criterion lower
# under PPO than under SFT), 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build}
FIRST=${2:-1}
LAST=${3:-8}
CONFIG=${4:-deploy/demo.yaml}
NAME=$(basename "$CONFIG" .yaml)
PREFIX=runs/seed-
[ "$NAME" = demo ] || PREFIX=runs/$NAME-seed-
for s in $(seq "$FIRST" "$LAST"); do
    [ -s "$PREFIX$s/eval.json" ] && [ -s "$PREFIX$s/rm_eval.json" ] && continue
    echo "== seed $s" >&2
    "$BIN/rlhf" run "$CONFIG" --set seed="$s" --run-dir "$PREFIX$s" >&2
done
echo "| seed | gold win rate | correct | polite | concise | on-topic | KL (nats) | RM acc. (consensus / gold) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
ok=0
for s in $(seq "$FIRST" "$LAST"); do
    jq -r -n --arg s "$s" --slurpfile e "$PREFIX$s/eval.json" --slurpfile r "$PREFIX$s/rm_eval.json" '
        $e[0] as $e | $r[0] as $r |
        def fix($d): (. * pow(10; $d) | round) as $n | ($n | tostring | ("0" * ($d + 1)) + .) as $z
            | "\($n / pow(10; $d) | floor).\($z[($z | length) - $d:])";
        def crit($k): "\($e.criteria_baseline[$k] | fix(3)) → \($e.criteria_policy[$k] | fix(3))";
        "| \($s) | \($e.win_rate * 100 | fix(1)) % | \(crit("correct")) | \(crit("polite")) | \(crit("concise")) | \(crit("on-topic")) | \($e.kl | fix(2)) | \($r.accuracy | fix(3)) / \(($r.accuracy_gold // 0) | fix(3)) |"'
    jq -e -n --slurpfile e "$PREFIX$s/eval.json" '$e[0] as $e | $e.win_rate >= 0.75 and
        ([$e.criteria_policy | keys[] as $k | $e.criteria_policy[$k] >= $e.criteria_baseline[$k]] | all)' \
        >/dev/null || ok=1
done
exit $ok
