#!/usr/bin/env bash
# test_learner.sh - TRAIN jobs on learner shards, with real rlhf-master / rlhf-worker processes
# on loopback. The same two jobs (5 AdamW steps of a tiny GPT-2, batches of 7 rows drawn from a
# token file, the gradient in 7 blocks) run with S = 1, 2 and 3 shards:
#   - S = 1 gives exactly the parameters of `rlhf train-lm` with the same batches;
#   - S = 2 and S = 3 give exactly (cmp) the parameters and losses of S = 1: the shards hold
#     uneven nodes of the blocks' tree (4+3 and 2+2+3 rows) and shard 0 combines them as one
#     process does; the steps did move the parameters away from the initial model;
#   - S = 3 with 2 blocks per step: shard 2 idles, the parameters are `rlhf train-lm
#     --grad-blocks 2`'s;
#   - shard 1 SIGKILLed mid-step (and restarted): the step is re-run, the job ends with exactly
#     the parameters of the undisturbed runs (any S), every step applied once;
#   - shard 1 killed and back too late: shard 0 fails the job, the master re-dispatches it, and
#     the retry starts from the learner's state before the job: same parameters again;
#   - shard 1 dead while the learner was idle: the next job waits for its successor;
#   - shard 0 (the learner) SIGKILLed mid-job: restarted, it resumes from its checkpoint and the
#     master's re-dispatch ends in the same parameters;
#   - a job the learner already applied is answered from the record, never applied twice;
#   - a corrupt newest checkpoint is detected and the one before it used.
# Usage: test_learner.sh BIN_DIR
BIN=${1:?usage: test_learner.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"

"$BIN/rlhf" init-model --layers 2 --heads 2 --dim 32 --vocab 64 --ctx 32 --seed 5 \
    --out "$W/model" >/dev/null
awk 'BEGIN { srand(7); for (i = 0; i < 3000; i++)
                printf "%d%s", int(rand() * 64), (i % 20 == 19 ? "\n" : " ") }' >"$W/tokens.txt"

# jobs FILE DELAY_MS [GRAD_BLOCKS]: job lines (submitted by rlhf-client-tool): job 1 = steps
# 0..2, job 2 = steps 3..4 (one cosine schedule of 5 steps); GRAD_BLOCKS 0: the default (8,
# capped at the 7 rows)
jobs() {
    local f=$1 delay=$2 gb=${3:-0} id first n
    for id in 1 2; do
        first=$((id == 1 ? 0 : 3)) n=$((id == 1 ? 3 : 2))
        jq -nc --argjson id "$id" --arg m "$W/model" --arg t "$W/tokens.txt" \
            --argjson first "$first" --argjson n "$n" --argjson delay "$delay" --argjson gb "$gb" \
            '{id: $id, kind: "train", model: $m, tokens: $t, batch_size: 7, seq: 16, step: $first,
              steps: $n, seed: 1, total_steps: 5, lease_ms: 120000, delay_ms: $delay,
              grad_blocks: $gb}'
    done >"$f"
}
jobs "$W/jobs.jsonl" 0
jobs "$W/jobs_slow.jsonl" 1000
jobs "$W/jobs_b2.jsonl" 0 2

# max_diff A B: "ABS REL" max differences of the parameters of two model directories
max_diff() {
    python3 - "$1" "$2" <<'EOF'
import json, struct, sys
def load(d):
    b = open(d + "/model.safetensors", "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: struct.unpack("<%df" % ((v["data_offsets"][1] - v["data_offsets"][0]) // 4),
                             b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in h.items() if k != "__metadata__"}
a, b = load(sys.argv[1]), load(sys.argv[2])
if a.keys() != b.keys(): sys.exit("tensor names differ")
d = m = 0.0
for k in a:
    for x, y in zip(a[k], b[k]):
        d = max(d, abs(x - y)); m = max(m, abs(x), abs(y))
print("%.3e %.3e" % (d, d / m))
EOF
}
same() { cmp -s "$1/model.safetensors" "$2/model.safetensors"; } # same A B: the same bytes
moved() { # the parameters differ from the initial model's by more than 1e-5 somewhere
    local r; r=$(max_diff "$W/model" "$1") || return 1
    awk -v a="${r% *}" 'BEGIN { exit !(a > 1e-5) }'
}
final() { echo "$1/$(cat "$1/latest")/model"; }
jqe() { jq -se "$@" >/dev/null; } # jqe FILTER FILE: the filter over all lines is true
done_jobs() {
    jq -r 'select(.status == "done") | .job_id' "$(results_of "$1")" | sort -u | grep -c . ||
        echo 0
}
done_ge() { [ "$(done_jobs "$1")" -ge "$2" ]; }

# learner NAME S JOBS [ARGS...]: a master, the job lines JOBS submitted to it by a client
# (NAME-c), shard 0 (worker NAME-0, run dir $W/NAME.l) and shards 1..S-1 (NAME-1 ..), all with
# ARGS; sets MPID, CPID, S0, SEP, SP[i]
learner() {
    local name=$1 s=$2 jobsf=$3; shift 3
    # 2 s of silence before a peer is dead, not 0.3 s: on a loaded machine (the suite runs two
    # tests at once) the master stalled 2.5 s once, requeued the lease of a learner still
    # training, and dropped that attempt's result - the job then failed as already applied
    start_master "$name-m" "$W/$name.m" --exit-when-done --liveness 20
    submit "$name-c" "$jobsf"
    start_worker "$name-0" --role learner --threads 1 --run-dir "$W/$name.l" --shard "0/$s" \
        --shard-endpoint 'tcp://127.0.0.1:*' "$@"
    S0=$WPID
    SEP=
    if [ "$s" -gt 1 ]; then
        wait_for 10 test -s "$W/$name.l/learner.json" || return 1
        SEP=$(jq -r .endpoint "$W/$name.l/learner.json")
    fi
    SP=()
    for i in $(seq 1 $((s - 1))); do
        start_worker "$name-$i" --role learner --threads 1 --shard "$i/$s" --shard-endpoint "$SEP" \
            "$@"
        SP[$i]=$WPID
    done
}
# finish_run NAME: waits (bounded) for the master to record both jobs, then stops everything
finish_run() {
    check "$1: both jobs done" wait_for 120 done_ge "$W/$1.m" 2
    wait_for 10 bash -c "! kill -0 $MPID 2>/dev/null"
    client_done
    kill -TERM "$MPID" "$S0" "${SP[@]}" 2>/dev/null
    wait "$MPID" "$S0" "${SP[@]}" 2>/dev/null
}
steps_once() { # metrics.jsonl has steps 0..4 exactly once each
    [ "$(jq -r .step "$1/metrics.jsonl" | tr '\n' ' ')" = "0 1 2 3 4 " ]
}

# --- S = 1, 2, 3 on the same jobs
for s in 1 2 3; do
    # S = 3 sends the arenas (~120 KB) in 16 KiB frames: several frames per arena
    learner "s$s" "$s" "$W/jobs.jsonl" $([ "$s" = 3 ] && echo --shard-chunk-kib 16)
    finish_run "s$s"
    check "s$s: checkpoint at step 5" test "$(cat "$W/s$s.l/latest")" = ckpt-0000000005
    check "s$s: each step applied once" steps_once "$W/s$s.l"
done
"$BIN/rlhf" train-lm --model "$W/model" --tokens "$W/tokens.txt" --out "$W/train-lm" --steps 5 \
    --batch 7 --seq 16 --seed 1 --threads 1 >/dev/null
check "S=1 equals rlhf train-lm bit for bit" same "$W/train-lm" "$(final "$W/s1.l")"
check "S=1 moved the parameters" moved "$(final "$W/s1.l")"
check "S=2 = S=1, byte for byte" same "$(final "$W/s1.l")" "$(final "$W/s2.l")"
check "S=3 = S=1, byte for byte" same "$(final "$W/s1.l")" "$(final "$W/s3.l")"
check "S=3: every shard acknowledged the final parameters" \
    grep -q "3/3 shards in sync" "$W/s3-0.log"
check "S=3: shard 2 computed blocks 4..6" grep -q "rows, blocks 4..+3)" "$W/s3-2.log"
losses_same() { # the per-step losses and gradient norms of two runs are the same numbers
    [ "$(jq -c '[.loss, .grad_norm]' "$1/metrics.jsonl")" = \
        "$(jq -c '[.loss, .grad_norm]' "$2/metrics.jsonl")" ] &&
        [ "$(grep -c . "$1/metrics.jsonl")" -eq 5 ]
}
check "S=2 and S=3: the losses and gradient norms of S=1" \
    bash -c "$(declare -f losses_same); losses_same '$W/s1.l' '$W/s2.l' && losses_same '$W/s1.l' '$W/s3.l'"
# two blocks per step for three shards: the tree cut into two nodes, shard 2 idle
learner b2 3 "$W/jobs_b2.jsonl"
finish_run b2
"$BIN/rlhf" train-lm --model "$W/model" --tokens "$W/tokens.txt" --out "$W/train-lm-b2" \
    --steps 5 --batch 7 --seq 16 --seed 1 --threads 1 --grad-blocks 2 >/dev/null
check "S=3 over 2 blocks = rlhf train-lm --grad-blocks 2, byte for byte" \
    same "$W/train-lm-b2" "$(final "$W/b2.l")"
check "S=3 over 2 blocks: shard 2 idled" grep -q "2 blocks per step for 3 shards: shards 2..2 idle" \
    "$W/b2-0.log"
check "the number of blocks changes the result (the setting, never S)" \
    bash -c "! cmp -s '$W/train-lm-b2/model.safetensors' '$W/train-lm/model.safetensors'"

# --- a job already applied is answered from the record; an older one is refused
sed -n 1p "$W/jobs.jsonl" >"$W/job1.jsonl"
sed -n 2p "$W/jobs.jsonl" >"$W/job2.jsonl"
start_master "replay-m" "$W/replay.m" --exit-when-done
REP=$EP
submit "replay-c" "$W/job2.jsonl"
start_worker "s1-again" --role learner --threads 1 --run-dir "$W/s1.l"
RP=$WPID
check "replay: job 2 done" wait_for 30 done_ge "$W/replay.m" 1
check "replay: answered from the record" \
    grep -q "job 2 (steps 3..4) already applied" "$W/s1-again.log"
check "replay: still at step 5, parameters unchanged" same "$W/train-lm" "$(final "$W/s1.l")"
wait_for 10 bash -c "! kill -0 $MPID 2>/dev/null"
client_done
# a master on the same endpoint: the learner registers with it by itself
start_master "older-m" "$W/older.m" --exit-when-done --bind "$REP" --set master.max_attempts=1
submit "older-c" "$W/job1.jsonl"
check "replay: job 1 (steps 0..2) refused by a learner at step 5" \
    wait_for 30 grep -q "the learner is at step 5, job 1 starts at step 0" "$W/s1-again.log"
wait_for 10 bash -c "! kill -0 $MPID 2>/dev/null"
client_done
check "replay: nothing applied" same "$W/train-lm" "$(final "$W/s1.l")"
kill -TERM "$RP"
wait "$RP"

# --- a corrupt newest checkpoint is detected: the learner resumes from the one before it
cp -r "$W/s1.l" "$W/c.l"
printf 'X' | dd of="$W/c.l/ckpt-0000000005/state.bin" bs=1 seek=100 conv=notrunc 2>/dev/null
start_master "c-m" "$W/c.m" --exit-when-done
submit "c-c" "$W/job2.jsonl"
start_worker "c-0" --role learner --threads 1 --run-dir "$W/c.l"
CP=$WPID
check "corrupt checkpoint: job 2 done" wait_for 30 done_ge "$W/c.m" 1
check "corrupt checkpoint: detected" grep -q "checkpoint ckpt-0000000005 unusable" "$W/c-0.log"
check "corrupt checkpoint: resumed from step 3" grep -q "ckpt-0000000003 at step 3" "$W/c-0.log"
check "corrupt checkpoint: job 2 re-run to the same parameters" \
    same "$W/train-lm" "$(final "$W/c.l")"
client_done
kill -TERM "$CP" "$MPID" 2>/dev/null
wait "$CP" "$MPID" 2>/dev/null

# --- a partial newest checkpoint (killed while writing it: models half written, no state file
# yet) is skipped the same way
cp -r "$W/s1.l" "$W/p.l"
rm "$W/p.l/ckpt-0000000005/state.bin"
truncate -s 100 "$W/p.l/ckpt-0000000005/model/model.safetensors"
start_master "p-m" "$W/p.m" --exit-when-done
submit "p-c" "$W/job2.jsonl"
start_worker "p-0" --role learner --threads 1 --run-dir "$W/p.l"
CP=$WPID
check "partial checkpoint: job 2 done" wait_for 30 done_ge "$W/p.m" 1
check "partial checkpoint: detected" grep -q "checkpoint ckpt-0000000005 unusable" "$W/p-0.log"
check "partial checkpoint: resumed from step 3" grep -q "ckpt-0000000003 at step 3" "$W/p-0.log"
check "partial checkpoint: job 2 re-run to the same parameters" \
    same "$W/train-lm" "$(final "$W/p.l")"
client_done
kill -TERM "$CP" "$MPID" 2>/dev/null
wait "$CP" "$MPID" 2>/dev/null

# --- shard 1 SIGKILLed mid-step (step 1 of job 1) and restarted: the step is re-run
learner k1 2 "$W/jobs_slow.jsonl"
check "k1: shard 1 computing step 1" wait_for 30 grep -q "computing step 1 round" "$W/k1-1.log"
kill -KILL "${SP[1]}"
wait "${SP[1]}" 2>/dev/null
start_worker "k1-1b" --role learner --threads 1 --shard 1/2 --shard-endpoint "$SEP"
SP[2]=$WPID
finish_run k1
check "k1: shard 0 saw the loss and re-ran the step" \
    grep -q "step 1 round .* abandoned" "$W/k1-0.log"
check "k1: the new shard got the parameters" grep -q "with parameters" "$W/k1-1b.log"
check "k1: parameters equal the undisturbed S=1 run" same "$(final "$W/s1.l")" "$(final "$W/k1.l")"
check "k1: each step applied once" steps_once "$W/k1.l"
check "k1: step 1 was re-run" \
    jqe 'map(select(.step == 1))[0].rounds_rerun >= 1' "$W/k1.l/metrics.jsonl"

# --- shard 1 killed and back too late: the job fails, the master re-dispatches it
learner k2 2 "$W/jobs_slow.jsonl" --shard-wait-ms 1000
check "k2: shard 1 computing step 1" wait_for 30 grep -q "computing step 1 round" "$W/k2-1.log"
kill -KILL "${SP[1]}"
wait "${SP[1]}" 2>/dev/null
check "k2: job 1 failed by shard 0" wait_for 30 grep -q "job 1 attempt 1 rejected" "$W/k2-m.log"
start_worker "k2-1b" --role learner --threads 1 --shard 1/2 --shard-endpoint "$SEP"
SP[2]=$WPID
finish_run k2
check "k2: the silent shard was declared lost" \
    grep -q "shard 1 lost mid-step 1 (silent" "$W/k2-0.log"
check "k2: unsaved steps dropped" \
    grep -q "job 1 failed at step 1: back to the last checkpoint" "$W/k2-0.log"
check "k2: job 1 done by a later attempt" \
    jqe 'map(select(.job_id == 1))[0].attempt >= 2' "$(results_of $W/k2.m)"
check "k2: parameters equal the undisturbed S=1 run" same "$(final "$W/s1.l")" "$(final "$W/k2.l")"
check "k2: each step applied once" steps_once "$W/k2.l"

# --- shard 1 dies while the learner is idle between jobs: the next job waits for its successor
learner k4 2 "$W/job1.jsonl"
check "k4: job 1 done" wait_for 60 done_ge "$W/k4.m" 1
wait_for 10 bash -c "! kill -0 $MPID 2>/dev/null"
client_done
kill -KILL "${SP[1]}"
wait "${SP[1]}" 2>/dev/null
waits() { [ "$(grep -c "waiting for shard(s) 1" "$W/k4-0.log")" -ge "$1" ]; }
n_waits=$(grep -c "waiting for shard(s) 1" "$W/k4-0.log")
# job 2 from a master on the same endpoint (the learner registers with it by itself)
start_master "k4b-m" "$W/k4b.m" --exit-when-done --bind "$EP"
submit "k4b-c" "$W/job2.jsonl"
check "k4: job 2 waits for shard 1" wait_for 30 waits $((n_waits + 1))
start_worker "k4-1b" --role learner --threads 1 --shard 1/2 --shard-endpoint "$SEP"
SP[2]=$WPID
check "k4: job 2 done" wait_for 60 done_ge "$W/k4b.m" 1
check "k4: parameters equal the undisturbed S=1 run" same "$(final "$W/s1.l")" "$(final "$W/k4.l")"
check "k4: each step applied once" steps_once "$W/k4.l"
wait_for 10 bash -c "! kill -0 $MPID 2>/dev/null"
client_done
kill -TERM "$MPID" "$S0" "${SP[@]}" 2>/dev/null
wait "$MPID" "$S0" "${SP[@]}" 2>/dev/null

# --- shard 0 SIGKILLed mid-job 2: restarted on the same endpoint, it resumes from step 3
learner k3 2 "$W/jobs_slow.jsonl"
check "k3: job 2 under way" wait_for 60 grep -q "computing step 3 round" "$W/k3-1.log"
kill -KILL "$S0"
wait "$S0" 2>/dev/null
start_worker "k3-0b" --role learner --threads 1 --run-dir "$W/k3.l" \
    --shard 0/2 --shard-endpoint "$SEP"
S0=$WPID
finish_run k3
check "k3: the restarted learner resumed from its checkpoint" \
    grep -q "resumed from checkpoint .*ckpt-0000000003 at step 3" "$W/k3-0b.log"
check "k3: parameters equal the undisturbed S=1 run" same "$(final "$W/s1.l")" "$(final "$W/k3.l")"
check "k3: each step applied once" steps_once "$W/k3.l"
check "k3: each job recorded once" test "$(results "$W/k3.m")" -eq 2
finish
