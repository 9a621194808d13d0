#!/usr/bin/env bash
# test_poison.sh - a bad model fails a run at once, and never poisons the rerun: a PPO run whose
# policy directory has (a) a truncated model.safetensors, (b) a config.json whose n_embd does not
# match the weights. Each fails within seconds after one attempt, recorded as deterministic;
# `rlhf run`, `rlhf status` and `rlhf wait` give the reason naming the file. With the file
# fixed, the same `rlhf run` goes on to the end, with metrics and policy identical to a run that
# never failed. Usage: test_poison.sh BIN_DIR
BIN=$(cd "${1:?usage: test_poison.sh BIN_DIR}" && pwd)
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1

tiny_ppo_setup 1 16 32
cat >ppo.yaml <<'Y'
run_dir: run
seed: 3
stages: [ppo]
ppo: {policy: pol, rm: ../val, prompts: ../prompts.jsonl, reward_count_token: 104,
      iterations: 8, batch: 8, max_new: 8, prompts_per_job: 4, epochs: 1, lr_policy: 0.01}
Y
for d in calm trunc cfg; do mkdir $d && cp ppo.yaml $d/ && cp -r pol $d/pol; done

# same_as_calm DIR: DIR's run ended like the run that never failed
same_as_calm() {
    cmp -s <(jq -c '[.iteration, .policy_version, .ppo]' calm/run/ppo/metrics.jsonl) \
        <(jq -c '[.iteration, .policy_version, .ppo]' "$1/run/ppo/metrics.jsonl") &&
        cmp -s calm/run/ppo/policy/model.safetensors "$1/run/ppo/policy/model.safetensors"
}

(cd calm && "$R" run ppo.yaml >run.out 2>run.err)
check "the run that never fails succeeds" grep -q "all stages done" calm/run.err
check "... with 8 iterations" test "$(wc -l <calm/run/ppo/metrics.jsonl)" -eq 8

# poisoned D FILE WHAT: the run in D, its policy broken in FILE, fails at once with a reason
# naming FILE and WHAT, everywhere; then FILE is restored and the same command runs to the end.
poisoned() {
    local d=$1 file=$2 what=$3 t0 t1 rc
    t0=$(date +%s%N)
    (cd "$d" && timeout 60 "$R" run ppo.yaml >run1.out 2>run1.err)
    rc=$?
    t1=$(date +%s%N)
    echo "$d: failed in $(((t1 - t0) / 1000000)) ms"
    check "$d: rlhf run exits 1" test "$rc" -eq 1
    check "$d: ... at once (< 15 s)" test $((t1 - t0)) -lt 15000000000
    check "$d: ... printing the reason: $file, $what" \
        bash -c "grep 'run failed' $d/run1.err | grep -F '$file' | grep -qF '$what'"
    "$R" status run --json --data-dir "$d" >"$d/status.json"
    check "$d: rlhf status: failed" jq -e -s '.[0].state == "failed"' "$d/status.json"
    check "$d: ... with the reason" jq -e -s --arg f "$file" --arg w "$what" \
        '.[0] | (.reason | contains($f)) and (.reason | contains($w))' "$d/status.json"
    timeout 20 "$R" wait run --data-dir "$d" >"$d/wait.out" 2>&1
    check "$d: rlhf wait exits 1" test $? -eq 1
    check "$d: ... printing the reason" bash -c "grep -F '$file' $d/wait.out | grep -qF '$what'"
    "$BIN/rlhf-master" --dump-results "$d/.cluster" >"$d/results.jsonl"
    check "$d: one failed job, recorded as deterministic at attempt 1" jq -e -s \
        '[.[] | select(.status == "failed")] | length == 1 and .[0].attempt == 1 and .[0].deterministic' \
        "$d/results.jsonl"
    check "$d: ... rejected once, never retried" \
        test "$(grep -c 'rejected by .*\[deterministic\]' "$d/.cluster/master.log")" -eq 1
    check "$d: the workers are still up" bash -c \
        "for p in \$(jq -r '.worker_pids[]' $d/.cluster/local.json); do kill -0 \$p || exit 1; done"

    cp "pol/$file" "$d/pol/$file"
    (cd "$d" && timeout 120 "$R" run ppo.yaml >run2.out 2>run2.err)
    check "$d: fixed, the same rlhf run runs to the end" test $? -eq 0
    check "$d: ... succeeded" jq -e -s '.[0].state == "succeeded"' <("$R" status run --json --data-dir "$d")
    check "$d: ... identical to the run that never failed" same_as_calm "$d"
}

# (a) the weights cut short
truncate -s 5000 trunc/pol/model.safetensors
poisoned trunc model.safetensors "truncated file"
# (b) a config for another width
jq '.n_embd = 32' pol/config.json >cfg/pol/config.json
poisoned cfg config.json "config and weights do not match"
finish
