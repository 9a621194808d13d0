/*
 * cmd_keygen.c - `rlhf keygen`: a cluster's keys (net/sec.h).
 *
 *   rlhf keygen --dir DIR                      a new key set: master.key, one key per role,
 *                                              authorized_keys, http.token
 *   rlhf keygen --dir DIR --name NAME --role R one more key (R: roles, comma-separated), listed
 *
 * Also the CLI's own security: cli_security() sets up the key a command's connections use.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "base/err.h"
#include "net/sec.h"

typedef struct {
    const char *dir, *name, *role;
} keygen_args_t;

static const cli_opt_t keygen_table[] = {
    CLI_OPT_STR(keygen_args_t, dir, "dir", NULL, "DIR", "the key set's directory (made 0700)",
                CLI_OPT_REQUIRED),
    CLI_OPT_STR(keygen_args_t, name, "name", NULL, "NAME",
                "add one key named NAME to DIR's set (its file DIR/NAME.key)", 0),
    CLI_OPT_STR(keygen_args_t, role, "role", NULL, "ROLES",
                "with --name: its roles, comma-separated (learner, rollout, reward, stage, "
                "client)",
                0),
};

static const cli_opts_t keygen_opts = CLI_OPTS(
    "keygen", "rlhf keygen --dir DIR [--name NAME --role ROLES]",
    "Creates a cluster's keys: DIR/master.key for rlhf-master --keys DIR, one key per role\n"
    "(learner.key, rollout.key, reward.key, stage.key, client.key: a worker takes --key\n"
    "DIR/ROLE.key, a client --key DIR/client.key or $RLHF_KEY), DIR/authorized_keys (the keys\n"
    "the master admits, with their roles) and DIR/http.token (the HTTP bearer token). Key files\n"
    "are mode 0600 and hold a secret key: give each host only the keys of its roles. With\n"
    "--name, adds one key to an existing set and lists it; the master reads the list when it\n"
    "starts.\n",
    keygen_table, NULL);

int cmd_keygen(int argc, char **argv) {
    keygen_args_t a = {0};
    int prc = cli_opts_parse(&keygen_opts, argc, argv, &a);
    if (prc != CLI_OPTS_GO) return prc;
    if (optind < argc || !a.dir || !a.name != !a.role) return cli_usage_error("keygen");
    int rc;
    if (a.name) {
        unsigned roles = sec_roles_parse(a.role);
        if (!roles || roles & SEC_ROLE_MASTER) {
            fprintf(stderr, "rlhf keygen: --role %s: learner, rollout, reward, stage or client\n",
                    a.role);
            return 2;
        }
        if ((rc = sec_keyset_add(a.dir, a.name, roles)) < 0) return cli_fail("keygen", a.dir, rc);
        printf("%s/%s.key\n", a.dir, a.name);
        return 0;
    }
    if ((rc = sec_keyset_create(a.dir)) < 0) return cli_fail("keygen", a.dir, rc);
    printf("%s: master.key learner.key rollout.key reward.key stage.key client.key "
           "authorized_keys http.token\n",
           a.dir);
    return 0;
}

int cli_security(const char *cluster_dir) {
    static int done;
    if (done || sec_enabled()) return 0;
    const char *ins = getenv("RLHF_INSECURE");
    int rc = 0;
    char keys[4200];
    snprintf(keys, sizeof keys, "%s/keys", cluster_dir ? cluster_dir : "");
    if (cluster_dir && access(keys, F_OK) == 0) /* a local cluster: its own keys */
        rc = sec_init(SEC_ROLE_CLIENT, NULL, keys, 0);
    else if (cluster_dir || (ins && !strcmp(ins, "1"))) /* a local cluster without: plaintext */
        rc = 0;
    else
        rc = sec_init(SEC_ROLE_CLIENT, NULL, NULL, 0);
    if (rc == 0) done = 1;
    return rc;
}
