#!/usr/bin/env bash
# test_unwritable.sh - a run directory that becomes unwritable pauses the run, with the file and
# the errno text as its reason, and the run goes on when it is writable again, ending as if
# nothing happened. Three ways to meet it:
#   A. a PPO run whose learner cannot write its checkpoint (the learner's TRAIN job is rejected
#      as an environment error: the master holds it and pauses the run);
#   B. a PPO run without checkpoints: the master's own write (metrics.jsonl) fails;
#   C. a pipeline stage command (tokenizer-train) that cannot write its output.
# The directory is made read-only with a read-only bind mount, which stops root too: the test
# runs in a private mount namespace (it re-executes itself under `unshare -m`), and so does every
# process of the local cluster that `rlhf run` starts from it. Usage: test_unwritable.sh BIN_DIR
if [ -z "${RLHF_TEST_UNSHARED:-}" ]; then
    if ! unshare -m --propagation private true 2>/dev/null; then
        echo "SKIP: cannot make a mount namespace (unshare -m needs root)"
        exit 77
    fi
    RLHF_TEST_UNSHARED=1 exec unshare -m --propagation private bash "$0" "$@"
fi
BIN=$(cd "${1:?usage: test_unwritable.sh BIN_DIR}" && pwd)
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1
MOUNTS=()
trap 'for d in "${MOUNTS[@]}"; do umount "$d" 2>/dev/null; done; cleanup' EXIT

# readonly DIR: DIR becomes read-only for every process of the namespace. The remount fails
# (EBUSY) while a process holds a file open for writing through the new mount: tried again.
readonly_dir() {
    mount --bind "$1" "$1" || return 1
    MOUNTS+=("$1")
    for _ in $(seq 1 500); do
        mount -o remount,bind,ro "$1" 2>/dev/null && return 0
        sleep 0.01
    done
    return 1
}
writable_dir() { umount "$1"; }

tiny_ppo_setup 1 16 32
# ppo_yaml CHECKPOINT_EVERY
ppo_yaml() {
    cat <<Y
run_dir: run
seed: 3
stages: [ppo]
ppo: {policy: ../pol, rm: ../val, prompts: ../prompts.jsonl, reward_count_token: 104,
      iterations: 100, batch: 8, max_new: 8, prompts_per_job: 4, epochs: 1, lr_policy: 0.01,
      checkpoint_every: $1}
Y
}
cat >pipe.yaml <<'Y'
run_dir: run
seed: 3
stages: [task, tokenizer]
task: {prompts: 32, heldout: 4, sft: 10}
tokenizer: {vocab_size: 300}
Y
mkdir calmA A calmB B calmC C
ppo_yaml 1 >calmA/run.yaml && cp calmA/run.yaml A/
ppo_yaml 100000 >calmB/run.yaml && cp calmB/run.yaml B/
cp pipe.yaml calmC/run.yaml && cp pipe.yaml C/run.yaml

# the undisturbed runs
for d in calmA calmB calmC; do
    (cd $d && "$R" run run.yaml >run.out 2>run.err)
    check "$d: the undisturbed run succeeds" grep -q "all stages done" $d/run.err
    "$R" down --data-dir $d >/dev/null 2>&1
done

iters() { cat "$1/run/ppo/metrics.jsonl" 2>/dev/null | wc -l; }
iters_ge() { [ "$(iters "$1")" -ge "$2" ]; }
status() { "$R" status run --json --data-dir "$1"; }
# paused_for D FILE: D's run is paused with a reason naming FILE and the errno text
paused_for() {
    status "$1" | jq -e -s --arg f "$2" '.[0] | .state == "paused" and
        (.reason | contains($f)) and (.reason | contains("Read-only file system"))' >/dev/null
}
cluster_pids() { jq -r '[.master_pid] + .worker_pids | .[]' "$1/.cluster/local.json"; }
all_alive() { for p in $(cluster_pids "$1"); do kill -0 "$p" 2>/dev/null || return 1; done; }
same_ppo() {
    cmp -s <(jq -c '[.iteration, .policy_version, .ppo]' "$1/run/ppo/metrics.jsonl") \
        <(jq -c '[.iteration, .policy_version, .ppo]' "$2/run/ppo/metrics.jsonl") &&
        cmp -s "$1/run/ppo/policy/model.safetensors" "$2/run/ppo/policy/model.safetensors"
}

# unwritable_ppo D CALM FILE [DIR]: D's PPO run, DIR (default its run directory, "run") read-only
# after 5 iterations, pauses naming FILE; writable again, it ends like CALM's.
unwritable_ppo() {
    local d=$1 calm=$2 file=$3 ro=${4:-run}
    (cd "$d" && exec timeout 200 "$R" run run.yaml >run.out 2>run.err) &
    local rp=$!
    PIDS+=("$rp")
    check "$d: the run reaches iteration 5" wait_for 60 iters_ge "$d" 5
    check "$d: $ro becomes read-only" readonly_dir "$W/$d/$ro"
    local pids
    pids=$(cluster_pids "$d")
    check "$d: the run pauses, naming $file and the errno" wait_for 20 paused_for "$d" "$file"
    status "$d" | jq -r .reason | cut -c1-300
    local n
    n=$(iters "$d")
    sleep 3
    check "$d: ... and stays paused" paused_for "$d" "$file"
    check "$d: ... making no progress meanwhile" test "$(iters "$d")" -eq "$n"
    check "$d: master and workers still run" all_alive "$d"
    check "$d: ... the same processes (nothing restarted)" test "$(cluster_pids "$d")" = "$pids"
    check "$d: ... no crash in the supervisor's log" bash -c "! grep -q exited $d/.cluster/local.log"
    check "$d: rlhf run still follows it" kill -0 "$rp"
    writable_dir "$W/$d/$ro"
    wait "$rp"
    check "$d: writable again, the run completes" test $? -eq 0
    check "$d: ... succeeded" jq -e -s '.[0].state == "succeeded"' <(status "$d")
    check "$d: ... its log says it went on" grep -q "writable again\|all stages done" "$d/run/run.log"
    check "$d: ... identical to the undisturbed run (metrics, policy)" same_ppo "$calm" "$d"
}

# --- A: the learner's checkpoint; its directory only (with the whole run directory read-only,
# the master's metrics write came first now and then, and A tested B's case)
unwritable_ppo A calmA "run/ppo/learner/ppo-ckpt-" run/ppo/learner
check "A: the learner's rejection was an environment error" \
    grep -q "rejected by local-learner.*Read-only file system) \[environment\]" A/.cluster/master.log

# --- B: the master's own write
unwritable_ppo B calmB "run/ppo/metrics.jsonl"
check "B: the master says when it goes on" grep -q "the run directory is writable again" B/run/run.log

# --- C: a stage command's output directory read-only before the stage starts
mkdir -p C/run/tokenizer
check "C: the tokenizer's directory is read-only" readonly_dir "$W/C/run/tokenizer"
(cd C && exec timeout 120 "$R" run run.yaml >run.out 2>run.err) &
rp=$!
PIDS+=("$rp")
check "C: the run pauses, naming vocab.json and the errno" \
    wait_for 30 paused_for C "run/tokenizer/vocab.json"
check "C: the stage worker's rejection was an environment error" \
    grep -q "rejected by local-stage.*Read-only file system) \[environment\]" C/.cluster/master.log
check "C: ... not done meanwhile" test ! -e C/run/stages/tokenizer.json
check "C: master and workers still run" all_alive C
check "C: ... no crash in the supervisor's log" bash -c "! grep -q exited C/.cluster/local.log"
writable_dir "$W/C/run/tokenizer"
wait "$rp"
check "C: writable again, the run completes" test $? -eq 0
for f in task/prompts.jsonl task/sft.jsonl tokenizer/vocab.json tokenizer/merges.txt; do
    [ -e calmC/run/$f ] || continue
    check "C: $f identical to the undisturbed run's" cmp -s calmC/run/$f C/run/$f
done
finish
