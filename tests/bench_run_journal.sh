#!/usr/bin/env bash
# bench_run_journal.sh - what the master's journal costs a PPO run: a tiny PPO run of N
# iterations (default 30) through the local cluster, and the master's journal records, fsyncs
# (group commits), bytes and CPU time per iteration, read from its /status and /proc before and
# after. Prints one JSON line. Usage: bench_run_journal.sh BIN_DIR [ITERATIONS]
BIN=$(cd "${1:?usage: bench_run_journal.sh BIN_DIR [ITERATIONS]}" && pwd)
N=${2:-30}
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1

tiny_ppo_setup 2 32 48

"$R" cluster-ensure --data-dir . >/dev/null || { echo "no cluster"; exit 1; }
mpid=$(jq -r .master_pid .cluster/local.json)
use_master .cluster
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$mpid/stat"; }
journal() { mcurl -sf "$HTTP/status" | jq -c .journal; }
j0=$(journal) c0=$(cpu) t0=$(date +%s%N)
"$R" ppo --policy pol --rm val --prompts prompts.jsonl --out run --iterations "$N" --batch 16 \
    --samples 2 --max-new 16 --reward-count-token 97 >/dev/null 2>run.err || { cat run.err; exit 1; }
t1=$(date +%s%N) c1=$(cpu) j1=$(journal)
check "the run's $N iterations" test "$(wc -l <run/metrics.jsonl)" -eq "$N"
jq -n -c --argjson a "$j0" --argjson b "$j1" --argjson n "$N" --argjson c "$((c1 - c0))" \
    --argjson tck "$tck" --argjson ms "$(((t1 - t0) / 1000000))" '{
    iterations: $n,
    records_per_iteration: (($b.records - $a.records) / $n),
    fsyncs_per_iteration: (($b.fsyncs - $a.fsyncs) / $n),
    journal_bytes_per_iteration: (($b.bytes - $a.bytes) / $n),
    master_cpu_ms_per_iteration: ($c * 1000 / $tck / $n),
    wall_ms_per_iteration: ($ms / $n),
    master_cpu_share: ($c * 1000 / $tck / $ms)}'
finish
