# netns_lib.sh - hosts on one machine for the multi-host tests (sourced): each host is a network
# namespace joined to a Linux bridge by a veth link, with its own mount namespace in which a
# private directory appears at the same path on every host; everything else (the build tree, the
# system) is the machine's, seen by every host as installed software. Needs root, ip, tc and ss
# (iproute2), nsenter, unshare and mountpoint (util-linux); python3 for ns_throughput. Usage:
#
#   source netns_lib.sh
#   NS_HIDE=("$W")                     # optional: paths hidden (an empty read-only tmpfs) on
#                                      # every host added after this
#   ns_setup lan                       # the switch; skips the test (exit 77) without root or
#                                      # namespaces; installs the cleanup trap
#   ns_host_add master 10.77.0.1 fd77::1
#   ns_host_add worker 10.77.0.2       # IPv4 /24 and IPv6 /64 unless a /PLEN is given
#   ns_link_rate worker 1gbit
#   cp -r inputs "$(ns_dir master)/"   # an upload: written from outside, seen by master only
#   ns_spawn master logs/m.log rlhf-master ...   # in the background; NS_PID is its pid
#   ns_spawn worker logs/w.log rlhf-worker --master tcp://10.77.0.1:5555 ...
#   ns_exec worker cat logs/w.log      # in the foreground, in the host's directory
#
# Functions:
#   ns_setup NET            the switch namespace with bridge br0; NET names the network. Picks
#                           this run's unique prefix (NS_PFX), reaps what runs killed with
#                           SIGKILL left behind, installs the trap (EXIT, INT, TERM) that runs
#                           ns_cleanup and then any EXIT trap set before (runtime_lib's cleanup)
#   ns_host_add NAME IP [IP6]
#                           host NAME (1-12 of [a-z0-9]): network namespace $NS_PFX-NAME with eth0
#                           (veth to the bridge, port v-NAME there), lo up, IP, optionally IP6
#                           (no duplicate address detection, kept across ns_link_down); its mount
#                           namespace where $NSROOT is the host's own directory, empty at first
#   ns_exec NAME CMD...     program CMD (not a shell function) in NAME's network and mount
#                           namespaces, in $NSROOT (the host's directory); in the foreground
#                           (ns_exec ... & works, but $! is then a shell waiting for CMD: use
#                           ns_spawn for a pid to signal)
#   ns_spawn NAME LOG CMD...
#                           CMD in the background with stdout and stderr appended to LOG (a
#                           path on the host, relative to $NSROOT; its directory is made);
#                           sets NS_PID and adds it to NS_PIDS
#   ns_dir NAME             the host's directory as seen from outside (every host sees its own
#                           at $NSROOT and no other host's)
#   ns_ip NAME / ns_ip6 NAME
#                           the host's addresses, without prefix length
#   ns_link_rate NAME RATE  tc tbf at RATE (tc units: 1gbit, 100mbit) on both ends of the host's
#                           link, so that what it sends and what it receives are limited
#   ns_link_down NAME / ns_link_up NAME
#                           both ends of the host's link down / up (a cut cable: TCP connections
#                           stall, nothing is reset); ns_link_up waits until the bridge forwards
#   ns_wait_listen NAME PORT [SECONDS]
#                           waits (10 s unless told) until a TCP socket listens on PORT on NAME
#   ns_throughput FROM TO ADDR MIB
#                           sends MIB MiB from host FROM to ADDR (an address of host TO) over
#                           TCP; prints the rate the receiver saw, in Mbit/s
#   ns_tails [LINES]        the last LINES (40) lines of every *.log file of every host
#   ns_cleanup              kills every process in the namespaces, deletes the namespaces (and
#                           with them the links), unmounts and removes the directories; only
#                           the shell that called ns_setup cleans up. NS_KEEP=DIR copies each
#                           host's directory to DIR/NAME first. The trap calls it.
#
# Variables: NSROOT, the path of every host's own directory (outside the hosts an empty
# directory); NS_HIDE (set before ns_host_add; paths outside $NS_BASE); NS_PFX, NS_DIR (below);
# NS_PIDS, NS_PID (ns_spawn); NS_KEEP (ns_cleanup); NS_BASE (default /run/rlhf-netns).
#
# Every name carries this run's prefix, NS_PFX (rlhfns + 4 hex digits, taken with mkdir in
# $NS_BASE, so that concurrent runs never collide), and the run's files live in NS_DIR
# ($NS_BASE/ID, a private tmpfs: the hosts' directories, the mount namespace files). A test killed
# with SIGKILL (a ctest timeout) cannot clean up: the next ns_setup finds its owner dead (pid and
# start time in $NS_BASE/ID.owner) and removes what it left.
NS_BASE=${NS_BASE:-/run/rlhf-netns}
NS_HOSTS=()
NS_HIDE=(${NS_HIDE[@]+"${NS_HIDE[@]}"})
NS_PIDS=()
NS_ID= NS_PFX= NS_DIR= NSROOT= NS_SW= NS_OWNER=

_ns_skip() {
    echo "SKIP: $*"
    exit 77
}
_ns_die() {
    echo "netns_lib: $*" >&2
    exit 1
}

# _ns_starttime PID: the process's start time (field 22 of /proc/PID/stat), "" if none
_ns_starttime() { awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null; }

# _ns_names ID: the network namespaces of run ID
_ns_names() { ip netns list 2>/dev/null | awk -v p="rlhfns$1-" 'index($1, p) == 1 { print $1 }'; }

# _ns_pids_of ID: every process in a namespace of run ID (network or mount)
_ns_pids_of() {
    local id=$1 n ids
    for n in $(_ns_names "$id"); do ip netns pids "$n" 2>/dev/null; done
    # the mount namespaces by device and inode (one stat for all of /proc)
    ids=$(stat -L -c '%d:%i' "$NS_BASE/$id"/ns/* 2>/dev/null)
    [ -n "$ids" ] || return 0
    stat -L -c '%d:%i %n' /proc/[0-9]*/ns/mnt 2>/dev/null | awk -v ids="$ids" '
        BEGIN { n = split(ids, a, "\n"); for (i = 1; i <= n; i++) want[a[i]] = 1 }
        $1 in want { split($2, p, "/"); print p[3] }'
}

# _ns_remove ID: removes what run ID made: its processes, namespaces, mounts, directories
_ns_remove() {
    local id=$1 dir=$NS_BASE/$1 p n f i pids
    for i in $(seq 1 100); do
        pids=$(_ns_pids_of "$id" | sort -u)
        [ -z "$pids" ] && break
        for p in $pids; do kill -KILL "$p" 2>/dev/null; done
        sleep 0.05
    done
    [ -z "$pids" ] || echo "netns_lib: processes left in namespaces of rlhfns$id: $pids" >&2
    for f in "$dir"/ns/* "$dir/ns/.probe"; do [ -e "$f" ] && umount "$f" 2>/dev/null; done
    for n in $(_ns_names "$id"); do ip netns delete "$n" 2>/dev/null; done
    if mountpoint -q "$dir" 2>/dev/null; then
        umount "$dir" 2>/dev/null || umount -l "$dir"
    fi
    rmdir "$dir" 2>/dev/null
    rm -f "$NS_BASE/$id.owner"
}

# _ns_reap_stale: removes the leftovers of runs whose owner is dead
_ns_reap_stale() {
    local f id pid start
    for f in "$NS_BASE"/*.owner; do
        [ -e "$f" ] || continue
        id=$(basename "$f" .owner)
        read -r pid start <"$f" 2>/dev/null
        [ -n "${pid:-}" ] && [ "$(_ns_starttime "$pid")" = "${start:-}" ] && continue
        echo "netns_lib: removing the leftovers of run rlhfns$id (its owner, pid ${pid:-?}, is gone)" >&2
        _ns_remove "$id"
    done
}

_ns_on_exit() {
    [ "$BASHPID" = "$NS_OWNER" ] && ns_cleanup
    eval "${_NS_PREV_EXIT:-}"
}

ns_setup() {
    local net=${1:?usage: ns_setup NET} c
    [ "$(id -u)" -eq 0 ] || _ns_skip "network namespaces need root"
    for c in ip tc nsenter unshare mountpoint; do
        command -v "$c" >/dev/null || _ns_skip "no $c (apt-get install iproute2 util-linux)"
    done
    mkdir -p "$NS_BASE" || _ns_skip "cannot make $NS_BASE"
    _ns_reap_stale
    local tries=0
    until NS_ID=$(printf '%04x' $((RANDOM % 65536))) && mkdir "$NS_BASE/$NS_ID" 2>/dev/null; do
        tries=$((tries + 1))
        [ $tries -lt 100 ] || _ns_die "no free run id in $NS_BASE"
    done
    NS_OWNER=$BASHPID
    echo "$NS_OWNER $(_ns_starttime "$NS_OWNER")" >"$NS_BASE/$NS_ID.owner"
    NS_PFX=rlhfns$NS_ID
    NS_DIR=$NS_BASE/$NS_ID
    NSROOT=$NS_DIR/root
    NS_SW=$NS_PFX-$net
    # the EXIT trap set before (runtime_lib's cleanup) runs after ours
    local prev
    prev=$(trap -p EXIT)
    if [ -n "$prev" ]; then
        eval "prev=($prev)"
        _NS_PREV_EXIT=${prev[2]}
    fi
    trap _ns_on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # a private tmpfs: the mount namespace files must not propagate (and the hosts' files are
    # gone with it)
    mount -t tmpfs -o size=512m,mode=0755 "$NS_PFX" "$NS_DIR" && mount --make-private "$NS_DIR" ||
        _ns_skip "cannot mount a tmpfs on $NS_DIR"
    mkdir -p "$NS_DIR/ns" "$NS_DIR/hosts" "$NSROOT"
    ip netns add "$NS_SW" 2>/dev/null || _ns_skip "cannot make a network namespace (ip netns add)"
    ip -n "$NS_SW" link add br0 type bridge forward_delay 0 stp_state 0 mcast_snooping 0 ||
        _ns_skip "cannot make a bridge"
    ip -n "$NS_SW" link set lo up
    ip -n "$NS_SW" link set br0 up
    # the switch is layer 2 only: no addresses, no router solicitations of its own
    _ns_sysctl "$NS_SW" ipv6/conf/all/disable_ipv6=1 ipv6/conf/default/disable_ipv6=1 2>/dev/null
    _ns_mntns "$NS_DIR/ns/.probe" true 2>/dev/null ||
        _ns_skip "cannot make a persistent mount namespace (unshare -m, mount --bind)"
    umount "$NS_DIR/ns/.probe"
    rm -f "$NS_DIR/ns/.probe"
}

# _ns_mntns FILE SCRIPT: a new mount namespace (every mount in it private), set up by SCRIPT (sh)
# run in it, and kept by binding it on FILE. Where the caller is itself in a mount namespace of
# its own (a container, `unshare -m`), the kernel refuses the bind now and then (EINVAL: it takes
# the new namespace for an older one), and `unshare --mount=FILE` fails with it: a new namespace
# is tried then, 20 times at most.
_ns_mntns() {
    local file=$1 script=$2 ready=$1.ready hp try
    touch "$file"
    for try in $(seq 1 20); do
        # "ready" on its stdout (a file opened outside: SCRIPT may hide any path) once set up
        unshare -m --propagation private /bin/sh -c "$script && echo ready && exec sleep 60" \
            >"$ready" &
        hp=$!
        _ns_wait 10 _ns_ready "$ready" "$hp"
        if [ -s "$ready" ] && mount --bind "/proc/$hp/ns/mnt" "$file" 2>/dev/null; then
            try=0
        elif [ ! -s "$ready" ]; then
            try=99 # the script failed: no use trying again
        fi
        kill -KILL "$hp" 2>/dev/null
        wait "$hp" 2>/dev/null
        rm -f "$ready"
        [ "$try" -eq 0 ] && return 0
        [ "$try" -eq 99 ] && return 1
    done
    echo "netns_lib: cannot bind a mount namespace on $file" >&2
    return 1
}
_ns_ready() { [ -s "$1" ] || ! kill -0 "$2" 2>/dev/null; }

# _ns_sysctl NETNS KEY=VALUE...: net sysctls (paths under /proc/sys/net) in that namespace (the
# files under /proc/sys/net are those of the writer's network namespace)
_ns_sysctl() {
    local ns=$1
    shift
    nsenter --net="/run/netns/$ns" /bin/sh -c 'for kv; do
        echo "${kv#*=}" >"/proc/sys/net/${kv%%=*}" || exit 1; done' sh "$@"
}

_ns_known() {
    local h
    for h in "${NS_HOSTS[@]}"; do [ "$h" = "$1" ] && return 0; done
    echo "netns_lib: no host '$1'" >&2
    return 1
}

# _ns_addr ADDR DEFAULT_PLEN: ADDR with a prefix length
_ns_addr() { case $1 in */*) echo "$1" ;; *) echo "$1/$2" ;; esac; }

ns_host_add() {
    local name=${1:?usage: ns_host_add NAME IP [IP6]} ip4=${2:?usage: ns_host_add NAME IP [IP6]}
    local ip6=${3:-} ns=$NS_PFX-$1 h
    [ -n "$NS_PFX" ] || _ns_die "ns_host_add before ns_setup"
    [[ $name =~ ^[a-z0-9]{1,12}$ ]] || _ns_die "host name '$name': 1-12 of [a-z0-9]"
    ip netns add "$ns" || _ns_die "ip netns add $ns failed"
    NS_HOSTS+=("$name")
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name "v-$name" netns "$NS_SW" ||
        _ns_die "cannot make the veth link of $name"
    ip -n "$NS_SW" link set "v-$name" master br0 up
    ip -n "$ns" addr add "$(_ns_addr "$ip4" 24)" dev eth0 || _ns_die "$name: bad address $ip4"
    echo "${ip4%/*}" >"$NS_DIR/ns/.ip-$name"
    if [ -n "$ip6" ]; then
        # no duplicate address detection (the address is usable at once), and the address
        # survives ns_link_down (by default a link going down drops its IPv6 addresses)
        _ns_sysctl "$ns" ipv6/conf/eth0/accept_dad=0 ipv6/conf/eth0/keep_addr_on_down=1 ||
            _ns_die "$name: no IPv6 (net.ipv6.conf.eth0)"
        ip -n "$ns" -6 addr add "$(_ns_addr "$ip6" 64)" dev eth0 nodad ||
            _ns_die "$name: bad address $ip6"
        echo "${ip6%/*}" >"$NS_DIR/ns/.ip6-$name"
    fi
    ip -n "$ns" link set eth0 up
    # the mount namespace: the host's own directory at $NSROOT; the other hosts' directories,
    # and NS_HIDE, covered by an empty read-only tmpfs
    mkdir -p "$NS_DIR/hosts/$name"
    local script="mount --bind '$NS_DIR/hosts/$name' '$NSROOT' &&
        mount -t tmpfs -o ro,size=4k,mode=0755 hidden '$NS_DIR/hosts'"
    for h in ${NS_HIDE[@]+"${NS_HIDE[@]}"}; do
        script="$script && mount -t tmpfs -o ro,size=4k,mode=0755 hidden '$h'"
    done
    _ns_mntns "$NS_DIR/ns/$name" "$script" || _ns_die "$name: cannot make its mount namespace"
    _ns_wait 10 _ns_port_forwarding "$name" || _ns_die "$name: the bridge does not forward"
}

ns_dir() { _ns_known "$1" && echo "$NS_DIR/hosts/$1"; }
ns_ip() { _ns_known "$1" && cat "$NS_DIR/ns/.ip-$1"; }
ns_ip6() { _ns_known "$1" && cat "$NS_DIR/ns/.ip6-$1"; }

# The command line that enters host $1 and runs the rest in $NSROOT (nsenter's --wd would
# resolve the directory before entering the mount namespace).
_ns_enter_argv() {
    _NS_ARGV=(nsenter --net="/run/netns/$NS_PFX-$1" --mount="$NS_DIR/ns/$1" --
        /bin/sh -c 'cd -- "$1" || exit 126; shift; exec "$@"' sh "$NSROOT")
}

ns_exec() {
    local name=${1:?usage: ns_exec NAME CMD...}
    shift
    _ns_known "$name" || return 2
    _ns_enter_argv "$name"
    "${_NS_ARGV[@]}" "$@"
}

ns_spawn() {
    local name=${1:?usage: ns_spawn NAME LOG CMD...} log=${2:?usage: ns_spawn NAME LOG CMD...}
    shift 2
    _ns_known "$name" || return 2
    _ns_enter_argv "$name"
    # exec all the way down (subshell, nsenter, sh): $! is the command's own pid
    (exec "${_NS_ARGV[@]}" /bin/sh -c 'mkdir -p "$(dirname "$1")" && log=$1 && shift &&
        exec "$@" >>"$log" 2>&1' sh "$log" "$@") &
    NS_PID=$!
    NS_PIDS+=("$NS_PID")
}

# _ns_wait SECONDS COMMAND...: polls COMMAND every 50 ms until it succeeds or time runs out
_ns_wait() {
    local deadline=$(($(date +%s%N) + ${1%.*} * 1000000000))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s%N)" -ge "$deadline" ] && return 1
        sleep 0.05
    done
}

_ns_port_forwarding() {
    ip -n "$NS_PFX-$1" link show eth0 | grep -q 'state UP' &&
        bridge -n "$NS_SW" link show dev "v-$1" | grep -q 'state forwarding'
}

# _ns_rate_bytes RATE: tc's rate units (bit, kbit, mbit, gbit, bps, kbps, mbps, gbps) in bytes/s
_ns_rate_bytes() {
    echo "$1" | awk '{
        n = $0 + 0; u = tolower(substr($0, length(n "") + 1))
        m["bit"] = 1 / 8; m["kbit"] = 1e3 / 8; m["mbit"] = 1e6 / 8; m["gbit"] = 1e9 / 8
        m["bps"] = 1; m["kbps"] = 1e3; m["mbps"] = 1e6; m["gbps"] = 1e9
        if (n <= 0 || !(u in m)) exit 1
        printf "%d\n", n * m[u] }'
}

ns_link_rate() {
    local name=${1:?usage: ns_link_rate NAME RATE} rate=${2:?usage: ns_link_rate NAME RATE} bps
    _ns_known "$name" || return 2
    bps=$(_ns_rate_bytes "$rate") || _ns_die "ns_link_rate: bad rate '$rate' (1gbit, 100mbit...)"
    # burst: 1 ms at the rate, and at least one 64 KiB segment of the veth's segmentation offload
    # (smaller, tbf cuts every such packet up); queue: 20 ms at the rate (TCP then finds the
    # rate, not the queue's end)
    local burst=$((bps / 1000)) limit=$((bps / 50))
    [ $burst -ge 65536 ] || burst=65536
    [ $limit -ge $((4 * burst)) ] || limit=$((4 * burst))
    tc -n "$NS_PFX-$name" qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" \
        limit "$limit" || _ns_die "ns_link_rate: tc failed on $name"
    tc -n "$NS_SW" qdisc replace dev "v-$name" root tbf rate "$rate" burst "$burst" \
        limit "$limit" || _ns_die "ns_link_rate: tc failed on the switch port of $name"
}

ns_link_down() {
    _ns_known "${1:?usage: ns_link_down NAME}" || return 2
    ip -n "$NS_SW" link set "v-$1" down && ip -n "$NS_PFX-$1" link set eth0 down
}

ns_link_up() {
    local name=${1:?usage: ns_link_up NAME} a
    _ns_known "$name" || return 2
    ip -n "$NS_PFX-$name" link set eth0 up && ip -n "$NS_SW" link set "v-$name" up || return 1
    _ns_wait 10 _ns_port_forwarding "$name" || {
        echo "netns_lib: the link of $name is not forwarding 10 s after ns_link_up" >&2
        return 1
    }
    # the addresses are kept (keep_addr_on_down); should a kernel drop them anyway, put them back
    ip -n "$NS_PFX-$name" -4 addr show dev eth0 | grep -q "inet $(ns_ip "$name")/" ||
        echo "netns_lib: $name lost its IPv4 address over ns_link_down" >&2
    if [ -e "$NS_DIR/ns/.ip6-$name" ]; then
        a=$(ns_ip6 "$name")
        ip -n "$NS_PFX-$name" -6 addr show dev eth0 | grep -q "inet6 $a/" ||
            ip -n "$NS_PFX-$name" -6 addr add "$a/64" dev eth0 nodad
    fi
    return 0
}

_ns_listening() { [ -n "$(ns_exec "$1" ss -Hltn "sport = :$2")" ]; }
_ns_listening_or_gone() { ! kill -0 "$3" 2>/dev/null || _ns_listening "$1" "$2"; }
ns_wait_listen() {
    local name=${1:?usage: ns_wait_listen NAME PORT [SECONDS]} port=${2:?usage: ns_wait_listen NAME PORT [SECONDS]}
    _ns_known "$name" || return 2
    _ns_wait "${3:-10}" _ns_listening "$name" "$port"
}

ns_throughput() {
    local from=${1:?usage: ns_throughput FROM TO ADDR MIB} to=${2:?usage: ns_throughput FROM TO ADDR MIB}
    local addr=${3:?usage: ns_throughput FROM TO ADDR MIB} mib=${4:?usage: ns_throughput FROM TO ADDR MIB}
    local port=5999 out=$NS_DIR/ns/.throughput.$BASHPID rpid
    _ns_known "$from" && _ns_known "$to" || return 2
    # the interpreter itself, not a wrapper (pyenv's shims take most of a second to start)
    [ -n "${_NS_PYTHON:-}" ] ||
        _NS_PYTHON=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null) ||
        _ns_die "ns_throughput needs python3"
    # the receiver: the rate from its first byte to the end, so that connecting does not count
    _ns_enter_argv "$to"
    (exec "${_NS_ARGV[@]}" timeout 60 "$_NS_PYTHON" -c '
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
c, _ = s.accept()
n, t0 = 0, None
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    if t0 is None:
        t0 = time.monotonic()
    n += len(b)
print("%d %.6f" % (n, time.monotonic() - t0))
' "$addr" "$port") >"$out" 2>&1 &
    rpid=$!
    _ns_wait 10 _ns_listening_or_gone "$to" "$port" "$rpid"
    if ! _ns_listening "$to" "$port"; then
        kill "$rpid" 2>/dev/null
        echo "netns_lib: ns_throughput: no receiver on $to at $addr: $(cat "$out")" >&2
        return 1
    fi
    ns_exec "$from" timeout 60 "$_NS_PYTHON" -c '
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
chunk = bytes(1 << 20)
for _ in range(int(sys.argv[3])):
    s.sendall(chunk)
s.close()
' "$addr" "$port" "$mib" || {
        kill "$rpid" 2>/dev/null
        echo "netns_lib: ns_throughput: $from could not send to $addr" >&2
        return 1
    }
    wait "$rpid"
    awk -v want=$((mib * 1048576)) 'NF == 2 && $1 == want && $2 > 0 { printf "%d\n", $1 * 8 / $2 / 1e6; ok = 1 }
        END { exit !ok }' "$out" || {
        echo "netns_lib: ns_throughput: the receiver said: $(cat "$out")" >&2
        return 1
    }
    rm -f "$out"
}

ns_tails() {
    local n=${1:-40} f
    [ -n "$NS_DIR" ] && [ -d "$NS_DIR/hosts" ] || return 0
    for f in $(find "$NS_DIR/hosts" -name '*.log' -type f 2>/dev/null | sort); do
        echo "--- ${f#"$NS_DIR/hosts/"} (host's \$NSROOT/${f#"$NS_DIR/hosts/"*/})"
        tail -n "$n" "$f"
    done
}

ns_cleanup() {
    [ -n "$NS_ID" ] && [ "$BASHPID" = "$NS_OWNER" ] || return 0
    if [ -n "${NS_KEEP:-}" ] && [ -d "$NS_DIR/hosts" ]; then
        mkdir -p "$NS_KEEP" && cp -a "$NS_DIR/hosts/." "$NS_KEEP/" &&
            echo "netns_lib: the hosts' directories are kept in $NS_KEEP"
    fi
    # ns_spawn's children first, reaped quietly (else the shell reports each one killed)
    local p
    for p in ${NS_PIDS[@]+"${NS_PIDS[@]}"}; do kill -KILL "$p" 2>/dev/null; done
    for p in ${NS_PIDS[@]+"${NS_PIDS[@]}"}; do wait "$p" 2>/dev/null; done
    _ns_remove "$NS_ID"
    NS_ID= NS_HOSTS=() NS_PIDS=()
}
