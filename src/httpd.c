/*
 * httpd.c - the HTTP server: replication streams and node information.
 *
 * POST /stream. A replica posts its position map; the primary answers 200
 * and then keeps the response open, writing frames (stream.h) as long as it
 * is primary. One stream's state machine, run by the connection's own
 * thread inside libmicrohttpd's content-reader callback:
 *
 *   DRAIN   copy the pending frame bytes (header, metadata) to the socket,
 *           then the LTX file behind them, if any
 *   SCAN    compare each database's position with the replica's:
 *             equal                          nothing to send
 *             replica behind, and the file   send "txid+1-txid+1.ltx"
 *               for txid+1 exists and its
 *               pre-apply checksum matches
 *             replica empty, file pruned     send a snapshot
 *             replica ahead, or checksums    send a snapshot flagged
 *               disagree                       DIVERGED
 *           and advance the replica's position to what was sent
 *   READY   once the first SCAN finds nothing left: READY, HEARTBEAT
 *   WAIT    sleep on the store's change counter; at 1 s with nothing to
 *           send, a HEARTBEAT; at shutdown or loss of the primary role, END
 *
 * HANDOFF. POST /handoff?nodeID=X (the primary's side of a planned
 * handoff): the elector fences commits; X's stream, once it has nothing
 * left to send, writes a HANDOFF frame with the lease token and END; the
 * request answers 200 when the frame is on the socket (the elector then
 * steps down), or 504 after 5 s (the fence is lifted). POST /promote asks
 * this node's primary for a handoff and answers once this node is primary.
 *
 * The replica verifies and applies each LTX file; it reconnects after any
 * error, and its new position map tells the primary where to resume. The
 * primary keeps no per-replica state beyond the open stream.
 *
 * Retention. Each stream records, per database, the position the replica
 * reported and, at each heartbeat (sent only when everything was written to
 * the socket), what it has been sent since. The retention thread keeps every
 * LTX file above the lowest of these (httpd_retention_floor).
 */
#include "ltxfs/httpd.h"

#include "ltxfs/db.h"
#include "ltxfs/httpc.h"
#include "ltxfs/log.h"
#include "ltxfs/ltx.h"
#include "ltxfs/stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_POSMAP_BYTES (16u << 20)
#define HEARTBEAT_MS	 1000
#define STREAM_BLOCK	 (256u << 10)

struct spos {
	char name[STREAM_NAME_MAX + 1];
	uint64_t txid, checksum;
	uint64_t floor; /* TXID the replica surely holds (retention) */
};

struct stream {
	struct stream *prev, *next;
	struct httpd *h;
	struct spos *pos;
	size_t n, cap;
	uint64_t peer_id;
	bool ready_sent, ended, handoff_pending;
	int64_t last_hb; /* monotonic ms */
	uint8_t pend[STREAM_FRAME_HEADER + STREAM_LTX_META_MAX + STREAM_TOKEN_MAX + 64];
	size_t pend_len, pend_off;
	int fd;
	uint64_t fd_remain;
	uint64_t sent_bytes;
};

struct request {
	char *body;
	size_t len;
	bool too_big;
};

struct httpd {
	struct MHD_Daemon *d;
	struct store *store;
	struct elector *elector;
	struct db_apply_hooks hooks;
	char *hostname;
	char *advertise_url;
	/* a handoff in progress, under mu */
	uint64_t handoff_peer;
	char handoff_token[STREAM_TOKEN_MAX + 1];
	bool handoff_queued; /* the frame is queued: the successor may take the lease */
	pthread_mutex_t mu;  /* streams list */
	struct stream streams;
	size_t nstreams;
	volatile bool stopping;
};

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ responses */

static void add_identity(struct httpd *h, struct MHD_Response *resp)
{
	char id[32], cid[21];
	snprintf(id, sizeof(id), "%016" PRIX64, store_node_id(h->store));
	MHD_add_response_header(resp, "Ltxfs-Node-Id", id);
	store_cluster_id(h->store, cid);
	if (cid[0])
		MHD_add_response_header(resp, "Ltxfs-Cluster-Id", cid);
}

static enum MHD_Result reply_json(struct httpd *h, struct MHD_Connection *c, unsigned status,
				  json_t *obj)
{
	char *text = json_dumps(obj, JSON_COMPACT);
	json_decref(obj);
	if (!text)
		return MHD_NO;
	size_t len = strlen(text);
	text[len] = '\0';
	char *body = malloc(len + 2);
	if (!body) {
		free(text);
		return MHD_NO;
	}
	memcpy(body, text, len);
	body[len] = '\n';
	free(text);
	struct MHD_Response *resp =
	    MHD_create_response_from_buffer(len + 1, body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return MHD_NO;
	}
	add_identity(h, resp);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	enum MHD_Result r = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return r;
}

static enum MHD_Result reply_error(struct httpd *h, struct MHD_Connection *c, unsigned status,
				   const char *msg)
{
	return reply_json(h, c, status, json_pack("{s:s}", "error", msg));
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
		json_array_append_new(dbs,
				      json_pack("{s:s,s:s,s:s,s:b}", "name", db_name(db), "txid",
						txid, "checksum", ck, "exists", db_exists(db)));
	}
	snprintf(id, sizeof(id), "%016" PRIX64, store_node_id(h->store));
	store_cluster_id(h->store, cid);
	bool primary = store_is_primary(h->store);
	bool writable = store_accepts_writes(h->store);
	json_t *o =
	    json_pack("{s:s,s:s,s:s,s:s,s:b,s:b,s:s,s:I,s:I,s:o}", "nodeID", id, "clusterID", cid,
		      "hostname", h->hostname, "advertiseURL", h->advertise_url, "isPrimary",
		      primary, "acceptsWrites", writable, "role", primary ? "primary" : "replica",
		      "epoch", (json_int_t)store_epoch(h->store), "lag",
		      (json_int_t)store_lag_ms(h->store), "databases", dbs);
	json_object_set_new(o, "candidate",
			    json_boolean(h->elector ? store_is_candidate(h->store) : primary));
	json_object_set_new(o, "lease", json_string(h->elector ? "elected" : "static"));
	if (primary) {
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
	return reply_json(h, c, MHD_HTTP_OK, o);
}

/* ------------------------------------------------------------- /stream */

static struct spos *spos_find(struct stream *s, const char *name)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->pos[i].name, name) == 0)
			return &s->pos[i];
	return NULL;
}

static struct spos *spos_get(struct stream *s, const char *name)
{
	struct spos *p = spos_find(s, name);
	if (p)
		return p;
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 8;
		void *np = realloc(s->pos, cap * sizeof(*s->pos));
		if (!np)
			return NULL;
		s->pos = np;
		s->cap = cap;
	}
	p = &s->pos[s->n++];
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "%s", name);
	return p;
}

static void pend_frame(struct stream *s, uint32_t type)
{
	stream_frame_header(s->pend + s->pend_len, type, 0);
	s->pend_len += STREAM_FRAME_HEADER;
}

static void pend_heartbeat(struct stream *s)
{
	s->pend_len +=
	    stream_heartbeat_frame(s->pend + s->pend_len, wall_ms(), store_epoch(s->h->store));
	s->last_hb = mono_ms();
	/* Everything before this heartbeat has been handed to the socket. */
	pthread_mutex_lock(&s->h->mu);
	for (size_t i = 0; i < s->n; i++)
		s->pos[i].floor = s->pos[i].txid;
	pthread_mutex_unlock(&s->h->mu);
}

/*
 * Find the next LTX file (or snapshot) some database needs and queue it.
 * Returns 1 when something was queued, 0 when the replica is up to date,
 * -errno on failure (the stream then ends and the replica reconnects).
 */
static int stream_next(struct stream *s)
{
	struct store *st = s->h->store;
	size_t n = store_count(st);
	for (size_t i = 0; i < n; i++) {
		struct db *db = store_at(st, i);
		struct db_pos dp;
		db_get_pos(db, &dp);
		if (dp.txid == 0)
			continue;
		pthread_mutex_lock(&s->h->mu);
		struct spos *rp = spos_get(s, db_name(db));
		pthread_mutex_unlock(&s->h->mu);
		if (!rp)
			return -ENOMEM;
		if (rp->txid == dp.txid && rp->checksum == dp.checksum)
			continue;
		struct ltx_header lh;
		struct ltx_trailer lt;
		int fd = -1, r = -ENOENT;
		uint32_t flags = 0;
		const char *why = NULL;
		if (rp->txid > dp.txid || (rp->txid == dp.txid && rp->checksum != dp.checksum)) {
			why = "the replica's history diverged";
			flags |= STREAM_LTX_DIVERGED;
		} else if (rp->txid > 0) {
			r = db_ltx_open(db, rp->txid + 1, &fd, &lh, &lt);
			if (r == 0 && lh.pre_apply_checksum != rp->checksum) {
				close(fd);
				fd = -1;
				r = -ESTALE;
				why = "the replica's history diverged";
				flags |= STREAM_LTX_DIVERGED;
			} else if (r == -ENOENT) {
				why = "the LTX files it needs were removed by retention";
			} else if (r < 0) {
				log_error("db '%s': LTX file for TXID %016" PRIx64
					  " is unreadable: %s; "
					  "sending a snapshot",
					  db_name(db), rp->txid + 1, strerror(-r));
				why = "an LTX file is damaged";
			}
		}
		if (fd < 0) {
			if (why)
				log_info("db '%s': sending a snapshot at TXID %016" PRIx64
					 " to replica %016" PRIX64 " because %s",
					 db_name(db), dp.txid, s->peer_id, why);
			r = db_snapshot(db, &fd, &lh, &lt);
			if (r == -ENOENT)
				continue;
			if (r < 0) {
				log_error("db '%s': cannot build a snapshot: %s", db_name(db),
					  strerror(-r));
				return r;
			}
		}
		struct stat sb;
		if (fstat(fd, &sb) < 0) {
			r = -errno;
			close(fd);
			return r;
		}
		s->pend_len += stream_ltx_frame_begin(s->pend + s->pend_len, flags, store_epoch(st),
						      db_name(db), (uint64_t)sb.st_size);
		s->fd = fd;
		s->fd_remain = (uint64_t)sb.st_size;
		pthread_mutex_lock(&s->h->mu);
		rp->txid = lh.max_txid;
		rp->checksum = lt.post_apply_checksum;
		pthread_mutex_unlock(&s->h->mu);
		return 1;
	}
	return 0;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct stream *s = cls;
	struct httpd *h = s->h;
	(void)pos;
	for (;;) {
		if (s->pend_off < s->pend_len) {
			size_t k = s->pend_len - s->pend_off;
			k = k < max ? k : max;
			memcpy(buf, s->pend + s->pend_off, k);
			s->pend_off += k;
			if (s->pend_off == s->pend_len)
				s->pend_off = s->pend_len = 0;
			s->sent_bytes += k;
			return (ssize_t)k;
		}
		if (s->fd >= 0 && s->fd_remain > 0) {
			size_t k = s->fd_remain < max ? (size_t)s->fd_remain : max;
			ssize_t r = read(s->fd, buf, k);
			if (r <= 0) {
				log_error("stream: reading an LTX file failed: %s",
					  r < 0 ? strerror(errno) : "unexpected end of file");
				return MHD_CONTENT_READER_END_WITH_ERROR;
			}
			s->fd_remain -= (uint64_t)r;
			s->sent_bytes += (uint64_t)r;
			return r;
		}
		if (s->fd >= 0) {
			close(s->fd);
			s->fd = -1;
		}
		if (s->handoff_pending) {
			/* the HANDOFF frame has been handed to the socket */
			log_info("handoff frame sent to replica %016" PRIX64, s->peer_id);
			s->handoff_pending = false;
		}
		if (s->ended)
			return MHD_CONTENT_READER_END_OF_STREAM;
		if (h->stopping || !store_is_primary(h->store)) {
			pend_frame(s, STREAM_END);
			s->ended = true;
			continue;
		}
		uint64_t seq = store_change_seq(h->store);
		int r = stream_next(s);
		if (r < 0)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		if (r > 0)
			continue;
		pthread_mutex_lock(&h->mu);
		bool handoff = h->handoff_peer == s->peer_id && !h->handoff_queued;
		if (handoff) {
			/* From here the successor may hold the lease: the handler
			 * must step this node down whatever happens to the socket. */
			h->handoff_queued = true;
			/* Commits are fenced and this replica has everything: pass the lease. */
			s->pend_len += stream_handoff_frame(
			    s->pend + s->pend_len, store_epoch(h->store), h->handoff_token);
			pend_frame(s, STREAM_END);
			s->ended = true;
		}
		pthread_mutex_unlock(&h->mu);
		if (handoff) {
			s->handoff_pending = true;
			continue;
		}
		if (!s->ready_sent) {
			pend_frame(s, STREAM_READY);
			pend_heartbeat(s);
			s->ready_sent = true;
			continue;
		}
		int64_t wait = HEARTBEAT_MS - (mono_ms() - s->last_hb);
		if (wait <= 0) {
			pend_heartbeat(s);
			continue;
		}
		store_wait_change(h->store, seq, (int)wait);
	}
}

static void stream_free(void *cls)
{
	struct stream *s = cls;
	struct httpd *h = s->h;
	pthread_mutex_lock(&h->mu);
	s->prev->next = s->next;
	s->next->prev = s->prev;
	h->nstreams--;
	pthread_mutex_unlock(&h->mu);
	log_info("replica %016" PRIX64 " disconnected (%" PRIu64 " bytes sent)", s->peer_id,
		 s->sent_bytes);
	if (s->fd >= 0)
		close(s->fd);
	free(s->pos);
	free(s);
}

static bool parse_node_id(const char *v, uint64_t *ret)
{
	char *end;
	if (!v || !*v || strlen(v) > 16)
		return false;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 16);
	if (errno || *end)
		return false;
	*ret = x;
	return true;
}

/* ---------------------------------------------------- /ltx and adoption */

/* GET /ltx?db=NAME&txid=HEX: the verified LTX file of one transaction. */
static enum MHD_Result handle_ltx(struct httpd *h, struct MHD_Connection *c)
{
	const char *name = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "db");
	const char *tx = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "txid");
	uint64_t txid;
	if (!name || !stream_name_valid(name, strlen(name)) || !parse_node_id(tx, &txid) ||
	    txid == 0)
		return reply_error(h, c, MHD_HTTP_BAD_REQUEST,
				   "want db=NAME and txid=HEX (1 to 16 hex digits)");
	struct db *db = store_find(h->store, name);
	if (!db)
		return reply_error(h, c, MHD_HTTP_NOT_FOUND, "no such database");
	int fd;
	struct ltx_header lh;
	struct ltx_trailer lt;
	int r = db_ltx_open(db, txid, &fd, &lh, &lt);
	if (r == -ENOENT)
		return reply_error(h, c, MHD_HTTP_NOT_FOUND, "no LTX file for that TXID");
	if (r < 0)
		return reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, strerror(-r));
	struct stat sb;
	if (fstat(fd, &sb) < 0) {
		close(fd);
		return reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, strerror(errno));
	}
	struct MHD_Response *resp = MHD_create_response_from_fd((size_t)sb.st_size, fd);
	if (!resp) {
		close(fd);
		return MHD_NO;
	}
	add_identity(h, resp);
	MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
	enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

static bool to_fd(void *ctx, const char *buf, size_t n)
{
	int fd = *(int *)ctx;
	while (n > 0) {
		ssize_t w = write(fd, buf, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		buf += w;
		n -= (size_t)w;
	}
	return true;
}

/*
 * A primary elected after its predecessor died, with nothing committed yet
 * in its term, takes over the transactions a connecting replica received
 * beyond this node's own position: the replica serves them (GET /ltx) and
 * each is verified and chained exactly as a replica applies it, so only a
 * continuation of this node's own history is accepted. Without this, a
 * transaction that reached some replica but not the new primary would be
 * orphaned.
 */
static void adopt(struct httpd *h, const char *adv, const struct stream_pos *pm, size_t n,
		  uint64_t peer)
{
	for (size_t i = 0; i < n && store_can_adopt(h->store); i++) {
		struct db *db = store_find(h->store, pm[i].name);
		struct db_pos p;
		if (!db)
			continue;
		db_get_pos(db, &p);
		if (p.txid == 0 || pm[i].txid <= p.txid)
			continue;
		uint64_t got = 0;
		for (uint64_t tx = p.txid + 1; tx <= pm[i].txid && store_can_adopt(h->store);
		     tx++) {
			char url[1400];
			int fd;
			struct httpc_resp resp;
			if (db_ltx_tmpfile(db, &fd) < 0)
				break;
			snprintf(url, sizeof(url), "%s/ltx?db=%s&txid=%016" PRIx64, adv, pm[i].name,
				 tx);
			struct httpc_req req = {.method = "GET",
						.url = url,
						.timeout_ms = 10000,
						.abort = &h->stopping,
						.on_data = to_fd,
						.ctx = &fd};
			int r = httpc_do(&req, &resp);
			if (r == 0 && resp.status != 200)
				r = -ENOENT;
			httpc_resp_release(&resp);
			if (r == 0)
				r = db_apply_ltx(db, fd, 0, &h->hooks);
			close(fd);
			if (r < 0) {
				log_warn("db '%s': cannot adopt TXID %016" PRIx64
					 " from replica %016" PRIX64 ": %s",
					 pm[i].name, tx, peer, strerror(-r));
				break;
			}
			got++;
		}
		if (got)
			log_warn("db '%s': adopted %" PRIu64
				 " transaction(s) from replica %016" PRIX64
				 " that the previous primary had sent to it but not to this node",
				 pm[i].name, got, peer);
	}
}

static enum MHD_Result handle_stream(struct httpd *h, struct MHD_Connection *c, struct request *rq)
{
	uint64_t peer = 0;
	char cid[21];
	if (!store_is_primary(h->store))
		return reply_error(h, c, MHD_HTTP_SERVICE_UNAVAILABLE,
				   "this node is not the primary");
	if (rq->too_big)
		return reply_error(h, c, MHD_HTTP_CONTENT_TOO_LARGE, "position map too large");
	const char *pid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Ltxfs-Node-Id");
	if (!parse_node_id(pid, &peer))
		return reply_error(h, c, MHD_HTTP_BAD_REQUEST,
				   "missing or malformed Ltxfs-Node-Id header");
	if (peer == store_node_id(h->store))
		return reply_error(h, c, MHD_HTTP_BAD_REQUEST, "cannot stream to self");
	const char *pcid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Ltxfs-Cluster-Id");
	store_cluster_id(h->store, cid);
	if (pcid && *pcid && strcmp(pcid, cid) != 0) {
		char msg[128];
		snprintf(msg, sizeof(msg), "cluster ID mismatch: replica has %.24s, primary has %s",
			 pcid, cid);
		log_warn("refusing replica %016" PRIX64 ": %s", peer, msg);
		return reply_error(h, c, MHD_HTTP_CONFLICT, msg);
	}
	struct stream_pos *pm = NULL;
	size_t npm = 0;
	if (stream_posmap_decode((const uint8_t *)rq->body, rq->len, &pm, &npm) < 0)
		return reply_error(h, c, MHD_HTTP_BAD_REQUEST, "malformed position map");
	const char *adv = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Ltxfs-Advertise-Url");
	if (adv && (strncmp(adv, "http://", 7) == 0 || strncmp(adv, "https://", 8) == 0) &&
	    h->hooks.lock && store_can_adopt(h->store))
		adopt(h, adv, pm, npm, peer);
	struct stream *s = calloc(1, sizeof(*s));
	if (!s) {
		free(pm);
		return MHD_NO;
	}
	s->h = h;
	s->fd = -1;
	s->peer_id = peer;
	s->last_hb = mono_ms();
	for (size_t i = 0; i < npm; i++) {
		struct spos *p = spos_get(s, pm[i].name);
		if (!p) {
			free(pm);
			free(s->pos);
			free(s);
			return MHD_NO;
		}
		p->txid = pm[i].txid;
		p->checksum = pm[i].checksum;
		p->floor = pm[i].txid;
	}
	free(pm);
	struct MHD_Response *resp = MHD_create_response_from_callback(
	    MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_read, s, stream_free);
	if (!resp) {
		free(s->pos);
		free(s);
		return MHD_NO;
	}
	pthread_mutex_lock(&h->mu);
	s->next = h->streams.next;
	s->prev = &h->streams;
	s->next->prev = s;
	h->streams.next = s;
	h->nstreams++;
	pthread_mutex_unlock(&h->mu);
	log_info("replica %016" PRIX64 " connected with %zu database position(s)", peer, npm);
	add_identity(h, resp);
	MHD_add_response_header(resp, "Ltxfs-Hostname", h->hostname);
	MHD_add_response_header(resp, "Content-Type", "application/vnd.ltxfs.stream");
	enum MHD_Result r = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return r;
}

/* ------------------------------------------------------- /handoff, /promote */

static bool stream_connected(struct httpd *h, uint64_t peer)
{
	bool found = false;
	pthread_mutex_lock(&h->mu);
	for (struct stream *s = h->streams.next; s != &h->streams && !found; s = s->next)
		found = s->peer_id == peer && !s->ended;
	pthread_mutex_unlock(&h->mu);
	return found;
}

static enum MHD_Result handle_handoff(struct httpd *h, struct MHD_Connection *c)
{
	uint64_t peer;
	char token[STREAM_TOKEN_MAX + 1];
	if (!h->elector)
		return reply_error(
		    h, c, MHD_HTTP_CONFLICT,
		    "handoff needs a consul or etcd lease (this node has a static lease)");
	const char *nid = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "nodeID");
	if (!parse_node_id(nid, &peer))
		return reply_error(h, c, MHD_HTTP_BAD_REQUEST,
				   "missing or malformed nodeID parameter");
	if (!store_is_primary(h->store))
		return reply_error(h, c, MHD_HTTP_SERVICE_UNAVAILABLE,
				   "this node is not the primary");
	if (!stream_connected(h, peer))
		return reply_error(h, c, MHD_HTTP_NOT_FOUND,
				   "that node is not a replica connected to this primary");
	int r = elector_handoff_begin(h->elector, token, sizeof(token));
	if (r == -EBUSY)
		return reply_error(h, c, MHD_HTTP_CONFLICT, "a handoff is already in progress");
	if (r < 0)
		return reply_error(h, c, MHD_HTTP_SERVICE_UNAVAILABLE,
				   "this node is not the primary");
	log_info("handing the primary lease to %016" PRIX64, peer);
	pthread_mutex_lock(&h->mu);
	h->handoff_peer = peer;
	snprintf(h->handoff_token, sizeof(h->handoff_token), "%s", token);
	h->handoff_queued = false;
	pthread_mutex_unlock(&h->mu);
	store_kick(h->store);
	/*
	 * Wait until that stream queues the frame (it first sends everything up
	 * to the fenced position). Queueing and cancelling happen under h->mu,
	 * so either the frame is on its way and this node steps down, or it
	 * never will be and the fence is lifted: never both primaries.
	 */
	bool sent = false;
	int64_t end = mono_ms() + 5000;
	for (;;) {
		pthread_mutex_lock(&h->mu);
		sent = h->handoff_queued;
		pthread_mutex_unlock(&h->mu);
		if (sent || mono_ms() >= end || !stream_connected(h, peer))
			break;
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	pthread_mutex_lock(&h->mu);
	sent = h->handoff_queued;
	h->handoff_peer = 0;
	h->handoff_token[0] = '\0';
	pthread_mutex_unlock(&h->mu);
	elector_handoff_end(h->elector, sent);
	if (!sent) {
		log_warn("handoff to %016" PRIX64 " failed: the replica did not take the frame",
			 peer);
		return reply_error(h, c, MHD_HTTP_GATEWAY_TIMEOUT,
				   "the replica did not receive the handoff in time");
	}
	return reply_json(h, c, MHD_HTTP_OK, json_pack("{s:b}", "handedOff", 1));
}

static enum MHD_Result handle_promote(struct httpd *h, struct MHD_Connection *c)
{
	char err[512];
	if (!h->elector)
		return reply_error(
		    h, c, MHD_HTTP_CONFLICT,
		    "promotion needs a consul or etcd lease (this node has a static lease)");
	int r = elector_promote(h->elector, 10000, err, sizeof(err));
	if (r == -EALREADY)
		return reply_json(h, c, MHD_HTTP_OK, json_pack("{s:b}", "isPrimary", 1));
	if (r < 0)
		return reply_error(h, c,
				   r == -EPERM || r == -ENOENT ? MHD_HTTP_CONFLICT
				   : r == -ETIMEDOUT	       ? MHD_HTTP_GATEWAY_TIMEOUT
							       : MHD_HTTP_BAD_GATEWAY,
				   err);
	return reply_json(h, c, MHD_HTTP_OK, json_pack("{s:b}", "isPrimary", 1));
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
		*con_cls = rq;
		return MHD_YES;
	}
	if (*upload_size > 0) {
		if (rq->len + *upload_size > MAX_POSMAP_BYTES) {
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
	if (strcmp(url, "/stream") == 0) {
		if (strcmp(method, "POST") != 0)
			return reply_error(h, c, MHD_HTTP_METHOD_NOT_ALLOWED, "use POST");
		return handle_stream(h, c, rq);
	}
	if (strcmp(url, "/ltx") == 0) {
		if (strcmp(method, "GET") != 0)
			return reply_error(h, c, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET");
		return handle_ltx(h, c);
	}
	if (strcmp(url, "/handoff") == 0) {
		if (strcmp(method, "POST") != 0)
			return reply_error(h, c, MHD_HTTP_METHOD_NOT_ALLOWED, "use POST");
		return handle_handoff(h, c);
	}
	if (strcmp(url, "/promote") == 0) {
		if (strcmp(method, "POST") != 0)
			return reply_error(h, c, MHD_HTTP_METHOD_NOT_ALLOWED, "use POST");
		return handle_promote(h, c);
	}
	if (strcmp(url, "/info") == 0) {
		if (strcmp(method, "GET") != 0)
			return reply_error(h, c, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET");
		return handle_info(h, c);
	}
	return reply_error(h, c, MHD_HTTP_NOT_FOUND, "no such endpoint");
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct request *rq = *con_cls;
	(void)cls;
	(void)c;
	(void)toe;
	if (rq) {
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

int httpd_parse_addr(const char *addr, char *host, size_t hostlen, unsigned *port)
{
	const char *colon;
	if (!addr)
		return -EINVAL;
	if (addr[0] == '[') {
		const char *end = strchr(addr, ']');
		if (!end || end[1] != ':')
			return -EINVAL;
		if ((size_t)(end - addr - 1) >= hostlen)
			return -EINVAL;
		memcpy(host, addr + 1, (size_t)(end - addr - 1));
		host[end - addr - 1] = '\0';
		colon = end + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon || (size_t)(colon - addr) >= hostlen)
			return -EINVAL;
		memcpy(host, addr, (size_t)(colon - addr));
		host[colon - addr] = '\0';
	}
	char *end;
	errno = 0;
	unsigned long p = strtoul(colon + 1, &end, 10);
	if (errno || *end || colon[1] == '\0' || p > 65535)
		return -EINVAL;
	*port = (unsigned)p;
	return 0;
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
	h->hostname = strdup(opt->hostname ? opt->hostname : "");
	h->advertise_url = strdup(opt->advertise_url ? opt->advertise_url : "");
	if (!h->hostname || !h->advertise_url) {
		r = -ENOMEM;
		goto fail;
	}
	if (httpd_parse_addr(opt->addr, host, sizeof(host), &port) < 0) {
		snprintf(errmsg, n, "invalid http.addr '%s' (want HOST:PORT or :PORT)", opt->addr);
		r = -EINVAL;
		goto fail;
	}
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
			 MHD_USE_ERROR_LOG | MHD_USE_POLL;
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
		h->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, h,
					MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
					MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
					MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
					MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, MHD_OPTION_END);
	} else {
		h->d = MHD_start_daemon(flags | MHD_USE_DUAL_STACK, (uint16_t)port, NULL, NULL,
					on_request, h, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
					MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
					MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, MHD_OPTION_END);
		if (!h->d) /* no IPv6 on this host */
			h->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, h,
						MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
						MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
						MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
						MHD_OPTION_END);
	}
	if (!h->d) {
		snprintf(errmsg, n, "cannot listen on http.addr '%s' (port in use?)", opt->addr);
		r = -EADDRINUSE;
		goto fail;
	}
	*ret = h;
	return 0;
fail:
	free(h->hostname);
	free(h->advertise_url);
	pthread_mutex_destroy(&h->mu);
	free(h);
	return r;
}

void httpd_stop(struct httpd *h)
{
	if (!h)
		return;
	h->stopping = true;
	store_kick(h->store);
	/* Let every stream write its END frame (bounded: a replica that does not
	 * read is cut off by MHD_stop_daemon). */
	for (int i = 0; i < 300 && httpd_stream_count(h) > 0; i++) {
		store_kick(h->store);
		usleep(10000);
	}
	if (h->d)
		MHD_stop_daemon(h->d);
	pthread_mutex_destroy(&h->mu);
	free(h->hostname);
	free(h->advertise_url);
	free(h);
}

void httpd_set_elector(struct httpd *h, struct elector *e)
{
	h->elector = e;
}

uint64_t httpd_retention_floor(struct httpd *h, const char *name)
{
	uint64_t floor = UINT64_MAX;
	if (!h)
		return floor;
	pthread_mutex_lock(&h->mu);
	for (struct stream *s = h->streams.next; s != &h->streams; s = s->next) {
		struct spos *p = spos_find(s, name);
		if (p && p->floor < floor)
			floor = p->floor;
	}
	pthread_mutex_unlock(&h->mu);
	return floor;
}

size_t httpd_stream_count(struct httpd *h)
{
	pthread_mutex_lock(&h->mu);
	size_t n = h->nstreams;
	pthread_mutex_unlock(&h->mu);
	return n;
}
