#!/usr/bin/env bash
# test_generate_stage.sh - `rlhf generate`, stage 1's generation through a local master and
# rollout workers: K completions per prompt with tokens and logprobs; the same file whatever the
# number of workers; chat-style prompts and assigned ids; an interrupted run continues without
# redoing finished prompts; bad input is refused with file:line and nothing written.
# Usage: test_generate_stage.sh BIN_DIR
BIN=${1:?usage: test_generate_stage.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf

# a tiny model with its own tokenizer
for i in $(seq 1 300); do echo "hello world what is two plus three name a fruit apple please thanks $i"; done >"$W/corpus.txt"
"$R" tokenizer-train --corpus "$W/corpus.txt" --vocab-size 300 --out "$W/tok" >/dev/null
"$R" init-model --tokenizer "$W/tok" --layers 2 --heads 2 --dim 32 --vocab 300 --ctx 64 \
    --out "$W/m" >/dev/null
check "tiny model created" test -f "$W/m/model.safetensors"

cat >"$W/prompts.jsonl" <<'P'
{"id":"arith-1","prompt":"\n\nHuman: what is two plus three?\n\nAssistant:"}
{"messages":[{"role":"user","content":"name a fruit"}]}

{"id":7,"messages":[{"role":"system","content":"be nice"},{"role":"user","content":"hello"},{"role":"assistant","content":"hello"},{"role":"user","content":"thanks"}]}
{"prompt":"please"}
P
"$R" generate --model "$W/m" --prompts "$W/prompts.jsonl" --out "$W/c2.jsonl" --k 3 --max-new 10 \
    --workers 2 --seed 5 >"$W/gen2.json" 2>"$W/gen2.err"
check "generate with 2 workers succeeds" test -s "$W/c2.jsonl"
check "one record per prompt" test "$(wc -l <"$W/c2.jsonl")" -eq 4
check "K = 3 completions each" jq -e -s 'all(.[]; (.completions | length) == 3)' "$W/c2.jsonl"
check "ids kept or assigned" test "$(jq -r -s '[.[].prompt_id] | join(",")' "$W/c2.jsonl")" = "arith-1,p2,7,p4"
check "completion ids" test "$(jq -r -s '.[0].completions | map(.id) | join(",")' "$W/c2.jsonl")" = "arith-1-0,arith-1-1,arith-1-2"
check "chat rendered with the HH template" test "$(jq -r -s '.[1].prompt' "$W/c2.jsonl" | od -c | head -1 | tr -s ' ')" = "$(printf '\n\nHuman: name a fruit\n\nAssistant:' | od -c | head -1 | tr -s ' ')"
check "multi-turn chat rendered in order" bash -c "jq -r -s '.[2].prompt' '$W/c2.jsonl' | tr '\n' '|' | grep -qx 'be nice||Human: hello||Assistant: hello||Human: thanks||Assistant:|'"
check "one logprob per token, all <= 0" jq -e -s 'all(.[].completions[]; (.tokens | length) == (.logprobs | length) and (.tokens | length) >= 1 and (.tokens | length) <= 10 and all(.logprobs[]; . <= 0))' "$W/c2.jsonl"
check "logprob is the sum of the token logprobs" jq -e -s 'all(.[].completions[]; ((.logprob - (.logprobs | add)) | fabs) < 1e-3)' "$W/c2.jsonl"
check "finish is eot exactly when the last token is end-of-text" jq -e -s 'all(.[].completions[]; (.finish == "eot") == (.tokens[-1] == 299))' "$W/c2.jsonl"
check "samples of a prompt differ" test "$(jq -c -s '.[0].completions | map(.tokens) | unique | length' "$W/c2.jsonl")" -ge 2
check "summary printed" jq -e '.prompts == 4 and .k == 3 and .tokens > 0' "$W/gen2.json"

"$R" generate --model "$W/m" --prompts "$W/prompts.jsonl" --out "$W/c1.jsonl" --k 3 --max-new 10 \
    --workers 1 --seed 5 >/dev/null 2>&1
check "1 worker gives the same file as 2" cmp -s "$W/c1.jsonl" "$W/c2.jsonl"
"$R" generate --model "$W/m" --prompts "$W/prompts.jsonl" --out "$W/c3.jsonl" --k 3 --max-new 10 \
    --workers 1 --seed 6 >/dev/null 2>&1
check "another seed gives other samples" bash -c "! cmp -s '$W/c3.jsonl' '$W/c2.jsonl'"

# --- interrupted and resumed: finished prompts are not generated again
for i in $(seq 1 40); do echo "{\"id\":\"q$i\",\"prompt\":\"what is two plus three $i\"}"; done >"$W/many.jsonl"
"$R" generate --model "$W/m" --prompts "$W/many.jsonl" --out "$W/ref.jsonl" --k 4 --max-new 40 \
    --workers 2 >/dev/null 2>&1
setsid "$R" generate --model "$W/m" --prompts "$W/many.jsonl" --out "$W/cut.jsonl" --k 4 \
    --max-new 40 --workers 2 --job-delay-ms 100 >/dev/null 2>&1 &
GPID=$!
PIDS+=("$GPID")
results_n() { cat "$(results_of $W/cut.jsonl.run/cluster)" 2>/dev/null | grep -c job_id; }
some_done() { [ "$(results_n)" -ge 3 ]; }
check "some prompts finished before the crash" wait_for 60 some_done
kill -KILL -- -"$GPID" 2>/dev/null
wait "$GPID" 2>/dev/null
done_before=$(results_n)
check "killed before the end ($done_before of 40 done)" test "$done_before" -lt 40
check "no output written by the killed run" test ! -e "$W/cut.jsonl"
"$R" generate --model "$W/m" --prompts "$W/many.jsonl" --out "$W/cut.jsonl" --k 4 --max-new 40 \
    --workers 2 --job-delay-ms 100 >/dev/null 2>&1
check "the resumed run completes" test -s "$W/cut.jsonl"
check "resumed output equals an uninterrupted run" cmp -s "$W/cut.jsonl" "$W/ref.jsonl"
check "each prompt generated once ($done_before before the crash)" \
    test "$(jq -r .job_id "$(results_of $W/cut.jsonl.run/cluster)" | sort | uniq -d | wc -l)" -eq 0
check "the restarted master skipped finished prompts" grep -q "jobs already done" "$W/cut.jsonl.run/cluster/master.log"

# --- bad input: file:line, nothing written
printf '{"prompt":"hello"}\n{"prompt": 3}\n' >"$W/bad.jsonl"
"$R" generate --model "$W/m" --prompts "$W/bad.jsonl" --out "$W/bad_out.jsonl" 2>"$W/err" >/dev/null
check "a bad prompt record is refused" test $? -ne 0
check "... naming file and line" grep -q "bad.jsonl:2:" "$W/err"
check "... writing nothing" test ! -e "$W/bad_out.jsonl" -a ! -e "$W/bad_out.jsonl.run"
printf '{"prompt":"hello"}\n{"prompt":"x"\n' >"$W/bad2.jsonl"
"$R" generate --model "$W/m" --prompts "$W/bad2.jsonl" --out "$W/bad_out.jsonl" 2>"$W/err" >/dev/null
check "malformed JSON names file and line" grep -q "bad2.jsonl:2:" "$W/err"
printf '{"id":"a","prompt":"hello"}\n{"id":"a","prompt":"thanks"}\n' >"$W/dup.jsonl"
"$R" generate --model "$W/m" --prompts "$W/dup.jsonl" --out "$W/bad_out.jsonl" 2>"$W/err" >/dev/null
check "a repeated id is refused" grep -q "dup.jsonl:2: id 'a' repeats" "$W/err"
long=$(for i in $(seq 1 80); do printf 'apple '; done)
echo "{\"prompt\":\"$long\"}" >"$W/long.jsonl"
"$R" generate --model "$W/m" --prompts "$W/long.jsonl" --out "$W/bad_out.jsonl" 2>"$W/err" >/dev/null
check "a prompt longer than the context is refused" grep -q "long.jsonl:1: the prompt is" "$W/err"
"$R" generate --model "$W/m" --prompts "$W/prompts.jsonl" --out "$W/c2.jsonl" --k 2 \
    --run-dir "$W/c1.jsonl.run" 2>"$W/err" >/dev/null
check "a run dir of another job set is refused" grep -q "holds a different job set" "$W/err"
check "... and the earlier output is untouched" cmp -s "$W/c1.jsonl" "$W/c2.jsonl"
finish
