#!/usr/bin/env bash
# demo.sh - the main job, as far as the pipeline exists today:
#   1. a byte-level BPE tokenizer learned from text shipped in this repository;
#   2. a small GPT initialised with it and trained from scratch, evaluated on held-out text
#      before and after, and sampled from before and after (KV-cached generation);
#   3. generation as jobs of the distributed runtime: an rlhf-master with two rollout
#      workers on loopback, every job's result recorded once;
#   4. the training and generation benchmarks at small shapes.
# Outputs go to runs/demo/. Usage: deploy/demo.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build}
[ -x "$BIN" ] && [ ! -d "$BIN" ] && BIN=$(dirname "$BIN") # an old-style path to rlhf
RLHF=$BIN/rlhf
RUN=runs/demo
rm -rf "$RUN"
mkdir -p "$RUN"

echo "== corpus: the README and module headers of this repository"
cat README.md common/*.h >"$RUN/corpus.txt"
"$RLHF" tokenizer-train --corpus "$RUN/corpus.txt" --vocab-size 1024 --out "$RUN/tokenizer"
"$RLHF" tokenize --model "$RUN/tokenizer" --no-special <"$RUN/corpus.txt" | tr ' ' '\n' |
    sed '/^$/d' >"$RUN/ids.txt"
total=$(wc -l <"$RUN/ids.txt")
ntrain=$((total * 9 / 10))
head -n "$ntrain" "$RUN/ids.txt" >"$RUN/train.tokens"
tail -n +"$((ntrain + 1))" "$RUN/ids.txt" >"$RUN/heldout.tokens"
echo "$total tokens ($ntrain train, $((total - ntrain)) held out)"

echo "== init-model: 4 layers, 4 heads, 128 dims, the 1024-token vocabulary, context 128"
"$RLHF" init-model --out "$RUN/model-init" --layers 4 --heads 4 --dim 128 --vocab 1024 \
    --ctx 128 --seed 1 --tokenizer "$RUN/tokenizer"
before=$("$RLHF" eval-lm --model "$RUN/model-init" --tokens "$RUN/heldout.tokens" --seq 128)
echo "held-out before training: $before"
echo "-- a sample before training:"
"$RLHF" sample --model "$RUN/model-init" --prompt "The master" --max-new-tokens 24 \
    --temperature 0.8 --seed 1

echo "== train-lm: 500 steps of 8 x 128 tokens, AdamW, cosine schedule"
"$RLHF" train-lm --model "$RUN/model-init" --tokens "$RUN/train.tokens" --out "$RUN/model" \
    --steps 500 --batch 8 --seq 128 --lr 2e-3 --min-lr 2e-4 --warmup 30 --log-every 50 |
    tee "$RUN/train.jsonl"
after=$("$RLHF" eval-lm --model "$RUN/model" --tokens "$RUN/heldout.tokens" --seq 128)
echo "held-out after training:  $after"
echo "-- samples after training (greedy, then temperature 0.8, top-p 0.95):"
"$RLHF" sample --model "$RUN/model" --prompt "The master" --max-new-tokens 24 --temperature 0
"$RLHF" sample --model "$RUN/model" --prompt "The master" --max-new-tokens 24 \
    --temperature 0.8 --top-p 0.95 --n 2 --seed 1

echo "== generation jobs through rlhf-master and two rollout workers on loopback"
prompts=("The master" "Every file" "A worker" "The model" "Bad input" "The tokenizer")
: >"$RUN/jobs.jsonl"
for i in "${!prompts[@]}"; do
    ids=$(printf '%s' "${prompts[$i]}" | "$RLHF" tokenize --model "$RUN/model" | tr ' ' ',')
    printf '{"id":%d,"kind":"generate","model":"%s","prompt":[%s],"max_new_tokens":16}\n' \
        $((i + 1)) "$PWD/$RUN/model" "$ids" >>"$RUN/jobs.jsonl"
done
"$BIN/rlhf-master" --bind 'tcp://127.0.0.1:*' --run-dir "$RUN/cluster" --http-port 0 \
    --jobs "$RUN/jobs.jsonl" --exit-when-done >"$RUN/master.log" 2>&1 &
master=$!
for _ in $(seq 100); do [ -s "$RUN/cluster/master.json" ] && break; sleep 0.1; done
ep=$(jq -r .endpoint "$RUN/cluster/master.json")
"$BIN/rlhf-worker" --role rollout --id rollout-1 --master "$ep" >"$RUN/worker1.log" 2>&1 &
w1=$!
"$BIN/rlhf-worker" --role rollout --id rollout-2 --master "$ep" >"$RUN/worker2.log" 2>&1 &
w2=$!
wait "$master"
kill -TERM "$w1" "$w2" 2>/dev/null || true
wait "$w1" "$w2" 2>/dev/null || true
echo "$(wc -l <"$RUN/cluster/results.jsonl") results for $(wc -l <"$RUN/jobs.jsonl") jobs:"
while read -r line; do
    id=$(jq -r .job_id <<<"$line")
    worker=$(jq -r .worker <<<"$line")
    text=$(jq -r '.tokens | map(tostring) | join(" ")' <<<"$line" |
        "$RLHF" detokenize --model "$RUN/model")
    printf '  job %s on %s: %s|%s\n' "$id" "$worker" "${prompts[$((id - 1))]}" "${text//$'\n'/ }"
done <"$RUN/cluster/results.jsonl"

echo "== bench train and bench generate at small shapes"
"$RLHF" bench train --layers 4 --heads 4 --dim 256 --vocab 50257 --batch 4 --seq 64 \
    --steps 5 --threads 2 | tee "$RUN/bench-train.json"
"$RLHF" bench generate --layers 4 --heads 4 --dim 256 --vocab 50257 --batch 16 \
    --prompt-len 16 --new 32 --threads 2 | tee "$RUN/bench-generate.json"

echo
echo "summary: held-out loss $(jq .loss <<<"$before") -> $(jq .loss <<<"$after") nats/token;" \
    "model in $RUN/model (Hugging Face layout, with its tokenizer)"
