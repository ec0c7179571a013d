/*
 * cli.h - the client commands of the ltxfs binary (top layer, beside main.c):
 * each takes the arguments after its name and returns the process exit
 * status (0 ok, 1 failure, 2 usage error; `run` returns its command's).
 */
#ifndef LTXFS_CLI_H
#define LTXFS_CLI_H

int cmd_import(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_ltx(int argc, char **argv);

#endif
