#!/usr/bin/env bash
# test_runtime_fault.sh - faults with real processes on loopback: a worker SIGKILLed mid-job,
# a worker frozen (SIGSTOP) past its liveness and resumed, a worker stopped with SIGTERM, the
# the master killed and restarted on the same port (also while a worker is mid-job). Jobs are
# submitted by a client (rlhf-client-tool), which submits them again to a restarted master. Every
# job ends with exactly one result.
# Usage: test_runtime_fault.sh BIN_DIR
BIN=${1:?usage: test_runtime_fault.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"
make_model "$W/model"

# holder LOGPREFIX JOB ATTEMPT: prints the name of the worker whose log says it started it
holder() {
    grep -l "start job $2 attempt $3\$" "$W"/$1*.log 2>/dev/null | head -1 | xargs -r basename | sed 's/\.log$//'
}
has_holder() { [ -n "$(holder "$@")" ]; }
pid_of() { jq -r --arg id "$1" '.workers[] | select(.id == $id and .state == "alive") | .pid' <(mcurl -sf "$HTTP/status"); }

# --- SIGKILL mid-job: the job completes elsewhere, exactly one result
gen_jobs 1 1500 "$W/model" >"$W/jobs1.jsonl"
start_master m1 "$W/r1"
submit c1 "$W/jobs1.jsonl"
start_worker ka --role rollout; KA=$WPID
start_worker kb --role rollout; KB=$WPID
check "job 1 started" wait_for 10 has_holder k 1 1
h=$(holder k 1 1)
if [ "$h" = ka ]; then victim=$KA survivor=kb; else victim=$KB survivor=ka; fi
kill -KILL "$victim"
check "killed worker's job done once" wait_for 15 results_ge "$W/r1" 1
check "result is attempt 2 by the survivor" \
    bash -c "jq -e 'select(.job_id == 1) | .attempt == 2 and .worker == \"$survivor\"' '$(results_of $W/r1)' >/dev/null"
check "a worker death was counted" metric_ge rlhf_worker_deaths_total 1
check "exactly one result" test "$(results "$W/r1")" -eq 1
client_done
kill -TERM "$MPID"; wait "$MPID"
kill -KILL "$KA" "$KB" 2>/dev/null

# --- SIGSTOP past liveness: same; its late result after SIGCONT is dropped
start_master m2 "$W/r2"
submit c2 "$W/jobs1.jsonl"
start_worker sa --role rollout; SA=$WPID
start_worker sb --role rollout; SB=$WPID
check "job 1 started (stop test)" wait_for 10 has_holder s 1 1
h=$(holder s 1 1)
if [ "$h" = sa ]; then victim=$SA; else victim=$SB; fi
kill -STOP "$victim"
check "frozen worker's job done elsewhere" wait_for 15 results_ge "$W/r2" 1
check "done as attempt 2" bash -c "jq -e '.attempt == 2' '$(results_of $W/r2)' >/dev/null"
kill -CONT "$victim"
check "late result from the resumed worker dropped" \
    wait_for 10 bash -c "mcurl -sf '$HTTP/status' | jq -e '.results_dropped.duplicate + .results_dropped.stale >= 1'"
check "still exactly one result" test "$(results "$W/r2")" -eq 1
check "resumed worker registers again" wait_for 10 bash -c "mcurl -sf '$HTTP/status' | jq -e '[.workers[] | select(.state == \"alive\")] | length == 2'"

# --- SIGTERM mid-job: handed back, goodbye, exit 0; the job is done by the other worker
printf '{"id":2,"kind":"generate","model":"%s","prompt":[5,6],"max_new_tokens":4,"delay_ms":5000}\n' "$W/model" >"$W/jobs2.jsonl"
client_done
kill -TERM "$MPID"; wait "$MPID"
start_master m3 "$W/r3" --bind "$EP"
submit c3 "$W/jobs2.jsonl"
check "both workers re-register with the new master" \
    wait_for 10 bash -c "mcurl -sf '$HTTP/status' | jq -e '[.workers[] | select(.state == \"alive\")] | length == 2'"
check "job 2 started" wait_for 10 has_holder s 2 1
h=$(holder s 2 1)
if [ "$h" = sa ]; then victim=$SA; else victim=$SB; fi
kill -TERM "$victim"
wait "$victim"
check "SIGTERM: worker exits 0" test $? -eq 0
check "SIGTERM: job handed back" grep -q "job 2 attempt 1 handed back" "$W/m3.log"
check "handed-back job done by the other worker" wait_for 15 results_ge "$W/r3" 1
check "exactly one result (handback)" test "$(results "$W/r3")" -eq 1
client_done
kill -TERM "$MPID"; wait "$MPID"
kill -KILL "$SA" "$SB" 2>/dev/null

# --- master killed and restarted on the same port: workers re-register by themselves, the
# client submits the unfinished jobs again
gen_jobs 8 300 "$W/model" >"$W/jobs3.jsonl"
start_master m4 "$W/r4"
submit c4 "$W/jobs3.jsonl"
C4=$CPID
EP4=$EP
start_worker ra --role rollout; RA=$WPID
start_worker rb --role rollout; RB=$WPID
check "some results before the crash" wait_for 15 results_ge "$W/r4" 2
kill -KILL "$MPID"
wait "$MPID" 2>/dev/null
start_master m5 "$W/r4" --bind "$EP4" --exit-when-done
check "restarted on the same endpoint" test "$EP" = "$EP4"
check "both workers registered with the new master" \
    wait_for 15 bash -c "test \$(grep -c 'registered' '$W/m5.log') -ge 2"
wait "$MPID"
check "restarted master finished the run" test $? -eq 0
check "8 jobs, each recorded exactly once" test "$(results "$W/r4")" -eq 8 -a "$(uniq_results "$W/r4")" -eq 8
check "all 8 done, none failed" test "$(jq -r .status "$(results_of $W/r4)" | grep -c '^done$')" -eq 8
check "workers were never restarted" kill -0 "$RA" "$RB"
wait "$C4"
check "the client got all 8, each once" \
    test "$(jq -r 'select(.status == "done") | .id' "$W/c4.out" | sort -u | grep -c .)" -eq 8 -a "$(grep -c . "$W/c4.out")" -eq 8
check "the client saw the new master and submitted again" \
    bash -c "tail -1 '$W/c4.log' | jq -e '.master_changes >= 1 and .jobs_resubmitted >= 1' >/dev/null"
kill -KILL "$RA" "$RB" 2>/dev/null

# --- master restarted while a worker is mid-job: the worker says so in its Hello, so the new
# master gives it nothing until that job ends (a "busy" refusal would burn the job's attempts)
printf '{"id":%d,"kind":"generate","model":"%s","prompt":[1,2],"max_new_tokens":3,"delay_ms":1500}\n' 1 "$W/model" 2 "$W/model" >"$W/jobs5.jsonl"
start_master m6 "$W/r5"
submit c5 "$W/jobs5.jsonl"
EP5=$EP
start_worker ba --role rollout; BA=$WPID
check "job 1 started (busy test)" wait_for 10 grep -q "start job 1 attempt 1\$" "$W/ba.log"
kill -KILL "$MPID"
wait "$MPID" 2>/dev/null
start_master m7 "$W/r5" --bind "$EP5" --set master.max_attempts=2 --exit-when-done
wait "$MPID"
check "restarted master finished (busy test)" test $? -eq 0
check "both jobs done, none failed" test "$(jq -r .status "$(results_of $W/r5)" | grep -c '^done$')" -eq 2
check "no assignment refused as busy" bash -c "! grep -q busy '$W/m7.log'"
check "the worker was never restarted (busy test)" kill -0 "$BA"
finish
