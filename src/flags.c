/*
 * flags.c - the command-line parser every command of the ltxfs binary
 * uses: a table of flags in, values and positional arguments out.
 *
 * SYNTAX, as Go's flag package (LiteFS's command line):
 *
 *   -name value   -name=value   --name value   --name=value   a flag with a value
 *   -json   --json                                           a switch
 *   --                                                       the end of the flags
 *   -h  -help  --help                                        the usage, on stdout
 *
 * Positional arguments may stand between flags (`import PATH -name X`);
 * a lone "-" is one. A value is taken as given, even if it starts with '-'.
 *
 * HOW. getopt_long_only with an option table built from the command's
 * flags, in "+:" mode: scanning stops at the first positional argument
 * instead of permuting argv (so nothing after "--" is ever looked at), and
 * a missing value is reported as ':' rather than printed. Each stop at a
 * positional argument stores it and resumes after it, unless spec->stop
 * says the positional argument begins a command's own arguments. glibc
 * accepts unambiguous abbreviations (-conf for -config); LiteFS does not,
 * so a flag matched under another name than the one typed is refused as
 * unknown. getopt prints nothing (opterr = 0); the messages are ours:
 *
 *   unknown flag '-x'          flag -json takes no value
 *   flag -url needs a value    unexpected argument 'x'   (or '--')
 *
 * each as "<command>: <message>", a blank line and the command's usage, on
 * stderr, exit status 2.
 *
 * THREADS. The main thread only, before any other thread exists: getopt's
 * state (optind, optarg, optopt, opterr) is global. Each call starts afresh
 * (optind = 0, glibc's full reinitialisation), so the top-level flags and
 * then a command's can be parsed in one process.
 */
#include "ltxfs/flags.h"

#include <assert.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define VAL_HELP (FLAGS_MAX + 1) /* getopt's val for -h and -help; a flag's is its index + 1 */

int flags_usage_error(const struct flags_spec *spec, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "%s: ", spec->cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n\n%s", spec->usage);
	return FLAGS_USAGE;
}

/* Whether arg ("-name", "--name=value") spells name in full. */
static bool spelled(const char *arg, const char *name)
{
	arg += arg[1] == '-' ? 2 : 1;
	size_t n = strcspn(arg, "=");
	return strlen(name) == n && strncmp(arg, name, n) == 0;
}

/* The flag getopt matched for val, if arg spells its name in full; else NULL. */
static const char *matched(const struct option *opts, int nf, int val, const char *arg)
{
	if (val == VAL_HELP)
		return spelled(arg, "h") || spelled(arg, "help") ? "h" : NULL;
	if (val < 1 || val > nf)
		return NULL;
	return spelled(arg, opts[val - 1].name) ? opts[val - 1].name : NULL;
}

int flags_parse(const struct flags_spec *spec, int argc, char **argv, size_t *ret_npos,
		char ***ret_rest)
{
	struct option opts[FLAGS_MAX + 3];
	int nf = 0;
	size_t got = 0;
	for (const struct flag *f = spec->flags; f && f->name; f++, nf++) {
		assert(nf < FLAGS_MAX);
		opts[nf] = (struct option){f->name, f->value ? required_argument : no_argument,
					   NULL, nf + 1};
	}
	opts[nf] = (struct option){"h", no_argument, NULL, VAL_HELP};
	opts[nf + 1] = (struct option){"help", no_argument, NULL, VAL_HELP};
	opts[nf + 2] = (struct option){NULL, 0, NULL, 0};
	if (ret_rest)
		*ret_rest = NULL;
	opterr = 0;
	optind = 0;
	for (;;) {
		int at = optind ? optind : 1; /* the element getopt reads next */
		int c = getopt_long_only(argc, argv, "+:", opts, NULL);
		if (c == -1) {
			if (at < argc && strcmp(argv[at], "--") == 0) {
				if (!spec->rest)
					return flags_usage_error(spec, "unexpected argument '--'");
				*ret_rest = argv + at + 1;
				break;
			}
			if (optind >= argc)
				break;
			if (spec->stop) {
				*ret_rest = argv + optind;
				break;
			}
			if (got >= spec->npos)
				return flags_usage_error(spec, "unexpected argument '%s'",
							 argv[optind]);
			spec->pos[got++] = argv[optind++];
			continue;
		}
		const char *name = matched(opts, nf, c == '?' || c == ':' ? optopt : c, argv[at]);
		if (!name)
			return flags_usage_error(spec, "unknown flag '%s'", argv[at]);
		if (c == '?')
			return flags_usage_error(spec, "flag -%s takes no value", name);
		if (c == ':')
			return flags_usage_error(spec, "flag -%s needs a value", name);
		if (c == VAL_HELP) {
			fputs(spec->usage, stdout);
			return FLAGS_HELP;
		}
		const struct flag *f = &spec->flags[c - 1];
		if (f->value)
			*f->value = optarg;
		else
			*f->set = true;
	}
	if (ret_npos)
		*ret_npos = got;
	return 0;
}
