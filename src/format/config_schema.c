/*
 * config_schema.c - the keys of ltxfs.yml / litefs.yml and the rules their
 * values obey (formats layer: no logging, no threads).
 *
 * The key table
 * -------------
 * config_keys[] names every key once, dotted ("lease.consul.url"), with its
 * kind, the offset of its field in struct config, the check that runs on a
 * value just read, and how the effective configuration shows it (secrets
 * masked). A section comes right before its keys, and the table is in the
 * order of the effective configuration, so config_dump.c walks it as it is.
 * LiteFS keys that ltxfs does not implement yet are in the table too
 * (K_LITEFS, and whole sections such as proxy: K_LITEFS_SECTION), so that
 * they fail with "key 'a.b' is a LiteFS setting that ltxfs does not support
 * yet" rather than as unknown keys.
 *
 * Checks
 * ------
 * Checks that need a single value (log.format, lease.type, http.addr, ...)
 * run as the value is read (config_yaml.c calls key_def.check), so their
 * messages carry its line. Whole-file checks (required keys, fuse.dir vs
 * data.dir, lease.consul / lease.etcd keys against lease.type, lease.promote,
 * http.token) and derived defaults (http.token from $LTXFS_HTTP_TOKEN,
 * lease.hostname, lease.advertise-url, lease.etcd.key) run in config_finish()
 * afterwards, on the working copy that config_parse() replaces the caller's
 * configuration with only on success.
 *
 * Threads: called from config_parse(), on the main thread at start-up.
 * config_finish() reads the environment and the host name.
 */
#include "config_int.h"
#include "ltxfs/hostport.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* The checks of one value                                                  */
/* ------------------------------------------------------------------------ */

/* s[0..n) starts with http:// or https:// (any case). */
bool config_http_scheme(const char *s, size_t n)
{
	return (n >= 7 && strncasecmp(s, "http://", 7) == 0) ||
	       (n >= 8 && strncasecmp(s, "https://", 8) == 0);
}

static int check_not_empty(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	const char *s = *(char **)field;
	if (s && !*s)
		return config_fail(p, n, "key '%s': must not be empty", dotted);
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
	if (*s && !config_http_scheme(*s, strlen(*s)))
		return config_fail(p, n, "key '%s': expected an http:// or https:// URL, got %s",
				   dotted, config_show(n, &sh));
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
	if (*s && strchr(*s, '@') && !config_http_scheme(*s, strlen(*s)))
		return config_fail(
		    p, n,
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
	return config_fail(p, n,
			   "key '%s': unknown lease type %s (allowed: 'static', 'consul', 'etcd')",
			   dotted, config_show(n, &sh));
}

static int check_log_format(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	struct shown sh;
	const char *s = *(char **)field;
	if (strcmp(s, "text") == 0 || strcmp(s, "json") == 0)
		return 0;
	return config_fail(p, n, "key '%s': expected 'text' or 'json', got %s", dotted,
			   config_show(n, &sh));
}

static int check_http_addr(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	struct shown sh;
	const char *why = NULL;
	unsigned port;
	if (hostport_split(*(char **)field, NULL, 0, &port, &why) < 0)
		return config_fail(p, n, "key '%s': invalid listen address %s: %s (e.g. ':20202')",
				   dotted, config_show(n, &sh), why);
	return 0;
}

static int check_positive(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	if (*(int64_t *)field <= 0)
		return config_fail(p, n, "key '%s': must be greater than zero", dotted);
	return 0;
}

/* etcd grants leases in whole seconds and raises short ones to its own floor. */
static int check_etcd_ttl(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	if (*(int64_t *)field < 1000)
		return config_fail(p, n, "key '%s': must be at least 1s", dotted);
	return 0;
}

static int check_backup_type(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	struct shown sh;
	const char *s = *(char **)field;
	if (strcmp(s, "s3") == 0)
		return 0;
	if (strcmp(s, "litefs-cloud") == 0)
		return config_fail(p, n,
				   "key '%s': LiteFS Cloud backups are not supported (it was "
				   "retired); use 'type: s3'",
				   dotted);
	return config_fail(p, n, "key '%s': unknown backup type %s (allowed: 's3')", dotted,
			   config_show(n, &sh));
}

/* S3's bucket naming rules, the parts that matter for a URL: 3..63 of [a-z0-9.-]. */
static int check_bucket(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	struct shown sh;
	const char *s = *(char **)field;
	size_t len = strlen(s);
	bool ok = len >= 3 && len <= 63;
	for (const char *c = s; *c && ok; c++)
		ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '.' || *c == '-';
	if (!ok)
		return config_fail(p, n,
				   "key '%s': invalid bucket name %s (3 to 63 of a-z, 0-9, '.' "
				   "and '-')",
				   dotted, config_show(n, &sh));
	return 0;
}

/* A key prefix: "" or segments of [A-Za-z0-9._-] joined by single '/'. */
static int check_backup_path(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field)
{
	struct shown sh;
	const char *s = *(char **)field;
	bool ok = strlen(s) <= 256, seg = false;
	for (const char *c = s; *c && ok; c++) {
		if (*c == '/') {
			ok = seg;
			seg = false;
			continue;
		}
		ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		     (*c >= '0' && *c <= '9') || *c == '.' || *c == '_' || *c == '-';
		seg = true;
	}
	if (!ok || (*s && !seg) || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
		return config_fail(p, n,
				   "key '%s': invalid key prefix %s (segments of A-Z, a-z, 0-9, "
				   "'.', '_' and '-' joined by '/', no leading or trailing '/')",
				   dotted, config_show(n, &sh));
	return 0;
}

/* Whole-file rules of the backup section. */
static int check_backup(struct pctx *p)
{
	struct config *c = p->cfg;
	struct {
		char **field;
		const char *env, *key;
	} creds[] = {
	    {&c->backup.access_key_id, "AWS_ACCESS_KEY_ID", "backup.access-key-id"},
	    {&c->backup.secret_access_key, "AWS_SECRET_ACCESS_KEY", "backup.secret-access-key"}};
	if (!c->backup.type) {
		if (c->backup.endpoint || c->backup.bucket || c->backup.path ||
		    c->backup.access_key_id || c->backup.secret_access_key || c->backup.region ||
		    c->backup.restore_if_empty)
			return config_fail(p, NULL,
					   "key 'backup.type' is required in a backup section "
					   "('s3')");
		return 0;
	}
	if (!c->backup.bucket)
		return config_fail(p, NULL,
				   "key 'backup.bucket' is required with 'backup.type: s3'");
	/* Retention deletes what precedes a snapshot older than the window: with
	 * one snapshot ever, it would never delete anything. */
	if (c->backup.retention_ms > 0 && c->backup.snapshot_interval_ms == 0)
		return config_fail(p, NULL,
				   "key 'backup.retention' needs 'backup.snapshot-interval' above "
				   "zero (retention deletes what a newer snapshot replaces)");
	if (!c->backup.region && !(c->backup.region = strdup("us-east-1")))
		return -ENOMEM;
	if (!c->backup.path && !(c->backup.path = strdup("")))
		return -ENOMEM;
	for (size_t i = 0; i < 2; i++) {
		if (*creds[i].field)
			continue;
		const char *v = getenv(creds[i].env);
		if (!v || !*v)
			return config_fail(p, NULL, "key '%s' is not set and $%s is empty",
					   creds[i].key, creds[i].env);
		if (!(*creds[i].field = strdup(v)))
			return -ENOMEM;
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* The key table                                                            */
/* ------------------------------------------------------------------------ */

#define F(m) offsetof(struct config, m)

_Static_assert(F(lease.etcd.n_endpoints) == F(lease.etcd.endpoints) + sizeof(char **),
	       "K_URL_LIST: the count must follow the list");

const struct key_def config_keys[] = {
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
    {"http.token", K_STRING, F(http.token), check_empty_is_unset, MASK_SECRET},
    {"http.read-auth", K_BOOL, F(http.read_auth), NULL},

    {"lease", K_SECTION, 0, NULL},
    {"lease.type", K_STRING, F(lease.type), check_lease_type},
    {"lease.candidate", K_BOOL, F(lease.candidate), NULL},
    {"lease.promote", K_BOOL, F(lease.promote), NULL},
    {"lease.hostname", K_STRING, F(lease.hostname), check_empty_is_unset},
    {"lease.advertise-url", K_STRING, F(lease.advertise_url), check_url},
    {"lease.reconnect-delay", K_DURATION, F(lease.reconnect_delay_ms), check_positive},
    {"lease.demote-delay", K_DURATION, F(lease.demote_delay_ms), NULL},
    {"lease.databases", K_LITEFS, 0, NULL},
    {"lease.consul", K_SECTION, 0, NULL},
    {"lease.consul.url", K_STRING, F(lease.consul.url), check_secret_url, MASK_URL},
    {"lease.consul.key", K_STRING, F(lease.consul.key), check_empty_is_unset},
    {"lease.consul.ttl", K_DURATION, F(lease.consul.ttl_ms), check_positive},
    {"lease.consul.lock-delay", K_DURATION, F(lease.consul.lock_delay_ms), NULL},
    {"lease.etcd", K_SECTION, 0, NULL},
    {"lease.etcd.endpoints", K_URL_LIST, F(lease.etcd.endpoints), NULL, MASK_URL},
    {"lease.etcd.key", K_STRING, F(lease.etcd.key), check_empty_is_unset},
    {"lease.etcd.ttl", K_DURATION, F(lease.etcd.ttl_ms), check_etcd_ttl},
    {"lease.etcd.username", K_STRING, F(lease.etcd.username), check_empty_is_unset},
    {"lease.etcd.password", K_STRING, F(lease.etcd.password), check_empty_is_unset, MASK_SECRET},

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

    {"backup", K_SECTION, 0, NULL},
    {"backup.type", K_STRING, F(backup.type), check_backup_type},
    {"backup.endpoint", K_STRING, F(backup.endpoint), check_url},
    {"backup.force-path-style", K_BOOL, F(backup.force_path_style), NULL},
    {"backup.region", K_STRING, F(backup.region), check_not_empty},
    {"backup.bucket", K_STRING, F(backup.bucket), check_bucket},
    {"backup.path", K_STRING, F(backup.path), check_backup_path},
    {"backup.access-key-id", K_STRING, F(backup.access_key_id), check_empty_is_unset},
    {"backup.secret-access-key", K_STRING, F(backup.secret_access_key), check_empty_is_unset,
     MASK_SECRET},
    {"backup.sync-interval", K_DURATION, F(backup.sync_interval_ms), check_positive},
    {"backup.snapshot-interval", K_DURATION, F(backup.snapshot_interval_ms), NULL},
    {"backup.retention", K_DURATION, F(backup.retention_ms), NULL},
    {"backup.compaction-interval", K_DURATION, F(backup.compaction_interval_ms), NULL},
    {"backup.restore-if-empty", K_BOOL, F(backup.restore_if_empty), NULL},
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

const size_t config_n_keys = sizeof(config_keys) / sizeof(config_keys[0]);

const struct key_def *config_find_key(const char *parent, const char *name, size_t len)
{
	size_t pl = strlen(parent);
	if (memchr(name, '.', len) || memchr(name, '\0', len))
		return NULL;
	for (size_t i = 0; i < config_n_keys; i++) {
		const char *k = config_keys[i].path;
		if (pl) {
			if (strncmp(k, parent, pl) != 0 || k[pl] != '.')
				continue;
			k += pl + 1;
		}
		if (text_is(name, len, k))
			return &config_keys[i];
	}
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* Whole-file validation and derived defaults                               */
/* ------------------------------------------------------------------------ */

/* Go filepath.Clean of an absolute version of path. Caller frees; NULL on OOM. */
static char *clean_path(const char *path)
{
	char *abs = config_abs_path(path), *out = NULL;
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
		rc = config_fail(
		    p, NULL,
		    "keys 'fuse.dir' and 'data.dir' must name different directories (both "
		    "are '%s')",
		    f);
	else if (strncmp(d, f, fl) == 0 && (d[fl] == '/' || f[fl - 1] == '/'))
		rc = config_fail(
		    p, NULL,
		    "key 'data.dir': '%s' is inside fuse.dir '%s'; the mount would hide it", d, f);
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
		return config_fail(p, p->consul_key, "key '%s' is set but lease.type is '%s'",
				   p->consul_path, type);
	if (p->etcd_key && !etcd)
		return config_fail(p, p->etcd_key, "key '%s' is set but lease.type is '%s'",
				   p->etcd_path, type);
	if (c->lease.promote && !consul && !etcd)
		return config_fail(
		    p, p->promote_key,
		    "key 'lease.promote': handoff needs a consul or etcd lease (lease.type "
		    "is '%s')",
		    type);
	/* LiteFS only promotes candidates, and says nothing otherwise: the Fly
	 * pattern is "candidate: ${FLY_REGION == PRIMARY_REGION}" with "promote: true". */
	if (!c->lease.candidate)
		c->lease.promote = false;

	if (consul && !c->lease.consul.url)
		return config_fail(
		    p, NULL,
		    "key 'lease.consul.url' is required with 'lease.type: consul' (the "
		    "Consul agent, e.g. http://localhost:8500)");
	if (consul && !c->lease.consul.key)
		return config_fail(
		    p, NULL,
		    "key 'lease.consul.key' is required with 'lease.type: consul' (the KV "
		    "key that holds the primary lock, e.g. litefs/myapp)");
	if (etcd && c->lease.etcd.n_endpoints == 0)
		return config_fail(
		    p, NULL,
		    "key 'lease.etcd.endpoints' is required with 'lease.type: etcd' (at "
		    "least one http:// or https:// URL)");
	if (etcd && c->lease.etcd.password && !c->lease.etcd.username)
		return config_fail(p, NULL,
				   "key 'lease.etcd.password' is set without lease.etcd.username");
	if (etcd && !c->lease.etcd.key && !(c->lease.etcd.key = strdup(DEFAULT_ETCD_KEY)))
		return -ENOMEM;
	return 0;
}

int config_finish(struct pctx *p)
{
	struct config *c = p->cfg;
	int rc;

	if (!c->fuse.dir)
		return config_fail(p, NULL,
				   "key 'fuse.dir' is required (the directory to mount on)");
	if (!c->data.dir)
		return config_fail(p, NULL, "key 'data.dir' is required");
	if ((rc = check_dirs(p)) < 0)
		return rc;
	if (!c->lease.type)
		return config_fail(p, NULL,
				   "key 'lease.type' is required ('static', 'consul' or 'etcd')");
	if (!c->http.addr)
		return config_fail(p, NULL, "key 'http.addr' is required");
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
			return config_fail(
			    p, NULL,
			    "key 'http.token' (or $LTXFS_HTTP_TOKEN): want 8 to 256 printable "
			    "characters without spaces");
	}
	if (c->http.read_auth && !c->http.token)
		return config_fail(
		    p, NULL,
		    "key 'http.read-auth' needs a token (http.token or $LTXFS_HTTP_TOKEN)");
	if ((rc = check_lease(p)) < 0)
		return rc;
	if ((rc = check_backup(p)) < 0)
		return rc;

	if (!c->lease.hostname) {
		char host[HOST_NAME_MAX + 1];
		if (gethostname(host, sizeof(host)) < 0) {
			rc = -errno;
			config_fail(p, NULL, "key 'lease.hostname': cannot read the host name: %s",
				    strerror(-rc));
			return rc;
		}
		host[HOST_NAME_MAX] = '\0';
		if (!(c->lease.hostname = strdup(host)))
			return -ENOMEM;
	}
	if (!c->lease.advertise_url && !c->lease.candidate && c->lease.type &&
	    strcmp(c->lease.type, "static") == 0)
		return config_fail(
		    p, NULL,
		    "key 'lease.advertise-url' is required with a static lease and "
		    "'candidate: false': it is the URL of the primary to replicate from");
	if (!c->lease.advertise_url) {
		unsigned port = 0;
		const char *why = NULL;
		if (hostport_split(c->http.addr, NULL, 0, &port, &why) < 0)
			return config_fail(p, NULL,
					   "key 'http.addr': invalid listen address '%s': %s",
					   c->http.addr, why);
		if (port == 0)
			return config_fail(
			    p, NULL,
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
