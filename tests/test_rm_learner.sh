#!/usr/bin/env bash
# test_rm_learner.sh - `rlhf train-rm --learner-shards S`: the reward model's steps as TRAIN jobs
# of kind RM on a learner of S shards behind a local master (real rlhf-master / rlhf-worker
# processes on loopback, started by `rlhf up`). A tiny model and synthetic pairs (the
# completion with more "please" is preferred, as in test_rm_cli.sh):
#   - S = 1 gives exactly (byte for byte) the model of the in-process train-rm with the same
#     thread count: same split, same epoch orders, same step (8 blocks of one item each, combined
#     by the fixed tree, then rm_update);
#   - S = 2 (nodes of 4 + 4 items) and S = 3 (2 + 2 + 4) give exactly the model of S = 1, the same
#     per-step losses and accuracies, and held-out accuracy well above chance;
#   - the driver killed mid-run and started again continues (finished jobs answered from the
#     master's record, the learner from its checkpoint) and ends with exactly the model of the
#     uninterrupted runs;
#   - bad options exit 2.
# Usage: test_rm_learner.sh BIN_DIR
BIN=${1:?usage: test_rm_learner.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"
RLHF=$BIN/rlhf
jq_true() { jq -e "$1" <<<"$2" >/dev/null; } # jq_true FILTER JSON: the filter yields true

tiny_pairs_setup

# the learner alone in `rlhf up` gets every core: the in-process run uses as many threads
NPROC=$(nproc)
ARGS=(--model "$W/base" --pairs "$W/pairs.jsonl" --heldout-frac 0.25 --steps 30 --batch 8
    --lr 3e-3 --min-lr 3e-4 --warmup 5 --log-every 10)
train() { # train NAME [ARGS...]: train-rm into $W/NAME, its output in $W/NAME.jsonl
    local name=$1; shift
    "$RLHF" train-rm "${ARGS[@]}" --out "$W/$name" "$@" >"$W/$name.jsonl" 2>"$W/$name.log"
}
evalall() { "$RLHF" eval-rm --rm "$W/$1" --pairs "$W/pairs.jsonl" --all --threads 1; }

check "in-process train-rm" train inproc --threads "$NPROC"
check "train-rm --learner-shards 1" train s1 --learner-shards 1 --steps-per-job 8
tail -2 "$W/s1.jsonl" | sed 's/^/  /'
check "S=1: the jobs ran on the learner (4 jobs of <= 8 steps)" \
    test "$(jq -r 'select(.status == "done") | .job_id' "$(results_of $W/s1.run/cluster)" |
        sort -u | grep -c .)" -eq 4
check "S=1: a checkpoint at step 30" test -f "$W/s1.run/learner/ckpt-0000000030/state.bin"
check "S=1: per-step loss and accuracy logged" \
    jq_true '.loss > 0 and .accuracy >= 0 and .shards == 1' "$(grep '"step"' "$W/s1.jsonl" |
        head -1)"
check "S=1 = in process, byte for byte" cmp -s "$W/inproc/model.safetensors" \
    "$W/s1/model.safetensors"
check "S=1: same reward statistics" cmp -s "$W/inproc/reward_stats.json" \
    "$W/s1/reward_stats.json"
check "S=1: the model dir is complete" test -f "$W/s1/vocab.json" -a -f "$W/s1/merges.txt" \
    -a -f "$W/s1/config.json"
e0=$(evalall inproc) e1=$(evalall s1)
check "S=1: eval-rm --all identical" test "$e0" = "$e1"

check "train-rm --learner-shards 2" train s2 --learner-shards 2 --steps-per-job 8
tail -2 "$W/s2.jsonl" | sed 's/^/  /'
e2=$(evalall s2)
echo "  S=1: $e1"
echo "  S=2: $e2"
# The shards' nodes are combined in the tree of the step's blocks, as one process combines the
# blocks: every step, and so the end, is the same bits.
steps_of() { grep '"step"' "$W/$1.jsonl" | jq -c '[.step, .loss, .accuracy, .grad_norm]'; }
check "S=1: 4 logged steps to compare" test "$(steps_of s1 | grep -c .)" -eq 4
check "S=2 = S=1, byte for byte" cmp -s "$W/s1/model.safetensors" "$W/s2/model.safetensors"
check "S=2: the same reward statistics" cmp -s "$W/s1/reward_stats.json" "$W/s2/reward_stats.json"
check "S=2: the same logged losses, accuracies and gradient norms" \
    test "$(steps_of s1)" = "$(steps_of s2)"
check "S=2: eval-rm --all identical" test "$e2" = "$e1"
check "S=2: per-step figures from both shards" \
    jq_true '.shards == 2 and .pairs_per_s > 0' "$(grep '"step"' "$W/s2.jsonl" | tail -1)"
held=$(grep '"split"' "$W/s2.jsonl")
check "S=2: held-out accuracy well above chance" jq_true '.accuracy > 0.85' "$held"
check "S=2: summary names the shards and the rate" \
    jq_true '.learner_shards == 2 and .pairs_per_s > 0 and .train_pairs == 720' \
    "$(tail -1 "$W/s2.jsonl")"
check "train-rm --learner-shards 3" train s3 --learner-shards 3 --steps-per-job 8
check "S=3 = S=1, byte for byte" cmp -s "$W/s1/model.safetensors" "$W/s3/model.safetensors"
check "S=3: the same logged losses, accuracies and gradient norms" \
    test "$(steps_of s1)" = "$(steps_of s3)"
check "S=3: three shards reported" jq_true '.shards == 3' "$(grep '"step"' "$W/s3.jsonl" | tail -1)"

# interrupted: the driver is stopped (SIGTERM: it stops its cluster) once a job is recorded,
# started again and killed (SIGKILL: its cluster stays up until the next run stops it) once
# another is, then the same command runs to the end. Wherever the signals land, the end must be
# the model of the uninterrupted run.
done_jobs() {
    jq -r 'select(.status == "done") | .job_id' "$(results_of $W/rs.run/cluster)" 2>/dev/null |
        sort -u | grep -c .
}
done_ge() { [ "$(done_jobs)" -ge "$1" ]; }
RS=("${ARGS[@]}" --out "$W/rs" --learner-shards 2 --steps-per-job 3)
"$RLHF" train-rm "${RS[@]}" >"$W/rs1.jsonl" 2>"$W/rs1.log" &
DRV=$!
PIDS+=("$DRV")
wait_for 120 done_ge 1
kill -TERM "$DRV" 2>/dev/null
wait "$DRV" 2>/dev/null
check "SIGTERM: the driver stopped its cluster" \
    bash -c "! '$RLHF' down --run-dir '$W/rs.run/cluster' 2>/dev/null"
n1=$(done_jobs)
"$RLHF" train-rm "${RS[@]}" >"$W/rs2.jsonl" 2>"$W/rs2.log" &
DRV=$!
PIDS+=("$DRV")
wait_for 120 done_ge $((n1 + 1))
kill -KILL "$DRV" 2>/dev/null
wait "$DRV" 2>/dev/null
check "the interrupted drivers saved nothing" test ! -e "$W/rs/model.safetensors"
check "the same command again finishes" train rs --learner-shards 2 --steps-per-job 3
check "resumed run = uninterrupted runs, byte for byte" cmp -s "$W/s1/model.safetensors" \
    "$W/rs/model.safetensors"
check "every job recorded once" test "$(jq -r .job_id "$(results_of $W/rs.run/cluster)" |
    sort | uniq -d | grep -c .)" -eq 0
check "no cluster left running" bash -c "! '$RLHF' down --run-dir '$W/rs.run/cluster' 2>/dev/null"

"$RLHF" train-rm "${ARGS[@]}" --out "$W/bad" --learner-shards 0 >/dev/null 2>&1
check "--learner-shards 0 exits 2" test $? -eq 2
"$RLHF" up --run-dir "$W/upbad" --learner 2 --learner-shards 2 >/dev/null 2>&1
check "rlhf up: shards need exactly one learner" test $? -eq 2
finish
