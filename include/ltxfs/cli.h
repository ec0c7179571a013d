/*
 * cli.h - the commands of the ltxfs binary other than mount and version
 * (top layer, beside main.c). Each takes its argument vector, argv[0]
 * being the command's name, and returns the process exit status (0 ok,
 * 1 failure, 2 usage error; `run` returns its command's). Main thread only.
 */
#ifndef LTXFS_CLI_H
#define LTXFS_CLI_H

#include "ltxfs/config.h"

#include <stdbool.h>

int cmd_import(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_ltx(int argc, char **argv);
int cmd_orphans(int argc, char **argv);
/* cli_backup.c */
int cmd_restore(int argc, char **argv);
int cmd_backups(int argc, char **argv);

/*
 * Load the configuration of mount and orphans from path or, when path is
 * NULL, from the first of ./ltxfs.yml, ./litefs.yml, /etc/ltxfs.yml and
 * /etc/litefs.yml that exists. 0 with cfg filled (the caller then calls
 * config_release), or the exit status after the error was printed on
 * stderr: 2 for a missing or invalid file, 1 if cfg cannot be set up.
 */
int cli_load_config(struct config *cfg, const char *path, bool expand_env);

#endif
