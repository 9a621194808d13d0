#!/usr/bin/env bash
# test_deploy_k8s.sh - the Kubernetes manifests of deploy/k8s (ctest deploy_k8s, label deploy).
#   - `kubectl kustomize` renders the base and the overlays dev and prod; it prints nothing but
#     kustomize v5's deprecation notes of `bases:`/`patchesStrategicMerge:` (kept for v2.0.3);
#   - tests/check_k8s.py checks each rendering: objects, replicas per role, every container's
#     options against the real binaries' --help, the keys (Secret mode 0400 into init containers
#     only, 0600 copies), the PersistentVolumeClaim, probes on /healthz of the HTTP port, ports,
#     addresses, the Job; with python3-kubernetes, every field name against the API types;
#   - the run config of the ConfigMap is one `rlhf run --print-plan` accepts, and so are the
#     master's --set keys; prod's image has a release tag, dev's is rlhf:dev;
#   - the dev rendering run on this machine (tests/k8s_exec.py: each container's command line
#     as the kubelet would start it, volumes as directories, loopback and free ports for the
#     cluster's addresses): the init containers copy the keys, the master answers /healthz, the
#     stage worker beside it and a rollout, reward and learner worker register, and the Job's
#     `rlhf run` (with --only task) runs the task stage in the master's data directory.
# `kubectl apply --dry-run=client` needs an API server (discovery) even with --validate=false:
# tried and reported, never required. Skipped (77) without kubectl (Debian: kubernetes-client).
# Until `rlhf keygen` exists (CURVE keys, landing separately) --keys/--key are reported PENDING.
# Usage: test_deploy_k8s.sh BUILD_DIR   (KUBECTL=PATH: another kubectl)
BIN=$(cd "${1:?usage: test_deploy_k8s.sh BUILD_DIR}" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
KUBECTL=${KUBECTL:-kubectl}
if ! command -v "$KUBECTL" >/dev/null 2>&1; then
    echo "SKIP: no kubectl (Debian package kubernetes-client)"
    exit 77
fi
source "$HERE/runtime_lib.sh"
# a Python with yaml (python3-yaml), preferably also kubernetes (python3-kubernetes)
PY=
for p in python3 /usr/bin/python3; do
    "$p" -c 'import yaml' 2>/dev/null || continue
    [ -n "$PY" ] || PY=$p
    if "$p" -c 'import kubernetes.client' 2>/dev/null; then PY=$p; break; fi
done
if [ -z "$PY" ]; then
    bad "a python3 with the yaml module (python3-yaml)"
    finish
    exit 1
fi
echo "kubectl: $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"

mkdir -p "$W/help"
"$BIN/rlhf-master" --help >"$W/help/rlhf-master.txt"
"$BIN/rlhf-worker" --help >"$W/help/rlhf-worker.txt"
"$BIN/rlhf" run --help >"$W/help/rlhf-run.txt"
pending=()
if "$BIN/rlhf" keygen --help >/dev/null 2>&1; then
    SECURE=1
else
    SECURE=
    echo "PENDING: rlhf keygen is not in this build (CURVE keys): --keys, --key, --insecure accepted unlisted"
    pending=(--pending-opt --keys --pending-opt --key --pending-opt --insecure)
fi

# render TARGET NAME: kubectl kustomize deploy/k8s/TARGET into $W/NAME.yaml
render() {
    local err
    if ! "$KUBECTL" kustomize "$ROOT/deploy/k8s/$1" >"$W/$2.yaml" 2>"$W/$2.err"; then
        bad "kubectl kustomize deploy/k8s/$1"
        cat "$W/$2.err"
        return 1
    fi
    err=$(grep -vE "^# Warning: '(bases|patchesStrategicMerge)' is deprecated" "$W/$2.err")
    if [ -z "$err" ]; then ok "kubectl kustomize deploy/k8s/$1"; else
        bad "kubectl kustomize deploy/k8s/$1 printed: $err"
    fi
}
# field NAME PYTHON_EXPR: evaluates EXPR over `docs` (the rendered documents of NAME)
field() {
    "$PY" -c "import sys, yaml; docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]; print($2)" "$W/$1.yaml"
}

for t in base:rollout=2,reward=1,learner=1 overlays/dev:rollout=1,reward=1,learner=1 \
    overlays/prod:rollout=8,reward=2,learner=1; do
    target=${t%%:*} replicas=${t#*:} name=${target##*/}
    render "$target" "$name" || continue
    if "$PY" "$HERE/check_k8s.py" "$W/$name.yaml" "$W/help" "$replicas" "${pending[@]}" \
        >"$W/$name.check"; then
        ok "check_k8s.py $target: $(grep -c '^ok' "$W/$name.check") checks ($replicas)"
    else
        bad "check_k8s.py $target"
        grep -v '^ok' "$W/$name.check"
    fi
    grep -E '^(note|PENDING)' "$W/$name.check" | sed "s|^|$target: |"
    # the run config and the master's --set keys, as `rlhf run` reads them
    field "$name" "[d for d in docs if d['kind'] == 'ConfigMap'][0]['data']['run.yaml']" \
        >"$W/$name-run.yaml"
    check "$target: the ConfigMap's run.yaml passes rlhf run --print-plan" \
        bash -c "cd '$W' && '$BIN/rlhf' run '$W/$name-run.yaml' --print-plan"
    sets=$(field "$name" "' '.join('--set ' + a for c in [d for d in docs if d['kind'] == 'StatefulSet'][0]['spec']['template']['spec']['containers'] if c['name'] == 'master' for p, a in zip(c['args'], c['args'][1:]) if p == '--set')")
    # shellcheck disable=SC2086
    check "$target: the master's $sets are keys rlhf run --print-plan takes" \
        bash -c "cd '$W' && '$BIN/rlhf' run '$W/$name-run.yaml' $sets --print-plan"
    images=$(field "$name" "' '.join(sorted({c['image'] for d in docs if 'template' in d.get('spec', {}) for c in d['spec']['template']['spec'].get('initContainers', []) + d['spec']['template']['spec']['containers']}))")
    case $name in
    prod) check "prod: one image, a release tag ($images)" grep -qxE 'rlhf:[0-9]+\.[0-9]+\.[0-9]+' <<<"$images" ;;
    dev) check "dev: one image, rlhf:dev ($images)" test "$images" = rlhf:dev ;;
    esac
done

# kubectl apply --dry-run=client: tried against no server (a refused port, at once)
cat >"$W/kubeconfig" <<'EOF'
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
EOF
if out=$(KUBECONFIG="$W/kubeconfig" timeout 20 "$KUBECTL" apply --dry-run=client --validate=false \
    --request-timeout=5s -f "$W/dev.yaml" 2>&1 </dev/null); then
    ok "kubectl apply --dry-run=client (dev)"
else
    echo "note: kubectl apply --dry-run=client needs an API server (its discovery), not checked: $(head -n 1 <<<"$out")"
fi

# --- the dev rendering, run here -------------------------------------------------------------
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ZP=$(port) BP=$(port) HP=$(port)
if [ -n "$SECURE" ]; then
    check "rlhf keygen --dir keys (the Secret's files)" "$BIN/rlhf" keygen --dir "$W/secret"
    without=()
else # empty stand-ins for the init containers to copy; the options themselves left out
    mkdir -p "$W/secret"
    for f in master.key authorized_keys http.token stage.key rollout.key reward.key learner.key \
        client.key; do install -m 0400 /dev/null "$W/secret/$f"; done
    without=(--without --keys --without --key)
fi
# pod KIND/NAME CONTAINER [ARGS...]: runs the container in the background; sets PPID_
pod() {
    local ref=$1 c=$2
    shift 2
    "$PY" "$HERE/k8s_exec.py" "$W/dev.yaml" "$ref" "$c" --root "$W/pods" --bin "$BIN" \
        --secret "$W/secret" "${without[@]}" \
        --subst tcp://0.0.0.0:5555 "tcp://127.0.0.1:$ZP" --subst tcp://127.0.0.1:5555 "tcp://127.0.0.1:$ZP" \
        --subst tcp://rlhf-master:5555 "tcp://127.0.0.1:$ZP" --subst rlhf-master 127.0.0.1 \
        --subst master.blob_port=5556 "master.blob_port=$BP" --subst 8080 "$HP" \
        --subst master.http_host=0.0.0.0 master.http_host=127.0.0.1 --subst 0.0.0.0 127.0.0.1 \
        "$@" >>"$W/$c-${ref#*/}.log" 2>&1 &
    PPID_=$!
    PIDS+=("$PPID_")
}
HTTP="http://127.0.0.1:$HP"
pod StatefulSet/rlhf-master master --init
check "dev: the master answers /healthz" wait_for 10 curl -sf "$HTTP/healthz"
keymode=$(stat -c %a "$W/pods/StatefulSet-rlhf-master/master-keys/master.key" 2>/dev/null)
check "dev: the init container copied master.key mode 0600 (${keymode:-none})" test "$keymode" = 600
pod StatefulSet/rlhf-master stage
for r in rollout reward learner; do pod "Deployment/rlhf-$r" worker --init; done
# /status wants the master's bearer token: the Secret's http.token
AUTH="Authorization: Bearer $(cat "$W/secret/http.token")"
check "dev: stage, rollout, reward and learner workers registered" wait_for 20 \
    bash -c "[ \"\$(curl -sf -H '$AUTH' '$HTTP/status' | jq -c '[.workers[] | select(.state == \"alive\") | .role] | sort')\" = '[\"learner\",\"reward\",\"rollout\",\"stage\"]' ]"
# the Job's rlhf run, only its first stage: the stage worker runs it on the master's volume
pod Job/rlhf-submit submit --init --append --only --append task
JOB=$PPID_
wait_for 40 bash -c "! kill -0 $JOB 2>/dev/null"
wait "$JOB"
rc=$?
check "dev: the Job's rlhf run --only task: exit $rc" test "$rc" -eq 0
check "dev: the task stage wrote the run in the master's data directory (the claim 'data')" \
    test -s "$W/pods/StatefulSet-rlhf-master/data/runs/demo/task/prompts.jsonl"
[ -z "$SECURE" ] && echo "PENDING: --keys/--key left out of the dev run (no rlhf keygen in this build)"
finish
