#!/usr/bin/env bash
# test_ppo_stage.sh - `rlhf ppo`, stage 3 through the master with two rollout workers, a reward
# worker and the learner, on a tiny model with a constructed reward (the count of one token in
# the completion): the mean reward clearly rises; a run stopped and resumed from its checkpoint
# ends with the same metrics and bit-identical weights as one that never stopped (with GAE, and
# with the critic-free GRPO and RLOO, and with overlap=one_step_off); a learner and a rollout
# worker killed mid-run change nothing either. Usage: test_ppo_stage.sh BIN_DIR
BIN=$(cd "${1:?usage: test_ppo_stage.sh BIN_DIR}" && pwd)
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1

tiny_ppo_setup 2 32 48
check "tiny policy and value model" test -f pol/model.safetensors -a -f val/model.safetensors

# log_mark / log_since MARK: the master's log lines written after log_mark (all of it when the
# cluster started a new log since)
log_mark() { cat .cluster/master.log 2>/dev/null | wc -l; }
log_since() {
    local n
    n=$(log_mark)
    if [ "$n" -ge "$1" ]; then tail -n +"$(($1 + 1))" .cluster/master.log; else cat .cluster/master.log; fi
}
# rollouts_during_updates: of the master's log on stdin, the rollout jobs dispatched while the
# learner held a job (between "-> local-learner-N" and "done by local-learner-N")
rollouts_during_updates() {
    awk '/ -> local-learner-/ { busy = 1 } / done by local-learner-/ { busy = 0 }
        / -> local-rollout-/ && busy { n++ } END { print n + 0 }'
}

# same_run A B [N]: both runs have N (6) iterations of metrics and their PPO figures are identical
same_run() {
    local n=${3:-6}
    [ "$(wc -l <"$1/metrics.jsonl")" -eq "$n" ] && [ "$(wc -l <"$2/metrics.jsonl")" -eq "$n" ] &&
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
    .response_length > 0 and .eot_rate != null and .truncated_rate == 1 - .eot_rate and
    .tokens_per_s > 0 and .ms_generate > 0 and
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
mark=$(log_mark)
"$R" ppo "${COMMON[@]}" --set kl_coef=0.01 --out A --iterations 6 >/dev/null 2>&1
log_since "$mark" >A.master.log
check "without overlap: no rollout job runs while the learner updates" \
    test "$(rollouts_during_updates <A.master.log)" -eq 0
"$R" ppo "${COMMON[@]}" --set kl_coef=0.01 --out B --iterations 3 >/dev/null 2>&1
"$R" ppo "${COMMON[@]}" --set kl_coef=0.01 --out B --iterations 6 >/dev/null 2>B.err
check "the second run resumes at iteration 3" grep -q "resuming at iteration 3" B.err
check "resumed metrics equal the uninterrupted run's" same_run A B
check "resumed weights are bit-identical" cmp -s A/policy/model.safetensors B/policy/model.safetensors

# --- the same for the critic-free estimators (3 iterations, stopped after 2: the last one runs
# after the resume): GRPO as its paper has it (the KL in the loss, k3), RLOO sampled at
# temperature 0.8 with sequence-mean losses
EST_grpo=(--set adv_estimator=grpo --set kl_in=loss --set kl_estimator=k3)
EST_rloo=(--set adv_estimator=rloo --set loss_agg=sequence --temperature 0.8)
for est in grpo rloo; do
    declare -n E="EST_$est"
    "$R" ppo "${COMMON[@]}" --set kl_coef=0.01 "${E[@]}" --out "A$est" --iterations 3 >/dev/null 2>&1
    "$R" ppo "${COMMON[@]}" --set kl_coef=0.01 "${E[@]}" --out "B$est" --iterations 2 >/dev/null 2>&1
    # the cluster stopped in between: a new learner resumes from the checkpoint on disk
    "$R" down --data-dir . >/dev/null
    "$R" ppo "${COMMON[@]}" --set kl_coef=0.01 "${E[@]}" --out "B$est" --iterations 3 >/dev/null 2>"B$est.err"
    unset -n E
    check "$est: the second run resumes at iteration 2" grep -q "resuming at iteration 2" "B$est.err"
    check "$est: ... in a new learner, from the checkpoint (the policy alone)" \
        grep -q "resumed from .*B$est/learner/ppo-ckpt-0*2 at iteration 2" .cluster/worker-learner-*.log
    check "$est: resumed metrics equal the uninterrupted run's" same_run "A$est" "B$est" 3
    check "$est: resumed weights are bit-identical" \
        cmp -s "A$est/policy/model.safetensors" "B$est/policy/model.safetensors"
    check "$est: no value model: checkpoints hold the policy alone" \
        bash -c "ls -d B$est/learner/ppo-ckpt-*/policy >/dev/null && ! ls -d B$est/learner/ppo-ckpt-*/value 2>/dev/null"
    # the policy is the reference at first: old (rollout) and reference logprobs agree when both
    # are taken under the sampling temperature (0.8 for rloo), as the learner's are
    check "$est: no KL at the first iteration (one temperature for every logprob)" \
        jq -e -s '.[0].ppo.kl_k1 | fabs < 1e-4' "A$est/metrics.jsonl"
    check "$est: value figures null, the others there" jq -e -s 'all(.[]; .ppo.value_loss == null and
        .ppo.explained_var == null and .ppo.grad_norm_value == null and .ppo.policy_loss != null and
        .ppo.kl_k1 != null)' "B$est/metrics.jsonl"
done

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

# --- overlap=one_step_off: iteration i+1's rollouts come from version i (the first two from
# version 0), generated while update i runs. The first iteration is the sequential run's (same
# rollouts, same update); the second is not (its rollouts come from version 0, not 1). Stopped
# and resumed - in the same learner, then in a new one from the checkpoint, which also holds the
# version before its own - and with the learner and a rollout worker killed mid-run, it ends as
# the uninterrupted run does, bit for bit.
OV=(--set kl_coef=0.01 --set overlap=one_step_off)
mark=$(log_mark)
"$R" ppo "${COMMON[@]}" "${OV[@]}" --out Aov --iterations 6 >/dev/null 2>Aov.err
log_since "$mark" >Aov.master.log
n_during=$(rollouts_during_updates <Aov.master.log)
echo "overlap: $n_during rollout jobs dispatched while the learner updated"
# 2 GENERATE jobs per iteration, 5 updates with a next iteration: 10 at most. Those of iteration
# 1 (version 0) need no announcement; more than them means the later ones (made once version i
# is announced, as update i starts) overlapped too
check "overlap: rollout jobs of the next iteration run while the learner updates" \
    test "$n_during" -ge 4
check "overlap: 6 iterations run" test "$(wc -l <Aov/metrics.jsonl)" -eq 6
check "overlap: rollouts of iteration i from version max(i-1, 0)" \
    jq -e -s '[.[].rollout_version] == [0, 0, 1, 2, 3, 4]' Aov/metrics.jsonl
check "overlap: the update still makes one version per iteration" \
    jq -e -s '[.[].policy_version] == [range(1; 7)]' Aov/metrics.jsonl
check "without overlap: rollouts of iteration i from version i" \
    jq -e -s '[.[].rollout_version] == [range(0; 6)]' A/metrics.jsonl
check "overlap: the first iteration is the sequential one's" \
    cmp -s <(jq -c 'select(.iteration == 0) | .ppo' A/metrics.jsonl) \
    <(jq -c 'select(.iteration == 0) | .ppo' Aov/metrics.jsonl)
check "overlap: the second is not (stale rollouts)" \
    bash -c "! cmp -s <(jq -c 'select(.iteration == 1) | .ppo' A/metrics.jsonl) \
        <(jq -c 'select(.iteration == 1) | .ppo' Aov/metrics.jsonl)"
# every rollout job ran with exactly the version it needs, never a newer one: "job J attempt A
# runs with weights version V (needs N)"
grep -ho 'runs with weights version [0-9]* (needs [0-9]*)' .cluster/worker-rollout-*.log >versions.txt
check "overlap: rollout jobs ran with exactly the version they need" \
    awk '{ n++; if ($5 != $7 + 0) bad = 1 } END { exit bad || n < 4 }' versions.txt
"$R" ppo "${COMMON[@]}" "${OV[@]}" --out Bov --iterations 2 >/dev/null 2>&1
"$R" ppo "${COMMON[@]}" "${OV[@]}" --out Bov --iterations 3 >/dev/null 2>&1
"$R" down --data-dir . >/dev/null
"$R" ppo "${COMMON[@]}" "${OV[@]}" --out Bov --iterations 6 >/dev/null 2>Bov.err
check "overlap: the third run resumes at iteration 3" grep -q "resuming at iteration 3" Bov.err
check "overlap: ... in a new learner, serving version 2 from the checkpoint" \
    grep -q "resumed from .*Bov/learner/ppo-ckpt-0*3 at iteration 3 (overlap: serving the version before)" \
    .cluster/worker-learner-*.log
check "overlap: resumed metrics equal the uninterrupted run's" same_run Aov Bov
check "overlap: resumed weights are bit-identical" \
    cmp -s Aov/policy/model.safetensors Bov/policy/model.safetensors
"$R" ppo "${COMMON[@]}" "${OV[@]}" --out Kov --iterations 6 >/dev/null 2>Kov.err &
DPID=$!
PIDS+=("$DPID")
ov_two_done() { [ "$(cat Kov/metrics.jsonl 2>/dev/null | wc -l)" -ge 2 ]; }
check "overlap: two iterations before the kills" wait_for 60 ov_two_done
lpid=$(jq -r '.worker_pids[.worker_roles | index("learner")]' .cluster/local.json)
rpid=$(jq -r '.worker_pids[.worker_roles | index("rollout")]' .cluster/local.json)
kill -KILL "$lpid" "$rpid"
wait "$DPID"
check "overlap: the run completes after the kills" test "$(wc -l <Kov/metrics.jsonl)" -eq 6
check "overlap: killed run = undisturbed run (metrics)" same_run Aov Kov
check "overlap: killed run = undisturbed run (weights)" \
    cmp -s Aov/policy/model.safetensors Kov/policy/model.safetensors

# --- bad input
"$R" ppo "${COMMON[@]}" "${OV[@]}" --set recompute_logprobs=true --out bad >/dev/null 2>err
check "overlap with recompute_logprobs is refused, with the reason" \
    grep -q "overlap=one_step_off cannot be combined with recompute_logprobs" err
"$R" ppo "${COMMON[@]}" "${OV[@]}" --out A --iterations 7 >/dev/null 2>err
check "a run trained without overlap is not resumed with it" \
    grep -q "trained with overlap=off: overlap=one_step_off cannot resume it" err
check "... and keeps its iterations" test "$(wc -l <A/metrics.jsonl)" -eq 6
"$R" ppo "${COMMON[@]}" --temperature 0 --out bad >/dev/null 2>err
check "PPO refuses greedy rollouts (temperature 0)" grep -q "temperature 0: PPO needs" err
"$R" ppo "${COMMON[@]}" --samples 1 --set adv_estimator=rloo --out bad >/dev/null 2>err
check "rloo with one sample per prompt is refused" grep -q "needs --samples >= 2" err
"$R" ppo --policy pol --rm val --prompts nope.jsonl --out bad >/dev/null 2>err
check "a missing prompts file is an error" grep -q "nope.jsonl" err
"$R" ppo "${COMMON[@]}" --set nonsense=1 --out bad >/dev/null 2>err
check "an unknown PPO setting is named" grep -q "nonsense" err
pids=$(jq -r '[.supervisor_pid, .master_pid] + .worker_pids | .[]' .cluster/local.json)
"$R" down --data-dir . >/dev/null
gone() { for p in $pids; do ! kill -0 "$p" 2>/dev/null || return 1; done; }
check "rlhf down stops the local cluster, every process of it" wait_for 10 gone
finish
