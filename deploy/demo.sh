#!/usr/bin/env bash
# demo.sh - the main job: the embedded default pipeline, `rlhf run deploy/demo.yaml`.
#   task + tokenizer + a tiny GPT trained from scratch with SFT (the instruct model) ->
#   stage 1 (K completions per prompt through rlhf-master and rollout workers, five simulated
#   annotators, aggregation with agreement statistics, C(K,2) pairs) -> stage 2 (reward model)
#   -> stage 3 (PPO through the master, rollout, reward and learner workers) -> evaluation by
#   the gold judge -> runs/demo/report.md with plots.
# The run belongs to the local cluster of runs/ (started if none runs); interrupted, it goes
# on, and the same command follows it again. Extra arguments go to `rlhf run`
# (for example --set ppo.iterations=40). Usage: deploy/demo.sh [BUILD_DIR] [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build}
[ -x "$BIN" ] && [ ! -d "$BIN" ] && BIN=$(dirname "$BIN") # an old-style path to rlhf
shift || true
"$BIN/rlhf" run deploy/demo.yaml "$@"
echo
cat runs/demo/report.md
echo
echo "(the local cluster that ran it stays up for the next run: $BIN/rlhf runs --data-dir runs;"
echo " $BIN/rlhf down --data-dir runs stops it)"
