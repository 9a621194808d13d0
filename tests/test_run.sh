#!/usr/bin/env bash
# test_run.sh - `rlhf run`: the whole pipeline from a YAML config on a tiny setting (every stage,
# through master and workers), its outputs and report; a second run skips every finished stage;
# a run killed mid-stage continues when started again; --set overrides; bad configs are refused
# naming file, line and key, every value checked against the option tables when the file is read. Usage: test_run.sh BIN_DIR
BIN=$(cd "${1:?usage: test_run.sh BIN_DIR}" && pwd)
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1

cat >tiny.yaml <<'Y'
# every stage of the demo, sized to run in seconds
run_dir: run
seed: 3
stages: [task, tokenizer, init, sft, generate, annotate, aggregate, pairs, train_rm, eval_rm,
         ppo, evaluate, report]
task: {prompts: 48, heldout: 12, sft: 400}
tokenizer: {vocab_size: 512}
model: {layers: 1, heads: 2, dim: 32, ctx: 64}
sft: {steps: 40, batch: 8}
generate: {k: 3, max_new: 12}
annotate: {simulate: 4, overlap: 3}
rm: {epochs: 1}
ppo: {iterations: 3, batch: 8, max_new: 12, gold: true, lr_policy: 0.0003, kl_coef: 0.1}
eval: {samples: 2, max_new: 12}
Y
"$R" run tiny.yaml >run1.out 2>run1.err
check "the pipeline runs to the end" grep -q "all stages done" run1.err
for f in task/prompts.jsonl task/sft.jsonl tokenizer/vocab.json sft/model.safetensors \
    completions.jsonl annotations.jsonl aggregated.jsonl agreement.json pairs.jsonl \
    rm/model.safetensors rm/reward_stats.json rm_eval.json ppo/metrics.jsonl \
    ppo/policy/model.safetensors eval.json report.md config.json; do
    check "wrote $f" test -s "run/$f"
done
check "13 stage markers" test "$(ls run/stages/*.json | wc -l)" -eq 13
check "K = 3 completions for each of 48 prompts" \
    jq -e -s 'length == 48 and all(.[]; (.completions | length) == 3)' run/completions.jsonl
check "three annotators per prompt" test "$(wc -l <run/annotations.jsonl)" -eq 144
check "at most C(3,2) = 3 pairs per prompt" \
    jq -e -s 'group_by(.prompt_id) | all(.[]; length <= 3)' run/pairs.jsonl
check "3 PPO iterations" test "$(wc -l <run/ppo/metrics.jsonl)" -eq 3
check "the report has the gold win rate" grep -q "Gold win rate of PPO over SFT" run/report.md
check "the resolved config is recorded" jq -e '."ppo.iterations" == "3" and .seed == 3' run/config.json

"$R" run tiny.yaml >/dev/null 2>run2.err
check "a second run skips every stage" test "$(grep -c 'done earlier' run2.err)" -eq 13

# the client killed in the middle of SFT: the run is the master's, it goes on; the same command
# follows it again to the end (2000 steps: several seconds here, so that SFT cannot finish
# between the check below and the kill on a fast machine)
rm -rf run
setsid "$R" run tiny.yaml --set sft.steps=2000 >/dev/null 2>cut.err &
RPID=$!
PIDS+=("$RPID")
in_sft() { grep -q "\[4/13\] sft" cut.err; }
check "the run reaches SFT" wait_for 60 in_sft
sleep 0.5
kill -KILL -- -"$RPID" 2>/dev/null
wait "$RPID" 2>/dev/null
check "no SFT marker yet when the client is killed" test ! -e run/stages/sft.json
# (a bound, not a figure: 2000 SFT steps take minutes in the sanitizer build beside other tests)
check "the run goes on without its client" wait_for 300 test -e run/stages/sft.json
"$R" run tiny.yaml --set sft.steps=2000 --set ppo.iterations=1 >/dev/null 2>other.err
check "another plan for a run that is running is refused" grep -q "cancel it first" other.err
"$R" run tiny.yaml --set sft.steps=2000 >/dev/null 2>resume.err
check "the same command follows it to the end" grep -q "all stages done" resume.err
check "... without showing the log again from the start" test "$(grep -c '\[1/13\] task' resume.err)" -eq 0
check "--set reached the stage" jq -e '."sft.steps" == "2000"' run/config.json
"$R" run tiny.yaml --set sft.steps=2000 --set ppo.iterations=1 >/dev/null 2>again.err
check "a finished run with another plan runs again, skipping finished stages" \
    grep -q "ppo .*done earlier" again.err
check "--set reached the config" jq -e '."ppo.iterations" == "1"' run/config.json
"$R" runs --data-dir . >runs.out
check "rlhf runs lists it" grep -q "^run .*succeeded" runs.out
"$R" wait run --data-dir . >/dev/null
check "rlhf wait: 0 for a run that succeeded" test $? -eq 0

# bad configs
printf 'run_dir: x\nstages: [task]\ntask:\n  prompt: 3\n' >bad1.yaml
"$R" run bad1.yaml 2>err >/dev/null
check "an unknown key names file and line" grep -q "bad1.yaml:4: unknown key 'task.prompt'" err
printf 'run_dir: x\nstages: [task]\ntask:\n  prompts: many\n' >bad2.yaml
"$R" run bad2.yaml 2>err >/dev/null
check "a bad value names file, line and key" grep -q "bad2.yaml:4: task.prompts: 'many' is not an integer" err
printf 'run_dir: x\nstages: [task, dance]\n' >bad3.yaml
"$R" run bad3.yaml 2>err >/dev/null
check "an unknown stage is named" grep -q "no stage 'dance'" err
"$R" run tiny.yaml --set ppo.nope=1 2>err >/dev/null
check "--set of an unknown key" grep -q "unknown key 'ppo.nope'" err
printf 'run_dir: x\nstages: ppo\n' >bad4.yaml
"$R" run bad4.yaml 2>err >/dev/null
check "stages as a scalar is named as such" \
    grep -qF "bad4.yaml:2: stages: expected a list of stage names, got a scalar" err
printf 'run_dir: x\nstage: [ppo]\n' >bad5.yaml
"$R" run bad5.yaml 2>err >/dev/null
check "a typo of stages is an unknown key, with a suggestion" \
    grep -qF "bad5.yaml:2: unknown key 'stage' (did you mean 'stages'?)" err
# values are checked against the option tables when the file is read, before any stage runs
printf 'run_dir: x\nstages: [task, ppo]\nppo:\n  batch: 8\n  iterations: 0\n' >bad6.yaml
"$R" run bad6.yaml 2>err >/dev/null
check "a value out of range exits 2" test $? -eq 2
check "... named with file, line and range when the file is read" \
    grep -qF "bad6.yaml:5: ppo.iterations: '0' is not an integer in [1, 1000000]" err
check "... before any stage runs" test ! -e x
printf 'run_dir: x\nstages: [ppo]\nppo: {kl_coef: -1}\n' >bad7.yaml
"$R" run bad7.yaml 2>err >/dev/null
check "a PPO setting out of range" grep -qF "bad7.yaml:3: ppo.kl_coef: '-1' is not a number in [0, inf]" err
printf 'run_dir: x\nstages: [task, ppo]\nppo: {clip_eps: 0}\n' >bad8.yaml
"$R" run bad8.yaml 2>err >/dev/null
check "PPO settings that do not go together are refused when read" \
    grep -qF "bad8.yaml: the ppo settings: ppo config: bad clip_eps" err
check "... before any stage runs" test ! -e x
"$R" run tiny.yaml --set model.layers=0 2>err >/dev/null
check "--set out of range" grep -qF "model.layers: '0' is not an integer in [1, 1000]" err
"$R" run --list-keys >keys.txt
check "--list-keys: a stage's keys are its command's options" grep -q "^ppo.max_new  *int  *24 " keys.txt
check "--list-keys: and the PPO settings" grep -q "^ppo.kl_coef  *number  *0.03 " keys.txt
check "--list-keys: grpo's keys, with GRPO's defaults" grep -q "^grpo.adv_estimator  *string  *grpo " keys.txt
finish
