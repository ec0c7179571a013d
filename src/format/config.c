/*
 * config.c - ltxfs.yml / litefs.yml: schema, defaults, validation, and
 * LiteFS's environment expansion (formats layer: no logging, no threads).
 *
 * Pipeline
 * --------
 * config_load() reads the file (at most CONFIG_MAX_BYTES), runs
 * config_expand_env() over the raw text when asked (LiteFS does this before
 * YAML sees the bytes, so expansion also happens inside comments and quoted
 * strings), and hands the result to config_parse(). config_parse() loads the
 * first YAML document with libyaml's document API (yaml_parser_load) and walks
 * the node tree against the static table keys[] below. Later documents in the
 * stream are ignored, as yaml.v3's Decoder.Decode does.
 *
 * Schema handling
 * ---------------
 * LiteFS decodes litefs.yml with gopkg.in/yaml.v3 into a Go struct with
 * KnownFields(true). We reproduce what that decoder accepts, key by key:
 *
 *  - Every mapping key must be a scalar naming an entry of keys[] under its
 *    parent. Keys are case-sensitive. Unknown keys fail with "unknown key
 *    'a.b'". LiteFS keys that ltxfs does not implement yet (K_LITEFS, and whole
 *    sections such as proxy: K_LITEFS_SECTION) fail with "key 'a.b' is a
 *    LiteFS setting that ltxfs does not support yet", whatever their value.
 *    A key repeated in one mapping fails, as in yaml.v3. Merge keys ('<<')
 *    are not supported and are reported as unknown keys.
 *  - A null value (empty, ~, null, Null, NULL) leaves the current value in
 *    place, as yaml.v3 does for non-pointer fields: "candidate: ${UNSET}" keeps
 *    the default true. For exec, null clears the list (yaml.v3 sets a nil
 *    slice).
 *  - Strings (K_STRING) accept any non-null scalar and keep its text, so
 *    "hostname: 123" is the string "123".
 *  - Booleans (K_BOOL) accept plain true/True/TRUE/false/False/FALSE, plus, in
 *    any scalar style, yaml.v3's YAML 1.1 compatibility forms y/Y/yes/Yes/YES/
 *    on/On/ON and n/N/no/No/NO/off/Off/OFF. A quoted "true" is a string and is
 *    refused, exactly like yaml.v3. Numbers are refused.
 *  - Durations (K_DURATION) are Go time.ParseDuration strings. Negative values
 *    are refused. yaml.v3 refuses a plain 0 (it resolves to an integer); we
 *    accept it because the LiteFS docs write "retention: 0".
 *  - exec is a scalar string (split with go-shellwords rules, see split_cmd)
 *    or a sequence of {cmd, if-candidate} mappings.
 *  - lease.etcd.endpoints (K_URL_LIST) is a sequence of URL strings or one
 *    string of comma-separated URLs (see get_url_list).
 *  - Scalars with an explicit standard tag (!!bool, !!int, !!float, !!null)
 *    must resolve to that type. libyaml's document API cannot tell an explicit
 *    !!str from an untagged scalar, so "!!str true" reads like "true".
 *
 * Checks that need a single value (log.format, lease.type, http.addr, ...)
 * run as the value is read, so their messages carry its line. Whole-file
 * checks (required keys, fuse.dir vs data.dir, lease.consul / lease.etcd keys
 * against lease.type, lease.promote) and derived defaults (lease.hostname,
 * lease.advertise-url, lease.etcd.key) run in finish() afterwards.
 *
 * Every message starts with "<path>: ", then "line N: " when a node is known,
 * then names the dotted key in single quotes. Values taken from the input are
 * quoted, truncated and stripped of control characters.
 *
 * config_parse() works on a deep copy of cfg and only replaces cfg on
 * success, so a failed parse leaves the caller's config untouched.
 */
#include "ltxfs/config.h"
#include "ltxfs/hostport.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#ifndef HOST_NAME_MAX
#define HOST_NAME_MAX 255
#endif

#define CONFIG_MAX_BYTES   (1024 * 1024) /* a config file larger than this is refused */
#define NS_PER_MS	   1000000ULL
#define SHOW_MAX	   48 /* bytes of an input value quoted in a message */
#define DOTTED_MAX	   160
#define DEFAULT_DATA_DIR   "/var/lib/litefs"
#define DEFAULT_HTTP_ADDR  ":20202"
#define DEFAULT_LOG_FORMAT "text"
#define DEFAULT_ETCD_KEY   "ltxfs/primary"

/* ------------------------------------------------------------------------ */
/* Growable string                                                          */
/* ------------------------------------------------------------------------ */

struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
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
static char *sb_finish(struct sbuf *b)
{
	sb_add(b, "", 0);
	if (b->oom) {
		free(b->p);
		b->p = NULL;
	}
	return b->p;
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

static void trim_space(const char **s, size_t *n)
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
	sb_add(b, res, strlen(res));
	return 1;
}

/* LiteFS's mapping function: TrimSpace, then an expression or a variable. */
static void expand_name(struct sbuf *b, const char *name, size_t n)
{
	char host[HOST_NAME_MAX + 1];
	const char *v;
	trim_space(&name, &n);
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
	sb_add(b, v, strlen(v));
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
		sb_add(&b, text + i, j - i);
		const char *name;
		size_t len;
		size_t w = shell_name(text + j + 1, n - j - 1, &name, &len);
		if (len > 0)
			expand_name(&b, name, len);
		else if (w == 0)
			sb_add(&b, "$", 1); /* '$' not followed by a name stays */
		j += w;
		i = j + 1;
	}
	sb_add(&b, text + i, n - i);
	return sb_finish(&b);
}

/* ------------------------------------------------------------------------ */
/* Durations (Go time.ParseDuration)                                        */
/* ------------------------------------------------------------------------ */

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

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
static int go_parse_duration(const char *s, size_t n, int64_t *ret_ns)
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
static int64_t ns_to_ms(int64_t ns)
{
	return (int64_t)(((uint64_t)ns + NS_PER_MS - 1) / NS_PER_MS);
}

int config_parse_duration(const char *s, int64_t *ret_ms)
{
	int64_t ns;
	if (!s || go_parse_duration(s, strlen(s), &ns) < 0 || ns < 0)
		return -EINVAL;
	*ret_ms = ns_to_ms(ns);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Lifecycle                                                                */
/* ------------------------------------------------------------------------ */

static void free_argv(char **argv)
{
	if (!argv)
		return;
	for (char **a = argv; *a; a++)
		free(*a);
	free(argv);
}

static void free_exec(struct config_exec *list, size_t n)
{
	for (size_t i = 0; list && i < n; i++)
		free_argv(list[i].argv);
	free(list);
}

int config_init(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->exit_on_error = true;
	cfg->data.compress = true;
	cfg->data.retention_ms = 10 * 60 * 1000;
	cfg->data.retention_monitor_interval_ms = 60 * 1000;
	cfg->lease.candidate = true;
	cfg->lease.reconnect_delay_ms = 1000;
	cfg->lease.demote_delay_ms = 10 * 1000;
	cfg->lease.consul.ttl_ms = 10 * 1000;
	cfg->lease.consul.lock_delay_ms = 1000;
	cfg->lease.etcd.ttl_ms = 10 * 1000;
	cfg->data.dir = strdup(DEFAULT_DATA_DIR);
	cfg->http.addr = strdup(DEFAULT_HTTP_ADDR);
	cfg->log.format = strdup(DEFAULT_LOG_FORMAT);
	if (!cfg->data.dir || !cfg->http.addr || !cfg->log.format) {
		config_release(cfg);
		return -ENOMEM;
	}
	return 0;
}

void config_release(struct config *cfg)
{
	if (!cfg)
		return;
	free(cfg->path);
	free_exec(cfg->exec, cfg->n_exec);
	free(cfg->fuse.dir);
	free(cfg->data.dir);
	free(cfg->http.addr);
	free(cfg->http.token);
	free(cfg->lease.type);
	free(cfg->lease.hostname);
	free(cfg->lease.advertise_url);
	free(cfg->lease.consul.url);
	free(cfg->lease.consul.key);
	free_argv(cfg->lease.etcd.endpoints);
	free(cfg->lease.etcd.key);
	free(cfg->lease.etcd.username);
	free(cfg->lease.etcd.password);
	free(cfg->log.format);
	memset(cfg, 0, sizeof(*cfg));
}

static int dup_str(char **dst, const char *src)
{
	*dst = NULL;
	if (src && !(*dst = strdup(src)))
		return -ENOMEM;
	return 0;
}

static int dup_argv(char ***dst, char **src)
{
	size_t n = 0;
	*dst = NULL;
	if (!src)
		return 0;
	while (src[n])
		n++;
	char **v = calloc(n + 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		if (!(v[i] = strdup(src[i]))) {
			free_argv(v);
			return -ENOMEM;
		}
	}
	*dst = v;
	return 0;
}

/* Deep copy src into dst (dst is overwritten). 0 or -ENOMEM (dst released). */
static int config_copy(struct config *dst, const struct config *src)
{
	int rc = 0;
	*dst = *src;
	dst->path = dst->fuse.dir = dst->data.dir = dst->http.addr = dst->http.token = NULL;
	dst->lease.type = dst->lease.hostname = dst->lease.advertise_url = NULL;
	dst->lease.consul.url = dst->lease.consul.key = NULL;
	dst->lease.etcd.endpoints = NULL;
	dst->lease.etcd.key = dst->lease.etcd.username = dst->lease.etcd.password = NULL;
	dst->log.format = NULL;
	dst->exec = NULL;
	dst->n_exec = 0;

	if (dup_str(&dst->path, src->path) || dup_str(&dst->fuse.dir, src->fuse.dir) ||
	    dup_str(&dst->data.dir, src->data.dir) || dup_str(&dst->http.addr, src->http.addr) ||
	    dup_str(&dst->http.token, src->http.token) ||
	    dup_str(&dst->lease.type, src->lease.type) ||
	    dup_str(&dst->lease.hostname, src->lease.hostname) ||
	    dup_str(&dst->lease.advertise_url, src->lease.advertise_url) ||
	    dup_str(&dst->lease.consul.url, src->lease.consul.url) ||
	    dup_str(&dst->lease.consul.key, src->lease.consul.key) ||
	    dup_argv(&dst->lease.etcd.endpoints, src->lease.etcd.endpoints) ||
	    dup_str(&dst->lease.etcd.key, src->lease.etcd.key) ||
	    dup_str(&dst->lease.etcd.username, src->lease.etcd.username) ||
	    dup_str(&dst->lease.etcd.password, src->lease.etcd.password) ||
	    dup_str(&dst->log.format, src->log.format)) {
		rc = -ENOMEM;
		goto out;
	}
	if (src->n_exec) {
		dst->exec = calloc(src->n_exec, sizeof(*dst->exec));
		if (!dst->exec) {
			rc = -ENOMEM;
			goto out;
		}
		for (size_t i = 0; i < src->n_exec; i++) {
			dst->n_exec++;
			dst->exec[i].if_candidate = src->exec[i].if_candidate;
			rc = dup_argv(&dst->exec[i].argv, src->exec[i].argv);
			if (rc)
				goto out;
		}
	}
out:
	if (rc)
		config_release(dst);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* Messages                                                                 */
/* ------------------------------------------------------------------------ */

struct pctx {
	const char *path;
	char *err;
	size_t errlen;
	yaml_document_t *doc;
	struct config *cfg;	/* the working copy */
	const yaml_node_t *key; /* the key whose value is being read */
	/* The first key given under lease.consul / lease.etcd, and lease.promote,
	 * with their paths: finish() checks them against lease.type. */
	const yaml_node_t *consul_key, *etcd_key, *promote_key;
	const char *consul_path, *etcd_path;
};

static unsigned long node_line(const yaml_node_t *n)
{
	return (unsigned long)n->start_mark.line + 1;
}

static int fail(struct pctx *p, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct pctx *p, const yaml_node_t *n, const char *fmt, ...)
{
	if (p->err && p->errlen) {
		int w = n ? snprintf(p->err, p->errlen, "%s: line %lu: ", p->path, node_line(n))
			  : snprintf(p->err, p->errlen, "%s: ", p->path);
		if (w >= 0 && (size_t)w < p->errlen) {
			va_list ap;
			va_start(ap, fmt);
			vsnprintf(p->err + w, p->errlen - (size_t)w, fmt, ap);
			va_end(ap);
		}
	}
	return -EINVAL;
}

/*
 * Where to point at for a bad value: the value itself when it is a scalar;
 * its key otherwise, because a block collection starts on the line after it.
 */
static const yaml_node_t *at(const struct pctx *p, const yaml_node_t *v)
{
	return v->type == YAML_SCALAR_NODE || !p->key ? v : p->key;
}

/* Copy at most SHOW_MAX bytes of s into out, escaping control characters. */
static void sanitize(char *out, size_t outlen, const char *s, size_t n)
{
	size_t w = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char tmp[8];
		if (c == '\n')
			strcpy(tmp, "\\n");
		else if (c == '\t')
			strcpy(tmp, "\\t");
		else if (c < 0x20 || c == 0x7f)
			snprintf(tmp, sizeof(tmp), "\\x%02x", c);
		else
			tmp[0] = (char)c, tmp[1] = '\0';
		size_t tl = strlen(tmp);
		if (i >= SHOW_MAX || w + tl + 4 > outlen) {
			memcpy(out + w, "...", 3);
			w += 3;
			break;
		}
		memcpy(out + w, tmp, tl);
		w += tl;
	}
	out[w] = '\0';
}

struct shown {
	char s[SHOW_MAX * 2];
};

/* "'value'" for a scalar, "a mapping" or "a list" otherwise. */
static const char *show(const yaml_node_t *n, struct shown *sh)
{
	if (n->type == YAML_MAPPING_NODE)
		return "a mapping";
	if (n->type == YAML_SEQUENCE_NODE)
		return "a list";
	char tmp[SHOW_MAX * 2 - 2];
	sanitize(tmp, sizeof(tmp), (const char *)n->data.scalar.value, n->data.scalar.length);
	snprintf(sh->s, sizeof(sh->s), "'%s'", tmp);
	return sh->s;
}

static int syntax_error(struct pctx *p, const yaml_parser_t *ps, const char *text, size_t len)
{
	unsigned long line, col;
	if (ps->error == YAML_MEMORY_ERROR) {
		if (p->err && p->errlen)
			snprintf(p->err, p->errlen, "%s: out of memory", p->path);
		return -ENOMEM;
	}
	if (ps->error == YAML_READER_ERROR) {
		/* Reader errors carry a byte offset, not a mark. */
		size_t off = ps->problem_offset < len ? ps->problem_offset : len, bol = 0;
		line = 1;
		for (size_t i = 0; i < off; i++) {
			if (text[i] == '\n') {
				line++;
				bol = i + 1;
			}
		}
		col = (unsigned long)(off - bol) + 1;
	} else {
		line = (unsigned long)ps->problem_mark.line + 1;
		col = (unsigned long)ps->problem_mark.column + 1;
	}
	const char *problem = ps->problem ? ps->problem : "invalid YAML";
	if (p->err && p->errlen) {
		if (ps->context)
			snprintf(p->err, p->errlen,
				 "%s: line %lu, column %lu: YAML syntax error: %s (%s at line %lu, "
				 "column %lu)",
				 p->path, line, col, problem, ps->context,
				 (unsigned long)ps->context_mark.line + 1,
				 (unsigned long)ps->context_mark.column + 1);
		else
			snprintf(p->err, p->errlen,
				 "%s: line %lu, column %lu: YAML syntax error: %s", p->path, line,
				 col, problem);
	}
	return -EINVAL;
}

/* ------------------------------------------------------------------------ */
/* Scalar resolution (yaml.v3 semantics)                                    */
/* ------------------------------------------------------------------------ */

enum skind { SK_NULL, SK_BOOL, SK_INT, SK_FLOAT, SK_STR };

static bool text_is(const char *v, size_t n, const char *s)
{
	return strlen(s) == n && memcmp(v, s, n) == 0;
}

static bool text_in(const char *v, size_t n, const char *const *list)
{
	for (; *list; list++)
		if (text_is(v, n, *list))
			return true;
	return false;
}

static bool all_of(const char *s, size_t n, const char *set)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] == '\0' || !strchr(set, s[i]))
			return false;
	return true;
}

/* yaml.v3 ints: strconv.ParseInt(s, 0, 64) after dropping '_' (range ignored). */
static bool looks_int(const char *s, size_t n)
{
	if (n > 0 && (s[0] == '-' || s[0] == '+'))
		s++, n--;
	if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		return all_of(s + 2, n - 2, "0123456789abcdefABCDEF");
	if (n > 2 && s[0] == '0' && (s[1] == 'o' || s[1] == 'O'))
		return all_of(s + 2, n - 2, "01234567");
	if (n > 2 && s[0] == '0' && (s[1] == 'b' || s[1] == 'B'))
		return all_of(s + 2, n - 2, "01");
	return all_of(s, n, "0123456789");
}

/* yaml.v3's yamlStyleFloat: ^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$ */
static bool looks_float(const char *s, size_t n)
{
	size_t i = 0, d = 0;
	if (i < n && (s[i] == '-' || s[i] == '+'))
		i++;
	if (i < n && s[i] == '.') {
		for (i++; i < n && is_digit(s[i]); i++)
			d++;
		if (d == 0)
			return false;
	} else {
		for (; i < n && is_digit(s[i]); i++)
			d++;
		if (d == 0)
			return false;
		if (i < n && s[i] == '.')
			for (i++; i < n && is_digit(s[i]); i++)
				;
	}
	if (i < n && (s[i] == 'e' || s[i] == 'E')) {
		i++;
		if (i < n && (s[i] == '-' || s[i] == '+'))
			i++;
		for (d = 0; i < n && is_digit(s[i]); i++)
			d++;
		if (d == 0)
			return false;
	}
	return i == n;
}

/* What a plain scalar resolves to (yaml.v3 resolve(), timestamps read as strings). */
static enum skind implicit_kind(const char *v, size_t n, bool *b)
{
	static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
	static const char *const trues[] = {"true", "True", "TRUE", NULL};
	static const char *const falses[] = {"false", "False", "FALSE", NULL};
	static const char *const floats[] = {".nan",  ".NaN",  ".NAN",	".inf",	 ".Inf",
					     ".INF",  "+.inf", "+.Inf", "+.INF", "-.inf",
					     "-.Inf", "-.INF", NULL};
	char buf[128];
	size_t m = 0;

	if (text_in(v, n, nulls))
		return SK_NULL;
	if (text_in(v, n, trues) || text_in(v, n, falses)) {
		*b = text_in(v, n, trues);
		return SK_BOOL;
	}
	if (text_in(v, n, floats))
		return SK_FLOAT;
	if (n == 0 || !(is_digit(v[0]) || v[0] == '-' || v[0] == '+' || v[0] == '.'))
		return SK_STR;
	for (size_t i = 0; i < n; i++) {
		if (v[i] == '_')
			continue;
		if (m == sizeof(buf))
			return SK_STR;
		buf[m++] = v[i];
	}
	if (looks_int(buf, m))
		return SK_INT;
	if (looks_float(buf, m))
		return SK_FLOAT;
	return SK_STR;
}

/* yaml.v3 accepts these YAML 1.1 forms when decoding into a bool. */
static bool yaml11_bool(const char *v, size_t n, bool *b)
{
	static const char *const yes[] = {"y", "Y", "yes", "Yes", "YES", "on", "On", "ON", NULL};
	static const char *const no[] = {"n", "N", "no", "No", "NO", "off", "Off", "OFF", NULL};
	if (text_in(v, n, yes)) {
		*b = true;
		return true;
	}
	if (text_in(v, n, no)) {
		*b = false;
		return true;
	}
	return false;
}

static bool default_tag(const yaml_node_t *n)
{
	return !n->tag || strcmp((const char *)n->tag, YAML_STR_TAG) == 0;
}

/* Resolve scalar n. Fails when an explicit standard tag does not fit the value. */
static int scalar_kind(struct pctx *p, const yaml_node_t *n, const char *dotted, enum skind *ret,
		       bool *b)
{
	const char *v = (const char *)n->data.scalar.value;
	size_t len = n->data.scalar.length;
	const char *tag = (const char *)n->tag, *want;
	struct shown sh;

	*b = false;
	if (default_tag(n)) {
		*ret = n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? implicit_kind(v, len, b)
								       : SK_STR;
		return 0;
	}
	enum skind k = implicit_kind(v, len, b);
	if (strcmp(tag, YAML_BOOL_TAG) == 0) {
		want = "!!bool";
		if (k == SK_BOOL)
			goto ok;
	} else if (strcmp(tag, YAML_INT_TAG) == 0) {
		want = "!!int";
		if (k == SK_INT)
			goto ok;
	} else if (strcmp(tag, YAML_FLOAT_TAG) == 0) {
		want = "!!float";
		if (k == SK_FLOAT || k == SK_INT) {
			k = SK_FLOAT;
			goto ok;
		}
	} else if (strcmp(tag, YAML_NULL_TAG) == 0) {
		want = "!!null";
		if (k == SK_NULL)
			goto ok;
	} else {
		k = SK_STR; /* other tags: the text, as yaml.v3 does */
		goto ok;
	}
	return fail(p, n, "key '%s': cannot read %s as %s", dotted, show(n, &sh), want);
ok:
	*ret = k;
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Typed readers                                                            */
/* ------------------------------------------------------------------------ */

static int get_bool(struct pctx *p, const yaml_node_t *n, const char *dotted, bool *dst)
{
	struct shown sh;
	enum skind k;
	bool b;
	if (n->type != YAML_SCALAR_NODE)
		return fail(p, at(p, n), "key '%s': expected a boolean, got %s", dotted,
			    show(n, &sh));
	int rc = scalar_kind(p, n, dotted, &k, &b);
	if (rc)
		return rc;
	if (k == SK_NULL)
		return 0;
	if (k == SK_BOOL || (k == SK_STR && yaml11_bool((const char *)n->data.scalar.value,
							n->data.scalar.length, &b))) {
		*dst = b;
		return 1;
	}
	return fail(p, n, "key '%s': expected a boolean (true or false), got %s", dotted,
		    show(n, &sh));
}

/*
 * The typed readers return 1 when they stored a value, 0 for a null value
 * (the current value stays, as with yaml.v3), or a negative errno.
 */

/* A string value; *dst is replaced (and freed) unless the value is null. */
static int get_string(struct pctx *p, const yaml_node_t *n, const char *dotted, char **dst)
{
	struct shown sh;
	enum skind k;
	bool b;
	if (n->type != YAML_SCALAR_NODE)
		return fail(p, at(p, n), "key '%s': expected a string, got %s", dotted,
			    show(n, &sh));
	int rc = scalar_kind(p, n, dotted, &k, &b);
	if (rc)
		return rc;
	if (k == SK_NULL)
		return 0;
	const char *v = (const char *)n->data.scalar.value;
	size_t len = n->data.scalar.length;
	if (memchr(v, '\0', len))
		return fail(p, n, "key '%s': the value contains a NUL character", dotted);
	char *s = strndup(v, len);
	if (!s)
		return -ENOMEM;
	free(*dst);
	*dst = s;
	return 1;
}

static int get_duration(struct pctx *p, const yaml_node_t *n, const char *dotted, int64_t *dst)
{
	struct shown sh;
	enum skind k;
	bool b;
	int64_t ns;
	if (n->type != YAML_SCALAR_NODE)
		return fail(p, at(p, n), "key '%s': expected a duration, got %s", dotted,
			    show(n, &sh));
	int rc = scalar_kind(p, n, dotted, &k, &b);
	if (rc)
		return rc;
	if (k == SK_NULL)
		return 0;
	if (go_parse_duration((const char *)n->data.scalar.value, n->data.scalar.length, &ns) < 0)
		return fail(p, n,
			    "key '%s': invalid duration %s (write a number and a unit, e.g. "
			    "10m, 1h30m, 1.5s, 250ms)",
			    dotted, show(n, &sh));
	if (ns < 0)
		return fail(p, n, "key '%s': negative duration %s is not allowed", dotted,
			    show(n, &sh));
	*dst = ns_to_ms(ns);
	return 1;
}

/* ------------------------------------------------------------------------ */
/* exec: shell-word splitting (github.com/mattn/go-shellwords v1.0.12)      */
/* ------------------------------------------------------------------------ */

struct words {
	char **v;
	size_t n, cap;
};

static int words_push(struct words *w, struct sbuf *cur)
{
	char *s = sb_finish(cur);
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

/*
 * Split s into a NULL-terminated argv (caller frees with free_argv), the way
 * go-shellwords' Parse does with its defaults: words are separated by
 * unquoted space, tab, CR or LF; '...' is literal; "..." keeps spaces; a
 * backslash outside single quotes (inside double quotes too) makes the next
 * character literal and is dropped; adjacent pieces join; "" is an empty
 * argument; '$' is literal (the whole file was expanded already). Where
 * go-shellwords would silently stop at an unquoted ; & | < > (dropping the
 * rest of the command) or keep backticks, we refuse: there is no shell.
 */
static int split_cmd(struct pctx *p, const yaml_node_t *n, const char *dotted, const char *s,
		     char ***ret)
{
	struct words w = {0};
	struct sbuf cur = {0};
	bool have = false, sq = false, dq = false, esc = false;
	int rc = 0;

	for (const char *c = s; *c; c++) {
		if (esc) {
			sb_add(&cur, c, 1);
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
				rc = words_push(&w, &cur);
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
			rc = fail(p, n,
				  "key '%s': '%c' is shell syntax, but the command runs without a "
				  "shell (quote it, or run sh -c '...')",
				  dotted, *c);
			goto out;
		}
		sb_add(&cur, c, 1);
		have = true;
	}
	if (esc || sq || dq) {
		rc = fail(p, n, "key '%s': unterminated %s in the command", dotted,
			  esc ? "backslash escape" : "quote");
		goto out;
	}
	if (have && (rc = words_push(&w, &cur)) < 0)
		goto out;
	if (cur.oom) {
		rc = -ENOMEM;
		goto out;
	}
	if (w.n == 0) {
		rc = fail(p, n, "key '%s': the command is empty", dotted);
		goto out;
	}
	*ret = w.v;
	w.v = NULL;
out:
	free(cur.p);
	free_argv(w.v);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* URL lists (lease.etcd.endpoints)                                         */
/* ------------------------------------------------------------------------ */

/* s[0..n) starts with http:// or https:// (any case). */
static bool http_scheme(const char *s, size_t n)
{
	return (n >= 7 && strncasecmp(s, "http://", 7) == 0) ||
	       (n >= 8 && strncasecmp(s, "https://", 8) == 0);
}

/* Append s[0..n) to w. 0 or -ENOMEM. */
static int words_add(struct words *w, const char *s, size_t n)
{
	struct sbuf cur = {0};
	sb_add(&cur, s, n);
	return words_push(w, &cur);
}

/* Split s[0..left) at commas into w; each URL is trimmed and must be http(s). */
static int split_urls(struct pctx *p, const yaml_node_t *v, const char *dotted, const char *s,
		      size_t left, struct words *w)
{
	struct shown sh;
	char item[SHOW_MAX * 2];
	int rc;

	trim_space(&s, &left);
	for (bool more = left > 0; more;) {
		const char *u = s, *comma = memchr(s, ',', left);
		size_t n = comma ? (size_t)(comma - s) : left;
		if ((more = comma != NULL)) {
			left -= n + 1;
			s = comma + 1;
		}
		trim_space(&u, &n);
		if (n == 0)
			return fail(p, v, "key '%s': empty URL in the comma-separated list %s",
				    dotted, show(v, &sh));
		if (!http_scheme(u, n)) {
			sanitize(item, sizeof(item), u, n);
			return fail(p, v,
				    "key '%s': expected http:// or https:// URLs separated by "
				    "commas, got '%s'",
				    dotted, item);
		}
		if ((rc = words_add(w, u, n)) < 0)
			return rc;
	}
	return 0;
}

/* Item idx of a URL list: one http(s) URL. */
static int url_item(struct pctx *p, const yaml_node_t *e, const char *dotted, size_t idx,
		    struct words *w)
{
	struct shown sh;
	char name[DOTTED_MAX];
	char *u = NULL;

	snprintf(name, sizeof(name), "%s[%zu]", dotted, idx);
	int rc = get_string(p, e, name, &u);
	if (rc == 0 || (rc > 0 && !http_scheme(u, strlen(u))))
		rc = fail(p, e, "key '%s': expected an http:// or https:// URL, got %s", name,
			  show(e, &sh));
	else if (rc > 0 && strchr(u, ','))
		rc = fail(p, e,
			  "key '%s': one URL per list item, got %s (write a comma-separated "
			  "string without the list)",
			  name, show(e, &sh));
	else if (rc > 0)
		rc = words_add(w, u, strlen(u));
	free(u);
	return rc;
}

/*
 * A list of http(s) URLs: a YAML sequence of strings, one URL each, or one
 * string of comma-separated URLs (so that "${ETCD_ENDPOINTS}" works). Spaces
 * around each URL are dropped; a blank string is an empty list. A null value
 * clears the list, as yaml.v3 does for a slice. On success *dst (freed with
 * free_argv) and *count are replaced. 0 or a negative errno.
 */
static int get_url_list(struct pctx *p, const yaml_node_t *v, const char *dotted, char ***dst,
			size_t *count)
{
	struct words w = {0};
	struct shown sh;
	enum skind k;
	bool b;
	int rc = 0;

	if (v->type == YAML_SCALAR_NODE) {
		const char *s = (const char *)v->data.scalar.value;
		size_t len = v->data.scalar.length;
		if ((rc = scalar_kind(p, v, dotted, &k, &b)) < 0)
			goto out;
		if (k != SK_NULL && memchr(s, '\0', len))
			rc = fail(p, v, "key '%s': the value contains a NUL character", dotted);
		else if (k != SK_NULL)
			rc = split_urls(p, v, dotted, s, len, &w);
	} else if (v->type == YAML_SEQUENCE_NODE) {
		const yaml_node_item_t *it = v->data.sequence.items.start;
		size_t n = (size_t)(v->data.sequence.items.top - it);
		for (size_t i = 0; i < n && rc == 0; i++)
			rc = url_item(p, yaml_document_get_node(p->doc, it[i]), dotted, i, &w);
	} else {
		rc = fail(p, at(p, v),
			  "key '%s': expected a list of URLs or a comma-separated string, got %s",
			  dotted, show(v, &sh));
	}
	if (rc < 0)
		goto out;
	free_argv(*dst);
	*dst = w.v;
	*count = w.n;
	w.v = NULL;
out:
	free_argv(w.v);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* The schema                                                               */
/* ------------------------------------------------------------------------ */

enum kind {
	K_SECTION,	  /* a mapping of further keys */
	K_BOOL,		  /* bool at off */
	K_STRING,	  /* char * at off */
	K_DURATION,	  /* int64_t milliseconds at off */
	K_EXEC,		  /* exec: string or list */
	K_URL_LIST,	  /* char ** (NULL-terminated) at off, its size_t count right after */
	K_LITEFS,	  /* a LiteFS key ltxfs does not implement yet */
	K_LITEFS_SECTION, /* a LiteFS section ltxfs does not implement yet */
};

typedef int (*check_fn)(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field);

struct key_def {
	const char *path; /* dotted */
	enum kind kind;
	size_t off;
	check_fn check; /* run after a non-null value was stored */
};

static int check_not_empty(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	const char *s = *(char **)field;
	if (s && !*s)
		return fail(p, n, "key '%s': must not be empty", dotted);
	return 0;
}

/* "" means "derive it", as in LiteFS. */
static int check_empty_is_unset(struct pctx *p, const yaml_node_t *n, const char *dotted,
				void *field)
{
	char **s = field;
	if (*s && !**s) {
		free(*s);
		*s = NULL;
	}
	return 0;
}

static int check_url(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	struct shown sh;
	char **s = field;
	check_empty_is_unset(p, n, dotted, field);
	if (*s && !http_scheme(*s, strlen(*s)))
		return fail(p, n, "key '%s': expected an http:// or https:// URL, got %s", dotted,
			    show(n, &sh));
	return 0;
}

/*
 * check_url for a URL that may carry credentials (lease.consul.url:
 * https://:TOKEN@host/prefix/): a value holding '@' is not echoed.
 */
static int check_secret_url(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	char **s = field;
	check_empty_is_unset(p, n, dotted, field);
	if (*s && strchr(*s, '@') && !http_scheme(*s, strlen(*s)))
		return fail(p, n,
			    "key '%s': expected an http:// or https:// URL (the value is not "
			    "shown: it holds credentials)",
			    dotted);
	return check_url(p, n, dotted, field);
}

static int check_lease_type(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	struct shown sh;
	const char *s = *(char **)field;
	if (strcmp(s, "static") == 0 || strcmp(s, "consul") == 0 || strcmp(s, "etcd") == 0)
		return 0;
	return fail(p, n, "key '%s': unknown lease type %s (allowed: 'static', 'consul', 'etcd')",
		    dotted, show(n, &sh));
}

static int check_log_format(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	struct shown sh;
	const char *s = *(char **)field;
	if (strcmp(s, "text") == 0 || strcmp(s, "json") == 0)
		return 0;
	return fail(p, n, "key '%s': expected 'text' or 'json', got %s", dotted, show(n, &sh));
}

static int check_http_addr(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	struct shown sh;
	const char *why = NULL;
	unsigned port;
	if (hostport_split(*(char **)field, NULL, 0, &port, &why) < 0)
		return fail(p, n, "key '%s': invalid listen address %s: %s (e.g. ':20202')", dotted,
			    show(n, &sh), why);
	return 0;
}

static int check_positive(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	if (*(int64_t *)field <= 0)
		return fail(p, n, "key '%s': must be greater than zero", dotted);
	return 0;
}

/* etcd grants leases in whole seconds and raises short ones to its own floor. */
static int check_etcd_ttl(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	if (*(int64_t *)field < 1000)
		return fail(p, n, "key '%s': must be at least 1s", dotted);
	return 0;
}

#define F(m) offsetof(struct config, m)

_Static_assert(F(lease.etcd.n_endpoints) == F(lease.etcd.endpoints) + sizeof(char **),
	       "K_URL_LIST: the count must follow the list");

static const struct key_def keys[] = {
    {"exit-on-error", K_BOOL, F(exit_on_error), NULL},
    {"skip-sync", K_BOOL, F(skip_sync), NULL},
    {"strict-verify", K_LITEFS, 0, NULL},
    {"exec", K_EXEC, 0, NULL},

    {"fuse", K_SECTION, 0, NULL},
    {"fuse.dir", K_STRING, F(fuse.dir), check_not_empty},
    {"fuse.allow-other", K_BOOL, F(fuse.allow_other), NULL},
    {"fuse.debug", K_BOOL, F(fuse.debug), NULL},

    {"data", K_SECTION, 0, NULL},
    {"data.dir", K_STRING, F(data.dir), check_not_empty},
    {"data.compress", K_BOOL, F(data.compress), NULL},
    {"data.retention", K_DURATION, F(data.retention_ms), NULL},
    {"data.retention-monitor-interval", K_DURATION, F(data.retention_monitor_interval_ms),
     check_positive},

    {"http", K_SECTION, 0, NULL},
    {"http.addr", K_STRING, F(http.addr), check_http_addr},
    {"http.snapshot-timeout", K_LITEFS, 0, NULL},
    {"http.token", K_STRING, F(http.token), check_empty_is_unset},
    {"http.read-auth", K_BOOL, F(http.read_auth), NULL},

    {"lease", K_SECTION, 0, NULL},
    {"lease.type", K_STRING, F(lease.type), check_lease_type},
    {"lease.candidate", K_BOOL, F(lease.candidate), NULL},
    {"lease.hostname", K_STRING, F(lease.hostname), check_empty_is_unset},
    {"lease.advertise-url", K_STRING, F(lease.advertise_url), check_url},
    {"lease.promote", K_BOOL, F(lease.promote), NULL},
    {"lease.reconnect-delay", K_DURATION, F(lease.reconnect_delay_ms), check_positive},
    {"lease.demote-delay", K_DURATION, F(lease.demote_delay_ms), NULL},
    {"lease.databases", K_LITEFS, 0, NULL},
    {"lease.consul", K_SECTION, 0, NULL},
    {"lease.consul.url", K_STRING, F(lease.consul.url), check_secret_url},
    {"lease.consul.key", K_STRING, F(lease.consul.key), check_empty_is_unset},
    {"lease.consul.ttl", K_DURATION, F(lease.consul.ttl_ms), check_positive},
    {"lease.consul.lock-delay", K_DURATION, F(lease.consul.lock_delay_ms), NULL},
    {"lease.etcd", K_SECTION, 0, NULL},
    {"lease.etcd.endpoints", K_URL_LIST, F(lease.etcd.endpoints), NULL},
    {"lease.etcd.key", K_STRING, F(lease.etcd.key), check_empty_is_unset},
    {"lease.etcd.ttl", K_DURATION, F(lease.etcd.ttl_ms), check_etcd_ttl},
    {"lease.etcd.username", K_STRING, F(lease.etcd.username), check_empty_is_unset},
    {"lease.etcd.password", K_STRING, F(lease.etcd.password), check_empty_is_unset},

    {"log", K_SECTION, 0, NULL},
    {"log.format", K_STRING, F(log.format), check_log_format},
    {"log.debug", K_BOOL, F(log.debug), NULL},
    {"log.timestamp", K_LITEFS, 0, NULL},

    {"proxy", K_LITEFS_SECTION, 0, NULL},
    {"proxy.addr", K_LITEFS, 0, NULL},
    {"proxy.target", K_LITEFS, 0, NULL},
    {"proxy.db", K_LITEFS, 0, NULL},
    {"proxy.max-lag", K_LITEFS, 0, NULL},
    {"proxy.debug", K_LITEFS, 0, NULL},
    {"proxy.passthrough", K_LITEFS, 0, NULL},
    {"proxy.always-forward", K_LITEFS, 0, NULL},
    {"proxy.primary-redirect-timeout", K_LITEFS, 0, NULL},
    {"proxy.read-timeout", K_LITEFS, 0, NULL},
    {"proxy.read-header-timeout", K_LITEFS, 0, NULL},
    {"proxy.write-timeout", K_LITEFS, 0, NULL},
    {"proxy.idle-timeout", K_LITEFS, 0, NULL},

    {"backup", K_LITEFS_SECTION, 0, NULL},
    {"backup.type", K_LITEFS, 0, NULL},
    {"backup.path", K_LITEFS, 0, NULL},
    {"backup.url", K_LITEFS, 0, NULL},
    {"backup.cluster", K_LITEFS, 0, NULL},
    {"backup.auth-token", K_LITEFS, 0, NULL},

    {"tracing", K_LITEFS_SECTION, 0, NULL},
    {"tracing.enabled", K_LITEFS, 0, NULL},
    {"tracing.path", K_LITEFS, 0, NULL},
    {"tracing.max-size", K_LITEFS, 0, NULL},
    {"tracing.max-count", K_LITEFS, 0, NULL},
    {"tracing.compress", K_LITEFS, 0, NULL},
};

/* The entry for key name[0..len) under parent ("" for the top level). */
static const struct key_def *find_key(const char *parent, const char *name, size_t len)
{
	size_t pl = strlen(parent);
	if (memchr(name, '.', len) || memchr(name, '\0', len))
		return NULL;
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		const char *k = keys[i].path;
		if (pl) {
			if (strncmp(k, parent, pl) != 0 || k[pl] != '.')
				continue;
			k += pl + 1;
		}
		if (text_is(name, len, k))
			return &keys[i];
	}
	return NULL;
}

/* "parent.key" for messages, the key sanitized. */
static void dotted_name(char *out, size_t outlen, const char *parent, const yaml_node_t *k)
{
	char key[SHOW_MAX * 2];
	sanitize(key, sizeof(key), (const char *)k->data.scalar.value, k->data.scalar.length);
	snprintf(out, outlen, "%s%s%s", parent, *parent ? "." : "", key);
}

/*
 * Check the key of pair against the keys before it in the same mapping.
 * Callers only get here after every earlier key was accepted, so the scan is
 * bounded by the size of the schema, not by the input.
 */
static int check_key(struct pctx *p, const yaml_node_pair_t *first, const yaml_node_pair_t *pair,
		     const char *parent)
{
	const yaml_node_t *k = yaml_document_get_node(p->doc, pair->key);
	struct shown sh;
	char dotted[DOTTED_MAX];

	if (k->type != YAML_SCALAR_NODE)
		return fail(p, k, "keys must be strings, got %s%s%s%s", show(k, &sh),
			    *parent ? " under '" : "", parent, *parent ? "'" : "");
	for (const yaml_node_pair_t *q = first; q < pair; q++) {
		const yaml_node_t *pk = yaml_document_get_node(p->doc, q->key);
		if (pk->type == YAML_SCALAR_NODE &&
		    pk->data.scalar.length == k->data.scalar.length &&
		    memcmp(pk->data.scalar.value, k->data.scalar.value, k->data.scalar.length) ==
			0) {
			dotted_name(dotted, sizeof(dotted), parent, k);
			return fail(p, k, "key '%s' is defined twice (first at line %lu)", dotted,
				    node_line(pk));
		}
	}
	return 0;
}

static int set_value(struct pctx *p, const struct key_def *d, const yaml_node_t *k,
		     const yaml_node_t *v);

static int walk_map(struct pctx *p, const yaml_node_t *map, const char *parent)
{
	const yaml_node_pair_t *first = map->data.mapping.pairs.start;
	const yaml_node_pair_t *top = map->data.mapping.pairs.top;
	char dotted[DOTTED_MAX];

	for (const yaml_node_pair_t *pair = first; pair < top; pair++) {
		int rc = check_key(p, first, pair, parent);
		if (rc)
			return rc;
		const yaml_node_t *k = yaml_document_get_node(p->doc, pair->key);
		const yaml_node_t *v = yaml_document_get_node(p->doc, pair->value);
		const struct key_def *d =
		    find_key(parent, (const char *)k->data.scalar.value, k->data.scalar.length);
		if (!d) {
			dotted_name(dotted, sizeof(dotted), parent, k);
			return fail(p, k, "unknown key '%s'", dotted);
		}
		p->key = k;
		rc = set_value(p, d, k, v);
		if (rc)
			return rc;
	}
	return 0;
}

/* A null scalar: plain and untagged, or tagged !!null. */
static bool is_null(const yaml_node_t *v)
{
	bool b;
	if (v->type != YAML_SCALAR_NODE)
		return false;
	bool null_tag = v->tag && strcmp((const char *)v->tag, YAML_NULL_TAG) == 0;
	bool plain = default_tag(v) && v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
	return (plain || null_tag) && implicit_kind((const char *)v->data.scalar.value,
						    v->data.scalar.length, &b) == SK_NULL;
}

/*
 * A LiteFS-only section: name its first key when it has one we know, so the
 * message says 'proxy.addr' rather than 'proxy'.
 */
static int litefs_section(struct pctx *p, const struct key_def *d, const yaml_node_t *k,
			  const yaml_node_t *v)
{
	if (v->type == YAML_MAPPING_NODE &&
	    v->data.mapping.pairs.top > v->data.mapping.pairs.start) {
		const yaml_node_pair_t *pair = v->data.mapping.pairs.start;
		const yaml_node_t *k2 = yaml_document_get_node(p->doc, pair->key);
		const yaml_node_t *v2 = yaml_document_get_node(p->doc, pair->value);
		char dotted[DOTTED_MAX];
		if (k2->type == YAML_SCALAR_NODE) {
			const struct key_def *d2 = find_key(
			    d->path, (const char *)k2->data.scalar.value, k2->data.scalar.length);
			if (d2) {
				p->key = k2;
				return set_value(p, d2, k2, v2);
			}
			dotted_name(dotted, sizeof(dotted), d->path, k2);
			return fail(p, k2, "unknown key '%s'", dotted);
		}
	}
	return fail(p, k, "key '%s' is a LiteFS setting that ltxfs does not support yet", d->path);
}

static int walk_exec(struct pctx *p, const yaml_node_t *v);

/* Remember the keys that finish() checks against lease.type (the first one of each backend). */
static void note_key(struct pctx *p, const struct key_def *d, const yaml_node_t *k)
{
	static const char consul[] = "lease.consul.", etcd[] = "lease.etcd.";
	if (!p->consul_key && strncmp(d->path, consul, sizeof(consul) - 1) == 0) {
		p->consul_key = k;
		p->consul_path = d->path;
	} else if (!p->etcd_key && strncmp(d->path, etcd, sizeof(etcd) - 1) == 0) {
		p->etcd_key = k;
		p->etcd_path = d->path;
	} else if (strcmp(d->path, "lease.promote") == 0) {
		p->promote_key = k;
	}
}

static int set_value(struct pctx *p, const struct key_def *d, const yaml_node_t *k,
		     const yaml_node_t *v)
{
	void *field = (char *)p->cfg + d->off;
	struct shown sh;
	int rc = 0;

	note_key(p, d, k);
	switch (d->kind) {
	case K_SECTION:
		if (v->type == YAML_MAPPING_NODE)
			return walk_map(p, v, d->path);
		if (is_null(v))
			return 0;
		return fail(p, at(p, v), "key '%s': expected a mapping of settings, got %s",
			    d->path, show(v, &sh));
	case K_BOOL:
		rc = get_bool(p, v, d->path, field);
		return rc < 0 ? rc : 0;
	case K_STRING:
		rc = get_string(p, v, d->path, field);
		if (rc > 0 && d->check)
			return d->check(p, v, d->path, field);
		return rc < 0 ? rc : 0;
	case K_DURATION:
		rc = get_duration(p, v, d->path, field);
		if (rc > 0 && d->check)
			return d->check(p, v, d->path, field);
		return rc < 0 ? rc : 0;
	case K_EXEC:
		return walk_exec(p, v);
	case K_URL_LIST:
		return get_url_list(p, v, d->path, field,
				    (size_t *)((char *)field + sizeof(char **)));
	case K_LITEFS:
		return fail(p, k, "key '%s' is a LiteFS setting that ltxfs does not support yet",
			    d->path);
	case K_LITEFS_SECTION:
		return litefs_section(p, d, k, v);
	}
	return -EINVAL;
}

/* One {cmd, if-candidate} item of an exec list. */
static int exec_item(struct pctx *p, const yaml_node_t *item, size_t idx, struct config_exec *e)
{
	const yaml_node_pair_t *first = item->data.mapping.pairs.start;
	const yaml_node_pair_t *top = item->data.mapping.pairs.top;
	const yaml_node_t *cmd_node = item;
	char prefix[32], dotted[DOTTED_MAX];
	char *cmd = NULL;
	int rc = 0;

	snprintf(prefix, sizeof(prefix), "exec[%zu]", idx);
	for (const yaml_node_pair_t *pair = first; pair < top; pair++) {
		if ((rc = check_key(p, first, pair, prefix)) < 0)
			goto out;
		const yaml_node_t *k = yaml_document_get_node(p->doc, pair->key);
		const yaml_node_t *v = yaml_document_get_node(p->doc, pair->value);
		const char *name = (const char *)k->data.scalar.value;
		size_t len = k->data.scalar.length;
		dotted_name(dotted, sizeof(dotted), prefix, k);
		p->key = k;
		if (text_is(name, len, "cmd")) {
			cmd_node = v;
			rc = get_string(p, v, dotted, &cmd);
		} else if (text_is(name, len, "if-candidate")) {
			rc = get_bool(p, v, dotted, &e->if_candidate);
		} else {
			rc = fail(p, k,
				  "unknown key '%s' (an exec item has 'cmd' and 'if-candidate')",
				  dotted);
		}
		if (rc < 0)
			goto out;
		rc = 0;
	}
	snprintf(dotted, sizeof(dotted), "%s.cmd", prefix);
	if (!cmd || !*cmd) {
		rc = fail(p, cmd_node, "key '%s' is required", dotted);
		goto out;
	}
	rc = split_cmd(p, cmd_node, dotted, cmd, &e->argv);
out:
	free(cmd);
	return rc;
}

static int walk_exec(struct pctx *p, const yaml_node_t *v)
{
	struct config_exec *list = NULL;
	size_t n = 0;
	struct shown sh;
	enum skind k;
	bool b;
	int rc = 0;

	if (v->type == YAML_SCALAR_NODE) {
		if ((rc = scalar_kind(p, v, "exec", &k, &b)) < 0)
			goto out;
		if (k == SK_NULL)
			goto replace;
		const char *s = (const char *)v->data.scalar.value;
		if (k != SK_STR || !default_tag(v)) {
			rc = fail(p, v,
				  "key 'exec': expected a command string or a list of {cmd, "
				  "if-candidate} maps, got %s",
				  show(v, &sh));
			goto out;
		}
		if (memchr(s, '\0', v->data.scalar.length)) {
			rc = fail(p, v, "key 'exec': the value contains a NUL character");
			goto out;
		}
		if (!(list = calloc(1, sizeof(*list)))) {
			rc = -ENOMEM;
			goto out;
		}
		n = 1;
		rc = split_cmd(p, v, "exec", s, &list[0].argv);
		if (rc)
			goto out;
	} else if (v->type == YAML_SEQUENCE_NODE) {
		const yaml_node_item_t *it = v->data.sequence.items.start;
		size_t count = (size_t)(v->data.sequence.items.top - it);
		if (count && !(list = calloc(count, sizeof(*list)))) {
			rc = -ENOMEM;
			goto out;
		}
		for (size_t i = 0; i < count; i++) {
			const yaml_node_t *item = yaml_document_get_node(p->doc, it[i]);
			n++;
			if (item->type != YAML_MAPPING_NODE) {
				rc = fail(p, item,
					  "key 'exec[%zu]': expected a map with 'cmd' and "
					  "'if-candidate', got %s",
					  i, show(item, &sh));
				goto out;
			}
			if ((rc = exec_item(p, item, i, &list[i])) < 0)
				goto out;
		}
	} else {
		rc = fail(p, at(p, v),
			  "key 'exec': expected a command string or a list of {cmd, if-candidate} "
			  "maps, got %s",
			  show(v, &sh));
		goto out;
	}
replace:
	free_exec(p->cfg->exec, p->cfg->n_exec);
	p->cfg->exec = list;
	p->cfg->n_exec = n;
	list = NULL;
	n = 0;
out:
	free_exec(list, n);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* Whole-file validation and derived defaults                               */
/* ------------------------------------------------------------------------ */

/* Go filepath.Clean of an absolute version of path. Caller frees; NULL on OOM. */
static char *clean_path(const char *path)
{
	char *abs = NULL, *cwd = NULL, *out = NULL;
	if (path[0] != '/' && (cwd = getcwd(NULL, 0)) != NULL) {
		if (asprintf(&abs, "%s/%s", cwd, path) < 0)
			abs = NULL;
		free(cwd);
	} else {
		abs = strdup(path);
	}
	if (!abs)
		return NULL;

	size_t n = strlen(abs), w = 0, dotdot = 0;
	bool rooted = abs[0] == '/';
	if (!(out = malloc(n + 2)))
		goto out;
	if (rooted)
		out[w++] = '/', dotdot = 1;
	for (size_t r = 0; r < n;) {
		if (abs[r] == '/') {
			r++;
			continue;
		}
		size_t e = r;
		while (e < n && abs[e] != '/')
			e++;
		if (e - r == 1 && abs[r] == '.') {
			/* skip */
		} else if (e - r == 2 && abs[r] == '.' && abs[r + 1] == '.') {
			if (w > dotdot) {
				w--;
				while (w > dotdot && out[w] != '/')
					w--;
			} else if (!rooted) {
				if (w > 0)
					out[w++] = '/';
				out[w++] = '.';
				out[w++] = '.';
				dotdot = w;
			}
		} else {
			if ((rooted && w != 1) || (!rooted && w != 0))
				out[w++] = '/';
			memcpy(out + w, abs + r, e - r);
			w += e - r;
		}
		r = e;
	}
	if (w == 0)
		out[w++] = '.';
	out[w] = '\0';
out:
	free(abs);
	return out;
}

static int check_dirs(struct pctx *p)
{
	const struct config *c = p->cfg;
	char *f = clean_path(c->fuse.dir), *d = clean_path(c->data.dir);
	int rc = 0;
	if (!f || !d) {
		rc = -ENOMEM;
		goto out;
	}
	size_t fl = strlen(f);
	if (strcmp(f, d) == 0)
		rc = fail(p, NULL,
			  "keys 'fuse.dir' and 'data.dir' must name different directories (both "
			  "are '%s')",
			  f);
	else if (strncmp(d, f, fl) == 0 && (d[fl] == '/' || f[fl - 1] == '/'))
		rc = fail(p, NULL,
			  "key 'data.dir': '%s' is inside fuse.dir '%s'; the mount would hide it",
			  d, f);
out:
	free(f);
	free(d);
	return rc;
}

/* The lease backend's settings: required keys, keys of another backend, promote. */
static int check_lease(struct pctx *p)
{
	struct config *c = p->cfg;
	const char *type = c->lease.type;
	bool consul = strcmp(type, "consul") == 0, etcd = strcmp(type, "etcd") == 0;

	if (p->consul_key && !consul)
		return fail(p, p->consul_key, "key '%s' is set but lease.type is '%s'",
			    p->consul_path, type);
	if (p->etcd_key && !etcd)
		return fail(p, p->etcd_key, "key '%s' is set but lease.type is '%s'", p->etcd_path,
			    type);
	if (c->lease.promote && !consul && !etcd)
		return fail(p, p->promote_key,
			    "key 'lease.promote': handoff needs a consul or etcd lease (lease.type "
			    "is '%s')",
			    type);
	/* LiteFS only promotes candidates, and says nothing otherwise: the Fly
	 * pattern is "candidate: ${FLY_REGION == PRIMARY_REGION}" with "promote: true". */
	if (!c->lease.candidate)
		c->lease.promote = false;

	if (consul && !c->lease.consul.url)
		return fail(p, NULL,
			    "key 'lease.consul.url' is required with 'lease.type: consul' (the "
			    "Consul agent, e.g. http://localhost:8500)");
	if (consul && !c->lease.consul.key)
		return fail(p, NULL,
			    "key 'lease.consul.key' is required with 'lease.type: consul' (the KV "
			    "key that holds the primary lock, e.g. litefs/myapp)");
	if (etcd && c->lease.etcd.n_endpoints == 0)
		return fail(p, NULL,
			    "key 'lease.etcd.endpoints' is required with 'lease.type: etcd' (at "
			    "least one http:// or https:// URL)");
	if (etcd && c->lease.etcd.password && !c->lease.etcd.username)
		return fail(p, NULL,
			    "key 'lease.etcd.password' is set without lease.etcd.username");
	if (etcd && !c->lease.etcd.key && !(c->lease.etcd.key = strdup(DEFAULT_ETCD_KEY)))
		return -ENOMEM;
	return 0;
}

static int finish(struct pctx *p)
{
	struct config *c = p->cfg;
	int rc;

	if (!c->fuse.dir)
		return fail(p, NULL, "key 'fuse.dir' is required (the directory to mount on)");
	if (!c->data.dir)
		return fail(p, NULL, "key 'data.dir' is required");
	if ((rc = check_dirs(p)) < 0)
		return rc;
	if (!c->lease.type)
		return fail(p, NULL, "key 'lease.type' is required ('static', 'consul' or 'etcd')");
	if (!c->http.addr)
		return fail(p, NULL, "key 'http.addr' is required");
	if (!c->http.token) {
		const char *t = getenv("LTXFS_HTTP_TOKEN");
		if (t && *t && !(c->http.token = strdup(t)))
			return -ENOMEM;
	}
	if (c->http.token) {
		size_t tl = strlen(c->http.token);
		bool ok = tl >= 8 && tl <= 256;
		for (const char *t = c->http.token; *t && ok; t++)
			ok = *t > 0x20 && *t < 0x7f;
		if (!ok)
			return fail(
			    p, NULL,
			    "key 'http.token' (or $LTXFS_HTTP_TOKEN): want 8 to 256 printable "
			    "characters without spaces");
	}
	if (c->http.read_auth && !c->http.token)
		return fail(p, NULL,
			    "key 'http.read-auth' needs a token (http.token or $LTXFS_HTTP_TOKEN)");
	if ((rc = check_lease(p)) < 0)
		return rc;

	if (!c->lease.hostname) {
		char host[HOST_NAME_MAX + 1];
		if (gethostname(host, sizeof(host)) < 0) {
			rc = -errno;
			fail(p, NULL, "key 'lease.hostname': cannot read the host name: %s",
			     strerror(-rc));
			return rc;
		}
		host[HOST_NAME_MAX] = '\0';
		if (!(c->lease.hostname = strdup(host)))
			return -ENOMEM;
	}
	if (!c->lease.advertise_url && !c->lease.candidate && c->lease.type &&
	    strcmp(c->lease.type, "static") == 0)
		return fail(p, NULL,
			    "key 'lease.advertise-url' is required with a static lease and "
			    "'candidate: false': it is the URL of the primary to replicate from");
	if (!c->lease.advertise_url) {
		unsigned port = 0;
		const char *why = NULL;
		if (hostport_split(c->http.addr, NULL, 0, &port, &why) < 0)
			return fail(p, NULL, "key 'http.addr': invalid listen address '%s': %s",
				    c->http.addr, why);
		if (port == 0)
			return fail(p, NULL,
				    "key 'lease.advertise-url' is required when http.addr has port "
				    "0 (it cannot be derived)");
		bool v6 = strchr(c->lease.hostname, ':') != NULL;
		if (asprintf(&c->lease.advertise_url, "http://%s%s%s:%u", v6 ? "[" : "",
			     c->lease.hostname, v6 ? "]" : "", port) < 0) {
			c->lease.advertise_url = NULL;
			return -ENOMEM;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Entry points                                                             */
/* ------------------------------------------------------------------------ */

int config_parse(struct config *cfg, const char *path, const char *text, size_t len, char *err,
		 size_t errlen)
{
	struct config tmp;
	yaml_parser_t parser;
	yaml_document_t doc;
	bool have_parser = false, have_doc = false;
	struct pctx p = {
	    .path = path ? path : "<config>",
	    .err = err,
	    .errlen = errlen,
	    .doc = &doc,
	    .cfg = &tmp,
	};
	struct shown sh;
	int rc;

	if (err && errlen)
		err[0] = '\0';
	if (!text)
		len = 0;
	if ((rc = config_copy(&tmp, cfg)) < 0) {
		memset(&tmp, 0, sizeof(tmp));
		goto out;
	}
	if (!yaml_parser_initialize(&parser)) {
		rc = -ENOMEM;
		goto out;
	}
	have_parser = true;
	yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), len);
	if (!yaml_parser_load(&parser, &doc)) {
		rc = syntax_error(&p, &parser, text, len);
		goto out;
	}
	have_doc = true;

	const yaml_node_t *root = yaml_document_get_root_node(&doc);
	if (root && root->type == YAML_MAPPING_NODE)
		rc = walk_map(&p, root, "");
	else if (root && !is_null(root))
		rc = fail(&p, root, "expected a mapping of settings at the top level, got %s",
			  show(root, &sh));
	if (rc)
		goto out;
	if ((rc = finish(&p)) < 0)
		goto out;

	config_release(cfg);
	*cfg = tmp;
	memset(&tmp, 0, sizeof(tmp));
out:
	if (rc == -ENOMEM && err && errlen)
		snprintf(err, errlen, "%s: out of memory", p.path);
	if (have_doc)
		yaml_document_delete(&doc);
	if (have_parser)
		yaml_parser_delete(&parser);
	config_release(&tmp);
	return rc;
}

int config_load(struct config *cfg, const char *path, bool expand_env, char *err, size_t errlen)
{
	char *buf = NULL, *expanded = NULL, *path_copy = NULL;
	size_t len = 0, cap = 0;
	int fd = -1, rc = 0;

	if (err && errlen)
		err[0] = '\0';
	if (!path)
		return -EINVAL;
	if (!(path_copy = strdup(path))) {
		rc = -ENOMEM;
		goto out;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		if (err && errlen)
			snprintf(err, errlen, "%s: cannot open: %s", path, strerror(-rc));
		goto out;
	}
	for (;;) {
		if (len > CONFIG_MAX_BYTES) {
			rc = -EFBIG;
			if (err && errlen)
				snprintf(err, errlen, "%s: larger than %d bytes", path,
					 CONFIG_MAX_BYTES);
			goto out;
		}
		if (len == cap) {
			/* Grow to at most CONFIG_MAX_BYTES + 1 so an oversize file shows. */
			cap = cap ? cap * 2 : 4096;
			if (cap > CONFIG_MAX_BYTES + 1)
				cap = CONFIG_MAX_BYTES + 1;
			char *nb = realloc(buf, cap + 1);
			if (!nb) {
				rc = -ENOMEM;
				goto out;
			}
			buf = nb;
		}
		ssize_t r = read(fd, buf + len, cap - len);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			if (err && errlen)
				snprintf(err, errlen, "%s: cannot read: %s", path, strerror(-rc));
			goto out;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	if (!buf && !(buf = malloc(1))) {
		rc = -ENOMEM;
		goto out;
	}
	buf[len] = '\0';

	const char *text = buf;
	size_t text_len = len;
	if (memchr(buf, '\0', len)) {
		rc = -EINVAL;
		if (err && errlen)
			snprintf(err, errlen, "%s: the file contains a NUL byte (not a text file?)",
				 path);
		goto out;
	}
	if (expand_env) {
		if (!(expanded = config_expand_env(buf))) {
			rc = -ENOMEM;
			goto out;
		}
		text = expanded;
		text_len = strlen(expanded);
	}
	if ((rc = config_parse(cfg, path, text, text_len, err, errlen)) < 0)
		goto out;
	free(cfg->path);
	cfg->path = path_copy;
	path_copy = NULL;
out:
	if (rc == -ENOMEM && err && errlen)
		snprintf(err, errlen, "%s: out of memory", path);
	if (fd >= 0)
		close(fd);
	free(buf);
	free(expanded);
	free(path_copy);
	return rc;
}

int config_find(char **ret_path)
{
	static const char *const candidates[] = {"ltxfs.yml", "litefs.yml", "/etc/ltxfs.yml",
						 "/etc/litefs.yml"};
	struct stat st;

	for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
		const char *c = candidates[i];
		if (stat(c, &st) < 0 && (errno == ENOENT || errno == ENOTDIR))
			continue;
		/*
		 * Found, or present but unreadable: return it either way so that
		 * config_load() reports the real error, as LiteFS does.
		 */
		char *path = NULL, *cwd = NULL;
		if (c[0] != '/' && (cwd = getcwd(NULL, 0)) != NULL) {
			if (asprintf(&path, "%s/%s", cwd, c) < 0)
				path = NULL;
			free(cwd);
		} else {
			path = strdup(c);
		}
		if (!path)
			return -ENOMEM;
		*ret_path = path;
		return 0;
	}
	return -ENOENT;
}

/* ------------------------------------------------------------------------ */
/* Effective configuration                                                  */
/* ------------------------------------------------------------------------ */

static void dump_str(FILE *f, const char *indent, const char *key, const char *v)
{
	if (!v) {
		fprintf(f, "%s%s: null\n", indent, key);
		return;
	}
	fprintf(f, "%s%s: \"", indent, key);
	for (const char *c = v; *c; c++) {
		if (*c == '"' || *c == '\\')
			fputc('\\', f);
		fputc(*c, f);
	}
	fprintf(f, "\"\n");
}

static void dump_dur(FILE *f, const char *indent, const char *key, int64_t ms)
{
	if (ms % 1000 == 0)
		fprintf(f, "%s%s: %llds\n", indent, key, (long long)(ms / 1000));
	else
		fprintf(f, "%s%s: %lldms\n", indent, key, (long long)ms);
}

/* A URL with any userinfo password replaced by "*****". */
static void mask_url(const char *url, char *buf, size_t n)
{
	const char *scheme = strstr(url, "://");
	const char *host = scheme ? scheme + 3 : url;
	const char *at = strchr(host, '@'), *slash = strchr(host, '/');
	if (!at || (slash && slash < at)) {
		snprintf(buf, n, "%s", url);
		return;
	}
	const char *colon = memchr(host, ':', (size_t)(at - host));
	if (colon)
		snprintf(buf, n, "%.*s:*****%s", (int)(colon - url), url, at);
	else
		snprintf(buf, n, "%.*s*****%s", (int)(host - url), url, at);
}

void config_dump(const struct config *c, FILE *f)
{
	char buf[2048];
	fprintf(f, "# effective configuration%s%s\n", c->path ? " of " : "",
		c->path ? c->path : "");
	fprintf(f, "exit-on-error: %s\nskip-sync: %s\n", c->exit_on_error ? "true" : "false",
		c->skip_sync ? "true" : "false");
	if (c->n_exec) {
		fprintf(f, "exec:\n");
		for (size_t i = 0; i < c->n_exec; i++) {
			fprintf(f, "  - {cmd: \"");
			for (char **a = c->exec[i].argv; a && *a; a++) {
				if (a != c->exec[i].argv)
					fputc(' ', f);
				for (const char *ch = *a; *ch; ch++) {
					if (*ch == '"' || *ch == '\\')
						fputc('\\', f);
					fputc(*ch, f);
				}
			}
			fprintf(f, "\", if-candidate: %s}\n",
				c->exec[i].if_candidate ? "true" : "false");
		}
	}
	fprintf(f, "fuse:\n");
	dump_str(f, "  ", "dir", c->fuse.dir);
	fprintf(f, "  allow-other: %s\n  debug: %s\n", c->fuse.allow_other ? "true" : "false",
		c->fuse.debug ? "true" : "false");
	fprintf(f, "data:\n");
	dump_str(f, "  ", "dir", c->data.dir);
	fprintf(f, "  compress: %s\n", c->data.compress ? "true" : "false");
	dump_dur(f, "  ", "retention", c->data.retention_ms);
	dump_dur(f, "  ", "retention-monitor-interval", c->data.retention_monitor_interval_ms);
	fprintf(f, "http:\n");
	dump_str(f, "  ", "addr", c->http.addr);
	dump_str(f, "  ", "token", c->http.token ? "*****" : NULL);
	fprintf(f, "  read-auth: %s\n", c->http.read_auth ? "true" : "false");
	fprintf(f, "lease:\n");
	dump_str(f, "  ", "type", c->lease.type);
	fprintf(f, "  candidate: %s\n  promote: %s\n", c->lease.candidate ? "true" : "false",
		c->lease.promote ? "true" : "false");
	dump_str(f, "  ", "hostname", c->lease.hostname);
	dump_str(f, "  ", "advertise-url", c->lease.advertise_url);
	dump_dur(f, "  ", "reconnect-delay", c->lease.reconnect_delay_ms);
	dump_dur(f, "  ", "demote-delay", c->lease.demote_delay_ms);
	if (c->lease.type && strcmp(c->lease.type, "consul") == 0) {
		fprintf(f, "  consul:\n");
		if (c->lease.consul.url)
			mask_url(c->lease.consul.url, buf, sizeof(buf));
		dump_str(f, "    ", "url", c->lease.consul.url ? buf : NULL);
		dump_str(f, "    ", "key", c->lease.consul.key);
		dump_dur(f, "    ", "ttl", c->lease.consul.ttl_ms);
		dump_dur(f, "    ", "lock-delay", c->lease.consul.lock_delay_ms);
	}
	if (c->lease.type && strcmp(c->lease.type, "etcd") == 0) {
		fprintf(f, "  etcd:\n    endpoints:\n");
		for (size_t i = 0; i < c->lease.etcd.n_endpoints; i++) {
			mask_url(c->lease.etcd.endpoints[i], buf, sizeof(buf));
			fprintf(f, "      - \"%s\"\n", buf);
		}
		dump_str(f, "    ", "key", c->lease.etcd.key);
		dump_dur(f, "    ", "ttl", c->lease.etcd.ttl_ms);
		dump_str(f, "    ", "username", c->lease.etcd.username);
		dump_str(f, "    ", "password", c->lease.etcd.password ? "*****" : NULL);
	}
	fprintf(f, "log:\n");
	dump_str(f, "  ", "format", c->log.format);
	fprintf(f, "  debug: %s\n", c->log.debug ? "true" : "false");
}
