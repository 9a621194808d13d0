#!/usr/bin/env bash
# test_bench_wire.sh - `rlhf bench wire` at a small size, with the relay broadcast: it runs real
# rlhf-master / rlhf-worker / rlhf-wiretool processes on loopback and prints one JSON object whose
# figures must be sane; it leaves no process and no working directory behind, also when stopped
# with SIGTERM midway.
# Usage: test_bench_wire.sh BIN_DIR
BIN=${1:?usage: test_bench_wire.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"
export TMPDIR="$W" # the benchmark's working directories land here: easy to check they are gone

# (functions, not `bash -c`: pgrep -f would find the pattern in that shell's own command line)
no_procs() { ! pgrep -f "$W/rlhf-bench-wire-" >/dev/null; }
no_dirs() { ! ls -d "$W"/rlhf-bench-wire-* >/dev/null 2>&1; }

# the bound is for a hang, not for speed: under ASan on a loaded 2-core machine the relay rounds
# alone took over 100 s
out=$(timeout 200 "$BIN/rlhf" bench wire --jobs 200 --workers 2 --swarm 100 --seconds 2 \
    --sync-mb 64 --fanout 1,2 --relay)
rc=$?
echo "  $out"
check "bench wire exits 0" test "$rc" -eq 0
j() { jq -e "$1" <<<"$out" >/dev/null; }
check "one JSON object naming the bench" j '.bench == "wire" and .jobs == 200 and .workers == 2'
check "p50 <= p90 <= p99 <= max" j '.dispatch | 0 < .p50_ms and .p50_ms <= .p90_ms and .p90_ms <= .p99_ms and .p99_ms <= .max_ms'
check "loopback round trip p99 under 1 s" j '.dispatch.p99_ms < 1000'
check "throughput positive" j '.dispatch.jobs_per_s > 0 and .dispatch.wall_s > 0'
check "all 100 simulated workers registered" j '.swarm.workers == 100 and .swarm.registered >= 100'
check "none of them declared dead" j '.swarm.worker_deaths == 0'
# 100 sockets at 1 Hz: about 100 heartbeats a second in, and the master's 100 out
check "master received ~100 heartbeats/s" j '.swarm.master_recv_per_s > 50 and .swarm.master_recv_per_s < 200'
check "master sent ~100 heartbeats/s" j '.swarm.master_sent_per_s > 50 and .swarm.master_sent_per_s < 200'
check "CPU figures in range" j '.swarm | .master_cpu_pct >= 0 and .master_cpu_pct < 200 and .master_cpu_idle_pct >= 0 and .helper_cpu_pct >= 0'
# weight sync: 64 MiB raw and through wsync (verified copies), and fan-out to 1 and 2 fetchers
check "sync: the snapshot size" j '.sync.bytes == 67108864 and .sync.chunk_bytes == 4194304'
check "sync: raw and wsync figures positive" j '.sync.raw_zmq.gbps > 0 and .sync.wsync.gbps > 0 and .sync.wsync.cold_gbps > 0 and .sync.ratio > 0'
check "sync: no chunk corrupt, credit respected" j '.sync.wsync.crc_errors == 0 and .sync.wsync.max_outstanding >= 1 and .sync.wsync.max_outstanding <= .sync.credit'
check "sync: fan-out to 1 and 2 fetchers" j '[.sync.fanout[].n] == [1, 2] and all(.sync.fanout[]; .seconds > 0)'
# broadcast to fetcher processes: direct costs the origin a copy per fetcher, a relay chain one
check "broadcast: direct and relay rounds of 1 and 2" j '[.broadcast.rounds[] | [.mode, .n]] == [["direct",1],["relay",1],["direct",2],["relay",2]] and all(.broadcast.rounds[]; .seconds > 0)'
check "broadcast: direct, the origin sends a copy per fetcher" j 'all(.broadcast.rounds[] | select(.mode == "direct"); .origin_bytes == .n * 67108864)'
check "broadcast: relay, the origin sends one copy" j 'all(.broadcast.rounds[] | select(.mode == "relay"); .origin_bytes >= 67108864 and .origin_copies < 1.25)'
check "no process left behind" no_procs
check "working directory removed" no_dirs

# --- bad options
"$BIN/rlhf" bench wire --jobs 0 2>/dev/null
check "--jobs 0 refused (exit 2)" test $? -eq 2
"$BIN/rlhf" bench wire --fanout 1,x 2>/dev/null
check "--fanout 1,x refused (exit 2)" test $? -eq 2

# --- SIGTERM midway (during the swarm's 30 s): children stopped, directory removed
"$BIN/rlhf" bench wire --jobs 20 --swarm 20 --seconds 30 >/dev/null 2>"$W/term.err" &
B=$!
PIDS+=("$B")
check "swarm phase reached" wait_for 30 pgrep -f "$W/rlhf-bench-wire-.*/swarm"
kill -TERM "$B"
wait "$B"
rc=$?
check "SIGTERM: exit status 128+15" test "$rc" -eq 143
check "SIGTERM: no process left behind" wait_for 5 no_procs
check "SIGTERM: working directory removed" no_dirs
finish
