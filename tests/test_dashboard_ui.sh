#!/usr/bin/env bash
# test_dashboard_ui.sh - the run dashboard in headless Chromium (tests/dashboard_ui.py) while a
# PPO run trains on a local cluster: the page shows the run at its ppo stage and the workers, and
# its curves (reward, KL, the gold judge's score) gain points as iterations commit, each point
# the committed metrics of its iteration. Exit 77 (skipped) without Chromium, chromedriver or Selenium.
# Usage: test_dashboard_ui.sh BIN_DIR [SCREENSHOT]
BIN=$(cd "${1:?usage: test_dashboard_ui.sh BIN_DIR [SCREENSHOT]}" && pwd)
SHOT=${2:+$(realpath -m "$2")} # the browser runs in the test's directory
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/runtime_lib.sh"
need_browser
R=$BIN/rlhf
cd "$W" || exit 1
tiny_ppo_setup 2 32 48
# more iterations than the page waits for (a tiny iteration takes a tenth of a second or more);
# the run is cancelled at the end
"$R" ppo --policy pol --rm val --prompts prompts.jsonl --batch 16 --samples 2 --max-new 16 \
    --reward-count-token 97 --rollout 2 --set lr_policy=1e-2 --set lr_value=1e-3 --gold \
    --out D --iterations 100000 >ppo.out 2>ppo.err &
DPID=$!
check "the local cluster comes up" wait_for 60 test -s .cluster/master.json
use_master .cluster
check "the first iteration commits" wait_for 120 test -s D/metrics.jsonl
"$PY" "$HERE/dashboard_ui.py" "$HTTP" "$(cat .cluster/keys/http.token)" \
    D/metrics.jsonl "$SHOT" >ui.out 2>ui.err
rc=$?
while read -r line; do echo "$line"; done < <(grep -E '^(ok|FAIL) ' ui.out)
pass=$((pass + $(grep -c '^ok ' ui.out))) fail=$((fail + $(grep -c '^FAIL ' ui.out)))
check "the browser script ran to its end" test "$rc" -eq 0 -o "$(grep -c '^FAIL ' ui.out)" -gt 0
[ "$rc" -eq 0 ] || tail -20 ui.err
check "... while the run was still training" bash -c "'$R' status D --data-dir . | grep -q 'ppo.*running'"
kill "$DPID" 2>/dev/null
"$R" cancel D --data-dir . >/dev/null 2>&1
finish
