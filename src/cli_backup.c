/*
 * cli_backup.c - the backup commands: `ltxfs restore` and `ltxfs backups`.
 *
 * Both read the node's configuration file for its backup section (the same
 * file `ltxfs mount` uses, so the bucket, prefix and credentials match) and
 * talk to S3 only; no node needs to run. restore.c does the work; this file
 * parses flags, checks the output path and prints.
 *
 * Exit status: 0 done (or skipped with -if-db-not-exists), 1 a runtime
 * error (the message names the object or request that failed), 2 usage or
 * configuration errors.
 */
#include "ltxfs/cli.h"
#include "ltxfs/config.h"
#include "ltxfs/dbname.h"
#include "ltxfs/flags.h"
#include "ltxfs/restore.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char restore_usage[] =
    "usage: ltxfs restore -config FILE [-o FILE] [-txid TXID | -timestamp TIME]\n"
    "                     [-if-db-not-exists] DB\n\n"
    "Rebuild database DB from the backup bucket of FILE's backup section: the\n"
    "latest state, the state after TXID (hex; the end of an uploaded object, see\n"
    "'ltxfs backups'), or the newest state committed at or before TIME (RFC 3339,\n"
    "e.g. 2026-12-06T02:39:13.123Z). Every object is verified. The result is\n"
    "written atomically to FILE (default: DB's last path component in the current\n"
    "directory), which must not exist unless -if-db-not-exists (then nothing is done).\n";

static const char backups_usage[] =
    "usage: ltxfs backups -config FILE DB\n\n"
    "List the objects the backup bucket holds for database DB: snapshots and\n"
    "transaction ranges, sizes, upload times, and what can be restored.\n";

static int load(const char *cmd, const char *path, struct config *cfg)
{
	int r = cli_load_config(cfg, path, true);
	if (r)
		return r;
	if (!cfg->backup.type) {
		fprintf(stderr, "%s: %s has no backup section\n", cmd, cfg->path);
		config_release(cfg);
		return 2;
	}
	return 0;
}

int cmd_restore(int argc, char **argv)
{
	const char *cfgpath = NULL, *out = NULL, *txid = NULL, *ts = NULL, *pos[1] = {NULL};
	bool if_not = false;
	const struct flag flags[] = {{"config", &cfgpath, NULL},
				     {"o", &out, NULL},
				     {"txid", &txid, NULL},
				     {"timestamp", &ts, NULL},
				     {"if-db-not-exists", NULL, &if_not},
				     {NULL}};
	const struct flags_spec spec = {"ltxfs restore", restore_usage, flags, pos, 1};
	size_t npos = 0;
	int r = flags_parse(&spec, argc, argv, &npos, NULL);
	if (r)
		return r == FLAGS_HELP ? 0 : 2;
	if (npos != 1)
		return flags_usage_error(&spec, "the database name is required");
	if (!cfgpath)
		return flags_usage_error(&spec, "-config is required");
	if (!dbname_valid(pos[0], strlen(pos[0])))
		return flags_usage_error(&spec, "invalid database name '%s'", pos[0]);
	if (txid && ts)
		return flags_usage_error(&spec, "-txid and -timestamp exclude each other");
	struct restore_options o = {.db = pos[0], .output = out ? out : dbname_base(pos[0]),
				    .progress = isatty(STDERR_FILENO)};
	if (txid) {
		char *e;
		errno = 0;
		o.txid = strtoull(txid, &e, 16);
		if (!*txid || *e || errno || o.txid == 0 || strlen(txid) > 16 || txid[0] == '-' ||
		    txid[0] == '+' || txid[0] == ' ')
			return flags_usage_error(&spec, "-txid: '%s' is not a TXID (1 to 16 hex digits)",
						 txid);
	}
	if (ts) {
		if (restore_parse_time(ts, &o.time_ms) < 0)
			return flags_usage_error(
			    &spec, "-timestamp: '%s' is not an RFC 3339 time (2026-12-06T02:39:13Z)",
			    ts);
		o.has_time = true;
	}
	struct stat st;
	if (stat(o.output, &st) == 0) {
		if (if_not) {
			printf("'%s' exists: nothing restored (-if-db-not-exists)\n", o.output);
			return 0;
		}
		fprintf(stderr, "ltxfs restore: '%s' exists (remove it, or pass -if-db-not-exists)\n",
			o.output);
		return 1;
	}
	struct config cfg;
	if ((r = load("ltxfs restore", cfgpath, &cfg)))
		return r;
	o.cfg = &cfg;
	char err[1024] = "";
	uint64_t reached = 0;
	r = restore_run(&o, &reached, err, sizeof(err));
	config_release(&cfg);
	if (r < 0) {
		fprintf(stderr, "ltxfs restore: %s\n", err[0] ? err : strerror(-r));
		return 1;
	}
	printf("restored '%s' at TXID %" PRIx64 " to '%s'\n", pos[0], reached, o.output);
	return 0;
}

int cmd_backups(int argc, char **argv)
{
	const char *cfgpath = NULL, *pos[1] = {NULL};
	const struct flag flags[] = {{"config", &cfgpath, NULL}, {NULL}};
	const struct flags_spec spec = {"ltxfs backups", backups_usage, flags, pos, 1};
	size_t npos = 0;
	int r = flags_parse(&spec, argc, argv, &npos, NULL);
	if (r)
		return r == FLAGS_HELP ? 0 : 2;
	if (npos != 1)
		return flags_usage_error(&spec, "the database name is required");
	if (!cfgpath)
		return flags_usage_error(&spec, "-config is required");
	struct config cfg;
	if ((r = load("ltxfs backups", cfgpath, &cfg)))
		return r;
	char err[1024] = "";
	r = restore_list(&cfg, pos[0], stdout, err, sizeof(err));
	config_release(&cfg);
	if (r < 0) {
		fprintf(stderr, "ltxfs backups: %s\n", err[0] ? err : strerror(-r));
		return 1;
	}
	return 0;
}
