/*
 * config_yaml.c - config_parse(): reading ltxfs.yml / litefs.yml with
 * libyaml and typing its values the way LiteFS's decoder does (formats layer:
 * no logging, no threads).
 *
 * config_parse() loads the first YAML document with libyaml's document API
 * (yaml_parser_load), walks the node tree against config_keys[]
 * (config_schema.c) into a deep copy of the caller's configuration, runs
 * config_finish(), and only then replaces the caller's configuration. Later
 * documents in the stream are ignored, as yaml.v3's Decoder.Decode does.
 *
 * Schema handling
 * ---------------
 * LiteFS decodes litefs.yml with gopkg.in/yaml.v3 into a Go struct with
 * KnownFields(true). We reproduce what that decoder accepts, key by key:
 *
 *  - Every mapping key must be a scalar naming an entry of config_keys[]
 *    under its parent. Keys are case-sensitive. Unknown keys fail with
 *    "unknown key 'a.b'". LiteFS keys that ltxfs does not implement yet
 *    (K_LITEFS, and whole sections such as proxy: K_LITEFS_SECTION) fail with
 *    "key 'a.b' is a LiteFS setting that ltxfs does not support yet", whatever
 *    their value. A key repeated in one mapping fails, as in yaml.v3. Merge
 *    keys ('<<') are not supported and are reported as unknown keys.
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
 *  - Durations (K_DURATION) are Go time.ParseDuration strings
 *    (config_parse_duration_ns, config_go.c). Negative values are refused.
 *    yaml.v3 refuses a plain 0 (it resolves to an integer); we accept it
 *    because the LiteFS docs write "retention: 0".
 *  - exec is a scalar string (split with go-shellwords rules,
 *    config_split_words) or a sequence of {cmd, if-candidate} mappings.
 *  - lease.etcd.endpoints (K_URL_LIST) is a sequence of URL strings or one
 *    string of comma-separated URLs (see get_url_list).
 *  - Scalars with an explicit standard tag (!!bool, !!int, !!float, !!null)
 *    must resolve to that type. libyaml's document API cannot tell an explicit
 *    !!str from an untagged scalar, so "!!str true" reads like "true".
 *
 * Messages
 * --------
 * Every message starts with "<path>: ", then "line N: " when a node is known,
 * then names the dotted key in single quotes. Values taken from the input are
 * quoted, truncated and stripped of control characters. A YAML syntax error
 * gives line and column ("line N, column M: YAML syntax error: ...").
 *
 * Threads: main thread only, at start-up (config.h); libyaml keeps no global
 * state.
 */
#include "config_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Messages                                                                 */
/* ------------------------------------------------------------------------ */

static unsigned long node_line(const yaml_node_t *n)
{
	return (unsigned long)n->start_mark.line + 1;
}

int config_fail(struct pctx *p, const yaml_node_t *n, const char *fmt, ...)
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

/* "'value'" for a scalar, "a mapping" or "a list" otherwise. */
const char *config_show(const yaml_node_t *n, struct shown *sh)
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
	return config_fail(p, n, "key '%s': cannot read %s as %s", dotted, config_show(n, &sh),
			   want);
ok:
	*ret = k;
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Typed readers                                                            */
/* ------------------------------------------------------------------------ */

/*
 * The typed readers return 1 when they stored a value, 0 for a null value
 * (the current value stays, as with yaml.v3), or a negative errno.
 *
 * Their common start: n must be a scalar ("expected <what>" otherwise) whose
 * explicit tag, if any, fits its value. Returns 1 with its kind in *k (and a
 * boolean's value in *b) when the value is not null, 0 when it is, or a
 * negative errno.
 */
static int typed_scalar(struct pctx *p, const yaml_node_t *n, const char *dotted, const char *what,
			enum skind *k, bool *b)
{
	struct shown sh;
	if (n->type != YAML_SCALAR_NODE)
		return config_fail(p, at(p, n), "key '%s': expected %s, got %s", dotted, what,
				   config_show(n, &sh));
	int rc = scalar_kind(p, n, dotted, k, b);
	if (rc)
		return rc;
	return *k != SK_NULL;
}

static int get_bool(struct pctx *p, const yaml_node_t *n, const char *dotted, bool *dst)
{
	struct shown sh;
	enum skind k;
	bool b;
	int rc = typed_scalar(p, n, dotted, "a boolean", &k, &b);
	if (rc <= 0)
		return rc;
	if (k == SK_BOOL || (k == SK_STR && yaml11_bool((const char *)n->data.scalar.value,
							n->data.scalar.length, &b))) {
		*dst = b;
		return 1;
	}
	return config_fail(p, n, "key '%s': expected a boolean (true or false), got %s", dotted,
			   config_show(n, &sh));
}

/* A string value; *dst is replaced (and freed) unless the value is null. */
static int get_string(struct pctx *p, const yaml_node_t *n, const char *dotted, char **dst)
{
	enum skind k;
	bool b;
	int rc = typed_scalar(p, n, dotted, "a string", &k, &b);
	if (rc <= 0)
		return rc;
	const char *v = (const char *)n->data.scalar.value;
	size_t len = n->data.scalar.length;
	if (memchr(v, '\0', len))
		return config_fail(p, n, "key '%s': the value contains a NUL character", dotted);
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
	int rc = typed_scalar(p, n, dotted, "a duration", &k, &b);
	if (rc <= 0)
		return rc;
	if (config_parse_duration_ns((const char *)n->data.scalar.value, n->data.scalar.length,
				     &ns) < 0)
		return config_fail(p, n,
				   "key '%s': invalid duration %s (write a number and a unit, e.g. "
				   "10m, 1h30m, 1.5s, 250ms)",
				   dotted, config_show(n, &sh));
	if (ns < 0)
		return config_fail(p, n, "key '%s': negative duration %s is not allowed", dotted,
				   config_show(n, &sh));
	*dst = config_ns_to_ms(ns);
	return 1;
}

/* exec: a command split into words (config_split_words), or a message at n. */
static int split_cmd(struct pctx *p, const yaml_node_t *n, const char *dotted, const char *s,
		     char ***ret)
{
	char why[160];
	int rc = config_split_words(s, ret, why, sizeof(why));
	if (rc == -EINVAL)
		return config_fail(p, n, "key '%s': %s", dotted, why);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* URL lists (lease.etcd.endpoints)                                         */
/* ------------------------------------------------------------------------ */

/* Split s[0..left) at commas into w; each URL is trimmed and must be http(s). */
static int split_urls(struct pctx *p, const yaml_node_t *v, const char *dotted, const char *s,
		      size_t left, struct words *w)
{
	struct shown sh;
	char item[SHOW_MAX * 2];
	int rc;

	config_trim_space(&s, &left);
	for (bool more = left > 0; more;) {
		const char *u = s, *comma = memchr(s, ',', left);
		size_t n = comma ? (size_t)(comma - s) : left;
		if ((more = comma != NULL)) {
			left -= n + 1;
			s = comma + 1;
		}
		config_trim_space(&u, &n);
		if (n == 0)
			return config_fail(p, v,
					   "key '%s': empty URL in the comma-separated list %s",
					   dotted, config_show(v, &sh));
		if (!config_http_scheme(u, n)) {
			sanitize(item, sizeof(item), u, n);
			return config_fail(
			    p, v,
			    "key '%s': expected http:// or https:// URLs separated by "
			    "commas, got '%s'",
			    dotted, item);
		}
		if ((rc = config_words_add(w, u, n)) < 0)
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
	if (rc == 0 || (rc > 0 && !config_http_scheme(u, strlen(u))))
		rc = config_fail(p, e, "key '%s': expected an http:// or https:// URL, got %s",
				 name, config_show(e, &sh));
	else if (rc > 0 && strchr(u, ','))
		rc = config_fail(p, e,
				 "key '%s': one URL per list item, got %s (write a comma-separated "
				 "string without the list)",
				 name, config_show(e, &sh));
	else if (rc > 0)
		rc = config_words_add(w, u, strlen(u));
	free(u);
	return rc;
}

/*
 * A list of http(s) URLs: a YAML sequence of strings, one URL each, or one
 * string of comma-separated URLs (so that "${ETCD_ENDPOINTS}" works). Spaces
 * around each URL are dropped; a blank string is an empty list. A null value
 * clears the list, as yaml.v3 does for a slice. On success *dst (freed with
 * config_argv_free) and *count are replaced. 0 or a negative errno.
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
			rc = config_fail(p, v, "key '%s': the value contains a NUL character",
					 dotted);
		else if (k != SK_NULL)
			rc = split_urls(p, v, dotted, s, len, &w);
	} else if (v->type == YAML_SEQUENCE_NODE) {
		const yaml_node_item_t *it = v->data.sequence.items.start;
		size_t n = (size_t)(v->data.sequence.items.top - it);
		for (size_t i = 0; i < n && rc == 0; i++)
			rc = url_item(p, yaml_document_get_node(p->doc, it[i]), dotted, i, &w);
	} else {
		rc = config_fail(
		    p, at(p, v),
		    "key '%s': expected a list of URLs or a comma-separated string, got %s", dotted,
		    config_show(v, &sh));
	}
	if (rc < 0)
		goto out;
	config_argv_free(*dst);
	*dst = w.v;
	*count = w.n;
	w.v = NULL;
out:
	config_argv_free(w.v);
	return rc;
}
/* ------------------------------------------------------------------------ */
/* Walking the document                                                     */
/* ------------------------------------------------------------------------ */

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
		return config_fail(p, k, "keys must be strings, got %s%s%s%s", config_show(k, &sh),
				   *parent ? " under '" : "", parent, *parent ? "'" : "");
	for (const yaml_node_pair_t *q = first; q < pair; q++) {
		const yaml_node_t *pk = yaml_document_get_node(p->doc, q->key);
		if (pk->type == YAML_SCALAR_NODE &&
		    pk->data.scalar.length == k->data.scalar.length &&
		    memcmp(pk->data.scalar.value, k->data.scalar.value, k->data.scalar.length) ==
			0) {
			dotted_name(dotted, sizeof(dotted), parent, k);
			return config_fail(p, k, "key '%s' is defined twice (first at line %lu)",
					   dotted, node_line(pk));
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
		const struct key_def *d = config_find_key(
		    parent, (const char *)k->data.scalar.value, k->data.scalar.length);
		if (!d) {
			dotted_name(dotted, sizeof(dotted), parent, k);
			return config_fail(p, k, "unknown key '%s'", dotted);
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
			const struct key_def *d2 = config_find_key(
			    d->path, (const char *)k2->data.scalar.value, k2->data.scalar.length);
			if (d2) {
				p->key = k2;
				return set_value(p, d2, k2, v2);
			}
			dotted_name(dotted, sizeof(dotted), d->path, k2);
			return config_fail(p, k2, "unknown key '%s'", dotted);
		}
	}
	return config_fail(p, k, "key '%s' is a LiteFS setting that ltxfs does not support yet",
			   d->path);
}

static int walk_exec(struct pctx *p, const yaml_node_t *v);

/* Remember the keys that config_finish() checks against lease.type (the first one of each backend).
 */
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
		return config_fail(p, at(p, v), "key '%s': expected a mapping of settings, got %s",
				   d->path, config_show(v, &sh));
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
		return config_fail(
		    p, k, "key '%s' is a LiteFS setting that ltxfs does not support yet", d->path);
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
			rc = config_fail(
			    p, k, "unknown key '%s' (an exec item has 'cmd' and 'if-candidate')",
			    dotted);
		}
		if (rc < 0)
			goto out;
		rc = 0;
	}
	snprintf(dotted, sizeof(dotted), "%s.cmd", prefix);
	if (!cmd || !*cmd) {
		rc = config_fail(p, cmd_node, "key '%s' is required", dotted);
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
			rc = config_fail(p, v,
					 "key 'exec': expected a command string or a list of {cmd, "
					 "if-candidate} maps, got %s",
					 config_show(v, &sh));
			goto out;
		}
		if (memchr(s, '\0', v->data.scalar.length)) {
			rc = config_fail(p, v, "key 'exec': the value contains a NUL character");
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
				rc = config_fail(p, item,
						 "key 'exec[%zu]': expected a map with 'cmd' and "
						 "'if-candidate', got %s",
						 i, config_show(item, &sh));
				goto out;
			}
			if ((rc = exec_item(p, item, i, &list[i])) < 0)
				goto out;
		}
	} else {
		rc = config_fail(
		    p, at(p, v),
		    "key 'exec': expected a command string or a list of {cmd, if-candidate} "
		    "maps, got %s",
		    config_show(v, &sh));
		goto out;
	}
replace:
	config_free_exec(p->cfg->exec, p->cfg->n_exec);
	p->cfg->exec = list;
	p->cfg->n_exec = n;
	list = NULL;
	n = 0;
out:
	config_free_exec(list, n);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* The entry point                                                          */
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
		rc =
		    config_fail(&p, root, "expected a mapping of settings at the top level, got %s",
				config_show(root, &sh));
	if (rc)
		goto out;
	if ((rc = config_finish(&p)) < 0)
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
