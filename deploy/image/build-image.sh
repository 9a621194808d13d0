#!/usr/bin/env bash
# build-image.sh - the rlhf.c container image, from a build directory, offline: a root file
# system of rlhf, rlhf-master and rlhf-worker (and coreutils' install, with which deploy/k8s's
# init containers copy the keys) plus every shared library they load (from ldd, the real files
# behind symlinks such as OpenBLAS's alternatives link, and the dynamic loader at the path the
# binaries name), a minimal /etc for user rlhf (uid 10001) and /tmp; then `podman build` (or
# `buildah build`) of deploy/image/Containerfile FROM scratch. Nothing is pulled; nothing of the
# host is needed at run time. No shell.
#
#   deploy/image/build-image.sh BUILD_DIR [TAG]     (TAG default localhost/rlhf:VERSION, VERSION
#                                                    from `BUILD_DIR/rlhf --version`)
# Environment:
#   RLHF_BUILDER       podman or buildah (default: podman if installed, else buildah)
#   RLHF_BUILDER_ARGS  global options for it, e.g. "--root DIR --runroot DIR --storage-driver vfs"
#                      (a private image store; the test uses one)
#   RLHF_IMAGE_TOOLS   programs of this machine to add to /usr/bin with their libraries (default
#                      "install": deploy/k8s's init containers copy the keys with it; "" none)
#   RLHF_ROOTFS        also leave the assembled root file system in this directory (must not exist)
#   SOURCE_DATE_EPOCH  the time stamped on files and image (default: the rlhf binary's mtime), so
#                      that the same binaries give the same layers
# Prints the image's tag and id on the last line: "TAG ID".
set -euo pipefail
BUILD=${1:?usage: build-image.sh BUILD_DIR [TAG]}
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "$BUILD" && pwd)
BINS=(rlhf rlhf-master rlhf-worker)
for b in "${BINS[@]}"; do
    [ -x "$BUILD/$b" ] || {
        echo "build-image.sh: no $BUILD/$b (build first: cmake --build $BUILD)" >&2
        exit 2
    }
done
VERSION=$("$BUILD/rlhf" --version | awk '{ print $2; exit }')
[ -n "$VERSION" ] || {
    echo "build-image.sh: $BUILD/rlhf --version printed no version" >&2
    exit 2
}
TAG=${2:-localhost/rlhf:$VERSION}
if [ -n "${RLHF_BUILDER:-}" ]; then
    BUILDER=$RLHF_BUILDER
elif command -v podman >/dev/null 2>&1; then
    BUILDER=podman
elif command -v buildah >/dev/null 2>&1; then
    BUILDER=buildah
else
    echo "build-image.sh: neither podman nor buildah (apt-get install podman buildah)" >&2
    exit 2
fi
read -r -a BARGS <<<"${RLHF_BUILDER_ARGS:-}"
EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$BUILD/rlhf")}

CTX=$(mktemp -d "${TMPDIR:-/tmp}/rlhf-image-XXXXXX")
trap 'rm -rf "$CTX"' EXIT
ROOT=$CTX/rootfs
HOME_ROOT=$CTX/home
mkdir -p "$ROOT/usr/bin" "$HOME_ROOT"

# mirror_links DIR: the symlinks among DIR's components (Debian's /lib -> usr/lib) made in ROOT
mirror_links() {
    local cur='' comp
    IFS=/ read -r -a comps <<<"${1#/}"
    for comp in "${comps[@]}"; do
        cur=$cur/$comp
        if [ -L "$cur" ]; then
            [ -e "$ROOT$cur" ] || [ -L "$ROOT$cur" ] || {
                mkdir -p "$ROOT$(dirname "$cur")"
                ln -s "$(readlink "$cur")" "$ROOT$cur"
            }
            cur=$(readlink -f "$cur")
        fi
    done
}
# add_file PATH: PATH's real file at its real path in ROOT, and PATH itself (as the loader or
# a RUNPATH names it) a relative symlink to it where it differs
add_file() {
    local path=$1 real canon
    real=$(readlink -f "$path")
    canon=$(readlink -f "$(dirname "$path")")/$(basename "$path")
    mirror_links "$(dirname "$path")"
    if [ ! -e "$ROOT$real" ]; then
        mkdir -p "$ROOT$(dirname "$real")"
        cp --preserve=mode "$real" "$ROOT$real"
    fi
    if [ "$canon" != "$real" ] && [ ! -e "$ROOT$canon" ]; then
        mkdir -p "$ROOT$(dirname "$canon")"
        ln -sr "$ROOT$real" "$ROOT$canon"
    fi
}
# libs_of FILE: the paths of the shared objects FILE loads (the loader included)
libs_of() {
    local out
    out=$(ldd "$1" 2>&1) || {
        case $out in *"not a dynamic executable"* | *"statically linked"*) return 0 ;; esac
        echo "build-image.sh: ldd $1: $out" >&2
        return 1
    }
    if grep -q 'not found' <<<"$out"; then
        echo "build-image.sh: $1 needs libraries this machine lacks:" >&2
        grep 'not found' <<<"$out" >&2
        return 1
    fi
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

# the programs: the three binaries, and the tools (RLHF_IMAGE_TOOLS) from this machine
PROGS=()
for b in "${BINS[@]}"; do PROGS+=("$BUILD/$b"); done
read -r -a TOOLS <<<"${RLHF_IMAGE_TOOLS-install}"
for t in ${TOOLS[@]+"${TOOLS[@]}"}; do
    p=$(command -v "$t") || {
        echo "build-image.sh: no program $t on this machine (RLHF_IMAGE_TOOLS)" >&2
        exit 2
    }
    PROGS+=("$(readlink -f "$p")")
done
LIBS=()
for p in "${PROGS[@]}"; do
    cp --preserve=mode "$p" "$ROOT/usr/bin/"
    libs=$(libs_of "$p")
    [ -n "$libs" ] && mapfile -t -O "${#LIBS[@]}" LIBS <<<"$libs"
done
mapfile -t LIBS < <(printf '%s\n' "${LIBS[@]}" | sort -u)
for l in "${LIBS[@]}"; do add_file "$l"; done

# /etc: root and rlhf (10001), name lookups from files (and DNS for host names), no shell;
# /proc, /sys and /dev: where a runtime (or a chroot) mounts them
mkdir -p "$ROOT/etc" "$ROOT/tmp" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"
chmod 1777 "$ROOT/tmp"
cat >"$ROOT/etc/passwd" <<'E'
root:x:0:0:root:/root:/usr/sbin/nologin
rlhf:x:10001:10001:rlhf:/home/rlhf:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
E
cat >"$ROOT/etc/group" <<'E'
root:x:0:
rlhf:x:10001:
nogroup:x:65534:
E
cat >"$ROOT/etc/nsswitch.conf" <<'E'
passwd: files
group:  files
hosts:  files dns
E
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
chmod 644 "$ROOT"/etc/*
mkdir -p "$HOME_ROOT/home/rlhf" "$HOME_ROOT/var/lib/rlhf" "$HOME_ROOT/var/cache/rlhf"
chmod 755 "$HOME_ROOT/home/rlhf" "$HOME_ROOT/var/lib/rlhf" "$HOME_ROOT/var/cache/rlhf"

# the archives: fixed owners and times, sorted, so the same files give the same bytes
tar_of() { # tar_of DIR OUT UID
    tar -C "$1" --sort=name --numeric-owner --owner="$3" --group="$3" --mtime="@$EPOCH" \
        -cf "$2" .
}
tar_of "$ROOT" "$CTX/rootfs.tar" 0
# only the three directories belong to rlhf, not /home, /var, /var/lib...
tar -C "$HOME_ROOT" --sort=name --numeric-owner --owner=0 --group=0 --mtime="@$EPOCH" \
    --no-recursion -cf "$CTX/home.tar" ./home ./var ./var/lib ./var/cache
tar -C "$HOME_ROOT" --sort=name --numeric-owner --owner=10001 --group=10001 --mtime="@$EPOCH" \
    --no-recursion -rf "$CTX/home.tar" ./home/rlhf ./var/lib/rlhf ./var/cache/rlhf
cp "$HERE/Containerfile" "$CTX/Containerfile"
echo "build-image.sh: ${#LIBS[@]} shared objects; root file system $(du -sh "$ROOT" | cut -f1)" >&2
if [ -n "${RLHF_ROOTFS:-}" ]; then
    cp -a "$ROOT" "$RLHF_ROOTFS"
fi

# the image: FROM scratch, nothing pulled, no container run
# (the id as the build itself wrote it: a lookup of the tag afterwards once came back empty)
"$BUILDER" ${BARGS[@]+"${BARGS[@]}"} build --pull=never --layers=false --timestamp "$EPOCH" \
    --build-arg VERSION="$VERSION" --iidfile "$CTX/image-id" -f "$CTX/Containerfile" \
    -t "$TAG" "$CTX" >&2
ID=$(cat "$CTX/image-id")
echo "$TAG $ID"
