#!/usr/bin/env bash
# test_exact.sh - training and generation give the same bits on every machine: the same steps
# run under each setting that changes how the arithmetic is executed, and every result file is
# compared with cmp against the first run's:
#   - 1 and 2 threads (rlhf train-lm, rlhf train-rm, rlhf sft, rlhf sample; train-lm and sample
#     for a Llama-family model too);
#   - the AVX-512, AVX2 + FMA and portable C kernels (RLHF_SIMD; those this CPU runs);
#   - OPENBLAS_CORETYPE unset, Haswell and SkylakeX (where the CPU has AVX-512): the project's
#     products do not go through OpenBLAS, so its kernel choice changes nothing. This test sets
#     the variable on purpose, to exercise both of OpenBLAS's kernels;
#   - and PPO (rlhf ppo: rollout and reward workers, the learner) under the kernels and the
#     OpenBLAS core types, and its critic-free GRPO path at another temperature under the
#     portable kernel.
# The control: the "openblas" backend (RLHF_GEMM=openblas) is not held to this, and the test
# shows that with it the same training run differs between OpenBLAS's kernels where the CPU has
# both (the reason for the exact backend). Usage: test_exact.sh BIN_DIR
BIN=$(cd "${1:?usage: test_exact.sh BIN_DIR}" && pwd)
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1

tiny_ppo_setup 2 32 48
# the trainings on a model wide enough that every kernel runs on the thread team (LayerNorm,
# GELU and the products have thresholds) and the products have ragged edges
"$R" init-model --tokenizer tok --layers 2 --heads 4 --dim 136 --vocab 260 --ctx 64 --out wide >/dev/null
"$R" init-model --tokenizer tok --layers 2 --heads 4 --dim 136 --vocab 260 --ctx 64 \
    --scalar-head --seed 2 --out wide-val >/dev/null
"$R" tokenize --model tok <corpus.txt >tokens.txt
for i in $(seq 1 24); do
    echo "{\"prompt\":\"what is $i plus $i\",\"chosen\":\"it is $((2 * i)) thanks\",\"rejected\":\"apple please $i\"}"
done >pairs.jsonl
for i in $(seq 1 16); do
    echo "{\"prompt\":\"what is $i plus\",\"completion\":\" $((i + 1)) thanks\"}"
done >sft.jsonl
check "inputs made" test -s tokens.txt -a -s pairs.jsonl -a -f wide/model.safetensors

# train OUT [ENV...]: the in-process trainings and a sample under the environment given
train() {
    local out=$1
    shift
    mkdir -p "$out"
    env "$@" "$R" train-lm --model wide --tokens tokens.txt --out "$out/lm" --steps 6 --batch 8 \
        --seq 48 --log-every 1 --threads "${TH:-2}" >"$out/lm.log" 2>&1 &&
        env "$@" "$R" train-rm --model wide-val --pairs pairs.jsonl --out "$out/rm" --steps 6 \
            --batch 4 --threads "${TH:-2}" >"$out/rm.log" 2>&1 &&
        env "$@" "$R" sft --model wide --data sft.jsonl --out "$out/sft" --steps 6 --batch 4 \
            --threads "${TH:-2}" >"$out/sft.log" 2>&1 &&
        env "$@" "$R" sample --model "$out/sft" --prompt "what is 3 plus" --max-new-tokens 12 \
            --n 4 --temperature 1 --seed 5 --threads "${TH:-2}" >"$out/sample.txt" 2>"$out/sample.err"
}
same() { # same A B: every result of run B is run A's, byte for byte
    local f
    for f in lm/model.safetensors rm/model.safetensors rm/reward_stats.json sft/model.safetensors \
        sample.txt; do
        cmp -s "$1/$f" "$2/$f" || { echo "     $2/$f differs from $1/$f"; return 1; }
    done
}

TH=2 train base
check "the trainings and the sample run (2 threads, the default kernel)" \
    test -s base/lm/model.safetensors -a -s base/rm/model.safetensors -a -s base/sft/model.safetensors -a -s base/sample.txt
TH=1 train t1
check "1 thread = 2 threads" same base t1
simd_ok() { grep -q "$1" /proc/cpuinfo; }
for k in avx2 c; do
    TH=2 train "k-$k" RLHF_SIMD=$k
    check "the $k kernel = the default kernel" same base "k-$k"
done
if simd_ok avx512f; then
    TH=2 train k-avx512 RLHF_SIMD=avx512f
    check "the avx512f kernel = the default kernel" same base k-avx512
fi
TH=2 train ob-unset -u OPENBLAS_CORETYPE
TH=2 train ob-haswell OPENBLAS_CORETYPE=Haswell
check "OPENBLAS_CORETYPE unset = Haswell" same ob-unset ob-haswell
check "... = the run of the environment's setting" same base ob-haswell
if simd_ok avx512f; then
    TH=2 train ob-skx OPENBLAS_CORETYPE=SkylakeX
    check "OPENBLAS_CORETYPE SkylakeX = Haswell" same ob-haswell ob-skx
    # the control: the same training on OpenBLAS's two kernels does not agree
    TH=2 train blas-haswell RLHF_GEMM=openblas OPENBLAS_CORETYPE=Haswell
    TH=2 train blas-skx RLHF_GEMM=openblas OPENBLAS_CORETYPE=SkylakeX
    check "control: with RLHF_GEMM=openblas, Haswell and SkylakeX differ" \
        eval '! cmp -s blas-haswell/lm/model.safetensors blas-skx/lm/model.safetensors'
fi

# the Llama family (a Qwen3-style model: grouped-query attention, q/k norms, rotary positions,
# SwiGLU, an untied head) through train-lm and sample, on a width where its kernels thread
"$R" init-model --tokenizer tok --arch qwen3 --layers 2 --heads 4 --kv-heads 2 --head-dim 34 \
    --dim 136 --inner 200 --vocab 260 --ctx 64 --out q3 >/dev/null
llama() { # llama OUT [ENV...]
    local out=$1
    shift
    mkdir -p "$out"
    env "$@" "$R" train-lm --model q3 --tokens tokens.txt --out "$out/lm" --steps 4 --batch 8 \
        --seq 48 --log-every 1 --threads "${TH:-2}" >"$out/lm.log" 2>&1 &&
        env "$@" "$R" sample --model "$out/lm" --prompt "what is 3 plus" --max-new-tokens 12 \
            --n 4 --temperature 1 --seed 5 --threads "${TH:-2}" >"$out/sample.txt" 2>"$out/sample.err"
}
llama_same() {
    cmp -s "$1/lm/model.safetensors" "$2/lm/model.safetensors" && cmp -s "$1/sample.txt" "$2/sample.txt"
}
TH=2 llama q-base
check "qwen3: train-lm and sample run" test -s q-base/lm/model.safetensors -a -s q-base/sample.txt
TH=1 llama q-t1
check "qwen3: 1 thread = 2 threads" llama_same q-base q-t1
for k in avx2 c; do
    TH=2 llama "q-$k" RLHF_SIMD=$k
    check "qwen3: the $k kernel = the default kernel" llama_same q-base "q-$k"
done

# PPO through the local master: rollouts, scoring and the learner's update
PPO=(--policy ../pol --rm ../val --prompts ../prompts.jsonl --batch 8 --samples 2 --max-new 8
    --rollout 1 --iterations 2 --set lr_policy=1e-2 --set lr_value=1e-3 --set kl_coef=0.01)
ppo() { # ppo DIR [ENV...]
    local out=$1
    shift
    mkdir -p "$out" && (cd "$out" && env "$@" "$R" ppo "${PPO[@]}" --out run >ppo.log 2>&1)
}
ppo p-base
check "PPO runs (2 iterations)" test -s p-base/run/policy/model.safetensors
ppo_same() {
    cmp -s p-base/run/policy/model.safetensors "$1/run/policy/model.safetensors" &&
        cmp -s <(jq -c '[.iteration, .ppo, .score_mean]' p-base/run/metrics.jsonl) \
            <(jq -c '[.iteration, .ppo, .score_mean]' "$1/run/metrics.jsonl")
}
ppo p-c RLHF_SIMD=c
check "PPO: the portable kernel = the default kernel (policy and metrics)" ppo_same p-c
ppo p-avx2 RLHF_SIMD=avx2
check "PPO: the avx2 kernel = the default kernel" ppo_same p-avx2
ppo p-ob -u OPENBLAS_CORETYPE
check "PPO: OPENBLAS_CORETYPE unset = the environment's setting" ppo_same p-ob
# the critic-free path: GRPO with the KL in the loss (k3), sequence-mean losses, temperature 0.7
PPO+=(--set adv_estimator=grpo --set kl_in=loss --set kl_estimator=k3 --set loss_agg=sequence
    --temperature 0.7)
ppo g-base
check "GRPO runs (2 iterations)" test -s g-base/run/policy/model.safetensors
ppo g-c RLHF_SIMD=c
check "GRPO: the portable kernel = the default kernel (policy and metrics)" \
    eval 'cmp -s g-base/run/policy/model.safetensors g-c/run/policy/model.safetensors &&
        cmp -s <(jq -c "[.iteration, .ppo]" g-base/run/metrics.jsonl) \
            <(jq -c "[.iteration, .ppo]" g-c/run/metrics.jsonl)'
finish
