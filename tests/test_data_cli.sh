#!/usr/bin/env bash
# test_data_cli.sh - stage 1 after generation as a user runs it, on a small hand-written
# completions file (no model needed): annotate --simulate -> aggregate -> pairs, imports from
# JSONL and CSV, HH export and import, and malformed input that must fail naming file:line
# without writing anything. Usage: test_data_cli.sh PATH/TO/rlhf
set -u
RLHF=${1:?usage: test_data_cli.sh PATH/TO/rlhf}
W=$(mktemp -d "${TMPDIR:-/tmp}/rlhf-data-XXXXXX")
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { # check NAME COMMAND...: the command must succeed
    local name=$1; shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
jqt() { # jqt NAME FILTER ARGS...: the jq filter must print true
    local name=$1; shift
    if [ "$(jq -n "$@")" = true ]; then ok "$name"; else bad "$name"; fi
}
fails_cleanly() { # fails_cleanly NAME WHERE OUTFILE... -- COMMAND...: non-zero exit, stderr
    local name=$1 where=$2; shift 2 # names WHERE (file:line), no OUTFILE created
    local outs=()
    while [ "$1" != -- ]; do outs+=("$1"); shift; done
    shift
    "$@" >/dev/null 2>"$W/err"
    local rc=$?
    if [ $rc -eq 0 ]; then bad "$name: exit status 0"; return; fi
    if ! grep -qF -- "$where" "$W/err"; then
        bad "$name: message lacks $where: $(cat "$W/err")"
        return
    fi
    for f in "${outs[@]}"; do
        if [ -e "$f" ]; then bad "$name: $f was written"; return; fi
    done
    if ls "$W" | grep -q '\.tmp'; then bad "$name: a temporary file was left"; return; fi
    ok "$name"
}

for c in annotate aggregate pairs import-pairs; do
    check "$c --help" bash -c "'$RLHF' $c --help | grep -q usage"
done

# Six prompts of the embedded task; p6 has 3 completions, two of them the same text.
C=$W/comp.jsonl
cat >"$C" <<'EOF'
{"prompt_id":"p1","prompt":"What is 7 plus 5?","completions":[{"id":"p1-0","text":"Sure! 7 plus 5 is 12.","tokens":[1,2],"logprob":-3.5},{"id":"p1-1","text":"7 plus 5 is 13.","tokens":[],"logprob":-4.0},{"id":"p1-2","text":"Ugh. 7 plus 5 is 12. Stop asking me.","tokens":[],"logprob":-5.0},{"id":"p1-3","text":"Sure! Here is a color: red.","tokens":[],"logprob":-6.0}]}
{"prompt_id":"p2","prompt":"Name a fruit.","completions":[{"id":"p2-0","text":"Sure! Here is a fruit: pear.","tokens":[],"logprob":-1},{"id":"p2-1","text":"Here is a fruit: dog.","tokens":[],"logprob":-1},{"id":"p2-2","text":"Whatever. Here is a fruit: apple.","tokens":[],"logprob":-1},{"id":"p2-3","text":"Well, let me think about that for a long time before I answer you. A fruit, a fruit. Here is a fruit: pear. It is pear. It is pear.","tokens":[],"logprob":-1}]}
{"prompt_id":"p3","prompt":"Say hello to Sam.","completions":[{"id":"p3-0","text":"Hello, Sam! Happy to help.","tokens":[],"logprob":-1},{"id":"p3-1","text":"Hello, Tom!","tokens":[],"logprob":-1},{"id":"p3-2","text":"Go away, Sam.","tokens":[],"logprob":-1},{"id":"p3-3","text":"7 plus 5 is 12.","tokens":[],"logprob":-1}]}
{"prompt_id":"p4","prompt":"Thank the team.","completions":[{"id":"p4-0","text":"Thank you, team!","tokens":[],"logprob":-1},{"id":"p4-1","text":"Ugh. Not my problem.","tokens":[],"logprob":-1},{"id":"p4-2","text":"Sure! Here is an animal: cat.","tokens":[],"logprob":-1},{"id":"p4-3","text":"Thank you, team! Thank you, team! Thank you, team! I hope you know how glad I am.","tokens":[],"logprob":-1}]}
{"prompt_id":"p5","prompt":"What is 3 minus 1?","completions":[{"id":"p5-0","text":"Of course! 3 minus 1 is 2.","tokens":[],"logprob":-1},{"id":"p5-1","text":"3 minus 1 is 4.","tokens":[],"logprob":-1},{"id":"p5-2","text":"Whatever. 3 minus 1 is 2.","tokens":[],"logprob":-1},{"id":"p5-3","text":"Hello, Ann!","tokens":[],"logprob":-1}]}
{"prompt_id":"p6","prompt":"Name a color.","completions":[{"id":"p6-0","text":"Sure! Here is a color: blue.","tokens":[],"logprob":-1},{"id":"p6-1","text":"Sure! Here is a color: blue.","tokens":[],"logprob":-1},{"id":"p6-2","text":"Ugh. Here is a color: dog.","tokens":[],"logprob":-1}]}
EOF
P=6

# ---- annotate --simulate -------------------------------------------------------------------
T=2026-01-02T03:04:05Z
A=$W/ann.jsonl
out=$("$RLHF" annotate --completions "$C" --out "$A" --simulate 5 --overlap 3 --seed 7 --time $T)
check "annotate --simulate succeeds" test $? -eq 0
echo "  $out"
check "P x R records" test "$(wc -l <"$A")" -eq $((P * 3))
jqt "each prompt: 3 distinct annotators" --slurpfile a "$A" \
    '[$a | group_by(.prompt_id)[] | (map(.annotator) | unique | length) == 3] | length == 6 and all'
jqt "no (prompt, annotator) twice" --slurpfile a "$A" \
    '($a | map([.prompt_id, .annotator]) | unique | length) == ($a | length)'
jqt "balanced load (18 over 5 annotators: 3 or 4 each)" --slurpfile a "$A" \
    '[$a | group_by(.annotator)[] | length] | (min >= 3 and max <= 4 and length == 5)'
jqt "records carry time, guideline, a complete ranking and a shown permutation" \
    --slurpfile a "$A" --slurpfile c "$C" --arg t $T '
    ($c | map({key: .prompt_id, value: (.completions | length)}) | from_entries) as $k |
    [$a[] | .time == $t and .guideline == "task-guidelines-v1" and .skip == false and
      ((.ranking | flatten | sort) == [range($k[.prompt_id])]) and
      ((.shown | sort) == [range($k[.prompt_id])])] | all'
"$RLHF" annotate --completions "$C" --out "$W/ann2.jsonl" --simulate 5 --overlap 3 --seed 7 \
    --time $T >/dev/null
check "simulation is deterministic" cmp -s "$A" "$W/ann2.jsonl"
"$RLHF" annotate --completions "$C" --out "$W/ann3.jsonl" --simulate 5 --overlap 3 --seed 8 \
    --time $T >/dev/null
check "another seed, other rankings or display orders" bash -c "! cmp -s '$A' '$W/ann3.jsonl'"
cp "$A" "$W/ann.before"
"$RLHF" annotate --completions "$C" --out "$A" --simulate 5 --overlap 3 --seed 7 --time $T \
    >/dev/null 2>"$W/err"
check "simulating into the same store again is refused" test $? -ne 0
check "the refusal names the duplicate" grep -q "already has a record by annotator" "$W/err"
check "the refused store is unchanged" cmp -s "$A" "$W/ann.before"
"$RLHF" annotate --completions "$C" --out "$W/ann.before" --simulate 5 --overlap 3 --seed 7 \
    --time $T --replace >/dev/null
check "--replace starts from an empty store" cmp -s "$A" "$W/ann.before"
"$RLHF" annotate --completions "$C" --out "$A" --simulate 3 --overlap 4 2>"$W/err" >/dev/null
check "overlap above the panel size is an error" test $? -eq 2

# ---- aggregate -----------------------------------------------------------------------------
G=$W/agg.jsonl
"$RLHF" aggregate --completions "$C" --annotations "$A" --out "$G" >"$W/table"
check "aggregate succeeds" test $? -eq 0
sed 's/^/  /' "$W/table"
check "the table shows the pairwise agreement" grep -q "pairwise agreement" "$W/table"
check "the table shows Krippendorff's alpha" grep -q "Krippendorff's alpha" "$W/table"
check "the summary is written beside the output" test -s "$W/agg.summary.json"
S=$W/agg.summary.json
jqt "summary: counts" --slurpfile s "$S" \
    '$s[0] | .prompts == 6 and .annotators == 5 and .records == 18 and .overlap_min == 3 and
     .overlap_max == 3 and .kept == 6 and .dropped == 0 and (.per_annotator | length) == 5'
jqt "summary: rate = agree / strict" --slurpfile s "$S" \
    '$s[0] | (.pairwise_agreement - .pairwise_agree / .pairwise_strict | fabs) < 1e-6'
jqt "summary: figures in range" --slurpfile s "$S" \
    '$s[0] | .mean_kendall_w >= 0 and .mean_kendall_w <= 1 and .krippendorff_alpha_ordinal <= 1
     and ([.per_annotator[].agreement_with_others | . >= 0 and . <= 1] | all)'
check "one aggregated record per prompt" test "$(wc -l <"$G")" -eq $P
# the consensus is the order of the mean of the fractional ranks, recomputed here
jqt "consensus = order of mean fractional rank" --slurpfile g "$G" '
    def fr: . as $gs | reduce range(length) as $l ({pos: 0, r: {}};
        ($gs[$l] | length) as $t |
        reduce $gs[$l][] as $x (.; .r[$x | tostring] = .pos + ($t + 1) / 2) | .pos += $t) | .r;
    def levels: . as $gs | reduce range(length) as $l ({}; reduce $gs[$l][] as $x (.;
        .[$x | tostring] = $l));
    [$g[] | . as $rec | (.rankings | map(fr)) as $rs | (.consensus | levels) as $cl |
      [range(.n_completions) | tostring as $i | ($rs | map(.[$i]) | add / length)] as $m |
      [range(.n_completions)] as $ix |
      ($ix | all(($m[.] - $rec.mean_rank[.] | fabs) < 1e-9)) and
      ($ix | all(. as $i | $ix | all(. as $j |
        ($cl[$i | tostring] < $cl[$j | tostring]) == ($m[$i] < $m[$j] - 1e-9))))] | all'

# ---- pairs ---------------------------------------------------------------------------------
PR=$W/pairs.jsonl
out=$("$RLHF" pairs --completions "$C" --aggregated "$G" --out "$PR" --hh "$W/hh.jsonl")
check "pairs succeeds" test $? -eq 0
echo "  $out"
# expected per prompt: C(K,2) minus the pairs inside consensus tie groups
jqt "C(K,2) pairs per prompt minus consensus ties" --slurpfile g "$G" --slurpfile p "$PR" '
    ($p | group_by(.prompt_id) | map({key: .[0].prompt_id, value: length}) | from_entries) as $n |
    [$g[] | (.n_completions * (.n_completions - 1) / 2 -
                ([.consensus[] | length | . * (. - 1) / 2] | add)) == ($n[.prompt_id] // 0)] | all'
jqt "a prompt's pairs are consecutive" --slurpfile p "$PR" '
    [$p[].prompt_id] as $ids | [range(1; $ids | length) | select($ids[.] != $ids[. - 1])] |
    length == ($ids | unique | length) - 1'
# orientation and margin, recomputed from the rankings; p1..p5 have distinct texts
jqt "chosen has the better consensus rank; margin = share of annotators agreeing" \
    --slurpfile g "$G" --slurpfile p "$PR" --slurpfile c "$C" '
    ($c | map({key: .prompt_id, value: (.completions | map(.text))}) | from_entries) as $tx |
    ($g | map({key: .prompt_id, value: .}) | from_entries) as $G |
    def idx($t; $s): [$t | to_entries[] | select(.value == $s) | .key][0];
    def lvl($r; $i): [$r | to_entries[] | select(.value | index($i)) | .key][0];
    [$p[] | select(.prompt_id != "p6") | . as $q | $G[.prompt_id] as $a |
      idx($tx[.prompt_id]; .chosen) as $ci | idx($tx[.prompt_id]; .rejected) as $ri |
      ([$a.rankings[] | lvl(.; $ci) as $lc | lvl(.; $ri) as $lr |
        if $lc < $lr then 1 elif $lc == $lr then 0.5 else 0 end] | add / length) as $m |
      $a.mean_rank[$ci] < $a.mean_rank[$ri] and ($q.margin - $m | fabs) < 1e-6 and
      $q.margin >= 0 and $q.margin <= 1] | all and length > 20'
jqt "pairs carry prompt text and prompt_id" --slurpfile p "$PR" --slurpfile c "$C" '
    ($c | map({key: .prompt_id, value: .prompt}) | from_entries) as $pt |
    [$p[] | .prompt == $pt[.prompt_id]] | all'

# zero noise: the two identical completions of p6 tie for everyone, so p6 gives 2 pairs, not 3
"$RLHF" annotate --completions "$C" --out "$W/z.jsonl" --simulate 4 --overlap 2 --noise 0 \
    >/dev/null
"$RLHF" aggregate --completions "$C" --annotations "$W/z.jsonl" --out "$W/zagg.jsonl" >/dev/null
"$RLHF" pairs --completions "$C" --aggregated "$W/zagg.jsonl" --out "$W/zp.jsonl" >/dev/null
jqt "zero noise: identical completions tie in every ranking" --slurpfile g "$W/zagg.jsonl" \
    '[$g[] | select(.prompt_id == "p6") | .rankings[] | .[0] == [0, 1]] | all and length == 2'
jqt "a consensus tie gives no pair" --slurpfile p "$W/zp.jsonl" \
    '[$p[] | select(.prompt_id == "p6")] | length == 2 and all(.chosen != .rejected)'
# one weighting for everybody and no noise: complete agreement on every measure
cat >"$W/panel.json" <<'EOF'
[{"id": "ann-a", "weights": {"correct": 2, "polite": 1, "concise": 1, "on-topic": 1}, "noise": 0},
 {"id": "ann-b", "weights": {"correct": 2, "polite": 1, "concise": 1, "on-topic": 1}, "noise": 0},
 {"id": "ann-c", "weights": {"correct": 2, "polite": 1, "concise": 1, "on-topic": 1}, "noise": 0}]
EOF
"$RLHF" annotate --completions "$C" --out "$W/same.jsonl" --annotators "$W/panel.json" \
    --overlap 3 >/dev/null
"$RLHF" aggregate --completions "$C" --annotations "$W/same.jsonl" --out "$W/same_agg.jsonl" \
    >/dev/null
jqt "identical annotators: W = 1, agreement = 1, alpha = 1" \
    --slurpfile s "$W/same_agg.summary.json" \
    '$s[0] | .mean_kendall_w == 1 and .pairwise_agreement == 1 and
     (.krippendorff_alpha_ordinal - 1 | fabs) < 1e-9'
# noise lowers agreement (more prompts would be needed for a finer test: see test_annot)
sed 's/"noise": 0}/"noise": 0.3}/' "$W/panel.json" >"$W/panel_noisy.json"
"$RLHF" annotate --completions "$C" --out "$W/noisy.jsonl" --annotators "$W/panel_noisy.json" \
    --overlap 3 --replace >/dev/null
"$RLHF" aggregate --completions "$C" --annotations "$W/noisy.jsonl" --out "$W/noisy_agg.jsonl" \
    >/dev/null
jqt "noise 0.3: agreement well below 1" --slurpfile s "$W/noisy_agg.summary.json" \
    '$s[0].pairwise_agreement < 0.9'

# --min-w: only prompts with W >= threshold are kept, and only they give pairs
"$RLHF" aggregate --completions "$C" --annotations "$W/noisy.jsonl" --out "$W/f.jsonl" \
    --min-w 0.6 --summary "$W/f_summary.json" >/dev/null
jqt "the W filter keeps exactly the prompts with W >= 0.6" --slurpfile g "$W/f.jsonl" \
    --slurpfile s "$W/f_summary.json" '
    [$g[] | .kept == (.kendall_w != null and .kendall_w >= 0.6)] | all and
    $s[0].kept > 0 and $s[0].dropped > 0 and $s[0].min_w == 0.6 and
    ([$g[] | select(.kept)] | length) == $s[0].kept and $s[0].kept + $s[0].dropped == 6'
"$RLHF" pairs --completions "$C" --aggregated "$W/f.jsonl" --out "$W/fp.jsonl" >/dev/null
jqt "dropped prompts give no pairs" --slurpfile g "$W/f.jsonl" --slurpfile p "$W/fp.jsonl" '
    ([$g[] | select(.kept) | .prompt_id]) as $k | [$p[] | .prompt_id as $i | $k | index($i)]
    | all(. != null)'

# ---- HH export and import ------------------------------------------------------------------
jqt "HH transcripts: Human/Assistant form, one per pair" --slurpfile h "$W/hh.jsonl" \
    --slurpfile p "$PR" '
    ($h | length) == ($p | length) and
    ([range($p | length) as $i | $h[$i].chosen ==
       "\n\nHuman: " + $p[$i].prompt + "\n\nAssistant: " + $p[$i].chosen and
       $h[$i].rejected == "\n\nHuman: " + $p[$i].prompt + "\n\nAssistant: " +
       $p[$i].rejected] | all)'
out=$("$RLHF" import-pairs --in "$W/hh.jsonl" --out "$W/back.jsonl")
check "import-pairs of HH succeeds" test $? -eq 0
jqt "HH round trip: same prompt, chosen, rejected" --slurpfile a "$PR" \
    --slurpfile b "$W/back.jsonl" \
    '($a | map([.prompt, .chosen, .rejected])) == ($b | map([.prompt, .chosen, .rejected]))'
jqt "HH import: one id per distinct prompt, margin 1" --slurpfile b "$W/back.jsonl" '
    ($b | group_by(.prompt) | all(map(.prompt_id) | unique | length == 1)) and
    ($b | map(.prompt_id) | unique | length) == ($b | map(.prompt) | unique | length) and
    ($b | all(.margin == 1))'
"$RLHF" import-pairs --in "$PR" --out "$W/same_pairs.jsonl" >/dev/null
jqt "pairs JSONL import keeps prompt_id and margin" --slurpfile a "$PR" \
    --slurpfile b "$W/same_pairs.jsonl" '$a == $b'
# a multi-turn HH dialogue keeps its transcript as the prompt; TRL rows without a margin get 1
cat >"$W/mixed.jsonl" <<'EOF'
{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant: Pear.", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant: Dog.", "extra": 1}
{"prompt": "Name a fruit.", "chosen": "Pear.", "rejected": "Dog."}
{"prompt": "Name a fruit.", "chosen": "Apple.", "rejected": "Dog.", "margin": 0.75}
EOF
"$RLHF" import-pairs --in "$W/mixed.jsonl" --out "$W/mixed_out.jsonl" >/dev/null
jqt "multi-turn HH, TRL rows, shared prompt ids" --slurpfile m "$W/mixed_out.jsonl" '
    $m[0].prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant:"
    and $m[0].chosen == "Pear." and $m[0].rejected == "Dog." and
    $m[1].margin == 1 and $m[2].margin == 0.75 and
    $m[1].prompt_id == $m[2].prompt_id and $m[0].prompt_id != $m[1].prompt_id'

# ---- imports into the store ----------------------------------------------------------------
cat >"$W/imp.csv" <<'EOF'
prompt_id,annotator,ranking,skip,confidence,note,time,guideline,shown
p1,alice,0>2=1>3,false,0.9,"close call, 2 vs 1",2026-01-01T10:00:00Z,v1,3 2 1 0
p2,alice,,true,,,2026-01-01T10:01:00Z,v1,
p1,bob,0>1>2>3,,,"two
lines",,,
EOF
out=$("$RLHF" annotate --completions "$C" --out "$W/store.jsonl" --import "$W/imp.csv")
check "CSV import succeeds" test $? -eq 0
jqt "CSV import: ties, skip, note, defaults" --slurpfile s "$W/store.jsonl" '
    ($s | length) == 3 and $s[0].ranking == [[0], [1, 2], [3]] and
    $s[0].confidence == 0.9 and $s[0].note == "close call, 2 vs 1" and
    $s[0].shown == [3, 2, 1, 0] and $s[1].skip == true and $s[1].ranking == [] and
    $s[2].note == "two\nlines" and $s[2].guideline == "task-guidelines-v1" and
    ($s[2].time | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"))'
cat >"$W/imp.jsonl" <<'EOF'
{"prompt_id":"p1","annotator":"carol","ranking":[[3],[0,1,2]],"time":"2026-01-01T11:00:00Z","guideline":"v1"}
{"prompt_id":"p2","annotator":"bob","ranking":[1,0,2,3]}
EOF
"$RLHF" annotate --completions "$C" --out "$W/store.jsonl" --import "$W/imp.jsonl" >/dev/null
check "JSONL import merges into the store" test "$(wc -l <"$W/store.jsonl")" -eq 5
cp "$W/store.jsonl" "$W/store.before"
"$RLHF" annotate --completions "$C" --out "$W/store.jsonl" --import "$W/imp.jsonl" \
    >/dev/null 2>"$W/err"
check "re-importing is refused" test $? -ne 0
check "the refusal names file:line of both records" \
    grep -q "imp.jsonl:1: prompt 'p1' already has a record by annotator 'carol' (.*store.jsonl:4)" \
    "$W/err"
check "the store is unchanged" cmp -s "$W/store.jsonl" "$W/store.before"
"$RLHF" aggregate --completions "$C" --annotations "$W/store.jsonl" --out "$W/sagg.jsonl" >/dev/null
jqt "skips are counted, not ranked" --slurpfile s "$W/sagg.summary.json" \
    '$s[0].skipped == 1 and $s[0].records == 5'

# ---- malformed input: an error naming file:line, nothing written ----------------------------
printf '%s\n' '{"prompt_id":"p1","annotator":"x","ranking":[0,1,2,3]}' '' \
    '{"prompt_id":"p1","annotator":"y","ranking":[[0],[1,1],[2,3]]}' >"$W/bad1.jsonl"
fails_cleanly "JSONL: repeated index" "bad1.jsonl:3: ranking: completion 1 appears twice" \
    "$W/o1.jsonl" -- \
    "$RLHF" annotate --completions "$C" --out "$W/o1.jsonl" --import "$W/bad1.jsonl"
printf '%s\n' '{"prompt_id":"p1","annotator":"x","ranking":[0,1,2,3]}' \
    '{"prompt_id":"p6","annotator":"y","ranking":[0,1,2,3]}' >"$W/bad2.jsonl"
fails_cleanly "JSONL: out-of-range index" "bad2.jsonl:2: ranking: completion 3 is out of range" \
    "$W/o2.jsonl" -- \
    "$RLHF" annotate --completions "$C" --out "$W/o2.jsonl" --import "$W/bad2.jsonl"
printf '%s\n' '{"prompt_id":"p1","annotator":"x","ranking":[0,1,2,3]}' \
    '{"prompt_id":"p1","annotator":"y","ranking":[0,1,2,3]' >"$W/bad3.jsonl"
fails_cleanly "JSONL: broken line" "bad3.jsonl:2:" "$W/o3.jsonl" -- \
    "$RLHF" annotate --completions "$C" --out "$W/o3.jsonl" --import "$W/bad3.jsonl"
printf 'prompt_id,annotator,ranking\np1,x,0>1>2>3\np1,y,0>1=1>2>3\n' >"$W/bad4.csv"
fails_cleanly "CSV: repeated index" "bad4.csv:3: ranking: completion 1 appears twice" \
    "$W/o4.jsonl" -- "$RLHF" annotate --completions "$C" --out "$W/o4.jsonl" --import "$W/bad4.csv"
printf 'prompt_id,annotator,ranking\np1,x,0>1>2>3\np1,y,0>1>2\n' >"$W/bad5.csv"
fails_cleanly "CSV: incomplete ranking" "bad5.csv:3: ranking: completion 3 is not ranked" \
    "$W/o5.jsonl" -- "$RLHF" annotate --completions "$C" --out "$W/o5.jsonl" --import "$W/bad5.csv"
printf 'prompt_id,annotator,ranking\np1,x,0>1>2>3\np9,y,0>1>2>3\n' >"$W/bad6.csv"
fails_cleanly "CSV: unknown prompt" "bad6.csv:3: prompt_id: 'p9'" "$W/o6.jsonl" -- \
    "$RLHF" annotate --completions "$C" --out "$W/o6.jsonl" --import "$W/bad6.csv"
head -2 "$A" >"$W/bad7.jsonl"
echo '{"prompt_id":"p1","annotator":"q","ranking":[0,1,2,3],"time":"now"}' >>"$W/bad7.jsonl"
fails_cleanly "aggregate: malformed annotations" "bad7.jsonl:3: time" \
    "$W/o7.jsonl" "$W/o7.summary.json" -- \
    "$RLHF" aggregate --completions "$C" --annotations "$W/bad7.jsonl" --out "$W/o7.jsonl"
head -2 "$G" >"$W/bad8.jsonl"
head -3 "$G" | tail -1 | jq -c '.rankings[0] = [[0], [0, 1], [2, 3]]' >>"$W/bad8.jsonl"
fails_cleanly "pairs: malformed aggregated record" "bad8.jsonl:3: rankings[0]: ranking" \
    "$W/o8.jsonl" "$W/o8hh.jsonl" -- "$RLHF" pairs --completions "$C" \
    --aggregated "$W/bad8.jsonl" --out "$W/o8.jsonl" --hh "$W/o8hh.jsonl"
printf '%s\n' '{"prompt":"a","chosen":"b","rejected":"c"}' '{"chosen":"x","rejected":"y"}' \
    >"$W/bad9.jsonl"
fails_cleanly "import-pairs: neither form" "bad9.jsonl:2: no \"prompt\" field" "$W/o9.jsonl" -- \
    "$RLHF" import-pairs --in "$W/bad9.jsonl" --out "$W/o9.jsonl"
printf '%s\n' '{"prompt":"a","chosen":"b","rejected":"c","margin":3}' >"$W/bad10.jsonl"
fails_cleanly "import-pairs: margin out of range" "bad10.jsonl:1: margin" "$W/o10.jsonl" -- \
    "$RLHF" import-pairs --in "$W/bad10.jsonl" --out "$W/o10.jsonl"
printf '%s\n' '{"prompt_id":"p1","prompt":"x","completions":[{"id":"a","text":"t"}]}' \
    '{"prompt_id":"p2","prompt":"x","completions":[{"id":"a"}]}' >"$W/bad11.jsonl"
fails_cleanly "completions: missing text" "bad11.jsonl:2: completions[0]: text" "$W/o11.jsonl" -- \
    "$RLHF" annotate --completions "$W/bad11.jsonl" --out "$W/o11.jsonl" --simulate 2

echo "$pass passed, $fail failed"
test "$fail" -eq 0
