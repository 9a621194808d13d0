#!/usr/bin/env bash
# test_http_auth.sh - the master's HTTP endpoints behind a bearer token, and over TLS: /healthz
# open; /status and /metrics 401 (WWW-Authenticate: Bearer) without a token and with a wrong
# one, 200 with the master's own, every refusal counted in rlhf_http_unauthorized_total. The
# token is the key set's http.token (refused at start when others may read it), or for a set
# without one a token made at each start (RUN_DIR/http.token, mode 0600); a token file of the
# operator's (--http-token-file) is used instead, and refused at start when others may read it
# or it is too short;
# --insecure serves without a token; with a self-signed certificate made here, HTTPS answers
# (curl --cacert, and rlhf status, which pins the certificate) and plain HTTP on that port does
# not; a TLS key others may read, or a certificate without its key, refused at start.
# Usage: test_http_auth.sh BIN_DIR
BIN=${1:?usage: test_http_auth.sh BIN_DIR}
source "$(dirname "$0")/runtime_lib.sh"
R=$BIN/rlhf

# code URL [CURL_ARGS...]: the HTTP status code curl gets (000: no HTTP answer)
code() { local u=$1; shift; curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$u"; }
# mcode URL [CURL_ARGS...]: the same with the master's token
mcode() { local u=$1; shift; mcurl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$u"; }
unauthorized() { metric rlhf_http_unauthorized_total; }
# refused NAME ARGS...: rlhf-master with ARGS exits non-zero at start; its stderr in $W/NAME.err
refused() {
    local name=$1; shift
    timeout 20 "$BIN/rlhf-master" --bind 'tcp://127.0.0.1:*' --http-port 0 "$@" 2>"$W/$name.err"
    local rc=$?
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]
}

# --- a master with the cluster's key set: its http.token
KT=$RLHF_KEYS/http.token
start_master m0 "$W/run0"
check "with keys: master.json names the key set's http.token" \
    test "$(jq -r .http_token_file "$W/run0/master.json")" = "$KT"
check "... no RUN_DIR/http.token" test ! -e "$W/run0/http.token"
check "... /status: 200 with it" test "$(code "$HTTP/status" -H "Authorization: Bearer $(cat "$KT")")" = 200
check "... /status: 401 without it" test "$(code "$HTTP/status")" = 401
kill "$MPID"
wait "$MPID" 2>/dev/null
chmod 644 "$KT"
check "the key set's http.token of mode 0644: the master refuses to start" \
    refused open_kt --run-dir "$W/run0"
check "... naming the file" grep -q "$KT: mode 0644" "$W/open_kt.err"
chmod 600 "$KT"

# --- a key set without http.token: the master makes a token at each start
"$R" keygen --dir "$W/keys2" >/dev/null
rm "$W/keys2/http.token"
start_master m1 "$W/run" --keys "$W/keys2"
TOK=$W/run/http.token
check "the token is written to RUN_DIR/http.token" test -s "$TOK"
check "... mode 0600" test "$(stat -c %a "$TOK")" = 600
check "... 64 hex digits" grep -Eqx '[0-9a-f]{64}' "$TOK"
check "master.json names the token file, not the token" \
    bash -c "jq -e '.http_token_file == \"$TOK\" and .http_scheme == \"http\"' '$W/run/master.json' &&
        ! grep -q \"\$(cat '$TOK')\" '$W/run/master.json'"
check "/healthz: 200 without a token" test "$(code "$HTTP/healthz")" = 200
before=$(unauthorized)
check "the refusal counter is shown to an authorized scrape ($before)" test "$before" = 0
for p in /status /metrics; do
    check "$p: 401 without a token" test "$(code "$HTTP$p")" = 401
    check "$p: 401 with a wrong token" test "$(code "$HTTP$p" -H "Authorization: Bearer $(printf 'x%.0s' {1..64})")" = 401
    check "$p: 401 with a prefix of the token" \
        test "$(code "$HTTP$p" -H "Authorization: Bearer $(head -c 40 "$TOK")")" = 401
    check "$p: 401 with the token as Basic credentials" \
        test "$(code "$HTTP$p" -H "Authorization: Basic $(cat "$TOK")")" = 401
    check "$p: 200 with the token" test "$(mcode "$HTTP$p")" = 200
    check "$p: 200 with the scheme in lower case" \
        test "$(code "$HTTP$p" -H "Authorization: bearer $(cat "$TOK")")" = 200
done
check "the 8 refusals counted" test "$(unauthorized)" -eq $((before + 8))
curl -s -D "$W/h401" -o "$W/b401" "$HTTP/status"
check "401 says WWW-Authenticate: Bearer" grep -qi '^www-authenticate: Bearer' "$W/h401"
check "... with a short body" test "$(wc -c <"$W/b401")" -gt 0 -a "$(wc -c <"$W/b401")" -lt 200
check "no data in a 401" bash -c "! grep -q master_id '$W/b401'"
curl -s -D "$W/h401w" -o /dev/null -H "Authorization: Bearer wrongwrongwrongwrongwrongwrongwrong" "$HTTP/status"
check "a wrong token: error=\"invalid_token\"" grep -qi 'invalid_token' "$W/h401w"
check "the token's /status is the master's JSON" bash -c "mcurl -sf '$HTTP/status' | jq -e .master_id"
check "rlhf status --run-dir reads it with the token" bash -c "'$R' status --run-dir '$W/run' | jq -e .master_id"
printf '%s\n' "$(printf 'y%.0s' {1..40})" >"$W/wrong.token"
chmod 600 "$W/wrong.token"
RLHF_HTTP_TOKEN_FILE=$W/wrong.token "$R" status --run-dir "$W/run" >/dev/null 2>"$W/status.err"
check "rlhf status with another token: exit 1" test $? -eq 1
check "... saying 401 and naming the token file" grep -q "401.*wrong.token" "$W/status.err"
old=$(cat "$TOK")
kill "$MPID"
wait "$MPID" 2>/dev/null
start_master m1b "$W/run" --keys "$W/keys2"
check "a restarted master makes a new token" test "$(cat "$TOK")" != "$old"
check "... the old one refused" test "$(code "$HTTP/status" -H "Authorization: Bearer $old")" = 401
check "... the new one taken" test "$(mcode "$HTTP/status")" = 200
kill "$MPID"
wait "$MPID" 2>/dev/null

# --- the operator's token file
OT=$W/op.token
printf '  %s  \n\n' "operator-token-0123456789-abcdefghijklmnop" >"$OT"
chmod 644 "$OT"
check "a token file of mode 0644: the master refuses to start" \
    refused open_token --run-dir "$W/run2" --http-token-file "$OT"
check "... naming the file and its mode" grep -q "$OT: mode 0644" "$W/open_token.err"
check "... before it opens a journal" test ! -e "$W/run2/journal"
chmod 600 "$OT"
printf 'short-token\n' >"$W/short.token"
chmod 600 "$W/short.token"
check "a token of 11 characters: refused at start" \
    refused short_token --run-dir "$W/run2" --http-token-file "$W/short.token"
check "... naming the file" grep -q "short.token: the token has 11 characters" "$W/short_token.err"
start_master m2 "$W/run2" --http-token-file "$OT"
check "with --http-token-file: no RUN_DIR/http.token" test ! -e "$W/run2/http.token"
check "... master.json names the operator's file" \
    test "$(jq -r .http_token_file "$W/run2/master.json")" = "$OT"
check "... its token (whitespace trimmed) is taken" test "$(code "$HTTP/metrics" \
    -H "Authorization: Bearer operator-token-0123456789-abcdefghijklmnop")" = 200
check "... and no other" test "$(code "$HTTP/metrics" -H "Authorization: Bearer $old")" = 401
kill "$MPID"
wait "$MPID" 2>/dev/null

# --- --insecure: no token wanted
start_master m3 "$W/run3" --insecure
check "--insecure: /status 200 without a token" test "$(code "$HTTP/status")" = 200
check "--insecure: /metrics 200 without a token" test "$(code "$HTTP/metrics")" = 200
check "--insecure: master.json names no token file" \
    test "$(jq -r '.http_token_file // "none"' "$W/run3/master.json")" = none
check "--insecure: rlhf status reads it" bash -c "'$R' status --run-dir '$W/run3' | jq -e .master_id"
kill "$MPID"
wait "$MPID" 2>/dev/null

# --- TLS with a self-signed certificate
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/key.pem" -out "$W/cert.pem" -days 2 \
    -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" 2>/dev/null
check "a self-signed certificate made" test -s "$W/cert.pem" -a -s "$W/key.pem"
chmod 644 "$W/key.pem"
check "a TLS key of mode 0644: refused at start" \
    refused open_key --run-dir "$W/run4" --tls-cert "$W/cert.pem" --tls-key "$W/key.pem"
check "... naming the file" grep -q "$W/key.pem: mode 0644" "$W/open_key.err"
chmod 600 "$W/key.pem"
check "a certificate without its key: refused at start" \
    refused cert_only --run-dir "$W/run4" --tls-cert "$W/cert.pem"
check "... saying both or neither" grep -q "both" "$W/cert_only.err"
start_master m4 "$W/run4" --tls-cert "$W/cert.pem" --tls-key "$W/key.pem"
PORT=$(jq -r .http_port "$W/run4/master.json")
check "master.json says https" test "$HTTP" = "https://127.0.0.1:$PORT"
CA=(--cacert "$W/cert.pem")
check "HTTPS /healthz: 200 (curl --cacert)" test "$(code "$HTTP/healthz" "${CA[@]}")" = 200
check "HTTPS /status: 401 without a token" test "$(code "$HTTP/status" "${CA[@]}")" = 401
check "HTTPS /status: 200 with the token" test "$(mcode "$HTTP/status" "${CA[@]}")" = 200
check "HTTPS /metrics over HTTP/1.1: 200 with the token" \
    test "$(mcode "$HTTP/metrics" "${CA[@]}" --http1.1)" = 200
check "HTTPS as localhost: 200" test "$(mcode "https://localhost:$PORT/metrics" "${CA[@]}")" = 200
check "HTTPS without trusting the certificate: refused by curl" \
    test "$(code "$HTTP/healthz")" = 000
check "plain HTTP to the TLS port: no HTTP answer" \
    test "$(code "http://127.0.0.1:$PORT/healthz")" = 000
check "plain HTTP to the TLS port with the token: no HTTP answer" \
    test "$(mcode "http://127.0.0.1:$PORT/status")" = 000
check "rlhf status over HTTPS (the certificate pinned)" \
    bash -c "'$R' status --run-dir '$W/run4' | jq -e .master_id"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/key2.pem" -out "$W/cert2.pem" -days 2 \
    -subj /CN=localhost 2>/dev/null
jq -c --arg c "$W/cert2.pem" '.tls_cert = $c' "$W/run4/master.json" >"$W/m.json"
cp "$W/m.json" "$W/run4/master.json"
"$R" status --run-dir "$W/run4" >/dev/null 2>"$W/pin.err"
check "rlhf status refuses another certificate than the pinned one" test $? -eq 1
check "... saying so" grep -q "certificate is not the one in" "$W/pin.err"
kill "$MPID"
wait "$MPID" 2>/dev/null

finish
