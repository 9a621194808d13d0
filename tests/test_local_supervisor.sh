#!/usr/bin/env bash
# test_local_supervisor.sh - the local supervisor leaves nothing behind and never hangs: its
# children die with it when it is SIGKILLed, `rlhf down` is quick even with a stopped worker, a
# new `rlhf up` kills what a dead supervisor left in its directory and refuses to run beside a
# live one, and concurrent local_cluster_ensure calls (`rlhf cluster-ensure`) start one cluster.
# Usage: test_local_supervisor.sh BIN_DIR
BIN=${1:?usage: test_local_supervisor.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"

# a process that runs (a zombie does not count: nothing may reap orphans here)
running() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
# the master and worker pids of local.json in DIR
cluster_pids() { jq -r '.master_pid, .worker_pids[]' "$1/local.json"; }
none_running() { local p; for p in "$@"; do ! running "$p" || return 1; done; }
workers_alive() { "$BIN/rlhf" status --run-dir "$1" | jq -e "[.workers[] | select(.state == \"alive\")] | length == $2"; }

# (a) SIGKILL the supervisor: the master and workers go at once
R="$W/a"
out=$("$BIN/rlhf" up --run-dir "$R" --rollout 2 --reward 1)
SUP=$(jq .pid <<<"$out")
PIDS+=("$SUP")
check "up: 3 workers alive" wait_for 15 workers_alive "$R" 3
kids=$(cluster_pids "$R")
PIDS+=($kids)
check "up: master and workers running" bash -c "for p in $(echo $kids); do [ -e /proc/\$p ] || exit 1; done"
kill -KILL "$SUP"
check "SIGKILLed supervisor: its children are gone within 5 s" wait_for 5 none_running $kids

# (b) `rlhf down` with a SIGSTOPped worker: bounded (3 s grace for the workers, 3 s the master)
R="$W/b"
out=$("$BIN/rlhf" up --run-dir "$R" --rollout 2)
SUP=$(jq .pid <<<"$out")
PIDS+=("$SUP")
check "up: 2 workers alive" wait_for 15 workers_alive "$R" 2
kids=$(cluster_pids "$R")
PIDS+=($kids)
kill -STOP "$(jq '.worker_pids[0]' "$R/local.json")"
t0=$(date +%s%N)
"$BIN/rlhf" down --run-dir "$R" >/dev/null
rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
echo "     rlhf down took $ms ms"
check "down with a stopped worker succeeds" test "$rc" -eq 0
check "... within 8 s" test "$ms" -lt 8000
check "... and leaves nothing running" none_running "$SUP" $kids

# (c) a worker left behind by a dead supervisor is killed by the next `rlhf up` there; a live
# supervisor is not run beside
R="$W/c"
mkdir -p "$R"
"$BIN/rlhf-worker" --id orphan --master tcp://127.0.0.1:9 >"$W/orphan.log" 2>&1 &
ORPH=$!
PIDS+=("$ORPH")
true &
DEAD=$!
wait "$DEAD"
printf '{"supervisor_pid":%d,"master_pid":0,"endpoint":"","worker_pids":[%d]}' "$DEAD" "$ORPH" \
    >"$R/local.json"
check "orphan worker running" running "$ORPH"
out=$("$BIN/rlhf" up --run-dir "$R" --rollout 1)
SUP=$(jq .pid <<<"$out")
PIDS+=("$SUP")
check "up kills the worker a dead supervisor left behind" wait_for 3 none_running "$ORPH"
"$BIN/rlhf" up --run-dir "$R" --rollout 1 >/dev/null 2>"$W/second-up.err"
check "a second up beside a live supervisor is refused" test $? -eq 1
check "... saying so" grep -q "already runs" "$W/second-up.err"
check "... and the first one is untouched" running "$SUP"
check "down" "$BIN/rlhf" down --run-dir "$R"

# (d) two concurrent local_cluster_ensure calls in one data directory: one cluster
if "$BIN/rlhf-master" --help 2>&1 | grep -q -- --data-dir; then
    D="$W/data"
    "$BIN/rlhf" cluster-ensure --data-dir "$D" >"$W/e1.out" 2>"$W/e1.log" &
    E1=$!
    "$BIN/rlhf" cluster-ensure --data-dir "$D" >"$W/e2.out" 2>"$W/e2.log" &
    E2=$!
    wait "$E1"; r1=$?
    wait "$E2"; r2=$?
    check "cluster-ensure twice at once: both succeed" test "$r1$r2" = 00
    SUP=$(jq .supervisor_pid "$D/.cluster/local.json")
    PIDS+=("$SUP" $(cluster_pids "$D/.cluster"))
    check "... with the same endpoint" test "$(jq -r .endpoint "$W/e1.out")" = "$(jq -r .endpoint "$W/e2.out")"
    masters=$(pgrep -f -- "rlhf-master .*--run-dir $D/.cluster" | grep -c .)
    check "... from one master ($masters)" test "$masters" -eq 1
    check "... 2 rollout, 1 reward, 1 learner, 1 stage worker" \
        test "$(jq '.worker_pids | length' "$D/.cluster/local.json")" -eq 5
    ep=$("$BIN/rlhf" cluster-ensure --data-dir "$D" | jq -r .endpoint)
    check "a later call finds it" test "$ep" = "$(jq -r .endpoint "$W/e1.out")"
    check "... and the supervisor is the same" test "$(jq .supervisor_pid "$D/.cluster/local.json")" = "$SUP"
    check "down --data-dir" "$BIN/rlhf" down --data-dir "$D"
else
    echo "skip cluster-ensure: this rlhf-master has no --data-dir"
fi
finish
