#!/usr/bin/env bash
# test_deploy_image.sh - deploy/image/build-image.sh: the image is built FROM scratch offline
# (podman, a private vfs store in the test's directory, nothing pulled), and its root file system,
# taken out of the image (podman save: the layers, unpacked; no container is run, which needs
# cgroups), holds everything the binaries need. Checks:
#   a. the image is tagged localhost/rlhf:VERSION (VERSION of `rlhf --version`), runs as user
#      rlhf (10001) in /var/lib/rlhf, and holds only /usr/bin's three binaries and install, the
#      libraries, /etc's four files and empty directories (no shell, no other program);
#   b. chrooted into it (no host library reachable) `rlhf --version`, `rlhf-master --help` and
#      `rlhf-worker --help` run, as root and as user rlhf; install copies a key file at mode 0600
#      as deploy/k8s's init containers do; the loader resolves every library inside the image
#      (ld.so --list), none is missing;
#   c. without /proc or /sys, the exact products, OpenBLAS and OpenMP work in it (`rlhf bench
#      train`, both backends, 2 threads);
#   d. with /proc (mounted in a private mount namespace), `rlhf generate` - a master and a rollout
#      worker started from the image's binaries, over loopback - writes the completions the host's
#      binaries write, byte for byte;
#   e. the same binaries built again give the same image id (fixed owners and times).
# The store, the podman state and the root file system live in the test's directory and go with
# it; podman's shared cache file (/var/lib/containers/cache) is removed if the test made it.
# Needs root and podman (apt-get install podman buildah; deploy/bootstrap.sh does); exit 77
# otherwise. Usage: test_deploy_image.sh BIN_DIR (KEEP=1 keeps the files)
BIN=$(cd "${1:?usage: test_deploy_image.sh BIN_DIR}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
skip() {
    echo "SKIP: $*"
    exit 77
}
[ "$(id -u)" -eq 0 ] || skip "building and unpacking the image needs root"
for c in podman chroot unshare tar jq; do
    command -v "$c" >/dev/null 2>&1 || skip "no $c (apt-get install podman buildah; deploy/bootstrap.sh does)"
done
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf
cd "$W" || exit 1
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)

# podman's shared cache: removed at the end if this test is what made it
CACHE=/var/lib/containers
[ -e "$CACHE" ] && CACHE=
drop_cache() { [ -n "$CACHE" ] && rm -rf "$CACHE"; }
trap 'drop_cache; cleanup' EXIT

mkdir -p tmp libpod
export TMPDIR=$W/tmp
PODMAN=(podman --root "$W/storage" --runroot "$W/run" --storage-driver vfs --tmpdir "$W/libpod"
    --events-backend file --cgroup-manager cgroupfs)
export RLHF_BUILDER_ARGS="${PODMAN[*]:1}"
VERSION=$("$R" --version | awk '{ print $2; exit }')
TAG=localhost/rlhf:$VERSION

# --- a. the image
t0=$(now_ms)
"$SRC/deploy/image/build-image.sh" "$BIN" >build.out 2>build.log
rc=$?
BUILD_MS=$(($(now_ms) - t0))
check "a. build-image.sh $BIN: exit 0 ($BUILD_MS ms)" test $rc -eq 0
read -r got_tag ID <<<"$(tail -n 1 build.out)"
check "a. tagged $TAG (printed: ${got_tag:-none} ${ID:0:19})" test "${got_tag:-}" = "$TAG"
"${PODMAN[@]}" image inspect "$TAG" >inspect.json 2>>build.log
check "a. the image runs as 10001:10001 in /var/lib/rlhf, labelled with the version" jq -e \
    --arg v "$VERSION" '.[0].Config | .User == "10001:10001" and .WorkingDir == "/var/lib/rlhf" and
    .Labels["org.opencontainers.image.version"] == $v and (.Env | index("PATH=/usr/bin")) != null' \
    inspect.json

# its root file system, from its layers (podman save: a docker archive of layer tars)
"${PODMAN[@]}" save --format docker-archive -o image.tar "$TAG" 2>>build.log
mkdir -p archive root
tar -C archive -xf image.tar
n_layers=0
for l in $(jq -r '.[0].Layers[]' archive/manifest.json 2>/dev/null); do
    tar -C root --numeric-owner -xpf "archive/$l" && n_layers=$((n_layers + 1))
done
check "a. the image's layers unpacked ($n_layers)" test "$n_layers" -ge 1 -a -x root/usr/bin/rlhf
# every path is one of the image's: the binaries, libraries, /etc files, the user's directories
stray=$(cd root && find . -mindepth 1 \( -type f -o -type l \) | grep -vE \
    '^\./(usr/bin/(rlhf(-master|-worker)?|install)|usr/lib(64)?/.*\.so[.0-9]*|lib|lib64|etc/(passwd|group|nsswitch\.conf|hosts))$')
check "a. nothing else in it${stray:+: $stray}" test -z "$stray"
check "a. /var/lib/rlhf and /var/cache/rlhf belong to 10001, /tmp is 1777" eval \
    '[ "$(stat -c %u:%a root/var/lib/rlhf root/var/cache/rlhf root/tmp | tr "\n" " ")" = "10001:755 10001:755 0:1777 " ]'

# --- b. chrooted: the image's files only, and the image's environment only (its ENV)
CHROOT=$(command -v chroot)
IMAGE_ENV=(env -i PATH=/usr/bin HOME=/home/rlhf XDG_CACHE_HOME=/var/cache/rlhf)
in_image() { # in_image USER:GROUP CMD...: CMD run in the image's root file system
    local u=$1
    shift
    "${IMAGE_ENV[@]}" "$CHROOT" --userspec="$u" "$W/root" "$@"
}
ver=$(in_image 0:0 /usr/bin/rlhf --version 2>&1)
check "b. chroot: rlhf --version ($ver)" test "$ver" = "$("$R" --version)"
check "b. chroot: rlhf-master --help" eval 'in_image 0:0 rlhf-master --help | grep -q "^usage: rlhf-master"'
check "b. chroot: rlhf-worker --help" eval 'in_image 0:0 rlhf-worker --help | grep -q "^usage: rlhf-worker"'
check "b. chroot as user rlhf (10001): rlhf-worker --help" \
    eval 'in_image 10001:10001 rlhf-worker --help | grep -q "^usage: rlhf-worker"'
# deploy/k8s's init containers: `install -m 0600 SECRET_FILE DIR/` as the pod's user
mkdir -p root/run/keys root/run/secret && echo secret >root/run/secret/k.key
chown 10001:10001 root/run/keys
in_image 10001:10001 install -m 0600 /run/secret/k.key /run/keys/ 2>/dev/null
check "b. chroot as rlhf: install -m 0600 copies a key (deploy/k8s's init containers)" \
    eval '[ "$(stat -c %a:%u root/run/keys/k.key 2>&1)" = 600:10001 ]'
rm -rf root/run
LD=$(readlink /lib64/ld-linux-x86-64.so.2 >/dev/null && echo /lib64/ld-linux-x86-64.so.2)
[ -n "$LD" ] || LD=$(ldd "$R" | awk '$1 ~ /^\/.*ld-linux/ { print $1 }')
in_image 0:0 "$LD" --list /usr/bin/rlhf-worker >ldlist.txt 2>&1
check "b. the loader finds every library of rlhf-worker inside the image ($(grep -c '=>' ldlist.txt))" \
    eval '! grep -q "not found" ldlist.txt && grep -q "libopenblas" ldlist.txt'

# --- c. BLAS and OpenMP without /proc and /sys
check "c. chroot, no /proc or /sys: rlhf bench train (exact and OpenBLAS, OpenMP, 2 threads)" eval \
    'in_image 10001:10001 rlhf bench train --layers 1 --heads 2 --dim 64 \
        --vocab 128 --batch 2 --seq 16 --steps 2 --threads 2 |
        jq -e ".gemm.exact.ms_per_step > 0 and .gemm.openblas.ms_per_step > 0"'

# --- d. a master and a rollout worker from the image: rlhf generate, against the host's binaries
mkdir -p host
(
    cd host || exit 1
    for i in $(seq 1 100); do echo "the quick brown fox $i jumps over the lazy dog $((i * 7))"; done >corpus.txt
    for i in $(seq 1 6); do echo "{\"id\":\"p$i\",\"prompt\":\"the fox $i\"}"; done >prompts.jsonl
    "$R" tokenizer-train --corpus corpus.txt --vocab-size 280 --out tok >/dev/null &&
        "$R" init-model --tokenizer tok --layers 1 --heads 2 --dim 16 --vocab 280 --ctx 32 \
            --out model >/dev/null
)
cp -r host/model host/prompts.jsonl root/var/lib/rlhf/
chown -R 10001:10001 root/var/lib/rlhf
gen_args=(--k 2 --max-new 6 --workers 1 --seed 4)
(cd host && timeout 120 "$R" generate --model model --prompts prompts.jsonl "${gen_args[@]}" \
    --out completions.jsonl >gen.log 2>&1)
check "d. rlhf generate with the host's binaries" test -s host/completions.jsonl
# /proc mounted in a private mount namespace: the binaries find themselves (/proc/self/exe) and
# their children; no pid namespace, whose pid 1 (the command itself, as in a container without
# --init) would not reap the orphaned local supervisor
t0=$(now_ms)
timeout 120 "${IMAGE_ENV[@]}" "$(command -v unshare)" --mount --propagation private /bin/sh -c \
    'c=$1 && shift && mount -t proc proc "$0/proc" && exec "$c" --userspec=10001:10001 "$0" "$@"' \
    "$W/root" "$CHROOT" \
    rlhf generate --model /var/lib/rlhf/model --prompts /var/lib/rlhf/prompts.jsonl \
    "${gen_args[@]}" --out /var/lib/rlhf/completions.jsonl >gen-image.log 2>&1
rc=$?
check "d. in the image (with /proc): rlhf generate, master and worker from /usr/bin (exit $rc, $(($(now_ms) - t0)) ms)" \
    test $rc -eq 0
check "d. ... the same completions as the host's binaries, byte for byte" \
    cmp host/completions.jsonl root/var/lib/rlhf/completions.jsonl
# processes whose root is the image's: none may be left
in_root() {
    find /proc -mindepth 2 -maxdepth 2 -name root -lname "$W/root" 2>/dev/null | cut -d/ -f3
}
wait_for 10 eval '[ -z "$(in_root)" ]'
left=$(in_root)
check "d. no process left in the image's root${left:+: $left}" test -z "$left"
for p in $left; do kill -KILL "$p"; done
mountpoint -q root/proc && bad "d. /proc left mounted in the root" && umount -l root/proc

# --- e. the same binaries again: the same image
ID2=$("$SRC/deploy/image/build-image.sh" "$BIN" localhost/rlhf:again 2>>build.log | awk '{ print $2 }')
check "e. built again: the same image id (${ID:0:19}, ${ID2:0:19})" test -n "$ID" -a "${ID2:-}" = "$ID"

"${PODMAN[@]}" rmi -f "$TAG" localhost/rlhf:again >/dev/null 2>&1
[ "${fail:-1}" -ne 0 ] && tail -n 30 build.log gen-image.log host/gen.log
echo "test time: $(($(now_ms) - T0)) ms (the image $BUILD_MS ms)"
finish
