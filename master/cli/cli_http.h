/*
 * cli_http.h - the rlhf command's client of a master's HTTP endpoints (/status, /metrics):
 * `rlhf status --run-dir DIR`, local mode's check that its master serves, `rlhf bench wire`.
 *
 * The master's directory says how to reach it: DIR/master.json gives the port, the scheme
 * ("https" with master.tls_cert), the certificate and the file holding the bearer token
 * (DIR/http.token unless the master was given --http-token-file; none with --insecure). The
 * token file can be named instead (--http-token-file, or RLHF_HTTP_TOKEN_FILE in the
 * environment), for a master whose master.json is not the reader's to trust. Over HTTPS the
 * master must present exactly the certificate master.json names (pinned: a self-signed one
 * works, and the loopback address needs no name in it).
 *
 *   char *body;
 *   if (cli_http_get("runs/.cluster", NULL, "/status", &body) < 0) show(rl_errmsg());
 */
#ifndef RLHF_CLI_HTTP_H
#define RLHF_CLI_HTTP_H

/* The environment variable naming the token file when no option does. */
#define CLI_HTTP_TOKEN_ENV "RLHF_HTTP_TOKEN_FILE"

/* GET path (HTTP/1.0, 5 s socket timeouts) from the master whose files are in dir, with its
 * bearer token: from token_file when not NULL, else $RLHF_HTTP_TOKEN_FILE when set, else the file
 * master.json names (none: no Authorization header). The master's HTTP host when it names one
 * address, else the loopback. Returns 0 with *body the response body (malloc'ed, NUL-terminated,
 * the caller frees it), or RL_ENOTFOUND (no master.json, no HTTP) / RL_EINVAL / RL_EFORMAT (a
 * token file refused: secret_token_read) / RL_EIO (connection, TLS, a certificate other than the
 * pinned one) / RL_EPROTO (not a 200 answer; a 401 says which token was sent) / RL_ENOMEM, with
 * the detail in rl_errmsg() and *body NULL. */
int cli_http_get(const char *dir, const char *token_file, const char *path, char **body);

/* The same with another method and, when json_body is not NULL, a JSON body (at most 2 KiB);
 * a refusal's message is the JSON answer's "error" ("URL: 409: why"). */
int cli_http_request(const char *dir, const char *token_file, const char *method, const char *path,
                     const char *json_body, char **body);

#endif
