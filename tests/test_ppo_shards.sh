#!/usr/bin/env bash
# test_ppo_shards.sh - the PPO update on the learner's shards: `rlhf ppo --learner-shards S` on a
# tiny model with a constructed reward. With GAE (policy and value model) and with GRPO (the KL in
# the loss, k3, sequence-mean losses), S = 1 and S = 2 give byte-identical policy (and value)
# model files and identical metrics lines but for their timings; a shard killed mid-run is
# restarted and the run ends with the same bits; learner shards with nothing to compute are
# refused with the reason. Usage: test_ppo_shards.sh BIN_DIR
BIN=$(cd "${1:?usage: test_ppo_shards.sh BIN_DIR}" && pwd)
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1

tiny_ppo_setup 2 32 48
check "tiny policy and value model" test -f pol/model.safetensors -a -f val/model.safetensors

# 16 rollouts per iteration in minibatches of 8, each step's gradient in 4 blocks
COMMON=(--policy pol --rm val --prompts prompts.jsonl --batch 8 --samples 2 --max-new 16
    --reward-count-token 97 --rollout 2 --set lr_policy=1e-2 --set lr_value=1e-3
    --set kl_coef=0.01 --set grad_blocks=4)
EST_gae=()
EST_grpo=(--set adv_estimator=grpo --set kl_in=loss --set kl_estimator=k3 --set loss_agg=sequence)

# a metrics line without its timings
TIMES='del(.ms_generate, .ms_score, .ms_update, .ms_update_math, .ms_weight_publish,
    .ms_iteration, .overhead_frac, .tokens_per_s, .ms_generate_math, .ms_score_math)'
same_metrics() { # same_metrics A B N
    [ "$(wc -l <"$1/metrics.jsonl")" -eq "$3" ] && [ "$(wc -l <"$2/metrics.jsonl")" -eq "$3" ] &&
        cmp -s <(jq -c "$TIMES" "$1/metrics.jsonl") <(jq -c "$TIMES" "$2/metrics.jsonl")
}
# the last checkpoint's models (the value model is there only)
same_models() { # same_models A B ITER
    local c
    c=$(printf 'learner/ppo-ckpt-%010d' "$3")
    cmp -s "$1/policy/model.safetensors" "$2/policy/model.safetensors" &&
        cmp -s "$1/$c/policy/model.safetensors" "$2/$c/policy/model.safetensors" &&
        { [ ! -e "$1/$c/value" ] ||
            cmp -s "$1/$c/value/model.safetensors" "$2/$c/value/model.safetensors"; }
}
shards_now() { jq '[.worker_roles[] | select(. == "shard")] | length + 1' .cluster/local.json; }
on_two() { cat .cluster/worker-learner-*.log | grep -c "updated on 2 shards"; }

for est in gae grpo; do
    declare -n E="EST_$est"
    for s in 1 2; do
        [ $s -eq 2 ] && before=$(on_two)
        "$R" ppo "${COMMON[@]}" "${E[@]}" --learner-shards $s --out "$est$s" --iterations 3 \
            >/dev/null 2>"$est$s.err"
        check "$est: S=$s runs 3 iterations on a learner of $s shard(s)" \
            test "$(wc -l <"$est$s/metrics.jsonl")" -eq 3 -a "$(shards_now)" -eq $s
    done
    unset -n E
    check "$est: every update ran on both shards" test "$(on_two)" -eq $((before + 3))
    check "$est: ... shard 1 computed its node of every step (blocks 2..3)" \
        grep -q "blocks 2..+2" .cluster/worker-shard-*.log
    check "$est: S=1 and S=2: identical metrics but for timings" same_metrics "${est}1" "${est}2" 3
    check "$est: S=1 and S=2: byte-identical models" same_models "${est}1" "${est}2" 3
done
check "gae: the value model is checkpointed" test -f gae2/learner/ppo-ckpt-0000000003/value/model.safetensors
check "grpo: no value model" test ! -e grpo2/learner/ppo-ckpt-0000000003/value
# the control: the blocks are the setting that decides the bits
"$R" ppo "${COMMON[@]}" --set grad_blocks=1 --learner-shards 1 --out gae1b --iterations 3 >/dev/null 2>&1
check "control: grad_blocks 1 is another result" bash -c '! cmp -s gae1/policy/model.safetensors gae1b/policy/model.safetensors'

# --- a shard killed mid-run: restarted by the supervisor, the round re-run, the same bits
"$R" ppo "${COMMON[@]}" --learner-shards 1 --out ref1 --iterations 8 >/dev/null 2>&1
"$R" ppo "${COMMON[@]}" --learner-shards 2 --out K --iterations 8 >/dev/null 2>K.err &
DPID=$!
PIDS+=("$DPID")
two_done() { [ "$(cat K/metrics.jsonl 2>/dev/null | wc -l)" -ge 2 ]; }
check "two iterations before the kill" wait_for 60 two_done
spid=$(jq -r '.worker_pids[.worker_roles | index("shard")]' .cluster/local.json)
kill -KILL "$spid"
wait "$DPID"
check "the run completes after the kill" test "$(wc -l <K/metrics.jsonl)" -eq 8
check "the shard was restarted" grep -q "worker 5 exited" .cluster/local.log
check "... and seen by the learner as a new process" \
    grep -q "shard 1 is a new process\|shard 1 unreachable\|shard 1 lost" .cluster/worker-learner-*.log
check "killed shard = undisturbed run (metrics)" same_metrics ref1 K 8
check "killed shard = undisturbed run (models)" same_models ref1 K 8

# --- shards with nothing to compute are refused, with the reason
"$R" ppo "${COMMON[@]}" --set grad_blocks=1 --learner-shards 2 --out bad >/dev/null 2>err
check "S above the step's blocks is refused" grep -q "set grad_blocks to 2 or more" err
"$R" ppo "${COMMON[@]}" --set minibatch=2 --learner-shards 3 --out bad >/dev/null 2>err
check "... the minibatch caps the blocks" grep -q "2 block(s) (grad_blocks 4, minibatch 2)" err
printf 'ppo:\n  learner_shards: 2\n' >shards.yaml
"$R" ppo --config shards.yaml "${COMMON[@]}" --set grad_blocks=1 --out bad >/dev/null 2>err
check "... ppo.learner_shards of a --config file too" grep -q "^rlhf ppo: --learner-shards 2: " err
printf 'run_dir: %s/r\nstages: [ppo]\nppo:\n  learner_shards: 3\n  grad_blocks: 2\n' "$W" >run.yaml
"$R" run run.yaml >/dev/null 2>err
check "... and rlhf run, before any stage" grep -q "ppo.learner_shards 3: .* set ppo.grad_blocks to 3 or more" err
"$R" down --data-dir . >/dev/null
finish
