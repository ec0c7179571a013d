/*
 * config_go.c - the Go-compatible text parsers of the configuration (formats
 * layer): Go's time.ParseDuration, shell-word splitting as LiteFS's exec does
 * it (go-shellwords), and LiteFS's environment expansion (ExpandEnv). Each is
 * pure text in, value or error out: no YAML, no messages with file names, no
 * logging. config_yaml.c wraps them with the key and line of the value.
 *
 * Durations (config_parse_duration_ns, Go time.ParseDuration)
 * -----------------------------------------------------------
 *     duration = [ "-" | "+" ] ( "0" | { number unit }+ )
 *     number   = digits [ "." [ digits ] ] | "." digits
 *     unit     = "ns" | "us" | "µs" (U+00B5) | "μs" (U+03BC) | "ms" | "s" | "m" | "h"
 * Each component is computed on its own (the fraction in floating point,
 * truncated, as Go does) and the components are summed. The result must fit
 * an int64 of nanoseconds; unlike Go, a sum that would wrap past 2^64 is
 * refused rather than wrapped. config_parse_duration() is the configuration's
 * view: non-negative, in milliseconds, rounded up so that a non-zero value
 * never becomes 0. config_format_duration() prints what the dump shows ("10s",
 * "1500ms"), which the parser reads back to the same milliseconds.
 *
 * Shell words (config_split_words, github.com/mattn/go-shellwords v1.0.12)
 * -----------------------------------------------------------------------
 * The rules of Parse with its defaults (see the function). ltxfs runs the
 * command with execvp, without a shell, so the operators at which
 * go-shellwords silently stops (; & | < > and parentheses) and backticks are
 * refused instead, with a reason for the message.
 *
 * Environment expansion (config_expand_env, LiteFS ExpandEnv)
 * -----------------------------------------------------------
 * LiteFS runs os.Expand over the raw file with its own mapping function:
 *     $name     name = one of * # $ @ ! ? - 0..9, or the longest run of [A-Za-z0-9_]
 *     ${name}   name = anything up to the first '}' (one special character too)
 *     "${}" and "${" without '}' are bad syntax and expand to nothing;
 *     a '$' that starts no name stays.
 * The mapping trims the name (strings.TrimSpace), then evaluates it as an
 * expression ("A == B" or "A != B", each side a variable or a quoted literal,
 * giving "true" or "false") or looks it up with os.Getenv (unset is ""; an
 * unset HOSTNAME is the host name, as LiteFS's runMount sets it).
 *
 * Threads: every function here is reentrant. config_expand_env() reads the
 * environment (getenv, gethostname), so it must not run while another thread
 * changes the environment; ltxfs calls it from the main thread at start-up.
 */
#include "config_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NS_PER_MS 1000000ULL

/* ------------------------------------------------------------------------ */
/* Growable strings and word lists                                          */
/* ------------------------------------------------------------------------ */

void config_sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (n > SIZE_MAX / 2 - b->len - 1) {
		b->oom = true;
		return;
	}
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *q = realloc(b->p, cap);
		if (!q) {
			b->oom = true;
			return;
		}
		b->p = q;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

/* Return the NUL-terminated string (caller frees) or NULL on OOM. */
char *config_sb_finish(struct sbuf *b)
{
	config_sb_add(b, "", 0);
	if (b->oom) {
		free(b->p);
		b->p = NULL;
	}
	return b->p;
}

int config_words_push(struct words *w, struct sbuf *cur)
{
	char *s = config_sb_finish(cur);
	memset(cur, 0, sizeof(*cur));
	if (!s)
		return -ENOMEM;
	if (w->n + 2 > w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 8;
		char **v = realloc(w->v, cap * sizeof(*v));
		if (!v) {
			free(s);
			return -ENOMEM;
		}
		w->v = v;
		w->cap = cap;
	}
	w->v[w->n++] = s;
	w->v[w->n] = NULL;
	return 0;
}

/* Append s[0..n) to w. 0 or -ENOMEM. */
int config_words_add(struct words *w, const char *s, size_t n)
{
	struct sbuf cur = {0};
	config_sb_add(&cur, s, n);
	return config_words_push(w, &cur);
}

void config_argv_free(char **argv)
{
	if (!argv)
		return;
	for (char **a = argv; *a; a++)
		free(*a);
	free(argv);
}

/* ------------------------------------------------------------------------ */
/* Environment expansion (LiteFS ExpandEnv = Go os.Expand + a mapping)      */
/* ------------------------------------------------------------------------ */

/*
 * Go's os.Getenv for name[0..len): the value, or "" when unset. Go splits
 * environ at the first '=', so a name containing '=' (or an empty name) is
 * never found. HOSTNAME falls back to gethostname(): LiteFS's runMount sets
 * HOSTNAME from os.Hostname() before it reads the config. host must hold
 * HOST_NAME_MAX + 1 bytes. Returns 0 or -ENOMEM.
 */
static int env_get(const char *name, size_t len, char *host, const char **ret)
{
	*ret = "";
	if (len == 0 || memchr(name, '=', len) || memchr(name, '\0', len))
		return 0;
	char *n = strndup(name, len);
	if (!n)
		return -ENOMEM;
	const char *v = getenv(n);
	if (!v && strcmp(n, "HOSTNAME") == 0 && gethostname(host, HOST_NAME_MAX + 1) == 0) {
		host[HOST_NAME_MAX] = '\0';
		v = host;
	}
	free(n);
	if (v)
		*ret = v;
	return 0;
}

/* Go strings.TrimSpace: ASCII space plus Unicode White_Space runes. */
static const char *const unicode_spaces[] = {
    "\xc2\x85",	    "\xc2\xa0",	    "\xe1\x9a\x80", "\xe2\x80\x80", "\xe2\x80\x81",
    "\xe2\x80\x82", "\xe2\x80\x83", "\xe2\x80\x84", "\xe2\x80\x85", "\xe2\x80\x86",
    "\xe2\x80\x87", "\xe2\x80\x88", "\xe2\x80\x89", "\xe2\x80\x8a", "\xe2\x80\xa8",
    "\xe2\x80\xa9", "\xe2\x80\xaf", "\xe2\x81\x9f", "\xe3\x80\x80",
};

static bool ascii_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Width of a whitespace rune at the start (at_end false) or end of s, or 0. */
static size_t space_width(const char *s, size_t n, bool at_end)
{
	if (n == 0)
		return 0;
	if (ascii_space((unsigned char)(at_end ? s[n - 1] : s[0])))
		return 1;
	for (size_t i = 0; i < sizeof(unicode_spaces) / sizeof(unicode_spaces[0]); i++) {
		size_t w = strlen(unicode_spaces[i]);
		if (w <= n && memcmp(at_end ? s + n - w : s, unicode_spaces[i], w) == 0)
			return w;
	}
	return 0;
}

void config_trim_space(const char **s, size_t *n)
{
	size_t w;
	while ((w = space_width(*s, *n, false)) > 0) {
		*s += w;
		*n -= w;
	}
	while ((w = space_width(*s, *n, true)) > 0)
		*n -= w;
}

/* RE2's \w and \s (Perl classes, ASCII only; \s has no \v). */
static bool re_word(unsigned char c)
{
	return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	       (c >= 'A' && c <= 'Z');
}

static bool re_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r';
}

struct operand {
	bool literal;
	const char *s;
	size_t len;
};

/* The value of an operand: the literal, or the variable's value. */
static int operand_value(const struct operand *o, char *host, const char **ret, size_t *ret_len)
{
	if (o->literal) {
		*ret = o->s;
		*ret_len = o->len;
		return 0;
	}
	int rc = env_get(o->s, o->len, host, ret);
	*ret_len = strlen(*ret);
	return rc;
}

/*
 * Evaluate "A == B" / "A != B" (v already trimmed). LiteFS matches, in order,
 *   ^(\w+)\s*(==|!=)\s*'(.*)'$   ^(\w+)\s*(==|!=)\s*"(.*)"$   ^(\w+)\s*(==|!=)\s*(\w+)$
 * The quoted literal runs to the last character, which must be the same quote
 * (greedy .*), and cannot hold a newline (RE2's . does not match \n).
 * Extension (our header contract): the left side may also be a quoted literal,
 * which ends at its first closing quote. LiteFS would look such an
 * expression up as a variable name containing '=', which is always "".
 * Returns 1 and appends "true"/"false" when v is an expression, 0 when it is
 * not, -ENOMEM on OOM.
 */
static int eval_expr(struct sbuf *b, const char *v, size_t n, char *host)
{
	struct operand l, r;
	size_t i = 0;
	if (n > 0 && re_word((unsigned char)v[0])) {
		while (i < n && re_word((unsigned char)v[i]))
			i++;
		l = (struct operand){false, v, i};
	} else if (n > 0 && (v[0] == '\'' || v[0] == '"')) {
		const char *e = memchr(v + 1, v[0], n - 1);
		if (!e)
			return 0;
		l = (struct operand){true, v + 1, (size_t)(e - v - 1)};
		if (memchr(l.s, '\n', l.len))
			return 0;
		i = (size_t)(e - v) + 1;
	} else {
		return 0;
	}
	while (i < n && re_space((unsigned char)v[i]))
		i++;
	if (n - i < 2 || (v[i] != '=' && v[i] != '!') || v[i + 1] != '=')
		return 0;
	bool eq = v[i] == '=';
	i += 2;
	while (i < n && re_space((unsigned char)v[i]))
		i++;
	if (i < n && (v[i] == '\'' || v[i] == '"')) {
		if (n - i < 2 || v[n - 1] != v[i])
			return 0;
		r = (struct operand){true, v + i + 1, n - i - 2};
		if (memchr(r.s, '\n', r.len))
			return 0;
	} else {
		size_t start = i;
		while (i < n && re_word((unsigned char)v[i]))
			i++;
		if (i == start || i != n)
			return 0;
		r = (struct operand){false, v + start, i - start};
	}

	/* Both lookups may use host; copy the left value out first. */
	char lhost[HOST_NAME_MAX + 1];
	const char *lv, *rv;
	size_t llen, rlen;
	if (operand_value(&l, lhost, &lv, &llen) < 0 || operand_value(&r, host, &rv, &rlen) < 0)
		return -ENOMEM;
	bool same = llen == rlen && memcmp(lv, rv, llen) == 0;
	const char *res = (same == eq) ? "true" : "false";
	config_sb_add(b, res, strlen(res));
	return 1;
}

/* LiteFS's mapping function: TrimSpace, then an expression or a variable. */
static void expand_name(struct sbuf *b, const char *name, size_t n)
{
	char host[HOST_NAME_MAX + 1];
	const char *v;
	config_trim_space(&name, &n);
	int rc = eval_expr(b, name, n, host);
	if (rc < 0) {
		b->oom = true;
		return;
	}
	if (rc > 0)
		return;
	if (env_get(name, n, host, &v) < 0) {
		b->oom = true;
		return;
	}
	config_sb_add(b, v, strlen(v));
}

static bool shell_special(unsigned char c)
{
	return strchr("*#$@!?-0123456789", c) != NULL && c != '\0';
}

/*
 * Go's os.getShellName on s[0..n), n >= 1: (*name, *len) is the name (len 0 for
 * none) and the return value is the number of bytes consumed after '$'.
 */
static size_t shell_name(const char *s, size_t n, const char **name, size_t *len)
{
	*name = s;
	*len = 0;
	if (s[0] == '{') {
		if (n > 2 && shell_special((unsigned char)s[1]) && s[2] == '}') {
			*name = s + 1;
			*len = 1;
			return 3;
		}
		for (size_t i = 1; i < n; i++) {
			if (s[i] == '}') {
				if (i == 1)
					return 2; /* "${}": bad syntax, eaten */
				*name = s + 1;
				*len = i - 1;
				return i + 1;
			}
		}
		return 1; /* "${" without '}': bad syntax, "${" eaten */
	}
	if (shell_special((unsigned char)s[0])) {
		*len = 1;
		return 1;
	}
	size_t i = 0;
	while (i < n && re_word((unsigned char)s[i]))
		i++;
	*len = i;
	return i;
}

char *config_expand_env(const char *text)
{
	struct sbuf b = {0};
	if (!text)
		text = "";
	size_t n = strlen(text), i = 0;

	for (size_t j = 0; j < n; j++) {
		if (text[j] != '$' || j + 1 >= n)
			continue;
		config_sb_add(&b, text + i, j - i);
		const char *name;
		size_t len;
		size_t w = shell_name(text + j + 1, n - j - 1, &name, &len);
		if (len > 0)
			expand_name(&b, name, len);
		else if (w == 0)
			config_sb_add(&b, "$", 1); /* '$' not followed by a name stays */
		j += w;
		i = j + 1;
	}
	config_sb_add(&b, text + i, n - i);
	return config_sb_finish(&b);
}

/* ------------------------------------------------------------------------ */
/* Durations (Go time.ParseDuration)                                        */
/* ------------------------------------------------------------------------ */

static uint64_t duration_unit(const char *u, size_t n)
{
	static const struct {
		const char *name;
		uint64_t ns;
	} units[] = {
	    {"ns", 1ULL},
	    {"us", 1000ULL},
	    {"\xc2\xb5s", 1000ULL}, /* U+00B5 MICRO SIGN */
	    {"\xce\xbcs", 1000ULL}, /* U+03BC GREEK SMALL LETTER MU */
	    {"ms", 1000000ULL},
	    {"s", 1000000000ULL},
	    {"m", 60ULL * 1000000000ULL},
	    {"h", 3600ULL * 1000000000ULL},
	};
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (strlen(units[i].name) == n && memcmp(units[i].name, u, n) == 0)
			return units[i].ns;
	return 0;
}

/*
 * time.ParseDuration on s[0..n): [-+]?([0-9]*(\.[0-9]*)?[a-z]+)+ or "0".
 * Same overflow rules as Go (the result must fit an int64 of nanoseconds),
 * except that a sum wrapping past 2^64 is refused instead of wrapping.
 * 0 or -EINVAL.
 */
int config_parse_duration_ns(const char *s, size_t n, int64_t *ret_ns)
{
	const uint64_t lim = 1ULL << 63;
	uint64_t d = 0;
	bool neg = false;
	size_t i = 0;

	if (n > 0 && (s[0] == '-' || s[0] == '+')) {
		neg = s[0] == '-';
		i++;
	}
	if (n - i == 1 && s[i] == '0') {
		*ret_ns = 0;
		return 0;
	}
	if (i == n)
		return -EINVAL;
	while (i < n) {
		uint64_t v = 0, f = 0;
		double scale = 1;
		if (s[i] != '.' && !is_digit(s[i]))
			return -EINVAL;
		size_t start = i;
		for (; i < n && is_digit(s[i]); i++) {
			if (v > lim / 10)
				return -EINVAL;
			v = v * 10 + (uint64_t)(s[i] - '0');
			if (v > lim)
				return -EINVAL;
		}
		bool pre = i != start, post = false;
		if (i < n && s[i] == '.') {
			bool overflow = false;
			start = ++i;
			for (; i < n && is_digit(s[i]); i++) {
				if (overflow)
					continue;
				if (f > (lim - 1) / 10) {
					overflow = true;
					continue;
				}
				uint64_t y = f * 10 + (uint64_t)(s[i] - '0');
				if (y > lim) {
					overflow = true;
					continue;
				}
				f = y;
				scale *= 10;
			}
			post = i != start;
		}
		if (!pre && !post)
			return -EINVAL;
		start = i;
		while (i < n && s[i] != '.' && !is_digit(s[i]))
			i++;
		uint64_t unit = duration_unit(s + start, i - start);
		if (unit == 0)
			return -EINVAL; /* missing or unknown unit */
		if (v > lim / unit)
			return -EINVAL;
		v *= unit;
		if (f > 0) {
			v += (uint64_t)((double)f * ((double)unit / scale));
			if (v > lim)
				return -EINVAL;
		}
		if (v > lim - d)
			return -EINVAL;
		d += v;
	}
	if (neg) {
		*ret_ns = d == lim ? INT64_MIN : -(int64_t)d;
		return 0;
	}
	if (d > lim - 1)
		return -EINVAL;
	*ret_ns = (int64_t)d;
	return 0;
}

/* Nanoseconds to milliseconds, rounding up so a non-zero value stays non-zero. */
int64_t config_ns_to_ms(int64_t ns)
{
	return (int64_t)(((uint64_t)ns + NS_PER_MS - 1) / NS_PER_MS);
}

int config_parse_duration(const char *s, int64_t *ret_ms)
{
	int64_t ns;
	if (!s || config_parse_duration_ns(s, strlen(s), &ns) < 0 || ns < 0)
		return -EINVAL;
	*ret_ms = config_ns_to_ms(ns);
	return 0;
}

char *config_format_duration(int64_t ms, char *buf, size_t len)
{
	if (ms % 1000 == 0)
		snprintf(buf, len, "%llds", (long long)(ms / 1000));
	else
		snprintf(buf, len, "%lldms", (long long)ms);
	return buf;
}

/* ------------------------------------------------------------------------ */
/* exec: shell-word splitting (github.com/mattn/go-shellwords v1.0.12)      */
/* ------------------------------------------------------------------------ */

static int refuse(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Write the reason to why (when given) and return -EINVAL. */
static int refuse(char *why, size_t whylen, const char *fmt, ...)
{
	if (why && whylen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/*
 * Split s into a NULL-terminated argv (caller frees with config_argv_free), the way
 * go-shellwords' Parse does with its defaults: words are separated by
 * unquoted space, tab, CR or LF; '...' is literal; "..." keeps spaces; a
 * backslash outside single quotes (inside double quotes too) makes the next
 * character literal and is dropped; adjacent pieces join; "" is an empty
 * argument; '$' is literal (the whole file was expanded already). Where
 * go-shellwords would silently stop at an unquoted ; & | < > (dropping the
 * rest of the command) or keep backticks, we refuse: there is no shell.
 */
int config_split_words(const char *s, char ***ret_argv, char *why, size_t whylen)
{
	struct words w = {0};
	struct sbuf cur = {0};
	bool have = false, sq = false, dq = false, esc = false;
	int rc = 0;

	if (why && whylen)
		why[0] = '\0';
	for (const char *c = s; *c; c++) {
		if (esc) {
			config_sb_add(&cur, c, 1);
			esc = false;
			have = true;
			continue;
		}
		if (*c == '\\' && !sq) {
			esc = true;
			continue;
		}
		if (!sq && !dq && (*c == ' ' || *c == '\t' || *c == '\r' || *c == '\n')) {
			if (have) {
				rc = config_words_push(&w, &cur);
				if (rc)
					goto out;
				have = false;
			}
			continue;
		}
		if (*c == '"' && !sq) {
			have = have || dq;
			dq = !dq;
			continue;
		}
		if (*c == '\'' && !dq) {
			have = have || sq;
			sq = !sq;
			continue;
		}
		if (!sq && !dq && strchr(";&|<>()`", *c)) {
			rc = refuse(why, whylen,
				    "'%c' is shell syntax, but the command runs without a shell "
				    "(quote it, or run sh -c '...')",
				    *c);
			goto out;
		}
		config_sb_add(&cur, c, 1);
		have = true;
	}
	if (esc || sq || dq) {
		rc = refuse(why, whylen, "unterminated %s in the command",
			    esc ? "backslash escape" : "quote");
		goto out;
	}
	if (have && (rc = config_words_push(&w, &cur)) < 0)
		goto out;
	if (cur.oom) {
		rc = -ENOMEM;
		goto out;
	}
	if (w.n == 0) {
		rc = refuse(why, whylen, "the command is empty");
		goto out;
	}
	*ret_argv = w.v;
	w.v = NULL;
out:
	if (rc == -ENOMEM)
		refuse(why, whylen, "out of memory");
	free(cur.p);
	config_argv_free(w.v);
	return rc;
}
