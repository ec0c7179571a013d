/*
 * s3.c - the S3 client: one signed request per call, over httpc.
 *
 * A REQUEST, for every call:
 *
 *   URL      path style   <scheme>://<host>/<bucket>/<key>?<query>
 *            virtual host <scheme>://<bucket>.<host>/<key>?<query>
 *            The key is RFC 3986-encoded with '/' kept; the query is built
 *            already sorted and encoded (sigv4_uri_encode), so the canonical
 *            URI and query SigV4 signs are the URL's own text.
 *   HEADERS  Host (sent explicitly, so the signed value is the sent one),
 *            X-Amz-Date, X-Amz-Content-Sha256 (the body's SHA-256: S3 and
 *            the S3-compatible stores that matter want signed payloads),
 *            the call's own (If-None-Match, If-Match, Range, x-amz-meta-*),
 *            all signed; Content-Type on a PUT, unsigned; Authorization.
 *   ANSWER   2xx is success. Otherwise the <Error> body's Code and Message
 *            (s3xml.c) go into res->err and the status maps to an errno
 *            (include/ltxfs/s3.h). A HEAD has no body: its status names it.
 *
 * Credentials and the addressing are fixed by s3_new; a struct s3 is then
 * read-only and shared by any number of threads. Each call uses its own
 * curl handle through httpc_do, so a new connection per request (no
 * keep-alive pool yet: docs/backup.md, "Not done yet").
 */
#include "ltxfs/s3.h"

#include "ltxfs/httpc.h"
#include "ltxfs/metrics.h"
#include "ltxfs/s3xml.h"
#include "ltxfs/sigv4.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct s3 {
	char *scheme; /* "http" or "https" */
	char *host;   /* host[:port] of the endpoint */
	char *base;   /* "<scheme>://<host>" */
	bool path_style;
	char *region, *bucket, *akid, *secret;
	long timeout_ms, connect_timeout_ms;
	const volatile bool *abort;
};

void s3_free(struct s3 *s)
{
	if (!s)
		return;
	free(s->scheme);
	free(s->host);
	free(s->base);
	free(s->region);
	free(s->bucket);
	free(s->akid);
	if (s->secret) {
		explicit_bzero(s->secret, strlen(s->secret));
		free(s->secret);
	}
	free(s);
}

int s3_new(struct s3 **ret, const struct s3_options *o)
{
	struct httpc_url u = {0};
	int r = -ENOMEM;
	if (!o->region || !*o->region || !o->bucket || !*o->bucket || !o->access_key_id ||
	    !*o->access_key_id || !o->secret_access_key || !*o->secret_access_key)
		return -EINVAL;
	struct s3 *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	if (o->endpoint && *o->endpoint) {
		if ((r = httpc_url_parse(o->endpoint, &u)) < 0)
			goto fail;
		r = -ENOMEM;
		if (!(s->scheme = strdup(u.scheme)))
			goto fail;
		if (u.port ? asprintf(&s->host, "%s:%s", u.host, u.port) < 0
			   : !(s->host = strdup(u.host))) {
			s->host = NULL;
			goto fail;
		}
		s->path_style = o->force_path_style;
	} else {
		if (!(s->scheme = strdup("https")) ||
		    asprintf(&s->host, "s3.%s.amazonaws.com", o->region) < 0) {
			s->host = NULL;
			goto fail;
		}
		s->path_style = o->force_path_style;
	}
	if (!s->path_style) {
		char *vh;
		if (asprintf(&vh, "%s.%s", o->bucket, s->host) < 0)
			goto fail;
		free(s->host);
		s->host = vh;
	}
	if (asprintf(&s->base, "%s://%s", s->scheme, s->host) < 0) {
		s->base = NULL;
		goto fail;
	}
	if (!(s->region = strdup(o->region)) || !(s->bucket = strdup(o->bucket)) ||
	    !(s->akid = strdup(o->access_key_id)) || !(s->secret = strdup(o->secret_access_key)))
		goto fail;
	s->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 30000;
	s->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 2000;
	s->abort = o->abort;
	httpc_url_release(&u);
	*ret = s;
	return 0;
fail:
	httpc_url_release(&u);
	s3_free(s);
	return r;
}

/* ------------------------------------------------------------ one request */

enum kind { K_PUT, K_GET, K_HEAD, K_LIST, K_DELETE };

static const enum metrics_counter req_counter[] = {MC_BACKUP_REQ_PUT, MC_BACKUP_REQ_GET,
						   MC_BACKUP_REQ_HEAD, MC_BACKUP_REQ_LIST,
						   MC_BACKUP_REQ_DELETE};

struct call {
	enum kind kind;
	const char *method;
	const char *key;   /* for messages and the path; "" for the bucket */
	const char *query; /* canonical, or "" */
	const void *body;
	size_t body_len;
	struct sigv4_header extra[8];
	size_t n_extra;
	const char *content_type;
	/* response */
	void (*on_header)(void *ctx, const char *name, const char *value);
	void *hctx;
};

static void set_err(struct s3_result *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_err(struct s3_result *res, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(res->err, sizeof(res->err), fmt, ap);
	va_end(ap);
}

static int status_errno(long st, const char *code)
{
	if (st == 404)
		return -ENOENT;
	if (st == 412)
		return -EEXIST;
	if (st == 409 || st == 503)
		return -EAGAIN;
	if (st == 403 || st == 401)
		return -EACCES;
	(void)code;
	return -EIO;
}

static int do_call(struct s3 *s, struct call *c, struct httpc_resp *resp, struct s3_result *res)
{
	char date[32], psha[SIGV4_SHA256_HEX], auth[1024];
	char hhost[512], hdate[64], hsha[128], hctype[160];
	char *ekey = NULL, *uri = NULL, *url = NULL;
	char *lines[8] = {0};
	int r;
	memset(res, 0, sizeof(*res));
	memset(resp, 0, sizeof(*resp));
	metrics_add(req_counter[c->kind], 1);

	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%Y%m%dT%H%M%SZ", &tm);
	sigv4_sha256_hex(c->body ? c->body : "", c->body ? c->body_len : 0, psha);

	r = -ENOMEM;
	if (!(ekey = sigv4_uri_encode(c->key, true)))
		goto out;
	if (s->path_style ? asprintf(&uri, "/%s%s%s", s->bucket, ekey[0] ? "/" : "", ekey) < 0
			  : asprintf(&uri, "/%s", ekey) < 0) {
		uri = NULL;
		goto out;
	}
	if (asprintf(&url, "%s%s%s%s", s->base, uri, c->query[0] ? "?" : "", c->query) < 0) {
		url = NULL;
		goto out;
	}
	struct sigv4_req sr = {.method = c->method,
			       .uri = uri,
			       .query = c->query,
			       .host = s->host,
			       .amz_date = date,
			       .payload_sha256 = psha,
			       .headers = c->extra,
			       .n_headers = c->n_extra,
			       .region = s->region,
			       .service = "s3",
			       .access_key = s->akid,
			       .secret_key = s->secret};
	if ((r = sigv4_authorization(&sr, auth + 15, sizeof(auth) - 15, NULL)) < 0) {
		set_err(res, "%s '%s': cannot sign the request: %s", c->method, c->key,
			strerror(-r));
		goto out;
	}
	memcpy(auth, "Authorization: ", 15);
	snprintf(hhost, sizeof(hhost), "Host: %s", s->host);
	snprintf(hdate, sizeof(hdate), "X-Amz-Date: %s", date);
	snprintf(hsha, sizeof(hsha), "X-Amz-Content-Sha256: %s", psha);
	/*
	 * Timeouts: connect 2 s; the whole request 30 s plus a second per MB of
	 * body; and no byte moving either way for 10 s ends it (a black-holed
	 * connection, or an answer that never comes), so that a request that
	 * began while the bucket was unreachable does not hold the uploader
	 * long after the bucket is back.
	 */
	struct httpc_req req = {.method = c->method,
				.url = url,
				.body = c->body,
				.body_len = c->body_len,
				.timeout_ms = s->timeout_ms + (long)(c->body_len / 1000),
				.low_speed_bytes = 1,
				.low_speed_s = 10,
				.connect_timeout_ms = s->connect_timeout_ms,
				.abort = s->abort,
				.on_header = c->on_header,
				.ctx = c->hctx};
	size_t nh = 0;
	req.headers[nh++] = hhost;
	req.headers[nh++] = hdate;
	req.headers[nh++] = hsha;
	req.headers[nh++] = auth;
	if (c->body || c->kind == K_PUT) {
		snprintf(hctype, sizeof(hctype), "Content-Type: %s",
			 c->content_type ? c->content_type : "application/octet-stream");
		req.headers[nh++] = hctype;
	}
	if (nh + c->n_extra > sizeof(req.headers) / sizeof(req.headers[0])) {
		r = -EINVAL;
		set_err(res, "%s '%s': too many headers", c->method, c->key);
		goto out;
	}
	for (size_t i = 0; i < c->n_extra; i++) {
		if (asprintf(&lines[i], "%s: %s", c->extra[i].name, c->extra[i].value) < 0) {
			lines[i] = NULL;
			r = -ENOMEM;
			goto out;
		}
		req.headers[nh++] = lines[i];
	}
	if (c->kind == K_PUT)
		metrics_add(MC_BACKUP_BYTES_UP, c->body_len);
	r = httpc_do(&req, resp);
	res->status = resp->status;
	if (r < 0) {
		set_err(res, "%s '%s': %s", c->method, c->key, resp->err);
		goto out;
	}
	if (c->kind == K_GET)
		metrics_add(MC_BACKUP_BYTES_DOWN, resp->len);
	if (resp->status >= 200 && resp->status < 300) {
		r = 0;
		goto out;
	}
	char code[64] = "", msg[300] = "";
	s3xml_parse_error(resp->body, resp->len, code, sizeof(code), msg, sizeof(msg));
	snprintf(res->code, sizeof(res->code), "%s", code);
	if (!code[0] && resp->status == 404)
		snprintf(res->code, sizeof(res->code), "NotFound");
	if (!code[0] && resp->status == 412)
		snprintf(res->code, sizeof(res->code), "PreconditionFailed");
	if (res->code[0])
		set_err(res, "%s '%s': %ld %s%s%.300s", c->method, c->key, resp->status, res->code,
			msg[0] ? ": " : "", msg);
	else
		set_err(res, "%s '%s': HTTP status %ld", c->method, c->key, resp->status);
	r = status_errno(resp->status, res->code);
out:
	if (r < 0 && r != -ENOENT && r != -EEXIST)
		metrics_add(MC_BACKUP_ERRORS, 1);
	for (size_t i = 0; i < 8; i++)
		free(lines[i]);
	free(ekey);
	free(uri);
	free(url);
	return r;
}

/* ------------------------------------------------------------------- calls */

struct etag_ctx {
	char *etag; /* 128 bytes or NULL */
	struct s3_head *head;
};

static void on_hdr(void *ctx, const char *name, const char *value)
{
	struct etag_ctx *e = ctx;
	if (strcasecmp(name, "ETag") == 0) {
		if (e->etag)
			snprintf(e->etag, 128, "%s", value);
		if (e->head)
			snprintf(e->head->etag, sizeof(e->head->etag), "%s", value);
	}
	if (!e->head)
		return;
	if (strcasecmp(name, "Content-Length") == 0)
		e->head->size = strtoull(value, NULL, 10);
	if (strncasecmp(name, "x-amz-meta-", 11) == 0)
		for (size_t i = 0; i < e->head->n_meta; i++)
			if (strcasecmp(name + 11, e->head->meta[i].name) == 0) {
				snprintf(e->head->meta[i].value, sizeof(e->head->meta[i].value),
					 "%s", value);
				e->head->meta[i].found = true;
			}
}

int s3_put(struct s3 *s, const char *key, const void *body, size_t n,
	   const struct s3_put_options *o, char *ret_etag, struct s3_result *res)
{
	struct etag_ctx ec = {.etag = ret_etag};
	struct call c = {.kind = K_PUT,
			 .method = "PUT",
			 .key = key,
			 .query = "",
			 .body = body ? body : "",
			 .body_len = body ? n : 0,
			 .on_header = on_hdr,
			 .hctx = &ec};
	char names[4][140];
	if (o) {
		if (o->n_meta > 4)
			return -EINVAL;
		if (o->if_none_match)
			c.extra[c.n_extra++] = (struct sigv4_header){"If-None-Match", "*"};
		if (o->if_match)
			c.extra[c.n_extra++] = (struct sigv4_header){"If-Match", o->if_match};
		for (size_t i = 0; i < o->n_meta; i++) {
			snprintf(names[i], sizeof(names[i]), "x-amz-meta-%s", o->meta[i].name);
			c.extra[c.n_extra++] = (struct sigv4_header){names[i], o->meta[i].value};
		}
		c.content_type = o->content_type;
	}
	struct httpc_resp resp;
	if (ret_etag)
		ret_etag[0] = '\0';
	int r = do_call(s, &c, &resp, res);
	httpc_resp_release(&resp);
	return r;
}

/* Run a GET and hand over its body (at most max bytes). */
static int get_body(struct s3 *s, struct call *c, size_t max, char **ret, size_t *ret_len,
		    struct s3_result *res)
{
	struct httpc_resp resp;
	int r = do_call(s, c, &resp, res);
	if (r == 0 && resp.len > max) {
		r = -EFBIG;
		snprintf(res->err, sizeof(res->err), "GET '%s': %zu bytes, more than %zu", c->key,
			 resp.len, max);
	}
	if (r == 0) {
		*ret = resp.body;
		*ret_len = resp.len;
		resp.body = NULL;
	}
	httpc_resp_release(&resp);
	return r;
}

int s3_get(struct s3 *s, const char *key, uint64_t off, uint64_t len, size_t max, char **ret,
	   size_t *ret_len, struct s3_result *res)
{
	char range[64];
	struct call c = {.kind = K_GET, .method = "GET", .key = key, .query = ""};
	if (off || len) {
		if (len)
			snprintf(range, sizeof(range), "bytes=%" PRIu64 "-%" PRIu64, off,
				 off + len - 1);
		else
			snprintf(range, sizeof(range), "bytes=%" PRIu64 "-", off);
		c.extra[c.n_extra++] = (struct sigv4_header){"Range", range};
	}
	return get_body(s, &c, max, ret, ret_len, res);
}

int s3_get_etag(struct s3 *s, const char *key, size_t max, char **ret, size_t *ret_len,
		char *ret_etag, struct s3_result *res)
{
	struct etag_ctx ec = {.etag = ret_etag};
	struct call c = {.kind = K_GET,
			 .method = "GET",
			 .key = key,
			 .query = "",
			 .on_header = on_hdr,
			 .hctx = &ec};
	ret_etag[0] = '\0';
	return get_body(s, &c, max, ret, ret_len, res);
}

int s3_head(struct s3 *s, const char *key, struct s3_head *h, struct s3_result *res)
{
	struct etag_ctx ec = {.head = h};
	h->size = 0;
	h->etag[0] = '\0';
	for (size_t i = 0; i < h->n_meta; i++) {
		h->meta[i].value[0] = '\0';
		h->meta[i].found = false;
	}
	struct call c = {.kind = K_HEAD,
			 .method = "HEAD",
			 .key = key,
			 .query = "",
			 .on_header = on_hdr,
			 .hctx = &ec};
	struct httpc_resp resp;
	int r = do_call(s, &c, &resp, res);
	httpc_resp_release(&resp);
	return r;
}

int s3_delete(struct s3 *s, const char *key, struct s3_result *res)
{
	struct call c = {.kind = K_DELETE, .method = "DELETE", .key = key, .query = ""};
	struct httpc_resp resp;
	int r = do_call(s, &c, &resp, res);
	httpc_resp_release(&resp);
	return r;
}

/* text with XML's five special characters escaped, appended to *buf (malloc'd, *len). */
static int xml_append(char **buf, size_t *len, size_t *cap, const char *text, bool escape)
{
	for (const char *p = text; *p; p++) {
		const char *rep = NULL;
		char one[2] = {*p, '\0'};
		if (escape)
			rep = *p == '&'	   ? "&amp;"
			      : *p == '<'  ? "&lt;"
			      : *p == '>'  ? "&gt;"
			      : *p == '"'  ? "&quot;"
			      : *p == '\'' ? "&apos;"
					   : NULL;
		if (!rep)
			rep = one;
		size_t k = strlen(rep);
		if (*len + k + 1 > *cap) {
			size_t nc = *cap ? *cap * 2 : 4096;
			while (nc < *len + k + 1)
				nc *= 2;
			char *b = realloc(*buf, nc);
			if (!b)
				return -ENOMEM;
			*buf = b;
			*cap = nc;
		}
		memcpy(*buf + *len, rep, k);
		*len += k;
		(*buf)[*len] = '\0';
	}
	return 0;
}

int s3_delete_many(struct s3 *s, const char *const *keys, size_t n, struct s3_result *res)
{
	char *body = NULL, *md5b64 = NULL;
	size_t len = 0, cap = 0;
	unsigned char md5[16];
	struct httpc_resp resp = {0};
	int r = 0;
	memset(res, 0, sizeof(*res));
	if (n == 0 || n > S3_DELETE_MAX) {
		set_err(res, "DeleteObjects: %zu keys (1 to %d)", n, S3_DELETE_MAX);
		return -EINVAL;
	}
	r = xml_append(&body, &len, &cap,
		       "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete xmlns=\""
		       "http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>",
		       false);
	for (size_t i = 0; i < n && r == 0; i++) {
		r = xml_append(&body, &len, &cap, "<Object><Key>", false);
		if (r == 0)
			r = xml_append(&body, &len, &cap, keys[i], true);
		if (r == 0)
			r = xml_append(&body, &len, &cap, "</Key></Object>", false);
	}
	if (r == 0)
		r = xml_append(&body, &len, &cap, "</Delete>", false);
	if (r < 0)
		goto out;
	sigv4_md5(body, len, md5);
	if (!(md5b64 = httpc_b64encode(md5, sizeof(md5)))) {
		r = -ENOMEM;
		goto out;
	}
	struct call c = {.kind = K_DELETE,
			 .method = "POST",
			 .key = "",
			 .query = "delete=",
			 .body = body,
			 .body_len = len,
			 .extra = {{"Content-MD5", md5b64}},
			 .n_extra = 1,
			 .content_type = "application/xml"};
	if ((r = do_call(s, &c, &resp, res)) < 0)
		goto out;
	/* 200 with an <Error> per key that could not be deleted */
	char code[64] = "", msg[300] = "";
	if (s3xml_parse_error(resp.body, resp.len, code, sizeof(code), msg, sizeof(msg)) == 0) {
		snprintf(res->code, sizeof(res->code), "%s", code);
		set_err(res, "DeleteObjects of %zu keys: some failed, the first with %s%s%.300s", n,
			code[0] ? code : "an error", msg[0] ? ": " : "", msg);
		metrics_add(MC_BACKUP_ERRORS, 1);
		r = -EIO;
	}
out:
	httpc_resp_release(&resp);
	free(md5b64);
	free(body);
	return r;
}

int s3_list(struct s3 *s, const char *prefix, const char *start_after, int max_keys,
	    int (*fn)(void *ctx, const struct s3_object *o), void *ctx, struct s3_result *res)
{
	char *token = NULL, *query = NULL;
	int r = 0;
	memset(res, 0, sizeof(*res));
	for (;;) {
		/* parameters in sorted order, each encoded (sigv4.c's canonical form) */
		char *et = token ? sigv4_uri_encode(token, false) : NULL;
		char *ep = prefix && *prefix ? sigv4_uri_encode(prefix, false) : NULL;
		char *es = start_after && !token ? sigv4_uri_encode(start_after, false) : NULL;
		char mk[32] = "";
		if (max_keys > 0)
			snprintf(mk, sizeof(mk), "&max-keys=%d", max_keys);
		free(query);
		query = NULL;
		if ((token && !et) || (prefix && *prefix && !ep) ||
		    (start_after && !token && !es) ||
		    asprintf(&query, "%s%s%slist-type=2%s%s%s%s%s", et ? "continuation-token=" : "",
			     et ? et : "", et ? "&" : "", mk, ep ? "&prefix=" : "", ep ? ep : "",
			     es ? "&start-after=" : "", es ? es : "") < 0) {
			query = NULL;
			r = -ENOMEM;
		}
		free(et);
		free(ep);
		free(es);
		if (r < 0)
			break;
		struct call c = {.kind = K_LIST, .method = "GET", .key = "", .query = query};
		struct httpc_resp resp;
		r = do_call(s, &c, &resp, res);
		if (r < 0) {
			httpc_resp_release(&resp);
			break;
		}
		struct s3xml_list l;
		r = s3xml_parse_list(resp.body, resp.len, &l);
		httpc_resp_release(&resp);
		if (r < 0) {
			snprintf(res->err, sizeof(res->err),
				 "GET list of '%s': the answer is not a ListBucketResult",
				 prefix ? prefix : "");
			metrics_add(MC_BACKUP_ERRORS, 1);
			break;
		}
		int stop = 0;
		for (size_t i = 0; i < l.n && !stop; i++) {
			struct s3_object o = {l.objs[i].key, l.objs[i].size, l.objs[i].etag,
					      l.objs[i].last_modified};
			stop = fn(ctx, &o);
		}
		free(token);
		token = l.truncated && l.next_token ? strdup(l.next_token) : NULL;
		bool more = l.truncated && l.next_token;
		s3xml_list_release(&l);
		if (stop < 0) {
			r = stop;
			snprintf(res->err, sizeof(res->err), "list of '%s': %s",
				 prefix ? prefix : "", strerror(-r));
			break;
		}
		if (stop || !more)
			break;
		if (!token) {
			r = -ENOMEM;
			break;
		}
	}
	free(token);
	free(query);
	return r;
}
