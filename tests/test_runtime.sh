#!/usr/bin/env bash
# test_runtime.sh - rlhf-master and rlhf-worker as real processes on loopback: jobs spread over
# several workers with every result recorded once; a 10,000-message burst fully drained (also
# one that queued up while the master was stopped); every
# class of bad input counted in /metrics while the master keeps serving; /healthz, /status, and
# /metrics valid for promtool. Usage: test_runtime.sh BIN_DIR
BIN=${1:?usage: test_runtime.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"

make_model "$W/model"
check "tiny model created" test -f "$W/model/model.safetensors"

# --- jobs spread over three workers, each result once, identical outputs
gen_jobs 12 100 "$W/model" >"$W/jobs.jsonl"
start_master master "$W/run"
submit client "$W/jobs.jsonl"
for i in 1 2 3; do start_worker "w$i" --role rollout; done
check "12 results recorded" wait_for 25 results_ge "$W/run" 12
client_done
check "the client got the 12 results" test "$(grep -c '"status":"done"' "$W/client.out")" -eq 12
check "each job recorded exactly once" test "$(results "$W/run")" -eq 12 -a "$(uniq_results "$W/run")" -eq 12
nw=$(jq -r .worker "$(results_of $W/run)" | sort -u | wc -l)
check "jobs spread over several workers ($nw)" test "$nw" -ge 2
nt=$(jq -c .tokens "$(results_of $W/run)" | sort -u | wc -l)
check "same prompt -> same tokens on every worker" test "$nt" -eq 1
check "6 tokens generated" test "$(head -1 "$(results_of $W/run)" | jq '.tokens | length')" -eq 6
check "tokens are vocabulary ids" bash -c "jq -e '.tokens | all(. >= 0 and . < 64)' '$(results_of $W/run)' >/dev/null"

# --- HTTP
check "/healthz" bash -c "curl -sf '$HTTP/healthz' | grep -q ok"
mcurl -sf "$HTTP/status" >"$W/status.json"
check "/status lists 3 live rollout workers" \
    test "$(jq '[.workers[] | select(.state == "alive" and .role == "rollout")] | length' "$W/status.json")" -eq 3
check "/status counts 12 done" test "$(jq .jobs.done "$W/status.json")" -eq 12
check "/metrics done counter" metric_eq rlhf_jobs_done_total 12
if command -v promtool >/dev/null; then
    check "promtool check metrics" bash -c "mcurl -sf '$HTTP/metrics' | promtool check metrics"
else
    bad "promtool not installed (Debian package prometheus)"
fi
check "unknown path is 404" test "$(curl -s -o /dev/null -w '%{http_code}' "$HTTP/nope")" -eq 404

# --- a burst of 10,000 pings while the loop is idle: every one answered
before=$(metric rlhf_wire_messages_received_total)
out=$("$BIN/rlhf-wiretool" burst --master "$EP" --n 10000 --timeout-s 20)
echo "  burst: $out"
check "burst of 10000 fully answered" test "$(jq .received <<<"$out")" -eq 10000
check "master counted the burst" metric_ge rlhf_wire_messages_received_total $((before + 10001))

# --- the same burst queued up while the master's loop is blocked (SIGSTOP): on SIGCONT it
# arrives as one edge of ZMQ_FD, and every message must still be drained
"$BIN/rlhf-wiretool" burst --master "$EP" --n 10000 --timeout-s 20 >"$W/burst2.json" &
BP=$!
kill -STOP "$MPID"
sleep 0.25 # long enough to queue the burst, shorter than the workers' 300 ms liveness
kill -CONT "$MPID"
wait "$BP"
echo "  burst while stopped: $(cat "$W/burst2.json")"
check "burst queued while stopped fully answered" test "$(jq .received "$W/burst2.json")" -eq 10000

# --- bad input: each class counted, the master answers the same peer right after
for what in garbage truncated version unknown oversized frames unexpected; do
    check "bad input '$what': master still answers" "$BIN/rlhf-wiretool" send --master "$EP" --what "$what"
done
check "garbage + truncated counted as malformed" metric_eq 'rlhf_wire_bad_messages_total{reason="malformed"}' 2
for r in version unknown oversized frames unexpected; do
    check "'$r' counted once" metric_eq "rlhf_wire_bad_messages_total{reason=\"$r\"}" 1
done
check "master still alive" kill -0 "$MPID"
check "workers still registered" metric_eq 'rlhf_workers{role="rollout",state="alive"}' 3

# --- config errors name the key
"$BIN/rlhf-master" --set master.bogus=1 2>"$W/err"
check "unknown key exits 2" test $? -eq 2
check "unknown key named" grep -q "unknown key 'master.bogus'" "$W/err"
printf 'master:\n  liveness: zero\n' >"$W/bad.yaml"
"$BIN/rlhf-master" --config "$W/bad.yaml" 2>"$W/err"
check "bad YAML value names file:line and key" grep -q "bad.yaml:2: master.liveness" "$W/err"

# --- SIGTERM: master exits 0
kill -TERM "$MPID"
wait "$MPID"
check "master exits 0 on SIGTERM" test $? -eq 0
finish
