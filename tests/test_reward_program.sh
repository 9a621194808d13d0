#!/usr/bin/env bash
# test_reward_program.sh - `rlhf ppo --reward-program`: PPO on the tiny model of test_ppo_stage.sh
# with a reward from a program instead of a model (align/rprog.h). The program
# (examples/reward_count.py) counts the prompt record's "reference" character in the completion,
# as --reward-count-token counts a token: the mean reward rises as with the constructed reward,
# and the reference came from the prompts file. A reward model and a program together: each
# iteration's score is rm-weight * the model's part + weight * the program's. A program that
# times out and crashes on some items: the run goes on, those items are counted and logged.
# `rlhf gold-judge` as the program gives exactly the in-process gold judge's numbers.
# Usage: test_reward_program.sh BIN_DIR
BIN=$(cd "${1:?usage: test_reward_program.sh BIN_DIR}" && pwd)
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
EX=$(cd "$(dirname "$0")/../examples" && pwd)
cd "$W" || exit 1

tiny_ppo_setup 2 32 48
# the prompts' records carry a reference answer: the character the program rewards
for i in $(seq 1 40); do echo "{\"prompt\":\"what is $i plus\",\"reference\":\"a\",\"n\":$i}"; done >prompts.jsonl
COMMON=(--policy pol --rm val --prompts prompts.jsonl --batch 16 --samples 2 --max-new 16
    --rollout 2 --set lr_policy=1e-2 --set lr_value=1e-3 --set kl_coef=0)
# programs run in a sandbox: absolute paths, a clean environment
COUNT="python3 $EX/reward_count.py"

# near: every iteration's line satisfies |A - B| <= 1e-4 (scores travel as float to the learner)
near() { jq -e -s "all(.[]; (($1) - ($2) | fabs) <= 1e-4)" "$3"; }

# --- the program's reward rises, as the constructed reward's does
"$R" ppo "${COMMON[@]}" --reward-program "$COUNT" --rm-weight 0 --out prog --iterations 20 \
    >prog.out 2>prog.err
check "20 iterations with a reward program" test "$(wc -l <prog/metrics.jsonl)" -eq 20
first=$(jq -s '[.[0:4][].ppo.score_mean] | add / 4' prog/metrics.jsonl)
last=$(jq -s '[.[-4:][].ppo.score_mean] | add / 4' prog/metrics.jsonl)
echo "program reward: first 4 iterations $first, last 4 $last"
check "the program's reward rises from < 1 to > 8" jq -n -e "$first < 1 and $last > 8"
check "the score is the program's (rm-weight 0)" near .ppo.score_mean .reward_program_mean \
    prog/metrics.jsonl
check "no model part, no errors" jq -e -s 'all(.[]; .reward_model_mean == null and
    .program_errors == 0 and .program_timeouts == 0)' prog/metrics.jsonl
check "the worker ran it under bubblewrap" grep -q "sandbox: bwrap" .cluster/worker-reward-*.log

# --- a reward model and a program: score = 1.0 * model + 0.5 * program
"$R" ppo "${COMMON[@]}" --reward-program "$COUNT" --reward-program-weight 0.5 --out both \
    --iterations 3 >both.out 2>both.err
check "3 iterations with a model and a program" test "$(wc -l <both/metrics.jsonl)" -eq 3
check "both parts are reported" jq -e -s 'all(.[]; .reward_model_mean != null and
    .reward_program_mean != null)' both/metrics.jsonl
check "score = 1.0 * model + 0.5 * program" near .ppo.score_mean \
    '.reward_model_mean + 0.5 * .reward_program_mean' both/metrics.jsonl
check "the model part is the reward model's (not constant, not the program's)" jq -e -s \
    'all(.[]; .reward_model_mean != .reward_program_mean) and
     ([.[].reward_model_mean] | unique | length) == 3' both/metrics.jsonl
# ... against the separate scores: iteration 0's rollouts are the same in every run (policy
# version 0, the same seed), so its parts are the program-only run's score and a reward-model-
# only run's score
"$R" ppo "${COMMON[@]}" --out rmonly --iterations 2 >rmonly.out 2>rmonly.err
check "the program part = the program-only run's (iteration 0)" jq -n -e \
    "$(jq -s '.[0].reward_program_mean' both/metrics.jsonl) == $(jq -s '.[0].reward_program_mean' prog/metrics.jsonl)"
check "the model part = the reward-model-only run's score (iteration 0)" jq -n -e \
    "($(jq -s '.[0].reward_model_mean' both/metrics.jsonl) - $(jq -s '.[0].ppo.score_mean' rmonly/metrics.jsonl) | fabs) <= 1e-6"

# --- a program that fails on some items: those of the prompts whose record has n a multiple of
# 5 sleep past the limit, of 7 kill the program; the run goes on, the items get the fallback,
# counted and logged (iterations 0 and 1 each have 3 prompts of the first kind, 2 of the second,
# 2 samples each)
cat >flaky.sh <<'EOF'
while read -r l; do
    n=${l##*\"n\":}; n=${n%%\}*}
    [ $((n % 5)) -eq 0 ] && sleep 30
    [ $((n % 7)) -eq 0 ] && kill -SEGV $$
    echo '{"score": 1}'
done
EOF
"$R" ppo "${COMMON[@]}" --reward-program "sh $W/flaky.sh" --rm-weight 0 \
    --reward-program-timeout-ms 300 --reward-program-fallback -1 --out flaky --iterations 2 \
    >flaky.out 2>flaky.err
check "a failing program does not stop the run" test "$(wc -l <flaky/metrics.jsonl)" -eq 2
check "timeouts are counted" jq -e -s 'all(.[]; .program_timeouts == 6)' flaky/metrics.jsonl
check "and crashes too" jq -e -s 'all(.[]; .program_errors == 10)' flaky/metrics.jsonl
# an item scores 1 or the fallback -1: the mean is known from the error count
check "failed items get the fallback" jq -e -s \
    'all(.[]; (.reward_program_mean - (1 - 2 * .program_errors / 32)) | fabs < 1e-9)' \
    flaky/metrics.jsonl
check "the run log names the item and the reason" \
    grep -q "reward program: item [0-9]*: timeout: no response within the time limit of 300 ms" \
    flaky/run.log
check "... and the crash's signal" grep -q "reward program: item [0-9]*: crash: .*signal 11" \
    flaky/run.log
use_master .cluster
check "/metrics counts them" metric_ge rlhf_reward_program_timeouts_total 12
check "... all of them" metric_ge rlhf_reward_program_errors_total 20

# --- rlhf gold-judge as the program = the in-process gold judge, to the last digit
# (`rlhf ...` is the rlhf next to the worker: a build directory is on no PATH)
"$R" ppo "${COMMON[@]}" --gold --reward-program "rlhf gold-judge" --rm-weight 0 --out gold \
    --iterations 2 >gold.out 2>gold.err
check "2 iterations with the gold judge as the program" test "$(wc -l <gold/metrics.jsonl)" -eq 2
jq -c '[.gold_mean]' gold/metrics.jsonl >gold.in
jq -c '[.reward_program_mean]' gold/metrics.jsonl >gold.prog
echo "gold judge: in-process $(tr '\n' ' ' <gold.in), as a program $(tr '\n' ' ' <gold.prog)"
check "rlhf gold-judge = the in-process gold judge (exactly)" cmp -s gold.in gold.prog
check "... on the metrics lines as written" bash -c "grep -o '\"gold_mean\":[^,}]*' gold/metrics.jsonl |
    cut -d: -f2 >a; grep -o '\"reward_program_mean\":[^,}]*' gold/metrics.jsonl | cut -d: -f2 >b; cmp a b"
check "... and it varies (not a constant)" jq -e -s '.[0].gold_mean > 0 and .[0].gold_mean < 1' \
    gold/metrics.jsonl
finish
