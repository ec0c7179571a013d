/*
 * httpc.h - small HTTP client requests for the lease backends (edge layer; a
 * thin wrapper over libcurl so that no other module needs its headers).
 *
 * One request per call with its own easy handle: lease traffic is a few
 * requests per second at most, and a handle per call keeps the functions
 * usable from any thread. Streaming responses (etcd watch) go through
 * on_data, which may stop the transfer by returning false.
 *
 * Threads: any; every call is independent. A request is abandoned early
 * when *abort becomes true (checked every 20 ms and on every chunk).
 */
#ifndef LTXFS_HTTPC_H
#define LTXFS_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct httpc_req {
	const char *method; /* "GET", "PUT", "POST", "DELETE" */
	const char *url;
	const char *body; /* may be NULL */
	size_t body_len;
	const char *headers[4]; /* extra "Name: value" lines, NULL-terminated when fewer */
	long timeout_ms;	/* whole request; 0: none */
	const volatile bool *abort;
	const volatile bool *abort2; /* a second reason to give up (may be NULL) */
	/* Streaming: called for each chunk of the body; return false to stop
	 * (the call then returns 0 with stopped set). The body is not kept. */
	bool (*on_data)(void *ctx, const char *buf, size_t n);
	void *ctx;
	/* Progress of the body sent (up) or received (down), totals 0 when unknown. */
	void (*progress)(void *pctx, uint64_t down, uint64_t down_total, uint64_t up,
			 uint64_t up_total);
	void *pctx;
};

struct httpc_resp {
	long status;
	char *body; /* NUL-terminated, malloc'd (empty string when none) */
	size_t len;
	bool has_index;
	uint64_t consul_index; /* X-Consul-Index */
	bool stopped;	       /* on_data asked to stop */
	char err[256];	       /* transport error text when the call fails */
};

/*
 * Perform req. 0 when an HTTP response arrived (any status; the caller reads
 * resp->status), -ETIMEDOUT, -ECANCELED (aborted), or -EIO for a transport
 * error described in resp->err. resp is always initialised; release it.
 */
int httpc_do(const struct httpc_req *req, struct httpc_resp *resp);
/* Free what resp holds. NULL ok. */
void httpc_resp_release(struct httpc_resp *resp);

/* "Authorization: Bearer <token>" into buf ("" when token is NULL or empty). */
void httpc_bearer(char *buf, size_t n, const char *token);

/* Standard base64 of n bytes into a malloc'd string; NULL on OOM. */
char *httpc_b64encode(const void *buf, size_t n);
/* Decode standard base64 into a malloc'd NUL-terminated buffer. 0 or -EINVAL/-ENOMEM. */
int httpc_b64decode(const char *s, char **ret, size_t *ret_len);

#endif
