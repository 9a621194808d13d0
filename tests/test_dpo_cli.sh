#!/usr/bin/env bash
# test_dpo_cli.sh - `rlhf dpo`: DPO of a tiny policy on synthetic pairs (the completion with more
# "please" is preferred, as in test_rm_learner.sh), with real rlhf-master / rlhf-worker
# processes on loopback (`rlhf up`: a reward worker for the reference logprobs, a learner of S
# shards for the steps):
#   - in process: the first step's loss is log 2 exactly (the policy is its own reference), the
#     reference logprobs are written into every line of RUN_DIR/pairs_ref.jsonl, and the held-out
#     reward accuracy ends well above chance;
#   - through the cluster: the reference logprobs of the reward worker's SCORE jobs are the same
#     bytes as the in-process ones, and S = 1 and S = 2 learner shards give the in-process model
#     byte for byte (the same steps, the same gradient tree);
#   - the driver stopped after its first TRAIN job and started again ends with the same model;
#   - a pairs file that already carries the reference logprobs is used as it is (same model);
#   - IPO's first loss is 1/(4 beta^2), label smoothing runs;
#   - bad input: a malformed reference logprob names FILE:LINE (exit 1); a bad --loss exits 2.
# Usage: test_dpo_cli.sh BIN_DIR
BIN=${1:?usage: test_dpo_cli.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"
RLHF=$BIN/rlhf
jq_true() { jq -e "$1" <<<"$2" >/dev/null; } # jq_true FILTER JSON: the filter yields true

tiny_pairs_setup

NPROC=$(nproc)
ARGS=(--policy "$W/base" --pairs "$W/pairs.jsonl" --heldout-frac 0.25 --steps 24 --batch 8
    --micro 4 --lr 3e-3 --min-lr 3e-4 --warmup 4 --beta 0.5 --log-every 8)
dpo() { # dpo NAME [ARGS...]: rlhf dpo into $W/NAME, its output in $W/NAME.jsonl
    local name=$1; shift
    "$RLHF" dpo "${ARGS[@]}" --out "$W/$name" "$@" >"$W/$name.jsonl" 2>"$W/$name.log"
}
steps_of() { grep '"step"' "$W/$1.jsonl" | jq -c '[.step, .loss, ."rewards/accuracies", .grad_norm]'; }

check "in process" dpo inproc --in-process --threads "$NPROC"
tail -3 "$W/inproc.jsonl" | sed 's/^/  /'
check "the first step's loss is log 2" \
    jq_true '.step == 0 and .loss == 0.6931472 and ."rewards/margins" == 0' \
    "$(grep '"step"' "$W/inproc.jsonl" | head -1)"
check "the reference logprobs on every line" test "$(jq -c 'select(.ref_chosen_logps < 0 and
    .ref_rejected_logps < 0)' "$W/inproc.run/pairs_ref.jsonl" | grep -c .)" -eq 480
held=$(grep '"split":"heldout"' "$W/inproc.jsonl")
echo "  $held"
check "held-out reward accuracy well above chance, a positive margin" \
    jq_true '."rewards/accuracies" > 0.8 and ."rewards/margins" > 0 and .pairs == 108' "$held"
check "dpo_stats.json beside the model" \
    jq_true '.loss == "sigmoid" and .beta == 0.5 and .heldout.pairs == 108 and .steps == 24' \
    "$(cat "$W/inproc/dpo_stats.json")"
check "the model dir is complete" test -f "$W/inproc/vocab.json" -a -f "$W/inproc/config.json"

check "dpo --learner-shards 1" dpo s1 --learner-shards 1 --steps-per-job 10
check "S=1: the reference by reward workers" \
    jq_true '.by == "reward workers"' "$(grep '"reference"' "$W/s1.jsonl")"
check "S=1: the reward workers' reference = in process, byte for byte" \
    cmp -s "$W/inproc.run/pairs_ref.jsonl" "$W/s1.run/pairs_ref.jsonl"
check "S=1: 3 TRAIN jobs and the SCORE jobs ran" \
    test "$(jq -r 'select(.status == "done") | .job_id' "$(results_of $W/s1.run/cluster)" |
        sort -u | grep -c .)" -ge 4
check "S=1 = in process, byte for byte" cmp -s "$W/inproc/model.safetensors" \
    "$W/s1/model.safetensors"
check "S=1: the same logged steps" test "$(steps_of inproc)" = "$(steps_of s1)"
check "dpo --learner-shards 2" dpo s2 --learner-shards 2 --steps-per-job 10
check "S=2 = S=1, byte for byte" cmp -s "$W/s1/model.safetensors" "$W/s2/model.safetensors"
check "S=2: the same logged steps" test "$(steps_of s1)" = "$(steps_of s2)"

# interrupted: the driver is stopped (SIGTERM: it stops its cluster) once a TRAIN job is recorded
# (after the 8 SCORE jobs), then the same command runs to the end: the model of the
# uninterrupted runs, every job recorded once
done_jobs() {
    jq -r 'select(.status == "done") | .job_id' "$(results_of $W/rs.run/cluster)" 2>/dev/null |
        sort -u | grep -c .
}
done_ge() { [ "$(done_jobs)" -ge "$1" ]; }
"$RLHF" dpo "${ARGS[@]}" --out "$W/rs" --learner-shards 2 --steps-per-job 4 >"$W/rs1.jsonl" \
    2>"$W/rs1.log" &
DRV=$!
PIDS+=("$DRV")
wait_for 120 done_ge 9
kill -TERM "$DRV" 2>/dev/null
wait "$DRV" 2>/dev/null
check "the interrupted driver saved nothing" test ! -e "$W/rs/model.safetensors"
check "the same command again finishes" dpo rs --learner-shards 2 --steps-per-job 4
check "resumed run = uninterrupted runs, byte for byte" cmp -s "$W/s1/model.safetensors" \
    "$W/rs/model.safetensors"
check "every job recorded once" test "$(jq -r .job_id "$(results_of $W/rs.run/cluster)" |
    sort | uniq -d | grep -c .)" -eq 0

ARGS[3]=$W/inproc.run/pairs_ref.jsonl
check "a pairs file with the reference logprobs" dpo pre --in-process --threads "$NPROC"
check "...is used as it is" jq_true '.by == "the pairs file"' "$(grep '"reference"' "$W/pre.jsonl")"
check "...and gives the same model" cmp -s "$W/inproc/model.safetensors" "$W/pre/model.safetensors"

check "ipo" dpo ipo --in-process --loss ipo --beta 0.1 --steps 4
check "ipo: the first loss is 1/(4 beta^2)" jq_true '.step == 0 and .loss == 25' \
    "$(grep '"step"' "$W/ipo.jsonl" | head -1)"
check "label smoothing" dpo cdpo --in-process --label-smoothing 0.1 --steps 4
check "cDPO: the first loss is still log 2" jq_true '.step == 0 and .loss == 0.6931472' \
    "$(grep '"step"' "$W/cdpo.jsonl" | head -1)"

sed '7s/"ref_chosen_logps":[^,]*,/"ref_chosen_logps":"x",/' "$W/inproc.run/pairs_ref.jsonl" \
    >"$W/badref.jsonl"
ARGS[3]=$W/badref.jsonl
dpo bad --in-process
check "a malformed reference logprob: exit 1" test $? -eq 1
check "...naming FILE:LINE" grep -q "badref.jsonl:7: .*ref_chosen_logps" "$W/bad.log"
sed '5s/"ref_rejected_logps":[^,}]*//; 5s/,}/}/; 5s/,,/,/' "$W/inproc.run/pairs_ref.jsonl" \
    >"$W/halfref.jsonl"
ARGS[3]=$W/halfref.jsonl
dpo half --in-process
check "one reference logprob without the other: exit 1, naming the line" \
    grep -q "halfref.jsonl:5: ref_chosen_logps and ref_rejected_logps go together" "$W/half.log"
dpo badloss --in-process --loss hinge
check "--loss hinge exits 2" test $? -eq 2

# the report: DPO's figures, and its gold win rate and KL next to PPO's
mkdir -p "$W/run/dpo"
cp "$W/inproc/dpo_stats.json" "$W/run/dpo/"
ev() { jq -n --argjson w "$1" --argjson k "$2" '{prompts: 96, win_rate: $w, win_rate_samples: 0.6,
    kl: $k, kl_per_token: 0.05, gold_policy: 0.8, gold_baseline: 0.7, length_policy: 11,
    length_baseline: 13, criteria_policy: {correct: 0.6}, criteria_baseline: {correct: 0.5}}'; }
ev 0.958 1.708 >"$W/run/eval.json"
ev 0.969 0.541 >"$W/run/eval_dpo.json"
check "rlhf report with a dpo stage" "$RLHF" report --run "$W/run"
check "report: DPO's held-out reward accuracy" grep -q '^| held-out | 108 | .* | 100.0% |' \
    "$W/run/report.md"
check "report: PPO's and DPO's gold win rates side by side" \
    grep -q '^| gold win rate over SFT | 95.8% | 96.9% |' "$W/run/report.md"
check "report: and their KL to SFT" \
    grep -q '^| KL to SFT (nats per completion) | 1.708 | 0.541 | 0 |' "$W/run/report.md"
rm "$W/run/eval.json"
check "report: DPO without PPO" "$RLHF" report --run "$W/run"
check "report: PPO's column empty" grep -q '^| gold win rate over SFT | - | 96.9% |' \
    "$W/run/report.md"
# with a grpo stage: its training and GRPO's column between PPO's and DPO's
ev 0.958 1.708 >"$W/run/eval.json"
ev 0.953 0.891 >"$W/run/eval_grpo.json"
mkdir -p "$W/run/grpo"
for i in 0 1 2; do
    echo "{\"iteration\": $i, \"rollouts\": 64, \"reward_program_mean\": 0.7$i, \"ppo\": {\"kl_k1\": 0.$i}}"
done >"$W/run/grpo/metrics.jsonl"
check "rlhf report with grpo and dpo stages" "$RLHF" report --run "$W/run"
check "report: the GRPO section from grpo/metrics.jsonl" grep -q '^3 iterations of 64 rollouts .*0.700 at the first iteration, 0.720 at the last' \
    "$W/run/report.md"
check "report: PPO's, GRPO's and DPO's gold win rates side by side" \
    grep -q '^| gold win rate over SFT | 95.8% | 95.3% | 96.9% | |' "$W/run/report.md"
check "report: and their KL to SFT" \
    grep -q '^| KL to SFT (nats per completion) | 1.708 | 0.891 | 0.541 | 0 |' "$W/run/report.md"
check "report: GRPO's gold win rate and KL stated" \
    grep -q '^\*\*Gold win rate of GRPO over SFT: 95.3%\*\* .* KL(GRPO || SFT) = 0.891' "$W/run/report.md"
finish
