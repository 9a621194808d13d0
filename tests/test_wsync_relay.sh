#!/usr/bin/env bash
# test_wsync_relay.sh - the weights relay chain with real processes on loopback. `rlhf-wiretool
# wsync-serve` stands for the learner (it publishes one version and announces it to rlhf-master);
# three rollout workers a, b, c register one after the other, so the master chains them
# a <- b <- c (a fetches from the origin, b from a's relay, c from b's).
#   1. version 1: every worker ends with the server's exact bytes (CRC-32C); b and c took their
#      bytes from a relay; the learner's server sent the snapshot once, not three times;
#   2. version 2 at another endpoint: the same again (the chain is kept);
#   3. version 3, served slowly, b SIGKILLed in the middle of it: c gives b up, fetches the
#      chunks it lacks from the origin and ends with the right CRC;
#   4. version 4, once the master has declared b gone: the chain is a <- c, still one copy;
#   5. a worker serving its relay on IPv6 loopback ([::1]) and the next one fetching from it;
#   6. a worker that cannot serve a relay where it was told to refuses to start.
# Usage: test_wsync_relay.sh BIN_DIR
BIN=${1:?usage: test_wsync_relay.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"

MIB=24
BYTES=$((MIB * 1048576))
# serve NAME VERSION [ARGS...]: runtime_lib.sh's start_server with MIB MiB
serve() {
    local name=$1 v=$2
    shift 2
    start_server "$name" "$v" "$MIB" "$@"
}
# served NAME: the bytes the server sent (it logs them when stopped); stops it
served() {
    kill -TERM "$SPID"
    wait "$SPID" 2>/dev/null
    sed -n 's/.* chunks, \([0-9]*\) bytes sent$/\1/p' "$W/$1.log" | tail -n 1
}
synced() { grep -q "weights: version $2 synced: .* crc32c $3," "$W/$1.log"; }
# from_relay WORKER VERSION: its sync line of that version counts bytes from a relay (> 0)
from_relay() { grep "weights: version $2 synced:" "$W/$1.log" | grep -Eq ", [1-9][0-9]* bytes from relay tcp://"; }
# once BYTES: the origin sent the snapshot once (a chunk or two again after a retry at most)
once() { [ "$1" -ge "$BYTES" ] && [ "$1" -le $((BYTES + BYTES / 8)) ]; }
relay_of() { sed -n 's/.*weights relay: serving at \([^ ]*\) .*/\1/p' "$W/$1.log" | tail -n 1; }

start_master m "$W/r"
for w in a b c; do
    start_worker "$w" --role rollout
    eval "P_$w=$WPID"
    check "worker $w registered (in chain order)" wait_for 10 grep -q "worker $w registered" "$W/m.log"
done
RA=$(relay_of a) RB=$(relay_of b)
check "workers serve relays on loopback" test -n "$RA" -a -n "$RB"

# --- 1. version 1
serve s1 1
for w in a b c; do check "v1: $w synced, bit-exact (crc32c $SCRC)" wait_for 60 synced "$w" 1 "$SCRC"; done
check "v1: a was told to fetch from the origin" \
    bash -c "grep 'weights version 1 announced' '$W/a.log' | grep -vq 'relay from'"
check "v1: b was chained to a's relay" grep -q "weights version 1 announced at $SEP, relay from $RA" "$W/b.log"
check "v1: c was chained to b's relay" grep -q "weights version 1 announced at $SEP, relay from $RB" "$W/c.log"
check "v1: b fetched from a relay" from_relay b 1
check "v1: c fetched from a relay" from_relay c 1
B1=$(served s1)
echo "  v1: the origin sent $B1 bytes for 3 workers ($BYTES bytes each)"
check "v1: the learner's server sent the snapshot once" once "$B1"

# --- 2. version 2 at another endpoint
serve s2 2
for w in a b c; do check "v2: $w synced, bit-exact" wait_for 60 synced "$w" 2 "$SCRC"; done
check "v2: c fetched from a relay" from_relay c 2
B2=$(served s2)
echo "  v2: the origin sent $B2 bytes"
check "v2: the learner's server sent the snapshot once" once "$B2"

# --- 3. version 3 slowly (96 chunks of 256 KiB, 10 ms a request), b killed midway
serve s3 3 --chunk-kb 256 --delay-ms 10
check "v3: c is fetching" wait_for 20 grep -q "fetching version >= 3 .* via relay $RB" "$W/c.log"
sleep 0.4
check "v3: c not synced yet when b is killed" bash -c "! grep -q 'version 3 synced' '$W/c.log'"
kill -KILL "$P_b"
wait "$P_b" 2>/dev/null
check "v3: a synced" wait_for 60 synced a 3 "$SCRC"
check "v3: c synced all the same, bit-exact" wait_for 60 synced c 3 "$SCRC"
check "v3: c gave b up and took the rest from the origin" \
    bash -c "grep 'version 3 synced' '$W/c.log' | grep -q 'the rest from the origin'"
B3=$(served s3)
echo "  v3: the origin sent $B3 bytes (a's copy and what c still lacked)"
check "v3: the origin sent less than two copies" test "$B3" -lt $((2 * BYTES))

# --- 4. version 4 once b is known gone: a <- c
check "master declared b gone" wait_for 10 grep -q "worker b gone" "$W/m.log"
serve s4 4
check "v4: c was chained to a's relay" wait_for 10 grep -q "weights version 4 announced at $SEP, relay from $RA" "$W/c.log"
check "v4: a synced" wait_for 60 synced a 4 "$SCRC"
check "v4: c synced from a's relay" wait_for 60 synced c 4 "$SCRC"
check "v4: c fetched from a relay" from_relay c 4
B4=$(served s4)
check "v4: the learner's server sent the snapshot once" once "$B4"

# --- 5. IPv6: d serves its relay on [::1], e (after it in the chain) fetches from there
if ip -6 addr show dev lo 2>/dev/null | grep -q "::1/128"; then
    start_worker d --role rollout --bind-host ::1
    check "d registered" wait_for 10 grep -q "worker d registered" "$W/m.log"
    start_worker e --role rollout
    check "e registered" wait_for 10 grep -q "worker e registered" "$W/m.log"
    RD=$(relay_of d)
    check "d serves at an IPv6 literal" grep -q "serving at tcp://\[::1\]:" "$W/d.log"
    serve s5 5
    check "v5: e was chained to d's relay on [::1]" \
        wait_for 10 grep -q "weights version 5 announced at $SEP, relay from tcp://\[::1\]:" "$W/e.log"
    check "v5: e synced through it, bit-exact" wait_for 60 synced e 5 "$SCRC"
    check "v5: e fetched from the IPv6 relay" from_relay e 5
    B5=$(served s5)
    check "v5: the learner's server sent the snapshot once for a, c, d, e" once "$B5"
else
    echo "  (no IPv6 loopback: part 5 skipped)"
fi

# --- 6. bad relay settings refuse to start, with the reason
"$BIN/rlhf-worker" --role rollout --master "$EP" --bind-host 0.0.0.0 >"$W/bad1.log" 2>&1
check "--bind-host 0.0.0.0 without --advertise: exit 2" test $? -eq 2
check "  naming --advertise" grep -q "advertise" "$W/bad1.log"
"$BIN/rlhf-worker" --role rollout --master "$EP" --bind-host 192.0.2.1 >"$W/bad2.log" 2>&1
check "a bind host not on this machine: exit 1" test $? -eq 1
check "  naming the address" grep -q "bind tcp://192.0.2.1" "$W/bad2.log"
finish
