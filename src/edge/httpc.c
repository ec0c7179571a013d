/*
 * httpc.c - the node's one HTTP client: a request over libcurl.
 *
 * Every outgoing HTTP request of the node goes through httpc_do: the lease
 * backends (Consul, etcd), the elector (POST /handoff, GET /ltx during
 * adoption), the replica's stream (POST /stream) and the command-line
 * client. No other file includes <curl/curl.h>; the helpers below (URL
 * parsing and escaping, base64, the bearer header, libcurl's global set-up)
 * exist so that none needs to.
 *
 * One request, one easy handle, one call:
 *
 *   SETUP    the headers (the caller's, then a JSON Content-Type if it sent
 *            a body and named none, then an empty "Expect:" so that a POST
 *            never waits for 100-continue), timeouts, TCP options, buffer
 *   RUN      the easy handle in a multi handle, polled every 20 ms: an
 *            abort flag set by another thread (shutdown, lease_kick, the
 *            replica told to follow another primary) ends even an idle
 *            request within 20 ms, where the progress callback alone would
 *            notice about once a second
 *   HEADERS  each header line to on_header (X-Consul-Index is parsed here
 *            for the Consul backend)
 *   BODY     the first chunk delivers the status (on_status); then each
 *            chunk goes to on_data straight from libcurl's receive buffer,
 *            with no copy and no allocation (the replica's catch-up rate
 *            depends on it), or, without on_data, is collected in
 *            resp->body
 *   DONE     libcurl's result becomes 0 (a response arrived, any status),
 *            -ECANCELED, -ETIMEDOUT, -ENOMEM or -EIO, with resp->err set to
 *            "<url>: <reason>" on failure
 *
 * Threads: any; a call shares nothing with another call. The callbacks run
 * on the calling thread, inside httpc_do. httpc_global_init and
 * httpc_global_cleanup run on the main thread while no other thread exists.
 */
#include "ltxfs/httpc.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct rctx {
	const struct httpc_req *req;
	struct httpc_resp *resp;
	CURL *h;
	size_t cap;
	bool oom;
	bool begun; /* the first body chunk arrived: on_status was called */
};

static size_t on_body(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct rctx *c = arg;
	size_t n = size * nmemb;
	if (!c->begun) {
		c->begun = true;
		if (c->req->on_status) {
			long status = 0;
			curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
			c->req->on_status(c->req->ctx, status);
		}
	}
	if (c->req->on_data) {
		if (!c->req->on_data(c->req->ctx, buf, n) || (c->req->abort2 && *c->req->abort2)) {
			c->resp->stopped = true;
			return 0;
		}
		return n;
	}
	if (c->resp->len + n + 1 > c->cap) {
		size_t cap = c->cap ? c->cap : 1024;
		while (cap < c->resp->len + n + 1)
			cap *= 2;
		char *p = realloc(c->resp->body, cap);
		if (!p) {
			c->oom = true;
			return 0;
		}
		c->resp->body = p;
		c->cap = cap;
	}
	memcpy(c->resp->body + c->resp->len, buf, n);
	c->resp->len += n;
	c->resp->body[c->resp->len] = '\0';
	return n;
}

/* One header line ("Name: value\r\n", the status line, or the blank line). */
static size_t on_header(char *buf, size_t size, size_t nitems, void *arg)
{
	struct rctx *c = arg;
	size_t n = size * nitems;
	char line[1024];
	size_t k = n < sizeof(line) ? n : sizeof(line) - 1;
	memcpy(line, buf, k);
	line[k] = '\0';
	char *colon = strchr(line, ':');
	if (!colon || colon == line)
		return n;
	*colon = '\0';
	char *v = colon + 1, *end = line + k;
	while (*v == ' ' || *v == '\t')
		v++;
	while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
		*--end = '\0';
	if (strcasecmp(line, "X-Consul-Index") == 0) {
		char *e;
		uint64_t x = strtoull(v, &e, 10);
		if (e != v) {
			c->resp->consul_index = x;
			c->resp->has_index = true;
		}
	}
	if (c->req->on_header)
		c->req->on_header(c->req->ctx, line, v);
	return n;
}

static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	struct rctx *c = arg;
	if (c->req->progress)
		c->req->progress(c->req->pctx, (uint64_t)dn, (uint64_t)dt, (uint64_t)un,
				 (uint64_t)ut);
	return (c->req->abort && *c->req->abort) || (c->req->abort2 && *c->req->abort2) ? 1 : 0;
}

static bool has_header(const struct httpc_req *req, const char *name)
{
	size_t nl = strlen(name);
	for (size_t i = 0; i < sizeof(req->headers) / sizeof(req->headers[0]) && req->headers[i];
	     i++)
		if (strncasecmp(req->headers[i], name, nl) == 0 && req->headers[i][nl] == ':')
			return true;
	return false;
}

int httpc_do(const struct httpc_req *req, struct httpc_resp *resp)
{
	struct rctx c = {.req = req, .resp = resp};
	struct curl_slist *hdrs = NULL;
	int r = 0;
	memset(resp, 0, sizeof(*resp));
	CURL *h = curl_easy_init();
	if (!h) {
		snprintf(resp->err, sizeof(resp->err), "cannot create a curl handle");
		return -ENOMEM;
	}
	c.h = h;
	for (size_t i = 0; i < sizeof(req->headers) / sizeof(req->headers[0]) && req->headers[i];
	     i++)
		hdrs = curl_slist_append(hdrs, req->headers[i]);
	if (req->body && !has_header(req, "Content-Type"))
		hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
	hdrs = curl_slist_append(hdrs, "Expect:");
	curl_easy_setopt(h, CURLOPT_URL, req->url);
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req->method);
	if (strcmp(req->method, "GET") == 0)
		curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
	if (strcmp(req->method, "HEAD") == 0)
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	if (req->body || strcmp(req->method, "PUT") == 0 || strcmp(req->method, "POST") == 0) {
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body ? req->body : "");
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
				 (curl_off_t)(req->body ? req->body_len : 0));
	}
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	if (req->raw_body)
		curl_easy_setopt(h, CURLOPT_HTTP_TRANSFER_DECODING, 0L);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &c);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, &c);
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(h, CURLOPT_XFERINFODATA, &c);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
			 req->connect_timeout_ms > 0 ? req->connect_timeout_ms : 2000L);
	if (req->timeout_ms > 0)
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, req->timeout_ms);
	if (req->low_speed_s > 0) {
		curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, req->low_speed_bytes);
		curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, req->low_speed_s);
	}
	if (req->keepalive)
		curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	if (req->buffer_size > 0)
		curl_easy_setopt(h, CURLOPT_BUFFERSIZE, req->buffer_size);
	/*
	 * The multi interface, polled every 20 ms, so that an abort (shutdown,
	 * lease_kick) ends even an idle blocking query at once; the progress
	 * callback alone would notice only about once a second.
	 */
	CURLcode cc = CURLE_OK;
	CURLM *m = curl_multi_init();
	if (!m || curl_multi_add_handle(m, h) != CURLM_OK) {
		if (m)
			curl_multi_cleanup(m);
		curl_slist_free_all(hdrs);
		curl_easy_cleanup(h);
		snprintf(resp->err, sizeof(resp->err), "cannot create a curl multi handle");
		return -ENOMEM;
	}
	for (;;) {
		int running = 0;
		if (curl_multi_perform(m, &running) != CURLM_OK)
			break;
		if (!running)
			break;
		if ((req->abort && *req->abort) || (req->abort2 && *req->abort2)) {
			cc = CURLE_ABORTED_BY_CALLBACK;
			break;
		}
		curl_multi_poll(m, NULL, 0, 20, NULL);
	}
	if (cc == CURLE_OK) {
		int left;
		CURLMsg *msg;
		while ((msg = curl_multi_info_read(m, &left)))
			if (msg->msg == CURLMSG_DONE)
				cc = msg->data.result;
	}
	curl_multi_remove_handle(m, h);
	curl_multi_cleanup(m);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
	if (cc == CURLE_WRITE_ERROR && resp->stopped) {
		cc = CURLE_OK;
	} else if (cc == CURLE_ABORTED_BY_CALLBACK) {
		r = -ECANCELED;
		snprintf(resp->err, sizeof(resp->err), "cancelled");
	} else if (cc == CURLE_OPERATION_TIMEDOUT && req->on_data && !req->low_speed_s &&
		   resp->status == 200) {
		/* a stream that simply ran to its deadline */
		cc = CURLE_OK;
	} else if (cc == CURLE_OPERATION_TIMEDOUT) {
		r = -ETIMEDOUT;
		snprintf(resp->err, sizeof(resp->err), "%s: timed out", req->url);
	} else if (c.oom) {
		r = -ENOMEM;
		snprintf(resp->err, sizeof(resp->err), "out of memory");
	} else if (cc != CURLE_OK) {
		r = -EIO;
		snprintf(resp->err, sizeof(resp->err), "%s: %s", req->url, curl_easy_strerror(cc));
	}
	if (!resp->body && !(resp->body = calloc(1, 1)) && r == 0)
		r = -ENOMEM;
	curl_slist_free_all(hdrs);
	curl_easy_cleanup(h);
	return r;
}

int httpc_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

void httpc_global_cleanup(void)
{
	curl_global_cleanup();
}

void httpc_resp_release(struct httpc_resp *resp)
{
	if (!resp)
		return;
	free(resp->body);
	resp->body = NULL;
	resp->len = 0;
}

void httpc_bearer(char *buf, size_t n, const char *token)
{
	buf[0] = '\0';
	if (token && *token)
		snprintf(buf, n, "Authorization: Bearer %s", token);
}

char *httpc_escape(const char *s)
{
	char *e = curl_easy_escape(NULL, s, 0);
	char *out = e ? strdup(e) : NULL;
	curl_free(e);
	return out;
}

void httpc_url_release(struct httpc_url *u)
{
	if (!u)
		return;
	free(u->scheme);
	free(u->host);
	free(u->port);
	free(u->password);
	free(u->path);
	memset(u, 0, sizeof(*u));
}

/* One part of a parsed URL into *ret (malloc'd, NULL when absent). 0 or -ENOMEM. */
static int url_part(CURLU *u, CURLUPart what, unsigned flags, char **ret)
{
	char *v = NULL;
	*ret = NULL;
	if (curl_url_get(u, what, &v, flags) != CURLUE_OK || !v)
		return 0;
	*ret = strdup(v);
	curl_free(v);
	return *ret ? 0 : -ENOMEM;
}

int httpc_url_parse(const char *url, struct httpc_url *ret)
{
	struct httpc_url p = {0};
	int r = -ENOMEM;
	memset(ret, 0, sizeof(*ret));
	CURLU *u = curl_url();
	if (!u)
		goto out;
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
		r = -EINVAL;
		goto out;
	}
	if (url_part(u, CURLUPART_SCHEME, 0, &p.scheme) < 0 ||
	    url_part(u, CURLUPART_HOST, 0, &p.host) < 0 ||
	    url_part(u, CURLUPART_PORT, 0, &p.port) < 0 ||
	    url_part(u, CURLUPART_PASSWORD, CURLU_URLDECODE, &p.password) < 0 ||
	    url_part(u, CURLUPART_PATH, 0, &p.path) < 0)
		goto out;
	if (!p.scheme || !p.host) {
		r = -EINVAL;
		goto out;
	}
	*ret = p;
	memset(&p, 0, sizeof(p));
	r = 0;
out:
	httpc_url_release(&p);
	curl_url_cleanup(u);
	return r;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *httpc_b64encode(const void *buf, size_t n)
{
	const uint8_t *p = buf;
	char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		*o++ = b64[(v >> 18) & 63];
		*o++ = b64[(v >> 12) & 63];
		*o++ = i + 1 < n ? b64[(v >> 6) & 63] : '=';
		*o++ = i + 2 < n ? b64[v & 63] : '=';
	}
	*o = '\0';
	return out;
}

int httpc_b64decode(const char *s, char **ret, size_t *ret_len)
{
	size_t n = strlen(s);
	char *out = malloc(n / 4 * 3 + 4);
	size_t k = 0;
	uint32_t v = 0;
	int bits = 0;
	if (!out)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const char *c = s[i] ? strchr(b64, s[i]) : NULL;
		if (s[i] == '=')
			break;
		if (!c) {
			free(out);
			return -EINVAL;
		}
		v = (v << 6) | (uint32_t)(c - b64);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[k++] = (char)((v >> bits) & 0xff);
		}
	}
	out[k] = '\0';
	*ret = out;
	if (ret_len)
		*ret_len = k;
	return 0;
}
