/*
 * config.c - ltxfs.yml / litefs.yml: the configuration's lifecycle (defaults,
 * release, deep copy) and its entry points from disk, config_load() and
 * config_find() (formats layer: no logging, no threads).
 *
 * Pipeline
 * --------
 * config_load() reads the file (at most CONFIG_MAX_BYTES), runs
 * config_expand_env() over the raw text when asked (LiteFS does this before
 * YAML sees the bytes, so expansion also happens inside comments and quoted
 * strings), and hands the result to config_parse(). config_parse() loads the
 * first YAML document with libyaml's document API (yaml_parser_load) and walks
 * the node tree against the static table config_keys[]. Later documents in
 * the stream are ignored, as yaml.v3's Decoder.Decode does. The stages live in:
 *
 *   config_go.c      config_expand_env(), durations, shell words (Go's rules)
 *   config_yaml.c    config_parse(): scalar typing, the walk, the messages
 *   config_schema.c  config_keys[], the checks of one value, config_finish()
 *                    (whole-file checks and derived defaults)
 *   config_dump.c    config_dump() and config_log_line(): the effective
 *                    configuration, secrets masked
 *
 * Ownership: every pointer in struct config is malloc'd and owned by it;
 * config_release() frees them all and zeroes the struct, and config_copy()
 * duplicates them all. config_parse() works on a deep copy of the caller's
 * config and only replaces it on success, so a failed parse leaves the
 * caller's config untouched.
 *
 * Threads: none of this is thread-safe; main calls it before it starts any
 * other thread (config.h).
 */
#include "config_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONFIG_MAX_BYTES (1024 * 1024) /* a config file larger than this is refused */

/* ------------------------------------------------------------------------ */
/* Lifecycle                                                                */
/* ------------------------------------------------------------------------ */

void config_free_exec(struct config_exec *list, size_t n)
{
	for (size_t i = 0; list && i < n; i++)
		config_argv_free(list[i].argv);
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
	cfg->backup.sync_interval_ms = 1000;
	cfg->backup.snapshot_interval_ms = 24 * 3600 * 1000;
	cfg->backup.compaction_interval_ms = 5 * 60 * 1000;
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
	config_free_exec(cfg->exec, cfg->n_exec);
	free(cfg->fuse.dir);
	free(cfg->data.dir);
	free(cfg->http.addr);
	free(cfg->http.token);
	free(cfg->lease.type);
	free(cfg->lease.hostname);
	free(cfg->lease.advertise_url);
	free(cfg->lease.consul.url);
	free(cfg->lease.consul.key);
	config_argv_free(cfg->lease.etcd.endpoints);
	free(cfg->lease.etcd.key);
	free(cfg->lease.etcd.username);
	free(cfg->lease.etcd.password);
	free(cfg->backup.type);
	free(cfg->backup.endpoint);
	free(cfg->backup.region);
	free(cfg->backup.bucket);
	free(cfg->backup.path);
	free(cfg->backup.access_key_id);
	if (cfg->backup.secret_access_key)
		explicit_bzero(cfg->backup.secret_access_key,
			       strlen(cfg->backup.secret_access_key));
	free(cfg->backup.secret_access_key);
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
			config_argv_free(v);
			return -ENOMEM;
		}
	}
	*dst = v;
	return 0;
}

/* Deep copy src into dst (dst is overwritten). 0 or -ENOMEM (dst released). */
int config_copy(struct config *dst, const struct config *src)
{
	int rc = 0;
	*dst = *src;
	dst->path = dst->fuse.dir = dst->data.dir = dst->http.addr = dst->http.token = NULL;
	dst->lease.type = dst->lease.hostname = dst->lease.advertise_url = NULL;
	dst->lease.consul.url = dst->lease.consul.key = NULL;
	dst->lease.etcd.endpoints = NULL;
	dst->lease.etcd.key = dst->lease.etcd.username = dst->lease.etcd.password = NULL;
	dst->log.format = NULL;
	dst->backup.type = dst->backup.endpoint = dst->backup.region = dst->backup.bucket = NULL;
	dst->backup.path = dst->backup.access_key_id = dst->backup.secret_access_key = NULL;
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
	    dup_str(&dst->log.format, src->log.format) ||
	    dup_str(&dst->backup.type, src->backup.type) ||
	    dup_str(&dst->backup.endpoint, src->backup.endpoint) ||
	    dup_str(&dst->backup.region, src->backup.region) ||
	    dup_str(&dst->backup.bucket, src->backup.bucket) ||
	    dup_str(&dst->backup.path, src->backup.path) ||
	    dup_str(&dst->backup.access_key_id, src->backup.access_key_id) ||
	    dup_str(&dst->backup.secret_access_key, src->backup.secret_access_key)) {
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

char *config_abs_path(const char *path)
{
	char *abs = NULL, *cwd = NULL;
	if (path[0] != '/' && (cwd = getcwd(NULL, 0)) != NULL) {
		if (asprintf(&abs, "%s/%s", cwd, path) < 0)
			abs = NULL;
		free(cwd);
	} else {
		abs = strdup(path);
	}
	return abs;
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
		char *path = config_abs_path(c);
		if (!path)
			return -ENOMEM;
		*ret_path = path;
		return 0;
	}
	return -ENOENT;
}
