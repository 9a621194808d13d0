#!/usr/bin/env bash
# test_local.sh - local mode: `rlhf up` starts a master and workers under a supervisor, a
# SIGKILLed worker is restarted and re-registers, `rlhf status` reports them, `rlhf down` stops
# every process. Usage: test_local.sh BIN_DIR
BIN=${1:?usage: test_local.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"
R="$W/run"
# stopped PID: the process is gone, or a zombie - an orphan where PID 1 reaps late or never (a
# container without an init), which rlhf down counts as stopped
stopped() { ! kill -0 "$1" 2>/dev/null || [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]; }
alive() { "$BIN/rlhf" status --run-dir "$R" | jq -e "[.workers[] | select(.state == \"alive\")] | length == $1"; }
out=$("$BIN/rlhf" up --run-dir "$R" --rollout 2)
check "rlhf up prints the endpoint" bash -c "jq -e '.endpoint | startswith(\"tcp://127.0.0.1:\")' <<<'$out' >/dev/null"
SUP=$(jq .pid <<<"$out")
PIDS+=("$SUP")
check "status: 2 workers alive" wait_for 15 alive 2
victim=$(jq '.worker_pids[0]' "$R/local.json")
kill -KILL "$victim"
check "crashed worker restarted" wait_for 15 bash -c "test \"\$(jq '.worker_pids[0]' '$R/local.json')\" != $victim"
check "status: 2 workers alive again" wait_for 15 alive 2
mpid=$(jq .master_pid "$R/local.json")
check "rlhf down" "$BIN/rlhf" down --run-dir "$R"
check "supervisor gone" stopped "$SUP"
check "master gone" stopped "$mpid"

# a worker that cannot start (its learner directory cannot be created) is restarted with a
# growing pause, not in a tight loop; --owner stops everything when the owner is gone
sleep 60 &
OWNER=$!
PIDS+=("$OWNER")
out=$("$BIN/rlhf" up --run-dir "$W/bad" --rollout 0 --learner 1 --learner-dir /proc/no/such/dir \
    --owner "$OWNER")
SUP2=$(jq .pid <<<"$out")
PIDS+=("$SUP2")
backed_off() { grep -q "restarting in 800 ms" "$W/bad/local.log"; }
check "a failing worker is restarted with a growing pause" wait_for 15 backed_off
check "... starting at 200 ms and doubling" \
    bash -c "grep -o 'restarting in [0-9]* ms' '$W/bad/local.log' | head -3 | awk '{print \$3}' | tr '\n' ' ' | grep -q '^200 400 800 '"
kill "$OWNER"
check "the cluster stops when its owner is gone" wait_for 15 stopped "$SUP2"
check "... saying so" grep -q "owner $OWNER is gone" "$W/bad/local.log"
finish
