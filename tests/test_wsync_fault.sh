#!/usr/bin/env bash
# test_wsync_fault.sh - weight sync with real processes on loopback: `rlhf-wiretool wsync-serve`
# publishes a snapshot and announces it to rlhf-master, which forwards it to the workers.
#   1. a worker SIGKILLed in the middle of a sync is restarted, is told the version again when it
#      registers, fetches it again and ends with the server's exact bytes (CRC-32C);
#   2. a job stating policy_version 2 is not run while only version 1 exists (a job with no
#      version runs meanwhile), and runs - with version 2 - once version 2 is announced.
# Usage: test_wsync_fault.sh BIN_DIR
BIN=${1:?usage: test_wsync_fault.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"

# start_server NAME VERSION MIB [ARGS...]: serves a snapshot, announced to the master at $EP;
# sets SPID, SEP (endpoint) and SCRC (its CRC-32C, as the workers log it).
# synced LOG VERSION CRC: the worker's log has the sync line of that version with that checksum
synced() { grep -q "weights: version $2 synced: .* crc32c $3," "$W/$1.log"; }

# --- 1. SIGKILL mid-sync: 48 MiB in 192 chunks of 256 KiB, every request slowed by 10 ms, so a
# sync takes seconds and the kill lands in the middle of it
start_master m1 "$W/r1"
start_server s1 1 48 --chunk-kb 256 --delay-ms 10
check "master learns the version" wait_for 10 grep -q "weights version 1 announced at $SEP" "$W/m1.log"
start_worker wa --role rollout
WA=$WPID
check "worker starts fetching version 1" wait_for 20 grep -q "weights: fetching version >= 1" "$W/wa.log"
sleep 0.5
check "not synced yet when killed (mid-sync)" bash -c "! grep -q 'synced' '$W/wa.log'"
kill -KILL "$WA"
wait "$WA" 2>/dev/null
check "server still serving" kill -0 "$SPID"
start_worker wa --role rollout # same id: the master sees it re-register
check "restarted worker is told the version again" \
    wait_for 20 bash -c "test \$(grep -c 'weights version 1 announced' '$W/wa.log') -ge 2"
check "restarted worker syncs version 1, bit-exact (crc32c $SCRC)" wait_for 60 synced wa 1 "$SCRC"
check "sync line gives bytes, seconds and GB/s" \
    grep -Eq "synced: 50331648 bytes in [0-9.]+ s \([0-9.]+ GB/s\), 192 chunks" "$W/wa.log"
check "no bad chunk on a healthy link" grep -q "crc32c $SCRC, 0 bad chunks" "$W/wa.log"
kill -TERM "$SPID" "$WPID"
kill -TERM "$MPID"
wait "$MPID"

# --- 2. a job requiring version 2 waits for version 2
printf '{"id":1,"kind":"noop","policy_version":2}\n{"id":2,"kind":"noop"}\n' >"$W/jobs.jsonl"
start_master m2 "$W/r2"
submit c2 "$W/jobs.jsonl"
start_worker wb --role rollout
check "job 2 (no version needed) is done" wait_for 15 results_ge "$W/r2" 1
check "job 1 not dispatched without weights" bash -c "! grep -q 'start job 1 ' '$W/wb.log'"
start_server s2 1 8
check "worker syncs version 1" wait_for 30 synced wb 1 "$SCRC"
sleep 1 # a few scheduler rounds with version 1 announced
check "job 1 still not run with version 1" bash -c "! grep -q 'start job 1 ' '$W/wb.log'"
check "still one result" test "$(results "$W/r2")" -eq 1
start_server s3 2 8 # version 2 at another endpoint: the master forwards it
check "worker syncs version 2" wait_for 30 synced wb 2 "$SCRC"
check "job 1 done once version 2 exists" wait_for 30 results_ge "$W/r2" 2
check "job 1 ran with version 2" grep -q "job 1 attempt 1 runs with weights version 2 (needs 2)" "$W/wb.log"
# (the line is the job thread's own, written while it holds the weights it runs with)
check "job 1 never ran with version 1" bash -c "! grep -q 'job 1 attempt [0-9]* runs with weights version 1 ' '$W/wb.log'"
check "each job recorded exactly once" test "$(uniq_results "$W/r2")" -eq 2 -a "$(results "$W/r2")" -eq 2
check "both done" test "$(jq -r .status "$(results_of $W/r2)" | grep -c '^done$')" -eq 2

# --- a bad policy_version in a job line is refused before anything is submitted
printf '{"id":1,"kind":"noop","policy_version":-3}\n' >"$W/bad.jsonl"
"$BIN/rlhf-client-tool" jobs --master "$EP" --file "$W/bad.jsonl" >"$W/c3.log" 2>&1
check "negative policy_version refused" test $? -eq 2
check "with a message naming it" grep -q "bad.jsonl:1: .*policy_version" "$W/c3.log"
check "nothing submitted" test "$(metric rlhf_client_jobs_submitted_total)" -eq 2
finish
