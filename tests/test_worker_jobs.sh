#!/usr/bin/env bash
# test_worker_jobs.sh - what a long-lived cluster needs of its workers, with real rlhf-master /
# rlhf-worker processes on loopback and jobs from rlhf-client-tool:
#   - one learner running two trainings alternately (TrainSpec.ckpt_dir) ends each in exactly
#     the parameters of that training run alone;
#   - a GENERATE job on a malformed model directory (a truncated model.safetensors, a config
#     whose n_embd does not match the weights) is rejected as deterministic, the file named;
#   - a stage worker runs `rlhf task --out DIR` (its files written, stdout to a file atomically)
#     and rejects a command with a bad argument as deterministic, with the command's error line.
# Usage: test_worker_jobs.sh BIN_DIR
BIN=${1:?usage: test_worker_jobs.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"

"$BIN/rlhf" init-model --layers 2 --heads 2 --dim 32 --vocab 64 --ctx 32 --seed 5 \
    --out "$W/modelA" >/dev/null
"$BIN/rlhf" init-model --layers 2 --heads 2 --dim 32 --vocab 64 --ctx 32 --seed 6 \
    --out "$W/modelB" >/dev/null
awk 'BEGIN { srand(7); for (i = 0; i < 3000; i++)
                printf "%d%s", int(rand() * 64), (i % 20 == 19 ? "\n" : " ") }' >"$W/tokens.txt"

# tjob ID TRAINING(A|B) PART(1|2) [CKPT_DIR]: one job line; part 1 = steps 0..2, part 2 = 3..4
tjob() {
    local first=$(($3 == 1 ? 0 : 3)) n=$(($3 == 1 ? 3 : 2)) seed=$([ "$2" = A ] && echo 1 || echo 2)
    jq -nc --argjson id "$1" --arg m "$W/model$2" --arg t "$W/tokens.txt" --argjson first "$first" \
        --argjson n "$n" --argjson seed "$seed" --arg c "${4:-}" \
        '{id: $id, kind: "train", model: $m, tokens: $t, batch_size: 5, seq: 16, step: $first,
          steps: $n, seed: $seed, total_steps: 5, lease_ms: 60000}
         + (if $c == "" then {} else {ckpt_dir: $c} end)'
}
# run NAME JOBS: a master, one learner (run dir $W/NAME.l), the jobs; waits for the client
run() {
    start_master "$1-m" "$W/$1.m" --exit-when-done
    submit "$1-c" "$2"
    start_worker "$1-w" --role learner --threads 1 --run-dir "$W/$1.l"
    local w=$WPID
    client_done 60
    kill -TERM "$MPID" "$w" 2>/dev/null
    wait "$MPID" "$w" 2>/dev/null
}
crc_of() { jq -r "select(.id == $2) | .params_crc32c" "$W/$1-c.out"; }
final() { echo "$1/$(cat "$1/latest")/model"; }
same_model() { cmp -s "$1/model.safetensors" "$2/model.safetensors"; }

# --- (a) each training alone (A in the learner's --run-dir, B in a ckpt_dir), then alternately
{ tjob 1 A 1; tjob 2 A 2; } >"$W/soloA.jsonl"
{ tjob 1 B 1 "$W/soloB.ck"; tjob 2 B 2 "$W/soloB.ck"; } >"$W/soloB.jsonl"
{ tjob 1 A 1 "$W/alt.A"; tjob 2 B 1 "$W/alt.B"; tjob 3 A 2 "$W/alt.A"; tjob 4 B 2 "$W/alt.B"; } \
    >"$W/alt.jsonl"
run soloA "$W/soloA.jsonl"
run soloB "$W/soloB.jsonl"
run alt "$W/alt.jsonl"
check "solo runs done" test "$(jq -s 'map(select(.status == "done")) | length' \
    "$W/soloA-c.out" "$W/soloB-c.out")" = 4
check "alternating run: 4 jobs done" test "$(jq -s 'map(select(.status == "done")) | length' \
    "$W/alt-c.out")" = 4
check "A alone and alternating: same params_crc32c" \
    test "$(crc_of soloA 2)" = "$(crc_of alt 3)" -a -n "$(crc_of alt 3)"
check "B alone and alternating: same params_crc32c" \
    test "$(crc_of soloB 2)" = "$(crc_of alt 4)" -a -n "$(crc_of alt 4)"
check "A and B differ" test "$(crc_of alt 3)" != "$(crc_of alt 4)"
check "A's checkpoints: in its ckpt_dir, at step 5" test "$(cat "$W/alt.A/latest")" = ckpt-0000000005
check "B's checkpoints: in its ckpt_dir, at step 5" test "$(cat "$W/alt.B/latest")" = ckpt-0000000005
check "A's final model bit for bit" same_model "$(final "$W/soloA.l")" "$(final "$W/alt.A")"
check "B's final model bit for bit" same_model "$(final "$W/soloB.ck")" "$(final "$W/alt.B")"
check "the learner switched training 4 times" \
    test "$(grep -c 'state dropped' "$W/alt-w.log")" = 4
check "nothing of the alternating run in the learner's --run-dir" \
    bash -c "! ls '$W/alt.l' | grep -q ckpt-"

# --- (b) malformed model directories: deterministic rejections naming the file
cp -r "$W/modelA" "$W/trunc"
truncate -s 2000 "$W/trunc/model.safetensors"
cp -r "$W/modelA" "$W/badcfg"
jq '.n_embd = 48' "$W/modelA/config.json" >"$W/badcfg/config.json"
for i in 1 2 3; do
    d=$([ $i = 1 ] && echo trunc || ([ $i = 2 ] && echo badcfg || echo missing))
    jq -nc --argjson id $i --arg m "$W/$d" \
        '{id: $id, kind: "generate", model: $m, prompt: [1, 2, 3], max_new_tokens: 4}'
done >"$W/bad.jsonl"
start_master bad-m "$W/bad.m" --exit-when-done --set master.max_attempts=1
submit bad-c "$W/bad.jsonl"
start_worker bad-w --role rollout --threads 1
client_done 30
check "truncated model.safetensors: deterministic, file named" \
    grep -q "failed job 1 attempt 1 (deterministic): .*trunc/model.safetensors" "$W/bad-w.log"
check "config.json not matching the weights: deterministic" \
    grep -q "failed job 2 attempt 1 (deterministic): .*badcfg" "$W/bad-w.log"
check "missing model directory: deterministic" \
    grep -q "failed job 3 attempt 1 (deterministic): .*missing" "$W/bad-w.log"
check "the master failed the 3 jobs" \
    test "$(jq -s 'map(select(.status != "done")) | length' "$W/bad-c.out")" = 3
kill -TERM "$MPID" 2>/dev/null

# --- (c) stage jobs: `rlhf task` run by a stage worker
jq -nc --arg w "$W" '{id: 1, kind: "stage", argv: ["task", "--out", ($w + "/stage/task"),
    "--sft", "50"], name: "task", cwd: $w, log: ($w + "/stage/logs/task.log"),
    stdout_to: ($w + "/stage/task.json"), lease_ms: 60000}' >"$W/stage.jsonl"
jq -nc --arg w "$W" '{id: 2, kind: "stage", argv: ["task", "--seed", "-1", "--out",
    ($w + "/stage/bad")], name: "bad", cwd: $w, log: ($w + "/stage/logs/bad.log")}' \
    >>"$W/stage.jsonl"
jq -nc --arg w "$W" '{id: 3, kind: "stage", argv: ["task", "--bogus"], name: "bogus",
    cwd: $w, log: ($w + "/stage/logs/bogus.log")}' >>"$W/stage.jsonl"
start_master st-m "$W/st.m" --exit-when-done --set master.max_attempts=1
submit st-c "$W/stage.jsonl"
start_worker st-w --role stage
client_done 30
check "stage: rlhf task succeeded (exit 0)" \
    test "$(jq -r 'select(.id == 1) | "\(.status) \(.exit_code)"' "$W/st-c.out")" = "done 0"
check "stage: the task's files written" \
    test -s "$W/stage/task/prompts.jsonl" -a -s "$W/stage/task/sft.jsonl"
check "stage: stdout to its file, renamed from .tmp" \
    bash -c "jq -e '.sft == 50' '$W/stage/task.json' && ! test -e '$W/stage/task.json.tmp'"
check "stage: bad argument: deterministic with the command's error line as reason" \
    grep -qF "failed job 2 attempt 1 (deterministic): rlhf task: --seed: '-1' is not an integer" \
    "$W/st-w.log"
check "stage: the reason reaches the client" \
    bash -c "jq -r 'select(.id == 2) | .status' '$W/st-c.out' | grep -qv done"
check "stage: unknown option: the getopt line, not the --help hint" \
    grep -qF "failed job 3 attempt 1 (deterministic): task: unrecognized option '--bogus'" \
    "$W/st-w.log"
finish
