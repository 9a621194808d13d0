# runtime_lib.sh - shared helpers of the runtime tests (sourced): start real rlhf-master /
# rlhf-worker processes on loopback, poll conditions with deadlines, clean up every process.
# Usage: BIN=DIR_WITH_BINARIES; source runtime_lib.sh
set -u
W=$(mktemp -d "${TMPDIR:-/tmp}/rlhf-rt-XXXXXX")
# workers started without --cache-dir keep their copies of models here, not in ~/.cache
export XDG_CACHE_HOME="$W/xdg-cache"
# the cluster's keys: every master, worker, client and tool of the test talks CURVE with them
# (net/sec.h; local clusters that commands start make keys of their own)
if [ -x "${BIN:-}/rlhf" ] && "$BIN/rlhf" keygen --dir "$W/keys" >/dev/null; then
    export RLHF_KEYS="$W/keys"
fi
PIDS=()
pass=0 fail=0
cleanup() {
    # local clusters that commands started in the test's directories (rlhf run, rlhf ppo)
    for d in $(find "$W" -maxdepth 3 -name .cluster -type d 2>/dev/null); do
        [ -n "${BIN:-}" ] && "$BIN/rlhf" down --data-dir "$(dirname "$d")" >/dev/null 2>&1
    done
    for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ "$fail" -ne 0 ]; then
        for f in "$W"/*.log "$W"/.cluster/*.log; do
            [ -f "$f" ] && echo "--- $f" && tail -n 40 "$f"
        done
    fi
    [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { # check NAME COMMAND...
    local name=$1; shift
    if "$@" >/dev/null; then ok "$name"; else bad "$name"; fi
}
finish() { echo "$pass passed, $fail failed"; [ "$fail" -eq 0 ]; }

# need_browser: the browser tests' headless Chromium, chromedriver and Selenium, or exit 77
# (skipped); sets PY to a Python that has Selenium (Debian's package is in the system's Python,
# which may not be the first python3).
need_browser() {
    PY=python3
    python3 -c 'import selenium' 2>/dev/null || PY=/usr/bin/python3
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null ||
        ! "$PY" -c 'import selenium' 2>/dev/null; then
        echo "skipped: chromium, chromium-driver and python3-selenium are wanted (deploy/bootstrap.sh)"
        exit 77
    fi
}

# wait_for SECONDS COMMAND...: polls COMMAND every 50 ms until it succeeds or time runs out.
wait_for() {
    local deadline=$(($(date +%s%N) + ${1%.*} * 1000000000)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s%N)" -ge "$deadline" ] && return 1
        sleep 0.05
    done
}

# start_master NAME RUN_DIR [ARGS...]: starts rlhf-master in the background; sets MPID, EP, HTTP.
start_master() {
    local name=$1 run=$2; shift 2
    rm -f "$run/master.json"
    # a free port of the kernel's choosing unless ARGS has --bind (later options win)
    "$BIN/rlhf-master" --bind 'tcp://127.0.0.1:*' --run-dir "$run" --http-port 0 \
        --heartbeat-ms 100 --liveness 3 "$@" \
        >>"$W/$name.log" 2>&1 &
    MPID=$!
    PIDS+=("$MPID")
    wait_for 10 test -s "$run/master.json" || { echo "master did not start"; return 1; }
    EP=$(jq -r .endpoint "$run/master.json")
    use_master "$run"
}

# use_master DIR: the master whose files are in DIR (its master.json) is the one $HTTP, mcurl
# and metric talk to; start_master calls it, a test of a local cluster calls it on DIR/.cluster.
use_master() {
    export MDIR=$1
    HTTP="$(jq -r '.http_scheme // "http"' "$1/master.json")://127.0.0.1:$(jq -r .http_port "$1/master.json")"
}

# mcurl ARGS...: curl with the bearer token of the master of $MDIR, read at every call from the
# file its master.json names (a restarted master writes a new one; an --insecure one names
# none). Exported, for `bash -c "..."`.
mcurl() {
    local f
    f=$(jq -r '.http_token_file // empty' "$MDIR/master.json" 2>/dev/null)
    curl ${f:+-H "Authorization: Bearer $(cat "$f")"} "$@"
}
export -f mcurl

# start_server NAME VERSION MIB [ARGS...]: rlhf-wiretool wsync-serve publishes VERSION (MIB MiB)
# and announces it to the master at $EP, as a learner would; sets SPID, SEP (its endpoint) and
# SCRC (the CRC-32C the workers log)
start_server() {
    local name=$1 v=$2 mb=$3; shift 3
    rm -f "$W/$name.ready"
    "$BIN/rlhf-wiretool" wsync-serve --master "$EP" --version "$v" --mb "$mb" \
        --ready "$W/$name.ready" "$@" >>"$W/$name.log" 2>&1 &
    SPID=$!
    PIDS+=("$SPID")
    wait_for 30 test -s "$W/$name.ready" || { echo "wsync-serve $name did not start"; return 1; }
    SEP=$(jq -r .endpoint "$W/$name.ready")
    SCRC=$(jq -r .crc32c "$W/$name.ready")
}

# start_worker NAME [ARGS...]: sets WPID.
start_worker() {
    local name=$1; shift
    "$BIN/rlhf-worker" --id "$name" --master "$EP" --heartbeat-ms 100 --liveness 3 "$@" \
        >>"$W/$name.log" 2>&1 &
    WPID=$!
    PIDS+=("$WPID")
}

# submit NAME FILE [ARGS...]: rlhf-client-tool submits the job lines of FILE (the format is in
# tests/client_tool.c) to the master at $EP as a client, in the background, and waits for them;
# its job lines go to $W/NAME.out, its log to $W/NAME.log. Sets CPID.
submit() {
    local name=$1 file=$2; shift 2
    "$BIN/rlhf-client-tool" jobs --master "$EP" --file "$file" --name "$name" "$@" \
        >>"$W/$name.out" 2>>"$W/$name.log" &
    CPID=$!
    PIDS+=("$CPID")
}

# client_done [SECONDS]: waits (10 s unless told) for the client started last to exit, then
# makes sure it is gone, so that it cannot submit its jobs again to the next master.
client_done() {
    wait_for "${1:-10}" bash -c "! kill -0 $CPID 2>/dev/null"
    kill -KILL "$CPID" 2>/dev/null
    wait "$CPID" 2>/dev/null
    return 0
}

# metric NAME_WITH_LABELS: the value from /metrics (empty if absent).
metric() { mcurl -sf "$HTTP/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }
metric_ge() { local v; v=$(metric "$1"); [ -n "$v" ] && [ "$v" -ge "$2" ]; }
metric_eq() { local v; v=$(metric "$1"); [ -n "$v" ] && [ "$v" -eq "$2" ]; }

# results_of RUN_DIR: a file with the job ends recorded in the journal of the master of RUN_DIR
# (rlhf-master --dump-results; only reads, so the master may be running); prints its path.
results_of() {
    "$BIN/rlhf-master" --dump-results "$1" >"$1.results" 2>/dev/null || true
    echo "$1.results"
}
# results RUN_DIR: number of job ends recorded; uniq_results: number of distinct job ids.
results() { grep -c . "$(results_of "$1")" || true; }
uniq_results() { jq -r .job_id "$(results_of "$1")" | sort -u | grep -c . || true; }
results_ge() { [ "$(results "$1")" -ge "$2" ]; }

# make_model DIR: a tiny GPT-2 directory for GENERATE jobs.
make_model() {
    "$BIN/rlhf" init-model --out "$1" --layers 2 --heads 2 --dim 32 --vocab 64 --ctx 64 --seed 5 \
        >/dev/null
}

# gen_jobs N DELAY_MS MODEL: job lines of N GENERATE jobs of the same prompt (their outputs must
# agree), for `submit`.
gen_jobs() {
    for i in $(seq 1 "$1"); do
        printf '{"id":%d,"kind":"generate","model":"%s","prompt":[1,2,3,4],"max_new_tokens":6,"delay_ms":%d}\n' \
            "$i" "$3" "$2"
    done
}
# tiny_pairs_setup: $W/pairs.jsonl (160 prompts x 3 preference pairs, "please" preferred),
# $W/tok (a 320-id tokenizer of them) and $W/base (a 2-layer GPT with it): the reward-model and
# DPO learner tests' data and model.
tiny_pairs_setup() {
    awk 'BEGIN {
        split("cat dog bird fish tree lamp road cake ship moon rain book", w, " ")
        split("tell me about|describe|say something on|write a line about", v, "|")
        fmt = "{\"prompt_id\": \"q%d\", \"prompt\": \"%s\", \"chosen\": \"%s\", \"rejected\": \"%s\"}\n"
        for (i = 0; i < 160; i++) {
            p = "\\n\\nHuman: " v[i % 4 + 1] " the " w[(i * 7) % 12 + 1] " and the "
            p = p w[(i * 5 + 3) % 12 + 1] "\\n\\nAssistant:"
            for (k = 0; k < 3; k++) {
                n = 3 + (i + k) % 3; s = ""
                for (j = 0; j < n; j++) s = s " " w[(i * 3 + k * 5 + j * 7) % 12 + 1]
                if (k >= 1) s = " please" s
                if (k == 2) s = s " please"
                c[k] = s
            }
            printf fmt, i, p, c[2], c[1]
            printf fmt, i, p, c[2], c[0]
            printf fmt, i, p, c[1], c[0]
        }
    }' >"$W/pairs.jsonl"
    jq -r '.prompt + .chosen + "\n" + .prompt + .rejected' "$W/pairs.jsonl" >"$W/corpus.txt"
    "$BIN/rlhf" tokenizer-train --corpus "$W/corpus.txt" --vocab-size 320 --out "$W/tok" >/dev/null
    "$BIN/rlhf" init-model --out "$W/base" --tokenizer "$W/tok" --layers 2 --heads 2 --dim 32 \
        --vocab 320 --ctx 64 --seed 3 >/dev/null
}


# tiny_ppo_setup LAYERS DIM CTX: in the current directory, what the PPO tests run on - a byte-level
# BPE tokenizer of 260 ids (tok/), a policy (pol/) and a value model with a scalar head (val/) of
# that shape, and 40 prompts (prompts.jsonl). Needs R=path/to/rlhf.
tiny_ppo_setup() {
    for i in $(seq 1 200); do echo "hello world what is two plus three name a fruit apple please thanks $i"; done >corpus.txt
    "$R" tokenizer-train --corpus corpus.txt --vocab-size 260 --out tok >/dev/null
    "$R" init-model --tokenizer tok --layers "$1" --heads 2 --dim "$2" --vocab 260 --ctx "$3" \
        --out pol >/dev/null
    "$R" init-model --tokenizer tok --layers "$1" --heads 2 --dim "$2" --vocab 260 --ctx "$3" \
        --scalar-head --seed 2 --out val >/dev/null
    for i in $(seq 1 40); do echo "{\"prompt\":\"what is $i plus\"}"; done >prompts.jsonl
}
