#!/usr/bin/env bash
# test_security.sh - the cluster's security with real processes on loopback (common/net/sec.h):
# a master with a key set (rlhf keygen) admits only listed keys, each to what its roles allow,
# and counts the rest in /metrics; key files readable by others are refused; a master without
# keys refuses to start unless --insecure, and an --insecure cluster still works.
#   - the ZAP handler: a worker whose key is not listed never registers, and is counted;
#   - the roles, checked by the master per message (rlhf-wiretool ask plays any key): a client
#     key cannot register as a worker or announce weights; a rollout key cannot submit a run or
#     announce weights; a learner key announces; a worker id cannot be taken by another key;
#   - the wire is encrypted: the weights a job needs arrive through CURVE (a GENERATE job runs);
#   - key files: mode 0644 refused at start with the file named; keygen never replaces a set.
# Usage: test_security.sh BIN_DIR
BIN=${1:?usage: test_security.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"
K=$W/keys # made by runtime_lib.sh; every process below uses it through $RLHF_KEYS

check "the key set: mode 0700 directory, 0600 keys" bash -c \
    "[ \$(stat -c %a '$K') = 700 ] && [ \$(stat -c %a '$K/rollout.key') = 600 ] &&
     [ \$(stat -c %a '$K/master.key') = 600 ] && [ \$(stat -c %a '$K/http.token') = 600 ]"
"$BIN/rlhf" keygen --dir "$K" >"$W/again.out" 2>&1
check "keygen never replaces a key set" bash -c "! '$BIN/rlhf' keygen --dir '$K' >/dev/null 2>&1 &&
    grep -q 'not replaced' '$W/again.out'"
"$BIN/rlhf" keygen --dir "$K" --name gpu-7 --role rollout,reward >/dev/null
check "keygen --name adds a key with its roles to authorized_keys" \
    grep -q '^rollout,reward .* gpu-7$' "$K/authorized_keys"

# --- no keys: no master (unless --insecure)
env -u RLHF_KEYS "$BIN/rlhf-master" --run-dir "$W/nokeys" --http-port -1 >"$W/nokeys.out" 2>&1
rc=$?
check "a master without keys refuses to start (exit $rc)" test $rc -eq 2
check "... saying how to get keys or go plaintext" grep -q 'rlhf keygen.*--insecure' "$W/nokeys.out"

make_model "$W/model"
gen_jobs 4 100 "$W/model" >"$W/jobs.jsonl"
start_master master "$W/run"
metric_v() { mcurl -sf "$HTTP/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }
refused() { metric_v 'rlhf_auth_connections_total{result="refused"}'; }
forbidden() { metric_v 'rlhf_wire_bad_messages_total{reason="forbidden"}'; }

# --- a key file that others may read
cp -p "$K/rollout.key" "$W/open.key" && chmod 644 "$W/open.key"
"$BIN/rlhf-worker" --role rollout --master "$EP" --key "$W/open.key" >"$W/open.out" 2>&1
rc=$?
check "a worker refuses its key file with mode 0644 (exit $rc)" test $rc -eq 2
check "... naming the file and what to do" grep -q "open.key: mode 0644 .*chmod 600" "$W/open.out"

# --- a key the master does not list (made after it started, in a copy of the set: it knows the
# master's public key, which is no secret, but it is not in the list the master loaded)
cp -rp "$K" "$W/other"
"$BIN/rlhf" keygen --dir "$W/other" --name intruder --role rollout >/dev/null
r0=$(refused)
start_worker intruder --role rollout --key "$W/other/intruder.key"
INTRUDER=$WPID
refused_gt() { local v; v=$(refused); [ -n "$v" ] && [ "$v" -gt "$1" ]; }
check "a worker with an unlisted key: refused and counted (refused was ${r0:-?})" \
    wait_for 10 refused_gt "${r0:-0}"
sleep 1
not_in() { mcurl -sf "$HTTP/status" >"$W/st.json" && ! jq -e '.workers[] | select(.id == "intruder")' "$W/st.json" >/dev/null; }
check "... and never registers" not_in
kill -TERM "$INTRUDER" 2>/dev/null

# --- the roles, message by message
ask() { # ask KEY WHAT: the master's answer to WHAT sent with KEY
    RLHF_KEY=$K/$1.key "$BIN/rlhf-wiretool" ask --master "$EP" --what "$2" | jq -r .answer
}
f0=$(forbidden)
check "a client key cannot register as a rollout worker" test "$(ask client hello-rollout)" = forbidden
check "a client key cannot announce weights" test "$(ask client announce)" = forbidden
check "a rollout key cannot submit a run" test "$(ask rollout run-submit)" = forbidden
check "a rollout key cannot announce weights" test "$(ask rollout announce)" = forbidden
check "a reward key cannot register as a learner" test "$(ask reward hello-learner)" = forbidden
check "a rollout key registers as a rollout worker" test "$(ask rollout hello-rollout:r-ask)" = welcome
check "a client key registers as a client" test "$(ask client hello-client)" = welcome
check "gpu-7's key (rollout,reward) registers as a reward worker" test "$(ask gpu-7 hello-reward:g7)" = welcome
check "... and cannot take the id r-ask, registered with the rollout key" \
    test "$(ask gpu-7 hello-rollout:r-ask)" = forbidden
check "the refusals are counted (forbidden: ${f0:-0} -> $(forbidden))" test "$(forbidden)" -ge $((${f0:-0} + 6))

# --- the real thing, encrypted: jobs run on a worker of the cluster
submit client "$W/jobs.jsonl"
start_worker w1 --role rollout
check "a GENERATE job through the encrypted cluster: 4 results" wait_for 30 results_ge "$W/run" 4
client_done
check "the master admitted the worker and the client" test "$(metric_v 'rlhf_auth_connections_total{result="admitted"}')" -ge 2

# --- --insecure: plaintext, explicitly
kill -TERM "$MPID" 2>/dev/null
wait "$MPID" 2>/dev/null
start_master plain "$W/run-plain" --insecure
RLHF_KEYS= RLHF_INSECURE=1 "$BIN/rlhf-client-tool" jobs --master "$EP" --file "$W/jobs.jsonl" \
    --name plain >"$W/plain.out" 2>"$W/plain.log" &
CPID=$!
PIDS+=("$CPID")
"$BIN/rlhf-worker" --id p1 --master "$EP" --heartbeat-ms 100 --liveness 3 --role rollout \
    --insecure >>"$W/p1.log" 2>&1 &
PIDS+=($!)
check "an --insecure cluster (master, worker, client) runs the jobs" wait_for 30 results_ge "$W/run-plain" 4
client_done
"$BIN/rlhf-worker" --role rollout --master "$EP" --insecure --key "$K/rollout.key" >"$W/both.out" 2>&1
check "--insecure with a key is refused" grep -q 'choose one' "$W/both.out"

finish
