/*
 * fuzz_goparse.c - libFuzzer target for the Go-compatible parsers of the
 * configuration (src/format/config_go.c). Each input goes whole to every
 * parser, and the target aborts when one of these invariants breaks:
 *
 * Durations (config_parse_duration_ns, config_parse_duration,
 * config_format_duration):
 *  - a duration with no sign reads the same with "+" and negated with "-";
 *    a "-" duration is <= 0, any other >= 0;
 *  - config_parse_duration accepts exactly the non-negative ones (up to the
 *    first NUL), in milliseconds rounded up, so only 0 gives 0 ms;
 *  - what config_format_duration prints for those milliseconds (the dump's
 *    form) fits CONFIG_DURATION_MAX and reads back to the same value, as
 *    does any millisecond count taken from the first 8 input bytes;
 *  - "a|b": when a and b are unsigned durations other than "0", the
 *    concatenation ab is their sum, or refused when the sum overflows.
 * Shell words (config_split_words):
 *  - success gives at least one word, no more text than the input, and
 *    the words, each single-quoted and joined by spaces, split back to the
 *    same words; failure leaves *ret_argv alone and gives a reason.
 * Environment expansion (config_expand_env):
 *  - text without '$' comes back unchanged.
 * And everything returns cleanly and frees what it allocates (ASan/LSan).
 * Seeds: tests/fuzz/corpus/goparse/.
 */
#include "ltxfs/byteorder.h"
#include "ltxfs/config.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NS_PER_MS 1000000LL

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	/* Variables for the expansion to find, and the two sides of an expression. */
	static const char *const env[][2] = {
	    {"FLY_REGION", "ord"}, {"PRIMARY_REGION", "ord"}, {"FUZZ_A", "a b 'c'"}};
	for (size_t i = 0; i < sizeof(env) / sizeof(env[0]); i++)
		setenv(env[i][0], env[i][1], 1);
	return 0;
}

static void check(int ok)
{
	if (!ok)
		abort();
}

/* s[0..n) with c in front. Caller frees. */
static char *prefixed(char c, const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (p) {
		p[0] = c;
		memcpy(p + 1, s, n);
	}
	return p;
}

/* ms must print as a duration that reads back to ms. */
static void roundtrip_ms(int64_t ms)
{
	char buf[CONFIG_DURATION_MAX + 8];
	int64_t back = -1, ns = -1;
	memset(buf, 'x', sizeof(buf));
	config_format_duration(ms, buf, CONFIG_DURATION_MAX);
	check(memchr(buf, '\0', CONFIG_DURATION_MAX) != NULL);
	check(config_parse_duration(buf, &back) == 0 && back == ms);
	check(config_parse_duration_ns(buf, strlen(buf), &ns) == 0 && ns == ms * NS_PER_MS);
}

static void durations(const char *data, size_t size, const char *s)
{
	int64_t ns = 0, ms = -1, v;
	bool sign = size > 0 && (data[0] == '-' || data[0] == '+');
	int rc = config_parse_duration_ns(data, size, &ns);
	check(rc == 0 || rc == -EINVAL);

	if (rc == 0 && !sign) {
		char *p = prefixed('-', data, size);
		if (p) {
			check(config_parse_duration_ns(p, size + 1, &v) == 0 && v == -ns);
			p[0] = '+';
			check(config_parse_duration_ns(p, size + 1, &v) == 0 && v == ns);
			free(p);
		}
	}
	if (rc == 0)
		check(size > 0 && data[0] == '-' ? ns <= 0 : ns >= 0);

	/* The string form stops at the first NUL. */
	if (strlen(s) != size)
		rc = config_parse_duration_ns(s, strlen(s), &ns);
	int rcm = config_parse_duration(s, &ms);
	check(rcm == ((rc == 0 && ns >= 0) ? 0 : -EINVAL));
	if (rcm == 0) {
		uint64_t u = (uint64_t)ns, m = (uint64_t)ms;
		check(m * NS_PER_MS >= u && (m == 0 || (m - 1) * NS_PER_MS < u));
		/* The largest counts round up past what nanoseconds can hold. */
		if (ms <= INT64_MAX / NS_PER_MS)
			roundtrip_ms(ms);
	}
	if (size >= 8)
		roundtrip_ms((int64_t)(get_le64((const uint8_t *)data) % (INT64_MAX / NS_PER_MS)));

	/* "a|b": a duration's components add up. */
	const char *bar = memchr(data, '|', size);
	if (bar) {
		size_t na = (size_t)(bar - data), nb = size - na - 1;
		const char *b = bar + 1;
		int64_t da, db, dab;
		bool plain = na > 0 && nb > 0 && data[0] != '-' && data[0] != '+' && b[0] != '-' &&
			     b[0] != '+' && !(na == 1 && data[0] == '0') &&
			     !(nb == 1 && b[0] == '0');
		if (plain && config_parse_duration_ns(data, na, &da) == 0 &&
		    config_parse_duration_ns(b, nb, &db) == 0) {
			char *ab = malloc(na + nb);
			if (ab) {
				memcpy(ab, data, na);
				memcpy(ab + na, b, nb);
				int r = config_parse_duration_ns(ab, na + nb, &dab);
				if (da <= INT64_MAX - db)
					check(r == 0 && dab == da + db);
				else
					check(r == -EINVAL);
				free(ab);
			}
		}
	}
}

/* The words, single-quoted ('\'' for a quote) and joined by spaces. Caller frees. */
static char *quote_words(char **argv)
{
	size_t n = 1;
	for (char **a = argv; *a; a++)
		n += 4 * strlen(*a) + 3;
	char *out = malloc(n), *w = out;
	if (!out)
		return NULL;
	for (char **a = argv; *a; a++) {
		if (a != argv)
			*w++ = ' ';
		*w++ = '\'';
		for (const char *c = *a; *c; c++) {
			if (*c == '\'') {
				memcpy(w, "'\\''", 4);
				w += 4;
			} else {
				*w++ = *c;
			}
		}
		*w++ = '\'';
	}
	*w = '\0';
	return out;
}

static void words(const char *s)
{
	char *sentinel[] = {NULL};
	char **argv = sentinel, **again = sentinel;
	char why[160];
	int rc = config_split_words(s, &argv, why, sizeof(why));
	check(rc == 0 || rc == -EINVAL || rc == -ENOMEM);
	if (rc) {
		check(argv == sentinel);
		check(memchr(why, '\0', sizeof(why)) != NULL && why[0] != '\0');
		return;
	}
	size_t total = 0, argc = 0;
	for (; argv[argc]; argc++)
		total += strlen(argv[argc]);
	check(argc >= 1 && total <= strlen(s));

	char *q = quote_words(argv);
	if (q) {
		check(config_split_words(q, &again, NULL, 0) == 0);
		size_t i = 0;
		for (; argv[i] && again[i]; i++)
			check(strcmp(argv[i], again[i]) == 0);
		check(argv[i] == NULL && again[i] == NULL);
		config_argv_free(again);
		free(q);
	}
	config_argv_free(argv);
}

static void expand(const char *s)
{
	char *x = config_expand_env(s);
	if (x && !strchr(s, '$'))
		check(strcmp(x, s) == 0);
	free(x);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = strndup((const char *)data, size); /* the text up to a NUL */
	if (!s)
		return 0;
	durations((const char *)data, size, s);
	words(s);
	expand(s);
	free(s);
	return 0;
}
