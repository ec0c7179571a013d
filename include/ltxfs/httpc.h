/*
 * httpc.h - the node's HTTP client (edge layer; a thin wrapper over libcurl,
 * and the only module that includes its headers).
 *
 * One request per call with its own easy handle: lease traffic is a few
 * requests per second at most, the replication stream is one long request,
 * and a handle per call keeps the functions usable from any thread.
 * Streaming responses (the replication stream, etcd watch, downloads) go
 * through on_data, which may stop the transfer by returning false.
 *
 * Threads: any; every call is independent. A request is abandoned early
 * when *abort or *abort2 becomes true (checked every 20 ms and on every
 * chunk), which is how another thread cuts a request short.
 */
#ifndef LTXFS_HTTPC_H
#define LTXFS_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct httpc_req {
	const char *method; /* "GET", "PUT", "POST", "DELETE", "HEAD" (no body read) */
	const char *url;
	const char *body; /* may be NULL */
	size_t body_len;
	/*
	 * Extra "Name: value" lines, NULL-terminated when fewer. A body is sent
	 * as "Content-Type: application/json" unless one of these names another.
	 */
	const char *headers[12];
	long timeout_ms;	 /* whole request; 0: none */
	long connect_timeout_ms; /* 0: 2 s */
	/*
	 * Long streams: the request fails with -ETIMEDOUT when fewer than
	 * low_speed_bytes per second arrive over low_speed_s seconds (0: no
	 * limit). keepalive turns on TCP keep-alive probes.
	 */
	long low_speed_bytes, low_speed_s;
	bool keepalive;
	long buffer_size; /* the most bytes one on_data call gets; 0: libcurl's 16 KiB */
	bool raw_body;	  /* on_data gets the body as sent: a chunked one is not decoded */
	const volatile bool *abort;
	const volatile bool *abort2; /* a second reason to give up (may be NULL) */
	/*
	 * Streaming: called for each chunk of the body as it arrives, from the
	 * receive buffer itself (no copy); return false to stop (the call then
	 * returns 0 with stopped set). The body is not kept.
	 */
	bool (*on_data)(void *ctx, const char *buf, size_t n);
	/*
	 * Each response header line as it arrives, split at the first ':' and
	 * trimmed (both NUL-terminated, valid during the call only; a line
	 * longer than 1 KiB is cut). May be NULL.
	 */
	void (*on_header)(void *ctx, const char *name, const char *value);
	/*
	 * Once every header has arrived, before the first on_data call: the
	 * HTTP status. Not called for a response without a body (read
	 * resp->status then). May be NULL.
	 */
	void (*on_status)(void *ctx, long status);
	void *ctx; /* for on_data, on_header, on_status */
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
	char err[256];	       /* "<url>: <reason>" when the call fails */
};

/* libcurl's process-wide set-up; once, before any other thread starts. 0 or -EIO. */
int httpc_global_init(void);
/* Undo httpc_global_init, after every other thread has ended. */
void httpc_global_cleanup(void);

/*
 * Perform req. 0 when an HTTP response arrived (any status; the caller reads
 * resp->status), -ETIMEDOUT, -ECANCELED (aborted), or -EIO for a transport
 * error described in resp->err. resp is always initialised; release it.
 * A streamed request (on_data) without a low-speed limit that reaches
 * timeout_ms after a 200 has simply run its course: 0.
 */
int httpc_do(const struct httpc_req *req, struct httpc_resp *resp);
/* Free what resp holds. NULL ok. */
void httpc_resp_release(struct httpc_resp *resp);

/* "Authorization: Bearer <token>" into buf ("" when token is NULL or empty). */
void httpc_bearer(char *buf, size_t n, const char *token);

/*
 * s percent-encoded for a URL path segment or query value (everything but
 * ALPHA, DIGIT, "-", ".", "_" and "~"). malloc'd, the caller frees it; NULL
 * on OOM.
 */
char *httpc_escape(const char *s);

/* A URL split into its parts (httpc_url_parse). Each malloc'd. */
struct httpc_url {
	char *scheme;
	char *host;	/* an IPv6 address keeps its brackets */
	char *port;	/* NULL when the URL names none */
	char *password; /* of the userinfo, percent-decoded; NULL when none */
	char *path;	/* "/" at least */
};

/*
 * Parse an absolute URL. 0; -EINVAL when it is not one (no scheme or no
 * host); -ENOMEM. On failure *ret is left zeroed. Release it in any case.
 */
int httpc_url_parse(const char *url, struct httpc_url *ret);
/* Free what u holds and zero it. NULL ok. */
void httpc_url_release(struct httpc_url *u);

/* Standard base64 of n bytes into a malloc'd string; NULL on OOM. */
char *httpc_b64encode(const void *buf, size_t n);
/* Decode standard base64 into a malloc'd NUL-terminated buffer. 0 or -EINVAL/-ENOMEM. */
int httpc_b64decode(const char *s, char **ret, size_t *ret_len);

#endif
