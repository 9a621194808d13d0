#!/usr/bin/env bash
# test_demo_llama.sh - deploy/demo-llama.yaml, the whole pipeline on a tiny Llama-architecture
# model trained from scratch, as a user runs it (`rlhf run`, its own local cluster): every stage
# finishes, PPO clears the demo's bar over SFT on the gold judge (win rate >= 75 %, no gold
# criterion lower), and the three models are the bits the README states (the run is exact: the
# same on every x86-64 machine with FMA, whatever the kernel or thread count).
# Usage: test_demo_llama.sh BIN_DIR
BIN=${1:?usage: test_demo_llama.sh BIN_DIR}
BIN=$(cd "$BIN" && pwd)
SRC=$(cd "$(dirname "$0")" && pwd)
source "$SRC/runtime_lib.sh"
cd "$W"
t0=$(date +%s)
"$BIN/rlhf" run "$SRC/../deploy/demo-llama.yaml" --run-dir "$W/run" >run.out 2>run.err
rc=$?
t1=$(date +%s)
check "rlhf run deploy/demo-llama.yaml succeeds ($((t1 - t0)) s)" test $rc -eq 0
[ $rc -eq 0 ] || tail -20 run.err
check "every stage finished" test "$(ls run/stages/*.json 2>/dev/null | wc -l)" -eq 13
check "gold win rate of PPO over SFT >= 75 %" jq -e '.win_rate >= 0.75' run/eval.json
check "no gold criterion lower under PPO than under SFT" jq -e '[.criteria_policy | keys[] as $k
    | .criteria_policy[$k] >= .criteria_baseline[$k]] | all' run/eval.json
check "the report is written" test -s run/report.md
# the README's hashes (Demo figures, the Llama-architecture demo)
want=$(awk '/^<!-- demo-llama hashes -->$/ { f = 1; next } f && /^```$/ { if (++n == 2) exit; next }
    f && n == 1' "$SRC/../README.md")
check "the README states the demo's hashes" test "$(grep -c . <<<"$want")" -eq 3
got=$(cd "$W" && sha256sum run/sft/model.safetensors run/rm/model.safetensors \
    run/ppo/policy/model.safetensors | sed 's|  run/|  runs/demo-llama/|')
check "the models are the README's bits" test "$got" = "$want"
[ "$got" = "$want" ] || printf 'got:\n%s\nwant:\n%s\n' "$got" "$want"
finish
