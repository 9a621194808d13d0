#!/usr/bin/env bash
# test_chaos.sh - a PPO run (`rlhf run` of a config with stages: [ppo], on a tiny model with a
# constructed reward) survives chaos: while it runs, a seeded schedule SIGKILLs a random process
# of its local cluster every 1-3 s - the master, the learner, a rollout or reward worker, the
# supervisor (the whole cluster dies with it) and the `rlhf run` client itself, which the test
# starts again whenever it is dead. Before that, the supervisor alone: the client, left running,
# starts a new cluster and follows the run there. Once the kills stop, the run completes, and it
# is the undisturbed run's: the same final policy, byte for byte; the same metrics but for
# timings; every iteration exactly once, in order. Nothing of either cluster is left after
# `rlhf down`. Prints the schedule, the recovery times after the master and supervisor kills and
# both runs' wall times.
# Usage: test_chaos.sh BIN_DIR (CHAOS_SEED=N for another schedule, KEEP=1 to keep the files,
# CHAOS_OVERLAP=one_step_off for the PPO loop with overlap, CHAOS_ITERS and CHAOS_KILLS for a
# shorter or longer run: 120 iterations and 24 kills by default)
BIN=$(cd "${1:?usage: test_chaos.sh BIN_DIR}" && pwd)
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1

SEED=${CHAOS_SEED:-20261202}
OVERLAP=${CHAOS_OVERLAP:-off}
ITERS=${CHAOS_ITERS:-120}
KILLS=${CHAOS_KILLS:-24}
KINDS=(master learner rollout reward supervisor client)
echo "chaos seed $SEED ($KILLS kills, $ITERS iterations, overlap=$OVERLAP; CHAOS_SEED=$SEED to repeat)"

tiny_ppo_setup 2 32 48
cat >chaos.yaml <<Y
seed: 7
stages: [ppo]
ppo: {policy: $W/pol, rm: $W/val, prompts: $W/prompts.jsonl, reward_count_token: 97,
      iterations: $ITERS, batch: 64, samples: 2, max_new: 24, prompts_per_job: 4,
      lr_policy: 0.01, lr_value: 0.001, kl_coef: 0.01, overlap: $OVERLAP}
Y
check "tiny policy and value model" test -f pol/model.safetensors -a -f val/model.safetensors

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# --- the undisturbed run
REF=$W/ref CHA=$W/cha
t0=$(now_ms)
"$R" run chaos.yaml --set run_dir="$REF/run" >ref.out 2>ref.err
check "the undisturbed run succeeds" test $? -eq 0
ref_ms=$(($(now_ms) - t0))

# --- the chaos run
CL=$CHA/.cluster
SEEN=$W/pids.seen
: >"$SEEN"
# every pid the cluster's local.json ever names, for the check that none is left
(while :; do
    jq -r '[.supervisor_pid, .master_pid] + .worker_pids | .[]' "$CL/local.json" 2>/dev/null
    sleep 0.1
done >>"$SEEN") &
SAMPLER=$!
PIDS+=("$SAMPLER")

NCLIENT=0 CLIENT=0 CLIENT_RC=
start_client() {
    NCLIENT=$((NCLIENT + 1))
    "$R" run chaos.yaml --set run_dir="$CHA/run" >>cha.out 2>"cha-$NCLIENT.err" &
    CLIENT=$! CLIENT_RC=
    PIDS+=("$CLIENT")
    echo "$CLIENT" >>"$SEEN.clients"
}
# client_alive: 0 while the client runs; once it exited, its status is in CLIENT_RC
client_alive() {
    [ -z "$CLIENT_RC" ] || return 1
    kill -0 "$CLIENT" 2>/dev/null && return 0
    wait "$CLIENT" 2>/dev/null
    CLIENT_RC=$?
    return 1
}
# keep_client: a dead client is started again, unless the run succeeded (it exited 0)
keep_client() { client_alive || [ "$CLIENT_RC" -eq 0 ] || start_client; }

# pid_of KIND: the pid to kill, read from local.json now ("" while there is none alive)
pid_of() {
    local p
    case $1 in
    client) p=$CLIENT ;;
    master) p=$(jq -r .master_pid "$CL/local.json" 2>/dev/null) ;;
    supervisor) p=$(jq -r .supervisor_pid "$CL/local.json" 2>/dev/null) ;;
    *) # a worker of that role; one at random among the rollout workers
        local ps
        ps=($(jq -r --arg r "$1" '[.worker_pids, .worker_roles] | transpose | .[] |
            select(.[1] == $r) | .[0]' "$CL/local.json" 2>/dev/null))
        [ ${#ps[@]} -gt 0 ] && p=${ps[RANDOM % ${#ps[@]}]} ;;
    esac
    [ -n "${p:-}" ] && [ "$p" != null ] && grep -q rlhf "/proc/$p/cmdline" 2>/dev/null &&
        [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && echo "$p"
}

ms_of_day() { date +%H:%M:%S.%3N | awk -F'[:.]' '{ print (($1 * 60 + $2) * 60 + $3) * 1000 + $4 }'; }

# the schedule: every kind once, the rest drawn at random, shuffled; a pause of 1-3 s before each
RANDOM=$SEED
SCHED=("${KINDS[@]}")
while [ ${#SCHED[@]} -lt $KILLS ]; do SCHED+=("${KINDS[RANDOM % ${#KINDS[@]}]}"); done
for ((i = ${#SCHED[@]} - 1; i > 0; i--)); do
    j=$((RANDOM % (i + 1)))
    tmp=${SCHED[i]} SCHED[i]=${SCHED[j]} SCHED[j]=$tmp
done
DELAYS=()
for ((i = 0; i < KILLS; i++)); do DELAYS+=($((1000 + RANDOM % 2001))); done

t0=$(now_ms)
start_client
iters() { cat "$CHA/run/ppo/metrics.jsonl" 2>/dev/null | wc -l; }
started() { [ "$(iters)" -ge 2 ]; }
check "the chaos run starts its iterations" wait_for 60 started

KILLED=() MASTER_KILLS=() SUP_KILLS=()
# first, the supervisor alone: the client, left alone, finds its master silent, starts a new
# cluster (rlhf run's follow loop in local mode) and follows the run there
at=$(ms_of_day) pid=$(pid_of supervisor)
kill -KILL "$pid"
KILLED+=(supervisor) SUP_KILLS+=("$at")
echo "the supervisor killed (pid $pid) at iteration $(iters)"
followed() { grep -q "was restarted; following run on" cha-1.err; }
check "the client follows the run to the cluster it starts again" wait_for 30 followed
check "... the same client" client_alive
echo "schedule (seed $SEED):"
for ((i = 0; i < KILLS; i++)); do
    kind=${SCHED[i]}
    end=$(($(now_ms) + DELAYS[i]))
    while [ "$(now_ms)" -lt "$end" ]; do keep_client; sleep 0.05; done
    if ! client_alive && [ "$CLIENT_RC" -eq 0 ]; then
        echo "  the run finished after $i kills"
        break
    fi
    # the process to kill: waits (10 s at most) while its cluster is being restarted
    pid= deadline=$(($(now_ms) + 10000))
    while [ -z "$pid" ] && [ "$(now_ms)" -lt "$deadline" ]; do
        keep_client
        pid=$(pid_of "$kind")
        [ -n "$pid" ] || sleep 0.05
    done
    if [ -z "$pid" ]; then
        printf '  %2d  +%5d ms  %-10s  (none alive)\n' $((i + 1)) "${DELAYS[i]}" "$kind"
        continue
    fi
    at=$(ms_of_day)
    kill -KILL "$pid" 2>/dev/null
    KILLED+=("$kind")
    [ "$kind" = master ] && MASTER_KILLS+=("$at")
    [ "$kind" = supervisor ] && SUP_KILLS+=("$at")
    printf '  %2d  +%5d ms  %-10s pid %-7s at iteration %s\n' $((i + 1)) "${DELAYS[i]}" "$kind" \
        "$pid" "$(iters)"
done
echo "  ${#KILLED[@]} kills, $NCLIENT clients started"

# the kills are over: the client (started again if the last kill was its) follows the run to
# the end
keep_client
finished() { ! client_alive && { [ "$CLIENT_RC" -eq 0 ] || { start_client; false; }; }; }
check "the run completes after the kills" wait_for 150 finished
cha_ms=$(($(now_ms) - t0))
"$R" wait run --data-dir "$CHA" --timeout 30 >/dev/null 2>wait.err
check "rlhf wait: the run succeeded" test $? -eq 0

# nearly every scheduled kill finds its process (20 of 24: one may fall between its restarts)
check "at least $((KILLS * 5 / 6)) kills" test "${#KILLED[@]}" -ge $((KILLS * 5 / 6))
for k in "${KINDS[@]}"; do
    n=0
    for x in "${KILLED[@]}"; do [ "$x" = "$k" ] && n=$((n + 1)); done
    check "the $k was killed ($n times)" test "$n" -ge 1
done

RM=$REF/run/ppo CM=$CHA/run/ppo
check "every iteration once, in order" \
    jq -e -s "[.[].iteration] == [range(0; $ITERS)]" "$CM/metrics.jsonl"
check "... as in the undisturbed run" \
    jq -e -s "[.[].iteration] == [range(0; $ITERS)]" "$RM/metrics.jsonl"
# the schedule asked for: iteration i's rollouts from version i, or i - 1 (0 for the first two)
[ "$OVERLAP" = off ] && first=0 || first=-1
check "rollouts of iteration i from version i$([ "$OVERLAP" = off ] || echo ' - 1')" \
    jq -e -s "[.[].rollout_version] == [range(0; $ITERS) | . + $first | if . < 0 then 0 else . end]" \
        "$CM/metrics.jsonl"
# timings differ from run to run; every other figure must not
untimed() {
    jq -c -S 'walk(if type == "object" then with_entries(select(.key |
        (startswith("ms_") or . == "tokens_per_s" or . == "overhead_frac") | not)) else . end)' "$1"
}
check "the metrics equal the undisturbed run's (but for timings)" \
    cmp <(untimed "$RM/metrics.jsonl") <(untimed "$CM/metrics.jsonl")
check "the final policy is byte-identical to the undisturbed run's" \
    cmp "$RM/policy/model.safetensors" "$CM/policy/model.safetensors"

# recovery after each master kill: from the kill until the new master (after its "listening"
# line) dispatches a job or hears one done; the same after each supervisor kill (a new cluster)
recovery() { # recovery KILL_MS...: one line of ms per kill
    for k in "$@"; do
        awk -v k="$k" '{
            split($1, t, /[:.]/); ms = ((t[1] * 60 + t[2]) * 60 + t[3]) * 1000 + t[4]
            if (ms < k) next
            if (!up && / listening on /) up = 1
            else if (up && (/ -> / || / done by /)) { print ms - k; exit }
        }' "$CL/master.log"
    done
}
table() { # table NAME MS...
    local name=$1; shift
    [ $# -gt 0 ] || return 0
    printf '%s\n' "$@" | sort -n | awk -v n="$name" '{ v[NR] = $1 } END {
        printf "  %-22s %3d  %7d %7d %7d\n", n, NR, v[1], v[int((NR + 1) / 2)], v[NR] }'
}
mrec=($(recovery "${MASTER_KILLS[@]}"))
srec=($(recovery "${SUP_KILLS[@]}"))
echo "recovery (ms, kill -> jobs flow)  n      min  median     max"
table "master killed" "${mrec[@]}"
table "supervisor killed" "${srec[@]}"
check "a recovery time for every master kill" test "${#mrec[@]}" -eq "${#MASTER_KILLS[@]}"
echo "wall time: undisturbed run ${ref_ms} ms, chaos run ${cha_ms} ms"

# --- nothing left
kill "$SAMPLER" 2>/dev/null
wait "$SAMPLER" 2>/dev/null
"$R" down --data-dir "$REF" >/dev/null
"$R" down --data-dir "$CHA" >/dev/null
jq -r '[.supervisor_pid, .master_pid] + .worker_pids | .[]' "$REF/.cluster/local.json" \
    >>"$SEEN" 2>/dev/null
cat "$SEEN.clients" >>"$SEEN"
sort -un "$SEEN" -o "$SEEN"
gone() {
    for p in $(cat "$SEEN"); do
        [ -d "/proc/$p" ] && grep -q rlhf "/proc/$p/cmdline" 2>/dev/null && return 1
    done
    ! pgrep -f "$REF" >/dev/null && ! pgrep -f "$CHA" >/dev/null
}
check "no process of either cluster is left ($(wc -l <"$SEEN") pids seen)" wait_for 15 gone
finish
