#!/usr/bin/env bash
# test_client.sh - jobs submitted to a running master by a client (common/net/client.h, driven by
# rlhf-client-tool), the one way jobs reach a master: a master and two rollout workers. Every job is delivered to the client exactly once and recorded exactly once, also
# when the same ids are submitted again, when the master is killed (-9) mid-run and restarted
# on the same endpoint and run directory, and when the driver itself is killed and restarted.
# A different spec under a known id is rejected; invalid submissions are counted and answered,
# and the master keeps serving; a payload that is not its kind's spec is not the master's
# business (it never decodes payloads): the workers fail that job.
# Usage: test_client.sh BIN_DIR
BIN=${1:?usage: test_client.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"
CT="$BIN/rlhf-client-tool"
make_model "$W/model"

lines() { grep -c . "$1" 2>/dev/null || echo 0; }
ids() { jq -r .id "$1" | sort -u | grep -c .; }
none_but_done() { ! jq -r .status "$1" | grep -qv '^done$'; }
# outputs of a client run, comparable across runs
outputs() { jq -c '{id, status, kind, output_crc32c, tokens}' "$1" | sort; }
status_ok() { mcurl -sf "$HTTP/status" | jq -e "$1" >/dev/null; }
# summary_ok LOG FILTER: the client's summary line (its last line on stderr) passes FILTER
summary_ok() { tail -1 "$1" | jq -e "$2" >/dev/null; }

start_master m1 "$W/run"
EP1=$EP
start_worker wa --role rollout; WA=$WPID
start_worker wb --role rollout; WB=$WPID

# --- 20 NOOP + 5 GENERATE, each delivered once, each recorded once ---------------------------
timeout 60 "$CT" submit --master "$EP" --noop 20 --generate 5 --model "$W/model" \
    >"$W/c1.out" 2>>"$W/c1.log"
check "submit: client exits 0" test $? -eq 0
check "submit: 25 jobs delivered" test "$(lines "$W/c1.out")" -eq 25
check "submit: 25 distinct ids" test "$(ids "$W/c1.out")" -eq 25
check "submit: all done" none_but_done "$W/c1.out"
gen6=$(jq -c 'select(.kind == "generate") | .tokens | length' "$W/c1.out" | grep -c '^6$')
check "submit: the 5 GENERATE outputs decode to 6 tokens each" test "$gen6" -eq 5
check "journal: 25 job ends, 25 ids" \
    test "$(results "$W/run")" -eq 25 -a "$(uniq_results "$W/run")" -eq 25
kept=$(jq -c 'select(.kind == "generate" and (.tokens | length) == 6)' \
    "$(results_of $W/run)" | grep -c .)
check "the journal keeps each output: 5 GENERATE ends decode to 6 tokens" test "$kept" -eq 5
check "/status: jobs by kind" \
    status_ok '.jobs_by_kind.noop.done == 20 and .jobs_by_kind.generate.done == 5'
check "/status: the client is listed" status_ok '[.clients[] | select(.pid > 0)] | length >= 1'

# --- the same ids again: answered from the records, nothing re-run ---------------------------
dispatched=$(metric rlhf_jobs_dispatched_total)
timeout 60 "$CT" submit --master "$EP" --noop 20 --generate 5 --model "$W/model" \
    >"$W/c2.out" 2>>"$W/c2.log"
check "resubmit: client exits 0" test $? -eq 0
check "resubmit: the same 25 results" diff <(outputs "$W/c1.out") <(outputs "$W/c2.out")
check "resubmit: nothing dispatched again" \
    test "$(metric rlhf_jobs_dispatched_total)" -eq "$dispatched"
check "resubmit: still 25 records" test "$(results "$W/run")" -eq 25
check "resubmit: counted" metric_ge rlhf_client_jobs_resubmitted_total 25

# --- another spec under a known id is rejected -----------------------------------------------
check "conflict: rejected" bash -c "'$CT' conflict --master '$EP' --first-id 3 >>'$W/conflict.out'"
check "conflict: counted" metric_ge rlhf_client_jobs_rejected_total 1
check "conflict: nothing recorded" test "$(results "$W/run")" -eq 25

# --- invalid submissions: refused with reasons, counted, the master keeps serving -------------
bad0=$(metric 'rlhf_wire_bad_messages_total{reason="malformed"}')
"$CT" bad-submit --master "$EP" >"$W/bad.out" 2>>"$W/bad.log"
check "bad-submit: each refused as it should be, a valid job still runs" test $? -eq 0
check "bad-submit: three reasons given" \
    test "$(jq -c 'select(.check == "invalid specs") | .reasons | length' "$W/bad.out")" -eq 3
check "bad-submit: a payload that is no GenerateSpec is failed by the workers" \
    test "$(jq -c 'select(.check == "opaque payload") | .failed_by_worker' "$W/bad.out")" = true
check "bad-submit: counted as malformed" \
    metric_ge 'rlhf_wire_bad_messages_total{reason="malformed"}' $((bad0 + 2))
check "bad-submit: the master still serves" bash -c "curl -sf '$HTTP/healthz' >/dev/null"

# --- the master killed (-9) mid-run, restarted on the same endpoint and run directory --------
"$CT" submit --master "$EP" --first-id 101 --generate 30 --model "$W/model" --delay-ms 500 \
    --name driver >"$W/c3.out" 2>>"$W/c3.log" &
CPID=$!
PIDS+=("$CPID")
check "crash: some results delivered first" \
    wait_for 60 bash -c "test \$(grep -c . '$W/c3.out') -ge 4"
# freeze the workers so the run is certainly unfinished when the master dies
kill -STOP "$WA" "$WB"
kill -KILL "$MPID"
wait "$MPID" 2>/dev/null
before=$(lines "$W/c3.out")
check "crash: the master died mid-run ($before of 30 delivered)" test "$before" -lt 30
kill -CONT "$WA" "$WB"
start_master m2 "$W/run" --bind "$EP1"
check "crash: restarted on the same endpoint" test "$EP" = "$EP1"
wait "$CPID"
check "crash: client exits 0" test $? -eq 0
check "crash: 30 jobs delivered, each once" \
    test "$(lines "$W/c3.out")" -eq 30 -a "$(ids "$W/c3.out")" -eq 30
check "crash: all done" none_but_done "$W/c3.out"
check "crash: the client saw the new master and resubmitted" \
    summary_ok "$W/c3.log" '.master_changes >= 1 and .jobs_resubmitted >= 1'
check "crash: the journal has no duplicate ids" \
    test "$(results "$W/run")" -eq "$(uniq_results "$W/run")"
check "crash: 25 + 2 (bad-submit) + 30 jobs recorded" test "$(uniq_results "$W/run")" -eq 57

# --- a restarted driver asks for jobs finished before the master restart ----------------------
timeout 60 "$CT" fetch --master "$EP" --first-id 1 --n 25 >"$W/c4.out" 2>>"$W/c4.log"
check "fetch: client exits 0" test $? -eq 0
check "fetch: the restarted master answers from its records" \
    diff <(outputs "$W/c1.out") <(outputs "$W/c4.out")
check "fetch: counted" metric_ge rlhf_client_fetches_total 1
timeout 30 "$CT" fetch --master "$EP" --first-id 777777 --n 1 >"$W/c5.out" 2>>"$W/c5.log"
check "fetch: an unknown job is reported as rejected, not waited for" \
    test $? -eq 1 -a "$(jq -r .status "$W/c5.out")" = rejected

# --- the driver killed (-9) mid-run and started again: every job once, recorded once ---------
"$CT" submit --master "$EP" --first-id 201 --generate 10 --model "$W/model" --delay-ms 300 \
    --name driver2 >"$W/c6.out" 2>>"$W/c6.log" &
CPID=$!
PIDS+=("$CPID")
check "driver crash: some results first" \
    wait_for 60 bash -c "test \$(grep -c . '$W/c6.out') -ge 1"
kill -KILL "$CPID"
wait "$CPID" 2>/dev/null
timeout 60 "$CT" submit --master "$EP" --first-id 201 --generate 10 --model "$W/model" \
    --delay-ms 300 --name driver2 >"$W/c7.out" 2>>"$W/c7.log"
check "driver crash: the restarted driver gets all 10" test $? -eq 0 -a "$(ids "$W/c7.out")" -eq 10
check "driver crash: the journal has no duplicate ids" \
    test "$(results "$W/run")" -eq "$(uniq_results "$W/run")" -a "$(uniq_results "$W/run")" -eq 67
check "workers were never restarted" kill -0 "$WA" "$WB"
finish
