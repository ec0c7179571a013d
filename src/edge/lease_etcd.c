/*
 * lease_etcd.c - the primary lease as an etcd v3 lease, through etcd's JSON
 * gateway (POST /v3/...; ../shared/reference/lease.md §2).
 *
 *   acquire   POST /v3/lease/grant {"TTL":"<s>"} (etcd raises a TTL below
 *             its floor; the granted TTL is used), then a transaction:
 *             if CREATE(key) == 0 then put(key, value, lease) else
 *             range(key). Success: the transaction's header revision is the
 *             epoch (the key's create revision). A "lease not found" 404
 *             means the lease expired in between: grant again.
 *   renew     POST /v3/lease/keepalive {"ID":...}: one renewal per request.
 *             A reply without TTL (or TTL 0) means the lease has expired.
 *   release   POST /v3/lease/revoke: the key goes with the lease.
 *   observe   POST /v3/kv/range, and with an index a watch from index+1
 *             that returns at the first event; the epoch of a holder is the
 *             key's mod_revision (its acquisition or its handoff write).
 *   handoff   the lease ID is the token: the successor keeps it alive and
 *             rewrites the value in a transaction guarded by
 *             LEASE(key) == token, which gives a new, larger revision.
 *
 * Endpoints are tried in turn: a transport failure moves to the next one.
 * int64 values arrive as JSON strings; bytes as standard base64. Zero values
 * are omitted by the gateway (no "succeeded" when false, no TTL when 0).
 * With a username, POST /v3/auth/authenticate gives a token sent as the
 * Authorization header, renewed on a 401.
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

struct etcd {
	struct lease base;
	char **endpoints;
	size_t n_endpoints, cur;
	char *key, *key64, *cid64;
	char *username, *password;
	char auth[1024];
	int64_t lease_id; /* 0: none */
};

static long op_timeout(struct etcd *e)
{
	long t = (long)(e->base.ttl_ms / 3);
	return t < 700 ? 700 : t;
}

static int authenticate(struct etcd *e, const char *endpoint);

/*
 * POST body to path on the current endpoint, moving to the next endpoint on
 * a transport error. *ret is the parsed first JSON object of the reply when
 * the status is 200. Returns 0, -ESTALE for a 404 (lease not found), or
 * another -errno.
 */
static int post(struct etcd *e, const char *path, json_t *body, long timeout, json_t **ret,
		long *status)
{
	char *txt = json_dumps(body, JSON_COMPACT);
	int r = -EIO;
	*ret = NULL;
	if (!txt)
		return -ENOMEM;
	for (size_t tries = 0; tries < e->n_endpoints * 2; tries++) {
		const char *ep = e->endpoints[e->cur];
		char url[2048];
		struct httpc_resp resp;
		if (e->username && !e->auth[0] && (r = authenticate(e, ep)) < 0) {
			if (r == -EACCES)
				break;
			e->cur = (e->cur + 1) % e->n_endpoints;
			continue;
		}
		snprintf(url, sizeof(url), "%s%s", ep, path);
		struct httpc_req req = {
		    .method = "POST",
		    .url = url,
		    .body = txt,
		    .body_len = strlen(txt),
		    .headers = {e->auth[0] ? e->auth : NULL},
		    .timeout_ms = timeout,
		    .abort = &e->base.aborted,
		};
		r = httpc_do(&req, &resp);
		if (r == -ECANCELED) {
			httpc_resp_release(&resp);
			break;
		}
		if (r < 0) {
			snprintf(e->base.err, sizeof(e->base.err), "etcd: %s", resp.err);
			httpc_resp_release(&resp);
			e->cur = (e->cur + 1) % e->n_endpoints;
			continue;
		}
		if (status)
			*status = resp.status;
		if (resp.status == 401 && e->username) {
			e->auth[0] = '\0'; /* token expired: authenticate again */
			httpc_resp_release(&resp);
			r = -EAGAIN;
			continue;
		}
		if (resp.status != 200) {
			snprintf(e->base.err, sizeof(e->base.err), "etcd %s: HTTP %ld: %.200s",
				 path, resp.status, resp.body);
			r = resp.status == 404	 ? -ESTALE
			    : resp.status == 403 ? -EACCES
			    : resp.status == 401 ? -EACCES
						 : -EIO;
			httpc_resp_release(&resp);
			break;
		}
		json_error_t je;
		json_t *o = json_loadb(resp.body, resp.len, JSON_DISABLE_EOF_CHECK, &je);
		httpc_resp_release(&resp);
		if (!json_is_object(o)) {
			json_decref(o);
			snprintf(e->base.err, sizeof(e->base.err), "etcd %s: malformed reply",
				 path);
			r = -EIO;
			break;
		}
		*ret = o;
		r = 0;
		break;
	}
	free(txt);
	return r;
}

static int authenticate(struct etcd *e, const char *endpoint)
{
	char url[2048];
	struct httpc_resp resp;
	json_t *b = json_pack("{s:s, s:s}", "name", e->username, "password",
			      e->password ? e->password : "");
	char *txt = b ? json_dumps(b, JSON_COMPACT) : NULL;
	json_decref(b);
	if (!txt)
		return -ENOMEM;
	snprintf(url, sizeof(url), "%s/v3/auth/authenticate", endpoint);
	struct httpc_req req = {.method = "POST",
				.url = url,
				.body = txt,
				.body_len = strlen(txt),
				.timeout_ms = op_timeout(e),
				.abort = &e->base.aborted};
	int r = httpc_do(&req, &resp);
	free(txt);
	if (r < 0) {
		snprintf(e->base.err, sizeof(e->base.err), "etcd: %s", resp.err);
	} else if (resp.status != 200) {
		snprintf(e->base.err, sizeof(e->base.err),
			 "etcd authenticate as '%s': HTTP %ld: %.200s", e->username, resp.status,
			 resp.body);
		r = resp.status >= 400 && resp.status < 500 ? -EACCES : -EIO;
	} else {
		json_error_t je;
		json_t *o = json_loadb(resp.body, resp.len, 0, &je);
		const char *tok = json_string_value(json_object_get(o, "token"));
		if (tok)
			snprintf(e->auth, sizeof(e->auth), "Authorization: %s", tok);
		else
			r = -EIO;
		json_decref(o);
	}
	httpc_resp_release(&resp);
	return r;
}

/* An int64 the gateway sends as a string (or, from some versions, a number). */
static int64_t jint(json_t *v)
{
	if (json_is_integer(v))
		return (int64_t)json_integer_value(v);
	if (json_is_string(v))
		return strtoll(json_string_value(v), NULL, 10);
	return 0;
}

static int grant(struct etcd *e, int64_t *ttl_ms)
{
	json_t *o = NULL;
	char ttl[32];
	snprintf(ttl, sizeof(ttl), "%" PRId64, (e->base.ttl_ms + 999) / 1000);
	json_t *b = json_pack("{s:s, s:s}", "TTL", ttl, "ID", "0");
	int r = b ? post(e, "/v3/lease/grant", b, op_timeout(e), &o, NULL) : -ENOMEM;
	json_decref(b);
	if (r < 0)
		return r;
	e->lease_id = jint(json_object_get(o, "ID"));
	int64_t t = jint(json_object_get(o, "TTL"));
	json_decref(o);
	if (e->lease_id <= 0 || t <= 0) {
		e->lease_id = 0;
		snprintf(e->base.err, sizeof(e->base.err),
			 "etcd lease grant: no lease in the reply");
		return -EIO;
	}
	*ttl_ms = t * 1000;
	return 0;
}

/* Holder and epoch from a range reply's kvs (absent: present false). */
static void holder_from_kvs(json_t *kvs, struct lease_holder *out)
{
	json_t *kv = json_array_get(kvs, 0);
	memset(out, 0, sizeof(*out));
	if (!json_is_object(kv))
		return;
	const char *v = json_string_value(json_object_get(kv, "value"));
	char *val = NULL;
	size_t len = 0;
	if (v && httpc_b64decode(v, &val, &len) == 0)
		lease_value_decode(val, len, out);
	free(val);
	out->epoch = (uint64_t)jint(json_object_get(kv, "mod_revision"));
}

/* The guarded write: create-if-absent (token 0) or take over a lease's key. */
static int put_txn(struct etcd *e, const char *value, int64_t guard_lease, uint64_t *epoch)
{
	char lid[32], glid[32];
	char *v64 = httpc_b64encode(value, strlen(value));
	json_t *o = NULL, *b = NULL;
	int r = -ENOMEM;
	if (!v64)
		return -ENOMEM;
	snprintf(lid, sizeof(lid), "%" PRId64, e->lease_id);
	snprintf(glid, sizeof(glid), "%" PRId64, guard_lease);
	json_t *cmp = guard_lease ? json_pack("{s:s, s:s, s:s, s:s}", "key", e->key64, "target",
					      "LEASE", "result", "EQUAL", "lease", glid)
				  : json_pack("{s:s, s:s, s:s, s:s}", "key", e->key64, "target",
					      "CREATE", "result", "EQUAL", "create_revision", "0");
	b = json_pack("{s:[o], s:[{s:{s:s, s:s, s:s}}], s:[{s:{s:s}}]}", "compare", cmp, "success",
		      "request_put", "key", e->key64, "value", v64, "lease", lid, "failure",
		      "request_range", "key", e->key64);
	free(v64);
	if (!b)
		return -ENOMEM;
	r = post(e, "/v3/kv/txn", b, op_timeout(e), &o, NULL);
	json_decref(b);
	if (r < 0)
		return r;
	if (json_is_true(json_object_get(o, "succeeded"))) {
		*epoch = (uint64_t)jint(json_object_get(json_object_get(o, "header"), "revision"));
		r = 0;
	} else {
		/* held: by this very lease (a retried acquire) counts as ours */
		json_t *kv = json_array_get(
		    json_object_get(
			json_object_get(json_array_get(json_object_get(o, "responses"), 0),
					"response_range"),
			"kvs"),
		    0);
		if (!guard_lease && e->lease_id &&
		    jint(json_object_get(kv, "lease")) == e->lease_id) {
			*epoch = (uint64_t)jint(json_object_get(kv, "mod_revision"));
			r = 0;
		} else {
			r = LEASE_HELD;
		}
	}
	json_decref(o);
	return r;
}

static int e_acquire(struct lease *l, const char *value, uint64_t *epoch, int64_t *ttl_ms)
{
	struct etcd *e = (struct etcd *)l;
	int r;
	*ttl_ms = l->ttl_ms;
	if (!e->lease_id && (r = grant(e, ttl_ms)) < 0)
		return r;
	r = put_txn(e, value, 0, epoch);
	if (r == -ESTALE) { /* the lease expired before the transaction */
		e->lease_id = 0;
		return -EAGAIN;
	}
	return r;
}

static int keepalive(struct etcd *e, int64_t id, int64_t *ttl_ms)
{
	char lid[32];
	json_t *o = NULL;
	snprintf(lid, sizeof(lid), "%" PRId64, id);
	json_t *b = json_pack("{s:s}", "ID", lid);
	int r = b ? post(e, "/v3/lease/keepalive", b, op_timeout(e), &o, NULL) : -ENOMEM;
	json_decref(b);
	if (r < 0)
		return r == -ESTALE ? -ESTALE : r;
	json_t *res = json_object_get(o, "result");
	if (json_object_get(o, "error")) {
		snprintf(e->base.err, sizeof(e->base.err), "etcd keepalive: %.200s",
			 json_string_value(json_object_get(json_object_get(o, "error"), "message"))
			     ?: "error");
		json_decref(o);
		return -EIO; /* e.g. "not a primary lessor" during an etcd leader change */
	}
	int64_t t = jint(json_object_get(res ? res : o, "TTL"));
	json_decref(o);
	if (t <= 0) {
		snprintf(e->base.err, sizeof(e->base.err), "etcd keepalive: lease %s has expired",
			 lid);
		return -ESTALE;
	}
	*ttl_ms = t * 1000;
	return 0;
}

static int e_renew(struct lease *l, int64_t *ttl_ms)
{
	struct etcd *e = (struct etcd *)l;
	if (!e->lease_id)
		return -ESTALE;
	int r = keepalive(e, e->lease_id, ttl_ms);
	if (r == -ESTALE)
		e->lease_id = 0;
	return r;
}

static int e_acquire_handoff(struct lease *l, const char *token, const char *value, uint64_t *epoch,
			     int64_t *ttl_ms)
{
	struct etcd *e = (struct etcd *)l;
	char *end;
	int64_t id = strtoll(token, &end, 10);
	if (*end || id <= 0)
		return -EINVAL;
	int r = keepalive(e, id, ttl_ms);
	if (r < 0)
		return r;
	int64_t mine = e->lease_id;
	e->lease_id = id;
	r = put_txn(e, value, id, epoch);
	if (r != 0)
		e->lease_id = mine;
	return r;
}

static int e_release(struct lease *l)
{
	struct etcd *e = (struct etcd *)l;
	char lid[32];
	json_t *o = NULL;
	if (!e->lease_id)
		return 0;
	bool was = l->aborted;
	l->aborted = false;
	snprintf(lid, sizeof(lid), "%" PRId64, e->lease_id);
	json_t *b = json_pack("{s:s}", "ID", lid);
	int r = b ? post(e, "/v3/lease/revoke", b, 2000, &o, NULL) : -ENOMEM;
	json_decref(b);
	json_decref(o);
	e->lease_id = 0;
	l->aborted = was;
	return r == -ESTALE ? 0 : r;
}

static void e_forget(struct lease *l)
{
	((struct etcd *)l)->lease_id = 0;
}

struct watch_ctx {
	char *buf;
	size_t len, cap;
	int messages;
	bool changed;
};

static bool on_watch(void *arg, const char *data, size_t n)
{
	struct watch_ctx *w = arg;
	if (w->len + n + 1 > w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 4096;
		while (cap < w->len + n + 1)
			cap *= 2;
		char *p = realloc(w->buf, cap);
		if (!p)
			return false;
		w->buf = p;
		w->cap = cap;
	}
	memcpy(w->buf + w->len, data, n);
	w->len += n;
	/* one JSON text per message; texts may span chunks */
	size_t off = 0;
	while (off < w->len) {
		while (off < w->len &&
		       (w->buf[off] == '\n' || w->buf[off] == ' ' || w->buf[off] == '\r'))
			off++;
		if (off == w->len)
			break;
		json_error_t je;
		json_t *o = json_loadb(w->buf + off, w->len - off, JSON_DISABLE_EOF_CHECK, &je);
		if (!o)
			break; /* incomplete: wait for more */
		off += (size_t)je.position;
		json_t *res = json_object_get(o, "result");
		w->messages++;
		if (!res || json_object_get(res, "events") ||
		    json_is_true(json_object_get(res, "canceled")))
			w->changed = true;
		json_decref(o);
	}
	memmove(w->buf, w->buf + off, w->len - off);
	w->len -= off;
	return !w->changed;
}

static int e_observe(struct lease *l, uint64_t *index, int wait_ms, struct lease_holder *out)
{
	struct etcd *e = (struct etcd *)l;
	int r;
	if (*index > 0 && wait_ms > 0) {
		char url[2048], rev[32];
		struct watch_ctx w = {0};
		struct httpc_resp resp;
		snprintf(rev, sizeof(rev), "%" PRIu64, *index + 1);
		json_t *b = json_pack("{s:{s:s, s:s}}", "create_request", "key", e->key64,
				      "start_revision", rev);
		char *txt = b ? json_dumps(b, JSON_COMPACT) : NULL;
		json_decref(b);
		if (!txt)
			return -ENOMEM;
		snprintf(url, sizeof(url), "%s/v3/watch", e->endpoints[e->cur]);
		struct httpc_req req = {
		    .method = "POST",
		    .url = url,
		    .body = txt,
		    .body_len = strlen(txt),
		    .headers = {e->auth[0] ? e->auth : NULL},
		    .timeout_ms = wait_ms,
		    .abort = &e->base.aborted,
		    .abort2 = &e->base.kicked,
		    .on_data = on_watch,
		    .ctx = &w,
		};
		r = httpc_do(&req, &resp);
		free(txt);
		free(w.buf);
		if (r == -ECANCELED) {
			httpc_resp_release(&resp);
			return r;
		}
		if (r < 0 || (resp.status != 200 && resp.status != 0)) {
			if (r < 0)
				snprintf(e->base.err, sizeof(e->base.err), "etcd watch: %s",
					 resp.err);
			e->cur = (e->cur + 1) % e->n_endpoints;
		}
		httpc_resp_release(&resp);
		if (r < 0 && r != -ETIMEDOUT)
			return r;
	}
	json_t *o = NULL;
	json_t *b = json_pack("{s:s}", "key", e->key64);
	r = b ? post(e, "/v3/kv/range", b, op_timeout(e), &o, NULL) : -ENOMEM;
	json_decref(b);
	if (r < 0)
		return r;
	holder_from_kvs(json_object_get(o, "kvs"), out);
	*index = (uint64_t)jint(json_object_get(json_object_get(o, "header"), "revision"));
	json_decref(o);
	return 0;
}

static int e_handoff_token(struct lease *l, char *buf, size_t n)
{
	struct etcd *e = (struct etcd *)l;
	if (!e->lease_id)
		return -ESTALE;
	snprintf(buf, n, "%" PRId64, e->lease_id);
	return 0;
}

static int e_cluster_id(struct lease *l, const char *mine, char out[21])
{
	struct etcd *e = (struct etcd *)l;
	json_t *o = NULL, *b;
	int r;
	if (mine && *mine) {
		char *v64 = httpc_b64encode(mine, strlen(mine));
		if (!v64)
			return -ENOMEM;
		b = json_pack("{s:[{s:s, s:s, s:s, s:s}], s:[{s:{s:s, s:s}}], s:[{s:{s:s}}]}",
			      "compare", "key", e->cid64, "target", "CREATE", "result", "EQUAL",
			      "create_revision", "0", "success", "request_put", "key", e->cid64,
			      "value", v64, "failure", "request_range", "key", e->cid64);
		free(v64);
		r = b ? post(e, "/v3/kv/txn", b, op_timeout(e), &o, NULL) : -ENOMEM;
		json_decref(b);
		if (r < 0)
			return r;
		if (json_is_true(json_object_get(o, "succeeded"))) {
			json_decref(o);
			snprintf(out, 21, "%s", mine);
			return 0;
		}
		json_decref(o);
	}
	b = json_pack("{s:s}", "key", e->cid64);
	r = b ? post(e, "/v3/kv/range", b, op_timeout(e), &o, NULL) : -ENOMEM;
	json_decref(b);
	if (r < 0)
		return r;
	out[0] = '\0';
	const char *v = json_string_value(
	    json_object_get(json_array_get(json_object_get(o, "kvs"), 0), "value"));
	char *val = NULL;
	if (v && httpc_b64decode(v, &val, NULL) == 0)
		snprintf(out, 21, "%s", val);
	free(val);
	json_decref(o);
	return 0;
}

static void e_free(struct lease *l)
{
	struct etcd *e = (struct etcd *)l;
	for (size_t i = 0; i < e->n_endpoints; i++)
		free(e->endpoints[i]);
	free(e->endpoints);
	free(e->key);
	free(e->key64);
	free(e->cid64);
	free(e->username);
	free(e->password);
	free(e);
}

static const struct lease_ops etcd_ops = {
    .name = "etcd",
    .acquire = e_acquire,
    .acquire_handoff = e_acquire_handoff,
    .renew = e_renew,
    .release = e_release,
    .forget = e_forget,
    .observe = e_observe,
    .handoff_token = e_handoff_token,
    .cluster_id = e_cluster_id,
    .free = e_free,
};

int lease_etcd_new(struct lease **ret, const struct config *cfg, char *errmsg, size_t n)
{
	struct etcd *e = calloc(1, sizeof(*e));
	char cid[2048];
	if (!e)
		goto oom;
	e->base.ops = &etcd_ops;
	e->base.ttl_ms = cfg->lease.etcd.ttl_ms;
	if (cfg->lease.etcd.n_endpoints == 0) {
		snprintf(errmsg, n, "key 'lease.etcd.endpoints': no endpoint");
		e_free(&e->base);
		return -EINVAL;
	}
	e->endpoints = calloc(cfg->lease.etcd.n_endpoints, sizeof(*e->endpoints));
	if (!e->endpoints)
		goto oom;
	for (size_t i = 0; i < cfg->lease.etcd.n_endpoints; i++) {
		if (!(e->endpoints[i] = strdup(cfg->lease.etcd.endpoints[i])))
			goto oom;
		e->n_endpoints++;
		size_t k = strlen(e->endpoints[i]);
		while (k && e->endpoints[i][k - 1] == '/')
			e->endpoints[i][--k] = '\0';
	}
	snprintf(cid, sizeof(cid), "%s/clusterid", cfg->lease.etcd.key);
	if (!(e->key = strdup(cfg->lease.etcd.key)) ||
	    !(e->key64 = httpc_b64encode(e->key, strlen(e->key))) ||
	    !(e->cid64 = httpc_b64encode(cid, strlen(cid))))
		goto oom;
	if (cfg->lease.etcd.username && !(e->username = strdup(cfg->lease.etcd.username)))
		goto oom;
	if (cfg->lease.etcd.password && !(e->password = strdup(cfg->lease.etcd.password)))
		goto oom;
	*ret = &e->base;
	return 0;
oom:
	snprintf(errmsg, n, "out of memory");
	if (e)
		e_free(&e->base);
	return -ENOMEM;
}
