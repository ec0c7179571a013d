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
#include "ltxfs/hostport.h"
#include "ltxfs/clock.h"

#include "ltxfs/db.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/httpc.h"
#include "ltxfs/log.h"
#include "ltxfs/ltx.h"
#include "ltxfs/metrics.h"
#include "ltxfs/stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
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
	uint64_t fd_size, fd_off; /* the LTX frame's length and what was sent of it */
	struct db_snap *snap;	  /* the frame being sent is a snapshot still being built */
	uint64_t sent_bytes;
};

struct request {
	char *body;
	size_t len;
	bool too_big;
	int upfd; /* POST /import: the upload goes to this file (-1: to body) */
	char uppath[4200];
	uint64_t uplen;
	int uperr;
};

struct httpd {
	struct MHD_Daemon *d;
	struct store *store;
	struct elector *elector;
	struct db_apply_hooks hooks;
	char *hostname;
	char *advertise_url;
	char *mount_dir, *data_dir, *token;
	bool read_auth;
	size_t nevents;		   /* open GET /events streams, under mu */
	pthread_mutex_t import_mu; /* one import at a time */
	/* a handoff in progress, under mu */
	uint64_t handoff_peer;
	char handoff_token[STREAM_TOKEN_MAX + 1];
	bool handoff_queued; /* the frame is queued: the successor may take the lease */
	pthread_mutex_t mu;  /* streams list */
	struct stream streams;
	size_t nstreams;
	volatile bool stopping;
};

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
		struct db_stats st;
		db_get_stats(db, &st);
		json_array_append_new(dbs,
				      json_pack("{s:s,s:s,s:s,s:b,s:I,s:I}", "name", db_name(db),
						"txid", txid, "checksum", ck, "exists",
						db_exists(db), "size", (json_int_t)st.size_bytes,
						"timestamp", (json_int_t)p.timestamp));
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
		json_t *reps = json_array();
		pthread_mutex_lock(&h->mu);
		for (struct stream *st = h->streams.next; st != &h->streams; st = st->next) {
			char pid[17];
			json_t *pos = json_array();
			snprintf(pid, sizeof(pid), "%016" PRIX64, st->peer_id);
			for (size_t i = 0; i < st->n; i++) {
				char tx[17];
				snprintf(tx, sizeof(tx), "%016" PRIx64, st->pos[i].txid);
				json_array_append_new(pos, json_pack("{s:s,s:s}", "name",
								     st->pos[i].name, "txid", tx));
			}
			json_array_append_new(
			    reps, json_pack("{s:s,s:o}", "nodeID", pid, "databases", pos));
		}
		pthread_mutex_unlock(&h->mu);
		json_object_set_new(o, "replicas", reps);
	}
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
	metrics_add(type == STREAM_READY ? MC_FRAMES_READY : MC_FRAMES_END, 1);
	stream_frame_header(s->pend + s->pend_len, type, 0);
	s->pend_len += STREAM_FRAME_HEADER;
}

static void pend_heartbeat(struct stream *s)
{
	s->pend_len +=
	    stream_heartbeat_frame(s->pend + s->pend_len, clock_wall_ms(), store_epoch(s->h->store));
	s->last_hb = clock_mono_ms();
	metrics_add(MC_FRAMES_HEARTBEAT, 1);
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
			r = db_snap_start(db, &s->snap);
			if (r == -ENOENT)
				continue;
			if (r == 0)
				metrics_add(MC_SNAPSHOTS_SENT, 1);
			if (r < 0) {
				log_error("db '%s': cannot build a snapshot: %s", db_name(db),
					  strerror(-r));
				return r;
			}
		}
		uint64_t size;
		if (s->snap) {
			db_snap_info(s->snap, &size, &lh, &lt.post_apply_checksum);
		} else {
			struct stat sb;
			if (fstat(fd, &sb) < 0) {
				r = -errno;
				close(fd);
				return r;
			}
			size = (uint64_t)sb.st_size;
			s->fd = fd;
		}
		s->pend_len += stream_ltx_frame_begin(s->pend + s->pend_len, flags, store_epoch(st),
						      db_name(db), size);
		s->fd_size = size;
		s->fd_off = 0;
		metrics_add(MC_FRAMES_LTX, 1);
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
			metrics_add(MC_STREAM_BYTES_SENT, k);
			return (ssize_t)k;
		}
		if ((s->fd >= 0 || s->snap) && s->fd_off < s->fd_size) {
			uint64_t remain = s->fd_size - s->fd_off;
			size_t k = remain < max ? (size_t)remain : max;
			ssize_t r;
			if (s->snap) {
				r = db_snap_read(s->snap, buf, k);
				if (r < 0) {
					if (r == -EAGAIN)
						log_info(
						    "stream: the snapshot for replica %016" PRIX64
						    " is cut short and will be sent again",
						    s->peer_id);
					else
						log_error("stream: building a snapshot failed: %s",
							  strerror((int)-r));
					return MHD_CONTENT_READER_END_WITH_ERROR;
				}
			} else {
				r = pread(s->fd, buf, k, (off_t)s->fd_off);
			}
			if (r <= 0) {
				log_error("stream: reading an LTX file failed: %s",
					  r < 0 ? strerror(errno) : "unexpected end of file");
				return MHD_CONTENT_READER_END_WITH_ERROR;
			}
			s->fd_off += (uint64_t)r;
			s->sent_bytes += (uint64_t)r;
			metrics_add(MC_STREAM_BYTES_SENT, (uint64_t)r);
			return r;
		}
		if (s->fd >= 0) {
			close(s->fd);
			s->fd = -1;
		}
		if (s->snap) {
			db_snap_free(s->snap);
			s->snap = NULL;
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
			metrics_add(MC_FRAMES_HANDOFF, 1);
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
		int64_t wait = HEARTBEAT_MS - (clock_mono_ms() - s->last_hb);
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
	db_snap_free(s->snap);
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
			char auth[600];
			httpc_bearer(auth, sizeof(auth), h->token);
			struct httpc_req req = {.method = "GET",
						.url = url,
						.headers = {auth[0] ? auth : NULL},
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
	s->last_hb = clock_mono_ms();
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
	int64_t end = clock_mono_ms() + 5000;
	for (;;) {
		pthread_mutex_lock(&h->mu);
		sent = h->handoff_queued;
		pthread_mutex_unlock(&h->mu);
		if (sent || clock_mono_ms() >= end || !stream_connected(h, peer))
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
	add_identity(h, resp);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
	enum MHD_Result r = MHD_queue_response(c, MHD_HTTP_UNAUTHORIZED, resp);
	MHD_destroy_response(resp);
	return r;
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
			return reply_error(h, c, MHD_HTTP_BAD_REQUEST,
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
	return reply_json(h, c, why ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK, o);
}

/* ----------------------------------------------------------- /metrics */

static void label_escape(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', f);
		if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

static enum MHD_Result handle_metrics(struct httpd *h, struct MHD_Connection *c)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return MHD_NO;
	size_t n = store_count(h->store);
	pthread_mutex_lock(&h->mu);
	size_t streams = h->nstreams, events = h->nevents;
	pthread_mutex_unlock(&h->mu);
	fprintf(f,
		"# HELP ltxfs_db_count Databases this node manages.\n# TYPE ltxfs_db_count gauge\n"
		"ltxfs_db_count %zu\n",
		n);
	fprintf(f,
		"# HELP ltxfs_is_primary 1 on the primary.\n# TYPE ltxfs_is_primary gauge\n"
		"ltxfs_is_primary %d\n",
		store_is_primary(h->store) ? 1 : 0);
	fprintf(f,
		"# HELP ltxfs_accepts_writes 1 while the write fence is open.\n"
		"# TYPE ltxfs_accepts_writes gauge\nltxfs_accepts_writes %d\n",
		store_accepts_writes(h->store) ? 1 : 0);
	fprintf(f,
		"# HELP ltxfs_epoch Highest lease epoch seen.\n# TYPE ltxfs_epoch gauge\n"
		"ltxfs_epoch %llu\n",
		(unsigned long long)store_epoch(h->store));
	fprintf(f,
		"# HELP ltxfs_subscriber_count Open GET /events streams.\n"
		"# TYPE ltxfs_subscriber_count gauge\nltxfs_subscriber_count %zu\n",
		events);
	fprintf(f,
		"# HELP ltxfs_http_stream_count Connected replica streams.\n"
		"# TYPE ltxfs_http_stream_count gauge\nltxfs_http_stream_count %zu\n",
		streams);
	fprintf(f,
		"# HELP ltxfs_lag_seconds Time behind the primary (0 on the primary).\n"
		"# TYPE ltxfs_lag_seconds gauge\nltxfs_lag_seconds %.3f\n",
		(double)store_lag_ms(h->store) / 1000.0);
	static const struct {
		const char *name, *type, *help;
	} per[] = {
	    {"ltxfs_db_txid", "gauge", "Current TXID."},
	    {"ltxfs_db_size_bytes", "gauge", "Committed database size."},
	    {"ltxfs_db_database_write_count", "counter", "Writes to the database file."},
	    {"ltxfs_db_journal_write_count", "counter", "Writes to the rollback journal."},
	    {"ltxfs_db_wal_write_count", "counter", "Writes to the WAL."},
	    {"ltxfs_db_shm_write_count", "counter", "Writes to the shared-memory file."},
	    {"ltxfs_db_commit_count", "counter", "Transactions committed on this node."},
	    {"ltxfs_db_ltx_count", "gauge", "LTX files on disk."},
	    {"ltxfs_db_ltx_bytes", "gauge", "LTX bytes on disk."},
	    {"ltxfs_db_ltx_reap_count", "counter", "LTX files removed by retention."},
	    {"ltxfs_db_lag_seconds", "gauge", "Now minus the timestamp of the last transaction."},
	};
	double now_s = (double)clock_wall_ms() / 1e3;
	enum { NPER = sizeof(per) / sizeof(per[0]) };
	/* one pass over the databases (one ltx/ listing each), then the families */
	double *val = calloc(n ? n : 1, sizeof(double) * NPER);
	if (!val) {
		fclose(f);
		free(text);
		return MHD_NO;
	}
	for (size_t i = 0; i < n; i++) {
		struct db *db = store_at(h->store, i);
		struct db_stats st;
		struct db_pos p;
		uint64_t files, bytes;
		db_get_pos(db, &p);
		db_get_stats(db, &st);
		db_ltx_usage(db, &files, &bytes);
		double *v = val + i * NPER;
		v[0] = (double)p.txid;
		v[1] = (double)st.size_bytes;
		v[2] = (double)st.writes[DB_FILE_DB];
		v[3] = (double)st.writes[DB_FILE_JOURNAL];
		v[4] = (double)st.writes[DB_FILE_WAL];
		v[5] = (double)st.writes[DB_FILE_SHM];
		v[6] = (double)st.commits;
		v[7] = (double)files;
		v[8] = (double)bytes;
		v[9] = (double)st.ltx_removed;
		v[10] = p.timestamp ? now_s - (double)p.timestamp / 1000.0 : 0;
	}
	for (size_t m = 0; m < NPER; m++) {
		fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", per[m].name, per[m].help, per[m].name,
			per[m].type);
		for (size_t i = 0; i < n; i++) {
			fprintf(f, "%s{db=\"", per[m].name);
			label_escape(f, db_name(store_at(h->store, i)));
			fprintf(f, "\"} %.17g\n", val[i * NPER + m]);
		}
	}
	free(val);
	metrics_render(f);
	fclose(f);
	struct MHD_Response *resp =
	    MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	add_identity(h, resp);
	MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	enum MHD_Result r = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return r;
}

/* ------------------------------------------------------------ /events */

struct evpos {
	char name[STREAM_NAME_MAX + 1];
	uint64_t txid;
};

struct events {
	struct httpd *h;
	struct evpos *pos;
	size_t n, cap;
	bool init_sent, primary;
	char primary_host[256];
	char *buf;
	size_t len, off;
	int64_t last_write;
};

static void ev_primary(struct events *e, bool *primary, char *host, size_t n)
{
	*primary = store_is_primary(e->h->store);
	if (*primary)
		snprintf(host, n, "%s", e->h->hostname);
	else if (store_upstream(e->h->store, host, n) < 0)
		host[0] = '\0';
}

static void ev_append(struct events *e, json_t *o)
{
	char *t = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (!t)
		return;
	size_t k = strlen(t);
	char *nb = realloc(e->buf, e->len + k + 2);
	if (nb) {
		e->buf = nb;
		memcpy(e->buf + e->len, t, k);
		e->buf[e->len + k] = '\n';
		e->len += k + 1;
	}
	free(t);
}

static json_t *ev_primary_data(bool primary, const char *host)
{
	json_t *d = json_pack("{s:b}", "isPrimary", primary);
	if (host[0])
		json_object_set_new(d, "hostname", json_string(host));
	return d;
}

/* Queue what changed since the last call: init, primaryChange, tx. */
static void ev_scan(struct events *e)
{
	bool primary, initial = !e->init_sent;
	char host[256];
	ev_primary(e, &primary, host, sizeof(host));
	if (!e->init_sent) {
		ev_append(e, json_pack("{s:s,s:o}", "type", "init", "data",
				       ev_primary_data(primary, host)));
		e->init_sent = true;
		e->primary = primary;
		snprintf(e->primary_host, sizeof(e->primary_host), "%s", host);
	} else if (primary != e->primary || strcmp(host, e->primary_host) != 0) {
		ev_append(e, json_pack("{s:s,s:o}", "type", "primaryChange", "data",
				       ev_primary_data(primary, host)));
		e->primary = primary;
		snprintf(e->primary_host, sizeof(e->primary_host), "%s", host);
	}
	size_t n = store_count(e->h->store);
	for (size_t i = 0; i < n; i++) {
		struct db *db = store_at(e->h->store, i);
		struct db_pos p;
		struct db_stats st;
		db_get_pos(db, &p);
		struct evpos *ep = NULL;
		for (size_t k = 0; k < e->n; k++)
			if (strcmp(e->pos[k].name, db_name(db)) == 0)
				ep = &e->pos[k];
		if (!ep) {
			if (e->n == e->cap) {
				size_t cap = e->cap ? e->cap * 2 : 8;
				void *np = realloc(e->pos, cap * sizeof(*e->pos));
				if (!np)
					return;
				e->pos = np;
				e->cap = cap;
			}
			ep = &e->pos[e->n++];
			snprintf(ep->name, sizeof(ep->name), "%s", db_name(db));
			ep->txid = initial ? p.txid : 0; /* known at init: no event */
		}
		if (p.txid == ep->txid)
			continue;
		ep->txid = p.txid;
		char txid[17], ck[17], when[96];
		snprintf(txid, sizeof(txid), "%016" PRIx64, p.txid);
		snprintf(ck, sizeof(ck), "%016" PRIx64, p.checksum);
		time_t t = (time_t)(p.timestamp / 1000);
		struct tm tm;
		gmtime_r(&t, &tm);
		snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, (int)(p.timestamp % 1000));
		db_get_stats(db, &st);
		ev_append(e, json_pack("{s:s,s:s,s:{s:s,s:s,s:i,s:i,s:s}}", "type", "tx", "db",
				       db_name(db), "data", "txID", txid, "postApplyChecksum", ck,
				       "pageSize", (int)st.page_size, "commit", (int)st.page_count,
				       "timestamp", when));
	}
}

static ssize_t events_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct events *e = cls;
	(void)pos;
	for (;;) {
		if (e->off < e->len) {
			size_t k = e->len - e->off < max ? e->len - e->off : max;
			memcpy(buf, e->buf + e->off, k);
			e->off += k;
			if (e->off == e->len)
				e->off = e->len = 0;
			e->last_write = clock_mono_ms();
			return (ssize_t)k;
		}
		if (e->h->stopping)
			return MHD_CONTENT_READER_END_OF_STREAM;
		uint64_t seq = store_change_seq(e->h->store);
		ev_scan(e);
		if (e->len)
			continue;
		if (clock_mono_ms() - e->last_write >= 15000) {
			/* keep-alive: an empty line, so idle proxies do not cut the stream */
			e->last_write = clock_mono_ms();
			buf[0] = '\n';
			return 1;
		}
		store_wait_change(e->h->store, seq, 1000);
	}
}

static void events_free(void *cls)
{
	struct events *e = cls;
	pthread_mutex_lock(&e->h->mu);
	e->h->nevents--;
	pthread_mutex_unlock(&e->h->mu);
	free(e->pos);
	free(e->buf);
	free(e);
}

static enum MHD_Result handle_events(struct httpd *h, struct MHD_Connection *c)
{
	struct events *e = calloc(1, sizeof(*e));
	if (!e)
		return MHD_NO;
	e->h = h;
	e->last_write = clock_mono_ms();
	struct MHD_Response *resp =
	    MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, events_read, e, events_free);
	if (!resp) {
		free(e);
		return MHD_NO;
	}
	pthread_mutex_lock(&h->mu);
	h->nevents++;
	pthread_mutex_unlock(&h->mu);
	add_identity(h, resp);
	MHD_add_response_header(resp, "Content-Type", "application/x-ndjson");
	MHD_add_response_header(resp, "Cache-Control", "no-cache");
	enum MHD_Result r = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return r;
}

/* ------------------------------------------------------------ /export */

static enum MHD_Result handle_export(struct httpd *h, struct MHD_Connection *c)
{
	const char *name = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "name");
	if (!name || !stream_name_valid(name, strlen(name)))
		return reply_error(h, c, MHD_HTTP_BAD_REQUEST, "want name=DATABASE");
	struct db *db = store_find(h->store, name);
	if (!db || !db_exists(db))
		return reply_error(h, c, MHD_HTTP_NOT_FOUND, "no such database");
	int fd = open(h->data_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		return reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, strerror(errno));
	struct db_pos p;
	int r = db_export(db, fd, &p);
	struct stat sb;
	if (r == 0 && fstat(fd, &sb) < 0)
		r = -errno;
	if (r < 0) {
		close(fd);
		return reply_error(
		    h, c, r == -ENOENT ? MHD_HTTP_NOT_FOUND : MHD_HTTP_INTERNAL_SERVER_ERROR,
		    r == -ENOENT ? "the database is empty" : strerror(-r));
	}
	struct MHD_Response *resp = MHD_create_response_from_fd((size_t)sb.st_size, fd);
	if (!resp) {
		close(fd);
		return MHD_NO;
	}
	char txid[17];
	snprintf(txid, sizeof(txid), "%016" PRIx64, p.txid);
	add_identity(h, resp);
	MHD_add_response_header(resp, "Content-Type", "application/vnd.sqlite3");
	MHD_add_response_header(resp, "Ltxfs-Txid", txid);
	enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* ------------------------------------------------------------ /import */

/* Check the uploaded file is a SQLite database that passes integrity_check. */
static int import_check(const char *path, char *err, size_t n)
{
	sqlite3 *s = NULL;
	sqlite3_stmt *st = NULL;
	int r = -EINVAL;
	char uri[4300];
	snprintf(uri, sizeof(uri), "file:%s?mode=ro", path);
	if (sqlite3_open_v2(uri, &s, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK) {
		snprintf(err, n, "cannot open the upload: %s",
			 s ? sqlite3_errmsg(s) : "out of memory");
		goto out;
	}
	if (sqlite3_prepare_v2(s, "PRAGMA integrity_check", -1, &st, NULL) != SQLITE_OK) {
		snprintf(err, n, "not a SQLite database: %s", sqlite3_errmsg(s));
		goto out;
	}
	int rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		snprintf(err, n, "not a SQLite database: %s", sqlite3_errmsg(s));
		goto out;
	}
	const char *res = (const char *)sqlite3_column_text(st, 0);
	if (!res || strcmp(res, "ok") != 0) {
		snprintf(err, n, "the database fails integrity_check: %.300s", res ? res : "?");
		goto out;
	}
	r = 0;
out:
	sqlite3_finalize(st);
	sqlite3_close(s);
	return r;
}

/*
 * Copy the checked upload into <mount>/<name> with SQLite's backup API, as
 * any client of the mount would write: SQLite takes its locks, journals the
 * change, bumps the change counter and the schema cookie (so connections
 * already open re-read the schema), and ltxfs captures one transaction that
 * replicates like any other.
 */
static int import_into(struct httpd *h, const char *src_path, const char *name, char *err, size_t n)
{
	sqlite3 *src = NULL, *dst = NULL;
	sqlite3_backup *b = NULL;
	char dpath[4400];
	int r = -EIO;
	snprintf(dpath, sizeof(dpath), "%s/%s", h->mount_dir, name);
	if (sqlite3_open_v2(src_path, &src, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
	    sqlite3_open_v2(dpath, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
		SQLITE_OK) {
		snprintf(err, n, "cannot open %.200s: %s", dpath,
			 dst   ? sqlite3_errmsg(dst)
			 : src ? sqlite3_errmsg(src)
			       : "out of memory");
		goto out;
	}
	sqlite3_busy_timeout(dst, 10000);
	b = sqlite3_backup_init(dst, "main", src, "main");
	if (!b) {
		snprintf(err, n, "cannot start the copy: %s", sqlite3_errmsg(dst));
		goto out;
	}
	int rc;
	while ((rc = sqlite3_backup_step(b, 4096)) == SQLITE_OK || rc == SQLITE_BUSY ||
	       rc == SQLITE_LOCKED)
		if (rc != SQLITE_OK)
			sqlite3_sleep(5);
	sqlite3_backup_finish(b);
	b = NULL;
	if (rc != SQLITE_DONE) {
		snprintf(err, n, "copying into %.200s failed: %s%s", dpath, sqlite3_errstr(rc),
			 rc == SQLITE_READONLY ? " (a WAL database cannot change its page size: "
						 "remove it first)"
					       : "");
		goto out;
	}
	r = 0;
out:
	sqlite3_backup_finish(b);
	sqlite3_close(dst);
	sqlite3_close(src);
	return r;
}

static enum MHD_Result handle_import(struct httpd *h, struct MHD_Connection *c, struct request *rq)
{
	char err[600];
	const char *name = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "name");
	if (!name || !stream_name_valid(name, strlen(name)))
		return reply_error(h, c, MHD_HTTP_BAD_REQUEST, "want name=DATABASE");
	if (rq->uperr)
		return reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, strerror(rq->uperr));
	if (rq->upfd < 0 || rq->uplen == 0)
		return reply_error(h, c, MHD_HTTP_BAD_REQUEST,
				   "empty upload: send the SQLite file as the body");
	if (!store_accepts_writes(h->store))
		return reply_error(
		    h, c, MHD_HTTP_CONFLICT,
		    store_is_primary(h->store)
			? "this primary does not accept writes right now (handoff or "
			  "lease renewal in progress): retry"
			: "this node is not the primary: import on the primary");
	if (fsync(rq->upfd) < 0) {
		snprintf(err, sizeof(err), "cannot store the upload: %s", strerror(errno));
		return reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, err);
	}
	if (import_check(rq->uppath, err, sizeof(err)) < 0) {
		log_warn("import of '%s' refused: %s", name, err);
		return reply_error(h, c, MHD_HTTP_BAD_REQUEST, err);
	}
	pthread_mutex_lock(&h->import_mu);
	int r = import_into(h, rq->uppath, name, err, sizeof(err));
	pthread_mutex_unlock(&h->import_mu);
	if (r < 0) {
		log_warn("import of '%s' failed: %s", name, err);
		return reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, err);
	}
	struct db *db = store_find(h->store, name);
	struct db_pos p = {0};
	if (db)
		db_get_pos(db, &p);
	char txid[17];
	snprintf(txid, sizeof(txid), "%016" PRIx64, p.txid);
	log_info("db '%s': imported %" PRIu64 " bytes as TXID %s", name, rq->uplen, txid);
	return reply_json(
	    h, c, MHD_HTTP_OK,
	    json_pack("{s:s,s:s,s:I}", "name", name, "txid", txid, "bytes", (json_int_t)rq->uplen));
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
		return reply_error(h, c, MHD_HTTP_NOT_FOUND, "no such endpoint");
	if (strcmp(method, routes[ri].method) != 0) {
		char msg[32];
		snprintf(msg, sizeof(msg), "use %s", routes[ri].method);
		return reply_error(h, c, MHD_HTTP_METHOD_NOT_ALLOWED, msg);
	}
	if ((routes[ri].mutating || (h->read_auth && strcmp(url, "/health") != 0)) &&
	    !token_ok(h, c))
		return reply_unauthorized(h, c);
	switch (ri) {
	case 0:
		return handle_stream(h, c, rq);
	case 1:
		return handle_ltx(h, c);
	case 2:
		return handle_handoff(h, c);
	case 3:
		return handle_promote(h, c);
	case 4:
		return handle_import(h, c, rq);
	case 5:
		return handle_info(h, c);
	case 6:
		return handle_metrics(h, c);
	case 7:
		return handle_events(h, c);
	case 8:
		return handle_export(h, c);
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
	free(h->mount_dir);
	free(h->data_dir);
	free(h->token);
	pthread_mutex_destroy(&h->import_mu);
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
	pthread_mutex_destroy(&h->import_mu);
	free(h->hostname);
	free(h->advertise_url);
	free(h->mount_dir);
	free(h->data_dir);
	free(h->token);
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
