/*
 * lease_consul.c - the primary lease as a Consul session lock.
 *
 * Protocol (docs/leases.md; ../shared/reference/lease.md §1 and §3):
 *
 *   acquire   PUT /v1/session/create {"Name":"ltxfs","TTL":"<T>s",
 *             "LockDelay":"<D>ms","Behavior":"delete","Checks":[]} once, then
 *             PUT /v1/kv/<key>?acquire=<session> with the value. "true":
 *             read the key back with ?consistent and require Session ==
 *             ours; its ModifyIndex is the epoch. "false": read the key; a
 *             Session there means another holder, none means lock-delay.
 *             A 500 naming an invalid session drops the session.
 *   renew     PUT /v1/session/renew/<session>; 404 means the session is gone
 *             and with it the key (behavior delete). The reply's TTL is used.
 *   release   PUT ?release=<session> (no lock-delay for the successor), then
 *             destroy the session.
 *   observe   GET /v1/kv/<key>?index=<i>&wait=<w>s&consistent, a blocking
 *             query; the index is reset to 0 when it goes backwards.
 *   handoff   the session ID is the token: the successor renews it and
 *             re-acquires the key with its own value, which bumps
 *             ModifyIndex (a new epoch) without any lock-delay.
 *
 * The URL may carry an ACL token as its userinfo password
 * (https://:TOKEN@host/) and a key prefix as its path, as LiteFS reads it;
 * with a prefix a catalog node "<prefix>-ltxfs" is registered for the
 * sessions (servers reached without a local agent, as on Fly.io).
 */
#include "ltxfs/config.h"
#include "ltxfs/httpc.h"
#include "ltxfs/lease.h"
#include "ltxfs/lease_backend.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct consul {
	struct lease base;
	char *baseurl; /* scheme://host:port */
	char *key;     /* prefix/key */
	char *node;    /* catalog node to register, NULL to use the agent's */
	char auth[512];
	bool node_registered;
	bool observing; /* the request in flight is an observe: lease_kick may end it */
	int64_t lock_delay_ms;
	char session[64];
};

static int status_err(struct consul *c, const char *what, struct httpc_resp *resp)
{
	snprintf(c->base.err, sizeof(c->base.err), "consul %s: HTTP %ld: %.200s", what,
		 resp->status, resp->body ? resp->body : "");
	if (resp->status == 403 || resp->status == 401)
		return -EACCES;
	return -EIO;
}

static int call(struct consul *c, const char *method, const char *path, const char *body,
		long timeout_ms, struct httpc_resp *resp)
{
	char url[2048];
	snprintf(url, sizeof(url), "%s%s", c->baseurl, path);
	struct httpc_req req = {
	    .method = method,
	    .url = url,
	    .body = body,
	    .body_len = body ? strlen(body) : 0,
	    .headers = {c->auth[0] ? c->auth : NULL},
	    .timeout_ms = timeout_ms,
	    .abort = &c->base.aborted,
	    .abort2 = c->observing ? &c->base.kicked : NULL,
	};
	int r = httpc_do(&req, resp);
	if (r < 0)
		snprintf(c->base.err, sizeof(c->base.err), "consul: %s", resp->err);
	return r;
}

static long op_timeout(struct consul *c)
{
	long t = (long)(c->base.ttl_ms / 3);
	return t < 1000 ? 1000 : t;
}

static int register_node(struct consul *c)
{
	if (!c->node || c->node_registered)
		return 0;
	struct httpc_resp resp;
	char body[512];
	snprintf(body, sizeof(body), "{\"Node\":\"%s\",\"Address\":\"localhost\"}", c->node);
	int r = call(c, "PUT", "/v1/catalog/register", body, op_timeout(c), &resp);
	if (r == 0 && resp.status != 200)
		r = status_err(c, "catalog register", &resp);
	if (r == 0)
		c->node_registered = true;
	httpc_resp_release(&resp);
	return r;
}

static int create_session(struct consul *c)
{
	struct httpc_resp resp;
	char body[768];
	int r = register_node(c);
	if (r < 0)
		return r;
	int64_t ttl_s = (c->base.ttl_ms + 999) / 1000;
	int n = snprintf(body, sizeof(body),
			 "{\"Name\":\"ltxfs\",\"TTL\":\"%" PRId64 "s\",\"LockDelay\":\"%" PRId64
			 "ms\",\"Behavior\":\"delete\",\"Checks\":[]",
			 ttl_s, c->lock_delay_ms);
	if (c->node)
		n += snprintf(body + n, sizeof(body) - (size_t)n, ",\"Node\":\"%s\"", c->node);
	snprintf(body + n, sizeof(body) - (size_t)n, "}");
	r = call(c, "PUT", "/v1/session/create", body, op_timeout(c), &resp);
	if (r == 0 && resp.status != 200)
		r = status_err(c, "session create", &resp);
	if (r == 0) {
		json_error_t je;
		json_t *o = json_loadb(resp.body, resp.len, 0, &je);
		const char *id = json_string_value(json_object_get(o, "ID"));
		if (id && strlen(id) < sizeof(c->session))
			snprintf(c->session, sizeof(c->session), "%s", id);
		else {
			snprintf(c->base.err, sizeof(c->base.err),
				 "consul session create: no ID in %.200s", resp.body);
			r = -EIO;
		}
		json_decref(o);
	}
	httpc_resp_release(&resp);
	return r;
}

/* The key's entry: present, its Session, value and ModifyIndex. */
struct entry {
	bool present;
	char session[64];
	char *value;
	size_t value_len;
	uint64_t modify_index;
};

static int parse_entry(const char *body, size_t len, struct entry *e)
{
	json_error_t je;
	memset(e, 0, sizeof(*e));
	json_t *a = json_loadb(body, len, 0, &je);
	json_t *o = json_array_get(a, 0);
	if (!json_is_object(o)) {
		json_decref(a);
		return -EINVAL;
	}
	e->present = true;
	const char *s = json_string_value(json_object_get(o, "Session"));
	snprintf(e->session, sizeof(e->session), "%s", s ? s : "");
	const char *v = json_string_value(json_object_get(o, "Value"));
	int r = 0;
	if (v)
		r = httpc_b64decode(v, &e->value, &e->value_len);
	json_t *mi = json_object_get(o, "ModifyIndex");
	e->modify_index = json_is_integer(mi) ? (uint64_t)json_integer_value(mi) : 0;
	json_decref(a);
	return r;
}

/* GET the key (optionally blocking). 0 with e filled (present false on 404). */
static int get_key(struct consul *c, const char *key, const char *query, long timeout_ms,
		   struct entry *e, struct httpc_resp *meta)
{
	char path[2048];
	struct httpc_resp resp;
	snprintf(path, sizeof(path), "/v1/kv/%s%s", key, query);
	int r = call(c, "GET", path, NULL, timeout_ms, &resp);
	memset(e, 0, sizeof(*e));
	if (r == 0) {
		if (resp.status == 404)
			r = 0;
		else if (resp.status != 200)
			r = status_err(c, "kv read", &resp);
		else if (parse_entry(resp.body, resp.len, e) < 0) {
			snprintf(c->base.err, sizeof(c->base.err),
				 "consul kv read: bad reply %.200s", resp.body);
			r = -EIO;
		}
	}
	if (meta) {
		meta->has_index = resp.has_index;
		meta->consul_index = resp.consul_index;
	}
	httpc_resp_release(&resp);
	return r;
}

static bool body_is(const struct httpc_resp *resp, const char *word)
{
	size_t n = strlen(word);
	size_t len = resp->len;
	while (len && (resp->body[len - 1] == '\n' || resp->body[len - 1] == ' '))
		len--;
	return len == n && memcmp(resp->body, word, n) == 0;
}

static int acquire_with(struct consul *c, const char *session, const char *value, uint64_t *epoch)
{
	char path[2048];
	struct httpc_resp resp;
	struct entry e;
	snprintf(path, sizeof(path), "/v1/kv/%s?acquire=%s", c->key, session);
	int r = call(c, "PUT", path, value, op_timeout(c), &resp);
	if (r < 0)
		goto out;
	if (resp.status == 500 && strstr(resp.body, "invalid session")) {
		snprintf(c->base.err, sizeof(c->base.err), "consul acquire: %.200s", resp.body);
		r = -ESTALE;
		goto out;
	}
	if (resp.status != 200) {
		r = status_err(c, "acquire", &resp);
		goto out;
	}
	bool won = body_is(&resp, "true");
	if (!won && !body_is(&resp, "false")) {
		snprintf(c->base.err, sizeof(c->base.err),
			 "consul acquire: unexpected reply %.100s", resp.body);
		r = -EIO;
		goto out;
	}
	r = get_key(c, c->key, "?consistent", op_timeout(c), &e, NULL);
	if (r < 0)
		goto out;
	if (won && e.present && strcmp(e.session, session) == 0) {
		*epoch = e.modify_index;
		r = 0;
	} else if (won) {
		/* taken from us between the two calls (an operator, a destroy) */
		snprintf(c->base.err, sizeof(c->base.err),
			 "consul acquire: the key changed hands right after the acquire");
		r = LEASE_HELD;
	} else {
		r = e.present && e.session[0] ? LEASE_HELD : LEASE_DELAYED;
	}
	free(e.value);
out:
	httpc_resp_release(&resp);
	return r;
}

static int c_acquire(struct lease *l, const char *value, uint64_t *epoch, int64_t *ttl_ms)
{
	struct consul *c = (struct consul *)l;
	int r;
	if (!c->session[0] && (r = create_session(c)) < 0)
		return r;
	r = acquire_with(c, c->session, value, epoch);
	if (r == -ESTALE) {
		c->session[0] = '\0';
		return -EAGAIN;
	}
	*ttl_ms = l->ttl_ms;
	return r;
}

static int renew_session(struct consul *c, const char *session, int64_t *ttl_ms)
{
	char path[256];
	struct httpc_resp resp;
	snprintf(path, sizeof(path), "/v1/session/renew/%s", session);
	int r = call(c, "PUT", path, NULL, op_timeout(c), &resp);
	if (r < 0)
		goto out;
	if (resp.status == 404) {
		snprintf(c->base.err, sizeof(c->base.err), "consul renew: %.200s", resp.body);
		r = -ESTALE;
		goto out;
	}
	if (resp.status != 200) {
		r = status_err(c, "renew", &resp);
		goto out;
	}
	*ttl_ms = c->base.ttl_ms;
	json_error_t je;
	json_t *a = json_loadb(resp.body, resp.len, 0, &je);
	const char *ttl = json_string_value(json_object_get(json_array_get(a, 0), "TTL"));
	int64_t ms;
	if (ttl && config_parse_duration(ttl, &ms) == 0 && ms > 0)
		*ttl_ms = ms;
	json_decref(a);
out:
	httpc_resp_release(&resp);
	return r;
}

static int c_renew(struct lease *l, int64_t *ttl_ms)
{
	struct consul *c = (struct consul *)l;
	if (!c->session[0])
		return -ESTALE;
	int r = renew_session(c, c->session, ttl_ms);
	if (r == -ESTALE)
		c->session[0] = '\0';
	return r;
}

static int c_acquire_handoff(struct lease *l, const char *token, const char *value, uint64_t *epoch,
			     int64_t *ttl_ms)
{
	struct consul *c = (struct consul *)l;
	if (strlen(token) >= sizeof(c->session))
		return -EINVAL;
	int r = renew_session(c, token, ttl_ms);
	if (r < 0)
		return r;
	r = acquire_with(c, token, value, epoch);
	if (r == 0)
		snprintf(c->session, sizeof(c->session), "%s", token);
	return r;
}

static int c_release(struct lease *l)
{
	struct consul *c = (struct consul *)l;
	char path[2048];
	struct httpc_resp resp;
	int r = 0;
	if (!c->session[0])
		return 0;
	bool was = l->aborted;
	l->aborted = false; /* a release at shutdown must still go out */
	snprintf(path, sizeof(path), "/v1/kv/%s?release=%s", c->key, c->session);
	if (call(c, "PUT", path, "", 2000, &resp) == 0 && resp.status != 200)
		r = status_err(c, "release", &resp);
	httpc_resp_release(&resp);
	snprintf(path, sizeof(path), "/v1/session/destroy/%s", c->session);
	if (call(c, "PUT", path, NULL, 2000, &resp) == 0 && resp.status != 200 && r == 0)
		r = status_err(c, "session destroy", &resp);
	httpc_resp_release(&resp);
	c->session[0] = '\0';
	l->aborted = was;
	return r;
}

static void c_forget(struct lease *l)
{
	((struct consul *)l)->session[0] = '\0';
}

static int c_observe(struct lease *l, uint64_t *index, int wait_ms, struct lease_holder *out)
{
	struct consul *c = (struct consul *)l;
	char q[128];
	struct entry e;
	struct httpc_resp meta = {0};
	long timeout = op_timeout(c);
	if (*index > 0 && wait_ms > 0) {
		int ws = (wait_ms + 999) / 1000;
		snprintf(q, sizeof(q), "?consistent&index=%" PRIu64 "&wait=%ds", *index, ws);
		timeout = (long)ws * 1000 + ws * 1000 / 16 + 2000;
	} else {
		snprintf(q, sizeof(q), "?consistent");
	}
	c->observing = true;
	int r = get_key(c, c->key, q, timeout, &e, &meta);
	c->observing = false;
	if (r < 0)
		return r;
	uint64_t ni = meta.has_index ? meta.consul_index : 0;
	*index = ni < *index ? 0 : ni;
	if (e.present && e.session[0]) {
		lease_value_decode(e.value ? e.value : "", e.value_len, out);
		out->epoch = e.modify_index;
	}
	free(e.value);
	return 0;
}

static int c_handoff_token(struct lease *l, char *buf, size_t n)
{
	struct consul *c = (struct consul *)l;
	if (!c->session[0])
		return -ESTALE;
	snprintf(buf, n, "%s", c->session);
	return 0;
}

static int c_cluster_id(struct lease *l, const char *mine, char out[21])
{
	struct consul *c = (struct consul *)l;
	char key[2048], path[2200];
	struct entry e;
	snprintf(key, sizeof(key), "%s/clusterid", c->key);
	for (int attempt = 0; attempt < 3; attempt++) {
		int r = get_key(c, key, "?consistent", op_timeout(c), &e, NULL);
		if (r < 0)
			return r;
		if (e.present && e.value && e.value_len > 0) {
			snprintf(out, 21, "%.*s", (int)e.value_len, e.value);
			free(e.value);
			return 0;
		}
		free(e.value);
		if (!mine || !*mine) {
			out[0] = '\0';
			return 0;
		}
		struct httpc_resp resp;
		snprintf(path, sizeof(path), "/v1/kv/%s?cas=0", key);
		r = call(c, "PUT", path, mine, op_timeout(c), &resp);
		if (r == 0 && resp.status != 200)
			r = status_err(c, "cluster ID write", &resp);
		bool won = r == 0 && body_is(&resp, "true");
		httpc_resp_release(&resp);
		if (r < 0)
			return r;
		if (won) {
			snprintf(out, 21, "%s", mine);
			return 0;
		}
	}
	return -EAGAIN;
}

static void c_free(struct lease *l)
{
	struct consul *c = (struct consul *)l;
	free(c->baseurl);
	free(c->key);
	free(c->node);
	free(c);
}

static const struct lease_ops consul_ops = {
    .name = "consul",
    .acquire = c_acquire,
    .acquire_handoff = c_acquire_handoff,
    .renew = c_renew,
    .release = c_release,
    .forget = c_forget,
    .observe = c_observe,
    .handoff_token = c_handoff_token,
    .cluster_id = c_cluster_id,
    .free = c_free,
};

int lease_consul_new(struct lease **ret, const struct config *cfg, char *errmsg, size_t n)
{
	struct consul *c = calloc(1, sizeof(*c));
	struct httpc_url u = {0};
	int r = -ENOMEM;
	if (!c)
		goto out;
	c->base.ops = &consul_ops;
	c->base.ttl_ms = cfg->lease.consul.ttl_ms;
	c->lock_delay_ms = cfg->lease.consul.lock_delay_ms;
	r = httpc_url_parse(cfg->lease.consul.url, &u);
	if (r == -EINVAL) {
		snprintf(errmsg, n, "key 'lease.consul.url': cannot parse '%s'",
			 cfg->lease.consul.url);
		goto out;
	}
	r = -ENOMEM;
	if (asprintf(&c->baseurl, "%s://%s%s%s", u.scheme, u.host, u.port ? ":" : "",
		     u.port ? u.port : "") < 0) {
		c->baseurl = NULL;
		goto out;
	}
	if (u.password && *u.password)
		snprintf(c->auth, sizeof(c->auth), "X-Consul-Token: %s", u.password);
	const char *p = u.path ? u.path : "";
	while (*p == '/')
		p++;
	size_t pl = strlen(p);
	while (pl && p[pl - 1] == '/')
		pl--;
	const char *k = cfg->lease.consul.key;
	while (*k == '/')
		k++;
	if (pl) {
		if (asprintf(&c->key, "%.*s/%s", (int)pl, p, k) < 0 ||
		    asprintf(&c->node, "%.*s-ltxfs", (int)pl, p) < 0)
			goto out;
		for (char *s = c->node; *s; s++)
			if (*s == '/')
				*s = '-';
	} else if (!(c->key = strdup(k))) {
		goto out;
	}
	*ret = &c->base;
	c = NULL;
	r = 0;
out:
	if (r == -ENOMEM)
		snprintf(errmsg, n, "out of memory");
	httpc_url_release(&u);
	if (c)
		c_free(&c->base);
	return r;
}
