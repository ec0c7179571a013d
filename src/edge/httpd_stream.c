/*
 * httpd_stream.c - the HTTP server's replication side: POST /stream,
 * GET /ltx and POST /handoff (httpd.c routes to them).
 *
 * POST /stream. A replica posts its position map and asks for an upgrade;
 * the primary answers 101, and from then on the sender thread
 * (httpd_sender.c) owns the socket and writes frames (stream.h) as long as
 * this node is primary. What it writes comes from stream_fill, one
 * stream's state machine:
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
 *   IDLE    nothing to send: the sender waits for the next commit; at 1 s
 *           with nothing to send, a HEARTBEAT; at shutdown or loss of the
 *           primary role, END
 *
 * FAN-OUT. A transaction is encoded once, by the writer of its LTX file,
 * which keeps the bytes in the LTX cache (db_ltxcache.c); each stream sends
 * them from there with one copy, whatever the number of replicas. Only a
 * file that left the cache is opened and verified from disk. One call of
 * stream_fill fills the stream's 256 KiB buffer with as many whole frames
 * as are pending, so a replica that is behind gets hundreds of
 * transactions per write to the socket (and applies them as one batch,
 * replica.c). One thread writes every stream, at most once per millisecond
 * (httpd_sender.c, COALESCING).
 *
 * HANDOFF. POST /handoff?nodeID=X (the primary's side of a planned
 * handoff): the elector fences commits; X's stream, once it has nothing
 * left to send, writes a HANDOFF frame with the lease token and END; the
 * request answers 200 when the frame is on the socket (the elector then
 * steps down), or 504 after 5 s (the fence is lifted). POST /promote
 * (httpd.c) asks this node's primary for a handoff and answers once this
 * node is primary.
 *
 * The replica verifies and applies each LTX file; it reconnects after any
 * error, and its new position map tells the primary where to resume. The
 * primary keeps no per-replica state beyond the open stream.
 *
 * Retention. Each stream records, per database, the position the replica
 * reported and, at each heartbeat (sent only when everything was written to
 * the socket), what it has been sent since. The retention thread keeps every
 * LTX file above the lowest of these (httpd_retention_floor).
 *
 * Adoption. On a primary elected after an unclean failover, while nothing
 * has committed in its term (store_can_adopt), a connecting replica that
 * names its own URL (Ltxfs-Advertise-Url) may be ahead on the same chain.
 * Before its stream starts, httpd_serve_stream hands the replica's position
 * map to the elector (elector_adopt), whose adopter thread fetches the
 * missing transactions from the replica's GET /ltx and applies them. The
 * handler only waits (it makes no client call); the stream then starts
 * from the position reached, so the replica is not sent a DIVERGED
 * snapshot for what the primary has just taken over (docs/leases.md 6.2).
 *
 * GET /ltx?db=NAME&txid=HEX. One LTX file, verified in full, sent from its
 * descriptor: what a new primary fetches from a replica during adoption.
 * Served by every node.
 *
 * Threads and locks. A stream's own state (pend, fd, snap, the flags)
 * belongs to the sender thread once the connection is upgraded (to the
 * connection's thread before). The list of streams and each stream's
 * position table are under h->mu, which the threads of /info, /metrics and
 * /handoff and the retention thread (httpd_retention_floor) also take; so
 * are the handoff fields, which the /handoff thread sets and stream_fill
 * turns into the frame. Queueing and cancelling the frame both happen
 * under h->mu, so it is either on its way and this node steps down, or
 * never sent. The sender holds h->mu only for a few assignments, never
 * while it waits for a commit or writes.
 */
#include "httpd_int.h"
#include "ltxfs/clock.h"

#include "ltxfs/db.h"
#include "ltxfs/elector.h"
#include "ltxfs/log.h"
#include "ltxfs/ltx.h"
#include "ltxfs/metrics.h"
#include "ltxfs/stream.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A replica not caught up for this long is reported as lagging. */
#define STREAM_LAGGING_MS 2000

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
	s->pend_len += stream_heartbeat_frame(s->pend + s->pend_len, clock_wall_ms(),
					      store_epoch(s->h->store));
	s->last_hb = clock_mono_ms();
	metrics_add(MC_FRAMES_HEARTBEAT, 1);
	/* Everything before this heartbeat has been handed to the socket. */
	pthread_mutex_lock(&s->h->mu);
	for (size_t i = 0; i < s->n; i++)
		s->pos[i].floor = s->pos[i].txid;
	pthread_mutex_unlock(&s->h->mu);
}

/*
 * Queue the header of an LTX frame of size bytes for db and advance the
 * replica's position in it to what the frame brings (txid, post).
 */
static void queue_ltx_frame(struct stream *s, struct db *db, uint32_t flags, uint64_t size,
			    uint64_t txid, uint64_t post)
{
	s->pend_len += stream_ltx_frame_begin(s->pend + s->pend_len, flags,
					      store_epoch(s->h->store), db_name(db), size);
	s->fd_size = size;
	s->fd_off = 0;
	metrics_add(MC_FRAMES_LTX, 1);
	pthread_mutex_lock(&s->h->mu);
	struct spos *rp = spos_find(s, db_name(db));
	if (rp) {
		rp->txid = txid;
		rp->checksum = post;
	}
	pthread_mutex_unlock(&s->h->mu);
}

/*
 * stream_next's part for an inline send (httpd_sender.c, INLINE SENDS): the
 * replica, behind on db, is sent the next file only if it is in the LTX
 * cache and follows what the replica has; anything else (a file to write or
 * read, a snapshot) is the sender's: -EWOULDBLOCK, nothing changed.
 */
static int stream_next_cached(struct stream *s, struct db *db, struct spos *rp)
{
	struct db_ltx_blob *b = NULL;
	if (rp->txid == 0 || db_ltx_cached(db, rp->txid + 1, &b) < 0)
		return -EWOULDBLOCK;
	if (b->h.pre_apply_checksum != rp->checksum) {
		db_ltx_blob_unref(b);
		return -EWOULDBLOCK;
	}
	s->blob = b;
	queue_ltx_frame(s, db, 0, b->len, b->h.max_txid, b->post);
	return 1;
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
		if (s->h->pushing)
			return stream_next_cached(s, db, rp);
		struct ltx_header lh;
		struct ltx_trailer lt;
		int fd = -1, r = -ENOENT;
		uint32_t flags = 0;
		const char *why = NULL;
		if (rp->txid > dp.txid || (rp->txid == dp.txid && rp->checksum != dp.checksum)) {
			why = "the replica's history diverged";
			flags |= STREAM_LTX_DIVERGED;
		} else if (rp->txid > 0) {
			/* the file in memory if it is there, else from disk (LTX CACHE) */
			struct db_ltx_blob *b = NULL;
			if (db_ltx_cached(db, rp->txid + 1, &b) < 0 &&
			    db_ltx_encode_queued(db, rp->txid + 1, &b) < 0 &&
			    db_write_queued_ltx(db) == 0)
				db_ltx_cached(db, rp->txid + 1, &b);
			if (b) {
				lh = b->h;
				lt.post_apply_checksum = b->post;
				r = 0;
			} else {
				r = db_ltx_open_covering(db, rp->txid + 1, &fd, &lh, &lt);
			}
			/*
			 * A range file that began before the replica's position: no
			 * checksum of this node's is known there, so the replica
			 * checks the result itself (OVERLAPPING FILES, db_apply.c)
			 * and leaves the database out of its positions to ask for a
			 * snapshot when it does not match.
			 */
			bool covers = r == 0 && lh.min_txid <= rp->txid;
			if (covers)
				log_info("db '%s': replica %016" PRIX64 " at TXID %016" PRIx64
					 " resumes inside range file %016" PRIx64 "-%016" PRIx64,
					 db_name(db), s->peer_id, rp->txid, lh.min_txid,
					 lh.max_txid);
			if (r == 0 && !covers && lh.pre_apply_checksum != rp->checksum) {
				db_ltx_blob_unref(b);
				b = NULL;
				if (fd >= 0)
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
			s->blob = b;
		}
		if (fd < 0 && !s->blob) {
			if (why)
				log_info("db '%s': sending a snapshot at TXID %016" PRIx64
					 " to replica %016" PRIX64 " because %s",
					 db_name(db), dp.txid, s->peer_id, why);
			/* its frame follows once the header is fixed (stream_snap_frame) */
			r = db_snap_begin(db, store_on_change, st, &s->snap);
			if (r < 0) {
				log_error("db '%s': cannot build a snapshot: %s", db_name(db),
					  strerror(-r));
				return r;
			}
			s->snap_wait = true;
			s->snap_flags = flags;
			s->snap_db = db;
			return 1;
		}
		uint64_t size;
		if (s->blob) {
			size = s->blob->len;
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
		queue_ltx_frame(s, db, flags, size, lh.max_txid, lt.post_apply_checksum);
		return 1;
	}
	return 0;
}

/*
 * SNAPSHOTS. The builder thread (db_snap.c) may take long to fix the header
 * (it waits for a rollback-mode transaction that spilled its cache to end)
 * or to produce bytes (reading a cold database), and the sender serves
 * every replica: it never waits for either. Its frame is queued here once
 * the header is fixed; until then, and whenever the builder is not ahead,
 * the fill stops with nothing more to send, and the builder's notify
 * (store_on_change) wakes the sender for the next round. Returns 1 with the
 * frame queued, 0 while the header is not fixed, -errno on failure.
 */
static int stream_snap_frame(struct stream *s)
{
	struct db *db = s->snap_db;
	struct ltx_header lh;
	uint64_t size, post;
	int r = db_snap_header(s->snap);
	if (r == 0)
		return 0;
	s->snap_wait = false;
	if (r == -ENOENT) {
		/* nothing committed after all (a drop meanwhile): the next scan decides */
		db_snap_free(s->snap);
		s->snap = NULL;
		return 1;
	}
	if (r < 0) {
		log_error("db '%s': cannot build a snapshot: %s", db_name(db), strerror(-r));
		return r;
	}
	metrics_add(MC_SNAPSHOTS_SENT, 1);
	db_snap_info(s->snap, &size, &lh, &post);
	queue_ltx_frame(s, db, s->snap_flags, size, lh.max_txid, post);
	return 1;
}

/*
 * LAGGING REPLICAS: behind says whether something waits to be sent to this
 * replica. A replica that has not been caught up for STREAM_LAGGING_MS
 * cannot keep up: /info, /metrics and `ltxfs status` say so, and it is
 * logged once. Nothing on the commit path waits for a stream; a replica
 * that is slow to read only fills its own socket buffers. A stream whose
 * socket is full is behind whatever its last fill found (the sender says so
 * at each round it stays BLOCKED): the bytes it holds have not gone out.
 */
void stream_note_behind(struct stream *s, bool behind)
{
	int64_t since = __atomic_load_n(&s->behind_since_ms, __ATOMIC_RELAXED);
	int64_t now = clock_mono_ms();
	if (behind && since == 0) {
		__atomic_store_n(&s->behind_since_ms, now, __ATOMIC_RELAXED);
	} else if (behind && !s->lag_warned && now - since >= STREAM_LAGGING_MS) {
		s->lag_warned = true;
		log_warn("replica %016" PRIX64 " has not caught up for %" PRId64
			 " ms: it cannot keep up with this primary's commits (it does not slow "
			 "them; it gets a snapshot if it falls behind the retained LTX files)",
			 s->peer_id, now - since);
	} else if (!behind && since != 0) {
		__atomic_store_n(&s->behind_since_ms, 0, __ATOMIC_RELAXED);
		if (s->lag_warned)
			log_info("replica %016" PRIX64 " caught up after %" PRId64 " ms",
				 s->peer_id, now - since);
		s->lag_warned = false;
	}
}

/* Milliseconds the stream has not been caught up (0: it is). */
static int64_t stream_lag_ms(struct stream *s)
{
	int64_t since = __atomic_load_n(&s->behind_since_ms, __ATOMIC_RELAXED);
	return since ? clock_mono_ms() - since : 0;
}

/* Below this much room left in the buffer, send rather than look for more. */
#define STREAM_FILL_MIN (16u << 10)

ssize_t stream_fill(struct stream *s, uint8_t *buf, size_t max, bool *more)
{
	struct httpd *h = s->h;
	size_t got = 0;
	*more = true;
	for (;;) {
		if (s->pend_off < s->pend_len) {
			size_t k = s->pend_len - s->pend_off;
			k = k < max - got ? k : max - got;
			memcpy(buf + got, s->pend + s->pend_off, k);
			s->pend_off += k;
			got += k;
			if (s->pend_off == s->pend_len)
				s->pend_off = s->pend_len = 0;
			if (got == max)
				break;
			continue;
		}
		if (s->blob && s->fd_off < s->fd_size) {
			uint64_t remain = s->fd_size - s->fd_off;
			size_t k = remain < max - got ? (size_t)remain : max - got;
			memcpy(buf + got, s->blob->data + s->fd_off, k);
			s->fd_off += k;
			got += k;
			if (got == max)
				break;
			continue;
		}
		if (s->fd >= 0 && s->fd_off < s->fd_size) {
			uint64_t remain = s->fd_size - s->fd_off;
			size_t k = remain < max - got ? (size_t)remain : max - got;
			ssize_t r = pread(s->fd, buf + got, k, (off_t)s->fd_off);
			if (r <= 0) {
				log_error("stream: reading an LTX file failed: %s",
					  r < 0 ? strerror(errno) : "unexpected end of file");
				return STREAM_FILL_ERROR;
			}
			s->fd_off += (uint64_t)r;
			got += (size_t)r;
			if (got == max)
				break;
			continue;
		}
		if (s->snap && s->snap_wait &&
		    (__atomic_load_n(&h->stopping, __ATOMIC_ACQUIRE) ||
		     !store_is_primary(h->store))) {
			/* its frame has not begun: give it up, and END below */
			db_snap_free(s->snap); /* cancels a builder waiting for a transaction */
			s->snap = NULL;
			s->snap_wait = false;
			continue;
		}
		if (s->snap && s->snap_wait) {
			int r = stream_snap_frame(s);
			if (r < 0)
				return STREAM_FILL_ERROR;
			if (r > 0)
				continue;
			if (got == 0 && clock_mono_ms() - s->last_hb >= HEARTBEAT_MS) {
				pend_heartbeat(s); /* the frame has not begun */
				continue;
			}
			*more = false; /* the builder's notify wakes the sender */
			break;
		}
		if (s->snap && s->fd_off < s->fd_size) {
			if (got > 0)
				break;
			uint64_t remain = s->fd_size - s->fd_off;
			size_t k = remain < max ? (size_t)remain : max;
			ssize_t r = db_snap_read_some(s->snap, buf, k);
			if (r == 0) {
				*more = false; /* not built yet: the builder's notify wakes the
						  sender */
				break;
			}
			if (r < 0) {
				if (r == -EAGAIN)
					log_info("stream: the snapshot for replica %016" PRIX64
						 " is cut short and will be sent again",
						 s->peer_id);
				else
					log_error("stream: building a snapshot failed: %s",
						  strerror((int)-r));
				return STREAM_FILL_ERROR;
			}
			s->fd_off += (uint64_t)r;
			got = (size_t)r;
			break;
		}
		if (s->fd >= 0) {
			close(s->fd);
			s->fd = -1;
		}
		if (s->snap) {
			db_snap_free(s->snap);
			s->snap = NULL;
		}
		db_ltx_blob_unref(s->blob);
		s->blob = NULL;
		if (s->handoff_pending) {
			/* the HANDOFF frame is on its way to the socket */
			log_info("handoff frame sent to replica %016" PRIX64, s->peer_id);
			s->handoff_pending = false;
		}
		if (s->ended) {
			/* *more stays true: the next fill returns STREAM_FILL_END at once */
			if (got > 0)
				break;
			return STREAM_FILL_END;
		}
		if (__atomic_load_n(&h->stopping, __ATOMIC_ACQUIRE) ||
		    !store_is_primary(h->store)) {
			pend_frame(s, STREAM_END);
			pthread_mutex_lock(&h->mu); /* /handoff reads it (stream_connected) */
			s->ended = true;
			pthread_mutex_unlock(&h->mu);
			continue;
		}
		if (got > 0 && max - got < STREAM_FILL_MIN)
			break;
		int r = stream_next(s);
		if (r == -EWOULDBLOCK && h->pushing)
			break; /* *more: the rest is the sender's */
		if (r < 0)
			return STREAM_FILL_ERROR;
		stream_note_behind(s, r > 0);
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
		if (clock_mono_ms() - s->last_hb >= HEARTBEAT_MS) {
			pend_heartbeat(s);
			continue;
		}
		*more = false; /* nothing left: the sender waits for the next commit */
		break;
	}
	s->sent_bytes += got;
	metrics_add(MC_STREAM_BYTES_SENT, got);
	return (ssize_t)got;
}

void stream_discard(struct stream *s)
{
	if (!s)
		return;
	if (s->fd >= 0)
		close(s->fd);
	db_snap_free(s->snap);
	db_ltx_blob_unref(s->blob);
	free(s->out);
	free(s->pos);
	free(s);
}

void stream_free(struct stream *s)
{
	struct httpd *h = s->h;
	pthread_mutex_lock(&h->mu);
	s->prev->next = s->next;
	s->next->prev = s->prev;
	h->nstreams--;
	store_followers_add(h->store, -1);
	pthread_mutex_unlock(&h->mu);
	log_info("replica %016" PRIX64 " disconnected (%" PRIu64 " bytes sent)", s->peer_id,
		 s->sent_bytes);
	stream_discard(s);
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

enum MHD_Result httpd_serve_stream(struct httpd *h, struct MHD_Connection *c, struct request *rq)
{
	uint64_t peer = 0;
	char cid[21];
	if (!store_is_primary(h->store))
		return httpd_reply_error(h, c, MHD_HTTP_SERVICE_UNAVAILABLE,
					 "this node is not the primary");
	if (rq->too_big)
		return httpd_reply_error(h, c, MHD_HTTP_CONTENT_TOO_LARGE,
					 "position map too large");
	const char *up = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Upgrade");
	if (!up || strcasecmp(up, STREAM_UPGRADE) != 0) {
		/* a replica of an older ltxfs (it logs this answer) */
		struct MHD_Response *resp = httpd_json_response(
		    json_pack("{s:s}", "error",
			      "the stream needs 'Connection: Upgrade' and 'Upgrade: " STREAM_UPGRADE
			      "' (a replica older than this primary: upgrade it)"));
		if (!resp)
			return MHD_NO;
		return httpd_queue(h, c, MHD_HTTP_UPGRADE_REQUIRED, resp, "Content-Type",
				   "application/json", "Upgrade", STREAM_UPGRADE, "Connection",
				   "Upgrade", NULL);
	}
	const char *pid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Ltxfs-Node-Id");
	if (!parse_node_id(pid, &peer))
		return httpd_reply_error(h, c, MHD_HTTP_BAD_REQUEST,
					 "missing or malformed Ltxfs-Node-Id header");
	if (peer == store_node_id(h->store))
		return httpd_reply_error(h, c, MHD_HTTP_BAD_REQUEST, "cannot stream to self");
	const char *pcid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Ltxfs-Cluster-Id");
	store_cluster_id(h->store, cid);
	if (pcid && *pcid && strcmp(pcid, cid) != 0) {
		char msg[128];
		snprintf(msg, sizeof(msg), "cluster ID mismatch: replica has %.24s, primary has %s",
			 pcid, cid);
		log_warn("refusing replica %016" PRIX64 ": %s", peer, msg);
		return httpd_reply_error(h, c, MHD_HTTP_CONFLICT, msg);
	}
	struct stream_pos *pm = NULL;
	size_t npm = 0;
	if (stream_posmap_decode((const uint8_t *)rq->body, rq->len, &pm, &npm) < 0)
		return httpd_reply_error(h, c, MHD_HTTP_BAD_REQUEST, "malformed position map");
	const char *adv = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Ltxfs-Advertise-Url");
	if (adv && (strncmp(adv, "http://", 7) == 0 || strncmp(adv, "https://", 8) == 0) &&
	    h->hooks.lock && h->elector && store_can_adopt(h->store)) {
		/* a new primary: the elector adopts what this replica has beyond it */
		struct elector_offer o = {
		    .url = adv, .peer = peer, .pos = pm, .n = npm, .hooks = &h->hooks};
		elector_adopt(h->elector, &o);
	}
	struct stream *s = calloc(1, sizeof(*s));
	if (!s || !(s->out = malloc(STREAM_CHUNK_HEAD + STREAM_BLOCK + 2))) {
		free(s);
		free(pm);
		return MHD_NO;
	}
	s->sock = -1;
	s->h = h;
	s->fd = -1;
	s->peer_id = peer;
	s->last_hb = clock_mono_ms();
	for (size_t i = 0; i < npm; i++) {
		struct spos *p = spos_get(s, pm[i].name);
		if (!p) {
			free(pm);
			stream_discard(s);
			return MHD_NO;
		}
		p->txid = pm[i].txid;
		p->checksum = pm[i].checksum;
		p->floor = pm[i].txid;
	}
	free(pm);
	/* the sender thread takes the socket once the 101 is sent (httpd_sender_adopt) */
	struct MHD_Response *resp = MHD_create_response_for_upgrade(httpd_sender_adopt, s);
	if (!resp) {
		stream_discard(s);
		return MHD_NO;
	}
	rq->stream = s; /* freed with the request unless the upgrade happens */
	log_info("replica %016" PRIX64 " connected with %zu database position(s)", peer, npm);
	return httpd_queue(h, c, MHD_HTTP_SWITCHING_PROTOCOLS, resp, "Upgrade", STREAM_UPGRADE,
			   "Connection", "Upgrade", "Ltxfs-Hostname", h->hostname, "Content-Type",
			   "application/vnd.ltxfs.stream", NULL);
}

/* ---------------------------------------------------------------- /ltx */

/* GET /ltx?db=NAME&txid=HEX: the verified LTX file of one transaction. */
enum MHD_Result httpd_serve_ltx(struct httpd *h, struct MHD_Connection *c)
{
	const char *name = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "db");
	const char *tx = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "txid");
	uint64_t txid;
	if (!name || !stream_name_valid(name, strlen(name)) || !parse_node_id(tx, &txid) ||
	    txid == 0)
		return httpd_reply_error(h, c, MHD_HTTP_BAD_REQUEST,
					 "want db=NAME and txid=HEX (1 to 16 hex digits)");
	struct db *db = store_find(h->store, name);
	if (!db)
		return httpd_reply_error(h, c, MHD_HTTP_NOT_FOUND, "no such database");
	int fd;
	struct ltx_header lh;
	struct ltx_trailer lt;
	int r = db_ltx_open_covering(db, txid, &fd, &lh, &lt);
	if (r == -ENOENT)
		return httpd_reply_error(h, c, MHD_HTTP_NOT_FOUND, "no LTX file for that TXID");
	if (r < 0)
		return httpd_reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, strerror(-r));
	struct stat sb;
	if (fstat(fd, &sb) < 0) {
		close(fd);
		return httpd_reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, strerror(errno));
	}
	struct MHD_Response *resp = MHD_create_response_from_fd((size_t)sb.st_size, fd);
	if (!resp) {
		close(fd);
		return MHD_NO;
	}
	return httpd_queue(h, c, MHD_HTTP_OK, resp, "Content-Type", "application/octet-stream",
			   NULL);
}

/* ------------------------------------------------------------ /handoff */

static bool stream_connected(struct httpd *h, uint64_t peer)
{
	bool found = false;
	pthread_mutex_lock(&h->mu);
	for (struct stream *s = h->streams.next; s != &h->streams && !found; s = s->next)
		found = s->peer_id == peer && !s->ended;
	pthread_mutex_unlock(&h->mu);
	return found;
}

enum MHD_Result httpd_serve_handoff(struct httpd *h, struct MHD_Connection *c)
{
	uint64_t peer;
	char token[STREAM_TOKEN_MAX + 1];
	if (!h->elector)
		return httpd_reply_error(
		    h, c, MHD_HTTP_CONFLICT,
		    "handoff needs a consul or etcd lease (this node has a static lease)");
	const char *nid = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "nodeID");
	if (!parse_node_id(nid, &peer))
		return httpd_reply_error(h, c, MHD_HTTP_BAD_REQUEST,
					 "missing or malformed nodeID parameter");
	if (!store_is_primary(h->store))
		return httpd_reply_error(h, c, MHD_HTTP_SERVICE_UNAVAILABLE,
					 "this node is not the primary");
	if (!stream_connected(h, peer))
		return httpd_reply_error(h, c, MHD_HTTP_NOT_FOUND,
					 "that node is not a replica connected to this primary");
	int r = elector_handoff_begin(h->elector, token, sizeof(token));
	if (r == -EBUSY)
		return httpd_reply_error(h, c, MHD_HTTP_CONFLICT,
					 "a handoff is already in progress");
	if (r < 0)
		return httpd_reply_error(h, c, MHD_HTTP_SERVICE_UNAVAILABLE,
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
		return httpd_reply_error(h, c, MHD_HTTP_GATEWAY_TIMEOUT,
					 "the replica did not receive the handoff in time");
	}
	return httpd_reply_json(h, c, MHD_HTTP_OK, json_pack("{s:b}", "handedOff", 1));
}

/* ---------------------------------------------------------- node state */

json_t *httpd_stream_replicas(struct httpd *h)
{
	json_t *reps = json_array();
	pthread_mutex_lock(&h->mu);
	for (struct stream *st = h->streams.next; st != &h->streams; st = st->next) {
		char pid[17];
		json_t *pos = json_array();
		int64_t lag = stream_lag_ms(st);
		snprintf(pid, sizeof(pid), "%016" PRIX64, st->peer_id);
		for (size_t i = 0; i < st->n; i++) {
			char tx[17];
			snprintf(tx, sizeof(tx), "%016" PRIx64, st->pos[i].txid);
			json_array_append_new(
			    pos, json_pack("{s:s,s:s,s:I}", "name", st->pos[i].name, "txid", tx,
					   "sentTxid", (json_int_t)st->pos[i].txid));
		}
		json_array_append_new(reps,
				      json_pack("{s:s,s:o,s:f,s:b}", "nodeID", pid, "databases",
						pos, "lagSeconds", (double)lag / 1000.0, "lagging",
						lag >= STREAM_LAGGING_MS));
	}
	pthread_mutex_unlock(&h->mu);
	/* how far behind the primary each database is, outside h->mu */
	for (size_t i = 0; i < json_array_size(reps); i++) {
		json_t *pos = json_object_get(json_array_get(reps, i), "databases");
		for (size_t k = 0; k < json_array_size(pos); k++) {
			json_t *d = json_array_get(pos, k);
			struct db *db =
			    store_find(h->store, json_string_value(json_object_get(d, "name")));
			struct db_pos dp = {0};
			uint64_t sent =
			    (uint64_t)json_integer_value(json_object_get(d, "sentTxid"));
			if (db)
				db_get_pos(db, &dp);
			json_object_del(d, "sentTxid");
			json_object_set_new(
			    d, "behind",
			    json_integer(dp.txid > sent ? (json_int_t)(dp.txid - sent) : 0));
		}
	}
	return reps;
}

void httpd_stream_metrics(struct httpd *h, FILE *f)
{
	size_t lagging = 0;
	fprintf(f, "# HELP ltxfs_replica_lag_seconds How long a connected replica has not been "
		   "caught up (0: it is).\n# TYPE ltxfs_replica_lag_seconds gauge\n");
	pthread_mutex_lock(&h->mu);
	for (struct stream *st = h->streams.next; st != &h->streams; st = st->next) {
		int64_t lag = stream_lag_ms(st);
		lagging += lag >= STREAM_LAGGING_MS;
		fprintf(f, "ltxfs_replica_lag_seconds{node=\"%016" PRIX64 "\"} %.3f\n", st->peer_id,
			(double)lag / 1000.0);
	}
	pthread_mutex_unlock(&h->mu);
	fprintf(f,
		"# HELP ltxfs_replicas_lagging Connected replicas not caught up for 2 s or more.\n"
		"# TYPE ltxfs_replicas_lagging gauge\nltxfs_replicas_lagging %zu\n",
		lagging);
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
