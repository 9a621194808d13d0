#!/usr/bin/env bash
# test_ppo_stage.sh - `rlhf ppo`, stage 3 through the master with two rollout workers, a reward
# worker and the learner, on a tiny model with a constructed reward (the count of one token in
# the completion): the mean reward clearly rises; a run stopped and resumed from its checkpoint
# ends with the same metrics and bit-identical weights as one that never stopped; a learner and a
# rollout worker killed mid-run change nothing either. Usage: test_ppo_stage.sh BIN_DIR
BIN=$(cd "${1:?usage: test_ppo_stage.sh BIN_DIR}" && pwd)
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1

tiny_ppo_setup 2 32 48
check "tiny policy and value model" test -f pol/model.safetensors -a -f val/model.safetensors

# same_run A B: both runs have 6 iterations of metrics and their PPO figures are identical
same_run() {
    [ "$(wc -l <"$1/metrics.jsonl")" -eq 6 ] && [ "$(wc -l <"$2/metrics.jsonl")" -eq 6 ] &&
        cmp -s <(jq -c '[.iteration, .ppo]' "$1/metrics.jsonl") <(jq -c '[.iteration, .ppo]' "$2/metrics.jsonl")
}

# token 97 ("a") is rare under random weights: the reward starts near 0, at most 16
COMMON=(--policy pol --rm val --prompts prompts.jsonl --batch 16 --samples 2 --max-new 16
    --reward-count-token 97 --rollout 2 --set lr_policy=1e-2 --set lr_value=1e-3)

# --- the reward rises
"$R" ppo "${COMMON[@]}" --set kl_coef=0 --out learn --iterations 20 >learn.out 2>learn.err
check "20 iterations run" test "$(wc -l <learn/metrics.jsonl)" -eq 20
first=$(jq -s '[.[0:4][].ppo.score_mean] | add / 4' learn/metrics.jsonl)
last=$(jq -s '[.[-4:][].ppo.score_mean] | add / 4' learn/metrics.jsonl)
echo "mean reward: first 4 iterations $first, last 4 $last"
check "mean reward rises from < 1 to > 8 (of 16)" \
    jq -n -e "$first < 1 and $last > 8"
check "policy versions advance one per iteration" \
    jq -e -s '[.[].policy_version] == [range(1; 21)]' learn/metrics.jsonl
check "both rollout workers generated" \
    test "$(grep -l 'runs with weights version' .cluster/worker-rollout-*.log | wc -l)" -eq 2
check "rollout workers fetched weights (one sync line per version)" \
    grep -q "synced:.*GB/s" .cluster/worker-rollout-0.log
check "the run ran in the local cluster of the data directory" \
    jq -e -s '.[0].state == "succeeded"' <("$R" status learn --json --data-dir .)
check "metrics have every figure" jq -e -s 'all(.[]; .ppo.kl_k1 != null and .ppo.kl_k3 != null and
    .ppo.entropy != null and .ppo.clipfrac != null and .ppo.approx_kl != null and
    .ppo.explained_var != null and .ppo.value_loss != null and .ppo.kl_coef != null and
    .response_length > 0 and .eot_rate != null and .tokens_per_s > 0 and .ms_generate > 0 and
    .ms_score > 0 and .ms_update > 0)' learn/metrics.jsonl
check "the final policy is exported" test -f learn/policy/model.safetensors -a -f learn/policy/vocab.json
"$R" sample --model learn/policy --prompt "what is 3 plus" --max-new-tokens 4 --temperature 0 >/dev/null
check "... and loads as a model" test $? -eq 0

# --- one iteration: the loop's first job asks the learner where it stands (an attach), which
# must not be taken for the last update (it exports nothing)
"$R" ppo "${COMMON[@]}" --out one --iterations 1 >/dev/null 2>one.err
check "a run of one iteration succeeds" test $? -eq 0
check "... its policy exported" test -f one/policy/model.safetensors -a "$(wc -l <one/metrics.jsonl)" -eq 1
# ... and a run resumed with one iteration left
"$R" ppo "${COMMON[@]}" --out one --iterations 2 >/dev/null 2>one2.err
check "a run resumed with one iteration left succeeds" test $? -eq 0 -a "$(wc -l <one/metrics.jsonl)" -eq 2

# --- stopped and resumed = never stopped
"$R" ppo "${COMMON[@]}" --set kl_coef=0.01 --out A --iterations 6 >/dev/null 2>&1
"$R" ppo "${COMMON[@]}" --set kl_coef=0.01 --out B --iterations 3 >/dev/null 2>&1
"$R" ppo "${COMMON[@]}" --set kl_coef=0.01 --out B --iterations 6 >/dev/null 2>B.err
check "the second run resumes at iteration 3" grep -q "resuming at iteration 3" B.err
check "resumed metrics equal the uninterrupted run's" same_run A B
check "resumed weights are bit-identical" cmp -s A/policy/model.safetensors B/policy/model.safetensors

# --- the learner and a rollout worker killed mid-run
"$R" ppo "${COMMON[@]}" --set kl_coef=0.01 --out K --iterations 6 >/dev/null 2>K.err &
DPID=$!
PIDS+=("$DPID")
iters() { cat K/metrics.jsonl 2>/dev/null | wc -l; }
two_done() { [ "$(iters)" -ge 2 ]; }
check "two iterations before the kills" wait_for 60 two_done
# the kills come first: on a loaded machine the run could otherwise finish while /metrics is
# being checked, and there would be nothing left to kill
lpid=$(jq -r '.worker_pids[.worker_roles | index("learner")]' .cluster/local.json)
rpid=$(jq -r '.worker_pids[.worker_roles | index("rollout")]' .cluster/local.json)
kill -KILL "$lpid" "$rpid"
use_master .cluster
mcurl -sf "$HTTP/metrics" >K.metrics
check "/metrics has the newest PPO figures" grep -q "^rlhf_ppo_kl_k1 " K.metrics
check "... and the policy version" grep -q "^rlhf_ppo_policy_version [1-9]" K.metrics
if command -v promtool >/dev/null; then
    check "... valid for promtool" bash -c "promtool check metrics <K.metrics"
fi
wait "$DPID"
check "the run completes after the kills" test "$(iters)" -eq 6
check "the learner was restarted" grep -q "worker 3 exited" .cluster/local.log
check "killed run = undisturbed run (metrics)" same_run A K
check "killed run = undisturbed run (weights)" cmp -s A/policy/model.safetensors K/policy/model.safetensors

# --- bad input
"$R" ppo --policy pol --rm val --prompts nope.jsonl --out bad >/dev/null 2>err
check "a missing prompts file is an error" grep -q "nope.jsonl" err
"$R" ppo "${COMMON[@]}" --set nonsense=1 --out bad >/dev/null 2>err
check "an unknown PPO setting is named" grep -q "nonsense" err
pids=$(jq -r '[.supervisor_pid, .master_pid] + .worker_pids | .[]' .cluster/local.json)
"$R" down --data-dir . >/dev/null
gone() { for p in $pids; do ! kill -0 "$p" 2>/dev/null || return 1; done; }
check "rlhf down stops the local cluster, every process of it" wait_for 10 gone
finish
