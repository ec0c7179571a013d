/*
 * flags.h - the one command-line parser of the ltxfs binary (top layer):
 * every command describes its flags in a table and flags_parse reads them
 * with getopt_long_only, which takes Go's flag syntax that LiteFS users
 * know: -flag, --flag, -flag=value, --flag=value and -flag value. Names
 * must be given in full (no abbreviations); -h and -help print the usage.
 * Called from the main thread only (getopt keeps global state).
 */
#ifndef LTXFS_FLAGS_H
#define LTXFS_FLAGS_H

#include <stdbool.h>
#include <stddef.h>

#define FLAGS_MAX 16 /* flags in one table */

/* One flag: value for a flag that takes a value (-url URL), set for a switch (-json). */
struct flag {
	const char *name;
	const char **value; /* set to the value given (a pointer into argv) */
	bool *set;	    /* set to true when the flag is given */
};

struct flags_spec {
	const char *cmd;	  /* "ltxfs import": the start of every error message */
	const char *usage;	  /* -h prints it on stdout; a usage error, on stderr */
	const struct flag *flags; /* up to FLAGS_MAX, ending with {NULL}; NULL: none */
	const char **pos;	  /* positional arguments go here, in order, */
	size_t npos;		  /* up to this many; one more is a usage error */
	bool rest;		  /* "--" ends the flags and what follows is *ret_rest */
	bool stop;		  /* the first positional argument ends the flags: it and
				     what follows are *ret_rest (a command and its arguments) */
};

/* flags_parse's results besides 0 (parsed: go on). */
#define FLAGS_HELP  1 /* -h: the usage was printed on stdout; exit 0 */
#define FLAGS_USAGE 2 /* a usage error was printed on stderr; exit 2 */

/*
 * Parse argv[1..argc-1] (argv[0] is the command's name) as spec says.
 * Flags and positional arguments may be mixed (unless spec->stop). Sets
 * *ret_npos to the number of positional arguments (may be NULL if npos is
 * 0) and *ret_rest to what follows "--" or, with spec->stop, the first
 * positional argument: a NULL-terminated tail of argv, or NULL if there is
 * none (may be NULL unless rest or stop).
 */
int flags_parse(const struct flags_spec *spec, int argc, char **argv, size_t *ret_npos,
		char ***ret_rest);

/* Print "<cmd>: <message>", a blank line and the usage on stderr; returns 2 (exit status). */
__attribute__((format(printf, 2, 3))) int flags_usage_error(const struct flags_spec *spec,
							    const char *fmt, ...);

#endif
