#!/usr/bin/env bash
# test_annot_ui.sh - human annotation through the browser (headless Chromium + Selenium,
# tests/annot_ui.py) against a real local cluster: a run with annotate.source: human and
# overlap 2 waits at its annotate stage; alice and bob rank in the page with the keyboard (a
# tie, a skip, confidence, a note), a third annotator posts through the JSON API as another tool
# would; the master is killed between two of alice's submissions; the store then holds exactly
# their records, and the run goes past annotate by itself once every prompt has its two
# rankings. A wrong token gets 401 (API and page); a completion holding <script> shows as text;
# cross-site POSTs are refused. Exit 77 (skipped) without Chromium, chromedriver or Selenium.
# Usage: test_annot_ui.sh BIN_DIR [SCREENSHOT_DIR]
BIN=$(cd "${1:?usage: test_annot_ui.sh BIN_DIR [SCREENSHOT_DIR]}" && pwd)
SHOTS=${2:+$(realpath -m "$2")} # the browser runs in the test's directory
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/runtime_lib.sh"
need_browser
R=$BIN/rlhf
cd "$W"
mkdir -p data/h1
python3 - <<'PY'
import json
with open("data/h1/completions.jsonl", "w") as f:
    for i in range(3):
        cs = [{"id": f"c{k}", "text": f"answer {k} to question {i + 1}"} for k in range(3)]
        if i == 0:
            cs[1]["text"] = "<script>alert(1)</script> and <img src=x onerror=alert(2)>"
        f.write(json.dumps({"prompt_id": f"p{i + 1}", "prompt": f"Question {i + 1}?",
                            "completions": cs}) + "\n")
PY
printf '# Guidelines\nPrefer correct, polite answers. <b>not bold</b>\n' >guide.md
cat >h.yaml <<'YAML'
run_dir: data/h1
seed: 5
stages: [annotate, aggregate, pairs]
annotate: {source: human, overlap: 2, guidelines: guide.md, lease: 60}
YAML
"$R" run h.yaml --detach >run.log 2>&1
check "the run is submitted" grep -q submitted run.log
use_master data/.cluster
link() { "$R" annotators add "$1" --run h1 --data-dir data; }
AL=$(link alice) BO=$(link bob) CA=$(link carol)
check "rlhf annotators add prints a personal link" bash -c "[[ '$AL' == $HTTP/annotate#token=* ]]"
tok() { echo "${1##*#token=}"; }
check "... a token of 64 hex digits (256 bits)" bash -c "[[ '$(tok "$AL")' =~ ^[0-9a-f]{64}$ ]]"
check "a second annotator of the same name: refused" bash -c "! '$R' annotators add alice --run h1 --data-dir data 2>err && grep -q 409 err"
check "the journal keeps no token, only digests" \
    bash -c "! grep -rq '$(tok "$AL")' data/.cluster/journal"
wait_for 30 grep -q '"step"' data/h1/logs/annotate.log
check "the stage opened and waits" bash -c "'$R' status h1 --data-dir data | grep -q 'annotate.*running'"
api() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
check "a wrong token: 401" test "$(api -H "Authorization: Bearer $(printf 'a%.0s' {1..64})" "$HTTP/api/annotate/next")" = 401
check "no token: 401" test "$(api "$HTTP/api/annotate/next")" = 401
check "the master's token is no annotator's: 401" \
    test "$(api -H "Authorization: Bearer $(cat data/.cluster/keys/http.token)" "$HTTP/api/annotate/me")" = 401
check "an annotator's token opens no /status: 401" \
    test "$(api -H "Authorization: Bearer $(tok "$AL")" "$HTTP/status")" = 401
check "a POST from another origin: 403" test "$(api -H "Authorization: Bearer $(tok "$CA")" \
    -H 'Content-Type: application/json' -H 'Origin: http://evil.example' \
    -d '{"prompt_id":"p1","ranking":[0,1,2]}' "$HTTP/api/annotate/submit")" = 403
check "a form-encoded POST: 403" test "$(api -H "Authorization: Bearer $(tok "$CA")" \
    -d 'prompt_id=p1' "$HTTP/api/annotate/submit")" = 403
check "... both counted" test "$(metric rlhf_http_csrf_refused_total)" -ge 2
check "an invalid ranking: 400 naming the fault" bash -c "curl -s -H 'Authorization: Bearer $(tok "$CA")' \
    -H 'Content-Type: application/json' -d '{\"prompt_id\":\"p1\",\"ranking\":[[0],[0,1]]}' \
    '$HTTP/api/annotate/submit' | grep -q 'ranking'"

KILL="kill -9 \$(jq .pid '$W/data/.cluster/master.json'); sleep 0.5; for i in \$(seq 100); do curl -sf $HTTP/healthz >/dev/null && break; sleep 0.1; done"
"$PY" "$HERE/annot_ui.py" "$HTTP" "$(tok "$AL")" "$(tok "$BO")" \
    "$(cat data/.cluster/keys/http.token)" "$KILL" "$SHOTS" >ui.out 2>ui.err
rc=$?
grep -E '^(ok|FAIL) ' ui.out | while read -r line; do echo "$line"; done
pass=$((pass + $(grep -c '^ok ' ui.out))) fail=$((fail + $(grep -c '^FAIL ' ui.out)))
check "the browser script ran to its end" test "$rc" -eq 0 -a "$(tail -n 1 ui.out | head -c 1)" = "{"
[ "$rc" -eq 0 ] || tail -20 ui.err
tail -n 1 ui.out >submitted.json

# carol, another tool, posts through the API the ranking the target still wants
n=$(curl -s -H "Authorization: Bearer $(tok "$CA")" "$HTTP/api/annotate/next" | jq -r .assignment.prompt_id)
check "carol is given the prompt alice skipped" test "$n" = "$(jq -r '.records[] | select(.skip) | .prompt_id' submitted.json)"
check "carol's ranking through the API: 200" test "$(api -H "Authorization: Bearer $(tok "$CA")" \
    -H 'Content-Type: application/json' -d "{\"prompt_id\":\"$n\",\"ranking\":[[2],[0,1]]}" \
    "$HTTP/api/annotate/submit")" = 200
check "the run goes past annotate by itself and succeeds" wait_for 60 test -e data/h1/stages/pairs.json
check "... annotate closed: the target met" grep -q "target is met" data/.cluster/master.log
check "a run that has ended takes no annotator: 409 with the reason" \
    bash -c "! '$R' annotators add dave --run h1 --data-dir data 2>err && grep -q '409.*has ended (succeeded)' err"
S=data/h1/annotations.jsonl
check "the store holds 7 records" test "$(wc -l <$S)" -eq 7
# exactly what was submitted: each of alice's and bob's records, rankings as sets of tie groups
check "the store holds exactly alice's and bob's records" python3 - "$S" submitted.json <<'PY'
import json, sys
store = [json.loads(l) for l in open(sys.argv[1])]
sub = json.load(open(sys.argv[2]))["records"]
def key(r): return (r["annotator"], r["prompt_id"])
got = {key(r): r for r in store if r["annotator"] in ("alice", "bob")}
assert len(got) == len(sub) == 6, (len(got), len(sub))
for s in sub:
    g = got[key(s)]
    assert [sorted(x) for x in g["ranking"]] == s["ranking"], (g, s)
    assert g["skip"] == s["skip"], (g, s)
    for f in ("confidence", "note"):
        if f in s: assert abs(g[f] - s[f]) < 1e-9 if f == "confidence" else g[f] == s[f], (f, g, s)
    assert len(g.get("shown", [])) == 3, g
PY
check "a tie is stored as one group" bash -c "jq -c .ranking $S | grep -q '\[\[[0-9]\],\[[0-9],[0-9]\]\]'"
check "the skip is stored with its reason" bash -c "jq -se 'map(select(.skip)) | length == 1 and .[0].note == \"cannot judge this one\"' $S"
check "pairs were made from the human rankings" test -s data/h1/pairs.jsonl
check "/metrics: rankings per annotator" metric_eq 'rlhf_annotation_rankings_total{run="h1",annotator="bob"}' 3
check "/metrics: seconds per ranking" bash -c "mcurl -sf $HTTP/metrics | grep -q '^rlhf_annotation_seconds_per_ranking{run=\"h1\",annotator=\"bob\"} [0-9]'"
check "/metrics: agreement so far" bash -c "mcurl -sf $HTTP/metrics | grep -q '^rlhf_annotation_agreement{run=\"h1\"} [0-9]'"
jq -c '.timings' submitted.json | sed 's/^/page timings (ms): /'
finish
