#!/usr/bin/env bash
# test_torn_journal.sh - the master killed 50 times in the middle of a journal write: a run of
# two PPO-kind stages on a tiny model, ppo (12 iterations) then grpo (40; each stage with its
# own jobs, metrics and journal records, and the crashes falling in both), its local cluster started with RLHF_JOURNAL_CRASH_AFTER=LO-HI
# (each master process tears the frame that reaches its own random byte count, then SIGKILLs
# itself; journal.h) and RLHF_JOURNAL_CRASH_BUDGET (50 crashes, then the hook is off). The
# supervisor restarts the master each time; every start must replay the journal, cutting the
# torn tail, and never find corruption; the run succeeds with metrics and policy identical to an
# undisturbed run's. Usage: test_torn_journal.sh BIN_DIR
BIN=$(cd "${1:?usage: test_torn_journal.sh BIN_DIR}" && pwd)
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1
CRASHES=50

tiny_ppo_setup 1 16 32
# token 104 ("h") is common: a reward that moves, so that the runs' figures are worth comparing
cat >ppo.yaml <<'Y'
run_dir: run
seed: 3
stages: [ppo, grpo]
ppo: {policy: ../pol, rm: ../val, prompts: ../prompts.jsonl, reward_count_token: 104,
      iterations: 12, batch: 8, max_new: 8, prompts_per_job: 4, epochs: 1, lr_policy: 0.01}
grpo: {policy: ../pol, rm: ../val, prompts: ../prompts.jsonl, reward_count_token: 104,
       reward_program: "", iterations: 40, batch: 4, max_new: 8, prompts_per_job: 4,
       epochs: 1, lr_policy: 0.01}
Y
mkdir calm torn
cp ppo.yaml calm/ && cp ppo.yaml torn/

# --- the undisturbed run
(cd calm && "$R" run ppo.yaml >run.out 2>run.err)
check "the undisturbed run succeeds" grep -q "all stages done" calm/run.err
"$R" down --data-dir calm >/dev/null 2>&1

# --- the same run, its master torn 50 times, and its journal compacted along the way (a
# snapshot past 64 KiB of tail: replay starts from snapshots as well as from a torn tail)
echo "$CRASHES" >torn/budget
printf 'master:\n  journal_compact_bytes: 65536\n' >torn/master.yaml
t0=$(date +%s)
(cd torn && RLHF_JOURNAL_CRASH_AFTER=1-8000 RLHF_JOURNAL_CRASH_BUDGET="$PWD/budget" \
    timeout 200 "$R" run ppo.yaml >run.out 2>run.err)
rc=$?
echo "torn run: $(($(date +%s) - t0)) s"
C=torn/.cluster
check "the torn run exits 0" test "$rc" -eq 0
check "... with every stage done" grep -q "all stages done" torn/run.err
check "$CRASHES torn writes happened (the budget is spent)" test "$(cat torn/budget)" -eq 0
check "... each a SIGKILL of the master, restarted by the supervisor" \
    test "$(grep -c 'master exited (status 9)' $C/local.log)" -eq "$CRASHES"
check "... each restarted at once (it came up before it died)" \
    test "$(grep -c 'master exited (status 9): restarting in 200 ms' $C/local.log)" -eq "$CRASHES"
starts=$(grep -c "records replayed" $C/master.log)
check "every master start replayed its journal ($starts starts)" test "$starts" -eq $((CRASHES + 1))
cut=$(grep "records replayed" $C/master.log | grep -vc ", 0 torn bytes cut")
check "every restart cut a torn tail ($cut of $CRASHES)" test "$cut" -eq "$CRASHES"
check "never a corrupt journal" bash -c "! grep -Eq 'not the last segment|bad file header|is missing|bad end marker|journal.*(corrupt|failed)' $C/master.log"
check "the run never failed" bash -c "! grep -qi 'failed' torn/run/run.log"
check "the run succeeded" jq -e -s '.[0].state == "succeeded"' <("$R" status run --json --data-dir torn)

# --- same outputs, stage by stage
for st in ppo:12 grpo:40; do
    n=${st#*:} st=${st%:*}
    check "$st: $n iterations, each once" \
        jq -e -s "[.[].iteration] == [range(0; $n)]" torn/run/$st/metrics.jsonl
    check "$st: the reward moved (the comparison means something)" \
        jq -e -s '[.[].ppo.score_mean] | max > min' calm/run/$st/metrics.jsonl
    check "$st: metrics identical to the undisturbed run's (timings aside)" \
        cmp -s <(jq -c '[.iteration, .policy_version, .ppo]' calm/run/$st/metrics.jsonl) \
        <(jq -c '[.iteration, .policy_version, .ppo]' torn/run/$st/metrics.jsonl)
    check "$st: policy bit-identical to the undisturbed run's" \
        cmp -s calm/run/$st/policy/model.safetensors torn/run/$st/policy/model.safetensors
done
check "grpo ran as GRPO: 4 samples of each of 4 prompts" \
    jq -e -s 'all(.[]; .rollouts == 16)' torn/run/grpo/metrics.jsonl
check "grpo is a config of its own (settings for GRPO by default)" \
    jq -e '."grpo.adv_estimator" == "grpo" and ."grpo.samples" == "4"' torn/run/config.json
# the master killed while grpo ran, and resumed it where its journal records said
mid=$(grep -Eo "at stage 2/2 \([0-9]+ iterations of grpo committed" $C/master.log |
    sed -E 's/.*\(([0-9]+) .*/\1/' | awk '$1 > 0 && $1 < 40' | wc -l)
check "masters restarted in the middle of the grpo stage ($mid)" test "$mid" -ge 1
check "the journal opens clean afterwards" "$BIN/rlhf-master" --dump-results $C
check "the journal was compacted along the way" grep -q "journal compacted" $C/master.log
check "... and masters started from a snapshot" \
    bash -c "grep 'records replayed' $C/master.log | grep -vq '(0 from the snapshot)'"
finish
