/*
 * config_dump.c - the effective configuration, secrets masked, in two forms:
 * config_dump() writes YAML (`ltxfs mount -check-config`), config_log_line()
 * builds the one-line dotted form that the daemon logs at start-up (formats
 * layer: no logging, no threads).
 *
 * One walk, two emitters
 * ----------------------
 * walk() goes once over config_keys[] (config_schema.c), which names every key
 * once, in order, each section right before its keys. It leaves out what the
 * effective configuration does not show (see shown()): the LiteFS keys ltxfs
 * does not implement, exec when no command is set, and a lease backend's
 * section (lease.consul, lease.etcd) unless lease.type names that backend.
 * For every other key it hands an emitter a section, a key with a value, or
 * the items of a list, as begin / text... / end calls; the text pieces are
 * the value written as YAML. So both forms show the same keys with the same
 * values, masked the same way.
 *
 * The values, as YAML
 * -------------------
 *   bool      true | false
 *   string    "text" with '"' and '\' escaped by a backslash; null when unset
 *   duration  whole seconds as "10s", anything else as "1500ms"
 *             (config_format_duration; time.ParseDuration reads both back)
 *   exec      one item per command: {cmd: "argv joined by spaces", if-candidate: true}
 *   URL list  one item per URL: "url" (not escaped)
 * Masks (key_def.mask): MASK_SECRET shows a set value as "*****" (http.token,
 * lease.etcd.password); MASK_URL replaces the password of a URL's userinfo
 * with five asterisks ("https://:TOKEN@host" becomes "https://:" + "*****" +
 * "@host"; with no ':' in the userinfo, all of it is replaced) (lease.consul.url,
 * lease.etcd.endpoints).
 *
 * The YAML form
 * -------------
 *     # effective configuration of /etc/litefs.yml
 *     exit-on-error: true
 *     exec:
 *       - {cmd: "myapp -port 8081", if-candidate: false}
 *     fuse:
 *       dir: "/litefs"
 *     lease:
 *       etcd:
 *         endpoints:
 *           - "http://etcd:2379"
 * Two spaces of indent per level; a list's items two spaces deeper than its key.
 *
 * The log-line form
 * -----------------
 *     exit-on-error=true exec={cmd: "myapp -port 8081", if-candidate: false}
 *     fuse.dir="/litefs" ... lease.etcd.endpoints="http://etcd:2379" ...
 * (one line): "dotted.key=value" pairs separated by one space, values as in
 * the YAML form; sections give no pair, and each item of a list repeats the
 * list's key. Values are not escaped further: a control character in a value
 * (a newline inside a quoted exec argument, say) reaches the log as it is, as
 * it reaches the YAML.
 *
 * Threads: both read the configuration only; main calls them at start-up.
 */
#include "config_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum item_kind {
	IT_SECTION, /* a mapping of further keys; no value */
	IT_VALUE,   /* a key and its value */
	IT_ITEM,    /* one item of a list; the value is the item */
};

struct item {
	enum item_kind kind;
	const char *path; /* the dotted key; for IT_ITEM, the list's key */
	const char *name; /* the last component of path */
	int depth;	  /* 0 at the top level */
};

/* Where walk() sends the effective configuration. */
struct emitter {
	void (*begin)(void *ctx, const struct item *it);  /* a section, key or item starts */
	void (*text)(void *ctx, const char *s, size_t n); /* a piece of its value */
	void (*end)(void *ctx, const struct item *it);	  /* it ends; may be NULL */
	void *ctx;
};

static void put(const struct emitter *e, const char *s)
{
	e->text(e->ctx, s, strlen(s));
}

/* s[0..n), with '"' and '\' escaped by a backslash when esc is set. */
static void put_str(const struct emitter *e, const char *s, size_t n, bool esc)
{
	while (n > 0) {
		size_t k = 0;
		while (k < n && !(esc && (s[k] == '"' || s[k] == '\\')))
			k++;
		e->text(e->ctx, s, k);
		s += k;
		n -= k;
		if (n > 0) {
			e->text(e->ctx, "\\", 1);
			e->text(e->ctx, s, 1);
			s++;
			n--;
		}
	}
}

/* "s", escaped, or null. */
static void put_quoted(const struct emitter *e, const char *s)
{
	if (!s) {
		put(e, "null");
		return;
	}
	put(e, "\"");
	put_str(e, s, strlen(s), true);
	put(e, "\"");
}

/* A URL with any userinfo password replaced by "*****". */
static void put_url(const struct emitter *e, const char *url, bool esc)
{
	const char *scheme = strstr(url, "://");
	const char *host = scheme ? scheme + 3 : url;
	const char *at = strchr(host, '@'), *slash = strchr(host, '/');
	if (!at || (slash && slash < at)) {
		put_str(e, url, strlen(url), esc);
		return;
	}
	const char *colon = memchr(host, ':', (size_t)(at - host));
	put_str(e, url, (size_t)((colon ? colon : host) - url), esc);
	put(e, colon ? ":*****" : "*****");
	put_str(e, at, strlen(at), esc);
}

static void begin(const struct emitter *e, const struct item *it)
{
	e->begin(e->ctx, it);
}

static void end(const struct emitter *e, const struct item *it)
{
	if (e->end)
		e->end(e->ctx, it);
}

/* exec: a section, then one {cmd, if-candidate} item per command. */
static void walk_exec(const struct config *c, struct item *it, const struct emitter *e)
{
	it->kind = IT_SECTION;
	begin(e, it);
	end(e, it);
	it->kind = IT_ITEM;
	for (size_t i = 0; i < c->n_exec; i++) {
		begin(e, it);
		put(e, "{cmd: \"");
		for (char **a = c->exec[i].argv; a && *a; a++) {
			if (a != c->exec[i].argv)
				put(e, " ");
			put_str(e, *a, strlen(*a), true);
		}
		put(e, "\", if-candidate: ");
		put(e, c->exec[i].if_candidate ? "true}" : "false}");
		end(e, it);
	}
}

/* A URL list: a section, then one item per URL, masked. */
static void walk_url_list(const void *field, struct item *it, const struct emitter *e)
{
	char *const *urls = *(char **const *)field;
	size_t n = *(const size_t *)((const char *)field + sizeof(char **));
	it->kind = IT_SECTION;
	begin(e, it);
	end(e, it);
	it->kind = IT_ITEM;
	for (size_t i = 0; i < n; i++) {
		begin(e, it);
		put(e, "\"");
		put_url(e, urls[i], false);
		put(e, "\"");
		end(e, it);
	}
}

/* One key of the table: its section, value or list. */
static void walk_key(const struct config *c, const struct key_def *d, const struct emitter *e)
{
	const void *field = (const char *)c + d->off;
	const char *dot = strrchr(d->path, '.'), *s;
	struct item it = {IT_VALUE, d->path, dot ? dot + 1 : d->path, 0};
	char dur[CONFIG_DURATION_MAX];

	for (const char *p = d->path; (p = strchr(p, '.')) != NULL; p++)
		it.depth++;
	switch (d->kind) {
	case K_SECTION:
		it.kind = IT_SECTION;
		begin(e, &it);
		break;
	case K_BOOL:
		begin(e, &it);
		put(e, *(const bool *)field ? "true" : "false");
		break;
	case K_STRING:
		s = *(char *const *)field;
		begin(e, &it);
		if (s && d->mask == MASK_SECRET) {
			put_quoted(e, "*****");
		} else if (s && d->mask == MASK_URL) {
			put(e, "\"");
			put_url(e, s, true);
			put(e, "\"");
		} else {
			put_quoted(e, s);
		}
		break;
	case K_DURATION:
		begin(e, &it);
		put(e, config_format_duration(*(const int64_t *)field, dur, sizeof(dur)));
		break;
	case K_EXEC:
		walk_exec(c, &it, e);
		return;
	case K_URL_LIST:
		walk_url_list(field, &it, e);
		return;
	case K_LITEFS:
	case K_LITEFS_SECTION:
		return; /* never shown */
	}
	end(e, &it);
}

/*
 * Whether the effective configuration shows key d: not the LiteFS keys ltxfs
 * does not implement, exec only when a command is set, and a lease backend's
 * section ("lease.<backend>") only when lease.type names that backend.
 */
static bool shown(const struct config *c, const struct key_def *d)
{
	static const char lease[] = "lease.";
	switch (d->kind) {
	case K_LITEFS:
	case K_LITEFS_SECTION:
		return false;
	case K_EXEC:
		return c->n_exec > 0;
	case K_SECTION:
		if (strcmp(d->path, "backup") == 0)
			return c->backup.type != NULL;
		if (strncmp(d->path, lease, sizeof(lease) - 1) == 0)
			return c->lease.type &&
			       strcmp(d->path + sizeof(lease) - 1, c->lease.type) == 0;
		return true;
	default:
		return true;
	}
}

/* The effective configuration of c, key by key, to e. */
static void walk(const struct config *c, const struct emitter *e)
{
	const char *hidden = NULL; /* a section left out, and with it its keys */
	size_t hidden_len = 0;

	for (size_t i = 0; i < config_n_keys; i++) {
		const struct key_def *d = &config_keys[i];
		if (hidden && strncmp(d->path, hidden, hidden_len) == 0 &&
		    d->path[hidden_len] == '.')
			continue;
		hidden = NULL;
		if (!shown(c, d)) {
			hidden = d->path;
			hidden_len = strlen(hidden);
			continue;
		}
		walk_key(c, d, e);
	}
}

/* ------------------------------------------------------------------------ */
/* YAML                                                                     */
/* ------------------------------------------------------------------------ */

static void dump_begin(void *ctx, const struct item *it)
{
	FILE *f = ctx;
	int indent = 2 * it->depth;
	if (it->kind == IT_SECTION)
		fprintf(f, "%*s%s:", indent, "", it->name);
	else if (it->kind == IT_VALUE)
		fprintf(f, "%*s%s: ", indent, "", it->name);
	else
		fprintf(f, "%*s- ", indent + 2, "");
}

static void dump_text(void *ctx, const char *s, size_t n)
{
	fwrite(s, 1, n, ctx);
}

static void dump_end(void *ctx, const struct item *it)
{
	fputc('\n', ctx);
}

void config_dump(const struct config *c, FILE *f)
{
	const struct emitter e = {dump_begin, dump_text, dump_end, f};
	fprintf(f, "# effective configuration%s%s\n", c->path ? " of " : "",
		c->path ? c->path : "");
	walk(c, &e);
}

/* ------------------------------------------------------------------------ */
/* One log line                                                             */
/* ------------------------------------------------------------------------ */

static void line_begin(void *ctx, const struct item *it)
{
	struct sbuf *b = ctx;
	if (it->kind == IT_SECTION)
		return;
	if (b->len)
		config_sb_add(b, " ", 1);
	config_sb_add(b, it->path, strlen(it->path));
	config_sb_add(b, "=", 1);
}

static void line_text(void *ctx, const char *s, size_t n)
{
	config_sb_add(ctx, s, n);
}

int config_log_line(const struct config *c, char **ret)
{
	struct sbuf b = {0};
	const struct emitter e = {line_begin, line_text, NULL, &b};
	walk(c, &e);
	char *s = config_sb_finish(&b);
	if (!s)
		return -ENOMEM;
	*ret = s;
	return 0;
}
