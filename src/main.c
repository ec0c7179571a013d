/*
 * main.c - the ltxfs command line: the top-level flags (-version, -h), the
 * dispatch to each command, and `ltxfs mount`'s arguments and
 * configuration (-check-config validates and prints it, mounting nothing).
 * What a mounted node does is node.c's; the other commands are cli.c's;
 * every command parses its flags with flags.c. Exit status: 0 ok, 1
 * runtime error, 2 usage or configuration error (a mounted node's own
 * statuses are described in node.c).
 *
 * THREADS. The main thread only; node_run starts the others.
 */
#include "ltxfs/cli.h"
#include "ltxfs/config.h"
#include "ltxfs/flags.h"
#include "ltxfs/httpc.h"
#include "ltxfs/lease.h"
#include "ltxfs/lease_backend.h"
#include "ltxfs/node.h"


#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "ltxfs " LTXFS_VERSION " - SQLite replication through a FUSE file system\n\n"
    "Usage:\n"
    "  ltxfs mount [-config PATH] [-no-expand-env] [-check-config] [-- CMD ARGS...]\n"
    "  ltxfs import -name NAME [-url URL] PATH\n"
    "  ltxfs export -name NAME [-url URL] PATH\n"
    "  ltxfs status [-url URL] [-json]\n"
    "  ltxfs run [-url URL] [-promote] [-if-candidate] -- CMD ARGS...\n"
    "  ltxfs ltx dump FILE | ltxfs ltx verify FILE\n"
    "  ltxfs orphans [-config PATH]\n"
    "  ltxfs restore -config PATH [-o FILE] [-txid TXID | -timestamp TIME] [-if-db-not-exists] DB\n"
    "  ltxfs backups -config PATH DB\n"
    "  ltxfs version\n\n"
    "Without -config, ltxfs reads ./ltxfs.yml, ./litefs.yml, /etc/ltxfs.yml or\n"
    "/etc/litefs.yml, the first that exists. Flags may start with - or --.\n";

/*
 * `ltxfs mount [-config PATH] [-no-expand-env] [-check-config] [-- CMD ARGS...]`:
 * load the configuration, then check it or run the node.
 */
static int cmd_mount(int argc, char **argv)
{
	const char *config_path = NULL;
	bool no_expand = false, check_only = false;
	char **cmd = NULL, err[1024] = "";
	struct config cfg;
	struct lease *lease = NULL;
	const struct flag flags[] = {{"config", &config_path, NULL},
				     {"no-expand-env", NULL, &no_expand},
				     {"check-config", NULL, &check_only},
				     {NULL}};
	const struct flags_spec spec = {"ltxfs mount", usage, flags, .rest = true};
	int r = flags_parse(&spec, argc, argv, NULL, &cmd);
	if (r)
		return r == FLAGS_HELP ? 0 : 2;
	if (cmd && !cmd[0])
		cmd = NULL;
	/* As LiteFS: $HOSTNAME is usable in the config and set for subprocesses. */
	char host[256];
	if (!getenv("HOSTNAME") && gethostname(host, sizeof(host)) == 0) {
		host[sizeof(host) - 1] = '\0';
		setenv("HOSTNAME", host, 0);
	}
	r = cli_load_config(&cfg, config_path, !no_expand);
	if (r)
		return r;
	if (check_only) {
		/* validate what mount would, print the effective config, mount nothing */
		if (strcmp(cfg.lease.type, "static") != 0 &&
		    lease_new(&lease, &cfg, err, sizeof(err)) < 0) {
			fprintf(stderr, "ltxfs: %s: %s\n", cfg.path, err);
			config_release(&cfg);
			return 2;
		}
		lease_free(lease);
		config_dump(&cfg, stdout);
		config_release(&cfg);
		return 0;
	}
	r = node_run(&cfg, cmd);
	config_release(&cfg);
	return r;
}

/* `ltxfs version` (also `ltxfs -version`). */
static int cmd_version(int argc, char **argv)
{
	const struct flags_spec spec = {"ltxfs version", usage};
	int r = flags_parse(&spec, argc, argv, NULL, NULL);
	if (r)
		return r == FLAGS_HELP ? 0 : 2;
	printf("ltxfs %s\n", LTXFS_VERSION);
	return 0;
}

int main(int argc, char **argv)
{
	bool version = false;
	char **rest = NULL;
	const struct flag flags[] = {{"version", NULL, &version}, {NULL}};
	const struct flags_spec spec = {"ltxfs", usage, flags, .stop = true};
	int r = flags_parse(&spec, argc, argv, NULL, &rest);
	if (r)
		return r == FLAGS_HELP ? 0 : 2;
	if (version) {
		printf("ltxfs %s\n", LTXFS_VERSION);
		return 0;
	}
	if (!rest || !rest[0]) {
		fputs(usage, stderr);
		return 2;
	}
	const char *cmd = rest[0];
	int nrest = argc - (int)(rest - argv);
	if (strcmp(cmd, "mount") == 0) {
		httpc_global_init();
		int rc = cmd_mount(nrest, rest);
		httpc_global_cleanup();
		return rc;
	}
	static const struct {
		const char *name;
		int (*fn)(int, char **);
		bool curl;
	} cmds[] = {
	    {"orphans", cmd_orphans, false}, {"import", cmd_import, true},
	    {"export", cmd_export, true},    {"status", cmd_status, true},
	    {"run", cmd_run, true},	     {"ltx", cmd_ltx, false},
	    {"version", cmd_version, false}, {"restore", cmd_restore, true},
	    {"backups", cmd_backups, true},
	};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmd, cmds[i].name) == 0) {
			if (cmds[i].curl)
				httpc_global_init();
			int rc = cmds[i].fn(nrest, rest);
			if (cmds[i].curl)
				httpc_global_cleanup();
			return rc;
		}
	fprintf(stderr, "ltxfs: unknown command '%s'\n", cmd);
	fputs(usage, stderr);
	return 2;
}
