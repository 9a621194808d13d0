#!/usr/bin/env bash
# bench_broadcast.sh - the weights broadcast across hosts: `rlhf bench wire --relay` with the
# origin and every fetcher in a network namespace of its own (tests/netns_lib.sh), all joined by
# one bridge, each host's link limited to RATE by tc tbf on both ends. Prints the broadcast's
# rounds as JSON lines - per mode (direct: every fetcher from the origin; relay: each from the
# one before it) and fetcher count, the wall time until all hold a verified copy and the bytes
# the origin sent - and checks they are sane: direct costs the origin a copy per fetcher, the
# relay chain one, and both are bounded below by what the links carry.
# Needs root and network namespaces (else exit 77: skipped).
# Usage: bench_broadcast.sh BIN_DIR [MIB [FANOUT [RATE]]]     (defaults: 64 1,2,4 1gbit)
#   e.g. bench_broadcast.sh build 500 1,2,4,8 1gbit
BIN=$(cd "${1:?usage: bench_broadcast.sh BIN_DIR [MIB [FANOUT [RATE]]]}" && pwd)
MIB=${2:-64} FANOUT=${3:-1,2,4} RATE=${4:-1gbit}
source "$(dirname "$0")/runtime_lib.sh"
source "$(dirname "$0")/netns_lib.sh"

ns_setup bcast
ns_host_add origin 10.78.0.1
ns_link_rate origin "$RATE"
MAXN=$(tr , '\n' <<<"$FANOUT" | sort -n | tail -n 1)
for i in $(seq 0 $((MAXN - 1))); do
    ns_host_add "f$i" "10.78.0.$((10 + i))"
    ns_link_rate "f$i" "$RATE"
done
echo "  $((MAXN + 1)) hosts on one bridge, links at $RATE (tbf both ways)"

# fetcher I of the benchmark runs on host fI (its network namespace; the files are shared)
cat >"$W/wrap.sh" <<EOF
#!/bin/sh
i=\$1
shift
exec nsenter --net=/run/netns/$NS_PFX-f\$i -- "\$@"
EOF
chmod +x "$W/wrap.sh"

# the benchmark itself (and with it the origin) on host origin; its first phases (dispatch,
# swarm, in-process sync) run on that host's loopback and are small
ip netns exec "$NS_PFX-origin" env TMPDIR="$W" timeout 3000 "$BIN/rlhf" bench wire \
    --jobs 50 --workers 1 --swarm 20 --seconds 1 --sync-mb "$MIB" --fanout "$FANOUT" \
    --relay --bind-host "$(ns_ip origin)" --fetcher-wrap "$W/wrap.sh" >"$W/out.json" 2>"$W/bench.log"
rc=$?
check "bench wire --relay across namespaces exits 0" test "$rc" -eq 0
[ "$rc" -eq 0 ] || tail -n 30 "$W/bench.log"
jq -c --arg rate "$RATE" '.broadcast as $b | $b.rounds[] | {mode, n, seconds, origin_bytes,
    origin_copies, bytes: $b.bytes, rate: $rate, done_s, fetchers_cpu_s, fallbacks}' "$W/out.json"

j() { jq -e "$1" "$W/out.json" >/dev/null; }
BYTES=$(jq .broadcast.bytes "$W/out.json")
check "every fan-out, direct and relay" j "[.broadcast.rounds[] | .n] | length == 2 * ($(tr , '\n' <<<"$FANOUT" | grep -c .))"
check "direct: the origin sends a copy per fetcher" j 'all(.broadcast.rounds[] | select(.mode == "direct"); .origin_bytes == .n * .origin_bytes / .origin_copies and .origin_copies >= .n)'
check "relay: the origin sends about one copy" j 'all(.broadcast.rounds[] | select(.mode == "relay"); .origin_copies >= 1 and .origin_copies < 1.25)'
check "relay: no fetcher gave its upstream up" j 'all(.broadcast.rounds[] | select(.mode == "relay"); .fallbacks == 0)'
# the links are the limit: no round beats a copy through one link (90 % of the rate, for slack)
BPS=$(_ns_rate_bytes "$RATE")
check "the link rate holds (no round faster than one copy at $RATE)" \
    j "all(.broadcast.rounds[]; .seconds >= $BYTES / $BPS * 0.9)"
finish
