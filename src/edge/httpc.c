/*
 * httpc.c - one HTTP request over libcurl, for the lease backends.
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
	size_t cap;
	bool oom;
};

static size_t on_body(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct rctx *c = arg;
	size_t n = size * nmemb;
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

static size_t on_header(char *buf, size_t size, size_t nitems, void *arg)
{
	struct rctx *c = arg;
	size_t n = size * nitems;
	static const char name[] = "x-consul-index:";
	if (n > sizeof(name) - 1 && strncasecmp(buf, name, sizeof(name) - 1) == 0) {
		char tmp[64];
		size_t k = n - (sizeof(name) - 1);
		if (k >= sizeof(tmp))
			k = sizeof(tmp) - 1;
		memcpy(tmp, buf + sizeof(name) - 1, k);
		tmp[k] = '\0';
		char *end;
		uint64_t v = strtoull(tmp, &end, 10);
		if (end != tmp) {
			c->resp->consul_index = v;
			c->resp->has_index = true;
		}
	}
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
	for (size_t i = 0; i < sizeof(req->headers) / sizeof(req->headers[0]) && req->headers[i];
	     i++)
		hdrs = curl_slist_append(hdrs, req->headers[i]);
	if (req->body)
		hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
	hdrs = curl_slist_append(hdrs, "Expect:");
	curl_easy_setopt(h, CURLOPT_URL, req->url);
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req->method);
	if (strcmp(req->method, "GET") == 0)
		curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
	if (req->body || strcmp(req->method, "PUT") == 0 || strcmp(req->method, "POST") == 0) {
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body ? req->body : "");
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
				 (curl_off_t)(req->body ? req->body_len : 0));
	}
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &c);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, &c);
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(h, CURLOPT_XFERINFODATA, &c);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
	if (req->timeout_ms > 0)
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, req->timeout_ms);
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
	} else if (cc == CURLE_OPERATION_TIMEDOUT && req->on_data && resp->status == 200) {
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
