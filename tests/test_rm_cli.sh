#!/usr/bin/env bash
# test_rm_cli.sh - the reward-model commands as a user runs them: a tiny tokenizer and model
# from the existing commands, a synthetic preference ("the completion with more 'please' is
# preferred"), train-rm -> eval-rm -> score, and clean failures on bad input.
# Usage: test_rm_cli.sh PATH/TO/rlhf
set -u
RLHF=${1:?usage: test_rm_cli.sh PATH/TO/rlhf}
W=$(mktemp -d "${TMPDIR:-/tmp}/rlhf-rm-cli-XXXXXX")
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { # check NAME COMMAND...: the command must succeed
    local name=$1; shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
num() { jq -r "$1" <<<"$2"; }
awk_true() { awk "BEGIN { exit !($1) }"; }
jq_true() { jq -e "$1" <<<"$2" >/dev/null; } # jq_true FILTER JSON: the filter yields true

for c in train-rm eval-rm score; do
    check "$c --help" bash -c "'$RLHF' $c --help | grep -q usage"
done

# 160 prompts, three completions each with 0, 1 and 2 "please": every pair ordered by the count.
# Words are picked by arithmetic, so the file is the same on every machine.
awk 'BEGIN {
    split("cat dog bird fish tree lamp road cake ship moon rain book", w, " ")
    split("tell me about|describe|say something on|write a line about", v, "|")
    fmt = "{\"prompt_id\": \"q%d\", \"prompt\": \"%s\", \"chosen\": \"%s\", \"rejected\": \"%s\","
    fmt = fmt " \"margin\": %s}\n"
    for (i = 0; i < 160; i++) {
        p = "\\n\\nHuman: " v[i % 4 + 1] " the " w[(i * 7) % 12 + 1] " and the "
        p = p w[(i * 5 + 3) % 12 + 1] "\\n\\nAssistant:"
        for (k = 0; k < 3; k++) {
            n = 3 + (i + k) % 3; s = ""
            for (j = 0; j < n; j++) s = s " " w[(i * 3 + k * 5 + j * 7) % 12 + 1]
            if (k >= 1) s = " please" s
            if (k == 2) s = s " please"
            c[k] = s
        }
        printf fmt, i, p, c[2], c[1], "1"
        printf fmt, i, p, c[2], c[0], "1"
        printf fmt, i, p, c[1], c[0], "0.5"
    }
}' >"$W/pairs.jsonl"
check "pairs file is valid JSONL" bash -c "jq -e .chosen '$W/pairs.jsonl' >/dev/null"
jq -r '.prompt + .chosen + "\n" + .prompt + .rejected' "$W/pairs.jsonl" >"$W/corpus.txt"

"$RLHF" tokenizer-train --corpus "$W/corpus.txt" --vocab-size 320 --out "$W/tok" >/dev/null
check "tokenizer-train" test -f "$W/tok/vocab.json"
"$RLHF" init-model --out "$W/base" --tokenizer "$W/tok" --layers 2 --heads 2 --dim 32 \
    --vocab 320 --ctx 64 --seed 3 >/dev/null
check "init-model" test -f "$W/base/model.safetensors"

# one thread: the test runs beside others on a busy machine
PAIRS=(--pairs "$W/pairs.jsonl" --threads 1)

# K-wise training (InstructGPT batches) from a model without a head
"$RLHF" train-rm --model "$W/base" "${PAIRS[@]}" --out "$W/rm" --heldout-frac 0.25 \
    --epochs 6 --batch 8 --lr 3e-3 --min-lr 3e-4 --log-every 20 >"$W/train.jsonl" 2>"$W/err"
check "train-rm succeeds" test $? -eq 0
cat "$W/err"
head -1 "$W/train.jsonl" | sed 's/^/  /'
grep '"step"' "$W/train.jsonl" | tail -1 | sed 's/^/  /'
tail -2 "$W/train.jsonl" | sed 's/^/  /'
info=$(head -1 "$W/train.jsonl")
check "all pairs read, grouped by prompt" \
    jq_true '.pairs == 480 and .prompts == 160 and .completions == 480' "$info"
check "some prompts held out" jq_true '.heldout_prompts > 20 and .heldout_prompts < 60' "$info"
check "held-out pairs are whole prompts" jq_true '.heldout_pairs == 3 * .heldout_prompts' "$info"
step=$(grep '"step"' "$W/train.jsonl" | head -1)
check "step lines report pairs/s" jq_true '.pairs_per_s > 0 and .pairs == 24' "$step"
heldout=$(grep '"split"' "$W/train.jsonl")
check "train-rm held-out accuracy well above chance" jq_true '.accuracy > 0.85' "$heldout"
check "model dir is complete" test -f "$W/rm/config.json" -a -f "$W/rm/model.safetensors" \
    -a -f "$W/rm/vocab.json" -a -f "$W/rm/merges.txt" -a -f "$W/rm/reward_stats.json"
check "config.json declares the head" \
    jq_true '.rlhf_scalar_head.weight == "score.weight"' "$(cat "$W/rm/config.json")"
stats=$(cat "$W/rm/reward_stats.json")
check "reward stats over every completion" jq_true '.count == 480 and .std > 0' "$stats"
check "no staging directories left" bash -c "! ls -d '$W'/rm.* 2>/dev/null | grep -q ."

# eval-rm: the same held-out split by default, against a ceiling
e=$("$RLHF" eval-rm --rm "$W/rm" "${PAIRS[@]}" --heldout-frac 0.25 --ceiling 0.9)
echo "  eval-rm: $e"
check "eval-rm accuracy well above chance" jq_true '.accuracy > 0.85' "$e"
check "eval-rm = train-rm's held-out evaluation" \
    jq_true ".accuracy == $(num .accuracy "$heldout") and .pairs == $(num .pairs "$heldout")" "$e"
check "accuracy vs ceiling" jq_true '(.accuracy_vs_ceiling - .accuracy / 0.9 | fabs) < 1e-6' "$e"
check "ECE in [0,1]" jq_true '.ece >= 0 and .ece <= 1 and .ece_bins == 10' "$e"
echo '{"prompts": 160, "pairwise_agreement": 0.8}' >"$W/agg.json"
e2=$("$RLHF" eval-rm --rm "$W/rm" "${PAIRS[@]}" --heldout-frac 0.25 --ceiling-from "$W/agg.json" \
    --bins 5)
check "ceiling from the aggregate summary" jq_true '.ceiling == 0.8 and .ece_bins == 5' "$e2"
ea=$("$RLHF" eval-rm --rm "$W/rm" "${PAIRS[@]}" --all --write-stats)
check "eval-rm --all counts every pair" jq_true '.pairs == 480' "$ea"
check "--write-stats stores the evaluated statistics" \
    jq_true "(.mean - $(num .reward_mean "$ea") | fabs) < 1e-5 and .count == 480" \
    "$(cat "$W/rm/reward_stats.json")"

# score: one completion prints its reward; two also the preference probability
P=$'\n\nHuman: tell me about the moon and the lamp\n\nAssistant:'
C1=" please the cake road please" C2=" the cake road"
s1=$("$RLHF" score --threads 1 --rm "$W/rm" --prompt "$P" --completion "$C1")
s2=$("$RLHF" score --threads 1 --rm "$W/rm" --prompt "$P" --completion "$C2")
s12=$("$RLHF" score --threads 1 --rm "$W/rm" --prompt "$P" --completion "$C1" --completion "$C2")
echo "  score: $s1 / $s2 / $s12"
check "score prints a number" jq_true '.reward | type == "number"' "$s1"
sigma='1 / (1 + (.rewards[1] - .rewards[0] | exp))'
check "two completions: p = sigma(r1 - r2)" \
    jq_true "(.p_first_preferred - $sigma | fabs) < 1e-6" "$s12"
check "p in (0,1)" jq_true '.p_first_preferred > 0 and .p_first_preferred < 1' "$s12"
check "rewards match single scores" jq_true "(.rewards[0] - $(num .reward "$s1") | fabs) < 1e-5 \
    and (.rewards[1] - $(num .reward "$s2") | fabs) < 1e-5" "$s12"
check "the preferred completion wins" jq_true '.p_first_preferred > 0.5' "$s12"
check "normalized reward from the stats" jq_true '.normalized | type == "number"' "$s1"

# pairwise batches with the margin and centering terms
"$RLHF" train-rm --model "$W/base" "${PAIRS[@]}" --out "$W/rm2" --heldout-frac 0.25 \
    --pairwise --margin 1 --center 0.01 --steps 80 --batch 16 --lr 3e-3 --log-every 1000 \
    >"$W/train2.jsonl" 2>"$W/err"
check "train-rm --pairwise succeeds" test $? -eq 0
h2=$(grep '"split"' "$W/train2.jsonl")
echo "  pairwise held-out: $h2"
check "pairwise training learns too" jq_true '.accuracy > 0.8' "$h2"
step2=$(grep '"step"' "$W/train2.jsonl" | head -1)
check "pairwise step = 16 pairs" jq_true '.pairs == 16' "$step2"

# bad input: file:line, nonzero exit, nothing written
{ head -2 "$W/pairs.jsonl"; echo '{"prompt": "x", "chosen": 5, "rejected": "y"}'; } >"$W/bad.jsonl"
"$RLHF" train-rm --model "$W/base" --pairs "$W/bad.jsonl" --out "$W/rm_bad" --steps 2 \
    >/dev/null 2>"$W/err"
check "malformed pairs fail" test $? -ne 0
check "error names file:line" grep -q "bad.jsonl:3" "$W/err"
check "no model dir written" test ! -e "$W/rm_bad"
"$RLHF" eval-rm --rm "$W/rm" --pairs "$W/bad.jsonl" >/dev/null 2>"$W/err"
check "eval-rm names file:line too" grep -q "bad.jsonl:3" "$W/err"
"$RLHF" eval-rm --rm "$W/base" --pairs "$W/pairs.jsonl" >/dev/null 2>"$W/err"
check "a model without a head is not a reward model" grep -q "not a reward model" "$W/err"
mkdir -p "$W/keep" && echo x >"$W/keep/notes.txt"
"$RLHF" train-rm --model "$W/base" "${PAIRS[@]}" --out "$W/keep" --steps 1 >/dev/null 2>"$W/err"
check "an unrelated directory is never replaced" \
    test -f "$W/keep/notes.txt" -a ! -e "$W/keep/config.json"
"$RLHF" score --rm "$W/rm" --prompt x >/dev/null 2>&1
check "score without a completion exits 2" test $? -eq 2

echo "$pass passed, $fail failed"
test "$fail" -eq 0
