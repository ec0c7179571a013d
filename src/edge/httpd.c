/*
 * httpd.c - the node's HTTP server: its lifecycle, the request callback,
 * routing and authorisation, and the small endpoints (GET /info, GET
 * /health, POST /promote). docs/http-api.md lists every endpoint;
 * docs/protocol.md gives the node-to-node ones byte for byte.
 *
 * Files. This one; httpd_stream.c, replication between nodes (POST /stream
 * and what a stream sends, GET /ltx, POST /handoff); httpd_sender.c, the
 * thread that writes every replica's stream; httpd_admin.c, the operator's
 * endpoints (/metrics, /events, /export, /import). httpd_int.h holds struct
 * httpd and what they share.
 *
 * Threads. libmicrohttpd runs with MHD_USE_INTERNAL_POLLING_THREAD and
 * MHD_USE_THREAD_PER_CONNECTION: one listener thread accepts, and each
 * connection has its own thread, which calls on_request and then, for a
 * response built from a callback (GET /events), runs that callback until
 * the response ends. A handler may therefore block (/handoff for its
 * frame, /promote for the lease, a new primary's /stream for adoption)
 * without holding up any other connection. A replication stream is an
 * upgraded connection (MHD_ALLOW_UPGRADE): after the 101, its socket
 * belongs to the sender thread (httpd_sender.c). The idle-connection
 * timeout is 30 s. httpd_start, httpd_set_elector and httpd_stop run on
 * the main thread.
 *
 * A request, as libmicrohttpd drives on_request:
 *
 *   FIRST CALL  *con_cls is NULL: allocate struct request; a POST /import
 *               with a good token gets a file beside the data for its upload
 *   BODY        each chunk of the body: appended to rq->body (the /stream
 *               position map, at most MAX_POSMAP_BYTES, then too_big), or
 *               written to the import file
 *   LAST CALL   *upload_size is 0: route. An unknown path is a 404, a wrong
 *               method a 405; then the bearer token (node-to-node and
 *               mutating endpoints always, the read-only ones with
 *               http.read-auth, /health never) or a 401; then the handler,
 *               which queues exactly one response
 *   COMPLETED   on_completed frees the request and removes the upload file
 *
 * Every response, errors included, carries Ltxfs-Node-Id and, once the node
 * has one, Ltxfs-Cluster-Id (httpd_queue); JSON bodies end with a
 * newline.
 *
 * Locks. h->mu guards the list of streams with their positions, the stream
 * and event-stream counts and the handoff in progress; it is held only for
 * those fields, never across I/O or a wait. import_mu lets one import run
 * at a time. h->stopping is set once, by httpd_stop, and read atomically
 * without a lock: streams then end with an END frame before the daemon stops.
 */
#include "ltxfs/httpd.h"
#include "ltxfs/hostport.h"

#include "httpd_int.h"
#include "ltxfs/clock.h"

#include "ltxfs/db.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_POSMAP_BYTES (16u << 20)

/* ------------------------------------------------------------ responses */

enum MHD_Result httpd_queue(struct httpd *h, struct MHD_Connection *c, unsigned status,
			    struct MHD_Response *resp, ...)
{
	char id[32], cid[21];
	va_list ap;
	snprintf(id, sizeof(id), "%016" PRIX64, store_node_id(h->store));
	MHD_add_response_header(resp, "Ltxfs-Node-Id", id);
	store_cluster_id(h->store, cid);
	if (cid[0])
		MHD_add_response_header(resp, "Ltxfs-Cluster-Id", cid);
	va_start(ap, resp);
	for (const char *name; (name = va_arg(ap, const char *));) {
		const char *value = va_arg(ap, const char *);
		MHD_add_response_header(resp, name, value);
	}
	va_end(ap);
	enum MHD_Result r = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return r;
}

struct MHD_Response *httpd_json_response(json_t *obj)
{
	char *text = json_dumps(obj, JSON_COMPACT);
	json_decref(obj);
	if (!text)
		return NULL;
	size_t len = strlen(text);
	text[len] = '\0';
	char *body = malloc(len + 2);
	if (!body) {
		free(text);
		return NULL;
	}
	memcpy(body, text, len);
	body[len] = '\n';
	free(text);
	struct MHD_Response *resp =
	    MHD_create_response_from_buffer(len + 1, body, MHD_RESPMEM_MUST_FREE);
	if (!resp)
		free(body);
	return resp;
}

enum MHD_Result httpd_reply_json(struct httpd *h, struct MHD_Connection *c, unsigned status,
				 json_t *obj)
{
	struct MHD_Response *resp = httpd_json_response(obj);
	if (!resp)
		return MHD_NO;
	return httpd_queue(h, c, status, resp, "Content-Type", "application/json", NULL);
}

enum MHD_Result httpd_reply_error(struct httpd *h, struct MHD_Connection *c, unsigned status,
				  const char *msg)
{
	return httpd_reply_json(h, c, status, json_pack("{s:s}", "error", msg));
}

/* --------------------------------------------------------------- /info */

static enum MHD_Result handle_info(struct httpd *h, struct MHD_Connection *c)
{
	char id[32], cid[21], up[256];
	json_t *dbs = json_array();
	size_t n = store_count(h->store);
	for (size_t i = 0; i < n; i++) {
		struct db *db = store_at(h->store, i);
		struct db_pos p;
		char txid[17], ck[17];
		db_get_pos(db, &p);
		snprintf(txid, sizeof(txid), "%016" PRIx64, p.txid);
		snprintf(ck, sizeof(ck), "%016" PRIx64, p.checksum);
		struct db_stats st;
		db_get_stats(db, &st);
		json_t *d =
		    json_pack("{s:s,s:s,s:s,s:b,s:I,s:I}", "name", db_name(db), "txid", txid,
			      "checksum", ck, "exists", db_exists(db), "size",
			      (json_int_t)st.size_bytes, "timestamp", (json_int_t)p.timestamp);
		struct db_backup bk;
		db_get_backup(db, &bk);
		if (bk.enabled) {
			/* the uploader's view (backup.c); lag: age of the oldest
			 * transaction not uploaded, 0 when none waits */
			char btx[17];
			int64_t now = clock_wall_ms();
			snprintf(btx, sizeof(btx), "%016" PRIx64, bk.txid);
			json_object_set_new(
			    d, "backup",
			    json_pack("{s:b,s:b,s:s,s:f,s:I,s:I,s:I,s:I}", "known", bk.known,
				      "fenced", bk.fenced, "uploadedTxid", btx, "lagSeconds",
				      bk.pending_since_ms && now > bk.pending_since_ms
					  ? (double)(now - bk.pending_since_ms) / 1000.0
					  : 0.0,
				      "backlogTxns", (json_int_t)bk.backlog_txns, "backlogBytes",
				      (json_int_t)bk.backlog_bytes, "objects",
				      (json_int_t)bk.objects, "uploadedAt",
				      (json_int_t)bk.uploaded_ms));
		}
		json_array_append_new(dbs, d);
	}
	snprintf(id, sizeof(id), "%016" PRIX64, store_node_id(h->store));
	store_cluster_id(h->store, cid);
	/*
	 * isPrimary says "write here": a node that has just won the lease says
	 * so only once its start of term is over and writes are accepted (role
	 * is "primary" from the election on, writesHeld says why not yet).
	 */
	bool primary, ready, writable;
	const char *why = NULL;
	store_write_state(h->store, &primary, &ready, &writable, &why);
	json_t *o =
	    json_pack("{s:s,s:s,s:s,s:s,s:b,s:b,s:s,s:I,s:I,s:o}", "nodeID", id, "clusterID", cid,
		      "hostname", h->hostname, "advertiseURL", h->advertise_url, "isPrimary", ready,
		      "acceptsWrites", writable, "role", primary ? "primary" : "replica", "epoch",
		      (json_int_t)store_epoch(h->store), "lag", (json_int_t)store_lag_ms(h->store),
		      "databases", dbs);
	if (primary && !writable && why)
		json_object_set_new(o, "writesHeld", json_string(why));
	json_object_set_new(o, "candidate",
			    json_boolean(h->elector ? store_is_candidate(h->store) : primary));
	json_object_set_new(o, "lease", json_string(h->elector ? "elected" : "static"));
	if (primary) {
		json_object_set_new(o, "replicas", httpd_stream_replicas(h));
		json_object_set_new(o, "primary",
				    json_pack("{s:s,s:s}", "hostname", h->hostname, "advertiseURL",
					      h->advertise_url));
	} else if (h->elector) {
		char purl[1024], phost[256];
		elector_primary(h->elector, purl, sizeof(purl), phost, sizeof(phost));
		if (purl[0])
			json_object_set_new(
			    o, "primary",
			    json_pack("{s:s,s:s,s:b}", "hostname", phost, "advertiseURL", purl,
				      "connected", store_upstream(h->store, up, sizeof(up)) == 0));
	} else if (store_upstream(h->store, up, sizeof(up)) == 0) {
		json_object_set_new(o, "primary", json_pack("{s:s}", "hostname", up));
	}
	return httpd_reply_json(h, c, MHD_HTTP_OK, o);
}

/* ------------------------------------------------------------ /promote */

static enum MHD_Result handle_promote(struct httpd *h, struct MHD_Connection *c)
{
	char err[512];
	if (!h->elector)
		return httpd_reply_error(
		    h, c, MHD_HTTP_CONFLICT,
		    "promotion needs a consul or etcd lease (this node has a static lease)");
	int r = elector_promote(h->elector, 10000, err, sizeof(err));
	if (r == -EALREADY)
		return httpd_reply_json(h, c, MHD_HTTP_OK, json_pack("{s:b}", "isPrimary", 1));
	if (r < 0)
		return httpd_reply_error(h, c,
					 r == -EPERM || r == -ENOENT ? MHD_HTTP_CONFLICT
					 : r == -ETIMEDOUT	     ? MHD_HTTP_GATEWAY_TIMEOUT
								     : MHD_HTTP_BAD_GATEWAY,
					 err);
	return httpd_reply_json(h, c, MHD_HTTP_OK, json_pack("{s:b}", "isPrimary", 1));
}

/* ------------------------------------------------------ authorisation */

/* Constant-time comparison of the bearer token (no early exit on a mismatch). */
static bool token_ok(struct httpd *h, struct MHD_Connection *c)
{
	const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
	if (!h->token)
		return true;
	if (!v || strncasecmp(v, "Bearer ", 7) != 0)
		return false;
	v += 7;
	size_t a = strlen(v), b = strlen(h->token);
	unsigned char diff = (unsigned char)(a != b);
	for (size_t i = 0; i < b; i++)
		diff |= (unsigned char)(h->token[i] ^ (i < a ? v[i] : 0));
	return diff == 0;
}

static enum MHD_Result reply_unauthorized(struct httpd *h, struct MHD_Connection *c)
{
	char *body = strdup("{\"error\":\"missing or wrong bearer token (http.token)\"}\n");
	if (!body)
		return MHD_NO;
	struct MHD_Response *resp =
	    MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return MHD_NO;
	}
	return httpd_queue(h, c, MHD_HTTP_UNAUTHORIZED, resp, "Content-Type", "application/json",
			   "WWW-Authenticate", "Bearer", NULL);
}

/* ------------------------------------------------------------ /health */

static enum MHD_Result handle_health(struct httpd *h, struct MHD_Connection *c)
{
	const char *ml = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "maxLag");
	long max_lag = 10000;
	if (ml) {
		char *end;
		errno = 0;
		max_lag = strtol(ml, &end, 10);
		if (errno || *end || end == ml || max_lag < 0)
			return httpd_reply_error(h, c, MHD_HTTP_BAD_REQUEST,
						 "maxLag must be a number of milliseconds");
	}
	bool primary = store_is_primary(h->store);
	int64_t lag = store_lag_ms(h->store);
	const char *why = NULL;
	if (!primary && !store_caught_up(h->store))
		why = "not connected to a primary, or still catching up";
	else if (!primary && lag > max_lag)
		why = "lag above maxLag";
	json_t *o = json_pack("{s:b,s:s,s:I}", "ok", why == NULL, "role",
			      primary ? "primary" : "replica", "lag", (json_int_t)lag);
	if (why)
		json_object_set_new(o, "reason", json_string(why));
	return httpd_reply_json(h, c, why ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK, o);
}

/* ------------------------------------------------------------- routing */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	struct httpd *h = cls;
	struct request *rq = *con_cls;
	(void)version;
	if (!rq) {
		rq = calloc(1, sizeof(*rq));
		if (!rq)
			return MHD_NO;
		rq->upfd = -1;
		*con_cls = rq;
		if (strcmp(url, "/import") == 0 && strcmp(method, "POST") == 0 && token_ok(h, c)) {
			/* the upload goes to a file beside the data, not to memory */
			snprintf(rq->uppath, sizeof(rq->uppath), "%s/.import-XXXXXX", h->data_dir);
			rq->upfd = mkostemp(rq->uppath, O_CLOEXEC);
			if (rq->upfd < 0) {
				rq->uperr = errno;
				rq->uppath[0] = '\0';
			}
		}
		return MHD_YES;
	}
	if (*upload_size > 0) {
		if (rq->upfd >= 0 || rq->uperr) {
			if (rq->upfd >= 0 && !rq->uperr &&
			    fs_pwrite_full(rq->upfd, upload, *upload_size, (off_t)rq->uplen) < 0)
				rq->uperr = errno ? errno : EIO;
			rq->uplen += *upload_size;
		} else if (rq->len + *upload_size > MAX_POSMAP_BYTES) {
			rq->too_big = true;
		} else {
			char *b = realloc(rq->body, rq->len + *upload_size);
			if (!b)
				return MHD_NO;
			memcpy(b + rq->len, upload, *upload_size);
			rq->body = b;
			rq->len += *upload_size;
		}
		*upload_size = 0;
		return MHD_YES;
	}
	static const struct {
		const char *path, *method;
		bool mutating; /* node-to-node or changes state: always needs the token */
	} routes[] = {
	    {"/stream", "POST", true},	{"/ltx", "GET", true},	   {"/handoff", "POST", true},
	    {"/promote", "POST", true}, {"/import", "POST", true}, {"/info", "GET", false},
	    {"/metrics", "GET", false}, {"/events", "GET", false}, {"/export", "GET", false},
	    {"/health", "GET", false},
	};
	size_t ri;
	for (ri = 0; ri < sizeof(routes) / sizeof(routes[0]); ri++)
		if (strcmp(url, routes[ri].path) == 0)
			break;
	if (ri == sizeof(routes) / sizeof(routes[0]))
		return httpd_reply_error(h, c, MHD_HTTP_NOT_FOUND, "no such endpoint");
	if (strcmp(method, routes[ri].method) != 0) {
		char msg[32];
		snprintf(msg, sizeof(msg), "use %s", routes[ri].method);
		return httpd_reply_error(h, c, MHD_HTTP_METHOD_NOT_ALLOWED, msg);
	}
	if ((routes[ri].mutating || (h->read_auth && strcmp(url, "/health") != 0)) &&
	    !token_ok(h, c))
		return reply_unauthorized(h, c);
	switch (ri) {
	case 0:
		return httpd_serve_stream(h, c, rq);
	case 1:
		return httpd_serve_ltx(h, c);
	case 2:
		return httpd_serve_handoff(h, c);
	case 3:
		return handle_promote(h, c);
	case 4:
		return httpd_serve_import(h, c, rq);
	case 5:
		return handle_info(h, c);
	case 6:
		return httpd_serve_metrics(h, c);
	case 7:
		return httpd_serve_events(h, c);
	case 8:
		return httpd_serve_export(h, c);
	default:
		return handle_health(h, c);
	}
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct request *rq = *con_cls;
	(void)cls;
	(void)c;
	(void)toe;
	if (rq) {
		stream_discard(rq->stream); /* a stream that was never upgraded */
		if (rq->upfd >= 0)
			close(rq->upfd);
		if (rq->uppath[0])
			unlink(rq->uppath);
		free(rq->body);
		free(rq);
		*con_cls = NULL;
	}
}

__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char buf[512];
	(void)cls;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	size_t n = strlen(buf);
	while (n && buf[n - 1] == '\n')
		buf[--n] = '\0';
	log_debug("http: %s", buf);
}

/* ----------------------------------------------------------- lifecycle */

/* Listen on port, or on sa when given (then its address and port). NULL on failure. */
static struct MHD_Daemon *start_daemon(struct httpd *h, unsigned flags, unsigned port,
				       const struct sockaddr *sa)
{
	return MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, h,
				MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
				MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
				sa ? MHD_OPTION_SOCK_ADDR : MHD_OPTION_END, sa, MHD_OPTION_END);
}

/* Free h and what it holds; its daemon is stopped or was never started. */
static void httpd_free(struct httpd *h)
{
	pthread_mutex_destroy(&h->mu);
	pthread_mutex_destroy(&h->import_mu);
	free(h->hostname);
	free(h->advertise_url);
	free(h->mount_dir);
	free(h->data_dir);
	free(h->token);
	free(h);
}

int httpd_start(struct httpd **ret, const struct httpd_options *opt, char *errmsg, size_t n)
{
	struct httpd *h = calloc(1, sizeof(*h));
	char host[256];
	unsigned port;
	struct sockaddr_storage ss;
	int r;
	if (!h)
		return -ENOMEM;
	pthread_mutex_init(&h->mu, NULL);
	h->streams.next = h->streams.prev = &h->streams;
	h->store = opt->store;
	h->elector = opt->elector;
	h->hooks = opt->hooks;
	h->read_auth = opt->read_auth;
	pthread_mutex_init(&h->import_mu, NULL);
	if ((opt->mount_dir && !(h->mount_dir = strdup(opt->mount_dir))) ||
	    (opt->data_dir && !(h->data_dir = strdup(opt->data_dir))) ||
	    (opt->token && !(h->token = strdup(opt->token)))) {
		r = -ENOMEM;
		goto fail;
	}
	h->hostname = strdup(opt->hostname ? opt->hostname : "");
	h->advertise_url = strdup(opt->advertise_url ? opt->advertise_url : "");
	if (!h->hostname || !h->advertise_url) {
		r = -ENOMEM;
		goto fail;
	}
	if (hostport_split(opt->addr, host, sizeof(host), &port, NULL) < 0) {
		snprintf(errmsg, n, "invalid http.addr '%s' (want HOST:PORT or :PORT)", opt->addr);
		r = -EINVAL;
		goto fail;
	}
	/* before the daemon: a stream may be adopted as soon as it listens */
	r = httpd_sender_start(h);
	if (r < 0) {
		snprintf(errmsg, n, "cannot start the stream sender thread: %s", strerror(-r));
		goto fail;
	}
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
			 MHD_USE_ERROR_LOG | MHD_USE_POLL | MHD_ALLOW_UPGRADE;
	memset(&ss, 0, sizeof(ss));
	if (host[0]) {
		struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
		struct addrinfo *ai = NULL;
		char ps[8];
		snprintf(ps, sizeof(ps), "%u", port);
		int g = getaddrinfo(host, ps, &hints, &ai);
		if (g != 0 || !ai) {
			snprintf(errmsg, n, "http.addr '%s': cannot resolve '%s': %s", opt->addr,
				 host, gai_strerror(g));
			r = -EINVAL;
			goto fail;
		}
		memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
		if (ai->ai_family == AF_INET6)
			flags |= MHD_USE_IPv6;
		freeaddrinfo(ai);
		h->d = start_daemon(h, flags, port, (struct sockaddr *)&ss);
	} else {
		h->d = start_daemon(h, flags | MHD_USE_DUAL_STACK, port, NULL);
		if (!h->d) /* no IPv6 on this host */
			h->d = start_daemon(h, flags, port, NULL);
	}
	if (!h->d) {
		snprintf(errmsg, n, "cannot listen on http.addr '%s' (port in use?)", opt->addr);
		r = -EADDRINUSE;
		goto fail;
	}
	*ret = h;
	return 0;
fail:
	httpd_sender_stop(h);
	httpd_free(h);
	return r;
}

void httpd_stop(struct httpd *h)
{
	if (!h)
		return;
	__atomic_store_n(&h->stopping, true, __ATOMIC_RELEASE);
	store_kick(h->store);
	/* Let every stream write its END frame (bounded: a replica that does not
	 * read is cut off by MHD_stop_daemon). */
	for (int i = 0; i < 300 && httpd_stream_count(h) > 0; i++) {
		store_kick(h->store);
		usleep(10000);
	}
	httpd_sender_stop(h); /* closes what is left */
	if (h->d)
		MHD_stop_daemon(h->d);
	httpd_free(h);
}

void httpd_set_elector(struct httpd *h, struct elector *e)
{
	h->elector = e;
}
