#!/usr/bin/env bash
# test_cluster.sh - the system on several hosts with nothing shared but the network: a master
# (and its stage worker), a learner, two rollout workers and a reward worker, each on its own
# host (tests/netns_lib.sh: network namespaces on a bridge, 1 Gbit/s links, a private directory
# per host), and a client on another host that submits a PPO run (`rlhf run CONFIG --master`).
# The inputs (policy, value model, prompts) are uploaded to the master's host only; the workers
# fetch the models over the wire into their caches, the learner keeps its checkpoints on its own
# disk, the run's artifacts are on the master's host. The reward worker talks to the master over
# IPv6. The run is fitted to the machine: as many iterations as take about 30 s on one machine
# (timed on a short run first), so that the 15 s cut falls in its middle. Checks:
#   the harness: each host sees its own files only, the links are limited to 1 Gbit/s (measured),
#     a link that is cut carries nothing and carries again when restored;
#   a. the run succeeds, and its final policy and metrics (but for timings) are those of the same
#      run on one machine (`rlhf run` with its local cluster, outside the namespaces);
#   b. a second run, during which rollout1's link is down for 15 s: the run goes on without it,
#      rollout1 generates again once its link is back, and the result is again byte-identical;
#   c. both rollout hosts generated; each worker's cache holds the models it needed; no host's
#      directory holds another host's files (each holds only what its role writes);
#   d. the reward worker's connection to the master is IPv6 (tcp://[fd77::1]:5555);
#   e. a third run, in which the learner is killed and its host's disk wiped (checkpoints and
#      cache) before it starts again: the master rolls the run back to iteration 0 and it
#      still ends byte-identical. During run b, rollout3 joins on an empty disk and generates.
# Every process logs to its host's logs/; on failure the tails are printed. Needs root (exit 77
# otherwise), and a build with the multi-host options (rlhf-master --advertise, rlhf-worker
# --cache-dir): without them only the harness checks run, and the test is skipped.
# Usage: test_cluster.sh BIN_DIR (KEEP=1 keeps the files, the hosts' in $W/hosts)
BIN=$(cd "${1:?usage: test_cluster.sh BIN_DIR}" && pwd)
source "$(dirname "$0")/runtime_lib.sh"
source "$(dirname "$0")/netns_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# bg_wait CMD...: CMD in the background, waited for - so that a signal to the test is handled at
# once, not when CMD ends; its exit status
bg_wait() {
    "$@" &
    local p=$!
    PIDS+=("$p")
    wait "$p"
}
HOSTS=(master learner rollout1 rollout2 reward rollout3 client)
# the workers split the cores as the local cluster's do (rlhf up: cores / 5 workers)
THREADS=$(($(nproc) / 5))
[ "$THREADS" -ge 1 ] || THREADS=1
MEP=tcp://10.77.0.1:5555
[ -n "${KEEP:-}" ] && NS_KEEP=$W/hosts

# --- the hosts
t0=$(now_ms)
NS_HIDE=("$W") # the test's own files: outside every host
ns_setup lan
ns_host_add master 10.77.0.1 fd77::1
ns_host_add learner 10.77.0.2 fd77::2
ns_host_add rollout1 10.77.0.3 fd77::3
ns_host_add rollout2 10.77.0.4 fd77::4
ns_host_add reward 10.77.0.5 fd77::5
ns_host_add rollout3 10.77.0.6 fd77::6 # joins the second run, on an empty disk
ns_host_add client 10.77.0.9 fd77::9
echo "hosts: ${HOSTS[*]} (prefix $NS_PFX) in $(($(now_ms) - t0)) ms"

for h in "${HOSTS[@]}"; do ns_exec "$h" sh -c "echo $h >.host && mkdir logs"; done
own_files() { # own_files HOST: the host sees its own files only, and none of the test's
    [ "$(ns_exec "$1" cat "$NSROOT/.host")" = "$1" ] &&
        [ "$(ns_exec "$1" ls -A "$NSROOT" | tr '\n' ' ')" = ".host logs " ] &&
        ! ns_exec "$1" test -e "$W/ref"
}
mkdir -p ref
n=0
for h in "${HOSTS[@]}"; do own_files "$h" && n=$((n + 1)); done
check "each host sees its own directory at \$NSROOT, no other host's, not the test's ($n of ${#HOSTS[@]})" \
    test "$n" -eq ${#HOSTS[@]}

free=$(ns_throughput master rollout1 10.77.0.3 32)
for h in "${HOSTS[@]}"; do ns_link_rate "$h" 1gbit; done
down=$(ns_throughput master rollout1 10.77.0.3 32)
up=$(ns_throughput rollout1 master 10.77.0.1 32)
echo "32 MiB master -> rollout1: ${free:-?} Mbit/s unlimited, ${down:-?} Mbit/s at 1gbit" \
    "(rollout1 -> master ${up:-?} Mbit/s)"
check "1 Gbit/s links: master -> rollout1 at most 1100 Mbit/s (${down:-none})" \
    test "${down:-0}" -gt 100 -a "${down:-9999}" -le 1100
check "... and rollout1 -> master (${up:-none})" test "${up:-0}" -gt 100 -a "${up:-9999}" -le 1100
v6=$(ns_throughput reward master fd77::1 8)
check "IPv6: reward -> master [fd77::1] (${v6:-none} Mbit/s)" test -n "$v6"
no_transfer() { ! ns_throughput "$@" 2>/dev/null; }
ns_link_down rollout2
check "a link that is down carries nothing" no_transfer rollout2 master 10.77.0.1 1
ns_link_up rollout2
check "... and carries again once up" ns_throughput rollout2 master 10.77.0.1 1

# the end: on failure the tails of every host's logs; then the cleanup, timed, and checked
the_end() {
    if [ "$fail" -ne 0 ]; then
        ns_tails 40
        for f in ref/.cluster/*.log; do [ -f "$f" ] && echo "--- $f" && tail -n 40 "$f"; done
    fi
    local pfx=$NS_PFX dir=$NS_DIR t0
    local pids=(${NS_PIDS[@]+"${NS_PIDS[@]}"})
    t0=$(now_ms)
    ns_cleanup
    echo "cleanup: $(($(now_ms) - t0)) ms"
    gone() {
        for p in ${pids[@]+"${pids[@]}"}; do ! kill -0 "$p" 2>/dev/null || return 1; done
        ! ip netns list | grep -q "^$pfx-" && ! findmnt -rn -o TARGET | grep -q "^$dir" &&
            [ ! -e "$dir" ]
    }
    check "cleanup leaves no process, namespace or mount" gone
}

# without the multi-host options the run cannot be set up: the harness checks above are all
if ! "$BIN/rlhf-worker" --help 2>&1 | grep -q -- --cache-dir ||
    ! "$BIN/rlhf-master" --help 2>&1 | grep -q -- --advertise; then
    the_end
    echo "SKIP: this build has no multi-host options (rlhf-master --advertise, rlhf-worker" \
        "--cache-dir): only the harness was checked"
    [ "$fail" -eq 0 ] && exit 77
    finish
    exit
fi

# --- the inputs, made outside and uploaded to the master's host; the same run on one machine
mkdir -p inputs
(cd inputs && tiny_ppo_setup 2 32 48)
check "tiny policy and value model" test -f inputs/pol/model.safetensors -a -f inputs/val/model.safetensors
# config ITERATIONS: the run's config; relative paths are from the master's data directory
# (remote) or from the directory rlhf run starts in (local)
config() {
    cat <<Y
seed: 7
run_dir: cl
stages: [ppo]
ppo: {policy: inputs/pol, rm: inputs/val, prompts: inputs/prompts.jsonl, iterations: $1,
      batch: 32, samples: 2, max_new: 24, prompts_per_job: 4, lr_policy: 0.01, lr_value: 0.001,
      kl_coef: 0.01}
Y
}
cp -r inputs ref/
# The run's length: the cut in b (15 s) must fall in the middle of the run on a machine of any
# speed, so the iterations are those of about 30 s, timed on a short run on one machine first
# (from its 8th iteration: the first completions are longer, until the policy learns to stop)
config 20 >ref/calib.yaml
(cd ref && exec "$R" run calib.yaml --name calib >../calib.log 2>&1) &
CAL=$!
PIDS+=("$CAL")
lines() { cat ref/calib/ppo/metrics.jsonl 2>/dev/null | wc -l; }
lines_ge() { [ "$(lines)" -ge "$1" ]; }
wait_for 60 lines_ge 8
t1=$(now_ms)
wait_for 60 lines_ge 20
iter_ms=$((($(now_ms) - t1) / 12))
wait "$CAL"
check "a short run on one machine: $iter_ms ms an iteration" test "$(lines)" -eq 20
# about 40 s a run: the 15 s cut starts at iteration 4 and must end well before the run does
ITERS=$((40000 / (iter_ms > 0 ? iter_ms : 1)))
[ "$ITERS" -ge 80 ] || ITERS=80
[ "$ITERS" -le 3000 ] || ITERS=3000
config "$ITERS" >cluster.yaml
cp cluster.yaml ref/
t0=$(now_ms)
bg_wait sh -c 'cd ref && exec "$0" run cluster.yaml >../ref-run.log 2>&1' "$R"
check "the run on one machine (local cluster, $ITERS iterations) succeeds" test $? -eq 0
ref_ms=$(($(now_ms) - t0))
# a run on the hosts that takes much longer than on one machine has failed
LIMIT=$((ref_ms * 5 / 1000 + 60))
"$R" down --data-dir ref >/dev/null 2>&1
REF=$W/ref/cl/ppo

# --- the keys (rlhf keygen, made by runtime_lib.sh in $W/keys): each host gets only those of its
# roles, the master its own and the list of the keys it admits; no host sees $W/keys
unset RLHF_KEYS
give_keys() { # give_keys HOST FILE...
    local h=$1 d
    shift
    d=$(ns_dir "$h")/keys
    mkdir -p "$d" && chmod 700 "$d"
    for f in "$@"; do cp -p "$W/keys/$f" "$d/"; done
}
give_keys master master.key authorized_keys http.token stage.key
give_keys learner learner.key
give_keys rollout1 rollout.key
give_keys rollout2 rollout.key
give_keys reward reward.key
give_keys client client.key
K=$NSROOT/keys

MD=$(ns_dir master)
mkdir -p "$MD/data"
cp -r inputs "$MD/data/"      # the upload: on the master's host only
cp cluster.yaml "$(ns_dir client)/"

# --- the cluster
ns_spawn master logs/master.log "$BIN/rlhf-master" --bind 'tcp://*:5555' --advertise 10.77.0.1 \
    --run-dir "$NSROOT/run" --data-dir "$NSROOT/data" --http-port 8080 --keys "$K"
check "the master listens on its host" ns_wait_listen master 5555 20
# worker HOST ROLE MASTER_ENDPOINT BIND_HOST ADVERTISE [ARGS...]: a worker on HOST, id HOST
# (the stage worker: "stage", on the master's host)
worker() {
    local host=$1 role=$2 ep=$3 bind=$4 adv=$5 id=$1
    shift 5
    [ "$role" = stage ] && id=stage
    ns_spawn "$host" "logs/$id.log" "$BIN/rlhf-worker" --role "$role" --id "$id" --master "$ep" \
        --bind-host "$bind" --advertise "$adv" --cache-dir "$NSROOT/cache" --threads "$THREADS" \
        --key "$K/$role.key" "$@"
}
worker master stage "$MEP" 0.0.0.0 10.77.0.1
learner() {
    worker learner learner "$MEP" 0.0.0.0 10.77.0.2 --run-dir "$NSROOT/learner" --ckpt-root "$NSROOT/ckpt"
    LPID=$NS_PID
}
learner
worker rollout1 rollout "$MEP" 0.0.0.0 10.77.0.3
worker rollout2 rollout "$MEP" 0.0.0.0 10.77.0.4
worker reward reward 'tcp://[fd77::1]:5555' 0.0.0.0 10.77.0.5 # the master over IPv6
# master_get PATH: the master's HTTP PATH with its bearer token (the key set's http.token, which
# its host was given)
master_get() {
    ns_exec master curl -sf --max-time 2 -H "Authorization: Bearer $(cat "$W/keys/http.token")" \
        "http://127.0.0.1:8080$1"
}
master_status() { master_get /status; }
registered() {
    master_status | jq -e '[.workers[].id] | sort == ["learner", "reward", "rollout1", "rollout2", "stage"]'
}
check "the five workers register from their hosts" wait_for 30 registered
# a worker whose key the master does not list (it knows the master's public key, no secret):
# made after the master started, on the client's host
cp -rp "$W/keys" "$W/other-keys"
"$R" keygen --dir "$W/other-keys" --name intruder --role rollout >/dev/null
give_keys client
cp -p "$W/other-keys/intruder.key" "$(ns_dir client)/keys/other.key"
ns_spawn client logs/intruder.log "$BIN/rlhf-worker" --role rollout --id intruder --master "$MEP" \
    --key "$K/other.key" --cache-dir "$NSROOT/logs/intruder-cache"
IPID=$NS_PID
refused() {
    [ "$(master_get /metrics |
        awk '$1 == "rlhf_auth_connections_total{result=\"refused\"}" { print $2 }')" -ge 1 ]
}
check "a worker with a key the master does not list is refused, and counted" wait_for 20 refused
intruder_out() { master_status >/dev/null && ! master_status | jq -e '.workers[] | select(.id == "intruder")' >/dev/null; }
check "... and never registers" intruder_out
kill -TERM "$IPID" 2>/dev/null
rm -f "$(ns_dir client)/keys/other.key"

# --- a. the run from the client's host
t0=$(now_ms)
ns_spawn client logs/run-plain.log timeout "$LIMIT" "$R" run cluster.yaml --master "$MEP" --name plain --key "$K/client.key"
wait "$NS_PID"
rc=$?
check "a. the run submitted from the client's host succeeds (exit $rc)" test $rc -eq 0
plain_ms=$(($(now_ms) - t0))
# timings differ from run to run; every other figure must not
untimed() {
    jq -c -S 'walk(if type == "object" then with_entries(select(.key |
        (startswith("ms_") or . == "tokens_per_s" or . == "overhead_frac") | not)) else . end)' "$1"
}
same_run() { # same_run DIR: the run's PPO outputs are the one-machine run's
    [ "$(wc -l <"$1/metrics.jsonl")" -eq "$ITERS" ] &&
        cmp "$REF/policy/model.safetensors" "$1/policy/model.safetensors" &&
        cmp <(untimed "$REF/metrics.jsonl") <(untimed "$1/metrics.jsonl")
}
check "... its final policy and metrics are the one-machine run's (byte for byte, but timings)" \
    same_run "$MD/data/plain/ppo"
gen_lines() { # gen_lines HOST: the GENERATE jobs in the log of the worker on HOST
    local c
    c=$(grep -c 'runs with weights version' "$(ns_dir "$1")/logs/$1.log" 2>/dev/null)
    echo "${c:-0}"
}
r1=$(gen_lines rollout1) r2=$(gen_lines rollout2)
check "c. both rollout hosts generated (GENERATE jobs: rollout1 $r1, rollout2 $r2)" \
    test "$r1" -gt 0 -a "$r2" -gt 0
# the weights relay: each version fetched by a rollout or reward worker named its upstream (the
# worker before it in the master's chain, on another host); the bytes that came from it
relayed() {
    cat "$(ns_dir rollout1)/logs/rollout1.log" "$(ns_dir rollout2)/logs/rollout2.log" \
        "$(ns_dir reward)/logs/reward.log" 2>/dev/null |
        sed -n 's/.* \([0-9][0-9]*\) bytes from relay tcp:\/\/\(10\.77\|\[fd77\).*/\1/p' |
        awk '{ s += $1 } END { printf "%d\n", s }'
}
rb=$(relayed)
check "c. weights versions moved host to host along the relay chain ($rb bytes from another worker)" \
    test "$rb" -gt 0
# d. while the workers are connected: the reward worker's connection to the master
v6conn() { ns_exec reward ss -Htn state established | grep -qF '[fd77::1]:5555'; }
check "d. the reward worker is connected to the master over IPv6 ([fd77::1]:5555)" v6conn
if [ $rc -ne 0 ]; then
    echo "the run with the cut is left out: the plain run failed"
    the_end
    finish
    exit
fi

# --- b. rollout1's link cut for 15 s in the middle of a run
iters() { cat "$MD/data/cut/ppo/metrics.jsonl" 2>/dev/null | wc -l; }
iters_ge() { [ "$(iters)" -ge "$1" ]; }
t0=$(now_ms)
ns_spawn client logs/run-cut.log timeout "$LIMIT" "$R" run cluster.yaml --master "$MEP" --name cut --key "$K/client.key"
CUT=$NS_PID
check "b. the second run starts its iterations" wait_for 60 iters_ge 3
# at the start of one of rollout1's jobs: the cut takes a job with it
n=$(gen_lines rollout1)
grew() { [ "$(gen_lines rollout1)" -gt "$n" ]; }
wait_for 10 grew
cut_iter=$(iters)
requeued() { grep -c 'requeued' "$MD/logs/master.log"; }
rq=$(requeued)
ns_link_down rollout1
cut_ms=$(now_ms)
# meanwhile another rollout worker joins, on a host with nothing on its disk
give_keys rollout3 rollout.key # its key: the only thing it brings
worker rollout3 rollout "$MEP" 0.0.0.0 10.77.0.6
client_gone() { ! kill -0 "$CUT" 2>/dev/null; }
wait_for 15 client_gone # the cut lasts 15 s (less only if the run ends, a failure below)
restore_iter=$(iters)
check "... rollout1 back after $(($(now_ms) - cut_ms)) ms" ns_link_up rollout1
echo "rollout1 cut off from iteration $cut_iter to iteration $restore_iter (of $ITERS);" \
    "jobs the master requeued meanwhile: $(($(requeued) - rq))"
check "... the run went on without rollout1" test "$restore_iter" -gt "$cut_iter"
check "... and was not over when rollout1 came back (else: more iterations)" \
    test "$restore_iter" -lt "$ITERS"
n=$(gen_lines rollout1) up_ms=$(now_ms)
check "... rollout1 generates again once its link is back" wait_for 120 grew
echo "rollout1 generated again $(($(now_ms) - up_ms)) ms after its link came back"
wait_for "$LIMIT" client_gone
wait "$CUT"
rc=$?
check "b. the run with the cut succeeds (exit $rc)" test $rc -eq 0
cut_run_ms=$(($(now_ms) - t0))
check "... and is still the one-machine run, byte for byte" same_run "$MD/data/cut/ppo"
r3=$(gen_lines rollout3)
check "... rollout3, started on an empty disk mid-run, joined it ($r3 GENERATE jobs)" test "$r3" -gt 0

# --- e. the learner's host loses its disk: the learner killed mid-run, its checkpoints and
# cache wiped, started again - it stands at iteration 0, the master rolls the run back and runs
# the lost iterations again, and the run still ends as on one machine
iters() { cat "$MD/data/wipe/ppo/metrics.jsonl" 2>/dev/null | wc -l; }
t0=$(now_ms)
ns_spawn client logs/run-wipe.log timeout "$LIMIT" "$R" run cluster.yaml --master "$MEP" --name wipe --key "$K/client.key"
WIPE=$NS_PID
check "e. the third run gets to iteration 10" wait_for 120 iters_ge 10
{ kill -KILL "$LPID" && wait "$LPID"; } 2>/dev/null
wiped_at=$(iters)
rm -rf "$(ns_dir learner)"/{ckpt,cache,learner}
learner
rolled() { grep -q 'wipe: ppo: resuming at iteration 0' "$MD/logs/master.log"; }
check "... the learner killed at iteration $wiped_at and its disk wiped: the run resumes at iteration 0" \
    wait_for 60 rolled
wait "$WIPE"
rc=$?
check "e. the run after the wiped learner succeeds (exit $rc)" test $rc -eq 0
wipe_ms=$(($(now_ms) - t0))
check "... and is still the one-machine run, byte for byte" same_run "$MD/data/wipe/ppo"

# --- c. where the files are
sha() { sha256sum "$1" | cut -d' ' -f1; }
POL=$(sha inputs/pol/model.safetensors) VAL=$(sha inputs/val/model.safetensors)
cached() { # cached HOST SHA...: the host's cache holds files with these contents
    local d s
    d=$(ns_dir "$1")/cache
    shift
    for s in "$@"; do
        find "$d" -type f -exec sha256sum {} + 2>/dev/null | grep -q "^$s " || return 1
    done
}
check "c. rollout1's cache holds the policy" cached rollout1 "$POL"
check "... rollout2's the policy" cached rollout2 "$POL"
check "... rollout3's (it started with none) the policy" cached rollout3 "$POL"
check "... the reward worker's the reference policy and the reward model" cached reward "$POL" "$VAL"
check "... the learner's the policy and the value model" cached learner "$POL" "$VAL"
has_files() { [ -n "$(find "$1" -type f 2>/dev/null | head -n 1)" ]; }
check "... the learner's checkpoints are on its own disk" has_files "$(ns_dir learner)/ckpt"
# each host holds what its role writes, nothing of another host's (the run's artifacts are the
# master's, the checkpoints the learner's, the config the client's)
only() { # only HOST NAME...: the host's directory has these top-level entries at most
    local h=$1 e extra=
    shift
    for e in $(ls -A "$(ns_dir "$h")"); do
        [[ " .host $* " == *" $e "* ]] || extra="$extra $e"
    done
    [ -z "$extra" ] || echo "$h has files of others:$extra" >&2
    [ -z "$extra" ]
}
check "... the master's host: its journal, data, stage cache, keys, logs" only master run data cache keys logs
check "... the learner's: its run directory, checkpoints, cache, key, logs" only learner learner ckpt cache keys logs
for h in rollout1 rollout2 reward rollout3; do check "... $h's: its cache, key and logs" only "$h" cache keys logs; done
check "... the client's: the config, key and logs" only client cluster.yaml keys logs

echo "wall time: setup above; run on one machine $ref_ms ms, on the hosts $plain_ms ms," \
    "with the cut $cut_run_ms ms, with the wiped learner $wipe_ms ms"

the_end
finish
