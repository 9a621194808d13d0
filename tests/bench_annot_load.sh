#!/usr/bin/env bash
# bench_annot_load.sh - the master's CPU with N human annotators working at once (default 200):
# a run with annotate.source: human over P prompts of 4 completions waits at its annotate stage;
# N annotators are added, then tests/annot_load.py runs them for SECONDS (default 30), each
# asking for its next assignment, thinking THINK_S (default 2) and submitting, as the page does.
# The master's CPU time is read from /proc before and after the window, and its idle CPU over a
# window of the same length before the load; then the time of two admin views (the first
# computes the consensus figures, the second finds them kept) and of one /metrics scrape over
# everything submitted. Prints one JSON line.
# Usage: bench_annot_load.sh BIN_DIR [N [SECONDS [THINK_S]]]
BIN=$(cd "${1:?usage: bench_annot_load.sh BIN_DIR [N [SECONDS [THINK_S]]]}" && pwd)
N=${2:-200} SECS=${3:-30} THINK=${4:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1
# enough prompts that no annotator runs out: each submits about SECS / THINK rankings
P=$(awk -v n="$N" -v s="$SECS" -v t="$THINK" 'BEGIN { print int(n * s / (t > 0.05 ? t : 0.05) / 3) + 100 }')
mkdir -p data/load
python3 - "$P" <<'PY'
import json, sys
with open("data/load/completions.jsonl", "w") as f:
    for i in range(int(sys.argv[1])):
        cs = [{"id": f"c{k}", "text": f"answer {k} to question {i}: " + "some words " * 20}
              for k in range(4)]
        f.write(json.dumps({"prompt_id": f"p{i}", "prompt": f"Question {i}?", "completions": cs}) + "\n")
PY
cat >load.yaml <<'YAML'
run_dir: data/load
seed: 1
stages: [annotate]
annotate: {source: human, overlap: 3, lease: 600}
YAML
"$R" run load.yaml --detach >run.log 2>&1
check "the run is submitted" grep -q submitted run.log
use_master data/.cluster
check "the annotate stage opens" wait_for 60 grep -q '"step"' data/load/logs/annotate.log
for i in $(seq 1 "$N"); do
    l=$("$R" annotators add "a$i" --run load --data-dir data) && echo "${l##*#token=}"
done >tokens
check "$N annotators added" test "$(grep -c . tokens)" -eq "$N"
mpid=$(jq -r .pid data/.cluster/master.json)
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$mpid/stat"; }
c0=$(cpu)
sleep "$SECS"
c1=$(cpu)
python3 "$HERE/annot_load.py" "$HTTP" tokens "$SECS" "$THINK" >load.json &
LP=$!
sleep 1 # the threads start and meet at their barrier
c2=$(cpu) t2=$(date +%s%N)
wait "$LP"
c3=$(cpu) t3=$(date +%s%N)
check "the load ran" test -s load.json
check "no request failed" jq -e '.errors == 0' load.json
[ "$(jq .errors load.json)" = 0 ] || jq -c .first_errors load.json
check "the run holds every submission" \
    test "$(mcurl -sf "$HTTP/api/runs/load" | jq .annotation.records)" -eq "$(jq .submissions load.json)"
# what the admin view and /metrics cost once every annotator has worked (agreement over all)
adm=$(mcurl -sf -o /dev/null -w '%{time_total}' "$HTTP/api/runs/load")
adm2=$(mcurl -sf -o /dev/null -w '%{time_total}' "$HTTP/api/runs/load") # the consensus kept
met=$(mcurl -sf -o /dev/null -w '%{time_total}' "$HTTP/metrics")
jq -c --argjson adm "$adm" --argjson adm2 "$adm2" --argjson met "$met" --argjson idle "$((c1 - c0))" --argjson busy "$((c3 - c2))" --argjson tck "$tck" \
    --argjson ms "$(((t3 - t2) / 1000000))" --argjson secs "$SECS" '. + {
    master_cpu_share: ($busy * 1000 / $tck / $ms),
    master_cpu_share_idle: ($idle / $tck / $secs),
    master_cpu_us_per_request: ($busy * 1e6 / $tck / .requests),
    requests_per_s: (.requests * 1000 / $ms),
    admin_view_ms: ($adm * 1000), admin_view_again_ms: ($adm2 * 1000), metrics_ms: ($met * 1000)} | del(.first_errors)' load.json
finish
