#!/usr/bin/env bash
# test_chat_pipeline.sh - every stage on a model whose tokenizer is a tokenizer.json with a chat
# template, its prompts given as messages: the embedded task's vocabulary written as Hugging
# Face writes a Qwen2-style tokenizer (the Split pattern, ByteLevel, <|im_start|> / <|im_end|>
# added as special tokens, ChatML in tokenizer_config.json), a Qwen2-architecture model, and
# sft -> generate -> annotate -> aggregate -> pairs -> train-rm -> ppo -> eval-policy by hand.
# The rendered prompts must be Python Jinja2's rendering of the template (as transformers'
# apply_chat_template) and must reach the model as one <|im_start|> id, in every stage.
# Usage: test_chat_pipeline.sh BIN_DIR
BIN=${1:?usage: test_chat_pipeline.sh BIN_DIR}
BIN=$(cd "$BIN" && pwd)
SRC=$(cd "$(dirname "$0")" && pwd)
source "$SRC/runtime_lib.sh"
R="$BIN/rlhf"
cd "$W"
PY=python3
python3 -c 'import jinja2' 2>/dev/null || PY=/usr/bin/python3

"$R" task --out task --prompts 48 --heldout 8 --seed 3 >/dev/null
"$R" tokenizer-train --corpus task/corpus.txt --vocab-size 400 --out bpe >/dev/null
check "a 400-id vocabulary with <|endoftext|> last" \
    test "$(jq -r '.["<|endoftext|>"]' bpe/vocab.json)" -eq 399

# the same vocabulary as a Qwen2-style tokenizer.json + tokenizer_config.json
mkdir -p tok
SPLIT="(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
CHATML="{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
grep -v '^#version' bpe/merges.txt | jq -R -s --slurpfile v bpe/vocab.json --arg split "$SPLIT" '
    def added($id; $c): {id: $id, content: $c, single_word: false, lstrip: false, rstrip: false,
        normalized: false, special: true};
    {version: "1.0", truncation: null, padding: null,
     added_tokens: [added(399; "<|endoftext|>"), added(400; "<|im_start|>"), added(401; "<|im_end|>")],
     normalizer: null,
     pre_tokenizer: {type: "Sequence", pretokenizers: [
        {type: "Split", pattern: {Regex: $split}, behavior: "Isolated", invert: false},
        {type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false}]},
     post_processor: {type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false},
     decoder: {type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false},
     model: {type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: "",
        end_of_word_suffix: "", fuse_unk: false, byte_fallback: false, ignore_merges: false,
        vocab: $v[0], merges: (split("\n") | map(select(length > 0)))}}' >tok/tokenizer.json
jq -n --arg t "$CHATML" '{add_bos_token: false, bos_token: null, eos_token: "<|im_end|>",
    pad_token: "<|endoftext|>", chat_template: $t, model_max_length: 64}' >tok/tokenizer_config.json
printf 'a<|im_start|>b' | "$R" tokenize --model tok >ids.txt 2>err.txt
check "tokenize: <|im_start|> written in the text is one id" test "$(cat ids.txt)" = "64 400 65"

"$R" init-model --out init --arch qwen2 --layers 2 --heads 4 --kv-heads 2 --dim 64 --inner 176 \
    --vocab 402 --ctx 64 --seed 3 --tokenizer tok >/dev/null 2>err.txt
check "init-model --arch qwen2 with the tokenizer.json" test -s init/tokenizer_config.json
check "init-model: eos_token_id is <|im_end|>'s" jq -e '.eos_token_id == 401' init/config.json

# the task's files as conversations: the question without the Human/Assistant framing the task
# writes for GPT-2 (the template frames it)
Q='.prompt | sub("^\n\nHuman: "; "") | sub("\n\nAssistant:$"; "")'
jq -c "{messages: [{role: \"system\", content: \"Answer briefly.\"}, {role: \"user\",
    content: ($Q)}, {role: \"assistant\", content: (.completion | sub(\"<\\\\|endoftext\\\\|>$\"; \"\"))}]}" \
    task/sft.jsonl >sft_chat.jsonl
for f in prompts prompts_heldout; do
    jq -c "{id, messages: [{role: \"user\", content: ($Q)}]}" "task/$f.jsonl" >"${f}_chat.jsonl"
done
check "conversations: the framing is gone" bash -c "! grep -q 'Human:' sft_chat.jsonl prompts_chat.jsonl"

"$R" sft --model init --data sft_chat.jsonl --out sft --steps 100 --batch 16 --lr 4e-3 --seed 3 \
    >sft.jsonl 2>err.txt
check "sft on conversations" test -s sft/model.safetensors
first=$(grep '"step":0,' sft.jsonl | jq .loss)
last=$(grep '"loss"' sft.jsonl | tail -5 | jq .loss | jq -s 'add / length')
check "sft: the loss falls by over 1 nat ($first -> $last)" awk "BEGIN { exit !($last < $first - 1) }"
check "sft: the tokenizer.json travels with the model" test -s sft/tokenizer.json

"$R" generate --model sft --prompts prompts_chat.jsonl --out completions.jsonl --k 3 \
    --max-new 24 --workers 1 --seed 3 --run-dir gen >/dev/null 2>err.txt
check "generate on messages" test "$(wc -l <completions.jsonl)" -eq 48
# the reference rendering: Python's Jinja2 as transformers runs the template
head -3 prompts_chat.jsonl | while read -r rec; do
    id=$(jq -r .id <<<"$rec")
    jq -c .messages <<<"$rec" >"msg_$id.json"
    printf '%s\t%s\t1\t%s\n' "$PWD/tok/tokenizer_config.json" "$PWD/msg_$id.json" "$PWD/ref_$id.txt"
done >jobs.tsv
"$PY" "$SRC/chat_template_ref.py" jobs.tsv
same=0
for f in ref_*.txt; do
    id=${f#ref_}; id=${id%.txt}
    jq -j --arg id "$id" 'select(.prompt_id == $id) | .prompt' completions.jsonl >ours.txt
    cmp -s "$f" ours.txt && same=$((same + 1))
done
check "generate: the prompts are the template's rendering, as Jinja2 gives it (3 of 3)" \
    test "$same" -eq 3
p1=$(head -1 completions.jsonl | jq -j .prompt | "$R" tokenize --model sft)
check "the rendered prompt starts with <|im_start|> (id 400)" test "${p1%% *}" = 400
check "... and has two <|im_start|> and one <|im_end|>, each one id" \
    test "$(tr ' ' '\n' <<<"$p1" | grep -c -x 400) $(tr ' ' '\n' <<<"$p1" | grep -c -x 401)" = "2 1"
check "completions that ended did so at <|im_end|> (id 401, the eos_token SFT taught)" jq -e -s \
    '[.[].completions[] | select(.finish == "eot")] | length > 0 and all(.tokens[-1] == 401)' \
    completions.jsonl

"$R" annotate --completions completions.jsonl --out annotations.jsonl --seed 3 --simulate 3 \
    --overlap 3 >/dev/null 2>err.txt
check "annotate (simulated) on rendered prompts" test -s annotations.jsonl
"$R" aggregate --completions completions.jsonl --annotations annotations.jsonl \
    --out aggregated.jsonl --summary agreement.json >/dev/null 2>err.txt
check "aggregate" test -s aggregated.jsonl
"$R" pairs --completions completions.jsonl --aggregated aggregated.jsonl --out pairs.jsonl \
    >/dev/null 2>err.txt
check "pairs" test -s pairs.jsonl
"$R" train-rm --model sft --pairs pairs.jsonl --out rm --epochs 1 --seed 3 >rm.jsonl 2>err.txt
check "train-rm on a Qwen2 model with the tokenizer.json" test -s rm/model.safetensors

"$R" ppo --policy sft --rm rm --prompts prompts_chat.jsonl --out ppo --iterations 2 --batch 8 \
    --seed 3 --gold >ppo.jsonl 2>err.txt
check "ppo on messages prompts" test -s ppo/policy/model.safetensors
check "ppo: two iterations with finite rewards" test "$(jq -s '[.[] | select(.iteration != null)
    | .ppo.reward_mean // .ppo.score_mean | select(. != null and isinfinite | not)] | length' \
    ppo/metrics.jsonl)" -ge 2
"$R" eval-policy --policy ppo/policy --baseline sft --rm rm --prompts prompts_heldout_chat.jsonl \
    --samples 2 --seed 3 >eval.json 2>err.txt
check "eval-policy on messages prompts" jq -e '.win_rate >= 0 and .kl >= 0' eval.json

# a model without a chat template refuses messages with the reason
"$R" init-model --out plain --arch llama --layers 1 --heads 2 --dim 32 --inner 64 --vocab 400 \
    --ctx 64 --tokenizer bpe >/dev/null 2>&1
"$R" ppo --policy plain --rm rm --prompts prompts_chat.jsonl --out ppo2 --iterations 1 \
    --batch 8 >/dev/null 2>err.txt
check "messages without a chat template: refused" test $? -ne 0
check "... naming the file, the line and the missing template" \
    grep -q 'prompts_chat.jsonl:1.*chat template' err.txt
finish
