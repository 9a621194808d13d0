#!/usr/bin/env bash
# demo.sh - the main job, as far as the pipeline exists today: a byte-level GPT trained from
# scratch on text shipped in this repository, evaluated on held-out text before and after,
# then the training-step benchmark at a small shape. Outputs go to runs/demo/.
#
# Usage: deploy/demo.sh [PATH/TO/rlhf]
set -euo pipefail
cd "$(dirname "$0")/.."
RLHF=${1:-build/rlhf}
RUN=runs/demo
mkdir -p "$RUN"

# The corpus: the README and the module headers (English prose and C), one byte = one token.
cat README.md common/*.h >"$RUN/corpus.txt"
od -An -v -tu1 "$RUN/corpus.txt" | tr -s ' \n' '\n' | sed '/^$/d' >"$RUN/bytes.txt"
total=$(wc -l <"$RUN/bytes.txt")
ntrain=$((total * 9 / 10))
head -n "$ntrain" "$RUN/bytes.txt" >"$RUN/train.tokens"
tail -n +"$((ntrain + 1))" "$RUN/bytes.txt" >"$RUN/heldout.tokens"
echo "== corpus: $total bytes ($ntrain train, $((total - ntrain)) held out)"

echo "== init-model: 4 layers, 4 heads, 128 dims, byte vocabulary (256), context 128"
"$RLHF" init-model --out "$RUN/model-init" --layers 4 --heads 4 --dim 128 --vocab 256 \
    --ctx 128 --seed 1
before=$("$RLHF" eval-lm --model "$RUN/model-init" --tokens "$RUN/heldout.tokens" --seq 128)
echo "held-out before training: $before"

echo "== train-lm: 600 steps of 8 x 128 tokens, AdamW, cosine schedule"
"$RLHF" train-lm --model "$RUN/model-init" --tokens "$RUN/train.tokens" --out "$RUN/model" \
    --steps 600 --batch 8 --seq 128 --lr 2e-3 --min-lr 2e-4 --warmup 30 --log-every 50 |
    tee "$RUN/train.jsonl"
after=$("$RLHF" eval-lm --model "$RUN/model" --tokens "$RUN/heldout.tokens" --seq 128)
echo "held-out after training:  $after"

echo "== bench train at a small shape (4 layers, 4 heads, 256 dims, GPT-2 vocabulary)"
"$RLHF" bench train --layers 4 --heads 4 --dim 256 --vocab 50257 --batch 4 --seq 64 \
    --steps 5 --threads 2 | tee "$RUN/bench.json"

lb=$(jq .loss <<<"$before")
la=$(jq .loss <<<"$after")
echo
echo "summary: held-out loss $lb -> $la nats/byte; model in $RUN/model (Hugging Face layout)"
