#!/usr/bin/env bash
# test_deploy_slurm.sh - deploy/slurm/rlhf.sbatch on a real Slurm cluster of one node, made by
# the test: a munge daemon with its own key and socket, slurmctld and slurmd with a slurm.conf
# of their own (this machine as the node, with its CPUs and memory; no cgroups: proctrack/
# linuxproc, task/none) on free ports, everything under the test's directory; nothing in /etc
# is read or written. Checks:
#   a. the placement the script computes for a job of three nodes (RLHF_DRY_RUN): master and
#      stage worker on the first, the learner alone on the second, reward and rollout workers
#      round-robin over the others, each node's CPUs split between its workers, and each
#      step advertising its node's address;
#   b. `sbatch --wait rlhf.sbatch CONFIG` runs a tiny PPO run to its end: exit 0, the run's
#      policy and metrics in the data directory, `stages/ppo.json`, every step's log (both
#      rollout workers generated), the keys made when the build has `rlhf keygen`;
#   c. at the end every step is gone (no process of the job left) and the node's scratch
#      directory removed; the master's journal and state stay in RLHF_DATA_DIR/.slurm-master;
#   d. the same job submitted again finds the run finished (the master replays its journal)
#      and exits 0 at once, running no iteration again;
#   e. a longer run: a rollout worker killed mid-run is started again by the script, then the job
#      is cancelled (scancel): every step stops, nothing is left; submitted again, the run goes
#      on from the master's journal to its last iteration;
#   f. a cluster of three nodes - network namespaces n1, n2, n3 on a bridge (tests/netns_lib.sh),
#      each with its own address, munged, slurmd and private local disk, slurmctld on n1, the
#      job's directory shared: `sbatch --nodes=3` places the steps across them (the learner on
#      n2, a rollout worker on n3, whose relay serves at n3's address), the run succeeds with
#      the policy of the one-node run, the learner's checkpoints on n2's disk, n3's models in
#      its cache. Left out (with a note) where namespaces cannot be made.
# The daemons are stopped (jobs cancelled first) whatever happens, and if the test itself is
# killed a watchdog does it. Needs root and the Slurm and munge packages (slurmctld, slurmd,
# slurm-client, munge); exit 77 otherwise. Usage: test_deploy_slurm.sh BIN_DIR
#   (KEEP=1 keeps the files)
BIN=$(cd "${1:?usage: test_deploy_slurm.sh BIN_DIR}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
SELF=$SRC/tests/$(basename "$0")

# procs_of DIR CONF: the processes whose working directory is DIR or below it, or whose
# environment has SLURM_CONF=CONF (a job's, a step's, a daemon's)
procs_of() {
    {
        find /proc -mindepth 2 -maxdepth 2 -name cwd \( -lname "$1" -o -lname "$1/*" \) 2>/dev/null
        grep -lzxF "SLURM_CONF=$2" /proc/[0-9]*/environ 2>/dev/null
    } | cut -d/ -f3 | sort -un
}

# --- teardown DIR: what the test started in DIR stopped (also the watchdog's entry point)
teardown() {
    local dir=$1 p t
    [ -f "$dir/slurm.conf" ] || return 0
    export SLURM_CONF=$dir/slurm.conf
    if [ -f "$dir/pids" ] && kill -0 "$(sed -n 's/^slurmctld //p' "$dir/pids")" 2>/dev/null; then
        for j in $(squeue -h -o %i 2>/dev/null); do scancel "$j" 2>/dev/null; done
        for t in $(seq 1 100); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
    # the daemons, slurmd first (its steps are gone), munged last
    for d in slurmd slurmctld munged; do
        p=$(sed -n "s/^$d //p" "$dir/pids" 2>/dev/null)
        [ -n "$p" ] && kill -TERM "$p" 2>/dev/null
        for t in $(seq 1 50); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        [ -n "$p" ] && kill -KILL "$p" 2>/dev/null
    done
    # anything else of the jobs (slurmstepd, the workers): cwd under DIR or SLURM_CONF in DIR
    local pid
    for _ in 1 2 3; do
        for pid in $(procs_of "$dir" "$dir/slurm.conf"); do
            [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ] || kill -KILL "$pid" 2>/dev/null
        done
        sleep 0.2
    done
}
if [ "${1:-}" = --teardown ]; then # --teardown DIR OWNER_PID: the watchdog
    while kill -0 "$3" 2>/dev/null; do sleep 1; done
    teardown "$2"
    [ -n "${KEEP:-}" ] || rm -rf "$2"
    exit 0
fi

skip() {
    echo "SKIP: $*"
    exit 77
}
[ "$(id -u)" -eq 0 ] || skip "the Slurm daemons need root"
for c in munged mungekey slurmctld slurmd sbatch srun squeue scancel scontrol sinfo; do
    command -v "$c" >/dev/null 2>&1 ||
        skip "no $c (apt-get install slurmctld slurmd slurm-client munge; deploy/bootstrap.sh does)"
done

source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1
trap 'teardown "$W"; cleanup' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# the watchdog: tears down if this shell dies without doing it (ctest's SIGKILL at its timeout)
if command -v setsid >/dev/null; then
    (cd / && exec setsid bash "$SELF" --teardown "$W" $$ </dev/null >/dev/null 2>&1 &)
fi
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)

# free_port: a TCP port no socket uses, in any state, and that no earlier call gave. Below the
# kernel's ephemeral range: every other test binds ports of the kernel's choosing and every
# outgoing connection takes one from that range, so a port there that is free now may be taken
# before the daemon binds it (CI once saw slurmd's "Address already in use" that way)
EPH_LO=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null)
[ "${EPH_LO:-0}" -gt 12000 ] || EPH_LO=32768
USED=" "
free_port() {
    local p
    while :; do
        p=$((10000 + RANDOM % (EPH_LO - 10000)))
        case $USED in *" $p "*) continue ;; esac
        [ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ] && break
    done
    USED="$USED$p "
    echo "$p"
}

# --- munge: a key and a socket of the test's own
chmod 711 "$W" # munged wants every directory above its socket searchable
mkdir -m 700 munge
mungekey -c -k munge/munge.key || skip "mungekey cannot make a key"
munged -F --key-file="$W/munge/munge.key" --socket="$W/munge.socket" \
    --pid-file="$W/munge/munged.pid" --log-file="$W/munge/munged.log" \
    --seed-file="$W/munge/munged.seed" >munged.out 2>&1 &
echo "munged $!" >>pids
PIDS+=("$!")
munge_ok() { munge -n -S "$W/munge.socket" | unmunge -S "$W/munge.socket"; }
check "munged runs with the test's key and socket" wait_for 10 munge_ok

# --- slurm.conf: this machine as the one node, the daemons on free ports
NODE=$(hostname -s)
HW=$(slurmd -C 2>/dev/null | head -n 1)
hw() { echo "$HW" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
CPUS=$(hw CPUs)
[ -n "$CPUS" ] || CPUS=$(nproc)
MEM=$(hw RealMemory)
mkdir -p state spool job
cat >slurm.conf <<EOF
ClusterName=rlhftest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$W/munge.socket
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd.pid
SlurmctldLogFile=$W/slurmctld.log
SlurmdLogFile=$W/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=4
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Boards=$(hw Boards) SocketsPerBoard=$(hw SocketsPerBoard) CoresPerSocket=$(hw CoresPerSocket) ThreadsPerCore=$(hw ThreadsPerCore) RealMemory=${MEM:-1} State=UNKNOWN
PartitionName=rlhf Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$W/slurm.conf
slurmctld -D -f "$SLURM_CONF" >slurmctld.out 2>&1 &
echo "slurmctld $!" >>pids
PIDS+=("$!")
slurmd -D -f "$SLURM_CONF" >slurmd.out 2>&1 &
echo "slurmd $!" >>pids
PIDS+=("$!")
node_idle() { [ "$(sinfo -h -n "$NODE" -o %t 2>/dev/null)" = idle ]; }
if ! wait_for 30 node_idle; then
    bad "the node is idle in sinfo (state: $(sinfo -h -o %t 2>&1))"
    for f in slurmctld.out slurmd.out slurmctld.log slurmd.log munge/munged.log; do
        [ -f "$f" ] && echo "--- $f" && tail -n 20 "$f"
    done
    finish
    exit
fi
ok "slurmctld and slurmd up, node $NODE idle ($CPUS CPUs, ${MEM:-?} MB) in $(($(now_ms) - T0)) ms"

# --- a. the placement on three nodes (no job: the script's dry run)
dry() {
    (cd dry && exec env SLURM_JOB_ID=1 SLURM_JOB_NODELIST='n[1-3]' SLURM_JOB_CPUS_PER_NODE='8(x2),4' \
        RLHF_BIN="$BIN" RLHF_SCRATCH=/local/rlhf RLHF_DRY_RUN=1 "$@" \
        bash "$SRC/deploy/slurm/rlhf.sbatch" any.yaml 2>&1)
}
mkdir -p dry
dry RLHF_ROLLOUT=3 RLHF_REWARD=1 >dry.out
step_on() { grep -q "^rlhf.sbatch: step $1 on $2: " dry.out; }
placed() {
    step_on master n1 && step_on stage n1 && step_on learner n2 && step_on reward-1 n1 &&
        step_on rollout-1 n3 && step_on rollout-2 n1 && step_on rollout-3 n3
}
check "a. three nodes: master, stage on n1; learner on n2; reward, rollouts round-robin on n1, n3" placed
# n1: reward-1 and rollout-2 share 8 CPUs; n2: the learner has 8; n3: two rollouts share 4
threads() { grep "^rlhf.sbatch: step $1 on " dry.out | grep -q -- "--threads $2 "; }
check "a. threads: each node's CPUs split between its workers (4, 8, 2)" \
    eval 'threads reward-1 4 && threads rollout-2 4 && threads learner 8 && threads rollout-1 2'
check "a. workers dial the master at n1's address and advertise their own" \
    eval 'grep "step rollout-1 on" dry.out | grep -q -- "--master tcp://n1:5555 .*--advertise n3"'
check "a. the learner keeps its checkpoints under the node's scratch directory" \
    eval 'grep "step learner on" dry.out | grep -q -- "--ckpt-root /local/rlhf/ckpt"'
HAVE_KEYS=0
"$R" keygen --help >/dev/null 2>&1 && HAVE_KEYS=1
if [ $HAVE_KEYS = 1 ]; then
    check "a. keys: the master gets --keys, each worker its role's key" \
        eval 'grep "step master on" dry.out | grep -q -- "--keys " &&
            grep "step learner on" dry.out | grep -q -- "--key .*/learner.key"'
else
    check "a. no key options (this build has no rlhf keygen)" eval '! grep -q -- "--key" dry.out'
fi

# --- b. the run, as a batch job
mkdir -p job/runs
(cd job/runs && mkdir inputs && cd inputs && tiny_ppo_setup 1 16 48)
ITERS=4
cat >job/tiny.yaml <<Y
seed: 3
run_dir: runs/tiny
stages: [ppo]
ppo: {policy: inputs/pol, rm: inputs/val, prompts: inputs/prompts.jsonl, iterations: $ITERS,
      batch: 8, samples: 2, max_new: 8, prompts_per_job: 2, lr_policy: 0.01, kl_coef: 0.01}
Y
MPORT=$(free_port)
submit() { # submit LOG: the job, waited for; its exit status
    # (the keys of the job's own making: none from the test's environment)
    (cd job && exec env -u RLHF_KEYS timeout 150 sbatch --wait --output="$W/job/$1" \
        --export="ALL,RLHF_BIN=$BIN,RLHF_PORT=$MPORT,RLHF_SCRATCH=$W/scratch,RLHF_STOP_S=10" \
        "$SRC/deploy/slurm/rlhf.sbatch" tiny.yaml) >>sbatch.out 2>&1 &
    local p=$!
    PIDS+=("$p")
    wait "$p"
}
t0=$(now_ms)
submit job1.out
rc=$?
JOB_MS=$(($(now_ms) - t0))
check "b. sbatch --wait rlhf.sbatch tiny.yaml: exit 0 (got $rc, $JOB_MS ms)" test $rc -eq 0
RUN=job/runs/tiny
check "b. the run's policy and metrics ($ITERS iterations) in the data directory" \
    eval "test -s $RUN/ppo/policy/model.safetensors && test \$(wc -l <$RUN/ppo/metrics.jsonl) -eq $ITERS"
check "b. stages/ppo.json written" test -s "$RUN/stages/ppo.json"
LOGS=$(ls -d job/runs/.slurm-master/job-* 2>/dev/null | head -n 1)
logs_all() {
    for s in master stage learner reward-1 rollout-1 rollout-2; do test -s "$LOGS/$s.log" || return 1; done
}
check "b. a log per step in ${LOGS#"$W/"}" logs_all
gen() { grep -c 'runs with weights version' "$LOGS/$1.log" 2>/dev/null || echo 0; }
check "b. both rollout workers generated ($(gen rollout-1), $(gen rollout-2) jobs)" \
    test "$(gen rollout-1)" -gt 0 -a "$(gen rollout-2)" -gt 0
check "b. the job's output has the run's log and the exit" \
    eval 'grep -q "rlhf run exited with 0" job/job1.out'
if [ $HAVE_KEYS = 1 ]; then
    check "b. the keys were made (rlhf keygen) in the job's directory, mode 0600, and used" \
        eval '[ "$(stat -c %a job/rlhf-keys/master.key)" = 600 ] &&
            grep -q -- "--keys $W/job/rlhf-keys" job/job1.out'
fi

# --- c. nothing left
left() { # processes of the jobs still alive, but the daemons and their helpers (slurmscriptd)
    local pid ppid out='' daemons
    daemons=" $(awk '{ print $2 }' pids | tr '\n' ' ')"
    for pid in $(procs_of "$W/job" "$W/slurm.conf"); do
        ppid=$(awk '$1 == "PPid:" { print $2 }' "/proc/$pid/status" 2>/dev/null)
        case $daemons in *" $pid "* | *" $ppid "*) continue ;; esac
        [ "$pid" = "$$" ] || [ -z "$ppid" ] || out="$out $pid:$(cat "/proc/$pid/comm" 2>/dev/null)"
    done
    echo "$out"
}
no_left() { [ -z "$(left)" ]; }
wait_for 10 no_left
check "c. no process of the job left ($(left))" no_left
check "c. no step of the job in squeue" eval '[ -z "$(squeue -h -s -o %i)" ]'
check "c. the node's scratch directory removed" test ! -e scratch
check "c. the master's journal kept in the data directory" test -d job/runs/.slurm-master/journal

# --- d. submitted again: the master replays its journal, the run is finished
t0=$(now_ms)
submit job2.out
rc=$?
check "d. the same job again: exit 0 (got $rc, $(($(now_ms) - t0)) ms)" test $rc -eq 0
check "d. no iteration ran again" eval "test \$(wc -l <$RUN/ppo/metrics.jsonl) -eq $ITERS"
wait_for 10 no_left
check "d. again nothing left ($(left))" no_left

# --- f. three nodes: network namespaces as hosts n1, n2, n3 (tests/netns_lib.sh), each with its
# own address, munged and slurmd (slurmctld on n1) and a private directory as its local disk;
# the job's directory is shared, as a cluster's shared file system is
multi_node() {
    local h c conf=$W/mn/slurm.conf
    for c in ip tc nsenter unshare mountpoint setsid; do
        command -v "$c" >/dev/null || {
            echo "f. left out: no $c (apt-get install iproute2 util-linux)"
            return 0
        }
    done
    source "$(dirname "$SELF")/netns_lib.sh"
    [ -n "${KEEP:-}" ] && NS_KEEP=$W/hosts
    ns_setup slurm # exit 77 if this machine cannot make namespaces
    # the namespaces' processes go with the test, even if it is killed (this watchdog is not a
    # process of the jobs: no SLURM_CONF, cwd /)
    (cd / && exec env -u SLURM_CONF setsid bash -c 'while kill -0 "$0" 2>/dev/null; do sleep 1; done
        NS_BASE=$1 && source "$2" && _ns_remove "$3"' $$ "$NS_BASE" \
        "$(dirname "$SELF")/netns_lib.sh" "$NS_ID" </dev/null >/dev/null 2>&1 &)
    ns_host_add n1 10.79.0.1
    ns_host_add n2 10.79.0.2
    ns_host_add n3 10.79.0.3
    mkdir -p mn shared/runs
    {
        echo "ClusterName=rlhfmulti"
        # slurmctld runs where its host name is SlurmctldHost's (every namespace has this
        # machine's), at n1's address
        echo "SlurmctldHost=$NODE(10.79.0.1)"
        # every host's own files under its own $NSROOT; the rest as on one node
        sed -n '/^SlurmUser/,/^MpiDefault/p' slurm.conf | sed "s|$W/|$NSROOT/|"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core"
        echo "ReturnToService=2"
        echo "KillWait=5"
        echo "MinJobAge=4"
        for h in 1 2 3; do echo "NodeName=n$h NodeAddr=10.79.0.$h CPUs=$CPUS RealMemory=1000"; done
        echo "PartitionName=rlhf Nodes=n[1-3] Default=YES MaxTime=INFINITE State=UP"
    } >"$conf"
    for h in n1 n2 n3; do
        ns_spawn "$h" munged.out munged -F --key-file="$W/munge/munge.key" \
            --socket="$NSROOT/munge.socket" --pid-file="$NSROOT/munged.pid" \
            --log-file="$NSROOT/munged.log" --seed-file="$NSROOT/munged.seed"
    done
    ns_exec n1 mkdir -p state
    for h in n1 n2 n3; do ns_exec "$h" mkdir -p spool; done
    ns_spawn n1 slurmctld.out slurmctld -D -f "$conf"
    for h in n1 n2 n3; do ns_spawn "$h" slurmd.out slurmd -D -N "$h" -f "$conf"; done
    all_idle() { [ "$(ns_exec n1 env SLURM_CONF="$conf" sinfo -h -o '%D %t')" = "3 idle" ]; }
    if ! wait_for 30 all_idle; then
        bad "f. n1, n2, n3 idle in sinfo: $(ns_exec n1 env SLURM_CONF="$conf" sinfo -h 2>&1)"
        ns_tails 20
        return 1
    fi
    ok "f. three nodes n1, n2, n3 (10.79.0.1-3) idle"
    cp -r job/runs/inputs shared/runs/
    cp job/tiny.yaml shared/
    local t0 rc
    t0=$(now_ms)
    ns_exec n1 env -u RLHF_KEYS SLURM_CONF="$conf" timeout 150 sbatch --wait --nodes=3 --chdir="$W/shared" \
        --output="$W/shared/job.out" --export="ALL,SLURM_CONF=$conf,RLHF_BIN=$BIN,RLHF_SCRATCH=$NSROOT/scratch,RLHF_KEEP_SCRATCH=1,RLHF_STOP_S=10" \
        "$SRC/deploy/slurm/rlhf.sbatch" tiny.yaml >mn/sbatch.out 2>&1
    rc=$?
    check "f. sbatch --nodes=3 --wait rlhf.sbatch tiny.yaml: exit 0 (got $rc, $(($(now_ms) - t0)) ms)" \
        test $rc -eq 0
    on() { grep -q "^rlhf.sbatch: step $1 on $2: " shared/job.out; }
    check "f. master, stage, reward-1, rollout-2 on n1; learner on n2; rollout-1 on n3" eval \
        'on master n1 && on stage n1 && on reward-1 n1 && on rollout-2 n1 && on learner n2 &&
            on rollout-1 n3'
    ML=$(ls shared/runs/.slurm-master/job-*/master.log 2>/dev/null | head -n 1)
    ML=${ML%/master.log}
    check "f. the workers registered from their nodes (learner@n2, rollout-1@n3)" eval \
        'grep -q "worker learner@n2 registered" "$ML/master.log" &&
            grep -q "worker rollout-1@n3 registered" "$ML/master.log"'
    if [ $HAVE_KEYS = 1 ]; then
        check "f. keys made in the shared job directory, each node's workers read theirs there" \
            eval 'grep "step learner on n2" shared/job.out |
                grep -q -- "--key $W/shared/rlhf-keys/learner.key"'
    fi
    check "f. rollout-1 on n3 serves weights at n3's address, and generated" eval \
        'grep -q "weights relay: serving at tcp://10.79.0.3:" "$ML/rollout-1.log" &&
            grep -q "runs with weights version" "$ML/rollout-1.log"'
    check "f. the run's policy is the one-node run's, byte for byte" \
        cmp "$RUN/ppo/policy/model.safetensors" shared/runs/tiny/ppo/policy/model.safetensors
    check "f. n2's own disk holds the learner's checkpoints, n3's the models it fetched" eval \
        'ls -d "$(ns_dir n2)"/scratch/ckpt/* >/dev/null 2>&1 &&
            [ -n "$(ls -A "$(ns_dir n3)/scratch/cache" 2>/dev/null)" ] &&
            [ ! -e "$(ns_dir n3)/scratch/ckpt" ]'
    if [ "$fail" -ne 0 ]; then
        for f in mn/sbatch.out shared/job.out "$ML"/*.log; do
            [ -f "$f" ] && echo "--- $f" && tail -n 30 "$f"
        done
        ns_tails 20
    fi
}
# --- e. a worker killed, the job cancelled, the job submitted again
# as many iterations as take about 15 s here (from the first run's), so that the kill and the
# cancel fall inside the run on a machine of any speed
ms=$(jq -s 'map(.ms_iteration) | add / length | floor' "$RUN/ppo/metrics.jsonl" 2>/dev/null)
LONG=$((15000 / (${ms:-100} > 0 ? ${ms:-100} : 1)))
[ "$LONG" -ge 60 ] || LONG=60
[ "$LONG" -le 3000 ] || LONG=3000
sed -e "s/run_dir: runs\/tiny/run_dir: runs\/long/" -e "s/iterations: $ITERS/iterations: $LONG/" \
    job/tiny.yaml >job/long.yaml
lines() { wc -l 2>/dev/null <job/runs/long/ppo/metrics.jsonl || echo 0; }
lines_ge() { [ "$(lines)" -ge "$1" ]; }
JOB=$(cd job && env -u RLHF_KEYS sbatch --parsable --output="$W/job/job3.out" \
    --export="ALL,RLHF_BIN=$BIN,RLHF_PORT=$MPORT,RLHF_SCRATCH=$W/scratch,RLHF_STOP_S=10" \
    "$SRC/deploy/slurm/rlhf.sbatch" long.yaml 2>>sbatch.out)
check "e. a run of $LONG iterations submitted (job ${JOB:-none}) reaches iteration 3" wait_for 90 lines_ge 3
victim=$(pgrep -f -- "^$BIN/rlhf-worker --role rollout --id rollout-1@$NODE --master tcp://127.0.0.1:$MPORT")
[ -n "$victim" ] && kill -KILL "$victim"
restarted() {
    grep -q "step rollout-1 ended .* started again" job/job3.out &&
        [ "$(grep -c "worker rollout-1@$NODE registered" job/runs/.slurm-master/job-"$JOB"/master.log)" -ge 2 ]
}
check "e. rollout-1 killed (pid ${victim:-none}): the script starts its step again, it registers again" \
    wait_for 30 restarted
at=$(lines)
check "e. the run goes on ($at iterations)" wait_for 60 lines_ge $((at + 2))
t0=$(now_ms)
scancel "$JOB"
gone() { [ -z "$(squeue -h -j "$JOB" -o %i 2>/dev/null)" ] && no_left; }
wait_for 30 gone
check "e. scancel: the job and every process of it gone in $(($(now_ms) - t0)) ms ($(left))" gone
check "e. ... the batch script stopped the cluster on the signal" \
    grep -q "signal: stopping the cluster" job/job3.out
before=$(lines)
t0=$(now_ms)
(cd job && exec env -u RLHF_KEYS timeout 150 sbatch --wait --output="$W/job/job4.out" \
    --export="ALL,RLHF_BIN=$BIN,RLHF_PORT=$MPORT,RLHF_SCRATCH=$W/scratch,RLHF_STOP_S=10" \
    "$SRC/deploy/slurm/rlhf.sbatch" long.yaml) >>sbatch.out 2>&1
rc=$?
check "e. submitted again: exit 0 ($(($(now_ms) - t0)) ms), from iteration $before to $LONG" \
    test $rc -eq 0 -a "$(lines)" -eq "$LONG" -a "$before" -lt "$LONG"
wait_for 10 no_left
check "e. again nothing left ($(left))" no_left

teardown "$W" # the one-node cluster: done with
multi_node

if [ "$fail" -ne 0 ]; then
    for f in sbatch.out job/job1.out job/job2.out job/job3.out job/job4.out slurmctld.log slurmd.log "$LOGS"/*.log; do
        [ -f "$f" ] && echo "--- $f" && tail -n 30 "$f"
    done
fi
echo "test time: $(($(now_ms) - T0)) ms (the first job $JOB_MS ms)"
finish
