#!/usr/bin/env bash
# test_run_plan.sh - what `rlhf run` and `rlhf ppo` hand to the master, checked without one:
# the plan of `rlhf run --print-plan` (each stage's command line with {run} left for the master,
# --set, --name, --run-dir and --only in it; bad configs still refused naming file and line), and
# `rlhf ppo-prep` on a tiny model (OUT/ppo_plan.json and OUT/ppo_prompts.jsonl; a prompt longer
# than the context and a missing model directory refused). Usage: test_run_plan.sh BIN_DIR
BIN=$(cd "${1:?usage: test_run_plan.sh BIN_DIR}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1

# --- the demo's plan
"$R" run "$SRC/deploy/demo.yaml" --print-plan >demo.json 2>demo.err
check "the demo's plan is printed" jq -e . demo.json
check "named after run_dir, with seed, cwd and config" jq -e --arg cwd "$PWD" --arg cfg "$SRC/deploy/demo.yaml" \
    '.name == "demo" and .seed == 1 and .cwd == $cwd and .config == $cfg and (has("only") | not)' demo.json
check "every stage of the demo, in order" jq -e '[.stages[].name] == ["task", "tokenizer", "init",
    "sft", "generate", "annotate", "aggregate", "pairs", "train_rm", "eval_rm", "ppo", "evaluate",
    "dpo", "evaluate_dpo", "grpo", "evaluate_grpo", "report"]' demo.json
check "argv starts with the subcommand, {run} left literal" jq -e '.stages[0].argv[0:5] ==
    ["task", "--out", "{run}/task", "--seed", "1"]' demo.json
check "keys of other keys expand to {run} paths" jq -e '.stages[] | select(.name == "evaluate") |
    .argv | index("--baseline") as $i | .[$i + 1] == "{run}/sft"' demo.json
check "stdout_to for the evaluations and eval_rm only" jq -e '[.stages[] | select(has("stdout_to")) |
    [.name, .stdout_to]] == [["eval_rm", "{run}/rm_eval.json"], ["evaluate", "{run}/eval.json"],
    ["evaluate_dpo", "{run}/eval_dpo.json"], ["evaluate_grpo", "{run}/eval_grpo.json"]]' demo.json
arg_of() { jq -r --arg s "$1" --arg o "$2" '.stages[] | select(.name == $s) | .argv |
    index($o) as $i | .[$i + 1]' demo.json; }
check "dpo: the demo's settings, against the SFT policy, on the stage-1 pairs" test \
    "$(arg_of dpo --beta) $(arg_of dpo --lr) $(arg_of dpo --policy) $(arg_of dpo --pairs)" = \
    "0.5 0.0001 {run}/sft {run}/pairs.jsonl"
for o in --samples --max-new --temperature --prompts --baseline; do
    check "evaluate_dpo: $o as evaluate's" test "$(arg_of evaluate_dpo $o)" = "$(arg_of evaluate $o)"
    check "evaluate_grpo: $o as evaluate's" test "$(arg_of evaluate_grpo $o)" = "$(arg_of evaluate $o)"
done
check "evaluate_grpo: the GRPO policy" test "$(arg_of evaluate_grpo --policy)" = "{run}/grpo/policy"
check "grpo: the demo's stage, on verifiable rewards (the gold judge alone)" test \
    "$(arg_of grpo --out) $(arg_of grpo --samples) $(arg_of grpo --reward-program) $(arg_of grpo --rm-weight)" \
    = "{run}/grpo 4 rlhf gold-judge 0"
check "the ppo stage is a ppo command line with its settings" jq -e '.stages[] | select(.name == "ppo") |
    .argv[0] == "ppo" and (.argv | index("--set")) != null and .weight == 120' demo.json
check "no absolute run directory anywhere in argv" \
    jq -e '[.stages[].argv[] | select(test("runs/demo"))] == []' demo.json
check "config_json is the resolved configuration" jq -e '.config_json.run_dir == "runs/demo" and
    .config_json["sft.model"] == "{run}/init" and .config_json["ppo.iterations"] == "30"' demo.json

# --- a small config, with overrides
cat >small.yaml <<'Y'
run_dir: out/small
seed: 7
stages: [task, tokenizer, init, ppo]
task: {prompts: 10}
model: {layers: 1}
ppo: {iterations: 2, kl_coef: 0.1}
Y
"$R" run small.yaml --print-plan --set task.prompts=12 --set ppo.batch=4 >small.json
check "--set overrides a key" jq -e '.stages[0].argv | index("--prompts") as $i | .[$i + 1] == "12"' small.json
check "seed in argv" jq -e '.seed == 7 and (.stages[0].argv | index("--seed") as $i | .[$i + 1] == "7")' small.json
check "a PPO setting passed as --set" jq -e '.stages[3].argv | index("kl_coef=0.1") != null' small.json
check "--set reaches the ppo stage" jq -e '.stages[3].argv | index("--batch") as $i | .[$i + 1] == "4"' small.json
check "init takes the tokenizer's vocabulary" jq -e '.stages[2].argv | index("--vocab") as $i | .[$i + 1] == "512"' small.json
check "the name is the last part of run_dir" jq -e '.name == "small"' small.json
"$R" run small.yaml --print-plan --name other --only ppo >named.json
check "--name and --only" jq -e '.name == "other" and .only == "ppo"' named.json
"$R" run small.yaml --print-plan --run-dir elsewhere/r2 >rd.json
check "--run-dir gives the name" jq -e '.name == "r2" and .config_json.run_dir == "elsewhere/r2"' rd.json
"$R" run small.yaml --print-plan --only dance 2>err >/dev/null
check "--only an unknown stage: exit 2" test $? -eq 2
"$R" run small.yaml --print-plan --name a/b 2>err >/dev/null
check "a name with '/' is refused" test $? -eq 2

# --- bad configs fail as before, naming file and line
printf 'run_dir: x\nstages: [task]\ntask:\n  prompt: 3\n' >bad1.yaml
"$R" run bad1.yaml --print-plan 2>err >/dev/null
rc=$?
check "an unknown key: exit 2" test $rc -eq 2
check "... naming file and line" grep -q "bad1.yaml:4: unknown key 'task.prompt'" err
printf 'run_dir: x\nstages: [task, ppo]\nppo:\n  batch: 8\n  iterations: 0\n' >bad2.yaml
"$R" run bad2.yaml --print-plan 2>err >/dev/null
check "a value out of range names file, line and range" \
    grep -qF "bad2.yaml:5: ppo.iterations: '0' is not an integer in [1, 1000000]" err
"$R" run small.yaml --print-plan --set sft.steps=x 2>err >/dev/null
check "a bad --set is refused" grep -q "sft.steps" err
printf 'run_dir: x\nstages: [task, ppo]\nppo: {clip_eps: 0}\n' >bad3.yaml
"$R" run bad3.yaml --print-plan 2>err >/dev/null
check "PPO settings checked together" grep -qF "bad3.yaml: the ppo settings" err
printf 'run_dir: x\nstages: [task, ppo, grpo]\ngrpo: {clip_eps: 0}\n' >bad4.yaml
"$R" run bad4.yaml --print-plan 2>err >/dev/null
check "grpo's settings checked on their own, named as grpo's" grep -qF "bad4.yaml: the grpo settings" err

# --- two PPO-kind stages: ppo and grpo, each with its own section of keys
cat >two.yaml <<'Y'
run_dir: out/two
stages: [ppo, grpo]
ppo: {iterations: 2, kl_coef: 0.1}
grpo: {iterations: 5, kl_coef: 0.02, lr_policy: 0.001}
Y
"$R" run two.yaml --print-plan >two.json
grpo_arg() { jq -r --arg o "$1" '.stages[1].argv | index($o) as $i | .[$i + 1]' two.json; }
grpo_has() { jq -e --arg s "$1" '.stages[1].argv | index($s) != null' two.json >/dev/null; }
check "grpo is the ppo command, out in {run}/grpo" jq -e '.stages[1].argv[0:3] ==
    ["ppo", "--out", "{run}/grpo"] and .stages[1].name == "grpo"' two.json
check "grpo's keys reach grpo only" test "$(grpo_arg --iterations) $(jq -r '.stages[0].argv |
    index("--iterations") as $i | .[$i + 1]' two.json)" = "5 2"
check "... its PPO settings too" bash -c "$(declare -f grpo_has); grpo_has kl_coef=0.02 &&
    grpo_has lr_policy=0.001 && ! grpo_has kl_coef=0.1"
check "grpo's defaults: SFT policy, 4 samples, the gold judge alone as reward" test \
    "$(grpo_arg --policy) $(grpo_arg --samples) $(grpo_arg --reward-program) $(grpo_arg --rm-weight)" \
    = "{run}/sft 4 rlhf gold-judge 0"
check "... GRPO advantages, the KL in the loss (k3), sequences weighed alike" bash -c \
    "$(declare -f grpo_has); grpo_has adv_estimator=grpo && grpo_has kl_in=loss &&
    grpo_has kl_estimator=k3 && grpo_has loss_agg=sequence"
check "ppo keeps PPO's defaults" jq -e '.stages[0].argv | index("adv_estimator=grpo") == null and
    index("--samples") == null' two.json
printf 'stages: [ppo, grpo]\ngrpo:\n  learner_shards: 2\n' >shards.yaml
"$R" run shards.yaml --print-plan >/dev/null 2>shards.err
check "grpo.learner_shards apart from the run's learner: refused (exit 2)" test $? -eq 2
check "... saying that ppo.learner_shards sets the one learner" \
    grep -q "grpo.learner_shards 2: one learner serves every PPO stage.*ppo.learner_shards" shards.err

# --- ppo-prep on a tiny model
for i in $(seq 1 100); do echo "hello world what is two plus three name a fruit apple please $i"; done >corpus.txt
"$R" tokenizer-train --corpus corpus.txt --vocab-size 260 --out tok >/dev/null
"$R" init-model --tokenizer tok --layers 1 --heads 2 --dim 16 --vocab 260 --ctx 24 --out pol >/dev/null
"$R" init-model --tokenizer tok --layers 1 --heads 2 --dim 16 --vocab 260 --ctx 24 --scalar-head \
    --seed 2 --out rm >/dev/null
echo '{"mean": 0.5, "std": 2}' >rm/reward_stats.json
for i in $(seq 1 5); do echo "{\"prompt\":\"what is $i plus\"}"; done >prompts.jsonl
"$R" ppo-prep --policy pol --rm rm --prompts prompts.jsonl --out prep --iterations 3 --batch 4 \
    --seed 9 --gold --set kl_coef=0.05 >prep.out 2>prep.err
check "ppo-prep succeeds" test $? -eq 0
check "ppo_plan.json has the run's figures" jq -e --arg w "$W" '.policy == "\($w)/pol" and
    .rm == "\($w)/rm" and .ref == "\($w)/pol" and .value == "\($w)/rm" and .out == "\($w)/prep" and
    .iterations == 3 and .batch == 4 and .samples == 1 and .max_new == 24 and .per_job == 8 and
    .checkpoint_every == 1 and .seed == 9 and .gold == true and .count_token == -1 and
    .vocab == 260 and .eot >= 0 and .score_mean == 0.5 and .score_std == 2 and .n_prompts == 5 and
    .prompts == "\($w)/prep/ppo_prompts.jsonl"' prep/ppo_plan.json
check "config_json: the settings with the seed, vocabulary and --set" jq -e '.config_json | fromjson |
    .seed == 9 and .vocab_limit == 260 and (.kl_coef - 0.05 | fabs) < 1e-6' prep/ppo_plan.json
check "one prompt line per prompt, in order" jq -e -s 'length == 5 and .[0].text == "what is 1 plus"
    and .[4].text == "what is 5 plus" and all(.[]; (.ids | length) > 0)' prep/ppo_prompts.jsonl
ids=$(printf '%s' "what is 1 plus" | "$R" tokenize --model pol)
check "the ids are the policy tokenizer's" \
    test "$(jq -r -s '.[0].ids | map(tostring) | join(" ")' prep/ppo_prompts.jsonl)" = "$ids"
"$R" ppo-prep --policy pol --rm val --prompts prompts.jsonl --out prep2 --reward-count-token 97 \
    >/dev/null 2>err
check "a missing model directory: exit 1" test $? -eq 1
check "... saying so" grep -q "a model directory does not exist" err
"$R" ppo-prep --policy pol --rm rm --prompts prompts.jsonl --out prep3 --reward-count-token 97 >/dev/null 2>&1
check "a constructed reward: count_token, no score statistics" jq -e '.count_token == 97 and
    .score_mean == 0 and .score_std == 0' prep3/ppo_plan.json
{ echo '{"prompt":"short"}'; printf '{"prompt":"%s"}\n' "$(printf 'apple %.0s' $(seq 1 40))"; } >long.jsonl
"$R" ppo-prep --policy pol --rm rm --prompts long.jsonl --out prep4 >/dev/null 2>err
check "a prompt longer than the context: exit 1" test $? -eq 1
check "... naming file and line" grep -q "long.jsonl:2: the prompt is [0-9]* tokens; the context is 24" err
check "... and no plan written" test ! -e prep4/ppo_plan.json
"$R" ppo-prep --policy pol --rm rm --prompts prompts.jsonl --out prep5 --iterations 0 >/dev/null 2>err
check "ppo's options are checked: exit 2" test $? -eq 2

# --- the query commands without a cluster
"$R" status --data-dir nowhere 2>err >/dev/null
check "no cluster: rlhf status exits 1" test $? -eq 1
check "... saying so" grep -q "no cluster serves nowhere/" err
"$R" wait demo --data-dir nowhere 2>/dev/null >/dev/null
check "no cluster: rlhf wait exits 1" test $? -eq 1
"$R" logs 2>/dev/null >/dev/null
check "rlhf logs without RUN: exit 2" test $? -eq 2
finish
